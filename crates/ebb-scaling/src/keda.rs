//! KEDA on top of the HPA: the `kafka` scaler's metric and activity, and the ScaledObject
//! loop that scales 0 ↔ 1 and hands everything in between to the HPA.
//!
//! Behaviour follows KEDA v2.21.0: `pkg/scalers/kafka_scaler.go` (the lag, the caps, the
//! metadata checks), `pkg/scalers/scaler.go` (the metric handed to the HPA is never
//! negative), `pkg/scalers/scalersconfig/typed_config.go` (how metadata strings are read)
//! and `pkg/scaling/executor/scale_scaledobjects.go`; the tests name the rule each pins
//! down, quirks included (KEDA's behaviour is the reference, not what would be tidier).

use std::collections::BTreeMap;
use std::fmt;
use std::ops::RangeInclusive;
use std::time::Duration;

use crate::hpa::{Behavior, Hpa, HpaSpec};

/// `offsetResetPolicy` of the kafka trigger: what a partition with no committed offset
/// counts as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffsetResetPolicy {
    /// Lag 1 (0 with `scaleToZeroOnInvalidOffset`): the group would start at the end.
    Latest,
    /// Log end minus log start, the records still retained (0 with
    /// `scaleToZeroOnInvalidOffset`): the group would start at the oldest retained record.
    Earliest,
}

/// The kafka trigger's metadata that shapes the metric (mirrors the YAML keys).
///
/// KEDA reads `lagThreshold` and `activationLagThreshold` as whole numbers (int64); they
/// are `f64` here for the simulator's arithmetic. [`KafkaTrigger::from_metadata`] (and the
/// ScaledObject reader) only produce whole numbers, as KEDA accepts nothing else.
#[derive(Debug, Clone, PartialEq)]
pub struct KafkaTrigger {
    /// `lagThreshold`: the `AverageValue` target per replica (default 10).
    pub lag_threshold: f64,
    /// `activationLagThreshold`: active when the total lag is strictly above it (default 0).
    pub activation_lag_threshold: f64,
    /// `offsetResetPolicy` (default latest).
    pub offset_reset_policy: OffsetResetPolicy,
    /// `allowIdleConsumers`: do not cap the metric at the partition count.
    pub allow_idle_consumers: bool,
    /// `limitToPartitionsWithLag`: cap at the partitions that have lag (persistent lag
    /// excluded, see `exclude_persistent_lag`).
    pub limit_to_partitions_with_lag: bool,
    /// `excludePersistentLag`: a partition whose committed offset did not move since the
    /// previous poll counts 0 for the metric and for `limitToPartitionsWithLag` (still
    /// counts for activation).
    pub exclude_persistent_lag: bool,
    /// `scaleToZeroOnInvalidOffset`: an uncommitted partition counts 0, under either policy.
    pub scale_to_zero_on_invalid_offset: bool,
    /// `ensureEvenDistributionOfPartitions`: round up to a factor of the partition count.
    pub ensure_even_distribution_of_partitions: bool,
    /// `partitionLimitation` (only with a `topic`): the partitions that count, as KEDA's
    /// list of numbers and inclusive ranges (`"0,2-4"` → `[0..=0, 2..=4]`); `None` for all.
    /// The others are left out of the lag, of the partition count and of the caps.
    pub partition_limitation: Option<Vec<RangeInclusive<i32>>>,
}

impl Default for KafkaTrigger {
    fn default() -> Self {
        KafkaTrigger {
            lag_threshold: 10.0,
            activation_lag_threshold: 0.0,
            offset_reset_policy: OffsetResetPolicy::Latest,
            allow_idle_consumers: false,
            limit_to_partitions_with_lag: false,
            exclude_persistent_lag: false,
            scale_to_zero_on_invalid_offset: false,
            ensure_even_distribution_of_partitions: false,
            partition_limitation: None,
        }
    }
}

/// Kafka trigger metadata KEDA would refuse: the key at fault (`None` when a combination
/// of keys is, which `message` names) and KEDA's reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetadataError {
    /// The metadata key, in KEDA's spelling (`lagThreshold`).
    pub key: Option<&'static str>,
    /// What is wrong, naming the key(s) as KEDA's message does.
    pub message: String,
}

impl fmt::Display for MetadataError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for MetadataError {}

impl KafkaTrigger {
    /// Reads a kafka trigger's `metadata` (the `map<string,string>` of a ScaledObject) with
    /// KEDA v2.21.0's key names, defaults and checks: values are trimmed and an empty one
    /// counts as absent; numbers must be whole (int64); booleans take Go's
    /// `strconv.ParseBool` spellings; `bootstrapServers` and `consumerGroup` are required
    /// (or their `...FromEnv` forms, whose environment is not resolved here); unknown keys
    /// are ignored, as KEDA ignores them; `version` must be one sarama can parse.
    /// Connection and authentication settings are not checked beyond their allowed
    /// values: they mostly come from a TriggerAuthentication.
    pub fn from_metadata(metadata: &BTreeMap<String, String>) -> Result<KafkaTrigger, String> {
        parse_metadata(&|key| metadata.get(key).cloned(), true).map_err(|e| e.to_string())
    }

    /// Whether partition `partition` counts (KEDA's `isActivePartition`).
    pub fn counts_partition(&self, partition: i32) -> bool {
        self.partition_limitation
            .as_ref()
            .is_none_or(|ranges| ranges.iter().any(|r| r.contains(&partition)))
    }
}

