//! Helpers for the pipeline tests: topics and a registry per test, `segstream
//! run` as a child process, a known input stream, and the read_committed
//! verifier of outputs, changelog and dead letters.

//! process: crashes (SIGKILL at random moments, then restart) lose nothing
//! and duplicate nothing. A verifier reads the output, changelog and
//! dead-letter topics with read_committed and checks every customer.

use std::collections::{BTreeMap, HashMap};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use prost::Message as _;
use rand::Rng as _;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use segstream::config::Config;
use segstream::event::corpus::{bad_records, browse, purchase, review};
use segstream::event::encode::{encode, WireFormat};
use segstream::event::proto::{self, SegmentChange};
use segstream::features::{FeatureSpec, Featurizer};
use segstream::ingest::{header, now_ms};
use segstream::model::{reference, rules, Registry, Segment};
use segstream::state::{changelog, StateLimits};

pub const CUSTOMERS: usize = 1500;
pub const PARTITIONS: i32 = 3;

pub struct Setup {
    pub dir: tempfile::TempDir,
    /// The configuration file `segstream run` reads, written from `settings`.
    pub config: std::path::PathBuf,
    /// The test's configuration, typed; change it with [`Setup::configure`].
    pub settings: Config,
    pub browse: String,
    pub purchase: String,
    pub review: String,
    pub changelog: String,
    pub dlq: String,
    pub output: String,
    /// The current-membership topic (compacted, co-partitioned).
    pub current: String,
    /// Risk flags.
    pub risk: String,
    pub group: String,
}

pub async fn setup() -> Setup {
    setup_with(PARTITIONS, "reference").await
}

/// Topics with `partitions` partitions, a registry with the built-in model
/// `model` (`reference` or `rules`), and a config file.
pub async fn setup_with(partitions: i32, model: &str) -> Setup {
    setup_named("pipe", partitions, model).await
}

/// Like [`setup_with`], with the topics, group and transactional ids
/// starting with `prefix` (ACLs grant by prefix).
pub async fn setup_named(prefix: &str, partitions: i32, model: &str) -> Setup {
    let id = super::unique(prefix);
    let t = |s: &str| format!("{id}.{s}");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("segstream.toml");
    let mut s = Setup {
        dir,
        config,
        settings: Config::default(),
        browse: t("browse"),
        purchase: t("purchase"),
        review: t("review"),
        changelog: t("changelog"),
        dlq: t("dlq"),
        output: t("segments"),
        current: t("current"),
        risk: t("risk"),
        group: t("group"),
    };
    super::create_topics(&[&s.browse, &s.purchase, &s.review], partitions).await;
    super::create_topics_with(
        &[&s.changelog, &s.current],
        partitions,
        &[("cleanup.policy", "compact")],
    )
    .await;
    super::create_topics(&[&s.dlq, &s.output, &s.risk], 1).await;
    let registry = Registry::new(s.dir.path().join("models"));
    let limits = StateLimits::default();
    let featurizer = Featurizer::new(FeatureSpec::for_state(limits), limits).unwrap();
    let segments: Vec<String> = Segment::names();
    let (onnx, manifest) = if model == "rules" {
        rules::build(&featurizer, "m1").expect("rule model")
    } else {
        reference::build(&featurizer, &segments, "m1", 3).expect("reference model")
    };
    registry.publish(&onnx, &manifest).unwrap();
    registry.promote("m1").unwrap();
    let registry = registry.root().to_path_buf();
    let c = &mut s.settings;
    c.kafka.bootstrap_servers = super::bootstrap();
    c.kafka.group_id = s.group.clone();
    for (k, v) in [
        ("session.timeout.ms", "6000"),
        ("heartbeat.interval.ms", "1000"),
    ] {
        c.kafka.consumer_properties.insert(k.into(), v.into());
    }
    c.input.topics = vec![s.browse.clone(), s.purchase.clone(), s.review.clone()];
    c.state.changelog_topic = s.changelog.clone();
    c.dead_letter.topic = s.dlq.clone();
    c.output.topic = s.output.clone();
    c.output.current_topic = s.current.clone();
    c.output.risk_topic = s.risk.clone();
    c.decide.margin = 0.0;
    c.decide.min_dwell = Duration::from_millis(1);
    c.score.registry = registry;
    c.score.poll_interval = Duration::from_secs(1);
    c.pipeline.transactional_id = format!("{}-instance", s.group);
    c.pipeline.http_listen = String::new();
    // More than one stream thread per instance: the exactly-once proofs
    // hold with threads as group members of their own.
    c.pipeline.threads = 2;
    super::write_config(&s.config, &s.settings);
    s
}

