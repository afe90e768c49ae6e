/**
 * The browser client of fastify-event-sources: `connect<Events>(url, options)` wraps `EventSource` with typed
 * handlers, JSON parsing, resume after a reload, and a close for good on a run's end or a termination event.
 */

/** The event map of untyped use: any event name, any data. */
export type AnyEvents = Record<string, unknown>

/** Data of the event the server sends first when a Last-Event-ID is no longer in its history. */
export interface ResetData {
  /** The id the client asked to resume from. */
  lastEventId: string
}

/** Data of a run's final event. */
export interface EndData {
  reason: 'done' | 'cancelled' | 'error' | 'lost' | (string & {})
}

/** Events the plugin itself sends; an event map may still give them other types. */
export interface PluginEvents {
  reset: ResetData
  end: EndData
}

/** What `on()` accepts: the map's events, plus `reset` and `end` unless the map types them itself. */
export type ClientEvents<Events extends object> =
  string extends keyof Events
    ? PluginEvents & Events
    : Events & Omit<PluginEvents, keyof Events>

/**
 * Why the connection closed for good: `close()` was called, the end event or the termination event arrived,
 * or the EventSource gave up (an answer other than a 200 event stream, such as 204).
 */
export type ConnectionCloseReason = 'close' | 'end' | 'terminate' | 'failed'

/** What a handler gets beside the data: the browser's `MessageEvent`, of which these members are used. */
export interface ReceivedEvent {
  readonly type: string
  /** The data as it came over the wire, before parsing. */
  readonly data: string
  readonly lastEventId: string
  readonly origin: string
}

/** The part of `EventSource` the client uses (the browser's, or undici's in Node). */
export interface EventSourceLike {
  readonly readyState: number
  readonly url: string
  close (): void
  addEventListener (type: string, listener: (event: any) => void): void
  removeEventListener (type: string, listener: (event: any) => void): void
}

export interface EventSourceConstructor {
  new (url: string, init?: { withCredentials?: boolean }): EventSourceLike
}

/** The part of `Storage` the client uses. */
export interface StorageLike {
  getItem (key: string): string | null
  setItem (key: string, value: string): void
}

export interface ConnectOptions {
  /** The EventSource class. Default `globalThis.EventSource`; in Node, undici's `EventSource`. */
  EventSource?: EventSourceConstructor | undefined
  /** Sends cookies cross-origin (`new EventSource(url, { withCredentials })`). Default false. */
  withCredentials?: boolean | undefined
  /**
   * How a handler's data is made from the text received. `true` (default): `JSON.parse`, and the text itself
   * when it is not JSON (the server sends strings as they are and serializes other values), `undefined` for
   * an empty data field. `false`: the text. A function: your own (for a custom server serializer).
   */
  parse?: boolean | ((data: string, event: string) => unknown) | undefined
  /**
   * The query parameter that carries the stored last id when the connection opens (the server's
   * `lastEventIdQuery` option must name the same). `false` sends none. Default `'lastEventId'`.
   */
  lastEventIdQuery?: string | false | undefined
  /** Where the last id is kept across reloads. Default `sessionStorage` (when readable); `false` keeps none. */
  storage?: StorageLike | false | undefined
  /** The storage key. Default `'fastify-event-sources:' + url`, so each stream URL resumes on its own. */
  storageKey?: string | undefined
  /** Resume from this id instead of the stored one. */
  lastEventId?: string | undefined
  /** The run's final event: it closes the connection for good. Default `'end'`; `false` for none. */
  endEvent?: string | false | undefined
  /** An event that closes the connection for good (e.g. `'terminate'`). Default none. */
  terminateEvent?: string | false | undefined
}

/** One connection. `Events` (an event map: name → data type) types `on()`. */
export interface Connection<Events extends object = AnyEvents> {
  /** The URL opened: the given one, with the stored last id as a query parameter when there was one. */
  readonly url: string
  /** 0 connecting, 1 open, 2 closed (for good). */
  readonly readyState: 0 | 1 | 2
  /** The id of the last event seen with an id, or the id resumed from; `''` before any. */
  readonly lastEventId: string
  /** Set once the connection closed for good. */
  readonly closeReason: ConnectionCloseReason | undefined
  /** The EventSource underneath. */
  readonly eventSource: EventSourceLike
  /**
   * Calls `handler` with the parsed data of every `event` (`'message'` for events without a name).
   * Returns a function that removes the handler.
   */
  on<K extends keyof ClientEvents<Events> & string> (event: K, handler: (data: ClientEvents<Events>[K], event: ReceivedEvent) => void): () => void
  /** Each time the stream opens (again, after a reconnect). */
  onOpen (handler: () => void): () => void
  /** Each connection error; the EventSource reconnects by itself unless `readyState` is 2. */
  onError (handler: (event: unknown) => void): () => void
  /** Once, when the connection closed for good, a task after the handlers of the event that closed it. */
  onClose (handler: (reason: ConnectionCloseReason) => void): () => void
  /** Closes for good; idempotent. */
  close (): void
}

/** Opens `url` as an event stream. */
export function connect<Events extends object = AnyEvents> (url: string | { toString (): string }, options?: ConnectOptions): Connection<Events>
