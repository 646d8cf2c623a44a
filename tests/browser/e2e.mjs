// End-to-end test of the demo inbox and /herald.js in real headless Chromium (Debian's
// /usr/bin/chromium, driven by playwright-core). Run by tests/browser.rs, which passes:
//   HERALD_BIN   the herald binary
//   DATA_DIR     a fresh data directory
//   PORT         a free port
//   SCREENSHOT   where to save a screenshot if the test fails
//   SHOTS_DIR    where to save the screenshots of each state (docs/images: inbox-*.png)
//   CHROMIUM     the browser executable
//
// Every wait is for a condition, with a generous hang guard; nothing is asserted by sleeping.
import { spawn } from "node:child_process";
import { chromium } from "playwright-core";

const { HERALD_BIN, DATA_DIR, PORT, SCREENSHOT, SHOTS_DIR, CHROMIUM } = process.env;
const base = `http://127.0.0.1:${PORT}`;
const GUARD = 30_000; // hang guard for each wait (a loaded 2-core machine), not a timing assertion
const PAGE = 50; // the demo's page size

let herald = null;
function startHerald() {
  herald = spawn(HERALD_BIN, ["dev", "--data-dir", DATA_DIR, "--listen", `127.0.0.1:${PORT}`], {
    stdio: ["ignore", "ignore", "inherit"],
    env: { ...process.env, RUST_LOG: "warn" },
  });
  return waitFor(async () => (await fetch(`${base}/healthz`)).ok, "herald dev to start");
}
function killHerald(signal) {
  const p = herald;
  return new Promise((resolve) => {
    p.once("exit", resolve);
    p.kill(signal);
  });
}

async function waitFor(check, what, guard = GUARD) {
  const deadline = Date.now() + guard;
  let last;
  for (;;) {
    try {
      if (await check()) return;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}${last ? ` (last error: ${last.message})` : ""}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}
function check(cond, message) {
  if (!cond) throw new Error(message);
}

async function notify(users, eventType, data, extra = {}) {
  const r = await fetch(`${base}/v1/notifications`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ recipients: { users }, event_type: eventType, source: "e2e", data, ...extra }),
  });
  if (r.status !== 202) throw new Error(`POST /v1/notifications: ${r.status} ${await r.text()}`);
  return (await r.json()).notification_id;
}

async function tokenFor(user) {
  const r = await fetch(`${base}/v1/dev/token`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ user_id: user }) });
  return (await r.json()).token;
}
async function api(path, user) {
  const r = await fetch(`${base}${path}`, { headers: { authorization: `Bearer ${await tokenFor(user)}` } });
  return { status: r.status, body: await r.json().catch(() => null) };
}
async function devicesOnline(user) {
  // `herald dev` leaves operator endpoints open: no credentials.
  const r = await fetch(`${base}/v1/presence`);
  if (!r.ok) throw new Error(`GET /v1/presence: ${r.status}`);
  return (await r.json()).online.find((u) => u.user_id === user)?.devices ?? [];
}

const step = (s) => console.log(`e2e: ${s}`);
const shots = [];
async function shot(page, name) {
  const path = `${SHOTS_DIR}/inbox-${name}.png`;
  await page.screenshot({ path });
  shots.push(path);
  step(`screenshot ${path}`);
}

