import { request as httpRequest } from 'node:http'
import { test } from 'tap'
import type { FastifyInstance } from 'fastify'
import type { TopicIndex } from '../lib/topics'
import type { HttpRequestEventSource } from '../types/index'
import { openRaw, type Raw } from './helpers/raw'
import { MB, settledMemory } from './helpers/memory'
import { start, until } from './helpers/server'

const sleep = (ms: number) => new Promise(resolve => setTimeout(resolve, ms))

/** `/sse?id=&topics=a,b` opens a source (identified when id is given) following the listed topics, and flushes. */
function routes (app: FastifyInstance): void {
  app.get<{ Querystring: { id?: string, topics?: string } }>('/sse', async request => {
    const { id, topics } = request.query
    const sse = request.getEventSource(id === '' ? undefined : id, topics === undefined ? undefined : { topics: topics.split(',') })
    sse.flush()
    await sse.keepAlive()
    return sse.close()
  })
}

/** The instance's topic index, to measure what it holds. */
function topicIndex (app: FastifyInstance): TopicIndex<unknown> {
  return (app.eventSources as unknown as { _topics: TopicIndex<unknown> })._topics
}

function data (raw: Raw): string[] {
  return raw.events.map(e => e.data)
}

function path (id: string | undefined, topics: string[]): string {
  const query = new URLSearchParams()
  if (id !== undefined) query.set('id', id)
  if (topics.length > 0) query.set('topics', topics.join(','))
  return '/sse?' + query.toString()
}

const BAD_TOPICS: [string, unknown][] = [
  ['the empty string', ''],
  ['1,025 characters', 'x'.repeat(1025)],
  ['513 astral characters (1,026 UTF-16 units)', '😀'.repeat(513)],
  ['a LF', 'room\na'],
  ['a CR', 'room\ra'],
  ['a NUL', 'room\0a'],
  ['a number', 42],
  ['a list with one bad topic', ['room:ok', 'bad\n']]
]

test('a topic message reaches its followers, identified or not, and nobody else', async t => {
  const { app, url } = await start(t, routes)
  const alice = await openRaw(t, url + path('alice', ['room:a']))
  const viewer = await openRaw(t, url + path(undefined, ['room:a']))
  const bob = await openRaw(t, url + path('bob', ['room:b']))
  const plain = await openRaw(t, url + path('carol', []))
  await app.eventSources.publish('to a', { to: { topic: 'room:a' } })
  await app.eventSources.publish('to everyone')
  await until(() => alice.events.length === 2 && viewer.events.length === 1 && bob.events.length === 1 && plain.events.length === 1)
  await sleep(20)
  t.same(data(alice), ['to a', 'to everyone'])
  t.same(data(viewer), ['to a'], 'an anonymous follower gets the topic, and a publish to everyone still means every identified source')
  t.same(data(bob), ['to everyone'])
  t.same(data(plain), ['to everyone'])
  t.equal(app.eventSources.activeConnections, 3, 'the anonymous follower is not in the identifier collection')
  t.same(app.eventSources.subscribers('room:a').map(s => s.identifier).sort(), ['alice', undefined])
  t.same(app.eventSources.subscribers('room:z'), [])
})

test('one source reached by its identifier, a prefix, two topics and everyone gets each message once', async t => {
  const { app, url } = await start(t, routes)
  const alice = await openRaw(t, url + path('team:alice', ['room:a', 'room:b']))
  const sources = app.eventSources
  await sources.publish('1 identifier', { to: 'team:alice' })
  await sources.publish('2 prefix', { to: { prefix: 'team:' } })
  await sources.publish('3 both topics', { to: { topic: ['room:a', 'room:b'] } })
  await sources.publish('4 a topic twice and another', { to: { topic: ['room:a', 'room:a', 'room:c'] } })
  await sources.publish('5 everyone')
  t.equal(sources.broadcast('6 broadcast to both topics', { topic: ['room:b', 'room:a'] }), 1, 'broadcast counts the source once')
  t.equal(sources.broadcast('7 broadcast to everyone'), 1)
  await until(() => alice.events.length >= 7)
  await sleep(30)
  t.same(data(alice), ['1 identifier', '2 prefix', '3 both topics', '4 a topic twice and another', '5 everyone', '6 broadcast to both topics', '7 broadcast to everyone'])
})

