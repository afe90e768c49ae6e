import { readFileSync } from 'node:fs'
import http2, { type ClientHttp2Session, type ClientHttp2Stream, type IncomingHttpHeaders, type ServerHttp2Session } from 'node:http2'
import path from 'node:path'
import { createParser, type EventSourceMessage } from 'eventsource-parser'
import Fastify, { type FastifyInstance } from 'fastify'
import { test, type Test } from 'tap'
import { Agent, request } from 'undici'
import { buildDemo } from '../examples/app'
import eventSources from '../lib/index'
import type { FastifyEventSourcesOptions, HttpRequestEventSource } from '../types/index'
import { browserAvailable, launchChromium } from './helpers/browser'
import { until } from './helpers/server'

const tlsDir = path.join(__dirname, 'fixtures', 'tls')
const key = readFileSync(path.join(tlsDir, 'key.pem'))
const cert = readFileSync(path.join(tlsDir, 'cert.pem'))

// RFC 9113 §8.2.2: an HTTP/2 message carrying any of these is malformed.
const CONNECTION_SPECIFIC = ['connection', 'keep-alive', 'transfer-encoding', 'upgrade', 'proxy-connection']

interface H2 { app: FastifyInstance, url: string, session: ClientHttp2Session }

async function startH2 (t: Test, tls: boolean, routes: (app: FastifyInstance) => void, options: FastifyEventSourcesOptions = {}, allowHTTP1 = false): Promise<H2> {
  // Fastify's instance type is generic over the server; the routes only need the common surface.
  const app = (tls ? Fastify({ http2: true, https: { key, cert, allowHTTP1 } }) : Fastify({ http2: true })) as unknown as FastifyInstance
  await app.register(eventSources, options)
  routes(app)
  t.teardown(() => app.close())
  const url = await app.listen({ port: 0, host: '127.0.0.1' })
  const session = http2.connect(url, tls ? { ca: cert, servername: 'localhost' } : {})
  session.on('error', () => {})
  t.teardown(() => { session.destroy() })
  return { app, url, session }
}

interface H2Stream {
  stream: ClientHttp2Stream
  headers: Promise<IncomingHttpHeaders>
  events: EventSourceMessage[]
  ended: Promise<void>
}

function open (session: ClientHttp2Session, path: string): H2Stream {
  const stream = session.request({ ':path': path, accept: 'text/event-stream' })
  stream.on('error', () => {})
  const events: EventSourceMessage[] = []
  const parser = createParser({ onEvent: event => events.push(event) })
  stream.setEncoding('utf8')
  stream.on('data', (text: string) => parser.feed(text))
  return {
    stream,
    events,
    headers: new Promise(resolve => stream.once('response', resolve)),
    ended: new Promise(resolve => stream.once('close', resolve))
  }
}

/** GET /sse/:id opens a source under that identifier, kept in `sources`, that sends its head and waits. */
function routeById (app: FastifyInstance, sources: Map<string, HttpRequestEventSource>): void {
  app.get('/sse/:id', async req => {
    const id = (req.params as { id: string }).id
    const sse = req.getEventSource(id)
    sources.set(id, sse)
    sse.flush()
    await sse.keepAlive()
    return sse.close()
  })
}

/** A stream whose source has sent its head alone and waits for the test to drive it. */
async function openFlushed (t: Test): Promise<{ source: HttpRequestEventSource, s: H2Stream }> {
  let source: HttpRequestEventSource | undefined
  const { session } = await startH2(t, false, app => {
    app.get('/sse', async req => {
      source = req.getEventSource()
      source.flush()
      await source.keepAlive()
      return source.close()
    })
  })
  const s = open(session, '/sse')
  await s.headers
  return { source: source as HttpRequestEventSource, s }
}

for (const tls of [false, true]) {
  const name = tls ? 'HTTP/2 over TLS' : 'HTTP/2 cleartext (h2c)'

  test(`${name}: events arrive as sent and the head has no connection-specific header`, async t => {
    const { session } = await startH2(t, tls, app => {
      app.get('/sse', async (req, reply) => {
        // Valid on HTTP/1.1 (a global hook may well set them), forbidden on HTTP/2: the plugin must drop them.
        reply.header('keep-alive', 'timeout=60')
        reply.header('upgrade', 'websocket')
        reply.header('proxy-connection', 'keep-alive')
        reply.header('x-from-hook', 'kept')
        const sse = req.getEventSource('h2')
        sse.send('line 1\r\nline 2 ✓')
        sse.send({ n: 1 }, { event: 'named', id: '42' })
        return sse.close()
      })
    }, { headers: { 'x-plugin': 'yes' }, retry: 1500 })
    const s = open(session, '/sse')
    const headers = await s.headers
    await s.ended
    t.equal(headers[':status'], 200)
    t.match(headers, {
      'content-type': 'text/event-stream; charset=utf-8',
      'cache-control': /no-cache/,
      'x-accel-buffering': 'no',
      'x-from-hook': 'kept',
      'x-plugin': 'yes'
    })
    t.same(CONNECTION_SPECIFIC.filter(h => h in headers), [], 'no connection-specific header')
    t.same(s.events.map(e => [e.event, e.id, e.data]), [
      [undefined, undefined, 'line 1\nline 2 ✓'],
      ['named', '42', '{"n":1}']
    ])
  })
}

