import { test, type Test } from 'tap'
import type { FastifyInstance } from 'fastify'
import { LocalAdapter } from '../lib/adapters/local'
import redisAdapter from '../lib/adapters/redis'
import { MemoryHistory } from '../lib/history/memory'
import type { AdapterHost, EventSourceAdapter, HistoryStore, PublishedMessage, ReplayResult } from '../types/index'
import { sleep, stalledClient } from './helpers/clients'
import { readEvents, type EventStream } from './helpers/read-events'
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

  /** What the next replays do instead of reading the history: fail, or find it empty (lost in a restart). */
  replayAs: 'read' | 'fail' | 'empty' = 'read'

  async replay (lastEventId: string, identifier: string): Promise<ReplayResult> {
    if (this.replayDelay > 0) await sleep(this.replayDelay)
    if (this.replayAs === 'fail') throw new Error('the history cannot be read')
    if (this.replayAs === 'empty') return { messages: [], gap: true }
    return this.#local.replay(lastEventId, identifier)
  }

  /** How long a replay takes before it reads the history (ms): lets a test act while a replay runs. */
  replayDelay = 0

  hold (): void {
    this.#held = []
  }

  /** Reports that live delivery here lost what followed `lastId`, the history's newest id being `latestId`. */
  gap (latestId: string | undefined, lastId: string | undefined): void {
    this.#host?.gap(latestId, lastId)
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

/** An app on the lagging adapter with one stream open, which got m1..m3. */
async function laggingApp (t: Test, identifier: string): Promise<{ adapter: LaggingAdapter, app: FastifyInstance, url: string, stream: EventStream }> {
  const adapter = new LaggingAdapter()
  const { app, url } = await start(t, streamRoute, { adapter })
  const stream = await readEvents(`${url}/sse/${identifier}`)
  t.teardown(stream.close)
  await until(() => app.eventSources.activeConnections === 1)
  for (let i = 1; i <= 3; i++) await app.eventSources.publish(`m${i}`)
  await until(() => stream.events.length === 3)
  return { adapter, app, url, stream }
}

test('a source never receives a message at or before its Last-Event-ID, nor before one it was written', async t => {
  const { adapter, app, url, stream: ahead } = await laggingApp(t, 'ahead')

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

test('a replay that fails, or finds the history empty, still keeps from the client what it had: the reset, then only later messages', async t => {
  const { adapter, app, url, stream: first } = await laggingApp(t, 'first')
  for (const replayAs of ['fail', 'empty'] as const) {
    // This instance falls behind: three more are stored but not yet delivered here.
    adapter.hold()
    for (const n of [1, 2, 3]) await app.eventSources.publish(`${replayAs}-${n}`)
    const last = adapter.history.readAfter('', '').latestId as string
    // A client that got them all elsewhere resumes here, and its replay fails or finds nothing.
    adapter.replayAs = replayAs
    const resumed = await readEvents(`${url}/sse/${replayAs}`, { 'last-event-id': last })
    t.teardown(resumed.close)
    await until(() => app.eventSources.getByIdentifier(replayAs)?.replay !== undefined)
    adapter.replayAs = 'read'
    adapter.release()
    await app.eventSources.publish(`${replayAs}-after`)
    await until(() => resumed.events.some(e => e.data === `${replayAs}-after`))
    t.same(resumed.events.map(e => e.event ?? e.data), ['reset', `${replayAs}-after`], `${replayAs}: the reset, then nothing it had`)
    t.same(app.eventSources.getByIdentifier(replayAs)?.replay, { replayed: 0, gap: true })
  }
  t.equal(first.events.length, 3 + 4 + 4, 'the stream that was there got everything once')
})

/** The id a client resumes from: the last one it was given, by any event. */
function lastIdOf (events: { id?: string }[]): string | undefined {
  return events.findLast(event => event.id !== undefined)?.id
}

test('a gap report never moves a client\'s last id back, live or behind a replay, so a reconnect replays nothing twice', async t => {
  const { adapter, app, url, stream: live } = await laggingApp(t, 'live')
  const ids = live.events.map(event => event.id as string)

  // A source already past the newest id the gap names (its replay read further): the reset carries its own position.
  adapter.gap(ids[0], ids[0])
  await until(() => live.events.length === 4)
  t.same(live.events.map(e => [e.event ?? 'message', e.id]), [['message', ids[0]], ['message', ids[1]], ['message', ids[2]], ['reset', ids[2]]])
  t.same(JSON.parse(live.events[3].data), { lastEventId: ids[0] })

  // A resume past the gap's id: its own position. The live source, behind it: the gap's own id.
  adapter.hold()
  await app.eventSources.publish('m4')
  const m4 = adapter.history.readAfter('', '').latestId as string
  const resumed = await readEvents(`${url}/sse/resumed`, { 'last-event-id': ids[2] })
  t.teardown(resumed.close)
  await until(() => resumed.events.length === 1)
  adapter.gap(ids[2], ids[1])
  await until(() => resumed.events.length === 2 && live.events.length === 5)
  t.same(resumed.events.map(e => [e.event ?? 'message', e.data.slice(0, 2), e.id]), [['message', 'm4', m4], ['reset', '{"', m4]], 'past the gap')
  t.same(live.events[4].id, ids[2], 'at the gap: its id')
  adapter.gap(m4, ids[2])
  await until(() => live.events.length === 6)
  t.same(live.events[5].id, m4, 'behind the gap: its id')
  adapter.release()
  await until(() => live.events.length === 7)
  t.same(live.events[6].data, 'm4')

  // Queued behind a replay: the replay decides the reset's id once it is read.
  adapter.replayDelay = 150
  const replaying = await readEvents(`${url}/sse/replaying`, { 'last-event-id': ids[0] })
  t.teardown(replaying.close)
  await until(() => app.eventSources.getByIdentifier('replaying') !== undefined)
  adapter.gap(ids[1], ids[0])
  await app.eventSources.publish('m5')
  const m5 = adapter.history.readAfter('', '').latestId as string
  await until(() => replaying.events.length >= 5)
  await sleep(20)
  t.same(replaying.events.map(e => [e.event ?? 'message', e.id]), [
    ['message', ids[1]], ['message', ids[2]], ['message', m4], ['message', m5], ['reset', m5]
  ], 'replayed up to m5, then the reset with m5 as id')

  // Each client resumes from its last id and is given nothing it had.
  const before = [['live', live], ['replaying', replaying]] as const
  for (const [, stream] of before) stream.close()
  await until(() => app.eventSources.activeConnections === 1)
  const again = await Promise.all(before.map(([name, stream]) => readEvents(`${url}/sse/${name}`, { 'last-event-id': lastIdOf(stream.events) as string })))
  for (const stream of again) t.teardown(stream.close)
  await until(() => before.every(([name]) => app.eventSources.getByIdentifier(name)?.replay !== undefined))
  await app.eventSources.publish('after')
  await until(() => again.every(stream => stream.events.some(e => e.data === 'after')))
  for (const [n, [name, stream]] of before.entries()) {
    const had = new Set(stream.events.map(e => e.data))
    t.same(again[n].events.map(e => e.data).filter(data => had.has(data)), [], `${name}: nothing twice after a reconnect`)
  }
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
