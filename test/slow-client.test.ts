import { test } from 'tap'
import type { Socket } from 'node:net'
import type { FastifyEventSourcesOptions, HttpRequestEventSource } from '../types/index'
import { ChunkedReader, EventLog, reader, stalledClient, tick } from './helpers/clients'
import { until } from './helpers/server'
import { fillUntilStalled, frameBytes, serveSources } from './helpers/sources'

const MAX = 8 * 1024
const MESSAGE = 'x'.repeat(1000)
// Far more than loopback's kernel buffers absorb for one connection (a few MB).
const LIMIT = 40_000

/**
 * Sends until `send` refuses. Node corks a response's socket until the end of the tick, so a message that would
 * not fit waits one turn of the loop first: it is refused only if the kernel did not take what was pending.
 */
async function fill (sse: HttpRequestEventSource, max: number, make: (i: number) => string = () => MESSAGE): Promise<{ accepted: string[], before: number, peak: number }> {
  const accepted: string[] = []
  let peak = 0
  for (let i = 0; i < LIMIT; i++) {
    const data = make(i)
    if (sse.bufferedAmount + frameBytes(data) > max) await tick()
    const before = sse.bufferedAmount
    if (!sse.send(data)) return { accepted, before, peak }
    accepted.push(data)
    peak = Math.max(peak, sse.bufferedAmount)
  }
  throw new Error('the stalled client never filled up')
}

/** Sends while the next message leaves `room` bytes under `max`, until the kernel is full and that stops. */
async function fillNear (sse: HttpRequestEventSource, max: number, room: number): Promise<void> {
  for (let i = 0; i < LIMIT; i++) {
    if (sse.bufferedAmount + frameBytes(MESSAGE) + room > max) {
      await tick()
      if (sse.bufferedAmount + frameBytes(MESSAGE) + room > max) return
    }
    if (!sse.send(MESSAGE)) throw new Error('refused before the bound')
  }
  throw new Error('the stalled client never filled up')
}

/** A source whose client has stalled, filled by fillNear to just under MAX with 200 bytes to spare. */
async function nearTheBound (t: Parameters<typeof serveSources>[0], options: FastifyEventSourcesOptions = {}): Promise<HttpRequestEventSource> {
  const { url, source } = await serveSources(t, { maxBufferedBytes: MAX, ...options })
  stalledClient(t, url, '/sse')
  const sse = await source(0)
  await fillNear(sse, MAX, 200)
  return sse
}

function resumeInto (socket: Socket): { http: ChunkedReader, log: EventLog } {
  const log = new EventLog()
  const http = new ChunkedReader(chunk => log.feed(chunk))
  socket.on('data', (bytes: Buffer) => http.push(bytes))
  socket.resume()
  return { http, log }
}

test("slowClient 'close' ends a client that stops reading once buffered bytes would pass maxBufferedBytes", async t => {
  const { app, url, source } = await serveSources(t, { maxBufferedBytes: MAX })
  stalledClient(t, url, '/sse?id=stalled')
  const sse = await source(0)
  const unregistered: HttpRequestEventSource[] = []
  app.eventSources.on('unregistered', s => unregistered.push(s))
  const kept = sse.keepAlive()
  const failed = sse.waitForFail(60_000)

  const { accepted, before, peak } = await fill(sse, MAX)
  t.ok(accepted.length * frameBytes(MESSAGE) > 256 * 1024, `the kernel took ${accepted.length} messages first`)
  t.ok(before <= MAX && before + frameBytes(MESSAGE) > MAX, `refused at ${before} pending bytes, the message would pass ${MAX}`)
  // Each accepted write fit under the bound; HTTP/1.1 chunk framing adds a few bytes per write on top.
  t.ok(peak <= MAX + 16, `never held more than the bound (peak ${peak})`)
  t.equal(sse.isActive, false)
  t.equal(sse.closeReason, 'slow-client')
  t.equal(sse.signal.reason, 'slow-client')
  t.equal(app.eventSources.getByIdentifier('stalled'), undefined, 'left the collection')
  t.same(unregistered, [sse])
  t.equal(app.eventSources.openStreams, 0)
  await Promise.all([kept, failed])
  t.equal(sse.send('late'), false)
  await until(() => sse.bufferedAmount === 0, 5000, 'the socket buffer to be released')
})

