import { test } from 'tap'
import { connect } from 'node:net'
import { activeResources, MB, settledMemory } from './helpers/memory'
import { start, until } from './helpers/server'

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
