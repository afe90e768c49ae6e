'use strict'

// A small process that asks the server for /health every few ms over one keep-alive connection and records how
// long each answer took: what any other request sees while a broadcast runs. It runs on the server's core at a
// higher priority, so what it measures is the server's loop, not a busy load client.

const http = require('node:http')
const os = require('node:os')

const port = Number(process.argv[2])
const everyMs = Number(process.argv[3]) || 2
try {
  os.setPriority(-10)
} catch {}

const agent = new http.Agent({ keepAlive: true, maxSockets: 1 })
let latencies = []

function probe () {
  const t0 = performance.now()
  http.get({ host: '127.0.0.1', port, path: '/health', agent }, res => {
    res.resume()
    res.on('end', () => {
      latencies.push(performance.now() - t0)
      setTimeout(probe, everyMs)
    })
  }).on('error', () => setTimeout(probe, everyMs))
}

process.on('message', message => {
  if (message === 'reset') latencies = []
  else if (message === 'read') process.send(latencies)
})
process.on('disconnect', () => process.exit(0))
probe()
process.send('ready')
