import { FST_ERR_SSE_INVALID_FIELD, FST_ERR_SSE_SERIALIZATION } from './errors'

/** The fields of one event, checked and ready to frame. `data` is already a string. */
export interface EventFields {
  data: string
  event?: string
  id?: string
  retry?: number
}

export type Serializer = (value: unknown) => string

const FORBIDDEN = /[\r\n\0]/
const LINE_BREAK = /\r\n|\r|\n/

export function checkEventOptions (event: unknown, id: unknown, retry: unknown): void {
  if (event !== undefined && (typeof event !== 'string' || FORBIDDEN.test(event))) {
    throw new FST_ERR_SSE_INVALID_FIELD('event', 'must be a string without CR, LF or NUL')
  }
  if (id !== undefined && (typeof id !== 'string' || FORBIDDEN.test(id))) {
    throw new FST_ERR_SSE_INVALID_FIELD('id', 'must be a string without CR, LF or NUL')
  }
  if (retry !== undefined && !(Number.isSafeInteger(retry) && (retry as number) >= 0)) {
    throw new FST_ERR_SSE_INVALID_FIELD('retry', 'must be a non-negative integer')
  }
}

/** Turns any value into the string an event carries: strings as they are, null/undefined as '', the rest through the serializer. */
export function serialize (value: unknown, serializer: Serializer): string {
  if (typeof value === 'string') return value
  if (value === null || value === undefined) return ''
  let out: unknown
  try {
    out = serializer(value)
  } catch (err) {
    throw new FST_ERR_SSE_SERIALIZATION((err as Error)?.message ?? String(err), { cause: err })
  }
  if (typeof out !== 'string') throw new FST_ERR_SSE_SERIALIZATION(`the serializer returned ${typeof out}, not a string`)
  return out
}

function prefixLines (prefix: string, text: string): string {
  // Every line break form ends a field line for a spec-conforming parser, so each one starts a new line of ours.
  if (text.indexOf('\n') === -1 && text.indexOf('\r') === -1) return prefix + text + '\n'
  const lines = text.split(LINE_BREAK)
  let out = ''
  for (let i = 0; i < lines.length; i++) out += prefix + lines[i] + '\n'
  return out
}

/** A message from a caller's values: fields checked first, then data serialized, then framed; nothing half-made. */
export function messageFrame (data: unknown, options: { event?: unknown, id?: unknown, retry?: unknown } | undefined, serializer: Serializer): Buffer {
  const event = options?.event
  const id = options?.id
  const retry = options?.retry
  checkEventOptions(event, id, retry)
  return eventFrame({ data: serialize(data, serializer), event: event as string | undefined, id: id as string | undefined, retry: retry as number | undefined })
}

export function eventText (fields: EventFields): string {
  let out = ''
  if (fields.event !== undefined) out += 'event: ' + fields.event + '\n'
  if (fields.id !== undefined) out += 'id: ' + fields.id + '\n'
  if (fields.retry !== undefined) out += 'retry: ' + fields.retry + '\n'
  return out + prefixLines('data: ', fields.data) + '\n'
}

/**
 * Frames get memory of their own. `Buffer.from` and `Buffer.concat` cut small buffers out of shared 8 KiB slabs,
 * and a frame held by one stalled socket would keep its whole slab (and every other frame in it) alive.
 */
function bytesOf (text: string): Buffer {
  const out = Buffer.allocUnsafeSlow(Buffer.byteLength(text))
  out.write(text)
  return out
}

/** Frames laid end to end in one buffer of their own, for one socket write. */
export function joinFrames (frames: Buffer[], bytes: number): Buffer {
  const out = Buffer.allocUnsafeSlow(bytes)
  let at = 0
  for (const frame of frames) at += frame.copy(out, at)
  return out
}

export function eventFrame (fields: EventFields): Buffer {
  return bytesOf(eventText(fields))
}

export function commentFrame (text: string): Buffer {
  return bytesOf(prefixLines(': ', text) + '\n')
}

export function retryFrame (retry: number): Buffer {
  return bytesOf('retry: ' + retry + '\n\n')
}
