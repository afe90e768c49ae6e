import { test } from 'tap'
import type { FastifyInstance } from 'fastify'
import type { EventSourceAdapter, LocalPresence } from '../types/index'
import { LocalAdapter } from '../lib/adapters/local'
import eventSources from '../lib/index'
import { buildDemo } from '../examples/app'
import { openRaw } from './helpers/raw'
import { start, until } from './helpers/server'

/** `/sse?id=&topics=a,b` opens a source (identified when id is given) following the listed topics. */
function routes (app: FastifyInstance): void {
  app.get<{ Querystring: { id?: string, topics?: string } }>('/sse', async request => {
    const { id, topics } = request.query
    const sse = request.getEventSource(id === '' ? undefined : id, topics === undefined ? undefined : { topics: topics.split(',') })
    sse.flush()
    await sse.keepAlive()
    return sse.close()
  })
}

function path (id: string | undefined, topics: string[] = []): string {
  const query = new URLSearchParams()
  if (id !== undefined) query.set('id', id)
  if (topics.length > 0) query.set('topics', topics.join(','))
  return '/sse?' + query.toString()
}

const sorted = (list: string[]): string[] => [...list].sort()

test('one instance: presence and count answer from local state, after opens, subscribes, leaves and closes', async t => {
  const { app, url } = await start(t, routes)
  const es = app.eventSources
  t.same(await es.presence('room:1'), [])
  t.equal(await es.count(), 0)

  const alice = await openRaw(t, url + path('alice', ['room:1', 'room:2']))
  await openRaw(t, url + path('bob', ['room:1']))
  const viewer = await openRaw(t, url + path(undefined, ['room:1']))
  await openRaw(t, url + path('anna'))
  await openRaw(t, url + path(undefined))
  await until(() => es.openStreams === 5)

  t.same(sorted(await es.presence('room:1')), ['alice', 'bob'], 'identified followers, anonymous ones have no identifier')
  t.same(await es.presence('room:2'), ['alice'])
  t.same(await es.presence('room:none'), [])
  t.equal(await es.count(), 5, 'every open stream, identified or not')
  t.equal(await es.count({ topic: 'room:1' }), 3, 'a topic counts its anonymous followers too')
  t.equal(await es.count('alice'), 1)
  t.equal(await es.count('nobody'), 0)
  t.equal(await es.count({ prefix: 'a' }), 2)
  t.equal(await es.count({ prefix: '' }), 3, 'the empty prefix: every identified source')

  es.getByIdentifier('alice')?.unsubscribe('room:1')
  t.same(await es.presence('room:1'), ['bob'], 'a leave shows at once')
  t.equal(await es.count({ topic: 'room:1' }), 2)
  await es.subscribe('anna', 'room:2')
  t.same(sorted(await es.presence('room:2')), ['alice', 'anna'], 'a join across instances shows at once here')

  alice.abort()
  viewer.abort()
  await until(() => es.openStreams === 3)
  t.same(await es.presence('room:2'), ['anna'])
  t.equal(await es.count({ topic: 'room:1' }), 1)
  t.equal(await es.count(), 3)
  t.equal(await es.count({ prefix: 'a' }), 1)
})

test('presence: a replaced source is counted once, under its identifier', async t => {
  const { app, url } = await start(t, routes)
  const es = app.eventSources
  await openRaw(t, url + path('alice', ['room:1']))
  await until(() => es.activeConnections === 1)
  await openRaw(t, url + path('alice', ['room:1']))
  await until(() => es.openStreams === 1 && es.activeConnections === 1)
  t.same(await es.presence('room:1'), ['alice'])
  t.equal(await es.count('alice'), 1)
  t.equal(await es.count({ topic: 'room:1' }), 1)
})

