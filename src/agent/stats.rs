//! Machine stats for `workers.status_report` (CPU, memory, disk, network, and GPU fields when
//! NVML is present), in the units the Python agent reports, read through `sysinfo`.

use serde_json::{json, Map, Value};
use std::time::Instant;

/// Previous samples, to turn counters into rates, and the GPU source.
pub struct Samples {
    system: sysinfo::System,
    networks: sysinfo::Networks,
    disks: sysinfo::Disks,
    net_at: Option<Instant>,
    gpus: Box<dyn super::gpu::GpuStats>,
}

impl Default for Samples {
    fn default() -> Self {
        Samples {
            system: sysinfo::System::new(),
            networks: sysinfo::Networks::new_with_refreshed_list(),
            disks: sysinfo::Disks::new_with_refreshed_list(),
            net_at: None,
            gpus: super::gpu::detect(),
        }
    }
}

impl Samples {
    /// One status report's `machine_stats`. Rates (CPU, network) need a previous sample: the
    /// first call only primes them.
    pub fn machine_stats(&mut self) -> Value {
        let mut stats = Map::new();
        let gpu = self.gpus.sample();
        super::gpu::add_to_stats(&mut stats, &gpu);
        self.networks.refresh(true);
        if let Some(at) = self.net_at {
            let dt = at.elapsed().as_secs_f64().max(0.001);
            let (rx, tx) = self
                .networks
                .iter()
                .filter(|(name, _)| name.as_str() != "lo")
                .fold((0u64, 0u64), |(rx, tx), (_, n)| {
                    (rx + n.received(), tx + n.transmitted())
                });
            let mb = |d: u64| ((d as f64 / 1_048_576.0 / dt) * 1000.0).round() / 1000.0;
            stats.insert("network_rx".into(), json!(mb(rx)));
            stats.insert("network_tx".into(), json!(mb(tx)));
            self.system.refresh_cpu_usage();
            let usage = self.system.global_cpu_usage() as f64;
            stats.insert("cpu_usage".into(), json!([(usage * 100.0).round() / 100.0]));
        } else {
            self.system.refresh_cpu_usage();
        }
        self.net_at = Some(Instant::now());
        self.system.refresh_memory();
        let (total, avail) = (self.system.total_memory(), self.system.available_memory());
        if total > 0 {
            let mib = |b: u64| (b as f64 / 1_048_576.0).round();
            stats.insert("memory_free".into(), json!(mib(avail)));
            stats.insert(
                "memory_used".into(),
                json!(mib(total.saturating_sub(avail))),
            );
        }
        if let Some(home) = std::env::var_os("HOME") {
            self.disks.refresh(true);
            let home = std::path::PathBuf::from(home);
            // The disk holding HOME: the longest mount point that is a prefix of it.
            let disk = self
                .disks
                .iter()
                .filter(|d| home.starts_with(d.mount_point()))
                .max_by_key(|d| d.mount_point().as_os_str().len());
            if let Some(d) = disk.filter(|d| d.total_space() > 0) {
                stats.insert(
                    "disk_free_home".into(),
                    json!((100.0 * d.available_space() as f64 / d.total_space() as f64).round()),
                );
            }
        }
        Value::Object(stats)
    }
}
