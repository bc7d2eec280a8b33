//! Source checkout: fetch a task's git repository through a local cache, check out the
//! recorded commit in a fresh per-run worktree, and apply the task's uncommitted diff.
//!
//! # Cache layout
//! With `agent.vcs_cache.enabled`, each repository has one bare mirror at
//! `<cache_dir>/<key>`, where `key` is the first 16 hex digits of the SHA-256 of the
//! normalized URL (scheme, credentials, trailing `/` and `.git` dropped, host lowercased,
//! so `git@host:org/repo.git` and `https://host/org/repo` share an entry). The mirror
//! holds `refs/heads/*` and `refs/tags/*` exactly as the remote has them, and its `HEAD`
//! follows the remote's default branch. `<cache_dir>/<key>.lock` is an exclusive file
//! lock held while the mirror is fetched or read, so two agents never fetch into it at
//! once; after [`LOCK_TIMEOUT`] the run uses a private throw-away mirror instead, as the
//! Python agent does. The mirror stores no remote URL, so credentials never reach disk.
//! With the cache disabled, the same code runs against a private mirror in the temp dir.
//!
//! The per-run worktree is a new repository that fetches every branch and tag from the
//! mirror (as `refs/remotes/origin/*` and `refs/tags/*`), so checkout never mutates the
//! cache. Its `origin` remote is the task's URL without credentials, `HEAD` is detached
//! at the resolved commit, submodules are updated, and the marker file
//! `.git/clearml-agent-checkout` (holding the commit) is written last: its presence is
//! what [`is_checked_out`] trusts after a crash.
//!
//! # Resolution order
//! `script.version_num` (full or abbreviated sha), else `script.tag`, else
//! `script.branch`, else the remote's default branch, then `master`, then `main`.
//! A full sha the cache already has is used without fetching (commits never change),
//! even when no branch reaches it any more.
//!
//! # Credentials
//! `git_user`/`git_pass` are offered (HTTP basic) only when both are set and, if
//! `git_host` is set, the URL's host equals it; with them, ssh URLs are cloned over
//! https instead. `force_git_ssh_protocol` turns https URLs into `git@host:path`.
//! ssh URLs try the ssh agent and then `~/.ssh/id_{ed25519,ecdsa,rsa}`. Each credential is
//! offered once: libgit2 asks again after a refusal, and the second ask fails the fetch
//! instead of looping. Every URL in logs and errors goes through [`crate::redact`], and
//! the configured password is masked wherever it appears.

use std::cell::RefCell;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::rc::Rc;
use std::time::{Duration, Instant};

use fs2::FileExt;
use git2::{
    build::CheckoutBuilder, ApplyLocation, AutotagOption, Cred, CredentialType, Diff, ErrorClass,
    ErrorCode, FetchOptions, FetchPrune, Oid, ProxyOptions, RemoteCallbacks, Repository,
    SubmoduleUpdateOptions,
};
use sha2::{Digest, Sha256};

use super::EffectFailure;
use crate::redact::{redact_urls, MASK};

/// How long to wait for another agent's fetch into the same cache entry (as upstream).
pub const LOCK_TIMEOUT: Duration = Duration::from_secs(300);

/// Written into the worktree's `.git` dir once checkout (and submodules) finished.
pub const CHECKOUT_MARKER: &str = "clearml-agent-checkout";

/// Which repository and revision a task runs (`script.*`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceSpec {
    pub repository: String,
    pub branch: Option<String>,
    pub tag: Option<String>,
    /// `script.version_num`: full or abbreviated commit sha.
    pub commit: Option<String>,
}

/// The agent's git configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VcsSettings {
    /// `agent.vcs_cache.path`
    pub cache_dir: PathBuf,
    /// `agent.vcs_cache.enabled`
    pub cache_enabled: bool,
    pub git_user: Option<String>,
    pub git_pass: Option<String>,
    /// When set, credentials (and URL translation) apply only to this host.
    pub git_host: Option<String>,
    pub force_git_ssh_protocol: bool,
}

/// Result of a checkout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceOutcome {
    pub worktree: PathBuf,
    /// The resolved full sha (to write back as `script.version_num` when it was empty).
    pub commit: String,
    /// The repository was already in the cache (it was fetched, not cloned).
    pub cache_hit: bool,
}

/// Why the source could not be prepared. URLs in it are always masked.
#[derive(Debug, thiserror::Error)]
pub enum VcsError {
    #[error("cannot fetch repository {url}: {message}")]
    Unreachable {
        url: String,
        message: String,
        /// A network failure (worth retrying), as opposed to a bad local path.
        network: bool,
    },
    #[error("authentication refused by repository {url}: {message}")]
    AuthRefused { url: String, message: String },
    #[error("commit {commit} not found in repository {url}")]
    CommitNotFound { url: String, commit: String },
    #[error("tag {tag} not found in repository {url}")]
    TagNotFound { url: String, tag: String },
    #[error("branch {branch} not found in repository {url}")]
    BranchNotFound { url: String, branch: String },
    #[error("repository {url} has no default branch (tried the remote HEAD, master and main)")]
    NoDefaultBranch { url: String },
    #[error("submodule {name} of repository {url} failed to update: {message}")]
    Submodule {
        url: String,
        name: String,
        message: String,
    },
    #[error("uncommitted diff does not apply to {}: {message}", files.join(", "))]
    DiffNotApplied { files: Vec<String>, message: String },
    #[error("{context}: {message}")]
    Local { context: String, message: String },
}

impl VcsError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, VcsError::Unreachable { network: true, .. })
    }

    fn local(context: impl Into<String>, err: impl std::fmt::Display) -> Self {
        VcsError::Local {
            context: context.into(),
            message: redact_urls(&err.to_string()),
        }
    }
}

impl From<VcsError> for EffectFailure {
    fn from(err: VcsError) -> Self {
        let retryable = err.is_retryable();
        EffectFailure {
            reason: err.to_string(),
            retryable,
        }
    }
}

// ---------------------------------------------------------------------------------------
// URL handling (pure)

