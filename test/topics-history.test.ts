import Fastify from 'fastify'
import { test } from 'tap'
import eventSources from '../lib/index'
import { MemoryTopicHistory } from '../lib/history/memory-topics'
import type { PublishedMessage } from '../lib/history/history'

const to = (topic: string | string[]): PublishedMessage['to'] => ({ topic })

for (const [name, history] of [
  ['history.topics', { topics: 0 }],
  ['history.topics', { topics: 1.5 }],
  ['history.ttl', { ttl: 0 }],
  ['history.ttl', { ttl: '1h' }],
  ['history.size', { size: Infinity }]
] as const) {
  test(`a bad ${name} (${JSON.stringify(history, (_k, v) => v === Infinity ? 'Infinity' : v)}) fails registration with FST_ERR_SSE_INVALID_OPTION`, async t => {
    const app = Fastify()
    t.teardown(() => app.close())
    await t.rejects(async () => { await app.register(eventSources, { history: history as { size: number } }) }, {
      code: 'FST_ERR_SSE_INVALID_OPTION',
      message: new RegExp(`invalid option "${name.replace('.', '\\.')}"`)
    })
  })
}

test('history.topics and history.ttl accept Infinity (never dropped)', async t => {
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(eventSources, { history: { size: 5, topics: Infinity, ttl: Infinity } })
  await app.ready()
  t.pass()
})

test('one sequence across topics; a replay merges the followed rings in publish order, each message once', async t => {
  const store = new MemoryTopicHistory({ size: 10, epoch: 7 })
  const ids = [
    store.append({ data: 'a1', to: to('a') }),
    store.append({ data: 'b1', to: to('b') }),
    store.append({ data: 'ab', to: to(['a', 'b']) }),
    store.append({ data: 'u', to: 'u' }),
    store.append({ data: 'c', to: to('c') }),
    store.append({ data: 'all' }),
    store.append({ data: 'other', to: 'v' })
  ]
  t.same(ids, ['7-1', '7-2', '7-3', '7-4', '7-5', '7-6', '7-7'])
  const replay = store.readAfter('7-1', 'u', ['a', 'b'])
  t.same(replay.messages.map(m => m.data), ['b1', 'ab', 'u', 'all'])
  t.same([replay.gap, replay.latestId], [false, '7-7'])
  t.same(store.readAfter('7-1', undefined, ['b', 'a']).messages.map(m => m.data), ['b1', 'ab'], 'anonymous: topics only')
  t.same(store.readAfter('7-1', 'u').messages.map(m => m.data), ['u', 'all'], 'no topics: as before topics existed')
})

test('trimming one topic reports a gap only to the streams that follow it', async t => {
  const store = new MemoryTopicHistory({ size: 2, epoch: 1 })
  store.append({ data: 'q1', to: to('quiet') })
  for (let n = 0; n < 5; n++) store.append({ data: `b${n}`, to: to('busy') })
  t.same(store.readAfter('1-1', undefined, ['quiet']), { messages: [], gap: false, latestId: '1-6', position: '1-6' })
  const both = store.readAfter('1-1', undefined, ['quiet', 'busy'])
  t.same([both.gap, both.messages.map(m => m.data)], [true, ['b3', 'b4']])
  t.equal(store.readAfter('1-4', undefined, ['busy']).gap, false, 'an id still inside the ring: no gap')
  t.equal(store.readAfter('1-3', undefined, ['busy']).gap, true)
})

