import { test } from 'tap'
import type { AdapterHost, EventSourceAdapter, PublishedMessage, ReplayResult } from '../types/index'
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
