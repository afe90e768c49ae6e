import tap, { test, type Test } from 'tap'
import { randomBytes } from 'node:crypto'
import { until } from './helpers/server'
import { Client, Switchboard, redisClient, redisReady, stored } from './helpers/redis'
import { Instance } from './helpers/redis-instance'

interface State { active: boolean, closeReason: string | null, replay: { replayed: number, gap: boolean } | null, lastEventId: string | null }

async function cluster (t: Test, size: number): Promise<{ nodes: Instance[], prefix: string }> {
  const prefix = `fes-proc:${process.pid}:${randomBytes(4).toString('hex')}:`
  const nodes = Array.from({ length: size }, () => new Instance(prefix))
  t.teardown(async () => {
    await Promise.all(nodes.map(node => node.stop()))
    await redisClient(t).del(prefix + 'stream')
  })
  await Promise.all(nodes.map(node => node.ready()))
  return { nodes, prefix }
}

/** Asks an instance for a source's state until `ok` holds. */
async function stateWhen (node: Instance, id: string, ok: (state: State) => boolean, what: string): Promise<State> {
  const deadline = Date.now() + 5000
  for (;;) {
    const state = await node.call('state', { id }) as State | null
    if (state !== null && ok(state)) return state
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise(resolve => setTimeout(resolve, 10))
  }
}

function opened (node: Instance, id: string, lastEventId?: string): Promise<State> {
  return stateWhen(node, id, s => s.active && (lastEventId === undefined || s.lastEventId === lastEventId), `${id} to open`)
}

if (redisReady(tap)) {
  test('separate processes: publish to all, to one identifier and to a prefix, each client once and in the stream order', async t => {
    const { nodes: [a, b], prefix } = await cluster(t, 2)
    const p1 = new Client(t, a.url + '/events/p:1')
    const p2 = new Client(t, b.url + '/events/p:2')
    const q1 = new Client(t, b.url + '/events/q:1')
    await Promise.all([opened(a, 'p:1'), opened(b, 'p:2'), opened(b, 'q:1')])

    await a.publish('to all')
    await b.publish('to p:1', 'p:1')
    await a.publish('to p:*', { prefix: 'p:' })
    await Promise.all(Array.from({ length: 10 }, (_, n) => [a.publish(`a${n}`), b.publish(`b${n}`)]).flat())
    await b.publish('end')
    await until(() => [p1, p2, q1].every(c => c.data.includes('end')), 5000, 'the end marker')

    const order = await stored(redisClient(t), prefix)
    const concurrent = order.map(([, data]) => data).filter(d => /^[ab]\d$/.test(d))
    t.equal(concurrent.length, 20)
    t.same(p1.data, ['to all', 'to p:1', 'to p:*', ...concurrent, 'end'])
    t.same(p2.data, ['to all', 'to p:*', ...concurrent, 'end'])
    t.same(q1.data, ['to all', ...concurrent, 'end'])
    t.same(p1.events.map(e => e.id), order.map(([id]) => id), 'ids are the stream ids')
  })

  test('separate processes: a client that drops reconnects to a third instance and resumes without gap or duplicate', async t => {
    const { nodes: [a, b, c] } = await cluster(t, 3)
    const board = new Switchboard(t, a.port)
    const client = new Client(t, a.url + '/events/roamer', { node: { dispatcher: board.agent } })
    await opened(a, 'roamer')
    for (const n of [1, 2]) await b.publish(`m${n}`)
    await until(() => client.data.length === 2)

    board.hold()
    board.port = c.port
    board.drop()
    await until(() => board.waiting === 1, 3000, 'the reconnection')
    for (const n of [3, 4, 5]) await a.publish(`m${n}`)
    board.release()
    await opened(c, 'roamer', client.events[1].id)
    await b.publish('m6')
    await until(() => client.data.includes('m6'), 5000, 'the live message')
    t.same(client.data, ['m1', 'm2', 'm3', 'm4', 'm5', 'm6'])
    // Read after the live message arrived: the replay is written before anything live.
    const state = await stateWhen(c, 'roamer', s => s.active, 'roamer')
    t.same(state.replay, { replayed: 3, gap: false })
  })

  test('separate processes: the newest source with an identifier wins', async t => {
    const { nodes: [a, b] } = await cluster(t, 2)
    const controller = new AbortController()
    t.teardown(() => controller.abort())
    const older = await fetch(a.url + '/events/twin', { signal: controller.signal })
    t.equal(older.status, 200)
    await opened(a, 'twin')
    const newer = new Client(t, b.url + '/events/twin')
    await opened(b, 'twin')
    const closed = await stateWhen(a, 'twin', s => !s.active, 'the older source to close')
    t.equal(closed.closeReason, 'replaced')
    await a.publish('only the newer')
    await until(() => newer.data.length === 1)
    t.same(newer.data, ['only the newer'])
  })
}