/// The parts of a remote URL this module cares about.
#[derive(Debug, Clone, PartialEq, Eq)]
struct UrlParts<'a> {
    /// `https`, `ssh`, `git`, ...; `None` for scp-like `user@host:path`.
    scheme: Option<&'a str>,
    userinfo: Option<&'a str>,
    host: &'a str,
    port: Option<&'a str>,
    /// Without the leading `/`.
    path: &'a str,
}

/// A path on this machine (or `file://`), used as-is and never given credentials.
pub fn is_local_url(url: &str) -> bool {
    let url = url.trim();
    if url.starts_with("file://") {
        return true;
    }
    if url.contains("://") {
        return false;
    }
    // git's rule: scp-like syntax needs a ':' before the first '/'.
    match (url.find(':'), url.find('/')) {
        (Some(colon), Some(slash)) => slash < colon,
        (Some(colon), None) => colon == 0,
        (None, _) => true,
    }
}

fn parse_url(url: &str) -> Option<UrlParts<'_>> {
    let url = url.trim();
    if is_local_url(url) {
        return None;
    }
    let (scheme, rest, scp) = match url.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest, false),
        None => (None, url, true),
    };
    let (authority, path) = if scp {
        let colon = rest.find(':')?;
        (&rest[..colon], &rest[colon + 1..])
    } else {
        match rest.find('/') {
            Some(slash) => (&rest[..slash], &rest[slash + 1..]),
            None => (rest, ""),
        }
    };
    let (userinfo, hostport) = match authority.rfind('@') {
        Some(at) => (Some(&authority[..at]), &authority[at + 1..]),
        None => (None, authority),
    };
    let (host, port) = if scp {
        (hostport, None)
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) if !h.is_empty() && p.chars().all(|c| c.is_ascii_digit()) => (h, Some(p)),
            _ => (hostport, None),
        }
    };
    if host.is_empty() {
        return None;
    }
    Some(UrlParts {
        scheme,
        userinfo,
        host,
        port,
        path: path.trim_start_matches('/'),
    })
}

/// The host of a remote URL (`None` for local paths).
pub fn url_host(url: &str) -> Option<String> {
    parse_url(url).map(|p| p.host.to_ascii_lowercase())
}

/// Whether `git_host` (if set) names the URL's host. `git_host` may carry a scheme, a
/// user, a port or a path (`https://github.com/`); only its host name is compared.
pub fn host_matches(url: &str, git_host: Option<&str>) -> bool {
    let Some(wanted) = git_host.map(str::trim).filter(|h| !h.is_empty()) else {
        return true;
    };
    let Some(host) = url_host(url) else {
        return false;
    };
    let wanted = wanted.split_once("://").map_or(wanted, |(_, rest)| rest);
    let wanted = wanted.split('/').next().unwrap_or(wanted);
    let wanted = wanted.rsplit_once('@').map_or(wanted, |(_, h)| h);
    let wanted = match wanted.rsplit_once(':') {
        Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) => h,
        _ => wanted,
    };
    host.eq_ignore_ascii_case(wanted)
}

fn has_credentials(settings: &VcsSettings) -> bool {
    settings.git_user.as_deref().is_some_and(|u| !u.is_empty())
        && settings.git_pass.as_deref().is_some_and(|p| !p.is_empty())
}

fn is_ssh(parts: &UrlParts<'_>) -> bool {
    matches!(
        parts.scheme,
        None | Some("ssh") | Some("git+ssh") | Some("ssh+git")
    )
}

/// The URL actually fetched, as upstream rewrites it: with `force_git_ssh_protocol`,
/// `https://host/org/repo.git` → `git@host:org/repo.git`; else with `git_user`/`git_pass`,
/// `git@host:org/repo.git` or `ssh://git@host/org/repo.git` → `https://host/org/repo.git`
/// (the ssh port is dropped: it means nothing to https). Both only for `git_host` when
/// set. Local paths, `file://` and `git://` URLs are returned unchanged.
pub fn translate_url(url: &str, settings: &VcsSettings) -> String {
    let trimmed = url.trim();
    let Some(parts) = parse_url(trimmed) else {
        return trimmed.to_string();
    };
    if !host_matches(trimmed, settings.git_host.as_deref()) {
        return trimmed.to_string();
    }
    if settings.force_git_ssh_protocol {
        if matches!(parts.scheme, Some("http") | Some("https")) {
            return format!("git@{}:{}", parts.host, parts.path);
        }
    } else if has_credentials(settings) && is_ssh(&parts) {
        return format!("https://{}/{}", parts.host, parts.path);
    }
    trimmed.to_string()
}

/// The URL without http(s) credentials (ssh user names such as `git@` are kept).
pub fn strip_credentials(url: &str) -> String {
    let trimmed = url.trim();
    match parse_url(trimmed) {
        Some(p) if p.userinfo.is_some() && matches!(p.scheme, Some("http") | Some("https")) => {
            let port = p.port.map(|p| format!(":{p}")).unwrap_or_default();
            format!(
                "{}://{}{}/{}",
                p.scheme.unwrap_or("https"),
                p.host,
                port,
                p.path
            )
        }
        _ => trimmed.to_string(),
    }
}

/// The cache identity of a URL: the same repository reached over ssh or https, with or
/// without credentials, `.git` or a trailing `/`, maps to one entry.
pub fn normalize_url(url: &str) -> String {
    let trimmed = url.trim();
    if is_local_url(trimmed) {
        let path = trimmed.strip_prefix("file://").unwrap_or(trimmed);
        let path = path.trim_end_matches('/');
        return path.strip_suffix(".git").unwrap_or(path).to_string();
    }
    match parse_url(trimmed) {
        Some(p) => {
            let path = p.path.trim_end_matches('/');
            let path = path.strip_suffix(".git").unwrap_or(path);
            // The ssh port is not part of the repository's identity; an http(s) or git
            // daemon port can be (two servers on one host).
            let port = match (p.port, is_ssh(&p)) {
                (Some(port), false) => format!(":{port}"),
                _ => String::new(),
            };
            format!("{}{}/{}", p.host.to_ascii_lowercase(), port, path)
        }
        None => trimmed.to_string(),
    }
}

