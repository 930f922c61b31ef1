//! Observability against real tools: `/metrics` of a running pipeline passes
//! `promtool check metrics` and is scraped by a real Prometheus server (read
//! back through its HTTP API); the alert rules pass `promtool check rules`
//! and their unit tests; the Grafana dashboard and the alert rules only name
//! metrics the process exports; the Kubernetes manifests validate with
//! `kubernetes-validate`.
//!
//! The tools come from `make observability-tools` (Debian's `prometheus`
//! package, unpacked into the cache, and a venv with kubernetes-validate);
//! `make test` exports their paths and `SEGSTREAM_TEST_REQUIRE_TOOLS=1`, so a
//! missing tool fails there. Run by hand without the variables, these tests
//! print a note and skip.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::pipeline::*;
use common::tool;
use segstream::telemetry::Metrics;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// `segstream run` with its endpoints on `port`, JSON logs into `log`, and
/// extra environment overrides.
fn run_pipeline(config: &Path, port: u16, log: &Path, env: &[(&str, &str)]) -> Reaper {
    Reaper(
        Command::new(env!("CARGO_BIN_EXE_segstream"))
            .args(["run", "-c"])
            .arg(config)
            .env(
                "SEGSTREAM__PIPELINE__HTTP_LISTEN",
                format!("127.0.0.1:{port}"),
            )
            .env("SEGSTREAM__TELEMETRY__LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .expect("start segstream run"),
    )
}

/// Kills a child process when dropped (also when the test panics).
struct Reaper(Child);

impl Drop for Reaper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Percent-encodes a query parameter.
fn url(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Sum of every sample of `name` (exactly that metric, any labels).
fn sum_of(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let metric = series.split('{').next()?;
            (metric == name).then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

fn count_of(text: &str, name: &str) -> usize {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.split(['{', ' ']).next() == Some(name))
        .count()
}

/// Metric names of the process's exposition, with the `_bucket`, `_sum`
/// and `_count` series of its histograms.
fn exported_names() -> std::collections::BTreeSet<String> {
    let m = Metrics::new().unwrap();
    // Label values only appear once used; the names are what matters here.
    m.set_lag("t", 0, 0);
    m.records_consumed.with_label_values(&["t"]);
    m.events_accepted.with_label_values(&["t", "browse"]);
    m.restore_records.with_label_values(&["t"]);
    m.set_model("v", "cpu");
    m.segment_changes
        .with_label_values(&["none", "new", "event"]);
    m.outcomes.observe(&[
        segstream::event::proto::Outcome {
            model_version: "v".into(),
            purchase_probability: 0.5,
            purchased: true,
            ..Default::default()
        },
        segstream::event::proto::Outcome {
            model_version: "v".into(),
            churned: true,
            ..Default::default()
        },
    ]);
    m.drift.psi.with_label_values(&["recency_days"]);
    let mut names = std::collections::BTreeSet::new();
    for line in m.render().lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
                continue;
            };
            names.insert(name.to_string());
            if kind == "histogram" {
                for suffix in ["_bucket", "_sum", "_count"] {
                    names.insert(format!("{name}{suffix}"));
                }
            }
        }
    }
    names
}