// Page helpers.
const rows = (page) => page.locator("#items li");
const row = (page, id) => page.locator(`#items li[data-id="${id}"]`);
const badge = (page) => page.locator("#badge").textContent();
const stateOf = (page) => page.locator("#state").getAttribute("data-state");
const ids = (page) => page.$$eval("#items li", (ls) => ls.map((l) => l.dataset.id));
async function signIn(page, user) {
  await page.goto(base);
  await page.fill("#user", user);
  await page.click("#login button");
  await waitFor(async () => (await stateOf(page)) === "open", `${user}'s page to connect`);
}
async function tab(page, filter) {
  await page.click(`#tab-${filter}`);
  await waitFor(async () => (await page.getAttribute(`#tab-${filter}`, "aria-selected")) === "true" && (await page.getAttribute("#items", "aria-busy")) === "false", `the ${filter} view to load`);
}
/// The viewport is wider than the page, and every row (and everything in it) fits.
async function overflow(page) {
  return page.evaluate(() => {
    const w = window.innerWidth;
    const bad = [];
    if (document.documentElement.scrollWidth > w) bad.push(`document ${document.documentElement.scrollWidth} > ${w}`);
    for (const li of document.querySelectorAll("#items li, header, .card")) {
      for (const e of [li, ...li.querySelectorAll("*")]) {
        const r = e.getBoundingClientRect();
        if (r.width > 0 && (r.right > w + 0.5 || r.left < -0.5)) bad.push(`${e.tagName}.${e.className} [${Math.round(r.left)}, ${Math.round(r.right)}] (${e.textContent.slice(0, 30)})`);
      }
    }
    return { width: w, bad: bad.slice(0, 10), rows: document.querySelectorAll("#items li").length };
  });
}

