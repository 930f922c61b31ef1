use std::io::Write as _;

use super::problems::edit_distance;
use super::*;
use crate::event::Encoding;

fn load_toml(toml: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let mut f = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    f.write_all(toml.as_bytes()).unwrap();
    Config::load_with_env(
        Some(f.path()),
        env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
    )
}

fn paths(e: &ConfigError) -> Vec<&str> {
    e.problems.iter().map(|p| p.path.as_str()).collect()
}

#[test]
fn defaults_are_valid() {
    let c = Config::load_with_env(None, Vec::new()).unwrap();
    assert_eq!(c, Config::default());
    assert_eq!(c.input.topics, default_input_topics());
}

#[test]
fn the_shipped_example_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/segstream.example.toml");
    let c = Config::load_with_env(Some(&path), Vec::new()).unwrap();
    assert_eq!(c.dead_letter.topic, "segstream-dlq");
}

#[test]
fn three_mistakes_are_all_reported() {
    let e = load_toml(
        r#"
        [kafka]
        bootstrap_server = "localhost:9092"   # typo
        [input]
        max_buffered = "lots"                 # wrong type
        [dead_letter]
        topic = "bad topic!"                  # invalid value
        "#,
        &[],
    )
    .unwrap_err();
    assert_eq!(
        paths(&e),
        [
            "kafka.bootstrap_server",
            "input.max_buffered",
            "dead_letter.topic"
        ],
        "{e}"
    );
    let text = e.to_string();
    assert!(text.starts_with("3 configuration problems"), "{text}");
    assert!(
        text.contains("did you mean `kafka.bootstrap_servers`?"),
        "{text}"
    );
}

#[test]
fn several_type_errors_in_one_section_are_all_reported() {
    let e = load_toml(
        r#"
        [validation]
        max_event_bytes = "big"
        max_past = "forever"
        require_key_match = "sure"
        "#,
        &[],
    )
    .unwrap_err();
    assert_eq!(
        paths(&e),
        [
            "validation.max_event_bytes",
            "validation.max_past",
            "validation.require_key_match"
        ],
        "{e}"
    );
}

#[test]
fn environment_overrides_the_file() {
    let c = load_toml(
        "[kafka]\nbootstrap_servers = \"file:9092\"\ngroup_id = \"g\"\n",
        &[
            ("SEGSTREAM__KAFKA__BOOTSTRAP_SERVERS", "a:1,b:2"),
            ("SEGSTREAM__KAFKA__GROUP_ID", "1234"),
            ("SEGSTREAM__INPUT__TOPICS", "t1,t2"),
            ("SEGSTREAM__INPUT__MAX_BUFFERED", "1700"),
            ("OTHER__KAFKA__GROUP_ID", "ignored"),
        ],
    )
    .unwrap();
    assert_eq!(c.kafka.bootstrap_servers, "a:1,b:2");
    assert_eq!(c.kafka.group_id, "1234");
    assert_eq!(c.input.topics, ["t1", "t2"]);
    assert_eq!(c.input.max_buffered, 1700);
}

#[test]
fn removed_keys_still_load_and_are_named() {
    let c = load_toml(
        r#"
        [input]
        batch_size = 1000
        batch_max_wait = "50ms"
        "#,
        &[],
    )
    .unwrap();
    let deprecated = c.deprecated();
    assert_eq!(deprecated.len(), 2, "{deprecated:?}");
    assert!(
        deprecated[0].starts_with("input.batch_size has no effect"),
        "{deprecated:?}"
    );
    assert!(Config::default().deprecated().is_empty());
    // Not printed back by `config check --print`.
    let printed: toml::Table = toml::to_string_pretty(&c).unwrap().parse().unwrap();
    let input = printed["input"].as_table().unwrap();
    assert!(!input.contains_key("batch_size") && !input.contains_key("batch_max_wait"));
}

#[test]
fn unknown_environment_keys_are_reported() {
    let e = Config::load_with_env(
        None,
        [("SEGSTREAM__KAFKA__BOOTSTRAP".to_string(), "x:1".to_string())],
    )
    .unwrap_err();
    assert_eq!(paths(&e), ["kafka.bootstrap"]);
}

