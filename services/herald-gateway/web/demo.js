// The demo inbox of `herald dev`: sign in as a demo user, see notifications live, page back
// through older ones, filter All / Unread / Archived, mark read / unread, archive / unarchive,
// follow a notification's link, set delivery preferences, and run an approval flow whose every
// step (Pending → Approved / Rejected) is a notification sharing one collapse key.
//
// Notification data is only ever text here: every node is built with createElement and
// textContent, never parsed as markup.
import { HeraldClient, HeraldHttpError, OfflineError } from "/herald.js";

const PAGE = 50;
const $ = (id) => document.getElementById(id);
const VIEWS = { inbox: "All", unread: "Unread", archived: "Archived" };
const EMPTY = { inbox: "No notifications yet.", unread: "You're all caught up: nothing unread.", archived: "Nothing archived." };
const STATE_TEXT = { open: "live", connecting: "connecting…", resuming: "resuming…", closed: "offline", replaced: "replaced", stopped: "stopped" };

const known = new Map(); // id → notification (latest known state), whatever the view
const shown = new Map(); // id → <li> in the current view
const pending = new Set(); // ids with a change waiting for the connection
let view = "inbox";
let nextBefore = null;
let loading = false;
let generation = 0; // ignores answers to loads of a view that was left
let client = null;
let token = null;
let user = null;
let everOpen = false;

// ---- small helpers ----------------------------------------------------------------------

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined && text !== null) e.textContent = String(text);
  return e;
}

async function post(path, body, auth = true) {
  const headers = { "content-type": "application/json" };
  if (auth) headers.authorization = `Bearer ${token}`;
  const r = await fetch(path, { method: "POST", headers, body: JSON.stringify(body) });
  const b = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(b?.error?.message ?? `HTTP ${r.status}`);
  return b;
}

function notify(users, eventType, data, collapseKey) {
  return post(
    "/v1/notifications",
    {
      recipients: { users },
      event_type: eventType,
      source: "demo",
      data,
      collapse_key: collapseKey,
      idempotency_key: `${eventType}-${collapseKey}-${crypto.randomUUID()}`,
    },
    false,
  );
}

let toastTimer = null;
function toast(text, kind = "info") {
  const t = $("toast");
  t.textContent = text;
  t.dataset.kind = kind;
  t.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => (t.hidden = true), kind === "error" ? 8000 : 5000);
}

const rtf = new Intl.RelativeTimeFormat("en", { numeric: "auto" });
function relative(ms) {
  const s = Math.round((ms - Date.now()) / 1000);
  const a = Math.abs(s);
  if (a < 45) return "just now";
  if (a < 3600) return rtf.format(Math.round(s / 60), "minute");
  if (a < 86400) return rtf.format(Math.round(s / 3600), "hour");
  if (a < 7 * 86400) return rtf.format(Math.round(s / 86400), "day");
  return new Date(ms).toLocaleDateString(undefined, { year: "numeric", month: "short", day: "numeric" });
}
setInterval(() => {
  for (const t of document.querySelectorAll("time[data-ms]")) t.textContent = relative(Number(t.dataset.ms));
}, 30_000);

/// Only http(s) links are followed; anything else (javascript:, data:) is not a link.
function safeUrl(u) {
  if (typeof u !== "string" || u === "") return null;
  try {
    const url = new URL(u, location.href);
    return url.protocol === "http:" || url.protocol === "https:" ? url.href : null;
  } catch {
    return null;
  }
}

const text = (v) => (typeof v === "string" && v.trim() !== "" ? v : null);

function status(n) {
  const t = n.event_type;
  if (t === "approval.requested") return ["pending", "Pending"];
  if (t === "approval.approved") return ["approved", "Approved"];
  if (t === "approval.rejected") return ["rejected", "Rejected"];
  return null;
}

// ---- the list ---------------------------------------------------------------------------

function belongs(n) {
  if (n.superseded) return false;
  if (view === "archived") return !!n.archived;
  if (view === "unread") return !n.archived && !n.read;
  return !n.archived;
}

