import { randomUUID } from 'node:crypto'
import { Cluster, Redis, type RedisOptions } from 'ioredis'
import { FST_ERR_SSE_ADAPTER, FST_ERR_SSE_PUBLISH_FAILED } from '../errors'
import { APPEND_AND_PUBLISH, RedisStreamsHistory, appendArguments, encode, streamKeys, type StreamKeys } from '../history/redis-streams'
import type { AdapterHost, AdapterPublishOptions, ControlMessage, CountTarget, EventSourceAdapter, PresenceListener, PublishedMessage, ReplayResult } from './adapter'
import { PRESENCE_DEFAULTS, RedisPresence, type PresenceSettings } from './redis-presence'
import { RedisDelivery } from './redis-delivery'
import { Routes, type RouteNames } from './routes'
import type { RunSink } from '../runs'
import { RedisRunStore } from './redis-runs'
import { RedisClusterAdapter } from './redis-cluster'
import type { RedisAdapterOptions, RedisClusterAdapterOptions } from '../../types/redis'
import { Claims, applyControl, bounded, fail, positive, publishStampedControl, ready, sleep } from './coordination'

// Fail fast instead of queueing while Redis is away: a queued publish would hang, then arrive late and out of order.
const OWN_CONNECTION: RedisOptions = {
  enableOfflineQueue: false,
  maxRetriesPerRequest: 0,
  autoResendUnfulfilledCommands: false,
  lazyConnect: false,
  // ioredis backs off to 5 s; live delivery should be back within about 2 s of Redis returning.
  retryStrategy: (times: number) => Math.min(times * 100, 2000) + Math.floor(Math.random() * 100)
}

function unbounded (name: string, value: unknown, fallback: number): number {
  return value === Infinity ? 0 : positive(name, value, fallback)
}

function addressOf (connection: Redis): string {
  const { host, port, path } = connection.options
  return path ?? `${host ?? '127.0.0.1'}:${port ?? 6379}`
}

/**
 * Publishes through Redis so that every instance sharing the prefix delivers the message: appended to a Redis
 * Stream (the shared history) and published on a channel in one script. Each instance, the publishing one
 * included, delivers only what comes back on its subscription, so all of them deliver in Redis's order.
 */
class RedisAdapter implements EventSourceAdapter {
  readonly hasHistory: boolean
  readonly channelPrefix: string
  readonly streamKey: string
  readonly messageChannel: string
  readonly claimChannel: string
  readonly controlChannel: string
  readonly routing: 'selective' | 'all'
  #names: RouteNames
  #keys: StreamKeys
  #maxTopics: number
  #topicTtl: number
  #userClient: Redis | undefined
  #url: string | undefined
  #maxLen: number
  #keyTtl: number
  #timeout: number
  #connectTimeout: number
  #runLease: number
  #runs: RedisRunStore | undefined
  #client: Redis | undefined
  #subscriber: Redis | undefined
  #owned: Redis[] = []
  #history: RedisStreamsHistory | undefined
  #host: AdapterHost | undefined
  #presenceSettings: PresenceSettings | undefined
  #presence: RedisPresence | undefined
  #instance = randomUUID()
  #closed = false
  #down = false
  #subscribed = false
  #inFlight = new Set<Promise<unknown>>()
  /** A claim could not be announced: announce every source once the connection is back. */
  #claims: Claims | undefined
  /** The channels this instance listens to, with selective routing. */
  #routes: Routes | undefined
  #delivery: RedisDelivery | undefined

