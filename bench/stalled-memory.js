'use strict'

// Memory per stalled client: N HTTP/1.1 clients that never read, each sent distinct 1 kB messages (eight per tick)
// until every one has sat at a 64 KiB bound for 20 ticks, with one reader on the side. Each server runs alone in a
// child process with --expose-gc; the figure is live heap + external after full GCs, loaded minus empty (the
// empty server has the reader connected and warmed up), divided by N.
//
//   node bench/stalled-memory.js [--n=200] [--before=<dist folder of another build>]
//
// Writes bench/results/stalled-memory.md, which bench/report.js appends to BENCHMARKS.md.

const { fork } = require('node:child_process')
const fs = require('node:fs')
const http = require('node:http')
const net = require('node:net')
const path = require('node:path')

const BOUND = 64 * 1024
const PER_TICK = 8
const PAD = 'x'.repeat(1000)
const arg = name => process.argv.find(a => a.startsWith(`--${name}=`))?.slice(name.length + 3)

if (process.argv[2] === 'serve') serve().catch(err => { console.error(err); process.exit(1) })
else main().catch(err => { console.error(err); process.exit(1) })

async function memory () {
  for (let i = 0; i < 3; i++) {
    global.gc()
    await new Promise(resolve => setImmediate(resolve))
  }
  const { heapUsed, external } = process.memoryUsage()
  return heapUsed + external
}

/** What each contender needs: open streams by id, and a bounded send that says whether it was dropped. */
async function plain () {
  const streams = new Map()
  const server = http.createServer((req, res) => {
    const id = new URL(req.url, 'http://x').searchParams.get('id')
    res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' })
    const stream = { id, dropped: 0, get buffered () { return res.writableLength } }
    stream.send = data => {
      const text = 'data: ' + data + '\n\n'
      if (res.writableLength + Buffer.byteLength(text) > BOUND) {
        stream.dropped++
        return
      }
      res.write(text)
    }
    streams.set(id, stream)
    res.on('close', () => streams.delete(id))
  })
  await new Promise(resolve => server.listen(0, '127.0.0.1', resolve))
  return { port: server.address().port, streams: () => [...streams.values()] }
}

async function plugin (dist) {
  const Fastify = require('fastify')
  const eventSources = require(dist)
  const app = Fastify()
  await app.register(eventSources, { maxBufferedBytes: BOUND, slowClient: 'drop', drainTimeout: 600_000 })
  app.get('/sse', async request => {
    const sse = request.getEventSource(request.query.id)
    await sse.keepAlive()
    return sse.close()
  })
  await app.listen({ port: 0, host: '127.0.0.1' })
  return {
    port: app.server.address().port,
    streams: () => app.eventSources.all().map(sse => ({
      id: sse.identifier,
      send: data => sse.send(data),
      get dropped () { return sse.droppedMessages },
      get buffered () { return sse.bufferedAmount }
    }))
  }
}

async function serve () {
  const variant = process.env.VARIANT
  const server = variant === 'plain' ? await plain() : await plugin(process.env.DIST)
  let toReader = 0
  process.on('message', async ({ cmd }) => {
    if (cmd === 'measure') return process.send({ memory: await memory(), streams: server.streams().length })
    const all = server.streams()
    const stalled = all.filter(s => s.id.startsWith('s-'))
    const reader = all.find(s => s.id === 'reader')
    let round = 0
    let atBound = 0
    const limit = cmd === 'warm' ? 300 : 20_000
    while (atBound < 20 && round < limit) {
      for (const s of stalled) for (let k = 0; k < PER_TICK; k++) s.send(`${s.id}:${round}:${k}:${PAD}`)
      if (reader.buffered < BOUND / 2) for (let k = 0; k < PER_TICK; k++) reader.send(`${toReader++}:${PAD}`)
      round++
      await new Promise(resolve => setImmediate(resolve))
      if (stalled.length > 0 && stalled.every(s => s.dropped > 0)) atBound++
    }
    while (reader.buffered > 0) await new Promise(resolve => setTimeout(resolve, 5))
    process.send({ toReader, rounds: round })
  })
  process.send({ port: server.port })
}

