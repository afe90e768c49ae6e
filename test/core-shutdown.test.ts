import { execFile } from 'node:child_process'
import { request as httpRequest } from 'node:http'
import Fastify from 'fastify'
import { test, type Test } from 'tap'
import eventSources from '../lib/index'
import type { HttpRequestEventSource } from '../types/index'
import { until } from './helpers/server'

interface Raw {
  text: string
  ended: boolean
  pause: () => void
}

async function openRaw (t: Test, url: string): Promise<Raw> {
  const req = httpRequest(url, { agent: false })
  req.on('error', () => {})
  t.teardown(() => { req.destroy() })
  return new Promise((resolve, reject) => {
    req.on('response', res => {
      const raw: Raw = { text: '', ended: false, pause: () => { res.pause() } }
      res.setEncoding('utf8')
      res.on('data', (chunk: string) => { raw.text += chunk })
      res.on('close', () => { raw.ended = true })
      resolve(raw)
    })
    req.on('error', reject)
    req.end()
  })
}

const timeouts = (): number => process.getActiveResourcesInfo().filter(r => r === 'Timeout').length

test('fastify.close() with open streams resolves without waiting out the grace, and ends every source with shutdown', async t => {
  const timersBefore = timeouts()
  const app = Fastify()
  await app.register(eventSources, { closeGrace: 20_000, ping: { interval: 10_000 } })
  const sources: HttpRequestEventSource[] = []
  const resumed: string[] = []
  app.get('/keep/:id', async request => {
    const sse = request.getEventSource((request.params as { id: string }).id)
    sources.push(sse)
    sse.send('open')
    await sse.keepAlive()
    resumed.push('keep')
  })
  app.get('/fail', async request => {
    const sse = request.getEventSource('fail')
    sources.push(sse)
    sse.withPing(ping => { ping.interval = 20; ping.start() })
    await sse.waitForFail(60_000)
    resumed.push('fail')
  })
  app.get('/anon', async request => {
    const sse = request.getEventSource()
    sources.push(sse)
    sse.flush()
  })
  t.teardown(() => app.close())
  await app.listen({ port: 0, host: '127.0.0.1' })
  const url = `http://127.0.0.1:${(app.server.address() as { port: number }).port}`
  const clients = await Promise.all([
    openRaw(t, url + '/keep/a'), openRaw(t, url + '/keep/b'), openRaw(t, url + '/fail'), openRaw(t, url + '/anon')
  ])
  t.equal(app.eventSources.activeConnections, 3)
  t.equal(app.eventSources.openStreams, 4)
  t.equal(app.eventSources.pingTimers, 2)
  const reasons: unknown[] = []
  app.eventSources.on('unregistered', source => reasons.push(source.closeReason))

  const grace = new Promise<string>(resolve => setTimeout(resolve, 20_000, 'grace ran out').unref())
  t.equal(await Promise.race([app.close().then(() => 'closed'), grace]), 'closed')

  t.same(sources.map(s => s.closeReason), ['shutdown', 'shutdown', 'shutdown', 'shutdown'])
  t.same(sources.map(s => s.signal.reason), ['shutdown', 'shutdown', 'shutdown', 'shutdown'])
  t.same(reasons, ['shutdown', 'shutdown', 'shutdown'])
  t.equal(app.eventSources.activeConnections, 0)
  t.equal(app.eventSources.openStreams, 0)
  t.equal(app.eventSources.pingTimers, 0)
  await until(() => clients.every(c => c.ended) && resumed.length === 3, 3000, 'clients to see the end and handlers to resume')
  t.same(resumed.sort(), ['fail', 'keep', 'keep'])
  t.equal(clients[0].text, 'data: open\n\n')
  t.equal(timeouts(), timersBefore, 'no timer left running')
})

