import type { Test } from 'tap'

/**
 * SIGSTOPs the processes, as a host that stops being scheduled; returns the thaw (SIGCONT), which also runs when the
 * test ends, and only once.
 */
export function freeze (t: Test, pids: number[]): () => void {
  for (const pid of pids) process.kill(pid, 'SIGSTOP')
  let thawed = false
  const thaw = (): void => {
    if (thawed) return
    thawed = true
    for (const pid of pids) process.kill(pid, 'SIGCONT')
  }
  t.teardown(thaw)
  return thaw
}
