//! Appends: one idempotent producer with `acks=all`; an append returns after every record's
//! delivery report, so a 202 means the brokers have the record.

use std::time::Duration;

use herald_ports::log::{Appended, LogError, MAX_RECORD_BYTES, Record};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::{KafkaConfig, KafkaLog};

/// How long an append waits for librdkafka's queue to have room before it tries again.
const QUEUE_FULL_BACKOFF: Duration = Duration::from_millis(5);

/// The producer every append and dead letter goes through.
pub(crate) fn producer(config: &KafkaConfig) -> Result<FutureProducer, LogError> {
    config
        .client()
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "2")
        .set("compression.type", "lz4")
        .set(
            "message.max.bytes",
            (MAX_RECORD_BYTES + 64 * 1024).to_string(),
        )
        .create()
        .map_err(|e| config.unreachable(&e))
}

impl KafkaLog {
    /// Produces records to a named topic, in order, and waits for every delivery report.
    pub(crate) async fn produce(
        &self,
        topic: &str,
        records: Vec<Record>,
    ) -> Result<Vec<Appended>, LogError> {
        let mut pending = Vec::with_capacity(records.len());
        for r in &records {
            let mut fr = FutureRecord::to(topic)
                .partition(r.partition as i32)
                .key(r.key.as_bytes())
                .payload(&r.value)
                .timestamp(r.timestamp_ms);
            // librdkafka allocates a header list (with the C allocator) even when it is empty.
            if !r.headers.is_empty() {
                let mut headers = OwnedHeaders::new_with_capacity(r.headers.len());
                for (k, v) in &r.headers {
                    headers = headers.insert(Header {
                        key: k,
                        value: Some(v),
                    });
                }
                fr = fr.headers(headers);
            }
            // Enqueue in order; a full local queue (bounded by librdkafka's
            // queue.buffering.max.*) makes this wait, never reorder.
            loop {
                match self.producer.send_result(fr) {
                    Ok(delivery) => {
                        pending.push(delivery);
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        fr = back;
                        tokio::time::sleep(QUEUE_FULL_BACKOFF).await;
                    }
                    Err((e, _)) => return Err(produce_error(e)),
                }
            }
        }
        let mut out = Vec::with_capacity(pending.len());
        for d in pending {
            match d.await {
                Ok(Ok(delivery)) => out.push(Appended {
                    partition: delivery.partition as u32,
                    offset: delivery.offset as u64,
                }),
                Ok(Err((e, _))) => return Err(produce_error(e)),
                Err(_) => return Err(LogError::Closed),
            }
        }
        Ok(out)
    }
}

fn produce_error(e: KafkaError) -> LogError {
    match e.rdkafka_error_code() {
        Some(RDKafkaErrorCode::MessageSizeTooLarge) => LogError::RecordTooLarge {
            size: 0,
            max: MAX_RECORD_BYTES,
        },
        _ => LogError::Storage(format!("Kafka produce: {e}")),
    }
}
