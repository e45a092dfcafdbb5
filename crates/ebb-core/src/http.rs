//! The HTTP side every ebb server has: `/metrics` (Prometheus), `/healthz`, `/readyz`,
//! plus whatever routes a command adds (the producer's `/rate`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing;
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
pub async fn serve(addr: SocketAddr, router: Router, setting: &str) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        anyhow::anyhow!(
            "cannot listen on {addr} ({setting}): {e}; choose another address or free the port"
        )
    })?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            tracing::error!("HTTP server on {bound} stopped: {e}");
        }
    });
    Ok(bound)
}

/// A plain HTTP/1.0 GET of an `http://host:port/path` URL, returning the status code and
/// the body. For the local endpoints ebb itself talks to (workers' `/readyz` and
/// `/metrics`, the AWS container-credentials endpoint); `timeout` bounds each step.
pub fn get(
    url: &str,
    authorization: Option<&str>,
    timeout: std::time::Duration,
) -> Result<(u16, String), String> {
    use std::io::{Read, Write};
    use std::net::{TcpStream, ToSocketAddrs};

    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("{url}: only http:// endpoints are supported"))?;
    let (authority, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_string()), |(a, p)| (a, format!("/{p}")));
    let address = if authority.contains(':') {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    let socket = address
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| format!("{url}: cannot resolve {address}"))?;
    let mut stream = TcpStream::connect_timeout(&socket, timeout)
        .map_err(|e| format!("cannot connect to {address}: {e}"))?;
    let _ = stream.set_read_timeout(Some(timeout));
    let _ = stream.set_write_timeout(Some(timeout));
    let auth = authorization.map_or(String::new(), |a| format!("Authorization: {a}\r\n"));
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: {authority}\r\n{auth}\r\n"
    )
    .map_err(|e| format!("cannot send to {address}: {e}"))?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|e| format!("cannot read from {address}: {e}"))?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("{url}: malformed HTTP reply"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("{url}: malformed HTTP status line"))?;
    Ok((status, body.to_string()))
}
