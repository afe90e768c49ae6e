import { execFile, spawnSync } from 'node:child_process'
import { existsSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import Fastify from 'fastify'
import { collectDefaultMetrics, register as globalRegistry, Registry } from 'prom-client'
import { test } from 'tap'
import { request } from 'undici'
import { buildDemo } from '../examples/app'
import eventSources from '../lib/index'
import prometheus from '../lib/prometheus'
import { reader } from './helpers/clients'
import { packageDir } from './helpers/package-dir'
import { start, until } from './helpers/server'

interface Sample { name: string, labels: Record<string, string>, value: number }
interface Exposition { types: Map<string, string>, samples: Sample[] }

const NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/
const SAMPLE = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)(?: \d+)?$/
const LABEL = /^([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"$/

/** Parses the Prometheus text format (0.0.4) strictly: anything it does not recognise throws. */
function parse (text: string): Exposition {
  const types = new Map<string, string>()
  const samples: Sample[] = []
  for (const line of text.split('\n')) {
    if (line === '') continue
    if (line.startsWith('# HELP ')) {
      if (!NAME.test(line.split(' ')[2])) throw new Error(`bad HELP line: ${line}`)
      continue
    }
    if (line.startsWith('# TYPE ')) {
      const [, , name, type] = line.split(' ')
      if (!NAME.test(name) || !['counter', 'gauge', 'histogram', 'summary', 'untyped'].includes(type)) throw new Error(`bad TYPE line: ${line}`)
      if (types.has(name)) throw new Error(`metric ${name} declared twice`)
      types.set(name, type)
      continue
    }
    const match = SAMPLE.exec(line)
    if (match === null) throw new Error(`bad sample line: ${line}`)
    const labels: Record<string, string> = {}
    if (match[2] !== undefined && match[2] !== '') {
      for (const pair of match[2].split(/,(?=[a-zA-Z_][a-zA-Z0-9_]*=")/)) {
        const label = LABEL.exec(pair)
        if (label === null) throw new Error(`bad label in: ${line}`)
        labels[label[1]] = label[2]
      }
    }
    // Values are Go floats: NaN and Inf in any case (prom-client writes `Nan`).
    const text = match[3].toLowerCase()
    const value = text === 'nan' ? NaN : /^[+-]?inf$/.test(text) ? (text.startsWith('-') ? -Infinity : Infinity) : Number(match[3])
    if (Number.isNaN(value) && text !== 'nan') throw new Error(`bad value in: ${line}`)
    samples.push({ name: match[1], labels, value })
  }
  return { types, samples }
}

function value (exposition: Exposition, name: string, labels: Record<string, string> = {}): number | undefined {
  const keys = Object.keys(labels)
  return exposition.samples.find(s => s.name === name && keys.every(k => s.labels[k] === labels[k]))?.value
}

async function scrape (url: string): Promise<Exposition> {
  const res = await request(url + '/metrics')
  if (res.statusCode !== 200) throw new Error(`GET /metrics answered ${res.statusCode}`)
  if (!/^text\/plain; version=0\.0\.4/.test(String(res.headers['content-type']))) throw new Error(`content-type ${String(res.headers['content-type'])}`)
  return parse(await res.body.text())
}

test('the demo serves GET /metrics; its values move as streams open and close', async t => {
  const app = buildDemo({ plugin: eventSources, prometheus, clockInterval: 60_000, pingInterval: 60_000 })
  t.teardown(() => app.close())
  await app.listen({ port: 0, host: '127.0.0.1' })
  const address = app.server.address()
  if (address === null || typeof address === 'string') throw new Error('no port')
  const url = `http://127.0.0.1:${address.port}`

  const before = await scrape(url)
  t.equal(before.types.get('fastify_event_sources_open_streams'), 'gauge')
  t.equal(before.types.get('fastify_event_sources_messages_delivered_total'), 'counter')
  t.equal(before.types.get('fastify_event_sources_closes_total'), 'counter')
  t.equal(value(before, 'fastify_event_sources_open_streams'), 0)
  t.equal(value(before, 'fastify_event_sources_messages_delivered_total'), 0)
  t.equal(value(before, 'fastify_event_sources_closes_total', { reason: 'client' }), 0, 'every reason is there from 0')

  const one = await reader(t, url, '/events?tab=one')
  const two = await reader(t, url, '/events?tab=two')
  await until(() => app.eventSources.openStreams === 2)
  // Each tab gets hello and the welcome message, then the connection count.
  await until(() => one.log.events.length + two.log.events.length >= 5, 3000, 'the welcome events')
  await new Promise(resolve => setTimeout(resolve, 50))
  const open = await scrape(url)
  const now = app.eventSources.metrics()
  t.equal(value(open, 'fastify_event_sources_open_streams'), 2)
  t.equal(value(open, 'fastify_event_sources_active_connections'), 2)
  t.equal(value(open, 'fastify_event_sources_streams_opened_total'), 2)
  t.equal(value(open, 'fastify_event_sources_messages_delivered_total'), now.delivered)
  t.equal(now.delivered, one.log.events.length + two.log.events.length, 'delivered is what the clients received')
  t.equal(value(open, 'fastify_event_sources_sent_bytes_total'), now.bytes)

  one.close()
  await until(() => app.eventSources.openStreams === 1)
  const posted = await request(url + '/tabs/two/drop', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ hold: 0 }) })
  t.equal(posted.statusCode, 200)
  await posted.body.dump()
  await until(() => app.eventSources.metrics().closes.close === 1)
  const after = await scrape(url)
  t.equal(value(after, 'fastify_event_sources_closes_total', { reason: 'client' }), 1)
  t.equal(value(after, 'fastify_event_sources_closes_total', { reason: 'close' }), 1)
  t.equal(value(after, 'fastify_event_sources_messages_published_total'), 1, 'the drop notice went through publish')
  t.equal(value(after, 'fastify_event_sources_messages_received_total'), 1)
  t.ok((value(after, 'fastify_event_sources_messages_delivered_total') as number) >= (value(open, 'fastify_event_sources_messages_delivered_total') as number), 'the counter did not go back')
})

test('works beside other collectors on one registry: prom-client\'s default metrics (and fastify-metrics when installed)', async t => {
  let fastifyMetrics: unknown
  try {
    fastifyMetrics = require('fastify-metrics')
  } catch {}
  // fastify-metrics registers on prom-client's global registry; without it, prom-client's default metrics stand in.
  const registry = fastifyMetrics === undefined ? new Registry() : globalRegistry
  if (fastifyMetrics === undefined) collectDefaultMetrics({ register: registry })
  const { url } = await start(t, app => {
    if (fastifyMetrics !== undefined) {
      const plugin = (fastifyMetrics as { default?: unknown }).default ?? fastifyMetrics
      app.register(plugin as Parameters<typeof app.register>[0], { endpoint: null } as never)
    }
    app.register(prometheus, { registry })
    app.get('/metrics', async (request, reply) => {
      reply.type(registry.contentType)
      return registry.metrics()
    })
  })
  const exposition = await scrape(url)
  t.ok(exposition.types.has('process_cpu_user_seconds_total') || exposition.types.has('http_request_duration_seconds'), 'the other collectors are there')
  t.equal(exposition.types.get('fastify_event_sources_open_streams'), 'gauge')
  const ours = [...exposition.types.keys()].filter(name => name.startsWith('fastify_event_sources_'))
  t.same(ours.sort(), [
    'fastify_event_sources_active_connections',
    'fastify_event_sources_closes_total',
    'fastify_event_sources_dropped_total',
    'fastify_event_sources_messages_delivered_total',
    'fastify_event_sources_messages_published_total',
    'fastify_event_sources_messages_received_total',
    'fastify_event_sources_open_streams',
    'fastify_event_sources_replay_gaps_total',
    'fastify_event_sources_replays_total',
    'fastify_event_sources_runs',
    'fastify_event_sources_sent_bytes_total',
    'fastify_event_sources_streams_opened_total',
    'fastify_event_sources_topics'
  ])
  for (const name of ours) t.equal(exposition.types.get(name) === 'counter', name.endsWith('_total'), `${name}: counters and only counters end in _total`)
  t.same(exposition.samples.filter(s => s.name === 'fastify_event_sources_dropped_total').map(s => [s.labels.kind, s.value]), [['message', 0], ['ping', 0], ['comment', 0]])
})

test('the collectors leave the registry when Fastify closes, so a new instance can register on it', async t => {
  const registry = new Registry()
  for (let round = 0; round < 2; round++) {
    const app = Fastify()
    await app.register(eventSources)
    await app.register(prometheus, { registry })
    t.ok(registry.getSingleMetric('fastify_event_sources_open_streams'), `round ${round}: registered`)
    await app.close()
    t.equal(registry.getSingleMetric('fastify_event_sources_open_streams'), undefined, `round ${round}: removed`)
  }
  t.same(registry.getMetricsAsArray(), [])
})

test('the default registry is prom-client\'s global one; metricPrefix renames every metric', async t => {
  const app = Fastify()
  t.teardown(() => app.close())
  await app.register(eventSources)
  await app.register(prometheus)
  const other = Fastify()
  t.teardown(() => other.close())
  await other.register(eventSources)
  await other.register(prometheus, { registry: globalRegistry, metricPrefix: 'other_sse_' })
  const exposition = parse(await globalRegistry.metrics())
  t.equal(value(exposition, 'fastify_event_sources_open_streams'), 0)
  t.equal(value(exposition, 'other_sse_open_streams'), 0)
  t.equal(exposition.types.get('other_sse_closes_total'), 'counter')
  await app.close()
  await other.close()
  t.equal(globalRegistry.getSingleMetric('fastify_event_sources_open_streams'), undefined)
  t.equal(globalRegistry.getSingleMetric('other_sse_open_streams'), undefined)
})

test('bad options fail registration with FST_ERR_SSE_INVALID_OPTION; the plugin needs fastify-event-sources first', async t => {
  for (const [name, options] of [['registry', { registry: {} }], ['metricPrefix', { metricPrefix: '1bad' }], ['metricPrefix', { metricPrefix: 5 }]] as const) {
    const app = Fastify()
    t.teardown(() => app.close())
    await app.register(eventSources)
    await t.rejects(async () => { await app.register(prometheus, options as never) }, { code: 'FST_ERR_SSE_INVALID_OPTION', message: new RegExp(`"${name}"`) })
  }
  const bare = Fastify()
  t.teardown(() => bare.close())
  await t.rejects(async () => { await bare.register(prometheus, { registry: new Registry() }) }, /fastify-event-sources/)
})

const root = join(__dirname, '..')
const skip = existsSync(join(root, 'dist', 'prometheus.js')) ? false : 'dist/prometheus.js is missing: run `npm run build` first (npm test does)'

function node (args: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(process.execPath, args, { cwd: root, timeout: 10_000 }, (err, stdout, stderr) => {
      if (err !== null) reject(new Error(stderr || err.message))
      else resolve(stdout)
    })
  })
}

