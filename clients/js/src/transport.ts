// The three transports. Each turns its wire into the WebSocket protocol's server frames and hands
// them to the client through a `Link`; the client owns positions, dedup, reconnection and fallback.

import { TidingsError, fromBody } from './errors.js';
import type { Position } from './subscription.js';

/** Transports, in the default order of preference. */
export type TransportName = 'websocket' | 'sse' | 'poll';

/** A channel a transport should stream, and where from. */
export interface Wanted {
  channel: string;
  from?: Position;
  rewind?: number;
}

/** What a transport needs from the client, and how it reports back. Callbacks of a replaced transport are ignored. */
export interface Link {
  /** Base URL, `http(s)://host[:port]`, no trailing slash. */
  url: string;
  /** The current credential (API key or token), if any. */
  credential(): string | undefined;
  /** Channels to stream now, each with its position (SSE and long-polling ask on every request). */
  wanted(): Wanted[];
  /** A server frame (`connected`, `attached`, `message`, `error`, ...). */
  frame(frame: any): void;
  /** Bytes arrived (SSE keep-alive comments): the connection is alive. */
  alive(): void;
  /** The transport is connected (SSE and long-poll; WebSocket's `connected` frame says it). */
  open(): void;
  /** The transport ended, with a WebSocket close code or an error. Called at most once. */
  close(code?: number, error?: TidingsError): void;
  fetch: typeof fetch;
  WebSocket?: any;
  /** Long-poll wait in milliseconds. */
  pollWait: number;
}

/** A running transport. `send` exists only on WebSocket; `update` re-requests after the channel set changed. */
export interface Conn {
  send?(frame: object): boolean;
  update(): void;
  close(): void;
}

const asError = (e: any) =>
  e instanceof TidingsError ? e : new TidingsError('network', `network error: ${e?.message ?? e}`);

async function httpError(r: Response): Promise<TidingsError> {
  let body: any;
  try {
    body = await r.json();
  } catch {
    // not the protocol's JSON error (a proxy's page, say)
  }
  return fromBody(body, r.status);
}

function streamUrl(l: Link, path: string, w: Wanted[]): string {
  const q = w.map((c) => 'channel=' + encodeURIComponent(c.channel));
  const from = w
    .filter((c) => c.from)
    .map((c) => `${c.channel}=${c.from!.epoch}:${c.from!.serial}`)
    .join(',');
  if (from) q.push('from=' + encodeURIComponent(from));
  // One rewind per request: the largest asked for, applied to channels without a position.
  const rewind = Math.max(-1, ...w.map((c) => c.rewind ?? -1));
  if (rewind >= 0) q.push('rewind=' + rewind);
  return `${l.url}${path}?${q.join('&')}`;
}

function headers(l: Link): Record<string, string> {
  const c = l.credential();
  return c ? { authorization: 'Bearer ' + c } : {};
}

/** WebSocket at `/v1/connect`, credentials as `access_token` (browsers cannot set headers on it). */
export function websocket(l: Link): Conn {
  const WS = l.WebSocket ?? (globalThis as any).WebSocket;
  if (!WS) {
    setTimeout(() => l.close(undefined, new TidingsError('network', 'no WebSocket implementation: pass `WebSocket` in the options')));
    return { update() {}, close() {} };
  }
  const c = l.credential();
  const ws = new WS(l.url.replace(/^http/, 'ws') + '/v1/connect' + (c ? '?access_token=' + encodeURIComponent(c) : ''));
  ws.onmessage = (e: MessageEvent) => {
    let f;
    try {
      f = JSON.parse(e.data);
    } catch {
      return l.close(undefined, new TidingsError('bad_response', 'the server sent a frame that is not JSON'));
    }
    l.frame(f);
  };
  ws.onclose = (e: CloseEvent) => l.close(e.code);
  // `close` should follow `error`, but Node 20's WebSocket sometimes never sends it (a refused
  // upgrade, a cut during the handshake): end the connection ourselves unless it came.
  ws.onerror = () => setTimeout(() => l.close(1006), 100);
  return {
    send: (f) => ws.readyState === 1 && (ws.send(JSON.stringify(f)), true),
    update() {},
    close() {
      ws.onclose = ws.onmessage = null;
      try {
        ws.close();
      } catch {
        // already closed
      }
    },
  };
}

