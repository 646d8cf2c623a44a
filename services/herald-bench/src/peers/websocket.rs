//! The WebSocket client for the servers that speak over a WebSocket: Herald's `herald.v1`
//! (current and baseline alike), Socket.IO (Engine.IO v4 framing, by hand) and plain `ws`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use futures_util::{SinkExt, StreamExt};
use herald_core::protocol::{SUBPROTOCOL, ServerFrame};
use serde_json::{Value, json};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use super::Target;

/// Loopback source addresses connections are spread over (127.0.0.1 … 127.0.0.N), so more
/// connections than one address's ephemeral port range can be opened.
pub const SOURCE_ADDRESSES: usize = 4;
/// Herald clients acknowledge up to their latest cursor every this many notifications (half
/// the server's default in-flight window of 256, and few enough frames that a 100k resume stays
/// under Herald's limit of 1,000 client frames a second per connection)…
pub const ACK_EVERY: usize = 128;
/// …or when nothing has arrived for this long.
pub const ACK_IDLE: Duration = Duration::from_millis(5);
/// Instead, Herald clients ACK each notification by id as it arrives, as clients/js does
/// (`suite --ack-each-by-id`).
pub static ACK_EACH_BY_ID: AtomicBool = AtomicBool::new(false);

/// Socket.IO's session, kept to recover it after a reconnect.
#[derive(Debug, Clone, Default)]
pub struct Recovery {
    pub pid: Option<String>,
    pub offset: Option<String>,
}

/// One WebSocket connection of a client, for any of the WebSocket targets.
pub struct WsClient {
    target: Target,
    ws: WebSocketStream<TcpStream>,
    unacked: usize,
    cursor: Option<String>,
    /// The highest seq taken (Herald): a notification at or below it is a redelivery or a
    /// replay overlap, which a Herald client drops (it dedupes by seq and id) and so does this.
    last_seq: Option<u64>,
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

impl WsClient {
    /// Connects client number `i` as `user` (member of `groups`), authenticated and ready to
    /// receive: Herald after `session`, Socket.IO after its namespace CONNECT, ws at once.
    #[allow(clippy::too_many_arguments)]
    pub async fn connect(
        target: Target,
        port: u16,
        i: usize,
        user: &str,
        groups: &[String],
        token: Option<&str>,
        device: &str,
        recover: Option<&Recovery>,
    ) -> anyhow::Result<WsClient> {
        let url = match target {
            Target::Herald | Target::HeraldBefore => format!("ws://127.0.0.1:{port}/v1/ws"),
            Target::SocketIo => format!(
                "ws://127.0.0.1:{port}/socket.io/?EIO=4&transport=websocket&user={user}&groups={}",
                groups.join(",")
            ),
            Target::Ws => format!(
                "ws://127.0.0.1:{port}/ws?user={user}&groups={}",
                groups.join(",")
            ),
            other => bail!("{} has no WebSocket endpoint", other.name()),
        };
        let mut request = url.into_client_request()?;
        if target.is_herald() {
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
        let mut c = WsClient {
            target,
            ws,
            unacked: 0,
            cursor: None,
            last_seq: None,
            recovery: recover.cloned().unwrap_or_default(),
            early: std::collections::VecDeque::new(),
        };
        match target {
            Target::Herald | Target::HeraldBefore => {
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
            _ => {}
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

    /// Acknowledges what was taken so far (a client that stops reading for a while must not
    /// leave its last notifications unacknowledged, or the server resends them).
    pub async fn settle(&mut self) -> anyhow::Result<()> {
        self.flush_acks().await
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
            let msg = if self.target.is_herald() && self.unacked > 0 {
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
                Target::Herald | Target::HeraldBefore => {
                    if let Ok(ServerFrame::Notification {
                        id,
                        data,
                        cursor,
                        seq,
                        ..
                    }) = serde_json::from_str::<ServerFrame>(text)
                    {
                        if self.last_seq.is_some_and(|last| seq <= last) {
                            // Seen: ACK it again (it was resent because our ACK had not
                            // arrived), never count it twice.
                            self.unacked += 1;
                            continue;
                        }
                        self.last_seq = Some(seq);
                        if ACK_EACH_BY_ID.load(Ordering::Relaxed) {
                            let ack = json!({"type": "ack", "ids": [id], "up_to": null});
                            self.ws.send(Message::text(ack.to_string())).await?;
                            return data["t"].as_u64().context("no t in the notification");
                        }
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
                _ => {
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
