// The synced local mirror: normalized change messages (insert, update, replace, delete by key)
// applied to a local collection; `sync()` called for the first load and on continuity lost,
// continuing from the position it answers.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { Mirror, TidingsClient } from '../dist/index.js';
import { KEY, publish, startProxy, startTidings, waitFor, track } from './harness.mjs';

let server;
before(async () => {
  server = await startTidings();
});
after(async () => {
  await server?.stop();
});

/** A stand-in for the app's database: documents by _id, each write published as a normalized change. */
function database(initial) {
  const docs = new Map(initial.map((d) => [d._id, structuredClone(d)]));
  return {
    docs,
    snapshot: () => [...docs.values()].map((d) => structuredClone(d)),
    /** Apply a change here, and describe it as the connector would. */
    change(op, id, arg = {}) {
      const key = { _id: id };
      if (op === 'delete') docs.delete(id);
      else if (op === 'update' && arg.updated_fields) {
        const d = docs.get(id);
        for (const [path, v] of Object.entries(arg.updated_fields)) {
          const parts = path.split('.');
          let o = d;
          for (const p of parts.slice(0, -1)) o = o[p] ??= {};
          o[parts.at(-1)] = v;
        }
        for (const path of arg.removed_fields ?? []) delete d[path];
      } else docs.set(id, structuredClone(arg.document));
      return { op, key, document: arg.document ?? null, updated_fields: arg.updated_fields ?? null, removed_fields: arg.removed_fields ?? null };
    },
  };
}

const sorted = (docs) => [...docs].sort((a, b) => a._id - b._id);

test('the mirror loads with sync(), applies insert/update/replace/delete, and resyncs on continuity lost', async () => {
  const first = track(await startTidings());
  const proxy = track(await startProxy(first.addr));
  let target = first;
  const channel = 'products:1';
  const db = database([
    { _id: 1, name: 'apple', qty: 3 },
    { _id: 2, name: 'pear', qty: 5, dims: { h: 1 } },
    { _id: 3, name: 'fig', qty: 1 },
  ]);
  const write = (op, id, arg) => publish(target.base, channel, [{ name: op, data: db.change(op, id, arg) }]);

  const client = track(new TidingsClient({ url: proxy.base, key: KEY, backoff: { initialMs: 20, maxMs: 100 } }));
  const syncs = [];
  const mirror = new Mirror(client, channel, {
    sync: async (req) => {
      syncs.push(req);
      return { documents: db.snapshot(), position: { epoch: req.epoch, serial: req.serial } };
    },
  });
  const changes = [];
  mirror.on('change', (c) => changes.push(c.op));
  await mirror.ready;
  assert.equal(syncs[0].reason, 'initial');
  assert.deepEqual(sorted(mirror.documents.values()), sorted(db.docs.values()));

  await write('insert', 4, { document: { _id: 4, name: 'kiwi', qty: 9 } });
  await write('update', 1, { document: { _id: 1, name: 'apple', qty: 2 } });
  await write('update', 2, { updated_fields: { qty: 7, 'dims.w': 3 }, removed_fields: ['name'] });
  await write('replace', 3, { document: { _id: 3, name: 'fig', qty: 0, note: 'replaced' } });
  await write('delete', 4);
  await waitFor(() => changes.length === 5, 5000, 'five changes applied');
  assert.deepEqual(changes, ['insert', 'update', 'update', 'replace', 'delete']);
  assert.deepEqual(sorted(mirror.documents.values()), sorted(db.docs.values()));
  assert.deepEqual(mirror.get({ _id: 2 }), { _id: 2, qty: 7, dims: { h: 1, w: 3 } });
  assert.equal(mirror.get({ _id: 4 }), undefined);
  const before = mirror.position;
  assert.equal(before.serial, 5);

  // The server's history is reset while a write happens that no message will ever carry.
  db.change('update', 1, { document: { _id: 1, name: 'apple', qty: 100 } });
  const second = track(await startTidings());
  proxy.retarget(second.addr);
  await first.stop();
  target = second;
  proxy.cut();
  await waitFor(() => syncs.length === 2, 10_000, 'a second sync');
  assert.equal(syncs[1].reason, 'epoch_changed');
  assert.notEqual(syncs[1].epoch, before.epoch);
  await waitFor(() => mirror.position?.epoch === syncs[1].epoch, 5000, 'the new position');
  assert.equal(mirror.get({ _id: 1 }).qty, 100, 'the lost write arrived through sync()');

  await write('insert', 5, { document: { _id: 5, name: 'plum', qty: 4 } });
  await waitFor(() => mirror.get({ _id: 5 }), 5000, 'a change after the resync');
  assert.deepEqual(sorted(mirror.documents.values()), sorted(db.docs.values()));
  assert.equal(syncs.length, 2);
  mirror.close();
  await client.close();
  await proxy.close();
  await second.stop();
});

test('sync() answering an older position: the mirror re-attaches after it and applies the changes in between', async () => {
  const channel = 'products:2';
  const db = database([{ _id: 1, name: 'a', qty: 1 }]);
  const states = [];
  const write = async (op, id, arg) => {
    await publish(server.base, channel, [{ data: db.change(op, id, arg) }]);
    states.push(db.snapshot());
  };
  await write('update', 1, { document: { _id: 1, name: 'a', qty: 2 } });
  await write('insert', 2, { document: { _id: 2, name: 'b', qty: 1 } });
  await write('update', 1, { document: { _id: 1, name: 'a', qty: 3 } });
  // The app's snapshot is as of serial 1; the channel is at 3.
  const client = track(new TidingsClient({ url: server.base, key: KEY }));
  const syncs = [];
  const mirror = new Mirror(client, channel, {
    sync: (req) => {
      syncs.push(req);
      return { documents: states[0], position: { epoch: req.epoch, serial: 1 } };
    },
  });
  await mirror.ready;
  assert.equal(syncs[0].serial, 3);
  await waitFor(() => mirror.position?.serial === 3, 5000, 'the changes after serial 1');
  assert.deepEqual(sorted(mirror.documents.values()), sorted(db.docs.values()));
  assert.equal(syncs.length, 1);
  await client.close();
});

test('a sync() that throws is retried, and the error reported', async () => {
  const channel = 'products:3';
  const client = track(new TidingsClient({ url: server.base, key: KEY }));
  let calls = 0;
  const mirror = new Mirror(client, channel, {
    sync: (req) => {
      if (++calls === 1) throw new Error('backend down');
      return { documents: [{ _id: 1, qty: 1 }], position: { epoch: req.epoch, serial: req.serial } };
    },
  });
  const errors = [];
  mirror.on('error', (e) => errors.push(e.message));
  await mirror.ready;
  assert.equal(calls, 2);
  assert.deepEqual(errors, ['backend down']);
  assert.deepEqual(mirror.get({ _id: 1 }), { _id: 1, qty: 1 });
  await client.close();
});
