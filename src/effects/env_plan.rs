//! The environment of one task, planned from the configuration and the task: which python,
//! which requirements (or which project files), with which installer options. Phase B calls
//! [`plan_environment`] in `ResolveEnv` and passes the result to [`venv::build_with`].
//!
//! [`EnvConfig::from_config`] reads the upstream keys this needs from the merged
//! configuration (it moves into `src/config` with the other typed settings).

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::project::{detect, ProjectEnv, ProjectFiles, ProjectMode};
use super::python::requested_python;
use super::requirements::{
    select, EntryPoint, GitCredentials, RequirementsError, RequirementsPolicy, Selection,
    SourceTree, TaskRequirements,
};
use super::venv::{self, EnvSpec, InstallOptions};
use crate::config::{expand_home, Config};

/// The upstream configuration keys of environments and requirements.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct EnvConfig {
    pub policy: RequirementsPolicy,
    /// `agent.package_manager.extra_pip_install_flags`, or `CLEARML_EXTRA_PIP_INSTALL_FLAGS`
    /// (shell-split), which wins.
    pub extra_pip_flags: Vec<String>,
    /// `agent.package_manager.pip_version` (string or list). Unset: pip is not touched (the
    /// upstream default pins old pips for its legacy-resolver handling, which we do not use).
    pub pip_version: Vec<String>,
    /// `agent.pip_download_cache.path` (default `~/.clearml/pip-download-cache`) when
    /// `agent.pip_download_cache.enabled` (default true), with the `cpu`/`cu<ver>` subfolder.
    pub download_cache: Option<PathBuf>,
    pub project_mode: ProjectMode,
    pub poetry_files_from_repo_working_dir: bool,
    pub uv_files_from_repo_working_dir: bool,
    pub poetry_install_extra_args: Vec<String>,
    pub uv_sync_extra_args: Vec<String>,
    /// `agent.package_manager.uv_sync_locked_if_lock_file` (default true).
    pub uv_sync_locked_if_lock_file: bool,
    pub poetry_version: Option<String>,
    pub python_binary: Option<String>,
    pub default_python: Option<String>,
    pub ignore_requested_python_version: bool,
    /// `agent.custom_build_script` or `CLEARML_AGENT_CUSTOM_BUILD_SCRIPT`.
    pub custom_build_script: Option<String>,
}

fn truthy(s: &str) -> Option<bool> {
    match s.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "y" | "on" => Some(true),
        "0" | "false" | "no" | "n" | "off" | "" => Some(false),
        _ => None,
    }
}

/// A boolean key (`true`, `"yes"`, 1); `default` when unset or unreadable.
pub(crate) fn bool_key(config: &Config, key: &str, default: bool) -> bool {
    match config.get(key) {
        Some(Value::Bool(b)) => *b,
        Some(Value::Number(n)) => n.as_f64().is_some_and(|v| v != 0.0),
        Some(Value::String(s)) => truthy(s).unwrap_or(default),
        _ => default,
    }
}

/// A boolean environment variable, if set to something readable.
pub(crate) fn bool_env(env: &dyn Fn(&str) -> Option<String>, name: &str) -> Option<bool> {
    env(name).and_then(|v| truthy(&v))
}

/// A list key: a list, or one string (split on commas, as the Python agent's lists).
pub(crate) fn list_key(config: &Config, key: &str) -> Vec<String> {
    match config.get(key) {
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(|v| match v {
                Value::String(s) => Some(s.trim().to_string()),
                Value::Number(n) => Some(n.to_string()),
                _ => None,
            })
            .filter(|s| !s.is_empty())
            .collect(),
        Some(Value::String(s)) if !s.trim().is_empty() => s
            .split(',')
            .map(|x| x.trim().to_string())
            .filter(|x| !x.is_empty())
            .collect(),
        _ => Vec::new(),
    }
}

pub(crate) fn str_key(config: &Config, key: &str) -> Option<String> {
    config.get_str(key).filter(|s| !s.trim().is_empty())
}

/// `CLEARML_AGENT_CUDA_VERSION`-style versions to upstream's folder name: `12.1` -> `cu121`.
fn cuda_folder(cuda: Option<&str>) -> String {
    let digits: String = cuda
        .unwrap_or("")
        .split('.')
        .take(2)
        .collect::<Vec<_>>()
        .concat()
        .chars()
        .filter(char::is_ascii_digit)
        .collect();
    match digits.trim_start_matches('0') {
        "" => "cpu".into(),
        d => format!("cu{d}"),
    }
}

