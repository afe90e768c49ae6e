import http2 from 'node:http2'
import { Readable } from 'node:stream'
import { setTimeout as sleep } from 'node:timers/promises'
import { createParser, type EventSourceMessage } from 'eventsource-parser'
import Fastify, { type FastifyInstance } from 'fastify'
import { test } from 'tap'
import eventSources from '../lib/index'
import type { FastifyEventSourcesOptions, HttpRequestEventSource } from '../types/index'
import { ChunkedReader, EventLog, stalledClient, tick } from './helpers/clients'
import { openRaw, type Raw } from './helpers/raw'
import { start, until } from './helpers/server'

type T = Parameters<typeof start>[0]

interface Outcome {
  sse: HttpRequestEventSource
  /** What stream() settled with: the count, or the error. */
  result: Promise<{ sent?: number, error?: NodeJS.ErrnoException }>
}

/**
 * An app whose `/sse` route opens a source (identified by `id` when given), hands it to `run` and, unless `run`
 * closes it, keeps it open. Each request's outcome is pushed as it opens.
 */
async function serve (t: T, run: (sse: HttpRequestEventSource) => Promise<number>, options: FastifyEventSourcesOptions = {}): Promise<{ url: string, opened: Outcome[], app: Awaited<ReturnType<typeof start>>['app'] }> {
  const opened: Outcome[] = []
  const { app, url } = await start(t, app => {
    app.get<{ Querystring: { id?: string } }>('/sse', async request => {
      const sse = request.getEventSource(request.query.id)
      const result = run(sse).then(sent => ({ sent }), (error: NodeJS.ErrnoException) => ({ error }))
      opened.push({ sse, result })
      await result
      await sse.keepAlive()
    })
  }, options)
  return { app, url, opened }
}

async function first (opened: Outcome[]): Promise<Outcome> {
  await until(() => opened.length > 0, 3000, 'the stream to open')
  return opened[0]
}

/** Opens the stream and waits for `n` events. */
async function read (t: T, url: string, n: number): Promise<Raw> {
  const raw = await openRaw(t, url + '/sse')
  await until(() => raw.events.length >= n, 3000, `${n} events`)
  return raw
}

const data = (raw: Raw): string[] => raw.events.map(e => e.data)

test('an async generator: strings as data, other values through the serializer; resolves with the count and leaves the stream open', async t => {
  const { url, opened } = await serve(t, async sse => {
    async function * tokens (): AsyncGenerator<unknown> {
      yield 'Hello'
      await sleep(1)
      yield { token: 'world', n: 2 }
      yield 'line one\nline two'
    }
    const sent = await sse.stream(tokens(), { event: 'token' })
    sse.send('after')
    return sent
  })
  const raw = await read(t, url, 4)
  const { sse, result } = await first(opened)
  t.same(await result, { sent: 3 })
  t.same(data(raw), ['Hello', '{"token":"world","n":2}', 'line one\nline two', 'after'])
  t.same(raw.events.map(e => e.event), ['token', 'token', 'token', undefined])
  t.equal(sse.isActive, true, 'stream() never closes the source')
  t.equal(raw.ended, false)
})

test('a sync iterable (array, Set, generator); promise items are awaited in order, as for await does', async t => {
  const { url, opened } = await serve(t, async sse => {
    let sent = await sse.stream(['a', 'b'])
    sent += await sse.stream(new Set([1, 2]))
    sent += await sse.stream((function * () { yield 'g1'; yield Promise.resolve('p'); yield { x: 1 } })())
    return sent
  })
  const raw = await read(t, url, 7)
  t.same(await (await first(opened)).result, { sent: 7 })
  t.same(data(raw), ['a', 'b', '1', '2', 'g1', 'p', '{"x":1}'])
})

test('a Node Readable: object mode items, and a byte stream decoded as UTF-8', async t => {
  const { url, opened } = await serve(t, async sse => {
    const objects = await sse.stream(Readable.from([{ n: 1 }, 'two']))
    const bytes = await sse.stream(Readable.from([Buffer.from('caf'), Buffer.from('é ok')], { objectMode: false }), { event: 'bytes' })
    return objects + bytes
  })
  const raw = await read(t, url, 4)
  t.same(await (await first(opened)).result, { sent: 4 })
  t.same(data(raw), ['{"n":1}', 'two', 'caf', 'é ok'])
  t.same(raw.events.map(e => e.event), [undefined, undefined, 'bytes', 'bytes'])
})

