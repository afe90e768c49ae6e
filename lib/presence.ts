import { FST_ERR_SSE_INVALID_FIELD } from './errors'
import { checkTopic, TopicIndex } from './topics'
import type { CountTarget, LocalPresence, PresenceListener } from '../types/index'

export type { CountTarget, LocalPresence, PresenceListener }

interface Source {
  readonly identifier: string | undefined
}

/** `count()`'s argument, checked and copied: an identifier, `{ prefix }`, `{ topic }` (one topic), or nothing. */
export function countTarget (to: unknown): CountTarget | undefined {
  if (to === undefined || typeof to === 'string') return to
  if (typeof to === 'object' && to !== null) {
    const keys = Object.keys(to)
    if (keys.length === 1 && keys[0] === 'prefix' && typeof (to as { prefix: unknown }).prefix === 'string') {
      return { prefix: (to as { prefix: string }).prefix }
    }
    if (keys.length === 1 && keys[0] === 'topic') return { topic: checkTopic((to as { topic: unknown }).topic, 'to.topic') }
  }
  throw new FST_ERR_SSE_INVALID_FIELD('to', 'must be an identifier string, { prefix: string } or { topic: string }')
}

/** The topic index, telling a presence listener which topic changed for which source. */
export class TrackedTopicIndex<S extends Source> extends TopicIndex<S> {
  listener: PresenceListener | undefined

  override add (source: S, topics: Iterable<string>): void {
    const listener = this.listener
    if (listener === undefined) return super.add(source, topics)
    const list = [...topics]
    super.add(source, list)
    for (const topic of list) listener.topic(topic, source.identifier)
  }

  override remove (source: S, topics: Iterable<string>): void {
    const listener = this.listener
    if (listener === undefined) return super.remove(source, topics)
    const list = [...topics]
    super.remove(source, list)
    for (const topic of list) listener.topic(topic, source.identifier)
  }

  override removeAll (source: S): void {
    const listener = this.listener
    if (listener === undefined) return super.removeAll(source)
    const list = [...this.topicsOf(source)]
    super.removeAll(source)
    for (const topic of list) listener.topic(topic, source.identifier)
  }
}

/**
 * Who is connected to this instance, read from the collection's own structures (nothing is copied): what
 * `presence()` and `count()` answer without an adapter, and what an adapter publishes for other instances.
 */
export class InstancePresence<S extends Source> implements LocalPresence {
  #byId: ReadonlyMap<string, S>
  #open: ReadonlySet<S>
  #topics: TrackedTopicIndex<S>

  constructor (byId: ReadonlyMap<string, S>, open: ReadonlySet<S>, topics: TrackedTopicIndex<S>) {
    this.#byId = byId
    this.#open = open
    this.#topics = topics
  }

  get streams (): number {
    return this.#open.size
  }

  presence (topic: string): string[] {
    const identifiers: string[] = []
    // Identifiers are unique among the registered sources, so each appears once.
    for (const source of this.#topics.followers(topic) ?? []) if (source.identifier !== undefined) identifiers.push(source.identifier)
    return identifiers
  }

  count (to?: CountTarget): number {
    if (to === undefined) return this.#open.size
    if (typeof to === 'string') return this.#byId.has(to) ? 1 : 0
    if ('topic' in to) return this.topicStreams(to.topic)
    let n = 0
    for (const identifier of this.#byId.keys()) if (identifier.startsWith(to.prefix)) n++
    return n
  }

  hasIdentifier (identifier: string): boolean {
    return this.#byId.has(identifier)
  }

  identifiers (): Iterable<string> {
    return this.#byId.keys()
  }

  topics (): Iterable<string> {
    return this.#topics.topics()
  }

  topicStreams (topic: string): number {
    return this.#topics.followers(topic)?.size ?? 0
  }

  follows (topic: string, identifier: string): boolean {
    const source = this.#byId.get(identifier)
    return source !== undefined && this.#topics.topicsOf(source).has(topic)
  }

  watch (listener: PresenceListener | undefined): void {
    this.#topics.listener = listener
    this.listener = listener
  }

  /** @internal the collection tells it of streams opening and closing and identifiers (un)registered */
  listener: PresenceListener | undefined
}
