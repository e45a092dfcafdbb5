//! The real tier: the `ebb` binary (and the tools it is deployed with) against a real
//! Kafka, PostgreSQL, kube-apiserver and KEDA operator, one module per subject.
//!
//! One test binary, so its tests run side by side (`RUST_TEST_THREADS`, 4 by default in
//! `.cargo/config.toml`): most of their time is spent waiting on a broker, a database or a
//! child process. Run one subject with `cargo test -p ebb --test real -- faults::`.
//! Tests that stop a server every test here uses are in `tests/outages.rs`; the image build,
//! which takes both cores, in `tests/image.rs`.

#[path = "../common/mod.rs"]
mod common;

mod churn;
mod cli;
mod consume;
mod demo;
mod deploy;
mod faults;
mod keda_fidelity;
mod keda_operator;
mod keda_scaler;
mod key_order;
mod observability;
mod postgres;
mod replay;
mod rotation;
mod scale;
mod secrets;
mod secure;
mod sim;
mod terraform;
