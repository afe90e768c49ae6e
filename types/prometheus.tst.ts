import Fastify from 'fastify'
import { Registry } from 'prom-client'
import { expect, test } from 'tstyche'
import prometheus, { fastifyEventSourcesPrometheus as named, type PrometheusOptions } from './prometheus'
import required = require('./prometheus')

test('the plugin is the default export, a named export and what require() gives', () => {
  expect(named).type.toBe(prometheus)
  expect(required.default).type.toBe(prometheus)
  expect(required.fastifyEventSourcesPrometheus).type.toBe(prometheus)
  expect(Fastify().register(required)).type.not.toRaiseError()
})

test('options', () => {
  const app = Fastify()
  expect(app.register(prometheus)).type.not.toRaiseError()
  expect(app.register(prometheus, { registry: new Registry(), metricPrefix: 'sse_' })).type.not.toRaiseError()
  expect<PrometheusOptions>().type.not.toBeAssignableFrom({ registry: 'global' })
  expect<PrometheusOptions>().type.not.toBeAssignableFrom({ metricPrefix: 5 })
  expect(app.register(prometheus, { labels: { app: 'x' } })).type.toRaiseError()
})
