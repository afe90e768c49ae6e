'use strict'

// The speed targets, side by side: every contender at each N in one pass, the passes repeated, each figure the
// median over the passes of its ratio to the plain `res.write` loop measured in the same pass.
//
//   node bench/speed.js                      N = 2,000 and 10,000, three passes
//   options: --n=2000  --runs=5  --only=plain,plugin  --before=<dist dir of another build>  --label=name
//            --builds=a,b (builds copied to dist/builds/<name>; --ping-builds: their ping rounds too)
//            --quick (fewer rounds, shorter sustained runs: for direction only)  --cpu (broadcasts only)
//            --write (keep the tables in bench/results/speed.md and BENCHMARKS.md)  --from=<results file> (no run)
//            --timeline (when the server's writes and the client's arrivals happen, each side's CPU; --dump=<dir>: per socket)
//
// Writes bench/results/speed[-label].json and prints the tables as Markdown.

const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')
const { runOne, versions, machine } = require('./run')

const args = process.argv.slice(2)
const value = name => args.find(a => a.startsWith(`--${name}=`))?.split('=')[1]
const has = name => args.includes(`--${name}`)

const ns = (value('n') ?? '2000,10000').split(',').map(Number)
const passes = Number(value('runs') ?? 3)
const quick = has('quick')
// --cpu: broadcasts only, many rounds, for the server's CPU per broadcast (what a loaded machine does not skew much)
const plan = has('cpu')
  ? { rounds: 31, healthRounds: 0, blastMs: 0, bursts: [], settleMs: 500, pingMs: 1000, windowMs: 3000 }
  : quick
    ? { rounds: 5, healthRounds: 0, blastMs: 1000, bursts: [1, 10], settleMs: 500, pingMs: 1000, windowMs: 3000 }
    : { rounds: 9, healthRounds: 0, blastMs: 1500, bursts: [1, 10], settleMs: 800, pingMs: 1000, windowMs: 4000 }
// --timeline: per broadcast, when the server's socket writes and the client's arrivals happen, and the client's CPU
// (--dump=<dir>: also every write's and every arrival's time, per socket, for bench/timeline-lag.js)
if (has('timeline') || value('dump')) plan.timeline = true
if (value('dump')) {
  plan.dump = path.resolve(value('dump'))
  fs.mkdirSync(plan.dump, { recursive: true })
}
if (plan.bursts.length > 0) plan.sustainedNs = ns
else plan.sustainedNs = []

const CONTENDERS = [
  { id: 'plain', file: 'plain-node.js', label: 'node:http, chunked res.write loop (the reference)' },
  { id: 'plain-close', file: 'plain-node.js', env: { FRAMING: 'close' }, label: 'node:http, close-delimited res.write loop' },
  { id: 'plain-direct', file: 'plain-node.js', env: { FRAMING: 'direct' }, label: 'node:http, close-delimited, socket.write loop (no cork)', optional: true },
  { id: 'plugin', file: 'plugin.js', env: { VARIANT: 'broadcast' }, label: 'fastify-event-sources, broadcast()', ping: true },
  { id: 'plugin-chunked', file: 'plugin.js', env: { VARIANT: 'broadcast', CHUNKED: '1' }, label: 'fastify-event-sources, broadcast(), chunked: true', optional: true },
  { id: 'plugin-publish', file: 'plugin.js', env: { VARIANT: 'publish' }, label: 'fastify-event-sources, publish()' },
  { id: 'plugin-features', file: 'plugin.js', env: { VARIANT: 'features' }, label: 'fastify-event-sources, broadcast(), topics + diagnostics subscriber', features: true },
  { id: 'plugin-topic-publish', file: 'plugin.js', env: { VARIANT: 'topic-publish' }, label: 'fastify-event-sources, publish({ to: { topic } }), diagnostics subscriber', features: true },
  { id: 'fastify-sse', file: 'fastify-sse.js', label: '@fastify/sse', peer: true },
  { id: 'better-sse', file: 'better-sse.js', label: 'better-sse', peer: true }
]
const before = value('before')
if (before !== undefined) {
  CONTENDERS.splice(3, 0, { id: 'before', file: 'plugin.js', env: { VARIANT: 'broadcast', PLUGIN_DIST: path.resolve(before, 'index.js') }, label: 'before the change, broadcast()' })
}
// --builds=a,b: builds of the plugin copied to dist/builds/<name>, each a contender (one change at a time)
// (name+chunked: that build with chunked: true; name+features: with topics and a diagnostics subscriber)
// --build-labels=id:text;id:text names them in the tables.
const labels = Object.fromEntries((value('build-labels') ?? '').split(';').filter(Boolean).map(l => [l.slice(0, l.indexOf(':')), l.slice(l.indexOf(':') + 1)]))
for (const id of value('builds')?.split(',') ?? []) {
  const [name, ...extras] = id.split('+')
  const env = { VARIANT: extras.includes('features') ? 'features' : 'broadcast', PLUGIN_DIST: path.join(__dirname, '..', 'dist', 'builds', name, 'index.js'), ...(extras.includes('chunked') ? { CHUNKED: '1' } : {}) }
  CONTENDERS.push({ id, file: 'plugin.js', env, label: labels[id] ?? `build ${id}, broadcast()`, build: true, ping: has('ping-builds') })
}
const only = value('only')?.split(',')
const contenders = only ? CONTENDERS.filter(c => only.includes(c.id)) : CONTENDERS.filter(c => !c.optional && !(c.features && has('no-features')))

