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
    /// The web identity token file cannot be read.
    #[error("cannot read AWS_WEB_IDENTITY_TOKEN_FILE {path}: {source}")]
    WebIdentityTokenFile {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A web identity token without the role to assume.
    #[error(
        "AWS_WEB_IDENTITY_TOKEN_FILE is set but AWS_ROLE_ARN is not: set the role to assume (EKS sets both for a service account annotated with eks.amazonaws.com/role-arn)"
    )]
    WebIdentityWithoutRole,
    /// STS could not be reached or refused the exchange.
    #[error("STS AssumeRoleWithWebIdentity at {url}: {reason}")]
    Sts {
        /// The endpoint.
        url: String,
        /// What went wrong (STS's own error code and message when it sent one).
        reason: String,
    },
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
#[derive(Clone, PartialEq, Eq)]
pub struct MskIam {
    /// The cluster's region (`AWS_REGION`).
    pub region: String,
    /// How long each token is valid: [`TOKEN_LIFETIME`], as MSK's own signers set it
    /// (shorter only in tests of the refresh schedule).
    pub lifetime: Duration,
    /// Credentials to sign with instead of finding them in the environment (a caller
    /// that has its own; tests). `None`: [`find_credentials`] at every token.
    pub credentials: Option<AwsCredentials>,
}

/// A signed token and when it expires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MskToken {
    /// The base64url token for SASL/OAUTHBEARER.
    pub token: String,
    /// Expiry, milliseconds since the epoch.
    pub expires_ms: i64,
}

impl std::fmt::Debug for MskIam {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MskIam")
            .field("region", &self.region)
            .field("lifetime", &self.lifetime)
            .finish_non_exhaustive()
    }
}

