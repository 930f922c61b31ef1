//! The raw librdkafka baselines: reading topics to their end with the
//! pipeline's own consumer settings.

#[allow(clippy::wildcard_imports)]
use super::*;

/// The client context of the benchmark readers: partition EOF is how they
/// know they are done, not an error worth a log line.
pub(super) struct ReadToEnd;

impl rdkafka::ClientContext for ReadToEnd {
    fn error(&self, error: KafkaError, reason: &str) {
        let eof = matches!(
            error,
            KafkaError::PartitionEOF(_)
                | KafkaError::Global(rdkafka::types::RDKafkaErrorCode::PartitionEOF)
        );
        if !eof {
            tracing::warn!(error = %error, reason, "Benchmark reader client error.");
        }
    }
}

impl rdkafka::consumer::ConsumerContext for ReadToEnd {}

/// A consumer that reads the given partitions from the beginning to their
/// ends, without a group's commits, reporting partition EOF.
pub(super) fn read_to_end_consumer(
    client: &ClientConfig,
    group: &str,
    topics: &[String],
    partitions: &[i32],
) -> Result<BaseConsumer<ReadToEnd>, KafkaError> {
    let mut c = client.clone();
    // The pipeline's own consumer settings, for the baseline too.
    crate::ingest::reader_defaults(&mut c, group, true);
    let consumer: BaseConsumer<ReadToEnd> = c.create_with_context(ReadToEnd)?;
    let mut tpl = TopicPartitionList::new();
    for t in topics {
        for p in partitions {
            tpl.add_partition_offset(t, *p, Offset::Beginning)?;
        }
    }
    consumer.assign(&tpl)?;
    Ok(consumer)
}

/// Reads every partition of `topics` to its end with a bare consumer,
/// handing each record to `on_record`; returns the time from the first
/// record (connection set-up is not throughput). The one read loop of the
/// raw baselines and the ingest pass, so both are timed alike.
pub(super) fn read_to_end(
    client: &ClientConfig,
    group: &str,
    topics: &[String],
    partitions: i32,
    on_record: impl FnMut(&rdkafka::message::BorrowedMessage<'_>),
) -> Result<Duration, KafkaError> {
    let all: Vec<i32> = (0..partitions).collect();
    let span = read_span(client, group, topics, &all, on_record)?;
    Ok(span.took())
}

/// When a read saw its first record and when it reached the end.
#[derive(Debug, Clone, Copy)]
pub(super) struct Span {
    first: Option<Instant>,
    end: Instant,
}

impl Span {
    fn took(&self) -> Duration {
        self.first.map(|f| self.end - f).unwrap_or_default()
    }

    /// From the earliest first record to the latest end of several reads
    /// that ran at the same time.
    pub(super) fn union(spans: &[Span]) -> Duration {
        let first = spans.iter().filter_map(|s| s.first).min();
        let end = spans.iter().map(|s| s.end).max();
        match (first, end) {
            (Some(f), Some(e)) => e - f,
            _ => Duration::ZERO,
        }
    }
}

/// [`read_to_end`] of the listed partitions of `topics`.
pub(super) fn read_span(
    client: &ClientConfig,
    group: &str,
    topics: &[String],
    partitions: &[i32],
    mut on_record: impl FnMut(&rdkafka::message::BorrowedMessage<'_>),
) -> Result<Span, KafkaError> {
    let consumer = read_to_end_consumer(client, group, topics, partitions)?;
    let mut started: Option<Instant> = None;
    let mut eof = 0usize;
    let want = topics.len() * partitions.len();
    while eof < want {
        match consumer.poll(Duration::from_millis(100)) {
            None => {}
            Some(Err(KafkaError::PartitionEOF(_))) => eof += 1,
            Some(Err(e)) => return Err(e),
            Some(Ok(msg)) => {
                started.get_or_insert_with(Instant::now);
                on_record(&msg);
            }
        }
    }
    Ok(Span {
        first: started,
        end: Instant::now(),
    })
}

/// Reads every partition of `topics` to its end with a bare consumer,
/// doing nothing with the records (the baseline).
pub(super) fn raw_read_all(
    client: &ClientConfig,
    topics: &[String],
    partitions: i32,
) -> Result<(u64, Duration), KafkaError> {
    let mut n = 0u64;
    let took = read_to_end(client, "segstream-bench-raw", topics, partitions, |_| {
        n += 1
    })?;
    Ok((n, took))
}
