import { mkdirSync, readFileSync } from 'node:fs'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import cors from '@fastify/cors'
import Fastify from 'fastify'
import type { BrowserContext, Page } from 'playwright-core'
import t, { type Test } from 'tap'
import { request } from 'undici'
import { buildDemo } from '../examples/app'
import eventSources from '../lib/index'
import { browserAvailable, launchChromium } from './helpers/browser'
import { until } from './helpers/server'

interface SeenEvent { type: string, data: string, lastEventId: string, replayed?: boolean }
interface DemoPage { tab: string, status: string, events: SeenEvent[], es: { readyState: number } }
declare const window: { demo: DemoPage, EventSource: new (url: string) => BrowserEventSource }
interface BrowserEventSource { readyState: number, onmessage: (e: { data: string }) => void, onerror: () => void, close: () => void }

interface EventsRequest { tab: string, lastEventIdHeader: string | undefined, lastEventIdQuery: string | undefined, status?: number }

// Short enough that a missed reconnect would have happened several times over while a test waits for silence.
const RETRY = 200
const SILENCE = 5 * RETRY

async function startDemo (t: Test, options: { pingInterval?: number, clockInterval?: number } = {}) {
  const app = buildDemo({ plugin: eventSources, retry: RETRY, clockInterval: 250, dropHold: 0, ...options })
  const seen: EventsRequest[] = []
  let gate: Promise<void> | undefined
  app.addHook('onRequest', async (req, reply) => {
    if (req.routeOptions.url !== '/events') return
    const query = req.query as Record<string, string | undefined>
    const header = req.headers['last-event-id']
    const entry: EventsRequest = { tab: query.tab ?? '', lastEventIdHeader: typeof header === 'string' ? header : undefined, lastEventIdQuery: query.lastEventId }
    seen.push(entry)
    // Known once the response ends: a stream when it closes, a 204 at once.
    reply.raw.once('close', () => { entry.status = reply.raw.statusCode })
    await gate
  })
  t.teardown(() => slowly('app.close()', async () => {
    // Fastify lets go of a keep-alive connection that was busy when close() began only when the client closes it or
    // keepAliveTimeout (72 s) passes, and the browser keeps its connections between tests: after 5 s, cut them.
    const cut = setTimeout(() => app.server.closeAllConnections(), 5000)
    await app.close()
    clearTimeout(cut)
  }))
  const url = await app.listen({ port: 0, host: '127.0.0.1' })
  return {
    app,
    url,
    seen,
    requestsFor: (tab: string) => seen.filter(e => e.tab === tab),
    /** Holds every /events request until the returned function is called. */
    hold (): () => void {
      let release = (): void => {}
      gate = new Promise(resolve => { release = resolve })
      return () => { gate = undefined; release() }
    },
    async post (route: string, body: unknown): Promise<void> {
      const res = await request(url + route, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) })
      await res.body.dump()
      if (res.statusCode >= 300) throw new Error(`POST ${route}: ${res.statusCode}`)
    }
  }
}

/** Runs a teardown step, and says so on stderr when it took over 3 s: the test's own time shows only the sum. */
async function slowly (what: string, step: () => Promise<void>): Promise<void> {
  const started = Date.now()
  await step()
  const took = Date.now() - started
  if (took > 3000) console.error(`browser test teardown: ${what} took ${took} ms`)
}

function eventsOf (page: Page, type: string): Promise<SeenEvent[]> {
  return page.evaluate(type => window.demo.events.filter(e => e.type === type), type)
}

async function waitForEvents (page: Page, type: string, count: number): Promise<SeenEvent[]> {
  await page.waitForFunction(([type, count]) => window.demo.events.filter(e => e.type === type).length >= count, [type, count] as const)
  return eventsOf(page, type)
}

