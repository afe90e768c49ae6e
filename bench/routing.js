'use strict'

// Selective routing against routing 'all', side by side in one run. Two clusters on the same Redis (one prefix
// each), one per routing: 4 instances in child processes (each its own event loop) with disjoint audiences, CLIENTS
// streams each, every stream with its own identifier and following 1 of TOPICS topics of its instance's own, and a
// fifth process without streams that publishes MESSAGES messages spread over all audiences (half to an identifier,
// half to a topic, instance after instance), MESSAGES / 100 to everyone, and a fence to everyone last. Measured per
// instance, from before the first publish until every stream has its events: messages received from Redis
// (metrics().received) and the process's CPU (process.cpuUsage, user + system). Passes alternate the two clusters
// (ABBA), medians of PASSES; prints a markdown table with the ratios selective / all. Then skewed passes
// (MESSAGES / 3, every one to the first instance's identifiers) give what a message received for nobody costs.
// Two shared cores: the processes are not pinned (5 of them and Redis could not each have a core).
//
//   node bench/routing.js                           needs dist/ (build first: npm run build)
//   node bench/routing.js --out=bench/results/routing.md   also writes the "Selective routing" section there
//   env: MESSAGES (12000), CLIENTS (250), TOPICS (25), PASSES (3), WINDOW (64), REDIS_URL (default: a private
//   redis-server on a free port, without persistence, so that Redis's own CPU per pass is this bench's alone)

const { fork } = require('node:child_process')
const { randomBytes } = require('node:crypto')
const fs = require('node:fs')
const http = require('node:http')
const os = require('node:os')
const path = require('node:path')
const { startRedis } = require('./redis-server')

let REDIS_URL = process.env.REDIS_URL
const MESSAGES = Number(process.env.MESSAGES ?? 12000)
const CLIENTS = Number(process.env.CLIENTS ?? 250)
const TOPICS = Number(process.env.TOPICS ?? 25)
const PASSES = Number(process.env.PASSES ?? 3)
/** Publishes in flight at once in the publisher. */
const WINDOW = Number(process.env.WINDOW ?? 64)
const INSTANCES = 4
/** Messages in a skewed pass (every one to the first instance's audience), and in a warm-up pass. */
const SKEWED = Math.ceil(MESSAGES / 3)
const ROUTINGS = ['selective', 'all']

/**
 * Message `i`: to everyone one time in 100, else alternately to an identifier and to a topic, instance after
 * instance (counted over the others, so that each instance gets as many).
 */
function targetOf (i, skewed = false) {
  // The skewed passes: every message to one of the first instance's identifiers.
  if (skewed) return `i0-${i % CLIENTS}`
  if (i % 100 === 99) return undefined
  const j = i - Math.floor(i / 100)
  const instance = j % INSTANCES
  const n = Math.floor(j / (2 * INSTANCES))
  return Math.floor(j / INSTANCES) % 2 === 0 ? `i${instance}-${n % CLIENTS}` : { topic: `t${instance}-${n % TOPICS}` }
}

// ---- child: one instance, driven over IPC ----

async function instance () {
  const Fastify = require('fastify')
  const eventSources = require('../dist/index.js')
  const redisAdapter = require('../dist/adapters/redis.js')
  const app = Fastify()
  await app.register(eventSources, {
    adapter: redisAdapter({ url: REDIS_URL, channelPrefix: process.env.CHANNEL_PREFIX, routing: process.env.ROUTING }),
    maxBufferedBytes: 64 * 1024 * 1024
  })
  app.get('/events/:id', async request => {
    const sse = request.getEventSource(request.params.id, { topics: request.query.topic })
    sse.flush()
    await sse.keepAlive()
    return sse.close()
  })
  await app.listen({ port: 0, host: '127.0.0.1' })
  const commands = {
    sample: async ({ collect }) => {
      // Every pass starts from a collected heap: the garbage of the previous one is not charged to it.
      if (collect === true) {
        global.gc()
        await new Promise(resolve => setTimeout(resolve, 100))
      }
      const { received, delivered, published, openStreams } = app.eventSources.metrics()
      const { user, system } = process.cpuUsage()
      return { received, delivered, published, openStreams, cpu: (user + system) / 1000 }
    },
    publish: async ({ from, count, fence, skewed }) => {
      let next = from
      const end = from + count
      const worker = async () => {
        while (next < end) {
          const i = next++
          const to = targetOf(i, skewed)
          await app.eventSources.publish(`m${i} ${'x'.repeat(64)}`, to === undefined ? undefined : { to })
        }
      }
      await Promise.all(Array.from({ length: WINDOW }, worker))
      await app.eventSources.publish(fence)
    }
  }
  process.on('message', ({ n, command, args }) => {
    Promise.resolve()
      .then(() => commands[command](args))
      .then(result => process.send({ n, result: result ?? null }), err => process.send({ n, error: err.message }))
  })
  process.on('disconnect', () => { app.close().then(() => process.exit(0)) })
  process.send({ port: app.server.address().port })
}

