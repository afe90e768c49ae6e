import tap, { test } from 'tap'
import type { FastifyInstance } from 'fastify'
import redisAdapter from '../lib/adapters/redis'
import { openRaw } from './helpers/raw'
import { start, until } from './helpers/server'
import { freePort, hasRedisServer, startRedis, stopRedis } from './helpers/redis-server'

function routes (app: FastifyInstance): void {
  app.get<{ Querystring: { id: string, topic: string } }>('/sse', async request => {
    const sse = request.getEventSource(request.query.id, { topics: request.query.topic })
    sse.flush()
    await sse.keepAlive()
    return sse.close()
  })
}

async function eventually<T> (ask: () => Promise<T>, ok: (value: T) => boolean, what: string): Promise<void> {
  const deadline = Date.now() + 10_000
  for (;;) {
    const value = await ask().catch(() => undefined)
    if (value !== undefined && ok(value)) return
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}; last ${JSON.stringify(value)}`)
    await new Promise(resolve => setTimeout(resolve, 50))
  }
}

if (!hasRedisServer) {
  tap.plan(0, 'redis-server is not installed: the presence restart test needs its own server')
} else {
  test('Redis restarted without its data: presence and counts come back, joins and leaves made while it was down included', async t => {
    const port = await freePort()
    let server = await startRedis(port)
    t.teardown(() => stopRedis(server))
    const url = `redis://127.0.0.1:${port}`
    const options = { url, channelPrefix: 'fes-presence-restart:', publishTimeout: 500, presence: { heartbeat: 200, flush: 20 } }
    const a = await start(t, routes, { adapter: redisAdapter(options) })
    const b = await start(t, routes, { adapter: redisAdapter(options) })
    const alice = await openRaw(t, `${a.url}/sse?id=alice&topic=room:1`)
    await eventually(() => b.app.eventSources.presence('room:1'), ids => ids.length === 1, 'alice seen from b')

    await stopRedis(server)
    await t.rejects(b.app.eventSources.presence('room:1'), { code: 'FST_ERR_SSE_ADAPTER' }, 'no answer rather than a wrong one')
    t.same(await a.app.eventSources.count('alice').catch(() => 'rejected'), 'rejected')
    // While Redis is away: one leave and one join on a.
    alice.abort()
    await until(() => a.app.eventSources.openStreams === 0)
    await openRaw(t, `${a.url}/sse?id=bob&topic=room:1`)
    await until(() => a.app.eventSources.openStreams === 1)

    server = await startRedis(port)
    await eventually(() => b.app.eventSources.presence('room:1'), ids => ids.length === 1 && ids[0] === 'bob', 'bob, and not alice, seen from b')
    t.pass('the state written again is the state now')
    t.equal(await b.app.eventSources.count(), 1)
    t.equal(await b.app.eventSources.count('alice'), 0)
    t.equal(await b.app.eventSources.count({ topic: 'room:1' }), 1)
  })
}
