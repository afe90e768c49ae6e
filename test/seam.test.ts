import { test, type Test } from 'tap'
import type { FastifyInstance } from 'fastify'
import { LocalAdapter } from '../lib/adapters/local'
import redisAdapter from '../lib/adapters/redis'
import { MemoryHistory } from '../lib/history/memory'
import type { AdapterHost, EventSourceAdapter, HistoryStore, PublishedMessage, ReplayResult } from '../types/index'
import { sleep, stalledClient } from './helpers/clients'
import { readEvents } from './helpers/read-events'
import { redisReady, redisUrl, uniquePrefix } from './helpers/redis'
import { start, until } from './helpers/server'
import { fillUntilStalled } from './helpers/sources'

function streamRoute (app: FastifyInstance): void {
  app.get<{ Params: { id: string } }>('/sse/:id', async request => {
    const sse = request.getEventSource(request.params.id)
    await sse.keepAlive()
    return sse.close()
  })
}

/** A memory history whose reads take a while, as a remote store's do: lets a test publish while a replay runs. */
class SlowHistory implements HistoryStore {
  inner = new MemoryHistory(1000)
  delay = 0
  append (message: PublishedMessage): string {
    return this.inner.append(message)
  }

  async readAfter (lastEventId: string, identifier: string): Promise<ReplayResult> {
    const result = this.inner.readAfter(lastEventId, identifier)
    await sleep(this.delay)
    return result
  }
}

/**
 * The local adapter on a memory history, whose delivery can be held back and replayed: an instance that is
 * behind, then catches up from the history by delivering again what it holds after an older position.
 */
class LaggingAdapter implements EventSourceAdapter {
  readonly hasHistory = true
  history = new MemoryHistory(1000)
  #local = new LocalAdapter(this.history)
  #host: AdapterHost | undefined
  #held: PublishedMessage[] | null = null

  attach (host: AdapterHost): void {
    this.#host = host
    this.#local.attach({ ...host, deliver: message => this.#deliver(message) })
  }

  publish (message: PublishedMessage): Promise<void> {
    return this.#local.publish(message)
  }

  replay (lastEventId: string, identifier: string): Promise<ReplayResult> {
    return this.#local.replay(lastEventId, identifier)
  }

  hold (): void {
    this.#held = []
  }

  release (): void {
    const held = this.#held ?? []
    this.#held = null
    for (const message of held) this.#host?.deliver(message)
  }

  /** Delivers again every message stored after `id`, as a catch-up from an older point would. */
  redeliverAfter (id: string): void {
    for (const message of this.history.readAfter(id, '').messages) this.#host?.deliver(message)
  }

  #deliver (message: PublishedMessage): void {
    if (this.#held !== null) this.#held.push(message)
    else this.#host?.deliver(message)
  }

  async close (): Promise<void> {}
}

test('reg delivered twice: a registered-listener publish and a handler publish during a replay arrive once each', async t => {
  let publishOnRegister = false
  const { app, url } = await start(t, app => {
    app.get('/sse', async request => {
      const sse = request.getEventSource('p1')
      if (publishOnRegister) app.eventSources.publish('hdl').catch(t.error)
      await sse.keepAlive()
      return sse.close()
    })
  })
  app.eventSources.on('registered', () => {
    if (publishOnRegister) app.eventSources.publish('reg').catch(t.error)
  })
  const first = await readEvents(`${url}/sse`)
  t.teardown(first.close)
  await until(() => app.eventSources.activeConnections === 1)
  for (let i = 1; i <= 5; i++) await app.eventSources.publish(`m${i}`)
  await until(() => first.events.length === 5)
  const seen = first.events[1].id as string
  first.close()
  await until(() => app.eventSources.activeConnections === 0)
  await app.eventSources.publish('m6')
  await app.eventSources.publish('m7')

  publishOnRegister = true
  const second = await readEvents(`${url}/sse`, { 'last-event-id': seen })
  t.teardown(second.close)
  await until(() => second.events.length >= 7)
  await app.eventSources.publish('end')
  await until(() => second.events.some(e => e.data === 'end'))
  t.same(second.events.map(e => e.data), ['m3', 'm4', 'm5', 'm6', 'm7', 'reg', 'hdl', 'end'])
})

test('the replay going out before the head: a handler that awaits after getEventSource still gets an event stream', async t => {
  const errors: unknown[] = []
  const { app, url } = await start(t, app => {
    app.get('/sse', async request => {
      const sse = request.getEventSource('x')
      await sleep(50)
      try {
        sse.send('after')
      } catch (err) {
        errors.push(err)
      }
      await sse.keepAlive()
      return sse.close()
    })
  })
  for (const data of ['a', 'b', 'c']) await app.eventSources.publish(data)
  const stream = await readEvents(`${url}/sse`, { 'last-event-id': 'nope-1' })
  t.teardown(stream.close)
  t.equal(stream.status, 200)
  t.match(stream.headers['content-type'], /^text\/event-stream/)
  t.equal(stream.headers['cache-control'], 'no-cache, no-transform')
  await until(() => stream.events.length === 5)
  t.same(stream.events.map(e => e.event ?? e.data), ['reset', 'a', 'b', 'c', 'after'])
  t.same(errors, [], 'the handler\'s send did not throw')
  t.same(app.eventSources.getByIdentifier('x')?.replay, { replayed: 3, gap: true })
})

