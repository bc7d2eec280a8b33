//! Events (what happened, as journaled) and commands (what the runner must do next).

use serde::{Deserialize, Serialize};
use std::fmt;

use super::state::{Outcome, StopRequest};

/// What the agent recorded about a task when it pulled it: everything later stages need,
/// so that a resumed run never depends on the server still having the same task body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskSnapshot {
    pub task_id: String,
    pub name: String,
    pub project: Option<String>,
    pub queue: Option<String>,
    pub repository: Option<String>,
    pub branch: Option<String>,
    pub tag: Option<String>,
    pub version_num: Option<String>,
    pub entry_point: Option<String>,
    pub working_dir: Option<String>,
    pub binary: Option<String>,
    pub diff: Option<String>,
    /// pip requirements text as stored in `script.requirements.pip`.
    pub requirements: Option<String>,
    pub container_image: Option<String>,
    pub container_args: Vec<String>,
}

/// Derived, never random: `{task_id}:{attempt}:{state}` where `state` is the state the
/// effect brings the run to. It names clone dirs, venv dirs, containers and supervisor files.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct EffectKey(pub String);

impl EffectKey {
    pub fn new(task_id: &str, attempt: u32, target_state: &str) -> Self {
        EffectKey(format!("{task_id}:{attempt}:{target_state}"))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for EffectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandKind {
    /// Choose python and build (or reuse) the virtual environment.
    ResolveEnv,
    /// Clone or fetch the repository and check out the recorded commit.
    Clone,
    /// Apply the task's uncommitted diff.
    ApplyPatch,
    /// Start the entry point under the per-run supervisor.
    Launch,
    /// Wait for the user process to exit (shipping its output meanwhile).
    Wait,
    /// Stop the user process group after an abort or requeue request.
    Terminate,
    /// Tell the server the run's outcome.
    Report(Outcome),
    /// Take the task: out of its queue and `tasks.started` (protocol 2 runs). Appended last:
    /// the variant index is part of the journal's encoding.
    Claim,
}

impl CommandKind {
    /// The state this effect brings the run to; the last part of its [`EffectKey`].
    pub fn target_state(&self) -> &'static str {
        match self {
            CommandKind::ResolveEnv => "EnvResolved",
            CommandKind::Clone => "Cloned",
            CommandKind::ApplyPatch => "Patched",
            CommandKind::Launch => "Running",
            CommandKind::Wait => "Exited",
            CommandKind::Terminate => "Terminated",
            CommandKind::Report(_) => "Reported",
            CommandKind::Claim => "Claimed",
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            CommandKind::ResolveEnv => "resolve-env",
            CommandKind::Clone => "clone",
            CommandKind::ApplyPatch => "apply-patch",
            CommandKind::Launch => "launch",
            CommandKind::Wait => "wait",
            CommandKind::Terminate => "terminate",
            CommandKind::Report(_) => "report",
            CommandKind::Claim => "claim",
        }
    }

    /// The prefix of a failure reason for this stage, as a user reads it in the task status.
    pub fn failure_label(&self) -> &'static str {
        match self {
            CommandKind::ResolveEnv => "environment setup failed",
            CommandKind::Clone => "repository clone failed",
            CommandKind::ApplyPatch => "applying uncommitted changes failed",
            CommandKind::Launch => "launching the entry point failed",
            CommandKind::Wait => "process lost",
            CommandKind::Terminate => "stopping the process failed",
            CommandKind::Report(_) => "reporting the outcome failed",
            CommandKind::Claim => "claiming the task failed",
        }
    }

