// herald.js: Herald's browser client for protocol herald.v1 (docs/protocol.md).
// An ES module with no build step, served by the gateway at /herald.js.
//
//   import { HeraldClient } from "/herald.js";
//   const client = new HeraldClient({ getToken: async () => token, onNotification: async (n) => show(n) });
//   client.addEventListener("state", (e) => console.log(e.detail)); // connecting | resuming | open | closed
//   client.start();
//
// Exactly-once visibility: the client persists its cursor and the ids it has shown (localStorage),
// calls onNotification at most once per id, and ACKs only after the handler returned. A handler
// that throws is not ACKed, so the server redelivers it.

const PROTOCOL = "herald.v1";

function seqOf(cursor) {
  if (!cursor) return -1;
  const dash = cursor.indexOf("-");
  return dash < 0 ? -1 : Number(cursor.slice(dash + 1));
}

export class HeraldClient extends EventTarget {
  constructor(options = {}) {
    super();
    this.baseUrl = (options.baseUrl ?? globalThis.location?.origin ?? "").replace(/\/$/, "");
    this.getToken = options.getToken;
    this.onNotification = options.onNotification ?? (() => {});
    this.storage = options.storage ?? globalThis.localStorage;
    this.deviceId = options.deviceId ?? HeraldClient.defaultDeviceId(this.storage);
    this.transport = options.transport ?? (typeof WebSocket === "function" ? "websocket" : "sse");
    this.backoffInitialMs = options.backoffInitialMs ?? 250;
    this.backoffMaxMs = options.backoffMaxMs ?? 10_000;
    this.dedupeWindow = options.dedupeWindow ?? 2000;
    this.state = "closed";
    this.stopped = true;
    this.attempt = 0;
    // WebSocket attempts in a row that never opened; at FALLBACK_AFTER, switch to SSE.
    this.wsFailures = 0;
    this.fallbackAfter = options.fallbackAfter ?? 3;
    this.chain = Promise.resolve();
    const saved = this.load();
    this.cursor = saved.cursor ?? null;
    this.epoch = saved.epoch ?? null;
    this.seenOrder = Array.isArray(saved.seen) ? saved.seen : [];
    this.seen = new Set(this.seenOrder);
    // The newest position of this user's events the client has seen (notifications, marks, its
    // own changes). Reads pass it as `after`, so they include what the client already showed.
    this.latest = null;
  }

  observe(cursor) {
    if (cursor && seqOf(cursor) > seqOf(this.latest)) this.latest = cursor;
  }

  static defaultDeviceId(storage = globalThis.localStorage) {
    let id = storage.getItem("herald:device");
    if (!id) {
      id = "web-" + Math.random().toString(36).slice(2, 10);
      storage.setItem("herald:device", id);
    }
    return id;
  }

  key() {
    return `herald:${this.deviceId}`;
  }

  load() {
    try {
      return JSON.parse(this.storage.getItem(this.key()) ?? "{}");
    } catch {
      return {};
    }
  }

  save() {
    this.storage.setItem(
      this.key(),
      JSON.stringify({ cursor: this.cursor, epoch: this.epoch, seen: this.seenOrder.slice(-this.dedupeWindow) }),
    );
  }

  setState(state) {
    if (this.state === state) return;
    this.state = state;
    this.dispatchEvent(new CustomEvent("state", { detail: state }));
  }

  start() {
    this.stopped = false;
    this.connect();
  }

  stop() {
    this.stopped = true;
    this.ws?.close(1000);
    this.es?.close();
    this.setState("closed");
  }

  async http(path, init = {}) {
    const token = await this.getToken();
    const headers = { authorization: `Bearer ${token}`, ...(init.body ? { "content-type": "application/json" } : {}) };
    const resp = await fetch(this.baseUrl + path, { ...init, headers: { ...headers, ...(init.headers ?? {}) } });
    const body = await resp.json().catch(() => ({}));
    if (!resp.ok) throw new Error(`${path}: HTTP ${resp.status} ${body?.error?.code ?? ""} ${body?.error?.message ?? ""}`);
    return body;
  }

