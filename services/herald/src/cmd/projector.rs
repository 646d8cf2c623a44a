//! `herald projector`: the stream processor alone, as one replica of a consumer group on Kafka.
//! Replicas share the partitions of each stage; the projection is the shared PostgreSQL store
//! (or, for a single replica, a SQLite file in the data directory).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use herald_embedded::Access;
use herald_projector::Projector;
use tokio_util::sync::CancellationToken;

use super::{DEFAULT_DATA_DIR, KafkaArgs, init_tracing};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    kafka: KafkaArgs,
    /// The projection shared by every replica: postgres://user@host:port/db or
    /// scylla://host:9042[,host…]/keyspace[?consistency=QUORUM&replication_factor=3].
    #[arg(long, env = "HERALD_PROJECTION_URL")]
    projection_url: Option<String>,
    /// Without --projection-url: the data directory of a single replica's SQLite projection.
    #[arg(long, env = "HERALD_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
    data_dir: PathBuf,
    /// Serve /metrics (Prometheus), /healthz and /readyz (each stage assigned and caught up)
    /// on this address, without credentials.
    #[arg(long, env = "HERALD_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// A partition with records to apply and no progress this long (each replica adds up to
    /// half again at random) moves the stage to a fresh consumer group (the next generation),
    /// which every replica joins, milliseconds (a group a broker left without an assignment).
    #[arg(long, default_value_t = herald_projector::STALL_TIMEOUT.as_millis() as u64)]
    stall_timeout_ms: u64,
    /// /readyz on the metrics address answers 200 once each stage has its partitions and is at
    /// most this many records behind on them.
    #[arg(long, env = "HERALD_READY_MAX_LAG_RECORDS", default_value_t = herald_ports::readiness::READY_MAX_LAG_RECORDS)]
    ready_max_lag_records: u64,
    /// Fanout writes a `NotificationAdded` per recipient instead of one `NotificationsAdded`
    /// per partition for a notification to several users (how Herald wrote them before): only
    /// for a rolling upgrade from such a version, until every gateway and projector reads them.
    #[arg(long, env = "HERALD_SINGLE_USER_RECORDS")]
    single_user_records: bool,
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let _telemetry = init_tracing("info");
    if args.kafka.brokers().is_none() {
        anyhow::bail!(
            "herald projector runs against Kafka: pass --kafka-brokers (or HERALD_KAFKA_BROKERS). \
             On embedded storage, `herald dev` and `herald gateway` run the projector in-process"
        );
    }
    let signal = super::server::shutdown_signal()?;
    let prometheus = super::metrics::install("projector")?;
    herald_ports::telemetry::zero_projector();
    let ready = super::metrics::ReadinessSlot::default();
    if let Some(addr) = args.metrics_listen {
        super::metrics::serve(addr, prometheus, ready.clone()).await?;
    }
    let log = args.kafka.open().await?.expect("checked above");
    // A SQLite projection has one writer: this replica holds the data directory's lock.
    let _lock = match &args.projection_url {
        Some(_) => None,
        None => {
            std::fs::create_dir_all(&args.data_dir)
                .with_context(|| format!("creating {}", args.data_dir.display()))?;
            Some(super::server::lock_data_dir(&args.data_dir)?)
        }
    };
    let store = super::open_projection(
        args.projection_url.as_deref(),
        &args.data_dir,
        Access::ReadWrite,
        "",
        None,
    )
    .await?;
    let shutdown = CancellationToken::new();
    let mut projector = Projector::new(log.clone(), store)
        .with_stall_timeout(std::time::Duration::from_millis(
            args.stall_timeout_ms.max(1000),
        ))
        .with_ready_max_lag(args.ready_max_lag_records)
        .with_single_user_records(args.single_user_records);
    if args.projection_url.is_none() {
        // The data directory's lock makes this the only replica of its SQLite projection: it
        // keeps one lease holder name across restarts (and takes its lease back at once).
        projector = projector.with_instance_id("embedded");
    }
    let p = projector.clone();
    let _ = ready.set(Arc::new(move || {
        let report = p.readiness();
        Box::pin(async move { report })
    }));
    let token = shutdown.clone();
    let task = tokio::spawn(async move { projector.run(token).await });
    eprintln!(
        "herald projector: consuming {} (prefix {:?})",
        args.kafka.brokers().unwrap_or_default(),
        args.kafka.connect.kafka_prefix
    );
    let mut task = task;
    tokio::select! {
        _ = signal => tracing::info!("shutdown signal received"),
        r = &mut task => {
            // The projector stopped by itself: that is an error.
            r.context("projector task")??;
            anyhow::bail!("the projector stopped");
        }
    }
    shutdown.cancel();
    super::projector_stopped(task, super::PROJECTOR_STOP_GRACE).await??;
    eprintln!("herald projector: stopped");
    Ok(ExitCode::SUCCESS)
}
