//! Kafka client settings shared by every ebb command: where the brokers are and how to
//! authenticate, turned into librdkafka properties in one place.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::client::{ClientContext, OAuthToken};
use rdkafka::config::RDKafkaLogLevel;

use crate::msk_iam::MskIam;

/// The `--sasl-mechanism` that selects Amazon MSK IAM (OAUTHBEARER with a SigV4 token).
pub const MSK_IAM: &str = "AWS_MSK_IAM";

/// How ebb reaches Kafka. Mirrors the user-facing options one to one. Its `Debug` output
/// never shows the SASL password.
#[derive(Clone)]
pub struct KafkaOptions {
    /// Comma-separated `host:port` list (`bootstrap.servers`).
    pub bootstrap_servers: String,
    /// `plaintext`, `ssl`, `sasl_plaintext` or `sasl_ssl` (`security.protocol`).
    pub security_protocol: SecurityProtocol,
    /// SASL mechanism when the protocol is SASL: `PLAIN`, `SCRAM-SHA-256`, `SCRAM-SHA-512`
    /// or [`MSK_IAM`].
    pub sasl_mechanism: Option<String>,
    /// AWS region of the MSK cluster, for [`MSK_IAM`] (`AWS_REGION`).
    pub aws_region: Option<String>,
    /// SASL user name.
    pub sasl_username: Option<String>,
    /// SASL password.
    pub sasl_password: Option<String>,
    /// CA bundle for TLS (`ssl.ca.location`); the system store when absent.
    pub ssl_ca_location: Option<String>,
    /// Client certificate (PEM) for mutual TLS (`ssl.certificate.location`).
    pub ssl_certificate_location: Option<String>,
    /// The client certificate's private key (PEM) (`ssl.key.location`).
    pub ssl_key_location: Option<String>,
    /// How long one-shot requests (metadata, admin) may take before ebb gives up.
    pub request_timeout: Duration,
    /// Extra librdkafka properties (`-X key=value`), applied last so they win.
    pub extra: Vec<(String, String)>,
}

/// Kafka's `security.protocol` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecurityProtocol {
    /// No TLS, no SASL (the local broker).
    Plaintext,
    /// TLS without SASL.
    Ssl,
    /// SASL without TLS.
    SaslPlaintext,
    /// SASL over TLS (MSK with SCRAM).
    SaslSsl,
}

impl SecurityProtocol {
    /// The librdkafka spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            SecurityProtocol::Plaintext => "plaintext",
            SecurityProtocol::Ssl => "ssl",
            SecurityProtocol::SaslPlaintext => "sasl_plaintext",
            SecurityProtocol::SaslSsl => "sasl_ssl",
        }
    }
}

impl std::fmt::Display for SecurityProtocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for SecurityProtocol {
    type Err = SettingError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "plaintext" => Ok(SecurityProtocol::Plaintext),
            "ssl" => Ok(SecurityProtocol::Ssl),
            "sasl_plaintext" => Ok(SecurityProtocol::SaslPlaintext),
            "sasl_ssl" => Ok(SecurityProtocol::SaslSsl),
            other => Err(SettingError::UnknownSecurityProtocol(other.to_string())),
        }
    }
}

/// Where a consumer group without a committed offset starts reading a partition
/// (librdkafka's `auto.offset.reset`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OffsetReset {
    /// At the oldest record kept: nothing already in the topic is skipped.
    #[default]
    Earliest,
    /// At the log end: only records produced from now on.
    Latest,
}

impl OffsetReset {
    /// The librdkafka value of `auto.offset.reset`; the one place it is spelled.
    pub fn as_librdkafka(self) -> &'static str {
        match self {
            OffsetReset::Earliest => "earliest",
            OffsetReset::Latest => "latest",
        }
    }
}

/// A Kafka client setting that is malformed, or that does not go with another. Worded by
/// concept ("the AWS region"); the command line names its own flags for them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingError {
    /// Not one of Kafka's `security.protocol` values.
    #[error("unknown security protocol \"{0}\"; use plaintext, ssl, sasl_plaintext or sasl_ssl")]
    UnknownSecurityProtocol(String),
    /// MSK IAM signs for a region, and none is given.
    #[error("SASL mechanism AWS_MSK_IAM needs the AWS region of the MSK cluster")]
    MskIamWithoutRegion,
    /// MSK IAM runs over SASL with TLS only.
    #[error("SASL mechanism AWS_MSK_IAM needs security protocol sasl_ssl, not {0}")]
    MskIamWithoutSaslSsl(SecurityProtocol),
    /// An extra librdkafka property not written `key=value`.
    #[error("\"{0}\" is not a librdkafka property written key=value, e.g. fetch.max.bytes=1048576")]
    NotKeyValue(String),
    /// librdkafka refused an extra property: an unknown name or a bad value. Holds the
    /// property's name and librdkafka's reason.
    #[error("librdkafka refused the property {0}: {1}")]
    BadProperty(String, String),
}

