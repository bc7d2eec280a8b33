//! `ResolveEnv`: the task's Python environment ([`super::venv`]), built into the run's venv dir.
//!
//! Requirements come from `script.requirements.pip`; when a task has none and has a repository,
//! the repository's `requirements.txt` is read at the task's commit from the VCS cache
//! (populating it, so `Clone` then only copies). That is how the state machine keeps its order
//! (EnvResolved before Cloned) while honouring repository requirements.
//!
//! Redo is safe: a half-built venv is removed first; a finished one (completion marker) is kept
//! by reconcile.

use super::task::World;
use super::{source, vcs, venv, EffectFailure, EffectOutcome, Reconciled};
use crate::config::settings::PackageManager;
use crate::fsm::{EffectResult, EnvFacts, RunState};
use std::path::{Path, PathBuf};

/// Requirement lines from `script.requirements.pip` (comments and blanks dropped).
pub fn requirement_lines(text: &str) -> Vec<String> {
    text.lines()
        .map(|l| l.split(" #").next().unwrap_or("").trim())
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect()
}

fn which(binary: &str) -> Option<PathBuf> {
    if binary.contains('/') {
        return Path::new(binary).is_file().then(|| PathBuf::from(binary));
    }
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(binary))
            .find(|c| c.is_file())
    })
}

fn python_for(w: &World, state: &RunState) -> String {
    let binary = state.snapshot.binary.clone().unwrap_or_default();
    if let Some(p) = &w.settings.python_binary {
        return p.clone();
    }
    // The task's `python3.11` is used when this machine has it; else the default python3.
    if binary.starts_with("python") && which(&binary).is_some() {
        return binary;
    }
    "python3".into()
}

fn venv_settings(w: &World) -> venv::EnvSettings {
    let s = &w.settings;
    let cache = s.venvs_cache_path.clone();
    venv::EnvSettings {
        venvs_dir: s.venvs_dir.clone(),
        cache_enabled: cache.is_some(),
        cache_dir: cache.unwrap_or_else(|| s.venvs_dir.join(".cache-disabled")),
        tools_dir: s.tools_dir.clone(),
        max_entries: s.venvs_cache_max_entries,
        free_space_threshold_gb: s.venvs_cache_free_space_threshold_gb,
    }
}

pub fn perform(w: &World, state: &RunState) -> EffectOutcome {
    let dirs = w.dirs(state);
    let mut requirements = requirement_lines(state.snapshot.requirements.as_deref().unwrap_or(""));
    if requirements.is_empty() {
        if let Some(spec) = source::spec(w, state)? {
            let vcs_settings = source::vcs_settings(w);
            let mut log = |l: &str| w.say(state, "INFO", l);
            match vcs::read_file_at(&vcs_settings, &spec, "requirements.txt", &mut log) {
                Ok(Some(text)) => {
                    requirements = requirement_lines(&text);
                    w.say(
                        state,
                        "INFO",
                        &format!(
                            "Using the repository's requirements.txt ({} lines)",
                            requirements.len()
                        ),
                    );
                }
                Ok(None) => {}
                Err(e) => return Err(EffectFailure::from(e).into()),
            }
        }
    }
    let s = &w.settings;
    let spec = venv::EnvSpec {
        python: python_for(w, state),
        requirements,
        manager: match s.package_manager {
            PackageManager::Uv => venv::Manager::Uv,
            PackageManager::Pip => venv::Manager::Pip,
        },
        extra_index_urls: s.extra_index_url.clone(),
        priority_packages: s.priority_packages.clone(),
        post_packages: s.post_packages.clone(),
        force_upgrade: s.force_upgrade,
        system_site_packages: s.system_site_packages,
        cuda_version: s.cuda_version.clone(),
    };
    // A half-built venv from a crashed attempt is never reused.
    let _ = std::fs::remove_dir_all(&dirs.venv);
    let env_settings = venv_settings(w);
    let mut log = |l: &str| {
        w.say(state, "INFO", l);
        if l.contains("Collecting") || l.contains("Resolved") || l.contains("Downloading") {
            crate::failpoint::hit("mid-install");
        }
    };
    let outcome = venv::build(&env_settings, &spec, &dirs.venv, &mut log).map_err(|e| {
        // An index that could not be reached is worth another try; a missing package is not.
        EffectFailure {
            retryable: e.is_retryable(),
            reason: e.to_string(),
        }
    })?;
    Ok(EffectResult::EnvResolved(EnvFacts {
        python: outcome.python.display().to_string(),
        venv_dir: outcome.venv_dir.display().to_string(),
        cache_hit: outcome.cache_hit,
        installed: outcome.installed,
    }))
}

/// A finished venv (completion marker) is kept, not rebuilt.
pub fn reconcile(w: &World, state: &RunState) -> Reconciled {
    let dirs = w.dirs(state);
    match venv::completed(&dirs.venv) {
        Some(m) => Reconciled::Done(EffectResult::EnvResolved(EnvFacts {
            python: venv::venv_python(&dirs.venv).display().to_string(),
            venv_dir: dirs.venv.display().to_string(),
            cache_hit: false,
            installed: m.installed,
        })),
        None => Reconciled::Redo,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requirement_lines_drop_comments() {
        assert_eq!(
            requirement_lines("# header\n\nsix\nnumpy>=1 # pinned\n  clearml\n"),
            vec!["six", "numpy>=1", "clearml"]
        );
    }
}
