//! The run loop's errors: what ends it ([`PipelineError`], with its
//! class) and how a failed transactional call is handled ([`TxnError`]).

use rdkafka::error::KafkaError;

use crate::error::{Classify, ErrorClass};

/// How a failed transactional call is handled.
#[derive(Debug)]
pub(super) enum TxnError {
    /// The same call may succeed if repeated (librdkafka says so); where
    /// it is not repeated, it is handled as `Abortable`.
    Retriable(String),
    /// Abort the transaction and redo the work from the committed state.
    Abortable(String),
    /// The producer is unusable (fenced, or a fatal transactional error):
    /// re-create it, or end the instance.
    Fatal(PipelineError),
}

/// Errors that end the run loop.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// Configuration could not be turned into clients.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// A Kafka call failed fatally (e.g. this producer was fenced by a newer
    /// instance with the same transactional id).
    #[error("{what}: {source}")]
    Kafka {
        /// What was being done.
        what: &'static str,
        /// The client error.
        #[source]
        source: KafkaError,
    },
    /// The topics do not fit together (missing, not authorized, or
    /// partition counts differ).
    #[error("topics: {0}")]
    Topics(String),
    /// A broker refused this client (SASL credentials, TLS handshake).
    #[error("the Kafka brokers refused this client: {0}")]
    Refused(String),
    /// The cluster's ACLs do not allow something the instance needs.
    #[error("not authorized: {0}")]
    NotAuthorized(String),
    /// Restoring state failed.
    #[error(transparent)]
    Restore(#[from] crate::state::changelog::ChangelogError),
    /// Scoring failed in a way retrying cannot fix.
    #[error(transparent)]
    Score(#[from] crate::score::ScoreError),
    /// The privacy settings cannot be used (e.g. no pseudonymization key).
    #[error("privacy: {0}")]
    Privacy(#[from] crate::privacy::PrivacyError),
    /// An output record could not be encoded.
    #[error(transparent)]
    Encode(#[from] super::output::EncodeError),
    /// The served model's features could not be computed.
    #[error("featurizing: {0}")]
    Features(#[from] crate::features::FeatureError),
    /// The transactional producer could not finish a transaction (an abort
    /// kept failing): it is re-created like a fenced one.
    #[error("transaction: {0}")]
    Transaction(String),
    /// The HTTP listener could not bind.
    #[error("binding {address}: {source}")]
    Listen {
        /// `pipeline.http_listen`.
        address: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A helper thread or blocking task could not start or panicked.
    #[error("{0}")]
    Task(String),
    /// The run loop took a transaction step out of order (a bug).
    #[error(transparent)]
    Protocol(#[from] super::transaction::ProtocolError),
}

impl Classify for PipelineError {
    fn class(&self) -> ErrorClass {
        match self {
            PipelineError::Config(e) => Classify::class(e),
            PipelineError::Kafka { source, .. } => Classify::class(source),
            PipelineError::Restore(e) => Classify::class(e),
            PipelineError::Score(e) => Classify::class(e),
            PipelineError::Features(e) => Classify::class(e),
            // The cluster does not fit the configuration: topics, credentials,
            // ACLs, the pseudonymization key.
            PipelineError::Topics(_)
            | PipelineError::Refused(_)
            | PipelineError::NotAuthorized(_) => ErrorClass::BadInput,
            PipelineError::Privacy(e) => Classify::class(e),
            PipelineError::Listen { source, .. } => Classify::class(source),
            PipelineError::Transaction(_) => ErrorClass::External,
            PipelineError::Encode(_) | PipelineError::Task(_) | PipelineError::Protocol(_) => {
                ErrorClass::Internal
            }
        }
    }
}

pub(super) fn kafka(what: &'static str) -> impl FnOnce(KafkaError) -> PipelineError {
    move |source| PipelineError::Kafka { what, source }
}
