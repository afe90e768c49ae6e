import diagnostics from 'node:diagnostics_channel'
import type { Test } from 'tap'
import type { DiagnosticsMessages } from '../../types/index'

export type ChannelName = keyof DiagnosticsMessages
export type Seen = { [K in ChannelName]: { channel: K, message: DiagnosticsMessages[K] } }[ChannelName]

export const CHANNELS: ChannelName[] = [
  'fastify-event-sources:open',
  'fastify-event-sources:close',
  'fastify-event-sources:publish',
  'fastify-event-sources:replay',
  'fastify-event-sources:drop'
]

/** Subscribes to every channel of the plugin for the rest of the test and records what each publishes, in order. */
export function recordChannels (t: Test): Seen[] {
  const seen: Seen[] = []
  for (const channel of CHANNELS) {
    const onMessage = (message: unknown): void => { seen.push({ channel, message } as Seen) }
    diagnostics.subscribe(channel, onMessage)
    t.teardown(() => { diagnostics.unsubscribe(channel, onMessage) })
  }
  return seen
}

/** The messages one channel published. */
export function on<K extends ChannelName> (seen: Seen[], channel: K): DiagnosticsMessages[K][] {
  return seen.filter(s => s.channel === channel).map(s => s.message as DiagnosticsMessages[K])
}
