import Fastify from 'fastify'
import { test } from 'tap'
import { request } from 'undici'
import { acceptsEventStream } from '../lib/accept'
import eventSources from '../lib/index'
import { start } from './helpers/server'

const CASES: [string | undefined, boolean][] = [
  [undefined, true],
  ['*/*', true],
  ['text/event-stream', true],
  ['TEXT/Event-Stream', true],
  ['text/*', true],
  ['text/*;q=0', false],
  ['text/*; q=0, */*', false],
  ['text/event-stream;q=0.5, application/json', true],
  ['application/json', false],
  ['application/json, text/html;q=0.9', false],
  ['text/html', false],
  ['*/*;q=0', false],
  ['*/*;q=0, text/event-stream', true],
  ['text/event-stream;q=0, */*', false],
  ['text/event-stream;q=0, text/*;q=1', false],
  ['text/*;q=0, text/event-stream;q=0.001', true],
  ['text/event-stream; charset=utf-8', true],
  ['text/event-stream; charset="UTF-8"', true],
  ['text/event-stream; charset=latin1', false],
  ['text/event-stream; charset=latin1, text/*;q=0.1', true],
  ['text/event-stream;charset=utf-8;q=0, text/event-stream', false],
  ['text/event-stream;q=0, text/event-stream;q=0.2', true],
  ['application/json;v="a,b;text/event-stream", text/html', false],
  ['text/event-stream;q=1.000', true],
  ['text/event-stream;q=0.000', false],
  ['text/event-stream;q=2', false],
  ['text/event-stream;q=abc', false],
  ['text/event-stream;q=abc, */*;q=0.1', true],
  ['', false],
  ['  ,  ', false],
  ['garbage', false],
  ['*/event-stream', false],
  ['text/event-stream;q=0.5;level=1, application/json', true]
]

test('acceptsEventStream follows RFC 9110: q-values, wildcards, the most specific range wins', async t => {
  for (const [header, expected] of CASES) {
    t.equal(acceptsEventStream(header), expected, `Accept: ${header === undefined ? '(absent)' : JSON.stringify(header)}`)
  }
})

test('request.acceptsEventStream() reads the request\'s Accept header over a real socket', async t => {
  const { url } = await start(t, app => {
    app.get('/accepts', async request => ({ accepts: request.acceptsEventStream() }))
  })
  const ask = async (accept: string | undefined): Promise<boolean> => {
    const res = await request(url + '/accepts', { headers: accept === undefined ? {} : { accept } })
    return ((await res.body.json()) as { accepts: boolean }).accepts
  }
  t.equal(await ask(undefined), true, 'absent header')
  t.equal(await ask('*/*'), true, '*/*')
  t.equal(await ask('text/*;q=0'), false, 'text/*;q=0')
  t.equal(await ask('text/event-stream;q=0.5, application/json'), true, 'text/event-stream;q=0.5, application/json')
  t.equal(await ask('application/json'), false, 'application/json')
})

test('requireAccept: getEventSource() on a request that refuses text/event-stream throws FST_ERR_SSE_NOT_ACCEPTABLE (406) without hijacking', async t => {
  const { app, url } = await start(t, app => {
    app.get('/sse', async request => {
      const sse = request.getEventSource('one')
      sse.send('hello')
      return sse.close()
    })
  }, { requireAccept: true })
  const refused = await request(url + '/sse', { headers: { accept: 'application/json' } })
  t.equal(refused.statusCode, 406)
  t.match(refused.headers['content-type'], /^application\/json/)
  t.match(await refused.body.json(), { code: 'FST_ERR_SSE_NOT_ACCEPTABLE', statusCode: 406 })
  t.equal(app.eventSources.metrics().opened, 0, 'no stream was opened')

  const zero = await request(url + '/sse', { headers: { accept: 'text/*;q=0, application/json' } })
  t.equal(zero.statusCode, 406)
  await zero.body.dump()

  for (const accept of ['text/event-stream', '*/*', undefined]) {
    const res = await request(url + '/sse', { headers: accept === undefined ? {} : { accept } })
    t.equal(res.statusCode, 200, `Accept ${String(accept)}`)
    t.match(res.headers['content-type'], /^text\/event-stream/)
    t.equal(await res.body.text(), 'data: hello\n\n')
  }
})

test('without requireAccept, getEventSource() streams whatever the Accept header says', async t => {
  const { url } = await start(t, app => {
    app.get('/sse', async request => {
      const sse = request.getEventSource()
      sse.send('hello')
      return sse.close()
    })
  })
  const res = await request(url + '/sse', { headers: { accept: 'application/json' } })
  t.equal(res.statusCode, 200)
  t.equal(await res.body.text(), 'data: hello\n\n')
})

test('the JSON-or-stream pattern: one route answers JSON to a plain client and a stream to an event stream client', async t => {
  const { url } = await start(t, app => {
    app.get('/orders', async request => {
      if (!request.acceptsEventStream()) return { orders: [1, 2] }
      const sse = request.getEventSource()
      sse.send({ orders: [1, 2] }, { event: 'snapshot' })
      return sse.close()
    })
  }, { requireAccept: true })
  const json = await request(url + '/orders', { headers: { accept: 'application/json' } })
  t.same(await json.body.json(), { orders: [1, 2] })
  const stream = await request(url + '/orders', { headers: { accept: 'text/event-stream' } })
  t.equal(await stream.body.text(), 'event: snapshot\ndata: {"orders":[1,2]}\n\n')
})

test('a bad requireAccept fails registration with FST_ERR_SSE_INVALID_OPTION', async t => {
  const app = Fastify()
  t.teardown(() => app.close())
  await t.rejects(async () => { await app.register(eventSources, { requireAccept: 'yes' as unknown as boolean }) }, {
    code: 'FST_ERR_SSE_INVALID_OPTION',
    message: /invalid option "requireAccept"/
  })
})
