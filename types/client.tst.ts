import { expect, test } from 'tstyche'
import { connect, type Connection, type ConnectionCloseReason, type EndData, type ReceivedEvent, type ResetData } from '../client/index'

interface ChatEvents {
  message: string
  feed: { text: string, from: string }
  terminate: { reason: string }
}

test('connect<Map>() types on(): the event is a key of the map and the handler gets its data', () => {
  const chat = connect<ChatEvents>('/events')
  expect(chat).type.toBe<Connection<ChatEvents>>()
  expect(chat.on('feed', (data, event) => {
    expect(data).type.toBe<{ text: string, from: string }>()
    expect(event).type.toBe<ReceivedEvent>()
    expect(event.data).type.toBe<string>()
    expect(event.lastEventId).type.toBe<string>()
  })).type.toBe<() => void>()
  chat.on('message', data => { expect(data).type.toBe<string>() })
  chat.on('terminate', data => { expect(data).type.toBe<{ reason: string }>() })

  expect(chat.on('nope', () => {})).type.toRaiseError()
  expect(chat.on('feed', (data: string) => data)).type.toRaiseError()
  expect(chat.on('feed')).type.toRaiseError()
})

test('reset and end are known without being in the map; a map may type them itself', () => {
  const chat = connect<ChatEvents>('/events')
  chat.on('reset', data => { expect(data).type.toBe<ResetData>() })
  chat.on('end', data => { expect(data).type.toBe<EndData>() })
  expect<EndData['reason']>().type.toBeAssignableFrom<'done' | 'cancelled' | 'error' | 'lost'>()

  const custom = connect<{ end: { reason: 'done', tokens: number } }>('/run/1')
  custom.on('end', data => { expect(data).type.toBe<{ reason: 'done', tokens: number }>() })
})

test('untyped: any event, unknown data; reset and end still typed', () => {
  const any = connect('/events')
  expect(any).type.toBe<Connection>()
  any.on('whatever', data => { expect(data).type.toBe<unknown>() })
  any.on('end', data => { expect(data).type.toBe<EndData>() })
  expect(any.on(1, () => {})).type.toRaiseError()
})

test('the connection\'s members', () => {
  const chat = connect<ChatEvents>(new URL('http://localhost/events'))
  expect(chat.readyState).type.toBe<0 | 1 | 2>()
  expect(chat.lastEventId).type.toBe<string>()
  expect(chat.url).type.toBe<string>()
  expect(chat.closeReason).type.toBe<ConnectionCloseReason | undefined>()
  expect(chat.close()).type.toBe<void>()
  expect(chat.onOpen(() => {})).type.toBe<() => void>()
  expect(chat.onError(() => {})).type.toBe<() => void>()
  expect(chat.onClose(reason => { expect(reason).type.toBe<'close' | 'end' | 'terminate' | 'failed'>() })).type.toBe<() => void>()
  expect(() => { chat.lastEventId = '1' }).type.toRaiseError()
  expect(() => { chat.readyState = 2 }).type.toRaiseError()
})

test('options', () => {
  class FakeEventSource {
    readonly readyState = 0
    readonly withCredentials: boolean
    constructor (readonly url: string, init?: { withCredentials?: boolean }) { this.withCredentials = init?.withCredentials === true }
    close (): void {}
    addEventListener (): void {}
    removeEventListener (): void {}
  }
  expect(connect('/events', {
    EventSource: FakeEventSource,
    withCredentials: true,
    parse: (data, event) => event === 'raw' ? data : JSON.parse(data),
    lastEventIdQuery: 'lastEventId',
    storage: new Map<string, string>() as unknown as { getItem (key: string): string | null, setItem (key: string, value: string): void },
    storageKey: 'chat',
    lastEventId: '3-0',
    endEvent: 'done',
    terminateEvent: 'terminate'
  })).type.toBe<Connection>()
  expect(connect('/events', { parse: false, lastEventIdQuery: false, storage: false, endEvent: false, terminateEvent: false })).type.toBe<Connection>()

  expect(connect('/events', { parse: 'json' })).type.toRaiseError()
  expect(connect('/events', { lastEventIdQuery: true })).type.toRaiseError()
  expect(connect('/events', { storage: sessionStorageLike() })).type.toRaiseError()
  expect(connect('/events', { EventSource: class {} })).type.toRaiseError()
  expect(connect('/events', { retry: 1000 })).type.toRaiseError()
  expect(connect()).type.toRaiseError()
})

function sessionStorageLike (): { getItem (key: number): string } {
  return { getItem: () => '' }
}

test('one map serves the server and the page', () => {
  interface Shared { feed: { text: string }, end: { reason: 'done' } }
  const page = connect<Shared>('/run')
  page.on('feed', data => { expect(data).type.toBe<{ text: string }>() })
  page.on('end', data => { expect(data).type.toBe<{ reason: 'done' }>() })
  const server = {} as import('./index').HttpRequestEventSource<Shared>
  expect(server.send({ text: 'x' }, { event: 'feed' })).type.toBe<boolean>()
  expect(server.send({ reason: 'done' }, { event: 'end' })).type.toBe<boolean>()
  expect(server.send({ reason: 'other' }, { event: 'end' })).type.toRaiseError()
})
