//! The agent's settings: `clearml.conf` keys with their upstream defaults, the named `CLEARML_*`
//! environment variables (which win over the file), and the generic `CLEARML_AGENT__A__B`
//! overrides (applied by [`Config::load`]). One place turns configuration into typed values, so
//! every other module takes plain settings.

use super::{expand_home, Config};
use serde_json::Value;
use std::path::PathBuf;

/// Named variables and the config keys they set (clearml-agent `definitions.ENVIRONMENT_CONFIG`).
pub const NAMED_ENV: &[(&str, &str)] = &[
    ("CLEARML_API_HOST", "api.api_server"),
    ("CLEARML_WEB_HOST", "api.web_server"),
    ("CLEARML_FILES_HOST", "api.files_server"),
    ("CLEARML_API_ACCESS_KEY", "api.credentials.access_key"),
    ("CLEARML_API_SECRET_KEY", "api.credentials.secret_key"),
    ("CLEARML_AUTH_TOKEN", "api.auth_token"),
    ("CLEARML_API_DEFAULT_REQ_METHOD", "api.http.default_method"),
    ("CLEARML_WORKER_NAME", "agent.worker_name"),
    ("CLEARML_WORKER_ID", "agent.worker_id"),
    ("CLEARML_CUDA_VERSION", "agent.cuda_version"),
    ("CUDA_VERSION", "agent.cuda_version"),
    ("CLEARML_AGENT_GIT_USER", "agent.git_user"),
    ("CLEARML_AGENT_GIT_PASS", "agent.git_pass"),
    ("CLEARML_AGENT_GIT_HOST", "agent.git_host"),
    ("CLEARML_AGENT_VENV_CACHE_PATH", "agent.venvs_cache.path"),
    (
        "CLEARML_AGENT_PACKAGE_MANAGER",
        "agent.package_manager.type",
    ),
    ("CLEARML_AGENT_JOURNAL_DIR", "agent.journal.dir"),
];

/// Applies the named variables present in the environment (they win over the file).
pub fn apply_named_env(config: &mut Config, env: &dyn Fn(&str) -> Option<String>) {
    for (var, path) in NAMED_ENV {
        if let Some(value) = env(var).filter(|v| !v.is_empty()) {
            let parts: Vec<String> = path.split('.').map(str::to_string).collect();
            if let Some(root) = config.root.as_object_mut() {
                super::hocon::set_path(root, &parts, Value::String(value));
            }
        }
    }
}

/// What a restarted agent does with a run whose user process is gone (the machine rebooted):
/// `agent.resume.on_lost_process`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LostProcess {
    /// Put the task back in its queue (default): it runs again from the start.
    Requeue,
    /// Fail it with the reason "process lost: agent host restarted".
    Fail,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PackageManager {
    Uv,
    Pip,
}

/// Everything the agent reads from its configuration.
#[derive(Clone)]
pub struct AgentSettings {
    pub api_server: String,
    pub web_server: String,
    pub files_server: String,
    pub access_key: Option<String>,
    pub secret_key: Option<String>,
    pub auth_token: Option<String>,
    pub http_method: String,
    pub worker_name: String,
    pub worker_id: Option<String>,
    pub python_binary: Option<String>,
    pub package_manager: PackageManager,
    pub extra_index_url: Vec<String>,
    pub priority_packages: Vec<String>,
    pub post_packages: Vec<String>,
    pub force_upgrade: bool,
    pub system_site_packages: bool,
    pub venvs_dir: PathBuf,
    pub venvs_cache_path: Option<PathBuf>,
    pub venvs_cache_max_entries: usize,
    pub venvs_cache_free_space_threshold_gb: f64,
    pub vcs_cache_path: Option<PathBuf>,
    pub git_user: Option<String>,
    pub git_pass: Option<String>,
    pub git_host: Option<String>,
    pub force_git_ssh_protocol: bool,
    pub cuda_version: Option<String>,
    pub journal_dir: PathBuf,
    pub runs_dir: PathBuf,
    pub tools_dir: PathBuf,
    pub polling_interval_s: f64,
    pub status_report_interval_s: f64,
    pub task_ping_interval_s: f64,
    pub stop_grace_s: f64,
    pub log_flush_interval_s: f64,
    pub on_lost_process: LostProcess,
    /// `agent.journal.flush` (default true): flush each journal record to disk before the next
    /// effect. Only the journaling-cost benchmark turns it off.
    pub journal_flush: bool,
    /// `agent.pid_file`: where `daemon` records its pid for `daemon --stop`.
    pub pid_file: PathBuf,
    /// Cloud metadata base URL for preemption notices (`agent.preemption.metadata_url`).
    pub preemption_metadata_url: String,
    /// `agent.preemption.enabled`: `auto` (on when the endpoint answers), `true` or `false`.
    pub preemption_enabled: Option<bool>,
    pub preemption_provider: String,
    pub preemption_poll_s: f64,
    /// Signal sent to the user process on a notice, so it can checkpoint.
    pub preemption_signal: i32,
    /// `agent.resume.on_preemption`: requeue the task at the front of its queue (default) or
    /// leave it to resume on the same disk.
    pub requeue_on_preemption: bool,
    /// `agent.clean_up_runs` (default true): a finished run's checkout, venv and output file are
    /// removed (the journal keeps its history).
    pub clean_up_runs: bool,
    /// `agent.max_unshipped_output_mb` (default 1024): how much of a run's output may wait in its
    /// file while the server is unreachable; beyond it output is dropped, with a marker line.
    pub max_unshipped_output_bytes: u64,
    /// `agent.journal.retention` (default 7d): terminal runs older than this are compacted when
    /// the daemon starts.
    pub journal_retention: std::time::Duration,
    /// Where `agent.preemption.enabled: auto` reads the machine's vendor (`sys_vendor`,
    /// `product_name`) before it talks to any metadata service (`agent.preemption.dmi_dir`).
    pub preemption_dmi_dir: PathBuf,
    /// First delay before a retryable stage failure is retried; doubles each time
    /// (`agent.stage_retry_base_sec`, default 2).
    pub stage_retry_base_s: f64,
    /// How long the daemon waits for the server's first answer before it says so and retries
    /// (`agent.startup_probe_timeout_sec`, default 3).
    pub startup_probe_timeout_s: f64,
}

