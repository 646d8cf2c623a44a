// herald.js: Herald's browser client for protocol herald.v1 (docs/protocol.md).
// An ES module with no build step. The gateway serves this very file at /herald.js, and
// clients/js/package.json publishes it to npm (types: herald.d.ts).
//
//   import { HeraldClient } from "/herald.js";
//   const client = new HeraldClient({ getToken: async () => token, user: "alice", onNotification: async (n) => show(n) });
//   client.addEventListener("state", (e) => console.log(e.detail)); // connecting | resuming | open | closed | replaced | stopped
//   client.start();
//
// Tabs: one connection per browser. The tabs of one device (same `deviceId` and `user`) elect a
// leader with the Web Locks API; only the leader holds the WebSocket (or SSE stream), and it
// passes notifications, marks and its state to the other tabs over a BroadcastChannel. The other
// tabs send their read / unread / archive / unarchive actions to the leader, which performs them.
// When the leader tab closes, another tab takes the lock and connects, resuming from the shared
// cursor. Where Web Locks or BroadcastChannel are missing, each tab is its own device: its device
// id gets a per-tab suffix kept in sessionStorage. Either way, a session closed with 4010
// (replaced: the same device connected elsewhere) is never reconnected automatically.
//
// Exactly-once visibility: the leader persists its cursor and the ids it has shown (localStorage),
// calls onNotification at most once per id in each tab, and ACKs only after its handler returned.
// A handler that throws in the leader is not ACKed, so the server redelivers it.
//
// Offline: an action that cannot reach the server (network error or 502/503/504) is queued (at
// most MAX_QUEUED_ACTIONS), the client fires a "queue" event so the page can say so, and the
// queue is retried in order as soon as the connection is open again. The action's promise
// settles when it finally succeeds (or is refused). A full queue refuses new actions with an
// OfflineError at once.

const PROTOCOL = "herald.v1";
/// Most actions kept while offline; more are refused (OfflineError) rather than kept forever.
export const MAX_QUEUED_ACTIONS = 200;
/// Reconnect backoff: full jitter over an exponential bound that starts here...
export const BACKOFF_INITIAL_MS = 250;
/// ...and is capped here, so a restarted server is found within about 2 s.
export const BACKOFF_MAX_MS = 2000;
/// Close codes after which the client does not reconnect by itself.
export const NO_RECONNECT_CODES = Object.freeze([4010]);
/// Close code 4010: the same user and device connected again; this session was replaced.
export const CLOSE_REPLACED = 4010;
/// How long a follower tab waits for the leader to answer a forwarded action before sending it
/// again (the leader may have closed in between; actions are idempotent).
const FORWARD_RESEND_MS = 3000;
/// The longest a read (`inbox`, `unreadCount`) waits for this client's changes still on their way
/// to the server, so that it shows them (read-your-writes for a change in flight). A change that
/// waits in the offline queue is not waited for.
const READ_WAITS_FOR_CHANGES_MS = 5000;

/// Thrown for actions refused because the offline queue is full.
export class OfflineError extends Error {
  constructor(message) {
    super(message);
    this.name = "OfflineError";
  }
}

/// An HTTP error answer from the gateway (`status`, and `code` from its JSON error body).
export class HeraldHttpError extends Error {
  constructor(path, status, code, message) {
    super(`${path}: HTTP ${status} ${code ?? ""} ${message ?? ""}`.trim());
    this.name = "HeraldHttpError";
    this.status = status;
    this.code = code ?? null;
    this.serverMessage = message ?? null;
  }
}

function seqOf(cursor) {
  if (!cursor) return -1;
  const dash = cursor.indexOf("-");
  return dash < 0 ? -1 : Number(cursor.slice(dash + 1));
}

const MARK_KIND = { read: "read", unread: "unread", archive: "archived", unarchive: "unarchived" };

/// Whether a failed request is worth retrying later (the server or the network is away).
function retryable(e) {
  if (e instanceof HeraldHttpError) return e.status === 502 || e.status === 503 || e.status === 504;
  return e instanceof TypeError; // fetch's network error
}

function randomId() {
  return Math.random().toString(36).slice(2, 10);
}

