import { readFileSync } from 'node:fs'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import type { BrowserContext, Page } from 'playwright-core'
import t, { type Test } from 'tap'
import { browserAvailable, launchChromium } from './helpers/browser'
import { start, until } from './helpers/server'

interface ChatEvents {
  message: string
  feed: { text: string, n: number }
}

interface Seen { name: string, data: unknown, kind: string, id: string }
declare const window: {
  seen: Seen[]
  closedWith: string | undefined
  connection: { readyState: number, lastEventId: string, url: string, closeReason: string | undefined }
}
declare const sessionStorage: { getItem (key: string): string | null }

const RETRY = 100
const SILENCE = 6 * RETRY
const CLIENT = readFileSync(path.join(__dirname, '..', 'client', 'index.js'))

// The page imports the client as the package ships it, listens to a few events and records what it got.
const PAGE = `<!doctype html>
<meta charset="utf-8">
<script type="module">
  import { connect } from '/client/index.js'
  const params = new URLSearchParams(location.search)
  window.seen = []
  const connection = window.connection = connect(params.get('stream'))
  for (const name of ['message', 'feed', 'reset', 'end']) {
    connection.on(name, (data, event) => {
      window.seen.push({ name, data, kind: typeof data, id: event.lastEventId })
    })
  }
  connection.onClose(reason => { window.closedWith = reason })
</script>`

async function serve (t: Test) {
  let gate: Promise<void> | undefined
  const requests: Array<{ route: string, header: string | undefined, query: string | undefined }> = []
  const { app, url } = await start(t, app => {
    app.get('/', async (request, reply) => reply.type('text/html; charset=utf-8').send(PAGE))
    app.get('/client/index.js', async (request, reply) => reply.type('text/javascript; charset=utf-8').send(CLIENT))
    app.addHook('onRequest', async request => {
      const route = request.routeOptions.url
      if (route !== '/chat' && route !== '/run') return
      const header = request.headers['last-event-id']
      requests.push({ route, header: typeof header === 'string' ? header : undefined, query: (request.query as Record<string, string>).lastEventId })
      await gate
    })
    app.get('/chat', async request => {
      const sse = request.getEventSource<ChatEvents>('page')
      await sse.keepAlive()
      return sse.close()
    })
    // A finished run: its events, then the end event, then the stream ends.
    app.get('/run', async request => {
      const sse = request.getEventSource<ChatEvents & { end: { reason: string } }>()
      sse.send({ text: 'token', n: 1 }, { event: 'feed', id: '1' })
      sse.send({ reason: 'done' }, { event: 'end', id: '2' })
      return sse.close()
    })
  }, { retry: RETRY, lastEventIdQuery: 'lastEventId' })
  return {
    app,
    url,
    requests,
    /** Holds every stream request until the returned function is called. */
    hold (): () => void {
      let release = (): void => {}
      gate = new Promise(resolve => { release = resolve })
      return () => { gate = undefined; release() }
    }
  }
}

if (browserAvailable(t)) {
  let context: BrowserContext

  t.before(async () => {
    context = await launchChromium(t)
  })

  async function openPage (t: Test, url: string, stream: string): Promise<Page> {
    const page = await context.newPage()
    page.on('pageerror', err => t.fail('error in the page: ' + err.message))
    t.teardown(() => page.close())
    await page.goto(`${url}/?stream=${encodeURIComponent(stream)}`)
    await page.waitForFunction(() => window.connection !== undefined)
    return page
  }

  const seenBy = (page: Page): Promise<Seen[]> => page.evaluate(() => window.seen)

  t.test('the typed client in a page receives parsed events: objects from JSON, plain strings as sent', async t => {
    const { app, url } = await serve(t)
    const page = await openPage(t, url, '/chat')
    await until(() => app.eventSources.activeConnections === 1, 5000, 'the page to connect')
    await app.eventSources.publish<ChatEvents>({ text: 'héllo ✓', n: 1 }, { event: 'feed' })
    app.eventSources.broadcast<ChatEvents>('plain text, not JSON')
    await page.waitForFunction(() => window.seen.length === 2)
    const seen = await seenBy(page)
    t.same(seen.map(e => [e.name, e.data, e.kind]), [
      ['feed', { text: 'héllo ✓', n: 1 }, 'object'],
      ['message', 'plain text, not JSON', 'string']
    ])
    t.match(seen[0].id, /^\d+-\d+$/)
    t.equal(await page.evaluate(() => window.connection.readyState), 1)
  })

  t.test('a reloaded page resumes from the id kept in sessionStorage, through lastEventIdQuery', async t => {
    const demo = await serve(t)
    const { app, requests } = demo
    const page = await openPage(t, demo.url, '/chat')
    await until(() => app.eventSources.activeConnections === 1, 5000, 'the page to connect')
    await app.eventSources.publish<ChatEvents>({ text: 'seen before the reload', n: 1 }, { event: 'feed' })
    await page.waitForFunction(() => window.seen.length === 1)
    const [seen] = await seenBy(page)
    t.equal(await page.evaluate(() => sessionStorage.getItem('fastify-event-sources:/chat')), seen.id, 'kept under a key from the URL')

    const release = demo.hold()
    await page.reload({ waitUntil: 'domcontentloaded' })
    await until(() => requests.length === 2, 5000, 'the reloaded page to connect')
    await app.eventSources.publish<ChatEvents>({ text: 'missed during the reload', n: 2 }, { event: 'feed' })
    release()
    await page.waitForFunction(() => window.seen?.length === 1)
    t.same(requests[1], { route: '/chat', header: undefined, query: seen.id }, 'no header on a new EventSource: the query carries the id')
    t.same(app.eventSources.getByIdentifier('page')?.replay, { replayed: 1, gap: false })

    await app.eventSources.publish<ChatEvents>({ text: 'after the reload', n: 3 }, { event: 'feed' })
    await page.waitForFunction(() => window.seen.length === 2)
    t.same((await seenBy(page)).map(e => e.data), [
      { text: 'missed during the reload', n: 2 },
      { text: 'after the reload', n: 3 }
    ], 'what was missed, then live; nothing seen before the reload comes again')
  })

  t.test('the client stops on a run\'s end: closed for good, no reconnect', async t => {
    const { url, requests } = await serve(t)
    const page = await openPage(t, url, '/run')
    await page.waitForFunction(() => window.closedWith !== undefined)
    t.equal(await page.evaluate(() => window.closedWith), 'end')
    t.same((await seenBy(page)).map(e => [e.name, e.data]), [['feed', { text: 'token', n: 1 }], ['end', { reason: 'done' }]])
    t.same(await page.evaluate(() => [window.connection.readyState, window.connection.closeReason, window.connection.lastEventId]), [2, 'end', '2'])
    await sleep(SILENCE)
    t.equal(requests.length, 1, 'the browser did not reconnect after the server closed')
  })
}
