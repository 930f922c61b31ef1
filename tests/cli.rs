//! The command line as an operator uses it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

fn segstream() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_segstream"));
    // The developer's own environment must not change the outcome.
    for (k, _) in std::env::vars() {
        if k.starts_with("SEGSTREAM__") || k == "SEGSTREAM_CONFIG" {
            c.env_remove(k);
        }
    }
    c
}

#[test]
fn config_check_accepts_the_example() {
    let out = segstream()
        .args(["config", "check", "deploy/segstream.example.toml"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("configuration OK"));
}

/// `segstream config check` on a file holding `toml`.
fn config_check(toml: &str) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.toml");
    std::fs::write(&file, toml).unwrap();
    segstream()
        .args(["config", "check"])
        .arg(&file)
        .output()
        .unwrap()
}

#[test]
fn config_check_reports_every_mistake_and_fails() {
    let out = config_check(
        "[kafka]\ngroupid = \"x\"\n[input]\nmax_buffered = -5\n[validation]\nmax_event_bytes = 1\n",
    );
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("3 configuration problems"), "{err}");
    assert!(
        err.contains("kafka.groupid: unknown key; did you mean `kafka.group_id`?"),
        "{err}"
    );
    assert!(err.contains("input.max_buffered"), "{err}");
    assert!(
        err.contains("validation.max_event_bytes: is 1, must be between"),
        "{err}"
    );
}

#[test]
fn config_check_warns_about_removed_keys() {
    let out = config_check("[input]\nbatch_size = 1000\n");
    assert_eq!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("warning: input.batch_size has no effect"),
        "{err}"
    );
}

#[test]
fn environment_problems_are_reported_too() {
    let out = segstream()
        .args(["config", "check", "deploy/segstream.example.toml"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("SEGSTREAM__KAFKA__SECURITY_PROTOCOL", "sasl_ssl")
        .env("SEGSTREAM__KAFKA__SASL__PASSWORD", "s3cr3t-value")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("kafka.sasl.username: required"), "{err}");
    assert!(!err.contains("s3cr3t-value"), "{err}");
}

#[test]
fn print_redacts_secrets() {
    let out = segstream()
        .args(["config", "check", "--print"])
        .env("SEGSTREAM__KAFKA__SECURITY_PROTOCOL", "sasl_ssl")
        .env("SEGSTREAM__KAFKA__SASL__USERNAME", "svc")
        .env("SEGSTREAM__KAFKA__SASL__PASSWORD", "s3cr3t-value")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("<redacted>"), "{text}");
    assert!(!text.contains("s3cr3t-value"), "{text}");
}

/// Issue 14: when every history row is refused, `train` says so with the
/// top reasons instead of "not enough history".
#[test]
fn train_names_the_reasons_when_every_history_row_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let history = dir.path().join("orders.txt");
    std::fs::write(
        &history,
        "00001 1997-01-01 1 11.77\n00002 1997-01-12 1 12.00\n",
    )
    .unwrap();
    let mapping = dir.path().join("mapping.toml");
    std::fs::write(
        &mapping,
        "delimiter = \"whitespace\"\nheader = false\ncustomer = \"1\"\ntime = \"2\"\n\
         time_format = \"%Y%m%d\"\namount = \"4\"\ndefault_kind = \"purchase\"\n",
    )
    .unwrap();
    let mut train = segstream();
    train
        .arg("train")
        .arg("--history")
        .arg(&history)
        .arg("--csv-mapping")
        .arg(&mapping)
        .arg("--registry")
        .arg(dir.path().join("models"));
    // Bad input: exit status 2, as for a configuration error.
    let stderr = fails_as(&mut train, 2, "bad_input");
    assert!(
        stderr.contains("all 2 history rows were refused (invalid_field ×2)"),
        "{stderr}"
    );
}

/// Runs `command`, checks that it fails with exit status `status` and names
/// the error class `class` in its last line, and returns its stderr.
fn fails_as(command: &mut Command, status: i32, class: &str) -> String {
    let out = command.env("NO_COLOR", "1").output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(status), "{stderr}");
    assert!(stderr.contains(&format!("class=\"{class}\"")), "{stderr}");
    stderr
}

/// Issue 18: a command that fails exits with its error's class: 2 for bad
/// input (here a history file that is not there), 69 when something
/// outside segstream failed (here no broker listens at the address), and
/// says the class in its last line.
#[test]
fn a_failed_command_exits_with_the_class_of_its_error() {
    let dir = tempfile::tempdir().unwrap();
    fails_as(
        segstream()
            .args(["train", "--history"])
            .arg(dir.path().join("missing.ndjson"))
            .arg("--registry")
            .arg(dir.path().join("models")),
        2,
        "bad_input",
    );
    fails_as(
        segstream()
            .args(["segments", "snapshot", "--timeout", "2s", "--out"])
            .arg(dir.path().join("snapshot.ndjson"))
            .env("SEGSTREAM__KAFKA__BOOTSTRAP_SERVERS", "127.0.0.1:9"),
        69,
        "external",
    );
}

