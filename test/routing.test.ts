import tap, { test } from 'tap'
import type { FastifyInstance } from 'fastify'
import redisAdapter from '../lib/adapters/redis'
import { openRaw } from './helpers/raw'
import { redisClient, redisReady, redisUrl, uniquePrefix } from './helpers/redis'
import { PrivateRedis, hasRedisServer } from './helpers/redis-server'
import { freeze } from './helpers/freeze'
import { Instance } from './helpers/redis-instance'
import { start, until } from './helpers/server'

/**
 * Selective routing, in one process with real Redis: an instance listens to an identifier's or a topic's channel
 * only while a source of its own needs it, and a source misses nothing published while that subscription is set up.
 */

type Opened = (app: FastifyInstance, identifier: string | undefined, topics: string[]) => void

function routes (onOpen?: Opened) {
  return (app: FastifyInstance): void => {
    app.get<{ Querystring: { id?: string, topics?: string } }>('/sse', async request => {
      const topics = request.query.topics === undefined ? [] : request.query.topics.split(',')
      const sse = request.getEventSource(request.query.id, { topics })
      onOpen?.(app, request.query.id, topics)
      sse.flush()
      await sse.keepAlive()
      return sse.close()
    })
  }
}

const sleep = (ms: number): Promise<void> => new Promise(resolve => setTimeout(resolve, ms))

