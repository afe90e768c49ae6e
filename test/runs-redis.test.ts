import tap, { test, type Test } from 'tap'
import { fork, type ChildProcess } from 'node:child_process'
import { join } from 'node:path'
import type { FastifyInstance } from 'fastify'
import { request } from 'undici'
import redisAdapter from '../lib/adapters/redis'
import type { HttpRequestEventSource } from '../types/index'
import { start, until } from './helpers/server'
import { readEvents } from './helpers/read-events'
import { sleep } from './helpers/clients'
import { Client, Switchboard, portOf, redisClient, redisReady, redisUrl, uniquePrefix } from './helpers/redis'
import { PrivateRedis, hasRedisServer } from './helpers/redis-server'

if (!redisReady(tap)) process.exit(0)

/** A prefix of the test's own; every key under it is deleted when the test ends. */
function runPrefix (t: Test): string {
  const prefix = uniquePrefix(t)
  const redis = redisClient(t)
  t.teardown(async () => {
    const keys = await redis.keys(prefix + '*')
    if (keys.length > 0) await redis.del(...keys)
  })
  return prefix
}

function routes (sources: HttpRequestEventSource[] = [], counts = { refused: 0 }) {
  return (app: FastifyInstance): void => {
    app.get<{ Params: { key: string } }>('/runs/:key', async (request, reply) => {
      if (await app.eventSources.runState(request.params.key, request.headers['last-event-id'] as string | undefined) === undefined) {
        counts.refused++
        return reply.code(204).send()
      }
      const sse = request.getEventSource()
      sources.push(sse)
      await sse.follow(request.params.key)
    })
  }
}

async function cluster (t: Test, n: number, lease = 5000, prefix = runPrefix(t)) {
  return Promise.all(Array.from({ length: n }, () => {
    const sources: HttpRequestEventSource[] = []
    const counts = { refused: 0 }
    return start(t, routes(sources, counts), { retry: 30, adapter: redisAdapter({ url: redisUrl, channelPrefix: prefix, runs: { lease } }) })
      .then(node => ({ ...node, sources, counts }))
  }))
}

function numbers (count: number, every: number, state: { signal?: AbortSignal, stopped?: boolean } = {}) {
  return async function * (signal: AbortSignal): AsyncGenerator<{ n: number }> {
    state.signal = signal
    try {
      for (let n = 1; n <= count; n++) {
        await sleep(every)
        yield { n }
      }
    } finally {
      state.stopped = true
    }
  }
}

test('Redis: a follower cut mid-run resumes on another instance, every event once and in order, the end, then 204', async t => {
  const [a, b] = await cluster(t, 2)
  const board = new Switchboard(t, portOf(b.url))
  const running = a.app.eventSources.run('chat:1', numbers(150, 5))
  const client = new Client(t, b.url + '/runs/chat:1', { node: { dispatcher: board.agent } }, ['end'])
  await until(() => client.events.length >= 30, 20_000, 'thirty events on B')
  board.port = portOf(a.url)
  board.drop()
  await until(() => client.events.some(e => e.type === 'end'), 30_000, 'the end event')
  await until(() => a.counts.refused + b.counts.refused >= 1, 10_000, 'the reconnect after the end')
  await sleep(100)
  t.equal(client.es.readyState, client.es.CLOSED, 'stopped by the 204')
  const items = client.events.filter(e => e.type === 'message').map(e => JSON.parse(e.data).n)
  t.same(items, Array.from({ length: 150 }, (_, i) => i + 1), 'every event once, in order, across two instances')
  t.same(JSON.parse(client.events.at(-1)?.data ?? ''), { reason: 'done' })
  t.ok(a.sources.length >= 1, 'resumed on the producing instance')
  t.same(await running, { sent: 150, reason: 'done' })
})

