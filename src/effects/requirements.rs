//! Which packages a task installs, and in what order, as the Python agent (3.0.3) decides it:
//! `commands/worker.py` (`execute`, `install_requirements_for_package_api`) and
//! `helper/package/{requirements,priority_req,post_req,external_req,translator}.py`.
//!
//! 1. **Selection** ([`select`]): `force_repo_requirements_txt` ignores the task's packages;
//!    `force_original_requirements` uses `org_pip` when the task has one; otherwise the task's
//!    `script.requirements.pip`. When that is empty (or forced away), every `requirements.txt`
//!    from the repository root down to the entry point's folder is a group of its own, root
//!    first. `-r file` lines are read in place, relative to the repository root (upstream's
//!    `cwd`), then to the including file's folder; an include that leaves the repository is an
//!    error, a missing one is skipped with a note (as upstream). `--extra-index-url` lines
//!    become extra indexes; `-i`, `-f`, `--no-index` and `-c` are dropped with a note.
//! 2. **Plan** ([`plan`]): per group, the packages named in `priority_packages` (default
//!    cython, numpy, setuptools, pip, uv) are installed first, each alone, and stay in the
//!    main step; `priority_optional_packages` (default pygobject) likewise, but a failure only
//!    drops them from the main step. Then the main step (one installer call). Then the
//!    `post_packages` (default horovod) and `post_optional_packages`, each alone, removed from
//!    the main step. Then version-control, editable and local-path requirements, each alone
//!    (git credentials are added to `git+https` URLs only when installing them, see
//!    [`with_git_credentials`]). Nothing is added that the task did not list. Duplicates of
//!    clearml, trains, nbconvert and ipython collapse to the last one, moved to the end.
//! 3. **Write-back** ([`restore_freeze`], [`write_back`]): the freeze with the task's original
//!    URL and VCS lines put back (upstream `replace_back`), no credentials, no clearml-agent;
//!    `org_pip` set only when the task has none.

use std::collections::BTreeSet;
use std::path::{Component, Path, PathBuf};

use serde_json::{json, Value};

use super::vcs::{host_matches, translate_url};
use crate::redact::redact_urls;

/// Upstream's `PriorityPackageRequirement.name` (used when `priority_packages` is empty).
pub const DEFAULT_PRIORITY: &[&str] = &["cython", "numpy", "setuptools", "pip", "uv"];
/// Upstream's `priority_optional_packages` default (agent.conf).
pub const DEFAULT_PRIORITY_OPTIONAL: &[&str] = &["pygobject"];
/// Upstream's `PostRequirement.name` (used when `post_packages` is empty).
pub const DEFAULT_POST: &[&str] = &["horovod"];
/// Packages of which only the last occurrence is installed (upstream `PackageCollectorRequirement`).
const COLLECTED: &[&str] = &["trains", "clearml", "nbconvert", "ipython"];
/// Deepest `-r` nesting followed.
const MAX_INCLUDE_DEPTH: usize = 16;

/// How requirements are chosen and ordered (`agent.package_manager.*`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RequirementsPolicy {
    pub force_repo_requirements_txt: bool,
    pub force_original_requirements: bool,
    /// Empty: [`DEFAULT_PRIORITY`].
    pub priority_packages: Vec<String>,
    /// Empty: [`DEFAULT_PRIORITY_OPTIONAL`].
    pub priority_optional_packages: Vec<String>,
    /// Empty: [`DEFAULT_POST`].
    pub post_packages: Vec<String>,
    pub post_optional_packages: Vec<String>,
}

impl RequirementsPolicy {
    fn names(list: &[String], default: &[&str]) -> Vec<String> {
        if list.is_empty() {
            default.iter().map(|s| canonical_name(s)).collect()
        } else {
            list.iter().map(|s| canonical_name(s)).collect()
        }
    }
    fn priority(&self) -> Vec<String> {
        Self::names(&self.priority_packages, DEFAULT_PRIORITY)
    }
    fn priority_optional(&self) -> Vec<String> {
        Self::names(&self.priority_optional_packages, DEFAULT_PRIORITY_OPTIONAL)
    }
    fn post(&self) -> Vec<String> {
        Self::names(&self.post_packages, DEFAULT_POST)
    }
    fn post_optional(&self) -> Vec<String> {
        self.post_optional_packages
            .iter()
            .map(|s| canonical_name(s))
            .collect()
    }
}

/// The task's `script.requirements` (the parts that pick packages).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskRequirements {
    /// `pip`, a string or a list joined with newlines.
    pub pip: Option<String>,
    pub org_pip: Option<String>,
}

impl TaskRequirements {
    /// From a task document's `script.requirements` object (`pip`/`org_pip` as text or list).
    pub fn from_json(requirements: &Value) -> TaskRequirements {
        let text = |v: &Value| match v {
            Value::String(s) => Some(s.clone()),
            Value::Array(items) => Some(
                items
                    .iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join("\n"),
            ),
            _ => None,
        };
        TaskRequirements {
            pip: requirements.get("pip").and_then(text),
            org_pip: requirements.get("org_pip").and_then(text),
        }
    }
}

/// Where the task runs from, relative to the repository root (`script.working_dir`,
/// `script.entry_point`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EntryPoint {
    pub working_dir: Option<String>,
    pub entry_point: Option<String>,
}

