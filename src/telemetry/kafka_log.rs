//! librdkafka's log lines and global errors, with broker outages made quiet.
//!
//! While a broker is away every client reports each failed connection
//! attempt (hundreds of ERROR lines per broker restart), which is noise for
//! anyone alerting on ERROR. Here a connection failure starts an *outage*:
//! one WARN when it starts, a reminder at most every [`REMINDER_EVERY`] with
//! the count of suppressed lines, and one INFO when a client reports its
//! brokers up again (from the statistics callback) with the total. Every other
//! librdkafka line keeps its level; real errors stay errors.
//!
//! A broker that refuses this client (wrong SASL credentials, a TLS
//! handshake that fails) is tracked the same way, as an ERROR with
//! reminders, and [`refusal`] returns its last reason, so that start-up can
//! fail at once with it instead of timing out.
//!
//! One process talks to one cluster, so the outage state is process-wide.

use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use tracing::{debug, error, info, warn};

/// Least time between two reminders of an ongoing outage.
pub const REMINDER_EVERY: Duration = Duration::from_secs(30);

/// What happened to a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Not about connectivity: log it at its own level.
    Log,
    /// The first connection failure: one WARN, an outage begins.
    OutageStarted,
    /// A connection failure during an outage, time for a reminder; with
    /// the lines suppressed since the last one.
    Reminder(u64),
    /// A connection failure during an outage: counted, not logged.
    Suppressed,
}

/// The outage tracker (pure: the clock is an argument).
#[derive(Debug, Default)]
pub struct Outage {
    since: Option<Instant>,
    suppressed: u64,
    total: u64,
    last_reminder: Option<Instant>,
}

impl Outage {
    /// Classifies one line; `connection` says whether it is a connection
    /// failure.
    pub fn line(&mut self, connection: bool, now: Instant) -> Verdict {
        if !connection {
            return Verdict::Log;
        }
        self.total += 1;
        match self.since {
            None => {
                self.since = Some(now);
                self.last_reminder = Some(now);
                Verdict::OutageStarted
            }
            Some(_) => {
                let due = self
                    .last_reminder
                    .is_none_or(|t| now.duration_since(t) >= REMINDER_EVERY);
                if due {
                    self.last_reminder = Some(now);
                    Verdict::Reminder(std::mem::take(&mut self.suppressed))
                } else {
                    self.suppressed += 1;
                    Verdict::Suppressed
                }
            }
        }
    }

    /// The brokers are reachable: ends an outage, returning its length and
    /// the number of connection failures it saw.
    pub fn reachable(&mut self, now: Instant) -> Option<(Duration, u64)> {
        let since = self.since.take()?;
        let total = std::mem::take(&mut self.total);
        self.suppressed = 0;
        self.last_reminder = None;
        Some((now.duration_since(since), total))
    }
}

fn outage() -> &'static Mutex<Outage> {
    static OUTAGE: OnceLock<Mutex<Outage>> = OnceLock::new();
    OUTAGE.get_or_init(|| Mutex::new(Outage::default()))
}

/// Whether a librdkafka line or error is about reaching a broker.
pub fn is_connection_failure(code: Option<RDKafkaErrorCode>, text: &str) -> bool {
    if matches!(
        code,
        Some(RDKafkaErrorCode::BrokerTransportFailure | RDKafkaErrorCode::AllBrokersDown)
    ) {
        return true;
    }
    const MARKERS: [&str; 6] = [
        "Connection refused",
        "Disconnected",
        "Connect to ",
        "brokers are down",
        "Connection reset",
        "Broker transport failure",
    ];
    MARKERS.iter().any(|m| text.contains(m))
}

fn refusals() -> &'static Mutex<(Outage, Option<String>)> {
    static REFUSALS: OnceLock<Mutex<(Outage, Option<String>)>> = OnceLock::new();
    REFUSALS.get_or_init(|| Mutex::new((Outage::default(), None)))
}

