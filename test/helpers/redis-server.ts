import { spawn, spawnSync, type ChildProcess } from 'node:child_process'
import { createServer } from 'node:net'
import { Redis } from 'ioredis'
import type { Test } from 'tap'

/** Whether a private `redis-server` can be started for the tests that restart, kill or reconfigure Redis. */
export const hasRedisServer = spawnSync('redis-server', ['--version']).status === 0

async function isFree (port: number): Promise<boolean> {
  return new Promise(resolve => {
    const server = createServer()
    server.once('error', () => resolve(false))
    server.listen(port, '127.0.0.1', () => server.close(() => resolve(true)))
  })
}

/**
 * A port below the ephemeral range (32768 and up), so nothing else takes it between a stop and a restart, and above
 * the cluster fixture's ports (10000 to 29999), so a test file beside a cluster's cannot pick one of them.
 */
export async function freePort (): Promise<number> {
  for (let i = 0; i < 50; i++) {
    const port = 30000 + Math.floor(Math.random() * 2700)
    if (await isFree(port)) return port
  }
  throw new Error('no free port found')
}

/** Starts a redis-server without persistence on the port and waits until it answers. */
export async function startRedis (port: number, args: string[] = []): Promise<ChildProcess> {
  const child = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', ...args], { stdio: 'ignore' })
  const probe = new Redis(port, '127.0.0.1', { lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null })
  probe.on('error', () => {})
  try {
    const deadline = Date.now() + 5000
    while (Date.now() < deadline) {
      if (child.exitCode !== null) throw new Error(`redis-server exited with ${child.exitCode}`)
      try {
        await probe.connect()
        if (await probe.ping() === 'PONG') return child
      } catch {
        probe.disconnect()
        await new Promise(resolve => setTimeout(resolve, 50))
      }
    }
    throw new Error('redis-server did not answer')
  } finally {
    probe.disconnect()
  }
}

/** Kills the server by its pid (SIGKILL: nothing is saved) and waits for it to exit. */
export async function stopRedis (child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return
  const exited = new Promise(resolve => child.once('exit', resolve))
  child.kill('SIGKILL')
  await exited
}

/** A private redis-server that can be stopped and started again on the same port; stopped when the test ends. */
export class PrivateRedis {
  readonly port: number
  readonly url: string
  #args: string[]
  #child: ChildProcess | undefined

  private constructor (port: number, args: string[]) {
    this.port = port
    this.url = `redis://127.0.0.1:${port}`
    this.#args = args
  }

  static async start (t: Test, args: string[] = []): Promise<PrivateRedis> {
    const server = new PrivateRedis(await freePort(), args)
    await server.start()
    t.teardown(() => server.stop())
    return server
  }

  async start (): Promise<void> {
    this.#child = await startRedis(this.port, this.#args)
  }

  async stop (): Promise<void> {
    if (this.#child !== undefined) await stopRedis(this.#child)
  }

  /** A plain connection for the test's own commands, closed when the test ends. */
  client (t: Test): Redis {
    const redis = new Redis(this.url, { maxRetriesPerRequest: 1 })
    redis.on('error', () => {})
    t.teardown(() => { redis.disconnect() })
    return redis
  }
}

/** Ids of the subscriber connections named `name` (CLIENT LIST `sub` > 0). */
export async function subscriberIds (redis: Redis, name: string): Promise<string[]> {
  const list = await redis.client('LIST') as string
  return list.split('\n').filter(line => line.includes(` name=${name} `) && /\bsub=[1-9]/.test(line)).map(line => /\bid=(\d+)/.exec(line)?.[1] as string)
}
