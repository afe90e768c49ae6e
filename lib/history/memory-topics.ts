import { matchesTarget, topicsOf } from '../target'
import type { HistoryStore, PublishedMessage, ReplayResult } from './history'

export interface MemoryTopicHistoryOptions {
  /** Messages kept per topic, and for the messages not addressed to a topic. */
  size?: number
  /** Topic histories kept; past it the least recently published is dropped. */
  topics?: number
  /** A topic history with nothing published for this long (ms) is dropped. */
  ttl?: number
  /** The store's epoch (ms); ids are `<epoch>-<seq>`. */
  epoch?: number
}

export const HISTORY_DEFAULTS = { size: 1000, topics: 1000, ttl: 3_600_000 } as const

interface Held {
  seq: number
  message: PublishedMessage
  /** The idempotency key it was published with, remembered while any ring holds it. */
  key: string | undefined
  /** How many rings hold it. */
  rings: number
}

const POSITION = /^(\d+)-(\d+)$/

/** The last `size` messages of one topic (or of the messages to no topic), oldest first; grows up to `size`. */
class Ring {
  items: Held[] = []
  start = 0
  /** The newest seq pushed out: anything a reader wants after an earlier seq is partly gone. */
  evicted = 0
  last = 0
  lastPublished = 0

  /** Adds an entry; returns the one pushed out, if any. */
  push (held: Held, size: number): Held | undefined {
    held.rings++
    this.last = held.seq
    if (this.items.length < size) {
      this.items.push(held)
      return undefined
    }
    const out = this.items[this.start]
    this.evicted = out.seq
    this.items[this.start] = held
    this.start = (this.start + 1) % size
    return out
  }

  at (i: number): Held {
    return this.items[(this.start + i) % this.items.length]
  }

  /** Held entries with a seq above `seq`, oldest first. */
  after (seq: number, out: Held[]): void {
    let lo = 0
    let hi = this.items.length
    while (lo < hi) {
      const mid = (lo + hi) >>> 1
      if (this.at(mid).seq <= seq) lo = mid + 1
      else hi = mid
    }
    for (let i = lo; i < this.items.length; i++) out.push(this.at(i))
  }
}

/**
 * The default history: one ring per topic plus one for messages to no topic, so a busy topic never evicts a
 * quiet one. Positions come from one sequence across all rings (`<epoch>-<seq>`; also the id, unless publish was
 * given one), which orders a merged replay and tells, for a Last-Event-ID whose message was already trimmed,
 * exactly which followed rings lost something.
 */
export class MemoryTopicHistory implements HistoryStore {
  readonly size: number
  readonly maxTopics: number
  readonly ttl: number
  readonly epoch: string
  #seq = 0
  #latestId: string | undefined
  #latestPosition: string | undefined
  #plain = new Ring()
  /** Least recently published first: a Map keeps insertion order, and a publish re-inserts its topics. */
  #topics = new Map<string, Ring>()
  /** The newest seq any dropped topic history held: a topic no longer held may have lost anything up to it. */
  #dropped = 0
  /** Idempotency keys of held messages → their ids. */
  #keys = new Map<string, string>()
  /** Ids given to publish, of held messages → their seq: what places a Last-Event-ID that is not a position. */
  #explicit = new Map<string, number>()

  constructor (options: MemoryTopicHistoryOptions = {}) {
    this.size = options.size ?? HISTORY_DEFAULTS.size
    this.maxTopics = options.topics ?? HISTORY_DEFAULTS.topics
    this.ttl = options.ttl ?? HISTORY_DEFAULTS.ttl
    this.epoch = String(options.epoch ?? Date.now())
  }

  /** Topic histories held now. */
  get topicCount (): number {
    return this.#topics.size
  }

