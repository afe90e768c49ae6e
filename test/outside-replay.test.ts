import { test } from 'tap'
import type { AdapterHost, EventSourceAdapter, HttpRequestEventSource, PublishedMessage, ReplayResult } from '../types/index'
import { ChunkedReader, EventLog, stalledClient } from './helpers/clients'
import { readEvents } from './helpers/read-events'
import { start, until } from './helpers/server'

/** An adapter of the user's own (the documented seam) whose replay read is answered when the test says. */
class HeldReplayAdapter implements EventSourceAdapter {
  readonly hasHistory = true
  host: AdapterHost | undefined
  answer: ((result: ReplayResult) => void) | undefined

  attach (host: AdapterHost): void {
    this.host = host
  }

  async publish (message: PublishedMessage): Promise<void> {
    this.host?.deliver(message)
  }

  replay (): Promise<ReplayResult> {
    return new Promise(resolve => { this.answer = resolve })
  }

  async close (): Promise<void> {}
}

test('stream() started while a replay runs is not stuck when the only queued live copy is covered by the replay', async t => {
  const adapter = new HeldReplayAdapter()
  const m5: PublishedMessage = { data: 'm5', id: '1-5', position: '1-5' }
  let streamed: number | undefined
  const { url } = await start(t, app => {
    app.get('/sse', async request => {
      const sse = request.getEventSource('a')
      // The live copy of m5 arrives before the history read answers (two connections, as with Redis): it waits behind the replay.
      adapter.host?.deliver({ ...m5 })
      const piping = sse.stream(['tok1', 'tok2'])
      adapter.answer?.({ messages: [{ ...m5 }], gap: false, latestId: '1-5', position: '1-5' })
      streamed = await piping
      sse.send('done')
      await sse.keepAlive()
      return sse.close()
    })
  }, { adapter })
  const client = await readEvents(url + '/sse', { 'last-event-id': '1-4' })
  t.teardown(client.close)
  await until(() => client.events.some(e => e.data === 'done'), 5000, 'stream() to resolve and the handler to go on')
  t.equal(streamed, 2)
  t.same(client.events.map(e => e.data), ['m5', 'tok1', 'tok2', 'done'], 'm5 once (replayed), then the producer, in order')
})

for (const batch of [false, true]) {
  test(`a registered listener's own send on a reconnect waits behind the replay, as the handler's do (batch: ${batch})`, async t => {
    const { app, url } = await start(t, app => {
      app.get('/sse', async request => {
        const sse = request.getEventSource('a')
        sse.send('handler')
        await sse.keepAlive()
        return sse.close()
      })
    }, { batch })
    app.eventSources.on('registered', source => {
      if (source.lastEventId !== undefined) source.send('welcome')
    })
    for (let i = 1; i <= 3; i++) await app.eventSources.publish(`m${i}`, { to: 'a' })
    // An id the history does not hold: the reset event, then everything held for 'a'.
    const client = await readEvents(url + '/sse', { 'last-event-id': 'nope-0' })
    t.teardown(client.close)
    await until(() => client.events.some(e => e.data === 'handler'), 5000, 'the replay and the sends')
    t.same(client.events.map(e => e.event ?? e.data), ['reset', 'm1', 'm2', 'm3', 'welcome', 'handler'],
      'the replay first, then the listener\'s send, then the handler\'s')
  })
}

for (const slowClient of ['close', 'drop'] as const) {
  test(`a replay larger than maxBufferedBytes does not count against it: a live message while it drains is kept (slowClient: ${slowClient})`, async t => {
    const bound = 64 * 1024
    let source: HttpRequestEventSource | undefined
    const { app, url } = await start(t, app => {
      app.get('/sse', async request => {
        const sse = source = request.getEventSource('a')
        await sse.keepAlive()
        return sse.close()
      })
    }, { maxBufferedBytes: bound, slowClient, history: { size: 1000 } })
    // 16 MB of history for 'a': more than the kernel's buffers take, so most of the replay waits in the socket's.
    const big = 'x'.repeat(16 * 1024)
    for (let i = 0; i < 1000; i++) await app.eventSources.publish(`${i} ${big}`, { to: 'a' })
    const socket = stalledClient(t, url, '/sse', { 'last-event-id': 'nope-0' })
    await until(() => source?.replay !== undefined && source.bufferedAmount > bound, 10000, 'the replay to be written and held')
    await app.eventSources.publish('live', { to: 'a' })
    // The client reads now, as a client just back from an outage does.
    const log = new EventLog()
    const reader = new ChunkedReader(chunk => log.feed(chunk))
    socket.on('data', (bytes: Buffer) => reader.push(bytes))
    socket.resume()
    await until(() => log.events.some(e => e.data === 'live') || source?.isActive !== true ||
      (log.events.length >= 1001 && source.bufferedAmount === 0), 20000, 'the live message, or the end of the stream')
    t.equal(source?.closeReason, undefined, 'the stream is still open')
    t.equal(source?.droppedMessages, 0, 'nothing dropped')
    const data = log.events.map(e => e.data)
    t.equal(data.length, 1002, 'the reset, the 1000 replayed, then the live one')
    t.equal(data[1000]?.slice(0, 4), '999 ')
    t.equal(data[1001], 'live')
  })
}

for (const where of ['handler', 'registered listener'] as const) {
  test(`a send then close() during a replay still writes the send (a terminate event to a reconnecting client, from the ${where})`, async t => {
    const { app, url } = await start(t, app => {
      app.get('/sse', async request => {
        const sse = request.getEventSource('a')
        if (where === 'handler') {
          sse.send('bye', { event: 'terminate' })
          return sse.close()
        }
        await sse.keepAlive()
        return sse.close()
      })
    })
    if (where === 'registered listener') {
      app.eventSources.on('registered', source => {
        source.send('bye', { event: 'terminate' })
        source.close()
      })
    }
    await app.eventSources.publish('m0', { to: 'a' })
    const resumes: Record<string, string>[] = [{}, { 'last-event-id': 'nope-0' }]
    for (const headers of resumes) {
      const client = await readEvents(url + '/sse', headers)
      await client.ended
      // Published messages queued behind the unfinished replay are not written: the client asks again from its own id.
      t.same(client.events.map(e => [e.event, e.data]), [['terminate', 'bye']], JSON.stringify(headers))
    }
  })
}
