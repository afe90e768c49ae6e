import { once } from 'node:events'
import { test, type Test } from 'tap'
import Fastify from 'fastify'
import eventSources from '../lib/index'
import type { HttpRequestEventSource } from '../types/index'
import { reader, type Reader } from './helpers/clients'
import { start, until } from './helpers/server'
import { serveSources } from './helpers/sources'

const BAD_NAMES: unknown[] = ['a\nb', 'a\rb', 'a\r\nb', 'a\0b', '\n', '\r', 'ok\n\nevent: evil', 42, {}, null]
const BAD_RETRIES: unknown[] = [-1, 1.5, NaN, Infinity, -Infinity, '100', 2 ** 53, null, {}]

function body (client: Reader): string {
  return Buffer.concat(client.body).toString()
}

/** Ends the source with one good message and checks that it is all the client ever got. */
async function onlyGoodMessageArrives (t: Test, sse: HttpRequestEventSource, client: Reader): Promise<void> {
  t.equal(sse.sentContentLength, 0, 'the failed calls wrote nothing')
  t.equal(sse.send('ok'), true, 'the stream is healthy')
  sse.close()
  await client.ended
  t.equal(body(client), 'data: ok\n\n', 'byte for byte, nothing else reached the socket')
  t.equal(sse.sentContentLength, Buffer.byteLength(body(client)))
}

test('event and id with CR, LF or NUL, or not strings, throw FST_ERR_SSE_INVALID_FIELD and write nothing', async t => {
  const { url, source } = await serveSources(t)
  const client = await reader(t, url, '/sse')
  const sse = await source(0)
  for (const bad of BAD_NAMES) {
    t.throws(() => sse.send('x', { event: bad as string }), { code: 'FST_ERR_SSE_INVALID_FIELD', message: /"event"/ }, `event ${JSON.stringify(bad)}`)
    t.throws(() => sse.send('x', { id: bad as string }), { code: 'FST_ERR_SSE_INVALID_FIELD', message: /"id"/ }, `id ${JSON.stringify(bad)}`)
    await t.rejects(sse.sendAsync('x', { id: bad as string }), { code: 'FST_ERR_SSE_INVALID_FIELD' }, 'sendAsync rejects')
  }
  await onlyGoodMessageArrives(t, sse, client)
})

test('a retry that is not a non-negative safe integer throws FST_ERR_SSE_INVALID_FIELD and writes nothing', async t => {
  const { url, source } = await serveSources(t)
  const client = await reader(t, url, '/sse')
  const sse = await source(0)
  for (const bad of BAD_RETRIES) {
    t.throws(() => sse.send('x', { retry: bad as number }), { code: 'FST_ERR_SSE_INVALID_FIELD', message: /"retry"/ }, `retry ${String(bad)}`)
  }
  t.throws(() => sse.send('x', 'event' as never), { code: 'FST_ERR_SSE_INVALID_FIELD' }, 'options that are not an object')
  t.throws(() => sse.comment(42 as unknown as string), { code: 'FST_ERR_SSE_INVALID_FIELD' }, 'a comment that is not a string')
  await onlyGoodMessageArrives(t, sse, client)
})

test('invalid header names and values throw FST_ERR_SSE_INVALID_HEADER and nothing is written', async t => {
  const sources: HttpRequestEventSource[] = []
  const { url } = await start(t, app => {
    app.get('/lazy', async request => {
      const sse = request.getEventSource()
      sources.push(sse)
      // Not keepAlive(): that writes the head, and this test needs it unwritten.
      await once(sse.signal, 'abort')
      return sse.reply
    })
  })
  const pending = reader(t, url, '/lazy')
  await until(() => sources.length === 1)
  const sse = sources[0]
  for (const name of ['bad name', 'x\n', 'x\r\ny', '', 'caf\u00e9', 'a:b', 'a\0']) {
    t.throws(() => sse.appendHeader(name, 'v'), { code: 'FST_ERR_SSE_INVALID_HEADER' }, `name ${JSON.stringify(name)}`)
  }
  for (const value of ['a\r\nInjected: 1', 'a\nb', 'a\rb', 'a\0b']) {
    t.throws(() => sse.appendHeader('x-ok', value), { code: 'FST_ERR_SSE_INVALID_HEADER' }, `value ${JSON.stringify(value)}`)
  }
  t.throws(() => sse.appendHeader('x-ok', {} as string), { code: 'FST_ERR_SSE_INVALID_HEADER' }, 'a value that is not a string')
  t.equal(sse.headersSent, false, 'the failed calls did not write the head')
  sse.appendHeader('x-ok', 'fine')
  t.equal(sse.send('ok'), true)
  const client = await pending
  sse.close()
  await client.ended
  t.equal(body(client), 'data: ok\n\n')
  t.equal(sse.sentContentLength, Buffer.byteLength(body(client)))
  t.equal(client.res.headers['x-ok'], 'fine')
  t.equal(client.res.headers.injected, undefined)
  t.notOk(client.res.rawHeaders.some(h => h.includes('\n') || h.includes('\r')))
})

test('invalid headers in plugin options are refused at register time', async t => {
  for (const headers of [{ 'bad name': 'v' }, { 'x-a': 'v\r\nInjected: 1' }] as Record<string, string>[]) {
    const app = Fastify()
    t.teardown(() => app.close())
    await t.rejects(async () => { await app.register(eventSources, { headers }) }, { code: 'FST_ERR_SSE_INVALID_OPTION', message: /headers/ })
  }
})

