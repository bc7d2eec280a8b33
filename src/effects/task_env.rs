//! What the task process gets from the agent, as upstream gives it (worker.py `execute`
//! ~3445-3500, `_get_job_os_envs`, `_get_task_os_env`, `_apply_extra_configuration`,
//! `dump_config`; backend_config/utils.py `apply_environment`, `apply_files`):
//!
//! - **The configuration file** (`CLEARML_CONFIG_FILE`): the whole merged configuration
//!   (api, sdk with storage credentials and `default_output_uri`, agent, environment, files)
//!   as JSON, which the SDK's HOCON reader takes as it is, written mode 0600
//!   ([`write_config_file`]). The SDK reads only this file when the variable is set, so
//!   anything left out of it is invisible to the task.
//! - **Variables**, later ones winning: the top-level `environment {}` section
//!   (`agent.apply_environment`, default true; `CLEARML_AGENT_ENABLE_ENV_CONFIG_SECTION`
//!   overrides); the agent's own (`CLEARML_TASK_ID`, `CLEARML_LOG_LEVEL`,
//!   `CLEARML_LOG_TASK_TO_BACKEND=0`, `CLEARML_CONFIG_FILE`, `CLEARML_WORKER_ID`, the hosts,
//!   `PYTHONPATH`, `VIRTUAL_ENV`, `PYTHONUNBUFFERED`); the task's `Environment` hyperparameter
//!   section with `agent.enable_task_env`; then the `TRAINS_*` twin of every `CLEARML_*`
//!   variable that has none.
//! - **PYTHONPATH**: what the agent inherited, then the working dir and the entry point's
//!   folder (the repository root instead with `agent.force_git_root_python_path`), then
//!   `CLEARML_AGENT_EXTRA_PYTHON_PATH`.
//! - **Files** from the top-level `files {}` section (`agent.apply_files`, default true;
//!   `CLEARML_AGENT_ENABLE_FILES_CONFIG_SECTION` overrides): `path`, `contents`, `format:
//!   base64`, `target_format: json|yaml|bytes`, `overwrite` (default true), `mode` (octal).
//!   YAML is written as JSON, which every YAML 1.2 reader accepts.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use base64::Engine;
use serde_json::{Map, Value};

use super::env_plan::{bool_env, bool_key};
use crate::api::{ApiClient, ApiError};
use crate::config::Config;

/// The keys of the task environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskEnvConfig {
    pub apply_environment: bool,
    pub apply_files: bool,
    pub enable_task_env: bool,
    pub force_git_root_python_path: bool,
    /// `CLEARML_AGENT_EXTRA_PYTHON_PATH` (or its `TRAINS_` twin).
    pub extra_python_path: Option<String>,
}

impl TaskEnvConfig {
    pub fn from_config(config: &Config, env: &dyn Fn(&str) -> Option<String>) -> TaskEnvConfig {
        TaskEnvConfig {
            apply_environment: bool_env(env, "CLEARML_AGENT_ENABLE_ENV_CONFIG_SECTION")
                .unwrap_or_else(|| bool_key(config, "agent.apply_environment", true)),
            apply_files: bool_env(env, "CLEARML_AGENT_ENABLE_FILES_CONFIG_SECTION")
                .unwrap_or_else(|| bool_key(config, "agent.apply_files", true)),
            enable_task_env: bool_key(config, "agent.enable_task_env", false),
            force_git_root_python_path: bool_key(config, "agent.force_git_root_python_path", false),
            extra_python_path: env("CLEARML_AGENT_EXTRA_PYTHON_PATH")
                .or_else(|| env("TRAINS_AGENT_EXTRA_PYTHON_PATH"))
                .filter(|s| !s.trim().is_empty()),
        }
    }
}

/// One task's inputs.
pub struct TaskEnvInput<'a> {
    /// The merged configuration (file, named variables, overrides).
    pub config: &'a Config,
    pub task_id: &'a str,
    pub worker_id: &'a str,
    /// `--log-level`, passed as `CLEARML_LOG_LEVEL`.
    pub log_level: Option<&'a str>,
    /// Where the configuration file goes (the run's folder; removed with the run).
    pub config_file: &'a Path,
    /// The hosts the agent uses (they win over the file's, as the named variables do).
    pub api_server: &'a str,
    pub web_server: &'a str,
    pub files_server: &'a str,
    /// The task's `Environment` hyperparameters ([`environment_hyperparams`]); used with
    /// `agent.enable_task_env`.
    pub env_hyperparams: &'a BTreeMap<String, String>,
    /// The checkout (repository root) and the task's working dir / entry point in it.
    pub checkout: &'a Path,
    pub working_dir: &'a str,
    pub entry_point: &'a str,
    pub venv_dir: &'a Path,
    /// The agent's own `PYTHONPATH`.
    pub inherited_pythonpath: Option<&'a str>,
}

