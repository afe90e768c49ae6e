import { test } from 'tap'
import { EventSource } from 'undici'
import Fastify from 'fastify'
import eventSources from '../lib/index'
import { MemoryHistory } from '../lib/history/memory'
import { LocalAdapter } from '../lib/adapters/local'
import type { HistoryStore, PublishedMessage, ReplayResult } from '../lib/history/history'
import { start, until } from './helpers/server'
import { readEvents } from './helpers/read-events'

const sleep = (ms: number) => new Promise(resolve => setTimeout(resolve, ms))

function streamRoute (app: import('fastify').FastifyInstance): void {
  app.get<{ Querystring: { id: string } }>('/sse', async request => {
    const sse = request.getEventSource(request.query.id)
    await sse.keepAlive()
    return sse.close()
  })
}

/** Publishes `from..to` as `n` numbers, to the given target, spaced out so a reconnect happens in the middle. */
async function publishRange (app: import('fastify').FastifyInstance, from: number, to: number, target: string | { prefix: string } | undefined): Promise<void> {
  for (let n = from; n <= to; n++) {
    await app.eventSources.publish({ n }, { to: target })
    await app.eventSources.publish({ other: n }, { to: 'someone-else' })
    await sleep(2)
  }
}

for (const [name, identifier, target] of [
  ['every identified source', 'user-1', undefined],
  ['one identifier', 'user-1', 'user-1'],
  ['an identifier prefix', 'team-a:user-1', { prefix: 'team-a:' }]
] as const) {
  test(`a client dropped mid-stream resumes with no gap and no duplicate (${name})`, async t => {
    const { app, url } = await start(t, streamRoute, { retry: 30 })
    const es = new EventSource(`${url}/sse?id=${encodeURIComponent(identifier)}`)
    t.teardown(() => es.close())
    const seen: number[] = []
    const ids: string[] = []
    let opens = 0
    es.onopen = () => { opens++ }
    es.onmessage = e => {
      const value = JSON.parse(e.data)
      if ('other' in value) t.fail('received a message for another identifier')
      seen.push(value.n)
      ids.push(e.lastEventId)
    }
    await until(() => opens === 1, 3000, 'first open')

    const publishing = publishRange(app, 1, 60, target)
    await until(() => seen.length >= 10, 3000, 'ten messages')
    app.eventSources.getByIdentifier(identifier)?.close()
    await publishing
    await until(() => seen.length >= 60, 5000, 'all sixty messages')
    await sleep(50)

    t.ok(opens >= 2, 'the client reconnected')
    t.same(seen, Array.from({ length: 60 }, (_, i) => i + 1), 'every message once, in order')
    t.equal(new Set(ids).size, 60, 'every message had its own id')
    const replay = app.eventSources.getByIdentifier(identifier)?.replay
    t.ok(replay !== undefined && !replay.gap, 'the reconnect resumed from the history without a gap')
  })
}

test('replay sends what was published after Last-Event-ID, then live messages', async t => {
  const { app, url } = await start(t, streamRoute)
  const first = await readEvents(`${url}/sse?id=u`)
  t.teardown(first.close)
  await app.eventSources.publish('one')
  await app.eventSources.publish('two')
  await until(() => first.events.length === 2)
  const lastId = first.events[0].id as string
  first.close()
  await until(() => app.eventSources.activeConnections === 0)

  await app.eventSources.publish('three')
  const second = await readEvents(`${url}/sse?id=u`, { 'last-event-id': lastId })
  t.teardown(second.close)
  await until(() => second.events.length === 2)
  await app.eventSources.publish('four')
  await until(() => second.events.length === 3)
  t.same(second.events.map(e => e.data), ['two', 'three', 'four'])
  t.same(app.eventSources.getByIdentifier('u')?.replay, { replayed: 2, gap: false })
})