test('data cannot inject fields: every line break starts a new data line', async t => {
  const { url, source } = await serveSources(t)
  const client = await reader(t, url, '/sse')
  const sse = await source(0)
  const evil = 'x\n\nevent: evil\nid: 666\nretry: 1\r\rdata: y\r\n: c\n'
  sse.send(evil)
  sse.comment('hi\n\ndata: not an event\r\nevent: evil\r')
  sse.send('end')
  await until(() => client.log.events.length === 2)
  t.same(client.log.events, [
    { data: evil.replace(/\r\n|\r|\n/g, '\n'), event: undefined, id: undefined },
    { data: 'end', event: undefined, id: undefined }
  ])
  t.same(client.log.retries, [], 'no retry field appeared')
  t.same(client.log.comments, ['hi', '', 'data: not an event', 'event: evil', ''])
  t.same(client.log.errors, [])
})

test('values the serializer cannot handle throw FST_ERR_SSE_SERIALIZATION; the next message goes through', async t => {
  const { url, source } = await serveSources(t)
  const client = await reader(t, url, '/sse')
  const sse = await source(0)
  const cycle: Record<string, unknown> = {}
  cycle.self = cycle
  t.throws(() => sse.send(cycle), { code: 'FST_ERR_SSE_SERIALIZATION', cause: TypeError }, 'a cycle')
  t.throws(() => sse.send({ n: 1n }), { code: 'FST_ERR_SSE_SERIALIZATION', cause: TypeError }, 'a BigInt')
  t.throws(() => sse.send(() => 1), { code: 'FST_ERR_SSE_SERIALIZATION', message: /not a string/ }, 'a value JSON.stringify turns into undefined')
  await t.rejects(sse.sendAsync(cycle), { code: 'FST_ERR_SSE_SERIALIZATION' })
  t.equal(sse.isActive, true)
  await onlyGoodMessageArrives(t, sse, client)
})

test('a serializer that throws gives FST_ERR_SSE_SERIALIZATION with the cause; the stream stays healthy', async t => {
  const boom = new Error('boom')
  const { url, source } = await serveSources(t, {
    serializer: value => {
      if ((value as { bad?: boolean }).bad === true) throw boom
      return JSON.stringify(value)
    }
  })
  const client = await reader(t, url, '/sse')
  const sse = await source(0)
  t.throws(() => sse.send({ bad: true }), { code: 'FST_ERR_SSE_SERIALIZATION', message: /boom/, cause: boom })
  t.equal(sse.send({ bad: false }), true)
  sse.close()
  await client.ended
  t.equal(body(client), 'data: {"bad":false}\n\n')
})

test('broadcast: bad fields and unserializable data throw before any source gets a byte', async t => {
  const { app, url, source } = await serveSources(t)
  const a = await reader(t, url, '/sse?id=a')
  const b = await reader(t, url, '/sse?id=b')
  const sources = [await source(0), await source(1)]
  const cycle: unknown[] = []
  cycle.push(cycle)
  t.throws(() => app.eventSources.broadcast('x', { event: 'a\nb' }), { code: 'FST_ERR_SSE_INVALID_FIELD' })
  t.throws(() => app.eventSources.broadcast('x', { id: 'a\0' }), { code: 'FST_ERR_SSE_INVALID_FIELD' })
  t.throws(() => app.eventSources.broadcast('x', { retry: -5 }), { code: 'FST_ERR_SSE_INVALID_FIELD' })
  t.throws(() => app.eventSources.broadcast(cycle), { code: 'FST_ERR_SSE_SERIALIZATION' })
  t.throws(() => app.eventSources.broadcast(10n), { code: 'FST_ERR_SSE_SERIALIZATION' })
  t.throws(() => app.eventSources.broadcast('x', { filter: 'a' as never }), { code: 'FST_ERR_SSE_INVALID_FIELD' })
  t.same(sources.map(s => s.sentContentLength), [0, 0])
  t.equal(app.eventSources.broadcast('ok'), 2)
  for (const s of sources) s.close()
  await Promise.all([a.ended, b.ended])
  t.equal(body(a), 'data: ok\n\n')
  t.equal(body(b), 'data: ok\n\n')
})

test('publish: bad fields and unserializable data reject before anything is stored or sent', async t => {
  const { app, url, source } = await serveSources(t)
  const client = await reader(t, url, '/sse?id=a')
  const sse = await source(0)
  const cycle: Record<string, unknown> = {}
  cycle.self = cycle
  await t.rejects(app.eventSources.publish('x', { event: 'a\r' }), { code: 'FST_ERR_SSE_INVALID_FIELD' })
  await t.rejects(app.eventSources.publish('x', { id: 'a\nb' }), { code: 'FST_ERR_SSE_INVALID_FIELD' })
  await t.rejects(app.eventSources.publish('x', { retry: 0.5 }), { code: 'FST_ERR_SSE_INVALID_FIELD' })
  await t.rejects(app.eventSources.publish(cycle), { code: 'FST_ERR_SSE_SERIALIZATION' })
  await t.rejects(app.eventSources.publish({ n: 1n }), { code: 'FST_ERR_SSE_SERIALIZATION' })
  await t.rejects(app.eventSources.publish('x', { to: 5 as never }), { code: 'FST_ERR_SSE_INVALID_FIELD' })
  t.equal(sse.sentContentLength, 0)
  await app.eventSources.publish('ok', { id: '1' })
  await until(() => client.log.events.length === 1)
  sse.close()
  await client.ended
  t.equal(body(client), 'id: 1\ndata: ok\n\n', 'only the good message, and no stored bad one came first')
})
