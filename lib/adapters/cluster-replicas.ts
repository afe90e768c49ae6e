import type { Redis } from 'ioredis'

/** ms after which a master's count of online replicas is asked again (its last answer serves meanwhile). */
export const REPLICAS_AGE = 1000

/**
 * Waiting for a replica after a write, whenever the master has one online, as the master itself says (`ROLE`). The
 * slot map is no guide: Redis leaves out of `CLUSTER SLOTS` a replica whose offset it has not yet heard of, so on a
 * new cluster, until the first writes are gossiped, every shard looks replica-less, and a write not waited for
 * there is lost with its master.
 */
export class OnlineReplicas {
  /** How long a write's `WAIT` waits for a replica. */
  readonly waitMs: number
  #known = new WeakMap<Redis, { count: number, at: number }>()
  #asking = new WeakMap<Redis, Promise<number>>()

  constructor (waitMs: number) {
    this.waitMs = waitMs
  }

  /**
   * The last count this master gave, at once (a write must be sent before anything is awaited, or writes would
   * overtake each other); when it is old, asked again for the next writes. Before the master's first answer: the
   * answer to come, which `acknowledged` waits for before its `WAIT`.
   */
  count (node: Redis): number | Promise<number> {
    const known = this.#known.get(node)
    if (known !== undefined && Date.now() - known.at < REPLICAS_AGE) return known.count
    const asking = this.ask(node)
    return known === undefined ? asking : known.count
  }

  /** Whether a write sent now on a master with this count takes its `WAIT` along (else `acknowledged` sends it). */
  waitsWith (count: number | Promise<number>): boolean {
    return typeof count === 'number' && count > 0
  }

  /** Asks the master (once for concurrent callers). */
  ask (node: Redis): Promise<number> {
    let asking = this.#asking.get(node)
    if (asking === undefined) {
      asking = (node.call('ROLE') as Promise<unknown[]>).then(reply => {
        // A master answers ['master', offset, [[ip, port, offset], …]], listing only the replicas online.
        const count = reply[0] === 'master' && Array.isArray(reply[2]) ? reply[2].length : 0
        this.#known.set(node, { count, at: Date.now() })
        return count
      }).finally(() => this.#asking.delete(node))
      // Its callers may fail before they wait for the answer.
      asking.catch(() => {})
      this.#asking.set(node, asking)
    }
    return asking
  }

  /**
   * Resolves once a replica acknowledged the write just made on `node` (`waited`: the reply of the WAIT sent with
   * it), or at once if the master has none online. Before the master's first answer the WAIT goes after the write,
   * on the same connection: it covers every earlier write there.
   */
  async acknowledged (node: Redis, count: number | Promise<number>, waited: unknown): Promise<void> {
    if (typeof count !== 'number') {
      if (await count === 0) return
      waited = node.call('WAIT', 1, this.waitMs)
    } else if (count === 0) return
    if (await waited === 0) throw new Error('no replica acknowledged the write in time')
  }
}
