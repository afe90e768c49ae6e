import { test } from 'tap'
import type { FastifyInstance } from 'fastify'
import type { PublishOptions } from '../types/index'
import { prng, sleep } from './helpers/clients'
import { readEvents, type EventStream } from './helpers/read-events'
import { Client, portOf, Switchboard } from './helpers/redis'
import { start, until } from './helpers/server'

/** `/sse?id=&topics=a,b&later=c`: a source following `topics` from the start and `later` once open. */
function routes (app: FastifyInstance): void {
  app.get<{ Querystring: { id?: string, topics?: string, later?: string } }>('/sse', async request => {
    const { id, topics, later } = request.query
    const sse = request.getEventSource(id === undefined || id === '' ? undefined : id, topics === undefined ? undefined : { topics: topics.split(',') })
    if (later !== undefined) sse.subscribe(later.split(','))
    sse.flush()
    await sse.keepAlive()
    return sse.close()
  })
}

function data (stream: EventStream): string[] {
  return stream.events.map(e => e.data)
}

async function open (t: Parameters<typeof start>[0], url: string, lastEventId?: string): Promise<EventStream> {
  const stream = await readEvents(url, lastEventId === undefined ? {} : { 'last-event-id': lastEventId })
  t.teardown(stream.close)
  return stream
}

interface Route {
  to: PublishOptions['to']
  /** Whether the client under test (alice, following room:a and room:b) is meant to get it. */
  mine: boolean
  /** Whether an anonymous client following room:a and room:b is meant to get it. */
  anonymous: boolean
}

const ROUTES: Route[] = [
  { to: { topic: 'room:a' }, mine: true, anonymous: true },
  { to: { topic: 'room:b' }, mine: true, anonymous: true },
  { to: 'alice', mine: true, anonymous: false },
  { to: { topic: 'room:c' }, mine: false, anonymous: false },
  { to: 'bob', mine: false, anonymous: false },
  { to: { topic: ['room:a', 'room:c'] }, mine: true, anonymous: true },
  { to: { topic: ['room:b', 'room:a'] }, mine: true, anonymous: true },
  { to: { prefix: 'ali' }, mine: true, anonymous: false },
  { to: { topic: ['room:c', 'room:d'] }, mine: false, anonymous: false },
  { to: undefined, mine: true, anonymous: false }
]

for (const who of ['alice', 'an anonymous follower'] as const) {
  test(`${who}, following room:a and room:b, cut several times, receives exactly its messages once, in order`, async t => {
    const { app, url } = await start(t, routes, { retry: 20 })
    const identified = who === 'alice'
    const board = new Switchboard(t, portOf(url))
    const query = identified ? '?id=alice&topics=room:a,room:b' : '?topics=room:a,room:b'
    const client = new Client(t, url + '/sse' + query, { dispatcher: board.agent }, ['reset'])
    await until(() => client.opens === 1, 3000, 'first open')
    const random = prng(13)
    const expected: string[] = []
    const TOTAL = 400
    let cuts = 0
    for (let n = 1; n <= TOTAL; n++) {
      const route = ROUTES[Math.floor(random() * ROUTES.length)]
      const text = `${n}`
      await app.eventSources.publish(text, route.to === undefined ? {} : { to: route.to })
      if (identified ? route.mine : route.anonymous) expected.push(text)
      if (n % 80 === 40) {
        // Alternately the server ends the stream and the network drops it.
        if (cuts % 2 === 0) for (const source of app.eventSources.subscribers('room:a')) source.close()
        else board.drop()
        cuts++
      }
      if (n % 4 === 0) await sleep(1)
    }
    await until(() => client.data.length >= expected.length, 10_000, `${expected.length} messages`)
    await sleep(50)
    t.equal(cuts, 5)
    t.ok(client.opens >= 4, `the client reconnected (${client.opens} opens)`)
    t.same(client.events.filter(e => e.type === 'reset'), [], 'no gap was reported')
    t.same(client.data, expected, `exactly its ${expected.length} of ${TOTAL} messages, once each, in publish order`)
  })
}

test('a quiet topic keeps its history while a busy one publishes 10,000 messages', async t => {
  const { app, url } = await start(t, routes)
  const sources = app.eventSources
  const quiet = await open(t, url + '/sse?topics=quiet')
  for (const text of ['q1', 'q2', 'q3']) await sources.publish(text, { to: { topic: 'quiet' } })
  await until(() => quiet.events.length === 3)
  quiet.close()
  await until(() => sources.openStreams === 0)
  for (let n = 1; n <= 10_000; n++) await sources.publish(`busy ${n}`, { to: { topic: 'busy' } })
  await sources.publish('q4', { to: { topic: 'quiet' } })

  const resumed = await open(t, url + '/sse?topics=quiet', quiet.events[2].id)
  await until(() => resumed.events.length === 1)
  await sleep(20)
  t.same(data(resumed), ['q4'], 'the quiet topic resumes without a gap')
  t.same(sources.subscribers('quiet')[0].replay, { replayed: 1, gap: false })
  t.equal(resumed.events[0].event, undefined)

  const both = await open(t, url + '/sse?topics=quiet,busy', quiet.events[2].id)
  await until(() => both.events.length === 1 + 1000 + 1)
  t.equal(both.events[0].event, 'reset', 'the busy topic was trimmed after that id: a gap, reported first')
  t.same(data(both).slice(1, 3), ['busy 9001', 'busy 9002'], 'then what is held, in publish order')
  t.equal(data(both).at(-1), 'q4')
})

