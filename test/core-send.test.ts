import { test } from 'tap'
import { EventSource } from 'undici'
import type { HttpRequestEventSource } from '../types/index'
import { readToEnd } from './helpers/raw'
import { start, until } from './helpers/server'

type T = Parameters<typeof start>[0]

function openEventSource (t: T, url: string): EventSource {
  const es = new EventSource(url)
  t.teardown(() => es.close())
  return es
}

/** The data of every message event a conforming client receives, up to and including 'done'. */
async function messagesUntilDone (t: T, url: string): Promise<string[]> {
  const es = openEventSource(t, url)
  const got: string[] = []
  es.onmessage = e => got.push(e.data)
  await until(() => got.includes('done'), 3000, 'done')
  return got
}

const PAYLOADS = [
  'plain',
  'crlf\r\nsplit',
  'cr\rsplit',
  'lf\nsplit',
  'mixed\r\n\r\n\n\rend',
  '',
  '\n',
  'trailing\n',
  '\r\nleading',
  'emoji 😀🎉 and ZWJ 👩‍💻',
  'CJK 漢字かなカナ 한글',
  'line\u2028separator\u2029paragraph',
  '  spaced  ',
  ': not a comment',
  'data: not a field'
]

test('a conforming client receives exactly the strings sent, with every line break as LF', async t => {
  const { url } = await start(t, app => {
    app.get('/sse', async request => {
      const sse = request.getEventSource()
      for (const payload of PAYLOADS) t.equal(sse.send(payload), true)
      sse.send('done')
      await sse.keepAlive()
    })
  })
  const got = await messagesUntilDone(t, url + '/sse')
  t.same(got.slice(0, -1), PAYLOADS.map(p => p.replace(/\r\n|\r/g, '\n')))
})

test('the raw body has one data line per line of the string, and a spec parser agrees', async t => {
  const { url } = await start(t, app => {
    app.get('/sse', async request => {
      const sse = request.getEventSource()
      sse.send('a\r\nb\rc\nd')
      sse.send('')
      sse.close()
    })
  })
  const raw = await readToEnd(t, url + '/sse')
  t.equal(raw.text, 'data: a\ndata: b\ndata: c\ndata: d\n\ndata: \n\n')
  t.same(raw.events.map(e => e.data), ['a\nb\nc\nd', ''])
})

test('sentContentLength counts the bytes of unicode data exactly as the client receives them', async t => {
  let source: HttpRequestEventSource | undefined
  const { url } = await start(t, app => {
    app.get('/sse', async request => {
      source = request.getEventSource()
      source.send('😀 漢字 \u2028')
      source.send({ text: 'é' }, { event: 'ü', id: '∞' })
      source.comment('note ☃')
      source.close()
    })
  })
  const raw = await readToEnd(t, url + '/sse')
  t.equal(source?.sentContentLength, raw.bytes)
  t.equal(raw.bytes, Buffer.byteLength(raw.text))
  t.same(raw.events.map(e => [e.event, e.id, e.data]), [[undefined, undefined, '😀 漢字 \u2028'], ['ü', '∞', '{"text":"é"}']])
  t.same(raw.comments, ['note ☃'])
})

test('values other than strings are serialized as JSON; null and undefined send an empty data line', async t => {
  const values: unknown[] = [{ a: 1, nested: { b: [1, 2] } }, [1, 'two'], 42, 0, true, false, '"already a string"', { multi: 'x\ny' }]
  const { url } = await start(t, app => {
    app.get('/sse', async request => {
      const sse = request.getEventSource()
      for (const value of values) sse.send(value)
      sse.send(null)
      sse.send(undefined)
      sse.send()
      sse.send('done')
      await sse.keepAlive()
    })
  })
  const got = await messagesUntilDone(t, url + '/sse')
  t.same(got, [
    '{"a":1,"nested":{"b":[1,2]}}', '[1,"two"]', '42', '0', 'true', 'false', '"already a string"', '{"multi":"x\\ny"}',
    '', '', '', 'done'
  ])
})