impl EnvConfig {
    /// Reads the keys (see the field docs) from `config`, with the named variables from `env`.
    pub fn from_config(config: &Config, env: &dyn Fn(&str) -> Option<String>) -> EnvConfig {
        let pm = |k: &str| format!("agent.package_manager.{k}");
        let manager = env("CLEARML_AGENT_PACKAGE_MANAGER")
            .filter(|s| !s.trim().is_empty())
            .or_else(|| str_key(config, &pm("type")))
            .map(|s| s.trim().to_ascii_lowercase());
        let extra_pip_flags =
            match env("CLEARML_EXTRA_PIP_INSTALL_FLAGS").filter(|s| !s.trim().is_empty()) {
                Some(v) => shlex::split(&v)
                    .unwrap_or_else(|| v.split_whitespace().map(str::to_string).collect()),
                None => list_key(config, &pm("extra_pip_install_flags")),
            };
        let download_cache =
            bool_key(config, "agent.pip_download_cache.enabled", true).then(|| {
                let base = str_key(config, "agent.pip_download_cache.path")
                    .unwrap_or_else(|| "~/.clearml/pip-download-cache".into());
                let cuda = env("CUDA_VERSION")
                    .or_else(|| env("CLEARML_CUDA_VERSION"))
                    .or_else(|| str_key(config, "agent.cuda_version"));
                expand_home(&base).join(cuda_folder(cuda.as_deref()))
            });
        EnvConfig {
            policy: RequirementsPolicy {
                force_repo_requirements_txt: bool_key(
                    config,
                    &pm("force_repo_requirements_txt"),
                    false,
                ),
                force_original_requirements: bool_key(
                    config,
                    &pm("force_original_requirements"),
                    false,
                ),
                priority_packages: list_key(config, &pm("priority_packages")),
                priority_optional_packages: list_key(config, &pm("priority_optional_packages")),
                post_packages: list_key(config, &pm("post_packages")),
                post_optional_packages: list_key(config, &pm("post_optional_packages")),
            },
            extra_pip_flags,
            pip_version: list_key(config, &pm("pip_version")),
            download_cache,
            project_mode: ProjectMode {
                poetry: manager.as_deref() == Some("poetry")
                    || bool_env(env, "CLEARML_AGENT_FORCE_POETRY").unwrap_or(false),
                uv: manager.as_deref() == Some("uv")
                    || bool_env(env, "CLEARML_AGENT_FORCE_UV").unwrap_or(false),
            },
            poetry_files_from_repo_working_dir: bool_key(
                config,
                &pm("poetry_files_from_repo_working_dir"),
                false,
            ),
            uv_files_from_repo_working_dir: bool_key(
                config,
                &pm("uv_files_from_repo_working_dir"),
                false,
            ),
            poetry_install_extra_args: list_key(config, &pm("poetry_install_extra_args")),
            uv_sync_extra_args: list_key(config, &pm("uv_sync_extra_args")),
            uv_sync_locked_if_lock_file: bool_key(config, &pm("uv_sync_locked_if_lock_file"), true),
            poetry_version: str_key(config, &pm("poetry_version")),
            python_binary: str_key(config, "agent.python_binary"),
            default_python: str_key(config, "agent.default_python"),
            ignore_requested_python_version: bool_key(
                config,
                "agent.ignore_requested_python_version",
                false,
            ),
            custom_build_script: str_key(config, "agent.custom_build_script").or_else(|| {
                env("CLEARML_AGENT_CUSTOM_BUILD_SCRIPT").filter(|s| !s.trim().is_empty())
            }),
        }
    }
}

/// What a task brings to its environment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskEnvInput {
    pub requirements: TaskRequirements,
    pub entry: EntryPoint,
    /// `script.binary`.
    pub binary: Option<String>,
}