impl EntryPoint {
    /// The folders from the repository root down to the entry point's folder, root first,
    /// as relative paths ("" is the root). Folders outside the repository are left out.
    pub fn folders(&self) -> Vec<String> {
        let wd = self.working_dir.as_deref().unwrap_or("").trim();
        let entry = self.entry_point.as_deref().unwrap_or("").trim();
        let first = entry.split_whitespace().next().unwrap_or("");
        let mut path = PathBuf::from(wd);
        // `-m module`: the working dir is the deepest folder.
        if !first.is_empty() && first != "-m" && !first.starts_with('-') {
            path.push(first);
            path.pop();
        }
        let Some(full) = normalize(Path::new(""), &path) else {
            return vec![String::new()];
        };
        let mut out = vec![String::new()];
        let mut cur = String::new();
        for part in full.split('/').filter(|p| !p.is_empty()) {
            if !cur.is_empty() {
                cur.push('/');
            }
            cur.push_str(part);
            out.push(cur.clone());
        }
        out
    }
}

/// Reads files of the task's repository: a checkout ([`DirTree`]) or the commit through the
/// VCS cache (any `FnMut(&str) -> Result<Option<String>, String>`, e.g. around
/// `vcs::read_file_at`).
pub trait SourceTree {
    /// The text of `rel` (a normalized path relative to the repository root, `/`-separated),
    /// `None` when there is no such file.
    fn read(&mut self, rel: &str) -> Result<Option<String>, String>;
}

impl<F: FnMut(&str) -> Result<Option<String>, String>> SourceTree for F {
    fn read(&mut self, rel: &str) -> Result<Option<String>, String> {
        self(rel)
    }
}

/// A checked-out repository on disk.
pub struct DirTree<'a>(pub &'a Path);

