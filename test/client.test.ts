import { setTimeout as sleep } from 'node:timers/promises'
import type { FastifyReply, FastifyRequest } from 'fastify'
import { test, type Test } from 'tap'
import { EventSource } from 'undici'
import { connect, type AnyEvents, type ConnectOptions, type Connection, type ConnectionCloseReason, type StorageLike } from '../client/index.js'
import { start, until } from './helpers/server'

interface ChatEvents {
  message: string
  feed: { text: string, n: number }
  note: string
  empty: undefined
  terminate: { reason: string }
}

// Short enough that a missed reconnect would have happened several times over while a test waits for silence.
const RETRY = 50
const SILENCE = 6 * RETRY

class MemoryStorage implements StorageLike {
  items = new Map<string, string>()
  getItem (key: string): string | null { return this.items.get(key) ?? null }
  setItem (key: string, value: string): void { this.items.set(key, value) }
}

interface Seen { query: Record<string, string | undefined>, header: string | undefined }

/** A server whose /sse route runs `handler`; records each request's Last-Event-ID header and query. */
async function serve (t: Test, handler: (request: FastifyRequest, reply: FastifyReply) => Promise<unknown>) {
  const seen: Seen[] = []
  const { app, url } = await start(t, app => {
    app.get('/sse', async (request, reply) => {
      const header = request.headers['last-event-id']
      seen.push({ query: request.query as Record<string, string | undefined>, header: typeof header === 'string' ? header : undefined })
      return handler(request, reply)
    })
  }, { retry: RETRY, lastEventIdQuery: 'lastEventId' })
  return { app, url: url + '/sse', seen }
}

function open<Events extends object = AnyEvents> (t: Test, url: string, options: ConnectOptions = {}): Connection<Events> {
  const connection = connect<Events>(url, { EventSource, storage: new MemoryStorage(), ...options })
  t.teardown(() => connection.close())
  return connection
}

function closed<Events extends object> (connection: Connection<Events>): Promise<ConnectionCloseReason> {
  return new Promise(resolve => connection.onClose(resolve))
}

test('typed events arrive parsed: objects as JSON, strings as they were sent, no data as undefined', async t => {
  const { url } = await serve(t, async request => {
    const sse = request.getEventSource<ChatEvents>()
    sse.send({ text: 'héllo ✓', n: 1 }, { event: 'feed' })
    sse.send('plain text\nsecond line')
    sse.send('{ not json', { event: 'note' })
    sse.send(undefined, { event: 'empty' })
    await sse.keepAlive()
    return sse.close()
  })
  const chat = open<ChatEvents>(t, url)
  const got: unknown[] = []
  chat.on('feed', (data, event) => { got.push(['feed', data, event.data]) })
  chat.on('message', data => { got.push(['message', data]) })
  chat.on('note', data => { got.push(['note', data]) })
  chat.on('empty', data => { got.push(['empty', data]) })
  await until(() => got.length === 4, 3000, 'four events')
  t.same(got, [
    ['feed', { text: 'héllo ✓', n: 1 }, '{"text":"héllo ✓","n":1}'],
    ['message', 'plain text\nsecond line'],
    ['note', '{ not json'],
    ['empty', undefined]
  ])
  t.equal(chat.readyState, 1)
})

test('parse: false hands over the text; a parse function is called with the data and the event name', async t => {
  const { url } = await serve(t, async request => {
    const sse = request.getEventSource()
    sse.send({ n: 1 }, { event: 'feed' })
    await sse.keepAlive()
    return sse.close()
  })
  const raw = open(t, url, { parse: false })
  const custom = open(t, url, { parse: (data, event) => `${event}:${data}` })
  const got: Record<string, unknown> = {}
  raw.on('feed', data => { got.raw = data })
  custom.on('feed', data => { got.custom = data })
  await until(() => Object.keys(got).length === 2)
  t.same(got, { raw: '{"n":1}', custom: 'feed:{"n":1}' })
})

test('two handlers of one event get the same parsed value; an unsubscribed handler gets nothing more', async t => {
  const { app, url } = await serve(t, async request => {
    const sse = request.getEventSource('u')
    await sse.keepAlive()
    return sse.close()
  })
  const chat = open<ChatEvents>(t, url)
  const first: unknown[] = []
  const second: unknown[] = []
  const off = chat.on('feed', data => { first.push(data) })
  chat.on('feed', data => { second.push(data) })
  await until(() => app.eventSources.activeConnections === 1)
  app.eventSources.broadcast<ChatEvents>({ text: 'a', n: 1 }, { event: 'feed' })
  await until(() => second.length === 1)
  t.equal(first[0], second[0], 'parsed once')
  off()
  off()
  app.eventSources.broadcast<ChatEvents>({ text: 'b', n: 2 }, { event: 'feed' })
  await until(() => second.length === 2)
  t.equal(first.length, 1)
})

