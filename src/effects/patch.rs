//! `ApplyPatch`: the task's uncommitted diff on top of the checkout; without a repository the
//! "diff" is the script itself (how the SDK stores a standalone script), written as the entry
//! point, which must stay inside the run's checkout.
//!
//! Redo is safe: a `patch.started` marker is on disk before the tree is touched and a
//! `patch.done` marker after; a redo that finds the first without the second starts again from a
//! clean checkout of the recorded commit instead of applying the diff to a patched tree.

use super::task::{inside, World};
use super::{source, vcs, EffectFailure, EffectOutcome, Reconciled};
use crate::fsm::{EffectResult, RunState};
use std::path::Path;

const STARTED: &str = "patch.started";
const DONE: &str = "patch.done";
/// Where runs journaled before the markers moved out of the checkout kept theirs.
const LEGACY_DONE: &str = ".clearml-agent-patched";

fn write_synced(path: &Path, text: &str) -> Result<(), EffectFailure> {
    use std::io::Write;
    let fail = |e: std::io::Error| EffectFailure::fatal(format!("{}: {e}", path.display()));
    let mut f = std::fs::File::create(path).map_err(fail)?;
    f.write_all(text.as_bytes()).map_err(fail)?;
    f.sync_all().map_err(fail)
}

fn done(w: &World, state: &RunState) -> Option<bool> {
    let dirs = w.dirs(state);
    std::fs::read_to_string(dirs.run.join(DONE))
        .or_else(|_| std::fs::read_to_string(dirs.code.join(LEGACY_DONE)))
        .ok()
        .map(|s| s == "applied")
}

/// The first word of the entry point when it names a script (not `-m module`).
pub fn entry_script(state: &RunState) -> Option<String> {
    let entry = state.snapshot.entry_point.clone()?;
    let first = entry.split_whitespace().next()?.to_string();
    (first != "-m").then_some(first)
}

pub fn perform(w: &World, state: &RunState) -> EffectOutcome {
    if let Some(applied) = done(w, state) {
        return Ok(EffectResult::Patched { applied });
    }
    let dirs = w.dirs(state);
    let diff = state.snapshot.diff.clone().unwrap_or_default();
    let started = dirs.run.join(STARTED);
    let spec = source::spec(w, state)?;
    if started.exists() {
        if let Some(mut spec) = spec.clone() {
            // An earlier attempt may have patched part of the tree: back to the recorded commit.
            spec.commit = state.source.as_ref().and_then(|s| s.commit.clone());
            w.say(
                state,
                "INFO",
                "An earlier attempt to apply the diff was interrupted: checking out again",
            );
            let mut log = |l: &str| w.say(state, "INFO", l);
            vcs::checkout(&source::vcs_settings(w), &spec, &dirs.code, &mut log)
                .map_err(EffectFailure::from)?;
        }
    }
    std::fs::create_dir_all(&dirs.run)
        .map_err(|e| EffectFailure::fatal(format!("{}: {e}", dirs.run.display())))?;
    write_synced(&started, "")?;
    let applied = if spec.is_some() {
        let mut log = |l: &str| w.say(state, "INFO", l);
        let applied = vcs::apply_diff(&dirs.code, &diff, &mut log).map_err(EffectFailure::from)?;
        crate::failpoint::hit("mid-patch");
        applied
    } else {
        let entry = entry_script(state).unwrap_or_else(|| "script.py".into());
        let working = state.snapshot.working_dir.clone().unwrap_or_default();
        let base = inside(&dirs.code, &working, "script.working_dir")?;
        let target = inside(&base, &entry, "script.entry_point")?;
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| EffectFailure::fatal(format!("{}: {e}", parent.display())))?;
        }
        std::fs::write(&target, diff.as_bytes())
            .map_err(|e| EffectFailure::fatal(format!("{}: {e}", target.display())))?;
        crate::failpoint::hit("mid-patch");
        true
    };
    write_synced(
        &dirs.run.join(DONE),
        if applied { "applied" } else { "nothing" },
    )?;
    Ok(EffectResult::Patched { applied })
}

pub fn reconcile(w: &World, state: &RunState) -> Reconciled {
    match done(w, state) {
        Some(applied) => Reconciled::Done(EffectResult::Patched { applied }),
        // `perform` sees the started marker and begins from a clean checkout.
        None => Reconciled::Redo,
    }
}
