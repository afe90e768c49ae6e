'use strict'

// Per socket, how long after the server's write the client read the event: from the files that
// `node bench/speed.js --dump=<empty dir>` leaves (<contender>-<n>-server.jsonl and -client.jsonl, a line per broadcast).
// A lag near zero for every socket means the client kept up with the server's writes; a lag that jumps and stays means
// the client stopped reading for that long (its core was taken), and then caught up at its spare rate.
//
//   node bench/timeline-lag.js <dir> <contender> <n>

const fs = require('node:fs')
const path = require('node:path')

const [dir, id, n] = process.argv.slice(2)
const lines = side => fs.readFileSync(path.join(dir, `${id}-${n}-${side}.jsonl`), 'utf8').trim().split('\n').map(l => JSON.parse(l))
const server = lines('server')
const client = lines('client')
const at = (a, p) => {
  const s = Float64Array.from(a).sort()
  return s[Math.min(s.length - 1, Math.floor(s.length * p))]
}
const f = x => x.toFixed(1)

for (let r = 0; r < Math.min(server.length, client.length); r++) {
  const arrival = new Map(client[r].ports.map((port, i) => [port, client[r].lat[i]]))
  const { times, ports } = server[r]
  const lags = times.map((t, i) => arrival.get(ports[i]) - t)
  const tenth = lags.length / 10
  const deciles = Array.from({ length: 10 }, (_, d) => f(at(lags.slice(d * tenth, (d + 1) * tenth), 0.5)))
  console.log(`broadcast ${r + 1}: median write ${f(at(times, 0.5))} ms, median arrival ${f(at(client[r].lat, 0.5))} ms; ` +
    `lag p50 ${f(at(lags, 0.5))} p90 ${f(at(lags, 0.9))} max ${f(at(lags, 1))} ms; client GC ${f(client[r].gcMs ?? 0)} ms; ` +
    `median lag by tenth of the writes: ${deciles.join(' ')}`)
}
