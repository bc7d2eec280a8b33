//! Python environments: create a venv for a run, install the task's packages with pip or
//! uv, and keep finished environments in a cache keyed by what went into them.
//!
//! # Cache layout (`EnvSettings::cache_dir`)
//!
//! ```text
//! <cache_dir>/<key>/            a finished venv (a copy of one run's venv, with its marker)
//! <cache_dir>/<key>.lock        per-key lock file; never deleted (see below)
//! <cache_dir>/<key>.tmp-<rand>/ an entry being written, or being evicted
//! ```
//!
//! `<key>` is the sha256 (hex) of the interpreter's version, the manager, the sorted and
//! normalized requirement lines (main, priority and post steps), the extra index URLs,
//! `system_site_packages` and the CUDA version ([`cache_key`]). An entry's mtime is its
//! last use and drives LRU eviction.
//!
//! # Crash safety
//!
//! - **Marker.** A venv is complete only when [`MARKER`] exists in it, and the marker is
//!   written last (temp file + rename), both when building and when materializing a cache
//!   entry. [`is_complete`] checks it; a crash mid-build leaves no marker and the build is
//!   redone.
//! - **Atomic rename.** An entry is assembled in `<key>.tmp-<rand>` and renamed to `<key>`
//!   in one step, so a cache entry under its final name is always whole. Eviction renames
//!   an entry back to a `.tmp-` name before deleting it, for the same reason. Leftover
//!   `.tmp-` folders of crashed agents are swept when their key's lock is free.
//! - **Lock.** `<key>.lock` is taken shared to read an entry and exclusive to build one, so
//!   two agents never build the same key at once (the second waits, then hits the cache)
//!   and eviction (which only *tries* the lock) never deletes an entry being read or
//!   written. These are `flock` locks: the kernel drops them when a holder dies. Lock files
//!   are never removed, because unlinking a lock file that someone is waiting on would let
//!   two holders in.
//!
//! Materializing an entry hardlinks its files into the run's venv (copying across
//! filesystems). A venv's python finds its prefix from `pyvenv.cfg`'s location, so the
//! linked venv works where it lands; console scripts keep shebangs that point at the cache
//! entry, which is itself a working venv. pip and uv replace files (write new, unlink old)
//! rather than rewrite them in place, so a task that installs more packages into its venv
//! leaves the shared inodes, and so the cached copy, alone; a task that edits an installed
//! file in place would change the cached copy too.
//!
//! # What gets installed
//! [`build_with`] takes the requirement groups [`super::requirements::select`] chose and runs
//! the installer calls [`super::requirements::plan`] orders (priority packages alone, the main
//! step, post packages alone, then VCS/local ones with git credentials), with
//! `extra_pip_install_flags`, a pinned pip (`pip_version`) and the URL download cache; or, in
//! project mode ([`super::project`]), `poetry install` / `uv sync` against the repository's
//! lock files, into the same per-run venv. [`build`] is [`build_with`] with default options
//! (one group from `EnvSpec::requirements`).

use std::collections::VecDeque;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use fs2::FileExt;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::project::ProjectEnv;
use super::requirements::{
    canonical_name, classify, plan, strip_comment, with_git_credentials, GitCredentials,
    InstallStep, ReqGroup, ReqKind, RequirementsPolicy, StepKind,
};
use crate::redact::redact_urls;

/// Completion marker at the root of a finished venv (JSON, see [`MarkerData`]).
pub const MARKER: &str = ".clearml-venv-complete.json";

/// How many stderr lines an error message carries.
const TAIL_LINES: usize = 20;
/// How many lines of installer stderr are kept in memory to build an error from.
const KEPT_LINES: usize = 2000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Manager {
    Uv,
    #[default]
    Pip,
}

impl Manager {
    pub fn as_str(self) -> &'static str {
        match self {
            Manager::Uv => "uv",
            Manager::Pip => "pip",
        }
    }
}

impl fmt::Display for Manager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What environment a task needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvSpec {
    /// Interpreter to base the venv on: a version ("3.10", tried as `python3.10`, `python3`,
    /// `python`, see [`super::python`]), a name ("python3.11", the same chain) or a path.
    pub python: String,
    /// Requirement lines; blanks and `#` comments are ignored, inline comments stripped.
    pub requirements: Vec<String>,
    pub manager: Manager,
    pub extra_index_urls: Vec<String>,
    /// `agent.package_manager.priority_packages`: names of the requested packages installed
    /// first, each alone (upstream's meaning: nothing is added). Empty: upstream's default.
    pub priority_packages: Vec<String>,
    /// `agent.package_manager.post_packages`: names of the requested packages installed last,
    /// each alone. Empty: upstream's default (horovod).
    pub post_packages: Vec<String>,
    /// Pass `--upgrade` to the installer.
    pub force_upgrade: bool,
    /// Create the venv with `--system-site-packages`.
    pub system_site_packages: bool,
    /// Only part of the cache key.
    pub cuda_version: Option<String>,
}

impl Default for EnvSpec {
    fn default() -> Self {
        EnvSpec {
            python: "python3".into(),
            requirements: Vec::new(),
            manager: Manager::Pip,
            extra_index_urls: Vec::new(),
            priority_packages: Vec::new(),
            post_packages: Vec::new(),
            force_upgrade: false,
            system_site_packages: false,
            cuda_version: None,
        }
    }
}

/// Where environments live on this worker.
#[derive(Debug, Clone, PartialEq)]
pub struct EnvSettings {
    /// Per-run venvs are created under here (`agent.venvs_dir`).
    pub venvs_dir: PathBuf,
    /// Cached venvs (`agent.venvs_cache.path`).
    pub cache_dir: PathBuf,
    /// Where uv is installed (`<tools_dir>/uv-venv`) if it is not on PATH.
    pub tools_dir: PathBuf,
    pub cache_enabled: bool,
    /// `agent.venvs_cache.max_entries`; the entry just made is always kept.
    pub max_entries: usize,
    /// `agent.venvs_cache.free_space_threshold_gb`: evict LRU entries while free space on
    /// the cache's filesystem is below it.
    pub free_space_threshold_gb: f64,
}

/// A ready environment.
#[derive(Debug, Clone, PartialEq)]
pub struct EnvOutcome {
    pub venv_dir: PathBuf,
    /// The venv's python.
    pub python: PathBuf,
    pub python_version: String,
    pub cache_hit: bool,
    /// Freeze lines (`name==version`).
    pub installed: Vec<String>,
    pub seconds: f64,
    /// Relative local requirements (`-e .`) left for [`install_local`] after the checkout
    /// (the build had no [`InstallOptions::checkout`]).
    pub deferred: Vec<String>,
    /// URL requirements installed from the download cache: (file URI, original URL), for
    /// [`super::requirements::restore_freeze`].
    pub downloads: Vec<(String, String)>,
}

