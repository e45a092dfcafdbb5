//! `ebb keda-scaler`: ebb-rate inside KEDA. A gRPC server of KEDA's external scaler protocol
//! (`proto/externalscaler.proto`). For each ScaledObject that calls, it reads the group's
//! lag and the topic's arrival rate from Kafka, runs ebb-rate on them
//! ([`ebb_scaling::external`]) and answers the replica count as an `AverageValue` metric
//! with a target of 1 per replica (so the HPA's arithmetic gives that count), and IsActive
//! as "at least one replica". Decisions and their inputs are logged and exported on
//! `/metrics`, labelled with the ScaledObject.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use ebb_core::admin::{Admin, AdminError};
use ebb_core::http::{Probes, serve, standard_routes};
use ebb_core::kafka::KafkaOptions;
use ebb_core::lag::LagProbe;
use ebb_scaling::external::{Answer, METRIC_NAME, ScalerMetadata, TARGET_PER_REPLICA, Tracker};
use ebb_scaling::keda::PartitionOffsets;
use ebb_scaling::policy::Inputs;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;
use tokio_stream::Stream;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tonic::{Request, Response, Status};

use crate::args::{KafkaArgs, UsageError, parse_duration};
use crate::signals::StopSignals;

/// The protocol's messages and service, generated from `proto/externalscaler.proto`.
pub mod proto {
    tonic::include_proto!("externalscaler");
}

use proto::external_scaler_server::{ExternalScaler, ExternalScalerServer};
use proto::{
    GetMetricSpecResponse, GetMetricsRequest, GetMetricsResponse, IsActiveResponse, MetricSpec,
    MetricValue, ScaledObjectRef,
};

/// Serve ebb-rate to KEDA: an external scaler (KEDA's `external` or `external-push`
/// trigger) that answers each ScaledObject's replica count from its group's lag and its
/// topic's arrival rate. The trigger's metadata names the topic, group and ebb-rate's
/// settings (topic, group, capacityPerReplica, targetDrainSeconds, headroom, ...; see the
/// README); the ScaledObject's metricType must be AverageValue. capacityPerReplica is
/// used as given, not capped by the partitions a replica owns: with `ebb consume
/// --ordering key` a replica runs --key-lanes batches per owned partition (up to
/// --max-in-flight), so its capacity can exceed one batch per partition; the replica count
/// stays capped by the topic's partitions.
#[derive(Args)]
pub struct KedaScalerArgs {
    /// Address of the gRPC server KEDA calls (the trigger's scalerAddress).
    #[arg(long, env = "EBB_KEDA_SCALER_ADDR", default_value = "127.0.0.1:9090")]
    addr: SocketAddr,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, env = "EBB_METRICS_ADDR", default_value = "127.0.0.1:9091")]
    metrics_addr: SocketAddr,
    /// Certificate chain (PEM) to serve gRPC over TLS, with --tls-key; the trigger then
    /// sets enableTLS: "true" and KEDA verifies it against its caCert.
    #[arg(long, env = "EBB_KEDA_SCALER_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --tls-cert.
    #[arg(long, env = "EBB_KEDA_SCALER_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// CA (PEM) that KEDA's client certificate must be signed by (mutual TLS); unset: any
    /// client may call.
    #[arg(long, env = "EBB_KEDA_SCALER_TLS_CLIENT_CA", requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,
    /// Calls within this long of a ScaledObject's last Kafka reading reuse its answer.
    #[arg(long, env = "EBB_KEDA_SCALER_MIN_READ_INTERVAL", default_value = "1s",
          value_parser = parse_duration)]
    min_read_interval: Duration,
    /// A ScaledObject's first call reads Kafka twice, this far apart, to measure the
    /// arrival rate.
    #[arg(long, env = "EBB_KEDA_SCALER_RATE_BASELINE", default_value = "1s",
          value_parser = parse_duration)]
    rate_baseline: Duration,
    /// StreamIsActive (external-push triggers): how often to re-evaluate and push a change.
    #[arg(long, env = "EBB_KEDA_SCALER_STREAM_INTERVAL", default_value = "5s",
          value_parser = parse_duration)]
    stream_interval: Duration,
    #[command(flatten)]
    kafka: KafkaArgs,
}

