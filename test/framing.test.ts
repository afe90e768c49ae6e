import { createParser, type EventSourceMessage } from 'eventsource-parser'
import { test } from 'tap'
import { checkEventOptions, commentFrame, eventFrame, eventText, retryFrame, serialize } from '../lib/frame'
import * as errors from '../lib/errors'
import { prng } from './helpers/clients'

/** What a spec-conforming parser makes of some bytes, fed in the given chunk sizes. */
function parse (bytes: Buffer, chunkSizes: number[] = [bytes.length]): { events: EventSourceMessage[], comments: string[], retries: number[] } {
  const out = { events: [] as EventSourceMessage[], comments: [] as string[], retries: [] as number[] }
  const parser = createParser({
    onEvent: event => out.events.push(event),
    onComment: comment => out.comments.push(comment),
    onRetry: retry => out.retries.push(retry)
  })
  const decoder = new TextDecoder()
  let at = 0
  for (let i = 0; at < bytes.length; i++) {
    const size = Math.max(1, chunkSizes[i % chunkSizes.length])
    parser.feed(decoder.decode(bytes.subarray(at, at + size), { stream: true }))
    at += size
  }
  parser.feed(decoder.decode())
  return out
}

const PIECES = ['a', 'Z', ' ', '  ', ':', 'data:', 'id:', 'event:', 'retry: 5', '\r', '\n', '\r\n', '\n\r', '\r\r', '\n\n', '\t', '\0', 'é', '漢', '😀', '\u2028', '\u2029', '\uFEFF', '{"x":1}']

test('an event is framed as event, id, retry, then one data line per line, then a blank line', async t => {
  t.equal(eventText({ data: 'x' }), 'data: x\n\n')
  t.equal(eventText({ data: 'x', event: 'e', id: '1', retry: 0 }), 'event: e\nid: 1\nretry: 0\ndata: x\n\n')
  t.equal(eventText({ data: 'a\r\nb\rc\nd' }), 'data: a\ndata: b\ndata: c\ndata: d\n\n')
  t.equal(eventText({ data: '' }), 'data: \n\n')
  t.equal(eventText({ data: '\n' }), 'data: \ndata: \n\n')
  t.equal(eventText({ data: 'x', id: '' }), 'id: \ndata: x\n\n')
  t.equal(eventText({ data: 'x', event: '' }), 'event: \ndata: x\n\n')
  t.same(eventFrame({ data: '😀' }), Buffer.from('data: 😀\n\n'))
})

test('comments and retry frames', async t => {
  t.same(commentFrame('ping'), Buffer.from(': ping\n\n'))
  t.same(commentFrame(''), Buffer.from(': \n\n'))
  t.same(commentFrame('a\r\nb\rc\nd'), Buffer.from(': a\n: b\n: c\n: d\n\n'))
  t.same(retryFrame(0), Buffer.from('retry: 0\n\n'))
  const parsed = parse(Buffer.concat([commentFrame('x\ny'), retryFrame(1234)]))
  t.same(parsed.comments, ['x', 'y'])
  t.same(parsed.retries, [1234])
  t.same(parsed.events, [])
})

test('checkEventOptions accepts what the spec can carry and rejects the rest with FST_ERR_SSE_INVALID_FIELD', async t => {
  for (const ok of [[undefined, undefined, undefined], ['e', '1', 0], ['', '', 2 ** 31], ['with space', 'ünïcode', 1]]) {
    t.doesNotThrow(() => checkEventOptions(ok[0], ok[1], ok[2]), JSON.stringify(ok))
  }
  const bad: [string, unknown[]][] = [
    ['event', ['a\nb', undefined, undefined]], ['event', ['a\rb', undefined, undefined]], ['event', ['\0', undefined, undefined]],
    ['event', [1, undefined, undefined]], ['event', [null, undefined, undefined]],
    ['id', [undefined, 'a\nb', undefined]], ['id', [undefined, 'a\rb', undefined]], ['id', [undefined, 'a\0b', undefined]],
    ['id', [undefined, 1, undefined]],
    ['retry', [undefined, undefined, -1]], ['retry', [undefined, undefined, 0.5]], ['retry', [undefined, undefined, NaN]],
    ['retry', [undefined, undefined, Infinity]], ['retry', [undefined, undefined, '1']], ['retry', [undefined, undefined, 2 ** 53]]
  ]
  for (const [field, args] of bad) {
    t.throws(() => checkEventOptions(args[0], args[1], args[2]), {
      code: 'FST_ERR_SSE_INVALID_FIELD',
      message: new RegExp(`"${field}"`)
    }, `${field}: ${String(args[0] ?? args[1] ?? args[2])}`)
  }
})

