import { FST_ERR_SSE_INVALID_FIELD } from './errors'

/** Longest topic, in UTF-16 code units: long enough for any URL-like name, short enough to bound what one costs. */
export const MAX_TOPIC_LENGTH = 1024
const FORBIDDEN = /[\r\n\0]/
const EMPTY: ReadonlySet<string> = Object.freeze(new Set<string>())

/**
 * Checks one topic or a list of them, before anything is stored or written; returns them as a list without
 * repeats. An empty list is fine for what a source follows, not for where a message goes (it would reach nobody).
 */
export function checkTopics (value: unknown, field = 'topics', destination = false): string[] {
  if (typeof value === 'string') return [checkTopic(value, field)]
  if (!Array.isArray(value)) throw new FST_ERR_SSE_INVALID_FIELD(field, 'must be a topic string or an array of them')
  if (destination && value.length === 0) throw new FST_ERR_SSE_INVALID_FIELD(field, 'must name at least one topic')
  const topics = new Set<string>()
  for (const topic of value) topics.add(checkTopic(topic, field))
  return [...topics]
}

export function checkTopic (topic: unknown, field = 'topic'): string {
  if (typeof topic !== 'string' || topic === '' || topic.length > MAX_TOPIC_LENGTH || FORBIDDEN.test(topic)) {
    throw new FST_ERR_SSE_INVALID_FIELD(field, `a topic must be a non-empty string of at most ${MAX_TOPIC_LENGTH} characters without CR, LF or NUL`)
  }
  return topic
}

/**
 * Who follows what on this instance: topic → sources and source → topics, kept in step. An entry that empties
 * is deleted at once, so the index holds only topics someone follows and sources that follow something.
 * A source that follows one topic (most do) keeps it as a string: a Set of one costs about 150 bytes per stream.
 */
export class TopicIndex<S> {
  #byTopic = new Map<string, Set<S>>()
  #bySource = new Map<S, string | Set<string>>()

  get topicCount (): number {
    return this.#byTopic.size
  }

  get sourceCount (): number {
    return this.#bySource.size
  }

  add (source: S, topics: Iterable<string>): void {
    let mine = this.#bySource.get(source)
    for (const topic of topics) {
      if (mine === undefined) {
        this.#bySource.set(source, (mine = topic))
      } else if (typeof mine === 'string') {
        if (mine === topic) continue
        this.#bySource.set(source, (mine = new Set([mine, topic])))
      } else {
        if (mine.has(topic)) continue
        mine.add(topic)
      }
      const followers = this.#byTopic.get(topic)
      if (followers === undefined) this.#byTopic.set(topic, new Set([source]))
      else followers.add(source)
    }
  }

  remove (source: S, topics: Iterable<string>): void {
    let mine = this.#bySource.get(source)
    for (const topic of topics) {
      if (mine === undefined) return
      if (typeof mine === 'string') {
        if (mine !== topic) continue
        this.#bySource.delete(source)
        mine = undefined
      } else {
        if (!mine.delete(topic)) continue
        if (mine.size === 0) {
          this.#bySource.delete(source)
          mine = undefined
        }
      }
      this.#leave(source, topic)
    }
  }

  removeAll (source: S): void {
    const mine = this.#bySource.get(source)
    if (mine === undefined) return
    this.#bySource.delete(source)
    if (typeof mine === 'string') this.#leave(source, mine)
    else for (const topic of mine) this.#leave(source, topic)
  }

  /** The live set of a topic's followers (do not keep it: it is dropped once empty). */
  followers (topic: string): ReadonlySet<S> | undefined {
    return this.#byTopic.get(topic)
  }

  /** What `source` follows now (a copy when it follows one topic). */
  topicsOf (source: S): ReadonlySet<string> {
    const mine = this.#bySource.get(source)
    return mine === undefined ? EMPTY : typeof mine === 'string' ? new Set([mine]) : mine
  }

  /** Every source following at least one of `topics`, each once. */
  union (topics: readonly string[]): Iterable<S> {
    if (topics.length === 1) return this.#byTopic.get(topics[0]) ?? []
    const targets = new Set<S>()
    for (const topic of topics) {
      const followers = this.#byTopic.get(topic)
      if (followers !== undefined) for (const source of followers) targets.add(source)
    }
    return targets
  }

  /** The topics someone follows here. */
  topics (): IterableIterator<string> {
    return this.#byTopic.keys()
  }

  #leave (source: S, topic: string): void {
    const followers = this.#byTopic.get(topic)
    if (followers === undefined) return
    followers.delete(source)
    if (followers.size === 0) this.#byTopic.delete(topic)
  }
}
