//! Effect handlers: the only code that touches the world on behalf of a run.
//!
//! The runner calls [`EffectHandler::perform`] after the intent is on disk, and
//! [`EffectHandler::reconcile`] on restart for an intent that has no recorded result, so
//! a handler must be able to tell whether its effect already happened (clone dir at the
//! expected commit, venv completion marker, supervisor exit file) instead of redoing it.
//!
//! Effects observe, the runner decides: an effect never acts on a stop it sees (it returns
//! [`crate::fsm::EffectResult::StopObserved`], and the runner journals it before the state
//! machine asks for `Terminate`), never writes the journal, and never ends the process (a
//! shutdown is [`EffectError::Detached`], a value the runner hands back to the daemon).
//!
//! One module per command kind, perform and reconcile side by side: [`claim`], [`env`],
//! [`source`], [`patch`], [`process`] (launch, wait, terminate, behind the [`process::Runtime`]
//! trait), [`report`]; [`real::RealEffects`] dispatches to them.

pub mod claim;
pub mod cuda_version;
pub mod custom_build;
pub mod docker;
pub mod env;
pub mod env_plan;
pub mod logship;
pub mod patch;
pub mod pep440;
pub mod process;
pub mod project;
pub mod python;
pub mod real;
pub mod report;
pub mod requirements;
pub mod simulated;
pub mod source;
pub mod supervisor;
pub mod task;
pub mod task_env;
pub mod torch;
pub mod vcs;
pub mod venv;

use crate::fsm::{Command, EffectResult, RunState, StopRequest};

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

/// How an effect ended without a result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EffectError {
    /// The effect failed; the runner journals the failure.
    Failed(EffectFailure),
    /// The effect was left in flight on purpose (the agent is shutting down, the journal cannot
    /// be trusted): no result is journaled, the intent stays pending, and the run is picked up
    /// again by a later start.
    Detached(String),
}

impl From<EffectFailure> for EffectError {
    fn from(f: EffectFailure) -> Self {
        EffectError::Failed(f)
    }
}

impl std::fmt::Display for EffectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EffectError::Failed(x) => f.write_str(&x.reason),
            EffectError::Detached(why) => write!(f, "detached: {why}"),
        }
    }
}

pub type EffectOutcome = Result<EffectResult, EffectError>;

/// An installer or tool started for an effect dies with the agent (SIGKILL when the thread that
/// started it is gone): after a `kill -9` it must not go on writing into a directory the next
/// agent rebuilds. (The user process is the opposite: it runs under its own supervisor.)
pub fn die_with_agent(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
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

/// How much of a run's output the server acknowledged: the runner keeps it in the journal's
/// progress key (overwritten in place), a resumed effect continues from it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShipProgress {
    pub log_offset_shipped: u64,
    pub last_heartbeat_ms: u64,
}

/// One run's progress key, as the effects see it.
pub trait ProgressStore {
    /// An error when the stored entry cannot be trusted (never a silent zero).
    fn load(&self) -> Result<ShipProgress, String>;
    /// On disk when this returns.
    fn save(&mut self, progress: ShipProgress) -> Result<(), String>;
}

/// Progress kept nowhere, for effects run outside a journal.
#[derive(Default)]
pub struct NoProgress(pub ShipProgress);

impl ProgressStore for NoProgress {
    fn load(&self) -> Result<ShipProgress, String> {
        Ok(self.0)
    }
    fn save(&mut self, progress: ShipProgress) -> Result<(), String> {
        self.0 = progress;
        Ok(())
    }
}

/// What a watcher asks of a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Interruption {
    /// Stop the run (abort or requeue): journaled by the runner, then decided by the FSM.
    Stop(StopRequest),
    /// Leave the run as it is (its process stays under its supervisor) and stop driving it:
    /// the agent is shutting down; a later start resumes the run.
    Detach(String),
}

/// The watchers of one run (signals, `daemon --stop`, preemption notices), polled by the
/// runner between effects and by long effects while they wait. Per run, so that one daemon
/// can drive several runs with stop sources of their own.
pub trait StopSource: Send + Sync {
    fn poll(&self, state: &RunState) -> Option<Interruption>;
}

/// No watcher at all.
pub struct NoStops;

impl StopSource for NoStops {
    fn poll(&self, _state: &RunState) -> Option<Interruption> {
        None
    }
}

/// Everything an effect may use besides its handler's own state, handed over by the runner.
pub struct EffectCtx<'a> {
    pub progress: &'a mut dyn ProgressStore,
    pub stops: &'a dyn StopSource,
}

pub trait EffectHandler {
    /// Do the effect for `cmd`. `state` is the run's state with `cmd` pending.
    fn perform(&mut self, state: &RunState, cmd: &Command, ctx: &mut EffectCtx) -> EffectOutcome;

    /// Find out whether the effect of an intent that has no result already happened.
    fn reconcile(&mut self, state: &RunState, cmd: &Command) -> Reconciled;

    /// Called when a run left unfinished by an earlier life is picked up again, before anything
    /// else is done for it: whether the world moved on meanwhile (the task was stopped, reset,
    /// deleted or taken by another worker), in which case the run is closed with that reason.
    fn check_on_resume(&mut self, _state: &RunState) -> Option<StopRequest> {
        None
    }

    /// Called once a run is terminal: remove what the run left behind (its checkout and venv).
    /// Must be idempotent: it is called again for terminal runs at every start.
    fn clean_up(&mut self, _state: &RunState) {}

    /// Called when the runner detaches a run (the agent shuts down while it runs): a chance to
    /// tell the user process, e.g. a checkpoint signal before a preemption.
    fn on_detach(&mut self, _state: &RunState, _reason: &str) {}
}
