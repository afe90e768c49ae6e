import { spawn } from 'node:child_process'
import { once } from 'node:events'
import path from 'node:path'
import { Writable } from 'node:stream'
import compress from '@fastify/compress'
import cors from '@fastify/cors'
import { EventSource as PackageEventSource } from 'eventsource'
import Fastify, { type FastifyInstance, type FastifyServerOptions } from 'fastify'
import { test, type Test } from 'tap'
import { request } from 'undici'
import eventSources from '../lib/index'
import type { HttpRequestEventSource } from '../types/index'
import { start, until } from './helpers/server'

async function listen (t: Test, app: FastifyInstance): Promise<string> {
  t.teardown(() => app.close())
  return app.listen({ port: 0, host: '127.0.0.1' })
}

/** Settles as `promise`, or fails after `ms` instead of hanging. */
async function within<T> (promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  const timeout = new Promise<never>((_resolve, reject) => { timer = setTimeout(reject, ms, new Error(`nothing in ${ms} ms: ${what}`)) })
  try {
    return await Promise.race([promise, timeout])
  } finally {
    clearTimeout(timer)
  }
}

/** The next chunk of a stream, failing instead of hanging when nothing comes. */
async function next<T> (it: AsyncIterator<T>, ms: number, what: string): Promise<T> {
  const result = await within(it.next(), ms, what)
  if (result.done === true) throw new Error(`stream ended before ${what}`)
  return result.value
}

test('@fastify/cors: a request with an Origin gets the CORS headers on the event stream', async t => {
  const app = Fastify()
  await app.register(cors, { origin: ['http://app.example'], credentials: true, exposedHeaders: ['x-stream'] })
  await app.register(eventSources)
  app.get('/sse', async req => {
    const sse = req.getEventSource()
    sse.appendHeader('x-stream', 'yes')
    sse.send('hi')
    return sse.close()
  })
  const url = await listen(t, app)
  const res = await request(url + '/sse', { headers: { origin: 'http://app.example' } })
  const body = await res.body.text()
  t.equal(res.statusCode, 200)
  t.match(res.headers, {
    'access-control-allow-origin': 'http://app.example',
    'access-control-allow-credentials': 'true',
    'access-control-expose-headers': 'x-stream',
    'content-type': 'text/event-stream; charset=utf-8'
  })
  t.match(res.headers.vary, /origin/i)
  t.equal(body, 'data: hi\n\n')
})

test('@fastify/compress registered globally: streams are not compressed and each event arrives before the next is sent', async t => {
  const app = Fastify()
  await app.register(compress, { global: true, threshold: 0 })
  await app.register(eventSources)
  let source: HttpRequestEventSource | undefined
  app.get('/sse', async req => {
    source = req.getEventSource('compressed?')
    source.flush()
    await source.keepAlive()
    return source.close()
  })
  app.get('/text', async () => 'x'.repeat(4096))
  const url = await listen(t, app)
  const headers = { 'accept-encoding': 'br, gzip, deflate' }

  const control = await request(url + '/text', { headers })
  await control.body.dump()
  t.equal(control.headers['content-encoding'], 'br', 'compress is active on ordinary routes')

  const res = await request(url + '/sse', { headers })
  t.teardown(() => res.body.destroy())
  t.equal(res.headers['content-encoding'], undefined, 'no content-encoding on the stream')
  t.match(res.headers['cache-control'], /no-transform/)
  const chunks = res.body[Symbol.asyncIterator]()
  for (let i = 1; i <= 5; i++) {
    const sent = `event ${i} of 5`
    source?.send(sent)
    let got = ''
    while (!got.endsWith('\n\n')) got += (await next(chunks, 3000, `event ${i}`) as Buffer).toString()
    t.equal(got, `data: ${sent}\n\n`, `event ${i} arrived alone, before event ${i + 1} was sent`)
  }
})

test('the eventsource package: receives multi-line, unicode and named events with ids', async t => {
  const { url } = await start(t, app => {
    app.get('/sse', async req => {
      const sse = req.getEventSource('pkg')
      sse.send('first line\r\nsecond ✓\rthird 🚀')
      sse.send({ ok: true }, { event: 'json', id: '7' })
      await sse.keepAlive()
      return sse.close()
    })
  })
  const es = new PackageEventSource(url + '/sse')
  t.teardown(() => es.close())
  const got: string[] = []
  es.onmessage = e => got.push(`message:${e.data}`)
  es.addEventListener('json', e => got.push(`json:${e.data}:${e.lastEventId}`))
  await until(() => got.length === 2, 3000, 'two events')
  t.same(got, ['message:first line\nsecond ✓\nthird 🚀', 'json:{"ok":true}:7'])
})

