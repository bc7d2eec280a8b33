//! GPU statistics for `workers.status_report`, behind a trait: NVML (loaded at run time by
//! nvml-wrapper, so a machine without the NVIDIA driver just has no GPUs) or a fixed fake for
//! tests. Field names and units follow the Python agent (`gpu_usage` %, memory in MB, °C).

use serde_json::{json, Map, Value};

#[derive(Debug, Clone, PartialEq)]
pub struct GpuSample {
    pub usage: f64,
    pub memory_used_mb: f64,
    pub memory_free_mb: f64,
    pub temperature: f64,
}

pub trait GpuStats: Send {
    /// One sample per visible GPU, in index order.
    fn sample(&mut self) -> Vec<GpuSample>;

    /// Every device with its identity (to keep only a task's GPUs) and raw readings; an error
    /// when the query failed, so a monitor can count failures. The default derives them from
    /// [`GpuStats::sample`], numbering devices by position.
    fn devices(&mut self) -> Result<Vec<GpuDevice>, String> {
        Ok(self
            .sample()
            .into_iter()
            .enumerate()
            .map(|(i, s)| GpuDevice {
                index: i as u32,
                uuid: String::new(),
                name: String::new(),
                utilization: Some(s.usage),
                memory_used_mb: s.memory_used_mb,
                memory_total_mb: s.memory_used_mb + s.memory_free_mb,
                temperature: s.temperature,
            })
            .collect())
    }

    /// The newest CUDA version the driver supports, as NVML encodes it (12020 = 12.2).
    fn cuda_driver_version(&mut self) -> Option<i32> {
        None
    }
}

/// One GPU as NVML describes it (see `gpu_monitor` for how readings become report fields).
#[derive(Debug, Clone, PartialEq)]
pub struct GpuDevice {
    /// NVML's index, which is nvidia-smi's and, with `CUDA_DEVICE_ORDER=PCI_BUS_ID`, CUDA's.
    pub index: u32,
    /// `GPU-...`.
    pub uuid: String,
    pub name: String,
    /// None where the device reports none (MIG).
    pub utilization: Option<f64>,
    pub memory_used_mb: f64,
    pub memory_total_mb: f64,
    pub temperature: f64,
}

/// No GPU (NVML absent or no device).
pub struct NoGpus;

impl GpuStats for NoGpus {
    fn sample(&mut self) -> Vec<GpuSample> {
        vec![]
    }
}

/// A fixed answer: the fake for tests.
pub struct FixedGpus(pub Vec<GpuSample>);

impl GpuStats for FixedGpus {
    fn sample(&mut self) -> Vec<GpuSample> {
        self.0.clone()
    }
}

/// The real GPUs, through NVML.
pub struct NvmlGpus {
    nvml: nvml_wrapper::Nvml,
}

impl NvmlGpus {
    pub fn open() -> Result<NvmlGpus, String> {
        nvml_wrapper::Nvml::init()
            .map(|nvml| NvmlGpus { nvml })
            .map_err(|e| e.to_string())
    }
}

impl GpuStats for NvmlGpus {
    fn sample(&mut self) -> Vec<GpuSample> {
        use nvml_wrapper::enum_wrappers::device::TemperatureSensor;
        let count = self.nvml.device_count().unwrap_or(0);
        (0..count)
            .filter_map(|i| self.nvml.device_by_index(i).ok())
            .map(|d| {
                let mem = d.memory_info().ok();
                GpuSample {
                    // MIG devices report no utilization: upstream then reports 100.
                    usage: d.utilization_rates().map(|u| u.gpu as f64).unwrap_or(100.0),
                    memory_used_mb: mem.as_ref().map_or(0.0, |m| m.used as f64 / 1_048_576.0),
                    memory_free_mb: mem.as_ref().map_or(0.0, |m| m.free as f64 / 1_048_576.0),
                    temperature: d
                        .temperature(TemperatureSensor::Gpu)
                        .map_or(0.0, |t| t as f64),
                }
            })
            .collect()
    }

    fn devices(&mut self) -> Result<Vec<GpuDevice>, String> {
        use nvml_wrapper::enum_wrappers::device::TemperatureSensor;
        let count = self.nvml.device_count().map_err(|e| e.to_string())?;
        (0..count)
            .map(|i| {
                let d = self.nvml.device_by_index(i).map_err(|e| e.to_string())?;
                let mem = d.memory_info().map_err(|e| e.to_string())?;
                Ok(GpuDevice {
                    index: d.index().unwrap_or(i),
                    uuid: d.uuid().unwrap_or_default(),
                    name: d.name().unwrap_or_default(),
                    utilization: d.utilization_rates().ok().map(|u| u.gpu as f64),
                    memory_used_mb: mem.used as f64 / 1_048_576.0,
                    memory_total_mb: mem.total as f64 / 1_048_576.0,
                    temperature: d
                        .temperature(TemperatureSensor::Gpu)
                        .map_or(0.0, |t| t as f64),
                })
            })
            .collect()
    }

    fn cuda_driver_version(&mut self) -> Option<i32> {
        self.nvml.sys_cuda_driver_version().ok()
    }
}

/// NVML when it loads and sees a device, else nothing; never an error.
pub fn detect() -> Box<dyn GpuStats> {
    match NvmlGpus::open() {
        Ok(mut gpus) => {
            if gpus.sample().is_empty() {
                Box::new(NoGpus)
            } else {
                Box::new(gpus)
            }
        }
        Err(_) => Box::new(NoGpus),
    }
}

/// Adds the GPU fields (only when there are GPUs) to a `machine_stats` object.
pub fn add_to_stats(stats: &mut Map<String, Value>, samples: &[GpuSample]) {
    if samples.is_empty() {
        return;
    }
    let round = |x: f64| (x * 1000.0).round() / 1000.0;
    let list = |f: &dyn Fn(&GpuSample) -> f64| {
        json!(samples.iter().map(|s| round(f(s))).collect::<Vec<_>>())
    };
    stats.insert("gpu_usage".into(), list(&|s| s.usage));
    stats.insert("gpu_memory_used".into(), list(&|s| s.memory_used_mb));
    stats.insert("gpu_memory_free".into(), list(&|s| s.memory_free_mb));
    stats.insert("gpu_temperature".into(), list(&|s| s.temperature));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpu_fields_appear_only_with_gpus() {
        let mut stats = Map::new();
        add_to_stats(&mut stats, &NoGpus.sample());
        assert!(stats.is_empty());
        let mut fake = FixedGpus(vec![
            GpuSample {
                usage: 50.0,
                memory_used_mb: 1024.0,
                memory_free_mb: 3072.0,
                temperature: 61.0,
            },
            GpuSample {
                usage: 0.0,
                memory_used_mb: 0.5,
                memory_free_mb: 4095.5,
                temperature: 40.0,
            },
        ]);
        add_to_stats(&mut stats, &fake.sample());
        assert_eq!(stats["gpu_usage"], json!([50.0, 0.0]));
        assert_eq!(stats["gpu_memory_free"], json!([3072.0, 4095.5]));
        assert_eq!(stats["gpu_temperature"], json!([61.0, 40.0]));
    }

    #[test]
    fn without_nvml_detection_falls_back_quietly() {
        // On machines without the NVIDIA driver (CI) NVML does not load: no GPUs, no panic.
        if NvmlGpus::open().is_err() {
            assert!(detect().sample().is_empty());
        }
    }
}
