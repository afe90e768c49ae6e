import { randomUUID } from 'node:crypto'
import type { Redis } from 'ioredis'
import { FST_ERR_SSE_ADAPTER, FST_ERR_SSE_PUBLISH_FAILED } from '../errors'
import { decode, encode } from '../history/redis-streams'
import type { PublishedMessage } from '../history/history'
import type { RunEntry, RunPage, RunSettings, RunSink, RunState, RunStore } from '../../types/index'

/** Takes the key: the lease, then a clean log (an ended run of the key is forgotten). */
const BEGIN = `if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  redis.call('DEL', KEYS[2], KEYS[3], KEYS[4])
  return 1
end
return 0`

/** Stores an event while this instance holds the lease, and publishes it with its place and stream id. */
const APPEND = `if redis.call('GET', KEYS[2]) ~= ARGV[1] then return redis.error_reply('LEASE the run lease was lost') end
local id = redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[2], '*', 'n', ARGV[3], 'm', ARGV[4])
redis.call('PUBLISH', ARGV[5], ARGV[6] .. '\\n' .. ARGV[3] .. '\\n0\\n' .. id .. '\\n' .. ARGV[4])
return id`

/**
 * The end event, once: by the lease holder (ARGV[1]), or with ARGV[1] empty by whoever noticed that nobody holds
 * the lease any more ('lost'). Numbers the event after the last one held when ARGV[3] is 0.
 */
const FINISH = `if redis.call('EXISTS', KEYS[3]) == 1 then return false end
local owner = redis.call('GET', KEYS[2])
if owner and owner ~= ARGV[1] then return false end
local n = tonumber(ARGV[3])
if n == 0 then
  n = 1
  local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
  if #last > 0 then
    local fields = last[1][2]
    for i = 1, #fields, 2 do if fields[i] == 'n' then n = tonumber(fields[i + 1]) + 1 end end
  end
end
local id = redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[7], '*', 'n', n, 'm', ARGV[4], 'e', '1')
redis.call('SET', KEYS[3], id, 'PX', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
if owner then redis.call('DEL', KEYS[2]) end
redis.call('PUBLISH', ARGV[5], ARGV[6] .. '\\n' .. n .. '\\n1\\n' .. id .. '\\n' .. ARGV[4])
return id`

const RENEW = `if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0`

const STREAM_ID = /^\d+-\d+$/

type Entry = [id: string, fields: string[]]

export interface RedisRunOptions {
  /** ms a producer's lease lasts without renewal: followers elsewhere get 'lost' within about this plus a beat. */
  lease: number
  /** ms any one command may wait for Redis (the adapter's publishTimeout) */
  timeout: number
}

/**
 * Runs through Redis: per key a stream `<prefix>run:<key>` (the log, trimmed exactly to maxEvents, kept `ttl`
 * after the end), a lease `<prefix>run:<key>:lease` (SET NX PX, renewed by the shared beat) and an end marker
 * `<prefix>run:<key>:end` (the end event's id). Events travel on `<prefix>runs`, cancels on `<prefix>runs:cancel`,
 * each on this store's own subscription.
 */
export class RedisRunStore implements RunStore {
  readonly beatInterval: number
  readonly eventChannel: string
  readonly cancelChannel: string
  #prefix: string
  #lease: number
  #timeout: number
  #sink: RunSink
  #instance = randomUUID()
  #client: Redis | undefined
  #opening: Promise<Redis> | undefined
  #open: () => Promise<[client: Redis, subscriber: Redis]>
  #deliverToTopic: (message: PublishedMessage) => void

  /**
   * `open` gives the adapter's command connection and a new one to subscribe on, once runs are first used: an
   * instance that never runs nor follows one holds no connection for them.
   */
  constructor (prefix: string, options: RedisRunOptions, sink: RunSink, open: () => Promise<[Redis, Redis]>, deliverToTopic: (message: PublishedMessage) => void) {
    this.#prefix = prefix
    this.#open = open
    this.#lease = options.lease
    this.#timeout = options.timeout
    this.beatInterval = Math.max(50, Math.floor(options.lease / 4))
    this.eventChannel = prefix + 'runs'
    this.cancelChannel = prefix + 'runs:cancel'
    this.#sink = sink
    this.#deliverToTopic = deliverToTopic
  }

