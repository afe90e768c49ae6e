import { Redis, type Cluster } from 'ioredis'
import { slotOf, type ClusterKeys, type RedisClusterHistory } from '../history/redis-cluster-streams'
import { isAfter } from '../position'
import { topicsOf } from '../target'
import type { AdapterHost, PublishedMessage } from './adapter'
import type { InOrder } from './cluster-order'
import { bounded, sleep, type Claims } from './coordination'

/** Deliveries wait at least this long (ms) for a lost shard's channels to be subscribed again (a failover takes 1 to 3 s). */
const FAILOVER_WAIT = 5000
/** A topic or identifier nobody here follows any more keeps its subscriptions this long (ms), in case a follower comes back. */
const LINGER = 2000

/** A channel this instance listens to, and the stream that holds what it carries. */
export interface Channel {
  name: string
  /** Its slot, which the master it is subscribed on must serve. */
  slot: number
  /** The stream behind it (undefined: claims and control, which keep no history). */
  stream: string | undefined
  /** Its stream is a topic's, which Redis drops when idle for ttl. */
  topicStream: boolean
  /** What of its stream the channel carries (undefined: all of it). */
  keep: ((message: PublishedMessage) => boolean) | undefined
  /** The last stream position seen from it: a catch-up reads after it. */
  cursor: string | undefined
  shard: Shard | undefined
}

/** A topic or identifier followed here (`t:<topic>`, `i:<identifier>`), and the channels it listens to. */
interface Route {
  channels: Channel[]
  /** Nobody here follows it: unsubscribed once the linger ends. */
  idleSince: number | undefined
}

/** One subscriber connection to one master, for the sharded channels of the slots it serves. */
interface Shard {
  key: string
  connection: Redis
  channels: Set<Channel>
  retired: boolean
  /** Did not answer the last barrier in time: left out of the barriers until it answers. */
  silent: boolean
}

export interface SubscriptionsSetup {
  host: AdapterHost
  client: Cluster
  keys: ClusterKeys
  /** With history: where missed messages are read from, and where what is received goes, in id order. */
  history: RedisClusterHistory | undefined
  order: InOrder | undefined
  /** Announced again after a lost subscription (claims made elsewhere meanwhile were missed). */
  claims: Claims | undefined
  timeout: number
  connectTimeout: number
  /** A message on one of the channels. */
  onMessage: (name: string, payload: string) => void
}

/**
 * An instance's sharded subscriptions on a Redis Cluster: one connection per master, placed by the cluster client's
 * slot map; the channels of what its sources follow, subscribed in batches and dropped after a linger; and after a
 * new subscription, a lost master or a moved slot, what the channels missed read from their streams.
 */
export class ClusterSubscriptions {
  #host: AdapterHost
  #client: Cluster
  #keys: ClusterKeys
  #history: RedisClusterHistory | undefined
  #order: InOrder | undefined
  #claims: Claims | undefined
  #timeout: number
  #connectTimeout: number
  #onMessage: (name: string, payload: string) => void
  #closed = false
  #channels = new Map<string, Channel>()
  #routes = new Map<string, Route>()
  #shards = new Map<string, Shard>()
  /** Channels to subscribe at the next microtask, gathered. */
  #toSubscribe = new Set<Channel>()
  #lingerTimer: NodeJS.Timeout | undefined
  #onRefresh = (): void => this.#checkPlacement()

  constructor (setup: SubscriptionsSetup) {
    this.#host = setup.host
    this.#client = setup.client
    this.#keys = setup.keys
    this.#history = setup.history
    this.#order = setup.order
    this.#claims = setup.claims
    this.#timeout = setup.timeout
    this.#connectTimeout = setup.connectTimeout
    this.#onMessage = setup.onMessage
  }

  /**
   * Subscribes the channels every instance listens to, and opens a connection to every master: a topic's first
   * follower then waits for one SSUBSCRIBE, not a connect.
   */
  async start (shared: [name: string, stream: string | undefined, keep: Channel['keep']][]): Promise<void> {
    for (const [name, stream, keep] of shared) {
      this.#channels.set(name, { name, slot: slotOf(name), stream: this.#history === undefined ? undefined : stream, topicStream: false, keep, cursor: undefined, shard: undefined })
    }
    this.#client.on('refresh', this.#onRefresh)
    await this.#subscribe([...this.#channels.values()])
    const masters = this.#client.nodes('master')
    for (const node of masters) this.#shard(`${node.options.host ?? '127.0.0.1'}:${node.options.port ?? 6379}`)
    await this.#bounded(Promise.all(masters.map(node => node.ping())))
  }

