import { createHash } from 'node:crypto'
import type { ChainableCommander, Redis } from 'ioredis'
import { FST_ERR_SSE_ADAPTER } from '../errors'
import { SERVER_NOW } from '../history/redis-streams'
import type { AdapterHost, CountTarget, LocalPresence, PresenceListener } from './adapter'

// Marks this instance alive until now + its timeout (Redis's own clock, so instances need no common clock and
// each may have its own heartbeat), forgets instances past their deadline, and keeps this instance's keys alive.
// Returns 0 when this instance's hash was gone (expired during an outage, or Redis restarted): everything must be
// written again.
const HEARTBEAT = SERVER_NOW + `local timeout = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], now + timeout, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('PTTL', KEYS[1]) < timeout then redis.call('PEXPIRE', KEYS[1], timeout) end
local held = redis.call('PEXPIRE', KEYS[2], timeout)
for i = 3, #KEYS do redis.call('PEXPIRE', KEYS[i], timeout) end
return held
`

// Reads what every other live instance holds, in one round trip. Instance keys are derived from the live set,
// which a single Redis node allows (a cluster would need the instance's keys under one hash tag per read).
const READ = SERVER_NOW + `local live = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf')
local base, own, op, arg = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
if op == 'presence' then
  local out = {}
  for _, instance in ipairs(live) do
    if instance ~= own then
      for _, id in ipairs(redis.call('ZRANGE', base .. instance .. ':t:' .. arg, 0, -1)) do out[#out + 1] = id end
    end
  end
  return out
end
local n = 0
for _, instance in ipairs(live) do
  if instance ~= own then
    local key = base .. instance
    if op == 'all' then
      n = n + (tonumber(redis.call('HGET', key, 'n')) or 0)
    elseif op == 'topic' then
      n = n + (tonumber(redis.call('HGET', key, 't:' .. arg)) or 0)
    elseif op == 'identifier' then
      if redis.call('ZSCORE', key .. ':ids', arg) then n = n + 1 end
    else
      n = n + redis.call('ZLEXCOUNT', key .. ':ids', '[' .. arg, '(' .. arg .. '\\255')
    end
  end
end
return n
`

const sha = (script: string): string => createHash('sha1').update(script).digest('hex')
const HEARTBEAT_SHA = sha(HEARTBEAT)
const READ_SHA = sha(READ)

export interface PresenceSettings {
  /** ms between heartbeats; an instance silent for three of them is dropped. */
  heartbeat: number
  /** ms joins and leaves are gathered before they are written, in one transaction. */
  flush: number
}

export const PRESENCE_DEFAULTS: PresenceSettings = { heartbeat: 5000, flush: 250 }

/**
 * This instance's share of the presence data in Redis, and the reads over every live instance's share.
 *
 * Keys (`<prefix>` is the adapter's channel prefix, `<i>` this instance's random id):
 * - `<prefix>instances`: sorted set of live instances, scored by when they expire (last heartbeat + timeout).
 * - `<prefix>presence:<i>`: hash; `n` open streams, `t:<topic>` streams following the topic.
 * - `<prefix>presence:<i>:ids`: sorted set (all scores 0, so prefixes are ranges) of identified sources.
 * - `<prefix>presence:<i>:t:<topic>`: sorted set of the identifiers following the topic.
 * Every key expires three heartbeats after the last one: a process killed outright leaves nothing for long.
 */
export class RedisPresence implements PresenceListener {
  readonly timeout: number
  #client: Redis
  #local: LocalPresence
  #log: AdapterHost['log']
  #instance: string
  #instances: string
  #base: string
  #hash: string
  #ids: string
  #settings: PresenceSettings
  #bound: <T>(operation: Promise<T>) => Promise<T>
  #streams = false
  #dirtyIds = new Set<string>()
  /** topic → identifiers whose following of it changed ('' for anonymous sources: only the count moves). */
  #dirtyTopics = new Map<string, Set<string>>()
  /** Topics whose key of identifiers may exist in Redis: kept alive by the heartbeat, deleted on shutdown. */
  #written = new Set<string>()
  #resync = true
  #timer: NodeJS.Timeout | undefined
  #heartbeat: NodeJS.Timeout | undefined
  #writing: Promise<void> | undefined
  #closed = false

