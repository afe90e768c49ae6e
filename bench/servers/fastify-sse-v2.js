'use strict'

// fastify-sse-v2 as its README shows for individual events: reply.sse({ data }) per client.

const Fastify = require('fastify')
const { FastifySSEPlugin } = require('fastify-sse-v2')
const { createControl, fastifyControl, listenFastify } = require('./control')

async function main () {
  const app = Fastify({ logger: false })
  await app.register(FastifySSEPlugin)
  const clients = new Set()
  const control = createControl({
    * responses () {
      for (const reply of clients) yield reply.raw
    },
    broadcast (event) {
      const data = JSON.stringify(event)
      for (const reply of clients) reply.sse({ data })
    }
  })
  fastifyControl(app, control)
  app.get('/sse', (request, reply) => {
    reply.sse({ data: 'hello' })
    clients.add(reply)
    control.connected()
    request.socket.on('close', () => clients.delete(reply))
  })
  await listenFastify(app)
}

main()