test('a Web ReadableStream of strings and one of bytes', async t => {
  const { url, opened } = await serve(t, async sse => {
    const strings = new ReadableStream<string>({
      start (controller) {
        controller.enqueue('s1')
        controller.enqueue('s2')
        controller.close()
      }
    })
    const bytes = new Blob(['blob text']).stream()
    return (await sse.stream(strings)) + (await sse.stream(bytes))
  })
  const raw = await read(t, url, 3)
  t.same(await (await first(opened)).result, { sent: 3 })
  t.same(data(raw), ['s1', 's2', 'blob text'])
})

test('a character split across chunks is never broken, whatever the source', async t => {
  const text = 'naïve café — 漢字 😀 end'
  const bytes = Buffer.from(text)
  // One byte per chunk: every multi-byte character is split at every possible point.
  const chunks = (): Buffer[] => [...bytes].map(b => Buffer.from([b]))
  const { url, opened } = await serve(t, async sse => {
    let sent = await sse.stream(Readable.from(chunks(), { objectMode: false }), { event: 'readable' })
    sent += await sse.stream(new ReadableStream({
      start (c) {
        for (const chunk of chunks()) c.enqueue(new Uint8Array(chunk))
        c.close()
      }
    }), { event: 'web' })
    sent += await sse.stream((async function * () { yield * chunks() })(), { event: 'generator' })
    // A chunk ending mid-character at the very end: the decoder's remainder goes out last, as U+FFFD.
    sent += await sse.stream([Buffer.from('x'), Buffer.from([0xE2, 0x82])], { event: 'cut' })
    return sent
  })
  const raw = await openRaw(t, url + '/sse')
  const { result } = await first(opened)
  const { sent } = await result
  await until(() => raw.events.length === sent, 3000, 'every event')
  for (const name of ['readable', 'web', 'generator']) {
    const got = raw.events.filter(e => e.event === name).map(e => e.data)
    t.equal(got.join(''), text, `${name}: the text is whole`)
    t.notOk(got.some(d => d.includes('\uFFFD')), `${name}: no replacement character`)
  }
  t.same(raw.events.filter(e => e.event === 'cut').map(e => e.data), ['x', '\uFFFD'])
})

test('map: skips with undefined, sets event, id and retry; options.event names a message without its own event; a byte stream maps its text', async t => {
  const { url, opened } = await serve(t, async sse => {
    const sent = await sse.stream([1, 2, 3, 4], {
      event: 'n',
      map: n => n % 2 === 0 ? undefined : { data: { n }, id: `id-${n}`, event: n === 3 ? 'three' : undefined, retry: n === 1 ? 500 : undefined }
    })
    const text = await sse.stream(Readable.from([Buffer.from('abc')], { objectMode: false }), { map: item => ({ data: String(item).toUpperCase() }) })
    return sent + text
  })
  const raw = await read(t, url, 3)
  t.same(await (await first(opened)).result, { sent: 3 })
  t.same(raw.events.map(e => [e.event, e.id, e.data]), [['n', 'id-1', '{"n":1}'], ['three', 'id-3', '{"n":3}'], [undefined, undefined, 'ABC']])
  t.same(raw.retries, [500])
})

test('a string source, or anything else that is not a source, is refused with FST_ERR_SSE_INVALID_FIELD and the stream stays healthy', async t => {
  const codes: (string | undefined)[] = []
  const { url } = await serve(t, async sse => {
    const stream = sse.stream.bind(sse) as (source: unknown, options?: unknown) => Promise<number>
    for (const bad of ['abc', Object('abc'), 42, null, undefined, { a: 1 }, () => {}]) {
      await stream(bad).then(() => codes.push('resolved'), (err: NodeJS.ErrnoException) => codes.push(err.code))
    }
    for (const options of [5, { event: 'a\nb' }, { map: 'no' }]) {
      await stream(['x'], options).then(() => codes.push('resolved'), (err: NodeJS.ErrnoException) => codes.push(err.code))
    }
    sse.send('still open')
    return 0
  })
  const raw = await read(t, url, 1)
  t.same(codes, Array(10).fill('FST_ERR_SSE_INVALID_FIELD'))
  t.same(data(raw), ['still open'], 'nothing of a refused call was written')
})