test('a replay holds only messages for the source: its identifier, a matching prefix, or everyone', async t => {
  const { app, url } = await start(t, streamRoute)
  const first = await readEvents(`${url}/sse?id=room-1:ann`)
  t.teardown(first.close)
  await app.eventSources.publish('mark')
  await until(() => first.events.length === 1)
  first.close()
  await until(() => app.eventSources.activeConnections === 0)
  await app.eventSources.publish('to ann', { to: 'room-1:ann' })
  await app.eventSources.publish('to bob', { to: 'room-1:bob' })
  await app.eventSources.publish('to room 1', { to: { prefix: 'room-1:' } })
  await app.eventSources.publish('to room 2', { to: { prefix: 'room-2:' } })
  await app.eventSources.publish('to all')
  const second = await readEvents(`${url}/sse?id=room-1:ann`, { 'last-event-id': first.events[0].id as string })
  t.teardown(second.close)
  await until(() => app.eventSources.getByIdentifier('room-1:ann')?.replay !== undefined)
  await sleep(30)
  t.same(second.events.map(e => e.data), ['to ann', 'to room 1', 'to all'])
})

/** A real store whose reads take a while, as a remote one would: lets a test publish while a replay runs. */
class SlowHistory implements HistoryStore {
  inner = new MemoryHistory(100)
  delay = 0
  append (message: PublishedMessage): string {
    return this.inner.append(message)
  }

  async readAfter (lastEventId: string, identifier: string): Promise<ReplayResult> {
    await sleep(this.delay)
    return this.inner.readAfter(lastEventId, identifier)
  }
}

test('messages published during a replay arrive once, after the replayed ones', async t => {
  const history = new SlowHistory()
  const { app, url } = await start(t, app => {
    app.get('/sse', async request => {
      const sse = request.getEventSource('u')
      sse.send('hello from the handler')
      await sse.keepAlive()
      return sse.close()
    })
  }, { adapter: new LocalAdapter(history) })

  await app.eventSources.publish('m1')
  const lastId = history.inner.readAfter('', 'u').latestId as string
  await app.eventSources.publish('m2')
  await app.eventSources.publish('m3')

  history.delay = 150
  const stream = await readEvents(`${url}/sse`, { 'last-event-id': lastId })
  t.teardown(stream.close)
  // Published while the read is pending: stored before the read completes, so it is in the replay AND live.
  await app.eventSources.publish('m4')
  await sleep(200)
  // Published after the read: live only.
  await app.eventSources.publish('m5')
  await until(() => stream.events.length >= 5)
  await sleep(30)
  t.same(stream.events.map(e => e.data), ['m2', 'm3', 'm4', 'hello from the handler', 'm5'],
    'replayed first, then what was written meanwhile, and the message both replayed and live arrives once')
  t.same(app.eventSources.getByIdentifier('u')?.replay, { replayed: 3, gap: false })
})

test('an id older than the ring is a gap: reset first, then what is held', async t => {
  const { app, url } = await start(t, streamRoute, { history: { size: 5 } })
  const first = await readEvents(`${url}/sse?id=u`)
  t.teardown(first.close)
  for (let i = 1; i <= 3; i++) await app.eventSources.publish(`m${i}`)
  await until(() => first.events.length === 3)
  const old = first.events[0].id as string
  first.close()
  await until(() => app.eventSources.activeConnections === 0)
  for (let i = 4; i <= 12; i++) await app.eventSources.publish(`m${i}`)

  const second = await readEvents(`${url}/sse?id=u`, { 'last-event-id': old })
  t.teardown(second.close)
  await until(() => second.events.length === 6)
  const [reset, ...rest] = second.events
  t.equal(reset.event, 'reset')
  t.same(JSON.parse(reset.data), { lastEventId: old })
  t.equal(reset.id, rest[rest.length - 1].id, 'the reset moves the client to the newest id held')
  t.same(rest.map(e => e.data), ['m8', 'm9', 'm10', 'm11', 'm12'])
  t.same(app.eventSources.getByIdentifier('u')?.replay, { replayed: 5, gap: true })
})

