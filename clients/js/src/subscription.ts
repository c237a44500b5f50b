import { Emitter } from './emitter.js';
import type { TidingsError } from './errors.js';

/** A place in one channel's history: the epoch names the history, the serial the last message seen. */
export interface Position {
  epoch: string;
  serial: number;
}

/** A delivered message. `epoch` is added by the SDK: the history `serial` belongs to. */
export interface Message<T = any> {
  channel: string;
  serial: number;
  epoch: string;
  id: string | null;
  name: string | null;
  data: T;
  headers: Record<string, unknown> | null;
  /** Milliseconds since the Unix epoch at which the server appended the message. */
  timestamp: number;
}

/** Why continuity was lost (docs/protocol.md, "Attach, resume and continuity"). */
export type ContinuityReason = 'epoch_changed' | 'history_expired' | 'position_ahead';

/**
 * Messages were missed: the channel resumed at `position` (the head), not after `previous`.
 * Discard what was built from this channel, reload it, and continue from the new position.
 */
export interface ContinuityLost {
  channel: string;
  reason: ContinuityReason;
  previous?: Position;
  position: Position;
}

/** The server attached the channel; delivery continues after `serial`. */
export interface Attached {
  channel: string;
  epoch: string;
  serial: number;
  resumed: boolean;
  reason?: ContinuityReason;
}

export interface SubscriptionEvents<T> {
  message: Message<T>;
  attached: Attached;
  continuity_lost: ContinuityLost;
  error: TidingsError;
  detached: undefined;
}

/** What a subscription needs from its client. */
export interface Owner {
  changed(sub: Subscription<any>): void;
  detach(sub: Subscription<any>): void;
  delivered(sub: Subscription<any>, message: Message): void;
  lost(sub: Subscription<any>, event: ContinuityLost | undefined, attached: Attached): void;
}

/**
 * One attached channel: messages in serial order, each once, across reconnects. Read them with
 * `on('message', ...)` or `for await (const m of sub)`.
 */
export class Subscription<T = any> extends Emitter<SubscriptionEvents<T>> {
  /** @internal Last position processed (or the `from` to start after). */
  _pos?: Position;
  /** @internal Rewind asked for, until the first `attached`. */
  _rewind?: number;
  /** @internal False while the stored position is being read. */
  _loaded = true;
  /** @internal True between asking the server to attach and its `attached`: deliveries are ignored. */
  _pending = true;

  /** @internal */
  constructor(
    private owner: Owner,
    readonly channel: string,
  ) {
    super();
  }

  /** The position of the last message processed, once the channel was attached. */
  get position(): Position | undefined {
    return this._pos && { ...this._pos };
  }

  /** Re-attach after `position` (an app that reloaded its state calls this with the state's position). */
  seek(position: Position): void {
    this._pos = { epoch: position.epoch, serial: position.serial };
    this._rewind = undefined;
    this.owner.changed(this);
  }

  /** Stop receiving this channel. Its stored position is kept: attaching it again resumes. */
  detach(): void {
    this.owner.detach(this);
  }

  /** An async iterator over messages from now on; it ends when the subscription is detached. */
  messages(): AsyncIterableIterator<Message<T>> {
    const queue: Message<T>[] = [];
    let wake: (() => void) | undefined;
    let done = false;
    const offMessage = this.on('message', (m) => {
      queue.push(m);
      wake?.();
    });
    const end = () => {
      done = true;
      offMessage();
      offDetached();
      wake?.();
    };
    const offDetached = this.on('detached', end);
    return {
      [Symbol.asyncIterator]() {
        return this;
      },
      async next() {
        while (!queue.length && !done) await new Promise<void>((r) => (wake = r));
        return queue.length ? { value: queue.shift()!, done: false } : { value: undefined, done: true };
      },
      async return() {
        end();
        return { value: undefined, done: true };
      },
    };
  }

  [Symbol.asyncIterator](): AsyncIterableIterator<Message<T>> {
    return this.messages();
  }

  /** @internal An `attached` frame for this channel. */
  _attached(f: Attached): void {
    const previous = this._pos;
    this._pending = false;
    this._rewind = undefined;
    this._pos = { epoch: f.epoch, serial: f.serial };
    const lost = !f.resumed && f.reason ? { channel: this.channel, reason: f.reason, previous, position: { ...this._pos } } : undefined;
    const a = { channel: f.channel, epoch: f.epoch, serial: f.serial, resumed: f.resumed, reason: f.reason };
    this.owner.lost(this, lost, a);
    this.emit('attached', a);
    if (lost) this.emit('continuity_lost', lost);
  }

  /** @internal A `message` frame for this channel: dropped while attaching and when not newer than the last one. */
  _message(f: any): void {
    if (this._pending || !this._pos || !(f.serial > this._pos.serial)) return;
    this._pos = { epoch: this._pos.epoch, serial: f.serial };
    const m: Message<T> = {
      channel: this.channel,
      serial: f.serial,
      epoch: this._pos.epoch,
      id: f.id ?? null,
      name: f.name ?? null,
      data: f.data,
      headers: f.headers ?? null,
      timestamp: f.timestamp,
    };
    this.emit('message', m);
    this.owner.delivered(this, m);
  }

  /** @internal */
  _emit<K extends keyof SubscriptionEvents<T>>(k: K, v: SubscriptionEvents<T>[K]): void {
    this.emit(k, v);
  }
}
