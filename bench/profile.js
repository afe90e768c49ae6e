'use strict'

// One contender under `node --cpu-prof`, driven by the load client, then the functions with the most self time.
//
//   node bench/profile.js [broadcast|sustained|sustained10] [--n=10000] [--id=plugin] [--top=25]
//
// The profile is left in bench/results/profiles/ for Chrome DevTools or speedscope.

const fs = require('node:fs')
const path = require('node:path')
const { pinned } = require('./processes')

const args = process.argv.slice(2)
const value = (name, fallback) => args.find(a => a.startsWith(`--${name}=`))?.split('=')[1] ?? fallback
const what = args.find(a => !a.startsWith('--')) ?? 'broadcast'
const n = Number(value('n', 10000))
const top = Number(value('top', 25))
const SERVERS = {
  plain: { file: 'plain-node.js' },
  'plain-close': { file: 'plain-node.js', env: { FRAMING: 'close' } },
  plugin: { file: 'plugin.js', env: { VARIANT: 'broadcast' } },
  'plugin-chunked': { file: 'plugin.js', env: { VARIANT: 'broadcast', CHUNKED: '1' } },
  'plugin-publish': { file: 'plugin.js', env: { VARIANT: 'publish' } }
}
const id = value('id', 'plugin')
const server = SERVERS[id]
const dir = path.join(__dirname, 'results', 'profiles')
fs.mkdirSync(dir, { recursive: true })

const pinnedWithStdin = (core, nodeArgs, env) => pinned(core, nodeArgs, env, 'pipe')

async function main () {
  const name = `${id}-${what}-${n}`
  for (const f of fs.readdirSync(dir)) if (f.startsWith(name + '.')) fs.rmSync(path.join(dir, f))
  const child = pinnedWithStdin(0, ['--expose-gc', '--cpu-prof', `--cpu-prof-dir=${dir}`, `--cpu-prof-name=${name}.cpuprofile`, '--cpu-prof-interval=200', path.join(__dirname, 'servers', server.file)], { ...server.env, PING_MS: '0' })
  const exited = new Promise(resolve => child.once('exit', resolve))
  const port = await new Promise(resolve => {
    let buf = ''
    child.stdout.on('data', d => {
      buf += d
      const m = /listening (\d+)/.exec(buf)
      if (m) resolve(Number(m[1]))
    })
  })
  const cfg = what === 'broadcast'
    ? { port, n, mode: 'main', rounds: 20, healthRounds: 0, blastMs: 0, bursts: [], settleMs: 500 }
    : { port, n, mode: 'main', rounds: 1, healthRounds: 0, blastMs: 4000, bursts: [what === 'sustained10' ? 10 : 1], settleMs: 500 }
  const client = pinnedWithStdin(1, [path.join(__dirname, 'load-client.js'), JSON.stringify(cfg)], {})
  const line = await new Promise(resolve => {
    let buf = ''
    client.stdout.on('data', d => {
      buf += d
      if (buf.includes('\n')) resolve(buf.split('\n')[0])
    })
  })
  child.kill('SIGTERM')
  await exited
  client.stdin.end()
  const r = JSON.parse(line)
  console.log(JSON.stringify(what === 'broadcast' ? r.fanout : r.sustained))
  summarize(path.join(dir, `${name}.cpuprofile`))
}

/** Self time per function (name, file:line), as a share of the samples outside idle. */
function summarize (file) {
  const profile = JSON.parse(fs.readFileSync(file, 'utf8'))
  const byId = new Map(profile.nodes.map(node => [node.id, node]))
  const self = new Map()
  for (const sample of profile.samples) self.set(sample, (self.get(sample) ?? 0) + 1)
  const totals = new Map()
  let busy = 0
  for (const [nodeId, count] of self) {
    const { callFrame } = byId.get(nodeId)
    const key = `${callFrame.functionName || '(anonymous)'} ${callFrame.url.replace(/^.*\/(node_modules|lib|dist|bench)\//, '$1/')}:${callFrame.lineNumber + 1}`
    if (callFrame.functionName === '(idle)') continue
    busy += count
    totals.set(key, (totals.get(key) ?? 0) + count)
  }
  const rows = [...totals].sort((a, b) => b[1] - a[1]).slice(0, top)
  for (const [key, count] of rows) console.log(`${(count / busy * 100).toFixed(1).padStart(5)}%  ${key}`)
  console.log(`profile: ${path.relative(process.cwd(), file)}`)
}

main().catch(err => {
  console.error(err)
  process.exit(1)
})