test('serialize passes strings through, maps null and undefined to empty, and reports serializer failures', async t => {
  t.equal(serialize('as is', JSON.stringify), 'as is')
  t.equal(serialize(null, JSON.stringify), '')
  t.equal(serialize(undefined, JSON.stringify), '')
  t.equal(serialize({ a: [1] }, JSON.stringify), '{"a":[1]}')
  t.equal(serialize(0, JSON.stringify), '0')
  t.equal(serialize(false, JSON.stringify), 'false')
  t.equal(serialize(7, v => `<${String(v)}>`), '<7>')
  const cause = new Error('nope')
  t.throws(() => serialize({}, () => { throw cause }), { code: 'FST_ERR_SSE_SERIALIZATION', message: /nope/, cause })
  t.throws(() => serialize({}, () => undefined as unknown as string), { code: 'FST_ERR_SSE_SERIALIZATION', message: /undefined/ })
  t.throws(() => serialize(() => {}, JSON.stringify), { code: 'FST_ERR_SSE_SERIALIZATION' })
})

test('a spec parser recovers exactly what was framed, for random data, fields and chunk boundaries', async t => {
  const random = prng(20261121)
  const pick = <T>(list: T[]): T => list[Math.floor(random() * list.length)]
  const text = (max: number, pieces = PIECES): string => {
    let out = ''
    const n = Math.floor(random() * max)
    for (let i = 0; i < n; i++) out += pick(pieces)
    return out
  }
  const safe = PIECES.filter(p => !/[\r\n\0]/.test(p))
  for (let round = 0; round < 200; round++) {
    const sent: { data: string, event?: string, id?: string }[] = []
    const frames: Buffer[] = []
    for (let i = 0; i < 1 + Math.floor(random() * 5); i++) {
      const fields: { data: string, event?: string, id?: string } = { data: text(12) }
      if (random() < 0.5) fields.event = text(4, safe)
      if (random() < 0.5) fields.id = text(4, safe)
      sent.push(fields)
      frames.push(eventFrame(fields))
      if (random() < 0.3) frames.push(commentFrame(text(6)))
    }
    const bytes = Buffer.concat(frames)
    const sizes = Array.from({ length: 4 }, () => 1 + Math.floor(random() * 9))
    const got = parse(bytes, sizes).events
    const expected = sent.map(fields => ({
      data: fields.data.replace(/\r\n|\r/g, '\n'),
      event: fields.event === '' ? undefined : fields.event,
      id: fields.id
    }))
    const actual = got.map(e => ({ data: e.data, event: e.event, id: e.id }))
    if (JSON.stringify(actual) !== JSON.stringify(expected)) {
      t.same(actual, expected, `round ${round}, chunk sizes ${sizes.join(',')}`)
      return
    }
  }
  t.pass('200 rounds round-tripped')
})

test('field errors are @fastify/error instances of the exported classes, with codes and status 500', async t => {
  let caught: unknown
  try { checkEventOptions('a\nb', undefined, undefined) } catch (err) { caught = err }
  t.ok(caught instanceof errors.FST_ERR_SSE_INVALID_FIELD)
  t.ok(caught instanceof TypeError)
  t.match(caught, { name: 'FastifyError', code: 'FST_ERR_SSE_INVALID_FIELD', statusCode: 500, message: /^fastify-event-sources: invalid field "event"/ })
})
