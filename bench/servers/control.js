'use strict'

// The control surface every contender's server exposes, so one load client drives them all the same way.
// A contender is { responses(): Iterable<ServerResponse>, broadcast(event): void | Promise<void> }.

let seq = 0
/** The event every contender sends: a sequence number and the monotonic clock in ns, read by the client. */
function nextEvent () {
  return { s: ++seq, t: String(process.hrtime.bigint()) }
}

function memory () {
  if (typeof global.gc === 'function') {
    global.gc()
    global.gc()
  }
  const m = process.memoryUsage()
  return { rss: m.rss, heapUsed: m.heapUsed, external: m.external, arrayBuffers: m.arrayBuffers }
}

const PING_MS = Number(process.env.PING_MS) || 0

// A normal exit on SIGTERM, so that a server run under --cpu-prof writes its profile.
process.on('SIGTERM', () => process.exit(0))

// Repeating timers alive, ref'd or not (getActiveResourcesInfo skips unref'd ones). Counted by wrapping
// setInterval before any contender loads, and only in ping runs; async_hooks would tax every write instead.
const intervals = new Set()
if (PING_MS > 0) {
  const timersModule = require('node:timers')
  const { setInterval: originalSet, clearInterval: originalClear } = timersModule
  const set = (...args) => {
    const timer = originalSet(...args)
    intervals.add(timer)
    return timer
  }
  const clear = timer => {
    intervals.delete(timer)
    originalClear(timer)
  }
  globalThis.setInterval = timersModule.setInterval = set
  globalThis.clearInterval = timersModule.clearInterval = clear
}
function timers () {
  return PING_MS > 0 ? intervals.size : undefined
}

const sleep = ms => new Promise(resolve => setTimeout(resolve, ms))
const tick = () => new Promise(resolve => setImmediate(resolve))

function drained (res) {
  return new Promise(resolve => {
    const done = () => {
      res.off('drain', done)
      res.off('close', done)
      resolve()
    }
    res.on('drain', done)
    res.on('close', done)
  })
}

// The longest stretch the loop went without running a timer: how long any other request would have waited.
// Also the CPU time spent in that stretch, which (unlike the wall time) other processes on the core cannot inflate.
function loopWatch (everyMs) {
  let last = 0
  let lastCpu = 0
  let max = 0
  let maxCpu = 0
  let timer
  const cpuMs = () => {
    const c = process.cpuUsage()
    return (c.user + c.system) / 1000
  }
  const check = () => {
    const t = performance.now()
    const c = cpuMs()
    if (t - last > max) max = t - last
    if (c - lastCpu > maxCpu) maxCpu = c - lastCpu
    last = t
    lastCpu = c
    timer = setTimeout(check, everyMs)
  }
  return {
    start () {
      clearTimeout(timer)
      max = maxCpu = 0
      last = performance.now()
      lastCpu = cpuMs()
      timer = setTimeout(check, everyMs)
    },
    stop () {
      clearTimeout(timer)
      check()
      clearTimeout(timer)
      return { wall: Math.max(0, max - everyMs), cpu: maxCpu }
    }
  }
}

// TIMELINE=1 (speed.js --timeline): the time of every socket write (the bytes handed to the kernel) to an event
// stream during a single broadcast, relative to the broadcast's start: when the first, the median and the last socket
// got its bytes. Wraps net.Socket's _write and _writev, through which every contender's socket writes go.
const TIMELINE = process.env.TIMELINE === '1'
const STREAM = Symbol('event stream')
const timeline = { on: false, t0: 0, times: [], ports: [] }
// TIMELINE_DUMP=<file>: also appends, per broadcast, every write's time and the client's port (one JSON line)
const DUMP = process.env.TIMELINE_DUMP
if (TIMELINE) {
  const { Socket } = require('node:net')
  const { _write, _writev } = Socket.prototype
  Socket.prototype._write = function (data, encoding, cb) {
    _write.call(this, data, encoding, cb)
    if (timeline.on && this[STREAM] === true) stamp(this)
  }
  Socket.prototype._writev = function (chunks, cb) {
    _writev.call(this, chunks, cb)
    if (timeline.on && this[STREAM] === true) stamp(this)
  }
}
// The CPU time (user + system) the server had spent when its median socket got the bytes: unlike the clock, other
// processes taking the core do not add to it. One cpuUsage() call per broadcast, at that write.
function stamp (socket) {
  if (timeline.times.push(performance.now() - timeline.t0) === timeline.half + 1) timeline.halfCpu = process.cpuUsage(timeline.cpu0)
  if (DUMP) timeline.ports.push(socket.remotePort)
}