test('HTTP/2: each event arrives before the next is sent', async t => {
  const { source, s } = await openFlushed(t)
  t.equal(s.events.length, 0, 'flush() sends the head alone')
  for (let i = 1; i <= 5; i++) {
    source.send(`event ${i}`)
    await until(() => s.events.length === i, 3000, `event ${i}`)
    t.equal(s.events[i - 1].data, `event ${i}`)
  }
})

test('HTTP/2: many streams share one session, a broadcast reaches each, and a cancelled stream leaves the collection', async t => {
  const sessions = new Set<ServerHttp2Session>()
  const sources = new Map<string, HttpRequestEventSource>()
  const { app, session } = await startH2(t, false, app => {
    app.addHook('onRequest', async req => {
      sessions.add((req.raw as unknown as { stream: { session: ServerHttp2Session } }).stream.session)
    })
    routeById(app, sources)
  })
  const streams = Array.from({ length: 10 }, (_, i) => open(session, `/sse/s${i}`))
  await Promise.all(streams.map(s => s.headers))
  t.equal(sessions.size, 1, 'one session on the server')
  t.equal(app.eventSources.broadcast('to all'), 10)
  await until(() => streams.every(s => s.events.length === 1), 3000, 'every stream to get the broadcast')

  streams[3].stream.close(http2.constants.NGHTTP2_CANCEL)
  await until(() => app.eventSources.activeConnections === 9, 3000, 'the cancelled stream to leave')
  t.equal(sources.get('s3')?.closeReason, 'client')
  t.equal(app.eventSources.getByIdentifier('s3'), undefined)
  t.equal(app.eventSources.broadcast('still here'), 9)
  await until(() => streams.filter(s => s.events.length === 2).length === 9, 3000, 'the other nine to get it')
  t.equal(session.closed, false, 'the session is still up')
})

test('HTTP/2: a send after the response is destroyed returns false and ends the source', async t => {
  let result: { sent: boolean, reason: string | undefined, active: boolean } | undefined
  const { session } = await startH2(t, false, app => {
    app.get('/sse', async (req, reply) => {
      const sse = req.getEventSource('destroyed')
      sse.send('one')
      reply.raw.destroy()
      result = { sent: sse.send('two'), reason: sse.closeReason, active: sse.isActive }
      await sse.keepAlive()
      return sse.close()
    })
  })
  const s = open(session, '/sse')
  await s.ended
  await until(() => result !== undefined, 3000, 'the handler')
  t.same(result, { sent: false, reason: 'client', active: false })
})

test('HTTP/2: a stream whose client stops reading is closed as slow-client; the session\'s other streams go on', async t => {
  const sources = new Map<string, HttpRequestEventSource>()
  const { app, session } = await startH2(t, false, app => routeById(app, sources), { maxBufferedBytes: 64 * 1024 })
  const stalled = open(session, '/sse/stalled')
  const healthy = open(session, '/sse/healthy')
  await Promise.all([stalled.headers, healthy.headers])
  stalled.stream.pause()
  stalled.stream.removeAllListeners('data')

  const slow = sources.get('stalled') as HttpRequestEventSource
  const kilobyte = 'x'.repeat(1024)
  for (let i = 0; i < 4096 && slow.isActive; i++) {
    slow.send(kilobyte)
    if (i % 32 === 0) await new Promise(resolve => setImmediate(resolve))
  }
  t.equal(slow.closeReason, 'slow-client')
  t.ok(slow.sentContentLength < 4096 * 1024, 'closed long before the loop ran out')
  t.equal(app.eventSources.broadcast('for the healthy one'), 1)
  await until(() => healthy.events.some(e => e.data === 'for the healthy one'), 3000, 'the healthy stream')
})

