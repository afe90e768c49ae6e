import type { FastifyPluginAsync } from 'fastify'
import type { Registry } from 'prom-client'

type Plugin = FastifyPluginAsync<fastifyEventSourcesPrometheus.PrometheusOptions>

declare namespace fastifyEventSourcesPrometheus {
  export interface PrometheusOptions {
    /** The prom-client registry to register on. Default prom-client's global `register`. */
    registry?: Registry | undefined
    /** Prefix of every metric name. Default `fastify_event_sources_`. */
    metricPrefix?: string | undefined
  }

  export const fastifyEventSourcesPrometheus: Plugin
  export { fastifyEventSourcesPrometheus as default }
}

/**
 * Registers Prometheus collectors (prom-client, an optional peer dependency) that read
 * `fastify.eventSources.metrics()` at scrape time. Register it after `fastify-event-sources`.
 */
declare function fastifyEventSourcesPrometheus (...params: Parameters<Plugin>): ReturnType<Plugin>
export = fastifyEventSourcesPrometheus
