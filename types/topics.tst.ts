import Fastify from 'fastify'
import { expect, test } from 'tstyche'
import {
  MemoryTopicHistory,
  type ControlMessage,
  type EventSourceAdapter,
  type HistoryStore,
  type HttpRequestEventSource,
  type PublishTarget,
  type ReplayResult,
  type TopicTarget
} from './index'
import redisAdapter, { type RedisAdapter } from './redis'

const app = Fastify()

test('getEventSource takes topics at open', () => {
  app.get('/sse', async request => {
    expect(request.getEventSource('u', { topics: 'room:a' })).type.toBe<HttpRequestEventSource>()
    expect(request.getEventSource(undefined, { topics: ['room:a', 'room:b'] })).type.toBe<HttpRequestEventSource>()
    expect(request.getEventSource('u', {})).type.toBe<HttpRequestEventSource>()
    expect(request.getEventSource('u', { topics: 1 })).type.toRaiseError()
    expect(request.getEventSource('u', { topics: [1] })).type.toRaiseError()
    expect(request.getEventSource('u', { topic: 'a' })).type.toRaiseError()
  })
})

test('a source\'s topics', () => {
  const sse = {} as HttpRequestEventSource
  expect(sse.topics).type.toBe<ReadonlySet<string>>()
  expect(sse.subscribe('a')).type.toBe<HttpRequestEventSource>()
  expect(sse.subscribe(['a', 'b']).unsubscribe('a')).type.toBe<HttpRequestEventSource>()
  expect(sse.subscribe()).type.toRaiseError()
  expect(sse.subscribe(1)).type.toRaiseError()
  expect(sse.unsubscribe({ topic: 'a' })).type.toRaiseError()
  expect(() => { sse.topics = new Set() }).type.toRaiseError()
  expect(() => { sse.topics.add('a') }).type.toRaiseError()
})

test('publish, broadcast, subscribers, subscribe and unsubscribe on the collection', () => {
  const sources = app.eventSources
  expect(sources.publish('x', { to: { topic: 'room:a' } })).type.toBe<Promise<void>>()
  expect(sources.publish('x', { to: { topic: ['room:a', 'room:b'] }, event: 'chat', id: '1', retry: 10 })).type.toBe<Promise<void>>()
  expect(sources.publish('x', { to: { topic: 1 } })).type.toRaiseError()
  expect(sources.publish('x', { to: { topics: 'a' } })).type.toRaiseError()
  expect(sources.broadcast('x', { topic: 'room:a' })).type.toBe<number>()
  expect(sources.broadcast('x', { topic: ['a', 'b'], filter: identifier => identifier !== 'me' })).type.toBe<number>()
  expect(sources.broadcast('x', { topic: true })).type.toRaiseError()
  expect(sources.subscribers('room:a')).type.toBe<HttpRequestEventSource[]>()
  expect(sources.subscribers()).type.toRaiseError()
  expect(sources.subscribers(['a'])).type.toRaiseError()
  expect(sources.subscribe('user:1', 'room:7')).type.toBe<Promise<void>>()
  expect(sources.subscribe({ prefix: 'team:' }, ['room:7', 'room:8'])).type.toBe<Promise<void>>()
  expect(sources.unsubscribe('user:1', ['room:7'])).type.toBe<Promise<void>>()
  expect(sources.subscribe({ topic: 'a' }, 'room:7')).type.toRaiseError()
  expect(sources.subscribe('user:1')).type.toRaiseError()
  expect(sources.unsubscribe(undefined, 'a')).type.toRaiseError()
  expect<{ topic: string[] }>().type.toBeAssignableTo<TopicTarget>()
  expect<{ topic: string[] }>().type.not.toBeAssignableTo<PublishTarget>()
})

test('history options', () => {
  expect(app.register(import('./index'), { history: { size: 100, topics: 500, ttl: 60_000 } })).type.not.toRaiseError()
  expect(app.register(import('./index'), { history: { ttl: '1h' } })).type.toRaiseError()
  expect(app.register(import('./index'), { history: { rooms: 5 } })).type.toRaiseError()
  const store = new MemoryTopicHistory({ size: 10, topics: 5, ttl: 1000 })
  expect(store.readAfter('1-1', undefined, ['a'])).type.toBe<ReplayResult>()
  expect(store.topicCount).type.toBe<number>()
  expect(new MemoryTopicHistory({ size: '10' })).type.toRaiseError()
})

test('custom stores and adapters written before topics still fit', () => {
  const old = {
    append: (message: { data: string }) => message.data,
    readAfter: (lastEventId: string, identifier: string): ReplayResult => ({ messages: [], gap: identifier === lastEventId })
  }
  expect(old).type.toBeAssignableTo<HistoryStore>()
  const control: ControlMessage = { op: 'subscribe', to: { prefix: 'a' }, topics: ['t'] }
  expect(control).type.toBeAssignableTo<Parameters<NonNullable<EventSourceAdapter['control']>>[0]>()
  expect<ControlMessage>().type.not.toBeAssignableTo<{ op: 'join' }>()
})

test('code written before topics still narrows a PublishTarget', () => {
  const to = {} as PublishTarget
  expect(typeof to === 'object' ? to.prefix : to).type.toBe<string>()
})

test('Redis history options for topics, and the control channel', () => {
  expect(redisAdapter({ history: { maxLen: 100, topics: 500, ttl: 60_000 } })).type.toBe<RedisAdapter>()
  expect(redisAdapter({ history: { topics: Infinity, ttl: Infinity } })).type.toBe<RedisAdapter>()
  expect(redisAdapter({ history: { ttl: '1h' } })).type.toRaiseError()
  expect(redisAdapter().controlChannel).type.toBe<string>()
  expect(redisAdapter().control).type.toBe<((message: ControlMessage) => Promise<void>) | undefined>()
})