test('fastify.close() cuts a client that does not read once closeGrace runs out', async t => {
  const app = Fastify()
  await app.register(eventSources, { closeGrace: 50, maxBufferedBytes: 64 * 1024 * 1024 })
  let source: HttpRequestEventSource | undefined
  app.get('/sse', async request => {
    source = request.getEventSource()
    source.flush()
    await source.keepAlive()
  })
  t.teardown(() => app.close())
  await app.listen({ port: 0, host: '127.0.0.1' })
  const client = await openRaw(t, `http://127.0.0.1:${(app.server.address() as { port: number }).port}/sse`)
  client.pause()
  const sse = source as HttpRequestEventSource
  const chunk = 'x'.repeat(64 * 1024)
  for (let i = 0; i < 256 && sse.bufferedAmount < 4 * 1024 * 1024; i++) sse.send(chunk)
  await until(() => sse.bufferedAmount > 0, 3000, 'the socket buffer to fill')
  const bound = new Promise<string>(resolve => setTimeout(resolve, 10_000, 'hung').unref())
  t.equal(await Promise.race([app.close().then(() => 'closed'), bound]), 'closed')
  t.equal(sse.closeReason, 'shutdown')
  t.equal(app.eventSources.openStreams, 0)
  t.equal(sse.request.raw.socket.destroyed, true, 'the socket was cut, though its bytes were not all read')
  t.equal(client.ended, false, 'the client never read them')
})

test('no timer or handle keeps the process alive after fastify.close() with streams open', async t => {
  // A child that opens streams with pings and waitForFail, closes the app, and must then exit on its own.
  const script = `
    const Fastify = require('fastify')
    const http = require('node:http')
    const plugin = require('./lib/index')
    const app = Fastify()
    app.register(plugin, { ping: { interval: 50 } })
    app.get('/sse', async request => {
      const sse = request.getEventSource(String(request.query.id))
      sse.withPing(p => { p.interval = 30; p.dataMessage = 'own'; p.start() })
      await sse.waitForFail(60000)
    })
    app.listen({ port: 0, host: '127.0.0.1' }).then(async () => {
      const port = app.server.address().port
      await Promise.all([1, 2, 3].map(id => new Promise(resolve => {
        http.get({ port, host: '127.0.0.1', path: '/sse?id=' + id, agent: false }, res => { res.resume(); resolve() })
      })))
      await app.close()
      console.log('closed ' + app.eventSources.openStreams + ' ' + app.eventSources.pingTimers)
    })
  `
  const execArgv = process.execArgv.filter(arg => arg.includes('typescript'))
  const child = execFile(process.execPath, [...execArgv, '-e', script], { cwd: process.cwd(), timeout: 20_000 })
  t.teardown(() => { child.kill() })
  let out = ''
  child.stdout?.on('data', chunk => { out += chunk })
  child.stderr?.on('data', chunk => { out += chunk })
  const [code, signal] = await new Promise<[number | null, string | null]>(resolve => child.on('exit', (c, s) => resolve([c, s])))
  t.equal(signal, null, 'exited by itself')
  t.equal(code, 0)
  t.match(out, /^closed 0 0$/m)
})

test('a request that asks for a stream while the server is closing gets 503 with Retry-After', async t => {
  const app = Fastify()
  await app.register(eventSources, { retry: 3000 })
  let arrived = false
  let release = (): void => {}
  const gate = new Promise<void>(resolve => { release = resolve })
  app.get('/sse', async request => {
    arrived = true
    await gate
    const sse = request.getEventSource()
    sse.send('never')
    await sse.keepAlive()
  })
  // Added after the plugin, so it runs once the plugin's own preClose has begun the shutdown.
  app.addHook('preClose', async () => { release() })
  t.teardown(() => app.close())
  await app.listen({ port: 0, host: '127.0.0.1' })
  const response = fetch(`http://127.0.0.1:${(app.server.address() as { port: number }).port}/sse`)
  await until(() => arrived, 3000, 'the request to reach the handler')
  const closing = app.close()
  const res = await response
  t.equal(res.status, 503)
  t.equal(res.headers.get('retry-after'), '3')
  t.match(await res.json(), { code: 'FST_ERR_SSE_CLOSING' })
  await closing
  t.equal(app.eventSources.openStreams, 0)
})
