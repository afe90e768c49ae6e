import tap, { test } from 'tap'
import type { Redis } from 'ioredis'
import { until } from './helpers/server'
import { Client, Switchboard, redisClient, redisReady, redisUrl, stored, uniquePrefix } from './helpers/redis'
import { Instance } from './helpers/redis-instance'

type Target = string | { prefix: string } | { topic: string | string[] } | undefined

/** What one stream follows: its identifier (none for an anonymous one) and its topics. */
interface Member { id?: string, topics: string[] }
interface Metrics { received: number, delivered: number, published: number, openStreams: number }
interface State { active: boolean, replay: { replayed: number, gap: boolean } | null, lastEventId: string | null }

const WAIT = 10_000

function topicsOf (to: { topic: string | string[] }): string[] {
  return typeof to.topic === 'string' ? [to.topic] : to.topic
}

/** Whether a stream gets a message to `to`: everyone's and prefix messages reach identified streams only. */
function gets (member: Member, to: Target): boolean {
  if (to === undefined) return member.id !== undefined
  if (typeof to === 'string') return member.id === to
  if ('prefix' in to) return member.id?.startsWith(to.prefix) === true
  return topicsOf(to).some(topic => member.topics.includes(topic))
}

/**
 * Whether an instance serving `audience` receives a message to `to` with selective routing: everyone's and prefix
 * messages always, an identifier's or a topic's only while one of its streams has it.
 */
function reaches (audience: Member[], to: Target): boolean {
  if (to === undefined || (typeof to === 'object' && 'prefix' in to)) return true
  return audience.some(member => gets(member, to))
}

/** An instance's streams: three identified, one anonymous, over two topics no other instance has. */
function audienceOf (name: string): Member[] {
  return [
    { id: `${name}:1`, topics: [`${name}:red`] },
    { id: `${name}:2`, topics: [`${name}:red`, `${name}:blue`] },
    { id: `${name}:3`, topics: [] },
    { topics: [`${name}:blue`] }
  ]
}

function urlOf (instance: Instance, member: Member): string {
  const topics = member.topics.join(',')
  return member.id === undefined ? `${instance.url}/anon?topics=${topics}` : `${instance.url}/events/${member.id}?topics=${topics}`
}

/** The channel each identifier and topic of an audience travels on. */
function channelsOf (prefix: string, audience: Member[]): string[] {
  const channels = new Set<string>()
  for (const member of audience) {
    if (member.id !== undefined) channels.add(`${prefix}i:${member.id}`)
    for (const topic of member.topics) channels.add(`${prefix}t:${topic}`)
  }
  return [...channels]
}

/** How many connections are subscribed to each channel, as Redis counts them. */
async function subscribers (redis: Redis, channels: string[]): Promise<number[]> {
  const reply = await redis.pubsub('NUMSUB', ...channels) as (string | number)[]
  return channels.map((_, i) => Number(reply[2 * i + 1]))
}

async function subscribedWhen (redis: Redis, channels: string[], count: number, what: string): Promise<void> {
  const deadline = Date.now() + WAIT
  while ((await subscribers(redis, channels)).some(n => n !== count)) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise(resolve => setTimeout(resolve, 10))
  }
}

async function stateWhen (node: Instance, id: string, ok: (state: State) => boolean, what: string): Promise<State> {
  const deadline = Date.now() + WAIT
  for (;;) {
    const state = await node.call('state', { id }) as State | null
    if (state !== null && ok(state)) return state
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise(resolve => setTimeout(resolve, 10))
  }
}

function label (to: Target): string {
  return to === undefined ? 'everyone' : JSON.stringify(to)
}