test('Redis: after the end, any instance gives the whole run or the rest after an id; a second run() is refused everywhere while one runs', async t => {
  const [a, b, c] = await cluster(t, 3)
  let release: () => void = () => {}
  const gate = new Promise<void>(resolve => { release = resolve })
  const running = a.app.eventSources.run('k', (async function * () { yield 'one'; yield 'two'; await gate; yield 'three' })())
  await until(() => a.app.eventSources.runningRuns === 1, 3000)
  while (await a.app.eventSources.runState('k') !== 'running') await sleep(10)
  await t.rejects(b.app.eventSources.run('k', ['x']), { code: 'FST_ERR_SSE_RUN_EXISTS' }, 'on another instance')
  await t.rejects(c.app.eventSources.run('k', ['x']), { code: 'FST_ERR_SSE_RUN_EXISTS' }, 'on a third')
  await t.rejects(a.app.eventSources.run('k', ['x']), { code: 'FST_ERR_SSE_RUN_EXISTS' }, 'on its own')
  t.equal(await c.app.eventSources.runState('k'), 'running')
  release()
  t.same(await running, { sent: 3, reason: 'done' })
  t.equal(await b.app.eventSources.runState('k'), 'ended')

  const whole = await readEvents(`${c.url}/runs/k`)
  await whole.ended
  t.same(whole.events.map(e => e.data), ['one', 'two', 'three', '{"reason":"done"}'])
  t.equal(whole.events.at(-1)?.event, 'end')
  const rest = await readEvents(`${b.url}/runs/k`, { 'last-event-id': whole.events[0].id as string })
  await rest.ended
  t.same(rest.events.map(e => e.data), ['two', 'three', '{"reason":"done"}'])
  const after = await request(`${b.url}/runs/k`, { headers: { 'last-event-id': whole.events[3].id as string } })
  t.equal(after.statusCode, 204)
  await after.body.dump()
  t.same(await b.app.eventSources.run('k', ['again']), { sent: 1, reason: 'done' }, 'an ended key can run again')
})

test('Redis: cancel() from another instance aborts the producer and ends every follower on every instance', async t => {
  const [a, b] = await cluster(t, 2)
  const state: { signal?: AbortSignal, stopped?: boolean } = {}
  const running = a.app.eventSources.run('c', numbers(100_000, 5, state))
  const onA = await readEvents(`${a.url}/runs/c`)
  const onB = await readEvents(`${b.url}/runs/c`)
  t.teardown(() => { onA.close(); onB.close() })
  await until(() => onA.events.length >= 5 && onB.events.length >= 5, 10_000)
  t.equal(await b.app.eventSources.cancel('c'), true)
  const result = await running
  t.equal(result.reason, 'cancelled')
  t.equal(state.signal?.aborted, true)
  await Promise.all([onA.ended, onB.ended])
  await until(() => state.stopped === true, 3000, 'the generator\'s finally')
  for (const stream of [onA, onB]) {
    t.same([stream.events.at(-1)?.event, stream.events.at(-1)?.data], ['end', '{"reason":"cancelled"}'])
    t.same(stream.events.slice(0, -1).map(e => JSON.parse(e.data).n), Array.from({ length: result.sent }, (_, i) => i + 1))
  }
  t.equal(await b.app.eventSources.cancel('c'), false, 'nothing left running')
})

test('Redis: a replay is read in bounded pieces', async t => {
  const [a, b] = await cluster(t, 2)
  await a.app.eventSources.run('long', Array.from({ length: 1000 }, (_, i) => i))
  const stream = await readEvents(`${b.url}/runs/long`)
  await stream.ended
  t.equal(stream.events.length, 1001)
  t.same(stream.events.slice(0, -1).map(e => Number(e.data)), Array.from({ length: 1000 }, (_, i) => i))
})

test('Redis: abandonAfter counts followers on every instance', async t => {
  const [a, b] = await cluster(t, 2, 800)
  const running = a.app.eventSources.run('ab', numbers(100_000, 10), { abandonAfter: 600 })
  while (await a.app.eventSources.runState('ab') !== 'running') await sleep(10)
  const onB = await readEvents(`${b.url}/runs/ab`)
  t.teardown(onB.close)
  let settled = false
  running.then(() => { settled = true }, () => { settled = true })
  // Followed on B only, for several times abandonAfter: it goes on.
  await sleep(2000)
  t.equal(settled, false, 'not abandoned while another instance has a follower')
  onB.close()
  const result = await running
  t.equal(result.reason, 'cancelled', 'abandoned once nobody follows anywhere')
})

/** An instance in a child process (the built package), so that it can be killed. */
class Child {
  readonly child: ChildProcess
  port = 0
  #n = 0
  #pending = new Map<number, { resolve: (value: unknown) => void, reject: (err: Error) => void }>()

