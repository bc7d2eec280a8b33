//! The PyTorch resolver: `torch`, `torchvision`, `torchaudio` (and `torchcsprng`, `torchtext`)
//! requirements are installed from the wheel index built for the machine's CUDA version, as the
//! Python agent 3.0.3 does (`helper/package/pytorch.py`, `PytorchRequirement`). [`resolve`]
//! rewrites a requirement list and the extra index URLs; the venv builder installs the result.
//!
//! `agent.package_manager.pytorch_resolve` (or `CLEARML_AGENT_PACKAGE_PYTORCH_RESOLVE`):
//! - `pip` (default): find the index `extra_index_url_template.format(cuda)` (default
//!   `https://download.pytorch.org/whl/cu{}/`), trying the detected CUDA (`121` for 12.1) and then
//!   each lower number down to 14 below it, as upstream probes; add it as an extra index URL;
//!   rewrite an exact pin as upstream does (`torch==2.1.0+cu118` -> `torch==2.1.0.*`: the local
//!   label goes, and three-part versions take `.*` so the index's `+cuXYZ` build matches).
//!   `--cpu-only` (or no CUDA) uses the CPU index, the template with `cu{}` replaced by `cpu`.
//! - `direct`: resolve each package to the URL of its wheel on `torch_page` (default
//!   `https://download.pytorch.org/whl/cu{}/torch_stable.html`), walking down the CUDA versions
//!   (never to CPU), then `torch_url_template_prefix` + `torch_url_template` for `torch`; the line
//!   becomes `name @ URL`.
//! - `none`: leave the packages alone.
//!
//! `torch_nightly: true` also tries `nightly_extra_index_url_template` (`torch_nightly_page` in
//! direct mode) when the stable index has no match. A torch pinned below 1.11 adds
//! `setuptools<59`, as upstream does.
//!
//! Beyond upstream: before choosing an index we read its project pages and check that every pin
//! has a wheel there for this python and platform, going on to the next lower CUDA index if not.
//! A pin no index satisfies fails with a reason that names the package, the CUDA version and
//! each index tried (with what it has), instead of upstream's install-time failure or a silent
//! fall back to PyPI's build. A three-part pin with a pre-release or a fourth number keeps it
//! (upstream's `.*` rewrite drops it).

use super::cuda_version::CudaVersion;
use super::pep440::{all_contain, parse_specifiers, Op, Specifier, Version};
use crate::config::Config;
use crate::redact::redact_urls;
use regex::Regex;
use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::sync::OnceLock;
use std::time::Duration;

/// The packages the resolver handles (upstream's `PytorchRequirement.packages`).
pub const TORCH_PACKAGES: [&str; 5] = [
    "torch",
    "torchvision",
    "torchaudio",
    "torchcsprng",
    "torchtext",
];

/// How many CUDA versions below the detected one are tried (upstream: `range(cuda, cuda-15, -1)`).
const CUDA_STEPS: u32 = 15;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResolveMode {
    Pip,
    Direct,
    None,
}

/// The `agent.package_manager` keys of the resolver, with upstream's defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TorchSettings {
    pub mode: ResolveMode,
    pub extra_index_url_template: String,
    pub nightly_extra_index_url_template: String,
    pub nightly: bool,
    pub torch_page: String,
    pub torch_nightly_page: String,
    pub url_template_prefix: String,
    pub url_template: String,
}

impl Default for TorchSettings {
    fn default() -> Self {
        TorchSettings {
            mode: ResolveMode::Pip,
            extra_index_url_template: "https://download.pytorch.org/whl/cu{}/".into(),
            nightly_extra_index_url_template: "https://download.pytorch.org/whl/nightly/cu{}/".into(),
            nightly: false,
            torch_page: "https://download.pytorch.org/whl/cu{}/torch_stable.html".into(),
            torch_nightly_page: "https://download.pytorch.org/whl/nightly/cu{}/torch_nightly.html".into(),
            url_template_prefix: "http://download.pytorch.org/whl/".into(),
            url_template: "{0.cuda_version}/torch-{0.torch_version}-cp{0.python}-cp{0.python}m{0.unicode}-{0.os_name}.whl".into(),
        }
    }
}

