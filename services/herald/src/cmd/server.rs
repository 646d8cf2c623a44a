//! What `herald dev` and `herald gateway` share: the storage, key and knob flags, and the
//! server itself (log, projector, HTTP and WebSocket API in one process). Each command has its
//! own `Args`, so its help says what is true of it; both map onto [`GatewayConfig`], whose
//! defaults are the only ones (the flags show them).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use herald_embedded::{Access, EmbeddedLog, LogOptions};
use herald_gateway::{AppState, AuthConfig, GatewayConfig, Ports, app};
use herald_ports::readiness::Report;
use herald_projector::Projector;
use tokio_util::sync::CancellationToken;

use super::background::{self, PROJECTOR_NICE};
use super::{DEFAULT_DATA_DIR, init_tracing, log_path};

/// The gateway's defaults, the one source of every knob's default.
fn defaults() -> GatewayConfig {
    GatewayConfig::default()
}

/// Where the data lives.
#[derive(clap::Args, Debug, Clone)]
pub struct StorageArgs {
    /// Where the embedded log and projection files live (created if missing).
    #[arg(long, env = "HERALD_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
    /// Partitions of the user-events topic of a new embedded log [default for a new log: 8];
    /// an existing log keeps its own (naming another count is an error).
    #[arg(long, env = "HERALD_PARTITIONS", value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub partitions: Option<u32>,
    /// Microseconds the embedded log's writer waits for more appends before a commit that two
    /// or more callers are waiting on (PostgreSQL's `commit_delay`): under load, fewer and larger
    /// commits for less CPU, for a higher median latency; a lone append never waits. 0 (the
    /// default): none; 1000 measured well on a host near its CPU's limit; at most 100,000. The
    /// embedded log only (Kafka's producer has its own `linger.ms`).
    #[arg(long, env = "HERALD_LOG_COMMIT_DELAY_US",
          default_value_t = herald_embedded::COMMIT_DELAY.as_micros() as u64,
          value_parser = clap::value_parser!(u64).range(0..=herald_embedded::MAX_COMMIT_DELAY.as_micros() as u64))]
    pub log_commit_delay_us: u64,
    /// Keep the projection in a shared store instead of DATA_DIR/projection.db:
    /// postgres://user@host:port/db or scylla://host:9042[,host…]/keyspace.
    #[arg(long, env = "HERALD_PROJECTION_URL")]
    pub projection_url: Option<String>,
    #[command(flatten)]
    pub kafka: super::KafkaArgs,
    /// Whether this process runs the projector. Default: yes, except `herald gateway` on Kafka,
    /// where `herald projector` replicas run it.
    #[arg(long, value_name = "true|false")]
    pub projector: Option<bool>,
    /// Nice value of the threads that run the embedded projection's transactions when the
    /// projector runs beside the gateway (0: the process's own). Accepting (the HTTP workers and
    /// the log writer) then gets the larger share of a busy machine and the projector catches up
    /// from the log; with CPU to spare it changes nothing.
    #[arg(long, env = "HERALD_PROJECTOR_NICE", default_value_t = PROJECTOR_NICE,
          value_parser = clap::value_parser!(i32).range(0..=19))]
    pub projector_nice: i32,
    /// The projector's fanout writes a `NotificationAdded` per recipient instead of one
    /// `NotificationsAdded` per partition for a notification to several users (how Herald
    /// wrote them before): only for a rolling upgrade from such a version, until every gateway
    /// and projector reads them.
    #[arg(long, env = "HERALD_SINGLE_USER_RECORDS")]
    pub single_user_records: bool,
}

