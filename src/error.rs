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

    #[test]
    fn io_errors_split_by_kind() {
        let e = |k| std::io::Error::from(k).class();
        assert_eq!(e(std::io::ErrorKind::NotFound), ErrorClass::BadInput);
        assert_eq!(e(std::io::ErrorKind::StorageFull), ErrorClass::External);
        assert_eq!(e(std::io::ErrorKind::TimedOut), ErrorClass::External);
    }
}
