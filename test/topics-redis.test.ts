import tap, { test, type Test } from 'tap'
import type { FastifyInstance } from 'fastify'
import redisAdapter from '../lib/adapters/redis'
import type { RedisAdapterOptions } from '../types/redis'
import type { PublishTarget, TopicTarget } from '../types/index'
import { prng, sleep } from './helpers/clients'
import { readEvents, type EventStream } from './helpers/read-events'
import { Client, Switchboard, portOf, redisClient, redisReady, redisUrl, stored, uniquePrefix } from './helpers/redis'
import { PrivateRedis, hasRedisServer, subscriberIds } from './helpers/redis-server'
import { start, until } from './helpers/server'

/** `/sse?id=&topics=a,b`: a source (identified when id is given) following `topics` from the start. */
function routes (app: FastifyInstance): void {
  app.get<{ Querystring: { id?: string, topics?: string } }>('/sse', async request => {
    const { id, topics } = request.query
    const sse = request.getEventSource(id === undefined || id === '' ? undefined : id, topics === undefined ? undefined : { topics: topics.split(',') })
    sse.flush()
    await sse.keepAlive()
    return sse.close()
  })
}

async function instance (t: Test, prefix: string, options: RedisAdapterOptions = {}): Promise<{ app: FastifyInstance, url: string }> {
  return start(t, routes, { adapter: redisAdapter({ url: redisUrl, channelPrefix: prefix, ...options }), retry: 20 })
}

async function open (t: Test, url: string, lastEventId?: string): Promise<EventStream> {
  const stream = await readEvents(url, lastEventId === undefined ? {} : { 'last-event-id': lastEventId })
  t.teardown(stream.close)
  return stream
}

const data = (stream: EventStream): string[] => stream.events.map(e => e.data)

interface Route { to: PublishTarget | TopicTarget | undefined, alice: boolean, anonymous: boolean }

const ROUTES: Route[] = [
  { to: { topic: 'room:a' }, alice: true, anonymous: true },
  { to: { topic: 'room:b' }, alice: true, anonymous: true },
  { to: 'alice', alice: true, anonymous: false },
  { to: { topic: 'room:c' }, alice: false, anonymous: false },
  { to: 'bob', alice: false, anonymous: false },
  { to: { topic: ['room:a', 'room:c'] }, alice: true, anonymous: true },
  { to: { topic: ['room:b', 'room:a'] }, alice: true, anonymous: true },
  { to: { prefix: 'ali' }, alice: true, anonymous: false },
  { to: undefined, alice: true, anonymous: false }
]

