import type { EventEmitter } from 'node:events'
import type { Readable } from 'node:stream'
import type { FastifyBaseLogger, FastifyPluginAsync, FastifyReply, FastifyRequest } from 'fastify'
import type { FastifyError, FastifyErrorConstructor } from '@fastify/error'

declare module 'fastify' {
  interface FastifyInstance {
    /** The registry of this instance's active, identified event sources, and the ways to reach them. */
    eventSources: fastifyEventSources.EventSourceCollection
  }
  interface FastifyRequest {
    /**
     * Turns this request into a long-lived event stream (the reply is hijacked). With an identifier, the
     * source is registered in `fastify.eventSources` and closes any older source with the same identifier.
     * Topics declared here are followed from the start and are part of a Last-Event-ID replay.
     * @throws FST_ERR_SSE_ALREADY_STREAMING on a second call for the same request
     * @throws FST_ERR_SSE_TOO_MANY_CONNECTIONS (503, with Retry-After set) beyond a connection limit
     * @throws FST_ERR_SSE_INVALID_FIELD for a bad identifier or topic, before anything is written
     * @throws FST_ERR_SSE_ADAPTER on a route of a context made before the plugin was registered
     * @throws FST_ERR_SSE_NOT_ACCEPTABLE (406, the reply not hijacked) with `requireAccept: true`, when the
     * request's Accept header rules out `text/event-stream`
     * @typeParam Events an event map (event name → data type) that `send` checks; untyped when absent
     */
    getEventSource<Events extends object = fastifyEventSources.AnyEvents> (identifier?: string, options?: fastifyEventSources.GetEventSourceOptions): fastifyEventSources.HttpRequestEventSource<Events>
    /**
     * Whether the request's Accept header allows `text/event-stream` (RFC 9110: q-values, wildcards, the most
     * specific range wins). No Accept header accepts anything; an empty one accepts nothing.
     */
    acceptsEventStream (): boolean
  }
}

type FastifyEventSources = FastifyPluginAsync<fastifyEventSources.FastifyEventSourcesOptions>

declare namespace fastifyEventSources {
  /** Why a source stopped being active. */
  export type CloseReason =
    | 'close' | 'client' | 'error' | 'timeout' | 'slow-client' | 'drain-timeout'
    | 'replaced' | 'shutdown' | 'ping-failed'

  export interface SendOptions {
    /** Event name (`addEventListener(event, ...)` on the client). No CR, LF or NUL. */
    event?: string | undefined
    /** Event id; the client sends it back as Last-Event-ID. `''` resets it. No CR, LF or NUL. */
    id?: string | undefined
    /** Reconnection delay in ms for the client; a non-negative integer. */
    retry?: number | undefined
  }

  /**
   * A topic: a non-empty string of at most 1,024 UTF-16 code units without CR, LF or NUL. Anything else throws
   * FST_ERR_SSE_INVALID_FIELD.
   */
  export type Topic = string

  /**
   * The event map of untyped use: any event name, any data. An event map is an interface or type whose keys are
   * event names and whose values are the types of their data (`{ feed: { text: string }, message: string }`);
   * `message` is the key for messages sent without an event name.
   */
  export type AnyEvents = Record<string, unknown>

  /**
   * The arguments of `send`, `broadcast` and `publish` under an event map: `(data, { event, ...options })` with
   * `data` of that event's type, and `(data, options?)` without an event for the map's `message` key.
   * Untyped (`AnyEvents`): `(data?: unknown, options?)` as always.
   */
  export type EventArgs<Events extends object, Options extends SendOptions = SendOptions> =
    string extends keyof Events
      ? [data?: unknown, options?: Options]
      : { [K in keyof Events & string]: NamedEventArgs<Events[K], K, Options> }[keyof Events & string]

  type NamedEventArgs<Data, K extends string, Options extends SendOptions> =
    K extends 'message'
      ? (undefined extends Data ? [data?: Data, options?: Options & { event?: K | undefined }] : [data: Data, options?: Options & { event?: K | undefined }])
      : [data: Data, options: Options & { event: K }]

  /**
   * One message of an event map as a value: `{ event, data }` with `data` of that event's type (`event` may be
   * left out for `message`). For producers that yield messages of several events.
   */
  export type EventMessage<Events extends object, Options extends SendOptions = SendOptions> =
    string extends keyof Events
      ? Options & { data?: unknown }
      : { [K in keyof Events & string]: Omit<Options, 'event'> & { data: Events[K] } & (K extends 'message' ? { event?: K | undefined } : { event: K }) }[keyof Events & string]

  /** What `stream()` pulls from: an async iterable, an iterable (not a string), a Node Readable or a Web ReadableStream. */
  export type StreamSource<T> = (AsyncIterable<T> | Iterable<T> | Readable | ReadableStream<T>) & NotAString

