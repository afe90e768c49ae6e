import { test } from 'tap'
import { EventSource, request } from 'undici'
import type { FastifyInstance } from 'fastify'
import eventSources from '../lib/index'
import type { HttpRequestEventSource, RunResult } from '../types/index'
import { start, until } from './helpers/server'
import { readEvents } from './helpers/read-events'
import { sleep } from './helpers/clients'

/** The route of the README: 204 when there is nothing left to follow, else follow the run. */
function followRoute (sources: HttpRequestEventSource[] = [], counts = { opens: 0, refused: 0 }) {
  return (app: FastifyInstance): void => {
    app.get<{ Params: { key: string } }>('/runs/:key', async (request, reply) => {
      const lastEventId = request.headers['last-event-id'] as string | undefined
      if (await app.eventSources.runState(request.params.key, lastEventId) === undefined) {
        counts.refused++
        return reply.code(204).send()
      }
      counts.opens++
      const sse = request.getEventSource()
      sources.push(sse)
      await sse.follow(request.params.key)
    })
  }
}

/** Yields `count` numbers, one every `every` ms, and says when its finally ran. */
function numbers (count: number, every: number, state: { stopped?: boolean, signal?: AbortSignal } = {}) {
  return async function * (signal?: AbortSignal): AsyncGenerator<{ n: number }> {
    state.signal = signal
    try {
      for (let n = 1; n <= count; n++) {
        if (every > 0) await sleep(every)
        yield { n }
      }
    } finally {
      state.stopped = true
    }
  }
}

test('a follower from the start gets every event in order, then the end event, then the stream closes', async t => {
  const { app, url } = await start(t, followRoute())
  const running = app.eventSources.run('r1', numbers(30, 2)())
  const stream = await readEvents(`${url}/runs/r1`)
  t.teardown(stream.close)
  await stream.ended
  const result = await running
  t.same(result, { sent: 30, reason: 'done' })
  const events = stream.events
  t.same(events.slice(0, -1).map(e => JSON.parse(e.data).n), Array.from({ length: 30 }, (_, i) => i + 1))
  t.equal(events.at(-1)?.event, 'end')
  t.same(JSON.parse(events.at(-1)?.data ?? ''), { reason: 'done' })
  t.equal(new Set(events.map(e => e.id)).size, 31, 'every event has its own id')
  t.equal(await app.eventSources.runState('r1'), 'ended')
  t.equal(await app.eventSources.runState('r1', events.at(-1)?.id), undefined, 'a client holding the end event has nothing left')
  t.equal(await app.eventSources.runState('nope'), undefined)
  t.equal(app.eventSources.runningRuns, 0)
})

test('a follower cut mid-run resumes with EventSource: every event once, in order, the end, then 204 and no more', async t => {
  const sources: HttpRequestEventSource[] = []
  const counts = { opens: 0, refused: 0 }
  const { app, url } = await start(t, followRoute(sources, counts), { retry: 30 })
  const running = app.eventSources.run('r2', numbers(200, 5)())
  const es = new EventSource(`${url}/runs/r2`)
  t.teardown(() => es.close())
  const seen: number[] = []
  const ids: string[] = []
  let end: MessageEvent | undefined
  es.onmessage = e => {
    seen.push(JSON.parse(e.data).n)
    ids.push(e.lastEventId)
  }
  es.addEventListener('end', e => { end = e as MessageEvent })
  await until(() => seen.length >= 20, 5000, 'twenty events')
  sources[0].close()
  await until(() => seen.length >= 60, 5000, 'sixty events')
  // A cut socket, this time: the client only sees the connection drop.
  const cut = sources[sources.length - 1] as unknown as { _destroy: () => void }
  cut._destroy()
  await until(() => end !== undefined, 10_000, 'the end event')
  await until(() => counts.refused >= 1, 5000, 'the reconnect after the end')
  await sleep(200)
  t.equal(es.readyState, es.CLOSED, 'the 204 stopped the client for good')
  t.same(seen, Array.from({ length: 200 }, (_, i) => i + 1), 'every event once, in order')
  t.equal(new Set(ids).size, 200)
  t.same(JSON.parse(end?.data), { reason: 'done' })
  t.ok(counts.opens >= 3, 'it resumed twice')
  t.equal(counts.refused, 1, 'one reconnect after the end, answered 204')
  t.same(await running, { sent: 200, reason: 'done' })
})

