import { spawn, type ChildProcess } from 'node:child_process'
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { request as httpRequest } from 'node:http'
import { connect, createServer } from 'node:net'
import { tmpdir } from 'node:os'
import path from 'node:path'
import t, { type Test } from 'tap'
import { EventSource } from 'undici'
import { EventLog } from './helpers/clients'
import { start, until } from './helpers/server'
import type { HttpRequestEventSource } from '../types/index'

// Behind nginx with its default proxy settings (HTTP/1.0 to the upstream, buffering on unless the response says
// X-Accel-Buffering: no) and with proxy_http_version 1.1, in both framings of the stream.

const NGINX = process.env.NGINX_PATH ?? ['/usr/sbin/nginx', '/usr/local/sbin/nginx', '/usr/bin/nginx'].find(p => existsSync(p))

function nginxAvailable (t: Test): boolean {
  if (NGINX !== undefined && existsSync(NGINX)) return true
  if (process.env.REQUIRE_NGINX === '1') {
    t.fail('REQUIRE_NGINX=1 but nginx is not installed')
    return false
  }
  t.plan(0, 'no nginx: proxy tests skipped (apt-get install nginx, or REQUIRE_NGINX=1 to fail)')
  return false
}

function freePort (): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer()
    server.on('error', reject)
    server.listen(0, '127.0.0.1', () => {
      const address = server.address()
      server.close(() => resolve(typeof address === 'object' && address !== null ? address.port : 0))
    })
  })
}

function canConnect (port: number): Promise<boolean> {
  return new Promise(resolve => {
    const socket = connect(port, '127.0.0.1')
    socket.on('connect', () => { socket.destroy(); resolve(true) })
    socket.on('error', () => resolve(false))
  })
}

/** Its own nginx on a free loopback port: own config, pid file, logs and temp dirs; stopped by pid when `t` ends. */
async function startNginx (t: Test, upstream: string): Promise<string> {
  const dir = mkdtempSync(path.join(tmpdir(), 'fastify-event-sources-nginx-'))
  for (const temp of ['client_body', 'proxy', 'fastcgi', 'uwsgi', 'scgi']) mkdirSync(path.join(dir, temp))
  const port = await freePort()
  const conf = path.join(dir, 'nginx.conf')
  writeFileSync(conf, `
daemon off;
master_process off;
pid ${dir}/nginx.pid;
error_log ${dir}/error.log warn;
events { worker_connections 256; }
http {
  access_log off;
  client_body_temp_path ${dir}/client_body;
  proxy_temp_path ${dir}/proxy;
  fastcgi_temp_path ${dir}/fastcgi;
  uwsgi_temp_path ${dir}/uwsgi;
  scgi_temp_path ${dir}/scgi;
  server {
    listen 127.0.0.1:${port};
    # The defaults: HTTP/1.0 to the upstream, proxy_buffering on.
    location /default/ { proxy_pass ${upstream}/; }
    location /http11/ {
      proxy_pass ${upstream}/;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
`)
  const nginx: ChildProcess = spawn(NGINX as string, ['-p', dir, '-c', conf, '-e', path.join(dir, 'error.log')], { stdio: ['ignore', 'ignore', 'pipe'] })
  let stderr = ''
  nginx.stderr?.on('data', (chunk: Buffer) => { stderr += chunk.toString() })
  const exited = new Promise<void>(resolve => nginx.once('exit', () => resolve()))
  t.teardown(async () => {
    const pidFile = path.join(dir, 'nginx.pid')
    const pid = existsSync(pidFile) ? Number(readFileSync(pidFile, 'utf8').trim()) : nginx.pid
    if (pid !== undefined && nginx.exitCode === null && nginx.signalCode === null) {
      process.kill(pid, 'SIGTERM')
      const timer = setTimeout(() => { try { process.kill(pid, 'SIGKILL') } catch {} }, 3000)
      await exited
      clearTimeout(timer)
    }
    rmSync(dir, { recursive: true, force: true })
  })
  const deadline = Date.now() + 5000
  while (!(await canConnect(port))) {
    if (nginx.exitCode !== null || Date.now() > deadline) {
      const log = existsSync(path.join(dir, 'error.log')) ? readFileSync(path.join(dir, 'error.log'), 'utf8') : ''
      throw new Error(`nginx did not start: ${stderr} ${log}`)
    }
    await new Promise(resolve => setTimeout(resolve, 20))
  }
  return `http://127.0.0.1:${port}`
}

const MODES = [
  { name: 'close-delimited (default)', options: {} },
  { name: 'chunked: true', options: { chunked: true } }
]

if (nginxAvailable(t)) {
  for (const mode of MODES) {
    t.test(mode.name, async t => {
      const live: HttpRequestEventSource[] = []
      const opened: string[] = []
      const { url: upstream } = await start(t, app => {
        app.get('/sse', async request => {
          const header = request.headers['last-event-id']
          opened.push(typeof header === 'string' ? header : '')
          const sse = request.getEventSource()
          sse.flush()
          live.push(sse)
          await sse.keepAlive()
          live.splice(live.indexOf(sse), 1)
        })
      }, { retry: 100, ...mode.options })
      const proxy = await startNginx(t, upstream)

      for (const location of ['default', 'http11']) {
        t.test(`location /${location}/: each event arrives while the stream is open, and the end of the stream ends the response`, async t => {
          const log = new EventLog()
          const done = new Promise<{ headers: Record<string, unknown>, complete: boolean }>((resolve, reject) => {
            const req = httpRequest(`${proxy}/${location}/sse`, { headers: { accept: 'text/event-stream' }, agent: false }, res => {
              res.on('data', (chunk: Buffer) => log.feed(chunk))
              res.on('end', () => resolve({ headers: res.headers, complete: res.complete }))
              res.on('error', reject)
            })
            req.on('error', reject)
            req.end()
            t.teardown(() => { req.destroy() })
          })
          await until(() => live.length === 1, 5000, 'the stream through nginx')
          const [sse] = live
          for (let i = 1; i <= 3; i++) {
            sse.send(`event ${i}`, { id: String(i) })
            await until(() => log.events.length === i, 5000, `event ${i}, unbuffered`)
          }
          t.same(log.events.map(e => [e.id, e.data]), [['1', 'event 1'], ['2', 'event 2'], ['3', 'event 3']])
          t.same(log.retries, [100])
          sse.close()
          const { headers, complete } = await done
          t.equal(complete, true, 'nginx ends its response cleanly')
          t.equal(headers['content-type'], 'text/event-stream; charset=utf-8')
          t.equal(headers['x-accel-buffering'], undefined, 'nginx consumes X-Accel-Buffering')
        })

        t.test(`location /${location}/: undici EventSource reconnects through nginx with Last-Event-ID`, async t => {
          opened.length = 0
          const es = new EventSource(`${proxy}/${location}/sse`)
          t.teardown(() => es.close())
          const got: string[] = []
          es.onmessage = e => got.push(e.data)
          await until(() => live.length === 1, 5000, 'the stream through nginx')
          live[0].send('before', { id: 'a1' })
          await until(() => got.length === 1, 5000, 'the first event')
          live[0].close()
          await until(() => opened.length === 2 && live.length === 1, 5000, 'the reconnect')
          t.same(opened, ['', 'a1'])
          live[0].send('after')
          await until(() => got.length === 2, 5000, 'an event on the new stream')
          t.same(got, ['before', 'after'])
          es.close()
          await until(() => live.length === 0, 5000, 'the stream to end when the client leaves')
        })
      }
    })
  }
}