  /** A string is iterable, one character at a time: `stream()` refuses it (send it instead). */
  export interface NotAString {
    readonly charAt?: never
  }

  /** An item of a stream as `map` receives it: the decoded text of a byte chunk, or the item itself. */
  export type StreamItem<T> = T extends Uint8Array ? string : T

  /** One message made by `map` from an item. */
  export interface StreamMessage extends SendOptions {
    /** A string as it is; any other value through the serializer. */
    data?: unknown
  }

  export interface StreamOptions<T = unknown> {
    /** Names every event (and each message whose `map` result has no `event`). No CR, LF or NUL. */
    event?: string
    /**
     * Turns an item into a message, or skips it by returning `undefined`. A byte stream's items arrive as the
     * decoded text of each chunk (a Node Readable's items are typed `unknown`: Buffers arrive as text).
     */
    map? (item: StreamItem<T>): StreamMessage | undefined
  }

  /**
   * `run()`'s options under an event map: either `map` turns each item into a message of the map (`{ event, data }`),
   * or `event` names every item, whose type must then be that event's data.
   */
  export type TypedStreamOptions<T, Events extends object> =
    | { event?: undefined, map (item: StreamItem<T>): EventMessage<Events> | undefined }
    | { [K in keyof Events & string]: [StreamItem<T>] extends [Events[K]] ? { event: K, map?: undefined } : never }[keyof Events & string]

  /** Who a published message is for: one identifier, every identifier with a prefix, or (absent) every identified source. */
  export type PublishTarget = string | { prefix: string }

  /** The followers of one or more topics, identified or not, each once. */
  export interface TopicTarget {
    topic: Topic | Topic[]
  }

  /** Identified sources: one identifier, or every identifier with a prefix. */
  export type SourceSelector = PublishTarget
  /** What a run pulls from: a source as for `stream()`, or a function given the run's signal that returns one. */
  export type RunProducer<T> = StreamSource<T> | ((signal: AbortSignal) => StreamSource<T>)

  /** A run is going on, or it ended and its events are still kept (within its ttl). */
  export type RunState = 'running' | 'ended'

  /** The `reason` of a run's end event: `'lost'` when the instance running the producer died. */
  export type RunEndReason = 'done' | 'cancelled' | 'error' | 'lost'

  export interface RunResult {
    /** Items published (the end event not counted). */
    sent: number
    /** `'done'`: the producer finished; `'cancelled'`: cancel(), abandonAfter or shutdown; `'error'`: it threw, or an item or a store failed. */
    reason: 'done' | 'cancelled' | 'error'
    /** With `'error'`: what went wrong. */
    error?: unknown
  }

  export interface RunOptions<T = unknown> {
    /** Names every item's event (as for stream()). No CR, LF or NUL. */
    event?: string
    /** Turns an item into a message or skips it, as for stream(); an `id` it returns is ignored (a run numbers its events). */
    map? (item: StreamItem<T>): StreamMessage | undefined
    /** The final event's name; its data is `{"reason": "…"}`. Default `'end'`. */
    endEvent?: string
    /** How long (ms) the run's events are kept after its end. Default 600000 (10 minutes). */
    ttl?: number
    /** Events kept for the run (the oldest go first; a follower from before them gets the reset event). Default 10000. */
    maxEvents?: number
    /** Cancel the run once it has had no follower for this long (ms). Default: a run never stops for lack of followers. */
    abandonAfter?: number
  }

  /** One stored event of a run: its place in the run (1, 2, …; the end event is the last) and the message. */
  export interface RunEntry {
    n: number
    message: PublishedMessage
    end: boolean
  }

  /** A piece of a run's log, read for a follower. */
  export interface RunPage {
    entries: RunEntry[]
    /** Events between the requested id and the first entry are no longer held. */
    gap: boolean
    /** The place of the event after the last one returned (or after the requested id when none is). */
    next: number
    /** More entries are held after this page. */
    more: boolean
    /** The requested id is the end event's (or after it): nothing more will come. */
    ended: boolean
  }

  /** Settings of one run, as a store needs them. */
  export interface RunSettings {
    endEvent: string
    ttl: number
    maxEvents: number
    abandonAfter: number | undefined
  }

  /** What a run store calls on each instance. */
  export interface RunSink {
    deliver (key: string, entry: RunEntry): void
    cancelled (key: string): boolean
    /** The producer's instance is gone: end the run with `'lost'`. */
    lost (key: string): void
    log: FastifyBaseLogger
  }

