import type { Cluster, Redis } from 'ioredis'
import { encode } from '../history/redis-streams'
import { ABORT, APPEND, PUBLISH_MANY, SEQUENCE, padded, slotOf, type ClusterKeys } from '../history/redis-cluster-streams'
import { topicsOf } from '../target'
import type { PublishedMessage } from './adapter'
import type { OnlineReplicas } from './cluster-replicas'

/** Retries of a pending id's removal, 100 ms more apart each time (1.5 s in all). */
const SETTLE_ATTEMPTS = 5

export interface WriteSettings {
  keys: ClusterKeys
  replicas: OnlineReplicas
  maxLen: number
  keyTtl: number
  /** ms an idle topic history is kept (0: no limit). */
  ttl: number
  timeout: number
  /** ms a pending id is waited for. */
  expire: number
  /** ms the sequencer's clock is ahead of this process's, as last measured. */
  skew: () => number
  /** Asks the cluster for its slot map, and resolves once it answered. */
  refreshSlots: () => Promise<void>
  closed: () => boolean
}

/** A topic write: the master it went to, its count of replicas online, and the reply of the WAIT sent with it. */
interface Written {
  node: Redis
  replicas: number | Promise<number>
  waited: Promise<unknown> | undefined
}

/**
 * How a publish reaches a Redis Cluster: its id from the sequencer, then, for a message to one topic, its write on the
 * topic's own shard; without history, the publish alone.
 */
export class ClusterWrites {
  #settings: WriteSettings

  constructor (settings: WriteSettings) {
    this.#settings = settings
  }

  async publishLive (client: Cluster, message: PublishedMessage): Promise<void> {
    const payload = '\n' + encode(message, true)
    const channels = this.channelsOf(message)
    if (channels.length === 1) await client.spublish(channels[0], payload)
    else await client.eval(PUBLISH_MANY, 1, this.#settings.keys.seq, payload, ...channels)
  }

  /**
   * The channels a message travels on: its topic's own (on the topic's slot) for one topic; on the sequencer's slot,
   * one per topic for several, its identifier's, or the channel of everyone and prefixes.
   */
  channelsOf (message: PublishedMessage): string[] {
    const keys = this.#settings.keys
    const to = message.to
    const topics = topicsOf(to)
    if (topics !== undefined) return topics.length === 1 ? [keys.topic(topics[0])] : topics.map(keys.multiTopic)
    return typeof to === 'string' ? [keys.identifier(to)] : [keys.messages]
  }

  /**
   * The id from the sequencer. A message to no topic, or to several, is written and published there at once, in
   * one step (whole or not at all); a message to one topic is then written and published on the topic's slot. Each
   * write waits for one replica (when the shard's master has one online): a publish that resolved survives its
   * master being killed.
   */
  async append (client: Cluster, message: PublishedMessage, key: string | undefined): Promise<void> {
    const { keys, replicas: online, timeout, expire } = this.#settings
    const topics = topicsOf(message.to) ?? []
    const body = encode(message, false)
    const plain = topics.length !== 1
    const channels = plain ? this.channelsOf(message) : []
    // Counted without awaiting anything: the sequencer must get the publishes in the order they were made.
    const node = plain ? this.#master(client, keys.seq) : undefined
    const replicas = node === undefined ? 0 : online.count(node)
    // The sequencer refuses to run it past the publish's deadline: it would then take an id after later publishes.
    const sequencer = client.pipeline().eval(SEQUENCE, 5, keys.seq, keys.pending, keys.epoch, key === undefined ? keys.seq : keys.key(key),
      topics.length > 1 ? keys.multi : keys.plain,
      plain ? 'p' : 't', body, this.#settings.maxLen, this.#settings.keyTtl, key === undefined ? '0' : '1', Date.now() + this.#settings.skew() + timeout, expire,
      ...channels)
    if (online.waitsWith(replicas)) sequencer.call('WAIT', 1, online.waitMs)
    const results = await sequencer.exec()
    const [id, seen] = reply(results) as [string, number]
    // Resolving now could report stored a message whose write then fails: the caller tries again once it settled.
    if (seen === 2) throw new Error('the first publish with this key is still being written to its topic\'s shard; try again once it settles')
    if (node !== undefined) return online.acknowledged(node, replicas, results?.[1]?.[1])
    if (seen === 1) return
    const stream = keys.topic(topics[0])
    let written: Written
    try {
      written = await this.#appendTopic(client, stream, id, body)
    } catch (err) {
      this.#settle(async () => client.eval(ABORT, 2, keys.pending, key === undefined ? keys.pending : keys.key(key), padded(id), id))
      throw err
    }
    // Written: instances may deliver the ids after it (not awaited; until it lands, or the id expires, they only
    // wait a little longer), while the replica catches up.
    this.#settle(async () => client.zrem(keys.pending, padded(id)))
    await online.acknowledged(written.node, written.replicas, written.waited)
  }

  /**
   * Takes a topic message's id out of the pending set (written, or given back with its key), not awaited. Tried again
   * for a while: the connection it goes over may be replaced just then (as the slot map settles after a failover), and
   * a pending id left behind holds back every instance's deliveries, and a retry with its key, until it expires.
   */
  #settle (command: () => Promise<unknown>, attempt = 0): void {
    command().catch(() => {
      if (attempt < SETTLE_ATTEMPTS && !this.#settings.closed()) setTimeout(() => this.#settle(command, attempt + 1), 100 * (attempt + 1)).unref()
    })
  }

  /**
   * Writes and publishes on the connection to the master of the topic's slot, WAIT right after it on the same
   * connection; resolves once the write is done, with the WAIT's reply to come. A MOVED reply (the slot moved; the write did not
   * run) is followed once, the slot map refreshed. An ASK reply is not: the slot is being moved, and a message
   * published on its new master before the instances subscribe there would reach them after later ones.
   */
  async #appendTopic (client: Cluster, stream: string, id: string, body: string): Promise<Written> {
    const online = this.#settings.replicas
    for (let attempt = 0; ; attempt++) {
      const node = this.#master(client, stream)
      const replicas = online.count(node)
      const appended = node.eval(APPEND, 1, stream, id, body, this.#settings.maxLen, this.#settings.ttl)
      const waited = online.waitsWith(replicas) ? node.call('WAIT', 1, online.waitMs) : undefined
      try {
        await appended
        return { node, replicas, waited }
      } catch (err) {
        waited?.catch(() => {})
        if (attempt > 0 || !/^MOVED /.test((err as Error).message)) throw err
        await this.#settings.refreshSlots()
      }
    }
  }

  /** The connection to the master serving the key's slot. */
  #master (client: Cluster, key: string): Redis {
    const serving = client.slots[slotOf(key)]?.[0]
    const node = serving === undefined ? undefined : client.nodes('master').find(node => `${node.options.host}:${node.options.port}` === serving)
    if (node === undefined) {
      // The client drops a node whose connection ended and adds it back at its next refresh of the slot map: ask now.
      client.refreshSlotsCache()
      throw new Error(`no master known for the slot of ${key}`)
    }
    return node
  }
}

/** The reply at `index` of a pipeline whose commands all succeeded. */
export function reply (results: [Error | null, unknown][] | null, index = 0): unknown {
  if (results === null) throw new Error('the pipeline was aborted')
  for (const [err] of results) if (err !== null) throw err
  return results[index][1]
}
