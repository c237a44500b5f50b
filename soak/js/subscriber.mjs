// One JS SDK subscriber of the fault soak (soak/src/subscriber/js.rs starts it): follows every
// channel it is given over one transport and writes what it receives to stdout as JSON lines,
// synchronously (stdout is a pipe: Node writes pipes synchronously on Linux), so that what the
// soak read before a `kill -9` is exactly what this process delivered.
//
//   node --experimental-websocket subscriber.mjs URL KEY TRANSPORT CHANNELS_JSON FROM_JSON HEARTBEAT_MS
//
// CHANNELS_JSON is an array of channel names; FROM_JSON maps a channel to the {epoch, serial} to
// resume after (channels without one start now). The SDK is loaded from TIDINGS_JS_DIST
// (clients/js/dist/index.js).
//
// Lines: {"t":"a",c,e,s,resumed} attached; {"t":"m",c,e,s,id,d:{w,s}} a message (its key only);
// {"t":"lost",c,reason,previous,position} continuity lost; {"t":"err",c,code,message} an error.

import { pathToFileURL } from 'node:url';

const [url, key, transport, channelsJson, fromJson, heartbeatMs] = process.argv.slice(2);
const dist = process.env.TIDINGS_JS_DIST;
if (!dist) {
  process.stderr.write('TIDINGS_JS_DIST is not set: point it at clients/js/dist/index.js\n');
  process.exit(2);
}
const { TidingsClient } = await import(pathToFileURL(dist).href);

const out = (o) => process.stdout.write(JSON.stringify(o) + '\n');
const from = JSON.parse(fromJson);
const client = new TidingsClient({
  url,
  key,
  transports: [transport],
  backoff: { initialMs: 100, maxMs: 2000 },
  connectTimeoutMs: 3000,
  heartbeatMs: Number(heartbeatMs),
  pollWaitMs: 5000,
  // The soak restarts this process itself; it never wants the SDK to stop retrying.
  suspendAfterMs: 3_600_000,
});
client.on('error', (e) => out({ t: 'err', c: e.channel ?? null, code: e.code, message: e.message }));
client.on('state', ({ state, error }) => {
  if (state === 'failed') out({ t: 'err', c: null, code: 'failed', message: String(error?.message ?? error) });
});
for (const c of JSON.parse(channelsJson)) {
  const sub = client.attach(c, from[c] ? { from: from[c] } : { resume: false });
  sub.on('attached', (a) => out({ t: 'a', c, e: a.epoch, s: a.serial, resumed: a.resumed }));
  sub.on('message', (m) => out({ t: 'm', c, e: m.epoch, s: m.serial, id: m.id, d: { w: m.data?.w, s: m.data?.s } }));
  sub.on('continuity_lost', (l) => out({ t: 'lost', c, reason: l.reason, previous: l.previous ?? null, position: l.position }));
  sub.on('error', (e) => out({ t: 'err', c, code: e.code, message: e.message }));
}
process.on('SIGTERM', () => {
  client.close();
  process.exit(0);
});
