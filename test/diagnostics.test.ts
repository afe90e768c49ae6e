import { test } from 'tap'
import type { EventSourceAdapter, HttpRequestEventSource } from '../types/index'
import { LocalAdapter } from '../lib/adapters/local'
import redisAdapter from '../lib/adapters/redis'
import { MemoryHistory } from '../lib/history/memory'
import type { HistoryStore, PublishedMessage, ReplayResult } from '../lib/history/history'
import { reader, stalledClient, tick } from './helpers/clients'
import { on, recordChannels } from './helpers/diagnostics'
import { readEvents } from './helpers/read-events'
import { redisReady, redisUrl, uniquePrefix } from './helpers/redis'
import { start, until } from './helpers/server'
import { serveSources } from './helpers/sources'

test('the open channel reports { source } for every stream, identified or not, before anything is written', async t => {
  const seen = recordChannels(t)
  const { url, source } = await serveSources(t)
  const diagnostics = await import('node:diagnostics_channel')
  const headWritten: boolean[] = []
  const onOpen = (m: unknown): void => { headWritten.push((m as { source: HttpRequestEventSource }).source.headersSent) }
  diagnostics.subscribe('fastify-event-sources:open', onOpen)
  t.teardown(() => { diagnostics.unsubscribe('fastify-event-sources:open', onOpen) })
  await reader(t, url, '/sse?id=named')
  const named = await source(0)
  await reader(t, url, '/sse')
  const anonymous = await source(1)
  t.same(on(seen, 'fastify-event-sources:open'), [{ source: named }, { source: anonymous }])
  t.equal(on(seen, 'fastify-event-sources:open')[0].source, named)
  t.equal(named.identifier, 'named')
  t.equal(anonymous.identifier, undefined)
  t.same(headWritten, [false, false])
})

test('the publish channel reports { message } once the in-process adapter accepted it', async t => {
  const seen = recordChannels(t)
  const { app } = await serveSources(t)
  await app.eventSources.publish({ n: 1 }, { event: 'tick', to: 'a' })
  await app.eventSources.publish('plain', { to: { prefix: 'team:' } })
  const published = on(seen, 'fastify-event-sources:publish')
  t.equal(published.length, 2)
  t.match(published[0].message, { data: '{"n":1}', event: 'tick', to: 'a' })
  t.match(published[1].message, { data: 'plain', to: { prefix: 'team:' } })
  t.match(app.eventSources.metrics(), { published: 2, received: 2, delivered: 0 })
})

test('a publish the adapter refuses is not reported on the publish channel nor counted', async t => {
  const seen = recordChannels(t)
  const refusing: EventSourceAdapter = {
    hasHistory: false,
    attach () {},
    publish: async () => { throw new Error('the broker is away') },
    replay: async () => ({ messages: [], gap: false }),
    close: async () => {}
  }
  const { app } = await serveSources(t, { adapter: refusing })
  await t.rejects(app.eventSources.publish('lost'), /the broker is away/)
  t.same(on(seen, 'fastify-event-sources:publish'), [])
  t.match(app.eventSources.metrics(), { published: 0, received: 0 })
})

test('with Redis: the publishing instance reports the publish; every instance counts what it received', async t => {
  if (!redisReady(t)) return
  const seen = recordChannels(t)
  const prefix = uniquePrefix(t)
  const a = await serveSources(t, { adapter: redisAdapter({ url: redisUrl, channelPrefix: prefix }) })
  const b = await serveSources(t, { adapter: redisAdapter({ url: redisUrl, channelPrefix: prefix }) })
  const client = await reader(t, b.url, '/sse?id=reader')
  await b.source(0)
  for (let n = 1; n <= 3; n++) await a.app.eventSources.publish({ n })
  await until(() => client.log.events.length === 3, 3000, 'three messages through Redis')
  await until(() => a.app.eventSources.metrics().received === 3, 3000, 'the publisher to receive its own messages')
  t.equal(on(seen, 'fastify-event-sources:publish').length, 3)
  t.match(a.app.eventSources.metrics(), { published: 3, received: 3, delivered: 0 })
  t.match(b.app.eventSources.metrics(), { published: 0, received: 3, delivered: 3 })
})

test('the replay channel reports { source, replayed, gap } for a replay within history, a gap, and a client already current', async t => {
  const seen = recordChannels(t)
  const { app, url } = await start(t, app => {
    app.get<{ Querystring: { id: string } }>('/sse', async request => {
      const sse = request.getEventSource(request.query.id)
      await sse.keepAlive()
      return sse.close()
    })
  }, { history: { size: 10 } })
  const live = await readEvents(url + '/sse?id=a')
  await until(() => app.eventSources.activeConnections === 1)
  for (let n = 1; n <= 3; n++) await app.eventSources.publish({ n })
  await until(() => live.events.length === 3, 3000, 'three live messages')
  live.close()
  await until(() => app.eventSources.activeConnections === 0)
  const ids = live.events.map(e => e.id as string)

  const resumed = await readEvents(url + '/sse?id=a', { 'last-event-id': ids[0] })
  await until(() => resumed.events.length === 2, 3000, 'the two missed messages')
  resumed.close()
  await until(() => app.eventSources.activeConnections === 0)
  const lost = await readEvents(url + '/sse?id=a', { 'last-event-id': 'gone-1' })
  await until(() => lost.events.length === 4, 3000, 'a reset and every stored message')
  t.equal(lost.events[0].event, 'reset')
  lost.close()
  await until(() => app.eventSources.activeConnections === 0)
  const current = await readEvents(url + '/sse?id=a', { 'last-event-id': ids[2] })
  await until(() => on(seen, 'fastify-event-sources:replay').length === 3, 3000, 'the third replay')
  current.close()

  const replays = on(seen, 'fastify-event-sources:replay')
  t.same(replays.map(r => [r.replayed, r.gap]), [[2, false], [3, true], [0, false]])
  const opened = on(seen, 'fastify-event-sources:open').map(o => o.source)
  t.same(replays.map(r => r.source), opened.slice(1), 'each replay names the stream it was written to')
  t.same(opened.slice(1).map(s => s.replay), [{ replayed: 2, gap: false }, { replayed: 3, gap: true }, { replayed: 0, gap: false }])
  // 3 live, 2 replayed, a reset and 3 replayed, none: 9 events written.
  t.match(app.eventSources.metrics(), { replays: 3, gaps: 1, delivered: 9, published: 3, received: 3 })
})