test('subscribe and unsubscribe on the source: live from then on, chainable, no-ops once ended', async t => {
  let source: HttpRequestEventSource | undefined
  const { app, url } = await start(t, app => {
    app.get('/sse', async request => {
      const sse = request.getEventSource('u', { topics: 'declared' })
      source = sse
      sse.flush()
      await sse.keepAlive()
    })
  })
  const raw = await openRaw(t, url + '/sse')
  const sse = source as HttpRequestEventSource
  t.same([...sse.topics], ['declared'])
  await app.eventSources.publish('before', { to: { topic: 'later' } })
  t.equal(sse.subscribe(['later', 'other']), sse, 'subscribe returns the source')
  t.same([...sse.topics].sort(), ['declared', 'later', 'other'])
  await app.eventSources.publish('after', { to: { topic: 'later' } })
  t.equal(sse.unsubscribe('declared'), sse, 'unsubscribe returns the source')
  t.equal(sse.unsubscribe('never-followed'), sse, 'unsubscribing an unfollowed topic is harmless')
  await app.eventSources.publish('to declared', { to: { topic: 'declared' } })
  await app.eventSources.publish('to other', { to: { topic: 'other' } })
  await until(() => raw.events.length === 2)
  await sleep(20)
  t.same(data(raw), ['after', 'to other'])

  sse.close()
  t.same([...sse.topics], [], 'an ended source follows nothing')
  t.equal(sse.subscribe('late'), sse, 'subscribe on an ended source returns it')
  t.same([...sse.topics], [], '...and does nothing')
  t.equal(sse.unsubscribe('late'), sse)
  t.same(app.eventSources.subscribers('late'), [])
  t.equal(topicIndex(app).topicCount, 0)
})

test('eventSources.subscribe / unsubscribe join and leave the matching sources by identifier or prefix', async t => {
  const { app, url } = await start(t, routes)
  const alice = await openRaw(t, url + path('team:alice', []))
  const bob = await openRaw(t, url + path('team:bob', []))
  const eve = await openRaw(t, url + path('other:eve', []))
  const sources = app.eventSources
  const joined = sources.subscribe({ prefix: 'team:' }, ['room:7'])
  t.ok(joined instanceof Promise)
  await joined
  t.same(sources.subscribers('room:7').map(s => s.identifier).sort(), ['team:alice', 'team:bob'], 'joined once the promise resolves')
  await sources.subscribe('other:eve', 'room:8')
  await sources.subscribe('nobody', 'room:9')
  t.same(sources.subscribers('room:9'), [], 'an identifier with no source here is not an error')
  await sources.publish('room 7', { to: { topic: 'room:7' } })
  await sources.unsubscribe('team:bob', 'room:7')
  await sources.publish('room 7 again', { to: { topic: 'room:7' } })
  await sources.publish('room 8', { to: { topic: 'room:8' } })
  await until(() => alice.events.length === 2 && bob.events.length === 1 && eve.events.length === 1)
  await sleep(20)
  t.same(data(alice), ['room 7', 'room 7 again'])
  t.same(data(bob), ['room 7'])
  t.same(data(eve), ['room 8'])
  await t.rejects(sources.subscribe(undefined as unknown as string, 'x'), { code: 'FST_ERR_SSE_INVALID_FIELD' })
  await t.rejects(sources.subscribe({ prefix: 1 } as unknown as string, 'x'), { code: 'FST_ERR_SSE_INVALID_FIELD' })
})

