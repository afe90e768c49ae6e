import http2 from 'node:http2'
import Fastify, { type FastifyInstance } from 'fastify'
import { test } from 'tap'
import { request } from 'undici'
import eventSources from '../lib/index'
import type { CloseReason, HttpRequestEventSource } from '../types/index'
import { reader, sleep, stalledClient } from './helpers/clients'
import { readToEnd } from './helpers/raw'
import { start, until } from './helpers/server'

type LogLine = Record<string, unknown> & { level: number, msg?: string, err?: { message?: string } }

function captureLog (): { lines: LogLine[], logger: { level: string, stream: { write: (line: string) => void } } } {
  const lines: LogLine[] = []
  return { lines, logger: { level: 'debug', stream: { write: line => { lines.push(JSON.parse(line)) } } } }
}

test('a client that left before getEventSource() gets an ended source that frees its slot (issue 11, point 2)', async t => {
  let open: () => void = () => {}
  const gate = new Promise<void>(resolve => { open = resolve })
  const sources: HttpRequestEventSource[] = []
  const keys: unknown[] = []
  const completed: string[] = []
  const { app, url } = await start(t, app => {
    app.addHook('onResponse', async request => { completed.push(request.url) })
    app.get<{ Querystring: { wait?: string, id?: string } }>('/sse', async request => {
      if (request.query.wait !== undefined) await gate // an auth lookup, say
      const sse = request.getEventSource(request.query.id)
      sources.push(sse)
      await sse.keepAlive()
      return sse.close()
    })
  }, { maxConnections: 2, maxConnectionsPerKey: 2, connectionKey: request => { keys.push(request.ip); return request.ip } })

  const live = await reader(t, url, '/sse?id=keep')
  await until(() => sources.length === 1)
  // Two clients ask, then leave while their handlers still await.
  for (const id of ['gone-1', 'gone-2']) {
    const controller = new AbortController()
    const pending = request(`${url}/sse?wait=1&id=${id}`, { signal: controller.signal }).catch(() => {})
    await sleep(20)
    controller.abort()
    await pending
  }
  await sleep(20)
  open()
  await until(() => sources.length === 3, 3000, 'the two late handlers')
  const late = sources.slice(1)
  await Promise.all(late.map(s => s.keepAlive()))
  t.same(late.map(s => [s.isActive, s.closeReason]), [[false, 'client'], [false, 'client']], 'ended at once, reason client')
  t.equal(app.eventSources.openStreams, 1, 'only the live stream holds a slot')
  t.equal(app.eventSources.getByIdentifier('keep'), sources[0], 'no abandoned request registered')
  t.notOk(keys.includes(undefined), 'never counted under a gone address')

  const next = await reader(t, url, '/sse?id=next')
  t.equal(next.res.statusCode, 200, 'a later client still gets a stream')
  await until(() => app.eventSources.openStreams === 2)
  t.same(completed.filter(u => u.includes('gone')).sort(), ['/sse?wait=1&id=gone-1', '/sse?wait=1&id=gone-2'], 'onResponse ran for both abandoned requests')
  live.close()
  next.close()
})

test('a registered listener that throws is logged; the stream opens and the other listeners run (issue 11, point 3)', async t => {
  const log = captureLog()
  const seen: string[] = []
  const { app, url } = await start(t, app => {
    app.get('/sse', async request => {
      const sse = request.getEventSource('listened')
      sse.send('hello')
      await sse.keepAlive()
      return sse.close()
    })
  }, {}, { logger: log.logger })
  app.eventSources.on('registered', () => { throw new Error('listener bug') })
  app.eventSources.on('registered', source => { seen.push('+' + String(source.identifier)) })
  app.eventSources.on('unregistered', () => { throw new Error('leave bug') })
  app.eventSources.on('unregistered', source => { seen.push('-' + String(source.identifier)) })

  const client = await reader(t, url, '/sse')
  t.equal(client.res.statusCode, 200)
  t.equal(client.res.headers['content-type'], 'text/event-stream; charset=utf-8')
  await until(() => client.log.events.length === 1, 3000, 'the first event')
  t.equal(client.log.events[0].data, 'hello', 'the handler got its source')
  const sse = app.eventSources.getByIdentifier('listened') as HttpRequestEventSource
  t.ok(sse.isActive)
  sse.close()
  await client.ended
  await until(() => app.eventSources.openStreams === 0)
  t.same(seen, ['+listened', '-listened'], 'the other listeners ran')
  t.same(log.lines.filter(l => l.level >= 40).map(l => [l.level, l.msg, l.err?.message]), [
    [50, "an event source 'registered' listener threw", 'listener bug'],
    [50, "an event source 'unregistered' listener threw", 'leave bug']
  ])
})