impl TorchSettings {
    /// From `agent.package_manager.*` (upstream's key names); `env` for the resolve override.
    pub fn from_config(
        config: &Config,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<TorchSettings, String> {
        let mut s = TorchSettings::default();
        let key = |k: &str| {
            config
                .get_str(&format!("agent.package_manager.{k}"))
                .filter(|v| !v.trim().is_empty())
        };
        let mode = env("CLEARML_AGENT_PACKAGE_PYTORCH_RESOLVE")
            .filter(|v| !v.trim().is_empty())
            .map(|v| ("CLEARML_AGENT_PACKAGE_PYTORCH_RESOLVE", v))
            .or_else(|| {
                key("pytorch_resolve").map(|v| ("agent.package_manager.pytorch_resolve", v))
            });
        if let Some((from, mode)) = mode {
            s.mode = match mode.trim().to_ascii_lowercase().as_str() {
                "pip" => ResolveMode::Pip,
                "direct" => ResolveMode::Direct,
                "none" => ResolveMode::None,
                other => return Err(format!("{from}: {other:?} is not pip, direct or none")),
            };
        }
        let fields: [(&str, &mut String); 6] = [
            ("extra_index_url_template", &mut s.extra_index_url_template),
            (
                "nightly_extra_index_url_template",
                &mut s.nightly_extra_index_url_template,
            ),
            ("torch_page", &mut s.torch_page),
            ("torch_nightly_page", &mut s.torch_nightly_page),
            ("torch_url_template_prefix", &mut s.url_template_prefix),
            ("torch_url_template", &mut s.url_template),
        ];
        for (k, field) in fields {
            if let Some(v) = key(k) {
                *field = v.trim().to_string();
            }
        }
        s.nightly = match key("torch_nightly").map(|v| v.to_ascii_lowercase()) {
            None => false,
            Some(v) if ["true", "1", "yes", "on"].contains(&v.as_str()) => true,
            Some(v) if ["false", "0", "no", "off"].contains(&v.as_str()) => false,
            Some(v) => {
                return Err(format!(
                    "agent.package_manager.torch_nightly: expected true or false, got {v:?}"
                ))
            }
        };
        Ok(s)
    }
}

/// What the wheels must be built for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TorchTarget {
    Cpu,
    Cuda(CudaVersion),
}

impl TorchTarget {
    /// `--cpu-only` or no CUDA found: CPU; else the detected version.
    pub fn from_detected(version: Option<CudaVersion>) -> TorchTarget {
        version.map_or(TorchTarget::Cpu, TorchTarget::Cuda)
    }
}

impl fmt::Display for TorchTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TorchTarget::Cpu => f.write_str("CPU"),
            TorchTarget::Cuda(v) => write!(f, "CUDA {v}"),
        }
    }
}

/// The interpreter and machine a wheel must fit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    pub python: (u32, u32),
    /// `linux`, `macos`, `windows`.
    pub os: String,
    /// `x86_64`, `aarch64`.
    pub arch: String,
}

impl Platform {
    pub fn this_machine(python: (u32, u32)) -> Platform {
        Platform {
            python,
            os: std::env::consts::OS.into(),
            arch: std::env::consts::ARCH.into(),
        }
    }

    /// From a version string like `3.11.7`.
    pub fn for_python_version(version: &str) -> Option<Platform> {
        let mut it = version.trim().split('.').map(|p| p.parse::<u32>().ok());
        Some(Platform::this_machine((it.next()??, it.next()??)))
    }

    fn python_ok(&self, py: &str, abi: &str) -> bool {
        let (major, minor) = self.python;
        py.split('.').any(|t| {
            if t == format!("cp{major}{minor}")
                || t == format!("py{major}")
                || t == format!("py{major}{minor}")
            {
                return true;
            }
            // cp38-abi3 runs on every CPython from 3.8.
            let digits = t.strip_prefix("cp").unwrap_or("");
            abi.split('.').any(|a| a == "abi3")
                && digits.len() >= 2
                && digits[..1].parse() == Ok(major)
                && digits[1..].parse::<u32>().is_ok_and(|m| m <= minor)
        })
    }

    fn platform_ok(&self, plat: &str) -> bool {
        let arch = self.arch.as_str();
        plat.split('.').any(|t| {
            t == "any"
                || match self.os.as_str() {
                    "linux" => {
                        t == format!("linux_{arch}")
                            || (t.starts_with("manylinux") && t.ends_with(arch))
                    }
                    "macos" => {
                        t.starts_with("macosx")
                            && (t.ends_with(if arch == "aarch64" { "arm64" } else { arch })
                                || t.ends_with("universal2"))
                    }
                    "windows" => arch == "x86_64" && t == "win_amd64",
                    _ => false,
                }
        })
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "python {}.{}, {} {}",
            self.python.0, self.python.1, self.os, self.arch
        )
    }
}

