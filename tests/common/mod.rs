//! Helpers shared by the integration tests: the real broker's address and
//! unique topic and group names, so tests never see each other's data.

#![allow(dead_code)]

pub mod pipeline;

use std::time::Duration;

use rand::Rng as _;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::ClientConfig;

/// Fails the test when the ONNX Runtime library is not provisioned (the
/// pipeline and the scorer need it): `make test` exports `ORT_DYLIB_PATH`.
pub fn require_onnxruntime() {
    assert!(
        std::env::var_os("ORT_DYLIB_PATH").is_some(),
        "ORT_DYLIB_PATH is not set; run `make test` (it provisions ONNX Runtime)"
    );
}

/// The broker `make test` starts (`make kafka-up`).
pub fn bootstrap() -> String {
    std::env::var("SEGSTREAM_TEST_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:19092".into())
}

/// A name no other test run uses.
/// Writes a typed configuration as the TOML file a user would write, after
/// checking it as `segstream config check` does: a test cannot run on a
/// configuration that the product would refuse.
pub fn write_config(path: &std::path::Path, config: &segstream::config::Config) {
    let tree = serde_json::to_value(config).expect("a configuration serializes");
    if let Err(e) = segstream::config::Config::from_value(tree) {
        panic!("the test configuration is invalid: {e}");
    }
    let text = toml::to_string(config).expect("a configuration serializes");
    std::fs::write(path, text).unwrap();
}

pub fn unique(prefix: &str) -> String {
    let n: u64 = rand::rng().random();
    format!("{prefix}-{n:016x}")
}

/// Creates topics with `partitions` partitions, failing loudly when the broker
/// is not there.
pub async fn create_topics(names: &[&str], partitions: i32) {
    create_topics_with(names, partitions, &[]).await
}

/// Creates topics with topic-level configs (e.g. `cleanup.policy=compact`).
pub async fn create_topics_with(names: &[&str], partitions: i32, configs: &[(&str, &str)]) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .create()
        .expect("admin client");
    let topics: Vec<NewTopic<'_>> = names
        .iter()
        .map(|n| {
            configs.iter().fold(
                NewTopic::new(n, partitions, TopicReplication::Fixed(1)),
                |t, (k, v)| t.set(k, v),
            )
        })
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results =
        tokio::time::timeout(Duration::from_secs(60), admin.create_topics(&topics, &opts))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "no Kafka broker answered at {} within 60 s; start one with `make kafka-up` \
                 (or run `make test`, which does)",
                    bootstrap()
                )
            })
            .expect("create topics");
    for r in results {
        if let Err((topic, code)) = r {
            panic!("creating topic {topic}: {code}");
        }
    }
}

/// The path of an external tool from `var`, or `None` (with a note) when the
/// variable is unset outside `make test`.
pub fn tool(var: &str, what: &str) -> Option<std::path::PathBuf> {
    match std::env::var_os(var) {
        Some(p) => {
            let p = std::path::PathBuf::from(p);
            assert!(
                p.exists(),
                "{var}={} does not exist; run `make test` (or its tool targets) to install {what}",
                p.display()
            );
            Some(p)
        }
        None if std::env::var_os("SEGSTREAM_TEST_REQUIRE_TOOLS").is_some() => {
            panic!("{var} is not set; `make test` exports it (it installs {what})")
        }
        None => {
            eprintln!("note: {var} is not set; skipping (run `make test`, or export it: {what})");
            None
        }
    }
}
