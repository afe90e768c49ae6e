import tap, { test, type Test } from 'tap'
import { fork, type ChildProcess } from 'node:child_process'
import { join } from 'node:path'
import type { CountTarget } from '../types/index'
import { openRaw, type Raw } from './helpers/raw'
import { redisClient, redisReady, redisUrl, uniquePrefix } from './helpers/redis'
import { until } from './helpers/server'

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

if (redisReady(tap)) {
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
    t.same((await redis.zrange(prefix + 'instances', 0, -1)).length, 2, 'the instance left the live set')

    // SIGKILL: nothing is cleaned up; the others stop counting it after three missed heartbeats.
    t.equal(await a.count(), 1, 'carol, on c')
    await c.kill()
    const killed = Date.now()
    await settles(() => a.presence('room:2'), same([]), 'the killed instance to drop out of presence')
    await settles(() => a.count(), n => n === 0, 'the killed instance to drop out of counts')
    t.pass('the killed instance dropped out')
    t.comment(`SIGKILL: dropped out after ${Date.now() - killed} ms (heartbeat ${HEARTBEAT} ms, timeout ${3 * HEARTBEAT} ms)`)
    await settles(() => redis.keys(prefix + 'presence:*'), keys => keys.length === 1, 'its keys to expire (a keeps its hash)')
    t.equal(await redis.zcard(prefix + 'instances'), 1, 'the live set holds a alone')
    await a.call('close')
    t.same(await redis.keys(prefix + '*'), [], 'nothing is left in Redis once the last instance closed')
  })
}
