import { test, type Test } from 'tap'
import { request as httpRequest, type ClientRequest } from 'node:http'
import Fastify, { type FastifyInstance } from 'fastify'
import { createParser, type EventSourceMessage } from 'eventsource-parser'
import eventSources from '../lib/index'
import { LocalAdapter } from '../lib/adapters/local'
import redisAdapter from '../lib/adapters/redis'
import { MemoryHistory } from '../lib/history/memory'
import { matchesTarget } from '../lib/target'
import type { FastifyEventSourcesOptions, HistoryStore, PublishedMessage, PublishTarget, ReplayResult } from '../types/index'
import { prng, sleep } from './helpers/clients'
import { redisClient, redisReady, redisUrl, uniquePrefix } from './helpers/redis'
import { until } from './helpers/server'

/**
 * Random interleavings of everything that meets at the replay seam, checked from outside with a spec parser
 * over a raw HTTP stream: publishes before, during and after the history read, from a `registered` listener,
 * the handler, another route and (Redis) another instance; the handler's own sends, before and after it awaits;
 * slow readers; batched flushes; reconnects with Last-Event-ID, on the same instance or another. For the one
 * identifier under test, every published message it gets must be each message stored for it, once, in the
 * store's order, and its own sends must arrive in order. `SEED=<n>` runs one case again.
 */

const RUNS = 30
const FIRST_SEED = process.env.SEED !== undefined ? Number(process.env.SEED) : Math.floor(Math.random() * 2 ** 31)
const SEEDS = process.env.SEED !== undefined ? [FIRST_SEED] : Array.from({ length: RUNS }, (_, i) => FIRST_SEED + i)

interface Plan {
  node: number
  before: number
  sends: number
  after: number
  hdl: boolean
  reg: boolean
  hold: number
  end: 'client' | 'server'
  pauses: number[]
}

interface Publish {
  node: number
  delay: number
  viaRoute: boolean
  awaited: boolean
  to: PublishTarget | undefined
}

interface Scenario {
  batch: boolean
  readDelays: number[]
  connections: Plan[]
  publishes: Publish[]
}

function scenario (seed: number, nodes: number): Scenario {
  const rnd = prng(seed)
  const int = (n: number): number => Math.floor(rnd() * n)
  const targets: (PublishTarget | undefined)[] = [undefined, 'c', 'other', { prefix: 'c' }, { prefix: 'o' }]
  const connections: Plan[] = Array.from({ length: 1 + int(4) }, () => ({
    node: int(nodes),
    before: rnd() < 0.3 ? int(15) : 0,
    sends: int(3),
    after: rnd() < 0.4 ? int(25) : 0,
    hdl: rnd() < 0.5,
    reg: rnd() < 0.5,
    hold: 5 + int(40),
    end: rnd() < 0.5 ? 'client' : 'server',
    pauses: rnd() < 0.4 ? Array.from({ length: 6 }, () => 2 + int(15)) : []
  }))
  const publishes: Publish[] = Array.from({ length: 20 + int(40) }, () => ({
    node: int(nodes),
    delay: rnd() < 0.5 ? 0 : int(5),
    viaRoute: rnd() < 0.2,
    awaited: rnd() < 0.7,
    to: targets[int(targets.length)]
  }))
  return { batch: rnd() < 0.3, readDelays: Array.from({ length: 8 }, () => rnd() < 0.5 ? 0 : int(20)), connections, publishes }
}

/** A memory history whose reads take as long as the scenario says, as a remote store's do. */
class DelayedHistory implements HistoryStore {
  inner = new MemoryHistory(10_000)
  delays: number[]
  constructor (delays: number[]) {
    this.delays = [...delays]
  }

  append (message: PublishedMessage): string {
    return this.inner.append(message)
  }

  async readAfter (lastEventId: string, identifier: string): Promise<ReplayResult> {
    const result = this.inner.readAfter(lastEventId, identifier)
    const delay = this.delays.shift() ?? 0
    if (delay > 0) await sleep(delay)
    return result
  }
}

interface Node { app: FastifyInstance, url: string }