const METRICS = {
  p50: r => r.fanout?.p50ms,
  p99: r => r.fanout?.p99ms,
  loopCpu: r => r.fanout?.loopMaxCpuMs,
  cpu: r => r.fanout?.cpuMs,
  tick1: r => r.sustained?.find(s => s.burst === 1)?.deliveredPerSec,
  tick1cpu: r => r.sustained?.find(s => s.burst === 1)?.deliveredPerCpuSec,
  tick10: r => r.sustained?.find(s => s.burst === 10)?.deliveredPerSec,
  tick10cpu: r => r.sustained?.find(s => s.burst === 10)?.deliveredPerCpuSec,
  heap: r => r.memory?.heapPerConn,
  rss: r => r.memory?.rssPerConn,
  pingLoopCpu: r => r.ping?.loopMaxCpuMs
}

const median = a => {
  const s = a.filter(x => x !== undefined && Number.isFinite(x)).sort((x, y) => x - y)
  if (s.length === 0) return undefined
  const m = s.length >> 1
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2
}

async function main () {
  const started = Date.now()
  const runs = []
  for (let pass = 0; pass < passes; pass++) {
    for (const n of ns) {
      // A different order each pass, so a drift in the machine's load does not always favour the same contender.
      // Builds (one change at a time) run at the largest N only.
      const here = contenders.filter(c => !c.build || n === ns[ns.length - 1])
      const order = here.map((c, i) => here[(i + pass) % here.length])
      for (const c of order) {
        const load = os.loadavg()[0]
        const r = await runOne(c, n, 'main', plan)
        runs.push({ pass, contender: c.id, load, ...r })
        const f = r.fanout
        console.error(`pass ${pass + 1} N=${n} ${c.id.padEnd(15)} ${r.error ?? `p50 ${f.p50ms} p99 ${f.p99ms} cpu ${f.cpuMs} loop ${f.loopMaxCpuMs} ms; ${r.sustained.map(s => s.deliveredPerSec + '/s').join(' ')}; heap ${r.memory.heapPerConn} rss ${r.memory.rssPerConn}`}`)
      }
      for (const c of order.filter(c => c.ping && !has('cpu'))) {
        const r = await runOne(c, n, 'ping', plan)
        runs.push({ pass, contender: c.id, ...r })
        console.error(`pass ${pass + 1} N=${n} ${c.id.padEnd(15)} ${r.error ?? `ping round loop ${r.ping.loopMaxCpuMs} ms cpu`}`)
      }
    }
  }
  const summary = summarize(runs)
  const label = value('label')
  const out = { command: ['node bench/speed.js', ...args.filter(a => a !== '--write')].join(' '), date: new Date().toISOString(), elapsedSec: Math.round((Date.now() - started) / 1000), machine: machine(), versions: versions(), plan: { ...plan, ns, passes, quick }, contenders: contenders.map(({ id, label, peer, build }) => ({ id, label, peer, build })), summary, runs }
  const dir = path.join(__dirname, 'results')
  fs.mkdirSync(dir, { recursive: true })
  const file = path.join(dir, `speed${label ? '-' + label : ''}.json`)
  fs.writeFileSync(file, JSON.stringify(out, null, 2) + '\n')
  console.error(`results: ${path.relative(process.cwd(), file)} (${out.elapsedSec} s)`)
  publish(out)
}

