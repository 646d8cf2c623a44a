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