  /** Where runs are kept and how their events and cancels reach every instance (an adapter may bring one). */
  export interface RunStore {
    /** ms between two beats of the shared timer */
    readonly beatInterval: number
    /** Takes `key` for a new run, forgetting an ended one; false while a run holds it anywhere. */
    begin (key: string, settings: RunSettings): Promise<boolean>
    /** Stores an event, then has `sink.deliver` called with it on every instance. */
    append (key: string, entry: RunEntry, settings: RunSettings): Promise<void>
    /** Stores and delivers the end event unless the run has one; keeps the log `ttl` ms; lets go of `key`. An entry `n` of 0 is numbered by the store. */
    finish (key: string, entry: RunEntry, settings: RunSettings): Promise<boolean>
    /** Up to `limit` entries after the event `after` (from the start when absent or not of this run); undefined for an unknown or expired run. */
    read (key: string, after: string | undefined, limit: number): Promise<RunPage | undefined>
    state (key: string): Promise<{ state: RunState, endId: string | undefined } | undefined>
    /** Asks the instance that runs `key` to stop it; true when a running run was found. */
    cancel (key: string): Promise<boolean>
    /** The shared timer: runs going on here (renew), runs followed here; resolves with running keys followed elsewhere. */
    beat (running: readonly string[], followed: readonly string[]): Promise<readonly string[] | undefined>
    close (): Promise<void>
  }

  /** What `count()` counts: one identifier, every identifier with a prefix, or the followers of one topic. */
  export type CountTarget = string | { prefix: string } | { topic: Topic }

  export interface PublishOptions extends SendOptions {
    to?: PublishTarget | TopicTarget | undefined
    /**
     * An idempotency key: a publish retried with the same key while history still holds the first one's message
     * is stored and delivered once (on every instance). Non-empty, no CR, LF or NUL, at most 1024 characters.
     * Without history the key is not checked.
     */
    key?: string | undefined
  }

  export interface BroadcastOptions extends SendOptions {
    /** Only sources whose identifier passes receive the message (with `topic`, anonymous followers are left out). */
    filter?: ((identifier: string) => boolean) | undefined
    /** Only this instance's followers of this topic (or of any of these), each once, identified or not. */
    topic?: Topic | Topic[] | undefined
  }

  export interface GetEventSourceOptions {
    /** Topics to follow from the start; their messages after a Last-Event-ID are replayed on reconnect. */
    topics?: Topic | Topic[] | undefined
  }

  export interface ReplayInfo {
    /** How many stored messages were re-sent on this connection. */
    replayed: number
    /** The Last-Event-ID was not in the history (too old, or from another epoch); a reset event was sent first. */
    gap: boolean
  }

  /** Sisk's ping policy: set `dataMessage` and `interval`, then `start()`. */
  export interface PingPolicy {
    /** The comment text written as `: <dataMessage>`; never fires `message` on the client. */
    dataMessage: string
    /** Milliseconds between pings; default 5000. */
    interval: number
    readonly isRunning: boolean
    /** Idempotent: a source never has two ping timers. Sources with the same interval and message share one. */
    start (): this
    stop (): this
  }

  /** One stream. `Events` (an event map) types what `send` accepts; untyped by default. */
  export interface HttpRequestEventSource<Events extends object = AnyEvents> {
    readonly identifier: string | undefined
    readonly isActive: boolean
    readonly request: FastifyRequest
    readonly reply: FastifyReply
    /** The Last-Event-ID request header (or the `lastEventIdQuery` parameter, when that option is set). */
    readonly lastEventId: string | undefined
    /** Body bytes handed to the socket, pings included. */
    readonly sentContentLength: number
    /** Aborted when the source ends, for any reason; `signal.reason` is the CloseReason. */
    readonly signal: AbortSignal
    /** Bytes not yet handed to the kernel: the socket's buffer plus the plugin's queue. */
    readonly bufferedAmount: number
    /** Messages discarded under `slowClient: 'drop'`. */
    readonly droppedMessages: number
    /** Pings discarded under `slowClient: 'drop'` because they would have passed `maxBufferedBytes`. */
    readonly droppedPings: number
    /** Set once a Last-Event-ID replay is done. */
    readonly replay: ReplayInfo | undefined
    /** Set once the source is no longer active. */
    readonly closeReason: CloseReason | undefined
    /** When the source was opened (ms since the epoch, with a fraction: it orders opens across instances). */
    readonly openedAt: number
    /** Whether the response head was written. */
    readonly headersSent: boolean
    /** A slot for your own per-connection data. */
    readonly state: Record<string, unknown>
    /** This source's ping policy (the plugin's `ping` option sets its defaults and starts it). */
    readonly ping: PingPolicy
    /** The topics this source follows now; empty once it has ended. */
    readonly topics: ReadonlySet<Topic>