test('a follower after the end gets the whole run, or the rest after its id, and the stream closes', async t => {
  const { app, url } = await start(t, followRoute())
  t.same(await app.eventSources.run('r3', ['a', 'b', 'c', 'd']), { sent: 4, reason: 'done' })
  const whole = await readEvents(`${url}/runs/r3`)
  await whole.ended
  t.same(whole.events.map(e => e.data), ['a', 'b', 'c', 'd', '{"reason":"done"}'])
  const rest = await readEvents(`${url}/runs/r3`, { 'last-event-id': whole.events[1].id as string })
  await rest.ended
  t.same(rest.events.map(e => e.data), ['c', 'd', '{"reason":"done"}'])
  const done = await request(`${url}/runs/r3`, { headers: { 'last-event-id': whole.events[4].id as string } })
  t.equal(done.statusCode, 204, 'after the end event: 204')
  await done.body.dump()
  const unknown = await request(`${url}/runs/other`)
  t.equal(unknown.statusCode, 204, 'an unknown run: 204')
  await unknown.body.dump()
})

test('follow() from the end event\'s id, without the 204 check, closes at once instead of waiting forever', async t => {
  const { app, url } = await start(t, app => {
    app.get<{ Params: { key: string } }>('/plain/:key', async request => {
      await request.getEventSource().follow(request.params.key)
    })
  }, { lastEventIdQuery: 'lastEventId' })
  await app.eventSources.run('r6', ['a'])
  const first = await readEvents(`${url}/plain/r6`)
  await first.ended
  const endId = first.events[1].id as string
  const again = await readEvents(`${url}/plain/r6?lastEventId=${encodeURIComponent(endId)}`)
  await again.ended
  t.same(again.events, [], 'nothing more, and the stream ended')
  const gone = await readEvents(`${url}/plain/never`)
  await gone.ended
  t.same(gone.events, [], 'an unknown run: ended at once')
})

test('cancel() aborts the producer\'s signal, the run ends as cancelled, every follower gets the end', async t => {
  const { app, url } = await start(t, followRoute())
  const state: { stopped?: boolean, signal?: AbortSignal } = {}
  const running = app.eventSources.run('r4', signal => numbers(10_000, 5, state)(signal))
  const a = await readEvents(`${url}/runs/r4`)
  const b = await readEvents(`${url}/runs/r4`)
  t.teardown(() => { a.close(); b.close() })
  await until(() => a.events.length >= 5 && b.events.length >= 5, 5000, 'events')
  t.equal(await app.eventSources.cancel('r4'), true)
  const result: RunResult = await running
  t.equal(result.reason, 'cancelled')
  t.equal(state.signal?.aborted, true, 'the producer\'s signal aborted')
  await Promise.all([a.ended, b.ended])
  await until(() => state.stopped === true, 3000, 'the generator\'s finally')
  for (const stream of [a, b]) {
    t.equal(stream.events.at(-1)?.event, 'end')
    t.same(JSON.parse(stream.events.at(-1)?.data ?? ''), { reason: 'cancelled' })
    t.equal(stream.events.length, result.sent + 1, 'every item, then the end')
  }
  t.equal(await app.eventSources.cancel('r4'), false, 'an ended run: false')
  t.equal(await app.eventSources.cancel('unknown'), false, 'an unknown run: false')
})

