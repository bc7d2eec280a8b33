//! Which GPUs a daemon (or one of its tasks) may use: `--gpus`, `--cpu-only`, `--dynamic-gpus`
//! queue specs, the worker id suffix, and the environment a task gets. Pure functions: the
//! caller passes the inherited environment in and applies what comes out.
//!
//! Upstream (clearml-agent 3.0.3, `Session.__init__`, `Worker._generate_worker_id_name`,
//! `Worker._parse_dynamic_gpus`) expresses a selection by rewriting its own
//! `CUDA_VISIBLE_DEVICES` / `NVIDIA_VISIBLE_DEVICES` and deriving everything from them. We keep
//! the selection as a value and derive the same variables and worker ids from it, with these
//! deliberate differences (each one a case where upstream silently does something unusable):
//! - a range `--gpus 0-3` is expanded to `0,1,2,3` in static mode too (upstream hands the
//!   literal `0-3` to CUDA, which does not parse ranges), and the worker id carries the list;
//! - `--gpus` together with `--cpu-only`, a bad device name, a duplicate, or a reversed range
//!   is an error naming the flag (upstream lets `--gpus` win or passes the text through);
//! - fractional dynamic GPUs (`queue=0.5`) are refused: upstream allows them in docker mode only.

use std::fmt;

/// One device as CUDA names it: an index (`"0"`), a MIG slice (`"0:1"`) or a UUID
/// (`"GPU-..."`, `"MIG-..."`). Stored in the form `CUDA_VISIBLE_DEVICES` takes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GpuId(String);

impl GpuId {
    /// Parses one device name; MIG slices may be written `0:1` or `0.1` (upstream's inner form).
    pub fn parse(text: &str) -> Result<GpuId, GpuSpecError> {
        let t = text.trim();
        let bad = || GpuSpecError::BadDevice(t.to_string());
        if t.is_empty() {
            return Err(bad());
        }
        let upper = t.to_ascii_uppercase();
        if upper.starts_with("GPU-") || upper.starts_with("MIG-") {
            let rest = &t[4..];
            if rest.is_empty()
                || !rest
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '/'))
            {
                return Err(bad());
            }
            return Ok(GpuId(format!("{}{}", &upper[..4], rest)));
        }
        let parts: Vec<&str> = t.split([':', '.']).collect();
        if parts.len() > 2 || parts.iter().any(|p| p.parse::<u32>().is_err()) {
            return Err(bad());
        }
        let nums: Vec<String> = parts
            .iter()
            .map(|p| p.parse::<u32>().unwrap_or_default().to_string())
            .collect();
        Ok(GpuId(nums.join(":")))
    }

    pub fn index(n: u32) -> GpuId {
        GpuId(n.to_string())
    }

    /// As `CUDA_VISIBLE_DEVICES` takes it.
    pub fn as_env(&self) -> &str {
        &self.0
    }

    /// As upstream writes it in worker ids (MIG `0:1` becomes `0.1`, since `:` separates the
    /// parts of a worker id).
    pub fn as_worker_part(&self) -> String {
        self.0.replace(':', ".")
    }

    /// The plain device index, when this names a whole GPU by index.
    pub fn as_index(&self) -> Option<u32> {
        self.0.parse().ok()
    }
}

impl fmt::Display for GpuId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GpuSpecError {
    #[error("--gpus: {0:?} is not a GPU (expected an index like 0, a MIG slice like 0:1, or a GPU-/MIG- UUID)")]
    BadDevice(String),
    #[error("--gpus: range {0:?} must go from low to high, like 0-3")]
    BadRange(String),
    #[error("--gpus: GPU {0} is listed twice")]
    Duplicate(String),
    #[error("--gpus: no GPU given")]
    Empty,
    #[error("--gpus and --cpu-only exclude each other: give one of them")]
    GpusAndCpuOnly,
    #[error("--dynamic-gpus needs --gpus with the GPUs to share, like --gpus 0-3 or --gpus 0,1,2,3 (not 'all')")]
    DynamicNeedsGpus,
    #[error("--dynamic-gpus and --cpu-only exclude each other")]
    DynamicCpuOnly,
    #[error("--dynamic-gpus: only GPU indexes or MIG slices can be shared, not {0:?}")]
    DynamicNeedsIndexes(String),
    #[error("--dynamic-gpus: queue {0:?} must be given as <queue_name>=<num_gpus> or <queue_name>=<min>-<max>")]
    QueueSpecMissing(String),
    #[error("--dynamic-gpus: queue spec {spec:?}: {reason}")]
    QueueSpec { spec: String, reason: String },
    #[error(
        "--dynamic-gpus: queue {queue:?} needs at least {min} GPUs but --gpus gives only {pool}"
    )]
    QueueNeedsMore {
        queue: String,
        min: u32,
        pool: usize,
    },
}