/// What to hand the task.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskEnv {
    /// For [`write_config_file`] at `TaskEnvInput::config_file`.
    pub config_text: String,
    /// The variables, in order (set them in this order; the last of a name wins).
    pub env: Vec<(String, String)>,
    /// For [`write_files`] (empty unless `apply_files`).
    pub files: Vec<ConfigFile>,
    /// For the task's console ("Environment variables set from configuration: ...").
    pub notes: Vec<String>,
}

impl TaskEnv {
    /// The variables as a map (the last of a name wins).
    pub fn env_map(&self) -> BTreeMap<String, String> {
        self.env.iter().cloned().collect()
    }
}

fn value_text(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The configuration the task reads: the merged tree with the agent's hosts, as JSON.
pub fn task_config_text(config: &Config, api: (&str, &str, &str)) -> String {
    let mut root = match &config.root {
        Value::Object(m) => m.clone(),
        _ => Map::new(),
    };
    let section = root
        .entry("api")
        .or_insert_with(|| Value::Object(Map::new()));
    if let Value::Object(a) = section {
        for (k, v) in [
            ("api_server", api.0),
            ("web_server", api.1),
            ("files_server", api.2),
        ] {
            if !v.is_empty() {
                a.insert(k.into(), Value::String(v.into()));
            }
        }
    }
    serde_json::to_string_pretty(&Value::Object(root)).unwrap_or_else(|_| "{}".into()) + "\n"
}

/// Everything the task gets (see the module doc).
pub fn task_environment(cfg: &TaskEnvConfig, input: &TaskEnvInput) -> TaskEnv {
    let mut env: Vec<(String, String)> = Vec::new();
    let mut notes = Vec::new();
    if cfg.apply_environment {
        if let Some(Value::Object(vars)) = input.config.get("environment") {
            let keys: Vec<String> = vars.keys().filter(|k| !k.is_empty()).cloned().collect();
            for k in &keys {
                env.push((k.clone(), value_text(&vars[k])));
            }
            if !keys.is_empty() {
                notes.push(format!(
                    "Environment variables set from configuration: {}",
                    keys.join(", ")
                ));
            }
        }
    }
    let mut set = |k: &str, v: String| env.push((k.to_string(), v));
    set("CLEARML_TASK_ID", input.task_id.into());
    if let Some(level) = input.log_level.filter(|l| !l.is_empty()) {
        set("CLEARML_LOG_LEVEL", level.to_ascii_uppercase());
    }
    set("CLEARML_LOG_TASK_TO_BACKEND", "0".into());
    set(
        "CLEARML_CONFIG_FILE",
        input.config_file.display().to_string(),
    );
    set("CLEARML_WORKER_ID", input.worker_id.into());
    set("CLEARML_API_HOST", input.api_server.into());
    set("CLEARML_WEB_HOST", input.web_server.into());
    set("CLEARML_FILES_HOST", input.files_server.into());
    set("PYTHONPATH", python_path(cfg, input));
    set("PYTHONUNBUFFERED", "1".into());
    set("VIRTUAL_ENV", input.venv_dir.display().to_string());
    if cfg.enable_task_env && !input.env_hyperparams.is_empty() {
        for (k, v) in input.env_hyperparams {
            env.push((k.clone(), v.clone()));
        }
        notes.push(format!(
            "Environment variables set from the task's Environment section: {}",
            input
                .env_hyperparams
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    // Legacy twins, for SDK versions that still read TRAINS_*.
    let names: std::collections::BTreeSet<String> = env.iter().map(|(k, _)| k.clone()).collect();
    let mut twins = BTreeMap::new();
    for (k, v) in &env {
        if let Some(rest) = k.strip_prefix("CLEARML_") {
            let twin = format!("TRAINS_{rest}");
            if !names.contains(&twin) {
                twins.insert(twin, v.clone());
            }
        }
    }
    env.extend(twins);
    TaskEnv {
        config_text: task_config_text(
            input.config,
            (input.api_server, input.web_server, input.files_server),
        ),
        files: if cfg.apply_files {
            config_files(input.config)
        } else {
            Vec::new()
        },
        env,
        notes,
    }
}

/// Upstream's order: inherited, then the script's folders (or the repository root), then
/// the extra path.
fn python_path(cfg: &TaskEnvConfig, input: &TaskEnvInput) -> String {
    let mut parts: Vec<String> = Vec::new();
    if let Some(p) = input.inherited_pythonpath.filter(|p| !p.is_empty()) {
        parts.push(p.to_string());
    }
    let wd = input.checkout.join(input.working_dir.trim());
    if cfg.force_git_root_python_path {
        parts.push(input.checkout.display().to_string());
    } else {
        parts.push(clean(&wd));
        let first = input.entry_point.split_whitespace().next().unwrap_or("");
        if !first.is_empty() && !first.starts_with('-') {
            if let Some(parent) = wd.join(first).parent() {
                let parent = clean(parent);
                if !parts.contains(&parent) {
                    parts.push(parent);
                }
            }
        }
    }
    if let Some(extra) = &cfg.extra_python_path {
        parts.push(extra.clone());
    }
    parts.join(":")
}

/// The path with `.` components and a trailing `/.` removed.
fn clean(p: &Path) -> String {
    let v: PathBuf = p
        .components()
        .filter(|c| !matches!(c, std::path::Component::CurDir))
        .collect();
    v.display().to_string()
}

/// Writes the task's configuration file, mode 0600 from the first byte (it holds secrets).
pub fn write_config_file(path: &Path, text: &str) -> io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    // An existing file keeps its mode on open: make sure.
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    f.write_all(text.as_bytes())?;
    f.sync_all()
}

/// One entry of the `files {}` section.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigFile {
    pub key: String,
    /// `~` and `$VAR` expanded.
    pub path: PathBuf,
    pub contents: Value,
    pub format: String,
    pub target_format: String,
    pub overwrite: bool,
    pub mode: Option<u32>,
}

/// The `files {}` section's entries.
pub fn config_files(config: &Config) -> Vec<ConfigFile> {
    let Some(Value::Object(files)) = config.get("files") else {
        return Vec::new();
    };
    let env = |k: &str| std::env::var(k).ok();
    files
        .iter()
        .filter_map(|(key, data)| {
            let path = data.get("path").and_then(Value::as_str)?;
            let s = |k: &str, d: &str| {
                data.get(k)
                    .and_then(Value::as_str)
                    .unwrap_or(d)
                    .to_ascii_lowercase()
            };
            let mode = match data.get("mode") {
                Some(Value::Number(n)) => u32::from_str_radix(&n.to_string(), 8).ok(),
                Some(Value::String(m)) => u32::from_str_radix(m.trim(), 8).ok(),
                _ => None,
            };
            Some(ConfigFile {
                key: key.clone(),
                path: PathBuf::from(super::custom_build::expand(path, &env)),
                contents: data.get("contents").cloned().unwrap_or(Value::Null),
                format: s("format", "string"),
                target_format: s("target_format", "string"),
                overwrite: data
                    .get("overwrite")
                    .map(|v| !matches!(v, Value::Bool(false)) && v.as_str() != Some("false"))
                    .unwrap_or(true),
                mode,
            })
        })
        .collect()
}

impl ConfigFile {
    /// The bytes to write, or why the entry is skipped.
    pub fn bytes(&self) -> Result<Vec<u8>, String> {
        let decoded: Value = if self.format == "base64" {
            let text = self.contents.as_str().unwrap_or("");
            let raw = base64::engine::general_purpose::STANDARD
                .decode(text.trim())
                .map_err(|e| format!("failed decoding base64 ({e})"))?;
            if self.target_format == "bytes" {
                return Ok(raw);
            }
            Value::String(
                String::from_utf8(raw).map_err(|e| format!("failed decoding base64 ({e})"))?,
            )
        } else {
            self.contents.clone()
        };
        Ok(match self.target_format.as_str() {
            // JSON is YAML 1.2, so one encoder serves both.
            "json" | "yaml" | "yml" => serde_json::to_string_pretty(&decoded)
                .map_err(|e| format!("failed encoding to {} ({e})", self.target_format))?
                .into_bytes(),
            _ => value_text(&decoded).into_bytes(),
        })
    }
}

/// Writes the `files {}` entries as upstream's `apply_files`: a directory or (without
/// `overwrite`) an existing file is skipped; each outcome is logged, none is fatal.
pub fn write_files(files: &[ConfigFile], log: &mut dyn FnMut(&str)) {
    use std::os::unix::fs::PermissionsExt;
    for f in files {
        if f.path.is_dir() {
            log(&format!(
                "Skipped [{}]: is a directory {}",
                f.key,
                f.path.display()
            ));
            continue;
        }
        if !f.overwrite && f.path.is_file() {
            log(&format!(
                "Skipped [{}]: file exists {}",
                f.key,
                f.path.display()
            ));
            continue;
        }
        let bytes = match f.bytes() {
            Ok(b) => b,
            Err(why) => {
                log(&format!("Skipped [{}]: {why}", f.key));
                continue;
            }
        };
        let written = f
            .path
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| std::fs::write(&f.path, &bytes))
            .and_then(|()| match f.mode {
                Some(m) => std::fs::set_permissions(&f.path, std::fs::Permissions::from_mode(m)),
                None => Ok(()),
            });
        match written {
            Ok(()) => log(&format!("Saved [{}]: {}", f.key, f.path.display())),
            Err(e) => log(&format!(
                "Skipped [{}]: failed saving file {} ({e})",
                f.key,
                f.path.display()
            )),
        }
    }
}

/// The task's `Environment` hyperparameter section (`tasks.get_hyper_params`, API 2.9+).
pub fn environment_hyperparams(
    api: &ApiClient,
    task_id: &str,
) -> Result<BTreeMap<String, String>, ApiError> {
    let data = api.call(
        "v2.9/tasks.get_hyper_params",
        &serde_json::json!({"tasks": [task_id]}),
    )?;
    let mut out = BTreeMap::new();
    let params = data["params"]
        .as_array()
        .and_then(|p| p.first())
        .and_then(|p| p["hyperparams"].as_array())
        .cloned()
        .unwrap_or_default();
    for p in params {
        if p["section"].as_str() == Some("Environment") {
            if let Some(name) = p["name"].as_str().filter(|n| !n.is_empty()) {
                out.insert(name.to_string(), value_text(&p["value"]));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn config(text: &str) -> Config {
        Config {
            root: crate::config::hocon::parse(text, &|_| None).unwrap(),
            source: None,
        }
    }

    fn input<'a>(
        c: &'a Config,
        hp: &'a BTreeMap<String, String>,
        checkout: &'a Path,
    ) -> TaskEnvInput<'a> {
        TaskEnvInput {
            config: c,
            task_id: "t1",
            worker_id: "w:0",
            log_level: Some("debug"),
            config_file: Path::new("/runs/t1.1/proc/clearml.conf"),
            api_server: "http://api:8008",
            web_server: "http://web:8080",
            files_server: "http://files:8081",
            env_hyperparams: hp,
            checkout,
            working_dir: "src",
            entry_point: "app/train.py --lr 1",
            venv_dir: Path::new("/venvs/t1.1"),
            inherited_pythonpath: Some("/inherited"),
        }
    }

    #[test]
    fn variables_in_upstream_order_with_twins() {
        let c = config(
            r#"environment { FROM_CONF: "yes", CLEARML_TASK_ID: "overridden-by-the-agent", NUM: 3 }
               agent.enable_task_env: true"#,
        );
        let mut hp = BTreeMap::new();
        hp.insert("FROM_TASK".to_string(), "1".to_string());
        hp.insert("FROM_CONF".to_string(), "task-wins".to_string());
        let cfg = TaskEnvConfig::from_config(&c, &|k| {
            (k == "CLEARML_AGENT_EXTRA_PYTHON_PATH").then(|| "/extra".to_string())
        });
        let t = task_environment(&cfg, &input(&c, &hp, Path::new("/runs/t1.1/code")));
        let m = t.env_map();
        assert_eq!(m["CLEARML_TASK_ID"], "t1");
        assert_eq!(m["TRAINS_TASK_ID"], "t1");
        assert_eq!(m["CLEARML_LOG_LEVEL"], "DEBUG");
        assert_eq!(m["TRAINS_CONFIG_FILE"], "/runs/t1.1/proc/clearml.conf");
        assert_eq!(m["TRAINS_LOG_TASK_TO_BACKEND"], "0");
        assert_eq!(m["FROM_CONF"], "task-wins");
        assert_eq!(m["FROM_TASK"], "1");
        assert_eq!(m["NUM"], "3");
        assert_eq!(
            m["PYTHONPATH"],
            "/inherited:/runs/t1.1/code/src:/runs/t1.1/code/src/app:/extra"
        );
        assert!(t.notes.iter().any(|n| n.contains("FROM_CONF")));
        // Without enable_task_env the hyperparameters stay out; apply_environment can be off.
        let c2 = config(r#"environment { FROM_CONF: "yes" }"#);
        let off = TaskEnvConfig::from_config(&c2, &|k| {
            (k == "CLEARML_AGENT_ENABLE_ENV_CONFIG_SECTION").then(|| "0".to_string())
        });
        let m = task_environment(&off, &input(&c2, &hp, Path::new("/r"))).env_map();
        assert!(
            !m.contains_key("FROM_CONF") && !m.contains_key("FROM_TASK"),
            "{m:?}"
        );
        let root = TaskEnvConfig {
            force_git_root_python_path: true,
            extra_python_path: None,
            ..off
        };
        let m = task_environment(&root, &input(&c2, &hp, Path::new("/r"))).env_map();
        assert_eq!(m["PYTHONPATH"], "/inherited:/r");
    }

    #[test]
    fn the_config_file_is_the_whole_configuration_with_the_agents_hosts() {
        let c = config(
            r#"api { api_server: "http://old", credentials { access_key: A, secret_key: S } }
               sdk { development.default_output_uri: "s3://b/o", aws.s3 { key: K, secret: KS } }
               agent { worker_name: w }"#,
        );
        let text = task_config_text(&c, ("http://api:8008", "", "http://files:8081"));
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["api"]["api_server"], "http://api:8008");
        assert_eq!(v["api"]["files_server"], "http://files:8081");
        assert_eq!(v["api"]["credentials"]["secret_key"], "S");
        assert_eq!(v["sdk"]["development"]["default_output_uri"], "s3://b/o");
        assert_eq!(v["sdk"]["aws"]["s3"]["secret"], "KS");
        assert_eq!(v["agent"]["worker_name"], "w");
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("proc/clearml.conf");
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, "old").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_config_file(&p, &text).unwrap();
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(std::fs::read_to_string(&p).unwrap(), text);
    }

    #[test]
    fn files_section_as_upstream() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().display();
        let c = config(&format!(
            r#"files {{
                 plain {{ path: "{dir}/a/plain.txt", contents: "hello", mode: "600" }}
                 b64 {{ path: "{dir}/b.bin", contents: "aGk=", format: base64, target_format: bytes }}
                 js {{ path: "{dir}/c.json", contents: {{ x: 1 }}, target_format: json }}
                 keep {{ path: "{dir}/keep.txt", contents: "new", overwrite: false }}
                 isdir {{ path: "{dir}", contents: "x" }}
               }}"#
        ));
        std::fs::write(d.path().join("keep.txt"), "old").unwrap();
        let files = config_files(&c);
        assert_eq!(files.len(), 5);
        let mut log = Vec::new();
        write_files(&files, &mut |l| log.push(l.to_string()));
        assert_eq!(
            std::fs::read_to_string(d.path().join("a/plain.txt")).unwrap(),
            "hello"
        );
        assert_eq!(
            std::fs::metadata(d.path().join("a/plain.txt"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o600
        );
        assert_eq!(std::fs::read(d.path().join("b.bin")).unwrap(), b"hi");
        let js: Value =
            serde_json::from_str(&std::fs::read_to_string(d.path().join("c.json")).unwrap())
                .unwrap();
        assert_eq!(js, serde_json::json!({"x": 1}));
        assert_eq!(
            std::fs::read_to_string(d.path().join("keep.txt")).unwrap(),
            "old"
        );
        assert!(
            log.iter()
                .any(|l| l.starts_with("Skipped [keep]: file exists")),
            "{log:?}"
        );
        assert!(
            log.iter()
                .any(|l| l.starts_with("Skipped [isdir]: is a directory")),
            "{log:?}"
        );
        // apply_files off: nothing to write.
        let off = TaskEnvConfig::from_config(&c, &|k| {
            (k == "CLEARML_AGENT_ENABLE_FILES_CONFIG_SECTION").then(|| "false".to_string())
        });
        let hp = BTreeMap::new();
        assert!(task_environment(&off, &input(&c, &hp, d.path()))
            .files
            .is_empty());
    }
}
