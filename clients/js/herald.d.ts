// Types of herald.js, Herald's browser client for protocol herald.v1 (docs/protocol.md).

/** `EPOCH-SEQ`: 8 hex digits, a dash, a decimal seq. */
export type Cursor = string;
/** RFC 3339 time with milliseconds, as the server writes it. */
export type Timestamp = string;
export type Priority = "low" | "normal" | "high" | "urgent";
export type JsonValue = null | boolean | number | string | JsonValue[] | { [key: string]: JsonValue };

/** Most actions kept while offline; more are refused with an OfflineError. */
export declare const MAX_QUEUED_ACTIONS: number;
/** First bound of the reconnect backoff (ms); full jitter below it. */
export declare const BACKOFF_INITIAL_MS: number;
/** Cap of the reconnect backoff (ms), so a restarted server is found within about 2 s. */
export declare const BACKOFF_MAX_MS: number;
/** Close codes after which the client does not reconnect by itself (4010 replaced). */
export declare const NO_RECONNECT_CODES: readonly number[];
export declare const CLOSE_REPLACED: 4010;

// ---- Frames: client → server -------------------------------------------------------------

export interface HelloFrame {
  type: "hello";
  device_id: string;
  cursor: Cursor | null;
}
export interface AckFrame {
  type: "ack";
  ids: string[];
  up_to?: Cursor | null;
}
export interface ReadFrame {
  type: "read";
  ids: string[];
  up_to?: Cursor | null;
}
export interface UnreadFrame {
  type: "unread";
  ids: string[];
}
export interface ArchiveFrame {
  type: "archive";
  ids: string[];
}
export interface PingFrame {
  type: "ping";
}
export type ClientFrame = HelloFrame | AckFrame | ReadFrame | UnreadFrame | ArchiveFrame | PingFrame;

// ---- Frames: server → client -------------------------------------------------------------

export interface SessionFrame {
  type: "session";
  session_id: string;
  user_id: string;
  device_id: string;
  epoch: string;
  resumed: boolean;
  reset: boolean;
  heartbeat_ms: number;
  max_in_flight: number;
  /** The user's partition; the client passes it as `?partition=` when it connects again. */
  partition: number;
}
export interface NotificationFrame {
  type: "notification";
  id: string;
  cursor: Cursor;
  seq: number;
  event_type: string;
  source: string;
  created_at: Timestamp;
  data: JsonValue;
  priority: Priority;
  collapse_key: string | null;
  attempt: number;
}
export interface ReplayedFrame {
  type: "replayed";
  cursor: Cursor | null;
}
export type MarkKind = "read" | "unread" | "archived" | "unarchived" | "expired";
export interface MarkFrame {
  type: "mark";
  kind: MarkKind;
  ids: string[];
  up_to: Cursor | null;
  device_id: string | null;
  cursor: Cursor | null;
  /** Set by herald.js (not the server) for a change made through this client, in any tab. */
  local?: boolean;
}
export interface PongFrame {
  type: "pong";
}
export interface ErrorFrame {
  type: "error";
  code: string;
  message: string;
}
export type ServerFrame = SessionFrame | NotificationFrame | ReplayedFrame | MarkFrame | PongFrame | ErrorFrame;

/** WebSocket close codes of herald.v1. */
export type CloseCode = 1000 | 1001 | 1007 | 1009 | 4000 | 4001 | 4002 | 4008 | 4009 | 4010 | 4011 | 4500;

// ---- HTTP bodies -------------------------------------------------------------------------

export interface InboxItem {
  id: string;
  seq: number;
  cursor: Cursor;
  event_type: string;
  source: string;
  data: JsonValue;
  priority: Priority;
  collapse_key: string | null;
  created_at: Timestamp;
  deliver_at: Timestamp | null;
  expires_at: Timestamp | null;
  read: boolean;
  archived: boolean;
}
export type InboxFilter = "inbox" | "unread" | "archived";
export interface InboxParams {
  filter?: InboxFilter;
  /** `next_before` of the previous page. */
  before?: number | null;
  /** 1–1000, default 50. */
  limit?: number;
}
export interface InboxPage {
  user_id: string;
  unread_count: number;
  next_before: number | null;
  consistent: boolean;
  items: InboxItem[];
}
/** The answer to a mark (202): where the change is in the log. */
export interface MarkResult {
  partition: number;
  offset: number;
  cursor: Cursor;
}
export interface ChannelPreference {
  /** false: not pushed live (still in the inbox, unread). */
  live: boolean;
  /** false: muted: not pushed live, stored already read. */
  inbox: boolean;
}
export interface Preferences {
  event_types: Record<string, ChannelPreference>;
  topics: Record<string, ChannelPreference>;
}

// ---- Client ------------------------------------------------------------------------------

export type ClientState = "connecting" | "resuming" | "open" | "closed" | "replaced" | "stopped";
export type TabRole = "leader" | "follower" | "solo";
export type ActionKind = "read" | "unread" | "archive" | "unarchive";