function createControl (contender) {
  const loop = loopWatch(1)
  const coarse = loopWatch(10)
  let cpuAtBroadcast
  let sockets = 0

  function count () {
    let n = 0
    for (const res of contender.responses()) if (!res.destroyed) n++
    return n
  }

  // Sustained broadcasting with the same global backpressure for everyone: after each tick, wait for every
  // socket that asked for drain.
  async function blast (ms, burst) {
    const cpu0 = process.cpuUsage()
    const t0 = performance.now()
    const end = t0 + ms
    let broadcasts = 0
    let waits = 0
    while (performance.now() < end) {
      for (let k = 0; k < burst; k++, broadcasts++) await contender.broadcast(nextEvent())
      await tick()
      const pending = []
      for (const res of contender.responses()) if (res.writableNeedDrain && !res.destroyed) pending.push(drained(res))
      if (pending.length > 0) {
        waits++
        await Promise.all(pending)
      }
    }
    const elapsedMs = performance.now() - t0
    const cpu = process.cpuUsage(cpu0)
    return { broadcasts, burst, drainWaits: waits, elapsedMs, serverCpuPct: (cpu.user + cpu.system) / 10 / elapsedMs }
  }

  // A coarse loop watch here: a 1 ms one would cost more CPU than the pings being measured.
  async function pingWindow (ms) {
    coarse.start()
    const cpu0 = process.cpuUsage()
    await sleep(ms)
    const cpu = process.cpuUsage(cpu0)
    const block = coarse.stop()
    return { windowMs: ms, cpuMs: (cpu.user + cpu.system) / 1000, loopMaxMs: block.wall, loopMaxCpuMs: block.cpu, timers: timers() }
  }

  return {
    routes: {
      '/health': () => ({ ok: true }),
      '/stats': () => ({ conns: count(), sockets, timers: timers(), ...memory() }),
      '/broadcast': async () => {
        if (TIMELINE) {
          let streams = 0
          for (const res of contender.responses()) {
            if (res.socket) {
              res.socket[STREAM] = true
              streams++
            }
          }
          timeline.half = streams >> 1
          timeline.halfCpu = undefined
          timeline.times = []
          timeline.ports = []
          timeline.on = true
          timeline.switches = process.resourceUsage().involuntaryContextSwitches
        }
        loop.start()
        cpuAtBroadcast = process.cpuUsage()
        timeline.cpu0 = cpuAtBroadcast
        const t0 = performance.now()
        timeline.t0 = t0
        await contender.broadcast(nextEvent())
        return { syncMs: performance.now() - t0 }
      },
      // Called by the client once every connection has the event: the loop's longest block and the CPU it took.
      '/loop': () => {
        const cpu = process.cpuUsage(cpuAtBroadcast)
        const block = loop.stop()
        const out = { loopMaxMs: block.wall, loopMaxCpuMs: block.cpu, cpuMs: (cpu.user + cpu.system) / 1000 }
        if (TIMELINE) {
          timeline.on = false
          const t = timeline.times
          out.writes = t.length
          if (t.length > 0) {
            out.firstWriteMs = t[0]
            out.medianWriteMs = t[t.length >> 1]
            out.lastWriteMs = t[t.length - 1]
            // The longest pause between two socket writes of the broadcast (a sliced fan-out's turns in between)
            let gap = 0
            for (let i = 1; i < t.length; i++) if (t[i] - t[i - 1] > gap) gap = t[i] - t[i - 1]
            out.maxWriteGapMs = gap
          }
          if (timeline.halfCpu !== undefined) out.medianWriteCpuMs = (timeline.halfCpu.user + timeline.halfCpu.system) / 1000
          out.sysMs = cpu.system / 1000
          // Involuntary context switches during the broadcast: the server taken off its core (other work, kernel threads)
          out.involuntarySwitches = process.resourceUsage().involuntaryContextSwitches - timeline.switches
          if (DUMP) require('node:fs').appendFileSync(DUMP, JSON.stringify({ times: t, ports: timeline.ports }) + '\n')
          timeline.times = []
          timeline.ports = []
        }
        return out
      },
      '/blast': query => blast(Number(query.ms) || 2000, Number(query.burst) || 1),
      '/ping-round': query => pingWindow(Number(query.ms) || 3000)
    },
    connected () {
      sockets++
    }
  }
}

function parseQuery (url) {
  const q = url.indexOf('?')
  return q === -1 ? {} : Object.fromEntries(new URLSearchParams(url.slice(q + 1)))
}

/** Adds the control routes to a Fastify app (the same handlers the plain server calls). */
function fastifyControl (app, control) {
  for (const [path, handler] of Object.entries(control.routes)) {
    app.get(path, async request => handler(request.query))
  }
}

/** Listens on a free loopback port and reports it on stdout for the orchestrator. */
async function listenFastify (app) {
  app.server.requestTimeout = 0
  app.server.headersTimeout = 0
  app.server.keepAliveTimeout = 0
  await app.listen({ port: 0, host: '127.0.0.1', backlog: 4096 })
  process.stdout.write(`listening ${app.server.address().port}\n`)
}

module.exports = { createControl, fastifyControl, listenFastify, nextEvent, parseQuery, PING_MS }
