//! `[kafka]`: brokers, security and the client settings derived from them.

use std::collections::BTreeMap;
use std::path::PathBuf;

use rdkafka::ClientConfig;
use serde::{Deserialize, Serialize};

use super::problems::{ConfigError, Problems};
use super::secret::{check_secret, read_secret, Secret};

/// Kafka connection settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Comma-separated `host:port` list of brokers to bootstrap from.
    pub bootstrap_servers: String,
    /// Consumer group; instances with the same group share the partitions.
    pub group_id: String,
    /// Client id reported to the brokers (shows up in broker logs and quotas).
    pub client_id: String,
    /// Transport security.
    pub security_protocol: SecurityProtocol,
    /// SASL credentials, used with `sasl_plaintext` and `sasl_ssl`.
    pub sasl: SaslConfig,
    /// TLS files, used with `ssl` and `sasl_ssl`.
    pub tls: TlsConfig,
    /// Extra librdkafka properties passed through verbatim (e.g.
    /// `"session.timeout.ms" = "30000"`). Properties segstream manages itself
    /// are refused here.
    pub properties: BTreeMap<String, String>,
    /// Extra librdkafka properties for consumers only (e.g.
    /// `"session.timeout.ms"`, `"group.instance.id"`).
    pub consumer_properties: BTreeMap<String, String>,
    /// Extra librdkafka properties for producers only (e.g. `"linger.ms"`,
    /// `"compression.type"`).
    pub producer_properties: BTreeMap<String, String>,
}

pub(super) fn default_bootstrap_servers() -> String {
    "127.0.0.1:19092".to_string()
}

pub(super) fn default_group_id() -> String {
    "segstream".to_string()
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            bootstrap_servers: default_bootstrap_servers(),
            group_id: default_group_id(),
            client_id: default_group_id(),
            security_protocol: SecurityProtocol::default(),
            sasl: SaslConfig::default(),
            tls: TlsConfig::default(),
            properties: BTreeMap::new(),
            consumer_properties: BTreeMap::new(),
            producer_properties: BTreeMap::new(),
        }
    }
}

impl KafkaConfig {
    /// How this client identifies itself to the brokers, for error
    /// messages: the protocol and, with SASL, the user and mechanism (never
    /// the password).
    pub fn identity(&self) -> String {
        let protocol = self.security_protocol.as_librdkafka();
        if self.security_protocol.uses_sasl() {
            format!(
                "kafka.security_protocol = {protocol}, user {:?} ({})",
                self.sasl.username,
                self.sasl.mechanism.as_librdkafka()
            )
        } else {
            format!("kafka.security_protocol = {protocol}")
        }
    }
}

/// Kafka `security.protocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SecurityProtocol {
    /// No TLS, no authentication.
    #[default]
    Plaintext,
    /// TLS, no SASL.
    Ssl,
    /// SASL without TLS.
    SaslPlaintext,
    /// SASL over TLS.
    SaslSsl,
}

impl SecurityProtocol {
    fn as_librdkafka(self) -> &'static str {
        match self {
            SecurityProtocol::Plaintext => "plaintext",
            SecurityProtocol::Ssl => "ssl",
            SecurityProtocol::SaslPlaintext => "sasl_plaintext",
            SecurityProtocol::SaslSsl => "sasl_ssl",
        }
    }

    fn uses_sasl(self) -> bool {
        matches!(
            self,
            SecurityProtocol::SaslPlaintext | SecurityProtocol::SaslSsl
        )
    }

    fn uses_tls(self) -> bool {
        matches!(self, SecurityProtocol::Ssl | SecurityProtocol::SaslSsl)
    }
}

/// SASL mechanism.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum SaslMechanism {
    /// SCRAM with SHA-512 (the default).
    #[default]
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
    /// SCRAM with SHA-256.
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    /// PLAIN (only over TLS in production).
    #[serde(rename = "PLAIN")]
    Plain,
}

impl SaslMechanism {
    fn as_librdkafka(self) -> &'static str {
        match self {
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SaslMechanism::Plain => "PLAIN",
        }
    }
}