/// A metadata value after KEDA's lookup: trimmed, and absent when empty.
fn present(get: &dyn Fn(&str) -> Option<String>, key: &str) -> Option<String> {
    get(key)
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

/// Go's `strconv.ParseBool`, which KEDA's typed config uses for every boolean.
fn go_bool(text: &str) -> Option<bool> {
    match text {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// An int64 the way KEDA's typed config reads one (`json.Unmarshal` into int64): a JSON
/// integer, so no `+`, no leading zeros, no fraction or exponent ("10.0" is refused).
fn go_json_int(text: &str) -> Option<i64> {
    let digits = text.strip_prefix('-').unwrap_or(text);
    let well_formed = !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && (digits == "0" || !digits.starts_with('0'));
    if well_formed { text.parse().ok() } else { None }
}

/// Go's `strconv.ParseInt(s, 10, 32)`, used for `partitionLimitation`.
fn go_int32(text: &str) -> Option<i32> {
    text.parse().ok()
}

/// Whether sarama's `ParseKafkaVersion` (v1.60.2, KEDA v2.21.0's) reads `text`: at least 5
/// characters, `0.a.b.c` when it starts with `0`, else `a.b.c`, each number ASCII digits
/// that fit a 64-bit unsigned integer. Whether the broker then speaks that version is a
/// matter for the connection, which is not modelled.
fn sarama_version(text: &str) -> bool {
    let number = |n: &str| {
        !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) && n.parse::<u64>().is_ok()
    };
    let parts: Vec<&str> = text.split('.').collect();
    text.len() >= 5
        && if text.starts_with('0') {
            parts.len() == 4 && parts[0] == "0" && parts[1..].iter().all(|n| number(n))
        } else {
            parts.len() == 3 && parts.iter().all(|n| number(n))
        }
}

/// KEDA's `parsePartitionLimitation`: comma-separated numbers and `start-end` ranges.
fn partition_limitation(text: &str) -> Result<Vec<RangeInclusive<i32>>, String> {
    text.split(',')
        .map(|part| {
            let part = part.trim();
            if part.contains('-') {
                let bounds: Vec<&str> = part.split('-').collect();
                let [start, end] = bounds.as_slice() else {
                    return Err(format!("invalid partition limitation range: {part}"));
                };
                let bound = |b: &str| {
                    go_int32(b.trim())
                        .ok_or_else(|| format!("invalid partition limitation: {part}"))
                };
                Ok(bound(start)?..=bound(end)?)
            } else {
                let p = go_int32(part)
                    .ok_or_else(|| format!("invalid partition limitation: {part}"))?;
                Ok(p..=p)
            }
        })
        .collect()
}

/// The kafka trigger from its metadata as KEDA v2.21.0 reads it (`kafkaMetadata`'s tags
/// and `Validate`). `get` returns a key's raw value. `require_connection`: whether
/// `bootstrapServers` and `consumerGroup` must be given, as KEDA requires; the ScaledObject
/// reader relaxes it because ebb simulates without connecting.
pub(crate) fn parse_metadata(
    get: &dyn Fn(&str) -> Option<String>,
    require_connection: bool,
) -> Result<KafkaTrigger, MetadataError> {
    let err = |key: Option<&'static str>, message: String| MetadataError { key, message };
    // Keys KEDA also reads from the workload's environment through `<key>FromEnv`; the
    // environment is not available here, so naming a variable counts as giving the value.
    let given =
        |key: &str| present(get, key).is_some() || present(get, &format!("{key}FromEnv")).is_some();
    if require_connection {
        for key in ["bootstrapServers", "consumerGroup"] {
            if !given(key) {
                return Err(err(
                    Some(key),
                    format!(
                        "missing required parameter \"{key}\" in [triggerMetadata resolvedEnv]"
                    ),
                ));
            }
        }
    }
    let has_topic = given("topic");
    let int = |key: &'static str, default: i64| -> Result<i64, MetadataError> {
        match present(get, key) {
            None => Ok(default),
            Some(text) => go_json_int(&text).ok_or_else(|| {
                err(
                    Some(key),
                    format!(
                        "unable to set param \"{key}\" value \"{text}\": not a whole number \
                         (KEDA reads it as an int64)"
                    ),
                )
            }),
        }
    };
    let flag = |key: &'static str, default: bool| -> Result<bool, MetadataError> {
        match present(get, key) {
            None => Ok(default),
            Some(text) => go_bool(&text).ok_or_else(|| {
                err(
                    Some(key),
                    format!(
                        "unable to set param \"{key}\" value \"{text}\": not a boolean \
                         (true/false, True/False, TRUE/FALSE, t/f, T/F, 1/0)"
                    ),
                )
            }),
        }
    };
    // KEDA's enum check splits the value on commas and checks each piece, so
    // "latest,earliest" passes it; the trigger then compares the whole string with
    // "latest" and "earliest", matches neither, and counts an uncommitted partition as
    // committed at -1 (log end + 1). ebb does not model that third policy: refused here
    // with the reason rather than silently read as one of the two.
    let one_of = |key: &'static str, allowed: &[&str]| -> Result<Option<String>, MetadataError> {
        let Some(text) = present(get, key) else {
            return Ok(None);
        };
        if text
            .split(',')
            .any(|piece| !allowed.contains(&piece.trim()))
        {
            return Err(err(
                Some(key),
                format!("parameter \"{key}\" value \"{text}\" must be one of {allowed:?}"),
            ));
        }
        Ok(Some(text))
    };

    let limitation_text = present(get, "partitionLimitation");
    let lag_threshold = int("lagThreshold", 10)?;
    let activation_lag_threshold = int("activationLagThreshold", 0)?;
    let offset_reset_policy = match one_of("offsetResetPolicy", &["latest", "earliest"])?.as_deref()
    {
        None | Some("latest") => OffsetResetPolicy::Latest,
        Some("earliest") => OffsetResetPolicy::Earliest,
        Some(other) => {
            return Err(err(
                Some("offsetResetPolicy"),
                format!(
                    "parameter \"offsetResetPolicy\" value \"{other}\": KEDA accepts this list \
                     but then applies neither latest nor earliest (an uncommitted partition \
                     counts log end + 1); ebb does not model that, give one policy"
                ),
            ));
        }
    };
    let allow_idle_consumers = flag("allowIdleConsumers", false)?;
    let exclude_persistent_lag = flag("excludePersistentLag", false)?;
    let scale_to_zero_on_invalid_offset = flag("scaleToZeroOnInvalidOffset", false)?;
    let limit_to_partitions_with_lag = flag("limitToPartitionsWithLag", false)?;
    let ensure_even_distribution_of_partitions = flag("ensureEvenDistributionOfPartitions", false)?;
    let full_metadata = flag("fullMetadata", true)?;
    flag("unsafeSsl", false)?;
    one_of("tls", &["enable", "disable"])?;
    one_of(
        "sasl",
        &[
            "none",
            "plaintext",
            "scram_sha256",
            "scram_sha512",
            "oauthbearer",
            "gssapi",
        ],
    )?;
    one_of("saslTokenProvider", &["bearer", "aws_msk_iam"])?;

    // kafkaMetadata.Validate, in its order.
    if lag_threshold <= 0 {
        return Err(err(
            Some("lagThreshold"),
            "\"lagThreshold\" must be positive number".into(),
        ));
    }
    if activation_lag_threshold < 0 {
        return Err(err(
            Some("activationLagThreshold"),
            "\"activationLagThreshold\" must be a non-negative number".into(),
        ));
    }
    let mut limitation = match limitation_text {
        Some(text) => {
            Some(partition_limitation(&text).map_err(|m| err(Some("partitionLimitation"), m))?)
        }
        None => None,
    };
    if !has_topic {
        // Without a topic KEDA reads every topic the group committed on and drops the
        // limitation.
        limitation = None;
    }
    if allow_idle_consumers && limit_to_partitions_with_lag {
        return Err(err(
            None,
            "allowIdleConsumers and limitToPartitionsWithLag cannot be set simultaneously".into(),
        ));
    }
    if !has_topic && limit_to_partitions_with_lag {
        return Err(err(
            Some("topic"),
            "topic must be specified when using limitToPartitionsWithLag".into(),
        ));
    }
    if limit_to_partitions_with_lag && ensure_even_distribution_of_partitions {
        return Err(err(
            None,
            "limitToPartitionsWithLag and ensureEvenDistributionOfPartitions cannot be set \
             simultaneously"
                .into(),
        ));
    }
    if !has_topic && ensure_even_distribution_of_partitions {
        return Err(err(
            Some("topic"),
            "topic must be specified when using ensureEvenDistributionOfPartitions".into(),
        ));
    }
    if !full_metadata && !has_topic {
        return Err(err(
            Some("topic"),
            "topic must be specified when fullMetadata is false".into(),
        ));
    }
    // parseKafkaMetadata, after Validate: sarama.ParseKafkaVersion.
    if let Some(text) = present(get, "version")
        && !sarama_version(&text)
    {
        return Err(err(
            Some("version"),
            format!("error parsing kafka version: invalid version `{text}`"),
        ));
    }
    Ok(KafkaTrigger {
        lag_threshold: lag_threshold as f64,
        activation_lag_threshold: activation_lag_threshold as f64,
        offset_reset_policy,
        allow_idle_consumers,
        limit_to_partitions_with_lag,
        exclude_persistent_lag,
        scale_to_zero_on_invalid_offset,
        ensure_even_distribution_of_partitions,
        partition_limitation: limitation,
    })
}