impl Setup {
    /// Changes the test's configuration (typed, checked like a file a user
    /// writes) and rewrites the file that `segstream run` reads.
    pub fn configure(&mut self, change: impl FnOnce(&mut Config)) {
        change(&mut self.settings);
        super::write_config(&self.config, &self.settings);
    }
}

/// Starts `segstream run`; its log goes to `log` (shown when a check fails).
pub fn start(config: &std::path::Path, log: &std::path::Path) -> Child {
    spawn_run(config, log, None)
}

/// Like [`start`], with more environment variables (e.g. `RUST_LOG`).
pub fn start_env(config: &std::path::Path, log: &std::path::Path, env: &[(&str, &str)]) -> Child {
    spawn_run_env(config, log, None, env)
}

/// Starts `segstream run`, optionally with its own transactional id.
fn spawn_run(
    config: &std::path::Path,
    log: &std::path::Path,
    transactional_id: Option<String>,
) -> Child {
    spawn_run_env(config, log, transactional_id, &[])
}

fn spawn_run_env(
    config: &std::path::Path,
    log: &std::path::Path,
    transactional_id: Option<String>,
    env: &[(&str, &str)],
) -> Child {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_segstream"));
    cmd.args(["run", "-c"])
        .arg(config)
        .env("RUST_LOG", "warn,segstream=info")
        .env("NO_COLOR", "1")
        .stdout(std::process::Stdio::null())
        .stderr(file);
    if let Some(id) = transactional_id {
        cmd.env("SEGSTREAM__PIPELINE__TRANSACTIONAL_ID", id);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().expect("start segstream run")
}

pub fn tail(log: &std::path::Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(400)..].join("\n")
}

pub fn client() -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", super::bootstrap());
    c
}

/// A committed record: partition, offset, key, value, headers.
pub type Row = (
    i32,
    i64,
    Option<Vec<u8>>,
    Option<Vec<u8>>,
    Vec<(String, String)>,
);

/// The value of header `key` in a row's headers.
pub fn header_value(headers: &[(String, String)], key: &str) -> Option<String> {
    headers
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.clone())
}

/// A TCP port free right now on loopback.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A GET over HTTP/1.0 (no chunked answers): status code, head and body.
pub fn get_full(port: u16, path: &str) -> Option<(u16, String, String)> {
    use std::io::{Read as _, Write as _};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).ok()?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, head.to_string(), body.to_string()))
}

/// [`get_full`], asked again while the answer is 503 (a lookup during a
/// rebalance or restore says "retry"), for at most 30 s.
pub fn get_settled(port: u16, path: &str) -> Option<(u16, String, String)> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let answer = get_full(port, path);
        match &answer {
            Some((503, _, _)) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(300));
            }
            _ => return answer,
        }
    }
}

/// [`get_full`] without the head.
pub fn get(port: u16, path: &str) -> Option<(u16, String)> {
    get_full(port, path).map(|(status, _, body)| (status, body))
}

/// Produces (topic, key, value) records, idempotently, waiting for each
/// delivery.
pub async fn produce_records(records: Vec<(String, String, Vec<u8>)>) {
    produce_records_at(records, None).await;
}

/// [`produce_records`] with every record's Kafka timestamp set to
/// `timestamp_ms` (a producer that stamps its records itself, or that
/// sends what it stamped earlier).
pub async fn produce_records_at(
    records: Vec<(String, String, Vec<u8>)>,
    timestamp_ms: Option<i64>,
) {
    let producer: FutureProducer = client()
        .set("enable.idempotence", "true")
        .set("linger.ms", "20")
        .create()
        .unwrap();
    for chunk in records.chunks(2000) {
        let mut pending = Vec::new();
        for (topic, key, value) in chunk {
            let mut record = FutureRecord::to(topic).key(key).payload(value);
            if let Some(t) = timestamp_ms {
                record = record.timestamp(t);
            }
            pending.push(
                producer
                    .send_result(record)
                    .map_err(|(e, _)| e)
                    .expect("enqueue"),
            );
        }
        for delivery in pending {
            delivery
                .await
                .expect("delivered")
                .map_err(|(e, _)| e)
                .expect("produce");
        }
    }
}

