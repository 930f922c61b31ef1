//! The topics an instance needs, checked once at start: they exist, the
//! co-partitioned ones have the same partition count, and the changelog
//! and the current-membership topic are compacted.

use std::collections::{BTreeMap, BTreeSet};

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::types::RDKafkaRespErr;
use tracing::warn;

use super::{kafka, Pipeline, PipelineError};
use crate::telemetry::kafka_log::{self, QuietContext};

/// A topic the configuration names: `key` names it in messages (the main
/// topics need none); a co-partitioned one must have the input topics'
/// partition count; `hint` follows its "does not exist".
struct Needed<'a> {
    name: &'a str,
    key: Option<&'static str>,
    co_partitioned: bool,
    hint: &'static str,
}

impl<'a> Needed<'a> {
    /// A topic named by the main keys (its name is the whole message).
    fn main(name: &'a str, co_partitioned: bool) -> Self {
        Needed {
            name,
            key: None,
            co_partitioned,
            hint: "",
        }
    }
}

impl Pipeline {
    /// Input topics, changelog and dead-letter topics exist, and the input
    /// topics and the changelog have the same number of partitions.
    /// Returns the input topics' partition count.
    pub(super) async fn check_topics(&self) -> Result<i32, PipelineError> {
        // Asked in steps of a second through a client of its own that is
        // polled between them: librdkafka hands its log lines and errors
        // over on a poll, so a broker that refuses the credentials or the TLS
        // handshake ends the wait at once, with its reason.
        //
        // The metadata of all topics leaves out those the principal may not
        // describe; each needed topic that is missing is asked for by name,
        // which tells "not authorized" from "does not exist".
        let client = self.cfg.kafka.client_config()?;
        let needed: Vec<String> = self
            .needed_topics()
            .iter()
            .map(|n| n.name.to_owned())
            .collect();
        let answer = self
            .watchdog
            .call("fetch_metadata", move |t| {
                let probe: BaseConsumer<QuietContext> = client.create_with_context(QuietContext)?;
                let end = Instant::now() + t;
                let md = loop {
                    let step = end
                        .saturating_duration_since(Instant::now())
                        .min(Duration::from_secs(1));
                    let answer = probe.fetch_metadata(None, step);
                    // No subscription: a poll serves only logs and errors.
                    let _ = probe.poll(Duration::ZERO);
                    match answer {
                        Err(_) if kafka_log::refusal().is_none() && Instant::now() < end => {
                            std::thread::sleep(Duration::from_millis(50));
                        }
                        answer => break answer?,
                    }
                };
                let mut denied = BTreeSet::new();
                for name in needed {
                    if md.topics().iter().any(|t| t.name() == name) {
                        continue;
                    }
                    let left = end.saturating_duration_since(Instant::now());
                    let one = probe.fetch_metadata(Some(&name), left)?;
                    if one.topics().iter().any(|t| {
                        t.error()
                            == Some(RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED)
                    }) {
                        denied.insert(name);
                    }
                }
                Ok((md, denied))
            })
            .await?;
        let (md, denied) = answer.map_err(|e| match kafka_log::refusal() {
            Some(why) => PipelineError::Refused(format!(
                "{why} ({}; check the password, the mechanism and kafka.tls)",
                self.cfg.kafka.identity()
            )),
            None => kafka("fetching cluster metadata")(e),
        })?;
        let count = |name: &str| {
            md.topics()
                .iter()
                .find(|t| t.name() == name && t.error().is_none())
                .map(|t| t.partitions().len())
        };
        let identity = self.cfg.kafka.identity();
        let absent = |name: &str| {
            if denied.contains(name) {
                format!(
                    "is not authorized: the broker's ACLs do not let this client ({identity}) use it"
                )
            } else {
                "does not exist".to_owned()
            }
        };
        let mut problems = Vec::new();
        let mut counts = BTreeMap::new();
        for n in self.needed_topics() {
            match count(n.name) {
                Some(partitions) if n.co_partitioned => {
                    counts.insert(n.name.to_owned(), partitions);
                }
                Some(_) => {}
                None => {
                    let key = n.key.map(|k| format!(" ({k})")).unwrap_or_default();
                    problems.push(format!("{}{key} {}{}", n.name, absent(n.name), n.hint));
                }
            }
        }
        // A changelog that deletes instead of compacting loses state older
        // than its retention at the next restore; a current-membership topic
        // that does, customers who have not moved for that long.
        let current = &self.cfg.output.current_topic;
        let mut compacted = vec![(
            &self.cfg.state.changelog_topic,
            "state older than its retention would be lost at the next restore",
        )];
        if !current.is_empty() {
            compacted.push((
                current,
                "customers whose segment has not changed for its retention would vanish from it",
            ));
        }
        for (topic, why) in compacted {
            if !counts.contains_key(topic) {
                continue;
            }
            match self.cleanup_policy(topic).await {
                Ok(policy) if policy.split(',').any(|p| p.trim() == "compact") => {}
                Ok(policy) => problems.push(format!(
                    "{topic} must be compacted (cleanup.policy=compact), it has cleanup.policy={policy}: {why}"
                )),
                Err(e) => warn!(
                    topic = %topic,
                    error = %e,
                    "Could not read the topic's cleanup.policy (DescribeConfigs); make sure it is compact."
                ),
            }
        }
        let distinct: BTreeSet<usize> = counts.values().copied().collect();
        if distinct.len() > 1 {
            problems.push(format!(
                "input topics, the changelog, the current-membership and the erasure topic must \
                 have the same partition count (co-partitioning): {counts:?}"
            ));
        }
        if problems.is_empty() {
            let n = self
                .cfg
                .input
                .topics
                .first()
                .and_then(|t| counts.get(t))
                .copied()
                .unwrap_or(0);
            Ok(i32::try_from(n).unwrap_or(i32::MAX))
        } else {
            Err(PipelineError::Topics(format!(
                "{} (for the local broker: `make topics`)",
                problems.join("; ")
            )))
        }
    }

