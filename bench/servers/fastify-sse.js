'use strict'

// @fastify/sse as its README shows: route option `sse`, reply.sse.keepAlive(), reply.sse.send() per client.

const Fastify = require('fastify')
const fastifySse = require('@fastify/sse')
const { createControl, fastifyControl, listenFastify, PING_MS } = require('./control')

async function main () {
  const app = Fastify({ logger: false })
  await app.register(fastifySse, { heartbeatInterval: PING_MS })
  const clients = new Set()
  const control = createControl({
    * responses () {
      for (const reply of clients) yield reply.raw
    },
    broadcast (event) {
      const data = JSON.stringify(event)
      for (const reply of clients) reply.sse.send(data).catch(() => {})
    }
  })
  fastifyControl(app, control)
  app.get('/sse', { sse: true }, async (request, reply) => {
    reply.sse.keepAlive()
    await reply.sse.send('hello')
    clients.add(reply)
    control.connected()
    reply.sse.onClose(() => clients.delete(reply))
  })
  await listenFastify(app)
}

main()