/// Reads every committed record of `topic` (all partitions) to its end.
pub fn read_all(topic: &str) -> Vec<Row> {
    let consumer: BaseConsumer = client()
        .set("group.id", super::unique("verifier"))
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    let partitions = md.topics()[0].partitions().len();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions as i32 {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    // Partitions read to their end. With read_committed, end of partition is
    // reported at the last stable offset: a transaction still open (one of a
    // SIGKILLed instance, until the broker times it out) hides every record
    // after it. A partition counts as read only when its position has
    // reached the high watermark, i.e. nothing is hidden.
    let mut done = std::collections::HashSet::new();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while done.len() < partitions && Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(500)) {
            Some(Ok(m)) => {
                let headers = m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|x| {
                                (
                                    x.key.to_string(),
                                    String::from_utf8_lossy(x.value.unwrap_or_default())
                                        .into_owned(),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                out.push((
                    m.partition(),
                    m.offset(),
                    m.key().map(<[u8]>::to_vec),
                    m.payload().map(<[u8]>::to_vec),
                    headers,
                ))
            }
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                let (_, high) = consumer
                    .fetch_watermarks(topic, p, Duration::from_secs(10))
                    .unwrap();
                let position = consumer
                    .position()
                    .unwrap()
                    .find_partition(topic, p)
                    .and_then(|e| e.offset().to_raw())
                    .unwrap_or(0);
                if high == 0 || position >= high {
                    done.insert(p);
                }
            }
            Some(Err(e)) => panic!("reading {topic}: {e}"),
            None => {}
        }
    }
    assert_eq!(done.len(), partitions, "read {topic} to its end");
    out
}

/// Whether the group's committed offsets reached the end of every input partition.
pub fn consumed_all(s: &Setup) -> bool {
    consumed_all_of(s, &s.group, PARTITIONS)
}

pub fn consumed_all_of(s: &Setup, group: &str, partitions: i32) -> bool {
    let consumer: BaseConsumer = client()
        .set("group.id", group)
        .set("isolation.level", "read_committed")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for t in [&s.browse, &s.purchase, &s.review] {
        for p in 0..partitions {
            tpl.add_partition(t, p);
        }
    }
    let Ok(committed) = consumer.committed_offsets(tpl, Duration::from_secs(10)) else {
        return false;
    };
    committed.elements().iter().all(|e| {
        let (_, high) = consumer
            .fetch_watermarks(e.topic(), e.partition(), Duration::from_secs(10))
            .unwrap_or((0, i64::MAX));
        matches!(e.offset(), Offset::Offset(o) if o >= high) || (high == 0)
    })
}

/// What the stream held: events per customer and the bad records' coordinates.
pub struct Stream {
    pub produced: HashMap<String, u64>,
    /// Every valid record's value, per customer (for the field-by-field check).
    pub values: HashMap<String, Vec<Vec<u8>>>,
    pub bad: Vec<(i32, i64, segstream::event::Reason)>,
}

#[derive(Clone)]
pub struct Topics {
    pub browse: String,
    pub purchase: String,
    pub review: String,
}

/// Produces a known stream over about `seconds`: every customer gets 2-6
/// events of mixed kinds and encodings, all in the last half hour (inside the
/// allowed lateness); then the bad-record corpus.
pub async fn produce_stream(t: Topics, seconds: f64) -> Stream {
    let producer: FutureProducer = client()
        .set("enable.idempotence", "true")
        .set("linger.ms", "20")
        .create()
        .unwrap();
    let now = now_ms();
    let mut produced: HashMap<String, u64> = HashMap::new();
    let mut values: HashMap<String, Vec<Vec<u8>>> = HashMap::new();
    let slices = 20;
    let per_slice = CUSTOMERS.div_ceil(slices);
    for slice in 0..slices {
        let mut pending = tokio::task::JoinSet::new();
        {
            let mut rng = rand::rng();
            for c in slice * per_slice..((slice + 1) * per_slice).min(CUSTOMERS) {
                let customer = format!("cust-{c:05}");
                let n = rng.random_range(2..=6);
                for i in 0..n {
                    let id = format!("{customer}-e{i}");
                    let at = now - 1_800_000 + rng.random_range(0..1_700_000);
                    let (event, topic) = match rng.random_range(0..3) {
                        0 => (browse(&customer, &id, at), &t.browse),
                        1 => (purchase(&customer, &id, at), &t.purchase),
                        _ => (review(&customer, &id, at), &t.review),
                    };
                    let value = encode(&event, WireFormat::ALL[i % WireFormat::ALL.len()]);
                    values
                        .entry(customer.clone())
                        .or_default()
                        .push(value.clone());
                    let (key, topic, producer) =
                        (customer.clone(), topic.clone(), producer.clone());
                    pending.spawn(async move {
                        producer
                            .send(
                                FutureRecord::to(&topic).key(&key).payload(&value),
                                Duration::from_secs(30),
                            )
                            .await
                            .map(|_| ())
                            .map_err(|(e, _)| e.to_string())
                    });
                    *produced.entry(customer.clone()).or_default() += 1;
                }
            }
        }
        while let Some(r) = pending.join_next().await {
            r.unwrap().expect("produce");
        }
        tokio::time::sleep(Duration::from_secs_f64(seconds / slices as f64)).await;
    }
    let mut bad = Vec::new();
    for b in bad_records("cust-bad", now, 300 * 1024) {
        let mut r = FutureRecord::<[u8], [u8]>::to(&t.browse).payload(&b.value);
        if let Some(k) = &b.key {
            r = r.key(k);
        }
        let d = producer
            .send(r, Duration::from_secs(30))
            .await
            .map_err(|(e, _)| e)
            .unwrap();
        bad.push((d.partition, d.offset, b.expected));
    }
    Stream {
        produced,
        values,
        bad,
    }
}