/// Token keys, credentials, and what is reachable without them.
#[derive(clap::Args, Debug, Clone)]
pub struct AccessArgs {
    /// RS256 public key (PEM file) for user JWTs (repeat).
    #[arg(long = "jwt-rs256-public-key", value_name = "FILE")]
    pub rs256_keys: Vec<PathBuf>,
    /// ES256 public key (PEM file) for user JWTs (repeat).
    #[arg(long = "jwt-es256-public-key", value_name = "FILE")]
    pub es256_keys: Vec<PathBuf>,
    /// JWKS file (an identity provider's key set) for user JWTs (repeat).
    #[arg(long = "jwks", value_name = "FILE")]
    pub jwks: Vec<PathBuf>,
    /// Require tokens to carry this `aud` (repeat to accept several). Without it, `aud` is not
    /// checked.
    #[arg(
        long = "jwt-audience",
        env = "HERALD_JWT_AUDIENCE",
        value_delimiter = ','
    )]
    pub audiences: Vec<String>,
    /// Require tokens to carry this `iss` (repeat to accept several).
    #[arg(long = "jwt-issuer", env = "HERALD_JWT_ISSUER", value_delimiter = ',')]
    pub issuers: Vec<String>,
    /// Producer API key as NAME=KEY (repeat). With any, producers must authenticate.
    #[arg(long = "producer-key", value_name = "NAME=KEY")]
    pub producer_keys: Vec<String>,
    /// Operator API key as NAME=KEY (repeat), for audit, status, presence and /metrics. JWTs
    /// with "scope": "admin" are operators too.
    #[arg(
        long = "admin-key",
        value_name = "NAME=KEY",
        env = "HERALD_ADMIN_KEYS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub admin_keys: Vec<String>,
    /// Also serve /metrics, /healthz and /readyz on this address, without credentials: for a
    /// Prometheus on a private network. The main address serves /metrics to operators only
    /// (and /healthz, /readyz to anyone).
    #[arg(long, env = "HERALD_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
}

/// The gateway's knobs; defaults from [`GatewayConfig::default`].
#[derive(clap::Args, Debug, Clone)]
pub struct Knobs {
    /// Notifications per second each producer may send, sustained.
    #[arg(long, default_value_t = defaults().producer_rate)]
    pub producer_rate: f64,
    /// Notifications a producer may send at once above its rate (token bucket size).
    #[arg(long, default_value_t = defaults().producer_burst)]
    pub producer_burst: f64,
    /// Allowed Origin of WebSocket and SSE connections (repeat); none allows any.
    #[arg(long = "allowed-origin")]
    pub allowed_origins: Vec<String>,
    /// Most WebSocket and SSE connections at once.
    #[arg(long, env = "HERALD_MAX_CONNECTIONS", default_value_t = defaults().max_connections)]
    pub max_connections: usize,
    /// Most connections of one user at once.
    #[arg(long, default_value_t = defaults().max_connections_per_user)]
    pub max_connections_per_user: usize,
    /// Most bytes of notifications all sessions together hold for their devices (in flight,
    /// queued, held during a replay); replays wait for room beyond it.
    #[arg(long, env = "HERALD_MAX_SESSION_BYTES", default_value_t = defaults().max_session_bytes)]
    pub max_session_bytes: usize,
    /// Server ping interval, milliseconds.
    #[arg(long, default_value_t = defaults().heartbeat_interval.as_millis() as u64)]
    pub heartbeat_ms: u64,
    /// Reap a peer this long after a missed ping, milliseconds.
    #[arg(long, default_value_t = defaults().pong_timeout.as_millis() as u64)]
    pub pong_timeout_ms: u64,
    /// Close a connection whose send queue stays full with no progress this long, milliseconds.
    #[arg(long, default_value_t = defaults().slow_consumer_timeout.as_millis() as u64)]
    pub slow_consumer_timeout_ms: u64,
    /// An HTTP request's headers must arrive within this long of the connection being ready for
    /// one; also how long an idle keep-alive connection stays open, milliseconds.
    #[arg(long, default_value_t = defaults().http.header_read_timeout.as_millis() as u64)]
    pub http_header_timeout_ms: u64,
    /// An HTTP request's whole body must arrive within this long of the first time the server
    /// waits for it (408 otherwise), milliseconds.
    #[arg(long, default_value_t = defaults().http.body_read_timeout.as_millis() as u64)]
    pub http_body_timeout_ms: u64,
    /// How long an inbox read with `after=CURSOR` waits for the projection to catch up before
    /// it answers with `"consistent": false`, milliseconds (0: never wait).
    #[arg(long, default_value_t = defaults().read_after_wait.as_millis() as u64)]
    pub read_after_wait_ms: u64,
    /// Wait before the first redelivery of a notification a device has not ACKed, milliseconds;
    /// it doubles after each one, up to --redelivery-max-ms.
    #[arg(long, default_value_t = defaults().delivery.backoff_initial_ms)]
    pub redelivery_initial_ms: u64,
    /// Longest wait between two redeliveries, milliseconds.
    #[arg(long, default_value_t = defaults().delivery.backoff_max_ms)]
    pub redelivery_max_ms: u64,
    /// Redeliveries of an unACKed notification within one connection; after them it waits for
    /// the device's next resume.
    #[arg(long, default_value_t = defaults().delivery.max_redeliveries)]
    pub max_redeliveries: u32,
    /// On Kafka: how often this gateway publishes a snapshot of its sessions on the presence
    /// bus, milliseconds; other gateways drop it from their view after three missed snapshots.
    #[arg(long, default_value_t = defaults().presence_interval.as_millis() as u64)]
    pub presence_interval_ms: u64,
}

