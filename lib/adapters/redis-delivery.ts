import type { Redis } from 'ioredis'
import { PAGE, decode, decodeEntries, type RedisStreamsHistory } from '../history/redis-streams'
import { isAfter } from '../position'
import type { AdapterHost, PublishedMessage } from './adapter'
import { CLOCK_AGE, CLOCK_MARGIN, bounded, clockEstimate, sleep, type Claims } from './coordination'
import type { Routes } from './routes'

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

export interface DeliverySetup {
  host: AdapterHost
  /** The command connection (history reads, the clock) and the subscriber connection. */
  client: Redis
  subscriber: Redis
  history: RedisStreamsHistory | undefined
  /** With routing 'selective'. */
  routes: Routes | undefined
  claims: Claims | undefined
  /** Every channel of a whole subscription, and with routing 'all' its patterns. */
  channels: () => string[]
  patterns: () => string[]
  /** Without history: whether this copy of a message is the one to deliver. */
  firstCopy: (message: PublishedMessage, channel: string) => boolean
  timeout: number
}

/**
 * What comes back on one instance's Redis subscription, delivered in stream order, each stream id once. While the
 * subscription is set up again (after a reconnect) or grows (a new route), live messages are held back and the
 * stream is read from the last id delivered, then the two are merged by id.
 */
export class RedisDelivery {
  #host: AdapterHost
  #client: Redis
  #subscriber: Redis
  #history: RedisStreamsHistory | undefined
  #routes: Routes | undefined
  #claims: Claims | undefined
  #channels: () => string[]
  #patterns: () => string[]
  #firstCopy: (message: PublishedMessage, channel: string) => boolean
  #timeout: number
  #closed = false
  /** The first subscription holds: from now on routes and reconnects catch up. */
  #subscribed = false
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
  /**
   * Routes subscribed since the last read of the stream, and the Redis time (ms) their first source opened at: what
   * was published to them before their subscription held is read from the stream, from that time on.
   */
  #fresh = new Map<string, number>()
  /** While a control message from another instance is applied: the Redis time it was published at. */
  #controlAt: number | undefined
  /** Redis's clock minus this instance's (ms), the round trip included in the margin, and when it was measured. */
  #offset = 0
  #margin = CLOCK_MARGIN
  #clockAt = -Infinity
  #batching = false

  constructor (setup: DeliverySetup) {
    this.#host = setup.host
    this.#client = setup.client
    this.#subscriber = setup.subscriber
    this.#history = setup.history
    this.#routes = setup.routes
    this.#claims = setup.claims
    this.#channels = setup.channels
    this.#patterns = setup.patterns
    this.#firstCopy = setup.firstCopy
    this.#timeout = setup.timeout
  }

  /** The first subscription holds. */
  start (): void {
    this.#subscribed = true
  }

  close (): void {
    this.#closed = true
  }

  /** A message from the subscription. */
  receive (payload: string, channel: string): void {
    const host = this.#host
    if (this.#closed) return
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

  seen (id: string): void {
    if (this.#lastId === undefined || isAfter(id, this.#lastId)) this.#lastId = id
  }

  /**
   * A source here needs a channel not subscribed yet. Until the subscription holds, what is published to it reaches
   * this instance only through the stream: live delivery waits (in order) while the stream is read from where this
   * instance stands, keeping what was published to the new channel since its first source opened.
   */
  opened (channel: string): void {
    if (!this.#subscribed || this.#closed || this.#history === undefined) return
    const since = Math.min(Date.now() + this.#offset - this.#margin, this.#controlAt ?? Infinity)
    if (since < (this.#fresh.get(channel) ?? Infinity)) this.#fresh.set(channel, since)
    this.#held ??= []
    if (Date.now() - this.#clockAt > CLOCK_AGE) {
      this.#clockAt = Date.now()
      this.clock().catch(() => {})
    }
  }

  /**
   * Applies a subscribe or unsubscribe published by another instance at Redis time `at`: a route it opens here reads
   * what was published to it from then, not from when this instance got to it.
   */
  controlled (at: number | undefined, apply: () => void): void {
    this.#controlAt = at
    try {
      apply()
    } finally {
      this.#controlAt = undefined
    }
  }

  /** Estimates Redis's clock from this instance's, within half a round trip (kept in the margin). */
  async clock (): Promise<void> {
    const client = this.#client as Redis
    const asked = Date.now()
    const time = await this.#bounded(client.time())
    const answered = Date.now()
    ;({ offset: this.#offset, margin: this.#margin } = clockEstimate([String(time[0]), String(time[1])], asked, answered))
    this.#clockAt = answered
  }

  /** A reconnected subscription: subscribe again, then read what was missed. */
  reconnected (): void {
    this.#again = true
    this.#held ??= []
    this.sync()
  }

  /**
   * One change of subscription at a time: after a reconnect, every channel again; otherwise the routes added and
   * removed since the last batch (gathered until the running one ends). Pub/sub drops what is published while a
   * subscriber is away or not yet subscribed: the stream is then read, page by page, from the last id delivered,
   * ahead of the live messages held back meanwhile. A drop during it makes it read again. Held messages are
   * delivered only once the stream was read up to them; if the stream no longer holds what a reconnect missed,
   * every source here gets the reset event first.
   */
  sync (): void {
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
      this.sync()
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
          if (this.#history === undefined) this.#host.gap(undefined, undefined)
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
      this.#host.log.warn({ err }, 'fastify-event-sources: could not subscribe after reconnecting to Redis or adding a route')
    } finally {
      const held = this.#held ?? []
      this.#held = null
      this.#heldBytes = 0
      const host = this.#host
      // Held messages follow a stretch that was not read: drop them, and read them from the stream next time (after a
      // lost subscription, its return does; otherwise the next run, at once).
      if (complete && !this.#closed) for (const message of held) this.#deliver(host, message)
      if (complete) this.#fresh.clear()
      else if (this.#history !== undefined && !this.#closed) this.#reread = true
    }
  }

  /**
   * Delivers every entry after the last id delivered that a source here wants, up to the stream's end, in pages,
   * with the held live messages merged in by id. After a reconnect (`missed`), reports what the stream lost.
   */
  async #readToEnd (history: RedisStreamsHistory, missed: boolean): Promise<void> {
    const host = this.#host
    let count = PAGE
    let delivered = 0
    for (;;) {
      const cursor = this.#lastId ?? '0-0'
      // Inclusive of the cursor: finding it again proves nothing after it was trimmed.
      // A page that could not be read in time is asked again smaller: its messages may be large, the machine busy.
      const entries = await this.#retried(() => history.page(cursor, count + 1), () => { count = Math.max(1, Math.floor(count / 4)) })
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
          this.seen(message.position as string)
        }
      }
      if (rest.length > 0) this.seen(rest[rest.length - 1][0])
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

  /**
   * Runs a read until it succeeds, backing off (`failed` is told of each failure); undefined after READ_ATTEMPTS
   * failures or once closed.
   */
  async #retried<T> (read: () => Promise<T>, failed?: () => void): Promise<T | undefined> {
    for (let attempt = 1; attempt <= READ_ATTEMPTS && !this.#closed; attempt++) {
      try {
        if (this.#client?.status !== 'ready') throw new Error('Redis is not connected')
        return await this.#bounded(read())
      } catch (err) {
        this.#host.log.debug({ err, attempt }, 'fastify-event-sources: history read failed; retrying')
        failed?.()
        await sleep(Math.min(attempt * 250, 2000))
      }
    }
    return undefined
  }

  async #bounded<T> (operation: Promise<T>): Promise<T> {
    return bounded(operation, this.#timeout)
  }
}