/// Whether a librdkafka line or error says that a broker refused this
/// client: its SASL credentials, or the TLS handshake.
pub fn is_refusal(code: Option<RDKafkaErrorCode>, text: &str) -> bool {
    let coded = matches!(
        code,
        Some(RDKafkaErrorCode::Authentication | RDKafkaErrorCode::SaslAuthenticationFailed)
    );
    const MARKERS: [&str; 4] = [
        "SASL authentication error",
        "SSL handshake failed",
        "certificate verify failed",
        "Authentication failed",
    ];
    // A connection lost during the handshake is an outage, not a refusal.
    (coded || MARKERS.iter().any(|m| text.contains(m))) && !is_connection_failure(None, text)
}

/// The last reason a broker gave for refusing this client, while no client
/// has reached its brokers since.
pub fn refusal() -> Option<String> {
    refusals().lock().ok().and_then(|r| r.1.clone())
}

fn refusal_line(code: Option<RDKafkaErrorCode>, text: &str) -> bool {
    if !is_refusal(code, text) {
        return false;
    }
    let verdict = match refusals().lock() {
        Ok(mut r) => {
            r.1 = Some(text.to_owned());
            r.0.line(true, Instant::now())
        }
        Err(_) => Verdict::Log,
    };
    match verdict {
        Verdict::Log | Verdict::OutageStarted => error!(
            detail = text,
            "A Kafka broker refused this client; check kafka.security_protocol, kafka.sasl.* \
             and kafka.tls.*. Retrying; further refusals are summarized."
        ),
        Verdict::Reminder(suppressed) => error!(
            suppressed,
            detail = text,
            "Kafka brokers still refuse this client."
        ),
        Verdict::Suppressed => {}
    }
    true
}

fn connection_line(code: Option<RDKafkaErrorCode>, text: &str) -> bool {
    let verdict = match outage().lock() {
        Ok(mut o) => o.line(is_connection_failure(code, text), Instant::now()),
        Err(_) => Verdict::Log,
    };
    match verdict {
        Verdict::Log => false,
        Verdict::OutageStarted => {
            warn!(
                detail = text,
                "Kafka brokers are unreachable; retrying. Further connection errors are summarized \
                 until they are reachable again."
            );
            true
        }
        Verdict::Reminder(suppressed) => {
            warn!(
                suppressed,
                detail = text,
                "Kafka brokers are still unreachable; retrying."
            );
            true
        }
        Verdict::Suppressed => true,
    }
}

/// A librdkafka log line (`ClientContext::log`).
pub fn log(level: RDKafkaLogLevel, facility: &str, message: &str) {
    let serious = !matches!(
        level,
        RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info | RDKafkaLogLevel::Debug
    );
    if serious && (refusal_line(None, message) || connection_line(None, message)) {
        return;
    }
    match level {
        RDKafkaLogLevel::Emerg
        | RDKafkaLogLevel::Alert
        | RDKafkaLogLevel::Critical
        | RDKafkaLogLevel::Error => {
            error!(target: "librdkafka", facility, "{message}")
        }
        RDKafkaLogLevel::Warning => warn!(target: "librdkafka", facility, "{message}"),
        RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
            info!(target: "librdkafka", facility, "{message}")
        }
        RDKafkaLogLevel::Debug => debug!(target: "librdkafka", facility, "{message}"),
    }
}

/// A librdkafka global error (`ClientContext::error`).
pub fn client_error(client: &str, error: &KafkaError, reason: &str) {
    let code = error.rdkafka_error_code();
    if refusal_line(code, reason) || connection_line(code, reason) {
        return;
    }
    error!(client, error = %error, reason, "Kafka client error.");
}

/// A client found its brokers up (statistics): ends an outage with one INFO.
pub fn brokers_up() {
    if let Ok(mut r) = refusals().lock() {
        r.1 = None;
        r.0.reachable(Instant::now());
    }
    let ended = outage()
        .lock()
        .ok()
        .and_then(|mut o| o.reachable(Instant::now()));
    if let Some((length, failures)) = ended {
        info!(
            seconds = length.as_secs_f64(),
            connection_errors = failures,
            "Kafka brokers are reachable again."
        );
    }
}

