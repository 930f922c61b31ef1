//! Point-in-time examples: history replayed in event-time order through the
//! serving code (`state::CustomerState::record`, `features::Featurizer`),
//! with features taken as of each cut time t and labels from (t, t + H].
//!
//! Leakage rules, enforced by construction and tested:
//! - features at t are computed when the replay has applied every event at
//!   or before t and none after it;
//! - the outcome labels (purchase, churn, spend and the segment's activity
//!   and spend tests) count only events in (t, t + H]. The one label input
//!   from before t is the taxonomy's own `at_risk`/`dormant` split ("did the
//!   customer ever purchase before t"), which is known at t by definition.

use std::collections::HashMap;

use super::sampling::{keep_rates, sample_draw};
pub use super::sampling::{validation_start, Sampling};
use crate::config::TrainConfig;
use crate::event::{Event, Payload};
use crate::features::{tensors, FeatureError, Featurizer, TensorData};
use crate::model::{GoldenInputs, Segment};
use crate::state::{CustomerState, StateLimits};

use crate::units::DAY_MS;

/// What happened to a customer in (t, t + H].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Labels {
    /// The segment these outcomes define.
    pub segment: Segment,
    /// At least one purchase.
    pub purchased: bool,
    /// No activity at all.
    pub churned: bool,
    /// Total spend in minor units.
    pub spend_minor: i64,
}

/// Label rules (from `[train]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LabelRules {
    /// H in ms.
    pub horizon_ms: i64,
    /// `high_value` threshold in minor units.
    pub high_value_spend_minor: i64,
}

impl LabelRules {
    /// The rules of a trainer config.
    pub fn from_config(cfg: &TrainConfig) -> Self {
        LabelRules {
            horizon_ms: ms(cfg.horizon),
            high_value_spend_minor: cfg.high_value_spend_minor,
        }
    }

    /// Labels of a customer at `t` from its time-ordered outcome timeline.
    pub fn label(&self, timeline: &[Outcome], t: i64) -> Labels {
        let after = timeline.partition_point(|o| o.time_ms <= t);
        let purchased_before = timeline[..after].iter().any(|o| o.spend_minor >= 0);
        let end = t.saturating_add(self.horizon_ms);
        let window = timeline[after..].iter().take_while(|o| o.time_ms <= end);
        let (mut active, mut purchases, mut spend) = (false, 0u32, 0i64);
        for o in window {
            active = true;
            if o.spend_minor >= 0 {
                purchases += 1;
                spend = spend.saturating_add(o.spend_minor);
            }
        }
        self.labels(purchases, spend, active, purchased_before)
    }

    /// The labels of what a customer did in a horizon: `purchases` and
    /// `spend` in it, any activity, and whether they purchased before it.
    /// The trainer's examples and the pipeline's live outcomes both use it.
    pub fn labels(
        &self,
        purchases: u32,
        spend_minor: i64,
        active: bool,
        purchased_before: bool,
    ) -> Labels {
        let seg = if purchases > 0 && spend_minor >= self.high_value_spend_minor {
            Segment::HighValue
        } else if purchases > 0 {
            Segment::ActiveBuyer
        } else if active {
            Segment::Browser
        } else if purchased_before {
            Segment::AtRisk
        } else {
            Segment::Dormant
        };
        Labels {
            segment: seg,
            purchased: purchases > 0,
            churned: !active,
            spend_minor,
        }
    }
}

/// One event of a customer's outcome timeline: its time and, for purchases,
/// the order total (-1 for other events).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// Event time.
    pub time_ms: i64,
    /// Order total in minor units, or -1 when not a purchase.
    pub spend_minor: i64,
}

