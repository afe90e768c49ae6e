import type { Socket } from 'node:net'
import { performance } from 'node:perf_hooks'
import type { EventSource, WriteKind } from './event-source'

const CHECK_EVERY = 64
/**
 * µs of writes per ms of `fanOutSlice`, by the measured cost and on the clock: the uncork tick after the writes costs
 * a share too (a full plan blocked the loop 52 ms at N = 10,000 against a 50 ms slice).
 */
const PLANNED = 750
/** µs per write assumed before any has been measured: twice a warm loopback write, since the first run is cold. */
const FIRST_GUESS_US = 40
/** µs to queue a frame for a deferred source, assumed before it has been measured. */
const FIRST_GUESS_QUEUE_US = 2

/**
 * What one path of fan-outs (broadcasts, or one ping group) has measured: µs per write, µs per source deferred
 * once the slice is used up, and how many sources its last fan-out went to (the next one's size, most likely).
 */
export interface FanOutCost {
  us: number
  queueUs: number
  sources: number
}

export function fanOutCost (): FanOutCost {
  return { us: FIRST_GUESS_US, queueUs: FIRST_GUESS_QUEUE_US, sources: 0 }
}

/**
 * The process's CPU time in µs. Costs are learned in CPU time: on a busy machine the clock also counts the time
 * other processes held the core, which made one slow turn shrink the next slices to a fraction of their size (and
 * queue most of a fan-out, which costs more in all). The clock still bounds every slice.
 */
function cpuUs (): number {
  const { user, system } = process.cpuUsage()
  return user + system
}

// Queued behind the response ticks of the writes just made (the nextTick queue is FIFO), so the time includes them;
// minus the time spent queueing frames for the sources deferred after them.
function learn (cost: { us: number }, startCpu: number, writes: number, queueUs = 0): void {
  cost.us += ((cpuUs() - startCpu - queueUs) / writes - cost.us) / 2
}

/**
 * Shared by every source of one plugin instance: fan-out in time slices, the per-tick flush of queued frames,
 * and the single sweeper that ends sources stuck waiting for `drain`.
 */
export class WriteScheduler {
  readonly slice: number
  readonly drainTimeout: number
  // In the order they were deferred. A source may appear twice (deferred again after an early flush): the later
  // entry finds its queue empty. An ended source keeps its place until the flush, which skips it.
  #pending: EventSource[] = []
  #scheduled = false
  #waiting = new Map<EventSource, number>()
  #sweeper: NodeJS.Timeout | undefined
  // Node's http layer corks a response on write and hands it to the socket at process.nextTick, so most of a
  // write's cost lands after the loop that made it: slices are sized by the measured cost, not only the clock.
  #fanOutCost = fanOutCost()
  #flushCost = { us: FIRST_GUESS_US }
  // A fan-out that ran out of slice may have run in the poll phase; the check phase follows it at once, so the
  // first flush waits one more turn, letting the loop poll (answer other requests) between the two slices.
  #yieldFirst = false
  // Sockets corked by writes of this tick, uncorked together by one tick instead of one per response.
  #corked: Socket[] = []
  // Counts ticks that wrote: a source compares it with its last write's to tell a second write in the same tick.
  #tick = 1
  #ticking = false

  constructor (slice: number, drainTimeout: number) {
    this.slice = slice
    this.drainTimeout = drainTimeout
  }

