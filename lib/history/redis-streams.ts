import type { Redis } from 'ioredis'
import { matchesTarget } from '../target'
export { isAfter } from '../position'
import type { PublishedMessage, ReplayResult } from './history'

const STREAM_ID = /^\d+-\d+$/

/**
 * Appends to the stream and publishes in one step, so that the stream's order and the channel's order are
 * the same on every instance. The channel payload is `<stream id>\n<body>`.
 */
export const APPEND_AND_PUBLISH = `local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'm', ARGV[2])
redis.call('PUBLISH', ARGV[3], id .. '\\n' .. ARGV[2])
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

export function decode (body: string, id: string | undefined): PublishedMessage {
  const parsed = JSON.parse(body) as PublishedMessage
  if (typeof parsed !== 'object' || parsed === null || typeof parsed.data !== 'string') throw new TypeError('not a published message')
  const message: PublishedMessage = { data: parsed.data }
  if (parsed.event !== undefined) message.event = parsed.event
  if (id !== undefined) {
    message.id = id
    message.position = id
  } else if (parsed.id !== undefined) message.id = parsed.id
  if (parsed.retry !== undefined) message.retry = parsed.retry
  if (parsed.to !== undefined) message.to = parsed.to
  return message
}

type Entry = [id: string, fields: string[]]

/** Reads the shared history kept in a Redis Stream: the stream id is the SSE id. */
export class RedisStreamsHistory {
  #client: Redis
  #key: string

  constructor (client: Redis, key: string) {
    this.#client = client
    this.#key = key
  }

  async readAfter (lastEventId: string, identifier: string): Promise<ReplayResult> {
    if (STREAM_ID.test(lastEventId)) {
      const results = await this.#client.multi()
        .xrange(this.#key, lastEventId, lastEventId)
        .xrange(this.#key, '(' + lastEventId, '+')
        .exec()
      if (results === null) throw new Error('the history read was aborted')
      for (const [err] of results) if (err !== null) throw err
      const found = results[0][1] as Entry[]
      const after = results[1][1] as Entry[]
      // Still held: trimming removes only the oldest entries, so everything after it is held too.
      if (found.length > 0) return this.#result(after, identifier, false, after.length > 0 ? after[after.length - 1][0] : lastEventId)
    }
    // Not a stream id, trimmed away, or from a stream that was lost (a Redis restart without persistence).
    const all = await this.#client.xrange(this.#key, '-', '+') as Entry[]
    return this.#result(all, identifier, true, all.length > 0 ? all[all.length - 1][0] : undefined)
  }

  /** Every message after `id` (all targets), for an instance catching up after its subscription was down. */
  async after (id: string): Promise<PublishedMessage[]> {
    const entries = await this.#client.xrange(this.#key, '(' + id, '+') as Entry[]
    return this.#result(entries, undefined, false, undefined).messages
  }

  /** The newest id held, or `0-0` when the stream is empty. */
  async latestId (): Promise<string> {
    const entries = await this.#client.xrevrange(this.#key, '+', '-', 'COUNT', 1) as Entry[]
    return entries.length > 0 ? entries[0][0] : '0-0'
  }

  #result (entries: Entry[], identifier: string | undefined, gap: boolean, latestId: string | undefined): ReplayResult {
    const messages: PublishedMessage[] = []
    for (const [id, fields] of entries) {
      const body = field(fields, 'm')
      if (body === undefined) continue
      let message: PublishedMessage
      try {
        message = decode(body, id)
      } catch {
        continue
      }
      if (identifier === undefined || matchesTarget(message.to, identifier)) messages.push(message)
    }
    return latestId === undefined ? { messages, gap } : { messages, gap, latestId }
  }
}

function field (fields: string[], name: string): string | undefined {
  for (let i = 0; i + 1 < fields.length; i += 2) if (fields[i] === name) return fields[i + 1]
  return undefined
}