export class HeraldClient extends EventTarget {
  constructor(options = {}) {
    super();
    if (typeof options.getToken !== "function") throw new TypeError("HeraldClient: options.getToken must be a function returning a token");
    this.baseUrl = (options.baseUrl ?? globalThis.location?.origin ?? "").replace(/\/$/, "");
    this.getToken = options.getToken;
    this.onNotification = options.onNotification ?? (() => {});
    this.storage = options.storage ?? globalThis.localStorage;
    this.user = options.user ?? "";
    this.transport = options.transport ?? (typeof WebSocket === "function" ? "websocket" : "sse");
    this.backoffInitialMs = options.backoffInitialMs ?? BACKOFF_INITIAL_MS;
    this.backoffMaxMs = options.backoffMaxMs ?? BACKOFF_MAX_MS;
    this.maxQueued = options.maxQueuedActions ?? MAX_QUEUED_ACTIONS;
    this.dedupeWindow = options.dedupeWindow ?? 2000;
    // WebSocket attempts in a row that never opened; at fallbackAfter, switch to SSE.
    this.wsFailures = 0;
    this.fallbackAfter = options.fallbackAfter ?? 3;
    const canShare =
      options.shareTabs !== false && typeof BroadcastChannel === "function" && !!globalThis.navigator?.locks?.request;
    this.shared = canShare;
    let deviceId = options.deviceId ?? HeraldClient.defaultDeviceId(this.storage);
    if (!canShare) deviceId = `${deviceId}-${HeraldClient.tabId()}`; // one device per tab
    this.deviceId = deviceId;
    // "leader" holds the connection; "follower" is fed by it; "solo" has no tabs to share with.
    this.role = canShare ? "follower" : "solo";
    this.tabId = randomId();
    this.leaderId = null;
    this.state = "closed";
    this.stopped = true;
    this.attempt = 0;
    this.chain = Promise.resolve();
    this.queue = []; // { kind, body, resolve, reject } waiting for the connection (leader/solo)
    this.forwarded = new Map(); // follower: action id → { kind, body, resolve, reject, sentAt }
    this.flushing = false;
    this.cursor = null;
    this.epoch = null;
    this.seenOrder = [];
    this.seen = new Set();
    this.loadSaved();
    // The newest position of this user's events the client has seen (notifications, marks, its
    // own changes). Reads pass it as `after`, so they include what the client already showed.
    this.latest = null;
    // Changes on their way to the server (sent, or forwarded to the leader tab), each a promise
    // that settles when the change did (or was queued offline, or READ_WAITS_FOR_CHANGES_MS).
    this.inflight = new Set();
    this.closes = 0; // sockets closed so far (a reconnect loop shows up here)
  }

  static defaultDeviceId(storage = globalThis.localStorage) {
    let id = storage.getItem("herald:device");
    if (!id) {
      id = "web-" + randomId();
      storage.setItem("herald:device", id);
    }
    return id;
  }

  /// This tab's id (sessionStorage), for the one-device-per-tab fallback.
  static tabId() {
    try {
      let id = sessionStorage.getItem("herald:tab");
      if (!id) {
        id = randomId();
        sessionStorage.setItem("herald:tab", id);
      }
      return id;
    } catch {
      return randomId();
    }
  }

  get pendingActions() {
    return this.queue.length + this.forwarded.size;
  }

  observe(cursor) {
    if (cursor && seqOf(cursor) > seqOf(this.latest)) this.latest = cursor;
  }

  key() {
    return `herald:${this.deviceId}`;
  }

  loadSaved() {
    let saved = {};
    try {
      saved = JSON.parse(this.storage.getItem(this.key()) ?? "{}") ?? {};
    } catch {}
    this.cursor = saved.cursor ?? null;
    this.epoch = saved.epoch ?? null;
    this.seenOrder = Array.isArray(saved.seen) ? saved.seen : [];
    this.seen = new Set(this.seenOrder);
  }

  save() {
    this.storage.setItem(
      this.key(),
      JSON.stringify({ cursor: this.cursor, epoch: this.epoch, seen: this.seenOrder.slice(-this.dedupeWindow) }),
    );
  }

  emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  /// Fires an event here and, from the leader, in every other tab.
  emitAll(type, detail) {
    this.emit(type, detail);
    if (this.role === "leader") this.post({ t: "event", type, detail });
  }

  setState(state) {
    if (this.state === state) return;
    this.state = state;
    this.emit("state", state);
    if (this.role === "leader") this.sync();
    if (state === "open") this.flush();
  }

