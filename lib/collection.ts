import { EventEmitter } from 'node:events'
import type { Http2ServerRequest, Http2Session } from 'node:http2'
import type { FastifyBaseLogger, FastifyReply, FastifyRequest } from 'fastify'
import type { AdapterHost, ControlMessage } from './adapters/adapter'
import {
  FST_ERR_SSE_ALREADY_STREAMING, FST_ERR_SSE_CLOSING, FST_ERR_SSE_HEADERS_SENT, FST_ERR_SSE_INVALID_FIELD,
  FST_ERR_SSE_TOO_MANY_CONNECTIONS
} from './errors'
import { EventSource, type SendOptions, type SourceContext } from './event-source'
import { framePositions, resetFrameAt, resetFrames } from './frame-positions'
import { checkEventOptions, eventFrame, messageFrame, serialize } from './frame'
import type { PublishedMessage } from './history/history'
import { Metrics } from './metrics'
import type { Settings } from './options'
import { parsePosition, type Position } from './position'
import { PingScheduler } from './ping'
import { MemoryRunStore } from './history/memory-runs'
import { Runs } from './runs'
import { WriteScheduler } from './scheduler'
import { isTarget, type Target } from './target'
import { checkTopics, checkTopic } from './topics'
import { countTarget, InstancePresence, TrackedTopicIndex, type CountTarget } from './presence'
import type { EventSourcesMetrics, GetEventSourceOptions, RunOptions, RunProducer, RunResult, RunState, SourceSelector, EventSourceCollection as PublicCollection } from '../types/index'

export interface BroadcastOptions extends SendOptions {
  filter?: (identifier: string) => boolean
  topic?: string | string[]
}

export interface PublishOptions extends SendOptions {
  to?: Target
  key?: string
}

/**
 * Sisk's EventSources: the registry of active, identified sources of this instance, plus the ways to reach
 * them (broadcast here, publish everywhere the adapter reaches). Also counts every open stream for the limits
 * and for shutdown.
 */
