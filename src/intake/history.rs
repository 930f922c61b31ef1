//! History from the input topics themselves, for the trainer and batch
//! tools: the records the pipeline would read, through the pipeline's
//! [`Intake`].

use std::collections::BTreeMap;

use super::{Accepted, Intake};
use crate::event::files::{BadRow, Progress, ReadReport, Record};
use crate::event::Rejection;
use crate::ingest::IngestError;

/// Reads the configured input topics from their beginning up to the end
/// offsets they have when the read starts (`read_committed`), accepting each
/// record exactly as the pipeline does ([`Intake::accept`]: the configured
/// decoders and limits, and the partition check; customer ids as produced). Blocking: call it from a blocking task.
/// It joins no consumer group and commits nothing. `on_progress` is called
/// every `every` records and at the end.
pub fn read_topics(
    config: &crate::config::Config,
    every: u64,
    mut on_record: impl FnMut(Record),
    mut on_progress: impl FnMut(&Progress),
) -> Result<ReadReport, IngestError> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Message;
    use rdkafka::{Offset, TopicPartitionList};
    use std::time::{Duration, Instant};

    use crate::config::reader_config;
    use crate::ingest::{now_ms, source_record};

    let kafka = IngestError::kafka;
    let group = format!("{}-history-{}", config.kafka.group_id, std::process::id());
    let client = reader_config(&config.kafka, &group, false)?;
    let consumer: BaseConsumer = client.create().map_err(kafka("creating the consumer"))?;
    let timeout = Duration::from_secs(10);
    let metadata = consumer
        .fetch_metadata(None, timeout)
        .map_err(kafka("fetching metadata"))?;
    let mut intake = Intake::reader(config);
    let mut tpl = TopicPartitionList::new();
    // (topic, partition) → end offset still to reach.
    let mut ends: BTreeMap<(String, i32), i64> = BTreeMap::new();
    for topic in &config.input.topics {
        let Some(m) = metadata.topics().iter().find(|t| t.name() == topic) else {
            return Err(IngestError::MissingTopics(vec![topic.clone()]));
        };
        if Some(topic) == config.input.topics.first() {
            intake.set_partitions(m.partitions().len() as i32);
        }
        for p in m.partitions() {
            let (low, high) = consumer
                .fetch_watermarks(topic, p.id(), timeout)
                .map_err(kafka("fetching end offsets"))?;
            if high > low {
                ends.insert((topic.clone(), p.id()), high);
                tpl.add_partition_offset(topic, p.id(), Offset::Beginning)
                    .map_err(kafka("assigning partitions"))?;
            }
        }
    }
    let mut report = ReadReport::default();
    let mut progress = Progress::default();
    if ends.is_empty() {
        on_progress(&progress);
        report.progress = progress;
        return Ok(report);
    }
    consumer
        .assign(&tpl)
        .map_err(kafka("assigning partitions"))?;
    let mut last_data = Instant::now();
    let every = every.max(1);
    while !ends.is_empty() {
        let Some(msg) = consumer.poll(Duration::from_millis(200)) else {
            // Transaction markers occupy the last offsets of a partition
            // without being delivered; position tells when they are passed.
            if let Ok(pos) = consumer.position() {
                for e in pos.elements() {
                    if let Some(o) = e.offset().to_raw() {
                        let key = (e.topic().to_string(), e.partition());
                        if ends.get(&key).is_some_and(|end| o >= *end) {
                            ends.remove(&key);
                        }
                    }
                }
            }
            if last_data.elapsed() > Duration::from_secs(10) {
                tracing::warn!(
                    partitions = ends.len(),
                    "Stopped reading the input topics: no record for 10 s before their end offsets (an open transaction?)."
                );
                break;
            }
            continue;
        };
        let msg = msg.map_err(kafka("reading the input topics"))?;
        last_data = Instant::now();
        let topic = intake.topic(msg.topic());
        let record = source_record(&msg);
        let key = (msg.topic().to_string(), msg.partition());
        let Some(end) = ends.get(&key).copied() else {
            continue;
        };
        if record.offset >= end {
            ends.remove(&key);
            continue;
        }
        if record.offset + 1 >= end {
            ends.remove(&key);
        }
        progress.records += 1;
        progress.bytes += record.value.map_or(0, |v| v.len() as u64);
        let r = match intake.accept(&record, &topic, now_ms()) {
            Accepted::Event(e) => Record::Event(e.event),
            // The reader's intake has no erasure topic.
            Accepted::Erasure(_) => continue,
            Accepted::Refused(d) => {
                progress.rejected += 1;
                Record::Bad(BadRow {
                    location: format!("{}[{}]@{}", record.topic, record.partition, record.offset),
                    rejection: Rejection::new(d.reason, d.message),
                })
            }
        };
        report.count(&r);
        on_record(r);
        if progress.records % every == 0 {
            on_progress(&progress);
        }
    }
    on_progress(&progress);
    report.progress = progress;
    Ok(report)
}
