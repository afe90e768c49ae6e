'use strict'

const { buildDemo } = require('./app')

const port = Number(process.env.PORT ?? 3000)
const host = process.env.HOST ?? '127.0.0.1'
const app = buildDemo({ logger: { level: process.env.LOG_LEVEL ?? 'info' } })

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