/// What `--gpus` / `--cpu-only` asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GpuSelection {
    /// Neither flag: the inherited `CUDA_VISIBLE_DEVICES` / `NVIDIA_VISIBLE_DEVICES` decide (all
    /// GPUs when unset).
    Inherit,
    /// `--gpus all`.
    All,
    /// `--gpus 0,1` / `0-3` / `0:1` / `GPU-...`, in the order given.
    Devices(Vec<GpuId>),
    /// `--cpu-only`: the task sees no GPU.
    CpuOnly,
}

/// Parses a device list: items separated by commas, each a device or an index range `a-b`.
pub fn parse_device_list(text: &str) -> Result<Vec<GpuId>, GpuSpecError> {
    let mut out: Vec<GpuId> = Vec::new();
    for item in text.split(',').map(str::trim) {
        if item.is_empty() {
            continue;
        }
        let upper = item.to_ascii_uppercase();
        let is_uuid = upper.starts_with("GPU-") || upper.starts_with("MIG-");
        let ids = match item.split_once('-').filter(|_| !is_uuid) {
            Some((a, b)) => {
                let lo: u32 = a
                    .trim()
                    .parse()
                    .map_err(|_| GpuSpecError::BadRange(item.into()))?;
                let hi: u32 = b
                    .trim()
                    .parse()
                    .map_err(|_| GpuSpecError::BadRange(item.into()))?;
                if lo > hi {
                    return Err(GpuSpecError::BadRange(item.into()));
                }
                (lo..=hi).map(GpuId::index).collect()
            }
            None => vec![GpuId::parse(item)?],
        };
        for id in ids {
            if out.contains(&id) {
                return Err(GpuSpecError::Duplicate(id.0));
            }
            out.push(id);
        }
    }
    if out.is_empty() {
        return Err(GpuSpecError::Empty);
    }
    Ok(out)
}

/// `--gpus VALUE` and `--cpu-only` as given on the command line.
pub fn parse_selection(gpus: Option<&str>, cpu_only: bool) -> Result<GpuSelection, GpuSpecError> {
    match (gpus.map(str::trim), cpu_only) {
        (Some(_), true) => Err(GpuSpecError::GpusAndCpuOnly),
        (None, true) => Ok(GpuSelection::CpuOnly),
        (None, false) => Ok(GpuSelection::Inherit),
        (Some(g), false) if g.eq_ignore_ascii_case("all") => Ok(GpuSelection::All),
        (Some(g), false) => Ok(GpuSelection::Devices(parse_device_list(g)?)),
    }
}

/// One variable of a task's environment: set it, or remove what the agent inherited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnvChange {
    Set(String),
    Unset,
}

/// The GPU visibility variables after reconciling a selection with the inherited environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Visibility {
    /// `CUDA_VISIBLE_DEVICES`; None: unset.
    pub cuda: Option<String>,
    /// `NVIDIA_VISIBLE_DEVICES`; None: unset.
    pub nvidia: Option<String>,
    /// Said once at start-up: what the agent overrode or ignored.
    pub warnings: Vec<String>,
}

const CUDA_VAR: &str = "CUDA_VISIBLE_DEVICES";
const NVIDIA_VAR: &str = "NVIDIA_VISIBLE_DEVICES";

fn join(ids: &[GpuId]) -> String {
    ids.iter().map(GpuId::as_env).collect::<Vec<_>>().join(",")
}