/// Whether librdkafka's statistics show every known broker up.
pub fn all_brokers_up(statistics: &rdkafka::Statistics) -> bool {
    let mut known = statistics
        .brokers
        .values()
        .filter(|b| b.nodeid >= 0)
        .peekable();
    known.peek().is_some() && known.all(|b| b.state == "UP")
}

/// A client context that routes librdkafka's lines through this module.
#[derive(Debug, Clone, Copy, Default)]
pub struct QuietContext;

impl rdkafka::ClientContext for QuietContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        log(level, fac, log_message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        client_error("producer", &error, reason);
    }

    /// Statistics are for the run loop's own consumers (lag, event-time
    /// merge); other clients ignore them instead of logging each one.
    fn stats(&self, _statistics: rdkafka::Statistics) {}
}

/// For plain readers (e.g. describing the consumer group) that join no group.
impl rdkafka::consumer::ConsumerContext for QuietContext {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outage_is_one_warning_reminders_and_one_end() {
        let mut o = Outage::default();
        let t0 = Instant::now();
        assert_eq!(o.line(false, t0), Verdict::Log);
        assert_eq!(o.line(true, t0), Verdict::OutageStarted);
        for i in 1..100 {
            assert_eq!(
                o.line(true, t0 + Duration::from_millis(i * 100)),
                Verdict::Suppressed
            );
        }
        assert_eq!(o.line(false, t0), Verdict::Log, "real errors stay errors");
        assert_eq!(o.line(true, t0 + REMINDER_EVERY), Verdict::Reminder(99));
        assert_eq!(
            o.line(true, t0 + REMINDER_EVERY + Duration::from_secs(1)),
            Verdict::Suppressed
        );
        let (length, failures) = o.reachable(t0 + Duration::from_secs(40)).unwrap();
        assert_eq!(length, Duration::from_secs(40));
        assert_eq!(failures, 102);
        assert_eq!(o.reachable(t0 + Duration::from_secs(41)), None, "ends once");
        assert_eq!(
            o.line(true, t0 + Duration::from_secs(50)),
            Verdict::OutageStarted
        );
    }

    #[test]
    fn connection_failures_are_recognized() {
        assert!(is_connection_failure(
            Some(RDKafkaErrorCode::BrokerTransportFailure),
            ""
        ));
        assert!(is_connection_failure(
            None,
            "127.0.0.1:19092/1: Connect to ipv4#127.0.0.1:19092 failed: Connection refused (after 0ms in state CONNECT)"
        ));
        assert!(is_connection_failure(
            Some(RDKafkaErrorCode::AllBrokersDown),
            "1/1 brokers are down"
        ));
        assert!(!is_connection_failure(
            Some(RDKafkaErrorCode::TopicAuthorizationFailed),
            "Not authorized to access topics"
        ));
    }

    #[test]
    fn refusals_are_recognized_and_are_not_outages() {
        let sasl =
            "sasl_ssl://127.0.0.1:19094/bootstrap: SASL authentication error: Authentication \
                    failed during authentication due to invalid credentials with SASL mechanism \
                    SCRAM-SHA-512 (after 311ms in state AUTH_REQ)";
        assert!(is_refusal(None, sasl));
        assert!(!is_connection_failure(None, sasl));
        assert!(is_refusal(
            None,
            "ssl://127.0.0.1:19094/bootstrap: SSL handshake failed: error:0A000086:SSL \
             routines::certificate verify failed"
        ));
        assert!(is_refusal(Some(RDKafkaErrorCode::Authentication), ""));
        assert!(!is_refusal(
            None,
            "GroupCoordinator: SASL authentication error: SaslAuthenticateRequest failed: \
             Local: Broker transport failure (after 0ms in state DOWN)"
        ));
        assert!(!is_refusal(
            Some(RDKafkaErrorCode::Authentication),
            "SaslAuthenticateRequest failed: Local: Broker transport failure"
        ));
        assert!(!is_refusal(
            Some(RDKafkaErrorCode::BrokerTransportFailure),
            "Connect to ipv4#127.0.0.1:19094 failed: Connection refused"
        ));
        assert!(!is_refusal(
            Some(RDKafkaErrorCode::TopicAuthorizationFailed),
            "Not authorized to access topics"
        ));
    }
}
