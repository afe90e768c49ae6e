'use strict'

// The Redis hop on a Redis Cluster against one Redis node, side by side in one run: the time from publish() on
// one adapter to delivery by another (two instances in this process), for a message to a topic and to an
// identifier, one publish in flight. A private redis-server and a private cluster (three masters, three replicas),
// each on free loopback ports, stopped by pid. Rounds alternate between the two so that noise hits both alike;
// the ratio is what to read, not the absolute figures (a shared 2-core machine).
// Usage: npm run build && node bench/cluster-hop.js [--messages=2000] [--rounds=4]

const { spawn, spawnSync } = require('node:child_process')
const { mkdtempSync, rmSync } = require('node:fs')
const { createServer } = require('node:net')
const { tmpdir } = require('node:os')
const { join } = require('node:path')
const { Redis } = require('ioredis')
const { redisAdapter } = require('../dist/adapters/redis.js')

const arg = (name, fallback) => {
  const found = process.argv.find(a => a.startsWith(`--${name}=`))
  return found === undefined ? fallback : Number(found.slice(name.length + 3))
}
const MESSAGES = arg('messages', 2000)
const ROUNDS = arg('rounds', 4)
const HOST = '127.0.0.1'
const children = []
process.on('exit', () => { for (const child of children) try { process.kill(child.pid, 'SIGKILL') } catch {} })

const sleep = ms => new Promise(resolve => setTimeout(resolve, ms))

async function free (port) {
  return new Promise(resolve => {
    const server = createServer()
    server.once('error', () => resolve(false))
    server.listen(port, HOST, () => server.close(() => resolve(true)))
  })
}

async function freePorts (count) {
  const ports = []
  while (ports.length < count) {
    const port = 10_000 + Math.floor(Math.random() * 12_000)
    if (!ports.includes(port) && await free(port) && await free(port + 10_000)) ports.push(port)
  }
  return ports
}

async function ask (port, ...args) {
  const redis = new Redis({ host: HOST, port, lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null })
  redis.on('error', () => {})
  try {
    await redis.connect()
    return await redis.call(...args)
  } finally {
    redis.disconnect()
  }
}

async function until (check, what) {
  for (let i = 0; i < 400; i++) {
    if (await check().catch(() => false)) return
    await sleep(50)
  }
  throw new Error(`timed out waiting for ${what}`)
}

function server (dir, port, cluster) {
  const child = spawn('redis-server', [
    '--port', String(port), '--bind', HOST, '--save', '', '--appendonly', 'no', '--dir', dir,
    ...(cluster ? ['--cluster-enabled', 'yes', '--cluster-config-file', join(dir, `nodes-${port}.conf`), '--cluster-node-timeout', '1000', '--repl-diskless-sync-delay', '0'] : [])
  ], { stdio: 'ignore' })
  children.push(child)
  return until(async () => (await ask(port, 'PING')) === 'PONG', `redis-server on ${port}`)
}

async function startRedis (dir) {
  const [port] = await freePorts(1)
  await server(dir, port, false)
  return `redis://${HOST}:${port}`
}

async function startCluster (dir) {
  const ports = await freePorts(6)
  await Promise.all(ports.map(port => server(dir, port, true)))
  const created = spawnSync('redis-cli', ['--cluster', 'create', ...ports.map(port => `${HOST}:${port}`), '--cluster-replicas', '1', '--cluster-yes'], { encoding: 'utf8', timeout: 30_000 })
  if (created.status !== 0) throw new Error(created.stdout + created.stderr)
  await Promise.all(ports.map(port => until(async () => /cluster_state:ok/.test(await ask(port, 'CLUSTER', 'INFO')), 'cluster_state:ok')))
  await Promise.all(ports.map(port => until(async () => /role:master|master_link_status:up/.test(await ask(port, 'INFO', 'replication')), 'replicas in sync')))
  return ports.map(port => ({ host: HOST, port }))
}