if (redisReady(tap)) {
  for (const who of ['alice', 'an anonymous follower'] as const) {
    test(`behind a round-robin balancer over two instances, ${who} following room:a and room:b, cut several times, receives exactly its messages once, in order`, async t => {
      const prefix = uniquePrefix(t)
      const nodes = [await instance(t, prefix), await instance(t, prefix)]
      const identified = who === 'alice'
      const board = new Switchboard(t, portOf(nodes[0].url))
      // The URL names the first instance; the balancer decides where each (re)connection lands.
      const query = identified ? '?id=alice&topics=room:a,room:b' : '?topics=room:a,room:b'
      const client = new Client(t, nodes[0].url + '/sse' + query, { dispatcher: board.agent }, ['reset'])
      await until(() => client.opens === 1, 5000, 'first open')
      const random = prng(29)
      const expected: string[] = []
      const TOTAL = 300
      let cuts = 0
      for (let n = 1; n <= TOTAL; n++) {
        const route = ROUTES[Math.floor(random() * ROUTES.length)]
        const publisher = nodes[Math.floor(random() * 2)].app
        await publisher.eventSources.publish(String(n), route.to === undefined ? {} : { to: route.to })
        if (identified ? route.alice : route.anonymous) expected.push(String(n))
        if (n % 60 === 30) {
          cuts++
          board.port = portOf(nodes[cuts % 2].url)
          // Alternately the serving instance ends the stream and the network drops it.
          if (cuts % 2 === 0) for (const { app } of nodes) for (const source of app.eventSources.subscribers('room:a')) source.close()
          else board.drop()
        }
        if (n % 4 === 0) await sleep(1)
      }
      await until(() => client.data.length >= expected.length, 15_000, `${expected.length} messages`)
      await sleep(100)
      t.equal(cuts, 5)
      t.ok(client.opens >= 4, `the client reconnected (${client.opens} opens) on both instances`)
      t.same(client.events.filter(e => e.type === 'reset'), [], 'no gap was reported')
      t.same(client.data, expected, `exactly its ${expected.length} of ${TOTAL} messages, once each, in publish order`)
      const ids = client.events.map(e => e.id)
      t.equal(new Set(ids).size, ids.length, 'one id sequence: no id twice')
    })
  }

  test('eventSources.subscribe on one instance joins a stream open on another; unsubscribe leaves', async t => {
    const prefix = uniquePrefix(t)
    const a = await instance(t, prefix)
    const b = await instance(t, prefix)
    const alice = await open(t, b.url + '/sse?id=team:alice')
    const carol = await open(t, a.url + '/sse?id=team:carol')
    await until(() => a.app.eventSources.activeConnections === 1 && b.app.eventSources.activeConnections === 1)

    await a.app.eventSources.subscribe('team:alice', 'room:7')
    t.same(a.app.eventSources.subscribers('room:7'), [], 'nobody matched on A')
    await a.app.eventSources.publish('room 7, after the join', { to: { topic: 'room:7' } })
    await until(() => alice.events.length === 1, 5000, 'the message on B')
    t.same([...b.app.eventSources.subscribers('room:7')].map(s => s.identifier), ['team:alice'])

    await b.app.eventSources.subscribe({ prefix: 'team:' }, ['room:8'])
    t.same(b.app.eventSources.subscribers('room:8').map(s => s.identifier), ['team:alice'], 'joined on B when the promise resolves')
    await b.app.eventSources.publish('room 8', { to: { topic: 'room:8' } })
    await until(() => carol.events.length === 1 && alice.events.length === 2, 5000, 'room 8 on both')

    await a.app.eventSources.unsubscribe('team:alice', 'room:7')
    await a.app.eventSources.publish('room 7, after leaving', { to: { topic: 'room:7' } })
    await a.app.eventSources.publish('end')
    await until(() => alice.events.length === 3 && carol.events.length === 2, 5000, 'the end marker')
    t.same(data(alice), ['room 7, after the join', 'room 8', 'end'])
    t.same(data(carol), ['room 8', 'end'])
  })

  test('a malformed control message is ignored', async t => {
    const prefix = uniquePrefix(t)
    const a = await instance(t, prefix)
    const alice = await open(t, a.url + '/sse?id=alice')
    await until(() => a.app.eventSources.activeConnections === 1)
    const redis = redisClient(t)
    for (const payload of ['not json', '["x","subscribe","alice",["bad\\ntopic"]]', '["x","join","alice",["t"]]', '["x","subscribe",{"prefix":1},["t"]]']) {
      await redis.publish(prefix + 'control', payload)
    }
    await redis.publish(prefix + 'control', '["x","subscribe","alice",["t"]]')
    await until(() => a.app.eventSources.subscribers('t').length === 1, 5000, 'the good one')
    t.same([...a.app.eventSources.getByIdentifier('alice')?.topics ?? []], ['t'], 'only the well-formed message changed anything')
    t.equal(alice.events.length, 0)
  })

  test('a quiet topic keeps its history in Redis while a busy one publishes 10,000 messages', async t => {
    const prefix = uniquePrefix(t)
    const redis = redisClient(t)
    const { app, url } = await instance(t, prefix, { history: { maxLen: 50 } })
    const first = await open(t, url + '/sse?topics=quiet')
    for (const text of ['q1', 'q2', 'q3']) await app.eventSources.publish(text, { to: { topic: 'quiet' } })
    await until(() => first.events.length === 3)
    first.close()
    await until(() => app.eventSources.openStreams === 0)
    // In batches: each publish must be answered within publishTimeout, however busy the machine.
    for (let n = 0; n < 10_000; n += 250) {
      await Promise.all(Array.from({ length: 250 }, (_, k) => app.eventSources.publish(`busy ${n + k}`, { to: { topic: 'busy' } })))
    }
    await app.eventSources.publish('q4', { to: { topic: 'quiet' } })
    t.equal((await stored(redis, prefix, 'topic:busy')).length, 50, 'the busy topic is trimmed to maxLen')
    t.same((await stored(redis, prefix, 'topic:quiet')).map(([, text]) => text), ['q1', 'q2', 'q3', 'q4'])

    const resumed = await open(t, url + '/sse?topics=quiet', first.events[2].id)
    await until(() => app.eventSources.subscribers('quiet')[0]?.replay !== undefined, 5000, 'the replay')
    await sleep(30)
    t.same(data(resumed), ['q4'])
    t.same(app.eventSources.subscribers('quiet')[0].replay, { replayed: 1, gap: false })

    const both = await open(t, url + '/sse?topics=quiet,busy', first.events[2].id)
    await until(() => both.events.length === 1 + 50 + 1, 5000, 'the reset and what is held')
    t.equal(both.events[0].event, 'reset', 'the busy stream lost entries after that id')
    t.same(data(both).slice(1, 3), ['busy 9950', 'busy 9951'])
    t.equal(data(both).at(-1), 'q4')
  })

  test('a topic history dropped in Redis (least recently published, or idle) is a gap, also once it starts again', async t => {
    const prefix = uniquePrefix(t)
    const redis = redisClient(t)
    const { app, url } = await instance(t, prefix, { history: { topics: 2 } })
    const first = await open(t, url + '/sse?topics=t')
    await app.eventSources.publish('t1', { to: { topic: 't' } })
    await until(() => first.events.length === 1)
    first.close()
    await until(() => app.eventSources.openStreams === 0)
    await app.eventSources.publish('t2', { to: { topic: 't' } })
    await app.eventSources.publish('o1', { to: { topic: 'o1' } })
    await app.eventSources.publish('o2', { to: { topic: 'o2' } })
    t.equal(await redis.exists(prefix + 'topic:t'), 0, 't was dropped')
    const dropped = await open(t, url + '/sse?topics=t', first.events[0].id)
    await until(() => dropped.events.length === 1, 5000, 'the reset')
    t.equal(dropped.events[0].event, 'reset')
    dropped.close()

    await app.eventSources.publish('t3', { to: { topic: 't' } })
    const again = await open(t, url + '/sse?topics=t', first.events[0].id)
    await until(() => again.events.length === 2, 5000, 'the reset and t3')
    t.same(again.events.map(e => [e.event, e.data]), [['reset', JSON.stringify({ lastEventId: first.events[0].id })], [undefined, 't3']], 't2 is lost, and said so')
    t.equal(await redis.zcard(prefix + 'topics'), 2)

    const idle = await instance(t, uniquePrefix(t), { history: { ttl: 30 } })
    const watcher = await open(t, idle.url + '/sse?topics=x')
    await idle.app.eventSources.publish('x1', { to: { topic: 'x' } })
    await until(() => watcher.events.length === 1)
    await sleep(60)
    await idle.app.eventSources.publish('y1', { to: { topic: 'y' } })
    const late = await open(t, idle.url + '/sse?topics=x', watcher.events[0].id)
    await until(() => late.events.length === 1, 5000, 'the reset')
    t.equal(late.events[0].event, 'reset', 'x was idle past ttl and dropped')
  })

  test('an id from a history Redis lost is a gap; a topic never published is not', async t => {
    const prefix = uniquePrefix(t)
    const { app, url } = await instance(t, prefix)
    await app.eventSources.publish('mark', { to: { topic: 'x' } })
    const old = await open(t, url + '/sse?topics=x', '1-1')
    await until(() => old.events.length === 2, 5000, 'reset and mark')
    t.same(old.events.map(e => [e.event, e.data]), [['reset', '{"lastEventId":"1-1"}'], [undefined, 'mark']])
    const fresh = await open(t, url + '/sse?topics=never', old.events[1].id)
    await until(() => app.eventSources.subscribers('never')[0]?.replay !== undefined, 5000, 'the replay')
    t.same(app.eventSources.subscribers('never')[0].replay, { replayed: 0, gap: false })
    t.same(fresh.events, [])
  })

  test('Redis history options for topics are checked when the adapter is made', async t => {
    for (const history of [{ topics: 0 }, { topics: 1.5 }, { ttl: 0 }, { ttl: '1h' }]) {
      t.throws(() => redisAdapter({ history: history as { topics: number } }), { code: 'FST_ERR_SSE_INVALID_OPTION' }, JSON.stringify(history))
    }
    t.doesNotThrow(() => redisAdapter({ history: { topics: Infinity, ttl: Infinity } }))
  })

  test('after its subscription is cut, an instance sends the reset to anonymous topic followers too, and follows control messages again (regression)', { skip: hasRedisServer ? false : 'no redis-server to start a private one' }, async t => {
    const redis = await PrivateRedis.start(t)
    const name = `fes-topics-${process.pid}`
    const a = await start(t, routes, { adapter: redisAdapter({ url: `${redis.url}?connectionName=${name}`, channelPrefix: 'cut:', history: false }) })
    const b = await start(t, routes, { adapter: redisAdapter({ url: redis.url, channelPrefix: 'cut:', history: false }) })
    const viewer = await open(t, a.url + '/sse?topics=scores')
    const alice = await open(t, a.url + '/sse?id=alice')
    await until(() => a.app.eventSources.openStreams === 2)
    const control = redis.client(t)
    for (const id of await subscriberIds(control, name)) await control.client('KILL', 'ID', id)
    await until(() => viewer.events.length === 1 && alice.events.length === 1, 5000, 'the reset events')
    t.same(viewer.events[0], { event: 'reset', data: '{"lastEventId":null}', id: undefined }, 'the anonymous follower missed topic messages too')
    // Subscribed again: a control message from B reaches A.
    for (let attempt = 0; attempt < 100 && a.app.eventSources.subscribers('room:1').length === 0; attempt++) {
      await b.app.eventSources.subscribe('alice', 'room:1')
      await sleep(50)
    }
    t.equal(a.app.eventSources.subscribers('room:1').length, 1, 'joined through the control channel')
    await b.app.eventSources.publish('to room 1', { to: { topic: 'room:1' } })
    await until(() => alice.events.length === 2, 5000, 'the room message')
    t.equal(alice.events[1].data, 'to room 1')
  })

  test('a smaller maxLen on a running cluster trims a long stream in one publish (regression: Lua unpack limit)', async t => {
    const prefix = uniquePrefix(t)
    const redis = redisClient(t)
    const big = await instance(t, prefix, { history: { maxLen: 12_000 } })
    for (let n = 0; n < 12_000; n += 500) {
      await Promise.all(Array.from({ length: 500 }, (_, k) => big.app.eventSources.publish(`m${n + k}`, { to: { topic: 't' } })))
    }
    const small = await instance(t, prefix, { history: { maxLen: 10 } })
    await small.app.eventSources.publish('last', { to: { topic: 't' } })
    const held = await stored(redis, prefix, 'topic:t')
    t.equal(held.length, 10)
    t.equal(held.at(-1)?.[1], 'last')
  })
}