#[test]
fn secrets_never_appear_in_errors_or_debug() {
    let secret = "hunter2-very-secret";
    let e = load_toml(
        &format!(
            "[kafka]\nsecurity_protocol = \"sasl_ssl\"\n[kafka.sasl]\nusername = \"u\"\npassword = [\"{secret}\"]\n"
        ),
        &[],
    )
    .unwrap_err();
    assert!(!e.to_string().contains(secret), "{e}");
    assert_eq!(
        paths(&e),
        ["kafka.sasl.password", "kafka.sasl.password"],
        "{e}"
    );

    let c = load_toml(
        "[kafka]\nsecurity_protocol = \"sasl_ssl\"\n[kafka.sasl]\nusername = \"u\"\n",
        &[("SEGSTREAM__KAFKA__SASL__PASSWORD", secret)],
    )
    .unwrap();
    assert_eq!(c.kafka.sasl.password.expose(), secret);
    assert!(!format!("{c:?}").contains(secret));
    assert!(!toml::to_string(&c).unwrap().contains(secret));
    let client = c.kafka.client_config().unwrap();
    assert_eq!(client.get("sasl.password"), Some(secret));
    assert_eq!(client.get("sasl.mechanism"), Some("SCRAM-SHA-512"));
}

#[test]
fn secrets_can_come_from_files() {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    writeln!(f, "from-a-file").unwrap();
    let c = load_toml(
        &format!(
            "[kafka]\nsecurity_protocol = \"sasl_plaintext\"\n[kafka.sasl]\nusername = \"u\"\npassword_file = \"{}\"\n",
            f.path().display()
        ),
        &[],
    )
    .unwrap();
    let client = c.kafka.client_config().unwrap();
    assert_eq!(client.get("sasl.password"), Some("from-a-file"));
}

#[test]
fn sasl_needs_credentials_and_a_sasl_protocol() {
    let e = load_toml("[kafka]\nsecurity_protocol = \"sasl_ssl\"\n", &[]).unwrap_err();
    assert_eq!(
        paths(&e),
        ["kafka.sasl.username", "kafka.sasl.password"],
        "{e}"
    );
    let e = load_toml("[kafka.sasl]\nusername = \"u\"\n", &[]).unwrap_err();
    assert_eq!(paths(&e), ["kafka.sasl"], "{e}");
}

#[test]
fn librdkafka_properties_are_checked() {
    let e = load_toml(
        r#"
        [kafka.properties]
        "session.timeout.ms" = "30000"
        "no.such.property" = "1"
        "enable.auto.commit" = "true"
        "fetch.wait.max.ms" = "not-a-number"
        "#,
        &[],
    )
    .unwrap_err();
    let text = e.to_string();
    assert_eq!(e.problems.len(), 3, "{text}");
    assert!(
        text.contains("\"no.such.property\": is not a librdkafka property"),
        "{text}"
    );
    assert!(text.contains("managed by segstream"), "{text}");
    assert!(!text.contains("not-a-number"), "{text}");
}

#[test]
fn topic_rules() {
    assert!(check_topic_name("events.browse").is_ok());
    assert!(check_topic_name("a-b_c.1").is_ok());
    assert!(check_topic_name("").is_err());
    assert!(check_topic_name("..").is_err());
    assert!(check_topic_name("has space").is_err());
    assert!(check_topic_name(&"x".repeat(250)).is_err());
    let e = load_toml(
        "[input]\ntopics = [\"a\", \"a\"]\n[dead_letter]\ntopic = \"a\"\n",
        &[],
    )
    .unwrap_err();
    assert_eq!(paths(&e), ["input.topics[1]", "dead_letter.topic"], "{e}");
}

#[test]
fn topic_encodings_name_input_topics() {
    let c = load_toml(
        "[input]\ntopics = [\"a\", \"b\"]\n[input.topic_encodings]\na = \"protobuf\"\n",
        &[],
    )
    .unwrap();
    assert_eq!(c.input.topic_encodings.get("a"), Some(&Encoding::Protobuf));
    let e = load_toml(
        "[input]\ntopics = [\"a\"]\n[input.topic_encodings]\nz = \"json\"\n",
        &[],
    )
    .unwrap_err();
    assert_eq!(paths(&e), ["input.topic_encodings.z"], "{e}");
}

#[test]
fn env_names_follow_the_key_path() {
    assert_eq!(
        env_name("kafka.sasl.password"),
        "SEGSTREAM__KAFKA__SASL__PASSWORD"
    );
}

#[test]
fn edit_distance_suggests_near_keys() {
    assert_eq!(edit_distance("topic", "topics"), 1);
    assert_eq!(edit_distance("abc", "abc"), 0);
    assert_eq!(edit_distance("", "abc"), 3);
}