/// How packages are installed beyond [`EnvSpec`] (all default to the old behaviour).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct InstallOptions {
    /// The groups [`super::requirements::select`] chose; `None`: `EnvSpec::requirements`.
    pub groups: Option<Vec<ReqGroup>>,
    /// Pip options from the requirements (`--pre`, `--trusted-host h`), for the main steps.
    pub requirement_options: Vec<String>,
    /// `agent.package_manager.priority_optional_packages` (empty: upstream's default).
    pub priority_optional_packages: Vec<String>,
    /// `agent.package_manager.post_optional_packages`.
    pub post_optional_packages: Vec<String>,
    /// `agent.package_manager.extra_pip_install_flags` / `CLEARML_EXTRA_PIP_INSTALL_FLAGS`,
    /// added to every install call.
    pub extra_pip_flags: Vec<String>,
    /// `agent.package_manager.pip_version`: requirement specs for pip itself
    /// (`"<22.3 ; python_version >= '3.10'"`, `"==23.1"`), installed into the venv before
    /// anything else. Empty: the venv's pip is left as it is.
    pub pip_version: Vec<String>,
    /// `agent.pip_download_cache.path/<cpu|cuNNN>` when enabled: URL requirements are
    /// downloaded there once and installed from the file.
    pub download_cache: Option<PathBuf>,
    /// Credentials for `git+https` requirements (`agent.git_user`/`git_pass`/`git_host`).
    pub git: GitCredentials,
    /// The checkout (the installer's working dir, where `-e .` resolves); `None` before the
    /// clone: relative local requirements are returned in [`EnvOutcome::deferred`].
    pub checkout: Option<PathBuf>,
    /// Poetry or `uv sync` against the repository's project files instead of the steps.
    pub project: Option<ProjectEnv>,
    /// Tried when `EnvSpec::python` finds no interpreter at all (upstream's fallback to
    /// `agent.python_binary`/`default_python`).
    pub python_fallback: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    #[error(
        "python interpreter not found: {name} (not an executable file, nor found on PATH{})",
        if tried.is_empty() { String::new() } else { format!("; tried {}", tried.join(", ")) }
    )]
    InterpreterNotFound { name: String, tried: Vec<String> },
    #[error("python interpreter {name} ({path}) does not work: {detail}")]
    InterpreterFailed {
        name: String,
        path: PathBuf,
        detail: String,
    },
    #[error("uv is not on PATH and installing it into {dir} failed: {detail}")]
    UvUnavailable { dir: PathBuf, detail: String },
    #[error("{tool} is not on PATH and installing it into {dir} failed: {detail}")]
    ToolUnavailable {
        tool: String,
        dir: PathBuf,
        detail: String,
    },
    #[error(
        "{tool} failed in {dir}: {key_error}\ncommand: `{command}`\n\
         --- output (last lines) ---\n{stderr_tail}"
    )]
    Project {
        tool: String,
        dir: PathBuf,
        command: String,
        key_error: String,
        stderr_tail: String,
    },
    #[error("creating the virtual environment failed: `{command}`\n{stderr_tail}")]
    VenvCreate {
        command: String,
        stderr_tail: String,
    },
    #[error(
        "{manager} install failed ({step} step): {key_error}\ncommand: `{command}`\n\
         --- installer output (last lines) ---\n{stderr_tail}"
    )]
    Install {
        manager: Manager,
        step: String,
        command: String,
        /// The installer's own error line(s), e.g. pip's "No matching distribution found for X".
        key_error: String,
        stderr_tail: String,
    },
    #[error("listing installed packages failed: `{command}`\n{stderr_tail}")]
    Freeze {
        command: String,
        stderr_tail: String,
    },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
}

impl EnvError {
    /// Worth trying again: the installer failed to reach an index (as opposed to a package
    /// that does not exist or does not build).
    pub fn is_retryable(&self) -> bool {
        const NETWORK: [&str; 8] = [
            "NewConnectionError",
            "Temporary failure in name resolution",
            "Connection refused",
            "Connection reset",
            "timed out",
            "Read timed out",
            "error sending request",
            "Failed to fetch",
        ];
        match self {
            EnvError::Install { stderr_tail, .. }
            | EnvError::Project { stderr_tail, .. }
            | EnvError::ToolUnavailable {
                detail: stderr_tail,
                ..
            }
            | EnvError::UvUnavailable {
                detail: stderr_tail,
                ..
            } => NETWORK.iter().any(|n| stderr_tail.contains(n)),
            _ => false,
        }
    }
}

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> EnvError {
    let context = context.into();
    move |source| EnvError::Io { context, source }
}

/// The marker's content: enough to answer for a cached venv without running freeze.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MarkerData {
    pub key: Option<String>,
    pub manager: Manager,
    pub python_version: String,
    pub installed: Vec<String>,
}

/// The venv's interpreter path.
pub fn venv_python(venv_dir: &Path) -> PathBuf {
    venv_dir.join("bin").join("python")
}

/// True when the venv at `venv_dir` was finished (its marker, written last, exists) and its
/// python still resolves.
pub fn is_complete(venv_dir: &Path) -> bool {
    venv_dir.join(MARKER).is_file() && venv_python(venv_dir).exists()
}

/// What a finished venv at `venv_dir` holds, if it was finished (see [`is_complete`]).
pub fn completed(venv_dir: &Path) -> Option<MarkerData> {
    is_complete(venv_dir)
        .then(|| read_marker(venv_dir))
        .flatten()
}

fn write_marker(venv_dir: &Path, data: &MarkerData) -> io::Result<()> {
    let tmp = venv_dir.join(format!("{MARKER}.tmp"));
    let mut f = File::create(&tmp)?;
    f.write_all(&serde_json::to_vec_pretty(data).map_err(io::Error::other)?)?;
    // The marker vouches for everything before it, so it must not reach the disk first.
    f.sync_all()?;
    fs::rename(&tmp, venv_dir.join(MARKER))
}

fn read_marker(venv_dir: &Path) -> Option<MarkerData> {
    let bytes = fs::read(venv_dir.join(MARKER)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

// ---------------------------------------------------------------------------------------
// Requirements and the cache key (pure)

/// Requirement lines without comments and blanks, trimmed, in their original order.
pub fn clean_requirements(lines: &[String]) -> Vec<String> {
    lines
        .iter()
        .flat_map(|l| l.lines())
        .map(|l| strip_comment(l).trim())
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// One requirement line in the form the cache key uses, so that spelling differences
/// (`Six >= 1.0` vs `six>=1.0`) do not make different keys.
pub fn normalize_requirement(line: &str) -> String {
    let line = strip_comment(line).trim();
    if line.starts_with('-') || line.contains("://") {
        // Options and URLs: only whitespace is normalized.
        return line.split_whitespace().collect::<Vec<_>>().join(" ");
    }
    let name_end = line
        .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
        .unwrap_or(line.len());
    let (name, rest) = line.split_at(name_end);
    let (spec, marker) = match rest.split_once(';') {
        Some((s, m)) => (s, Some(m)),
        None => (rest, None),
    };
    let mut out = canonical_name(name);
    out.extend(spec.chars().filter(|c| !c.is_whitespace()));
    if let Some(m) = marker {
        out.push_str("; ");
        out.push_str(&m.split_whitespace().collect::<Vec<_>>().join(" "));
    }
    out
}

/// Why these lines cannot be cached by their text: their content lives elsewhere (a file,
/// a local folder) or moves (a VCS branch).
pub fn uncacheable_reason(lines: &[String]) -> Option<String> {
    for line in lines {
        let l = line.trim();
        let first = l.split_whitespace().next().unwrap_or("");
        let opt = first.split('=').next().unwrap_or(first);
        let refers_to_file = matches!(opt, "-r" | "--requirement" | "-c" | "--constraint")
            || ((first.starts_with("-r") || first.starts_with("-c")) && !first.starts_with("--"));
        if refers_to_file {
            return Some(format!("`{}` refers to a file", redact_urls(l)));
        }
        let arg = if first.starts_with('-') {
            match first.split_once('=') {
                Some((_, v)) => v.trim(),
                None => l[first.len()..].trim(),
            }
        } else {
            l
        };
        let target = arg.split_once(" @ ").map(|(_, u)| u.trim()).unwrap_or(arg);
        if target.starts_with('.')
            || target.starts_with('/')
            || target.starts_with('~')
            || target.starts_with("file:")
        {
            return Some(format!("`{}` is a local path", redact_urls(l)));
        }
        if ["git+", "hg+", "svn+", "bzr+"]
            .iter()
            .any(|p| target.starts_with(p))
        {
            return Some(format!(
                "`{}` is a version-control requirement",
                redact_urls(l)
            ));
        }
    }
    None
}

fn sorted_normalized(lines: &[String]) -> Vec<String> {
    let mut v: Vec<String> = clean_requirements(lines)
        .iter()
        .map(|l| normalize_requirement(l))
        .collect();
    v.sort();
    v.dedup();
    v
}

/// The cache key of `spec` built on an interpreter that reports `python_version`, with
/// default [`InstallOptions`].
pub fn cache_key(spec: &EnvSpec, python_version: &str) -> String {
    cache_key_with(spec, &InstallOptions::default(), python_version)
}

/// The installer calls for `spec` and `opts`, in order.
pub fn install_steps(spec: &EnvSpec, opts: &InstallOptions) -> Vec<InstallStep> {
    let groups = opts.groups.clone().unwrap_or_else(|| {
        vec![ReqGroup {
            origin: "requirements".into(),
            lines: clean_requirements(&spec.requirements),
        }]
    });
    let policy = RequirementsPolicy {
        priority_packages: spec.priority_packages.clone(),
        post_packages: spec.post_packages.clone(),
        priority_optional_packages: opts.priority_optional_packages.clone(),
        post_optional_packages: opts.post_optional_packages.clone(),
        ..RequirementsPolicy::default()
    };
    plan(&groups, &policy)
}

/// The cache key: everything that makes the environment what it is. The main step's lines
/// are sorted and normalized (their order and spelling do not change the result); the
/// order of steps and their kinds do.
pub fn cache_key_with(spec: &EnvSpec, opts: &InstallOptions, python_version: &str) -> String {
    #[derive(Serialize)]
    struct KeyInput<'a> {
        format: u32,
        python_version: &'a str,
        manager: Manager,
        steps: Vec<(StepKind, Vec<String>, bool)>,
        requirement_options: &'a [String],
        extra_pip_flags: &'a [String],
        pip_version: &'a [String],
        extra_index_urls: Vec<String>,
        system_site_packages: bool,
        cuda_version: Option<&'a str>,
        project: Option<String>,
    }
    let mut urls: Vec<String> = spec
        .extra_index_urls
        .iter()
        .map(|u| u.trim().trim_end_matches('/').to_string())
        .filter(|u| !u.is_empty())
        .collect();
    urls.sort();
    urls.dedup();
    let steps = match &opts.project {
        Some(_) => Vec::new(),
        None => install_steps(spec, opts)
            .into_iter()
            .map(|s| {
                let lines = if s.kind == StepKind::Main {
                    sorted_normalized(&s.lines)
                } else {
                    s.lines.iter().map(|l| normalize_requirement(l)).collect()
                };
                (s.kind, lines, s.optional)
            })
            .collect(),
    };
    let input = KeyInput {
        format: 2,
        python_version: python_version.trim(),
        manager: spec.manager,
        steps,
        requirement_options: &opts.requirement_options,
        extra_pip_flags: &opts.extra_pip_flags,
        pip_version: &opts.pip_version,
        extra_index_urls: urls,
        system_site_packages: spec.system_site_packages,
        cuda_version: spec
            .cuda_version
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty()),
        project: opts.project.as_ref().and_then(ProjectEnv::identity),
    };
    let text = serde_json::to_vec(&input).expect("key input serializes");
    let digest = Sha256::digest(&text);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

fn is_key_name(name: &str) -> bool {
    name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit())
}

/// All entries other than `keep`, least recently used first (ties by name, for determinism).
pub fn eviction_order(entries: &[(String, SystemTime)], keep: &str) -> Vec<String> {
    let mut v: Vec<&(String, SystemTime)> = entries.iter().filter(|(n, _)| n != keep).collect();
    v.sort_by(|a, b| a.1.cmp(&b.1).then_with(|| a.0.cmp(&b.0)));
    v.into_iter().map(|(n, _)| n.clone()).collect()
}

/// The entries to evict so that at most `max_entries` remain, never `keep`.
pub fn select_over_limit(
    entries: &[(String, SystemTime)],
    keep: &str,
    max_entries: usize,
) -> Vec<String> {
    let excess = entries.len().saturating_sub(max_entries.max(1));
    eviction_order(entries, keep)
        .into_iter()
        .take(excess)
        .collect()
}

// ---------------------------------------------------------------------------------------
// Running tools

/// A command with an environment that does not leak the agent's own Python settings into
/// the installer (the Python agent drops PYTHONPATH for pip too).
pub(super) fn tool(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut c = Command::new(program);
    c.env_remove("PYTHONPATH")
        .env_remove("PYTHONHOME")
        .env_remove("VIRTUAL_ENV")
        .env("PIP_NO_INPUT", "1")
        .env("PIP_DISABLE_PIP_VERSION_CHECK", "1")
        .env("NO_COLOR", "1")
        .env("UV_PYTHON_DOWNLOADS", "never")
        .stdin(Stdio::null());
    c
}

/// The command line as text, with credentials in URLs masked.
pub(super) fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    redact_urls(&s)
}

