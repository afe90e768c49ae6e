import { existsSync, mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { chromium, type BrowserContext } from 'playwright-core'
import type { Test } from 'tap'

export const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium'

const ARGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync'
]

/**
 * Whether the browser tests can run. Without Chromium the file is skipped with one line, unless
 * REQUIRE_BROWSER=1 (CI installs Chromium), where a missing browser is a failure.
 */
export function browserAvailable (t: Test): boolean {
  if (existsSync(CHROMIUM)) return true
  if (process.env.REQUIRE_BROWSER === '1') {
    t.fail(`REQUIRE_BROWSER=1 but there is no Chromium at ${CHROMIUM}`)
    return false
  }
  t.plan(0, `no Chromium at ${CHROMIUM}: real-browser tests skipped (apt-get install chromium, or REQUIRE_BROWSER=1 to fail)`)
  return false
}

/** Headless Chromium with a fresh profile, closed and removed when `t` ends. */
export async function launchChromium (t: Test, extraArgs: string[] = []): Promise<BrowserContext> {
  const profile = mkdtempSync(path.join(tmpdir(), 'fastify-event-sources-chromium-'))
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: [...ARGS, ...extraArgs],
    timeout: 30_000
  })
  context.setDefaultTimeout(10_000)
  t.teardown(async () => {
    await context.close()
    rmSync(profile, { recursive: true, force: true })
  })
  return context
}
