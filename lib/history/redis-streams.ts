import type { Redis } from 'ioredis'
import { matchesTarget } from '../target'
import { isAfter } from '../position'
export { isAfter }
import type { PublishedMessage, ReplayResult } from './history'

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

/**
 * Appends to the stream and publishes in one step, so that the stream's order and the channel's order are
 * the same on every instance. The channel payload is `<stream id>\n<body>`. With an idempotency key (KEYS[2]),
 * a key seen before whose message the stream still holds returns that message's id and stores nothing.
 */
export const APPEND_AND_PUBLISH = `if KEYS[2] then
  local seen = redis.call('GET', KEYS[2])
  if seen and #redis.call('XRANGE', KEYS[1], seen, seen) > 0 then return seen end
end
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'm', ARGV[2])
redis.call('PUBLISH', ARGV[3], id .. '\\n' .. ARGV[2])
if KEYS[2] then redis.call('SET', KEYS[2], id, 'PX', ARGV[4]) end
return id`

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

  constructor (client: Redis, key: string) {
    this.#client = client
    this.#key = key
  }

  async readAfter (lastEventId: string, identifier: string): Promise<ReplayResult> {
    let entries: Entry[] = []
    let gap = true
    if (isStreamId(lastEventId)) {
      // One round trip: is the id still held, and the first page after it.
      const results = await this.#client.multi()
        .xrange(this.#key, lastEventId, lastEventId)
        .xrange(this.#key, '(' + lastEventId, '+', 'COUNT', PAGE)
        .exec()
      if (results === null) throw new Error('the history read was aborted')
      for (const [err] of results) if (err !== null) throw err
      // Trimming removes only the oldest entries: if the id itself is still held, everything after it is too.
      gap = (results[0][1] as Entry[]).length === 0
      if (!gap) entries = results[1][1] as Entry[]
    }
    // Otherwise not a stream id, trimmed away, or from a stream that was lost (a Redis restart without persistence).
    if (gap) entries = await this.page('-', PAGE)
    const messages: PublishedMessage[] = []
    let latestId = gap ? undefined : lastEventId
    for (;;) {
      for (const message of decodeEntries(entries)) if (matchesTarget(message.to, identifier)) messages.push(message)
      if (entries.length > 0) latestId = entries[entries.length - 1][0]
      if (entries.length < PAGE) break
      entries = await this.page('(' + latestId, PAGE)
    }
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

function field (fields: string[], name: string): string | undefined {
  for (let i = 0; i + 1 < fields.length; i += 2) if (fields[i] === name) return fields[i + 1]
  return undefined
}
