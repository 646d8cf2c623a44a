//! `herald-bench`: benchmarks, each next to its baseline measured in the same run (this machine
//! is noisy, so only ratios within one run are compared). Results go to `target/bench/*.json`
//! and, with `--report`, into the matching section of `docs/benchmarks.md`.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use clap::{Parser, Subcommand};
use herald_embedded::{Access, EmbeddedLog, LogOptions};
use herald_ports::log::{EventLog, HEADER_FINGERPRINT, HEADER_SCHEMA, Record, Topic};
use serde_json::json;

mod floor;
mod http_floor;
mod peers;
mod report;
mod suite;

/// The allocator `herald` ships with, so in-process measurements (log and Kafka appends) run
/// Herald's code as it runs in production.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(name = "herald-bench")]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// Herald next to Socket.IO and ws: idle memory, fanout, latency, resume, ingest and
    /// rebuild (see docs/benchmarks.md).
    Suite(suite::SuiteArgs),
    /// Appends through the Kafka log (`KafkaLog::append`, the 202 path) vs a raw rdkafka
    /// producer with the same settings, on one tansu broker started here.
    KafkaAppend {
        /// Records per measurement.
        #[arg(long, default_value_t = 50_000)]
        records: usize,
        /// Value size in bytes.
        #[arg(long, default_value_t = 200)]
        value_bytes: usize,
        /// Rewrite the section in docs/benchmarks.md.
        #[arg(long)]
        report: bool,
    },
    /// Durable appends to the embedded log vs raw SQLite inserts with the same durability, and
    /// vs two floors with the same group commit: a segment file and fjall (`floor`).
    LogAppend {
        /// Records per measurement.
        #[arg(long, default_value_t = 100_000)]
        records: usize,
        /// Value size in bytes.
        #[arg(long, default_value_t = 200)]
        value_bytes: usize,
        /// Concurrent appenders of single records, one measurement each.
        #[arg(long, value_delimiter = ',', default_value = "16,256,1024")]
        appenders: Vec<usize>,
        /// Rewrite the section in docs/benchmarks.md.
        #[arg(long)]
        report: bool,
    },
    /// The HTTP floor the ingest scenario starts next to Herald: Herald's ingest requests
    /// parsed and answered 202 through Herald's server loop, nothing stored (`http_floor.rs`).
    HttpFloor {
        /// Address to listen on.
        #[arg(long)]
        listen: std::net::SocketAddr,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match cli.scenario {
        Scenario::Suite(args) => rt.block_on(suite::run(args)),
        Scenario::LogAppend {
            records,
            value_bytes,
            appenders,
            report,
        } => rt.block_on(log_append(records, value_bytes, appenders, report)),
        Scenario::KafkaAppend {
            records,
            value_bytes,
            report,
        } => rt.block_on(kafka_append(records, value_bytes, report)),
        Scenario::HttpFloor { listen } => rt.block_on(http_floor::run(listen)),
    }
}

/// Raw baseline: one connection, the log's format-1 table (a row per record) and pragmas, one
/// commit (fsync) per 1000 rows.
pub(crate) fn raw_sqlite(path: &Path, records: usize, value: &[u8]) -> anyhow::Result<f64> {
    let conn = rusqlite::Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    // The log's schema and its format-1 table, a row per record: the yardstick of the
    // durable-ingest target (a new log keeps runs of records in a row: `001_log.sql`).
    conn.execute_batch(include_str!("../../../schemas/sql/sqlite/001_log.sql"))?;
    conn.execute_batch(include_str!(
        "../../../schemas/sql/sqlite/001_log_records.sql"
    ))?;
    let started = Instant::now();
    let mut offsets = [0i64; 8];
    for chunk in 0..records.div_ceil(1000) {
        let tx = conn.unchecked_transaction()?;
        {
            let mut stmt = tx
                .prepare_cached("INSERT INTO records VALUES (1, ?1, ?2, ?3, 0, x'00000000', ?4)")?;
            for i in 0..1000.min(records - chunk * 1000) {
                let p = (chunk * 1000 + i) % 8;
                stmt.execute(rusqlite::params![p as i64, offsets[p], "user", value])?;
                offsets[p] += 1;
            }
        }
        tx.commit()?;
    }
    Ok(records as f64 / started.elapsed().as_secs_f64())
}

