import { spawnSync } from 'node:child_process'
import { writeFileSync } from 'node:fs'
import path from 'node:path'
import { test } from 'tap'
import { packageDir, ROOT } from './helpers/package-dir'

// A consumer's file: the package by its name, both entry points, undefined where an option is optional.
const CONSUMER = `import Fastify from 'fastify'
import eventSources from 'fastify-event-sources'
import { redisAdapter } from 'fastify-event-sources/redis'

const app = Fastify()
const maybe: string | undefined = process.env.EVENT_NAME
app.register(eventSources, { adapter: redisAdapter({ url: process.env.REDIS_URL }), maxConnections: undefined })
app.get('/sse', async request => {
  const sse = request.getEventSource()
  sse.send('x', { event: maybe })
  return sse.close()
})
`

const SETTINGS: Record<string, string[]> = {
  node10: ['--moduleResolution', 'node10', '--module', 'commonjs'],
  node16: ['--moduleResolution', 'node16', '--module', 'node16']
}

test('the types resolve by package name, fastify-event-sources/redis included, under every moduleResolution, with exactOptionalPropertyTypes (issue 11, point 7)', async t => {
  const dir = packageDir(t)
  const file = path.join(dir, 'consumer.ts')
  writeFileSync(file, CONSUMER)
  for (const [name, flags] of Object.entries(SETTINGS)) {
    const run = spawnSync(process.execPath, [
      path.join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc'), '--noEmit', '--strict', '--exactOptionalPropertyTypes',
      '--target', 'es2022', '--skipLibCheck', '--esModuleInterop', '--ignoreDeprecations', '6.0', '--types', 'node',
      ...flags, file
    ], { cwd: dir, encoding: 'utf8', timeout: 60_000 })
    t.equal(run.status, 0, `${name}: ${run.stdout}${run.stderr}`)
  }
})