pub fn topics(s: &Setup) -> Topics {
    Topics {
        browse: s.browse.clone(),
        purchase: s.purchase.clone(),
        review: s.review.clone(),
    }
}

/// Waits until the group committed the end of every input partition.
pub async fn wait_consumed(s: &Setup, children: &mut [Child], log: &std::path::Path) {
    let deadline = Instant::now() + Duration::from_secs(180);
    while !consumed_all(s) {
        assert!(
            Instant::now() < deadline,
            "input not consumed within 180 s:\n{}",
            tail(log)
        );
        for child in children.iter_mut() {
            assert!(
                child.try_wait().unwrap().is_none(),
                "segstream run exited early:\n{}",
                tail(log)
            );
        }
        tokio::time::sleep(Duration::from_millis(1000)).await;
    }
}

/// Reads output, changelog and dead-letter topics with read_committed and
/// checks every customer: exact event counts, no duplicates, consistent
/// segment chains, each bad record dead-lettered exactly once.
/// Risk flags: per customer and rule they alternate raised, cleared,
/// raised... (never the same twice in a row: exactly once), and the last one
/// agrees with the flags in the committed state.
pub fn verify_risk(s: &Setup, latest: &HashMap<String, Option<Vec<u8>>>) {
    let mut last: BTreeMap<(String, String), bool> = BTreeMap::new();
    for (_, _, key, value, _) in read_all(&s.risk) {
        let f = proto::RiskFlag::decode(&value.unwrap()[..]).unwrap();
        assert_eq!(key.as_deref(), Some(f.customer_id.as_bytes()));
        let before = last.insert((f.customer_id.clone(), f.rule.clone()), f.raised);
        assert_ne!(
            before.unwrap_or(false),
            f.raised,
            "{} {}: a repeated or unpaired {}",
            f.customer_id,
            f.rule,
            if f.raised { "raise" } else { "clear" }
        );
    }
    for ((customer, rule), raised) in &last {
        // Erased or evicted (a tombstone, or compacted away): every flag
        // must have been cleared on the topic.
        let Some(Some(value)) = latest.get(customer) else {
            assert!(
                !raised,
                "{customer} {rule}: left raised after the customer's state went"
            );
            continue;
        };
        let state = changelog::decode(value).unwrap();
        let bit = segstream::decide::risk::Rule::ALL
            .iter()
            .find(|r| r.as_str() == rule)
            .unwrap()
            .bit();
        assert_eq!(
            state.decision.risk_flags & bit != 0,
            *raised,
            "{customer} {rule}"
        );
    }
}

