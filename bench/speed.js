'use strict'

// The speed targets, side by side: every contender at each N in one pass, the passes repeated, each figure the
// median over the passes of its ratio to the plain `res.write` loop measured in the same pass.
//
//   node bench/speed.js                      N = 2,000 and 10,000, three passes
//   options: --n=2000  --runs=5  --only=plain,plugin  --before=<dist dir of another build>  --label=name
//            --builds=a,b (builds copied to dist/builds/<name>)
//            --quick (fewer rounds, shorter sustained runs: for direction only)
//
// Writes bench/results/speed[-label].json and prints the tables as Markdown.

const fs = require('node:fs')
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
    : { rounds: 9, healthRounds: 0, blastMs: 2000, bursts: [1, 10], settleMs: 800, pingMs: 1000, windowMs: 4000 }
if (plan.bursts.length > 0) plan.sustainedNs = ns
else plan.sustainedNs = []

const CONTENDERS = [
  { id: 'plain', file: 'plain-node.js', label: 'node:http, chunked res.write loop (the reference)' },
  { id: 'plain-close', file: 'plain-node.js', env: { FRAMING: 'close' }, label: 'node:http, close-delimited res.write loop' },
  { id: 'plugin', file: 'plugin.js', env: { VARIANT: 'broadcast' }, label: 'fastify-event-sources, broadcast()', ping: true },
  { id: 'plugin-chunked', file: 'plugin.js', env: { VARIANT: 'broadcast', CHUNKED: '1' }, label: 'fastify-event-sources, broadcast(), chunked: true' },
  { id: 'plugin-publish', file: 'plugin.js', env: { VARIANT: 'publish' }, label: 'fastify-event-sources, publish()' },
  { id: 'fastify-sse', file: 'fastify-sse.js', label: '@fastify/sse' },
  { id: 'better-sse', file: 'better-sse.js', label: 'better-sse' }
]
const before = value('before')
if (before !== undefined) {
  CONTENDERS.splice(3, 0, { id: 'before', file: 'plugin.js', env: { VARIANT: 'broadcast', PLUGIN_DIST: path.resolve(before, 'index.js') }, label: 'before the change, broadcast()' })
}
// --builds=a,b: builds of the plugin copied to dist/builds/<name>, each a contender (one change at a time)
// (name+chunked: that build with chunked: true)
for (const id of value('builds')?.split(',') ?? []) {
  const [name, chunked] = id.split('+')
  const env = { VARIANT: 'broadcast', PLUGIN_DIST: path.join(__dirname, '..', 'dist', 'builds', name, 'index.js'), ...(chunked ? { CHUNKED: '1' } : {}) }
  CONTENDERS.push({ id, file: 'plugin.js', env, label: `build ${id}, broadcast()` })
}
const only = value('only')?.split(',')
const contenders = only ? CONTENDERS.filter(c => only.includes(c.id)) : CONTENDERS

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
      const order = contenders.map((c, i) => contenders[(i + pass) % contenders.length])
      for (const c of order) {
        const r = await runOne(c, n, 'main', plan)
        runs.push({ pass, contender: c.id, ...r })
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
  const out = { date: new Date().toISOString(), elapsedSec: Math.round((Date.now() - started) / 1000), machine: machine(), versions: versions(), plan: { ...plan, ns, passes, quick }, contenders: contenders.map(({ id, label }) => ({ id, label })), summary, runs }
  const dir = path.join(__dirname, 'results')
  fs.mkdirSync(dir, { recursive: true })
  const file = path.join(dir, `speed${label ? '-' + label : ''}.json`)
  fs.writeFileSync(file, JSON.stringify(out, null, 2) + '\n')
  console.log(markdown(out))
  console.error(`results: ${path.relative(process.cwd(), file)} (${out.elapsedSec} s)`)
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

function markdown ({ summary, plan, date }) {
  const f = (x, d = 1) => x === undefined ? 'n/a' : Math.abs(x) >= 1000 ? Math.round(x).toLocaleString('en-US') : String(Math.round(x * 10 ** d) / 10 ** d)
  const cell = (row, key, d) => row[key] ? `${f(row[key].median, d)}${row[key].ratio !== undefined ? ` (${row[key].ratio.toFixed(2)}×)` : ''}` : 'n/a'
  const lines = [`Speed run ${date}: ${plan.passes} passes, N = ${ns.join(', ')}; each cell the median over passes, in brackets the median of the per-pass ratio to the chunked plain loop.`, '']
  for (const n of ns) {
    lines.push(`N = ${n.toLocaleString('en-US')}`, '')
    lines.push('| contender | p50 ms | p99 ms | server CPU per broadcast, ms | loop block, CPU ms | 1/tick per s | 1/tick per CPU-s | 10/tick per s | 10/tick per CPU-s | heap B/conn | RSS B/conn | ping round block ms |')
    lines.push('| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |')
    for (const c of contenders) {
      const row = summary[n][c.id]
      lines.push(`| ${c.label} | ${cell(row, 'p50')} | ${cell(row, 'p99')} | ${cell(row, 'cpu')} | ${cell(row, 'loopCpu')} | ${cell(row, 'tick1')} | ${cell(row, 'tick1cpu')} | ${cell(row, 'tick10')} | ${cell(row, 'tick10cpu')} | ${cell(row, 'heap', 0)} | ${cell(row, 'rss', 0)} | ${row.pingLoopCpu ? f(row.pingLoopCpu.median) : ''} |`)
    }
    lines.push('')
  }
  return lines.join('\n')
}

if (require.main === module) {
  main().catch(err => {
    console.error(err)
    process.exit(1)
  })
}

module.exports = { summarize, markdown }
