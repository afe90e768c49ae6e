import { createHash, randomUUID } from 'node:crypto'
import { Redis, type RedisOptions } from 'ioredis'
import { FST_ERR_SSE_ADAPTER, FST_ERR_SSE_INVALID_OPTION, FST_ERR_SSE_PUBLISH_FAILED } from '../errors'
import { APPEND_AND_PUBLISH, RedisStreamsHistory, decode, encode } from '../history/redis-streams'
import { isAfter } from '../position'
import type { AdapterHost, EventSourceAdapter, PublishedMessage, ReplayResult } from './adapter'
import type { RedisAdapterOptions } from '../../types/redis'

const SCRIPT_SHA = createHash('sha1').update(APPEND_AND_PUBLISH).digest('hex')

// Fail fast instead of queueing while Redis is away: a queued publish would hang, then arrive late and out of order.
const OWN_CONNECTION: RedisOptions = {
  enableOfflineQueue: false,
  maxRetriesPerRequest: 0,
  autoResendUnfulfilledCommands: false,
  lazyConnect: false,
  // ioredis backs off to 5 s; live delivery should be back within about 2 s of Redis returning.
  retryStrategy: (times: number) => Math.min(times * 100, 2000) + Math.floor(Math.random() * 100)
}

function fail (name: string, why: string): never {
  throw new FST_ERR_SSE_INVALID_OPTION(name, why)
}

