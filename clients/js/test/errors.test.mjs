// Bad input is refused by the SDK with clear, typed errors; the server's refusals arrive as
// TidingsError with the protocol's code, on every path (attach, publish, connect).

import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { after, before, test } from 'node:test';
import { TidingsClient, TidingsError, checkChannel } from '../dist/index.js';
import { KEY, issueToken, startTidings, waitFor, track } from './harness.mjs';

let server;
before(async () => {
  server = await startTidings(['--max-message-bytes', '1024']);
});
after(async () => {
  await server?.stop();
});

const code = (c) => (e) => e instanceof TidingsError && e.code === c;

test('invalid channel names are refused before anything is sent', () => {
  const client = track(new TidingsClient({ url: server.base, key: KEY, autoConnect: false }));
  for (const name of ['', 'a::b', ':a', 'a:', 'has space', 'ünïcode', 'a,b', 'x'.repeat(256), 42, undefined]) {
    assert.throws(() => client.attach(name), code('invalid_channel'), `attach(${JSON.stringify(name)})`);
    assert.throws(() => client.publish(name, { data: 1 }), code('invalid_channel'));
  }
  for (const name of ['store:42', 'user:alice@example.com:inbox', 'a-b_c.d=e+f', 'x'.repeat(255)]) assert.equal(checkChannel(name), name);
  assert.equal(client.state, 'initialized');
});

test('invalid options are refused with invalid_options and a message that says what to fix', () => {
  const bad = [
    [{}, /url/],
    [{ url: 'ws://x' }, /url/],
    [{ url: 'http://x', key: 'no-colon' }, /KEY_ID:SECRET/],
    [{ url: 'http://x', key: 'a:b', token: 't' }, /one of/],
    [{ url: 'http://x', transports: ['carrier-pigeon'] }, /transports/],
    [{ url: 'http://x', transports: [] }, /transports/],
  ];
  for (const [options, message] of bad) {
    assert.throws(() => new TidingsClient(options), (e) => code('invalid_options')(e) && message.test(e.message), JSON.stringify(options));
  }
  const client = track(new TidingsClient({ url: server.base, key: KEY, autoConnect: false }));
  assert.throws(() => client.attach('a', { from: { epoch: 'e', serial: 1 }, rewind: 2 }), code('invalid_options'));
  assert.throws(() => client.attach('a', { from: { epoch: 'e', serial: -1 } }), code('invalid_options'));
  assert.throws(() => client.attach('a', { rewind: 1.5 }), code('invalid_options'));
  assert.throws(() => client.publish('a', {}), code('invalid_options'));
  assert.throws(() => client.publish('a', { name: 7 }), code('invalid_options'));
  client.attach('a');
  assert.throws(() => client.attach('a'), (e) => code('invalid_options')(e) && /already attached/.test(e.message));
});

test('a wrong API key fails the client with unauthorized (after falling back to a transport that can read the answer)', async () => {
  const client = track(new TidingsClient({ url: server.base, key: 'sdk:wrong-secret' }));
  const errors = [];
  client.on('error', (e) => errors.push(e));
  client.attach('err:auth');
  await waitFor(() => client.state === 'failed', 5000, 'failed');
  assert.equal(errors[0].code, 'unauthorized');
  assert.equal(errors[0].status, 401);
  await assert.rejects(client.publish('err:auth', { data: 1 }), code('unauthorized'));
  await client.close();
});

for (const transport of ['websocket', 'sse', 'poll']) {
  test(`${transport}: a channel the token may not subscribe to gets a forbidden error; the others keep working`, async () => {
    const getToken = async () => (await issueToken(server.base, { subject: `caps-${transport}`, caps: { 'ok:*': ['subscribe', 'publish'] } })).token;
    const client = track(new TidingsClient({ url: server.base, getToken, transports: [transport], pollWaitMs: 1000 }));
    const denied = client.attach(`no:${transport}`);
    const error = new Promise((r) => denied.on('error', r));
    const detached = new Promise((r) => denied.on('detached', r));
    const ok = client.attach(`ok:${transport}`);
    const got = [];
    ok.on('message', (m) => got.push(m.data));
    const e = await error;
    await detached;
    assert.equal(e.code, 'forbidden');
    assert.equal(e.channel, `no:${transport}`);
    await waitFor(() => ok.position, 5000, 'the allowed channel attached');
    const r = await client.publish(`ok:${transport}`, { data: 'fine' });
    assert.ok(r.serial > 0);
    await waitFor(() => got.length === 1, 5000, 'the message on the allowed channel');
    await assert.rejects(client.publish(`no:${transport}`, { data: 'denied' }), (err) => code('forbidden')(err) && err.channel === `no:${transport}`);
    assert.equal(client.state, 'connected');
    await client.close();
  });
}

test('publish errors carry the protocol code: message_too_large over WebSocket and REST', async () => {
  for (const transport of ['websocket', 'poll']) {
    const client = track(new TidingsClient({ url: server.base, key: KEY, transports: [transport] }));
    client.attach('err:size');
    await waitFor(() => client.state === 'connected', 5000, 'connected');
    await assert.rejects(client.publish('err:size', { data: 'x'.repeat(2000) }), code('message_too_large'), transport);
    await client.close();
  }
  // Without any connection, publish goes over REST.
  const rest = track(new TidingsClient({ url: server.base, key: KEY }));
  await assert.rejects(rest.publish('err:size', { data: 'x'.repeat(2000) }), code('message_too_large'));
  const r = await rest.publish('err:size', { data: 'small', id: 'fixed-id' });
  const again = await rest.publish('err:size', { data: 'small', id: 'fixed-id' });
  assert.equal(again.serial, r.serial, 'a repeated id answers the existing serial');
  await rest.close();
  await assert.rejects(rest.publish('err:size', { data: 1 }), code('closed'));
});

test('every error code of docs/protocol.md is in the SDK error type', () => {
  const doc = readFileSync(new URL('../../../docs/protocol.md', import.meta.url), 'utf8');
  const table = doc.slice(doc.indexOf('## Error codes'));
  const codes = [...table.matchAll(/^\| `([a-z_]+)` \|/gm)].map((m) => m[1]);
  assert.ok(codes.length >= 16, `found the table (${codes.length} codes)`);
  const types = readFileSync(new URL('../dist/errors.d.ts', import.meta.url), 'utf8');
  for (const c of codes) assert.ok(types.includes(`'${c}'`) || types.includes(`"${c}"`), `${c} in ServerErrorCode`);
});

test('without credentials: public namespaces can be read, other channels are forbidden', async () => {
  const open = track(await startTidings(['--public-namespace', 'pub']));
  const client = track(new TidingsClient({ url: open.base }));
  const sub = client.attach('pub:news', { rewind: 5 });
  const got = [];
  sub.on('message', (m) => got.push(m.data));
  await waitFor(() => sub.position, 5000, 'attached anonymously');
  const r = await fetch(`${open.base}/v1/channels/pub:news/messages`, {
    method: 'POST',
    headers: { authorization: `Bearer ${KEY}`, 'content-type': 'application/json' },
    body: JSON.stringify({ data: 'hello' }),
  });
  assert.equal(r.status, 201);
  await waitFor(() => got.length === 1, 5000, 'the public message');
  const denied = client.attach('private:1');
  const e = await new Promise((r) => denied.on('error', r));
  assert.equal(e.code, 'forbidden');
  await assert.rejects(client.publish('pub:news', { data: 'anonymous publish' }), code('forbidden'));
  await client.close();
  await open.stop();
});
