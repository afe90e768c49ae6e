import { Readable } from 'node:stream'
import Fastify, { type FastifyReply, type FastifyRequest } from 'fastify'
import { expect, test } from 'tstyche'
import eventSources, {
  errors,
  fastifyEventSources,
  MemoryHistory,
  type CloseReason,
  type EventSourceCollection,
  type FastifyEventSourcesOptions,
  type HttpRequestEventSource,
  type PingPolicy,
  type PublishedMessage,
  type ReplayResult,
  type StreamMessage,
  type StreamOptions,
  type AdapterHost,
  type AdapterPublishOptions,
  type EventSourceAdapter
} from './index'
import required = require('./index')

const app = Fastify()

test('the plugin is the default export and the named export; require() gives it with both as properties', () => {
  expect(fastifyEventSources).type.toBe(eventSources)
  expect(required.default).type.toBe(eventSources)
  expect(required.fastifyEventSources).type.toBe(eventSources)
  expect(app.register(required)).type.not.toRaiseError()
  expect(app.register(eventSources)).type.not.toRaiseError()
  expect(app.register(fastifyEventSources, {})).type.not.toRaiseError()
})

test('options', () => {
  const options: FastifyEventSourcesOptions = {
    serializer: value => JSON.stringify(value),
    retry: 0,
    ping: { interval: 1000, dataMessage: 'ping' },
    headers: { 'x-stream': 'yes' },
    maxBufferedBytes: 1024,
    slowClient: 'drop',
    history: { size: 10 },
    closeGrace: 0,
    lastEventIdQuery: 'lastEventId'
  }
  expect(app.register(eventSources, options)).type.not.toRaiseError()
  expect(app.register(eventSources, { ping: false, history: false, lastEventIdQuery: false })).type.not.toRaiseError()

  expect(app.register(eventSources, { retry: '1000' })).type.toRaiseError()
  expect(app.register(eventSources, { ping: { interval: '5s' } })).type.toRaiseError()
  expect(app.register(eventSources, { ping: true })).type.toRaiseError()
  expect(app.register(eventSources, { headers: { 'x-number': 1 } })).type.toRaiseError()
  expect(app.register(eventSources, { serializer: (value: unknown) => value })).type.toRaiseError()
  expect(app.register(eventSources, { slowClient: 'ignore' })).type.toRaiseError()
  expect(app.register(eventSources, { chunked: true })).type.not.toRaiseError()
  expect(app.register(eventSources, { chunked: 'yes' })).type.toRaiseError()
  expect(app.register(eventSources, { unknownOption: true })).type.toRaiseError()
})

test('the decorators', () => {
  expect(app.eventSources).type.toBe<EventSourceCollection>()
  app.get('/sse', async (request, reply) => {
    expect(request.getEventSource()).type.toBe<HttpRequestEventSource>()
    expect(request.getEventSource('user-1')).type.toBe<HttpRequestEventSource>()
    expect(request.getEventSource(undefined)).type.toBe<HttpRequestEventSource>()
    expect(request.getEventSource(1)).type.toRaiseError()
    expect(request.getEventSource('a', 'b')).type.toRaiseError()
    expect(reply).type.toBe<FastifyReply>()
  })
})

test('a source\'s properties', () => {
  const sse = {} as HttpRequestEventSource
  expect(sse.identifier).type.toBe<string | undefined>()
  expect(sse.isActive).type.toBe<boolean>()
  expect(sse.request).type.toBe<FastifyRequest>()
  expect(sse.lastEventId).type.toBe<string | undefined>()
  expect(sse.sentContentLength).type.toBe<number>()
  expect(sse.signal).type.toBe<AbortSignal>()
  expect(sse.closeReason).type.toBe<CloseReason | undefined>()
  expect(sse.ping).type.toBe<PingPolicy>()

  expect(() => { sse.isActive = false }).type.toRaiseError()
  expect(() => { sse.identifier = 'other' }).type.toRaiseError()
  expect(() => { sse.sentContentLength = 0 }).type.toRaiseError()
  expect(sse.droppedMessages).type.toBe<number>()
  expect(sse.droppedPings).type.toBe<number>()
  expect(() => { sse.droppedPings = 0 }).type.toRaiseError()
})

test('positions on published messages and replay results', () => {
  expect<PublishedMessage>().type.toBeAssignableFrom({ data: 'x', id: 'order-1', position: '1795263336709-3' })
  expect<PublishedMessage>().type.not.toBeAssignableFrom({ data: 'x', position: 3 })
  expect<ReplayResult>().type.toBeAssignableFrom({ messages: [], gap: false, position: '1-2' })
  expect<ReplayResult>().type.not.toBeAssignableFrom({ messages: [], gap: false, position: [1, 2] })
})

