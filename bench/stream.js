'use strict'

// stream(): N concurrent pipes, each fed by its own producer at RATE items/s, against the same producer written
// to node:http with a plain res.write loop. The server runs on one core, the load on the other; the figure is
// the server's CPU (process.cpuUsage()) per event the clients received, over the same window for each variant.
//
//   node bench/stream.js                 N = 1,000 at 50 items/s each, 5 rounds of 8 s; writes bench/results/stream.md
//                                        (bench/report.js appends it to BENCHMARKS.md) and its section of BENCHMARKS.md
//   options: --n=1000 --rate=50 --rounds=5 --window=8000 --no-report
//   (build first: npm run build)

const { execFileSync } = require('node:child_process')
const fs = require('node:fs')
const http = require('node:http')
const net = require('node:net')
const os = require('node:os')
const path = require('node:path')
const { pinning, pinned, line } = require('./processes')

const args = process.argv.slice(2)
const value = (name, fallback) => {
  const a = args.find(a => a.startsWith(`--${name}=`))
  return a === undefined ? fallback : a.split('=')[1]
}
const sleep = ms => new Promise(resolve => setTimeout(resolve, ms))

const VARIANTS = [
  { id: 'plain', label: 'node:http, `for await` + `res.write` (the limit)' },
  { id: 'stream', label: 'fastify-event-sources, `await sse.stream(producer)`' },
  { id: 'sendAsync', label: 'fastify-event-sources, `for await` + `await sse.sendAsync(item)`' }
]

// ---- load client: N raw connections, counting the events that arrive ----

async function client (cfg) {
  const { port, n } = cfg
  let events = 0
  let connected = 0
  const sockets = []
  const open = () => new Promise((resolve, reject) => {
    const socket = net.connect(port, '127.0.0.1')
    let last = 0
    let head = false
    socket.on('connect', () => socket.write('GET /sse HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n'))
    socket.on('data', chunk => {
      if (!head) {
        head = true
        connected++
        resolve()
      }
      // An event ends with a blank line: count "\n\n", one of which may straddle two reads.
      if (last === 0x0a && chunk[0] === 0x0a) events++
      let i = -1
      while ((i = chunk.indexOf('\n\n', i + 1)) !== -1) events++
      last = chunk[chunk.length - 1]
    })
    socket.on('error', reject)
    sockets.push(socket)
  })
  for (let i = 0; i < n; i += 100) await Promise.all(Array.from({ length: Math.min(100, n - i) }, open))
  const get = () => new Promise((resolve, reject) => {
    http.get({ host: '127.0.0.1', port, path: '/cpu', agent: false }, res => {
      let body = ''
      res.on('data', c => { body += c })
      res.on('end', () => resolve(JSON.parse(body)))
    }).on('error', reject)
  })
  await sleep(cfg.warmMs)
  const a = await get()
  const e0 = events
  const t0 = performance.now()
  await sleep(cfg.windowMs)
  const b = await get()
  const delivered = events - e0
  const elapsedMs = performance.now() - t0
  for (const s of sockets) s.destroy()
  return { connected, open: b.open, delivered, elapsedMs, eventsPerSec: delivered * 1000 / elapsedMs, serverCpuMs: (b.cpuUs - a.cpuUs) / 1000, cpuUsPerEvent: (b.cpuUs - a.cpuUs) / delivered, rssMB: b.rss / 2 ** 20 }
}

// ---- orchestrator ----

async function runOne (variant, cfg) {
  const server = pinned(0, [path.join(__dirname, 'servers', 'stream-pipe.js')], { VARIANT: variant, PERIOD_MS: String(1000 / cfg.rate) })
  try {
    const port = Number((await line(server, l => l.startsWith('listening '))).split(' ')[1])
    const load = pinned(1, [__filename, 'client', JSON.stringify({ ...cfg, port })], {})
    try {
      return JSON.parse(await line(load, l => l.startsWith('{')))
    } finally {
      load.kill('SIGKILL')
    }
  } finally {
    server.kill('SIGKILL')
  }
}

const median = xs => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]

