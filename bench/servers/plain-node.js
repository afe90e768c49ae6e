'use strict'

// The limit: node:http, one pre-built Buffer per event written to every open response.

const http = require('node:http')
const { createControl, parseQuery, PING_MS } = require('./control')

const clients = new Set()
const control = createControl({
  responses: () => clients,
  broadcast (event) {
    const frame = Buffer.from('data: ' + JSON.stringify(event) + '\n\n')
    if (direct) for (const res of clients) res.socket.write(frame)
    else for (const res of clients) res.write(frame)
  }
})

if (PING_MS > 0) {
  const ping = Buffer.from(': ping\n\n')
  setInterval(() => {
    for (const res of clients) res.write(ping)
  }, PING_MS).unref()
}

// FRAMING=close: the body runs to the end of the connection, no chunk header per write.
// FRAMING=direct: close-delimited, and a broadcast writes to each socket itself, which Node does not cork.
const direct = process.env.FRAMING === 'direct'
const close = process.env.FRAMING === 'close' || direct

const server = http.createServer((req, res) => {
  if (req.url === '/sse') {
    if (close) res.useChunkedEncodingByDefault = false
    res.writeHead(200, { 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-cache', connection: close ? 'close' : 'keep-alive' })
    res.write('data: hello\n\n')
    clients.add(res)
    control.connected()
    res.on('close', () => clients.delete(res))
    return
  }
  const path = req.url.split('?')[0]
  const handler = control.routes[path]
  if (handler === undefined) {
    res.statusCode = 404
    res.end()
    return
  }
  Promise.resolve(handler(parseQuery(req.url))).then(body => {
    res.setHeader('content-type', 'application/json')
    res.end(JSON.stringify(body))
  })
})
server.requestTimeout = 0
server.headersTimeout = 0
server.keepAliveTimeout = 0
server.listen(0, '127.0.0.1', 4096, () => process.stdout.write(`listening ${server.address().port}\n`))
