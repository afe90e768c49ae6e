import tap, { test, type Test } from 'tap'
import Fastify, { type FastifyInstance } from 'fastify'
import { Redis } from 'ioredis'
import eventSources from '../lib/index'
import redisAdapter from '../lib/adapters/redis'
import { APPEND_AND_PUBLISH, RedisStreamsHistory, appendArguments, isAfter, streamKeys } from '../lib/history/redis-streams'
import type { RedisAdapterOptions } from '../types/redis'
import { start, until } from './helpers/server'
import { readEvents, type EventStream } from './helpers/read-events'
import { stored } from './helpers/redis'
import { PrivateRedis, freePort, hasRedisServer, subscriberIds } from './helpers/redis-server'

function routes (app: FastifyInstance): void {
  app.get('/events/:id', async request => {
    const sse = request.getEventSource((request.params as { id: string }).id)
    await sse.keepAlive()
    return sse.close()
  })
}

let names = 0

/**
 * An instance on the private server; its two connections carry a name of their own, to kill its subscriber alone.
 * What it logs at info and above is kept in `logs`, for a failure's report.
 */
async function instance (t: Test, redis: PrivateRedis, prefix: string, options: RedisAdapterOptions = {}): Promise<{ app: FastifyInstance, url: string, name: string, logs: string[] }> {
  const name = `fes-${process.pid}-${++names}`
  const adapter = redisAdapter({ url: `${redis.url}?connectionName=${name}`, channelPrefix: prefix, ...options })
  const logs: string[] = []
  const logger = { level: 'info', stream: { write: (line: string) => { if (!line.includes('"incoming request"') && !line.includes('"request completed"')) logs.push(line.slice(0, 300)) } } }
  // Bursts of large messages pass the default 1 MiB per-client bound: these tests are about Redis, not slow clients.
  return { ...await start(t, routes, { adapter, maxBufferedBytes: 256 * 1024 * 1024 }, { logger }), name, logs }
}

/** Waits like `until`; on a timeout, the test first says what each stream got and what each instance logged. */
async function untilOr (t: Test, check: () => boolean, ms: number, what: string, report: Record<string, { stream: EventStream, logs: string[] }>): Promise<void> {
  try {
    await until(check, ms, what)
  } catch (err) {
    for (const [name, { stream, logs }] of Object.entries(report)) {
      t.comment(`${name}: ${data(stream).length} message(s), ${stream.events.filter(e => e.event === 'reset').length} reset(s), last: ${data(stream).at(-1)?.slice(0, 20) ?? 'none'}`)
      for (const line of logs) t.comment(`  ${name} logged ${line.trim()}`)
    }
    throw err
  }
}

async function open (t: Test, url: string, headers?: Record<string, string>): Promise<EventStream> {
  const stream = await readEvents(url, headers)
  t.teardown(stream.close)
  return stream
}

function data (stream: EventStream): string[] {
  return stream.events.filter(e => e.event === undefined).map(e => e.data)
}

/** Asserts the events' ids only grow: one order and no duplicate. */
function ordered (t: Test, stream: EventStream, what: string): void {
  const ids = stream.events.filter(e => e.event === undefined).map(e => e.id as string)
  t.ok(ids.every((id, i) => i === 0 || isAfter(id, ids[i - 1])), `${what}: ids only grow`)
}

