import { test } from 'tap'
import { Agent, request as undiciRequest } from 'undici'
import type { HttpRequestEventSource } from '../types/index'
import { openRaw, readToEnd } from './helpers/raw'
import { start, until } from './helpers/server'

function logCapture (): { lines: Record<string, unknown>[], options: object } {
  const lines: Record<string, unknown>[] = []
  return { lines, options: { logger: { level: 'debug', stream: { write: (line: string) => { lines.push(JSON.parse(line)) } } } } }
}

test('a second getEventSource on the same request throws FST_ERR_SSE_ALREADY_STREAMING; the first stays usable', async t => {
  let code: string | undefined
  const { url } = await start(t, app => {
    app.get('/sse', async request => {
      const sse = request.getEventSource('first')
      try { request.getEventSource('second') } catch (err) { code = (err as { code: string }).code }
      t.equal(app.eventSources.getByIdentifier('second'), undefined)
      sse.send('still here')
      return sse.close()
    })
  })
  const raw = await readToEnd(t, url + '/sse')
  t.equal(code, 'FST_ERR_SSE_ALREADY_STREAMING')
  t.equal(raw.text, 'data: still here\n\n')
})

test('a duplicate identifier closes the older source: the newest wins, reason \'replaced\'', async t => {
  const sources: HttpRequestEventSource[] = []
  const { app, url } = await start(t, app => {
    app.get('/sse', async request => {
      const sse = request.getEventSource('same')
      sources.push(sse)
      sse.send('hello ' + sources.length)
      await sse.keepAlive()
    })
  })
  const unregistered: HttpRequestEventSource[] = []
  app.eventSources.on('unregistered', source => unregistered.push(source))
  const older = await openRaw(t, url + '/sse')
  await until(() => older.text !== '', 3000, 'the first stream')
  const newer = await openRaw(t, url + '/sse')
  await until(() => newer.text !== '' && older.ended, 3000, 'the older stream to end')
  t.equal(sources[0].isActive, false)
  t.equal(sources[0].closeReason, 'replaced')
  t.equal((sources[0].signal as AbortSignal).reason, 'replaced')
  t.equal(app.eventSources.getByIdentifier('same'), sources[1])
  t.equal(app.eventSources.activeConnections, 1)
  t.same(unregistered, [sources[0]])
  t.equal(app.eventSources.broadcast('to the newest'), 1)
  await until(() => newer.text.includes('to the newest'), 3000, 'the broadcast')
  t.equal(older.text, 'data: hello 1\n\n')
})

test('close() is idempotent and returns the reply, so a handler can return sse.close()', async t => {
  const { lines, options } = logCapture()
  const seen: unknown[] = []
  const { app, url } = await start(t, app => {
    app.get('/sse', async (request, reply) => {
      const sse = request.getEventSource('closing')
      sse.send('bye')
      const first = sse.close()
      const second = sse.close()
      seen.push(first === reply, second === reply, sse.isActive, sse.closeReason)
      return sse.close()
    })
  }, {}, options)
  let unregistered = 0
  app.eventSources.on('unregistered', () => { unregistered++ })
  const raw = await readToEnd(t, url + '/sse')
  t.same(seen, [true, true, false, 'close'])
  t.equal(raw.text, 'data: bye\n\n')
  t.equal(unregistered, 1)
  t.same(lines.filter(l => (l.level as number) >= 40), [], 'nothing warned or failed')
})

test('keepAlive resolves when the client goes away', async t => {
  let resolved: string | undefined
  let source: HttpRequestEventSource | undefined
  const { app, url } = await start(t, app => {
    app.get('/sse', async request => {
      source = request.getEventSource('leaving')
      source.send('x')
      await source.keepAlive()
      resolved = source.closeReason
    })
  })
  const raw = await openRaw(t, url + '/sse')
  await until(() => raw.text !== '', 3000, 'the first event')
  t.equal(resolved, undefined)
  raw.abort()
  await until(() => resolved !== undefined, 3000, 'keepAlive to resolve')
  t.equal(resolved, 'client')
  t.equal(source?.isActive, false)
  t.equal(app.eventSources.activeConnections, 0)
})

