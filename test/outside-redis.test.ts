import tap from 'tap'
import redisAdapter from '../lib/adapters/redis'
import { readEvents } from './helpers/read-events'
import { redisReady, redisUrl, uniquePrefix } from './helpers/redis'
import { start, until } from './helpers/server'

if (redisReady(tap)) {
  for (const lastEventId of ['99999999999999999999-0', '1-99999999999999999999']) {
    tap.test(`a Last-Event-ID shaped like a stream id but past Redis's range (${lastEventId}) gets the reset, then every message still held`, async t => {
      const { app, url } = await start(t, app => {
        app.get('/sse', async request => {
          const sse = request.getEventSource('a')
          await sse.keepAlive()
          return sse.close()
        })
      }, { adapter: redisAdapter({ url: redisUrl, channelPrefix: uniquePrefix(t) }) })
      for (let i = 0; i < 3; i++) await app.eventSources.publish(`m${i}`, { to: 'a' })
      const client = await readEvents(url + '/sse', { 'last-event-id': lastEventId })
      t.teardown(client.close)
      await until(() => client.events.some(e => e.data === 'm2'), 5000, 'the held messages after the reset')
      t.same(client.events.map(e => e.event ?? e.data), ['reset', 'm0', 'm1', 'm2'])
      t.same(JSON.parse(client.events[0].data), { lastEventId })
    })
  }
}