// ---- parent ----

function spawnInstance (prefix, routing) {
  const child = fork(__filename, ['instance'], {
    env: { ...process.env, REDIS_URL, CHANNEL_PREFIX: prefix, ROUTING: routing },
    execArgv: ['--expose-gc'],
    stdio: ['ignore', 'inherit', 'inherit', 'ipc']
  })
  const pending = new Map()
  let n = 0
  const node = {
    child,
    port: 0,
    call (command, args = {}) {
      return new Promise((resolve, reject) => {
        pending.set(++n, { resolve, reject })
        child.send({ n, command, args })
      })
    }
  }
  const ready = new Promise((resolve, reject) => {
    child.on('message', message => {
      if (message.port !== undefined) {
        node.port = message.port
        resolve(node)
      }
      const waiter = pending.get(message.n)
      if (waiter === undefined) return
      pending.delete(message.n)
      if (message.error !== undefined) waiter.reject(new Error(message.error))
      else waiter.resolve(message.result)
    })
    child.once('exit', code => {
      reject(new Error(`an instance exited with ${code}`))
      for (const waiter of pending.values()) waiter.reject(new Error(`an instance exited with ${code}`))
    })
  })
  return ready
}

/** A stream held by this process: counts the events (frames with a data line) it gets. */
function open (port, id, topic, counter) {
  return new Promise((resolve, reject) => {
    const req = http.get({ host: '127.0.0.1', port, path: `/events/${id}?topic=${topic}` }, res => {
      res.setEncoding('utf8')
      let text = ''
      res.on('data', chunk => {
        text += chunk
        let end
        while ((end = text.indexOf('\n\n')) !== -1) {
          if (text.startsWith('data:') || text.lastIndexOf('\ndata:', end) !== -1) counter.events++
          text = text.slice(end + 2)
        }
      })
      resolve(req)
    })
    req.on('error', reject)
  })
}

const sleep = ms => new Promise(resolve => setTimeout(resolve, ms))

/** Redis's own CPU so far (ms, user + system), from INFO. */
async function redisCpu (redis) {
  const info = await redis.info('cpu')
  const field = name => Number(new RegExp(`^${name}:([\\d.]+)`, 'm').exec(info)?.[1] ?? NaN)
  return (field('used_cpu_user') + field('used_cpu_sys')) * 1000
}

async function until (check, ms, what) {
  const deadline = Date.now() + ms
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await sleep(5)
  }
}

async function cluster (routing) {
  const prefix = `fes-bench-routing:${process.pid}:${randomBytes(4).toString('hex')}:`
  const nodes = await Promise.all(Array.from({ length: INSTANCES + 1 }, () => spawnInstance(prefix, routing)))
  const publisher = nodes[INSTANCES]
  const counters = []
  const requests = []
  for (let k = 0; k < INSTANCES; k++) {
    const counter = { events: 0 }
    counters.push(counter)
    requests.push(...await Promise.all(Array.from({ length: CLIENTS }, (_, j) => open(nodes[k].port, `i${k}-${j}`, `t${k}-${j % TOPICS}`, counter))))
  }
  for (const node of nodes.slice(0, INSTANCES)) {
    const deadline = Date.now() + 30_000
    while ((await node.call('sample')).openStreams !== CLIENTS) {
      if (Date.now() > deadline) throw new Error('the streams did not open')
      await sleep(20)
    }
  }
  const { Redis } = require('ioredis')
  const redis = new Redis(REDIS_URL, { maxRetriesPerRequest: 1 })
  return { routing, prefix, redis, nodes, publisher, counters, requests, next: 0 }
}

