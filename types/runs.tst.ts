import { Readable } from 'node:stream'
import Fastify from 'fastify'
import { expect, test } from 'tstyche'
import eventSources, { errors, type RunEndReason, type RunOptions, type RunResult, type RunState, type RunStore } from './index'
import redisAdapter from './redis'

const app = Fastify()
app.register(eventSources)

async function * tokens (signal?: AbortSignal): AsyncGenerator<string> {
  if (signal?.aborted !== true) yield 'hello'
}

test('run(): a source or a function of the signal; the result and its reasons', () => {
  expect(app.eventSources.run('answer:1', tokens())).type.toBe<Promise<RunResult>>()
  expect(app.eventSources.run('answer:1', signal => tokens(signal))).type.toBe<Promise<RunResult>>()
  expect(app.eventSources.run('rows', ['a', 'b'])).type.toBe<Promise<RunResult>>()
  expect(app.eventSources.run('bytes', Readable.from([Buffer.from('x')]))).type.toBe<Promise<RunResult>>()
  expect(app.eventSources.run('web', new ReadableStream<string>())).type.toBe<Promise<RunResult>>()
  expect<RunResult['reason']>().type.toBe<'done' | 'cancelled' | 'error'>()
  expect<RunEndReason>().type.toBe<'done' | 'cancelled' | 'error' | 'lost'>()
  expect<RunResult['sent']>().type.toBe<number>()

  expect(app.eventSources.run('k', 'a string')).type.toRaiseError()
  expect(app.eventSources.run('k', 42)).type.toRaiseError()
  expect(app.eventSources.run('k', (signal: AbortSignal) => 'a string')).type.toRaiseError()
  expect(app.eventSources.run(42, ['a'])).type.toRaiseError()
  expect(app.eventSources.run('k')).type.toRaiseError()
})

test('run() options', () => {
  const options: RunOptions<string> = { endEvent: 'done', ttl: 60_000, maxEvents: 500, abandonAfter: 30_000, event: 'token' }
  expect(app.eventSources.run('k', tokens(), options)).type.not.toRaiseError()
  expect(app.eventSources.run('k', [{ n: 1 }], { map: item => ({ data: item.n, event: 'n' }) })).type.not.toRaiseError()
  expect(app.eventSources.run('k', [{ n: 1 }], { map: item => item.n > 0 ? undefined : { data: item } })).type.not.toRaiseError()

  expect(app.eventSources.run('k', tokens(), { ttl: '10m' })).type.toRaiseError()
  expect(app.eventSources.run('k', tokens(), { endEvent: 1 })).type.toRaiseError()
  expect(app.eventSources.run('k', tokens(), { abandonAfter: true })).type.toRaiseError()
  expect(app.eventSources.run('k', tokens(), { unknown: 1 })).type.toRaiseError()
  expect(app.eventSources.run('k', [{ n: 1 }], { map: (item: string) => ({ data: item }) })).type.toRaiseError()
})

test('cancel(), runState(), runningRuns', () => {
  expect(app.eventSources.cancel('k')).type.toBe<Promise<boolean>>()
  expect(app.eventSources.runState('k')).type.toBe<Promise<RunState | undefined>>()
  expect(app.eventSources.runState('k', 'last-id')).type.toBe<Promise<RunState | undefined>>()
  expect<RunState>().type.toBe<'running' | 'ended'>()
  expect(app.eventSources.runningRuns).type.toBe<number>()

  expect(app.eventSources.cancel()).type.toRaiseError()
  expect(app.eventSources.runState('k', 42)).type.toRaiseError()
  // @ts-expect-error read-only
  app.eventSources.runningRuns = 1
})

test('sse.follow()', () => {
  app.get('/answers/:key', async request => {
    const sse = request.getEventSource()
    expect(sse.follow('k')).type.toBe<Promise<void>>()
    expect(sse.follow()).type.toRaiseError()
    expect(sse.follow(['a', 'b'])).type.toRaiseError()
  })
})

test('the error and the Redis option', () => {
  expect(new errors.FST_ERR_SSE_RUN_EXISTS('k').code).type.toBe<'FST_ERR_SSE_RUN_EXISTS'>()
  expect(new errors.FST_ERR_SSE_RUN_EXISTS('k').statusCode).type.toBe<409>()
  expect(redisAdapter({ runs: { lease: 5000 } })).type.not.toRaiseError()
  expect(redisAdapter({ runs: { lease: '5s' } })).type.toRaiseError()
  expect(redisAdapter({ runs: 5000 })).type.toRaiseError()
})

test('a store of your own implements RunStore', () => {
  const store: RunStore = {
    beatInterval: 1000,
    begin: async () => true,
    append: async () => {},
    finish: async () => true,
    read: async () => ({ entries: [], gap: false, next: 1, more: false, ended: false }),
    state: async () => undefined,
    cancel: async () => false,
    beat: async () => undefined,
    close: async () => {}
  }
  expect(store).type.toBeAssignableTo<RunStore>()
  expect({ ...store, read: async () => ({ entries: [] }) }).type.not.toBeAssignableTo<RunStore>()
})
