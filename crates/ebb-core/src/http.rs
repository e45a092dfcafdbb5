//! The HTTP side every ebb server has: `/metrics` (Prometheus), `/healthz`, `/readyz`,
//! plus whatever routes a command adds (the producer's `/rate`); and the clients ebb reads
//! such endpoints with: [`Client`] (async) and [`get`] (blocking).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{self, Uri};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client as LegacyClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use prometheus_client::registry::Registry;

/// Liveness and readiness as the process itself judges them.
#[derive(Debug, Default)]
pub struct Probes {
    ready: AtomicBool,
    stopping: AtomicBool,
    failing: AtomicUsize,
}

impl Probes {
    /// Marks the process ready (or not) to do its work.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// Marks the process as shutting down: never ready again.
    pub fn set_stopping(&self) {
        self.stopping.store(true, Ordering::Relaxed);
    }

    /// Something the process depends on (its sink's database, say) started failing; not
    /// ready until each such failure has [`Probes::recovered`].
    pub fn failed(&self) {
        self.failing.fetch_add(1, Ordering::Relaxed);
    }

    /// One failure reported through [`Probes::failed`] is over.
    pub fn recovered(&self) {
        let _ = self
            .failing
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    }

    /// Ready, not shutting down, and nothing it depends on failing.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
            && !self.stopping.load(Ordering::Relaxed)
            && self.failing.load(Ordering::Relaxed) == 0
    }
}

#[derive(Clone)]
struct Shared {
    registry: Arc<Registry>,
    probes: Arc<Probes>,
}

/// The standard routes; merge a command's own routes into it with [`Router::merge`].
pub fn standard_routes(registry: Arc<Registry>, probes: Arc<Probes>) -> Router {
    Router::new()
        .route("/metrics", routing::get(metrics))
        .route("/healthz", routing::get(|| async { "ok\n" }))
        .route("/readyz", routing::get(readyz))
        .with_state(Shared { registry, probes })
}

async fn metrics(State(shared): State<Shared>) -> impl IntoResponse {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &shared.registry) {
        Ok(()) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        ),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("cannot encode metrics: {e}\n"),
        ),
    }
}

async fn readyz(State(shared): State<Shared>) -> impl IntoResponse {
    if shared.probes.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

/// Binds `addr` and serves `router` in the background until the process ends. Binding
/// happens before this returns, so a taken port is reported at once, naming `setting`.
///
/// Logs `Listening on http://ADDR (SETTING)` with the address actually bound, so that a
/// caller who asked for port 0 (tests, several processes on one machine) learns the port.
pub async fn serve(addr: SocketAddr, router: Router, setting: &str) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        anyhow::anyhow!(
            "cannot listen on {addr} ({setting}): {e}; choose another address or free the port"
        )
    })?;
    let bound = listener.local_addr()?;
    tracing::info!("Listening on http://{bound} ({setting})");
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            tracing::error!("HTTP server on {bound} stopped: {e}");
        }
    });
    Ok(bound)
}

/// Why an HTTP GET of one of ebb's own endpoints (or the AWS container credentials
/// endpoint) got no answer.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The URL is not an `http://host:port/path` URL.
    #[error("\"{url}\" is not an http:// URL: {reason}")]
    BadUrl {
        /// The URL.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Connecting, sending or reading failed.
    #[error("GET {url}: {reason}")]
    Failed {
        /// The URL.
        url: String,
        /// The client's reason.
        reason: String,
    },
    /// No whole answer within the time allowed.
    #[error("GET {url}: no answer within {timeout:?}")]
    TimedOut {
        /// The URL.
        url: String,
        /// The time allowed.
        timeout: Duration,
    },
}

/// A blocking GET of a plain `http://` URL, returning the status code and the body; for
/// callers on a thread of their own (librdkafka's token refresh, tests). `timeout` bounds
/// the whole exchange. Built on `ureq` without TLS: every endpoint it serves is local or
/// link-local.
pub fn get(
    url: &str,
    authorization: Option<&str>,
    timeout: Duration,
) -> Result<(u16, String), HttpError> {
    let failed = |e: ureq::Error| match e {
        ureq::Error::Timeout(_) => HttpError::TimedOut {
            url: url.to_string(),
            timeout,
        },
        other => HttpError::Failed {
            url: url.to_string(),
            reason: other.to_string(),
        },
    };
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        // Straight to the endpoint: a proxy from the environment cannot reach a pod's
        // link-local credentials endpoint or a worker on 127.0.0.1.
        .proxy(None)
        .build()
        .into();
    let mut request = agent.get(url);
    if let Some(authorization) = authorization {
        request = request.header("Authorization", authorization);
    }
    let mut response = request.call().map_err(failed)?;
    let status = response.status().as_u16();
    let body = response.body_mut().read_to_string().map_err(failed)?;
    Ok((status, body))
}

/// An asynchronous HTTP/1 client for plain `http://` URLs (workers' `/readyz` and
/// `/metrics`), on hyper's client with its connection pool. Cheap to clone.
#[derive(Clone)]
pub struct Client {
    inner: LegacyClient<HttpConnector, Empty<Bytes>>,
}

impl Default for Client {
    fn default() -> Self {
        Client::new()
    }
}

impl Client {
    /// A client; it connects on the first request. Needs a Tokio runtime.
    pub fn new() -> Self {
        Client {
            inner: LegacyClient::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// GETs `url`, returning the status code and the body; `timeout` bounds the whole
    /// exchange.
    pub async fn get(&self, url: &str, timeout: Duration) -> Result<(u16, String), HttpError> {
        let uri: Uri = url
            .parse()
            .map_err(|e: http::uri::InvalidUri| HttpError::BadUrl {
                url: url.to_string(),
                reason: e.to_string(),
            })?;
        let failed = |reason: String| HttpError::Failed {
            url: url.to_string(),
            reason,
        };
        let exchange = async {
            let response = self
                .inner
                .get(uri)
                .await
                .map_err(|e| failed(error_chain(&e)))?;
            let status = response.status().as_u16();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| failed(e.to_string()))?
                .to_bytes();
            Ok((status, String::from_utf8_lossy(&body).into_owned()))
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| HttpError::TimedOut {
                url: url.to_string(),
                timeout,
            })?
    }
}

/// An error and its causes, "a: b: c" (hyper's client error alone says only "client error
/// (Connect)").
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}
