import tap, { test } from 'tap'
import type { FastifyInstance } from 'fastify'
import { Redis } from 'ioredis'
import redisAdapter from '../lib/adapters/redis'
import { start, until } from './helpers/server'
import { Client } from './helpers/redis'
import { freePort, hasRedisServer, startRedis, stopRedis } from './helpers/redis-server'

function routes (app: FastifyInstance): void {
  app.get('/events/:id', async request => {
    const sse = request.getEventSource((request.params as { id: string }).id)
    await sse.keepAlive()
    return sse.close()
  })
}

if (!hasRedisServer) {
  tap.plan(0, 'redis-server is not installed: the Redis restart test needs its own server')
} else {
  test('Redis stopped and restarted mid-stream: no crash, publish fails while it is down, delivery resumes, streams stay open', async t => {
    const failures: unknown[] = []
    const record = (err: unknown): void => { failures.push(err) }
    process.on('unhandledRejection', record)
    t.teardown(() => { process.off('unhandledRejection', record) })

    const port = await freePort()
    let server = await startRedis(port)
    t.teardown(() => stopRedis(server))
    const url = `redis://127.0.0.1:${port}`
    const prefix = `fes-restart:${process.pid}:`
    const a = await start(t, routes, { adapter: redisAdapter({ url, channelPrefix: prefix, publishTimeout: 500 }) })
    const user = new Redis(url)
    user.on('error', () => {})
    t.teardown(() => { user.disconnect() })
    const b = await start(t, routes, { adapter: redisAdapter({ client: user, channelPrefix: prefix, publishTimeout: 500 }) })
    const clients = [new Client(t, a.url + '/events/on-a'), new Client(t, b.url + '/events/on-b')]
    await until(() => a.app.eventSources.activeConnections === 1 && b.app.eventSources.activeConnections === 1)
    await a.app.eventSources.publish('before')
    await until(() => clients.every(c => c.data.includes('before')))

    await stopRedis(server)
    await t.rejects(a.app.eventSources.publish('while down'), { code: 'FST_ERR_SSE_PUBLISH_FAILED' }, 'fails at once on the connection the adapter opened')
    // Sent before the client notices the loss, a command is resent on reconnect: that outcome is unknown (a timeout).
    await until(() => user.status !== 'ready', 5000, 'the user client to notice')
    await t.rejects(b.app.eventSources.publish('while down'), { code: 'FST_ERR_SSE_PUBLISH_FAILED', message: /not connected/ }, 'also through a user client, which would queue it')
    await new Promise(resolve => setTimeout(resolve, 300))

    server = await startRedis(port)
    // Resubscription takes a reconnect attempt or two: publish until both instances deliver again.
    const deadline = Date.now() + 10_000
    let probes = 0
    while (!clients.every(c => c.data.some(d => d.startsWith('probe')))) {
      if (Date.now() > deadline) throw new Error('delivery did not resume within 10 s')
      await a.app.eventSources.publish(`probe ${++probes}`).catch(() => {})
      await new Promise(resolve => setTimeout(resolve, 100))
    }
    t.pass(`delivery resumed after ${probes} probe(s)`)
    await a.app.eventSources.publish('after')
    await b.app.eventSources.publish('after b')
    await until(() => clients.every(c => c.data.includes('after b')), 5000, 'the last message')

    for (const client of clients) {
      t.equal(client.opens, 1, 'the client never had to reconnect')
      t.equal(client.errors, 0)
      t.same(client.data.filter(d => !d.startsWith('probe')), ['before', 'after', 'after b'])
    }
    t.equal(a.app.eventSources.getByIdentifier('on-a')?.isActive, true)
    t.equal(b.app.eventSources.getByIdentifier('on-b')?.isActive, true)
    t.same(failures, [], 'no unhandled rejection')
  })

  test('a publish that Redis does not answer fails after publishTimeout instead of hanging', async t => {
    const port = await freePort()
    const server = await startRedis(port)
    t.teardown(() => stopRedis(server))
    const { app } = await start(t, routes, { adapter: redisAdapter({ url: `redis://127.0.0.1:${port}`, channelPrefix: 'fes-stall:', publishTimeout: 300 }) })
    server.kill('SIGSTOP')
    t.teardown(() => { server.kill('SIGCONT') })
    const began = Date.now()
    await t.rejects(app.eventSources.publish('unanswered'), { code: 'FST_ERR_SSE_PUBLISH_FAILED', message: /did not answer within 300 ms/ })
    t.ok(Date.now() - began < 5000, 'bounded')
    server.kill('SIGCONT')
  })
}