impl MskIam {
    /// MSK IAM for `region`, with MSK's token lifetime and credentials from the
    /// environment.
    pub fn new(region: impl Into<String>) -> Self {
        MskIam {
            region: region.into(),
            lifetime: TOKEN_LIFETIME,
            credentials: None,
        }
    }

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
        let credentials = match &self.credentials {
            Some(credentials) => credentials.clone(),
            None => find_credentials(&self.region, &|name| {
                std::env::var(name).ok().filter(|v| !v.is_empty())
            })?,
        };
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
                expires: self.lifetime,
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
            expires_ms: signed_at * 1000 + self.lifetime.as_millis() as i64,
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

/// Credentials as the AWS SDKs find them, reading variables through `var`: the key
/// variables, else a web identity exchanged with STS (IRSA), else the container
/// credentials endpoint (EKS Pod Identity, ECS task roles). `region` picks the regional
/// STS endpoint unless `AWS_ENDPOINT_URL_STS` names one.
pub fn find_credentials(
    region: &str,
    var: &dyn Fn(&str) -> Option<String>,
) -> Result<AwsCredentials, MskIamError> {
    if let (Some(access_key_id), Some(secret_access_key)) =
        (var("AWS_ACCESS_KEY_ID"), var("AWS_SECRET_ACCESS_KEY"))
    {
        return Ok(AwsCredentials {
            access_key_id,
            secret_access_key,
            session_token: var("AWS_SESSION_TOKEN"),
        });
    }
    if let Some(path) = var("AWS_WEB_IDENTITY_TOKEN_FILE") {
        let role_arn = var("AWS_ROLE_ARN").ok_or(MskIamError::WebIdentityWithoutRole)?;
        let token = std::fs::read_to_string(&path)
            .map_err(|source| MskIamError::WebIdentityTokenFile {
                path: path.clone(),
                source,
            })?
            .trim()
            .to_string();
        let endpoint = var("AWS_ENDPOINT_URL_STS")
            .unwrap_or_else(|| format!("https://sts.{region}.amazonaws.com"));
        let session = var("AWS_ROLE_SESSION_NAME").unwrap_or_else(|| {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            format!("ebb-{}", now.as_secs())
        });
        return assume_role_with_web_identity(&endpoint, &role_arn, &session, &token);
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

/// STS `AssumeRoleWithWebIdentity` (an unsigned call: the web identity token is the
/// proof) at `endpoint`: temporary credentials for `role_arn`. Blocking, like the rest
/// of the token refresh, which runs on librdkafka's thread.
fn assume_role_with_web_identity(
    endpoint: &str,
    role_arn: &str,
    session: &str,
    web_identity_token: &str,
) -> Result<AwsCredentials, MskIamError> {
    let url = format!("{}/", endpoint.trim_end_matches('/'));
    let failed = |reason: String| MskIamError::Sts {
        url: url.clone(),
        reason,
    };
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(10)))
        .http_status_as_error(false)
        .build()
        .into();
    let form = [
        ("Action", "AssumeRoleWithWebIdentity"),
        ("Version", "2011-06-15"),
        ("RoleArn", role_arn),
        ("RoleSessionName", session),
        ("WebIdentityToken", web_identity_token),
    ];
    let mut response = agent
        .post(&url)
        .header("Accept", "application/xml")
        .send_form(form)
        // ureq's errors name the URL and the transport failure, never the form.
        .map_err(|e| failed(e.to_string()))?;
    let status = response.status().as_u16();
    let body = response
        .body_mut()
        .read_to_string()
        .map_err(|e| failed(e.to_string()))?;
    parse_sts_reply(status, &body).map_err(failed)
}

/// The credentials in STS's XML reply, or STS's error code and message.
fn parse_sts_reply(status: u16, body: &str) -> Result<AwsCredentials, String> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Reply {
        assume_role_with_web_identity_result: ReplyResult,
    }
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct ReplyResult {
        credentials: Credentials,
    }
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Credentials {
        access_key_id: String,
        secret_access_key: String,
        session_token: String,
    }
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct ErrorReply {
        error: StsError,
    }
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct StsError {
        code: String,
        message: Option<String>,
    }
    if status != 200 {
        return Err(match quick_xml::de::from_str::<ErrorReply>(body) {
            Ok(reply) => format!(
                "HTTP {status}, {}: {}",
                reply.error.code,
                reply.error.message.unwrap_or_default()
            ),
            Err(_) => format!("HTTP {status}"),
        });
    }
    let reply: Reply = quick_xml::de::from_str(body)
        .map_err(|e| format!("unexpected reply (no credentials in it): {e}"))?;
    let credentials = reply.assume_role_with_web_identity_result.credentials;
    Ok(AwsCredentials {
        access_key_id: credentials.access_key_id,
        secret_access_key: credentials.secret_access_key,
        session_token: Some(credentials.session_token),
    })
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
        let iam = MskIam::new("us-east-1");
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

