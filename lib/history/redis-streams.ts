import type { Redis } from 'ioredis'
import { matchesTarget, topicsOf } from '../target'
import { isAfter } from '../position'
export { isAfter }
import type { PublishedMessage, ReplayResult } from './history'

/** Where one prefix's history lives. */
export interface StreamKeys {
  /** Every message, in publish order: the one id sequence, the catch-up after an outage, idempotency keys. */
  log: string
  /** Messages to no topic (identifiers, prefixes, everyone), trimmed on their own. */
  plain: string
  /** Followed by the topic: one stream per topic, trimmed on its own. */
  topic: string
  /** Sorted set of topics with a history, scored by their last publish: the oldest are dropped first. */
  topics: string
  /** The time (ms) of the newest publish to a topic history that was dropped. */
  dropped: string
  /** The first id of this history: an id before it comes from a history Redis lost. */
  epoch: string
}

export function streamKeys (prefix: string): StreamKeys {
  return {
    log: prefix + 'stream',
    plain: prefix + 'plain',
    topic: prefix + 'topic:',
    topics: prefix + 'topics',
    dropped: prefix + 'dropped',
    epoch: prefix + 'epoch'
  }
}

const STREAM_ID = /^\d+-\d+$/
const MAX_ID_PART = 2n ** 64n - 1n

/** Whether Redis takes the id as a stream id: `<ms>-<seq>`, each part a 64-bit unsigned integer (it refuses larger ones). */
function isStreamId (id: string): boolean {
  if (!STREAM_ID.test(id)) return false
  const dash = id.indexOf('-')
  return BigInt(id.slice(0, dash)) <= MAX_ID_PART && BigInt(id.slice(dash + 1)) <= MAX_ID_PART
}

/** Entries read per XRANGE: a replay or a catch-up from far back never holds the whole backlog in one reply. */
export const PAGE = 100

/** Lua that sets `now` to the Redis server's time in ms: scripts that expire entries agree on one clock, Redis's own. */
export const SERVER_NOW = `local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
`

/**
 * Appends and publishes in one step, so that the log's order and the channel's order are the same on every
 * instance. The log's id is the message's id everywhere: it is written with that same explicit id to its target
 * streams (the plain one, or each topic's), so one sequence orders every stream. Target streams are trimmed
 * exactly, with XDEL, so that Redis records the newest id each one lost (`max-deleted-entry-id`). Topic histories
 * idle for `ttl` ms, or past `maxTopics` (least recently published first), are deleted, and the time of their
 * last publish is kept as the drop watermark. The message is published on each of its channels (its topics', its
 * identifier's, or the one every instance listens to) as `<id>\n<body>`. With an idempotency key, a key seen before
 * whose message the log still holds returns that message's id and stores nothing.
 *
 * KEYS: log, epoch, topic index, drop watermark, idempotency key, target streams...
 * ARGV: maxLen, body, number of topics, keyTtl, keyed ('1' or '0'), maxTopics (0: no bound), ttl (0: none), topic
 * key prefix, topics... (in the order of their streams in KEYS), channels...
 */
export const APPEND_AND_PUBLISH = `local keyed = ARGV[5] == '1'
if keyed then
  local seen = redis.call('GET', KEYS[5])
  if seen and #redis.call('XRANGE', KEYS[1], seen, seen) > 0 then return seen end
end
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'm', ARGV[2])
redis.call('SET', KEYS[2], id, 'NX')
local maxLen = tonumber(ARGV[1])
for i = 6, #KEYS do
  local added = redis.pcall('XADD', KEYS[i], id, 'm', ARGV[2])
  if not (type(added) == 'table' and added.err) then
    local over = redis.call('XLEN', KEYS[i]) - maxLen
    while over > 0 do
      local old = redis.call('XRANGE', KEYS[i], '-', '+', 'COUNT', math.min(over, 1000))
      local ids = {}
      for j = 1, #old do ids[j] = old[j][1] end
      redis.call('XDEL', KEYS[i], unpack(ids))
      over = over - #old
    end
  end
end
local ms, seq = string.match(id, '^(%d+)-(%d+)$')
ms = tonumber(ms)
local score = ms * 1000 + math.min(tonumber(seq), 999)
local lastTopic = 8 + tonumber(ARGV[3])
for i = 9, lastTopic do redis.call('ZADD', KEYS[3], score, ARGV[i]) end
local watermark = 0
local function drop (list)
  for j = 1, #list, 2 do
    redis.call('DEL', ARGV[8] .. list[j])
    redis.call('ZREM', KEYS[3], list[j])
    local at = math.floor(tonumber(list[j + 1]) / 1000)
    if at > watermark then watermark = at end
  end
end
local ttl = tonumber(ARGV[7])
if ttl > 0 then drop(redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', string.format('%.0f', (ms - ttl) * 1000 + 999), 'WITHSCORES')) end
local maxTopics = tonumber(ARGV[6])
if maxTopics > 0 then
  local excess = redis.call('ZCARD', KEYS[3]) - maxTopics
  if excess > 0 then drop(redis.call('ZRANGE', KEYS[3], 0, excess - 1, 'WITHSCORES')) end
end
if watermark > tonumber(redis.call('GET', KEYS[4]) or '0') then redis.call('SET', KEYS[4], string.format('%.0f', watermark)) end
local payload = id .. '\\n' .. ARGV[2]
for i = lastTopic + 1, #ARGV do redis.call('PUBLISH', ARGV[i], payload) end
if keyed then redis.call('SET', KEYS[5], id, 'PX', ARGV[4]) end
return id`

