'use strict'

// Turns one results file into BENCHMARKS.md and bench/results/chart.svg. Everything quoted there comes from
// that one run; the prose of what was found lives in bench/findings.md and is included as written.
//
//   node bench/report.js [bench/results/full.json]

const fs = require('node:fs')
const path = require('node:path')
const { chart } = require('./chart')

const ROOT = path.join(__dirname, '..')
const PLAIN = 'plain'
const PLUGIN = 'plugin'
const PEERS = ['fastify-sse', 'better-sse', 'fastify-sse-v2']

const num = n => n.toLocaleString('en-US')
function fmt (v, digits = 1) {
  if (v === undefined || v === null || Number.isNaN(v)) return 'n/a'
  if (Math.abs(v) >= 1000) return num(Math.round(v))
  return String(Math.round(v * 10 ** digits) / 10 ** digits)
}
const kb = bytes => bytes === undefined ? undefined : bytes / 1024

function makeLookup (results) {
  const runs = results.runs.filter(r => r.error === undefined)
  return (id, n, mode = 'main') => runs.find(r => r.contender === id && r.n === n && (r.mode === mode || (mode === 'main' && r.mode === 'memory')))
}

function table (header, rows) {
  const line = cells => `| ${cells.join(' | ')} |`
  return [line(header), line(header.map((_, i) => i === 0 ? '---' : '---:')), ...rows.map(line)].join('\n')
}

