// Compile-only check of herald.d.ts (npx -p typescript tsc -p clients/js/test): uses every method
// and event the way an application would. Not shipped.
import {
  HeraldClient, OfflineError, HeraldHttpError, MAX_QUEUED_ACTIONS, BACKOFF_MAX_MS,
  type NotificationFrame, type InboxPage, type MarkFrame, type Preferences, type ServerFrame, type ClientFrame,
} from "../herald.js";

const client = new HeraldClient({
  getToken: async () => "token",
  user: "alice",
  onNotification: async (n: NotificationFrame) => {
    const title: string = n.event_type;
    void title;
  },
});
client.addEventListener("state", (e) => {
  const s: "connecting" | "resuming" | "open" | "closed" | "replaced" | "stopped" = e.detail;
  void s;
});
client.addEventListener("mark", (e) => {
  const m: MarkFrame = e.detail;
  if (m.kind === "unarchived") void m.ids;
});
client.addEventListener("queue", (e) => void e.detail.size);
client.start();
async function use(): Promise<void> {
  const page: InboxPage = await client.inbox({ filter: "unread", before: 10, limit: 50 });
  await client.read([page.items[0].id]);
  await client.read([], page.items[0].cursor);
  await client.unread(["x"]);
  await client.archive(["x"]);
  const r = await client.unarchive(["x"]);
  const c: string = r.cursor;
  const n: number = await client.unreadCount();
  const p: Preferences = await client.preferences();
  await client.setPreferences({ event_types: { "a.b": { live: false, inbox: true } }, topics: p.topics });
  void c, n, MAX_QUEUED_ACTIONS, BACKOFF_MAX_MS;
  try {
    await client.read(["y"]);
  } catch (e) {
    if (e instanceof OfflineError || e instanceof HeraldHttpError) void e.message;
  }
}
void use;
const frames: ServerFrame[] = [{ type: "pong" }, { type: "replayed", cursor: null }];
const out: ClientFrame = { type: "hello", device_id: "d", cursor: null };
void frames, out;
client.stop();
