// The demo inbox of `herald dev`: sign in as a demo user, see notifications live, mark them read,
// archive them, and run an approval flow whose every step (Pending → Approved / Rejected) is a
// notification sharing one collapse key.
import { HeraldClient } from "/herald.js";

const $ = (id) => document.getElementById(id);
const items = new Map(); // id → { data, li }
let client = null;
let token = null;
let user = null;

async function post(path, body, auth = true) {
  const headers = { "content-type": "application/json" };
  if (auth) headers.authorization = `Bearer ${token}`;
  const r = await fetch(path, { method: "POST", headers, body: JSON.stringify(body) });
  const b = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(b?.error?.message ?? `HTTP ${r.status}`);
  return b;
}

function notify(users, eventType, data, collapseKey) {
  return post("/v1/notifications", {
    recipients: { users },
    event_type: eventType,
    source: "demo",
    data,
    collapse_key: collapseKey,
    idempotency_key: `${eventType}-${collapseKey}-${crypto.randomUUID()}`,
  }, false);
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
    $("badge").textContent = String(n);
    $("badge").classList.toggle("zero", n === 0);
  }, 120);
}

function status(n) {
  const t = n.event_type;
  if (t === "approval.requested") return ["pending", "Pending"];
  if (t === "approval.approved") return ["approved", "Approved"];
  if (t === "approval.rejected") return ["rejected", "Rejected"];
  return ["", t];
}

function render(n, { prepend }) {
  if (items.has(n.id)) return; // shown once, whatever the transport says
  // A newer step of the same approval replaces the older one (collapse key).
  if (n.collapse_key) {
    for (const [id, it] of items) {
      if (it.n.collapse_key === n.collapse_key && (it.n.seq ?? 0) < (n.seq ?? 0)) {
        it.li.remove();
        items.delete(id);
      }
    }
  }
  const li = document.createElement("li");
  li.dataset.id = n.id;
  if (n.read) li.classList.add("read");
  const [cls, label] = status(n);
  const d = n.data ?? {};
  // Built node by node: notification data is only ever text, never markup.
  const el = (tag, cls, text) => {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  };
  const title = el("div", "title", String(d.title ?? n.event_type));
  title.append(el("span", `pill ${cls}`, label));
  const meta = el("div", "meta");
  const body = el("div", "body");
  body.append(title, meta);
  li.append(el("span", "dot"), body, el("span", "actions"));
  const who = d.requester ? `from ${d.requester}` : `from ${n.source}`;
  meta.textContent = `${who}${d.amount ? ` · €${d.amount}` : ""} · ${new Date(n.created_at).toLocaleTimeString()}`;
  const actions = li.querySelector(".actions");
  const button = (text, cls, fn) => {
    const b = document.createElement("button");
    b.textContent = text;
    b.className = cls;
    b.onclick = fn;
    actions.append(b);
  };
  if (n.event_type === "approval.requested" && d.approver === user) {
    const decide = (verdict) => () =>
      notify([d.requester, d.approver], `approval.${verdict}`, { ...d, title: `${d.title}: ${verdict}` }, n.collapse_key);
    button("Approve", "ok", decide("approved"));
    button("Reject", "no", decide("rejected"));
  }
  button("Read", "ghost mark-read", async () => {
    await client.read([n.id]);
    li.classList.add("read");
    refreshBadge();
  });
  button("Archive", "ghost", async () => {
    await client.archive([n.id]);
    li.remove();
    items.delete(n.id);
    refreshBadge();
  });
  items.set(n.id, { n, li });
  $("items")[prepend ? "prepend" : "append"](li);
  $("empty").hidden = items.size > 0;
}

async function signIn(name) {
  user = name;
  token = (await post("/v1/dev/token", { user_id: name }, false)).token;
  sessionStorage.setItem("herald-demo-user", name);
  $("who").textContent = `· ${name}`;
  $("signin").hidden = true;
  $("app").hidden = false;
  $("list").hidden = false;
  client = new HeraldClient({
    getToken: async () => token,
    deviceId: `demo-${name}`,
    onNotification: async (n) => {
      render(n, { prepend: true });
      refreshBadge();
    },
  });
  client.addEventListener("state", (e) => {
    $("state").textContent = e.detail;
    $("state").className = `state ${e.detail}`;
  });
  client.addEventListener("mark", (e) => {
    for (const id of e.detail.ids) {
      const it = items.get(id);
      if (!it) continue;
      if (e.detail.kind === "read") it.li.classList.add("read");
      if (e.detail.kind === "unread") it.li.classList.remove("read");
      if (e.detail.kind === "archived" || e.detail.kind === "expired") {
        it.li.remove();
        items.delete(id);
      }
    }
    refreshBadge();
  });
  // The first page from the inbox API (newest first), then live.
  const page = await client.inbox({ limit: 50 });
  for (const n of page.items) render(n, { prepend: false });
  refreshBadge();
  client.start();
}

$("login").onsubmit = (e) => {
  e.preventDefault();
  signIn($("user").value.trim()).catch((err) => alert(err.message));
};
$("signout").onclick = () => {
  sessionStorage.removeItem("herald-demo-user");
  location.reload();
};
$("allread").onclick = async () => {
  const newest = [...items.values()].map((it) => it.n).sort((a, b) => b.seq - a.seq)[0];
  if (!newest) return;
  await client.read([], newest.cursor);
  for (const it of items.values()) it.li.classList.add("read");
  refreshBadge();
};
$("request").onsubmit = async (e) => {
  e.preventDefault();
  const requestId = `req-${crypto.randomUUID().slice(0, 8)}`;
  const data = { title: $("what").value, amount: Number($("amount").value), requester: user, approver: $("approver").value.trim(), request_id: requestId };
  await notify([data.approver, user], "approval.requested", data, requestId);
};

const remembered = sessionStorage.getItem("herald-demo-user");
if (remembered) signIn(remembered);
