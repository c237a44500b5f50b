// Tokens: short-lived HS256 tokens from the server's POST /v1/tokens. The connection must
// outlive the first token, renewing in-band over WebSocket, and recover from 4001 and from
// an SSE stream's token_expired; and from a revocation (4002, token_revoked) on every transport.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { TidingsClient } from '../dist/index.js';
import { KEY, issueToken, publish, sleep, startTidings, waitFor, track } from './harness.mjs';

let server;
before(async () => {
  server = await startTidings();
});
after(async () => {
  await server?.stop();
});

/** A getToken that asks the server for a 2 s token and counts its calls. */
function tokens(ttl = '2s') {
  const calls = [];
  const getToken = async () => {
    const t = await issueToken(server.base, { subject: 'device-1', ttl });
    calls.push(t.expires_at);
    return { token: t.token, expiresAt: t.expires_at };
  };
  return { calls, getToken };
}

/** Publish one message every 100 ms on `channel` for `ms`; resolves to how many. */
async function trickle(channel, ms) {
  let n = 0;
  for (const end = Date.now() + ms; Date.now() < end; n++) {
    await publish(server.base, channel, [{ data: { i: n } }]);
    await sleep(100);
  }
  return n;
}

test('WebSocket: the connection survives past the first token, renewed in-band with `auth`', async () => {
  const { calls, getToken } = tokens('2s');
  const client = track(new TidingsClient({ url: server.base, getToken, transports: ['websocket'] }));
  const states = [];
  client.on('state', (s) => states.push(s.state));
  const errors = [];
  client.on('error', (e) => errors.push(e));
  const got = [];
  const sub = client.attach('tok:ws');
  sub.on('message', (m) => got.push(m.data.i));
  await waitFor(() => sub.position, 5000, 'attached');
  const connection = client.connectionId;
  const firstExpiry = calls[0];
  const n = await trickle('tok:ws', 6000);
  await waitFor(() => got.length === n, 5000, `${n} messages`);
  assert.ok(Date.now() > firstExpiry + 2000, 'ran well past the first token expiry');
  assert.equal(client.connectionId, connection, 'the same WebSocket connection throughout');
  assert.equal(states.filter((s) => s === 'connected').length, 1, `connected once, no reconnect: ${states}`);
  assert.ok(calls.length >= 3, `tokens fetched: ${calls.length}`);
  assert.deepEqual(got, Array.from({ length: n }, (_, i) => i));
  assert.deepEqual(errors, []);
  await client.close();
});

test('WebSocket: without renewal in time the server closes with 4001; the client fetches a token, reconnects and resumes', async () => {
  const { calls, getToken } = tokens('1s');
  // Renew only after the token expired: the server closes with 4001 first.
  const client = track(new TidingsClient({ url: server.base, getToken, transports: ['websocket'], renewBeforeMs: -60_000 }));
  const closes = [];
  client.on('state', (s) => s.error && closes.push(s.error.message));
  const got = [];
  const sub = client.attach('tok:4001');
  sub.on('message', (m) => got.push(m.data.i));
  await waitFor(() => sub.position, 5000, 'attached');
  const n = await trickle('tok:4001', 5000);
  await waitFor(() => got.length === n, 5000, `${n} messages`);
  assert.ok(closes.some((m) => /4001/.test(m)), `closed with 4001: ${closes}`);
  assert.ok(calls.length >= 3, `a new token per reconnect: ${calls.length}`);
  assert.deepEqual(got, Array.from({ length: n }, (_, i) => i), 'every message once, in order, across the 4001 closes');
  await client.close();
});

test('SSE: the stream outlives its token (renewed by reconnecting with a fresh one)', async () => {
  const { calls, getToken } = tokens('2s');
  const client = track(new TidingsClient({ url: server.base, getToken, transports: ['sse'] }));
  const got = [];
  const sub = client.attach('tok:sse');
  sub.on('message', (m) => got.push(m.data.i));
  await waitFor(() => sub.position, 5000, 'attached');
  const n = await trickle('tok:sse', 5000);
  await waitFor(() => got.length === n, 5000, `${n} messages`);
  assert.ok(calls.length >= 3, `tokens fetched: ${calls.length}`);
  assert.deepEqual(got, Array.from({ length: n }, (_, i) => i));
  assert.equal(client.state, 'connected');
  await client.close();
});

