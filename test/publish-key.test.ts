import { test } from 'tap'
import type { FastifyInstance } from 'fastify'
import { MemoryHistory } from '../lib/history/memory'
import { start, until } from './helpers/server'
import { readEvents } from './helpers/read-events'

function routes (app: FastifyInstance): void {
  app.get('/sse/:id', async request => {
    const sse = request.getEventSource((request.params as { id: string }).id)
    await sse.keepAlive()
  })
}

test('publish with an idempotency key: a retry while history holds the first is stored and delivered once', async t => {
  const { app, url } = await start(t, routes, { history: { size: 3 } })
  const stream = await readEvents(url + '/sse/u')
  t.teardown(stream.close)
  await until(() => app.eventSources.activeConnections === 1)
  await app.eventSources.publish('order 1', { key: 'order-1' })
  await app.eventSources.publish('order 1', { key: 'order-1' })
  await app.eventSources.publish('other', { key: 'order-2' })
  await app.eventSources.publish('order 1', { key: 'order-1' })
  for (let n = 0; n < 3; n++) await app.eventSources.publish(`filler ${n}`)
  // order-1 has left the ring of 3: outside the history window a retry is a new message.
  await app.eventSources.publish('order 1', { key: 'order-1' })
  await until(() => stream.events.length === 6)
  t.same(stream.events.map(e => e.data), ['order 1', 'other', 'filler 0', 'filler 1', 'filler 2', 'order 1'])
})

test('MemoryHistory remembers a key while it holds the message', async t => {
  const history = new MemoryHistory(2, 1)
  const id = history.append({ data: 'a' }, 'k')
  t.equal(history.keyed('k'), id)
  history.append({ data: 'b' })
  t.equal(history.keyed('k'), id)
  history.append({ data: 'c' })
  t.equal(history.keyed('k'), undefined, 'forgotten with its message')
})

test('publish rejects a bad idempotency key with FST_ERR_SSE_INVALID_FIELD and stores nothing', async t => {
  const { app, url } = await start(t, routes)
  for (const key of ['', 'a\nb', 'a\rb', 'a\0b', 'k'.repeat(1025), 42, null]) {
    await t.rejects(app.eventSources.publish('x', { key: key as string }), { code: 'FST_ERR_SSE_INVALID_FIELD', message: /"key"/ }, typeof key === 'string' && key.length > 8 ? `${key.length} characters` : JSON.stringify(key))
  }
  await app.eventSources.publish('x', { key: 'k'.repeat(1024) })
  const stream = await readEvents(url + '/sse/u', { 'last-event-id': 'none' })
  t.teardown(stream.close)
  await until(() => stream.events.length === 2)
  t.same(stream.events.map(e => e.data), ['{"lastEventId":"none"}', 'x'], 'only the valid one was stored')
})
