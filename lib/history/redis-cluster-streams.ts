import type { Cluster } from 'ioredis'
import { matchesTarget, topicsOf } from '../target'
import { isAfter } from '../position'
import { SERVER_NOW, decode } from './redis-streams'
import type { PublishedMessage, ReplayResult } from './history'

/**
 * Where one prefix's history lives on a Redis Cluster. Everything shared (the id sequence, the ids handed out
 * but not yet written, messages to identifiers, to prefixes, to everyone and to several topics, presence, claims,
 * control) is on one slot, the sequencer's: `{<prefix>}`. A message to one topic lives on the topic's own slot,
 * with its channel: `<prefix>{t:<topic>}`. A message to several topics is written once, on the sequencer's slot,
 * so that it is written whole or not at all; it travels there on one channel per topic.
 */
export interface ClusterKeys {
  /** A one-entry stream whose XADD hands out the next id: one increasing order for the whole cluster. */
  seq: string
  /** Sorted set of ids handed out for topics and not yet written (score: the id's ms; member: the padded id). */
  pending: string
  /** Messages to no topic (identifiers, prefixes, everyone). */
  plain: string
  /** Messages to several topics. */
  multi: string
  /** The first id of this history. */
  epoch: string
  /** `{<prefix>}`: what presence, claims and runs put before their keys and channels. */
  tag: string
  /** The channel of the messages to everyone and to prefixes, and of claims and control (all on the sequencer's slot). */
  messages: string
  claims: string
  control: string
  /** The channel of the messages to one identifier (on the sequencer's slot). */
  identifier: (identifier: string) => string
  /** The channel of the messages to several topics that name this one (on the sequencer's slot). */
  multiTopic: (topic: string) => string
  /** The idempotency key's Redis key. */
  key: (key: string) => string
  /** A topic's history stream; its channel has the same name (channels and keys do not meet). */
  topic: (topic: string) => string
}

export function clusterKeys (prefix: string): ClusterKeys {
  const tag = '{' + prefix + '}'
  return {
    seq: tag + 'seq',
    pending: tag + 'pending',
    plain: tag + 'plain',
    multi: tag + 'multi',
    epoch: tag + 'epoch',
    tag,
    messages: tag + 'messages',
    claims: tag + 'claims',
    control: tag + 'control',
    identifier: identifier => tag + 'i:' + identifier,
    multiTopic: topic => tag + 'm:' + topic,
    key: key => tag + 'key:' + key,
    topic: topic => prefix + '{t:' + topic + '}'
  }
}

// CRC16/XMODEM, as Redis Cluster hashes keys (and sharded channels) to its 16384 slots.
const CRC_TABLE = new Uint16Array(256)
for (let i = 0; i < 256; i++) {
  let crc = i << 8
  for (let bit = 0; bit < 8; bit++) crc = (crc & 0x8000) !== 0 ? ((crc << 1) ^ 0x1021) & 0xffff : (crc << 1) & 0xffff
  CRC_TABLE[i] = crc
}

/** The slot of a key or sharded channel: of its hash tag (the first non-empty `{...}`) when it has one. */
export function slotOf (key: string): number {
  let bytes = Buffer.from(key)
  const open = bytes.indexOf(0x7b)
  if (open !== -1) {
    const close = bytes.indexOf(0x7d, open + 1)
    if (close > open + 1) bytes = bytes.subarray(open + 1, close)
  }
  let crc = 0
  for (const byte of bytes) crc = ((crc << 8) & 0xffff) ^ CRC_TABLE[((crc >> 8) ^ byte) & 0xff]
  return crc & 16383
}

/** An id as a member of the pending set: equal scores (the ms) then sort by the padded sequence. */
export function padded (id: string): string {
  const dash = id.indexOf('-')
  return id.slice(0, dash).padStart(16, '0') + '-' + id.slice(dash + 1).padStart(20, '0')
}

export function unpadded (member: string): string {
  const [ms, seq] = member.split('-')
  return String(BigInt(ms)) + '-' + String(BigInt(seq))
}

/**
 * Appends a message under its id, trimmed exactly (XDEL, so Redis records the newest id each stream lost). A
 * stream that already holds a larger id (a publisher that took its id later wrote first) takes the message at
 * its own next position, with the id in field `g`: a stream's positions are never below its messages' ids, so
 * reading after an id by position finds every message with a larger id.
 */
