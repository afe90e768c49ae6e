'use strict'

// One instance of a cluster: PORT (default 3001), REDIS_URL (default redis://127.0.0.1:6379).
// Start two with `node examples/cluster/start.js`, open both ports, and publish from either page.

const Fastify = require('fastify')
const eventSources = require('../../dist/index.js')
const { redisAdapter } = require('../../dist/adapters/redis.js')

const port = Number(process.env.PORT ?? 3001)
const name = process.env.NAME ?? `instance :${port}`

async function build () {
  const app = Fastify({ logger: { level: process.env.LOG_LEVEL ?? 'info' } })
  await app.register(eventSources, {
    adapter: redisAdapter({ url: process.env.REDIS_URL ?? 'redis://127.0.0.1:6379', channelPrefix: 'cluster-example:' }),
    retry: 2000,
    ping: { interval: 15000 }
  })

  app.get('/', async (request, reply) => reply.type('text/html').send(page))

  // One stream per user name: opening the same name on the other instance closes this one (the newest wins).
  app.get('/events', async request => {
    const user = String(request.query.user ?? 'guest')
    const sse = request.getEventSource(user)
    sse.send({ from: name, text: `connected to ${name} as ${user}` }, { event: 'hello' })
    await sse.keepAlive()
    return sse.close()
  })

  app.post('/publish', async (request, reply) => {
    const { text, to } = request.body ?? {}
    await app.eventSources.publish({ from: name, text: String(text ?? '') }, to ? { to: String(to) } : undefined)
    return reply.code(202).send({ published: true })
  })

  // find(), getByIdentifier() and all() see this instance's streams only.
  app.get('/here', async () => ({ instance: name, users: app.eventSources.all().map(s => s.identifier) }))

  return app
}

const page = `<!doctype html>
<meta charset="utf-8">
<title>${name}</title>
<style>body { font: 15px system-ui, sans-serif; margin: 2em } li { margin: .2em 0 } code { color: #555 }</style>
<h1>${name}</h1>
<p>Name <input id="user" value="user-${port}"> <button id="connect">Connect</button> <span id="state">closed</span></p>
<p>Message <input id="text" value="hello"> to <input id="to" placeholder="everyone"> <button id="send">Publish</button></p>
<ul id="log"></ul>
<script>
  let es
  const $ = id => document.getElementById(id)
  const log = text => { const li = document.createElement('li'); li.textContent = text; $('log').prepend(li) }
  $('connect').onclick = () => {
    es?.close()
    es = new EventSource('/events?user=' + encodeURIComponent($('user').value))
    es.onopen = () => { $('state').textContent = 'open' }
    es.onerror = () => { $('state').textContent = 'reconnecting' }
    es.addEventListener('hello', e => log(JSON.parse(e.data).text))
    es.onmessage = e => { const m = JSON.parse(e.data); log('#' + e.lastEventId + ' from ' + m.from + ': ' + m.text) }
  }
  $('send').onclick = () => fetch('/publish', {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ text: $('text').value, to: $('to').value || undefined })
  })
</script>
`

build()
  .then(async app => {
    // Ends the streams and closes the adapter's Redis connections.
    process.once('SIGTERM', () => { app.close().then(() => process.exit(0)) })
    await app.listen({ port, host: process.env.HOST ?? '127.0.0.1' })
  })
  .catch(err => {
    console.error(err)
    process.exit(1)
  })
