'use strict'

// What one Redis node carries: publishes per second through the adapter's script, and the Redis CPU each costs
// (INFO's used_cpu_user + used_cpu_sys, read before and after), on a private redis-server started on a free
// loopback port and stopped by pid. Messages of SIZE bytes (default 100) to identifiers, to one topic, to three
// topics, and without history; 64 publishes in flight. The printed µs of Redis CPU per publish bound what one core
// carries: 1,000,000 / µs publishes per second.
// Usage: npm run build && node bench/redis-capacity.js [--messages=20000] [--size=100]

const { startRedis } = require('./redis-server')
const { Redis } = require('ioredis')
const { redisAdapter } = require('../dist/adapters/redis.js')

const arg = (name, fallback) => {
  const found = process.argv.find(a => a.startsWith(`--${name}=`))
  return found === undefined ? fallback : Number(found.slice(name.length + 3))
}
const MESSAGES = arg('messages', 20000)
const SIZE = arg('size', 100)
const IN_FLIGHT = 64

/** Enough of an AdapterHost for publishing: nothing is open on this instance. */
function host () {
  const none = { streams: 0, presence: () => [], count: () => 0, hasIdentifier: () => false, identifiers: () => [], topics: () => [], topicStreams: () => 0, follows: () => false, watch: () => {} }
  const log = { warn () {}, info () {}, debug () {}, error () {} }
  return { presence: none, deliver () {}, closeOlder () {}, control () {}, gap () {}, identified: () => [], openedAt: () => undefined, log }
}

async function cpu (redis) {
  const info = await redis.info('cpu')
  const field = name => Number(new RegExp(`${name}:([\\d.]+)`).exec(info)[1])
  return field('used_cpu_user') + field('used_cpu_sys')
}

async function run (redis, url, label, options, target) {
  const adapter = redisAdapter({ url, channelPrefix: `capacity:${label}:`, presence: false, ...options })
  await adapter.attach(host())
  const data = 'x'.repeat(SIZE)
  const before = await cpu(redis)
  const started = process.hrtime.bigint()
  let next = 0
  await Promise.all(Array.from({ length: IN_FLIGHT }, async () => {
    while (next < MESSAGES) {
      const n = next++
      await adapter.publish({ data, to: target(n) })
    }
  }))
  const seconds = Number(process.hrtime.bigint() - started) / 1e9
  const used = await cpu(redis) - before
  await adapter.close()
  return { label, perSecond: Math.round(MESSAGES / seconds), redisMicros: (used * 1e6) / MESSAGES }
}

async function main () {
  const { child: server, url } = await startRedis()
  const redis = new Redis(url, { lazyConnect: true, retryStrategy: () => 50 })
  redis.on('error', () => {})
  try {
    await redis.connect()
    const rows = []
    rows.push(await run(redis, url, 'identifier', {}, n => `user-${n % 1000}`))
    rows.push(await run(redis, url, 'topic', {}, n => ({ topic: `room-${n % 100}` })))
    rows.push(await run(redis, url, 'three-topics', {}, n => ({ topic: [`a-${n % 100}`, `b-${n % 100}`, `c-${n % 100}`] })))
    rows.push(await run(redis, url, 'everyone', {}, () => undefined))
    rows.push(await run(redis, url, 'no-history', { history: false }, n => `user-${n % 1000}`))
    console.log(`| publish (${SIZE} B, ${MESSAGES} messages, ${IN_FLIGHT} in flight) | publishes/s (one instance) | Redis CPU per publish, µs | one Redis core, publishes/s |`)
    console.log('|---|---:|---:|---:|')
    for (const row of rows) {
      console.log(`| ${row.label} | ${row.perSecond.toLocaleString('en-US')} | ${row.redisMicros.toFixed(1)} | ${Math.round(1e6 / row.redisMicros).toLocaleString('en-US')} |`)
    }
  } finally {
    redis.disconnect()
    server.kill('SIGKILL')
  }
}

main().catch(err => {
  console.error(err)
  process.exit(1)
})
