//! The command handlers, one module per family of commands; `main.rs`
//! keeps the command line's shape, start-up and `run`.

pub(crate) mod bench;
pub(crate) mod inspect;
pub(crate) mod train;