/** Events each instance's streams get from messages [from, from + count) and the fence. */
function expectedEvents (from, count, skewed) {
  const events = new Array(INSTANCES).fill(1 * CLIENTS)
  for (let i = from; i < from + count; i++) {
    const to = targetOf(i, skewed)
    if (to === undefined) for (let k = 0; k < INSTANCES; k++) events[k] += CLIENTS
    else if (typeof to === 'string') events[Number(to.slice(1, to.indexOf('-')))] += 1
    else events[Number(to.topic.slice(1, to.topic.indexOf('-')))] += CLIENTS / TOPICS
  }
  return events
}

/** One pass: `count` messages and the fence; returns each process's received and CPU over the pass (the publisher last). */
async function pass (c, count, skewed = false) {
  const from = c.next
  c.next += count
  const expected = expectedEvents(from, count, skewed)
  const start = c.counters.map(counter => counter.events)
  const before = await Promise.all(c.nodes.map(node => node.call('sample', { collect: true })))
  const redisBefore = await redisCpu(c.redis)
  const t0 = performance.now()
  await c.publisher.call('publish', { from, count, fence: `fence ${from}`, skewed })
  await until(() => c.counters.every((counter, k) => counter.events - start[k] >= expected[k]), 120_000, `the ${c.routing} pass's events`)
  const wall = performance.now() - t0
  const redis = await redisCpu(c.redis) - redisBefore
  const after = await Promise.all(c.nodes.map(node => node.call('sample')))
  const got = c.counters.map((counter, k) => counter.events - start[k])
  if (got.some((n, k) => n !== expected[k])) throw new Error(`${c.routing}: events ${got} instead of ${expected}`)
  return {
    wall,
    redis,
    received: after.map((m, k) => m.received - before[k].received),
    delivered: after.map((m, k) => m.delivered - before[k].delivered),
    cpu: after.map((m, k) => m.cpu - before[k].cpu)
  }
}

async function stop (c) {
  for (const req of c.requests) req.destroy()
  await Promise.all(c.nodes.map(node => new Promise(resolve => {
    node.child.once('exit', resolve)
    node.child.disconnect()
    setTimeout(() => node.child.kill('SIGKILL'), 5000).unref()
  })))
  const redis = c.redis
  try {
    let cursor = '0'
    do {
      const [next, keys] = await redis.scan(cursor, 'MATCH', c.prefix + '*', 'COUNT', 1000)
      cursor = next
      if (keys.length > 0) await redis.del(...keys)
    } while (cursor !== '0')
  } finally {
    redis.disconnect()
  }
}

const median = values => {
  const sorted = values.slice().sort((a, b) => a - b)
  const mid = sorted.length >> 1
  return sorted.length % 2 === 1 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2
}
const fmt = n => Math.round(n).toLocaleString('en-US')
const ratio = (a, b) => (a / b).toFixed(2) + '×'

/** Medians over passes: of one process's figure, or (`sum`) of the sum over processes `from` to `to`. */
function medianOf (passes, key, from, to = from + 1) {
  return median(passes.map(p => p[key].slice(from, to).reduce((s, v) => s + v, 0)))
}