if (redisReady(tap)) {
  test('a new route misses nothing published from the moment getEventSource() returned, from another instance', async t => {
    const prefix = uniquePrefix(t)
    const publisher: { app?: FastifyInstance } = {}
    const burst = (label: string, to: string | { topic: string }): void => {
      // Right after getEventSource() returned, before this instance could have subscribed to the new channel.
      for (let i = 0; i < 40; i++) publisher.app?.eventSources.publish(`${label}-${i}`, { to }).catch(() => {})
    }
    const a = await start(t, routes(), { adapter: redisAdapter({ url: redisUrl, channelPrefix: prefix }) })
    const b = await start(t, routes((_app, id, topics) => {
      if (id !== undefined) burst(id, id)
      for (const topic of topics) burst(topic, { topic })
    }), { adapter: redisAdapter({ url: redisUrl, channelPrefix: prefix }) })
    publisher.app = a.app

    for (let round = 0; round < 5; round++) {
      const byId = await openRaw(t, `${b.url}/sse?id=user-${round}`)
      const byTopic = await openRaw(t, `${b.url}/sse?topics=room-${round}`)
      await until(() => byId.events.length >= 40 && byTopic.events.length >= 40, 5000, `round ${round}: both bursts`)
      await sleep(50)
      t.same(byId.events.map(e => e.data), Array.from({ length: 40 }, (_, i) => `user-${round}-${i}`), `round ${round}: the identifier's 40, once, in order`)
      t.same(byTopic.events.map(e => e.data), Array.from({ length: 40 }, (_, i) => `room-${round}-${i}`), `round ${round}: the topic's 40, once, in order`)
      byId.abort()
      byTopic.abort()
    }
  })

  test('eventSources.subscribe() from another instance: a publish made once it resolved reaches the source', async t => {
    const prefix = uniquePrefix(t)
    const a = await start(t, routes(), { adapter: redisAdapter({ url: redisUrl, channelPrefix: prefix }) })
    const b = await start(t, routes(), { adapter: redisAdapter({ url: redisUrl, channelPrefix: prefix }) })
    const client = await openRaw(t, `${b.url}/sse?id=carol`)
    await until(() => b.app.eventSources.openStreams === 1)
    for (let round = 0; round < 5; round++) {
      await a.app.eventSources.subscribe('carol', `news-${round}`)
      for (let i = 0; i < 10; i++) a.app.eventSources.publish(`news-${round}-${i}`, { to: { topic: `news-${round}` } }).catch(() => {})
    }
    await until(() => client.events.length >= 50, 10_000, 'all 50')
    const expected = []
    for (let round = 0; round < 5; round++) for (let i = 0; i < 10; i++) expected.push(`news-${round}-${i}`)
    t.same(client.events.map(e => e.data), expected, 'every publish after subscribe() resolved, once, in order')
  })

  // Regression: the instance counted the new route as opened when it got to the control message, by its own clock:
  // one that heard of it late (busy, or descheduled) dropped what was published in between.
  test('eventSources.subscribe() heard late by the other instance: what was published once it resolved still reaches the source', async t => {
    const prefix = uniquePrefix(t)
    const a = await start(t, routes(), { adapter: redisAdapter({ url: redisUrl, channelPrefix: prefix }) })
    const b = new Instance(prefix, redisUrl, {}, 'routing-instance.js')
    t.teardown(() => b.stop())
    await b.ready()
    const client = await openRaw(t, `${b.url}/events/dave`)
    for (let n = 0; n < 100 && (await b.call('metrics') as { openStreams: number }).openStreams !== 1; n++) await sleep(50)
    const resume = freeze(t, [b.child.pid as number])
    await a.app.eventSources.subscribe('dave', 'late-news')
    for (let i = 0; i < 5; i++) await a.app.eventSources.publish(`late-${i}`, { to: { topic: 'late-news' } })
    await sleep(300)
    resume()
    await until(() => client.events.length >= 5, 10_000, 'the five messages')
    await sleep(100)
    t.same(client.events.map(e => e.data), ['late-0', 'late-1', 'late-2', 'late-3', 'late-4'], 'every publish after subscribe() resolved, once, in order')
  })

  test('a new route does not bring what was published to it before its first source opened', async t => {
    const prefix = uniquePrefix(t)
    const a = await start(t, routes(), { adapter: redisAdapter({ url: redisUrl, channelPrefix: prefix }) })
    const b = await start(t, routes(), { adapter: redisAdapter({ url: redisUrl, channelPrefix: prefix }) })
    for (let i = 0; i < 5; i++) {
      await a.app.eventSources.publish(`early-${i}`, { to: 'dave' })
      await a.app.eventSources.publish(`early-${i}`, { to: { topic: 'quiet' } })
    }
    // Past the documented margin (50 ms plus a round trip) within which an earlier message may still reach it.
    await sleep(200)
    const byId = await openRaw(t, `${b.url}/sse?id=dave`)
    const byTopic = await openRaw(t, `${b.url}/sse?topics=quiet`)
    await a.app.eventSources.publish('late', { to: 'dave' })
    await a.app.eventSources.publish('late', { to: { topic: 'quiet' } })
    await until(() => byId.events.length >= 1 && byTopic.events.length >= 1, 5000, 'the late messages')
    await sleep(100)
    t.same(byId.events.map(e => e.data), ['late'], 'the identifier: only what came after it opened')
    t.same(byTopic.events.map(e => e.data), ['late'], 'the topic: only what came after it opened')
  })

  test('the last source leaving ends the route: the instance stops receiving what is published to it', async t => {
    const prefix = uniquePrefix(t)
    const redis = redisClient(t)
    const a = await start(t, routes(), { adapter: redisAdapter({ url: redisUrl, channelPrefix: prefix }) })
    const b = await start(t, routes(), { adapter: redisAdapter({ url: redisUrl, channelPrefix: prefix }) })
    const numsub = async (channel: string): Promise<number> => Number((await redis.pubsub('NUMSUB', channel) as [string, number])[1])
    const one = await openRaw(t, `${b.url}/sse?id=erin&topics=room`)
    const two = await openRaw(t, `${b.url}/sse?topics=room`)
    await until(() => b.app.eventSources.openStreams === 2)
    for (const channel of [`${prefix}i:erin`, `${prefix}t:room`]) {
      const deadline = Date.now() + 3000
      while (await numsub(channel) !== 1 && Date.now() < deadline) await sleep(10)
      t.equal(await numsub(channel), 1, `${channel}: one subscriber, b`)
    }
    one.abort()
    await until(() => b.app.eventSources.openStreams === 1)
    await a.app.eventSources.publish('to room', { to: { topic: 'room' } })
    await until(() => two.events.length === 1, 3000, 'the other follower still gets the topic')
    two.abort()
    await until(() => b.app.eventSources.openStreams === 0)
    for (const channel of [`${prefix}i:erin`, `${prefix}t:room`]) {
      const deadline = Date.now() + 3000
      while (await numsub(channel) !== 0 && Date.now() < deadline) await sleep(10)
      t.equal(await numsub(channel), 0, `${channel}: nobody listens once the last source left`)
    }
    const before = b.app.eventSources.metrics().received
    await a.app.eventSources.publish('gone', { to: 'erin' })
    await a.app.eventSources.publish('gone', { to: { topic: 'room' } })
    await a.app.eventSources.publish('to everyone')
    await until(() => b.app.eventSources.metrics().received > before, 3000, 'the message to everyone')
    await sleep(100)
    t.equal(b.app.eventSources.metrics().received - before, 1, 'b received only the message to everyone')
  })

  test('with history: false, a message to several topics reaches a follower of two of them once', async t => {
    const prefix = uniquePrefix(t)
    const a = await start(t, routes(), { adapter: redisAdapter({ url: redisUrl, channelPrefix: prefix, history: false }) })
    const b = await start(t, routes(), { adapter: redisAdapter({ url: redisUrl, channelPrefix: prefix, history: false }) })
    const both = await openRaw(t, `${b.url}/sse?topics=x,y`)
    const onlyY = await openRaw(t, `${b.url}/sse?topics=y`)
    const redis = redisClient(t)
    const deadline = Date.now() + 3000
    while (Number((await redis.pubsub('NUMSUB', `${prefix}t:x`) as [string, number])[1]) === 0 && Date.now() < deadline) await sleep(10)
    await a.app.eventSources.publish('xy', { to: { topic: ['x', 'y'] } })
    await a.app.eventSources.publish('x', { to: { topic: 'x' } })
    await a.app.eventSources.publish('y', { to: { topic: 'y' } })
    await until(() => both.events.length >= 3 && onlyY.events.length >= 2, 3000, 'the messages')
    await sleep(100)
    t.same(both.events.map(e => e.data), ['xy', 'x', 'y'], 'each once, in order')
    t.same(onlyY.events.map(e => e.data), ['xy', 'y'])
    t.equal(b.app.eventSources.metrics().received, 3, 'received once each')
  })

  test('routing option: checked when the adapter is made', async t => {
    for (const routing of ['none', 1, null]) {
      t.throws(() => redisAdapter({ routing: routing as 'all' }), { code: 'FST_ERR_SSE_INVALID_OPTION' }, String(routing))
    }
    t.equal(redisAdapter().routing, 'selective', 'selective by default')
    t.equal(redisAdapter({ routing: 'all' }).routing, 'all')
  })

  test('routes opened in a burst are subscribed in batches, not one command per connection', { skip: hasRedisServer ? false : 'redis-server not found' }, async t => {
    const redis = await PrivateRedis.start(t)
    const client = redis.client(t)
    const b = await start(t, routes(), { adapter: redisAdapter({ url: redis.url }) })
    await client.config('RESETSTAT')
    const n = 200
    const clients = await Promise.all(Array.from({ length: n }, (_, i) => openRaw(t, `${b.url}/sse?id=burst-${i}&topics=t-${i}`)))
    await until(() => b.app.eventSources.openStreams === n, 10_000, 'every stream')
    const channels = Array.from({ length: n }, (_, i) => `fastify-event-sources:i:burst-${i}`)
    const deadline = Date.now() + 5000
    let counts: number[] = []
    do {
      counts = (await client.pubsub('NUMSUB', ...channels) as (string | number)[]).filter((_, i) => i % 2 === 1).map(Number)
      if (counts.every(count => count === 1)) break
      await sleep(20)
    } while (Date.now() < deadline)
    t.ok(counts.every(count => count === 1), 'every identifier channel subscribed once')
    const stats = await client.info('commandstats')
    const calls = Number(/cmdstat_subscribe:calls=(\d+)/.exec(stats)?.[1] ?? 0)
    t.ok(calls > 0 && calls <= n / 2, `${calls} SUBSCRIBE commands for ${n} connections with ${2 * n} routes`)
    for (const c of clients) c.abort()
  })
}