  post(msg) {
    try {
      this.channel?.postMessage({ ...msg, from: this.tabId });
    } catch (e) {
      console.error("herald: cannot post to the other tabs", e);
    }
  }

  sync() {
    this.post({ t: "sync", state: this.state, epoch: this.epoch, latest: this.latest, queued: this.queue.length });
  }

  start() {
    if (!this.stopped) return;
    this.stopped = false;
    if (this.role === "solo") return this.connect();
    this.channel = new BroadcastChannel(`herald:${this.user}:${this.deviceId}`);
    this.channel.onmessage = (e) => this.onChannel(e.data);
    this.lockAbort = new AbortController();
    this.setState("connecting");
    navigator.locks
      .request(`herald:${this.user}:${this.deviceId}`, { signal: this.lockAbort.signal }, () => this.lead())
      .catch((e) => {
        if (e?.name !== "AbortError") console.error("herald: leader lock failed", e);
      });
    this.post({ t: "hello" }); // the leader answers with its state
  }

  /// Runs while this tab holds the leader lock; returning releases it.
  lead() {
    if (this.stopped) return;
    this.role = "leader";
    this.leaderId = this.tabId;
    this.loadSaved(); // the previous leader's cursor and seen ids
    this.emit("role", "leader");
    // Actions this tab had forwarded to the old leader: do them here.
    for (const [, a] of this.forwarded) this.perform(a.kind, a.body, a.onQueued).then(a.resolve, a.reject);
    this.forwarded.clear();
    this.state = "closed";
    this.connect();
    return new Promise((resolve) => (this.releaseLock = resolve));
  }

  stop() {
    this.stopped = true;
    this.ws?.close(1000);
    this.es?.close();
    clearTimeout(this.retryTimer);
    clearInterval(this.resendTimer);
    this.resendTimer = null;
    this.lockAbort?.abort();
    this.releaseLock?.();
    this.releaseLock = null;
    if (this.role === "leader") this.post({ t: "sync", state: "closed", epoch: this.epoch, latest: this.latest, queued: 0 });
    this.channel?.close();
    this.channel = null;
    for (const a of [...this.queue, ...this.forwarded.values()]) a.reject(new OfflineError("the client was stopped"));
    this.queue = [];
    this.forwarded.clear();
    if (this.role === "leader") this.role = "follower";
    this.setState("stopped");
  }

  onChannel(m) {
    if (!m || m.from === this.tabId || this.stopped) return;
    if (this.role === "leader") {
      if (m.t === "hello") this.sync();
      if (m.t === "action") {
        const queued = () => this.post({ t: "queued", to: m.from, id: m.id });
        this.perform(m.kind, m.body, queued).then(
          (value) => this.post({ t: "result", to: m.from, id: m.id, ok: true, value }),
          (e) => this.post({ t: "result", to: m.from, id: m.id, ok: false, error: String(e?.message ?? e), name: e?.name }),
        );
      }
      return;
    }
    switch (m.t) {
      case "sync": {
        const newLeader = this.leaderId !== m.from;
        this.leaderId = m.from;
        if (m.epoch) this.epoch = m.epoch;
        this.observe(m.latest);
        if (this.state !== m.state) {
          this.state = m.state;
          this.emit("state", m.state);
        }
        if (newLeader) {
          // Resend to it (what the old leader had queued went with it).
          for (const [id, a] of this.forwarded) {
            a.queued = false;
            this.forward(id, a);
          }
        }
        break;
      }
      case "notification":
        this.observe(m.frame.cursor);
        this.show(m.frame);
        break;
      case "event":
        if (m.type === "mark") this.observe(m.detail.cursor);
        this.emit(m.type, m.detail);
        break;
      case "queued": {
        // The leader keeps the action in its offline queue: a read need not wait for it, and
        // resending it would queue it twice. A new leader gets it again (its `sync`).
        if (m.to !== this.tabId) return;
        const a = this.forwarded.get(m.id);
        if (!a) return;
        a.queued = true;
        a.onQueued?.();
        break;
      }
      case "result": {
        if (m.to !== this.tabId) return;
        const a = this.forwarded.get(m.id);
        if (!a) return;
        this.forwarded.delete(m.id);
        if (m.ok) {
          this.observe(m.value?.cursor);
          a.resolve(m.value);
        } else {
          a.reject(m.name === "OfflineError" ? new OfflineError(m.error) : new Error(m.error));
        }
        break;
      }
    }
  }

