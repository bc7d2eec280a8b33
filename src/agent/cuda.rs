//! Which CUDA version a task's packages should be built for (the PyTorch wheel index, the venv
//! cache key). Upstream's chain (`RequirementsManager.get_cuda_version`, `Session.__init__`):
//! `--cpu-only` means none; then `CLEARML_CUDA_VERSION` / `TRAINS_CUDA_VERSION` / `CUDA_VERSION`
//! (first set wins, over the file); then `agent.cuda_version`; then the driver through NVML; then
//! `nvcc --version`; then `nvidia-smi`. A configured `0` means "no CUDA" and stops the chain.
//!
//! Versions are normalized as upstream does: `12.1`, `12.1.105` -> 12.1; a bare number below 60
//! is a major version (`12` -> 12.0), from 60 up it is major*10+minor (`121` -> 12.1, `90` -> 9.0).
//! Unlike upstream, `nvcc` output is read as `release 12.1` -> 12.1 (upstream reads three
//! characters, `12.`, and so loses the minor version of every CUDA since 10), and a value that
//! is not a version is an error naming where it came from rather than a silent "no CUDA".

use super::gpu::GpuStats;
use std::ffi::OsString;
use std::fmt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub use crate::effects::cuda_version::CudaVersion;

/// Where the version came from, for the log line that says which CUDA a task is built for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CudaSource {
    CpuOnly,
    Env(&'static str),
    Config,
    Driver,
    Nvcc,
    NvidiaSmi,
    NotFound,
}

