'use strict'

// Resumable runs: the stream bench's load (N connections, each fed by its own producer at RATE items/s) through
// `run()` + `follow()`, with the memory run log and with Redis, against `stream()` on the same producer; and the
// memory one running run costs. The server runs on one core, the load on the other; a private redis-server (no
// persistence) on a free port serves the Redis variant. The figure is the server's CPU per event delivered.
//
//   node bench/runs.js          N = 1,000 at 50 items/s, 3 rounds of 8 s; writes bench/results/runs.md and BENCHMARKS.md
//   options: --n=1000 --rate=50 --rounds=3 --window=8000 --runs=1000 --no-report
//   node bench/runs.js lost [lease]   time from SIGKILL of the producing instance to 'lost' at a follower elsewhere
//   (build first: npm run build)

const { execFileSync } = require('node:child_process')
const fs = require('node:fs')
const http = require('node:http')
const os = require('node:os')
const path = require('node:path')
const { pinning, pinned, line } = require('./processes')
const { startRedis } = require('./redis-server')

const args = process.argv.slice(2)
const value = (name, fallback) => {
  const a = args.find(a => a.startsWith(`--${name}=`))
  return a === undefined ? fallback : a.split('=')[1]
}
const sleep = ms => new Promise(resolve => setTimeout(resolve, ms))

const VARIANTS = [
  { id: 'stream', label: '`await sse.stream(producer)` (the stream bench\'s figure, for reference)' },
  { id: 'run', label: '**`run(key, producer)` + `sse.follow(key)`**, memory run log' },
  { id: 'run-redis', label: '**`run(key, producer)` + `sse.follow(key)`**, Redis adapter' }
]

async function runOne (variant, cfg, redisUrl) {
  const server = pinned(0, [path.join(__dirname, 'servers', 'run-pipe.js')], { VARIANT: variant, PERIOD_MS: String(1000 / cfg.rate), REDIS_URL: redisUrl })
  try {
    const port = Number((await line(server, l => l.startsWith('listening '))).split(' ')[1])
    // The stream bench's load client: N raw connections counting events, CPU read over the window.
    const load = pinned(1, [path.join(__dirname, 'stream.js'), 'client', JSON.stringify({ ...cfg, port })], {})
    try {
      return JSON.parse(await line(load, l => l.startsWith('{')))
    } finally {
      load.kill('SIGKILL')
    }
  } finally {
    server.kill('SIGKILL')
  }
}

/** Heap per running run: `runs` runs started, each having stored `events` small events, nobody following. */
function memoryChild (cfg) {
  const eventSources = require('../dist/index.js')
  const Fastify = require('fastify')
  return (async () => {
    const app = Fastify()
    await app.register(eventSources, cfg.history === false ? { history: false } : {})
    await app.ready()
    const measure = () => {
      global.gc(); global.gc()
      const m = process.memoryUsage()
      return m.heapUsed + m.external
    }
    const result = {}
    for (const events of [0, cfg.events]) {
      const releases = []
      const before = measure()
      const started = []
      for (let i = 0; i < cfg.runs; i++) {
        let release
        const gate = new Promise(resolve => { release = resolve })
        releases.push(release)
        started.push(app.eventSources.run(`mem:${events}:${i}`, (async function * () {
          for (let k = 0; k < events; k++) yield 'token ' + k
          await gate
        })()))
      }
      await sleep(500)
      const after = measure()
      result[events] = (after - before) / cfg.runs
      for (const release of releases) release()
      await Promise.all(started)
    }
    await app.close()
    return result
  })()
}

const median = xs => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]

