// Shared pieces of the SDK tests: the real tidings binary, a TCP proxy that cuts, freezes, blocks
// paths and changes its target, REST helpers, and the built SDK (dist/).

import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import { afterEach } from 'node:test';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', '..');

export const KEY = 'sdk:sdk-secret-1';

/** The tidings binary: TIDINGS_BIN, or the debug build. */
export function binary() {
  const bin = process.env.TIDINGS_BIN ?? path.join(root, 'target', 'debug', 'tidings');
  if (!existsSync(bin)) throw new Error(`${bin} does not exist: run \`cargo build --bin tidings\` first or set TIDINGS_BIN`);
  return bin;
}

/** Start `tidings serve` on a free port with a fresh data directory; resolves once it listens. */
export async function startTidings(extraArgs = []) {
  const dataDir = mkdtempSync(path.join(tmpdir(), 'tidings-js-'));
  const child = spawn(
    binary(),
    ['serve', '--listen', '127.0.0.1:0', '--log-format', 'json', '--data-dir', dataDir, '--api-key', KEY, ...extraArgs],
    { stdio: ['ignore', 'ignore', 'pipe'] },
  );
  const lines = readline.createInterface({ input: child.stderr });
  const exited = new Promise((r) => child.once('exit', r));
  const tail = [];
  const addr = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('tidings did not start within 10 s')), 10_000);
    child.once('exit', (code) => reject(new Error(`tidings exited with ${code}: ${tail.join('\n')}`)));
    lines.on('line', (line) => {
      tail.push(line);
      if (tail.length > 5) tail.shift();
      try {
        const v = JSON.parse(line);
        if (v.message === 'tidings listening') {
          clearTimeout(timer);
          resolve(v.addr);
        }
      } catch {
        // not a JSON log line
      }
    });
  });
  return {
    addr,
    base: `http://${addr}`,
    async stop() {
      child.kill('SIGTERM');
      await exited;
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
}

/**
 * A TCP proxy to `target` ("host:port"). `cut()` destroys every open connection (`cuts` counts
 * those that hit at least one); `freeze()` keeps
 * them open but silently drops what they carry (a dead network without FIN or RST); `block(re)`
 * answers 403 to HTTP requests whose request line matches `re`; `retarget(addr)` sends new
 * connections elsewhere.
 */
export async function startProxy(target) {
  const open = new Set();
  let blocked = null;
  let cuts = 0;
  const split = (t) => [t.slice(0, t.lastIndexOf(':')), Number(t.slice(t.lastIndexOf(':') + 1))];
  const server = net.createServer((inbound) => {
    const [host, port] = split(target);
    const outbound = net.connect(port, host);
    const pair = { inbound, outbound, frozen: false };
    open.add(pair);
    inbound.on('data', (chunk) => {
      if (pair.frozen) return;
      const line = /^[A-Z]+ \S+ HTTP\/1\.1/.exec(chunk.subarray(0, 2048).toString('latin1'));
      if (line && blocked?.test(line[0])) {
        inbound.end('HTTP/1.1 403 Forbidden\r\ncontent-type: text/plain\r\ncontent-length: 7\r\nconnection: close\r\n\r\nblocked');
        outbound.destroy();
        return;
      }
      outbound.write(chunk);
    });
    outbound.on('data', (chunk) => {
      if (!pair.frozen) inbound.write(chunk);
    });
    const close = () => {
      open.delete(pair);
      inbound.destroy();
      outbound.destroy();
    };
    for (const s of [inbound, outbound]) {
      s.on('error', close);
      s.on('close', close);
    }
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  return {
    base: `http://127.0.0.1:${server.address().port}`,
    get cuts() {
      return cuts;
    },
    get connections() {
      return open.size;
    },
    /** Cuts that destroyed at least one open connection. */
    cut() {
      if (open.size > 0) cuts++;
      for (const { inbound, outbound } of open) {
        inbound.destroy();
        outbound.destroy();
      }
      open.clear();
    },
    freeze() {
      for (const p of open) p.frozen = true;
    },
    block(re) {
      blocked = re;
    },
    retarget(addr) {
      target = addr;
    },
    async close() {
      this.cut();
      await new Promise((r) => server.close(r));
    },
  };
}

/** REST publish with the API key; resolves to the serials. */
export async function publish(base, channel, messages) {
  const resp = await fetch(`${base}/v1/channels/${channel}/messages`, {
    method: 'POST',
    headers: { authorization: `Bearer ${KEY}`, 'content-type': 'application/json' },
    body: JSON.stringify(messages),
  });
  if (resp.status !== 201) throw new Error(`publish answered ${resp.status}: ${await resp.text()}`);
  return (await resp.json()).serials;
}

/** A token from `POST /v1/tokens` (HS256, signed by the server with the API key). */
export async function issueToken(base, body = {}) {
  const resp = await fetch(`${base}/v1/tokens`, {
    method: 'POST',
    headers: { authorization: `Bearer ${KEY}`, 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });
  if (resp.status !== 201) throw new Error(`/v1/tokens answered ${resp.status}: ${await resp.text()}`);
  return resp.json();
}

/** Poll `fn` until it returns a truthy value, or fail after `ms`. */
export async function waitFor(fn, ms, what) {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(20);
  }
}

const tracked = [];

/**
 * Close `x` (a client, proxy or server: anything with `close()` or `stop()`) after the current
 * test, even when it fails: a client left running keeps retrying and the test file never exits.
 */
export function track(x) {
  tracked.push(x);
  return x;
}

afterEach(async () => {
  for (const x of tracked.splice(0).reverse()) await (x.close ?? x.stop).call(x);
});

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Record a client's state changes. */
export function recordStates(client) {
  const states = [];
  client.on('state', (s) => states.push(s));
  return states;
}
