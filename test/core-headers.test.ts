import cors from '@fastify/cors'
import Fastify from 'fastify'
import { request as httpRequest, type IncomingMessage } from 'node:http'
import { connect, constants as h2 } from 'node:http2'
import { test } from 'tap'
import { EventSource } from 'undici'
import type { HttpRequestEventSource } from '../types/index'
import eventSources from '../lib/index'
import { start, until } from './helpers/server'

/** A GET whose response head (status and headers exactly as sent) resolves once the server writes it. */
function get (t: Parameters<typeof start>[0], url: string, headers: Record<string, string> = {}): { head: Promise<IncomingMessage>, abort: () => void } {
  const req = httpRequest(url, { headers })
  req.on('error', () => {})
  const head = new Promise<IncomingMessage>(resolve => req.on('response', res => {
    res.resume()
    resolve(res)
  }))
  req.end()
  const abort = (): void => { req.destroy() }
  t.teardown(abort)
  return { head, abort }
}

test('the head carries status 200 and the event-stream headers; on HTTP/1.1 the body runs to the close', async t => {
  const { url } = await start(t, app => {
    app.get('/sse', async request => {
      const sse = request.getEventSource()
      sse.send('hi')
      await sse.keepAlive()
    })
  })
  const res = await get(t, url + '/sse').head
  t.equal(res.statusCode, 200)
  t.equal(res.headers['content-type'], 'text/event-stream; charset=utf-8')
  t.match(res.headers['cache-control'], /\bno-cache\b/)
  t.match(res.headers['cache-control'], /\bno-transform\b/)
  t.equal(res.headers['x-accel-buffering'], 'no')
  t.equal(res.headers.connection, 'close')
  t.equal(res.headers['content-length'], undefined)
  t.equal(res.headers['transfer-encoding'], undefined)
})

test('on HTTP/2 the head has no Connection or Transfer-Encoding', async t => {
  const { url } = await start(t, app => {
    app.get('/sse', async request => {
      const sse = request.getEventSource()
      sse.send('over h2')
      await sse.keepAlive()
    })
  }, {}, { http2: true } as object)
  const session = connect(url)
  session.on('error', () => {})
  t.teardown(() => session.destroy())
  const stream = session.request({ [h2.HTTP2_HEADER_PATH]: '/sse' })
  stream.setEncoding('utf8')
  const headers = await new Promise<Record<string, unknown>>(resolve => stream.on('response', resolve))
  let body = ''
  stream.on('data', (chunk: string) => { body += chunk })
  await until(() => body.includes('\n\n'), 3000, 'the first event over HTTP/2')
  t.equal(headers[':status'], 200)
  t.equal(headers['content-type'], 'text/event-stream; charset=utf-8')
  t.equal(headers.connection, undefined)
  t.equal(headers['transfer-encoding'], undefined)
  t.equal(headers['keep-alive'], undefined)
  t.equal(body, 'data: over h2\n\n')
})

test('headers set by an onRequest hook and by reply.header() in the handler are carried', async t => {
  const { url } = await start(t, app => {
    app.addHook('onRequest', async (_request, reply) => {
      reply.header('access-control-allow-origin', 'https://example.test')
    })
    app.get('/sse', async (request, reply) => {
      reply.header('x-from-handler', 'yes')
      reply.header('content-type', 'text/plain')
      const sse = request.getEventSource()
      sse.flush()
      await sse.keepAlive()
    })
  })
  const res = await get(t, url + '/sse').head
  t.equal(res.headers['access-control-allow-origin'], 'https://example.test')
  t.equal(res.headers['x-from-handler'], 'yes')
  t.equal(res.headers['content-type'], 'text/event-stream; charset=utf-8', 'the stream type wins over a carried content-type')
})

test('the plugin headers option is on every stream', async t => {
  const { url } = await start(t, app => {
    app.get('/sse', async request => {
      const sse = request.getEventSource()
      sse.flush()
      await sse.keepAlive()
    })
  }, { headers: { 'x-stream': 'events', 'X-Upper': 'Case' } })
  const first = await get(t, url + '/sse').head
  const second = await get(t, url + '/sse').head
  for (const res of [first, second]) {
    t.equal(res.headers['x-stream'], 'events')
    t.equal(res.headers['x-upper'], 'Case')
  }
})

