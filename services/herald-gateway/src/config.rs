//! The gateway's knobs, with defaults documented in docs/protocol.md and docs/operations.md.

use std::time::Duration;

use herald_core::delivery::DeliveryConfig;

use crate::auth::AuthConfig;

#[derive(Debug, Clone)]
pub struct GatewayConfig {
    pub auth: AuthConfig,
    pub delivery: DeliveryConfig,
    /// Server WebSocket ping interval.
    pub heartbeat_interval: Duration,
    /// How long after a missed ping a silent peer is reaped.
    pub pong_timeout: Duration,
    /// How long a connection's send queue may stay full before it is closed as a slow consumer.
    pub slow_consumer_timeout: Duration,
    /// How long a new connection may take to send `hello`.
    pub hello_timeout: Duration,
    /// Most WebSocket connections at once.
    pub max_connections: usize,
    /// Most WebSocket connections of one user at once.
    pub max_connections_per_user: usize,
    /// Client frames per second allowed per connection (sustained), and the burst.
    pub frame_rate: f64,
    pub frame_burst: f64,
    /// Allowed `Origin`s for WebSocket upgrades; empty allows any.
    pub allowed_origins: Vec<String>,
    /// Producer name used when producers are open (`herald dev`).
    pub open_producer: String,
    /// Notifications per second each producer may send (sustained), and the burst.
    pub producer_rate: f64,
    pub producer_burst: f64,
    /// Longest an inbox read with `after` waits for the projection to catch up to that cursor.
    pub read_after_wait: Duration,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            auth: AuthConfig::default(),
            delivery: DeliveryConfig::default(),
            heartbeat_interval: Duration::from_secs(25),
            pong_timeout: Duration::from_secs(10),
            hello_timeout: Duration::from_secs(10),
            slow_consumer_timeout: Duration::from_secs(10),
            max_connections: 100_000,
            max_connections_per_user: 16,
            frame_rate: 1_000.0,
            frame_burst: 2_000.0,
            allowed_origins: Vec::new(),
            open_producer: "dev".into(),
            producer_rate: 1_000.0,
            producer_burst: 2_000.0,
            read_after_wait: Duration::from_secs(5),
        }
    }
}
