// Time from `connect()` to the first message, on loopback, for each transport: a fresh client
// connects with an API key and attaches a channel that holds one message (`rewind: 1`), so the
// figure is the whole path an app waits for on start (connection, auth, attach, catch-up,
// delivery). Runs against the real server: one it starts (TIDINGS_BIN, or target/debug/tidings:
// build `--release` for figures worth quoting), or a running one given with --url and --key.
//
//   node --experimental-websocket scripts/first-message.mjs [runs]      (npm run bench:first)
//   ... first-message.mjs [runs] --url http://127.0.0.1:8080 --key ID:SECRET [--json]
//
// --json prints one JSON line per transport (milliseconds; `attempts` connects each) on stdout
// and the human lines on stderr, as bench/run reads them.
import { TidingsClient } from '../dist/index.js';

const args = process.argv.slice(2);
const option = (name) => {
  const i = args.indexOf(name);
  if (i < 0) return undefined;
  const v = args[i + 1];
  if (v === undefined || v.startsWith('--')) throw new Error(`${name} needs a value`);
  args.splice(i, 2);
  return v;
};
const url = option('--url');
// The test harness (imported only to start a server: it loads node:test, which prints a report).
const harness = url ? null : await import('../test/harness.mjs');
const key = option('--key') ?? harness?.KEY;
if (!key) throw new Error('--url needs --key ID:SECRET');
const json = args.includes('--json');
if (json) args.splice(args.indexOf('--json'), 1);
const runs = Number(args[0] ?? 50);
if (!Number.isInteger(runs) || runs < 1) throw new Error(`runs must be a positive integer, not ${args[0]}`);

async function publish(base, channel, messages) {
  const resp = await fetch(`${base}/v1/channels/${channel}/messages`, {
    method: 'POST',
    headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
    body: JSON.stringify(messages),
  });
  if (resp.status !== 201) throw new Error(`publish answered ${resp.status}: ${await resp.text()}`);
}

const server = url ? { base: url.replace(/\/$/, ''), stop: async () => {} } : await harness.startTidings();
const quantile = (xs, q) => [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor(q * xs.length))];
// Channels of their own on a server that may have run this before.
const stamp = `${process.pid}-${Date.now()}`;
try {
  for (const transport of ['websocket', 'sse', 'poll']) {
    const times = [];
    for (let i = 0; i < runs; i++) {
      const channel = `first:${transport}-${stamp}-${i}`;
      await publish(server.base, channel, [{ name: 'hello', data: { i } }]);
      const client = new TidingsClient({ url: server.base, key, transports: [transport], autoConnect: false });
      const sub = client.attach(channel, { rewind: 1 });
      const got = new Promise((resolve) => sub.on('message', resolve));
      const started = performance.now();
      client.connect();
      const m = await got;
      times.push(performance.now() - started);
      if (m.data.i !== i) throw new Error(`wrong first message on ${channel}: ${JSON.stringify(m.data)}`);
      client.close();
    }
    const f = (x) => `${x.toFixed(2)} ms`;
    const line = `${transport.padEnd(9)} connect() to first message: median ${f(quantile(times, 0.5))}, min ${f(Math.min(...times))}, p90 ${f(quantile(times, 0.9))}, max ${f(Math.max(...times))} (${runs} runs)`;
    if (json) {
      console.error(line);
      const ms = (x) => Math.round(x * 1000) / 1000;
      console.log(JSON.stringify({
        scenario: 'sdk-js-first-message',
        system: transport,
        attempts: runs,
        first_message_p50_ms: ms(quantile(times, 0.5)),
        first_message_min_ms: ms(Math.min(...times)),
        first_message_p90_ms: ms(quantile(times, 0.9)),
        first_message_max_ms: ms(Math.max(...times)),
        ok: true,
        problems: [],
      }));
    } else {
      console.log(line);
    }
  }
} finally {
  await server.stop();
}
