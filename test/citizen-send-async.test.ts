import { test } from 'tap'
import { ChunkedReader, EventLog, stalledClient, sleep } from './helpers/clients'
import { until } from './helpers/server'
import { serveSources } from './helpers/sources'

const MESSAGE = 'x'.repeat(3000)
// Enough to fill loopback's kernel buffers for one connection several times over.
const COUNT = 3000

test('sendAsync under a small bound never closes a client that reads slowly (issue 11, point 4)', async t => {
  const { url, source } = await serveSources(t, { maxBufferedBytes: 8 * 1024 })
  // Starts stalled, so the kernel buffers fill first, then reads a little at a time: slower than the server sends.
  const socket = stalledClient(t, url, '/sse')
  const log = new EventLog()
  const http = new ChunkedReader(chunk => log.feed(chunk))
  socket.on('data', (bytes: Buffer) => {
    http.push(bytes)
    socket.pause()
    setTimeout(() => socket.resume(), 1).unref()
  })
  socket.on('end', () => http.connectionEnded())
  const sse = await source(0)
  const reading = sleep(200).then(() => socket.resume())
  let sent = 0
  for (let i = 0; i < COUNT; i++) {
    if (!await sse.sendAsync(MESSAGE, { id: String(i) })) break
    sent++
  }
  await reading
  t.equal(sse.closeReason, undefined, 'not closed (no slow-client)')
  t.equal(sent, COUNT, 'every sendAsync resolved true')
  sse.close()
  await until(() => http.ended, 20_000, 'the end of the stream')
  t.equal(log.events.length, COUNT, 'every message arrived')
  t.same(log.events.map(e => e.id).slice(-2), [String(COUNT - 2), String(COUNT - 1)], 'in order, to the last')
  t.ok(log.events.every(e => e.data === MESSAGE), 'intact')
})

test('a sendAsync waiting for the buffer to drain settles when the client leaves', async t => {
  const { url, source } = await serveSources(t, { maxBufferedBytes: 8 * 1024 })
  const socket = stalledClient(t, url, '/sse')
  const sse = await source(0)
  let pending: Promise<boolean> | undefined
  for (let i = 0; i < COUNT && pending === undefined; i++) {
    const p = sse.sendAsync(MESSAGE)
    const settled = await Promise.race([p, sleep(50).then(() => 'waiting' as const)])
    if (settled === 'waiting') pending = p
    else if (settled !== true) throw new Error('refused before the client stalled')
  }
  t.ok(pending, 'a sendAsync waits on the stalled client')
  socket.destroy()
  // true if the kernel took those bytes before the reset was seen, false otherwise: it settles either way.
  t.type(await pending, 'boolean')
  await until(() => !sse.isActive, 3000, 'the source to end')
  t.equal(sse.closeReason, 'client')
})