    /// Every topic the configuration names that must exist, in the order
    /// their problems are reported.
    fn needed_topics(&self) -> Vec<Needed<'_>> {
        let (input, state, output) = (&self.cfg.input, &self.cfg.state, &self.cfg.output);
        let privacy = &self.cfg.privacy;
        let mut needed: Vec<Needed<'_>> =
            input.topics.iter().map(|t| Needed::main(t, true)).collect();
        needed.push(Needed::main(&state.changelog_topic, true));
        needed.push(Needed::main(&self.cfg.dead_letter.topic, false));
        let optional = [
            (&output.risk_topic, "output.risk_topic", false, ""),
            (&output.outcomes_topic, "output.outcomes_topic", false, ""),
            (&privacy.erasure_topic, "privacy.erasure_topic", true, ""),
            (&privacy.audit_topic, "privacy.audit_topic", false, ""),
        ];
        for (name, key, co_partitioned, hint) in optional {
            if !name.is_empty() {
                needed.push(Needed {
                    name,
                    key: Some(key),
                    co_partitioned,
                    hint,
                });
            }
        }
        // A topic per segment is created on demand by whoever names them.
        if !output.topic.contains("{segment}") {
            needed.push(Needed::main(&output.topic, false));
        }
        if !output.current_topic.is_empty() {
            needed.push(Needed {
                name: &output.current_topic,
                key: Some("output.current_topic"),
                co_partitioned: true,
                hint: "; create it compacted with the input's partition count, or set \
                       output.current_topic = \"\"",
            });
        }
        needed
    }

    /// A topic's `cleanup.policy` (DescribeConfigs).
    pub(super) async fn cleanup_policy(&self, topic: &str) -> Result<String, PipelineError> {
        use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
        use rdkafka::error::KafkaError;
        use rdkafka::types::RDKafkaErrorCode;
        const WHAT: &str = "describing a topic's configuration";
        let admin: AdminClient<QuietContext> = self
            .cfg
            .kafka
            .client_config()?
            .create_with_context(QuietContext)
            .map_err(kafka("creating an admin client"))?;
        let topic = ResourceSpecifier::Topic(topic);
        let opts = AdminOptions::new().request_timeout(Some(self.watchdog.timeout()));
        let described = tokio::time::timeout(
            self.watchdog.timeout(),
            admin.describe_configs([&topic], &opts),
        )
        .await
        .map_err(|_| KafkaError::AdminOp(RDKafkaErrorCode::OperationTimedOut))
        .and_then(|r| r)
        .map_err(kafka(WHAT))?;
        let resource = described
            .into_iter()
            .next()
            .unwrap_or(Err(RDKafkaErrorCode::Fail))
            .map_err(|code| kafka(WHAT)(KafkaError::AdminOp(code)))?;
        Ok(resource
            .get("cleanup.policy")
            .and_then(|e| e.value.clone())
            .unwrap_or_else(|| "delete".into()))
    }
}