export interface AppendOptions {
  maxLen: number
  /** The idempotency key's Redis key, and how long (ms) it is kept. */
  key?: { name: string, ttl: number }
  /** Topic streams kept (0: no bound), and how long (ms) an idle one is kept (0: no limit). */
  maxTopics: number
  ttl: number
}

/** The arguments of `EVAL APPEND_AND_PUBLISH` for one message: its keys and values, in the script's order. */
export function appendArguments (keys: StreamKeys, channels: string[], message: PublishedMessage, options: AppendOptions): [number, ...(string | number)[]] {
  const topics = topicsOf(message.to) ?? []
  const targets = topics.length > 0 ? topics.map(topic => keys.topic + topic) : [keys.plain]
  const all = [keys.log, keys.epoch, keys.topics, keys.dropped, options.key?.name ?? keys.log, ...targets]
  return [
    all.length, ...all,
    options.maxLen, encode(message, false), topics.length, options.key?.ttl ?? 0, options.key === undefined ? '0' : '1',
    options.maxTopics, options.ttl, keys.topic, ...topics, ...channels
  ]
}

/** The message as stored and carried; the id is left out when the stream gives one. */
export function encode (message: PublishedMessage, withId: boolean): string {
  const body: PublishedMessage = { data: message.data }
  if (message.event !== undefined) body.event = message.event
  if (withId && message.id !== undefined) body.id = message.id
  if (message.retry !== undefined) body.retry = message.retry
  if (message.to !== undefined) body.to = message.to
  return JSON.stringify(body)
}

/** `id` is the stream id when the message came through the stream: it is then also the message's position. */
export function decode (body: string, id: string | undefined): PublishedMessage {
  const parsed = JSON.parse(body) as PublishedMessage
  if (typeof parsed !== 'object' || parsed === null || typeof parsed.data !== 'string') throw new TypeError('not a published message')
  const message: PublishedMessage = { data: parsed.data }
  if (parsed.event !== undefined) message.event = parsed.event
  if (id !== undefined) {
    message.id = id
    message.position = id
  } else if (parsed.id !== undefined) {
    message.id = parsed.id
  }
  if (parsed.retry !== undefined) message.retry = parsed.retry
  if (parsed.to !== undefined) message.to = parsed.to
  return message
}

type Entry = [id: string, fields: string[]]

/** Whether the stream still holds everything after an id, and the newest id it holds. */
export interface Continuity {
  gap: boolean
  latestId: string | undefined
}

/** Reads the shared history kept in a Redis Stream: the stream id is the SSE id. */
export class RedisStreamsHistory {
  #client: Redis
  #key: string
  #keys: StreamKeys
  #maxLen: number

  /** `maxLen`: what each target stream is trimmed to (only Redis < 7, which records no deleted id, needs it). */
  constructor (client: Redis, keys: StreamKeys, maxLen = Infinity) {
    this.#client = client
    this.#key = keys.log
    this.#keys = keys
    this.#maxLen = maxLen
  }