  /** The channel of this name, while this instance listens to it. */
  get (name: string): Channel | undefined {
    return this.#channels.get(name)
  }

  close (): void {
    this.#closed = true
    this.#client.off('refresh', this.#onRefresh)
    clearInterval(this.#lingerTimer)
    for (const shard of this.#shards.values()) this.#retire(shard)
    this.#shards.clear()
  }

  /**
   * A topic or identifier followed here gets its channels; one nobody follows any more is dropped after the linger.
   * A new one is subscribed at the next microtask, with the others of the same turn.
   */
  route (key: string, followed: boolean): void {
    if (this.#closed) return
    const route = this.#routes.get(key)
    if (route !== undefined) {
      route.idleSince = followed ? undefined : Date.now()
      if (!followed) this.#lingerTimer ??= setInterval(() => this.#unsubscribeIdle(), LINGER).unref()
      return
    }
    if (!followed) return
    const channels = this.#channelsFor(key)
    this.#routes.set(key, { channels, idleSince: undefined })
    if (this.#toSubscribe.size === 0) queueMicrotask(() => this.#subscribeNew())
    for (const channel of channels) {
      this.#channels.set(channel.name, channel)
      this.#toSubscribe.add(channel)
    }
  }

  /**
   * A topic listens to its own channel (its stream on its slot) and to its channel of messages to several topics; an
   * identifier to its channel (the plain stream, where its messages are among the others).
   */
  #channelsFor (key: string): Channel[] {
    const keys = this.#keys
    const history = this.#history !== undefined
    const name = key.slice(2)
    const channel = (channel: string, stream: string, topicStream: boolean, keep: Channel['keep']): Channel =>
      ({ name: channel, slot: slotOf(channel), stream: history ? stream : undefined, topicStream, keep, cursor: undefined, shard: undefined })
    if (key.startsWith('i:')) return [channel(keys.identifier(name), keys.plain, false, message => message.to === name)]
    return [
      channel(keys.topic(name), keys.topic(name), true, undefined),
      channel(keys.multiTopic(name), keys.multi, false, message => topicsOf(message.to)?.includes(name) === true)
    ]
  }

  /**
   * New channels: deliveries wait while they are subscribed and their streams read after the last id delivered
   * here, so that nothing published between a source's open and the subscription is lost.
   */
  #subscribeNew (): void {
    const channels = [...this.#toSubscribe]
    this.#toSubscribe.clear()
    this.#catchUp(channels, this.#order?.released ?? '0-0', false)
  }

  #unsubscribeIdle (): void {
    const now = Date.now()
    let idle = 0
    for (const [key, route] of this.#routes) {
      if (route.idleSince === undefined) continue
      if (now - route.idleSince < LINGER) {
        idle++
        continue
      }
      this.#routes.delete(key)
      for (const channel of route.channels) {
        this.#channels.delete(channel.name)
        this.#toSubscribe.delete(channel)
        const shard = channel.shard
        if (shard === undefined) continue
        shard.channels.delete(channel)
        if (shard.channels.size === 0) {
          this.#shards.delete(shard.key)
          this.#retire(shard)
        } else {
          shard.connection.sunsubscribe(channel.name).catch(() => {})
        }
      }
    }
    if (idle === 0) {
      clearInterval(this.#lingerTimer)
      this.#lingerTimer = undefined
    }
  }

  /**
   * Subscribes the channels (and, with history, reads their streams after their cursor, or after `from` for a
   * channel never read), holding deliveries meanwhile. Tried again, with the slot map refreshed, until it holds;
   * deliveries resume after publishTimeout (at least FAILOVER_WAIT) at the latest: what arrives later than its
   * turn is then a gap.
   */
  #catchUp (channels: Channel[], from: string, lost: boolean): void {
    const release = this.#order?.pause()
    const resume = (): void => {
      clearTimeout(timer)
      release?.()
    }
    /** Deliveries went on without these channels: what their reads find behind them was missed here. */
    let overdue = false
    const timer = setTimeout(() => {
      overdue = true
      this.#host.log.warn({ channels: channels.length }, 'fastify-event-sources: a Redis Cluster shard is still unreachable; delivering the other shards\' messages')
      resume()
    }, Math.max(this.#timeout, FAILOVER_WAIT))
    // Where each channel's read starts is taken now: once subscribed, a live message moves its cursor past what the
    // channel missed meanwhile.
    const cursors = new Map(channels.map(channel => [channel, channel.cursor]))
    const run = async (): Promise<void> => {
      for (let attempt = 0; !this.#closed; attempt++) {
        const wanted = channels.filter(channel => this.#channels.get(channel.name) === channel)
        try {
          if (attempt > 0 || lost) await this.refreshSlots()
          await this.#subscribe(wanted.filter(channel => channel.shard === undefined))
          const history = this.#history
          const order = this.#order
          if (history !== undefined && order !== undefined) {
            await Promise.all(wanted.map(async channel => {
              if (channel.stream === undefined) return
              // Live messages may come in meanwhile: the read is deduplicated by id, not by position.
              const cursor = cursors.get(channel)
              const known = cursor !== undefined || lost
              const start = cursor ?? from
              const read = await this.#bounded(history.readStream(channel.stream, start, channel.topicStream))
              if (read.gap && known) order.gap(start)
              for (const entry of read.entries) {
                if (channel.cursor === undefined || isAfter(entry.pos, channel.cursor)) channel.cursor = entry.pos
                if (channel.keep !== undefined && !channel.keep(entry.message)) continue
                order.absorb(entry, known || overdue)
              }
              // Read up to here: a message on this channel that comes after its turn from now on was missed.
              channel.cursor ??= start
            }))
          } else if (lost) {
            this.#host.gap(undefined, undefined)
          }
          if (lost) this.#claims?.announceAll()
          return
        } catch (err) {
          this.#host.log.debug({ err, attempt }, 'fastify-event-sources: could not subscribe to a Redis Cluster shard yet; retrying')
          await sleep(Math.min(100 * (attempt + 1), 1000))
        }
      }
    }
    run().finally(resume)
  }

  async refreshSlots (): Promise<void> {
    const client = this.#client
    await this.#bounded(new Promise<void>(resolve => client.refreshSlotsCache(() => resolve())))
  }

  /** SSUBSCRIBEs each channel on the master serving its slot (one command per slot, as Redis requires), each within publishTimeout. */
  async #subscribe (channels: Channel[]): Promise<void> {
    const client = this.#client
    const bySlot = new Map<number, Channel[]>()
    for (const channel of channels) {
      let list = bySlot.get(channel.slot)
      if (list === undefined) bySlot.set(channel.slot, (list = []))
      list.push(channel)
    }
    await Promise.all([...bySlot].map(async ([slot, list]) => {
      const key = client.slots[slot]?.[0]
      if (key === undefined) throw new Error(`no master known for slot ${slot}`)
      const shard = this.#shard(key)
      const names = list.map(channel => channel.name)
      for (const channel of list) channel.shard = shard
      try {
        // Bounded here, so that a node that does not answer (frozen, cut off) leaves these channels to be placed again
        // by the next attempt, not waiting on its connection for ever.
        await this.#bounded(shard.connection.ssubscribe(...names))
        // Lost before the reply was read: the caller tries again.
        if (shard.retired) throw new Error(`the connection to ${key} ended`)
      } catch (err) {
        for (const channel of list) if (channel.shard === shard) channel.shard = undefined
        // Should the node answer after all, it drops them again (in order, before any later subscribe there).
        if (!shard.retired) shard.connection.sunsubscribe(...names).catch(() => {})
        throw err
      }
      // A shard's channels are those subscribed: a connection that fails while subscribing is this call's to retry,
      // not a lost subscription (each failed attempt would start one more catch-up).
      for (const channel of list) {
        const current = this.#channels.get(channel.name)
        if (current === channel) shard.channels.add(channel)
        else if (current === undefined) shard.connection.sunsubscribe(channel.name).catch(() => {})
      }
    }))
  }

  #shard (key: string): Shard {
    const existing = this.#shards.get(key)
    if (existing !== undefined) return existing
    const colon = key.lastIndexOf(':')
    const client = this.#client
    const connection = new Redis({
      ...client.options.redisOptions,
      host: key.slice(0, colon),
      port: Number(key.slice(colon + 1)),
      lazyConnect: false,
      enableOfflineQueue: true,
      autoResubscribe: false,
      maxRetriesPerRequest: 0,
      connectTimeout: this.#connectTimeout,
      // A lost master is not waited for: its channels go to whichever node serves their slots now.
      retryStrategy: () => null
    })
    const shard: Shard = { key, connection, channels: new Set(), retired: false, silent: false }
    this.#shards.set(key, shard)
    connection.on('error', (err: Error) => this.#host.log.debug({ err, node: key }, 'fastify-event-sources: Redis Cluster subscriber error'))
    connection.on('smessage', (name: string, payload: string) => this.#onMessage(name, payload))
    connection.on('end', () => this.#lost(shard))
    // The server dropped channels whose slot moved to another master (a resharding): every channel of this connection
    // is placed again by the slot map, and what they missed is read from the streams.
    connection.on('moved', () => {
      if (shard.retired || this.#closed) return
      this.#host.log.info({ node: key }, 'fastify-event-sources: a Redis Cluster slot moved; subscribing again where it is served')
      this.#lost(shard)
      connection.disconnect()
    })
    // A subscribe still in flight when the adapter closed would otherwise leave this connection open.
    if (this.#closed) this.#retire(shard)
    return shard
  }

  /**
   * After each refresh of the slot map: a connection to a node that no longer serves one of its channels' slots is
   * dropped and its channels placed again. A master that died closes its connections, but one that stopped answering
   * (a partition, a frozen host) does not, and its subscriptions would stay silent while its replica serves the slot.
   */
  #checkPlacement (): void {
    if (this.#closed) return
    const slots = this.#client.slots
    for (const shard of [...this.#shards.values()]) {
      if (shard.retired) continue
      for (const channel of shard.channels) {
        const serving = slots[channel.slot]?.[0]
        if (serving === undefined || serving === shard.key) continue
        this.#host.log.info({ node: shard.key, now: serving }, 'fastify-event-sources: a Redis Cluster slot is served by another node; subscribing again there')
        this.#lost(shard)
        shard.connection.disconnect()
        break
      }
    }
  }

  #retire (shard: Shard): void {
    shard.retired = true
    shard.connection.disconnect()
  }

  #lost (shard: Shard): void {
    if (shard.retired || this.#closed) return
    shard.retired = true
    if (this.#shards.get(shard.key) === shard) this.#shards.delete(shard.key)
    const channels = [...shard.channels]
    for (const channel of channels) channel.shard = undefined
    if (channels.length === 0) return
    this.#host.log.warn({ node: shard.key, channels: channels.length }, 'fastify-event-sources: lost a Redis Cluster shard subscription; subscribing again')
    this.#catchUp(channels, this.#order?.released ?? '0-0', true)
  }

  /**
   * Resolves once every shard connection with a subscription has sent all it had before this call. A shard whose PING
   * goes unanswered for publishTimeout (at least FAILOVER_WAIT) is left out until it answers: a master that stopped
   * answering with no replica to take over keeps its slots, and would hold up every shard's messages. What it sends
   * once it answers is then late here, and reported as a gap. (A PING that outlives the caller's own bound still
   * counts: the caller asks again.)
   */
  async barrier (): Promise<unknown> {
    const answers: Promise<void>[] = []
    for (const shard of this.#shards.values()) if (!shard.retired && !shard.silent && shard.channels.size > 0) answers.push(this.#answer(shard))
    return Promise.all(answers)
  }

  async #answer (shard: Shard): Promise<void> {
    const ping = shard.connection.ping()
    let timer: NodeJS.Timeout | undefined
    const silence = new Promise<false>(resolve => { timer = setTimeout(resolve, Math.max(this.#timeout, FAILOVER_WAIT), false).unref() })
    const answered = await Promise.race([ping.then(() => true), silence]).finally(() => clearTimeout(timer))
    if (answered || shard.retired || shard.silent || this.#closed) return
    shard.silent = true
    this.#host.log.warn({ node: shard.key }, 'fastify-event-sources: a Redis Cluster shard does not answer; delivering the other shards\' messages without it')
    ping.then(() => {
      if (!shard.silent) return
      shard.silent = false
      if (!shard.retired && !this.#closed) this.#host.log.info({ node: shard.key }, 'fastify-event-sources: a Redis Cluster shard answers again')
    }, () => {})
  }

  async #bounded<T> (operation: Promise<T>): Promise<T> {
    return bounded(operation, this.#timeout)
  }
}