/// What to build.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedEnv {
    pub spec: EnvSpec,
    pub options: InstallOptions,
    /// The requirements chosen (empty in project mode): their lines are what
    /// [`super::requirements::restore_freeze`] restores.
    pub selection: Selection,
    /// For the task's console.
    pub notes: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error(transparent)]
    Requirements(#[from] RequirementsError),
    #[error("reading the project files of {folder:?} from the repository: {detail}")]
    Project { folder: String, detail: String },
    #[error("writing the project files to {dir}: {source}")]
    Materialize {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Plans the environment of a task. `base` is the spec from the agent's settings (manager,
/// extra indexes, upgrade, system site packages, cuda, priority/post names); `tree` the
/// repository at the task's commit (`None` without one); `checkout`, when the repository is
/// already checked out there (then local requirements and the project itself are installed
/// from it); `scratch`, where project files read from the commit are written when there is
/// no checkout.
pub fn plan_environment(
    cfg: &EnvConfig,
    base: &EnvSpec,
    git: &GitCredentials,
    task: &TaskEnvInput,
    mut tree: Option<&mut dyn SourceTree>,
    checkout: Option<&Path>,
    scratch: &Path,
) -> Result<PlannedEnv, PlanError> {
    let (python, python_fallback) = requested_python(
        task.binary.as_deref(),
        cfg.python_binary.as_deref(),
        cfg.default_python.as_deref(),
        cfg.ignore_requested_python_version,
    );
    let mut spec = EnvSpec {
        python,
        ..base.clone()
    };
    // The configured names win over the base's (empty: upstream's defaults).
    if !cfg.policy.priority_packages.is_empty() {
        spec.priority_packages = cfg.policy.priority_packages.clone();
    }
    if !cfg.policy.post_packages.is_empty() {
        spec.post_packages = cfg.policy.post_packages.clone();
    }
    let mut options = InstallOptions {
        priority_optional_packages: cfg.policy.priority_optional_packages.clone(),
        post_optional_packages: cfg.policy.post_optional_packages.clone(),
        extra_pip_flags: cfg.extra_pip_flags.clone(),
        pip_version: cfg.pip_version.clone(),
        download_cache: cfg.download_cache.clone(),
        git: git.clone(),
        checkout: checkout.map(Path::to_path_buf),
        python_fallback,
        ..InstallOptions::default()
    };
    // Project mode first, as upstream: it ignores the task's package list.
    if let Some(t) = tree.as_deref_mut() {
        if cfg.project_mode.poetry || cfg.project_mode.uv {
            let wd = task.entry.working_dir.as_deref().unwrap_or("").trim();
            let poetry_wd = cfg.project_mode.poetry && cfg.poetry_files_from_repo_working_dir;
            let uv_wd = !cfg.project_mode.poetry && cfg.uv_files_from_repo_working_dir;
            let folder = if poetry_wd || uv_wd {
                wd.trim_start_matches("./").trim_matches('/').to_string()
            } else {
                String::new()
            };
            let folder = if folder == "." { String::new() } else { folder };
            let files = ProjectFiles::read(t, &folder).map_err(|detail| PlanError::Project {
                folder: folder.clone(),
                detail,
            })?;
            if let Some(kind) = detect(cfg.project_mode, &files) {
                let (dir, install_project) = match checkout {
                    Some(c) => (c.join(&folder), true),
                    None => {
                        let dir = scratch.join("project");
                        files
                            .materialize(&dir)
                            .map_err(|source| PlanError::Materialize {
                                dir: dir.clone(),
                                source,
                            })?;
                        (dir, false)
                    }
                };
                let (extra_args, tool_version) = match kind {
                    super::project::ProjectKind::Poetry => (
                        cfg.poetry_install_extra_args.clone(),
                        cfg.poetry_version.clone(),
                    ),
                    super::project::ProjectKind::Uv => (cfg.uv_sync_extra_args.clone(), None),
                };
                let notes = vec![format!(
                    "{kind}: using the repository's {} in {}, ignoring the task's packages",
                    kind.files(),
                    if folder.is_empty() {
                        "the repository root"
                    } else {
                        &folder
                    }
                )];
                options.project = Some(ProjectEnv {
                    kind,
                    dir,
                    install_project,
                    extra_args,
                    locked_if_lock_file: cfg.uv_sync_locked_if_lock_file,
                    tool_version,
                });
                return Ok(PlannedEnv {
                    spec,
                    options,
                    selection: Selection::default(),
                    notes,
                });
            }
        }
    }
    let selection = select(&cfg.policy, &task.requirements, &task.entry, tree)?;
    for url in &selection.extra_index_urls {
        if !spec.extra_index_urls.contains(url) {
            spec.extra_index_urls.push(url.clone());
        }
    }
    options.requirement_options = selection.options.clone();
    options.groups = Some(selection.groups.clone());
    spec.requirements = selection.all_lines();
    Ok(PlannedEnv {
        spec,
        options,
        notes: selection.notes.clone(),
        selection,
    })
}

/// Builds what [`plan_environment`] planned.
pub fn build_planned(
    settings: &venv::EnvSettings,
    planned: &PlannedEnv,
    venv_dir: &Path,
    log: &mut dyn FnMut(&str),
) -> Result<venv::EnvOutcome, venv::EnvError> {
    for n in &planned.notes {
        log(n);
    }
    venv::build_with(settings, &planned.spec, &planned.options, venv_dir, log)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Config {
        Config {
            root: crate::config::hocon::parse(text, &|_| None).unwrap(),
            source: None,
        }
    }

    #[test]
    fn keys_and_variables() {
        let c = config(
            r#"agent {
                 package_manager {
                   type: poetry
                   priority_packages: ["numpy"]
                   post_optional_packages: "a, b"
                   extra_pip_install_flags: ["--no-cache-dir"]
                   pip_version: "<24"
                   force_original_requirements: true
                 }
                 pip_download_cache { path: /tmp/pdc }
                 cuda_version: "12.1"
                 default_python: "3.10"
                 ignore_requested_python_version: "yes"
               }"#,
        );
        let e = EnvConfig::from_config(&c, &|_| None);
        assert!(e.project_mode.poetry && !e.project_mode.uv);
        assert_eq!(e.policy.priority_packages, vec!["numpy"]);
        assert_eq!(e.policy.post_optional_packages, vec!["a", "b"]);
        assert!(e.policy.force_original_requirements);
        assert_eq!(e.extra_pip_flags, vec!["--no-cache-dir"]);
        assert_eq!(e.pip_version, vec!["<24"]);
        assert_eq!(e.download_cache, Some(PathBuf::from("/tmp/pdc/cu121")));
        assert_eq!(e.default_python.as_deref(), Some("3.10"));
        assert!(e.ignore_requested_python_version);
        assert!(e.uv_sync_locked_if_lock_file);
        let env = |k: &str| match k {
            "CLEARML_EXTRA_PIP_INSTALL_FLAGS" => Some("--retries 3 \"--trusted-host=a b\"".into()),
            "CLEARML_AGENT_PACKAGE_MANAGER" => Some("uv".into()),
            _ => None,
        };
        let e = EnvConfig::from_config(&c, &env);
        assert_eq!(
            e.extra_pip_flags,
            vec!["--retries", "3", "--trusted-host=a b"]
        );
        assert!(e.project_mode.uv && !e.project_mode.poetry);
        // Defaults: download cache on, cpu folder; uv only as a pip replacement.
        let d = EnvConfig::from_config(&config(""), &|_| None);
        assert!(d
            .download_cache
            .unwrap()
            .ends_with("pip-download-cache/cpu"));
        assert_eq!(d.project_mode, ProjectMode::default());
        let off =
            EnvConfig::from_config(&config("agent.pip_download_cache.enabled: false"), &|_| {
                None
            });
        assert_eq!(off.download_cache, None);
    }

    #[test]
    fn plan_picks_python_requirements_and_project_mode() {
        let scratch = tempfile::tempdir().unwrap();
        let mut files = std::collections::HashMap::new();
        files.insert(
            "requirements.txt".to_string(),
            "six\n--extra-index-url https://x/simple\n".to_string(),
        );
        files.insert(
            "pyproject.toml".to_string(),
            "[project]\nname = \"p\"\n".to_string(),
        );
        files.insert("uv.lock".to_string(), "version = 1\n".to_string());
        let mut tree =
            |rel: &str| -> Result<Option<String>, String> { Ok(files.get(rel).cloned()) };
        let task = TaskEnvInput {
            requirements: TaskRequirements::default(),
            entry: EntryPoint {
                working_dir: Some(".".into()),
                entry_point: Some("t.py".into()),
            },
            binary: Some("python3.10".into()),
        };
        let cfg = EnvConfig::default();
        let p = plan_environment(
            &cfg,
            &EnvSpec::default(),
            &GitCredentials::default(),
            &task,
            Some(&mut tree),
            None,
            scratch.path(),
        )
        .unwrap();
        assert_eq!(p.spec.python, "3.10");
        assert_eq!(p.spec.requirements, vec!["six"]);
        assert_eq!(p.spec.extra_index_urls, vec!["https://x/simple"]);
        assert!(p.options.project.is_none());
        // uv set explicitly: the uv project wins over requirements.txt.
        let uv = EnvConfig {
            project_mode: ProjectMode {
                poetry: false,
                uv: true,
            },
            ..EnvConfig::default()
        };
        let p = plan_environment(
            &uv,
            &EnvSpec::default(),
            &GitCredentials::default(),
            &task,
            Some(&mut tree),
            None,
            scratch.path(),
        )
        .unwrap();
        let project = p.options.project.unwrap();
        assert_eq!(project.kind, super::super::project::ProjectKind::Uv);
        assert!(!project.install_project);
        assert!(project.dir.join("uv.lock").is_file());
        assert!(project.dir.join("pyproject.toml").is_file());
    }
}