  constructor (client: Redis, host: AdapterHost, prefix: string, instance: string, settings: PresenceSettings, bound: <T>(operation: Promise<T>) => Promise<T>) {
    this.#client = client
    this.#local = host.presence
    this.#log = host.log
    this.#instance = instance
    this.#settings = settings
    this.timeout = settings.heartbeat * 3
    this.#bound = bound
    this.#instances = prefix + 'instances'
    this.#base = prefix + 'presence:'
    this.#hash = this.#base + instance
    this.#ids = this.#hash + ':ids'
  }

  /** Writes this instance's sources and the first heartbeat; the adapter passes it every change from then on. */
  async start (): Promise<void> {
    this.#heartbeat = setInterval(() => { this.#beat() }, this.#settings.heartbeat).unref()
    let failed: unknown
    await this.#write().catch(err => { failed = err })
    // Alive even if the first write failed: the heartbeat retries it.
    await this.#beat()
    if (failed !== undefined) throw failed
  }

  streams (): void {
    this.#streams = true
    this.#schedule()
  }

  identifier (identifier: string): void {
    this.#dirtyIds.add(identifier)
    this.#schedule()
  }

  topic (topic: string, identifier: string | undefined): void {
    let ids = this.#dirtyTopics.get(topic)
    if (ids === undefined) this.#dirtyTopics.set(topic, (ids = new Set()))
    ids.add(identifier ?? '')
    this.#schedule()
  }