/// Reads index pages. `Ok(None)`: not there (any 4xx, as upstream's `requests.get(..).ok`).
pub trait Pages {
    fn get(&self, url: &str) -> Result<Option<String>, String>;
    /// Whether a file is there, without downloading it.
    fn exists(&self, url: &str) -> Result<bool, String> {
        self.get(url).map(|p| p.is_some())
    }
}

/// Index pages over HTTP(S).
pub struct HttpPages {
    client: reqwest::blocking::Client,
}

impl HttpPages {
    pub fn new() -> HttpPages {
        HttpPages {
            client: reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap_or_default(),
        }
    }

    fn send(
        &self,
        req: reqwest::blocking::RequestBuilder,
        url: &str,
    ) -> Result<Option<reqwest::blocking::Response>, String> {
        let resp = req
            .header("Accept", "text/html")
            .send()
            .map_err(|e| redact_urls(&format!("{url}: {e}")))?;
        let status = resp.status();
        if status.is_success() {
            Ok(Some(resp))
        } else if status.is_client_error() {
            Ok(None)
        } else {
            Err(redact_urls(&format!("{url}: HTTP {status}")))
        }
    }
}

impl Default for HttpPages {
    fn default() -> Self {
        HttpPages::new()
    }
}

impl Pages for HttpPages {
    fn get(&self, url: &str) -> Result<Option<String>, String> {
        match self.send(self.client.get(url), url)? {
            Some(resp) => resp
                .text()
                .map(Some)
                .map_err(|e| redact_urls(&format!("{url}: {e}"))),
            None => Ok(None),
        }
    }

    fn exists(&self, url: &str) -> Result<bool, String> {
        Ok(self.send(self.client.head(url), url)?.is_some())
    }
}

/// Why no index could be chosen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct TorchError {
    pub reason: String,
    /// An index could not be reached (as opposed to: it was read and has no match).
    pub retryable: bool,
}

/// The rewritten requirements and indexes, and what to tell the user.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TorchPlan {
    pub requirements: Vec<String>,
    /// The configured extra indexes, then the chosen PyTorch index.
    pub extra_index_urls: Vec<String>,
    /// The PyTorch index (pip mode) or page (direct mode) chosen.
    pub index: Option<String>,
    /// Log lines: which index for which CUDA, what was rewritten.
    pub notes: Vec<String>,
}

/// One requirement line of the torch family.
#[derive(Debug, Clone)]
struct FamilyLine {
    position: usize,
    name: String,
    canonical: String,
    extras: String,
    marker: Option<String>,
    original: String,
    /// The specifiers as the installer will get them, local labels dropped.
    specs: Vec<Specifier>,
    /// As written after the rewrite (pip mode), without name and marker.
    spec_text: String,
}

impl FamilyLine {
    fn display(&self) -> String {
        format!("{}{}{}", self.name, self.extras, self.spec_text)
    }

    fn with(&self, spec: &str) -> String {
        let mut line = format!("{}{}{spec}", self.name, self.extras);
        if let Some(m) = &self.marker {
            line.push_str(" ; ");
            line.push_str(m);
        }
        line
    }
}

/// PEP 503 name: lowercase, runs of `-_.` become one `-`.
pub fn canonical_name(name: &str) -> String {
    let mut out = String::new();
    for part in name.split(['-', '_', '.']).filter(|p| !p.is_empty()) {
        if !out.is_empty() {
            out.push('-');
        }
        out.push_str(&part.to_ascii_lowercase());
    }
    out
}

fn strip_local(version: &str) -> &str {
    version.split('+').next().unwrap_or(version)
}

/// Upstream's pip-mode line: a single `==X.Y.Z` (local label dropped) becomes `==X.Y.Z.*`.
fn pip_spec_text(specs: &[Specifier], original_spec: &str) -> String {
    match specs {
        [s] if s.op == Op::Eq && !s.wildcard => {
            // Exactly three release numbers and nothing else (no pre, post or dev part).
            let plain_three = Version::parse(&s.version).is_some_and(|v| {
                let release: Vec<String> = v.release().iter().map(u64::to_string).collect();
                release.len() == 3 && Version::parse(&release.join(".")).is_some_and(|r| r == v)
            });
            format!("=={}{}", s.version, if plain_three { ".*" } else { "" })
        }
        _ => original_spec.trim().to_string(),
    }
}

