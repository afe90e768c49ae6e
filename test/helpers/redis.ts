import { randomBytes } from 'node:crypto'
import { spawnSync } from 'node:child_process'
import { connect, type Socket } from 'node:net'
import { Redis } from 'ioredis'
import type { Test } from 'tap'
import { Agent, EventSource } from 'undici'

export const redisUrl = process.env.REDIS_URL ?? 'redis://127.0.0.1:6379'

// A synchronous probe, so a file without Redis reports one skip line instead of one per test.
const PROBE = `
const u = new URL(process.argv[1])
const s = require('node:net').connect(Number(u.port || 6379), u.hostname)
s.setTimeout(5000, () => process.exit(1))
s.on('error', () => process.exit(1))
s.on('connect', () => s.write('PING\\r\\n'))
s.on('data', d => process.exit(/^(\\+PONG|-NOAUTH)/.test(String(d)) ? 0 : 1))
`

/** Whether the Redis tests run: false (after one skip line) when Redis is absent and not required. */
export function redisReady (t: Test): boolean {
  // Generous bounds: on a loaded machine starting the probe alone can take seconds, and a skip hides a whole file.
  const probe = spawnSync(process.execPath, ['-e', PROBE, redisUrl], { timeout: 15_000 })
  if (probe.status === 0) return true
  if (process.env.REQUIRE_REDIS === '1') {
    t.fail(`Redis is required (REQUIRE_REDIS=1) but does not answer at ${redisUrl}`)
  } else {
    t.plan(0, `Redis does not answer at ${redisUrl}; set REDIS_URL, or REQUIRE_REDIS=1 to fail instead of skipping`)
  }
  return false
}

/** A channel prefix no other test uses; its keys (streams, topic streams, idempotency keys) are deleted when the test ends. */
export function uniquePrefix (t: Test): string {
  const prefix = `fes-test:${process.pid}:${randomBytes(4).toString('hex')}:`
  t.teardown(async () => {
    const redis = new Redis(redisUrl, { lazyConnect: true, maxRetriesPerRequest: 0 })
    try {
      await redis.connect()
      let cursor = '0'
      do {
        const [next, keys] = await redis.scan(cursor, 'MATCH', prefix.replace(/[*?[\]\\]/g, '\\$&') + '*', 'COUNT', 1000)
        cursor = next
        if (keys.length > 0) await redis.del(...keys)
      } while (cursor !== '0')
    } catch {} finally {
      redis.disconnect()
    }
  })
  return prefix
}

export interface Received {
  type: string
  data: string
  id: string
}

/** An undici EventSource that records every event it gets (message and named ones). */
export class Client {
  readonly events: Received[] = []
  readonly es: EventSource
  opens = 0
  errors = 0
  /** How many events had come in at each open, to tell a replay from what came live. */
  readonly openedAt: number[] = []

  constructor (t: Test, url: string, init?: ConstructorParameters<typeof EventSource>[1], names: string[] = []) {
    this.es = new EventSource(url, init)
    t.teardown(() => this.es.close())
    const record = (e: Event): void => {
      const m = e as MessageEvent
      this.events.push({ type: m.type, data: String(m.data), id: m.lastEventId })
    }
    this.es.addEventListener('message', record)
    for (const name of names) this.es.addEventListener(name, record)
    this.es.addEventListener('open', () => {
      this.opens++
      this.openedAt.push(this.events.length)
    })
    this.es.addEventListener('error', () => { this.errors++ })
  }

  get data (): string[] {
    return this.events.map(e => e.data)
  }

  close (): void {
    this.es.close()
  }
}

/**
 * A client-side balancer: an undici dispatcher that dials whichever instance `port` names, and holds new
 * connections while `hold()` is in force. The URL stays the same, so EventSource reconnects (with its own
 * Last-Event-ID) to another instance, as behind a load balancer.
 */
export class Switchboard {
  port: number
  readonly agent: Agent
  #held: (() => void)[] | null = null
  #sockets = new Set<Socket>()

  constructor (t: Test, port: number) {
    this.port = port
    this.agent = new Agent({
      connect: (_options, callback) => {
        const dial = (): void => {
          const socket = connect(this.port, '127.0.0.1')
          this.#sockets.add(socket)
          socket.once('close', () => this.#sockets.delete(socket))
          socket.once('connect', () => callback(null, socket))
          socket.once('error', err => callback(err, null))
        }
        if (this.#held === null) dial()
        else this.#held.push(dial)
      }
    })
    t.teardown(() => {
      this.release()
      return this.agent.destroy()
    })
  }

  hold (): void {
    this.#held ??= []
  }

  /** Cuts every connection made so far, as a network failure would. */
  drop (): void {
    for (const socket of this.#sockets) socket.destroy()
  }

  get waiting (): number {
    return this.#held?.length ?? 0
  }

  release (): void {
    const held = this.#held
    this.#held = null
    for (const dial of held ?? []) dial()
  }
}

export function portOf (url: string): number {
  return Number(new URL(url).port)
}

/** A plain connection for the test's own checks, closed when the test ends. */
export function redisClient (t: Test, url = redisUrl): Redis {
  const redis = new Redis(url, { maxRetriesPerRequest: 1 })
  redis.on('error', () => {})
  t.teardown(() => { redis.disconnect() })
  return redis
}

/** What a stream holds (the log by default; `plain`, or `topic:<name>`), oldest first, as [id, data]. */
export async function stored (redis: Redis, prefix: string, stream = 'stream'): Promise<[string, string][]> {
  const entries = await redis.xrange(prefix + stream, '-', '+')
  return entries.map(([id, fields]) => [id, (JSON.parse(fields[1]) as { data: string }).data])
}

/**
 * Waits (10 s at most) until `received()` holds every message of `expected`, then checks that it holds nothing but
 * what was published, each once, in publish order (each message's text is its publish number).
 */
export async function everyOnceInOrder (t: Test, received: () => string[], expected: string[], published: Set<string>, what: string): Promise<void> {
  const deadline = Date.now() + 10_000
  const all = (): boolean => expected.every(text => received().includes(text))
  while (!all() && Date.now() < deadline) await new Promise(resolve => setTimeout(resolve, 5))
  t.ok(all(), `${what}: every resolved message`)
  if (!all()) t.comment(`${what}: missing ${expected.filter(text => !received().includes(text)).join(',')} of ${expected.length}; got ${received().length}`)
  await new Promise(resolve => setTimeout(resolve, 100))
  t.ok(received().every(text => published.has(text)), `${what}: nothing but what was published`)
  t.equal(new Set(received()).size, received().length, `${what}: each once`)
  t.same(received(), [...received()].sort((x, y) => Number(x) - Number(y)), `${what}: in publish order`)
}
