//! The suite report: `BENCHMARKS.md` (a machine description, then one
//! section per benchmark, each the benchmark's own table) and the same
//! results as one JSON document for tools.

use serde::Serialize;

use super::ingest::{ingest_markdown, IngestBench};
use super::train::{sparse_markdown, train_markdown, SparseBench, TrainBench};
use super::{
    e2e_markdown, score_markdown, state_markdown, E2eBench, Outcome, ScoreBenchRow, StateBench,
};

/// The machine the numbers come from.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// CPU model (from /proc/cpuinfo).
    pub cpu: String,
    /// Logical cores available to this process.
    pub cores: usize,
    /// Total memory in GiB (from /proc/meminfo).
    pub memory_gib: f64,
    /// Operating system (PRETTY_NAME of /etc/os-release) and kernel release.
    pub os: String,
    /// `rustc --version`, when rustc is on the PATH.
    pub rustc: String,
    /// When the suite ran (UTC, RFC 3339).
    pub date: String,
}

impl Machine {
    /// Describes this machine; anything unreadable is "unknown".
    pub fn describe() -> Machine {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        let cpuinfo = read("/proc/cpuinfo");
        let cpu = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_else(|| "unknown".into());
        let memory_gib = read("/proc/meminfo")
            .lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map_or(0.0, |kb| kb / (1024.0 * 1024.0));
        let pretty = read("/etc/os-release")
            .lines()
            .find_map(|l| l.strip_prefix("PRETTY_NAME="))
            .map(|v| v.trim_matches('"').to_string())
            .unwrap_or_else(|| std::env::consts::OS.to_string());
        let kernel = read("/proc/sys/kernel/osrelease").trim().to_string();
        let os = if kernel.is_empty() {
            pretty
        } else {
            format!("{pretty}, Linux {kernel}")
        };
        let rustc = std::process::Command::new("rustc")
            .arg("--version")
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_else(|| "unknown".into());
        Machine {
            cpu,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            memory_gib,
            os,
            rustc,
            date: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        }
    }
}

/// Every benchmark of one `segstream bench all` run.
#[derive(Debug, Clone, Serialize)]
pub struct Suite {
    /// Where the numbers come from.
    pub machine: Machine,
    /// A sentence on the conditions (load, broker), printed under the machine.
    pub conditions: String,
    /// The command line that produced it.
    pub command: String,
    /// Ingest vs raw librdkafka.
    pub ingest: Outcome<IngestBench>,
    /// Memory per customer at each size (restore measured at the first).
    pub state: Vec<Outcome<StateBench>>,
    /// Scoring vs raw `Session::run`.
    pub score: Outcome<Vec<ScoreBenchRow>>,
    /// End to end with transactions, the rules model.
    pub e2e: Outcome<E2eBench>,
    /// The same with a trained Transformer.
    pub e2e_transformer: Outcome<E2eBench>,
    /// Training time.
    pub train: Outcome<TrainBench>,
    /// Training on a sparse, purchases-only history, as users run it.
    pub train_sparse: Outcome<SparseBench>,
}

impl Suite {
    /// Names of the benchmarks that failed.
    pub fn failures(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        if self.ingest.is_failed() {
            out.push("ingest");
        }
        if self.state.iter().any(Outcome::is_failed) {
            out.push("state");
        }
        if self.score.is_failed() {
            out.push("score");
        }
        if self.e2e.is_failed() || self.e2e_transformer.is_failed() {
            out.push("e2e");
        }
        if self.train.is_failed() || self.train_sparse.is_failed() {
            out.push("train");
        }
        out
    }
}

fn section<T>(
    out: &mut String,
    title: &str,
    intro: &str,
    o: &Outcome<T>,
    table: impl Fn(&T) -> String,
) {
    out.push_str(&format!("## {title}\n\n{intro}\n\n"));
    match o {
        Outcome::Done(v) => out.push_str(&table(v)),
        Outcome::Skipped => out.push_str("Not run (skipped).\n"),
        Outcome::Failed(e) => out.push_str(&format!("Failed: {}\n", e.replace('\n', " "))),
    }
    out.push('\n');
}

