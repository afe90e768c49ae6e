'use strict'

// better-sse on Fastify through reply.raw, as its docs show: one session per request, one channel to broadcast.

const Fastify = require('fastify')
const { createSession, createChannel } = require('better-sse')
const { createControl, fastifyControl, listenFastify, PING_MS } = require('./control')

async function main () {
  const app = Fastify({ logger: false })
  const channel = createChannel()
  const clients = new Set()
  const control = createControl({
    responses: () => clients,
    broadcast (event) {
      channel.broadcast(event)
    }
  })
  fastifyControl(app, control)
  app.get('/sse', async (request, reply) => {
    reply.hijack()
    const session = await createSession(request.raw, reply.raw, { keepAlive: PING_MS > 0 ? PING_MS : null })
    session.push('hello')
    channel.register(session)
    const res = reply.raw
    clients.add(res)
    control.connected()
    res.on('close', () => clients.delete(res))
  })
  await listenFastify(app)
}

main()
