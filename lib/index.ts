import type { FastifyInstance, FastifyReply, FastifyRequest, RouteHandlerMethod } from 'fastify'
import fp from 'fastify-plugin'
import { acceptsEventStream } from './accept'
import { EventSourceCollection } from './collection'
import * as errors from './errors'
import type { EventSource } from './event-source'
import { MemoryHistory } from './history/memory'
import { normalizeOptions, type PluginOptions } from './options'

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
  fastify.decorateRequest('getEventSource', function (this: FastifyRequest, identifier?: string) {
    const tagged = this as unknown as Tagged
    const reply = tagged[kReply]
    if (reply === null) throw new errors.FST_ERR_SSE_ADAPTER('getEventSource() needs the plugin\'s onRequest hook; was the request routed before registration?')
    if (settings.requireAccept && !acceptsEventStream(this.headers.accept)) throw new errors.FST_ERR_SSE_NOT_ACCEPTABLE()
    const source = collection.open(this, reply, identifier, tagged[kSource])
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

  // Fastify only logs a handler error once the reply is hijacked; end the stream too, or it stays open with no producer.
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
      if (result !== null && typeof result === 'object' && typeof (result as Promise<unknown>).then === 'function') {
        // keepAlive() never rejects: an idle stream need not carry a catch handler.
        if (result === (request as unknown as Tagged)[kSource]?._ended) return result
        return (result as Promise<unknown>).then(undefined, err => {
          if (streamFailed(request, err)) return undefined
          throw err
        })
      }
      return result
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
  if (source === null) return false
  request.log.error({ err, identifier: source.identifier }, 'event source handler failed; closing the stream')
  source._end('error')
  return true
}

const plugin = fp(fastifyEventSources, { fastify: '5.x', name: 'fastify-event-sources' })

// Node finds the named exports of an ESM import by scanning this file's CommonJS output for `exports.name =`;
// it cannot see through the Object.assign below, which is what actually holds the values.
exports.default = exports.fastifyEventSources = exports.MemoryHistory = exports.errors = undefined

export = Object.assign(plugin, {
  default: plugin,
  fastifyEventSources: plugin,
  MemoryHistory,
  errors
})