test('keepAlive resolves when the source is closed from elsewhere', async t => {
  let after: string | undefined
  const { app, url } = await start(t, app => {
    app.get('/sse', async request => {
      const sse = request.getEventSource('remote')
      await sse.keepAlive()
      after = 'resumed'
      sse.send('never sent')
    })
    app.get('/kick', async () => {
      app.eventSources.getByIdentifier('remote')?.close()
      return 'kicked'
    })
  })
  const raw = await openRaw(t, url + '/sse')
  await until(() => app.eventSources.activeConnections === 1, 3000, 'the stream')
  t.equal(await (await fetch(url + '/kick')).text(), 'kicked')
  await until(() => after !== undefined && raw.ended, 3000, 'the handler to resume and the stream to end')
  t.equal(raw.text, '')
})

test('keepAlive and waitForFail resolve at once on an inactive source', async t => {
  const settled: string[] = []
  const { url } = await start(t, app => {
    app.get('/sse', async request => {
      const sse = request.getEventSource()
      sse.close()
      sse.keepAlive().then(() => settled.push('keepAlive'))
      sse.waitForFail(60_000).then(() => settled.push('waitForFail'))
      await Promise.resolve()
      settled.push('tick')
    })
  })
  const raw = await openRaw(t, url + '/sse')
  await until(() => raw.ended && settled.length === 3, 3000, 'the handler')
  t.same(settled, ['keepAlive', 'waitForFail', 'tick'])
})

test('waitForFail closes the source after the idle timeout, and resolves', async t => {
  let resolved: string | undefined
  const { app, url } = await start(t, app => {
    app.get('/sse', async request => {
      const sse = request.getEventSource('idle')
      sse.send('one')
      await sse.waitForFail(50)
      resolved = sse.closeReason
    })
  })
  const raw = await openRaw(t, url + '/sse')
  await until(() => raw.ended && resolved !== undefined, 3000, 'the timeout')
  t.equal(resolved, 'timeout')
  t.equal(raw.text, 'data: one\n\n')
  t.equal(app.eventSources.activeConnections, 0)
})

test('each send resets the waitForFail timeout; comments and pings do not', async t => {
  const TIMEOUT = 300
  const STEP = 50
  const log: { kind: string, at: number, ok: boolean }[] = []
  const reasons: Record<string, string | undefined> = {}
  const { url } = await start(t, app => {
    app.get('/sse/:kind', async request => {
      const kind = (request.params as { kind: string }).kind
      const sse = request.getEventSource()
      const began = Date.now()
      if (kind === 'comment') sse.withPing(p => { p.interval = STEP; p.start() })
      const timer = setInterval(() => {
        const ok = kind === 'send' ? sse.send('tick') : sse.comment('tick')
        log.push({ kind, at: Date.now() - began, ok })
        if (kind === 'send' && log.filter(l => l.kind === 'send').length === 10) clearInterval(timer)
      }, STEP)
      await sse.waitForFail(TIMEOUT)
      clearInterval(timer)
      reasons[kind] = sse.closeReason
    })
  })
  const sending = await openRaw(t, url + '/sse/send')
  const commenting = await openRaw(t, url + '/sse/comment')
  await until(() => sending.ended && commenting.ended, 5000, 'both streams to time out')
  const sends = log.filter(l => l.kind === 'send')
  const comments = log.filter(l => l.kind === 'comment')
  t.equal(reasons.send, 'timeout')
  t.equal(reasons.comment, 'timeout')
  t.equal(sends.length, 10)
  t.ok(sends.every(l => l.ok), 'every send happened while the source was active')
  t.ok(sends[sends.length - 1].at > TIMEOUT, 'the sends outlived one timeout: each one reset it')
  t.ok(comments.filter(l => l.ok).length >= 2, 'comments were written more often than the timeout, yet it expired')
  t.ok(commenting.text.includes(': ping\n'), 'pings were written while waiting')
})

test('waitForFail resolves when the client goes away before the timeout', async t => {
  let resolved: string | undefined
  const { url } = await start(t, app => {
    app.get('/sse', async request => {
      const sse = request.getEventSource()
      sse.send('x')
      await sse.waitForFail(60_000)
      resolved = sse.closeReason
    })
  })
  const raw = await openRaw(t, url + '/sse')
  await until(() => raw.text !== '', 3000, 'the first event')
  raw.abort()
  await until(() => resolved !== undefined, 3000, 'waitForFail to resolve')
  t.equal(resolved, 'client')
})