let browser;
let pageA;
try {
  await startHerald();
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  const context = await browser.newContext({ viewport: { width: 800, height: 600 } });
  // The notifications' links point here; answer them without a network.
  await context.route("https://example.invalid/**", (r) => r.fulfill({ status: 200, contentType: "text/plain", body: "ok" }));
  const pageErrors = [];
  const watch = (p, name) => {
    p.on("pageerror", (e) => pageErrors.push(`${name}: ${e.message}`));
    p.on("console", (m) => m.type() === "error" && !/Failed to load resource|ERR_CONNECTION_REFUSED|WebSocket connection/.test(m.text()) && pageErrors.push(`${name} console: ${m.text()}`));
  };
  const notFound = [];
  context.on("response", (r) => r.status() === 404 && !r.url().includes("/v1/preferences") && notFound.push(r.url()));

  step("sign in as alice: empty state, favicon served");
  pageA = await context.newPage();
  watch(pageA, "A");
  await signIn(pageA, "alice");
  await waitFor(async () => (await pageA.locator("#empty").isVisible()) && (await pageA.locator("#empty").textContent()).includes("No notifications"), "the empty state");
  const icon = await fetch(`${base}/favicon.ico`);
  check(icon.ok && icon.headers.get("content-type").startsWith("image/svg"), `favicon: ${icon.status}`);
  check((await pageA.getAttribute("link[rel=icon]", "href")) === "/favicon.svg", "the page names its icon");
  await shot(pageA, "empty");

  step("a second tab of alice: one connection for both, no reconnect loop");
  const pageB = await context.newPage();
  watch(pageB, "B");
  await signIn(pageB, "alice");
  await waitFor(async () => (await devicesOnline("alice")).length === 1, "alice's one device online");

  step("notifications arrive live in both tabs");
  const urgent = await notify(["alice"], "order.shipped", { title: "Order 42 shipped", body: "Your parcel left the warehouse.", url: "https://example.invalid/orders/42", action: "Track parcel" }, { priority: "urgent" });
  const untitled = await notify(["alice"], "invoice.created", { amount: 99 });
  const xssTitle = `<img src=x onerror="window.__xss=1">`;
  const xss = await notify(["alice"], `evt<svg onload="window.__xss=3">`, { title: xssTitle, body: `<script>window.__xss=2</script><b>bold?</b>`, url: "javascript:window.__xss=4" });
  const plain = await notify(["alice"], "comment.added", { title: "Bob commented", body: "Looks good to me." }, { priority: "low" });
  for (const [p, name] of [[pageA, "A"], [pageB, "B"]]) {
    await waitFor(async () => (await rows(p).count()) === 4 && (await badge(p)) === "4", `4 rows and badge 4 in tab ${name}`);
  }
  // Over a window of observation (not a timing assertion): no tab closes a socket, and the
  // server still sees one device. Before the shared connection, each tab closed ~4 times a second.
  const until = Date.now() + 2000;
  while (Date.now() < until) {
    const closes = await Promise.all([pageA, pageB].map((p) => p.evaluate(() => heraldClient.closes)));
    check(closes[0] + closes[1] === 0, `sockets closed in the tabs: ${closes}`);
    await new Promise((r) => setTimeout(r, 200));
  }
  check((await devicesOnline("alice")).length === 1, `devices online: ${await devicesOnline("alice")}`);
  const roles = [await pageA.evaluate(() => heraldClient.role), await pageB.evaluate(() => heraldClient.role)].sort();
  check(JSON.stringify(roles) === JSON.stringify(["follower", "leader"]), `tab roles: ${roles}`);

  step("rows: urgent looks urgent, no duplicated title, body, relative time with the date on hover");
  check(await row(pageA, urgent).evaluate((li) => li.classList.contains("prio-urgent") && li.querySelector(".prio.urgent")?.textContent === "Urgent"), "the urgent row is marked urgent");
  const urgentBorder = await row(pageA, urgent).evaluate((li) => getComputedStyle(li).borderLeftColor);
  const plainBorder = await row(pageA, plain).evaluate((li) => getComputedStyle(li).borderLeftColor);
  check(urgentBorder !== plainBorder, `urgent and low rows look alike (${urgentBorder})`);
  const untitledText = await row(pageA, untitled).locator(".main").textContent();
  check(untitledText.split("invoice.created").length === 2, `the untitled row names its type once: ${untitledText}`);
  check((await row(pageA, urgent).locator(".text").textContent()) === "Your parcel left the warehouse.", "the body is shown");
  const time = await row(pageA, urgent).locator("time").evaluate((t) => ({ text: t.textContent, title: t.title, dt: t.dateTime }));
  check(time.text === "just now" && time.title.includes(String(new Date().getFullYear())) && !Number.isNaN(Date.parse(time.dt)), `time: ${JSON.stringify(time)}`);

  step("markup in a notification is shown as text and never runs; a javascript: url is no link");
  const x = await pageA.evaluate((id) => {
    const li = document.querySelector(`#items li[data-id="${id}"]`);
    return {
      ran: window.__xss ?? null,
      injected: document.querySelectorAll("#items img, #items script, #items svg, #items b").length,
      title: li.querySelector(".title").textContent,
      pill: li.querySelector(".pill")?.textContent,
      body: li.querySelector(".text").textContent,
      links: li.querySelectorAll("a").length,
    };
  }, xss);
  check(x.ran === null && x.injected === 0, `markup ran or was injected: ${JSON.stringify(x)}`);
  check(x.title === xssTitle && x.pill === `evt<svg onload="window.__xss=3">` && x.body.startsWith("<script>"), `markup not shown as text: ${JSON.stringify(x)}`);
  check(x.links === 0, "a javascript: url became a link");
  await pageA.locator(`#items li[data-id="${xss}"] .toggle-read`).hover();
  await shot(pageA, "all");

  step("the action link opens and marks the notification read");
  const [popup] = await Promise.all([context.waitForEvent("page"), row(pageA, urgent).locator("a.action-link").click()]);
  await popup.close();
  await waitFor(async () => (await row(pageA, urgent).getAttribute("class")).includes("read") && (await badge(pageA)) === "3", "the clicked row read, badge 3");
  await waitFor(async () => (await row(pageB, urgent).getAttribute("class")).includes("read"), "the other tab to show it read");

  step("tabs: Unread, Archived; archive, unarchive, mark unread");
  await tab(pageA, "unread");
  check(JSON.stringify((await ids(pageA)).sort()) === JSON.stringify([untitled, xss, plain].sort()), `unread view: ${await ids(pageA)}`);
  await row(pageA, plain).locator(".toggle-archive").click();
  await waitFor(async () => (await rows(pageA).count()) === 2, "the archived row to leave the unread view");
  await tab(pageA, "archived");
  await waitFor(async () => JSON.stringify(await ids(pageA)) === JSON.stringify([plain]), "the archived view to hold the archived row");
  await shot(pageA, "archived");
  await row(pageA, plain).locator(".toggle-archive").click(); // Unarchive
  await waitFor(async () => (await rows(pageA).count()) === 0 && (await pageA.locator("#empty").isVisible()), "the archived view to be empty");
  await tab(pageA, "inbox");
  check((await rows(pageA).count()) === 4, `all view after unarchive: ${await rows(pageA).count()} rows`);
  await row(pageA, urgent).locator(".toggle-read").click(); // Mark unread
  await waitFor(async () => (await badge(pageA)) === "4", "badge 4 after mark unread");
  await tab(pageA, "unread");
  await waitFor(async () => (await ids(pageA)).includes(urgent) && (await rows(pageA).count()) === 4, "the unread view to include the row marked unread");
  await shot(pageA, "unread");
  step("a read right after a change shows it, while the change is still on its way (read-your-writes)");
  const rw = await pageA.evaluate(async (id) => {
    const archiving = heraldClient.archive([id]);
    const archived = (await heraldClient.inbox({ filter: "archived" })).items.map((i) => i.id);
    await archiving;
    const unarchiving = heraldClient.unarchive([id]);
    const after = (await heraldClient.inbox({ filter: "archived" })).items.map((i) => i.id);
    const unread = heraldClient.read([id]);
    const count = await heraldClient.unreadCount();
    await Promise.all([unarchiving, unread, heraldClient.unread([id])]);
    return { role: heraldClient.role, archived, after, count };
  }, plain);
  check(JSON.stringify(rw.archived) === JSON.stringify([plain]) && rw.after.length === 0 && rw.count === 3, `read-your-writes in flight (${rw.role}): ${JSON.stringify(rw)}`);
  step("the server agrees after a reload");
  await pageA.reload();
  await waitFor(async () => (await stateOf(pageA)) === "open" && (await rows(pageA).count()) === 4, "the reloaded inbox");
  const srv = (await api("/v1/inbox?filter=archived", "alice")).body;
  check(srv.items.length === 0 && srv.unread_count === 4, `server: ${JSON.stringify({ archived: srv.items.length, unread: srv.unread_count })}`);

  step("keyboard: arrows move between rows, r toggles read, e archives");
  await rows(pageA).first().focus();
  await pageA.keyboard.press("ArrowDown");
  const second = (await ids(pageA))[1];
  check((await pageA.evaluate(() => document.activeElement?.dataset?.id)) === second, "ArrowDown moves to the second row");
  await pageA.keyboard.press("r");
  await waitFor(async () => (await row(pageA, second).getAttribute("class")).includes("read") && (await badge(pageA)) === "3", "r marks the focused row read");
  await pageA.keyboard.press("r");
  await waitFor(async () => !(await row(pageA, second).getAttribute("class")).split(" ").includes("read") && (await badge(pageA)) === "4", "r marks it unread again");
  check((await pageA.locator("[role=tablist] [role=tab]").count()) === 3 && (await pageA.getAttribute("#items", "role")) === "tabpanel", "ARIA roles");

  step("mark all read: badge 0, the unread view is empty");
  await pageA.click("#allread");
  await waitFor(async () => (await badge(pageA)) === "0" && (await badge(pageB)) === "0", "badge 0 in both tabs");
  await tab(pageA, "unread");
  await waitFor(async () => (await rows(pageA).count()) === 0 && (await pageA.locator("#empty").textContent()).includes("caught up"), "the unread view's empty state");
  await tab(pageA, "inbox");

  step("approval flow: Pending -> Approved in place");
  await notify(["alice"], "approval.requested", { title: "Trip to Lisbon", amount: 420, requester: "bob", approver: "alice", request_id: "req-1" }, { collapse_key: "req-1" });
  await waitFor(async () => (await pageA.locator("#items li .pill.pending").count()) === 1, "the pending request");
  await pageA.locator("#items li button.ok").click();
  await waitFor(async () => (await pageA.locator("#items li .pill.approved").count()) === 1 && (await pageA.locator("#items li .pill.pending").count()) === 0, "the approved step in place of the pending one");
  check((await rows(pageA).count()) === 5, `after approval: ${await rows(pageA).count()} rows`);

  step("offline: server killed; an action in the follower tab is queued with feedback, then sent on reconnect");
  const follower = (await pageA.evaluate(() => heraldClient.role)) === "follower" ? pageA : pageB;
  const leader = follower === pageA ? pageB : pageA;
  const unreadBefore = (await api("/v1/inbox/unread-count", "alice")).body.unread_count;
  await killHerald("SIGKILL");
  await waitFor(async () => (await stateOf(follower)) === "closed" && (await follower.locator("#banner").isVisible()), "the follower to show it is offline");
  await row(follower, plain).locator(".toggle-read").click(); // read → unread
  await waitFor(async () => (await follower.locator("#toast").isVisible()) && (await follower.locator("#toast").textContent()).includes("Offline"), "offline feedback");
  await waitFor(async () => (await row(follower, plain).getAttribute("class")).includes("pending"), "the row to say it waits to sync");
  check((await row(follower, plain).locator(".sync").isVisible()) && (await follower.locator("#banner").textContent()).includes("1 change"), "the row and banner say it waits");
  // The leader told the follower it queued the change: a read there does not wait for it.
  check((await follower.evaluate(() => heraldClient.inflight.size)) === 0, "the follower still counts the queued change as on its way");
  await shot(follower, "offline");
  await startHerald();
  await waitFor(async () => (await stateOf(leader)) === "open" && (await stateOf(follower)) === "open", "both tabs to reconnect");
  await waitFor(async () => !(await row(follower, plain).getAttribute("class")).includes("pending"), "the queued change to be sent");
  await waitFor(async () => (await api("/v1/inbox/unread-count", "alice")).body.unread_count === unreadBefore + 1, "the server to count the row marked unread offline");
  check(!(await row(follower, plain).getAttribute("class")).split(" ").includes("read"), "the row stays unread");

  step("the leader tab closes: the other takes over the connection");
  await leader.close();
  await waitFor(async () => (await follower.evaluate(() => heraldClient.role)) === "leader" && (await stateOf(follower)) === "open", "the remaining tab to lead");
  const afterHandover = await notify(["alice"], "deploy.done", { title: "Deploy finished" });
  await waitFor(async () => (await row(follower, afterHandover).count()) === 1, "a notification after the handover");
  const page = follower;

  step("375 px wide: no horizontal overflow");
  const phone = await context.newPage();
  watch(phone, "phone");
  await phone.setViewportSize({ width: 375, height: 740 });
  await signIn(phone, "alice");
  await waitFor(async () => (await rows(phone).count()) === 6, "the phone's rows");
  const o = await overflow(phone);
  check(o.width === 375 && o.rows === 6 && o.bad.length === 0, `overflow at 375 px: ${JSON.stringify(o)}`);
  await shot(phone, "mobile");
  await phone.close();

  step("loading and error states: the inbox API held, then failing, then back (Try again)");
  const probe = await context.newPage();
  watch(probe, "probe");
  let release;
  const held = new Promise((r) => (release = r));
  const inboxApi = (url) => url.pathname === "/v1/inbox";
  await probe.route(inboxApi, async (route) => {
    await held;
    await route.fulfill({ status: 503, contentType: "application/json", body: JSON.stringify({ error: { code: "projection_unavailable", message: "the projection could not be read" } }) });
  });
  await probe.goto(base);
  await probe.fill("#user", "alice");
  await probe.click("#login button");
  await waitFor(async () => (await probe.locator("#loading").isVisible()) && (await probe.getAttribute("#items", "aria-busy")) === "true", "the loading state");
  await shot(probe, "loading");
  release();
  await waitFor(async () => (await probe.locator("#load-error").isVisible()) && (await probe.locator("#load-error").textContent()).includes("projection could not be read"), "the error state");
  check(await probe.locator("#empty").isHidden(), "the empty state hides behind the error");
  await shot(probe, "error");
  await probe.unroute(inboxApi);
  await probe.click("#retry");
  await waitFor(async () => (await rows(probe).count()) === 6 && (await probe.locator("#load-error").isHidden()), "the inbox after Try again");
  await probe.close();

  step("paging past 100 items with `before`");
  const extra = 130;
  const batch = Array.from({ length: extra }, (_, i) => ({ recipients: { users: ["alice"] }, event_type: "bulk.item", source: "e2e", data: { title: `Bulk item ${i}` }, idempotency_key: `bulk-${i}` }));
  const br = await fetch(`${base}/v1/notifications/batch`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ notifications: batch }) });
  check(br.status === 202, `batch: ${br.status}`);
  const total = await (async () => {
    let n = 0;
    await waitFor(async () => {
      n = (await api("/v1/inbox?limit=1000", "alice")).body.items.length;
      return n >= 6 + extra;
    }, "the bulk items in the projection");
    return n;
  })();
  await page.reload();
  await waitFor(async () => (await stateOf(page)) === "open" && (await rows(page).count()) === PAGE, `the first page of ${PAGE}`);
  check(await page.locator("#more").isVisible(), "a Load more button");
  await waitFor(async () => {
    if ((await rows(page).count()) < total) {
      await page.locator("#sentinel").scrollIntoViewIfNeeded(); // infinite scroll
      return false;
    }
    return true;
  }, `all ${total} rows by scrolling`);
  const all = await ids(page);
  check(all.length === total && new Set(all).size === total, `rows after paging: ${all.length} (${new Set(all).size} distinct), expected ${total}`);
  check((await page.locator("#items li .title").allTextContents()).includes("Bulk item 0"), "the oldest bulk item is reachable");
  check(await page.locator("#more").isHidden(), "no Load more after the last page");

  step("preferences");
  await page.click("#settings-toggle");
  await waitFor(async () => (await page.locator("#prefs-status").textContent()) !== "Loading…", "the preferences to load");
  const prefs = await api("/v1/preferences", "alice");
  if (prefs.status === 404) {
    check((await page.locator("#prefs-status").textContent()).includes("unavailable"), "the panel says preferences are unavailable");
    await shot(page, "settings");
    console.log("e2e: SKIPPED the preferences mute check: GET /v1/preferences answers 404 on this server (the panel says \"Preferences unavailable\")");
  } else {
    check(prefs.status === 200, `GET /v1/preferences: ${prefs.status}`);
    await page.fill("#prefs-name", "noise.muted");
    await page.click("#prefs-add button[type=submit]");
    const rowSel = `#prefs-rows tr[data-name="noise.muted"]`;
    await page.locator(`${rowSel} .pref-inbox`).uncheck();
    await page.click("#prefs-save");
    await waitFor(async () => (await page.locator("#prefs-status").textContent()) === "Saved.", "the preferences to save");
    const stored = (await api("/v1/preferences", "alice")).body;
    check(stored.event_types?.["noise.muted"]?.inbox === false && stored.event_types["noise.muted"].live === false, `stored: ${JSON.stringify(stored)}`);
    await shot(page, "settings");
    const before = (await api("/v1/inbox/unread-count", "alice")).body.unread_count;
    const muted = await notify(["alice"], "noise.muted", { title: "Muted noise" });
    const loud = await notify(["alice"], "noise.loud", { title: "Not muted" });
    await waitFor(async () => (await row(page, loud).count()) === 1, "the unmuted notification live");
    check((await row(page, muted).count()) === 0, "the muted notification was pushed live");
    await waitFor(async () => (await api("/v1/inbox/unread-count", "alice")).body.unread_count === before + 1, "the unread count to grow by the unmuted one only");
    const mutedRow = (await api("/v1/inbox?limit=5", "alice")).body.items.find((i) => i.id === muted);
    check(mutedRow && mutedRow.read === true, `the muted notification is in the inbox, read: ${JSON.stringify(mutedRow)}`);
  }
  await page.click("#settings-toggle");

  step("without Web Locks: one device per tab, still no reconnect loop");
  const bare = await browser.newContext({ viewport: { width: 800, height: 600 } });
  await bare.addInitScript(() => Object.defineProperty(Navigator.prototype, "locks", { get: () => undefined, configurable: true }));
  const c1 = await bare.newPage();
  const c2 = await bare.newPage();
  watch(c1, "carol-1");
  watch(c2, "carol-2");
  await signIn(c1, "carol");
  await signIn(c2, "carol");
  check((await c1.evaluate(() => heraldClient.role)) === "solo" && (await c2.evaluate(() => heraldClient.role)) === "solo", "tabs without Web Locks are solo");
  await waitFor(async () => (await devicesOnline("carol")).length === 2, "carol's two per-tab devices online");
  const toCarol = await notify(["carol"], "hello.carol", { title: "Hi Carol" });
  await waitFor(async () => (await row(c1, toCarol).count()) === 1 && (await row(c2, toCarol).count()) === 1, "the notification in both solo tabs");
  const soloCloses = (await c1.evaluate(() => heraldClient.closes)) + (await c2.evaluate(() => heraldClient.closes));
  check(soloCloses === 0, `solo tabs closed ${soloCloses} sockets`);

  step("4010 replaced is not reconnected");
  const stolen = await c1.evaluate(() => heraldClient.deviceId);
  // Another connection of the same device (as another window would make) replaces c1's session.
  await c2.evaluate(async (deviceId) => {
    const { HeraldClient } = await import("/herald.js");
    const token = (await (await fetch("/v1/dev/token", { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ user_id: "carol" }) })).json()).token;
    window.thief = new HeraldClient({ getToken: async () => token, deviceId, shareTabs: false, storage: sessionStorage });
    window.thief.deviceId = deviceId; // exactly c1's device
    window.thief.start();
  }, stolen);
  await waitFor(async () => (await stateOf(c1)) === "replaced" && (await c1.locator("#banner").isVisible()), "c1 to say it was replaced");
  const closesAfter = await c1.evaluate(() => heraldClient.closes);
  const replacedUntil = Date.now() + 1500;
  while (Date.now() < replacedUntil) {
    check((await stateOf(c1)) === "replaced" && (await c1.evaluate(() => heraldClient.closes)) === closesAfter, "c1 reconnected after 4010");
    await new Promise((r) => setTimeout(r, 100));
  }
  await c2.evaluate(() => window.thief.stop());
  await bare.close();

  step("WebSockets blocked: /herald.js falls back to SSE by itself and gets the notifications");
  const viaSse = await page.evaluate(async () => {
    const { HeraldClient } = await import("/herald.js");
    // A WebSocket that never opens, as behind a proxy that refuses upgrades.
    class Blocked extends EventTarget {
      constructor() {
        super();
        setTimeout(() => this.onclose?.({ code: 1006, reason: "" }), 10);
      }
      send() {}
      close() {}
    }
    const Real = window.WebSocket;
    window.WebSocket = Blocked;
    const token = (await (await fetch("/v1/dev/token", { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ user_id: "alice" }) })).json()).token;
    const seen = [];
    let fellBack = false;
    const client = new HeraldClient({ getToken: async () => token, deviceId: "sse-probe", shareTabs: false, storage: sessionStorage, backoffInitialMs: 20, onNotification: (n) => seen.push(n.id) });
    client.addEventListener("fallback", () => (fellBack = true));
    client.start();
    const deadline = Date.now() + 20000;
    while (seen.length < 4 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    client.stop();
    window.WebSocket = Real;
    return { seen: seen.length, fellBack, transport: client.transport };
  });
  check(viaSse.fellBack && viaSse.transport === "sse", `no fallback to SSE: ${JSON.stringify(viaSse)}`);
  check(viaSse.seen >= 4, `SSE client saw ${viaSse.seen} notifications, expected at least 4`);

  check(notFound.length === 0, `404s: ${notFound.join(", ")}`);
  check(pageErrors.length === 0, `errors in the pages: ${pageErrors.join(" | ")}`);
  await browser.close();
  await killHerald("SIGTERM");
  console.log(`e2e: screenshots: ${shots.join(" ")}`);
  console.log("e2e: passed");
  process.exit(0);
} catch (e) {
  console.error(`e2e: FAILED: ${e.message}`);
  try {
    for (const p of browser?.contexts().flatMap((c) => c.pages()) ?? []) {
      await p.screenshot({ path: SCREENSHOT.replace(/\.png$/, `-failure-${Math.random().toString(36).slice(2, 6)}.png`) });
    }
  } catch {}
  await browser?.close().catch(() => {});
  herald?.kill("SIGKILL");
  process.exit(1);
}
