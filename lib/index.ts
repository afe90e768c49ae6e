import type { FastifyInstance, FastifyReply, FastifyRequest, RouteHandlerMethod } from 'fastify'
import fp from 'fastify-plugin'
import { acceptsEventStream } from './accept'
import { EventSourceCollection } from './collection'
import * as errors from './errors'
import type { EventSource } from './event-source'
import { MemoryHistory } from './history/memory'
import { MemoryTopicHistory } from './history/memory-topics'
import { normalizeOptions, type PluginOptions } from './options'
import type { GetEventSourceOptions } from '../types/index'

const kReply = Symbol('fastify-event-sources.reply')
const kSource = Symbol('fastify-event-sources.source')

interface Tagged {
  [kReply]: FastifyReply | null
  [kSource]: EventSource | null
}

async function fastifyEventSources (fastify: FastifyInstance, options: PluginOptions): Promise<void> {
  const settings = normalizeOptions(options)
  const collection = new EventSourceCollection(settings, fastify.log)
  await settings.adapter.attach(collection.host)

  fastify.decorate('eventSources', collection)
  fastify.decorateRequest(kReply as unknown as string, null)
  fastify.decorateRequest(kSource as unknown as string, null)
  fastify.decorateRequest('getEventSource', function (this: FastifyRequest, identifier?: string, options?: GetEventSourceOptions) {
    const tagged = this as unknown as Tagged
    // A context made before the plugin was registered inherits the method but not the per-request slots (they are
    // undefined there, not null) nor the route wrapper: refuse rather than stream without them.
    const reply = tagged[kReply]
    const current = tagged[kSource]
    if (reply == null || current === undefined) {
      throw new errors.FST_ERR_SSE_ADAPTER('getEventSource() needs the plugin\'s hooks; was the request routed before registration?')
    }
    if (settings.requireAccept && !acceptsEventStream(this.headers.accept)) throw new errors.FST_ERR_SSE_NOT_ACCEPTABLE()
    const source = collection.open(this, reply, identifier, current, options)
    tagged[kSource] = source
    return source
  })

  fastify.decorateRequest('acceptsEventStream', function (this: FastifyRequest) {
    return acceptsEventStream(this.headers.accept)
  })

  fastify.addHook('onRequest', function (request, reply, done) {
    (request as unknown as Tagged)[kReply] = reply
    done()
  })

  // Once the reply is hijacked Fastify only logs a handler's error, and a sync throw only as "reply already sent":
  // end the stream and log the error itself. A route that never opened a stream sees its handler's own result,
  // unchanged: a Reply (a thenable whose then() needs both callbacks) and any other non-promise pass through.
  fastify.addHook('onRoute', route => {
    const handler = route.handler as (...args: unknown[]) => unknown
    route.handler = function (this: FastifyInstance, request: FastifyRequest, reply: FastifyReply) {
      let result
      try {
        result = handler.call(this, request, reply)
      } catch (err) {
        if (streamFailed(request, err)) return undefined
        throw err
      }
      if (!(result instanceof Promise)) {
        // A stream's reply is hijacked: a sync value returned after getEventSource() has nowhere to go.
        return result !== undefined && result !== reply && (request as unknown as Tagged)[kSource] != null ? undefined : result
      }
      // keepAlive() never rejects: an idle stream need not carry a catch handler.
      if (result === (request as unknown as Tagged)[kSource]?._ended) return result
      return result.then(undefined, err => {
        if (streamFailed(request, err)) return undefined
        throw err
      })
    } as RouteHandlerMethod
  })

  fastify.addHook('preClose', async () => {
    await collection.closeAll()
  })
  fastify.addHook('onClose', async () => {
    await settings.adapter.close()
  })
}

function streamFailed (request: FastifyRequest, err: unknown): boolean {
  const source = (request as unknown as Tagged)[kSource]
  if (source == null) return false
  request.log.error({ err, identifier: source.identifier }, 'event source handler failed; closing the stream')
  source._end('error')
  return true
}

const plugin = fp(fastifyEventSources, { fastify: '5.x', name: 'fastify-event-sources' })

// Node finds the named exports of an ESM import by scanning this file's CommonJS output for `exports.name =`;
// it cannot see through the Object.assign below, which is what actually holds the values.
exports.default = exports.fastifyEventSources = exports.MemoryHistory = exports.MemoryTopicHistory = exports.errors = undefined

export = Object.assign(plugin, {
  default: plugin,
  fastifyEventSources: plugin,
  MemoryHistory,
  MemoryTopicHistory,
  errors
})
