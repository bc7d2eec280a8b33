//! The agent's settings live in [`crate::config::settings`] (typed settings are the config
//! layer's job, so effects need nothing from this module); re-exported for the CLI.

pub use crate::config::settings::*;