test('a source\'s methods', () => {
  const sse = {} as HttpRequestEventSource
  expect(sse.appendHeader('x-a', '1')).type.toBe<HttpRequestEventSource>()
  expect(sse.appendHeader('x-a')).type.toRaiseError()
  expect(sse.appendHeader('x-a', ['1'])).type.toRaiseError()

  expect(sse.send('text')).type.toBe<boolean>()
  expect(sse.send({ any: 'value' }, { event: 'e', id: '1', retry: 0 })).type.toBe<boolean>()
  expect(sse.send()).type.toBe<boolean>()
  expect(sse.send(null)).type.toBe<boolean>()
  expect(sse.send('x', { event: 1 })).type.toRaiseError()
  expect(sse.send('x', { id: 1 })).type.toRaiseError()
  expect(sse.send('x', { retry: '1' })).type.toRaiseError()
  expect(sse.send('x', { name: 'e' })).type.toRaiseError()

  expect(sse.comment('note')).type.toBe<boolean>()
  expect(sse.comment()).type.toRaiseError()
  expect(sse.comment(1)).type.toRaiseError()

  expect(sse.flush()).type.toBe<HttpRequestEventSource>()
  expect(sse.close()).type.toBe<FastifyReply>()
  expect(sse.keepAlive()).type.toBe<Promise<void>>()
  expect(sse.waitForFail(1000)).type.toBe<Promise<void>>()
  expect(sse.waitForFail()).type.toRaiseError()
  expect(sse.waitForFail('1s')).type.toRaiseError()
})

test('stream(): every kind of source, typed items for map, and no string', () => {
  const sse = {} as HttpRequestEventSource
  async function * tokens (): AsyncGenerator<{ text: string }> {
    yield { text: 'a' }
  }
  expect(sse.stream(tokens())).type.toBe<Promise<number>>()
  expect(sse.stream(['a', 'b'])).type.toBe<Promise<number>>()
  expect(sse.stream(new Set([1, 2]))).type.toBe<Promise<number>>()
  expect(sse.stream(Readable.from(['a']))).type.toBe<Promise<number>>()
  expect(sse.stream(new ReadableStream<string>())).type.toBe<Promise<number>>()
  expect(sse.stream(tokens(), { event: 'token' })).type.toBe<Promise<number>>()

  sse.stream(tokens(), {
    map: item => {
      expect(item).type.toBe<{ text: string }>()
      return item.text === '' ? undefined : { data: item.text, event: 'token', id: '1', retry: 10 }
    }
  })
  // A byte stream's map receives the decoded text of each chunk.
  sse.stream(new ReadableStream<Uint8Array>(), { map: text => { expect(text).type.toBe<string>(); return { data: text } } })
  sse.stream([Buffer.from('x')], { map: text => { expect(text).type.toBe<string>(); return undefined } })
  // A Readable's items are untyped; a map may still say what it expects.
  expect(sse.stream(Readable.from(['a']), { map: (text: string) => ({ data: text }) })).type.not.toRaiseError()
  expect<StreamOptions<number>['map']>().type.toBe<((item: number) => StreamMessage | undefined) | undefined>()

  expect(sse.stream('a string')).type.toRaiseError()
  expect(sse.stream(Object('boxed') as string)).type.toRaiseError()
  expect(sse.stream(42)).type.toRaiseError()
  expect(sse.stream({ a: 1 })).type.toRaiseError()
  expect(sse.stream()).type.toRaiseError()
  expect(sse.stream(tokens(), { event: 1 })).type.toRaiseError()
  expect(sse.stream(tokens(), { map: () => 'data' })).type.toRaiseError()
  expect(sse.stream(tokens(), { map: item => ({ data: item, id: 1 }) })).type.toRaiseError()
  expect(sse.stream(tokens(), { map: (item: number) => ({ data: item }) })).type.toRaiseError()
  expect(sse.stream(tokens(), { other: true })).type.toRaiseError()
})

test('withPing and the ping policy', () => {
  const sse = {} as HttpRequestEventSource
  expect(sse.withPing(ping => {
    expect(ping).type.toBe<PingPolicy>()
    ping.dataMessage = 'still here'
    ping.interval = 5000
    expect(ping.start()).type.toBe<PingPolicy>()
    expect(ping.stop()).type.toBe<PingPolicy>()
  })).type.toBe<HttpRequestEventSource>()
  expect(sse.withPing()).type.toRaiseError()
  expect(sse.withPing(ping => { ping.interval = '5s' })).type.toRaiseError()
  expect(sse.withPing(ping => { ping.dataMessage = 1 })).type.toRaiseError()
  expect(sse.ping.isRunning).type.toBe<boolean>()
  expect(() => { sse.ping.isRunning = true }).type.toRaiseError()
})

