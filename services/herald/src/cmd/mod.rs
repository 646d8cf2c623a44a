//! One module per subcommand, plus what they share.

pub mod audit;
mod background;
pub mod dev;
pub mod gateway;
pub mod metrics;
pub mod produce;
pub mod projector;
pub mod replay;
pub mod server;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use herald_embedded::{Access, EmbeddedLog, LogOptions};

/// How to reach Kafka (`--kafka-brokers`): with it the log is Kafka, without it the embedded
/// log in the data directory. The read-only tools (`audit`, `replay`) take only these.
#[derive(clap::Args, Debug, Clone)]
pub struct KafkaConnect {
    /// Kafka bootstrap servers (host:port,...). With it, the log is Kafka.
    #[arg(long, env = "HERALD_KAFKA_BROKERS")]
    pub kafka_brokers: Option<String>,
    /// Prefix of Herald's topic and consumer-group names.
    #[arg(long, env = "HERALD_KAFKA_PREFIX", default_value_t = kafka_defaults().prefix)]
    pub kafka_prefix: String,
    /// A librdkafka property KEY=VALUE for every client (repeat), e.g. security.protocol=SASL_SSL,
    /// sasl.mechanism=SCRAM-SHA-512, sasl.username=…, ssl.ca.location=…, session.timeout.ms=…
    /// HERALD_KAFKA_PROPERTIES takes the same, comma-separated.
    #[arg(
        long = "kafka-property",
        short = 'X',
        value_name = "KEY=VALUE",
        env = "HERALD_KAFKA_PROPERTIES",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub kafka_properties: Vec<String>,
}

/// The Kafka adapter's defaults, the one source of the flags' defaults.
fn kafka_defaults() -> herald_kafka::KafkaConfig {
    herald_kafka::KafkaConfig::default()
}

impl KafkaConnect {
    /// The adapter's configuration, if brokers were given; read-only tools never create topics.
    pub fn config(&self, create_topics: bool) -> anyhow::Result<Option<herald_kafka::KafkaConfig>> {
        let Some(brokers) = &self.kafka_brokers else {
            return Ok(None);
        };
        let mut properties = Vec::new();
        for p in &self.kafka_properties {
            let (k, v) = p
                .split_once('=')
                .with_context(|| format!("--kafka-property {p:?}: expected KEY=VALUE"))?;
            properties.push((k.trim().to_owned(), v.trim().to_owned()));
        }
        Ok(Some(herald_kafka::KafkaConfig {
            brokers: brokers.clone(),
            prefix: self.kafka_prefix.clone(),
            properties,
            create_topics,
            ..Default::default()
        }))
    }

    /// The Kafka log for a read-only tool (no topic is created), if brokers were given.
    pub async fn open_read_only(&self) -> anyhow::Result<Option<Arc<herald_kafka::KafkaLog>>> {
        open_kafka(self.config(false)?).await
    }
}

async fn open_kafka(
    config: Option<herald_kafka::KafkaConfig>,
) -> anyhow::Result<Option<Arc<herald_kafka::KafkaLog>>> {
    match config {
        None => Ok(None),
        Some(c) => Ok(Some(Arc::new(
            herald_kafka::KafkaLog::open(c)
                .await
                .context("opening the Kafka log")?,
        ))),
    }
}

/// Kafka for the servers: how to reach it, and the topics they create when missing.
#[derive(clap::Args, Debug, Clone)]
pub struct KafkaArgs {
    #[command(flatten)]
    pub connect: KafkaConnect,
    /// Partitions of the user-events topic when Herald creates it.
    #[arg(long, env = "HERALD_KAFKA_PARTITIONS", default_value_t = kafka_defaults().user_events_partitions)]
    pub kafka_partitions: u32,
    /// Partitions of the requests topic when Herald creates it.
    #[arg(long, env = "HERALD_KAFKA_REQUESTS_PARTITIONS", default_value_t = kafka_defaults().requests_partitions)]
    pub kafka_requests_partitions: u32,
    /// Replication factor of topics Herald creates (3 on a production cluster).
    #[arg(long, env = "HERALD_KAFKA_REPLICATION_FACTOR", default_value_t = kafka_defaults().replication_factor)]
    pub kafka_replication_factor: i32,
}

impl KafkaArgs {
    pub fn brokers(&self) -> Option<&str> {
        self.connect.kafka_brokers.as_deref()
    }

    /// The Kafka log, if brokers were given (missing topics are created).
    pub async fn open(&self) -> anyhow::Result<Option<Arc<herald_kafka::KafkaLog>>> {
        let config = self
            .connect
            .config(true)?
            .map(|c| herald_kafka::KafkaConfig {
                user_events_partitions: self.kafka_partitions,
                requests_partitions: self.kafka_requests_partitions,
                replication_factor: self.kafka_replication_factor,
                ..c
            });
        open_kafka(config).await
    }
}