impl SourceTree for DirTree<'_> {
    fn read(&mut self, rel: &str) -> Result<Option<String>, String> {
        let path = self.0.join(rel);
        match std::fs::read(&path) {
            Ok(bytes) => Ok(Some(String::from_utf8_lossy(&bytes).into_owned())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            // A directory named requirements.txt is "no file", as upstream's is_file().
            Err(_) if path.is_dir() => Ok(None),
            Err(e) => Err(format!("{}: {e}", path.display())),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RequirementsError {
    #[error("{origin}: `{line}` refers to a file outside the repository")]
    Escapes { origin: String, line: String },
    #[error("{origin}: `-r` includes nest deeper than {MAX_INCLUDE_DEPTH} (a cycle?) at `{line}`")]
    TooDeep { origin: String, line: String },
    #[error("reading {path} from the repository: {detail}")]
    Read { path: String, detail: String },
}

/// One source of requirements, installed as a unit (upstream installs each file separately).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReqGroup {
    /// "task requirements", "requirements.txt", "sub/requirements.txt", ...
    pub origin: String,
    /// Requirement lines with includes read in place, comments and option lines removed.
    pub lines: Vec<String>,
}

/// What [`select`] decided.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection {
    pub groups: Vec<ReqGroup>,
    /// From `--extra-index-url` lines.
    pub extra_index_urls: Vec<String>,
    /// Pip options kept for the main step (`--pre`, `--trusted-host h`, ...).
    pub options: Vec<String>,
    /// What was decided and why, for the task's console.
    pub notes: Vec<String>,
}

impl Selection {
    pub fn is_empty(&self) -> bool {
        self.groups.iter().all(|g| g.lines.is_empty())
    }
    /// Every requirement line, in order.
    pub fn all_lines(&self) -> Vec<String> {
        self.groups.iter().flat_map(|g| g.lines.clone()).collect()
    }
}

/// Chooses the task's requirements (see the module doc). `tree` is the repository at the
/// task's commit (`None`: the task has no repository).
pub fn select(
    policy: &RequirementsPolicy,
    task: &TaskRequirements,
    entry: &EntryPoint,
    mut tree: Option<&mut dyn SourceTree>,
) -> Result<Selection, RequirementsError> {
    let mut sel = Selection::default();
    let section = if policy.force_repo_requirements_txt {
        sel.notes.push(
            "[package_manager.force_repo_requirements_txt=true] Skipping requirements, using \
             repository \"requirements.txt\""
                .into(),
        );
        None
    } else if policy.force_original_requirements
        && task
            .org_pip
            .as_deref()
            .is_some_and(|s| !s.trim().is_empty())
    {
        sel.notes.push(
            "[package_manager.force_original_requirements=true] Using original requirements \
             (org_pip)"
                .into(),
        );
        task.org_pip.clone()
    } else {
        task.pip.clone()
    };
    if let Some(text) = section.filter(|t| has_requirements(t)) {
        let mut lines = Vec::new();
        expand(
            &text,
            "task requirements",
            "",
            false,
            0,
            &mut tree,
            &mut sel,
            &mut lines,
        )?;
        sel.groups.push(ReqGroup {
            origin: "task requirements".into(),
            lines,
        });
        return Ok(sel);
    }
    let Some(t) = tree.as_deref_mut() else {
        sel.notes
            .push("No task requirements and no repository: installing nothing".into());
        return Ok(sel);
    };
    let mut found = Vec::new();
    for folder in entry.folders() {
        let rel = join_rel(&folder, "requirements.txt");
        match t.read(&rel) {
            Ok(Some(text)) => found.push((rel, folder, text)),
            Ok(None) => {}
            Err(detail) => return Err(RequirementsError::Read { path: rel, detail }),
        }
    }
    if found.is_empty() {
        sel.notes.push(
            "No task requirements and no requirements.txt on the way to the entry point: \
             installing nothing"
                .into(),
        );
    }
    for (rel, folder, text) in found {
        sel.notes.push(format!(
            "Using the repository's {rel} (the task lists no packages)"
        ));
        let mut lines = Vec::new();
        expand(
            &text, &rel, &folder, true, 0, &mut tree, &mut sel, &mut lines,
        )?;
        sel.groups.push(ReqGroup { origin: rel, lines });
    }
    Ok(sel)
}

fn has_requirements(text: &str) -> bool {
    text.lines().any(|l| !strip_comment(l).trim().is_empty())
}

fn join_rel(folder: &str, name: &str) -> String {
    if folder.is_empty() {
        name.to_string()
    } else {
        format!("{folder}/{name}")
    }
}

/// `base` joined with `rel`, `..` resolved, as a `/`-separated path relative to the repository
/// root; `None` when it is absolute or leaves the repository.
fn normalize(base: &Path, rel: &Path) -> Option<String> {
    if rel.is_absolute() {
        return None;
    }
    let mut parts: Vec<String> = Vec::new();
    for c in base.components().chain(rel.components()) {
        match c {
            Component::Normal(p) => parts.push(p.to_string_lossy().into_owned()),
            Component::CurDir => {}
            Component::ParentDir => {
                parts.pop()?;
            }
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(parts.join("/"))
}

/// The value of an option line (`-r x`, `-rx`, `--requirement=x`, `--requirement x`), if
/// the line is that option.
fn option_value<'a>(line: &'a str, short: &str, long: &str) -> Option<&'a str> {
    if let Some(rest) = line.strip_prefix(long) {
        if let Some(v) = rest.strip_prefix('=') {
            return Some(v.trim());
        }
        if rest.starts_with(char::is_whitespace) {
            return Some(rest.trim());
        }
        return None;
    }
    if !short.is_empty() {
        if let Some(rest) = line.strip_prefix(short) {
            let v = rest.trim_start_matches('=').trim();
            return (!v.is_empty()).then_some(v);
        }
    }
    None
}

/// Appends the requirement lines of `text` (from `origin`, whose folder is `folder`) to
/// `out`, reading `-r` includes in place.
#[allow(clippy::too_many_arguments)]
fn expand(
    text: &str,
    origin: &str,
    folder: &str,
    from_file: bool,
    depth: usize,
    tree: &mut Option<&mut dyn SourceTree>,
    sel: &mut Selection,
    out: &mut Vec<String>,
) -> Result<(), RequirementsError> {
    for raw in text.lines() {
        let line = strip_comment(raw).trim();
        if line.is_empty() {
            continue;
        }
        if let Some(inc) = option_value(line, "-r", "--requirement") {
            if depth >= MAX_INCLUDE_DEPTH {
                return Err(RequirementsError::TooDeep {
                    origin: origin.into(),
                    line: line.into(),
                });
            }
            let escapes = || RequirementsError::Escapes {
                origin: origin.into(),
                line: line.into(),
            };
            // Upstream resolves against the repository root; pip against the including file.
            let mut candidates = vec![normalize(Path::new(""), Path::new(inc))];
            if from_file && !folder.is_empty() {
                candidates.push(normalize(Path::new(folder), Path::new(inc)));
            }
            if candidates.iter().all(Option::is_none) {
                return Err(escapes());
            }
            let Some(t) = tree.as_deref_mut() else {
                sel.notes.push(format!(
                    "{origin}: `{line}` skipped: the task has no repository to read it from"
                ));
                continue;
            };
            let mut included = None;
            for rel in candidates.into_iter().flatten() {
                match t.read(&rel) {
                    Ok(Some(text)) => {
                        included = Some((rel, text));
                        break;
                    }
                    Ok(None) => {}
                    Err(detail) => return Err(RequirementsError::Read { path: rel, detail }),
                }
            }
            match included {
                Some((rel, text)) => {
                    let inc_folder = rel.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
                    expand(&text, &rel, inc_folder, true, depth + 1, tree, sel, out)?;
                }
                None => sel.notes.push(format!(
                    "{origin}: `{line}` skipped: no such file in the repository"
                )),
            }
            continue;
        }
        if let Some(url) = option_value(line, "", "--extra-index-url") {
            if !url.is_empty() && !sel.extra_index_urls.iter().any(|u| u == url) {
                sel.extra_index_urls.push(url.to_string());
            }
            continue;
        }
        let dropped = ["-i", "--index-url", "-f", "--find-links", "--no-index"]
            .iter()
            .chain(["-c", "--constraint"].iter())
            .any(|o| {
                line == *o
                    || line.starts_with(&format!("{o} "))
                    || line.starts_with(&format!("{o}="))
            })
            || (line.starts_with("-c") && !line.starts_with("--"));
        if dropped {
            sel.notes.push(format!(
                "{origin}: `{}` skipped (index and constraint options are not taken from \
                 requirements)",
                redact_urls(line)
            ));
            continue;
        }
        if line.starts_with('-') && !is_editable(line) {
            if !sel.options.iter().any(|o| o == line) {
                sel.options.push(line.to_string());
            }
            continue;
        }
        out.push(line.to_string());
    }
    Ok(())
}

/// Strip a pip-style comment: `#` at the start or after whitespace (so `url#sha256=` stays).
pub fn strip_comment(line: &str) -> &str {
    let mut prev_space = true;
    for (i, c) in line.char_indices() {
        if c == '#' && prev_space {
            return &line[..i];
        }
        prev_space = c.is_whitespace();
    }
    line
}

/// PEP 503 name: lowercase, runs of `-_.` become one `-`.
pub fn canonical_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut sep = false;
    for c in name.trim().chars() {
        if matches!(c, '-' | '_' | '.') {
            sep = true;
        } else {
            if sep && !out.is_empty() {
                out.push('-');
            }
            sep = false;
            out.push(c.to_ascii_lowercase());
        }
    }
    out
}

