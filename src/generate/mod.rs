//! Synthetic data: the realistic behaviour generator behind
//! `segstream generate`, and the reference corpus of [`samples`].
//!
//! - [`world`]: categories, products and prices, review vocabularies,
//!   seasonality, the seeded random stream.
//! - [`behaviour`]: customer archetypes, sessions and funnels, lifecycle
//!   drift, and [`history`], the event-time-ordered stream of a world.
//! - [`live`]: the same world continued with wall-clock event times, paced
//!   like people or as fast as asked.
//! - [`kafka`]: producing history and live events to the input topics.
//! - [`cli`]: `segstream generate` (arguments, summary).
//! - [`samples`]: every event kind in every wire format plus every bad-record
//!   case, for smoke-testing an installation's wiring and dead-letter topic.
//!
//! Everything here is deterministic given a seed; nothing here reads Kafka or
//! touches state.

pub mod abuse;
pub mod behaviour;
pub mod cli;
pub mod kafka;
pub mod live;
pub mod samples;
pub mod world;

#[cfg(test)]
mod tests;

pub use behaviour::{history, Archetype, Generator, GeneratorConfig, GeneratorSummary};
pub use live::{Live, Pacer, PeoplePacing};