/// Examples in a compact ragged layout: each keeps only its real events
/// (most recent first, as the featurizer orders them); batches are padded
/// when materialized.
#[derive(Debug, Clone)]
pub struct ExampleSet {
    /// N of the feature spec (the padded length served).
    pub max_events: usize,
    /// T of the feature spec.
    pub text_tokens: usize,
    /// Customer ids; examples refer to them by index.
    pub customers: Vec<String>,
    /// Per example: customer index.
    pub customer: Vec<u32>,
    /// Per example: the cut time t.
    pub cut_ms: Vec<i64>,
    /// Per example: the labels.
    pub labels: Vec<Labels>,
    /// Per example: its weight, 1 / its probability of being sampled (see
    /// [`Sampling`]); 1 when every example is kept.
    pub weight: Vec<f32>,
    /// Per example: the start of its events in the event arrays.
    offsets: Vec<usize>,
    kinds: Vec<u8>,
    categories: Vec<u32>,
    numeric: Vec<f32>,
    text: Vec<u16>,
    customer_features: Vec<f32>,
}

/// A padded batch of examples, in model input layout with `len` events per row.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Batch {
    /// Rows.
    pub rows: usize,
    /// Events per row (the longest row's, or N).
    pub len: usize,
    /// [rows, len]
    pub kinds: Vec<u32>,
    /// [rows, len]
    pub categories: Vec<u32>,
    /// [rows, len, E]
    pub numeric: Vec<f32>,
    /// [rows, len, T]
    pub text: Vec<u32>,
    /// [rows, len]
    pub mask: Vec<f32>,
    /// [rows, F]
    pub customer_features: Vec<f32>,
}

impl Batch {
    /// As ONNX Runtime inputs (`len` must be N).
    pub fn to_golden(&self) -> GoldenInputs {
        GoldenInputs {
            batch: self.rows,
            event_kind: self.kinds.iter().map(|&v| i64::from(v)).collect(),
            event_category: self.categories.iter().map(|&v| i64::from(v)).collect(),
            event_numeric: self.numeric.clone(),
            event_text: self.text.iter().map(|&v| i64::from(v)).collect(),
            event_mask: self.mask.clone(),
            customer_features: self.customer_features.clone(),
        }
    }
}

impl ExampleSet {
    /// No examples yet, for features with N events of T text tokens.
    pub fn new(max_events: usize, text_tokens: usize) -> Self {
        ExampleSet {
            max_events,
            text_tokens,
            customers: Vec::new(),
            customer: Vec::new(),
            cut_ms: Vec::new(),
            labels: Vec::new(),
            weight: Vec::new(),
            offsets: vec![0],
            kinds: Vec::new(),
            categories: Vec::new(),
            numeric: Vec::new(),
            text: Vec::new(),
            customer_features: Vec::new(),
        }
    }

    /// Number of examples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Events of example `i`.
    pub fn events_of(&self, i: usize) -> usize {
        self.offsets[i + 1] - self.offsets[i]
    }

    /// Customer features of example `i`.
    pub fn customer_features_of(&self, i: usize) -> &[f32] {
        let f = crate::features::CUSTOMER_DIM;
        &self.customer_features[i * f..(i + 1) * f]
    }

    /// Mean and standard deviation of each customer feature over all
    /// examples; a constant feature gets 1, so that standardizing by it is
    /// a no-op.
    pub fn feature_moments(&self) -> (Vec<f32>, Vec<f32>) {
        let f = crate::features::CUSTOMER_DIM;
        let n = self.len().max(1) as f64;
        let (mut mean, mut sq) = (vec![0f64; f], vec![0f64; f]);
        for row in self.customer_features.chunks(f) {
            for (j, v) in row.iter().enumerate() {
                mean[j] += f64::from(*v);
                sq[j] += f64::from(*v) * f64::from(*v);
            }
        }
        let std = (0..f)
            .map(|j| {
                let m = mean[j] / n;
                let s = (sq[j] / n - m * m).max(0.0).sqrt();
                if s > 1e-6 {
                    s as f32
                } else {
                    1.0
                }
            })
            .collect();
        (mean.iter().map(|m| (m / n) as f32).collect(), std)
    }

