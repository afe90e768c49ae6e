import { test } from 'tap'
import type { HttpRequestEventSource } from '../types/index'
import { start, until } from './helpers/server'
import { readEvents, type EventStream } from './helpers/read-events'

const CLIENTS = 300

async function openMany (t: Parameters<typeof start>[0], url: string, n: number): Promise<EventStream[]> {
  const streams: EventStream[] = []
  for (let i = 0; i < n; i += 50) {
    const batch = await Promise.all(Array.from({ length: Math.min(50, n - i) }, (_, j) => readEvents(`${url}/sse/c${i + j}`)))
    for (const s of batch) t.teardown(s.close)
    streams.push(...batch)
  }
  return streams
}

function queued (sources: HttpRequestEventSource[]): number {
  return sources.filter(s => (s as unknown as { _queue: unknown })._queue !== null).length
}

for (const batch of [false, true]) {
  test(`a fan-out cut into slices still gives every source every frame, in order (batch: ${batch})`, async t => {
    const { app, url } = await start(t, app => {
      app.get('/sse/:id', async request => {
        const sse = request.getEventSource((request.params as { id: string }).id)
        sse.flush()
        await sse.keepAlive()
      })
    }, { fanOutSlice: 1, batch })
    const streams = await openMany(t, url, CLIENTS)
    await until(() => app.eventSources.activeConnections === CLIENTS)

    const sources = app.eventSources.all()
    let counted = 0
    for (let i = 0; i < 5; i++) counted += app.eventSources.broadcast(`b${i}`)
    t.equal(counted, 5 * CLIENTS, 'every source took every broadcast')
    t.ok(queued(sources) > 0, 'a 1 ms slice left sources queued for later turns')

    // A direct send to a source still waiting for its share must come after it, and so must a later broadcast.
    const last = sources[sources.length - 1]
    t.ok(last.send('direct'))
    app.eventSources.broadcast('b5')

    await until(() => streams.every(s => s.events.length >= 6), 10_000, 'every frame at every client')
    await until(() => queued(sources) === 0, 3000, 'every queue flushed')
    for (const [i, s] of streams.entries()) {
      const expected = ['b0', 'b1', 'b2', 'b3', 'b4', ...(sources[i] === last ? ['direct'] : []), 'b5']
      const got = s.events.map(e => e.data)
      if (JSON.stringify(got) !== JSON.stringify(expected)) {
        t.same(got, expected, `client ${i} got every frame in order`)
        return
      }
    }
    t.pass(`all ${CLIENTS} clients got every frame in order`)
  })
}

test('closing a source whose share of a fan-out is queued writes that share, then nothing more', async t => {
  const { app, url } = await start(t, app => {
    app.get('/sse/:id', async request => {
      const sse = request.getEventSource((request.params as { id: string }).id)
      sse.flush()
      await sse.keepAlive()
    })
  }, { fanOutSlice: 1 })
  const streams = await openMany(t, url, CLIENTS)
  await until(() => app.eventSources.activeConnections === CLIENTS)
  const sources = app.eventSources.all()
  app.eventSources.broadcast('one')
  const waiting = sources.filter(s => (s as unknown as { _queue: unknown })._queue !== null)
  t.ok(waiting.length > 0, 'some sources are waiting for a later slice')
  const closed = waiting[0]
  closed.close()
  t.equal((closed as unknown as { _queuedBytes: number })._queuedBytes, 0, 'the closed source holds no queued bytes')
  await until(() => streams.filter(s => s.events.length === 1).length >= CLIENTS - 1, 10_000, 'the others to receive it')
  const index = sources.indexOf(closed)
  await streams[index].ended
  app.eventSources.broadcast('two')
  t.same(streams[index].events.map(e => e.data), ['one'], 'close() wrote the queued frame and ended the stream')
  t.equal(app.eventSources.activeConnections, CLIENTS - 1)
})