/// Name of the cache entry for a URL: `sha256(normalize_url(url))[..16]`.
pub fn cache_key(url: &str) -> String {
    let digest = Sha256::digest(normalize_url(url).as_bytes());
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// Mask URL passwords and the configured git password anywhere in `text`.
pub fn mask_secrets(text: &str, settings: &VcsSettings) -> String {
    let mut out = redact_urls(text);
    if let Some(pass) = settings.git_pass.as_deref().filter(|p| p.len() >= 3) {
        out = out.replace(pass, MASK);
    }
    out
}

// ---------------------------------------------------------------------------------------
// Diffs (pure)

/// Files a diff touches, from its `diff --git a/X b/Y`, `--- a/X` and `+++ b/Y` headers.
pub fn diff_files(diff: &str) -> Vec<String> {
    fn clean(name: &str) -> Option<String> {
        let name = name.trim().trim_matches('"');
        let name = name.split('\t').next().unwrap_or(name);
        if name == "/dev/null" || name.is_empty() {
            return None;
        }
        let name = name
            .strip_prefix("a/")
            .or_else(|| name.strip_prefix("b/"))
            .unwrap_or(name);
        Some(name.to_string())
    }
    let mut files: Vec<String> = Vec::new();
    let mut add = |name: Option<String>| {
        if let Some(n) = name {
            if !files.contains(&n) {
                files.push(n);
            }
        }
    };
    for line in diff.lines() {
        if let Some(rest) = line.strip_prefix("diff --git ") {
            // `a/X b/X`: the new name is after the last " b/".
            match rest.rfind(" b/") {
                Some(pos) => add(clean(&rest[pos + 1..])),
                None => add(clean(rest)),
            }
        } else if let Some(rest) = line.strip_prefix("+++ ") {
            add(clean(rest));
        } else if let Some(rest) = line.strip_prefix("--- ") {
            add(clean(rest));
        }
    }
    files
}

/// Files `git apply` complained about, from lines such as `error: patch failed: X:12`
/// or `error: X: No such file or directory`.
pub fn failed_files_from_git(stderr: &str) -> Vec<String> {
    const REASONS: [&str; 7] = [
        "patch does not apply",
        "No such file or directory",
        "already exists in working directory",
        "does not exist in index",
        "does not match index",
        "file exists",
        "wrong type",
    ];
    let mut files: Vec<String> = Vec::new();
    for line in stderr.lines() {
        let Some(rest) = line.trim().strip_prefix("error: ") else {
            continue;
        };
        let name = if let Some(loc) = rest.strip_prefix("patch failed: ") {
            loc.rsplit_once(':').map_or(loc, |(f, _)| f)
        } else if let Some((name, why)) = rest.split_once(": ") {
            if !REASONS.iter().any(|r| why.starts_with(r)) {
                continue;
            }
            name
        } else {
            continue;
        };
        let name = name.to_string();
        if !files.contains(&name) {
            files.push(name);
        }
    }
    files
}

// ---------------------------------------------------------------------------------------
// Fetching

/// What the credentials callback offered, so a failure can be told apart from a network one.
#[derive(Default)]
struct AuthState {
    userpass_offered: bool,
    default_offered: bool,
    ssh_tried: usize,
    /// Set when the callback gave up: credentials were refused or none were configured.
    refused: Option<String>,
}

fn ssh_key_candidates() -> Vec<PathBuf> {
    let Some(home) = std::env::var_os("HOME") else {
        return Vec::new();
    };
    let ssh = PathBuf::from(home).join(".ssh");
    ["id_ed25519", "id_ecdsa", "id_rsa"]
        .iter()
        .map(|k| ssh.join(k))
        .filter(|p| p.is_file())
        .collect()
}

/// Remote callbacks with credentials (each offered once) and coarse progress to `log`.
fn callbacks<'a>(
    settings: &'a VcsSettings,
    auth: Rc<RefCell<AuthState>>,
    log: &'a mut dyn FnMut(&str),
) -> RemoteCallbacks<'a> {
    let mut cbs = RemoteCallbacks::new();
    let ssh_keys = ssh_key_candidates();
    cbs.credentials(move |url, username_from_url, allowed| {
        let mut st = auth.borrow_mut();
        let host = url_host(url).unwrap_or_else(|| "this host".into());
        if allowed.contains(CredentialType::USERNAME) {
            return Cred::username(username_from_url.unwrap_or("git"));
        }
        if allowed.contains(CredentialType::USER_PASS_PLAINTEXT) {
            let usable =
                has_credentials(settings) && host_matches(url, settings.git_host.as_deref());
            if usable && !st.userpass_offered {
                st.userpass_offered = true;
                return Cred::userpass_plaintext(
                    settings.git_user.as_deref().unwrap_or_default(),
                    settings.git_pass.as_deref().unwrap_or_default(),
                );
            }
            let why = if st.userpass_offered {
                format!("git_user/git_pass were refused by {host}")
            } else if has_credentials(settings) {
                format!(
                    "{host} asks for credentials; git_user/git_pass are set for another git_host"
                )
            } else {
                format!(
                    "{host} asks for credentials and none are configured (agent.git_user/git_pass)"
                )
            };
            st.refused = Some(why.clone());
            return Err(git2::Error::from_str(&why));
        }
        if allowed.contains(CredentialType::SSH_KEY) {
            let user = username_from_url.unwrap_or("git");
            let agent = std::env::var_os("SSH_AUTH_SOCK").is_some();
            let attempt = st.ssh_tried;
            st.ssh_tried += 1;
            let agent_slots = usize::from(agent);
            if attempt < agent_slots {
                return Cred::ssh_key_from_agent(user);
            }
            if let Some(key) = ssh_keys.get(attempt - agent_slots) {
                return Cred::ssh_key(user, None, key, None);
            }
            let why = format!("no ssh key (agent or ~/.ssh/id_*) was accepted by {host}");
            st.refused = Some(why.clone());
            return Err(git2::Error::from_str(&why));
        }
        if allowed.contains(CredentialType::DEFAULT) && !st.default_offered {
            st.default_offered = true;
            return Cred::default();
        }
        let why = format!("{host} refused the credentials offered");
        st.refused = Some(why.clone());
        Err(git2::Error::from_str(&why))
    });
    let mut next_pct = 10;
    cbs.transfer_progress(move |p| {
        let total = p.total_objects();
        if let Some(pct) = (p.received_objects() * 100).checked_div(total) {
            if pct >= next_pct {
                log(&format!(
                    "Received {pct}% of objects ({}/{}, {} KiB)",
                    p.received_objects(),
                    total,
                    p.received_bytes() / 1024
                ));
                next_pct = (pct / 10 + 1) * 10;
            }
        }
        true
    });
    cbs
}