pub(super) struct Ran {
    pub(super) status: ExitStatus,
    /// Both streams interleaved as received, the last [`KEPT_LINES`].
    pub(super) lines: VecDeque<String>,
}

/// Run `cmd`, passing each output line (masked) to `log` as it comes.
pub(super) fn run_logged(cmd: &mut Command, log: &mut dyn FnMut(&str)) -> io::Result<Ran> {
    super::die_with_agent(cmd);
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    let (tx, rx) = mpsc::channel::<String>();
    // `log` is not Send, so readers forward lines to this thread.
    let readers: Vec<_> = [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    ]
    .into_iter()
    .flatten()
    .map(|stream| {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let mut r = BufReader::new(stream);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match r.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let line = String::from_utf8_lossy(&buf);
                        // Progress bars redraw with \r: keep the last state.
                        let line = line.trim_end().rsplit('\r').next().unwrap_or("");
                        if tx.send(line.to_string()).is_err() {
                            break;
                        }
                    }
                }
            }
        })
    })
    .collect();
    drop(tx);
    let mut lines = VecDeque::new();
    for line in rx {
        let line = redact_urls(&line);
        if !line.trim().is_empty() {
            log(&line);
        }
        if lines.len() == KEPT_LINES {
            lines.pop_front();
        }
        lines.push_back(line);
    }
    for r in readers {
        let _ = r.join();
    }
    Ok(Ran {
        status: child.wait()?,
        lines,
    })
}

/// The last [`TAIL_LINES`] non-blank lines, each cut to a bounded length.
pub(super) fn tail(lines: &VecDeque<String>) -> String {
    let nonblank: Vec<&String> = lines.iter().filter(|l| !l.trim().is_empty()).collect();
    let start = nonblank.len().saturating_sub(TAIL_LINES);
    nonblank[start..]
        .iter()
        .map(|l| truncate(l, 500))
        .collect::<Vec<_>>()
        .join("\n")
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut cut = max;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}…", &s[..cut])
}

/// The installer's own error statements: pip's `ERROR: ...` lines, uv's `error: ...` with
/// its indented `cause:` lines (joined, since uv may wrap them). The last few, masked.
pub fn key_error_lines(lines: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let t = lines[i].trim();
        let starts = t.starts_with("ERROR:")
            || t.starts_with("error:")
            || t.starts_with('×')
            || t.contains("No matching distribution found")
            || t.contains("not found in the package registry");
        if !starts {
            i += 1;
            continue;
        }
        let mut block = t.to_string();
        let mut j = i + 1;
        while j < lines.len()
            && j - i < 12
            && lines[j].starts_with(char::is_whitespace)
            && !lines[j].trim().is_empty()
        {
            block.push(' ');
            block.push_str(lines[j].trim());
            j += 1;
        }
        // Mask before cutting: a cut URL could lose the `@` that marks its credentials.
        let block = truncate(&redact_urls(&block), 800);
        if !out.contains(&block) {
            out.push(block);
        }
        i = j;
    }
    let start = out.len().saturating_sub(5);
    out.split_off(start)
}

/// Resolve `name` the way a shell would: a path if it has a slash, else the first
/// executable file of that name on PATH.
pub(super) fn find_executable(name: &str) -> Option<PathBuf> {
    let is_exe = |p: &Path| {
        p.metadata()
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    };
    if name.contains('/') {
        let p = PathBuf::from(name);
        return is_exe(&p).then_some(p);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| is_exe(p))
}

pub(super) struct Interpreter {
    /// The real interpreter (`sys.executable`), not a pyenv shim.
    pub(super) executable: PathBuf,
    pub(super) version: String,
}

