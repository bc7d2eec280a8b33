//! The folded state of one run and its transition rules.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;

use super::event::{
    Command, CommandKind, EffectKey, EffectResult, EnvFacts, Event, ProcessFacts, ResumeInfo,
    SourceFacts, TaskSnapshot,
};
use super::FsmError;

/// Retryable failures of a stage (not the report) before the run fails for good.
pub const MAX_STAGE_RETRIES: u32 = 3;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Phase {
    /// Nothing folded yet.
    #[default]
    New,
    Pulled,
    EnvResolved,
    Cloned,
    Patched,
    Running,
    Reported,
}

impl Phase {
    pub fn label(self) -> &'static str {
        match self {
            Phase::New => "New",
            Phase::Pulled => "Pulled",
            Phase::EnvResolved => "EnvResolved",
            Phase::Cloned => "Cloned",
            Phase::Patched => "Patched",
            Phase::Running => "Running",
            Phase::Reported => "Reported",
        }
    }
}

/// How a run ends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    Completed,
    Failed { reason: String },
    Aborted { by: String },
    Requeued { why: String },
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Completed => write!(f, "completed"),
            Outcome::Failed { reason } => write!(f, "failed: {reason}"),
            Outcome::Aborted { by } => write!(f, "aborted by {by}"),
            Outcome::Requeued { why } => write!(f, "requeued: {why}"),
        }
    }
}

impl Outcome {
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Completed => "completed",
            Outcome::Failed { .. } => "failed",
            Outcome::Aborted { .. } => "aborted",
            Outcome::Requeued { .. } => "requeued",
        }
    }
}

/// An abort or requeue that arrived while the run was not yet terminal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StopRequest {
    Abort { by: String },
    Requeue { why: String },
}