/// `scaled_object` label: "namespace/name".
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ObjectLabel {
    scaled_object: String,
}

/// `scaled_object` and `direction` labels of the decisions counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    scaled_object: String,
    direction: &'static str,
}

/// `method` and `code` labels of the calls counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    method: &'static str,
    code: String,
}

#[derive(Default)]
struct ScalerMetrics {
    desired: Family<ObjectLabel, Gauge>,
    uncapped: Family<ObjectLabel, Gauge>,
    active: Family<ObjectLabel, Gauge>,
    lag: Family<ObjectLabel, Gauge<f64, AtomicU64>>,
    arrival_rate: Family<ObjectLabel, Gauge<f64, AtomicU64>>,
    needed_rate: Family<ObjectLabel, Gauge<f64, AtomicU64>>,
    decisions: Family<DecisionLabels, Counter>,
    kafka_errors: Family<ObjectLabel, Counter>,
    calls: Family<CallLabels, Counter>,
}

impl ScalerMetrics {
    fn register(registry: &mut Registry) -> Arc<Self> {
        let m = Arc::new(ScalerMetrics::default());
        let r = registry.sub_registry_with_prefix("ebb_keda_scaler");
        r.register(
            "desired_replicas",
            "Replicas ebb-rate asks for (the metric served to KEDA)",
            m.desired.clone(),
        );
        r.register(
            "uncapped_replicas",
            "Replicas the inputs call for before the partition and maxReplicas caps",
            m.uncapped.clone(),
        );
        r.register(
            "active",
            "1 when IsActive answers true (ebb-rate wants at least one replica)",
            m.active.clone(),
        );
        r.register(
            "lag_records",
            "The group's total lag at the last reading",
            m.lag.clone(),
        );
        r.register(
            "arrival_rate",
            "Messages per second arriving on the topic, the rate ebb-rate sizes for",
            m.arrival_rate.clone(),
        );
        r.register(
            "needed_rate",
            "Arrival rate x headroom + lag / target drain time, in messages per second",
            m.needed_rate.clone(),
        );
        r.register(
            "decisions",
            "Changes of the replica count asked for, by direction",
            m.decisions.clone(),
        );
        r.register(
            "kafka_errors",
            "Evaluations that could not read the group's offsets from Kafka",
            m.kafka_errors.clone(),
        );
        r.register(
            "calls",
            "gRPC calls from KEDA, by method and status code",
            m.calls.clone(),
        );
        m
    }

    fn record(&self, object: &str, answer: &Answer) {
        let label = ObjectLabel {
            scaled_object: object.to_string(),
        };
        self.desired
            .get_or_create(&label)
            .set(answer.replicas as i64);
        self.active.get_or_create(&label).set(answer.active as i64);
        self.lag.get_or_create(&label).set(answer.lag);
        self.arrival_rate
            .get_or_create(&label)
            .set(answer.arrival_rate);
        if let Some(explanation) = &answer.explanation {
            self.uncapped
                .get_or_create(&label)
                .set(explanation.uncapped_replicas as i64);
            if let Inputs::EbbRate(inputs) = &explanation.inputs {
                self.needed_rate
                    .get_or_create(&label)
                    .set(inputs.needed_rate());
            }
        }
    }

    fn call(&self, method: &'static str, code: tonic::Code) {
        self.calls
            .get_or_create(&CallLabels {
                method,
                code: format!("{code:?}"),
            })
            .inc();
    }
}

/// One ScaledObject's state: its metadata as last seen, ebb-rate, the Kafka reader and the
/// last answer.
struct Object {
    raw: BTreeMap<String, String>,
    tracker: Tracker,
    probe: Arc<LagProbe>,
    last: Option<(Instant, Answer)>,
}

struct Scaler {
    kafka: KafkaOptions,
    started: Instant,
    min_read_interval: Duration,
    rate_baseline: Duration,
    stream_interval: Duration,
    objects: std::sync::Mutex<HashMap<String, Arc<tokio::sync::Mutex<Option<Object>>>>>,
    metrics: Arc<ScalerMetrics>,
}

