import { spawn, spawnSync } from 'node:child_process'
import { request as httpRequest } from 'node:http'
import { connect } from 'node:net'
import { EventSource as PackageEventSource } from 'eventsource'
import Fastify from 'fastify'
import t, { type Test } from 'tap'
import { EventSource as UndiciEventSource } from 'undici'
import { browserAvailable, launchChromium } from './helpers/browser'
import { EventLog } from './helpers/clients'
import eventSources from '../lib/index'
import { start, until } from './helpers/server'
import type { HttpRequestEventSource } from '../types/index'

// The body of an HTTP/1.1 stream runs to the close by default (no Transfer-Encoding, Connection: close);
// `chunked: true` brings back chunked framing. Every client must read both, and see the end of either as the end.

const MODES = [
  { name: 'close-delimited (default)', options: {}, chunked: false },
  { name: 'chunked: true', options: { chunked: true }, chunked: true }
]

// The page's globals, as the browser sees them.
declare const window: {
  seen: string[]
  EventSource: new (url: string) => { addEventListener (type: string, f: (e: { data: string, lastEventId: string }) => void): void }
}

const FRAMES = 'data: one\n\nevent: named\nid: 7\ndata: two\n\ndata: three\ndata: lines\n\n'

interface Stream {
  url: string
  /** Last-Event-ID of every request, in order ('' when absent). */
  opened: string[]
  /** The sources open now, newest last. */
  live: HttpRequestEventSource[]
  /** Writes the three events to every open stream. */
  sendAll (): void
  /** Ends every open stream from the server's side. */
  closeAll (): void
}

async function startStream (t: Test, options: object, retry = 100, serverOptions: object = {}): Promise<Stream> {
  const opened: string[] = []
  const live: HttpRequestEventSource[] = []
  const { url } = await start(t, app => {
    app.get('/', async (_request, reply) => {
      reply.type('text/html').send('<!doctype html><title>sse</title>')
    })
    app.get('/sse', async request => {
      const header = request.headers['last-event-id']
      opened.push(typeof header === 'string' ? header : '')
      const sse = request.getEventSource()
      sse.flush()
      live.push(sse)
      await sse.keepAlive()
      live.splice(live.indexOf(sse), 1)
    })
  }, { retry, ...options }, serverOptions)
  return {
    url,
    opened,
    live,
    sendAll () {
      for (const sse of live) {
        sse.send('one')
        sse.send('two', { event: 'named', id: '7' })
        sse.send('three\nlines')
      }
    },
    closeAll () {
      for (const sse of [...live]) sse.close()
    }
  }
}

/** Reads a raw HTTP exchange to its close: the head and the body bytes exactly as sent. */
function rawExchange (url: string, requestText: string, onHead: () => void): Promise<{ head: string, body: string }> {
  const { hostname, port } = new URL(url)
  return new Promise((resolve, reject) => {
    const socket = connect(Number(port), hostname)
    let text = ''
    let headSeen = false
    socket.setEncoding('latin1')
    const done = (): void => {
      const at = text.indexOf('\r\n\r\n')
      resolve({ head: text.slice(0, at), body: text.slice(at + 4) })
      socket.destroy()
    }
    socket.on('data', (chunk: string) => {
      text += chunk
      if (!headSeen && text.includes('\r\n\r\n')) {
        headSeen = true
        onHead()
      }
      // A chunked body ends with its last chunk; the connection stays open for another request.
      if (/\r\ntransfer-encoding: chunked\r\n/i.test(text) && text.endsWith('\r\n0\r\n\r\n')) done()
    })
    socket.on('end', done)
    socket.on('error', reject)
    socket.write(requestText)
  })
}

const headerOf = (head: string, name: string): string | undefined =>
  head.split('\r\n').find(line => line.toLowerCase().startsWith(name + ':'))?.slice(name.length + 1).trim().toLowerCase()

t.test('chunked must be a boolean: anything else fails registration with FST_ERR_SSE_INVALID_OPTION', async t => {
  for (const chunked of ['yes', 1, null]) {
    const app = Fastify()
    t.teardown(() => app.close())
    await t.rejects(async () => { await app.register(eventSources, { chunked } as object) }, { code: 'FST_ERR_SSE_INVALID_OPTION', message: /invalid option "chunked"/ })
  }
  for (const chunked of [true, false, undefined]) {
    const app = Fastify()
    t.teardown(() => app.close())
    await app.register(eventSources, { chunked })
  }
})