fn record(partition: usize, value: &[u8], headers: &[(String, Vec<u8>)]) -> Record {
    Record {
        partition: (partition % 8) as u32,
        key: "user".into(),
        value: value.to_vec(),
        headers: headers.to_vec(),
        timestamp_ms: 0,
    }
}

/// The headers every Herald record carries to Kafka (schema name and fingerprint), given to both
/// sides of `kafka-append`: librdkafka allocates each header, so a comparison without them
/// would leave out part of what a real append costs.
fn event_headers() -> Vec<(String, Vec<u8>)> {
    vec![
        (HEADER_SCHEMA.to_owned(), b"user-event".to_vec()),
        (HEADER_FINGERPRINT.to_owned(), b"0123456789abcdef".to_vec()),
    ]
}

/// `appenders` tasks append `records / appenders` calls of `per_call` records each, to any log.
async fn log_rate<L: EventLog>(
    log: &Arc<L>,
    records: usize,
    value: &[u8],
    appenders: usize,
    per_call: usize,
    headers: &[(String, Vec<u8>)],
) -> anyhow::Result<f64> {
    let log = log.clone();
    append_rate(records, value, appenders, per_call, headers, move |batch| {
        let log = log.clone();
        async move {
            log.append(Topic::UserEvents, batch).await?;
            Ok(())
        }
    })
    .await
}