test('a source that ends leaves every topic, however it ends', async t => {
  const { app, url } = await start(t, routes)
  const index = topicIndex(app)
  const closed = await openRaw(t, url + path('a', ['t1', 't2']))
  const gone = await openRaw(t, url + path(undefined, ['t2', 't3']))
  await openRaw(t, url + path('r', ['t3']))
  t.equal(index.topicCount, 3)
  t.equal(index.sourceCount, 3)
  app.eventSources.getByIdentifier('a')?.close()
  await until(() => closed.ended)
  gone.abort()
  await until(() => app.eventSources.openStreams === 1)
  t.same([index.topicCount, index.sourceCount], [1, 1], 'closed by the server and gone client-side')
  await openRaw(t, url + path('r', ['t4']))
  await until(() => app.eventSources.openStreams === 1)
  t.same(app.eventSources.subscribers('t3'), [], 'a replaced source left its topics')
  t.same(app.eventSources.subscribers('t4').length, 1)
  t.same([index.topicCount, index.sourceCount], [1, 1])
})

for (const [name, topic] of BAD_TOPICS) {
  test(`a bad topic (${name}) is rejected before anything is written or stored`, async t => {
    let source: HttpRequestEventSource | undefined
    const { app, url } = await start(t, app => {
      routes(app)
      app.get('/open-bad', async request => {
        request.getEventSource('x', { topics: topic as string })
      })
      app.get('/ok', async request => {
        source = request.getEventSource('u', { topics: 'room:ok' })
        source.flush()
        await source.keepAlive()
      })
    })
    const raw = await openRaw(t, url + '/ok')
    const sse = source as HttpRequestEventSource
    const sources = app.eventSources
    const code = { code: 'FST_ERR_SSE_INVALID_FIELD' }

    await t.rejects(sources.publish('bad', { to: { topic: topic as string } }), code, 'publish rejects')
    t.throws(() => sources.broadcast('bad', { topic: topic as string }), code, 'broadcast throws')
    t.throws(() => sse.subscribe(topic as string), code, 'source.subscribe throws')
    t.throws(() => sse.unsubscribe(topic as string), code, 'source.unsubscribe throws')
    await t.rejects(sources.subscribe('u', topic as string), code, 'eventSources.subscribe rejects')
    await t.rejects(sources.unsubscribe('u', topic as string), code, 'eventSources.unsubscribe rejects')
    if (typeof topic === 'string') t.throws(() => sources.subscribers(topic), code, 'subscribers throws')
    t.same([...sse.topics], ['room:ok'], 'the source follows what it did')
    t.equal(topicIndex(app).topicCount, 1, 'no topic was added, not even the good one of a list')

    const refused = await new Promise<{ status: number, body: string }>((resolve, reject) => {
      httpRequest(url + '/open-bad', res => {
        let body = ''
        res.on('data', chunk => { body += chunk })
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body }))
      }).on('error', reject).end()
    })
    t.equal(refused.status, 500, 'getEventSource with a bad topic never opens a stream')
    t.match(JSON.parse(refused.body), { code: 'FST_ERR_SSE_INVALID_FIELD' })
    t.equal(sources.getByIdentifier('x'), undefined)

    // Nothing stored: a reconnect from before the bad publishes replays only the good message after it.
    await sources.publish('good', { to: { topic: 'room:ok' } })
    await until(() => raw.events.length === 1)
    const resumed = await openRaw(t, url + '/sse?id=u2&topics=room:ok')
    await sleep(20)
    t.same(data(resumed), [])
    t.same(data(raw), ['good'], 'the stream stayed healthy and got nothing else')
  })
}

