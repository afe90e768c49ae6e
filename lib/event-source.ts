import type { FastifyReply, FastifyRequest } from 'fastify'
import { ServerResponse, type OutgoingHttpHeaders } from 'node:http'
import type { Socket } from 'node:net'
import { performance } from 'node:perf_hooks'
import type { Writable } from 'node:stream'
import { FST_ERR_SSE_HEADERS_SENT, FST_ERR_SSE_INVALID_FIELD, FST_ERR_SSE_INVALID_HEADER } from './errors'
import { commentFrame, eventFrame, joinFrames, messageFrame, retryFrame } from './frame'
import type { ReplayResult } from './history/history'
import type { Metrics } from './metrics'
import { checkHeader, STREAM_HEADERS, type Settings } from './options'
import { PingPolicy, type PingScheduler } from './ping'
import { follows, later, parsePosition, type Position } from './position'
import { framePositions, resetFrameAt, resetFrames } from './frame-positions'
import { pipe } from './producer'
import type { Runs } from './runs'
import type { WriteScheduler } from './scheduler'
import { checkTopics, type TopicIndex } from './topics'
import type { CloseReason, HttpRequestEventSource, ReplayInfo, SendOptions, StreamOptions, StreamSource } from '../types/index'

export type WriteKind = 'message' | 'ping' | 'comment'

export type { CloseReason, ReplayInfo, SendOptions }

/** What a source needs from the plugin instance that made it. */
export interface SourceContext {
  settings: Settings
  scheduler: WriteScheduler
  pings: PingScheduler
  topics: TopicIndex<EventSource>
  runs: Runs
  metrics: Metrics
  release (source: EventSource): void
}

// Connection-specific headers are forbidden on HTTP/2 (RFC 9113 §8.2.2).
const HOP_BY_HOP = ['connection', 'keep-alive', 'transfer-encoding', 'upgrade', 'proxy-connection']

const kSource = Symbol('fastify-event-sources.source')
const EMPTY = Buffer.alloc(0)
/** Frames a source waiting for drain queues before they are packed into one buffer. */
const PACK = 8
/**
 * Past this many bytes held by the socket, frames wait in the queue and go out joined: on the next tick, or at
 * drain if the socket asked for one. A fast client's socket holds bytes only until the tick ends.
 */
const SOFT_LIMIT = 4096
type TaggedResponse = ServerResponse & { [kSource]?: EventSource }
// Node's own write, to tell a response whose write something replaced (inject(), a wrapper).
const nodeWrite = ServerResponse.prototype.write

function onResponseClose (this: TaggedResponse): void {
  this[kSource]?._gone('client')
}

/**
 * One long-lived event stream: Sisk's HttpRequestEventSource. All bytes go out through `_write`, which keeps
 * order (a queue, when one exists, is always written first) and the per-source memory bound.
 */
export class EventSource implements HttpRequestEventSource {
  readonly identifier: string | undefined
  readonly request: FastifyRequest
  readonly reply: FastifyReply
  readonly lastEventId: string | undefined
  readonly openedAt: number
  sentContentLength = 0
  droppedMessages = 0
  droppedPings = 0
  replay: ReplayInfo | undefined = undefined
  closeReason: CloseReason | undefined = undefined

  /** @internal frames waiting for the next flush, oldest first */
  _queue: Buffer[] | null = null
  /** @internal */
  _queuedBytes = 0
  /** @internal a replay is running: every write is queued behind it */
  _replaying = false
  /** @internal the position of the last published message written (or queued) here, or the replay's end */
  _position: Position | undefined = undefined
  /** @internal past the bound during a sliced fan-out: the next flush ends it */
  _overBound = false
  /** @internal the key counted by maxConnectionsPerKey */
  _key: string | undefined