if (redisReady(tap)) {
  test('a new route whose subscribe times out: what was held meanwhile is read again, not lost', { skip: hasRedisServer ? false : 'redis-server not found' }, async t => {
    const redis = await PrivateRedis.start(t)
    const control = redis.client(t)
    const adapterOptions = { url: redis.url, publishTimeout: 300 }
    const a = await start(t, routes(), { adapter: redisAdapter(adapterOptions) })
    const b = await start(t, routes((_app, _id, topics) => {
      if (!topics.includes('new')) return
      // The new route's hold has begun: this message reaches b while it holds, then Redis stops answering
      // until after b's subscribe for the new route has timed out.
      a.app.eventSources.publish('held', { to: { topic: 'old' } }).catch(() => {})
      control.call('CLIENT', 'PAUSE', '1200', 'ALL').catch(() => {})
    }), { adapter: redisAdapter(adapterOptions) })
    const old = await openRaw(t, `${b.url}/sse?topics=old`)
    const deadline = Date.now() + 3000
    while (Number((await control.pubsub('NUMSUB', 'fastify-event-sources:t:old') as [string, number])[1]) === 0 && Date.now() < deadline) await sleep(10)
    const fresh = await openRaw(t, `${b.url}/sse?topics=new`)
    await until(() => old.events.length >= 1, 8000, 'the held message')
    t.same(old.events.map(e => e.data), ['held'], 'delivered once the route was subscribed and the stream read again')
    await a.app.eventSources.publish('after', { to: { topic: 'new' } })
    await until(() => fresh.events.length >= 1, 5000, 'the new route live')
    t.same(fresh.events.map(e => e.data), ['after'])
  })
}

