import { test } from 'tap'
import type { FastifyServerOptions } from 'fastify'
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import * as http2 from 'node:http2'
import { connect } from 'node:net'
import type { HttpRequestEventSource } from '../types/index'
import { EventLog, reader, stalledClient } from './helpers/clients'
import { activeResources, MB, settledMemory } from './helpers/memory'
import { start, until } from './helpers/server'
import { fillUntilStalled, serveSources } from './helpers/sources'

const BATCHES = 10
const PER_BATCH = 250
const BIG = 'm'.repeat(200_000)
type Mode = 'reset' | 'half-close' | 'mid-message' | 'before-head' | 'reset-idle'
const MODES: Mode[] = ['reset', 'half-close', 'mid-message', 'before-head', 'reset-idle']

/** One client that opens a stream and then goes away in the given way; resolves when its socket is closed. */
function churnClient (port: number, n: number, mode: Mode): Promise<void> {
  return new Promise(resolve => {
    const socket = connect(port, '127.0.0.1')
    socket.on('error', () => {})
    socket.on('close', () => resolve())
    const id = n % 2 === 0 ? `&id=c${n}` : ''
    const big = mode === 'mid-message' ? '&big=1' : ''
    socket.write(`GET /churn?n=${n}${id}${big} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n`)
    if (mode === 'before-head') {
      socket.destroy()
    } else if (mode === 'reset-idle') {
      // Never reads: resets a moment after the request left, whether or not the stream opened by then.
      socket.pause()
      setTimeout(() => socket.resetAndDestroy(), 5 + n % 20)
    } else {
      socket.once('data', () => {
        if (mode === 'reset') socket.resetAndDestroy()
        else if (mode === 'half-close') socket.end()
        else socket.destroy()
      })
    }
  })
}

async function noConnections (server: { getConnections (cb: (err: Error | null, n: number) => void): void }): Promise<void> {
  let open = -1
  await until(() => {
    server.getConnections((err, n) => { if (err === null) open = n })
    return open === 0
  }, 10_000, 'every connection to close')
}

test('thousands of clients resetting, half-closing and dying mid-message leave nothing behind', async t => {
  const warnings: Error[] = []
  const onWarning = (w: Error): void => { warnings.push(w) }
  process.on('warning', onWarning)
  t.teardown(() => { process.off('warning', onWarning) })

  let opened = 0
  const { app } = await start(t, app => {
    app.get<{ Querystring: { id?: string, big?: string } }>('/churn', async request => {
      const sse = request.getEventSource(request.query.id)
      opened++
      sse.flush()
      if (request.query.big === '1') sse.send(BIG)
      await sse.keepAlive()
      return sse.close()
    })
  }, { ping: { interval: 20 }, maxBufferedBytes: 512 * 1024 })
  const port = (app.server.address() as { port: number }).port
  const collection = app.eventSources
  const listeners = { registered: collection.listenerCount('registered'), unregistered: collection.listenerCount('unregistered') }
  const serverListeners = app.server.eventNames().map(name => `${String(name)}:${app.server.listenerCount(name)}`)

  // Warm up the code paths and pools first, so the baseline is not the cold process.
  await Promise.all(MODES.flatMap((mode, i) => Array.from({ length: 20 }, (_, j) => churnClient(port, -(i * 20 + j) - 1, mode))))
  await until(() => collection.openStreams === 0, 10_000, 'the warm-up streams to end')
  await noConnections(app.server)
  const resources = activeResources()
  const baseline = await settledMemory()

  for (let batch = 0; batch < BATCHES; batch++) {
    const clients: Promise<void>[] = []
    for (let i = 0; i < PER_BATCH; i++) {
      const n = batch * PER_BATCH + i
      clients.push(churnClient(port, n, MODES[n % MODES.length]))
    }
    await Promise.all(clients)
  }
  await until(() => collection.openStreams === 0, 10_000, 'every stream to end')
  await noConnections(app.server)

  t.ok(opened >= BATCHES * PER_BATCH * 0.7, `${opened} streams were opened (clients that leave before the head may not get one)`)
  t.equal(collection.openStreams, 0, 'no open stream')
  t.equal(collection.activeConnections, 0, 'the collection is empty')
  t.same(collection.all(), [])
  t.equal(collection.pingTimers, 0, 'no ping timer')
  t.same({ registered: collection.listenerCount('registered'), unregistered: collection.listenerCount('unregistered') }, listeners)
  t.same(app.server.eventNames().map(name => `${String(name)}:${app.server.listenerCount(name)}`), serverListeners, 'no listener left on the server')
  t.same(activeResources(), resources, 'the same handles and timers as before the churn')
  const after = await settledMemory()
  t.comment(`memory after GC: baseline ${(baseline / MB).toFixed(1)} MB, after ${BATCHES * PER_BATCH} clients ${(after / MB).toFixed(1)} MB`)
  // One leaked stream holds its request, reply, socket and for a third of them a 200 kB frame: 2,500 of them are
  // hundreds of MB. 8 MB is noise from compiled code and pools.
  t.ok(after - baseline < 8 * MB, `memory returns near its baseline (${((after - baseline) / MB).toFixed(2)} MB more)`)
  t.same(warnings.map(w => w.name + ': ' + w.message), [], 'no MaxListenersExceededWarning or other warning')
})