test("slowClient 'drop' discards and counts messages past the bound, keeps the source, and delivers exactly what it accepted", async t => {
  const { app, url, source } = await serveSources(t, { maxBufferedBytes: MAX, slowClient: 'drop' })
  const socket = stalledClient(t, url, '/sse?id=slow')
  const sse = await source(0)

  const { accepted: sent } = await fill(sse, MAX, i => `m${i}-` + MESSAGE)
  for (let i = 0; i < 49; i++) t.equal(sse.send(`dropped ${i}-` + MESSAGE), false, 'dropped', { diagnostic: false })
  t.equal(sse.droppedMessages, 50)
  t.equal(sse.isActive, true)
  t.equal(app.eventSources.getByIdentifier('slow'), sse, 'still in the collection')
  t.ok(sse.bufferedAmount > 0 && sse.bufferedAmount <= MAX + 16, `bufferedAmount ${sse.bufferedAmount} is what is pending`)
  t.equal(await sse.sendAsync('also dropped' + MESSAGE), false, 'sendAsync resolves false for a dropped message')
  t.equal(sse.droppedMessages, 51)

  const { log } = resumeInto(socket)
  await until(() => log.events.length >= sent.length, 10_000, 'the accepted messages')
  t.same(log.events.map(e => e.data), sent, 'every accepted message, in order, and none of the dropped ones')
  await until(() => sse.bufferedAmount === 0, 5000, 'the buffer to empty')
  t.equal(sse.send('after'), true)
  await until(() => log.events.length === sent.length + 1)
  t.equal(log.events.at(-1)?.data, 'after')
})

test("broadcast under 'drop': stalled HTTP/1.1 clients hold at most the bound while readers get every message", async t => {
  const BOUND = 64 * 1024
  const { app, url, sources } = await serveSources(t, { maxBufferedBytes: BOUND, slowClient: 'drop' })
  for (let i = 0; i < 10; i++) stalledClient(t, url, `/sse?id=stalled-${i}`)
  const readers = await Promise.all(Array.from({ length: 3 }, (_, i) => reader(t, url, `/sse?id=reader-${i}`)))
  await until(() => sources.length === 13)
  const readerSources = sources.filter(s => s.identifier?.startsWith('reader-'))
  const stalled = sources.filter(s => s.identifier?.startsWith('stalled-'))

  // Enough to fill the kernel's buffers of every stalled connection (a few MB each on loopback) and then some.
  const sent: string[] = []
  let delivered = 0
  for (let round = 0; round < 400 && !stalled.every(s => s.droppedMessages >= 50); round++) {
    for (let i = 0; i < 8; i++) {
      const data = `${round}.${i}:` + 'b'.repeat(2000)
      delivered += app.eventSources.broadcast(data)
      sent.push(data)
    }
    await until(() => readerSources.every(s => s.bufferedAmount === 0), 5000, 'the readers to take the round')
  }
  const dropped = stalled.reduce((n, s) => n + s.droppedMessages, 0)
  t.equal(delivered + dropped, sent.length * sources.length, 'broadcast counted every source that took a message, and only those')
  t.ok(stalled.every(s => s.droppedMessages >= 50), `every stalled client reached the bound and had messages dropped (${sent.length} sent)`)
  t.ok(stalled.every(s => s.isActive && s.bufferedAmount <= BOUND + 16), 'each stalled client holds at most the bound, and stays')
  await until(() => readers.every(r => r.log.events.length === sent.length), 10_000, 'the readers to get everything')
  for (const r of readers) t.same(r.log.events.map(e => e.data), sent, 'a reader got every message, in order')
  t.ok(readerSources.every(s => s.droppedMessages === 0))
})

test('a single message larger than maxBufferedBytes counts as passing it', async t => {
  t.test("'close' ends the source, even for a client that reads", async t => {
    const { url, source } = await serveSources(t, { maxBufferedBytes: MAX })
    const client = await reader(t, url, '/sse')
    const sse = await source(0)
    t.equal(sse.bufferedAmount, 0)
    t.equal(sse.send('y'.repeat(MAX)), false)
    t.equal(sse.closeReason, 'slow-client')
    await client.ended
    t.same(client.log.events, [], 'nothing of it reached the client')
  })
  t.test("'drop' drops it and the next message goes through", async t => {
    const { url, source } = await serveSources(t, { maxBufferedBytes: MAX, slowClient: 'drop' })
    const client = await reader(t, url, '/sse')
    const sse = await source(0)
    t.equal(sse.send('y'.repeat(MAX)), false)
    t.equal(sse.droppedMessages, 1)
    t.equal(sse.isActive, true)
    t.equal(sse.send('small'), true)
    await until(() => client.log.events.length === 1)
    t.same(client.log.events.map(e => e.data), ['small'])
  })
})

