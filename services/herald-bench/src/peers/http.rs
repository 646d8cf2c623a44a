//! The servers published to over HTTP: Herald's `herald dev` (the current build and, with
//! `--baseline`, an older one: same HTTP API, same client code) and the Node peers in `peers/`
//! (`socketio-server.js`, `ws-server.js`), which take a publish at `POST /publish`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use futures_util::StreamExt;
use serde_json::{Value, json};

use super::{START_TIMEOUT, Target, To};

/// The peers' folder, with its npm packages installed (by `npm ci`, once).
pub fn peers_dir() -> anyhow::Result<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("peers");
    if !dir.join("node_modules/socket.io").is_dir() || !dir.join("node_modules/ws").is_dir() {
        let status = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(&dir)
            .status()
            .context("running npm (Node.js and npm are needed for the peer servers)")?;
        ensure!(status.success(), "npm ci in {} failed", dir.display());
    }
    Ok(dir)
}

/// Starts `herald dev` from `herald` on `port`, its data in `data`, with limits that stay out
/// of the benchmark's way. With `metrics_port`, it also serves `/metrics` there (`--metrics-listen`).
pub(super) fn start_herald(
    herald: &Path,
    port: u16,
    data: &Path,
    metrics_port: Option<u16>,
    extra: &[&str],
) -> anyhow::Result<Child> {
    ensure!(
        herald.exists(),
        "{} missing: cargo build --release -p herald",
        herald.display()
    );
    let mut cmd = Command::new(herald);
    cmd.arg("dev");
    if let Some(m) = metrics_port {
        cmd.args(["--metrics-listen", &format!("127.0.0.1:{m}")]);
    }
    cmd.arg("--data-dir")
        .arg(data)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(["--max-connections", "1000000"])
        .args(["--max-connections-per-user", "64"])
        .args([
            "--producer-rate",
            "100000000",
            "--producer-burst",
            "100000000",
        ])
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(server_log()?)
        .spawn()
        .with_context(|| format!("starting {} dev", herald.display()))
}

/// Where a Herald server's warnings go: appended to `HERALD_BENCH_SERVER_LOG` when it names a
/// file (to look for stalls, restarts and slow batches after a run), else nowhere.
fn server_log() -> anyhow::Result<Stdio> {
    match std::env::var_os("HERALD_BENCH_SERVER_LOG") {
        Some(path) => Ok(std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("opening {}", std::path::Path::new(&path).display()))?
            .into()),
        None => Ok(Stdio::null()),
    }
}

/// Starts a Node peer (`Target::SocketIo` or `Target::Ws`) on `port`.
pub(super) fn start_node(target: Target, port: u16) -> anyhow::Result<Child> {
    let script = if target == Target::Ws {
        "ws-server.js"
    } else {
        "socketio-server.js"
    };
    Command::new("node")
        .arg(peers_dir()?.join(script))
        .arg(port.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting node (Node.js is needed for the peer servers)")
}

/// The HTTP side of a Herald or Node peer server.
pub(super) struct Api {
    target: Target,
    base: String,
    http: reqwest::Client,
}

impl Api {
    /// Waits (up to [`START_TIMEOUT`]) until the server answers `GET /healthz`.
    pub(super) async fn ready(target: Target, port: u16) -> anyhow::Result<Api> {
        let api = Api {
            target,
            base: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(1024)
                .build()?,
        };
        let started = Instant::now();
        while api
            .http
            .get(format!("{}/healthz", api.base))
            .send()
            .await
            .is_err()
        {
            ensure!(
                started.elapsed() < START_TIMEOUT,
                "{} did not start",
                target.name()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(api)
    }

    /// A user token (Herald only; the peers trust the query string).
    pub(super) async fn token(&self, user: &str) -> anyhow::Result<Option<String>> {
        if !self.target.is_herald() {
            return Ok(None);
        }
        let v: Value = self
            .http
            .post(format!("{}/v1/dev/token", self.base))
            .json(&json!({"user_id": user}))
            .send()
            .await?
            .json()
            .await?;
        Ok(Some(v["token"].as_str().context("token")?.to_owned()))
    }

    /// Puts users in groups (Herald's directory; the peers learn groups from the connection).
    pub(super) async fn join(&self, memberships: &[(String, String)]) -> anyhow::Result<()> {
        if !self.target.is_herald() {
            return Ok(());
        }
        futures_util::stream::iter(memberships)
            .map(|(user, group)| async move {
                let r = self
                    .http
                    .put(format!("{}/v1/groups/{group}/members/{user}", self.base))
                    .send()
                    .await?;
                ensure!(r.status().is_success(), "joining {group}: {}", r.status());
                Ok(())
            })
            .buffer_unordered(64)
            .collect::<Vec<anyhow::Result<()>>>()
            .await
            .into_iter()
            .collect()
    }

    /// Publishes one message stamped `t_us` (Herald: a notification request, answered 202
    /// once durable; the peers: an in-memory broadcast).
    pub(super) async fn publish(&self, to: &To, t_us: u64) -> anyhow::Result<()> {
        let (users, groups, everyone) = match to {
            To::User(u) => (vec![u.clone()], vec![], false),
            To::Group(g) => (vec![], vec![g.clone()], false),
            To::Everyone => (vec![], vec![], true),
        };
        let r = if self.target.is_herald() {
            self.http
                .post(format!("{}/v1/notifications", self.base))
                .json(&json!({
                    "recipients": {"users": users, "groups": groups, "everyone": everyone},
                    "event_type": "bench",
                    "source": "bench",
                    "data": {"t": t_us},
                }))
                .send()
                .await?
        } else {
            self.http
                .post(format!("{}/publish", self.base))
                .json(&json!({"users": users, "groups": groups, "everyone": everyone, "message": {"t": t_us}}))
                .send()
                .await?
        };
        ensure!(
            r.status().as_u16() == 202,
            "{} refused a publish: {}",
            self.target.name(),
            r.status()
        );
        Ok(())
    }

    /// Herald only: one batch request of notifications to `users` (one each), stamped `t_us`.
    /// `Ok(false)`: this build has no batch endpoint (an older baseline).
    pub(super) async fn publish_batch(&self, users: &[String], t_us: u64) -> anyhow::Result<bool> {
        ensure!(
            self.target.is_herald(),
            "only Herald takes batches over HTTP"
        );
        let notifications: Vec<Value> = users
            .iter()
            .map(|u| json!({"recipients": {"users": [u]}, "event_type": "bench", "source": "bench", "data": {"t": t_us}}))
            .collect();
        let r = self
            .http
            .post(format!("{}/v1/notifications/batch", self.base))
            .json(&json!({"notifications": notifications}))
            .send()
            .await?;
        if matches!(r.status().as_u16(), 404 | 405) {
            return Ok(false);
        }
        ensure!(r.status().as_u16() == 202, "batch refused: {}", r.status());
        Ok(true)
    }

    /// Herald's unread count for `user` (to know a backlog is in the projection).
    pub(super) async fn unread(&self, token: &str) -> anyhow::Result<u64> {
        let v: Value = self
            .http
            .get(format!("{}/v1/inbox/unread-count", self.base))
            .bearer_auth(token)
            .send()
            .await?
            .json()
            .await?;
        v["unread_count"].as_u64().context("unread count")
    }
}