fn object_name(r: &ScaledObjectRef) -> String {
    format!("{}/{}", r.namespace, r.name)
}

fn kafka_status(name: &str, e: &AdminError) -> Status {
    let message = match crate::args::admin_error_hint(e) {
        Some(hint) => format!("ScaledObject {name}: {e} ({hint})"),
        None => format!("ScaledObject {name}: {e}"),
    };
    match e {
        AdminError::UnknownTopic(_) => Status::not_found(message),
        // The scaler's principal may not read this group or topic: KEDA's fallback applies
        // until the ACLs change; other ScaledObjects are served as before.
        AdminError::Denied { .. } => Status::permission_denied(message),
        _ => Status::unavailable(message),
    }
}

impl Scaler {
    /// ebb-rate's answer for `r`, from a fresh reading of Kafka unless the last one is
    /// younger than --min-read-interval.
    async fn evaluate(&self, r: &ScaledObjectRef) -> Result<Answer, Status> {
        let name = object_name(r);
        let metadata = ScalerMetadata::parse(&r.scaler_metadata)
            .map_err(|e| Status::invalid_argument(format!("ScaledObject {name}: {e}")))?;
        let slot = {
            let mut objects = self
                .objects
                .lock()
                .map_err(|_| Status::internal("the scaler's state is poisoned; restart it"))?;
            objects.entry(name.clone()).or_default().clone()
        };
        let mut slot = slot.lock().await;
        let rebuild = slot
            .as_ref()
            .is_none_or(|object| object.raw != r.scaler_metadata);
        if rebuild {
            *slot = Some(self.track(&name, metadata).await.inspect_err(|_| {
                self.kafka_error(&name);
            })?);
            if let Some(object) = slot.as_mut() {
                object.raw = r.scaler_metadata.clone();
            }
        }
        let Some(object) = slot.as_mut() else {
            return Err(Status::internal("no state for the ScaledObject"));
        };
        if let Some((at, answer)) = &object.last
            && at.elapsed() < self.min_read_interval
        {
            return Ok(answer.clone());
        }
        let answer = self.read_and_decide(&name, object).await.inspect_err(|_| {
            self.kafka_error(&name);
        })?;
        object.last = Some((Instant::now(), answer.clone()));
        self.metrics.record(&name, &answer);
        Ok(answer)
    }

    fn kafka_error(&self, name: &str) {
        self.metrics
            .kafka_errors
            .get_or_create(&ObjectLabel {
                scaled_object: name.to_string(),
            })
            .inc();
    }

    /// Starts tracking a ScaledObject: its topic's partitions and a reader of its offsets.
    async fn track(&self, name: &str, metadata: ScalerMetadata) -> Result<Object, Status> {
        let admin = Admin::new(&self.kafka).map_err(|e| kafka_status(name, &e))?;
        let topic = admin
            .topic(&metadata.topic)
            .await
            .map_err(|e| kafka_status(name, &e))?;
        let probe = LagProbe::new(
            &self.kafka,
            &metadata.group,
            &metadata.topic,
            topic.partitions,
        )
        .map_err(|e| kafka_status(name, &e))?;
        tracing::info!(
            "ScaledObject {name}: ebb-rate on topic {} ({} partitions), group {}, {} msg/s per replica",
            metadata.topic,
            topic.partitions,
            metadata.group,
            metadata.capacity_per_replica
        );
        Ok(Object {
            raw: BTreeMap::new(),
            tracker: Tracker::new(metadata, topic.partitions as u32),
            probe: Arc::new(probe),
            last: None,
        })
    }

    async fn read(
        &self,
        name: &str,
        probe: &Arc<LagProbe>,
    ) -> Result<Vec<PartitionOffsets>, Status> {
        let probe = probe.clone();
        let rows = tokio::task::spawn_blocking(move || probe.offsets())
            .await
            .map_err(|e| Status::internal(format!("offset reader failed: {e}")))?
            .map_err(|e| kafka_status(name, &e))?;
        Ok(rows
            .iter()
            .map(|r| PartitionOffsets {
                log_start: r.log_start.unwrap_or(0) as f64,
                log_end: r.log_end as f64,
                committed: r.committed.map(|c| c as f64),
            })
            .collect())
    }

