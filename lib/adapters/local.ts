import type { HistoryStore } from '../history/history'
import type { AdapterHost, EventSourceAdapter, PublishedMessage, ReplayResult } from './adapter'

/** One process: publish stores in the given history (if any) and delivers at once. */
export class LocalAdapter implements EventSourceAdapter {
  readonly hasHistory: boolean
  #history: HistoryStore | undefined
  #host: AdapterHost | undefined

  constructor (history: HistoryStore | undefined) {
    this.#history = history
    this.hasHistory = history !== undefined
  }

  attach (host: AdapterHost): void {
    this.#host = host
  }

  async publish (message: PublishedMessage): Promise<void> {
    if (this.#history !== undefined) {
      // The store sets message.position, which live delivery compares with each source's own.
      const id = await this.#history.append(message)
      if (message.id !== id) message = { ...message, id }
    }
    this.#host?.deliver(message)
  }

  async replay (lastEventId: string, identifier: string): Promise<ReplayResult> {
    // Nothing is kept: whatever the client missed is lost, and it is told so.
    if (this.#history === undefined) return { messages: [], gap: true }
    return this.#history.readAfter(lastEventId, identifier)
  }

  async close (): Promise<void> {}
}
