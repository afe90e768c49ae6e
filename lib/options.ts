import type { FastifyRequest } from 'fastify'
import { FST_ERR_SSE_INVALID_FIELD, FST_ERR_SSE_INVALID_OPTION } from './errors'
import type { Serializer } from './frame'
import { HISTORY_DEFAULTS, MemoryTopicHistory } from './history/memory-topics'
import type { EventSourceAdapter } from './adapters/adapter'
import { LocalAdapter } from './adapters/local'
import type { FastifyEventSourcesOptions, RunOptions, RunSettings as PublicRunSettings, StreamOptions } from '../types/index'

export type PluginOptions = FastifyEventSourcesOptions

export interface Settings {
  serializer: Serializer
  retry: number | undefined
  ping: { interval: number, dataMessage: string } | undefined
  headers: Record<string, string>
  maxBufferedBytes: number
  slowClient: 'close' | 'drop'
  drainTimeout: number
  maxConnections: number
  maxConnectionsPerKey: number
  connectionKey: (request: FastifyRequest) => string
  resetEvent: string
  adapter: EventSourceAdapter
  batch: boolean
  chunked: boolean
  fanOutSlice: number
  closeGrace: number
  lastEventIdQuery: string | undefined
  requireAccept: boolean
}

export const DEFAULT_PING_INTERVAL = 5000
export const DEFAULT_PING_MESSAGE = 'ping'
const TOKEN = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/
const FORBIDDEN = /[\r\n\0]/
// The stream's own framing: a second Content-Type fails the client's MIME check, and a length or an encoding
// the stream does not follow corrupts it.
export const STREAM_HEADERS = new Set(['content-type', 'content-length', 'content-encoding', 'transfer-encoding'])

function fail (name: string, why: string): never {
  throw new FST_ERR_SSE_INVALID_OPTION(name, why)
}

function count (name: string, value: unknown, fallback: number, min = 0): number {
  if (value === undefined) return fallback
  if (value === Infinity) return value
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < min) fail(name, `must be an integer >= ${min}, got ${String(value)}`)
  return value
}

export function checkHeader (name: unknown, value: unknown): string | undefined {
  if (typeof name !== 'string' || !TOKEN.test(name)) return `name ${JSON.stringify(name)} is not a valid header name`
  if (STREAM_HEADERS.has(name.toLowerCase())) return `"${name}" is set by the event stream itself`
  if (typeof value !== 'string' && typeof value !== 'number') return `value of "${name}" must be a string or a number`
  if (FORBIDDEN.test(String(value))) return `value of "${name}" contains CR, LF or NUL`
  return undefined
}

function pingOption (value: PluginOptions['ping']): Settings['ping'] {
  if (value === undefined || value === false) return undefined
  if (typeof value !== 'object' || value === null) fail('ping', 'must be an object { interval, dataMessage } or false')
  const interval = count('ping.interval', value.interval, DEFAULT_PING_INTERVAL, 1)
  const dataMessage = value.dataMessage === undefined ? DEFAULT_PING_MESSAGE : value.dataMessage
  if (typeof dataMessage !== 'string') fail('ping.dataMessage', 'must be a string')
  return { interval, dataMessage }
}

function defaultConnectionKey (request: FastifyRequest): string {
  return request.ip
}

