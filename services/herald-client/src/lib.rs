//! A Rust client of Herald's WebSocket protocol `herald.v1` (docs/protocol.md).
//!
//! [`Connection`] is one socket: `connect` sends `hello` and waits for `session`; `next` yields
//! server frames (answering pings); `ack`, `read`, `unread`, `archive` send client frames.
//! [`Inbox`] is the client-side state that makes delivery exactly-once *visible*: it dedupes by
//! notification id and keeps the resume cursor (the highest seq processed).
#![forbid(unsafe_code)]

use std::collections::{HashSet, VecDeque};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use herald_core::protocol::{ClientFrame, SUBPROTOCOL, ServerFrame};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Longest wait for the `session` answer to `hello`.
pub const SESSION_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait for the TCP connection and the WebSocket upgrade's answer (a server that
/// accepted the connection and never answered held a caller without a bound).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Ids remembered for deduplication (beyond the cursor); the oldest are forgotten first.
pub const DEDUPE_WINDOW: usize = 100_000;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("HTTP {status} before upgrade: {body}")]
    Refused { status: u16, body: String },
    #[error("WebSocket: {0}")]
    Ws(#[from] WsError),
    #[error("closed by the server: {code} {reason}")]
    Closed { code: u16, reason: String },
    #[error("the connection ended")]
    Ended,
    #[error("protocol: {0}")]
    Protocol(String),
}

/// How to authenticate the upgrade.
#[derive(Debug, Clone)]
pub enum Credentials {
    Bearer(String),
    Ticket(String),
    /// For tests of the refusals: send nothing.
    None,
}

/// The server's answer to `hello`.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionInfo {
    pub session_id: String,
    pub user_id: String,
    pub device_id: String,
    pub epoch: String,
    pub resumed: bool,
    pub reset: bool,
    /// The user's partition: pass it back as `?partition=` when reconnecting through a load
    /// balancer that routes on it (docs/operations.md, "Running a cluster").
    pub partition: u32,
}

pub struct Connection {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

/// Upgrades without sending `hello` (for protocol tests); `url` is `ws://host:port/v1/ws`,
/// optionally with a query (`?partition=3`).
pub async fn open(
    url: &str,
    credentials: &Credentials,
    subprotocol: bool,
) -> Result<Connection, ClientError> {
    let url = match credentials {
        Credentials::Ticket(t) if url.contains('?') => format!("{url}&ticket={t}"),
        Credentials::Ticket(t) => format!("{url}?ticket={t}"),
        _ => url.to_owned(),
    };
    let mut request = url.into_client_request()?;
    if subprotocol {
        request.headers_mut().insert(
            "sec-websocket-protocol",
            HeaderValue::from_static(SUBPROTOCOL),
        );
    }
    if let Credentials::Bearer(token) = credentials {
        let value = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        request.headers_mut().insert("authorization", value);
    }
    upgrade(request, CONNECT_TIMEOUT).await
}

/// Connects and upgrades, waiting at most `within`.
async fn upgrade(
    request: tokio_tungstenite::tungstenite::handshake::client::Request,
    within: Duration,
) -> Result<Connection, ClientError> {
    let upgraded = tokio::time::timeout(within, tokio_tungstenite::connect_async(request))
        .await
        .map_err(|_| {
            ClientError::Protocol(format!("no answer to the upgrade within {within:?}"))
        })?;
    match upgraded {
        Ok((ws, _)) => Ok(Connection { ws }),
        Err(WsError::Http(resp)) => Err(ClientError::Refused {
            status: resp.status().as_u16(),
            body: resp
                .body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default(),
        }),
        Err(e) => Err(e.into()),
    }
}

/// Connects, says hello with `device_id` and `cursor`, and waits for the session frame.
pub async fn connect(
    url: &str,
    credentials: &Credentials,
    device_id: &str,
    cursor: Option<&str>,
) -> Result<(Connection, SessionInfo), ClientError> {
    let mut c = open(url, credentials, true).await?;
    c.send(&ClientFrame::Hello {
        device_id: device_id.to_owned(),
        cursor: cursor.map(str::to_owned),
    })
    .await?;
    let frame = tokio::time::timeout(SESSION_TIMEOUT, c.next())
        .await
        .map_err(|_| ClientError::Protocol("no session frame".into()))??;
    match frame {
        ServerFrame::Session {
            session_id,
            user_id,
            device_id,
            epoch,
            resumed,
            reset,
            partition,
            ..
        } => Ok((
            c,
            SessionInfo {
                session_id,
                user_id,
                device_id,
                epoch,
                resumed,
                reset,
                partition,
            },
        )),
        other => Err(ClientError::Protocol(format!(
            "expected session, got {other:?}"
        ))),
    }
}

impl Connection {
    pub async fn send(&mut self, frame: &ClientFrame) -> Result<(), ClientError> {
        let text = serde_json::to_string(frame).expect("frames serialize");
        self.ws.send(Message::text(text)).await?;
        Ok(())
    }

