// Transport fallback: a proxy refuses WebSocket upgrades (and then SSE too); the client must
// land on SSE (then long-polling), keep every message once and in order across cuts, and
// publish over REST.

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

async function fallbackRun(block, expected, channel) {
  const proxy = track(await startProxy(server.addr));
  proxy.block(block);
  const client = track(new TidingsClient({ url: proxy.base, key: KEY, backoff: { initialMs: 20, maxMs: 200 }, pollWaitMs: 2000 }));
  const tried = [];
  client.on('state', (s) => s.state === 'connecting' && s.transport && tried.push(s.transport));
  const got = [];
  const sub = client.attach(channel);
  sub.on('message', (m) => got.push(m.data.i));
  await waitFor(() => sub.position, 10_000, 'attached');
  assert.equal(client.transport, expected);
  assert.equal(tried[0], 'websocket', 'WebSocket was tried first');
  // Messages across a few cuts, on the transport it fell back to.
  for (let i = 0; i < 60; i += 3) {
    await publish(server.base, channel, [0, 1, 2].map((k) => ({ data: { i: i + k } })));
    if (i % 12 === 0) proxy.cut();
    await sleep(20);
  }
  await waitFor(() => got.length >= 60, 10_000, `60 messages (got ${got.length})`);
  // Publishing without a WebSocket goes over REST and is delivered like any other message.
  const r = await client.publish(channel, { data: { i: 60 } });
  assert.ok(r.serial > 0);
  await waitFor(() => got.length === 61, 5000, 'the published message');
  await sleep(200);
  assert.deepEqual(got, Array.from({ length: 61 }, (_, i) => i));
  assert.equal(client.transport, expected, 'reconnects stay on the transport that works');
  await client.close();
  await proxy.close();
}

test('WebSocket upgrades refused: falls back to SSE', async () => {
  await fallbackRun(/^GET \/v1\/connect/, 'sse', 'fb:sse');
});

test('WebSocket and SSE refused: falls back to long-polling', async () => {
  await fallbackRun(/^GET \/v1\/(connect|sse)/, 'poll', 'fb:poll');
});

test('a custom order is followed (poll first)', async () => {
  const client = track(new TidingsClient({ url: server.base, key: KEY, transports: ['poll', 'websocket'] }));
  const sub = client.attach('fb:order');
  await waitFor(() => sub.position, 5000, 'attached');
  assert.equal(client.transport, 'poll');
  await client.close();
});

test('time from connect() to the first message on loopback (WebSocket, SSE, long-poll)', async () => {
  for (const transport of ['websocket', 'sse', 'poll']) {
    const channel = `fb:first:${transport}`;
    await publish(server.base, channel, [{ data: 'first' }]);
    const t0 = performance.now();
    const client = track(new TidingsClient({ url: server.base, key: KEY, transports: [transport] }));
    const first = new Promise((r) => client.attach(channel, { rewind: 1 }).on('message', r));
    const m = await first;
    const ms = performance.now() - t0;
    assert.equal(m.data, 'first');
    console.log(`connect() to first message over ${transport}: ${ms.toFixed(1)} ms`);
    await client.close();
  }
});
