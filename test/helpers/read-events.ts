import { createParser, type EventSourceMessage } from 'eventsource-parser'
import { request } from 'undici'

export interface EventStream {
  status: number
  headers: Record<string, string | string[] | undefined>
  events: EventSourceMessage[]
  comments: string[]
  retries: number[]
  /** Resolves when the server ends the response. */
  ended: Promise<void>
  close: () => void
}

/** Opens a raw GET and parses the body with a spec-conforming parser (eventsource-parser), with no reconnection. */
export async function readEvents (url: string, headers: Record<string, string> = {}): Promise<EventStream> {
  const controller = new AbortController()
  const res = await request(url, { headers: { accept: 'text/event-stream', ...headers }, signal: controller.signal })
  const stream: EventStream = {
    status: res.statusCode,
    headers: res.headers,
    events: [],
    comments: [],
    retries: [],
    ended: Promise.resolve(),
    close: () => controller.abort()
  }
  const parser = createParser({
    onEvent: event => stream.events.push(event),
    onComment: comment => stream.comments.push(comment),
    onRetry: retry => stream.retries.push(retry)
  })
  const decoder = new TextDecoder()
  stream.ended = new Promise(resolve => {
    res.body.on('data', (chunk: Buffer) => parser.feed(decoder.decode(chunk, { stream: true })))
    res.body.on('end', resolve)
    res.body.on('error', () => resolve())
    res.body.on('close', resolve)
  })
  return stream
}
