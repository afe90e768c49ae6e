import { matchesTarget } from '../target'
import type { HistoryStore, PublishedMessage, ReplayResult } from './history'

/**
 * A ring of the last `size` published messages. Every message gets a position `<epoch>-<seq>`, where the epoch is
 * the store's creation time in ms: positions keep growing across a restart, and an id from an earlier epoch is
 * reported as a gap instead of being matched against the wrong messages. The position is also the id, unless
 * publish was given one.
 */
export class MemoryHistory implements HistoryStore {
  readonly size: number
  readonly epoch: string
  #ring: (PublishedMessage | undefined)[]
  #next = 0
  #count = 0
  #seq = 0
  /** Idempotency keys of held messages → their ids, and each slot's key so an overwritten message forgets its key. */
  #keys = new Map<string, string>()
  #keyAt: (string | undefined)[] = []

  constructor (size: number, epoch: number = Date.now()) {
    this.size = size
    this.epoch = String(epoch)
    this.#ring = new Array(size)
  }

  append (message: PublishedMessage, key?: string): string {
    const position = this.epoch + '-' + (++this.#seq)
    const id = message.id ?? position
    const evicted = this.#keyAt[this.#next]
    if (evicted !== undefined) this.#keys.delete(evicted)
    this.#keyAt[this.#next] = key
    if (key !== undefined) this.#keys.set(key, id)
    this.#ring[this.#next] = { ...message, id, position }
    this.#next = (this.#next + 1) % this.size
    if (this.#count < this.size) this.#count++
    message.position = position
    return id
  }

  /** The id of the held message published with this idempotency key, if any. */
  keyed (key: string): string | undefined {
    return this.#keys.get(key)
  }

  readAfter (lastEventId: string, identifier: string | undefined, topics?: readonly string[]): ReplayResult {
    const newest = this.#count > 0 ? this.#at(this.#count - 1) : undefined
    // Search from the newest end: a reconnecting client is usually only a few messages behind.
    let start = -1
    for (let i = this.#count - 1; i >= 0; i--) {
      if (this.#at(i).id === lastEventId) {
        start = i
        break
      }
    }
    const messages: PublishedMessage[] = []
    for (let j = start + 1; j < this.#count; j++) {
      const m = this.#at(j)
      if (matchesTarget(m.to, identifier, topics)) messages.push(m)
    }
    const result: ReplayResult = { messages, gap: start === -1, latestId: newest?.id }
    if (newest?.position !== undefined) result.position = newest.position
    return result
  }

  /** The i-th oldest message held. */
  #at (i: number): PublishedMessage {
    return this.#ring[(this.#next - this.#count + i + this.size) % this.size] as PublishedMessage
  }
}
