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
//!                     DLQ       timers
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
//! | [`generate`] | synthetic data for Kafka (today: the reference sample corpus) |
//! | [`telemetry`] | Prometheus metrics and logging |
//!
//! Where an event goes next: `ingest` turns Kafka records into
//! [`event::Event`]s (or dead letters). The state, features, scoring,
//! decision and pipeline stages of the design (`../shared/DESIGN.md`) are built
//! on top of these and land as their own modules.

pub mod config;
pub mod event;
pub mod generate;
pub mod ingest;
pub mod telemetry;