test('a producer that throws rejects with its own error and the stream stays open; each source kind', async t => {
  const boom = new Error('producer failed')
  const errors: unknown[] = []
  const { url, opened } = await serve(t, async sse => {
    const attempts: (() => Promise<number>)[] = [
      () => sse.stream((async function * () { yield 'g'; throw boom })()),
      () => sse.stream((function * () { yield 's'; throw boom })()),
      () => sse.stream(new Readable({
        objectMode: true,
        read () {
          this.push('r')
          this.destroy(boom)
        }
      })),
      () => sse.stream(new ReadableStream({
        pull (c) {
          c.enqueue('w')
          c.error(boom)
        }
      }))
    ]
    for (const attempt of attempts) await attempt().catch(err => errors.push(err))
    sse.send('after')
    return 0
  })
  const raw = await read(t, url, 1)
  await until(() => data(raw).includes('after'), 3000, 'after')
  t.equal(errors.length, 4)
  t.ok(errors.every(e => e === boom), 'rejected with the producer\'s own error')
  t.equal((await first(opened)).sse.isActive, true)
  t.same(data(raw).filter(d => d !== 'r' && d !== 'w'), ['g', 's', 'after'])
})

test('a bad item rejects with the usual code, writes nothing of it, and stops the producer', async t => {
  const stopped: string[] = []
  const outcomes: unknown[] = []
  const { url } = await serve(t, async sse => {
    async function * gen (name: string, bad: unknown): AsyncGenerator<unknown> {
      try {
        yield `${name} ok`
        yield bad
        yield `${name} never`
      } finally {
        stopped.push(name)
      }
    }
    const cyclic: Record<string, unknown> = {}
    cyclic.self = cyclic
    const runs: [string, Promise<number>][] = [
      ['cyclic', sse.stream(gen('cyclic', cyclic))],
      ['bigint', sse.stream(gen('bigint', 10n))],
      ['event', sse.stream(gen('event', 'x'), { map: item => ({ data: item, event: item === 'x' ? 'a\r\nb' : undefined }) })],
      ['id', sse.stream(gen('id', 'x'), { map: item => ({ data: item, id: item === 'x' ? 'a\nb' : undefined }) })],
      ['retry', sse.stream(gen('retry', 'x'), { map: item => ({ data: item, retry: item === 'x' ? -1 : undefined }) })],
      ['map result', sse.stream(gen('map result', 'x'), { map: item => (item === 'x' ? 'oops' : { data: item }) as never })]
    ]
    for (const [name, run] of runs) {
      await run.then(n => outcomes.push([name, n]), (err: NodeJS.ErrnoException) => outcomes.push([name, err.code]))
    }
    sse.send('healthy')
    return 0
  })
  const raw = await read(t, url, 7)
  t.same(outcomes, [
    ['cyclic', 'FST_ERR_SSE_SERIALIZATION'],
    ['bigint', 'FST_ERR_SSE_SERIALIZATION'],
    ['event', 'FST_ERR_SSE_INVALID_FIELD'],
    ['id', 'FST_ERR_SSE_INVALID_FIELD'],
    ['retry', 'FST_ERR_SSE_INVALID_FIELD'],
    ['map result', 'FST_ERR_SSE_INVALID_FIELD']
  ])
  t.same(stopped, ['cyclic', 'bigint', 'event', 'id', 'retry', 'map result'], 'every producer\'s finally ran')
  t.same(data(raw), ['cyclic ok', 'bigint ok', 'event ok', 'id ok', 'retry ok', 'map result ok', 'healthy'])
  t.notOk(raw.text.includes('never'))
  t.notOk(raw.text.includes('a\r\nb') || raw.text.includes('id: a'), 'no part of a bad item was written')
})

test('a custom serializer is used for non-string items', async t => {
  const { url, opened } = await serve(t, sse => sse.stream([{ a: 1 }, 'raw']), { serializer: v => `<${JSON.stringify(v)}>` })
  const raw = await read(t, url, 2)
  t.same(await (await first(opened)).result, { sent: 2 })
  t.same(data(raw), ['<{"a":1}>', 'raw'])
})

