import { randomUUID } from 'node:crypto'
import { Cluster, Redis, type ClusterOptions, type RedisOptions } from 'ioredis'
import { FST_ERR_SSE_ADAPTER, FST_ERR_SSE_PUBLISH_FAILED } from '../errors'
import { RedisClusterHistory, clusterKeys, completeBelow, decodePayload, type ClusterEntry, type ClusterKeys } from '../history/redis-cluster-streams'
import { isAfter } from '../position'
import { topicsOf } from '../target'
import type { AdapterHost, AdapterPublishOptions, ControlMessage, CountTarget, EventSourceAdapter, PresenceListener, PublishedMessage, ReplayResult } from './adapter'
import { PRESENCE_DEFAULTS, RedisPresence, type PresenceSettings } from './redis-presence'
import type { RunSink } from '../runs'
import { RedisRunStore } from './redis-runs'
import type { RedisClusterAdapterOptions } from '../../types/redis'
import { InOrder } from './cluster-order'
import { ClusterSubscriptions } from './cluster-subscriptions'
import { OnlineReplicas } from './cluster-replicas'
import { ClusterWrites, reply } from './cluster-writes'
import { firstHeard } from './routes'
import { CLOCK_AGE, CLOCK_MARGIN, Claims, applyControl, bounded, clockEstimate, controlPayload, fail, positive, ready, closeCluster, sleep } from './coordination'

/**
 * The Redis adapter for a Redis Cluster (7 or later). A message to one topic travels on a sharded channel and lives
 * in a stream on its topic's own slot; everything else (the id sequence, messages to identifiers, prefixes,
 * everyone and several topics, presence, claims, control, runs) lives on the sequencer's slot `{<prefix>}`. An
 * instance subscribes only to the channels of the identifiers and topics its sources follow (and to the one of
 * everyone and prefixes). Ids come from the sequencer, so they form one order for the whole cluster; since messages
 * reach an instance over several connections, an instance delivers them in id order, each once every id below it
 * has been written (the watermark).
 */
class RedisClusterAdapter implements EventSourceAdapter {
  readonly hasHistory: boolean
  readonly routing = 'selective' as const
  readonly channelPrefix: string
  readonly streamKey: string
  readonly messageChannel: string
  readonly claimChannel: string
  readonly controlChannel: string
  readonly keys: ClusterKeys
  #nodes: { host: string, port: number }[] | undefined
  #userClient: Cluster | undefined
  #client: Cluster | undefined
  #history: RedisClusterHistory | undefined
  #host: AdapterHost | undefined
  #ttl: number
  #timeout: number
  /** ms a pending id is waited for: a publisher gives up after publishTimeout. */
  #expire: number
  #connectTimeout: number
  #runLease: number
  #runs: RedisRunStore | undefined
  #presenceSettings: PresenceSettings | undefined
  #presence: RedisPresence | undefined
  #presenceListener: PresenceListener | undefined
  #instance = randomUUID()
  #closed = false
  #inFlight = new Set<Promise<unknown>>()
  #owned: (Redis | Cluster)[] = []
  #subscriptions: ClusterSubscriptions | undefined
  #replicas: OnlineReplicas
  #writes: ClusterWrites
  /** With history: delivery in id order. */
  #order: InOrder | undefined
  #claims: Claims | undefined
  #down = false
  /** ms the sequencer's clock is ahead of this process's. */
  #skew = 0
  /** How far (ms) before the sequencer's estimated time a new stream starts: the clock margin and the estimate's round trip. */
  #margin = CLOCK_MARGIN
  #clockAt = -Infinity

