//! The trade producer: sends generated trades at a rate that follows a [`RateProfile`],
//! scheduled on absolute time so it never drifts, changeable while it runs.
//!
//! Data flow: a pacing thread asks the profile how many messages are due by now, hands
//! that many records to librdkafka, and sleeps until the next one is due. librdkafka's
//! own thread delivers them and reports each delivery to [`DeliveryCounter`], which
//! feeds the totals and the metrics. A [`RateControl`] lets the HTTP endpoint or SIGHUP
//! swap the profile; the pacing thread picks it up within a few milliseconds.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ebb_scaling::RateProfile;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use rdkafka::ClientContext;
use rdkafka::client::OAuthToken;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};

use crate::kafka::{AuthContext, KafkaOptions};
use crate::trade::TradeGenerator;

/// Everything `ebb produce` can be told, one field per option.
#[derive(Debug, Clone)]
pub struct ProducerSettings {
    /// Topic to send to.
    pub topic: String,
    /// `compression.type`: none, gzip, snappy, lz4 or zstd.
    pub compression: String,
    /// `linger.ms`: how long librdkafka waits to fill a batch.
    pub linger: Duration,
    /// `batch.size`: the most bytes in one batch to a partition.
    pub batch_size: usize,
    /// `acks`: all, 1 or 0. The idempotent producer is on when this is `all`.
    pub acks: String,
    /// Send exactly this many records, then exit.
    pub count: Option<u64>,
    /// Seed for the trade generator (same trades every run).
    pub seed: Option<u64>,
    /// Ignore the profile and send as fast as the broker takes them.
    pub max_speed: bool,
    /// After a stall, catch up on at most this much time's worth of messages; the rest of
    /// the backlog is skipped so a pause does not turn into a burst.
    pub catch_up: Duration,
    /// How long to wait for outstanding deliveries when stopping.
    pub flush_timeout: Duration,
    /// How often to log the `Sent: ...` progress line.
    pub report_interval: Duration,
}

impl Default for ProducerSettings {
    fn default() -> Self {
        ProducerSettings {
            topic: "trade-tx".into(),
            compression: "lz4".into(),
            linger: Duration::from_millis(5),
            batch_size: 1_000_000,
            acks: "all".into(),
            count: None,
            seed: None,
            max_speed: false,
            catch_up: Duration::from_secs(1),
            flush_timeout: Duration::from_secs(30),
            report_interval: Duration::from_secs(5),
        }
    }
}

/// The profile in force, replaceable while the producer runs.
#[derive(Debug)]
pub struct RateControl {
    current: Mutex<RateProfile>,
    generation: AtomicU64,
}

impl RateControl {
    /// Starts with `profile`.
    pub fn new(profile: RateProfile) -> Self {
        RateControl {
            current: Mutex::new(profile),
            generation: AtomicU64::new(0),
        }
    }

    /// Replaces the profile; it starts from its beginning at the moment the pacer sees it.
    pub fn set(&self, profile: RateProfile) {
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = profile;
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// The profile in force.
    pub fn get(&self) -> RateProfile {
        self.current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }
}

/// The producer's metrics, registered under `ebb_producer_*`.
#[derive(Clone)]
pub struct ProducerMetrics {
    sent: Counter,
    delivered: Counter,
    failed: Counter,
    target_rate: Gauge<f64, AtomicU64>,
    achieved_rate: Gauge<f64, AtomicU64>,
    delivery_latency: Histogram,
}

impl ProducerMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = ProducerMetrics {
            sent: Counter::default(),
            delivered: Counter::default(),
            failed: Counter::default(),
            target_rate: Gauge::default(),
            achieved_rate: Gauge::default(),
            delivery_latency: Histogram::new([
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
        };
        registry.register(
            "ebb_producer_messages_sent",
            "Records handed to the Kafka client",
            metrics.sent.clone(),
        );
        registry.register(
            "ebb_producer_messages_delivered",
            "Records the broker acknowledged",
            metrics.delivered.clone(),
        );
        registry.register(
            "ebb_producer_messages_failed",
            "Records that could not be delivered",
            metrics.failed.clone(),
        );
        registry.register(
            "ebb_producer_target_rate",
            "Rate the profile asks for now, in messages per second",
            metrics.target_rate.clone(),
        );
        registry.register(
            "ebb_producer_achieved_rate",
            "Records sent per second over the last report interval",
            metrics.achieved_rate.clone(),
        );
        registry.register(
            "ebb_producer_delivery_latency_seconds",
            "Time from send to the broker's acknowledgement",
            metrics.delivery_latency.clone(),
        );
        metrics
    }
}

/// Counts delivery reports; librdkafka calls it from its own thread.
pub struct DeliveryCounter {
    auth: AuthContext,
    started: Instant,
    delivered: AtomicU64,
    failed: AtomicU64,
    first_error: Mutex<Option<String>>,
    metrics: ProducerMetrics,
}

impl ClientContext for DeliveryCounter {
    const ENABLE_REFRESH_OAUTH_TOKEN: bool = true;

