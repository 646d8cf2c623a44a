//! The Prometheus exporter: histograms with the buckets `herald_ports::telemetry` names, build
//! info, process metrics read from `/proc/self` at each scrape, and the metrics address
//! (`/metrics`, `/healthz`, `/readyz`) that Prometheus and orchestrators reach without
//! credentials.

use std::sync::Arc;

use anyhow::Context;
use herald_ports::readiness::Report;
use herald_ports::telemetry::{self, ProcessStats};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// What `/readyz` on the metrics address reports.
pub type Readiness = Arc<dyn Fn() -> BoxFuture<Report> + Send + Sync>;
pub type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;

/// Where the readiness check goes once the process has built what it checks: until then
/// `/readyz` answers 503 "starting" (and `/healthz` already answers).
pub type ReadinessSlot = Arc<std::sync::OnceLock<Readiness>>;

/// Installs the process's metrics recorder, with every histogram's buckets (so latencies are
/// exported as `_bucket` series, which add up across replicas), describes every metric and sets
/// `herald_build_info{command}`.
pub fn install(command: &'static str) -> anyhow::Result<PrometheusHandle> {
    let mut builder = PrometheusBuilder::new();
    for (name, buckets) in telemetry::HISTOGRAM_BUCKETS {
        builder = builder
            .set_buckets_for_metric(Matcher::Full((*name).to_owned()), buckets)
            .with_context(|| format!("the buckets of {name}"))?;
    }
    let handle = builder
        .install_recorder()
        .context("installing the metrics recorder")?;
    telemetry::describe();
    telemetry::build_info(env!("CARGO_PKG_VERSION"), command);
    Ok(handle)
}

/// The exposition, with the process metrics read just before.
pub fn render(handle: &PrometheusHandle) -> String {
    telemetry::process(&process_stats());
    handle.render()
}

/// What `/proc/self` says about this process (Linux; elsewhere every field is `None`).
pub fn process_stats() -> ProcessStats {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let system = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let mut stats = parse_proc(&stat, &status, &system);
    stats.open_fds = std::fs::read_dir("/proc/self/fd")
        .ok()
        .map(|d| d.count() as u64);
    stats.max_fds = rlimit::getrlimit(rlimit::Resource::NOFILE)
        .ok()
        .map(|(soft, _)| soft);
    stats
}

/// Clock ticks per second of `/proc/*/stat` times (`USER_HZ`, 100 on every Linux platform
/// Herald builds for; reading `sysconf` would need `unsafe`).
const USER_HZ: f64 = 100.0;

/// Parses `/proc/self/stat` (CPU time, threads, start time in ticks since boot),
/// `/proc/self/status` (`VmRSS`, `VmSize` in kB) and `/proc/stat` (`btime`, boot time).
fn parse_proc(stat: &str, status: &str, system: &str) -> ProcessStats {
    // Fields after the command name, which is in parentheses and may contain spaces: the
    // first of them is field 3 (state).
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<u64>().ok());
    let kb = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|v| v * 1024)
    };
    let boot = system
        .lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse::<u64>().ok());
    ProcessStats {
        resident_bytes: kb("VmRSS:"),
        virtual_bytes: kb("VmSize:"),
        open_fds: None,
        max_fds: None,
        cpu_seconds: match (field(14), field(15)) {
            (Some(u), Some(s)) => Some((u + s) as f64 / USER_HZ),
            _ => None,
        },
        start_time_seconds: match (boot, field(22)) {
            (Some(b), Some(t)) => Some(b as f64 + t as f64 / USER_HZ),
            _ => None,
        },
        threads: field(20),
    }
}

/// Serves `/metrics` (Prometheus text), `/healthz` (the process answers) and `/readyz` (200
/// when the check in `ready` says so, else 503, with the checks as JSON) on `addr`, without
/// credentials, until the process ends.
pub async fn serve(
    addr: std::net::SocketAddr,
    prometheus: PrometheusHandle,
    ready: ReadinessSlot,
) -> anyhow::Result<()> {
    use axum::http::StatusCode;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the metrics address {addr}"))?;
    let app = axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(move || {
                let p = prometheus.clone();
                async move { render(&p) }
            }),
        )
        .route(
            "/healthz",
            axum::routing::get(|| async { axum::Json(serde_json::json!({"status": "ok"})) }),
        )
        .route(
            "/readyz",
            axum::routing::get(move || {
                let check = ready.get().cloned();
                async move {
                    let report = match check {
                        Some(check) => check().await,
                        None => {
                            let mut r = Report::default();
                            r.push("start-up", false, "starting");
                            r
                        }
                    };
                    let status = if report.ready {
                        StatusCode::OK
                    } else {
                        StatusCode::SERVICE_UNAVAILABLE
                    };
                    (status, axum::Json(report))
                }
            }),
        )
        // The API's errors: a JSON body that names the problem, not an empty 404.
        .fallback(|| async { herald_gateway::AppError::NotFound })
        .method_not_allowed_fallback(|| async { herald_gateway::AppError::MethodNotAllowed });
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "metrics listener failed");
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_files_parse_into_process_stats() {
        // A command name with spaces and a parenthesis, as the kernel writes it.
        let stat = "4242 (herald (x) y) S 1 4242 4242 0 -1 4194560 2000 0 0 0 250 50 0 0 20 0 \
                    7 0 123400 1000000 500 18446744073709551615";
        let status = "Name:\therald\nVmSize:\t  20480 kB\nVmRSS:\t   1024 kB\nThreads:\t7\n";
        let system = "cpu  1 2 3\nbtime 1700000000\nprocesses 9\n";
        let s = parse_proc(stat, status, system);
        assert_eq!(s.resident_bytes, Some(1024 * 1024));
        assert_eq!(s.virtual_bytes, Some(20480 * 1024));
        assert_eq!(s.cpu_seconds, Some(3.0), "(250 + 50) ticks");
        assert_eq!(s.threads, Some(7));
        assert_eq!(s.start_time_seconds, Some(1_700_000_000.0 + 1234.0));
    }

    #[test]
    fn unreadable_proc_files_give_nothing_rather_than_nonsense() {
        assert_eq!(parse_proc("", "", ""), ProcessStats::default());
        let live = process_stats();
        if cfg!(target_os = "linux") {
            assert!(live.resident_bytes.is_some_and(|b| b > 0), "{live:?}");
            assert!(live.open_fds.is_some_and(|n| n >= 3), "{live:?}");
        }
    }
}
