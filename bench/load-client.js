'use strict'

// The load: N raw TCP connections in one process, no SSE library, so the figures are the server's. Each event
// carries the server's monotonic clock (same host, same clock); delivery time is read against it on arrival.
//
//   node load-client.js '{"port":1234,"n":1000,"mode":"main",...}'   prints one JSON line of results

const net = require('node:net')
const http = require('node:http')
const { spawn } = require('node:child_process')
const path = require('node:path')

const cfg = JSON.parse(process.argv[2])
const { port, n: N } = cfg
const CONCURRENCY = 250
const now = () => process.hrtime.bigint()
const sleep = ms => new Promise(resolve => setTimeout(resolve, ms))

function get (urlPath) {
  return new Promise((resolve, reject) => {
    http.get({ host: '127.0.0.1', port, path: urlPath, agent: false }, res => {
      let body = ''
      res.setEncoding('utf8')
      res.on('data', chunk => { body += chunk })
      res.on('end', () => {
        try {
          resolve(JSON.parse(body))
        } catch (err) {
          reject(new Error(`${urlPath}: ${res.statusCode} ${body.slice(0, 200)}`))
        }
      })
    }).on('error', reject)
  })
}

const lastSeq = new Float64Array(N)
const lat = new Float64Array(N)
const bytes = new Float64Array(N)
const sockets = []
let target = -1
let got = 0
let onAll = null
let sampling = false
let samples = []
let closed = 0
// cfg.timeline: the client's own CPU from asking for the broadcast to the last arrival, and its GC pauses
let cpuAtBroadcast
let cpuAtAll
const gc = { ms: 0, max: 0 }
if (cfg.timeline) {
  const { PerformanceObserver } = require('node:perf_hooks')
  new PerformanceObserver(list => {
    for (const e of list.getEntries()) {
      gc.ms += e.duration
      if (e.duration > gc.max) gc.max = e.duration
    }
  }).observe({ entryTypes: ['gc'] })
}

const S_KEY = Buffer.from('"s":')
const HELLO = Buffer.from('hello')
const QUOTE = 0x22
const COMMA = 0x2c

// Reads `"s":<digits>,"t":"<digits>"` at k; returns the end index, or -1 when the event is cut off.
let parsedSeq = 0
let parsedT = ''
function parseAt (buf, k) {
  let j = k + 4
  let sq = 0
  let c
  while (j < buf.length && (c = buf[j]) >= 0x30 && c <= 0x39) {
    sq = sq * 10 + c - 0x30
    j++
  }
  if (j + 6 > buf.length || buf[j] !== COMMA) return -1
  j += 6 // ,"t":"
  const start = j
  while (j < buf.length && buf[j] !== QUOTE) j++
  if (j >= buf.length) return -1
  parsedSeq = sq
  parsedT = buf.toString('latin1', start, j)
  return j
}

function open (i) {
  return new Promise((resolve, reject) => {
    const socket = net.connect(port, '127.0.0.1')
    let carry = null
    let ready = false
    socket.setNoDelay(true)
    socket.on('connect', () => socket.write('GET /sse HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n'))
    socket.on('data', chunk => {
      const t = now()
      bytes[i] += chunk.length
      const buf = carry === null ? chunk : Buffer.concat([carry, chunk])
      carry = null
      if (!ready) {
        if (buf.indexOf(HELLO) !== -1) {
          ready = true
          resolve()
        } else if (buf.length > 4096) {
          reject(new Error('no hello: ' + buf.toString('latin1', 0, 300)))
        } else {
          carry = Buffer.from(buf)
        }
      }
      // Only the newest complete event of each read matters: the stream is in order.
      let k = buf.lastIndexOf(S_KEY)
      if (k >= 0 && parseAt(buf, k) === -1) {
        carry = Buffer.from(buf.subarray(k))
        k = k > 0 ? buf.lastIndexOf(S_KEY, k - 1) : -1
        if (k >= 0 && parseAt(buf, k) === -1) k = -1
      }
      if (k < 0) return
      const sq = parsedSeq
      if (sq > lastSeq[i]) {
        lastSeq[i] = sq
        const ms = Number(t - BigInt(parsedT)) / 1e6
        if (sampling) samples.push(ms)
        if (lat[i] === 0 && sq >= target && target > 0) {
          lat[i] = ms
          if (++got === N) {
            if (cfg.timeline) cpuAtAll = process.cpuUsage(cpuAtBroadcast)
            onAll()
          }
        }
      }
    })
    socket.on('error', reject)
    socket.on('close', () => { closed++ })
    sockets[i] = socket
  })
}

async function connectAll () {
  let next = 0
  const worker = async () => {
    while (next < N) await open(next++)
  }
  const t0 = performance.now()
  await Promise.all(Array.from({ length: Math.min(CONCURRENCY, N) }, worker))
  return performance.now() - t0
}