impl Default for KafkaOptions {
    fn default() -> Self {
        KafkaOptions {
            bootstrap_servers: "127.0.0.1:9092".into(),
            security_protocol: SecurityProtocol::Plaintext,
            sasl_mechanism: None,
            aws_region: None,
            sasl_username: None,
            sasl_password: None,
            ssl_ca_location: None,
            ssl_certificate_location: None,
            ssl_key_location: None,
            request_timeout: Duration::from_secs(10),
            extra: Vec::new(),
        }
    }
}

/// librdkafka's own log level: what the log filter lets through for target `librdkafka`,
/// but never below warnings (which ebb's filter may still drop).
fn librdkafka_log_level() -> RDKafkaLogLevel {
    if tracing::enabled!(target: "librdkafka", tracing::Level::DEBUG) {
        RDKafkaLogLevel::Debug
    } else if tracing::enabled!(target: "librdkafka", tracing::Level::INFO) {
        RDKafkaLogLevel::Info
    } else {
        RDKafkaLogLevel::Warning
    }
}

impl KafkaOptions {
    /// Options for a broker at `bootstrap_servers` with everything else default.
    pub fn new(bootstrap_servers: impl Into<String>) -> Self {
        KafkaOptions {
            bootstrap_servers: bootstrap_servers.into(),
            ..Default::default()
        }
    }

    /// The base librdkafka configuration every ebb client starts from. librdkafka logs at
    /// warning and above unless the log filter asks for more of target `librdkafka`
    /// (`--log info,librdkafka=debug` with `-X debug=cgrp,fetch`, say).
    pub fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.bootstrap_servers)
            .set("security.protocol", self.security_protocol.as_str())
            .set(
                "socket.timeout.ms",
                self.request_timeout.as_millis().to_string(),
            )
            // Let ebb, not librdkafka, report a broker that cannot be reached.
            .set("log.connection.close", "false")
            .set_log_level(librdkafka_log_level());
        if let Some(mechanism) = &self.sasl_mechanism {
            let mechanism = if mechanism == MSK_IAM {
                "OAUTHBEARER"
            } else {
                mechanism
            };
            config.set("sasl.mechanism", mechanism);
        }
        if let Some(user) = &self.sasl_username {
            config.set("sasl.username", user);
        }
        if let Some(password) = &self.sasl_password {
            config.set("sasl.password", password);
        }
        if let Some(ca) = &self.ssl_ca_location {
            config.set("ssl.ca.location", ca);
        }
        if let Some(certificate) = &self.ssl_certificate_location {
            config.set("ssl.certificate.location", certificate);
        }
        if let Some(key) = &self.ssl_key_location {
            config.set("ssl.key.location", key);
        }
        for (key, value) in &self.extra {
            config.set(key, value);
        }
        config
    }

    /// MSK IAM, when the SASL mechanism asks for it.
    pub fn msk_iam(&self) -> Option<MskIam> {
        (self.sasl_mechanism.as_deref() == Some(MSK_IAM))
            .then(|| MskIam::new(self.aws_region.clone().unwrap_or_default()))
    }

    /// Checks settings that only make sense together; the error says which.
    pub fn validate(&self) -> Result<(), SettingError> {
        if self.sasl_mechanism.as_deref() == Some(MSK_IAM) {
            if self.aws_region.as_deref().is_none_or(str::is_empty) {
                return Err(SettingError::MskIamWithoutRegion);
            }
            if self.security_protocol != SecurityProtocol::SaslSsl {
                return Err(SettingError::MskIamWithoutSaslSsl(self.security_protocol));
            }
        }
        // librdkafka checks each property's name and value as it is set, before any client
        // exists: a bad one is a settings error now rather than a failure at connect time.
        for (key, value) in &self.extra {
            let mut probe = ClientConfig::new();
            probe.set(key, value);
            if let Err(e) = probe.create_native_config() {
                // librdkafka's reason may quote the value, which may be a secret.
                let reason = e.to_string().replace(value.as_str(), "<value>");
                return Err(SettingError::BadProperty(key.clone(), reason));
            }
        }
        Ok(())
    }

    /// The sentence to show when the brokers cannot be reached. The advice to start the
    /// local broker is given only for a local plaintext address (the local broker's kind);
    /// see [`connection_failure`] for what to say when a broker answered but refused.
    pub fn unreachable_hint(&self) -> String {
        let local = self
            .bootstrap_servers
            .split(',')
            .all(|b| b.starts_with("127.0.0.1:") || b.starts_with("localhost:"));
        if local && self.security_protocol == SecurityProtocol::Plaintext {
            let port = self.bootstrap_servers.rsplit(':').next().unwrap_or("9092");
            let env = if port == "9092" {
                String::new()
            } else {
                format!("EBB_KAFKA_PORT={port} ")
            };
            format!(
                "cannot reach Kafka at {} within {:?}; start the local broker with: {env}scripts/kafka-local start",
                self.bootstrap_servers, self.request_timeout
            )
        } else {
            format!(
                "cannot reach Kafka at {} within {:?}; check the bootstrap servers, the network and the security settings",
                self.bootstrap_servers, self.request_timeout
            )
        }
    }

    /// Who the cluster will see this client as, for messages about what it may not do:
    /// `User:<name>` for SASL, the certificate's subject for mutual TLS.
    pub fn principal(&self) -> String {
        if self.sasl_mechanism.as_deref() == Some(MSK_IAM) {
            return "the AWS IAM identity of this process".into();
        }
        if let Some(user) = &self.sasl_username
            && self.security_protocol.uses_sasl()
        {
            return format!("User:{user}");
        }
        match &self.ssl_certificate_location {
            Some(path) => match certificate_subject(path) {
                Some(subject) => format!("the client certificate {subject} ({path})"),
                None => format!("the client certificate {path}"),
            },
            None => "User:ANONYMOUS".into(),
        }
    }
}

