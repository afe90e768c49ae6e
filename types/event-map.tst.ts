import Fastify from 'fastify'
import { expect, test } from 'tstyche'
import type { EventMessage, HttpRequestEventSource } from './index'

interface ChatEvents {
  message: string
  feed: { text: string, from: string }
  typing: { from: string }
  bye: undefined
}

interface NoMessageEvents {
  feed: { text: string }
}

const app = Fastify()

test('getEventSource<Map>() gives a typed source; without a map it is untyped as before', () => {
  app.get('/sse', async request => {
    expect(request.getEventSource<ChatEvents>('user-1')).type.toBe<HttpRequestEventSource<ChatEvents>>()
    expect(request.getEventSource<ChatEvents>()).type.toBe<HttpRequestEventSource<ChatEvents>>()
    expect(request.getEventSource()).type.toBe<HttpRequestEventSource>()
    expect(request.getEventSource<ChatEvents>(1)).type.toRaiseError()
    expect(request.getEventSource<'feed'>()).type.toRaiseError()
  })
})

test('send on a typed source: the event is a key of the map and the data its type', () => {
  const sse = {} as HttpRequestEventSource<ChatEvents>
  expect(sse.send({ text: 'hi', from: 'ann' }, { event: 'feed' })).type.toBe<boolean>()
  expect(sse.send({ text: 'hi', from: 'ann' }, { event: 'feed', id: '1', retry: 10 })).type.toBe<boolean>()
  expect(sse.send({ from: 'ann' }, { event: 'typing' })).type.toBe<boolean>()
  expect(sse.send(undefined, { event: 'bye' })).type.toBe<boolean>()
  expect(sse.sendAsync({ from: 'ann' }, { event: 'typing' })).type.toBe<Promise<boolean>>()

  expect(sse.send({ text: 'hi' }, { event: 'feed' })).type.toRaiseError()
  expect(sse.send({ text: 1, from: 'ann' }, { event: 'feed' })).type.toRaiseError()
  expect(sse.send({ from: 'ann' }, { event: 'feed' })).type.toRaiseError()
  expect(sse.send({ text: 'hi', from: 'ann' }, { event: 'unknown' })).type.toRaiseError()
  expect(sse.send({ text: 'hi', from: 'ann' }, { event: 'feed', id: 1 })).type.toRaiseError()
  expect(sse.send({ text: 'hi', from: 'ann' }, { event: 'feed', name: 'x' })).type.toRaiseError()
  expect(sse.sendAsync('hi', { event: 'typing' })).type.toRaiseError()
})

test('a message without an event name uses the map\'s message key', () => {
  const sse = {} as HttpRequestEventSource<ChatEvents>
  expect(sse.send('plain text')).type.toBe<boolean>()
  expect(sse.send('plain text', { id: '7' })).type.toBe<boolean>()
  expect(sse.send('plain text', { event: 'message' })).type.toBe<boolean>()
  expect(sse.send({ text: 'hi', from: 'ann' })).type.toRaiseError()
  expect(sse.send()).type.toRaiseError()

  const noMessage = {} as HttpRequestEventSource<NoMessageEvents>
  expect(noMessage.send({ text: 'hi' }, { event: 'feed' })).type.toBe<boolean>()
  expect(noMessage.send('plain text')).type.toRaiseError()
  expect(noMessage.send({ text: 'hi' })).type.toRaiseError()
})

test('a typed source keeps every other member, and `this` stays typed', () => {
  const sse = {} as HttpRequestEventSource<ChatEvents>
  expect(sse.flush()).type.toBe<HttpRequestEventSource<ChatEvents>>()
  expect(sse.appendHeader('x-a', '1')).type.toBe<HttpRequestEventSource<ChatEvents>>()
  expect(sse.comment('note')).type.toBe<boolean>()
  expect(sse.identifier).type.toBe<string | undefined>()
})

test('a type alias works as a map as well as an interface', () => {
  type Aliased = { tick: number }
  const sse = {} as HttpRequestEventSource<Aliased>
  expect(sse.send(1, { event: 'tick' })).type.toBe<boolean>()
  expect(sse.send('1', { event: 'tick' })).type.toRaiseError()
})