function child (variant, dist) {
  const proc = fork(__filename, ['serve'], { execArgv: ['--expose-gc'], env: { ...process.env, VARIANT: variant, DIST: dist ?? '' } })
  const replies = []
  proc.on('message', m => replies.shift()(m))
  const next = () => new Promise(resolve => replies.push(resolve))
  return { proc, next, ask: cmd => { const r = next(); proc.send({ cmd }); return r } }
}

async function measure (variant, dist, n) {
  const server = child(variant, dist)
  const { port } = await server.next()
  let received = 0
  const reader = http.get({ port, host: '127.0.0.1', path: '/sse?id=reader', agent: false }, res => {
    res.on('data', chunk => { received += chunk.toString().split('\n\n').length - 1 })
  })
  reader.on('error', () => {})
  while ((await server.ask('measure')).streams < 1) await new Promise(resolve => setTimeout(resolve, 20))
  await server.ask('warm')
  const empty = await server.ask('measure')
  const sockets = []
  for (let i = 0; i < n; i++) {
    const socket = net.connect(port, '127.0.0.1')
    socket.pause()
    socket.on('error', () => {})
    socket.write(`GET /sse?id=s-${i} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n`)
    sockets.push(socket)
  }
  while ((await server.ask('measure')).streams < n + 1) await new Promise(resolve => setTimeout(resolve, 50))
  const connected = await server.ask('measure')
  const started = Date.now()
  const load = await server.ask('load')
  const ms = Date.now() - started
  while (received < load.toReader) await new Promise(resolve => setTimeout(resolve, 20))
  const loaded = await server.ask('measure')
  for (const socket of sockets) socket.destroy()
  reader.destroy()
  server.proc.kill()
  return {
    connected: (connected.memory - empty.memory) / n,
    loaded: (loaded.memory - empty.memory) / n,
    rounds: load.rounds,
    ms
  }
}

async function main () {
  const n = Number(arg('n') ?? 200)
  const dist = path.resolve(__dirname, '..', 'dist', 'index.js')
  const rows = [['plain node:http, strings, same bound', 'plain', undefined], ['fastify-event-sources', 'plugin', dist]]
  const before = arg('before')
  if (before !== undefined) rows.push(['fastify-event-sources, before', 'plugin', path.resolve(before, 'index.js')])
  const lines = [
    '## 6. Memory per stalled client',
    '',
    `Generated by \`node bench/stalled-memory.js --n=${n}\` on ${new Date().toISOString().slice(0, 16).replace('T', ' ')} UTC (node ${process.version}).`,
    `${n} HTTP/1.1 clients that never read, \`maxBufferedBytes\` 64 KiB with \`slowClient: 'drop'\` (plain Node: the same`,
    'check on `writableLength`), each sent distinct 1 kB messages, eight per tick, until every one has sat at the bound for',
    '20 ticks; one reader on the side gets every message. Live heap + external after full GCs, above the empty server',
    '(reader connected and warmed up), per stalled client. The bound itself is 64 KiB.',
    '',
    '| contender | connected | loaded | ticks to stall all |',
    '| --- | ---: | ---: | ---: |'
  ]
  for (const [label, variant, d] of rows) {
    const r = await measure(variant, d, n)
    const kb = bytes => (bytes / 1024).toFixed(1) + ' kB'
    lines.push(`| ${label} | ${kb(r.connected)} | ${kb(r.loaded)} | ${r.rounds} (${r.ms} ms) |`)
    console.log(lines[lines.length - 1])
  }
  fs.mkdirSync(path.join(__dirname, 'results'), { recursive: true })
  fs.writeFileSync(path.join(__dirname, 'results', 'stalled-memory.md'), lines.join('\n') + '\n')
}