const sorted = a => Float64Array.from(a).sort()
const pct = (s, p) => s[Math.min(s.length - 1, Math.floor(s.length * p))]
const median = a => pct(sorted(a), 0.5)
const round2 = x => Math.round(x * 100) / 100

async function oneBroadcast (timeoutMs) {
  lat.fill(0)
  got = 0
  let maxSeq = 0
  for (let i = 0; i < N; i++) if (lastSeq[i] > maxSeq) maxSeq = lastSeq[i]
  target = maxSeq + 1
  const all = new Promise(resolve => { onAll = resolve })
  cpuAtAll = undefined
  let switches = 0
  if (cfg.timeline) {
    cpuAtBroadcast = process.cpuUsage()
    gc.ms = gc.max = 0
    switches = process.resourceUsage().involuntaryContextSwitches
  }
  const server = await get('/broadcast')
  const timedOut = await Promise.race([all.then(() => false), sleep(timeoutMs).then(() => true)])
  const loop = await get('/loop')
  const s = sorted(lat.filter(x => x > 0))
  target = -1
  // cfg.dump: every socket's local port and delivery time (one JSON line per broadcast)
  if (cfg.dump) require('node:fs').appendFileSync(cfg.dump, JSON.stringify({ gcMs: gc.ms, gcMaxMs: gc.max, ports: sockets.map(x => x.localPort), lat: Array.from(lat) }) + '\n')
  const out = { p50: pct(s, 0.5), p99: pct(s, 0.99), max: s[s.length - 1], missed: N - got, timedOut, syncMs: server.syncMs, loopMaxMs: loop.loopMaxMs, loopMaxCpuMs: loop.loopMaxCpuMs, cpuMs: loop.cpuMs }
  if (cfg.timeline) {
    // All on the server's clock, from the event's creation: the server's first, median and last socket write (the
    // bytes handed to the kernel), the client's first, median and last arrival, and the client's CPU meanwhile.
    out.first = s[0]
    out.clientGcMs = gc.ms
    out.clientGcMaxMs = gc.max
    out.clientSwitches = process.resourceUsage().involuntaryContextSwitches - switches
    out.serverSwitches = loop.involuntarySwitches
    out.clientCpuMs = cpuAtAll === undefined ? undefined : (cpuAtAll.user + cpuAtAll.system) / 1000
    out.clientSysMs = cpuAtAll === undefined ? undefined : cpuAtAll.system / 1000
    out.writes = loop.writes
    out.firstWriteMs = loop.firstWriteMs
    out.medianWriteMs = loop.medianWriteMs
    out.medianWriteCpuMs = loop.medianWriteCpuMs
    out.lastWriteMs = loop.lastWriteMs
    out.maxWriteGapMs = loop.maxWriteGapMs
    out.serverSysMs = loop.sysMs
  }
  return out
}

async function fanout (rounds) {
  const results = []
  for (let r = 0; r < rounds; r++) {
    results.push(await oneBroadcast(15000))
    await sleep(150)
  }
  const pick = k => round2(median(results.map(x => x[k])))
  return {
    rounds,
    p50ms: pick('p50'),
    p99ms: pick('p99'),
    maxMs: pick('max'),
    syncMs: pick('syncMs'),
    loopMaxMs: pick('loopMaxMs'),
    loopMaxCpuMs: pick('loopMaxCpuMs'),
    cpuMs: pick('cpuMs'),
    bestP99ms: round2(Math.min(...results.map(x => x.p99))),
    missed: Math.max(...results.map(x => x.missed)),
    ...(cfg.timeline ? { timeline: timelineOf(results) } : {})
  }
}

/** The medians over the rounds of the cfg.timeline figures (ms, server clock from the event's creation). */
function timelineOf (results) {
  const pick = k => {
    const v = results.map(x => x[k]).filter(x => x !== undefined)
    return v.length === 0 ? undefined : round2(median(v))
  }
  return {
    serverLoopEndMs: pick('syncMs'),
    serverFirstWriteMs: pick('firstWriteMs'),
    serverMedianWriteMs: pick('medianWriteMs'),
    serverMedianWriteCpuMs: pick('medianWriteCpuMs'),
    serverLastWriteMs: pick('lastWriteMs'),
    serverWrites: pick('writes'),
    clientFirstMs: pick('first'),
    clientMedianMs: pick('p50'),
    clientLastMs: pick('max'),
    clientCpuMs: pick('clientCpuMs'),
    clientSysMs: pick('clientSysMs'),
    serverCpuMs: pick('cpuMs'),
    serverSysMs: pick('serverSysMs'),
    serverMaxWriteGapMs: pick('maxWriteGapMs'),
    // involuntary context switches per broadcast (other work taking the core), and in how many rounds of all
    clientSwitches: pick('clientSwitches'),
    clientGcMs: pick('clientGcMs'),
    clientGcMaxMs: round2(Math.max(...results.map(x => x.clientGcMaxMs ?? 0))),
    serverSwitches: pick('serverSwitches'),
    roundsDisturbed: results.filter(x => x.clientSwitches > 0 || x.serverSwitches > 0).length
  }
}

