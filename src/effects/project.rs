//! Project mode: the environment comes from the repository's own project files instead of
//! the task's package list, as upstream's `PoetryAPI` and `UvAPI` (`helper/package/
//! poetry_api.py`, `uv_api.py`; `worker.py` `_install_poetry_requirements`,
//! `_install_uv_requirements`).
//!
//! - **Poetry** (`agent.package_manager.type: poetry` or `CLEARML_AGENT_FORCE_POETRY`) when the
//!   project folder has `pyproject.toml` or `poetry.lock`: `poetry install -n
//!   [poetry_install_extra_args]`. Poetry comes from PATH, else from PyPI into
//!   `agent.tools_dir` (`agent.package_manager.poetry_version` pins it).
//! - **uv** (`type: uv` set explicitly, or `CLEARML_AGENT_FORCE_UV`) when the folder has
//!   `uv.lock` or a `pyproject.toml` with a `[project]` table: `uv sync [--locked]
//!   [uv_sync_extra_args]`, `--locked` when there is a lock file and
//!   `uv_sync_locked_if_lock_file` (default true); a locked sync that fails is retried
//!   unlocked, as upstream.
//! - The project folder is the repository root, or the task's working dir with
//!   `poetry_files_from_repo_working_dir` / `uv_files_from_repo_working_dir`.
//!
//! Unlike upstream (a `.venv` inside the checkout, run through `poetry run` / `uv run`), both
//! install into the run's own venv (`VIRTUAL_ENV` for poetry, `UV_PROJECT_ENVIRONMENT` for
//! uv), so launch, freeze, resume and the venv cache work as for pip. Built before the clone
//! from the files read at the task's commit ([`ProjectFiles::materialize`]) the project itself
//! is not installed (`--no-root` / `--no-install-project`), only its locked dependencies, and
//! the environment is cached by the files' content; given the checkout
//! (`install_project: true`) the project is installed too and nothing is cached.

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::requirements::SourceTree;
use super::venv::{
    describe, ensure_tool, key_error_lines, run_logged, tail, tool, venv_python, EnvError,
    EnvSettings, ToolSpec,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProjectKind {
    Poetry,
    Uv,
}

impl ProjectKind {
    fn lock_file(self) -> &'static str {
        match self {
            ProjectKind::Poetry => "poetry.lock",
            ProjectKind::Uv => "uv.lock",
        }
    }
    /// The files it reads, for messages.
    pub fn files(self) -> &'static str {
        match self {
            ProjectKind::Poetry => "pyproject.toml/poetry.lock",
            ProjectKind::Uv => "pyproject.toml/uv.lock",
        }
    }
}

impl fmt::Display for ProjectKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ProjectKind::Poetry => "poetry",
            ProjectKind::Uv => "uv sync",
        })
    }
}

/// A project-mode environment to build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectEnv {
    pub kind: ProjectKind,
    /// The folder with `pyproject.toml` (and the lock file): the checkout's project folder,
    /// or the files materialized from the commit.
    pub dir: PathBuf,
    /// Install the project itself (needs its source in `dir`); makes the env uncacheable.
    pub install_project: bool,
    /// `poetry_install_extra_args` / `uv_sync_extra_args`.
    pub extra_args: Vec<String>,
    /// `uv_sync_locked_if_lock_file` (default true).
    pub locked_if_lock_file: bool,
    /// `poetry_version` (poetry only).
    pub tool_version: Option<String>,
}

impl ProjectEnv {
    /// What the environment is made of (for the cache key); `None` when it depends on more
    /// than the project files (the project itself is installed).
    pub fn identity(&self) -> Option<String> {
        if self.install_project {
            return None;
        }
        let mut h = Sha256::new();
        h.update(format!("{:?}\0", self.kind));
        for name in ["pyproject.toml", self.kind.lock_file()] {
            h.update(name);
            h.update(b"\0");
            h.update(fs::read(self.dir.join(name)).unwrap_or_default());
            h.update(b"\0");
        }
        h.update(self.extra_args.join("\0"));
        h.update(format!(
            "\0{}\0{:?}",
            self.locked_if_lock_file, self.tool_version
        ));
        Some(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
    }
}

/// The project files of one folder of the repository.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProjectFiles {
    pub pyproject: Option<String>,
    pub poetry_lock: Option<String>,
    pub uv_lock: Option<String>,
}