test('a second run() of a running key is refused with FST_ERR_SSE_RUN_EXISTS; once ended, the key can run again', async t => {
  const { app, url } = await start(t, followRoute())
  let release: () => void = () => {}
  const gate = new Promise<void>(resolve => { release = resolve })
  const first = app.eventSources.run('r5', (async function * () { yield 1; await gate; yield 2 })())
  const second = app.eventSources.run('r5', ['x'])
  await t.rejects(second, { code: 'FST_ERR_SSE_RUN_EXISTS', statusCode: 409 })
  t.equal(await app.eventSources.runState('r5'), 'running')
  release()
  t.same(await first, { sent: 2, reason: 'done' })
  t.same(await app.eventSources.run('r5', ['again']), { sent: 1, reason: 'done' })
  const stream = await readEvents(`${url}/runs/r5`)
  await stream.ended
  t.same(stream.events.map(e => e.data), ['again', '{"reason":"done"}'], 'the new run replaces the old one')
})

test('a producer that throws ends the run with reason error; a bad item too; bad arguments reject before anything runs', async t => {
  const { app, url } = await start(t, followRoute())
  const failing = await app.eventSources.run('e1', (async function * () { yield 'one'; throw new Error('boom') })())
  t.equal(failing.reason, 'error')
  t.equal(failing.sent, 1)
  t.match(failing.error, { message: 'boom' })
  const stream = await readEvents(`${url}/runs/e1`)
  await stream.ended
  t.same(stream.events.map(e => e.data), ['one', '{"reason":"error"}'])

  const bad = await app.eventSources.run('e2', ['ok', 'x'], { map: item => item === 'x' ? { data: 'x', event: 'a\nb' } : { data: item } })
  t.equal(bad.reason, 'error')
  t.match(bad.error, { code: 'FST_ERR_SSE_INVALID_FIELD' })

  await t.rejects(app.eventSources.run('', ['a']), { code: 'FST_ERR_SSE_INVALID_FIELD' })
  await t.rejects(app.eventSources.run('k\n', ['a']), { code: 'FST_ERR_SSE_INVALID_FIELD' })
  await t.rejects(app.eventSources.run('k', 'a string' as never), { code: 'FST_ERR_SSE_INVALID_FIELD' })
  for (const options of [{ ttl: 0 }, { maxEvents: 1.5 }, { endEvent: 'a\rb' }, { abandonAfter: -1 }, 'x']) {
    await t.rejects(app.eventSources.run('k', ['a'], options as never), { code: 'FST_ERR_SSE_INVALID_FIELD' }, JSON.stringify(options))
  }
  t.equal(await app.eventSources.runState('k'), undefined, 'nothing was started')
  await t.rejects(app.eventSources.cancel(42 as never), { code: 'FST_ERR_SSE_INVALID_FIELD' })
})

test('endEvent, event and map name the events; ttl forgets an ended run; maxEvents bounds its log and a late follower gets the reset first', async t => {
  const { app, url } = await start(t, followRoute())
  await app.eventSources.run('o1', [1, 2, 3, 4, 5], { endEvent: 'finished', event: 'token', ttl: 300, maxEvents: 3 })
  const stream = await readEvents(`${url}/runs/o1`)
  await stream.ended
  t.same(stream.events.map(e => [e.event, e.data]), [['token', '3'], ['token', '4'], ['token', '5'], ['finished', '{"reason":"done"}']],
    'the oldest events went first (the end counts too)')
  const late = await readEvents(`${url}/runs/o1`, { 'last-event-id': stream.events[0].id?.replace(/-\d+$/, '-1') as string })
  await late.ended
  t.equal(late.events[0].event, 'reset', 'a follower from before the held events is told of the gap')
  await sleep(400)
  t.equal(await app.eventSources.runState('o1'), undefined, 'forgotten after ttl')
})

test('follow() writes a long replay in bounded pieces, never in one write', async t => {
  const writes: number[] = []
  const { app, url } = await start(t, app => {
    app.get('/big', async (request, reply) => {
      const raw = reply.raw
      const write = raw.write.bind(raw) as (chunk: unknown, ...rest: unknown[]) => boolean
      raw.write = ((chunk: unknown, ...rest: unknown[]) => {
        writes.push(Buffer.byteLength(chunk as Buffer))
        return write(chunk, ...rest)
      }) as typeof raw.write
      await request.getEventSource().follow('big')
    })
  })
  const big = 'x'.repeat(1000)
  await app.eventSources.run('big', Array.from({ length: 2000 }, () => big), { maxEvents: 5000 })
  const stream = await readEvents(`${url}/big`)
  await stream.ended
  t.equal(stream.events.length, 2001, 'about 2 MB of replay, all of it')
  t.ok(writes.length >= 20, `in ${writes.length} writes`)
  t.ok(Math.max(...writes) <= 70 * 1024, `the largest ${Math.max(...writes)} bytes`)
})

