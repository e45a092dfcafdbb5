//! Amazon MSK IAM authentication: the SASL/OAUTHBEARER token MSK accepts is a SigV4-presigned
//! `kafka-cluster:Connect` URL for `kafka.<region>.amazonaws.com`, base64url-encoded. This
//! module signs it and finds the credentials: the `AWS_ACCESS_KEY_ID` /
//! `AWS_SECRET_ACCESS_KEY` / `AWS_SESSION_TOKEN` variables, or the container credentials
//! endpoint that EKS Pod Identity and ECS provide.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// How long a token is valid, as the MSK signers set it.
pub const TOKEN_LIFETIME: Duration = Duration::from_secs(900);
const SERVICE: &str = "kafka-cluster";

/// Why no MSK IAM token could be made.
#[derive(Debug, thiserror::Error)]
pub enum MskIamError {
    /// Neither the variables nor a container credentials endpoint are set.
    #[error(
        "no AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or run with EKS Pod Identity (AWS_CONTAINER_CREDENTIALS_FULL_URI)"
    )]
    NoCredentials,
    /// The container authorization token file cannot be read.
    #[error("cannot read AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE {path}: {source}")]
    TokenFile {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The container credentials endpoint did not answer.
    #[error("container credentials: {0}")]
    Endpoint(#[from] crate::http::HttpError),
    /// The endpoint answered with an error status.
    #[error("container credentials: {url} answered HTTP {status}")]
    Status {
        /// The endpoint.
        url: String,
        /// Its status code.
        status: u16,
    },
    /// The endpoint's reply is not the credentials document.
    #[error("container credentials from {url}: unexpected reply: {source}")]
    Reply {
        /// The endpoint.
        url: String,
        /// What did not parse.
        #[source]
        source: serde_json::Error,
    },
    /// librdkafka did not take the token.
    #[error("librdkafka refused the MSK IAM token: {0}")]
    Refused(String),
}

/// AWS credentials.
#[derive(Clone, PartialEq, Eq)]
pub struct AwsCredentials {
    /// Access key id.
    pub access_key_id: String,
    /// Secret access key.
    pub secret_access_key: String,
    /// Session token of temporary credentials.
    pub session_token: Option<String>,
}

impl std::fmt::Debug for AwsCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsCredentials")
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

/// MSK IAM for one region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MskIam {
    /// The cluster's region (`AWS_REGION`).
    pub region: String,
}

/// A signed token and when it expires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MskToken {
    /// The base64url token for SASL/OAUTHBEARER.
    pub token: String,
    /// Expiry, milliseconds since the epoch.
    pub expires_ms: i64,
}

impl MskIam {
    /// The token in the form librdkafka's OAUTHBEARER refresh wants.
    pub fn oauth_token(&self) -> Result<rdkafka::client::OAuthToken, Box<dyn std::error::Error>> {
        let token = self.token()?;
        Ok(rdkafka::client::OAuthToken {
            token: token.token,
            principal_name: "ebb".into(),
            lifetime_ms: token.expires_ms,
        })
    }

    /// A token signed now with the credentials found in the environment.
    pub fn token(&self) -> Result<MskToken, MskIamError> {
        let credentials = find_credentials()?;
        Ok(self.token_with(&credentials, SystemTime::now()))
    }

    /// A token signed at `now` with `credentials`.
    pub fn token_with(&self, credentials: &AwsCredentials, now: SystemTime) -> MskToken {
        let host = format!("kafka.{}.amazonaws.com", self.region);
        let empty_payload = hex(&Sha256::digest(b""));
        let query = presign(
            credentials,
            &Presign {
                host: &host,
                path: "/",
                service: SERVICE,
                region: &self.region,
                params: &[("Action", "kafka-cluster:Connect")],
                payload_hash: &empty_payload,
                expires: TOKEN_LIFETIME,
                now,
            },
        );
        let url = format!(
            "https://{host}/?{query}&User-Agent={}",
            encode(concat!("ebb/", env!("CARGO_PKG_VERSION")))
        );
        let signed_at = now
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        MskToken {
            token: base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(url),
            expires_ms: (signed_at + TOKEN_LIFETIME.as_secs() as i64) * 1000,
        }
    }
}

/// What to presign.
struct Presign<'a> {
    host: &'a str,
    path: &'a str,
    service: &'a str,
    region: &'a str,
    params: &'a [(&'a str, &'a str)],
    payload_hash: &'a str,
    expires: Duration,
    now: SystemTime,
}