test('named events reach their listeners and ids become the client\'s lastEventId', async t => {
  const { url } = await start(t, app => {
    app.get('/sse', async request => {
      const sse = request.getEventSource()
      sse.send('a', { event: 'custom', id: '7' })
      sse.send('b')
      sse.send('c', { id: 'x y' })
      sse.send('d', { event: 'other' })
      sse.send('done')
      await sse.keepAlive()
    })
  })
  const es = openEventSource(t, url + '/sse')
  const got: string[][] = []
  es.onmessage = e => got.push(['message', e.data, e.lastEventId])
  es.addEventListener('custom', e => got.push(['custom', (e as MessageEvent).data, (e as MessageEvent).lastEventId]))
  es.addEventListener('other', e => got.push(['other', (e as MessageEvent).data, (e as MessageEvent).lastEventId]))
  await until(() => got.some(g => g[1] === 'done'), 3000, 'done')
  t.same(got, [['custom', 'a', '7'], ['message', 'b', '7'], ['message', 'c', 'x y'], ['other', 'd', 'x y'], ['message', 'done', 'x y']])
})

test('id \'\' resets the client\'s last event id, so a reconnect sends no Last-Event-ID', async t => {
  const seen: string[] = []
  const { url } = await start(t, app => {
    app.get('/sse/:mode', async request => {
      const mode = (request.params as { mode: string }).mode
      seen.push(mode + ':' + String(request.headers['last-event-id']))
      const sse = request.getEventSource()
      if (seen.filter(s => s.startsWith(mode + ':')).length > 1) {
        sse.send('again')
        return sse.keepAlive()
      }
      sse.send('first', { id: '5', retry: 1 })
      if (mode === 'reset') sse.send('second', { id: '' })
      return sse.close()
    })
  })
  for (const mode of ['keep', 'reset']) {
    const es = openEventSource(t, `${url}/sse/${mode}`)
    const ids: string[] = []
    es.onmessage = e => ids.push(e.data + '@' + e.lastEventId)
    await until(() => ids.some(i => i.startsWith('again')), 3000, `the ${mode} reconnect`)
    es.close()
    t.same(ids, mode === 'keep' ? ['first@5', 'again@5'] : ['first@5', 'second@', 'again@'])
  }
  t.same(seen, ['keep:undefined', 'keep:5', 'reset:undefined', 'reset:undefined'])
})

test('retry is written as sent, 0 included, and the retry option opens every stream', async t => {
  const { url } = await start(t, app => {
    app.get('/sse', async request => {
      const sse = request.getEventSource()
      sse.send('zero', { retry: 0 })
      sse.send('big', { retry: 60_000, event: 'e', id: '1' })
      sse.close()
    })
  }, { retry: 1500 })
  const raw = await readToEnd(t, url + '/sse')
  t.equal(raw.text, 'retry: 1500\n\nretry: 0\ndata: zero\n\nevent: e\nid: 1\nretry: 60000\ndata: big\n\n')
  t.same(raw.retries, [1500, 0, 60000])
  t.same(raw.events.map(e => e.data), ['zero', 'big'])
})

