import { TextDecoder } from 'node:util'
import { FST_ERR_SSE_INVALID_FIELD } from './errors'
import { checkEventOptions } from './frame'
import type { SendOptions, StreamMessage, StreamOptions } from '../types/index'

/** What the pull loop needs from a source: its one way to send, its room signal and its end. */
export interface StreamTarget {
  readonly signal: AbortSignal
  send (data: unknown, options?: SendOptions): boolean
  /** True when the socket has room for another message now, false once the source ended, else when either happens. */
  _room (): boolean | Promise<boolean>
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

/** Items pulled in a row without the socket asking to wait, before the loop lets other work run anyway. */
const TURNS_BEFORE_YIELD = 1024

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
export function pipe (target: StreamTarget, source: unknown, rawOptions?: unknown): Promise<number> {
  let options: StreamOptions<unknown> | undefined
  let producer: Producer
  try {
    if (typeof source === 'string') throw invalidSource()
    options = checkOptions(rawOptions)
    producer = producerOf(source)
  } catch (err) {
    return Promise.reject(err)
  }
  const signal = target.signal
  if (signal.aborted) {
    producer.stop(signal.reason)
    return Promise.resolve(0)
  }
  const event = options?.event
  const map = options?.map
  // One options object for every message that map does not make: send() only reads it.
  const plain: SendOptions | undefined = event === undefined ? undefined : { event }
  let decoder: TextDecoder | undefined
  let sent = 0
  let finished = false
  let settled = false

  const write = (item: unknown): void => {
    let data = item
    if (item instanceof Uint8Array) {
      // Bytes are text in chunks: a character split between two chunks is held until its last byte arrives.
      data = (decoder ??= new TextDecoder()).decode(item, { stream: true })
      if (data === '') return
    }
    let message = plain
    if (map !== undefined) {
      const mapped = map(data) as StreamMessage | undefined
      if (mapped === undefined) return
      if (mapped === null || typeof mapped !== 'object') throw new FST_ERR_SSE_INVALID_FIELD('map', 'must return { data, event?, id?, retry? } or undefined')
      data = mapped.data
      message = { event: mapped.event ?? event, id: mapped.id, retry: mapped.retry }
    }
    if (target.send(data, message)) sent++
  }

  // Each await may outlive the source: once settled, whatever the producer does next is ignored.
  const loop = async (): Promise<void> => {
    let turns = 0
    for (;;) {
      let room = target._room()
      if (typeof room !== 'boolean') {
        room = await room
        turns = 0
      } else if (++turns === TURNS_BEFORE_YIELD) {
        // A producer whose items write nothing (all skipped by map) and never wait would otherwise hold the loop.
        turns = 0
        await new Promise(setImmediate)
      }
      if (!room || settled) return
      let step = producer.next()
      if (isThenable(step)) step = await step
      if (settled) return
      if (step.done === true) {
        finished = true
        producer.done()
        const rest = decoder?.decode()
        if (rest !== undefined && rest !== '') write(rest)
        return
      }
      let item = step.value
      if (producer.awaitsItems && isThenable(item)) {
        item = await item
        if (settled) return
      }
      write(item)
    }
  }

  return new Promise<number>((resolve, reject) => {
    const onEnd = (): void => {
      if (settled) return
      settled = true
      // The stream() promise does not wait for the producer: one awaiting something it never gets would hold it.
      producer.stop(signal.reason)
      resolve(sent)
    }
    signal.addEventListener('abort', onEnd, { once: true })
    loop().then(() => {
      if (settled) return
      settled = true
      signal.removeEventListener('abort', onEnd)
      resolve(sent)
    }, err => {
      if (settled) return
      settled = true
      signal.removeEventListener('abort', onEnd)
      if (!finished) producer.stop(err)
      reject(err)
    })
  })
}