if (browserAvailable(t)) {
  let context: BrowserContext

  t.before(async () => {
    context = await launchChromium(t)
  })

  async function openPage (t: Test, url: string): Promise<Page> {
    const page = await context.newPage()
    page.on('pageerror', err => t.fail('error in the page: ' + err.message))
    t.teardown(() => slowly('page.close()', () => page.close()))
    await page.goto(url)
    await page.waitForFunction(() => window.demo?.status === 'open')
    return page
  }

  const tabOf = (page: Page): Promise<string> => page.evaluate(() => window.demo.tab)

  t.test('the page receives a plain multi-line unicode message as sent', async t => {
    const demo = await startDemo(t)
    const page = await openPage(t, demo.url)
    const tab = await tabOf(page)
    await waitForEvents(page, 'message', 1)
    await demo.post(`/tabs/${tab}/notice`, { text: 'line one\r\nzwei ✓\rtrois 🚀\n\nÉnd – 終わり' })
    const messages = await waitForEvents(page, 'message', 2)
    t.equal(messages[1].data, 'line one\nzwei ✓\ntrois 🚀\n\nÉnd – 終わり', 'CRLF, CR and LF arrive as LF, empty line kept')
    t.equal(await page.locator('#notice').textContent(), messages[1].data, 'the page shows it')
  })

  t.test('pings reach the page as comments and fire no event', async t => {
    // No clock: from here on, pings are the only bytes the stream carries.
    const demo = await startDemo(t, { pingInterval: 50, clockInterval: 3_600_000 })
    const page = await openPage(t, demo.url)
    await waitForEvents(page, 'connections', 1)
    const source = demo.app.eventSources.getByIdentifier('tab:' + await tabOf(page))
    const before = source?.sentContentLength ?? 0
    const ping = Buffer.byteLength(': ping\n\n')
    await until(() => (source?.sentContentLength ?? 0) >= before + 5 * ping, 5000, 'five pings')
    t.equal(((source?.sentContentLength ?? 0) - before) % ping, 0, 'nothing but pings was sent')
    const types = await page.evaluate(() => window.demo.events.map(e => e.type))
    t.same(types.filter(type => type === 'message'), ['message'], 'only the welcome message')
    t.equal(source?.isActive, true)
  })

  t.test('the page receives named events: hello, connections and a feed message typed into the form', async t => {
    const demo = await startDemo(t)
    const page = await openPage(t, demo.url)
    const tab = await tabOf(page)
    const [hello] = await waitForEvents(page, 'hello', 1)
    t.same(JSON.parse(hello.data), { tab, resumedFrom: null, rooms: [] })
    const [connections] = await waitForEvents(page, 'connections', 1)
    t.equal(JSON.parse(connections.data).count, 1)

    const text = 'héllo 日本語 🎉\nsecond line'
    await page.locator('#text').fill(text)
    await page.locator('#text').press('Enter')
    const [feed] = await waitForEvents(page, 'feed', 1)
    t.same({ text: JSON.parse(feed.data).text, from: JSON.parse(feed.data).from }, { text, from: tab })
    t.match(feed.lastEventId, /^\d+-\d+$/, 'published messages carry a history id')
    t.equal(await page.locator('#feed li p').first().textContent(), text)
  })

  t.test('a tab closed by the server reconnects with Last-Event-ID and is replayed what was published meanwhile', async t => {
    const demo = await startDemo(t)
    const page = await openPage(t, demo.url)
    const tab = await tabOf(page)
    await demo.post('/messages', { text: 'before the drop', from: 'test' })
    const [first] = await waitForEvents(page, 'feed', 1)

    const release = demo.hold()
    await demo.post(`/tabs/${tab}/drop`, { hold: 0 })
    await until(() => demo.requestsFor(tab).length === 2, 5000, 'the browser to reconnect')
    await demo.post('/messages', { text: 'missed 1', from: 'test' })
    await demo.post('/messages', { text: 'missed 2', from: 'test' })
    release()
    await waitForEvents(page, 'hello', 2)

    t.equal(demo.requestsFor(tab)[1].lastEventIdHeader, first.lastEventId, 'the browser sent Last-Event-ID by itself')
    const feed = await eventsOf(page, 'feed')
    t.same(feed.map(e => [JSON.parse(e.data).from === 'server' ? 'drop notice' : JSON.parse(e.data).text, e.replayed]), [
      ['before the drop', false],
      ['drop notice', true],
      ['missed 1', true],
      ['missed 2', true]
    ], 'each missed message once, in order, before the live ones')
    t.equal(new Set(feed.map(e => e.lastEventId)).size, 4, 'no id twice')
    t.equal(await page.locator('#feed li.replayed').count(), 3)
    t.match(await page.locator('#resume').textContent(), `Reconnected from event ${first.lastEventId}: 3 missed messages replayed.`)
  })

  t.test('a reloaded page resumes through ?lastEventId= and keeps its feed', async t => {
    const demo = await startDemo(t)
    const page = await openPage(t, demo.url)
    const tab = await tabOf(page)
    await demo.post('/messages', { text: 'seen before the reload', from: 'test' })
    const [seen] = await waitForEvents(page, 'feed', 1)

    const release = demo.hold()
    await page.reload({ waitUntil: 'domcontentloaded' })
    await until(() => demo.requestsFor(tab).length === 2, 5000, 'the reloaded page to connect')
    await demo.post('/messages', { text: 'missed during the reload', from: 'test' })
    release()
    await page.waitForFunction(() => window.demo?.events.some(e => e.type === 'hello'))

    const request = demo.requestsFor(tab)[1]
    t.same([request.lastEventIdHeader, request.lastEventIdQuery], [undefined, seen.lastEventId], 'a new EventSource has no header; the query carries the id')
    const feed = await eventsOf(page, 'feed')
    t.same(feed.map(e => [JSON.parse(e.data).text, e.replayed]), [['missed during the reload', true]])
    t.same(await page.locator('#feed li p').allTextContents(), ['missed during the reload', 'seen before the reload'])
  })

  t.test('after a reload, a later reconnect resumes from its Last-Event-ID header, not the stale ?lastEventId=', async t => {
    const demo = await startDemo(t)
    const page = await openPage(t, demo.url)
    const tab = await tabOf(page)
    await demo.post('/messages', { text: 'before the reload', from: 'test' })
    await waitForEvents(page, 'feed', 1)
    await page.reload()
    await page.waitForFunction(() => window.demo?.status === 'open')
    await demo.post('/messages', { text: 'after the reload', from: 'test' })
    const [live] = await waitForEvents(page, 'feed', 1)

    await demo.post(`/tabs/${tab}/drop`, { hold: 0 })
    await waitForEvents(page, 'hello', 2)
    const reconnect = demo.requestsFor(tab)[2]
    t.not(reconnect.lastEventIdQuery, undefined, 'the URL still carries the id from before the reload')
    t.equal(reconnect.lastEventIdHeader, live.lastEventId)
    const feed = await eventsOf(page, 'feed')
    t.same(feed.map(e => [JSON.parse(e.data).from, e.replayed]), [['test', false], ['server', true]], 'only the drop notice is replayed')
  })

  t.test('a kicked tab gets the termination event, closes its EventSource and does not reconnect', async t => {
    const demo = await startDemo(t)
    const page = await openPage(t, demo.url)
    const tab = await tabOf(page)
    await demo.post(`/tabs/${tab}/kick`, {})
    await page.waitForFunction(() => window.demo.status === 'kicked')
    t.same(JSON.parse((await eventsOf(page, 'terminate'))[0].data), { reason: 'kicked from the server' })
    t.equal(await page.evaluate(() => window.demo.es.readyState), 2, 'EventSource CLOSED')
    await sleep(SILENCE)
    t.equal(demo.requestsFor(tab).length, 1, 'no reconnect')
    t.equal(demo.app.eventSources.activeConnections, 0)
    await t.resolves(page.locator('#stopped').waitFor({ state: 'visible' }))
  })

  t.test('a reconnect answered 204 stops the browser', async t => {
    const demo = await startDemo(t)
    const page = await openPage(t, demo.url)
    const tab = await tabOf(page)
    // No termination event: the browser reconnects after `retry`, and the 204 is what stops it.
    await demo.post(`/tabs/${tab}/kick`, { silent: true })
    await page.waitForFunction(() => window.demo.status === 'stopped')
    t.equal(await page.evaluate(() => window.demo.es.readyState), 2, 'EventSource CLOSED')
    await sleep(SILENCE)
    t.same(demo.requestsFor(tab).map(e => e.status), [200, 204], 'one reconnect, answered 204, then none')
  })

  t.test('the connection counter follows a second page opening and closing', async t => {
    const demo = await startDemo(t)
    const first = await openPage(t, demo.url)
    const count = (): Promise<string | null> => first.locator('#count').textContent()
    await first.waitForFunction(() => window.demo.events.some(e => e.type === 'connections'))
    t.equal(await count(), '1')

    const second = await openPage(t, demo.url)
    const secondTab = await tabOf(second)
    t.not(secondTab, await tabOf(first), 'each tab has its own id')
    await first.locator(`#tabs li[data-tab="${secondTab}"]`).waitFor()
    t.equal(await count(), '2')
    t.equal(demo.app.eventSources.activeConnections, 2)

    await second.close()
    await first.locator(`#tabs li[data-tab="${secondTab}"]`).waitFor({ state: 'detached' })
    t.equal(await count(), '1')
    t.equal(demo.app.eventSources.activeConnections, 1)
  })

  t.test('a cross-origin EventSource connects when @fastify/cors allows the origin, and fails when nothing does', async t => {
    const demo = await startDemo(t)
    const page = await openPage(t, demo.url)
    const pageOrigin = new URL(demo.url).origin
    const urls: string[] = []
    for (const withCors of [true, false]) {
      const app = Fastify()
      if (withCors) await app.register(cors, { origin: pageOrigin })
      await app.register(eventSources)
      app.get('/sse', async req => {
        const sse = req.getEventSource()
        sse.send('hello from another origin')
        await sse.keepAlive()
        return sse.close()
      })
      t.teardown(() => app.close())
      urls.push(await app.listen({ port: 0, host: '127.0.0.1' }) + '/sse')
    }
    const connect = (url: string): Promise<string> => page.evaluate(url => new Promise<string>(resolve => {
      const es = new window.EventSource(url)
      es.onmessage = e => { es.close(); resolve(e.data) }
      es.onerror = () => { if (es.readyState === 2) resolve('failed') }
    }), url)
    t.equal(await connect(urls[0]), 'hello from another origin')
    t.equal(await connect(urls[1]), 'failed', 'without CORS headers the browser refuses the stream')
  })

  t.test('a cross-origin EventSource reconnects with Last-Event-ID, with no preflight', async t => {
    const demo = await startDemo(t)
    const page = await openPage(t, demo.url)
    const app = Fastify()
    const methods: string[] = []
    app.addHook('onRequest', async req => { methods.push(req.method) })
    await app.register(cors, { origin: new URL(demo.url).origin, allowedHeaders: ['content-type'] })
    await app.register(eventSources, { retry: RETRY })
    app.get('/sse', async req => {
      const sse = req.getEventSource()
      if (sse.lastEventId === undefined) {
        sse.send('first', { id: 'one' })
        return sse.close()
      }
      sse.send(`resumed after ${sse.lastEventId}`)
      await sse.keepAlive()
      return sse.close()
    })
    t.teardown(() => app.close())
    const url = await app.listen({ port: 0, host: '127.0.0.1' }) + '/sse'
    const got = await page.evaluate(url => new Promise<string[]>(resolve => {
      const seen: string[] = []
      const es = new window.EventSource(url)
      es.onmessage = e => {
        seen.push(e.data)
        if (seen.length === 2) { es.close(); resolve(seen) }
      }
    }), url)
    t.same(got, ['first', 'resumed after one'])
    t.same(methods, ['GET', 'GET'], 'Last-Event-ID is sent cross-origin without an OPTIONS preflight')
  })

  t.test('rooms: a tab joins and leaves rooms, publishes to a room, and a reconnect replays only its rooms', async t => {
    const demo = await startDemo(t)
    const page = await openPage(t, demo.url)
    const tab = await tabOf(page)
    await waitForEvents(page, 'hello', 1)
    const button = (room: string) => page.locator(`#rooms button[data-room="${room}"]`)
    for (const room of ['dev', 'lobby', 'lobby']) {
      const pressed = await button(room).getAttribute('aria-pressed')
      await button(room).click()
      await page.locator(`#rooms button[data-room="${room}"][aria-pressed="${String(pressed !== 'true')}"]`).waitFor()
    }
    t.same([...demo.app.eventSources.getByIdentifier('tab:' + tab)?.topics ?? []], ['room:dev'], 'joined dev, joined and left lobby')

    await page.locator('#room-target').selectOption('dev')
    await page.locator('#room-text').fill('hello dev 🛠')
    await page.locator('#room-text').press('Enter')
    await demo.post('/rooms/random/messages', { text: 'not for this tab', from: 'test' })
    const [live] = await waitForEvents(page, 'room', 1)
    t.same({ ...JSON.parse(live.data), at: undefined }, { room: 'dev', text: 'hello dev 🛠', from: tab, at: undefined })

    const release = demo.hold()
    await demo.post(`/tabs/${tab}/drop`, { hold: 0 })
    await until(() => demo.requestsFor(tab).length === 2, 5000, 'the browser to reconnect')
    for (const room of ['dev', 'random', 'lobby', 'dev']) await demo.post(`/rooms/${room}/messages`, { text: `missed in ${room}`, from: 'test' })
    release()
    await waitForEvents(page, 'hello', 2)
    await sleep(SILENCE)

    const rooms = await eventsOf(page, 'room')
    t.same(rooms.map(e => [JSON.parse(e.data).room, JSON.parse(e.data).text, e.replayed]), [
      ['dev', 'hello dev 🛠', false],
      ['dev', 'missed in dev', true],
      ['dev', 'missed in dev', true]
    ], 'only its room, each missed message once, before the live ones')
    t.equal(new Set(rooms.map(e => e.lastEventId)).size, 3, 'no id twice')
    t.equal(await page.locator('#room-log li.replayed').count(), 2)
    t.equal(await button('dev').getAttribute('aria-pressed'), 'true', 'the page still shows the room joined')
  })

  t.test('screenshot of the demo with two tabs, a replay and a multi-line message', async t => {
    const demo = await startDemo(t)
    const page = await openPage(t, demo.url)
    await page.setViewportSize({ width: 1200, height: 760 })
    const other = await openPage(t, demo.url)
    await demo.post('/messages', { text: 'Hello from the server side 👋', from: 'server' })
    await other.locator('#text').fill('Two lines\nfrom the other tab ✓')
    await other.locator('#text').press('Enter')
    await waitForEvents(page, 'feed', 2)
    const tab = await tabOf(page)
    const release = demo.hold()
    await demo.post(`/tabs/${tab}/drop`, { hold: 0 })
    await until(() => demo.requestsFor(tab).length === 2, 5000, 'the reconnect')
    await demo.post('/messages', { text: 'Published while this tab was away', from: await tabOf(other) })
    release()
    await waitForEvents(page, 'hello', 2)
    await page.locator('#tabs li').nth(1).waitFor()
    await page.waitForFunction(() => window.demo.events.filter(e => e.type === 'connections').length > 0)

    const dir = path.join(__dirname, '..', 'test-output')
    mkdirSync(dir, { recursive: true })
    const file = path.join(dir, 'demo.png')
    await page.screenshot({ path: file })
    const png = readFileSync(file)
    t.same([...png.subarray(1, 4)], [...Buffer.from('PNG')], 'a PNG')
    t.ok(png.length > 20_000, 'with something drawn in it')
  })
}
