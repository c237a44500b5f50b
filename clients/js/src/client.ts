import { Emitter } from './emitter.js';
import { TidingsError, bad, checkChannel, fromBody } from './errors.js';
import type { PositionStorage } from './storage.js';
import { Subscription } from './subscription.js';
import type { Attached, ContinuityLost, Message, Owner, Position } from './subscription.js';
import { poll, sse, websocket } from './transport.js';
import type { Conn, Link, TransportName, Wanted } from './transport.js';

/** Connection states. `disconnected`: retrying soon; `suspended`: offline, or down longer than `suspendAfterMs`, still retrying. */
export type ConnectionState = 'initialized' | 'connecting' | 'connected' | 'disconnected' | 'suspended' | 'closed' | 'failed';

export interface StateChange {
  state: ConnectionState;
  previous: ConnectionState;
  /** The transport in use once `connected`, or the one being tried while `connecting`. */
  transport?: TransportName;
  /** Why the connection ended, when it did. */
  error?: TidingsError;
  /** Milliseconds until the next attempt (`disconnected`, `suspended`). */
  retryIn?: number;
}

/** What `getToken` answers: a token (its `exp` claim gives the expiry) or a token with its expiry in ms. */
export type TokenAnswer = string | { token: string; expiresAt?: number };

export interface ClientOptions {
  /** The server's base URL, `https://sync.example.com` (`ws(s)://` is derived for WebSocket). */
  url: string;
  /** An API key `KEY_ID:SECRET` (servers and trusted apps only: it is a secret). */
  key?: string;
  /** A signed token. Without `getToken` it cannot be renewed: the client fails when it expires. */
  token?: string;
  /** Fetches a fresh token: on connect, when the token expired, and before expiry to renew it in-band. */
  getToken?: () => TokenAnswer | Promise<TokenAnswer>;
  /** Transports to try, in order, when one fails to connect. Default: websocket, sse, poll. */
  transports?: TransportName[];
  /** Where channel positions persist (default: nowhere, memory only). */
  storage?: PositionStorage;
  /** Prefix of the storage keys (default `tidings:`). */
  storagePrefix?: string;
  /** Reconnect delays: full jitter over `initialMs × 2^attempt`, capped at `maxMs` (defaults 500, 30000). */
  backoff?: { initialMs?: number; maxMs?: number };
  /** Time a transport may take to connect before the next one is tried (default 10000). */
  connectTimeoutMs?: number;
  /** The server's heartbeat interval for SSE, until a WebSocket `connected` frame tells it (default 15000). */
  heartbeatMs?: number;
  /** A connection silent for `heartbeatFactor × heartbeat_ms` is dead (default 2.5). */
  heartbeatFactor?: number;
  /** How long a long-poll waits (default 25000). */
  pollWaitMs?: number;
  /** Down this long, the state becomes `suspended` (default 120000). */
  suspendAfterMs?: number;
  /** Renew a token this long before it expires (default: a quarter of its remaining life, at most 60 s). */
  renewBeforeMs?: number;
  /** Give publishes without an `id` a generated one, so retries across reconnects land once (default true). */
  idempotentPublish?: boolean;
  /** Connect on the first `attach` (default true). */
  autoConnect?: boolean;
  /** A WebSocket constructor where there is no global one (Node 20 without `--experimental-websocket`: the `ws` package). */
  WebSocket?: any;
  /** A `fetch` implementation (default: the global one). */
  fetch?: typeof fetch;
}

export interface AttachOptions {
  /** Resume after this position. */
  from?: Position;
  /** Start this many messages before the head (needs the `history` capability). */
  rewind?: number;
  /** Resume from the stored position when there is one and neither `from` nor `rewind` is given (default true). */
  resume?: boolean;
}

/** A message to publish: `data` and/or `name`; `id` makes retries idempotent. */
export interface OutgoingMessage {
  name?: string;
  data?: unknown;
  id?: string;
  headers?: Record<string, unknown>;
}

export interface PublishResult {
  channel: string;
  serial: number;
  /** True when the id was already in the channel (WebSocket only; REST does not say). */
  duplicate?: boolean;
}

export interface ClientEvents {
  state: StateChange;
  message: Message;
  attached: Attached;
  continuity_lost: ContinuityLost;
  error: TidingsError;
}

