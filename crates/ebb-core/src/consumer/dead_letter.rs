//! The dead-letter topic: records the [`Decoder`](super::decode::Decoder) rejects (for
//! `ebb consume`, records that are not valid trades) go there, unchanged, with headers
//! saying why and where they came from, so the partition can move on.

use std::time::Duration;

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

use super::batch::Record;
use super::sink::SinkError;
use crate::kafka::{AuthContext, KafkaOptions};

/// Header with the reason the record was rejected.
pub const HEADER_ERROR: &str = "ebb.error";
/// Header with the source topic.
pub const HEADER_TOPIC: &str = "ebb.source.topic";
/// Header with the source partition (decimal text).
pub const HEADER_PARTITION: &str = "ebb.source.partition";
/// Header with the source offset (decimal text).
pub const HEADER_OFFSET: &str = "ebb.source.offset";

/// A producer for the dead-letter topic.
pub struct DeadLetters {
    producer: FutureProducer<AuthContext>,
    topic: String,
}

impl DeadLetters {
    /// Creates the producer. Records as large as the broker allows are accepted.
    pub fn new(kafka: &KafkaOptions, topic: String) -> Result<Self, rdkafka::error::KafkaError> {
        let mut config = kafka.client_config();
        config
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("linger.ms", "5")
            .set("message.max.bytes", (16 * 1024 * 1024).to_string());
        for (key, value) in &kafka.extra {
            config.set(key, value);
        }
        Ok(DeadLetters {
            producer: config.create_with_context(AuthContext::new(kafka))?,
            topic,
        })
    }

    /// The dead-letter topic's name.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Sends one record and waits for the broker's acknowledgement.
    pub async fn send(
        &self,
        source_topic: &str,
        partition: i32,
        record: &Record<'_>,
        reason: &str,
    ) -> Result<(), SinkError> {
        let partition_text = partition.to_string();
        let offset_text = record.offset.to_string();
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: HEADER_ERROR,
                value: Some(reason),
            })
            .insert(Header {
                key: HEADER_TOPIC,
                value: Some(source_topic),
            })
            .insert(Header {
                key: HEADER_PARTITION,
                value: Some(&partition_text),
            })
            .insert(Header {
                key: HEADER_OFFSET,
                value: Some(&offset_text),
            });
        let mut out: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&self.topic).headers(headers);
        if let Some(key) = record.key {
            out = out.key(key);
        }
        if let Some(value) = record.value {
            out = out.payload(value);
        }
        if let Some(ts) = record.timestamp_ms {
            out = out.timestamp(ts);
        }
        self.producer
            .send(out, Duration::from_secs(10))
            .await
            .map(|_| ())
            .map_err(|(e, _)| {
                SinkError(format!(
                    "cannot write to dead-letter topic {}: {e}",
                    self.topic
                ))
            })
    }
}