test('queued messages lost: several live messages queued behind a replay all arrive after it', async t => {
  const history = new SlowHistory()
  const { app, url } = await start(t, streamRoute, { adapter: new LocalAdapter(history) })
  await app.eventSources.publish('m1')
  const lastId = history.inner.readAfter('', 'u').latestId as string
  await app.eventSources.publish('m2')
  history.delay = 100
  const stream = await readEvents(`${url}/sse/u`, { 'last-event-id': lastId })
  t.teardown(stream.close)
  await until(() => app.eventSources.activeConnections === 1)
  // Stored after the read: none is in the replay, all wait in the queue behind it.
  for (const data of ['m3', 'm4', 'm5']) await app.eventSources.publish(data)
  await until(() => stream.events.length >= 4)
  await app.eventSources.publish('m6')
  await until(() => stream.events.length >= 5)
  t.same(stream.events.map(e => e.data), ['m2', 'm3', 'm4', 'm5', 'm6'])
  t.same(app.eventSources.getByIdentifier('u')?.replay, { replayed: 1, gap: false })
})

test('a source never receives a message at or before its Last-Event-ID, nor before one it was written', async t => {
  const adapter = new LaggingAdapter()
  const { app, url } = await start(t, streamRoute, { adapter })
  const ahead = await readEvents(`${url}/sse/ahead`)
  t.teardown(ahead.close)
  await until(() => app.eventSources.activeConnections === 1)
  for (let i = 1; i <= 3; i++) await app.eventSources.publish(`m${i}`)
  await until(() => ahead.events.length === 3)

  // This instance falls behind: m4..m6 are stored but not yet delivered here.
  adapter.hold()
  for (let i = 4; i <= 6; i++) await app.eventSources.publish(`m${i}`)
  const m6 = adapter.history.readAfter('', '').latestId as string
  // A client that got m1..m6 elsewhere resumes here.
  const resumed = await readEvents(`${url}/sse/resumed`, { 'last-event-id': m6 })
  t.teardown(resumed.close)
  await until(() => app.eventSources.getByIdentifier('resumed')?.replay !== undefined)
  adapter.release()
  // And a catch-up from an older point delivers m2..m6 once more.
  adapter.redeliverAfter(ahead.events[0].id as string)
  await app.eventSources.publish('m7')
  await until(() => resumed.events.length >= 1 && ahead.events.length >= 7)
  await sleep(20)
  t.same(resumed.events.map(e => e.data), ['m7'], 'nothing at or before its Last-Event-ID')
  t.same(ahead.events.map(e => e.data), ['m1', 'm2', 'm3', 'm4', 'm5', 'm6', 'm7'], 'nothing twice, nothing backwards')
  t.same(app.eventSources.getByIdentifier('resumed')?.replay, { replayed: 0, gap: false })
})

test('an explicit id keeps its place: a resume from it uses the store\'s position', async t => {
  const history = new SlowHistory()
  const { app, url } = await start(t, streamRoute, { adapter: new LocalAdapter(history) })
  await app.eventSources.publish('a', { id: 'order-1' })
  history.delay = 60
  const stream = await readEvents(`${url}/sse/u`, { 'last-event-id': 'order-1' })
  t.teardown(stream.close)
  await until(() => app.eventSources.activeConnections === 1)
  await app.eventSources.publish('b', { id: 'order-2' })
  await app.eventSources.publish('c')
  await until(() => stream.events.length >= 2)
  await sleep(20)
  t.same(stream.events.map(e => [e.id, e.data]), [['order-2', 'b'], [history.inner.readAfter('order-2', 'u').latestId, 'c']])
})

test('droppedPings counts pings not written under the memory bound', async t => {
  const max = 64 * 1024
  const { app, url } = await start(t, app => {
    app.get('/sse', async request => {
      const sse = request.getEventSource('slow')
      await sse.keepAlive()
      return sse.close()
    })
  }, { maxBufferedBytes: max, slowClient: 'drop', ping: { interval: 5, dataMessage: 'p'.repeat(200) } })
  stalledClient(t, url, '/sse')
  await until(() => app.eventSources.activeConnections === 1)
  const sse = app.eventSources.getByIdentifier('slow')
  if (sse === undefined) throw new Error('no source')
  await fillUntilStalled(sse, max - 4096)
  // Leave less room than a ping takes.
  for (let i = 0; i < 100 && max - sse.bufferedAmount >= 200; i++) sse.send('x'.repeat(Math.max(1, max - sse.bufferedAmount - 80)))
  t.ok(max - sse.bufferedAmount < 200, 'less room left than a ping needs')
  await until(() => sse.droppedPings > 1, 3000, 'dropped pings')
  t.ok(sse.isActive, 'a dropped ping does not end the stream')
  t.equal(sse.droppedMessages, 0, 'pings are not counted as messages')
})

async function replayRace (t: Test, adapterFor: () => EventSourceAdapter): Promise<void> {
  const errors: unknown[] = []
  const { app, url } = await start(t, app => {
    app.get('/sse', async request => {
      const sse = request.getEventSource('x')
      await sleep(50)
      try {
        sse.send('after')
      } catch (err) {
        errors.push(err)
      }
      await sse.keepAlive()
      return sse.close()
    })
  }, { adapter: adapterFor() })
  for (const data of ['a', 'b', 'c']) await app.eventSources.publish(data)
  const stream = await readEvents(`${url}/sse`, { 'last-event-id': 'nope-1' })
  t.teardown(stream.close)
  t.equal(stream.status, 200)
  t.match(stream.headers['content-type'], /^text\/event-stream/)
  await until(() => stream.events.length === 5)
  t.same(stream.events.map(e => e.event ?? e.data), ['reset', 'a', 'b', 'c', 'after'])
  t.same(errors, [])
}

test('the replay going out before the head, with the Redis adapter', async t => {
  if (!redisReady(t)) return
  const prefix = uniquePrefix(t)
  await replayRace(t, () => redisAdapter({ url: redisUrl, channelPrefix: prefix }))
})
