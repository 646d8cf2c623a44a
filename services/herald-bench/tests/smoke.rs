//! The benchmark harness works end to end at its smallest size: every scenario runs against
//! Herald, Socket.IO and ws, delivers what it expects, writes its JSON, and the report and
//! plots are generated. This checks the harness, never speed.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The debug `herald`, which `cargo test --workspace` builds for its own tests (built here if
/// missing; rebuild it when running this test alone after changing herald).
fn herald_binary() -> PathBuf {
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/debug/herald");
    if !target.exists() {
        let status = Command::new(env!("CARGO"))
            .args(["build", "-p", "herald"])
            .status()
            .unwrap();
        assert!(status.success(), "building herald");
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
    let run = Command::new(env!("CARGO_BIN_EXE_herald-bench"))
        .args(["suite", "--size", "smoke", "--report", "--herald"])
        .arg(herald_binary())
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
            assert!(targets.contains("Herald"), "{scenario}: {targets:?}");
            assert!(targets.contains("Socket.IO"), "{scenario}: {targets:?}");
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
    assert_eq!(
        ingest["replay_equal"], true,
        "the rebuilt projection equals the live one"
    );
    let report = std::fs::read_to_string(&doc).unwrap();
    assert!(!report.contains("\nold\n"));
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