/// A fresh read of the current-membership topic from the beginning gives
/// each customer exactly the segment that their change stream ends in (and
/// nothing for a customer whose stream ends in an eviction): the bootstrap
/// a new subscriber does.
pub fn verify_current(s: &Setup, chains: &BTreeMap<String, Vec<SegmentChange>>) {
    let mut current: BTreeMap<String, SegmentChange> = BTreeMap::new();
    let partitions_of = |topic: &str| -> BTreeMap<String, i32> {
        read_all(topic)
            .into_iter()
            .map(|(p, _, k, _, _)| (String::from_utf8(k.unwrap()).unwrap(), p))
            .collect()
    };
    for (_, _, key, value, _) in read_all(&s.current) {
        let key = String::from_utf8(key.unwrap()).unwrap();
        match value {
            Some(v) => {
                let c = SegmentChange::decode(&v[..]).unwrap();
                assert_eq!(c.customer_id, key);
                current.insert(key, c);
            }
            None => {
                current.remove(&key);
            }
        }
    }
    let expected: BTreeMap<&String, &SegmentChange> = chains
        .iter()
        .filter_map(|(k, chain)| {
            chain
                .last()
                .filter(|c| !c.segment.is_empty())
                .map(|c| (k, c))
        })
        .collect();
    assert_eq!(
        current.len(),
        expected.len(),
        "the current topic has every classified customer once"
    );
    for (customer, last) in expected {
        let c = &current[customer];
        assert_eq!(
            (c.segment.as_str(), c.decided_at_ms),
            (last.segment.as_str(), last.decided_at_ms),
            "{customer}: the current topic holds the last change"
        );
    }
    // Co-partitioned: a customer's current row is in their changelog partition.
    let changelog = partitions_of(&s.changelog);
    for (customer, p) in partitions_of(&s.current) {
        assert_eq!(changelog.get(&customer), Some(&p), "{customer}: partition");
    }
}

pub fn verify(s: &Setup, stream: &Stream) {
    let total_events: u64 = stream.produced.values().sum();
    let defaults = segstream::config::Config::default();
    let decoders = defaults.decoders();
    let decoder = decoders.for_topic("");
    let limits = defaults.state.limits().state;
    let mut latest: HashMap<String, Option<Vec<u8>>> = HashMap::new();
    for (_, _, key, value, _) in read_all(&s.changelog) {
        latest.insert(String::from_utf8(key.unwrap()).unwrap(), value);
    }
    let mut counted = 0u64;
    for (customer, n) in &stream.produced {
        let bytes = latest
            .get(customer)
            .and_then(|v| v.as_ref())
            .unwrap_or_else(|| panic!("{customer} missing from the changelog"));
        let state = changelog::decode(bytes).unwrap();
        // Field by field: the committed state equals the state of the
        // produced events replayed offline (decision memory aside: it
        // depends on when scoring ran).
        let mut expected = segstream::state::CustomerState::default();
        for value in &stream.values[customer] {
            let (event, _) = decoder
                .decode(Some(customer.as_bytes()), Some(value), now_ms())
                .expect("a valid produced event");
            expected.record(&event, limits);
        }
        let mut facts = state.clone();
        facts.decision = Default::default();
        assert_eq!(
            facts, expected,
            "{customer}: committed state equals the replayed input"
        );
        let events: u64 = state
            .days()
            .iter()
            .map(|d| u64::from(d.browse) + u64::from(d.purchases) + u64::from(d.reviews))
            .sum();
        assert_eq!(events, *n, "{customer}: events in state");
        assert_eq!(
            state.duplicates, 0,
            "{customer}: no event was applied twice"
        );
        assert!(
            !state.decision.segment.is_empty(),
            "{customer} was classified"
        );
        counted += events;
    }
    assert_eq!(counted, total_events);

    let mut chains: BTreeMap<String, Vec<SegmentChange>> = BTreeMap::new();
    for (_, _, key, value, headers) in read_all(&s.output) {
        let change = SegmentChange::decode(&value.unwrap()[..]).unwrap();
        assert_eq!(key.as_deref(), Some(change.customer_id.as_bytes()));
        assert!(headers
            .iter()
            .any(|(k, v)| k == "segstream.segment" && *v == change.segment));
        assert_eq!(change.model_version, "m1");
        chains
            .entry(change.customer_id.clone())
            .or_default()
            .push(change);
    }
    assert_eq!(
        chains.len(),
        CUSTOMERS,
        "every customer got a first classification"
    );
    for (customer, chain) in &chains {
        let mut previous = String::new();
        for c in chain {
            assert_eq!(
                c.previous_segment, previous,
                "{customer}: chain broken: {chain:?}"
            );
            assert_ne!(c.segment, c.previous_segment, "{customer}: not a change");
            previous = c.segment.clone();
        }
        let state = changelog::decode(latest[customer].as_ref().unwrap()).unwrap();
        assert_eq!(
            state.decision.segment, previous,
            "{customer}: state agrees with the last output"
        );
        assert_eq!(chain[0].trigger, proto::Trigger::Event as i32);
        for c in chain {
            assert_eq!(c.membership, proto::Membership::Entered as i32);
        }
    }
    verify_current(s, &chains);
    verify_risk(s, &latest);

    let mut seen: HashMap<(i32, i64), u32> = HashMap::new();
    for (_, _, _, _, headers) in read_all(&s.dlq) {
        let get = |k: &str| header_value(&headers, k).unwrap();
        assert_eq!(get(header::TOPIC), s.browse);
        let coords = (
            get(header::PARTITION).parse().unwrap(),
            get(header::OFFSET).parse().unwrap(),
        );
        let expected = stream
            .bad
            .iter()
            .find(|(p, o, _)| (*p, *o) == coords)
            .expect("known bad record");
        assert_eq!(get(header::REASON), expected.2.as_str());
        *seen.entry(coords).or_default() += 1;
    }
    assert_eq!(
        seen.len(),
        stream.bad.len(),
        "every bad record dead-lettered"
    );
    assert!(
        seen.values().all(|n| *n == 1),
        "no dead letter twice: {seen:?}"
    );
}