test('the built subpath: fastify-event-sources/prometheus by require() and import; the main entry never loads prom-client', { skip }, async t => {
  const cjs = await node(['-e', `
    const main = require('fastify-event-sources')
    const loaded = Object.keys(require.cache).some(file => file.includes('prom-client'))
    const plugin = require('fastify-event-sources/prometheus')
    console.log(JSON.stringify({ main: typeof main, loaded, plugin: typeof plugin, named: plugin.fastifyEventSourcesPrometheus === plugin, nested: plugin.default === plugin }))
  `])
  t.same(JSON.parse(cjs), { main: 'function', loaded: false, plugin: 'function', named: true, nested: true })
  const esm = await node(['--input-type=module', '-e', `
    import plugin, { fastifyEventSourcesPrometheus } from 'fastify-event-sources/prometheus'
    console.log(JSON.stringify({ plugin: typeof plugin, named: fastifyEventSourcesPrometheus === plugin }))
  `])
  t.same(JSON.parse(esm), { plugin: 'function', named: true })
})

test('the subpath\'s types resolve by package name under node10 and node16, with exactOptionalPropertyTypes', async t => {
  const dir = packageDir(t)
  const file = join(dir, 'consumer.ts')
  writeFileSync(file, `import Fastify from 'fastify'
import eventSources from 'fastify-event-sources'
import prometheus from 'fastify-event-sources/prometheus'
import { Registry } from 'prom-client'

const app = Fastify()
app.register(eventSources, { requireAccept: true })
app.register(prometheus, { registry: new Registry(), metricPrefix: process.env.METRICS_PREFIX })
const delivered: number = app.eventSources.metrics().delivered
console.log(delivered)
`)
  for (const flags of [['--moduleResolution', 'node10', '--module', 'commonjs'], ['--moduleResolution', 'node16', '--module', 'node16']]) {
    const run = spawnSync(process.execPath, [
      join(root, 'node_modules', 'typescript', 'bin', 'tsc'), '--noEmit', '--strict', '--exactOptionalPropertyTypes',
      '--target', 'es2022', '--skipLibCheck', '--esModuleInterop', '--ignoreDeprecations', '6.0', '--types', 'node',
      ...flags, file
    ], { cwd: dir, encoding: 'utf8', timeout: 60_000 })
    t.equal(run.status, 0, `${flags[1]}: ${run.stdout}${run.stderr}`)
  }
})
