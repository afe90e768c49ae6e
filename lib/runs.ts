import type { FastifyBaseLogger } from 'fastify'
import { FST_ERR_SSE_CLOSING, FST_ERR_SSE_INVALID_FIELD, FST_ERR_SSE_RUN_EXISTS } from './errors'
import type { EventSource } from './event-source'
import { checkEventOptions, eventFrame, joinFrames, serialize } from './frame'
import type { PublishedMessage } from './history/history'
import { checkRunOptions, type RunSettings, type Settings } from './options'
import { MemoryRunStore } from './history/memory-runs'
import { pipe, type StreamTarget } from './producer'
import { checkTopic } from './topics'
import type { RunEndReason, RunEntry, RunOptions, RunPage, RunResult, RunSink, RunState, RunStore, SendOptions } from '../types/index'

export type { RunEndReason, RunEntry, RunOptions, RunPage, RunResult, RunSink, RunState, RunStore }

/** A replay is written in pieces of at most this many events and about this many bytes, each once the socket has room. */
const PAGE_EVENTS = 256
const PAGE_BYTES = 64 * 1024
/** The shared timer ticks at least this often (ms): abandonAfter is checked on each tick, the store's beat every few. */
const TICK = 1000

interface Running {
  key: string
  /** One target object for every event of the run. */
  to: { topic: string }
  settings: RunSettings
  controller: AbortController
  n: number
  /** Items stored, the end event not counted. */
  stored: number
  /** The last append, which the next waits for: a run's events are stored in order. */
  chain: Promise<void>
  failed: unknown
  /** Followers here and, for abandonAfter, when the last one left. */
  lonelySince: number
  /** Settles once the store has taken (or refused) the key: a follow() right after run() waits for it. */
  begun: Promise<unknown>
  done: Promise<RunResult> | undefined
}

/** One follow() call: a source reading a run's log (paging) or taking its live events. */
interface Follower {
  source: EventSource
  key: string
  /** The place of the next event this source needs. */
  next: number
  /** The id of the last event written, where a page read resumes. */
  after: string | undefined
  paging: boolean
  /** Live events that arrived while a page was being read or written (at most a page of them). */
  pending: RunEntry[]
  /** More live events came than `pending` holds: read the log again before going live. */
  overflow: boolean
  resolve: () => void
}

/**
 * Resumable runs: a producer whose events go to the topic `key` with a log of their own, read by `follow()` from
 * the start or from a Last-Event-ID, then live. Owns each run's producer, signal, lease and end event.
 */
export class Runs {
  #settings: Settings
  #store: RunStore
  #log: FastifyBaseLogger
  #running = new Map<string, Running>()
  #followers = new Map<string, Set<Follower>>()
  #timer: NodeJS.Timeout | undefined
  #closing = false
  #pageBytes: number

