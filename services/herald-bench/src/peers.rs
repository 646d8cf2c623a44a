//! The servers under test (Herald, and the Socket.IO and `ws` peers in `peers/`) and one
//! WebSocket client that speaks each one's protocol, all driven from this process on loopback.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use futures_util::{SinkExt, StreamExt};
use herald_core::protocol::{SUBPROTOCOL, ServerFrame};
use serde_json::{Value, json};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

/// Loopback source addresses connections are spread over (127.0.0.1 … 127.0.0.N), so more
/// connections than one address's ephemeral port range can be opened.
pub const SOURCE_ADDRESSES: usize = 4;
/// Herald clients acknowledge up to their latest cursor every this many notifications…
pub const ACK_EVERY: usize = 32;
/// …or when nothing has arrived for this long.
pub const ACK_IDLE: Duration = Duration::from_millis(5);
/// How long a server may take to start.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Target {
    Herald,
    SocketIo,
    Ws,
}

impl Target {
    pub const ALL: [Target; 3] = [Target::Herald, Target::SocketIo, Target::Ws];

    pub fn name(self) -> &'static str {
        match self {
            Target::Herald => "Herald",
            Target::SocketIo => "Socket.IO",
            Target::Ws => "ws",
        }
    }
}

/// Microseconds since this process's first call: the clock stamped into every message.
pub fn now_us() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_micros() as u64
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

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

/// What a publish reaches.
#[derive(Debug, Clone)]
pub enum To {
    User(String),
    Group(String),
    Everyone,
}

pub struct Server {
    pub target: Target,
    child: Child,
    pub port: u16,
    pub data_dir: Option<tempfile::TempDir>,
    http: reqwest::Client,
}

impl Server {
    pub async fn start(target: Target, herald: &Path) -> anyhow::Result<Server> {
        let port = free_port()?;
        let (child, data_dir) = match target {
            Target::Herald => {
                ensure!(
                    herald.exists(),
                    "{} missing: cargo build --release -p herald",
                    herald.display()
                );
                let dir = tempfile::tempdir()?;
                let child = Command::new(herald)
                    .args(["dev", "--data-dir"])
                    .arg(dir.path().join("data"))
                    .args(["--listen", &format!("127.0.0.1:{port}")])
                    .args(["--max-connections", "1000000"])
                    .args(["--max-connections-per-user", "64"])
                    .args([
                        "--producer-rate",
                        "100000000",
                        "--producer-burst",
                        "100000000",
                    ])
                    .env("RUST_LOG", "warn")
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .context("starting herald dev")?;
                (child, Some(dir))
            }
            Target::SocketIo | Target::Ws => {
                let script = if target == Target::Ws {
                    "ws-server.js"
                } else {
                    "socketio-server.js"
                };
                let child = Command::new("node")
                    .arg(peers_dir()?.join(script))
                    .arg(port.to_string())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .context("starting node (Node.js is needed for the peer servers)")?;
                (child, None)
            }
        };
        let server = Server {
            target,
            child,
            port,
            data_dir,
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(1024)
                .build()?,
        };
        let started = Instant::now();
        while server
            .http
            .get(format!("{}/healthz", server.base()))
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
        Ok(server)
    }

    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn data_path(&self) -> Option<PathBuf> {
        self.data_dir.as_ref().map(|d| d.path().join("data"))
    }

    /// A user token (Herald only; the peers trust the query string).
    pub async fn token(&self, user: &str) -> anyhow::Result<Option<String>> {
        if self.target != Target::Herald {
            return Ok(None);
        }
        let v: Value = self
            .http
            .post(format!("{}/v1/dev/token", self.base()))
            .json(&json!({"user_id": user}))
            .send()
            .await?
            .json()
            .await?;
        Ok(Some(v["token"].as_str().context("token")?.to_owned()))
    }