if (!hasRedisServer) {
  tap.plan(0, 'redis-server is not installed: these tests need a private server')
} else {
  test('subscriber dropped by the output-buffer limit: connected clients still get every message the stream holds, once and in order', async t => {
    const redis = await PrivateRedis.start(t, ['--client-output-buffer-limit', 'pubsub 1mb 512kb 60'])
    const prefix = 'obl:'
    // 38 MB go out at once: the last publish waits for all before it.
    const a = await instance(t, redis, prefix, { publishTimeout: 30_000 })
    // Reading the whole backlog at once takes longer than this; a page of it does not.
    const b = await instance(t, redis, prefix, { publishTimeout: 400 })
    const onA = await open(t, a.url + '/events/on-a')
    const onB = await open(t, b.url + '/events/on-b')
    await until(() => a.app.eventSources.activeConnections === 1 && b.app.eventSources.activeConnections === 1)
    const big = 'x'.repeat(256 * 1024)
    const control = redis.client(t)
    const subscribers = async (): Promise<string[]> => [...await subscriberIds(control, a.name), ...await subscriberIds(control, b.name)]
    const before = await subscribers()
    await Promise.all(Array.from({ length: 150 }, (_, n) => a.app.eventSources.publish(`${n} ${big}`)))
    await a.app.eventSources.publish('end')
    const published = Date.now()
    // 38 MB read back from Redis and parsed twice by the test itself: on a busy machine this takes many seconds.
    await untilOr(t, () => data(onA).includes('end') && data(onB).includes('end'), 60_000, 'the end marker', { A: { stream: onA, logs: a.logs }, B: { stream: onB, logs: b.logs } })
    t.comment(`both streams had the end marker ${Date.now() - published} ms after it was published`)
    const after = await subscribers()
    t.ok(before.every(id => !after.includes(id)), 'Redis dropped both subscribers: they are new connections now')
    const expected = [...Array.from({ length: 150 }, (_, n) => `${n} ${big}`), 'end']
    for (const [stream, what] of [[onA, 'on A'], [onB, 'on B']] as const) {
      t.equal(data(stream).length, 151, `${what}: every message`)
      t.ok(data(stream).every((d, i) => d === expected[i]), `${what}: in publish order`)
      t.notOk(stream.events.some(e => e.event === 'reset'), `${what}: no reset, the stream held everything`)
      ordered(t, stream, what)
    }
  })

  test('catch-up from a stream trimmed past the last delivered id: the reset event, then what the stream still holds', async t => {
    const redis = await PrivateRedis.start(t, ['--stream-node-max-entries', '4'])
    const prefix = 'trim:'
    const a = await instance(t, redis, prefix, { history: { maxLen: 4 } })
    const b = await instance(t, redis, prefix, { history: { maxLen: 4 } })
    const onA = await open(t, a.url + '/events/on-a')
    const onB = await open(t, b.url + '/events/on-b')
    await until(() => a.app.eventSources.activeConnections === 1 && b.app.eventSources.activeConnections === 1)
    await a.app.eventSources.publish('first')
    await until(() => data(onB).includes('first'))
    const firstId = onB.events[0].id

    // B's subscriber is cut and 30 messages follow in the same pipeline, before it can come back: the stream keeps 4-8.
    const control = redis.client(t)
    const [id] = await subscriberIds(control, b.name)
    const pipeline = control.pipeline().client('KILL', 'ID', id)
    for (let n = 0; n < 30; n++) pipeline.eval(APPEND_AND_PUBLISH, ...appendArguments(streamKeys(prefix), [prefix + 'messages'], { data: `m${n}` }, { maxLen: 4, maxTopics: 0, ttl: 0 }))
    await pipeline.exec()
    const held = await stored(control, prefix)
    const newest = held.at(-1)?.[0]
    await until(() => onB.events.some(e => e.event === 'reset'), 10_000, 'the reset event on B')
    await a.app.eventSources.publish('end')
    await until(() => data(onA).includes('end') && data(onB).includes('end'), 5000, 'the end marker')

    t.equal(data(onA).length, 32, 'the client on A lost nothing')
    const reset = onB.events.find(e => e.event === 'reset')
    t.same(JSON.parse(reset?.data ?? ''), { lastEventId: firstId }, 'the reset names where the loss began')
    t.equal(reset?.id, newest, 'and carries the newest id held')
    t.ok(held.length < 30, `the stream holds ${held.length} of the 30`)
    t.same(onB.events.map(e => e.event ?? e.data), ['first', 'reset', ...held.map(([, d]) => d), 'end'], 'the reset, then every message still held, in order')
    ordered(t, onB, 'on B')
  })

  test('two subscriber drops in quick succession: one catch-up at a time, every message once and in order', async t => {
    const redis = await PrivateRedis.start(t)
    const control = redis.client(t)
    const prefix = 'twice:'
    const a = await instance(t, redis, prefix)
    // B sends its commands on a client of ours, so the test can see its history reads and slow them down.
    const name = `fes-${process.pid}-twice`
    const user = new Redis(redis.url, { connectionName: name })
    user.on('error', () => {})
    t.teardown(() => { user.disconnect() })
    let reading = 0
    let most = 0
    let cutDuringRead = false
    const xrange = user.xrange.bind(user) as (...args: unknown[]) => Promise<unknown>
    ;(user as unknown as { xrange: typeof xrange }).xrange = async (...args) => {
      reading++
      most = Math.max(most, reading)
      try {
        if (cutDuringRead) {
          // The second drop: while the first catch-up reads, and long enough for the subscriber to come back.
          cutDuringRead = false
          for (const id of await subscriberIds(control, name)) await control.client('KILL', 'ID', id)
          await new Promise(resolve => setTimeout(resolve, 600))
        }
        return await xrange(...args)
      } finally {
        reading--
      }
    }
    const b = await start(t, routes, { adapter: redisAdapter({ client: user, channelPrefix: prefix }) })
    const onB = await open(t, b.url + '/events/on-b')
    await until(() => b.app.eventSources.activeConnections === 1)
    let published = 0
    const publishSome = async (count: number): Promise<void> => {
      await Promise.all(Array.from({ length: count }, () => a.app.eventSources.publish(`m${published++}`)))
    }
    await publishSome(10)
    for (let round = 0; round < 3; round++) {
      cutDuringRead = true
      for (const id of await subscriberIds(control, name)) await control.client('KILL', 'ID', id)
      await publishSome(300)
      await until(() => data(onB).includes(`m${published - 1}`), 10_000, `round ${round}`)
      t.notOk(cutDuringRead, `round ${round}: the second drop came during the catch-up`)
      await publishSome(20)
    }
    await a.app.eventSources.publish('end')
    await until(() => data(onB).includes('end'), 15_000, 'the end marker')
    t.equal(most, 1, 'never two history reads at once: one catch-up at a time')
    t.same(data(onB), [...Array.from({ length: published }, (_, n) => `m${n}`), 'end'])
    ordered(t, onB, 'on B')
  })

  test('live messages held back during a long catch-up past their bound are dropped and read from the stream again', async t => {
    const redis = await PrivateRedis.start(t)
    const control = redis.client(t)
    const prefix = 'held:'
    const a = await instance(t, redis, prefix, { publishTimeout: 30_000 })
    const name = `fes-${process.pid}-held`
    const user = new Redis(redis.url, { connectionName: name })
    user.on('error', () => {})
    t.teardown(() => { user.disconnect() })
    let reads = 0
    let slow = false
    let burst: Promise<void> | undefined
    const xrange = user.xrange.bind(user) as (...args: unknown[]) => Promise<unknown>
    ;(user as unknown as { xrange: typeof xrange }).xrange = async (...args) => {
      reads++
      if (slow) {
        // While the catch-up waits on its first read, 12 MB arrive live: more than it holds back (8 MB).
        slow = false
        burst = publishSome(48, 256 * 1024)
        await burst
        await until(() => false, 500, '').catch(() => {})
      }
      return xrange(...args)
    }
    const b = await start(t, routes, { adapter: redisAdapter({ client: user, channelPrefix: prefix, publishTimeout: 30_000 }), maxBufferedBytes: 256 * 1024 * 1024 })
    const onB = await open(t, b.url + '/events/on-b')
    await until(() => b.app.eventSources.activeConnections === 1)
    let published = 0
    const publishSome = async (count: number, size = 0): Promise<void> => {
      await Promise.all(Array.from({ length: count }, () => a.app.eventSources.publish(`m${published++}|${'x'.repeat(size)}`)))
    }
    await publishSome(5)
    slow = true
    for (const id of await subscriberIds(control, name)) await control.client('KILL', 'ID', id)
    await publishSome(5)
    await until(() => burst !== undefined, 5000, 'the catch-up')
    await burst
    await a.app.eventSources.publish('end|')
    await until(() => data(onB).includes('end|'), 20_000, 'the end marker')
    t.same(data(onB).map(d => d.slice(0, d.indexOf('|'))), [...Array.from({ length: published }, (_, n) => `m${n}`), 'end'])
    t.ok(reads >= 2, `the stream was read again after the held messages were dropped (${reads} reads)`)
    ordered(t, onB, 'on B')
  })

  test('200 publishes keep their call order in the stream and at the client across SCRIPT FLUSH, with another instance loading the script', async t => {
    const redis = await PrivateRedis.start(t)
    const control = redis.client(t)
    for (let trial = 0; trial < 4; trial++) {
      const prefix = `flush${trial}:`
      const a = await instance(t, redis, prefix)
      const b = await instance(t, redis, `other${trial}:`)
      const client = await open(t, a.url + '/events/c')
      await until(() => a.app.eventSources.activeConnections === 1)
      const calls: Promise<void>[] = []
      for (let n = 0; n < 200; n++) {
        calls.push(a.app.eventSources.publish(`p${n}`))
        if (n % 40 === 20) {
          control.script('FLUSH').catch(() => {})
          b.app.eventSources.publish('loads the script').catch(() => {})
        }
        if (n % 10 === 0) await new Promise(resolve => setImmediate(resolve))
      }
      await Promise.all(calls)
      const expected = Array.from({ length: 200 }, (_, n) => `p${n}`)
      t.same((await stored(control, prefix)).map(([, d]) => d), expected, `trial ${trial}: the stream holds the call order`)
      await until(() => data(client).length === 200, 5000, 'every message')
      t.same(data(client), expected, `trial ${trial}: the client gets the call order`)
    }
  })

  test('fastify.close() with publishes in flight on a Redis that never saw the script: each completes or fails with FST_ERR_SSE_PUBLISH_FAILED', async t => {
    const redis = await PrivateRedis.start(t)
    const control = redis.client(t)
    await control.script('FLUSH')
    const app = Fastify()
    await app.register(eventSources, { adapter: redisAdapter({ url: redis.url, channelPrefix: 'closing:' }) })
    const outcomes = Array.from({ length: 50 }, (_, n) => app.eventSources.publish(`c${n}`).then(() => 'ok', (err: { code: string, message: string }) => err))
    await app.close()
    const late = await app.eventSources.publish('after close').then(() => 'ok', (err: { code: string }) => err.code)
    const results = await Promise.all(outcomes)
    const failed = results.filter(r => r !== 'ok') as { code: string, message: string }[]
    t.ok(failed.every(err => err.code === 'FST_ERR_SSE_PUBLISH_FAILED' && !/writeable/.test(err.message)), 'no other failure')
    const ok = results.filter(r => r === 'ok').length
    t.equal((await stored(control, 'closing:')).length, ok, `what completed was stored (${ok} of 50)`)
    t.equal(ok, 50, 'publishes already sent complete before the connection closes')
    t.equal(late, 'FST_ERR_SSE_PUBLISH_FAILED', 'a publish after close starts fails with the plugin\'s code')
  })

  test('registration with nothing listening fails with FST_ERR_SSE_ADAPTER naming the address, before Fastify\'s plugin timeout', async t => {
    const port = await freePort()
    const app = Fastify()
    t.teardown(() => app.close())
    app.register(eventSources, { adapter: redisAdapter({ url: `redis://127.0.0.1:${port}` }) })
    await t.rejects(async () => { await app.ready() }, { code: 'FST_ERR_SSE_ADAPTER', message: new RegExp(`127\\.0\\.0\\.1:${port}.*ECONNREFUSED`) })
  })

  test('registration with a client that was already closed fails at once with FST_ERR_SSE_ADAPTER naming the address', async t => {
    const redis = await PrivateRedis.start(t)
    const user = new Redis(redis.url)
    await user.ping()
    user.disconnect()
    await until(() => user.status === 'end')
    const app = Fastify()
    t.teardown(() => app.close())
    app.register(eventSources, { adapter: redisAdapter({ client: user }) })
    await t.rejects(async () => { await app.ready() }, { code: 'FST_ERR_SSE_ADAPTER', message: new RegExp(`127\\.0\\.0\\.1:${redis.port}.*closed`) })
  })

  test('claims made while Redis is down are not lost: within 5 s of Redis answering, each identifier is open on its newest instance only', async t => {
    const redis = await PrivateRedis.start(t)
    const prefix = 'claims:'
    const a = await instance(t, redis, prefix)
    const b = await instance(t, redis, prefix)
    // y opens on B before the outage, x on A; during it, x opens on B and y on A: the newer ones.
    await open(t, b.url + '/events/y')
    await open(t, a.url + '/events/x')
    await until(() => a.app.eventSources.activeConnections === 1 && b.app.eventSources.activeConnections === 1)
    const oldX = a.app.eventSources.getByIdentifier('x')
    const oldY = b.app.eventSources.getByIdentifier('y')
    await redis.stop()
    await open(t, b.url + '/events/x')
    await open(t, a.url + '/events/y')
    await until(() => a.app.eventSources.activeConnections === 2 && b.app.eventSources.activeConnections === 2)
    t.equal(oldX?.isActive, true, 'during the outage both are open')

    await redis.start()
    await until(() => oldX?.isActive === false && oldY?.isActive === false, 5000, 'the older sources to close')
    t.equal(oldX?.closeReason, 'replaced')
    t.equal(oldY?.closeReason, 'replaced')
    t.equal(b.app.eventSources.getByIdentifier('x')?.isActive, true, 'x stays on B, the newest')
    t.equal(a.app.eventSources.getByIdentifier('y')?.isActive, true, 'y stays on A, the newest')
  })

  test('claims missed while only the subscriber was cut: the newer instance answers the re-announcement', async t => {
    const redis = await PrivateRedis.start(t)
    const prefix = 'claims2:'
    const a = await instance(t, redis, prefix)
    const b = await instance(t, redis, prefix)
    await open(t, a.url + '/events/z')
    await until(() => a.app.eventSources.activeConnections === 1)
    const old = a.app.eventSources.getByIdentifier('z')
    // A may not hear B's claim: its subscriber is cut just before.
    const control = redis.client(t)
    for (const id of await subscriberIds(control, a.name)) await control.client('KILL', 'ID', id)
    await open(t, b.url + '/events/z')
    await until(() => old?.isActive === false, 5000, 'the older source to close')
    t.equal(old?.closeReason, 'replaced')
    t.equal(b.app.eventSources.getByIdentifier('z')?.isActive, true)
  })
}