test('waitForFail rejects a timeout that is not a number of ms', async t => {
  const codes: string[] = []
  const { url } = await start(t, app => {
    app.get('/sse', async request => {
      const sse = request.getEventSource()
      for (const bad of [-1, NaN, '10', 2 ** 31]) {
        try { await sse.waitForFail(bad as number) } catch (err) { codes.push((err as { code: string }).code) }
      }
      return sse.close()
    })
  })
  await readToEnd(t, url + '/sse')
  t.same(codes, ['FST_ERR_SSE_INVALID_FIELD', 'FST_ERR_SSE_INVALID_FIELD', 'FST_ERR_SSE_INVALID_FIELD', 'FST_ERR_SSE_INVALID_FIELD'])
})

test('signal aborts when the source ends, with the close reason', async t => {
  const events: unknown[] = []
  let early: AbortSignal | undefined
  let source: HttpRequestEventSource | undefined
  const { url } = await start(t, app => {
    app.get('/sse/close', async request => {
      const sse = request.getEventSource()
      early = sse.signal
      events.push(early.aborted)
      early.addEventListener('abort', () => events.push('abort:' + String(early?.reason)))
      sse.close()
      events.push(sse.signal === early, sse.signal.reason)
    })
    app.get('/sse/client', async request => {
      source = request.getEventSource()
      source.send('x')
      await source.keepAlive()
    })
  })
  const closed = await openRaw(t, url + '/sse/close')
  await until(() => closed.ended, 3000, 'the end of the body')
  t.same(events, [false, 'abort:close', true, 'close'])

  const raw = await openRaw(t, url + '/sse/client')
  await until(() => raw.text !== '', 3000, 'the first event')
  const signal = source?.signal as AbortSignal
  t.equal(signal.aborted, false)
  raw.abort()
  await until(() => signal.aborted, 3000, 'the abort')
  t.equal(signal.reason, 'client')
})

test('a signal first read after the end is already aborted', async t => {
  const seen: unknown[] = []
  const { url } = await start(t, app => {
    app.get('/sse', async request => {
      const sse = request.getEventSource()
      sse.close()
      seen.push(sse.signal.aborted, sse.signal.reason)
    })
  })
  await readToEnd(t, url + '/sse')
  t.same(seen, [true, 'close'])
})

test('using and await using close the source at the end of the block', async t => {
  const seen: unknown[] = []
  const { url } = await start(t, app => {
    app.get('/sync', async request => {
      let kept: HttpRequestEventSource
      {
        using sse = request.getEventSource('sync')
        kept = sse
        sse.send('inside')
      }
      seen.push('sync:' + String(kept.isActive) + ':' + String(kept.closeReason))
    })
    app.get('/async', async request => {
      let kept: HttpRequestEventSource
      {
        await using sse = request.getEventSource('async')
        kept = sse
        sse.send('inside')
      }
      seen.push('async:' + String(kept.isActive))
    })
  })
  for (const path of ['/sync', '/async']) {
    const raw = await openRaw(t, url + path)
    await until(() => raw.ended, 3000, path + ' to end')
    t.equal(raw.text, 'data: inside\n\n')
  }
  t.same(seen, ['sync:false:close', 'async:false'])
})

test('an error thrown after getEventSource closes the stream and is logged, without a second reply', async t => {
  const { lines, options } = logCapture()
  const { app, url } = await start(t, app => {
    app.get('/async', async request => {
      const sse = request.getEventSource('async-fail')
      sse.send('before')
      await new Promise(resolve => setImmediate(resolve))
      throw new Error('async boom')
    })
    app.get('/sync', (request) => {
      const sse = request.getEventSource('sync-fail')
      sse.send('before')
      throw new Error('sync boom')
    })
    app.get('/plain', async () => {
      throw new Error('plain boom')
    })
  }, {}, options)
  for (const path of ['/async', '/sync']) {
    const raw = await openRaw(t, url + path)
    await until(() => raw.ended, 3000, path + ' to end')
    t.equal(raw.text, 'data: before\n\n', path)
  }
  const plain = await fetch(url + '/plain')
  t.equal(plain.status, 500, 'an error before getEventSource is an ordinary 500')
  t.equal(app.eventSources.activeConnections, 0)
  t.equal(app.eventSources.openStreams, 0)
  const text = JSON.stringify(lines)
  t.match(text, /async boom/)
  t.match(text, /sync boom/)
  t.notMatch(text, /ERR_HTTP_HEADERS_SENT|FST_ERR_REP_ALREADY_SENT|Reply was already sent/)
  const closes = lines.filter(l => l.msg === 'event source closed')
  t.same(closes.map(l => l.reason), ['error', 'error'])
})