  /** The last id delivered here. */
  get #released (): string {
    return this.#order?.released ?? '0-0'
  }

  constructor (options: RedisClusterAdapterOptions = {}) {
    if (typeof options !== 'object' || options === null) fail('redisAdapter', 'options must be an object')
    const { client, nodes, history } = options
    if (client !== undefined && !(client instanceof Cluster)) fail('client', 'must be an ioredis Cluster for a Redis Cluster adapter')
    if (nodes !== undefined) {
      if (!Array.isArray(nodes) || nodes.length === 0 || !nodes.every(node => typeof node === 'object' && node !== null && typeof node.port === 'number')) {
        fail('nodes', 'must be a non-empty array of { host, port }')
      }
      if (client !== undefined) fail('nodes', 'give either nodes or client, not both')
    }
    if ((options as { url?: unknown }).url !== undefined) fail('url', 'a Redis Cluster is given by nodes (or client), not url')
    const routing = (options as { routing?: unknown }).routing
    if (routing !== undefined && routing !== 'selective') fail('routing', `a Redis Cluster routes selectively (sharded channels); got ${String(routing)}`)
    if (client === undefined && nodes === undefined) fail('nodes', 'a Redis Cluster adapter needs nodes or a Cluster client')
    const prefix = options.channelPrefix ?? 'fastify-event-sources:'
    if (typeof prefix !== 'string') fail('channelPrefix', 'must be a string')
    // The prefix becomes the sequencer's hash tag: a brace in it would move keys to other slots.
    if (/[{}]/.test(prefix)) fail('channelPrefix', 'must not contain { or } on a Redis Cluster (it is used as a hash tag)')
    if (history !== undefined && history !== false && (typeof history !== 'object' || history === null)) fail('history', 'must be { maxLen, keyTtl, ttl } or false')
    const topics = history === false ? undefined : (history as { topics?: unknown } | undefined)?.topics
    if (topics !== undefined && topics !== Infinity) {
      fail('history.topics', 'is not supported on a Redis Cluster (topic histories live on many shards); bound them with history.ttl')
    }
    this.#userClient = client
    this.#nodes = nodes
    this.#ttl = history === false || history?.ttl === Infinity ? 0 : positive('history.ttl', history?.ttl, 3_600_000)
    this.#timeout = positive('publishTimeout', options.publishTimeout, 2000)
    this.#expire = this.#timeout * 2
    this.#connectTimeout = positive('connectTimeout', options.connectTimeout, 5000)
    // Half the publish's time, leaving the rest for the sequencer.
    this.#replicas = new OnlineReplicas(Math.max(1, Math.floor(this.#timeout / 2)))
    this.keys = clusterKeys(prefix)
    this.#writes = new ClusterWrites({
      keys: this.keys,
      replicas: this.#replicas,
      maxLen: history === false ? 0 : positive('history.maxLen', history?.maxLen, 1000),
      keyTtl: history === false ? 0 : positive('history.keyTtl', history?.keyTtl, 3_600_000),
      ttl: this.#ttl,
      timeout: this.#timeout,
      expire: this.#expire,
      skew: () => this.#skew,
      refreshSlots: async () => this.#subscriptions?.refreshSlots(),
      closed: () => this.#closed
    })
    const runs = options.runs
    if (runs !== undefined && (typeof runs !== 'object' || runs === null)) fail('runs', 'must be { lease }')
    this.#runLease = positive('runs.lease', runs?.lease, 10_000)
    const presence = options.presence
    if (presence !== undefined && presence !== false && (typeof presence !== 'object' || presence === null)) fail('presence', 'must be { heartbeat, flush } or false')
    this.#presenceSettings = presence === false
      ? undefined
      : {
          heartbeat: positive('presence.heartbeat', presence?.heartbeat, PRESENCE_DEFAULTS.heartbeat),
          flush: positive('presence.flush', presence?.flush, PRESENCE_DEFAULTS.flush)
        }
    this.hasHistory = history !== false
    this.channelPrefix = prefix
    this.streamKey = this.keys.plain
    this.messageChannel = this.keys.messages
    this.claimChannel = this.keys.claims
    this.controlChannel = this.keys.control
  }

  async attach (host: AdapterHost): Promise<void> {
    if (this.#host !== undefined) throw new FST_ERR_SSE_ADAPTER('a redisAdapter serves one Fastify instance; create one per instance')
    this.#host = host
    const user = this.#userClient
    if (user !== undefined && user.status === 'end') throw new FST_ERR_SSE_ADAPTER('cannot reach the Redis Cluster: the client passed was closed (status "end")')
    const client = user ?? this.#own(new Cluster(this.#nodes ?? [], CLUSTER_OPTIONS))
    this.#client = client
    this.#claims = new Claims(host, this.#instance, () => client.status === 'ready', payload => client.spublish(this.claimChannel, payload))
    if (this.hasHistory) {
      this.#history = new RedisClusterHistory(client, this.keys, this.#ttl, this.#expire)
      this.#order = new InOrder(host, this.#history, async () => this.#subscriptions?.barrier(), this.#timeout)
    }
    const subscriptions = new ClusterSubscriptions({
      host,
      client,
      keys: this.keys,
      history: this.#history,
      order: this.#order,
      claims: this.#claims,
      timeout: this.#timeout,
      connectTimeout: this.#connectTimeout,
      onMessage: (name, payload) => this.#onMessage(name, payload)
    })
    this.#subscriptions = subscriptions
    let lastError: Error | undefined
    const record = (err: Error): void => { lastError = err }
    client.on('error', record)
    try {
      await this.#ready(client)
      // So that the first writes know whether to wait for a replica (a master not asked yet answers before its WAIT).
      await this.#bounded(Promise.all(client.nodes('master').map(async node => this.#replicas.ask(node).catch(() => 0))))
      if (this.#history !== undefined) {
        await this.#clock(client)
        const mark = await this.#bounded(this.#history.watermark())
        this.#order?.start(completeBelow(mark))
      }
      // The plain stream also holds the messages to identifiers, which travel on their own channels.
      const everyone = (message: PublishedMessage): boolean => typeof message.to !== 'string'
      await subscriptions.start([[this.messageChannel, this.keys.plain, everyone], [this.claimChannel, undefined, undefined], [this.controlChannel, undefined, undefined]])
    } catch (err) {
      await this.close()
      const why = lastError === undefined ? (err as Error).message : `${(err as Error).message} (${lastError.message})`
      throw new FST_ERR_SSE_ADAPTER(`cannot reach the Redis Cluster: ${why}`, { cause: err })
    } finally {
      client.off('error', record)
    }
    client.on('ready', () => {
      if (this.#claims?.pending === true) this.#claims.announceAll()
    })
    // Routes hear first of every identifier and topic a source here takes or leaves, then presence (if on).
    const local = host.presence
    const routes: PresenceListener = {
      streams: () => this.#presenceListener?.streams(),
      identifier: identifier => {
        subscriptions.route('i:' + identifier, local.hasIdentifier(identifier))
        this.#presenceListener?.identifier(identifier)
      },
      topic: (topic, identifier) => {
        subscriptions.route('t:' + topic, local.topicStreams(topic) > 0)
        this.#presenceListener?.topic(topic, identifier)
      }
    }
    local.watch(routes)
    for (const identifier of local.identifiers()) subscriptions.route('i:' + identifier, true)
    for (const topic of local.topics()) subscriptions.route('t:' + topic, true)
    if (this.#presenceSettings !== undefined) {
      const presence = new RedisPresence(client as unknown as Redis, host, this.keys.tag, this.#instance, this.#presenceSettings, op => this.#bounded(op))
      this.#presence = presence
      this.#presenceListener = presence
      await presence.start().catch((err: Error) => host.log.warn({ err }, 'fastify-event-sources: could not write presence yet; retrying'))
    }
  }

  async presence (topic: string): Promise<string[]> {
    if (this.#presence !== undefined) return this.#presence.presence(topic)
    return this.#host?.presence.presence(topic) ?? []
  }

  async count (to: CountTarget | undefined): Promise<number> {
    if (this.#presence !== undefined) return this.#presence.count(to)
    return this.#host?.presence.count(to) ?? 0
  }

  async publish (message: PublishedMessage, options?: AdapterPublishOptions): Promise<void> {
    const client = this.#client
    if (client === undefined || this.#closed) throw new FST_ERR_SSE_PUBLISH_FAILED(this.#closed ? 'the Redis adapter is closed' : 'the Redis adapter is not attached')
    if (client.status !== 'ready') throw new FST_ERR_SSE_PUBLISH_FAILED(`the Redis Cluster is not connected (${client.status})`)
    const sent = this.hasHistory ? this.#writes.append(client, message, options?.key) : this.#writes.publishLive(client, message)
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
    if (history === undefined) return { messages: [], gap: true }
    if (this.#client?.status !== 'ready') throw new FST_ERR_SSE_ADAPTER('the Redis Cluster is not connected; cannot read the history')
    return this.#bounded(history.readAfter(lastEventId, identifier, topics ?? [], this.#released))
  }

  async control (message: ControlMessage): Promise<void> {
    this.#host?.control(message)
    const client = this.#client
    if (client === undefined || this.#closed) throw new FST_ERR_SSE_PUBLISH_FAILED(this.#closed ? 'the Redis adapter is closed' : 'the Redis adapter is not attached')
    if (client.status !== 'ready') throw new FST_ERR_SSE_PUBLISH_FAILED(`the Redis Cluster is not connected (${client.status}); the change applied to this instance only`)
    try {
      await this.#bounded(client.spublish(this.controlChannel, controlPayload(this.#instance, message)))
    } catch (err) {
      throw new FST_ERR_SSE_PUBLISH_FAILED(`${(err as Error).message}; the change applied to this instance only`, { cause: err })
    }
  }

  /**
   * A new route reads its streams from the last id delivered here, which may be long ago on a quiet instance (a
   * stream resuming with Last-Event-ID needs all of it): a stream opening without one starts at the sequencer's time,
   * less the margin.
   */
  startPosition (): string | undefined {
    if (this.#history === undefined) return undefined
    // Clocks drift: measured again when a stream opens and the last estimate is older than CLOCK_AGE.
    if (Date.now() - this.#clockAt > CLOCK_AGE && this.#client !== undefined && !this.#closed) {
      this.#clockAt = Date.now()
      this.#clock(this.#client).catch(() => {})
    }
    return `${Date.now() + this.#skew - this.#margin}-0`
  }

  /** The sequencer's clock against this one's (publish deadlines and new streams' start are in the sequencer's time). */
  async #clock (client: Cluster): Promise<void> {
    const asked = Date.now()
    const time = reply(await this.#bounded(client.pipeline().exists(this.keys.seq).time().exec()), 1) as [string, string]
    const answered = Date.now()
    ;({ offset: this.#skew, margin: this.#margin } = clockEstimate(time, asked, answered))
    this.#clockAt = answered
  }

  claim (identifier: string, openedAt: number): void {
    if (this.#client === undefined || this.#closed) return
    this.#claims?.announce([[identifier, openedAt]])
  }

  /** Runs on the sequencer's slot: their keys share its hash tag, their events travel on cluster-wide channels. */
  runStore (sink: RunSink): RedisRunStore {
    return (this.#runs ??= new RedisRunStore(this.keys.tag, { lease: this.#runLease, timeout: this.#timeout }, sink, () => this.#openRuns(), message => this.#host?.deliver(message)))
  }

  async #openRuns (): Promise<[Redis, Redis]> {
    const client = this.#client
    if (client === undefined || this.#closed) throw new FST_ERR_SSE_ADAPTER(this.#closed ? 'the Redis adapter is closed' : 'the Redis adapter is not attached')
    const subscriber = this.#own(client.duplicate())
    await this.#ready(subscriber)
    return [client as unknown as Redis, subscriber as unknown as Redis]
  }

  async close (): Promise<void> {
    await this.#runs?.close()
    this.#host?.presence.watch(undefined)
    await this.#presence?.close()
    this.#closed = true
    this.#order?.close()
    this.#subscriptions?.close()
    await Promise.race([Promise.allSettled([...this.#inFlight]), sleep(this.#timeout)])
    const owned = this.#owned
    this.#owned = []
    await Promise.all(owned.map(async connection => {
      if (connection instanceof Cluster) return closeCluster(connection, this.#timeout)
      if (connection.status === 'ready') {
        try {
          await this.#bounded(connection.quit())
          return
        } catch {}
      }
      connection.disconnect()
    }))
  }

  #own<T extends Redis | Cluster> (connection: T): T {
    this.#owned.push(connection)
    connection.on('error', (err: Error) => {
      if (this.#down || this.#closed || this.#host === undefined) return
      this.#down = true
      this.#host.log.warn({ err }, 'fastify-event-sources: Redis Cluster connection lost; reconnecting')
    })
    connection.on('ready', () => {
      if (!this.#down) return
      this.#down = false
      this.#host?.log.info('fastify-event-sources: Redis Cluster connection back')
    })
    return connection
  }

  // Messages.

  #onMessage (name: string, payload: string): void {
    const host = this.#host
    const channel = this.#subscriptions?.get(name)
    if (host === undefined || this.#closed || channel === undefined) return
    if (name === this.claimChannel) return this.#claims?.receive(payload)
    if (name === this.controlChannel) return this.#onControl(payload)
    let entry: ClusterEntry
    try {
      entry = decodePayload(payload)
    } catch (err) {
      host.log.warn({ err, channel: name }, 'fastify-event-sources: ignored a malformed message from Redis')
      return
    }
    const order = this.#order
    if (order === undefined) {
      if (this.#first(entry.message, name)) host.deliver(entry.message)
      return
    }
    if (channel.cursor !== undefined && !isAfter(entry.pos, channel.cursor)) return
    const known = channel.cursor !== undefined
    channel.cursor = entry.pos
    order.absorb(entry, known)
  }

  /**
   * Without history (no ids to tell copies apart), a message to several topics arrives once per topic followed here:
   * only its copy on the first of them is delivered.
   */
  #first (message: PublishedMessage, channel: string): boolean {
    const topics = topicsOf(message.to)
    if (topics === undefined || topics.length < 2) return true
    return firstHeard(topics, channel, this.keys.multiTopic, own => this.#subscriptions?.get(own) !== undefined)
  }

  // Control, on the sequencer's slot.

  #onControl (payload: string): void {
    const host = this.#host as AdapterHost
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

/**
 * Fail fast rather than queue or retry while a shard is away: a publish retried after it was reported failed
 * would take its id after later publishes, and one sent again after its connection dropped may be stored twice.
 * (A MOVED reply is still followed: the command did not run.) The slot map is refreshed every second.
 */
const CLUSTER_OPTIONS: ClusterOptions = {
  enableOfflineQueue: false,
  slotsRefreshInterval: 1000,
  retryDelayOnFailover: 0,
  retryDelayOnClusterDown: 0,
  retryDelayOnTryAgain: 0,
  redisOptions: { maxRetriesPerRequest: 0, autoResendUnfulfilledCommands: false } satisfies Partial<RedisOptions>
}

export { RedisClusterAdapter }