// /health from a separate process (on the server's core when pinning), so the probe is not queued behind the
// client's own parsing of N streams.
async function healthDuringBroadcast (rounds) {
  const probe = [path.join(__dirname, 'health-probe.js'), String(port), '2']
  const stdio = ['ignore', 'ignore', 'inherit', 'ipc']
  const worker = cfg.probeCore === undefined
    ? spawn(process.execPath, probe, { stdio })
    : spawn('taskset', ['-c', String(cfg.probeCore), process.execPath, ...probe], { stdio })
  await new Promise(resolve => worker.once('message', resolve))
  const probes = []
  const loops = []
  const loopsCpu = []
  for (let r = 0; r < rounds; r++) {
    worker.send('reset')
    const b = await oneBroadcast(15000)
    loops.push(b.loopMaxMs)
    loopsCpu.push(b.loopMaxCpuMs)
    worker.send('read')
    probes.push(...await new Promise(resolve => worker.once('message', resolve)))
    await sleep(150)
  }
  worker.disconnect()
  const s = sorted(probes)
  return { rounds, probes: s.length, p50ms: round2(pct(s, 0.5)), p99ms: round2(pct(s, 0.99)), maxMs: round2(s[s.length - 1]), loopMaxMs: round2(Math.max(...loops)), loopMaxCpuMs: round2(Math.max(...loopsCpu)) }
}

async function sustained (ms, burst) {
  const before = lastSeq.reduce((a, b) => a + b, 0)
  samples = []
  sampling = true
  const r = await get(`/blast?ms=${ms}&burst=${burst}`)
  await sleep(200)
  sampling = false
  const delivered = lastSeq.reduce((a, b) => a + b, 0) - before
  const s = sorted(samples)
  samples = []
  return {
    burst,
    elapsedMs: round2(r.elapsedMs),
    broadcasts: r.broadcasts,
    drainWaits: r.drainWaits,
    expected: r.broadcasts * N,
    delivered,
    deliveredPerSec: Math.round(delivered / r.elapsedMs * 1000),
    serverCpuPct: Math.round(r.serverCpuPct),
    // Per second of server CPU: what the server did, whatever else the machine was running meanwhile.
    deliveredPerCpuSec: Math.round(delivered / (r.elapsedMs * r.serverCpuPct / 100) * 1000),
    latP50ms: round2(pct(s, 0.5)),
    latP99ms: round2(pct(s, 0.99))
  }
}

async function main () {
  const out = { n: N, mode: cfg.mode }
  const m0 = await get('/stats')
  const connectMs = await connectAll()
  out.connect = { ms: round2(connectMs), perSec: Math.round(N / connectMs * 1000) }
  await sleep(cfg.settleMs ?? 1000)
  const m1 = await get('/stats')
  out.memory = {
    conns: m1.conns,
    rssMB: round2(m1.rss / 2 ** 20),
    rssPerConn: Math.round((m1.rss - m0.rss) / N),
    heapPerConn: Math.round((m1.heapUsed - m0.heapUsed) / N),
    externalPerConn: Math.round((m1.external - m0.external) / N),
    timers: m1.timers
  }
  if (cfg.mode === 'ping') {
    const before = bytes.reduce((a, b) => a + b, 0)
    const pinged = Float64Array.from(bytes)
    const r = await get(`/ping-round?ms=${cfg.windowMs}`)
    let reached = 0
    for (let i = 0; i < N; i++) if (bytes[i] > pinged[i]) reached++
    const rounds = r.windowMs / cfg.pingMs
    out.ping = {
      intervalMs: cfg.pingMs,
      windowMs: r.windowMs,
      cpuMs: round2(r.cpuMs),
      cpuMsPerRound: round2(r.cpuMs / rounds),
      usPerConnPerRound: round2(r.cpuMs * 1000 / rounds / N),
      loopMaxMs: round2(r.loopMaxMs),
      loopMaxCpuMs: round2(r.loopMaxCpuMs),
      timers: r.timers,
      reached,
      bytes: bytes.reduce((a, b) => a + b, 0) - before
    }
  } else if (cfg.mode === 'main') {
    out.fanout = await fanout(cfg.rounds)
    if (cfg.healthRounds > 0) out.health = await healthDuringBroadcast(cfg.healthRounds)
    out.sustained = []
    for (const burst of cfg.bursts) {
      out.sustained.push(await sustained(cfg.blastMs, burst))
      await sleep(100)
    }
  }
  out.closedDuringRun = closed
  out.clientRssMB = round2(process.memoryUsage().rss / 2 ** 20)
  process.stdout.write(JSON.stringify(out) + '\n')
  // The orchestrator stops the server first, so the closes (and TIME_WAIT) start on the server's side.
  process.stdin.resume()
  process.stdin.on('end', () => process.exit(0))
}

main().catch(err => {
  process.stdout.write(JSON.stringify({ error: String(err && err.stack) }) + '\n')
  process.exit(1)
})