test('a source knows its request and the Last-Event-ID it was opened with', async t => {
  const seen: unknown[] = []
  const { url } = await start(t, app => {
    app.get('/sse', async request => {
      const sse = request.getEventSource()
      seen.push(sse.request === request, sse.lastEventId, sse.identifier, sse.isActive)
      return sse.close()
    })
  })
  for (const headers of [{ 'last-event-id': '42' }, {}] as Record<string, string>[]) {
    const res = await fetch(url + '/sse', { headers })
    await res.text()
  }
  t.same(seen, [true, '42', undefined, true, true, undefined, undefined, true])
})

test('close() writes what is still queued before ending the response', async t => {
  const { url } = await start(t, app => {
    app.get('/sse', async request => {
      const sse = request.getEventSource()
      sse.send('one')
      sse.send('two')
      sse.comment('three')
      return sse.close()
    })
  }, { batch: true })
  const raw = await readToEnd(t, url + '/sse')
  t.equal(raw.text, 'data: one\n\ndata: two\n\n: three\n\n')
})

test('a HEAD request gets the stream\'s head at once and never replaces the live source', async t => {
  const { app, url } = await start(t, app => {
    app.get('/sse', async request => {
      const sse = request.getEventSource('one')
      sse.send('live')
      await sse.keepAlive()
    })
  })
  const live = await openRaw(t, url + '/sse')
  await until(() => live.text !== '', 3000, 'the live stream')
  const source = app.eventSources.getByIdentifier('one')
  const head = await fetch(url + '/sse', { method: 'HEAD' })
  t.equal(head.status, 200)
  t.equal(head.headers.get('content-type'), 'text/event-stream; charset=utf-8')
  t.equal(await head.text(), '')
  t.equal(app.eventSources.getByIdentifier('one'), source, 'the live source is still the registered one')
  t.equal(source?.isActive, true)
  t.equal(app.eventSources.openStreams, 1)
  t.equal(app.eventSources.broadcast('still live'), 1)
  await until(() => live.text.includes('still live'), 3000, 'the broadcast')
})

test('an identifier that is not a string throws FST_ERR_SSE_INVALID_FIELD before the reply is taken over', async t => {
  const { app, url } = await start(t, app => {
    app.get('/sse', async request => {
      request.getEventSource(42 as unknown as string)
    })
  })
  const res = await fetch(url + '/sse')
  t.equal(res.status, 500)
  t.match(await res.json(), { code: 'FST_ERR_SSE_INVALID_FIELD' })
  t.equal(app.eventSources.openStreams, 0)
})

for (const chunked of [true, false]) {
  test(`after close() the connection is clean and ${chunked ? 'serves the next request (chunked: true)' : 'ends with the stream (close-delimited, the default)'}`, async t => {
    const { url } = await start(t, app => {
      app.get('/sse', async request => {
        const sse = request.getEventSource()
        sse.send('one')
        return sse.close()
      })
      app.get('/next', async () => 'next')
    }, { chunked })
    const agent = new Agent({ connections: 1, pipelining: 1 })
    t.teardown(() => agent.destroy())
    const sockets = new Set<unknown>()
    agent.on('connect', (_origin, targets) => sockets.add(targets))
    const first = await undiciRequest(url + '/sse', { dispatcher: agent })
    t.equal(await first.body.text(), 'data: one\n\n')
    const second = await undiciRequest(url + '/next', { dispatcher: agent })
    t.equal(await second.body.text(), 'next')
    t.equal(sockets.size, chunked ? 1 : 2, chunked ? 'both requests used one connection' : 'the next request opened a new connection')
  })
}