async function node (t: Test, plans: Plan[], options: FastifyEventSourcesOptions): Promise<Node> {
  const app = Fastify()
  await app.register(eventSources, options)
  const publish = (data: string, to?: PublishTarget): void => { app.eventSources.publish(data, { to }).catch(() => {}) }
  app.get<{ Params: { id: string }, Querystring: { n: string } }>('/sse/:id', async request => {
    const n = Number(request.query.n)
    const plan = plans[n]
    if (plan.before > 0) await sleep(plan.before)
    const sse = request.getEventSource(request.params.id)
    if (plan.hdl) publish(`hdl-${n}`, 'c')
    for (let i = 0; i < plan.sends; i++) sse.send(`own-${n}-${i}`)
    if (plan.after > 0) {
      await sleep(plan.after)
      sse.send(`own-${n}-${plan.sends}`)
    }
    await sse.keepAlive()
    return sse.close()
  })
  app.post<{ Querystring: { data: string, to?: string } }>('/pub', async (request, reply) => {
    await app.eventSources.publish(request.query.data, { to: request.query.to })
    return reply.code(204).send()
  })
  app.eventSources.on('registered', source => {
    const n = Number((source.request.query as { n?: string }).n)
    if (source.identifier === 'c' && plans[n]?.reg) publish(`reg-${n}`)
  })
  t.teardown(() => app.close())
  await app.listen({ port: 0, host: '127.0.0.1' })
  const address = app.server.address()
  if (address === null || typeof address === 'string') throw new Error('no port')
  return { app, url: `http://127.0.0.1:${address.port}` }
}

interface Received { n: number, event: EventSourceMessage }

/** One raw HTTP/1.1 connection, parsed by eventsource-parser; it can stop reading for a while, as a slow client does. */
function connect (url: string, n: number, lastId: string | undefined, pauses: number[], out: Received[]): { req: ClientRequest, closed: Promise<void>, head: Promise<string | undefined> } {
  const headers: Record<string, string> = { accept: 'text/event-stream' }
  if (lastId !== undefined) headers['last-event-id'] = lastId
  const req = httpRequest(`${url}/sse/c?n=${n}`, { headers, agent: false })
  let closedResolve: () => void = () => {}
  const closed = new Promise<void>(resolve => { closedResolve = resolve })
  const head = new Promise<string | undefined>(resolve => {
    req.on('error', () => { resolve(undefined); closedResolve() })
    req.on('response', res => {
      resolve(String(res.headers['content-type']))
      const parser = createParser({ onEvent: event => out.push({ n, event }) })
      const decoder = new TextDecoder()
      res.on('data', (chunk: Buffer) => parser.feed(decoder.decode(chunk, { stream: true })))
      res.on('close', closedResolve)
      res.on('error', () => {})
      const left = [...pauses]
      const pause = (): void => {
        const ms = left.shift()
        if (ms === undefined || res.destroyed) return
        res.pause()
        setTimeout(() => { res.resume(); setTimeout(pause, ms) }, ms).unref()
      }
      pause()
    })
  })
  req.end()
  return { req, closed, head }
}

