import diagnostics from 'node:diagnostics_channel'
import Fastify from 'fastify'
import { expect, test } from 'tstyche'
import eventSources, { errors, type CloseReason, type DiagnosticsMessages, type DropKind, type EventSourcesMetrics, type HttpRequestEventSource } from './index'

const app = Fastify()

test('metrics() is a synchronous snapshot', () => {
  const m = app.eventSources.metrics()
  expect(m).type.toBe<EventSourcesMetrics>()
  expect(m.openStreams).type.toBe<number>()
  expect(m.delivered).type.toBe<number>()
  expect(m.closes).type.toBe<Record<CloseReason, number>>()
  expect(m.closes['slow-client']).type.toBe<number>()
  expect(m.closes.unknown).type.toRaiseError()
  expect(app.eventSources.metrics('all')).type.toRaiseError()
  expect(m).type.not.toBeAssignableTo<Promise<unknown>>()
})

test('diagnostics payloads, by channel', () => {
  expect<DiagnosticsMessages['fastify-event-sources:open']>().type.toBe<{ source: HttpRequestEventSource }>()
  expect<DiagnosticsMessages['fastify-event-sources:close']['reason']>().type.toBe<CloseReason>()
  expect<DiagnosticsMessages['fastify-event-sources:publish']['message']['data']>().type.toBe<string>()
  expect<DiagnosticsMessages['fastify-event-sources:replay']>().type.toBe<{ source: HttpRequestEventSource, replayed: number, gap: boolean }>()
  expect<DiagnosticsMessages['fastify-event-sources:drop']['kind']>().type.toBe<DropKind>()
  expect<DropKind>().type.toBe<'message' | 'ping' | 'comment'>()
  expect<DiagnosticsMessages['fastify-event-sources:flush']>().type.toRaiseError()
  diagnostics.subscribe('fastify-event-sources:close', message => {
    const { reason } = message as DiagnosticsMessages['fastify-event-sources:close']
    expect(reason).type.toBe<CloseReason>()
  })
})

test('content negotiation', () => {
  expect(app.register(eventSources, { requireAccept: true })).type.not.toRaiseError()
  expect(app.register(eventSources, { requireAccept: 'yes' })).type.toRaiseError()
  app.get('/sse', async request => {
    expect(request.acceptsEventStream()).type.toBe<boolean>()
    expect(request.acceptsEventStream('text/html')).type.toRaiseError()
  })
  expect(new errors.FST_ERR_SSE_NOT_ACCEPTABLE().statusCode).type.toBe<406>()
  expect(new errors.FST_ERR_SSE_NOT_ACCEPTABLE().code).type.toBe<'FST_ERR_SSE_NOT_ACCEPTABLE'>()
})