    async fn read_and_decide(&self, name: &str, object: &mut Object) -> Result<Answer, Status> {
        if object.tracker.needs_baseline() {
            let first = self.read(name, &object.probe).await?;
            object.tracker.baseline(
                self.started.elapsed(),
                first.iter().map(|p| p.log_end).sum(),
            );
            tokio::time::sleep(self.rate_baseline).await;
        }
        let partitions = self.read(name, &object.probe).await?;
        let from = object.tracker.replicas();
        let answer = object.tracker.observe(self.started.elapsed(), &partitions);
        if let Some(decision) = &answer.decision {
            let direction = if decision.replicas > from {
                "up"
            } else {
                "down"
            };
            let why = answer
                .explanation
                .as_ref()
                .map_or(decision.reason.clone(), |e| {
                    e.reason(from, decision.replicas)
                });
            tracing::info!(
                "ScaledObject {name}: {from} → {} replicas: {why}",
                decision.replicas
            );
            self.metrics
                .decisions
                .get_or_create(&DecisionLabels {
                    scaled_object: name.to_string(),
                    direction,
                })
                .inc();
        }
        Ok(answer)
    }

    /// Runs `call`, counting it by method and outcome, and logging failures.
    async fn counted<T>(
        &self,
        method: &'static str,
        call: impl Future<Output = Result<T, Status>>,
    ) -> Result<Response<T>, Status> {
        let result = call.await;
        match &result {
            Ok(_) => self.metrics.call(method, tonic::Code::Ok),
            Err(status) => {
                self.metrics.call(method, status.code());
                tracing::warn!("{method}: {}", status.message());
            }
        }
        result.map(Response::new)
    }
}

type ActivityStream = Pin<Box<dyn Stream<Item = Result<IsActiveResponse, Status>> + Send>>;

#[tonic::async_trait]
impl ExternalScaler for Arc<Scaler> {
    async fn is_active(
        &self,
        request: Request<ScaledObjectRef>,
    ) -> Result<Response<IsActiveResponse>, Status> {
        self.counted("IsActive", async {
            let answer = self.evaluate(request.get_ref()).await?;
            Ok(IsActiveResponse {
                result: answer.active,
            })
        })
        .await
    }

    type StreamIsActiveStream = ActivityStream;

    async fn stream_is_active(
        &self,
        request: Request<ScaledObjectRef>,
    ) -> Result<Response<ActivityStream>, Status> {
        let r = request.into_inner();
        // Bad metadata fails the call itself rather than the stream.
        ScalerMetadata::parse(&r.scaler_metadata).map_err(|e| {
            self.metrics
                .call("StreamIsActive", tonic::Code::InvalidArgument);
            Status::invalid_argument(format!("ScaledObject {}: {e}", object_name(&r)))
        })?;
        self.metrics.call("StreamIsActive", tonic::Code::Ok);
        let (sender, receiver) = tokio::sync::mpsc::channel(1);
        let scaler = self.clone();
        tokio::spawn(async move {
            let mut last = None;
            loop {
                let item = scaler.evaluate(&r).await.map(|a| a.active);
                let changed = match (&item, last) {
                    (Ok(active), Some(previous)) => *active != previous,
                    _ => true,
                };
                if changed {
                    if let Ok(active) = item {
                        last = Some(active);
                    }
                    let message = item.map(|result| IsActiveResponse { result });
                    if sender.send(message).await.is_err() {
                        return; // KEDA closed the stream.
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(scaler.stream_interval) => {}
                    _ = sender.closed() => return,
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(receiver),
        )))
    }

    async fn get_metric_spec(
        &self,
        request: Request<ScaledObjectRef>,
    ) -> Result<Response<GetMetricSpecResponse>, Status> {
        self.counted("GetMetricSpec", async {
            let r = request.get_ref();
            ScalerMetadata::parse(&r.scaler_metadata).map_err(|e| {
                Status::invalid_argument(format!("ScaledObject {}: {e}", object_name(r)))
            })?;
            Ok(GetMetricSpecResponse {
                metric_specs: vec![MetricSpec {
                    metric_name: METRIC_NAME.to_string(),
                    target_size: TARGET_PER_REPLICA as i64,
                    target_size_float: TARGET_PER_REPLICA,
                }],
            })
        })
        .await
    }

    async fn get_metrics(
        &self,
        request: Request<GetMetricsRequest>,
    ) -> Result<Response<GetMetricsResponse>, Status> {
        self.counted("GetMetrics", async {
            let r = request.get_ref();
            let object = r
                .scaled_object_ref
                .as_ref()
                .ok_or_else(|| Status::invalid_argument("GetMetrics without a scaledObjectRef"))?;
            let answer = self.evaluate(object).await?;
            let value = answer.replicas as f64 * TARGET_PER_REPLICA;
            Ok(GetMetricsResponse {
                metric_values: vec![MetricValue {
                    metric_name: if r.metric_name.is_empty() {
                        METRIC_NAME.to_string()
                    } else {
                        r.metric_name.clone()
                    },
                    metric_value: value as i64,
                    metric_value_float: value,
                }],
            })
        })
        .await
    }
}

fn read_pem(path: &PathBuf, setting: &str) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path)
        .map_err(|e| UsageError(format!("cannot read {setting} {}: {e}", path.display())).into())
}