/// SigV4 query-string signing (presigning): returns the canonical query string with
/// `X-Amz-Signature` appended.
fn presign(credentials: &AwsCredentials, p: &Presign<'_>) -> String {
    let stamp = humantime::format_rfc3339_seconds(p.now).to_string();
    // 2013-05-24T00:00:00Z → 20130524T000000Z
    let amz_date: String = stamp
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect();
    let date = &amz_date[..8];
    let scope = format!("{date}/{}/{}/aws4_request", p.region, p.service);
    let credential = format!("{}/{scope}", credentials.access_key_id);
    let expires = p.expires.as_secs().to_string();
    let mut params: Vec<(String, String)> = p
        .params
        .iter()
        .map(|(k, v)| (encode(k), encode(v)))
        .collect();
    params.push((encode("X-Amz-Algorithm"), encode("AWS4-HMAC-SHA256")));
    params.push((encode("X-Amz-Credential"), encode(&credential)));
    params.push((encode("X-Amz-Date"), encode(&amz_date)));
    params.push((encode("X-Amz-Expires"), encode(&expires)));
    if let Some(token) = &credentials.session_token {
        params.push((encode("X-Amz-Security-Token"), encode(token)));
    }
    params.push((encode("X-Amz-SignedHeaders"), encode("host")));
    params.sort();
    let query = params
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    let canonical_request = format!(
        "GET\n{}\n{query}\nhost:{}\n\nhost\n{}",
        p.path, p.host, p.payload_hash
    );
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        hex(&Sha256::digest(canonical_request.as_bytes()))
    );
    let mut key = hmac(
        format!("AWS4{}", credentials.secret_access_key).as_bytes(),
        date.as_bytes(),
    );
    for part in [p.region, p.service, "aws4_request"] {
        key = hmac(&key, part.as_bytes());
    }
    let signature = hex(&hmac(&key, string_to_sign.as_bytes()));
    format!("{query}&X-Amz-Signature={signature}")
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    // HMAC accepts keys of any length; this cannot fail.
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// RFC 3986 percent-encoding of everything but unreserved characters, as SigV4 wants.
fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Credentials from the environment variables, else from the container credentials
/// endpoint (EKS Pod Identity, ECS task roles).
pub fn find_credentials() -> Result<AwsCredentials, MskIamError> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    if let (Some(access_key_id), Some(secret_access_key)) =
        (var("AWS_ACCESS_KEY_ID"), var("AWS_SECRET_ACCESS_KEY"))
    {
        return Ok(AwsCredentials {
            access_key_id,
            secret_access_key,
            session_token: var("AWS_SESSION_TOKEN"),
        });
    }
    let url = match (
        var("AWS_CONTAINER_CREDENTIALS_FULL_URI"),
        var("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"),
    ) {
        (Some(full), _) => full,
        (None, Some(relative)) => format!("http://169.254.170.2{relative}"),
        (None, None) => return Err(MskIamError::NoCredentials),
    };
    let authorization = match var("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE") {
        Some(path) => Some(
            std::fs::read_to_string(&path)
                .map_err(|source| MskIamError::TokenFile {
                    path: path.clone(),
                    source,
                })?
                .trim()
                .to_string(),
        ),
        None => var("AWS_CONTAINER_AUTHORIZATION_TOKEN"),
    };
    let body = http_get(&url, authorization.as_deref())?;
    parse_container_credentials(&body).map_err(|source| MskIamError::Reply { url, source })
}

fn parse_container_credentials(body: &str) -> Result<AwsCredentials, serde_json::Error> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Reply {
        access_key_id: String,
        secret_access_key: String,
        token: Option<String>,
    }
    let reply: Reply = serde_json::from_str(body)?;
    Ok(AwsCredentials {
        access_key_id: reply.access_key_id,
        secret_access_key: reply.secret_access_key,
        session_token: reply.token,
    })
}

