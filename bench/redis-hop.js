'use strict'

// What the Redis hop adds: publish on instance A → event parsed at a client of instance B, one message in flight
// at a time, against the same path on one instance with the default in-process adapter. Prints JSON.
// REDIS_URL (default redis://127.0.0.1:6379), MESSAGES (default 3000). Run `npm run build` first.

const http = require('node:http')
const { randomBytes } = require('node:crypto')
const Fastify = require('fastify')
const { Redis } = require('ioredis')
const eventSources = require('../dist/index.js')
const redisAdapter = require('../dist/adapters/redis.js')

const REDIS_URL = process.env.REDIS_URL ?? 'redis://127.0.0.1:6379'
const MESSAGES = Number(process.env.MESSAGES ?? 3000)
const WARMUP = 200

async function instance (adapter) {
  const app = Fastify()
  await app.register(eventSources, adapter === undefined ? {} : { adapter })
  app.get('/events/:id', async request => {
    const sse = request.getEventSource(request.params.id)
    await sse.keepAlive()
    return sse.close()
  })
  await app.listen({ port: 0, host: '127.0.0.1' })
  return { app, port: app.server.address().port }
}

/** A raw client: resolves each waiter when an event with its data arrives. */
function client (port, id) {
  return new Promise((resolve, reject) => {
    let waiting
    let text = ''
    const req = http.get({ host: '127.0.0.1', port, path: '/events/' + id }, res => {
      res.setEncoding('utf8')
      res.on('data', chunk => {
        text += chunk
        let end
        while ((end = text.indexOf('\n\n')) !== -1) {
          const frame = text.slice(0, end)
          text = text.slice(end + 2)
          const line = frame.split('\n').find(l => l.startsWith('data: '))
          if (line !== undefined && waiting !== undefined && line.slice(6) === waiting.data) {
            const done = waiting.resolve
            waiting = undefined
            done(performance.now())
          }
        }
      })
      resolve({
        next: data => new Promise(resolve => { waiting = { data, resolve } }),
        close: () => req.destroy()
      })
    })
    req.on('error', reject)
  })
}

async function measure (publisher, receiver, label) {
  const c = await client(receiver.port, 'bench-' + label)
  while (publisher.app.eventSources.activeConnections + receiver.app.eventSources.activeConnections === 0) {
    await new Promise(resolve => setTimeout(resolve, 5))
  }
  await new Promise(resolve => setTimeout(resolve, 50))
  const samples = []
  for (let i = 0; i < WARMUP + MESSAGES; i++) {
    const data = `${label} ${i}`
    const arrived = c.next(data)
    const t0 = performance.now()
    await publisher.app.eventSources.publish(data)
    const t1 = await arrived
    if (i >= WARMUP) samples.push(t1 - t0)
  }
  c.close()
  return stats(samples)
}

function stats (samples) {
  const sorted = samples.slice().sort((a, b) => a - b)
  const at = q => round(sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))])
  return { n: sorted.length, p50: at(0.5), p90: at(0.9), p99: at(0.99), max: round(sorted[sorted.length - 1]), mean: round(sorted.reduce((s, x) => s + x, 0) / sorted.length) }
}

function round (ms) {
  return Math.round(ms * 1000) / 1000
}

async function main () {
  const prefix = `fes-bench:${randomBytes(4).toString('hex')}:`
  const redis = new Redis(REDIS_URL)
  const local = await instance()
  const a = await instance(redisAdapter({ url: REDIS_URL, channelPrefix: prefix }))
  const b = await instance(redisAdapter({ url: REDIS_URL, channelPrefix: prefix }))
  const live = { a: undefined, b: undefined }
  live.a = await instance(redisAdapter({ url: REDIS_URL, channelPrefix: prefix + 'live:', history: false }))
  live.b = await instance(redisAdapter({ url: REDIS_URL, channelPrefix: prefix + 'live:', history: false }))
  try {
    const results = {
      messages: MESSAGES,
      unit: 'ms, publish() called → event parsed at the client',
      local: await measure(local, local, 'local'),
      redisSameInstance: await measure(a, a, 'same'),
      redisCrossInstance: await measure(a, b, 'cross'),
      redisCrossInstanceNoHistory: await measure(live.a, live.b, 'live')
    }
    results.addedByRedisHop = {
      p50: round(results.redisCrossInstance.p50 - results.local.p50),
      p99: round(results.redisCrossInstance.p99 - results.local.p99)
    }
    results.node = process.version
    results.redis = /redis_version:(\S+)/.exec(await redis.info('server'))?.[1]
    console.log(JSON.stringify(results, null, 2))
  } finally {
    await Promise.all([local, a, b, live.a, live.b].map(({ app }) => app.close()))
    await redis.del(prefix + 'stream')
    redis.disconnect()
  }
}

main().catch(err => {
  console.error(err)
  process.exit(1)
})
