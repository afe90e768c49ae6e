'use strict'

// Topics, in server CPU (one core, pinned), over N real connections held by this process (another core):
//   1. a publish to a topic that all N streams follow, against broadcast() to the N identified streams
//      (rounds interleaved, median of each); the target is at most 1.05x.
//   2. publishes to a topic with one follower, at 1,000 and at 10,000 such topics: the cost per publish must not
//      grow with the number of topics (O(1)); a publish to one identifier is the reference.
//
//   node bench/topics.js [--n=10000] [--rounds=15] [--singles=2000]    (npm run build first)
//   node bench/topics.js --report                                      rewrites the section from the last results
// Writes bench/results/topics.json, and the "Topics" section to bench/results/topics.md (report.js includes it) and
// to BENCHMARKS.md.

const { spawn, execFileSync } = require('node:child_process')
const fs = require('node:fs')
const net = require('node:net')
const path = require('node:path')

const arg = (name, fallback) => Number(process.argv.find(a => a.startsWith(`--${name}=`))?.split('=')[1] ?? fallback)
const N = arg('n', 10000)
const SMALL = Math.min(1000, N)
const ROUNDS = arg('rounds', 15)
const SINGLES = arg('singles', 2000)

const hasTaskset = (() => {
  try {
    execFileSync('taskset', ['-c', '0', 'true'])
    return true
  } catch {
    return false
  }
})()

function startServer () {
  const script = path.join(__dirname, 'servers', 'topics.js')
  const pin = hasTaskset ? ['taskset', '-c', '0'] : []
  const cmd = [...pin, process.execPath, '--expose-gc', script]
  const child = spawn(cmd[0], cmd.slice(1), { stdio: ['ignore', 'pipe', 'inherit', 'ipc'] })
  return new Promise((resolve, reject) => {
    child.stdout.setEncoding('utf8')
    child.stdout.on('data', line => {
      const m = /^listening (\d+)/.exec(line)
      if (m !== null) resolve({ child, port: Number(m[1]) })
    })
    child.once('exit', code => reject(new Error(`server exited with ${code}`)))
  })
}

let received = 0
let waiting = null

function open (port, i) {
  return new Promise((resolve, reject) => {
    const socket = net.connect(port, '127.0.0.1')
    let last = 0
    let hello = false
    socket.on('connect', () => socket.write(`GET /sse?i=${i} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n`))
    socket.on('data', chunk => {
      // Events end with a blank line: count "\n\n", also across chunk borders.
      let count = 0
      if (last === 0x0a && chunk[0] === 0x0a) count++
      for (let k = chunk.indexOf('\n\n'); k !== -1; k = chunk.indexOf('\n\n', k + 2)) count++
      last = chunk[chunk.length - 1]
      if (!hello) {
        hello = true
        count--
        resolve(socket)
      }
      received += count
      if (waiting !== null && received >= waiting.until) {
        const done = waiting.resolve
        waiting = null
        done()
      }
    })
    socket.on('error', reject)
  })
}

async function openMany (port, from, to) {
  const sockets = []
  for (let i = from; i < to; i += 250) {
    sockets.push(...await Promise.all(Array.from({ length: Math.min(250, to - i) }, (_, k) => open(port, i + k))))
  }
  return sockets
}

function ask (child, message, answer) {
  return new Promise(resolve => {
    const onMessage = reply => {
      if (reply.op !== answer) return
      child.off('message', onMessage)
      resolve(reply)
    }
    child.on('message', onMessage)
    child.send(message)
  })
}

/** Runs one measured step: `expected` events must arrive; returns the server CPU (ms) it took. */
async function measure (child, message, expected) {
  const arrived = new Promise(resolve => { waiting = { until: received + expected, resolve } })
  await ask(child, message, 'started')
  await arrived
  return (await ask(child, { op: 'stop' }, 'stopped')).cpuMs
}

const median = values => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)]
const round = (x, d = 1) => Math.round(x * 10 ** d) / 10 ** d

async function main () {
  const { child, port } = await startServer()
  const results = { date: new Date().toISOString(), n: N, rounds: ROUNDS, singles: SINGLES, node: process.version }
  try {
    await openMany(port, 0, SMALL)
    const singles = {}
    for (const mode of ['publish-one-topic', 'publish-one-identifier']) {
      singles[mode] = { [SMALL]: (await measure(child, { op: 'start', mode, n: SMALL, count: SINGLES }, SINGLES)) * 1000 / SINGLES }
    }
    await openMany(port, SMALL, N)

    const fanOut = { broadcast: [], 'publish-topic': [], 'broadcast-topic': [], 'publish-all': [] }
    for (let r = 0; r < ROUNDS; r++) {
      for (const mode of Object.keys(fanOut)) fanOut[mode].push(await measure(child, { op: 'start', mode, n: N }, N))
    }
    for (const mode of ['publish-one-topic', 'publish-one-identifier']) {
      singles[mode][N] = (await measure(child, { op: 'start', mode, n: N, count: SINGLES }, SINGLES)) * 1000 / SINGLES
    }
    results.fanOutCpuMs = Object.fromEntries(Object.entries(fanOut).map(([mode, values]) => [mode, { median: round(median(values)), values: values.map(v => round(v)) }]))
    results.ratio = round(median(fanOut['publish-topic']) / median(fanOut.broadcast), 3)
    results.singleUs = Object.fromEntries(Object.entries(singles).map(([mode, byN]) => [mode, Object.fromEntries(Object.entries(byN).map(([n, us]) => [n, round(us)]))]))
    results.growth = round(singles['publish-one-topic'][N] / singles['publish-one-topic'][SMALL], 2)
  } finally {
    child.kill('SIGKILL')
  }
  fs.mkdirSync(path.join(__dirname, 'results'), { recursive: true })
  fs.writeFileSync(path.join(__dirname, 'results', 'topics.json'), JSON.stringify(results, null, 2) + '\n')
  console.log(updateBenchmarks(results))
  process.exit(0)
}

