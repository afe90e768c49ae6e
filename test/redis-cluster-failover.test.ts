import tap, { test, type Test } from 'tap'
import { randomBytes } from 'node:crypto'
import { appendFileSync } from 'node:fs'
import { connect, createServer, type Socket } from 'node:net'
import type { FastifyInstance } from 'fastify'
import { Cluster } from 'ioredis'
import redisAdapter from '../lib/adapters/redis'
import { closeCluster } from '../lib/adapters/coordination'
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

/**
 * `count` topics, each on its own master and none on the sequencer's: the first (doomed) on a master with a replica
 * when it is the victim, and the sequencer on a master with a replica when it is.
 */
async function layout (cluster: RedisCluster, victim: 'topic' | 'sequencer', replicaless: Set<number>, count = 2): Promise<{ prefix: string, doomed: string, other: string }> {
  for (let n = 0; n < 100; n++) {
    const prefix = `fes-failover:${randomBytes(3).toString('hex')}:`
    const sequencer = await cluster.masterOf(`{${prefix}}`)
    if (victim === 'sequencer' && replicaless.has(sequencer)) continue
    const taken = new Set([sequencer])
    const topics: string[] = []
    // Three masters: 30 keys miss one with a chance of (2/3)^30.
    for (let i = 0; topics.length < count && i < 30; i++) {
      const master = await cluster.masterOf(`${prefix}{t:room:${i}}`)
      if (taken.has(master) || (victim === 'topic' && topics.length === 0 && replicaless.has(master))) continue
      taken.add(master)
      topics.push(`room:${i}`)
    }
    if (topics.length === count) return { prefix, doomed: topics[0], other: topics[1] }
  }
  throw new Error(`no prefix with ${count} topics on masters of their own`)
}

interface StallingProxy {
  port: number
  /** Holds the node's replies back (on), or sends what was held and goes on (off). */
  stall: (on: boolean) => void
  /** Drops what the client sends (on), as a link that loses requests until it is cut. */
  drop: (on: boolean) => void
  /** Closes every link: the client sees its connection to the node end. */
  cut: () => void
}

/**
 * A TCP proxy to one node whose replies can be held back, as on a congested link; an ioredis `natMap` puts it in the
 * node's place for one client.
 */
async function stallingProxy (t: Test, port: number): Promise<StallingProxy> {
  const links = new Set<{ client: Socket, held: Buffer[] | undefined }>()
  let stalled = false
  let dropping = false
  const server = createServer(client => {
    const upstream = connect(port, '127.0.0.1')
    const link = { client, held: stalled ? [] as Buffer[] : undefined }
    links.add(link)
    client.on('data', chunk => { if (!dropping) upstream.write(chunk) })
    upstream.on('data', chunk => { if (link.held !== undefined) link.held.push(chunk); else client.write(chunk) })
    const end = (): void => {
      links.delete(link)
      client.destroy()
      upstream.destroy()
    }
    for (const socket of [client, upstream]) socket.on('error', end).on('close', end)
  })
  await new Promise<void>(resolve => server.listen(0, '127.0.0.1', resolve))
  t.teardown(() => {
    for (const { client } of links) client.destroy()
    server.close()
  })
  return {
    port: (server.address() as { port: number }).port,
    stall (on) {
      stalled = on
      for (const link of links) {
        if (on) link.held ??= []
        else if (link.held !== undefined) {
          for (const chunk of link.held) link.client.write(chunk)
          link.held = undefined
        }
      }
    },
    drop (on) {
      dropping = on
    },
    cut () {
      for (const { client } of links) client.destroy()
    }
  }
}

/**
 * Two instances: `proxied` reaches the master on port `node` only through a stalling proxy (its client's slot map names
 * the node by its own address, which `natMap` turns into the proxy's), `direct` reaches every node itself.
 */
async function behindProxy (t: Test, cluster: RedisCluster, prefix: string, node: number): Promise<{ proxy: StallingProxy, proxied: Started, direct: Started }> {
  const proxy = await stallingProxy(t, node)
  const client = new Cluster(cluster.startupNodes, { natMap: { [`127.0.0.1:${node}`]: { host: '127.0.0.1', port: proxy.port } }, slotsRefreshInterval: 1000 })
  t.teardown(async () => closeCluster(client, 2000))
  const proxied = await start(t, routes, { adapter: redisAdapter({ client, channelPrefix: prefix, publishTimeout: 1000 }) })
  const direct = await start(t, routes, { adapter: redisAdapter({ nodes: cluster.startupNodes, channelPrefix: prefix, publishTimeout: 1000 }) })
  return { proxy, proxied, direct }
}