if (redisReady(tap)) {
  test('separate processes, disjoint audiences: each instance receives only its audience\'s messages and everyone\'s; a client that moves takes its routes along', async t => {
    const prefix = uniquePrefix(t)
    const redis = redisClient(t)
    const nodes = ['a', 'b', 'c'].map(() => new Instance(prefix, redisUrl, { ROUTING: 'selective' }, 'routing-instance.js'))
    t.teardown(() => Promise.all(nodes.map(node => node.stop())))
    await Promise.all(nodes.map(node => node.ready()))
    const [a, b] = nodes

    // The mover is a's until it moves to b: its identifier and its topic are its own.
    const mover: Member = { id: 'a:m', topics: ['a:solo'] }
    const audiences = ['a', 'b', 'c'].map(audienceOf)
    audiences[0].push(mover)
    const clients = new Map<Member, Client>()
    for (const [n, audience] of audiences.entries()) {
      for (const member of audience) if (member !== mover) clients.set(member, new Client(t, urlOf(nodes[n], member)))
    }
    const board = new Switchboard(t, a.port)
    clients.set(mover, new Client(t, urlOf(a, mover), { node: { dispatcher: board.agent } }))

    const metrics = (): Promise<Metrics[]> => Promise.all(nodes.map(node => node.call('metrics') as Promise<Metrics>))
    const sent = new Map<string, Target>()
    const publish = async (from: number, data: string, to: Target): Promise<void> => {
      sent.set(data, to)
      await nodes[from].publish(data, to as string)
    }
    /**
     * Publishes to everyone and waits until every identified client connected now got it: each instance has then
     * received all that was published before it (one subscription carries all of an instance's channels, in order).
     */
    const fence = async (from: number, data: string): Promise<void> => {
      await publish(from, data, undefined)
      const identified = audiences.flat().filter(member => member.id !== undefined).map(member => clients.get(member) as Client)
      await until(() => identified.every(client => client.data.includes(data)), WAIT, `every client to get ${data}`)
    }

    const deadline = Date.now() + WAIT
    while ((await metrics()).some((m, n) => m.openStreams !== audiences[n].length)) {
      if (Date.now() > deadline) throw new Error('timed out waiting for every stream to open')
      await new Promise(resolve => setTimeout(resolve, 10))
    }
    // In Redis itself: one subscriber (its instance) per identifier and topic, three on the everyone channel.
    await subscribedWhen(redis, audiences.flatMap(audience => channelsOf(prefix, audience)), 1, 'each instance to subscribe to its own routes')
    t.same(await subscribers(redis, [`${prefix}messages`, `${prefix}i:nobody`, `${prefix}t:nobody`]), [3, 0, 0], 'everyone\'s channel on every instance; no one listens for an identifier or topic nobody has')
    // Delivered once the instances' route catch-ups are done: what follows arrives live.
    await fence(0, 'warm')

    const targets: Target[] = ['a', 'b', 'c'].flatMap(n => [
      `${n}:1`, `${n}:2`, `${n}:3`, { topic: `${n}:red` }, { topic: `${n}:blue` }, { topic: [`${n}:red`, `${n}:blue`] }
    ])
    targets.push({ topic: ['a:red', 'b:blue'] }, { prefix: 'b:' }, undefined, 'nobody', { topic: 'nobody' }, 'a:m', { topic: 'a:solo' })
    const before = await metrics()

    // One at a time, every instance to every audience; then all of them at once.
    for (let round = 0; round < 2; round++) {
      for (let from = 0; from < 3; from++) {
        for (const to of targets) await publish(from, `${'abc'[from]}>${label(to)}#${round}`, to)
      }
    }
    await Promise.all([0, 1, 2].map(from => {
      const messages = []
      for (let round = 2; round < 5; round++) {
        for (const to of targets) {
          const data = `${'abc'[from]}>${label(to)}#${round}`
          sent.set(data, to)
          messages.push({ data, to })
        }
      }
      return nodes[from].call('publishMany', { messages })
    }))
    await fence(2, 'fence')

    const after = await metrics()
    const log = await stored(redis, prefix)
    const phase = log.slice(log.findIndex(([, data]) => data === 'warm') + 1)
    t.equal(phase.length, 5 * 3 * targets.length + 1, 'every message stored once')
    const received = audiences.map(audience => phase.filter(([, data]) => reaches(audience, sent.get(data))).length)
    t.same(received, [166, 136, 121], 'the model: a 11, b 9, c 8 of the 25 targets, 15 times each, and the fence')
    t.same(after.map((m, n) => m.received - before[n].received), received, 'received: only each instance\'s audience and everyone\'s')
    t.same(after.map((m, n) => m.published - before[n].published), [125, 125, 126], 'published: what each instance published')
    const delivered = audiences.map(audience => audience.reduce((sum, member) => sum + phase.filter(([, data]) => gets(member, sent.get(data))).length, 0))
    t.same(after.map((m, n) => m.delivered - before[n].delivered), delivered, 'delivered: one event per stream a message is for')

    // The mover leaves a: once a has dropped its routes, what is published to them does not reach a.
    const moverClient = clients.get(mover) as Client
    const lastSeen = moverClient.events[moverClient.events.length - 1].id
    /** From each instance: one message to the mover and one to a's own topic. */
    const fromEach = async (when: string): Promise<void> => {
      for (let from = 0; from < 3; from++) {
        await publish(from, `${'abc'[from]}>a:m ${when}`, 'a:m')
        await publish(from, `${'abc'[from]}>a:solo ${when}`, { topic: 'a:solo' })
      }
    }
    board.hold()
    board.port = b.port
    board.drop()
    await stateWhen(a, 'a:m', state => !state.active, 'the mover to close on a')
    audiences[0].pop()
    await subscribedWhen(redis, channelsOf(prefix, [mover]), 0, 'a to drop the mover\'s routes')
    await until(() => board.waiting === 1, WAIT, 'the mover to reconnect')
    const away = await metrics()
    await fromEach('away')
    // Everyone's messages come after the mover's on each instance's subscription: a would have counted them first.
    await fence(1, 'fence away')
    t.same((await metrics()).map((m, n) => m.received - away[n].received), [1, 1, 1], 'while the mover is away, no instance receives its messages')

    // It comes back on b with its Last-Event-ID: the replay brings what it missed, then b carries its routes live.
    board.release()
    await stateWhen(b, 'a:m', state => state.active && state.lastEventId === lastSeen, 'the mover to open on b')
    audiences[1].push(mover)
    await subscribedWhen(redis, channelsOf(prefix, [mover]), 1, 'b to subscribe to the mover\'s routes')
    await publish(0, 'sync', 'a:m')
    await until(() => moverClient.data.includes('sync'), WAIT, 'the mover to get a live message on b')
    // Read after a live message arrived: the replay is written before anything live.
    const opened = await stateWhen(b, 'a:m', state => state.active, 'the mover on b')
    const back = await metrics()
    await fromEach('back')
    await fence(0, 'fence back')
    t.same((await metrics()).map((m, n) => m.received - back[n].received), [1, 7, 1], 'b receives the mover\'s messages now, a does not')
    t.same(opened.replay, { replayed: 7, gap: false }, 'the replay on b: the six to the mover and the fence while it was away')

    // Every client, the mover included: exactly its messages, once, in the stream's order, with the stream's ids.
    const all = await stored(redis, prefix)
    t.equal(all.length, sent.size, 'every message stored once')
    for (const [member, client] of clients) {
      const mine = all.filter(([, data]) => gets(member, sent.get(data)))
      t.same(client.data, mine.map(([, data]) => data), `${member.id ?? 'anonymous ' + member.topics.join(',')} gets its messages once, in order`)
      t.same(client.events.map(e => e.id), mine.map(([id]) => id))
    }
    t.equal(moverClient.opens, 2, 'the mover opened twice, on a then on b')
  })
}