  /**
   * Writes one frame to every source. Once the slice is used up, the rest get the frame queued (cheap) and are
   * flushed on later ticks, so one large fan-out never blocks the loop for long and each source keeps its order.
   * Queueing the rest is slice work too: the writes stop early enough to leave room for it, as measured on the
   * same path (`cost`: one per ping group, one for everything else).
   */
  fanOut (sources: Iterable<EventSource>, frame: Buffer, kind: WriteKind, cost: FanOutCost = this.#fanOutCost): number {
    const start = performance.now()
    const startCpu = cpuUs()
    // In µs: three quarters of the slice, by the measured costs and on the clock. The rest is for what the same loop
    // turn does after the writes: the uncork tick that hands the corked sockets' bytes to the kernel.
    const planned = this.slice * PLANNED
    const { us, queueUs, sources: expected } = cost
    let n = 0
    let i = 0
    // Only writes that reached the socket count against the budget and teach the cost: a source with a queue
    // (or every source, in batch mode) just had the frame queued, which costs next to nothing.
    let written = 0
    let deferredFrom = -1
    let queueStart = 0
    for (const source of sources) {
      if (deferredFrom !== -1) {
        if (source._enqueue(frame, kind, true)) n++
        this.#yieldFirst = true
        i++
        continue
      }
      if (source._write(frame, kind)) n++
      if (source._queue === null) written++
      if (++i % CHECK_EVERY === 0) {
        const rest = expected > i ? (expected - i) * queueUs : 0
        if (written * us + rest >= planned || (performance.now() - start) * 1000 + rest >= planned) {
          deferredFrom = i
          queueStart = cpuUs()
        }
      }
    }
    cost.sources = i
    let queued = 0
    if (deferredFrom !== -1) {
      queued = cpuUs() - queueStart
      const deferred = i - deferredFrom
      if (deferred >= CHECK_EVERY) cost.queueUs += (queued / deferred - cost.queueUs) / 2
    }
    if (written >= CHECK_EVERY) process.nextTick(learn, cost, startCpu, written, queued)
    return n
  }

  /** Holds a socket's writes until the end of this tick, as Node's http layer would, with one tick for all sockets. */
  cork (socket: Socket): void {
    socket.cork()
    if (this.#corked.push(socket) === 1) process.nextTick(this.#uncork)
  }

  /** The number of this tick, among those that asked; it changes once the tick's queued callbacks have run. */
  tick (): number {
    if (!this.#ticking) {
      this.#ticking = true
      process.nextTick(this.#nextTick)
    }
    return this.#tick
  }

  #nextTick = (): void => {
    this.#tick++
    this.#ticking = false
  }

  #uncork = (): void => {
    const corked = this.#corked
    this.#corked = []
    for (let i = 0; i < corked.length; i++) corked[i].uncork()
  }

  defer (source: EventSource): void {
    this.#pending.push(source)
    if (!this.#scheduled) {
      this.#scheduled = true
      setImmediate(this.#flush)
    }
  }

  #flush = (): void => {
    if (this.#yieldFirst) {
      this.#yieldFirst = false
      setImmediate(this.#flush)
      return
    }
    this.#scheduled = false
    const start = performance.now()
    const startCpu = cpuUs()
    const deadline = start + this.slice * PLANNED / 1000
    const budget = this.#budget(this.#flushCost.us)
    const pending = this.#pending
    let next = 0
    let written = 0
    let ended = 0
    while (next < pending.length) {
      const source = pending[next++]
      if (source._overBound) {
        // Ending a source that a deferred share pushed past the bound is slice work too, and most of a destroyed
        // socket's cost comes later, in its close events: a few per turn, whatever the measured write cost.
        source._end('slow-client', true)
        if (++ended >= CHECK_EVERY) break
        continue
      }
      source._flushQueue()
      if (++written % CHECK_EVERY === 0 && (written >= budget || performance.now() >= deadline)) break
    }
    // Sources deferred during this flush were pushed onto the same array, behind the rest.
    this.#pending = next === pending.length ? [] : pending.slice(next)
    if (written >= CHECK_EVERY) process.nextTick(learn, this.#flushCost, startCpu, written)
    if (this.#pending.length > 0 && !this.#scheduled) {
      this.#scheduled = true
      setImmediate(this.#flush)
    }
  }

  /** How many writes fit in one slice at the measured cost per write, leaving a quarter of it for the rest. */
  #budget (usPerWrite: number): number {
    return Math.max(CHECK_EVERY, Math.floor(this.slice * PLANNED / usPerWrite))
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
    this.#pending = []
  }
}
