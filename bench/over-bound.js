'use strict'

// A broadcast that pushes every client past maxBufferedBytes (issue 11, point 5): how long broadcast() blocks and
// the longest the loop stalls until every over-bound client has been ended, next to a broadcast that fits.
// Clients and server share one process, so the longest turn includes the clients' close events.
// 2-core shared machine, 3000 clients, fanOutSlice 10, two runs each: before (every over-bound client ended inside
// broadcast()) the broadcast blocked 66-117 ms and the longest turn was 250-433 ms (all the close events at once);
// after, the broadcast returns in 9-22 ms and the longest turn is 26-40 ms, the ends spread over ~300-400 ms.
// node bench/over-bound.js [clients=3000] [fanOutSlice=10]   (after npm run build)

const { connect } = require('node:net')
const { performance } = require('node:perf_hooks')
const Fastify = require('fastify')
const eventSources = require('../dist/index.js')

const CLIENTS = Number(process.argv[2]) || 3000
const SLICE = Number(process.argv[3]) || 10
const BOUND = 4096

async function main () {
  const app = Fastify()
  await app.register(eventSources, { maxBufferedBytes: BOUND, fanOutSlice: SLICE })
  app.get('/sse/:id', async request => {
    const sse = request.getEventSource(request.params.id)
    sse.flush()
    await sse.keepAlive()
    return sse.close()
  })
  await app.listen({ port: 0, host: '127.0.0.1' })
  const { port } = app.server.address()
  const sockets = []
  for (let i = 0; i < CLIENTS; i++) {
    const socket = connect(port, '127.0.0.1')
    socket.on('error', () => {})
    socket.on('data', () => {})
    socket.write(`GET /sse/c${i} HTTP/1.1\r\nHost: x\r\n\r\n`)
    sockets.push(socket)
    if (i % 200 === 199) await new Promise(resolve => setTimeout(resolve, 20))
  }
  while (app.eventSources.activeConnections < CLIENTS) await new Promise(resolve => setTimeout(resolve, 20))

  const fits = 'x'.repeat(100)
  let t0 = performance.now()
  app.eventSources.broadcast(fits)
  const fitMs = performance.now() - t0
  await new Promise(resolve => setTimeout(resolve, 200))

  // The longest the loop went without a turn, the broadcast's own run included.
  let last = performance.now()
  let maxGap = 0
  let spinning = true
  const spin = () => {
    const now = performance.now()
    maxGap = Math.max(maxGap, now - last)
    last = now
    if (spinning) setImmediate(spin)
  }
  await new Promise(resolve => setImmediate(resolve))
  last = performance.now()
  setImmediate(spin)
  t0 = performance.now()
  app.eventSources.broadcast('x'.repeat(BOUND * 2))
  const overMs = performance.now() - t0
  const leftAfterReturn = app.eventSources.activeConnections
  while (app.eventSources.activeConnections > 0) await new Promise(resolve => setImmediate(resolve))
  const allEndedMs = performance.now() - t0
  // The sockets' close events land on later turns of the loop, in the server as in the clients: count them in.
  while (sockets.some(socket => !socket.destroyed)) await new Promise(resolve => setImmediate(resolve))
  const allClosedMs = performance.now() - t0
  spinning = false

  console.log(JSON.stringify({
    clients: CLIENTS,
    fanOutSlice: SLICE,
    broadcastThatFitsMs: +fitMs.toFixed(1),
    broadcastPastTheBoundMs: +overMs.toFixed(1),
    stillToEndWhenItReturned: leftAfterReturn,
    allEndedAfterMs: +allEndedMs.toFixed(1),
    allClosedAfterMs: +allClosedMs.toFixed(1),
    longestTurnMs: +maxGap.toFixed(1)
  }))
  for (const socket of sockets) socket.destroy()
  await app.close()
}

main().catch(err => { console.error(err); process.exit(1) })
