import { randomUUID } from 'node:crypto'
import { Cluster, Redis, type RedisOptions } from 'ioredis'
import { FST_ERR_SSE_ADAPTER, FST_ERR_SSE_PUBLISH_FAILED } from '../errors'
import { APPEND_AND_PUBLISH, PAGE, RedisStreamsHistory, appendArguments, decode, decodeEntries, encode, streamKeys, type StreamKeys } from '../history/redis-streams'
import { isAfter } from '../position'
import type { AdapterHost, AdapterPublishOptions, ControlMessage, CountTarget, EventSourceAdapter, PresenceListener, PublishedMessage, ReplayResult } from './adapter'
import { PRESENCE_DEFAULTS, RedisPresence, type PresenceSettings } from './redis-presence'
import { Routes, type RouteNames } from './routes'
import type { RunSink } from '../runs'
import { RedisRunStore } from './redis-runs'
import { RedisClusterAdapter } from './redis-cluster'
import type { RedisAdapterOptions, RedisClusterAdapterOptions } from '../../types/redis'
import { CLOCK_MARGIN, Claims, applyControl, bounded, controlPayload, fail, positive, ready, sleep } from './coordination'

// Fail fast instead of queueing while Redis is away: a queued publish would hang, then arrive late and out of order.
const OWN_CONNECTION: RedisOptions = {
  enableOfflineQueue: false,
  maxRetriesPerRequest: 0,
  autoResendUnfulfilledCommands: false,
  lazyConnect: false,
  // ioredis backs off to 5 s; live delivery should be back within about 2 s of Redis returning.
  retryStrategy: (times: number) => Math.min(times * 100, 2000) + Math.floor(Math.random() * 100)
}

/** Live messages held back during a catch-up, at most: past it they are dropped and read from the stream again. */
const HELD_BYTES = 8 * 1024 * 1024
/** What one catch-up page may carry, about: the page size shrinks for large messages. */
const PAGE_BYTES = 4 * 1024 * 1024
/** A catch-up read that fails is tried this many times (backing off up to 2 s) before the gap is reported. */
const READ_ATTEMPTS = 8
/**
 * How long route changes are gathered before one subscribe (and one read of the stream) carries them all. Live
 * delivery on the instance waits meanwhile when a route is new: a busy instance trades these milliseconds for one
 * command per batch instead of one per connection.
 */