test('long-polling: requests keep working past the first token', async () => {
  const { calls, getToken } = tokens('2s');
  const client = track(new TidingsClient({ url: server.base, getToken, transports: ['poll'], pollWaitMs: 1000 }));
  const got = [];
  const sub = client.attach('tok:poll');
  sub.on('message', (m) => got.push(m.data.i));
  await waitFor(() => sub.position, 5000, 'attached');
  const n = await trickle('tok:poll', 5000);
  await waitFor(() => got.length === n, 5000, `${n} messages`);
  assert.ok(calls.length >= 3, `tokens fetched: ${calls.length}`);
  assert.deepEqual(got, Array.from({ length: n }, (_, i) => i));
  await client.close();
});

test('a static token that expires fails the client with token_expired (nothing can renew it)', async () => {
  const t = await issueToken(server.base, { subject: 'device-2', ttl: '1s' });
  const client = track(new TidingsClient({ url: server.base, token: t.token, transports: ['websocket'] }));
  const errors = [];
  client.on('error', (e) => errors.push(e));
  client.attach('tok:static');
  await waitFor(() => client.state === 'failed', 8000, 'failed');
  assert.equal(errors[0]?.code, 'token_expired');
  await client.close();
});

test("SSE: a stream ended by the server's token_expired event resumes with a fresh token", async () => {
  const { calls, getToken } = tokens('1s');
  // Renew only after expiry, so the server's `error` event with token_expired ends the stream first.
  const client = track(new TidingsClient({ url: server.base, getToken, transports: ['sse'], renewBeforeMs: -60_000 }));
  const closes = [];
  client.on('state', (s) => s.error && closes.push(s.error.code));
  const got = [];
  const sub = client.attach('tok:sse-expired');
  sub.on('message', (m) => got.push(m.data.i));
  await waitFor(() => sub.position, 5000, 'attached');
  const n = await trickle('tok:sse-expired', 4000);
  await waitFor(() => got.length === n, 5000, `${n} messages`);
  assert.ok(closes.includes('token_expired'), `the stream ended with token_expired: ${closes}`);
  assert.ok(calls.length >= 3, `tokens fetched: ${calls.length}`);
  assert.deepEqual(got, Array.from({ length: n }, (_, i) => i));
  await client.close();
});

/** Revoke every token of `subject` issued until now (POST /v1/tokens/revoke with the API key). */
async function revokeSubject(subject) {
  const resp = await fetch(`${server.base}/v1/tokens/revoke`, {
    method: 'POST',
    headers: { authorization: `Bearer ${KEY}`, 'content-type': 'application/json' },
    body: JSON.stringify({ subject }),
  });
  assert.equal(resp.status, 200, await resp.text());
}

for (const transport of ['websocket', 'sse', 'poll']) {
  test(`${transport}: a revoked token is replaced from getToken and every channel resumes, nothing lost or repeated`, async () => {
    const subject = `revoked-${transport}`;
    const calls = [];
    const getToken = async () => {
      const t = await issueToken(server.base, { subject, ttl: '10m' });
      calls.push(t.jti);
      return { token: t.token, expiresAt: t.expires_at };
    };
    const client = track(new TidingsClient({ url: server.base, getToken, transports: [transport], pollWaitMs: 5000 }));
    const ended = [];
    client.on('state', (s) => s.error && ended.push(s.error.code));
    const got = [];
    const channel = `tok:revoked-${transport}`;
    const sub = client.attach(channel);
    sub.on('message', (m) => got.push(m.data.i));
    await waitFor(() => sub.position, 5000, 'attached');
    for (let i = 0; i < 20; i++) await publish(server.base, channel, [{ data: { i } }]);
    await waitFor(() => got.length === 20, 5000, '20 messages');
    await revokeSubject(subject);
    // Published while the client is cut off and fetches its new token.
    for (let i = 20; i < 40; i++) await publish(server.base, channel, [{ data: { i } }]);
    await waitFor(() => got.length >= 40, 5000, '40 messages');
    await sleep(300);
    assert.deepEqual(got, Array.from({ length: 40 }, (_, i) => i), 'every message once, in order');
    assert.ok(ended.includes('token_revoked'), `the connection ended with token_revoked: ${ended}`);
    assert.ok(calls.length >= 2, `a new token was fetched: ${calls.length}`);
    assert.notEqual(calls.at(-1), calls[0], 'a different token');
    assert.equal(client.state, 'connected');
    await client.close();
  });
}
