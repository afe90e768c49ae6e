import { request as httpRequest } from 'node:http'
import { createParser, type EventSourceMessage } from 'eventsource-parser'
import { until, type start } from './server'

export interface Raw {
  /** The body exactly as received. */
  text: string
  bytes: number
  events: EventSourceMessage[]
  comments: string[]
  retries: number[]
  /** True once the response has closed. */
  ended: boolean
  /** Destroys the socket at once, as a closed tab would. */
  abort: () => void
}

/**
 * Opens a plain HTTP/1.1 GET and resolves once the head arrives; the body is read as it comes, kept as text and
 * parsed by a spec-conforming parser. node:http rather than fetch: a fetch aborted mid-body keeps its socket open.
 */
export async function openRaw (t: Parameters<typeof start>[0], url: string): Promise<Raw> {
  const req = httpRequest(url)
  req.on('error', () => {})
  const raw: Raw = { text: '', bytes: 0, events: [], comments: [], retries: [], ended: false, abort: () => { req.destroy() } }
  const parser = createParser({
    onEvent: event => raw.events.push(event),
    onComment: comment => raw.comments.push(comment),
    onRetry: retry => raw.retries.push(retry)
  })
  const decoder = new TextDecoder()
  t.teardown(raw.abort)
  await new Promise<void>((resolve, reject) => {
    req.on('response', res => {
      res.on('data', (chunk: Buffer) => {
        raw.bytes += chunk.length
        const text = decoder.decode(chunk, { stream: true })
        raw.text += text
        parser.feed(text)
      })
      res.on('close', () => { raw.ended = true })
      resolve()
    })
    req.on('error', reject)
    req.end()
  })
  return raw
}

/** Opens the stream and resolves once the server has ended it. */
export async function readToEnd (t: Parameters<typeof start>[0], url: string): Promise<Raw> {
  const raw = await openRaw(t, url)
  await until(() => raw.ended, 3000, 'the end of the body')
  return raw
}