/// Fetch all branches and tags of `url` into the bare `mirror` (refs mapped one to one),
/// and point the mirror's `HEAD` at the remote's default branch.
fn fetch_into_mirror(
    mirror: &Repository,
    url: &str,
    settings: &VcsSettings,
    log: &mut dyn FnMut(&str),
) -> Result<(), VcsError> {
    let masked = mask_secrets(url, settings);
    let auth = Rc::new(RefCell::new(AuthState::default()));
    let mut remote = mirror
        .remote_anonymous(url)
        .map_err(|e| classify_fetch_error(e, &masked, url, &auth, settings))?;
    let result = {
        let mut opts = FetchOptions::new();
        let mut proxy = ProxyOptions::new();
        proxy.auto();
        opts.remote_callbacks(callbacks(settings, auth.clone(), log))
            .proxy_options(proxy)
            .prune(FetchPrune::On)
            .download_tags(AutotagOption::All)
            .update_fetchhead(false);
        remote.fetch(
            &["+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*"],
            Some(&mut opts),
            None,
        )
    };
    result.map_err(|e| classify_fetch_error(e, &masked, url, &auth, settings))?;
    // The advertisement stays readable after the fetch disconnects.
    if let Ok(head) = remote.default_branch() {
        if let Some(name) = head.as_str().filter(|n| n.starts_with("refs/heads/")) {
            // Best effort: only used when the task names neither branch nor commit.
            let _ = mirror.set_head(name);
        }
    }
    Ok(())
}

fn classify_fetch_error(
    err: git2::Error,
    masked_url: &str,
    url: &str,
    auth: &Rc<RefCell<AuthState>>,
    settings: &VcsSettings,
) -> VcsError {
    let message = mask_secrets(err.message(), settings);
    if let Some(why) = auth.borrow().refused.clone() {
        return VcsError::AuthRefused {
            url: masked_url.to_string(),
            message: why,
        };
    }
    let lower = message.to_ascii_lowercase();
    if err.code() == ErrorCode::Auth
        || lower.contains("authentication")
        || lower.contains("401")
        || lower.contains("403")
    {
        return VcsError::AuthRefused {
            url: masked_url.to_string(),
            message,
        };
    }
    let network = !is_local_url(url)
        && matches!(
            err.class(),
            ErrorClass::Net | ErrorClass::Http | ErrorClass::Ssh | ErrorClass::Ssl | ErrorClass::Os
        );
    VcsError::Unreachable {
        url: masked_url.to_string(),
        message,
        network,
    }
}

// ---------------------------------------------------------------------------------------
// Cache entries

/// A bare mirror ready to read, with the lock (if any) held while it lives.
struct Mirror {
    repo: Repository,
    /// The entry existed before this call (fetched, not cloned).
    cache_hit: bool,
    _lock: Option<File>,
    /// Removed on drop: a private mirror (cache disabled or lock timed out).
    private_dir: Option<PathBuf>,
}

impl Drop for Mirror {
    fn drop(&mut self) {
        if let Some(dir) = &self.private_dir {
            let _ = fs::remove_dir_all(dir);
        }
    }
}

fn private_dir() -> PathBuf {
    std::env::temp_dir().join(format!(
        "clearml-agent-vcs-{}",
        uuid::Uuid::new_v4().simple()
    ))
}

