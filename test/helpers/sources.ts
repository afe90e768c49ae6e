import type { FastifyInstance, FastifyServerOptions } from 'fastify'
import type { Test } from 'tap'
import type { FastifyEventSourcesOptions, HttpRequestEventSource } from '../../types/index'
import { start, until } from './server'

export interface Served {
  app: FastifyInstance
  url: string
  sources: HttpRequestEventSource[]
  /** The source opened by the n-th request (0-based), once its handler has run. */
  source (n: number): Promise<HttpRequestEventSource>
}

/**
 * An app whose `/sse` route opens a source (identified by the `id` query parameter when given), keeps it open
 * until it ends and hands it to the test.
 */
export async function serveSources (t: Test, options: FastifyEventSourcesOptions = {}, serverOptions: FastifyServerOptions = {}): Promise<Served> {
  const sources: HttpRequestEventSource[] = []
  const { app, url } = await start(t, app => {
    app.get<{ Querystring: { id?: string } }>('/sse', async request => {
      const sse = request.getEventSource(request.query.id)
      sources.push(sse)
      await sse.keepAlive()
      return sse.close()
    })
  }, options, serverOptions)
  return {
    app,
    url,
    sources,
    source: async n => {
      await until(() => sources.length > n, 5000, `source ${n}`)
      return sources[n]
    }
  }
}

/** The bytes `send(data)` puts on the wire for a plain message. */
export function frameBytes (data: string): number {
  return Buffer.byteLength('data: ' + data + '\n\n')
}

/**
 * Sends until the socket keeps more than `pending` bytes after a turn of the loop: the kernel is full and the
 * client is not reading. Node corks a response's socket for the rest of the tick, so only a turn tells.
 */
export async function fillUntilStalled (sse: HttpRequestEventSource, pending = 64 * 1024, message = 'x'.repeat(1000)): Promise<void> {
  for (let i = 0; i < 40_000; i++) {
    if (sse.bufferedAmount > pending) {
      await new Promise(resolve => setImmediate(resolve))
      if (sse.bufferedAmount > pending) return
    }
    if (!sse.send(message)) throw new Error(`refused before stalling: ${String(sse.closeReason)}`)
  }
  throw new Error('the client never stalled')
}