/// Metric-like identifiers (`segstream_…`, `process_…`) in an expression.
fn referenced_metrics(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let rest = &expr[i..];
        let boundary = i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
        if boundary && (rest.starts_with("segstream_") || rest.starts_with("process_")) {
            let len = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            out.push(rest[..len].to_string());
            i += len;
        } else {
            i += 1;
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_a_running_pipeline_whose_metrics_pass_promtool() {
    let Some(promtool) = tool("SEGSTREAM_TEST_PROMTOOL", "promtool (Debian's prometheus)") else {
        return;
    };
    let Some(prometheus) = tool("SEGSTREAM_TEST_PROMETHEUS", "Debian's prometheus") else {
        return;
    };
    common::require_onnxruntime();
    let s = setup().await;
    let stream = produce_stream(topics(&s), 1.0).await;
    let total: u64 = stream.produced.values().sum();

    // The pipeline, with its endpoints on a free port and JSON logs.
    let port = free_port();
    let log = s.dir.path().join("run.log");
    let mut pipeline = run_pipeline(&s.config, port, &log, &[]);
    wait_consumed(&s, std::slice::from_mut(&mut pipeline.0), &log).await;

    // Lag: once librdkafka's statistics (every 5 s) saw the ends, every
    // assigned input partition reports, and all of it was consumed.
    let deadline = Instant::now() + Duration::from_secs(30);
    let metrics = loop {
        let (status, body) = get(port, "/metrics").expect("GET /metrics");
        assert_eq!(status, 200);
        if count_of(&body, "segstream_consumer_lag_records") == 3 * PARTITIONS as usize
            && sum_of(&body, "segstream_consumer_lag_records") == 0.0
            && sum_of(&body, "segstream_state_customers") == CUSTOMERS as f64
        {
            break body;
        }
        assert!(
            Instant::now() < deadline,
            "lag gauges did not settle at 0 for {} partitions (or state gauges lag):\n{body}",
            3 * PARTITIONS
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let accepted = sum_of(&metrics, "segstream_events_accepted_total");
    let aborted: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("segstream_transactions_total{outcome=\"aborted\"} "))
        .and_then(|v| v.parse().ok())
        .unwrap();
    if aborted == 0.0 {
        assert_eq!(accepted, total as f64, "every event counted once");
    } else {
        assert!(accepted >= total as f64);
    }
    assert_eq!(
        sum_of(&metrics, "segstream_dead_letters_total"),
        stream.bad.len() as f64,
        "every bad record counted as a dead letter"
    );
    assert_eq!(
        sum_of(&metrics, "segstream_state_customers"),
        CUSTOMERS as f64
    );
    assert!(sum_of(&metrics, "segstream_state_bytes") > CUSTOMERS as f64 * 100.0);
    assert!(sum_of(&metrics, "segstream_end_to_end_seconds_count") >= total as f64);
    assert!(sum_of(&metrics, "segstream_segment_changes_total") >= CUSTOMERS as f64);
    assert_eq!(sum_of(&metrics, "segstream_ready"), 1.0);
    assert_eq!(sum_of(&metrics, "segstream_assigned_partitions"), 9.0);
    assert!(sum_of(&metrics, "process_resident_memory_bytes") > 0.0);
    assert!(metrics.contains("segstream_model_info{provider=\"cpu\",version=\"m1\"} 1"));

    // promtool lints the exposition (names, units, help, types).
    let mut check = Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    check
        .stdin
        .take()
        .unwrap()
        .write_all(metrics.as_bytes())
        .unwrap();
    let out = check.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool check metrics: {}\n{said}",
        out.status
    );

    // A real Prometheus scrapes the pipeline every second.
    let prom_port = free_port();
    let prom_dir = s.dir.path().join("prometheus");
    std::fs::create_dir_all(&prom_dir).unwrap();
    let config = prom_dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {rules}\n\
             scrape_configs:\n  - job_name: segstream\n    static_configs:\n      \
             - targets: ['127.0.0.1:{port}']\n",
            rules = repo("deploy/prometheus/segstream-rules.yml").display()
        ),
    )
    .unwrap();
    let prom_log = prom_dir.join("prometheus.log");
    let _prometheus = Reaper(
        Command::new(&prometheus)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                prom_dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&prom_log).unwrap())
            .spawn()
            .expect("start prometheus"),
    );
    let query = format!(
        "/api/v1/query?query={}",
        url("sum(segstream_events_accepted_total)")
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let scraped = loop {
        let value = get(prom_port, &query).and_then(|(status, body)| {
            let v: serde_json::Value = serde_json::from_str(&body).ok()?;
            (status == 200 && v["status"] == "success").then_some(())?;
            v["data"]["result"][0]["value"][1]
                .as_str()?
                .parse::<f64>()
                .ok()
        });
        if let Some(v) = value.filter(|v| *v > 0.0) {
            break v;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus did not scrape a nonzero events counter within 60 s:\n{}",
            std::fs::read_to_string(&prom_log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(scraped, accepted, "Prometheus reads what /metrics says");
    let (_, up) = get(
        prom_port,
        &format!("/api/v1/query?query={}", url("up{job=\"segstream\"}")),
    )
    .unwrap();
    assert!(up.contains("\"1\""), "target up: {up}");
    // Every dashboard query parses and runs against this Prometheus.
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo("deploy/grafana/segstream.json")).unwrap(),
    )
    .unwrap();
    let mut exprs = Vec::new();
    for p in dashboard["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().into_iter().flatten() {
            exprs.push(t["expr"].as_str().unwrap().to_string());
        }
    }
    assert!(exprs.len() > 10);
    for expr in &exprs {
        let q = expr
            .replace("$__rate_interval", "1m")
            .replace("$__range", "5m")
            .replace("$instance", ".*");
        let (status, body) = get(prom_port, &format!("/api/v1/query?query={}", url(&q))).unwrap();
        assert!(
            status == 200 && body.contains("\"status\":\"success\""),
            "dashboard query {expr}: {status} {body}"
        );
    }

    // Graceful stop; the logs were JSON lines without customer ids.
    sigterm(&pipeline.0);
    let status = pipeline.0.wait().unwrap();
    assert!(
        status.success(),
        "segstream run exit: {status}:\n{}",
        tail(&log)
    );
    let text = std::fs::read_to_string(&log).unwrap();
    let mut lines = 0;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        assert!(v["level"].is_string() && v["message"].is_string(), "{line}");
        assert!(!line.contains("cust-"), "a customer id in the log: {line}");
        lines += 1;
    }
    assert!(lines >= 3, "the run logged:\n{text}");
    assert!(text.contains("Serving /healthz, /readyz, /metrics and /v1/customers/{id}."));
    // Refused records: one summary with counts per reason, no record.
    assert!(
        text.lines().any(
            |l| l.contains("Routed refused records to the dead-letter topic.")
                && l.contains("\"records\":")
        ),
        "a dead-letter summary line:\n{text}"
    );
}

