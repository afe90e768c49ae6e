'use strict'

// Server and load each get a core (when taskset is there) and the hard limit of open files (the shell's soft
// limit is often 1024).
const { spawn, execFileSync } = require('node:child_process')
const os = require('node:os')

const hasTaskset = (() => {
  try {
    execFileSync('taskset', ['-c', '0', 'true'])
    return true
  } catch {
    return false
  }
})()
const pinning = hasTaskset && os.cpus().length > 1

function pinned (core, nodeArgs, env, stdin = 'ignore') {
  const pin = pinning ? `taskset -c ${core} ` : ''
  const quoted = nodeArgs.map(a => `'${a.replace(/'/g, "'\\''")}'`).join(' ')
  return spawn('bash', ['-c', `ulimit -n "$(ulimit -Hn)"; exec ${pin}node ${quoted}`], { env: { ...process.env, ...env }, stdio: [stdin, 'pipe', 'inherit'] })
}

/** The first line of the child's stdout that `match` accepts. */
function line (child, match) {
  return new Promise((resolve, reject) => {
    let buf = ''
    child.stdout.setEncoding('utf8')
    child.stdout.on('data', chunk => {
      buf += chunk
      const found = buf.split('\n').find(match)
      if (found !== undefined) resolve(found)
    })
    child.once('exit', code => reject(new Error(`exited with ${code} before answering`)))
  })
}

module.exports = { hasTaskset, pinning, pinned, line }
