//! The servers under test and a client that speaks each one's protocol, all driven from this
//! process on loopback:
//! - [`http`]: servers published to over HTTP: Herald (`herald dev`; the current build and,
//!   with `--baseline`, an older one) and the Node peers in `peers/` (Socket.IO, `ws`);
//! - [`websocket`]: the WebSocket client for those;
//! - [`jetstream`]: NATS JetStream, the durable peer: nats-server started here, published to
//!   and consumed with async-nats (one durable consumer per device).
//!
//! A [`Server`] is one server process with the way to publish to it; a [`Client`] is one
//! connected device. The scenarios in `suite` see only these two.

mod http;
pub mod jetstream;
mod websocket;

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub use websocket::{ACK_EACH_BY_ID, ACK_EVERY, ACK_IDLE, Recovery};

/// How long a server may take to start.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Target {
    Herald,
    /// An older `herald` binary (`--baseline`), run the same way.
    HeraldBefore,
    SocketIo,
    Ws,
    /// nats-server with `sync_interval: always`: every write fsynced before its ack.
    JetStreamAlways,
    /// nats-server with its default sync (fsync every 2 minutes).
    JetStreamDefault,
}

impl Target {
    pub const ALL: [Target; 6] = [
        Target::Herald,
        Target::HeraldBefore,
        Target::SocketIo,
        Target::Ws,
        Target::JetStreamAlways,
        Target::JetStreamDefault,
    ];

    /// The name in results and the report.
    pub fn name(self) -> &'static str {
        match self {
            Target::Herald => "Herald",
            Target::HeraldBefore => "Herald (before)",
            Target::SocketIo => "Socket.IO",
            Target::Ws => "ws",
            Target::JetStreamAlways => "JetStream (fsync always)",
            Target::JetStreamDefault => "JetStream (default sync)",
        }
    }

    /// The name `--targets` takes.
    pub fn key(self) -> &'static str {
        match self {
            Target::Herald => "herald",
            Target::HeraldBefore => "herald-before",
            Target::SocketIo => "socketio",
            Target::Ws => "ws",
            Target::JetStreamAlways => "jetstream-always",
            Target::JetStreamDefault => "jetstream-default",
        }
    }

    /// The current Herald or the baseline: the same protocol, API and client code.
    pub fn is_herald(self) -> bool {
        matches!(self, Target::Herald | Target::HeraldBefore)
    }

    pub fn is_jetstream(self) -> bool {
        matches!(self, Target::JetStreamAlways | Target::JetStreamDefault)
    }

    /// Stores what it accepted before saying so (a 202, a publish ack), and keeps it for a
    /// device that is away.
    pub fn is_durable(self) -> bool {
        self.is_herald() || self.is_jetstream()
    }
}

/// Where the binaries under test are.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub herald: PathBuf,
    /// The older herald, for [`Target::HeraldBefore`].
    pub baseline: Option<PathBuf>,
    /// nats-server; `None`: installed by `peers/install-nats.sh` when first needed.
    pub nats_server: Option<PathBuf>,
}

/// Microseconds since this process's first call: the clock stamped into every message.
/// Names a folder for Herald's `/metrics` after each fanout mode and each latency rate
/// ([`Server::save_metrics`]).
pub const METRICS_ENV: &str = "HERALD_BENCH_METRICS";

pub fn now_us() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_micros() as u64
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// What a publish reaches.
#[derive(Debug, Clone)]
pub enum To {
    User(String),
    Group(String),
    Everyone,
}

/// A server process: stopped (SIGTERM, then waited for) when dropped, so a server never
/// outlives its scenario, even one that failed.
struct Process(Child);

