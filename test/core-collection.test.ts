import { test } from 'tap'
import type { HttpRequestEventSource } from '../types/index'
import { openRaw } from './helpers/raw'
import { start, until } from './helpers/server'

/** Routes: /sse/:id opens an identified source, /anon an unidentified one; both flush and wait. */
function routes (app: Parameters<Parameters<typeof start>[1]>[0]): void {
  app.get('/sse/:id', async request => {
    const sse = request.getEventSource((request.params as { id: string }).id)
    sse.flush()
    await sse.keepAlive()
  })
  app.get('/anon', async request => {
    const sse = request.getEventSource()
    sse.flush()
    await sse.keepAlive()
  })
}

test('only identified sources are in the collection', async t => {
  const { app, url } = await start(t, routes)
  await openRaw(t, url + '/anon')
  await openRaw(t, url + '/sse/a')
  await openRaw(t, url + '/sse/b')
  t.equal(app.eventSources.activeConnections, 2)
  t.equal(app.eventSources.openStreams, 3)
  t.same(app.eventSources.all().map(s => s.identifier).sort(), ['a', 'b'])
  t.equal(app.eventSources.find(() => true).length, 2)
  t.equal(app.eventSources.broadcast('to identified'), 2)
})

test('getByIdentifier returns the live source, or undefined', async t => {
  const { app, url } = await start(t, routes)
  await openRaw(t, url + '/sse/user-1')
  const source = app.eventSources.getByIdentifier('user-1') as HttpRequestEventSource
  t.equal(source.identifier, 'user-1')
  t.equal(source.isActive, true)
  t.equal(source.request.url, '/sse/user-1')
  t.equal(app.eventSources.getByIdentifier('user-2'), undefined)
  t.equal(app.eventSources.getByIdentifier('user'), undefined)
})

test('find returns the sources whose identifier matches; all returns a copy', async t => {
  const { app, url } = await start(t, routes)
  for (const id of ['room:1:alice', 'room:1:bob', 'room:2:carol']) await openRaw(t, `${url}/sse/${id}`)
  const room1 = app.eventSources.find(id => id.startsWith('room:1:'))
  t.same(room1.map(s => s.identifier).sort(), ['room:1:alice', 'room:1:bob'])
  t.same(app.eventSources.find(() => false), [])
  t.throws(() => app.eventSources.find('room' as unknown as () => boolean), { code: 'FST_ERR_SSE_INVALID_FIELD' })
  const all = app.eventSources.all()
  all.length = 0
  t.equal(app.eventSources.all().length, 3)
})

test('broadcast reaches every matching source once and returns how many got it', async t => {
  const { app, url } = await start(t, routes)
  const a = await openRaw(t, url + '/sse/a')
  const b = await openRaw(t, url + '/sse/b')
  const c = await openRaw(t, url + '/sse/c')
  const anon = await openRaw(t, url + '/anon')
  t.equal(app.eventSources.broadcast({ to: 'all' }, { event: 'news', id: '1' }), 3)
  t.equal(app.eventSources.broadcast('only a and c', { filter: id => id !== 'b' }), 2)
  t.equal(app.eventSources.broadcast('nobody', { filter: () => false }), 0)
  await until(() => a.events.length === 2 && b.events.length === 1 && c.events.length === 2, 3000, 'the broadcasts')
  t.equal(a.text, 'event: news\nid: 1\ndata: {"to":"all"}\n\ndata: only a and c\n\n')
  t.equal(c.text, a.text, 'every source got the same bytes')
  t.equal(b.text, 'event: news\nid: 1\ndata: {"to":"all"}\n\n')
  t.equal(anon.text, '', 'an unidentified source gets no broadcast')
})

test('broadcast serializes once, however many sources', async t => {
  let calls = 0
  const { app, url } = await start(t, routes, { serializer: value => { calls++; return JSON.stringify(value) } })
  const clients = await Promise.all(['a', 'b', 'c', 'd'].map(id => openRaw(t, `${url}/sse/${id}`)))
  t.equal(app.eventSources.broadcast({ n: 1 }), 4)
  t.equal(calls, 1)
  await until(() => clients.every(c => c.events.length === 1), 3000, 'the broadcast')
  t.same(clients.map(c => c.events[0].data), ['{"n":1}', '{"n":1}', '{"n":1}', '{"n":1}'])
})