test('the last id is stored under a key from the URL, and a reload resumes from it through the query', async t => {
  const { app, url, seen } = await serve(t, async request => {
    const sse = request.getEventSource('u')
    await sse.keepAlive()
    return sse.close()
  })
  const storage = new MemoryStorage()
  const first = open<ChatEvents>(t, url, { storage })
  const texts: string[] = []
  first.on('feed', data => { texts.push(data.text) })
  await until(() => app.eventSources.activeConnections === 1)
  await app.eventSources.publish<ChatEvents>({ text: 'one', n: 1 }, { event: 'feed' })
  await app.eventSources.publish<ChatEvents>({ text: 'two', n: 2 }, { event: 'feed' })
  await until(() => texts.length === 2)
  const lastId = first.lastEventId
  t.match(lastId, /^\d+-\d+$/)
  t.same([...storage.items], [['fastify-event-sources:' + url, lastId]])

  // A reload: the page's EventSource is gone, a new one starts with no Last-Event-ID header.
  first.close()
  await until(() => app.eventSources.activeConnections === 0)
  await app.eventSources.publish<ChatEvents>({ text: 'missed', n: 3 }, { event: 'feed' })
  const second = open<ChatEvents>(t, url, { storage })
  t.equal(second.lastEventId, lastId, 'starts from the stored id')
  t.equal(second.url, `${url}?lastEventId=${encodeURIComponent(lastId)}`)
  second.on('feed', data => { texts.push(data.text) })
  await until(() => texts.length === 3)
  t.same(texts, ['one', 'two', 'missed'], 'only what came after the stored id')
  t.same(seen.map(s => [s.header, s.query.lastEventId]), [[undefined, undefined], [undefined, lastId]])
  t.not(second.lastEventId, lastId, 'moves on with the replayed message')
  t.equal(storage.getItem('fastify-event-sources:' + url), second.lastEventId)
})

test('storageKey names the key; storage: false keeps nothing; lastEventIdQuery: false sends no query', async t => {
  const { url, seen } = await serve(t, async request => {
    const sse = request.getEventSource()
    sse.send({ text: 'x', n: 1 }, { event: 'feed', id: '5' })
    await sse.keepAlive()
    return sse.close()
  })
  const storage = new MemoryStorage()
  const named = open<ChatEvents>(t, url + '?room=a', { storage, storageKey: 'chat' })
  const got: string[] = []
  named.on('feed', (data, event) => { got.push(event.lastEventId) })
  await until(() => got.length === 1)
  t.same([...storage.items], [['chat', '5']])

  const noQuery = open<ChatEvents>(t, url + '?room=a', { storage, storageKey: 'chat', lastEventIdQuery: false })
  t.equal(noQuery.url, url + '?room=a')
  t.equal(noQuery.lastEventId, '5')
  await until(() => seen.length === 2)
  t.same(seen.map(s => s.query), [{ room: 'a' }, { room: 'a' }])

  const withQuery = open<ChatEvents>(t, url + '?room=a', { storage, storageKey: 'chat' })
  t.equal(withQuery.url, url + '?room=a&lastEventId=5')
  const unstored = open<ChatEvents>(t, url, { storage: false, lastEventId: '7' })
  t.equal(unstored.url, url + '?lastEventId=7', 'an explicit id needs no storage')
  const replaced = open<ChatEvents>(t, url + '?lastEventId=1&room=a#top', { storage: false, lastEventId: '8' })
  t.equal(replaced.url, url + '?lastEventId=8&room=a#top', 'a parameter of that name is replaced, not repeated')
  await until(() => seen.length === 5)
  t.same(seen.slice(2).map(s => s.query.lastEventId).sort(), ['5', '7', '8'])
})

test('a stored id the history no longer holds gives on(\'reset\') with the id asked for', async t => {
  const { url } = await serve(t, async request => {
    const sse = request.getEventSource('u')
    await sse.keepAlive()
    return sse.close()
  })
  const storage = new MemoryStorage()
  storage.setItem('fastify-event-sources:' + url, '1-0')
  const chat = open<ChatEvents>(t, url, { storage })
  const resets: unknown[] = []
  chat.on('reset', data => { resets.push(data) })
  await until(() => resets.length === 1, 3000, 'the reset event')
  t.same(resets, [{ lastEventId: '1-0' }])
  t.equal(chat.readyState, 1, 'a reset does not close')
})

test('the reset event\'s id becomes the resume point even when the page has no reset handler', async t => {
  const { app, url } = await serve(t, async request => {
    const sse = request.getEventSource('u')
    await sse.keepAlive()
    return sse.close()
  })
  await app.eventSources.publish('held')
  const storage = new MemoryStorage()
  storage.setItem('fastify-event-sources:' + url, '1-0')
  const chat = open<ChatEvents>(t, url, { storage })
  const got: string[] = []
  chat.on('message', data => { got.push(data) })
  await until(() => got.length === 1, 3000, 'the held message')
  t.same(got, ['held'])
  t.match(chat.lastEventId, /^\d+-\d+$/)
  t.not(chat.lastEventId, '1-0')
  t.equal(storage.getItem('fastify-event-sources:' + url), chat.lastEventId)
})

