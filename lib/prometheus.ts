import type { FastifyInstance } from 'fastify'
import fp from 'fastify-plugin'
import { Counter, Gauge, register as globalRegistry, type Registry } from 'prom-client'
import { FST_ERR_SSE_INVALID_OPTION } from './errors'
import type { EventSourcesMetrics } from '../types/index'
import type { PrometheusOptions } from '../types/prometheus'

type Read = (m: EventSourcesMetrics) => number

const GAUGES: [string, string, Read][] = [
  ['open_streams', 'Open event streams on this instance, identified or not.', m => m.openStreams],
  ['active_connections', 'Active identified event sources on this instance.', m => m.activeConnections],
  ['topics', 'Local topics with at least one follower.', m => m.topics],
  ['runs', 'Producers running on this instance.', m => m.runs]
]

const COUNTERS: [string, string, Read][] = [
  ['streams_opened_total', 'Event streams opened.', m => m.opened],
  ['messages_published_total', 'Messages this instance published and the adapter accepted.', m => m.published],
  ['messages_received_total', 'Messages this instance received from its adapter.', m => m.received],
  ['messages_delivered_total', 'Events written to sources (sends, fan-out, replayed and reset events; no pings or comments).', m => m.delivered],
  ['sent_bytes_total', 'Body bytes handed to sockets, pings and comments included.', m => m.bytes],
  ['replays_total', 'Last-Event-ID replays done.', m => m.replays],
  ['replay_gaps_total', 'Replays that reported a gap with a reset event.', m => m.gaps]
]

function fail (name: string, why: string): never {
  throw new FST_ERR_SSE_INVALID_OPTION(name, why)
}

/**
 * Registers collectors that read `fastify.eventSources.metrics()` when the registry is scraped: nothing is done
 * per message. They are removed from the registry when the Fastify instance closes.
 */
async function prometheus (fastify: FastifyInstance, options: PrometheusOptions): Promise<void> {
  const registry: Registry = options.registry ?? globalRegistry
  if (typeof registry !== 'object' || registry === null || typeof registry.registerMetric !== 'function') fail('registry', 'must be a prom-client Registry')
  // Not `prefix`: Fastify reads that register option as a route prefix.
  const prefix = options.metricPrefix ?? 'fastify_event_sources_'
  if (typeof prefix !== 'string' || !/^[a-zA-Z_:][a-zA-Z0-9_:]*$/.test(prefix)) fail('metricPrefix', 'must be a valid Prometheus metric name prefix')
  const sources = fastify.eventSources
  const registers = [registry]
  const names: string[] = []

  for (const [name, help, read] of GAUGES) {
    names.push(prefix + name)
    // eslint-disable-next-line no-new
    new Gauge({ name: prefix + name, help, registers, collect () { this.set(read(sources.metrics())) } })
  }
  for (const [name, help, read] of COUNTERS) {
    names.push(prefix + name)
    // eslint-disable-next-line no-new
    new Counter({
      name: prefix + name,
      help,
      registers,
      collect () {
        this.reset()
        this.inc(read(sources.metrics()))
      }
    })
  }
  names.push(prefix + 'dropped_total', prefix + 'closes_total')
  // eslint-disable-next-line no-new
  new Counter({
    name: prefix + 'dropped_total',
    help: 'Frames not written under slowClient: \'drop\', by kind (message, ping, comment).',
    labelNames: ['kind'],
    registers,
    collect () {
      const m = sources.metrics()
      this.reset()
      this.inc({ kind: 'message' }, m.droppedMessages)
      this.inc({ kind: 'ping' }, m.droppedPings)
      this.inc({ kind: 'comment' }, m.droppedComments)
    }
  })
  // eslint-disable-next-line no-new
  new Counter({
    name: prefix + 'closes_total',
    help: 'Event streams ended, by close reason.',
    labelNames: ['reason'],
    registers,
    collect () {
      const closes = sources.metrics().closes
      this.reset()
      for (const reason in closes) this.inc({ reason }, closes[reason as keyof typeof closes])
    }
  })

  fastify.addHook('onClose', async () => {
    for (const name of names) registry.removeSingleMetric(name)
  })
}

const plugin = fp(prometheus, {
  fastify: '5.x',
  name: 'fastify-event-sources-prometheus',
  dependencies: ['fastify-event-sources']
})

// Node finds an ESM import's named exports by scanning for `exports.name =`; it cannot see through Object.assign.
exports.default = exports.fastifyEventSourcesPrometheus = undefined

export = Object.assign(plugin, { default: plugin, fastifyEventSourcesPrometheus: plugin })
