//! `[privacy]`: pseudonymous ids and erasure.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::problems::{check_topic_name, Problems};

/// Pseudonymous ids and erasure (see `segstream::privacy`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PrivacyConfig {
    /// Replace every customer id at ingest by `ps_` + HMAC-SHA-256(key, id)
    /// (first 128 bits, hex): state, changelog, outputs, metrics and logs
    /// then never hold the clear id.
    pub pseudonymize: bool,
    /// File holding the key (e.g. a mounted Kubernetes secret), at least 16
    /// bytes; one trailing newline is ignored. Wins over `key_env`.
    pub key_file: PathBuf,
    /// Environment variable holding the key when `key_file` is empty.
    pub key_env: String,
    /// Erasure requests (`segstream forget`), keyed by the stored id and
    /// partitioned like the input (same partition count, checked at start).
    /// Keep them at least as long as the input topics: training and
    /// `predict` drop erased customers' events by reading it. Empty: erasure
    /// is off.
    pub erasure_topic: String,
    /// Where each completed erasure is recorded (keyed by the pseudonym, or
    /// a SHA-256 digest of the id without pseudonyms); empty: only logged.
    pub audit_topic: String,
    /// How long an erased customer's marker is kept after the erasure's
    /// time, dropping their events stamped before it that are read late (a
    /// lagging input, a restore). Set it to the input topics' retention:
    /// no older record can arrive after that.
    #[serde(with = "humantime_serde")]
    pub erasure_retention: Duration,
}

impl Default for PrivacyConfig {
    fn default() -> Self {
        PrivacyConfig {
            pseudonymize: false,
            key_file: PathBuf::new(),
            key_env: "SEGSTREAM_PRIVACY_KEY".into(),
            erasure_topic: String::new(),
            audit_topic: String::new(),
            // Kafka's default `retention.ms`.
            erasure_retention: Duration::from_secs(7 * 86_400),
        }
    }
}

/// Shortest accepted pseudonymization key.
pub const MIN_KEY_BYTES: usize = 16;

/// A pseudonymization key that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Shorter than [`MIN_KEY_BYTES`].
    #[error("the pseudonymization key has {0} bytes; at least {MIN_KEY_BYTES} are needed")]
    TooShort(usize),
    /// `privacy.key_file` cannot be read.
    #[error("privacy.key_file {path}: {source}")]
    Unreadable {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Neither a key file nor the key's environment variable.
    #[error("privacy.pseudonymize is on but there is no key: set privacy.key_file or the environment variable {0}")]
    Missing(String),
    /// The key cannot key an HMAC.
    #[error("the pseudonymization key cannot key HMAC-SHA-256: {0}")]
    Mac(hmac::digest::InvalidLength),
}

/// Whether `key` may key the pseudonyms.
pub fn check_key(key: &[u8]) -> Result<(), KeyError> {
    if key.len() < MIN_KEY_BYTES {
        return Err(KeyError::TooShort(key.len()));
    }
    Ok(())
}

impl PrivacyConfig {
    /// The key bytes: the key file's content (one trailing newline dropped), or
    /// the environment variable's value.
    pub fn key(&self) -> Result<Vec<u8>, KeyError> {
        if !self.key_file.as_os_str().is_empty() {
            let mut bytes =
                std::fs::read(&self.key_file).map_err(|source| KeyError::Unreadable {
                    path: self.key_file.clone(),
                    source,
                })?;
            if bytes.last() == Some(&b'\n') {
                bytes.pop();
            }
            return Ok(bytes);
        }
        match std::env::var_os(&self.key_env) {
            Some(v) if !v.is_empty() => Ok(v.into_encoded_bytes()),
            _ => Err(KeyError::Missing(self.key_env.clone())),
        }
    }

    /// This section's own rules (rules across sections are `Config::check`'s).
    pub(super) fn check(&self, p: &mut Problems) {
        let pr = self;
        if pr.pseudonymize {
            if let Err(e) = pr.key().and_then(|k| check_key(&k)) {
                p.add("privacy.pseudonymize", e.to_string());
            }
        }
        if pr.erasure_retention.is_zero() {
            p.add(
                "privacy.erasure_retention",
                "must be positive: it should match the input topics' retention",
            );
        }
        if !pr.audit_topic.is_empty() && pr.erasure_topic.is_empty() {
            p.add(
                "privacy.audit_topic",
                "is only used with privacy.erasure_topic",
            );
        }
        for (path, t) in [
            ("privacy.erasure_topic", &pr.erasure_topic),
            ("privacy.audit_topic", &pr.audit_topic),
        ] {
            if !t.is_empty() {
                if let Err(why) = check_topic_name(t) {
                    p.add(path, why.to_string());
                }
            }
        }
    }
}