  async http(path, init = {}) {
    const token = await this.getToken();
    const headers = { authorization: `Bearer ${token}`, ...(init.body ? { "content-type": "application/json" } : {}) };
    const resp = await fetch(this.baseUrl + path, { ...init, headers: { ...headers, ...(init.headers ?? {}) } });
    const body = await resp.json().catch(() => ({}));
    if (!resp.ok) throw new HeraldHttpError(path, resp.status, body?.error?.code, body?.error?.message);
    return body;
  }

  async connect() {
    if (this.stopped) return;
    this.setState(this.cursor ? "resuming" : "connecting");
    let ticket;
    try {
      const minted = await this.http("/v1/ws-ticket", { method: "POST" });
      ticket = minted.ticket;
      // The user's partition: a routing hint, so a load balancer can send every user of a
      // partition to the same gateway (docs/operations.md, "Running a cluster").
      if (Number.isInteger(minted.partition)) this.partition = minted.partition;
    } catch (e) {
      return this.retry(e);
    }
    if (this.stopped) return;
    if (this.transport === "sse") return this.connectSse(ticket);
    const hint = this.partition === undefined ? "" : `&partition=${this.partition}`;
    const url = this.baseUrl.replace(/^http/, "ws") + `/v1/ws?ticket=${encodeURIComponent(ticket)}${hint}`;
    const ws = new WebSocket(url, PROTOCOL);
    this.ws = ws;
    let opened = false;
    ws.onopen = () => {
      opened = true;
      this.wsFailures = 0;
      ws.send(JSON.stringify({ type: "hello", device_id: this.deviceId, cursor: this.cursor }));
    };
    ws.onmessage = (m) => {
      let frame;
      try {
        frame = JSON.parse(m.data);
      } catch {
        return;
      }
      this.frame(frame);
    };
    ws.onclose = (ev) => {
      if (this.ws === ws) this.ws = null;
      this.closes += 1;
      if (!opened && ++this.wsFailures >= this.fallbackAfter && typeof EventSource === "function") {
        // WebSockets do not get through (a proxy, a firewall): fall back to Server-Sent Events.
        this.transport = "sse";
        this.emitAll("fallback", { transport: "sse" });
      }
      this.emitAll("close", { code: ev.code, reason: ev.reason });
      if (this.stopped) return;
      if (NO_RECONNECT_CODES.includes(ev.code)) return this.replaced(ev.reason);
      this.retry(new Error(`closed ${ev.code} ${ev.reason}`));
    };
  }

  /// 4010: this device connected again elsewhere (another browser or window with the same
  /// device id). Reconnecting would knock that one off in turn, forever: stay closed.
  replaced(reason) {
    this.setState("replaced");
    this.emitAll("replaced", { code: CLOSE_REPLACED, reason: reason ?? "" });
  }

  connectSse(ticket) {
    const params = new URLSearchParams({ ticket, device_id: this.deviceId });
    if (this.cursor) params.set("cursor", this.cursor);
    if (this.partition !== undefined) params.set("partition", String(this.partition));
    const es = new EventSource(`${this.baseUrl}/v1/sse?${params}`);
    this.es = es;
    es.onmessage = (m) => {
      try {
        this.frame(JSON.parse(m.data));
      } catch {}
    };
    es.addEventListener("close", (m) => {
      // The server ends the stream with its close code: 4010 is not retried.
      let code = null;
      let reason = "";
      try {
        ({ code, reason = "" } = JSON.parse(m.data)); // {code, name, reason}
      } catch {}
      es.close();
      if (this.es === es) this.es = null;
      this.closes += 1;
      this.emitAll("close", { code, reason });
      if (NO_RECONNECT_CODES.includes(code)) this.replaced(reason);
      else this.retry(new Error(`event stream closed ${code}`));
    });
    es.onerror = () => {
      es.close();
      if (this.es === es) this.es = null;
      this.closes += 1;
      this.retry(new Error("event stream lost"));
    };
  }