    /// The distinct cut times, ascending.
    pub fn cut_times(&self) -> Vec<i64> {
        let mut v = self.cut_ms.clone();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// Materializes rows `idx`, padded to `pad_to` events (or to the longest
    /// row when `None`).
    pub fn batch(&self, idx: &[usize], pad_to: Option<usize>) -> Batch {
        let (e, t, f) = (
            crate::features::EVENT_NUMERIC_DIM,
            self.text_tokens,
            crate::features::CUSTOMER_DIM,
        );
        let len = pad_to
            .unwrap_or_else(|| idx.iter().map(|&i| self.events_of(i)).max().unwrap_or(0))
            .max(1);
        let rows = idx.len();
        let mut b = Batch {
            rows,
            len,
            kinds: vec![0; rows * len],
            categories: vec![0; rows * len],
            numeric: vec![0.0; rows * len * e],
            text: vec![0; rows * len * t],
            mask: vec![0.0; rows * len],
            customer_features: Vec::with_capacity(rows * f),
        };
        for (r, &i) in idx.iter().enumerate() {
            let (start, n) = (self.offsets[i], self.events_of(i).min(len));
            for j in 0..n {
                let src = start + j;
                let dst = r * len + j;
                b.kinds[dst] = u32::from(self.kinds[src]);
                b.categories[dst] = self.categories[src];
                b.mask[dst] = 1.0;
                b.numeric[dst * e..(dst + 1) * e]
                    .copy_from_slice(&self.numeric[src * e..(src + 1) * e]);
                for k in 0..t {
                    b.text[dst * t + k] = u32::from(self.text[src * t + k]);
                }
            }
            b.customer_features
                .extend_from_slice(self.customer_features_of(i));
        }
        b
    }

    /// The same examples with every event removed (customer features and
    /// labels kept): the ablation that measures what the sequence adds.
    pub fn without_events(&self) -> ExampleSet {
        ExampleSet {
            max_events: self.max_events,
            text_tokens: self.text_tokens,
            customers: self.customers.clone(),
            customer: self.customer.clone(),
            cut_ms: self.cut_ms.clone(),
            labels: self.labels.clone(),
            weight: self.weight.clone(),
            offsets: vec![0; self.labels.len() + 1],
            kinds: Vec::new(),
            categories: Vec::new(),
            numeric: Vec::new(),
            text: Vec::new(),
            customer_features: self.customer_features.clone(),
        }
    }

    /// Recomputes every example's classical inputs with `spec`'s
    /// parameters (`features::classical::fill`, the code the featurizer
    /// serves them with), from the lifetime features already there.
    pub fn fill_classical(&mut self, spec: &crate::features::FeatureSpec) {
        let f = crate::features::CUSTOMER_DIM;
        for row in self.customer_features.chunks_mut(f) {
            crate::features::classical::fill(spec.classical.as_ref(), &spec.normalization, row);
        }
    }

    /// The same examples with the classical inputs "not defined" (-1): the
    /// ablation that measures what they add, refitted on.
    pub fn without_classical(&self, spec: &crate::features::FeatureSpec) -> ExampleSet {
        let mut out = self.clone();
        out.fill_classical(&crate::features::FeatureSpec {
            classical: None,
            ..spec.clone()
        });
        out
    }

    /// Appends the rows of a feature batch (one per customer index in `who`).
    fn push_features(
        &mut self,
        batch: &arrow_array::RecordBatch,
        who: &[u32],
        t: i64,
        labels: &[Labels],
        weights: &[f32],
    ) -> Result<(), FeatureError> {
        let (n, e, tt, f) = (
            self.max_events,
            crate::features::EVENT_NUMERIC_DIM,
            self.text_tokens,
            crate::features::CUSTOMER_DIM,
        );
        let views = tensors(batch)?;
        let get_i = |name: &str| {
            views.iter().find_map(|v| match (v.name == name, &v.data) {
                (true, TensorData::I64(d)) => Some(*d),
                _ => None,
            })
        };
        let get_f = |name: &str| {
            views.iter().find_map(|v| match (v.name == name, &v.data) {
                (true, TensorData::F32(d)) => Some(*d),
                _ => None,
            })
        };
        let missing = || FeatureError::Layout("a model input column is missing".into());
        let kinds = get_i("event_kind").ok_or_else(missing)?;
        let cats = get_i("event_category").ok_or_else(missing)?;
        let text = get_i("event_text").ok_or_else(missing)?;
        let numeric = get_f("event_numeric").ok_or_else(missing)?;
        let mask = get_f("event_mask").ok_or_else(missing)?;
        let cust = get_f("customer_features").ok_or_else(missing)?;
        for (r, (&c, l)) in who.iter().zip(labels).enumerate() {
            let real = mask[r * n..(r + 1) * n]
                .iter()
                .take_while(|&&m| m > 0.0)
                .count();
            for j in 0..real {
                let at = r * n + j;
                // Kind ids are below kind::COUNT and category/text ids below
                // their bucket counts (u32 / at most 65536), so the casts keep values.
                self.kinds.push(kinds[at] as u8);
                self.categories.push(cats[at] as u32);
                self.numeric
                    .extend_from_slice(&numeric[at * e..(at + 1) * e]);
                self.text
                    .extend(text[at * tt..(at + 1) * tt].iter().map(|&v| v as u16));
            }
            self.offsets.push(self.kinds.len());
            self.customer_features
                .extend_from_slice(&cust[r * f..(r + 1) * f]);
            self.customer.push(c);
            self.cut_ms.push(t);
            self.labels.push(*l);
            self.weight.push(weights[r]);
        }
        Ok(())
    }

    /// The examples whose index satisfies `keep`, as a new set.
    pub fn subset(&self, keep: impl Fn(usize) -> bool) -> ExampleSet {
        let idx: Vec<usize> = (0..self.len()).filter(|&i| keep(i)).collect();
        let mut out = ExampleSet {
            customers: self.customers.clone(),
            ..ExampleSet::new(self.max_events, self.text_tokens)
        };
        let (e, t) = (crate::features::EVENT_NUMERIC_DIM, self.text_tokens);
        for i in idx {
            let (a, b) = (self.offsets[i], self.offsets[i + 1]);
            out.kinds.extend_from_slice(&self.kinds[a..b]);
            out.categories.extend_from_slice(&self.categories[a..b]);
            out.numeric.extend_from_slice(&self.numeric[a * e..b * e]);
            out.text.extend_from_slice(&self.text[a * t..b * t]);
            out.offsets.push(out.kinds.len());
            out.customer_features
                .extend_from_slice(self.customer_features_of(i));
            out.customer.push(self.customer[i]);
            out.cut_ms.push(self.cut_ms[i]);
            out.labels.push(self.labels[i]);
            out.weight.push(self.weight[i]);
        }
        out
    }
}

pub(crate) use crate::units::millis as ms;

/// Cut times for history spanning [first, last]: the last millisecond of a
/// UTC day, `every` apart, ending where a full horizon of outcomes is still
/// observed, starting once a full `every` of history exists. With `every`
/// in whole days the cuts are the live monitor's calendar (the last
/// millisecond of every `every`-th day since the epoch,
/// `state::monitor`): the trainer's validation cut times are days the
/// pipeline's live outcomes are also taken at.
pub fn cut_times(first_ms: i64, last_ms: i64, every_ms: i64, horizon_ms: i64) -> Vec<i64> {
    let mut cuts = Vec::new();
    let end = last_ms - horizon_ms;
    let every = every_ms.max(DAY_MS);
    // The last cut at or before `end`: on the calendar with whole days,
    // else the last ms of the day.
    let step = if every % DAY_MS == 0 { every } else { DAY_MS };
    let mut t = (end + 1).div_euclid(step) * step - 1;
    while t >= first_ms + every {
        cuts.push(t);
        t -= every;
    }
    cuts.reverse();
    cuts
}

/// What building examples saw.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReplayReport {
    /// Events replayed.
    pub events: u64,
    /// Duplicates the state ignored.
    pub duplicates: u64,
    /// Customers seen.
    pub customers: usize,
    /// Cut times.
    pub cuts: usize,
    /// Candidate examples (customers active within the lookback at a
    /// training or validation cut time) and those kept by sampling.
    pub candidates: u64,
    /// See `candidates`.
    pub sampled: u64,
    /// The first validation cut time (the latest `validation_fraction` of
    /// the cut times validate); `None` with fewer than two cut times.
    pub validation_from_ms: Option<i64>,
    /// First and last event time.
    pub span_ms: (i64, i64),
}

