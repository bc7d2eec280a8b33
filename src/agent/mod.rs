//! The agent proper: the daemon loop and its watchers (signals, `--stop`, preemption notices),
//! `execute`, and the GPU stats of status reports. The effects live in [`crate::effects`], the
//! settings in [`crate::config::settings`].

pub mod controls;
pub mod cuda;
pub mod daemon;
pub mod gpu;
pub mod gpu_monitor;
pub mod gpu_select;
pub mod gpu_slots;
pub mod init;
pub mod list;
pub mod preemption;
pub mod pull;
pub mod schedule;
pub mod settings;
pub mod stats;