export class EventSourceCollection extends EventEmitter implements PublicCollection {
  #settings: Settings
  #byId = new Map<string, EventSource>()
  #open = new Set<EventSource>()
  /** Ended, but their response may not have left yet: shutdown waits for them too, and cuts them after the grace. */
  #ending = new Set<EventSource>()
  #perKey = new Map<string, number>()
  #closing = false
  #topics = new TrackedTopicIndex<EventSource>()
  #presence = new InstancePresence(this.#byId, this.#open, this.#topics)
  #ctx: SourceContext
  #log: FastifyBaseLogger
  #runs: Runs
  #metrics = new Metrics({
    openStreams: () => this.#open.size,
    activeConnections: () => this.#byId.size,
    topics: () => this.#topics.topicCount,
    runs: () => this.#runs.running
  })

  constructor (settings: Settings, log: FastifyBaseLogger) {
    super()
    this.#settings = settings
    this.#log = log
    const scheduler = new WriteScheduler(settings.fanOutSlice, settings.drainTimeout)
    const adapter = settings.adapter
    this.#runs = new Runs(settings, log, sink => adapter.runStore?.(sink) ?? new MemoryRunStore(sink, message => adapter.publish(message)))
    this.#ctx = {
      runs: this.#runs,
      settings,
      scheduler,
      pings: new PingScheduler(scheduler),
      topics: this.#topics,
      metrics: this.#metrics,
      release: source => this.#release(source)
    }
  }

  /** Active identified sources on this instance. */
  get activeConnections (): number {
    return this.#byId.size
  }

  /** Every open stream on this instance, identified or not. */
  get openStreams (): number {
    return this.#open.size
  }

  /** Shared ping timers running now: one per distinct (interval, message), however many sources ping. */
  get pingTimers (): number {
    return this.#ctx.pings.timers
  }

  /** A snapshot of this instance's counters and gauges; cheap enough for every scrape. */
  metrics (): EventSourcesMetrics {
    return this.#metrics.snapshot()
  }

  getByIdentifier (identifier: string): EventSource | undefined {
    return this.#byId.get(identifier)
  }

  find (predicate: (identifier: string) => boolean): EventSource[] {
    if (typeof predicate !== 'function') throw new FST_ERR_SSE_INVALID_FIELD('predicate', 'must be a function (identifier) => boolean')
    const found: EventSource[] = []
    for (const [identifier, source] of this.#byId) if (predicate(identifier)) found.push(source)
    return found
  }

  all (): EventSource[] {
    return [...this.#byId.values()]
  }

  /** @internal the topic index, for tests that measure it */
  get _topics (): TrackedTopicIndex<EventSource> {
    return this.#topics
  }

  /** This instance's sources following `topic`, identified or not. */
  subscribers (topic: string): EventSource[] {
    const followers = this.#topics.followers(checkTopic(topic))
    return followers === undefined ? [] : [...followers]
  }

  /** The identifiers of the open sources following `topic` on every instance the adapter reaches, each once. */
  async presence (topic: string): Promise<string[]> {
    checkTopic(topic)
    const adapter = this.#settings.adapter
    return adapter.presence === undefined ? this.#presence.presence(topic) : adapter.presence(topic)
  }

  /** Open streams on every instance the adapter reaches, identified or not; or only those matching `to`. */
  async count (to?: CountTarget): Promise<number> {
    const target = countTarget(to)
    const adapter = this.#settings.adapter
    return adapter.count === undefined ? this.#presence.count(target) : adapter.count(target)
  }

  /**
   * Frames once and writes to every active identified source here (or those `filter` accepts), or to the
   * followers of `topic`. Live only: no history.
   */
  broadcast (data?: unknown, options?: BroadcastOptions): number {
    const topic = options?.topic
    const topics = topic === undefined ? undefined : checkTopics(topic, 'topic', true)
    const frame = messageFrame(data, options, this.#settings.serializer)
    const filter = options?.filter
    if (filter !== undefined && typeof filter !== 'function') throw new FST_ERR_SSE_INVALID_FIELD('filter', 'must be a function (identifier) => boolean')
    let targets: Iterable<EventSource> = topics === undefined ? this.#byId.values() : this.#topics.union(topics)
    if (filter !== undefined) {
      const passed: EventSource[] = []
      for (const source of targets) if (source.identifier !== undefined && filter(source.identifier)) passed.push(source)
      targets = passed
    }
    return this.#ctx.scheduler.fanOut(targets, frame, 'message')
  }

  /** Stores the message in history (when on) and delivers it to matching sources on every instance the adapter reaches. */
  async publish (data?: unknown, options?: PublishOptions): Promise<void> {
    const to = publishTarget(options?.to)
    const key = options?.key
    if (key !== undefined && (typeof key !== 'string' || key === '' || key.length > 1024 || /[\r\n\0]/.test(key))) {
      throw new FST_ERR_SSE_INVALID_FIELD('key', 'must be a non-empty string of at most 1024 characters without CR, LF or NUL')
    }
    const event = options?.event
    const id = options?.id
    const retry = options?.retry
    checkEventOptions(event, id, retry)
    const message: PublishedMessage = { data: serialize(data, this.#settings.serializer) }
    if (event !== undefined) message.event = event
    if (id !== undefined) message.id = id
    if (retry !== undefined) message.retry = retry
    if (to !== undefined) message.to = to
    if (key === undefined) await this.#settings.adapter.publish(message)
    else await this.#settings.adapter.publish(message, { key })
    this.#metrics.publish(message)
  }

  /** The sources matching `to` on every instance the adapter reaches follow `topics` from now on. */
  async subscribe (to: SourceSelector, topics: string | string[]): Promise<void> {
    await this.#control('subscribe', to, topics)
  }

  /** The sources matching `to` on every instance the adapter reaches stop following `topics`. */
  async unsubscribe (to: SourceSelector, topics: string | string[]): Promise<void> {
    await this.#control('unsubscribe', to, topics)
  }

  async #control (op: ControlMessage['op'], to: SourceSelector, topics: string | string[]): Promise<void> {
    if (to === undefined || !isTarget(to)) throw new FST_ERR_SSE_INVALID_FIELD('to', 'must be an identifier string or { prefix: string }')
    const message: ControlMessage = { op, to: typeof to === 'string' ? to : { prefix: to.prefix }, topics: checkTopics(topics) }
    const adapter = this.#settings.adapter
    if (adapter.control === undefined) this.#applyControl(message)
    else await adapter.control(message)
  }

  #applyControl (message: ControlMessage): void {
    const to = message.to
    const sources = typeof to === 'string' ? [this.#byId.get(to)] : this.find(identifier => identifier.startsWith(to.prefix))
    for (const source of sources) {
      if (source === undefined) continue
      if (message.op === 'subscribe') source.subscribe(message.topics)
      else source.unsubscribe(message.topics)
    }
  }

  /** Producers running on this instance. */
  get runningRuns (): number {
    return this.#runs.running
  }

  /**
   * Runs a producer under `key`: each item is published to the topic `key` and kept in the run's log, which
   * `follow(key)` reads on any instance; a final event ends it. One running producer per key everywhere.
   */
  run<T> (key: string, producer: RunProducer<T>, options?: RunOptions<T>): Promise<RunResult> {
    return this.#runs.run(key, producer, options as RunOptions<unknown>)
  }

  /** Stops the run of `key` wherever its producer runs; true when a running run was found. */
  cancel (key: string): Promise<boolean> {
    return this.#runs.cancel(key)
  }

  /** `'running'`, `'ended'`, or undefined when there is nothing to follow (unknown, expired, or the client has the end). */
  runState (key: string, lastEventId?: string): Promise<RunState | undefined> {
    return this.#runs.state(key, lastEventId)
  }

  /** @internal the plugin's side of the adapter seam */
  get host (): AdapterHost {
    return {
      deliver: message => this.#deliver(message),
      closeOlder: (identifier, openedAt) => {
        const source = this.#byId.get(identifier)
        if (source !== undefined && source.openedAt < openedAt) source._end('replaced')
      },
      control: message => this.#applyControl(message),
      gap: (latestId, lastId) => this.#gap(latestId, lastId),
      identified: () => Array.from(this.#byId, ([identifier, source]) => [identifier, source.openedAt]),
      openedAt: identifier => this.#byId.get(identifier)?.openedAt,
      presence: this.#presence,
      log: this.#log
    }
  }

  /** @internal request.getEventSource() */
  open (request: FastifyRequest, reply: FastifyReply, identifier: string | undefined, current: EventSource | null, options?: GetEventSourceOptions): EventSource {
    if (current !== null) throw new FST_ERR_SSE_ALREADY_STREAMING()
    if (identifier !== undefined && typeof identifier !== 'string') {
      throw new FST_ERR_SSE_INVALID_FIELD('identifier', 'must be a string or undefined')
    }
    if (options !== undefined && (typeof options !== 'object' || options === null)) throw new FST_ERR_SSE_INVALID_FIELD('options', 'must be an object { topics }')
    const topics = options?.topics === undefined ? [] : checkTopics(options.topics)
    if (reply.sent) throw new FST_ERR_SSE_HEADERS_SENT('*')
    const settings = this.#settings
    if (clientGone(request)) {
      // The client left while the handler awaited something first: its response's close already fired, and its
      // address is gone with the socket. Hand back a source that has already ended, counted under no key and
      // registered nowhere (it must not replace a live source of the same identifier).
      reply.hijack()
      const source = new EventSource(this.#ctx, request, reply, identifier, undefined, this.#lastEventId(request))
      this.#open.add(source)
      this.#presence.listener?.streams()
      source._gone('client')
      runOnResponseOnClose(reply, true)
      return source
    }
    if (this.#closing) {
      reply.header('retry-after', this.#retryAfter())
      throw new FST_ERR_SSE_CLOSING()
    }
    // undefined: no per-key limit to count against. Any string, the empty one included, is a key.
    const key = settings.maxConnectionsPerKey === Infinity ? undefined : String(settings.connectionKey(request))
    if (this.#open.size >= settings.maxConnections) this.#refuse(reply, `maxConnections ${settings.maxConnections} reached`)
    if (key !== undefined && (this.#perKey.get(key) ?? 0) >= settings.maxConnectionsPerKey) {
      this.#refuse(reply, `maxConnectionsPerKey ${settings.maxConnectionsPerKey} reached`)
    }

    reply.hijack()
    const source = new EventSource(this.#ctx, request, reply, identifier, key, this.#lastEventId(request))
    if (source.lastEventId === undefined || source.lastEventId === '') source._position = parsePosition(this.#settings.adapter.startPosition?.())
    this.#open.add(source)
    this.#presence.listener?.streams()
    this.#metrics.open(source)
    if (key !== undefined) this.#perKey.set(key, (this.#perKey.get(key) ?? 0) + 1)
    runOnResponseOnClose(reply)
    if (request.method === 'HEAD') {
      // A HEAD response has no body, and Node holds its head back until it ends: answer with the head at once,
      // and keep out of the collection so a probe cannot replace the live stream with its identifier.
      source.close()
      return source
    }
    if (identifier !== undefined) this.#register(source, identifier)
    if (topics.length > 0 && source.isActive) this.#topics.add(source, topics)
    if (identifier !== undefined || topics.length > 0) this.#replay(source, topics)
    if (settings.ping !== undefined) source.ping.start()
    request.log.debug({ identifier, lastEventId: source.lastEventId }, 'event source opened')
    return source
  }

  #register (source: EventSource, identifier: string): void {
    this.#byId.get(identifier)?._end('replaced')
    this.#byId.set(identifier, source)
    this.#presence.listener?.identifier(identifier)
    const lastEventId = source.lastEventId
    // Set before the listeners run: what a `registered` listener sends waits behind the replay, as the handler's sends do.
    if (lastEventId !== undefined && lastEventId !== '') source._replaying = true
    this.#emitSafely('registered', source)
    const adapter = this.#settings.adapter
    adapter.claim?.(identifier, source.openedAt)
  }

  /** Topics declared at open are replayed with the identity's messages; later ones are live only. */
  #replay (source: EventSource, topics: string[]): void {
    const adapter = this.#settings.adapter
    const identifier = source.identifier
    const lastEventId = source.lastEventId
    // A `registered` listener may have closed it already.
    if (lastEventId === undefined || lastEventId === '' || !source.isActive) return
    source._replaying = true
    // Without history nothing the client missed can be sent: it gets the gap report, so that it reloads.
    const reading = !adapter.hasHistory
      ? Promise.resolve({ messages: [], gap: true })
      : topics.length > 0 ? adapter.replay(lastEventId, identifier, topics) : adapter.replay(lastEventId, identifier)
    reading.then(
      result => source._finishReplay(result, this.#settings.resetEvent, lastEventId),
      err => {
        source.request.log.warn({ err, identifier, lastEventId }, 'event source replay failed; reporting a gap')
        source._finishReplay({ messages: [], gap: true }, this.#settings.resetEvent, lastEventId)
      }
    )
  }

  /**
   * A listener's error is the listener's: it is logged, the other listeners still run, and the stream opens (or
   * closes) as it would without it. Thrown out of getEventSource() it would leave a hijacked reply with no owner.
   */
  #emitSafely (event: 'registered' | 'unregistered', source: EventSource): void {
    for (const listener of this.rawListeners(event)) {
      try {
        (listener as (source: EventSource) => void).call(this, source)
      } catch (err) {
        source.request.log.error({ err, identifier: source.identifier }, `an event source '${event}' listener threw`)
      }
    }
  }

  #release (source: EventSource): void {
    this.#open.delete(source)
    this.#presence.listener?.streams()
    this.#ending.add(source)
    source._settled().then(() => this.#ending.delete(source), () => {})
    const key = source._key
    if (key !== undefined) {
      const n = (this.#perKey.get(key) ?? 1) - 1
      if (n > 0) this.#perKey.set(key, n)
      else this.#perKey.delete(key)
    }
    this.#topics.removeAll(source)
    const identifier = source.identifier
    if (identifier !== undefined && this.#byId.get(identifier) === source) {
      this.#byId.delete(identifier)
      this.#presence.listener?.identifier(identifier)
      this.#emitSafely('unregistered', source)
    }
  }

  #deliver (message: PublishedMessage): void {
    this.#metrics.received++
    const to = message.to
    let targets: Iterable<EventSource>
    if (to === undefined) {
      targets = this.#byId.values()
    } else if (typeof to === 'string') {
      const source = this.#byId.get(to)
      if (source === undefined) return
      targets = [source]
    } else if ('topic' in to) {
      if (typeof to.topic === 'string') {
        // A topic nobody here follows (a run's events, mostly): nothing to frame.
        const followers = this.#topics.followers(to.topic)
        if (followers === undefined) return
        targets = followers
      } else {
        targets = this.#topics.union(to.topic)
      }
    } else {
      const prefix = to.prefix
      targets = this.find(identifier => identifier.startsWith(prefix))
    }
    const frame = eventFrame(message)
    const position = parsePosition(message.position)
    if (position !== undefined) framePositions.set(frame, position)
    this.#ctx.scheduler.fanOut(targets, frame, 'message')
  }

  /**
   * Live delivery here missed messages no history holds: the reset event, as on a replay gap, to every identified
   * source. Its id is the newest the history holds, or a source's own position where that is further on.
   */
  #gap (latestId: string | undefined, lastId: string | undefined): void {
    const event = this.#settings.resetEvent
    const data = JSON.stringify({ lastEventId: lastId ?? null })
    const frame = eventFrame({ event, id: latestId, data })
    const latest = parsePosition(latestId)
    if (latest === undefined) {
      this.#ctx.scheduler.fanOut(this.#publishedTo(), frame, 'message')
      return
    }
    const reset = { latest, at: (position: Position) => eventFrame({ event, id: `${position.major}-${position.minor}`, data }) }
    resetFrames.set(frame, reset)
    const behind: EventSource[] = []
    for (const source of this.#publishedTo()) {
      // A replaying source's position is known when its replay ends, which sorts the frame out then.
      const own = source._replaying ? frame : resetFrameAt(frame, source._position)
      if (own === frame) behind.push(source)
      else source._write(own, 'message')
    }
    this.#ctx.scheduler.fanOut(behind, frame, 'message')
  }

  /** Every source a publish can reach here: the identified ones and the anonymous ones following a topic. */
  * #publishedTo (): Iterable<EventSource> {
    yield * this.#byId.values()
    for (const source of this.#open) if (source.identifier === undefined && source.topics.size > 0) yield source
  }

  #lastEventId (request: FastifyRequest): string | undefined {
    const header = request.headers['last-event-id']
    if (typeof header === 'string') return header
    const name = this.#settings.lastEventIdQuery
    if (name === undefined) return undefined
    const value = (request.query as Record<string, unknown> | undefined)?.[name]
    return typeof value === 'string' ? value : undefined
  }

  #retryAfter (): string {
    return String(Math.max(1, Math.ceil((this.#settings.retry ?? 5000) / 1000)))
  }

  #refuse (reply: FastifyReply, why: string): never {
    reply.header('retry-after', this.#retryAfter())
    throw new FST_ERR_SSE_TOO_MANY_CONNECTIONS(why)
  }

  /** @internal ends every open stream, waits up to closeGrace for their bytes to leave, then cuts the rest */
  async closeAll (): Promise<void> {
    this.#closing = true
    await this.#runs.close()
    const sources = [...this.#open]
    for (const source of sources) source._end('shutdown')
    // Before Node 24 an HTTP/2 server's close() waits for every session to end, and a browser keeps its session
    // open to reconnect; a graceful close (GOAWAY) of the sessions that carried streams lets fastify.close() finish.
    const sessions = new Set<Http2Session>()
    for (const source of sources) {
      const session = (source.request.raw as unknown as Partial<Http2ServerRequest>).stream?.session
      if (session !== undefined) sessions.add(session)
    }
    for (const session of sessions) session.close()
    const grace = this.#settings.closeGrace
    let timer: NodeJS.Timeout | undefined
    const expired = new Promise<boolean>(resolve => { timer = setTimeout(resolve, grace, true).unref() })
    const leaving = [...sources, ...this.#ending]
    const timedOut = await Promise.race([Promise.all(leaving.map(s => s._settled())).then(() => false), expired])
    clearTimeout(timer)
    if (timedOut) for (const source of leaving) source._destroy()
    this.#ctx.scheduler.close()
    this.#ctx.pings.close()
  }
}

function clientGone (request: FastifyRequest): boolean {
  const raw = request.raw as FastifyRequest['raw'] & { stream?: { destroyed: boolean } }
  if (raw.stream !== undefined) return raw.stream.destroyed
  return raw.socket === null || raw.socket.destroyed
}

const kCompleted = Symbol('fastify-event-sources.completed')
type Completing = FastifyReply['raw'] & { [kCompleted]?: (err?: Error) => void }

/**
 * Fastify runs `onResponse` (and logs "request completed") when the response emits `finish`, with one listener
 * it also puts on `error`. A stream whose client left, or that was cut, never finishes: run that listener when the
 * response closes unfinished, so `onResponse` runs once for every end of a stream.
 */
function runOnResponseOnClose (reply: FastifyReply, closed = false): void {
  const res = reply.raw as Completing
  const onError = res.listeners('error')
  const completed = res.listeners('finish').find(listener => onError.includes(listener)) as ((err?: Error) => void) | undefined
  if (completed === undefined) return
  // After the source's own listener, so that onResponse sees the source ended, whichever event comes.
  res.off('error', completed)
  res.on('error', completed)
  res[kCompleted] = completed
  if (closed) completeUnfinished.call(res)
  else res.once('close', completeUnfinished)
}

function completeUnfinished (this: Completing): void {
  const completed = this[kCompleted]
  if (completed !== undefined && this.listeners('finish').includes(completed)) completed.call(this)
}

/** A publish target, checked and copied: nothing the caller keeps can change what is stored. */
function publishTarget (to: unknown): Target {
  if (typeof to === 'object' && to !== null && 'topic' in to) {
    const topics = checkTopics((to as { topic: unknown }).topic, 'to.topic', true)
    return { topic: typeof (to as { topic: unknown }).topic === 'string' ? topics[0] : topics }
  }
  if (!isTarget(to)) throw new FST_ERR_SSE_INVALID_FIELD('to', 'must be an identifier string, { prefix: string } or { topic: string | string[] }')
  return typeof to === 'object' ? { prefix: to.prefix } : to
}