  constructor (t: Test, prefix: string, lease: number) {
    this.child = fork(join(__dirname, 'fixtures', 'run-instance.js'), {
      env: { ...process.env, REDIS_URL: redisUrl, CHANNEL_PREFIX: prefix, RUN_LEASE: String(lease) },
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
    t.teardown(() => { if (this.child.exitCode === null) this.child.kill('SIGKILL') })
  }

  async ready (): Promise<void> {
    await until(() => this.port !== 0 || this.child.exitCode !== null, 15_000, 'the instance to listen')
    if (this.port === 0) throw new Error('the instance exited')
  }

  call (command: string, args: Record<string, unknown>): Promise<unknown> {
    const n = ++this.#n
    return new Promise((resolve, reject) => {
      this.#pending.set(n, { resolve, reject })
      this.child.send({ n, command, args })
    })
  }
}

test('Redis, separate processes: SIGKILL of the producing instance ends the run as lost for followers elsewhere', async t => {
  const lease = 1000
  const prefix = runPrefix(t)
  const producer = new Child(t, prefix, lease)
  const [b] = await cluster(t, 1, lease, prefix)
  await producer.ready()
  t.equal(await producer.call('run', { key: 'doomed', count: 100_000, every: 10 }), 'started')
  await t.rejects(b.app.eventSources.run('doomed', ['x']), { code: 'FST_ERR_SSE_RUN_EXISTS' }, 'held by the child')
  const follower = await readEvents(`${b.url}/runs/doomed`)
  t.teardown(follower.close)
  await until(() => follower.events.length >= 10, 10_000, 'events from the child')
  producer.child.kill('SIGKILL')
  await follower.ended
  const end = follower.events.at(-1)
  t.same([end?.event, end?.data], ['end', '{"reason":"lost"}'], 'the follower got the end event with reason lost')
  const items = follower.events.slice(0, -1).map(e => JSON.parse(e.data).n)
  t.same(items, Array.from({ length: items.length }, (_, i) => i + 1), 'every event before it, once and in order')
  t.equal(await b.app.eventSources.runState('doomed'), 'ended')
  const late = await readEvents(`${b.url}/runs/doomed`)
  await late.ended
  t.same(late.events.at(-1)?.data, '{"reason":"lost"}', 'a late follower gets the whole run and the lost end')
  t.same(await b.app.eventSources.run('doomed', ['again']), { sent: 1, reason: 'done' }, 'the key is free again')
})

test('Redis: follow() right after run() in one handler waits for the key to be taken', async t => {
  const prefix = runPrefix(t)
  const { url } = await start(t, app => {
    app.get('/ask', async request => {
      app.eventSources.run('now', ['x', 'y']).catch(() => {})
      await request.getEventSource().follow('now')
    })
  }, { adapter: redisAdapter({ url: redisUrl, channelPrefix: prefix }) })
  const stream = await readEvents(`${url}/ask`)
  await stream.ended
  t.same(stream.events.map(e => e.data), ['x', 'y', '{"reason":"done"}'])
})

test('Redis away: run() rejects with FST_ERR_SSE_PUBLISH_FAILED, runState() with FST_ERR_SSE_ADAPTER, a running run ends with reason error', { skip: !hasRedisServer && 'redis-server is not installed' }, async t => {
  const redis = await PrivateRedis.start(t)
  const { app } = await start(t, routes(), { adapter: redisAdapter({ url: redis.url, channelPrefix: 'away:', publishTimeout: 500, runs: { lease: 5000 } }) })
  const running = app.eventSources.run('going', numbers(100_000, 5))
  while (await app.eventSources.runState('going') !== 'running') await sleep(10)
  await redis.stop()
  const result = await running
  t.equal(result.reason, 'error', 'the run ended: its events can no longer be stored')
  t.match(result.error, { code: 'FST_ERR_SSE_PUBLISH_FAILED' })
  await t.rejects(app.eventSources.run('new', ['a']), { code: 'FST_ERR_SSE_PUBLISH_FAILED', statusCode: 503 })
  await t.rejects(app.eventSources.runState('going'), { code: 'FST_ERR_SSE_ADAPTER' })
  await t.rejects(app.eventSources.cancel('other'), { code: 'FST_ERR_SSE_PUBLISH_FAILED' })
  t.equal(app.eventSources.runningRuns, 0)
})
