/**
 * A position totally orders the messages that went through a history store: `<int>-<int>`, compared as numbers,
 * first part then second. The memory history's are `<epoch ms>-<seq>`; Redis's are the stream ids.
 */
export interface Position {
  readonly major: number
  readonly minor: number
}

const POSITION = /^(\d{1,16})-(\d{1,16})$/

/** The position a string names, or undefined when it is not `<int>-<int>` (an id of the user's own, say). */
export function parsePosition (text: string | undefined): Position | undefined {
  if (text === undefined) return undefined
  const match = POSITION.exec(text)
  if (match === null) return undefined
  const major = Number(match[1])
  const minor = Number(match[2])
  if (!Number.isSafeInteger(major) || !Number.isSafeInteger(minor)) return undefined
  return { major, minor }
}

/** Whether `a` comes strictly after `b`. */
export function follows (a: Position, b: Position): boolean {
  return a.major > b.major || (a.major === b.major && a.minor > b.minor)
}

/** The later of two positions, either of which may be absent. */
export function later (a: Position | undefined, b: Position | undefined): Position | undefined {
  if (a === undefined) return b
  if (b === undefined) return a
  return follows(b, a) ? b : a
}

/** Stream ids are `<ms>-<seq>`: compares them as numbers, not as text. */
export function isAfter (id: string, than: string): boolean {
  const [ms, seq] = id.split('-').map(Number)
  const [thanMs, thanSeq] = than.split('-').map(Number)
  return ms > thanMs || (ms === thanMs && seq > thanSeq)
}
