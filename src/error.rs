//! Error classes: what a failure means for whoever handles it (arroyo's
//! habit). Every error type of the library says which class each of its
//! variants is in ([`Classify`]); the run loop retries only external
//! failures, and the command line exits with the class's status so that an
//! orchestrator or a script can tell "fix the input" from "try again" from
//! "report a bug".

use std::fmt;

/// What kind of failure an error is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// The input, the configuration or a model handed in is wrong: running
    /// again unchanged fails again. Fix the input.
    BadInput,
    /// Something outside segstream failed or is unavailable (Kafka, the file
    /// system, ONNX Runtime, a GPU): running again later may succeed.
    External,
    /// segstream broke one of its own invariants (a bug): report it.
    Internal,
}

impl ErrorClass {
    /// Whether trying again, unchanged, can succeed.
    pub fn retriable(self) -> bool {
        self == ErrorClass::External
    }

    /// The process exit status for a command that ended on an error of
    /// this class: 2 for bad input (as for a configuration error), 69
    /// (`EX_UNAVAILABLE`) for an external failure, 70 (`EX_SOFTWARE`) for an
    /// internal one. 3 is an instance that ended itself because a client
    /// call hung (`pipeline::watchdog::EXIT_STALLED`).
    pub fn exit_code(self) -> u8 {
        match self {
            ErrorClass::BadInput => 2,
            ErrorClass::External => 69,
            ErrorClass::Internal => 70,
        }
    }

    /// The class's name in logs: `bad_input`, `external`, `internal`.
    pub fn name(self) -> &'static str {
        match self {
            ErrorClass::BadInput => "bad_input",
            ErrorClass::External => "external",
            ErrorClass::Internal => "internal",
        }
    }
}

impl fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An error that knows its [`ErrorClass`].
pub trait Classify {
    /// The class of this error.
    fn class(&self) -> ErrorClass;
}

/// A failure that is bad input and has only a message (a command's own
/// checks of its arguments or files).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct InvalidInput(pub String);

impl Classify for InvalidInput {
    fn class(&self) -> ErrorClass {
        ErrorClass::BadInput
    }
}

impl Classify for std::io::Error {
    /// A path or value the user gave that does not work is bad input; the
    /// rest (a full disk, an interrupted read) is external.
    fn class(&self) -> ErrorClass {
        use std::io::ErrorKind::*;
        match self.kind() {
            NotFound | PermissionDenied | InvalidInput | InvalidData | AlreadyExists
            | IsADirectory | NotADirectory | AddrNotAvailable => ErrorClass::BadInput,
            _ => ErrorClass::External,
        }
    }
}

impl Classify for rdkafka::error::KafkaError {
    /// The Kafka client's failures are the cluster's or the network's,
    /// except a client configuration it refuses, and credentials or ACLs
    /// that do not let this client in: those stay wrong until someone
    /// changes them.
    fn class(&self) -> ErrorClass {
        use rdkafka::error::KafkaError;
        use rdkafka::types::RDKafkaErrorCode as Code;
        if matches!(
            self,
            KafkaError::ClientConfig(..) | KafkaError::ClientCreation(_)
        ) {
            return ErrorClass::BadInput;
        }
        match self.rdkafka_error_code() {
            Some(
                Code::Authentication
                | Code::SaslAuthenticationFailed
                | Code::SecurityDisabled
                | Code::TopicAuthorizationFailed
                | Code::GroupAuthorizationFailed
                | Code::ClusterAuthorizationFailed
                | Code::TransactionalIdAuthorizationFailed
                | Code::DelegationTokenAuthorizationFailed,
            ) => ErrorClass::BadInput,
            _ => ErrorClass::External,
        }
    }
}

impl Classify for serde_json::Error {
    /// JSON that does not parse or fit is bad input; a failed read or
    /// write under it is external.
    fn class(&self) -> ErrorClass {
        match self.classify() {
            serde_json::error::Category::Io => ErrorClass::External,
            _ => ErrorClass::BadInput,
        }
    }
}

impl Classify for toml::de::Error {
    /// A TOML file the user gave that does not parse or fit.
    fn class(&self) -> ErrorClass {
        ErrorClass::BadInput
    }
}

impl Classify for prometheus::Error {
    /// Registering segstream's own metrics failed: a bug.
    fn class(&self) -> ErrorClass {
        ErrorClass::Internal
    }
}

impl Classify for tokio::task::JoinError {
    /// A task of segstream's own that panicked or was cancelled.
    fn class(&self) -> ErrorClass {
        ErrorClass::Internal
    }
}