function rowFor(n) {
  const li = el("li", "row");
  li.dataset.id = n.id;
  li.tabIndex = -1;
  li.setAttribute("role", "article");
  const d = n.data && typeof n.data === "object" && !Array.isArray(n.data) ? n.data : {};
  const title = text(d.title) ?? n.event_type; // the event type, shown once, when there is no title
  li.setAttribute("aria-label", title);
  li.classList.add(`prio-${n.priority ?? "normal"}`);

  const dot = el("span", "dot");
  dot.setAttribute("aria-hidden", "true");
  const main = el("div", "main");
  const head = el("div", "title-line");
  head.append(el("span", "title", title));
  if (n.priority === "urgent" || n.priority === "high") head.append(el("span", `prio ${n.priority}`, n.priority === "urgent" ? "Urgent" : "High"));
  const st = status(n);
  if (st) head.append(el("span", `pill ${st[0]}`, st[1]));
  else if (text(d.title)) head.append(el("span", "pill type", n.event_type));
  main.append(head);
  const body = text(d.body) ?? text(d.message);
  if (body) main.append(el("p", "text", body));

  const meta = el("div", "meta");
  const who = text(d.requester) ? `from ${d.requester}` : `from ${n.source}`;
  meta.append(el("span", "", `${who}${typeof d.amount === "number" ? ` · €${d.amount}` : ""} · `));
  const created = Date.parse(n.created_at);
  const time = el("time", "", Number.isFinite(created) ? relative(created) : "");
  if (Number.isFinite(created)) {
    time.dateTime = new Date(created).toISOString();
    time.dataset.ms = String(created);
    time.title = new Date(created).toLocaleString(undefined, { dateStyle: "full", timeStyle: "medium" });
  }
  meta.append(time);
  meta.append(el("span", "sync", " · waiting to sync"));
  main.append(meta);

  const href = safeUrl(d.url);
  if (href) {
    const a = el("a", "action-link", text(d.action) ?? text(d.link_text) ?? "Open");
    a.href = href;
    a.target = "_blank";
    a.rel = "noopener noreferrer";
    a.addEventListener("click", () => {
      const cur = known.get(n.id) ?? n;
      if (!cur.read) act("read", cur);
    });
    main.append(a);
  }

  const actions = el("div", "actions");
  if (n.event_type === "approval.requested" && d.approver === user && !n.archived) {
    const decide = (verdict) => () =>
      notify([d.requester, d.approver], `approval.${verdict}`, { ...d, title: `${d.title}: ${verdict}` }, n.collapse_key).catch((e) =>
        toast(`Could not send: ${e.message}`, "error"),
      );
    actions.append(button("Approve", "ok", decide("approved")), button("Reject", "no", decide("rejected")));
  }
  actions.append(
    button("", "ghost toggle-read", () => act(known.get(n.id)?.read ? "unread" : "read", known.get(n.id) ?? n)),
    button("", "ghost toggle-archive", () => act(known.get(n.id)?.archived ? "unarchive" : "archive", known.get(n.id) ?? n)),
  );
  li.append(dot, main, actions);
  paint(li, n);
  return li;
}

function button(label, cls, fn) {
  const b = el("button", cls, label);
  b.type = "button";
  b.addEventListener("click", fn);
  return b;
}

/// Brings a row's look in line with its notification's state.
function paint(li, n) {
  li.classList.toggle("read", !!n.read);
  li.classList.toggle("archived", !!n.archived);
  li.classList.toggle("pending", pending.has(n.id));
  const r = li.querySelector(".toggle-read");
  r.textContent = n.read ? "Mark unread" : "Mark read";
  r.setAttribute("aria-label", `${r.textContent}: ${li.getAttribute("aria-label")}`);
  const a = li.querySelector(".toggle-archive");
  a.textContent = n.archived ? "Unarchive" : "Archive";
  a.setAttribute("aria-label", `${a.textContent}: ${li.getAttribute("aria-label")}`);
}

/// Inserts a row so that the list stays newest first.
function place(li, n) {
  const list = $("items");
  for (const other of list.children) {
    const o = known.get(other.dataset.id);
    if (o && o.seq < n.seq) return other.before(li);
  }
  list.append(li);
}

