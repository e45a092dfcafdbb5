//! Topic administration and cluster metadata through Kafka's admin API.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::metadata::Metadata;

use crate::kafka::{ConnectionFailure, KafkaOptions};

/// What went wrong talking to the cluster, worded for the person at the terminal.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// No broker answered within the request timeout.
    #[error("{0}")]
    Unreachable(String),
    /// `topic create` for a name that is taken.
    #[error("topic \"{0}\" already exists")]
    TopicExists(String),
    /// The topic is not in the cluster.
    #[error("topic \"{0}\" does not exist")]
    UnknownTopic(String),
    /// The consumer group has no members and no committed offsets on the topic.
    #[error("group {group} is unknown: it has no members and never committed on {topic}")]
    UnknownGroup {
        /// The group.
        group: String,
        /// The topic asked about.
        topic: String,
    },
    /// A broker answered but the connection failed (TLS, SASL authentication, a protocol
    /// mismatch); librdkafka's reason.
    #[error("cannot connect to Kafka at {bootstrap}: {cause}")]
    Rejected {
        /// The bootstrap servers.
        bootstrap: String,
        /// librdkafka's reason.
        cause: String,
    },
    /// The cluster's ACLs do not allow the request.
    #[error("not authorized to {action} as {principal} (the cluster's ACLs deny it)")]
    Denied {
        /// What was refused, e.g. "describe topic tenant-b.orders".
        action: String,
        /// Who asked, as [`KafkaOptions::principal`] words it.
        principal: String,
    },
    /// No MSK IAM token for the admin client.
    #[error("MSK IAM: {0}")]
    Auth(#[from] crate::msk_iam::MskIamError),
    /// Anything else Kafka said no to.
    #[error("{context}: {source}")]
    Kafka {
        /// What ebb was doing.
        context: String,
        /// Kafka's reason.
        #[source]
        source: KafkaError,
    },
}

/// One topic as `ebb topic list` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicInfo {
    /// Topic name.
    pub name: String,
    /// Number of partitions.
    pub partitions: usize,
    /// Replicas of partition 0 (all partitions share it for topics ebb creates).
    pub replication: usize,
}

/// A connection to the cluster for administrative requests.
pub struct Admin {
    client: Arc<AdminClient<DefaultClientContext>>,
    options: KafkaOptions,
}

impl Admin {
    /// Creates the admin client (no network traffic until the first request).
    pub fn new(options: &KafkaOptions) -> Result<Self, AdminError> {
        let client: AdminClient<DefaultClientContext> =
            options
                .client_config()
                .create()
                .map_err(|source| AdminError::Kafka {
                    context: "cannot create the Kafka admin client (a client property was refused)"
                        .into(),
                    source,
                })?;
        if let Some(iam) = options.msk_iam() {
            set_token(&client, &iam)?;
        }
        Ok(Admin {
            client: Arc::new(client),
            options: options.clone(),
        })
    }

    /// Cluster metadata, all topics or one; fails with [`AdminError::Unreachable`] when no
    /// broker answers within the request timeout.
    pub async fn metadata(&self, topic: Option<&str>) -> Result<Metadata, AdminError> {
        let timeout = self.options.request_timeout;
        let client = Arc::clone(&self.client);
        let topic = topic.map(str::to_owned);
        let result = tokio::task::spawn_blocking(move || {
            client.inner().fetch_metadata(topic.as_deref(), timeout)
        })
        .await
        .map_err(|e| AdminError::Unreachable(format!("metadata request aborted: {e}")))?;
        result.map_err(|source| self.classify(source, "metadata request failed"))
    }