test('broadcast<Map> and publish<Map> check the event and its data; untyped calls are unchanged', () => {
  const sources = app.eventSources
  expect(sources.broadcast<ChatEvents>({ text: 'hi', from: 'ann' }, { event: 'feed', filter: id => id !== 'ann' })).type.toBe<number>()
  expect(sources.broadcast<ChatEvents>('plain')).type.toBe<number>()
  expect(sources.publish<ChatEvents>({ text: 'hi', from: 'ann' }, { event: 'feed', to: { prefix: 'user-' }, id: '1' })).type.toBe<Promise<void>>()
  expect(sources.publish<ChatEvents>('plain', { to: 'user-1' })).type.toBe<Promise<void>>()

  expect(sources.broadcast<ChatEvents>({ text: 'hi' }, { event: 'feed' })).type.toRaiseError()
  expect(sources.broadcast<ChatEvents>('x', { event: 'nope' })).type.toRaiseError()
  expect(sources.broadcast<ChatEvents>({ text: 'hi', from: 'ann' }, { event: 'feed', filter: 'ann' })).type.toRaiseError()
  expect(sources.publish<ChatEvents>({ from: 'ann' }, { event: 'feed' })).type.toRaiseError()
  expect(sources.publish<ChatEvents>({ text: 'hi', from: 'ann' })).type.toRaiseError()
  expect(sources.publish<ChatEvents>({ text: 'hi', from: 'ann' }, { event: 'feed', to: 1 })).type.toRaiseError()
  expect(sources.publish<NoMessageEvents>('plain')).type.toRaiseError()

  expect(sources.broadcast({ anything: true }, { event: 'whatever' })).type.toBe<number>()
  expect(sources.broadcast()).type.toBe<number>()
  expect(sources.publish('x', { event: 'any', to: 'user-1' })).type.toBe<Promise<void>>()
  expect(sources.publish()).type.toBe<Promise<void>>()
  expect(sources.publish('x', { event: 1 })).type.toRaiseError()
})

test('EventMessage: one message of a map as a value, for producers that yield several events', () => {
  expect<{ event: 'feed', data: { text: string, from: string } }>().type.toBeAssignableTo<EventMessage<ChatEvents>>()
  expect<{ data: string }>().type.toBeAssignableTo<EventMessage<ChatEvents>>()
  expect<{ event: 'typing', data: { from: string }, id: string }>().type.toBeAssignableTo<EventMessage<ChatEvents>>()
  expect<{ event: 'feed', data: { from: string } }>().type.not.toBeAssignableTo<EventMessage<ChatEvents>>()
  expect<{ event: 'nope', data: string }>().type.not.toBeAssignableTo<EventMessage<ChatEvents>>()
  expect<{ data: { text: string } }>().type.not.toBeAssignableTo<EventMessage<NoMessageEvents>>()
})

test('a typed source is still a source: it goes where an untyped one is expected, and a registry lookup can be typed by a cast', () => {
  const typed = {} as HttpRequestEventSource<ChatEvents>
  expect(typed).type.toBeAssignableTo<HttpRequestEventSource>()
  const found = app.eventSources.getByIdentifier('user-1') as HttpRequestEventSource<ChatEvents> | undefined
  expect(found?.send({ from: 'ann' }, { event: 'typing' })).type.toBe<boolean | undefined>()
  expect(found?.send({ from: 'ann' }, { event: 'feed' })).type.toRaiseError()
})

test('stream() on a typed source: event names items of that event\'s type, or map returns messages of the map', () => {
  const sse = {} as HttpRequestEventSource<ChatEvents>
  async function * feed (): AsyncGenerator<{ text: string, from: string }> {}
  async function * numbers (): AsyncGenerator<number> {}
  expect(sse.stream(feed(), { event: 'feed' })).type.toBe<Promise<number>>()
  expect(sse.stream(numbers(), { map: n => ({ event: 'typing', data: { from: String(n) } }) })).type.toBe<Promise<number>>()
  expect(sse.stream(numbers(), { map: n => n > 1 ? { data: String(n) } : undefined })).type.toBe<Promise<number>>()

  expect(sse.stream(numbers(), { event: 'feed' })).type.toRaiseError()
  expect(sse.stream(feed(), { event: 'unknown' })).type.toRaiseError()
  expect(sse.stream(numbers(), { map: n => ({ event: 'feed', data: n }) })).type.toRaiseError()
  expect(sse.stream(numbers(), { event: 'typing', map: () => undefined })).type.toRaiseError()

  const untyped = {} as HttpRequestEventSource
  expect(untyped.stream(numbers(), { event: 'anything' })).type.toBe<Promise<number>>()
  expect(untyped.stream(numbers(), { map: n => ({ data: n, id: String(n) }) })).type.toBe<Promise<number>>()
  expect(untyped.stream(numbers())).type.toBe<Promise<number>>()
})

test('run<Map>() checks what map returns against the event map', () => {
  async function * tokens (): AsyncGenerator<string> {}
  expect(app.eventSources.run<ChatEvents, string>('k', tokens(), { map: text => ({ event: 'feed', data: { text, from: 'bot' } }), ttl: 1000 })).type.toBe<Promise<import('./index').RunResult>>()
  expect(app.eventSources.run<ChatEvents, string>('k', tokens(), { event: 'message' })).type.toBe<Promise<import('./index').RunResult>>()
  expect(app.eventSources.run('k', tokens(), { event: 'anything' })).type.toBe<Promise<import('./index').RunResult>>()

  expect(app.eventSources.run<ChatEvents, string>('k', tokens(), { map: text => ({ event: 'feed', data: text }) })).type.toRaiseError()
  expect(app.eventSources.run<ChatEvents, string>('k', tokens(), { event: 'typing' })).type.toRaiseError()
})