/** Writes the "Topics" section into BENCHMARKS.md: in place, or where report.js puts it (before the findings). */
function updateBenchmarks (results) {
  const section = topicsSection(results)
  fs.writeFileSync(path.join(__dirname, 'results', 'topics.md'), section)
  const file = path.join(__dirname, '..', 'BENCHMARKS.md')
  const text = fs.readFileSync(file, 'utf8')
  const start = text.indexOf('\n## 8. Topics\n')
  const next = start === -1 ? -1 : text.indexOf('\n## ', start + 1)
  let updated
  if (start !== -1) {
    updated = text.slice(0, start + 1) + section + (next === -1 ? '' : text.slice(next))
  } else {
    // Where report.js puts it: before the findings, when there are some.
    const findings = text.indexOf('\n## What was found')
    updated = findings === -1 ? text.trimEnd() + '\n\n' + section : text.slice(0, findings + 1) + section + '\n' + text.slice(findings + 1)
  }
  fs.writeFileSync(file, updated.endsWith('\n') ? updated : updated + '\n')
  return section
}

function num (n) {
  return Number(n).toLocaleString('en-US')
}

/** The "Topics" section of BENCHMARKS.md, from a results file. */
function topicsSection (r) {
  const f = r.fanOutCpuMs
  const rel = mode => round(f[mode].median / f.broadcast.median, 2).toFixed(2)
  const s = r.singleUs
  const small = Math.min(1000, r.n)
  return [
    '## 8. Topics',
    '',
    `Generated by \`node bench/topics.js\` on ${r.date.slice(0, 16).replace('T', ' ')} UTC (node ${r.node}). Server CPU (ms, user + system, median of ${r.rounds} interleaved rounds) from the call until this process has received every event, over ${num(r.n)} connections; each stream is identified and follows \`all\` and a topic of its own, and the history is on (\`size: 1000\`).`,
    '',
    `| one fan-out to ${num(r.n)} streams | server CPU (ms) | vs broadcast() |`,
    '| --- | ---: | ---: |',
    `| \`broadcast(data)\` to the identified streams | ${f.broadcast.median} | 1.00× |`,
    `| **\`publish(data, { to: { topic: 'all' } })\`** | ${f['publish-topic'].median} | **${rel('publish-topic')}×** (target ≤ 1.05×: ${r.ratio <= 1.05 ? 'met' : 'not met'}) |`,
    `| \`broadcast(data, { topic: 'all' })\` | ${f['broadcast-topic'].median} | ${rel('broadcast-topic')}× |`,
    `| \`publish(data)\` to every identified stream | ${f['publish-all'].median} | ${rel('publish-all')}× |`,
    '',
    `| one publish to a single follower (µs of server CPU each, ${num(r.singles)} in a row) | ${num(small)} topics | ${num(r.n)} topics | growth |`,
    '| --- | ---: | ---: | ---: |',
    `| **\`publish(data, { to: { topic: 't:<i>' } })\`**, one follower each | ${s['publish-one-topic'][small]} | ${s['publish-one-topic'][r.n]} | **${r.growth}×** |`,
    `| \`publish(data, { to: 'c<i>' })\`, one identifier (reference) | ${s['publish-one-identifier'][small]} | ${s['publish-one-identifier'][r.n]} | ${round(s['publish-one-identifier'][r.n] / s['publish-one-identifier'][small], 2)}× |`,
    '',
    `A publish to a topic asks the index for the topic's followers (one Map lookup) and writes each once. Ten times the topics is not ten times the cost: the growth from ${num(small)} to ${num(r.n)} topics is about that of a publish to one identifier, which is one Map lookup too (a bigger heap with ${num(r.n)} open streams). With ${num(r.n)} topics the history keeps the 1,000 most recently published (\`history.topics\`), dropping the oldest in O(1) on each publish.`,
    ''
  ].join('\n')
}

module.exports = { topicsSection }

if (require.main === module && process.argv.includes('--report')) {
  // Rewrites the section from the last results, without measuring.
  updateBenchmarks(JSON.parse(fs.readFileSync(path.join(__dirname, 'results', 'topics.json'), 'utf8')))
} else if (require.main === module) {
  main().catch(err => {
    console.error(err)
    process.exit(1)
  })
}
