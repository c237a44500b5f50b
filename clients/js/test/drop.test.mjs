// The drop test: a proxy cuts every connection at random while messages are published; each
// client must end with every message exactly once, in order, on every transport.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { TidingsClient } from '../dist/index.js';
import { KEY, publish, sleep, startProxy, startTidings, waitFor, track } from './harness.mjs';

let server;
before(async () => {
  server = await startTidings();
});
after(async () => {
  await server?.stop();
});

/** Publish `total` messages per channel in small batches while cutting the proxy `cuts`+ times. */
async function dropRun(transport, { total, cuts, channels }) {
  const proxy = track(await startProxy(server.addr));
  const client = track(
    new TidingsClient({
      url: proxy.base,
      key: KEY,
      transports: [transport],
      backoff: { initialMs: 20, maxMs: 200 },
    }),
  );
  const got = Object.fromEntries(channels.map((c) => [c, []]));
  const serials = Object.fromEntries(channels.map((c) => [c, []]));
  let connects = 0;
  client.on('state', (s) => s.state === 'connected' && connects++);
  client.on('continuity_lost', (e) => assert.fail(`continuity lost: ${JSON.stringify(e)}`));
  const subs = channels.map((ch) => {
    const sub = client.attach(ch);
    sub.on('message', (m) => {
      got[ch].push(m.data.i);
      serials[ch].push(m.serial);
    });
    return sub;
  });
  await waitFor(() => client.state === 'connected' && subs.every((s) => s.position), 5000, 'connected and attached');
  await sleep(100);

  let publishing = true;
  const publisher = (async () => {
    for (let i = 0; i < total; i += 5) {
      for (const ch of channels) {
        await publish(server.base, ch, [0, 1, 2, 3, 4].map((k) => ({ data: { i: i + k } })));
      }
      await sleep(Math.random() * 15);
    }
    publishing = false;
  })();
  const cutter = (async () => {
    while (publishing || proxy.cuts < cuts) {
      await sleep(40 + Math.random() * 120);
      proxy.cut();
    }
  })();
  await Promise.all([publisher, cutter]);
  const want = Array.from({ length: total }, (_, i) => i);
  await waitFor(() => channels.every((c) => got[c].length >= total), 20_000, `${total} messages per channel (got ${channels.map((c) => got[c].length)})`);
  await sleep(200); // anything extra (a duplicate) would arrive now
  await client.close();
  await proxy.close();
  for (const ch of channels) {
    assert.deepEqual(got[ch], want, `${ch}: every message exactly once, in order`);
    for (let i = 1; i < serials[ch].length; i++) assert.ok(serials[ch][i] > serials[ch][i - 1], 'serials increase');
  }
  assert.ok(proxy.cuts >= cuts, `at least ${cuts} cuts of open connections (${proxy.cuts})`);
  assert.ok(connects >= cuts / 2, `reconnected after the cuts (${connects} connections for ${proxy.cuts} cuts)`);
  return { cuts: proxy.cuts, connects };
}

test('WebSocket: every message exactly once, in order, across 25+ random cuts (two channels)', async () => {
  const r = await dropRun('websocket', { total: 600, cuts: 25, channels: ['drop:ws:a', 'drop:ws:b'] });
  console.log(`websocket: ${r.cuts} cuts, ${r.connects} connections`);
});

test('SSE: every message exactly once, in order, across 20+ random cuts', async () => {
  const r = await dropRun('sse', { total: 400, cuts: 20, channels: ['drop:sse:a', 'drop:sse:b'] });
  console.log(`sse: ${r.cuts} cuts, ${r.connects} connections`);
});

test('long-polling: every message exactly once, in order, across 20+ random cuts', async () => {
  const r = await dropRun('poll', { total: 400, cuts: 20, channels: ['drop:poll:a', 'drop:poll:b'] });
  console.log(`poll: ${r.cuts} cuts, ${r.connects} connections`);
});

test('publishes over a WebSocket that is cut land exactly once (generated ids, resent on reconnect)', async () => {
  const proxy = track(await startProxy(server.addr));
  const client = track(new TidingsClient({ url: proxy.base, key: KEY, transports: ['websocket'], backoff: { initialMs: 20, maxMs: 200 } }));
  client.connect();
  await waitFor(() => client.state === 'connected', 5000, 'connected');
  let cutting = true;
  const cutter = (async () => {
    while (cutting) {
      await sleep(30 + Math.random() * 80);
      proxy.cut();
    }
  })();
  const results = [];
  for (let i = 0; i < 300; i += 10) {
    results.push(...(await Promise.all(Array.from({ length: 10 }, (_, k) => client.publish('drop:pub', { data: { i: i + k } })))));
  }
  cutting = false;
  await cutter;
  await client.close();
  await proxy.close();
  assert.ok(proxy.cuts >= 10, `cut at least 10 times (${proxy.cuts})`);
  // History holds each message once; the acks name distinct serials.
  const items = [];
  for (let after = 0; ; ) {
    const r = await fetch(`${server.base}/v1/channels/drop:pub/messages?after=${after}&limit=1000`, { headers: { authorization: `Bearer ${KEY}` } });
    const page = await r.json();
    items.push(...page.items);
    if (page.next === null) break;
    after = page.next;
  }
  assert.deepEqual(items.map((m) => m.data.i).sort((a, b) => a - b), Array.from({ length: 300 }, (_, i) => i), 'each publish landed once');
  assert.equal(new Set(results.map((r) => r.serial)).size, 300, 'acks name 300 distinct serials');
});
