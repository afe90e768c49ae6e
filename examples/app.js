'use strict'

const path = require('node:path')
const Fastify = require('fastify')
const fastifyStatic = require('@fastify/static')
const { Registry } = require('prom-client')

const TAB = /^[A-Za-z0-9_-]{1,64}$/
const MAX_TEXT = 2000

/**
 * The demo app: every browser tab is an identified stream `tab:<id>`, a shared feed goes through `publish`
 * (so a reconnecting tab gets what it missed), a clock goes through `broadcast` (live only), and the list of
 * open tabs follows the collection's `registered`/`unregistered` events.
 *
 * Options: `plugin` (defaults to the built package), `retry` (ms a browser waits before reconnecting),
 * `pingInterval`, `clockInterval`, `dropHold` (ms a dropped tab is kept waiting before it may reconnect),
 * `historySize`, `prometheus` (the `fastify-event-sources/prometheus` plugin; defaults to the built one), and
 * anything Fastify accepts (`logger`, `http2`, `https`, ...).
 */
function buildDemo (options = {}) {
  const {
    plugin = require('../dist/index.js'),
    prometheus = require('../dist/prometheus.js'),
    retry = 2000,
    pingInterval = 15000,
    clockInterval = 1000,
    dropHold = 4000,
    historySize = 200,
    ...fastifyOptions
  } = options
  const app = Fastify(fastifyOptions)
  const kicked = new Set()
  const holds = new Map()
  let clock

  app.register(plugin, { retry, history: { size: historySize }, lastEventIdQuery: 'lastEventId' })
  app.register(fastifyStatic, { root: path.join(__dirname, 'public') })
  // A registry of the app's own, so that several demo apps in one process (the tests) do not share one.
  const registry = new Registry()
  app.register(prometheus, { registry })
  app.get('/metrics', async (request, reply) => {
    reply.type(registry.contentType)
    return registry.metrics()
  })
  // The page imports the package's browser client as it ships: a plain ES module, no bundler.
  app.get('/client/index.js', (request, reply) => reply.sendFile('index.js', path.join(__dirname, '..', 'client')))

  app.register(async function demo (app) {
    const sources = app.eventSources
    const startedAt = Date.now()
    let published = 0
    let countPending = false

    function tabsNow () {
      return sources.find(id => id.startsWith('tab:')).map(source => ({
        tab: source.identifier.slice(4),
        openedAt: source.openedAt,
        resumed: source.lastEventId !== undefined
      }))
    }

    // Registrations come in bursts (a reload replaces a stream); one count per tick is enough.
    function announceCount () {
      if (countPending) return
      countPending = true
      setImmediate(() => {
        countPending = false
        sources.broadcast({ count: sources.activeConnections, tabs: tabsNow() }, { event: 'connections' })
      })
    }
    sources.on('registered', announceCount)
    sources.on('unregistered', announceCount)

    clock = setInterval(() => {
      const memory = process.memoryUsage()
      sources.broadcast({
        now: new Date().toISOString(),
        uptime: Math.round((Date.now() - startedAt) / 1000),
        rss: memory.rss,
        heapUsed: memory.heapUsed,
        openStreams: sources.openStreams,
        published
      }, { event: 'clock' })
    }, clockInterval).unref()

    async function post (text, from) {
      published++
      await sources.publish({ text, from, at: new Date().toISOString() }, { event: 'feed' })
    }

    app.get('/events', async (request, reply) => {
      const tab = request.query.tab
      if (typeof tab !== 'string' || !TAB.test(tab)) return reply.code(400).send({ error: 'query parameter tab must match ' + TAB })
      await holds.get(tab)?.promise
      // The spec's way to stop a browser for good: anything but 200 with text/event-stream; 204 is the quiet one.
      if (kicked.has(tab)) return reply.code(204).send()

      const sse = request.getEventSource('tab:' + tab)
      sse.withPing(ping => {
        ping.interval = pingInterval
        ping.dataMessage = 'ping'
        ping.start()
      })
      // A reconnect's replay is written first; anything sent now is queued behind it, so this arrives after it.
      sse.send({ tab, resumedFrom: sse.lastEventId ?? null }, { event: 'hello' })
      sse.send(`Welcome, tab ${tab} 👋\nThis is a plain message event.\nThe feed below is shared by every open tab.`)
      await sse.keepAlive()
      request.log.debug({ tab, reason: sse.closeReason, sent: sse.sentContentLength }, 'demo tab left')
      return sse.close()
    })

    app.post('/messages', async (request, reply) => {
      const { text, from } = request.body ?? {}
      if (typeof text !== 'string' || text.trim() === '' || text.length > MAX_TEXT) {
        return reply.code(400).send({ error: `text must be a non-empty string of at most ${MAX_TEXT} characters` })
      }
      await post(text, typeof from === 'string' && TAB.test(from) ? from : 'anonymous')
      return reply.code(202).send({ published })
    })

    app.get('/tabs', async () => ({ count: sources.activeConnections, tabs: tabsNow() }))

    function tabRoute (name, action) {
      app.post(`/tabs/:tab/${name}`, async (request, reply) => {
        const tab = request.params.tab
        if (!TAB.test(tab)) return reply.code(400).send({ error: 'bad tab id' })
        const source = sources.getByIdentifier('tab:' + tab)
        await action(tab, source, request.body ?? {})
        return { tab, connected: source !== undefined }
      })
    }

    // A direct, live-only message to one tab: the text goes out as is, so line breaks become data lines.
    tabRoute('notice', async (tab, source, body) => {
      if (typeof body.text === 'string' && body.text !== '') source?.send(body.text)
    })

    // Plain server-side close: the browser reconnects with Last-Event-ID and is replayed what it missed.
    tabRoute('drop', async (tab, source, body) => {
      if (source === undefined) return
      const hold = typeof body.hold === 'number' && body.hold >= 0 ? Math.min(body.hold, 60000) : dropHold
      if (hold > 0) holdTab(tab, hold)
      source.close()
      const away = hold > 0 ? ` and held off for ${hold / 1000} s` : ''
      await post(`tab ${tab} was dropped by the server${away}; it gets this message when it reconnects`, 'server')
    })

    // Stops a tab for good: a termination event the page acts on, then 204 to any later reconnect.
    tabRoute('kick', async (tab, source, body) => {
      kicked.add(tab)
      if (source === undefined) return
      if (body.silent !== true) source.send({ reason: 'kicked from the server' }, { event: 'terminate' })
      source.close()
    })
  })

  function holdTab (tab, ms) {
    const previous = holds.get(tab)
    if (previous !== undefined) previous.release()
    let release
    const promise = new Promise(resolve => { release = resolve })
    const timer = setTimeout(() => hold.release(), ms).unref()
    const hold = {
      promise,
      release () {
        clearTimeout(timer)
        if (holds.get(tab) === hold) holds.delete(tab)
        release()
      }
    }
    holds.set(tab, hold)
  }

  app.addHook('preClose', async () => {
    clearInterval(clock)
    for (const hold of [...holds.values()]) hold.release()
  })

  return app
}

module.exports = { buildDemo }
