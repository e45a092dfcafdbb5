//! The trade producer against a real broker: exact counts, keys, seeds and live rate changes.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ebb_core::KafkaOptions;
use ebb_core::admin::Admin;
use ebb_core::producer::{ProducerMetrics, ProducerSettings, RateControl, TradeProducer};
use ebb_core::trade::Trade;
use ebb_scaling::RateProfile;
use ebb_testkit::{kafka, read_topic, unique, watermarks};
use prometheus_client::registry::Registry;

async fn topic(partitions: i32, config: &[(&str, &str)]) -> (KafkaOptions, String) {
    let options = KafkaOptions::new(kafka());
    let name = unique("producer");
    let config: Vec<_> = config
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Admin::new(&options)
        .unwrap()
        .create_topic(&name, partitions, 1, &config)
        .await
        .unwrap();
    (options, name)
}

fn producer(
    options: &KafkaOptions,
    settings: ProducerSettings,
    profile: &str,
) -> (TradeProducer, Arc<RateControl>) {
    let control = Arc::new(RateControl::new(profile.parse::<RateProfile>().unwrap()));
    let metrics = ProducerMetrics::register(&mut Registry::default());
    (
        TradeProducer::new(options, settings, control.clone(), metrics).unwrap(),
        control,
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn count_sends_exactly_n_valid_trades_and_keys_stay_on_one_partition() {
    let (options, topic) = topic(6, &[]).await;
    let settings = ProducerSettings {
        topic: topic.clone(),
        count: Some(3000),
        ..Default::default()
    };
    let (producer, _) = producer(&options, settings, "20000");
    let report = tokio::task::spawn_blocking(move || producer.run(&AtomicBool::new(false)))
        .await
        .unwrap();
    assert!(report.all_delivered(), "{report:?}");
    assert_eq!(report.sent, 3000);

    let records = read_topic(
        &options.bootstrap_servers,
        &topic,
        Duration::from_secs(2),
        Duration::from_secs(60),
    );
    assert_eq!(
        records.len(),
        3000,
        "exactly the records sent, no more, no less"
    );
    let mut partition_of_key = HashMap::new();
    for r in &records {
        let trade = Trade::parse(r.value.as_deref()).expect("every record is a valid trade");
        let key = String::from_utf8(r.key.clone().expect("keyed")).unwrap();
        assert_eq!(key, trade.account_id, "key is the account id");
        let first = *partition_of_key.entry(key.clone()).or_insert(r.partition);
        assert_eq!(first, r.partition, "account {key} seen in two partitions");
    }
    assert!(
        partition_of_key
            .values()
            .collect::<std::collections::HashSet<_>>()
            .len()
            == 6,
        "keys spread over all partitions"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn same_seed_same_trades() {
    let mut runs = Vec::new();
    for _ in 0..2 {
        let (options, topic) = topic(3, &[]).await;
        let settings = ProducerSettings {
            topic: topic.clone(),
            count: Some(300),
            seed: Some(42),
            ..Default::default()
        };
        let (producer, _) = producer(&options, settings, "10000");
        let report = tokio::task::spawn_blocking(move || producer.run(&AtomicBool::new(false)))
            .await
            .unwrap();
        assert!(report.all_delivered(), "{report:?}");
        let trades: Vec<(i32, String, String, u32)> = read_topic(
            &options.bootstrap_servers,
            &topic,
            Duration::from_secs(2),
            Duration::from_secs(60),
        )
        .iter()
        .map(|r| {
            let t = Trade::parse(r.value.as_deref()).unwrap();
            (r.partition, t.trade_id, t.account_id, t.quantity)
        })
        .collect();
        assert_eq!(trades.len(), 300);
        runs.push(trades);
    }
    assert_eq!(
        runs[0], runs[1],
        "per partition, the same trades in the same order"
    );
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

#[tokio::test(flavor = "multi_thread")]
async fn live_rate_change_applies_within_a_second_as_the_broker_sees_it() {
    // LogAppendTime: the timestamps are the broker's, not the producer's.
    let (options, topic) = topic(4, &[("message.timestamp.type", "LogAppendTime")]).await;
    let settings = ProducerSettings {
        topic: topic.clone(),
        linger: Duration::from_millis(1),
        ..Default::default()
    };
    let (producer, control) = producer(&options, settings, "200");
    let stop = Arc::new(AtomicBool::new(false));
    let run = {
        let stop = stop.clone();
        tokio::task::spawn_blocking(move || producer.run(&stop))
    };
    // A broker that has just started may take a moment to lead the new topic's partitions;
    // what the producer sent meanwhile would land in one burst inside the window before the
    // change. The 3 s before the change start once records land.
    let landing = std::time::Instant::now();
    while watermarks(&options.bootstrap_servers, &topic)
        .iter()
        .all(|&(_, high)| high == 0)
    {
        assert!(
            landing.elapsed() < Duration::from_secs(30),
            "no record landed in {topic} within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let changed_at = now_ms();
    control.set("2000".parse().unwrap());
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let report = run.await.unwrap();
    assert!(report.all_delivered(), "{report:?}");

    let stamps: Vec<i64> = read_topic(
        &options.bootstrap_servers,
        &topic,
        Duration::from_secs(2),
        Duration::from_secs(60),
    )
    .iter()
    .map(|r| r.timestamp_ms.expect("timestamped"))
    .collect();
    let in_window = |from: i64, to: i64| stamps.iter().filter(|&&t| t >= from && t < to).count();
    let before = in_window(changed_at - 2000, changed_at);
    let second_after = in_window(changed_at + 1000, changed_at + 2000);
    assert!(
        (300..=500).contains(&before),
        "200 msg/s before the change, got {before} in 2 s"
    );
    assert!(
        (1700..=2300).contains(&second_after),
        "2000 msg/s from one second after the change on, got {second_after} in [1 s, 2 s)"
    );
}
