import tap, { test, type Test } from 'tap'
import { fork, type ChildProcess } from 'node:child_process'
import { join } from 'node:path'
import type { FastifyInstance } from 'fastify'
import { Redis } from 'ioredis'
import redisAdapter from '../lib/adapters/redis'
import type { RedisAdapterOptions } from '../types/redis'
import type { CountTarget } from '../types/index'
import { openRaw, type Raw } from './helpers/raw'
import { redisClient, redisReady, redisUrl, uniquePrefix } from './helpers/redis'
import { start, until } from './helpers/server'

// Short in tests; the default is 5000 ms, so an instance killed outright drops out within 15 s.
const HEARTBEAT = 500

/** One instance with Redis presence in a child process (the built package), driven over IPC. */
class Instance {
  readonly child: ChildProcess
  port = 0
  #n = 0
  #pending = new Map<number, { resolve: (value: unknown) => void, reject: (err: Error) => void }>()

  constructor (prefix: string) {
    this.child = fork(join(__dirname, 'fixtures', 'presence-instance.js'), {
      env: { ...process.env, REDIS_URL: redisUrl, CHANNEL_PREFIX: prefix, HEARTBEAT: String(HEARTBEAT) },
      execArgv: [],
      stdio: ['ignore', 'inherit', 'inherit', 'ipc']
    })
    this.child.on('message', (message: { n?: number, result?: unknown, error?: string, port?: number }) => {
      if (message.port !== undefined) this.port = message.port
      if (message.n === undefined) return
      const pending = this.#pending.get(message.n)
      this.#pending.delete(message.n)
      if (message.error !== undefined) pending?.reject(new Error(message.error))
      else pending?.resolve(message.result)
    })
    this.child.on('exit', () => {
      for (const pending of this.#pending.values()) pending.reject(new Error('the instance exited'))
      this.#pending.clear()
    })
  }

  url (id?: string, topics: string[] = []): string {
    const query = new URLSearchParams()
    if (id !== undefined) query.set('id', id)
    if (topics.length > 0) query.set('topics', topics.join(','))
    return `http://127.0.0.1:${this.port}/sse?${query.toString()}`
  }

  async ready (): Promise<void> {
    await until(() => this.port !== 0 || this.child.exitCode !== null, 15_000, 'the instance to listen')
    if (this.port === 0) throw new Error('the instance exited')
  }

  call (command: string, args: Record<string, unknown> = {}): Promise<unknown> {
    const n = ++this.#n
    return new Promise((resolve, reject) => {
      this.#pending.set(n, { resolve, reject })
      this.child.send({ n, command, args })
    })
  }

  presence (topic: string): Promise<string[]> {
    return this.call('presence', { topic }) as Promise<string[]>
  }

  count (to?: CountTarget): Promise<number> {
    return this.call('count', { to }) as Promise<number>
  }

  kill (): Promise<void> {
    const exited = new Promise<void>(resolve => this.child.once('exit', () => resolve()))
    this.child.kill('SIGKILL')
    return exited
  }

  async stop (): Promise<void> {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return
    const exited = new Promise(resolve => this.child.once('exit', resolve))
    this.child.disconnect()
    const timer = setTimeout(() => this.child.kill('SIGKILL'), 3000)
    await exited
    clearTimeout(timer)
  }
}

async function instances (t: Test, size: number): Promise<{ nodes: Instance[], prefix: string }> {
  const prefix = uniquePrefix(t)
  const nodes = Array.from({ length: size }, () => new Instance(prefix))
  t.teardown(() => Promise.all(nodes.map(node => node.stop())))
  await Promise.all(nodes.map(node => node.ready()))
  return { nodes, prefix }
}

/** Asks until `ok` holds of the answer; returns how long it took (ms). Bounded, never a timing assertion. */
async function settles<T> (ask: () => Promise<T>, ok: (value: T) => boolean, what: string, ms = 10_000): Promise<number> {
  const began = Date.now()
  let last: T | undefined
  for (;;) {
    last = await ask()
    if (ok(last)) return Date.now() - began
    if (Date.now() - began > ms) throw new Error(`timed out waiting for ${what}; last answer ${JSON.stringify(last)}`)
    await new Promise(resolve => setTimeout(resolve, 20))
  }
}

const same = (expected: unknown) => (value: unknown) => JSON.stringify(value) === JSON.stringify(expected)

async function open (t: Test, node: Instance, id: string | undefined, topics: string[] = []): Promise<Raw> {
  return openRaw(t, node.url(id, topics))
}

/** `/sse?id=&topics=a,b`, as in the child processes. */
function routes (app: FastifyInstance): void {
  app.get<{ Querystring: { id?: string, topics?: string } }>('/sse', async request => {
    const { id, topics } = request.query
    const sse = request.getEventSource(id === '' ? undefined : id, topics === undefined ? undefined : { topics: topics.split(',') })
    sse.flush()
    await sse.keepAlive()
    return sse.close()
  })
}

function sseUrl (url: string, id: string | undefined, topics: string[] = []): string {
  const query = new URLSearchParams()
  if (id !== undefined) query.set('id', id)
  if (topics.length > 0) query.set('topics', topics.join(','))
  return `${url}/sse?${query.toString()}`
}

async function inProcess (t: Test, prefix: string, options: RedisAdapterOptions = {}): Promise<{ app: FastifyInstance, url: string }> {
  return start(t, routes, { adapter: redisAdapter({ url: redisUrl, channelPrefix: prefix, presence: { heartbeat: 200, flush: 20 }, ...options }) })
}

if (redisReady(tap)) {
  test('presence lost in Redis (expired during an outage, or a restart) is written again whole by the next heartbeat', async t => {
    const prefix = uniquePrefix(t)
    const redis = redisClient(t)
    const x = await inProcess(t, prefix)
    const y = await inProcess(t, prefix)
    await openRaw(t, sseUrl(x.url, 'alice', ['room:1']))
    await openRaw(t, sseUrl(x.url, undefined, ['room:1']))
    await settles(() => y.app.eventSources.presence('room:1'), same(['alice']), 'alice on y')
    const lost = await redis.keys(prefix + 'presence:*')
    t.ok(lost.length >= 3, 'x holds a hash, its identifiers and a topic')
    await redis.del(...lost)
    t.same(await y.app.eventSources.presence('room:1'), [], 'gone with the keys')
    await settles(() => y.app.eventSources.presence('room:1'), same(['alice']), 'the heartbeat to write it all again')
    await settles(() => y.app.eventSources.count({ topic: 'room:1' }), n => n === 2, 'the topic count back')
    t.equal(await y.app.eventSources.count(), 2)
    t.equal(await y.app.eventSources.count({ prefix: 'al' }), 1)
  })

  test('joins are batched: a burst of connections costs a few transactions, not one per connection', async t => {
    const prefix = uniquePrefix(t)
    const client = new Redis(redisUrl)
    t.teardown(() => { client.disconnect() })
    let transactions = 0
    const multi = client.multi.bind(client)
    client.multi = ((...args: Parameters<typeof multi>) => { transactions++; return multi(...args) }) as typeof client.multi
    const x = await start(t, routes, { adapter: redisAdapter({ client, channelPrefix: prefix, presence: { heartbeat: 60_000 } }) })
    const y = await inProcess(t, prefix)
    const before = transactions
    const N = 200
    const burst = await Promise.all(Array.from({ length: N }, (_, n) => openRaw(t, sseUrl(x.url, `user-${n}`, [`room:${n % 10}`]))))
    await settles(() => y.app.eventSources.count(), n => n === N, 'the burst on y')
    const joins = transactions - before
    t.ok(joins <= 10, `${N} joins in ${joins} transactions`)
    t.comment(`${N} joins: ${joins} transactions`)
    for (const raw of burst) raw.abort()
    await settles(() => y.app.eventSources.count(), n => n === 0, 'the leaves on y')
    t.same(await y.app.eventSources.presence('room:3'), [])
    t.comment(`${N} joins and ${N} leaves: ${transactions - before} transactions`)
  })

  test('regression: an instance with a longer heartbeat is not taken for dead by one with a shorter heartbeat', async t => {
    const prefix = uniquePrefix(t)
    const x = await inProcess(t, prefix, { presence: { heartbeat: 60_000, flush: 20 } })
    const y = await inProcess(t, prefix)
    await openRaw(t, sseUrl(x.url, 'alice', ['room:1']))
    await settles(() => y.app.eventSources.presence('room:1'), same(['alice']), 'alice on y')
    // Past three of y's heartbeats (600 ms), well inside x's own timeout.
    await new Promise(resolve => setTimeout(resolve, 1000))
    t.same(await y.app.eventSources.presence('room:1'), ['alice'])
    t.equal(await y.app.eventSources.count(), 1)
  })

  test('what presence costs in Redis per connection', async t => {
    const prefix = uniquePrefix(t)
    const redis = redisClient(t)
    const x = await inProcess(t, prefix)
    const N = 500
    await Promise.all(Array.from({ length: N }, (_, n) => openRaw(t, sseUrl(x.url, `user:${String(n).padStart(6, '0')}`, ['room:a', `room:${n % 50}`]))))
    await settles(() => x.app.eventSources.count(), n => n === N, 'the connections')
    await settles(async () => (await redis.keys(prefix + 'presence:*')).length, n => n === 53, 'the keys: hash, identifiers, 51 topics')
    let bytes = 0
    for (const key of await redis.keys(prefix + 'presence:*')) bytes += Number(await redis.memory('USAGE', key))
    t.pass('measured')
    t.comment(`${N} identified connections, each following 2 of 51 topics: ${bytes} bytes in Redis, ${Math.round(bytes / N)} bytes per connection`)
  })

  test('redisAdapter presence option: checked at creation; false answers for this instance only', async t => {
    for (const bad of [1, 'yes', null, { heartbeat: 0 }, { heartbeat: 1.5 }, { flush: -1 }, { flush: '10' }]) {
      t.throws(() => redisAdapter({ presence: bad as RedisAdapterOptions['presence'] }), { code: 'FST_ERR_SSE_INVALID_OPTION' }, JSON.stringify(bad))
    }
    const prefix = uniquePrefix(t)
    const x = await inProcess(t, prefix)
    const y = await inProcess(t, prefix, { presence: false })
    await openRaw(t, sseUrl(x.url, 'alice', ['room:1']))
    await openRaw(t, sseUrl(y.url, 'bob', ['room:1']))
    await settles(() => x.app.eventSources.presence('room:1'), same(['alice']), 'x alone: y does not take part')
    t.same(await y.app.eventSources.presence('room:1'), ['bob'], 'y answers for itself')
    t.equal(await y.app.eventSources.count(), 1)
  })

  test('presence and count reject with FST_ERR_SSE_ADAPTER while Redis cannot be reached, and the streams stay healthy', async t => {
    const prefix = uniquePrefix(t)
    const client = new Redis(redisUrl)
    t.teardown(() => { client.disconnect() })
    const x = await start(t, routes, { adapter: redisAdapter({ client, channelPrefix: prefix }) })
    const alice = await openRaw(t, sseUrl(x.url, 'alice', ['room:1']))
    t.same(await x.app.eventSources.presence('room:1'), ['alice'])
    client.disconnect()
    await until(() => client.status === 'end')
    await t.rejects(x.app.eventSources.presence('room:1'), { code: 'FST_ERR_SSE_ADAPTER' })
    await t.rejects(x.app.eventSources.count(), { code: 'FST_ERR_SSE_ADAPTER' })
    x.app.eventSources.broadcast('still open', { topic: 'room:1' })
    await until(() => alice.events.length === 1)
    t.equal(alice.events[0].data, 'still open')
  })

  test('presence and counts across three instances: joins, leaves, a clean shutdown and SIGKILL', async t => {
    const { nodes, prefix } = await instances(t, 3)
    const [a, b, c] = nodes
    const everywhere = async (what: string, ask: (node: Instance) => Promise<unknown>, expected: unknown, among = nodes): Promise<void> => {
      const times = await Promise.all(among.map(node => settles(() => ask(node), same(expected), what)))
      t.pass(`${what}: ${JSON.stringify(expected)} on every instance`)
      t.comment(`${what}: seen everywhere after ${Math.max(...times)} ms`)
    }

    // a: alice (room:1, room:2) and an anonymous follower of room:1; b: bob (room:1); c: carol (room:2) and dave.
    const alice = await open(t, a, 'alice', ['room:1', 'room:2'])
    const viewer = await open(t, a, undefined, ['room:1'])
    await open(t, b, 'bob', ['room:1'])
    await open(t, c, 'carol', ['room:2'])
    const dave = await open(t, c, 'dave')
    await everywhere('joins', node => node.presence('room:1'), ['alice', 'bob'])
    await everywhere('room:2', node => node.presence('room:2'), ['alice', 'carol'])
    await everywhere('count()', node => node.count(), 5)
    await everywhere('count({ topic })', node => node.count({ topic: 'room:1' }), 3)
    await everywhere('count(identifier)', node => node.count('dave'), 1)
    await everywhere('count({ prefix })', node => node.count({ prefix: 'a' }), 1)
    await everywhere('count({ prefix: "" })', node => node.count({ prefix: '' }), 4)

    // Leaves: a topic left on a, a topic joined from b for a source on c, two streams closed.
    await a.call('unsubscribe', { id: 'alice', topics: ['room:1'] })
    await b.call('subscribe', { to: 'dave', topics: ['room:1'] })
    viewer.abort()
    dave.abort()
    await everywhere('leaves', node => node.presence('room:1'), ['bob'])
    await everywhere('count() after leaves', node => node.count(), 3)
    await everywhere('count({ topic }) after leaves', node => node.count({ topic: 'room:1' }), 1)
    await everywhere('a closed identifier', node => node.count('dave'), 0)
    alice.abort()
    await everywhere('a stream that ends leaves its topics', node => node.presence('room:2'), ['carol'])

    // A clean shutdown drops out at once: the first answer after close() resolves is without it.
    await b.call('close')
    t.same(await a.presence('room:1'), [], 'bob is gone at once')
    t.equal(await c.count(), 1, 'counted out at once')
    t.equal(await a.count('bob'), 0)
    const redis = redisClient(t)
    t.equal(await redis.zcard(prefix + 'instances'), 2, 'the instance left the live set')

    // SIGKILL: nothing is cleaned up; the others stop counting it after three missed heartbeats.
    t.equal(await a.count(), 1, 'carol, on c')
    await c.kill()
    const killed = Date.now()
    await settles(() => a.presence('room:2'), same([]), 'the killed instance to drop out of presence')
    await settles(() => a.count(), n => n === 0, 'the killed instance to drop out of counts')
    t.pass('the killed instance dropped out')
    t.comment(`SIGKILL: dropped out after ${Date.now() - killed} ms (heartbeat ${HEARTBEAT} ms, timeout ${3 * HEARTBEAT} ms)`)
    await settles(() => redis.keys(prefix + 'presence:*'), keys => keys.length === 1, 'its keys to expire (a keeps its hash)')
    await settles(() => redis.zcard(prefix + 'instances'), n => n === 1, 'the live set to hold a alone (a\'s next heartbeat)')
    await a.call('close')
    t.same(await redis.keys(prefix + '*'), [], 'nothing is left in Redis once the last instance closed')
  })
}
