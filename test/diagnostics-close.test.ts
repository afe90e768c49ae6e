import { test } from 'tap'
import type { FastifyInstance } from 'fastify'
import { CLOSE_REASONS } from '../lib/metrics'
import type { CloseReason, HttpRequestEventSource } from '../types/index'
import { reader, stalledClient, tick } from './helpers/clients'
import { on, recordChannels } from './helpers/diagnostics'
import { openRaw } from './helpers/raw'
import { start, until } from './helpers/server'
import { fillUntilStalled, serveSources } from './helpers/sources'

type Test = Parameters<typeof serveSources>[0]

function closesWith (reason: CloseReason, n = 1): Record<CloseReason, number> {
  const closes = {} as Record<CloseReason, number>
  for (const r of CLOSE_REASONS) closes[r] = r === reason ? n : 0
  return closes
}

/** Each way a stream can end, produced for real: resolves the app and the source that ended. */
const CASES: Record<CloseReason, (t: Test) => Promise<{ app: FastifyInstance, ended: HttpRequestEventSource, opened: number }>> = {
  close: async t => {
    const { app, url, source } = await serveSources(t)
    await reader(t, url, '/sse?id=a')
    const sse = await source(0)
    sse.close()
    return { app, ended: sse, opened: 1 }
  },
  client: async t => {
    const { app, url, source } = await serveSources(t)
    const client = await reader(t, url, '/sse')
    const sse = await source(0)
    client.close()
    await until(() => !sse.isActive, 3000, 'the server to see the client leave')
    return { app, ended: sse, opened: 1 }
  },
  error: async t => {
    let ended: HttpRequestEventSource | undefined
    const { app, url } = await start(t, app => {
      app.get('/sse', async request => {
        ended = request.getEventSource('a')
        ended.flush()
        await tick()
        throw new Error('the producer failed')
      })
    })
    await openRaw(t, url + '/sse')
    await until(() => ended !== undefined && !ended.isActive, 3000, 'the failed handler to end the stream')
    return { app, ended: ended as HttpRequestEventSource, opened: 1 }
  },
  timeout: async t => {
    let ended: HttpRequestEventSource | undefined
    const { app, url } = await start(t, app => {
      app.get('/sse', async request => {
        ended = request.getEventSource()
        await ended.waitForFail(30)
        return ended.close()
      })
    })
    await openRaw(t, url + '/sse')
    await until(() => ended !== undefined && !ended.isActive, 3000, 'the idle stream to time out')
    return { app, ended: ended as HttpRequestEventSource, opened: 1 }
  },
  'slow-client': async t => {
    const { app, url, source } = await serveSources(t, { maxBufferedBytes: 8 * 1024 })
    stalledClient(t, url, '/sse?id=slow')
    const sse = await source(0)
    for (let i = 0; i < 40_000 && sse.isActive; i++) {
      if (!sse.send('x'.repeat(1000))) break
      if (sse.bufferedAmount > 4 * 1024) await tick()
    }
    return { app, ended: sse, opened: 1 }
  },
  'drain-timeout': async t => {
    const { app, url, source } = await serveSources(t, { maxBufferedBytes: 1024 * 1024, drainTimeout: 200 })
    stalledClient(t, url, '/sse?id=d')
    const sse = await source(0)
    await fillUntilStalled(sse)
    await sse.keepAlive()
    return { app, ended: sse, opened: 1 }
  },
  replaced: async t => {
    const { app, url, source } = await serveSources(t)
    await reader(t, url, '/sse?id=same')
    const first = await source(0)
    await reader(t, url, '/sse?id=same')
    await source(1)
    return { app, ended: first, opened: 2 }
  },
  shutdown: async t => {
    const { app, url, source } = await serveSources(t)
    await reader(t, url, '/sse?id=a')
    const sse = await source(0)
    await app.close()
    return { app, ended: sse, opened: 1 }
  },
  'ping-failed': async t => {
    const sources = new Map<string, HttpRequestEventSource>()
    const { app, url } = await start(t, app => {
      app.get<{ Params: { id: string } }>('/sse/:id', async request => {
        const sse = request.getEventSource(request.params.id)
        sources.set(request.params.id, sse)
        sse.flush()
        sse.withPing(ping => { ping.interval = 25; ping.start() })
        await sse.keepAlive()
      })
    })
    await openRaw(t, url + '/sse/first')
    await until(() => sources.has('first'))
    await openRaw(t, url + '/sse/second')
    await until(() => sources.has('second'))
    const first = sources.get('first') as HttpRequestEventSource
    const second = sources.get('second') as HttpRequestEventSource
    // One ping round reaches `first` then `second`: killing `second` while `first`'s ping is written means only
    // the ping's own write can find it dead, before any 'close' event is seen.
    const raw = first.reply.raw
    const write = raw.write
    raw.write = function (this: typeof raw, chunk: unknown, ...rest: unknown[]) {
      if (second.isActive && String(chunk).startsWith(':')) second.reply.raw.destroy()
      return (write as (...args: unknown[]) => boolean).call(this, chunk, ...rest)
    } as typeof raw.write
    await until(() => !second.isActive, 3000, 'the dead source to end')
    return { app, ended: second, opened: 2 }
  }
}

