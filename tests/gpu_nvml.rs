//! Checks that need an NVIDIA GPU and its driver; `#[ignore]`d everywhere else and run by
//! scripts/gpu-check.sh (`cargo test --test gpu_nvml -- --ignored --nocapture`). On a machine
//! without NVML they fail: they are only meant to be asked for where a GPU is.
//!
//! 1. NVML discovery and stats against `nvidia-smi` (count, index, UUID, name, total memory,
//!    used memory and temperature within a tolerance, the driver's CUDA version), the averaged
//!    monitor over real readings, and the CUDA detection chain taking the driver's version.
//! 2. What a task really sees: a child process with the environment `gpu_select` builds for
//!    `--gpus all`, `--gpus 0`, `--gpus 1,0`, `--cpu-only` and a dynamic grant asks libcuda (the
//!    driver API, via Python's ctypes) which devices it has, by UUID, and they must be exactly
//!    the ones selected, in the order selected, numbered as NVML numbers them.

use clearml_agent::agent::cuda::{self, CudaSource, CudaVersion, SystemCommands};
use clearml_agent::agent::gpu::{GpuStats, NvmlGpus};
use clearml_agent::agent::gpu_monitor::{ActiveGpus, GpuMonitor};
use clearml_agent::agent::gpu_select::{parse_selection, reconcile, EnvChange, GpuId, Visibility};
use std::process::Command;