test('the reset event name is configurable', async t => {
  const { app, url } = await start(t, streamRoute, { resetEvent: 'history-lost' })
  await app.eventSources.publish('x')
  const stream = await readEvents(`${url}/sse?id=u`, { 'last-event-id': 'no-such-id' })
  t.teardown(stream.close)
  await until(() => stream.events.length === 2)
  t.equal(stream.events[0].event, 'history-lost')
  t.equal(stream.events[1].data, 'x')
})

test('ids keep growing across a restart, and an id from the previous epoch is a gap', async t => {
  const ids: string[] = []
  let lastOfFirst = ''
  for (let run = 0; run < 2; run++) {
    const app = Fastify()
    await app.register(eventSources)
    streamRoute(app)
    await app.listen({ port: 0, host: '127.0.0.1' })
    const url = `http://127.0.0.1:${(app.server.address() as import('node:net').AddressInfo).port}`
    const stream = await readEvents(`${url}/sse?id=u`, run === 1 ? { 'last-event-id': lastOfFirst } : {})
    await app.eventSources.publish('a')
    await app.eventSources.publish('b')
    await until(() => stream.events.length === (run === 1 ? 3 : 2))
    if (run === 0) lastOfFirst = stream.events[1].id as string
    else t.equal(stream.events[0].event, 'reset', 'the old epoch\'s id is reported as a gap')
    ids.push(...stream.events.filter(e => e.event === undefined).map(e => e.id as string))
    stream.close()
    await app.close()
    await sleep(3)
  }
  const keys = ids.map(id => id.split('-').map(Number))
  for (let i = 1; i < keys.length; i++) {
    const [e0, s0] = keys[i - 1]
    const [e1, s1] = keys[i]
    t.ok(e1 > e0 || (e1 === e0 && s1 > s0), `${ids[i]} comes after ${ids[i - 1]}`)
  }
})

test('only publish goes into history: send and broadcast are live only', async t => {
  const { app, url } = await start(t, streamRoute)
  const first = await readEvents(`${url}/sse?id=u`)
  t.teardown(first.close)
  await app.eventSources.publish('stored')
  await until(() => first.events.length === 1)
  first.close()
  await until(() => app.eventSources.activeConnections === 0)
  const other = await readEvents(`${url}/sse?id=v`)
  t.teardown(other.close)
  await until(() => app.eventSources.activeConnections === 1)
  app.eventSources.broadcast('live only')
  await app.eventSources.publish('stored too')
  const second = await readEvents(`${url}/sse?id=u`, { 'last-event-id': first.events[0].id as string })
  t.teardown(second.close)
  await until(() => second.events.length === 1)
  await sleep(30)
  t.same(second.events.map(e => e.data), ['stored too'])
})

test('an explicit id passed to publish is kept and can be resumed from', async t => {
  const { app, url } = await start(t, streamRoute)
  await app.eventSources.publish('a', { id: 'order-1' })
  await app.eventSources.publish('b', { id: 'order-2' })
  const stream = await readEvents(`${url}/sse?id=u`, { 'last-event-id': 'order-1' })
  t.teardown(stream.close)
  await until(() => stream.events.length === 1)
  t.same(stream.events.map(e => [e.id, e.data]), [['order-2', 'b']])
})

test('with history: false, publish is live and a reconnecting client is told of the gap', async t => {
  const { app, url } = await start(t, streamRoute, { history: false })
  const stream = await readEvents(`${url}/sse?id=u`, { 'last-event-id': 'whatever' })
  t.teardown(stream.close)
  await until(() => app.eventSources.getByIdentifier('u')?.replay !== undefined)
  await app.eventSources.publish('live')
  await until(() => stream.events.length === 2)
  t.equal(stream.events[0].event, 'reset', 'the reset event comes first')
  t.same(JSON.parse(stream.events[0].data), { lastEventId: 'whatever' })
  t.equal(stream.events[1].data, 'live')
  t.equal(stream.events[1].id, undefined, 'no id is invented without history')
  t.same(app.eventSources.getByIdentifier('u')?.replay, { replayed: 0, gap: true })

  const fresh = await readEvents(`${url}/sse?id=v`)
  t.teardown(fresh.close)
  await until(() => app.eventSources.activeConnections === 2)
  await app.eventSources.publish('again')
  await until(() => fresh.events.length === 1)
  t.equal(fresh.events[0].data, 'again', 'a client with no Last-Event-ID gets no reset')
  t.equal(app.eventSources.getByIdentifier('v')?.replay, undefined)
})