/// Issue 37: `forget` fails with the class of its error, not "external"
/// for everything: erasure not set up, or an `--as-of` after now, is bad
/// input (2); a broker that does not answer is external (69).
#[test]
fn forget_exits_with_the_class_of_its_error() {
    let stderr = fails_as(
        segstream().args(["forget", "--customer", "c1"]),
        2,
        "bad_input",
    );
    assert!(
        stderr.contains("privacy.erasure_topic is empty"),
        "{stderr}"
    );
    let stderr = fails_as(
        segstream()
            .args(["forget", "--customer", "c1", "--as-of", "2999-01-01"])
            .env("SEGSTREAM__PRIVACY__ERASURE_TOPIC", "erasures"),
        2,
        "bad_input",
    );
    assert!(stderr.contains("after now"), "{stderr}");
    fails_as(
        segstream()
            .args(["forget", "--customer", "c1"])
            .env("SEGSTREAM__PRIVACY__ERASURE_TOPIC", "erasures")
            .env("SEGSTREAM__KAFKA__BOOTSTRAP_SERVERS", "127.0.0.1:9"),
        69,
        "external",
    );
}

/// Issue 37: `segments snapshot` with a file name that says no format is
/// bad input (2), checked before any broker is asked.
#[test]
fn snapshot_to_a_file_of_no_known_format_is_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let stderr = fails_as(
        segstream()
            .args(["segments", "snapshot", "--timeout", "2s", "--out"])
            .arg(dir.path().join("snapshot.txt"))
            .env("SEGSTREAM__KAFKA__BOOTSTRAP_SERVERS", "127.0.0.1:9"),
        2,
        "bad_input",
    );
    assert!(stderr.contains("must end in .parquet"), "{stderr}");
}

/// Issue 39: a shadow model is promoted on live evidence only (`model
/// promote --live`): ahead of the champion on `train.promote_metric`, over
/// at least `train.live_min_outcomes` customers and cuts both predicted.
#[test]
fn model_promote_live_needs_enough_outcomes_ahead_of_the_champion() {
    use segstream::event::proto::Outcome;
    use segstream::pipeline::output::OutcomeJson;
    let dir = tempfile::tempdir().unwrap();
    let registry = dir.path().join("models");
    let reg = registry.to_str().unwrap();
    let run = |args: &[&str], config: Option<&std::path::Path>| {
        let mut c = segstream();
        if let Some(f) = config {
            c.arg("--config").arg(f);
        }
        c.args(args).output().unwrap()
    };
    for (version, promote) in [("m1", true), ("s1", false)] {
        let mut args = vec!["model", "builtin", "--registry", reg, "--version", version];
        if promote {
            args.push("--promote");
        }
        let out = run(&args, None);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = run(&["model", "shadow", "s1", "--registry", reg], None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed = String::from_utf8_lossy(&run(&["model", "list", "--registry", reg], None).stdout)
        .to_string();
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with("m1") && l.ends_with("live")),
        "{listed}"
    );
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with("s1") && l.ends_with("shadow")),
        "{listed}"
    );

    // 60 customers at one cut: the shadow ranks buyers first, the
    // champion last.
    let mut lines = String::new();
    for i in 0..60 {
        let bought = i % 2 == 0;
        for (model, role, p) in [
            ("m1", "champion", if bought { 0.2 } else { 0.7 }),
            ("s1", "shadow", if bought { 0.9 } else { 0.1 }),
        ] {
            let o = Outcome {
                customer_id: format!("c{i}"),
                cut_ms: 7 * 86_400_000 - 1,
                horizon_ms: 30 * 86_400_000,
                model_version: model.into(),
                segment: if bought { "active_buyer" } else { "browser" }.into(),
                purchase_probability: p,
                churn_probability: 0.1,
                predicted_spend: 100.0,
                purchased: bought,
                churned: false,
                spend_minor: if bought { 500 } else { 0 },
                realized_segment: if bought { "active_buyer" } else { "browser" }.into(),
                resolved_at_ms: 0,
                role: role.into(),
                feature_bins: Vec::new(),
            };
            lines.push_str(&serde_json::to_string(&OutcomeJson::new(&o)).unwrap());
            lines.push('\n');
        }
    }
    let file = dir.path().join("outcomes.ndjson");
    std::fs::write(&file, lines).unwrap();
    let config = |min: usize| {
        let path = dir.path().join(format!("c{min}.toml"));
        std::fs::write(
            &path,
            format!(
                "[output]\noutcomes_topic = \"o\"\n[train]\npromote_on = \"live\"\npromote_metric = \"purchase_auc\"\nlive_min_outcomes = {min}\n"
            ),
        )
        .unwrap();
        path
    };
    let promote = [
        "model",
        "promote",
        "--live",
        "--file",
        file.to_str().unwrap(),
        "--registry",
        reg,
    ];
    // Too few outcomes: the champion stays.
    let few = run(&promote, Some(&config(100)));
    assert!(!few.status.success());
    let said = String::from_utf8_lossy(&few.stdout);
    assert!(
        said.contains("fewer than train.live_min_outcomes = 100"),
        "{said}"
    );
    assert!(std::fs::read_to_string(registry.join("CURRENT"))
        .unwrap()
        .starts_with("m1"));
    // Enough: promoted, and out of the shadow.
    let enough = run(&promote, Some(&config(50)));
    assert!(
        enough.status.success(),
        "{}{}",
        String::from_utf8_lossy(&enough.stdout),
        String::from_utf8_lossy(&enough.stderr)
    );
    assert!(
        String::from_utf8_lossy(&enough.stdout).contains("promoted s1 (CURRENT) on live evidence")
    );
    assert!(std::fs::read_to_string(registry.join("CURRENT"))
        .unwrap()
        .starts_with("s1"));
    assert_eq!(
        std::fs::read_to_string(registry.join("SHADOW")).unwrap(),
        ""
    );
}