/// How long a server gets to exit after SIGTERM before it is killed.
const STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(30);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let started = std::time::Instant::now();
        while matches!(self.0.try_wait(), Ok(None)) {
            if started.elapsed() > STOP_GRACE {
                eprintln!("a server did not exit within {STOP_GRACE:?} of SIGTERM; killing it");
                let _ = self.0.kill();
                let _ = self.0.wait();
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

enum Api {
    Http(http::Api),
    JetStream(Box<jetstream::Publisher>),
}

pub struct Server {
    pub target: Target,
    pub port: u16,
    /// Herald's `--metrics-listen` port (with [`METRICS_ENV`]), JetStream's monitoring port.
    monitor: u16,
    // Dropped in this order: the publisher's connections, the process, its files.
    api: Api,
    process: Process,
    data_dir: Option<tempfile::TempDir>,
}

impl Server {
    pub async fn start(target: Target, bins: &Binaries) -> anyhow::Result<Server> {
        Self::start_with(target, bins, &[]).await
    }

    /// [`Server::start`], with `herald_args` added to a Herald target's `herald dev` (ignored
    /// for the peers).
    pub async fn start_with(
        target: Target,
        bins: &Binaries,
        herald_args: &[&str],
    ) -> anyhow::Result<Server> {
        let port = free_port()?;
        let mut monitor = 0;
        let (child, data_dir) = match target {
            Target::Herald | Target::HeraldBefore => {
                let bin = match target {
                    Target::Herald => bins.herald.as_path(),
                    _ => bins
                        .baseline
                        .as_deref()
                        .ok_or_else(|| anyhow::anyhow!("herald-before needs --baseline"))?,
                };
                let dir = tempfile::tempdir()?;
                if target == Target::Herald && std::env::var_os(METRICS_ENV).is_some() {
                    monitor = free_port()?;
                }
                let child = http::start_herald(
                    bin,
                    port,
                    &dir.path().join("data"),
                    (monitor != 0).then_some(monitor),
                    herald_args,
                )?;
                (child, Some(dir))
            }
            Target::SocketIo | Target::Ws => (http::start_node(target, port)?, None),
            Target::JetStreamAlways | Target::JetStreamDefault => {
                let bin = jetstream::nats_server(bins.nats_server.as_deref())?;
                let dir = tempfile::tempdir()?;
                monitor = free_port()?;
                let child = jetstream::spawn(target, &bin, port, monitor, dir.path())?;
                (child, Some(dir))
            }
        };
        let process = Process(child);
        let api = if target.is_jetstream() {
            Api::JetStream(Box::new(
                jetstream::Publisher::ready(target, port, monitor).await?,
            ))
        } else {
            Api::Http(http::Api::ready(target, port).await?)
        };
        Ok(Server {
            target,
            port,
            monitor,
            api,
            process,
            data_dir,
        })
    }

    /// With [`METRICS_ENV`] naming a folder, saves Herald's `/metrics` there as `{name}.prom`
    /// (to see where a run's time went: append, projector and delivery histograms).
    pub async fn save_metrics(&self, name: &str) -> anyhow::Result<()> {
        let Some(dir) = std::env::var_os(METRICS_ENV) else {
            return Ok(());
        };
        if self.target != Target::Herald || self.monitor == 0 {
            return Ok(());
        }
        let text = reqwest::get(format!("http://127.0.0.1:{}/metrics", self.monitor))
            .await?
            .text()
            .await?;
        let dir = PathBuf::from(dir);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(format!("{name}.prom")), text)?;
        Ok(())
    }

    pub fn pid(&self) -> u32 {
        self.process.0.id()
    }

    /// Herald's `--data-dir`.
    pub fn data_path(&self) -> Option<PathBuf> {
        self.data_dir
            .as_ref()
            .filter(|_| self.target.is_herald())
            .map(|d| d.path().join("data"))
    }

    /// The binary that runs this target (Herald's, for `herald replay`).
    pub fn herald_binary<'a>(&self, bins: &'a Binaries) -> Option<&'a Path> {
        match self.target {
            Target::Herald => Some(&bins.herald),
            Target::HeraldBefore => bins.baseline.as_deref(),
            _ => None,
        }
    }

    /// CPU time (user + system) the server process has used so far, in seconds.
    pub fn cpu_seconds(&self) -> anyhow::Result<f64> {
        crate::cpu_seconds(self.pid())
    }

    /// A user token (Herald only; the others trust the client).
    pub async fn token(&self, user: &str) -> anyhow::Result<Option<String>> {
        match &self.api {
            Api::Http(a) => a.token(user).await,
            Api::JetStream(_) => Ok(None),
        }
    }

    /// Puts users in groups.
    pub async fn join(&self, memberships: &[(String, String)]) -> anyhow::Result<()> {
        match &self.api {
            Api::Http(a) => a.join(memberships).await,
            Api::JetStream(p) => {
                p.join(memberships);
                Ok(())
            }
        }
    }

    /// Publishes one message stamped `t_us`, and returns once the server accepted it.
    pub async fn publish(&self, to: &To, t_us: u64) -> anyhow::Result<()> {
        match &self.api {
            Api::Http(a) => a.publish(to, t_us).await,
            Api::JetStream(p) => p.publish(to, t_us).await,
        }
    }

    /// The durable targets: one message to each of `users`, stamped `t_us`, in one batch.
    /// `Ok(false)`: the target takes no batches.
    pub async fn publish_batch(&self, users: &[String], t_us: u64) -> anyhow::Result<bool> {
        match &self.api {
            Api::Http(a) => a.publish_batch(users, t_us).await,
            Api::JetStream(p) => p.send(users, t_us).await.map(|()| true),
        }
    }

    /// Herald's unread count for a user (to know a backlog is in the projection).
    pub async fn unread(&self, token: &str) -> anyhow::Result<u64> {
        match &self.api {
            Api::Http(a) => a.unread(token).await,
            Api::JetStream(_) => anyhow::bail!("JetStream has no unread count"),
        }
    }

    pub fn stop(self) {
        drop(self);
    }
}

