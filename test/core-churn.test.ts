import { connect, type Socket } from 'node:net'
import { test } from 'tap'
import { start, until } from './helpers/server'

const CLIENTS = 300
const AT_ONCE = 50

type Exit = 'before-head' | 'after-event' | 'reset' | 'half-close'
const EXITS: Exit[] = ['before-head', 'after-event', 'reset', 'half-close']

/** One raw HTTP/1.1 client that leaves abruptly, in one of several ways. */
function churn (port: number, path: string, exit: Exit): Promise<void> {
  return new Promise(resolve => {
    const socket: Socket = connect(port, '127.0.0.1')
    socket.on('error', () => {})
    socket.on('close', () => resolve())
    socket.write(`GET ${path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n`)
    if (exit === 'before-head') {
      setImmediate(() => socket.destroy())
      return
    }
    let seen = ''
    socket.on('data', chunk => {
      seen += chunk.toString()
      if (!seen.includes('data: hello')) return
      if (exit === 'after-event') socket.destroy()
      else if (exit === 'reset') socket.resetAndDestroy()
      else socket.end()
    })
  })
}

function listenerCounts (emitter: NodeJS.EventEmitter): Record<string, number> {
  const counts: Record<string, number> = {}
  for (const name of emitter.eventNames()) counts[String(name)] = emitter.listenerCount(name)
  return counts
}

test('many clients connecting and leaving abruptly leave nothing behind', async t => {
  let opened = 0
  const { app, url } = await start(t, app => {
    app.get('/sse/:n', async request => {
      const n = Number((request.params as { n: string }).n)
      const sse = request.getEventSource(n % 2 === 0 ? 'client-' + n : undefined)
      opened++
      if (n % 3 === 0) sse.withPing(ping => { ping.interval = 20; ping.start() })
      sse.send('hello')
      if (n % 5 === 0) await sse.waitForFail(60_000)
      else await sse.keepAlive()
    })
  })
  const port = Number(new URL(url).port)
  const before = listenerCounts(app.server)
  let registered = 0
  let unregistered = 0
  app.eventSources.on('registered', () => { registered++ })
  app.eventSources.on('unregistered', () => { unregistered++ })
  for (let i = 0; i < CLIENTS; i += AT_ONCE) {
    const batch: Promise<void>[] = []
    for (let n = i; n < i + AT_ONCE && n < CLIENTS; n++) batch.push(churn(port, '/sse/' + n, EXITS[n % EXITS.length]))
    await Promise.all(batch)
  }
  await until(() => app.eventSources.openStreams === 0, 5000, 'every stream to end')
  t.ok(opened > CLIENTS / 2, `most requests reached the handler (${opened})`)
  t.equal(app.eventSources.activeConnections, 0)
  t.same(app.eventSources.all(), [])
  t.equal(app.eventSources.pingTimers, 0)
  t.ok(registered > 0)
  t.equal(unregistered, registered, 'every identified source that opened left')
  let connections = -1
  const poll = setInterval(() => app.server.getConnections((_err, n) => { connections = n }), 5)
  t.teardown(() => clearInterval(poll))
  await until(() => connections === 0, 5000, 'every connection to close')
  t.same(listenerCounts(app.server), before, 'no listener left on the server')
})
