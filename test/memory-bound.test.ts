import { test, type Test } from 'tap'
import { fork, type ChildProcess } from 'node:child_process'
import http2 from 'node:http2'
import { join } from 'node:path'
import { EventLog, reader, stalledClient } from './helpers/clients'
import { MB } from './helpers/memory'
import { until } from './helpers/server'

const BOUND = 64 * 1024
const SLACK = 16 * 1024

/**
 * The server in a child process run with --expose-gc: its live memory is measured alone, without the clients'.
 * The baseline is the server with the reader connected and warmed up (the same sends, to the reader alone).
 */
class Server {
  child: ChildProcess
  url = ''
  #replies: ((message: Record<string, number | boolean>) => void)[] = []

  constructor (t: Test, h2: boolean) {
    this.child = fork(join(__dirname, 'fixtures', 'stalled-server.ts'), {
      execArgv: [...process.execArgv, '--expose-gc'],
      env: { ...process.env, BOUND: String(BOUND), H2: h2 ? '1' : '0' },
      stdio: ['ignore', 'inherit', 'inherit', 'ipc']
    })
    this.child.on('message', message => this.#replies.shift()?.(message as Record<string, number | boolean>))
    t.teardown(() => { this.child.kill() })
  }

  async start (): Promise<void> {
    const { port } = await this.#next()
    this.url = `http://127.0.0.1:${port as number}`
  }

  #next (): Promise<Record<string, number | boolean>> {
    return new Promise(resolve => this.#replies.push(resolve))
  }

  ask (cmd: string): Promise<Record<string, number | boolean>> {
    const reply = this.#next()
    this.child.send({ cmd })
    return reply
  }
}

function checkReader (t: Test, log: EventLog, sent: number): void {
  const data = log.events.map(e => e.data)
  const bad = data.findIndex((d, i) => !d.startsWith(`${i}:`))
  t.equal(data.length, sent, 'the reader received every message')
  t.equal(bad, -1, 'in order')
}

test('200 stalled HTTP/1.1 clients hold at most maxBufferedBytes + 16 KiB each in real memory', async t => {
  const N = 200
  const server = new Server(t, false)
  await server.start()
  const side = await reader(t, server.url, '/sse?id=reader')
  await until(() => side.res.statusCode === 200)
  await server.ask('warm')
  const empty = await server.ask('measure')
  for (let i = 0; i < N; i++) stalledClient(t, server.url, `/sse?id=s-${i}`)
  const open = async (): Promise<boolean> => (await server.ask('measure')).streams === N + 1
  for (let i = 0; i < 200 && !(await open()); i++) await new Promise(resolve => setTimeout(resolve, 50))
  const connected = await server.ask('measure')
  const load = await server.ask('load')
  await until(() => side.log.events.length >= (load.toReader as number), 10_000, 'the reader to get every message')
  const loaded = await server.ask('measure')

  t.ok(load.allAtBound, 'every stalled client reached its bound')
  t.ok(load.allActive, 'under drop, every stalled client stays open')
  t.ok((load.worst as number) <= BOUND, `none holds more than maxBufferedBytes by its own count (worst ${String(load.worst)})`)
  t.equal(load.readerDropped, 0)
  checkReader(t, side.log, load.toReader as number)
  const used = (loaded.memory as number) - (empty.memory as number)
  const budget = N * (BOUND + SLACK)
  t.comment(`HTTP/1.1, ${N} stalled: ${(((connected.memory as number) - (empty.memory as number)) / 1024 / N).toFixed(1)} kB each connected, ` +
    `${(used / 1024 / N).toFixed(1)} kB each loaded (${(used / MB).toFixed(1)} MB; ${((load.held as number) / MB).toFixed(1)} MB counted as buffered), ` +
    `${String(load.rounds)} rounds in ${String(load.ms)} ms`)
  t.ok(used <= budget, `live memory above the empty server ${(used / MB).toFixed(1)} MB ≤ N × (maxBufferedBytes + 16 KiB) = ${(budget / MB).toFixed(1)} MB`)
  server.child.kill()
})

test('1,000 stalled HTTP/2 streams hold at most maxBufferedBytes + 16 KiB each in real memory', async t => {
  const N = 1000
  const server = new Server(t, true)
  await server.start()
  const sessions: http2.ClientHttp2Session[] = []
  const readerSession = http2.connect(server.url)
  sessions.push(readerSession)
  const log = new EventLog()
  readerSession.request({ ':path': '/sse?id=reader' }).on('data', (chunk: Buffer) => log.feed(chunk))
  for (let i = 0; i < 100 && (await server.ask('measure')).streams !== 1; i++) await new Promise(resolve => setTimeout(resolve, 20))
  await server.ask('warm')
  const empty = await server.ask('measure')
  t.teardown(() => { for (const s of sessions) s.destroy() })
  let ready = 0
  for (let i = 0; i < N; i++) {
    // One session per stream, as separate browsers: flow control stops each at its window, and it never reads.
    const session = http2.connect(server.url)
    session.on('error', () => {})
    sessions.push(session)
    const stream = session.request({ ':path': `/sse?id=s-${i}` })
    stream.on('error', () => {})
    stream.on('response', () => {
      stream.pause()
      ready++
    })
  }
  await until(() => ready === N, 30_000, 'every stream to open')
  const open = async (): Promise<boolean> => (await server.ask('measure')).streams === N + 1
  for (let i = 0; i < 200 && !(await open()); i++) await new Promise(resolve => setTimeout(resolve, 50))
  const connected = await server.ask('measure')
  const load = await server.ask('load')
  await until(() => log.events.length >= (load.toReader as number), 10_000, 'the reader to get every message')
  const loaded = await server.ask('measure')

  t.ok(load.allAtBound, 'every stalled stream reached its bound')
  t.ok(load.allActive, 'under drop, every stalled stream stays open')
  t.ok((load.worst as number) <= BOUND, `none holds more than maxBufferedBytes by its own count (worst ${String(load.worst)})`)
  t.equal(load.readerDropped, 0)
  checkReader(t, log, load.toReader as number)
  const used = (loaded.memory as number) - (empty.memory as number)
  const budget = N * (BOUND + SLACK)
  t.comment(`HTTP/2, ${N} stalled: ${(((connected.memory as number) - (empty.memory as number)) / 1024 / N).toFixed(1)} kB each connected, ` +
    `${(used / 1024 / N).toFixed(1)} kB each loaded (${(used / MB).toFixed(1)} MB; ${((load.held as number) / MB).toFixed(1)} MB counted as buffered), ` +
    `${String(load.rounds)} rounds in ${String(load.ms)} ms`)
  t.ok(used <= budget, `live memory above the empty server ${(used / MB).toFixed(1)} MB ≤ N × (maxBufferedBytes + 16 KiB) = ${(budget / MB).toFixed(1)} MB`)
  server.child.kill()
})