/// Default data directory of the embedded backends.
pub const DEFAULT_DATA_DIR: &str = "data";
/// Default address of `herald dev`'s HTTP API.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7400";
pub const DEFAULT_URL: &str = "http://127.0.0.1:7400";

pub fn log_path(data_dir: &Path) -> PathBuf {
    data_dir.join("log.db")
}

pub fn projection_path(data_dir: &Path) -> PathBuf {
    data_dir.join("projection.db")
}

/// Logs to stderr at `RUST_LOG` (default `default_level`).
pub fn init_tracing(default_level: &str) -> Telemetry {
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;

    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    // Colour only for a person at a terminal: no escape codes in files, pipes and journald.
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .with_filter(filter);
    let (otel, provider) = match otlp_provider() {
        Ok(Some(provider)) => {
            use opentelemetry::trace::TracerProvider as _;
            let layer = tracing_opentelemetry::layer()
                .with_tracer(provider.tracer("herald"))
                .with_filter(otlp_targets());
            (Some(layer), Some(provider))
        }
        Ok(None) => (None, None),
        Err(e) => {
            eprintln!("warning: OTLP export is off: {e}");
            (None, None)
        }
    };
    let _ = tracing_subscriber::registry()
        .with(fmt)
        .with(otel)
        .try_init();
    Telemetry(provider)
}

/// Spans exported over OTLP: Herald's own (HTTP requests, log appends, projector batches)
/// at debug level, whatever the console's filter is.
fn otlp_targets() -> tracing_subscriber::filter::Targets {
    use tracing::Level;
    tracing_subscriber::filter::Targets::new()
        .with_target("herald", Level::DEBUG)
        .with_target("herald_gateway", Level::DEBUG)
        .with_target("herald_projector", Level::DEBUG)
        .with_target("herald_embedded", Level::DEBUG)
        .with_target("herald_kafka", Level::DEBUG)
        .with_target("tower_http", Level::DEBUG)
}

/// The OTLP/HTTP span exporter, when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
/// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set: the standard OpenTelemetry variables, read by
/// the exporter itself (`OTEL_BSP_*` tune the batch processor, `OTEL_SERVICE_NAME` the name).
fn otlp_provider() -> anyhow::Result<Option<opentelemetry_sdk::trace::SdkTracerProvider>> {
    let set = |k: &str| std::env::var(k).is_ok_and(|v| !v.trim().is_empty());
    if !set("OTEL_EXPORTER_OTLP_ENDPOINT") && !set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
        return Ok(None);
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()
        .context("building the OTLP span exporter")?;
    let service = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| "herald".into());
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name(service)
                .build(),
        )
        .build();
    Ok(Some(provider))
}

/// Flushes exported spans when the command ends.
pub struct Telemetry(Option<opentelemetry_sdk::trace::SdkTracerProvider>);

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.0.take()
            && let Err(e) = provider.shutdown()
        {
            eprintln!("warning: flushing OTLP spans: {e}");
        }
    }
}

/// Opens an existing data directory's log read-only.
pub async fn open_log_read_only(data_dir: &Path) -> anyhow::Result<EmbeddedLog> {
    if !data_dir.is_dir() {
        bail!(
            "data directory {} does not exist: pass --data-dir, or run `herald dev` once to create it",
            data_dir.display()
        );
    }
    EmbeddedLog::open(&log_path(data_dir), Access::ReadOnly, LogOptions::default())
        .await
        .context("opening the log")
}

/// A projection shared by several processes, named by URL.
pub enum SharedProjection {
    /// `postgres://` or `postgresql://`.
    Postgres(herald_postgres::PostgresProjection),
    /// `scylla://host:9042[,host…]/keyspace`.
    Scylla(herald_scylla::ScyllaProjection),
}

impl SharedProjection {
    /// Connects and applies the schema (both stores migrate on connect).
    pub async fn connect(url: &str) -> anyhow::Result<Self> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Self::Postgres(
                herald_postgres::PostgresProjection::connect(url)
                    .await
                    .context("opening the PostgreSQL projection")?,
            ))
        } else if url.starts_with("scylla://") {
            Ok(Self::Scylla(
                herald_scylla::ScyllaProjection::connect(url)
                    .await
                    .context("opening the ScyllaDB projection")?,
            ))
        } else {
            bail!(
                "unknown projection URL {url:?}: expected postgres://user@host:port/db or \
                 scylla://host:9042/keyspace"
            )
        }
    }

    pub fn store(&self) -> Arc<dyn herald_ports::ProjectionStore> {
        match self {
            Self::Postgres(p) => Arc::new(p.clone()),
            Self::Scylla(s) => Arc::new(s.clone()),
        }
    }

    /// A snapshot and the consumer offsets it covers (for `herald replay`).
    pub async fn snapshot_with_offsets(
        &self,
    ) -> anyhow::Result<(
        herald_core::mem::ProjectionSnapshot,
        std::collections::BTreeMap<String, std::collections::BTreeMap<u32, u64>>,
    )> {
        Ok(match self {
            Self::Postgres(p) => p.snapshot_with_offsets().await?,
            Self::Scylla(s) => s.snapshot_with_offsets().await?,
        })
    }
}