impl std::fmt::Debug for AgentSettings {
    // Secrets stay out of debug output.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentSettings")
            .field("api_server", &self.api_server)
            .field("worker_name", &self.worker_name)
            .field("worker_id", &self.worker_id)
            .field("package_manager", &self.package_manager)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("config key {key}: {reason}")]
    Invalid { key: String, reason: String },
}

fn string_list(config: &Config, key: &str) -> Vec<String> {
    match config.get(key) {
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect(),
        Some(Value::String(s)) if !s.trim().is_empty() => {
            s.split(',').map(|x| x.trim().to_string()).collect()
        }
        _ => vec![],
    }
}

fn opt_string(config: &Config, key: &str) -> Option<String> {
    config.get_str(key).filter(|s| !s.trim().is_empty())
}

fn boolean(config: &Config, key: &str, default: bool) -> Result<bool, SettingsError> {
    match config.get(key) {
        None => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(Value::String(s)) => match s.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Ok(true),
            "false" | "0" | "no" | "off" | "" => Ok(false),
            _ => Err(SettingsError::Invalid {
                key: key.into(),
                reason: format!("expected true or false, got {s:?}"),
            }),
        },
        Some(other) => Err(SettingsError::Invalid {
            key: key.into(),
            reason: format!("expected true or false, got {other}"),
        }),
    }
}

fn number(config: &Config, key: &str, default: f64) -> Result<f64, SettingsError> {
    match config.get(key) {
        None => Ok(default),
        Some(Value::Number(n)) => Ok(n.as_f64().unwrap_or(default)),
        Some(Value::String(s)) => s.trim().parse().map_err(|_| SettingsError::Invalid {
            key: key.into(),
            reason: format!("expected a number, got {s:?}"),
        }),
        Some(other) => Err(SettingsError::Invalid {
            key: key.into(),
            reason: format!("expected a number, got {other}"),
        }),
    }
}

fn path(config: &Config, key: &str, default: &str) -> PathBuf {
    expand_home(&opt_string(config, key).unwrap_or_else(|| default.to_string()))
}

