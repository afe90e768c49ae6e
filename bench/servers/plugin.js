'use strict'

// This plugin, in one of its modes (VARIANT): broadcast (identified sources), publish (history on), batch, await
// (as broadcast, with a handler that returns keepAlive(): only its memory is measured), and with the other
// features on: features (every stream follows a topic, a diagnostics subscriber on every channel, broadcast to
// all), topic-broadcast (the same, broadcast({ topic })) and topic-publish (publish({ to: { topic } }), history on).

const diagnostics = require('node:diagnostics_channel')
const { performance } = require('node:perf_hooks')
const Fastify = require('fastify')
// PLUGIN_DIST points at another build of the plugin, to compare before and after a change.
const eventSources = require(process.env.PLUGIN_DIST || '../../dist/index.js')
const { createControl, fastifyControl, listenFastify, PING_MS } = require('./control')

const variant = process.env.VARIANT || 'broadcast'
const features = variant === 'features' || variant.startsWith('topic-')
const TOPIC = 'all'

// An OpenTelemetry-style subscriber: a start time per open stream, a duration and a count per close reason,
// counters for the rest.
function subscribeEverywhere () {
  const started = new WeakMap()
  const counts = { closes: {}, durations: 0, published: 0, replays: 0, drops: 0 }
  diagnostics.subscribe('fastify-event-sources:open', ({ source }) => { started.set(source, performance.now()) })
  diagnostics.subscribe('fastify-event-sources:close', ({ source, reason }) => {
    counts.durations += performance.now() - (started.get(source) ?? 0)
    counts.closes[reason] = (counts.closes[reason] ?? 0) + 1
  })
  diagnostics.subscribe('fastify-event-sources:publish', () => { counts.published++ })
  diagnostics.subscribe('fastify-event-sources:replay', () => { counts.replays++ })
  diagnostics.subscribe('fastify-event-sources:drop', () => { counts.drops++ })
}

async function main () {
  if (features) subscribeEverywhere()
  const app = Fastify({ logger: false })
  await app.register(eventSources, {
    history: variant === 'publish' || variant === 'topic-publish' ? { size: 1000 } : false,
    batch: variant === 'batch',
    // CHUNKED=1 or 0 sets the option; unset leaves the plugin's default.
    ...(process.env.CHUNKED === undefined ? {} : { chunked: process.env.CHUNKED === '1' }),
    ping: PING_MS > 0 ? { interval: PING_MS } : undefined
  })
  const sources = app.eventSources
  const broadcasts = {
    publish: event => sources.publish(event),
    'topic-publish': event => sources.publish(event, { to: { topic: TOPIC } }),
    'topic-broadcast': event => { sources.broadcast(event, { topic: TOPIC }) }
  }
  const control = createControl({
    * responses () {
      for (const source of sources.all()) yield source.reply.raw
    },
    broadcast: broadcasts[variant] ?? (event => { sources.broadcast(event) })
  })
  fastifyControl(app, control)
  let n = 0
  app.get('/sse', request => {
    const sse = features ? request.getEventSource('c' + (++n), { topics: TOPIC }) : request.getEventSource('c' + (++n))
    sse.send('hello')
    control.connected()
    // The reply is hijacked, so the stream stays open after the handler returns; awaiting keepAlive() is for
    // handlers with work to do when it ends.
    if (variant === 'await') return sse.keepAlive()
  })
  await listenFastify(app)
}

main()
