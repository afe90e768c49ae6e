import { spawn, spawnSync, type ChildProcess } from 'node:child_process'
import { existsSync, readFileSync, writeFileSync } from 'node:fs'
import { request as httpRequest } from 'node:http'
import { connect, createServer } from 'node:net'
import path from 'node:path'
import tap, { test, type Test } from 'tap'
import ts from 'typescript'
import { packageDir, ROOT } from './helpers/package-dir'
import { sleep } from './helpers/clients'
import { startCluster, type RedisCluster } from './fixtures/redis-cluster'

interface Block { lang: 'js' | 'ts', code: string, line: number }

/** Every ```js and ```ts block of the README, fenced at any indentation (list items included). */
function blocks (markdown: string): Block[] {
  const found: Block[] = []
  const fence = /^( *)```(js|ts)\n([\s\S]*?)^\1```$/gm
  for (let m = fence.exec(markdown); m !== null; m = fence.exec(markdown)) {
    const indent = m[1].length
    const code = m[3].split('\n').map(line => line.slice(indent)).join('\n')
    found.push({ lang: m[2] as 'js' | 'ts', code, line: markdown.slice(0, m.index).split('\n').length })
  }
  return found
}

async function freePort (): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer()
    server.on('error', reject)
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as { port: number }
      server.close(() => resolve(port))
    })
  })
}

async function accepts (port: number): Promise<boolean> {
  return new Promise(resolve => {
    const socket = connect(port, '127.0.0.1')
    socket.once('connect', () => { socket.destroy(); resolve(true) })
    socket.once('error', () => resolve(false))
  })
}

/** The status of the first GET route the block declares, read from the head only (a stream may never end). */
async function probe (port: number, code: string): Promise<number | undefined> {
  const route = /\.get(?:<[^>]*>)?\('([^']+)'/.exec(code)
  if (route === null) return undefined
  const url = `http://127.0.0.1:${port}${route[1].replace(/:\w+/g, 'x')}`
  return new Promise((resolve, reject) => {
    const req = httpRequest(url, { agent: false }, res => { resolve(res.statusCode); req.destroy() })
    req.on('error', reject)
    req.setTimeout(5000, () => { req.destroy(new Error('no head in 5 s')) })
    req.end()
  })
}

/** A private Redis for blocks that use the adapter, so nothing they do reaches the shared one. */
async function privateRedis (t: Test): Promise<string | undefined> {
  if (spawnSync('redis-server', ['--version']).status !== 0) return undefined
  const port = 20000 + Math.floor(Math.random() * 12000)
  const child = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'], { stdio: 'ignore' })
  t.teardown(() => { child.kill('SIGKILL') })
  for (let i = 0; i < 100 && child.exitCode === null; i++) {
    if (await accepts(port)) return `redis://127.0.0.1:${port}`
    await sleep(50)
  }
  throw new Error('the private redis-server did not start')
}

async function exited (child: ChildProcess, ms: number): Promise<boolean> {
  if (child.exitCode !== null || child.signalCode !== null) return true
  return Promise.race([new Promise<boolean>(resolve => child.once('exit', () => resolve(true))), sleep(ms).then(() => false)])
}

const README = readFileSync(path.join(ROOT, 'README.md'), 'utf8')

// Some 25 examples run one after the other, each in a process of its own (40 s on an idle machine): on a busy one
// this file needs more than the suite's 120 s per file.
tap.setTimeout(360_000)