impl AgentSettings {
    pub fn from_config(config: &Config) -> Result<AgentSettings, SettingsError> {
        let manager = match opt_string(config, "agent.package_manager.type")
            .as_deref()
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            None | Some("uv") => PackageManager::Uv,
            Some("pip") => PackageManager::Pip,
            Some(other) => {
                return Err(SettingsError::Invalid {
                    key: "agent.package_manager.type".into(),
                    reason: format!(
                        "expected uv or pip, got {other:?} (conda and poetry are not supported)"
                    ),
                })
            }
        };
        let method = opt_string(config, "api.http.default_method")
            .unwrap_or_else(|| "GET".into())
            .to_ascii_uppercase();
        if !["GET", "POST", "PUT"].contains(&method.as_str()) {
            return Err(SettingsError::Invalid {
                key: "api.http.default_method".into(),
                reason: format!("expected GET, POST or PUT, got {method:?}"),
            });
        }
        let venvs_cache_enabled = opt_string(config, "agent.venvs_cache.path").is_some()
            || config.get("agent.venvs_cache.path").is_none();
        let vcs_enabled = boolean(config, "agent.vcs_cache.enabled", true)?;
        let api_server = opt_string(config, "api.api_server")
            .or_else(|| opt_string(config, "api.host"))
            .unwrap_or_else(|| "http://localhost:8008".into());
        let positive = |key: &str, default: f64| -> Result<f64, SettingsError> {
            let v = number(config, key, default)?;
            if v <= 0.0 {
                return Err(SettingsError::Invalid {
                    key: key.into(),
                    reason: format!("must be positive, got {v}"),
                });
            }
            Ok(v)
        };
        Ok(AgentSettings {
            web_server: opt_string(config, "api.web_server").unwrap_or_else(|| api_server.clone()),
            files_server: opt_string(config, "api.files_server").unwrap_or_default(),
            api_server: api_server.trim_end_matches('/').to_string(),
            access_key: opt_string(config, "api.credentials.access_key"),
            secret_key: opt_string(config, "api.credentials.secret_key"),
            auth_token: opt_string(config, "api.auth_token"),
            http_method: method,
            worker_name: opt_string(config, "agent.worker_name")
                .unwrap_or_else(crate::host::hostname),
            worker_id: opt_string(config, "agent.worker_id"),
            python_binary: opt_string(config, "agent.python_binary")
                .or_else(|| opt_string(config, "agent.default_python")),
            package_manager: manager,
            extra_index_url: string_list(config, "agent.package_manager.extra_index_url"),
            priority_packages: string_list(config, "agent.package_manager.priority_packages"),
            post_packages: string_list(config, "agent.package_manager.post_packages"),
            force_upgrade: boolean(config, "agent.package_manager.force_upgrade", false)?,
            system_site_packages: boolean(
                config,
                "agent.package_manager.system_site_packages",
                false,
            )?,
            venvs_dir: path(config, "agent.venvs_dir", "~/.clearml/venvs-builds"),
            venvs_cache_path: venvs_cache_enabled
                .then(|| path(config, "agent.venvs_cache.path", "~/.clearml/venvs-cache")),
            venvs_cache_max_entries: number(config, "agent.venvs_cache.max_entries", 10.0)?.max(1.0)
                as usize,
            venvs_cache_free_space_threshold_gb: number(
                config,
                "agent.venvs_cache.free_space_threshold_gb",
                2.0,
            )?,
            vcs_cache_path: vcs_enabled
                .then(|| path(config, "agent.vcs_cache.path", "~/.clearml/vcs-cache")),
            git_user: opt_string(config, "agent.git_user"),
            git_pass: opt_string(config, "agent.git_pass"),
            git_host: opt_string(config, "agent.git_host"),
            force_git_ssh_protocol: boolean(config, "agent.force_git_ssh_protocol", false)?,
            cuda_version: opt_string(config, "agent.cuda_version"),
            journal_dir: config.journal_dir(),
            runs_dir: path(config, "agent.runs_dir", "~/.clearml/agent-runs"),
            tools_dir: path(config, "agent.tools_dir", "~/.clearml/agent-tools"),
            polling_interval_s: positive("agent.polling_interval", 5.0)?,
            status_report_interval_s: positive("agent.status_report_interval_sec", 30.0)?,
            task_ping_interval_s: positive("agent.task_ping_interval_sec", 60.0)?,
            stop_grace_s: number(config, "agent.stop_grace_period_sec", 10.0)?.max(0.0),
            log_flush_interval_s: positive("agent.log_flush_interval_sec", 1.0)?,
            preemption_metadata_url: opt_string(config, "agent.preemption.metadata_url")
                .unwrap_or_else(|| "http://169.254.169.254".into())
                .trim_end_matches('/')
                .to_string(),
            preemption_enabled: match opt_string(config, "agent.preemption.enabled").as_deref() {
                None | Some("auto") => None,
                Some(_) => Some(boolean(config, "agent.preemption.enabled", true)?),
            },
            preemption_provider: {
                let p = opt_string(config, "agent.preemption.provider")
                    .unwrap_or_else(|| "auto".into());
                if !["auto", "", "aws", "gcp", "azure"].contains(&p.as_str()) {
                    return Err(SettingsError::Invalid {
                        key: "agent.preemption.provider".into(),
                        reason: format!("expected auto, aws, gcp or azure, got {p:?}"),
                    });
                }
                p
            },
            preemption_poll_s: positive("agent.preemption.poll_interval_sec", 2.0)?,
            preemption_signal: match opt_string(config, "agent.preemption.signal")
                .as_deref()
                .unwrap_or("SIGTERM")
            {
                "SIGTERM" | "TERM" => libc::SIGTERM,
                "SIGINT" | "INT" => libc::SIGINT,
                "SIGUSR1" | "USR1" => libc::SIGUSR1,
                "SIGUSR2" | "USR2" => libc::SIGUSR2,
                other => {
                    return Err(SettingsError::Invalid {
                        key: "agent.preemption.signal".into(),
                        reason: format!(
                            "expected SIGTERM, SIGINT, SIGUSR1 or SIGUSR2, got {other:?}"
                        ),
                    })
                }
            },
            requeue_on_preemption: match opt_string(config, "agent.resume.on_preemption").as_deref()
            {
                None | Some("requeue") => true,
                Some("resume") => false,
                Some(other) => {
                    return Err(SettingsError::Invalid {
                        key: "agent.resume.on_preemption".into(),
                        reason: format!("expected requeue or resume, got {other:?}"),
                    })
                }
            },
            journal_flush: boolean(config, "agent.journal.flush", true)?,
            journal_retention: match opt_string(config, "agent.journal.retention") {
                None => std::time::Duration::from_secs(7 * 24 * 3600),
                Some(text) => {
                    humantime::parse_duration(&text).map_err(|e| SettingsError::Invalid {
                        key: "agent.journal.retention".into(),
                        reason: format!("expected a duration such as 7d or 12h, got {text:?}: {e}"),
                    })?
                }
            },
            preemption_dmi_dir: path(config, "agent.preemption.dmi_dir", "/sys/class/dmi/id"),
            stage_retry_base_s: number(config, "agent.stage_retry_base_sec", 2.0)?.max(0.0),
            startup_probe_timeout_s: positive("agent.startup_probe_timeout_sec", 3.0)?,
            clean_up_runs: boolean(config, "agent.clean_up_runs", true)?,
            max_unshipped_output_bytes: (positive("agent.max_unshipped_output_mb", 1024.0)?
                * 1024.0
                * 1024.0) as u64,
            pid_file: path(
                config,
                "agent.pid_file",
                "~/.clearml/clearml-agent-daemon.pid",
            ),
            on_lost_process: match opt_string(config, "agent.resume.on_lost_process").as_deref() {
                None | Some("requeue") => LostProcess::Requeue,
                Some("fail") => LostProcess::Fail,
                Some(other) => {
                    return Err(SettingsError::Invalid {
                        key: "agent.resume.on_lost_process".into(),
                        reason: format!("expected requeue or fail, got {other:?}"),
                    })
                }
            },
        })
    }

    /// The worker id as upstream: `agent.worker_id`/`CLEARML_WORKER_ID`, else `<worker_name>:<slot>`.
    pub fn worker_id(&self, slot: u32) -> String {
        self.worker_id
            .clone()
            .unwrap_or_else(|| format!("{}:{slot}", self.worker_name))
    }
}