test('1,000 clients that never read hold at most maxBufferedBytes each, and readers keep getting every message', async t => {
  const STALLED = 1000
  const READERS = 4
  const ROUNDS = 100
  const BOUND = 16 * 1024
  const payload = 'p'.repeat(2000)
  // Over HTTP/1.1 the kernel would take a few MB per stalled loopback connection before the server buffered a
  // byte (GBs for 1,000); HTTP/2 flow control stops the peer at a 64 KiB window, so the server's own buffering is
  // what is measured.
  const { app, url } = await serveSources(t, { maxBufferedBytes: BOUND, slowClient: 'drop', drainTimeout: 120_000 }, { http2: true } as unknown as FastifyServerOptions)
  const before = await settledMemory()

  const child = spawn(process.execPath, ['-e', `
    const http2 = require('node:http2')
    let ready = 0
    for (let i = 0; i < ${STALLED}; i++) {
      const session = http2.connect(${JSON.stringify(url)})
      session.on('error', () => {})
      const stream = session.request({ ':path': '/sse?id=stalled-' + i })
      stream.on('error', () => {})
      stream.on('response', () => {
        stream.pause()
        if (++ready === ${STALLED}) process.stdout.write('ready\\n')
      })
    }
    process.stdin.resume()
    process.stdin.on('end', () => process.exit(0))
  `], { stdio: ['pipe', 'pipe', 'inherit'] })
  t.teardown(() => { child.kill() })
  await once(child.stdout, 'data')

  const readers: EventLog[] = []
  for (let i = 0; i < READERS; i++) {
    const session = http2.connect(url)
    t.teardown(() => { session.destroy() })
    const log = new EventLog()
    session.request({ ':path': `/sse?id=reader-${i}` }).on('data', (chunk: Buffer) => log.feed(chunk))
    readers.push(log)
  }
  await until(() => app.eventSources.openStreams === STALLED + READERS, 20_000, 'every stream to open')
  const connected = await settledMemory()
  const all = app.eventSources.all()
  const stalled = all.filter(s => s.identifier?.startsWith('stalled-'))
  const readerSources = all.filter(s => s.identifier?.startsWith('reader-'))

  for (let round = 0; round < ROUNDS; round++) {
    // A distinct string per stream and round, so nothing is shared between buffers.
    for (const sse of all) sse.send(`${sse.identifier as string}:${round}:${payload}`)
    await until(() => readerSources.every(s => s.bufferedAmount === 0), 10_000, 'the readers to take the round')
  }
  await until(() => readers.every(log => log.events.length === ROUNDS), 10_000, 'every reader to get every round')
  const loaded = await settledMemory()

  for (const [i, log] of readers.entries()) {
    t.same(log.events.map(e => e.data), Array.from({ length: ROUNDS }, (_, round) => `reader-${i}:${round}:${payload}`), `reader ${i} got every message in order`)
  }
  t.ok(readerSources.every(s => s.droppedMessages === 0 && s.isActive))
  t.ok(stalled.every(s => s.isActive), 'under drop, the stalled streams stay open')
  t.ok(stalled.every(s => s.droppedMessages > 0), 'every stalled stream reached the bound')
  const worst = Math.max(...stalled.map(s => s.bufferedAmount))
  t.ok(worst <= BOUND, `no stalled stream holds more than maxBufferedBytes (worst ${worst})`)
  const held = stalled.reduce((sum, s) => sum + s.bufferedAmount, 0)
  const perConnection = (connected - before) / STALLED
  const budget = STALLED * (BOUND + 32 * 1024)
  t.comment(`1,000 stalled: ${(held / MB).toFixed(1)} MB pending in total; memory after GC ${(before / MB).toFixed(1)} MB empty, ` +
    `${(connected / MB).toFixed(1)} MB connected (${(perConnection / 1024).toFixed(1)} kB per stream), ${(loaded / MB).toFixed(1)} MB loaded; ` +
    `${(ROUNDS * payload.length * STALLED / MB).toFixed(0)} MB were offered to the stalled streams`)
  t.ok(loaded - before < budget, `memory stays under 1000 × (maxBufferedBytes + 32 kB) = ${(budget / MB).toFixed(0)} MB (used ${((loaded - before) / MB).toFixed(1)} MB)`)
  child.stdin.end()
})