/** An AdapterHost with one identified source (`alice`) following topic `t`; `onDeliver` hears every delivery. */
function host (onDeliver) {
  let listener
  const presence = {
    streams: 1,
    presence: topic => topic === 't' ? ['alice'] : [],
    count: () => 1,
    hasIdentifier: identifier => identifier === 'alice',
    identifiers: () => ['alice'],
    topics: () => ['t'],
    topicStreams: topic => topic === 't' ? 1 : 0,
    follows: topic => topic === 't',
    watch: l => { listener = l }
  }
  const log = { warn () {}, info () {}, debug () {}, error () {} }
  return {
    host: { presence, deliver: onDeliver, closeOlder () {}, control () {}, gap () {}, identified: () => [['alice', 1]], openedAt: () => undefined, log },
    announce: () => { listener?.identifier('alice'); listener?.topic('t', 'alice') }
  }
}

async function pair (options) {
  let waiting
  const receiver = redisAdapter({ ...options, presence: false })
  const { host: receiving, announce } = host(() => { waiting?.() })
  await receiver.attach(receiving)
  announce()
  const publisher = redisAdapter({ ...options, presence: false })
  await publisher.attach(host(() => {}).host)
  await sleep(300)
  return {
    /** µs until the publish resolved, and until the other instance delivered it. */
    async hop (to) {
      const started = process.hrtime.bigint()
      const since = () => Number(process.hrtime.bigint() - started) / 1000
      const delivered = new Promise(resolve => { waiting = () => resolve(since()) })
      const resolved = await publisher.publish({ data: 'x'.repeat(100), to }).then(since)
      return [resolved, await delivered]
    },
    close: () => Promise.all([receiver.close(), publisher.close()])
  }
}

const percentile = (sorted, p) => sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))]

async function main () {
  if (spawnSync('redis-server', ['--version']).status !== 0) throw new Error('redis-server is needed')
  const dir = mkdtempSync(join(tmpdir(), 'fes-cluster-hop-'))
  try {
    const url = await startRedis(dir)
    const nodes = await startCluster(dir)
    const setups = {
      'one node': await pair({ url, channelPrefix: 'hop:' }),
      cluster: await pair({ nodes, channelPrefix: 'hop:' })
    }
    const samples = {}
    for (let round = 0; round < ROUNDS; round++) {
      for (const [name, setup] of Object.entries(setups)) {
        for (const [label, to] of [['topic', { topic: 't' }], ['identifier', 'alice']]) {
          const key = `${label}, ${name}`
          samples[key] ??= []
          for (let n = 0; n < MESSAGES / ROUNDS; n++) samples[key].push(await setup.hop(to))
        }
      }
    }
    const stats = (values, i) => {
      const sorted = values.map(v => v[i]).sort((a, b) => a - b)
      return { median: percentile(sorted, 0.5), p99: percentile(sorted, 0.99) }
    }
    console.log(`µs from publish() (${MESSAGES} messages each, one in flight, 100 bytes), median / p99:`)
    for (const label of ['topic', 'identifier']) {
      for (const [i, what] of [[0, 'resolved'], [1, 'delivered on the other instance']]) {
        const one = stats(samples[`${label}, one node`], i)
        const cluster = stats(samples[`${label}, cluster`], i)
        console.log(`${label}, ${what}: one node ${one.median.toFixed(0)} / ${one.p99.toFixed(0)}, cluster ${cluster.median.toFixed(0)} / ${cluster.p99.toFixed(0)}; cluster ÷ one node: ${(cluster.median / one.median).toFixed(1)} / ${(cluster.p99 / one.p99).toFixed(1)}`)
      }
    }
    await Promise.all(Object.values(setups).map(setup => setup.close()))
  } finally {
    for (const child of children) try { process.kill(child.pid, 'SIGKILL') } catch {}
    await sleep(200)
    rmSync(dir, { recursive: true, force: true })
  }
}

main().then(() => process.exit(0), err => { console.error(err); process.exit(1) })
