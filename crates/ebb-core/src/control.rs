//! The producer's control endpoint, `/rate`, and who may use it.
//!
//! `GET /rate` shows the profile in force, like `/metrics` it only reads. `PUT` or
//! `POST /rate` replaces the profile, so it changes what the producer does: it needs the
//! control token (`Authorization: Bearer <token>`) when one is set, and without one it is
//! served only on a loopback listener, where only this machine reaches it. A producer in a
//! cluster (the Helm chart binds `0.0.0.0`) therefore refuses rate changes unless it was
//! given a token. Bodies are small profiles: anything over [`MAX_BODY_BYTES`] is refused
//! with 413 before it is read whole, a profile that does not parse with 400.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::routing::get;
use ebb_scaling::RateProfile;
use sha2::{Digest, Sha256};

use crate::producer::RateControl;

/// The largest rate-change body accepted; a profile is a few dozen bytes.
pub const MAX_BODY_BYTES: usize = 4096;

/// Who may change the rate.
#[derive(Clone)]
pub enum RateChanges {
    /// Requests carrying this bearer token (its SHA-256, so the token itself is not kept
    /// around or compared byte by byte in variable time).
    Token([u8; 32]),
    /// Anyone who reaches the listener: only for loopback listeners.
    Loopback,
    /// Nobody: a listener beyond loopback with no token set.
    Refused,
}

impl RateChanges {
    /// The policy for a listener on `bound` with an optional control token.
    pub fn for_listener(bound: SocketAddr, token: Option<&str>) -> Self {
        match token {
            Some(token) => RateChanges::Token(Sha256::digest(token.as_bytes()).into()),
            None if bound.ip().is_loopback() => RateChanges::Loopback,
            None => RateChanges::Refused,
        }
    }

    /// Whether a request with these headers may change the rate; the refusal's status and
    /// text otherwise.
    fn admit(&self, headers: &HeaderMap) -> Result<(), (StatusCode, &'static str)> {
        match self {
            RateChanges::Loopback => Ok(()),
            RateChanges::Refused => Err((
                StatusCode::FORBIDDEN,
                "rate changes are off on a listener beyond loopback without a control token: configure the producer's control token and send Authorization: Bearer <token>\n",
            )),
            RateChanges::Token(expected) => {
                let offered = headers
                    .get(header::AUTHORIZATION)
                    .and_then(|value| value.to_str().ok())
                    .and_then(|value| value.strip_prefix("Bearer "))
                    .map(|token| Sha256::digest(token.trim().as_bytes()));
                match offered {
                    Some(digest) if same(&digest, expected) => Ok(()),
                    _ => Err((
                        StatusCode::UNAUTHORIZED,
                        "rate changes need the control token: send Authorization: Bearer <token>\n",
                    )),
                }
            }
        }
    }
}