/// Splits a requirement line into name, extras, specifier and marker; None for anything that
/// is not a plain named requirement (options, URLs, `name @ url`, paths).
fn parse_line(position: usize, line: &str) -> Option<Result<FamilyLine, String>> {
    let t = line.trim();
    if t.starts_with('-') || t.contains("://") || t.contains('@') {
        return None;
    }
    let name_end = t
        .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
        .unwrap_or(t.len());
    let (name, rest) = t.split_at(name_end);
    let canonical = canonical_name(name);
    if !TORCH_PACKAGES.contains(&canonical.as_str()) {
        return None;
    }
    let rest = rest.trim_start();
    let (extras, rest) = match rest.strip_prefix('[').and_then(|r| r.split_once(']')) {
        Some((e, r)) => (format!("[{e}]"), r),
        None => (String::new(), rest),
    };
    let (spec, marker) = match rest.split_once(';') {
        Some((s, m)) => (
            s.trim(),
            Some(m.trim().to_string()).filter(|m| !m.is_empty()),
        ),
        None => (rest.trim(), None),
    };
    let parsed = match parse_specifiers(spec) {
        Ok(p) => p,
        Err(e) => return Some(Err(format!("requirement {t:?}: {e}"))),
    };
    let specs: Vec<Specifier> = parsed
        .into_iter()
        .map(|s| Specifier {
            version: if s.op == Op::Arbitrary {
                s.version
            } else {
                strip_local(&s.version).to_string()
            },
            ..s
        })
        .collect();
    let spec_text = pip_spec_text(&specs, spec);
    Some(Ok(FamilyLine {
        position,
        name: name.to_string(),
        canonical,
        extras,
        marker,
        original: t.to_string(),
        specs,
        spec_text,
    }))
}

/// A wheel's (python, abi, platform) tags.
type WheelTags = (String, String, String);

/// A file an index lists.
#[derive(Debug, Clone)]
struct Dist {
    canonical: String,
    version: Version,
    version_text: String,
    url: String,
    /// Wheel tags (python, abi, platform); None for an sdist.
    tags: Option<WheelTags>,
}

impl Dist {
    fn fits(&self, p: &Platform) -> bool {
        match &self.tags {
            Some((py, abi, plat)) => p.python_ok(py, abi) && p.platform_ok(plat),
            None => true,
        }
    }
}

/// Name, version and tags from a wheel or sdist file name.
fn parse_filename(file: &str) -> Option<(String, String, Option<WheelTags>)> {
    if let Some(stem) = file.strip_suffix(".whl") {
        let parts: Vec<&str> = stem.split('-').collect();
        let (name, version, rest) = match parts.len() {
            5 => (parts[0], parts[1], &parts[2..]),
            6 => (parts[0], parts[1], &parts[3..]),
            _ => return None,
        };
        return Some((
            canonical_name(name),
            version.to_string(),
            Some((
                rest[0].to_string(),
                rest[1].to_string(),
                rest[2].to_string(),
            )),
        ));
    }
    let stem = [".tar.gz", ".zip", ".tar.bz2"]
        .iter()
        .find_map(|ext| file.strip_suffix(ext))?;
    let (name, version) = stem.rsplit_once('-')?;
    Some((canonical_name(name), version.to_string(), None))
}

/// The distributions an HTML page (PEP 503 project page or a find-links page) links to.
fn parse_links(page_url: &str, html: &str) -> Vec<Dist> {
    static ANCHOR: OnceLock<Regex> = OnceLock::new();
    let anchor = ANCHOR.get_or_init(|| {
        Regex::new(r#"(?is)<a\s[^>]*?href\s*=\s*["']([^"']+)["']"#).expect("anchor pattern")
    });
    let Ok(base) = reqwest::Url::parse(page_url) else {
        return vec![];
    };
    anchor
        .captures_iter(html)
        .filter_map(|c| {
            let href = c[1].replace("&amp;", "&");
            let url = base.join(&href).ok()?;
            let file = percent_encoding::percent_decode_str(url.path_segments()?.next_back()?)
                .decode_utf8_lossy()
                .into_owned();
            let (canonical, version_text, tags) = parse_filename(&file)?;
            Some(Dist {
                canonical,
                version: Version::parse(&version_text)?,
                version_text,
                url: url.to_string(),
                tags,
            })
        })
        .collect()
}

fn fill(template: &str, value: &str) -> String {
    template.replace("{0}", value).replace("{}", value)
}

fn with_slash(url: String) -> String {
    if url.ends_with('/') {
        url
    } else {
        url + "/"
    }
}

/// A labelled URL to try, in order.
struct Candidate {
    label: String,
    url: String,
}

/// Upstream's walk: the detected CUDA first, then each lower number, 15 in all (never CPU).
fn cuda_candidates(template: &str, target: TorchTarget, page: bool) -> Vec<Candidate> {
    match target {
        TorchTarget::Cpu => {
            if !template.contains("cu{") {
                return vec![];
            }
            let url = template.replace("cu{0}", "cpu").replace("cu{}", "cpu");
            vec![Candidate {
                label: "cpu".into(),
                url: if page { url } else { with_slash(url) },
            }]
        }
        TorchTarget::Cuda(v) => {
            let top = v.int10();
            (top.saturating_sub(CUDA_STEPS - 1)..=top)
                .rev()
                .filter(|c| *c > 0)
                .map(|c| {
                    let url = fill(template, &c.to_string());
                    Candidate {
                        label: format!("cu{c}"),
                        url: if page { url } else { with_slash(url) },
                    }
                })
                .collect()
        }
    }
}

/// Page reads of one resolution, each URL fetched once.
struct Cached<'a> {
    pages: &'a dyn Pages,
    seen: RefCell<HashMap<String, Option<String>>>,
}

