import { mkdirSync, mkdtempSync, readdirSync, rmSync, symlinkSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import type { Test } from 'tap'

export const ROOT = path.join(__dirname, '..', '..')

/**
 * A scratch project where `fastify-event-sources` resolves to this repository (its package.json, built dist/ and
 * types/) and every dev dependency resolves too, as after `npm install fastify-event-sources`. Removed at teardown.
 */
export function packageDir (t: Test): string {
  const dir = mkdtempSync(path.join(tmpdir(), 'fes-package-'))
  t.teardown(() => { rmSync(dir, { recursive: true, force: true }) })
  const modules = path.join(dir, 'node_modules')
  mkdirSync(modules)
  const installed = path.join(ROOT, 'node_modules')
  for (const name of readdirSync(installed)) symlinkSync(path.join(installed, name), path.join(modules, name))
  symlinkSync(ROOT, path.join(modules, 'fastify-event-sources'))
  return dir
}