/// Replays `events` (any order; sorted here by event time) and takes
/// examples at every cut time. `progress` is called with the number of
/// events replayed so far, about every 64k events.
pub fn build(
    mut events: Vec<Event>,
    featurizer: &Featurizer,
    limits: StateLimits,
    rules: LabelRules,
    sampling: Sampling,
    progress: &mut dyn FnMut(u64),
) -> Result<(ExampleSet, ReplayReport), FeatureError> {
    events.sort_by_key(|e| e.event_time_ms);
    let spec = featurizer.spec();
    let mut set = ExampleSet::new(spec.max_events, spec.text_tokens);
    let mut report = ReplayReport::default();
    let (Some(first), Some(last)) = (events.first(), events.last()) else {
        return Ok((set, report));
    };
    report.span_ms = (first.event_time_ms, last.event_time_ms);
    let cuts = cut_times(
        first.event_time_ms,
        last.event_time_ms,
        sampling.every_ms,
        rules.horizon_ms,
    );
    report.cuts = cuts.len();
    let first_val = validation_start(&cuts, sampling.validation_fraction);
    report.validation_from_ms = first_val;
    // Which cut times are built: training cuts end their horizon before the
    // first validation cut (the purge gap's cuts are skipped).
    let role = |t: i64| match first_val {
        Some(v) if t >= v => Some(true),
        Some(v) if t + rules.horizon_ms < v => Some(false),
        Some(_) => None,
        None => Some(false),
    };

    // Customer index and outcome timelines (labels look ahead through these).
    let mut index: HashMap<&str, u32> = HashMap::new();
    let mut timelines: Vec<Vec<Outcome>> = Vec::new();
    let mut who = Vec::with_capacity(events.len());
    for e in &events {
        let next = index.len() as u32;
        let c = *index.entry(e.customer_id.as_str()).or_insert(next);
        if c == next {
            set.customers.push(e.customer_id.clone());
            timelines.push(Vec::new());
        }
        who.push(c);
        let spend_minor = match &e.payload {
            Payload::Purchase(p) => p.total_minor.max(0),
            _ => -1,
        };
        timelines[c as usize].push(Outcome {
            time_ms: e.event_time_ms,
            spend_minor,
        });
    }
    report.customers = set.customers.len();

    // A first pass counts the candidates (from event times alone) to set
    // the keep rates.
    let n_customers = set.customers.len();
    let mut last_seen: Vec<i64> = vec![i64::MIN; n_customers];
    let is_active =
        |seen: i64, t: i64| seen != i64::MIN && seen <= t && seen > t - sampling.lookback_ms;
    let is_silent = |seen: i64, t: i64| seen <= t - sampling.silent_after_ms;
    let (mut train_recent, mut train_silent, mut val_count) = (0u64, 0u64, 0u64);
    {
        let mut count = |t: i64, last_seen: &[i64]| {
            let Some(validating) = role(t) else {
                return;
            };
            for &seen in last_seen.iter().filter(|&&seen| is_active(seen, t)) {
                match (validating, is_silent(seen, t)) {
                    (true, _) => val_count += 1,
                    (false, false) => train_recent += 1,
                    (false, true) => train_silent += 1,
                }
            }
        };
        let mut next_cut = cuts.iter().copied().peekable();
        for (i, e) in events.iter().enumerate() {
            while let Some(&t) = next_cut.peek() {
                if e.event_time_ms <= t {
                    break;
                }
                count(t, &last_seen);
                next_cut.next();
            }
            let c = who[i] as usize;
            last_seen[c] = last_seen[c].max(e.event_time_ms);
        }
        for t in next_cut {
            count(t, &last_seen);
        }
    }
    report.candidates = train_recent + train_silent + val_count;
    let (keep_recent, keep_silent, keep_val) =
        keep_rates(&sampling, train_recent, train_silent, val_count);
    if keep_recent < 1.0 || keep_silent < 1.0 || keep_val < 1.0 {
        tracing::info!(
            candidates = report.candidates,
            keep_recent,
            keep_silent,
            keep_validation = keep_val,
            "Sampling examples (train.max_examples, train.max_validation_examples); \
             training examples are weighted by 1 / their keep rate."
        );
    }

    let mut states: Vec<CustomerState> = vec![CustomerState::default(); n_customers];
    last_seen.fill(i64::MIN);
    let mut next_cut = cuts.iter().copied().peekable();
    let mut sampled = 0u64;
    let mut take = |t: i64,
                    states: &[CustomerState],
                    last_seen: &[i64],
                    set: &mut ExampleSet|
     -> Result<(), FeatureError> {
        let Some(validating) = role(t) else {
            return Ok(());
        };
        let mut chosen: Vec<(u32, f32)> = Vec::new();
        for c in 0..states.len() as u32 {
            let seen = last_seen[c as usize];
            if !is_active(seen, t) {
                continue;
            }
            let p = match (validating, is_silent(seen, t)) {
                (true, _) => keep_val,
                (false, false) => keep_recent,
                (false, true) => keep_silent,
            };
            if p >= 1.0 || sample_draw(sampling.seed, c, t) < p {
                // Validation is sampled uniformly: its metrics need no weights.
                chosen.push((c, if validating { 1.0 } else { (1.0 / p) as f32 }));
            }
        }
        sampled += chosen.len() as u64;
        for chunk in chosen.chunks(1024) {
            let who: Vec<u32> = chunk.iter().map(|&(c, _)| c).collect();
            let weights: Vec<f32> = chunk.iter().map(|&(_, w)| w).collect();
            let refs: Vec<&CustomerState> = who.iter().map(|&c| &states[c as usize]).collect();
            let labels: Vec<Labels> = who
                .iter()
                .map(|&c| rules.label(&timelines[c as usize], t))
                .collect();
            let batch = featurizer.featurize(&refs, t)?;
            set.push_features(&batch, &who, t, &labels, &weights)?;
        }
        Ok(())
    };
    for (i, e) in events.iter().enumerate() {
        while let Some(&t) = next_cut.peek() {
            if e.event_time_ms <= t {
                break;
            }
            take(t, &states, &last_seen, &mut set)?;
            next_cut.next();
        }
        let c = who[i] as usize;
        if states[c].record(e, limits) == crate::state::Applied::Duplicate {
            report.duplicates += 1;
        }
        last_seen[c] = last_seen[c].max(e.event_time_ms);
        report.events += 1;
        if report.events % 65_536 == 0 {
            progress(report.events);
        }
    }
    for t in next_cut {
        take(t, &states, &last_seen, &mut set)?;
    }
    report.sampled = sampled;
    progress(report.events);
    Ok((set, report))
}