interface Live extends Conn {
  kind: TransportName;
  open: boolean;
  at: number;
  idle: number;
}

interface Pending {
  frame: any;
  resolve(r: PublishResult): void;
  reject(e: TidingsError): void;
  busy?: boolean;
}

const TRANSPORTS = { websocket, sse, poll };
const FATAL = ['unauthorized', 'forbidden', 'origin_not_allowed', 'invalid_request', 'invalid_channel'];

/** Expiry (ms) of a JWT, from its `exp` claim. */
function jwtExp(token: string): number | undefined {
  try {
    const p = token.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
    const exp = JSON.parse(atob(p)).exp;
    return typeof exp === 'number' ? exp * 1000 : undefined;
  } catch {
    return undefined;
  }
}

/**
 * A connection to a Tidings server carrying any number of channels. It reconnects with
 * exponential backoff and full jitter, resumes every channel after its last serial, drops
 * duplicates, falls back from WebSocket to SSE to long-polling when a transport fails to connect,
 * and tells the app when continuity was lost.
 */
export class TidingsClient extends Emitter<ClientEvents> implements Owner {
  /** The connection state; `state` events announce each change. */
  state: ConnectionState = 'initialized';
  /** The transport of the current connection. */
  transport?: TransportName;
  /** The server's id of the current WebSocket connection. */
  connectionId?: string;

  private o: Required<Pick<ClientOptions, 'transports' | 'connectTimeoutMs' | 'heartbeatFactor' | 'pollWaitMs' | 'suspendAfterMs'>> & ClientOptions;
  private url: string;
  private subs = new Map<string, Subscription>();
  private conn?: Live;
  private ti = 0;
  private streak = 0;
  private attempts = 0;
  private authRetried = false;
  private downSince = Date.now();
  private heartbeatMs: number;
  private tok?: { token: string; exp?: number };
  private pubs = new Map<string, Pending>();
  private ref = 0;
  private idPrefix = Math.random().toString(36).slice(2, 10);
  private dirty = new Set<Subscription>();
  private timers: Record<'retry' | 'idle' | 'renew' | 'persist', any> = {} as any;
  private unlisten?: () => void;