test('abandonAfter cancels a run nobody follows; a follower leaving never stops a run without it', async t => {
  const { app, url } = await start(t, followRoute())
  const lonely = app.eventSources.run('ab1', signal => numbers(100_000, 5)(signal), { abandonAfter: 300 })
  const kept = app.eventSources.run('ab2', signal => numbers(150, 5)(signal))
  const a = await readEvents(`${url}/runs/ab2`)
  await until(() => a.events.length >= 3, 5000)
  a.close()
  t.equal((await lonely).reason, 'cancelled', 'abandoned after 300 ms without a follower')
  t.same(await kept, { sent: 150, reason: 'done' }, 'the follower leaving did not stop it')
})

test('fastify.close() stops running producers: their runs end as cancelled', async t => {
  const { app } = await start(t, followRoute())
  const running = app.eventSources.run('s1', signal => numbers(100_000, 5)(signal))
  await sleep(50)
  await app.close()
  t.equal((await running).reason, 'cancelled')
  await t.rejects(app.eventSources.run('s2', ['a']), { code: 'FST_ERR_SSE_CLOSING' })
})

test('exported: the error constructor', async t => {
  t.equal(typeof eventSources.errors.FST_ERR_SSE_RUN_EXISTS, 'function')
  t.equal(new eventSources.errors.FST_ERR_SSE_RUN_EXISTS('k').statusCode, 409)
})

test('metrics().runs counts the producers running here', async t => {
  const { app, url } = await start(t, followRoute())
  t.equal(app.eventSources.metrics().runs, 0)
  let release: () => void = () => {}
  const gate = new Promise<void>(resolve => { release = resolve })
  const running = app.eventSources.run('m1', (async function * () { yield 1; await gate })())
  const follower = await readEvents(`${url}/runs/m1`)
  await until(() => follower.events.length === 1)
  t.equal(app.eventSources.metrics().runs, 1)
  t.equal(app.eventSources.runningRuns, 1)
  release()
  await running
  await follower.ended
  t.equal(app.eventSources.metrics().runs, 0)
})

test('a follower that stops reading mid-run is not closed: it goes back to the log and, once it reads again, gets every event once and in order', async t => {
  const { app, url } = await start(t, followRoute())
  const item = 'y'.repeat(2000)
  let release: () => void = () => {}
  const gate = new Promise<void>(resolve => { release = resolve })
  const running = app.eventSources.run('slow', (async function * () {
    for (let n = 1; n <= 1500; n++) {
      if (n === 20) await gate
      yield `${n}:${item}`
    }
  })(), { maxEvents: 5000 })
  const { EventLog } = await import('./helpers/clients')
  const log = new EventLog()
  const { request: httpRequest } = await import('node:http')
  let res: import('node:http').IncomingMessage | undefined
  const req = httpRequest(`${url}/runs/slow`, { headers: { accept: 'text/event-stream' }, agent: false }, r => {
    res = r
    r.on('data', (chunk: Buffer) => log.feed(chunk))
  })
  req.end()
  t.teardown(() => { req.destroy() })
  await until(() => log.events.length >= 19, 5000, 'the first events')
  res?.pause()
  release()
  // 3 MB are produced while the client does not read: the socket fills, the follower waits for room.
  await until(() => app.eventSources.runningRuns === 0, 10_000, 'the run to finish')
  res?.resume()
  await new Promise(resolve => res?.once('end', resolve))
  t.same((await running).reason, 'done')
  const numbers = log.events.slice(0, -1).map(e => Number(e.data.split(':')[0]))
  t.same(numbers, Array.from({ length: 1500 }, (_, i) => i + 1), 'every event once, in order')
  t.equal(log.events.at(-1)?.event, 'end')
})