/// Loads the configuration the way every agent command does.
pub fn load(explicit: Option<&std::path::Path>) -> Result<(Config, AgentSettings), anyhow::Error> {
    let mut config = Config::load(explicit)?;
    apply_named_env(&mut config, &|v| std::env::var(v).ok());
    let settings = AgentSettings::from_config(&config)?;
    Ok((config, settings))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Config {
        Config {
            root: super::super::hocon::parse(text, &|_| None).unwrap(),
            source: None,
        }
    }

    #[test]
    fn defaults_are_upstream() {
        let s = AgentSettings::from_config(&config("")).unwrap();
        assert_eq!(s.package_manager, PackageManager::Uv);
        assert_eq!(s.polling_interval_s, 5.0);
        assert_eq!(s.task_ping_interval_s, 60.0);
        assert_eq!(s.http_method, "GET");
        assert!(s.venvs_cache_path.is_some() && s.vcs_cache_path.is_some());
        assert_eq!(s.venvs_cache_max_entries, 10);
    }

    #[test]
    fn named_env_wins_over_the_file() {
        let mut c = config(
            "api { api_server: \"http://file:8008\", credentials { access_key: fromfile } }",
        );
        apply_named_env(&mut c, &|v| match v {
            "CLEARML_API_HOST" => Some("http://env:9000/".into()),
            "CLEARML_WORKER_ID" => Some("box:7".into()),
            _ => None,
        });
        let s = AgentSettings::from_config(&c).unwrap();
        assert_eq!(s.api_server, "http://env:9000");
        assert_eq!(s.access_key.as_deref(), Some("fromfile"));
        assert_eq!(s.worker_id(0), "box:7");
        assert!(!format!("{s:?}").contains("fromfile"));
    }

    #[test]
    fn bad_values_name_the_key() {
        let e =
            AgentSettings::from_config(&config("agent.package_manager.type: conda")).unwrap_err();
        assert!(e.to_string().contains("agent.package_manager.type"), "{e}");
        let e = AgentSettings::from_config(&config("agent.polling_interval: -1")).unwrap_err();
        assert!(e.to_string().contains("agent.polling_interval"), "{e}");
        let e = AgentSettings::from_config(&config("agent.package_manager.force_upgrade: maybe"))
            .unwrap_err();
        assert!(e.to_string().contains("force_upgrade"), "{e}");
    }
}
