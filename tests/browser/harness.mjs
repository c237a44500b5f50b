// Shared pieces of the browser tests: the real tidings binary, a TCP proxy that can cut every
// connection, and headless Chromium (Debian's package) driven by playwright-core.

import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, existsSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');

export const KEY = 'browser:browser-secret-1';

/** The tidings binary: TIDINGS_BIN, or the debug build `cargo test` leaves behind. */
export function binary() {
  const bin = process.env.TIDINGS_BIN ?? path.join(root, 'target', 'debug', 'tidings');
  if (!existsSync(bin)) {
    throw new Error(`${bin} does not exist: run \`cargo build\` first or set TIDINGS_BIN`);
  }
  return bin;
}

/** Start `tidings serve` on a free port; resolves once it listens. */
export async function startTidings(extraArgs = []) {
  const dataDir = mkdtempSync(path.join(tmpdir(), 'tidings-browser-'));
  const child = spawn(
    binary(),
    ['serve', '--listen', '127.0.0.1:0', '--log-format', 'json', '--data-dir', dataDir, '--api-key', KEY, ...extraArgs],
    { stdio: ['ignore', 'ignore', 'pipe'] },
  );
  const lines = readline.createInterface({ input: child.stderr });
  const addr = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('tidings did not start within 10 s')), 10_000);
    child.once('exit', (code) => reject(new Error(`tidings exited with ${code}`)));
    lines.on('line', (line) => {
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
      await new Promise((r) => child.once('exit', r));
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
}

/** A TCP proxy to `target` ("host:port") whose `cut()` destroys every open connection. */
export async function startProxy(target) {
  const [host, port] = [target.slice(0, target.lastIndexOf(':')), Number(target.slice(target.lastIndexOf(':') + 1))];
  const open = new Set();
  const server = net.createServer((inbound) => {
    const outbound = net.connect(port, host);
    const pair = { inbound, outbound };
    open.add(pair);
    inbound.pipe(outbound);
    outbound.pipe(inbound);
    const close = () => {
      open.delete(pair);
      inbound.destroy();
      outbound.destroy();
    };
    inbound.on('error', close);
    outbound.on('error', close);
    inbound.on('close', close);
    outbound.on('close', close);
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  const { port: proxyPort } = server.address();
  return {
    base: `http://127.0.0.1:${proxyPort}`,
    cut() {
      for (const { inbound, outbound } of open) {
        inbound.destroy();
        outbound.destroy();
      }
      open.clear();
    },
    async close() {
      this.cut();
      await new Promise((r) => server.close(r));
    },
  };
}

/** Headless Chromium from Debian's package, with the flags this closed network needs. */
export async function launchBrowser() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
}

/** Publish messages over REST; resolves to their serials. */
export async function publish(base, channel, messages) {
  const resp = await fetch(`${base}/v1/channels/${channel}/messages`, {
    method: 'POST',
    headers: { authorization: `Bearer ${KEY}`, 'content-type': 'application/json' },
    body: JSON.stringify(messages),
  });
  if (resp.status !== 201) {
    throw new Error(`publish answered ${resp.status}: ${await resp.text()}`);
  }
  return (await resp.json()).serials;
}

/** Poll `fn` until it returns a truthy value, or fail after `ms`. */
export async function waitFor(fn, ms, what) {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}
