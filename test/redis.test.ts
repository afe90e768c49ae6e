import tap, { test, type Test } from 'tap'
import type { FastifyInstance } from 'fastify'
import { createParser } from 'eventsource-parser'
import { spawnSync } from 'node:child_process'
import { join } from 'node:path'
import { Redis } from 'ioredis'
import redisAdapter from '../lib/adapters/redis'
import type { RedisAdapterOptions } from '../types/redis'
import type { HttpRequestEventSource } from '../types/index'
import { start, until } from './helpers/server'
import { Client, Switchboard, portOf, redisClient, redisReady, redisUrl, stored, uniquePrefix } from './helpers/redis'

function routes (app: FastifyInstance): void {
  app.get('/events/:id', async request => {
    const sse = request.getEventSource((request.params as { id: string }).id)
    await sse.keepAlive()
    return sse.close()
  })
}

async function instance (t: Test, prefix: string, options: RedisAdapterOptions = {}, retry?: number): Promise<{ app: FastifyInstance, url: string }> {
  const adapter = redisAdapter({ url: redisUrl, channelPrefix: prefix, ...options })
  return start(t, routes, retry === undefined ? { adapter } : { adapter, retry })
}

/** Publishes a last message and waits for every client to get it: anything sent before it has arrived by then. */
async function settle (app: FastifyInstance, clients: Client[], marker = 'end'): Promise<void> {
  await app.eventSources.publish(marker)
  await until(() => clients.every(c => c.data.includes(marker)), 5000, 'the end marker')
}