test('backpressure: a client that stops reading is not pulled ahead of the socket; resuming delivers every item in order', async t => {
  // 12 MB: far more than loopback's kernel buffers absorb for one connection.
  const ITEMS = 12_000
  const ITEM = 'x'.repeat(1000)
  const FRAME = Buffer.byteLength(`data: 00000 ${ITEM}\n\n`)
  let pulls = 0
  const { url, opened } = await serve(t, async sse => {
    function * items (): Generator<string> {
      for (let i = 0; i < ITEMS; i++) {
        pulls++
        yield `${String(i).padStart(5, '0')} ${ITEM}`
      }
    }
    return sse.stream(items())
  }, { maxBufferedBytes: 64 * 1024 })
  const socket = stalledClient(t, url, '/sse')
  const { sse, result } = await first(opened)

  // Stalled: the loop waits for drain and pulls nothing more across several turns of the loop.
  let last = -1
  let still = 0
  await until(() => {
    if (pulls === last && sse.bufferedAmount > 0) still++
    else still = 0
    last = pulls
    return still >= 20
  }, 10_000, 'the producer to stop being pulled')
  t.ok(pulls < ITEMS, `the stalled client holds the producer back (${pulls} of ${ITEMS} pulled)`)
  t.ok(sse.bufferedAmount <= 64 * 1024, `within maxBufferedBytes (${sse.bufferedAmount} buffered)`)
  t.equal(sse.sentContentLength, pulls * FRAME, 'every pulled item was written: none is held ahead of the socket')
  t.equal(sse.isActive, true)

  const log = new EventLog()
  const http = new ChunkedReader(chunk => log.feed(chunk))
  socket.on('data', (bytes: Buffer) => http.push(bytes))
  socket.resume()
  t.same(await result, { sent: ITEMS })
  await until(() => log.events.length === ITEMS, 10_000, 'every event')
  t.ok(log.events.every((e, i) => e.data.startsWith(String(i).padStart(5, '0') + ' ')), 'in order')
  t.equal(sse.closeReason, undefined, 'a reading client never trips slowClient')
})

test('a client that reads never trips a maxBufferedBytes far under the socket\'s buffer, however fast the producer', async t => {
  const ITEMS = 3000
  const { url, opened } = await serve(t, sse => sse.stream((function * () {
    for (let i = 0; i < ITEMS; i++) yield `${i} ${'z'.repeat(1000)}`
  })()), { maxBufferedBytes: 4096 })
  const raw = await openRaw(t, url + '/sse')
  const { sse, result } = await first(opened)
  t.same(await result, { sent: ITEMS })
  await until(() => raw.events.length === ITEMS, 10_000, 'every event')
  t.ok(raw.events.every((e, i) => e.data.startsWith(`${i} `)), 'in order')
  t.equal(sse.closeReason, undefined)
  t.equal(sse.droppedMessages, 0)
})

test('regression: under a bound smaller than the socket\'s buffer, a client that stops reading is ended by drainTimeout (the wait for the kernel never started the clock)', async t => {
  let finallyRan = false
  const { opened, url } = await serve(t, async sse => {
    async function * endless (): AsyncGenerator<string> {
      try {
        for (;;) yield 'y'.repeat(1000)
      } finally {
        finallyRan = true
      }
    }
    return sse.stream(endless())
  }, { maxBufferedBytes: 8 * 1024, drainTimeout: 200 })
  stalledClient(t, url, '/sse')
  const { sse, result } = await first(opened)
  const { sent } = await result
  t.ok(typeof sent === 'number' && sent > 0, `resolved with the count sent (${sent})`)
  t.equal(sse.closeReason, 'drain-timeout')
  await until(() => finallyRan, 3000, 'the generator\'s finally')
})

test('regression: sendAsync under a bound smaller than the socket\'s buffer resolves false once drainTimeout ends a client that stopped reading', async t => {
  let outcome: boolean | undefined
  let count = 0
  const { opened, url } = await serve(t, async sse => {
    for (;;) {
      outcome = await sse.sendAsync('y'.repeat(1000))
      if (!outcome) return count
      count++
    }
  }, { maxBufferedBytes: 8 * 1024, drainTimeout: 200 })
  stalledClient(t, url, '/sse')
  const { sse, result } = await first(opened)
  await result
  t.equal(outcome, false)
  t.ok(count > 0)
  t.equal(sse.closeReason, 'drain-timeout')
})

test('a client that stops reading is ended by drainTimeout; the producer is stopped and the promise resolves', async t => {
  let finallyRan = false
  const { opened, url } = await serve(t, async sse => {
    async function * endless (): AsyncGenerator<string> {
      try {
        for (;;) yield 'y'.repeat(1000)
      } finally {
        finallyRan = true
      }
    }
    return sse.stream(endless())
  }, { drainTimeout: 200 })
  stalledClient(t, url, '/sse')
  const { sse, result } = await first(opened)
  const { sent } = await result
  t.ok(typeof sent === 'number' && sent > 0, `resolved with the count sent (${sent})`)
  t.equal(sse.closeReason, 'drain-timeout')
  await until(() => finallyRan, 3000, 'the generator\'s finally')
  t.pass('the generator\'s finally ran')
})

