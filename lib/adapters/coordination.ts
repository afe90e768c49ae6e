import type { Cluster, Redis } from 'ioredis'
import { FST_ERR_SSE_INVALID_OPTION } from '../errors'
import { isTarget } from '../target'
import { checkTopics } from '../topics'
import type { AdapterHost, ControlMessage } from './adapter'

/**
 * What the Redis adapters (one node and cluster) share: their options' checks, waiting on a connection, and the
 * messages instances send each other (claims for newest-wins, subscribe and unsubscribe across instances).
 */

/**
 * A new route's first source (one node), or a new stream (cluster), counts as opened this long (ms) before the Redis
 * time it opened at, as estimated from this instance's clock: what was published within that margin before it opened
 * may reach it too.
 */
export const CLOCK_MARGIN = 50
/** How old (ms) an estimate of Redis's clock may get before it is measured again, when it is next needed. */
export const CLOCK_AGE = 10_000

/**
 * Redis's clock minus this instance's (ms), from a TIME reply asked at `asked` and answered at `answered` (by this
 * instance's clock): right within half the round trip, which the margin keeps on top of CLOCK_MARGIN.
 */
export function clockEstimate ([seconds, micros]: [string, string], asked: number, answered: number): { offset: number, margin: number } {
  return {
    offset: Number(seconds) * 1000 + Math.floor(Number(micros) / 1000) - Math.round((asked + answered) / 2),
    margin: CLOCK_MARGIN + answered - asked
  }
}

export function fail (name: string, why: string): never {
  throw new FST_ERR_SSE_INVALID_OPTION(name, why)
}

export function positive (name: string, value: unknown, fallback: number): number {
  if (value === undefined) return fallback
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 1) fail(name, `must be an integer >= 1, got ${String(value)}`)
  return value
}

export function sleep (ms: number): Promise<void> {
  return new Promise(resolve => setTimeout(resolve, ms).unref())
}

/** Resolves once the connection is ready; rejects after `ms`, or when it ends first. */
export async function ready (connection: Redis | Cluster, ms: number): Promise<void> {
  if (connection.status === 'ready') return
  await new Promise<void>((resolve, reject) => {
    const done = (err?: Error): void => {
      clearTimeout(timer)
      connection.off('ready', onReady)
      connection.off('end', onEnd)
      if (err === undefined) resolve()
      else reject(err)
    }
    const onReady = (): void => done()
    const onEnd = (): void => done(new Error('the connection ended'))
    const timer = setTimeout(done, ms, new Error(`no connection within ${ms} ms`))
    connection.once('ready', onReady)
    connection.once('end', onEnd)
  })
}

/**
 * Closes a Cluster client for good. ioredis re-arms the slot-map refresh timer when a refresh in flight ends, or a
 * ready check passes, after the client was closed; the client then refreshes an empty pool every interval and keeps
 * the process alive for ever. So: wait (at most `ms`) for a refresh in flight, quit, and clear the timer again.
 */
export async function closeCluster (cluster: Cluster, ms: number): Promise<void> {
  const internals = cluster as unknown as { isRefreshing: boolean, clearNodesRefreshInterval: () => void }
  const deadline = Date.now() + ms
  while (internals.isRefreshing && Date.now() < deadline) await sleep(10)
  try {
    if (cluster.status === 'ready') await bounded(cluster.quit(), ms)
    else cluster.disconnect()
  } catch {
    cluster.disconnect()
  }
  internals.clearNodesRefreshInterval()
}

/** A user's client may queue commands while Redis is away: never wait longer than `ms`. */
export async function bounded<T> (operation: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  const expired = new Promise<never>((resolve, reject) => {
    timer = setTimeout(reject, ms, new Error(`Redis did not answer within ${ms} ms`))
    timer.unref()
  })
  try {
    return await Promise.race([operation, expired])
  } finally {
    clearTimeout(timer)
  }
}

/** A claim message: one `[instance, identifier, openedAt]`, or several `[instance, [[identifier, openedAt], ...]]`. */
function claimPayload (instance: string, claims: [string, number][]): string {
  return JSON.stringify(claims.length === 1 ? [instance, claims[0][0], claims[0][1]] : [instance, claims])
}

/**
 * Applies another instance's claims here: an older source of a claimed identifier is closed. Returns the claims
 * this instance holds newer sources for, to announce in answer (the other instance missed ours: it was away).
 */