test('an empty list of topics follows nothing; as a destination it is rejected', async t => {
  const { app, url } = await start(t, app => {
    app.get('/sse', async request => {
      const sse = request.getEventSource('u', { topics: [] })
      sse.subscribe([]).unsubscribe([])
      sse.flush()
      await sse.keepAlive()
    })
  })
  await openRaw(t, url + '/sse')
  const sources = app.eventSources
  await sources.subscribe('u', [])
  await sources.unsubscribe('u', [])
  t.same([...(sources.getByIdentifier('u')?.topics ?? ['missing'])], [])
  t.equal(topicIndex(app).sourceCount, 0, 'no index entry for a source following nothing')
  await t.rejects(sources.publish('x', { to: { topic: [] } }), { code: 'FST_ERR_SSE_INVALID_FIELD' })
  t.throws(() => sources.broadcast('x', { topic: [] }), { code: 'FST_ERR_SSE_INVALID_FIELD' })
})

test('the longest topic passes: 1,024 UTF-16 code units, astral characters included', async t => {
  const { app, url } = await start(t, routes)
  const long = '😀'.repeat(512)
  const raw = await openRaw(t, url + path('u', []))
  await app.eventSources.subscribe('u', [long, 'x'.repeat(1024)])
  await app.eventSources.publish('long', { to: { topic: long } })
  await until(() => raw.events.length === 1)
  t.same(data(raw), ['long'])
})

/** A stream opened and read to nowhere; no teardown kept per stream, so the memory measured is the server's. */
function churnOpen (url: string): Promise<{ abort: () => void }> {
  return new Promise((resolve, reject) => {
    const req = httpRequest(url, res => {
      res.resume()
      resolve({ abort: () => { req.destroy() } })
    })
    req.on('error', reject)
    req.end()
  })
}

test('no empty topic structure is left after 3,000 churned subscribers', async t => {
  const { app, url } = await start(t, routes)
  const index = topicIndex(app)
  const BATCH = 100
  const TOTAL = 3000
  // Warm up before the baseline, so the measure is the index and not the first use of the code paths.
  for (const raw of await Promise.all(Array.from({ length: BATCH }, (_, i) => churnOpen(url + path(`w${i}`, ['warm', `w:${i}`]))))) raw.abort()
  await until(() => app.eventSources.openStreams === 0, 10_000, 'warm-up streams to end')
  const baseline = await settledMemory()
  let peakTopics = 0
  let peakSources = 0
  for (let n = 0; n < TOTAL; n += BATCH) {
    const opened = await Promise.all(Array.from({ length: BATCH }, (_, i) => {
      const k = n + i
      // Identified and anonymous, shared rooms and one topic of their own, some joining more once open.
      return churnOpen(url + path(k % 3 === 0 ? undefined : `user:${k}`, [`room:${k % 10}`, `own:${k}`]))
    }))
    for (let i = 0; i < BATCH; i += 2) app.eventSources.subscribers(`own:${n + i}`)[0]?.subscribe([`late:${n + i}`, 'lobby'])
    await app.eventSources.subscribe({ prefix: 'user:' }, 'announcements')
    peakTopics = Math.max(peakTopics, index.topicCount)
    peakSources = Math.max(peakSources, index.sourceCount)
    for (let i = 0; i < BATCH; i++) {
      // Half go away client-side, half leave their topics first and are closed by the server.
      if (i % 2 === 0) {
        opened[i].abort()
      } else {
        const source = app.eventSources.subscribers(`own:${n + i}`)[0]
        source.unsubscribe([...source.topics])
        source.close()
      }
    }
    await until(() => app.eventSources.openStreams === 0, 10_000, 'the batch to end')
  }
  const after = await settledMemory()
  t.ok(peakTopics >= BATCH && peakSources === BATCH, `the index held up to ${peakTopics} topics for ${peakSources} sources`)
  t.equal(index.topicCount, 0, 'no topic entry left')
  t.equal(index.sourceCount, 0, 'no source entry left')
  t.same(app.eventSources.subscribers('lobby'), [])
  // A leaked source holds its request, reply and socket (tens of KiB): 3,000 of them would be far past this.
  t.ok(after - baseline < 8 * MB, `heap + external after ${TOTAL} churned subscribers: ${((after - baseline) / 1024).toFixed(0)} KiB over the warm baseline`)
})
