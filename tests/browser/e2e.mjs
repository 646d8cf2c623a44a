// End-to-end test of the demo inbox in real headless Chromium (Debian's /usr/bin/chromium,
// driven by playwright-core). Run by tests/browser.rs, which passes:
//   HERALD_BIN   the herald binary
//   DATA_DIR     a fresh data directory
//   PORT         a free port
//   SCREENSHOT   where to save the screenshot of the inbox
//   CHROMIUM     the browser executable
import { spawn } from "node:child_process";
import { chromium } from "playwright-core";

const { HERALD_BIN, DATA_DIR, PORT, SCREENSHOT, CHROMIUM } = process.env;
const base = `http://127.0.0.1:${PORT}`;
const GUARD = 20_000; // hang guard for each wait, not a timing assertion

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

async function waitFor(check, what) {
  const deadline = Date.now() + GUARD;
  for (;;) {
    try {
      if (await check()) return;
    } catch {}
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

async function notify(users, eventType, data, collapseKey) {
  const r = await fetch(`${base}/v1/notifications`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ recipients: { users }, event_type: eventType, source: "e2e", data, collapse_key: collapseKey }),
  });
  if (r.status !== 202) throw new Error(`POST /v1/notifications: ${r.status}`);
  return (await r.json()).notification_id;
}

const step = (s) => console.log(`e2e: ${s}`);
let browser;
let page;
try {
  await startHerald();
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  page = await browser.newPage({ viewport: { width: 900, height: 640 } });
  page.on("pageerror", (e) => console.error("page error:", e.message));
  const count = () => page.locator("#items li").count();
  const badge = () => page.locator("#badge").textContent();
  const state = () => page.locator("#state").textContent();

  step("sign in as alice");
  await page.goto(base);
  await page.fill("#user", "alice");
  await page.click("#login button");
  await waitFor(async () => (await state()) === "open", "the client to open");

  step("a posted approval request appears live, badge 1");
  await notify(["alice"], "approval.requested", { title: "Trip to Lisbon", amount: 420, requester: "bob", approver: "alice", request_id: "req-1" }, "req-1");
  await waitFor(async () => (await count()) === 1 && (await badge()) === "1", "the notification and badge 1");

  step("mark read: badge 0");
  await page.click("#items li .mark-read");
  await waitFor(async () => (await badge()) === "0", "badge 0");

  step("reload: the notification is listed once");
  await page.reload();
  await waitFor(async () => (await state()) === "open", "the client to reopen after reload");
  await page.waitForTimeout(800);
  if ((await count()) !== 1) throw new Error(`after reload: ${await count()} items, expected 1`);
  if ((await badge()) !== "0") throw new Error(`after reload: badge ${await badge()}, expected 0`);

  step("server killed (SIGKILL) and restarted: the client resumes");
  await killHerald("SIGKILL");
  await waitFor(async () => (await state()) !== "open", "the client to notice");
  await startHerald();
  await waitFor(async () => (await state()) === "open", "the client to resume");
  await notify(["alice"], "invoice.created", { title: "Invoice 2026-11 ready", amount: 99 }, null);
  await waitFor(async () => (await count()) === 2 && (await badge()) === "1", "the new notification after restart");
  await page.waitForTimeout(800);
  if ((await count()) !== 2) throw new Error(`after restart: ${await count()} items, expected 2 (no duplicates)`);

  step("approve: the request's step moves Pending -> Approved in place");
  await page.click("#items li button.ok");
  await waitFor(async () => (await page.locator("#items li .pill.approved").count()) === 1, "the approved step");
  await waitFor(async () => (await page.locator("#items li .pill.pending").count()) === 0, "the pending step to be replaced");
  if ((await count()) !== 2) throw new Error(`after approval: ${await count()} items, expected 2`);

  step("markup in a notification is shown as text and never runs");
  const payload = `x<img src=x onerror="window.__xss=1">`;
  await notify(["alice"], payload, { title: `<b>bold?</b><script>window.__xss=2</script>` }, null);
  await notify(["alice"], `evt<svg onload="window.__xss=3">`, {}, null);
  await waitFor(async () => (await count()) === 4, "the two markup notifications");
  const xss = await page.evaluate(() => ({
    ran: window.__xss ?? null,
    injected: document.querySelectorAll("#items img, #items script, #items svg, #items b").length,
    titles: [...document.querySelectorAll("#items li .title")].map((t) => t.textContent),
  }));
  if (xss.ran !== null || xss.injected !== 0) throw new Error(`markup ran or was injected: ${JSON.stringify(xss)}`);
  if (!xss.titles.some((t) => t.includes("<b>bold?</b><script>"))) throw new Error(`title not shown as text: ${JSON.stringify(xss.titles)}`);
  if (!xss.titles.some((t) => t.includes(`evt<svg onload=`))) throw new Error(`event type not shown as text: ${JSON.stringify(xss.titles)}`);

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
    window.WebSocket = Blocked;
    const token = (await (await fetch("/v1/dev/token", { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ user_id: "alice" }) })).json()).token;
    const seen = [];
    let fellBack = false;
    const client = new HeraldClient({ getToken: async () => token, deviceId: "sse-probe", storage: sessionStorage, backoffInitialMs: 20, onNotification: (n) => seen.push(n.id) });
    client.addEventListener("fallback", () => (fellBack = true));
    client.start();
    const deadline = Date.now() + 15000;
    while (seen.length < 4 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    client.stop();
    return { seen: seen.length, fellBack, transport: client.transport };
  });
  if (!viaSse.fellBack || viaSse.transport !== "sse") throw new Error(`no fallback to SSE: ${JSON.stringify(viaSse)}`);
  if (viaSse.seen < 4) throw new Error(`SSE client saw ${viaSse.seen} notifications, expected at least 4`);

  await page.screenshot({ path: SCREENSHOT });
  step(`screenshot saved to ${SCREENSHOT}`);
  await browser.close();
  await killHerald("SIGTERM");
  console.log("e2e: passed");
  process.exit(0);
} catch (e) {
  console.error(`e2e: FAILED: ${e.message}`);
  try {
    await page?.screenshot({ path: SCREENSHOT.replace(/\.png$/, "-failure.png") });
  } catch {}
  await browser?.close().catch(() => {});
  herald?.kill("SIGKILL");
  process.exit(1);
}