impl fmt::Display for CudaSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CudaSource::CpuOnly => f.write_str("--cpu-only"),
            CudaSource::Env(var) => write!(f, "${var}"),
            CudaSource::Config => f.write_str("agent.cuda_version"),
            CudaSource::Driver => f.write_str("the NVIDIA driver (NVML)"),
            CudaSource::Nvcc => f.write_str("nvcc --version"),
            CudaSource::NvidiaSmi => f.write_str("nvidia-smi"),
            CudaSource::NotFound => f.write_str("no CUDA found"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DetectedCuda {
    /// None: build for CPU.
    pub version: Option<CudaVersion>,
    pub source: CudaSource,
}

/// Runs a tool and answers its combined output (None when it cannot be run or fails).
pub trait Commands {
    fn output(&self, program: &str, args: &[&str]) -> Option<String>;
}

/// The machine's tools, looked up on `path` (the agent's PATH when None), each given 10 s.
pub struct SystemCommands {
    pub path: Option<OsString>,
}

impl Commands for SystemCommands {
    fn output(&self, program: &str, args: &[&str]) -> Option<String> {
        let mut cmd = Command::new(program);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(p) = &self.path {
            // Set on the command, PATH is also where std looks the program up.
            cmd.env("PATH", p);
        }
        let mut child = cmd.spawn().ok()?;
        let deadline = Instant::now() + Duration::from_secs(10);
        // A wedged driver can hang nvidia-smi: give up rather than hang the agent.
        while child.try_wait().ok()?.is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let out = child.wait_with_output().ok()?;
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        out.status.success().then_some(text)
    }
}

/// `Cuda compilation tools, release 12.1, V12.1.105` -> 12.1.
pub fn parse_nvcc(output: &str) -> Option<CudaVersion> {
    let rest = &output[output.find("release ")? + "release ".len()..];
    let text: String = rest
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    CudaVersion::parse(&text).ok().flatten()
}

/// `| NVIDIA-SMI 535.104.05   Driver Version: 535.104.05   CUDA Version: 12.2 |` -> 12.2.
pub fn parse_nvidia_smi(output: &str) -> Option<CudaVersion> {
    let rest = &output[output.find("CUDA Version:")? + "CUDA Version:".len()..];
    CudaVersion::parse(rest.split_whitespace().next()?)
        .ok()
        .flatten()
}

/// The variables that set the version, first set wins (upstream's `ENVIRONMENT_CONFIG`).
pub const CUDA_ENV: [&str; 3] = [
    "CLEARML_CUDA_VERSION",
    "TRAINS_CUDA_VERSION",
    "CUDA_VERSION",
];

/// Upstream's chain; see the module note. `config`: `agent.cuda_version` as the file gives it.
pub fn detect(
    cpu_only: bool,
    env: &dyn Fn(&str) -> Option<String>,
    config: Option<&str>,
    driver: Option<&mut dyn GpuStats>,
    commands: &dyn Commands,
) -> Result<DetectedCuda, String> {
    let found = |version, source| Ok(DetectedCuda { version, source });
    if cpu_only {
        return found(None, CudaSource::CpuOnly);
    }
    for var in CUDA_ENV {
        if let Some(v) = env(var).filter(|v| !v.trim().is_empty()) {
            let version = CudaVersion::parse(&v).map_err(|e| format!("${var}: {e}"))?;
            return found(version, CudaSource::Env(var));
        }
    }
    if let Some(v) = config.filter(|v| !v.trim().is_empty()) {
        let version = CudaVersion::parse(v).map_err(|e| format!("agent.cuda_version: {e}"))?;
        return found(version, CudaSource::Config);
    }
    if let Some(v) = driver
        .and_then(|d| d.cuda_driver_version())
        .and_then(CudaVersion::from_driver)
    {
        return found(Some(v), CudaSource::Driver);
    }
    if let Some(v) = commands
        .output("nvcc", &["--version"])
        .as_deref()
        .and_then(parse_nvcc)
    {
        return found(Some(v), CudaSource::Nvcc);
    }
    if let Some(v) = commands
        .output("nvidia-smi", &[])
        .as_deref()
        .and_then(parse_nvidia_smi)
    {
        return found(Some(v), CudaSource::NvidiaSmi);
    }
    found(None, CudaSource::NotFound)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::gpu::{GpuSample, NoGpus};
    use std::os::unix::fs::PermissionsExt;

    const NVCC: &str = "nvcc: NVIDIA (R) Cuda compiler driver\nCopyright (c) 2005-2023 NVIDIA Corporation\nBuilt on Mon_Apr__3_17:16:06_PDT_2023\nCuda compilation tools, release 12.1, V12.1.105\nBuild cuda_12.1.r12.1/compiler.32688072_0\n";
    const SMI: &str = "+---------------------------------------------------------------------------------------+\n| NVIDIA-SMI 535.104.05             Driver Version: 535.104.05   CUDA Version: 12.2     |\n";

    /// The driver fake: what NVML would say on a GPU machine.
    struct Driver(i32);
    impl GpuStats for Driver {
        fn sample(&mut self) -> Vec<GpuSample> {
            vec![]
        }
        fn cuda_driver_version(&mut self) -> Option<i32> {
            Some(self.0)
        }
    }

    struct Canned(Vec<(&'static str, &'static str)>);
    impl Commands for Canned {
        fn output(&self, program: &str, _: &[&str]) -> Option<String> {
            self.0
                .iter()
                .find(|(p, _)| *p == program)
                .map(|(_, o)| o.to_string())
        }
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn normalizes_like_upstream() {
        let p = |s: &str| CudaVersion::parse(s).unwrap();
        assert_eq!(p("12.1"), Some(CudaVersion::new(12, 1)));
        assert_eq!(p("12.1.105"), Some(CudaVersion::new(12, 1)));
        assert_eq!(p("121"), Some(CudaVersion::new(12, 1)));
        assert_eq!(p("118"), Some(CudaVersion::new(11, 8)));
        assert_eq!(p("90"), Some(CudaVersion::new(9, 0)));
        assert_eq!(p("12"), Some(CudaVersion::new(12, 0)));
        assert_eq!(p("10.0"), Some(CudaVersion::new(10, 0)));
        assert_eq!(p("0"), None);
        assert_eq!(p("0.0"), None);
        assert!(CudaVersion::parse("twelve").unwrap_err().contains("twelve"));
        assert!(CudaVersion::parse("12.10").is_err());
        assert_eq!(CudaVersion::new(12, 1).tag(), "cu121");
        assert_eq!(
            CudaVersion::from_driver(12020),
            Some(CudaVersion::new(12, 2))
        );
        assert_eq!(
            CudaVersion::from_driver(11080),
            Some(CudaVersion::new(11, 8))
        );
        assert_eq!(CudaVersion::from_driver(0), None);
        assert_eq!(parse_nvcc(NVCC), Some(CudaVersion::new(12, 1)));
        assert_eq!(parse_nvidia_smi(SMI), Some(CudaVersion::new(12, 2)));
        assert_eq!(parse_nvcc("command not found"), None);
    }

    #[test]
    fn chain_order() {
        let all = Canned(vec![("nvcc", NVCC), ("nvidia-smi", SMI)]);
        let env_with = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        let d =
            |cpu,
             env: &dyn Fn(&str) -> Option<String>,
             conf,
             drv: Option<&mut dyn GpuStats>,
             cmds: &dyn Commands| { detect(cpu, env, conf, drv, cmds).unwrap() };
        // --cpu-only beats everything.
        let r = d(
            true,
            &env_with(&[("CUDA_VERSION", "12.1")]),
            Some("11.8"),
            Some(&mut Driver(12020)),
            &all,
        );
        assert_eq!((r.version, r.source), (None, CudaSource::CpuOnly));
        // CLEARML_CUDA_VERSION before CUDA_VERSION, both before the file.
        let env = env_with(&[("CUDA_VERSION", "11.7"), ("CLEARML_CUDA_VERSION", "11.8")]);
        let r = d(false, &env, Some("10.2"), Some(&mut Driver(12020)), &all);
        assert_eq!(
            (r.version, r.source),
            (
                Some(CudaVersion::new(11, 8)),
                CudaSource::Env("CLEARML_CUDA_VERSION")
            )
        );
        let r = d(
            false,
            &env_with(&[("CUDA_VERSION", "12.4.1")]),
            Some("10.2"),
            None,
            &all,
        );
        assert_eq!(r.version, Some(CudaVersion::new(12, 4)));
        // The file, then the driver, then nvcc, then nvidia-smi.
        let r = d(false, &no_env, Some("10.2"), Some(&mut Driver(12020)), &all);
        assert_eq!(
            (r.version, r.source),
            (Some(CudaVersion::new(10, 2)), CudaSource::Config)
        );
        let r = d(false, &no_env, None, Some(&mut Driver(12020)), &all);
        assert_eq!(
            (r.version, r.source),
            (Some(CudaVersion::new(12, 2)), CudaSource::Driver)
        );
        let r = d(false, &no_env, None, Some(&mut NoGpus), &all);
        assert_eq!(
            (r.version, r.source),
            (Some(CudaVersion::new(12, 1)), CudaSource::Nvcc)
        );
        let r = d(
            false,
            &no_env,
            None,
            None,
            &Canned(vec![("nvidia-smi", SMI)]),
        );
        assert_eq!(
            (r.version, r.source),
            (Some(CudaVersion::new(12, 2)), CudaSource::NvidiaSmi)
        );
        let r = d(false, &no_env, None, None, &Canned(vec![]));
        assert_eq!((r.version, r.source), (None, CudaSource::NotFound));
        // A configured 0 means CPU and stops the chain.
        let r = d(
            false,
            &env_with(&[("CUDA_VERSION", "0")]),
            None,
            Some(&mut Driver(12020)),
            &all,
        );
        assert_eq!(
            (r.version, r.source),
            (None, CudaSource::Env("CUDA_VERSION"))
        );
        // Garbage is an error naming the variable.
        let e = detect(
            false,
            &env_with(&[("CUDA_VERSION", "abc")]),
            None,
            None,
            &all,
        )
        .unwrap_err();
        assert!(e.starts_with("$CUDA_VERSION") && e.contains("abc"), "{e}");
    }

    #[test]
    fn real_processes_found_on_path() {
        // No nvcc on this machine: an executable stand-in on a PATH of our own, run for real.
        let dir = tempfile::tempdir().unwrap();
        let nvcc = dir.path().join("nvcc");
        std::fs::write(&nvcc, format!("#!/bin/sh\ncat <<'EOF'\n{NVCC}EOF\n")).unwrap();
        std::fs::set_permissions(&nvcc, std::fs::Permissions::from_mode(0o755)).unwrap();
        // The stand-in itself needs `cat`; ours comes first on the PATH.
        let mut path = dir.path().as_os_str().to_owned();
        path.push(":/usr/bin:/bin");
        let cmds = SystemCommands { path: Some(path) };
        let r = detect(false, &no_env, None, Some(&mut NoGpus), &cmds).unwrap();
        assert_eq!(
            (r.version, r.source),
            (Some(CudaVersion::new(12, 1)), CudaSource::Nvcc)
        );
        // Nothing runnable: no CUDA, no error.
        let empty = tempfile::tempdir().unwrap();
        let cmds = SystemCommands {
            path: Some(empty.path().as_os_str().to_owned()),
        };
        let r = detect(false, &no_env, None, None, &cmds).unwrap();
        assert_eq!(r.source, CudaSource::NotFound);
    }
}
