import type { Target } from '../target'

/** A published message as it is stored and as it travels between instances: data is already serialized. */
export interface PublishedMessage {
  data: string
  event?: string
  id?: string
  retry?: number
  to?: Target
}

export interface ReplayResult {
  /** Messages after the requested id that target the identifier, oldest first; on a gap, every one held for it. */
  messages: PublishedMessage[]
  /** The requested id is not held (too old, or from another epoch): the client missed messages it cannot get back. */
  gap: boolean
  /** The newest id the store holds, so a reset can move the client's last event id forward. */
  latestId?: string
}

/** What a history store does. The in-memory ring is the default; the Redis adapter brings a Redis Streams one. */
export interface HistoryStore {
  /** Stores the message and returns its id (the one passed, or a new one). */
  append (message: PublishedMessage): string | Promise<string>
  readAfter (lastEventId: string, identifier: string): ReplayResult | Promise<ReplayResult>
}
