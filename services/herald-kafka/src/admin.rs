//! Topics through the admin API: at start-up the missing ones are created (partitions and
//! replication factor from [`KafkaConfig`]); an existing topic keeps its partition count, which
//! the log then reports.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use herald_ports::log::{LogError, Topic};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use crate::KafkaConfig;

/// What start-up learns of the cluster.
pub(crate) struct Cluster {
    /// Partition counts by topic name, for every topic Herald uses.
    pub(crate) counts: HashMap<String, u32>,
    /// The cluster id (empty if the broker does not tell).
    pub(crate) id: String,
}

/// Creates the topics that are missing, then learns every topic's partition count (waiting for
/// new topics to show in the metadata) and the cluster id.
pub(crate) async fn ensure_topics(config: &KafkaConfig) -> Result<Cluster, LogError> {
    let unreachable = |e: &dyn std::fmt::Display| config.unreachable(e);
    let admin: AdminClient<DefaultClientContext> =
        config.client().create().map_err(|e| unreachable(&e))?;
    let wanted = [
        (
            config.topic_name(Topic::Requests),
            config.requests_partitions,
        ),
        (
            config.topic_name(Topic::UserEvents),
            config.user_events_partitions,
        ),
        (config.dead_letter_topic(), config.dead_letter_partitions),
        (config.presence_topic(), 1),
    ];
    let existing = topic_counts(&admin, config.operation_timeout).map_err(|e| unreachable(&e))?;
    if !config.create_topics
        && let Some((name, _)) = wanted
            .iter()
            .take(2)
            .find(|(name, _)| !existing.contains_key(name))
    {
        return Err(LogError::Config(format!(
            "Kafka topic {name} does not exist at {} (is --kafka-prefix {:?} right?); \
             read-only tools do not create topics",
            config.brokers, config.prefix
        )));
    }
    let missing: Vec<NewTopic<'_>> = wanted
        .iter()
        .filter(|_| config.create_topics)
        .filter(|(name, _)| !existing.contains_key(name))
        .map(|(name, n)| {
            let topic = NewTopic::new(
                name,
                *n as i32,
                TopicReplication::Fixed(config.replication_factor),
            );
            if *name == config.presence_topic() {
                topic.set("retention.ms", crate::presence::PRESENCE_RETENTION_MS)
            } else {
                topic
            }
        })
        .collect();
    if !missing.is_empty() {
        let opts = AdminOptions::new().operation_timeout(Some(config.operation_timeout));
        let results = admin
            .create_topics(missing.iter(), &opts)
            .await
            .map_err(|e| unreachable(&e))?;
        for r in results {
            match r {
                Ok(name) => tracing::info!(topic = %name, "created Kafka topic"),
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((name, code)) => {
                    return Err(LogError::Config(format!(
                        "cannot create Kafka topic {name}: {code}"
                    )));
                }
            }
        }
    }
    // Learn the partition counts (waiting for new topics to show in the metadata).
    let deadline = Instant::now() + config.operation_timeout;
    let counts = loop {
        let counts = topic_counts(&admin, config.operation_timeout).map_err(|e| unreachable(&e))?;
        // A read-only open needs the two topics it reads (the dead-letter and presence topics
        // may not exist).
        let required = if config.create_topics { 4 } else { 2 };
        if wanted
            .iter()
            .take(required)
            .all(|(n, _)| counts.contains_key(n))
        {
            break counts;
        }
        if Instant::now() > deadline {
            return Err(LogError::Config(format!(
                "Kafka topics {:?} did not appear in the metadata of {}",
                wanted.iter().map(|w| &w.0).collect::<Vec<_>>(),
                config.brokers
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let id = admin
        .inner()
        .fetch_cluster_id(config.operation_timeout)
        .unwrap_or_default();
    Ok(Cluster { counts, id })
}

/// Partition counts of the topics the cluster's metadata shows.
fn topic_counts(
    admin: &AdminClient<DefaultClientContext>,
    timeout: Duration,
) -> Result<HashMap<String, u32>, KafkaError> {
    let md = admin.inner().fetch_metadata(None, timeout)?;
    Ok(md
        .topics()
        .iter()
        .filter(|t| t.error().is_none() && !t.partitions().is_empty())
        .map(|t| (t.name().to_owned(), t.partitions().len() as u32))
        .collect())
}
