//! Produces the reference corpus of `event::corpus` to the input topics.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::config::{Config, ConfigError};
use crate::event::corpus::{bad_records, browse, purchase, review};
use crate::event::encode::{encode, WireFormat};
use crate::event::{proto, EventKind, Reason};
use crate::ingest::now_ms;

/// Errors while producing samples.
#[derive(Debug, thiserror::Error)]
pub enum SamplesError {
    /// The configuration could not be turned into a producer.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Kafka refused a record or the producer could not be created.
    #[error("{what}: {source}")]
    Kafka {
        /// What was being done.
        what: String,
        /// The client error.
        #[source]
        source: rdkafka::error::KafkaError,
    },
}

impl crate::error::Classify for SamplesError {
    fn class(&self) -> crate::error::ErrorClass {
        match self {
            SamplesError::Config(e) => crate::error::Classify::class(e),
            SamplesError::Kafka { source, .. } => crate::error::Classify::class(source),
        }
    }
}

/// What was produced.
#[derive(Debug, Default)]
pub struct SamplesReport {
    /// Valid events per topic.
    pub valid: BTreeMap<String, usize>,
    /// Bad records by the reason they must be refused with.
    pub bad: BTreeMap<Reason, usize>,
}

/// The input topic for `kind`: the configured topic whose name mentions the
/// kind, else the first one.
pub fn topic_for(config: &Config, kind: EventKind) -> &str {
    let topics = &config.input.topics;
    topics
        .iter()
        .find(|t| t.contains(kind.as_str()))
        .or_else(|| topics.first())
        .map(String::as_str)
        .unwrap_or_default()
}

/// Produces, for each of `customers` customers, one event of every kind in
/// every wire format, then the bad-record corpus once (to the browse topic).
/// The oversized case is one byte over `validation.max_event_bytes`, so that
/// it fits a broker's default record limit.
pub async fn produce(config: &Config, customers: usize) -> Result<SamplesReport, SamplesError> {
    let mut client = config.kafka.producer_config()?;
    client
        .set("enable.idempotence", "true")
        .set("message.timeout.ms", "30000");
    let producer: FutureProducer = client.create().map_err(|source| SamplesError::Kafka {
        what: "creating the producer".into(),
        source,
    })?;
    let now = now_ms();
    let mut report = SamplesReport::default();
    let mut n = 0i64;
    let send = |topic: String, key: Option<Vec<u8>>, value: Vec<u8>| {
        let producer = &producer;
        async move {
            let mut record = FutureRecord::<[u8], [u8]>::to(&topic).payload(&value);
            if let Some(k) = &key {
                record = record.key(k);
            }
            producer
                .send(record, Duration::from_secs(30))
                .await
                .map(|_| ())
                .map_err(|(source, _)| SamplesError::Kafka {
                    what: format!("producing to {topic}"),
                    source,
                })
        }
    };
    for c in 0..customers {
        let customer = format!("sample-customer-{c}");
        for format in WireFormat::ALL {
            for (kind, make) in [
                (
                    EventKind::Browse,
                    browse as fn(&str, &str, i64) -> proto::Event,
                ),
                (EventKind::Purchase, purchase),
                (EventKind::Review, review),
            ] {
                n += 1;
                let event = make(&customer, &format!("sample-{now}-{n}"), now - 60_000 + n);
                let topic = topic_for(config, kind).to_string();
                send(
                    topic.clone(),
                    Some(customer.clone().into_bytes()),
                    encode(&event, format),
                )
                .await?;
                *report.valid.entry(topic).or_default() += 1;
            }
        }
    }
    let topic = topic_for(config, EventKind::Browse).to_string();
    for bad in bad_records(
        "sample-customer-bad",
        now,
        config.validation.max_event_bytes + 1,
    ) {
        send(topic.clone(), bad.key, bad.value).await?;
        *report.bad.entry(bad.expected).or_default() += 1;
    }
    Ok(report)
}