  /**
   * Merges, in id order and once each, what the followed streams hold after `lastEventId`: the plain stream
   * (filtered to this identifier) and each topic's. A gap is any followed stream that lost an entry after it
   * (`max-deleted-entry-id`), a topic history dropped since then, or an id this history cannot place.
   */
  async readAfter (lastEventId: string, identifier: string | undefined, topics: readonly string[] = []): Promise<ReplayResult> {
    const keys = this.#keys
    const placed = isStreamId(lastEventId)
    const start = placed ? '(' + lastEventId : '-'
    const streams = identifier === undefined ? [] : [keys.plain]
    for (const topic of topics) streams.push(keys.topic + topic)
    const multi = this.#client.multi().get(keys.epoch).get(keys.dropped).xrevrange(keys.log, '+', '-', 'COUNT', 1)
    for (const stream of streams) multi.xinfo('STREAM', stream).xrange(stream, start, '+', 'COUNT', PAGE)
    const results = await multi.exec()
    if (results === null) throw new Error('the history read was aborted')
    const value = (i: number): unknown => {
      const [err, reply] = results[i]
      if (err !== null) throw err
      return reply
    }
    const epoch = value(0) as string | null
    // Not a stream id, or older than this history: from a history Redis lost (a restart without persistence).
    let gap = !placed || epoch === null || isAfter(epoch, lastEventId)
    const droppedSince = placed && Number(value(1) ?? 0) >= Number(lastEventId.split('-')[0])
    const newest = value(2) as Entry[]
    let messages: PublishedMessage[] = []
    for (let i = 0; i < streams.length; i++) {
      const isTopic = identifier === undefined || i > 0
      const [infoErr, infoReply] = results[3 + 2 * i]
      if (infoErr !== null) {
        if (!/no such key/i.test(infoErr.message)) throw infoErr
        // Never published to, or dropped: only a drop since that id can have lost something.
        if (isTopic && droppedSince) gap = true
        continue
      }
      const info = fields(infoReply as unknown[])
      const deleted = info.get('max-deleted-entry-id')
      const first = (info.get('first-entry') as Entry | null | undefined)?.[0]
      if (placed && typeof deleted === 'string' && isAfter(deleted, lastEventId)) gap = true
      // Redis 6.2 records no deleted id: a full stream that starts after the id may have trimmed past it.
      if (placed && deleted === undefined && first !== undefined && isAfter(first, lastEventId) && Number(info.get('length')) >= this.#maxLen) gap = true
      // A topic history may have been dropped and started again since: it then holds nothing from before the id.
      if (isTopic && droppedSince && (first === undefined || isAfter(first, lastEventId))) gap = true
      let page = value(4 + 2 * i) as Entry[]
      const stream = streams[i]
      const filter = isTopic ? undefined : identifier
      for (;;) {
        for (const message of decodeEntries(page)) if (filter === undefined || matchesTarget(message.to, filter)) messages.push(message)
        if (page.length < PAGE) break
        page = await this.#client.xrange(stream, '(' + page[page.length - 1][0], '+', 'COUNT', PAGE) as Entry[]
      }
    }
    // A message to several followed topics is in each of their streams, with the same id.
    if (streams.length > 1) {
      messages.sort((a, b) => compareIds(a.id as string, b.id as string))
      messages = messages.filter((message, i) => i === 0 || message.id !== messages[i - 1].id)
    }
    const latestId = newest.length > 0 ? newest[0][0] : (gap ? undefined : lastEventId)
    return latestId === undefined ? { messages, gap } : { messages, gap, latestId }
  }

  /** Up to `count` entries from `start` (an id, `(id` for after it, or `-`). */
  async page (start: string, count: number): Promise<Entry[]> {
    return await this.#client.xrange(this.#key, start, '+', 'COUNT', count) as Entry[]
  }

  /**
   * For an id that is no longer in the stream: whether entries after it may be lost. They are not when the first
   * entry held is at or before it. Otherwise the stream was trimmed past it, or is a new stream (Redis lost the
   * old one): Redis keeps no record of what trimming removed (`max-deleted-entry-id` counts XDEL only), so anything
   * after a real id may be lost. `0-0` stands for "nothing delivered yet".
   */
  async continuity (id: string): Promise<Continuity> {
    let reply: unknown[]
    try {
      reply = await this.#client.xinfo('STREAM', this.#key) as unknown[]
    } catch (err) {
      if (/no such key/i.test((err as Error).message)) return { gap: id !== '0-0', latestId: undefined }
      throw err
    }
    const info = new Map<string, unknown>()
    for (let i = 0; i + 1 < reply.length; i += 2) info.set(String(reply[i]), reply[i + 1])
    const first = (info.get('first-entry') as Entry | null | undefined)?.[0]
    const latestId = (info.get('last-entry') as Entry | null | undefined)?.[0]
    return { gap: id !== '0-0' && (first === undefined || isAfter(first, id)), latestId }
  }

  /** The newest id held, or `0-0` when the stream is empty. */
  async latestId (): Promise<string> {
    const entries = await this.#client.xrevrange(this.#key, '+', '-', 'COUNT', 1) as Entry[]
    return entries.length > 0 ? entries[0][0] : '0-0'
  }
}

/** The entries' messages, skipping what does not decode. */
export function decodeEntries (entries: Entry[]): PublishedMessage[] {
  const messages: PublishedMessage[] = []
  for (const [id, fields] of entries) {
    const body = field(fields, 'm')
    if (body === undefined) continue
    try {
      messages.push(decode(body, id))
    } catch {}
  }
  return messages
}

function compareIds (a: string, b: string): number {
  return a === b ? 0 : isAfter(a, b) ? 1 : -1
}

/** An XINFO reply as a map. */
function fields (reply: unknown[]): Map<string, unknown> {
  const info = new Map<string, unknown>()
  for (let i = 0; i + 1 < reply.length; i += 2) info.set(String(reply[i]), reply[i + 1])
  return info
}

function field (fields: string[], name: string): string | undefined {
  for (let i = 0; i + 1 < fields.length; i += 2) if (fields[i] === name) return fields[i + 1]
  return undefined
}