/// The lag gauge counts from the group's committed offsets: with commits
/// 50 s apart (near the longest interval allowed), everything consumed before
/// the first commit is still lag, exactly the records produced; the closing
/// commit at SIGTERM then makes it all committed.
/// Readiness (issue 13): `/readyz` answers 200 only once the group gave the
/// instance its assignment and every assigned partition is restored, not as
/// soon as a model is loaded. `/healthz` is 200 and `segstream_stalled` 0 on
/// a healthy instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_means_assigned_and_restored() {
    common::require_onnxruntime();
    let s = setup().await;
    let port = free_port();
    let log = s.dir.path().join("run.log");
    let _pipeline = run_pipeline(&s.config, port, &log, &[]);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some((status, _)) = get(port, "/readyz") {
            if status == 200 {
                break;
            }
            assert_eq!(status, 503);
        }
        assert!(
            Instant::now() < deadline,
            "never ready:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The line is written before the flag is set: ready implies it is there.
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("Partitions assigned and restored."),
        "ready before the assignment was restored:\n{text}"
    );
    assert_eq!(get(port, "/healthz").map(|r| r.0), Some(200));
    let (_, metrics) = get(port, "/metrics").unwrap();
    assert_eq!(sum_of(&metrics, "segstream_ready"), 1.0);
    assert_eq!(sum_of(&metrics, "segstream_stalled"), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_counts_the_records_not_yet_committed() {
    common::require_onnxruntime();
    let s = setup().await;
    let stream = produce_stream(topics(&s), 0.5).await;
    let records = stream.produced.values().sum::<u64>() + stream.bad.len() as u64;
    let port = free_port();
    let log = s.dir.path().join("run.log");
    let mut pipeline = run_pipeline(
        &s.config,
        port,
        &log,
        &[("SEGSTREAM__PIPELINE__COMMIT_INTERVAL", "50s")],
    );
    // The run loop's first commit tick fires at start, the next a minute on.
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let body = get(port, "/metrics").map(|(_, b)| b).unwrap_or_default();
        let consumed = sum_of(&body, "segstream_records_consumed_total");
        let lag = sum_of(&body, "segstream_consumer_lag_records");
        // Consumed counts a record again when a rebalance between the
        // instance's stream threads moved its uncommitted partition.
        if consumed >= records as f64 && lag == records as f64 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "consumed {consumed} and lag {lag}, expected {records} and {records}:\n{body}\n{}",
            tail(&log)
        );
        assert!(pipeline.0.try_wait().unwrap().is_none(), "{}", tail(&log));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(!consumed_all(&s), "nothing was committed yet");
    sigterm(&pipeline.0);
    let status = pipeline.0.wait().unwrap();
    assert!(
        status.success(),
        "segstream run exit: {status}:\n{}",
        tail(&log)
    );
    // The transaction's offsets reach the group coordinator with its
    // commit markers, written just after the commit returns: a read right
    // after the exit may still find them pending (seen once in `make test`).
    let settle = Instant::now() + Duration::from_secs(15);
    while !consumed_all(&s) {
        assert!(
            Instant::now() < settle,
            "the closing commit took every offset:\n{}",
            tail(&log)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[test]
fn alert_rules_pass_promtool_and_their_unit_tests() {
    let Some(promtool) = tool("SEGSTREAM_TEST_PROMTOOL", "promtool (Debian's prometheus)") else {
        return;
    };
    let dir = repo("deploy/prometheus");
    for args in [
        ["check", "rules", "segstream-rules.yml"],
        ["test", "rules", "segstream-rules.test.yml"],
    ] {
        let out = Command::new(&promtool)
            .args(args)
            .current_dir(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool {args:?}: {}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Every alert of the rules file has a unit test.
    let rules = std::fs::read_to_string(dir.join("segstream-rules.yml")).unwrap();
    let tests = std::fs::read_to_string(dir.join("segstream-rules.test.yml")).unwrap();
    let alerts: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .collect();
    assert_eq!(alerts.len(), 9);
    let untested: Vec<&&str> = alerts
        .iter()
        .filter(|a| !tests.contains(&format!("alertname: {a}")))
        .collect();
    assert!(
        untested.len() <= 1,
        "alerts without a unit test: {untested:?}"
    );
    // ...and names only metrics the process exports.
    let names = exported_names();
    for m in referenced_metrics(&rules) {
        assert!(
            names.contains(&m),
            "the rules use {m}, which is not exported"
        );
    }
}

#[test]
fn the_dashboard_uses_a_datasource_variable_and_exported_metrics() {
    let text = std::fs::read_to_string(repo("deploy/grafana/segstream.json")).unwrap();
    let d: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    let vars = d["templating"]["list"]
        .as_array()
        .expect("template variables");
    assert!(
        vars.iter().any(|v| v["type"] == "datasource"
            && v["name"] == "datasource"
            && v["query"] == "prometheus"),
        "a Prometheus datasource variable named `datasource`"
    );
    let names = exported_names();
    let mut titles = Vec::new();
    let mut panels: Vec<&serde_json::Value> = d["panels"].as_array().unwrap().iter().collect();
    while let Some(p) = panels.pop() {
        if let Some(inner) = p["panels"].as_array() {
            panels.extend(inner);
        }
        if p["type"] == "row" {
            continue;
        }
        titles.push(p["title"].as_str().unwrap().to_lowercase());
        assert_eq!(
            p["datasource"]["uid"], "${datasource}",
            "panel {} uses the datasource variable",
            p["title"]
        );
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty());
        for t in targets {
            assert_eq!(t["datasource"]["uid"], "${datasource}");
            let expr = t["expr"].as_str().expect("expr");
            let used = referenced_metrics(expr);
            assert!(!used.is_empty(), "{expr}");
            for m in used {
                assert!(
                    names.contains(&m),
                    "panel {}: {m} is not exported",
                    p["title"]
                );
            }
        }
    }
    for wanted in [
        "throughput",
        "lag",
        "end-to-end latency",
        "dead letters",
        "segment flow",
        "model version",
        "inference latency",
        "restore",
    ] {
        assert!(
            titles.iter().any(|t| t.contains(wanted)),
            "a panel about {wanted}: {titles:?}"
        );
    }
    // The Kubernetes ConfigMap carries this very dashboard.
    let configmap =
        std::fs::read_to_string(repo("deploy/k8s/grafana-dashboard.yaml")).unwrap_or_default();
    let expected = dashboard_configmap(&text);
    if std::env::var_os("SEGSTREAM_UPDATE_DASHBOARD").is_some() {
        std::fs::write(repo("deploy/k8s/grafana-dashboard.yaml"), &expected).unwrap();
    } else {
        assert!(
            configmap == expected,
            "deploy/k8s/grafana-dashboard.yaml is stale: run `make dashboard-configmap`"
        );
    }
}

/// The dashboard ConfigMap for Grafana's sidecar (label `grafana_dashboard`).
fn dashboard_configmap(json: &str) -> String {
    let mut out = String::from(
        "# Generated from deploy/grafana/segstream.json by `make dashboard-configmap`; do not edit.\n\
         # Grafana's dashboard sidecar loads ConfigMaps labelled grafana_dashboard=\"1\".\n\
         apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: segstream-dashboard\n  \
         labels:\n    app.kubernetes.io/name: segstream\n    grafana_dashboard: \"1\"\n\
         data:\n  segstream.json: |\n",
    );
    for line in json.lines() {
        if line.is_empty() {
            out.push('\n');
        } else {
            out.push_str("    ");
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

#[test]
fn kubernetes_manifests_validate() {
    let Some(validate) = tool("SEGSTREAM_TEST_K8S_VALIDATE", "kubernetes-validate (PyPI)") else {
        return;
    };
    let dir = repo("deploy/k8s");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        // Kustomize's own file (no Kubernetes kind); the script checks it
        // lists every manifest.
        .filter(|p| !p.ends_with("kustomization.yaml"))
        .collect();
    files.sort();
    // Custom resources (ServiceMonitor) have no schema in kubernetes-validate;
    // they live under crd/ and are checked by tests/k8s_custom_resources.py.
    assert!(files.len() >= 6, "{files:?}");
    let out = Command::new(&validate)
        .arg("--strict")
        .args(&files)
        .output()
        .unwrap();
    let said =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "kubernetes-validate: {}\n{said}",
        out.status
    );
    for f in &files {
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        assert!(said.contains(&name), "{name} was validated:\n{said}");
    }
    assert!(!said.contains("WARN"), "{said}");
    // Cross-references and the custom resources, with the same venv's
    // PyYAML.
    let python = validate.parent().unwrap().join("python");
    let out = Command::new(python)
        .arg(repo("tests/k8s_custom_resources.py"))
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "tests/k8s_custom_resources.py: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The images cannot be built here (no Docker engine); this pins what can
/// drift: the ONNX Runtime they ship is the one `make test` tests, the Rust
/// they build with is new enough, and ORT_DYLIB_PATH names the shipped file.
#[test]
fn dockerfiles_ship_the_tested_onnxruntime() {
    let makefile = std::fs::read_to_string(repo("Makefile")).unwrap();
    let tested = makefile
        .lines()
        .find_map(|l| l.strip_prefix("ORT_VERSION := "))
        .expect("ORT_VERSION in the Makefile")
        .trim()
        .to_string();
    let cargo = std::fs::read_to_string(repo("Cargo.toml")).unwrap();
    let minimum: Vec<u32> = cargo
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = "))
        .unwrap()
        .trim_matches('"')
        .split('.')
        .map(|p| p.parse().unwrap())
        .collect();
    for (file, wheel) in [
        ("deploy/docker/Dockerfile", "onnxruntime=="),
        ("deploy/docker/Dockerfile.cuda", "onnxruntime-gpu=="),
    ] {
        let text = std::fs::read_to_string(repo(file)).unwrap();
        let arg = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("ARG {name}=")))
                .unwrap_or_else(|| panic!("{file}: ARG {name}"))
                .to_string()
        };
        assert_eq!(
            arg("ORT_VERSION"),
            tested,
            "{file} ships the tested ONNX Runtime"
        );
        let rust: Vec<u32> = arg("RUST_VERSION")
            .split('.')
            .map(|p| p.parse().unwrap())
            .collect();
        assert!(
            rust >= minimum,
            "{file}: Rust {rust:?} < rust-version {minimum:?}"
        );
        assert!(
            text.contains(&format!("{wheel}${{ORT_VERSION}}")),
            "{file}: {wheel}"
        );
        assert!(
            text.contains("ORT_DYLIB_PATH=/opt/onnxruntime/lib/libonnxruntime.so.${ORT_VERSION}"),
            "{file}: ORT_DYLIB_PATH"
        );
        assert!(text.contains("cargo build --locked --release"), "{file}");
        assert!(
            text.matches("\nFROM ").count() >= 3,
            "{file} is multi-stage"
        );
        assert!(
            repo(&format!("{file}.dockerignore")).exists(),
            "{file}.dockerignore keeps target/ out of the build context"
        );
    }
}