export function normalizeOptions (options: PluginOptions = {}): Settings {
  if (typeof options !== 'object' || options === null) fail('options', 'must be an object')
  const serializer = options.serializer === undefined ? JSON.stringify : options.serializer
  if (typeof serializer !== 'function') fail('serializer', 'must be a function')

  const retry = options.retry === undefined ? undefined : count('retry', options.retry, 0)

  const headers = options.headers === undefined ? {} : options.headers
  if (typeof headers !== 'object' || headers === null) fail('headers', 'must be an object of header names to values')
  for (const [name, value] of Object.entries(headers)) {
    const problem = checkHeader(name, value)
    if (problem !== undefined) fail('headers', problem)
  }

  const slowClient = options.slowClient === undefined ? 'close' : options.slowClient
  if (slowClient !== 'close' && slowClient !== 'drop') fail('slowClient', `must be 'close' or 'drop', got ${String(slowClient)}`)

  const connectionKey = options.connectionKey === undefined ? defaultConnectionKey : options.connectionKey
  if (typeof connectionKey !== 'function') fail('connectionKey', 'must be a function (request) => string')

  let adapter = options.adapter
  const history = options.history
  if (history !== undefined && history !== false && (typeof history !== 'object' || history === null)) fail('history', 'must be { size, topics, ttl } or false')
  const historySize = history === false ? 0 : count('history.size', history?.size, HISTORY_DEFAULTS.size, 1)
  if (historySize === Infinity) fail('history.size', 'must be a finite integer >= 1: it bounds memory')
  const historyTopics = history === false ? 0 : count('history.topics', history?.topics, HISTORY_DEFAULTS.topics, 1)
  const historyTtl = history === false ? 0 : count('history.ttl', history?.ttl, HISTORY_DEFAULTS.ttl, 1)
  if (adapter === undefined) {
    adapter = new LocalAdapter(historySize > 0 ? new MemoryTopicHistory({ size: historySize, topics: historyTopics, ttl: historyTtl }) : undefined)
  } else if (typeof adapter !== 'object' || adapter === null || typeof adapter.publish !== 'function' || typeof adapter.attach !== 'function') {
    fail('adapter', 'must be an adapter such as redisAdapter(...)')
  }

  const resetEvent = options.resetEvent === undefined ? 'reset' : options.resetEvent
  if (typeof resetEvent !== 'string' || resetEvent === '' || FORBIDDEN.test(resetEvent)) fail('resetEvent', 'must be a non-empty string without CR, LF or NUL')

  if (options.batch !== undefined && typeof options.batch !== 'boolean') fail('batch', 'must be a boolean')
  if (options.chunked !== undefined && typeof options.chunked !== 'boolean') fail('chunked', 'must be a boolean')
  if (options.requireAccept !== undefined && typeof options.requireAccept !== 'boolean') fail('requireAccept', 'must be a boolean')

  const lastEventIdQuery = options.lastEventIdQuery === false ? undefined : options.lastEventIdQuery
  if (lastEventIdQuery !== undefined && (typeof lastEventIdQuery !== 'string' || lastEventIdQuery === '')) fail('lastEventIdQuery', 'must be a query parameter name or false')

  return {
    serializer,
    retry,
    ping: pingOption(options.ping),
    headers: { ...headers },
    maxBufferedBytes: count('maxBufferedBytes', options.maxBufferedBytes, 1024 * 1024, 1),
    slowClient,
    drainTimeout: count('drainTimeout', options.drainTimeout, 30_000, 1),
    maxConnections: count('maxConnections', options.maxConnections, Infinity, 0),
    maxConnectionsPerKey: count('maxConnectionsPerKey', options.maxConnectionsPerKey, Infinity, 0),
    connectionKey,
    resetEvent,
    adapter,
    batch: options.batch ?? false,
    chunked: options.chunked ?? false,
    fanOutSlice: count('fanOutSlice', options.fanOutSlice, 50, 1),
    closeGrace: count('closeGrace', options.closeGrace, 1000, 0),
    lastEventIdQuery,
    requireAccept: options.requireAccept ?? false
  }
}

/** A run's options, checked once at run(). */
export interface RunSettings extends PublicRunSettings {
  stream: StreamOptions<unknown> | undefined
}

export const RUN_DEFAULTS = { endEvent: 'end', ttl: 600_000, maxEvents: 10_000 } as const
const MAX_TIMER = 2 ** 31 - 1

function runCount (name: string, value: unknown, fallback: number, max: number): number {
  if (value === undefined) return fallback
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < 1 || value > max) {
    throw new FST_ERR_SSE_INVALID_FIELD(name, `must be an integer from 1 to ${max}, got ${String(value)}`)
  }
  return value
}

export function checkRunOptions (options: unknown): RunSettings {
  if (options === undefined) return { ...RUN_DEFAULTS, abandonAfter: undefined, stream: undefined }
  if (typeof options !== 'object' || options === null) throw new FST_ERR_SSE_INVALID_FIELD('options', 'must be an object { endEvent, ttl, maxEvents, abandonAfter, event, map }')
  const o = options as RunOptions<unknown>
  const endEvent = o.endEvent ?? RUN_DEFAULTS.endEvent
  if (typeof endEvent !== 'string' || endEvent === '' || FORBIDDEN.test(endEvent)) throw new FST_ERR_SSE_INVALID_FIELD('endEvent', 'must be a non-empty string without CR, LF or NUL')
  const stream = o.event === undefined && o.map === undefined ? undefined : { event: o.event, map: o.map } as StreamOptions<unknown>
  return {
    endEvent,
    ttl: runCount('ttl', o.ttl, RUN_DEFAULTS.ttl, MAX_TIMER),
    maxEvents: runCount('maxEvents', o.maxEvents, RUN_DEFAULTS.maxEvents, 10_000_000),
    abandonAfter: o.abandonAfter === undefined ? undefined : runCount('abandonAfter', o.abandonAfter, 0, MAX_TIMER),
    stream
  }
}