    /**
     * Follows more topics: live messages from now on (only topics declared at open are replayed on reconnect).
     * Does nothing on an ended source.
     * @throws FST_ERR_SSE_INVALID_FIELD for a bad topic, before anything changes
     */
    subscribe (topics: Topic | Topic[]): this
    /** Stops following topics. Does nothing on an ended source. @throws FST_ERR_SSE_INVALID_FIELD for a bad topic */
    unsubscribe (topics: Topic | Topic[]): this

    /** @throws FST_ERR_SSE_HEADERS_SENT after the head was written; FST_ERR_SSE_INVALID_HEADER for a bad name or value */
    appendHeader (name: string, value: string): this
    /**
     * Sends one event. Strings go as they are; other values through the serializer; null/undefined as an empty
     * data line. Returns false, writing nothing, when the source is not active or the message was dropped.
     * With an event map, `event` must be one of its keys and `data` of that key's type (no event: `message`).
     * @throws FST_ERR_SSE_INVALID_FIELD for a bad event, id or retry; FST_ERR_SSE_SERIALIZATION if serializing fails
     */
    send (...args: EventArgs<Events>): boolean
    /**
     * As send, resolving true once the socket took the message and needs no drain (past half of maxBufferedBytes,
     * once what is buffered has reached the kernel); false if the source ends first.
     */
    sendAsync (...args: EventArgs<Events>): Promise<boolean>
    /**
     * Pipes a producer into this stream, one message per item, pulling the next item only when the socket has
     * room (the producer runs at the client's pace). Strings are the data; bytes are decoded as UTF-8 text with a
     * streaming decoder; other values go through the serializer. Never closes the stream. Resolves with the
     * number of messages sent once the producer is done, or at once when the stream ends first (the producer is
     * stopped: `return()` on its iterator, `destroy()` on a Readable, `cancel()` on a ReadableStream's reader).
     * Rejects with the producer's own error (the stream stays open), or without writing a bad item:
     * FST_ERR_SSE_INVALID_FIELD (a bad event/id/retry, a bad source such as a string, bad options) or
     * FST_ERR_SSE_SERIALIZATION. Give the producer `signal` so it can stop its own work too.
     */
    stream<K extends keyof Events & string> (source: StreamSource<Events[K]>, options: { event: K, map?: undefined }): Promise<number>
    stream<T> (source: StreamSource<T>, options: { event?: undefined, map (item: StreamItem<T>): EventMessage<Events> | undefined }): Promise<number>
    stream<T> (source: StreamSource<T>, options?: string extends keyof Events ? StreamOptions<T> : never): Promise<number>
    /**
     * Follows the run `key`: its events from the start, or after this source's Last-Event-ID, written in bounded
     * pieces, then live; the source is closed after the end event, and the promise resolves then (or when the
     * source ends first). An unknown or expired run closes the source at once: check `eventSources.runState()`
     * first to answer 204 instead. Rejects with FST_ERR_SSE_INVALID_FIELD for a bad key.
     */
    follow (key: string): Promise<void>
    /** Writes a comment (`: text`), invisible to the client's handlers. */
    comment (text: string): boolean
    /** Writes the response head now, so the client's `open` fires. */
    flush (): this
    /** Idempotent. Writes what is queued, ends the response, leaves the collection. */
    close (): FastifyReply
    /** Resolves when the source stops being active. */
    keepAlive (): Promise<void>
    /** As keepAlive, and closes the source after `timeoutMs` without a message sent. Never rejects; throws FST_ERR_SSE_INVALID_FIELD at the call for a bad timeout. */
    waitForFail (timeoutMs: number): Promise<void>
    withPing (configure: (ping: PingPolicy) => void): this
    [Symbol.dispose] (): void
    [Symbol.asyncDispose] (): Promise<void>
  }

  /** What `fastify.eventSources.metrics()` returns. Counters only grow; gauges are current values. */
  export interface EventSourcesMetrics {
    /** Gauge: every open stream on this instance, identified or not. */
    openStreams: number
    /** Gauge: active identified sources on this instance. */
    activeConnections: number
    /** Gauge: local topics with at least one follower. */
    topics: number
    /** Gauge: producers running on this instance (`run()`). */
    runs: number
    /** Streams opened (every successful `getEventSource()`). */
    opened: number
    /** Messages this instance's `publish()` handed to the adapter, which accepted them. */
    published: number
    /** Messages this instance got from its adapter to deliver (with the in-process adapter, every publish). */
    received: number
    /**
     * Events written to sources: every accepted `send`, each source reached by `broadcast` or `publish`, replayed
     * messages and reset events. Pings and comments are not counted.
     */
    delivered: number
    /** Body bytes handed to sockets, pings and comments included (the sum of every source's sentContentLength). */
    bytes: number
    /** Messages not written under `slowClient: 'drop'`. */
    droppedMessages: number
    /** Pings not written under `slowClient: 'drop'`. */
    droppedPings: number
    /** Comments not written under `slowClient: 'drop'`. */
    droppedComments: number
    /** Replays done: reconnections with a Last-Event-ID (with `history: false`, each reports a gap). */
    replays: number
    /** Replays that reported a gap (a reset event was sent). */
    gaps: number
    /** Streams ended, by close reason; every reason is present, from 0. */
    closes: Record<CloseReason, number>
  }

