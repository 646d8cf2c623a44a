//! A Herald cluster on Kafka for the multi-process tests: a broker, PostgreSQL for the shared
//! projection, `herald projector` replicas and gateways (`herald dev --projector false` over the
//! same log and projection).

use std::path::Path;
use std::process::{Command, Stdio};

use herald_kafka::testing;

use super::Dev;

pub struct Cluster {
    /// Partitions of the user-events and the requests topic the servers create.
    pub partitions: u32,
    pub request_partitions: u32,
    pub broker: String,
    pub prefix: String,
    pub pg_url: String,
    pub secret: String,
    pub dir: std::path::PathBuf,
}

impl Cluster {
    /// The servers' Kafka flags: where, and the topics they create.
    pub fn kafka_args(&self) -> Vec<String> {
        let mut a = self.kafka_connect_args();
        a.extend([
            "--kafka-partitions".to_owned(),
            self.partitions.to_string(),
            "--kafka-requests-partitions".to_owned(),
            self.request_partitions.to_string(),
        ]);
        a
    }

    /// The read-only tools' Kafka flags: where only.
    pub fn kafka_connect_args(&self) -> Vec<String> {
        let mut a: Vec<String> = [
            "--kafka-brokers",
            &self.broker,
            "--kafka-prefix",
            &self.prefix,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for (k, v) in testing::test_properties() {
            a.push("-X".into());
            a.push(format!("{k}={v}"));
        }
        a
    }

    pub fn projector(&self, name: &str) -> super::Owned {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{name}.log")))
            .unwrap();
        let child = Command::new(super::BIN)
            .arg("projector")
            .args(self.kafka_args())
            // Rejoin soon if the test broker leaves a group without an assignment (it does
            // when members come and go mid-rebalance, more often on a loaded machine).
            .args(["--stall-timeout-ms", "15000"])
            .args(["--projection-url", &self.pg_url])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn herald projector");
        super::Owned::new(child)
    }

    pub async fn gateway(&self, name: &str, port: u16) -> Dev {
        self.gateway_with(name, port, &[]).await
    }

    /// A gateway with more arguments.
    pub async fn gateway_with(&self, name: &str, port: u16, more: &[&str]) -> Dev {
        let mut extra = self.kafka_args();
        extra.extend(
            [
                "--projection-url",
                &self.pg_url,
                "--projector",
                "false",
                "--jwt-secret",
                &self.secret,
            ]
            .iter()
            .map(|s| s.to_string()),
        );
        extra.extend(more.iter().map(|s| s.to_string()));
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        Dev::start_with(&self.dir.join(name), port, &extra).await
    }
}

/// The warnings and errors of every process, for a failing run.
pub fn dump_logs(dir: &Path) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let path = e.path();
        if path.extension().is_some_and(|x| x == "log") {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let lines: Vec<&str> = text
                .lines()
                .filter(|l| l.contains("WARN") || l.contains("ERROR") || l.contains("assigned"))
                .collect();
            eprintln!("== {} ({} lines of note)", path.display(), lines.len());
            for l in lines.iter().rev().take(25).rev() {
                eprintln!("{l}");
            }
        }
    }
}