function writeReport (results) {
  const get = makeLookup(results)
  const ns = results.plan.ns
  const big = ns[ns.length - 1]
  const labels = Object.fromEntries(results.contenders.map(c => [c.id, c.label]))
  const all = results.contenders.map(c => c.id).filter(id => !id.startsWith('before'))
  const ids = all.filter(id => ns.some(n => get(id, n)?.fanout))
  const name = id => id === PLUGIN || id.startsWith('plugin-') ? `**${labels[id]}**` : labels[id]

  // value (ratio to plain at the same N and mode)
  function cell (id, n, pick, { digits = 1, mode = 'main', unit = '' } = {}) {
    const r = get(id, n, mode)
    const base = get(PLAIN, n, mode)
    const v = r ? pick(r) : undefined
    if (v === undefined || v === null) return 'n/a'
    const b = base ? pick(base) : undefined
    const ratio = b ? ` (${(v / b).toFixed(2)}×)` : ''
    return `${fmt(v, digits)}${unit}${id === PLAIN ? '' : ratio}`
  }
  const ratio = (id, n, pick, mode = 'main') => {
    const r = get(id, n, mode)
    const b = get(PLAIN, n, mode)
    return r && b ? pick(r) / pick(b) : undefined
  }
  const perN = (pick, opts, cols = ns) => ids.map(id => [name(id), ...cols.map(n => cell(id, n, pick, opts))])
  const sns = results.plan.sustainedNs ?? ns
  const perAll = (pick, opts) => all.map(id => [name(id), ...ns.map(n => cell(id, n, pick, opts))])
  const nHeader = (first, cols = ns) => [first, ...cols.map(n => `N = ${num(n)}`)]

  const p99 = r => r.fanout.p99ms
  const burst = k => r => r.sustained.find(s => s.burst === k)?.deliveredPerSec
  const burstCpu = k => r => r.sustained.find(s => s.burst === k)?.deliveredPerCpuSec
  const heap = r => r.memory.heapPerConn
  const rss = r => r.memory.rssPerConn

  // Targets, from the largest N of this run.
  const targets = []
  const mark = ok => ok === undefined ? '–' : ok ? 'met' : '**not met**'
  {
    const r = ratio(PLUGIN, big, p99)
    const behind = PEERS.filter(id => get(id, big) && get(PLUGIN, big) && p99(get(id, big)) <= p99(get(PLUGIN, big)))
    const ahead = behind.length === 0
    targets.push([`broadcast to ${num(big)}: p99 within 1.15× of plain Node, ahead of every peer`, r === undefined ? 'n/a' : `${r.toFixed(2)}×; ${ahead ? 'ahead of every peer' : `behind ${behind.map(id => labels[id]).join(', ')}`}`, mark(r === undefined ? undefined : r <= 1.15 && ahead)])
    const s = ratio(PLUGIN, big, burst(1))
    const sBehind = PEERS.filter(id => get(id, big) && get(PLUGIN, big) && burst(1)(get(id, big)) >= burst(1)(get(PLUGIN, big)))
    const sAhead = sBehind.length === 0
    targets.push([`sustained delivery at ${num(big)} (one event per tick): at least 0.9× plain Node, ahead of every peer`, s === undefined ? 'n/a' : `${s.toFixed(2)}×; ${sAhead ? 'ahead of every peer' : `behind ${sBehind.map(id => labels[id]).join(', ')}`}`, mark(s === undefined ? undefined : s >= 0.9 && sAhead)])
    const batchBest = Math.max(...['plugin-batch', PLUGIN].flatMap(id => ns.map(n => (get(id, n) && burst(10)(get(id, n))) ?? 0)))
    targets.push(['a batching mode reaches 150k deliveries/s', `${num(batchBest)}/s (10 events per tick)`, mark(batchBest >= 150000)])
    const h = ratio(PLUGIN, big, heap)
    const m = ratio(PLUGIN, big, rss)
    targets.push([`memory per idle connection at ${num(big)} within 1.25× of plain Node`, h === undefined ? 'n/a' : `heap ${h.toFixed(2)}×, RSS ${m.toFixed(2)}×`, mark(h === undefined ? undefined : h <= 1.25 && m <= 1.25)])
    const slice = 50
    const blocks = ['plugin', 'plugin-publish', 'plugin-batch'].flatMap(id => ns.map(n => get(id, n)?.fanout.loopMaxCpuMs)).filter(x => x !== undefined)
    const worst = Math.max(...blocks)
    const over = worst > slice ? `, ${Math.round((worst / slice - 1) * 100)}% over` : ''
    targets.push([`no broadcast blocks the loop longer than fanOutSlice (${slice} ms)`, `longest block ${fmt(worst)} ms of CPU${over} (median of rounds, worst N and mode; plain Node: ${fmt(get(PLAIN, big)?.fanout.loopMaxCpuMs)} ms)`, worst <= slice ? 'met' : worst <= slice * 1.1 ? 'within 10%' : '**not met**'])
    const pingN = results.plan.pingNs[results.plan.pingNs.length - 1]
    const pp = get(PLUGIN, pingN, 'ping')
    const pl = get(PLAIN, pingN, 'ping')
    targets.push([`pings at ${num(pingN)} use one shared timer and one shared buffer`, pp && pl ? `${pp.ping.timers} repeating timer for ${num(pingN)} streams (plain Node: ${pl.ping.timers}); one frame built per group` : 'n/a', mark(pp ? pp.ping.timers === 1 : undefined)])
  }

  const m = results.machine
  const v = results.versions
  const out = []
  out.push('# Benchmarks')
  out.push('')
  const flags = [results.mode === 'full' ? '--full' : '', get('before', big) ? '--before=<build>' : ''].filter(Boolean).join(' ')
  out.push(`Generated by \`npm run bench${flags ? ' -- ' + flags : ''}\` on ${results.date.slice(0, 16).replace('T', ' ')} UTC (${results.elapsedSec} s). Every figure below comes from that one run; ratios are to plain Node at the same N, measured in the same run.`)
  out.push('')
  out.push('![Broadcast p99, sustained delivery and memory per connection, every contender](bench/results/chart.svg)')
  out.push('')
  out.push('## Targets')
  out.push('')
  out.push(table(['target', 'this run', ''], targets))
  out.push('')
  out.push('## Setup')
  out.push('')
  out.push(`- Machine: ${m.cpu}, ${m.cores} cores, ${m.memoryGB} GB, ${m.os}; ${m.pinned}. The machine was shared with other work while this ran, so absolute figures move by ±30% between runs; compare rows within a column.`)
  out.push(`- Versions: ${Object.entries(v).map(([k, x]) => `${k} ${x}`).join(', ')}.`)
  out.push(`- Plan (${results.mode}): N = ${ns.map(num).join(', ')}; ${results.plan.rounds} single broadcasts per N (median reported); ${results.plan.healthRounds} more with a /health probe; sustained runs of ${results.plan.blastMs / 1000} s at ${results.plan.bursts.join(' and ')} event(s) per tick; pings every ${results.plan.pingMs} ms watched for ${results.plan.windowMs / 1000} s at N = ${results.plan.pingNs.map(num).join(', ')}.`)
  out.push('- Commands: `npm run bench` (short: N = 1,000 and 5,000, under two minutes), `npm run bench -- --full` (N = 1,000, 5,000 and 10,000). `node bench/run.js --only=plain,plugin --n=2000` runs a subset without touching this file; `node bench/report.js bench/results/full.json` rewrites it from a results file.')
  out.push('- Contenders, each in its own process started the same way (`bench/servers/*.js`), with the same control endpoints (`/sse`, `/stats`, `/broadcast`, `/loop`, `/blast`, `/ping-round`, `/health`):')
  const about = Object.fromEntries(results.contenders.map(c => [c.id, c.about]))
  for (const id of all) out.push(`  - ${labels[id]}${about[id] ? `: ${about[id]}` : ''}`)
  out.push('- The load client (`bench/load-client.js`) holds N raw TCP connections in one process, with no SSE library. Each event carries the server\'s `process.hrtime.bigint()`; delivery time is read against the same clock when the bytes arrive. A 60-byte JSON event. Sustained runs apply the same backpressure to everyone: after each tick the server waits for every response that asked for `drain`.')
  out.push('- Loop blocks are measured inside the server by a 1 ms timer: the longest gap between its runs (wall) and the CPU the process used in that gap (CPU), which other processes on the core cannot inflate.')
  out.push('')

  out.push('## 1. One broadcast to N clients')
  out.push('')
  out.push('Delivery time to the last 1% of clients (p99, ms; lower is better):')
  out.push('')
  out.push(table(nHeader('contender'), perN(p99, { digits: 1 })))
  out.push('')
  out.push(`At N = ${num(big)}, in detail (ms; server CPU is for the whole fan-out):`)
  out.push('')
  out.push(table(['contender', 'p50', 'p99', 'max', 'server CPU', 'longest loop block (wall)', 'longest loop block (CPU)'], ids.map(id => [
    name(id),
    cell(id, big, r => r.fanout.p50ms),
    cell(id, big, r => r.fanout.p99ms),
    cell(id, big, r => r.fanout.maxMs),
    cell(id, big, r => r.fanout.cpuMs),
    cell(id, big, r => r.fanout.loopMaxMs),
    cell(id, big, r => r.fanout.loopMaxCpuMs)
  ])))
  out.push('')
  out.push(`Other requests during a broadcast to ${num(big)}: \`GET /health\` every 2 ms over a kept-alive connection, from a small process on the server's core at a higher priority, so it times the server's loop and not the busy load client (ms):`)
  out.push('')
  out.push(table(['contender', 'probes', 'p50', 'p99', 'max', 'longest loop block (CPU)'], ids.map(id => {
    const r = get(id, big)
    if (!r?.health) return [name(id), 'n/a', 'n/a', 'n/a', 'n/a', 'n/a']
    return [name(id), String(r.health.probes), cell(id, big, x => x.health.p50ms), cell(id, big, x => x.health.p99ms), cell(id, big, x => x.health.maxMs), cell(id, big, x => x.health.loopMaxCpuMs)]
  })))
  out.push('')

  out.push('## 2. Sustained broadcast')
  out.push('')
  out.push('Events delivered per second (all clients together; higher is better), one event per tick:')
  out.push('')
  out.push(table(nHeader('contender', sns), perN(burst(1), { digits: 0 }, sns)))
  out.push('')
  out.push('Ten events per tick (what batching is for):')
  out.push('')
  out.push(table(nHeader('contender', sns), perN(burst(10), { digits: 0 }, sns)))
  out.push('')
  out.push(`At N = ${num(big)}, per second of server CPU (robust to the machine's other load) and the server's CPU use:`)
  out.push('')
  out.push(table(['contender', '1/tick per CPU-s', '1/tick CPU', '10/tick per CPU-s', '10/tick CPU', 'delivery p99, 1/tick (ms)'], ids.map(id => [
    name(id),
    cell(id, big, burstCpu(1), { digits: 0 }),
    cell(id, big, r => r.sustained.find(s => s.burst === 1)?.serverCpuPct, { digits: 0, unit: '%' }),
    cell(id, big, burstCpu(10), { digits: 0 }),
    cell(id, big, r => r.sustained.find(s => s.burst === 10)?.serverCpuPct, { digits: 0, unit: '%' }),
    cell(id, big, r => r.sustained.find(s => s.burst === 1)?.latP99ms)
  ])))
  out.push('')

  out.push('## 3. Memory per idle connection')
  out.push('')
  out.push('Heap used after GC, bytes per connection (the smallest N carries more fixed cost):')
  out.push('')
  out.push(table(nHeader('contender'), perAll(heap, { digits: 0 })))
  out.push('')
  out.push('Process RSS after GC, bytes per connection (the kernel holds about 5 KB more per socket, outside the process):')
  out.push('')
  out.push(table(nHeader('contender'), perAll(rss, { digits: 0 })))
  out.push('')

  out.push('## 4. Connection setup')
  out.push('')
  out.push('Connections opened per second, 250 at a time, each until its first event arrives (higher is better):')
  out.push('')
  out.push(table(nHeader('contender'), perN(r => r.connect.perSec, { digits: 0 })))
  out.push('')

  out.push('## 5. Pings')
  out.push('')
  out.push(`Each contender's own keep-alive (this plugin's shared ping timer, plain Node's single \`setInterval\` over all responses, @fastify/sse's heartbeat and better-sse's keep-alive, both a timer per connection; fastify-sse-v2 has none) every ${results.plan.pingMs} ms, watched for ${results.plan.windowMs / 1000} s with nothing else running. Repeating timers are counted by wrapping \`setInterval\` in the server.`)
  out.push('')
  const pingIds = ids.filter(id => results.plan.pingNs.some(n => get(id, n, 'ping')))
  for (const n of results.plan.pingNs) {
    out.push(table([`N = ${num(n)}`, 'CPU per round (ms)', 'µs per connection', 'repeating timers', 'longest loop block (CPU, ms, 10 ms resolution)'], pingIds.map(id => [
      name(id),
      cell(id, n, r => r.ping.cpuMsPerRound, { mode: 'ping' }),
      cell(id, n, r => r.ping.usPerConnPerRound, { mode: 'ping', digits: 2 }),
      get(id, n, 'ping') ? String(get(id, n, 'ping').ping.timers) : 'n/a',
      cell(id, n, r => r.ping.loopMaxCpuMs, { mode: 'ping' })
    ])))
    out.push('')
  }

  if (get('before', big)) {
    const pairs = [['plugin', 'before'], ['plugin-batch', 'before-batch'], ['plugin-await', 'before-await']]
    const metrics = [
      ['broadcast', 'delivery p50 (ms)', r => r.fanout?.p50ms],
      ['broadcast', 'delivery p99 (ms)', r => r.fanout?.p99ms],
      ['broadcast', 'longest loop block, CPU (ms)', r => r.fanout?.loopMaxCpuMs],
      ['broadcast', 'server CPU per broadcast (ms)', r => r.fanout?.cpuMs],
      ['broadcast', '/health during a broadcast, max (ms)', r => r.health?.maxMs],
      ['broadcast', 'sustained, 1 event per tick (/s)', burst(1)],
      ['broadcast', 'sustained, 10 events per tick (/s)', burst(10)],
      ['broadcast', 'heap per idle connection (B)', heap],
      ['batch', 'delivery p99 (ms)', r => r.fanout?.p99ms],
      ['batch', 'longest loop block, CPU (ms)', r => r.fanout?.loopMaxCpuMs],
      ['batch', 'sustained, 10 events per tick (/s)', burst(10)],
      ['keepAlive', 'heap per idle connection (B)', heap]
    ]
    const modeOf = { broadcast: 0, batch: 1, keepAlive: 2 }
    const base = get(PLAIN, big)
    const rowsBA = metrics.map(([mode, label, pick]) => {
      const [after, before] = pairs[modeOf[mode]].map(id => get(id, big))
      const a = after && pick(after)
      const b = before && pick(before)
      const p = base && pick(base)
      const vs = x => (x !== undefined && p ? ` (${(x / p).toFixed(2)}×)` : '')
      return [`${mode}: ${label}`, b === undefined ? 'n/a' : `${fmt(b)}${vs(b)}`, a === undefined ? 'n/a' : `${fmt(a)}${vs(a)}`, a !== undefined && b ? `${(a / b).toFixed(2)}×` : 'n/a']
    })
    out.push(`## Before and after the changes (same run, N = ${num(big)})`)
    out.push('')
    out.push('"Before" is the plugin built without the changes listed below; in brackets, the ratio to plain Node in this run.')
    out.push('')
    out.push(table(['measure', 'before', 'after', 'after / before'], rowsBA))
    out.push('')
  }

  // Written by bench/stalled-memory.js, bench/stream.js, bench/topics.js and bench/runs.js, runs of their own.
  for (const name of ['stalled-memory.md', 'stream.md', 'topics.md', 'runs.md']) {
    const file = path.join(__dirname, 'results', name)
    if (fs.existsSync(file)) {
      out.push(fs.readFileSync(file, 'utf8').trim())
      out.push('')
    }
  }

  // Written by bench/speed.js --write, a run of its own.
  const speed = path.join(__dirname, 'results', 'speed.md')
  if (fs.existsSync(speed)) {
    out.push(fs.readFileSync(speed, 'utf8').trim())
    out.push('')
  }

  const findings = path.join(__dirname, 'findings.md')
  if (fs.existsSync(findings)) {
    out.push(fs.readFileSync(findings, 'utf8').trim())
    out.push('')
  }
  fs.writeFileSync(path.join(ROOT, 'BENCHMARKS.md'), out.join('\n'))

  // The chart: the largest N, absolute figures.
  const svg = chart(
    `fastify-event-sources against plain Node and the peers, N = ${num(big)}`,
    `${results.mode} run of ${results.date.slice(0, 10)}, ${m.cpu}, ${m.cores} cores; server and load client pinned to separate cores`,
    [
      { title: `One broadcast to ${num(big)}: delivery p50 and p99 (ms, lower is better)`, unit: 'ms', series: ['p50', 'p99'], rows: ids.map(id => ({ label: labels[id], highlight: id.startsWith(PLUGIN), values: [get(id, big)?.fanout.p50ms, get(id, big)?.fanout.p99ms] })) },
      { title: 'Sustained broadcast: deliveries per second (higher is better)', unit: '/s', series: ['1 event per tick', '10 events per tick'], rows: ids.map(id => ({ label: labels[id], highlight: id.startsWith(PLUGIN), values: [get(id, big) && burst(1)(get(id, big)), get(id, big) && burst(10)(get(id, big))] })) },
      { title: 'Memory per idle connection after GC (KB, lower is better)', unit: 'KB', series: ['heap', 'RSS'], rows: all.map(id => ({ label: labels[id], highlight: id.startsWith(PLUGIN), values: [kb(get(id, big)?.memory.heapPerConn), kb(get(id, big)?.memory.rssPerConn)] })) }
    ]
  )
  fs.mkdirSync(path.join(__dirname, 'results'), { recursive: true })
  fs.writeFileSync(path.join(__dirname, 'results', 'chart.svg'), svg)
}

module.exports = { writeReport }

if (require.main === module) {
  const file = process.argv[2] ?? path.join(__dirname, 'results', 'full.json')
  writeReport(JSON.parse(fs.readFileSync(file, 'utf8')))
  console.log('wrote BENCHMARKS.md and bench/results/chart.svg')
}