/**
 * Server-Sent Events at `/v1/sse`, read with `fetch` streaming (browsers, Node 18+). Where a
 * response body cannot be streamed (React Native), this fails to connect and the client falls back.
 */
export function sse(l: Link): Conn {
  let ctl: AbortController | undefined;
  let gen = 0;
  let opened = false;
  const fail = (me: number, code?: number, e?: TidingsError) => me === gen && (gen++, l.close(code, e));
  const start = async () => {
    ctl?.abort();
    const me = ++gen;
    const c = (ctl = new AbortController());
    await null;
    if (me !== gen) return;
    const w = l.wanted();
    try {
      if (!w.length) return opened || ((opened = true), l.open());
      const r = await l.fetch(streamUrl(l, '/v1/sse', w), {
        headers: { ...headers(l), accept: 'text/event-stream' },
        signal: c.signal,
      });
      if (me !== gen) return;
      if (!r.ok) throw await httpError(r);
      const reader = r.body?.getReader?.();
      if (!reader) throw new TidingsError('network', 'this platform cannot stream a response body');
      if (!opened) {
        opened = true;
        l.open();
      }
      const dec = new TextDecoder();
      let buf = '';
      let event = '';
      let data = '';
      for (;;) {
        const { done, value } = await reader.read();
        if (me !== gen) return;
        if (done) return fail(me, 1000);
        l.alive();
        buf += dec.decode(value, { stream: true });
        let i;
        while ((i = buf.indexOf('\n')) >= 0) {
          const line = buf.slice(0, i).replace(/\r$/, '');
          buf = buf.slice(i + 1);
          if (line === '') {
            if (event === 'going_away') return fail(me, 1001);
            if (data) {
              const f = JSON.parse(data.slice(0, -1));
              if (f.type === 'error' && (f.code === 'token_expired' || f.code === 'token_revoked')) return fail(me, f.code === 'token_revoked' ? 4002 : 4001, fromBody(f));
              l.frame(f);
              if (me !== gen) return;
            }
            event = data = '';
          } else if (line.startsWith('event:')) event = line.slice(6).trim();
          else if (line.startsWith('data:')) data += line.slice(line[5] === ' ' ? 6 : 5) + '\n';
        }
      }
    } catch (e) {
      fail(me, undefined, asError(e));
    }
  };
  start();
  return {
    update: start,
    close() {
      gen++;
      ctl?.abort();
    },
  };
}

/** Long-polling at `/v1/poll`: each answer re-attaches, so continuity is checked on every one. */
export function poll(l: Link): Conn {
  let ctl: AbortController | undefined;
  let gen = 0;
  let opened = false;
  const start = async () => {
    ctl?.abort();
    const me = ++gen;
    const c = (ctl = new AbortController());
    await null;
    while (me === gen) {
      const w = l.wanted();
      if (!w.length) return opened || ((opened = true), l.open());
      // The first request answers at once, so the connection is known to work.
      const wait = opened ? l.pollWait : 0;
      const timer = setTimeout(() => c.abort(), wait + 10_000);
      try {
        const r = await l.fetch(`${streamUrl(l, '/v1/poll', w)}&wait=${wait}ms`, { headers: headers(l), signal: c.signal });
        if (!r.ok) throw await httpError(r);
        const body = await r.json();
        if (me !== gen) return;
        if (!opened) {
          opened = true;
          l.open();
        }
        for (const f of [...body.attached, ...body.messages]) {
          l.frame(f);
          if (me !== gen) return;
        }
      } catch (e) {
        if (me === gen) {
          gen++;
          l.close(undefined, asError(e));
        }
      } finally {
        clearTimeout(timer);
      }
    }
  };
  start();
  return {
    update: start,
    close() {
      gen++;
      ctl?.abort();
    },
  };
}