/// Shows, updates or removes a notification's row after its state changed.
function refresh(n) {
  const li = shown.get(n.id);
  if (!belongs(n)) {
    if (li) {
      const focused = document.activeElement === li;
      const next = li.nextElementSibling ?? li.previousElementSibling;
      li.remove();
      shown.delete(n.id);
      if (focused && next) focus(next);
    }
  } else if (li) {
    paint(li, n);
  } else if (nextBefore === null || n.seq > nextBefore) {
    // Older rows than the loaded pages come with the next page, in order.
    const row = rowFor(n);
    shown.set(n.id, row);
    place(row, n);
  }
  updateEmpty();
  rovingFix();
}

function updateEmpty() {
  $("empty").textContent = EMPTY[view];
  $("empty").hidden = loading || shown.size > 0 || !$("load-error").hidden;
  $("more").hidden = nextBefore === null || loading;
}

/// Keeps one object per notification id (rows' buttons act on it), updated in place.
function remember(n) {
  if (n.collapse_key) {
    // A newer step of the same collapse key replaces the older one.
    for (const o of known.values()) {
      if (o.id !== n.id && o.collapse_key === n.collapse_key && o.seq < n.seq && !o.superseded) {
        o.superseded = true;
        refresh(o);
      }
    }
  }
  if (typeof n.event_type === "string") addKnownType(n.event_type);
  const o = known.get(n.id);
  if (o) return Object.assign(o, n);
  known.set(n.id, n);
  return n;
}

async function loadPage(first) {
  const gen = generation;
  if (loading) return;
  loading = true;
  $("items").setAttribute("aria-busy", "true");
  $("loading").hidden = !first;
  $("load-error").hidden = true;
  updateEmpty();
  try {
    const page = await client.inbox({ filter: view, limit: PAGE, before: first ? null : nextBefore });
    if (gen !== generation) return;
    nextBefore = page.next_before;
    for (const item of page.items) {
      if (known.get(item.id)?.superseded) continue;
      const local = known.get(item.id);
      // A change still waiting to sync is newer than the server's state.
      if (local && pending.has(item.id)) Object.assign(item, { read: local.read, archived: local.archived });
      const n = remember(item);
      if (!shown.has(n.id) && belongs(n)) {
        const li = rowFor(n);
        shown.set(n.id, li);
        place(li, n);
      } else if (shown.has(n.id)) {
        paint(shown.get(n.id), n);
      }
    }
    setBadge(page.unread_count);
  } catch (e) {
    if (gen !== generation) return;
    $("load-error-text").textContent =
      e instanceof TypeError
        ? "Can't reach the server; the inbox will load when it is back."
        : e instanceof HeraldHttpError
          ? `Couldn't load the inbox (HTTP ${e.status}): ${e.serverMessage ?? e.code ?? "no details"}.`
          : `Couldn't load the inbox: ${e.message}`;
    $("load-error").hidden = false;
  } finally {
    if (gen === generation) {
      loading = false;
      $("loading").hidden = true;
      $("items").setAttribute("aria-busy", "false");
      updateEmpty();
      rovingFix();
      maybeLoadMore();
    }
  }
}

function setView(next) {
  view = next;
  generation += 1;
  loading = false;
  for (const tab of document.querySelectorAll("[role=tab]")) {
    const on = tab.dataset.filter === next;
    tab.setAttribute("aria-selected", String(on));
    tab.tabIndex = on ? 0 : -1;
    if (on) $("items").setAttribute("aria-labelledby", tab.id);
  }
  shown.clear();
  $("items").replaceChildren();
  nextBefore = null;
  loadPage(true);
}

let moreObserver = null;
function maybeLoadMore() {
  if (!moreObserver) return;
  moreObserver.disconnect();
  moreObserver.observe($("sentinel"));
}

// ---- actions ----------------------------------------------------------------------------

const ACTION_TEXT = { read: "Mark read", unread: "Mark unread", archive: "Archive", unarchive: "Unarchive" };

/// Applies a change at once and sends it; a change that cannot be sent now waits in the
/// client's queue (the row says "waiting to sync"), and is sent when the connection returns.
async function act(kind, n) {
  const before = { read: n.read, archived: n.archived };
  if (kind === "read") n.read = true;
  if (kind === "unread") n.read = false;
  if (kind === "archive") n.archived = true;
  if (kind === "unarchive") n.archived = false;
  refresh(n);
  try {
    await client[kind]([n.id]);
    pending.delete(n.id);
    refresh(n);
  } catch (e) {
    pending.delete(n.id);
    Object.assign(n, before);
    refresh(n);
    toast(e instanceof OfflineError ? e.message : `${ACTION_TEXT[kind]} failed: ${e.message}`, "error");
  }
  refreshBadge();
}