fn nvidia_smi(args: &[&str]) -> String {
    let out = Command::new("nvidia-smi")
        .args(args)
        .output()
        .expect("nvidia-smi runs");
    assert!(
        out.status.success(),
        "nvidia-smi {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

struct SmiGpu {
    index: u32,
    uuid: String,
    name: String,
    total: f64,
    used: f64,
    temperature: f64,
}

fn smi_gpus() -> Vec<SmiGpu> {
    nvidia_smi(&[
        "--query-gpu=index,uuid,name,memory.total,memory.used,temperature.gpu",
        "--format=csv,noheader,nounits",
    ])
    .lines()
    .filter(|l| !l.trim().is_empty())
    .map(|l| {
        let f: Vec<&str> = l.split(',').map(str::trim).collect();
        let num = |s: &str| s.parse::<f64>().unwrap_or(f64::NAN);
        SmiGpu {
            index: f[0].parse().unwrap(),
            uuid: f[1].to_string(),
            name: f[2].to_string(),
            total: num(f[3]),
            used: num(f[4]),
            temperature: num(f[5]),
        }
    })
    .collect()
}

#[test]
#[ignore = "needs an NVIDIA GPU and driver; run by scripts/gpu-check.sh"]
fn nvml_discovery_and_stats_match_nvidia_smi() {
    let mut nvml = NvmlGpus::open().expect("NVML loads on a GPU machine");
    let devices = nvml.devices().expect("NVML lists the devices");
    let smi = smi_gpus();
    println!(
        "{:<5} {:<42} {:<28} {:>10} {:>10} {:>6}",
        "index", "uuid", "name", "total MiB", "used MiB", "temp"
    );
    for d in &devices {
        println!(
            "nvml  {:<42} {:<28} {:>10.0} {:>10.0} {:>6.0}  (index {}, util {:?})",
            d.uuid,
            d.name,
            d.memory_total_mb,
            d.memory_used_mb,
            d.temperature,
            d.index,
            d.utilization
        );
    }
    for g in &smi {
        println!(
            "smi   {:<42} {:<28} {:>10.0} {:>10.0} {:>6.0}  (index {})",
            g.uuid, g.name, g.total, g.used, g.temperature, g.index
        );
    }
    assert_eq!(
        devices.len(),
        smi.len(),
        "NVML and nvidia-smi count different GPUs"
    );
    for (d, g) in devices.iter().zip(&smi) {
        assert_eq!(d.index, g.index);
        assert_eq!(d.uuid, g.uuid, "GPU {}", g.index);
        assert_eq!(d.name, g.name, "GPU {}", g.index);
        assert!(
            (d.memory_total_mb - g.total).abs() <= 1.0,
            "GPU {} total {} vs {}",
            g.index,
            d.memory_total_mb,
            g.total
        );
        // Used memory and temperature move between the two reads: a loose bound.
        assert!(
            (d.memory_used_mb - g.used).abs() <= 0.05 * g.total + 64.0,
            "GPU {} used {} vs {}",
            g.index,
            d.memory_used_mb,
            g.used
        );
        assert!(
            (d.temperature - g.temperature).abs() <= 10.0,
            "GPU {} temp {} vs {}",
            g.index,
            d.temperature,
            g.temperature
        );
        assert!(d.utilization.is_none_or(|u| (0.0..=100.0).contains(&u)));
    }
    // The legacy sample() agrees with devices().
    assert_eq!(nvml.sample().len(), devices.len());

    // The driver's CUDA version, and the detection chain choosing it.
    let header = nvidia_smi(&[]);
    let smi_cuda = cuda::parse_nvidia_smi(&header).expect("nvidia-smi shows a CUDA version");
    let nvml_cuda = nvml
        .cuda_driver_version()
        .and_then(CudaVersion::from_driver)
        .expect("NVML has a driver CUDA version");
    println!("CUDA driver version: NVML {nvml_cuda}, nvidia-smi {smi_cuda}");
    assert_eq!(nvml_cuda, smi_cuda);
    let detected = cuda::detect(
        false,
        &|_| None,
        None,
        Some(&mut nvml),
        &SystemCommands { path: None },
    )
    .unwrap();
    assert_eq!(
        (detected.version, detected.source),
        (Some(nvml_cuda), CudaSource::Driver)
    );

    // The monitor over real readings: only GPU 0, averaged.
    let mut monitor = GpuMonitor::new(ActiveGpus::Only(vec!["0".into()]), Some(100.0));
    for _ in 0..4 {
        assert_eq!(monitor.sample_from(&mut nvml), None);
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    let report = monitor.report();
    println!("averaged report for GPU 0 over 4 readings: {report:?}");
    assert_eq!(report.len(), 1);
    let r = &report[0];
    assert!((0.0..=100.0).contains(&r.usage));
    assert!((r.memory_used_mb + r.memory_free_mb - smi[0].total).abs() <= 1.0);
}

const CUDA_PROBE: &str = r#"
import ctypes, sys
try:
    cuda = ctypes.CDLL("libcuda.so.1")
except OSError as e:
    print("NOLIB", e); sys.exit(0)
r = cuda.cuInit(0)
if r != 0:
    print("INIT", r); sys.exit(0)
n = ctypes.c_int()
cuda.cuDeviceGetCount(ctypes.byref(n))
out = []
for i in range(n.value):
    d = ctypes.c_int()
    cuda.cuDeviceGet(ctypes.byref(d), i)
    u = (ctypes.c_ubyte * 16)()
    cuda.cuDeviceGetUuid(u, d)
    h = bytes(u).hex()
    out.append("GPU-%s-%s-%s-%s-%s" % (h[:8], h[8:12], h[12:16], h[16:20], h[20:]))
print("DEVICES", " ".join(out))
"#;

/// The devices libcuda shows a child started with `visibility`'s task environment.
fn cuda_sees(visibility: &Visibility) -> Result<Vec<String>, String> {
    let mut cmd = Command::new("python3");
    cmd.args(["-c", CUDA_PROBE]);
    for (var, change) in visibility.task_env() {
        match change {
            EnvChange::Set(v) => cmd.env(var, v),
            EnvChange::Unset => cmd.env_remove(var),
        };
    }
    let out = cmd.output().expect("python3 runs");
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    match text.strip_prefix("DEVICES") {
        Some(list) => Ok(list.split_whitespace().map(str::to_string).collect()),
        None => Err(text),
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU and driver; run by scripts/gpu-check.sh"]
fn a_task_sees_exactly_its_gpus() {
    let smi = smi_gpus();
    assert!(!smi.is_empty(), "no GPU");
    let uuid = |i: usize| smi[i].uuid.clone();
    // The daemon's own inherited selection must not leak into the cases.
    let clean = |v: &str| {
        (!matches!(v, "CUDA_VISIBLE_DEVICES" | "NVIDIA_VISIBLE_DEVICES"))
            .then(|| std::env::var(v).ok())
            .flatten()
    };
    let sees = |gpus: Option<&str>, cpu_only: bool| {
        let v = reconcile(&parse_selection(gpus, cpu_only).unwrap(), &clean);
        let seen = cuda_sees(&v);
        println!(
            "--gpus {gpus:?} --cpu-only {cpu_only}: env {:?} -> {seen:?}",
            v.task_env()
        );
        seen
    };
    assert_eq!(
        sees(Some("all"), false).unwrap(),
        smi.iter().map(|g| g.uuid.clone()).collect::<Vec<_>>()
    );
    assert_eq!(sees(Some("0"), false).unwrap(), vec![uuid(0)]);
    // --cpu-only: no device at all (cuInit answers CUDA_ERROR_NO_DEVICE, 100).
    match sees(None, true) {
        Ok(list) => assert!(list.is_empty(), "cpu-only task sees {list:?}"),
        Err(e) => assert_eq!(e, "INIT 100"),
    }
    // A dynamic grant of the last GPU.
    let last = smi.len() - 1;
    let v = Visibility::of_devices(&[GpuId::index(last as u32)]);
    assert_eq!(cuda_sees(&v).unwrap(), vec![uuid(last)]);
    if smi.len() >= 2 {
        // Numbering follows PCI bus order (CUDA_DEVICE_ORDER), as NVML's, and the list's order.
        assert_eq!(sees(Some("1"), false).unwrap(), vec![uuid(1)]);
        assert_eq!(sees(Some("1,0"), false).unwrap(), vec![uuid(1), uuid(0)]);
    } else {
        println!("one GPU: the two-GPU cases (--gpus 1, --gpus 1,0) need a second one");
    }
}
