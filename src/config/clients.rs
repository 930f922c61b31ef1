//! The Kafka client settings segstream adds to the configured ones: those
//! of a stream processor's consumer, of the pipeline's group members, of
//! every other reader (restore, snapshots, history, tools, benchmarks) and
//! of the transactional producer. One builder per kind of client, so the
//! benchmarks measure the settings that run. Each default is set only where
//! `[kafka.properties]` and its consumer and producer tables leave it unset.

use rdkafka::ClientConfig;

use super::{Config, ConfigError, KafkaConfig, OffsetReset};

/// Consumer settings for a stream processor, each set only where the
/// configuration leaves it unset (`[kafka.properties]` and
/// `[kafka.consumer_properties]` win). The pipeline and the benchmarks use
/// the same ones, so the benchmarks measure what runs.
pub fn consumer_defaults(c: &mut ClientConfig) {
    set_unset(
        c,
        &[
            // librdkafka's statistics every second: the lag gauge and the
            // event-time merge's "read to its end" come from them.
            ("statistics.interval.ms", "1000"),
            // When the local queue is over queued.min.messages /
            // queued.max.messages.kbytes, librdkafka waits this long before it
            // fetches again: 1000 ms by default, a one-second stall of the whole
            // pipeline each time the application drains more slowly than the
            // fetcher fills (ingest measured at 0.24x raw with the default).
            ("fetch.queue.backoff.ms", "10"),
            // Prefetch up to 64 MiB per partition set instead of a message
            // count: a steady supply for decoding without unbounded memory.
            ("queued.max.messages.kbytes", "65536"),
            // A fetch request returns as soon as 1 byte is there (live latency)
            // but waits at most 100 ms when there is nothing (idle topics).
            ("fetch.wait.max.ms", "100"),
        ],
    );
}

/// The settings of a member of the pipeline's consumer group (a stream
/// thread): the group, no automatic commits or offset stores (offsets go
/// into each cycle's transaction), `read_committed`, the range assignor
/// (the same partition numbers of every input topic: state is
/// co-partitioned) and `input.auto_offset_reset`, on top of
/// [`consumer_defaults`]. The one builder of group members.
pub fn member_config(cfg: &Config) -> Result<ClientConfig, ConfigError> {
    let mut c = cfg.kafka.consumer_config()?;
    consumer_defaults(&mut c);
    c.set("group.id", &cfg.kafka.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("isolation.level", "read_committed")
        .set("partition.assignment.strategy", "range")
        .set(
            "auto.offset.reset",
            match cfg.input.auto_offset_reset {
                OffsetReset::Earliest => "earliest",
                OffsetReset::Latest => "latest",
            },
        );
    Ok(c)
}

/// The settings of a reader of committed records outside the pipeline's
/// group (restore, snapshots, erasure lists, history, `show` commands,
/// benchmarks): its own `group` id (librdkafka assigns partitions only with
/// one; ids next to `kafka.group_id` fall under the same prefix ACL), no
/// commits, `read_committed`, partition EOF events when `eof`, on top of
/// [`consumer_defaults`]. The one builder of such readers.
pub fn reader_config(
    kafka: &KafkaConfig,
    group: &str,
    eof: bool,
) -> Result<ClientConfig, ConfigError> {
    let mut c = kafka.consumer_config()?;
    reader_defaults(&mut c, group, eof);
    Ok(c)
}

/// [`reader_config`]'s settings applied to a client configuration built
/// elsewhere (the restore and benchmark readers take one).
pub fn reader_defaults(c: &mut ClientConfig, group: &str, eof: bool) {
    consumer_defaults(c);
    c.set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", if eof { "true" } else { "false" })
        .set("isolation.level", "read_committed");
}

/// Producer settings for the transactional producer, each set only where
/// the configuration leaves it unset.
pub fn producer_defaults(c: &mut ClientConfig) {
    set_unset(
        c,
        &[
            // A commit cycle's records go out in few large batches; the commit
            // flushes anyway, so a short linger costs no latency at the end.
            ("linger.ms", "5"),
            ("batch.num.messages", "10000"),
            // Room for a whole cycle's outputs, changelog and dead letters
            // without QueueFull back-off in the middle of a cycle.
            ("queue.buffering.max.messages", "1000000"),
            // Right after a commit the transaction coordinator answers the
            // next cycle's AddOffsetsToTxn with CONCURRENT_TRANSACTIONS until
            // the previous markers are written (milliseconds); the retry then
            // waits 10 ms, not librdkafka's 100 (it still doubles per retry,
            // up to retry.backoff.max.ms).
            ("retry.backoff.ms", "10"),
        ],
    );
}

/// Sets each property the configuration leaves unset.
fn set_unset(c: &mut ClientConfig, defaults: &[(&str, &str)]) {
    for (key, value) in defaults {
        if c.get(key).is_none() {
            c.set(*key, *value);
        }
    }
}
