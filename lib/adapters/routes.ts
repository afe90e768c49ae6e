import type { LocalPresence, PresenceListener, PublishedMessage } from './adapter'

type Route = { identifier: string } | { topic: string }

/** The channel names of one prefix: a message travels on the channels of its target. */
export interface RouteNames {
  /** Messages to every identified source or to a prefix: every instance listens. */
  readonly everyone: string
  identifier (identifier: string): string
  topic (topic: string): string
}

/** What to send in one batch: channels to listen to from now on, and channels no source here needs any more. */
export interface RouteChanges {
  add: string[]
  remove: string[]
}

/**
 * Which channels this instance listens to, kept in step with its sources: the first source here with an identifier,
 * or following a topic, adds its channel; the last one leaving removes it. Changes are gathered and taken in batches,
 * so that a busy instance sends one command each way per batch, never one per connection.
 */
export class Routes implements PresenceListener {
  readonly names: RouteNames
  #local: LocalPresence
  /** Channels sent in a subscribe, and not in an unsubscribe since, the everyone channel included. */
  #subscribed = new Map<string, Route | undefined>()
  #dirty = new Map<string, Route>()
  #added: (channel: string) => void
  #changed: () => void

  /** `added` runs at once when a source needs a channel not yet subscribed; `changed` after every change. */
  constructor (local: LocalPresence, names: RouteNames, added: (channel: string) => void, changed: () => void) {
    this.#local = local
    this.names = names
    this.#added = added
    this.#changed = changed
    this.#subscribed.set(names.everyone, undefined)
  }

  streams (): void {}

  identifier (identifier: string): void {
    this.#touch(this.names.identifier(identifier), { identifier })
  }

  topic (topic: string): void {
    this.#touch(this.names.topic(topic), { topic })
  }

  #touch (channel: string, what: Route): void {
    this.#dirty.set(channel, what)
    if (!this.#subscribed.has(channel) && this.#wanted(what)) this.#added(channel)
    this.#changed()
  }

  #wanted (what: Route): boolean {
    return 'identifier' in what ? this.#local.hasIdentifier(what.identifier) : this.#local.topicStreams(what.topic) > 0
  }

  get pending (): boolean {
    return this.#dirty.size > 0
  }

  /** The changes since the last batch, counted as sent. */
  take (): RouteChanges {
    const add: string[] = []
    const remove: string[] = []
    for (const [channel, what] of this.#dirty) {
      const wanted = this.#wanted(what)
      if (wanted && !this.#subscribed.has(channel)) {
        add.push(channel)
        this.#subscribed.set(channel, what)
      } else if (!wanted && this.#subscribed.has(channel)) {
        remove.push(channel)
        this.#subscribed.delete(channel)
      }
    }
    this.#dirty.clear()
    return { add, remove }
  }

  /** Every channel to subscribe to again on a new connection: the batch not yet taken is taken with it. */
  all (): string[] {
    this.take()
    return [...this.#subscribed.keys()]
  }

  /** Channels whose subscribe failed: they are not counted as sent, and are tried again with the next batch. */
  failed (channels: string[]): void {
    let again = false
    for (const channel of channels) {
      const what = this.#subscribed.get(channel)
      if (what === undefined) continue
      this.#subscribed.delete(channel)
      this.#dirty.set(channel, what)
      again = true
    }
    if (again) this.#changed()
  }

  has (channel: string): boolean {
    return this.#subscribed.has(channel)
  }

  /** Whether a source here needs this channel and its subscribe is not sent yet. */
  waiting (channel: string): boolean {
    const what = this.#dirty.get(channel)
    return what !== undefined && !this.#subscribed.has(channel) && this.#wanted(what)
  }

  /** The channels a message travels on: its topics', its identifier's, or the everyone channel. */
  channels (to: PublishedMessage['to']): string[] {
    if (to === undefined || (typeof to === 'object' && 'prefix' in to)) return [this.names.everyone]
    if (typeof to === 'string') return [this.names.identifier(to)]
    return typeof to.topic === 'string' ? [this.names.topic(to.topic)] : to.topic.map(topic => this.names.topic(topic))
  }

  /**
   * A message to several topics arrives once per topic this instance listens to: only the copy on the first of
   * them is delivered.
   */
  first (message: PublishedMessage, channel: string): boolean {
    const to = message.to
    // On the everyone channel a message comes once, whatever its target (from an instance with routing 'all').
    if (channel === this.names.everyone || typeof to !== 'object' || !('topic' in to) || typeof to.topic === 'string') return true
    return firstHeard(to.topic, channel, topic => this.names.topic(topic), own => this.#subscribed.has(own))
  }
}

/**
 * Whether `channel` is the first of a message's topic channels (`channelOf` each topic) this instance listens to:
 * the copy to deliver of a message that arrives once per topic. True when it listens to none of them.
 */
export function firstHeard (topics: readonly string[], channel: string, channelOf: (topic: string) => string, listening: (channel: string) => boolean): boolean {
  for (const topic of topics) {
    const own = channelOf(topic)
    if (listening(own)) return own === channel
  }
  return true
}