/// A certificate file's subject, `CN=...` (the part brokers usually map to a principal).
fn certificate_subject(path: &str) -> Option<String> {
    let pem = std::fs::read(path).ok()?;
    let certificate = openssl::x509::X509::from_pem(&pem).ok()?;
    let subject = certificate
        .subject_name()
        .entries()
        .filter_map(|e| {
            let name = e.object().nid().short_name().ok()?;
            let value = String::from_utf8_lossy(e.data().as_slice());
            Some(format!("{name}={value}"))
        })
        .collect::<Vec<_>>()
        .join(",");
    (!subject.is_empty()).then_some(subject)
}

impl SecurityProtocol {
    /// Whether the protocol authenticates with SASL.
    pub fn uses_sasl(self) -> bool {
        matches!(
            self,
            SecurityProtocol::SaslPlaintext | SecurityProtocol::SaslSsl
        )
    }
}

impl std::fmt::Debug for KafkaOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaOptions")
            .field("bootstrap_servers", &self.bootstrap_servers)
            .field("security_protocol", &self.security_protocol)
            .field("sasl_mechanism", &self.sasl_mechanism)
            .field("aws_region", &self.aws_region)
            .field("sasl_username", &self.sasl_username)
            .field(
                "sasl_password",
                &self.sasl_password.as_ref().map(|_| "<redacted>"),
            )
            .field("ssl_ca_location", &self.ssl_ca_location)
            .field("ssl_certificate_location", &self.ssl_certificate_location)
            .field("ssl_key_location", &self.ssl_key_location)
            .field("request_timeout", &self.request_timeout)
            // -X may carry secrets too (sasl.password=..., ssl.key.password=...).
            .field(
                "extra",
                &self
                    .extra
                    .iter()
                    .map(|(k, _)| k.as_str())
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// Why a client's requests went unanswered, as librdkafka reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectionFailure {
    /// Nothing listens at the address (connection refused).
    Refused,
    /// A broker answered but the connection failed: TLS, authentication, a protocol
    /// mismatch. librdkafka's own words, without its broker-name prefix.
    Failed(String),
}

