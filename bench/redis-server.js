'use strict'

// A private redis-server for a benchmark: a free loopback port, nothing kept on disk; stop it with child.kill().

const { spawn, spawnSync } = require('node:child_process')
const net = require('node:net')

const sleep = ms => new Promise(resolve => setTimeout(resolve, ms))

function freePort () {
  return new Promise((resolve, reject) => {
    const server = net.createServer()
    server.once('error', reject)
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address()
      server.close(() => resolve(port))
    })
  })
}

/** Starts redis-server and resolves once it answers PING: `{ child, port, url }`. */
async function startRedis () {
  const port = await freePort()
  const child = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], { stdio: 'ignore' })
  for (let i = 0; i < 100; i++) {
    if (spawnSync('redis-cli', ['-p', String(port), 'ping']).stdout?.toString().trim() === 'PONG') return { child, port, url: `redis://127.0.0.1:${port}` }
    await sleep(50)
  }
  child.kill('SIGKILL')
  throw new Error('redis-server did not start')
}

module.exports = { startRedis }
