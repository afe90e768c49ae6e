import type { FastifyHttp2Options, FastifyHttp2SecureOptions, FastifyInstance, FastifyServerOptions } from 'fastify'
import type { Http2SecureServer, Http2Server } from 'node:http2'

export interface DemoOptions {
  /** The plugin to register; defaults to the built package. */
  plugin?: unknown
  /** Ms a browser waits before reconnecting (sent as `retry:`). Default 2000. */
  retry?: number
  /** Ms between pings on each tab's stream. Default 15000. */
  pingInterval?: number
  /** Ms between clock broadcasts. Default 1000. */
  clockInterval?: number
  /** Ms a dropped tab's reconnect is held before it is answered. Default 4000. */
  dropHold?: number
  /** Feed messages kept for replay. Default 200. */
  historySize?: number
  /** The `fastify-event-sources/prometheus` plugin serving `GET /metrics`; defaults to the built package's. */
  prometheus?: unknown
  /** Tokens in each of the assistant's answers. Default 300. */
  answerTokens?: number
  /** Ms between two tokens of an answer. Default 33 (about ten seconds an answer). */
  tokenInterval?: number
}

/** The tokens of the fake model's answer to `question`. */
export function fakeAnswer (question: string, count: number): string[]

export function buildDemo (options?: DemoOptions & FastifyServerOptions): FastifyInstance
export function buildDemo (options: DemoOptions & FastifyHttp2Options<Http2Server>): FastifyInstance
export function buildDemo (options: DemoOptions & FastifyHttp2SecureOptions<Http2SecureServer>): FastifyInstance