/// SASL credentials. Give the password inline (better: through
/// `SEGSTREAM__KAFKA__SASL__PASSWORD`) or as a file, not both.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SaslConfig {
    /// Mechanism: `SCRAM-SHA-512`, `SCRAM-SHA-256` or `PLAIN`.
    pub mechanism: SaslMechanism,
    /// User name.
    pub username: String,
    /// Password (secret).
    pub password: Secret,
    /// File holding the password (e.g. a mounted Kubernetes secret).
    pub password_file: Option<PathBuf>,
}

/// TLS settings (PEM files).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// CA bundle to verify brokers with; the system store when unset.
    pub ca_location: Option<PathBuf>,
    /// Client certificate, for mutual TLS.
    pub certificate_location: Option<PathBuf>,
    /// Client private key, for mutual TLS.
    pub key_location: Option<PathBuf>,
    /// Password of the private key (secret).
    pub key_password: Secret,
    /// File holding the private key's password.
    pub key_password_file: Option<PathBuf>,
    /// Verify that the broker certificate matches its host name.
    pub verify_hostname: bool,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            ca_location: None,
            certificate_location: None,
            key_location: None,
            key_password: Secret::default(),
            key_password_file: None,
            verify_hostname: true,
        }
    }
}

/// librdkafka properties segstream sets itself; `kafka.properties` may not.
pub(super) const MANAGED_PROPERTIES: &[(&str, &str)] = &[
    ("bootstrap.servers", "set kafka.bootstrap_servers instead"),
    (
        "metadata.broker.list",
        "set kafka.bootstrap_servers instead",
    ),
    ("group.id", "set kafka.group_id instead"),
    ("client.id", "set kafka.client_id instead"),
    ("security.protocol", "set kafka.security_protocol instead"),
    ("sasl.mechanism", "set kafka.sasl.mechanism instead"),
    ("sasl.mechanisms", "set kafka.sasl.mechanism instead"),
    ("sasl.username", "set kafka.sasl.username instead"),
    ("sasl.password", "set kafka.sasl.password instead"),
    ("ssl.ca.location", "set kafka.tls.ca_location instead"),
    (
        "ssl.certificate.location",
        "set kafka.tls.certificate_location instead",
    ),
    ("ssl.key.location", "set kafka.tls.key_location instead"),
    ("ssl.key.password", "set kafka.tls.key_password instead"),
    (
        "enable.auto.commit",
        "segstream commits offsets with its outputs",
    ),
    (
        "enable.auto.offset.store",
        "segstream commits offsets with its outputs",
    ),
    ("isolation.level", "always read_committed"),
    (
        "partition.assignment.strategy",
        "always range (co-partitioned state)",
    ),
    ("transactional.id", "managed by the pipeline"),
    ("auto.offset.reset", "set input.auto_offset_reset instead"),
];