/// `appenders` tasks append `records / appenders` calls of `per_call` records each through
/// `append`, each call awaited before the next; records per second.
async fn append_rate<F, Fut>(
    records: usize,
    value: &[u8],
    appenders: usize,
    per_call: usize,
    headers: &[(String, Vec<u8>)],
    append: F,
) -> anyhow::Result<f64>
where
    F: Fn(Vec<Record>) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let calls = records / appenders / per_call;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..appenders {
        let append = append.clone();
        let value = value.to_vec();
        let headers = headers.to_vec();
        tasks.push(tokio::spawn(async move {
            for c in 0..calls {
                let batch = (0..per_call)
                    .map(|i| record(t + c + i, &value, &headers))
                    .collect();
                append(batch).await?;
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok((calls * appenders * per_call) as f64 / started.elapsed().as_secs_f64())
}

/// One `log-append` configuration: for each engine (the embedded log, the segment floor,
/// fjall), records per second and this process's CPU microseconds per record.
struct FloorRun {
    what: String,
    engines: [(f64, f64); ENGINES.len()],
}

/// What `log-append` measures beside raw SQLite, in the order of [`FloorRun::engines`].
const ENGINES: [&str; 3] = ["`EmbeddedLog::append`", "segment floor", "fjall floor"];

async fn log_append(
    records: usize,
    value_bytes: usize,
    appenders: Vec<usize>,
    report: bool,
) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let value = vec![0x5au8; value_bytes];
    let me = std::process::id();
    let cpu0 = cpu_seconds(me)?;
    let raw = {
        let path = dir.path().join("raw.db");
        let value = value.clone();
        tokio::task::spawn_blocking(move || raw_sqlite(&path, records, &value)).await??
    };
    let raw_cpu_us = (cpu_seconds(me)? - cpu0) * 1e6 / records as f64;
    let log = Arc::new(
        EmbeddedLog::open(
            &dir.path().join("log.db"),
            Access::ReadWrite,
            // The floors have no commit delay: without it on both sides (it is off by default
            // in Herald too), the storage is what is compared.
            LogOptions {
                commit_delay: Some(std::time::Duration::ZERO),
                ..LogOptions::default()
            },
        )
        .await?,
    );
    let floors = [
        Arc::new(floor::Floor::segment(&dir.path().join("segment"), 8)?),
        Arc::new(floor::Floor::fjall(&dir.path().join("fjall"), 8)?),
    ];
    let mut configs: Vec<(usize, usize)> = appenders.iter().map(|a| (*a, 1)).collect();
    configs.push((8, 100));
    let mut rows = Vec::new();
    // The engines take turns going first, configuration by configuration.
    for (i, (a, per_call)) in configs.into_iter().enumerate() {
        let mut engines = [(0.0, 0.0); ENGINES.len()];
        for k in 0..ENGINES.len() {
            let e = (i + k) % ENGINES.len();
            let cpu0 = cpu_seconds(me)?;
            let rate = match e {
                0 => log_rate(&log, records, &value, a, per_call, &[]).await?,
                _ => {
                    let floor = floors[e - 1].clone();
                    append_rate(records, &value, a, per_call, &[], move |batch| {
                        let floor = floor.clone();
                        async move { Ok(floor.append(batch).await?) }
                    })
                    .await?
                }
            };
            let cpu_us = (cpu_seconds(me)? - cpu0) * 1e6 / records as f64;
            engines[e] = (rate, cpu_us);
        }
        rows.push(FloorRun {
            what: format!("{a} concurrent callers, {per_call} record(s) per call"),
            engines,
        });
    }
    let result = json!({
        "scenario": "log-append",
        "records": records,
        "value_bytes": value_bytes,
        "raw_sqlite_records_per_s": raw.round(),
        "raw_sqlite_cpu_us_per_record": (raw_cpu_us * 10.0).round() / 10.0,
        "runs": rows.iter().map(|r| json!({
            "what": r.what,
            "engines": ENGINES.iter().zip(&r.engines).map(|(name, (rate, cpu))| json!({
                "engine": name,
                "records_per_s": rate.round(),
                "ratio_to_raw": (rate / raw * 100.0).round() / 100.0,
                "cpu_us_per_record": (cpu * 10.0).round() / 10.0,
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    });
    println!("{}", serde_json::to_string_pretty(&result)?);
    let out = PathBuf::from("target/bench");
    std::fs::create_dir_all(&out)?;
    std::fs::write(
        out.join("log-append.json"),
        serde_json::to_string_pretty(&result)?,
    )?;
    if report {
        let mut table = format!(
            "Command: `cargo run --release -p herald-bench -- log-append --records {records} --report`\n\n\
             | what | records/s | vs raw | CPU µs per record |\n|---|---:|---:|---:|\n\
             | raw SQLite inserts, a row per record (the log's format-1 table), same pragmas (WAL, synchronous=FULL), one commit per 1000 rows | {raw:.0} | 1.00 | {raw_cpu_us:.1} |\n"
        );
        for r in &rows {
            for (name, (rate, cpu)) in ENGINES.iter().zip(&r.engines) {
                table.push_str(&format!(
                    "| {name}, {} | {rate:.0} | {:.2} | {cpu:.1} |\n",
                    r.what,
                    rate / raw
                ));
            }
        }
        table.push_str(&format!(
            "\n{records} records of {value_bytes} bytes per measurement; every append returned only after \
             its group's commit (fsync). One fsync covers every caller waiting at that moment, so \
             throughput follows concurrency: with about as many callers as the raw baseline's rows per \
             commit, the log runs at or past the raw rate: a new log (format 2) stores a \
             partition's records of one commit in one row, where the baseline inserts a row (and an \
             index entry) per record. The log runs here without a commit delay \
             (`--log-commit-delay-us`, off by default), as the floors have none: the storage is \
             what is compared. The segment floor (`herald-bench`'s \
             `floor.rs`) is the same group commit on an append-only file: each record framed with \
             its length and CRC-32, one `write` and one `fdatasync` per group, nothing else (no \
             index, no reads, no recovery): what replacing the SQLite file could buy on the append \
             path at most. The fjall floor is the same writer over fjall 2 (an LSM tree; each group \
             one batch in its journal, `fdatasync`ed; one key per record), for comparison. CPU is \
             this process's (callers, writer thread, fjall's own threads), per record.\n"
        ));
        replace_section(Path::new("docs/benchmarks.md"), "log-append", &table)
            .context("updating docs/benchmarks.md")?;
    }
    Ok(())
}

/// Raw baseline: one rdkafka producer (idempotent, acks=all, lz4, linger 2 ms: the adapter's
/// settings) enqueuing from one task with `inflight` records outstanding, every delivery report
/// awaited.
async fn raw_kafka(
    producer: &rdkafka::producer::FutureProducer,
    topic: &str,
    records: usize,
    value: &[u8],
    inflight: usize,
    headers: &[(String, Vec<u8>)],
) -> anyhow::Result<f64> {
    use rdkafka::error::{KafkaError, RDKafkaErrorCode};
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::FutureRecord;
    let started = Instant::now();
    let mut window = std::collections::VecDeque::with_capacity(inflight);
    for i in 0..records {
        let mut rec = FutureRecord::to(topic)
            .partition((i % 8) as i32)
            .key("user")
            .payload(value);
        if !headers.is_empty() {
            let mut h = OwnedHeaders::new_with_capacity(headers.len());
            for (key, value) in headers {
                h = h.insert(Header {
                    key,
                    value: Some(value),
                });
            }
            rec = rec.headers(h);
        }
        loop {
            match producer.send_result(rec) {
                Ok(d) => {
                    window.push_back(d);
                    break;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    rec = back;
                    tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                }
                Err((e, _)) => anyhow::bail!("raw produce: {e}"),
            }
        }
        if window.len() >= inflight {
            let d = window.pop_front().expect("non-empty");
            d.await?
                .map_err(|(e, _)| anyhow::anyhow!("raw produce: {e}"))?;
        }
    }
    for d in window {
        d.await?
            .map_err(|(e, _)| anyhow::anyhow!("raw produce: {e}"))?;
    }
    Ok(records as f64 / started.elapsed().as_secs_f64())
}

/// One `kafka-append` measurement: rates, and CPU seconds (client, broker) of each side.
struct AppendRun {
    callers: usize,
    per_call: usize,
    raw: f64,
    herald: f64,
    raw_cpu: (f64, f64),
    herald_cpu: (f64, f64),
}

async fn kafka_append(records: usize, value_bytes: usize, report: bool) -> anyhow::Result<()> {
    let broker = herald_kafka::testing::start_broker("memory://tansu/")
        .map_err(anyhow::Error::msg)
        .context("starting the tansu broker (tests/kafka/install.sh)")?;
    let config = herald_kafka::KafkaConfig {
        brokers: broker.address.clone(),
        prefix: "bench.".into(),
        user_events_partitions: 8,
        ..Default::default()
    };
    let log = Arc::new(herald_kafka::KafkaLog::open(config.clone()).await?);
    let value = vec![b'x'; value_bytes];
    let headers = event_headers();
    let topic = config.topic_name(Topic::UserEvents);
    let producer: rdkafka::producer::FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &broker.address)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "2")
        .set("compression.type", "lz4")
        .create()?;
    // Warm up both: connections, producer ids, the topic's leaders.
    raw_kafka(&producer, &topic, 2_000, &value, 256, &headers).await?;
    log_rate(&log, 2_000, &value, 20, 100, &headers).await?;
    // CPU seconds of this process (the client: Herald's adapter or raw rdkafka, and librdkafka's
    // threads) and of the broker, per measurement: on this machine the two share 2 cores.
    let me = std::process::id();
    let cpu = || Ok::<_, anyhow::Error>((cpu_seconds(me)?, cpu_seconds(broker.pid)?));
    let mut rows = Vec::new();
    for (inflight, per_call) in [(256usize, 1usize), (64, 100)] {
        let c0 = cpu()?;
        let raw = raw_kafka(
            &producer,
            &topic,
            records,
            &value,
            inflight * per_call,
            &headers,
        )
        .await?;
        let c1 = cpu()?;
        let herald = log_rate(&log, records, &value, inflight, per_call, &headers).await?;
        let c2 = cpu()?;
        rows.push(AppendRun {
            callers: inflight,
            per_call,
            raw,
            herald,
            raw_cpu: (c1.0 - c0.0, c1.1 - c0.1),
            herald_cpu: (c2.0 - c1.0, c2.1 - c1.1),
        });
    }
    let result = json!({
        "scenario": "kafka-append",
        "records": records,
        "value_bytes": value_bytes,
        "runs": rows.iter().map(|r| json!({
            "callers": r.callers, "records_per_call": r.per_call,
            "raw_records_per_s": r.raw.round(), "herald_records_per_s": r.herald.round(),
            "ratio": (r.herald / r.raw * 100.0).round() / 100.0,
            "raw_cpu_seconds": {"client": r.raw_cpu.0, "broker": r.raw_cpu.1},
            "herald_cpu_seconds": {"client": r.herald_cpu.0, "broker": r.herald_cpu.1},
        })).collect::<Vec<_>>(),
    });
    println!("{}", serde_json::to_string_pretty(&result)?);
    let out = PathBuf::from("target/bench");
    std::fs::create_dir_all(&out)?;
    std::fs::write(
        out.join("kafka-append.json"),
        serde_json::to_string_pretty(&result)?,
    )?;
    if report {
        let mut table = format!(
            "Command: `cargo run --release -p herald-bench -- kafka-append --records {records} --report`\n\n\
             | what | raw rdkafka records/s | `KafkaLog::append` records/s | ratio | client CPU s, raw / Herald | broker CPU s, raw / Herald |\n|---|---:|---:|---:|---:|---:|\n"
        );
        for r in &rows {
            table.push_str(&format!(
                "| {} concurrent callers, {} record(s) per call (raw: {} in flight) | {:.0} | {:.0} | {:.2} | {:.2} / {:.2} | {:.2} / {:.2} |\n",
                r.callers,
                r.per_call,
                r.callers * r.per_call,
                r.raw,
                r.herald,
                r.herald / r.raw,
                r.raw_cpu.0,
                r.herald_cpu.0,
                r.raw_cpu.1,
                r.herald_cpu.1,
            ));
        }
        table.push_str(&format!(
            "\n{records} records of {value_bytes} bytes per measurement, on one tansu 0.6 broker (memory \
             storage) started by the benchmark. Both sides use the same producer settings (idempotent, \
             acks=all, lz4, linger 2 ms), send the two headers every Herald record carries (schema \
             and fingerprint), and wait for every delivery report, as a 202 does. Herald's side builds \
             its records (value and headers copied) inside the timed loop, as a caller in \
             production does. Client CPU: this \
             process (the caller, librdkafka's threads); broker CPU: tansu's.\n"
        ));
        replace_section(Path::new("docs/benchmarks.md"), "kafka-append", &table)
            .context("updating docs/benchmarks.md")?;
    }
    Ok(())
}

/// Resident memory of a process, in KiB.
pub(crate) fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .context("no VmRSS")?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .context("VmRSS value")?
        .parse()?)
}

/// CPU time (user + system, all threads) a process has used, in seconds, from
/// `/proc/PID/stat` (in clock ticks of 1/100 s, Linux's USER_HZ).
pub(crate) fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name may hold spaces and parentheses: fields are counted after its last ')'.
    let rest = &stat[stat.rfind(')').context("no ) in stat")? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    let ticks: u64 = fields
        .get(11..13)
        .context("short stat")?
        .iter()
        .map(|f| f.parse::<u64>())
        .sum::<Result<u64, _>>()?;
    Ok(ticks as f64 / 100.0)
}

/// The local port range the kernel picks client ports from (Linux), if it can be read.
pub(crate) fn ephemeral_ports() -> anyhow::Result<Option<(usize, usize)>> {
    let Ok(s) = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range") else {
        return Ok(None);
    };
    parse_port_range(&s).map(Some)
}

/// `ip_local_port_range`'s text: two numbers, low and high.
fn parse_port_range(s: &str) -> anyhow::Result<(usize, usize)> {
    let mut it = s.split_whitespace().map(str::parse::<usize>);
    match (it.next(), it.next(), it.next()) {
        (Some(Ok(low)), Some(Ok(high)), None) if low <= high => Ok((low, high)),
        _ => anyhow::bail!("unexpected ip_local_port_range {s:?}"),
    }
}

/// Kernel memory of TCP sockets, in KiB (from /proc/net/sockstat, pages of 4 KiB).
pub(crate) fn tcp_kernel_kib() -> anyhow::Result<u64> {
    let s = std::fs::read_to_string("/proc/net/sockstat")?;
    let tcp = s
        .lines()
        .find(|l| l.starts_with("TCP:"))
        .context("no TCP line")?;
    let mut it = tcp.split_whitespace();
    while let Some(w) = it.next() {
        if w == "mem" {
            return Ok(it.next().context("mem value")?.parse::<u64>()? * 4);
        }
    }
    anyhow::bail!("no TCP mem in /proc/net/sockstat")
}

/// Replaces the text between `<!-- bench:NAME -->` and `<!-- /bench:NAME -->`.
pub(crate) fn replace_section(doc: &Path, name: &str, body: &str) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(doc)?;
    let (open, close) = (
        format!("<!-- bench:{name} -->"),
        format!("<!-- /bench:{name} -->"),
    );
    let start = text.find(&open).context("section start marker missing")? + open.len();
    let end = text.find(&close).context("section end marker missing")?;
    let new = format!("{}\n{}{}", &text[..start], body, &text[end..]);
    std::fs::write(doc, new)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_port_range;

    #[test]
    fn port_ranges_parse_as_the_kernel_writes_them() {
        assert_eq!(parse_port_range("32768\t60999\n").unwrap(), (32768, 60999));
        assert_eq!(parse_port_range("10240 65535").unwrap(), (10240, 65535));
        for bad in ["", "32768", "60999 32768", "1 2 3", "a b"] {
            assert!(parse_port_range(bad).is_err(), "{bad:?} accepted");
        }
    }
}
