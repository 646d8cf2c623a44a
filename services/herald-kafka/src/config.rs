//! Where and how to reach Kafka: [`KafkaConfig`], its names for topics and groups, and the
//! librdkafka properties every client starts from.

use std::time::Duration;

use herald_ports::log::{LogError, Topic};
use rdkafka::config::ClientConfig;

/// Where and how to reach Kafka.
#[derive(Debug, Clone)]
pub struct KafkaConfig {
    /// `bootstrap.servers`.
    pub brokers: String,
    /// Prefix of topic and consumer-group names.
    pub prefix: String,
    pub requests_partitions: u32,
    pub user_events_partitions: u32,
    pub dead_letter_partitions: u32,
    pub replication_factor: i32,
    /// Extra librdkafka properties for every client (security: `security.protocol`,
    /// `sasl.mechanism`, `ssl.ca.location`, …; tuning: `session.timeout.ms`, …).
    pub properties: Vec<(String, String)>,
    /// Timeout of admin and metadata calls, and of reads.
    pub operation_timeout: Duration,
    /// Whether opening the log creates missing topics. Read-only tools (`herald audit`,
    /// `herald replay`) never do: a missing topic (a mistyped prefix) is an error naming it.
    pub create_topics: bool,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: "127.0.0.1:9092".into(),
            prefix: "herald.".into(),
            requests_partitions: 8,
            user_events_partitions: 16,
            dead_letter_partitions: 1,
            replication_factor: 1,
            properties: Vec::new(),
            operation_timeout: Duration::from_secs(10),
            create_topics: true,
        }
    }
}

impl KafkaConfig {
    pub fn topic_name(&self, topic: Topic) -> String {
        format!("{}{}", self.prefix, topic.name())
    }

    pub fn dead_letter_topic(&self) -> String {
        format!("{}dead-letter", self.prefix)
    }

    /// The presence bus's topic (`PresenceBus`).
    pub fn presence_topic(&self) -> String {
        format!("{}presence", self.prefix)
    }

    pub fn group_name(&self, group: &str) -> String {
        format!("{}{}", self.prefix, group)
    }

    /// The error of a broker that cannot be reached within `operation_timeout`, naming it.
    pub(crate) fn unreachable(&self, e: &dyn std::fmt::Display) -> LogError {
        LogError::Config(format!(
            "cannot reach Kafka at {} within {:?}: {e}",
            self.brokers, self.operation_timeout
        ))
    }

    /// A client configuration with the brokers and the extra properties.
    pub(crate) fn client(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers);
        c.set("client.id", "herald");
        for (k, v) in &self.properties {
            c.set(k, v);
        }
        c
    }
}
