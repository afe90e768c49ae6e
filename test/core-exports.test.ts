import { execFile } from 'node:child_process'
import { existsSync } from 'node:fs'
import { createRequire } from 'node:module'
import { join } from 'node:path'
import Fastify from 'fastify'
import { test } from 'tap'

const root = join(__dirname, '..')
const built = join(root, 'dist', 'index.js')
const skip = existsSync(built) ? false : 'dist/index.js is missing: run `npm run build` first (npm test does)'
const load = createRequire(__filename)

test('require() of the build is the plugin, also as .default and .fastifyEventSources', { skip }, async t => {
  const plugin = load(built)
  t.equal(typeof plugin, 'function')
  t.equal(plugin.default, plugin)
  t.equal(plugin.fastifyEventSources, plugin)
  t.equal(load('fastify-event-sources'), plugin, 'the package name resolves to the same module')
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(plugin)
  await app.ready()
  t.equal(app.eventSources.activeConnections, 0)
  t.equal(app.hasRequestDecorator('getEventSource'), true)
})

test('ESM import gives the plugin as the default and as named exports, as the types declare', { skip }, async t => {
  const script = `
    import eventSources, { fastifyEventSources, MemoryHistory, errors } from 'fastify-event-sources'
    import * as ns from 'fastify-event-sources'
    console.log(JSON.stringify({
      type: typeof eventSources,
      named: fastifyEventSources === eventSources,
      nsDefault: ns.default === eventSources,
      nested: eventSources.default === eventSources,
      history: typeof MemoryHistory,
      code: new errors.FST_ERR_SSE_ALREADY_STREAMING().code
    }))
  `
  const out = await new Promise<string>((resolve, reject) => {
    execFile(process.execPath, ['--input-type=module', '-e', script], { cwd: root, timeout: 10_000 }, (err, stdout, stderr) => {
      if (err !== null) reject(new Error(stderr || err.message))
      else resolve(stdout)
    })
  })
  t.same(JSON.parse(out), { type: 'function', named: true, nsDefault: true, nested: true, history: 'function', code: 'FST_ERR_SSE_ALREADY_STREAMING' })
})