if (hasRedisServer) {
  test('history: false reports a gap to a client resuming with a Last-Event-ID', async t => {
    const redis = await PrivateRedis.start(t)
    const a = await instance(t, redis, 'live:', { history: false })
    const stream = await open(t, a.url + '/events/u', { 'last-event-id': '1-0' })
    await until(() => a.app.eventSources.getByIdentifier('u')?.replay !== undefined)
    t.same(a.app.eventSources.getByIdentifier('u')?.replay, { replayed: 0, gap: true })
    await a.app.eventSources.publish('live')
    await until(() => stream.events.length === 2)
    t.same(stream.events[0], { event: 'reset', data: '{"lastEventId":"1-0"}', id: undefined })
    t.equal(stream.events[1].data, 'live')
  })

  test('history: false and the subscription cut: connected clients get the reset event, since what was missed cannot be read', async t => {
    const redis = await PrivateRedis.start(t)
    const a = await instance(t, redis, 'live2:', { history: false })
    const stream = await open(t, a.url + '/events/u')
    await until(() => a.app.eventSources.activeConnections === 1)
    await a.app.eventSources.publish('before')
    await until(() => stream.events.length === 1)
    const control = redis.client(t)
    for (const id of await subscriberIds(control, a.name)) await control.client('KILL', 'ID', id)
    await until(() => stream.events.length === 2, 5000, 'the reset event')
    t.same(stream.events[1], { event: 'reset', data: '{"lastEventId":null}', id: undefined })
    await a.app.eventSources.publish('after')
    await until(() => stream.events.length === 3)
    t.equal(stream.events[2].data, 'after')
  })

  test('publish with an idempotency key: a retry on the same or another instance is stored and delivered once', async t => {
    const redis = await PrivateRedis.start(t)
    const control = redis.client(t)
    const prefix = 'keys:'
    const a = await instance(t, redis, prefix)
    const b = await instance(t, redis, prefix)
    const onA = await open(t, a.url + '/events/on-a')
    const onB = await open(t, b.url + '/events/on-b')
    await until(() => a.app.eventSources.activeConnections === 1 && b.app.eventSources.activeConnections === 1)
    await a.app.eventSources.publish('order 1', { key: 'order-1' })
    await a.app.eventSources.publish('order 1', { key: 'order-1' })
    await b.app.eventSources.publish('order 1', { key: 'order-1' })
    await Promise.all([a.app.eventSources.publish('order 2', { key: 'order-2' }), b.app.eventSources.publish('order 2', { key: 'order-2' })])
    await a.app.eventSources.publish('no key')
    await a.app.eventSources.publish('no key')
    await a.app.eventSources.publish('end')
    await until(() => data(onA).includes('end') && data(onB).includes('end'))
    const expected = ['order 1', 'order 2', 'no key', 'no key', 'end']
    t.same((await stored(control, prefix)).map(([, d]) => d), expected, 'stored once per key')
    t.same(data(onA), expected)
    t.same(data(onB), expected)
  })

  test('an idempotency key is forgotten once the stream no longer holds its message', async t => {
    const redis = await PrivateRedis.start(t, ['--stream-node-max-entries', '2'])
    const control = redis.client(t)
    const a = await instance(t, redis, 'window:', { history: { maxLen: 2 } })
    await a.app.eventSources.publish('keyed', { key: 'k' })
    for (let n = 0; n < 6; n++) await a.app.eventSources.publish(`filler ${n}`)
    t.notOk((await stored(control, 'window:')).some(([, d]) => d === 'keyed'), 'trimmed away')
    await a.app.eventSources.publish('keyed', { key: 'k' })
    t.equal((await stored(control, 'window:')).at(-1)?.[1], 'keyed', 'stored again: outside the history window')
  })

  test('replayed and delivered messages carry their stream id as position', async t => {
    const redis = await PrivateRedis.start(t)
    const adapter = redisAdapter({ url: redis.url, channelPrefix: 'pos:' })
    const app = Fastify()
    t.teardown(() => app.close())
    await app.register(eventSources, { adapter })
    await app.eventSources.publish('one')
    await app.eventSources.publish('two')
    const result = await adapter.replay('0-1', 'anyone')
    t.equal(result.messages.length, 2)
    t.ok(result.messages.every(m => m.position !== undefined && m.position === m.id))
  })
}

