'use strict'

// The server of bench/topics.js: every stream is identified (`c<i>`) and follows the topic `all` and one of its
// own (`t:<i>`). The parent drives it over IPC: each fan-out is timed in server CPU from the call until the
// parent reports every expected event received.

const Fastify = require('fastify')
const eventSources = require(process.env.PLUGIN_DIST || '../../dist/index.js')
const { listenFastify } = require('./control')

const FANOUTS = {
  broadcast: (sources, event) => { sources.broadcast(event) },
  'broadcast-topic': (sources, event) => { sources.broadcast(event, { topic: 'all' }) },
  'publish-all': (sources, event) => sources.publish(event),
  'publish-topic': (sources, event) => sources.publish(event, { to: { topic: 'all' } }),
  'publish-one-topic': (sources, event, i) => sources.publish(event, { to: { topic: 't:' + i } }),
  'publish-one-identifier': (sources, event, i) => sources.publish(event, { to: 'c' + i })
}

async function main () {
  const app = Fastify({ logger: false })
  await app.register(eventSources, { history: { size: 1000 } })
  const sources = app.eventSources
  app.get('/sse', request => {
    const i = request.query.i
    const sse = request.getEventSource('c' + i, { topics: ['all', 't:' + i] })
    sse.send('hello')
  })
  await listenFastify(app)

  let cpu0
  process.on('message', async message => {
    if (message.op === 'start') {
      global.gc?.()
      cpu0 = process.cpuUsage()
      const fanOut = FANOUTS[message.mode]
      // One fan-out, or `count` sequential single-target publishes to random streams below `n`.
      for (let k = 0; k < (message.count ?? 1); k++) {
        await fanOut(sources, JSON.stringify({ s: k, pad: 'x'.repeat(40) }), Math.floor(Math.random() * message.n))
      }
      process.send({ op: 'started' })
    } else if (message.op === 'stop') {
      const cpu = process.cpuUsage(cpu0)
      process.send({ op: 'stopped', cpuMs: (cpu.user + cpu.system) / 1000, streams: sources.openStreams })
    }
  })
}

main()
