import Fastify from 'fastify'
import { test } from 'tap'
import eventSources from '../lib/index'

const BAD: [string, Record<string, unknown>][] = [
  ['serializer', { serializer: 'json' }],
  ['serializer', { serializer: 5 }],
  ['retry', { retry: -1 }],
  ['retry', { retry: 1.5 }],
  ['retry', { retry: '1000' }],
  ['retry', { retry: NaN }],
  ['ping', { ping: 'on' }],
  ['ping', { ping: null }],
  ['serializer', { serializer: null }],
  ['headers', { headers: null }],
  ['slowClient', { slowClient: null }],
  ['connectionKey', { connectionKey: null }],
  ['resetEvent', { resetEvent: null }],
  ['ping.dataMessage', { ping: { dataMessage: null } }],
  ['ping.interval', { ping: { interval: 0 } }],
  ['ping.interval', { ping: { interval: -5 } }],
  ['ping.interval', { ping: { interval: 2.5 } }],
  ['ping.dataMessage', { ping: { dataMessage: 5 } }],
  ['headers', { headers: 'x-a: 1' }],
  ['headers', { headers: { 'bad name': 'v' } }],
  ['headers', { headers: { 'x-a': 'a\nb' } }],
  ['headers', { headers: { 'x-a': 'a\rb' } }],
  ['headers', { headers: { 'x-a': 'a\0b' } }],
  ['headers', { headers: { 'x-a': { value: 1 } } }],
  ['maxBufferedBytes', { maxBufferedBytes: 0 }],
  ['maxBufferedBytes', { maxBufferedBytes: '1mb' }],
  ['slowClient', { slowClient: 'ignore' }],
  ['drainTimeout', { drainTimeout: 0 }],
  ['maxConnections', { maxConnections: -1 }],
  ['maxConnections', { maxConnections: 1.5 }],
  ['maxConnectionsPerKey', { maxConnectionsPerKey: -1 }],
  ['connectionKey', { connectionKey: 'ip' }],
  ['history', { history: 'yes' }],
  ['history.size', { history: { size: 0 } }],
  ['resetEvent', { resetEvent: '' }],
  ['resetEvent', { resetEvent: 'a\nb' }],
  ['resetEvent', { resetEvent: 5 }],
  ['adapter', { adapter: {} }],
  ['adapter', { adapter: 'redis' }],
  ['batch', { batch: 'yes' }],
  ['fanOutSlice', { fanOutSlice: 0 }],
  ['closeGrace', { closeGrace: -1 }],
  ['lastEventIdQuery', { lastEventIdQuery: '' }],
  ['lastEventIdQuery', { lastEventIdQuery: 5 }]
]

for (const [name, options] of BAD) {
  test(`a bad ${name} (${JSON.stringify(options, (_k, v) => typeof v === 'number' && !Number.isFinite(v) ? String(v) : v)}) fails registration with FST_ERR_SSE_INVALID_OPTION`, async t => {
    const app = Fastify()
    t.teardown(() => app.close())
    await t.rejects(async () => { await app.register(eventSources, options) }, {
      code: 'FST_ERR_SSE_INVALID_OPTION',
      message: new RegExp(`^fastify-event-sources: invalid option "${name.replace('.', '\\.')}"`)
    })
  })
}

test('valid edge values are accepted', async t => {
  const valid: Record<string, unknown>[] = [
    {},
    { retry: 0 },
    { ping: false },
    { ping: {} },
    { ping: { interval: 1, dataMessage: '' } },
    { history: false },
    { history: { size: 1 } },
    { headers: {} },
    { headers: { 'x-number': 5 } },
    { maxConnections: Infinity, maxConnectionsPerKey: 0 },
    { closeGrace: 0 },
    { lastEventIdQuery: false },
    { slowClient: 'drop', batch: true }
  ]
  for (const options of valid) {
    const app = Fastify()
    await app.register(eventSources, options)
    await app.ready()
    t.equal(typeof app.eventSources.broadcast, 'function', JSON.stringify(options))
    await app.close()
  }
})

test('a ping policy changed to a bad value throws FST_ERR_SSE_INVALID_OPTION at start()', async t => {
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(eventSources)
  const codes: string[] = []
  app.get('/sse', async request => {
    const sse = request.getEventSource()
    for (const change of [{ interval: 0 }, { interval: 1.5 }, { dataMessage: 5 }]) {
      try {
        sse.withPing(ping => {
          Object.assign(ping, { interval: 1000, dataMessage: 'ping' }, change)
          ping.start()
        })
      } catch (err) {
        codes.push((err as { code: string }).code)
      }
    }
    codes.push(String(app.eventSources.pingTimers))
    return sse.close()
  })
  await app.listen({ port: 0, host: '127.0.0.1' })
  const res = await fetch(`http://127.0.0.1:${(app.server.address() as { port: number }).port}/sse`)
  await res.text()
  t.same(codes, ['FST_ERR_SSE_INVALID_OPTION', 'FST_ERR_SSE_INVALID_OPTION', 'FST_ERR_SSE_INVALID_OPTION', '0'])
})
