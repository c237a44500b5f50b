// A real browser's own EventSource reconnect, sending Last-Event-ID, resumes a Tidings SSE
// stream after the connection is cut, with no loss and no duplicate.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { KEY, launchBrowser, publish, startProxy, startTidings, waitFor } from './harness.mjs';

test('EventSource resumes with Last-Event-ID after the connection is cut', async () => {
  const tidings = await startTidings();
  const proxy = await startProxy(tidings.addr);
  const browser = await launchBrowser();
  try {
    const page = await browser.newPage();
    // Any page of the same origin will do: the test runs its script there.
    await page.goto(`${proxy.base}/healthz`);
    await page.evaluate((key) => {
      window.got = [];
      window.attached = [];
      window.opens = 0;
      const es = new EventSource(`/v1/sse?channel=browser:1&access_token=${encodeURIComponent(key)}`);
      es.addEventListener('open', () => { window.opens += 1; });
      es.addEventListener('attached', (e) => window.attached.push(JSON.parse(e.data)));
      es.addEventListener('message', (e) => window.got.push({ id: e.lastEventId, frame: JSON.parse(e.data) }));
    }, KEY);
    await waitFor(() => page.evaluate(() => window.attached.length === 1), 10_000, 'the first attach');

    await publish(tidings.base, 'browser:1', Array.from({ length: 10 }, (_, i) => ({ data: i })));
    await waitFor(() => page.evaluate(() => window.got.length >= 10), 10_000, 'the first ten messages');

    // The network drops; messages keep coming while the browser is away.
    proxy.cut();
    await publish(tidings.base, 'browser:1', Array.from({ length: 10 }, (_, i) => ({ data: 10 + i })));
    await waitFor(() => page.evaluate(() => window.got.length >= 20), 20_000, 'the browser to reconnect and catch up');
    // Give a duplicate, if any, the time to show up.
    await new Promise((r) => setTimeout(r, 300));

    const { got, attached, opens } = await page.evaluate(() => ({
      got: window.got,
      attached: window.attached,
      opens: window.opens,
    }));
    assert.ok(opens >= 2, `the browser reconnected (${opens} opens)`);
    assert.equal(attached.length, 2, 'one attach per connection');
    assert.equal(attached[0].resumed, false);
    assert.equal(attached[1].resumed, true, 'the reconnect resumed from Last-Event-ID');
    assert.deepEqual(
      got.map((m) => m.frame.serial),
      Array.from({ length: 20 }, (_, i) => i + 1),
      'every message once, in order',
    );
    assert.deepEqual(got.map((m) => m.frame.data), Array.from({ length: 20 }, (_, i) => i));
    assert.match(got.at(-1).id, /^browser:1=[0-9a-f]+:20$/, 'the event id carries the position');
  } finally {
    await browser.close();
    await proxy.close();
    await tidings.stop();
  }
});