impl Cached<'_> {
    fn get(&self, url: &str) -> Result<Option<String>, TorchError> {
        if let Some(p) = self.seen.borrow().get(url) {
            return Ok(p.clone());
        }
        let page = self.pages.get(url).map_err(|e| TorchError {
            reason: format!("PyTorch resolver: could not read {}: {e}", redact_urls(url)),
            retryable: true,
        })?;
        self.seen.borrow_mut().insert(url.to_string(), page.clone());
        Ok(page)
    }
}

/// What an index holds for one package, and whether a pin fits.
enum Fit {
    Best(Box<Dist>),
    /// Not on the index at all: left to the other indexes.
    Absent,
    /// On the index, but no wheel fits: (versions that fit this machine, files for others).
    Missing(Vec<String>, usize),
}

fn best_fit(dists: &[Dist], line: &FamilyLine, platform: &Platform) -> Fit {
    let mine: Vec<&Dist> = dists
        .iter()
        .filter(|d| d.canonical == line.canonical)
        .collect();
    if mine.is_empty() {
        return Fit::Absent;
    }
    let fitting: Vec<&&Dist> = mine.iter().filter(|d| d.fits(platform)).collect();
    let best = fitting
        .iter()
        .filter(|d| all_contain(&line.specs, &d.version))
        // Finals before pre-releases, then the highest.
        .max_by(|a, b| {
            (!a.version.is_prerelease(), &a.version).cmp(&(!b.version.is_prerelease(), &b.version))
        });
    match best {
        Some(d) => Fit::Best(Box::new((**d).clone())),
        None => {
            let mut versions: Vec<&Dist> = fitting.into_iter().copied().collect();
            versions.sort_by(|a, b| a.version.cmp(&b.version));
            let mut names: Vec<String> = versions.iter().map(|d| d.version_text.clone()).collect();
            names.dedup();
            let others = mine.iter().filter(|d| !d.fits(platform)).count();
            Fit::Missing(names, others)
        }
    }
}

fn describe_missing(index: &str, problems: &[(String, Vec<String>, usize)]) -> String {
    let each: Vec<String> = problems
        .iter()
        .map(|(req, versions, others)| {
            let there = if versions.is_empty() {
                "no version for this machine".to_string()
            } else {
                format!("has {}", versions.join(", "))
            };
            let other = if *others > 0 {
                format!("; {others} file(s) for other pythons or platforms")
            } else {
                String::new()
            };
            format!("{req}: {there}{other}")
        })
        .collect();
    format!("{} ({})", redact_urls(index), each.join("; "))
}

/// Rewrites `requirements` (and `extra_index_urls`, kept first) so the torch family installs
/// from the index that matches `target`. Lines of other packages are kept as they are.
pub fn resolve(
    requirements: &[String],
    extra_index_urls: &[String],
    target: TorchTarget,
    platform: &Platform,
    settings: &TorchSettings,
    pages: &dyn Pages,
) -> Result<TorchPlan, TorchError> {
    let lines = super::venv::clean_requirements(requirements);
    let mut plan = TorchPlan {
        requirements: lines.clone(),
        extra_index_urls: extra_index_urls.to_vec(),
        ..TorchPlan::default()
    };
    let fatal = |reason: String| TorchError {
        reason,
        retryable: false,
    };
    let mut family = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if let Some(parsed) = parse_line(i, line) {
            family.push(parsed.map_err(fatal)?);
        }
    }
    if family.is_empty() || settings.mode == ResolveMode::None {
        if !family.is_empty() {
            plan.notes.push(
                "PyTorch resolver off (pytorch_resolve: none): torch installs like any package"
                    .into(),
            );
        }
        return Ok(plan);
    }
    let pages = Cached {
        pages,
        seen: RefCell::new(HashMap::new()),
    };
    match settings.mode {
        ResolveMode::Direct => {
            resolve_direct(&mut plan, &family, target, platform, settings, &pages)?
        }
        _ => resolve_pip(&mut plan, &family, target, platform, settings, &pages)?,
    }
    let torch_below_1_11 = family.iter().any(|l| {
        l.canonical == "torch"
            && l.specs.iter().any(|s| {
                matches!(
                    s.op,
                    Op::Eq | Op::Le | Op::Lt | Op::Compatible | Op::Arbitrary
                ) && Version::parse(&s.version)
                    .is_some_and(|v| v < Version::parse("1.11.0").expect("version"))
            })
    });
    if torch_below_1_11 {
        plan.requirements.push("setuptools<59".into());
        plan.notes
            .push("PyTorch below 1.11: adding setuptools<59".into());
    }
    Ok(plan)
}