const ROUTE_BATCH = 5
/** How old the estimate of Redis's clock may get before it is measured again (when a new route needs it). */
const CLOCK_AGE = 10_000

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
  /** The newest stream id delivered here (history on only): where catching up starts. */
  #lastId: string | undefined
  /** Live messages held back while catching up, oldest first; null when delivering live. */
  #held: PublishedMessage[] | null = null
  #heldBytes = 0
  /** The running catch-up, if any: there is never a second one. */
  #catchingUp: Promise<void> | undefined
  /** The subscription came back since the running catch-up subscribed. */
  #again = false
  /** Held messages were dropped: the running catch-up reads the stream again before going live. */
  #reread = false
  /** A claim could not be announced: announce every source once the connection is back. */
  #claims: Claims | undefined
  /** The channels this instance listens to, with selective routing. */
  #routes: Routes | undefined
  /**
   * Routes subscribed since the last read of the stream, and the Redis time (ms) their first source opened at: what
   * was published to them before their subscription held is read from the stream, from that time on.
   */
  #fresh = new Map<string, number>()
  /** Redis's clock minus this instance's (ms), the round trip included in the margin, and when it was measured. */
  #offset = 0
  #margin = CLOCK_MARGIN
  #clockAt = -Infinity
  #batching = false

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
      ? new Routes(host.presence, this.#names, channel => this.#opened(channel), () => this.#sync())
      : undefined
    this.#routes = routes
    subscriber.on('message', (channel: string, payload: string) => {
      if (channel === this.claimChannel) {
        if (!this.#closed) this.#claims?.receive(payload)
      } else if (channel === this.controlChannel) {
        this.#onControl(payload)
      } else if (channel === this.messageChannel || routes?.has(channel) === true) {
        this.#onMessage(payload, channel)
      }
    })
    // Routing 'all' also hears what selective instances publish on their routes' channels.
    subscriber.on('pmessage', (_pattern: string, channel: string, payload: string) => this.#onMessage(payload, channel))
    subscriber.on('ready', () => {
      if (this.#subscribed) this.#catchUp()
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
      if (this.#history !== undefined) this.#seen(await this.#history.latestId())
      if (routes !== undefined && this.#history !== undefined) await this.#clock()
    } catch (err) {
      await this.close()
      const why = lastError === undefined ? (err as Error).message : `${(err as Error).message} (${lastError.message})`
      throw new FST_ERR_SSE_ADAPTER(`cannot reach Redis at ${addressOf(client)}: ${why}`, { cause: err })
    } finally {
      client.off('error', record)
      subscriber.off('error', record)
    }
    this.#subscribed = true
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
      await this.#bounded(client.publish(this.controlChannel, controlPayload(this.#instance, message)))
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

  #onMessage (payload: string, channel: string): void {
    const host = this.#host
    if (host === undefined || this.#closed) return
    const newline = payload.indexOf('\n')
    let message: PublishedMessage
    try {
      message = decode(payload.slice(newline + 1), newline > 0 ? payload.slice(0, newline) : undefined)
    } catch (err) {
      host.log.warn({ err, channel }, 'fastify-event-sources: ignored a malformed message from Redis')
      return
    }
    // Without history there is no position to tell a second copy by.
    if (this.#history === undefined && !this.#firstCopy(message, channel)) return
    const held = this.#held
    if (held === null) {
      this.#deliver(host, message)
    } else if (this.#heldBytes + message.data.length > HELD_BYTES && held.length > 0) {
      // Everything held is in the stream too: drop it and read the stream again rather than grow without bound.
      this.#held = []
      this.#heldBytes = 0
      this.#reread = true
    } else {
      held.push(message)
      this.#heldBytes += message.data.length
    }
  }

  /** Delivers in stream order, each stream id once per instance. */
  #deliver (host: AdapterHost, message: PublishedMessage): void {
    const id = message.position
    if (id !== undefined && this.#history !== undefined) {
      if (this.#lastId !== undefined && !isAfter(id, this.#lastId)) return
      this.#lastId = id
    }
    host.deliver(message)
  }

  #seen (id: string): void {
    if (this.#lastId === undefined || isAfter(id, this.#lastId)) this.#lastId = id
  }

  /**
   * A source here needs a channel not subscribed yet. Until the subscription holds, what is published to it reaches
   * this instance only through the stream: live delivery waits (in order) while the stream is read from where this
   * instance stands, keeping what was published to the new channel since its first source opened.
   */
  #opened (channel: string): void {
    if (!this.#subscribed || this.#closed || this.#history === undefined) return
    if (!this.#fresh.has(channel)) this.#fresh.set(channel, Date.now() + this.#offset - this.#margin)
    this.#held ??= []
    if (Date.now() - this.#clockAt > CLOCK_AGE) {
      this.#clockAt = Date.now()
      this.#clock().catch(() => {})
    }
  }

  /** Estimates Redis's clock from this instance's, within half a round trip (kept in the margin). */
  async #clock (): Promise<void> {
    const client = this.#client as Redis
    const sent = Date.now()
    const [seconds, micros] = await this.#bounded(client.time())
    const now = Date.now()
    this.#offset = Number(seconds) * 1000 + Math.floor(Number(micros) / 1000) - Math.round((sent + now) / 2)
    this.#margin = CLOCK_MARGIN + (now - sent)
    this.#clockAt = now
  }

  /** A reconnected subscription: subscribe again, then read what was missed. */
  #catchUp (): void {
    this.#again = true
    this.#held ??= []
    this.#sync()
  }

  /**
   * One change of subscription at a time: after a reconnect, every channel again; otherwise the routes added and
   * removed since the last batch (gathered until the running one ends). Pub/sub drops what is published while a
   * subscriber is away or not yet subscribed: the stream is then read, page by page, from the last id delivered,
   * ahead of the live messages held back meanwhile. A drop during it makes it read again. Held messages are
   * delivered only once the stream was read up to them; if the stream no longer holds what a reconnect missed,
   * every source here gets the reset event first.
   */
  #sync (): void {
    if (this.#catchingUp !== undefined || this.#closed || !this.#subscribed) return
    // Route changes are gathered for ROUTE_BATCH ms: the connections opened meanwhile go in one batch.
    if (!this.#again && !this.#reread) {
      if (this.#batching) return
      this.#batching = true
      setTimeout(() => {
        this.#batching = false
        this.#runNow()
      }, ROUTE_BATCH).unref()
      return
    }
    this.#runNow()
  }

  #runNow (): void {
    if (this.#catchingUp !== undefined || this.#closed || !this.#subscribed) return
    if (!this.#again && this.#routes?.pending !== true && !this.#reread) return
    // Disconnected: the subscription's ready event subscribes every route.
    if (!this.#again && this.#subscriber?.status !== 'ready') return
    this.#catchingUp = this.#runSync().finally(() => {
      this.#catchingUp = undefined
      this.#sync()
    })
  }

  async #runSync (): Promise<void> {
    const subscriber = this.#subscriber as Redis
    const routes = this.#routes
    let complete = false
    let batches = 0
    try {
      while ((this.#again || this.#reread || routes?.pending === true) && !this.#closed) {
        complete = false
        // Reading again holds live delivery again, so that what is read stays in order with it.
        if (this.#reread) this.#held ??= []
        this.#reread = false
        let missed = false
        if (this.#again) {
          this.#again = false
          if (subscriber.status !== 'ready') return
          await this.#bounded(subscriber.subscribe(...this.#channels()))
          if (routes === undefined) await this.#bounded(subscriber.psubscribe(...this.#patterns()))
          // Claims made elsewhere while this subscription was down were missed: announcing ours makes newer ones answer.
          this.#claims?.announceAll()
          // Live only: what was published while the subscription was down is gone.
          if (this.#history === undefined) this.#host?.gap(undefined, undefined)
          missed = true
        } else if (routes?.pending === true) {
          // Changes made during the last batch's round trips: gather a little longer, as the first batch did.
          if (batches++ > 0) await sleep(ROUTE_BATCH)
          const { add, remove } = routes.take()
          // A failed unsubscribe only leaves a channel whose messages are ignored here.
          if (remove.length > 0) await this.#bounded(subscriber.unsubscribe(...remove)).catch(() => {})
          if (add.length > 0) {
            try {
              await this.#bounded(subscriber.subscribe(...add))
            } catch (err) {
              routes.failed(add)
              throw err
            }
          }
        }
        if (this.#history !== undefined && (missed || this.#held !== null)) await this.#readToEnd(this.#history, missed)
        complete = true
      }
    } catch (err) {
      this.#host?.log.warn({ err }, 'fastify-event-sources: could not subscribe after reconnecting to Redis or adding a route')
    } finally {
      const held = this.#held ?? []
      this.#held = null
      this.#heldBytes = 0
      const host = this.#host
      // Held messages follow a stretch that was not read: drop them, and read them from the stream next time (after a
      // lost subscription, its return does; otherwise the next run, at once).
      if (complete && host !== undefined && !this.#closed) for (const message of held) this.#deliver(host, message)
      if (complete) this.#fresh.clear()
      else if (this.#history !== undefined && !this.#closed) this.#reread = true
    }
  }

  /**
   * Delivers every entry after the last id delivered that a source here wants, up to the stream's end, in pages,
   * with the held live messages merged in by id. After a reconnect (`missed`), reports what the stream lost.
   */
  async #readToEnd (history: RedisStreamsHistory, missed: boolean): Promise<void> {
    const host = this.#host as AdapterHost
    let count = PAGE
    let delivered = 0
    for (;;) {
      const cursor = this.#lastId ?? '0-0'
      // Inclusive of the cursor: finding it again proves nothing after it was trimmed.
      const entries = await this.#retried(() => history.page(cursor, count + 1))
      if (entries === undefined) {
        if (!missed) {
          // Live delivery on the routes held before lost nothing: only a new route's first round trip may have.
          host.log.warn({ lastId: cursor }, 'fastify-event-sources: could not read the history for a new route; what was published to it before its subscription held is not delivered')
          return
        }
        host.log.warn({ lastId: cursor }, 'fastify-event-sources: could not read the history after reconnecting; reporting a gap')
        host.gap(undefined, cursor)
        return
      }
      const rest = entries.length > 0 && entries[0][0] === cursor ? entries.slice(1) : entries
      if (rest.length === entries.length && cursor !== '0-0') {
        const continuity = await this.#retried(() => history.continuity(cursor))
        if (continuity === undefined || continuity.gap) {
          // Only a lost subscription can have missed something: a new route's own window is read as far as it goes.
          if (missed) {
            host.log.warn({ lastId: cursor, latestId: continuity?.latestId }, 'fastify-event-sources: the history no longer holds what was missed; reporting a gap')
            host.gap(continuity?.latestId, cursor)
          }
          // As on a replay gap: after the reset, everything still held. All of it is after the cursor.
          this.#lastId = '0-0'
          continue
        }
      }
      let bytes = 0
      for (const message of decodeEntries(rest)) {
        bytes += message.data.length
        const wanted = this.#wanted(message)
        // A route whose subscribe is not sent yet: read on from here once it is.
        if (wanted === undefined) {
          this.#reread = true
          return
        }
        this.#releaseBefore(host, message.position as string)
        if (wanted) {
          this.#deliver(host, message)
          delivered++
        } else {
          this.#seen(message.position as string)
        }
      }
      if (rest.length > 0) this.#seen(rest[rest.length - 1][0])
      if (rest.length < count) break
      count = Math.max(1, Math.min(PAGE, Math.floor(PAGE_BYTES / Math.max(1, bytes / rest.length))))
    }
    if (delivered > 0 && missed) host.log.info({ missed: delivered }, 'fastify-event-sources: delivered what was published while the subscription was down')
  }

  /** Held live messages come before a stream entry with a larger id. */
  #releaseBefore (host: AdapterHost, id: string): void {
    const held = this.#held
    if (held === null) return
    let n = 0
    while (n < held.length && isAfter(id, held[n].position as string)) {
      this.#heldBytes -= held[n].data.length
      this.#deliver(host, held[n++])
    }
    if (n > 0) held.splice(0, n)
  }

  /**
   * Whether a stream entry is for this instance: a route subscribed before this read, or a new route's, published
   * after its first source opened. Undefined for a new route's whose subscribe is not sent yet.
   */
  #wanted (message: PublishedMessage): boolean | undefined {
    const routes = this.#routes
    if (routes === undefined) return true
    let wanted = false
    for (const channel of routes.channels(message.to)) {
      const since = this.#fresh.get(channel)
      const recent = since !== undefined && Number((message.position as string).split('-')[0]) >= since
      if (!routes.has(channel)) {
        if (recent && routes.waiting(channel)) return undefined
        continue
      }
      if (since === undefined) return true
      if (recent) wanted = true
    }
    return wanted
  }

  /** Runs a read until it succeeds, backing off; undefined after READ_ATTEMPTS failures or once closed. */
  async #retried<T> (read: () => Promise<T>): Promise<T | undefined> {
    for (let attempt = 1; attempt <= READ_ATTEMPTS && !this.#closed; attempt++) {
      try {
        if (this.#client?.status !== 'ready') throw new Error('Redis is not connected')
        return await this.#bounded(read())
      } catch (err) {
        this.#host?.log.debug({ err, attempt }, 'fastify-event-sources: history read failed; retrying')
        await sleep(Math.min(attempt * 250, 2000))
      }
    }
    return undefined
  }

  /** A subscribe or unsubscribe from another instance; checked as carefully as one made here. */
  #onControl (payload: string): void {
    const host = this.#host
    if (host === undefined || this.#closed) return
    applyControl(host, this.#instance, payload, this.controlChannel)
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