impl ProjectFiles {
    /// Reads `pyproject.toml`, `poetry.lock` and `uv.lock` of `folder` ("" is the root).
    pub fn read(tree: &mut dyn SourceTree, folder: &str) -> Result<ProjectFiles, String> {
        let mut get = |name: &str| {
            let rel = if folder.is_empty() {
                name.to_string()
            } else {
                format!("{}/{name}", folder.trim_end_matches('/'))
            };
            tree.read(&rel)
        };
        Ok(ProjectFiles {
            pyproject: get("pyproject.toml")?,
            poetry_lock: get("poetry.lock")?,
            uv_lock: get("uv.lock")?,
        })
    }

    /// Writes the files that exist into `dir` (created), for a build before the clone.
    pub fn materialize(&self, dir: &Path) -> io::Result<()> {
        fs::create_dir_all(dir)?;
        for (name, text) in [
            ("pyproject.toml", &self.pyproject),
            ("poetry.lock", &self.poetry_lock),
            ("uv.lock", &self.uv_lock),
        ] {
            if let Some(t) = text {
                fs::write(dir.join(name), t)?;
            }
        }
        Ok(())
    }

    fn has_project_table(&self) -> bool {
        self.pyproject
            .as_deref()
            .is_some_and(|t| t.lines().any(|l| l.trim() == "[project]"))
    }
}

/// Which project mode the configuration asks for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProjectMode {
    /// `type: poetry` or `CLEARML_AGENT_FORCE_POETRY`.
    pub poetry: bool,
    /// `type: uv` set explicitly, or `CLEARML_AGENT_FORCE_UV`. (uv as our default manager is
    /// a pip replacement only, so tasks behave as under upstream's default, pip.)
    pub uv: bool,
}

/// The project mode that applies to `files`, if any (see the module doc).
pub fn detect(mode: ProjectMode, files: &ProjectFiles) -> Option<ProjectKind> {
    if mode.poetry && (files.pyproject.is_some() || files.poetry_lock.is_some()) {
        return Some(ProjectKind::Poetry);
    }
    if mode.uv && (files.uv_lock.is_some() || files.has_project_table()) {
        return Some(ProjectKind::Uv);
    }
    None
}

fn failed(
    project: &ProjectEnv,
    cmd: &std::process::Command,
    key: String,
    tail: String,
) -> EnvError {
    EnvError::Project {
        tool: project.kind.to_string(),
        dir: project.dir.clone(),
        command: describe(cmd),
        key_error: key,
        stderr_tail: tail,
    }
}

/// Runs `cmd`; on failure an [`EnvError::Project`] with the tool's own error lines.
fn run(
    project: &ProjectEnv,
    cmd: &mut std::process::Command,
    log: &mut dyn FnMut(&str),
) -> Result<(), EnvError> {
    log(&format!("Running: {}", describe(cmd)));
    let ran = run_logged(cmd, log).map_err(|e| {
        failed(
            project,
            cmd,
            format!("could not run it: {e}"),
            String::new(),
        )
    })?;
    if ran.status.success() {
        return Ok(());
    }
    let lines: Vec<String> = ran.lines.iter().cloned().collect();
    let keys = key_error_lines(&lines);
    let key = if keys.is_empty() {
        format!("exited with {}", ran.status)
    } else {
        keys.join("\n")
    };
    Err(failed(project, cmd, key, tail(&ran.lines)))
}