fn resolve_pip(
    plan: &mut TorchPlan,
    family: &[FamilyLine],
    target: TorchTarget,
    platform: &Platform,
    settings: &TorchSettings,
    pages: &Cached,
) -> Result<(), TorchError> {
    let mut tried: Vec<String> = Vec::new();
    let mut absent: Vec<String> = Vec::new();
    let mut series = vec![cuda_candidates(
        &settings.extra_index_url_template,
        target,
        false,
    )];
    if settings.nightly {
        series.push(cuda_candidates(
            &settings.nightly_extra_index_url_template,
            target,
            false,
        ));
    }
    if series[0].is_empty() {
        plan.notes.push(format!(
            "PyTorch: no CPU index can be derived from {} (it has no cu{{}}): torch installs from the configured indexes",
            redact_urls(&settings.extra_index_url_template)
        ));
        return Ok(());
    }
    for candidate in series.iter().flatten() {
        if pages.get(&candidate.url)?.is_none() {
            absent.push(candidate.label.clone());
            continue;
        }
        let mut problems = Vec::new();
        let mut elsewhere = Vec::new();
        for line in family {
            let project = format!("{}{}/", candidate.url, line.canonical);
            let dists = match pages.get(&project)? {
                Some(html) => parse_links(&project, &html),
                None => vec![],
            };
            match best_fit(&dists, line, platform) {
                Fit::Best(_) => {}
                Fit::Absent => elsewhere.push(line.canonical.clone()),
                Fit::Missing(versions, others) => problems.push((line.display(), versions, others)),
            }
        }
        if !problems.is_empty() {
            tried.push(describe_missing(&candidate.url, &problems));
            continue;
        }
        for line in family {
            plan.requirements[line.position] = line.with(&line.spec_text);
            if line.original != plan.requirements[line.position] {
                plan.notes.push(format!(
                    "PyTorch: {} -> {}",
                    line.original, plan.requirements[line.position]
                ));
            }
        }
        if !plan.extra_index_urls.contains(&candidate.url) {
            plan.extra_index_urls.push(candidate.url.clone());
        }
        plan.index = Some(candidate.url.clone());
        plan.notes.push(format!(
            "PyTorch: {target} -> index {} ({}){}",
            redact_urls(&candidate.url),
            candidate.label,
            if absent.is_empty() {
                String::new()
            } else {
                format!("; no index for {}", absent.join(", "))
            }
        ));
        if !elsewhere.is_empty() {
            plan.notes.push(format!(
                "PyTorch: {} not on that index: from the other indexes",
                elsewhere.join(", ")
            ));
        }
        return Ok(());
    }
    Err(no_match(
        family,
        target,
        platform,
        &tried,
        &absent,
        "agent.package_manager.extra_index_url_template",
    ))
}

fn no_match(
    family: &[FamilyLine],
    target: TorchTarget,
    platform: &Platform,
    tried: &[String],
    absent: &[String],
    key: &str,
) -> TorchError {
    let wanted: Vec<String> = family.iter().map(FamilyLine::display).collect();
    let mut reason = format!(
        "PyTorch: no index has {} for {target} ({platform})",
        wanted.join(", ")
    );
    if !tried.is_empty() {
        reason.push_str(&format!("; tried {}", tried.join("; ")));
    }
    if !absent.is_empty() {
        reason.push_str(&format!("; no index at {} ({key})", absent.join(", ")));
    }
    TorchError {
        reason,
        retryable: false,
    }
}

