import { WATERMARK_COUNT, compareIds, completeBelow, type ClusterEntry, type RedisClusterHistory, type Watermark } from '../history/redis-cluster-streams'
import { isAfter } from '../position'
import { topicsOf } from '../target'
import type { AdapterHost, PublishedMessage } from './adapter'
import { bounded, sleep } from './coordination'

interface Held {
  message: PublishedMessage
  id: string
}

/**
 * Delivery in id order on a Redis Cluster. Messages reach an instance over several connections (one per shard), so
 * each is held until every id handed out below it has been written (the sequencer's watermark) or is held here too,
 * then delivered once. Deliveries stop while any pause holds (a new subscription or a lost shard being read up to date).
 */
export class InOrder {
  /** The last id delivered here. */
  released = '0-0'
  /** Every id at or below it is written wherever it goes (from the last watermark read). */
  #known = '0-0'
  /** Received and not yet delivered, in id order. */
  #held: Held[] = []
  #heldIds = new Set<string>()
  #pumping = false
  #pauses = 0
  #closed = false
  #host: AdapterHost
  #history: RedisClusterHistory
  #barrier: () => Promise<unknown>
  #timeout: number

  /**
   * `barrier`: resolves once every connection messages arrive on has passed on all it had before the call (or was left
   * out for not answering), and rejects when one closed.
   */
  constructor (host: AdapterHost, history: RedisClusterHistory, barrier: () => Promise<unknown>, timeout: number) {
    this.#host = host
    this.#history = history
    this.#barrier = barrier
    this.#timeout = timeout
  }

  /** Where delivery starts: every id up to here is written, and none of it is for this instance any more. */
  start (id: string): void {
    this.released = this.#known = id
  }

  /** Holds deliveries until the function returned is called (once). */
  pause (): () => void {
    this.#pauses++
    let paused = true
    return () => {
      if (!paused) return
      paused = false
      this.#pauses--
      this.#pump()
    }
  }

  close (): void {
    this.#closed = true
  }

  /**
   * A message from a channel or read from its stream: held for its turn, once. `missed`: if its turn is past, it
   * was missed here (not merely older than a new subscription).
   */
  absorb (entry: ClusterEntry, missed: boolean): void {
    const message = entry.message
    const id = message.id as string
    if (!isAfter(id, this.released)) {
      // A message to several topics comes once per topic; anything else this late missed its turn here.
      const topics = topicsOf(message.to)
      if (missed && (topics === undefined || topics.length < 2)) this.#late(message)
      return
    }
    if (this.#heldIds.has(id)) return
    this.#heldIds.add(id)
    const held = this.#held
    let at = held.length
    while (at > 0 && isAfter(held[at - 1].id, id)) at--
    held.splice(at, 0, { message, id })
    this.#pump()
  }

  /** Sources that can still take it get it; every source hears of the gap. */
  #late (message: PublishedMessage): void {
    const host = this.#host
    host.log.warn({ id: message.id, delivered: this.released }, 'fastify-event-sources: a message reached this instance after later ones; reporting a gap')
    host.deliver(message)
    host.gap(this.released, message.id)
  }

  /** The history no longer holds what was missed after `from`. */
  gap (from: string): void {
    const host = this.#host
    host.log.warn({ lastId: from }, 'fastify-event-sources: the history no longer holds what was missed; reporting a gap')
    host.gap(this.released, from)
  }

  /** Delivers what is held, in id order, as far as the watermark allows; one loop at a time. */
  #pump (): void {
    if (this.#pumping || this.#pauses > 0 || this.#held.length === 0 || this.#closed) return
    this.#pumping = true
    this.#runPump().finally(() => {
      this.#pumping = false
      if (this.#held.length > 0 && this.#pauses === 0 && !this.#closed) this.#pump()
    }).catch(() => {})
  }

  async #runPump (): Promise<void> {
    const history = this.#history
    while (this.#held.length > 0 && this.#pauses === 0 && !this.#closed) {
      if (this.#release(undefined)) continue
      let mark: Watermark
      try {
        mark = await bounded(history.watermark(), this.#timeout)
      } catch (err) {
        this.#host.log.debug({ err }, 'fastify-event-sources: could not read the Redis Cluster watermark; retrying')
        await sleep(100)
        continue
      }
      if (this.#pauses > 0) return
      // A write the watermark counts as complete was published on its shard before the watermark was read, but its
      // message may still be on its way over that shard's connection: a PING sent now is answered after it.
      try {
        await bounded(this.#barrier(), this.#timeout)
      } catch (err) {
        this.#host.log.debug({ err }, 'fastify-event-sources: a Redis Cluster shard did not answer; retrying')
        await sleep(100)
        continue
      }
      if (this.#pauses > 0) return
      const known = completeBelow(mark)
      if (isAfter(known, this.#known)) this.#known = known
      if (!this.#release(mark)) await sleep(1)
    }
  }

  /**
   * Delivers held messages in order while each is known complete, or (with a watermark read) every id handed out
   * below it is complete or held here: a held message was written, at least to the stream it came from.
   */
  #release (mark: Watermark | undefined): boolean {
    const host = this.#host
    const held = this.#held
    const pending = mark?.pending ?? []
    let p = 0
    let n = 0
    for (; n < held.length; n++) {
      const id = held[n].id
      if (isAfter(id, this.#known)) {
        if (mark === undefined || isAfter(id, mark.last)) break
        while (p < pending.length && compareIds(pending[p], id) < 0 && this.#heldIds.has(pending[p])) p++
        if (p < pending.length && compareIds(pending[p], id) < 0) break
        if (p === pending.length && pending.length === WATERMARK_COUNT && isAfter(id, pending[p - 1])) break
      }
    }
    if (n === 0) return false
    const out = held.splice(0, n)
    for (const { message, id } of out) {
      this.#heldIds.delete(id)
      this.released = id
      host.deliver(message)
    }
    return true
  }
}