/// Installs `project` into the (created) venv at `venv_dir`.
pub(super) fn install(
    settings: &EnvSettings,
    project: &ProjectEnv,
    base_python: &Path,
    venv_dir: &Path,
    uv: Option<&Path>,
    extra_index_urls: &[String],
    log: &mut dyn FnMut(&str),
) -> Result<(), EnvError> {
    let python = venv_python(venv_dir);
    let bin = venv_dir.join("bin");
    let path = match std::env::var_os("PATH") {
        Some(p) => {
            let mut v = vec![bin.clone()];
            v.extend(std::env::split_paths(&p));
            std::env::join_paths(v).unwrap_or(p)
        }
        None => bin.clone().into_os_string(),
    };
    match project.kind {
        ProjectKind::Poetry => {
            log("Poetry Enabled: Ignoring requested python packages, using the repository's poetry files");
            let version = project
                .tool_version
                .as_deref()
                .map(str::trim)
                .filter(|v| !v.is_empty());
            let requirement = match version {
                Some(v) if v.starts_with(['=', '<', '>', '~', '!']) => format!("poetry{v}"),
                Some(v) => format!("poetry=={v}"),
                None => "poetry".to_string(),
            };
            let poetry = ensure_tool(
                settings,
                base_python,
                &ToolSpec {
                    exe: "poetry",
                    requirement,
                    accept_path: version.is_none(),
                },
                log,
            )?;
            let mut cmd = tool(&poetry);
            cmd.args(["install", "-n"]);
            if !project.install_project {
                cmd.arg("--no-root");
            }
            cmd.args(&project.extra_args)
                .current_dir(&project.dir)
                // Poetry installs into the active virtual environment: the run's venv.
                .env("VIRTUAL_ENV", venv_dir)
                .env("PATH", &path)
                .env("POETRY_VIRTUALENVS_CREATE", "false")
                .env("POETRY_NO_INTERACTION", "1");
            run(project, &mut cmd, log)
        }
        ProjectKind::Uv => {
            log("UV Enabled: Ignoring requested python packages, using the repository's uv project files");
            let uv = match uv {
                Some(u) => u.to_path_buf(),
                None => super::venv::ensure_uv(settings, base_python, log)?,
            };
            let lock = project.dir.join("uv.lock").is_file();
            let sync = |locked: bool| {
                let mut cmd = tool(&uv);
                cmd.arg("sync");
                if locked {
                    cmd.arg("--locked");
                }
                if !project.install_project {
                    cmd.arg("--no-install-project");
                }
                cmd.arg("--python").arg(&python);
                for url in extra_index_urls.iter().filter(|u| !u.trim().is_empty()) {
                    cmd.arg("--extra-index-url").arg(url.trim());
                }
                cmd.args(&project.extra_args)
                    .current_dir(&project.dir)
                    .env("UV_PROJECT_ENVIRONMENT", venv_dir)
                    .env("PATH", &path);
                cmd
            };
            let locked = lock && project.locked_if_lock_file;
            match run(project, &mut sync(locked), log) {
                Err(e) if locked => {
                    log(&format!(
                        "INFO: failed installing using lock file, trying without ({})",
                        e.to_string().lines().next().unwrap_or("")
                    ));
                    run(project, &mut sync(false), log)
                }
                other => other,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(py: Option<&str>, poetry: bool, uv: bool) -> ProjectFiles {
        ProjectFiles {
            pyproject: py.map(str::to_string),
            poetry_lock: poetry.then(|| "# lock".to_string()),
            uv_lock: uv.then(|| "version = 1".to_string()),
        }
    }

    #[test]
    fn detection_follows_the_configured_manager() {
        let poetry = ProjectMode {
            poetry: true,
            uv: false,
        };
        let uv = ProjectMode {
            poetry: false,
            uv: true,
        };
        let none = ProjectMode::default();
        let tool_only = Some("[tool.black]\nline-length = 100\n");
        let project = Some("[project]\nname = \"x\"\n");
        assert_eq!(
            detect(poetry, &files(tool_only, false, false)),
            Some(ProjectKind::Poetry)
        );
        assert_eq!(
            detect(poetry, &files(None, true, false)),
            Some(ProjectKind::Poetry)
        );
        assert_eq!(detect(poetry, &files(None, false, false)), None);
        assert_eq!(
            detect(uv, &files(project, false, false)),
            Some(ProjectKind::Uv)
        );
        assert_eq!(detect(uv, &files(None, false, true)), Some(ProjectKind::Uv));
        // A pyproject.toml that only configures tools is not a uv project.
        assert_eq!(detect(uv, &files(tool_only, false, false)), None);
        assert_eq!(detect(none, &files(project, true, true)), None);
    }

    #[test]
    fn identity_follows_the_files_and_not_when_the_project_is_installed() {
        let d = tempfile::tempdir().unwrap();
        let f = files(Some("[project]\nname='a'\n"), false, true);
        f.materialize(d.path()).unwrap();
        let mut p = ProjectEnv {
            kind: ProjectKind::Uv,
            dir: d.path().to_path_buf(),
            install_project: false,
            extra_args: vec![],
            locked_if_lock_file: true,
            tool_version: None,
        };
        let a = p.identity().unwrap();
        fs::write(d.path().join("uv.lock"), "version = 2").unwrap();
        let b = p.identity().unwrap();
        assert_ne!(a, b);
        // Files poetry does not read do not count for uv, and the other way round.
        fs::write(d.path().join("poetry.lock"), "x").unwrap();
        assert_eq!(p.identity().unwrap(), b);
        p.install_project = true;
        assert_eq!(p.identity(), None);
    }
}
