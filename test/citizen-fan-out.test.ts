import { test } from 'tap'
import type { HttpRequestEventSource } from '../types/index'
import { reader } from './helpers/clients'
import { until } from './helpers/server'
import { serveSources } from './helpers/sources'

const CLIENTS = 260

test('a broadcast that pushes every client past the bound ends them in slices, not on the spot (issue 11, point 5)', async t => {
  const { app, url } = await serveSources(t, { maxBufferedBytes: 1024, fanOutSlice: 1 })
  const clients = []
  for (let i = 0; i < CLIENTS; i++) clients.push(await reader(t, url, `/sse?id=c${i}`))
  await until(() => app.eventSources.activeConnections === CLIENTS, 10_000, 'every client')
  const sources = app.eventSources.all()

  // Count turns of the loop, and note the turn on which each source leaves the collection.
  let turn = 0
  let spinning = true
  const spin = (): void => { turn++; if (spinning) setImmediate(spin) }
  setImmediate(spin)
  const endedOn = new Map<HttpRequestEventSource, number>()
  app.eventSources.on('unregistered', source => { endedOn.set(source, turn) })

  const delivered = app.eventSources.broadcast('x'.repeat(2000))
  const endedDuringBroadcast = endedOn.size
  t.equal(delivered, 0, 'no client took a message larger than the bound')
  t.ok(endedDuringBroadcast < CLIENTS, `the fan-out returned before ending them all (${endedDuringBroadcast} of ${CLIENTS} ended in it)`)
  t.ok(sources.some(s => s.isActive), 'some are still to be ended when broadcast returns')

  await until(() => endedOn.size === CLIENTS, 10_000, 'every source to end')
  spinning = false
  t.ok(sources.every(s => s.closeReason === 'slow-client'), 'every one ended as slow-client')
  t.ok(new Set(endedOn.values()).size >= 3, `ended over ${new Set(endedOn.values()).size} turns of the loop`)
  await Promise.all(clients.map(c => c.ended))
  t.equal(app.eventSources.openStreams, 0)
})

test('a source pushed past the bound by a deferred share takes no more writes before it ends', async t => {
  const { app, url } = await serveSources(t, { maxBufferedBytes: 1024, fanOutSlice: 1 })
  for (let i = 0; i < 70; i++) await reader(t, url, `/sse?id=c${i}`)
  await until(() => app.eventSources.activeConnections === 70, 10_000, 'every client')
  const last = app.eventSources.getByIdentifier('c69') as HttpRequestEventSource
  app.eventSources.broadcast('x'.repeat(2000))
  t.ok(last.isActive, 'the last source is past the first slice, not ended yet')
  t.equal(last.send('small'), false, 'a send before its end is refused')
  t.equal(app.eventSources.broadcast('small'), 0)
  await last.keepAlive()
  t.equal(last.closeReason, 'slow-client')
  t.equal(last.sentContentLength, 0, 'nothing was written to it')
})
