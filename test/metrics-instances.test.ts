import tap, { test } from 'tap'
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

if (redisReady(tap)) {
  test('metrics() on two instances with disjoint audiences: received, delivered and published as issue 14 defines them', async t => {
    const prefix = uniquePrefix(t)
    const a = await start(t, routes, { adapter: redisAdapter({ url: redisUrl, channelPrefix: prefix }) })
    const b = await start(t, routes, { adapter: redisAdapter({ url: redisUrl, channelPrefix: prefix }) })
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
    await until(() => alice.events.length === 2 && bob.events.length === 3, 5000, 'every client to get its messages')
    // Both instances have received all five once the last one published has come back to each.
    await until(() => a.app.eventSources.metrics().received - before[0].received === 5 && b.app.eventSources.metrics().received - before[1].received === 5, 5000, 'every message received')

    const [ma, mb] = [a.app.eventSources.metrics(), b.app.eventSources.metrics()]
    t.same(alice.events.map(e => e.data), ['a1', 'a2'], 'alice gets exactly hers')
    t.same(bob.events.map(e => e.data), ['b-from-a', 'b1', 'b2'], 'bob gets exactly his')
    t.equal(ma.published - before[0].published, 3, 'published: what this instance published')
    t.equal(mb.published - before[1].published, 2)
    t.equal(ma.delivered - before[0].delivered, 2, 'delivered: events written to this instance\'s sources')
    t.equal(mb.delivered - before[1].delivered, 3)
    // Without selective routing every instance receives every message, its own included: received counts
    // what came from the adapter, not what this instance's audience needed (that is 2 and 3).
    t.equal(ma.received - before[0].received, 5, 'received: every message from the adapter, own publishes included')
    t.equal(mb.received - before[1].received, 5)
    t.equal(ma.topics, 1, 'the topics gauge reads this instance\'s topic index')
    t.equal(mb.topics, 1)
  })
}
