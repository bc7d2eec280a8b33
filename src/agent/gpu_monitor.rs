//! GPU fields of a status report for the GPUs a worker was given, averaged over the report
//! interval, as upstream's `ResourceMonitor` does: it samples twice a second, keeps only the
//! "active" GPUs (those `NVIDIA_VISIBLE_DEVICES` / `CUDA_VISIBLE_DEVICES` name, by index or
//! UUID; all of them when unset or `all`; none with `none`, i.e. `--cpu-only`), reports the mean
//! of each field since the last report, and resets.
//!
//! Upstream details kept: a GPU without a utilization reading (MIG) counts as
//! `agent.resource_monitoring.default_gpu_utilization` (100; null leaves it out of the mean); a
//! filter that matches no GPU at all at the first reading falls back to every GPU (upstream's
//! `_fix_active_gpus`: an unexpected visibility value must not hide the machine's GPUs); free
//! memory is total - used, in MiB; three failed queries switch GPU monitoring off.
//!
//! The monitor does not own the NVML handle: the caller queries the devices once per tick and
//! feeds every monitor (the daemon's, and one per running task in dynamic-GPU mode).

use super::gpu::{GpuDevice, GpuSample, GpuStats};
use super::gpu_select::Visibility;

/// Failed queries after which a monitor stops reporting GPUs (upstream's `_failure`).
const MAX_FAILURES: u32 = 3;

/// Which GPUs a worker reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ActiveGpus {
    /// `--cpu-only`: no GPU fields at all.
    Off,
    All,
    /// Device indexes or UUIDs, as the visibility variables name them.
    Only(Vec<String>),
}

impl ActiveGpus {
    /// From a worker's visibility, as upstream's monitor reads its environment.
    pub fn from_visibility(v: &Visibility) -> ActiveGpus {
        match v.visible() {
            Some(s) if s.eq_ignore_ascii_case("none") => ActiveGpus::Off,
            Some(s) if !s.trim().is_empty() && !s.eq_ignore_ascii_case("all") => {
                ActiveGpus::Only(s.split(',').map(|g| g.trim().to_string()).collect())
            }
            _ => ActiveGpus::All,
        }
    }

    fn keeps(&self, d: &GpuDevice) -> bool {
        match self {
            ActiveGpus::Off => false,
            ActiveGpus::All => true,
            ActiveGpus::Only(names) => names
                .iter()
                .any(|n| *n == d.index.to_string() || (!d.uuid.is_empty() && *n == d.uuid)),
        }
    }
}

#[derive(Debug, Clone, Default)]
struct Sum {
    usage: f64,
    usage_n: u32,
    used: f64,
    free: f64,
    temperature: f64,
    n: u32,
}

/// Accumulates readings of the active GPUs between two reports.
#[derive(Debug, Clone)]
pub struct GpuMonitor {
    active: ActiveGpus,
    default_utilization: Option<f64>,
    /// By report position (the n-th active GPU), as upstream keys `gpu_*_{n}`.
    sums: Vec<Sum>,
    failures: u32,
    /// The first good reading was checked against the filter.
    filter_checked: bool,
}

impl GpuMonitor {
    /// `default_utilization`: `agent.resource_monitoring.default_gpu_utilization` (upstream
    /// default 100; None for null).
    pub fn new(active: ActiveGpus, default_utilization: Option<f64>) -> GpuMonitor {
        GpuMonitor {
            active,
            default_utilization,
            sums: Vec::new(),
            failures: 0,
            filter_checked: false,
        }
    }

    pub fn active(&self) -> &ActiveGpus {
        &self.active
    }

    /// Whether GPU fields are reported at all (not `--cpu-only`, not switched off by failures).
    pub fn enabled(&self) -> bool {
        self.active != ActiveGpus::Off && self.failures < MAX_FAILURES
    }