/// The HTTP floor (`herald-bench http-floor`, this binary as its own process): Herald's ingest
/// requests parsed and answered 202 through Herald's server loop, nothing stored.
pub struct HttpFloor {
    // Dropped in this order: the client's connections, then the process.
    api: http::Api,
    process: Process,
}

impl HttpFloor {
    pub async fn start() -> anyhow::Result<HttpFloor> {
        let port = free_port()?;
        let child = Command::new(std::env::current_exe()?)
            .args(["http-floor", "--listen", &format!("127.0.0.1:{port}")])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()?;
        let process = Process(child);
        // Herald's request shapes.
        let api = http::Api::ready(Target::Herald, port).await?;
        Ok(HttpFloor { api, process })
    }

    pub async fn publish(&self, to: &To, t_us: u64) -> anyhow::Result<()> {
        self.api.publish(to, t_us).await
    }

    pub async fn publish_batch(&self, users: &[String], t_us: u64) -> anyhow::Result<bool> {
        self.api.publish_batch(users, t_us).await
    }

    pub fn cpu_seconds(&self) -> anyhow::Result<f64> {
        crate::cpu_seconds(self.process.0.id())
    }
}

/// One connected device of a user.
pub enum Client {
    Ws(Box<websocket::WsClient>),
    JetStream(Box<jetstream::Device>),
}

impl Client {
    /// Connects client number `i` as `user`'s `device` (member of `groups`), authenticated and
    /// ready to receive: Herald after `session`, Socket.IO after its namespace CONNECT, ws at
    /// once, a JetStream device once its durable consumer is open (its own NATS connection;
    /// async-nats cannot pick a source address, so these all come from 127.0.0.1).
    pub async fn connect(
        server: &Server,
        i: usize,
        user: &str,
        groups: &[String],
        token: Option<&str>,
        device: &str,
        recover: Option<&Recovery>,
    ) -> anyhow::Result<Client> {
        if server.target.is_jetstream() {
            let d = jetstream::Device::connect(server.port, user, device).await?;
            return Ok(Client::JetStream(Box::new(d)));
        }
        let c = websocket::WsClient::connect(
            server.target,
            server.port,
            i,
            user,
            groups,
            token,
            device,
            recover,
        )
        .await?;
        Ok(Client::Ws(Box::new(c)))
    }

    /// The stamp (`t`, µs) of the next delivered message, acknowledging as the protocol wants.
    pub async fn next_message(&mut self) -> anyhow::Result<u64> {
        match self {
            Client::Ws(c) => c.next_message().await,
            Client::JetStream(d) => d.next_message().await,
        }
    }

    /// Acknowledges everything taken so far (Herald), before the client goes quiet.
    pub async fn settle(&mut self) -> anyhow::Result<()> {
        match self {
            Client::Ws(c) => c.settle().await,
            Client::JetStream(_) => Ok(()),
        }
    }

    /// Socket.IO's session, to recover it after a reconnect.
    pub fn recovery(&self) -> Recovery {
        match self {
            Client::Ws(c) => c.recovery.clone(),
            Client::JetStream(_) => Recovery::default(),
        }
    }

    /// Drops the connection without a goodbye (a network loss, as far as the server knows).
    pub fn vanish(self) {
        match self {
            Client::Ws(c) => c.vanish(),
            Client::JetStream(d) => drop(d),
        }
    }
}