type Started = Awaited<ReturnType<typeof start>>

/** Tries `publish(attempt)` up to 50 times, 100 ms apart, while a shard comes back: the attempt that resolved, if one did. */
async function publishedWithin (publish: (attempt: number) => Promise<void>): Promise<number | undefined> {
  for (let attempt = 1; attempt <= 50; attempt++) {
    try {
      await publish(attempt)
      return attempt
    } catch {
      await sleep(100)
    }
  }
  return undefined
}

/**
 * Resumes alice's stream at `url` (the other instance) from the first resolved message: every resolved one after it,
 * once, in order, with no reset. The live client on `app` closes first: left open, it would be replaced by the resume
 * (newest wins), reconnect at once, and replace the resume in turn. Returns what the resume received.
 */
async function resumeElsewhere (t: Test, live: Client, app: FastifyInstance, url: string, resolved: string[], published: Set<string>): Promise<() => string[]> {
  const first = live.events.find(e => e.type === 'message' && e.data === resolved[0])
  t.ok(first !== undefined, 'the live stream got the first resolved message')
  live.close()
  await until(() => app.eventSources.getByIdentifier('alice') === undefined, 5000, 'the live stream to close')
  const resumed = await readEvents(url, { 'last-event-id': first?.id ?? '' })
  t.teardown(resumed.close)
  const replayed = (): string[] => resumed.events.map(e => e.data)
  await everyOnceInOrder(t, replayed, resolved.slice(1), published, 'the replay')
  t.same(resumed.events.filter(e => e.event === 'reset'), [], 'no gap in the history')
  return replayed
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
      await Promise.all(cluster.alive().map(async node => ask(node.port, 'CONFIG', 'SET', 'cluster-require-full-coverage', coverage)))
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

      const replayed = await resumeElsewhere(t, live, a.app, b.url + query, resolved, published)
      const lost = rejected.filter(text => !replayed().includes(text))
      t.comment(`${rejected.length - lost.length} of the ${rejected.length} rejected publishes were applied anyway (a timeout after the write)`)
    })
  }

  // A master that stops answering without closing its connections (a partition, a frozen host) sends no `end`: its
  // replica takes over, and the instances must notice from the slot map that their subscriptions there are dead.
  test('a topic\'s master frozen (connections open, no answer): its replica takes over, and the open stream and a resume get every resolved message once, in order', async t => {
    const { prefix, doomed } = await layout(cluster, 'topic', replicaless, 1)
    await Promise.all(cluster.alive().map(async node => ask(node.port, 'CONFIG', 'SET', 'cluster-require-full-coverage', 'no')))
    const options = { nodes: cluster.startupNodes, channelPrefix: prefix, publishTimeout: 1000 }
    const a = await start(t, routes, { adapter: redisAdapter(options), retry: 20 })
    const b = await start(t, routes, { adapter: redisAdapter(options), retry: 20 })
    const query = `/sse?id=alice&topics=${doomed}`
    const live = new Client(t, a.url + query, undefined, ['reset'])
    await until(() => live.opens === 1 && a.app.eventSources.subscribers(doomed).length === 1, 5000, 'the live stream')
    await sleep(50)

    const resolved: string[] = []
    const rejected: string[] = []
    let n = 0
    const publish = async (): Promise<boolean> => {
      const text = String(++n)
      try {
        await b.app.eventSources.publish(text, { to: { topic: doomed } })
        resolved.push(text)
        return true
      } catch (err) {
        t.equal((err as { code?: string }).code, 'FST_ERR_SSE_PUBLISH_FAILED', `publish ${text} rejects with the publish error`)
        rejected.push(text)
        await sleep(20)
        return false
      }
    }
    // A second topic of the same master, first followed while the master is frozen: its subscribe gets no answer.
    const victim = await cluster.masterOf(`${prefix}{t:${doomed}}`)
    let second = ''
    for (let i = 0; second === '' && i < 200; i++) if (await cluster.masterOf(`${prefix}{t:later:${i}}`) === victim) second = `later:${i}`
    for (let i = 0; i < 20; i++) await publish()
    const freezing = cluster.freezeMaster(`${prefix}{t:${doomed}}`)
    await sleep(100)
    const newcomer = new Client(t, `${a.url}/sse?id=erin&topics=${second}`, undefined, ['reset'])
    await until(() => newcomer.opens === 1 && a.app.eventSources.subscribers(second).length === 1, 5000, 'the stream opened during the freeze')
    const frozen = await freezing
    replicaless.add(frozen.promoted)
    const deadline = Date.now() + 15_000
    while (!(await publish()) && Date.now() < deadline);
    for (let i = 0; i < 30; i++) await publish()
    t.comment(`${resolved.length} publishes resolved, ${rejected.length} rejected`)
    t.ok(resolved.length >= 50, 'publishing to the topic works again on its promoted replica')
    const toSecond: string[] = []
    for (let i = 1; i <= 10; i++) {
      await b.app.eventSources.publish(`second ${i}`, { to: { topic: second } })
      toSecond.push(`second ${i}`)
    }
    const secondReceived = (): string[] => newcomer.events.filter(e => e.type === 'message').map(e => e.data)
    await everyOnceInOrder(t, secondReceived, toSecond, new Set(toSecond), 'the stream opened during the freeze')

    const received = (): string[] => live.events.filter(e => e.type === 'message').map(e => e.data)
    const published = new Set([...resolved, ...rejected])
    await everyOnceInOrder(t, received, resolved, published, 'the live stream')
    t.equal(live.opens, 1, 'the live stream stayed open')

    await resumeElsewhere(t, live, a.app, b.url + query, resolved, published)
  })

  // A new stream's first follower of a topic subscribes and reads the topic's stream while deliveries wait, for 5 s at
  // most. A message its read finds only later, behind what was delivered meanwhile, still reaches it, with a reset.
  test('a shard\'s replies held back longer than a new subscription waits: what it held reaches the new stream late, with a reset, not never', async t => {
    const { prefix, doomed: slow, other: busy } = await layout(cluster, 'topic', new Set())
    const { proxy, proxied: a, direct: b } = await behindProxy(t, cluster, prefix, await cluster.masterOf(`${prefix}{t:${slow}}`))
    const moving = new Client(t, `${a.url}/sse?id=carol&topics=${busy}`, undefined, ['reset'])
    await until(() => moving.opens === 1 && a.app.eventSources.subscribers(busy).length === 1, 5000, 'the stream on the other topic')

    proxy.stall(true)
    const late = new Client(t, `${a.url}/sse?id=dave&topics=${slow}`, undefined, ['reset'])
    await until(() => late.opens === 1 && a.app.eventSources.subscribers(slow).length === 1, 5000, 'the stream on the held-back shard\'s topic')
    await b.app.eventSources.publish('held', { to: { topic: slow } })
    for (let n = 1; n <= 5; n++) await b.app.eventSources.publish(`moved on ${n}`, { to: { topic: busy } })
    // After 5 s the other topic's messages go out, past the one still held back.
    await until(() => moving.data.includes('moved on 5'), 15_000, 'the other topic\'s messages')
    proxy.stall(false)

    await until(() => late.data.includes('held'), 10_000, 'the held-back message').catch(() => {})
    t.same(late.events.filter(e => e.type === 'message').map(e => e.data), ['held'], 'the new stream got the message once')
    t.ok(late.events.some(e => e.type === 'reset'), 'and a reset: it came after later messages')
    t.same(moving.events.filter(e => e.type === 'message').map(e => e.data), ['moved on 1', 'moved on 2', 'moved on 3', 'moved on 4', 'moved on 5'], 'the other stream got its messages in order')
  })

  // A message to one topic takes its id (and its key) on the sequencer's slot, then is written on the topic's: a retry
  // that finds the key while that write is still on its way must not resolve before the message is stored.
  test('a publish retried with its key while the first attempt\'s write to the topic\'s shard is still on its way rejects, and the message is stored once', async t => {
    const { prefix, doomed: topic } = await layout(cluster, 'topic', new Set(), 1)
    const node = await cluster.masterOf(`${prefix}{t:${topic}}`)
    const { proxy, proxied: publisher, direct: listener } = await behindProxy(t, cluster, prefix, node)
    const stream = new Client(t, `${listener.url}/sse?id=erin&topics=${topic}`, undefined, ['reset'])
    await until(() => stream.opens === 1 && listener.app.eventSources.subscribers(topic).length === 1, 5000, 'the stream')
    const publish = async (): Promise<void> => publisher.app.eventSources.publish('order 7', { to: { topic }, key: 'order-7' })
    const stored = async (): Promise<number> => {
      const entries = await ask(node, 'XRANGE', `${prefix}{t:${topic}}`, '-', '+') as [string, string[]][]
      return entries.filter(([, fields]) => fields.join(' ').includes('order 7')).length
    }

    // The first attempt takes its id, and its write to the topic's shard is lost on the way.
    proxy.drop(true)
    await t.rejects(publish(), { code: 'FST_ERR_SSE_PUBLISH_FAILED' }, 'the first attempt times out')
    await t.rejects(publish(), { code: 'FST_ERR_SSE_PUBLISH_FAILED', message: /still being written/ }, 'a retry while it is still on its way rejects')
    t.equal(await stored(), 0, 'nothing is stored yet')
    // The link is cut: the first attempt fails for good, and gives its key back.
    proxy.drop(false)
    proxy.cut()
    const attempt = await publishedWithin(publish)
    t.comment(`a retry resolved at attempt ${attempt ?? 'none'} after the cut`)
    t.ok(attempt !== undefined, 'a retry after the first attempt failed resolves')
    t.equal(await stored(), 1, 'and its message is stored once')
    await publish()
    t.equal(await stored(), 1, 'a retry after that resolves without storing it again')
    await until(() => stream.data.includes('order 7'), 5000, 'the message').catch(() => {})
    await sleep(200)
    t.same(stream.data, ['order 7'], 'the stream got it once')
  })

  // A master that stops answering with nobody to take over keeps its slots, and its connections stay open and silent.
  // An instance waits for each subscribed shard to answer a PING before it delivers past the watermark: it stops
  // waiting for this one after 5 s, and waits for it again once it answers.
  test('a shard frozen with no replica to take over: the other shards\' messages still go out, and the frozen one\'s once it answers again', async t => {
    const { prefix, doomed: stuck, other: busy } = await layout(cluster, 'topic', new Set())
    await Promise.all(cluster.alive().map(async node => ask(node.port, 'CONFIG', 'SET', 'cluster-require-full-coverage', 'no')))
    const options = { nodes: cluster.startupNodes, channelPrefix: prefix, publishTimeout: 1000 }
    const a = await start(t, routes, { adapter: redisAdapter(options) })
    const b = await start(t, routes, { adapter: redisAdapter(options) })
    const waiting = new Client(t, `${a.url}/sse?id=dave&topics=${stuck}`, undefined, ['reset'])
    const moving = new Client(t, `${a.url}/sse?id=carol&topics=${busy}`, undefined, ['reset'])
    const sources = a.app.eventSources
    await until(() => waiting.opens === 1 && moving.opens === 1 && sources.subscribers(stuck).length === 1 && sources.subscribers(busy).length === 1, 5000, 'the streams')
    await b.app.eventSources.publish('before', { to: { topic: stuck } })
    await until(() => waiting.data.includes('before'), 5000, 'the message before the freeze')

    const shard = await cluster.freezeShard(`${prefix}{t:${stuck}}`)
    let thawed = false
    t.teardown(async () => { if (!thawed) await shard.thaw() })
    const frozenAt = Date.now()
    const sent: string[] = []
    for (let n = 1; n <= 5; n++) {
      await b.app.eventSources.publish(`moving ${n}`, { to: { topic: busy } })
      sent.push(`moving ${n}`)
    }
    await until(() => moving.data.length === sent.length, 15_000, 'the other shard\'s messages').catch(() => {})
    t.same(moving.data, sent, 'the stream on the other shard got its messages, in order, while the shard was frozen')
    t.comment(`delivered ${Date.now() - frozenAt} ms after the freeze (the shard's master ${shard.master}, replica ${shard.replica ?? 'none'})`)

    await shard.thaw()
    thawed = true
    const attempt = await publishedWithin(async i => b.app.eventSources.publish(`after ${i}`, { to: { topic: stuck } }))
    const resolved = attempt === undefined ? undefined : `after ${attempt}`
    t.ok(resolved !== undefined, 'publishing to the thawed shard works again')
    await until(() => waiting.data.includes(resolved as string), 10_000, 'the thawed shard\'s message').catch(() => {})
    t.same(waiting.data.filter(text => text === 'before' || text === resolved), ['before', resolved], 'the stream on the thawed shard gets its messages again')
    t.equal(new Set(waiting.data).size, waiting.data.length, 'each once')
    t.ok(waiting.opens === 1 && moving.opens === 1, 'both streams stayed open')
  })
}