fn is_editable(line: &str) -> bool {
    line.starts_with("-e ") || line.starts_with("-e=") || line.starts_with("--editable")
}

/// What kind of requirement a line is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReqKind {
    /// `name[extras] spec ; marker`
    Named,
    /// A direct URL (`https://h/p.whl`, `name @ https://...`).
    Url,
    /// A version-control requirement (`git+...`, `name @ git+...`, `-e git+...`).
    Vcs,
    /// A local path or file (`./pkg`, `-e .`, `/abs/p.whl`, `file://...`); `relative` ones
    /// need the checkout.
    Local { relative: bool },
}

/// The line's target after `-e` / `name @`.
fn target(line: &str) -> &str {
    let l = line.trim();
    let l = if is_editable(l) {
        l.trim_start_matches("--editable")
            .trim_start_matches("-e")
            .trim_start_matches('=')
            .trim()
    } else {
        l
    };
    match l.split_once(" @ ").or_else(|| {
        // `name@ url` / `name @url`: only when what follows the @ is a URL.
        l.split_once('@')
            .filter(|(n, u)| !n.contains('/') && !n.contains(':') && u.trim().contains("://"))
    }) {
        Some((_, url)) => url.trim(),
        None => l,
    }
}

pub fn classify(line: &str) -> ReqKind {
    let t = target(line);
    let lower = t.to_ascii_lowercase();
    if ["git+", "hg+", "svn+", "bzr+"]
        .iter()
        .any(|p| lower.starts_with(p))
    {
        return ReqKind::Vcs;
    }
    if lower.starts_with("file:") || t.starts_with('/') {
        return ReqKind::Local { relative: false };
    }
    if t.starts_with('.') || t.starts_with('~') || (is_editable(line) && !t.contains("://")) {
        return ReqKind::Local { relative: true };
    }
    if lower.starts_with("http://") || lower.starts_with("https://") {
        return ReqKind::Url;
    }
    ReqKind::Named
}

/// The canonical package name a line names, if it names one (`pkg==1`, `pkg @ url`,
/// `url#egg=pkg`).
pub fn requirement_name(line: &str) -> Option<String> {
    let l = line.trim();
    if let Some(egg) = l.split("#egg=").nth(1) {
        let name: String = egg
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            .collect();
        return (!name.is_empty()).then(|| canonical_name(&name));
    }
    if is_editable(l) || l.starts_with('-') {
        return None;
    }
    if matches!(classify(l), ReqKind::Named) || target(l) != l {
        let end = l
            .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
            .unwrap_or(l.len());
        let name = &l[..end];
        return (!name.is_empty() && !name.starts_with('.')).then(|| canonical_name(name));
    }
    None
}

/// One installer call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstallStep {
    pub kind: StepKind,
    /// The group ([`ReqGroup::origin`]) it belongs to.
    pub origin: String,
    pub lines: Vec<String>,
    /// A failure is logged and the run goes on (optional priority/post packages).
    pub optional: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StepKind {
    Priority,
    Main,
    Post,
    /// Version-control and absolute local requirements, after the rest.
    External,
    /// Relative local paths (`-e .`): installed from the checkout, so after the clone.
    Local,
}

impl StepKind {
    pub fn label(self) -> &'static str {
        match self {
            StepKind::Priority => "priority",
            StepKind::Main => "main",
            StepKind::Post => "post",
            StepKind::External => "external",
            StepKind::Local => "local",
        }
    }
}

/// The installer calls for `groups`, in order (see the module doc).
pub fn plan(groups: &[ReqGroup], policy: &RequirementsPolicy) -> Vec<InstallStep> {
    let (prio, prio_opt, post, post_opt) = (
        policy.priority(),
        policy.priority_optional(),
        policy.post(),
        policy.post_optional(),
    );
    let mut steps = Vec::new();
    for g in groups {
        let step = |kind, lines: Vec<String>, optional| InstallStep {
            kind,
            origin: g.origin.clone(),
            lines,
            optional,
        };
        let mut main = Vec::new();
        let mut posts = Vec::new();
        let mut externals = Vec::new();
        let mut locals = Vec::new();
        let mut collected: Vec<(String, String)> = Vec::new();
        for line in &g.lines {
            let name = requirement_name(line);
            let named = |list: &[String]| name.as_ref().is_some_and(|n| list.contains(n));
            if named(&prio) || named(&prio_opt) {
                steps.push(step(
                    StepKind::Priority,
                    vec![line.clone()],
                    named(&prio_opt) && !named(&prio),
                ));
                main.push(line.clone());
            } else if named(&post) || named(&post_opt) {
                posts.push((line.clone(), named(&post_opt) && !named(&post)));
            } else {
                match classify(line) {
                    ReqKind::Vcs | ReqKind::Local { relative: false } => {
                        externals.push(line.clone())
                    }
                    ReqKind::Local { relative: true } => locals.push(line.clone()),
                    _ if name.as_deref().is_some_and(|n| COLLECTED.contains(&n)) => {
                        let n = name.clone().unwrap_or_default();
                        collected.retain(|(c, _)| *c != n);
                        collected.push((n, line.clone()));
                    }
                    _ => main.push(line.clone()),
                }
            }
        }
        main.extend(collected.into_iter().map(|(_, l)| l));
        if !main.is_empty() {
            steps.push(step(StepKind::Main, main, false));
        }
        for (line, optional) in posts {
            steps.push(step(StepKind::Post, vec![line], optional));
        }
        for line in externals {
            steps.push(step(StepKind::External, vec![line], false));
        }
        for line in locals {
            steps.push(step(StepKind::Local, vec![line], false));
        }
    }
    steps
}