for (const reason of CLOSE_REASONS) {
  test(`the close channel reports { source, reason: '${reason}' } and metrics().closes counts it`, async t => {
    const seen = recordChannels(t)
    const { app, ended, opened } = await CASES[reason](t)
    t.equal(ended.closeReason, reason)
    const closes = on(seen, 'fastify-event-sources:close')
    t.equal(closes.length, 1, 'one stream ended')
    t.equal(closes[0].source, ended, 'the payload holds the object getEventSource() returned')
    t.equal(closes[0].reason, reason)
    const opens = on(seen, 'fastify-event-sources:open')
    t.equal(opens.length, opened)
    t.ok(opens.some(o => o.source === ended), 'the ended source was announced on open')
    t.ok(seen.findIndex(s => s.channel === 'fastify-event-sources:open' && s.message.source === ended) <
      seen.findIndex(s => s.channel === 'fastify-event-sources:close'), 'open came before close')
    const metrics = app.eventSources.metrics()
    t.same(metrics.closes, closesWith(reason), 'exactly one close, with this reason')
    t.equal(metrics.opened, opened)
    t.equal(metrics.openStreams, opened - 1)
  })
}

test('the close payload sees the stream already inactive and out of the collection', async t => {
  const seen = recordChannels(t)
  const { app, url, source } = await serveSources(t)
  await reader(t, url, '/sse?id=a')
  const sse = await source(0)
  const atClose: [boolean, number, number][] = []
  const diagnostics = await import('node:diagnostics_channel')
  const onClose = (): void => { atClose.push([sse.isActive, app.eventSources.openStreams, app.eventSources.activeConnections]) }
  diagnostics.subscribe('fastify-event-sources:close', onClose)
  t.teardown(() => { diagnostics.unsubscribe('fastify-event-sources:close', onClose) })
  sse.close()
  t.same(atClose, [[false, 0, 0]])
  t.equal(on(seen, 'fastify-event-sources:close').length, 1)
})

test('a HEAD request opens and closes a stream: both channels fire', async t => {
  const seen = recordChannels(t)
  const { app, url, sources } = await serveSources(t)
  const res = await fetch(url + '/sse?id=probe', { method: 'HEAD' })
  t.equal(res.status, 200)
  await until(() => sources.length === 1)
  t.same(seen.map(s => s.channel), ['fastify-event-sources:open', 'fastify-event-sources:close'])
  t.same(on(seen, 'fastify-event-sources:close')[0], { source: sources[0], reason: 'close' })
  t.same(app.eventSources.metrics().closes, closesWith('close'))
})