test('presence and count reject bad input with FST_ERR_SSE_INVALID_FIELD, and the streams stay healthy', async t => {
  const { app, url } = await start(t, routes)
  const es = app.eventSources
  const alice = await openRaw(t, url + path('alice', ['room:1']))
  for (const bad of ['', 'a\nb', 'x'.repeat(1025), 42, undefined, ['room:1']]) {
    await t.rejects(es.presence(bad as string), { code: 'FST_ERR_SSE_INVALID_FIELD' }, `presence(${JSON.stringify(bad)})`)
  }
  const badTargets: unknown[] = [42, null, {}, { prefix: 1 }, { topic: '' }, { topic: ['room:1'] }, { topic: 'a\0' }, { prefix: 'a', topic: 'b' }]
  for (const bad of badTargets) {
    await t.rejects(es.count(bad as string), { code: 'FST_ERR_SSE_INVALID_FIELD' }, `count(${JSON.stringify(bad)})`)
  }
  await es.publish('still here', { to: 'alice' })
  await until(() => alice.events.length === 1)
  t.equal(alice.events[0].data, 'still here')
})

test('an adapter of your own answers presence and count through its optional pair, seeing the local state', async t => {
  const seen: unknown[] = []
  let local: LocalPresence | undefined
  class Custom extends LocalAdapter {
    override attach (host: Parameters<EventSourceAdapter['attach']>[0]): void {
      super.attach(host)
      local = host.presence
    }

    async presence (topic: string): Promise<string[]> {
      seen.push(['presence', topic])
      return ['elsewhere', ...(local?.presence(topic) ?? [])]
    }

    async count (to: unknown): Promise<number> {
      seen.push(['count', to])
      return 100 + (local?.count(to as string) ?? 0)
    }
  }
  const { app, url } = await start(t, routes, { adapter: new Custom(undefined) })
  await openRaw(t, url + path('alice', ['room:1']))
  await until(() => app.eventSources.openStreams === 1)
  t.same(await app.eventSources.presence('room:1'), ['elsewhere', 'alice'])
  t.equal(await app.eventSources.count({ topic: 'room:1' }), 101)
  t.equal(await app.eventSources.count(), 101)
  t.same(seen, [['presence', 'room:1'], ['count', { topic: 'room:1' }], ['count', undefined]], 'targets arrive checked and copied')
})

test('the presence listener hears each open, identifier and topic change, and nothing once removed', async t => {
  const changes: string[] = []
  let local: LocalPresence | undefined
  class Watching extends LocalAdapter {
    override attach (host: Parameters<EventSourceAdapter['attach']>[0]): void {
      super.attach(host)
      local = host.presence
      local.watch({
        streams: () => changes.push('streams'),
        identifier: id => changes.push('id:' + id),
        topic: (topic, id) => changes.push(`topic:${topic}:${id ?? '-'}`)
      })
    }
  }
  const { app, url } = await start(t, routes, { adapter: new Watching(undefined) })
  const alice = await openRaw(t, url + path('alice', ['room:1']))
  await until(() => app.eventSources.openStreams === 1)
  app.eventSources.getByIdentifier('alice')?.subscribe('room:2')
  alice.abort()
  await until(() => app.eventSources.openStreams === 0)
  t.same(changes.slice(0, 4), ['streams', 'id:alice', 'topic:room:1:alice', 'topic:room:2:alice'])
  t.same(sorted(changes.slice(4)), sorted(['streams', 'id:alice', 'topic:room:1:alice', 'topic:room:2:alice']))
  local?.watch(undefined)
  const before = changes.length
  await openRaw(t, url + path('bob', ['room:1']))
  await until(() => app.eventSources.openStreams === 1)
  t.equal(changes.length, before)
})

test('the demo answers who is in a room', async t => {
  const app = buildDemo({ plugin: eventSources, clockInterval: 60_000 })
  t.teardown(() => app.close())
  await app.listen({ port: 0, host: '127.0.0.1' })
  const url = `http://127.0.0.1:${(app.server.address() as { port: number }).port}`
  await openRaw(t, url + '/events?tab=ann')
  await openRaw(t, url + '/events?tab=bob')
  await until(() => app.eventSources.activeConnections === 2)
  for (const tab of ['ann', 'bob']) {
    const joined = await app.inject({ method: 'POST', url: '/rooms/dev/join', payload: { tab } })
    t.equal(joined.statusCode, 200)
  }
  await app.inject({ method: 'POST', url: '/rooms/dev/leave', payload: { tab: 'bob' } })
  const here = await app.inject('/rooms/dev/presence')
  t.same(here.json(), { room: 'dev', tabs: ['ann'], streams: 1 })
  t.equal((await app.inject('/rooms/nowhere/presence')).statusCode, 404)
})