pub(super) fn find_interpreter(name: &str) -> Result<Interpreter, EnvError> {
    let name = name.trim();
    let path = find_executable(name).ok_or_else(|| EnvError::InterpreterNotFound {
        name: name.to_string(),
        tried: Vec::new(),
    })?;
    let failed = |detail: String| EnvError::InterpreterFailed {
        name: name.to_string(),
        path: path.clone(),
        detail,
    };
    let out = tool(&path)
        .args([
            "-c",
            "import sys, platform; print(platform.python_version()); print(sys.executable)",
        ])
        .output()
        .map_err(|e| failed(e.to_string()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut lines = stdout.lines().map(str::trim);
    match (out.status.success(), lines.next(), lines.next()) {
        (true, Some(version), exe) if version.starts_with(|c: char| c.is_ascii_digit()) => {
            let executable = exe
                .filter(|e| !e.is_empty())
                .map(PathBuf::from)
                .unwrap_or_else(|| path.clone());
            Ok(Interpreter {
                executable,
                version: version.to_string(),
            })
        }
        _ => Err(failed(format!(
            "{}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))),
    }
}

fn tool_works(exe: &Path) -> bool {
    exe.is_file()
        && tool(exe)
            .arg("--version")
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
}

/// A command-line tool the agent installs from PyPI when it is missing (uv, poetry).
pub(super) struct ToolSpec<'a> {
    /// The executable's name (on PATH and in the tool venv's `bin/`).
    pub(super) exe: &'a str,
    /// What `pip install` gets (`uv`, `poetry==1.8.3`).
    pub(super) requirement: String,
    /// Use the one on PATH when there is one (no specific version asked for).
    pub(super) accept_path: bool,
}

/// `spec.exe` from PATH, else from `<tools_dir>/<exe>-venv` (a separate venv per requirement),
/// installing it there with pip if needed.
pub(super) fn ensure_tool(
    settings: &EnvSettings,
    python: &Path,
    spec: &ToolSpec,
    log: &mut dyn FnMut(&str),
) -> Result<PathBuf, EnvError> {
    if spec.accept_path {
        if let Some(exe) = find_executable(spec.exe) {
            return Ok(exe);
        }
    }
    let name = if spec.requirement == spec.exe {
        format!("{}-venv", spec.exe)
    } else {
        let digest = Sha256::digest(spec.requirement.as_bytes());
        let short: String = digest.iter().take(4).map(|b| format!("{b:02x}")).collect();
        format!("{}-venv-{short}", spec.exe)
    };
    let dir = settings.tools_dir.join(&name);
    let exe = dir.join("bin").join(spec.exe);
    if tool_works(&exe) {
        return Ok(exe);
    }
    fs::create_dir_all(&settings.tools_dir)
        .map_err(io_err(format!("creating {}", settings.tools_dir.display())))?;
    let lock_path = settings.tools_dir.join(format!("{name}.lock"));
    let lock = open_lock(&lock_path)?;
    FileExt::lock_exclusive(&lock).map_err(io_err(format!("locking {}", lock_path.display())))?;
    if tool_works(&exe) {
        // Another agent installed it while this one waited.
        return Ok(exe);
    }
    log(&format!(
        "{} is not on PATH: installing it into {} ({})",
        spec.exe,
        dir.display(),
        spec.requirement
    ));
    let unavailable = |detail: String| {
        if spec.exe == "uv" {
            EnvError::UvUnavailable {
                dir: dir.clone(),
                detail,
            }
        } else {
            EnvError::ToolUnavailable {
                tool: spec.exe.to_string(),
                dir: dir.clone(),
                detail,
            }
        }
    };
    if dir.exists() {
        // A half-made install from a crash or a broken one: start over.
        fs::remove_dir_all(&dir).map_err(|e| unavailable(format!("removing it: {e}")))?;
    }
    let mut mk = tool(python);
    mk.arg("-m").arg("venv").arg(&dir);
    let mut pip = tool(dir.join("bin").join("python"));
    pip.args(["-m", "pip", "install", &spec.requirement]);
    for cmd in [&mut mk, &mut pip] {
        let text = describe(cmd);
        let ran = run_logged(cmd, log).map_err(|e| unavailable(format!("`{text}`: {e}")))?;
        if !ran.status.success() {
            return Err(unavailable(format!(
                "`{text}` exited with {}:\n{}",
                ran.status,
                tail(&ran.lines)
            )));
        }
    }
    if !tool_works(&exe) {
        return Err(unavailable(format!("{} does not run", exe.display())));
    }
    Ok(exe)
}

/// uv from PATH, else from `<tools_dir>/uv-venv`, installing it there with pip if needed.
pub(super) fn ensure_uv(
    settings: &EnvSettings,
    python: &Path,
    log: &mut dyn FnMut(&str),
) -> Result<PathBuf, EnvError> {
    let spec = ToolSpec {
        exe: "uv",
        requirement: "uv".into(),
        accept_path: true,
    };
    ensure_tool(settings, python, &spec, log)
}

fn freeze_lines(stdout: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(stdout)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect()
}

/// The packages installed for `python` (a venv's interpreter), as freeze lines.
pub fn freeze(
    python: &Path,
    manager: Manager,
    settings: &EnvSettings,
) -> Result<Vec<String>, EnvError> {
    let mut cmd = match manager {
        Manager::Pip => {
            let mut c = tool(python);
            c.args(["-m", "pip", "freeze"]);
            c
        }
        Manager::Uv => {
            let uv = ensure_uv(settings, python, &mut |_| {})?;
            let mut c = tool(uv);
            c.args(["pip", "freeze", "--python"]).arg(python);
            c
        }
    };
    let command = describe(&cmd);
    let out = cmd.output().map_err(|e| EnvError::Freeze {
        command: command.clone(),
        stderr_tail: e.to_string(),
    })?;
    if !out.status.success() {
        let lines: VecDeque<String> = String::from_utf8_lossy(&out.stderr)
            .lines()
            .map(redact_urls)
            .collect();
        return Err(EnvError::Freeze {
            command,
            stderr_tail: tail(&lines),
        });
    }
    Ok(freeze_lines(&out.stdout))
}

// ---------------------------------------------------------------------------------------
// Trees

/// A suffix unique enough for temp names: no two agents share pid and nanosecond.
fn unique_suffix() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{:x}{:x}", std::process::id(), nanos)
}

/// Text replaced in the files of `bin/` while copying (a venv's own path in its scripts).
struct Rewrite<'a> {
    from: &'a str,
    to: &'a str,
}

/// Recreate `src` at `dst` (which must not exist): files hardlinked (copied when that
/// fails, e.g. across filesystems), symlinks recreated as they are, the root's marker left
/// out (the caller writes it last).
fn link_tree(src: &Path, dst: &Path, rewrite: Option<&Rewrite>) -> io::Result<()> {
    fs::create_dir(dst)?;
    walk(src, dst, 0, false, rewrite)
}

fn walk(
    src: &Path,
    dst: &Path,
    depth: usize,
    in_bin: bool,
    rewrite: Option<&Rewrite>,
) -> io::Result<()> {
    for entry in fs::read_dir(src)? {
        let entry = entry?;
        let name = entry.file_name();
        if depth == 0 && (name == MARKER || name == format!("{MARKER}.tmp").as_str()) {
            continue;
        }
        let from = entry.path();
        let to = dst.join(&name);
        let ft = entry.file_type()?;
        if ft.is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(&from)?, &to)?;
        } else if ft.is_dir() {
            fs::create_dir(&to)?;
            fs::set_permissions(&to, fs::metadata(&from)?.permissions())?;
            walk(&from, &to, depth + 1, depth == 0 && name == "bin", rewrite)?;
        } else if ft.is_file() {
            if let (true, Some(rw)) = (in_bin, rewrite) {
                if rewrite_file(&from, &to, rw)? {
                    continue;
                }
            }
            if fs::hard_link(&from, &to).is_err() {
                fs::copy(&from, &to)?;
            }
        }
        // Sockets and fifos have no place in a venv: skipped.
    }
    Ok(())
}

/// Write `to` as `from` with `rw.from` replaced, if `from` is small text that contains it.
fn rewrite_file(from: &Path, to: &Path, rw: &Rewrite) -> io::Result<bool> {
    let meta = fs::metadata(from)?;
    if meta.len() > 1 << 20 {
        return Ok(false);
    }
    let Ok(text) = String::from_utf8(fs::read(from)?) else {
        return Ok(false);
    };
    if !text.contains(rw.from) {
        return Ok(false);
    }
    fs::write(to, text.replace(rw.from, rw.to))?;
    fs::set_permissions(to, meta.permissions())?;
    Ok(true)
}

fn remove_dir_if_exists(dir: &Path) -> Result<(), EnvError> {
    match fs::symlink_metadata(dir) {
        Ok(m) if m.is_dir() => {
            fs::remove_dir_all(dir).map_err(io_err(format!("removing {}", dir.display())))
        }
        Ok(_) => fs::remove_file(dir).map_err(io_err(format!("removing {}", dir.display()))),
        Err(_) => Ok(()),
    }
}

fn touch(dir: &Path) -> io::Result<()> {
    File::open(dir)?.set_modified(SystemTime::now())
}

fn open_lock(path: &Path) -> Result<File, EnvError> {
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path)
        .map_err(io_err(format!("opening lock file {}", path.display())))
}

// ---------------------------------------------------------------------------------------
// Build

/// A requirements file in the temp dir (mode 0600: it may hold git credentials), removed
/// when dropped.
struct ReqFile(PathBuf);

impl ReqFile {
    fn new(step: &str, lines: &[String]) -> Result<Self, EnvError> {
        use std::os::unix::fs::OpenOptionsExt;
        let path = std::env::temp_dir().join(format!(
            "clearml-requirements-{}-{step}.txt",
            unique_suffix()
        ));
        let write = || -> io::Result<()> {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)?;
            f.write_all((lines.join("\n") + "\n").as_bytes())
        };
        write().map_err(io_err(format!("writing {}", path.display())))?;
        Ok(ReqFile(path))
    }
}

impl Drop for ReqFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