/// One partition as the scaler reads it. In a slice handed to [`KafkaScaler::poll`],
/// element `i` is partition `i` (what `partitionLimitation` and the persistent-lag memory
/// go by).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PartitionOffsets {
    /// Log-start offset, the oldest retained record (ListOffsets earliest). Only read for
    /// a partition with no committed offset under `earliest`; 0 when nothing was deleted
    /// or when it could not be read (KEDA then falls back to the log end, which 0 gives).
    pub log_start: f64,
    /// Log-end offset (ListOffsets latest).
    pub log_end: f64,
    /// The group's committed offset; `None` when the group never committed.
    pub committed: Option<f64>,
}

/// What the scaler reports at one poll.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KafkaMetric {
    /// The metric the HPA sees: the total lag after the caps, floored at 0 (KEDA turns a
    /// negative value into 0 when it builds the metric).
    pub value: f64,
    /// Total lag including persistent lag, which decides activity. Not floored: a
    /// committed offset past the log end makes its partition's lag negative, and KEDA
    /// sums it as is.
    pub total_lag: f64,
    /// Total lag > `activationLagThreshold`.
    pub active: bool,
}

/// The kafka scaler: remembers committed offsets between polls for `excludePersistentLag`.
#[derive(Debug, Clone)]
pub struct KafkaScaler {
    trigger: KafkaTrigger,
    /// KEDA's `previousOffsets`: the last committed offset seen per partition. Only
    /// committed partitions write it, and nothing clears it, so a partition whose offset
    /// vanishes and comes back unchanged still counts as persistent.
    previous_committed: BTreeMap<usize, f64>,
}

/// Go's `a / b` on int64: the quotient truncated toward zero. The inputs are whole in
/// KEDA; the simulator's can be fractional, where this is the natural extension.
fn go_int_div(a: f64, b: f64) -> f64 {
    let q = (a / b).trunc();
    // Guard against the float quotient rounding up to the next whole number.
    if a >= 0.0 && q * b > a {
        q - 1.0
    } else if a < 0.0 && q * b < a {
        q + 1.0
    } else {
        q
    }
}

/// KEDA's `getNextFactorThatBalancesConsumersToTopicPartitions`: the smallest factor of
/// the partition count whose share of the threshold covers the lag; the count when none
/// does; 0 partitions have no factors, so 0.
fn next_balancing_factor(total_lag: f64, partitions: usize, lag_threshold: f64) -> f64 {
    (1..=partitions)
        .filter(|f| partitions.is_multiple_of(*f))
        .find(|f| *f as f64 * lag_threshold >= total_lag)
        .unwrap_or(partitions) as f64
}

impl KafkaScaler {
    /// A scaler with no history.
    pub fn new(trigger: KafkaTrigger) -> Self {
        KafkaScaler {
            trigger,
            previous_committed: BTreeMap::new(),
        }
    }

    /// The trigger.
    pub fn trigger(&self) -> &KafkaTrigger {
        &self.trigger
    }

    /// One poll over every partition of the topic (KEDA's `GetMetricsAndActivity`). When
    /// KEDA's poll would fail (no partition counts, see [`KafkaScaler::try_poll`]) this
    /// gives a zero, inactive metric; use `try_poll` to tell the two apart.
    pub fn poll(&mut self, partitions: &[PartitionOffsets]) -> KafkaMetric {
        self.try_poll(partitions).unwrap_or(KafkaMetric {
            value: 0.0,
            total_lag: 0.0,
            active: false,
        })
    }

    /// One poll, or KEDA's error when no partition counts (none given, or
    /// `partitionLimitation` selects none of them): "expected at least one active
    /// partition within the topic".
    pub fn try_poll(&mut self, partitions: &[PartitionOffsets]) -> Result<KafkaMetric, String> {
        let counted: Vec<(usize, &PartitionOffsets)> = partitions
            .iter()
            .enumerate()
            .filter(|(i, _)| i32::try_from(*i).is_ok_and(|id| self.trigger.counts_partition(id)))
            .collect();
        if counted.is_empty() {
            return Err("expected at least one active partition within the topic".into());
        }
        // getTotalLag.
        let mut total_lag = 0.0;
        let mut total_lag_with_persistent = 0.0;
        let mut partitions_with_lag = 0usize;
        for &(i, p) in &counted {
            let (lag, with_persistent) = self.lag_for_partition(i, p);
            total_lag += lag;
            total_lag_with_persistent += with_persistent;
            // The lag after persistent lag is zeroed, so a stuck partition does not count.
            if lag > 0.0 {
                partitions_with_lag += 1;
            }
        }
        let t = &self.trigger;
        let count = counted.len();
        // KEDA rejects lagThreshold ≤ 0 (and would divide by zero); a hand-built trigger
        // with one is left uncapped.
        if t.lag_threshold > 0.0
            && (!t.allow_idle_consumers
                || t.limit_to_partitions_with_lag
                || t.ensure_even_distribution_of_partitions)
        {
            let mut upper_bound = count as f64;
            if t.ensure_even_distribution_of_partitions {
                total_lag =
                    next_balancing_factor(total_lag, count, t.lag_threshold) * t.lag_threshold;
            }
            if t.limit_to_partitions_with_lag {
                upper_bound = partitions_with_lag as f64;
            }
            // Integer division: 30,000 / 4,500 is 6, not above 6 partitions, so 30,000
            // passes uncapped and the HPA asks for ceil(6.67) = 7 replicas.
            if go_int_div(total_lag, t.lag_threshold) > upper_bound {
                total_lag = upper_bound * t.lag_threshold;
            }
        }
        Ok(KafkaMetric {
            value: total_lag.max(0.0),
            total_lag: total_lag_with_persistent,
            active: total_lag_with_persistent > t.activation_lag_threshold,
        })
    }