    /// Puts users in groups (Herald's directory; the peers learn groups from the connection).
    pub async fn join(&self, memberships: &[(String, String)]) -> anyhow::Result<()> {
        if self.target != Target::Herald {
            return Ok(());
        }
        futures_util::stream::iter(memberships)
            .map(|(user, group)| async move {
                let r = self
                    .http
                    .put(format!("{}/v1/groups/{group}/members/{user}", self.base()))
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
    pub async fn publish(&self, to: &To, t_us: u64) -> anyhow::Result<()> {
        let (users, groups, everyone) = match to {
            To::User(u) => (vec![u.clone()], vec![], false),
            To::Group(g) => (vec![], vec![g.clone()], false),
            To::Everyone => (vec![], vec![], true),
        };
        let r = match self.target {
            Target::Herald => {
                self.http
                    .post(format!("{}/v1/notifications", self.base()))
                    .json(&json!({
                        "recipients": {"users": users, "groups": groups, "everyone": everyone},
                        "event_type": "bench",
                        "source": "bench",
                        "data": {"t": t_us},
                    }))
                    .send()
                    .await?
            }
            _ => {
                self.http
                    .post(format!("{}/publish", self.base()))
                    .json(&json!({"users": users, "groups": groups, "everyone": everyone, "message": {"t": t_us}}))
                    .send()
                    .await?
            }
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
    pub async fn publish_batch(&self, users: &[String], t_us: u64) -> anyhow::Result<()> {
        let notifications: Vec<Value> = users
            .iter()
            .map(|u| json!({"recipients": {"users": [u]}, "event_type": "bench", "source": "bench", "data": {"t": t_us}}))
            .collect();
        let r = self
            .http
            .post(format!("{}/v1/notifications/batch", self.base()))
            .json(&json!({"notifications": notifications}))
            .send()
            .await?;
        ensure!(r.status().as_u16() == 202, "batch refused: {}", r.status());
        Ok(())
    }

    /// Herald's unread count for `user` (to know a backlog is in the projection).
    pub async fn unread(&self, token: &str) -> anyhow::Result<u64> {
        let v: Value = self
            .http
            .get(format!("{}/v1/inbox/unread-count", self.base()))
            .bearer_auth(token)
            .send()
            .await?
            .json()
            .await?;
        v["unread_count"].as_u64().context("unread count")
    }

    pub fn stop(self) {
        drop(self);
    }
}

impl Drop for Server {
    /// A server never outlives its scenario, even one that failed.
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

/// Socket.IO's session, kept to recover it after a reconnect.
#[derive(Debug, Clone, Default)]
pub struct Recovery {
    pub pid: Option<String>,
    pub offset: Option<String>,
}

pub struct Client {
    target: Target,
    ws: WebSocketStream<TcpStream>,
    unacked: usize,
    cursor: Option<String>,
    pub recovery: Recovery,
    /// Messages that arrived during the handshake (Socket.IO's recovered packets).
    early: std::collections::VecDeque<u64>,
}

/// Opens a TCP connection from loopback source address `i % SOURCE_ADDRESSES`.
async fn tcp_from(i: usize, port: u16) -> anyhow::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    let source = Ipv4Addr::new(127, 0, 0, 1 + (i % SOURCE_ADDRESSES) as u8);
    socket.bind(SocketAddr::new(IpAddr::V4(source), 0))?;
    Ok(socket
        .connect(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port))
        .await?)
}

impl Client {
    /// Connects client number `i` as `user` (member of `groups`), authenticated and ready to
    /// receive: Herald after `session`, Socket.IO after its namespace CONNECT, ws at once.
    pub async fn connect(
        server: &Server,
        i: usize,
        user: &str,
        groups: &[String],
        token: Option<&str>,
        device: &str,
        recover: Option<&Recovery>,
    ) -> anyhow::Result<Client> {
        let port = server.port;
        let url = match server.target {
            Target::Herald => format!("ws://127.0.0.1:{port}/v1/ws"),
            Target::SocketIo => format!(
                "ws://127.0.0.1:{port}/socket.io/?EIO=4&transport=websocket&user={user}&groups={}",
                groups.join(",")
            ),
            Target::Ws => format!(
                "ws://127.0.0.1:{port}/ws?user={user}&groups={}",
                groups.join(",")
            ),
        };
        let mut request = url.into_client_request()?;
        if server.target == Target::Herald {
            let h = request.headers_mut();
            h.insert(
                "sec-websocket-protocol",
                HeaderValue::from_static(SUBPROTOCOL),
            );
            let token = token.context("Herald needs a token")?;
            h.insert(
                "authorization",
                HeaderValue::from_str(&format!("Bearer {token}"))?,
            );
        }
        let (ws, _) = tokio_tungstenite::client_async(request, tcp_from(i, port).await?).await?;
        let mut c = Client {
            target: server.target,
            ws,
            unacked: 0,
            cursor: None,
            recovery: recover.cloned().unwrap_or_default(),
            early: std::collections::VecDeque::new(),
        };
        match server.target {
            Target::Herald => {
                let hello = json!({"type": "hello", "device_id": device, "cursor": null});
                c.ws.send(Message::text(hello.to_string())).await?;
                match c.frame().await? {
                    ServerFrame::Session { .. } => {}
                    other => bail!("expected session, got {other:?}"),
                }
            }
            Target::SocketIo => {
                let open = c.text().await?;
                ensure!(
                    open.starts_with('0'),
                    "expected an Engine.IO open packet: {open}"
                );
                let connect = match recover {
                    Some(Recovery {
                        pid: Some(pid),
                        offset: Some(offset),
                    }) => format!("40{}", json!({"pid": pid, "offset": offset})),
                    _ => "40".to_owned(),
                };
                c.ws.send(Message::text(connect)).await?;
                loop {
                    let t = c.text().await?;
                    if t == "2" {
                        c.ws.send(Message::text("3")).await?;
                    } else if let Some(body) = t.strip_prefix("40") {
                        let v: Value = serde_json::from_str(body)?;
                        if let Some(pid) = v["pid"].as_str() {
                            c.recovery.pid = Some(pid.to_owned());
                        }
                        break;
                    } else if let Some(body) = t.strip_prefix("42") {
                        // A recovered session's missed packets come before the CONNECT answer.
                        let stamp = c.socketio_event(body)?;
                        c.early.push_back(stamp);
                    } else {
                        bail!("unexpected Socket.IO packet: {t}");
                    }
                }
            }
            Target::Ws => {}
        }
        Ok(c)
    }

    async fn text(&mut self) -> anyhow::Result<String> {
        loop {
            match self.ws.next().await {
                Some(Ok(Message::Text(t))) => return Ok(t.as_str().to_owned()),
                Some(Ok(Message::Close(f))) => bail!("closed: {f:?}"),
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(e.into()),
                None => bail!("connection ended"),
            }
        }
    }

    async fn frame(&mut self) -> anyhow::Result<ServerFrame> {
        let t = self.text().await?;
        Ok(serde_json::from_str(&t)?)
    }

    async fn flush_acks(&mut self) -> anyhow::Result<()> {
        if self.unacked > 0
            && let Some(cursor) = &self.cursor
        {
            let ack = json!({"type": "ack", "ids": [], "up_to": cursor});
            self.ws.send(Message::text(ack.to_string())).await?;
            self.unacked = 0;
        }
        Ok(())
    }

    /// The stamp (`t`, µs) of the next delivered message, answering protocol chatter (pings,
    /// Herald ACKs) on the way.
    pub async fn next_message(&mut self) -> anyhow::Result<u64> {
        if let Some(t) = self.early.pop_front() {
            return Ok(t);
        }
        loop {
            let msg = if self.target == Target::Herald && self.unacked > 0 {
                match tokio::time::timeout(ACK_IDLE, self.ws.next()).await {
                    Ok(m) => m,
                    Err(_) => {
                        self.flush_acks().await?;
                        continue;
                    }
                }
            } else {
                self.ws.next().await
            };
            let text = match msg {
                Some(Ok(Message::Text(t))) => t,
                Some(Ok(Message::Close(f))) => bail!("closed: {f:?}"),
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(e.into()),
                None => bail!("connection ended"),
            };
            let text = text.as_str();
            match self.target {
                Target::Herald => {
                    if let Ok(ServerFrame::Notification { data, cursor, .. }) =
                        serde_json::from_str::<ServerFrame>(text)
                    {
                        self.cursor = Some(cursor);
                        self.unacked += 1;
                        if self.unacked >= ACK_EVERY {
                            self.flush_acks().await?;
                        }
                        return data["t"].as_u64().context("no t in the notification");
                    }
                }
                Target::SocketIo => {
                    if text == "2" {
                        self.ws.send(Message::text("3")).await?;
                    } else if let Some(body) = text.strip_prefix("42") {
                        return self.socketio_event(body);
                    }
                }
                Target::Ws => {
                    let v: Value = serde_json::from_str(text)?;
                    return v["t"].as_u64().context("no t in the message");
                }
            }
        }
    }

    /// An EVENT packet's stamp; its last argument is the recovery offset.
    fn socketio_event(&mut self, body: &str) -> anyhow::Result<u64> {
        let v: Value = serde_json::from_str(body)?;
        if let Some(offset) = v.get(2).and_then(Value::as_str) {
            self.recovery.offset = Some(offset.to_owned());
        }
        v[1]["t"].as_u64().context("no t in the event")
    }

    /// Drops the connection without a goodbye (a network loss, as far as the server knows).
    pub fn vanish(self) {
        drop(self.ws);
    }
}