test('HTTP/2: sendAsync waits while the client does not read and resolves when it reads again', async t => {
  const { source: sse, s } = await openFlushed(t)
  s.stream.pause()
  const kilobyte = 'y'.repeat(1024)
  let pending: Promise<boolean> | undefined
  for (let i = 0; i < 1024 && pending === undefined; i++) {
    let settled = false
    const sent = sse.sendAsync(kilobyte)
    sent.then(() => { settled = true }, () => { settled = true })
    await new Promise(resolve => setImmediate(resolve))
    if (!settled) pending = sent
  }
  t.ok(pending !== undefined, 'a send waits once the stream\'s flow-control window is full')
  t.ok(sse.bufferedAmount > 0)
  s.stream.resume()
  t.equal(await pending, true, 'resolved by the stream draining')
  t.equal(sse.isActive, true)
})

test('HTTP/2: fastify.close() with open streams resolves, ends them and empties the collection', async t => {
  const { app, session } = await startH2(t, true, app => {
    app.get('/sse/:id', async req => {
      const sse = req.getEventSource((req.params as { id: string }).id)
      sse.send('open')
      await sse.keepAlive()
      return sse.close()
    })
  })
  const streams = [open(session, '/sse/a'), open(session, '/sse/b'), open(session, '/sse/c')]
  await until(() => streams.every(s => s.events.length === 1), 3000, 'three open streams')
  const goaway = new Promise(resolve => session.once('goaway', resolve))
  // Unbounded, an open HTTP/2 session keeps server.close() waiting for Fastify's http2SessionTimeout (72 s).
  let timer: NodeJS.Timeout | undefined
  const hung = new Promise(resolve => { timer = setTimeout(resolve, 5000, 'hung') })
  t.equal(await Promise.race([app.close().then(() => 'closed'), hung]), 'closed', 'close does not wait for the client to leave')
  clearTimeout(timer)
  await goaway
  await Promise.all(streams.map(s => s.ended))
  t.equal(app.eventSources.activeConnections, 0)
  t.equal(app.eventSources.openStreams, 0)
})

test('HTTP/2 over TLS with allowHTTP1: an HTTP/1.1 client on the same port still gets an HTTP/1.1 head (Connection: close)', async t => {
  const { url } = await startH2(t, true, app => {
    app.get('/sse', async req => {
      const sse = req.getEventSource()
      sse.send('over 1.1')
      return sse.close()
    })
  }, {}, true)
  const dispatcher = new Agent({ connect: { ca: cert, servername: 'localhost' } })
  t.teardown(() => dispatcher.close())
  const res = await request(url + '/sse', { dispatcher })
  t.equal(await res.body.text(), 'data: over 1.1\n\n')
  t.equal(res.headers.connection, 'close')
})

test('Chromium over HTTPS and HTTP/2: the demo in eight tabs, all on one connection', async t => {
  if (!browserAvailable(t)) return
  const app = buildDemo({ plugin: eventSources, http2: true, https: { key, cert }, retry: 500, clockInterval: 250 })
  const sessions = new Set<unknown>()
  const versions = new Set<string>()
  app.addHook('onRequest', async req => {
    if (req.routeOptions.url !== '/events') return
    versions.add(req.raw.httpVersion)
    sessions.add((req.raw as unknown as { stream: { session: unknown } }).stream.session)
  })
  t.teardown(() => app.close())
  const address = await app.listen({ port: 0, host: '127.0.0.1' })
  const url = address.replace('127.0.0.1', 'localhost')
  const context = await launchChromium(t, ['--ignore-certificate-errors'])

  // Eight is more than the six connections per host a browser allows over HTTP/1.1.
  const tabs = 8
  const pages = []
  for (let i = 0; i < tabs; i++) {
    const page = await context.newPage()
    page.on('pageerror', err => t.fail('error in the page: ' + err.message))
    await page.goto(url)
    pages.push(page)
  }
  for (const page of pages) await page.waitForFunction(() => document.getElementById('status')?.dataset.status === 'open')
  await until(() => app.eventSources.activeConnections === tabs, 5000, 'every tab to register')
  for (const page of pages) await page.waitForFunction(n => document.getElementById('count')?.textContent === String(n), tabs)
  t.same([...versions], ['2.0'], 'every stream is HTTP/2')
  t.equal(sessions.size, 1, 'all tabs share one connection')
  const protocol = await pages[0].evaluate(() => (performance.getEntriesByType('navigation')[0] as PerformanceNavigationTiming).nextHopProtocol)
  t.equal(protocol, 'h2', 'the browser says h2 too')
  for (const page of pages) await page.close()
})

declare const document: { getElementById: (id: string) => { dataset: Record<string, string>, textContent: string | null } | null }
declare const performance: { getEntriesByType: (type: string) => unknown[] }
interface PerformanceNavigationTiming { nextHopProtocol: string }