/// Git credentials for `git+https` requirement lines (`agent.git_user`/`git_pass`, only for
/// `agent.git_host` when it is set).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct GitCredentials {
    pub user: Option<String>,
    pub pass: Option<String>,
    pub host: Option<String>,
}

impl std::fmt::Debug for GitCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GitCredentials")
            .field("user", &self.user)
            .field("pass", &self.pass.as_ref().map(|_| crate::redact::MASK))
            .field("host", &self.host)
            .finish()
    }
}

fn percent_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The line with the git credentials in its `git+` URL (ssh URLs turned into https first, as
/// upstream's `_add_vcs_credentials`). Lines that are not git, URLs that already carry
/// credentials and hosts other than `git_host` are returned unchanged. The result holds a
/// secret: pass it to the installer in a 0600 file, and log only [`redact_urls`] of it.
pub fn with_git_credentials(line: &str, creds: &GitCredentials) -> String {
    let (Some(user), Some(pass)) = (
        creds.user.as_deref().filter(|u| !u.is_empty()),
        creds.pass.as_deref().filter(|p| !p.is_empty()),
    ) else {
        return line.to_string();
    };
    let t = target(line);
    let Some(url) = t.strip_prefix("git+") else {
        return line.to_string();
    };
    // The revision (`@ref`) and fragment stay where they are; only the URL part changes.
    let settings = super::vcs::VcsSettings {
        git_user: Some(user.into()),
        git_pass: Some(pass.into()),
        git_host: creds.host.clone(),
        ..Default::default()
    };
    let (url_part, frag) = match url.find('#') {
        Some(i) => (&url[..i], &url[i..]),
        None => (url, ""),
    };
    let url_part = url_part.replace("git://", "ssh://");
    if !host_matches(&url_part, creds.host.as_deref()) {
        return line.to_string();
    }
    let http = translate_url(&url_part, &settings);
    let Some((scheme, rest)) = ["https://", "http://"]
        .iter()
        .find_map(|s| http.strip_prefix(s).map(|r| (*s, r)))
    else {
        return line.to_string();
    };
    let authority = rest.split('/').next().unwrap_or("");
    if authority.contains('@') {
        return line.to_string();
    }
    let new_url = format!(
        "git+{scheme}{}:{}@{rest}{frag}",
        percent_encode(user),
        percent_encode(pass)
    );
    line.replacen(t, &new_url, 1)
}

/// A URL without `user:pass@`, fragment, revision (`@ref` after the path), `.git` and
/// scheme: what identifies a repository or file in a freeze line.
fn url_identity(url: &str) -> String {
    let u = url.trim();
    let u = u.split('#').next().unwrap_or(u);
    let u = ["git+", "hg+", "svn+", "bzr+"]
        .iter()
        .find_map(|p| u.strip_prefix(p))
        .unwrap_or(u);
    let u = u.split_once("://").map(|(_, r)| r).unwrap_or(u);
    let (authority, path) = u.split_once('/').unwrap_or((u, ""));
    let host = authority
        .rsplit_once('@')
        .map(|(_, h)| h)
        .unwrap_or(authority);
    let host = host.replacen(':', "/", 1); // git@host:org/repo
    let path = match path.rfind('@') {
        Some(i) => &path[..i],
        None => path,
    };
    let path = path.trim_end_matches('/');
    let path = path.strip_suffix(".git").unwrap_or(path);
    format!("{}/{}", host.to_ascii_lowercase(), path)
}

/// Upstream's freeze clean-up and `replace_back`: drops clearml-agent itself, puts back the
/// task's original URL and VCS lines (`originals`), maps download-cache files back to their
/// URLs (`cached`: (file URI, original URL)), adds `pip`/`setuptools` when the task asked
/// for them and the freeze leaves them out, and masks any credentials left in a URL.
pub fn restore_freeze(
    freeze: &[String],
    originals: &[String],
    cached: &[(String, String)],
) -> Vec<String> {
    let direct: Vec<(String, &String)> = originals
        .iter()
        .filter(|l| matches!(classify(l), ReqKind::Vcs | ReqKind::Url))
        .map(|l| (url_identity(target(l)), l))
        .collect();
    let local: Vec<(String, &String)> = originals
        .iter()
        .filter(|l| classify(l) == (ReqKind::Local { relative: true }))
        .map(|l| {
            let t = target(l).trim_start_matches("./").trim_end_matches('/');
            (format!("/{t}"), l)
        })
        .filter(|(suffix, _)| suffix.len() > 1)
        .collect();
    let mut out: Vec<String> = Vec::new();
    for line in freeze {
        let l = line.trim();
        if l.is_empty() || l.contains("clearml-agent") || l.contains("clearml_agent") {
            continue;
        }
        let mut restored = l.to_string();
        if let Some((file, url)) = cached.iter().find(|(f, _)| l.contains(f.as_str())) {
            restored = l.replace(file.as_str(), url);
        }
        match classify(&restored) {
            ReqKind::Vcs | ReqKind::Url => {
                let id = url_identity(target(&restored));
                if let Some((_, orig)) = direct.iter().find(|(oid, _)| *oid == id) {
                    restored = (*orig).clone();
                }
            }
            // `-e file:///checkout/pkg` was `-e ./pkg`: the checkout's path means nothing
            // on another machine.
            ReqKind::Local { .. } => {
                let t = target(&restored).trim_end_matches('/').to_string();
                if let Some((_, orig)) = local
                    .iter()
                    .find(|(suffix, _)| t.ends_with(suffix.as_str()))
                {
                    restored = (*orig).clone();
                }
            }
            ReqKind::Named => {}
        }
        out.push(strip_url_credentials(&restored));
    }
    let present: BTreeSet<String> = out.iter().filter_map(|l| requirement_name(l)).collect();
    let mut front = Vec::new();
    for wanted in ["pip", "setuptools"] {
        if present.contains(wanted) {
            continue;
        }
        if let Some(orig) = originals
            .iter()
            .find(|l| requirement_name(l).as_deref() == Some(wanted))
        {
            front.push(orig.clone());
        }
    }
    front.extend(out);
    front
}

/// `scheme://user:pass@host` -> `scheme://host` everywhere in the line (the freeze goes to
/// the server; credentials never do).
fn strip_url_credentials(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        let end = tail
            .find(|c: char| c == '/' || c.is_whitespace())
            .unwrap_or(tail.len());
        let authority = &tail[..end];
        match authority.rfind('@') {
            // `ssh://git@host` keeps its user: it is not a secret.
            Some(at) if authority[..at].contains(':') => out.push_str(&authority[at + 1..]),
            _ => out.push_str(authority),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

/// The `requirements` object to send with `tasks.set_requirements`, from the task's current
/// `script.requirements` (`current`, may be null) and the restored freeze: `pip` is the
/// freeze; `org_pip` keeps what the task had, and is only set (from the old `pip`) when the
/// task has no `org_pip` yet; other keys (conda, ...) are kept.
pub fn write_back(current: &Value, freeze: &[String]) -> Value {
    let mut doc = match current {
        Value::Object(m) => m.clone(),
        _ => Default::default(),
    };
    let blank = |v: Option<&Value>| match v {
        None | Some(Value::Null) => true,
        Some(Value::String(s)) => s.trim().is_empty(),
        Some(Value::Array(a)) => a.is_empty(),
        Some(_) => false,
    };
    if !blank(doc.get("pip")) && blank(doc.get("org_pip")) {
        let old = doc.remove("pip").unwrap_or(Value::Null);
        doc.insert("org_pip".into(), old);
    }
    doc.insert("pip".into(), json!(freeze));
    Value::Object(doc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    struct MapTree(HashMap<String, String>, Vec<String>);
    impl SourceTree for MapTree {
        fn read(&mut self, rel: &str) -> Result<Option<String>, String> {
            self.1.push(rel.to_string());
            Ok(self.0.get(rel).cloned())
        }
    }
    fn tree(files: &[(&str, &str)]) -> MapTree {
        MapTree(
            files
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            vec![],
        )
    }

    #[test]
    fn folders_from_root_to_entry() {
        let e = |wd: &str, ep: &str| EntryPoint {
            working_dir: Some(wd.into()),
            entry_point: Some(ep.into()),
        };
        assert_eq!(e(".", "train.py").folders(), s(&[""]));
        assert_eq!(e("", "a/b/train.py --x 1").folders(), s(&["", "a", "a/b"]));
        assert_eq!(e("sub", "./x/t.py").folders(), s(&["", "sub", "sub/x"]));
        assert_eq!(
            e("sub/deep", "-m pkg.mod").folders(),
            s(&["", "sub", "sub/deep"])
        );
        // Outside the repository: only the root.
        assert_eq!(e("../..", "t.py").folders(), s(&[""]));
        assert_eq!(EntryPoint::default().folders(), s(&[""]));
    }

    #[test]
    fn task_section_wins_and_includes_resolve_from_the_root() {
        let mut t = tree(&[
            ("reqs/base.txt", "six==1.16.0\n-r extra.txt\n"),
            ("reqs/extra.txt", "# nested, relative to reqs/\nattrs\n"),
            ("requirements.txt", "never-read\n"),
        ]);
        let task = TaskRequirements {
            pip: Some(
                "requests>=2 # c\n-r reqs/base.txt\n--extra-index-url https://i/simple\n--pre\n"
                    .into(),
            ),
            org_pip: None,
        };
        let sel = select(
            &RequirementsPolicy::default(),
            &task,
            &EntryPoint::default(),
            Some(&mut t),
        )
        .unwrap();
        assert_eq!(sel.groups.len(), 1);
        assert_eq!(
            sel.groups[0].lines,
            s(&["requests>=2", "six==1.16.0", "attrs"])
        );
        assert_eq!(sel.extra_index_urls, s(&["https://i/simple"]));
        assert_eq!(sel.options, s(&["--pre"]));
        assert!(!t.1.contains(&"requirements.txt".to_string()), "{:?}", t.1);
    }

    #[test]
    fn empty_section_uses_every_requirements_txt_down_to_the_entry() {
        let mut t = tree(&[
            ("requirements.txt", "six\n"),
            ("src/requirements.txt", "-r common.txt\nattrs\n"),
            ("src/common.txt", "idna\n"),
            ("src/app/requirements.txt", "-r ../common.txt\n"),
            ("other/requirements.txt", "not-on-the-way\n"),
        ]);
        let entry = EntryPoint {
            working_dir: Some("src".into()),
            entry_point: Some("app/main.py".into()),
        };
        for pip in [None, Some(""), Some("# only a comment\n")] {
            let task = TaskRequirements {
                pip: pip.map(str::to_string),
                org_pip: None,
            };
            let sel = select(&RequirementsPolicy::default(), &task, &entry, Some(&mut t)).unwrap();
            let got: Vec<(String, Vec<String>)> = sel
                .groups
                .iter()
                .map(|g| (g.origin.clone(), g.lines.clone()))
                .collect();
            assert_eq!(
                got,
                vec![
                    ("requirements.txt".to_string(), s(&["six"])),
                    // Not in the root: the including file's folder.
                    ("src/requirements.txt".to_string(), s(&["idna", "attrs"])),
                    ("src/app/requirements.txt".to_string(), s(&["idna"])),
                ]
            );
        }
    }

    #[test]
    fn force_keys() {
        let mut t = tree(&[("requirements.txt", "from-repo\n")]);
        let task = TaskRequirements {
            pip: Some("from-task\n".into()),
            org_pip: Some("original\n".into()),
        };
        let entry = EntryPoint::default();
        let lines = |p: RequirementsPolicy, t: &mut MapTree| {
            select(&p, &task, &entry, Some(t)).unwrap().all_lines()
        };
        assert_eq!(
            lines(RequirementsPolicy::default(), &mut t),
            s(&["from-task"])
        );
        let repo = RequirementsPolicy {
            force_repo_requirements_txt: true,
            ..Default::default()
        };
        assert_eq!(lines(repo, &mut t), s(&["from-repo"]));
        let orig = RequirementsPolicy {
            force_original_requirements: true,
            ..Default::default()
        };
        assert_eq!(lines(orig.clone(), &mut t), s(&["original"]));
        // No org_pip: the task's pip.
        let task2 = TaskRequirements {
            pip: Some("from-task\n".into()),
            org_pip: None,
        };
        assert_eq!(
            select(&orig, &task2, &entry, Some(&mut t))
                .unwrap()
                .all_lines(),
            s(&["from-task"])
        );
    }

    #[test]
    fn includes_are_confined_and_missing_ones_skipped() {
        let mut t = tree(&[]);
        let task = |text: &str| TaskRequirements {
            pip: Some(text.into()),
            org_pip: None,
        };
        let e = select(
            &RequirementsPolicy::default(),
            &task("-r ../../etc/passwd\n"),
            &EntryPoint::default(),
            Some(&mut t),
        )
        .unwrap_err();
        assert!(matches!(e, RequirementsError::Escapes { .. }), "{e}");
        assert!(e.to_string().contains("../../etc/passwd"), "{e}");
        let e = select(
            &RequirementsPolicy::default(),
            &task("-r /etc/passwd\n"),
            &EntryPoint::default(),
            Some(&mut t),
        )
        .unwrap_err();
        assert!(matches!(e, RequirementsError::Escapes { .. }));
        let sel = select(
            &RequirementsPolicy::default(),
            &task("six\n-r missing.txt\n"),
            &EntryPoint::default(),
            Some(&mut t),
        )
        .unwrap();
        assert_eq!(sel.all_lines(), s(&["six"]));
        assert!(
            sel.notes.iter().any(|n| n.contains("missing.txt")),
            "{:?}",
            sel.notes
        );
        // A cycle stops with an error instead of looping.
        let mut cyc = tree(&[("a.txt", "-r b.txt\n"), ("b.txt", "-r a.txt\n")]);
        let e = select(
            &RequirementsPolicy::default(),
            &task("-r a.txt\n"),
            &EntryPoint::default(),
            Some(&mut cyc),
        )
        .unwrap_err();
        assert!(matches!(e, RequirementsError::TooDeep { .. }), "{e}");
    }

    #[test]
    fn classify_and_names() {
        assert_eq!(classify("six==1"), ReqKind::Named);
        assert_eq!(classify("pkg @ https://h/p-1.whl"), ReqKind::Url);
        assert_eq!(classify("https://h/p-1.whl"), ReqKind::Url);
        assert_eq!(classify("git+https://h/r.git@v1#egg=r"), ReqKind::Vcs);
        assert_eq!(classify("r @ git+ssh://git@h/r.git"), ReqKind::Vcs);
        assert_eq!(classify("-e git+https://h/r.git#egg=r"), ReqKind::Vcs);
        assert_eq!(classify("-e ."), ReqKind::Local { relative: true });
        assert_eq!(classify("./dist/p.whl"), ReqKind::Local { relative: true });
        assert_eq!(classify("/opt/p.whl"), ReqKind::Local { relative: false });
        assert_eq!(
            classify("p @ file:///opt/p"),
            ReqKind::Local { relative: false }
        );
        assert_eq!(requirement_name("Cython>=0.29"), Some("cython".into()));
        assert_eq!(
            requirement_name("Foo_Bar[x]==1 ; python_version>'3'"),
            Some("foo-bar".into())
        );
        assert_eq!(
            requirement_name("pkg @ https://h/p.whl"),
            Some("pkg".into())
        );
        assert_eq!(
            requirement_name("git+https://h/r.git#egg=my_pkg"),
            Some("my-pkg".into())
        );
        assert_eq!(requirement_name("git+https://h/r.git"), None);
        assert_eq!(requirement_name("-e ."), None);
    }

    #[test]
    fn plan_reorders_without_adding() {
        let g = ReqGroup {
            origin: "task requirements".into(),
            lines: s(&[
                "requests",
                "Cython==3.0",
                "horovod==0.28",
                "clearml==1.0",
                "git+https://h/r.git#egg=r",
                "numpy<2",
                "-e .",
                "pygobject",
                "clearml==2.0",
                "six",
            ]),
        };
        let steps = plan(&[g], &RequirementsPolicy::default());
        let view: Vec<(StepKind, Vec<String>, bool)> = steps
            .iter()
            .map(|s| (s.kind, s.lines.clone(), s.optional))
            .collect();
        assert_eq!(
            view,
            vec![
                (StepKind::Priority, s(&["Cython==3.0"]), false),
                (StepKind::Priority, s(&["numpy<2"]), false),
                (StepKind::Priority, s(&["pygobject"]), true),
                (
                    StepKind::Main,
                    s(&[
                        "requests",
                        "Cython==3.0",
                        "numpy<2",
                        "pygobject",
                        "six",
                        "clearml==2.0"
                    ]),
                    false
                ),
                (StepKind::Post, s(&["horovod==0.28"]), false),
                (StepKind::External, s(&["git+https://h/r.git#egg=r"]), false),
                (StepKind::Local, s(&["-e ."]), false),
            ]
        );
        // Configured lists replace the defaults; names not in the task add nothing.
        let p = RequirementsPolicy {
            priority_packages: s(&["Six"]),
            post_packages: s(&["requests", "not-listed"]),
            post_optional_packages: s(&["idna"]),
            ..Default::default()
        };
        let g = ReqGroup {
            origin: "x".into(),
            lines: s(&["numpy", "requests", "six==1.16.0", "idna"]),
        };
        let view: Vec<(StepKind, Vec<String>, bool)> = plan(&[g], &p)
            .iter()
            .map(|s| (s.kind, s.lines.clone(), s.optional))
            .collect();
        assert_eq!(
            view,
            vec![
                (StepKind::Priority, s(&["six==1.16.0"]), false),
                (StepKind::Main, s(&["numpy", "six==1.16.0"]), false),
                (StepKind::Post, s(&["requests"]), false),
                (StepKind::Post, s(&["idna"]), true),
            ]
        );
    }

    #[test]
    fn git_credentials_are_injected_only_where_they_belong() {
        let c = GitCredentials {
            user: Some("bob".into()),
            pass: Some("p@ss/w:rd".into()),
            host: None,
        };
        assert_eq!(
            with_git_credentials("git+https://github.com/o/r.git@v1#egg=r", &c),
            "git+https://bob:p%40ss%2Fw%3Ard@github.com/o/r.git@v1#egg=r"
        );
        assert_eq!(
            with_git_credentials("r @ git+ssh://git@github.com/o/r.git", &c),
            "r @ git+https://bob:p%40ss%2Fw%3Ard@github.com/o/r.git"
        );
        assert_eq!(
            with_git_credentials("-e git+git@github.com:o/r.git#egg=r", &c),
            "-e git+https://bob:p%40ss%2Fw%3Ard@github.com/o/r.git#egg=r"
        );
        for unchanged in [
            "six==1",
            "https://h/p.whl",
            "git+https://alice:tok@github.com/o/r.git",
        ] {
            assert_eq!(with_git_credentials(unchanged, &c), unchanged);
        }
        let other_host = GitCredentials {
            host: Some("gitlab.com".into()),
            ..c.clone()
        };
        assert_eq!(
            with_git_credentials("git+https://github.com/o/r.git", &other_host),
            "git+https://github.com/o/r.git"
        );
        assert!(!format!("{c:?}").contains("w:rd"));
        let masked = redact_urls(&with_git_credentials("git+https://github.com/o/r.git", &c));
        assert!(!masked.contains("w%3Ard"), "{masked}");
    }

    #[test]
    fn freeze_restores_original_lines_and_drops_secrets() {
        let originals = s(&[
            "six==1.16.0",
            "pip==23.0",
            "r @ git+https://github.com/o/r.git@main",
            "https://files.example/wheels/w-1.0-py3-none-any.whl",
            "-e ./libs/mine",
        ]);
        let freeze = s(&[
            "-e file:///runs/t.1/code/libs/mine",
            "clearml-agent==3.0.3",
            "r @ git+https://bob:secret@github.com/o/r.git@0123abcd",
            "six==1.16.0",
            "w @ file:///cache/cpu/w-1.0-py3-none-any.whl",
            "other @ https://u:p@h.example/o.whl",
        ]);
        let cached = vec![(
            "file:///cache/cpu/w-1.0-py3-none-any.whl".to_string(),
            "https://files.example/wheels/w-1.0-py3-none-any.whl".to_string(),
        )];
        let out = restore_freeze(&freeze, &originals, &cached);
        assert_eq!(
            out,
            s(&[
                "pip==23.0",
                "-e ./libs/mine",
                "r @ git+https://github.com/o/r.git@main",
                "six==1.16.0",
                "https://files.example/wheels/w-1.0-py3-none-any.whl",
                "other @ https://h.example/o.whl",
            ])
        );
    }

    #[test]
    fn org_pip_is_written_only_once() {
        let freeze = s(&["six==1.16.0"]);
        // First run: the task's pip becomes org_pip.
        let first = write_back(&json!({"pip": "six\n"}), &freeze);
        assert_eq!(first, json!({"pip": ["six==1.16.0"], "org_pip": "six\n"}));
        // A clone of a task that already ran keeps its original.
        let again = write_back(
            &json!({"pip": ["six==1.15.0"], "org_pip": "six\n", "conda": "x"}),
            &freeze,
        );
        assert_eq!(
            again,
            json!({"pip": ["six==1.16.0"], "org_pip": "six\n", "conda": "x"})
        );
        // Nothing requested: no org_pip invented.
        assert_eq!(
            write_back(&Value::Null, &freeze),
            json!({"pip": ["six==1.16.0"]})
        );
        assert_eq!(
            TaskRequirements::from_json(&json!({"pip": ["a", "b"], "org_pip": "c"})),
            TaskRequirements {
                pip: Some("a\nb".into()),
                org_pip: Some("c".into())
            }
        );
    }
}