  /** Which frames `slowClient: 'drop'` can discard. */
  export type DropKind = 'message' | 'ping' | 'comment'

  /**
   * Payloads of the plugin's `node:diagnostics_channel` channels, by channel name. Each is published
   * synchronously where the event happens, and only when the channel has subscribers.
   */
  export interface DiagnosticsMessages {
    /** A stream opened (every `getEventSource()` that did not throw, identified or not), before anything was written. */
    'fastify-event-sources:open': { source: HttpRequestEventSource }
    /** A stream ended; `source.isActive` is already false and it has left the collection. */
    'fastify-event-sources:close': { source: HttpRequestEventSource, reason: CloseReason }
    /** `publish()` was accepted by the adapter. `message.data` is the serialized text. */
    'fastify-event-sources:publish': { message: PublishedMessage }
    /** A Last-Event-ID replay was written: `replayed` stored messages, after a reset event when `gap`. */
    'fastify-event-sources:replay': { source: HttpRequestEventSource, replayed: number, gap: boolean }
    /** A frame was not written because the source was over `maxBufferedBytes` under `slowClient: 'drop'`. */
    'fastify-event-sources:drop': { source: HttpRequestEventSource, kind: DropKind }
  }

  export interface EventSourceCollectionEvents {
    registered: [source: HttpRequestEventSource]
    unregistered: [source: HttpRequestEventSource]
  }

  export interface EventSourceCollection extends EventEmitter {
    /** Active identified sources on this instance. */
    readonly activeConnections: number
    /** Every open stream on this instance, identified or not. */
    readonly openStreams: number
    /** Shared ping timers running now. */
    readonly pingTimers: number
    /** A synchronous snapshot of this instance's counters and gauges, cheap enough for every scrape. */
    metrics (): EventSourcesMetrics
    /** Run producers going on on this instance. */
    readonly runningRuns: number
    /**
     * Runs a producer under `key`: each item is published to the topic `key` and kept in the run's log, in order;
     * a final event (`endEvent`, data `{"reason": "…"}`) ends it. Resolves when the run is over; rejects with
     * FST_ERR_SSE_RUN_EXISTS while a run of `key` goes on on any instance, FST_ERR_SSE_INVALID_FIELD for a bad
     * key or option.
     */
    run<T> (key: string, producer: RunProducer<T>, options?: RunOptions<T>): Promise<RunResult>
    /**
     * `run<ChatEvents, Item>(key, producer, { map })`: each item becomes a message of the event map (or `event` names
     * them all, when the items are that event's data). Name the item type too: TypeScript infers none once one is given.
     */
    run<Events extends object, T = unknown> (key: string, producer: RunProducer<T>, options: Omit<RunOptions<T>, 'event' | 'map'> & TypedStreamOptions<T, NoInfer<Events>>): Promise<RunResult>
    /** Stops the run of `key` wherever its producer runs (its signal aborts); true when a running run was found. */
    cancel (key: string): Promise<boolean>
    /**
     * `'running'` or `'ended'`; undefined when there is nothing to follow: an unknown or expired key, or, given the
     * client's Last-Event-ID, an ended run whose end event it already has. Answer 204 then.
     */
    runState (key: string, lastEventId?: string): Promise<RunState | undefined>
    /** This instance only: a live object is never on another instance. */
    getByIdentifier (identifier: string): HttpRequestEventSource | undefined
    find (predicate: (identifier: string) => boolean): HttpRequestEventSource[]
    all (): HttpRequestEventSource[]
    /**
     * Frames once and writes to every matching active identified source of this instance; returns how many got it. Live only.
     * `broadcast<ChatEvents>(data, { event })` checks the event and its data against an event map.
     */
    broadcast<Events extends object = AnyEvents> (...args: EventArgs<NoInfer<Events>, BroadcastOptions>): number
    /**
     * Stores the message in history (when on) and delivers it on every instance the adapter reaches.
     * `publish<ChatEvents>(data, { event })` checks the event and its data against an event map.
     */
    publish<Events extends object = AnyEvents> (...args: EventArgs<NoInfer<Events>, PublishOptions>): Promise<void>
    /** This instance's sources following `topic`, identified or not. */
    subscribers (topic: Topic): HttpRequestEventSource[]
    /**
     * The sources matching `to` on every instance follow `topics` from now on (live only). Resolves once this
     * instance's have joined; other instances apply it when the adapter delivers it.
     */
    subscribe (to: SourceSelector, topics: Topic | Topic[]): Promise<void>
    /** The sources matching `to` on every instance stop following `topics`. */
    unsubscribe (to: SourceSelector, topics: Topic | Topic[]): Promise<void>
    /**
     * The identifiers of the open sources following `topic` on every instance the adapter reaches, each once
     * (anonymous followers have none; `count({ topic })` counts them). Without an adapter, or with one that does
     * not provide presence, this instance's.
     * Rejects with FST_ERR_SSE_INVALID_FIELD for a bad topic, FST_ERR_SSE_ADAPTER when the adapter cannot answer.
     */
    presence (topic: Topic): Promise<string[]>
    /**
     * Open streams on every instance the adapter reaches, identified or not; with `to`, only the identified ones
     * with that identifier or prefix, or the followers of that topic (identified or not).
     * Rejects with FST_ERR_SSE_INVALID_FIELD for a bad target, FST_ERR_SSE_ADAPTER when the adapter cannot answer.
     */
    count (to?: CountTarget): Promise<number>
    on<K extends keyof EventSourceCollectionEvents> (event: K, listener: (...args: EventSourceCollectionEvents[K]) => void): this
    off<K extends keyof EventSourceCollectionEvents> (event: K, listener: (...args: EventSourceCollectionEvents[K]) => void): this
    once<K extends keyof EventSourceCollectionEvents> (event: K, listener: (...args: EventSourceCollectionEvents[K]) => void): this
  }

