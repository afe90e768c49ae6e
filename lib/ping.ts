import type { EventSource } from './event-source'
import { FST_ERR_SSE_INVALID_OPTION } from './errors'
import { commentFrame } from './frame'
import { fanOutCost, type WriteScheduler } from './scheduler'

interface PingGroup {
  frame: Buffer
  members: Set<EventSource>
  timer: NodeJS.Timeout
}

/**
 * Sources that ping with the same interval and message share one timer and one frame, so 10k streams with
 * the default policy cost one timer, and a ping round is one fan-out through the usual write path.
 */
export class PingScheduler {
  #groups = new Map<string, PingGroup>()
  #writer: WriteScheduler

  constructor (writer: WriteScheduler) {
    this.#writer = writer
  }

  join (source: EventSource, interval: number, dataMessage: string): string {
    const key = interval + ':' + dataMessage
    let group = this.#groups.get(key)
    if (group === undefined) {
      const members = new Set<EventSource>()
      const frame = commentFrame(dataMessage)
      // Its own measures: a ping round's size and cost need not be a broadcast's.
      const cost = fanOutCost()
      const timer = setInterval(() => this.#writer.fanOut(members, frame, 'ping', cost), interval).unref()
      group = { frame, members, timer }
      this.#groups.set(key, group)
    }
    group.members.add(source)
    return key
  }

  leave (source: EventSource, key: string): void {
    const group = this.#groups.get(key)
    if (group === undefined || !group.members.delete(source) || group.members.size > 0) return
    clearInterval(group.timer)
    this.#groups.delete(key)
  }

  get timers (): number {
    return this.#groups.size
  }

  close (): void {
    for (const group of this.#groups.values()) clearInterval(group.timer)
    this.#groups.clear()
  }
}

/** Sisk's ping policy for one source: configure, then `start()`. */
export class PingPolicy {
  dataMessage: string
  interval: number
  #source: EventSource
  #scheduler: PingScheduler
  #key: string | undefined

  constructor (source: EventSource, scheduler: PingScheduler, interval: number, dataMessage: string) {
    this.#source = source
    this.#scheduler = scheduler
    this.interval = interval
    this.dataMessage = dataMessage
  }

  get isRunning (): boolean {
    return this.#key !== undefined
  }

  start (): this {
    if (!this.#source.isActive) return this
    if (!Number.isSafeInteger(this.interval) || this.interval < 1) throw new FST_ERR_SSE_INVALID_OPTION('ping.interval', 'must be a positive integer of ms')
    if (typeof this.dataMessage !== 'string') throw new FST_ERR_SSE_INVALID_OPTION('ping.dataMessage', 'must be a string')
    const key = this.interval + ':' + this.dataMessage
    if (key === this.#key) return this
    this.stop()
    this.#key = this.#scheduler.join(this.#source, this.interval, this.dataMessage)
    return this
  }

  stop (): this {
    if (this.#key !== undefined) {
      this.#scheduler.leave(this.#source, this.#key)
      this.#key = undefined
    }
    return this
  }
}
