/**
 * Who a published message is for: every identified source, one identifier, every identifier with a prefix,
 * or the followers of one or more topics.
 */
export type Target = string | { prefix: string } | { topic: string | string[] } | undefined

/** Whether a message to `to` is for a source with this identifier (if any) following these topics. */
export function matchesTarget (to: Target, identifier: string | undefined, topics?: readonly string[]): boolean {
  if (to === undefined) return identifier !== undefined
  if (typeof to === 'string') return to === identifier
  if ('prefix' in to) return identifier !== undefined && identifier.startsWith(to.prefix)
  if (topics === undefined || topics.length === 0) return false
  const wanted = to.topic
  if (typeof wanted === 'string') return topics.includes(wanted)
  for (const topic of wanted) if (topics.includes(topic)) return true
  return false
}

/** The identity part of a target: a string or `{ prefix }` (topics are checked apart, see topics.ts). */
export function isTarget (to: unknown): to is string | { prefix: string } | undefined {
  if (to === undefined || typeof to === 'string') return true
  return typeof to === 'object' && to !== null && typeof (to as { prefix?: unknown }).prefix === 'string'
}

export function topicsOf (to: Target): string[] | undefined {
  if (to === undefined || typeof to === 'string' || !('topic' in to)) return undefined
  return typeof to.topic === 'string' ? [to.topic] : to.topic
}
