import { TextDecoder } from 'node:util'
import { FST_ERR_SSE_INVALID_FIELD } from './errors'
import { checkEventOptions } from './frame'
import type { SendOptions, StreamMessage, StreamOptions } from '../types/index'

/** What the pull loop needs from a source: its one way to send, its room signal and its end. */
export interface StreamTarget {
  readonly signal: AbortSignal
  send (data: unknown, options: SendOptions): boolean
  /** Resolves true once the socket has room for another message, false when the source ends first. */
  _room (): Promise<boolean>
}

type Step = IteratorResult<unknown>

/** One way to pull from any kind of source, and to stop it. */
interface Producer {
  next (): Step | PromiseLike<Step>
  /** The source ended first, or an item was refused: stop producing at once. */
  stop (reason: unknown): void
  /** The producer finished by itself. */
  done (): void
  /** Items of a sync iterable may be promises, as `for await` allows. */
  readonly awaitsItems: boolean
}

const ENDED = Symbol('ended')

function ignore (): void {}

function isThenable (value: unknown): value is PromiseLike<unknown> {
  return value !== null && (typeof value === 'object' || typeof value === 'function') && typeof (value as PromiseLike<unknown>).then === 'function'
}

function settleQuietly (result: unknown): void {
  if (isThenable(result)) result.then(ignore, ignore)
}

function iteratorProducer (iterator: Iterator<unknown> | AsyncIterator<unknown>, awaitsItems: boolean): Producer {
  return {
    next: () => iterator.next(),
    // A generator suspended at a yield runs its finally now; one awaiting something does so once that settles
    // (hence the signal, which lets the producer cut its own awaits short).
    stop: () => { settleQuietly(iterator.return?.()) },
    done: ignore,
    awaitsItems
  }
}

interface NodeReadable extends AsyncIterable<unknown> {
  read (): unknown
  pipe (...args: unknown[]): unknown
  destroy (error?: Error): unknown
}

function readableProducer (readable: NodeReadable): Producer {
  const iterator = readable[Symbol.asyncIterator]()
  return { next: () => iterator.next(), stop: () => { readable.destroy() }, done: ignore, awaitsItems: false }
}

function webStreamProducer (stream: ReadableStream<unknown>): Producer {
  const reader = stream.getReader()
  return {
    next: () => reader.read() as Promise<Step>,
    stop: reason => { reader.cancel(reason).then(ignore, ignore) },
    done: () => { reader.releaseLock() },
    awaitsItems: false
  }
}

function invalidSource (): Error {
  return new FST_ERR_SSE_INVALID_FIELD('source', 'must be an async iterable, an iterable other than a string, a Readable or a ReadableStream (send a string instead)')
}

function producerOf (source: unknown): Producer {
  if (source === null || typeof source !== 'object') {
    // A function cannot be iterated either; a string would stream one character per event.
    throw invalidSource()
  }
  const s = source as Record<string | symbol, unknown>
  if (source instanceof String) throw invalidSource()
  if (typeof s.pipe === 'function' && typeof s.read === 'function' && typeof s.destroy === 'function' && typeof s[Symbol.asyncIterator] === 'function') {
    return readableProducer(source as NodeReadable)
  }
  if (typeof s.getReader === 'function') return webStreamProducer(source as ReadableStream<unknown>)
  if (typeof s[Symbol.asyncIterator] === 'function') return iteratorProducer((source as AsyncIterable<unknown>)[Symbol.asyncIterator](), false)
  if (typeof s[Symbol.iterator] === 'function') return iteratorProducer((source as Iterable<unknown>)[Symbol.iterator](), true)
  throw invalidSource()
}

function checkOptions (options: unknown): StreamOptions<unknown> | undefined {
  if (options === undefined) return undefined
  if (options === null || typeof options !== 'object') throw new FST_ERR_SSE_INVALID_FIELD('options', 'must be an object { event, map }')
  const { event, map } = options as StreamOptions<unknown>
  checkEventOptions(event, undefined, undefined)
  if (map !== undefined && typeof map !== 'function') throw new FST_ERR_SSE_INVALID_FIELD('map', 'must be a function (item) => { data, event?, id?, retry? } | undefined')
  return options as StreamOptions<unknown>
}

/**
 * Pipes a producer into a source, one item at a time: the next item is pulled only once the socket has room,
 * every message goes through the source's `send`, and the producer is stopped as soon as the source ends.
 * Resolves with the number of messages sent; never closes the source.
 */
export async function pipe (target: StreamTarget, source: unknown, rawOptions?: unknown): Promise<number> {
  if (typeof source === 'string') throw invalidSource()
  const options = checkOptions(rawOptions)
  const producer = producerOf(source)
  const event = options?.event
  const map = options?.map
  let decoder: TextDecoder | undefined
  let sent = 0
  let finished = false

  const write = (item: unknown): void => {
    let data = item
    if (item instanceof Uint8Array) {
      // Bytes are text in chunks: a character split between two chunks is held until its last byte arrives.
      data = (decoder ??= new TextDecoder()).decode(item, { stream: true })
      if (data === '') return
    }
    let message: SendOptions = { event }
    if (map !== undefined) {
      const mapped = map(data) as StreamMessage | undefined
      if (mapped === undefined) return
      if (mapped === null || typeof mapped !== 'object') throw new FST_ERR_SSE_INVALID_FIELD('map', 'must return { data, event?, id?, retry? } or undefined')
      data = mapped.data
      message = { event: mapped.event ?? event, id: mapped.id, retry: mapped.retry }
    }
    if (target.send(data, message)) sent++
  }

  // The pending pull, raced against the end of the source without leaving a reaction behind per item.
  let wake: ((value: typeof ENDED) => void) | undefined
  const pull = (pending: PromiseLike<unknown>): Promise<unknown> => new Promise((resolve, reject) => {
    wake = resolve
    pending.then(resolve, reject)
  })
  const signal = target.signal
  const onEnd = (): void => {
    producer.stop(signal.reason)
    wake?.(ENDED)
  }
  if (signal.aborted) {
    producer.stop(signal.reason)
    return 0
  }
  signal.addEventListener('abort', onEnd, { once: true })
  try {
    for (;;) {
      if (!await target._room()) break
      let step = producer.next() as Step | typeof ENDED
      if (isThenable(step)) step = await pull(step) as Step | typeof ENDED
      if (step === ENDED) break
      if (step.done === true) {
        finished = true
        producer.done()
        const rest = decoder?.decode()
        if (rest !== undefined && rest !== '') write(rest)
        break
      }
      let item = step.value
      if (producer.awaitsItems && isThenable(item)) {
        item = await pull(item)
        if (item === ENDED) break
      }
      write(item)
    }
  } catch (err) {
    if (!finished) producer.stop(err)
    throw err
  } finally {
    wake = undefined
    signal.removeEventListener('abort', onEnd)
  }
  return sent
}
