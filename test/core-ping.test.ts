import { test } from 'tap'
import { EventSource } from 'undici'
import type { HttpRequestEventSource } from '../types/index'
import { openRaw } from './helpers/raw'
import { start, until } from './helpers/server'

test('withPing writes ": <dataMessage>" comments on the interval, counted in sentContentLength', async t => {
  let source: HttpRequestEventSource | undefined
  const { url } = await start(t, app => {
    app.get('/sse', async request => {
      source = request.getEventSource()
      t.equal(source.withPing(ping => {
        ping.dataMessage = 'still here'
        ping.interval = 10
        ping.start()
      }), source, 'withPing returns the source')
      await source.keepAlive()
    })
  })
  const raw = await openRaw(t, url + '/sse')
  await until(() => raw.comments.length >= 3, 3000, 'three pings')
  const sse = source as HttpRequestEventSource
  t.equal(sse.ping.isRunning, true)
  t.equal(sse.ping.interval, 10)
  t.match(raw.text, /^(: still here\n\n)+$/)
  t.same(raw.events, [])
  sse.close()
  await until(() => raw.ended, 3000, 'the end')
  t.equal(sse.sentContentLength, raw.bytes)
})

test('pings never fire message on an EventSource', async t => {
  const { url } = await start(t, app => {
    app.get('/sse', async request => {
      const sse = request.getEventSource().withPing(ping => { ping.interval = 5; ping.start() })
      await new Promise(resolve => setTimeout(resolve, 60))
      sse.send('after pings')
      await sse.keepAlive()
    })
  })
  const es = new EventSource(url + '/sse')
  t.teardown(() => es.close())
  const got: string[] = []
  es.onmessage = e => got.push(e.data)
  await until(() => got.length > 0, 3000, 'the message')
  t.same(got, ['after pings'])
})

test('start() twice never makes two timers; changing the policy moves the source to one new timer', async t => {
  const { app, url } = await start(t, app => {
    app.get('/sse', async request => {
      const sse = request.getEventSource('pinger')
      sse.withPing(ping => {
        ping.interval = 20
        ping.start()
        ping.start()
      })
      sse.ping.start()
      await sse.keepAlive()
    })
  })
  await openRaw(t, url + '/sse')
  await until(() => app.eventSources.activeConnections === 1, 3000, 'the source')
  t.equal(app.eventSources.pingTimers, 1)
  const sse = app.eventSources.getByIdentifier('pinger') as HttpRequestEventSource
  sse.ping.interval = 30
  sse.ping.start()
  t.equal(app.eventSources.pingTimers, 1, 'the old timer went with the old policy')
  sse.ping.stop()
  sse.ping.stop()
  t.equal(sse.ping.isRunning, false)
  t.equal(app.eventSources.pingTimers, 0)
})

test('sources with the same policy share one timer; a different policy gets its own', async t => {
  const { app, url } = await start(t, app => {
    app.get('/sse/:message', async request => {
      const message = (request.params as { message: string }).message
      const sse = request.getEventSource()
      sse.withPing(ping => {
        ping.interval = 15
        ping.dataMessage = message
        ping.start()
      })
      sse.flush()
      await sse.keepAlive()
    })
  })
  const same = await Promise.all([1, 2, 3, 4, 5].map(() => openRaw(t, url + '/sse/shared')))
  t.equal(app.eventSources.pingTimers, 1)
  const other = await openRaw(t, url + '/sse/other')
  t.equal(app.eventSources.pingTimers, 2)
  await until(() => same.every(r => r.comments.length >= 2) && other.comments.length >= 2, 3000, 'pings on every stream')
  t.ok(same.every(r => r.comments.every(c => c === 'shared')))
  t.ok(other.comments.every(c => c === 'other'))
})