fn lock_entry(lock_path: &Path, log: &mut dyn FnMut(&str)) -> Result<Option<File>, VcsError> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(lock_path)
        .map_err(|e| VcsError::local(format!("opening {}", lock_path.display()), e))?;
    let start = Instant::now();
    let mut told = false;
    loop {
        match file.try_lock_exclusive() {
            Ok(()) => return Ok(Some(file)),
            Err(e)
                if e.kind() == io::ErrorKind::WouldBlock
                    || e.raw_os_error() == fs2::lock_contended_error().raw_os_error() =>
            {
                if start.elapsed() >= LOCK_TIMEOUT {
                    return Ok(None);
                }
                if !told {
                    log(&format!(
                        "Waiting for another agent to release {}",
                        lock_path.display()
                    ));
                    told = true;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => {
                return Err(VcsError::local(
                    format!("locking {}", lock_path.display()),
                    e,
                ))
            }
        }
    }
}

/// The mirror for `spec.repository`, up to date unless `spec.commit` is a full sha it
/// already has (commits never change, so no fetch is needed).
fn open_mirror(
    settings: &VcsSettings,
    spec: &SourceSpec,
    log: &mut dyn FnMut(&str),
) -> Result<Mirror, VcsError> {
    let url = translate_url(&spec.repository, settings);
    let masked = mask_secrets(&url, settings);
    let mut entry: Option<(PathBuf, File)> = None;
    if settings.cache_enabled {
        fs::create_dir_all(&settings.cache_dir).map_err(|e| {
            VcsError::local(
                format!("creating cache dir {}", settings.cache_dir.display()),
                e,
            )
        })?;
        let key = cache_key(&spec.repository);
        let lock_path = settings.cache_dir.join(format!("{key}.lock"));
        match lock_entry(&lock_path, log)? {
            Some(lock) => entry = Some((settings.cache_dir.join(&key), lock)),
            None => log(&format!(
                "Cache entry {key} still locked after {}s; using a private clone",
                LOCK_TIMEOUT.as_secs()
            )),
        }
    }
    let (path, lock, private) = match entry {
        Some((path, lock)) => (path, Some(lock), None),
        None => {
            let dir = private_dir();
            (dir.clone(), None, Some(dir))
        }
    };
    // Existing and readable = hit; a half-written or corrupt entry is cloned afresh.
    let existing = if path.exists() {
        match Repository::open_bare(&path) {
            Ok(repo) => Some(repo),
            Err(e) => {
                log(&format!(
                    "Cached repository at {} is unusable ({}); cloning again",
                    path.display(),
                    e.message()
                ));
                fs::remove_dir_all(&path)
                    .map_err(|e| VcsError::local(format!("removing {}", path.display()), e))?;
                None
            }
        }
    } else {
        None
    };
    let cache_hit = existing.is_some();
    let repo = match existing {
        Some(repo) => repo,
        None => Repository::init_bare(&path)
            .map_err(|e| VcsError::local(format!("creating {}", path.display()), e.message()))?,
    };
    let mut mirror = Mirror {
        repo,
        cache_hit,
        _lock: lock,
        private_dir: private,
    };
    if cache_hit {
        let pinned = spec
            .commit
            .as_deref()
            .map(str::trim)
            .filter(|c| c.len() == 40)
            .and_then(|c| Oid::from_str(c).ok())
            .is_some_and(|oid| mirror.repo.find_commit(oid).is_ok());
        if pinned {
            log(&format!(
                "Using cached repository {masked} (commit already cached, not fetching)"
            ));
            return Ok(mirror);
        }
        log(&format!(
            "Using cached repository {masked}; fetching updates"
        ));
        if let Err(err) = fetch_into_mirror(&mirror.repo, &url, settings, log) {
            // Offline but the pinned commit may still be there: let resolution decide.
            if spec.commit.is_some() && err.is_retryable() {
                log(&format!("Fetch failed, trying the cached copy: {err}"));
            } else {
                return Err(err);
            }
        }
    } else {
        log(&format!("Cloning {masked}"));
        if let Err(err) = fetch_into_mirror(&mirror.repo, &url, settings, log) {
            // Don't leave an empty entry that would later count as a cache hit.
            let _ = fs::remove_dir_all(&path);
            mirror.private_dir = None;
            return Err(err);
        }
    }
    Ok(mirror)
}

// ---------------------------------------------------------------------------------------
// Resolution

/// A resolved revision and how it was named, for the log.
struct Resolved {
    oid: Oid,
    label: String,
}

fn resolve(
    repo: &Repository,
    spec: &SourceSpec,
    masked_url: &str,
    heads: &str,
) -> Result<Resolved, VcsError> {
    let peel = |name: &str| -> Option<Oid> {
        repo.find_reference(name)
            .ok()?
            .peel_to_commit()
            .ok()
            .map(|c| c.id())
    };
    if let Some(commit) = spec
        .commit
        .as_deref()
        .map(str::trim)
        .filter(|c| !c.is_empty())
    {
        let not_found = || VcsError::CommitNotFound {
            url: masked_url.to_string(),
            commit: commit.to_string(),
        };
        // Only hex: a version_num is a sha, never a ref name or revision expression.
        if commit.len() < 4 || !commit.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(not_found());
        }
        let oid = repo
            .revparse_single(commit)
            .and_then(|o| o.peel_to_commit())
            .map_err(|_| not_found())?
            .id();
        return Ok(Resolved {
            oid,
            label: format!("commit {commit}"),
        });
    }
    if let Some(tag) = spec.tag.as_deref().map(str::trim).filter(|t| !t.is_empty()) {
        let tag = tag.strip_prefix("refs/tags/").unwrap_or(tag);
        let oid = peel(&format!("refs/tags/{tag}")).ok_or_else(|| VcsError::TagNotFound {
            url: masked_url.to_string(),
            tag: tag.to_string(),
        })?;
        return Ok(Resolved {
            oid,
            label: format!("tag {tag}"),
        });
    }
    if let Some(branch) = spec
        .branch
        .as_deref()
        .map(str::trim)
        .filter(|b| !b.is_empty())
    {
        let short = branch
            .strip_prefix("refs/heads/")
            .or_else(|| branch.strip_prefix("refs/remotes/origin/"))
            .or_else(|| branch.strip_prefix("origin/"))
            .unwrap_or(branch);
        let oid = peel(&format!("{heads}{short}"))
            // A branch literally named "origin/x" is rare but legal.
            .or_else(|| peel(&format!("{heads}{branch}")))
            .ok_or_else(|| VcsError::BranchNotFound {
                url: masked_url.to_string(),
                branch: branch.to_string(),
            })?;
        return Ok(Resolved {
            oid,
            label: format!("branch {short}"),
        });
    }
    // The mirror's HEAD follows the remote default branch.
    let default = repo
        .find_reference("HEAD")
        .ok()
        .and_then(|h| h.symbolic_target().map(str::to_string))
        .and_then(|t| t.strip_prefix("refs/heads/").map(str::to_string));
    for name in default.iter().map(String::as_str).chain(["master", "main"]) {
        if let Some(oid) = peel(&format!("{heads}{name}")) {
            return Ok(Resolved {
                oid,
                label: format!("default branch {name}"),
            });
        }
    }
    Err(VcsError::NoDefaultBranch {
        url: masked_url.to_string(),
    })
}

// ---------------------------------------------------------------------------------------
// Public operations

/// Read `path` (relative to the repository root) at the commit `spec` resolves to,
/// through the cache and without a checkout. `Ok(None)` when the file is not there.
pub fn read_file_at(
    settings: &VcsSettings,
    spec: &SourceSpec,
    path: &str,
    log: &mut dyn FnMut(&str),
) -> Result<Option<String>, VcsError> {
    let masked = mask_secrets(&translate_url(&spec.repository, settings), settings);
    let mirror = open_mirror(settings, spec, log)?;
    let resolved = resolve(&mirror.repo, spec, &masked, "refs/heads/")?;
    let tree = mirror
        .repo
        .find_commit(resolved.oid)
        .and_then(|c| c.tree())
        .map_err(|e| VcsError::local(format!("reading commit {}", resolved.oid), e.message()))?;
    let entry = match tree.get_path(Path::new(path.trim_start_matches('/'))) {
        Ok(entry) => entry,
        Err(e) if e.code() == ErrorCode::NotFound => return Ok(None),
        Err(e) => {
            return Err(VcsError::local(
                format!("reading {path} at {}", resolved.oid),
                e.message(),
            ))
        }
    };
    let Ok(blob) = entry.to_object(&mirror.repo).and_then(|o| o.peel_to_blob()) else {
        return Ok(None); // a directory or submodule, not a file
    };
    Ok(Some(String::from_utf8_lossy(blob.content()).into_owned()))
}