#[test]
fn state_rules_are_checked() {
    let e = load_toml(
        r#"
        [state]
        max_events = 0
        ttl = "30days"
        changelog_topic = "segstream-dlq"
        "#,
        &[],
    )
    .unwrap_err();
    assert_eq!(
        paths(&e),
        ["state.max_events", "state.ttl", "state.changelog_topic"],
        "{e}"
    );
    let c = load_toml("[state]\nallowed_lateness = \"5m\"\n", &[]).unwrap();
    assert_eq!(c.state.limits().allowed_lateness_ms, 300_000);
}

#[test]
fn consumer_and_producer_properties_go_to_their_clients_only() {
    let c = load_toml(
        "[kafka.consumer_properties]\n\"session.timeout.ms\" = \"6000\"\n\
         [kafka.producer_properties]\n\"linger.ms\" = \"7\"\n",
        &[],
    )
    .unwrap();
    let consumer = c.kafka.consumer_config().unwrap();
    let producer = c.kafka.producer_config().unwrap();
    assert_eq!(consumer.get("session.timeout.ms"), Some("6000"));
    assert_eq!(consumer.get("linger.ms"), None);
    assert_eq!(producer.get("linger.ms"), Some("7"));
    assert_eq!(producer.get("session.timeout.ms"), None);
    let e = load_toml(
        "[kafka.producer_properties]\n\"transactional.id\" = \"x\"\n\"bogus.key\" = \"1\"\n",
        &[],
    )
    .unwrap_err();
    assert_eq!(
        paths(&e),
        [
            "kafka.producer_properties.\"bogus.key\"",
            "kafka.producer_properties.\"transactional.id\""
        ],
        "{e}"
    );
}

/// Issue 39: live outcomes need whole-day cuts and horizons the state can
/// resolve, a TTL that outlives every snapshot and a topic of their own;
/// every problem is reported at once.
#[test]
fn live_outcome_rules_are_checked() {
    let ok = load_toml(
        r#"
        [output]
        outcomes_topic = "customer-outcomes"
        "#,
        &[],
    )
    .unwrap();
    assert!(crate::state::MonitorRules::of(&ok).is_some());
    assert!(crate::state::MonitorRules::of(&Config::default()).is_none());
    let e = load_toml(
        r#"
        [output]
        outcomes_topic = "customer-segments"
        [train]
        horizon = "91days"
        sample_every = "36h"
        lookback = "400days"
        "#,
        &[],
    )
    .unwrap_err();
    let p = paths(&e);
    assert_eq!(
        p.iter().filter(|p| **p == "output.outcomes_topic").count(),
        2,
        "{e}"
    );
    assert!(p.contains(&"state.ttl"), "{e}");
    // Cuts of their own spacing: whole days.
    let monthly = load_toml(
        r#"
        [output]
        outcomes_topic = "customer-outcomes"
        outcomes_every = "28days"
        "#,
        &[],
    )
    .unwrap();
    let rules = crate::state::MonitorRules::of(&monthly).unwrap();
    assert_eq!(rules.every_ms, 28 * crate::units::DAY_MS);
    assert_eq!(
        crate::state::MonitorRules::of(&ok).map(|r| r.every_ms),
        Some(7 * crate::units::DAY_MS),
        "train.sample_every by default"
    );
    let e = load_toml(
        r#"
        [output]
        outcomes_topic = "customer-outcomes"
        outcomes_every = "36h"
        "#,
        &[],
    )
    .unwrap_err();
    assert!(e.to_string().contains("output.outcomes_every"), "{e}");
}

/// Issue 39: live promotion needs the live outcomes; too few outcomes to
/// decide on is refused.
#[test]
fn live_promotion_needs_the_outcomes_topic() {
    let ok = load_toml(
        r#"
        [output]
        outcomes_topic = "customer-outcomes"
        [train]
        promote_on = "live"
        live_min_outcomes = 500
        "#,
        &[],
    )
    .unwrap();
    assert_eq!(ok.train.promote_on, crate::config::PromoteOn::Live);
    let e = load_toml(
        r#"
        [train]
        promote_on = "live"
        live_min_outcomes = 10
        "#,
        &[],
    )
    .unwrap_err();
    let p = paths(&e);
    assert!(p.contains(&"train.promote_on"), "{e}");
    assert!(p.contains(&"train.live_min_outcomes"), "{e}");
    assert!(load_toml("[train]\npromote_on = \"later\"\n", &[]).is_err());
}
