//! Fault injection with real Kafka and real PostgreSQL, the scenarios that leave the
//! servers running: consumers killed, the group churned, malformed records mixed in. Each
//! scenario ends with `ebb audit`: every produced trade in the table exactly once, one
//! account's rows in offset order, committed offsets never ahead of the table, and every
//! malformed record in the dead-letter topic. The scenarios that restart the broker or the
//! database are in `tests/outages.rs`.
//!
//! The consumer-side scenarios run twice: in partition order and in key order
//! (`--ordering key`), where one partition's keys finish out of offset order and a
//! partition commits only up to its lowest record not yet written.

use std::time::{Duration, Instant};

use crate::common::pipeline::*;
use crate::common::*;

#[test]
fn consumers_killed_20_times_lose_and_duplicate_nothing() {
    consumers_killed_20_times(PARTITION_ORDER, "fault-kill");
}

#[test]
fn in_key_order_consumers_killed_20_times_lose_and_duplicate_nothing() {
    consumers_killed_20_times(KEY_ORDER, "fault-kill-keys");
}

fn consumers_killed_20_times(order: &'static [&'static str], prefix: &str) {
    let mut pipeline = Pipeline::start_in(order, prefix, 6, "400");
    for _ in 0..3 {
        pipeline.add_consumer();
    }
    pipeline.progress("the group to commit", 1000);
    for round in 0..20 {
        let victim = pipeline.consumers.remove(round % 3);
        victim.process.signal(libc::SIGKILL);
        let _ = victim.process.finish(Duration::from_secs(10));
        pipeline.add_consumer();
        // Keep the new one in the same slot so the next kill hits the next oldest.
        let replacement = pipeline.consumers.pop().expect("just added");
        pipeline.consumers.insert(round % 3, replacement);
        // The scenario's pace: a kill every 2.5 s, faster than the group settles.
        std::thread::sleep(Duration::from_millis(2500));
    }
    // The contract holds at any moment, not only after a drain.
    pipeline.audit();
    pipeline.drain_and_audit(0);
}

#[test]
fn consumers_joining_and_leaving_every_2_s_for_a_minute_lose_nothing() {
    consumers_joining_and_leaving(PARTITION_ORDER, "fault-churn");
}

#[test]
fn in_key_order_consumers_joining_and_leaving_every_2_s_for_a_minute_lose_nothing() {
    consumers_joining_and_leaving(KEY_ORDER, "fault-churn-keys");
}

fn consumers_joining_and_leaving(order: &'static [&'static str], prefix: &str) {
    let mut pipeline = Pipeline::start_in(order, prefix, 8, "400");
    pipeline.add_consumer();
    pipeline.add_consumer();
    let started = Instant::now();
    let mut step = 0u32;
    while started.elapsed() < Duration::from_secs(60) {
        // The scenario's pace: a member joins or leaves every 2 s.
        std::thread::sleep(Duration::from_secs(2));
        step += 1;
        // Between 1 and 4 consumers: grow on odd steps, shrink on even ones, with a
        // drift up then down.
        let grow = match pipeline.consumers.len() {
            1 => true,
            4 => false,
            _ => !step.is_multiple_of(3),
        };
        if grow {
            pipeline.add_consumer();
        } else {
            let leaving = pipeline.consumers.remove(0);
            leaving.process.signal(libc::SIGTERM);
            let _ = leaving.process.finish(Duration::from_secs(40));
        }
    }
    pipeline.audit();
    pipeline.drain_and_audit(0);
}

#[test]
fn a_thousand_malformed_records_go_to_the_dead_letter_topic_and_the_rest_to_the_table() {
    let mut pipeline = Pipeline::start("fault-malformed", 6, "300");
    pipeline.add_consumer();
    pipeline.add_consumer();
    let bad: Vec<Vec<u8>> = (0..1000)
        .map(|i| match i % 4 {
            0 => format!("not json {i}").into_bytes(),
            1 => format!("{{\"account_id\":\"ACC{i}\"}}").into_bytes(),
            2 => Vec::new(),
            _ => format!("{{\"account_id\":\"ACC1\",\"trade_id\":\"T{i}\",\"symbol\":\"X\",\"trade_type\":\"HOLD\",\"quantity\":1,\"price\":1,\"timestamp\":\"2025-01-01T00:00:00Z\"}}").into_bytes(),
        })
        .collect();
    // Mixed into the live stream in small bursts, keyed and not.
    for (n, chunk) in bad.chunks(50).enumerate() {
        let keys: Vec<String> = (0..chunk.len()).map(|i| format!("BAD{n}-{i}")).collect();
        let records: Vec<RawRecord<'_>> = chunk
            .iter()
            .zip(&keys)
            .enumerate()
            .map(|(i, (value, key))| {
                let key = (i % 2 == 0).then_some(key.as_bytes());
                let value = (!value.is_empty()).then_some(value.as_slice());
                (key, value)
            })
            .collect();
        produce_raw(&kafka(), &pipeline.topic, &records);
        // Bursts spread over 4 s of the live stream.
        std::thread::sleep(Duration::from_millis(200));
    }
    let (topic, _) = pipeline.drain_and_audit(1000);
    let letters = read_topic(
        &kafka(),
        &format!("{topic}.dlq"),
        Duration::from_secs(2),
        Duration::from_secs(60),
    );
    assert!(letters.len() >= 1000, "{} dead letters", letters.len());
}
