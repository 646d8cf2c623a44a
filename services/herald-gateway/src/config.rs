//! The gateway's knobs: defaults live here and only here (the CLI maps onto this struct), and
//! [`GatewayConfig::validate`] says what is wrong before anything starts. Documented in
//! docs/protocol.md and docs/operations.md.

use std::time::Duration;

use herald_core::delivery::DeliveryConfig;
use herald_core::session::SessionConfig;

use crate::auth::AuthConfig;
use crate::serve::HttpOptions;

/// Frames waiting for a connection's writer.
pub const SEND_QUEUE: usize = 512;
/// How much more than a replay's [`herald_core::session::REPLAY_PAGE_BYTES`] a session's queue
/// must take (`DeliveryConfig::max_queued_bytes`): one row of the largest size, with room.
pub const MIN_QUEUED_BYTES_OVER_REPLAY: usize = 128 * 1024;
/// Room in the send queue kept for marks, errors and pongs: notifications only use the rest, so
/// the server's own bursts (a replay) never overflow the queue.
pub const SEND_RESERVE: usize = 64;

#[derive(Debug, Clone, PartialEq)]
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
    /// Most WebSocket and SSE connections at once.
    pub max_connections: usize,
    /// Most connections of one user at once.
    pub max_connections_per_user: usize,
    /// Most bytes all sessions together hold for their devices
    /// ([`crate::limits::SessionBudget`]): replays wait beyond it.
    pub max_session_bytes: usize,
    /// Client frames per second allowed per connection (sustained), and the burst.
    pub frame_rate: f64,
    pub frame_burst: f64,
    /// Allowed `Origin`s for WebSocket and SSE connections; empty allows any.
    pub allowed_origins: Vec<String>,
    /// Producer name used when producers are open (`herald dev`).
    pub open_producer: String,
    /// Notifications per second each producer may send (sustained), and the burst.
    pub producer_rate: f64,
    pub producer_burst: f64,
    /// Longest an inbox read with `after` waits for the projection to catch up to that cursor.
    pub read_after_wait: Duration,
    /// Audits per second each operator may request (sustained), and the burst.
    pub audit_rate: f64,
    pub audit_burst: f64,
    /// WebSocket tickets each user may mint per second (sustained), and the burst.
    pub ticket_rate: f64,
    pub ticket_burst: f64,
    /// Log records one audit request reads by default, and at most (`max_records`).
    pub audit_records: u64,
    pub audit_max_records: u64,
    /// How often the gateway publishes a whole snapshot of its sessions on the presence bus;
    /// a gateway not heard from for three of these is taken as gone (`presence`).
    pub presence_interval: Duration,
    /// Connection timeouts of the HTTP server.
    pub http: HttpOptions,
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
            max_session_bytes: crate::limits::MAX_SESSION_BYTES,
            frame_rate: 1_000.0,
            frame_burst: 2_000.0,
            allowed_origins: Vec::new(),
            open_producer: "dev".into(),
            producer_rate: 1_000.0,
            producer_burst: 2_000.0,
            read_after_wait: Duration::from_secs(5),
            ticket_rate: 5.0,
            ticket_burst: 20.0,
            audit_rate: 1.0,
            audit_burst: 5.0,
            audit_records: 100_000,
            audit_max_records: 1_000_000,
            presence_interval: Duration::from_secs(5),
            http: HttpOptions::default(),
        }
    }
}

/// A setting out of its range.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{setting}: {problem}")]
pub struct InvalidConfig {
    pub setting: &'static str,
    pub problem: String,
}

fn at_least(setting: &'static str, d: Duration, min: Duration) -> Result<(), InvalidConfig> {
    if d < min {
        return Err(InvalidConfig {
            setting,
            problem: format!(
                "{} ms is below the minimum of {} ms",
                d.as_millis(),
                min.as_millis()
            ),
        });
    }
    Ok(())
}

fn positive(setting: &'static str, v: f64) -> Result<(), InvalidConfig> {
    if !(v.is_finite() && v > 0.0) {
        return Err(InvalidConfig {
            setting,
            problem: format!("{v} must be a positive number"),
        });
    }
    Ok(())
}

/// A token bucket's burst: 1 at least, or no request (of one frame, notification, ticket or
/// audit) could ever pass.
fn burst(setting: &'static str, v: f64) -> Result<(), InvalidConfig> {
    positive(setting, v)?;
    if v < 1.0 {
        return Err(InvalidConfig {
            setting,
            problem: format!("{v} is below 1: no request could ever pass"),
        });
    }
    Ok(())
}