for (const mode of MODES) {
  t.test(mode.name, async t => {
    t.test('the bytes on the wire: head and framing over HTTP/1.1, up to the end of the body after close()', async t => {
      const s = await startStream(t, mode.options)
      const { head, body } = await rawExchange(s.url, 'GET /sse HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n', () => {
        s.sendAll()
        s.closeAll()
      })
      t.match(head, /^HTTP\/1\.1 200 /)
      t.equal(headerOf(head, 'content-length'), undefined)
      t.equal(headerOf(head, 'connection'), mode.chunked ? 'keep-alive' : 'close')
      t.equal(headerOf(head, 'transfer-encoding'), mode.chunked ? 'chunked' : undefined)
      const retry = 'retry: 100\n\n'
      if (mode.chunked) {
        const chunk = (s: string): string => `${Buffer.byteLength(s).toString(16)}\r\n${s}\r\n`
        const frames = FRAMES.split(/(?<=\n\n)/)
        t.equal(body, chunk(retry) + frames.map(chunk).join('') + '0\r\n\r\n', 'chunk framing, ended by the last chunk')
      } else {
        t.equal(body, retry + FRAMES, 'the events and nothing else, up to the close')
      }
    })

    t.test('an HTTP/1.0 request gets a close-delimited body', async t => {
      const s = await startStream(t, mode.options)
      const { head, body } = await rawExchange(s.url, 'GET /sse HTTP/1.0\r\nAccept: text/event-stream\r\n\r\n', () => {
        s.sendAll()
        s.closeAll()
      })
      t.equal(headerOf(head, 'transfer-encoding'), undefined)
      t.equal(body, 'retry: 100\n\n' + FRAMES)
    })

    t.test('eventsource-parser over node:http: the events, then the end of the body', async t => {
      const s = await startStream(t, mode.options)
      const log = new EventLog()
      const ended = new Promise<{ headers: Record<string, unknown>, complete: boolean }>((resolve, reject) => {
        const req = httpRequest(s.url + '/sse', { headers: { accept: 'text/event-stream' }, agent: false }, res => {
          res.on('data', (chunk: Buffer) => log.feed(chunk))
          res.on('end', () => resolve({ headers: res.headers, complete: res.complete }))
          res.on('error', reject)
        })
        req.on('error', reject)
        req.end()
        t.teardown(() => { req.destroy() })
      })
      await until(() => s.live.length === 1, 3000, 'the stream')
      s.sendAll()
      await until(() => log.events.length === 3, 3000, 'three events')
      s.closeAll()
      const { headers, complete } = await ended
      t.equal(complete, true, 'a clean end, not an abort')
      t.equal(headers['transfer-encoding'], mode.chunked ? 'chunked' : undefined)
      t.same(log.events.map(e => [e.event, e.id, e.data]), [[undefined, undefined, 'one'], ['named', '7', 'two'], [undefined, undefined, 'three\nlines']])
      t.same(log.retries, [100])
      t.same(log.errors, [])
    })

    for (const [client, Ctor] of [['undici EventSource', UndiciEventSource], ['the eventsource package', PackageEventSource]] as const) {
      t.test(`${client}: the events, then a reconnect with Last-Event-ID after the server closes`, async t => {
        const s = await startStream(t, mode.options)
        const es = new Ctor(s.url + '/sse')
        t.teardown(() => es.close())
        const got: string[] = []
        const push = (e: Event): void => {
          const m = e as MessageEvent
          got.push(m.type === 'message' ? `message:${m.data}` : `named:${m.data}:${m.lastEventId}`)
        }
        es.addEventListener('message', push)
        es.addEventListener('named', push)
        await until(() => s.live.length === 1, 3000, 'the stream')
        s.sendAll()
        await until(() => got.length === 3, 3000, 'three events')
        t.same(got, ['message:one', 'named:two:7', 'message:three\nlines'])
        s.closeAll()
        await until(() => s.opened.length === 2 && s.live.length === 1, 3000, 'the reconnect')
        t.same(s.opened, ['', '7'])
        s.sendAll()
        await until(() => got.length === 6, 3000, 'three more events')
        t.same(got.slice(3), got.slice(0, 3))
      })
    }

    t.test('curl -N: the events as they come, and exit status 0 when the server ends the stream', async t => {
      if (spawnSync('curl', ['--version']).error !== undefined) {
        t.plan(0, 'curl not installed: skipped')
        return
      }
      const s = await startStream(t, mode.options)
      const curl = spawn('curl', ['-sS', '-N', '-i', '--max-time', '10', s.url + '/sse'])
      t.teardown(() => { curl.kill() })
      let out = ''
      curl.stdout.setEncoding('latin1')
      curl.stdout.on('data', (chunk: string) => { out += chunk })
      let errors = ''
      curl.stderr.on('data', (chunk: Buffer) => { errors += chunk.toString() })
      const exited = new Promise<number | null>(resolve => curl.on('close', resolve))
      await until(() => s.live.length === 1, 5000, 'the stream')
      s.sendAll()
      await until(() => out.endsWith(FRAMES), 5000, 'the events, unbuffered')
      s.closeAll()
      t.equal(await exited, 0, `curl exits cleanly ${errors}`)
      const at = out.indexOf('\r\n\r\n')
      t.equal(headerOf(out.slice(0, at), 'transfer-encoding'), mode.chunked ? 'chunked' : undefined)
      t.equal(out.slice(at + 4), 'retry: 100\n\n' + FRAMES, 'curl hands on the body unframed')
    })
  })
}

t.test('Chromium reads both framings and reconnects after the server closes', async t => {
  if (!browserAvailable(t)) return
  const context = await launchChromium(t)
  for (const mode of MODES) {
    t.test(mode.name, async t => {
      // With chunked framing the browser keeps the stream's connection alive after the stream ends, and
      // server.close() would wait for it until keepAliveTimeout; a close-delimited body ends it with the stream.
      const s = await startStream(t, mode.options, 100, mode.chunked ? { forceCloseConnections: true } : {})
      const page = await context.newPage()
      t.teardown(() => page.close())
      await page.goto(s.url + '/')
      await page.evaluate(() => {
        window.seen = []
        const es = new window.EventSource('/sse')
        es.addEventListener('message', e => window.seen.push(`message:${e.data}`))
        es.addEventListener('named', e => window.seen.push(`named:${e.data}:${e.lastEventId}`))
      })
      const seen = (): Promise<string[]> => page.evaluate(() => window.seen)
      await until(() => s.live.length === 1, 10_000, 'the stream')
      s.sendAll()
      await page.waitForFunction(() => window.seen.length === 3)
      t.same(await seen(), ['message:one', 'named:two:7', 'message:three\nlines'])
      s.closeAll()
      await until(() => s.opened.length === 2 && s.live.length === 1, 10_000, 'the reconnect')
      t.same(s.opened, ['', '7'])
      s.sendAll()
      await page.waitForFunction(() => window.seen.length === 6)
      // Before the app closes: a browser would keep reconnecting to it, and hold kept-alive connections open.
      await page.close()
    })
  }
})
