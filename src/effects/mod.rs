//! Effect handlers: the only code that touches the world on behalf of a run.
//!
//! The runner calls [`EffectHandler::perform`] after the intent is on disk, and
//! [`EffectHandler::reconcile`] on restart for an intent that has no recorded result, so
//! a handler must be able to tell whether its effect already happened (clone dir at the
//! expected commit, venv completion marker, supervisor exit file) instead of redoing it.

pub mod custom_build;
pub mod docker;
pub mod env_plan;
pub mod pep440;
pub mod project;
pub mod python;
pub mod requirements;
pub mod simulated;
pub mod supervisor;
pub mod task_env;
pub mod torch;
pub mod vcs;
pub mod venv;

use crate::fsm::{Command, EffectResult, RunState, StopRequest};
use crate::journal::Progress;

/// Why an effect did not produce its result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EffectFailure {
    /// Shown to the user as the task's failure reason: name the file, URL or package.
    pub reason: String,
    /// Worth trying again (a network error), as opposed to a definite failure.
    pub retryable: bool,
}

impl EffectFailure {
    pub fn fatal(reason: impl Into<String>) -> Self {
        EffectFailure {
            reason: reason.into(),
            retryable: false,
        }
    }
    pub fn retry(reason: impl Into<String>) -> Self {
        EffectFailure {
            reason: reason.into(),
            retryable: true,
        }
    }
}

/// What reconciling an unanswered intent found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reconciled {
    /// The effect had completed before the crash; this is its result.
    Done(EffectResult),
    /// The effect definitely failed.
    Failed(EffectFailure),
    /// The effect did not happen (or left nothing usable): perform it again.
    Redo,
}

/// Heartbeat-like progress of a long effect (how much output the server acknowledged), kept by
/// the runner in the journal's progress key: overwritten in place, never appended, and read
/// back by a resumed effect to continue where the last life stopped.
pub trait ProgressStore {
    fn load(&self) -> Progress;
    /// On disk when this returns.
    fn save(&mut self, progress: Progress) -> Result<(), String>;
}

/// Progress kept nowhere, for effects run outside a journal.
#[derive(Default)]
pub struct NoProgress(pub Progress);

impl ProgressStore for NoProgress {
    fn load(&self) -> Progress {
        self.0
    }
    fn save(&mut self, progress: Progress) -> Result<(), String> {
        self.0 = progress;
        Ok(())
    }
}

pub trait EffectHandler {
    /// Do the effect for `cmd`. `state` is the run's state with `cmd` pending.
    fn perform(
        &mut self,
        state: &RunState,
        cmd: &Command,
        progress: &mut dyn ProgressStore,
    ) -> Result<EffectResult, EffectFailure>;

    /// Find out whether the effect of an intent that has no result already happened.
    fn reconcile(&mut self, state: &RunState, cmd: &Command) -> Reconciled;

    /// An abort or requeue request from outside (the server, a preemption notice),
    /// checked between effects and after the user process ends.
    fn poll_stop(&mut self, _state: &RunState) -> Option<StopRequest> {
        None
    }

    /// Called when a run left unfinished by an earlier life is picked up again, before anything
    /// else is done for it: whether the world moved on meanwhile (the task was stopped, reset,
    /// deleted or taken by another worker), in which case the run is closed with that reason.
    fn check_on_resume(&mut self, _state: &RunState) -> Option<StopRequest> {
        None
    }

    /// Called once a run is terminal: remove what the run left behind (its checkout and venv).
    fn clean_up(&mut self, _state: &RunState) {}
}