test('pings stop when the source ends, however it ends', async t => {
  const sources: HttpRequestEventSource[] = []
  const { app, url } = await start(t, app => {
    app.get('/sse', async request => {
      const sse = request.getEventSource()
      sources.push(sse)
      sse.withPing(ping => { ping.interval = 10; ping.start() })
      sse.flush()
      await sse.keepAlive()
    })
  })
  const closing = await openRaw(t, url + '/sse')
  const leaving = await openRaw(t, url + '/sse')
  t.equal(app.eventSources.pingTimers, 1)
  sources[0].close()
  t.equal(sources[0].ping.isRunning, false)
  t.equal(app.eventSources.pingTimers, 1, 'the other source still pings')
  leaving.abort()
  await until(() => !sources[1].isActive, 3000, 'the client to be gone')
  t.equal(sources[1].ping.isRunning, false)
  t.equal(app.eventSources.pingTimers, 0)
  await until(() => closing.ended, 3000, 'the closed stream to end')
  const length = sources[0].sentContentLength
  sources[0].ping.start()
  t.equal(sources[0].ping.isRunning, false, 'start() on an ended source does nothing')
  t.equal(app.eventSources.pingTimers, 0)
  t.equal(sources[0].sentContentLength, length)
})

test('the ping option starts a ping on every source', async t => {
  const { app, url } = await start(t, app => {
    app.get('/sse/:id', async request => {
      const sse = request.getEventSource((request.params as { id: string }).id)
      await sse.keepAlive()
    })
    app.get('/anon', async request => {
      await request.getEventSource().keepAlive()
    })
  }, { ping: { interval: 10, dataMessage: 'hb' } })
  const clients = [await openRaw(t, url + '/sse/a'), await openRaw(t, url + '/sse/b'), await openRaw(t, url + '/anon')]
  t.equal(app.eventSources.pingTimers, 1)
  await until(() => clients.every(c => c.comments.length >= 2), 3000, 'pings on every stream')
  t.ok(clients.every(c => /^(: hb\n\n)+$/.test(c.text)))
  const a = app.eventSources.getByIdentifier('a') as HttpRequestEventSource
  t.equal(a.ping.interval, 10)
  t.equal(a.ping.dataMessage, 'hb')
  t.equal(a.ping.isRunning, true)
})

test('a ping that finds the connection dead ends the source with ping-failed', async t => {
  const sources = new Map<string, HttpRequestEventSource>()
  const { app, url } = await start(t, app => {
    app.get('/sse/:id', async request => {
      const id = (request.params as { id: string }).id
      const sse = request.getEventSource(id)
      sources.set(id, sse)
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
  // Both share one ping round, `first` ahead: writing its ping kills `second`'s connection, so the same round
  // reaches `second` before any 'close' event can be seen, and only the ping's write finds it dead.
  const raw = first.reply.raw
  const write = raw.write
  raw.write = function (this: typeof raw, chunk: unknown, ...rest: unknown[]) {
    if (second.isActive && String(chunk).startsWith(':')) second.reply.raw.destroy()
    return (write as (...args: unknown[]) => boolean).call(this, chunk, ...rest)
  } as typeof raw.write
  await until(() => !second.isActive, 3000, 'the dead source to end')
  t.equal(second.closeReason, 'ping-failed')
  t.ok(first.isActive, 'the live member is untouched')
  t.equal(app.eventSources.activeConnections, 1)
  t.equal(app.eventSources.pingTimers, 1)
})

test('a ping group with a dead member keeps pinging the others', async t => {
  const { app, url } = await start(t, app => {
    app.get('/sse/:id', async request => {
      const sse = request.getEventSource((request.params as { id: string }).id)
      sse.withPing(ping => { ping.interval = 10; ping.start() })
      sse.flush()
      await sse.keepAlive()
    })
  })
  const dying = await openRaw(t, url + '/sse/dying')
  const living = await openRaw(t, url + '/sse/living')
  dying.abort()
  await until(() => app.eventSources.activeConnections === 1, 3000, 'the dead client to leave')
  const before = living.comments.length
  await until(() => living.comments.length >= before + 2, 3000, 'more pings on the live stream')
  t.equal(app.eventSources.pingTimers, 1)
})