const APPEND_FUNCTION = `local function append (key, id, body, maxLen)
  local pos = id
  local added = redis.pcall('XADD', key, id, 'm', body)
  if type(added) == 'table' and added.err then pos = redis.call('XADD', key, '*', 'g', id, 'm', body) end
  local over = redis.call('XLEN', key) - maxLen
  while over > 0 do
    local old = redis.call('XRANGE', key, '-', '+', 'COUNT', math.min(over, 1000))
    local ids = {}
    for j = 1, #old do ids[j] = old[j][1] end
    redis.call('XDEL', key, unpack(ids))
    over = over - #old
  end
  return pos
end
`

/**
 * Hands out the next id on the sequencer's slot. A message to no topic or to several is written there and
 * published on its channels at once (`p`); a message to one topic is recorded as pending (`t`) until its topic
 * stream holds it. With an idempotency key seen before, returns that id and `1`, or `2` while that id is still
 * pending (its write to its topic's stream is on its way, or failed and is being given back), for at most `expire` ms.
 *
 * Past the deadline (ms, the publisher's clock) it refuses: its publisher has reported it failed.
 *
 * KEYS: seq, pending, epoch, idempotency key, stream (plain or multi). ARGV: mode, body, maxLen, keyTtl, keyed,
 * deadline, expire, then the channels.
 */
export const SEQUENCE = APPEND_FUNCTION + `local function member (id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return ms, string.rep('0', 16 - #ms) .. ms .. '-' .. string.rep('0', 20 - #seq) .. seq
end
` + SERVER_NOW + `if now > tonumber(ARGV[6]) then return redis.error_reply('EXPIRED the publish timed out before it was sequenced') end
local keyed = ARGV[5] == '1'
if keyed then
  local seen = redis.call('GET', KEYS[4])
  if seen then
    local _, padded = member(seen)
    local since = redis.call('ZSCORE', KEYS[2], padded)
    if since and tonumber(since) >= now - tonumber(ARGV[7]) then return {seen, 2} end
    return {seen, 1}
  end
end
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '1', '*', 'n', '')
redis.call('SET', KEYS[3], id, 'NX')
if keyed then redis.call('SET', KEYS[4], id, 'PX', ARGV[4]) end
if ARGV[1] == 'p' then
  local pos = append(KEYS[5], id, ARGV[2], tonumber(ARGV[3]))
  for i = 8, #ARGV do redis.call('SPUBLISH', ARGV[i], id .. ' ' .. pos .. '\\n' .. ARGV[2]) end
else
  local ms, padded = member(id)
  redis.call('ZADD', KEYS[2], ms, padded)
end
return {id, 0}`

/** Without history: a message published on several channels of one slot at once. KEYS: a key of that slot. ARGV: payload, channels. */
export const PUBLISH_MANY = `for i = 2, #ARGV do redis.call('SPUBLISH', ARGV[i], ARGV[1]) end
return 1`

/**
 * Writes a topic message under its id on the topic's own slot and publishes it there, in one step.
 * KEYS: the topic stream (also its channel). ARGV: id, body, maxLen, ttl (0: none).
 */
export const APPEND = APPEND_FUNCTION + `local pos = append(KEYS[1], ARGV[1], ARGV[2], tonumber(ARGV[3]))
if tonumber(ARGV[4]) > 0 then redis.call('PEXPIRE', KEYS[1], ARGV[4]) end
redis.call('SPUBLISH', KEYS[1], ARGV[1] .. ' ' .. pos .. '\\n' .. ARGV[2])
return pos`

/** A publish that failed: its id is no longer pending, and its idempotency key is forgotten. KEYS: pending, key. ARGV: padded id, id. */
export const ABORT = `redis.call('ZREM', KEYS[1], ARGV[1])
if redis.call('GET', KEYS[2]) == ARGV[2] then redis.call('DEL', KEYS[2]) end
return 1`

/**
 * The low end of what is in flight: up to ARGV[2] of the lowest pending ids (ids handed out whose topic streams
 * may not hold them yet), after forgetting those older than ARGV[1] ms (their publisher gave up), and the last id
 * handed out. Every id below the first pending one is written everywhere it goes.
 * KEYS: seq, pending.
 */