/// Check out `spec` into `worktree` (removed first if it exists: a leftover of a crashed
/// attempt), detached at the resolved commit, through the cache.
pub fn checkout(
    settings: &VcsSettings,
    spec: &SourceSpec,
    worktree: &Path,
    log: &mut dyn FnMut(&str),
) -> Result<SourceOutcome, VcsError> {
    let start = Instant::now();
    let masked = mask_secrets(&translate_url(&spec.repository, settings), settings);
    let mirror = open_mirror(settings, spec, log)?;
    let resolved = resolve(&mirror.repo, spec, &masked, "refs/heads/")?;

    if worktree.exists() {
        fs::remove_dir_all(worktree)
            .map_err(|e| VcsError::local(format!("removing old {}", worktree.display()), e))?;
    }
    let repo = Repository::init(worktree)
        .map_err(|e| VcsError::local(format!("creating {}", worktree.display()), e.message()))?;
    let wt_err = |what: &str, e: git2::Error| {
        VcsError::local(format!("{what} in {}", worktree.display()), e.message())
    };
    let mirror_path = mirror.repo.path().to_string_lossy().into_owned();
    {
        let mut from_mirror = repo
            .remote_anonymous(&mirror_path)
            .map_err(|e| wt_err("reading the cache", e))?;
        let mut opts = FetchOptions::new();
        opts.download_tags(AutotagOption::All)
            .update_fetchhead(false);
        from_mirror
            .fetch(
                &[
                    "+refs/heads/*:refs/remotes/origin/*",
                    "+refs/tags/*:refs/tags/*",
                ],
                Some(&mut opts),
                None,
            )
            .map_err(|e| wt_err("copying the cached repository", e))?;
        if repo.find_commit(resolved.oid).is_err() {
            // Reachable from no branch or tag any more (its branch was deleted upstream
            // after the cache got it). The local transport only sends what a ref
            // advertises, so pin it under a private ref for the length of this fetch.
            const PIN: &str = "refs/clearml-agent/checkout";
            mirror
                .repo
                .reference(PIN, resolved.oid, true, "pin for checkout")
                .map_err(|e| VcsError::local("pinning the commit in the cache", e.message()))?;
            let fetched = from_mirror.fetch(&[format!("+{PIN}:{PIN}")], Some(&mut opts), None);
            let _ = mirror.repo.find_reference(PIN).and_then(|mut r| r.delete());
            let _ = repo.find_reference(PIN).and_then(|mut r| r.delete());
            fetched.map_err(|e| wt_err(&format!("copying commit {}", resolved.oid), e))?;
        }
    }
    if let Some(default) = mirror
        .repo
        .find_reference("HEAD")
        .ok()
        .and_then(|h| h.symbolic_target().map(str::to_string))
        .and_then(|t| t.strip_prefix("refs/heads/").map(str::to_string))
    {
        let target = format!("refs/remotes/origin/{default}");
        if repo.find_reference(&target).is_ok() {
            let _ = repo.reference_symbolic("refs/remotes/origin/HEAD", &target, true, "clone");
        }
    }
    let cache_hit = mirror.cache_hit;
    drop(mirror); // release the cache lock before the (possibly slow) checkout

    repo.remote("origin", &strip_credentials(&spec.repository))
        .map_err(|e| wt_err("setting origin", e))?;
    repo.set_head_detached(resolved.oid)
        .map_err(|e| wt_err(&format!("detaching HEAD at {}", resolved.oid), e))?;
    repo.checkout_head(Some(CheckoutBuilder::new().force()))
        .map_err(|e| wt_err(&format!("checking out {}", resolved.oid), e))?;
    update_submodules(&repo, settings, &masked, log)?;

    let sha = resolved.oid.to_string();
    fs::write(repo.path().join(CHECKOUT_MARKER), format!("{sha}\n"))
        .map_err(|e| VcsError::local(format!("writing marker in {}", worktree.display()), e))?;
    log(&format!("Checked out {sha} ({})", resolved.label));
    log(&format!(
        "Repository {masked} ready in {:.1}s",
        start.elapsed().as_secs_f64()
    ));
    Ok(SourceOutcome {
        worktree: worktree.to_path_buf(),
        commit: sha,
        cache_hit,
    })
}

fn update_submodules(
    repo: &Repository,
    settings: &VcsSettings,
    masked_url: &str,
    log: &mut dyn FnMut(&str),
) -> Result<(), VcsError> {
    let submodules = repo
        .submodules()
        .map_err(|e| VcsError::local("reading .gitmodules", e.message()))?;
    for mut sm in submodules {
        let name = sm.name().unwrap_or("?").to_string();
        let sm_url = sm.url().unwrap_or_default().to_string();
        log(&format!(
            "Updating submodule {name} from {}",
            mask_secrets(&sm_url, settings)
        ));
        let auth = Rc::new(RefCell::new(AuthState::default()));
        let result = {
            let mut fetch = FetchOptions::new();
            fetch.remote_callbacks(callbacks(settings, auth.clone(), log));
            let mut opts = SubmoduleUpdateOptions::new();
            opts.fetch(fetch);
            sm.update(true, Some(&mut opts))
        };
        result.map_err(|e| VcsError::Submodule {
            url: masked_url.to_string(),
            name: name.clone(),
            message: auth
                .borrow()
                .refused
                .clone()
                .unwrap_or_else(|| mask_secrets(e.message(), settings)),
        })?;
        let sub = sm.open().map_err(|e| VcsError::Submodule {
            url: masked_url.to_string(),
            name: name.clone(),
            message: e.message().to_string(),
        })?;
        update_submodules(&sub, settings, masked_url, log)?;
    }
    Ok(())
}