    /// KEDA's `getLagForPartition`: (lag for the metric, lag with persistent lag).
    fn lag_for_partition(&mut self, i: usize, p: &PartitionOffsets) -> (f64, f64) {
        let t = &self.trigger;
        let Some(committed) = p.committed else {
            // No committed offset (-1): returned before the persistent-lag check, so an
            // uncommitted partition is never "persistent" and is not remembered.
            let lag = match t.offset_reset_policy {
                _ if t.scale_to_zero_on_invalid_offset => 0.0,
                OffsetResetPolicy::Latest => 1.0,
                // v2.21.0: `max(0, latestOffset-earliestOffset)`; the two offsets come
                // from separate requests, so retention can move the start past the end
                // sampled first.
                OffsetResetPolicy::Earliest => (p.log_end - p.log_start).max(0.0),
            };
            return (lag, lag);
        };
        // Not clamped: a committed offset past the log end gives a negative lag.
        let lag = p.log_end - committed;
        if t.exclude_persistent_lag {
            match self.previous_committed.get(&i) {
                Some(&previous) if previous == committed => return (0.0, lag),
                _ => {
                    self.previous_committed.insert(i, committed);
                }
            }
        }
        (lag, lag)
    }
}

/// A ScaledObject with one kafka trigger: the parts that decide scaling.
#[derive(Debug, Clone, PartialEq)]
pub struct ScaledObjectSpec {
    /// `pollingInterval` (default 30 s).
    pub polling_interval: Duration,
    /// `cooldownPeriod` (default 300 s).
    pub cooldown_period: Duration,
    /// `minReplicaCount` (default 0).
    pub min_replica_count: u32,
    /// `maxReplicaCount` (default 100).
    pub max_replica_count: u32,
    /// The kafka trigger.
    pub trigger: KafkaTrigger,
    /// `advanced.horizontalPodAutoscalerConfig.behavior`, API defaults filled in.
    pub behavior: Behavior,
    /// The HPA controller's sync period (`--horizontal-pod-autoscaler-sync-period`, 15 s);
    /// a cluster setting, not part of the YAML.
    pub hpa_sync_period: Duration,
}

impl Default for ScaledObjectSpec {
    fn default() -> Self {
        ScaledObjectSpec {
            polling_interval: Duration::from_secs(30),
            cooldown_period: Duration::from_secs(300),
            min_replica_count: 0,
            max_replica_count: 100,
            trigger: KafkaTrigger::default(),
            behavior: Behavior::default(),
            hpa_sync_period: Duration::from_secs(15),
        }
    }
}

impl ScaledObjectSpec {
    /// The HPA KEDA generates: `minReplicas = max(1, minReplicaCount)`, the trigger's
    /// threshold as the `AverageValue` target, the behavior passed through.
    pub fn hpa_spec(&self) -> HpaSpec {
        HpaSpec {
            behavior: self.behavior.clone(),
            sync_period: self.hpa_sync_period,
            ..HpaSpec::new(
                self.min_replica_count.max(1),
                self.max_replica_count,
                self.trigger.lag_threshold,
            )
        }
    }
}

/// What KEDA or the HPA decided at one instant.
#[derive(Debug, Clone, PartialEq)]
pub struct KedaDecision {
    /// The replica count to set.
    pub replicas: u32,
    /// Who decided and why, for logs.
    pub reason: String,
}

/// KEDA's ScaledObject loop together with the HPA it owns.
#[derive(Debug, Clone)]
pub struct Keda {
    spec: ScaledObjectSpec,
    scaler: KafkaScaler,
    hpa: Hpa,
    last_active: Option<Duration>,
    next_poll: Duration,
    next_sync: Duration,
    /// The metric as of the last read, for charts (the HPA's "current" value).
    pub last_metric: Option<KafkaMetric>,
}

impl Keda {
    /// KEDA and its HPA, both starting their loops at time zero.
    pub fn new(spec: ScaledObjectSpec) -> Self {
        Keda {
            scaler: KafkaScaler::new(spec.trigger.clone()),
            hpa: Hpa::new(spec.hpa_spec()),
            spec,
            last_active: None,
            next_poll: Duration::ZERO,
            next_sync: Duration::ZERO,
            last_metric: None,
        }
    }

    /// The spec.
    pub fn spec(&self) -> &ScaledObjectSpec {
        &self.spec
    }

    /// Advances to `now`. `read` gives the partitions' offsets when a loop needs them (each
    /// loop reads the metric live). Returns a decision when KEDA or the HPA would set a
    /// replica count different from `current`.
    pub fn step(
        &mut self,
        now: Duration,
        current: u32,
        mut read: impl FnMut() -> Vec<PartitionOffsets>,
    ) -> Option<KedaDecision> {
        let mut replicas = current;
        let mut reason = String::new();
        if now >= self.next_poll {
            self.next_poll = now + self.spec.polling_interval;
            // A failed poll changes nothing: the executor's `isError` case without a
            // fallback keeps the replicas (and the last active time) as they are.
            if let Ok(metric) = self.scaler.try_poll(&read()) {
                self.keda_loop(now, metric, &mut replicas, &mut reason);
            }
        }
        if now >= self.next_sync {
            self.next_sync = now + self.hpa.spec().sync_period;
            if replicas > 0 {
                // The HPA cannot read a metric KEDA failed to produce, so it holds.
                if let Ok(metric) = self.scaler.try_poll(&read()) {
                    self.last_metric = Some(metric);
                    let (desired, why) = self.hpa.reconcile(now, replicas, metric.value);
                    if desired != replicas {
                        reason = format!(
                            "HPA: metric {:.0} / target {:.0} per replica ({why:?})",
                            metric.value, self.spec.trigger.lag_threshold
                        );
                        replicas = desired;
                    }
                }
            }
        }
        (replicas != current).then_some(KedaDecision { replicas, reason })
    }