/// Upstream's `Session.__init__`: `--cpu-only` sets both variables to `none`; `--gpus all`
/// removes `CUDA_VISIBLE_DEVICES` (CUDA has no `all`) and sets `NVIDIA_VISIBLE_DEVICES=all`;
/// a device list sets both. Then, with only `CUDA_VISIBLE_DEVICES` set, `NVIDIA_VISIBLE_DEVICES`
/// copies it; with only `NVIDIA_VISIBLE_DEVICES` set, `CUDA_VISIBLE_DEVICES` stays unset (setting
/// it breaks CUDA detection in TF/PyTorch). On Kubernetes (`KUBERNETES_SERVICE_HOST` or
/// `KUBERNETES_PORT` set) `--gpus` is ignored: the device plugin already chose.
pub fn reconcile(
    selection: &GpuSelection,
    inherited: &dyn Fn(&str) -> Option<String>,
) -> Visibility {
    let mut cuda = inherited(CUDA_VAR);
    let mut nvidia = inherited(NVIDIA_VAR);
    let mut warnings = Vec::new();
    let on_k8s =
        inherited("KUBERNETES_SERVICE_HOST").is_some() || inherited("KUBERNETES_PORT").is_some();
    let before = cuda
        .clone()
        .or_else(|| nvidia.clone())
        .filter(|v| !v.is_empty());
    match selection {
        GpuSelection::Inherit => {}
        GpuSelection::CpuOnly => {
            cuda = Some("none".into());
            nvidia = Some("none".into());
        }
        GpuSelection::All | GpuSelection::Devices(_) if on_k8s => warnings.push(
            "--gpus is ignored on Kubernetes: the pod's GPUs are the ones it was given".into(),
        ),
        GpuSelection::All => {
            cuda = None;
            nvidia = Some("all".into());
        }
        GpuSelection::Devices(ids) => {
            let list = join(ids);
            if let Some(prev) = before.filter(|p| *p != list && p != "all") {
                warnings.push(format!(
                    "--gpus {list} replaces the inherited {CUDA_VAR}/{NVIDIA_VAR}={prev}"
                ));
            }
            cuda = Some(list.clone());
            nvidia = Some(list);
        }
    }
    if nvidia.as_deref().unwrap_or("").is_empty() && !cuda.as_deref().unwrap_or("").is_empty() {
        nvidia = cuda.clone();
    }
    Visibility {
        cuda,
        nvidia,
        warnings,
    }
}

impl Visibility {
    /// Upstream's `Session.get_nvidia_visible_env`: `NVIDIA_VISIBLE_DEVICES`, else
    /// `CUDA_VISIBLE_DEVICES` (an empty value counts as unset), MIG `:` written as `.`.
    pub fn visible(&self) -> Option<String> {
        self.nvidia
            .clone()
            .filter(|v| !v.is_empty())
            .or_else(|| self.cuda.clone())
            .map(|v| v.replace(':', "."))
    }

    /// The environment a task gets: `CUDA_DEVICE_ORDER=PCI_BUS_ID` (so CUDA numbers GPUs as
    /// nvidia-smi and NVML do) and the two visibility variables, set or removed.
    pub fn task_env(&self) -> Vec<(&'static str, EnvChange)> {
        let change = |v: &Option<String>| match v {
            Some(v) => EnvChange::Set(v.clone()),
            None => EnvChange::Unset,
        };
        vec![
            ("CUDA_DEVICE_ORDER", EnvChange::Set("PCI_BUS_ID".into())),
            (CUDA_VAR, change(&self.cuda)),
            (NVIDIA_VAR, change(&self.nvidia)),
        ]
    }

    /// The visibility of one task of a dynamic-GPU daemon: exactly its GPUs.
    pub fn of_devices(ids: &[GpuId]) -> Visibility {
        let list = join(ids);
        Visibility {
            cuda: Some(list.clone()),
            nvidia: Some(list),
            warnings: vec![],
        }
    }

    /// `none` (`--cpu-only`): no GPU at all, and none reported.
    pub fn is_cpu_only(&self) -> bool {
        self.visible()
            .is_some_and(|v| v.eq_ignore_ascii_case("none"))
    }
}

/// A worker id, or the prefix a free instance slot number completes (`host:0`, `host:cpu:1`),
/// as upstream's `Singleton.register_instance` does for daemons without a GPU suffix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkerIdentity {
    Fixed(String),
    Slotted { prefix: String },
}

impl WorkerIdentity {
    pub fn with_slot(&self, slot: u32) -> String {
        match self {
            WorkerIdentity::Fixed(id) => id.clone(),
            WorkerIdentity::Slotted { prefix } => format!("{prefix}:{slot}"),
        }
    }
}