test("comments obey the bound: under 'close' a comment past it ends the source", async t => {
  const sse = await nearTheBound(t)
  const room = MAX - sse.bufferedAmount
  t.equal(sse.comment('c'.repeat(room)), false)
  t.equal(sse.closeReason, 'slow-client')
})

test("comments obey the bound: under 'drop' a comment past it is dropped, not counted as a message", async t => {
  const sse = await nearTheBound(t, { slowClient: 'drop' })
  const written = sse.sentContentLength
  t.equal(sse.comment('c'.repeat(MAX - sse.bufferedAmount)), false)
  t.equal(sse.comment('fits'), true)
  t.equal(sse.isActive, true)
  t.equal(sse.droppedMessages, 0)
  // A socket already holding bytes gets the comment from the queue, on the next tick.
  await tick()
  t.equal(sse.sentContentLength, written + Buffer.byteLength(': fits\n\n'))
})

test("a ping past the bound ends the source under 'close'", async t => {
  const sse = await nearTheBound(t)
  const room = MAX - sse.bufferedAmount
  sse.withPing(ping => {
    ping.interval = 10
    ping.dataMessage = 'p'.repeat(room)
    ping.start()
  })
  await until(() => !sse.isActive, 5000, 'the ping to end the source')
  t.equal(sse.closeReason, 'slow-client')
})

test("a dropped ping does not end the source under 'drop'", async t => {
  // A ping larger than the room a refused message leaves, so every round must be dropped.
  const { app, url, source } = await serveSources(t, { maxBufferedBytes: MAX, slowClient: 'drop', ping: { interval: 10, dataMessage: 'b'.repeat(2000) } })
  stalledClient(t, url, '/sse')
  const stalled = await source(0)
  await fill(stalled, MAX)
  const written = stalled.sentContentLength
  // A reader in the same ping group shows that ping rounds went by: each one also tried the stalled source.
  const witness = await reader(t, url, '/sse')
  await until(() => witness.log.comments.length >= 5, 5000, 'five ping rounds')
  t.equal(stalled.isActive, true)
  t.equal(stalled.sentContentLength, written, 'no ping was written past the bound')
  t.equal(stalled.droppedMessages, 1, 'pings are not counted as dropped messages')
  t.equal(app.eventSources.pingTimers, 1)
})

test('bufferedAmount includes frames the plugin queued and returns to 0 once they are written', async t => {
  const { url, source } = await serveSources(t, { batch: true })
  const client = await reader(t, url, '/sse')
  const sse = await source(0)
  sse.send('a')
  sse.send('bb')
  sse.comment('c')
  t.equal(sse.bufferedAmount, frameBytes('a') + frameBytes('bb') + Buffer.byteLength(': c\n\n'))
  await until(() => client.log.events.length === 2)
  await until(() => sse.bufferedAmount === 0)
  t.same(client.log.events.map(e => e.data), ['a', 'bb'])
})

test('sendAsync resolves true at once when the socket takes the message', async t => {
  const { url, source } = await serveSources(t)
  const client = await reader(t, url, '/sse')
  const sse = await source(0)
  t.equal(await sse.sendAsync('one'), true)
  await until(() => client.log.events.length === 1)
  t.equal(client.log.events[0].data, 'one')
})

test('a producer awaiting sendAsync never trips the bound on a client that reads, even a bound under the socket high-water mark', async t => {
  for (const max of [4 * 1024, 64 * 1024]) {
    const { url, source } = await serveSources(t, { maxBufferedBytes: max })
    const client = await reader(t, url, '/sse')
    const sse = await source(0)
    let accepted = 0
    for (let i = 0; i < 1000; i++) if (await sse.sendAsync(`${i}:` + MESSAGE)) accepted++
    t.equal(accepted, 1000, `maxBufferedBytes ${max}: every message accepted`)
    t.equal(sse.isActive, true)
    await until(() => client.log.events.length === 1000)
    t.equal(client.log.events[999].data, '999:' + MESSAGE)
  }
})

/** Calls sendAsync until one stays pending after a turn of the loop: the socket needs a drain. Wrapped, or await would wait for it. */
async function sendUntilPending (sse: HttpRequestEventSource): Promise<{ pending: Promise<boolean> }> {
  const big = 'z'.repeat(16 * 1024)
  for (let i = 0; i < 2000; i++) {
    let settled = false
    const pending = sse.sendAsync(big)
    pending.then(() => { settled = true }, () => { settled = true })
    await tick()
    if (!settled) return { pending }
  }
  throw new Error('sendAsync never waited for a drain')
}