/// What librdkafka last said about a failed broker connection of `client`, read from the
/// client's main queue. Errors wait there for a poll, and an admin client is never polled
/// there (rdkafka polls only its admin-result queue), so this reads them when a request
/// has timed out. Authentication and TLS errors win over transport errors, and those over
/// "all brokers are down", which says nothing of why.
pub fn connection_failure<C: ClientContext>(
    client: &rdkafka::client::Client<C>,
) -> Option<ConnectionFailure> {
    use rdkafka::bindings as rd;
    use rdkafka::types::RDKafkaErrorCode;
    let mut best: Option<(u8, ConnectionFailure)> = None;
    // SAFETY: the client handle is alive for the whole call. The main queue handle is
    // released once; each event is destroyed after its error string (owned by the event)
    // has been copied.
    unsafe {
        let queue = rd::rd_kafka_queue_get_main(client.native_ptr());
        if queue.is_null() {
            return None;
        }
        loop {
            let event = rd::rd_kafka_queue_poll(queue, 0);
            if event.is_null() {
                break;
            }
            if rd::rd_kafka_event_type(event) == rd::RD_KAFKA_EVENT_ERROR {
                let code: RDKafkaErrorCode = rd::rd_kafka_event_error(event).into();
                let text = rd::rd_kafka_event_error_string(event);
                let text = if text.is_null() {
                    String::new()
                } else {
                    std::ffi::CStr::from_ptr(text)
                        .to_string_lossy()
                        .into_owned()
                };
                if let Some(ranked) = rank_connection_error(code, &text)
                    && best.as_ref().is_none_or(|(rank, _)| ranked.0 >= *rank)
                {
                    best = Some(ranked);
                }
            }
            rd::rd_kafka_event_destroy(event);
        }
        rd::rd_kafka_queue_destroy(queue);
    }
    best.map(|(_, failure)| failure)
}

/// How telling one librdkafka error is about a failed connection (higher is better), and
/// what it says; `None` for errors that say nothing of why.
fn rank_connection_error(
    code: rdkafka::types::RDKafkaErrorCode,
    text: &str,
) -> Option<(u8, ConnectionFailure)> {
    use rdkafka::types::RDKafkaErrorCode::*;
    // "sasl_ssl://127.0.0.1:9192/bootstrap: SASL authentication error: ... (after 5ms in
    // state AUTH_REQ)": the address is in ebb's own sentence, the timing is noise.
    let mut cause = text;
    if let Some(scheme) = cause.find("://")
        && let Some(colon) = cause[scheme..].find(": ")
    {
        cause = &cause[scheme + colon + 2..];
    }
    if let Some(after) = cause.rfind(" (after ")
        && cause.ends_with(')')
    {
        cause = &cause[..after];
    }
    let mut cause = cause.trim().to_string();
    // A TLS alert from the broker during the handshake is about the client's certificate:
    // none given, or one its CA did not sign. OpenSSL's words do not say so.
    if [
        "alert bad certificate",
        "alert unknown ca",
        "alert certificate required",
    ]
    .iter()
    .any(|alert| cause.contains(alert))
    {
        cause.push_str(
            "; the broker did not accept this client's certificate (none given, or not \
             signed by a CA it trusts)",
        );
    }
    // A broker that is not speaking TLS on that port (a PLAINTEXT listener) closes the
    // connection on the client's hello; librdkafka says "SSL handshake failed ... connecting
    // to a PLAINTEXT broker listener?" or, when the close comes first, only this.
    if cause.contains("SSL connection closed by peer")
        && text.contains("in state SSL_HANDSHAKE")
        && !cause.contains("PLAINTEXT")
    {
        cause.push_str(
            " during the TLS handshake; is this a PLAINTEXT listener (check the port and \
             the security protocol)?",
        );
    }
    match code {
        Authentication
        | SaslAuthenticationFailed
        | UnsupportedSASLMechanism
        | IllegalSASLState
        | SSL => Some((3, ConnectionFailure::Failed(cause))),
        BrokerTransportFailure if cause.contains("Connection refused") => {
            Some((1, ConnectionFailure::Refused))
        }
        BrokerTransportFailure => Some((2, ConnectionFailure::Failed(cause))),
        _ => None,
    }
}

