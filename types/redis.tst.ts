import Fastify from 'fastify'
import { Cluster, Redis } from 'ioredis'
import { expect, test } from 'tstyche'
import eventSources, { type EventSourceAdapter } from './index'
import redisAdapter, { RedisAdapter, redisAdapter as named, type RedisAdapterOptions, type RedisClusterAdapterOptions } from './redis'
import required = require('./redis')

test('redisAdapter is the default export, a named export and what require() gives', () => {
  expect(named).type.toBe(redisAdapter)
  expect(required).type.toBe(redisAdapter)
  expect(required.redisAdapter).type.toBe(redisAdapter)
})

test('it returns an adapter the plugin accepts', () => {
  const adapter = redisAdapter({ url: 'redis://127.0.0.1:6379', channelPrefix: 'app:', history: { maxLen: 5000 }, publishTimeout: 1000 })
  expect(adapter).type.toBeAssignableTo<EventSourceAdapter>()
  expect(adapter.streamKey).type.toBe<string>()
  expect(new RedisAdapter()).type.toBe<ReturnType<typeof redisAdapter>>()
  expect(Fastify().register(eventSources, { adapter })).type.not.toRaiseError()
})

test('options', () => {
  expect(redisAdapter()).type.not.toRaiseError()
  expect(redisAdapter({ client: new Redis(), history: false })).type.not.toRaiseError()
  expect<RedisAdapterOptions>().type.not.toBeAssignableFrom({ client: 'redis://localhost' })
  expect<RedisAdapterOptions>().type.not.toBeAssignableFrom({ history: { size: 10 } })
  expect<RedisAdapterOptions>().type.not.toBeAssignableFrom({ history: true })
  expect<RedisAdapterOptions>().type.not.toBeAssignableFrom({ publishTimeout: '1s' })
  expect(redisAdapter({ history: { maxLen: 100, keyTtl: 60_000 }, connectTimeout: 2000 })).type.not.toRaiseError()
  expect<RedisAdapterOptions>().type.not.toBeAssignableFrom({ history: { keyTtl: '1h' } })
})

test('exactOptionalPropertyTypes: an option may be given as undefined', () => {
  expect(redisAdapter({ url: process.env.REDIS_URL, client: undefined, history: { maxLen: undefined } })).type.not.toRaiseError()
  expect(redisAdapter({ url: null })).type.toRaiseError()
})

test('a Redis Cluster: nodes or a Cluster client, without url', () => {
  const nodes = [{ host: '127.0.0.1', port: 7000 }, { host: '127.0.0.1', port: 7001 }]
  expect(redisAdapter({ nodes, channelPrefix: 'app:', history: { maxLen: 100, ttl: 60_000 } })).type.toBeAssignableTo<EventSourceAdapter>()
  expect(redisAdapter({ client: new Cluster(nodes), presence: false })).type.toBe<ReturnType<typeof redisAdapter>>()
  expect<RedisClusterAdapterOptions>().type.not.toBeAssignableFrom({ nodes, url: 'redis://127.0.0.1:6379' })
  expect<RedisClusterAdapterOptions>().type.not.toBeAssignableFrom({ nodes: ['127.0.0.1:7000'] })
  expect<RedisClusterAdapterOptions>().type.not.toBeAssignableFrom({ nodes, history: { topics: 10 } })
  expect<RedisClusterAdapterOptions>().type.not.toBeAssignableFrom({ client: new Redis() })
  expect<RedisAdapterOptions>().type.not.toBeAssignableFrom({ client: new Cluster(nodes) })
})