    /// Creates `name` with `partitions` partitions and `replication` replicas per partition.
    pub async fn create_topic(
        &self,
        name: &str,
        partitions: i32,
        replication: i32,
        config: &[(String, String)],
    ) -> Result<(), AdminError> {
        self.metadata(None).await?;
        let mut topic = NewTopic::new(name, partitions, TopicReplication::Fixed(replication));
        for (key, value) in config {
            topic = topic.set(key, value);
        }
        let options = AdminOptions::new()
            .request_timeout(Some(self.options.request_timeout))
            .operation_timeout(Some(self.options.request_timeout));
        let results = self
            .client
            .create_topics([&topic], &options)
            .await
            .map_err(|source| self.classify(source, "create topic request failed"))?;
        for result in results {
            match result {
                Ok(_) => {}
                Err((topic, RDKafkaErrorCode::TopicAlreadyExists)) => {
                    return Err(AdminError::TopicExists(topic));
                }
                Err((topic, code)) if is_denial(code) => {
                    return Err(self.denied(format!("create topic {topic}")));
                }
                Err((topic, code)) => {
                    return Err(AdminError::Kafka {
                        context: format!("cannot create topic \"{topic}\""),
                        source: KafkaError::AdminOp(code),
                    });
                }
            }
        }
        // Creation is asynchronous on the controller; wait until the metadata shows every
        // partition with a leader so the caller can produce at once.
        let deadline = tokio::time::Instant::now() + self.options.request_timeout;
        loop {
            if let Ok(info) = self.topic(name).await
                && info.partitions == partitions as usize
            {
                let metadata = self.metadata(Some(name)).await?;
                let ready = metadata.topics().iter().all(|t| {
                    t.partitions()
                        .iter()
                        .all(|p| p.leader() >= 0 && p.error().is_none())
                });
                if ready {
                    return Ok(());
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(AdminError::Unreachable(format!(
                    "topic \"{name}\" was created but its partitions have no leader after {:?}",
                    self.options.request_timeout
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Deletes `name` (tests clean up after themselves with this).
    pub async fn delete_topic(&self, name: &str) -> Result<(), AdminError> {
        let options = AdminOptions::new().request_timeout(Some(self.options.request_timeout));
        let results = self
            .client
            .delete_topics(&[name], &options)
            .await
            .map_err(|source| self.classify(source, "delete topic request failed"))?;
        for result in results {
            if let Err((topic, code)) = result {
                if code == RDKafkaErrorCode::UnknownTopicOrPartition {
                    return Err(AdminError::UnknownTopic(topic));
                }
                if is_denial(code) {
                    return Err(self.denied(format!("delete topic {topic}")));
                }
                return Err(AdminError::Kafka {
                    context: format!("cannot delete topic \"{topic}\""),
                    source: KafkaError::AdminOp(code),
                });
            }
        }
        Ok(())
    }

    /// All topics but Kafka's internal ones, sorted by name.
    pub async fn list_topics(&self) -> Result<Vec<TopicInfo>, AdminError> {
        let metadata = self.metadata(None).await?;
        let mut topics: Vec<TopicInfo> = metadata
            .topics()
            .iter()
            .filter(|t| !t.name().starts_with("__"))
            .map(|t| TopicInfo {
                name: t.name().to_string(),
                partitions: t.partitions().len(),
                replication: t.partitions().first().map_or(0, |p| p.replicas().len()),
            })
            .collect();
        topics.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(topics)
    }

    /// One topic's partition count and replication; [`AdminError::UnknownTopic`] if absent.
    pub async fn topic(&self, name: &str) -> Result<TopicInfo, AdminError> {
        let metadata = self.metadata(Some(name)).await?;
        let topic = metadata.topics().iter().find(|t| t.name() == name);
        match topic {
            // Kafka answers so for a topic the client may not describe, whether it exists
            // or not.
            Some(t) if t.error().is_some_and(|e| is_denial(e.into())) => {
                Err(self.denied(format!("describe topic {name}")))
            }
            Some(t) if t.error().is_none() && !t.partitions().is_empty() => Ok(TopicInfo {
                name: name.to_string(),
                partitions: t.partitions().len(),
                replication: t.partitions().first().map_or(0, |p| p.replicas().len()),
            }),
            _ => Err(AdminError::UnknownTopic(name.to_string())),
        }
    }

    fn denied(&self, action: String) -> AdminError {
        AdminError::Denied {
            action,
            principal: self.options.principal(),
        }
    }

    fn classify(&self, source: KafkaError, context: &str) -> AdminError {
        if is_unreachable(&source) {
            // A timeout says nothing of why; librdkafka's connection errors do.
            match crate::kafka::connection_failure(self.client.inner()) {
                Some(ConnectionFailure::Failed(cause)) => AdminError::Rejected {
                    bootstrap: self.options.bootstrap_servers.clone(),
                    cause,
                },
                _ => AdminError::Unreachable(self.options.unreachable_hint()),
            }
        } else {
            AdminError::Kafka {
                context: context.to_string(),
                source,
            }
        }
    }
}

/// Gives the admin client an MSK IAM token. rdkafka's admin client does not serve
/// librdkafka's token-refresh events, so the token is set directly; it lasts 15 minutes,
/// longer than any admin client of ebb's lives.
fn set_token(
    client: &AdminClient<DefaultClientContext>,
    iam: &crate::msk_iam::MskIam,
) -> Result<(), crate::msk_iam::MskIamError> {
    use crate::msk_iam::MskIamError;
    use std::ffi::CString;
    let token = iam.token()?;
    // A base64url token and a literal principal: neither holds a NUL byte.
    let value = CString::new(token.token).map_err(|e| MskIamError::Refused(e.to_string()))?;
    let principal = CString::new("ebb").map_err(|e| MskIamError::Refused(e.to_string()))?;
    let mut error = [0 as std::ffi::c_char; 512];
    // SAFETY: the client handle is alive for the whole call; both strings are
    // NUL-terminated and outlive it; no extensions are passed (null, 0); `error` is a
    // writable buffer of the length given.
    let code = unsafe {
        rdkafka::bindings::rd_kafka_oauthbearer_set_token(
            client.inner().native_ptr(),
            value.as_ptr(),
            token.expires_ms,
            principal.as_ptr(),
            std::ptr::null_mut(),
            0,
            error.as_mut_ptr(),
            error.len(),
        )
    };
    if code == rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
        Ok(())
    } else {
        // SAFETY: librdkafka wrote a NUL-terminated message into `error`.
        let message = unsafe { std::ffi::CStr::from_ptr(error.as_ptr()) };
        Err(MskIamError::Refused(message.to_string_lossy().into_owned()))
    }
}

/// Whether a Kafka error code is an ACL refusal.
pub fn is_denial(code: RDKafkaErrorCode) -> bool {
    matches!(
        code,
        RDKafkaErrorCode::TopicAuthorizationFailed
            | RDKafkaErrorCode::GroupAuthorizationFailed
            | RDKafkaErrorCode::ClusterAuthorizationFailed
            | RDKafkaErrorCode::TransactionalIdAuthorizationFailed
    )
}

/// Whether an error means no broker could be reached (as opposed to a refusal).
pub fn is_unreachable(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::BrokerTransportFailure
                | RDKafkaErrorCode::AllBrokersDown
                | RDKafkaErrorCode::OperationTimedOut
                | RDKafkaErrorCode::RequestTimedOut
                | RDKafkaErrorCode::Resolve
        )
    )
}