if (redisReady(tap)) {
  for (const history of [true, false]) {
    test(`instances with either routing share a prefix (a rollout), ${history ? 'with' : 'without'} history: every client gets its messages once`, async t => {
      const prefix = uniquePrefix(t)
      const options = (routing: 'all' | 'selective') => ({ adapter: redisAdapter({ url: redisUrl, channelPrefix: prefix, routing, ...(history ? {} : { history: false as const }) }) })
      const all = await start(t, routes(), options('all'))
      const selective = await start(t, routes(), options('selective'))
      const onAll = await openRaw(t, `${all.url}/sse?id=x&topics=p,q`)
      const onSelective = await openRaw(t, `${selective.url}/sse?id=y&topics=p,q`)
      const redis = redisClient(t)
      const deadline = Date.now() + 3000
      while (Number((await redis.pubsub('NUMSUB', `${prefix}t:q`) as [string, number])[1]) === 0 && Date.now() < deadline) await sleep(10)
      for (const [name, app] of [['all', all.app], ['selective', selective.app]] as const) {
        await app.eventSources.publish(`${name}:to x`, { to: 'x' })
        await app.eventSources.publish(`${name}:to y`, { to: 'y' })
        await app.eventSources.publish(`${name}:p`, { to: { topic: 'p' } })
        await app.eventSources.publish(`${name}:p+q`, { to: { topic: ['p', 'q'] } })
        await app.eventSources.publish(`${name}:everyone`)
      }
      const mine = (name: string): string[] => ['all', 'selective'].flatMap(from => [`${from}:to ${name}`, `${from}:p`, `${from}:p+q`, `${from}:everyone`])
      await until(() => onAll.events.length >= 8 && onSelective.events.length >= 8, 5000, 'every message')
      await sleep(100)
      t.same(onAll.events.map(e => e.data), mine('x'), 'the client of the instance with routing \'all\'')
      t.same(onSelective.events.map(e => e.data), mine('y'), 'the client of the selective instance')
    })
  }
}