test('the eventsource package: reconnects after a server-side close with Last-Event-ID and gets the replay', async t => {
  const reconnects: (string | undefined)[] = []
  let gate: Promise<void> | undefined = Promise.resolve()
  let release = (): void => {}
  const { app, url } = await start(t, app => {
    app.get('/sse', async req => {
      const header = req.headers['last-event-id']
      if (header !== undefined) {
        reconnects.push(String(header))
        await gate
      }
      const sse = req.getEventSource('pkg')
      await sse.keepAlive()
      return sse.close()
    })
  }, { retry: 50 })
  const es = new PackageEventSource(url + '/sse')
  t.teardown(() => es.close())
  const got: string[] = []
  es.addEventListener('feed', e => got.push(`${e.data}@${e.lastEventId}`))
  await until(() => app.eventSources.activeConnections === 1, 3000, 'the stream to open')
  await app.eventSources.publish('one', { event: 'feed' })
  await until(() => got.length === 1, 3000, 'the first message')
  const firstId = got[0].split('@')[1]

  gate = new Promise(resolve => { release = resolve })
  app.eventSources.getByIdentifier('pkg')?.close()
  await until(() => reconnects.length === 1, 3000, 'the reconnect')
  await app.eventSources.publish('two', { event: 'feed' })
  await app.eventSources.publish('three', { event: 'feed' })
  release()
  await until(() => got.length === 3, 3000, 'the replay')
  t.equal(reconnects[0], firstId, 'Last-Event-ID is the last id received')
  t.same(got.map(g => g.split('@')[0]), ['one', 'two', 'three'])
  await app.eventSources.publish('four', { event: 'feed' })
  await until(() => got.length === 4, 3000, 'a live message after the replay')
  t.equal(got[3].split('@')[0], 'four')
})

test('the eventsource package: stops reconnecting when the reconnect is answered 204', async t => {
  let requests = 0
  const { app, url } = await start(t, app => {
    app.get('/sse', async (req, reply) => {
      if (++requests > 1) return reply.code(204).send()
      const sse = req.getEventSource()
      sse.send('only once')
      return sse.close()
    })
  }, { retry: 50 })
  const es = new PackageEventSource(url + '/sse')
  t.teardown(() => es.close())
  const errors: number[] = []
  es.onerror = () => errors.push(es.readyState)
  await until(() => es.readyState === PackageEventSource.CLOSED, 3000, 'the client to give up')
  t.equal(requests, 2)
  t.equal(errors.at(-1), PackageEventSource.CLOSED)
  t.equal(app.eventSources.openStreams, 0)
})

interface LogLine { level: number, msg: string, identifier?: string, reason?: string, reqId?: string, err?: { message: string } }

function captureLog (level: string): { lines: LogLine[], options: FastifyServerOptions } {
  const lines: LogLine[] = []
  const stream = new Writable({
    write (chunk, _encoding, done) {
      for (const line of String(chunk).split('\n')) if (line !== '') lines.push(JSON.parse(line))
      done()
    }
  })
  return { lines, options: { logger: { level, stream } } }
}

const DEBUG = 20

test('logger: a stream opening and closing is logged at debug with its identifier and reason', async t => {
  const log = captureLog('debug')
  const { url } = await start(t, app => {
    app.get('/sse', async req => {
      const sse = req.getEventSource('logged-1')
      sse.send('bye')
      return sse.close()
    })
  }, {}, log.options)
  const res = await request(url + '/sse')
  await res.body.text()
  await until(() => log.lines.some(l => l.msg === 'event source closed'), 3000, 'the close log')
  const mine = log.lines.filter(l => l.identifier === 'logged-1')
  t.match(mine, [
    { level: DEBUG, msg: 'event source opened', identifier: 'logged-1', reqId: String },
    { level: DEBUG, msg: 'event source closed', identifier: 'logged-1', reason: 'close' }
  ])
  t.equal(mine.length, 2)
})

