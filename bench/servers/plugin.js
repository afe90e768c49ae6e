'use strict'

// This plugin, in one of four modes (VARIANT): broadcast (identified sources), publish (history on), batch, and
// await (as broadcast, with a handler that returns keepAlive(): only its memory is measured).

const Fastify = require('fastify')
// PLUGIN_DIST points at another build of the plugin, to compare before and after a change.
const eventSources = require(process.env.PLUGIN_DIST || '../../dist/index.js')
const { createControl, fastifyControl, listenFastify, PING_MS } = require('./control')

const variant = process.env.VARIANT || 'broadcast'

async function main () {
  const app = Fastify({ logger: false })
  await app.register(eventSources, {
    history: variant === 'publish' ? { size: 1000 } : false,
    batch: variant === 'batch',
    // CHUNKED=1 or 0 sets the option; unset leaves the plugin's default.
    ...(process.env.CHUNKED === undefined ? {} : { chunked: process.env.CHUNKED === '1' }),
    ping: PING_MS > 0 ? { interval: PING_MS } : undefined
  })
  const sources = app.eventSources
  const control = createControl({
    * responses () {
      for (const source of sources.all()) yield source.reply.raw
    },
    broadcast: variant === 'publish'
      ? event => sources.publish(event)
      : event => { sources.broadcast(event) }
  })
  fastifyControl(app, control)
  let n = 0
  app.get('/sse', request => {
    const sse = request.getEventSource('c' + (++n))
    sse.send('hello')
    control.connected()
    // The reply is hijacked, so the stream stays open after the handler returns; awaiting keepAlive() is for
    // handlers with work to do when it ends.
    if (variant === 'await') return sse.keepAlive()
  })
  await listenFastify(app)
}

main()
