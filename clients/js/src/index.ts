// @tidings/client: the Tidings SDK for browsers, Node and React Native.

export { TidingsClient } from './client.js';
export type {
  AttachOptions,
  ClientEvents,
  ClientOptions,
  ConnectionState,
  OutgoingMessage,
  PublishResult,
  StateChange,
  TokenAnswer,
} from './client.js';
export { Subscription } from './subscription.js';
export type { Attached, ContinuityLost, ContinuityReason, Message, Position, SubscriptionEvents } from './subscription.js';
export { TidingsError, checkChannel } from './errors.js';
export type { ClientErrorCode, ErrorCode, ServerErrorCode } from './errors.js';
export { asyncStorage, indexedDBStorage, memoryStorage, webStorage } from './storage.js';
export type { ItemStorage, PositionStorage } from './storage.js';
export { Mirror, keyString } from './mirror.js';
export type { Change, MirrorEvents, MirrorOptions, SyncRequest, SyncResult } from './mirror.js';
export type { TransportName } from './transport.js';