impl StopRequest {
    fn outcome(&self) -> Outcome {
        match self {
            StopRequest::Abort { by } => Outcome::Aborted { by: by.clone() },
            StopRequest::Requeue { why } => Outcome::Requeued { why: why.clone() },
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunState {
    pub run_id: String,
    pub task_id: String,
    pub attempt: u32,
    pub agent_version: String,
    pub phase: Phase,
    pub snapshot: TaskSnapshot,
    /// The intent journaled without a result yet: on replay the runner reconciles it.
    pub pending: Option<Command>,
    /// Retryable failures of the command now due.
    pub retries: u32,
    pub stop: Option<StopRequest>,
    /// Decided once the work is over; reported by the Report command.
    pub outcome: Option<Outcome>,
    /// A non-retryable report failure (the run is still terminal).
    pub report_error: Option<String>,
    pub env: Option<EnvFacts>,
    pub source: Option<SourceFacts>,
    pub patch_applied: Option<bool>,
    pub process: Option<ProcessFacts>,
    pub exit_code: Option<i32>,
    /// The newest agent epoch that started an effect for this run.
    pub epoch: u64,
    pub resumes: Vec<ResumeInfo>,
}

impl RunState {
    pub fn is_terminal(&self) -> bool {
        self.phase == Phase::Reported
    }

    /// A stable fingerprint of the whole state, stored in the journal to check replays.
    pub fn digest(&self) -> String {
        let bytes = bincode::serialize(self).expect("RunState always serializes");
        let hash = Sha256::digest(bytes);
        hash[..8].iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The label shown by `journal inspect`: the phase, or the outcome once terminal.
    pub fn status_label(&self) -> String {
        match (&self.phase, &self.outcome) {
            (Phase::Reported, Some(o)) => o.label().to_string(),
            (p, Some(o)) => format!("{} ({} pending report)", p.label(), o.label()),
            (p, None) => p.label().to_string(),
        }
    }

    /// The command the runner must perform next, derived from the state alone.
    /// `None` while an effect is pending (the runner reconciles it) or when nothing is left.
    pub fn next_command(&self) -> Option<Command> {
        if self.pending.is_some() || matches!(self.phase, Phase::New | Phase::Reported) {
            return None;
        }
        let kind = if let Some(outcome) = &self.outcome {
            CommandKind::Report(outcome.clone())
        } else {
            match self.phase {
                Phase::Pulled => CommandKind::ResolveEnv,
                Phase::EnvResolved => CommandKind::Clone,
                Phase::Cloned => CommandKind::ApplyPatch,
                Phase::Patched => CommandKind::Launch,
                Phase::Running if self.stop.is_some() => CommandKind::Terminate,
                Phase::Running => CommandKind::Wait,
                Phase::New | Phase::Reported => return None,
            }
        };
        Some(Command {
            key: EffectKey::new(&self.task_id, self.attempt, kind.target_state()),
            kind,
        })
    }

    /// Apply one event in place. Validation happens before any field changes, so an
    /// error leaves the state exactly as it was.
    pub fn apply(&mut self, event: &Event) -> Result<(), FsmError> {
        if self.is_terminal() {
            return Err(FsmError::Terminal {
                outcome: self.status_label(),
                event: event.name(),
            });
        }
        if self.phase == Phase::New && !matches!(event, Event::Pulled { .. }) {
            return Err(FsmError::NotPulled {
                event: event.name(),
            });
        }
        match event {
            Event::Pulled {
                run_id,
                attempt,
                agent_version,
                snapshot,
            } => {
                if self.phase != Phase::New {
                    return Err(FsmError::AlreadyPulled);
                }
                self.run_id = run_id.clone();
                self.task_id = snapshot.task_id.clone();
                self.attempt = *attempt;
                self.agent_version = agent_version.clone();
                self.snapshot = (**snapshot).clone();
                self.phase = Phase::Pulled;
            }
            Event::EffectStarted {
                key,
                command,
                epoch,
            } => {
                if let Some(pending) = &self.pending {
                    return Err(FsmError::EffectPending {
                        pending: pending.key.to_string(),
                        started: key.to_string(),
                    });
                }
                let expected = self.next_command();
                match expected {
                    Some(c) if &c.key == key && &c.kind == command => {
                        self.pending = Some(c);
                        self.epoch = self.epoch.max(*epoch);
                    }
                    other => {
                        return Err(FsmError::UnexpectedEffect {
                            expected: other.map_or_else(|| "no effect".into(), |c| c.key.0),
                            got: key.to_string(),
                        })
                    }
                }
            }
            Event::EffectDone { key, result } => {
                let pending = self.check_pending(key)?;
                let kind_matches = matches!(
                    (&pending.kind, result),
                    (CommandKind::ResolveEnv, EffectResult::EnvResolved(_))
                        | (CommandKind::Clone, EffectResult::Cloned(_))
                        | (CommandKind::ApplyPatch, EffectResult::Patched { .. })
                        | (CommandKind::Launch, EffectResult::Launched(_))
                        | (CommandKind::Wait, EffectResult::Exited { .. })
                        | (CommandKind::Terminate, EffectResult::Terminated { .. })
                        | (CommandKind::Report(_), EffectResult::Reported)
                );
                if !kind_matches {
                    return Err(FsmError::WrongResultKind {
                        key: key.to_string(),
                        expected: pending.kind.expected_result(),
                        got: result.name(),
                    });
                }
                self.pending = None;
                self.retries = 0;
                self.apply_result(result);
            }
            Event::EffectFailed {
                key,
                reason,
                retryable,
            } => {
                let pending = self.check_pending(key)?;
                self.pending = None;
                let is_report = matches!(pending.kind, CommandKind::Report(_));
                // The report is retried forever: giving up would lose the task's outcome.
                if *retryable && (is_report || self.retries < MAX_STAGE_RETRIES) {
                    self.retries += 1;
                } else if is_report {
                    self.retries = 0;
                    self.report_error = Some(reason.clone());
                    self.phase = Phase::Reported;
                } else {
                    self.retries = 0;
                    self.outcome = Some(match &self.stop {
                        Some(stop) => stop.outcome(),
                        None => Outcome::Failed {
                            reason: format!("{}: {reason}", pending.kind.failure_label()),
                        },
                    });
                }
            }
            Event::AbortRequested { by } => {
                self.request_stop(StopRequest::Abort { by: by.clone() })
            }
            Event::RequeueRequested { why } => {
                self.request_stop(StopRequest::Requeue { why: why.clone() })
            }
            Event::Resumed(info) => self.resumes.push(info.clone()),
        }
        Ok(())
    }

    fn check_pending(&self, key: &EffectKey) -> Result<Command, FsmError> {
        match &self.pending {
            None => Err(FsmError::NoPendingEffect {
                got: key.to_string(),
            }),
            Some(p) if &p.key != key => Err(FsmError::WrongEffectKey {
                pending: p.key.to_string(),
                got: key.to_string(),
            }),
            Some(p) => Ok(p.clone()),
        }
    }

    fn apply_result(&mut self, result: &EffectResult) {
        match result {
            EffectResult::EnvResolved(env) => {
                self.env = Some(env.clone());
                self.phase = Phase::EnvResolved;
            }
            EffectResult::Cloned(source) => {
                self.source = Some(source.clone());
                self.phase = Phase::Cloned;
            }
            EffectResult::Patched { applied } => {
                self.patch_applied = Some(*applied);
                self.phase = Phase::Patched;
            }
            EffectResult::Launched(process) => {
                self.process = Some(process.clone());
                self.phase = Phase::Running;
            }
            EffectResult::Exited { code } => {
                self.exit_code = Some(*code);
                self.outcome = Some(match (&self.stop, code) {
                    (Some(stop), _) => stop.outcome(),
                    (None, 0) => Outcome::Completed,
                    (None, code) => Outcome::Failed {
                        reason: format!("worker execution exit code {code}"),
                    },
                });
            }
            EffectResult::Terminated { code } => {
                self.exit_code = *code;
                self.outcome = self.stop.as_ref().map(StopRequest::outcome);
            }
            EffectResult::Reported => self.phase = Phase::Reported,
        }
        // A stop that arrived while an earlier stage was in flight takes effect now,
        // unless a process runs (then Terminate is due) or the outcome is already known.
        if self.outcome.is_none() && self.phase != Phase::Running {
            if let Some(stop) = &self.stop {
                self.outcome = Some(stop.outcome());
            }
        }
    }

    fn request_stop(&mut self, stop: StopRequest) {
        // A late request changes nothing: the first stop wins, a decided outcome stands.
        if self.stop.is_some() || self.outcome.is_some() {
            return;
        }
        let decide_now = self.pending.is_none() && self.phase != Phase::Running;
        if decide_now {
            self.outcome = Some(stop.outcome());
        }
        self.stop = Some(stop);
    }
}
