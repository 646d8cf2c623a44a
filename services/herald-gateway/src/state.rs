//! The state every handler and session shares.

use std::sync::Arc;

use herald_core::model::UserEvent;
use herald_core::session::SessionConfig;
use herald_ports::log::{EventLog, Record, Topic};
use herald_ports::projection::InboxReader;
use herald_ports::readiness::{READY_MAX_LAG_RECORDS, Report};
use herald_ports::records::user_event_record;
use herald_ports::{Auditor, LogError};
use tokio_util::sync::CancellationToken;

use crate::auth::{Auth, KeyError};
use crate::clock::now_ms;
use crate::config::{GatewayConfig, InvalidConfig};
use crate::hub::Hub;
use crate::limits::{ConnectionLimits, RateLimits, SessionBudget};

/// What the gateway runs on: the log it appends to and tails, a read-only view of the
/// projection, and the audit port.
#[derive(Clone)]
pub struct Ports {
    pub log: Arc<dyn EventLog>,
    pub inbox: Arc<dyn InboxReader>,
    pub audit: Arc<dyn Auditor>,
    /// How gateways share presence (Kafka); `None` for a single-process deployment.
    pub presence: Option<Arc<dyn herald_ports::PresenceBus>>,
}

/// Why the gateway could not start. Each names its cause as its `source`, not in its message
/// as well: a chain printed whole (`{:#}`) said each cause twice.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("invalid configuration")]
    Config(#[from] InvalidConfig),
    #[error("loading token keys")]
    Keys(#[from] KeyError),
    #[error("starting the live hub")]
    Hub(#[from] LogError),
}

/// Shared state of the HTTP and WebSocket app: one allocation that every request and session
/// holds by pointer (a clone is one reference count, and a session's handle is 8 bytes, not a
/// copy of every field).
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// Changing a field (done while wiring the app, before it serves) changes this handle's state
/// only: a state already shared is copied first.
impl std::ops::DerefMut for AppState {
    fn deref_mut(&mut self) -> &mut Shared {
        Arc::make_mut(&mut self.0)
    }
}

/// The fields of [`AppState`].
#[derive(Clone)]
pub struct Shared {
    pub log: Arc<dyn EventLog>,
    /// Read-only: the gateway never writes the projection.
    pub inbox: Arc<dyn InboxReader>,
    pub audit: Arc<dyn Auditor>,
    /// Renders the Prometheus exposition, when a recorder is installed.
    pub metrics: Option<Arc<dyn Fn() -> String + Send + Sync>>,
    /// The readiness of a projector running in this process (`herald dev`), part of `/readyz`.
    pub projector_readiness: Option<Arc<dyn Fn() -> Report + Send + Sync>>,
    pub auth: Arc<Auth>,
    pub hub: Arc<Hub>,
    /// The cluster's presence as this gateway sees it.
    pub presence: Arc<crate::presence::ClusterPresence>,
    pub config: Arc<GatewayConfig>,
    pub session: Arc<SessionConfig>,
    /// Notifications per producer.
    pub producers: Arc<RateLimits>,
    /// Audits per operator (each may read many log records).
    pub audits: Arc<RateLimits>,
    /// WebSocket tickets minted per user.
    pub tickets: Arc<RateLimits>,
    pub connections: Arc<ConnectionLimits>,
    /// What all sessions hold for their devices, against `max_session_bytes`.
    pub session_bytes: Arc<SessionBudget>,
    /// What sessions record their sends and ACKs with (registered when the state is built).
    pub meters: herald_ports::telemetry::DeliveryMeters,
    /// Users this gateway has announced as connected (bounded; see `announce`).
    pub announced: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
    /// Cancelled on shutdown: sessions close with 1001 going away.
    pub shutdown: CancellationToken,
}

/// How long `/readyz` waits for the log and the projection store to answer.
pub const READY_CHECK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Users a gateway remembers having announced; past this, it forgets them all and announces
/// again as they connect (an extra `DeviceConnected` costs one small record).
pub const MAX_ANNOUNCED_USERS: usize = 100_000;

impl AppState {
    /// Checks the configuration, builds the state and starts the live hub (which tails the log
    /// until `shutdown`).
    pub async fn start(
        ports: Ports,
        config: GatewayConfig,
        shutdown: CancellationToken,
    ) -> Result<AppState, StartError> {
        config.validate()?;
        let auth = Auth::new(&config.auth)?;
        let hub = Hub::start(ports.log.clone(), shutdown.clone()).await?;
        let presence = Arc::new(crate::presence::ClusterPresence::new(
            ports.presence,
            config.presence_interval,
        ));
        presence.start(hub.clone(), shutdown.clone()).await?;
        let session_bytes = Arc::new(SessionBudget::new(config.max_session_bytes));
        tokio::spawn({
            let (budget, shutdown) = (session_bytes.clone(), shutdown.clone());
            async move {
                let mut every = tokio::time::interval(std::time::Duration::from_secs(1));
                loop {
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        _ = every.tick() => herald_ports::telemetry::session_bytes(budget.used()),
                    }
                }
            }
        });
        Ok(AppState(Arc::new(Shared {
            log: ports.log,
            inbox: ports.inbox,
            audit: ports.audit,
            metrics: None,
            projector_readiness: None,
            auth: Arc::new(auth),
            hub,
            presence,
            session: Arc::new(config.session()),
            producers: Arc::new(RateLimits::new(config.producer_rate, config.producer_burst)),
            audits: Arc::new(RateLimits::new(config.audit_rate, config.audit_burst)),
            tickets: Arc::new(RateLimits::new(config.ticket_rate, config.ticket_burst)),
            connections: ConnectionLimits::new(
                config.max_connections,
                config.max_connections_per_user,
            ),
            session_bytes,
            config: Arc::new(config),
            meters: herald_ports::telemetry::DeliveryMeters::register(),
            announced: Default::default(),
            shutdown,
        })))
    }

    /// Whether this gateway is ready to serve (`GET /readyz`): the live hub's tail is open and
    /// at most [`READY_MAX_LAG_RECORDS`] behind the log, the projection store answers
    /// (within [`READY_CHECK_TIMEOUT`]), and an in-process projector, if any, is ready.
    pub async fn readiness(&self) -> Report {
        let mut report = Report::new(Vec::new());
        match self.hub.tail_status() {
            Err(why) => report.push("hub", false, format!("the log tail is not open: {why}")),
            Ok(()) => {
                let followed = self.hub.followed();
                let ends = tokio::time::timeout(READY_CHECK_TIMEOUT, async {
                    let mut ends = Vec::with_capacity(followed.len());
                    for (p, _) in &followed {
                        ends.push(self.log.end_offset(Topic::UserEvents, *p).await?);
                    }
                    Ok::<_, LogError>(ends)
                })
                .await;
                match ends {
                    Ok(Ok(ends)) => {
                        let lag: u64 = ends
                            .iter()
                            .zip(&followed)
                            .map(|(end, (_, at))| end.saturating_sub(*at))
                            .sum();
                        report.push(
                            "hub",
                            lag <= READY_MAX_LAG_RECORDS,
                            format!(
                                "following {} of {} partitions; {lag} records behind (ready at \
                                 {READY_MAX_LAG_RECORDS} or fewer)",
                                followed.len(),
                                self.log.partitions(Topic::UserEvents),
                            ),
                        );
                    }
                    Ok(Err(e)) => report.push("hub", false, format!("reading the log: {e}")),
                    Err(_) => report.push(
                        "hub",
                        false,
                        format!("the log did not answer within {READY_CHECK_TIMEOUT:?}"),
                    ),
                }
            }
        }
        let answered = tokio::time::timeout(
            READY_CHECK_TIMEOUT,
            self.inbox.consumer_offsets(herald_ports::Stage::Inbox),
        )
        .await;
        match answered {
            Ok(Ok(_)) => report.push("projection", true, "answers"),
            Ok(Err(e)) => report.push("projection", false, e.to_string()),
            Err(_) => report.push(
                "projection",
                false,
                format!("no answer within {READY_CHECK_TIMEOUT:?}"),
            ),
        }
        if let Some(projector) = &self.projector_readiness {
            for c in projector().checks {
                report.push(format!("projector.{}", c.name), c.ok, c.detail);
            }
        }
        report
    }

    /// A device of `user` opened a session: the first time this gateway sees the user, it
    /// appends a `DeviceConnected`, which makes the user part of `everyone` in the directory.
    pub fn announce(&self, user: &str, device: &str) {
        {
            let mut seen = self.announced.lock().expect("announced lock");
            if seen.contains(user) {
                return;
            }
            if seen.len() >= MAX_ANNOUNCED_USERS {
                seen.clear();
            }
            seen.insert(user.to_owned());
        }
        let event = UserEvent::Connected(herald_core::model::DeviceConnected {
            user_id: user.to_owned(),
            device_id: device.to_owned(),
            at: now_ms(),
        });
        let record = match self.user_event_record(&event) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "cannot encode a connection event");
                return;
            }
        };
        let (log, announced, user) = (self.log.clone(), self.announced.clone(), user.to_owned());
        tokio::spawn(async move {
            if let Err(e) = log.append(Topic::UserEvents, vec![record]).await {
                tracing::warn!(error = %e, "appending a connection event failed");
                announced.lock().expect("announced lock").remove(&user);
            }
        });
    }

    /// The record of a user event (key = user id, the user's partition).
    pub fn user_event_record(&self, ev: &UserEvent) -> Result<Record, herald_core::CoreError> {
        user_event_record(ev, self.log.partitions(Topic::UserEvents), now_ms())
    }
}
