import tap, { test, type Test } from 'tap'
import type { FastifyInstance } from 'fastify'
import redisAdapter from '../lib/adapters/redis'
import { openRaw } from './helpers/raw'
import { redisReady, redisUrl, uniquePrefix } from './helpers/redis'
import { start, until } from './helpers/server'

function routes (app: FastifyInstance): void {
  app.get<{ Querystring: { id: string, topic: string } }>('/sse', async request => {
    const sse = request.getEventSource(request.query.id, { topics: request.query.topic })
    sse.flush()
    await sse.keepAlive()
    return sse.close()
  })
}

async function disjoint (t: Test, routing: 'selective' | 'all'): Promise<void> {
  const prefix = uniquePrefix(t)
  const a = await start(t, routes, { adapter: redisAdapter({ url: redisUrl, channelPrefix: prefix, routing }) })
  const b = await start(t, routes, { adapter: redisAdapter({ url: redisUrl, channelPrefix: prefix, routing }) })
  // a serves alice (room:a), b serves bob (room:b): no client follows anything on both.
  const alice = await openRaw(t, `${a.url}/sse?id=alice&topic=room:a`)
  const bob = await openRaw(t, `${b.url}/sse?id=bob&topic=room:b`)
  await until(() => a.app.eventSources.openStreams === 1 && b.app.eventSources.openStreams === 1)
  const before = [a.app.eventSources.metrics(), b.app.eventSources.metrics()]

  await a.app.eventSources.publish('a1', { to: 'alice' })
  await a.app.eventSources.publish('a2', { to: { topic: 'room:a' } })
  await a.app.eventSources.publish('b-from-a', { to: { topic: 'room:b' } })
  await b.app.eventSources.publish('b1', { to: 'bob' })
  await b.app.eventSources.publish('b2', { to: { topic: 'room:b' } })
  await a.app.eventSources.publish('all')
  await until(() => alice.events.length === 3 && bob.events.length === 4, 5000, 'every client to get its messages')
  // Selective: each instance receives its audience's messages and the one to everyone; otherwise all six.
  const expected = routing === 'selective' ? [3, 4] : [6, 6]
  await until(() => a.app.eventSources.metrics().received - before[0].received >= expected[0] && b.app.eventSources.metrics().received - before[1].received >= expected[1], 5000, 'every message received')
  // Anything received late would show here.
  await new Promise(resolve => setTimeout(resolve, 100))

  const [ma, mb] = [a.app.eventSources.metrics(), b.app.eventSources.metrics()]
  t.same(alice.events.map(e => e.data), ['a1', 'a2', 'all'], 'alice gets exactly hers')
  t.same(bob.events.map(e => e.data), ['b-from-a', 'b1', 'b2', 'all'], 'bob gets exactly his')
  t.equal(ma.published - before[0].published, 4, 'published: what this instance published')
  t.equal(mb.published - before[1].published, 2)
  t.equal(ma.delivered - before[0].delivered, 3, 'delivered: events written to this instance\'s sources')
  t.equal(mb.delivered - before[1].delivered, 4)
  t.equal(ma.received - before[0].received, expected[0], `received (${routing}): what came from the adapter, own publishes included`)
  t.equal(mb.received - before[1].received, expected[1])
  t.equal(ma.topics, 1, 'the topics gauge reads this instance\'s topic index')
  t.equal(mb.topics, 1)
}

if (redisReady(tap)) {
  test('metrics() on two instances with disjoint audiences, selective routing (the default): each receives only what it delivers', async t => {
    await disjoint(t, 'selective')
  })

  test('metrics() on two instances with disjoint audiences, routing \'all\': each receives every message', async t => {
    await disjoint(t, 'all')
  })
}