impl GatewayConfig {
    /// Checks every setting; the error names the first bad one.
    pub fn validate(&self) -> Result<(), InvalidConfig> {
        let ms = Duration::from_millis;
        at_least("heartbeat interval", self.heartbeat_interval, ms(100))?;
        at_least("pong timeout", self.pong_timeout, ms(100))?;
        at_least("slow-consumer timeout", self.slow_consumer_timeout, ms(100))?;
        at_least("hello timeout", self.hello_timeout, ms(100))?;
        at_least("read-after wait", self.read_after_wait, Duration::ZERO)?;
        at_least("presence interval", self.presence_interval, ms(100))?;
        at_least(
            "HTTP header timeout",
            self.http.header_read_timeout,
            ms(100),
        )?;
        at_least("HTTP body timeout", self.http.body_read_timeout, ms(100))?;
        positive("frame rate", self.frame_rate)?;
        burst("frame burst", self.frame_burst)?;
        positive("producer rate", self.producer_rate)?;
        burst("producer burst", self.producer_burst)?;
        positive("ticket rate", self.ticket_rate)?;
        burst("ticket burst", self.ticket_burst)?;
        positive("audit rate", self.audit_rate)?;
        burst("audit burst", self.audit_burst)?;
        if self.audit_records == 0 || self.audit_records > self.audit_max_records {
            return Err(InvalidConfig {
                setting: "audit records",
                problem: format!(
                    "{} must be 1..={} (the most one audit may read)",
                    self.audit_records, self.audit_max_records
                ),
            });
        }
        if self.max_connections == 0 {
            return Err(InvalidConfig {
                setting: "max connections",
                problem: "must be at least 1".into(),
            });
        }
        if self.max_connections_per_user == 0 {
            return Err(InvalidConfig {
                setting: "max connections per user",
                problem: "must be at least 1".into(),
            });
        }
        if self
            .auth
            .hs256_secret
            .as_ref()
            .is_some_and(|s| s.is_empty())
        {
            return Err(InvalidConfig {
                setting: "JWT secret",
                problem: "is empty: anyone could sign a token with it".into(),
            });
        }
        if let Some((key, admin)) = self
            .auth
            .admin_keys
            .iter()
            .find(|(key, _)| self.auth.producer_keys.contains_key(*key))
        {
            return Err(InvalidConfig {
                setting: "API keys",
                problem: format!(
                    "one key is both producer {}'s and admin {admin}'s: give each role keys of \
                     its own",
                    self.auth.producer_keys[key]
                ),
            });
        }
        let page = self.session().replay_page_bytes;
        if self.max_session_bytes < page {
            return Err(InvalidConfig {
                setting: "max session bytes",
                problem: format!(
                    "{} is below a replay's page ({page} bytes)",
                    self.max_session_bytes
                ),
            });
        }
        let d = &self.delivery;
        if d.max_in_flight == 0 || d.max_queued == 0 {
            return Err(InvalidConfig {
                setting: "delivery window",
                problem: "max in flight and max queued must be at least 1".into(),
            });
        }
        // A replay queues up to REPLAY_PAGE_BYTES and one row more (of up to about 66 KiB): a
        // smaller queue would end sessions as slow consumers in the middle of a replay.
        let replay = herald_core::session::REPLAY_PAGE_BYTES + MIN_QUEUED_BYTES_OVER_REPLAY;
        if d.max_in_flight_bytes == 0 || d.max_queued_bytes < replay {
            return Err(InvalidConfig {
                setting: "delivery window",
                problem: format!(
                    "max in flight bytes must be at least 1 and max queued bytes at least {replay}"
                ),
            });
        }
        if d.backoff_initial_ms == 0 || d.backoff_max_ms < d.backoff_initial_ms {
            return Err(InvalidConfig {
                setting: "redelivery",
                problem: format!(
                    "the first wait ({} ms) must be at least 1 ms and at most the longest ({} ms)",
                    d.backoff_initial_ms, d.backoff_max_ms
                ),
            });
        }
        Ok(())
    }

    /// The per-session knobs these settings imply.
    pub fn session(&self) -> SessionConfig {
        SessionConfig {
            delivery: self.delivery,
            heartbeat_ms: self.heartbeat_interval.as_millis() as u64,
            send_reserve: SEND_RESERVE,
            slow_consumer_timeout_ms: self.slow_consumer_timeout.as_millis() as i64,
            max_held: crate::hub::SESSION_LIVE_QUEUE * 4,
            ..SessionConfig::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use herald_core::delivery::{MAX_IN_FLIGHT_BYTES, MAX_QUEUED_BYTES};

    use super::*;

    #[test]
    fn the_defaults_are_valid_and_bad_settings_are_named() {
        assert_eq!(GatewayConfig::default().validate(), Ok(()));
        let bad = GatewayConfig {
            heartbeat_interval: Duration::from_millis(5),
            ..Default::default()
        };
        assert_eq!(bad.validate().unwrap_err().setting, "heartbeat interval");
        let bad = GatewayConfig {
            producer_rate: f64::NAN,
            ..Default::default()
        };
        assert_eq!(bad.validate().unwrap_err().setting, "producer rate");
        let bad = GatewayConfig {
            producer_burst: 0.5,
            ..GatewayConfig::default()
        };
        assert_eq!(bad.validate().unwrap_err().setting, "producer burst");
        let bad = GatewayConfig {
            max_connections_per_user: 0,
            ..Default::default()
        };
        assert!(bad.validate().is_err());
        let bad = GatewayConfig {
            max_session_bytes: 1000,
            ..Default::default()
        };
        assert_eq!(bad.validate().unwrap_err().setting, "max session bytes");
        let mut bad = GatewayConfig::default();
        bad.auth.hs256_secret = Some(Vec::new());
        assert_eq!(bad.validate().unwrap_err().setting, "JWT secret");
        let mut bad = GatewayConfig::default();
        bad.auth.producer_keys.insert("k".into(), "svc".into());
        bad.auth.admin_keys.insert("k".into(), "ops".into());
        let err = bad.validate().unwrap_err();
        assert_eq!(err.setting, "API keys");
        assert!(
            err.problem.contains("svc") && err.problem.contains("ops"),
            "{err:?}"
        );
        bad.auth.admin_keys = [("k2".to_owned(), "ops".to_owned())].into();
        assert_eq!(bad.validate(), Ok(()), "keys of their own");
        // A queue that cannot take a replay's page, or a window of no bytes.
        for (in_flight, queued) in [(0, MAX_QUEUED_BYTES), (MAX_IN_FLIGHT_BYTES, 1 << 20)] {
            let bad = GatewayConfig {
                delivery: DeliveryConfig {
                    max_in_flight_bytes: in_flight,
                    max_queued_bytes: queued,
                    ..Default::default()
                },
                ..Default::default()
            };
            assert_eq!(bad.validate().unwrap_err().setting, "delivery window");
        }
    }
}