  /** A published message as stored and as carried between instances; data is already serialized. */
  export interface PublishedMessage {
    data: string
    event?: string
    id?: string
    retry?: number
    to?: PublishTarget | TopicTarget
    /**
     * The store's order key, `<int>-<int>` compared as numbers (memory history: `<epoch ms>-<seq>`; Redis: the
     * stream id). Equal to `id` unless an explicit id was given to publish. A source is never written a message
     * at or before the last position it was given.
     */
    position?: string
  }

  export interface ReplayResult {
    messages: PublishedMessage[]
    gap: boolean
    latestId?: string
    /**
     * The position of the newest message the store held when it was read, whoever it was for: a live copy of
     * any message at or before it was either in `messages` or not for this source. Defaults to `latestId` when
     * that is a position.
     */
    position?: string
  }

  export interface HistoryStore {
    /**
     * Stores the message and returns its SSE id. A store that orders its messages sets `message.position` on
     * the message it is given, so live delivery can tell a copy of a replayed message.
     */
    append (message: PublishedMessage): string | Promise<string>
    /**
     * Every held message after `lastEventId` for a source with this identifier (undefined: an anonymous source)
     * following `topics` (those declared at open), in publish order, each once. A store written before topics
     * existed may ignore `topics`: topic messages are then simply not replayed.
     */
    readAfter (lastEventId: string, identifier: string | undefined, topics?: readonly Topic[]): ReplayResult | Promise<ReplayResult>
  }

  /** A subscribe or unsubscribe for the sources matching `to`, carried to every instance. */
  export interface ControlMessage {
    op: 'subscribe' | 'unsubscribe'
    to: SourceSelector
    topics: Topic[]
  }

  /** Told of every change to who is connected here; an adapter batches these into what other instances read. */
  export interface PresenceListener {
    /** A stream opened or ended. */
    streams (): void
    /** A source with this identifier was registered or left the collection. */
    identifier (identifier: string): void
    /** A source (with this identifier, if any) started or stopped following `topic`. */
    topic (topic: Topic, identifier: string | undefined): void
  }

  /** Who is connected to this instance, read live from the plugin's own structures. */
  export interface LocalPresence {
    /** Open streams, identified or not. */
    readonly streams: number
    presence (topic: Topic): string[]
    count (to?: CountTarget): number
    hasIdentifier (identifier: string): boolean
    identifiers (): Iterable<string>
    /** The topics some open source follows here. */
    topics (): Iterable<Topic>
    /** Open streams following `topic`, identified or not. */
    topicStreams (topic: Topic): number
    /** Whether the source with this identifier follows `topic`. */
    follows (topic: Topic, identifier: string): boolean
    /** One listener at a time (undefined removes it). */
    watch (listener: PresenceListener | undefined): void
  }