function spreadTable (sel, all) {
  const rows = [
    '| process | received, selective | received, all | ratio | CPU ms, selective | CPU ms, all | ratio |',
    '| --- | ---: | ---: | ---: | ---: | ---: | ---: |'
  ]
  const lines = [
    ...Array.from({ length: INSTANCES }, (_, k) => [`instance ${k + 1}`, k]),
    ['**the 4 instances**', 0, INSTANCES],
    ['publisher (no streams)', INSTANCES]
  ]
  for (const [name, from, to] of lines) {
    const [rs, ra, cs, ca] = [medianOf(sel, 'received', from, to), medianOf(all, 'received', from, to), medianOf(sel, 'cpu', from, to), medianOf(all, 'cpu', from, to)]
    const strong = to === INSTANCES ? '**' : ''
    rows.push(`| ${name} | ${fmt(rs)} | ${fmt(ra)} | ${strong}${ratio(rs, ra)}${strong} | ${fmt(cs)} | ${fmt(ca)} | ${strong}${ratio(cs, ca)}${strong} |`)
  }
  const [redisSel, redisAll] = [median(sel.map(p => p.redis)), median(all.map(p => p.redis))]
  rows.push(`| Redis (sends each message to its subscribers) | | | | ${fmt(redisSel)} | ${fmt(redisAll)} | ${ratio(redisSel, redisAll)} |`)
  return rows.join('\n')
}

function skewedTable (sel, all) {
  const rows = [
    '| process | received, selective | received, all | CPU ms, selective | CPU ms, all | ratio |',
    '| --- | ---: | ---: | ---: | ---: | ---: |'
  ]
  const others = (r, key) => medianOf(r, key, 1, INSTANCES) / (INSTANCES - 1)
  const lines = [
    ['instance 1 (its streams get every message)', r => medianOf(r, 'received', 0), r => medianOf(r, 'cpu', 0)],
    [`**instances 2–${INSTANCES}** (no stream concerned; each, on average)`, r => others(r, 'received'), r => others(r, 'cpu'), true],
    ['publisher (no streams)', r => medianOf(r, 'received', INSTANCES), r => medianOf(r, 'cpu', INSTANCES)],
    ['Redis', () => NaN, r => median(r.map(p => p.redis))]
  ]
  for (const [name, received, cpu, strong] of lines) {
    const [rs, ra, cs, ca] = [received(sel), received(all), cpu(sel), cpu(all)]
    const count = n => Number.isNaN(n) ? '' : fmt(n)
    const r = strong === true ? `**${ratio(cs, ca)}**` : ratio(cs, ca)
    rows.push(`| ${name} | ${count(rs)} | ${count(ra)} | ${fmt(cs)} | ${fmt(ca)} | ${r} |`)
  }
  // What a message received for no stream here costs an instance.
  const perDropped = (others(all, 'cpu') - others(sel, 'cpu')) * 1000 / (others(all, 'received') - others(sel, 'received'))
  return { rows: rows.join('\n'), perDropped }
}