test('topics subscribed after open are live only: a reconnect replays the declared ones', async t => {
  const { app, url } = await start(t, routes)
  const sources = app.eventSources
  const first = await open(t, url + '/sse?id=u&topics=a&later=b')
  await sources.publish('a1', { to: { topic: 'a' } })
  await sources.publish('b1', { to: { topic: 'b' } })
  await until(() => first.events.length === 2)
  t.same(data(first), ['a1', 'b1'])
  first.close()
  await until(() => sources.openStreams === 0)
  await sources.publish('a2', { to: { topic: 'a' } })
  await sources.publish('b2', { to: { topic: 'b' } })
  await sources.publish('u2', { to: 'u' })

  const second = await open(t, url + '/sse?id=u&topics=a&later=b', first.events[1].id)
  await until(() => second.events.length === 2)
  await sources.publish('b3', { to: { topic: 'b' } })
  await until(() => second.events.length === 3)
  t.same(data(second), ['a2', 'u2', 'b3'])
  t.same(sources.getByIdentifier('u')?.replay, { replayed: 2, gap: false })
})

for (const [name, history, away] of [
  ['trimmed', { size: 3 }, async (app: FastifyInstance) => {
    for (const n of [2, 3, 4, 5]) await app.eventSources.publish(`t${n}`, { to: { topic: 't' } })
  }],
  ['dropped as least recently published', { topics: 2 }, async (app: FastifyInstance) => {
    await app.eventSources.publish('t2', { to: { topic: 't' } })
    await app.eventSources.publish('other 1', { to: { topic: 'o1' } })
    await app.eventSources.publish('other 2', { to: { topic: 'o2' } })
  }],
  ['expired', { ttl: 30 }, async (app: FastifyInstance) => {
    await app.eventSources.publish('t2', { to: { topic: 't' } })
    await sleep(60)
  }]
] as const) {
  test(`a gap in a followed topic (${name}) sends the reset event first, then what is held`, async t => {
    const { app, url } = await start(t, routes, { history })
    const first = await open(t, url + '/sse?topics=t,quiet')
    await app.eventSources.publish('t1', { to: { topic: 't' } })
    await until(() => first.events.length === 1)
    first.close()
    await until(() => app.eventSources.openStreams === 0)
    await away(app)
    const second = await open(t, url + '/sse?topics=t,quiet', first.events[0].id)
    await until(() => app.eventSources.subscribers('t')[0]?.replay !== undefined)
    await sleep(20)
    const replay = app.eventSources.subscribers('t')[0].replay
    t.equal(replay?.gap, true)
    t.equal(second.events[0].event, 'reset')
    t.same(JSON.parse(second.events[0].data), { lastEventId: first.events[0].id })
    const held = { trimmed: ['t3', 't4', 't5'], 'dropped as least recently published': [], expired: [] }[name]
    t.same(data(second).slice(1), held)
    t.equal(replay?.replayed, held.length)
  })
}

test('an id from another epoch is a gap; a topic never published is not', async t => {
  const { app, url } = await start(t, routes)
  await app.eventSources.publish('mark', { to: { topic: 'x' } })
  const other = await open(t, url + '/sse?topics=x', '1-1')
  await until(() => other.events.length === 2)
  t.same(other.events.map(e => [e.event, e.data]), [['reset', '{"lastEventId":"1-1"}'], [undefined, 'mark']])

  const seen = await open(t, url + '/sse?topics=x')
  await app.eventSources.publish('x1', { to: { topic: 'x' } })
  await until(() => seen.events.length === 1)
  const fresh = await open(t, url + '/sse?topics=never', seen.events[0].id)
  await until(() => app.eventSources.subscribers('never')[0]?.replay !== undefined)
  t.same(app.eventSources.subscribers('never')[0].replay, { replayed: 0, gap: false })
  t.same(fresh.events, [])
})

test('an explicit id given to publish resumes a topic too', async t => {
  const { app, url } = await start(t, routes)
  const first = await open(t, url + '/sse?topics=t')
  await app.eventSources.publish('one', { to: { topic: 't' }, id: 'order-1' })
  await until(() => first.events.length === 1)
  t.equal(first.events[0].id, 'order-1')
  first.close()
  await until(() => app.eventSources.openStreams === 0)
  await app.eventSources.publish('two', { to: { topic: 't' } })
  const second = await open(t, url + '/sse?topics=t', 'order-1')
  await until(() => second.events.length === 1)
  await sleep(20)
  t.same(data(second), ['two'])
})
