'use strict'

// Runs every contender side by side: for each N, each server in turn on one core and the load client on the
// other, then writes bench/results/*.json and regenerates BENCHMARKS.md and the chart.
//
//   node bench/run.js            short run (N = 1,000 and 5,000), under two minutes
//   node bench/run.js --full     N = 1,000, 5,000 and 10,000, more rounds, longer sustained runs
//   options: --only=plain,plugin  --n=1000,5000  --no-report  --before=<dist dir of another build>

const { execFileSync } = require('node:child_process')
const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')
const { pinning, pinned } = require('./processes')
const { writeReport } = require('./report')

const args = process.argv.slice(2)
const flag = name => args.find(a => a === `--${name}` || a.startsWith(`--${name}=`))
const value = name => flag(name)?.split('=')[1]
const full = flag('full') !== undefined

const CONTENDERS = [
  { id: 'plain', file: 'plain-node.js', label: 'node:http (the limit)', pings: true, about: 'plain `node:http`: each broadcast writes one pre-built Buffer to every open response' },
  { id: 'plugin', file: 'plugin.js', env: { VARIANT: 'broadcast' }, label: 'fastify-event-sources, broadcast()', pings: true, about: 'this plugin: identified sources, `fastify.eventSources.broadcast(data)`' },
  { id: 'plugin-publish', file: 'plugin.js', env: { VARIANT: 'publish' }, label: 'fastify-event-sources, publish()', about: '`fastify.eventSources.publish(data)` with the in-memory history on (every event gets an id and is stored)' },
  { id: 'plugin-batch', file: 'plugin.js', env: { VARIANT: 'batch' }, label: 'fastify-event-sources, batch: true', about: '`broadcast()` with `batch: true`: one write per socket per tick' },
  { id: 'plugin-await', file: 'plugin.js', env: { VARIANT: 'await' }, label: 'fastify-event-sources, keepAlive()', memoryOnly: true, about: 'as `broadcast()`, with a handler that returns `sse.keepAlive()` (memory only)' },
  { id: 'fastify-sse', file: 'fastify-sse.js', label: '@fastify/sse', pings: true, about: 'a `{ sse: true }` route, `reply.sse.keepAlive()`, a broadcast calls `reply.sse.send(string)` on every reply' },
  { id: 'better-sse', file: 'better-sse.js', label: 'better-sse', pings: true, about: '`reply.hijack()`, `createSession(request.raw, reply.raw)`, every session in one `createChannel()`, `channel.broadcast(data)`' },
  { id: 'fastify-sse-v2', file: 'fastify-sse-v2.js', label: 'fastify-sse-v2', about: 'a broadcast calls `reply.sse({ data })` on every reply' }
]

const plan = full
  ? { mode: 'full', ns: [1000, 5000, 10000], rounds: 15, healthRounds: 3, blastMs: 4000, bursts: [1, 10], pingNs: [1000, 10000], pingMs: 1000, windowMs: 5000, settleMs: 1000, sustainedNs: [1000, 5000, 10000] }
  : { mode: 'short', ns: [1000, 5000], rounds: 5, healthRounds: 2, blastMs: 800, bursts: [1, 10], pingNs: [5000], pingMs: 1000, windowMs: 2000, settleMs: 500, sustainedNs: [5000] }
if (value('n') !== undefined) plan.ns = plan.pingNs = plan.sustainedNs = value('n').split(',').map(Number)
if (value('before') !== undefined) {
  const dist = path.resolve(value('before'), 'index.js')
  CONTENDERS.push(
    { id: 'before', file: 'plugin.js', env: { VARIANT: 'broadcast', PLUGIN_DIST: dist }, label: 'before, broadcast()', largestOnly: true },
    { id: 'before-batch', file: 'plugin.js', env: { VARIANT: 'batch', PLUGIN_DIST: dist }, label: 'before, batch: true', largestOnly: true },
    { id: 'before-await', file: 'plugin.js', env: { VARIANT: 'await', PLUGIN_DIST: dist }, label: 'before, keepAlive()', memoryOnly: true, largestOnly: true }
  )
}
const only = value('only')?.split(',')
const contenders = only ? CONTENDERS.filter(c => only.includes(c.id)) : CONTENDERS
const defaultPlan = plan

const cores = os.cpus().length
// Both keep stdin as a pipe: the load client is told to stop over it.
const pinnedWithStdin = (core, nodeArgs, env) => pinned(core, nodeArgs, env, 'pipe')

function firstLine (child, match) {
  return new Promise((resolve, reject) => {
    let buf = ''
    const onData = chunk => {
      buf += chunk
      let nl
      while ((nl = buf.indexOf('\n')) !== -1) {
        const line = buf.slice(0, nl)
        buf = buf.slice(nl + 1)
        if (match(line)) {
          child.stdout.off('data', onData)
          resolve(line)
          return
        }
      }
    }
    child.stdout.setEncoding('utf8')
    child.stdout.on('data', onData)
    child.once('exit', code => reject(new Error(`exited with ${code} before answering`)))
  })
}

