//! How long a consumer-group member waits for its partitions on the test broker (tansu), under
//! each group setting Herald could use. A measurement, not a check: it asserts nothing about
//! time and runs only when asked (it takes minutes), with
//!
//! ```text
//! just kafka-startup   # HERALD_KAFKA_STARTUP=1 cargo test -p herald-kafka --test startup -- --nocapture
//! ```
//!
//! and it prints a table (docs/operations.md, "Start-up on Kafka", keeps the last one). Three
//! cases per setting: a fresh group with one member (a gateway's live hub starting), a second
//! member joining a group (a projector replica added), and a member that stops and comes back
//! (a projector restarting).

use std::time::{Duration, Instant};

use herald_kafka::{KafkaConfig, KafkaLog, testing};
use herald_ports::log::{ConsumerEvent, EventLog, LogConsumer, Topic};

/// The longest a member is waited for; past it the case says "none".
const GIVE_UP: Duration = Duration::from_secs(90);

/// Polls `consumer` until it is assigned partitions; `None` if not within [`GIVE_UP`].
async fn assigned(consumer: &mut Box<dyn LogConsumer>) -> Option<(Duration, Vec<u32>)> {
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + GIVE_UP;
    loop {
        let next = tokio::time::timeout_at(deadline, consumer.next(16)).await;
        match next {
            Err(_) => return None,
            Ok(Ok(ConsumerEvent::Assigned(ps))) => return Some((started.elapsed(), ps)),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("consumer failed: {e}"),
        }
    }
}

/// Keeps polling a member in the background (a member that stops polling leaves the group).
fn keep_polling(mut consumer: Box<dyn LogConsumer>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move { while consumer.next(16).await.is_ok() {} })
}

fn show(d: Option<(Duration, Vec<u32>)>) -> String {
    match d {
        Some((d, ps)) => format!("{:.1} s ({} partitions)", d.as_secs_f64(), ps.len()),
        None => format!("none within {} s", GIVE_UP.as_secs()),
    }
}

async fn log(base: &KafkaConfig, extra: &[(&str, String)]) -> KafkaLog {
    let mut config = base.clone();
    for (k, v) in extra {
        config.properties.retain(|(key, _)| key != k);
        config.properties.push(((*k).to_owned(), v.clone()));
    }
    KafkaLog::open(config).await.expect("open the Kafka log")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_join_times_under_each_setting() {
    if std::env::var_os("HERALD_KAFKA_STARTUP").is_none() {
        println!(
            "SKIPPED: the group-join measurement takes minutes; run it with HERALD_KAFKA_STARTUP=1 \
             (just kafka-startup)"
        );
        return;
    }
    let Some(broker) = testing::broker() else {
        return;
    };
    let prefix = format!("s{}.", uuid::Uuid::new_v4().simple());
    let tests = testing::config(broker, &prefix);
    // Herald's group defaults (`GROUP_DEFAULTS`): what `herald projector` and `herald gateway`
    // use unless -X says otherwise.
    let defaults = KafkaConfig {
        properties: Vec::new(),
        ..tests.clone()
    };
    KafkaLog::open(tests.clone())
        .await
        .expect("create the topics");
    // (name, base configuration, static membership, extra properties)
    type Setting = (
        &'static str,
        KafkaConfig,
        bool,
        Vec<(&'static str, &'static str)>,
    );
    let settings: Vec<Setting> = vec![
        (
            "librdkafka's defaults (session.timeout.ms=45000, heartbeat 3000)",
            defaults.clone(),
            false,
            vec![
                ("session.timeout.ms", "45000"),
                ("heartbeat.interval.ms", "3000"),
            ],
        ),
        (
            "Herald's defaults (session.timeout.ms=10000, heartbeat 1000)",
            defaults.clone(),
            false,
            vec![],
        ),
        (
            "session.timeout.ms=6000, heartbeat 500",
            defaults.clone(),
            false,
            vec![
                ("session.timeout.ms", "6000"),
                ("heartbeat.interval.ms", "500"),
            ],
        ),
        ("test properties (testing.rs)", tests.clone(), false, vec![]),
        (
            "test properties + group.instance.id",
            tests.clone(),
            true,
            vec![],
        ),
        (
            "test properties + cooperative-sticky",
            tests.clone(),
            false,
            vec![("partition.assignment.strategy", "cooperative-sticky")],
        ),
    ];
    println!(
        "| setting | fresh group, one member | second member joins (both assigned) | member restarts |"
    );
    println!("|---|---|---|---|");
    for (i, (name, base, static_membership, extra)) in settings.into_iter().enumerate() {
        let member = |n: usize| {
            let mut props: Vec<(&str, String)> =
                extra.iter().map(|(k, v)| (*k, (*v).to_owned())).collect();
            if static_membership {
                props.push(("group.instance.id", format!("{prefix}{i}-m{n}")));
            }
            props
        };
        // 1. A fresh group with one member.
        let a_log = log(&base, &member(1)).await;
        let mut a = a_log
            .consumer(Topic::UserEvents, &format!("fresh{i}"))
            .await
            .unwrap();
        let fresh = assigned(&mut a).await;
        // 2. A second member joins that group: both must be assigned again.
        let b_log = log(&base, &member(2)).await;
        let mut b = b_log
            .consumer(Topic::UserEvents, &format!("fresh{i}"))
            .await
            .unwrap();
        let started = Instant::now();
        let a_again = tokio::spawn(async move {
            let r = assigned(&mut a).await;
            (r, a)
        });
        let b_assigned = assigned(&mut b).await;
        let (a_reassigned, a) = a_again.await.unwrap();
        let second = match (&b_assigned, &a_reassigned) {
            (Some((_, bp)), Some(_)) => Some((started.elapsed(), bp.clone())),
            _ => None,
        };
        let b_poll = keep_polling(b);
        // 3. a stops and comes back (same group; same instance id when static).
        drop(a);
        drop(a_log);
        let a_log = log(&base, &member(1)).await;
        let mut a = a_log
            .consumer(Topic::UserEvents, &format!("fresh{i}"))
            .await
            .unwrap();
        let restart = assigned(&mut a).await;
        b_poll.abort();
        println!(
            "| {name} | {} | {} | {} |",
            show(fresh),
            show(second),
            show(restart)
        );
    }
}