async function main () {
  const cfg = { n: Number(value('n', 1000)), rate: Number(value('rate', 50)), warmMs: 2000, windowMs: Number(value('window', 8000)) }
  const rounds = Number(value('rounds', 3))
  const memRuns = Number(value('runs', 1000))
  const redis = await startRedis()
  const results = Object.fromEntries(VARIANTS.map(v => [v.id, []]))
  try {
    for (let r = 0; r < rounds; r++) {
      for (const v of [...VARIANTS.slice(r % VARIANTS.length), ...VARIANTS.slice(0, r % VARIANTS.length)]) {
        const result = await runOne(v.id, cfg, redis.url)
        results[v.id].push(result)
        process.stderr.write(`round ${r + 1} ${v.id}: ${JSON.stringify(result)}\n`)
      }
    }
  } finally {
    redis.child.kill('SIGKILL')
  }
  const memoryOf = history => JSON.parse(execFileSync(process.execPath, ['--expose-gc', __filename, 'memory', JSON.stringify({ runs: memRuns, events: 300, history })]).toString())
  const memory = memoryOf(true)
  const bare = memoryOf(false)
  const ref = results.stream
  const rows = VARIANTS.map(v => {
    const rs = results[v.id]
    const ratios = rs.map((x, i) => x.cpuUsPerEvent / ref[i].cpuUsPerEvent)
    return `| ${v.label} | ${median(rs.map(x => x.eventsPerSec)).toFixed(0)} | ${median(rs.map(x => x.cpuUsPerEvent)).toFixed(2)} | ${v.id === 'stream' ? '1.00×' : `${median(ratios).toFixed(2)}× (rounds: ${ratios.map(x => x.toFixed(2)).join(', ')})`} | ${median(rs.map(x => x.rssMB)).toFixed(0)} |`
  })
  const commit = (() => {
    try { return execFileSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: path.join(__dirname, '..') }).toString().trim() } catch { return '' }
  })()
  const kb = bytes => (bytes / 1024).toFixed(1) + ' kB'
  const section = [
    '<!-- runs -->',
    '## Resumable runs: run() + follow()',
    '',
    `Generated by \`node bench/runs.js\` on ${new Date().toISOString().slice(0, 16).replace('T', ' ')} UTC (${commit}), node ${process.version}, ${os.cpus()[0].model.trim()}, ${os.cpus().length} cores, ${pinning ? 'server on CPU 0, load on CPU 1 (taskset)' : 'not pinned'}; the machine was shared with other work.`,
    '',
    `The stream bench's load: ${cfg.n.toLocaleString('en')} connections, each fed by its own async generator yielding a small object every ${1000 / cfg.rate} ms (${(cfg.n * cfg.rate).toLocaleString('en')} events/s in all). Here each connection starts a run of its own key and follows it, so every event is stored in the run's log (and, with the memory store, in the topic history) before it is written. Redis: a private \`redis-server\` on loopback, not pinned; its own CPU is not counted. ${rounds} rounds, variants in a rotating order; medians, the ratio taken per round against that round's \`stream()\` run.`,
    '',
    '| variant | events/s delivered | server CPU µs per event | ratio to `stream()` | server RSS (MB) |',
    '| --- | ---: | ---: | ---: | ---: |',
    ...rows,
    '',
    `Memory per running run (memory store, ${memRuns.toLocaleString('en')} runs started, nobody following; heap + external after full GCs, per run):`,
    '',
    '| | nothing stored yet | 300 small events stored (`token <n>`) | per event |',
    '| --- | ---: | ---: | ---: |',
    `| default plugin options (each event also in the topic history) | ${kb(memory[0])} | ${kb(memory[300])} | ${((memory[300] - memory[0]) / 300).toFixed(0)} B |`,
    `| \`history: false\` (the run's own log only) | ${kb(bare[0])} | ${kb(bare[300])} | ${((bare[300] - bare[0]) / 300).toFixed(0)} B |`,
    '',
    'A run that has stored nothing holds its producer, its signal, its pull loop and its log entry. Each event is a message object and its entry in the run\'s log; with the default options the topic history holds the same message too (its ring entry and position, up to `history.size` per topic). Where the CPU goes: every event is stored before it is written (the run\'s log and the topic ring in memory; one `EVAL` of `XADD` + `PUBLISH` with Redis, then the event comes back on the subscription), and the memory store\'s heap grows with what it keeps (50,000 events/s here), which the collector pays for. The rounds vary with the load of the shared machine: compare the ratios, not the events/s.',
    '<!-- /runs -->'
  ].join('\n')
  console.log(section)
  if (args.includes('--no-report')) return
  fs.writeFileSync(path.join(__dirname, 'results', 'runs.md'), section + '\n')
  const file = path.join(__dirname, '..', 'BENCHMARKS.md')
  let md = fs.readFileSync(file, 'utf8')
  const at = md.indexOf('<!-- runs -->')
  if (at !== -1) md = md.slice(0, at) + section + md.slice(md.indexOf('<!-- /runs -->') + '<!-- /runs -->'.length)
  else {
    const before = md.indexOf('## What was found')
    md = before === -1 ? md + '\n' + section + '\n' : md.slice(0, before) + section + '\n\n' + md.slice(before)
  }
  fs.writeFileSync(file, md)
}

/**
 * `node bench/runs.js lost [lease]`: how long after SIGKILL of the producing instance a follower on another one gets
 * the end event with reason 'lost' (default lease 10000 ms). Uses the test fixture instance and a private Redis.
 */
async function lost (lease) {
  const { fork } = require('node:child_process')
  const redis = await startRedis()
  const prefix = `bench-lost:${process.pid}:`
  const child = fork(path.join(__dirname, '..', 'test', 'fixtures', 'run-instance.js'), { env: { ...process.env, REDIS_URL: redis.url, CHANNEL_PREFIX: prefix, RUN_LEASE: String(lease) }, stdio: ['ignore', 'inherit', 'inherit', 'ipc'] })
  try {
    await new Promise(resolve => child.on('message', m => { if (m.port !== undefined) resolve() }))
    child.send({ n: 1, command: 'run', args: { key: 'k', count: 1e6, every: 20 } })
    await new Promise(resolve => child.on('message', m => { if (m.n === 1) resolve() }))
    const Fastify = require('fastify')
    const app = Fastify()
    await app.register(require('../dist/index.js'), { adapter: require('../dist/adapters/redis.js')({ url: redis.url, channelPrefix: prefix, runs: { lease } }) })
    app.get('/f', async request => { await request.getEventSource().follow('k') })
    await app.listen({ port: 0, host: '127.0.0.1' })
    const ended = new Promise(resolve => {
      http.get({ host: '127.0.0.1', port: app.server.address().port, path: '/f', agent: false }, res => {
        let text = ''
        res.on('data', chunk => { text += chunk })
        res.on('end', () => resolve(text))
      })
    })
    await sleep(1000)
    const killedAt = performance.now()
    child.kill('SIGKILL')
    const text = await ended
    const ms = performance.now() - killedAt
    console.log(JSON.stringify({ lease, msToLost: Math.round(ms), lost: text.includes('"reason":"lost"') }))
    await app.close()
  } finally {
    child.kill('SIGKILL')
    redis.child.kill('SIGKILL')
  }
}

if (process.argv[2] === 'lost') lost(Number(process.argv[3] ?? 10000)).catch(err => { console.error(err); process.exit(1) })
else if (process.argv[2] === 'memory') memoryChild(JSON.parse(process.argv[3])).then(r => process.stdout.write(JSON.stringify(r) + '\n'), err => { console.error(err); process.exit(1) })
else main().catch(err => { console.error(err); process.exit(1) })