test('broadcast with an invalid field or filter throws and writes nothing', async t => {
  const { app, url } = await start(t, routes)
  const a = await openRaw(t, url + '/sse/a')
  t.throws(() => app.eventSources.broadcast('x', { event: 'a\nb' }), { code: 'FST_ERR_SSE_INVALID_FIELD' })
  t.throws(() => app.eventSources.broadcast('x', { id: '\0' }), { code: 'FST_ERR_SSE_INVALID_FIELD' })
  t.throws(() => app.eventSources.broadcast('x', { retry: -1 }), { code: 'FST_ERR_SSE_INVALID_FIELD' })
  t.throws(() => app.eventSources.broadcast('x', { filter: 'a' as unknown as () => boolean }), { code: 'FST_ERR_SSE_INVALID_FIELD' })
  t.equal(app.eventSources.broadcast('valid'), 1)
  await until(() => a.events.length === 1, 3000, 'the valid broadcast')
  t.equal(a.text, 'data: valid\n\n')
})

test('registered and unregistered fire as sources enter and leave; off removes a listener', async t => {
  const { app, url } = await start(t, routes)
  const log: string[] = []
  const onRegistered = (source: HttpRequestEventSource): void => { log.push('+' + String(source.identifier)) }
  const onUnregistered = (source: HttpRequestEventSource): void => { log.push('-' + String(source.identifier)) }
  app.eventSources.on('registered', onRegistered)
  app.eventSources.on('unregistered', onUnregistered)
  await openRaw(t, url + '/anon')
  await openRaw(t, url + '/sse/x')
  await openRaw(t, url + '/sse/y')
  app.eventSources.getByIdentifier('x')?.close()
  app.eventSources.off('registered', onRegistered)
  await openRaw(t, url + '/sse/z')
  app.eventSources.getByIdentifier('y')?.close()
  t.same(log, ['+x', '+y', '-x', '-y'])
})

test('a source leaves the collection the moment it ends: client abort, close, timeout', async t => {
  const { app, url } = await start(t, app => {
    routes(app)
    app.get('/idle/:id', async request => {
      const sse = request.getEventSource((request.params as { id: string }).id)
      sse.send('x')
      await sse.waitForFail(30)
    })
  })
  const seen: Record<string, unknown[]> = {}
  app.eventSources.on('unregistered', source => {
    const id = source.identifier as string
    seen[id] = [source.isActive, source.closeReason, app.eventSources.getByIdentifier(id) === undefined, app.eventSources.all().includes(source)]
  })

  const aborting = await openRaw(t, url + '/sse/aborting')
  const abortingSource = app.eventSources.getByIdentifier('aborting') as HttpRequestEventSource
  abortingSource.signal.addEventListener('abort', () => {
    seen.signal = [app.eventSources.getByIdentifier('aborting') === undefined]
  })
  aborting.abort()
  await until(() => seen.aborting !== undefined, 3000, 'the aborted source to leave')
  t.same(seen.aborting, [false, 'client', true, false])
  t.same(seen.signal, [true], 'gone from the collection before its signal aborts')

  await openRaw(t, url + '/sse/closing')
  app.eventSources.getByIdentifier('closing')?.close()
  t.same(seen.closing, [false, 'close', true, false], 'synchronously on close()')

  const idle = await openRaw(t, url + '/idle/idle')
  await until(() => idle.ended, 3000, 'the idle timeout')
  t.same(seen.idle, [false, 'timeout', true, false])
  t.equal(app.eventSources.activeConnections, 0)
  t.equal(app.eventSources.openStreams, 0)
})

test('a broadcast counts as a send for waitForFail: it resets the idle timeout', async t => {
  const TIMEOUT = 200
  let reason: string | undefined
  const { app, url } = await start(t, app => {
    app.get('/sse', async request => {
      const sse = request.getEventSource('waiting')
      sse.flush()
      await sse.waitForFail(TIMEOUT)
      reason = sse.closeReason
    })
  })
  const raw = await openRaw(t, url + '/sse')
  const began = Date.now()
  const counts: number[] = []
  while (Date.now() - began < 2 * TIMEOUT) {
    counts.push(app.eventSources.broadcast('tick'))
    await new Promise(resolve => setTimeout(resolve, TIMEOUT / 5))
  }
  t.ok(counts.every(n => n === 1), `every broadcast reached the waiting source (${counts.length} over two timeouts)`)
  await until(() => reason !== undefined && raw.ended, 3000, 'the idle timeout after the broadcasts stop')
  t.equal(reason, 'timeout')
  t.equal(raw.events.length, counts.length)
})