  async connect() {
    if (this.stopped) return;
    this.setState(this.cursor ? "resuming" : "connecting");
    let ticket;
    try {
      ticket = (await this.http("/v1/ws-ticket", { method: "POST" })).ticket;
    } catch (e) {
      return this.retry(e);
    }
    if (this.stopped) return;
    if (this.transport === "sse") return this.connectSse(ticket);
    const url = this.baseUrl.replace(/^http/, "ws") + `/v1/ws?ticket=${encodeURIComponent(ticket)}`;
    const ws = new WebSocket(url, PROTOCOL);
    this.ws = ws;
    ws.onopen = () => ws.send(JSON.stringify({ type: "hello", device_id: this.deviceId, cursor: this.cursor }));
    ws.onmessage = (m) => {
      let frame;
      try {
        frame = JSON.parse(m.data);
      } catch {
        return;
      }
      this.frame(frame);
    };
    let opened = false;
    ws.addEventListener("open", () => {
      opened = true;
      this.wsFailures = 0;
    });
    ws.onclose = (ev) => {
      if (this.ws === ws) this.ws = null;
      if (!opened && ++this.wsFailures >= this.fallbackAfter && typeof EventSource === "function") {
        // WebSockets do not get through (a proxy, a firewall): fall back to Server-Sent Events.
        this.transport = "sse";
        this.dispatchEvent(new CustomEvent("fallback", { detail: { transport: "sse" } }));
      }
      this.dispatchEvent(new CustomEvent("close", { detail: { code: ev.code, reason: ev.reason } }));
      this.retry(new Error(`closed ${ev.code} ${ev.reason}`));
    };
  }

  connectSse(ticket) {
    const params = new URLSearchParams({ ticket, device_id: this.deviceId });
    if (this.cursor) params.set("cursor", this.cursor);
    const es = new EventSource(`${this.baseUrl}/v1/sse?${params}`);
    this.es = es;
    es.onmessage = (m) => this.frame(JSON.parse(m.data));
    es.onerror = () => {
      es.close();
      if (this.es === es) this.es = null;
      this.retry(new Error("event stream lost"));
    };
  }

  retry(error) {
    if (this.stopped) return;
    this.setState("closed");
    this.attempt += 1;
    // Exponential backoff with full jitter.
    const cap = Math.min(this.backoffMaxMs, this.backoffInitialMs * 2 ** (this.attempt - 1));
    const wait = Math.random() * cap;
    this.dispatchEvent(new CustomEvent("retry", { detail: { wait, error: String(error) } }));
    setTimeout(() => this.connect(), wait);
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
        this.dispatchEvent(new CustomEvent(f.type, { detail: f }));
        break;
      case "replayed":
      case "error":
        this.dispatchEvent(new CustomEvent(f.type, { detail: f }));
        break;
    }
  }

  async notification(f) {
    this.observe(f.cursor);
    if (!this.seen.has(f.id)) {
      this.seen.add(f.id);
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

  async change(kind, body) {
    const r = await this.http(`/v1/inbox/${kind}`, { method: "POST", body: JSON.stringify({ ...body, device_id: this.deviceId }) });
    this.observe(r.cursor);
    return r;
  }

  read(ids, upTo) {
    return this.change("read", { ids, up_to: upTo ?? null });
  }

  unread(ids) {
    return this.change("unread", { ids });
  }

  archive(ids) {
    return this.change("archive", { ids });
  }

  // Reads include every change this client has seen (read-your-writes, docs/protocol.md).
  withAfter(params) {
    const p = new URLSearchParams(params);
    if (this.latest && this.epoch && this.latest.startsWith(`${this.epoch}-`)) p.set("after", this.latest);
    return p;
  }

  inbox(params = {}) {
    return this.http(`/v1/inbox?${this.withAfter(params)}`);
  }

  unreadCount() {
    return this.http(`/v1/inbox/unread-count?${this.withAfter({})}`).then((b) => b.unread_count);
  }
}
