//! The benchmark harness works end to end at its smallest size: every scenario runs against
//! Herald, a baseline Herald (the same binary here, to check the `--baseline` path), Socket.IO
//! and ws, delivers what it expects, writes its JSON, and the report and plots are generated.
//! This checks the harness, never speed.

use std::path::{Path, PathBuf};
use std::process::Command;

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
    let run = Command::new(env!("CARGO_BIN_EXE_herald-bench"))
        .args(["suite", "--size", "smoke", "--report", "--herald"])
        .arg(&herald)
        .arg("--baseline")
        .arg(&herald)
        .arg("--out")
        .arg(&out)
        .arg("--doc")
        .arg(&doc)
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    for scenario in ["idle", "fanout", "latency", "resume", "ingest"] {
        let path = out.join(format!("suite-{scenario}.json"));
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(v["scenario"], scenario);
        if scenario != "ingest" {
            let runs = v["runs"].as_array().unwrap();
            let targets: std::collections::BTreeSet<&str> =
                runs.iter().map(|r| r["target"].as_str().unwrap()).collect();
            for t in ["Herald", "Herald (before)", "Socket.IO"] {
                assert!(targets.contains(t), "{scenario}: {targets:?}");
            }
        }
    }
    // Every delivery the fanout expected arrived (the harness waits for each client's count).
    let fanout: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("suite-fanout.json")).unwrap())
            .unwrap();
    for r in fanout["runs"].as_array().unwrap() {
        assert_eq!(r["latency"]["samples"], r["deliveries"], "{r}");
    }
    let ingest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("suite-ingest.json")).unwrap())
            .unwrap();
    let ingest_runs = ingest["runs"].as_array().unwrap();
    assert_eq!(ingest_runs.len(), 2, "{ingest}");
    for r in ingest_runs {
        assert_eq!(
            r["replay_equal"], true,
            "the rebuilt projection equals the live one: {r}"
        );
        assert!(r["accepted_batched_per_s"].as_f64().unwrap() > 0.0, "{r}");
    }
    let report = std::fs::read_to_string(&doc).unwrap();
    assert!(!report.contains("\nold\n"));
    assert!(report.contains("| Herald (before) |"), "{report}");
    for section in [
        "Idle connections",
        "Fanout throughput",
        "End-to-end latency",
        "Resume",
        "Durable ingest",
    ] {
        assert!(
            report.contains(section),
            "{section} missing from the report"
        );
    }
    for plot in ["idle", "fanout", "latency", "resume"] {
        let svg =
            std::fs::read_to_string(tmp.path().join(format!("images/bench-{plot}.svg"))).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("<rect"), "{plot}");
    }
}