/// Build (or take from the cache) the environment `spec` at `venv_dir`, replacing whatever
/// is there. Installer output goes to `log` line by line.
pub fn build(
    settings: &EnvSettings,
    spec: &EnvSpec,
    venv_dir: &Path,
    log: &mut dyn FnMut(&str),
) -> Result<EnvOutcome, EnvError> {
    build_with(settings, spec, &InstallOptions::default(), venv_dir, log)
}

/// Why an environment with these steps cannot be cached by its description.
fn steps_uncacheable(steps: &[InstallStep], opts: &InstallOptions) -> Option<String> {
    if let Some(p) = &opts.project {
        return p.identity().is_none().then(|| {
            format!(
                "{} installs the project itself from {}",
                p.kind,
                p.dir.display()
            )
        });
    }
    let all: Vec<String> = steps.iter().flat_map(|s| s.lines.clone()).collect();
    uncacheable_reason(&all)
}

/// [`build`] with the upstream install options (see [`InstallOptions`]).
pub fn build_with(
    settings: &EnvSettings,
    spec: &EnvSpec,
    opts: &InstallOptions,
    venv_dir: &Path,
    log: &mut dyn FnMut(&str),
) -> Result<EnvOutcome, EnvError> {
    let start = Instant::now();
    let interp = super::python::find_python(&spec.python, opts.python_fallback.as_deref(), log)?;
    // Absolute, because venv tools write this path into scripts, and the cache rewrites it.
    let venv_dir = std::path::absolute(venv_dir)
        .map_err(io_err(format!("resolving {}", venv_dir.display())))?;
    let steps = install_steps(spec, opts);
    let requested: usize = opts
        .groups
        .as_ref()
        .map(|g| g.iter().map(|g| g.lines.len()).sum())
        .unwrap_or_else(|| clean_requirements(&spec.requirements).len());
    match &opts.project {
        Some(p) => log(&format!(
            "Python environment with {}: python {} ({}), from {} in {}",
            p.kind,
            interp.version,
            interp.executable.display(),
            p.kind.files(),
            p.dir.display()
        )),
        None => log(&format!(
            "Python environment with {}: python {} ({}), {requested} packages requested",
            spec.manager,
            interp.version,
            interp.executable.display(),
        )),
    }

    let no_cache = if !settings.cache_enabled {
        Some("the cache is disabled".to_string())
    } else if opts.project.is_none() && steps.is_empty() {
        Some("no packages requested".to_string())
    } else {
        steps_uncacheable(&steps, opts)
    };
    let job = Job {
        settings,
        spec,
        opts,
        interp: &interp,
        steps: &steps,
        venv_dir: &venv_dir,
        start,
    };
    if let Some(why) = no_cache {
        log(&format!("Environment cache not used: {why}"));
        return job.build_fresh(None, log);
    }

    let key = cache_key_with(spec, opts, &interp.version);
    let cache_dir = &settings.cache_dir;
    fs::create_dir_all(cache_dir).map_err(io_err(format!("creating {}", cache_dir.display())))?;
    let lock_path = cache_dir.join(format!("{key}.lock"));
    let lock = open_lock(&lock_path)?;
    let lock_err = || io_err(format!("locking {}", lock_path.display()));

    if FileExt::try_lock_shared(&lock).is_err() {
        log(&format!(
            "Another agent is building environment {key}: waiting for it"
        ));
        FileExt::lock_shared(&lock).map_err(lock_err())?;
    }
    if let Some(out) = try_hit(settings, spec, &interp, &key, &venv_dir, start, log) {
        return Ok(out);
    }
    FileExt::unlock(&lock).map_err(lock_err())?;
    if FileExt::try_lock_exclusive(&lock).is_err() {
        log(&format!(
            "Another agent is using or building environment {key}: waiting for it"
        ));
        FileExt::lock_exclusive(&lock).map_err(lock_err())?;
    }
    // It may have been built while this agent waited.
    if let Some(out) = try_hit(settings, spec, &interp, &key, &venv_dir, start, log) {
        return Ok(out);
    }
    let outcome = job.build_fresh(Some(&key), log)?;
    // The run has its venv either way: a cache that cannot be written is only a warning.
    match store(cache_dir, &key, &venv_dir) {
        Ok(entry) => log(&format!(
            "Stored environment in the cache: {}",
            entry.display()
        )),
        Err(e) => log(&format!(
            "WARNING: could not store the environment in the cache: {e}"
        )),
    }
    evict(settings, &key, log);
    drop(lock);
    Ok(outcome)
}

/// Materialize the cache entry `key` at `venv_dir` if there is a complete one. Failures
/// are logged and answered with None, so the caller builds instead.
fn try_hit(
    settings: &EnvSettings,
    spec: &EnvSpec,
    interp: &Interpreter,
    key: &str,
    venv_dir: &Path,
    start: Instant,
    log: &mut dyn FnMut(&str),
) -> Option<EnvOutcome> {
    let entry = settings.cache_dir.join(key);
    if !is_complete(&entry) {
        return None;
    }
    log(&format!("Using cached environment {}", entry.display()));
    let _ = touch(&entry);
    let result = (|| -> Result<Vec<String>, EnvError> {
        remove_dir_if_exists(venv_dir)?;
        if let Some(parent) = venv_dir.parent() {
            fs::create_dir_all(parent).map_err(io_err(format!("creating {}", parent.display())))?;
        }
        link_tree(&entry, venv_dir, None).map_err(io_err(format!(
            "linking {} to {}",
            entry.display(),
            venv_dir.display()
        )))?;
        let data = match read_marker(&entry) {
            Some(d) => d,
            None => MarkerData {
                key: Some(key.to_string()),
                manager: spec.manager,
                python_version: interp.version.clone(),
                installed: freeze(&venv_python(venv_dir), spec.manager, settings)?,
            },
        };
        write_marker(venv_dir, &data).map_err(io_err(format!(
            "writing the marker in {}",
            venv_dir.display()
        )))?;
        Ok(data.installed)
    })();
    match result {
        Ok(installed) => {
            let seconds = start.elapsed().as_secs_f64();
            log(&format!(
                "Environment ready from the cache in {seconds:.1} s ({} packages)",
                installed.len()
            ));
            Some(EnvOutcome {
                python: venv_python(venv_dir),
                venv_dir: venv_dir.to_path_buf(),
                python_version: interp.version.clone(),
                cache_hit: true,
                installed,
                seconds,
                deferred: Vec::new(),
                downloads: Vec::new(),
            })
        }
        Err(e) => {
            log(&format!(
                "WARNING: could not use the cached environment ({e}); building it instead"
            ));
            None
        }
    }
}

/// One environment build: what [`build_with`] resolved, for the fresh-build path.
struct Job<'a> {
    settings: &'a EnvSettings,
    spec: &'a EnvSpec,
    opts: &'a InstallOptions,
    interp: &'a Interpreter,
    steps: &'a [InstallStep],
    venv_dir: &'a Path,
    start: Instant,
}