  async #connect (): Promise<Redis> {
    const [client, subscriber] = await this.#open()
    subscriber.on('message', (channel: string, payload: string) => {
      if (channel === this.eventChannel) this.#onEvent(payload)
      else if (channel === this.cancelChannel) this.#sink.cancelled(payload)
    })
    await subscriber.subscribe(this.eventChannel, this.cancelChannel)
    this.#client = client
    return client
  }

  #redis (): Promise<Redis> {
    if (this.#client !== undefined) return Promise.resolve(this.#client)
    const opening = (this.#opening ??= this.#connect())
    // A failed first connection is tried again on the next call.
    opening.catch(() => { if (this.#opening === opening) this.#opening = undefined })
    return opening
  }

  async begin (key: string): Promise<boolean> {
    const k = this.#keys(key)
    return await this.#bounded(async () => (await this.#redis()).eval(BEGIN, 4, k.lease, k.log, k.end, k.followed, this.#instance, this.#lease), true) === 1
  }

  async append (key: string, entry: RunEntry, settings: RunSettings): Promise<void> {
    const k = this.#keys(key)
    await this.#bounded(async () => (await this.#redis()).eval(APPEND, 2, k.log, k.lease, this.#instance, settings.maxEvents, entry.n, encode(entry.message, false), this.eventChannel, key), true)
  }

  /** Also ends a lost run, from any instance: only while nobody holds the lease, and once. */
  async finish (key: string, entry: RunEntry, settings: RunSettings): Promise<boolean> {
    const k = this.#keys(key)
    const id = await this.#bounded(async () => (await this.#redis()).eval(FINISH, 3, k.log, k.lease, k.end, this.#instance, settings.ttl, entry.n, encode(entry.message, false), this.eventChannel, key, settings.maxEvents), true)
    return id !== null
  }

  async read (key: string, after: string | undefined, limit: number): Promise<RunPage | undefined> {
    const k = this.#keys(key)
    const multi = (await this.#bounded(() => this.#redis())).multi().exists(k.lease, k.log)
    const known = after !== undefined && STREAM_ID.test(after)
    if (known) multi.xrange(k.log, after, after).xrange(k.log, '(' + after, '+', 'COUNT', limit + 1)
    else multi.xrange(k.log, '-', '+', 'COUNT', limit + 1)
    const results = await this.#bounded(() => multi.exec())
    if (results === null) throw new Error('the run read was aborted')
    for (const [err] of results) if (err !== null) throw err
    if (results[0][1] === 0) return undefined
    let found: RunEntry | undefined
    let raw: Entry[]
    if (known) {
      const at = results[1][1] as Entry[]
      found = at.length > 0 ? toEntry(at[0]) : undefined
      raw = results[2][1] as Entry[]
      if (found === undefined) {
        // Not in this run's log (another run's id, or trimmed): from the start.
        return this.read(key, undefined, limit)
      }
    } else {
      raw = results[1][1] as Entry[]
    }
    const more = raw.length > limit
    const entries: RunEntry[] = []
    for (const item of more ? raw.slice(0, limit) : raw) {
      const entry = toEntry(item)
      if (entry !== undefined) entries.push(entry)
    }
    const from = found === undefined ? 1 : found.n + 1
    const gap = entries.length > 0 && entries[0].n > from
    const next = entries.length > 0 ? entries[entries.length - 1].n + 1 : from
    return { entries, gap, next, more, ended: found?.end === true }
  }

  async state (key: string): Promise<{ state: RunState, endId: string | undefined } | undefined> {
    const k = this.#keys(key)
    const results = await this.#bounded(async () => (await this.#redis()).multi().exists(k.lease).get(k.end).exists(k.log).exec())
    if (results === null) throw new Error('the run state read was aborted')
    for (const [err] of results) if (err !== null) throw err
    if (results[0][1] === 1) return { state: 'running', endId: undefined }
    const endId = results[1][1] as string | null
    if (endId !== null) return { state: 'ended', endId }
    if (results[2][1] === 0) return undefined
    // A log with neither a lease nor an end: its producer died unnoticed. It ends as lost now.
    this.#sink.lost(key)
    return { state: 'running', endId: undefined }
  }

  async cancel (key: string): Promise<boolean> {
    const client = await this.#bounded(() => this.#redis(), true)
    if (await this.#bounded(() => client.exists(this.#keys(key).lease), true) === 0) return false
    await this.#bounded(() => client.publish(this.cancelChannel, key), true)
    return true
  }

  async beat (running: readonly string[], followed: readonly string[]): Promise<string[]> {
    const client = this.#client
    if (client?.status !== 'ready') return []
    const mine = new Set(running)
    const watched = followed.filter(key => !mine.has(key))
    if (running.length === 0 && followed.length === 0) return []
    const pipeline = client.pipeline()
    // Followed here: say so for abandonAfter on the producer's instance, for a few beats.
    for (const key of followed) pipeline.set(this.#keys(key).followed, '1', 'PX', this.beatInterval * 3)
    for (const key of running) pipeline.eval(RENEW, 1, this.#keys(key).lease, this.#instance, this.#lease).exists(this.#keys(key).followed)
    for (const key of watched) pipeline.exists(this.#keys(key).lease)
    const results = await pipeline.exec()
    if (results === null) return []
    const seen: string[] = []
    let i = followed.length
    for (const key of running) {
      const [err, count] = results[i + 1]
      if (err === null && count === 1) seen.push(key)
      i += 2
    }
    for (const key of watched) {
      const [err, count] = results[i++]
      // No lease: the run ended (its followers here may have missed the end on a dropped subscription) or its
      // producer is gone. Either way the sink ends it as lost if nobody did, and reads the end to its followers.
      if (err === null && count === 0) this.#sink.lost(key)
    }
    return seen
  }

  /** The adapter closes the connections. */
  async close (): Promise<void> {
    this.#client = undefined
  }

  #onEvent (payload: string): void {
    // <key>\n<n>\n<end>\n<id>\n<body>: a key has no line break (it is a topic).
    const a = payload.indexOf('\n')
    const b = payload.indexOf('\n', a + 1)
    const c = payload.indexOf('\n', b + 1)
    const d = payload.indexOf('\n', c + 1)
    if (a < 0 || b < 0 || c < 0 || d < 0) return
    let message
    try {
      message = decode(payload.slice(d + 1), payload.slice(c + 1, d))
    } catch (err) {
      this.#sink.log.warn({ err, channel: this.eventChannel }, 'fastify-event-sources: ignored a malformed run event from Redis')
      return
    }
    const entry: RunEntry = { n: Number(payload.slice(a + 1, b)), end: payload.slice(b + 1, c) === '1', message }
    this.#deliverToTopic(message)
    this.#sink.deliver(payload.slice(0, a), entry)
  }

  /** A user's client may queue commands while Redis is away: never wait longer than the adapter's publishTimeout. */
  async #bounded<T> (operation: () => Promise<T>, writes = false): Promise<T> {
    let timer: NodeJS.Timeout | undefined
    const expired = new Promise<never>((resolve, reject) => {
      timer = setTimeout(reject, this.#timeout, new Error(`Redis did not answer within ${this.#timeout} ms`))
      timer.unref()
    })
    try {
      return await Promise.race([operation(), expired])
    } catch (err) {
      // A coded error, as for publish: a write that may not have happened (503), or a read that could not be made.
      if ((err as { code?: unknown }).code !== undefined && String((err as { code: unknown }).code).startsWith('FST_ERR_SSE_')) throw err
      const message = (err as Error).message
      throw writes ? new FST_ERR_SSE_PUBLISH_FAILED(message, { cause: err }) : new FST_ERR_SSE_ADAPTER(message, { cause: err })
    } finally {
      clearTimeout(timer)
    }
  }

  #keys (key: string): { log: string, lease: string, end: string, followed: string } {
    const log = this.#prefix + 'run:' + key
    return { log, lease: log + ':lease', end: log + ':end', followed: log + ':followed' }
  }
}

function toEntry ([id, fields]: Entry): RunEntry | undefined {
  let n: number | undefined
  let body: string | undefined
  let end = false
  for (let i = 0; i + 1 < fields.length; i += 2) {
    if (fields[i] === 'n') n = Number(fields[i + 1])
    else if (fields[i] === 'm') body = fields[i + 1]
    else if (fields[i] === 'e') end = true
  }
  if (n === undefined || body === undefined) return undefined
  try {
    return { n, end, message: decode(body, id) }
  } catch {
    return undefined
  }
}