/// Upstream's `_generate_worker_id_name`: a configured `agent.worker_id` wins; else with GPUs
/// visible `<name>:gpu<list>` (`<name>:dgpu<list>` for a dynamic-GPU daemon, `<name>:gpuall` for
/// `--gpus all`); with `none` (`--cpu-only`) `<name>:cpu:<slot>`; otherwise `<name>:<slot>`.
pub fn worker_identity(
    worker_name: &str,
    configured_id: Option<&str>,
    visibility: &Visibility,
    dynamic: bool,
) -> WorkerIdentity {
    if let Some(id) = configured_id.map(str::trim).filter(|s| !s.is_empty()) {
        return WorkerIdentity::Fixed(id.to_string());
    }
    match visibility.visible() {
        Some(v) if v.eq_ignore_ascii_case("none") => WorkerIdentity::Slotted {
            prefix: format!("{worker_name}:cpu"),
        },
        Some(v) if !v.is_empty() => WorkerIdentity::Fixed(format!(
            "{worker_name}:{}gpu{v}",
            if dynamic { "d" } else { "" }
        )),
        _ => WorkerIdentity::Slotted {
            prefix: worker_name.to_string(),
        },
    }
}

/// The worker id a task of a dynamic-GPU daemon runs under: the daemon's id with its last part
/// replaced by `gpu<its GPUs>` (`host:dgpu0,1,2,3` -> `host:gpu2,3`), as upstream does. Other
/// dynamic daemons on the host read these ids to know which GPUs are taken.
pub fn task_worker_id(daemon_id: &str, gpus: &[GpuId]) -> String {
    let list = gpus
        .iter()
        .map(GpuId::as_worker_part)
        .collect::<Vec<_>>()
        .join(",");
    match daemon_id.rsplit_once(':') {
        Some((head, _)) => format!("{head}:gpu{list}"),
        // Upstream would drop the whole id here; keeping it keeps ids unique across hosts.
        None => format!("{daemon_id}:gpu{list}"),
    }
}

/// A `--dynamic-gpus` queue: how many GPUs a task pulled from it gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueGpus {
    pub queue: String,
    /// A task is pulled only when at least this many GPUs are free.
    pub min: u32,
    /// It gets as many free GPUs as there are, up to this many.
    pub max: u32,
}

/// Parses `--queue dual=2 single=1 opportunistic=1-4` (`name=N`, `name=MIN-MAX`, `name=-MAX`
/// meaning `1-MAX`), in priority order. The name is everything before the last `=`.
pub fn parse_dynamic_queues(specs: &[String]) -> Result<Vec<QueueGpus>, GpuSpecError> {
    specs.iter().map(|s| parse_queue_spec(s)).collect()
}

fn parse_queue_spec(spec: &str) -> Result<QueueGpus, GpuSpecError> {
    let (name, count) = spec
        .rsplit_once('=')
        .ok_or_else(|| GpuSpecError::QueueSpecMissing(spec.to_string()))?;
    let err = |reason: &str| GpuSpecError::QueueSpec {
        spec: spec.to_string(),
        reason: reason.to_string(),
    };
    if name.trim().is_empty() {
        return Err(err("the queue name is empty"));
    }
    let (lo, hi) = match count.split_once('-') {
        Some((lo, hi)) => (if lo.trim().is_empty() { "1" } else { lo }, hi),
        None => (count, count),
    };
    let number = |t: &str| -> Result<u32, GpuSpecError> {
        let t = t.trim();
        let v: f64 = t
            .parse()
            .map_err(|_| err(&format!("{t:?} is not a number of GPUs")))?;
        if !v.is_finite() || v <= 0.0 {
            return Err(err("the number of GPUs must be above 0"));
        }
        if v.fract() != 0.0 {
            return Err(err(if v < 1.0 {
                "fractional GPUs need docker mode, which this agent does not run yet"
            } else {
                "a number of GPUs above 1 must be whole"
            }));
        }
        Ok(v as u32)
    };
    let (min, max) = (number(lo)?, number(hi)?);
    if min > max {
        return Err(err("the minimum is above the maximum"));
    }
    Ok(QueueGpus {
        queue: name.trim().to_string(),
        min,
        max,
    })
}