  constructor (options: RedisAdapterOptions = {}) {
    if (typeof options !== 'object' || options === null) fail('redisAdapter', 'options must be an object')
    const { client, url, history } = options
    if (client !== undefined && (typeof client !== 'object' || client === null || typeof client.duplicate !== 'function')) {
      fail('client', 'must be an ioredis client')
    }
    if (url !== undefined && typeof url !== 'string') fail('url', 'must be a redis:// URL')
    const prefix = options.channelPrefix ?? 'fastify-event-sources:'
    if (typeof prefix !== 'string') fail('channelPrefix', 'must be a string')
    if (history !== undefined && history !== false && (typeof history !== 'object' || history === null)) fail('history', 'must be { maxLen, keyTtl, topics, ttl } or false')
    this.#userClient = client
    this.#url = url
    this.#maxLen = history === false ? 0 : positive('history.maxLen', history?.maxLen, 1000)
    this.#keyTtl = history === false ? 0 : positive('history.keyTtl', history?.keyTtl, 3_600_000)
    // 0 stands for no bound in the script.
    this.#maxTopics = history === false ? 0 : unbounded('history.topics', history?.topics, 1000)
    this.#topicTtl = history === false ? 0 : unbounded('history.ttl', history?.ttl, 3_600_000)
    this.#timeout = positive('publishTimeout', options.publishTimeout, 2000)
    this.#connectTimeout = positive('connectTimeout', options.connectTimeout, 5000)
    const runs = options.runs
    if (runs !== undefined && (typeof runs !== 'object' || runs === null)) fail('runs', 'must be { lease }')
    this.#runLease = positive('runs.lease', runs?.lease, 10_000)
    const presence = options.presence
    if (presence !== undefined && presence !== false && (typeof presence !== 'object' || presence === null)) fail('presence', 'must be { heartbeat, flush } or false')
    const routing = options.routing === undefined ? 'selective' : options.routing
    if (routing !== 'selective' && routing !== 'all') fail('routing', `must be 'selective' or 'all', got ${String(routing)}`)
    this.routing = routing
    this.#presenceSettings = presence === false
      ? undefined
      : {
          heartbeat: positive('presence.heartbeat', presence?.heartbeat, PRESENCE_DEFAULTS.heartbeat),
          flush: positive('presence.flush', presence?.flush, PRESENCE_DEFAULTS.flush)
        }
    this.hasHistory = history !== false
    this.channelPrefix = prefix
    this.streamKey = prefix + 'stream'
    this.messageChannel = prefix + 'messages'
    this.claimChannel = prefix + 'claims'
    this.controlChannel = prefix + 'control'
    this.#names = {
      everyone: this.messageChannel,
      identifier: identifier => prefix + 'i:' + identifier,
      topic: topic => prefix + 't:' + topic
    }
    this.#keys = streamKeys(prefix)
  }

  async attach (host: AdapterHost): Promise<void> {
    if (this.#host !== undefined) throw new FST_ERR_SSE_ADAPTER('a redisAdapter serves one Fastify instance; create one per instance')
    this.#host = host
    const user = this.#userClient
    // A client that was closed never comes back: waiting for it would only run into Fastify's plugin timeout.
    if (user !== undefined && user.status === 'end') {
      throw new FST_ERR_SSE_ADAPTER(`cannot reach Redis at ${addressOf(user)}: the client passed was closed (status "end")`)
    }
    const client = user ?? this.#own(new Redis(this.#url ?? 'redis://127.0.0.1:6379', OWN_CONNECTION))
    // Subscribing again is done here, not by ioredis, so that catching up starts once the subscription holds.
    const subscriber = this.#own((user ?? client).duplicate({ enableOfflineQueue: false, lazyConnect: false, autoResubscribe: false }))
    this.#client = client
    this.#claims = new Claims(host, this.#instance, () => client.status === 'ready', payload => client.publish(this.claimChannel, payload))
    this.#subscriber = subscriber
    if (this.hasHistory) this.#history = new RedisStreamsHistory(client, this.#keys, this.#maxLen)
    const routes = this.routing === 'selective'
      ? new Routes(host.presence, this.#names, channel => this.#delivery?.opened(channel), () => this.#delivery?.sync())
      : undefined
    this.#routes = routes
    const delivery = new RedisDelivery({
      host,
      client,
      subscriber,
      history: this.#history,
      routes,
      claims: this.#claims,
      channels: () => this.#channels(),
      patterns: () => this.#patterns(),
      firstCopy: (message, channel) => this.#firstCopy(message, channel),
      timeout: this.#timeout
    })
    this.#delivery = delivery
    subscriber.on('message', (channel: string, payload: string) => {
      if (channel === this.claimChannel) {
        if (!this.#closed) this.#claims?.receive(payload)
      } else if (channel === this.controlChannel) {
        this.#onControl(payload)
      } else if (channel === this.messageChannel || routes?.has(channel) === true) {
        delivery.receive(payload, channel)
      }
    })
    // Routing 'all' also hears what selective instances publish on their routes' channels.
    subscriber.on('pmessage', (_pattern: string, channel: string, payload: string) => delivery.receive(payload, channel))
    subscriber.on('ready', () => {
      if (this.#subscribed) delivery.reconnected()
    })
    client.on('ready', () => {
      if (this.#subscribed && this.#claims?.pending === true) this.#claims.announceAll()
    })
    let lastError: Error | undefined
    const record = (err: Error): void => { lastError = err }
    client.on('error', record)
    subscriber.on('error', record)
    try {
      if (user?.status === 'wait') user.connect().catch(() => {})
      await Promise.all([client, subscriber].map(c => this.#ready(c)))
      await subscriber.subscribe(...this.#channels())
      if (routes === undefined) await subscriber.psubscribe(...this.#patterns())
      if (this.#history !== undefined) delivery.seen(await this.#history.latestId())
      if (routes !== undefined && this.#history !== undefined) await delivery.clock()
    } catch (err) {
      await this.close()
      const why = lastError === undefined ? (err as Error).message : `${(err as Error).message} (${lastError.message})`
      throw new FST_ERR_SSE_ADAPTER(`cannot reach Redis at ${addressOf(client)}: ${why}`, { cause: err })
    } finally {
      client.off('error', record)
      subscriber.off('error', record)
    }
    this.#subscribed = true
    delivery.start()
    let presence: RedisPresence | undefined
    if (this.#presenceSettings !== undefined) {
      presence = new RedisPresence(client, host, this.channelPrefix, this.#instance, this.#presenceSettings, op => this.#bounded(op))
      this.#presence = presence
    }
    this.#watch(host, routes, presence)
    if (presence !== undefined) {
      // Not fatal: the heartbeat writes everything once Redis answers.
      await presence.start().catch((err: Error) => host.log.warn({ err }, 'fastify-event-sources: could not write presence yet; retrying'))
    }
  }

  /** Routes and presence both follow this instance's sources: one listener tells both. */
  #watch (host: AdapterHost, routes: Routes | undefined, presence: RedisPresence | undefined): void {
    const listeners: PresenceListener[] = []
    if (routes !== undefined) listeners.push(routes)
    if (presence !== undefined) listeners.push(presence)
    if (listeners.length === 0) return
    host.presence.watch(listeners.length === 1
      ? listeners[0]
      : {
          streams: () => { for (const listener of listeners) listener.streams() },
          identifier: identifier => { for (const listener of listeners) listener.identifier(identifier) },
          topic: (topic, identifier) => { for (const listener of listeners) listener.topic(topic, identifier) }
        })
  }

  /** The channels of one subscription: the shared ones, and every route wanted here. */
  #channels (): string[] {
    const shared = [this.messageChannel, this.claimChannel, this.controlChannel]
    return this.#routes === undefined ? shared : [...shared, ...this.#routes.all()]
  }

  /**
   * With routing 'all': the route channels of selective instances sharing the prefix, by pattern (the prefix's glob
   * characters escaped), so that instances with either routing can share a prefix, during a rollout for example.
   */
  #patterns (): string[] {
    const prefix = this.channelPrefix.replace(/[*?[\]\\]/g, '\\$&')
    return [prefix + 'i:*', prefix + 't:*']
  }

  /** Identifiers following `topic` on every live instance sharing the prefix, each once. */
  async presence (topic: string): Promise<string[]> {
    if (this.#presence !== undefined) return this.#presence.presence(topic)
    return this.#host?.presence.presence(topic) ?? []
  }

  /** Open streams on every live instance sharing the prefix (matching `to`). */
  async count (to: CountTarget | undefined): Promise<number> {
    if (this.#presence !== undefined) return this.#presence.count(to)
    return this.#host?.presence.count(to) ?? 0
  }

  async publish (message: PublishedMessage, options?: AdapterPublishOptions): Promise<void> {
    const client = this.#client
    if (client === undefined || this.#closed) throw new FST_ERR_SSE_PUBLISH_FAILED(this.#closed ? 'the Redis adapter is closed' : 'the Redis adapter is not attached')
    // A user's client may queue while disconnected; a queued publish would be sent after it was reported failed.
    if (client.status !== 'ready') throw new FST_ERR_SSE_PUBLISH_FAILED(`Redis is not connected (${client.status})`)
    const channels = this.#routes?.channels(message.to) ?? [this.messageChannel]
    const sent = this.hasHistory
      ? this.#append(client, channels, message, options?.key)
      : this.#publishLive(client, channels, '\n' + encode(message, true))
    this.#inFlight.add(sent)
    try {
      await this.#bounded(sent)
    } catch (err) {
      throw new FST_ERR_SSE_PUBLISH_FAILED((err as Error).message, { cause: err })
    } finally {
      this.#inFlight.delete(sent)
    }
  }

  async replay (lastEventId: string, identifier: string | undefined, topics?: readonly string[]): Promise<ReplayResult> {
    const history = this.#history
    // Live only: nothing can be replayed, so whatever the client missed is a gap it must hear about.
    if (history === undefined) return { messages: [], gap: true }
    if (this.#client?.status !== 'ready') throw new FST_ERR_SSE_ADAPTER('Redis is not connected; cannot read the history')
    return this.#bounded(history.readAfter(lastEventId, identifier, topics))
  }

  /**
   * Applies a subscribe or unsubscribe here at once, then carries it to the other instances on the control
   * channel. Redis delivers a subscriber's channels in the order it ran the commands, so a message published
   * after this resolves reaches every instance after the change.
   */
  async control (message: ControlMessage): Promise<void> {
    this.#host?.control(message)
    const client = this.#client
    if (client === undefined || this.#closed) throw new FST_ERR_SSE_PUBLISH_FAILED(this.#closed ? 'the Redis adapter is closed' : 'the Redis adapter is not attached')
    if (client.status !== 'ready') throw new FST_ERR_SSE_PUBLISH_FAILED(`Redis is not connected (${client.status}); the change applied to this instance only`)
    try {
      await this.#bounded(publishStampedControl(client, this.controlChannel, this.#instance, message))
    } catch (err) {
      throw new FST_ERR_SSE_PUBLISH_FAILED(`${(err as Error).message}; the change applied to this instance only`, { cause: err })
    }
  }

  claim (identifier: string, openedAt: number): void {
    if (this.#client === undefined || this.#closed) return
    this.#claims?.announce([[identifier, openedAt]])
  }

  /** Runs through Redis: followed and cancelled from any instance, one producer per key in the whole cluster. */
  runStore (sink: RunSink): RedisRunStore {
    return (this.#runs ??= new RedisRunStore(this.channelPrefix, { lease: this.#runLease, timeout: this.#timeout }, sink, () => this.#openRuns(), message => this.#host?.deliver(message)))
  }

  async #openRuns (): Promise<[Redis, Redis]> {
    const client = this.#client
    if (client === undefined || this.#closed) throw new FST_ERR_SSE_ADAPTER(this.#closed ? 'the Redis adapter is closed' : 'the Redis adapter is not attached')
    const subscriber = this.#own((this.#userClient ?? client).duplicate({ enableOfflineQueue: false, lazyConnect: false }))
    await this.#ready(subscriber)
    return [client, subscriber]
  }

  /** Lets publishes already sent finish, then closes the connections this adapter opened; a client passed in stays open. */
  async close (): Promise<void> {
    await this.#runs?.close()
    if (this.#routes !== undefined || this.#presence !== undefined) this.#host?.presence.watch(undefined)
    await this.#presence?.close()
    this.#closed = true
    this.#delivery?.close()
    await Promise.race([Promise.allSettled([...this.#inFlight]), sleep(this.#timeout)])
    const owned = this.#owned
    this.#owned = []
    await Promise.all(owned.map(async connection => {
      if (connection.status === 'ready') {
        try {
          await this.#bounded(connection.quit())
          return
        } catch {}
      }
      connection.disconnect()
    }))
  }

  #own (connection: Redis): Redis {
    this.#owned.push(connection)
    // Without a listener ioredis reports every failed reconnect attempt; one warning per outage is enough.
    connection.on('error', (err: Error) => {
      if (this.#down || this.#closed || !this.#subscribed) return
      this.#down = true
      this.#host?.log.warn({ err }, 'fastify-event-sources: Redis connection lost; reconnecting')
    })
    connection.on('ready', () => {
      if (!this.#down) return
      this.#down = false
      this.#host?.log.info('fastify-event-sources: Redis connection back')
    })
    return connection
  }

  /**
   * Always EVAL, never EVALSHA: after SCRIPT FLUSH, a failover or a restart, an EVALSHA that fails and is sent
   * again as EVAL would be overtaken by later publishes. The script is short, and Redis caches it by its hash.
   */
  async #append (client: Redis, channels: string[], message: PublishedMessage, key: string | undefined): Promise<unknown> {
    return client.eval(APPEND_AND_PUBLISH, ...appendArguments(this.#keys, channels, message, {
      maxLen: this.#maxLen,
      key: key === undefined ? undefined : { name: this.channelPrefix + 'key:' + key, ttl: this.#keyTtl },
      maxTopics: this.#maxTopics,
      ttl: this.#topicTtl
    }))
  }

  async #publishLive (client: Redis, channels: string[], payload: string): Promise<unknown> {
    if (channels.length === 1) return client.publish(channels[0], payload)
    const multi = client.multi()
    for (const channel of channels) multi.publish(channel, payload)
    return multi.exec()
  }

  /** A message to several topics comes once per topic channel heard here: the copy on the first of them counts. */
  #firstCopy (message: PublishedMessage, channel: string): boolean {
    if (this.#routes !== undefined) return this.#routes.first(message, channel)
    const to = message.to
    if (channel === this.messageChannel || typeof to !== 'object' || !('topic' in to) || typeof to.topic === 'string') return true
    return channel === this.#names.topic(to.topic[0])
  }

  /** A subscribe or unsubscribe from another instance; checked as carefully as one made here. */
  #onControl (payload: string): void {
    const host = this.#host
    if (host === undefined || this.#closed) return
    const delivery = this.#delivery
    applyControl(host, this.#instance, payload, this.controlChannel, delivery === undefined ? undefined : (at, apply) => delivery.controlled(at, apply))
  }

  /** A user's client may queue commands while Redis is away: never wait longer than publishTimeout. */
  async #bounded<T> (operation: Promise<T>): Promise<T> {
    return bounded(operation, this.#timeout)
  }

  async #ready (connection: Redis | Cluster): Promise<void> {
    return ready(connection, this.#connectTimeout)
  }
}

/** A Redis Cluster (given by `nodes`, or a `Cluster` client) gets the cluster adapter. */
function redisAdapter (options?: RedisAdapterOptions): RedisAdapter
function redisAdapter (options: RedisClusterAdapterOptions): RedisClusterAdapter
function redisAdapter (options?: RedisAdapterOptions | RedisClusterAdapterOptions): RedisAdapter | RedisClusterAdapter {
  if (options !== undefined && options !== null && ('nodes' in options || options.client instanceof Cluster)) return new RedisClusterAdapter(options as RedisClusterAdapterOptions)
  return new RedisAdapter(options as RedisAdapterOptions)
}

// Node finds an ESM import's named exports by scanning for `exports.name =`; it cannot see through Object.assign.
exports.default = exports.redisAdapter = exports.RedisAdapter = undefined

export = Object.assign(redisAdapter, { default: redisAdapter, redisAdapter, RedisAdapter })