async function runOne (contender, n, mode, plan = defaultPlan) {
  // plan.timeline: when the server's writes and the client's arrivals happen, and the client's CPU (speed.js --timeline)
  const env = { ...contender.env, PING_MS: mode === 'ping' ? String(plan.pingMs) : '0', ...(plan.timeline ? { TIMELINE: '1' } : {}) }
  // plan.dump (a folder): every write's and every arrival's time, per broadcast, for a closer look
  const dump = plan.dump ? path.join(plan.dump, `${contender.id}-${n}`) : undefined
  if (dump) env.TIMELINE_DUMP = dump + '-server.jsonl'
  const server = pinnedWithStdin(0, ['--expose-gc', path.join(__dirname, 'servers', contender.file)], env)
  const serverExit = new Promise(resolve => server.once('exit', resolve))
  try {
    const port = Number((await firstLine(server, l => l.startsWith('listening '))).split(' ')[1])
    const cfg = { port, n, mode, pingMs: plan.pingMs, windowMs: plan.windowMs, rounds: plan.rounds, healthRounds: plan.sustainedNs.includes(n) ? plan.healthRounds : 0, blastMs: plan.blastMs, bursts: plan.sustainedNs.includes(n) ? plan.bursts : [], settleMs: plan.settleMs, probeCore: pinning ? 0 : undefined, timeline: plan.timeline === true, dump: dump && dump + '-client.jsonl' }
    const client = pinnedWithStdin(1, [path.join(__dirname, 'load-client.js'), JSON.stringify(cfg)], {})
    const clientExit = new Promise(resolve => client.once('exit', resolve))
    let result
    try {
      result = JSON.parse(await firstLine(client, l => l.startsWith('{')))
    } finally {
      server.kill('SIGKILL')
      await serverExit
      client.stdin.end()
      setTimeout(() => client.kill('SIGKILL'), 3000).unref()
      await clientExit
    }
    return result
  } finally {
    server.kill('SIGKILL')
  }
}

function versions () {
  const v = name => JSON.parse(fs.readFileSync(path.join(__dirname, '..', 'node_modules', name, 'package.json'), 'utf8')).version
  let commit = ''
  try {
    commit = execFileSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: path.join(__dirname, '..') }).toString().trim()
  } catch {}
  return {
    node: process.version,
    'fastify-event-sources': `${require('../package.json').version} (${commit})`,
    fastify: v('fastify'),
    '@fastify/sse': v('@fastify/sse'),
    'better-sse': v('better-sse'),
    'fastify-sse-v2': v('fastify-sse-v2')
  }
}

function machine () {
  return {
    cpu: os.cpus()[0].model.trim(),
    cores,
    memoryGB: Math.round(os.totalmem() / 2 ** 30),
    os: `${os.type()} ${os.release()}`,
    pinned: pinning ? 'server on CPU 0, load client on CPU 1 (taskset)' : 'not pinned'
  }
}

async function main () {
  const started = Date.now()
  const results = { mode: plan.mode, plan, date: new Date().toISOString(), machine: machine(), versions: versions(), contenders: contenders.map(({ id, label, about }) => ({ id, label, about })), runs: [] }
  for (const n of plan.ns) {
    for (const contender of contenders) {
      if (contender.largestOnly && n !== plan.ns[plan.ns.length - 1]) continue
      const t0 = Date.now()
      const r = await runOne(contender, n, contender.memoryOnly ? 'memory' : 'main')
      results.runs.push({ contender: contender.id, ...r })
      const f = r.fanout
      const summary = f ? `p99 ${f.p99ms} ms, ${r.sustained.map(s => `${s.deliveredPerSec}/s `).join('')}` : ''
      console.log(`${String(n).padStart(6)} ${contender.id.padEnd(15)} ${r.error ?? `${summary}${r.memory.heapPerConn} B heap/conn, ${r.memory.rssPerConn} B RSS/conn, ${r.connect.perSec} conn/s`} (${((Date.now() - t0) / 1000).toFixed(1)} s)`)
    }
  }
  for (const n of plan.pingNs) {
    for (const contender of contenders.filter(c => c.pings)) {
      const r = await runOne(contender, n, 'ping')
      results.runs.push({ contender: contender.id, ...r })
      console.log(`${String(n).padStart(6)} ${contender.id.padEnd(15)} ${r.error ?? `ping round ${r.ping.cpuMsPerRound} ms cpu, ${r.ping.timers} timers, loop max ${r.ping.loopMaxMs} ms`}`)
    }
  }
  results.elapsedSec = Math.round((Date.now() - started) / 1000)
  const dir = path.join(__dirname, 'results')
  fs.mkdirSync(dir, { recursive: true })
  const file = path.join(dir, `${plan.mode}.json`)
  fs.writeFileSync(file, JSON.stringify(results, null, 2) + '\n')
  console.log(`results: ${path.relative(process.cwd(), file)} (${results.elapsedSec} s)`)
  if (flag('no-report') === undefined && only === undefined && value('n') === undefined) {
    writeReport(results)
    console.log('wrote BENCHMARKS.md and bench/results/chart.svg')
  }
}

if (require.main === module) {
  main().catch(err => {
    console.error(err)
    process.exit(1)
  })
}

module.exports = { runOne, versions, machine, CONTENDERS }
