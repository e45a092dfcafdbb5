//! ebb's Kafka runtime: the pieces that talk to brokers, kept apart from the CLI.
//!
//! - [`kafka`]: client settings (bootstrap, TLS, SASL, MSK IAM) shared by every command;
//! - [`msk_iam`]: the SigV4-signed OAUTHBEARER token of Amazon MSK's IAM authentication;
//! - [`admin`]: topics and cluster metadata;
//! - [`lag`]: a consumer group's lag per partition, in records and in time;
//! - [`trade`]: the trade record, its generator, its validation and its decoder;
//! - [`producer`]: the rate-controlled trade producer;
//! - [`control`]: the producer's `/rate` endpoint and who may change the rate;
//! - [`consumer`]: the micro-batch consumer runtime, generic over a record
//!   [`Decoder`](consumer::Decoder) and a [`Sink`](consumer::Sink), and the built-in sinks;
//! - [`postgres`]: the trades table, its idempotent batch insert and the reads of audits;
//! - [`audit`]: a topic, its dead letters and the trades table compared, record by record;
//! - [`replay`]: a consumer group's offsets moved to a time or offset, planned then applied;
//! - [`http`]: `/metrics`, `/healthz` and `/readyz` for every server.

#![warn(missing_docs)]

pub mod admin;
pub mod audit;
pub mod consumer;
pub mod control;
pub mod http;
pub mod kafka;
pub mod lag;
pub mod msk_iam;
pub mod postgres;
pub mod producer;
pub mod replay;
pub mod trade;

pub use kafka::KafkaOptions;
