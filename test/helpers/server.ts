import Fastify, { type FastifyInstance, type FastifyServerOptions } from 'fastify'
import type { Test } from 'tap'
import eventSources from '../../lib/index'
import type { FastifyEventSourcesOptions } from '../../types/index'

/** A Fastify app with the plugin, listening on loopback, closed when the test ends. */
export async function start (
  t: Test,
  routes: (app: FastifyInstance) => void,
  options: FastifyEventSourcesOptions = {},
  serverOptions: FastifyServerOptions = {}
): Promise<{ app: FastifyInstance, url: string }> {
  const app = Fastify(serverOptions)
  await app.register(eventSources, options)
  routes(app)
  t.teardown(() => app.close())
  await app.listen({ port: 0, host: '127.0.0.1' })
  const address = app.server.address()
  if (address === null || typeof address === 'string') throw new Error('no port')
  return { app, url: `http://127.0.0.1:${address.port}` }
}

/** Resolves when `check` returns true, polling; fails after `ms`. */
export async function until (check: () => boolean, ms = 3000, what = 'condition'): Promise<void> {
  const deadline = Date.now() + ms
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise(resolve => setTimeout(resolve, 5))
  }
}
