//! The agent proper: settings, log shipping, the real effect handler, `daemon` and `execute`.

pub mod cuda;
pub mod daemon;
pub mod effects;
pub mod gpu;
pub mod gpu_monitor;
pub mod gpu_select;
pub mod gpu_slots;
pub mod init;
pub mod list;
pub mod logship;
pub mod preemption;
pub mod schedule;
pub mod settings;
