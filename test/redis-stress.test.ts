import tap, { test, type Test } from 'tap'
import { prng, sleep } from './helpers/clients'
import { Client, Switchboard, stored } from './helpers/redis'
import { Instance } from './helpers/redis-instance'
import { PrivateRedis, hasRedisServer } from './helpers/redis-server'
import { until } from './helpers/server'

const SEED = Number(process.env.SEED ?? 20261130)
const INSTANCES = 3
const CLIENTS = 6
const LARGE = 128 * 1024

interface Verdict { received: number, resets: number, duplicates: number, unexplained: [number, number][], unknown: number, reachedEnd: boolean, first?: string }

/**
 * Reads one client's events against the one order (the stream's): every message once, each after the one
 * before it, and a message skipped only where a reset event came in between.
 */
function judge (client: Client, order: string[]): Verdict {
  const index = new Map(order.map((label, i) => [label, i]))
  const verdict: Verdict = { received: 0, resets: 0, duplicates: 0, unexplained: [], unknown: 0, reachedEnd: false }
  let last = -1
  let resetSince = false
  for (const [n, event] of client.events.entries()) {
    if (event.type === 'reset') {
      verdict.resets++
      resetSince = true
      continue
    }
    const i = index.get(event.data.slice(0, event.data.indexOf('|')))
    if (i === undefined) {
      verdict.unknown++
      continue
    }
    if (i <= last) {
      // What a failure needs to be read: the events around it, by index in the order, each with the client's last id
      // after it (`lastEventId`), and where the client reconnected.
      verdict.first ??= client.events.slice(Math.max(0, n - 6), n + 3).map((e, k) => {
        const at = Math.max(0, n - 6) + k
        const opened = client.openedAt.includes(at) ? '(open) ' : ''
        return `${opened}${at}:${e.type}:${e.type === 'reset' ? '' : index.get(e.data.slice(0, e.data.indexOf('|')))}@${e.id}`
      }).join(' ') + ` (duplicate at ${n}, last ${last})`
      verdict.duplicates++
      continue
    }
    if (i > last + 1 && !resetSince) verdict.unexplained.push([last, i])
    verdict.received++
    last = i
    resetSince = false
  }
  verdict.reachedEnd = last === order.length - 1
  return verdict
}

async function cluster (t: Test, redis: PrivateRedis): Promise<Instance[]> {
  const prefix = `stress:${process.pid}:`
  const env = { MAX_LEN: '100000', PUBLISH_TIMEOUT: '10000' }
  const nodes = Array.from({ length: INSTANCES }, () => new Instance(prefix, redis.url, env))
  t.teardown(() => Promise.all(nodes.map(node => node.stop())))
  await Promise.all(nodes.map(node => node.ready()))
  return nodes
}

if (!hasRedisServer) {
  tap.plan(0, 'redis-server is not installed: the stress test needs a private server')
} else {
  test(`stress (SEED=${SEED}): several instances, large and small messages, subscriber kills, SCRIPT FLUSH, a Redis restart, clients hopping instances`, async t => {
    const random = prng(SEED)
    // A low pub/sub output-buffer limit, so that bursts of large messages get subscribers dropped by Redis itself.
    const redis = await PrivateRedis.start(t, ['--client-output-buffer-limit', 'pubsub 2mb 1mb 60'])
    const control = redis.client(t)
    const prefix = `stress:${process.pid}:`
    const nodes = await cluster(t, redis)
    const boards = Array.from({ length: CLIENTS }, (_, i) => new Switchboard(t, nodes[i % INSTANCES].port))
    const clients = boards.map((board, i) => new Client(t, nodes[i % INSTANCES].url + `/events/c${i}`, { node: { dispatcher: board.agent } }, ['reset']))
    await until(() => clients.every(c => c.opens === 1), 10_000, 'every client to open')
    await until(() => false, 200, '').catch(() => {})

    let label = 0
    const hops = { count: 0 }
    const hopping = { on: true }
    // A client hops only once it got something since its last hop: a replay of megabytes takes a moment to read,
    // and a client cut every time before it is read would never move on.
    const seen = clients.map(() => 0)
    const hopper = (async () => {
      while (hopping.on) {
        await sleep(50 + Math.floor(random() * 100))
        const i = Math.floor(random() * CLIENTS)
        if (clients[i].events.length === seen[i]) continue
        seen[i] = clients[i].events.length
        boards[i].port = nodes[Math.floor(random() * INSTANCES)].port
        boards[i].drop()
        hops.count++
      }
    })()

    /** A burst from every instance, each publishing its share in call order; one in ten messages is large. */
    const burst = async (size: number, during?: () => Promise<unknown>): Promise<number> => {
      const shares = nodes.map(() => ({ labels: [] as string[], sizes: [] as number[] }))
      for (let n = 0; n < size; n++) {
        const share = shares[Math.floor(random() * INSTANCES)]
        share.labels.push(`m${label++}`)
        share.sizes.push(random() < 0.1 ? LARGE : Math.floor(random() * 64))
      }
      const sent = Promise.all(nodes.map((node, i) => node.call('publishMany', shares[i]) as Promise<number>))
      if (during !== undefined) await during()
      return (await sent).reduce((a, b) => a + b, 0)
    }
    const killSubscribers = (): Promise<unknown> => (control.client as (...args: string[]) => Promise<unknown>)('KILL', 'TYPE', 'pubsub')

    const published: number[] = []
    published.push(await burst(150))
    published.push(await burst(150, killSubscribers))
    published.push(await burst(150, () => control.script('FLUSH')))
    published.push(await burst(150, async () => { await sleep(5); await killSubscribers(); await control.script('FLUSH') }))

    // What the stream held before Redis restarts without persistence: it is lost, and clients must hear so.
    const before = await stored(control, prefix)
    await redis.stop()
    await sleep(300)
    await redis.start()
    await until(() => false, 2500, '').catch(() => {})

    published.push(await burst(150, killSubscribers))
    published.push(await burst(150))
    hopping.on = false
    await hopper
    await nodes[0].call('publish', { data: 'end|' })
    await until(() => clients.every(c => c.data.some(d => d.startsWith('end|'))), 30_000, 'every client to get the end marker')

    const after = await stored(control, prefix)
    const order = [...before, ...after].map(([, data]) => data.slice(0, data.indexOf('|')))
    t.equal(new Set(order).size, order.length, 'each message is stored once')
    t.comment(`published ${published.join('+')} of 6 × 150 (a publish may fail while Redis restarts), ${order.length} in the stream (before the restart ${before.length}), ${hops.count} hops`)
    for (const [i, client] of clients.entries()) {
      const verdict = judge(client, order)
      t.comment(`c${i}: ${verdict.received} received, ${verdict.resets} reset(s), ${client.opens} connection(s)`)
      t.equal(verdict.unknown, 0, `c${i}: nothing that was not published`)
      t.equal(verdict.duplicates, 0, `c${i}: no duplicate, nothing out of order`)
      if (verdict.first !== undefined) t.comment(`c${i}: first duplicate: ${verdict.first}`)
      t.same(verdict.unexplained, [], `c${i}: no message skipped without a reset`)
      t.ok(verdict.reachedEnd, `c${i}: reached the last message`)
    }
    const resets = clients.filter(c => c.events.some(e => e.type === 'reset')).length
    t.ok(resets > 0, `the restart lost the stream: ${resets} client(s) got the reset event`)
  })
}