async function main () {
  const cfg = { n: Number(value('n', 1000)), rate: Number(value('rate', 50)), warmMs: 2000, windowMs: Number(value('window', 8000)) }
  const rounds = Number(value('rounds', 5))
  const runs = Object.fromEntries(VARIANTS.map(v => [v.id, []]))
  const ratios = { stream: [], sendAsync: [] }
  for (let r = 0; r < rounds; r++) {
    // Variants alternate within a round, and the order rotates, so a noisy stretch of the shared machine hits them alike.
    const round = {}
    for (const v of [...VARIANTS.slice(r % VARIANTS.length), ...VARIANTS.slice(0, r % VARIANTS.length)]) {
      round[v.id] = await runOne(v.id, cfg)
      runs[v.id].push(round[v.id])
      process.stderr.write(`round ${r + 1} ${v.id}: ${JSON.stringify(round[v.id])}\n`)
    }
    for (const id of Object.keys(ratios)) ratios[id].push(round[id].cpuUsPerEvent / round.plain.cpuUsPerEvent)
  }
  const rows = VARIANTS.map(v => {
    const rs = runs[v.id]
    const ratio = v.id === 'plain' ? '1.00×' : `${median(ratios[v.id]).toFixed(2)}× (rounds: ${ratios[v.id].map(x => x.toFixed(2)).join(', ')})`
    return `| ${v.label} | ${median(rs.map(x => x.eventsPerSec)).toFixed(0)} | ${median(rs.map(x => x.cpuUsPerEvent)).toFixed(2)} | ${ratio} | ${median(rs.map(x => x.rssMB)).toFixed(0)} |`
  })
  const commit = (() => {
    try { return execFileSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: path.join(__dirname, '..') }).toString().trim() } catch { return '' }
  })()
  const section = [
    '<!-- stream -->',
    '## 7. stream(): pipes fed by producers',
    '',
    `Generated by \`node bench/stream.js\` on ${new Date().toISOString().slice(0, 16).replace('T', ' ')} UTC (${commit}), node ${process.version}, ${os.cpus()[0].model.trim()}, ${os.cpus().length} cores, ${pinning ? 'server on CPU 0, load on CPU 1 (taskset)' : 'not pinned'}; the machine was shared with other work.`,
    '',
    `${cfg.n.toLocaleString('en')} concurrent streams, each fed by its own async generator yielding a small object every ${1000 / cfg.rate} ms (${cfg.rate} items/s, ${(cfg.n * cfg.rate).toLocaleString('en')} events/s in all). The load client holds raw TCP connections and counts events; after ${cfg.warmMs / 1000} s of warm-up the server's \`process.cpuUsage()\` is read at both ends of a ${cfg.windowMs / 1000} s window. ${rounds} rounds, variants alternating within each, in a rotating order; medians shown, the ratio is taken per round against that round's plain run. Target: \`stream()\` within 1.3× of plain Node.`,
    '',
    '| variant | events/s delivered | server CPU µs per event | ratio to plain Node | server RSS (MB) |',
    '| --- | ---: | ---: | ---: | ---: |',
    ...rows,
    '<!-- /stream -->'
  ].join('\n')
  console.log(section)
  if (args.includes('--no-report')) return
  fs.writeFileSync(path.join(__dirname, 'results', 'stream.md'), section + '\n')
  const file = path.join(__dirname, '..', 'BENCHMARKS.md')
  let md = fs.readFileSync(file, 'utf8')
  const at = md.indexOf('<!-- stream -->')
  if (at !== -1) md = md.slice(0, at) + section + md.slice(md.indexOf('<!-- /stream -->') + '<!-- /stream -->'.length)
  else {
    const before = md.indexOf('## What was found')
    md = before === -1 ? md + '\n' + section + '\n' : md.slice(0, before) + section + '\n\n' + md.slice(before)
  }
  fs.writeFileSync(file, md)
}

if (process.argv[2] === 'client') client(JSON.parse(process.argv[3])).then(r => process.stdout.write(JSON.stringify(r) + '\n'), err => { console.error(err); process.exit(1) })
else main()
