// Time from `connect()` to the first message, on loopback, for each transport: a fresh client
// connects with an API key and attaches a channel that holds one message (`rewind: 1`), so the
// figure is the whole path an app waits for on start (connection, auth, attach, catch-up,
// delivery). Runs against the real server (TIDINGS_BIN, or target/debug/tidings: build
// `--release` for figures worth quoting).
//
//   node --experimental-websocket scripts/first-message.mjs [runs]      (npm run bench:first)
import { TidingsClient } from '../dist/index.js';
import { KEY, publish, startTidings } from '../test/harness.mjs';

const runs = Number(process.argv[2] ?? 50);
const server = await startTidings();
const quantile = (xs, q) => [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor(q * xs.length))];
try {
  for (const transport of ['websocket', 'sse', 'poll']) {
    const times = [];
    for (let i = 0; i < runs; i++) {
      const channel = `first:${transport}-${i}`;
      await publish(server.base, channel, [{ name: 'hello', data: { i } }]);
      const client = new TidingsClient({ url: server.base, key: KEY, transports: [transport], autoConnect: false });
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
    console.log(`${transport.padEnd(9)} connect() to first message: median ${f(quantile(times, 0.5))}, min ${f(Math.min(...times))}, p90 ${f(quantile(times, 0.9))}, max ${f(Math.max(...times))} (${runs} runs)`);
  }
} finally {
  await server.stop();
}