/// The HTTP client of the commands that talk to a running server (`produce`, `audit --url`):
/// a server that accepted the connection and never answers gets an error after
/// `timeout_secs` (their `--timeout-secs`, default 60), not a wait forever.
pub fn http_client(timeout_secs: u64) -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(timeout_secs))
        .build()
        .context("building the HTTP client")
}

/// How long a stopping process waits for its projector (`herald projector`, or the one beside a
/// gateway) to finish its batch and leave its consumer groups (each leave waits at most
/// `herald_kafka::CONSUMER_CLOSE_GRACE`). Everything a projector applied is committed with its
/// offsets in the projection (its work is idempotent), so exiting without it loses nothing: the
/// next owner reads the rest again. With the runtime's own 5 s (`RUNTIME_SHUTDOWN_GRACE`),
/// below Kubernetes' default grace of 30 s.
pub const PROJECTOR_STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(20);

/// The projector task's result once its shutdown was signalled, or an error after `grace`
/// (the process then exits without it).
pub async fn projector_stopped<T>(
    task: tokio::task::JoinHandle<T>,
    grace: std::time::Duration,
) -> anyhow::Result<T> {
    match tokio::time::timeout(grace, task).await {
        Ok(r) => r.context("projector task"),
        Err(_) => bail!(
            "the projector did not stop within {grace:?} of the shutdown; exiting without it \
             (what it applied is committed with its offsets; the rest is read again)"
        ),
    }
}

/// The projection: the shared store at `url` (PostgreSQL or ScyllaDB; the schema is applied on
/// connect), else the data directory's SQLite file. A read-only open needs the file to exist;
/// `hint` says what to pass instead. `writes_on`: the runtime whose blocking threads run the
/// SQLite file's write transactions (the server's pool of lower priority); a shared store
/// ignores it.
pub async fn open_projection(
    url: Option<&str>,
    data_dir: &Path,
    access: Access,
    hint: &str,
    writes_on: Option<tokio::runtime::Handle>,
) -> anyhow::Result<Arc<dyn herald_ports::ProjectionStore>> {
    if let Some(url) = url {
        return Ok(SharedProjection::connect(url).await?.store());
    }
    let path = projection_path(data_dir);
    if access == Access::ReadOnly && !path.exists() {
        bail!("no projection at {}: {hint}", path.display());
    }
    let store = herald_embedded::EmbeddedProjection::open(&path, access)
        .await
        .context("opening the projection")?;
    Ok(Arc::new(match writes_on {
        Some(runtime) => store.with_writes_on(runtime),
        None => store,
    }))
}

/// The log for read-only tools: Kafka when brokers are given, else the data directory's.
pub async fn open_any_log_read_only(
    kafka: &KafkaConnect,
    data_dir: &Path,
) -> anyhow::Result<Arc<dyn herald_ports::EventLog>> {
    Ok(match kafka.open_read_only().await? {
        Some(k) => k,
        None => Arc::new(open_log_read_only(data_dir).await?),
    })
}

/// Writes a line to stdout. A closed stdout (`herald audit x | head`) ends the process quietly
/// instead of panicking the way `println!` does.
pub fn out(line: impl std::fmt::Display) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = writeln!(stdout, "{line}").and_then(|()| stdout.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: writing to stdout: {e}");
        std::process::exit(1);
    }
}

/// Formats Unix milliseconds as RFC 3339 (clamped to years 1970..=9999, never failing).
pub fn rfc3339(ms: i64) -> String {
    herald_core::time::format_rfc3339_millis(ms)
}

#[cfg(test)]
mod stop_tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_projector_that_stops_is_waited_for_and_one_that_does_not_is_left() {
        let done = tokio::spawn(async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            7
        });
        assert_eq!(
            projector_stopped(done, PROJECTOR_STOP_GRACE).await.unwrap(),
            7
        );
        let stuck = tokio::spawn(std::future::pending::<()>());
        let err = projector_stopped(stuck, Duration::from_millis(100))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("did not stop within"), "{err}");
    }
}