/** A producer of each kind that yields one item then waits, recording how it was stopped. */
function waitingProducers (signal: AbortSignal, stopped: string[]): Record<string, () => AsyncIterable<string> | Iterable<string> | Readable | ReadableStream<string>> {
  return {
    // Awaits with the signal: its await is cut short and its finally runs.
    generator: () => (async function * () {
      try {
        yield 'first'
        await sleep(60_000, undefined, { signal })
        yield 'never'
      } finally {
        stopped.push('generator finally')
      }
    })(),
    // Endless and never awaiting: whenever the source ends, it is suspended at a yield and return() runs its finally.
    'sync generator': () => (function * () {
      try {
        for (;;) yield 'tick'
      } finally {
        stopped.push('sync generator finally')
      }
    })(),
    readable: () => {
      let pushed = false
      const readable = new Readable({
        objectMode: true,
        read () {
          if (!pushed) this.push('first')
          pushed = true
        }
      })
      readable.on('close', () => stopped.push(`readable destroyed=${readable.destroyed}`))
      return readable
    },
    'web stream': () => {
      let pushed = false
      return new ReadableStream<string>({
        pull (c) {
          if (!pushed) c.enqueue('first')
          pushed = true
          return new Promise(() => {})
        },
        cancel () { stopped.push('reader cancelled') }
      })
    }
  }
}

const EXPECTED_STOP: Record<string, string> = {
  generator: 'generator finally',
  'sync generator': 'sync generator finally',
  readable: 'readable destroyed=true',
  'web stream': 'reader cancelled'
}

for (const [how, end] of [
  ['the client leaves', async (raw: Raw) => { raw.abort() }],
  ['close() is called', async (_raw: Raw, sse: HttpRequestEventSource) => { sse.close() }]
] as const) {
  test(`stop when ${how}: the producer is stopped at once, whatever its kind, and the promise resolves`, async t => {
    for (const kind of Object.keys(EXPECTED_STOP)) {
      await t.test(kind, async t => {
        const stopped: string[] = []
        const { url, opened } = await serve(t, async sse => {
          return sse.stream(waitingProducers(sse.signal, stopped)[kind]())
        })
        const raw = await read(t, url, 1)
        const { sse, result } = await first(opened)
        await end(raw, sse)
        const { sent } = await result
        if (kind === 'sync generator') t.ok(sent !== undefined && sent >= 1, `resolved with the count (${sent})`)
        else t.equal(sent, 1)
        await until(() => stopped.length > 0, 3000, 'the producer to stop')
        t.same(stopped, [EXPECTED_STOP[kind]])
      })
    }
  })
}

test('stop on shutdown: fastify.close() stops every producer and resolves every promise', async t => {
  const stopped: string[] = []
  const { url, opened, app } = await serve(t, async sse => {
    const kind = Object.keys(EXPECTED_STOP)[opened.length]
    return sse.stream(waitingProducers(sse.signal, stopped)[kind]())
  })
  for (let i = 0; i < 4; i++) await read(t, url, 1)
  await app.close()
  const results = await Promise.all(opened.map(o => o.result))
  t.ok(results.every(r => typeof r.sent === 'number'), 'every promise resolved')
  t.ok(opened.every(o => o.sse.closeReason === 'shutdown'))
  await until(() => stopped.length === 4, 3000, 'every producer to stop')
  t.same(stopped.sort(), Object.values(EXPECTED_STOP).sort())
})

test('stop when newest wins: the replaced source\'s producer is stopped and its promise resolves', async t => {
  const stopped: string[] = []
  const { url, opened } = await serve(t, async sse => {
    return sse.stream(waitingProducers(sse.signal, stopped).generator())
  })
  const older = await openRaw(t, url + '/sse?id=same')
  await until(() => older.events.length === 1, 3000, 'the first stream')
  const newer = await openRaw(t, url + '/sse?id=same')
  await until(() => newer.events.length === 1, 3000, 'the second stream')
  t.equal(opened.length, 2)
  const replaced = opened[0]
  t.same(await replaced.result, { sent: 1 })
  t.equal(replaced.sse.closeReason, 'replaced')
  await until(() => stopped.length >= 1, 3000, 'the producer to stop')
  t.same(stopped, ['generator finally'])
  t.equal(opened[1].sse.isActive, true)
})