test('appendHeader before the first send reaches the client; repeated names keep every value', async t => {
  const { url } = await start(t, app => {
    app.get('/sse', async request => {
      const sse = request.getEventSource()
      t.equal(sse.appendHeader('x-one', '1'), sse, 'appendHeader returns the source')
      sse.appendHeader('Set-Cookie', 'a=1').appendHeader('set-cookie', 'b=2')
      sse.send('go')
      await sse.keepAlive()
    })
  })
  const res = await get(t, url + '/sse').head
  t.equal(res.headers['x-one'], '1')
  t.same(res.headers['set-cookie'], ['a=1', 'b=2'])
})

test('appendHeader replaces a default or carried header of the same name instead of doubling it', async t => {
  const { url } = await start(t, app => {
    app.get('/sse', async (request, reply) => {
      reply.header('x-carried', 'from-reply')
      const sse = request.getEventSource()
      sse.appendHeader('Cache-Control', 'no-store').appendHeader('connection', 'keep-alive').appendHeader('x-carried', 'from-source')
      sse.send('go')
      await sse.keepAlive()
    })
  })
  const res = await get(t, url + '/sse').head
  t.equal(res.headers['cache-control'], 'no-store')
  t.equal(res.headers.connection, 'keep-alive')
  t.equal(res.rawHeaders.filter(h => h.toLowerCase() === 'connection').length, 1, 'one Connection header')
  t.equal(res.headers['x-carried'], 'from-source')
})

test('appendHeader after the head was written throws FST_ERR_SSE_HEADERS_SENT', async t => {
  const thrown: unknown[] = []
  const { url } = await start(t, app => {
    app.get('/sse', async request => {
      const sse = request.getEventSource()
      sse.send('first')
      try { sse.appendHeader('x-late', '1') } catch (err) { thrown.push(err) }
      sse.close()
    })
  })
  const res = await get(t, url + '/sse').head
  await until(() => thrown.length === 1)
  t.equal((thrown[0] as { code: string }).code, 'FST_ERR_SSE_HEADERS_SENT')
  t.equal(res.headers['x-late'], undefined)
})

test('appendHeader rejects invalid names and values with CR, LF or NUL', async t => {
  const codes: Record<string, string> = {}
  const cases: [string, string][] = [
    ['bad name', 'v'], ['', 'v'], ['x:y', 'v'], ['x\r\ny', 'v'],
    ['x-cr', 'a\rb'], ['x-lf', 'a\nb'], ['x-nul', 'a\0b'], ['x-crlf', 'a\r\nx-injected: 1']
  ]
  const { url } = await start(t, app => {
    app.get('/sse', async request => {
      const sse = request.getEventSource()
      for (const [name, value] of cases) {
        try {
          sse.appendHeader(name, value)
          codes[name] = 'accepted'
        } catch (err) {
          codes[name] = (err as { code: string }).code
        }
      }
      sse.appendHeader('x-valid', 'still works')
      sse.flush()
      await sse.keepAlive()
    })
  })
  const res = await get(t, url + '/sse').head
  for (const [name] of cases) t.equal(codes[name], 'FST_ERR_SSE_INVALID_HEADER', JSON.stringify(name))
  t.equal(res.headers['x-valid'], 'still works')
  t.equal(res.headers['x-injected'], undefined)
  t.equal(res.headers['x-cr'], undefined)
})