export const WATERMARK = SERVER_NOW + `redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. string.format('%.0f', now - tonumber(ARGV[1])))
local low = redis.call('ZRANGE', KEYS[2], 0, tonumber(ARGV[2]) - 1)
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
return {last[1] and last[1][1] or '0-0', low}`

/** Pending ids read at most per watermark read. */
export const WATERMARK_COUNT = 64

export interface Watermark {
  /** The last id handed out. */
  last: string
  /** The lowest ids handed out and not yet written everywhere, oldest first (at most WATERMARK_COUNT). */
  pending: string[]
}

export function parseWatermark (reply: unknown): Watermark {
  const [last, low] = reply as [string, string[]]
  return { last, pending: low.map(unpadded) }
}

/** The id just before `id`: a position no message has, below every id at or after `id`. */
export function before (id: string): string {
  const [ms, seq] = id.split('-').map(BigInt)
  if (seq > 0n) return `${ms}-${seq - 1n}`
  return ms > 0n ? `${ms - 1n}-9007199254740991` : '0-0'
}

/** Everything below this is written wherever it goes: the end of what a reader may take from the streams. */
export function completeBelow (mark: Watermark): string {
  return mark.pending.length > 0 ? before(mark.pending[0]) : mark.last
}

export type Entry = [id: string, fields: string[]]

/** A stream entry: its message (id and position: the message's id) and where it sits in its stream. */
export interface ClusterEntry {
  message: PublishedMessage
  pos: string
}

export function decodeClusterEntries (entries: Entry[]): ClusterEntry[] {
  const out: ClusterEntry[] = []
  for (const [pos, fields] of entries) {
    let body: string | undefined
    let id = pos
    for (let i = 0; i + 1 < fields.length; i += 2) {
      if (fields[i] === 'm') body = fields[i + 1]
      else if (fields[i] === 'g') id = fields[i + 1]
    }
    if (body === undefined) continue
    try {
      out.push({ message: decode(body, id), pos })
    } catch {}
  }
  return out
}

/** A channel payload: `<id> <pos>\n<body>`. */
export function decodePayload (payload: string): ClusterEntry {
  const newline = payload.indexOf('\n')
  const head = payload.slice(0, newline)
  const space = head.indexOf(' ')
  const id = space === -1 ? head : head.slice(0, space)
  const pos = space === -1 ? head : head.slice(space + 1)
  return { message: decode(payload.slice(newline + 1), id === '' ? undefined : id), pos }
}

const STREAM_ID = /^\d+-\d+$/
const MAX_ID_PART = 2n ** 64n - 1n

function isStreamId (id: string): boolean {
  if (!STREAM_ID.test(id)) return false
  const dash = id.indexOf('-')
  return BigInt(id.slice(0, dash)) <= MAX_ID_PART && BigInt(id.slice(dash + 1)) <= MAX_ID_PART
}

export function compareIds (a: string, b: string): number {
  return a === b ? 0 : isAfter(a, b) ? 1 : -1
}

export const PAGE = 100

function fields (reply: unknown[]): Map<string, unknown> {
  const info = new Map<string, unknown>()
  for (let i = 0; i + 1 < reply.length; i += 2) info.set(String(reply[i]), reply[i + 1])
  return info
}

export interface StreamRead {
  entries: ClusterEntry[]
  /** The stream lost an entry after the start (trimmed), or may have been dropped (idle past ttl) since. */
  gap: boolean
}

/** Reads the history spread over a Redis Cluster: each stream on its own slot, merged by id. */
export class RedisClusterHistory {
  #client: Cluster
  #keys: ClusterKeys
  #ttl: number
  #expire: number

  /** `ttl`: ms a topic stream is kept idle (0: no limit). `expire`: ms a pending id is waited for. */
  constructor (client: Cluster, keys: ClusterKeys, ttl: number, expire: number) {
    this.#client = client
    this.#keys = keys
    this.#ttl = ttl
    this.#expire = expire
  }