/// Like [`start`], with its own transactional id (one per instance).
pub fn start_as(config: &std::path::Path, log: &std::path::Path, instance: &str) -> Child {
    start_as_with(config, log, instance, &[])
}

/// Like [`start_as`], with more environment variables (e.g. a fault hook).
pub fn start_as_with(
    config: &std::path::Path,
    log: &std::path::Path,
    instance: &str,
    env: &[(&str, &str)],
) -> Child {
    let text = std::fs::read_to_string(config).unwrap();
    let group = text
        .lines()
        .find_map(|l| l.strip_prefix("group_id = \""))
        .map(|g| g.trim_end_matches('"').to_string())
        .unwrap();
    spawn_run_env(config, log, Some(format!("{group}-{instance}")), env)
}

/// Waits until `child` exits by itself, failing after `within`.
pub async fn wait_exit(
    child: &mut Child,
    log: &std::path::Path,
    within: Duration,
) -> std::process::ExitStatus {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            started.elapsed() < within,
            "still running after {within:?}:\n{}",
            tail(log)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub fn sigterm(child: &Child) {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
}

pub fn outputs(s: &Setup) -> BTreeMap<String, Vec<SegmentChange>> {
    let mut chains: BTreeMap<String, Vec<SegmentChange>> = BTreeMap::new();
    for (_, _, _, value, _) in read_all(&s.output) {
        let change = SegmentChange::decode(&value.unwrap()[..]).unwrap();
        chains
            .entry(change.customer_id.clone())
            .or_default()
            .push(change);
    }
    chains
}

/// Copies a run log to `$SEGSTREAM_TEST_LOG_DIR` (when set) for inspection.
pub fn keep_log(log: &std::path::Path) {
    if let Ok(dir) = std::env::var("SEGSTREAM_TEST_LOG_DIR") {
        let name = format!("{}.log", super::unique("run"));
        let _ = std::fs::copy(log, std::path::Path::new(&dir).join(name));
    }
}

/// The baselines' outcomes: one per baseline for each champion outcome
/// (same customer and cut), with the same realized fields; returns the
/// baselines seen.
pub fn check_baselines(all: &[segstream::event::proto::Outcome]) -> Vec<String> {
    use std::collections::BTreeMap;
    let mut by_key: BTreeMap<(&str, i64), Vec<&segstream::event::proto::Outcome>> = BTreeMap::new();
    for o in all {
        by_key
            .entry((&o.customer_id, o.cut_ms))
            .or_default()
            .push(o);
    }
    let mut names: Vec<String> = all
        .iter()
        .filter(|o| o.role == "baseline")
        .map(|o| o.model_version.clone())
        .collect();
    names.sort();
    names.dedup();
    assert!(names.iter().any(|n| n == "rfm_rules"), "{names:?}");
    for ((c, t), group) in &by_key {
        let champion: Vec<_> = group.iter().filter(|o| o.role == "champion").collect();
        assert_eq!(champion.len(), 1, "{c} at {t}: {group:?}");
        let mut versions: Vec<&str> = group
            .iter()
            .filter(|o| o.role == "baseline")
            .map(|o| o.model_version.as_str())
            .collect();
        versions.sort_unstable();
        assert_eq!(versions, names, "{c} at {t}: each baseline once");
        for o in group {
            let realized = |o: &segstream::event::proto::Outcome| {
                (
                    o.purchased,
                    o.churned,
                    o.spend_minor,
                    o.realized_segment.clone(),
                )
            };
            assert_eq!(realized(o), realized(champion[0]));
        }
    }
    names
}
