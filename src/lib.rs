//! segstream classifies e-commerce customers into segments continuously, from
//! their event stream, with a small Transformer served by ONNX Runtime.
//!
//! # Data flow
//!
//! ```text
//!  events.browse ─┐
//!  events.purchase├─► ingest ─► state ─► features ─► score ─► decide ─► emit ─► customer-segments
//!  events.review ─┘   decode    per-customer  Arrow     ONNX    hysteresis      segstream-state-changelog
//!                     validate  windows       batch     Runtime                 segstream-dlq
//!                     DLQ       timers                 ▲ hot swap
//!                                   model registry ─────┘◄── train (replays history through state + features)
//! ```
//!
//! # Layout
//!
//! Each stage keeps its logic synchronous and pure, wrapped by a thin async
//! shell, so that the trainer can reuse it.
//!
//! | module | owns |
//! | --- | --- |
//! | [`config`] | typed configuration, loading, validation (all errors at once), Kafka client settings |
//! | [`event`] | the input contract, decoding (protobuf, JSON, Confluent framing), validation, reason codes |
//! | [`ingest`] | the Kafka consumer-group member, batching, dead-letter routing |
//! | [`state`] | per-customer state, windows, watermark and timers, retention, changelog codec and restore |
//! | [`features`] | state → Arrow batch → tensors; the only place features are computed (serving and training) |
//! | [`model`] | the ONNX contract, manifest, directory registry, ONNX writer, reference model |
//! | [`score`] | ONNX Runtime sessions (CUDA or CPU), validation, inference threads, micro-batching, hot swap |
//! | [`decide`] | segment decisions with hysteresis, `SegmentChange` |
//! | [`error`] | error classes (bad input, external, internal): what to retry, the exit status |
//! | [`pipeline`] | the run loop: one Kafka transaction per commit cycle, rebalances, restore, health endpoints |
//! | [`train`] | the trainer: point-in-time examples, the Transformer (candle), baselines, evaluation, ONNX export, promotion, batch scoring |
//! | [`generate`] | synthetic data: the realistic behaviour generator (Kafka or files) and the reference sample corpus |
//! | [`bench`](mod@bench) | the benchmark suite: ratios against raw librdkafka / ONNX Runtime baselines |
//! | [`telemetry`] | Prometheus metrics and logging |
//! | [`privacy`] | pseudonymous customer ids (keyed HMAC), erasure requests and the erased-customer list |
//! | [`report`] | the live quality report: outcomes per model as a table with intervals and an HTML page of figures |
//! | [`units`] | time units shared by every stage (`DAY_MS`, durations in milliseconds) |
//! | [`rng`] | the one seeded pseudo-random generator (SplitMix64): generator, trainer, benchmarks |
//!
//! Where an event goes next: `ingest` turns Kafka records into
//! [`event::Event`]s (or dead letters); `state` applies them to the
//! customer's [`state::CustomerState`] in its partition's
//! [`state::PartitionStore`] (late ones become dead letters too) and records
//! every change for the changelog; `features` turns states as of a time into
//! the model's input batch; `score` runs the live model on it; `decide`
//! turns scores into `SegmentChange`s; `pipeline` commits outputs, changelog,
//! dead letters and offsets in one transaction. `train` replays history
//! through the same `state` and `features` to build the models `score` serves.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod bench;
pub mod config;
pub mod decide;
pub mod error;
pub mod event;
pub mod features;
pub mod generate;
pub mod ingest;
pub mod intake;
pub mod model;
pub mod pipeline;
pub mod privacy;
pub mod report;
pub mod rng;
pub mod score;
pub mod state;
pub mod telemetry;
pub mod train;
pub mod units;