/// The suite as `BENCHMARKS.md`.
pub fn suite_markdown(s: &Suite) -> String {
    let m = &s.machine;
    let mut out = String::from(
        "# segstream benchmarks\n\n\
         Written by `make bench` (`segstream bench all`); do not edit by hand. Every \
         figure stands next to a baseline measured in the same run on the same data, \
         as a ratio; ratios travel between machines better than absolute numbers.\n\n",
    );
    out.push_str("## Machine\n\n| | |\n| --- | --- |\n");
    out.push_str(&format!("| CPU | {} |\n", m.cpu));
    out.push_str(&format!("| cores | {} |\n", m.cores));
    out.push_str(&format!("| memory | {:.1} GiB |\n", m.memory_gib));
    out.push_str(&format!("| OS | {} |\n", m.os));
    out.push_str(&format!("| rustc | {} |\n", m.rustc));
    out.push_str(&format!("| date | {} |\n", m.date));
    out.push_str(&format!("| command | `{}` |\n\n", s.command));
    if !s.conditions.is_empty() {
        out.push_str(&format!("{}\n\n", s.conditions));
    }
    section(
        &mut out,
        "Ingest",
        "Raw librdkafka consumption of three input topics (no processing) against the \
         pipeline's ingest stage on the same records: `ingest::route` (decode + validate) \
         and `PartitionStore::record`, scoring off. Data: the realistic generator \
         (`segstream generate`), a month of history, protobuf.",
        &s.ingest,
        ingest_markdown,
    );
    out.push_str(
        "## State\n\nMemory and changelog bytes per customer (long-tailed event counts), \
         and changelog restore against a raw librdkafka read of the same partition (best of five turns each; restored values stay encoded until a customer is first used).\n\n",
    );
    if s.state.is_empty() {
        out.push_str("Not run (skipped).\n\n");
    }
    for o in &s.state {
        match o {
            Outcome::Done(b) => out.push_str(&state_markdown(b)),
            Outcome::Skipped => out.push_str("Not run (skipped).\n"),
            Outcome::Failed(e) => out.push_str(&format!("Failed: {}\n", e.replace('\n', " "))),
        }
        out.push('\n');
    }
    section(
        &mut out,
        "Scoring",
        "The default Transformer (trained inside the benchmark) on CPU, one inference \
         thread: raw ONNX Runtime `Session::run` against the scorer (queue, inference \
         thread, output copy), same model and inputs; then the scorer on the same model \
         file without its explanation output, against the scorer with it and every \
         row's reasons built (`segstream bench score --model transformer`).",
        &s.score,
        |rows| score_markdown(rows),
    );
    section(
        &mut out,
        "End to end",
        "The whole pipeline in-process with transactions and the rules model, against a \
         raw read of the same input, and against raw librdkafka doing the run's Kafka work \
         without segstream's (every event is a new customer, so the pipeline writes three \
         records per event: changelog, segment change, current segment; the baseline \
         copies each input record to three topics in transactions with the consumed \
         offsets, on as many threads, with the pipeline's producer settings); then event → \
         SegmentChange latency at half and at a quarter of the sustained rate, fed and \
         read on threads of their own (machine busy: every process on the machine's \
         cores while the events were fed). Last, realistic traffic: twice as many events \
         (at least 1.2M) of a month of generated behaviour (many events per customer, a change only where \
         behaviour changes, the event-time merge of the three topics at work) through a \
         fresh pipeline, against a raw read of those topics.",
        &s.e2e,
        e2e_markdown,
    );
    section(
        &mut out,
        "End to end with the Transformer",
        "The same run scoring the default Transformer that users run, trained inside \
         the benchmark (30k generated events, one epoch) and promoted into the run's \
         registry.",
        &s.e2e_transformer,
        e2e_markdown,
    );
    section(
        &mut out,
        "Training",
        "`segstream::train::train` on generated history into a temporary registry \
         (not promoted), against a plain replay of the same events through \
         `CustomerState::record`.",
        &s.train,
        train_markdown,
    );
    section(
        &mut out,
        "Training on a sparse history",
        "`segstream bench train --sparse`: generated purchases-only histories (25k \
         customers, 15 months: an orders table; seeds 11, 12 and 13), each trained with the \
         `[train]` settings as users run `segstream train` (early stopping, example \
         sampling); goal: each run within 3 minutes. Margins are paired bootstrap \
         intervals over customers; one that holds 0 is a tie.",
        &s.train_sparse,
        sparse_markdown,
    );
    out
}