  export interface AdapterHost {
    /** This instance's sources, for an adapter that provides `presence` and `count` across instances. */
    presence: LocalPresence
    deliver (message: PublishedMessage): void
    closeOlder (identifier: string, openedAt: number): void
    /** Applies a subscribe or unsubscribe to this instance's sources. */
    control (message: ControlMessage): void
    /**
     * Live delivery on this instance missed messages the history no longer holds: every identified source here
     * gets the reset event (`id:` latestId, data `{"lastEventId": lastId}`, lastId being where the loss began). A
     * source whose position is already after latestId gets its own position as `id:` instead.
     */
    gap (latestId: string | undefined, lastId: string | undefined): void
    /** This instance's identified sources, as [identifier, openedAt]: what it announces again after a reconnect. */
    identified (): [identifier: string, openedAt: number][]
    /** When this instance's source with that identifier was opened, if it has one. */
    openedAt (identifier: string): number | undefined
    log: FastifyBaseLogger
  }

  /** What publish passes on to the adapter besides the message. */
  export interface AdapterPublishOptions {
    /** The idempotency key given to publish. */
    key?: string | undefined
  }

  /** The seam between publish and what carries messages: this process (default) or a broker such as Redis. */
  export interface EventSourceAdapter {
    readonly hasHistory: boolean
    attach (host: AdapterHost): void | Promise<void>
    publish (message: PublishedMessage, options?: AdapterPublishOptions): Promise<void>
    replay (lastEventId: string, identifier: string | undefined, topics?: readonly Topic[]): Promise<ReplayResult>
    claim? (identifier: string, openedAt: number): void
    /**
     * The position a stream opening now without `Last-Event-ID` starts after: live messages at or before it reach it
     * no more. For an adapter that may deliver, just after a stream opens, messages published before (one that reads
     * a new subscription's window from its history). Without it, a new stream takes every live message.
     */
    startPosition? (): string | undefined
    /**
     * Carries a subscribe or unsubscribe to every instance, this one included (`host.control`). Without it,
     * `eventSources.subscribe()` applies to this instance only.
     */
    control? (message: ControlMessage): Promise<void>
    /** Identifiers following `topic` on every instance, each once. Without it, `presence()` answers for this instance. */
    presence? (topic: Topic): Promise<string[]>
    /** Open streams on every instance (matching `to`). Without it, `count()` answers for this instance. */
    count? (to: CountTarget | undefined): Promise<number>
    /** Where runs are kept across instances; without it, each instance keeps its own runs in memory. */
    runStore? (sink: RunSink): RunStore
    close (): Promise<void>
  }

  export interface FastifyEventSourcesOptions {
    /** Turns non-string data into text. Default JSON.stringify. */
    serializer?: ((value: unknown) => string) | undefined
    /** Sent as `retry:` when a stream opens (ms). */
    retry?: number | undefined
    /** A ping policy started on every source; off by default. */
    ping?: { interval?: number | undefined, dataMessage?: string | undefined } | false | undefined
    /** Extra headers for every stream. */
    headers?: Record<string, string> | undefined
    /** Bound on what one source may hold unsent (socket buffer + queue). Default 1 MiB. */
    maxBufferedBytes?: number | undefined
    /** Past maxBufferedBytes: 'close' ends the source (default), 'drop' discards the new message. */
    slowClient?: 'close' | 'drop' | undefined
    /** A source waiting for drain longer than this (ms) is ended. Default 30000. */
    drainTimeout?: number | undefined
    /** Open streams per instance, identified or not. Default unlimited. */
    maxConnections?: number | undefined
    /** Open streams per connectionKey. Default unlimited. */
    maxConnectionsPerKey?: number | undefined
    /** The key counted by maxConnectionsPerKey. Default the client IP. */
    connectionKey?: ((request: FastifyRequest) => string) | undefined
    /**
     * Last-Event-ID history for publish, or false. Ignored with an adapter that brings its own.
     * - `size`: messages kept per topic, and for the messages to no topic. Default 1000.
     * - `topics`: topic histories kept; past it the least recently published is dropped. Default 1000.
     * - `ttl`: a topic history with nothing published for this long (ms) is dropped. Default 3600000 (1 h).
     */
    history?: { size?: number | undefined, topics?: number | undefined, ttl?: number | undefined } | false | undefined
    /** Event name sent first when a Last-Event-ID is not in history. Default 'reset'. */
    resetEvent?: string | undefined
    /** How publish reaches other instances. Default: this process only. */
    adapter?: EventSourceAdapter | undefined
    /** Coalesce writes: every source's messages of one tick go out in one socket write. Default false. */
    batch?: boolean | undefined
    /**
     * HTTP/1.1 body framing. false (default): the body runs to the end of the connection (`Connection: close`, no
     * `Transfer-Encoding`), one write per event with no chunk header. true: `Transfer-Encoding: chunked`, for an
     * intermediary that insists on it. HTTP/1.0 requests and HTTP/2 are not affected.
     */
    chunked?: boolean | undefined
    /** Longest a fan-out (broadcast, publish, ping round) blocks the event loop before yielding, in ms. Default 50. */
    fanOutSlice?: number | undefined
    /** On fastify.close(), how long (ms) ended streams may take to flush before their sockets are cut. Default 1000. */
    closeGrace?: number | undefined
    /** Also read the last event id from this query parameter when the header is absent. Off by default. */
    lastEventIdQuery?: string | false | undefined
    /**
     * When true, `getEventSource()` on a request whose Accept header rules out `text/event-stream` throws
     * FST_ERR_SSE_NOT_ACCEPTABLE (406) before touching the reply. Default false.
     */
    requireAccept?: boolean | undefined
  }