/// A command's failure: its error, the class the error gave when it became
/// a failure (so the exit status is the error's own, not looked up in a
/// list), and what was being done, outermost first.
pub struct Failure {
    class: ErrorClass,
    doing: Vec<String>,
    error: Box<dyn std::error::Error + Send + Sync>,
}

impl Failure {
    /// A failure of class `class` from an error that does not know its own
    /// (another library's, at the command line's edge).
    pub fn new(class: ErrorClass, error: Box<dyn std::error::Error + Send + Sync>) -> Failure {
        Failure {
            class,
            doing: Vec::new(),
            error,
        }
    }

    /// The failure's class (the exit status is its [`ErrorClass::exit_code`]).
    pub fn class(&self) -> ErrorClass {
        self.class
    }

    /// Adds what was being done when it failed.
    pub fn doing(mut self, what: impl fmt::Display) -> Failure {
        self.doing.insert(0, what.to_string());
        self
    }
}

impl<E: Classify + std::error::Error + Send + Sync + 'static> From<E> for Failure {
    fn from(error: E) -> Failure {
        Failure {
            class: error.class(),
            doing: Vec::new(),
            error: Box::new(error),
        }
    }
}

/// What was being done, then the error and each of its causes.
impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for d in &self.doing {
            write!(f, "{d}: ")?;
        }
        write!(f, "{}", self.error)?;
        let mut cause = self.error.source();
        while let Some(c) = cause {
            write!(f, ": {c}")?;
            cause = c.source();
        }
        Ok(())
    }
}

impl fmt::Debug for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self} ({})", self.class)
    }
}

/// Says what was being done when a call failed, keeping its class.
pub trait Doing<T> {
    /// The failure, with `what` was being done.
    fn doing(self, what: impl fmt::Display) -> Result<T, Failure>;
    /// The failure, with what was being done, computed only on failure.
    fn doing_with<D: fmt::Display>(self, what: impl FnOnce() -> D) -> Result<T, Failure>;
}

impl<T, E: Into<Failure>> Doing<T> for Result<T, E> {
    fn doing(self, what: impl fmt::Display) -> Result<T, Failure> {
        self.map_err(|e| e.into().doing(what))
    }

    fn doing_with<D: fmt::Display>(self, what: impl FnOnce() -> D) -> Result<T, Failure> {
        self.map_err(|e| e.into().doing(what()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_external_failures_are_retried_and_each_class_has_its_exit_status() {
        let all = [
            ErrorClass::BadInput,
            ErrorClass::External,
            ErrorClass::Internal,
        ];
        assert_eq!(all.map(ErrorClass::retriable), [false, true, false]);
        assert_eq!(all.map(ErrorClass::exit_code), [2, 69, 70]);
        assert_eq!(
            all.map(|c| c.to_string()),
            ["bad_input", "external", "internal"]
        );
    }

    #[test]
    fn kafka_errors_are_external_unless_the_client_is_not_let_in() {
        use rdkafka::error::KafkaError;
        use rdkafka::types::RDKafkaErrorCode as Code;
        let class = |code| KafkaError::MetadataFetch(code).class();
        assert_eq!(
            KafkaError::MessageConsumption(Code::BrokerTransportFailure).class(),
            ErrorClass::External
        );
        assert_eq!(class(Code::CoordinatorNotAvailable), ErrorClass::External);
        assert_eq!(
            class(Code::TransactionalIdAuthorizationFailed),
            ErrorClass::BadInput
        );
        assert_eq!(
            KafkaError::ClientCreation("ssl.ca.location: no such file".into()).class(),
            ErrorClass::BadInput
        );
    }

    /// A failure keeps its error's class through added context, and says
    /// the context, the error and its causes in order.
    #[test]
    fn a_failure_has_its_errors_class_and_says_what_was_being_done() {
        let io = std::io::Error::from(std::io::ErrorKind::NotFound);
        let f: Result<(), Failure> = Err(io).doing("reading x.csv").doing("training");
        let f = f.unwrap_err();
        assert_eq!(f.class(), ErrorClass::BadInput);
        assert!(
            f.to_string().starts_with("training: reading x.csv: "),
            "{f}"
        );
        let f = Failure::from(InvalidInput("no".into()));
        assert_eq!(f.class().exit_code(), 2);
        let f = Failure::from(std::io::Error::from(std::io::ErrorKind::StorageFull));
        assert_eq!(f.class().exit_code(), 69);
    }

    #[test]
    fn io_errors_split_by_kind() {
        let e = |k| std::io::Error::from(k).class();
        assert_eq!(e(std::io::ErrorKind::NotFound), ErrorClass::BadInput);
        assert_eq!(e(std::io::ErrorKind::StorageFull), ErrorClass::External);
        assert_eq!(e(std::io::ErrorKind::TimedOut), ErrorClass::External);
    }
}