/// Upstream's `torch_url_template` with its Python placeholders (`{0.cuda_version}` ...).
fn legacy_wheel_url(
    settings: &TorchSettings,
    target: TorchTarget,
    platform: &Platform,
    version: &str,
) -> String {
    let cuda = match target {
        TorchTarget::Cpu => "cpu".to_string(),
        TorchTarget::Cuda(v) => v.tag(),
    };
    let python = format!("{}{}", platform.python.0, platform.python.1);
    let os_name = match platform.os.as_str() {
        "windows" => "win_amd64".to_string(),
        _ => format!("linux_{}", platform.arch),
    };
    let unicode = if platform.python.0 == 2 { "u" } else { "" };
    let path = settings
        .url_template
        .replace("{0.cuda_version}", &cuda)
        .replace("{0.torch_version}", version)
        .replace("{0.python}", &python)
        .replace("{0.unicode}", unicode)
        .replace("{0.os_name}", &os_name);
    format!("{}{path}", settings.url_template_prefix)
}

fn resolve_direct(
    plan: &mut TorchPlan,
    family: &[FamilyLine],
    target: TorchTarget,
    platform: &Platform,
    settings: &TorchSettings,
    pages: &Cached,
) -> Result<(), TorchError> {
    let mut tried = Vec::new();
    let mut absent = Vec::new();
    let mut series = cuda_candidates(&settings.torch_page, target, true);
    if settings.nightly {
        series.extend(cuda_candidates(&settings.torch_nightly_page, target, true));
    }
    for candidate in &series {
        let Some(html) = pages.get(&candidate.url)? else {
            absent.push(candidate.label.clone());
            continue;
        };
        let dists = parse_links(&candidate.url, &html);
        let mut chosen = Vec::new();
        let mut problems = Vec::new();
        for line in family {
            match best_fit(&dists, line, platform) {
                Fit::Best(d) => chosen.push((line, d)),
                Fit::Absent => problems.push((line.display(), vec![], 0)),
                Fit::Missing(v, o) => problems.push((line.display(), v, o)),
            }
        }
        if problems.is_empty() {
            for (line, dist) in chosen {
                plan.requirements[line.position] = line.with(&format!(" @ {}", dist.url));
                plan.notes.push(format!(
                    "PyTorch: {} -> {}",
                    line.original,
                    redact_urls(&plan.requirements[line.position])
                ));
            }
            plan.index = Some(candidate.url.clone());
            plan.notes.push(format!(
                "PyTorch: {target} -> wheels from {} ({})",
                redact_urls(&candidate.url),
                candidate.label
            ));
            return Ok(());
        }
        tried.push(describe_missing(&candidate.url, &problems));
    }
    // Last resort, as upstream: the URL template, for an exact torch pin.
    let torch = family.iter().find(|l| l.canonical == "torch");
    let pinned = torch.and_then(|l| match l.specs.as_slice() {
        [s] if s.op == Op::Eq && !s.wildcard => Some((l, s.version.clone())),
        _ => None,
    });
    if let (Some((line, version)), true) = (pinned, family.len() == 1) {
        let url = legacy_wheel_url(settings, target, platform, &version);
        let found = pages.pages.exists(&url).map_err(|e| TorchError {
            reason: format!(
                "PyTorch resolver: could not read {}: {e}",
                redact_urls(&url)
            ),
            retryable: true,
        })?;
        if found {
            plan.requirements[line.position] = line.with(&format!(" @ {url}"));
            plan.index = Some(url.clone());
            plan.notes.push(format!(
                "PyTorch: {target} -> {} (torch_url_template)",
                redact_urls(&url)
            ));
            return Ok(());
        }
        tried.push(format!(
            "{} (torch_url_template: not found)",
            redact_urls(&url)
        ));
    }
    Err(no_match(
        family,
        target,
        platform,
        &tried,
        &absent,
        "agent.package_manager.torch_page",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(s: &str) -> FamilyLine {
        parse_line(0, s).unwrap().unwrap()
    }

    #[test]
    fn pip_mode_rewrites_like_upstream() {
        let rewritten = |s: &str| {
            let l = line(s);
            l.with(&l.spec_text)
        };
        assert_eq!(rewritten("torch==2.1.0"), "torch==2.1.0.*");
        assert_eq!(rewritten("torch == 2.1.0+cu118"), "torch==2.1.0.*");
        assert_eq!(rewritten("Torch==2.1"), "Torch==2.1");
        assert_eq!(rewritten("torch==2.1.0rc1"), "torch==2.1.0rc1");
        assert_eq!(rewritten("torch==2.1.0.1"), "torch==2.1.0.1");
        assert_eq!(rewritten("torch>=2.0,<2.2"), "torch>=2.0,<2.2");
        assert_eq!(rewritten("torch"), "torch");
        assert_eq!(
            rewritten("torchvision[extra]==0.16.0 ; python_version >= '3.8'"),
            "torchvision[extra]==0.16.0.* ; python_version >= '3.8'"
        );
        assert!(parse_line(0, "numpy==1.0").is_none());
        assert!(parse_line(0, "torch @ https://x/torch.whl").is_none());
        assert!(parse_line(0, "--extra-index-url https://x/").is_none());
        assert!(parse_line(0, "torch==two").unwrap().is_err());
        assert_eq!(canonical_name("Torch_Audio..x"), "torch-audio-x");
    }

    #[test]
    fn wheel_tags_and_links() {
        let p = Platform {
            python: (3, 11),
            os: "linux".into(),
            arch: "x86_64".into(),
        };
        let html = r#"<html><body>
            <a href="../../files/torch-2.1.0%2Bcu121-cp311-cp311-linux_x86_64.whl#sha256=ab">torch-2.1.0+cu121-cp311-cp311-linux_x86_64.whl</a>
            <a href='/files/torch-2.1.0+cu121-cp310-cp310-linux_x86_64.whl'>x</a>
            <A HREF="torch-2.0.0-cp38-abi3-manylinux_2_17_x86_64.whl">y</A>
            <a href="torch-1.0.0-py3-none-any.whl">z</a>
            <a href="torch-1.0.1-cp311-cp311-macosx_11_0_arm64.whl">z</a>
            <a href="torch-0.9.tar.gz">sdist</a>
            <a href="notes.txt">n</a>
        </body></html>"#;
        let dists = parse_links("http://h:1/whl/cu121/torch/", html);
        assert_eq!(dists.len(), 6);
        assert_eq!(
            dists[0].url,
            "http://h:1/whl/files/torch-2.1.0%2Bcu121-cp311-cp311-linux_x86_64.whl#sha256=ab"
        );
        assert_eq!(dists[0].version_text, "2.1.0+cu121");
        let fits: Vec<bool> = dists.iter().map(|d| d.fits(&p)).collect();
        assert_eq!(fits, vec![true, false, true, true, false, true]);
    }

    #[test]
    fn candidates_walk_down_fifteen_versions() {
        let t = "http://x/whl/cu{}/";
        let c = cuda_candidates(t, TorchTarget::Cuda(CudaVersion::new(12, 4)), false);
        assert_eq!(c.len(), 15);
        assert_eq!(c[0].url, "http://x/whl/cu124/");
        assert_eq!(c[14].label, "cu110");
        let cpu = cuda_candidates(t, TorchTarget::Cpu, false);
        assert_eq!(cpu[0].url, "http://x/whl/cpu/");
        assert!(cuda_candidates("http://mirror/simple", TorchTarget::Cpu, false).is_empty());
        assert_eq!(
            cuda_candidates(
                "http://x/cu{0}",
                TorchTarget::Cuda(CudaVersion::new(9, 0)),
                true
            )[0]
            .url,
            "http://x/cu90"
        );
    }

    #[test]
    fn legacy_url_template() {
        let s = TorchSettings::default();
        let p = Platform {
            python: (3, 6),
            os: "linux".into(),
            arch: "x86_64".into(),
        };
        assert_eq!(
            legacy_wheel_url(&s, TorchTarget::Cuda(CudaVersion::new(10, 0)), &p, "1.0.0"),
            "http://download.pytorch.org/whl/cu100/torch-1.0.0-cp36-cp36m-linux_x86_64.whl"
        );
    }

    #[test]
    fn settings_from_config_keys() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("clearml.conf");
        std::fs::write(
            &file,
            "agent.package_manager { pytorch_resolve: direct, extra_index_url_template: \"http://m/cu{}/\", torch_nightly: true, torch_url_template_prefix: \"http://m/\" }\n",
        )
        .unwrap();
        let config = Config::load(Some(&file)).unwrap();
        let s = TorchSettings::from_config(&config, &|_| None).unwrap();
        assert_eq!(s.mode, ResolveMode::Direct);
        assert_eq!(s.extra_index_url_template, "http://m/cu{}/");
        assert!(s.nightly);
        assert_eq!(s.url_template_prefix, "http://m/");
        assert_eq!(s.torch_page, TorchSettings::default().torch_page);
        let s = TorchSettings::from_config(&config, &|k| {
            (k == "CLEARML_AGENT_PACKAGE_PYTORCH_RESOLVE").then(|| "none".into())
        })
        .unwrap();
        assert_eq!(s.mode, ResolveMode::None);
        let e = TorchSettings::from_config(&config, &|_| Some("maybe".into())).unwrap_err();
        assert!(
            e.contains("CLEARML_AGENT_PACKAGE_PYTORCH_RESOLVE") && e.contains("maybe"),
            "{e}"
        );
    }
}