  async presence (topic: string): Promise<string[]> {
    const remote = await this.#read('presence', topic) as string[]
    const identifiers = new Set(this.#local.presence(topic))
    for (const identifier of remote) identifiers.add(identifier)
    return [...identifiers]
  }

  async count (to: CountTarget | undefined): Promise<number> {
    const local = this.#local.count(to)
    const remote = to === undefined
      ? this.#read('all', '')
      : typeof to === 'string' ? this.#read('identifier', to) : 'topic' in to ? this.#read('topic', to.topic) : this.#read('prefix', to.prefix)
    return local + Number(await remote)
  }

  /** Leaves at once: other instances stop counting this one the moment this resolves. */
  async close (): Promise<void> {
    if (this.#closed) return
    this.#closed = true
    clearTimeout(this.#timer)
    clearInterval(this.#heartbeat)
    await this.#writing?.catch(() => {})
    const keys = [this.#hash, this.#ids, ...[...this.#written].map(topic => this.#topicKey(topic))]
    try {
      await this.#bound(this.#client.multi().del(...keys).zrem(this.#instances, this.#instance).exec())
    } catch (err) {
      this.#log.debug({ err }, 'fastify-event-sources: could not remove this instance from presence; it expires on its own')
    }
  }

  async #read (op: string, arg: string): Promise<unknown> {
    const client = this.#client
    if (client.status !== 'ready') throw new FST_ERR_SSE_ADAPTER(`Redis is not connected (${client.status}); cannot read presence`)
    const args = [1, this.#instances, this.#base, this.#instance, op, arg] as const
    try {
      return await this.#bound(evalScript(client, READ_SHA, READ, args))
    } catch (err) {
      throw new FST_ERR_SSE_ADAPTER(`cannot read presence: ${(err as Error).message}`, { cause: err })
    }
  }

  #topicKey (topic: string): string {
    return this.#hash + ':t:' + topic
  }

  #schedule (): void {
    if (this.#timer !== undefined || this.#writing !== undefined || this.#closed) return
    this.#timer = setTimeout(() => {
      this.#timer = undefined
      this.#write().catch(() => {})
    }, this.#settings.flush).unref()
  }

  get #pending (): boolean {
    return this.#resync || this.#streams || this.#dirtyIds.size > 0 || this.#dirtyTopics.size > 0
  }

  /** One transaction with what changed (or, after a loss, everything), built from the state at this moment. */
  async #write (): Promise<void> {
    if (this.#writing !== undefined || this.#closed || !this.#pending) return
    const resync = this.#resync
    const streams = this.#streams
    const ids = this.#dirtyIds
    const topics = this.#dirtyTopics
    this.#resync = false
    this.#streams = false
    this.#dirtyIds = new Set()
    this.#dirtyTopics = new Map()
    const multi = this.#client.multi()
    // PEXPIRE answers whether the hash was there: if it was not, what is written now is only part of the state.
    multi.pexpire(this.#hash, this.timeout)
    if (resync) this.#all(multi)
    else this.#changes(multi, streams, ids, topics)
    multi.pexpire(this.#hash, this.timeout).pexpire(this.#ids, this.timeout)
    const writing = this.#bound(multi.exec()).then(results => {
      const error = results?.find(([err]) => err !== null)?.[0]
      if (results === null || error != null) throw error ?? new Error('the transaction was discarded')
      if (!resync && results[0][1] === 0) this.#resync = true
    })
    this.#writing = writing.then(() => {}, err => {
      // Every write is of the state at the time, so writing the same changes again later is right.
      if (resync) this.#resync = true
      this.#streams ||= streams
      for (const id of ids) this.#dirtyIds.add(id)
      for (const [topic, changed] of topics) for (const id of changed) this.topic(topic, id === '' ? undefined : id)
      this.#log.debug({ err }, 'fastify-event-sources: could not write presence; retrying with the next heartbeat')
      throw err
    }).finally(() => {
      this.#writing = undefined
    })
    await this.#writing
    // Success: what changed meanwhile goes in the next batch.
    if (this.#pending) this.#schedule()
  }

  #changes (multi: ChainableCommander, streams: boolean, ids: Set<string>, topics: Map<string, Set<string>>): void {
    const local = this.#local
    if (streams) multi.hset(this.#hash, 'n', local.streams)
    for (const id of ids) {
      if (local.hasIdentifier(id)) multi.zadd(this.#ids, 0, id)
      else multi.zrem(this.#ids, id)
    }
    for (const [topic, changed] of topics) {
      const key = this.#topicKey(topic)
      const n = local.topicStreams(topic)
      if (n > 0) multi.hset(this.#hash, 't:' + topic, n)
      else multi.hdel(this.#hash, 't:' + topic)
      for (const id of changed) {
        if (id === '') continue
        if (local.follows(topic, id)) {
          multi.zadd(key, 0, id)
          this.#written.add(topic)
        } else {
          multi.zrem(key, id)
        }
      }
      if (n === 0) this.#written.delete(topic)
      else if (this.#written.has(topic)) multi.pexpire(key, this.timeout)
    }
  }

  #all (multi: ChainableCommander): void {
    const local = this.#local
    const topics = [...local.topics()]
    const stale = new Set([...this.#written, ...topics])
    multi.del(this.#hash, this.#ids, ...[...stale].map(topic => this.#topicKey(topic)))
    this.#written.clear()
    const fields: (string | number)[] = ['n', local.streams]
    for (const topic of topics) fields.push('t:' + topic, local.topicStreams(topic))
    multi.hset(this.#hash, ...fields)
    const ids = [...local.identifiers()]
    for (let i = 0; i < ids.length; i += 1000) multi.zadd(this.#ids, ...ids.slice(i, i + 1000).flatMap(id => [0, id]))
    for (const topic of topics) {
      const followers = local.presence(topic)
      if (followers.length === 0) continue
      const key = this.#topicKey(topic)
      for (let i = 0; i < followers.length; i += 1000) multi.zadd(key, ...followers.slice(i, i + 1000).flatMap(id => [0, id]))
      multi.pexpire(key, this.timeout)
      this.#written.add(topic)
    }
  }

  async #beat (): Promise<void> {
    if (this.#closed || this.#client.status !== 'ready') return
    const keys = [this.#instances, this.#hash, this.#ids, ...[...this.#written].map(topic => this.#topicKey(topic))]
    try {
      const held = await this.#bound(evalScript(this.#client, HEARTBEAT_SHA, HEARTBEAT, [keys.length, ...keys, this.#instance, this.timeout]))
      if (held === 0) this.#resync = true
    } catch (err) {
      this.#log.debug({ err }, 'fastify-event-sources: presence heartbeat failed')
      return
    }
    if (this.#pending) await this.#write().catch(() => {})
  }
}

async function evalScript (client: Redis, hash: string, script: string, args: readonly (string | number)[]): Promise<unknown> {
  const [numKeys, ...rest] = args
  try {
    return await client.evalsha(hash, numKeys, ...rest)
  } catch (err) {
    // After a restart Redis has forgotten the script.
    if (!String((err as Error).message).startsWith('NOSCRIPT')) throw err
    return client.eval(script, numKeys, ...rest)
  }
}
