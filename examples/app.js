'use strict'

const path = require('node:path')
const { randomUUID } = require('node:crypto')
const Fastify = require('fastify')
const fastifyStatic = require('@fastify/static')
const { Registry } = require('prom-client')

const TAB = /^[A-Za-z0-9_-]{1,64}$/
const MAX_TEXT = 2000
const ROOMS = ['lobby', 'dev', 'random']
const topicOf = room => 'room:' + room
const ANSWER = /^answer:[0-9a-f-]{36}$/
const WORDS = ('Server-Sent Events keep one response open and write each event as it comes. A run outlives the ' +
  'connection that asked for it: the answer is produced once, kept under its key, and any stream can follow it ' +
  'from the start or from the last event it saw. So a dropped connection, a reload, or another instance picks ' +
  'up exactly where the text was, and Stop cancels the producer wherever it runs.').split(' ')

/** The same answer for the same question: a few hundred tokens (words and the spaces between them). */
function fakeAnswer (question, count) {
  const tokens = [`You asked: “${question.trim()}”.`]
  for (let i = 0; tokens.length < count; i++) tokens.push(' ', WORDS[i % WORDS.length])
  return tokens.slice(0, count)
}

/** A fake language model: one token every `interval` ms, stopped by its signal. */
async function * fakeModel (question, count, interval, signal) {
  for (const token of fakeAnswer(question, count)) {
    await new Promise(resolve => {
      const done = () => {
        clearTimeout(timer)
        signal.removeEventListener('abort', done)
        resolve()
      }
      const timer = setTimeout(done, interval)
      signal.addEventListener('abort', done)
    })
    if (signal.aborted) return
    yield token
  }
}

