import { test } from 'tap'
import { EventSource } from 'undici'
import { start, until } from './helpers/server'

test('a conforming client receives multi-line, JSON and named events', async t => {
  const { url } = await start(t, app => {
    app.get('/sse', async request => {
      const sse = request.getEventSource('one')
      sse.send('a\r\nb\rc\nd')
      sse.send({ n: 1 }, { event: 'json', id: '1' })
      await sse.keepAlive()
      return sse.close()
    })
  })
  const es = new EventSource(url + '/sse')
  t.teardown(() => es.close())
  const got: string[] = []
  es.onmessage = e => got.push(e.data)
  es.addEventListener('json', e => got.push('json:' + e.data + ':' + e.lastEventId))
  await until(() => got.length === 2)
  t.same(got, ['a\nb\nc\nd', 'json:{"n":1}:1'])
})
