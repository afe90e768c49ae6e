import { setFlagsFromString } from 'node:v8'
import { runInNewContext } from 'node:vm'

setFlagsFromString('--expose-gc')
const collect = runInNewContext('gc') as (options?: { type: 'major', execution: 'sync' }) => void

/** Bytes held by JavaScript and by buffers after full collections: what a leak or an unbounded buffer would grow. */
export async function settledMemory (): Promise<number> {
  for (let i = 0; i < 3; i++) {
    collect()
    await new Promise(resolve => setImmediate(resolve))
  }
  const { heapUsed, external } = process.memoryUsage()
  return heapUsed + external
}

/** Active handles and requests by type (timers included), as Node reports them. */
export function activeResources (): Record<string, number> {
  const counts: Record<string, number> = {}
  for (const type of process.getActiveResourcesInfo()) counts[type] = (counts[type] ?? 0) + 1
  return counts
}

export const MB = 1024 * 1024
