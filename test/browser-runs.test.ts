import type { BrowserContext, Page } from 'playwright-core'
import t, { type Test } from 'tap'
import { buildDemo, fakeAnswer } from '../examples/app'
import eventSources from '../lib/index'
import { browserAvailable, launchChromium } from './helpers/browser'

interface SeenEvent { type: string, data: string, lastEventId: string }
interface Assistant { key: string | null, text: string, status: string, reason: string | null, events: SeenEvent[], opens: number }
declare const window: { assistant: Assistant }

const RETRY = 200
const TOKENS = 200
const INTERVAL = 15

interface AnswerRequest { key: string, lastEventIdHeader: string | undefined, lastEventIdQuery: string | undefined, status?: number }

async function startDemo (t: Test) {
  const app = buildDemo({ plugin: eventSources, retry: RETRY, clockInterval: 250, dropHold: 0, answerTokens: TOKENS, tokenInterval: INTERVAL })
  const seen: AnswerRequest[] = []
  app.addHook('onRequest', async (req, reply) => {
    if (req.routeOptions.url !== '/assistant/answers/:key') return
    const header = req.headers['last-event-id']
    const entry: AnswerRequest = { key: (req.params as { key: string }).key, lastEventIdHeader: typeof header === 'string' ? header : undefined, lastEventIdQuery: (req.query as Record<string, string | undefined>).lastEventId }
    seen.push(entry)
    reply.raw.once('close', () => { entry.status = reply.raw.statusCode })
  })
  t.teardown(() => app.close())
  const url = await app.listen({ port: 0, host: '127.0.0.1' })
  return { app, url, seen }
}

const assistant = (page: Page): Promise<Assistant> => page.evaluate(() => window.assistant)

async function ask (page: Page, question: string): Promise<void> {
  await page.locator('#question').fill(question)
  await page.locator('#question').press('Enter')
  await page.waitForFunction(() => window.assistant.key !== null)
}

async function tokensAtLeast (page: Page, n: number): Promise<void> {
  await page.waitForFunction(n => window.assistant.events.filter(e => e.type === 'token').length >= n, n)
}

async function finished (page: Page): Promise<Assistant> {
  await page.waitForFunction(() => window.assistant.status === 'done', undefined, { timeout: 20_000 })
  return assistant(page)
}

/** Every token once and in order, each with its own id, then the end event. */
function checkWhole (t: Test, state: Assistant, question: string): void {
  const tokens = state.events.filter(e => e.type === 'token')
  t.equal(tokens.map(e => e.data).join(''), fakeAnswer(question, TOKENS).join(''), 'the whole answer, each token once, in order')
  t.equal(new Set(tokens.map(e => e.lastEventId)).size, TOKENS, 'no id twice')
  t.same(state.events.at(-1), { type: 'end', data: '{"reason":"done"}', lastEventId: state.events.at(-1)?.lastEventId })
}

if (browserAvailable(t)) {
  let context: BrowserContext

  t.before(async () => {
    context = await launchChromium(t)
  })

  async function openPage (t: Test, url: string): Promise<Page> {
    const page = await context.newPage()
    page.on('pageerror', err => t.fail('error in the page: ' + err.message))
    t.teardown(() => page.close())
    await page.goto(url)
    return page
  }

  t.test('assistant: a drop mid-answer resumes where it was; after the end a reconnect gets 204', async t => {
    const demo = await startDemo(t)
    const page = await openPage(t, demo.url)
    const question = 'What is a resumable run?'
    await ask(page, question)
    await tokensAtLeast(page, 30)
    await page.locator('#ask-drop').click()
    const state = await finished(page)
    checkWhole(t, state, question)
    t.ok(state.opens >= 2, 'the page reconnected after the drop')
    const resumed = demo.seen.filter(r => r.lastEventIdHeader !== undefined)
    t.ok(resumed.length >= 1, 'the reconnect carried Last-Event-ID')
    t.equal(await page.locator('#answer').textContent(), state.text, 'the page shows the whole answer')
    t.equal(await page.locator('#answer-status').textContent(), 'over (done)')
  })

  t.test('assistant: a reload mid-answer resumes from the last token the tab saw; a reload after the end is answered 204', async t => {
    const demo = await startDemo(t)
    const page = await openPage(t, demo.url)
    const question = 'Does a reload lose the answer?'
    await ask(page, question)
    await tokensAtLeast(page, 40)
    await page.reload()
    const state = await finished(page)
    // After the reload the page started from its saved text: the events it logged are only the rest.
    t.equal(state.text, fakeAnswer(question, TOKENS).join(''), 'the saved text and the rest make the whole answer, nothing twice')
    const reloaded = demo.seen.filter(r => r.lastEventIdQuery !== undefined)
    t.equal(reloaded.length, 1, 'the reload asked from its last id (?lastEventId)')
    const first = state.events.find(e => e.type === 'token')
    t.ok(first !== undefined && state.events.filter(e => e.type === 'token').length < TOKENS, 'only the rest was sent after the reload')
    t.same(JSON.parse(state.events.at(-1)?.data ?? '{}'), { reason: 'done' })

    // The saved state says the answer is over: a reload opens nothing. Asking again with the end's id gets 204.
    const key = state.key as string
    const end = state.events.at(-1)?.lastEventId as string
    const res = await page.evaluate(async ([key, end]) => (await fetch(`/assistant/answers/${key}?lastEventId=${encodeURIComponent(end)}`)).status, [key, end] as const)
    t.equal(res, 204)
  })

  t.test('assistant: Stop cancels the run on the server and the page shows it was cancelled', async t => {
    const demo = await startDemo(t)
    const page = await openPage(t, demo.url)
    const question = 'Can I stop it?'
    await ask(page, question)
    await tokensAtLeast(page, 20)
    await page.locator('#ask-stop').click()
    const state = await finished(page)
    t.equal(state.reason, 'cancelled')
    const tokens = state.events.filter(e => e.type === 'token').map(e => e.data)
    t.ok(tokens.length < TOKENS, `stopped after ${tokens.length} tokens`)
    t.equal(tokens.join(''), fakeAnswer(question, tokens.length).join(''), 'what came is the start of the answer')
    t.equal(demo.app.eventSources.runningRuns, 0, 'the producer stopped')
    t.equal(await demo.app.eventSources.runState(state.key as string), 'ended')
  })
}