  async watermark (): Promise<Watermark> {
    const keys = this.#keys
    return parseWatermark(await this.#client.eval(WATERMARK, 2, keys.seq, keys.pending, this.#expire, WATERMARK_COUNT))
  }

  /**
   * Every entry of one stream after position `after`, in pages, and whether it lost any of them. `topic`: a
   * topic stream, which Redis drops when idle for ttl (a dropped one is a gap only if it may have held entries
   * after `after`).
   */
  async readStream (stream: string, after: string, topic: boolean): Promise<StreamRead> {
    const placed = isStreamId(after) && after !== '0-0'
    const results = await this.#client.pipeline().xinfo('STREAM', stream).xrange(stream, placed ? '(' + after : '-', '+', 'COUNT', PAGE).exec()
    if (results === null) throw new Error('the history read was aborted')
    const [infoErr, infoReply] = results[0]
    const dropped = topic && this.#ttl > 0 && placed && Number(after.split('-')[0]) < Date.now() - this.#ttl - 1000
    if (infoErr !== null) {
      if (!/no such key/i.test(infoErr.message)) throw infoErr
      return { entries: [], gap: dropped }
    }
    if (results[1][0] !== null) throw results[1][0]
    const info = fields(infoReply as unknown[])
    const deleted = info.get('max-deleted-entry-id')
    const first = (info.get('first-entry') as Entry | null | undefined)?.[0]
    let gap = placed && typeof deleted === 'string' && isAfter(deleted, after)
    if (dropped && (first === undefined || isAfter(first, after))) gap = true
    let page = results[1][1] as Entry[]
    const entries: ClusterEntry[] = []
    for (;;) {
      entries.push(...decodeClusterEntries(page))
      if (page.length < PAGE) break
      page = await this.#client.xrange(stream, '(' + page[page.length - 1][0], '+', 'COUNT', PAGE) as Entry[]
    }
    return { entries, gap }
  }

  /**
   * Merges, in id order and once each, what the followed streams hold after `lastEventId` up to what is
   * complete: the plain stream (filtered to this identifier), each topic's, and the stream of messages to several
   * topics (filtered to these). `released`: the last id this instance delivered live, which its streams hold even
   * if its publish has not completed yet.
   */
  async readAfter (lastEventId: string, identifier: string | undefined, topics: readonly string[], released: string): Promise<ReplayResult> {
    const keys = this.#keys
    const placed = isStreamId(lastEventId)
    // The watermark first: every id below it was written before the streams are read.
    const sequencer = await this.#client.pipeline().get(keys.epoch).eval(WATERMARK, 2, keys.seq, keys.pending, this.#expire, WATERMARK_COUNT).exec()
    if (sequencer === null) throw new Error('the history read was aborted')
    for (const [err] of sequencer) if (err !== null) throw err
    const epoch = sequencer[0][1] as string | null
    const mark = parseWatermark(sequencer[1][1])
    let cut = completeBelow(mark)
    if (isAfter(released, cut)) cut = released
    let gap = !placed || epoch === null || isAfter(epoch, lastEventId)
    const start = placed ? lastEventId : '0-0'
    const followed = new Set(topics)
    const sources: [Promise<StreamRead>, ((message: PublishedMessage) => boolean) | undefined][] = topics.map(topic => [this.readStream(keys.topic(topic), start, true), undefined])
    if (identifier !== undefined) sources.push([this.readStream(keys.plain, start, false), message => matchesTarget(message.to, identifier)])
    if (topics.length > 0) sources.push([this.readStream(keys.multi, start, false), message => topicsOf(message.to)?.some(topic => followed.has(topic)) === true])
    const reads = await Promise.all(sources.map(([read]) => read))
    const messages: PublishedMessage[] = []
    const seen = new Set<string>()
    reads.forEach((read, i) => {
      if (read.gap) gap = true
      const keep = sources[i][1]
      for (const { message } of read.entries) {
        const id = message.id as string
        if ((placed && !isAfter(id, lastEventId)) || isAfter(id, cut) || seen.has(id)) continue
        if (keep !== undefined && !keep(message)) continue
        seen.add(id)
        messages.push(message)
      }
    })
    messages.sort((a, b) => compareIds(a.id as string, b.id as string))
    // Live copies at or before the cut were either read here or are not for this source.
    const position = !gap && placed && isAfter(lastEventId, cut) ? lastEventId : cut
    return { messages, gap, latestId: position, position }
  }
}