impl Job<'_> {
    fn build_fresh(
        &self,
        key: Option<&str>,
        log: &mut dyn FnMut(&str),
    ) -> Result<EnvOutcome, EnvError> {
        let (spec, venv_dir) = (self.spec, self.venv_dir);
        remove_dir_if_exists(venv_dir)?;
        if let Some(parent) = venv_dir.parent() {
            fs::create_dir_all(parent).map_err(io_err(format!("creating {}", parent.display())))?;
        }
        let uv = match spec.manager {
            Manager::Uv => Some(ensure_uv(self.settings, &self.interp.executable, log)?),
            Manager::Pip => None,
        };
        let mut create = match &uv {
            Some(uv) => {
                let mut c = tool(uv);
                // --seed keeps pip in the venv: tasks and tools run `python -m pip`.
                c.args(["venv", "--seed", "--python"])
                    .arg(&self.interp.executable);
                c
            }
            None => {
                let mut c = tool(&self.interp.executable);
                c.args(["-m", "venv"]);
                c
            }
        };
        if spec.system_site_packages {
            create.arg("--system-site-packages");
        }
        create.arg(venv_dir);
        let command = describe(&create);
        log(&format!("Creating virtual environment: {command}"));
        let ran = run_logged(&mut create, log).map_err(|e| EnvError::VenvCreate {
            command: command.clone(),
            stderr_tail: e.to_string(),
        })?;
        if !ran.status.success() {
            return Err(EnvError::VenvCreate {
                command,
                stderr_tail: format!("exited with {}\n{}", ran.status, tail(&ran.lines)),
            });
        }

        let python = venv_python(venv_dir);
        let installer = Installer {
            uv: uv.as_deref(),
            python: &python,
            spec,
            opts: self.opts,
        };
        if !self.opts.pip_version.is_empty() {
            let pins: Vec<String> = self
                .opts
                .pip_version
                .iter()
                .map(|v| pip_requirement(v))
                .collect();
            log(&format!(
                "Pinning pip in the environment: {}",
                pins.join(", ")
            ));
            installer.run("pip-version", &pins, true, None, log)?;
        }
        let mut installed_count = 0;
        let mut deferred = Vec::new();
        let mut downloads = Vec::new();
        match &self.opts.project {
            Some(project) => {
                super::project::install(
                    self.settings,
                    project,
                    &self.interp.executable,
                    venv_dir,
                    uv.as_deref(),
                    &spec.extra_index_urls,
                    log,
                )?;
            }
            None => {
                let mut dropped: Vec<(String, String)> = Vec::new();
                for step in self.steps {
                    if step.kind == StepKind::Local && self.opts.checkout.is_none() {
                        log(&format!(
                            "Deferred until the repository is checked out: {}",
                            redact_urls(&step.lines.join(", "))
                        ));
                        deferred.extend(step.lines.iter().cloned());
                        continue;
                    }
                    let mut lines: Vec<String> = step
                        .lines
                        .iter()
                        .filter(|l| {
                            step.kind != StepKind::Main
                                || !dropped.iter().any(|(o, d)| *o == step.origin && d == *l)
                        })
                        .cloned()
                        .collect();
                    if step.kind == StepKind::Main {
                        if let Some(cache) = &self.opts.download_cache {
                            for line in lines.iter_mut() {
                                if let Some((file, url)) = download_cached(line, cache, log) {
                                    *line = line.replacen(&url, &file, 1);
                                    downloads.push((file, url));
                                }
                            }
                        }
                    }
                    if lines.is_empty() {
                        continue;
                    }
                    log(&redact_urls(&format!(
                        "Installing {} {}package{} with {} ({}): {}",
                        lines.len(),
                        match step.kind {
                            StepKind::Main => String::new(),
                            k => format!("{} ", k.label()),
                        },
                        if lines.len() == 1 { "" } else { "s" },
                        spec.manager,
                        step.origin,
                        lines.join(", ")
                    )));
                    let secret_lines: Vec<String> = lines
                        .iter()
                        .map(|l| match classify(l) {
                            ReqKind::Vcs => with_git_credentials(l, &self.opts.git),
                            _ => l.clone(),
                        })
                        .collect();
                    let mut file_lines = Vec::new();
                    if step.kind == StepKind::Main {
                        file_lines.extend(self.opts.requirement_options.iter().cloned());
                    }
                    file_lines.extend(secret_lines);
                    let cwd = self.opts.checkout.as_deref();
                    match installer.run(
                        step.kind.label(),
                        &file_lines,
                        step.kind == StepKind::Main,
                        cwd,
                        log,
                    ) {
                        Ok(()) => installed_count += lines.len(),
                        Err(e) if step.optional => {
                            log(&format!(
                                "Optional {} package {} failed to install, going on without it: {}",
                                step.kind.label(),
                                lines.join(", "),
                                first_line(&e.to_string())
                            ));
                            for l in &lines {
                                dropped.push((step.origin.clone(), l.clone()));
                            }
                        }
                        Err(e) => return Err(e),
                    }
                }
            }
        }

        let installed = freeze(&python, spec.manager, self.settings)?;
        write_marker(
            venv_dir,
            &MarkerData {
                key: key.map(str::to_string),
                manager: spec.manager,
                python_version: self.interp.version.clone(),
                installed: installed.clone(),
            },
        )
        .map_err(io_err(format!(
            "writing the marker in {}",
            venv_dir.display()
        )))?;
        let seconds = self.start.elapsed().as_secs_f64();
        match &self.opts.project {
            Some(p) => log(&format!(
                "Installed the {} project environment in {seconds:.1} s ({} in the environment)",
                p.kind,
                installed.len()
            )),
            None => log(&format!(
                "Installed {installed_count} package{} with {} in {seconds:.1} s ({} in the environment)",
                if installed_count == 1 { "" } else { "s" },
                spec.manager,
                installed.len()
            )),
        }
        Ok(EnvOutcome {
            venv_dir: venv_dir.to_path_buf(),
            python,
            python_version: self.interp.version.clone(),
            cache_hit: false,
            installed,
            seconds,
            deferred,
            downloads,
        })
    }
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}

/// `pip_version` entries as requirements: `"<22.3 ; python_version >= '3.10'"` -> `pip<22.3 ;
/// ...`, a bare version `"23.1"` -> `pip==23.1` (as upstream's `set_pip_version`).
pub fn pip_requirement(version: &str) -> String {
    let v = version.trim();
    let v = v.strip_prefix("pip").map(str::trim_start).unwrap_or(v);
    if v.starts_with(['=', '~', '<', '>', '!']) {
        format!("pip{v}")
    } else {
        format!("pip=={v}")
    }
}

/// Runs one installer call (pip or uv) into the venv.
struct Installer<'a> {
    uv: Option<&'a Path>,
    python: &'a Path,
    spec: &'a EnvSpec,
    opts: &'a InstallOptions,
}

impl Installer<'_> {
    fn run(
        &self,
        step: &str,
        lines: &[String],
        upgrade_ok: bool,
        cwd: Option<&Path>,
        log: &mut dyn FnMut(&str),
    ) -> Result<(), EnvError> {
        let file = ReqFile::new(step, lines)?;
        let mut cmd = match self.uv {
            Some(uv) => {
                let mut c = tool(uv);
                c.args(["pip", "install", "--python"]).arg(self.python);
                c
            }
            None => {
                let mut c = tool(self.python);
                c.args(["-m", "pip", "install"]);
                c
            }
        };
        if let Some(dir) = cwd {
            cmd.current_dir(dir);
        }
        if self.spec.force_upgrade || (step == "pip-version" && upgrade_ok) {
            cmd.arg("--upgrade");
        }
        for url in self
            .spec
            .extra_index_urls
            .iter()
            .filter(|u| !u.trim().is_empty())
        {
            cmd.arg("--extra-index-url").arg(url.trim());
        }
        cmd.args(&self.opts.extra_pip_flags);
        cmd.arg("-r").arg(&file.0);
        let command = describe(&cmd);
        log(&format!("Running: {command}"));
        let install_failed = |key_error: String, stderr_tail: String| EnvError::Install {
            manager: self.spec.manager,
            step: step.to_string(),
            command: command.clone(),
            key_error,
            stderr_tail,
        };
        let ran = run_logged(&mut cmd, log)
            .map_err(|e| install_failed(format!("could not run it: {e}"), String::new()))?;
        if !ran.status.success() {
            let lines: Vec<String> = ran.lines.iter().cloned().collect();
            let keys = key_error_lines(&lines);
            let key_error = if keys.is_empty() {
                format!("exited with {}", ran.status)
            } else {
                keys.join("\n")
            };
            return Err(install_failed(key_error, tail(&ran.lines)));
        }
        Ok(())
    }
}

/// Where the download cache keeps the file of `url`: `<cache>/<last path segment>`.
pub fn cached_file_for(url: &str, cache: &Path) -> Option<PathBuf> {
    let path = url.split(['?', '#']).next()?;
    let name = path.rsplit('/').next()?.trim();
    (!name.is_empty() && !name.contains("..") && path.contains("://")).then(|| cache.join(name))
}

/// For a URL requirement line: the URL downloaded into `cache` (once), as (file URI, URL).
/// `None` (the URL is installed as it is) for other lines or when the download fails.
fn download_cached(
    line: &str,
    cache: &Path,
    log: &mut dyn FnMut(&str),
) -> Option<(String, String)> {
    if classify(line) != ReqKind::Url {
        return None;
    }
    let url = line
        .split_once(" @ ")
        .map(|(_, u)| u)
        .unwrap_or(line)
        .split(';')
        .next()?
        .trim()
        .to_string();
    let dest = cached_file_for(&url, cache)?;
    let uri = format!("file://{}", dest.display());
    if dest.is_file() {
        log(&format!(
            "Using {} from the pip download cache",
            dest.display()
        ));
        return Some((uri, url));
    }
    log(&redact_urls(&format!(
        "Downloading \"{url}\" to the pip download cache"
    )));
    let fetch = || -> Result<(), String> {
        fs::create_dir_all(cache).map_err(|e| format!("{}: {e}", cache.display()))?;
        let client = reqwest::blocking::Client::builder()
            .timeout(std::time::Duration::from_secs(600))
            .build()
            .map_err(|e| e.to_string())?;
        let mut resp = client
            .get(&url)
            .send()
            .and_then(|r| r.error_for_status())
            .map_err(|e| redact_urls(&e.to_string()))?;
        let tmp = cache.join(format!(".download-{}", unique_suffix()));
        let result = File::create(&tmp)
            .map_err(|e| e.to_string())
            .and_then(|mut f| resp.copy_to(&mut f).map(|_| ()).map_err(|e| e.to_string()))
            .and_then(|()| fs::rename(&tmp, &dest).map_err(|e| e.to_string()));
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    };
    match fetch() {
        Ok(()) => Some((uri, url)),
        Err(e) => {
            log(&format!(
                "WARNING: could not download {} to the pip download cache ({e}); installing from the URL",
                redact_urls(&url)
            ));
            None
        }
    }
}

