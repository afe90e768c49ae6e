import { test, type Test } from 'tap'
import { request } from 'undici'
import type { FastifyInstance } from 'fastify'
import type { HttpRequestEventSource } from '../types/index'
import { reader } from './helpers/clients'
import { start, until } from './helpers/server'
import { serveSources } from './helpers/sources'

test('beyond maxConnections the reply is not hijacked and Fastify answers 503 with Retry-After', async t => {
  const { app, url } = await serveSources(t, { maxConnections: 2, retry: 3000 })
  await reader(t, url, '/sse?id=a')
  await reader(t, url, '/sse')
  await until(() => app.eventSources.openStreams === 2)

  const res = await request(url + '/sse?id=c')
  t.equal(res.statusCode, 503)
  t.equal(res.headers['retry-after'], '3', 'Retry-After in seconds, from the retry option')
  t.match(res.headers['content-type'], /^application\/json/)
  const body = await res.body.json() as { code: string, statusCode: number, message: string }
  t.equal(body.code, 'FST_ERR_SSE_TOO_MANY_CONNECTIONS')
  t.equal(body.statusCode, 503)
  t.match(body.message, /maxConnections 2/)
  t.equal(app.eventSources.openStreams, 2)
  t.equal(app.eventSources.getByIdentifier('c'), undefined)
})

test('the handler can catch the limit error and answer as it likes', async t => {
  let caught: (Error & { code?: string, statusCode?: number }) | undefined
  let hijacked: boolean | undefined
  const { app, url } = await start(t, app => {
    app.get('/sse', async (request, reply) => {
      let sse: HttpRequestEventSource
      try {
        sse = request.getEventSource()
      } catch (err) {
        caught = err as Error
        hijacked = reply.sent
        return reply.code(429).send({ busy: true })
      }
      await sse.keepAlive()
      return sse.close()
    })
  }, { maxConnections: 1 })
  await reader(t, url, '/sse')
  await until(() => app.eventSources.openStreams === 1)

  const res = await request(url + '/sse')
  t.equal(res.statusCode, 429)
  t.same(await res.body.json(), { busy: true })
  t.ok(res.headers['retry-after'], 'Retry-After was already set on the reply')
  t.equal(caught?.code, 'FST_ERR_SSE_TOO_MANY_CONNECTIONS')
  t.equal(caught?.statusCode, 503)
  t.equal(hijacked, false, 'the reply was not hijacked')
})

test('unidentified streams count toward maxConnections', async t => {
  const { url } = await serveSources(t, { maxConnections: 1 })
  await reader(t, url, '/sse')
  t.equal((await reader(t, url, '/sse')).res.statusCode, 503)
  t.equal((await reader(t, url, '/sse?id=x')).res.statusCode, 503)
})

test('maxConnections 0 refuses every stream', async t => {
  const { url } = await serveSources(t, { maxConnections: 0 })
  t.equal((await reader(t, url, '/sse')).res.statusCode, 503)
})

/** Opens a stream and returns its status and, when open, the source. */
async function open (t: Test, app: FastifyInstance, url: string, sources: HttpRequestEventSource[], path: string, headers: Record<string, string> = {}): Promise<number> {
  const before = sources.length
  const client = await reader(t, url, path, headers)
  if (client.res.statusCode === 200) await until(() => sources.length > before)
  return client.res.statusCode ?? 0
}

test('a stream the client closes frees its slot at once', async t => {
  const { app, url, sources } = await serveSources(t, { maxConnections: 1 })
  const first = await reader(t, url, '/sse')
  await until(() => sources.length === 1)
  t.equal((await reader(t, url, '/sse')).res.statusCode, 503)
  first.close()
  await until(() => !sources[0].isActive)
  t.equal(app.eventSources.openStreams, 0, 'the slot is free as soon as the source ends')
  t.equal(await open(t, app, url, sources, '/sse'), 200)
})

test('a stream the server closes frees its slot synchronously', async t => {
  const { app, url, sources } = await serveSources(t, { maxConnections: 1 })
  await reader(t, url, '/sse')
  await until(() => sources.length === 1)
  sources[0].close()
  t.equal(app.eventSources.openStreams, 0)
  t.equal(await open(t, app, url, sources, '/sse'), 200)
})

test('a slow-client ending frees the slot too', async t => {
  const { app, url, sources } = await serveSources(t, { maxConnections: 1, maxBufferedBytes: 1024 })
  await reader(t, url, '/sse')
  await until(() => sources.length === 1)
  sources[0].send('x'.repeat(2048))
  t.equal(sources[0].closeReason, 'slow-client')
  t.equal(app.eventSources.openStreams, 0)
  t.equal(await open(t, app, url, sources, '/sse'), 200)
})

test('maxConnectionsPerKey counts streams per connectionKey', async t => {
  const { app, url, sources } = await serveSources(t, {
    maxConnectionsPerKey: 2,
    connectionKey: request => String(request.headers['x-user'])
  })
  const alice = { 'x-user': 'alice' }
  t.equal(await open(t, app, url, sources, '/sse', alice), 200)
  t.equal(await open(t, app, url, sources, '/sse', alice), 200)
  const refused = await request(url + '/sse', { headers: alice })
  t.equal(refused.statusCode, 503)
  t.ok(refused.headers['retry-after'])
  const body = await refused.body.json() as { code: string, message: string }
  t.equal(body.code, 'FST_ERR_SSE_TOO_MANY_CONNECTIONS')
  t.match(body.message, /maxConnectionsPerKey 2/)
  t.equal(await open(t, app, url, sources, '/sse', { 'x-user': 'bob' }), 200, 'another key has its own slots')

  sources.find(s => s.request.headers['x-user'] === 'alice')?.close()
  t.equal(await open(t, app, url, sources, '/sse', alice), 200, 'a closed stream gives its key a slot back')
  t.equal(app.eventSources.openStreams, 3)
})

test('without connectionKey, maxConnectionsPerKey counts per client IP', async t => {
  const { app, url, sources } = await serveSources(t, { maxConnectionsPerKey: 1 })
  t.equal(await open(t, app, url, sources, '/sse'), 200)
  t.equal((await reader(t, url, '/sse')).res.statusCode, 503)
  t.equal(sources[0].request.ip, '127.0.0.1')
  t.equal(app.eventSources.openStreams, 1)
})

test('limits do not count a refused request', async t => {
  const { app, url, sources } = await serveSources(t, { maxConnections: 1, maxConnectionsPerKey: 1 })
  await open(t, app, url, sources, '/sse')
  for (let i = 0; i < 5; i++) t.equal((await reader(t, url, '/sse')).res.statusCode, 503)
  sources[0].close()
  t.equal(await open(t, app, url, sources, '/sse'), 200)
  t.equal(app.eventSources.openStreams, 1)
})

test('an empty connectionKey is a key like any other: it cannot bypass maxConnectionsPerKey', async t => {
  const { app, url, sources } = await serveSources(t, {
    maxConnectionsPerKey: 1,
    connectionKey: request => String(request.headers['x-user'] ?? '')
  })
  t.equal(await open(t, app, url, sources, '/sse'), 200)
  t.equal((await reader(t, url, '/sse')).res.statusCode, 503)
  t.equal(app.eventSources.openStreams, 1)
  sources[0].close()
  t.equal(await open(t, app, url, sources, '/sse'), 200, 'and its slot is given back')
})
