import tap, { test } from 'tap'
import { randomBytes } from 'node:crypto'
import { appendFileSync } from 'node:fs'
import type { FastifyInstance } from 'fastify'
import redisAdapter from '../lib/adapters/redis'
import { sleep } from './helpers/clients'
import { Client, everyOnceInOrder } from './helpers/redis'
import { readEvents } from './helpers/read-events'
import { start, until } from './helpers/server'
import { ask, clusterReady, startCluster, type KilledMaster, type RedisCluster } from './fixtures/redis-cluster'

function routes (app: FastifyInstance): void {
  app.get<{ Querystring: { id?: string, topics?: string } }>('/sse', async request => {
    const { id, topics } = request.query
    const sse = request.getEventSource(id, topics === undefined ? undefined : { topics: topics.split(',') })
    sse.flush()
    await sse.keepAlive()
    return sse.close()
  })
}

/** Two topics, one on the master that is killed and one on another, and the sequencer on the third. */
async function layout (cluster: RedisCluster, victim: 'topic' | 'sequencer', replicaless: Set<number>): Promise<{ prefix: string, doomed: string, other: string }> {
  let prefix = ''
  for (let n = 0; n < 1000 && prefix === ''; n++) {
    const candidate = `fes-failover:${randomBytes(3).toString('hex')}:`
    if (victim === 'topic' || !replicaless.has(await cluster.masterOf(`{${candidate}}`))) prefix = candidate
  }
  const taken = new Set([await cluster.masterOf(`{${prefix}}`)])
  const topics: string[] = []
  for (let n = 0; topics.length < 2 && n < 1000; n++) {
    const master = await cluster.masterOf(`${prefix}{t:room:${n}}`)
    if (taken.has(master) || (victim === 'topic' && topics.length === 0 && replicaless.has(master))) continue
    taken.add(master)
    topics.push(`room:${n}`)
  }
  if (topics.length < 2) throw new Error('no two topics on the two masters without the sequencer')
  return { prefix, doomed: topics[0], other: topics[1] }
}

