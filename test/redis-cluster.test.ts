import tap, { test } from 'tap'
import { Cluster } from 'ioredis'
import { clusterReady, startCluster } from './fixtures/redis-cluster'
import { closeCluster } from '../lib/adapters/coordination'

/** A key (and a sharded channel) per master: hash tags chosen so that the three land on three shards. */
async function onEachShard (masterOf: (key: string) => Promise<number>): Promise<string[]> {
  const byMaster = new Map<number, string>()
  for (let n = 0; byMaster.size < 3 && n < 1000; n++) {
    const key = `{shard-${n}}`
    const master = await masterOf(key)
    if (!byMaster.has(master)) byMaster.set(master, key)
  }
  return [...byMaster.values()]
}

if (clusterReady(tap)) {
  test('a local Redis Cluster: sharded pub/sub across shards, and writes again within 5 s of a master killed', async t => {
    const cluster = await startCluster()
    t.teardown(() => cluster.stop())
    t.equal(cluster.nodes.length, 6, 'three masters and three replicas')
    t.ok(cluster.nodes.every(node => node.port < 32768 && node.port + 10_000 < 32768), 'loopback ports and bus ports under 32768')

    // A dead node is not reconnected to (ioredis's default): the slot map is refreshed every second instead, and on
    // each MOVED or connection error.
    const options = { shardedSubscribers: true, slotsRefreshInterval: 1000, retryDelayOnFailover: 100, retryDelayOnClusterDown: 100 }
    const publisher = new Cluster(cluster.startupNodes, options)
    const subscriber = new Cluster(cluster.startupNodes, options)
    for (const client of [publisher, subscriber]) client.on('error', () => {})
    t.teardown(async () => { await Promise.all([publisher, subscriber].map(async client => closeCluster(client, 2000))) })

    const channels = await onEachShard(key => cluster.masterOf(key))
    t.equal(new Set(await Promise.all(channels.map(channel => cluster.masterOf(channel)))).size, 3, 'one channel on each master')

    const received: [string, string][] = []
    subscriber.on('smessage', (channel: string, message: string) => received.push([channel, message]))
    // One SSUBSCRIBE per shard: all channels of one call must hash to one slot.
    for (const channel of channels) await subscriber.ssubscribe(channel)
    for (const channel of channels) t.equal(await publisher.spublish(channel, `to ${channel}`), 1, `${channel}: one subscriber on its shard`)
    const deadline = Date.now() + 5000
    while (received.length < channels.length && Date.now() < deadline) await new Promise(resolve => setTimeout(resolve, 20))
    t.same(received.sort(), channels.map(channel => [channel, `to ${channel}`]).sort(), 'each message once, on its own channel')

    // A master killed outright: its replica is promoted, and writes to its slots succeed again.
    const key = channels[0] + ':data'
    await publisher.set(key, 'before')
    const killedAt = Date.now()
    const { killed, promoted } = await cluster.killMaster(key)
    t.not(promoted, killed, 'a replica took over')
    const promotedAfter = Date.now() - killedAt
    let written = false
    while (!written && Date.now() - killedAt < 5000) {
      try {
        await publisher.set(key, 'after')
        written = true
      } catch {
        await new Promise(resolve => setTimeout(resolve, 50))
      }
    }
    const writtenAfter = Date.now() - killedAt
    t.ok(written, 'a write to the failed-over slot succeeds within 5 s of the kill')
    t.equal(await publisher.get(key), 'after')

    // The sharded subscription on the failed shard follows it to the promoted replica.
    const channel = channels[0]
    let heard = false
    while (!heard && Date.now() - killedAt < 10_000) {
      try {
        await publisher.spublish(channel, 'after the failover')
      } catch {}
      await new Promise(resolve => setTimeout(resolve, 100))
      heard = received.some(([c, m]) => c === channel && m === 'after the failover')
    }
    t.ok(heard, 'the subscriber hears its channel again on the promoted replica')
    const heardAfter = Date.now() - killedAt
    t.comment(`master ${killed} killed; ${promoted} promoted after ${promotedAfter} ms; writes back after ${writtenAfter} ms; sharded subscription back after ${heardAfter} ms`)
  })
}