// ---- badge ------------------------------------------------------------------------------

function setBadge(n) {
  $("badge").textContent = String(n);
  $("badge").classList.toggle("zero", n === 0);
  $("badge").setAttribute("aria-label", `${n} unread`);
  $("tab-unread").textContent = n > 0 ? `Unread (${n})` : "Unread";
}

let badgeTimer = null;
let badgeAsked = 0;
function refreshBadge() {
  clearTimeout(badgeTimer);
  badgeTimer = setTimeout(async () => {
    // The count comes from the projection, which may trail the live push by a moment: the client
    // passes the newest cursor it has seen as `after`, so the count includes it.
    const asked = ++badgeAsked;
    const n = await client.unreadCount().catch(() => null);
    if (n === null || asked !== badgeAsked) return; // a newer answer is on its way
    setBadge(n);
  }, 120);
}

// ---- keyboard ---------------------------------------------------------------------------

function focus(li) {
  for (const other of $("items").children) other.tabIndex = other === li ? 0 : -1;
  li.focus();
}

/// One row is in the tab order (the focused one, or the first).
function rovingFix() {
  const rows = [...$("items").children];
  if (rows.length && !rows.some((r) => r.tabIndex === 0)) rows[0].tabIndex = 0;
}

$("items").addEventListener("keydown", (e) => {
  const li = e.target.closest?.("li.row");
  if (!li || e.altKey || e.ctrlKey || e.metaKey) return;
  const rows = [...$("items").children];
  const i = rows.indexOf(li);
  const n = known.get(li.dataset.id);
  const go = (j) => rows[j] && (e.preventDefault(), focus(rows[j]));
  switch (e.key) {
    case "ArrowDown":
      if (i === rows.length - 1 && nextBefore !== null) loadPage(false);
      return go(i + 1);
    case "ArrowUp":
      return go(i - 1);
    case "Home":
      return go(0);
    case "End":
      return go(rows.length - 1);
  }
  if (e.target !== li || !n) return; // keys inside buttons and links do their own thing
  if (e.key === "Enter") {
    e.preventDefault();
    const a = li.querySelector("a.action-link");
    if (a) a.click();
    else act(n.read ? "unread" : "read", n);
  } else if (e.key === "r") {
    act(n.read ? "unread" : "read", n);
  } else if (e.key === "e") {
    act(n.archived ? "unarchive" : "archive", n);
  }
});

$("tabs").addEventListener("keydown", (e) => {
  const tabs = [...document.querySelectorAll("[role=tab]")];
  const i = tabs.indexOf(document.activeElement);
  if (i < 0) return;
  let j = null;
  if (e.key === "ArrowRight") j = (i + 1) % tabs.length;
  if (e.key === "ArrowLeft") j = (i + tabs.length - 1) % tabs.length;
  if (e.key === "Home") j = 0;
  if (e.key === "End") j = tabs.length - 1;
  if (j === null) return;
  e.preventDefault();
  tabs[j].focus();
  setView(tabs[j].dataset.filter);
});
for (const tab of document.querySelectorAll("[role=tab]")) tab.addEventListener("click", () => setView(tab.dataset.filter));

// ---- connection state -------------------------------------------------------------------

function showState(s) {
  $("state").textContent = STATE_TEXT[s] ?? s;
  $("state").dataset.state = s;
  $("state").className = `state ${s}`;
  if (s === "open") {
    if (everOpen && !$("load-error").hidden) setView(view); // the first load failed: try again
    everOpen = true;
  }
  const banner = $("banner");
  banner.replaceChildren();
  if (s === "replaced") {
    banner.append(el("span", "", "This inbox was opened with the same device somewhere else, so it stopped here. "));
    banner.append(button("Use it here", "ghost", () => client.reconnect()));
    banner.hidden = false;
  } else if (everOpen && s !== "open" && s !== "stopped") {
    const waiting = client?.pendingActions ?? 0;
    banner.append(
      el("span", "", `Offline: reconnecting…${waiting ? ` ${waiting} change${waiting === 1 ? "" : "s"} will be sent when the connection returns.` : " Changes you make will be sent when it returns."}`),
    );
    banner.hidden = false;
  } else {
    banner.hidden = true;
  }
  document.body.classList.toggle("offline", s !== "open");
}

