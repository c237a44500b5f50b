// Dead connections and the device's signals: a connection that goes silent (a frozen proxy: no
// FIN, no RST) is dropped after ~2.5 heartbeats and resumed; the browser's offline, online and
// visibilitychange events (emulated on globalThis, as a page has them) drive reconnection.

import assert from 'node:assert/strict';
import { after, afterEach, before, test } from 'node:test';
import { TidingsClient } from '../dist/index.js';
import { KEY, publish, sleep, startProxy, startTidings, waitFor, track } from './harness.mjs';

let server;
before(async () => {
  // Heartbeats every 300 ms, so a silent connection is detected in well under a second.
  server = await startTidings(['--heartbeat-interval', '300ms']);
});
after(async () => {
  await server?.stop();
});

for (const transport of ['websocket', 'sse']) {
  test(`${transport}: a silent connection is dropped after ~2.5 heartbeats and resumed without loss`, async () => {
    const channel = `live:hb:${transport}`;
    const proxy = track(await startProxy(server.addr));
    const client = track(new TidingsClient({ url: proxy.base, key: KEY, transports: [transport], heartbeatMs: 300, backoff: { initialMs: 20, maxMs: 100 } }));
    const dead = [];
    client.on('state', (s) => s.error && dead.push({ at: Date.now(), message: s.error.message }));
    const got = [];
    const sub = client.attach(channel);
    sub.on('message', (m) => got.push(m.data));
    await waitFor(() => sub.position, 5000, 'attached');
    // Quiet for a while: heartbeats alone keep the connection up.
    await sleep(1500);
    assert.deepEqual(dead, [], 'heartbeats keep a quiet connection alive');
    const frozenAt = Date.now();
    proxy.freeze();
    await publish(server.base, channel, [{ data: 1 }, { data: 2 }]);
    await waitFor(() => dead.length > 0, 5000, 'the dead connection detected');
    const after = dead[0].at - frozenAt;
    assert.match(dead[0].message, /no sign of life/);
    // 2.5 × 300 ms = 750 ms after the last frame, which came up to one heartbeat before the freeze.
    assert.ok(after >= 400 && after < 2500, `detected after ${after} ms`);
    await waitFor(() => got.length === 2, 5000, 'the messages sent while frozen');
    await publish(server.base, channel, [{ data: 3 }]);
    await waitFor(() => got.length === 3, 5000, 'live again');
    assert.deepEqual(got, [1, 2, 3]);
    await client.close();
    await proxy.close();
  });
}

/** The page-level globals a browser has: `addEventListener`, `navigator.onLine`, `document.visibilityState`. */
function emulateBrowser() {
  const win = new EventTarget();
  const doc = new EventTarget();
  doc.visibilityState = 'visible';
  const navigator = { onLine: true };
  const saved = { addEventListener: globalThis.addEventListener, removeEventListener: globalThis.removeEventListener };
  globalThis.addEventListener = win.addEventListener.bind(win);
  globalThis.removeEventListener = win.removeEventListener.bind(win);
  Object.defineProperty(globalThis, 'navigator', { value: navigator, configurable: true, writable: true });
  globalThis.document = doc;
  return {
    offline() {
      navigator.onLine = false;
      win.dispatchEvent(new Event('offline'));
    },
    online() {
      navigator.onLine = true;
      win.dispatchEvent(new Event('online'));
    },
    visible() {
      doc.visibilityState = 'visible';
      doc.dispatchEvent(new Event('visibilitychange'));
    },
    restore() {
      globalThis.addEventListener = saved.addEventListener;
      globalThis.removeEventListener = saved.removeEventListener;
      delete globalThis.navigator;
      delete globalThis.document;
    },
  };
}

let browser;
afterEach(() => browser?.restore());

test('offline: the connection is dropped and the client suspended; online: it reconnects at once and catches up', async () => {
  browser = emulateBrowser();
  const channel = 'live:online';
  // A long backoff: only the online event can explain a quick reconnect.
  const client = track(new TidingsClient({ url: server.base, key: KEY, backoff: { initialMs: 60_000, maxMs: 60_000 } }));
  const states = [];
  client.on('state', (s) => states.push(s.state));
  const got = [];
  const sub = client.attach(channel);
  sub.on('message', (m) => got.push(m.data));
  await waitFor(() => sub.position, 5000, 'attached');
  browser.offline();
  assert.equal(client.state, 'suspended');
  await publish(server.base, channel, [{ data: 'while offline' }]);
  await sleep(300);
  assert.deepEqual(got, [], 'nothing arrives while offline');
  const t = Date.now();
  browser.online();
  await waitFor(() => got.length === 1, 3000, 'the message published while offline');
  assert.ok(Date.now() - t < 3000);
  assert.deepEqual(got, ['while offline']);
  assert.deepEqual(states.slice(-3), ['suspended', 'connecting', 'connected']);
  await client.close();
});

test('visibilitychange to visible: a WebSocket that went silent is probed with a ping and replaced', async () => {
  browser = emulateBrowser();
  const channel = 'live:visible';
  const proxy = track(await startProxy(server.addr));
  // Heartbeat detection made slow on purpose (factor 100): only the visibility probe can catch it.
  const client = track(new TidingsClient({ url: proxy.base, key: KEY, transports: ['websocket'], heartbeatFactor: 100, backoff: { initialMs: 20, maxMs: 100 } }));
  const errors = [];
  client.on('state', (s) => s.error && errors.push(s.error.message));
  const got = [];
  const sub = client.attach(channel);
  sub.on('message', (m) => got.push(m.data));
  await waitFor(() => sub.position, 5000, 'attached');
  // A live connection answers the probe: nothing happens.
  browser.visible();
  await sleep(5500);
  assert.deepEqual(errors, [], 'a live connection survives the probe');
  proxy.freeze();
  await publish(server.base, channel, [{ data: 'x' }]);
  browser.visible();
  await waitFor(() => errors.length === 1, 7000, 'the probe to fail');
  assert.match(errors[0], /5000 ms/);
  await waitFor(() => got.length === 1, 5000, 'the message, after reconnecting');
  await client.close();
  await proxy.close();
});
