import { request as httpRequest, type IncomingMessage } from 'node:http'
import { connect, type Socket } from 'node:net'
import { createParser, type EventSourceMessage } from 'eventsource-parser'
import type { Test } from 'tap'

/**
 * A client that sends its GET and never reads: the socket is paused before it connects, so Node never starts
 * reading and every byte the server sends stays in the kernel until it is full, then in the server's buffers.
 */
export function stalledClient (t: Test, url: string, path: string, headers: Record<string, string> = {}): Socket {
  const { hostname, port } = new URL(url)
  const socket = connect(Number(port), hostname)
  socket.pause()
  socket.on('error', () => {})
  let head = `GET ${path} HTTP/1.1\r\nHost: ${hostname}:${port}\r\nAccept: text/event-stream\r\n`
  for (const [name, value] of Object.entries(headers)) head += `${name}: ${value}\r\n`
  socket.write(head + '\r\n')
  t.teardown(() => { socket.destroy() })
  return socket
}

/** Reads an HTTP/1.1 response from raw bytes: the head, then the body (decoded when chunked, else up to the close). */
export class ChunkedReader {
  head: string | undefined
  body: Buffer[] = []
  bodyBytes = 0
  ended = false
  #pending: Buffer = Buffer.alloc(0)
  #chunked = true
  #onBody: ((chunk: Buffer) => void) | undefined

  constructor (onBody?: (chunk: Buffer) => void) {
    this.#onBody = onBody
  }

  push (bytes: Buffer): void {
    let buf = this.#pending.length === 0 ? bytes : Buffer.concat([this.#pending, bytes])
    if (this.head === undefined) {
      const end = buf.indexOf('\r\n\r\n')
      if (end === -1) {
        this.#pending = buf
        return
      }
      this.head = buf.subarray(0, end).toString('latin1')
      this.#chunked = /\r\ntransfer-encoding: *chunked\r?$/im.test(this.head)
      buf = buf.subarray(end + 4)
    }
    if (!this.#chunked) {
      this.#pending = Buffer.alloc(0)
      if (buf.length > 0) {
        const chunk = Buffer.from(buf)
        this.body.push(chunk)
        this.bodyBytes += chunk.length
        this.#onBody?.(chunk)
      }
      return
    }
    for (;;) {
      const line = buf.indexOf('\r\n')
      if (line === -1) break
      const size = parseInt(buf.subarray(0, line).toString('latin1'), 16)
      if (size === 0) {
        this.ended = true
        buf = buf.subarray(line + 2)
        break
      }
      if (buf.length < line + 2 + size + 2) break
      const chunk = buf.subarray(line + 2, line + 2 + size)
      this.body.push(chunk)
      this.bodyBytes += chunk.length
      this.#onBody?.(chunk)
      buf = buf.subarray(line + 2 + size + 2)
    }
    this.#pending = Buffer.from(buf)
  }

  /** The connection ended: that is the end of a close-delimited body (a chunked one ends only with its last chunk). */
  connectionEnded (): void {
    if (!this.#chunked) this.ended = true
  }

  text (): string {
    return Buffer.concat(this.body).toString()
  }
}

/** Parses an event stream the way a spec-conforming client does, from bytes in any chunking. */
export class EventLog {
  events: EventSourceMessage[] = []
  retries: number[] = []
  comments: string[] = []
  errors: Error[] = []
  #decoder = new TextDecoder()
  #parser = createParser({
    onEvent: e => { this.events.push(e) },
    onRetry: r => { this.retries.push(r) },
    onComment: c => { this.comments.push(c) },
    onError: err => { this.errors.push(err) }
  })

  feed (bytes: Buffer): void {
    this.#parser.feed(this.#decoder.decode(bytes, { stream: true }))
  }
}

export interface Reader {
  res: IncomingMessage
  log: EventLog
  body: Buffer[]
  bytes: number
  ended: Promise<void>
  close (): void
}

/** A client that reads: an HTTP GET whose body is parsed as an event stream as it arrives. */
export function reader (t: Test, url: string, path: string, headers: Record<string, string> = {}): Promise<Reader> {
  return new Promise((resolve, reject) => {
    const req = httpRequest(url + path, { headers: { accept: 'text/event-stream', ...headers }, agent: false }, res => {
      const log = new EventLog()
      const out: Reader = {
        res,
        log,
        body: [],
        bytes: 0,
        ended: new Promise(resolve => {
          res.on('close', resolve)
          res.on('error', () => resolve())
        }),
        close: () => { req.destroy() }
      }
      res.on('data', (chunk: Buffer) => {
        out.body.push(chunk)
        out.bytes += chunk.length
        log.feed(chunk)
      })
      resolve(out)
    })
    req.on('error', reject)
    req.end()
    t.teardown(() => { req.destroy() })
  })
}

/** A deterministic PRNG (mulberry32), so a failing property case can be reproduced from its seed. */
export function prng (seed: number): () => number {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6D2B79F5) >>> 0
    let x = a
    x = Math.imul(x ^ (x >>> 15), x | 1)
    x ^= x + Math.imul(x ^ (x >>> 7), x | 61)
    return ((x ^ (x >>> 14)) >>> 0) / 4294967296
  }
}

export function tick (): Promise<void> {
  return new Promise(resolve => setImmediate(resolve))
}

export function sleep (ms: number): Promise<void> {
  return new Promise(resolve => setTimeout(resolve, ms))
}
