import { Readable } from 'node:stream'
import Fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify'
import { test } from 'tap'
import { request } from 'undici'
import eventSources from '../lib/index'
import { sleep } from './helpers/clients'
import { until } from './helpers/server'

type LogLine = Record<string, unknown> & { level: number, msg?: string, err?: { type?: string, message?: string, code?: string } }
type Handler = (this: FastifyInstance, request: FastifyRequest, reply: FastifyReply) => unknown

/** A custom thenable, not a Promise: Fastify accepts anything with then(resolve, reject). */
function thenable<T> (value: T): PromiseLike<T> {
  return { then: (resolve: any) => { setImmediate(() => resolve(value)); return undefined as any } } as PromiseLike<T>
}

// The handler styles Fastify's documentation shows (Routes, Reply, Hooks: "Respond to a request from a hook"...).
const STYLES: Record<string, Handler> = {
  'sync return value': () => ({ hello: 'world' }),
  'async return value': async () => ({ hello: 'world' }),
  'sync return string': () => 'text',
  'sync return null': () => null,
  'sync return buffer': () => Buffer.from('bytes'),
  'sync reply.send, no return': (_req, reply) => { reply.send({ sent: true }) },
  'sync reply.send then return reply': (_req, reply) => { reply.send({ sent: true }); return reply },
  'sync return reply.send()': (_req, reply) => reply.send('chained'),
  'async reply.send then return reply': async (_req, reply) => { reply.send({ sent: true }); return reply },
  'async await then return reply.send()': async (_req, reply) => { await sleep(1); return reply.send('later') },
  'async reply.send, no return': async (_req, reply) => { reply.send('no return') },
  'sync send later, return reply': (_req, reply) => { setTimeout(() => reply.send('later'), 20); return reply },
  'async send later, return reply': async (_req, reply) => { setTimeout(() => reply.send('later'), 20); return reply },
  'async send later, await reply': async (_req, reply) => { setTimeout(() => reply.send('later'), 20); await reply },
  'sync throw': () => { throw new Error('sync failure') },
  'async throw': async () => { throw new Error('async failure') },
  'throw with a status': async () => { throw Object.assign(new Error('teapot'), { statusCode: 418 }) },
  'reply.send(error)': (_req, reply) => { reply.send(new Error('sent error')) },
  'code and send': (_req, reply) => { reply.code(201).header('x-made', 'yes').send({ created: true }) },
  'return a stream': () => Readable.from(['a', 'b', 'c']),
  'reply.send(stream)': (_req, reply) => { reply.type('text/plain').send(Readable.from(['s', 't'])) },
  redirect: (_req, reply) => reply.redirect('/elsewhere'),
  'callNotFound()': (_req, reply) => { reply.callNotFound() },
  'no content': (_req, reply) => { reply.code(204).send() },
  'custom thenable': () => thenable({ then: 'able' }),
  'own hijack, raw end': (_req, reply) => {
    reply.hijack()
    reply.raw.writeHead(200, { 'content-type': 'text/plain' })
    reply.raw.end('raw')
  },
  'own hijack, async, later': async (_req, reply) => {
    reply.hijack()
    await sleep(5)
    reply.raw.writeHead(200, { 'content-type': 'text/plain' })
    reply.raw.end('raw later')
  },
  'send twice': (_req, reply) => { reply.send('once'); reply.send('twice') }
}

const HEADERS = ['content-type', 'content-length', 'transfer-encoding', 'location', 'x-made']

interface Outcome { status: number, body: string, headers: Record<string, unknown>, logs: unknown[] }

/** What a log line says, without what varies from run to run (ids, times, ports, stacks). */
function essence (line: LogLine): unknown {
  return {
    level: line.level,
    msg: line.msg,
    err: line.err === undefined ? undefined : { type: line.err.type, message: line.err.message, code: line.err.code },
    status: (line.res as { statusCode?: number } | undefined)?.statusCode
  }
}

async function runAll (withPlugin: boolean): Promise<Record<string, Outcome>> {
  const lines: LogLine[] = []
  const app = Fastify({ logger: { level: 'trace', stream: { write: (line: string) => { lines.push(JSON.parse(line)) } } } })
  if (withPlugin) await app.register(eventSources)
  let n = 0
  const paths = new Map<string, string>()
  for (const [name, handler] of Object.entries(STYLES)) {
    const path = `/r${n++}`
    paths.set(name, path)
    app.get(path, handler)
  }
  await app.listen({ port: 0, host: '127.0.0.1' })
  const url = `http://127.0.0.1:${(app.server.address() as { port: number }).port}`
  const outcomes: Record<string, Outcome> = {}
  try {
    for (const [name, path] of paths) {
      const before = lines.length
      const res = await request(url + path)
      const body = await res.body.text()
      // Fastify logs "request completed" once the response finished; the client may see the body first.
      await until(() => lines.slice(before).some(l => l.msg === 'request completed' || l.msg === 'request errored') ||
        name.startsWith('own hijack'), 3000, `the completion log of ${name}`)
      await sleep(name === 'send twice' ? 20 : 2)
      const headers: Record<string, unknown> = {}
      for (const h of HEADERS) headers[h] = res.headers[h]
      outcomes[name] = {
        status: res.statusCode,
        body,
        headers,
        logs: lines.slice(before).filter(l => l.msg !== 'incoming request').map(essence)
      }
    }
  } finally {
    await app.close()
  }
  return outcomes
}