    /// Adds one reading. Answers a line to log when this reading switched monitoring off.
    pub fn observe(&mut self, reading: &Result<Vec<GpuDevice>, String>) -> Option<String> {
        if !self.enabled() {
            return None;
        }
        let devices = match reading {
            Ok(d) => d,
            Err(e) => {
                self.failures += 1;
                return (self.failures == MAX_FAILURES).then(|| {
                    format!("GPU monitoring failed {MAX_FAILURES} times ({e}): switching GPU monitoring off")
                });
            }
        };
        if !self.filter_checked && !devices.is_empty() {
            self.filter_checked = true;
            if !devices.iter().any(|d| self.active.keeps(d)) {
                self.active = ActiveGpus::All;
            }
        }
        let kept: Vec<&GpuDevice> = devices.iter().filter(|d| self.active.keeps(d)).collect();
        if self.sums.len() < kept.len() {
            self.sums.resize(kept.len(), Sum::default());
        }
        for (sum, d) in self.sums.iter_mut().zip(kept) {
            if let Some(u) = d.utilization.or(self.default_utilization) {
                sum.usage += u;
                sum.usage_n += 1;
            }
            sum.used += d.memory_used_mb;
            sum.free += (d.memory_total_mb - d.memory_used_mb).max(0.0);
            sum.temperature += d.temperature;
            sum.n += 1;
        }
        None
    }

    /// Reads `source` once and adds the reading.
    pub fn sample_from(&mut self, source: &mut dyn GpuStats) -> Option<String> {
        if !self.enabled() {
            return None;
        }
        let reading = source.devices();
        self.observe(&reading)
    }

