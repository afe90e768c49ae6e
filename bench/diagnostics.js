'use strict'

// What a diagnostics subscriber costs a broadcast: one server holds N identified streams (raw TCP clients in
// this process read and discard), and times rounds of one broadcast to all of them, alternating between no
// subscriber and a subscriber on every channel (an OpenTelemetry-style one: a start time per open stream, a
// duration and a count per close reason, counters for publish, replay and drop). With --before=<dist dir of
// another build>, a third variant times that build, with no subscriber: being another process, it runs in
// blocks alternating with this build's, so that the machine's load changes weigh on both alike. The figure is the server's CPU time for
// the round (user + system), which other processes on a shared machine disturb far less than the wall clock.
//
//   node bench/diagnostics.js [--n=10000] [--rounds=40] [--before=<dir>] [--blocks=4]

const { spawn } = require('node:child_process')
const net = require('node:net')
const path = require('node:path')
const fs = require('node:fs')

const args = process.argv.slice(2)
const value = (name, fallback) => args.find(a => a.startsWith(`--${name}=`))?.split('=')[1] ?? fallback

if (process.env.BENCH_SERVER === '1') server()
else main()

function server () {
  const diagnostics = require('node:diagnostics_channel')
  const { performance } = require('node:perf_hooks')
  const Fastify = require('fastify')
  const eventSources = require(process.env.PLUGIN_DIST || '../dist/index.js')
  const app = Fastify({ logger: false })
  // One slice for the whole fan-out: every write happens inside the timed call rather than on later ticks.
  app.register(eventSources, { history: false, fanOutSlice: 1_000_000 })

  const started = new WeakMap()
  const durations = []
  const counts = { closes: {}, published: 0, replays: 0, drops: 0 }
  const subscriber = {
    'fastify-event-sources:open': ({ source }) => { started.set(source, performance.now()) },
    'fastify-event-sources:close': ({ source, reason }) => {
      durations.push(performance.now() - (started.get(source) ?? 0))
      counts.closes[reason] = (counts.closes[reason] ?? 0) + 1
    },
    'fastify-event-sources:publish': () => { counts.published++ },
    'fastify-event-sources:replay': () => { counts.replays++ },
    'fastify-event-sources:drop': () => { counts.drops++ }
  }
  let subscribed = false
  function subscribe (on) {
    if (on === subscribed) return
    for (const [name, fn] of Object.entries(subscriber)) {
      if (on) diagnostics.subscribe(name, fn)
      else diagnostics.unsubscribe(name, fn)
    }
    subscribed = on
  }
  // Streams open with the subscriber on, so that it holds a start time for each, as it would in production.
  subscribe(true)

  let n = 0
  app.get('/sse', request => {
    const sse = request.getEventSource('c' + (++n))
    sse.flush()
  })
  app.get('/round', async request => {
    subscribe(request.query.subscribed === '1')
    const payload = { s: n, text: 'x'.repeat(64) }
    const start = performance.now()
    const cpu = process.cpuUsage()
    const reached = app.eventSources.broadcast(payload)
    // Node hands a response's writes to the socket at the end of the tick: the round includes that.
    await new Promise(resolve => setImmediate(resolve))
    const used = process.cpuUsage(cpu)
    return { ms: performance.now() - start, cpuMs: (used.user + used.system) / 1000, reached, subscribed }
  })
  app.listen({ port: 0, host: '127.0.0.1' }).then(() => {
    process.send({ port: app.server.address().port })
  })
}

function startServer (dist) {
  const env = { ...process.env, BENCH_SERVER: '1' }
  if (dist !== undefined) env.PLUGIN_DIST = path.resolve(dist, 'index.js')
  const child = spawn(process.execPath, [__filename], { env, stdio: ['ignore', 'inherit', 'inherit', 'ipc'] })
  return new Promise((resolve, reject) => {
    child.once('message', ({ port }) => resolve({ child, port }))
    child.once('exit', code => reject(new Error(`server exited with ${code}`)))
  })
}

async function connect (port, n) {
  const sockets = []
  let next = 0
  async function worker () {
    while (next < n) {
      next++
      await new Promise((resolve, reject) => {
        const socket = net.connect(port, '127.0.0.1')
        socket.on('error', reject)
        socket.once('data', () => resolve())
        socket.on('data', () => {})
        socket.write('GET /sse HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n')
        sockets.push(socket)
      })
    }
  }
  await Promise.all(Array.from({ length: 250 }, worker))
  return sockets
}

async function round (port, subscribed) {
  const res = await fetch(`http://127.0.0.1:${port}/round?subscribed=${subscribed ? 1 : 0}`)
  return res.json()
}

const median = xs => {
  const s = [...xs].sort((a, b) => a - b)
  return s.length % 2 === 1 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2
}
const sleep = ms => new Promise(resolve => setTimeout(resolve, ms))

async function measure (dist, n, rounds, variants) {
  const { child, port } = await startServer(dist)
  const sockets = await connect(port, n)
  const times = Object.fromEntries(variants.map(v => [v, []]))
  try {
    // Warm-up: the JIT sees both paths before anything is timed.
    for (let i = 0; i < 4; i++) for (const v of variants) await round(port, v === 'subscribed')
    for (let i = 0; i < rounds; i++) {
      // Alternate which variant goes first, so neither always follows the other.
      const order = i % 2 === 0 ? variants : [...variants].reverse()
      for (const v of order) {
        const r = await round(port, v === 'subscribed')
        if (r.reached !== n) throw new Error(`a broadcast reached ${r.reached} of ${n}`)
        times[v].push(r.cpuMs)
        await sleep(50)
      }
    }
  } finally {
    for (const socket of sockets) socket.destroy()
    child.kill()
  }
  return times
}

async function main () {
  const n = Number(value('n', 10_000))
  const rounds = Number(value('rounds', 40))
  const before = value('before')
  const times = { none: [], subscribed: [] }
  if (before !== undefined) times.before = []
  const blocks = before === undefined ? 1 : Number(value('blocks', 4))
  for (let b = 0; b < blocks; b++) {
    const block = await measure(undefined, n, Math.ceil(rounds / blocks), ['none', 'subscribed'])
    times.none.push(...block.none)
    times.subscribed.push(...block.subscribed)
    if (before !== undefined) times.before.push(...(await measure(before, n, Math.ceil(rounds / blocks), ['none'])).none)
  }
  const result = { n, rounds, node: process.version, median: {}, p90: {} }
  for (const [v, xs] of Object.entries(times)) {
    result.median[v] = median(xs)
    result.p90[v] = [...xs].sort((a, b) => a - b)[Math.floor(xs.length * 0.9)]
  }
  result.ratio = result.median.subscribed / result.median.none
  if (before !== undefined) result.ratioToBefore = result.median.none / result.median.before
  fs.mkdirSync(path.join(__dirname, 'results'), { recursive: true })
  fs.writeFileSync(path.join(__dirname, 'results', 'diagnostics.json'), JSON.stringify({ ...result, times }, null, 2))
  const f = x => x.toFixed(2)
  console.log(`| broadcast to ${n.toLocaleString('en')}, median of ${rounds} (ms) | ${f(result.median.none)} | ${f(result.median.subscribed)} | ${result.ratio.toFixed(3)}× |` +
    (before !== undefined ? ` before: ${f(result.median.before)} ms (${result.ratioToBefore.toFixed(3)}×) |` : ''))
}