test('a source is disposable, so `using` works', () => {
  expect<HttpRequestEventSource>().type.toBeAssignableTo<Disposable>()
  expect<HttpRequestEventSource>().type.toBeAssignableTo<AsyncDisposable>()
})

test('the collection', () => {
  const sources = app.eventSources
  expect(sources.getByIdentifier('user-1')).type.toBe<HttpRequestEventSource | undefined>()
  expect(sources.getByIdentifier()).type.toRaiseError()
  expect(sources.find(identifier => identifier.startsWith('room:'))).type.toBe<HttpRequestEventSource[]>()
  expect(sources.find('room:')).type.toRaiseError()
  expect(sources.find((identifier: number) => identifier > 0)).type.toRaiseError()
  expect(sources.all()).type.toBe<HttpRequestEventSource[]>()
  expect(sources.activeConnections).type.toBe<number>()
  expect(() => { sources.activeConnections = 0 }).type.toRaiseError()

  expect(sources.broadcast('news')).type.toBe<number>()
  expect(sources.broadcast({ n: 1 }, { event: 'e', id: '1', retry: 10, filter: identifier => identifier !== 'me' })).type.toBe<number>()
  expect(sources.broadcast('x', { filter: 'me' })).type.toRaiseError()
  expect(sources.broadcast('x', { event: false })).type.toRaiseError()
})

test('the collection\'s lifecycle events', () => {
  const sources = app.eventSources
  expect(sources.on('registered', source => {
    expect(source).type.toBe<HttpRequestEventSource>()
  })).type.toBe<EventSourceCollection>()
  expect(sources.off('unregistered', (source: HttpRequestEventSource) => { source.close() })).type.toBe<EventSourceCollection>()
  expect(sources.on('opened', () => {})).type.toRaiseError()
  expect(sources.on('registered', (source: string) => source)).type.toRaiseError()
})

test('errors and extras', () => {
  expect(new errors.FST_ERR_SSE_ALREADY_STREAMING().code).type.toBe<'FST_ERR_SSE_ALREADY_STREAMING'>()
  expect(new errors.FST_ERR_SSE_INVALID_OPTION('retry', 'bad').code).type.toBe<'FST_ERR_SSE_INVALID_OPTION'>()
  expect(new MemoryHistory(10).size).type.toBe<number>()
  expect<CloseReason>().type.toBe<'close' | 'client' | 'error' | 'timeout' | 'slow-client' | 'drain-timeout' | 'replaced' | 'shutdown' | 'ping-failed'>()
})

test('exactOptionalPropertyTypes: an optional option or field may be given as undefined, as the runtime accepts', () => {
  const maybe = undefined as string | undefined
  const sse = {} as HttpRequestEventSource
  expect(sse.send('x', { event: maybe, id: maybe, retry: undefined })).type.toBe<boolean>()
  expect(sse.sendAsync('x', { event: maybe })).type.toBe<Promise<boolean>>()
  expect(app.eventSources.broadcast('x', { event: maybe, filter: undefined })).type.toBe<number>()
  expect(app.eventSources.publish('x', { to: maybe, id: maybe })).type.toBe<Promise<void>>()
  expect(app.register(eventSources, { maxConnections: undefined, ping: { interval: undefined }, history: { size: undefined } })).type.not.toRaiseError()
  expect(app.register(eventSources, { serializer: undefined, connectionKey: undefined, lastEventIdQuery: undefined })).type.not.toRaiseError()
  expect(sse.send('x', { event: null })).type.toRaiseError()
  expect(app.register(eventSources, { maxConnections: null })).type.toRaiseError()
})

test('publish with an idempotency key; the adapter seam carries it and positions', () => {
  const sources = app.eventSources
  expect(sources.publish('x', { key: 'order-42' })).type.toBe<Promise<void>>()
  expect(sources.publish('x', { key: 42 })).type.toRaiseError()
  expect(new MemoryHistory(10).keyed('order-42')).type.toBe<string | undefined>()
  expect<PublishedMessage>().type.toBeAssignableFrom({ data: 'x', id: '1-1', position: '1-1' })
  expect<PublishedMessage>().type.not.toBeAssignableFrom({ data: 'x', position: 1 })
  expect<AdapterHost['gap']>().type.toBe<(latestId: string | undefined, lastId: string | undefined) => void>()
  expect<ReturnType<AdapterHost['identified']>>().type.toBe<[identifier: string, openedAt: number][]>()
  expect<Parameters<EventSourceAdapter['publish']>[1]>().type.toBe<AdapterPublishOptions | undefined>()
  expect<AdapterPublishOptions>().type.not.toBeAssignableFrom({ key: null })
  expect<EventSourceAdapter['startPosition']>().type.toBe<(() => string | undefined) | undefined>()
})