/** Prints the section; with --write, also keeps it in bench/results/speed.md and in BENCHMARKS.md. */
function publish (out) {
  const text = markdown(out)
  console.log(text)
  if (!has('write')) return
  fs.writeFileSync(path.join(__dirname, 'results', 'speed.md'), text + '\n')
  const file = path.join(__dirname, '..', 'BENCHMARKS.md')
  const doc = fs.readFileSync(file, 'utf8')
  const at = doc.indexOf('\n## Speed work\n')
  let next = at === -1 ? -1 : doc.indexOf('\n## ', at + 1)
  if (at === -1) {
    // Before the prose of what was found, which closes the file.
    next = doc.indexOf('\n## What was found')
    const cut = next === -1 ? doc.length : next
    fs.writeFileSync(file, doc.slice(0, cut).trimEnd() + '\n\n' + text.trim() + '\n' + doc.slice(cut))
  } else {
    fs.writeFileSync(file, doc.slice(0, at).trimEnd() + '\n\n' + text.trim() + '\n' + (next === -1 ? '' : doc.slice(next)))
  }
  console.error('wrote bench/results/speed.md and the Speed work section of BENCHMARKS.md')
}

/** Per N and contender: the median of each figure, and the median of its per-pass ratio to plain. */
function summarize (runs) {
  const ok = runs.filter(r => r.error === undefined)
  const out = {}
  for (const n of ns) {
    out[n] = {}
    for (const c of contenders) {
      const row = {}
      for (const [key, pick] of Object.entries(METRICS)) {
        const mine = ok.filter(r => r.contender === c.id && r.n === n && r.mode === (key === 'pingLoopCpu' ? 'ping' : 'main'))
        const values = mine.map(pick)
        const ratios = mine.map(r => {
          const base = ok.find(b => b.contender === 'plain' && b.n === n && b.pass === r.pass && b.mode === 'main')
          const v = pick(r)
          const b = base && pick(base)
          return v !== undefined && b ? v / b : undefined
        })
        const m = median(values)
        if (m !== undefined) row[key] = { median: m, ratio: median(ratios), values }
      }
      out[n][c.id] = row
    }
  }
  return out
}

const SLICE_MS = 50

/** Per pass, `id`'s figure over the best of `others` (lowest when lower is better); the median over passes. */
function ratioToBest (runs, passes, id, others, n, pick, lowerIsBetter = true) {
  const ratios = []
  for (let pass = 0; pass < passes; pass++) {
    const mine = runs.find(r => r.contender === id && r.n === n && r.pass === pass && r.mode === 'main' && r.error === undefined)
    const theirs = others.map(o => runs.find(r => r.contender === o && r.n === n && r.pass === pass && r.mode === 'main' && r.error === undefined)).filter(Boolean).map(pick).filter(v => v !== undefined)
    if (mine === undefined || theirs.length === 0 || pick(mine) === undefined) continue
    ratios.push(pick(mine) / (lowerIsBetter ? Math.min(...theirs) : Math.max(...theirs)))
  }
  return median(ratios)
}

