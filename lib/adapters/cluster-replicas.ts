import type { Redis } from 'ioredis'

/** ms after which a master's count of online replicas is asked again (its last answer serves meanwhile). */
export const REPLICAS_AGE = 1000

/**
 * How many replicas each master has online, as the master itself says (`ROLE`), so that a write waits (`WAIT`) for
 * one of them whenever there is one. The slot map is no guide: Redis leaves out of `CLUSTER SLOTS` a replica whose
 * offset it has not yet heard of, so on a new cluster, until the first writes are gossiped, every shard looks
 * replica-less, and a write not waited for there is lost with its master.
 */
export class OnlineReplicas {
  #known = new WeakMap<Redis, { count: number, at: number }>()
  #asking = new WeakMap<Redis, Promise<number>>()

  /**
   * The last count this master gave, at once (a write must be sent before anything is awaited, or writes would
   * overtake each other); when it is old, asked again for the next writes. Before the master's first answer: the
   * answer to come, which the write then waits for before its `WAIT`.
   */
  count (node: Redis): number | Promise<number> {
    const known = this.#known.get(node)
    if (known !== undefined && Date.now() - known.at < REPLICAS_AGE) return known.count
    const asking = this.ask(node)
    // Its caller may fail before it waits for the answer.
    asking.catch(() => {})
    return known === undefined ? asking : known.count
  }

  /** Asks the master (once for concurrent callers). */
  async ask (node: Redis): Promise<number> {
    let asking = this.#asking.get(node)
    if (asking === undefined) {
      asking = (node.call('ROLE') as Promise<unknown[]>).then(reply => {
        // A master answers ['master', offset, [[ip, port, offset], …]], listing only the replicas online.
        const count = reply[0] === 'master' && Array.isArray(reply[2]) ? reply[2].length : 0
        this.#known.set(node, { count, at: Date.now() })
        return count
      }).finally(() => this.#asking.delete(node))
      this.#asking.set(node, asking)
    }
    return asking
  }
}
