/** Who a published message is for: every identified source, one identifier, or every identifier with a prefix. */
export type Target = string | { prefix: string } | undefined

export function matchesTarget (to: Target, identifier: string): boolean {
  if (to === undefined) return true
  if (typeof to === 'string') return to === identifier
  return identifier.startsWith(to.prefix)
}

export function isTarget (to: unknown): to is Target {
  if (to === undefined || typeof to === 'string') return true
  return typeof to === 'object' && to !== null && typeof (to as { prefix?: unknown }).prefix === 'string'
}