    /// Sends raw text or bytes (for protocol tests).
    pub async fn send_raw(&mut self, message: Message) -> Result<(), ClientError> {
        self.ws.send(message).await?;
        Ok(())
    }

    /// The next server frame; a close from the server is an error with its code and reason.
    pub async fn next(&mut self) -> Result<ServerFrame, ClientError> {
        loop {
            match self.ws.next().await {
                None => return Err(ClientError::Ended),
                Some(Err(WsError::ConnectionClosed | WsError::AlreadyClosed)) => {
                    return Err(ClientError::Ended);
                }
                Some(Err(e)) => return Err(e.into()),
                Some(Ok(Message::Text(t))) => {
                    return serde_json::from_str(t.as_str())
                        .map_err(|e| ClientError::Protocol(format!("bad server frame: {e}")));
                }
                Some(Ok(Message::Close(Some(CloseFrame { code, reason })))) => {
                    return Err(ClientError::Closed {
                        code: code.into(),
                        reason: reason.to_string(),
                    });
                }
                Some(Ok(Message::Close(None))) => return Err(ClientError::Ended),
                Some(Ok(_)) => continue, // pings are answered by tungstenite
            }
        }
    }

    pub async fn ack(&mut self, ids: &[String], up_to: Option<&str>) -> Result<(), ClientError> {
        self.send(&ClientFrame::Ack {
            ids: ids.to_vec(),
            up_to: up_to.map(str::to_owned),
        })
        .await
    }

    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}

/// One notification as the application sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Notification {
    pub id: String,
    pub seq: u64,
    pub cursor: String,
    pub event_type: String,
    pub data: serde_json::Value,
}

/// Client-side dedupe and cursor: what makes delivery exactly-once visible to the app.
#[derive(Debug, Default, Clone)]
pub struct Inbox {
    seen: HashSet<String>,
    order: VecDeque<String>,
    cursor: Option<(u64, String)>,
    epoch: Option<String>,
}

impl Inbox {
    pub fn new() -> Self {
        Self::default()
    }

    /// The cursor to resume from.
    pub fn cursor(&self) -> Option<&str> {
        self.cursor.as_ref().map(|(_, c)| c.as_str())
    }

    /// Applies the session frame: a reset (other epoch) drops the cursor.
    pub fn on_session(&mut self, info: &SessionInfo) {
        if info.reset || self.epoch.as_deref().is_some_and(|e| e != info.epoch) {
            self.cursor = None;
        }
        self.epoch = Some(info.epoch.clone());
    }

    /// A notification frame: `Some` the first time this id is seen (show it), `None` for a
    /// duplicate. The cursor moves forward either way.
    pub fn on_notification(&mut self, frame: &ServerFrame) -> Option<Notification> {
        let ServerFrame::Notification {
            id,
            seq,
            cursor,
            event_type,
            data,
            ..
        } = frame
        else {
            return None;
        };
        if self.cursor.as_ref().is_none_or(|(s, _)| seq > s) {
            self.cursor = Some((*seq, cursor.clone()));
        }
        if !self.seen.insert(id.clone()) {
            return None;
        }
        self.order.push_back(id.clone());
        if self.order.len() > DEDUPE_WINDOW
            && let Some(old) = self.order.pop_front()
        {
            self.seen.remove(&old);
        }
        Some(Notification {
            id: id.clone(),
            seq: *seq,
            cursor: cursor.clone(),
            event_type: event_type.clone(),
            data: data.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_server_that_never_answers_the_upgrade_is_given_up_on() {
        // Accepts the connection (the kernel does, from the backlog) and never answers.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("ws://{}/v1/ws", listener.local_addr().unwrap());
        let request = url.into_client_request().unwrap();
        let err = upgrade(request, Duration::from_millis(300))
            .await
            .err()
            .expect("no connection without an answer");
        assert!(
            err.to_string().contains("no answer to the upgrade"),
            "{err}"
        );
        drop(listener);
    }
}