/// Compares two digests in time independent of where they differ.
fn same(a: &[u8], b: &[u8; 32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[derive(Clone)]
struct Control {
    rate: Arc<RateControl>,
    changes: RateChanges,
}

/// `/rate`: `GET` shows the profile; `PUT`/`POST` with a profile as the body (e.g. `5000`,
/// or `0..5000@1m,5000`) replaces it at once, for those `changes` admits.
pub fn rate_routes(rate: Arc<RateControl>, changes: RateChanges) -> Router {
    async fn show(State(control): State<Control>) -> String {
        format!("{}\n", control.rate.get())
    }
    async fn change(
        State(control): State<Control>,
        headers: HeaderMap,
        body: String,
    ) -> (StatusCode, String) {
        if let Err((status, text)) = control.changes.admit(&headers) {
            return (status, text.to_string());
        }
        match body.trim().parse::<RateProfile>() {
            Ok(profile) => {
                let text = profile.to_string();
                tracing::info!("Rate changed over HTTP to {text}");
                control.rate.set(profile);
                (StatusCode::OK, format!("{text}\n"))
            }
            Err(e) => (StatusCode::BAD_REQUEST, format!("{e}\n")),
        }
    }
    Router::new()
        .route("/rate", get(show).put(change).post(change))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(Control { rate, changes })
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::time::Duration;

    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::http::{Probes, standard_routes};

    /// Serves `/rate` (and the standard routes) on a loopback port; returns its address.
    async fn serve(changes: RateChanges) -> (SocketAddr, Arc<RateControl>) {
        let rate = Arc::new(RateControl::new("100".parse().unwrap()));
        let routes = standard_routes(
            Arc::new(prometheus_client::registry::Registry::default()),
            Arc::new(Probes::default()),
        )
        .merge(rate_routes(rate.clone(), changes));
        let addr = crate::http::serve("127.0.0.1:0".parse().unwrap(), routes, "test")
            .await
            .unwrap();
        (addr, rate)
    }

    /// One raw exchange: the status of the answer (0 if the connection closed without one).
    /// With `half_close` the request's end is also signalled by closing the write side, so
    /// a lying Content-Length cannot hold the server; hyper then may drop the connection
    /// without an answer when it sees that end before the answer is written, so a check
    /// that needs an answer sends a complete request without it.
    fn exchange(addr: SocketAddr, request: &[u8], half_close: bool) -> u16 {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        // The server may answer (413, 400) and close before it read everything.
        let _ = stream.write_all(request);
        if half_close {
            let _ = stream.shutdown(std::net::Shutdown::Write);
        }
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
        std::str::from_utf8(&answer[..answer.len().min(12)])
            .ok()
            .and_then(|line| line.split_whitespace().nth(1))
            .and_then(|code| code.parse().ok())
            .unwrap_or(0)
    }

    #[test]
    fn a_listener_beyond_loopback_without_a_token_refuses_changes() {
        let any: SocketAddr = "0.0.0.0:8001".parse().unwrap();
        let local: SocketAddr = "127.0.0.1:8001".parse().unwrap();
        let v6: SocketAddr = "[::1]:8001".parse().unwrap();
        assert!(matches!(
            RateChanges::for_listener(any, None),
            RateChanges::Refused
        ));
        assert!(matches!(
            RateChanges::for_listener(local, None),
            RateChanges::Loopback
        ));
        assert!(matches!(
            RateChanges::for_listener(v6, None),
            RateChanges::Loopback
        ));
        assert!(matches!(
            RateChanges::for_listener(any, Some("t")),
            RateChanges::Token(_)
        ));
        let refused = RateChanges::for_listener(any, None).admit(&HeaderMap::new());
        assert_eq!(refused.unwrap_err().0, StatusCode::FORBIDDEN);
    }

    /// One request through the router itself (no socket): its status.
    async fn call(router: &Router, body: String, authorization: Option<&str>) -> u16 {
        use tower::ServiceExt;
        let mut request = axum::http::Request::put("/rate");
        if let Some(authorization) = authorization {
            request = request.header(header::AUTHORIZATION, authorization);
        }
        let request = request.body(axum::body::Body::from(body)).unwrap();
        let response = router.clone().oneshot(request).await.unwrap();
        response.status().as_u16()
    }

    #[tokio::test]
    async fn changes_need_the_token_and_a_small_well_formed_profile() {
        let rate = Arc::new(RateControl::new("100".parse().unwrap()));
        let changes = RateChanges::for_listener("0.0.0.0:0".parse().unwrap(), Some("s3cret"));
        let router = rate_routes(rate.clone(), changes);
        let token = Some("Bearer s3cret");
        let outcome = [
            call(&router, "500".into(), None).await,
            call(&router, "500".into(), Some("Bearer wrong")).await,
            call(&router, "500".into(), Some("Basic czNjcmV0")).await,
            call(&router, "lots".into(), token).await,
            call(&router, "9".repeat(MAX_BODY_BYTES + 1), token).await,
            call(&router, "500".into(), token).await,
        ];
        assert_eq!(outcome, [401, 401, 401, 400, 413, 200]);
        assert_eq!(rate.get().to_string(), "500");
    }

    /// 300 malformed, oversized and random requests: each is answered with a 4xx, or with a
    /// 200 only to a GET or HEAD (the read-only routes), or dropped without an answer;
    /// never a 5xx or anything else. Over 100 get a 4xx, none changes the rate, and the
    /// server still answers afterwards.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn fuzzed_requests_get_4xx_and_never_break_the_server() {
        let (addr, rate) = serve(RateChanges::for_listener(
            "0.0.0.0:0".parse().unwrap(),
            Some("s3cret"),
        ))
        .await;
        let statuses = tokio::task::spawn_blocking(move || {
            let mut rng = StdRng::seed_from_u64(17);
            let methods = ["GET", "PUT", "POST", "DELETE", "PATCH", "HEAD", "OPTIONS", "FOO", ""];
            let paths = ["/rate", "/metrics", "/healthz", "/readyz", "/", "/rate/../rate", "/%zz", "*"];
            (0..300)
                .map(|i| {
                    // Only a GET or HEAD may succeed (a read-only route).
                    let mut reads = false;
                    let request: Vec<u8> = match i % 4 {
                        // Random bytes.
                        0 => (0..rng.random_range(0..2048)).map(|_| rng.random()).collect(),
                        // A request line and headers with a random body and a lying length.
                        1 => {
                            let body: Vec<u8> =
                                (0..rng.random_range(0..20_000)).map(|_| rng.random()).collect();
                            let length = rng.random_range(0..30_000);
                            let method = methods[rng.random_range(0..methods.len())];
                            reads = matches!(method, "GET" | "HEAD");
                            let mut r = format!(
                                "{} {} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Length: {length}\r\nConnection: close\r\n\r\n",
                                method,
                                paths[rng.random_range(0..paths.len())],
                                rng.random::<u32>(),
                            )
                            .into_bytes();
                            r.extend(body);
                            r
                        }
                        // Chunked bodies, some never ending, some huge.
                        2 => format!(
                            "PUT /rate HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n{}\r\n",
                            rng.random_range(0..100_000),
                            "1".repeat(rng.random_range(0..5000)),
                        )
                        .into_bytes(),
                        // Huge or broken headers.
                        _ => format!(
                            "POST /rate HTTP/1.1\r\nHost: x\r\nX-{}: {}\r\n\r\n",
                            "h".repeat(rng.random_range(0..3000)),
                            "v".repeat(rng.random_range(0..100_000)),
                        )
                        .into_bytes(),
                    };
                    (exchange(addr, &request, true), reads)
                })
                .collect::<Vec<(u16, bool)>>()
        })
        .await
        .unwrap();
        let unexpected: Vec<(usize, u16)> = statuses
            .iter()
            .enumerate()
            .filter(|(_, (status, reads))| {
                !(*status == 0 || (400..500).contains(status) || (*status == 200 && *reads))
            })
            .map(|(i, (status, _))| (i, *status))
            .collect();
        assert!(unexpected.is_empty(), "(request, status): {unexpected:?}");
        assert!(
            statuses
                .iter()
                .filter(|(status, _)| (400..500).contains(status))
                .count()
                > 100,
            "{statuses:?}"
        );
        assert_eq!(
            rate.get().to_string(),
            "100",
            "no fuzzed request changed the rate"
        );
        let alive = tokio::task::spawn_blocking(move || {
            exchange(
                addr,
                b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                false,
            )
        })
        .await
        .unwrap();
        assert_eq!(alive, 200);
    }
}