function markdown ({ summary, plan, date, runs, versions, machine, contenders, command }) {
  const ns = plan.ns
  const f = (x, d = 1) => x === undefined ? 'n/a' : Math.abs(x) >= 1000 ? Math.round(x).toLocaleString('en-US') : String(Math.round(x * 10 ** d) / 10 ** d)
  const cell = (row, key, d) => row?.[key] ? `${f(row[key].median, d)}${row[key].ratio !== undefined ? ` (${row[key].ratio.toFixed(2)}×)` : ''}` : 'n/a'
  const x = r => r === undefined ? 'n/a' : `${r.toFixed(2)}×`
  const mark = ok => ok === undefined ? '–' : ok ? 'met' : '**not met**'
  const ids = contenders.map(c => c.id)
  const peers = contenders.filter(c => c.peer).map(c => c.id)
  const lines = ['## Speed work', '']
  lines.push(`Generated by \`${command}\` on ${date.slice(0, 16).replace('T', ' ')} UTC: ${plan.passes} passes, each running every contender once per N (in a rotated order), server on one core and the load client on the other. A cell is the median over the passes; in brackets, the median of the per-pass ratio to the plain chunked \`res.write\` loop measured in the same pass. Node ${versions.node}, ${machine.cpu}, ${machine.cores} cores. Broadcast figures are from ${plan.rounds} broadcasts per run (their median), sustained runs last ${plan.blastMs / 1000} s.`, '')

  // Targets, per N, for the plugin as shipped and with the other features on.
  const rows = []
  for (const n of ns) {
    const N = n.toLocaleString('en-US')
    for (const id of ['plugin', 'plugin-features'].filter(i => ids.includes(i))) {
      const row = summary[n][id]
      const who = id === 'plugin' ? '' : ' (topics + diagnostics subscriber)'
      const p50 = row.p50?.ratio
      const p99 = row.p99?.ratio
      const peer50 = peers.length ? ratioToBest(runs, plan.passes, id, peers, n, METRICS.p50) : undefined
      const peer99 = peers.length ? ratioToBest(runs, plan.passes, id, peers, n, METRICS.p99) : undefined
      rows.push([`N = ${N}${who}: broadcast p50 and p99 at most 0.90× plain`, `p50 ${x(p50)}, p99 ${x(p99)}`, mark(p50 === undefined ? undefined : p50 <= 0.9 && p99 <= 0.9)])
      if (peers.length) rows.push([`N = ${N}${who}: broadcast at least 15% ahead of the best peer`, `p50 ${x(peer50)}, p99 ${x(peer99)} of the best peer`, mark(peer50 === undefined ? undefined : peer50 <= 0.85 && peer99 <= 0.85)])
      const t1 = row.tick1?.ratio
      const t10 = row.tick10?.ratio
      const t10peer = peers.length ? ratioToBest(runs, plan.passes, id, peers, n, METRICS.tick10, false) : undefined
      rows.push([`N = ${N}${who}: sustained, one event per tick, at least 1.10× plain`, x(t1), mark(t1 === undefined ? undefined : t1 >= 1.1)])
      rows.push([`N = ${N}${who}: sustained, ten events per tick, keeps the lead`, `${x(t10)} plain${t10peer === undefined ? '' : `, ${x(t10peer)} the best peer`}`, mark(t10 === undefined ? undefined : t10 > 1 && (t10peer === undefined || t10peer > 1))])
      const heap = row.heap?.ratio
      const rss = row.rss?.ratio
      rows.push([`N = ${N}${who}: memory per idle stream, heap at most 1.10×, RSS at most 1.0× plain`, `heap ${x(heap)}, RSS ${x(rss)}`, mark(heap === undefined ? undefined : heap <= 1.1 && rss <= 1.0)])
    }
    const blocks = []
    for (const [id, what] of [['plugin', 'broadcast'], ['plugin-publish', 'publish'], ['plugin-features', 'broadcast, topics + diagnostics'], ['plugin-topic-publish', 'topic publish']]) {
      const v = summary[n][id]?.loopCpu?.median
      if (v !== undefined) blocks.push([what, v])
    }
    const ping = summary[n].plugin?.pingLoopCpu?.median
    if (ping !== undefined) blocks.push(['ping round', ping])
    if (blocks.length) {
      const worst = Math.max(...blocks.map(b => b[1]))
      rows.push([`N = ${N}: no fan-out blocks the loop longer than fanOutSlice (${SLICE_MS} ms)`, blocks.map(([w, v]) => `${w} ${f(v)} ms`).join(', ') + ` (CPU; plain: ${f(summary[n].plain?.loopCpu?.median)} ms)`, mark(worst <= SLICE_MS)])
    }
  }
  lines.push('### Targets', '', '| target | this run |  |', '| --- | --- | ---: |', ...rows.map(r => `| ${r.join(' | ')} |`), '')

  const header = '| contender | p50 ms | p99 ms | server CPU per broadcast, ms | longest loop block, CPU ms | 1/tick per s | 1/tick per CPU-s | 10/tick per s | 10/tick per CPU-s | heap B/stream | RSS B/stream |'
  const rule = '| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |'
  const rowOf = (c, n) => {
    const row = summary[n][c.id]
    return `| ${c.label} | ${cell(row, 'p50')} | ${cell(row, 'p99')} | ${cell(row, 'cpu')} | ${cell(row, 'loopCpu')} | ${cell(row, 'tick1')} | ${cell(row, 'tick1cpu')} | ${cell(row, 'tick10')} | ${cell(row, 'tick10cpu')} | ${cell(row, 'heap', 0)} | ${cell(row, 'rss', 0)} |`
  }
  const main = contenders.filter(c => !c.build)
  const builds = contenders.filter(c => c.build)
  for (const n of ns) {
    lines.push(`### N = ${n.toLocaleString('en-US')}`, '', header, rule)
    for (const c of main) lines.push(rowOf(c, n))
    lines.push('')
  }
  if (plan.timeline) lines.push(...timelineTables(runs, plan, contenders))
  if (builds.length) {
    lines.push('### One change at a time', '', 'Each build adds one change to the one above it, and the last row is the plugin as shipped; every row comes from the same passes as the tables above (the builds run at the largest N only).', '')
    const n = ns[ns.length - 1]
    lines.push(`N = ${n.toLocaleString('en-US')}:`, '', header, rule)
    for (const c of [...builds, ...main.filter(m => m.id === 'plugin')]) lines.push(rowOf(c, n))
    lines.push('')
  }
  return lines.join('\n')
}