impl Knobs {
    /// The configuration these flags give (auth aside).
    pub fn config(&self) -> GatewayConfig {
        GatewayConfig {
            producer_rate: self.producer_rate,
            producer_burst: self.producer_burst,
            allowed_origins: self.allowed_origins.clone(),
            max_connections: self.max_connections,
            max_connections_per_user: self.max_connections_per_user,
            max_session_bytes: self.max_session_bytes,
            heartbeat_interval: Duration::from_millis(self.heartbeat_ms),
            pong_timeout: Duration::from_millis(self.pong_timeout_ms),
            slow_consumer_timeout: Duration::from_millis(self.slow_consumer_timeout_ms),
            http: herald_gateway::HttpOptions {
                header_read_timeout: Duration::from_millis(self.http_header_timeout_ms),
                body_read_timeout: Duration::from_millis(self.http_body_timeout_ms),
                ..defaults().http
            },
            read_after_wait: Duration::from_millis(self.read_after_wait_ms),
            presence_interval: Duration::from_millis(self.presence_interval_ms),
            delivery: herald_core::delivery::DeliveryConfig {
                backoff_initial_ms: self.redelivery_initial_ms,
                backoff_max_ms: self.redelivery_max_ms,
                max_redeliveries: self.max_redeliveries,
                ..defaults().delivery
            },
            ..defaults()
        }
    }
}

/// Which server this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Dev,
    Gateway,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Dev => "herald dev",
            Mode::Gateway => "herald gateway",
        }
    }
}

/// Everything a server needs, from either command's flags.
pub struct Server {
    pub mode: Mode,
    pub listen: SocketAddr,
    pub storage: StorageArgs,
    pub keys: AccessArgs,
    pub knobs: Knobs,
    /// The HS256 secret for user tokens (given, or `herald dev`'s own).
    pub hs256_secret: Option<Vec<u8>>,
}

/// Resolves on SIGTERM or Ctrl-C. The handlers are registered when this is *called*, so a signal
/// that arrives while Herald is still starting up is not lost (nor fatal).
pub fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    #[cfg(unix)]
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    let ctrl_c = tokio::signal::ctrl_c();
    Ok(async move {
        #[cfg(unix)]
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
    })
}

/// One writer per data directory: a second process would fight over log offsets.
pub fn lock_data_dir(dir: &std::path::Path) -> anyhow::Result<std::fs::File> {
    let lock_path = dir.join("LOCK");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("opening {}", lock_path.display()))?;
    match lock.try_lock() {
        Ok(()) => Ok(lock),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("locking {}", lock_path.display()))
        }
        Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!(
            "another herald process is using {} (it holds {}); stop it or pick another --data-dir",
            dir.display(),
            lock_path.display()
        ),
    }
}

/// `NAME=KEY` pairs as key → name, names checked as ids.
fn named_keys(
    pairs: &[String],
    flag: &str,
) -> anyhow::Result<std::collections::HashMap<String, String>> {
    let mut keys = std::collections::HashMap::new();
    for pk in pairs {
        let (name, key) = pk
            .split_once('=')
            .with_context(|| format!("{flag} {pk:?}: expected NAME=KEY"))?;
        herald_core::ids::validate_id("name", name).with_context(|| format!("{flag} {pk:?}"))?;
        if key.is_empty() {
            anyhow::bail!("{flag} {pk:?}: the key is empty");
        }
        if let Some(other) = keys.insert(key.to_owned(), name.to_owned())
            && other != name
        {
            anyhow::bail!("{flag}: one key is given for both {other} and {name}");
        }
    }
    Ok(keys)
}