test('an invalid event, id or retry throws FST_ERR_SSE_INVALID_FIELD and writes nothing', async t => {
  const bad: object[] = [
    { event: 'a\nb' }, { event: 'a\rb' }, { event: 'a\0b' }, { event: 5 },
    { id: '1\n2' }, { id: '\r' }, { id: 'a\0' }, { id: 7 },
    { retry: -1 }, { retry: 1.5 }, { retry: NaN }, { retry: Infinity }, { retry: '5' },
    { event: 'ok', id: 'ok', retry: -5 }
  ]
  const codes: string[] = []
  const lengths: number[] = []
  let headBefore: boolean | undefined
  let source: HttpRequestEventSource | undefined
  const { url } = await start(t, app => {
    app.get('/sse', async request => {
      const sse = source = request.getEventSource()
      for (const options of bad) {
        try {
          sse.send('never', options)
          codes.push('sent')
        } catch (err) {
          codes.push((err as { code: string }).code)
        }
        lengths.push(sse.sentContentLength)
      }
      headBefore = sse.headersSent
      sse.send('valid')
      for (const options of bad) {
        try { sse.send('never', options) } catch {}
      }
      sse.close()
    })
  })
  const raw = await readToEnd(t, url + '/sse')
  t.same(codes, bad.map(() => 'FST_ERR_SSE_INVALID_FIELD'))
  t.same(lengths, bad.map(() => 0))
  t.equal(headBefore, false, 'a rejected send does not even write the head')
  t.equal(raw.text, 'data: valid\n\n')
  t.equal(source?.sentContentLength, raw.bytes)
})

test('the serializer option turns non-string values into text; strings bypass it', async t => {
  const { url } = await start(t, app => {
    app.get('/sse', async request => {
      const sse = request.getEventSource()
      sse.send({ a: 1 })
      sse.send('as is')
      sse.send(3)
      sse.send(null)
      sse.close()
    })
  }, { serializer: value => `<${JSON.stringify(value)}>\n<end>` })
  const raw = await readToEnd(t, url + '/sse')
  t.same(raw.events.map(e => e.data), ['<{"a":1}>\n<end>', 'as is', '<3>\n<end>', ''])
})

test('a serializer that throws or returns a non-string throws FST_ERR_SSE_SERIALIZATION and writes nothing', async t => {
  const codes: string[] = []
  const { url } = await start(t, app => {
    app.get('/sse', async request => {
      const sse = request.getEventSource()
      const circular: Record<string, unknown> = {}
      circular.self = circular
      for (const value of [circular, 10n]) {
        try { sse.send(value) } catch (err) { codes.push((err as { code: string }).code) }
      }
      sse.send('after')
      sse.close()
    })
  })
  const raw = await readToEnd(t, url + '/sse')
  t.same(codes, ['FST_ERR_SSE_SERIALIZATION', 'FST_ERR_SSE_SERIALIZATION'])
  t.equal(raw.text, 'data: after\n\n')
})

test('send and comment after close return false and write nothing', async t => {
  const results: unknown[] = []
  let source: HttpRequestEventSource | undefined
  const { url } = await start(t, app => {
    app.get('/sse', async request => {
      const sse = source = request.getEventSource()
      results.push(sse.send('last'))
      const length = sse.sentContentLength
      sse.close()
      results.push(sse.send('after'), sse.send({ x: 1 }, { event: 'e' }), sse.comment('after'), sse.sentContentLength === length)
    })
  })
  const raw = await readToEnd(t, url + '/sse')
  t.same(results, [true, false, false, false, true])
  t.equal(raw.text, 'data: last\n\n')
  t.equal(source?.sentContentLength, raw.bytes)
})

test('comment writes one colon line per line and is invisible to EventSource handlers', async t => {
  const { url } = await start(t, app => {
    app.get('/raw', async request => {
      const sse = request.getEventSource()
      t.equal(sse.comment('one\r\ntwo\rthree\nfour'), true)
      sse.comment('')
      sse.close()
    })
    app.get('/es', async request => {
      const sse = request.getEventSource()
      sse.comment('hidden\nlines')
      sse.comment('data: not data')
      sse.send('visible')
      await sse.keepAlive()
    })
  })
  const raw = await readToEnd(t, url + '/raw')
  t.equal(raw.text, ': one\n: two\n: three\n: four\n\n: \n\n')
  t.same(raw.comments, ['one', 'two', 'three', 'four', ''])
  t.same(raw.events, [])

  const es = openEventSource(t, url + '/es')
  const got: string[] = []
  es.onmessage = e => got.push(e.data)
  await until(() => got.length > 0, 3000, 'a message')
  t.same(got, ['visible'])
})
