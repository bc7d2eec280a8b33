//! Facts about this machine and process, for the journal's epoch records.

use crate::journal::EpochInfo;

pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown-host".into())
}

/// Changes on every reboot: tells "the agent restarted" from "the machine restarted".
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Who this agent process is; the journal fills in the epoch number.
pub fn this_agent() -> EpochInfo {
    EpochInfo {
        epoch: 0,
        host: hostname(),
        pid: std::process::id(),
        boot_id: boot_id(),
        started_ms: now_ms(),
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
    }
}