test('registering the plugin changes nothing for routes that never open a stream (issue 11, point 1)', async t => {
  const crashes: unknown[] = []
  const onCrash = (err: unknown): void => { crashes.push(err) }
  process.on('uncaughtException', onCrash)
  t.teardown(() => { process.off('uncaughtException', onCrash) })
  const without = await runAll(false)
  const withPlugin = await runAll(true)
  for (const name of Object.keys(STYLES)) t.same(withPlugin[name], without[name], name)
  t.same(crashes, [], 'no uncaught exception')
  // The styles do what Fastify says they do, so the comparison is not between two broken runs.
  t.match(without['sync send later, return reply'], { status: 200, body: 'later' })
  t.match(without['async throw'], { status: 500 })
  t.match(without['own hijack, async, later'], { status: 200, body: 'raw later' })
})

const STREAMS: Record<string, { handler: Handler, body: string, error?: string }> = {
  'sync send, return sse.close()': {
    handler: req => { const sse = req.getEventSource(); sse.send('hello'); return sse.close() },
    body: 'data: hello\n\n'
  },
  'async send, return sse.close()': {
    handler: async req => { const sse = req.getEventSource(); sse.send('hello'); return sse.close() },
    body: 'data: hello\n\n'
  },
  'sync send and close, no return': {
    handler: req => { const sse = req.getEventSource(); sse.send('hello'); sse.close() },
    body: 'data: hello\n\n'
  },
  'sync return the source itself': {
    handler: req => { const sse = req.getEventSource(); sse.send('hello'); setTimeout(() => sse.close(), 5); return sse },
    body: 'data: hello\n\n'
  },
  'sync return sse.keepAlive()': {
    handler: req => { const sse = req.getEventSource(); sse.send('hello'); setTimeout(() => sse.close(), 5); return sse.keepAlive() },
    body: 'data: hello\n\n'
  },
  'async await keepAlive, closed elsewhere': {
    handler: async req => {
      const sse = req.getEventSource()
      sse.send('hello')
      setTimeout(() => sse.close(), 5)
      await sse.keepAlive()
      return sse.close()
    },
    body: 'data: hello\n\n'
  },
  'async return sse.reply after close': {
    handler: async req => { const sse = req.getEventSource(); sse.send('hello'); sse.close(); return sse.reply },
    body: 'data: hello\n\n'
  },
  'async await, then open': {
    handler: async req => { await sleep(2); const sse = req.getEventSource(); sse.send('hello'); return sse.close() },
    body: 'data: hello\n\n'
  },
  'sync throw after open': {
    handler: req => { const sse = req.getEventSource(); sse.send('before'); throw new Error('sync stream bug') },
    body: 'data: before\n\n',
    error: 'sync stream bug'
  },
  'async throw after open': {
    handler: async req => { const sse = req.getEventSource(); sse.send('before'); await sleep(1); throw new Error('async stream bug') },
    body: 'data: before\n\n',
    error: 'async stream bug'
  }
}

test('stream handlers of every style end as documented, with no "already sent" log (issue 11, point 1)', async t => {
  const lines: LogLine[] = []
  const app = Fastify({ logger: { level: 'debug', stream: { write: (line: string) => { lines.push(JSON.parse(line)) } } } })
  await app.register(eventSources)
  const names = Object.keys(STREAMS)
  names.forEach((name, i) => app.get(`/s${i}`, STREAMS[name].handler))
  t.teardown(() => app.close())
  await app.listen({ port: 0, host: '127.0.0.1' })
  const url = `http://127.0.0.1:${(app.server.address() as { port: number }).port}`
  for (const [i, name] of names.entries()) {
    const before = lines.length
    const res = await request(`${url}/s${i}`)
    const body = await res.body.text()
    await until(() => lines.slice(before).some(l => l.msg === 'request completed'), 3000, `the completion log of ${name}`)
    await sleep(5)
    const mine = lines.slice(before)
    const expected = STREAMS[name]
    t.equal(res.statusCode, 200, `${name}: 200`)
    t.equal(res.headers['content-type'], 'text/event-stream; charset=utf-8', `${name}: an event stream`)
    t.equal(body, expected.body, `${name}: body`)
    const loud = mine.filter(l => l.level >= 40)
    if (expected.error === undefined) {
      t.same(loud.map(essence), [], `${name}: nothing logged at warn or above`)
    } else {
      t.same(loud.map(l => [l.level, l.msg, l.err?.message]), [[50, 'event source handler failed; closing the stream', expected.error]],
        `${name}: the error logged once, at error level`)
      t.match(mine.find(l => l.msg === 'event source closed'), { reason: 'error' }, `${name}: closed with reason error`)
    }
  }
})