function positive (name: string, value: unknown, fallback: number): number {
  if (value === undefined) return fallback
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 1) fail(name, `must be an integer >= 1, got ${String(value)}`)
  return value
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
  #userClient: Redis | undefined
  #url: string | undefined
  #maxLen: number
  #timeout: number
  #connectTimeout: number
  #client: Redis | undefined
  #owned: Redis[] = []
  #history: RedisStreamsHistory | undefined
  #host: AdapterHost | undefined
  #instance = randomUUID()
  #closed = false
  #down = false
  #subscribed = false
  /** The newest stream id delivered here (history on only): where catching up starts. */
  #lastId: string | undefined
  /** Live messages held back while catching up. */
  #buffer: PublishedMessage[] | null = null

  constructor (options: RedisAdapterOptions = {}) {
    if (typeof options !== 'object' || options === null) fail('redisAdapter', 'options must be an object')
    const { client, url, history } = options
    if (client !== undefined && (typeof client !== 'object' || client === null || typeof client.duplicate !== 'function')) {
      fail('client', 'must be an ioredis client')
    }
    if (url !== undefined && typeof url !== 'string') fail('url', 'must be a redis:// URL')
    const prefix = options.channelPrefix ?? 'fastify-event-sources:'
    if (typeof prefix !== 'string') fail('channelPrefix', 'must be a string')
    if (history !== undefined && history !== false && (typeof history !== 'object' || history === null)) fail('history', 'must be { maxLen } or false')
    this.#userClient = client
    this.#url = url
    this.#maxLen = history === false ? 0 : positive('history.maxLen', history?.maxLen, 1000)
    this.#timeout = positive('publishTimeout', options.publishTimeout, 2000)
    this.#connectTimeout = positive('connectTimeout', options.connectTimeout, 10_000)
    this.hasHistory = history !== false
    this.channelPrefix = prefix
    this.streamKey = prefix + 'stream'
    this.messageChannel = prefix + 'messages'
    this.claimChannel = prefix + 'claims'
  }

  async attach (host: AdapterHost): Promise<void> {
    if (this.#host !== undefined) throw new FST_ERR_SSE_ADAPTER('a redisAdapter serves one Fastify instance; create one per instance')
    this.#host = host
    const user = this.#userClient
    const client = user ?? this.#own(new Redis(this.#url ?? 'redis://127.0.0.1:6379', OWN_CONNECTION))
    // Subscribing again is done here, not by ioredis, so that catching up starts once the subscription holds.
    const subscriber = this.#own((user ?? client).duplicate({ enableOfflineQueue: false, lazyConnect: false, autoResubscribe: false }))
    this.#client = client
    if (this.hasHistory) this.#history = new RedisStreamsHistory(client, this.streamKey)
    subscriber.on('message', (channel: string, payload: string) => {
      if (channel === this.messageChannel) this.#onMessage(payload)
      else if (channel === this.claimChannel) this.#onClaim(payload)
    })
    subscriber.on('ready', () => {
      if (this.#subscribed) this.#resubscribe(subscriber).catch(() => {})
    })
    try {
      if (user?.status === 'wait') user.connect().catch(() => {})
      await Promise.all([client, subscriber].map(c => this.#ready(c)))
      await subscriber.subscribe(this.messageChannel, this.claimChannel)
      if (this.#history !== undefined) this.#seen(await this.#history.latestId())
    } catch (err) {
      await this.close()
      throw new FST_ERR_SSE_ADAPTER(`cannot reach Redis: ${(err as Error).message}`, { cause: err })
    }
    this.#subscribed = true
  }

  async publish (message: PublishedMessage): Promise<void> {
    const client = this.#client
    if (client === undefined || this.#closed) throw new FST_ERR_SSE_PUBLISH_FAILED(this.#closed ? 'the Redis adapter is closed' : 'the Redis adapter is not attached')
    // A user's client may queue while disconnected; a queued publish would be sent after it was reported failed.
    if (client.status !== 'ready') throw new FST_ERR_SSE_PUBLISH_FAILED(`Redis is not connected (${client.status})`)
    try {
      await this.#bounded(this.hasHistory ? this.#append(client, encode(message, false)) : client.publish(this.messageChannel, '\n' + encode(message, true)))
    } catch (err) {
      throw new FST_ERR_SSE_PUBLISH_FAILED((err as Error).message, { cause: err })
    }
  }

  async replay (lastEventId: string, identifier: string): Promise<ReplayResult> {
    const history = this.#history
    if (history === undefined) return { messages: [], gap: false }
    if (this.#client?.status !== 'ready') throw new FST_ERR_SSE_ADAPTER('Redis is not connected; cannot read the history')
    return this.#bounded(history.readAfter(lastEventId, identifier))
  }

  claim (identifier: string, openedAt: number): void {
    const client = this.#client
    if (client === undefined || this.#closed) return
    client.publish(this.claimChannel, JSON.stringify([this.#instance, identifier, openedAt])).catch((err: Error) => {
      this.#host?.log.debug({ err, identifier }, 'fastify-event-sources: could not announce the identifier to other instances')
    })
  }

  /** Closes the connections this adapter opened; a client passed in stays open. */
  async close (): Promise<void> {
    this.#closed = true
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
      if (this.#down || this.#closed) return
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

  async #append (client: Redis, body: string): Promise<unknown> {
    const args = [1, this.streamKey, this.#maxLen, body, this.messageChannel] as const
    try {
      return await client.evalsha(SCRIPT_SHA, ...args)
    } catch (err) {
      // After a restart Redis has forgotten the script.
      if (!String((err as Error).message).startsWith('NOSCRIPT')) throw err
      return client.eval(APPEND_AND_PUBLISH, ...args)
    }
  }

  #onMessage (payload: string): void {
    const host = this.#host
    if (host === undefined || this.#closed) return
    const newline = payload.indexOf('\n')
    let message: PublishedMessage
    try {
      message = decode(payload.slice(newline + 1), newline > 0 ? payload.slice(0, newline) : undefined)
    } catch (err) {
      host.log.warn({ err, channel: this.messageChannel }, 'fastify-event-sources: ignored a malformed message from Redis')
      return
    }
    if (this.#buffer !== null) this.#buffer.push(message)
    else this.#deliver(host, message)
  }

  #deliver (host: AdapterHost, message: PublishedMessage): void {
    if (this.#history !== undefined && message.id !== undefined) this.#lastId = message.id
    host.deliver(message)
  }

  #seen (id: string): void {
    if (this.#lastId === undefined || isAfter(id, this.#lastId)) this.#lastId = id
  }

  /**
   * Pub/sub drops what is published while a subscriber is away. Once subscribed again, read what the stream
   * got meanwhile and deliver it ahead of the live messages held back until then (minus those it covered).
   */
  async #resubscribe (subscriber: Redis): Promise<void> {
    const history = this.#history
    const client = this.#client as Redis
    const held: PublishedMessage[] = []
    let missed: PublishedMessage[] = []
    this.#buffer = held
    try {
      await subscriber.subscribe(this.messageChannel, this.claimChannel)
      const from = this.#lastId
      if (history !== undefined && from !== undefined) {
        await this.#ready(client)
        missed = await this.#bounded(history.after(from))
        if (missed.length > 0) this.#host?.log.info({ missed: missed.length }, 'fastify-event-sources: delivering what was published while the subscription was down')
      }
    } catch (err) {
      this.#host?.log.warn({ err }, 'fastify-event-sources: could not catch up after reconnecting to Redis')
    } finally {
      if (this.#buffer === held) this.#buffer = null
      const host = this.#host
      if (host !== undefined && !this.#closed) {
        for (const message of missed) this.#deliver(host, message)
        const last = missed.length > 0 ? missed[missed.length - 1].id as string : undefined
        for (const message of held) {
          if (last === undefined || message.id === undefined || isAfter(message.id, last)) this.#deliver(host, message)
        }
      }
    }
  }

  #onClaim (payload: string): void {
    const host = this.#host
    if (host === undefined || this.#closed) return
    let claim: unknown
    try {
      claim = JSON.parse(payload)
    } catch {
      return
    }
    if (!Array.isArray(claim) || claim[0] === this.#instance || typeof claim[1] !== 'string' || typeof claim[2] !== 'number') return
    host.closeOlder(claim[1], claim[2])
  }

  async #ready (connection: Redis): Promise<void> {
    if (connection.status === 'ready') return
    await new Promise<void>((resolve, reject) => {
      const done = (err?: Error): void => {
        clearTimeout(timer)
        connection.off('ready', onReady)
        connection.off('end', onEnd)
        if (err === undefined) resolve()
        else reject(err)
      }
      const onReady = (): void => done()
      const onEnd = (): void => done(new Error('the connection ended'))
      const timer = setTimeout(done, this.#connectTimeout, new Error(`no connection within ${this.#connectTimeout} ms`))
      connection.once('ready', onReady)
      connection.once('end', onEnd)
    })
  }

  /** A user's client may queue commands while Redis is away: never wait longer than publishTimeout. */
  async #bounded<T> (operation: Promise<T>): Promise<T> {
    let timer: NodeJS.Timeout | undefined
    const expired = new Promise<never>((resolve, reject) => {
      timer = setTimeout(reject, this.#timeout, new Error(`Redis did not answer within ${this.#timeout} ms`))
      timer.unref()
    })
    try {
      return await Promise.race([operation, expired])
    } finally {
      clearTimeout(timer)
    }
  }
}

function redisAdapter (options?: RedisAdapterOptions): RedisAdapter {
  return new RedisAdapter(options)
}

// Node finds an ESM import's named exports by scanning for `exports.name =`; it cannot see through Object.assign.
exports.default = exports.redisAdapter = exports.RedisAdapter = undefined

export = Object.assign(redisAdapter, { default: redisAdapter, redisAdapter, RedisAdapter })
