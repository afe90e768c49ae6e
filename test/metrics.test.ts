import { test } from 'tap'
import { CLOSE_REASONS, Metrics } from '../lib/metrics'
import type { CloseReason, EventSourcesMetrics } from '../types/index'
import { reader, type Reader } from './helpers/clients'
import { until } from './helpers/server'
import { serveSources } from './helpers/sources'

function closes (counts: Partial<Record<CloseReason, number>>): Record<CloseReason, number> {
  const all = {} as Record<CloseReason, number>
  for (const reason of CLOSE_REASONS) all[reason] = counts[reason] ?? 0
  return all
}

const ZERO: EventSourcesMetrics = {
  openStreams: 0,
  activeConnections: 0,
  topics: 0,
  runs: 0,
  opened: 0,
  published: 0,
  received: 0,
  delivered: 0,
  bytes: 0,
  droppedMessages: 0,
  droppedPings: 0,
  droppedComments: 0,
  replays: 0,
  gaps: 0,
  closes: closes({})
}

test('a fresh instance reads zero everywhere, every close reason included', async t => {
  const { app } = await serveSources(t)
  t.same(app.eventSources.metrics(), ZERO)
})

for (const batch of [false, true]) {
  test(`metrics() matches what the streams did, exactly (batch: ${batch})`, async t => {
    const { app, url, source, sources } = await serveSources(t, { retry: 100, batch })
    const clients: Reader[] = []
    for (const path of ['/sse?id=a', '/sse?id=b', '/sse?id=team:c', '/sse']) {
      clients.push(await reader(t, url, path))
      await source(clients.length - 1)
    }
    const [a, b, c, anonymous] = sources
    const es = app.eventSources
    t.match(es.metrics(), { openStreams: 4, activeConnections: 3, opened: 4, topics: 0, runs: 0 })

    t.equal(a.send('one'), true)
    t.equal(a.send({ two: 2 }, { event: 'json' }), true)
    t.equal(anonymous.send('to the anonymous one'), true)
    t.equal(a.comment('not an event'), true)
    t.equal(es.broadcast('everyone'), 3)
    t.equal(es.broadcast('some', { filter: id => id.startsWith('team:') }), 1)
    await es.publish('published to all')
    await es.publish('to b', { to: 'b' })
    await es.publish('to the team', { to: { prefix: 'team:' } })
    await es.publish('to nobody', { to: 'nobody' })
    b.withPing(ping => { ping.interval = 5; ping.start() })
    await until(() => clients[1].log.comments.length >= 3, 3000, 'three pings')
    b.ping.stop()

    const delivered = 2 + 1 + 3 + 1 + 3 + 1 + 1
    await until(() => clients.reduce((n, client) => n + client.log.events.length, 0) === delivered, 3000, 'every event at its client')
    const m = es.metrics()
    t.equal(m.delivered, delivered, 'sends, each source a fan-out reached; no pings or comments')
    t.equal(m.published, 4)
    t.equal(m.received, 4)
    t.equal(m.bytes, sources.reduce((n, s) => n + s.sentContentLength, 0), 'bytes is the sum of every source\'s sentContentLength')
    // A ping written as the third arrived may still be on its way.
    await until(() => clients.reduce((n, client) => n + client.bytes, 0) === m.bytes, 3000, 'the clients to read every byte')
    t.equal(es.metrics().bytes, m.bytes, 'nothing written since')
    t.same(m.closes, closes({}))

    clients[0].close()
    await until(() => !a.isActive)
    c.close()
    await until(() => es.openStreams === 2)
    t.match(es.metrics(), { openStreams: 2, activeConnections: 1, closes: closes({ client: 1, close: 1 }) })
    await app.close()
    const end = es.metrics()
    t.match(end, { openStreams: 0, activeConnections: 0, opened: 4, delivered, closes: closes({ client: 1, close: 1, shutdown: 2 }) })
    t.ok(b.sentContentLength > 0 && anonymous.sentContentLength > 0)
  })
}

test('metrics() is a snapshot: changing it changes nothing, and counters only grow', async t => {
  const { app, url, source } = await serveSources(t)
  await reader(t, url, '/sse?id=a')
  const sse = await source(0)
  const first = app.eventSources.metrics()
  first.delivered = 100
  first.closes.close = 100
  sse.send('x')
  const second = app.eventSources.metrics()
  t.equal(second.delivered, 1)
  t.equal(second.closes.close, 0)
  t.not(second, app.eventSources.metrics())
})

test('each plugin instance counts its own streams', async t => {
  const one = await serveSources(t)
  const two = await serveSources(t)
  await reader(t, one.url, '/sse?id=a')
  await one.source(0)
  one.app.eventSources.broadcast('x')
  t.match(one.app.eventSources.metrics(), { openStreams: 1, opened: 1, delivered: 1 })
  t.match(two.app.eventSources.metrics(), { openStreams: 0, opened: 0, delivered: 0 })
})

test('topics and runs read the accessors the collection fills, 0 until then', async t => {
  const metrics = new Metrics({ openStreams: () => 2 })
  t.match(metrics.snapshot(), { openStreams: 2, activeConnections: 0, topics: 0, runs: 0 })
  metrics.gauges.topics = () => 3
  metrics.gauges.runs = () => 1
  t.match(metrics.snapshot(), { topics: 3, runs: 1 })
})