    /// The mean of each field per active GPU since the last report, then starts over. Empty
    /// when nothing was read (no GPU, `--cpu-only`, monitoring off).
    pub fn report(&mut self) -> Vec<GpuSample> {
        let sums = std::mem::take(&mut self.sums);
        if !self.enabled() {
            return vec![];
        }
        sums.into_iter()
            .filter(|s| s.n > 0)
            .map(|s| {
                let n = s.n as f64;
                GpuSample {
                    usage: if s.usage_n > 0 {
                        s.usage / s.usage_n as f64
                    } else {
                        0.0
                    },
                    memory_used_mb: s.used / n,
                    memory_free_mb: s.free / n,
                    temperature: s.temperature / n,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::gpu::add_to_stats;
    use crate::agent::gpu_select::{parse_selection, reconcile};
    use serde_json::json;

    fn dev(index: u32, util: Option<f64>, used: f64, temp: f64) -> GpuDevice {
        GpuDevice {
            index,
            uuid: format!("GPU-{index:04}"),
            name: "Fake".into(),
            utilization: util,
            memory_used_mb: used,
            memory_total_mb: 1000.0,
            temperature: temp,
        }
    }

    fn monitor_for(gpus: Option<&str>, cpu_only: bool) -> GpuMonitor {
        let v = reconcile(&parse_selection(gpus, cpu_only).unwrap(), &|_| None);
        GpuMonitor::new(ActiveGpus::from_visibility(&v), Some(100.0))
    }

    /// The NVML fake: a scripted sequence of readings behind the real trait.
    struct ScriptedNvml(Vec<Result<Vec<GpuDevice>, String>>);

    impl GpuStats for ScriptedNvml {
        fn sample(&mut self) -> Vec<GpuSample> {
            vec![]
        }
        fn devices(&mut self) -> Result<Vec<GpuDevice>, String> {
            if self.0.is_empty() {
                Ok(vec![])
            } else {
                self.0.remove(0)
            }
        }
    }

    #[test]
    fn only_assigned_gpus_averaged_over_the_interval() {
        let mut m = monitor_for(Some("1,3"), false);
        let mut nvml = ScriptedNvml(vec![
            Ok(vec![
                dev(0, Some(99.0), 900.0, 80.0),
                dev(1, Some(10.0), 100.0, 40.0),
                dev(2, Some(99.0), 1.0, 1.0),
                dev(3, Some(50.0), 500.0, 60.0),
            ]),
            Ok(vec![
                dev(0, Some(99.0), 900.0, 80.0),
                dev(1, Some(30.0), 300.0, 50.0),
                dev(2, Some(99.0), 1.0, 1.0),
                dev(3, Some(70.0), 700.0, 62.0),
            ]),
        ]);
        m.sample_from(&mut nvml);
        m.sample_from(&mut nvml);
        let report = m.report();
        assert_eq!(report.len(), 2);
        assert_eq!(
            report[0],
            GpuSample {
                usage: 20.0,
                memory_used_mb: 200.0,
                memory_free_mb: 800.0,
                temperature: 45.0
            }
        );
        assert_eq!(
            report[1],
            GpuSample {
                usage: 60.0,
                memory_used_mb: 600.0,
                memory_free_mb: 400.0,
                temperature: 61.0
            }
        );
        // The report fields as the server gets them.
        let mut stats = serde_json::Map::new();
        add_to_stats(&mut stats, &report);
        assert_eq!(stats["gpu_usage"], json!([20.0, 60.0]));
        assert_eq!(stats["gpu_memory_free"], json!([800.0, 400.0]));
        // The next interval starts over.
        assert!(m.report().is_empty());
        m.observe(&Ok(vec![
            dev(1, Some(90.0), 0.0, 0.0),
            dev(3, Some(0.0), 0.0, 0.0),
        ]));
        assert_eq!(m.report()[0].usage, 90.0);
    }

    #[test]
    fn uuids_cpu_only_all_and_default_utilization() {
        let devices = Ok(vec![
            dev(0, None, 10.0, 30.0),
            dev(1, Some(5.0), 20.0, 31.0),
        ]);
        // By UUID.
        let mut m = monitor_for(Some("GPU-0001"), false);
        m.observe(&devices);
        assert_eq!(
            m.report(),
            vec![GpuSample {
                usage: 5.0,
                memory_used_mb: 20.0,
                memory_free_mb: 980.0,
                temperature: 31.0
            }]
        );
        // --cpu-only: nothing, ever.
        let mut m = monitor_for(None, true);
        assert!(!m.enabled());
        m.observe(&devices);
        assert!(m.report().is_empty());
        // all: both; no utilization reading (MIG) counts as the configured default.
        let mut m = monitor_for(Some("all"), false);
        m.observe(&devices);
        let r = m.report();
        assert_eq!((r.len(), r[0].usage), (2, 100.0));
        // default_gpu_utilization: null leaves it out of the mean.
        let mut m = GpuMonitor::new(ActiveGpus::All, None);
        m.observe(&Ok(vec![dev(0, None, 0.0, 0.0)]));
        m.observe(&Ok(vec![dev(0, Some(40.0), 0.0, 0.0)]));
        assert_eq!(m.report()[0].usage, 40.0);
    }

    #[test]
    fn a_filter_matching_nothing_reports_every_gpu() {
        // e.g. NVIDIA_VISIBLE_DEVICES=7 on a 2-GPU machine, or a MIG name: upstream reports all.
        let mut m = monitor_for(Some("7"), false);
        m.observe(&Ok(vec![
            dev(0, Some(1.0), 0.0, 0.0),
            dev(1, Some(2.0), 0.0, 0.0),
        ]));
        assert_eq!(m.active(), &ActiveGpus::All);
        assert_eq!(m.report().len(), 2);
    }

    #[test]
    fn three_failures_switch_monitoring_off() {
        let mut m = monitor_for(None, false);
        let mut nvml = ScriptedNvml(vec![
            Err("NVML: GPU is lost".into()),
            Ok(vec![dev(0, Some(1.0), 0.0, 0.0)]),
            Err("NVML: GPU is lost".into()),
            Err("NVML: GPU is lost".into()),
            Ok(vec![dev(0, Some(1.0), 0.0, 0.0)]),
        ]);
        assert_eq!(m.sample_from(&mut nvml), None);
        assert_eq!(m.sample_from(&mut nvml), None);
        assert_eq!(m.sample_from(&mut nvml), None);
        let said = m.sample_from(&mut nvml).unwrap();
        assert!(
            said.contains("GPU is lost") && said.contains("off"),
            "{said}"
        );
        assert!(!m.enabled());
        assert_eq!(m.sample_from(&mut nvml), None);
        assert!(m.report().is_empty());
    }

    #[test]
    fn without_nvml_the_monitor_reports_nothing() {
        // The real detection on this machine (CI has no NVIDIA driver): no GPUs, no error.
        let mut source = crate::agent::gpu::detect();
        let mut m = monitor_for(None, false);
        assert_eq!(m.sample_from(source.as_mut()), None);
        if source.sample().is_empty() {
            assert!(m.report().is_empty());
        }
    }
}