  /** Stores the message; a key is remembered (see `keyed`) while the message is held. */
  append (message: PublishedMessage, key?: string): string {
    const now = Date.now()
    this.#expire(now)
    const seq = ++this.#seq
    const position = this.epoch + '-' + seq
    const id = message.id ?? position
    message.position = position
    // A message given an id (a run's event, say) is held as it is, shared with whoever else keeps it.
    const held: Held = { seq, message: message.id === undefined ? { ...message, id, position } : message, key, rings: 0 }
    this.#latestId = id
    this.#latestPosition = position
    if (key !== undefined) this.#keys.set(key, id)
    if (message.id !== undefined) this.#explicit.set(id, seq)
    const topics = topicsOf(message.to)
    if (topics === undefined) {
      this.#release(this.#plain.push(held, this.size))
      return id
    }
    for (const topic of topics) {
      let ring = this.#topics.get(topic)
      if (ring === undefined) {
        // A topic dropped earlier may be coming back: what it lost up to the drops is still lost.
        ring = new Ring()
        ring.evicted = this.#dropped
      } else {
        this.#topics.delete(topic)
      }
      this.#release(ring.push(held, this.size))
      ring.lastPublished = now
      this.#topics.set(topic, ring)
    }
    while (this.#topics.size > this.maxTopics) this.#dropOldest()
    return id
  }

  /** The id of the held message published with this idempotency key, if any. */
  keyed (key: string): string | undefined {
    return this.#keys.get(key)
  }

  readAfter (lastEventId: string, identifier: string | undefined, topics?: readonly string[]): ReplayResult {
    this.#expire(Date.now())
    const after = this.#locate(lastEventId)
    let gap = after < 0
    const found: Held[] = []
    if (identifier !== undefined) {
      const plain: Held[] = []
      this.#plain.after(after, plain)
      for (const held of plain) if (matchesTarget(held.message.to, identifier)) found.push(held)
      if (this.#plain.evicted > after) gap = true
    }
    let rings = 0
    for (const topic of topics ?? []) {
      const ring = this.#topics.get(topic)
      if (ring === undefined) {
        if (this.#dropped > after) gap = true
        continue
      }
      if (ring.evicted > after) gap = true
      ring.after(after, found)
      rings++
    }
    // A message to several followed topics sits in each of their rings: order by seq and keep it once.
    if (rings > 1 || (rings === 1 && identifier !== undefined)) found.sort((a, b) => a.seq - b.seq)
    const messages: PublishedMessage[] = []
    let previous = -1
    for (const held of found) {
      if (held.seq === previous) continue
      previous = held.seq
      messages.push(held.message)
    }
    return this.#latestId === undefined ? { messages, gap } : { messages, gap, latestId: this.#latestId, position: this.#latestPosition }
  }

  /** The seq a Last-Event-ID stands for, or -1 when this store cannot place it (another epoch, or an unknown id). */
  #locate (lastEventId: string): number {
    const match = POSITION.exec(lastEventId)
    if (match !== null && match[1] === this.epoch) {
      const seq = Number(match[2])
      if (seq <= this.#seq) return seq
    }
    // An id given to publish: only its message, if still held, can place it.
    return this.#explicit.get(lastEventId) ?? -1
  }

  #expire (now: number): void {
    if (this.ttl === Infinity) return
    const idleSince = now - this.ttl
    for (const ring of this.#topics.values()) {
      if (ring.lastPublished > idleSince) break
      this.#dropOldest()
    }
  }

  #dropOldest (): void {
    const [topic, ring] = this.#topics.entries().next().value as [string, Ring]
    this.#topics.delete(topic)
    if (ring.last > this.#dropped) this.#dropped = ring.last
    if (this.#keys.size > 0 || this.#explicit.size > 0) for (const held of ring.items) this.#release(held)
  }

  /** A ring let go of a message: once none holds it, its key and its explicit id are forgotten. */
  #release (held: Held | undefined): void {
    if (held === undefined || --held.rings > 0) return
    const { id, position } = held.message
    if (held.key !== undefined && this.#keys.get(held.key) === id) this.#keys.delete(held.key)
    if (id !== position && this.#explicit.get(id as string) === held.seq) this.#explicit.delete(id as string)
  }
}