impl Server {
    /// The gateway configuration the flags give.
    fn config(&self) -> anyhow::Result<GatewayConfig> {
        let read_all = |files: &[PathBuf]| -> anyhow::Result<Vec<Vec<u8>>> {
            files
                .iter()
                .map(|f| std::fs::read(f).with_context(|| format!("reading {}", f.display())))
                .collect()
        };
        let producer_keys = named_keys(&self.keys.producer_keys, "--producer-key")?;
        let admin_keys = named_keys(&self.keys.admin_keys, "--admin-key")?;
        let dev = self.mode == Mode::Dev;
        if let Some(secret) = &self.hs256_secret
            && !secret.is_empty()
            && secret.len() < 32
        {
            tracing::warn!(
                bytes = secret.len(),
                "the JWT secret is short: HS256 wants 32 bytes or more (RFC 7518, section 3.2)"
            );
        }
        let config = GatewayConfig {
            auth: AuthConfig {
                hs256_secret: self.hs256_secret.clone(),
                rs256_public_pems: read_all(&self.keys.rs256_keys)?,
                es256_public_pems: read_all(&self.keys.es256_keys)?,
                jwks: read_all(&self.keys.jwks)?,
                audiences: self.keys.audiences.clone(),
                issuers: self.keys.issuers.clone(),
                dev_login: dev,
                open_producers: dev && producer_keys.is_empty(),
                producer_keys,
                // `herald dev` on loopback leaves operator endpoints open unless admin keys are
                // given; `herald gateway` never does.
                open_operators: dev && admin_keys.is_empty(),
                admin_keys,
            },
            ..self.knobs.config()
        };
        config
            .validate()
            .with_context(|| format!("{}: invalid settings", self.mode.name()))?;
        Ok(config)
    }

    /// Runs the server until SIGTERM or Ctrl-C.
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        let (mode, storage) = (self.mode, &self.storage);
        // Before the settings are read: what they warn about is logged.
        let _telemetry = init_tracing("info");
        let config = self.config()?;
        let signal = shutdown_signal()?;
        // Every connection is a file descriptor: take the whole allowance the system grants.
        match rlimit::increase_nofile_limit(u64::MAX) {
            Ok(n) => tracing::debug!(nofile = n, "file descriptor limit"),
            Err(e) => tracing::warn!(error = %e, "cannot raise the file descriptor limit"),
        }
        let prometheus = super::metrics::install(mode.name())?;
        herald_ports::telemetry::zero_gateway();
        let ready = super::metrics::ReadinessSlot::default();
        if let Some(addr) = self.keys.metrics_listen {
            super::metrics::serve(addr, prometheus.clone(), ready.clone()).await?;
        }

        if mode == Mode::Gateway
            && storage.kafka.brokers().is_some()
            && storage.projection_url.is_none()
            && storage.projector != Some(true)
        {
            anyhow::bail!(
                "herald gateway on Kafka reads the projection that `herald projector` replicas \
                 write: pass --projection-url (a shared PostgreSQL), or --projector true to run \
                 one here"
            );
        }
        let kafka = storage.kafka.open().await?;
        // The data directory holds the embedded log, the embedded projection and the dev secret.
        let needs_dir = kafka.is_none() || storage.projection_url.is_none() || mode == Mode::Dev;
        let lock = if needs_dir {
            std::fs::create_dir_all(&storage.data_dir).with_context(|| {
                format!("creating data directory {}", storage.data_dir.display())
            })?;
            Some(lock_data_dir(&storage.data_dir)?)
        } else {
            None
        };
        let log: Arc<dyn herald_ports::EventLog> = match &kafka {
            Some(k) => k.clone(),
            None => {
                let options = LogOptions {
                    requests_partitions: None,
                    user_partitions: storage.partitions,
                    commit_delay: Some(std::time::Duration::from_micros(
                        storage.log_commit_delay_us,
                    )),
                    ..LogOptions::default()
                };
                Arc::new(
                    EmbeddedLog::open(&log_path(&storage.data_dir), Access::ReadWrite, options)
                        .await
                        .context("opening the log")?,
                )
            }
        };
        let run_projector = storage
            .projector
            .unwrap_or(!(mode == Mode::Gateway && kafka.is_some()));
        // The embedded projection's transactions beside the gateway: on a pool of lower
        // priority (a shared store does its work in its own server).
        let writes_pool =
            (run_projector && storage.projection_url.is_none() && storage.projector_nice > 0)
                .then(|| background::low_priority_pool("herald-projection", storage.projector_nice))
                .transpose()
                .context("starting the projection's thread pool")?;
        let store = super::open_projection(
            storage.projection_url.as_deref(),
            &storage.data_dir,
            Access::ReadWrite,
            "",
            writes_pool.as_ref().map(|p| p.handle().clone()),
        )
        .await?;

