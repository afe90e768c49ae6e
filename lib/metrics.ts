import { channels } from './diagnostics'
import type { EventSource, WriteKind } from './event-source'
import type { CloseReason, EventSourcesMetrics, PublishedMessage } from '../types/index'

/** Every close reason, so that each one reads 0 before it first happens (a rate over a missing series is empty). */
export const CLOSE_REASONS: readonly CloseReason[] = [
  'close', 'client', 'error', 'timeout', 'slow-client', 'drain-timeout', 'replaced', 'shutdown', 'ping-failed'
]

/** Current values that other parts own; the collection fills them in. */
export interface Gauges {
  openStreams: () => number
  activeConnections: () => number
  /** Local topics with a follower. */
  topics: () => number
  /** Producers running here (runs). */
  runs: () => number
}

const none = (): number => 0

/**
 * The counters of one plugin instance, bumped where each event happens and read by `metrics()`. Events that
 * have a diagnostics channel go through a method here, so counting and publishing stay in one place.
 */
export class Metrics {
  opened = 0
  published = 0
  received = 0
  delivered = 0
  bytes = 0
  droppedMessages = 0
  droppedPings = 0
  droppedComments = 0
  replays = 0
  gaps = 0
  closes: Record<CloseReason, number>
  gauges: Gauges

  constructor (gauges: Partial<Gauges> = {}) {
    this.gauges = { openStreams: none, activeConnections: none, topics: none, runs: none, ...gauges }
    this.closes = {} as Record<CloseReason, number>
    for (const reason of CLOSE_REASONS) this.closes[reason] = 0
  }

  open (source: EventSource): void {
    this.opened++
    if (channels.open.hasSubscribers) channels.open.publish({ source })
  }

  close (source: EventSource, reason: CloseReason): void {
    this.closes[reason]++
    if (channels.close.hasSubscribers) channels.close.publish({ source, reason })
  }

  publish (message: PublishedMessage): void {
    this.published++
    if (channels.publish.hasSubscribers) channels.publish.publish({ message })
  }

  /** A frame was taken for a source: `bytes` of it reached the socket now (0 when it was queued). */
  accepted (kind: WriteKind, bytes: number): void {
    this.bytes += bytes
    if (kind === 'message') this.delivered++
  }

  /** A replay was written: its messages and, for a gap, the reset event count as delivered. */
  replay (source: EventSource, replayed: number, gap: boolean): void {
    this.replays++
    if (gap) this.gaps++
    this.delivered += replayed + (gap ? 1 : 0)
    if (channels.replay.hasSubscribers) channels.replay.publish({ source, replayed, gap })
  }

  drop (source: EventSource, kind: WriteKind): void {
    if (kind === 'message') this.droppedMessages++
    else if (kind === 'ping') this.droppedPings++
    else this.droppedComments++
    if (channels.drop.hasSubscribers) channels.drop.publish({ source, kind })
  }

  snapshot (): EventSourcesMetrics {
    const gauges = this.gauges
    return {
      openStreams: gauges.openStreams(),
      activeConnections: gauges.activeConnections(),
      topics: gauges.topics(),
      runs: gauges.runs(),
      opened: this.opened,
      published: this.published,
      received: this.received,
      delivered: this.delivered,
      bytes: this.bytes,
      droppedMessages: this.droppedMessages,
      droppedPings: this.droppedPings,
      droppedComments: this.droppedComments,
      replays: this.replays,
      gaps: this.gaps,
      closes: { ...this.closes }
    }
  }
}