test('the head is written lazily, at the first of send, comment, ping, keepAlive, waitForFail, flush or close', async t => {
  const triggers: Record<string, (sse: HttpRequestEventSource) => unknown> = {
    send: sse => sse.send('x'),
    comment: sse => sse.comment('x'),
    ping: sse => sse.withPing(p => { p.interval = 5; p.start() }),
    keepAlive: sse => sse.keepAlive(),
    waitForFail: sse => sse.waitForFail(60_000),
    flush: sse => sse.flush(),
    close: sse => sse.close()
  }
  const sources = new Map<string, HttpRequestEventSource>()
  const { url } = await start(t, app => {
    app.get('/sse/:trigger', async request => {
      const trigger = (request.params as { trigger: string }).trigger
      const sse = request.getEventSource()
      sources.set(trigger, sse)
      await new Promise<void>(resolve => sse.signal.addEventListener('abort', () => resolve()))
    })
  })
  for (const [name, trigger] of Object.entries(triggers)) {
    const client = get(t, `${url}/sse/${name}`)
    let responded = false
    client.head.then(() => { responded = true }, () => {})
    await until(() => sources.has(name), 3000, `the ${name} route to open`)
    const sse = sources.get(name) as HttpRequestEventSource
    // A round trip on a second connection: had the head been written, the client would have seen it by now.
    await get(t, `${url}/missing`).head
    t.equal(sse.headersSent, false, `${name}: no head before the trigger`)
    t.equal(responded, false, `${name}: the client has no response before the trigger`)
    trigger(sse)
    if (name === 'ping') {
      t.equal(sse.headersSent, false, 'ping: starting the policy writes nothing')
      await until(() => sse.headersSent, 3000, 'the first ping')
      t.ok(sse.sentContentLength >= ': ping\n\n'.length, 'ping: the head came with the first ping')
    }
    t.equal(sse.headersSent, true, `${name}: head written at the trigger`)
    const res = await client.head
    t.equal(res.statusCode, 200, `${name}: status`)
    sse.close()
  }
})

test('flush() makes the client open without any event', async t => {
  let source: HttpRequestEventSource | undefined
  let release = (): void => {}
  const { url } = await start(t, app => {
    app.get('/sse', async request => {
      source = request.getEventSource()
      await new Promise<void>(resolve => { release = resolve })
      source.flush()
      t.equal(source.sentContentLength, 0, 'flush writes no body bytes')
      await source.keepAlive()
    })
  })
  const es = new EventSource(url + '/sse')
  t.teardown(() => es.close())
  let opened = false
  let messages = 0
  es.onopen = () => { opened = true }
  es.onmessage = () => { messages++ }
  await until(() => source !== undefined, 3000, 'the source')
  t.equal(opened, false, 'not open before flush')
  release()
  await until(() => opened, 3000, 'open')
  t.equal(es.readyState, EventSource.OPEN)
  t.equal(messages, 0)
})

test('CORS headers from @fastify/cors are carried into the stream', async t => {
  const { url } = await start(t, app => {
    app.register(cors, { origin: 'https://app.example', credentials: true })
    app.after(() => {
      app.get('/sse', async request => {
        const sse = request.getEventSource()
        sse.flush()
        await sse.keepAlive()
      })
    })
  })
  const res = await get(t, url + '/sse', { origin: 'https://app.example' }).head
  t.equal(res.statusCode, 200)
  t.equal(res.headers['access-control-allow-origin'], 'https://app.example')
  t.equal(res.headers['access-control-allow-credentials'], 'true')
  t.equal(res.headers['content-type'], 'text/event-stream; charset=utf-8')
})

test('headers the stream owns cannot be appended or configured: content-type, content-length, content-encoding, transfer-encoding', async t => {
  const owned = ['Content-Type', 'content-length', 'Content-Encoding', 'transfer-encoding']
  const codes: string[] = []
  const { url } = await start(t, app => {
    app.get('/sse', async request => {
      const sse = request.getEventSource()
      for (const name of owned) {
        try { sse.appendHeader(name, name === 'content-length' ? '5' : 'text/plain') } catch (err) { codes.push((err as { code: string }).code) }
      }
      sse.send('intact')
      sse.close()
    })
  })
  const res = await fetch(url + '/sse')
  t.same(codes, owned.map(() => 'FST_ERR_SSE_INVALID_HEADER'))
  t.equal(res.headers.get('content-type'), 'text/event-stream; charset=utf-8')
  t.equal(res.headers.get('content-encoding'), null)
  t.equal(await res.text(), 'data: intact\n\n')
  for (const name of owned) {
    const app = Fastify()
    t.teardown(() => app.close())
    await t.rejects(async () => { await app.register(eventSources, { headers: { [name]: '1' } }) }, { code: 'FST_ERR_SSE_INVALID_OPTION', message: /"headers"/ }, name)
  }
})