/// Whether `worktree` holds a finished checkout of `commit` (full sha, or a prefix of at
/// least 7 digits): HEAD is there and the completion marker names it.
pub fn is_checked_out(worktree: &Path, commit: &str) -> bool {
    let commit = commit.trim().to_ascii_lowercase();
    if commit.len() < 7 {
        return false;
    }
    let Ok(repo) = Repository::open(worktree) else {
        return false;
    };
    let Some(head) = repo
        .head()
        .ok()
        .and_then(|h| h.peel_to_commit().ok())
        .map(|c| c.id().to_string())
    else {
        return false;
    };
    let marker = fs::read_to_string(repo.path().join(CHECKOUT_MARKER)).unwrap_or_default();
    head.starts_with(&commit) && marker.trim() == head
}

/// Apply the task's uncommitted changes (`script.diff`) to `worktree`. libgit2 first;
/// when it refuses (it is stricter than git about context and whitespace), `git apply`.
/// Returns whether anything was applied.
pub fn apply_diff(
    worktree: &Path,
    diff: &str,
    log: &mut dyn FnMut(&str),
) -> Result<bool, VcsError> {
    if diff.trim().is_empty() {
        return Ok(false);
    }
    let mut text = diff.to_string();
    if !text.ends_with('\n') {
        text.push('\n');
    }
    let files = diff_files(&text);
    let libgit2_error = match Repository::open(worktree) {
        Ok(repo) => match Diff::from_buffer(text.as_bytes())
            .and_then(|d| repo.apply(&d, ApplyLocation::WorkDir, None))
        {
            Ok(()) => {
                log(&format!(
                    "Applied uncommitted changes to {} file(s): {}",
                    files.len(),
                    files.join(", ")
                ));
                return Ok(true);
            }
            Err(e) => e.message().to_string(),
        },
        Err(e) => e.message().to_string(),
    };
    log(&format!(
        "libgit2 could not apply the diff ({libgit2_error}); trying git apply"
    ));

    // Inside .git so the patch file itself never shows up as an untracked change.
    let git_dir = worktree.join(".git");
    let patch_dir = if git_dir.is_dir() {
        git_dir
    } else {
        std::env::temp_dir()
    };
    // Unique per call: several runs of one agent may apply diffs at the same time.
    let patch = patch_dir.join(format!(
        "clearml-agent-{}.diff",
        uuid::Uuid::new_v4().simple()
    ));
    fs::write(&patch, &text)
        .map_err(|e| VcsError::local(format!("writing {}", patch.display()), e))?;
    let output = Command::new("git")
        .args(["apply", "--whitespace=nowarn", "--unidiff-zero"])
        .arg(&patch)
        .current_dir(worktree)
        .env("GIT_TERMINAL_PROMPT", "0")
        .output();
    let _ = fs::remove_file(&patch);
    let output = match output {
        Ok(o) => o,
        Err(e) => {
            return Err(VcsError::DiffNotApplied {
                files,
                message: format!("{libgit2_error}; and git could not be run: {e}"),
            })
        }
    };
    if output.status.success() {
        log(&format!(
            "Applied uncommitted changes with git apply to {} file(s): {}",
            files.len(),
            files.join(", ")
        ));
        return Ok(true);
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let failed = failed_files_from_git(&stderr);
    let message = stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .take(8)
        .collect::<Vec<_>>()
        .join("; ");
    Err(VcsError::DiffNotApplied {
        files: if failed.is_empty() { files } else { failed },
        message: if message.is_empty() {
            libgit2_error
        } else {
            message
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds(host: Option<&str>) -> VcsSettings {
        VcsSettings {
            git_user: Some("bob".into()),
            git_pass: Some("hunter22".into()),
            git_host: host.map(str::to_string),
            ..Default::default()
        }
    }

    #[test]
    fn ssh_becomes_https_only_with_credentials_for_the_host() {
        let s = creds(None);
        assert_eq!(
            translate_url("git@github.com:org/repo.git", &s),
            "https://github.com/org/repo.git"
        );
        assert_eq!(
            translate_url("ssh://git@github.com:2222/org/repo.git", &s),
            "https://github.com/org/repo.git"
        );
        assert_eq!(
            translate_url("https://github.com/org/repo.git", &s),
            "https://github.com/org/repo.git"
        );
        // No credentials: untouched.
        let none = VcsSettings::default();
        assert_eq!(
            translate_url("git@github.com:o/r.git", &none),
            "git@github.com:o/r.git"
        );
        // Only a user, no password: untouched.
        let half = VcsSettings {
            git_pass: None,
            ..creds(None)
        };
        assert_eq!(
            translate_url("git@github.com:o/r.git", &half),
            "git@github.com:o/r.git"
        );
        // Credentials for another host: untouched.
        let other = creds(Some("gitlab.com"));
        assert_eq!(
            translate_url("git@github.com:o/r.git", &other),
            "git@github.com:o/r.git"
        );
        let same = creds(Some("https://GitHub.com/"));
        assert_eq!(
            translate_url("git@github.com:o/r.git", &same),
            "https://github.com/o/r.git"
        );
    }

    #[test]
    fn force_ssh_turns_https_into_scp_syntax() {
        let s = VcsSettings {
            force_git_ssh_protocol: true,
            ..creds(None)
        };
        assert_eq!(
            translate_url("https://user:tok@github.com:443/org/repo.git", &s),
            "git@github.com:org/repo.git"
        );
        assert_eq!(
            translate_url("git@github.com:o/r.git", &s),
            "git@github.com:o/r.git"
        );
        let limited = VcsSettings {
            git_host: Some("gitlab.com".into()),
            ..s.clone()
        };
        assert_eq!(
            translate_url("https://github.com/o/r.git", &limited),
            "https://github.com/o/r.git"
        );
    }

    #[test]
    fn local_paths_and_other_schemes_are_left_alone() {
        let s = VcsSettings {
            force_git_ssh_protocol: true,
            ..creds(None)
        };
        for url in [
            "/srv/repo",
            "./repo",
            "file:///srv/repo.git",
            "repo",
            "C/x:y",
        ] {
            assert!(is_local_url(url), "{url}");
            assert_eq!(translate_url(url, &s), url);
        }
        assert!(!is_local_url("git@host:x/y"));
        assert!(!is_local_url("host:x/y"));
        assert_eq!(translate_url("git://host/x.git", &s), "git://host/x.git");
        let creds_only = creds(None);
        assert_eq!(
            translate_url("git://host/x.git", &creds_only),
            "git://host/x.git"
        );
    }

    #[test]
    fn hosts_are_extracted_and_matched() {
        assert_eq!(
            url_host("https://u:p@Example.COM:8443/x").as_deref(),
            Some("example.com")
        );
        assert_eq!(
            url_host("git@github.com:o/r").as_deref(),
            Some("github.com")
        );
        assert_eq!(url_host("ssh://git@h:22/o/r").as_deref(), Some("h"));
        assert_eq!(url_host("/local/path"), None);
        assert!(host_matches("https://github.com/o/r", None));
        assert!(host_matches("https://github.com/o/r", Some("")));
        assert!(host_matches("https://github.com/o/r", Some("github.com")));
        assert!(host_matches(
            "git@github.com:o/r",
            Some("git@github.com:22")
        ));
        assert!(!host_matches(
            "https://github.com.evil.io/o/r",
            Some("github.com")
        ));
        assert!(!host_matches("https://gitlab.com/o/r", Some("github.com")));
        assert!(!host_matches("/local", Some("github.com")));
    }

    #[test]
    fn cache_key_ignores_scheme_credentials_and_suffixes() {
        let same = [
            "https://github.com/org/repo.git",
            "https://bob:tok@GitHub.com/org/repo",
            "git@github.com:org/repo.git",
            "ssh://git@github.com:22/org/repo.git/",
            "  https://github.com/org/repo/  ",
        ];
        for url in same {
            assert_eq!(normalize_url(url), "github.com/org/repo", "{url}");
            assert_eq!(cache_key(url), cache_key(same[0]), "{url}");
        }
        assert_eq!(cache_key(same[0]).len(), 16);
        assert!(cache_key(same[0]).chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(
            cache_key(same[0]),
            cache_key("https://github.com/org/other.git")
        );
        assert_ne!(cache_key("http://h:8080/r"), cache_key("http://h:9090/r"));
        assert_eq!(normalize_url("file:///srv/repo.git/"), "/srv/repo");
        assert_eq!(cache_key("file:///srv/repo"), cache_key("/srv/repo.git"));
    }

    #[test]
    fn credentials_are_stripped_and_masked() {
        assert_eq!(
            strip_credentials("https://bob:tok@host:8443/o/r.git"),
            "https://host:8443/o/r.git"
        );
        assert_eq!(
            strip_credentials("https://tok@host/o/r"),
            "https://host/o/r"
        );
        assert_eq!(strip_credentials("git@host:o/r.git"), "git@host:o/r.git");
        assert_eq!(strip_credentials("/srv/r"), "/srv/r");
        let s = creds(None);
        let masked = mask_secrets("fetch https://bob:tok@host/x failed; pass hunter22", &s);
        assert!(
            !masked.contains("tok@") && !masked.contains("hunter22"),
            "{masked}"
        );
        assert!(masked.contains("bob:********@host"), "{masked}");
    }

    #[test]
    fn diff_file_names_come_from_the_headers() {
        let diff = "diff --git a/src/m.py b/src/m.py\nindex 1..2 100644\n--- a/src/m.py\n\
                    +++ b/src/m.py\n@@ -1 +1 @@\n-a\n+b\n\
                    diff --git a/new.txt b/new.txt\nnew file mode 100644\n--- /dev/null\n\
                    +++ b/new.txt\n@@ -0,0 +1 @@\n+x\n\
                    diff --git a/old.txt b/old.txt\ndeleted file mode 100644\n--- a/old.txt\n\
                    +++ /dev/null\n@@ -1 +0,0 @@\n-y\n";
        assert_eq!(diff_files(diff), ["src/m.py", "new.txt", "old.txt"]);
        assert_eq!(
            diff_files("--- a/x.py\t2024-01-01\n+++ b/x.py\t2024-01-02\n@@ -1 +1 @@\n"),
            ["x.py"]
        );
        assert!(diff_files("").is_empty());
    }

    #[test]
    fn failed_files_come_from_git_apply_errors() {
        let stderr = "error: patch failed: src/main.py:12\n\
                      error: src/main.py: patch does not apply\n\
                      error: gone.txt: No such file or directory\n\
                      error: new.txt: already exists in working directory\n\
                      error: corrupt patch at line 7\n\
                      error: No valid patches in input (allow with \"--allow-empty\")\n";
        assert_eq!(
            failed_files_from_git(stderr),
            ["src/main.py", "gone.txt", "new.txt"]
        );
    }

    #[test]
    fn errors_name_what_failed_and_map_to_effect_failures() {
        let err = VcsError::CommitNotFound {
            url: "https://h/r.git".into(),
            commit: "abc1234".into(),
        };
        let f: EffectFailure = err.into();
        assert!(f.reason.contains("abc1234") && f.reason.contains("https://h/r.git"));
        assert!(!f.retryable);
        let net = VcsError::Unreachable {
            url: "https://h/r.git".into(),
            message: "timed out".into(),
            network: true,
        };
        assert!(EffectFailure::from(net).retryable);
        let diff = VcsError::DiffNotApplied {
            files: vec!["a.py".into(), "b.py".into()],
            message: "x".into(),
        };
        assert!(diff.to_string().contains("a.py, b.py"));
    }

    #[test]
    fn not_checked_out_without_repo_or_with_short_commit() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!is_checked_out(
            dir.path(),
            "0123456789abcdef0123456789abcdef01234567"
        ));
        assert!(!is_checked_out(dir.path(), "012"));
    }
}
