import tap, { test, type Test } from 'tap'
import { randomBytes } from 'node:crypto'
import type { FastifyInstance } from 'fastify'
import { Cluster, Redis } from 'ioredis'
import redisAdapter from '../lib/adapters/redis'
import { closeCluster } from '../lib/adapters/coordination'
import { padded, slotOf } from '../lib/history/redis-cluster-streams'
import type { RedisClusterAdapterOptions } from '../types/redis'
import type { PublishTarget, TopicTarget } from '../types/index'
import { prng, sleep } from './helpers/clients'
import { readEvents, type EventStream } from './helpers/read-events'
import { Client, Switchboard, everyOnceInOrder, portOf } from './helpers/redis'
import { freeze } from './helpers/freeze'
import { start, until } from './helpers/server'
import { ask, clusterReady, replicasCaughtUp, startCluster, type RedisCluster } from './fixtures/redis-cluster'

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

if (clusterReady(tap)) {
  let cluster: RedisCluster
  tap.before(async () => { cluster = await startCluster() })
  tap.teardown(() => cluster?.stop())

  const uniquePrefix = (): string => `fes-cluster:${randomBytes(4).toString('hex')}:`

  async function instance (t: Test, prefix: string, options: RedisClusterAdapterOptions = {}): Promise<{ app: FastifyInstance, url: string }> {
    return start(t, routes, { adapter: redisAdapter({ nodes: cluster.startupNodes, channelPrefix: prefix, ...options }), retry: 20 })
  }

  async function open (t: Test, url: string, lastEventId?: string): Promise<EventStream> {
    const stream = await readEvents(url, lastEventId === undefined ? {} : { 'last-event-id': lastEventId })
    t.teardown(stream.close)
    return stream
  }

  function commands (t: Test): Cluster {
    const client = new Cluster(cluster.startupNodes, { slotsRefreshInterval: 1000, lazyConnect: true })
    client.on('error', () => {})
    t.teardown(async () => closeCluster(client, 2000))
    return client
  }

  // First, while the cluster has taken no write: CLUSTER SLOTS then lists no replica (Redis leaves out a replica
  // whose offset it has not heard of), and writes that trusted that map were not waited for, then lost with their
  // master in one failover run in about 30.
  test('a publish resolves only once a replica holds it, even while the slot map lists none: with the replicas stopped it rejects', async t => {
    const prefix = uniquePrefix()
    const { app } = await instance(t, prefix, { publishTimeout: 1000 })
    const keys = { sequencer: `{${prefix}}plain`, topic: `${prefix}{t:room:a}` }
    const replicas = new Map<string, number>()
    const masters = new Set<number>()
    for (const [name, key] of Object.entries(keys)) {
      const master = await cluster.masterOf(key)
      masters.add(master)
      const listed = (await ask(master, 'CLUSTER', 'SLOTS') as [number, number, ...unknown[]][]).find(([from, to]) => slotOf(key) >= from && slotOf(key) <= to)
      const role = await ask(master, 'ROLE') as [string, number, [string, string, string][]]
      t.equal(role[2].length, 1, `the ${name}'s master has its replica online`)
      replicas.set(name, Number(role[2][0][1]))
      t.comment(`the slot map lists ${(listed?.length ?? 3) - 3} replica(s) for the ${name}'s slot`)
    }
    const resume = freeze(t, cluster.nodes.filter(node => [...replicas.values()].includes(node.port)).map(node => node.pid))
    for (const to of [{ topic: 'room:a' }, 'alice']) {
      await t.rejects(app.eventSources.publish('unacknowledged', { to }), { code: 'FST_ERR_SSE_PUBLISH_FAILED' }, `to ${JSON.stringify(to)}: rejects, as no replica acknowledged it`)
    }
    resume()
    // What is measured is that a publish waits for a replica, not how soon a resumed process is scheduled again.
    for (const master of masters) await replicasCaughtUp(master)
    await app.eventSources.publish('acknowledged', { to: { topic: 'room:a' } })
    await app.eventSources.publish('acknowledged', { to: 'alice' })
    for (const [name, key] of Object.entries(keys)) {
      const replica = new Redis({ host: '127.0.0.1', port: replicas.get(name) as number, lazyConnect: true, maxRetriesPerRequest: 1 })
      t.teardown(() => replica.disconnect())
      await replica.call('READONLY')
      const entries = await replica.xrange(key, '-', '+')
      t.ok(entries.some(([, fields]) => fields.join().includes('acknowledged') && !fields.join().includes('unacknowledged')), `the ${name}'s replica holds the resolved publish`)
    }
  })

  test('the topic streams and the sequencer live on their own slots, and room:a and room:b on different masters', async t => {
    const prefix = uniquePrefix()
    const { app } = await instance(t, prefix)
    await app.eventSources.publish('a', { to: { topic: 'room:a' } })
    await app.eventSources.publish('b', { to: { topic: 'room:b' } })
    await app.eventSources.publish('plain', { to: 'alice' })
    const redis = commands(t)
    const a = await redis.xrange(`${prefix}{t:room:a}`, '-', '+')
    const b = await redis.xrange(`${prefix}{t:room:b}`, '-', '+')
    const plain = await redis.xrange(`{${prefix}}plain`, '-', '+')
    t.same([a.length, b.length, plain.length], [1, 1, 1])
    t.ok(BigInt(a[0][0].split('-')[0]) <= BigInt(b[0][0].split('-')[0]), 'one increasing sequence across shards')
    t.equal(slotOf(`${prefix}{t:room:a}`), slotOf('t:room:a'), 'the hash tag is the topic')
    const masters = new Set(await Promise.all(['room:a', 'room:b', 'room:c', 'room:7', 'room:8'].map(topic => cluster.masterOf(`${prefix}{t:${topic}}`))))
    t.comment(`the test topics live on ${masters.size} of the 3 masters`)
  })

  for (const who of ['alice', 'an anonymous follower'] as const) {
    test(`behind a round-robin balancer over two instances, ${who} following room:a and room:b, cut several times, receives exactly its messages once, in order`, async t => {
      const prefix = uniquePrefix()
      const nodes = [await instance(t, prefix), await instance(t, prefix)]
      const identified = who === 'alice'
      const board = new Switchboard(t, portOf(nodes[0].url))
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

  // Regression: a write counted complete by the sequencer could still be on its way over its shard's connection
  // when later ids were released; the instance reported a gap. A PING on each shard connection now fences it.
  test('concurrent publishes from two instances to topics on different shards arrive in one id order, each once, on both instances', async t => {
    const prefix = uniquePrefix()
    const nodes = [await instance(t, prefix), await instance(t, prefix)]
    const streams = await Promise.all(nodes.map((node, i) => open(t, node.url + `/sse?id=u:${i}&topics=room:a,room:b,room:c`)))
    await until(() => nodes.every(node => node.app.eventSources.subscribers('room:c').length === 1), 5000, 'both open')
    const TOTAL = 400
    const sent: Promise<void>[] = []
    for (let n = 0; n < TOTAL; n++) {
      const node = nodes[n % 2]
      const to = n % 5 === 4 ? { prefix: 'u:' } : { topic: ['room:a', 'room:b', 'room:c'][n % 3] }
      sent.push(node.app.eventSources.publish(`${n % 2}:${n}`, { to }))
    }
    await Promise.all(sent)
    await until(() => streams.every(stream => stream.events.length >= TOTAL), 15_000, 'every message on both')
    await sleep(50)
    const [one, two] = streams.map(stream => stream.events.map(e => [e.id, e.data]))
    t.equal(one.length, TOTAL)
    t.same(one, two, 'both instances deliver the same messages in the same order')
    const ids = one.map(([id]) => id as string)
    t.ok(ids.every((id, i) => i === 0 || compare(id, ids[i - 1]) > 0), 'in increasing id order')
    for (const origin of ['0', '1']) {
      const mine = one.map(([, text]) => text as string).filter(text => text.startsWith(origin + ':')).map(text => Number(text.slice(2)))
      t.ok(mine.every((n, i) => i === 0 || n > mine[i - 1]), `instance ${origin}'s messages in its publish order`)
    }
    // A fresh instance replays the same order from the history spread over the shards.
    const third = await instance(t, prefix)
    const replayed = await open(t, third.url + '/sse?id=u:2&topics=room:a,room:b,room:c', '0-1')
    await until(() => replayed.events.length >= TOTAL + 1, 10_000, 'the replay')
    t.equal(replayed.events[0].event, 'reset', 'an id before this history: a gap, then everything held')
    t.same(replayed.events.slice(1).map(e => [e.id, e.data]), one, 'the replay is the live order')
  })

  test('selective on a cluster: a message to an identifier or a topic reaches only the instances that follow it; a new identifier gets nothing sent before it opened; the last leaving unsubscribes', async t => {
    const prefix = uniquePrefix()
    const a = await instance(t, prefix)
    const b = await instance(t, prefix)
    const sequencer = new Redis({ host: '127.0.0.1', port: await cluster.masterOf(`{${prefix}}`), lazyConnect: true })
    t.teardown(() => sequencer.disconnect())
    const listeners = async (channel: string): Promise<number> => {
      const reply = await sequencer.call('PUBSUB', 'SHARDNUMSUB', channel) as [string, number]
      return Number(reply[1])
    }
    const alice = await open(t, a.url + '/sse?id=alice&topics=room:a')
    const bob = await open(t, b.url + '/sse?id=bob&topics=room:b')
    await until(() => a.app.eventSources.subscribers('room:a').length === 1 && b.app.eventSources.subscribers('room:b').length === 1, 5000, 'both open')
    const before = [a.app.eventSources.metrics().received, b.app.eventSources.metrics().received]
    for (let n = 0; n < 10; n++) {
      await a.app.eventSources.publish(`alice ${n}`, { to: 'alice' })
      await a.app.eventSources.publish(`bob ${n}`, { to: 'bob' })
      await b.app.eventSources.publish(`room a ${n}`, { to: { topic: 'room:a' } })
      await b.app.eventSources.publish(`room b ${n}`, { to: { topic: 'room:b' } })
    }
    await until(() => alice.events.length === 20 && bob.events.length === 20, 5000, 'every message')
    await sleep(100)
    const after = [a.app.eventSources.metrics().received, b.app.eventSources.metrics().received]
    t.same([after[0] - before[0], after[1] - before[1]], [20, 20], 'each instance received only the 20 messages for its own sources (of 40 published)')
    t.same(data(alice).filter(text => text.startsWith('alice')).length, 10)
    t.same(data(bob).filter(text => text.startsWith('bob')).length, 10)
    t.equal(await listeners(`{${prefix}}i:alice`), 1, 'one instance listens to alice\'s channel')
    t.equal(await listeners(`{${prefix}}i:carol`), 0, 'nobody listens to carol\'s yet')

    // Published while nobody follows carol, after the last message B delivered: B (which will hold her stream) hears
    // nothing of it, and a read of her history from the last id B delivered would find all of it.
    for (let n = 0; n < 20; n++) await a.app.eventSources.publish(`early ${n}`, { to: 'carol' })
    await sleep(150)
    const carol = await open(t, b.url + '/sse?id=carol')
    await until(() => b.app.eventSources.getByIdentifier('carol') !== undefined, 5000, 'carol open')
    await a.app.eventSources.publish('hello carol', { to: 'carol' })
    await until(() => carol.events.length >= 1, 5000, 'the message to carol')
    await sleep(100)
    t.same(data(carol), ['hello carol'], 'what was published to carol before she opened does not reach her')

    alice.close()
    const deadline = Date.now() + 8000
    while ((await listeners(`{${prefix}}i:alice`)) !== 0 && Date.now() < deadline) await sleep(100)
    t.equal(await listeners(`{${prefix}}i:alice`), 0, 'the last source of alice gone, her channel is left (after the linger)')
  })

  test('a message to several topics is written once on the sequencer\'s slot and reaches each follower once; without history as well', async t => {
    for (const history of [true, false]) {
      const prefix = uniquePrefix()
      const a = await instance(t, prefix, history ? {} : { history: false })
      const b = await instance(t, prefix, history ? {} : { history: false })
      const both = await open(t, a.url + '/sse?id=u:1&topics=room:a,room:b,room:c')
      const one = await open(t, b.url + '/sse?id=u:2&topics=room:b')
      await until(() => a.app.eventSources.subscribers('room:c').length === 1 && b.app.eventSources.subscribers('room:b').length === 1, 5000, 'both open')
      await sleep(50)
      await b.app.eventSources.publish('abc', { to: { topic: ['room:a', 'room:b', 'room:c'] } })
      await b.app.eventSources.publish('ac', { to: { topic: ['room:a', 'room:c'] } })
      await a.app.eventSources.publish('end', { to: { topic: 'room:b' } })
      await until(() => both.events.length >= 3 && one.events.length >= 2, 5000, 'the messages')
      await sleep(100)
      t.same(data(both), ['abc', 'ac', 'end'], `history ${history}: once each on the follower of all three`)
      t.same(data(one), ['abc', 'end'], `history ${history}: the follower of one gets what names it`)
      if (history) {
        const redis = commands(t)
        t.equal(await redis.xlen(`{${prefix}}multi`), 2, 'both written once, on the sequencer\'s slot')
        t.equal(await redis.exists(`${prefix}{t:room:a}`), 0, 'not in the topic\'s own stream')
        const resumed = await open(t, b.url + '/sse?topics=room:c', both.events[0].id)
        await until(() => resumed.events.length >= 1, 5000, 'the replay')
        await sleep(100)
        t.same(data(resumed), ['ac'], 'replayed from there for a follower of room:c')
      }
    }
  })

  test('eventSources.subscribe on one instance joins a stream open on another; unsubscribe leaves', async t => {
    const prefix = uniquePrefix()
    const a = await instance(t, prefix)
    const b = await instance(t, prefix)
    const alice = await open(t, b.url + '/sse?id=team:alice')
    const carol = await open(t, a.url + '/sse?id=team:carol')
    await until(() => a.app.eventSources.activeConnections === 1 && b.app.eventSources.activeConnections === 1)
    await a.app.eventSources.subscribe('team:alice', 'room:7')
    await a.app.eventSources.publish('room 7, after the join', { to: { topic: 'room:7' } })
    await until(() => alice.events.length === 1, 5000, 'the message on B')
    await b.app.eventSources.subscribe({ prefix: 'team:' }, ['room:8'])
    await b.app.eventSources.publish('room 8', { to: { topic: 'room:8' } })
    await until(() => carol.events.length === 1 && alice.events.length === 2, 5000, 'room 8 on both')
    await a.app.eventSources.unsubscribe('team:alice', 'room:7')
    await a.app.eventSources.publish('room 7, after leaving', { to: { topic: 'room:7' } })
    await a.app.eventSources.publish('end')
    await until(() => alice.events.length === 3 && carol.events.length === 2, 5000, 'the end marker')
    t.same(data(alice), ['room 7, after the join', 'room 8', 'end'])
    t.same(data(carol), ['room 8', 'end'])
  })

  test('presence and counts across instances; a newer stream for an identifier on another instance replaces the older one', async t => {
    const prefix = uniquePrefix()
    const options = { presence: { heartbeat: 200, flush: 20 } }
    const a = await instance(t, prefix, options)
    const b = await instance(t, prefix, options)
    const first = await open(t, a.url + '/sse?id=alice&topics=room:1')
    await open(t, b.url + '/sse?id=bob&topics=room:1')
    await open(t, b.url + '/sse?topics=room:1')
    await until(() => a.app.eventSources.openStreams === 1 && b.app.eventSources.openStreams === 2)
    const deadline = Date.now() + 5000
    while ((await a.app.eventSources.count({ topic: 'room:1' })) !== 3 && Date.now() < deadline) await sleep(20)
    t.equal(await a.app.eventSources.count({ topic: 'room:1' }), 3, 'three followers of room:1 over both instances')
    t.same((await b.app.eventSources.presence('room:1')).sort(), ['alice', 'bob'])
    t.equal(await b.app.eventSources.count(), 3)
    t.equal(await b.app.eventSources.count({ prefix: 'al' }), 1)
    const redis = commands(t)
    t.ok((await redis.exists(`{${prefix}}instances`)) === 1, 'presence lives on the sequencer\'s slot')

    await sleep(5)
    const second = await open(t, b.url + '/sse?id=alice')
    await until(() => a.app.eventSources.openStreams === 0, 5000, 'the older alice closed on A')
    t.equal(b.app.eventSources.getByIdentifier('alice')?.isActive, true, 'the newer one stays')
    await a.app.eventSources.publish('to alice', { to: 'alice' })
    await until(() => second.events.length === 1, 5000, 'the message on the newer stream')
    t.same(data(first), [])
  })

  test('runs: a follower on another instance gets every event once, in order, and the end', async t => {
    const prefix = uniquePrefix()
    const make = async (): Promise<{ app: FastifyInstance, url: string }> => start(t, (app: FastifyInstance) => {
      app.get<{ Params: { key: string } }>('/runs/:key', async (request, reply) => {
        if (await app.eventSources.runState(request.params.key, request.headers['last-event-id'] as string | undefined) === undefined) return reply.code(204).send()
        const sse = request.getEventSource()
        await sse.follow(request.params.key)
      })
    }, { retry: 30, adapter: redisAdapter({ nodes: cluster.startupNodes, channelPrefix: prefix, runs: { lease: 5000 } }) })
    const a = await make()
    const b = await make()
    const running = a.app.eventSources.run('job:1', async function * () {
      for (let n = 1; n <= 40; n++) {
        await sleep(5)
        yield { n }
      }
    })
    // The run is recorded on the cluster asynchronously: a follower asking before that would get 204 (no such run).
    const deadline = Date.now() + 5000
    while (await b.app.eventSources.runState('job:1') === undefined && Date.now() < deadline) await sleep(5)
    const client = new Client(t, b.url + '/runs/job:1', undefined, ['end'])
    await until(() => client.events.some(e => e.type === 'end'), 20_000, 'the end event')
    const items = client.events.filter(e => e.type === 'message').map(e => JSON.parse(e.data).n)
    t.same(items, Array.from({ length: 40 }, (_, i) => i + 1), 'every event once, in order')
    t.same(await running, { sent: 40, reason: 'done' })
  })

  test('options a cluster cannot take are refused when the adapter is made', async t => {
    const nodes = cluster.startupNodes
    t.throws(() => redisAdapter({ nodes, channelPrefix: 'a{b}:' }), { code: 'FST_ERR_SSE_INVALID_OPTION' })
    t.throws(() => redisAdapter({ nodes, history: { topics: 10 } } as never), { code: 'FST_ERR_SSE_INVALID_OPTION' })
    t.throws(() => redisAdapter({ nodes, url: 'redis://x' } as never), { code: 'FST_ERR_SSE_INVALID_OPTION' })
    t.throws(() => redisAdapter({ nodes: [] }), { code: 'FST_ERR_SSE_INVALID_OPTION' })
    t.doesNotThrow(() => redisAdapter({ nodes, history: { ttl: Infinity, maxLen: 10 } }))
    const given = commands(t)
    t.equal(redisAdapter({ client: given }).constructor.name, 'RedisClusterAdapter', 'a Cluster client picks the cluster adapter')
  })

  test('a resharding moves a followed topic\'s slot to another master during publishing: the stream stays open and gets every resolved message once, in order, and so does a resume', async t => {
    const prefix = uniquePrefix()
    const a = await instance(t, prefix)
    const b = await instance(t, prefix)
    const live = new Client(t, a.url + '/sse?id=mover&topics=room:m', undefined, ['reset'])
    await until(() => live.opens === 1 && a.app.eventSources.subscribers('room:m').length === 1, 5000, 'the live stream')
    await sleep(50)
    const channel = `${prefix}{t:room:m}`
    const resolved: string[] = []
    const rejected: string[] = []
    let moving: Promise<{ from: number, to: number }> | undefined
    let movedAt = Infinity
    let resolvedAfter = 0
    for (let n = 1; n <= 200 || (resolvedAfter === 0 && n <= 2000); n++) {
      const text = String(n)
      const startedAt = Date.now()
      try {
        await b.app.eventSources.publish(text, { to: n % 3 === 0 ? 'mover' : { topic: 'room:m' } })
        resolved.push(text)
        if (startedAt > movedAt && n % 3 !== 0) resolvedAfter++
      } catch (err) {
        t.equal((err as { code?: string }).code, 'FST_ERR_SSE_PUBLISH_FAILED', `publish ${n} rejects with the publish error`)
        rejected.push(text)
        await sleep(10)
      }
      if (n === 60) moving = cluster.moveSlot(channel).then(moved => { movedAt = Date.now(); return moved })
      if (n % 5 === 0) await sleep(1)
    }
    const { from, to } = await (moving as Promise<{ from: number, to: number }>)
    t.not(from, to, 'the slot moved')
    t.ok(resolvedAfter > 0, 'publishing to the topic works after the move')
    t.comment(`${resolved.length} publishes resolved, ${rejected.length} rejected (the slot moved from ${from} to ${to})`)
    const published = new Set([...resolved, ...rejected])
    await everyOnceInOrder(t, () => live.events.filter(e => e.type === 'message').map(e => e.data), resolved, published, 'the live stream')
    t.equal(live.opens, 1, 'the live stream stayed open')
    const listening = new Redis({ host: '127.0.0.1', port: to, lazyConnect: true })
    t.teardown(() => listening.disconnect())
    const reply = await listening.call('PUBSUB', 'SHARDNUMSUB', channel) as [string, number]
    t.equal(Number(reply[1]), 1, 'the instance listens to the topic on its new master')

    const first = live.events.find(e => e.type === 'message' && e.data === resolved[0])
    const resumed = await open(t, b.url + '/sse?id=mover&topics=room:m', first?.id)
    await everyOnceInOrder(t, () => data(resumed), resolved.slice(1), published, 'the replay')
    t.same(resumed.events.filter(e => e.event === 'reset'), [], 'no gap in the history')
  })

  // Regression: a new route read its streams only from the time its first source opened, and the replay stops below
  // the oldest publish still in flight: a stream resuming on a quiet instance lost what lay between.
  test('a stream resuming on a quiet instance while an older publish is still in flight gets every message after its id, once, in order', async t => {
    const prefix = uniquePrefix()
    const a = await instance(t, prefix, { publishTimeout: 1000 })
    const b = await instance(t, prefix, { publishTimeout: 1000 })
    const first = await open(t, a.url + '/sse?topics=room:q')
    await until(() => a.app.eventSources.subscribers('room:q').length === 1, 5000, 'the first stream')
    await a.app.eventSources.publish('q0', { to: { topic: 'room:q' } })
    await until(() => first.events.length === 1, 5000, 'q0')
    // A publisher that took an id and has not written it yet: the sequencer's watermark stays below it (2 s at most).
    const redis = commands(t)
    const [seconds, micros] = await redis.time() as [number, number]
    const stuck = `${Number(seconds) * 1000 + Math.floor(Number(micros) / 1000)}-0`
    await redis.zadd(`{${prefix}}pending`, stuck.split('-')[0], padded(stuck))
    for (let n = 1; n <= 5; n++) await a.app.eventSources.publish(`q${n}`, { to: { topic: 'room:q' } })
    await sleep(300)
    const resumed = await open(t, b.url + '/sse?topics=room:q', first.events[0].id)
    await until(() => resumed.events.length >= 5, 10_000, 'q1 to q5 on the quiet instance')
    await sleep(100)
    t.same(data(resumed), ['q1', 'q2', 'q3', 'q4', 'q5'], 'every message after its id, once, in order, and no reset')
  })

  test('a topic history trimmed past a client\'s id is a gap (the reset event), then what is held', async t => {
    const prefix = uniquePrefix()
    const { app, url } = await instance(t, prefix, { history: { maxLen: 5 } })
    const first = await open(t, url + '/sse?topics=busy')
    await app.eventSources.publish('b0', { to: { topic: 'busy' } })
    await until(() => first.events.length === 1)
    first.close()
    for (let n = 1; n <= 20; n++) await app.eventSources.publish(`b${n}`, { to: { topic: 'busy' } })
    const resumed = await open(t, url + '/sse?topics=busy', first.events[0].id)
    await until(() => resumed.events.length === 6, 5000, 'the reset and the five held')
    t.equal(resumed.events[0].event, 'reset')
    t.same(data(resumed).slice(1), ['b16', 'b17', 'b18', 'b19', 'b20'])
  })
}

function compare (a: string, b: string): number {
  const [am, as] = a.split('-').map(BigInt)
  const [bm, bs] = b.split('-').map(BigInt)
  return am === bm ? (as === bs ? 0 : as > bs ? 1 : -1) : am > bm ? 1 : -1
}