test('history: false: a reconnect with a Last-Event-ID is a replay that reports a gap, its reset event delivered', async t => {
  const seen = recordChannels(t)
  const { app, url } = await start(t, app => {
    app.get('/sse', async request => {
      const sse = request.getEventSource('a')
      await sse.keepAlive()
      return sse.close()
    })
  }, { history: false })
  const stream = await readEvents(url + '/sse', { 'last-event-id': 'anything' })
  await until(() => stream.events.length === 1, 3000, 'the reset event')
  stream.close()
  t.equal(stream.events[0].event, 'reset')
  const replays = on(seen, 'fastify-event-sources:replay')
  t.same(replays.map(r => [r.replayed, r.gap]), [[0, true]])
  t.match(app.eventSources.metrics(), { replays: 1, gaps: 1, delivered: 1 })
})

/** A memory history whose reads wait for the test: lets it publish while a replay runs. */
class GatedHistory implements HistoryStore {
  inner = new MemoryHistory(100)
  gate: Promise<void> = Promise.resolve()
  open: () => void = () => {}
  append (message: PublishedMessage): string {
    return this.inner.append(message)
  }

  close (): void {
    this.gate = new Promise(resolve => { this.open = resolve })
  }

  async readAfter (lastEventId: string, identifier: string): Promise<ReplayResult> {
    await this.gate
    return this.inner.readAfter(lastEventId, identifier)
  }
}

test('delivered counts once a message published during a replay: the replayed copy, not the live one queued behind it', async t => {
  const seen = recordChannels(t)
  const history = new GatedHistory()
  const { app, url } = await start(t, app => {
    app.get('/sse', async request => {
      const sse = request.getEventSource('a')
      await sse.keepAlive()
      return sse.close()
    })
  }, { adapter: new LocalAdapter(history) })
  const first = await readEvents(url + '/sse')
  await until(() => app.eventSources.activeConnections === 1)
  await app.eventSources.publish('one')
  await until(() => first.events.length === 1)
  first.close()
  await until(() => app.eventSources.activeConnections === 0)

  history.close()
  const resumed = await readEvents(url + '/sse', { 'last-event-id': first.events[0].id as string })
  await until(() => app.eventSources.activeConnections === 1)
  await app.eventSources.publish('two')
  await app.eventSources.publish('three')
  history.open()
  await until(() => resumed.events.length === 2, 3000, 'two and three')
  await until(() => on(seen, 'fastify-event-sources:replay').length === 1)
  resumed.close()
  t.same(resumed.events.map(e => e.data), ['two', 'three'], 'each once')
  t.same(on(seen, 'fastify-event-sources:replay').map(r => [r.replayed, r.gap]), [[2, false]])
  t.match(app.eventSources.metrics(), { delivered: 3, replays: 1, gaps: 0, published: 3, received: 3 })
})

test('the drop channel reports { source, kind } for a message, a comment and a ping not written under slowClient \'drop\'', async t => {
  const seen = recordChannels(t)
  const { app, url, source } = await serveSources(t, { maxBufferedBytes: 8 * 1024, slowClient: 'drop' })
  stalledClient(t, url, '/sse?id=slow')
  const sse = await source(0)
  let sent = 0
  for (let i = 0; i < 40_000; i++) {
    if (sse.bufferedAmount > 4 * 1024) await tick()
    if (!sse.send('x'.repeat(1000))) break
    sent++
  }
  t.equal(sse.droppedMessages, 1)
  t.equal(sse.isActive, true, 'the stream stays open')
  t.equal(sse.comment('y'.repeat(9000)), false)
  sse.withPing(ping => {
    ping.interval = 10
    ping.dataMessage = 'z'.repeat(9000)
    ping.start()
  })
  await until(() => on(seen, 'fastify-event-sources:drop').some(d => d.kind === 'ping'), 3000, 'a dropped ping')
  sse.ping.stop()
  const drops = on(seen, 'fastify-event-sources:drop')
  t.same(drops.slice(0, 2), [{ source: sse, kind: 'message' }, { source: sse, kind: 'comment' }])
  t.ok(drops.slice(2).every(d => d.source === sse && d.kind === 'ping'))
  const pings = drops.length - 2
  t.match(app.eventSources.metrics(), { droppedMessages: 1, droppedComments: 1, droppedPings: pings, delivered: sent })
  t.equal(app.eventSources.metrics().bytes, sse.sentContentLength)
})

test('with no subscriber the channels are silent and the stream works the same', async t => {
  const diagnostics = await import('node:diagnostics_channel')
  t.equal(diagnostics.hasSubscribers('fastify-event-sources:open'), false)
  const { app, url } = await serveSources(t)
  const client = await reader(t, url, '/sse?id=a')
  await until(() => app.eventSources.activeConnections === 1)
  t.equal(app.eventSources.broadcast('hi'), 1)
  await until(() => client.log.events.length === 1)
  t.equal(app.eventSources.metrics().delivered, 1)
})