if (redisReady(tap)) {
  test('three instances: what each publishes reaches every client once, all in the stream order', async t => {
    const prefix = uniquePrefix(t)
    const redis = redisClient(t)
    const nodes = await Promise.all([0, 1, 2].map(() => instance(t, prefix)))
    const clients = nodes.flatMap(({ url }, i) => [new Client(t, `${url}/events/u${i}a`), new Client(t, `${url}/events/u${i}b`)])
    await until(() => nodes.every(({ app }) => app.eventSources.activeConnections === 2), 3000, 'six clients')

    await Promise.all(nodes.flatMap(({ app }, i) => Array.from({ length: 20 }, (_, n) => app.eventSources.publish(`from ${i} #${n}`))))
    await settle(nodes[0].app, clients)

    const order = await stored(redis, prefix)
    t.equal(order.length, 61)
    for (const client of clients) {
      t.same(client.events.map(e => [e.id, e.data]), order, 'same messages, same order, same ids as the stream')
    }
  })

  test('a published value is serialized once, by the publishing instance, whatever the number of instances and clients', async t => {
    const prefix = uniquePrefix(t)
    let calls = 0
    const serializer = (value: unknown): string => { calls++; return JSON.stringify(value) }
    const nodes = await Promise.all([0, 1, 2].map(() => start(t, routes, { serializer, adapter: redisAdapter({ url: redisUrl, channelPrefix: prefix }) })))
    const clients = nodes.flatMap(({ url }, i) => [new Client(t, `${url}/events/s${i}a`), new Client(t, `${url}/events/s${i}b`)])
    await until(() => nodes.every(({ app }) => app.eventSources.activeConnections === 2))
    await nodes[1].app.eventSources.publish({ n: 1 })
    await until(() => clients.every(c => c.events.length === 1))
    t.equal(calls, 1)
    for (const client of clients) t.same(JSON.parse(client.data[0]), { n: 1 })
  })

  test('the publishing instance delivers its own message once, with the stream id as the SSE id', async t => {
    const prefix = uniquePrefix(t)
    const redis = redisClient(t)
    const { app, url } = await instance(t, prefix)
    const client = new Client(t, url + '/events/solo')
    await until(() => app.eventSources.activeConnections === 1)
    await app.eventSources.publish({ hello: 'world' }, { event: 'greeting' })
    await app.eventSources.publish('second')
    await until(() => client.data.includes('second'), 3000, 'the second message')
    const order = await stored(redis, prefix)
    t.match(order[0][0], /^\d+-\d+$/)
    t.same(client.events, [{ type: 'message', data: 'second', id: order[1][0] }], 'named events go to their listener only')
    client.es.close()

    const named = new Client(t, url + '/events/solo2', undefined, ['greeting'])
    await until(() => app.eventSources.getByIdentifier('solo2') !== undefined)
    await app.eventSources.publish({ hello: 'again' }, { event: 'greeting' })
    await until(() => named.events.length === 1)
    t.same(named.events[0].type, 'greeting')
    t.same(JSON.parse(named.events[0].data), { hello: 'again' })
  })

  test('publish to one identifier reaches only that client, on whichever instance holds it', async t => {
    const prefix = uniquePrefix(t)
    const a = await instance(t, prefix)
    const b = await instance(t, prefix)
    const alice = new Client(t, b.url + '/events/alice')
    const bob = new Client(t, a.url + '/events/bob')
    await until(() => a.app.eventSources.activeConnections === 1 && b.app.eventSources.activeConnections === 1)
    await a.app.eventSources.publish('for alice', { to: 'alice' })
    await b.app.eventSources.publish('for bob', { to: 'bob' })
    await a.app.eventSources.publish('for nobody', { to: 'carol' })
    await settle(a.app, [alice, bob])
    t.same(alice.data, ['for alice', 'end'])
    t.same(bob.data, ['for bob', 'end'])
  })

  test('publish to a prefix reaches the matching identifiers on every instance', async t => {
    const prefix = uniquePrefix(t)
    const nodes = await Promise.all([0, 1, 2].map(() => instance(t, prefix)))
    const inRoom = [new Client(t, nodes[0].url + '/events/room:1:ann'), new Client(t, nodes[1].url + '/events/room:1:ben')]
    const outside = new Client(t, nodes[2].url + '/events/room:2:cid')
    await until(() => nodes.every(({ app }) => app.eventSources.activeConnections === 1))
    await nodes[2].app.eventSources.publish('room one', { to: { prefix: 'room:1:' } })
    await settle(nodes[1].app, [...inRoom, outside])
    for (const client of inRoom) t.same(client.data, ['room one', 'end'])
    t.same(outside.data, ['end'])
  })

  test('a client that reconnects to another instance gets what it missed from the shared history, once and in order', async t => {
    const prefix = uniquePrefix(t)
    const [a, b, c] = await Promise.all([0, 1, 2].map(() => instance(t, prefix, {}, 50)))
    const board = new Switchboard(t, portOf(a.url))
    const client = new Client(t, a.url + '/events/roamer', { node: { dispatcher: board.agent } })
    await until(() => a.app.eventSources.activeConnections === 1)
    for (const n of [1, 2, 3]) await b.app.eventSources.publish(`m${n}`)
    await until(() => client.data.length === 3)

    // The client drops; its reconnection is held while other instances publish, then lands on a third instance.
    board.hold()
    board.port = portOf(c.url)
    board.drop()
    await until(() => board.waiting === 1, 3000, 'the reconnection')
    for (const n of [4, 5, 6]) await b.app.eventSources.publish(`m${n}`)
    const opened = new Promise<HttpRequestEventSource>(resolve => c.app.eventSources.once('registered', resolve))
    board.release()
    const source = await opened
    t.equal(source.lastEventId, client.events[2].id, 'the client sent its own Last-Event-ID')
    await a.app.eventSources.publish('m7')
    await until(() => client.data.length >= 7, 3000, 'seven messages')
    await settle(b.app, [client])

    t.same(client.data, ['m1', 'm2', 'm3', 'm4', 'm5', 'm6', 'm7', 'end'])
    t.same(source.replay, { replayed: 3, gap: false })
    const ids = client.events.map(e => e.id)
    t.same(ids, (await stored(redisClient(t), prefix)).map(([id]) => id), 'ids are the stream ids, in order')
  })

  test('messages published while a replay is read arrive once, after it', async t => {
    const prefix = uniquePrefix(t)
    const a = await instance(t, prefix)
    const b = await instance(t, prefix)
    for (let n = 1; n <= 50; n++) await b.app.eventSources.publish(`old ${n}`)
    const first = (await stored(redisClient(t), prefix))[0][0]
    const events: string[] = []
    const parser = createParser({ onEvent: e => events.push(e.data) })
    const controller = new AbortController()
    t.teardown(() => controller.abort())
    const response = await fetch(a.url + '/events/reader', { headers: { 'last-event-id': first }, signal: controller.signal })
    const live = Promise.all(Array.from({ length: 20 }, (_, n) => b.app.eventSources.publish(`new ${n + 1}`)))
    const reading = (async () => {
      const decoder = new TextDecoder()
      for await (const chunk of response.body as AsyncIterable<Uint8Array>) {
        parser.feed(decoder.decode(chunk, { stream: true }))
        if (events.includes('end')) return
      }
    })().catch(() => {})
    await live
    await b.app.eventSources.publish('end')
    await until(() => events.includes('end'), 5000, 'the end marker')
    controller.abort()
    await reading
    const expected = [...Array.from({ length: 49 }, (_, n) => `old ${n + 2}`), ...Array.from({ length: 20 }, (_, n) => `new ${n + 1}`), 'end']
    t.same(events, expected)
  })

  test('an id the trimmed history no longer holds is reported as a gap, followed by every message still held', async t => {
    const prefix = uniquePrefix(t)
    const redis = redisClient(t)
    const { app, url } = await instance(t, prefix, { history: { maxLen: 10 } })
    await app.eventSources.publish('first')
    const firstId = (await stored(redis, prefix))[0][0]
    for (let n = 0; n < 300; n++) await app.eventSources.publish(`n${n}`, { to: n % 2 === 0 ? 'gapped' : 'someone-else' })
    // Messages to no topic are replayed from their own stream, trimmed exactly to maxLen.
    const held = await stored(redis, prefix, 'plain')
    t.ok(held.length === 10 && held[0][0] !== firstId, `the stream was trimmed (holds ${held.length})`)

    const opened = new Promise<HttpRequestEventSource>(resolve => app.eventSources.once('registered', resolve))
    const events: { event?: string, data: string, id?: string }[] = []
    const parser = createParser({ onEvent: e => events.push({ event: e.event, data: e.data, id: e.id }) })
    const controller = new AbortController()
    t.teardown(() => controller.abort())
    const response = await fetch(url + '/events/gapped', { headers: { 'last-event-id': firstId }, signal: controller.signal })
    const source = await opened
    const mine = held.filter(([, data]) => Number(data.slice(1)) % 2 === 0)
    const decoder = new TextDecoder()
    for await (const chunk of response.body as AsyncIterable<Uint8Array>) {
      parser.feed(decoder.decode(chunk, { stream: true }))
      if (events.length >= mine.length + 1) break
    }
    controller.abort()
    t.same(events[0], { event: 'reset', data: JSON.stringify({ lastEventId: firstId }), id: held[held.length - 1][0] })
    t.same(events.slice(1).map(e => [e.id, e.data]), mine)
    t.same(source.replay, { replayed: mine.length, gap: true })
  })

  test('an id that is not a stream id is a gap, not an error', async t => {
    const prefix = uniquePrefix(t)
    const adapter = redisAdapter({ url: redisUrl, channelPrefix: prefix })
    await start(t, routes, { adapter })
    const result = await adapter.replay('not-an-id', 'x')
    t.same(result, { messages: [], gap: true })
  })

  test('the newest source with an identifier wins across instances', async t => {
    const prefix = uniquePrefix(t)
    const a = await instance(t, prefix)
    const b = await instance(t, prefix)
    const controller = new AbortController()
    t.teardown(() => controller.abort())
    const first = await fetch(a.url + '/events/twin', { signal: controller.signal })
    t.equal(first.status, 200)
    await until(() => a.app.eventSources.activeConnections === 1)
    const older = a.app.eventSources.getByIdentifier('twin') as HttpRequestEventSource
    const newer = new Client(t, b.url + '/events/twin')
    await until(() => !older.isActive, 3000, 'the older source to close')
    t.equal(older.closeReason, 'replaced')
    t.equal(a.app.eventSources.activeConnections, 0)
    t.equal(b.app.eventSources.getByIdentifier('twin')?.isActive, true, 'the newer one stays')
    await settle(b.app, [newer])
    t.same(newer.data, ['end'])
  })

  test('with history off, publish is live only and carries the id it was given', async t => {
    const prefix = uniquePrefix(t)
    const redis = redisClient(t)
    const a = await instance(t, prefix, { history: false })
    const b = await instance(t, prefix, { history: false })
    const client = new Client(t, b.url + '/events/live')
    await until(() => b.app.eventSources.activeConnections === 1)
    await a.app.eventSources.publish('plain')
    await a.app.eventSources.publish('tagged', { id: 'my-id' })
    await until(() => client.events.length === 2)
    t.same(client.events.map(e => [e.data, e.id]), [['plain', ''], ['tagged', 'my-id']])
    t.equal(await redis.exists(prefix + 'stream'), 0, 'nothing stored')
  })

  test('fastify.close() closes the connections the adapter opened', async t => {
    const prefix = uniquePrefix(t)
    const redis = redisClient(t)
    const name = prefix.replace(/:/g, '-') + 'own'
    const { app } = await start(t, routes, { adapter: redisAdapter({ url: `${redisUrl}?connectionName=${name}`, channelPrefix: prefix }) })
    const count = async (): Promise<number> => (await redis.client('LIST') as string).split('\n').filter(line => line.includes(` name=${name} `)).length
    t.equal(await count(), 2, 'a command and a subscriber connection')
    await app.close()
    await until(() => false, 0, '').catch(() => {})
    t.equal(await count(), 0)
    t.same(await redis.pubsub('NUMSUB', prefix + 'messages'), [prefix + 'messages', 0])
  })

  test('fastify.close() leaves a client the user passed in open', async t => {
    const prefix = uniquePrefix(t)
    const redis = redisClient(t)
    const user = new Redis(redisUrl, { connectionName: prefix.replace(/:/g, '-') + 'user' })
    t.teardown(() => { user.disconnect() })
    const { app, url } = await start(t, routes, { adapter: redisAdapter({ client: user, channelPrefix: prefix }) })
    const client = new Client(t, url + '/events/u')
    await until(() => app.eventSources.activeConnections === 1)
    await app.eventSources.publish('through the user client')
    await until(() => client.data.length === 1)
    t.same(await redis.pubsub('NUMSUB', prefix + 'messages'), [prefix + 'messages', 1])
    await app.close()
    t.equal(user.status, 'ready')
    t.equal(await user.ping(), 'PONG')
    t.same(await redis.pubsub('NUMSUB', prefix + 'messages'), [prefix + 'messages', 0], 'the duplicate it subscribed on is closed')
  })

  test('an instance whose subscription drops delivers what was published meanwhile once it is back, in order', async t => {
    const prefix = uniquePrefix(t)
    const redis = redisClient(t)
    const name = prefix.replace(/:/g, '-') + 'slow'
    // The subscriber is a duplicate of this client, so it reconnects as slowly: the outage is sure to be seen.
    const user = new Redis(redisUrl, { connectionName: name, retryStrategy: () => 400 })
    user.on('error', () => {})
    t.teardown(() => { user.disconnect() })
    const a = await start(t, routes, { adapter: redisAdapter({ client: user, channelPrefix: prefix }) })
    const b = await instance(t, prefix)
    const client = new Client(t, a.url + '/events/steady')
    await until(() => a.app.eventSources.activeConnections === 1)
    await b.app.eventSources.publish('before')
    await until(() => client.data.length === 1)

    const subscriber = (await redis.client('LIST') as string).split('\n').find(line => line.includes(` name=${name} `) && !/ sub=0 /.test(line))
    const id = /^id=(\d+) /.exec(subscriber ?? '')?.[1]
    t.ok(id, 'found the subscriber connection')
    await redis.client('KILL', 'ID', id as string)
    for (const n of [1, 2, 3]) await b.app.eventSources.publish(`while away ${n}`)
    await until(() => client.data.length === 4, 5000, 'the missed messages')
    await settle(b.app, [client])
    t.same(client.data, ['before', 'while away 1', 'while away 2', 'while away 3', 'end'])
    t.same(client.events.map(e => e.id), (await stored(redis, prefix)).map(([id]) => id))
    t.equal(client.opens, 1, 'the stream stayed open')
  })

  test('the main entry does not load ioredis', async t => {
    const probe = spawnSync(process.execPath, ['-e', "require('./dist/index.js'); process.stdout.write(String(Object.keys(require.cache).some(k => k.includes('ioredis'))))"], { cwd: join(__dirname, '..') })
    t.equal(probe.stdout.toString(), 'false')
  })

  test('fastify-event-sources/redis loads from CommonJS and ESM', async t => {
    const cjs = "const r = require('fastify-event-sources/redis'); process.stdout.write([typeof r, typeof r.default, typeof r.redisAdapter, typeof r.RedisAdapter].join())"
    const esm = "import redisAdapter, { redisAdapter as named, RedisAdapter } from 'fastify-event-sources/redis'; process.stdout.write([typeof redisAdapter, named === redisAdapter, typeof RedisAdapter].join())"
    const root = join(__dirname, '..')
    t.equal(spawnSync(process.execPath, ['-e', cjs], { cwd: root }).stdout.toString(), 'function,function,function,function')
    t.equal(spawnSync(process.execPath, ['--input-type=module', '-e', esm], { cwd: root }).stdout.toString(), 'function,true,function')
  })

  test('bad options throw at creation, naming the option', async t => {
    t.throws(() => redisAdapter({ channelPrefix: 1 as unknown as string }), { code: 'FST_ERR_SSE_INVALID_OPTION', message: /channelPrefix/ })
    t.throws(() => redisAdapter({ history: { maxLen: 0 } }), { code: 'FST_ERR_SSE_INVALID_OPTION', message: /history\.maxLen/ })
    t.throws(() => redisAdapter({ publishTimeout: -1 }), { code: 'FST_ERR_SSE_INVALID_OPTION', message: /publishTimeout/ })
    t.throws(() => redisAdapter({ client: {} as Redis }), { code: 'FST_ERR_SSE_INVALID_OPTION', message: /client/ })
  })

  test('registration fails with a clear error when Redis cannot be reached', async t => {
    const adapter = redisAdapter({ url: 'redis://127.0.0.1:1', connectTimeout: 300 })
    await t.rejects(start(t, routes, { adapter }), { code: 'FST_ERR_SSE_ADAPTER', message: /cannot reach Redis/ })
  })
}
