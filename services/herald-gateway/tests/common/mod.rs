//! The test harness the WebSocket tests share: a real server on a loopback port over the real
//! embedded log and projection, with the real projector.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use herald_client::Credentials;
use herald_embedded::{Access, EmbeddedLog, EmbeddedProjection, LogOptions};
use herald_gateway::{AppState, AuthConfig, GatewayConfig, app};
use herald_projector::Projector;
use jsonwebtoken::{EncodingKey, Header};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

pub const SECRET: &[u8] = b"test-secret";
/// Hang guard for waits: not a timing assertion.
pub const GUARD: Duration = Duration::from_secs(30);

/// An HTTP client whose requests (and response bodies) give up after [`GUARD`]: reqwest has
/// no timeout of its own, and a request the server never answers would hang the test.
pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(GUARD)
        .build()
        .expect("an HTTP client")
}

pub struct Server {
    pub http: String,
    pub ws: String,
    pub shutdown: CancellationToken,
    pub state: AppState,
    pub inbox_stop: Option<CancellationToken>,
    pub projector: Projector<EmbeddedLog, EmbeddedProjection>,
    /// The projection store, with the reads the gateway's port does not offer (the directory).
    pub store: Arc<EmbeddedProjection>,
    pub _dir: tempfile::TempDir,
}

pub fn token(user: &str, ttl_secs: i64) -> String {
    let exp = (herald_gateway::auth::now_secs() as i64 + ttl_secs) as u64;
    jsonwebtoken::encode(
        &Header::default(),
        &json!({"sub": user, "exp": exp}),
        &EncodingKey::from_secret(SECRET),
    )
    .unwrap()
}

pub fn bearer(user: &str) -> Credentials {
    Credentials::Bearer(token(user, 3600))
}

pub fn config() -> GatewayConfig {
    GatewayConfig {
        auth: AuthConfig {
            hs256_secret: Some(SECRET.to_vec()),
            dev_login: true,
            open_producers: true,
            open_operators: true,
            ..Default::default()
        },
        ..Default::default()
    }
}

/// The embedded log and projection in `dir`, and the gateway's ports over them.
pub async fn embedded(
    dir: &std::path::Path,
) -> (
    herald_gateway::Ports,
    Arc<EmbeddedLog>,
    Arc<EmbeddedProjection>,
) {
    let log = Arc::new(
        EmbeddedLog::open(
            &dir.join("log.db"),
            Access::ReadWrite,
            LogOptions::default(),
        )
        .await
        .unwrap(),
    );
    let store = Arc::new(
        EmbeddedProjection::open(&dir.join("projection.db"), Access::ReadWrite)
            .await
            .unwrap(),
    );
    let ports = herald_gateway::Ports {
        log: log.clone(),
        inbox: store.clone(),
        audit: Arc::new(herald_projector::audit::LogAuditor {
            log: log.clone(),
            store: store.clone(),
        }),
        presence: None,
    };
    (ports, log, store)
}

pub async fn server(config: GatewayConfig, inbox_running: bool) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let (ports, log, store) = embedded(dir.path()).await;
    let shutdown = CancellationToken::new();
    let state = AppState::start(ports, config, shutdown.clone())
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let serving = state.clone();
    let http = state.config.http;
    tokio::spawn(herald_gateway::serve(
        listener,
        app(serving),
        http,
        std::future::pending(),
    ));
    let projector = Projector::new(log, store.clone());
    let p = projector.clone();
    let s = shutdown.clone();
    tokio::spawn(async move { p.run_fanout(s).await.unwrap() });
    let mut srv = Server {
        http: format!("http://{addr}"),
        ws: format!("ws://{addr}/v1/ws"),
        shutdown,
        state,
        inbox_stop: None,
        projector,
        store,
        _dir: dir,
    };
    if inbox_running {
        srv.start_inbox();
    }
    srv
}

impl Server {
    /// `GET path` as `user` (a fresh hour-long token), the JSON answer.
    pub async fn get_json(&self, path: &str, user: &str) -> Value {
        http()
            .get(format!("{}{path}", self.http))
            .bearer_auth(token(user, 3600))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    pub fn start_inbox(&mut self) {
        let stop = self.shutdown.child_token();
        let p = self.projector.clone();
        let s = stop.clone();
        tokio::spawn(async move { p.run_inbox(s).await.unwrap() });
        self.inbox_stop = Some(stop);
    }

    pub fn stop_inbox(&mut self) {
        if let Some(s) = self.inbox_stop.take() {
            s.cancel();
        }
    }

    /// Waits (bounded by GUARD) until the projection shows `n` unread for `user`.
    pub async fn wait_unread(&self, user: &str, n: u64) {
        let waited = std::time::Instant::now();
        loop {
            let v = self.get_json("/v1/inbox/unread-count", user).await;
            if v["unread_count"].as_u64() == Some(n) {
                return;
            }
            assert!(waited.elapsed() < GUARD, "projection did not catch up: {v}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A WebSocket ticket minted for `user` (`POST /v1/ws-ticket`).
    pub async fn ticket(&self, user: &str) -> String {
        let resp: Value = http()
            .post(format!("{}/v1/ws-ticket", self.http))
            .bearer_auth(token(user, 3600))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        resp["ticket"].as_str().unwrap().to_owned()
    }

    pub async fn post(&self, users: &[&str], key: &str) -> String {
        let resp: Value = http()
            .post(format!("{}/v1/notifications", self.http))
            .header("idempotency-key", key)
            .json(&json!({"recipients": {"users": users}, "event_type": "t", "source": "ws-test", "data": {"k": key}}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        resp["notification_id"].as_str().unwrap().to_owned()
    }
}
