import Fastify from 'fastify'
import { expect, test } from 'tstyche'
import type { AdapterHost, CountTarget, EventSourceAdapter, LocalPresence, PresenceListener } from './index'
import redisAdapter from './redis'

const app = Fastify()

test('presence(topic) and count(to?) on the collection', () => {
  const sources = app.eventSources
  expect(sources.presence('room:1')).type.toBe<Promise<string[]>>()
  expect(sources.count()).type.toBe<Promise<number>>()
  expect(sources.count('alice')).type.toBe<Promise<number>>()
  expect(sources.count({ prefix: 'user:' })).type.toBe<Promise<number>>()
  expect(sources.count({ topic: 'room:1' })).type.toBe<Promise<number>>()
  expect(sources.count(undefined)).type.toBe<Promise<number>>()

  expect(sources.presence()).type.toRaiseError()
  expect(sources.presence(['room:1'])).type.toRaiseError()
  expect(sources.presence({ topic: 'room:1' })).type.toRaiseError()
  expect(sources.count(1)).type.toRaiseError()
  expect(sources.count({ topic: ['room:1', 'room:2'] })).type.toRaiseError()
  expect(sources.count({ topics: 'room:1' })).type.toRaiseError()
  expect(sources.count({ prefix: 1 })).type.toRaiseError()
})

test('CountTarget', () => {
  expect<CountTarget>().type.toBeAssignableFrom('alice')
  expect<CountTarget>().type.toBeAssignableFrom({ prefix: 'a' })
  expect<CountTarget>().type.toBeAssignableFrom({ topic: 'room:1' })
  expect<CountTarget>().type.not.toBeAssignableFrom({ topic: ['room:1'] })
  expect<CountTarget>().type.not.toBeAssignableFrom(42)
})

test('an adapter may provide presence and count; the host hands it the local state', () => {
  const adapter: EventSourceAdapter = {
    hasHistory: false,
    attach (host: AdapterHost) {
      expect(host.presence).type.toBe<LocalPresence>()
      expect(host.presence.streams).type.toBe<number>()
      expect(host.presence.presence('room:1')).type.toBe<string[]>()
      expect(host.presence.count({ topic: 'room:1' })).type.toBe<number>()
      expect(host.presence.follows('room:1', 'alice')).type.toBe<boolean>()
      expect(host.presence.watch(undefined)).type.toBe<void>()
      expect(() => { host.presence.streams = 1 }).type.toRaiseError()
    },
    async publish () {},
    async replay () { return { messages: [], gap: false } },
    async presence (topic) { return [topic] },
    async count (to) { return to === undefined ? 0 : 1 },
    async close () {}
  }
  expect(adapter.presence).type.toBe<((topic: string) => Promise<string[]>) | undefined>()
  expect<EventSourceAdapter['presence']>().type.not.toBeAssignableFrom(async () => 1)
  expect<EventSourceAdapter['count']>().type.not.toBeAssignableFrom(async () => ['alice'])
  expect<EventSourceAdapter['count']>().type.not.toBeAssignableFrom(async (to: { topic: string[] }) => to.topic.length)
})

test('a presence listener hears streams, identifiers and topics', () => {
  const listener: PresenceListener = { streams () {}, identifier (id) { expect(id).type.toBe<string>() }, topic (topic, id) { expect(id).type.toBe<string | undefined>() } }
  expect(listener).type.toBeAssignableTo<PresenceListener>()
  expect<PresenceListener>().type.not.toBeAssignableFrom({ streams () {} })
})

test('redisAdapter: the presence option, and presence and count on the adapter', () => {
  const adapter = redisAdapter({ presence: { heartbeat: 5000, flush: 250 } })
  expect(redisAdapter({ presence: false })).type.toBe<typeof adapter>()
  expect(redisAdapter({ presence: {} })).type.toBe<typeof adapter>()
  expect(redisAdapter({ presence: true })).type.toRaiseError()
  expect(redisAdapter({ presence: { heartbeat: '5s' } })).type.toRaiseError()
  expect(redisAdapter({ presence: { ttl: 1 } })).type.toRaiseError()
  expect(adapter.presence('room:1')).type.toBe<Promise<string[]>>()
  expect(adapter.count(undefined)).type.toBe<Promise<number>>()
})