test('the end event closes for good: its handlers run, then onClose(\'end\'), and no reconnect', async t => {
  const { url, seen } = await serve(t, async request => {
    const sse = request.getEventSource()
    sse.send({ text: 'token', n: 1 }, { event: 'feed', id: '1' })
    sse.send({ reason: 'done' }, { event: 'end', id: '2' })
    return sse.close()
  })
  const run = open<ChatEvents>(t, url)
  const order: string[] = []
  run.on('feed', data => { order.push(data.text) })
  run.on('end', data => { order.push('end:' + data.reason + ':' + run.readyState) })
  run.onClose(reason => { order.push('close:' + reason) })
  const reason = await closed(run)
  t.equal(reason, 'end')
  t.same(order, ['token', 'end:done:2', 'close:end'], 'the end handler sees the connection closed already')
  t.equal(run.closeReason, 'end')
  t.equal(run.lastEventId, '2')
  await sleep(SILENCE)
  t.equal(seen.length, 1, 'no reconnect')
})

test('endEvent names the final event; endEvent: false closes on none', async t => {
  const { url, seen } = await serve(t, async request => {
    const sse = request.getEventSource()
    sse.send({ reason: 'done' }, { event: 'finished' })
    sse.send({ reason: 'done' }, { event: 'end' })
    if (seen.length === 1) return sse.close()
    await sse.keepAlive()
    return sse.close()
  })
  const named = open(t, url, { endEvent: 'finished' })
  t.equal(await closed(named), 'end')
  const none = open(t, url, { endEvent: false })
  const ends: unknown[] = []
  none.on('end', data => { ends.push(data) })
  await until(() => ends.length === 1)
  t.equal(none.readyState, 1, 'still open')
  t.equal(none.closeReason, undefined)
})

test('the termination event closes for good; without terminateEvent it is an ordinary event', async t => {
  const { url, seen } = await serve(t, async request => {
    const sse = request.getEventSource()
    sse.send({ reason: 'kicked' }, { event: 'terminate' })
    return sse.close()
  })
  const kicked = open<ChatEvents>(t, url, { terminateEvent: 'terminate' })
  const reasons: string[] = []
  kicked.on('terminate', data => { reasons.push(data.reason) })
  t.equal(await closed(kicked), 'terminate')
  t.same(reasons, ['kicked'])
  t.equal(kicked.readyState, 2)
  await sleep(SILENCE)
  t.equal(seen.length, 1, 'no reconnect')

  const plain = open<ChatEvents>(t, url)
  plain.on('terminate', data => { reasons.push(data.reason) })
  await until(() => reasons.length >= 3, 3000, 'a reconnect and a second terminate event')
  t.equal(plain.closeReason, undefined, 'kept reconnecting')
})

test('a reconnect answered 204 closes for good with onClose(\'failed\')', async t => {
  const { url, seen } = await serve(t, async (request, reply) => {
    if (seen.length > 1) return reply.code(204).send()
    const sse = request.getEventSource()
    sse.send('welcome')
    return sse.close()
  })
  const chat = open(t, url)
  const got: unknown[] = []
  const errors: number[] = []
  chat.on('message', data => { got.push(data) })
  chat.onError(() => { errors.push(chat.readyState) })
  t.equal(await closed(chat), 'failed')
  t.same(got, ['welcome'])
  t.same(errors, [0, 2], 'the drop (reconnecting), then the 204 (closed)')
  await sleep(SILENCE)
  t.equal(seen.length, 2, 'no more requests')
})

test('close() closes for good with onClose(\'close\'), once; onOpen and onError report the rest', async t => {
  const { app, url } = await serve(t, async request => {
    const sse = request.getEventSource('u')
    await sse.keepAlive()
    return sse.close()
  })
  const chat = open(t, url)
  let opens = 0
  let errors = 0
  const reasons: string[] = []
  chat.onOpen(() => { opens++ })
  chat.onError(() => { errors++ })
  chat.onClose(reason => { reasons.push(reason) })
  await until(() => opens === 1)
  app.eventSources.getByIdentifier('u')?.close()
  await until(() => opens === 2, 3000, 'a reconnect')
  t.ok(errors >= 1, 'the drop was an error')
  chat.close()
  chat.close()
  await sleep(10)
  t.same(reasons, ['close'])
  t.equal(chat.readyState, 2)
  await until(() => app.eventSources.activeConnections === 0)
})

test('no EventSource at all is a TypeError that says what to pass', async t => {
  t.throws(() => connect('http://127.0.0.1:1/sse', { EventSource: undefined }), { name: 'TypeError', message: /options\.EventSource/ })
  t.throws(() => connect('http://127.0.0.1:1/sse', { EventSource, storage: false, parse: 'json' as unknown as boolean }), { name: 'TypeError', message: /options\.parse/ })
})