  retry(error) {
    if (this.stopped || this.state === "replaced") return;
    this.setState("closed");
    this.attempt += 1;
    // Exponential backoff with full jitter, capped at backoffMaxMs.
    const bound = Math.min(this.backoffMaxMs, this.backoffInitialMs * 2 ** (this.attempt - 1));
    const wait = Math.random() * bound;
    this.emitAll("retry", { wait, error: String(error) });
    clearTimeout(this.retryTimer);
    this.retryTimer = setTimeout(() => this.connect(), wait);
  }

  /// Reconnects now (e.g. after "replaced", when the user asks to take the session back).
  reconnect() {
    if (this.stopped || (this.role !== "leader" && this.role !== "solo")) return;
    this.ws?.close(1000);
    this.attempt = 0;
    this.state = "closed";
    this.connect();
  }

  frame(f) {
    switch (f.type) {
      case "session":
        if (f.reset || (this.epoch && this.epoch !== f.epoch)) {
          this.cursor = null;
          this.latest = null;
        }
        this.epoch = f.epoch;
        this.attempt = 0;
        this.setState("open");
        break;
      case "notification":
        // Handle notifications one at a time, in the order they came; one failure must not
        // stop the ones after it.
        this.chain = this.chain
          .then(() => this.notification(f))
          .catch((e) => console.error("herald: notification failed", e));
        break;
      case "mark":
        this.observe(f.cursor);
        this.emitAll("mark", f);
        break;
      case "replayed":
      case "error":
        this.emitAll(f.type, f);
        break;
    }
  }

  /// A follower's view of a notification: shown once per id in this tab.
  show(f) {
    if (this.seen.has(f.id)) return;
    this.seen.add(f.id);
    this.seenOrder.push(f.id);
    while (this.seenOrder.length > this.dedupeWindow) this.seen.delete(this.seenOrder.shift());
    Promise.resolve()
      .then(() => this.onNotification(f))
      .catch((e) => console.error("herald: notification handler failed", e));
  }

  async notification(f) {
    this.observe(f.cursor);
    if (!this.seen.has(f.id)) {
      this.seen.add(f.id);
      if (this.role === "leader") this.post({ t: "notification", frame: f });
      try {
        await this.onNotification(f);
      } catch (e) {
        this.seen.delete(f.id); // not shown: let the redelivery try again
        console.error("herald: notification handler failed", e);
        return;
      }
      this.seenOrder.push(f.id);
      while (this.seenOrder.length > this.dedupeWindow) this.seen.delete(this.seenOrder.shift());
    }
    if (seqOf(f.cursor) > seqOf(this.cursor)) this.cursor = f.cursor;
    this.save();
    this.ack([f.id]);
  }

  ack(ids) {
    const OPEN = 1; // WebSocket.OPEN, without relying on a WebSocket global
    if (this.ws && this.ws.readyState === OPEN) {
      this.ws.send(JSON.stringify({ type: "ack", ids }));
    } else if (this.es) {
      this.http("/v1/ack", { method: "POST", body: JSON.stringify({ device_id: this.deviceId, ids }) }).catch(() => {});
    }
  }

  /// One action against the server, from the tab that holds the connection: sent now, or queued
  /// while the server cannot be reached.
  perform(kind, body, onQueued) {
    if (!MARK_KIND[kind]) return Promise.reject(new TypeError(`unknown action ${kind}`));
    return new Promise((resolve, reject) => {
      const a = { kind, body, resolve, reject, onQueued };
      if (this.queue.length > 0) return this.enqueue(a); // keep the order
      this.send(a).catch((e) => (retryable(e) ? this.enqueue(a) : reject(e)));
    });
  }

  async send(a) {
    const r = await this.http(`/v1/inbox/${a.kind}`, {
      method: "POST",
      body: JSON.stringify({ ...a.body, device_id: this.deviceId }),
    });
    this.observe(r.cursor);
    // The server tells the user's *other* devices; the tabs of this one learn it here.
    this.emitAll("mark", {
      type: "mark",
      kind: MARK_KIND[a.kind],
      ids: a.body.ids ?? [],
      up_to: a.body.up_to ?? null,
      device_id: this.deviceId,
      cursor: r.cursor ?? null,
      local: true,
    });
    a.resolve(r);
    return r;
  }