test('lastEventIdQuery lets a fresh page resume from a query parameter', async t => {
  const { app, url } = await start(t, streamRoute, { lastEventIdQuery: 'lastEventId' })
  await app.eventSources.publish('a', { id: 'x1' })
  await app.eventSources.publish('b', { id: 'x2' })
  const stream = await readEvents(`${url}/sse?id=u&lastEventId=x1`)
  t.teardown(stream.close)
  await until(() => stream.events.length === 1)
  t.equal(stream.events[0].data, 'b')
  t.equal(app.eventSources.getByIdentifier('u')?.lastEventId, 'x1')
})

test('publish rejects a bad target or field before storing anything', async t => {
  const { app } = await start(t, () => {})
  await t.rejects(app.eventSources.publish('x', { to: 42 as unknown as string }), { code: 'FST_ERR_SSE_INVALID_FIELD' })
  await t.rejects(app.eventSources.publish('x', { event: 'a\nb' }), { code: 'FST_ERR_SSE_INVALID_FIELD' })
  await t.rejects(app.eventSources.publish('x', { retry: -1 }), { code: 'FST_ERR_SSE_INVALID_FIELD' })
})

test('the retry option is sent when a stream opens, and per message', async t => {
  const { app, url } = await start(t, streamRoute, { retry: 1234 })
  const stream = await readEvents(`${url}/sse?id=u`)
  t.teardown(stream.close)
  await until(() => app.eventSources.activeConnections === 1)
  await app.eventSources.publish('x', { retry: 0 })
  await until(() => stream.events.length === 1)
  t.same(stream.retries, [1234, 0])
})

test('a browser-like client reconnects after a plain close, and stops on 204', async t => {
  let connections = 0
  let refuse = false
  const { app, url } = await start(t, app => {
    app.get('/sse', async (request, reply) => {
      connections++
      if (refuse) return reply.code(204).send()
      const sse = request.getEventSource('u')
      sse.send('hi')
      await sse.keepAlive()
      return sse.close()
    })
  }, { retry: 20 })
  const es = new EventSource(`${url}/sse`)
  t.teardown(() => es.close())
  let messages = 0
  es.onmessage = () => { messages++ }
  await until(() => messages === 1)
  app.eventSources.getByIdentifier('u')?.close()
  await until(() => messages === 2, 3000, 'a reconnect after a plain close')
  t.equal(connections, 2)

  refuse = true
  app.eventSources.getByIdentifier('u')?.close()
  await until(() => es.readyState === EventSource.CLOSED, 3000, 'the client to give up on 204')
  await sleep(200)
  t.equal(connections, 3, 'no reconnect after the 204')
})

test('a termination event the page acts on stops reconnection', async t => {
  let connections = 0
  const { app, url } = await start(t, app => {
    app.get('/sse', async request => {
      connections++
      const sse = request.getEventSource('u')
      await sse.keepAlive()
      return sse.close()
    })
  }, { retry: 20 })
  const es = new EventSource(`${url}/sse`)
  t.teardown(() => es.close())
  es.addEventListener('terminate', () => es.close())
  await until(() => app.eventSources.activeConnections === 1)
  const source = app.eventSources.getByIdentifier('u')
  source?.send('bye', { event: 'terminate' })
  source?.close()
  await sleep(200)
  t.equal(es.readyState, EventSource.CLOSED)
  t.equal(connections, 1)
})