/// The GPUs a `--dynamic-gpus` daemon shares, checked against its queues: explicit indexes or
/// MIG slices (not `all`, not UUIDs), and every queue's minimum within reach.
pub fn dynamic_pool(
    selection: &GpuSelection,
    queues: &[QueueGpus],
) -> Result<Vec<GpuId>, GpuSpecError> {
    let pool = match selection {
        GpuSelection::Devices(ids) => ids.clone(),
        GpuSelection::CpuOnly => return Err(GpuSpecError::DynamicCpuOnly),
        GpuSelection::Inherit | GpuSelection::All => return Err(GpuSpecError::DynamicNeedsGpus),
    };
    if let Some(uuid) = pool.iter().find(|g| g.as_env().contains('-')) {
        return Err(GpuSpecError::DynamicNeedsIndexes(uuid.to_string()));
    }
    if let Some(q) = queues.iter().find(|q| q.min as usize > pool.len()) {
        return Err(GpuSpecError::QueueNeedsMore {
            queue: q.queue.clone(),
            min: q.min,
            pool: pool.len(),
        });
    }
    Ok(pool)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    fn ids(list: &[&str]) -> Vec<GpuId> {
        list.iter().map(|s| GpuId::parse(s).unwrap()).collect()
    }

    fn sel(gpus: Option<&str>, cpu: bool) -> GpuSelection {
        parse_selection(gpus, cpu).unwrap()
    }

    #[test]
    fn gpus_flag_forms() {
        assert_eq!(sel(Some("0"), false), GpuSelection::Devices(ids(&["0"])));
        assert_eq!(
            sel(Some("0,1"), false),
            GpuSelection::Devices(ids(&["0", "1"]))
        );
        assert_eq!(
            sel(Some("0-3"), false),
            GpuSelection::Devices(ids(&["0", "1", "2", "3"]))
        );
        assert_eq!(
            sel(Some(" 4-5, 1 "), false),
            GpuSelection::Devices(ids(&["4", "5", "1"]))
        );
        assert_eq!(sel(Some("all"), false), GpuSelection::All);
        assert_eq!(sel(Some("ALL"), false), GpuSelection::All);
        assert_eq!(sel(None, true), GpuSelection::CpuOnly);
        assert_eq!(sel(None, false), GpuSelection::Inherit);
        // MIG slices in either spelling; UUIDs keep their case after the prefix.
        assert_eq!(
            sel(Some("0:1,0.2"), false),
            GpuSelection::Devices(vec![GpuId("0:1".into()), GpuId("0:2".into())])
        );
        assert_eq!(
            sel(Some("gpu-3f2a-11"), false),
            GpuSelection::Devices(vec![GpuId("GPU-3f2a-11".into())])
        );
    }

    #[test]
    fn bad_gpus_flags_are_named() {
        let e = |g: &str| parse_selection(Some(g), false).unwrap_err();
        assert_eq!(e("x"), GpuSpecError::BadDevice("x".into()));
        assert_eq!(e("3-1"), GpuSpecError::BadRange("3-1".into()));
        assert_eq!(e("0,0-1"), GpuSpecError::Duplicate("0".into()));
        assert_eq!(e(" , "), GpuSpecError::Empty);
        assert_eq!(e("0:1:2"), GpuSpecError::BadDevice("0:1:2".into()));
        assert_eq!(e("-1"), GpuSpecError::BadRange("-1".into()));
        assert_eq!(
            parse_selection(Some("0"), true).unwrap_err(),
            GpuSpecError::GpusAndCpuOnly
        );
        assert!(e("x").to_string().contains("--gpus"));
    }

    #[test]
    fn task_environment_per_selection() {
        let none = env(&[]);
        let v = reconcile(&sel(Some("0,1"), false), &none);
        assert_eq!(
            v.task_env(),
            vec![
                ("CUDA_DEVICE_ORDER", EnvChange::Set("PCI_BUS_ID".into())),
                ("CUDA_VISIBLE_DEVICES", EnvChange::Set("0,1".into())),
                ("NVIDIA_VISIBLE_DEVICES", EnvChange::Set("0,1".into())),
            ]
        );
        let v = reconcile(&sel(None, true), &none);
        assert_eq!(v.cuda.as_deref(), Some("none"));
        assert_eq!(v.nvidia.as_deref(), Some("none"));
        assert!(v.is_cpu_only());
        // `all`: CUDA has no such value, so its variable is removed even if inherited.
        let v = reconcile(
            &sel(Some("all"), false),
            &env(&[("CUDA_VISIBLE_DEVICES", "3")]),
        );
        assert_eq!(v.cuda, None);
        assert_eq!(v.nvidia.as_deref(), Some("all"));
        assert_eq!(v.task_env()[1], ("CUDA_VISIBLE_DEVICES", EnvChange::Unset));
        // Nothing asked, nothing inherited: all GPUs, both variables left unset.
        let v = reconcile(&GpuSelection::Inherit, &none);
        assert_eq!((v.cuda.clone(), v.nvidia.clone()), (None, None));
        assert_eq!(v.visible(), None);
    }

    #[test]
    fn inherited_variables_are_reconciled_like_upstream() {
        // Only CUDA_VISIBLE_DEVICES: NVIDIA_VISIBLE_DEVICES copies it.
        let v = reconcile(
            &GpuSelection::Inherit,
            &env(&[("CUDA_VISIBLE_DEVICES", "2,3")]),
        );
        assert_eq!(v.nvidia.as_deref(), Some("2,3"));
        assert_eq!(v.cuda.as_deref(), Some("2,3"));
        // Only NVIDIA_VISIBLE_DEVICES: CUDA_VISIBLE_DEVICES stays unset.
        let v = reconcile(
            &GpuSelection::Inherit,
            &env(&[("NVIDIA_VISIBLE_DEVICES", "1")]),
        );
        assert_eq!((v.cuda.as_deref(), v.nvidia.as_deref()), (None, Some("1")));
        assert_eq!(v.visible().as_deref(), Some("1"));
        // Empty NVIDIA value counts as unset.
        let v = reconcile(
            &GpuSelection::Inherit,
            &env(&[
                ("NVIDIA_VISIBLE_DEVICES", ""),
                ("CUDA_VISIBLE_DEVICES", "0"),
            ]),
        );
        assert_eq!(v.nvidia.as_deref(), Some("0"));
        // --gpus replaces an inherited selection, and says so.
        let v = reconcile(
            &sel(Some("0"), false),
            &env(&[("CUDA_VISIBLE_DEVICES", "2,3")]),
        );
        assert_eq!(
            (v.cuda.as_deref(), v.nvidia.as_deref()),
            (Some("0"), Some("0"))
        );
        assert_eq!(v.warnings.len(), 1);
        assert!(v.warnings[0].contains("2,3"), "{:?}", v.warnings);
        // The same value inherited is no news.
        let v = reconcile(
            &sel(Some("0"), false),
            &env(&[("CUDA_VISIBLE_DEVICES", "0")]),
        );
        assert!(v.warnings.is_empty());
        // On Kubernetes --gpus is ignored, as upstream does.
        let k8s = env(&[
            ("KUBERNETES_SERVICE_HOST", "10.0.0.1"),
            ("NVIDIA_VISIBLE_DEVICES", "GPU-a"),
        ]);
        let v = reconcile(&sel(Some("0"), false), &k8s);
        assert_eq!(
            (v.cuda.as_deref(), v.nvidia.as_deref()),
            (None, Some("GPU-a"))
        );
        assert!(v.warnings[0].contains("Kubernetes"));
        // --cpu-only wins over anything inherited, on Kubernetes too.
        let v = reconcile(&GpuSelection::CpuOnly, &k8s);
        assert!(v.is_cpu_only());
    }

    #[test]
    fn worker_ids_follow_upstream() {
        let none = env(&[]);
        let id = |g: Option<&str>, cpu: bool, dynamic: bool| {
            worker_identity("host", None, &reconcile(&sel(g, cpu), &none), dynamic)
        };
        assert_eq!(
            id(Some("0"), false, false),
            WorkerIdentity::Fixed("host:gpu0".into())
        );
        assert_eq!(id(Some("0,1"), false, false).with_slot(3), "host:gpu0,1");
        assert_eq!(id(Some("0-2"), false, false).with_slot(0), "host:gpu0,1,2");
        assert_eq!(id(Some("all"), false, false).with_slot(0), "host:gpuall");
        assert_eq!(id(Some("0:1"), false, false).with_slot(0), "host:gpu0.1");
        assert_eq!(
            id(Some("0-3"), false, true).with_slot(0),
            "host:dgpu0,1,2,3"
        );
        assert_eq!(id(None, true, false).with_slot(0), "host:cpu:0");
        assert_eq!(id(None, true, false).with_slot(2), "host:cpu:2");
        assert_eq!(id(None, false, false).with_slot(1), "host:1");
        // Inherited visibility names the worker too.
        let v = reconcile(
            &GpuSelection::Inherit,
            &env(&[("CUDA_VISIBLE_DEVICES", "3")]),
        );
        assert_eq!(worker_identity("h", None, &v, false).with_slot(0), "h:gpu3");
        // An empty inherited value is "no suffix", not "gpu".
        let v = reconcile(
            &GpuSelection::Inherit,
            &env(&[("CUDA_VISIBLE_DEVICES", "")]),
        );
        assert_eq!(worker_identity("h", None, &v, false).with_slot(0), "h:0");
        // A configured worker id wins over everything.
        let v = reconcile(&sel(Some("1"), false), &none);
        assert_eq!(
            worker_identity("h", Some("mine"), &v, false),
            WorkerIdentity::Fixed("mine".into())
        );
    }

    #[test]
    fn dynamic_task_worker_ids() {
        assert_eq!(
            task_worker_id("host:dgpu0,1,2,3", &ids(&["2", "3"])),
            "host:gpu2,3"
        );
        assert_eq!(task_worker_id("a:b:dgpu0", &ids(&["0"])), "a:b:gpu0");
        assert_eq!(
            task_worker_id("host:dgpu0.0,0.1", &ids(&["0:1"])),
            "host:gpu0.1"
        );
        assert_eq!(task_worker_id("mine", &ids(&["1"])), "mine:gpu1");
    }

    #[test]
    fn dynamic_queue_specs() {
        let q =
            |s: &[&str]| parse_dynamic_queues(&s.iter().map(|x| x.to_string()).collect::<Vec<_>>());
        assert_eq!(
            q(&["dual=2", "single=1", "max_quad=1-4", "up=-3", "a=b=2"]).unwrap(),
            vec![
                QueueGpus {
                    queue: "dual".into(),
                    min: 2,
                    max: 2
                },
                QueueGpus {
                    queue: "single".into(),
                    min: 1,
                    max: 1
                },
                QueueGpus {
                    queue: "max_quad".into(),
                    min: 1,
                    max: 4
                },
                QueueGpus {
                    queue: "up".into(),
                    min: 1,
                    max: 3
                },
                QueueGpus {
                    queue: "a=b".into(),
                    min: 2,
                    max: 2
                },
            ]
        );
        assert_eq!(
            q(&["plain"]).unwrap_err(),
            GpuSpecError::QueueSpecMissing("plain".into())
        );
        let reason = |s: &str| match q(&[s]).unwrap_err() {
            GpuSpecError::QueueSpec { reason, .. } => reason,
            other => panic!("{other:?}"),
        };
        assert!(reason("q=0").contains("above 0"));
        assert!(reason("q=0.5").contains("docker"));
        assert!(reason("q=1.5").contains("whole"));
        assert!(reason("q=3-2").contains("minimum"));
        assert!(reason("q=two").contains("not a number"));
        assert!(reason("=2").contains("empty"));
    }

    #[test]
    fn dynamic_pool_checks() {
        let queues = vec![QueueGpus {
            queue: "quad".into(),
            min: 4,
            max: 4,
        }];
        assert_eq!(
            dynamic_pool(&sel(Some("0-3"), false), &queues).unwrap(),
            ids(&["0", "1", "2", "3"])
        );
        assert_eq!(
            dynamic_pool(&sel(Some("0-2"), false), &queues).unwrap_err(),
            GpuSpecError::QueueNeedsMore {
                queue: "quad".into(),
                min: 4,
                pool: 3
            }
        );
        assert_eq!(
            dynamic_pool(&sel(Some("all"), false), &[]).unwrap_err(),
            GpuSpecError::DynamicNeedsGpus
        );
        assert_eq!(
            dynamic_pool(&GpuSelection::Inherit, &[]).unwrap_err(),
            GpuSpecError::DynamicNeedsGpus
        );
        assert_eq!(
            dynamic_pool(&GpuSelection::CpuOnly, &[]).unwrap_err(),
            GpuSpecError::DynamicCpuOnly
        );
        assert!(matches!(
            dynamic_pool(&sel(Some("GPU-ab"), false), &[]),
            Err(GpuSpecError::DynamicNeedsIndexes(_))
        ));
        // MIG slices can be shared.
        assert_eq!(
            dynamic_pool(&sel(Some("0:0,0:1"), false), &[])
                .unwrap()
                .len(),
            2
        );
    }

    #[test]
    fn dynamic_task_visibility() {
        let v = Visibility::of_devices(&ids(&["2", "0:1"]));
        assert_eq!(v.cuda.as_deref(), Some("2,0:1"));
        assert_eq!(v.nvidia.as_deref(), Some("2,0:1"));
        assert_eq!(v.visible().as_deref(), Some("2,0.1"));
    }
}
