// Continuity lost reaches the app as a typed event, on every transport: a stale epoch given to
// attach, a position beyond the head, and a server whose history was reset (a fresh data
// directory behind the same address) while the client was connected. Stored positions resume.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { indexedDB } from 'fake-indexeddb';
import { TidingsClient, indexedDBStorage, memoryStorage, webStorage } from '../dist/index.js';
import { KEY, publish, sleep, startProxy, startTidings, waitFor, track } from './harness.mjs';

let server;
before(async () => {
  server = await startTidings();
});
after(async () => {
  await server?.stop();
});

async function epochOf(channel) {
  const r = await fetch(`${server.base}/v1/channels/${channel}/messages?limit=1`, { headers: { authorization: `Bearer ${KEY}` } });
  return (await r.json()).epoch;
}

for (const transport of ['websocket', 'sse', 'poll']) {
  test(`${transport}: a stale epoch is reported as continuity lost (epoch_changed), then delivery continues`, async () => {
    const channel = `cl:stale:${transport}`;
    await publish(server.base, channel, [{ data: 1 }, { data: 2 }, { data: 3 }]);
    const client = track(new TidingsClient({ url: server.base, key: KEY, transports: [transport], pollWaitMs: 1000 }));
    const lost = [];
    client.on('continuity_lost', (e) => lost.push(['client', e]));
    const sub = client.attach(channel, { from: { epoch: 'stale-epoch', serial: 2 } });
    sub.on('continuity_lost', (e) => lost.push(['sub', e]));
    const got = [];
    sub.on('message', (m) => got.push(m.data));
    await waitFor(() => lost.length === 2, 5000, 'continuity_lost');
    const epoch = await epochOf(channel);
    for (const [, e] of lost) {
      assert.deepEqual(e, { channel, reason: 'epoch_changed', previous: { epoch: 'stale-epoch', serial: 2 }, position: { epoch, serial: 3 } });
    }
    await publish(server.base, channel, [{ data: 4 }]);
    await waitFor(() => got.length === 1, 5000, 'the next message');
    assert.deepEqual(got, [4], 'only messages after the new position');
    assert.deepEqual(sub.position, { epoch, serial: 4 });
    await client.close();
  });

  test(`${transport}: history reset behind the same address (new epoch) is reported on reconnect`, async () => {
    const channel = `cl:reset:${transport}`;
    const first = track(await startTidings());
    const proxy = track(await startProxy(first.addr));
    const client = track(new TidingsClient({ url: proxy.base, key: KEY, transports: [transport], backoff: { initialMs: 20, maxMs: 100 }, pollWaitMs: 1000 }));
    const lost = [];
    client.on('continuity_lost', (e) => lost.push(e));
    const got = [];
    const sub = client.attach(channel);
    sub.on('message', (m) => got.push(m.data));
    await waitFor(() => sub.position, 5000, 'attached');
    await publish(first.base, channel, [{ data: 'a' }, { data: 'b' }]);
    await waitFor(() => got.length === 2, 5000, 'two messages');
    const oldEpoch = sub.position.epoch;
    // The data directory is gone: a new server (new history, new epoch) takes the address.
    const second = track(await startTidings());
    proxy.retarget(second.addr);
    await first.stop();
    proxy.cut();
    await waitFor(() => lost.length === 1, 10_000, 'continuity_lost after the reset');
    assert.equal(lost[0].reason, 'epoch_changed');
    assert.deepEqual(lost[0].previous, { epoch: oldEpoch, serial: 2 });
    assert.notEqual(lost[0].position.epoch, oldEpoch);
    await publish(second.base, channel, [{ data: 'c' }]);
    await waitFor(() => got.length === 3, 5000, 'a message of the new history');
    assert.deepEqual(got, ['a', 'b', 'c']);
    await client.close();
    await proxy.close();
    await second.stop();
  });
}

test('a position beyond the head is reported (position_ahead)', async () => {
  const channel = 'cl:ahead';
  await publish(server.base, channel, [{ data: 1 }]);
  const epoch = await epochOf(channel);
  const client = track(new TidingsClient({ url: server.base, key: KEY }));
  const sub = client.attach(channel, { from: { epoch, serial: 1000 } });
  const lost = await new Promise((r) => sub.on('continuity_lost', r));
  assert.equal(lost.reason, 'position_ahead');
  assert.deepEqual(lost.position, { epoch, serial: 1 });
  await client.close();
});

test('history expired under retention is reported (history_expired)', async () => {
  const small = track(await startTidings(['--retention-max-messages', '2', '--retention-interval', '100ms']));
  const channel = 'cl:expired';
  await publish(small.base, channel, [{ data: 1 }]);
  const r = await fetch(`${small.base}/v1/channels/${channel}/messages`, { headers: { authorization: `Bearer ${KEY}` } });
  const epoch = (await r.json()).epoch;
  await publish(small.base, channel, [2, 3, 4, 5, 6].map((d) => ({ data: d })));
  await sleep(500); // retention runs
  const client = track(new TidingsClient({ url: small.base, key: KEY }));
  const sub = client.attach(channel, { from: { epoch, serial: 1 } });
  const lost = await new Promise((r) => sub.on('continuity_lost', r));
  assert.equal(lost.reason, 'history_expired');
  await client.close();
  await small.stop();
});

const storages = {
  memory: () => memoryStorage(),
  'web (localStorage shape)': () => {
    const m = new Map();
    return webStorage({ getItem: (k) => m.get(k) ?? null, setItem: (k, v) => void m.set(k, v), removeItem: (k) => void m.delete(k) });
  },
  'AsyncStorage shape': () => {
    const m = new Map();
    return webStorage({ getItem: async (k) => m.get(k) ?? null, setItem: async (k, v) => void m.set(k, v), removeItem: async (k) => void m.delete(k) });
  },
  'IndexedDB (fake-indexeddb)': () => indexedDBStorage(`tidings-test-${Math.random()}`, indexedDB),
};

for (const [name, make] of Object.entries(storages)) {
  test(`stored positions (${name}): a new client resumes after the last message the previous one processed`, async () => {
    const storage = make();
    const channel = `cl:store:${name.split(' ')[0].toLowerCase()}`;
    const a = track(new TidingsClient({ url: server.base, key: KEY, storage }));
    const gotA = [];
    const subA = a.attach(channel);
    subA.on('message', (m) => gotA.push(m.data));
    await waitFor(() => subA.position, 5000, 'attached');
    await publish(server.base, channel, [1, 2, 3].map((d) => ({ data: d })));
    await waitFor(() => gotA.length === 3, 5000, 'three messages');
    await a.close(); // stores the positions
    await publish(server.base, channel, [4, 5].map((d) => ({ data: d })));
    assert.deepEqual(JSON.parse(await storage.get(`tidings:${channel}`)), { epoch: subA.position.epoch, serial: 3 });
    const b = track(new TidingsClient({ url: server.base, key: KEY, storage }));
    const gotB = [];
    b.attach(channel).on('message', (m) => gotB.push(m.data));
    await waitFor(() => gotB.length === 2, 5000, 'the two missed messages');
    await sleep(200);
    assert.deepEqual(gotB, [4, 5], 'exactly the messages after the stored position');
    await b.close();
  });
}