test('a producer that ignores the signal still lets stream() resolve at once when the source ends', async t => {
  let release: () => void = () => {}
  const gate = new Promise<void>(resolve => { release = resolve })
  const { url, opened } = await serve(t, async sse => {
    return sse.stream((async function * () {
      yield 'first'
      await gate
      yield 'late'
    })())
  })
  const raw = await read(t, url, 1)
  const { result, sse } = await first(opened)
  sse.close()
  t.same(await result, { sent: 1 })
  release()
  await tick()
  t.same(data(raw), ['first'])
})

test('stream() on a source that already ended resolves 0 and stops the producer', async t => {
  const stopped: string[] = []
  const { url, opened } = await serve(t, async sse => {
    sse.close()
    const readable = Readable.from(['x'])
    readable.on('close', () => stopped.push('destroyed'))
    return sse.stream(readable)
  })
  await openRaw(t, url + '/sse')
  t.same(await (await first(opened)).result, { sent: 0 })
  await until(() => stopped.length === 1, 3000, 'the readable to be destroyed')
})

test('an endless producer whose items are all skipped does not hold the event loop: close() still reaches it', async t => {
  let finallyRan = false
  const { url, opened } = await serve(t, async sse => {
    sse.flush()
    return sse.stream((function * () {
      try {
        for (;;) yield 1
      } finally {
        finallyRan = true
      }
    })(), { map: () => undefined })
  })
  await openRaw(t, url + '/sse')
  const { sse, result } = await first(opened)
  await sleep(20)
  sse.close()
  t.same(await result, { sent: 0 })
  t.equal(finallyRan, true)
})

test('with batch: true, items wait for each flush and arrive whole and in order', async t => {
  const ITEMS = 500
  const { url, opened } = await serve(t, sse => sse.stream((async function * () {
    for (let i = 0; i < ITEMS; i++) yield String(i)
  })()), { batch: true })
  const raw = await openRaw(t, url + '/sse')
  t.same(await (await first(opened)).result, { sent: ITEMS })
  await until(() => raw.events.length === ITEMS, 5000, 'every event')
  t.same(data(raw), Array.from({ length: ITEMS }, (_, i) => String(i)))
})

test('over HTTP/2, the pull follows the stream\'s flow control: a client that pauses then resumes gets every item in order', async t => {
  const ITEMS = 3000
  let pulls = 0
  const app = Fastify({ http2: true }) as unknown as FastifyInstance
  await app.register(eventSources)
  let outcome: Promise<number> | undefined
  let source: HttpRequestEventSource | undefined
  app.get('/sse', async request => {
    const sse = request.getEventSource()
    source = sse
    outcome = sse.stream((function * () {
      for (let i = 0; i < ITEMS; i++) {
        pulls++
        yield `${i} ${'h'.repeat(1000)}`
      }
    })())
    await outcome
    await sse.keepAlive()
  })
  t.teardown(() => app.close())
  const url = await app.listen({ port: 0, host: '127.0.0.1' })
  const session = http2.connect(url)
  session.on('error', () => {})
  t.teardown(() => { session.destroy() })
  const stream = session.request({ ':path': '/sse', accept: 'text/event-stream' })
  stream.on('error', () => {})
  const events: EventSourceMessage[] = []
  const parser = createParser({ onEvent: event => events.push(event) })
  stream.setEncoding('utf8')
  stream.pause()
  await until(() => outcome !== undefined, 3000, 'the stream to open')
  let last = -1
  let still = 0
  await until(() => {
    still = pulls === last ? still + 1 : 0
    last = pulls
    return still >= 20
  }, 10_000, 'the producer to stop being pulled')
  t.ok(pulls < ITEMS, `a paused HTTP/2 stream holds the producer back (${pulls} of ${ITEMS} pulled)`)
  stream.on('data', (text: string) => parser.feed(text))
  stream.resume()
  t.equal(await outcome, ITEMS)
  await until(() => events.length === ITEMS, 10_000, 'every event')
  t.ok(events.every((e, i) => e.data.startsWith(`${i} `)), 'in order')
  t.equal(source?.closeReason, undefined)
})

test('a handler that lets a producer\'s error escape has its stream ended, as for any handler error', async t => {
  let source: HttpRequestEventSource | undefined
  const { url } = await start(t, app => {
    app.get('/sse', async request => {
      const sse = request.getEventSource()
      source = sse
      await sse.stream((async function * () {
        yield 'before'
        throw new Error('model unavailable')
      })())
      await sse.keepAlive()
    })
  })
  const raw = await openRaw(t, url + '/sse')
  await until(() => raw.ended, 3000, 'the end of the stream')
  t.same(data(raw), ['before'])
  t.equal(source?.closeReason, 'error')
})