  /** One in-memory ring for every message (no per-topic retention); the default is MemoryTopicHistory. */
  export class MemoryHistory implements HistoryStore {
    constructor (size: number, epoch?: number)
    readonly size: number
    readonly epoch: string
    /** Stores the message; a key is remembered (see `keyed`) while the message is held. */
    append (message: PublishedMessage, key?: string): string
    /** The id of the held message published with this idempotency key, if any. */
    keyed (key: string): string | undefined
    readAfter (lastEventId: string, identifier: string | undefined, topics?: readonly Topic[]): ReplayResult
  }

  /** The default history: one ring per topic plus one for the rest, ids from one sequence. */
  export class MemoryTopicHistory implements HistoryStore {
    constructor (options?: { size?: number | undefined, topics?: number | undefined, ttl?: number | undefined, epoch?: number | undefined })
    readonly size: number
    readonly maxTopics: number
    readonly ttl: number
    readonly epoch: string
    /** Topic histories held now. */
    readonly topicCount: number
    /** Stores the message; a key is remembered (see `keyed`) while the message is held. */
    append (message: PublishedMessage, key?: string): string
    /** The id of the held message published with this idempotency key, if any. */
    keyed (key: string): string | undefined
    readAfter (lastEventId: string, identifier: string | undefined, topics?: readonly Topic[]): ReplayResult
  }

  export const errors: {
    FST_ERR_SSE_ALREADY_STREAMING: FastifyErrorConstructor<{ code: 'FST_ERR_SSE_ALREADY_STREAMING', statusCode: 500 }>
    FST_ERR_SSE_HEADERS_SENT: FastifyErrorConstructor<{ code: 'FST_ERR_SSE_HEADERS_SENT', statusCode: 500 }, [string]>
    FST_ERR_SSE_INVALID_HEADER: FastifyErrorConstructor<{ code: 'FST_ERR_SSE_INVALID_HEADER', statusCode: 500 }, [string]>
    FST_ERR_SSE_INVALID_FIELD: FastifyErrorConstructor<{ code: 'FST_ERR_SSE_INVALID_FIELD', statusCode: 500 }, [string, string]>
    FST_ERR_SSE_INVALID_OPTION: FastifyErrorConstructor<{ code: 'FST_ERR_SSE_INVALID_OPTION', statusCode: 500 }, [string, string]>
    FST_ERR_SSE_SERIALIZATION: FastifyErrorConstructor<{ code: 'FST_ERR_SSE_SERIALIZATION', statusCode: 500 }, [string]>
    FST_ERR_SSE_TOO_MANY_CONNECTIONS: FastifyErrorConstructor<{ code: 'FST_ERR_SSE_TOO_MANY_CONNECTIONS', statusCode: 503 }, [string]>
    FST_ERR_SSE_CLOSING: FastifyErrorConstructor<{ code: 'FST_ERR_SSE_CLOSING', statusCode: 503 }>
    FST_ERR_SSE_PUBLISH_FAILED: FastifyErrorConstructor<{ code: 'FST_ERR_SSE_PUBLISH_FAILED', statusCode: 503 }, [string]>
    FST_ERR_SSE_ADAPTER: FastifyErrorConstructor<{ code: 'FST_ERR_SSE_ADAPTER', statusCode: 500 }, [string]>
    FST_ERR_SSE_NOT_ACCEPTABLE: FastifyErrorConstructor<{ code: 'FST_ERR_SSE_NOT_ACCEPTABLE', statusCode: 406 }>
    FST_ERR_SSE_RUN_EXISTS: FastifyErrorConstructor<{ code: 'FST_ERR_SSE_RUN_EXISTS', statusCode: 409 }, [string]>
  }

  export type { FastifyError }

  export const fastifyEventSources: FastifyEventSources
  export { fastifyEventSources as default }
}

declare function fastifyEventSources (...params: Parameters<FastifyEventSources>): ReturnType<FastifyEventSources>
export = fastifyEventSources