test('onResponse runs once for every end of a stream (issue 11, point 6)', async t => {
  const ended: Array<[string, CloseReason | undefined]> = []
  const { app, url } = await start(t, app => {
    app.addHook('onResponse', async (request) => {
      const sse = (request as unknown as { sse?: HttpRequestEventSource }).sse
      ended.push([request.url, sse?.closeReason])
    })
    app.get<{ Params: { how: string } }>('/sse/:how', async request => {
      const sse = request.getEventSource(request.params.how)
      ;(request as unknown as { sse: HttpRequestEventSource }).sse = sse
      const how = request.params.how
      if (how === 'close') {
        sse.send('bye')
        return sse.close()
      }
      if (how === 'timeout') await sse.waitForFail(10)
      else if (how === 'throw') throw new Error('handler bug')
      else if (how === 'slow') sse.send('x'.repeat(4096))
      await sse.keepAlive()
      return sse.close()
    })
  }, { maxBufferedBytes: 1024 })
  await readToEnd(t, url + '/sse/close')
  await readToEnd(t, url + '/sse/timeout')
  await readToEnd(t, url + '/sse/throw')
  const client = await reader(t, url, '/sse/client')
  await until(() => app.eventSources.openStreams === 1)
  client.close()
  stalledClient(t, url, '/sse/slow')
  const replaced = await reader(t, url, '/sse/replaced')
  await until(() => app.eventSources.getByIdentifier('replaced') !== undefined)
  const again = await reader(t, url, '/sse/replaced')
  await replaced.ended
  const shutdown = await reader(t, url, '/sse/shutdown')
  await until(() => ended.length === 6, 3000, 'six onResponse calls')
  await app.close()
  await Promise.all([shutdown.ended, again.ended])
  const byUrl = Object.fromEntries(ended.map(([u, reason]) => [u.slice(5), reason]))
  t.same(byUrl, { close: 'close', timeout: 'timeout', throw: 'error', client: 'client', slow: 'slow-client', replaced: 'shutdown', shutdown: 'shutdown' })
  t.equal(ended.length, 8, 'once each: the replaced source and its successor both ended')
  t.same(ended.filter(([u]) => u === '/sse/replaced').map(([, r]) => r), ['replaced', 'shutdown'])
})

test('a route of a context registered before the plugin gets FST_ERR_SSE_ADAPTER (issue 11, point 6)', async t => {
  const app = Fastify()
  app.register(async child => {
    child.get('/early', async request => {
      const sse = request.getEventSource()
      return sse.close()
    })
  })
  app.register(eventSources)
  t.teardown(() => app.close())
  await app.listen({ port: 0, host: '127.0.0.1' })
  const res = await request(`http://127.0.0.1:${(app.server.address() as { port: number }).port}/early`)
  t.equal(res.statusCode, 500)
  const body = await res.body.json() as { code: string, message: string }
  t.equal(body.code, 'FST_ERR_SSE_ADAPTER')
  t.match(body.message, /routed before registration\?/)
})

test('inject() on a stream route: payloadAsStream reads the first events, an abort signal ends the stream (issue 11, point 6)', async t => {
  const app = Fastify()
  await app.register(eventSources)
  let completed = 0
  app.addHook('onResponse', async () => { completed++ })
  app.get('/sse', async request => {
    const sse = request.getEventSource('injected')
    sse.send('one')
    sse.send('two')
    await sse.keepAlive()
    return sse.close()
  })
  t.teardown(() => app.close())
  const controller = new AbortController()
  const res = await app.inject({ method: 'GET', url: '/sse', payloadAsStream: true, signal: controller.signal })
  t.equal(res.statusCode, 200)
  t.equal(res.headers['content-type'], 'text/event-stream; charset=utf-8')
  let text = ''
  for await (const chunk of res.stream()) {
    text += String(chunk)
    if (text.includes('two')) break
  }
  t.equal(text, 'data: one\n\ndata: two\n\n')
  const sse = app.eventSources.getByIdentifier('injected') as HttpRequestEventSource
  controller.abort()
  await sse.keepAlive()
  t.equal(sse.closeReason, 'client')
  t.equal(app.eventSources.openStreams, 0)
  t.equal(completed, 1, 'onResponse ran')
})

test('inject() on a stream route the handler closes: the whole payload, without payloadAsStream', async t => {
  const app = Fastify()
  await app.register(eventSources)
  app.get('/sse', async request => {
    const sse = request.getEventSource()
    sse.send('only')
    return sse.close()
  })
  t.teardown(() => app.close())
  const res = await app.inject('/sse')
  t.equal(res.payload, 'data: only\n\n')
})

test('HTTP/2: a stream the client reset before getEventSource() gets an ended source and takes no slot (issue 11, point 2)', async t => {
  let open: () => void = () => {}
  const gate = new Promise<void>(resolve => { open = resolve })
  const sources: HttpRequestEventSource[] = []
  const app = Fastify({ http2: true }) as unknown as FastifyInstance
  await app.register(eventSources, { maxConnections: 1 })
  app.get('/sse', async request => {
    await gate
    const sse = request.getEventSource('h2')
    sources.push(sse)
    await sse.keepAlive()
    return sse.close()
  })
  t.teardown(() => app.close())
  await app.listen({ port: 0, host: '127.0.0.1' })
  const session = http2.connect(`http://127.0.0.1:${(app.server.address() as { port: number }).port}`)
  session.on('error', () => {})
  t.teardown(() => { session.destroy() })
  const stream = session.request({ ':path': '/sse' })
  stream.on('error', () => {})
  await sleep(20)
  stream.close(http2.constants.NGHTTP2_CANCEL)
  await sleep(20)
  open()
  await until(() => sources.length === 1, 3000, 'the late handler')
  await sources[0].keepAlive()
  t.equal(sources[0].closeReason, 'client')
  t.equal(app.eventSources.openStreams, 0, 'no slot held')
  t.equal(app.eventSources.getByIdentifier('h2'), undefined)
})