/// A client context that answers librdkafka's OAUTHBEARER token refreshes with MSK IAM
/// tokens, and keeps an ACL refusal that librdkafka reports on its own (a coordinator
/// lookup for a group the client may not use) for the request that then times out to
/// name. Every ebb client embeds one.
#[derive(Debug, Clone, Default)]
pub struct AuthContext {
    /// MSK IAM, when configured.
    pub iam: Option<MskIam>,
    denial: Arc<Mutex<Option<rdkafka::types::RDKafkaErrorCode>>>,
    /// MSK IAM tokens handed to librdkafka so far.
    tokens: Arc<std::sync::atomic::AtomicU64>,
}

impl AuthContext {
    /// The context for `options`.
    pub fn new(options: &KafkaOptions) -> Self {
        AuthContext {
            iam: options.msk_iam(),
            ..AuthContext::default()
        }
    }

    /// The ACL refusal librdkafka reported outside any request's result, if any
    /// (`GroupAuthorizationFailed`, ...).
    pub fn denial(&self) -> Option<rdkafka::types::RDKafkaErrorCode> {
        *self.denial.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How many MSK IAM tokens librdkafka has been given (its first one when the client
    /// starts, then one at 80 % of each token's lifetime).
    pub fn tokens_made(&self) -> u64 {
        self.tokens.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// A fresh token, or why there is none.
    pub fn token(&self) -> Result<OAuthToken, Box<dyn std::error::Error>> {
        match &self.iam {
            Some(iam) => match iam.oauth_token() {
                Ok(token) => {
                    self.tokens
                        .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    tracing::debug!("MSK IAM: a new token, valid for {:?}", iam.lifetime);
                    Ok(token)
                }
                Err(e) => {
                    tracing::error!("MSK IAM: {e}");
                    Err(e)
                }
            },
            None => Err(
                "OAUTHBEARER needs SASL mechanism AWS_MSK_IAM (the only token source ebb has)"
                    .into(),
            ),
        }
    }
}

impl ClientContext for AuthContext {
    const ENABLE_REFRESH_OAUTH_TOKEN: bool = true;

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        match error.rdkafka_error_code() {
            // Kept for the caller's one-line error, not logged on top of it.
            Some(code) if crate::admin::is_denial(code) => {
                *self.denial.lock().unwrap_or_else(|e| e.into_inner()) = Some(code);
            }
            _ => tracing::error!("librdkafka: {error}: {reason}"),
        }
    }

    fn generate_oauth_token(
        &self,
        _config: Option<&str>,
    ) -> Result<OAuthToken, Box<dyn std::error::Error>> {
        self.token()
    }
}

impl rdkafka::consumer::ConsumerContext for AuthContext {}

/// Parses one `key=value` librdkafka property given with `-X`.
pub fn parse_property(text: &str) -> Result<(String, String), SettingError> {
    match text.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
        _ => Err(SettingError::NotKeyValue(text.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Who the cluster sees: what replay's audit lines and ACL refusals name.
    #[test]
    fn the_principal_is_the_sasl_user_the_certificate_subject_or_anonymous() {
        let mut options = KafkaOptions::default();
        assert_eq!(options.principal(), "User:ANONYMOUS");
        options.security_protocol = SecurityProtocol::SaslSsl;
        options.sasl_mechanism = Some("SCRAM-SHA-512".into());
        options.sasl_username = Some("tenant-a".into());
        assert_eq!(options.principal(), "User:tenant-a");
        options.sasl_mechanism = Some(MSK_IAM.into());
        assert!(options.principal().contains("AWS IAM"));

        // A real self-signed client certificate, made here.
        let key = openssl::pkey::PKey::from_ec_key(
            openssl::ec::EcKey::generate(
                &openssl::ec::EcGroup::from_curve_name(openssl::nid::Nid::X9_62_PRIME256V1)
                    .unwrap(),
            )
            .unwrap(),
        )
        .unwrap();
        let mut name = openssl::x509::X509NameBuilder::new().unwrap();
        name.append_entry_by_text("O", "ebb").unwrap();
        name.append_entry_by_text("CN", "tenant-b").unwrap();
        let name = name.build();
        let mut cert = openssl::x509::X509Builder::new().unwrap();
        cert.set_subject_name(&name).unwrap();
        cert.set_issuer_name(&name).unwrap();
        cert.set_pubkey(&key).unwrap();
        cert.set_not_before(&openssl::asn1::Asn1Time::days_from_now(0).unwrap())
            .unwrap();
        cert.set_not_after(&openssl::asn1::Asn1Time::days_from_now(1).unwrap())
            .unwrap();
        cert.sign(&key, openssl::hash::MessageDigest::sha256())
            .unwrap();
        let path = std::env::temp_dir().join(format!("ebb-principal-{}.pem", std::process::id()));
        std::fs::write(&path, cert.build().to_pem().unwrap()).unwrap();
        let path_text = path.to_string_lossy().into_owned();
        let options = KafkaOptions {
            security_protocol: SecurityProtocol::Ssl,
            ssl_certificate_location: Some(path_text.clone()),
            ssl_key_location: Some("/unused.key".into()),
            ..KafkaOptions::default()
        };
        assert_eq!(
            options.principal(),
            format!("the client certificate O=ebb,CN=tenant-b ({path_text})")
        );
        std::fs::remove_file(&path).unwrap();
    }

    /// librdkafka asks for a new token at 80 % of the last one's remaining lifetime, on a
    /// 1-second timer: with 6 s tokens, one at the start, then one every 4-6 s: neither a
    /// storm nor a lapse. (MSK's tokens live 900 s: a new one about every 12 minutes.)
    #[test]
    fn msk_iam_tokens_are_refreshed_before_they_expire() {
        use rdkafka::consumer::BaseConsumer;

        let mut iam = MskIam::new("eu-west-1");
        let lifetime = Duration::from_secs(6);
        iam.lifetime = lifetime;
        iam.credentials = Some(crate::msk_iam::AwsCredentials {
            access_key_id: "AKIAEXAMPLE".into(),
            secret_access_key: "example".into(),
            session_token: None,
        });
        let context = AuthContext {
            iam: Some(iam),
            ..AuthContext::default()
        };
        // No broker is needed: librdkafka refreshes on its own schedule.
        let consumer: BaseConsumer<AuthContext> = ClientConfig::new()
            .set("bootstrap.servers", "127.0.0.1:1")
            .set("security.protocol", "SASL_PLAINTEXT")
            .set("sasl.mechanism", "OAUTHBEARER")
            .set("group.id", "refresh")
            .set("log_level", "0")
            .create_with_context(context.clone())
            .expect("client");
        let started = std::time::Instant::now();
        let mut made_at = Vec::new();
        while context.tokens_made() < 3 {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "only {} tokens in 30 s",
                context.tokens_made()
            );
            let _ = consumer.poll(Duration::from_millis(50));
            if made_at.len() < context.tokens_made() as usize {
                made_at.push(started.elapsed());
            }
        }
        let gaps: Vec<Duration> = made_at.windows(2).map(|w| w[1] - w[0]).collect();
        for gap in &gaps {
            assert!(
                (lifetime / 2..lifetime).contains(gap),
                "a refresh at 80 % of each {lifetime:?} token, before it expires: {gaps:?}"
            );
        }
    }

    #[test]
    fn security_protocol_parses_any_case() {
        assert_eq!("SASL_SSL".parse(), Ok(SecurityProtocol::SaslSsl));
        assert!(
            "tls"
                .parse::<SecurityProtocol>()
                .unwrap_err()
                .to_string()
                .contains("sasl_ssl")
        );
    }

    #[test]
    fn offset_reset_spells_librdkafka_values() {
        assert_eq!(OffsetReset::default().as_librdkafka(), "earliest");
        assert_eq!(OffsetReset::Latest.as_librdkafka(), "latest");
    }

    #[test]
    fn properties_are_key_value() {
        assert_eq!(parse_property("a.b=1=2"), Ok(("a.b".into(), "1=2".into())));
        assert!(parse_property("novalue").is_err());
        assert!(parse_property("=x").is_err());
    }

    #[test]
    fn extra_properties_win() {
        let mut options = KafkaOptions::new("h:1");
        options
            .extra
            .push(("bootstrap.servers".into(), "h:2".into()));
        assert_eq!(
            options.client_config().get("bootstrap.servers"),
            Some("h:2")
        );
    }

    #[test]
    fn librdkafka_refusing_a_property_is_a_settings_error_that_never_quotes_the_value() {
        let mut options = KafkaOptions::new("b-1:9092");
        options.extra = vec![("no.such.property".into(), "1".into())];
        assert!(matches!(
            options.validate(),
            Err(SettingError::BadProperty(key, _)) if key == "no.such.property"
        ));
        options.extra = vec![("fetch.wait.max.ms".into(), "s3cret-value".into())];
        let error = options.validate().unwrap_err().to_string();
        assert!(
            error.contains("fetch.wait.max.ms") && !error.contains("s3cret-value"),
            "{error}"
        );
        options.extra = vec![("fetch.wait.max.ms".into(), "50".into())];
        assert_eq!(options.validate(), Ok(()));
    }

    #[test]
    fn msk_iam_needs_a_region_and_sasl_ssl() {
        let mut options = KafkaOptions::new("b-1:9098");
        options.sasl_mechanism = Some(MSK_IAM.into());
        assert_eq!(options.validate(), Err(SettingError::MskIamWithoutRegion));
        options.aws_region = Some("us-east-1".into());
        assert_eq!(
            options.validate(),
            Err(SettingError::MskIamWithoutSaslSsl(
                SecurityProtocol::Plaintext
            ))
        );
        options.security_protocol = SecurityProtocol::SaslSsl;
        assert_eq!(options.validate(), Ok(()));
        assert_eq!(
            options.client_config().get("sasl.mechanism"),
            Some("OAUTHBEARER")
        );
        assert_eq!(options.msk_iam().unwrap().region, "us-east-1");
    }

    #[test]
    fn hint_names_the_address_and_the_fix() {
        let local = KafkaOptions::new("127.0.0.1:9092").unreachable_hint();
        assert!(local.contains("127.0.0.1:9092") && local.contains("scripts/kafka-local start"));
        let remote = KafkaOptions::new("b-1.example:9098").unreachable_hint();
        assert!(remote.contains("b-1.example:9098") && remote.contains("bootstrap servers"));
        // The local broker is plaintext: a secured local address gets no advice to start it.
        let mut secured = KafkaOptions::new("127.0.0.1:9192");
        secured.security_protocol = SecurityProtocol::SaslSsl;
        assert!(!secured.unreachable_hint().contains("kafka-local"));
    }

    #[test]
    fn connection_errors_are_ranked_and_trimmed() {
        use rdkafka::types::RDKafkaErrorCode::*;
        let (rank, failure) = rank_connection_error(
            Authentication,
            "sasl_ssl://127.0.0.1:9192/bootstrap: SASL authentication error: Authentication \
             failed (after 5ms in state AUTH_REQ)",
        )
        .unwrap();
        assert_eq!(rank, 3);
        assert_eq!(
            failure,
            ConnectionFailure::Failed("SASL authentication error: Authentication failed".into())
        );
        let refused = rank_connection_error(
            BrokerTransportFailure,
            "127.0.0.1:9/bootstrap: Connect to ipv4#127.0.0.1:9 failed: Connection refused",
        );
        assert_eq!(refused, Some((1, ConnectionFailure::Refused)));
        assert_eq!(
            rank_connection_error(AllBrokersDown, "1/1 brokers are down"),
            None
        );
        // (code, librdkafka's text, a hint ebb adds, whether it must be there)
        let hints = [
            // A TLS alert: the broker refused the client's certificate.
            (
                SSL,
                "ssl://127.0.0.1:9193/bootstrap: Receive failed: sslv3 alert bad certificate",
                "client's certificate",
                true,
            ),
            // TLS to a plaintext port, when the broker's close comes before a handshake error.
            (
                BrokerTransportFailure,
                "sasl_ssl://127.0.0.1:9092/bootstrap: Disconnected: SSL connection closed by \
                 peer (after 2ms in state SSL_HANDSHAKE)",
                "PLAINTEXT listener",
                true,
            ),
            // A close after the handshake (a refused client, an idle connection) is not that.
            (
                BrokerTransportFailure,
                "ssl://127.0.0.1:9193/bootstrap: Disconnected: SSL connection closed by peer \
                 (after 40ms in state UP)",
                "PLAINTEXT",
                false,
            ),
        ];
        for (code, text, hint, present) in hints {
            let (_, failure) = rank_connection_error(code, text).unwrap();
            assert_eq!(
                format!("{failure:?}").contains(hint),
                present,
                "{text}: {failure:?}"
            );
        }
    }

    #[test]
    fn debug_output_leaves_secrets_out() {
        let mut options = KafkaOptions::new("h:1");
        options.sasl_password = Some("hunter2".into());
        options
            .extra
            .push(("ssl.key.password".into(), "k3y".into()));
        let shown = format!("{options:?}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("k3y"),
            "{shown}"
        );
        assert!(shown.contains("ssl.key.password"), "{shown}");
    }
}
