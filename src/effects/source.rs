//! `Clone`: the task's repository at its commit ([`super::vcs`]), checked out into the run's
//! `code` dir through the VCS cache. No repository: an empty worktree.
//!
//! Credentials are never in the journal: a repository URL that carried user info is journaled
//! without it, with a [`CredentialRef`] saying where it came from, and the URL is read again from
//! the task when a clone needs it. Redo is safe: the checkout replaces the dir; a finished one
//! (completion marker) is kept by reconcile.

use super::task::{api_failure, World};
use super::{vcs, EffectFailure, EffectOutcome, Reconciled};
use crate::fsm::{CredentialRef, EffectResult, RunState, SourceFacts};
use serde_json::json;

/// In a run's checkout once it is complete: the commit checked out.
pub const CLONED_MARKER: &str = ".clearml-agent-cloned";

pub fn vcs_settings(w: &World) -> vcs::VcsSettings {
    let s = &w.settings;
    let cache = s.vcs_cache_path.clone();
    vcs::VcsSettings {
        cache_enabled: cache.is_some(),
        cache_dir: cache.unwrap_or_else(|| s.runs_dir.join(".vcs-cache")),
        git_user: s.git_user.clone(),
        git_pass: s.git_pass.clone(),
        git_host: s.git_host.clone(),
        force_git_ssh_protocol: s.force_git_ssh_protocol,
    }
}

/// The repository and revision of the task, with its credentials resolved from where they came
/// from; `None` for a task without a repository.
pub fn spec(w: &World, state: &RunState) -> Result<Option<vcs::SourceSpec>, EffectFailure> {
    let s = &state.snapshot;
    let Some(mut repo) = s.repository.clone().filter(|r| !r.trim().is_empty()) else {
        return Ok(None);
    };
    if let Some(CredentialRef::TaskRepositoryUrl) = &state.ext.pull.credentials {
        let task = w
            .api
            .call(
                "v2.14/tasks.get_all",
                &json!({"id": [state.task_id], "only_fields": ["script.repository"], "search_hidden": true}),
            )
            .map_err(api_failure)?;
        let url = task["tasks"][0]["script"]["repository"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        // Only the same repository's credentials: the task may have been edited meanwhile.
        if vcs::strip_credentials(&url) == repo {
            repo = url;
        }
    }
    let nonempty = |v: &Option<String>| v.clone().filter(|x| !x.trim().is_empty());
    Ok(Some(vcs::SourceSpec {
        repository: repo,
        branch: nonempty(&s.branch),
        tag: nonempty(&s.tag),
        commit: nonempty(&s.version_num),
    }))
}

pub fn perform(w: &World, state: &RunState) -> EffectOutcome {
    let dirs = w.dirs(state);
    let _ = std::fs::remove_dir_all(&dirs.code);
    let Some(spec) = spec(w, state)? else {
        std::fs::create_dir_all(&dirs.code)
            .map_err(|e| EffectFailure::fatal(format!("{}: {e}", dirs.code.display())))?;
        return Ok(EffectResult::Cloned(SourceFacts {
            worktree: dirs.code.display().to_string(),
            commit: None,
        }));
    };
    let settings = vcs_settings(w);
    let mut log = |l: &str| {
        w.say(state, "INFO", l);
        crate::failpoint::hit("mid-clone");
    };
    // A network failure is retried (with backoff, up to the stage limit); a missing commit is not.
    let out = vcs::checkout(&settings, &spec, &dirs.code, &mut log).map_err(EffectFailure::from)?;
    // Written last: a resumed run trusts a checkout only with it (see `reconcile`).
    std::fs::write(dirs.code.join(CLONED_MARKER), &out.commit)
        .map_err(|e| EffectFailure::fatal(format!("{}: {e}", dirs.code.display())))?;
    Ok(EffectResult::Cloned(SourceFacts {
        worktree: out.worktree.display().to_string(),
        commit: Some(out.commit),
    }))
}

pub fn reconcile(w: &World, state: &RunState) -> Reconciled {
    let dirs = w.dirs(state);
    let has_repo = state
        .snapshot
        .repository
        .as_deref()
        .is_some_and(|r| !r.trim().is_empty());
    if !has_repo {
        return Reconciled::Redo;
    }
    match std::fs::read_to_string(dirs.code.join(CLONED_MARKER)) {
        Ok(commit) if !commit.is_empty() => Reconciled::Done(EffectResult::Cloned(SourceFacts {
            worktree: dirs.code.display().to_string(),
            commit: Some(commit),
        })),
        _ => Reconciled::Redo,
    }
}
