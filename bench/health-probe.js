'use strict'

// A worker thread that asks the server for /health every few ms over one keep-alive connection and records
// how long each answer took: what any other request sees while a broadcast runs.

const http = require('node:http')
const os = require('node:os')
const { parentPort, workerData } = require('node:worker_threads')

// The probe shares a core with the load client; a higher priority for this thread alone (Linux applies it per
// thread) keeps its answers from waiting behind the client's parsing.
try {
  os.setPriority(-10)
} catch {}

const agent = new http.Agent({ keepAlive: true, maxSockets: 1 })
let latencies = []

function probe () {
  const t0 = performance.now()
  http.get({ host: '127.0.0.1', port: workerData.port, path: '/health', agent }, res => {
    res.resume()
    res.on('end', () => {
      latencies.push(performance.now() - t0)
      setTimeout(probe, workerData.everyMs)
    })
  }).on('error', () => setTimeout(probe, workerData.everyMs))
}

parentPort.on('message', message => {
  if (message === 'reset') latencies = []
  else if (message === 'read') parentPort.postMessage(latencies)
})
probe()
parentPort.postMessage('ready')