    fn generate_oauth_token(
        &self,
        _config: Option<&str>,
    ) -> Result<OAuthToken, Box<dyn std::error::Error>> {
        self.auth.token()
    }
}

impl ProducerContext for DeliveryCounter {
    /// Microseconds since the producer started, taken at send time.
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, sent_at_micros: usize) {
        let latency = self.started.elapsed().as_micros() as f64 / 1e6 - sent_at_micros as f64 / 1e6;
        match result {
            Ok(_) => {
                self.delivered.fetch_add(1, Ordering::Relaxed);
                self.metrics.delivered.inc();
                self.metrics.delivery_latency.observe(latency.max(0.0));
            }
            Err((error, _)) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                self.metrics.failed.inc();
                let mut first = self.first_error.lock().unwrap_or_else(|e| e.into_inner());
                if first.is_none() {
                    *first = Some(error.to_string());
                }
            }
        }
    }
}

/// Totals at the end of a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducerReport {
    /// Records handed to the client.
    pub sent: u64,
    /// Records the broker acknowledged.
    pub delivered: u64,
    /// Records that failed.
    pub failed: u64,
    /// Records still unacknowledged when the flush timed out.
    pub undelivered: u64,
    /// Messages skipped because the producer had fallen behind by more than the catch-up.
    pub skipped: u64,
    /// The first delivery error, if any.
    pub first_error: Option<String>,
    /// Wall time from start to the end of the flush.
    pub elapsed: Duration,
}

impl ProducerReport {
    /// Every record sent was acknowledged.
    pub fn all_delivered(&self) -> bool {
        self.failed == 0 && self.undelivered == 0 && self.delivered == self.sent
    }
}

/// A ready-to-run producer.
pub struct TradeProducer {
    settings: ProducerSettings,
    producer: ThreadedProducer<DeliveryCounter>,
    control: Arc<RateControl>,
    metrics: ProducerMetrics,
}

impl TradeProducer {
    /// Builds the Kafka producer. Fails on settings librdkafka rejects.
    pub fn new(
        kafka: &KafkaOptions,
        settings: ProducerSettings,
        control: Arc<RateControl>,
        metrics: ProducerMetrics,
    ) -> Result<Self, KafkaError> {
        let mut config = kafka.client_config();
        config
            .set("compression.type", &settings.compression)
            .set("linger.ms", settings.linger.as_millis().to_string())
            .set("batch.size", settings.batch_size.to_string())
            .set("acks", &settings.acks)
            .set("enable.idempotence", (settings.acks == "all").to_string())
            // Java clients hash keys with murmur2; matching them keeps an account on the
            // same partition whichever client produced it.
            .set("partitioner", "murmur2_random");
        // -X properties win over the settings above.
        for (key, value) in &kafka.extra {
            config.set(key, value);
        }
        let context = DeliveryCounter {
            auth: AuthContext::new(kafka),
            started: Instant::now(),
            delivered: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            first_error: Mutex::new(None),
            metrics: metrics.clone(),
        };
        let producer = config.create_with_context(context)?;
        Ok(TradeProducer {
            settings,
            producer,
            control,
            metrics,
        })
    }

