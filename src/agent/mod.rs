//! The agent proper: settings, log shipping, the real effect handler, `daemon` and `execute`.

pub mod daemon;
pub mod effects;
pub mod gpu;
pub mod init;
pub mod list;
pub mod logship;
pub mod preemption;
pub mod settings;
