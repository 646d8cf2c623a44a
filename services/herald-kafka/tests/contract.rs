//! The Kafka log runs the shared log contract against a real Kafka-protocol broker (tansu, started
//! by the test on a free port). Each test has topics and groups of its own.

use async_trait::async_trait;
use herald_kafka::KafkaLog;
use herald_kafka::testing;
use herald_ports::contract::log::LogHarness;

struct Topics(String);

#[async_trait]
impl LogHarness for Topics {
    type Log = KafkaLog;
    async fn open(&self) -> KafkaLog {
        let broker = testing::broker().expect("checked before");
        KafkaLog::open(testing::config(broker, &self.0))
            .await
            .expect("open the Kafka log")
    }
}

fn harness() -> Option<Topics> {
    testing::broker()?;
    Some(Topics(format!("c{}.", uuid::Uuid::new_v4().simple())))
}

mod log {
    use super::*;
    herald_ports::log_contract_tests!(match harness() {
        Some(h) => h,
        None => return,
    });
}

/// Read-only tools open the log without creating topics: a mistyped prefix is an error naming
/// the missing topic, and it stays missing.
#[tokio::test]
async fn a_read_only_open_creates_no_topic_and_names_the_missing_one() {
    let Some(broker) = testing::broker() else {
        return;
    };
    let prefix = format!("typo{}.", uuid::Uuid::new_v4().simple());
    let read_only = herald_kafka::KafkaConfig {
        create_topics: false,
        ..testing::config(broker, &prefix)
    };
    for _ in 0..2 {
        let err = KafkaLog::open(read_only.clone())
            .await
            .err()
            .expect("no topics: the open fails")
            .to_string();
        assert!(
            err.contains(&format!("{prefix}requests")) && err.contains("does not exist"),
            "{err}"
        );
    }
    // A writer's open creates them; then the read-only open works.
    KafkaLog::open(testing::config(broker, &prefix))
        .await
        .unwrap();
    KafkaLog::open(read_only).await.unwrap();
}

/// The presence bus: every reader gets every gateway's records published after it started
/// reading, each gateway's in the order published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_presence_bus_carries_every_gateways_records_in_order() {
    use herald_ports::presence::{MAX_PRESENCE_RECORD_BYTES, PresenceBus};
    use std::time::Duration;
    let Some(h) = harness() else {
        return;
    };
    let (a, b) = (h.open().await, h.open().await);
    let mut feeds = vec![a.feed().await.unwrap(), b.feed().await.unwrap()];
    for i in 0..5 {
        a.publish("a", format!("a{i}").into_bytes()).await.unwrap();
        b.publish("b", format!("b{i}").into_bytes()).await.unwrap();
    }
    assert!(
        a.publish("a", vec![0; MAX_PRESENCE_RECORD_BYTES + 1])
            .await
            .is_err()
    );
    for feed in &mut feeds {
        let mut got = Vec::new();
        while got.len() < 10 {
            let batch = tokio::time::timeout(Duration::from_secs(30), feed.next())
                .await
                .expect("presence records within 30 s")
                .unwrap();
            got.extend(batch.into_iter().map(|v| String::from_utf8(v).unwrap()));
        }
        for g in ["a", "b"] {
            let mine: Vec<&String> = got.iter().filter(|v| v.starts_with(g)).collect();
            let want: Vec<String> = (0..5).map(|i| format!("{g}{i}")).collect();
            assert_eq!(mine, want.iter().collect::<Vec<_>>());
        }
    }
}