  constructor (settings: Settings, log: FastifyBaseLogger, store: (sink: RunSink) => RunStore) {
    this.#settings = settings
    this.#log = log
    this.#pageBytes = Math.max(1, Math.min(PAGE_BYTES, Math.floor(settings.maxBufferedBytes / 2)))
    this.#store = store({
      deliver: (key, entry) => this.#deliver(key, entry),
      cancelled: key => this.#cancelHere(key),
      lost: key => { this.#lost(key).catch(err => this.#log.warn({ err, key }, 'fastify-event-sources: could not end a lost run')) },
      log
    })
  }

  /** Producers running on this instance. */
  get running (): number {
    return this.#running.size
  }

  /** @internal sources following a run on this instance */
  get following (): number {
    let n = 0
    for (const set of this.#followers.values()) n += set.size
    return n
  }

  run (key: string, producer: unknown, options?: RunOptions<unknown>): Promise<RunResult> {
    let settings: RunSettings
    try {
      key = checkTopic(key, 'key')
      settings = checkRunOptions(options)
      if (typeof producer !== 'function' && (producer === null || typeof producer !== 'object')) {
        throw new FST_ERR_SSE_INVALID_FIELD('producer', 'must be a source as for stream(), or a function (signal) => source')
      }
      if (this.#closing) throw new FST_ERR_SSE_CLOSING()
      if (this.#running.has(key)) throw new FST_ERR_SSE_RUN_EXISTS(key)
    } catch (err) {
      return Promise.reject(err)
    }
    // Held here before the store is asked, so that two calls in one tick cannot both start.
    const run: Running = { key, to: { topic: key }, settings, controller: new AbortController(), n: 0, stored: 0, chain: Promise.resolve(), failed: undefined, lonelySince: Date.now(), begun: Promise.resolve(), done: undefined }
    this.#running.set(key, run)
    this.#arm()
    const begun = this.#store.begin(key, settings)
    run.begun = begun.catch(() => {})
    return begun.then(taken => {
      if (!taken) {
        this.#running.delete(key)
        throw new FST_ERR_SSE_RUN_EXISTS(key)
      }
      return (run.done = this.#produce(run, producer))
    }, err => {
      this.#running.delete(key)
      throw err
    })
  }

  async cancel (key: string): Promise<boolean> {
    key = checkTopic(key, 'key')
    if (this.#cancelHere(key)) return true
    return this.#store.cancel(key)
  }

  async state (key: string, lastEventId?: string): Promise<RunState | undefined> {
    key = checkTopic(key, 'key')
    if (lastEventId !== undefined && typeof lastEventId !== 'string') throw new FST_ERR_SSE_INVALID_FIELD('lastEventId', 'must be a string')
    const found = await this.#store.state(key)
    if (found === undefined) return undefined
    // A client that already has the end event has nothing left to follow.
    if (found.state === 'ended' && lastEventId !== undefined && lastEventId === found.endId) return undefined
    return found.state
  }

  /** @internal sse.follow(key) */
  follow (source: EventSource, key: string): Promise<void> {
    try {
      key = checkTopic(key, 'key')
    } catch (err) {
      return Promise.reject(err)
    }
    if (!source.isActive) return Promise.resolve()
    return new Promise(resolve => {
      const follower: Follower = { source, key, next: 1, after: source.lastEventId, paging: true, pending: [], overflow: false, resolve }
      let set = this.#followers.get(key)
      if (set === undefined) this.#followers.set(key, (set = new Set()))
      set.add(follower)
      this.#arm()
      source.signal.addEventListener('abort', () => this.#unfollow(follower), { once: true })
      this.#page(follower).catch(err => {
        this.#log.warn({ err, key }, 'fastify-event-sources: a run replay failed; closing the follower so that it resumes')
        source.close()
      })
    })
  }

  /** @internal fastify.close(): running producers stop (their runs end as cancelled) */
  async close (): Promise<void> {
    this.#closing = true
    const ending: Promise<RunResult>[] = []
    for (const run of this.#running.values()) {
      run.controller.abort('shutdown')
      if (run.done !== undefined) ending.push(run.done)
    }
    await Promise.allSettled(ending)
    clearInterval(this.#timer)
    this.#timer = undefined
    await this.#store.close()
  }

  async #produce (run: Running, producer: unknown): Promise<RunResult> {
    const { key, settings, controller } = run
    const signal = controller.signal
    let error: unknown
    try {
      const source = typeof producer === 'function' ? (producer as (signal: AbortSignal) => unknown)(signal) : producer
      await pipe(this.#target(run), source, settings.stream)
    } catch (err) {
      error = err
    }
    if (error === undefined && run.failed !== undefined) error = run.failed
    // What was handed to the store goes in before the end event.
    await run.chain.catch(() => {})
    const reason: RunEndReason = error !== undefined ? 'error' : signal.aborted ? 'cancelled' : 'done'
    if (error !== undefined) this.#log.warn({ err: error, key }, 'fastify-event-sources: a run\'s producer failed')
    try {
      await this.#store.finish(key, this.#endEntry(run, reason), settings)
    } catch (err) {
      this.#log.warn({ err, key }, 'fastify-event-sources: could not store a run\'s end event')
    } finally {
      this.#running.delete(key)
    }
    const result: RunResult = { sent: run.stored, reason: reason as RunResult['reason'] }
    if (error !== undefined) result.error = error
    return result
  }

  /** The pull loop's side of a run: each item becomes the run's next event, stored before the next is pulled. */
  #target (run: Running): StreamTarget {
    const serializer = this.#settings.serializer
    return {
      signal: run.controller.signal,
      send: (data: unknown, options?: SendOptions): boolean => {
        if (run.failed !== undefined) return false
        const message: PublishedMessage = { data: serialize(data, serializer), to: run.to }
        const event = options?.event
        const retry = options?.retry
        checkEventOptions(event, undefined, retry)
        if (event !== undefined) message.event = event
        if (retry !== undefined) message.retry = retry
        const entry: RunEntry = { n: ++run.n, message, end: false }
        run.chain = run.chain.then(() => this.#store.append(run.key, entry, run.settings)).then(() => { run.stored++ }, err => { run.failed ??= err })
        return true
      },
      _room: () => run.chain.then(() => {
        if (run.failed !== undefined) throw run.failed
        return !run.controller.signal.aborted
      })
    }
  }

  #endEntry (run: Running, reason: RunEndReason | 'lost'): RunEntry {
    return { n: ++run.n, message: { event: run.settings.endEvent, data: JSON.stringify({ reason }), to: run.to }, end: true }
  }

  #cancelHere (key: string): boolean {
    const run = this.#running.get(key)
    if (run === undefined || run.controller.signal.aborted) return false
    run.controller.abort('cancelled')
    return true
  }

  /**
   * Nobody holds the run's lease: end it as lost unless it has an end already (the store writes it once, numbered
   * after the last event it holds), then have this instance's followers read the end from the log.
   */
  async #lost (key: string): Promise<void> {
    if (this.#running.has(key)) return
    const settings = checkRunOptions(undefined)
    await this.#store.finish(key, { n: 0, message: { event: settings.endEvent, data: JSON.stringify({ reason: 'lost' }), to: { topic: key } }, end: true }, settings)
    const set = this.#followers.get(key)
    if (set === undefined) return
    for (const follower of set) {
      if (follower.paging) continue
      follower.paging = true
      this.#page(follower).catch(() => follower.source.close())
    }
  }

  /** An event stored on any instance, delivered to this instance's followers in order, each once. */
  #deliver (key: string, entry: RunEntry): void {
    const set = this.#followers.get(key)
    if (set === undefined) return
    let frame: Buffer | undefined
    for (const follower of set) {
      if (follower.paging) {
        // A follower held back by its socket must not hold every live event meanwhile: the log has them.
        if (follower.pending.length < PAGE_EVENTS) follower.pending.push(entry)
        else follower.overflow = true
        continue
      }
      if (entry.n < follower.next) continue
      // Some live events never came (a dropped subscription), or the socket is filling up (a client that reads
      // slower than the run produces): read from the log instead, at the client's pace.
      if (entry.n > follower.next || follower.source.bufferedAmount * 2 > this.#settings.maxBufferedBytes) {
        follower.paging = true
        follower.pending.push(entry)
        this.#page(follower).catch(() => follower.source.close())
        continue
      }
      frame ??= eventFrame(entry.message)
      this.#write(follower, entry, frame)
    }
  }

  /** Writes one event to a follower; after the end event, closes it. */
  #write (follower: Follower, entry: RunEntry, frame: Buffer): boolean {
    const source = follower.source
    if (!source._write(frame, 'message')) {
      // Refused (slow client dropping, or gone): close, and let the client resume from its last id.
      source.close()
      return false
    }
    follower.next = entry.n + 1
    follower.after = entry.message.id
    if (entry.end) source.close()
    return true
  }

  /**
   * Reads the log in pieces from where the follower is, each written once the socket has room, until it reaches
   * the newest event; then takes the live events that came meanwhile and goes live.
   */
  async #page (follower: Follower): Promise<void> {
    const source = follower.source
    let first = true
    await this.#running.get(follower.key)?.begun
    while (source.isActive) {
      // Each piece only once the socket has room for it.
      const room = source._room()
      if (room !== true && !(await room)) return
      const page = await this.#store.read(follower.key, follower.after, PAGE_EVENTS)
      if (!source.isActive) return
      if (page === undefined) {
        // Unknown or expired: nothing to follow.
        source.close()
        return
      }
      const frames: Buffer[] = []
      let bytes = 0
      if (first && page.gap && follower.after !== undefined) {
        const reset = eventFrame({ event: this.#settings.resetEvent, data: JSON.stringify({ lastEventId: follower.after }) })
        frames.push(reset)
        bytes += reset.length
      }
      first = false
      if (page.entries.length === 0) follower.next = Math.max(follower.next, page.next)
      if (page.ended) {
        // It already has the end event (a reload that passed its last id): nothing more will come.
        source.close()
        return
      }
      let end = false
      let last: RunEntry | undefined
      for (const entry of page.entries) {
        if (entry.n < follower.next) continue
        const frame = eventFrame(entry.message)
        frames.push(frame)
        bytes += frame.length
        last = entry
        if (entry.end) end = true
        if (bytes >= this.#pageBytes && !end) break
      }
      if (frames.length > 0) {
        if (!source._write(frames.length === 1 ? frames[0] : joinFrames(frames, bytes), 'message')) {
          source.close()
          return
        }
        if (last !== undefined) {
          follower.next = last.n + 1
          follower.after = last.message.id
        }
      }
      if (end) {
        source.close()
        return
      }
      if (page.more || (last !== undefined && last !== page.entries[page.entries.length - 1])) continue
      // At the newest event held: what came live meanwhile either follows on, or the log is read again.
      const pending = follower.pending.sort((a, b) => a.n - b.n)
      follower.pending = []
      let behind = follower.overflow
      follower.overflow = false
      for (const entry of behind ? [] : pending) {
        if (entry.n < follower.next) continue
        if (entry.n > follower.next) {
          behind = true
          break
        }
        if (!this.#write(follower, entry, eventFrame(entry.message)) || entry.end) return
      }
      if (!behind) {
        follower.paging = false
        return
      }
    }
  }

  #unfollow (follower: Follower): void {
    const set = this.#followers.get(follower.key)
    if (set !== undefined && set.delete(follower) && set.size === 0) {
      this.#followers.delete(follower.key)
      const run = this.#running.get(follower.key)
      if (run !== undefined) run.lonelySince = Date.now()
    }
    follower.resolve()
  }

  /** One timer for every run of this instance: abandonAfter, and the store's beat (leases, lost runs). */
  #arm (): void {
    if (this.#timer !== undefined) return
    this.#timer = setInterval(() => this.#beat(), Math.min(TICK, this.#store.beatInterval)).unref()
  }

  #beats = 0
  #beating = false

  #beat (): void {
    const now = Date.now()
    for (const run of this.#running.values()) {
      const after = run.settings.abandonAfter
      if (after === undefined) continue
      if (this.#followers.has(run.key)) {
        run.lonelySince = now
        continue
      }
      if (now - run.lonelySince >= after) run.controller.abort('abandoned')
    }
    const every = Math.max(1, Math.floor(this.#store.beatInterval / Math.min(TICK, this.#store.beatInterval)))
    if (++this.#beats % every === 0 && !this.#beating) {
      this.#beating = true
      this.#store.beat([...this.#running.keys()], [...this.#followers.keys()])
        .then(followed => {
          // Followed on another instance: not abandoned.
          const at = Date.now()
          for (const key of followed ?? []) {
            const run = this.#running.get(key)
            if (run !== undefined) run.lonelySince = at
          }
        })
        .catch(err => this.#log.warn({ err }, 'fastify-event-sources: the runs beat failed'))
        .finally(() => { this.#beating = false })
    }
    if (this.#running.size === 0 && this.#followers.size === 0 && this.#idleStore()) {
      clearInterval(this.#timer)
      this.#timer = undefined
    }
  }

  #idleStore (): boolean {
    return !(this.#store instanceof MemoryRunStore) || this.#store.held === 0
  }
}