fn tls_config(args: &KedaScalerArgs) -> anyhow::Result<Option<ServerTlsConfig>> {
    let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) else {
        return Ok(None);
    };
    let identity = Identity::from_pem(
        read_pem(cert, "--tls-cert / EBB_KEDA_SCALER_TLS_CERT")?,
        read_pem(key, "--tls-key / EBB_KEDA_SCALER_TLS_KEY")?,
    );
    let mut config = ServerTlsConfig::new().identity(identity);
    if let Some(ca) = &args.tls_client_ca {
        config = config.client_ca_root(Certificate::from_pem(read_pem(
            ca,
            "--tls-client-ca / EBB_KEDA_SCALER_TLS_CLIENT_CA",
        )?));
    }
    Ok(Some(config))
}

pub async fn run(args: KedaScalerArgs) -> anyhow::Result<ExitCode> {
    if args.stream_interval.is_zero() {
        return Err(UsageError(
            "--stream-interval / EBB_KEDA_SCALER_STREAM_INTERVAL must be > 0".into(),
        )
        .into());
    }
    let kafka = args.kafka.options()?;
    let tls = tls_config(&args)?;

    let mut registry = Registry::default();
    let metrics = ScalerMetrics::register(&mut registry);
    let probes = Arc::new(Probes::default());
    let http = serve(
        args.metrics_addr,
        standard_routes(Arc::new(registry), probes.clone()),
        "--metrics-addr / EBB_METRICS_ADDR",
    )
    .await?;

    let listener = tokio::net::TcpListener::bind(args.addr).await.map_err(|e| {
        anyhow::anyhow!(
            "cannot listen on {} (--addr / EBB_KEDA_SCALER_ADDR): {e}; choose another address or free the port",
            args.addr
        )
    })?;
    let bound = listener.local_addr()?;
    tracing::info!("Listening on grpc://{bound} (--addr / EBB_KEDA_SCALER_ADDR)");
    let scaler = Arc::new(Scaler {
        kafka,
        started: Instant::now(),
        min_read_interval: args.min_read_interval,
        rate_baseline: args.rate_baseline,
        stream_interval: args.stream_interval,
        objects: Default::default(),
        metrics,
    });
    let mut server = Server::builder();
    if let Some(tls) = tls {
        server = server
            .tls_config(tls)
            .context("bad --tls-cert / --tls-key / --tls-client-ca")?;
    }
    let mut stop_signals = StopSignals::new()?;
    let shutdown = async move {
        let signal = stop_signals.recv().await;
        tracing::info!("{signal}: stopping");
    };
    tracing::info!(
        "KEDA external scaler (gRPC{}) on {bound}; HTTP on {http}",
        if args.tls_cert.is_some() { ", TLS" } else { "" }
    );
    probes.set_ready(true);
    let result = server
        .add_service(ExternalScalerServer::new(scaler))
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            shutdown,
        )
        .await;
    probes.set_stopping();
    result.context("the gRPC server stopped")?;
    tracing::info!("Stopped");
    Ok(ExitCode::SUCCESS)
}