  enqueue(a) {
    if (this.queue.length >= this.maxQueued) {
      a.reject(new OfflineError(`offline: ${this.maxQueued} actions are already waiting; this one was not kept`));
      this.emitAll("queue", { size: this.queue.length, refused: a.kind });
      return;
    }
    this.queue.push(a);
    a.onQueued?.();
    this.emitAll("queue", { size: this.queue.length, queued: a.kind, ids: a.body.ids ?? [] });
    if (this.state === "open") this.flush(); // the failure was a blip: try again now
  }

  /// Sends the queued actions in order; stops at the first that still cannot get through.
  async flush() {
    if (this.flushing || this.queue.length === 0) return;
    this.flushing = true;
    try {
      while (this.queue.length > 0 && !this.stopped) {
        const a = this.queue[0];
        try {
          await this.send(a);
        } catch (e) {
          if (retryable(e)) {
            // Still away: try again on the next open (or shortly, if we think we are open).
            if (this.state === "open") setTimeout(() => this.flush(), this.backoffMaxMs);
            return;
          }
          a.reject(e);
        }
        this.queue.shift();
        this.emitAll("queue", { size: this.queue.length });
      }
      this.emitAll("queue", { size: 0, flushed: true });
    } finally {
      this.flushing = false;
    }
  }

  /// A follower sends its action to the leader tab.
  forward(id, a) {
    a.sentAt = Date.now();
    this.post({ t: "action", id, kind: a.kind, body: a.body });
  }

  change(kind, body) {
    let settle;
    const settled = new Promise((resolve) => (settle = resolve));
    const bound = setTimeout(settle, READ_WAITS_FOR_CHANGES_MS);
    const p = this.route(kind, body, settle);
    p.then(settle, settle);
    this.inflight.add(settled);
    settled.then(() => {
      clearTimeout(bound);
      this.inflight.delete(settled);
    });
    return p;
  }

  /// Waits for the changes on their way to the server, so that a read shows them.
  async changesSettled() {
    if (this.inflight.size > 0) await Promise.all([...this.inflight]);
  }

  /// Sends a change from this tab, or forwards it to the leader tab; `onQueued` is called if it
  /// waits in the offline queue instead.
  route(kind, body, onQueued) {
    if (this.role === "follower" && !this.stopped) {
      return new Promise((resolve, reject) => {
        const id = randomId();
        const a = { kind, body, resolve, reject, onQueued, queued: false };
        this.forwarded.set(id, a);
        this.forward(id, a);
        // The leader may close before it answers: send again until someone does.
        if (!this.resendTimer) {
          this.resendTimer = setInterval(() => {
            if (this.role !== "follower" || this.forwarded.size === 0) {
              clearInterval(this.resendTimer);
              this.resendTimer = null;
              return;
            }
            // Not one the leader said it queued: it holds that one until it can send it.
            for (const [fid, f] of this.forwarded) if (!f.queued && Date.now() - f.sentAt > FORWARD_RESEND_MS) this.forward(fid, f);
          }, FORWARD_RESEND_MS);
        }
      });
    }
    return this.perform(kind, body, onQueued);
  }

  read(ids, upTo) {
    return this.change("read", { ids: ids ?? [], up_to: upTo ?? null });
  }

  unread(ids) {
    return this.change("unread", { ids });
  }

  archive(ids) {
    return this.change("archive", { ids });
  }

  unarchive(ids) {
    return this.change("unarchive", { ids });
  }

  // Reads include every change this client has seen (read-your-writes, docs/protocol.md);
  // `inbox` and `unreadCount` first wait for its own changes still on their way (changesSettled).
  withAfter(params) {
    const p = new URLSearchParams();
    for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null) p.set(k, String(v));
    if (this.latest && this.epoch && this.latest.startsWith(`${this.epoch}-`)) p.set("after", this.latest);
    return p;
  }

  async inbox(params = {}) {
    await this.changesSettled();
    return this.http(`/v1/inbox?${this.withAfter(params)}`);
  }

  async unreadCount() {
    await this.changesSettled();
    return this.http(`/v1/inbox/unread-count?${this.withAfter({})}`).then((b) => b.unread_count);
  }

  /// The user's delivery preferences (`GET /v1/preferences`).
  preferences() {
    return this.http("/v1/preferences");
  }

  /// Replaces the user's delivery preferences (`PUT /v1/preferences`); answers the stored document.
  setPreferences(doc) {
    return this.http("/v1/preferences", { method: "PUT", body: JSON.stringify(doc) });
  }
}