test('every js and ts block of the README runs as pasted (issue 11, point 7)', async outer => {
  const t = outer
  if (!existsSync(path.join(ROOT, 'dist', 'index.js'))) throw new Error('dist/ is missing: npm test builds it first (npm run build)')
  const dir = packageDir(t)
  const found = blocks(README)
  t.ok(found.length >= 10, `${found.length} blocks found`)
  let redisUrl: string | undefined
  let cluster: RedisCluster | undefined
  outer.teardown(() => cluster?.stop())

  for (const [i, block] of found.entries()) {
    const name = `README.md line ${block.line} (${block.lang})`
    await t.test(name, async t => {
      let file = path.join(dir, `block-${i}.js`)
      let source = block.code
      if (block.lang === 'ts') {
        // What a newcomer's tsc makes of it: an ES module, target ES2022 (so `using` is down-levelled).
        const out = ts.transpileModule(source, {
          compilerOptions: { target: ts.ScriptTarget.ES2022, module: ts.ModuleKind.ESNext },
          reportDiagnostics: true
        })
        t.same(out.diagnostics?.map(d => ts.flattenDiagnosticMessageText(d.messageText, '\n')), [], 'TypeScript accepts it')
        source = out.outputText
        file = path.join(dir, `block-${i}.mjs`)
      }
      writeFileSync(file, source)
      const env: NodeJS.ProcessEnv = { ...process.env, PORT: String(await freePort()) }
      if (block.code.includes('REDIS_CLUSTER_NODES')) {
        if (spawnSync('redis-server', ['--version']).status !== 0) {
          t.pass('skipped: redis-server is not installed, and this block needs a Redis Cluster')
          return
        }
        cluster ??= await startCluster()
        env.REDIS_CLUSTER_NODES = cluster.startupNodes.map(node => `${node.host}:${node.port}`).join(',')
      } else if (block.code.includes('fastify-event-sources/redis')) {
        redisUrl ??= await privateRedis(outer)
        if (redisUrl === undefined) {
          t.pass('skipped: redis-server is not installed, and this block needs a Redis')
          return
        }
        env.REDIS_URL = redisUrl
      }
      const child = spawn(process.execPath, [file], { cwd: dir, env, stdio: ['ignore', 'pipe', 'pipe'] })
      t.teardown(() => { if (child.exitCode === null) child.kill('SIGKILL') })
      let stderr = ''
      child.stderr.on('data', chunk => { stderr += chunk })
      child.stdout.resume()
      const server = /\.listen\(/.test(block.code)
      if (!server) {
        t.ok(await exited(child, 20_000), 'ends within 20 s')
        t.equal(child.exitCode, 0, `exits 0${stderr === '' ? '' : ': ' + stderr}`)
        return
      }
      const port = Number(env.PORT)
      const deadline = Date.now() + 20_000
      while (!await accepts(port)) {
        if (child.exitCode !== null || Date.now() > deadline) break
        await sleep(50)
      }
      t.equal(child.exitCode, null, `listening, not exited${stderr === '' ? '' : ': ' + stderr}`)
      if (child.exitCode !== null) return
      const status = await probe(port, block.code)
      if (status !== undefined) t.ok(status < 500, `its first GET route answers ${status}`)
      t.notOk(await exited(child, 200), 'still running a moment later')
      t.equal(stderr, '', 'nothing on stderr')
      child.kill('SIGTERM')
      await exited(child, 5000)
    })
  }
})

test('the README\'s TypeScript blocks type-check against the published types (strict, nodenext)', async t => {
  const dir = packageDir(t)
  const files = blocks(README).filter(b => b.lang === 'ts').map((block, i) => {
    const file = path.join(dir, `block-${i}.mts`)
    writeFileSync(file, block.code)
    return file
  })
  const run = spawnSync(process.execPath, [
    path.join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc'), '--noEmit', '--strict', '--target', 'es2022',
    '--module', 'nodenext', '--moduleResolution', 'nodenext', '--lib', 'es2023,esnext.disposable', '--skipLibCheck',
    '--types', 'node', ...files
  ], { cwd: dir, encoding: 'utf8', timeout: 90_000 })
  t.equal(run.status, 0, run.stdout + run.stderr)
})

test('an example that throws fails the README test: the harness sees a non-zero exit', async t => {
  const dir = packageDir(t)
  const file = path.join(dir, 'broken.js')
  writeFileSync(file, "const fastify = require('fastify')()\nawait fastify.register(require('fastify-event-sources'))\n")
  const run = spawnSync(process.execPath, [file], { cwd: dir, encoding: 'utf8', timeout: 20_000 })
  t.not(run.status, 0, 'the old Redis example shape (require() with top-level await) does not run')
})
