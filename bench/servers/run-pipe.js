'use strict'

// The stream bench's producer (a small object every PERIOD_MS), one per connection, here through a resumable run:
// the connection starts a run of its own key and follows it. VARIANT:
//   run        the plugin's memory run log (and topic history)
//   run-redis  the Redis adapter (REDIS_URL, a private server): each item is an EVAL (XADD + PUBLISH)
//   stream     `await sse.stream(producer)`, for reference

const { setTimeout: sleep } = require('node:timers/promises')

const variant = process.env.VARIANT || 'run'
const PERIOD_MS = Number(process.env.PERIOD_MS) || 20

let open = 0
let seq = 0
let n = 0

async function * producer (signal) {
  for (;;) {
    if (signal?.aborted === true) return
    await sleep(PERIOD_MS)
    yield { s: ++seq, t: Date.now() }
  }
}

function cpu () {
  const c = process.cpuUsage()
  return { cpuUs: c.user + c.system, open, rss: process.memoryUsage().rss }
}

async function main () {
  const Fastify = require('fastify')
  const eventSources = require('../../dist/index.js')
  const app = Fastify({ logger: false })
  const options = { history: variant === 'stream' ? false : undefined }
  if (variant === 'run-redis') {
    const redisAdapter = require('../../dist/adapters/redis.js')
    options.adapter = redisAdapter({ url: process.env.REDIS_URL, channelPrefix: `bench-runs:${process.pid}:`, history: false })
  }
  await app.register(eventSources, options)
  app.get('/cpu', async () => cpu())
  app.get('/sse', async request => {
    const sse = request.getEventSource()
    open++
    sse.signal.addEventListener('abort', () => { open-- })
    if (variant === 'stream') {
      await sse.stream(producer())
      return
    }
    const key = 'bench:' + (++n)
    const running = app.eventSources.run(key, signal => producer(signal), { abandonAfter: 1000 })
    running.catch(() => {})
    await sse.follow(key)
  })
  app.server.requestTimeout = app.server.headersTimeout = app.server.keepAliveTimeout = 0
  await app.listen({ port: 0, host: '127.0.0.1', backlog: 4096 })
  process.stdout.write(`listening ${app.server.address().port}\n`)
}

main()