test('logger: a client that goes away and a waitForFail timeout are logged at debug with their reason', async t => {
  const log = captureLog('debug')
  const { url } = await start(t, app => {
    app.get('/gone', async req => {
      const sse = req.getEventSource('gone')
      sse.flush()
      await sse.keepAlive()
      return sse.close()
    })
    app.get('/idle', async req => {
      const sse = req.getEventSource('idle')
      await sse.waitForFail(30)
      return sse.close()
    })
  }, {}, log.options)
  const controller = new AbortController()
  await request(url + '/gone', { signal: controller.signal })
  controller.abort()
  const idle = await request(url + '/idle')
  await idle.body.text()
  await until(() => log.lines.filter(l => l.msg === 'event source closed').length === 2, 3000, 'two close logs')
  const closed = log.lines.filter(l => l.msg === 'event source closed')
  t.same(closed.map(l => [l.level, l.identifier, l.reason]).sort(), [[DEBUG, 'gone', 'client'], [DEBUG, 'idle', 'timeout']])
})

test('logger: a handler that throws after opening its stream is logged at error with the identifier, the stream closed with reason error', async t => {
  const log = captureLog('debug')
  const { url } = await start(t, app => {
    app.get('/sse', async req => {
      const sse = req.getEventSource('broken')
      sse.send('before the bug')
      throw new Error('handler bug')
    })
  }, {}, log.options)
  const res = await request(url + '/sse')
  t.equal(await res.body.text(), 'data: before the bug\n\n', 'the stream ends instead of hanging')
  await until(() => log.lines.some(l => l.msg === 'event source closed'), 3000, 'the close log')
  t.match(log.lines.find(l => l.level >= 50), { level: 50, identifier: 'broken', err: { message: 'handler bug' } })
  t.match(log.lines.find(l => l.msg === 'event source closed'), { level: DEBUG, identifier: 'broken', reason: 'error' })
})

test('logger: at level info a stream\'s whole life writes nothing', async t => {
  const log = captureLog('info')
  const { app, url } = await start(t, app => {
    app.get('/sse', async req => {
      const sse = req.getEventSource('quiet')
      sse.withPing(ping => { ping.interval = 5; ping.start() })
      sse.send('one')
      await sse.keepAlive()
      return sse.close()
    })
  }, {}, log.options)
  const before = log.lines.length
  const controller = new AbortController()
  const res = await request(url + '/sse', { signal: controller.signal })
  const chunks = res.body[Symbol.asyncIterator]()
  let seen = ''
  while (!seen.includes(': ping')) seen += (await next(chunks, 3000, 'a ping') as Buffer).toString()
  controller.abort()
  await until(() => app.eventSources.openStreams === 0, 3000, 'the stream to close')
  // Fastify's own request lines carry req or res; anything else at info would be the plugin's.
  const plugin = log.lines.slice(before).filter(l => !('req' in l) && !('res' in l))
  t.same(plugin, [], 'open, send, pings and a client leaving log nothing at info')
  t.ok(log.lines.some(l => 'req' in l), 'the logger did capture the request at info')
})

test('the demo process (npm start) prints its address and exits cleanly on SIGINT with streams open', async t => {
  const child = spawn(process.execPath, [path.join(__dirname, '..', 'examples', 'server.js')], {
    env: { ...process.env, PORT: '0', HOST: '127.0.0.1', LOG_LEVEL: 'warn' },
    stdio: ['ignore', 'pipe', 'pipe']
  })
  t.teardown(() => { if (child.exitCode === null) child.kill('SIGKILL') })
  let stdout = ''
  let stderr = ''
  child.stdout.on('data', chunk => { stdout += chunk })
  child.stderr.on('data', chunk => { stderr += chunk })
  const exited = once(child, 'exit')
  await until(() => /http:\/\/127\.0\.0\.1:\d+/.test(stdout) || child.exitCode !== null, 10_000, 'the demo to print its address')
  const url = (/http:\/\/127\.0\.0\.1:\d+/.exec(stdout) as RegExpExecArray)[0]

  const es = new PackageEventSource(url + '/events?tab=signal')
  t.teardown(() => es.close())
  const hello = new Promise(resolve => es.addEventListener('hello', resolve, { once: true }))
  await hello
  child.kill('SIGINT')
  const [code, signal] = await within(exited, 10_000, 'the demo to exit')
  t.same({ code, signal }, { code: 0, signal: null }, 'exit code 0')
  t.equal(stderr, '', 'nothing on stderr')
})