/// A GET of the credentials endpoint (link-local, plain HTTP), returning the body. Blocking:
/// librdkafka asks for tokens on its own thread.
fn http_get(url: &str, authorization: Option<&str>) -> Result<String, MskIamError> {
    match crate::http::get(url, authorization, Duration::from_secs(5))? {
        (200, body) => Ok(body),
        (status, _) => Err(MskIamError::Status {
            url: url.to_string(),
            status,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    fn example_credentials() -> AwsCredentials {
        AwsCredentials {
            access_key_id: "AKIAIOSFODNN7EXAMPLE".into(),
            secret_access_key: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".into(),
            session_token: None,
        }
    }

    #[test]
    fn presigning_matches_the_aws_documentation_example() {
        // "Authenticating Requests: Using Query Parameters (AWS Signature Version 4)", S3 API
        // reference: GET examplebucket/test.txt, 2013-05-24, us-east-1, 86400 s.
        let now = UNIX_EPOCH + Duration::from_secs(1_369_353_600);
        let query = presign(
            &example_credentials(),
            &Presign {
                host: "examplebucket.s3.amazonaws.com",
                path: "/test.txt",
                service: "s3",
                region: "us-east-1",
                params: &[],
                payload_hash: "UNSIGNED-PAYLOAD",
                expires: Duration::from_secs(86_400),
                now,
            },
        );
        assert!(query.starts_with("X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Date=20130524T000000Z&X-Amz-Expires=86400&X-Amz-SignedHeaders=host"), "{query}");
        assert!(
            query.ends_with(
                "&X-Amz-Signature=aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404"
            ),
            "{query}"
        );
    }

    #[test]
    fn the_token_is_a_base64url_presigned_connect_url() {
        let iam = MskIam {
            region: "us-east-1".into(),
        };
        let mut credentials = example_credentials();
        credentials.session_token = Some("session/token+1".into());
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let token = iam.token_with(&credentials, now);
        assert!(
            !token.token.contains('=') && !token.token.contains('+') && !token.token.contains('/')
        );
        let url = String::from_utf8(
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(&token.token)
                .unwrap(),
        )
        .unwrap();
        assert!(url.starts_with("https://kafka.us-east-1.amazonaws.com/?Action=kafka-cluster%3AConnect&X-Amz-Algorithm=AWS4-HMAC-SHA256"), "{url}");
        assert!(url.contains("X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20231114%2Fus-east-1%2Fkafka-cluster%2Faws4_request"), "{url}");
        assert!(
            url.contains("&X-Amz-Expires=900&")
                && url.contains("&X-Amz-Security-Token=session%2Ftoken%2B1&"),
            "{url}"
        );
        assert!(
            url.contains("&X-Amz-Signature=")
                && url.ends_with(&format!("&User-Agent=ebb%2F{}", env!("CARGO_PKG_VERSION"))),
            "{url}"
        );
        assert_eq!(token.expires_ms, (1_700_000_000 + 900) * 1000);
    }

    #[test]
    fn container_credentials_are_read_from_the_endpoint_reply() {
        let body = r#"{"AccessKeyId":"ASIA1","SecretAccessKey":"s3cr3t","Token":"tok","Expiration":"2026-11-26T04:00:00Z"}"#;
        let c = parse_container_credentials(body).unwrap();
        assert_eq!(
            (c.access_key_id.as_str(), c.session_token.as_deref()),
            ("ASIA1", Some("tok"))
        );
        assert!(parse_container_credentials("{}").is_err());
        assert!(
            !format!("{c:?}").contains("s3cr3t"),
            "secrets stay out of logs"
        );
    }

    #[test]
    fn container_credentials_over_plain_http() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            // The request may arrive in several reads: read up to its blank line.
            let mut request = Vec::new();
            let mut chunk = [0u8; 1024];
            while !request.ends_with(b"\r\n\r\n") {
                let n = stream.read(&mut chunk).unwrap();
                if n == 0 {
                    break;
                }
                request.extend_from_slice(&chunk[..n]);
            }
            let request = String::from_utf8_lossy(&request).to_string();
            stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n{\"AccessKeyId\":\"A\",\"SecretAccessKey\":\"S\",\"Token\":\"T\"}").unwrap();
            request
        });
        let body = http_get(
            &format!("http://127.0.0.1:{port}/v1/credentials"),
            Some("secret-auth"),
        )
        .unwrap();
        let request = server.join().unwrap();
        assert!(
            request.starts_with("GET /v1/credentials HTTP/1.1\r\n"),
            "{request}"
        );
        assert!(
            request
                .to_ascii_lowercase()
                .contains("authorization: secret-auth\r\n"),
            "{request}"
        );
        assert_eq!(
            parse_container_credentials(&body).unwrap().access_key_id,
            "A"
        );
    }
}