  #ctx: SourceContext
  #res: TaggedResponse
  /**
   * The HTTP/1 response, or the HTTP/2 stream: Http2ServerResponse has no `destroyed` nor `writableNeedDrain`.
   * Once a close-delimited head is out, the socket itself: see #write.
   */
  #out: Writable
  #h2: boolean
  /** #out is the socket: frames go to it directly. */
  #direct = false
  /** The scheduler's tick of the last direct write: a second write in one tick is held for the tick's end. */
  #tick = 0
  /** A listener waits for the drain that a write asked for. */
  #drainArmed = false
  #active = true
  /** frames queued since the queue was last packed */
  #loose = 0
  #headWritten = false
  /** sentContentLength once the replay was handed to the response: what the socket holds of it is not the bound's */
  #replayEnd = 0
  #appended: [string, string][] | undefined
  #abort: AbortController | undefined
  /** @internal what keepAlive() returns: one promise per source, however many wait on it */
  _ended: Promise<void> | undefined
  #resolveEnded: (() => void) | undefined
  #drainWaiters: ((ok: boolean) => void)[] | undefined
  #ping: PingPolicy | undefined
  #idle: { timeout: number, last: number, timer: NodeJS.Timeout | undefined } | undefined
  #state: Record<string, unknown> | undefined

  constructor (ctx: SourceContext, request: FastifyRequest, reply: FastifyReply, identifier: string | undefined, key: string | undefined, lastEventId: string | undefined) {
    this.#ctx = ctx
    this.request = request
    this.reply = reply
    this.identifier = identifier
    this._key = key
    this.lastEventId = lastEventId
    // Sub-millisecond, so that two instances opening one identifier in the same millisecond still have an order.
    this.openedAt = performance.timeOrigin + performance.now()
    const res = reply.raw as TaggedResponse
    this.#res = res
    this.#h2 = request.raw.httpVersionMajor >= 2
    this.#out = this.#h2 ? (res as unknown as { stream: Writable }).stream : res
    res[kSource] = this
    res.on('close', onResponseClose)
    // A response error is a dead client; the listener also keeps it from being thrown.
    res.on('error', onResponseClose)
  }

  get isActive (): boolean {
    return this.#active
  }