export interface HeraldClientOptions {
  /** The user's token (JWT); called for every ticket and HTTP request. */
  getToken: () => string | Promise<string>;
  /** Called once per notification id in each tab; the leader ACKs after it returns. */
  onNotification?: (n: NotificationFrame) => void | Promise<void>;
  /** The gateway's origin; default: the page's. */
  baseUrl?: string;
  /** Names the connection the tabs share (pass the user id when users can switch in one browser). */
  user?: string;
  /** Default: one id per browser profile and origin (localStorage `herald:device`). */
  deviceId?: string;
  /** Where the cursor and seen ids are kept; default localStorage. */
  storage?: Pick<Storage, "getItem" | "setItem">;
  /** Default "websocket" where WebSocket exists. */
  transport?: "websocket" | "sse";
  /** false: each tab is its own device (per-tab id) even where tabs could share. */
  shareTabs?: boolean;
  backoffInitialMs?: number;
  backoffMaxMs?: number;
  maxQueuedActions?: number;
  dedupeWindow?: number;
  /** WebSocket attempts in a row that never open before falling back to SSE (default 3). */
  fallbackAfter?: number;
}

export interface QueueDetail {
  /** Actions waiting for the connection. */
  size: number;
  /** The action just queued. */
  queued?: ActionKind;
  ids?: string[];
  /** The action just refused because the queue was full. */
  refused?: ActionKind;
  /** The queue has just been sent. */
  flushed?: boolean;
}
export interface CloseDetail {
  code: number | null;
  reason: string;
}
export interface RetryDetail {
  wait: number;
  error: string;
}

export interface HeraldClientEventMap {
  state: CustomEvent<ClientState>;
  role: CustomEvent<TabRole>;
  mark: CustomEvent<MarkFrame>;
  replayed: CustomEvent<ReplayedFrame>;
  error: CustomEvent<ErrorFrame>;
  close: CustomEvent<CloseDetail>;
  retry: CustomEvent<RetryDetail>;
  replaced: CustomEvent<CloseDetail>;
  fallback: CustomEvent<{ transport: "sse" }>;
  queue: CustomEvent<QueueDetail>;
}

export declare class OfflineError extends Error {
  name: "OfflineError";
}
export declare class HeraldHttpError extends Error {
  name: "HeraldHttpError";
  status: number;
  /** The error body's `code` (docs/protocol.md, Errors). */
  code: string | null;
  /** The error body's `message`, for people. */
  serverMessage: string | null;
}

export declare class HeraldClient extends EventTarget {
  constructor(options: HeraldClientOptions);
  readonly baseUrl: string;
  readonly deviceId: string;
  readonly user: string;
  /** Whether this tab shares one connection with the browser's other tabs. */
  readonly shared: boolean;
  readonly role: TabRole;
  readonly state: ClientState;
  readonly transport: "websocket" | "sse";
  readonly cursor: Cursor | null;
  readonly epoch: string | null;
  /** The newest cursor seen (passed as `after` by reads). */
  readonly latest: Cursor | null;
  /** Sockets closed so far in this tab. */
  readonly closes: number;
  /** Actions waiting for the connection (queued here, or forwarded to the leader tab). */
  readonly pendingActions: number;

  static defaultDeviceId(storage?: Pick<Storage, "getItem" | "setItem">): string;
  static tabId(): string;

  start(): void;
  stop(): void;
  /** Connect again now (e.g. after "replaced"); leader or solo tabs only. */
  reconnect(): void;

  read(ids: string[], upTo?: Cursor | null): Promise<MarkResult>;
  unread(ids: string[]): Promise<MarkResult>;
  archive(ids: string[]): Promise<MarkResult>;
  unarchive(ids: string[]): Promise<MarkResult>;
  /**
   * A page of the inbox. Includes every change this client has seen or made: it first waits (at
   * most 5 s) for this client's changes still on their way to the server, not for ones waiting
   * in the offline queue.
   */
  inbox(params?: InboxParams): Promise<InboxPage>;
  /** The unread count, with the same read-your-writes wait as `inbox`. */
  unreadCount(): Promise<number>;
  preferences(): Promise<Preferences>;
  setPreferences(doc: Preferences): Promise<Preferences>;

  addEventListener<K extends keyof HeraldClientEventMap>(
    type: K,
    listener: (ev: HeraldClientEventMap[K]) => void,
    options?: boolean | AddEventListenerOptions,
  ): void;
  addEventListener(type: string, listener: EventListenerOrEventListenerObject | null, options?: boolean | AddEventListenerOptions): void;
  removeEventListener<K extends keyof HeraldClientEventMap>(
    type: K,
    listener: (ev: HeraldClientEventMap[K]) => void,
    options?: boolean | EventListenerOptions,
  ): void;
  removeEventListener(type: string, listener: EventListenerOrEventListenerObject | null, options?: boolean | EventListenerOptions): void;
}