if (hasRedisServer) {
  test('continuity: whether a stream still holds everything after an id it no longer holds', async t => {
    const redis = await PrivateRedis.start(t)
    const control = redis.client(t)
    const history = new RedisStreamsHistory(control, { ...streamKeys('cont:'), log: 'cont' })
    t.same(await history.continuity('0-0'), { gap: false, latestId: undefined }, 'no stream, nothing delivered: nothing lost')
    t.same(await history.continuity('5-0'), { gap: true, latestId: undefined }, 'no stream after an id was delivered: lost')
    for (let n = 1; n <= 6; n++) await control.xadd('cont', `${n}-0`, 'm', '{"data":"x"}')
    t.same(await history.continuity('3-0'), { gap: false, latestId: '6-0' }, 'the first entry is at or before it')
    await control.xtrim('cont', 'MINID', '4-0')
    t.same(await history.continuity('4-0'), { gap: false, latestId: '6-0' }, 'still held')
    t.same(await history.continuity('2-0'), { gap: true, latestId: '6-0' }, 'trimmed past it')
    t.same(await history.continuity('0-0'), { gap: false, latestId: '6-0' }, 'nothing delivered yet')
    await control.del('cont')
    await control.xadd('cont', '9-0', 'm', '{"data":"x"}')
    t.same(await history.continuity('3-0'), { gap: true, latestId: '9-0' }, 'a new stream (Redis lost the old one)')
  })
}
