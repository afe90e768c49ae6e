import { performance } from 'node:perf_hooks'
import type { EventSource, WriteKind } from './event-source'

const CHECK_EVERY = 64

/**
 * Shared by every source of one plugin instance: fan-out in time slices, the per-tick flush of queued frames,
 * and the single sweeper that ends sources stuck waiting for `drain`.
 */
export class WriteScheduler {
  readonly slice: number
  readonly drainTimeout: number
  #pending = new Set<EventSource>()
  #scheduled = false
  #waiting = new Map<EventSource, number>()
  #sweeper: NodeJS.Timeout | undefined

  constructor (slice: number, drainTimeout: number) {
    this.slice = slice
    this.drainTimeout = drainTimeout
  }

  /**
   * Writes one frame to every source. Once the slice is used up, the rest get the frame queued (cheap) and are
   * flushed on later ticks, so one large fan-out never blocks the loop for long and each source keeps its order.
   */
  fanOut (sources: Iterable<EventSource>, frame: Buffer, kind: WriteKind): number {
    let n = 0
    let i = 0
    let deadline = 0
    let deferring = false
    for (const source of sources) {
      if (deferring) {
        if (source._enqueue(frame, kind)) n++
        continue
      }
      if (source._write(frame, kind)) n++
      if (++i === CHECK_EVERY) {
        i = 0
        const now = performance.now()
        if (deadline === 0) deadline = now + this.slice
        else if (now >= deadline) deferring = true
      }
    }
    return n
  }

  defer (source: EventSource): void {
    this.#pending.add(source)
    if (!this.#scheduled) {
      this.#scheduled = true
      setImmediate(this.#flush)
    }
  }

  #flush = (): void => {
    this.#scheduled = false
    const deadline = performance.now() + this.slice
    let i = 0
    for (const source of this.#pending) {
      this.#pending.delete(source)
      source._flushQueue()
      if (++i === CHECK_EVERY) {
        i = 0
        if (performance.now() >= deadline) break
      }
    }
    if (this.#pending.size > 0 && !this.#scheduled) {
      this.#scheduled = true
      setImmediate(this.#flush)
    }
  }

  watchDrain (source: EventSource): void {
    if (this.#waiting.has(source)) return
    this.#waiting.set(source, Date.now())
    if (this.#sweeper === undefined) {
      this.#sweeper = setInterval(this.#sweep, Math.max(10, Math.min(1000, this.drainTimeout >> 2))).unref()
    }
  }

  unwatchDrain (source: EventSource): void {
    this.#waiting.delete(source)
    if (this.#waiting.size === 0) this.#stopSweeper()
  }

  forget (source: EventSource): void {
    this.#pending.delete(source)
  }

  get waitingForDrain (): number {
    return this.#waiting.size
  }

  #sweep = (): void => {
    const expired = Date.now() - this.drainTimeout
    for (const [source, since] of this.#waiting) {
      if (since > expired) continue
      this.#waiting.delete(source)
      source._drainExpired()
    }
    if (this.#waiting.size === 0) this.#stopSweeper()
  }

  #stopSweeper (): void {
    if (this.#sweeper !== undefined) {
      clearInterval(this.#sweeper)
      this.#sweeper = undefined
    }
  }

  close (): void {
    this.#stopSweeper()
    this.#pending.clear()
  }
}
