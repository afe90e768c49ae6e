import type { HistoryStore } from '../history/history'
import { MemoryHistory } from '../history/memory'
import { MemoryTopicHistory } from '../history/memory-topics'
import type { AdapterHost, AdapterPublishOptions, ControlMessage, EventSourceAdapter, PublishedMessage, ReplayResult } from './adapter'

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

  async publish (message: PublishedMessage, options?: AdapterPublishOptions): Promise<void> {
    const history = this.#history
    if (history !== undefined) {
      const key = options?.key
      // A retried publish whose first attempt is still held was stored and delivered already.
      const keyed = key !== undefined && (history instanceof MemoryHistory || history instanceof MemoryTopicHistory) ? history : undefined
      if (keyed !== undefined && keyed.keyed(key as string) !== undefined) return
      // The store sets message.position, which live delivery compares with each source's own.
      const id = await (keyed !== undefined ? keyed.append(message, key) : history.append(message))
      if (message.id !== id) message = { ...message, id }
    }
    this.#host?.deliver(message)
  }

  async replay (lastEventId: string, identifier: string | undefined, topics?: readonly string[]): Promise<ReplayResult> {
    // Nothing is kept: whatever the client missed is lost, and it is told so.
    if (this.#history === undefined) return { messages: [], gap: true }
    return this.#history.readAfter(lastEventId, identifier, topics)
  }

  /** One process: a subscribe or unsubscribe applies here and now. */
  async control (message: ControlMessage): Promise<void> {
    this.#host?.control(message)
  }

  async close (): Promise<void> {}
}