test('the least recently published topic history is dropped first, and ttl drops idle ones', async t => {
  const store = new MemoryTopicHistory({ size: 5, topics: 2, epoch: 1 })
  store.append({ data: 'a', to: to('a') })
  store.append({ data: 'b', to: to('b') })
  store.append({ data: 'a again', to: to('a') })
  store.append({ data: 'c', to: to('c') })
  t.equal(store.topicCount, 2)
  t.same(store.readAfter('1-1', undefined, ['a']), { messages: [{ data: 'a again', to: to('a'), id: '1-3', position: '1-3' }], gap: false, latestId: '1-4', position: '1-4' }, 'a was published last: kept')
  t.equal(store.readAfter('1-1', undefined, ['b']).gap, true, 'b was dropped')
  t.equal(store.readAfter('1-4', undefined, ['b']).gap, false, 'nothing dropped after 1-4')

  const idle = new MemoryTopicHistory({ size: 5, ttl: 20, epoch: 1 })
  idle.append({ data: 'x', to: to('x') })
  await new Promise(resolve => setTimeout(resolve, 40))
  t.same(idle.readAfter('1-0', undefined, ['x']).gap, true)
  t.equal(idle.topicCount, 0, 'dropped at the read, with no timer')
})

test('explicit ids are kept and found; an unknown id or one from the future is a gap', async t => {
  const store = new MemoryTopicHistory({ size: 5, epoch: 3 })
  t.equal(store.append({ data: 'one', to: to('t'), id: 'order-1' }), 'order-1')
  store.append({ data: 'two', to: to('t') })
  t.same(store.readAfter('order-1', undefined, ['t']).messages.map(m => m.data), ['two'])
  t.equal(store.readAfter('order-9', undefined, ['t']).gap, true)
  t.equal(store.readAfter('3-99', undefined, ['t']).gap, true)
  t.equal(store.readAfter('4-1', undefined, ['t']).gap, true, 'another epoch')
})

test('an idempotency key is remembered while any ring holds its message', async t => {
  const store = new MemoryTopicHistory({ size: 2, topics: 2, epoch: 1 })
  store.append({ data: 'ab', to: to(['a', 'b']) }, 'k1')
  t.equal(store.keyed('k1'), '1-1')
  store.append({ data: 'a2', to: to('a') })
  store.append({ data: 'a3', to: to('a') })
  t.equal(store.keyed('k1'), '1-1', 'trimmed from a, still held by b')
  store.append({ data: 'c', to: to('c') })
  store.append({ data: 'd', to: to('d') })
  t.equal(store.keyed('k1'), undefined, 'b was dropped: the key is forgotten')
  store.append({ data: 'plain' }, 'k2')
  store.append({ data: 'p2' })
  store.append({ data: 'p3' })
  t.equal(store.keyed('k2'), undefined)
})

test('a topic dropped and published to again still reports what it lost (regression)', async t => {
  const store = new MemoryTopicHistory({ size: 5, topics: 1, epoch: 1 })
  store.append({ data: 't1', to: to('t') })
  store.append({ data: 't2', to: to('t') })
  store.append({ data: 'o', to: to('o') })
  store.append({ data: 't3', to: to('t') })
  const replay = store.readAfter('1-1', undefined, ['t'])
  t.same([replay.gap, replay.messages.map(m => m.data)], [true, ['t3']], 't2 was lost with the dropped history')
  t.equal(store.readAfter('1-3', undefined, ['t']).gap, false, 'nothing of t was lost after 1-3')
})

test('an explicit id is found in O(1) while its message is held, and forgotten after', async t => {
  const store = new MemoryTopicHistory({ size: 2, epoch: 5 })
  store.append({ data: 'one', to: to(['a', 'b']), id: 'order-1' })
  store.append({ data: 'a2', to: to('a') })
  store.append({ data: 'a3', to: to('a') })
  t.same(store.readAfter('order-1', undefined, ['b']), { messages: [], gap: false, latestId: '5-3', position: '5-3' }, 'still held by b')
  store.append({ data: 'b2', to: to('b') })
  store.append({ data: 'b3', to: to('b') })
  const replay = store.readAfter('order-1', undefined, ['b'])
  t.same([replay.gap, replay.messages.map(m => m.data)], [true, ['b2', 'b3']], 'no ring holds it: it cannot place the client')
})