if (clusterReady(tap)) {
  let cluster: RedisCluster
  tap.before(async () => { cluster = await startCluster() })
  tap.teardown(() => cluster?.stop())

  /** Masters promoted by an earlier test: they have no replica left to take over. */
  const replicaless = new Set<number>()

  for (const victim of ['topic', 'sequencer'] as const) {
    test(`the master of the ${victim === 'topic' ? 'topic\'s slot' : 'sequencer\'s slot'} killed during publishing: publishes reject or resolve, delivery comes back, and every resolved message is replayed once, in order`, async t => {
      const { prefix, doomed, other } = await layout(cluster, victim, replicaless)
      // With the default (yes), every master answers CLUSTERDOWN until the lost slot is served again. With the topic's
      // master killed, the cluster runs as many deployments do, so that the other shards go on serving meanwhile.
      const coverage = victim === 'topic' ? 'no' : 'yes'
      await Promise.all(cluster.nodes.filter(node => node.child.exitCode === null && node.child.signalCode === null)
        .map(async node => ask(node.port, 'CONFIG', 'SET', 'cluster-require-full-coverage', coverage)))
      const options = { nodes: cluster.startupNodes, channelPrefix: prefix, publishTimeout: 1000 }
      // Each instance's warnings are kept; FAILOVER_LOGS=<dir> also writes its debug log there, to read after a failure.
      const logs = process.env.FAILOVER_LOGS
      const warnings: Record<string, string[]> = { a: [], b: [] }
      const log = (name: string): object => ({
        logger: {
          level: logs === undefined ? 'warn' : 'debug',
          stream: {
            write (line: string) {
              if (logs !== undefined) appendFileSync(`${logs}/${name}-${victim}.log`, line)
              if ((JSON.parse(line) as { level: number }).level >= 40) warnings[name].push(line)
            }
          }
        }
      })
      const a = await start(t, routes, { adapter: redisAdapter(options), retry: 20 }, log('a'))
      const b = await start(t, routes, { adapter: redisAdapter(options), retry: 20 }, log('b'))
      const query = `/sse?id=alice&topics=${doomed},${other}`
      const live = new Client(t, a.url + query, undefined, ['reset'])
      await until(() => live.opens === 1 && a.app.eventSources.subscribers(other).length === 1, 5000, 'the live stream')
      await sleep(50)

      const resolved: string[] = []
      const rejected: string[] = []
      const targets: (string | { topic: string | string[] })[] = [{ topic: doomed }, { topic: other }, 'alice', { topic: [doomed, other] }]
      /** When each publish to the doomed topic alone started, and whether it resolved. */
      const doomedPublishes: [number, boolean][] = []
      /** Publishes to both topics that rejected. */
      const bothRejected: string[] = []
      let killed: KilledMaster | undefined
      let n = 0
      let killing: Promise<void> | undefined
      // On until a publish to the failed-over slot resolved again (or 15 s after the kill): on a loaded machine the
      // election and the client's slot map may take longer than the 300 publishes.
      const backAgain = (): boolean => killed !== undefined && doomedPublishes.some(([at, ok]) => ok && at >= (killed as KilledMaster).killedAt)
      while (killed === undefined || n < 300 || (!backAgain() && Date.now() - killed.killedAt < 15_000)) {
        n++
        const text = String(n)
        const to = targets[n % targets.length]
        const startedAt = Date.now()
        try {
          await b.app.eventSources.publish(text, { to })
          resolved.push(text)
          if (to === targets[0]) doomedPublishes.push([startedAt, true])
        } catch (err) {
          t.equal((err as { code?: string }).code, 'FST_ERR_SSE_PUBLISH_FAILED', `publish ${n} rejects with the publish error ${(err as Error).message}`)
          rejected.push(text)
          if (to === targets[3]) bothRejected.push(text)
          if (to === targets[0]) doomedPublishes.push([startedAt, false])
          await sleep(20)
        }
        if (n === 100) killing = cluster.killMaster(victim === 'topic' ? `${prefix}{t:${doomed}}` : `{${prefix}}`).then(result => { killed = result })
        if (n > 20_000) break
      }
      await killing
      const { killedAt, promoted, killed: port } = killed as unknown as KilledMaster
      t.not(promoted, port, 'a replica took over the slot')
      replicaless.add(promoted)
      const back = doomedPublishes.find(([at, ok]) => ok && at >= killedAt)
      t.ok(back !== undefined, 'publishing to the failed-over topic works again')
      const backAfter = (back?.[0] ?? Infinity) - killedAt
      t.comment(`${resolved.length} publishes resolved, ${rejected.length} rejected; the first publish to ${doomed} that resolved started ${backAfter} ms after the master died`)
      // A message to several topics is written once, on the sequencer's slot: whole or not at all, and not held up
      // by the shard of one of its topics.
      if (victim === 'topic') t.same(bothRejected, [], `no publish to both topics rejected while ${doomed}'s master was down`)
      // The time is measured and reported, not asserted: a threshold would fail on a loaded machine (1.5–3.6 s here).
      t.ok(backAfter < 15_000, 'back before the test gave up')

      // One master lost: each instance subscribes again once for what it had there, however many attempts that takes.
      for (const name of ['a', 'b']) {
        const lost = warnings[name].filter(line => line.includes('lost a Redis Cluster shard subscription')).length
        t.ok(lost <= 1, `instance ${name} lost its subscriptions on the killed master once (${lost} times)`)
      }

      const received = (): string[] => live.events.filter(e => e.type === 'message').map(e => e.data)
      const published = new Set([...resolved, ...rejected])
      await everyOnceInOrder(t, received, resolved, published, 'the live stream')
      t.equal(live.opens, 1, 'the live stream stayed open')
      t.comment(`live: ${received().length} messages, ${live.events.filter(e => e.type === 'reset').length} resets`)

      // Resuming on the other instance from the first message: every resolved one, once, in order.
      const first = live.events.find(e => e.type === 'message' && e.data === resolved[0])
      t.ok(first !== undefined)
      const resumed = await readEvents(b.url + query, { 'last-event-id': first?.id ?? '' })
      t.teardown(resumed.close)
      const replayed = (): string[] => resumed.events.map(e => e.data)
      await everyOnceInOrder(t, replayed, resolved.slice(1), published, 'the replay')
      t.same(resumed.events.filter(e => e.event === 'reset'), [], 'no gap in the history')
      const lost = rejected.filter(text => !replayed().includes(text))
      t.comment(`${rejected.length - lost.length} of the ${rejected.length} rejected publishes were applied anyway (a timeout after the write)`)
    })
  }
}