    /// A one-shot HTTP server on a loopback port: it answers `status` and `body` to the
    /// first request and hands the request (head and body) back.
    fn stub(status: &'static str, body: &'static str) -> (u16, std::thread::JoinHandle<String>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut request = Vec::new();
            let mut chunk = [0u8; 4096];
            loop {
                let text = String::from_utf8_lossy(&request).to_string();
                if let Some((head, rest)) = text.split_once("\r\n\r\n") {
                    let length = head
                        .lines()
                        .find_map(|l| {
                            let (name, value) = l.split_once(':')?;
                            name.eq_ignore_ascii_case("content-length")
                                .then(|| value.trim().parse::<usize>().ok())?
                        })
                        .unwrap_or(0);
                    if rest.len() >= length {
                        break;
                    }
                }
                let n = stream.read(&mut chunk).unwrap();
                if n == 0 {
                    break;
                }
                request.extend_from_slice(&chunk[..n]);
            }
            let reply = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            stream.write_all(reply.as_bytes()).unwrap();
            String::from_utf8_lossy(&request).to_string()
        });
        (port, server)
    }

    /// The environment of a pod with IRSA, its STS endpoint at `port`.
    fn irsa_environment(
        port: u16,
        token_file: &std::path::Path,
    ) -> impl Fn(&str) -> Option<String> {
        let token_file = token_file.display().to_string();
        move |name: &str| match name {
            "AWS_WEB_IDENTITY_TOKEN_FILE" => Some(token_file.clone()),
            "AWS_ROLE_ARN" => Some("arn:aws:iam::123456789012:role/ebb-consumer".into()),
            "AWS_ROLE_SESSION_NAME" => Some("ebb-test".into()),
            "AWS_ENDPOINT_URL_STS" => Some(format!("http://127.0.0.1:{port}")),
            _ => None,
        }
    }

    fn token_file(contents: &str) -> std::path::PathBuf {
        let path = std::env::temp_dir().join(format!(
            "ebb-web-identity-{}-{}",
            std::process::id(),
            contents.len()
        ));
        std::fs::write(&path, contents).unwrap();
        path
    }

    #[test]
    fn a_web_identity_is_exchanged_with_sts_for_credentials() {
        let (port, server) = stub(
            "200 OK",
            r#"<AssumeRoleWithWebIdentityResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <AssumeRoleWithWebIdentityResult>
    <SubjectFromWebIdentityToken>system:serviceaccount:ebb:ebb</SubjectFromWebIdentityToken>
    <Credentials>
      <AccessKeyId>ASIAIRSA</AccessKeyId>
      <SecretAccessKey>irsa-secret</SecretAccessKey>
      <SessionToken>irsa-session</SessionToken>
      <Expiration>2026-11-27T12:00:00Z</Expiration>
    </Credentials>
  </AssumeRoleWithWebIdentityResult>
  <ResponseMetadata><RequestId>1</RequestId></ResponseMetadata>
</AssumeRoleWithWebIdentityResponse>"#,
        );
        let file = token_file("eyJ.web-identity.sig\n");
        let credentials = find_credentials("eu-west-1", &irsa_environment(port, &file)).unwrap();
        assert_eq!(credentials.access_key_id, "ASIAIRSA");
        assert_eq!(credentials.secret_access_key, "irsa-secret");
        assert_eq!(credentials.session_token.as_deref(), Some("irsa-session"));
        // The request's shape, as STS documents it: a form POST, unsigned.
        let request = server.join().unwrap();
        let (head, body) = request.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("POST / HTTP/1.1\r\n"), "{head}");
        assert!(
            head.to_ascii_lowercase()
                .contains("content-type: application/x-www-form-urlencoded"),
            "{head}"
        );
        assert!(
            !head.to_ascii_lowercase().contains("authorization:"),
            "{head}"
        );
        let mut params: Vec<&str> = body.split('&').collect();
        params.sort_unstable();
        assert_eq!(
            params,
            [
                "Action=AssumeRoleWithWebIdentity",
                "RoleArn=arn%3Aaws%3Aiam%3A%3A123456789012%3Arole%2Febb-consumer",
                "RoleSessionName=ebb-test",
                "Version=2011-06-15",
                "WebIdentityToken=eyJ.web-identity.sig",
            ]
        );
        let _ = std::fs::remove_file(file);
    }

    #[test]
    fn sts_refusals_name_stss_reason_and_never_the_token() {
        let (port, server) = stub(
            "400 Bad Request",
            "<ErrorResponse><Error><Type>Sender</Type><Code>InvalidIdentityToken</Code><Message>Couldn't retrieve verification key from your identity provider</Message></Error><RequestId>2</RequestId></ErrorResponse>",
        );
        let file = token_file("eyJ.secret-web-identity-token.sig");
        let error = find_credentials("eu-west-1", &irsa_environment(port, &file))
            .unwrap_err()
            .to_string();
        server.join().unwrap();
        assert!(error.contains("InvalidIdentityToken"), "{error}");
        assert!(error.contains(&format!("127.0.0.1:{port}")), "{error}");
        assert!(!error.contains("secret-web-identity-token"), "{error}");
        let _ = std::fs::remove_file(file);

        let without_role = |name: &str| {
            (name == "AWS_WEB_IDENTITY_TOKEN_FILE").then(|| "/var/run/token".to_string())
        };
        assert!(matches!(
            find_credentials("eu-west-1", &without_role),
            Err(MskIamError::WebIdentityWithoutRole)
        ));
        let nothing = |_: &str| None;
        assert!(matches!(
            find_credentials("eu-west-1", &nothing),
            Err(MskIamError::NoCredentials)
        ));
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
