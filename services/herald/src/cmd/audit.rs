//! `herald audit`: every event about a notification or a user, as a table or JSON.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use herald_ports::{AuditBudget, AuditReport};
use herald_projector::audit::audit;
use serde_json::Value;

use super::{DEFAULT_DATA_DIR, init_tracing, rfc3339};

#[derive(clap::Args)]
pub struct Args {
    /// A notification id or a user id.
    id: String,
    /// Read the files of this data directory (works while `herald dev` runs).
    #[arg(long, env = "HERALD_DATA_DIR", default_value = DEFAULT_DATA_DIR, conflicts_with = "url")]
    data_dir: PathBuf,
    /// Ask a running Herald over HTTP instead of reading files.
    #[arg(long)]
    url: Option<String>,
    /// With --url: seconds to wait for the server's whole answer before giving up.
    #[arg(
        long,
        default_value_t = 60,
        requires = "url",
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    timeout_secs: u64,
    /// With --url: an operator API key (`herald gateway --admin-key NAME=KEY`).
    #[arg(
        long,
        env = "HERALD_ADMIN_KEY",
        hide_env_values = true,
        requires = "url"
    )]
    admin_key: Option<String>,
    /// Read at most this many log records (the answer says when it stopped short). Default:
    /// all, or the server's default with --url.
    #[arg(long)]
    max_records: Option<u64>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// The projection is in PostgreSQL or ScyllaDB at this URL.
    #[arg(long, env = "HERALD_PROJECTION_URL")]
    projection_url: Option<String>,
    #[command(flatten)]
    kafka: super::KafkaConnect,
}

async fn fetch(args: &Args, url: &str) -> anyhow::Result<AuditReport> {
    let mut url = format!("{}/v1/audit/{}", url.trim_end_matches('/'), args.id);
    if let Some(n) = args.max_records {
        url.push_str(&format!("?max_records={n}"));
    }
    let mut req = super::http_client(args.timeout_secs)?.get(&url);
    if let Some(key) = &args.admin_key {
        req = req.header("x-api-key", key);
    }
    let resp = req
        .send()
        .await
        .with_context(|| format!("cannot reach Herald at {url}"))?;
    let status = resp.status();
    let body: Value = resp.json().await.context("reading the audit")?;
    if !status.is_success() {
        bail!(
            "HTTP {status}: {}",
            body["error"]["message"].as_str().unwrap_or("error")
        );
    }
    serde_json::from_value(body).context("the server sent an audit this CLI does not understand")
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let _telemetry = init_tracing("warn");
    herald_core::ids::validate_id("id", &args.id)?;
    let report = match &args.url {
        Some(url) => fetch(&args, url).await?,
        None => {
            let log = super::open_any_log_read_only(&args.kafka, &args.data_dir).await?;
            let store = super::open_projection(
                args.projection_url.as_deref(),
                &args.data_dir,
                herald_embedded::Access::ReadOnly,
                "pass --data-dir, --projection-url or --url",
                None,
            )
            .await?;
            let budget = args
                .max_records
                .map_or(AuditBudget::UNLIMITED, |max_records| AuditBudget {
                    max_records,
                });
            audit(log.as_ref(), store.as_ref(), &args.id, budget).await?
        }
    };
    if args.json {
        super::out(serde_json::to_string_pretty(&report)?.to_string());
        return Ok(ExitCode::SUCCESS);
    }
    if !report.complete {
        eprintln!(
            "warning: the audit stopped after reading {} log records; more events may exist \
             (pass a larger --max-records)",
            report.scanned_records
        );
    }
    if report.entries.is_empty() {
        super::out(format!("no events about {}", args.id));
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<[String; 6]> = report
        .entries
        .iter()
        .map(|e| {
            [
                rfc3339(e.logged_ms),
                format!("{}/{}@{}", e.topic, e.partition, e.offset),
                e.event.clone(),
                e.user_id.clone().unwrap_or_else(|| "-".into()),
                e.device_id.clone().unwrap_or_else(|| "-".into()),
                e.detail.clone(),
            ]
        })
        .collect();
    let header = ["TIME", "POSITION", "EVENT", "USER", "DEVICE", "DETAIL"];
    let mut widths = header.map(str::len);
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let line = |cells: [&str; 6]| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i == 5 {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        s
    };
    super::out(line(header).to_string());
    for r in &rows {
        super::out(line([&r[0], &r[1], &r[2], &r[3], &r[4], &r[5]]).to_string());
    }
    Ok(ExitCode::SUCCESS)
}