  get signal (): AbortSignal {
    if (this.#abort === undefined) {
      this.#abort = new AbortController()
      if (!this.#active) this.#abort.abort(this.closeReason)
    }
    return this.#abort.signal
  }

  /** Bytes accepted but not yet handed to the kernel: the socket's buffer plus the plugin's queue. */
  get bufferedAmount (): number {
    return this.#out.writableLength + this._queuedBytes
  }

  get headersSent (): boolean {
    return this.#headWritten
  }

  /** A slot for your own per-connection data. */
  get state (): Record<string, unknown> {
    return (this.#state ??= {})
  }

  appendHeader (name: string, value: string): this {
    if (this.#headWritten) throw new FST_ERR_SSE_HEADERS_SENT(String(name))
    const problem = checkHeader(name, value)
    if (problem !== undefined) throw new FST_ERR_SSE_INVALID_HEADER(problem)
    ;(this.#appended ??= []).push([name.toLowerCase(), String(value)])
    return this
  }

  send (data?: unknown, options?: SendOptions): boolean {
    if (options !== undefined && options !== null && typeof options !== 'object') {
      throw new FST_ERR_SSE_INVALID_FIELD('options', 'must be an object { event, id, retry }')
    }
    const frame = messageFrame(data, options ?? undefined, this.#ctx.settings.serializer)
    return this.#active && this._write(frame, 'message')
  }

  sendAsync (data?: unknown, options?: SendOptions): Promise<boolean> {
    let sent
    try {
      sent = this.send(data, options)
    } catch (err) {
      // A promise-returning call reports through the promise: `sendAsync(x).catch()` must see a bad field too.
      return Promise.reject(err)
    }
    if (!sent) return Promise.resolve(false)
    const room = this._room()
    return typeof room === 'boolean' ? Promise.resolve(room) : room
  }

  stream<T> (source: StreamSource<T>, options?: StreamOptions<T>): Promise<number> {
    return pipe(this, source, options)
  }

  follow (key: string): Promise<void> {
    return this.#ctx.runs.follow(this, key)
  }

  comment (text: string): boolean {
    if (typeof text !== 'string') throw new FST_ERR_SSE_INVALID_FIELD('comment', 'must be a string')
    if (!this.#active) return false
    return this._write(commentFrame(text), 'comment')
  }

  flush (): this {
    if (this.#active && !this.#headWritten) {
      this.#writeHead()
      this.#res.flushHeaders()
    }
    return this
  }

  close (): FastifyReply {
    this.#end('close')
    return this.reply
  }

  keepAlive (): Promise<void> {
    this.flush()
    if (!this.#active) return Promise.resolve()
    return (this._ended ??= new Promise(resolve => { this.#resolveEnded = resolve }))
  }

  waitForFail (timeoutMs: number): Promise<void> {
    if (typeof timeoutMs !== 'number' || !(timeoutMs >= 0) || timeoutMs > 2 ** 31 - 1) {
      throw new FST_ERR_SSE_INVALID_FIELD('timeoutMs', 'must be a number of ms between 0 and 2^31-1')
    }
    if (this.#active) {
      if (this.#idle?.timer !== undefined) clearTimeout(this.#idle.timer)
      this.#idle = { timeout: timeoutMs, last: Date.now(), timer: undefined }
      this.#armIdle(timeoutMs)
    }
    return this.keepAlive()
  }

  get topics (): ReadonlySet<string> {
    return this.#ctx.topics.topicsOf(this)
  }

  subscribe (topics: string | string[]): this {
    const checked = checkTopics(topics)
    if (this.#active) this.#ctx.topics.add(this, checked)
    return this
  }

  unsubscribe (topics: string | string[]): this {
    const checked = checkTopics(topics)
    if (this.#active) this.#ctx.topics.remove(this, checked)
    return this
  }

  withPing (configure: (ping: PingPolicy) => void): this {
    if (typeof configure !== 'function') throw new FST_ERR_SSE_INVALID_FIELD('withPing', 'expects a function (ping) => void')
    configure(this.ping)
    return this
  }

  get ping (): PingPolicy {
    const defaults = this.#ctx.settings.ping
    return (this.#ping ??= new PingPolicy(this, this.#ctx.pings, defaults?.interval ?? 5000, defaults?.dataMessage ?? 'ping'))
  }

  [Symbol.dispose] (): void {
    this.close()
  }

  async [Symbol.asyncDispose] (): Promise<void> {
    this.close()
  }

  /** @internal the one path every frame takes to this source's socket */
  _write (frame: Buffer, kind: WriteKind): boolean {
    if (!this.#active || this._overBound) return false
    // Read once: the response's writableLength adds up the socket's buffer on every read.
    let held = this.#out.writableLength
    if (this._queue !== null || this._replaying || this.#ctx.settings.batch || held >= SOFT_LIMIT) return this._enqueue(frame, kind)
    const position = kind === 'message' ? framePositions.get(frame) : undefined
    if (position !== undefined && !this.#advances(position)) return false
    if (!this.#headWritten) {
      this.#writeHead()
      held = this.#out.writableLength
    }
    if (this.#out.destroyed) {
      this.#end(kind === 'ping' ? 'ping-failed' : 'client', true)
      return false
    }
    if (!this.#fits(frame.length, kind, false, held)) return false
    if (kind === 'message' && this.#idle !== undefined) this.#idle.last = Date.now()
    if (position !== undefined) this._position = position
    this.sentContentLength += frame.length
    this.#ctx.metrics.accepted(kind, frame.length)
    if (!this.#write(frame)) this.#awaitDrain()
    return true
  }

  /**
   * @internal queues a frame for the next flush, within the memory bound. `sliced`: a deferred fan-out share, whose
   * source, if over the bound, is ended by the sliced flush rather than on the spot.
   */
  _enqueue (frame: Buffer, kind: WriteKind, sliced = false): boolean {
    if (!this.#active || this._overBound) return false
    // During a replay its end is not known yet: the queue is sorted out once it is.
    const position = kind === 'message' && !this._replaying ? framePositions.get(frame) : undefined
    if (position !== undefined && !this.#advances(position)) return false
    // A queued frame goes out later: send the head now so the client's open is not held back by a replay or a tick.
    if (!this.#headWritten) this.flush()
    if (!this.#fits(frame.length + this._queuedBytes, kind, sliced)) return false
    if (position !== undefined) this._position = position
    if (this._queue === null) {
      this._queue = [frame]
      this.#loose = 1
      if (!this._replaying) this.#ctx.scheduler.defer(this)
    } else {
      this._queue.push(frame)
      if (++this.#loose >= PACK && !this._replaying && this.#out.writableNeedDrain) this.#pack(this._queue)
    }
    this._queuedBytes += frame.length
    this.#ctx.metrics.accepted(kind, 0)
    if (kind === 'message' && this.#idle !== undefined) this.#idle.last = Date.now()
    return true
  }

  /** @internal writes everything queued in one write; `force` even to a socket that waits for drain (the end) */
  _flushQueue (force = false): void {
    const queue = this._queue
    if (queue === null || this._replaying) return
    // A socket waiting for drain gets the queue in one write when it drains: each write a stalled socket holds
    // costs Node's bookkeeping on top of its bytes, and at one write per message that doubles what it holds.
    if (!force && this.#out.writableNeedDrain) return
    this._queue = null
    const bytes = this._queuedBytes
    this._queuedBytes = 0
    if (!this.#active || this.#out.destroyed) return
    const chunk = queue.length === 1 ? queue[0] : joinFrames(queue, bytes)
    this.sentContentLength += chunk.length
    this.#ctx.metrics.bytes += chunk.length
    if (this.#write(chunk)) this.#settleDrainWaiters(true)
    else this.#awaitDrain()
  }

  /**
   * @internal a replay read from history: write it (after the head), then what was queued meanwhile, minus
   * what the replay covered. The store was read whole up to its newest message, so a live copy of anything at or
   * before that position was either replayed or is not for this source.
   */
  _finishReplay (result: ReplayResult, resetEvent: string, requestedId: string): void {
    if (!this.#active) return
    // On a gap the client's id may come from a history that is gone, whose clock ran ahead: where the history stands
    // counts then. When it cannot say (unreadable, or empty), the client's own id still bounds what it has.
    const own = parsePosition(requestedId)
    const latest = parsePosition(result.latestId)
    let position = parsePosition(result.position) ?? (result.gap ? latest ?? own : later(latest, own))
    const frames: Buffer[] = []
    let bytes = 0
    if (result.gap) {
      frames.push(eventFrame({ event: resetEvent, id: result.latestId, data: JSON.stringify({ lastEventId: requestedId }) }))
      bytes += frames[0].length
    }
    for (const message of result.messages) {
      position = later(position, parsePosition(message.position))
      const frame = eventFrame(message)
      frames.push(frame)
      bytes += frame.length
    }
    this.replay = { replayed: result.messages.length, gap: result.gap }
    this.#ctx.metrics.replay(this, result.messages.length, result.gap)
    this._replaying = false
    const queue = this._queue
    if (queue !== null) {
      // One pass, in publish order: each live frame either follows the position reached so far or is a copy.
      const kept: Buffer[] = []
      let queued = 0
      for (let frame of queue) {
        const at = framePositions.get(frame)
        if (at !== undefined) {
          if (position !== undefined && !follows(at, position)) continue
          position = at
        } else {
          frame = resetFrameAt(frame, position)
        }
        kept.push(frame)
        queued += frame.length
      }
      this._queue = kept.length > 0 ? kept : null
      this.#ctx.metrics.delivered -= queue.length - kept.length
      this.#loose = kept.length
      this._queuedBytes = queued
    }
    this._position = position
    // The handler may still be awaiting something: the head goes first, or Node would send a default one.
    if (!this.#headWritten) this.#writeHead()
    if (this.#out.destroyed) {
      this.#end('client', true)
      return
    }
    if (frames.length > 0) {
      // Replay is bounded by the history size, not by maxBufferedBytes: it goes out whole, ahead of the queue.
      const chunk = frames.length === 1 ? frames[0] : joinFrames(frames, bytes)
      this.sentContentLength += chunk.length
      this.#replayEnd = this.sentContentLength
      this.#ctx.metrics.bytes += chunk.length
      if (!this.#write(chunk)) this.#awaitDrain()
    }
    // A waiter for room (sendAsync, stream()) that queued behind live copies the replay covered has no flush to wake it.
    if (this._queue !== null) this.#ctx.scheduler.defer(this)
    else this.#settleDrainWaiters(true)
  }

  /** @internal true when the socket has room for another message now, false once the source ended, else a promise of either */
  _room (): boolean | Promise<boolean> {
    if (!this.#active) return false
    if (this._queue !== null || this.#out.writableNeedDrain) {
      return new Promise<boolean>(resolve => { (this.#drainWaiters ??= []).push(resolve) }).then(ok => ok && this.#belowHalfBound())
    }
    return this.#belowHalfBound()
  }

  /**
   * With a bound under the socket's high-water mark no write asks for a drain before the bound is passed, so a
   * `drain` may never come: past half the bound, wait until what is buffered has really reached the kernel (an
   * empty write's callback runs after every earlier chunk was written out).
   */
  #belowHalfBound (): boolean | Promise<boolean> {
    if (!this.#active) return false
    if (this.bufferedAmount * 2 <= this.#ctx.settings.maxBufferedBytes) return true
    const signal = this.signal
    // No drain is awaited, so nothing else would start the drainTimeout clock for a client that stopped reading.
    this.#ctx.scheduler.watchDrain(this)
    return new Promise(resolve => {
      const done = (err?: Error | null): void => {
        signal.removeEventListener('abort', onEnd)
        if (!this.#out.writableNeedDrain) this.#ctx.scheduler.unwatchDrain(this)
        resolve(err == null && this.#active)
      }
      const onEnd = (): void => { done() }
      signal.addEventListener('abort', onEnd, { once: true })
      this.#out.write(EMPTY, done)
    })
  }

  /** @internal the response's drain event */
  _drained (): void {
    this.#ctx.scheduler.unwatchDrain(this)
    if (this._queue === null) this.#settleDrainWaiters(true)
    else this._flushQueue()
  }

  /** @internal the response closed or failed under us */
  _gone (reason: CloseReason): void {
    if (this.#active) this.#finish(reason)
    this.#ctx.scheduler.unwatchDrain(this)
  }

  /** @internal waited for drain longer than drainTimeout */
  _drainExpired (): void {
    if (this.#active) this.#end('drain-timeout', true)
    else this.#res.destroy()
  }

  /** @internal ends the source; `abort` destroys the socket instead of flushing (the peer is not reading) */
  _end (reason: CloseReason, abort = false): void {
    this.#end(reason, abort)
  }

  /** @internal resolves once the response is fully written or destroyed */
  _settled (): Promise<void> {
    const res = this.#res
    if (res.writableFinished || this.#out.destroyed) return Promise.resolve()
    return new Promise(resolve => {
      const done = (): void => {
        res.off('finish', done)
        res.off('close', done)
        resolve()
      }
      res.on('finish', done)
      res.on('close', done)
    })
  }

  /** @internal */
  _destroy (): void {
    this.#res.destroy()
  }

  /**
   * Joins the frames queued since the last pack into one buffer. A stalled client may hold its queue for long, and
   * each frame held costs its buffer's objects on top of its bytes; the flush copies them into one write anyway.
   */
  #pack (queue: Buffer[]): void {
    const loose = queue.splice(queue.length - this.#loose)
    let bytes = 0
    for (const frame of loose) bytes += frame.length
    queue.push(joinFrames(loose, bytes))
    this.#loose = 0
  }

  /** Whether a published message comes after everything this source was given. */
  #advances (position: Position): boolean {
    return this._position === undefined || follows(position, this._position)
  }

  /**
   * A close-delimited HTTP/1 body is the socket's bytes as they are, so once the head is out frames go to the
   * socket itself: no framing to add, and no cork. Through the response, Node corks the socket on a write and
   * uncorks it a tick later, so every write pays for buffering on top of the write; corked already, it does not
   * cork again, and the scheduler uncorks every socket of the tick at once.
   */
  #write (chunk: Buffer): boolean {
    const out = this.#out
    // Only a write that cannot fill the socket goes around the response: one that may ask for drain goes through it,
    // so that the response knows, as `writableNeedDrain` and its `drain` event tell anyone who watches it. And only
    // while the response's write is Node's own: a wrapper put on it later must see every frame.
    if (this.#direct && out.writableLength + chunk.length < out.writableHighWaterMark && this.#res.write === nodeWrite) {
      // The first write of a tick goes out at once; the socket is then corked, so that several events of one tick
      // (ten broadcasts in a row) leave in one write at the tick's end, as they would through the response.
      const tick = this.#ctx.scheduler.tick()
      if (this.#tick === tick && out.writableCorked === 0) this.#ctx.scheduler.cork(out as Socket)
      this.#tick = tick
      return out.write(chunk)
    }
    const res = this.#res
    if (this.#h2) return res.write(chunk)
    const socket = res.socket
    if (socket !== null && socket.writableCorked === 0) this.#ctx.scheduler.cork(socket)
    const ok = res.write(chunk)
    // The head went out with this write: the response is the socket's now, and its body runs to the close. Not
    // when something replaced the response's write (inject()'s response, a wrapper): it must see every frame.
    if (!this.#ctx.settings.chunked && socket !== null && res.write === nodeWrite &&
      (socket as Socket & { _httpMessage?: unknown })._httpMessage === res && socket.writable) {
      this.#out = socket
      this.#direct = true
    }
    return ok
  }

  /** A write asked for drain: listen for it on what was written to (the socket says so itself, the response only of its own writes). */
  #awaitDrain (): void {
    if (!this.#drainArmed) {
      this.#drainArmed = true
      ;(this.#direct ? this.#out : this.#res).once('drain', () => {
        this.#drainArmed = false
        this._drained()
      })
    }
    this.#ctx.scheduler.watchDrain(this)
  }

  #fits (bytes: number, kind: WriteKind, sliced = false, held = this.#out.writableLength): boolean {
    const settings = this.#ctx.settings
    // The socket's buffer is first in, first out: its newest bytes are what was written after the replay, the rest
    // is the replay, which is bounded by the history, not by maxBufferedBytes (a client just back reads it first).
    if (this.#replayEnd > 0) held = Math.min(held, this.sentContentLength - this.#replayEnd)
    if (held + bytes <= settings.maxBufferedBytes) return true
    if (settings.slowClient === 'drop') {
      if (kind === 'message') this.droppedMessages++
      else if (kind === 'ping') this.droppedPings++
      this.#ctx.metrics.drop(this, kind)
      return false
    }
    if (sliced) {
      this._overBound = true
      this.#ctx.scheduler.defer(this)
    } else {
      this.#end('slow-client', true)
    }
    return false
  }

  #writeHead (): void {
    this.#headWritten = true
    const settings = this.#ctx.settings
    const headers: OutgoingHttpHeaders = {}
    const carried = this.reply.getHeaders()
    for (const name in carried) {
      if (!STREAM_HEADERS.has(name) && name !== 'connection' && carried[name] !== undefined) headers[name] = carried[name]
    }
    headers['content-type'] = 'text/event-stream; charset=utf-8'
    headers['cache-control'] = 'no-cache, no-transform'
    headers['x-accel-buffering'] = 'no'
    if (!this.#h2) {
      // A stream never carries a second response, so its body can run to the close: no chunk header on every write.
      headers.connection = settings.chunked ? 'keep-alive' : 'close'
      if (!settings.chunked) this.#res.useChunkedEncodingByDefault = false
    }
    for (const name in settings.headers) headers[name.toLowerCase()] = settings.headers[name]
    if (this.#appended !== undefined) {
      // appendHeader overrides a default or carried value of the same name; repeated calls add values.
      const added = new Set<string>()
      for (const [name, value] of this.#appended) {
        const prior = added.has(name) ? headers[name] : undefined
        headers[name] = prior === undefined ? value : ([] as string[]).concat(prior as string | string[], value)
        added.add(name)
      }
      this.#appended = undefined
    }
    if (this.#h2) for (const name of HOP_BY_HOP) delete headers[name]
    this.#res.writeHead(200, headers)
    if (settings.retry !== undefined) {
      const frame = retryFrame(settings.retry)
      this.sentContentLength += frame.length
      this.#ctx.metrics.bytes += frame.length
      this.#res.write(frame)
    }
  }

  #armIdle (ms: number): void {
    const idle = this.#idle
    if (idle === undefined) return
    idle.timer = setTimeout(() => {
      idle.timer = undefined
      if (!this.#active || this.#idle !== idle) return
      const left = idle.last + idle.timeout - Date.now()
      if (left > 0) this.#armIdle(left)
      else this.#end('timeout')
    }, ms).unref()
  }

  #end (reason: CloseReason, abort = false): void {
    if (!this.#active) return
    const res = this.#res
    if (abort) {
      this.#finish(reason)
      res.destroy()
      return
    }
    if (!this.#headWritten && !this.#out.destroyed) this.#writeHead()
    if (this._replaying) {
      // The client will ask again from its own last id: a half replay followed by live messages would skip some.
      // What the handler wrote itself (a terminate event before close(), say) is not in any history: it still goes. A
      // gap's reset does not: the next replay reports what is lost from the client's own last id.
      const own = this._queue?.filter(frame => !framePositions.has(frame) && !resetFrames.has(frame)) ?? []
      this._queue = own.length > 0 ? own : null
      this._queuedBytes = own.reduce((bytes, frame) => bytes + frame.length, 0)
      this._replaying = false
    }
    this._flushQueue(true)
    this.#finish(reason)
    if (!res.writableEnded) res.end()
    // A peer that never reads the last bytes would hold the socket forever: drainTimeout cuts it, as for an open stream.
    if (this.#out.writableLength > 0) this.#ctx.scheduler.watchDrain(this)
  }

  #finish (reason: CloseReason): void {
    this.#active = false
    this.closeReason = reason
    const ctx = this.#ctx
    ctx.release(this)
    this.#ping?.stop()
    if (this.#idle?.timer !== undefined) clearTimeout(this.#idle.timer)
    this.#idle = undefined
    this._queue = null
    this._queuedBytes = 0
    this.#abort?.abort(reason)
    this.#resolveEnded?.()
    this.#resolveEnded = undefined
    this.#settleDrainWaiters(false)
    ctx.metrics.close(this, reason)
    this.request.log.debug({ identifier: this.identifier, reason, sentContentLength: this.sentContentLength }, 'event source closed')
  }

  #settleDrainWaiters (ok: boolean): void {
    const waiters = this.#drainWaiters
    if (waiters === undefined) return
    if (ok && this.#out.writableNeedDrain) return
    this.#drainWaiters = undefined
    for (const resolve of waiters) resolve(ok)
  }
}
