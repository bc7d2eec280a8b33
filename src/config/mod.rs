//! Configuration: `clearml.conf` (HOCON) merged with `CLEARML_AGENT__A__B=value`
//! environment overrides. Issue 4 extends this with every api/agent key; today the
//! journal location is read from here.

pub mod hocon;
pub mod settings;

use serde_json::Value;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path}: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: hocon::ParseError,
    },
    #[error("environment variable {var}: {source}")]
    Override {
        var: String,
        #[source]
        source: hocon::ParseError,
    },
}

/// The merged configuration tree.
#[derive(Debug, Clone, Default)]
pub struct Config {
    pub root: Value,
    /// The file it was read from, if any.
    pub source: Option<PathBuf>,
}

fn env_var(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

fn home() -> Option<PathBuf> {
    std::env::var_os("HOME").map(PathBuf::from)
}

/// Expand a leading `~` to the home directory.
pub fn expand_home(p: &str) -> PathBuf {
    match (p.strip_prefix("~/"), home()) {
        (Some(rest), Some(h)) => h.join(rest),
        _ if p == "~" => home().unwrap_or_else(|| PathBuf::from(p)),
        _ => PathBuf::from(p),
    }
}

impl Config {
    /// Load from `explicit`, else `CLEARML_CONFIG_FILE`, else `~/clearml.conf` when it
    /// exists; then apply `CLEARML_AGENT__*` overrides.
    pub fn load(explicit: Option<&Path>) -> Result<Config, ConfigError> {
        let path = explicit
            .map(Path::to_path_buf)
            // Upstream accepts a CLEARML_CONFIG_FILE that does not exist (environment-only
            // configuration); only an explicit --config-file must exist.
            .or_else(|| {
                env_var("CLEARML_CONFIG_FILE")
                    .map(|p| expand_home(&p))
                    .filter(|p| p.exists())
            })
            .or_else(|| {
                home()
                    .map(|h| h.join("clearml.conf"))
                    .filter(|p| p.exists())
            });
        let mut config = match &path {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.clone(),
                    source,
                })?;
                Config {
                    root: hocon::parse(&text, &env_var).map_err(|source| ConfigError::Parse {
                        path: p.clone(),
                        source,
                    })?,
                    source: path.clone(),
                }
            }
            None => Config {
                root: Value::Object(Default::default()),
                source: None,
            },
        };
        config.apply_env_overrides(std::env::vars())?;
        Ok(config)
    }

    /// `CLEARML_AGENT__A__B__C=value` sets `a.b.c` (lower-cased), the value parsed as HOCON.
    pub fn apply_env_overrides(
        &mut self,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<(), ConfigError> {
        for (var, value) in vars {
            let Some(path) = var.strip_prefix("CLEARML_AGENT__") else {
                continue;
            };
            let parts: Vec<String> = path.split("__").map(str::to_lowercase).collect();
            if parts.iter().any(String::is_empty) {
                continue;
            }
            if parts.len() > hocon::MAX_KEY_PARTS {
                return Err(ConfigError::Override {
                    var: format!("CLEARML_AGENT__{}...", &path[..path.len().min(40)]),
                    source: hocon::ParseError {
                        line: 1,
                        column: 1,
                        message: format!("more than {} key parts", hocon::MAX_KEY_PARTS),
                    },
                });
            }
            let parsed = hocon::parse(&format!("v: {value}"), &env_var).map_err(|source| {
                ConfigError::Override {
                    var: var.clone(),
                    source,
                }
            })?;
            let v = parsed.get("v").cloned().unwrap_or(Value::Null);
            let root = self.root.as_object_mut().expect("config root is an object");
            hocon::set_path(root, &parts, v);
        }
        Ok(())
    }

    pub fn get(&self, path: &str) -> Option<&Value> {
        hocon::lookup(&self.root, path).filter(|v| !v.is_null())
    }

    pub fn get_str(&self, path: &str) -> Option<String> {
        match self.get(path)? {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    }

    /// `agent.journal.dir`, default `~/.clearml/agent-journal`.
    pub fn journal_dir(&self) -> PathBuf {
        self.get_str("agent.journal.dir")
            .filter(|s| !s.is_empty())
            .map(|s| expand_home(&s))
            .unwrap_or_else(|| expand_home("~/.clearml/agent-journal"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_overrides_win_and_parse_values() {
        let mut c = Config {
            root: hocon::parse("agent { journal { dir: /a }, x: 1 }", &|_| None).unwrap(),
            source: None,
        };
        c.apply_env_overrides([
            (
                "CLEARML_AGENT__AGENT__JOURNAL__DIR".to_string(),
                "/b".to_string(),
            ),
            (
                "CLEARML_AGENT__AGENT__FORCE".to_string(),
                "true".to_string(),
            ),
            ("UNRELATED".to_string(), "x".to_string()),
        ])
        .unwrap();
        assert_eq!(c.journal_dir(), PathBuf::from("/b"));
        assert_eq!(c.get("agent.force"), Some(&Value::Bool(true)));
        assert_eq!(c.get_str("agent.x").as_deref(), Some("1"));
    }
}
