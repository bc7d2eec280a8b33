//! ClearML Agent in Rust: a journaled, crash-resilient task runner.
//! See ARCHITECTURE.md for the map of modules and the invariants.

pub mod agent;
pub mod api;
pub mod config;
pub mod effects;
pub mod failpoint;
pub mod fsm;
pub mod host;
pub mod journal;
pub mod redact;
pub mod runner;
pub mod server;
