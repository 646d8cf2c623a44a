//! The timer lease with two projector replicas over one store (embedded SQLite files in a temp
//! dir): one holds the lease and scans; when it is killed (its task dropped, so it never lets
//! the lease go), the other takes the lease over once it expires and expands what comes due.

use std::sync::Arc;
use std::time::Duration;

use herald_core::ids::notification_id;
use herald_core::model::*;
use herald_embedded::{Access, EmbeddedLog, EmbeddedProjection, LogOptions};
use herald_ports::log::{EventLog, Topic};
use herald_ports::prelude::*;
use herald_ports::projection::TIMER_LEASE;
use herald_ports::records::request_record;
use herald_projector::Projector;
use tokio_util::sync::CancellationToken;

/// Short, so the test runs in seconds; every wait below is generous and none is asserted.
const TTL: Duration = Duration::from_millis(1500);
const WAIT: Duration = Duration::from_secs(60);

type P = Projector<EmbeddedLog, EmbeddedProjection>;

async fn until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn scheduled(key: &str, deliver_at: i64) -> RequestRecord {
    RequestRecord::Notification(Box::new(NotificationRequest {
        notification_id: notification_id("p", key),
        idempotency_key: key.into(),
        producer: "p".into(),
        recipients: Recipients {
            users: vec!["olga".into()],
            ..Default::default()
        },
        event_type: "e".into(),
        source: "tests".into(),
        payload: "{}".into(),
        collapse_key: None,
        deliver_at: Some(deliver_at),
        expires_at: None,
        created_at: 1,
        traceparent: None,
        priority: Priority::Normal,
    }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_timer_lease_holder_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(
        EmbeddedLog::open(
            &dir.path().join("log.db"),
            Access::ReadWrite,
            LogOptions::default(),
        )
        .await
        .unwrap(),
    );
    let store = Arc::new(
        EmbeddedProjection::open(&dir.path().join("projection.db"), Access::ReadWrite)
            .await
            .unwrap(),
    );
    // Fanout and inbox run in a third projector that lives throughout.
    let stop = CancellationToken::new();
    let stages: P = Projector::new(log.clone(), store.clone());
    let (s1, s2) = (stages.clone(), stages.clone());
    let (t1, t2) = (stop.clone(), stop.clone());
    tokio::spawn(async move { s1.run_fanout(t1).await.unwrap() });
    tokio::spawn(async move { s2.run_inbox(t2).await.unwrap() });

    let a: P = Projector::new(log.clone(), store.clone()).with_timer_lease_ttl(TTL);
    let b: P = Projector::new(log.clone(), store.clone()).with_timer_lease_ttl(TTL);
    assert_ne!(a.instance_id(), b.instance_id());
    let (a_id, b_id) = (a.instance_id().to_owned(), b.instance_id().to_owned());
    let a_task = {
        let (a, t) = (a.clone(), stop.clone());
        tokio::spawn(async move { a.run_timers(t).await.unwrap() })
    };
    until("a never took the free lease", || async {
        store
            .lease(TIMER_LEASE)
            .await
            .unwrap()
            .is_some_and(|l| l.holder == a_id)
    })
    .await;
    let b_task = {
        let (b, t) = (b.clone(), stop.clone());
        tokio::spawn(async move { b.run_timers(t).await.unwrap() })
    };
    // b tried, and was told a holds it.
    until("b never saw a holding the lease", || async {
        let r = b.readiness();
        r.checks
            .iter()
            .any(|c| c.name == "timers" && c.detail.contains(&a_id))
    })
    .await;
    assert_eq!(
        store.lease(TIMER_LEASE).await.unwrap().unwrap().holder,
        a_id
    );
    assert!(
        a.readiness()
            .checks
            .iter()
            .any(|c| c.name == "timers" && c.detail.contains("this replica holds")),
        "{:?}",
        a.readiness()
    );

    // Kill a: its task is dropped mid-loop, so it never releases the lease.
    a_task.abort();
    assert!(a_task.await.unwrap_err().is_cancelled());
    let expired_after = store
        .lease(TIMER_LEASE)
        .await
        .unwrap()
        .unwrap()
        .expires_at_ms;

    // Something comes due now: only a lease holder expands it, and only b is left.
    let due = scheduled("after-the-kill", herald_projector::now_ms());
    let id = match &due {
        RequestRecord::Notification(n) => n.notification_id.clone(),
        _ => unreachable!(),
    };
    let partitions = log.partitions(Topic::Requests);
    log.append(
        Topic::Requests,
        vec![request_record(&due, partitions, 1).unwrap()],
    )
    .await
    .unwrap();
    until("b never took over the lease", || async {
        store
            .lease(TIMER_LEASE)
            .await
            .unwrap()
            .is_some_and(|l| l.holder == b_id)
    })
    .await;
    let taken = store.lease(TIMER_LEASE).await.unwrap().unwrap();
    // Every take or renewal sets the expiry to its own time plus the TTL: b's first was not
    // before a's lease ran out.
    assert!(
        taken.expires_at_ms - TTL.as_millis() as i64 >= expired_after,
        "b took it only once a's expired: {taken:?}, a's ran to {expired_after}"
    );
    until(
        "the scheduled notification was never expanded by b",
        || async { store.row("olga", &id).await.unwrap().is_some() },
    )
    .await;

    // A graceful stop lets the lease go at once.
    stop.cancel();
    b_task.await.unwrap();
    let released = store.lease(TIMER_LEASE).await.unwrap().unwrap();
    assert_eq!(released.holder, b_id);
    assert!(
        released.expires_at_ms <= herald_projector::now_ms(),
        "{released:?}"
    );
}
