import type { TidingsClient } from './client.js';
import { Emitter } from './emitter.js';
import { TidingsError } from './errors.js';
import type { Attached, ContinuityReason, Message, Position, Subscription } from './subscription.js';

/**
 * A normalized change message (the MongoDB connector's `payload = "normalized"`, or an outbox
 * row written in the same shape): `key` identifies the document.
 */
export interface Change<D = any> {
  op: 'insert' | 'update' | 'replace' | 'delete' | string;
  key: unknown;
  /** The full document after the change (inserts, replaces, updates with a looked-up document). */
  document?: D | null;
  /** For updates without `document`: dotted paths set, and dotted paths removed. */
  updated_fields?: Record<string, unknown> | null;
  removed_fields?: string[] | null;
}

/** What `sync` is asked: reload `channel` because of `reason`; the channel now stands at `{epoch, serial}`. */
export interface SyncRequest {
  channel: string;
  reason: ContinuityReason | 'initial';
  epoch: string;
  serial: number;
}

/**
 * What `sync` answers: the whole state, and the position it reflects. Answering the request's own
 * `{epoch, serial}` is right for a snapshot taken after the request: changes are applied by key,
 * so replaying ones the snapshot already holds converges to the same state.
 */
export interface SyncResult<D> {
  documents: Iterable<D>;
  position: Position;
}

export interface MirrorOptions<D> {
  /** Reload the state (first load, and every time continuity is lost). */
  sync(request: SyncRequest): SyncResult<D> | Promise<SyncResult<D>>;
  /** The key of a document from `sync`, as change messages carry it (default `{_id: doc._id}`). */
  keyOf?(document: D): unknown;
}

export interface MirrorEvents<D> {
  /** A change was applied; `document` is the document after it (undefined once deleted). */
  change: { op: string; key: unknown; document?: D; serial: number };
  /** The state was reloaded by `sync`. */
  synced: { reason: SyncRequest['reason']; position: Position };
  error: Error;
}

/** A stable string for a key: JSON with object keys sorted. */
export function keyString(key: unknown): string {
  return JSON.stringify(key, (_, v) =>
    v && typeof v === 'object' && !Array.isArray(v) ? Object.fromEntries(Object.keys(v).sort().map((k) => [k, v[k]])) : v,
  );
}

function patch(doc: any, set: Record<string, unknown> | null | undefined, removed: string[] | null | undefined) {
  const out = JSON.parse(JSON.stringify(doc));
  const walk = (path: string, f: (o: any, k: string) => void) => {
    const parts = path.split('.');
    let o = out;
    for (const p of parts.slice(0, -1)) o = o[p] ??= {};
    f(o, parts[parts.length - 1]);
  };
  for (const [path, v] of Object.entries(set ?? {})) walk(path, (o, k) => (o[k] = v));
  for (const path of removed ?? []) walk(path, (o, k) => delete o[k]);
  return out;
}

/**
 * A local copy of a collection kept in step with one channel of change messages. It loads the
 * state with the app's `sync()`, applies each change by key, and calls `sync()` again whenever
 * continuity is lost, continuing from the position `sync()` answers.
 */
export class Mirror<D = any> extends Emitter<MirrorEvents<D>> {
  /** The documents, by `keyString(key)`. */
  readonly documents = new Map<string, D>();
  /** The position of the last change applied (or of the last sync). */
  position?: Position;
  /** Resolves once the first `sync()` is applied. */
  readonly ready: Promise<void>;
  /** The channel's subscription. */
  readonly subscription: Subscription<Change<D>>;
  private gen = 0;
  private buffer?: Message<Change<D>>[];
  private resolve!: () => void;

  constructor(
    client: TidingsClient,
    readonly channel: string,
    private options: MirrorOptions<D>,
  ) {
    super();
    if (typeof options?.sync !== 'function') throw new TidingsError('invalid_options', 'a Mirror needs a `sync` function');
    this.ready = new Promise((r) => (this.resolve = r));
    // Start from the head, not a stored position: the documents live in memory only.
    const sub = (this.subscription = client.attach<Change<D>>(channel, { resume: false }));
    sub.on('attached', (a) => {
      if (a.reason || (!this.position && !this.buffer)) this.resync(a.reason ?? 'initial', a);
    });
    sub.on('message', (m) => (this.buffer ? this.buffer.push(m) : this.apply(m)));
  }

  /** The document with this key. */
  get(key: unknown): D | undefined {
    return this.documents.get(keyString(key));
  }

  /** Stop following the channel. */
  close(): void {
    this.gen++;
    this.subscription.detach();
  }

  private async resync(reason: SyncRequest['reason'], a: Attached) {
    const me = ++this.gen;
    this.buffer = [];
    let result: SyncResult<D>;
    for (let delay = 500; ; delay = Math.min(delay * 2, 30_000)) {
      try {
        result = await this.options.sync({ channel: this.channel, reason, epoch: a.epoch, serial: a.serial });
        if (result?.position?.epoch !== a.epoch || !Number.isSafeInteger(result.position.serial))
          throw new TidingsError('invalid_options', `sync() must answer {documents, position} with position.epoch ${a.epoch}`, this.channel);
        break;
      } catch (e: any) {
        this.emit('error', e);
        await new Promise((r) => setTimeout(r, delay));
        if (me !== this.gen) return;
      }
    }
    if (me !== this.gen) return;
    const keyOf = this.options.keyOf ?? ((d: any) => ({ _id: d._id }));
    this.documents.clear();
    for (const d of result.documents) this.documents.set(keyString(keyOf(d)), d);
    const p = (this.position = { epoch: result.position.epoch, serial: result.position.serial });
    const buffered = this.buffer;
    this.buffer = undefined;
    // Messages received while syncing follow `a.serial`: keep those after the snapshot. A
    // snapshot older than `a.serial` needs the messages in between: re-attach after it.
    if (p.serial >= a.serial) for (const m of buffered) this.apply(m);
    else this.subscription.seek(p);
    this.emit('synced', { reason, position: { ...p } });
    this.resolve();
  }

  private apply(m: Message<Change<D>>) {
    const pos = this.position;
    if (pos && m.epoch === pos.epoch && m.serial <= pos.serial) return;
    this.position = { epoch: m.epoch, serial: m.serial };
    const c = m.data;
    if (!c || typeof c !== 'object' || typeof c.op !== 'string') return;
    const k = keyString(c.key);
    const docs = this.documents;
    if (c.op === 'insert' || c.op === 'replace' || (c.op === 'update' && c.document)) docs.set(k, c.document as D);
    else if (c.op === 'update' && docs.has(k)) docs.set(k, patch(docs.get(k), c.updated_fields, c.removed_fields));
    else if (c.op === 'delete') docs.delete(k);
    else return;
    this.emit('change', { op: c.op, key: c.key, document: docs.get(k), serial: m.serial });
  }
}