async function run (t: Test, seed: number, nodes: Node[], plans: Plan[], s: Scenario, stored: () => Promise<{ id: string, data: string }[]>): Promise<void> {
  const received: Received[] = []
  let publishing = true
  let count = 0
  const publisher = (async () => {
    const pending: Promise<unknown>[] = []
    for (const p of s.publishes) {
      if (!publishing) break
      if (p.delay > 0) await sleep(p.delay)
      const data = `p-${count++}`
      const { app, url } = nodes[p.node]
      let done: Promise<unknown>
      if (p.viaRoute) {
        const query = new URLSearchParams({ data })
        if (typeof p.to === 'string') query.set('to', p.to)
        done = fetch(`${url}/pub?${query.toString()}`, { method: 'POST' })
      } else {
        done = app.eventSources.publish(data, { to: typeof p.to === 'object' && 'prefix' in p.to ? { prefix: p.to.prefix } : p.to })
      }
      if (p.awaited) await done
      else pending.push(done)
    }
    await Promise.all(pending)
  })()

  let lastId: string | undefined
  for (let n = 0; n < plans.length; n++) {
    const plan = plans[n]
    const last = n === plans.length - 1
    const { app, url } = nodes[plan.node]
    const connection = connect(url, n, lastId, plan.pauses, received)
    const type = await connection.head
    t.match(type, /^text\/event-stream/, `seed ${seed}: connection ${n} is an event stream`)
    if (last) break
    await sleep(plan.hold)
    if (plan.end === 'server') {
      await until(() => app.eventSources.getByIdentifier('c') !== undefined, 3000, 'the source')
      app.eventSources.getByIdentifier('c')?.close()
      await connection.closed
    } else {
      connection.req.destroy()
      await connection.closed
    }
    for (const r of received) if (r.event.id !== undefined) lastId = r.event.id
  }
  await publisher
  publishing = false
  const lastNode = nodes[plans[plans.length - 1].node]
  // The last connection must be registered, and done replaying, before the end marker is published.
  await until(() => {
    const source = lastNode.app.eventSources.getByIdentifier('c')
    return source !== undefined && Number((source.request.query as { n: string }).n) === plans.length - 1 &&
      (source.lastEventId === undefined || source.replay !== undefined)
  }, 3000, `seed ${seed}: the last source`)
  await sleep(30)
  await lastNode.app.eventSources.publish('end', { to: 'c' })
  await until(() => received.some(r => r.event.data === 'end'), 5000, `seed ${seed}: the end marker`)
  await sleep(20)

  const expected = await stored()
  const published = received.filter(r => !r.event.data.startsWith('own-'))
  const got = published.map(r => ({ id: r.event.id as string, data: r.event.data }))
  const resets = published.filter(r => r.event.event !== undefined)
  t.same(resets, [], `seed ${seed}: no reset (the history held everything)`)
  const ids = got.map(m => m.id)
  t.equal(new Set(ids).size, ids.length, `seed ${seed}: no duplicate`)
  t.same(got, expected.slice(expected.length - got.length), `seed ${seed}: every stored message for it from its first one, once, in the store's order`)
  for (let n = 0; n < plans.length; n++) {
    const own = received.filter(r => r.n === n && r.event.data.startsWith('own-')).map(r => r.event.data)
    t.same(own, Array.from({ length: own.length }, (_, i) => `own-${n}-${i}`), `seed ${seed}: connection ${n}'s own sends in order`)
  }
}

test('memory history: the seam holds for random interleavings', async t => {
  t.comment(`SEED=${FIRST_SEED}${SEEDS.length > 1 ? ` (seeds ${FIRST_SEED}..${FIRST_SEED + SEEDS.length - 1})` : ''}`)
  for (const seed of SEEDS) {
    await t.test(`seed ${seed}`, async t => {
      const s = scenario(seed, 1)
      const history = new DelayedHistory(s.readDelays)
      const n = await node(t, s.connections, { adapter: new LocalAdapter(history), batch: s.batch })
      await run(t, seed, [n], s.connections, s, async () => {
        const all = history.inner.readAfter('', 'c').messages
        return all.map(m => ({ id: m.id as string, data: m.data }))
      })
    })
  }
})

test('Redis adapter, two instances: the seam holds for random interleavings', async t => {
  if (!redisReady(t)) return
  t.comment(`SEED=${FIRST_SEED}${SEEDS.length > 1 ? ` (seeds ${FIRST_SEED}..${FIRST_SEED + SEEDS.length - 1})` : ''}`)
  const redis = redisClient(t)
  for (const seed of SEEDS) {
    await t.test(`seed ${seed}`, async t => {
      const prefix = uniquePrefix(t)
      const s = scenario(seed, 2)
      const nodes = []
      for (let i = 0; i < 2; i++) nodes.push(await node(t, s.connections, { adapter: redisAdapter({ url: redisUrl, channelPrefix: prefix }), batch: s.batch }))
      await run(t, seed, nodes, s.connections, s, async () => {
        const entries = await redis.xrange(prefix + 'stream', '-', '+')
        const out: { id: string, data: string }[] = []
        for (const [id, fields] of entries) {
          const body = JSON.parse(fields[1]) as PublishedMessage
          if (matchesTarget(body.to, 'c')) out.push({ id, data: body.data })
        }
        return out
      })
    })
  }
})