async function main () {
  const out = process.argv.find(a => a.startsWith('--out='))?.slice(6)
  const started = Date.now()
  const server = REDIS_URL === undefined ? await startRedis() : undefined
  REDIS_URL ??= server.url
  const clusters = {}
  const spread = { selective: [], all: [] }
  const skewed = { selective: [], all: [] }
  try {
    for (const routing of ROUTINGS) clusters[routing] = await cluster(routing)
    // Warm-up (JIT, connections, the routes' first reads), not counted.
    for (const routing of ROUTINGS) {
      await pass(clusters[routing], SKEWED)
      await pass(clusters[routing], SKEWED, true)
    }
    for (let p = 0; p < PASSES; p++) {
      const order = p % 2 === 0 ? ROUTINGS : [...ROUTINGS].reverse()
      for (const routing of order) {
        const r = await pass(clusters[routing], MESSAGES)
        spread[routing].push(r)
        console.error(`pass ${p + 1} ${routing}: ${Math.round(r.wall)} ms, received ${r.received.join(' ')}, CPU ms ${r.cpu.map(Math.round).join(' ')}, Redis ${Math.round(r.redis)}`)
      }
      // Not counted: the first pass after a long one costs more, whichever cluster runs it.
      for (const routing of order) await pass(clusters[routing], Math.ceil(SKEWED / 4), true)
      for (const routing of order) {
        const r = await pass(clusters[routing], SKEWED, true)
        skewed[routing].push(r)
        console.error(`pass ${p + 1} ${routing}, skewed: ${Math.round(r.wall)} ms, received ${r.received.join(' ')}, CPU ms ${r.cpu.map(Math.round).join(' ')}, Redis ${Math.round(r.redis)}`)
      }
    }
  } finally {
    for (const routing of ROUTINGS) if (clusters[routing] !== undefined) await stop(clusters[routing])
    server?.child.kill('SIGKILL')
  }
  const rows = spreadTable(spread.selective, spread.all)
  const cpuRatio = ratio(medianOf(spread.selective, 'cpu', 0, INSTANCES), medianOf(spread.all, 'cpu', 0, INSTANCES))
  const skew = skewedTable(skewed.selective, skewed.all)
  const delivered = median(spread.selective.concat(spread.all).map(p => p.delivered.reduce((s, v) => s + v, 0)))
  const wall = ROUTINGS.map(routing => median(spread[routing].map(p => p.wall)))
  const everyone = Array.from({ length: MESSAGES }, (_, i) => i).filter(i => targetOf(i) === undefined).length
  const date = new Date().toISOString().slice(0, 16).replace('T', ' ')
  const command = 'node bench/routing.js' + (process.argv.length > 2 ? ' ' + process.argv.slice(2).join(' ') : '')
  const redisNote = server === undefined ? `the Redis at ${REDIS_URL} (its CPU column counts whatever else it served meanwhile)` : 'a private redis-server without persistence'
  const section = `## Selective routing

Generated by \`${command}\` on ${date} UTC (node ${process.version}, ${os.cpus().length} cores; MESSAGES=${MESSAGES} CLIENTS=${CLIENTS} TOPICS=${TOPICS} PASSES=${PASSES} WINDOW=${WINDOW}), in ${Math.round((Date.now() - started) / 1000)} s.

${INSTANCES} instances in their own processes with disjoint audiences: ${fmt(CLIENTS)} streams each, every stream with an identifier of its own and following 1 of ${TOPICS} topics of its instance's own. A fifth process, without streams, publishes ${fmt(MESSAGES)} messages a pass (${WINDOW} in flight): ${fmt(everyone)} to everyone, the others alternately to an identifier and to a topic, evenly over the ${INSTANCES} audiences, then a fence to everyone. One cluster per routing on ${redisNote}, passes alternated (ABBA) after a warm-up pass; medians of ${PASSES} passes. Received is \`metrics().received\`; CPU is each process's user + system time from before the first publish until every stream has all its events (checked: ${fmt(delivered)} events a pass with either routing).

${rows}

With \`'all'\` each instance receives every message and drops those for no stream of its own; with \`'selective'\` (the default) it receives its own audience's and everyone's only: a quarter of the messages here, plus everyone's. The CPU an instance spends is mostly the events it writes (about ${fmt(delivered / MESSAGES)} per message, the same with either routing), and the messages it drops arrive in the same reads from Redis as its own, so dropping them costs little next to that: the 4 instances spent ${cpuRatio} the CPU with selective routing, against the noise of 2 shared cores (passes of ${fmt(wall[0] / 1000)} s with selective routing and ${fmt(wall[1] / 1000)} s with \`'all'\`, first publish to last event).

What a message for nobody costs an instance that has nothing else to do: ${fmt(SKEWED)} messages a pass, every one to one of instance 1's identifiers, then the fence (same clusters, measured passes alternated with the ones above, each pair after an uncounted short one).

${skew.rows}

Such a message cost an otherwise idle instance about **${skew.perDropped.toFixed(1)} µs** of CPU (instances 2–${INSTANCES}, all minus selective, over the messages not received): each arrives alone, so each is a wakeup and a read besides the parse. With \`'all'\`, every instance whose streams get none of the traffic pays that for every message. Instance 1 does the same work with either routing, the publisher nearly so: their columns differ by the machine's noise.
`
  console.log(section)
  if (out !== undefined) fs.writeFileSync(path.resolve(out), section)
}

if (process.argv[2] === 'instance') {
  instance().catch(err => {
    console.error(err)
    process.exit(1)
  })
} else {
  main().catch(err => {
    console.error(err)
    process.exitCode = 1
  })
}
