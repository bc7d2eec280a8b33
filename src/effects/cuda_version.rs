//! A CUDA version as upstream normalizes it (`12.1`, `121`, `12`); detected by
//! `crate::agent::cuda`, used by the PyTorch wheel resolver and the venv cache key.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CudaVersion {
    pub major: u32,
    pub minor: u32,
}

impl CudaVersion {
    pub fn new(major: u32, minor: u32) -> CudaVersion {
        CudaVersion { major, minor }
    }

    /// From upstream's integer form, major*10+minor (`121`).
    pub fn from_int10(n: u32) -> CudaVersion {
        CudaVersion::new(n / 10, n % 10)
    }

    /// Upstream's integer form (`121`), which its index URL templates take (`cu{}`).
    pub fn int10(&self) -> u32 {
        self.major * 10 + self.minor
    }

    /// The wheel index tag: `cu121`.
    pub fn tag(&self) -> String {
        format!("cu{}", self.int10())
    }

    /// From NVML's driver encoding: 12020 -> 12.2.
    pub fn from_driver(v: i32) -> Option<CudaVersion> {
        (v > 0).then(|| CudaVersion::new(v as u32 / 1000, (v as u32 % 1000) / 10))
    }

    /// A configured value: None for `0` (no CUDA), an error for text that is no version.
    pub fn parse(text: &str) -> Result<Option<CudaVersion>, String> {
        let t = text.trim();
        let bad = || format!("{t:?} is not a CUDA version (expected e.g. 12.1, 121 or 0 for none)");
        if t.contains('.') {
            let mut parts = t.split('.');
            let major: u32 = parts.next().unwrap_or("").parse().map_err(|_| bad())?;
            let minor: u32 = parts.next().unwrap_or("0").parse().map_err(|_| bad())?;
            if minor > 9 {
                return Err(bad());
            }
            return Ok((major > 0 || minor > 0).then(|| CudaVersion::new(major, minor)));
        }
        let n: u32 = t.parse().map_err(|_| bad())?;
        Ok(match n {
            0 => None,
            1..=59 => Some(CudaVersion::new(n, 0)),
            _ => Some(CudaVersion::from_int10(n)),
        })
    }
}

impl fmt::Display for CudaVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}