    /// The name of the result variant this command must produce.
    pub fn expected_result(&self) -> &'static str {
        match self {
            CommandKind::ResolveEnv => "EnvResolved",
            CommandKind::Clone => "Cloned",
            CommandKind::ApplyPatch => "Patched",
            CommandKind::Launch => "Launched",
            CommandKind::Wait => "Exited",
            CommandKind::Terminate => "Terminated",
            CommandKind::Report(_) => "Reported",
            CommandKind::Claim => "Claimed",
        }
    }

    /// Failures of these are retried without bound: giving up would lose the task's outcome
    /// (a report) or leave a task out of its queue that nobody runs (a claim).
    pub fn retries_forever(&self) -> bool {
        matches!(self, CommandKind::Report(_) | CommandKind::Claim)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    pub key: EffectKey,
    pub kind: CommandKind,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvFacts {
    pub python: String,
    pub venv_dir: String,
    pub cache_hit: bool,
    /// The installed packages (`pip freeze`), written back to the task on report.
    pub installed: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceFacts {
    pub worktree: String,
    /// The commit checked out; `None` for a task with no repository.
    pub commit: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessFacts {
    pub pid: u32,
    /// Process start time (clock ticks since boot, from /proc) to tell a reused pid apart.
    pub start_time: u64,
    pub run_dir: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EffectResult {
    EnvResolved(EnvFacts),
    Cloned(SourceFacts),
    Patched {
        applied: bool,
    },
    Launched(ProcessFacts),
    Exited {
        code: i32,
    },
    Terminated {
        code: Option<i32>,
    },
    Reported,
    /// The task is this agent's now (removed from its queue, `tasks.started`).
    Claimed,
    /// A watcher saw a stop (an abort from the server, a preemption notice, `daemon --stop`)
    /// while the effect observed the world: nothing was done about it yet. The FSM records the
    /// stop and decides (Terminate while a process runs, else the outcome).
    StopObserved(StopRequest),
}

impl EffectResult {
    pub fn name(&self) -> &'static str {
        match self {
            EffectResult::EnvResolved(_) => "EnvResolved",
            EffectResult::Cloned(_) => "Cloned",
            EffectResult::Patched { .. } => "Patched",
            EffectResult::Launched(_) => "Launched",
            EffectResult::Exited { .. } => "Exited",
            EffectResult::Terminated { .. } => "Terminated",
            EffectResult::Reported => "Reported",
            EffectResult::Claimed => "Claimed",
            EffectResult::StopObserved(_) => "StopObserved",
        }
    }
}

/// One agent start that picked this run up again.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResumeInfo {
    pub epoch: u64,
    pub host: String,
    pub pid: u32,
    pub boot_id: String,
    pub reason: String,
}

/// Everything that can happen to a run. Journaled verbatim; the only input of the FSM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    Pulled {
        run_id: String,
        attempt: u32,
        agent_version: String,
        /// Boxed: a snapshot is far larger than every other event.
        snapshot: Box<TaskSnapshot>,
    },
    /// The intent: flushed to disk before the effect runs.
    EffectStarted {
        key: EffectKey,
        command: CommandKind,
        epoch: u64,
    },
    EffectDone {
        key: EffectKey,
        result: EffectResult,
    },
    EffectFailed {
        key: EffectKey,
        reason: String,
        /// A retryable failure leaves the state as it was so the same command runs again.
        retryable: bool,
    },
    AbortRequested {
        by: String,
    },
    RequeueRequested {
        why: String,
    },
    Resumed(ResumeInfo),
    /// `Pulled` of protocol 2: the run claims its task as a journaled effect first, and the
    /// snapshot holds no credentials (only where they came from). Appended last.
    PulledV2 {
        run_id: String,
        attempt: u32,
        agent_version: String,
        snapshot: Box<TaskSnapshot>,
        ext: Box<PullExt>,
    },
}

/// How a task reached the agent, which the claim needs to know.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Origin {
    /// Pulled from the snapshot's queue (still in it until the claim removes it).
    #[default]
    Queue,
    /// `clearml-agent execute --id`: no queue; the claim dequeues it if it is queued.
    Execute,
}

/// Where a secret the run needs comes from; resolved by the effect that needs it, never stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CredentialRef {
    /// The user info of the task's `script.repository` on the server (read again when cloning).
    TaskRepositoryUrl,
}

/// What protocol-2 runs record beside the snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullExt {
    pub origin: Origin,
    /// The repository URL had credentials, stripped from the snapshot.
    pub credentials: Option<CredentialRef>,
    /// The task document was unusable (a field of the wrong type, a path outside the checkout):
    /// the run claims the task and fails it with this reason.
    pub input_error: Option<String>,
}

impl Event {
    pub fn name(&self) -> &'static str {
        match self {
            Event::Pulled { .. } => "Pulled",
            Event::EffectStarted { .. } => "EffectStarted",
            Event::EffectDone { .. } => "EffectDone",
            Event::EffectFailed { .. } => "EffectFailed",
            Event::AbortRequested { .. } => "AbortRequested",
            Event::RequeueRequested { .. } => "RequeueRequested",
            Event::Resumed(_) => "Resumed",
            Event::PulledV2 { .. } => "Pulled",
        }
    }

    /// The effect key this event refers to, if any.
    pub fn effect_key(&self) -> Option<&EffectKey> {
        match self {
            Event::EffectStarted { key, .. }
            | Event::EffectDone { key, .. }
            | Event::EffectFailed { key, .. } => Some(key),
            _ => None,
        }
    }
}
