//! Synthetic data for Kafka.
//!
//! Today this holds [`samples`]: the reference corpus (every event kind in
//! every accepted wire format, plus every bad-record case) produced to the
//! configured input topics, for smoke-testing an installation's wiring and
//! its dead-letter topic. The realistic behaviour generator of the design
//! (`segstream generate`) is tracked as its own issue and will live here too.

pub mod samples;