function applyClaims (host: AdapterHost, instance: string, payload: string): [string, number][] {
  let claim: unknown
  try {
    claim = JSON.parse(payload)
  } catch {
    return []
  }
  if (!Array.isArray(claim) || claim[0] === instance) return []
  const claims = Array.isArray(claim[1]) ? claim[1] as unknown[] : [[claim[1], claim[2]]]
  const newer: [string, number][] = []
  for (const one of claims) {
    if (!Array.isArray(one) || typeof one[0] !== 'string' || typeof one[1] !== 'number') continue
    const [identifier, openedAt] = one as [string, number]
    const mine = host.openedAt(identifier)
    if (mine === undefined) continue
    if (mine < openedAt) host.closeOlder(identifier, openedAt)
    else if (mine > openedAt) newer.push([identifier, mine])
  }
  return newer
}

export function controlPayload (instance: string, message: ControlMessage): string {
  return JSON.stringify([instance, message.op, message.to, message.topics])
}

/** Publishes ARGV[2] (a JSON array without its closing bracket) on channel ARGV[1], with Redis's time (ms) last. */
const PUBLISH_STAMPED = `local t = redis.call('TIME')
return redis.call('PUBLISH', ARGV[1], ARGV[2] .. ',' .. string.format('%d', t[1] * 1000 + math.floor(t[2] / 1000)) .. ']')`

/**
 * Publishes a control message stamped with the Redis time it was published at: a route it opens on another instance
 * reads what was published to it from then on, however late that instance hears of it (its own clock would start
 * later, and miss what was published after the caller's subscribe() resolved).
 */
export async function publishStampedControl (client: Redis, channel: string, instance: string, message: ControlMessage): Promise<unknown> {
  return client.eval(PUBLISH_STAMPED, 0, channel, controlPayload(instance, message).slice(0, -1))
}

/** Runs `apply`; `at` is the Redis time (ms) the control message was published at, when it says. */
export type ControlScope = (at: number | undefined, apply: () => void) => void

/** A subscribe or unsubscribe from another instance, checked as carefully as one made here, then applied. */
export function applyControl (host: AdapterHost, instance: string, payload: string, channel: string, scope: ControlScope = (_, apply) => apply()): void {
  let message: ControlMessage
  let stamp: number | undefined
  try {
    const [from, op, to, topics, at] = JSON.parse(payload) as [unknown, unknown, unknown, unknown, unknown]
    if (from === instance) return
    if ((op !== 'subscribe' && op !== 'unsubscribe') || to === undefined || !isTarget(to)) throw new TypeError('not a control message')
    message = { op, to, topics: checkTopics(topics) }
    stamp = typeof at === 'number' && Number.isSafeInteger(at) ? at : undefined
  } catch (err) {
    host.log.warn({ err, channel }, 'fastify-event-sources: ignored a malformed control message from Redis')
    return
  }
  scope(stamp, () => host.control(message))
}

/** Claims per announcement message when every source is announced again. */
const CLAIMS_PER_MESSAGE = 500

/**
 * Newest wins across instances: which identifiers are open here, told to the other instances (which close older
 * sources and answer for newer ones), and told again once a claim could not be sent.
 */
export class Claims {
  /** A claim could not be sent: every source is announced again once the connection is back. */
  pending = false
  #host: AdapterHost
  #instance: string
  #connected: () => boolean
  #send: (payload: string) => Promise<unknown>

  constructor (host: AdapterHost, instance: string, connected: () => boolean, send: (payload: string) => Promise<unknown>) {
    this.#host = host
    this.#instance = instance
    this.#connected = connected
    this.#send = send
  }

  announce (claims: [string, number][]): void {
    if (!this.#connected()) {
      this.pending = true
      return
    }
    this.#send(claimPayload(this.#instance, claims)).catch((err: Error) => {
      this.pending = true
      this.#host.log.debug({ err }, 'fastify-event-sources: could not announce identifiers to other instances')
    })
  }

  announceAll (): void {
    this.pending = false
    const all = this.#host.identified()
    for (let i = 0; i < all.length; i += CLAIMS_PER_MESSAGE) this.announce(all.slice(i, i + CLAIMS_PER_MESSAGE))
  }

  /** Another instance's claims; an instance that missed ours (it was away) is answered, so it closes its older source. */
  receive (payload: string): void {
    const newer = applyClaims(this.#host, this.#instance, payload)
    if (newer.length > 0) this.announce(newer)
  }
}