    /// KEDA's own loop on one successful poll: activate from zero, scale to zero after
    /// the cooldown, or lift to `minReplicaCount`.
    fn keda_loop(
        &mut self,
        now: Duration,
        metric: KafkaMetric,
        replicas: &mut u32,
        reason: &mut String,
    ) {
        self.last_metric = Some(metric);
        if metric.active {
            self.last_active = Some(now);
        }
        let cooled = self
            .last_active
            .is_none_or(|at| now.saturating_sub(at) >= self.spec.cooldown_period);
        if *replicas == 0 && metric.active {
            *replicas = self.spec.min_replica_count.max(1);
            *reason = format!(
                "KEDA: activated (lag {:.0} > activation threshold {:.0})",
                metric.total_lag, self.spec.trigger.activation_lag_threshold
            );
        } else if *replicas > 0 && !metric.active && self.spec.min_replica_count == 0 && cooled {
            *replicas = 0;
            *reason = format!(
                "KEDA: inactive for the cooldown period ({:?})",
                self.spec.cooldown_period
            );
        } else if *replicas < self.spec.min_replica_count {
            *replicas = self.spec.min_replica_count;
            *reason = "KEDA: below minReplicaCount".into();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(lags: &[(f64, Option<f64>)]) -> Vec<PartitionOffsets> {
        lags.iter()
            .map(|&(log_end, committed)| PartitionOffsets {
                log_start: 0.0,
                log_end,
                committed,
            })
            .collect()
    }

    fn metadata(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        [
            ("bootstrapServers", "kafka:9092"),
            ("consumerGroup", "workers"),
        ]
        .iter()
        .chain(pairs)
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    #[test]
    fn metric_is_the_total_lag() {
        // kafka_scaler.go: getTotalLag sums log-end minus committed.
        let mut scaler = KafkaScaler::new(KafkaTrigger {
            lag_threshold: 100.0,
            ..Default::default()
        });
        let m = scaler.poll(&parts(&[(150.0, Some(100.0)), (80.0, Some(0.0))]));
        assert_eq!((m.value, m.total_lag, m.active), (130.0, 130.0, true));
    }

    #[test]
    fn no_committed_offset_counts_by_the_reset_policy() {
        // getLagForPartition: latest → 1 (0 with scaleToZeroOnInvalidOffset); earliest →
        // log end minus log start, which is the log end when nothing was deleted.
        let p = parts(&[(500.0, None)]);
        let trigger = KafkaTrigger {
            lag_threshold: 1000.0,
            ..Default::default()
        };
        assert_eq!(KafkaScaler::new(trigger.clone()).poll(&p).total_lag, 1.0);
        let zero = KafkaTrigger {
            scale_to_zero_on_invalid_offset: true,
            ..trigger.clone()
        };
        assert_eq!(KafkaScaler::new(zero).poll(&p).total_lag, 0.0);
        let earliest = KafkaTrigger {
            offset_reset_policy: OffsetResetPolicy::Earliest,
            ..trigger
        };
        assert_eq!(KafkaScaler::new(earliest).poll(&p).total_lag, 500.0);
    }

    #[test]
    fn metric_is_capped_at_partitions_unless_idle_consumers_are_allowed() {
        // Upper bound = partition count × threshold when !allowIdleConsumers.
        let p = parts(&[(10_000.0, Some(0.0)), (0.0, Some(0.0)), (0.0, Some(0.0))]);
        let trigger = KafkaTrigger {
            lag_threshold: 100.0,
            ..Default::default()
        };
        assert_eq!(KafkaScaler::new(trigger.clone()).poll(&p).value, 300.0);
        let with_lag = KafkaTrigger {
            limit_to_partitions_with_lag: true,
            ..trigger.clone()
        };
        assert_eq!(KafkaScaler::new(with_lag).poll(&p).value, 100.0);
        let idle = KafkaTrigger {
            allow_idle_consumers: true,
            ..trigger
        };
        assert_eq!(KafkaScaler::new(idle).poll(&p).value, 10_000.0);
    }

    #[test]
    fn even_distribution_rounds_up_to_a_factor_of_the_partition_count() {
        let p = parts(&[
            (250.0, Some(0.0)),
            (0.0, Some(0.0)),
            (0.0, Some(0.0)),
            (0.0, Some(0.0)),
            (0.0, Some(0.0)),
            (0.0, Some(0.0)),
        ]);
        let trigger = KafkaTrigger {
            lag_threshold: 100.0,
            ensure_even_distribution_of_partitions: true,
            ..Default::default()
        };
        // 250 / 100 → 3 replicas; 3 divides 6.
        assert_eq!(KafkaScaler::new(trigger.clone()).poll(&p).value, 300.0);
        let p5 = &p[..5];
        // 3 does not divide 5; the next factor is 5.
        assert_eq!(KafkaScaler::new(trigger).poll(p5).value, 500.0);
    }

    #[test]
    fn persistent_lag_is_left_out_of_the_metric_but_not_of_activity() {
        // excludePersistentLag: committed offset unchanged since the previous poll.
        let trigger = KafkaTrigger {
            lag_threshold: 10.0,
            exclude_persistent_lag: true,
            allow_idle_consumers: true,
            ..Default::default()
        };
        let mut scaler = KafkaScaler::new(trigger);
        let stuck = parts(&[(100.0, Some(50.0)), (30.0, Some(10.0))]);
        assert_eq!(scaler.poll(&stuck).value, 70.0, "first poll: no history");
        let moved = parts(&[(100.0, Some(50.0)), (40.0, Some(20.0))]);
        let m = scaler.poll(&moved);
        assert_eq!((m.value, m.total_lag, m.active), (20.0, 70.0, true));
    }

    #[test]
    fn activation_is_strictly_above_the_threshold() {
        let trigger = KafkaTrigger {
            activation_lag_threshold: 5.0,
            ..Default::default()
        };
        assert!(
            !KafkaScaler::new(trigger.clone())
                .poll(&parts(&[(5.0, Some(0.0))]))
                .active
        );
        assert!(
            KafkaScaler::new(trigger)
                .poll(&parts(&[(6.0, Some(0.0))]))
                .active
        );
    }

    fn trigger(threshold: f64) -> KafkaTrigger {
        KafkaTrigger {
            lag_threshold: threshold,
            ..Default::default()
        }
    }

    #[test]
    fn partition_cap_compares_lag_over_threshold_in_integer_division() {
        // getTotalLag: `if (totalLag / s.metadata.LagThreshold) > upperBound` on int64.
        // 30,000 / 4,500 is 6 in integer division, not above 6 partitions: uncapped, and
        // the HPA then asks for ceil(6.67) = 7 replicas for 6 partitions (a KEDA quirk).
        let six = |lag: f64| {
            let mut p = parts(&[(0.0, Some(0.0)); 6]);
            p[0].log_end = lag;
            p
        };
        let mut scaler = KafkaScaler::new(trigger(4500.0));
        assert_eq!(scaler.poll(&six(30_000.0)).value, 30_000.0);
        assert_eq!(scaler.poll(&six(31_499.0)).value, 31_499.0);
        // 31,500 / 4,500 = 7 > 6: capped at 6 × 4,500.
        assert_eq!(scaler.poll(&six(31_500.0)).value, 27_000.0);
    }

    #[test]
    fn limit_to_partitions_with_lag_cap_is_in_integer_division_too() {
        // upperBound = partitionsWithLag, compared the same way: 1 partition with lag,
        // 199 / 100 = 1 is not above 1.
        let with_lag = KafkaTrigger {
            limit_to_partitions_with_lag: true,
            ..trigger(100.0)
        };
        let p = |lag: f64| parts(&[(lag, Some(0.0)), (0.0, Some(0.0)), (0.0, Some(0.0))]);
        let mut scaler = KafkaScaler::new(with_lag);
        assert_eq!(scaler.poll(&p(199.0)).value, 199.0);
        assert_eq!(scaler.poll(&p(200.0)).value, 100.0);
    }

    #[test]
    fn scale_to_zero_on_invalid_offset_applies_under_earliest_too() {
        // getLagForPartition: under earliest, ScaleToZeroOnInvalidOffset returns 0, 0 before
        // any offset is looked at.
        let p = [PartitionOffsets {
            log_start: 100.0,
            log_end: 500.0,
            committed: None,
        }];
        let earliest = KafkaTrigger {
            offset_reset_policy: OffsetResetPolicy::Earliest,
            scale_to_zero_on_invalid_offset: true,
            ..trigger(10.0)
        };
        let m = KafkaScaler::new(earliest).poll(&p);
        assert_eq!((m.value, m.total_lag, m.active), (0.0, 0.0, false));
    }

    #[test]
    fn earliest_counts_an_uncommitted_partition_from_the_log_start() {
        // getLagForPartition (v2.21.0): lag := latestOffset - earliestOffset, the records
        // retention kept; an empty retained window is lag 0, so it is not a partition with
        // lag. When the earliest offset cannot be read KEDA falls back to the log end,
        // which log_start 0 gives.
        let earliest = KafkaTrigger {
            offset_reset_policy: OffsetResetPolicy::Earliest,
            limit_to_partitions_with_lag: true,
            ..trigger(100.0)
        };
        let p = [
            PartitionOffsets {
                log_start: 400.0,
                log_end: 1000.0,
                committed: None,
            },
            PartitionOffsets {
                log_start: 700.0,
                log_end: 700.0,
                committed: None,
            },
            PartitionOffsets {
                log_start: 0.0,
                log_end: 50.0,
                committed: None,
            },
        ];
        let m = KafkaScaler::new(earliest).poll(&p);
        assert_eq!(m.total_lag, 600.0 + 0.0 + 50.0);
        // Two partitions with lag: 650 / 100 = 6 > 2, capped at 200.
        assert_eq!(m.value, 200.0);
        // Under latest the log start does not matter: 1 per uncommitted partition.
        let latest = KafkaScaler::new(trigger(100.0)).poll(&p);
        assert_eq!(latest.total_lag, 3.0);
    }

    #[test]
    fn persistent_lag_does_not_count_toward_limit_to_partitions_with_lag() {
        // getTotalLag counts `lag > 0` on the lag with persistent lag zeroed.
        let t = KafkaTrigger {
            exclude_persistent_lag: true,
            limit_to_partitions_with_lag: true,
            ..trigger(10.0)
        };
        let mut scaler = KafkaScaler::new(t);
        let first = parts(&[(1000.0, Some(0.0)), (1000.0, Some(0.0)), (0.0, Some(0.0))]);
        // First poll: no history, two partitions with lag: 2000 capped at 2 × 10.
        assert_eq!(scaler.poll(&first).value, 20.0);
        // Partition 0 stuck, partition 1 moved: one partition with lag, 900 → 10.
        let second = parts(&[(1000.0, Some(0.0)), (1000.0, Some(100.0)), (0.0, Some(0.0))]);
        let m = scaler.poll(&second);
        assert_eq!((m.value, m.total_lag), (10.0, 1900.0));
    }

    #[test]
    fn negative_partition_lag_is_summed_unclamped_and_the_metric_floored_at_zero() {
        // getLagForPartition returns latestOffset - consumerOffset as is; getTotalLag sums
        // it; GenerateMetricInMili (scaler.go) turns a negative metric into 0; activity is
        // totalLagWithPersistent > activationLagThreshold on the unfloored sum.
        let mut scaler = KafkaScaler::new(KafkaTrigger {
            allow_idle_consumers: true,
            ..trigger(10.0)
        });
        let behind = parts(&[(100.0, Some(150.0)), (100.0, Some(70.0))]);
        let m = scaler.poll(&behind);
        assert_eq!((m.value, m.total_lag, m.active), (0.0, -20.0, false));
        let partly = parts(&[(100.0, Some(150.0)), (100.0, Some(0.0))]);
        let m = scaler.poll(&partly);
        assert_eq!((m.value, m.total_lag, m.active), (50.0, 50.0, true));
    }

    #[test]
    fn persistent_check_ignores_the_sign_of_the_lag() {
        // excludePersistentLag: `previousOffset == consumerOffset` returns 0 whatever the
        // lag, so a stuck negative lag stops pulling the metric down.
        let mut scaler = KafkaScaler::new(KafkaTrigger {
            exclude_persistent_lag: true,
            allow_idle_consumers: true,
            ..trigger(10.0)
        });
        let first = parts(&[(100.0, Some(150.0)), (100.0, Some(0.0))]);
        assert_eq!(scaler.poll(&first).value, 50.0);
        let second = parts(&[(100.0, Some(150.0)), (100.0, Some(20.0))]);
        let m = scaler.poll(&second);
        assert_eq!((m.value, m.total_lag), (80.0, 30.0));
    }

    #[test]
    fn persistent_memory_keeps_offsets_across_polls_without_a_commit() {
        // previousOffsets is only written for committed partitions and never cleared; an
        // uncommitted partition returns before the check, so it is never persistent.
        let mut scaler = KafkaScaler::new(KafkaTrigger {
            exclude_persistent_lag: true,
            allow_idle_consumers: true,
            ..trigger(10.0)
        });
        assert_eq!(scaler.poll(&parts(&[(100.0, Some(50.0))])).value, 50.0);
        assert_eq!(scaler.poll(&parts(&[(100.0, None)])).value, 1.0);
        assert_eq!(scaler.poll(&parts(&[(100.0, None)])).value, 1.0);
        // Back at 50: the same offset as remembered, so persistent.
        let m = scaler.poll(&parts(&[(100.0, Some(50.0))]));
        assert_eq!((m.value, m.total_lag), (0.0, 50.0));
    }

    #[test]
    fn even_distribution_comes_before_the_cap_and_lifts_zero_lag_to_one_factor() {
        // getTotalLag sets totalLag = nextFactor × LagThreshold before the cap; the first
        // factor, 1, covers a lag of 0, so the metric is one threshold even when idle
        // (activity still reads the real lag).
        let t = KafkaTrigger {
            ensure_even_distribution_of_partitions: true,
            ..trigger(100.0)
        };
        let idle = parts(&[(0.0, Some(0.0)); 4]);
        let m = KafkaScaler::new(t.clone()).poll(&idle);
        assert_eq!((m.value, m.total_lag, m.active), (100.0, 0.0, false));
        // More lag than all partitions cover: no factor does, so the partition count.
        let mut p = idle.clone();
        p[0].log_end = 10_000.0;
        assert_eq!(KafkaScaler::new(t).poll(&p).value, 400.0);
    }

    #[test]
    fn partition_limitation_leaves_other_partitions_out_of_lag_and_caps() {
        // isActivePartition filters the partitions before offsets are read, so the others
        // count for nothing, not even the partition count.
        let t = KafkaTrigger {
            partition_limitation: Some(vec![0..=0, 2..=3]),
            ..trigger(100.0)
        };
        let p = parts(&[
            (10_000.0, Some(0.0)),
            (50_000.0, Some(0.0)),
            (0.0, Some(0.0)),
            (0.0, Some(0.0)),
        ]);
        let m = KafkaScaler::new(t).poll(&p);
        assert_eq!((m.value, m.total_lag), (300.0, 10_000.0));
    }

    #[test]
    fn no_counted_partition_is_a_scaler_error_and_keda_holds() {
        // getTopicPartitions: "expected at least one active partition within the topic";
        // the executor's isError case (no fallback) leaves the replicas alone.
        // "5-3" parses to a reversed range, which selects nothing.
        let t = KafkaTrigger::from_metadata(&metadata(&[
            ("topic", "t"),
            ("partitionLimitation", "5-3"),
        ]))
        .unwrap();
        assert_eq!(
            t.partition_limitation,
            Some(vec![RangeInclusive::new(5, 3)])
        );
        let p = parts(&[(1000.0, Some(0.0))]);
        let err = KafkaScaler::new(t.clone()).try_poll(&p).unwrap_err();
        assert!(err.contains("at least one active partition"), "{err}");
        assert!(KafkaScaler::new(trigger(10.0)).try_poll(&[]).is_err());
        let mut keda = Keda::new(ScaledObjectSpec {
            trigger: t,
            ..Default::default()
        });
        let s = Duration::from_secs;
        assert_eq!(keda.step(s(0), 3, || p.clone()), None);
        assert_eq!(
            keda.step(s(600), 3, || p.clone()),
            None,
            "no cooldown to zero"
        );
    }

    #[test]
    fn metadata_defaults_are_kedas() {
        // kafkaMetadata tags: lagThreshold 10, activationLagThreshold 0, latest, all false.
        let t = KafkaTrigger::from_metadata(&metadata(&[("topic", "t")])).unwrap();
        assert_eq!(t, KafkaTrigger::default());
        // typed_config trims values and treats an empty one as absent.
        let blank = metadata(&[("lagThreshold", "  "), ("offsetResetPolicy", "")]);
        assert_eq!(
            KafkaTrigger::from_metadata(&blank).unwrap(),
            KafkaTrigger::default()
        );
        let spaced = metadata(&[("lagThreshold", " 4500 "), ("allowIdleConsumers", " TRUE ")]);
        let t = KafkaTrigger::from_metadata(&spaced).unwrap();
        assert_eq!((t.lag_threshold, t.allow_idle_consumers), (4500.0, true));
    }

    #[test]
    fn metadata_thresholds_are_int64_and_booleans_go_parse_bool() {
        // LagThreshold and ActivationLagThreshold are int64, set through json.Unmarshal;
        // booleans through strconv.ParseBool.
        for bad in ["4500.5", "10.0", "1e3", "+5", "05", "lots", "\"5\""] {
            let err =
                KafkaTrigger::from_metadata(&metadata(&[("lagThreshold", bad)])).expect_err(bad);
            assert!(
                err.contains("\"lagThreshold\"") && err.contains("whole number"),
                "{err}"
            );
        }
        let err = KafkaTrigger::from_metadata(&metadata(&[("activationLagThreshold", "0.5")]))
            .unwrap_err();
        assert!(err.contains("activationLagThreshold"), "{err}");
        for (text, value) in [("1", true), ("t", true), ("True", true), ("F", false)] {
            let t =
                KafkaTrigger::from_metadata(&metadata(&[("excludePersistentLag", text)])).unwrap();
            assert_eq!(t.exclude_persistent_lag, value, "{text}");
        }
        for bad in ["yes", "on", "tRUE"] {
            let err =
                KafkaTrigger::from_metadata(&metadata(&[("scaleToZeroOnInvalidOffset", bad)]))
                    .expect_err(bad);
            assert!(err.contains("scaleToZeroOnInvalidOffset"), "{err}");
        }
    }

    #[test]
    fn metadata_validate_rejects_what_keda_rejects() {
        // kafkaMetadata.Validate, message for message.
        let cases: &[(&[(&str, &str)], &str)] = &[
            (
                &[("lagThreshold", "0")],
                "\"lagThreshold\" must be positive number",
            ),
            (
                &[("lagThreshold", "-5")],
                "\"lagThreshold\" must be positive number",
            ),
            (
                &[("activationLagThreshold", "-1")],
                "\"activationLagThreshold\" must be a non-negative number",
            ),
            (
                &[
                    ("topic", "t"),
                    ("allowIdleConsumers", "true"),
                    ("limitToPartitionsWithLag", "true"),
                ],
                "allowIdleConsumers and limitToPartitionsWithLag cannot be set simultaneously",
            ),
            (
                &[
                    ("topic", "t"),
                    ("limitToPartitionsWithLag", "true"),
                    ("ensureEvenDistributionOfPartitions", "true"),
                ],
                "limitToPartitionsWithLag and ensureEvenDistributionOfPartitions cannot be set simultaneously",
            ),
            (
                &[("limitToPartitionsWithLag", "true")],
                "topic must be specified when using limitToPartitionsWithLag",
            ),
            (
                &[("ensureEvenDistributionOfPartitions", "true")],
                "topic must be specified when using ensureEvenDistributionOfPartitions",
            ),
            (
                &[("fullMetadata", "false")],
                "topic must be specified when fullMetadata is false",
            ),
            (
                &[("offsetResetPolicy", "Earliest")],
                "\"offsetResetPolicy\" value \"Earliest\" must be one of",
            ),
            (&[("tls", "on")], "\"tls\" value \"on\" must be one of"),
            (
                &[("topic", "t"), ("partitionLimitation", "1-2-3")],
                "invalid partition limitation range: 1-2-3",
            ),
            (
                &[("topic", "t"), ("partitionLimitation", "0,,2")],
                "invalid partition limitation: ",
            ),
        ];
        for (pairs, expected) in cases {
            let err = KafkaTrigger::from_metadata(&metadata(pairs)).expect_err(expected);
            assert!(err.contains(expected), "{pairs:?}: {err}");
        }
        // allowIdleConsumers with ensureEvenDistributionOfPartitions is accepted.
        let ok = metadata(&[
            ("topic", "t"),
            ("allowIdleConsumers", "true"),
            ("ensureEvenDistributionOfPartitions", "true"),
        ]);
        assert!(KafkaTrigger::from_metadata(&ok).is_ok());
    }

    #[test]
    fn metadata_requires_bootstrap_servers_and_consumer_group() {
        // Both are required (triggerMetadata or resolvedEnv through `<key>FromEnv`).
        let only_group: BTreeMap<String, String> =
            [("consumerGroup".to_string(), "g".to_string())].into();
        let err = KafkaTrigger::from_metadata(&only_group).unwrap_err();
        assert!(err.contains("\"bootstrapServers\""), "{err}");
        let from_env: BTreeMap<String, String> = [
            ("bootstrapServersFromEnv", "KAFKA_BOOTSTRAP_SERVERS"),
            ("consumerGroup", "g"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert!(KafkaTrigger::from_metadata(&from_env).is_ok());
    }

    #[test]
    fn partition_limitation_is_parsed_like_keda_and_needs_a_topic() {
        // parsePartitionLimitation: numbers and inclusive ranges, spaces trimmed; Validate
        // drops the limitation when no topic is given.
        let t = KafkaTrigger::from_metadata(&metadata(&[
            ("topic", "t"),
            ("partitionLimitation", " 0 , 2 - 4,7"),
        ]))
        .unwrap();
        assert_eq!(t.partition_limitation, Some(vec![0..=0, 2..=4, 7..=7]));
        assert!(t.counts_partition(3) && !t.counts_partition(5));
        let no_topic =
            KafkaTrigger::from_metadata(&metadata(&[("partitionLimitation", "0")])).unwrap();
        assert_eq!(no_topic.partition_limitation, None);
    }

    #[test]
    fn offset_reset_policy_lists_pass_kedas_enum_check_but_are_refused_here() {
        // typed_config checks each comma-separated piece against the enum, so KEDA takes
        // "latest,earliest" and then applies neither policy; ebb says so instead.
        let err =
            KafkaTrigger::from_metadata(&metadata(&[("offsetResetPolicy", "latest,earliest")]))
                .unwrap_err();
        assert!(err.contains("neither latest nor earliest"), "{err}");
    }

    #[test]
    fn earliest_retained_lag_is_floored_at_zero() {
        // getLagForPartition (v2.21.0): `lag := max(0, latestOffset-earliestOffset)`. The
        // earliest offsets are asked for after the latest ones, so retention can move the
        // start past the end already sampled; that partition counts 0 and has no lag.
        let earliest = KafkaTrigger {
            offset_reset_policy: OffsetResetPolicy::Earliest,
            allow_idle_consumers: true,
            ..trigger(10.0)
        };
        let p = [
            PartitionOffsets {
                log_start: 130.0,
                log_end: 100.0,
                committed: None,
            },
            PartitionOffsets {
                log_start: 0.0,
                log_end: 20.0,
                committed: None,
            },
        ];
        let m = KafkaScaler::new(earliest.clone()).poll(&p);
        assert_eq!((m.value, m.total_lag, m.active), (20.0, 20.0, true));
        let with_lag = KafkaTrigger {
            allow_idle_consumers: false,
            limit_to_partitions_with_lag: true,
            ..earliest
        };
        // One partition with lag: 20 / 10 = 2 > 1, capped at 10.
        assert_eq!(KafkaScaler::new(with_lag).poll(&p).value, 10.0);
    }

    #[test]
    fn metadata_version_is_parsed_like_sarama() {
        // parseKafkaMetadata: `sarama.ParseKafkaVersion(meta.VersionStr)` refuses what it
        // cannot read ("error parsing kafka version"); at least 5 characters, `0.a.b.c`
        // before 1.0, `a.b.c` after, numbers that fit a uint.
        for good in [
            "1.0.0", "3.9.0", "99.0.0", "3.09.0", "0.10.2.0", " 2.8.1 ", "",
        ] {
            let t = KafkaTrigger::from_metadata(&metadata(&[("version", good)]));
            assert!(t.is_ok(), "{good:?}: {t:?}");
        }
        for bad in [
            "abc",
            "3.9",
            "3.9.0.1",
            "0.10.2",
            "01.2.3",
            "v3.9.0",
            "3.9.-1",
            "3.+9.0",
            "18446744073709551616.0.0",
        ] {
            let err = KafkaTrigger::from_metadata(&metadata(&[("version", bad)])).expect_err(bad);
            assert!(err.contains("error parsing kafka version"), "{bad}: {err}");
        }
    }

    fn lag(total: f64) -> impl FnMut() -> Vec<PartitionOffsets> {
        move || parts(&[(total, Some(0.0))])
    }

    #[test]
    fn keda_activates_from_zero_and_scales_to_zero_after_the_cooldown() {
        // executor: scale from zero when active; to zero when inactive past cooldownPeriod.
        let spec = ScaledObjectSpec {
            polling_interval: Duration::from_secs(30),
            cooldown_period: Duration::from_secs(300),
            trigger: KafkaTrigger {
                lag_threshold: 100.0,
                ..Default::default()
            },
            ..Default::default()
        };
        let mut keda = Keda::new(spec);
        let s = Duration::from_secs;
        assert_eq!(keda.step(s(0), 0, lag(0.0)), None);
        let up = keda.step(s(30), 0, lag(50.0)).expect("activates");
        assert_eq!(up.replicas, 1);
        assert!(up.reason.starts_with("KEDA: activated"));
        // Lag gone at 60 s; the last active poll was at 30 s.
        for t in (60..330).step_by(15) {
            assert_eq!(
                keda.step(s(t), 1, lag(0.0)),
                None,
                "at {t}s the HPA keeps minReplicas 1"
            );
        }
        let down = keda.step(s(330), 1, lag(0.0)).expect("cooldown over");
        assert_eq!(down.replicas, 0);
    }

    #[test]
    fn between_one_and_max_the_hpa_decides_at_its_sync_period() {
        let spec = ScaledObjectSpec {
            trigger: KafkaTrigger {
                lag_threshold: 100.0,
                allow_idle_consumers: true,
                ..Default::default()
            },
            ..Default::default()
        };
        let mut keda = Keda::new(spec);
        let s = Duration::from_secs;
        let d = keda.step(s(0), 1, lag(1000.0)).expect("HPA scales up");
        // Default behavior: max(1 + 4, 1 × 2) = 5.
        assert_eq!(d.replicas, 5);
        assert!(d.reason.starts_with("HPA:"));
        assert_eq!(
            keda.step(s(10), 5, lag(1000.0)),
            None,
            "next HPA sync is at 15 s"
        );
        assert_eq!(keda.step(s(15), 5, lag(1000.0)).unwrap().replicas, 10);
    }
}