        let shutdown = CancellationToken::new();
        let projector = run_projector.then(|| {
            let projector = Projector::new(log.clone(), store.clone())
                .with_single_user_records(storage.single_user_records);
            if storage.projection_url.is_none() {
                // The data directory's lock makes this the only projector of its SQLite
                // projection: one lease holder name across restarts.
                projector.with_instance_id("embedded")
            } else {
                projector
            }
        });
        let projector_ready = projector
            .clone()
            .map(|p| Arc::new(move || p.readiness()) as Arc<dyn Fn() -> Report + Send + Sync>);
        if projector.is_some() {
            herald_ports::telemetry::zero_projector();
        }
        let projector_task = projector.map(|projector| {
            let token = shutdown.clone();
            tokio::spawn(async move { projector.run(token).await })
        });

        let listener = tokio::net::TcpListener::bind(self.listen)
            .await
            .with_context(|| format!("binding {}", self.listen))?;
        let ports = Ports {
            log: log.clone(),
            inbox: store.clone(),
            audit: Arc::new(herald_projector::audit::LogAuditor {
                log: log.clone(),
                store: store.clone(),
            }),
            presence: kafka
                .clone()
                .map(|k| k as Arc<dyn herald_ports::PresenceBus>),
        };
        let mut state = AppState::start(ports, config, shutdown.clone()).await?;
        state.projector_readiness = projector_ready;
        // The metrics address's /readyz is the gateway's own.
        let st = state.clone();
        let _ = ready.set(Arc::new(move || {
            let st = st.clone();
            Box::pin(async move { st.readiness().await })
        }));
        state.metrics = Some(Arc::new(move || super::metrics::render(&prometheus)));
        let connections = state.connections.clone();
        let where_ = match (storage.kafka.brokers(), needs_dir) {
            (Some(b), true) => {
                format!(
                    "log on Kafka at {b}, data in {}",
                    storage.data_dir.display()
                )
            }
            (Some(b), false) => format!("log on Kafka at {b}"),
            (None, _) => format!("data in {}", storage.data_dir.display()),
        };
        let addr = listener.local_addr()?;
        eprintln!("{}: listening on http://{addr} ({where_})", mode.name());
        if mode == Mode::Dev {
            // An unspecified address (0.0.0.0) is reached through localhost.
            let host = if addr.ip().is_unspecified() {
                std::net::SocketAddr::from(([127, 0, 0, 1], addr.port()))
            } else {
                addr
            };
            eprintln!("herald dev: demo inbox at http://{host}/ (open it in a browser)");
        }
        let server_token = shutdown.clone();
        let http = state.config.http;
        let stop = async move {
            tokio::select! {
                _ = signal => tracing::info!("shutdown signal received"),
                _ = server_token.cancelled() => {},
            }
            // WebSocket sessions close with 1001 going away.
            server_token.cancel();
        };
        herald_gateway::serve(listener, app(state), http, stop).await;
        connections.drained(Duration::from_secs(5)).await;
        // The server stopped accepting and finished its requests (appends included); stop the
        // projector between batches, then let the log writer commit what it holds.
        shutdown.cancel();
        let projected = match projector_task {
            Some(t) => super::projector_stopped(t, super::PROJECTOR_STOP_GRACE)
                .await
                .and_then(|r| r.context("projector")),
            None => Ok(()),
        };
        drop(log);
        drop(writes_pool);
        projected?;
        drop(lock);
        eprintln!("{}: stopped", mode.name());
        Ok(ExitCode::SUCCESS)
    }
}