/**
 * The demo app: every browser tab is an identified stream `tab:<id>`, a shared feed goes through `publish`
 * (so a reconnecting tab gets what it missed), a clock goes through `broadcast` (live only), and the list of
 * open tabs follows the collection's `registered`/`unregistered` events. Rooms are topics: a tab joins and leaves
 * them, messages to a room are published to its topic, and a reconnect replays only the tab's rooms.
 *
 * Options: `plugin` (defaults to the built package), `retry` (ms a browser waits before reconnecting),
 * `pingInterval`, `clockInterval`, `dropHold` (ms a dropped tab is kept waiting before it may reconnect),
 * `historySize`, `prometheus` (the `fastify-event-sources/prometheus` plugin; defaults to the built one),
 * `answerTokens` and `tokenInterval` (the assistant's fake model), and anything Fastify accepts (`logger`, `http2`,
 * `https`, ...).
 *
 * The assistant panel is a resumable run: a question starts `eventSources.run()` of a fake token generator, each
 * answer stream `follow()`s it, Stop is `cancel()`, and a drop or a reload resumes where the answer was.
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
    answerTokens = 300,
    tokenInterval = 33,
    ...fastifyOptions
  } = options
  const app = Fastify(fastifyOptions)
  const kicked = new Set()
  const holds = new Map()
  // Membership is the server's: every (re)connect declares the tab's rooms as topics, so its replay holds them.
  const memberships = new Map()
  const roomsOf = tab => [...(memberships.get(tab) ?? [])]
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

      const sse = request.getEventSource('tab:' + tab, { topics: roomsOf(tab).map(topicOf) })
      sse.withPing(ping => {
        ping.interval = pingInterval
        ping.dataMessage = 'ping'
        ping.start()
      })
      // A reconnect's replay is written first; anything sent now is queued behind it, so this arrives after it.
      sse.send({ tab, resumedFrom: sse.lastEventId ?? null, rooms: roomsOf(tab) }, { event: 'hello' })
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

    app.get('/rooms', async () => ({ rooms: ROOMS }))

    // Who is in a room, on every instance: the tabs following its topic, and how many streams follow it.
    app.get('/rooms/:room/presence', async (request, reply) => {
      const room = request.params.room
      if (!ROOMS.includes(room)) return reply.code(404).send({ error: 'no such room' })
      const topic = topicOf(room)
      const [ids, streams] = await Promise.all([sources.presence(topic), sources.count({ topic })])
      return { room, tabs: ids.map(id => id.slice('tab:'.length)).sort(), streams }
    })

    function roomRoute (name, action) {
      app.post(`/rooms/:room/${name}`, async (request, reply) => {
        const room = request.params.room
        if (!ROOMS.includes(room)) return reply.code(404).send({ error: 'no such room' })
        return action(room, request.body ?? {}, reply)
      })
    }

    // eventSources.subscribe reaches the tab's stream on whichever instance holds it (through the adapter).
    for (const [name, join] of [['join', true], ['leave', false]]) {
      roomRoute(name, async (room, body, reply) => {
        const tab = body.tab
        if (typeof tab !== 'string' || !TAB.test(tab)) return reply.code(400).send({ error: 'bad tab id' })
        const rooms = memberships.get(tab) ?? new Set()
        if (join) {
          rooms.add(room)
          memberships.set(tab, rooms)
          await sources.subscribe('tab:' + tab, topicOf(room))
        } else {
          rooms.delete(room)
          if (rooms.size === 0) memberships.delete(tab)
          await sources.unsubscribe('tab:' + tab, topicOf(room))
        }
        return { tab, rooms: roomsOf(tab) }
      })
    }

    roomRoute('messages', async (room, body, reply) => {
      const { text, from } = body
      if (typeof text !== 'string' || text.trim() === '' || text.length > MAX_TEXT) {
        return reply.code(400).send({ error: `text must be a non-empty string of at most ${MAX_TEXT} characters` })
      }
      published++
      await sources.publish({ room, text, from: typeof from === 'string' && TAB.test(from) ? from : 'anonymous', at: new Date().toISOString() }, { event: 'room', to: { topic: topicOf(room) } })
      return reply.code(202).send({ published })
    })

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
      memberships.delete(tab)
      if (source === undefined) return
      if (body.silent !== true) source.send({ reason: 'kicked from the server' }, { event: 'terminate' })
      source.close()
    })

    // The assistant: one run per answer, followed by the page's EventSource; `answers` keeps this instance's
    // followers only so that the drop button can cut them.
    const answers = new Map()

    app.post('/assistant/questions', async (request, reply) => {
      const question = request.body?.question
      if (typeof question !== 'string' || question.trim() === '' || question.length > MAX_TEXT) {
        return reply.code(400).send({ error: `question must be a non-empty string of at most ${MAX_TEXT} characters` })
      }
      const key = 'answer:' + randomUUID()
      sources.run(key, signal => fakeModel(question, answerTokens, tokenInterval, signal), { event: 'token', ttl: 600_000 })
        .then(result => request.log.info({ key, ...result }, 'answer over'), err => request.log.error({ err, key }, 'answer failed'))
      return reply.code(201).send({ key })
    })

    app.get('/assistant/answers/:key', async (request, reply) => {
      const key = request.params.key
      if (!ANSWER.test(key)) return reply.code(400).send({ error: 'bad answer key' })
      // Over (and this page has the end), unknown or expired: 204 stops the browser's EventSource for good.
      const lastEventId = request.headers['last-event-id'] ?? request.query.lastEventId
      if (await sources.runState(key, lastEventId) === undefined) return reply.code(204).send()
      const sse = request.getEventSource()
      let followers = answers.get(key)
      if (followers === undefined) answers.set(key, (followers = new Set()))
      followers.add(sse)
      await sse.follow(key)
      followers.delete(sse)
      if (followers.size === 0) answers.delete(key)
    })

    app.post('/assistant/answers/:key/stop', async request => {
      const key = request.params.key
      return { cancelled: ANSWER.test(key) && await sources.cancel(key) }
    })

    // Cuts this answer's streams from the server: each browser reconnects with Last-Event-ID and goes on.
    app.post('/assistant/answers/:key/drop', async request => {
      const followers = answers.get(request.params.key) ?? new Set()
      for (const sse of followers) sse.close()
      return { dropped: followers.size }
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

module.exports = { buildDemo, fakeAnswer }