// ---- preferences ------------------------------------------------------------------------

let prefs = null;
const knownTypes = new Set();
function addKnownType(t) {
  if (knownTypes.has(t) || knownTypes.size > 200) return;
  knownTypes.add(t);
  const o = document.createElement("option");
  o.value = t;
  $("known-types").append(o);
}

function prefsStatus(msg, kind = "info") {
  $("prefs-status").textContent = msg;
  $("prefs-status").dataset.kind = kind;
}

function renderPrefs() {
  const rows = $("prefs-rows");
  rows.replaceChildren();
  const entries = [
    ...Object.entries(prefs.event_types ?? {}).map(([k, v]) => ["event_types", k, v]),
    ...Object.entries(prefs.topics ?? {}).map(([k, v]) => ["topics", k, v]),
  ];
  for (const [kind, name, p] of entries) {
    const tr = document.createElement("tr");
    tr.dataset.kind = kind;
    tr.dataset.name = name;
    const th = el("th", "", name);
    th.scope = "row";
    th.append(el("span", "kind", kind === "topics" ? " topic" : " event type"));
    const check = (field) => {
      const td = document.createElement("td");
      const c = document.createElement("input");
      c.type = "checkbox";
      c.className = `pref-${field}`;
      c.checked = !!p[field];
      c.setAttribute("aria-label", `${field === "live" ? "Live" : "Inbox"}: ${name}`);
      c.addEventListener("change", () => {
        p[field] = c.checked;
        if (field === "inbox") {
          const live = tr.querySelector(".pref-live");
          if (!c.checked) p.live = false; // muted: not live either
          live.checked = p.live;
          live.disabled = !c.checked;
        }
      });
      if (field === "live" && !p.inbox) c.disabled = true;
      td.append(c);
      return td;
    };
    const rm = document.createElement("td");
    rm.append(
      button("Remove", "ghost small", () => {
        delete prefs[kind][name];
        renderPrefs();
      }),
    );
    tr.append(th, check("live"), check("inbox"), rm);
    rows.append(tr);
  }
  $("prefs").hidden = entries.length === 0;
  if (entries.length === 0) prefsStatus("No preferences yet: everything is delivered live and to the inbox. Add an event type or topic to change that.");
}

async function openPrefs() {
  $("prefs").hidden = true;
  $("prefs-add").hidden = true;
  prefsStatus("Loading…");
  try {
    prefs = await client.preferences();
    prefs.event_types ??= {};
    prefs.topics ??= {};
    prefsStatus("");
    renderPrefs();
    $("prefs-add").hidden = false;
  } catch (e) {
    if (e instanceof HeraldHttpError && e.status === 404) prefsStatus("Preferences unavailable on this server.", "unavailable");
    else prefsStatus(`Couldn't load preferences: ${e.message}`, "error");
  }
}

$("settings-toggle").addEventListener("click", () => {
  const open = $("settings").hidden;
  $("settings").hidden = !open;
  $("settings-toggle").setAttribute("aria-expanded", String(open));
  if (open) openPrefs();
});
$("prefs-add").addEventListener("submit", (e) => {
  e.preventDefault();
  const name = $("prefs-name").value.trim();
  if (!name) return prefsStatus("Name an event type or a topic first.", "error");
  prefs[$("prefs-kind").value][name] ??= { live: false, inbox: true };
  $("prefs-name").value = "";
  prefsStatus("");
  renderPrefs();
});
$("prefs-save").addEventListener("click", async () => {
  prefsStatus("Saving…");
  try {
    prefs = await client.setPreferences(prefs);
    prefs.event_types ??= {};
    prefs.topics ??= {};
    renderPrefs();
    prefsStatus("Saved.", "ok");
  } catch (e) {
    prefsStatus(`Couldn't save: ${e.message}`, "error");
  }
});

// ---- sign in ----------------------------------------------------------------------------

