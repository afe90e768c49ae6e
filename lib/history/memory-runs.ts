import type { PublishedMessage, RunEntry, RunPage, RunSettings, RunSink, RunState, RunStore } from '../../types/index'

/** How often (ms) ended runs past their ttl are forgotten. */
const MEMORY_BEAT = 1000

interface MemoryRun {
  /** `<start ms>-<n>`: ids of one run of a key never meet those of another */
  epoch: string
  entries: RunEntry[]
  /** index in `entries` of the oldest held */
  start: number
  ended: RunEntry | undefined
  expiresAt: number
}

/**
 * One process: a run's log is an array bounded by maxEvents, kept `ttl` after the end. Each event is published
 * through the adapter as `publish` does (stored in the topic history, delivered to the topic's followers), then
 * handed to the run's followers.
 */
export class MemoryRunStore implements RunStore {
  readonly beatInterval = MEMORY_BEAT
  #runs = new Map<string, MemoryRun>()
  #sink: RunSink
  #publish: (message: PublishedMessage) => Promise<void>

  constructor (sink: RunSink, publish: (message: PublishedMessage) => Promise<void>) {
    this.#sink = sink
    this.#publish = publish
  }

  /** Runs held (running or ended within ttl). */
  get held (): number {
    return this.#runs.size
  }

  async begin (key: string): Promise<boolean> {
    const held = this.#get(key)
    if (held !== undefined && held.ended === undefined) return false
    let epoch = Date.now()
    // A new run of a key right after the last one ended gets ids the old ones cannot be taken for.
    if (held !== undefined && Number(held.epoch) >= epoch) epoch = Number(held.epoch) + 1
    this.#runs.set(key, { epoch: String(epoch), entries: [], start: 0, ended: undefined, expiresAt: Infinity })
    return true
  }

  async append (key: string, entry: RunEntry, settings: RunSettings): Promise<void> {
    const run = this.#runs.get(key)
    if (run === undefined || run.ended !== undefined) return
    entry.message.id = run.epoch + '-' + entry.n
    await this.#publish(entry.message)
    if (run.ended !== undefined) return
    run.entries.push(entry)
    if (run.entries.length - run.start > settings.maxEvents) {
      run.start++
      // Compact once the dropped half outweighs the held one.
      if (run.start > settings.maxEvents) {
        run.entries = run.entries.slice(run.start)
        run.start = 0
      }
    }
    this.#sink.deliver(key, entry)
  }

  async finish (key: string, entry: RunEntry, settings: RunSettings): Promise<boolean> {
    const run = this.#runs.get(key)
    if (run === undefined || run.ended !== undefined) return false
    if (entry.n === 0) entry.n = (run.entries.at(-1)?.n ?? 0) + 1
    entry.message.id = run.epoch + '-' + entry.n
    run.ended = entry
    run.entries.push(entry)
    run.expiresAt = Date.now() + settings.ttl
    try {
      await this.#publish(entry.message)
    } finally {
      this.#sink.deliver(key, entry)
    }
    return true
  }

  async read (key: string, after: string | undefined, limit: number): Promise<RunPage | undefined> {
    const run = this.#get(key)
    if (run === undefined) return undefined
    const entries = run.entries
    const first = entries[run.start]?.n ?? 1
    let from = 1
    if (after !== undefined) {
      const dash = after.indexOf('-')
      if (dash > 0 && after.slice(0, dash) === run.epoch) {
        const n = Number(after.slice(dash + 1))
        if (Number.isSafeInteger(n) && n >= 0) from = n + 1
      }
    }
    const gap = from < first
    const at = run.start + Math.max(0, from - first)
    const page = entries.slice(at, at + limit)
    const next = page.length > 0 ? page[page.length - 1].n + 1 : Math.max(from, (entries.at(-1)?.n ?? 0) + 1)
    return { entries: page, gap, next, more: at + limit < entries.length, ended: run.ended !== undefined && from > run.ended.n }
  }

  async state (key: string): Promise<{ state: RunState, endId: string | undefined } | undefined> {
    const run = this.#get(key)
    if (run === undefined) return undefined
    return run.ended === undefined ? { state: 'running', endId: undefined } : { state: 'ended', endId: run.ended.message.id }
  }

  async cancel (): Promise<boolean> {
    return false
  }

  async beat (): Promise<undefined> {
    const now = Date.now()
    for (const [key, run] of this.#runs) if (run.expiresAt <= now) this.#runs.delete(key)
  }

  async close (): Promise<void> {}

  #get (key: string): MemoryRun | undefined {
    const run = this.#runs.get(key)
    if (run !== undefined && run.expiresAt <= Date.now()) {
      this.#runs.delete(key)
      return undefined
    }
    return run
  }
}