/// Splits by time at `validation_from` (the replay's
/// [`ReplayReport::validation_from_ms`]): cut times from it on validate;
/// training keeps only cut times whose horizon ends before it, so no
/// training label overlaps the validation period.
pub fn split_by_time(
    set: &ExampleSet,
    validation_from: Option<i64>,
    horizon_ms: i64,
) -> (ExampleSet, ExampleSet) {
    let Some(first_val) = validation_from else {
        return (set.subset(|_| false), set.subset(|_| false));
    };
    let train = set.subset(|i| set.cut_ms[i] + horizon_ms < first_val);
    let val = set.subset(|i| set.cut_ms[i] >= first_val);
    (train, val)
}

/// Per-segment loss weights: inverse class frequency (counted with the
/// examples' sampling weights), square-rooted (full inverse weighting
/// over-predicts rare segments), normalized to mean 1.
pub fn class_weights(set: &ExampleSet) -> [f32; Segment::COUNT] {
    let mut counts = [0f64; Segment::COUNT];
    for (l, w) in set.labels.iter().zip(&set.weight) {
        counts[l.segment.index()] += f64::from(*w);
    }
    let n = counts.iter().sum::<f64>().max(1e-9) as f32;
    let mut w = [0f32; Segment::COUNT];
    for k in 0..Segment::COUNT {
        let freq = (counts[k].max(1.0) as f32) / n;
        w[k] = (1.0 / (Segment::COUNT as f32 * freq)).sqrt();
    }
    let mean = w.iter().sum::<f32>() / Segment::COUNT as f32;
    w.map(|v| v / mean)
}

#[cfg(test)]
mod tests;
