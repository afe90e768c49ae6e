import type { Cluster, Redis } from 'ioredis'
import type { CountTarget, EventSourceAdapter } from './index'

declare namespace redisAdapter {
  export interface RedisAdapterOptions {
    /**
     * An ioredis client to send commands on. The adapter subscribes on `client.duplicate()` (which it closes)
     * and never closes `client` itself.
     */
    client?: Redis | undefined
    /** Where to connect when no `client` is given. Default `redis://127.0.0.1:6379`. */
    url?: string | undefined
    /** Prefix of the stream key (`<prefix>stream`) and the channels; instances sharing it reach each other. Default `fastify-event-sources:`. */
    channelPrefix?: string | undefined
    /**
     * Shared Last-Event-ID history in a Redis Stream, replacing the plugin's in-memory one: `{ maxLen }`
     * (default 1000, trimmed approximately with `MAXLEN ~`) or `false` for live delivery only.
     * With history, a published message's id is its stream id (an `id` passed to publish is replaced).
     * `keyTtl` (ms, default 3600000) bounds how long an idempotency key is remembered, at most as long as
     * the stream holds its message. With `false`, a client resuming with a Last-Event-ID gets the reset event.
     * Messages to topics are also kept in one stream per topic (`<prefix>topic:<topic>`), and the rest in
     * `<prefix>plain`, each trimmed exactly to `maxLen`: a busy topic never evicts another's history.
     * `topics` (default 1000, or Infinity) bounds how many topic streams are kept, least recently published
     * dropped first; `ttl` (ms, default 3600000, or Infinity) drops a topic stream idle that long.
     */
    history?: { maxLen?: number | undefined, keyTtl?: number | undefined, topics?: number | undefined, ttl?: number | undefined } | false | undefined
    /** Milliseconds a publish (or a replay read) may wait for Redis before it fails. Default 2000. */
    publishTimeout?: number | undefined
    /**
     * Milliseconds plugin registration may wait for the first connection before failing with FST_ERR_SSE_ADAPTER.
     * Default 5000: keep it below Fastify's `pluginTimeout` (10000 by default), which would fire first.
     */
    connectTimeout?: number | undefined
    /**
     * Presence and counts across instances (`eventSources.presence()`, `count()`), or `false` for this instance's
     * only. `heartbeat` (ms, default 5000): an instance silent for three heartbeats (15 s by default, for example
     * one killed outright) drops out. `flush` (ms, default 250): joins and leaves are gathered this long, then
     * written in one transaction.
     */
    presence?: { heartbeat?: number | undefined, flush?: number | undefined } | false | undefined
    /**
     * Resumable runs: `lease` (ms, default 10000) is how long a producer's hold on its key lasts without renewal
     * (renewed at every beat, a quarter of it). When the instance running a producer dies, followers elsewhere get
     * the end event with reason 'lost' within about `lease` plus one beat (about 12 s by default, under 15 s).
     */
    runs?: { lease?: number | undefined } | undefined
    /**
     * `'selective'` (default): an instance receives from Redis only what it can deliver: messages to every identified
     * source and to a prefix, and messages to the identifiers and topics of its own sources (one channel each,
     * `<prefix>i:<identifier>` and `<prefix>t:<topic>`, subscribed while a source here needs it). `'all'`: every
     * instance receives every message on `<prefix>messages` and keeps what it can deliver.
     */
    routing?: 'selective' | 'all' | undefined
  }

  /**
   * A Redis Cluster (7 or later): `nodes` to start from, or an ioredis `Cluster` as `client`. Topic messages travel
   * on sharded channels (SSUBSCRIBE, only for the topics followed on the instance) and each topic's history lives on
   * the topic's own shard (`<prefix>{t:<topic>}`); the id sequence, messages to no topic, presence, claims, control
   * and runs live on the slot of `{<prefix>}`, so `channelPrefix` must not contain `{` or `}`. Ids stay one
   * increasing order for the whole cluster. `history.topics` is not supported: topic histories are bounded by
   * `history.ttl`.
   */
  export interface RedisClusterAdapterOptions extends Omit<RedisAdapterOptions, 'client' | 'url' | 'history' | 'routing'> {
    /** `[{ host, port }, ...]`: any nodes of the cluster; the others are found from them. */
    nodes?: { host: string, port: number }[] | undefined
    /** An ioredis Cluster to send commands on (never closed by the adapter); sharded subscriptions use their own connections. */
    client?: Cluster | undefined
    history?: { maxLen?: number | undefined, keyTtl?: number | undefined, ttl?: number | undefined } | false | undefined
    /**
     * Always `'selective'` on a cluster for topics (an instance SSUBSCRIBEs the channels of the topics its sources
     * follow); messages to identifiers, prefixes and everyone travel on one channel on the sequencer's slot.
     */
    routing?: 'selective' | undefined
  }

  export interface RedisAdapter extends EventSourceAdapter {
    readonly channelPrefix: string
    /** `<prefix>stream`: the Redis Stream holding the history. */
    readonly streamKey: string
    /** `<prefix>messages`: the channel messages to everyone and to prefixes travel on (every message with routing `'all'`). */
    readonly messageChannel: string
    /** `<prefix>claims`: the channel that tells other instances an identifier was opened here. */
    readonly claimChannel: string
    /** `<prefix>control`: the channel that carries `eventSources.subscribe()` / `unsubscribe()` to other instances. */
    readonly controlChannel: string
    /** How messages reach instances: see `RedisAdapterOptions.routing`. */
    readonly routing: 'selective' | 'all'
    /** Identifiers following `topic` on every live instance sharing the prefix, each once. */
    presence (topic: string): Promise<string[]>
    /** Open streams on every live instance sharing the prefix (matching `to`). */
    count (to: CountTarget | undefined): Promise<number>
  }

  export const RedisAdapter: new (options?: RedisAdapterOptions) => RedisAdapter
  export { redisAdapter as default }
  export { redisAdapter }
}

/** An adapter that carries `eventSources.publish()` to every instance through Redis (plugin option `adapter`). */
declare function redisAdapter (options?: redisAdapter.RedisAdapterOptions | redisAdapter.RedisClusterAdapterOptions): redisAdapter.RedisAdapter
export = redisAdapter