async function signIn(name) {
  token = (await post("/v1/dev/token", { user_id: name }, false)).token;
  user = name;
  sessionStorage.setItem("herald-demo-user", name);
  $("who").textContent = `· ${name}`;
  $("signin").hidden = true;
  for (const id of ["app", "list", "settings-toggle", "signout"]) $(id).hidden = false;
  client = new HeraldClient({
    getToken: async () => token,
    user: name,
    deviceId: `demo-${name}`,
    onNotification: async (f) => {
      const n = { ...f, read: false, archived: false };
      if (known.has(n.id)) return;
      remember(n);
      refresh(n);
      refreshBadge();
    },
  });
  window.heraldClient = client; // for the browser test and the curious
  client.addEventListener("state", (e) => showState(e.detail));
  client.addEventListener("mark", (e) => {
    const m = e.detail;
    const kind = { read: ["read", true], unread: ["read", false], archived: ["archived", true], unarchived: ["archived", false] }[m.kind];
    const ids = new Set(m.ids);
    if (m.kind === "read" && m.up_to) {
      const upTo = Number(m.up_to.split("-")[1]);
      for (const n of known.values()) if (n.seq <= upTo) ids.add(n.id);
    }
    for (const id of ids) {
      const n = known.get(id);
      if (!n) continue;
      if (m.local) pending.delete(id);
      if (m.kind === "expired") n.superseded = true;
      else if (kind && !pending.has(id)) n[kind[0]] = kind[1];
      refresh(n);
    }
    refreshBadge();
  });
  client.addEventListener("queue", (e) => {
    const q = e.detail;
    if (q.queued) {
      for (const id of q.ids ?? []) {
        pending.add(id);
        const n = known.get(id);
        if (n) refresh(n);
      }
      toast(`Offline: “${ACTION_TEXT[q.queued]}” will be sent when the connection returns (${q.size} waiting).`, "offline");
    } else if (q.refused) {
      toast(`Offline, and ${q.size} changes are already waiting: “${ACTION_TEXT[q.refused]}” was not kept.`, "error");
    } else if (q.flushed && $("toast").dataset.kind === "offline") {
      toast("Back online: your changes were sent.", "ok");
    }
    showState(client.state);
  });
  moreObserver = new IntersectionObserver((entries) => {
    if (entries.some((x) => x.isIntersecting) && nextBefore !== null && !loading) loadPage(false);
  });
  moreObserver.observe($("sentinel"));
  client.start();
  setView("inbox");
}

$("login").addEventListener("submit", (e) => {
  e.preventDefault();
  const name = $("user").value.trim();
  $("login-error").hidden = true;
  signIn(name).catch((err) => {
    $("login-error").textContent = `Can't sign in as “${name}”: ${err.message}`;
    $("login-error").hidden = false;
  });
});
$("signout").addEventListener("click", () => {
  sessionStorage.removeItem("herald-demo-user");
  client?.stop();
  location.reload();
});
$("more").addEventListener("click", () => loadPage(false));
$("retry").addEventListener("click", () => setView(view));
$("allread").addEventListener("click", async () => {
  // Everything up to the newest position this client has seen (or the newest row).
  let upTo = client.latest;
  for (const n of known.values()) if (!upTo || n.seq > Number(upTo.split("-")[1])) upTo = n.cursor;
  if (!upTo) return;
  const was = [...known.values()].filter((n) => !n.read);
  for (const n of was) {
    n.read = true;
    refresh(n);
  }
  try {
    await client.read([], upTo);
  } catch (e) {
    for (const n of was) {
      n.read = false;
      refresh(n);
    }
    toast(`Mark all read failed: ${e.message}`, "error");
  }
  refreshBadge();
});
$("request").addEventListener("submit", async (e) => {
  e.preventDefault();
  const requestId = `req-${crypto.randomUUID().slice(0, 8)}`;
  const data = { title: $("what").value, amount: Number($("amount").value), requester: user, approver: $("approver").value.trim(), request_id: requestId };
  try {
    await notify([data.approver, user], "approval.requested", data, requestId);
  } catch (err) {
    toast(`Could not send the request: ${err.message}`, "error");
  }
});

const remembered = sessionStorage.getItem("herald-demo-user");
if (remembered) signIn(remembered).catch((err) => toast(`Can't sign in: ${err.message}`, "error"));
