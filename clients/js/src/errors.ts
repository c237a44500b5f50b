/** Error codes of the Tidings protocol (docs/protocol.md, "Error codes"). Stable strings. */
export type ServerErrorCode =
  | 'malformed_frame'
  | 'unknown_frame_type'
  | 'message_too_large'
  | 'request_too_large'
  | 'invalid_channel'
  | 'invalid_message'
  | 'invalid_request'
  | 'unauthorized'
  | 'token_expired'
  | 'token_revoked'
  | 'forbidden'
  | 'origin_not_allowed'
  | 'too_many_connections'
  | 'too_many_channels'
  | 'too_many_revocations'
  | 'rate_limited'
  | 'not_attached'
  | 'shutting_down'
  | 'internal';

/**
 * Codes the SDK raises itself: bad options (`invalid_options`), a network failure
 * (`network`), an answer that is not the protocol (`bad_response`), the client was closed
 * (`closed`), the client gave up (`failed`).
 */
export type ClientErrorCode = 'invalid_options' | 'network' | 'bad_response' | 'closed' | 'failed';

export type ErrorCode = ServerErrorCode | ClientErrorCode;

/** Every error the SDK reports: the protocol's `code`, a message, and what it was about. */
export class TidingsError extends Error {
  override readonly name = 'TidingsError';
  constructor(
    /**
     * A protocol error code, or one of the SDK's own (`ClientErrorCode`). A newer server may send
     * a code this SDK does not know: it arrives as is, with the HTTP `status` when there was one.
     */
    readonly code: ErrorCode | (string & {}),
    message: string,
    /** The channel the error is about, when it is about one. */
    readonly channel?: string,
    /** The HTTP status of a refused request, when there was one. */
    readonly status?: number,
  ) {
    super(message);
  }
}

/** An error frame or a REST error body (`{"error": {...}}`) as a `TidingsError`. */
export function fromBody(body: any, status?: number): TidingsError {
  const e = body?.error ?? body ?? {};
  return new TidingsError(e.code ?? 'bad_response', e.message ?? `unexpected answer (HTTP ${status})`, e.channel, status);
}

/** Channel names: 1-255 bytes of `:`-separated segments of `A-Z a-z 0-9 _ - . @ = +`. */
const CHANNEL = /^[\w\-.@=+]+(:[\w\-.@=+]+)*$/;

/** Throw `invalid_channel` unless `name` is a valid channel name. */
export function checkChannel(name: unknown): string {
  if (typeof name !== 'string' || name.length > 255 || !CHANNEL.test(name)) {
    throw new TidingsError(
      'invalid_channel',
      `invalid channel name ${JSON.stringify(name)}: use 1-255 characters, segments of letters, digits and _ - . @ = + separated by ':'`,
      typeof name === 'string' ? name : undefined,
    );
  }
  return name;
}

/** Throw `invalid_options` with `message`. */
export function bad(message: string): never {
  throw new TidingsError('invalid_options', message);
}