impl KafkaConfig {
    pub(super) fn check(&self, p: &mut Problems) {
        if self.bootstrap_servers.trim().is_empty() {
            p.add(
                "kafka.bootstrap_servers",
                "at least one host:port is required",
            );
        }
        for server in self.bootstrap_servers.split(',').map(str::trim) {
            if server.is_empty() {
                continue;
            }
            let port = server
                .rsplit_once(':')
                .and_then(|(host, port)| (!host.is_empty()).then_some(port))
                .and_then(|port| port.parse::<u16>().ok())
                .filter(|port| *port != 0);
            if port.is_none() {
                p.add(
                    "kafka.bootstrap_servers",
                    format!("{server:?} is not host:port"),
                );
            }
        }
        if self.group_id.trim().is_empty() {
            p.add("kafka.group_id", "must not be empty");
        }
        if self.client_id.trim().is_empty() {
            p.add("kafka.client_id", "must not be empty");
        }
        let sasl = &self.sasl;
        let sasl_given =
            !sasl.username.is_empty() || !sasl.password.is_empty() || sasl.password_file.is_some();
        if self.security_protocol.uses_sasl() {
            if sasl.username.is_empty() {
                p.add(
                    "kafka.sasl.username",
                    "required with security_protocol sasl_plaintext or sasl_ssl",
                );
            }
            check_secret(
                p,
                "kafka.sasl.password",
                &sasl.password,
                sasl.password_file.as_deref(),
                true,
            );
        } else if sasl_given {
            p.add(
                "kafka.sasl",
                "SASL credentials are set but security_protocol does not use SASL \
                 (use sasl_ssl or sasl_plaintext)",
            );
        }
        let tls = &self.tls;
        let tls_given = tls.ca_location.is_some()
            || tls.certificate_location.is_some()
            || tls.key_location.is_some();
        if self.security_protocol.uses_tls() {
            for (key, path) in [
                ("kafka.tls.ca_location", &tls.ca_location),
                ("kafka.tls.certificate_location", &tls.certificate_location),
                ("kafka.tls.key_location", &tls.key_location),
            ] {
                if let Some(path) = path {
                    if !path.is_file() {
                        p.add(key, format!("file {} does not exist", path.display()));
                    }
                }
            }
            if tls.certificate_location.is_some() != tls.key_location.is_some() {
                p.add(
                    "kafka.tls",
                    "certificate_location and key_location go together (mutual TLS)",
                );
            }
            check_secret(
                p,
                "kafka.tls.key_password",
                &tls.key_password,
                tls.key_password_file.as_deref(),
                false,
            );
        } else if tls_given {
            p.add(
                "kafka.tls",
                "TLS files are set but security_protocol does not use TLS (use ssl or sasl_ssl)",
            );
        }
        let all = [
            ("properties", &self.properties),
            ("consumer_properties", &self.consumer_properties),
            ("producer_properties", &self.producer_properties),
        ];
        for (section, key, value) in all
            .iter()
            .flat_map(|(section, map)| map.iter().map(move |(k, v)| (*section, k, v)))
        {
            let path = format!("kafka.{section}.\"{key}\"");
            if let Some((_, instead)) = MANAGED_PROPERTIES.iter().find(|(k, _)| k == key) {
                p.add(path, format!("is managed by segstream: {instead}"));
                continue;
            }
            let mut probe = ClientConfig::new();
            probe.set(key, value);
            if let Err(e) = probe.create_native_config() {
                // librdkafka's message may quote the value, which may be secret.
                let why = if e.to_string().contains("No such configuration property") {
                    "is not a librdkafka property".to_string()
                } else {
                    "librdkafka refuses this value (not shown)".to_string()
                };
                p.add(path, why);
            }
        }
    }

    /// librdkafka settings shared by every client (connection and security),
    /// with secrets resolved from their files.
    pub fn client_config(&self) -> Result<ClientConfig, ConfigError> {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.bootstrap_servers)
            .set("client.id", &self.client_id)
            .set("security.protocol", self.security_protocol.as_librdkafka());
        if self.security_protocol.uses_sasl() {
            let password = read_secret(
                "kafka.sasl.password",
                &self.sasl.password,
                self.sasl.password_file.as_deref(),
            )?;
            c.set("sasl.mechanism", self.sasl.mechanism.as_librdkafka())
                .set("sasl.username", &self.sasl.username)
                .set("sasl.password", password.expose());
        }
        if self.security_protocol.uses_tls() {
            let tls = &self.tls;
            for (key, path) in [
                ("ssl.ca.location", &tls.ca_location),
                ("ssl.certificate.location", &tls.certificate_location),
                ("ssl.key.location", &tls.key_location),
            ] {
                if let Some(path) = path {
                    c.set(key, path.to_string_lossy());
                }
            }
            let key_password = read_secret(
                "kafka.tls.key_password",
                &tls.key_password,
                tls.key_password_file.as_deref(),
            )?;
            if !key_password.is_empty() {
                c.set("ssl.key.password", key_password.expose());
            }
            c.set(
                "ssl.endpoint.identification.algorithm",
                if tls.verify_hostname { "https" } else { "none" },
            );
        }
        for (k, v) in &self.properties {
            c.set(k, v);
        }
        Ok(c)
    }

    /// Settings for a consumer: [`KafkaConfig::client_config`] plus
    /// `kafka.consumer_properties`.
    pub fn consumer_config(&self) -> Result<ClientConfig, ConfigError> {
        let mut c = self.client_config()?;
        for (k, v) in &self.consumer_properties {
            c.set(k, v);
        }
        Ok(c)
    }

    /// Settings for a producer: [`KafkaConfig::client_config`] plus
    /// `kafka.producer_properties`.
    pub fn producer_config(&self) -> Result<ClientConfig, ConfigError> {
        let mut c = self.client_config()?;
        for (k, v) in &self.producer_properties {
            c.set(k, v);
        }
        Ok(c)
    }
}