/// Installs relative local requirements ([`EnvOutcome::deferred`]) into a finished venv from
/// the checkout, after the clone.
pub fn install_local(
    settings: &EnvSettings,
    spec: &EnvSpec,
    opts: &InstallOptions,
    venv_dir: &Path,
    checkout: &Path,
    lines: &[String],
    log: &mut dyn FnMut(&str),
) -> Result<Vec<String>, EnvError> {
    let python = venv_python(venv_dir);
    let uv = match spec.manager {
        Manager::Uv => Some(ensure_uv(settings, &python, log)?),
        Manager::Pip => None,
    };
    let installer = Installer {
        uv: uv.as_deref(),
        python: &python,
        spec,
        opts,
    };
    for line in lines {
        log(&format!(
            "Installing local package from the checkout: {line}"
        ));
        installer.run(
            "local",
            std::slice::from_ref(line),
            false,
            Some(checkout),
            log,
        )?;
    }
    freeze(&python, spec.manager, settings)
}

// ---------------------------------------------------------------------------------------
// Cache store and eviction

/// Copy the finished venv into the cache as `<key>`, atomically. The caller holds the
/// key's exclusive lock.
fn store(cache_dir: &Path, key: &str, venv_dir: &Path) -> Result<PathBuf, EnvError> {
    let entry = cache_dir.join(key);
    let tmp = cache_dir.join(format!("{key}.tmp-{}", unique_suffix()));
    let result = (|| -> Result<(), EnvError> {
        let from = venv_dir.to_string_lossy();
        let to = entry.to_string_lossy();
        // Scripts in bin/ name the run's venv, which goes away with the run: point them at
        // the entry, itself a working venv.
        let rw = Rewrite {
            from: &from,
            to: &to,
        };
        link_tree(venv_dir, &tmp, Some(&rw)).map_err(io_err(format!(
            "copying {} to {}",
            venv_dir.display(),
            tmp.display()
        )))?;
        let data = read_marker(venv_dir).ok_or_else(|| EnvError::Io {
            context: format!("reading the marker of {}", venv_dir.display()),
            source: io::Error::from(io::ErrorKind::NotFound),
        })?;
        write_marker(&tmp, &data)
            .map_err(io_err(format!("writing the marker in {}", tmp.display())))?;
        if entry.exists() {
            // Incomplete leftover under the final name (cannot happen through rename, but
            // the directory may have been damaged by hand): replace it.
            retire(cache_dir, key).map_err(io_err(format!("removing {}", entry.display())))?;
        }
        fs::rename(&tmp, &entry).map_err(io_err(format!(
            "renaming {} to {}",
            tmp.display(),
            entry.display()
        )))?;
        let _ = touch(&entry);
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_dir_all(&tmp);
    }
    result.map(|()| entry)
}

/// Rename an entry out of its final name, then delete it.
fn retire(cache_dir: &Path, name: &str) -> io::Result<()> {
    let doomed = cache_dir.join(format!("{name}.tmp-evict-{}", unique_suffix()));
    fs::rename(cache_dir.join(name), &doomed)?;
    fs::remove_dir_all(&doomed)
}

/// Evict `name` if no one holds its lock. Returns whether it was removed.
fn try_evict(cache_dir: &Path, name: &str) -> bool {
    let Ok(lock) = open_lock(&cache_dir.join(format!("{name}.lock"))) else {
        return false;
    };
    if FileExt::try_lock_exclusive(&lock).is_err() {
        return false;
    }
    retire(cache_dir, name).is_ok()
}

/// Cache entries and their last use.
fn list_entries(cache_dir: &Path) -> Vec<(String, SystemTime)> {
    let Ok(rd) = fs::read_dir(cache_dir) else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let meta = e.metadata().ok()?;
            (is_key_name(&name) && meta.is_dir())
                .then(|| (name, meta.modified().unwrap_or(UNIX_EPOCH)))
        })
        .collect()
}

/// Remove `.tmp-` folders that no agent is working on (their key's lock is free).
fn sweep_stale(cache_dir: &Path) {
    let Ok(rd) = fs::read_dir(cache_dir) else {
        return;
    };
    for e in rd.flatten() {
        let Ok(name) = e.file_name().into_string() else {
            continue;
        };
        let Some((key, _)) = name.split_once(".tmp-") else {
            continue;
        };
        if !is_key_name(key) {
            continue;
        }
        if let Ok(lock) = open_lock(&cache_dir.join(format!("{key}.lock"))) {
            if FileExt::try_lock_exclusive(&lock).is_ok() {
                let _ = fs::remove_dir_all(e.path());
            }
        }
    }
}

fn free_gb(dir: &Path) -> Option<f64> {
    fs2::available_space(dir)
        .ok()
        .map(|b| b as f64 / (1u64 << 30) as f64)
}

