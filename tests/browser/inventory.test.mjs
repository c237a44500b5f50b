// The inventory demo end to end in a real browser: `examples/inventory/run` (a throwaway
// Postgres, the outbox, tidings with its Postgres connector, the writer) and its page in
// headless Chromium. The page loads and connects over WebSocket (Tidings serves the page, so its
// upgrade is same-origin); a database update shows within a second; the page goes offline while
// updates continue and, back online, shows every update in order; a reload mid-stream ends on
// the latest state, over WebSocket again.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFile } from 'node:child_process';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { binary, launchBrowser, waitFor } from './harness.mjs';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const run = promisify(execFile);

/** Start the demo as a user would (but on free ports, with the binary already built). */
async function startDemo() {
  const child = spawn(path.join(root, 'examples/inventory/run'), ['--port', '0', '--interval', '150', '--no-build'], {
    env: { ...process.env, TIDINGS_BIN: binary() },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const log = [];
  readline.createInterface({ input: child.stderr }).on('line', (l) => log.push(l));
  const urls = await new Promise((resolve, reject) => {
    const found = {};
    const timer = setTimeout(() => reject(new Error(`the demo did not start in 120 s:\n${log.join('\n')}`)), 120_000);
    child.once('exit', (code) => reject(new Error(`the demo exited with ${code}:\n${log.join('\n')}`)));
    readline.createInterface({ input: child.stdout }).on('line', (line) => {
      const m = line.match(/^\s+(page|postgres|writer):\s+(\S+)/);
      if (m) found[m[1]] = m[2];
      if (found.page && found.postgres && found.writer) {
        clearTimeout(timer);
        resolve(found);
      }
    });
  });
  const psql = urls.postgres;
  return {
    ...urls,
    log,
    /** Run SQL with psql; rows as arrays of strings. */
    async sql(query) {
      const { stdout } = await run('psql', ['-X', '-q', '-A', '-t', '-F', '\t', '-v', 'ON_ERROR_STOP=1', psql, '-c', query], {
        env: { ...process.env, PATH: `${process.env.PATH}:${(await pgBin())}` },
      });
      return stdout.trim().split('\n').filter(Boolean).map((l) => l.split('\t'));
    },
    async writer(body) {
      const res = await fetch(`${urls.writer}/writer`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify(body),
      });
      const text = await res.text();
      assert.equal(res.status, 200, text);
      return JSON.parse(text);
    },
    async stop() {
      if (child.exitCode !== null) return;
      const exited = new Promise((r) => child.once('exit', r));
      child.kill('SIGTERM');
      await exited;
    },
  };
}

let pgBinCache;
async function pgBin() {
  if (pgBinCache !== undefined) return pgBinCache;
  const { stdout } = await run('bash', ['-c', 'ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1']);
  return (pgBinCache = stdout.trim());
}

const products = (page) => page.evaluate(() => window.inventory.products().map((p) => [String(p.id), String(p.stock)]));
const dbProducts = (demo) => demo.sql('SELECT id, stock FROM inventory.products ORDER BY id');
/** Changes the page applied, in order: each must follow the one before it, with no gap and no repeat. */
function assertContiguous(changes, what) {
  for (let i = 1; i < changes.length; i++) {
    const [a, b] = [changes[i - 1], changes[i]];
    assert.ok(a.epoch === b.epoch && b.serial === a.serial + 1, `${what}: serial ${b.serial} (epoch ${b.epoch}) after ${a.serial} (epoch ${a.epoch})`);
  }
}

test('the inventory demo in a real browser: live, offline and back, reloaded mid-stream', { timeout: 240_000 }, async () => {
  const demo = await startDemo();
  const browser = await launchBrowser();
  try {
    const context = await browser.newContext();
    const page = await context.newPage();
    const pageErrors = [];
    page.on('pageerror', (e) => pageErrors.push(e.message));

    // 1. The page loads the products and connects.
    await page.goto(demo.page);
    await page.waitForFunction(() => document.body.dataset.ready === 'true', null, { timeout: 20_000 });
    await page.waitForFunction(() => window.inventory.state === 'connected', null, { timeout: 10_000 });
    assert.equal(await page.locator('#products tbody tr').count(), 12, 'every product is listed');
    assert.equal(await page.locator('#state').textContent(), 'connected');
    // The page is served by Tidings, so its upgrade is same-origin: WebSocket, no fallback to SSE.
    assert.equal(await page.locator('#transport').textContent(), 'websocket', 'the page connects over WebSocket');

    // 2. A database update shows within one second of its commit.
    await demo.writer({ running: false });
    const latencies = [];
    for (let i = 0; i < 5; i++) {
      const id = 1 + i;
      const [[stock]] = await demo.sql(`SELECT stock FROM inventory.adjust_stock(${id}, ${11 + i})`);
      const committed = Date.now();
      await page.waitForFunction(
        ([id, stock]) => document.querySelector(`#products tr[data-id="${id}"] td.stock`)?.textContent === stock,
        [id, stock],
        { timeout: 5_000, polling: 10 },
      );
      latencies.push(Date.now() - committed);
    }
    console.log(`# commit to page: ${latencies.join(', ')} ms`);
    assert.ok(Math.max(...latencies) <= 1000, `every update within 1 s of its commit: ${latencies} ms`);

    // 3. Offline while updates continue; back online, every update arrives, in order.
    await demo.writer({ running: true, interval_ms: 100 });
    await waitFor(async () => (await page.evaluate(() => window.inventory.changes.length)) >= 10, 10_000, 'live changes');
    await context.setOffline(true);
    await page.waitForFunction(() => window.inventory.state !== 'connected', null, { timeout: 5_000 });
    const seenOffline = await page.evaluate(() => window.inventory.changes.length);
    for (let i = 0; i < 10; i++) await demo.sql(`SELECT 1 FROM inventory.adjust_stock(${1 + (i % 12)}, 3)`);
    await new Promise((r) => setTimeout(r, 1500)); // the writer goes on too
    assert.equal(await page.evaluate(() => window.inventory.changes.length), seenOffline, 'nothing arrives while offline');
    assert.notEqual(await page.locator('#state').getAttribute('data-state'), 'connected', 'the page shows it is offline');
    await context.setOffline(false);
    await page.waitForFunction(() => window.inventory.state === 'connected', null, { timeout: 15_000 });
    await demo.writer({ running: false });
    const expected = await dbProducts(demo);
    await waitFor(async () => JSON.stringify(await products(page)) === JSON.stringify(expected), 10_000, 'the page to catch up with the database');
    const { changes, syncs } = await page.evaluate(() => ({ changes: window.inventory.changes, syncs: window.inventory.syncs }));
    assert.ok(changes.length >= seenOffline + 10 + 10, `the offline updates arrived (${changes.length - seenOffline} after going offline)`);
    assert.equal(syncs.length, 1, `no resync was needed: ${JSON.stringify(syncs)}`);
    assertContiguous(changes, 'across the offline period');
    // Nothing after the page's position: it holds the head of the channel.
    const last = changes.at(-1);
    const after = await (await fetch(new URL(`v1/channels/inventory:products/messages?after=${last.serial}`, demo.page))).json();
    assert.equal(after.epoch, last.epoch);
    assert.deepEqual(after.items, [], 'the page is at the head of the channel');

    // 4. A reload mid-stream ends on the latest state.
    await demo.writer({ running: true, interval_ms: 50 });
    await new Promise((r) => setTimeout(r, 700));
    await page.reload();
    await page.waitForFunction(() => document.body.dataset.ready === 'true', null, { timeout: 20_000 });
    await waitFor(async () => (await page.evaluate(() => window.inventory.changes.length)) >= 5, 10_000, 'live changes after the reload');
    await demo.writer({ running: false });
    const latest = await dbProducts(demo);
    await waitFor(async () => JSON.stringify(await products(page)) === JSON.stringify(latest), 10_000, 'the reloaded page to reach the latest state');
    assert.equal(await page.locator('#transport').textContent(), 'websocket', 'the reloaded page connects over WebSocket');
    const reloaded = await page.evaluate(() => window.inventory.changes);
    assertContiguous(reloaded, 'after the reload');
    const tail = await (await fetch(new URL(`v1/channels/inventory:products/messages?after=${reloaded.at(-1).serial}`, demo.page))).json();
    assert.deepEqual(tail.items, [], 'the reloaded page is at the head of the channel');

    assert.deepEqual(pageErrors, [], 'no errors on the page');
  } catch (e) {
    console.log(demo.log.slice(-40).join('\n'));
    throw e;
  } finally {
    await browser.close();
    await demo.stop();
  }
});