    /// Sends until the count is reached, a finite profile ends, or `stop` is set; then
    /// flushes (bounded by the flush timeout) and reports. Blocking: run it on its own thread.
    pub fn run(self, stop: &AtomicBool) -> ProducerReport {
        let settings = &self.settings;
        let context = self.producer.context();
        let started = context.started;
        let mut generator = TradeGenerator::new(settings.seed);
        let (mut key, mut value) = (String::new(), Vec::with_capacity(256));

        let mut profile = self.control.get();
        let mut generation = self.control.generation();
        let mut origin = Instant::now();
        // Records sent before the current profile took over, and backlog written off.
        let mut base = 0u64;
        let mut skipped_total = 0u64;
        let mut skipped_in_profile = 0u64;
        let mut sent = 0u64;
        let mut reporter = Reporter::new(settings.report_interval);

        'pacing: loop {
            if stop.load(Ordering::Relaxed) || settings.count.is_some_and(|n| sent >= n) {
                break;
            }
            let now = Instant::now();
            if self.control.generation() != generation {
                generation = self.control.generation();
                profile = self.control.get();
                origin = now;
                base = sent;
                skipped_in_profile = 0;
                tracing::info!("rate profile changed to {profile}");
            }
            let t = now - origin;
            let target = if settings.max_speed {
                None
            } else {
                profile.rate_at(t)
            };
            let due = if settings.max_speed {
                sent + 1000
            } else {
                let Some(rate) = target else {
                    tracing::info!("rate profile ended");
                    break;
                };
                let mut due = base + profile.due_by(t).floor() as u64 - skipped_in_profile;
                let cap = (rate * settings.catch_up.as_secs_f64()).ceil().max(1.0) as u64;
                if due > sent + cap {
                    let skip = due - sent - cap;
                    skipped_in_profile += skip;
                    skipped_total += skip;
                    due -= skip;
                    tracing::warn!(
                        "producer fell behind; skipping {skip} messages (catch-up is limited to {:?} of traffic)",
                        settings.catch_up
                    );
                }
                due
            };
            self.metrics.target_rate.set(target.unwrap_or(0.0));
            let due = settings.count.map_or(due, |n| due.min(n));

            while sent < due {
                generator.next_record(SystemTime::now(), &mut key, &mut value);
                let timestamp = now_millis();
                let opaque = started.elapsed().as_micros() as usize;
                let mut record = BaseRecord::with_opaque_to(&settings.topic, opaque)
                    .key(key.as_str())
                    .payload(value.as_slice())
                    .timestamp(timestamp);
                loop {
                    match self.producer.send(record) {
                        Ok(()) => break,
                        Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                            record = back;
                            if stop.load(Ordering::Relaxed) {
                                break 'pacing;
                            }
                            std::thread::sleep(Duration::from_millis(1));
                        }
                        Err((error, _)) => {
                            tracing::error!("cannot send to {}: {error}", settings.topic);
                            context.failed.fetch_add(1, Ordering::Relaxed);
                            self.metrics.failed.inc();
                            break;
                        }
                    }
                }
                sent += 1;
                self.metrics.sent.inc();
                if sent.is_multiple_of(1024) && stop.load(Ordering::Relaxed) {
                    break 'pacing;
                }
            }

            reporter.maybe_report(sent, target, settings.max_speed, context, &self.metrics);

            if !settings.max_speed {
                // Sleep until the next message is due, but wake often enough to notice a
                // new profile, a stop, or a rate that rises from zero.
                let rate = target.unwrap_or(0.0);
                let wait = if rate > 0.0 {
                    let due_exact = profile.due_by(Instant::now() - origin);
                    let fraction = due_exact - due_exact.floor();
                    Duration::from_secs_f64(((1.0 - fraction) / rate).min(0.01))
                } else {
                    Duration::from_millis(10)
                };
                if !wait.is_zero() {
                    std::thread::sleep(wait);
                }
            }
        }

        let flush_started = Instant::now();
        let flushed = self.producer.flush(settings.flush_timeout);
        if let Err(e) = &flushed {
            tracing::warn!(
                "flush did not complete within {:?}: {e}",
                settings.flush_timeout
            );
        }
        let delivered = context.delivered.load(Ordering::Relaxed);
        let failed = context.failed.load(Ordering::Relaxed);
        let undelivered = self.producer.in_flight_count().max(0) as u64;
        tracing::debug!("flush took {:?}", flush_started.elapsed());
        ProducerReport {
            sent,
            delivered,
            failed,
            undelivered,
            skipped: skipped_total,
            first_error: context
                .first_error
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            elapsed: started.elapsed(),
        }
    }
}

fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Logs `Sent: N messages, Rate: X msg/s, Target: Y msg/s` every interval, in the
/// reference producer's format, and updates the achieved-rate gauge.
struct Reporter {
    interval: Duration,
    last_at: Instant,
    last_sent: u64,
    last_failed: u64,
}

impl Reporter {
    fn new(interval: Duration) -> Self {
        Reporter {
            interval,
            last_at: Instant::now(),
            last_sent: 0,
            last_failed: 0,
        }
    }

    fn maybe_report(
        &mut self,
        sent: u64,
        target: Option<f64>,
        max_speed: bool,
        context: &DeliveryCounter,
        metrics: &ProducerMetrics,
    ) {
        let elapsed = self.last_at.elapsed();
        if elapsed < self.interval {
            return;
        }
        let rate = (sent - self.last_sent) as f64 / elapsed.as_secs_f64();
        metrics.achieved_rate.set(rate);
        let target = match (max_speed, target) {
            (true, _) => "max".to_string(),
            (false, Some(t)) => format!("{}", (t * 10.0).round() / 10.0),
            (false, None) => "0".to_string(),
        };
        let failed = context.failed.load(Ordering::Relaxed);
        if failed > self.last_failed {
            tracing::warn!(
                "Sent: {sent} messages, Rate: {rate:.1} msg/s, Target: {target} msg/s, Delivery failures: {failed}"
            );
        } else {
            tracing::info!("Sent: {sent} messages, Rate: {rate:.1} msg/s, Target: {target} msg/s");
        }
        self.last_at = Instant::now();
        self.last_sent = sent;
        self.last_failed = failed;
    }
}
