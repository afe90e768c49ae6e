'use strict'

const { readFileSync } = require('node:fs')
const { buildDemo } = require('./app')

const port = Number(process.env.PORT ?? 3000)
const host = process.env.HOST ?? '127.0.0.1'
const options = { logger: { level: process.env.LOG_LEVEL ?? 'info' } }
// Over HTTP/1.1 a browser opens at most six connections per host, so a seventh tab would wait; HTTP/2 has no such limit.
if (process.env.TLS_CERT !== undefined && process.env.TLS_KEY !== undefined) {
  options.http2 = true
  options.https = { cert: readFileSync(process.env.TLS_CERT), key: readFileSync(process.env.TLS_KEY), allowHTTP1: true }
}
const app = buildDemo(options)

let closing = false
async function shutdown (signal) {
  if (closing) return
  closing = true
  app.log.info({ signal }, 'closing the demo')
  try {
    await app.close()
    process.exitCode = 0
  } catch (err) {
    app.log.error({ err }, 'close failed')
    process.exitCode = 1
  }
}
process.once('SIGINT', shutdown)
process.once('SIGTERM', shutdown)

app.listen({ port, host }).then(address => {
  console.log(`fastify-event-sources demo: open ${address} in a few tabs (Ctrl-C to stop)`)
}, err => {
  console.error(err)
  process.exit(1)
})