  constructor(options: ClientOptions) {
    super();
    if (!options || typeof options.url !== 'string' || !/^https?:\/\//.test(options.url)) bad('`url` must be the server base URL, http(s)://host[:port]');
    const creds = [options.key, options.token, options.getToken].filter((c) => c !== undefined).length;
    if (creds > 1) bad('give one of `key`, `token` or `getToken`');
    if (options.key !== undefined && !/^[^:]+:.+$/.test(options.key)) bad('`key` must be KEY_ID:SECRET');
    const transports = options.transports ?? ['websocket', 'sse', 'poll'];
    if (!transports.length || transports.some((t) => !(t in TRANSPORTS))) bad('`transports` lists websocket, sse and/or poll');
    this.o = { connectTimeoutMs: 10_000, heartbeatFactor: 2.5, pollWaitMs: 25_000, suspendAfterMs: 120_000, ...options, transports };
    this.url = options.url.replace(/\/+$/, '');
    this.heartbeatMs = options.heartbeatMs ?? 15_000;
  }

  /** Connect (attach does it too unless `autoConnect: false`). Also revives a `failed` client. */
  connect(): void {
    if (this.state === 'closed') throw new TidingsError('closed', 'this client was closed; create a new one');
    if (this.conn || this.timers.retry) return;
    this.listen();
    this.attempts = 0;
    this.authRetried = false;
    this.attempt();
  }

  /**
   * Attach `channel`: messages after `from`, or the last `rewind` ones, or (by default) after the
   * stored position if there is one, else only new messages.
   */
  attach<T = any>(channel: string, options: AttachOptions = {}): Subscription<T> {
    checkChannel(channel);
    if (this.state === 'closed') throw new TidingsError('closed', 'this client was closed');
    if (this.subs.has(channel)) bad(`channel ${channel} is already attached: use its subscription, or detach it first`);
    const { from, rewind, resume = true } = options;
    if (from && rewind !== undefined) bad('give `from` or `rewind`, not both');
    if (from && (typeof from.epoch !== 'string' || !Number.isSafeInteger(from.serial) || from.serial < 0)) bad('`from` must be {epoch: string, serial: whole number}');
    if (rewind !== undefined && !(Number.isSafeInteger(rewind) && rewind >= 0)) bad('`rewind` must be a whole number');
    const sub = new Subscription<T>(this, channel);
    sub._pos = from && { epoch: from.epoch, serial: from.serial };
    sub._rewind = rewind;
    this.subs.set(channel, sub);
    const store = this.o.storage;
    if (store && !from && rewind === undefined && resume) {
      sub._loaded = false;
      (async () => store.get(this.key(channel)))()
        .then((text) => {
          const p = text && JSON.parse(text);
          if (!sub._pos && typeof p?.epoch === 'string' && Number.isSafeInteger(p.serial)) sub._pos = { epoch: p.epoch, serial: p.serial };
        })
        .catch((e) => this.emit('error', new TidingsError('failed', `cannot read the stored position of ${channel}: ${e}`, channel)))
        .then(() => {
          sub._loaded = true;
          this.changed(sub);
        });
    } else this.changed(sub);
    if (this.o.autoConnect !== false && (this.state === 'initialized' || this.state === 'failed')) this.connect();
    return sub;
  }

  /** Publish a message: over the WebSocket when connected by it (answered once durable), else REST. */
  publish(channel: string, message: OutgoingMessage): Promise<PublishResult> {
    checkChannel(channel);
    if (!message || (message.data === undefined && message.name == null)) bad('a message needs `data` or a `name`');
    if (message.name != null && typeof message.name !== 'string') bad('`name` must be a string');
    if (this.state === 'closed') return Promise.reject(new TidingsError('closed', 'this client was closed'));
    const id = message.id ?? (this.o.idempotentPublish === false ? undefined : `${this.idPrefix}-${Date.now().toString(36)}-${++this.ref}`);
    const ref = String(++this.ref);
    return new Promise((resolve, reject) => {
      const p: Pending = { frame: { type: 'publish', channel, ...message, id, ref }, resolve, reject };
      this.pubs.set(ref, p);
      this.send(p);
    });
  }

  /** Read a channel's history after `after` (REST): `{epoch, items, next}`. */
  async history(channel: string, { after = 0, limit = 100 } = {}): Promise<{ channel: string; epoch: string; items: Omit<Message, 'channel' | 'epoch'>[]; next: number | null }> {
    checkChannel(channel);
    return this.rest('GET', `/v1/channels/${channel}/messages?after=${after}&limit=${limit}`);
  }

  /** Close the connection, end every subscription and reject publishes still waiting. Resolves once positions are stored. */
  async close(): Promise<void> {
    if (this.state === 'closed') return;
    this.drop();
    this.setState('closed');
    this.unlisten?.();
    for (const t of Object.values(this.timers)) clearTimeout(t);
    for (const p of this.pubs.values()) p.reject(new TidingsError('closed', 'the client was closed before the publish was acknowledged'));
    this.pubs.clear();
    await this.flush();
    for (const sub of this.subs.values()) sub._emit('detached', undefined);
    this.subs.clear();
  }

  // ---- Owner: what subscriptions call ----

  /** @internal A subscription's start changed (attach, seek, stored position read). */
  changed(sub: Subscription): void {
    const c = this.conn;
    if (!c?.open || !sub._loaded || this.subs.get(sub.channel) !== sub) return;
    if (c.send) this.sendAttach(sub);
    else c.update();
  }

  /** @internal */
  detach(sub: Subscription): void {
    if (this.subs.get(sub.channel) !== sub) return;
    this.subs.delete(sub.channel);
    this.dirty.delete(sub);
    const c = this.conn;
    if (c?.open && sub._loaded) {
      if (c.send) c.send({ type: 'detach', channel: sub.channel });
      else c.update();
    }
    sub._emit('detached', undefined);
  }

  /** @internal */
  delivered(sub: Subscription, m: Message): void {
    this.emit('message', m);
    this.persist(sub);
  }

  /** @internal */
  lost(sub: Subscription, event: ContinuityLost | undefined, attached: Attached): void {
    this.emit('attached', attached);
    if (event) this.emit('continuity_lost', event);
    this.persist(sub);
  }

  // ---- connection ----

  private key(channel: string) {
    return (this.o.storagePrefix ?? 'tidings:') + channel;
  }

  private setState(state: ConnectionState, extra: Partial<StateChange> = {}) {
    const previous = this.state;
    if (previous === state && state !== 'disconnected' && state !== 'suspended') return;
    this.state = state;
    this.emit('state', { state, previous, ...extra });
  }

  private delay(): number {
    const { initialMs = 500, maxMs = 30_000 } = this.o.backoff ?? {};
    return 1 + Math.floor(Math.random() * Math.min(maxMs, initialMs * 2 ** Math.min(this.attempts++, 30)));
  }

  private async credential(): Promise<string | undefined> {
    const o = this.o;
    if (!o.getToken) return o.token ?? o.key;
    if (!this.tok || (this.tok.exp && this.tok.exp - Date.now() < 5000)) await this.refresh();
    return this.tok!.token;
  }

  private async refresh() {
    const a = await this.o.getToken!();
    const token = typeof a === 'string' ? a : a?.token;
    if (typeof token !== 'string' || !token) throw new TidingsError('invalid_options', '`getToken` must answer a token or {token, expiresAt}');
    this.tok = { token, exp: (typeof a === 'string' ? undefined : a.expiresAt) ?? jwtExp(token) };
  }

  private async attempt() {
    this.timers.retry = undefined;
    const kind = this.o.transports[this.ti];
    this.setState('connecting', { transport: kind });
    try {
      await this.credential();
    } catch (e: any) {
      const err = e instanceof TidingsError ? e : new TidingsError('failed', `getToken failed: ${e?.message ?? e}`);
      this.emit('error', err);
      return this.retry(err, this.delay());
    }
    if (this.state !== 'connecting' || this.conn) return;
    const c = { kind, open: false, at: 0, idle: Infinity } as Live;
    const mine = <A extends any[]>(f: (...a: A) => void) => (...a: A) => {
      if (this.conn === c) f.apply(this, a);
    };
    const link: Link = {
      url: this.url,
      credential: () => (this.o.getToken ? this.tok?.token : (this.o.token ?? this.o.key)),
      wanted: () => this.wanted(),
      frame: mine(this.frame),
      alive: mine(this.alive),
      open: mine(this.opened),
      close: mine(this.closed),
      fetch: (...a) => (this.o.fetch ?? fetch)(...a),
      WebSocket: this.o.WebSocket,
      pollWait: this.o.pollWaitMs,
    };
    this.conn = c;
    if (kind !== 'websocket') c.idle = kind === 'sse' ? this.heartbeatMs * this.o.heartbeatFactor : Infinity;
    Object.assign(c, TRANSPORTS[kind](link));
    this.arm(this.o.connectTimeoutMs);
  }

  private wanted(): Wanted[] {
    const w: Wanted[] = [];
    for (const sub of this.subs.values()) {
      if (!sub._loaded) continue;
      sub._pending = true;
      w.push({ channel: sub.channel, from: sub._pos, rewind: sub._pos ? undefined : sub._rewind });
    }
    return w;
  }

  private sendAttach(sub: Subscription) {
    sub._pending = true;
    const f: any = { type: 'attach', channel: sub.channel };
    if (sub._pos) f.from = sub._pos;
    else if (sub._rewind !== undefined) f.rewind = sub._rewind;
    this.conn!.send!(f);
  }

  /** Restart the dead-connection timer: `ms` without a frame and the connection is dropped. */
  private arm(ms: number) {
    clearTimeout(this.timers.idle);
    if (ms < Infinity)
      this.timers.idle = setTimeout(() => this.closed(undefined, new TidingsError('network', `no sign of life from the server for ${ms} ms`)), ms);
  }

  private alive() {
    const c = this.conn!;
    this.arm(c.open ? c.idle : this.o.connectTimeoutMs);
  }

  private opened() {
    const c = this.conn!;
    c.open = true;
    c.at = Date.now();
    this.streak = this.ti;
    this.authRetried = false;
    this.transport = c.kind;
    this.alive();
    this.setState('connected', { transport: c.kind });
    if (c.send) for (const sub of this.subs.values()) if (sub._loaded) this.sendAttach(sub);
    for (const p of this.pubs.values()) this.send(p);
    this.scheduleRenew();
  }

  private frame(f: any) {
    const c = this.conn!;
    this.alive();
    const sub = this.subs.get(f.channel);
    switch (f.type) {
      case 'connected':
        this.connectionId = f.connection_id;
        this.heartbeatMs = f.heartbeat_ms || this.heartbeatMs;
        c.idle = this.heartbeatMs * this.o.heartbeatFactor;
        // On SSE the stream is already open when its `connected` event arrives.
        return c.open ? undefined : this.opened();
      case 'attached':
        return sub?._attached(f);
      case 'message':
        return sub?._message(f);
      case 'ack': {
        const p = this.pubs.get(f.ref);
        this.pubs.delete(f.ref);
        return p?.resolve({ channel: f.channel, serial: f.serial, duplicate: f.duplicate });
      }
      case 'authorized':
        if (this.tok && f.expires_at) this.tok.exp = f.expires_at;
        return this.scheduleRenew();
      case 'error': {
        const e = fromBody(f);
        const p = this.pubs.get(f.ref);
        if (p) {
          this.pubs.delete(f.ref);
          return p.reject(e);
        }
        // An attach refused, or a channel the log cannot serve: the channel's problem.
        if (sub && !f.ref) {
          if (sub._pending) {
            this.subs.delete(sub.channel);
            sub._emit('detached', undefined);
          }
          return sub._emit('error', e);
        }
        return this.emit('error', e);
      }
    }
  }

  /** The connection ended (`code`: WebSocket close code). Decide: renew the token, fall back, back off, or fail. */
  private closed(code?: number, e?: TidingsError) {
    const c = this.drop();
    if (!c) return;
    if (c.open) this.downSince = Date.now();
    // Expired (4001) or revoked (4002): a new token from getToken, then resume every channel.
    if (code === 4001 || code === 4002 || e?.code === 'token_expired' || e?.code === 'token_revoked') {
      e ??= code === 4002
        ? new TidingsError('token_revoked', 'the token was revoked: the server closed the connection with 4002')
        : new TidingsError('token_expired', 'the token expired: the server closed the connection with 4001');
      if (!this.o.getToken) return this.fail(e);
      this.tok = undefined;
      return this.retry(e, 0);
    }
    if (e && FATAL.includes(e.code)) {
      const sub = e.channel && this.subs.get(e.channel);
      if (e.code === 'unauthorized' && this.o.getToken && !this.authRetried) {
        this.authRetried = true;
        this.tok = undefined;
        return this.retry(e, 0);
      }
      if (sub) {
        this.subs.delete(sub.channel);
        sub._emit('error', e);
        sub._emit('detached', undefined);
        return this.retry(e, 0);
      }
      return this.fail(e);
    }
    e ??= new TidingsError('network', `connection closed${code ? ` (code ${code})` : ''}`);
    if (!c.open && e.status !== 429 && e.status !== 503) {
      // Failed to connect: try the next transport at once, back off after a full round.
      this.ti = (this.ti + 1) % this.o.transports.length;
      if (this.ti !== this.streak) return this.retry(e, 0);
    }
    if (c.open && Date.now() - c.at > 10_000) this.attempts = 0;
    this.retry(e, this.delay());
  }

  /** Close the current connection, if any, and stop its timers; answers it. */
  private drop(): Live | undefined {
    const c = this.conn;
    this.conn = undefined;
    this.connectionId = undefined;
    clearTimeout(this.timers.idle);
    clearTimeout(this.timers.renew);
    c?.close();
    return c;
  }

  private retry(error: TidingsError, ms: number) {
    if (this.state === 'closed' || this.state === 'failed') return;
    const offline = (globalThis as any).navigator?.onLine === false;
    if (offline) ms = Math.max(ms, this.o.backoff?.maxMs ?? 30_000);
    const state = ms === 0 ? 'connecting' : offline || Date.now() - this.downSince > this.o.suspendAfterMs ? 'suspended' : 'disconnected';
    this.setState(state, { error, retryIn: ms, transport: this.o.transports[this.ti] });
    clearTimeout(this.timers.retry);
    this.timers.retry = setTimeout(() => this.attempt(), ms);
  }

  private fail(e: TidingsError) {
    this.drop();
    this.setState('failed', { error: e });
    this.emit('error', e);
    for (const p of this.pubs.values()) p.reject(e);
    this.pubs.clear();
  }

  /** Reconnect now (after `online`, or when the page becomes visible). */
  private now() {
    if (this.timers.retry) {
      clearTimeout(this.timers.retry);
      this.attempts = 0;
      this.attempt();
    }
  }

  private listen() {
    const w = globalThis as any;
    if (this.unlisten || typeof w.addEventListener !== 'function') return;
    const online = () => this.now();
    const offline = () => this.conn && this.closed(undefined, new TidingsError('network', 'the device went offline'));
    const visible = () => {
      if (w.document?.visibilityState !== 'visible') return;
      const c = this.conn;
      // Back in view: check a WebSocket is still alive with a ping (a pong within 5 s), or reconnect now.
      if (c?.open && c.send) c.send({ type: 'ping' }) && this.arm(5000);
      else this.now();
    };
    w.addEventListener('online', online);
    w.addEventListener('offline', offline);
    w.document?.addEventListener?.('visibilitychange', visible);
    this.unlisten = () => {
      w.removeEventListener('online', online);
      w.removeEventListener('offline', offline);
      w.document?.removeEventListener?.('visibilitychange', visible);
    };
  }

  // ---- tokens ----

  private scheduleRenew() {
    clearTimeout(this.timers.renew);
    const exp = this.tok?.exp;
    if (!this.o.getToken || !exp || !this.conn?.open) return;
    const left = exp - Date.now();
    const ms = Math.max(0, left - (this.o.renewBeforeMs ?? Math.min(60_000, left / 4)));
    this.timers.renew = setTimeout(() => this.renew(), ms);
  }

  private async renew() {
    const c = this.conn;
    try {
      await this.refresh();
    } catch (e: any) {
      this.emit('error', new TidingsError('failed', `getToken failed while renewing: ${e?.message ?? e}`));
      if (this.conn === c) this.timers.renew = setTimeout(() => this.renew(), 1000);
      return;
    }
    if (this.conn !== c || !c?.open) return;
    // WebSocket renews in-band (answered by `authorized`); SSE reconnects with the new token; long-poll uses it on its next request.
    if (c.send) c.send({ type: 'auth', token: this.tok!.token });
    else {
      if (c.kind === 'sse') c.update();
      this.scheduleRenew();
    }
  }

  // ---- publishing and persistence ----

  private send(p: Pending) {
    const c = this.conn;
    if (c?.open && c.send) {
      c.send(p.frame);
      return;
    }
    // Waiting for a connection: it sends when it opens (over WebSocket, or REST).
    if (!c?.open && (this.state === 'connecting' || this.state === 'disconnected' || this.state === 'suspended')) return;
    if (p.busy) return;
    p.busy = true;
    const { type, channel, ref, ...message } = p.frame;
    this.rest('POST', `/v1/channels/${channel}/messages`, message).then(
      (r) => {
        this.pubs.delete(ref);
        p.resolve({ channel, serial: r.serials[0] });
      },
      (e: TidingsError) => {
        p.busy = false;
        // Network failures wait for the next connection when there will be one; answers are final.
        if (e.status || !this.timers.retry) {
          this.pubs.delete(ref);
          p.reject(e);
        }
      },
    );
  }

  private async rest(method: string, path: string, body?: unknown): Promise<any> {
    const cred = await this.credential();
    const headers: Record<string, string> = cred ? { authorization: 'Bearer ' + cred } : {};
    if (body) headers['content-type'] = 'application/json';
    let r: Response;
    try {
      r = await (this.o.fetch ?? fetch)(this.url + path, { method, headers, body: body ? JSON.stringify(body) : undefined });
    } catch (e: any) {
      throw new TidingsError('network', `network error: ${e?.message ?? e}`);
    }
    const json = await r.json().catch(() => undefined);
    if (!r.ok) throw fromBody(json, r.status);
    return json;
  }

  private persist(sub: Subscription) {
    if (!this.o.storage) return;
    this.dirty.add(sub);
    this.timers.persist ??= setTimeout(() => this.flush(), 100);
  }

  private async flush() {
    this.timers.persist = undefined;
    const subs = [...this.dirty];
    this.dirty.clear();
    await Promise.all(
      subs.map(async (s) => {
        try {
          await this.o.storage!.set(this.key(s.channel), JSON.stringify(s._pos));
        } catch (e) {
          this.emit('error', new TidingsError('failed', `cannot store the position of ${s.channel}: ${e}`, s.channel));
        }
      }),
    );
  }
}
