import { fork, type ChildProcess } from 'node:child_process'
import { join } from 'node:path'
import { until } from './server'
import { redisUrl } from './redis'

/** One instance in a child process (the built package), driven over IPC. */
export class Instance {
  readonly child: ChildProcess
  port = 0
  #n = 0
  #pending = new Map<number, { resolve: (value: unknown) => void, reject: (err: Error) => void }>()

  constructor (prefix: string, url = redisUrl, env: Record<string, string> = {}) {
    this.child = fork(join(__dirname, '..', 'fixtures', 'redis-instance.js'), {
      env: { ...process.env, REDIS_URL: url, CHANNEL_PREFIX: prefix, ...env },
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
  }

  get url (): string {
    return `http://127.0.0.1:${this.port}`
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

  publish (data: string, to?: string | { prefix: string }): Promise<unknown> {
    return this.call('publish', { data, to })
  }

  async stop (): Promise<void> {
    if (this.child.exitCode !== null) return
    const exited = new Promise(resolve => this.child.once('exit', resolve))
    this.child.disconnect()
    const timer = setTimeout(() => this.child.kill('SIGKILL'), 3000)
    await exited
    clearTimeout(timer)
  }
}