/// Keep at most `max_entries` entries, then drop the least recently used while free space
/// is below the threshold; never `keep`, never an entry in use.
fn evict(settings: &EnvSettings, keep: &str, log: &mut dyn FnMut(&str)) {
    let dir = &settings.cache_dir;
    sweep_stale(dir);
    for name in select_over_limit(&list_entries(dir), keep, settings.max_entries) {
        if try_evict(dir, &name) {
            log(&format!(
                "Evicted cached environment {name} (over max_entries)"
            ));
        }
    }
    let mut order = eviction_order(&list_entries(dir), keep).into_iter();
    while let Some(free) = free_gb(dir) {
        if free >= settings.free_space_threshold_gb {
            break;
        }
        let Some(name) = order.next() else {
            log(&format!(
                "WARNING: {free:.1} GB free in {} is below the {:.1} GB threshold, and no \
                 cached environment is left to evict",
                dir.display(),
                settings.free_space_threshold_gb
            ));
            break;
        };
        if try_evict(dir, &name) {
            log(&format!(
                "Evicted cached environment {name} ({free:.1} GB free, below {:.1} GB)",
                settings.free_space_threshold_gb
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn clean_strips_comments_and_blanks() {
        let lines = s(&[
            "# a comment",
            "",
            "six==1.16.0  # pinned",
            "  requests>=2 ",
            "pkg @ https://h/p.whl#sha256=abc",
            "multi\nline",
        ]);
        assert_eq!(
            clean_requirements(&lines),
            s(&[
                "six==1.16.0",
                "requests>=2",
                "pkg @ https://h/p.whl#sha256=abc",
                "multi",
                "line"
            ])
        );
    }

    #[test]
    fn normalize_canonicalizes_names_and_spacing() {
        assert_eq!(normalize_requirement("Six >= 1.0"), "six>=1.0");
        assert_eq!(normalize_requirement("Foo_Bar.baz==2"), "foo-bar-baz==2");
        assert_eq!(
            normalize_requirement("numpy<2 ;  python_version < '3.12'"),
            "numpy<2; python_version < '3.12'"
        );
        assert_eq!(
            normalize_requirement("requests[socks]  # x"),
            "requests[socks]"
        );
        assert_eq!(
            normalize_requirement("-e   git+https://h/r.git#egg=r"),
            "-e git+https://h/r.git#egg=r"
        );
    }

    #[test]
    fn cache_key_is_stable_and_order_independent() {
        let a = EnvSpec {
            requirements: s(&["six==1.16.0", "requests>=2", "# c"]),
            extra_index_urls: s(&["https://a/simple/", "https://b/simple"]),
            ..EnvSpec::default()
        };
        let b = EnvSpec {
            requirements: s(&["", "Requests >= 2", "six==1.16.0  # pinned"]),
            extra_index_urls: s(&["https://b/simple", "https://a/simple"]),
            ..EnvSpec::default()
        };
        let k = cache_key(&a, "3.11.7");
        assert_eq!(k.len(), 64);
        assert!(is_key_name(&k));
        assert_eq!(k, cache_key(&b, "3.11.7"));
        assert_eq!(k, cache_key(&a, "3.11.7"), "deterministic");
        // Every input that changes the environment changes the key.
        assert_ne!(k, cache_key(&a, "3.11.8"));
        let variants = [
            EnvSpec {
                manager: Manager::Uv,
                ..a.clone()
            },
            EnvSpec {
                requirements: s(&["six==1.16.0"]),
                ..a.clone()
            },
            EnvSpec {
                priority_packages: s(&["six"]),
                ..a.clone()
            },
            EnvSpec {
                post_packages: s(&["requests"]),
                ..a.clone()
            },
            EnvSpec {
                extra_index_urls: s(&["https://c/simple"]),
                ..a.clone()
            },
            EnvSpec {
                cuda_version: Some("12.1".into()),
                ..a.clone()
            },
            EnvSpec {
                system_site_packages: true,
                ..a.clone()
            },
        ];
        for v in &variants {
            assert_ne!(k, cache_key(v, "3.11.7"), "{v:?}");
        }
        // Priority/post names the task does not list change nothing (upstream: reorder only).
        let unlisted = EnvSpec {
            priority_packages: s(&["torch"]),
            post_packages: s(&["horovod"]),
            ..a.clone()
        };
        assert_eq!(k, cache_key(&unlisted, "3.11.7"));
        // Install options that change the result change the key.
        for opts in [
            InstallOptions {
                pip_version: s(&["<24"]),
                ..Default::default()
            },
            InstallOptions {
                extra_pip_flags: s(&["--no-binary=:all:"]),
                ..Default::default()
            },
            InstallOptions {
                requirement_options: s(&["--pre"]),
                ..Default::default()
            },
        ] {
            assert_ne!(k, cache_key_with(&a, &opts, "3.11.7"), "{opts:?}");
        }
        // A package moved between steps is a different environment build.
        let moved = EnvSpec {
            post_packages: s(&["six"]),
            ..a.clone()
        };
        assert_ne!(k, cache_key(&moved, "3.11.7"));
    }

    #[test]
    fn uncacheable_lines() {
        assert_eq!(uncacheable_reason(&s(&["six", "numpy==1.26"])), None);
        assert_eq!(
            uncacheable_reason(&s(&["pkg @ https://h/p.whl#sha256=abc"])),
            None
        );
        for l in [
            "-r requirements.txt",
            "--requirement=reqs.txt",
            "-c constraints.txt",
            "-e .",
            "./local/pkg",
            "/abs/pkg",
            "file:///x/y.whl",
            "git+https://github.com/a/b.git",
            "pkg @ git+https://github.com/a/b.git@main",
            "-e git+https://github.com/a/b.git#egg=b",
        ] {
            assert!(uncacheable_reason(&s(&[l])).is_some(), "{l}");
        }
        let why = uncacheable_reason(&s(&["git+https://user:tok@h/r.git"])).unwrap();
        assert!(!why.contains("tok"), "{why}");
    }

    #[test]
    fn commands_and_errors_mask_credentials() {
        let mut c = Command::new("pip");
        c.args([
            "install",
            "--extra-index-url",
            "https://alice:s3cret@pypi.example.com/simple",
            "six",
        ]);
        let d = describe(&c);
        assert!(!d.contains("s3cret"), "{d}");
        assert!(d.contains("alice:"), "{d}");
        assert!(d.contains("@pypi.example.com/simple"), "{d}");

        let lines = s(&[
            "Looking in indexes: https://pypi.org/simple, https://bob:hunter2@idx.example/simple",
            "ERROR: Could not find a version that satisfies the requirement foo==1 (from versions: none)",
            "ERROR: 401 Client Error for url: https://bob:hunter2@idx.example/simple/foo/",
        ]);
        let keys = key_error_lines(&lines);
        assert_eq!(keys.len(), 2);
        assert!(keys.iter().all(|k| !k.contains("hunter2")), "{keys:?}");
    }

    #[test]
    fn key_errors_pip_and_uv() {
        let pip = s(&[
            "Looking in links: /opt/wheels",
            "ERROR: Could not find a version that satisfies the requirement nope==1.0 (from versions: none)",
            "ERROR: No matching distribution found for nope==1.0",
        ]);
        let k = key_error_lines(&pip);
        assert_eq!(
            k.last().unwrap(),
            "ERROR: No matching distribution found for nope==1.0"
        );

        // uv, both unwrapped ("cause:") and wrapped (miette) forms.
        let uv = s(&[
            "Using Python 3.11.7 environment at: v1",
            "  × No solution found when resolving dependencies:",
            "  ╰─▶ Because nope was not found in the package registry and you require",
            "      nope==1.0, we can conclude that your requirements are unsatisfiable.",
        ]);
        let k = key_error_lines(&uv);
        assert_eq!(k.len(), 1);
        assert!(
            k[0].contains("nope was not found in the package registry and you require nope==1.0")
        );
        let uv2 = s(&[
            "error: No solution found when resolving dependencies",
            "  cause: Because nope was not found in the package registry and you require nope==1.0, we can conclude that your requirements are unsatisfiable.",
        ]);
        let k = key_error_lines(&uv2);
        assert_eq!(k.len(), 1);
        assert!(k[0].starts_with("error: No solution found"));
        assert!(k[0].contains("not found in the package registry"));
        assert!(key_error_lines(&s(&[
            "Collecting six",
            "Installing collected packages: six"
        ]))
        .is_empty());
    }

    #[test]
    fn eviction_picks_least_recently_used_and_never_keep() {
        let t = |secs| UNIX_EPOCH + Duration::from_secs(secs);
        let entries = vec![
            ("c".to_string(), t(30)),
            ("a".to_string(), t(10)),
            ("new".to_string(), t(5)), // just made, but an old mtime: still kept
            ("b".to_string(), t(20)),
            ("d".to_string(), t(40)),
        ];
        assert_eq!(eviction_order(&entries, "new"), s(&["a", "b", "c", "d"]));
        assert_eq!(select_over_limit(&entries, "new", 2), s(&["a", "b", "c"]));
        assert_eq!(select_over_limit(&entries, "new", 5), Vec::<String>::new());
        assert_eq!(select_over_limit(&entries, "new", 10), Vec::<String>::new());
        // 0 still keeps the entry just made.
        assert_eq!(
            select_over_limit(&entries, "new", 0),
            s(&["a", "b", "c", "d"])
        );
        // Ties break by name.
        let tied = vec![("y".to_string(), t(1)), ("x".to_string(), t(1))];
        assert_eq!(eviction_order(&tied, "z"), s(&["x", "y"]));
    }

    #[test]
    fn link_tree_links_files_keeps_symlinks_and_skips_marker() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        fs::create_dir_all(src.join("bin")).unwrap();
        fs::create_dir_all(src.join("lib/site")).unwrap();
        fs::write(src.join("lib/site/m.py"), "x = 1\n").unwrap();
        fs::write(
            src.join("bin/tool"),
            format!("#!{}/bin/python\n", src.display()),
        )
        .unwrap();
        fs::set_permissions(src.join("bin/tool"), fs::Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::symlink("lib", src.join("lib64")).unwrap();
        fs::write(src.join(MARKER), "{}").unwrap();

        let dst = d.path().join("dst");
        let from = src.to_string_lossy().into_owned();
        let rw = Rewrite {
            from: &from,
            to: "/cache/entry",
        };
        link_tree(&src, &dst, Some(&rw)).unwrap();
        assert!(
            !dst.join(MARKER).exists(),
            "the marker is written last by the caller"
        );
        assert_eq!(
            fs::read_link(dst.join("lib64")).unwrap(),
            PathBuf::from("lib")
        );
        assert_eq!(
            fs::read_to_string(dst.join("lib/site/m.py")).unwrap(),
            "x = 1\n"
        );
        use std::os::unix::fs::MetadataExt;
        assert_eq!(
            fs::metadata(dst.join("lib/site/m.py")).unwrap().ino(),
            fs::metadata(src.join("lib/site/m.py")).unwrap().ino(),
            "hardlinked"
        );
        assert_eq!(
            fs::read_to_string(dst.join("bin/tool")).unwrap(),
            "#!/cache/entry/bin/python\n"
        );
        assert_eq!(
            fs::metadata(dst.join("bin/tool"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o755
        );
    }

    #[test]
    fn missing_interpreter_is_named() {
        let e = find_interpreter("python-does-not-exist-9.9").err().unwrap();
        assert!(matches!(e, EnvError::InterpreterNotFound { .. }));
        assert!(e.to_string().contains("python-does-not-exist-9.9"), "{e}");
    }
}