test('sendAsync waits for the drain of a client that stopped reading, and resolves true once it reads', async t => {
  const { url, source } = await serveSources(t, { maxBufferedBytes: 1024 * 1024, slowClient: 'drop' })
  const socket = stalledClient(t, url, '/sse')
  const sse = await source(0)
  const { pending } = await sendUntilPending(sse)
  t.ok(sse.bufferedAmount > 0, 'something is pending')
  resumeInto(socket)
  t.equal(await pending, true)
  t.equal(sse.isActive, true)
})

test('sendAsync resolves false when the source ends first', async t => {
  t.test('closed by the server', async t => {
    const { url, source } = await serveSources(t, { maxBufferedBytes: 1024 * 1024 })
    stalledClient(t, url, '/sse')
    const sse = await source(0)
    const { pending } = await sendUntilPending(sse)
    sse.close()
    t.equal(await pending, false)
  })
  t.test('the client goes away', async t => {
    const { url, source } = await serveSources(t, { maxBufferedBytes: 1024 * 1024 })
    const socket = stalledClient(t, url, '/sse')
    const sse = await source(0)
    const { pending } = await sendUntilPending(sse)
    socket.destroy()
    t.equal(await pending, false)
    t.equal(sse.closeReason, 'client')
  })
  t.test('sendAsync on an ended source', async t => {
    const { url, source } = await serveSources(t)
    await reader(t, url, '/sse')
    const sse = await source(0)
    sse.close()
    t.equal(await sse.sendAsync('late'), false)
  })
})

for (const slowClient of ['close', 'drop'] as const) {
  test(`drainTimeout ends a source that send filled and that never drains, with reason 'drain-timeout' (slowClient '${slowClient}')`, async t => {
    const { app, url, source } = await serveSources(t, { maxBufferedBytes: 1024 * 1024, drainTimeout: 300, slowClient })
    stalledClient(t, url, '/sse?id=d')
    const sse = await source(0)
    const kept = sse.keepAlive()
    // Past the socket's high-water mark a write asks for a drain; once the kernel is full it never comes.
    await fillUntilStalled(sse, 64 * 1024, MESSAGE)
    t.equal(sse.droppedMessages, 0, 'the bound (1 MiB) was never reached')
    t.ok(sse.bufferedAmount > 64 * 1024, 'the socket holds more than its high-water mark')
    await kept
    t.equal(sse.closeReason, 'drain-timeout')
    t.equal(app.eventSources.getByIdentifier('d'), undefined)
  })
}

test('drainTimeout ends a source that sendAsync filled; the pending sendAsync resolves false', async t => {
  const { url, source } = await serveSources(t, { maxBufferedBytes: 1024 * 1024, drainTimeout: 300 })
  stalledClient(t, url, '/sse')
  const sse = await source(0)
  const { pending } = await sendUntilPending(sse)
  t.equal(await pending, false)
  t.equal(sse.closeReason, 'drain-timeout')
})

test('a stream ended by close() whose peer never reads its last bytes is cut after drainTimeout', async t => {
  for (const pending of [1024, 64 * 1024]) {
    const { url, source } = await serveSources(t, { drainTimeout: 300 })
    stalledClient(t, url, '/sse')
    const sse = await source(0)
    await fillUntilStalled(sse, pending, MESSAGE)
    sse.close()
    t.equal(sse.closeReason, 'close')
    await until(() => sse.reply.raw.destroyed, 5000, `the socket to be cut (${pending} bytes pending)`)
    t.pass(`cut with ${pending} bytes pending`)
  }
})

test('a dead peer is noticed through socket close at once, without a write', async t => {
  t.test('the client closes', async t => {
    const { app, url, source } = await serveSources(t)
    const client = await reader(t, url, '/sse?id=gone')
    const sse = await source(0)
    client.close()
    await until(() => !sse.isActive, 5000, 'the close to be noticed')
    t.equal(sse.closeReason, 'client')
    t.equal(sse.sentContentLength, 0, 'no write was needed to notice')
    t.equal(app.eventSources.activeConnections, 0)
  })
  t.test('the client resets the connection', async t => {
    const { url, source } = await serveSources(t)
    const socket = stalledClient(t, url, '/sse')
    const sse = await source(0)
    sse.flush()
    socket.resetAndDestroy()
    await until(() => !sse.isActive, 5000, 'the reset to be noticed')
    t.equal(sse.closeReason, 'client')
  })
})
