//! Helpers for the process-level tests: start the real `herald` binary on a free port and a
//! temp data dir, talk to it over HTTP, kill it.
#![allow(dead_code)]

pub mod cluster;
pub mod exactly_once;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_herald");
/// Longest wait for a started process to answer: a hang guard, not a timing assertion.
pub const READY_GUARD: Duration = Duration::from_secs(60);

/// A port nothing listens on now, never handed out before in this test process.
///
/// The kernel picks the port; the tests of one binary run concurrently and start their
/// processes a while after picking, so two picks in a row could get the same port and one
/// process would fail to bind it (while the other's `/healthz` answered for it). Handing each
/// port out once rules that out.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// Runs the binary to completion.
pub fn herald(args: &[&str]) -> Output {
    herald_with_log("warn", args)
}

/// Runs the binary to completion with `RUST_LOG` at `level`.
pub fn herald_with_log(level: &str, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("RUST_LOG", level)
        .output()
        .expect("run herald")
}

/// SIGKILL: no chance to flush or clean up.
pub fn kill9(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// SIGTERM, then wait for the exit status.
pub fn terminate(child: &mut Child) -> std::process::ExitStatus {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("send SIGTERM");
    assert!(status.success());
    child.wait().expect("wait for the herald process")
}

/// The last 30 lines of the log `Dev::start_with` gives the process with `data_dir`.
fn log_tail(data_dir: &Path) -> String {
    let log = std::fs::read_to_string(data_dir.with_extension("log")).unwrap_or_default();
    let tail: Vec<&str> = log.lines().rev().take(30).collect();
    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
}

/// A running `herald dev`.
pub struct Dev {
    pub child: Child,
    pub port: u16,
    pub data_dir: PathBuf,
}

impl Dev {
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Starts `herald dev` and waits until it answers /healthz.
    pub async fn start(data_dir: &Path) -> Dev {
        Dev::start_on(data_dir, free_port()).await
    }

    /// Starts `herald dev` on `port` (a restart keeps its clients' address).
    pub async fn start_on(data_dir: &Path, port: u16) -> Dev {
        Dev::start_with(data_dir, port, &[]).await
    }

    /// Starts `herald dev` on `port` with extra arguments.
    pub async fn start_with(data_dir: &Path, port: u16, extra: &[&str]) -> Dev {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(data_dir.with_extension("log"))
            .unwrap();
        let child = Command::new(BIN)
            .args(["dev", "--data-dir"])
            .arg(data_dir)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(extra)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn herald dev");
        let mut dev = Dev {
            child,
            port,
            data_dir: data_dir.to_owned(),
        };
        let client = reqwest::Client::new();
        let started = Instant::now();
        loop {
            // A process that exited (it could not bind its ports, say) is not ready, whoever
            // else answers on its port.
            if let Ok(Some(status)) = dev.child.try_wait() {
                panic!(
                    "herald dev exited ({status}) before it was ready; its log ends:\n{}",
                    log_tail(data_dir)
                );
            }
            if let Ok(r) = client.get(format!("{}/healthz", dev.url())).send().await
                && r.status().is_success()
            {
                return dev;
            }
            if started.elapsed() > READY_GUARD {
                panic!(
                    "herald dev did not become ready; its log ends:\n{}",
                    log_tail(data_dir)
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// SIGKILL: no chance to flush or clean up.
    pub fn kill9(&mut self) {
        kill9(&mut self.child);
    }

    /// SIGTERM, then wait for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        terminate(&mut self.child)
    }

    /// Waits until the projector has applied everything in the log.
    pub async fn caught_up(&self) {
        let started = Instant::now();
        loop {
            let status: Value = reqwest::get(format!("{}/v1/status", self.url()))
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let lag: u64 = ["fanout", "inbox"]
                .iter()
                .map(|s| status["stages"][s]["lag_records"].as_u64().unwrap())
                .sum();
            if lag == 0 {
                return;
            }
            assert!(
                started.elapsed() < READY_GUARD,
                "projector did not catch up: {status}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// A token for `user` from the dev login.
    pub async fn token(&self, user: &str) -> String {
        let v: Value = reqwest::Client::new()
            .post(format!("{}/v1/dev/token", self.url()))
            .json(&serde_json::json!({"user_id": user}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["token"].as_str().expect("dev token").to_owned()
    }

    /// Every notification id in `user`'s inbox, oldest first, with its seq.
    pub async fn inbox(&self, user: &str) -> (Vec<(String, u64)>, u64) {
        let client = reqwest::Client::new();
        let token = self.token(user).await;
        let mut out = Vec::new();
        let mut before: Option<u64> = None;
        let unread;
        loop {
            let mut url = format!("{}/v1/inbox?limit=1000", self.url());
            if let Some(b) = before {
                url.push_str(&format!("&before={b}"));
            }
            let page: Value = client
                .get(url)
                .bearer_auth(&token)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            for item in page["items"].as_array().unwrap() {
                out.push((
                    item["id"].as_str().unwrap().to_owned(),
                    item["seq"].as_u64().unwrap(),
                ));
            }
            match page["next_before"].as_u64() {
                Some(b) => before = Some(b),
                None => {
                    unread = page["unread_count"].as_u64().unwrap();
                    break;
                }
            }
        }
        out.reverse();
        (out, unread)
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