/**
 * --timeline: per N and contender, the medians over the passes (ms on the server's clock from the event's creation):
 * the server's first, median and last socket write, the client's first, median and last arrival, the CPU each side
 * spent per broadcast, and how many rounds saw either process taken off its core; the load average when runs started.
 */
function timelineTables (runs, plan, contenders) {
  const ok = runs.filter(r => r.error === undefined && r.mode === 'main' && r.fanout?.timeline)
  const f = x => x === undefined ? 'n/a' : String(Math.round(x * 10) / 10)
  const lines = ['### Timeline of one broadcast', '', 'Medians over the passes of the per-run medians, ms from the event\'s creation on the server\'s clock. Server writes: the socket writes that handed the event to the kernel (first, median, last socket). Server CPU to its median write: user + system time from the broadcast request to the median socket\'s write (other processes taking the core do not add to it). Client arrivals: first, median (p50) and last. Server loop end: when the call that broadcast returned. CPU per broadcast: user + system, from the broadcast request to the last arrival. Client GC: its GC pauses per broadcast. Involuntary switches: per broadcast, the times the process was taken off its core (other work, kernel threads).', '']
  const loads = ok.map(r => r.load).filter(x => x !== undefined)
  if (loads.length) lines.push(`Load average (1 min) at the start of the runs: ${f(Math.min(...loads))} to ${f(Math.max(...loads))}.`, '')
  for (const n of plan.ns) {
    lines.push(`N = ${n.toLocaleString('en-US')}:`, '', '| contender | client p50 (× plain) | server\'s median write (× plain) | client median − server median write | server CPU to its median write (× plain) | server writes: first / median / last | client arrivals: first / median / last | server loop end | longest pause between writes | server CPU (system) | client CPU (system) | client CPU per socket, µs | client CPU / last arrival | client GC | involuntary switches, server / client |', '| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |')
    for (const c of contenders) {
      const mine = ok.filter(r => r.contender === c.id && r.n === n)
      if (mine.length === 0) continue
      const m = k => median(mine.map(r => r.fanout.timeline[k]))
      const ratioOf = pick => median(mine.map(r => {
        const base = ok.find(b => b.contender === 'plain' && b.n === n && b.pass === r.pass)
        return base ? pick(r) / pick(base) : undefined
      }))
      const x = r => r === undefined ? '' : ` (${r.toFixed(2)}×)`
      const p50 = ratioOf(r => r.fanout.p50ms)
      const write = ratioOf(r => r.fanout.timeline.serverMedianWriteMs)
      const cpuToMedian = ratioOf(r => r.fanout.timeline.serverMedianWriteCpuMs)
      const lag = median(mine.map(r => r.fanout.timeline.clientMedianMs - r.fanout.timeline.serverMedianWriteMs))
      const share = median(mine.map(r => r.fanout.timeline.clientCpuMs / r.fanout.timeline.clientLastMs))
      lines.push(`| ${c.id} | ${f(m('clientMedianMs'))}${x(p50)} | ${f(m('serverMedianWriteMs'))}${x(write)} | ${f(lag)} | ${f(m('serverMedianWriteCpuMs'))}${x(cpuToMedian)} | ${f(m('serverFirstWriteMs'))} / ${f(m('serverMedianWriteMs'))} / ${f(m('serverLastWriteMs'))} | ${f(m('clientFirstMs'))} / ${f(m('clientMedianMs'))} / ${f(m('clientLastMs'))} | ${f(m('serverLoopEndMs'))} | ${f(m('serverMaxWriteGapMs'))} | ${f(m('serverCpuMs'))} (${f(m('serverSysMs'))}) | ${f(m('clientCpuMs'))} (${f(m('clientSysMs'))}) | ${f(m('clientCpuMs') * 1000 / n)} | ${share === undefined ? 'n/a' : share.toFixed(2)} | ${f(m('clientGcMs'))} | ${f(m('serverSwitches'))} / ${f(m('clientSwitches'))} |`)
    }
    lines.push('')
  }
  return lines
}

if (require.main === module) {
  // --from=<results file>: only the tables, from an earlier run.
  const from = value('from')
  const run = from === undefined ? main() : Promise.resolve().then(() => publish(JSON.parse(fs.readFileSync(from, 'utf8'))))
  run.catch(err => {
    console.error(err)
    process.exit(1)
  })
}

module.exports = { summarize, markdown }
