import type { FastifyBaseLogger } from 'fastify'
import type { PublishedMessage, ReplayResult } from '../history/history'

export type { PublishedMessage, ReplayResult }

/** What the plugin gives an adapter when it attaches. */
export interface AdapterHost {
  /** Delivers a published message to the matching sources of this instance (frames it once). */
  deliver (message: PublishedMessage): void
  /** Another instance opened a source with this identifier at `openedAt` (ms since epoch): close ours if it is older. */
  closeOlder (identifier: string, openedAt: number): void
  log: FastifyBaseLogger
}

/**
 * The seam between `eventSources.publish()` and whatever carries messages: this process alone (the default)
 * or a broker shared by many instances.
 */
export interface EventSourceAdapter {
  /** Whether `replay` can answer: false turns Last-Event-ID replay off. */
  readonly hasHistory: boolean
  attach (host: AdapterHost): void | Promise<void>
  /** Stores the message when there is history (giving it an id) and makes every instance's host deliver it. */
  publish (message: PublishedMessage): Promise<void>
  replay (lastEventId: string, identifier: string): Promise<ReplayResult>
  /** A source with this identifier was opened here: other instances close theirs. */
  claim? (identifier: string, openedAt: number): void
  close (): Promise<void>
}
