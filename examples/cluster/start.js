'use strict'

// Two instances on two ports sharing one Redis: PORT (default 3001) and PORT + 1.

const { fork } = require('node:child_process')
const { join } = require('node:path')

const base = Number(process.env.PORT ?? 3001)
const children = [base, base + 1].map(port => fork(join(__dirname, 'server.js'), { env: { ...process.env, PORT: String(port) } }))
console.log(`open http://127.0.0.1:${base}/ and http://127.0.0.1:${base + 1}/`)

let stopping = false
function stop () {
  if (stopping) return
  stopping = true
  for (const child of children) child.kill('SIGTERM')
}
process.on('SIGINT', stop)
process.on('SIGTERM', stop)
for (const child of children) child.on('exit', code => { if (!stopping && code !== 0) stop() })