test('fastify.close() under load resolves within closeGrace and what was written reaches the readers', async t => {
  const CLOSE_GRACE = 500
  const { app, url, source } = await serveSources(t, { closeGrace: CLOSE_GRACE, drainTimeout: 60_000 })
  const readers = []
  for (let i = 0; i < 5; i++) readers.push(await reader(t, url, `/sse?id=r${i}`))
  for (let i = 0; i < 5; i++) stalledClient(t, url, `/sse?id=s${i}`)
  stalledClient(t, url, '/sse?id=closed')
  await until(() => app.eventSources.openStreams === 11)
  const sources = await Promise.all(Array.from({ length: 11 }, (_, i) => source(i)))
  for (const sse of sources.filter(s => s.identifier?.startsWith('s') || s.identifier === 'closed')) await fillUntilStalled(sse)
  // Ended by its handler, with bytes its peer will never read: shutdown must not wait drainTimeout for it.
  app.eventSources.getByIdentifier('closed')?.close()

  const sent: string[] = []
  for (let i = 0; i < 200; i++) {
    const data = `m${i}`
    if (app.eventSources.broadcast(data) > 0) sent.push(data)
    if (i % 20 === 0) await new Promise(resolve => setImmediate(resolve))
  }
  const started = Date.now()
  await app.close()
  const took = Date.now() - started
  t.ok(took < CLOSE_GRACE + 5000, `close resolved in ${took} ms (closeGrace ${CLOSE_GRACE} ms)`)
  t.ok(sources.every(s => !s.isActive))
  const raw = sources.map(s => s.reply.raw)
  t.same(raw.map(res => res.destroyed || res.writableFinished), Array(11).fill(true), 'no response is left open, not even one its handler had ended')
  t.same(sources.filter(s => s.identifier?.startsWith('r')).map(s => s.closeReason), Array(5).fill('shutdown'))
  await Promise.all(readers.map(r => r.ended))
  for (const [i, r] of readers.entries()) t.same(r.log.events.map(e => e.data), sent, `reader ${i} got every message written before close`)
})

test('an error thrown in a handler after getEventSource ends the stream cleanly and is logged', async t => {
  const logs: { level: number, msg: string, err?: { message: string } }[] = []
  const stream = { write: (line: string) => { logs.push(JSON.parse(line)) } }
  const ended: HttpRequestEventSource[] = []
  const { url } = await start(t, app => {
    app.get('/sync', request => {
      const sse = request.getEventSource()
      ended.push(sse)
      sse.send('a')
      throw new Error('sync boom')
    })
    app.get('/async', async request => {
      const sse = request.getEventSource('x')
      ended.push(sse)
      sse.send('a')
      await new Promise(resolve => setImmediate(resolve))
      throw new Error('async boom')
    })
    app.get('/after-close', async request => {
      const sse = request.getEventSource()
      ended.push(sse)
      sse.send('a')
      sse.close()
      throw new Error('late boom')
    })
    app.get('/plain', async () => ({ ok: true }))
  }, {}, { logger: { level: 'info', stream } })

  for (const path of ['/sync', '/async', '/after-close']) {
    const client = await reader(t, url, path)
    await client.ended
    t.same(client.log.events.map(e => e.data), ['a'], `${path}: what was sent arrives, then the stream ends`)
  }
  t.same(ended.map(s => s.closeReason), ['error', 'error', 'close'])
  const errors = logs.filter(l => l.level >= 50)
  t.same(errors.map(l => l.err?.message), ['sync boom', 'async boom', 'late boom'], 'each error is logged once, at error level')
  const text = JSON.stringify(logs)
  for (const code of ['ERR_HTTP_HEADERS_SENT', 'FST_ERR_REP_ALREADY_SENT', 'already sent']) t.notOk(text.includes(code), `no ${code}`)
  const res = await reader(t, url, '/plain')
  t.equal(res.res.statusCode, 200, 'the server goes on serving')
})
