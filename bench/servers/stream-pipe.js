'use strict'

// One producer per connection, the same in every variant: an async generator that yields a small object every
// PERIOD_MS. VARIANT says how its items reach the socket:
//   plain     node:http, `for await` + res.write(frame), waiting for drain when asked (the limit)
//   stream    this plugin, `await sse.stream(producer)`
//   sendAsync this plugin, the loop a user would write by hand: `for await` + `await sse.sendAsync(item)`

const http = require('node:http')
const { setTimeout: sleep } = require('node:timers/promises')
const { once } = require('node:events')

const variant = process.env.VARIANT || 'stream'
const PERIOD_MS = Number(process.env.PERIOD_MS) || 20

let open = 0
let seq = 0

async function * producer () {
  for (;;) {
    await sleep(PERIOD_MS)
    yield { s: ++seq, t: Date.now() }
  }
}

function cpu () {
  const c = process.cpuUsage()
  return { cpuUs: c.user + c.system, open, rss: process.memoryUsage().rss }
}

function control (req, res) {
  res.setHeader('content-type', 'application/json')
  res.end(JSON.stringify(cpu()))
}

async function plain () {
  const server = http.createServer((req, res) => {
    if (req.url !== '/sse') return control(req, res)
    res.writeHead(200, { 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-cache', connection: 'keep-alive' })
    open++
    const items = producer()
    res.on('close', () => {
      open--
      items.return()
    })
    ;(async () => {
      for await (const item of items) {
        if (res.destroyed) break
        if (!res.write('data: ' + JSON.stringify(item) + '\n\n')) await once(res, 'drain')
      }
    })().catch(() => {})
  })
  server.requestTimeout = server.headersTimeout = server.keepAliveTimeout = 0
  server.listen(0, '127.0.0.1', 4096, () => process.stdout.write(`listening ${server.address().port}\n`))
}

async function plugin () {
  const Fastify = require('fastify')
  const eventSources = require(process.env.PLUGIN_DIST || '../../dist/index.js')
  const app = Fastify({ logger: false })
  await app.register(eventSources, { history: false })
  app.get('/cpu', async () => cpu())
  app.get('/sse', async request => {
    const sse = request.getEventSource()
    open++
    sse.signal.addEventListener('abort', () => { open-- })
    if (variant === 'stream') {
      await sse.stream(producer())
    } else {
      for await (const item of producer()) if (!await sse.sendAsync(item)) break
    }
  })
  app.server.requestTimeout = app.server.headersTimeout = app.server.keepAliveTimeout = 0
  await app.listen({ port: 0, host: '127.0.0.1', backlog: 4096 })
  process.stdout.write(`listening ${app.server.address().port}\n`)
}

if (variant === 'plain') plain()
else plugin()
