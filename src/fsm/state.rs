//! The folded state of one run and its transition rules.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;

use super::event::{
    Command, CommandKind, EffectKey, EffectResult, EnvFacts, Event, ProcessFacts, PullExt,
    ResumeInfo, SourceFacts, TaskSnapshot,
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
    /// What protocol-2 runs add. Last, and left out of the digest while it is the default, so
    /// that journals written before it existed still verify (see [`RunState::digest`]).
    #[serde(default)]
    pub ext: RunExt,
}

/// State that protocol-2 runs (those starting with `PulledV2`) add.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunExt {
    /// 0 for runs journaled before the claim step existed, 2 since.
    pub protocol: u8,
    /// The claim effect succeeded: the task is this agent's.
    pub claimed: bool,
    pub pull: PullExt,
}

/// The fields of a run's state before [`RunExt`] existed, in declaration order: bincode encodes
/// a struct as its fields in sequence, so this tuple has exactly the bytes the old struct had.
type V1Head = (
    String,
    String,
    u32,
    String,
    Phase,
    TaskSnapshot,
    Option<Command>,
    u32,
    Option<StopRequest>,
);
type V1Tail = (
    Option<Outcome>,
    Option<String>,
    Option<EnvFacts>,
    Option<SourceFacts>,
    Option<bool>,
    Option<ProcessFacts>,
    Option<i32>,
    u64,
    Vec<ResumeInfo>,
);

/// A run state encoded as the first schema did (no [`RunExt`]): the payload of the snapshot
/// records written before protocol 2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct V1State(pub RunState);

impl Serialize for V1State {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        V1Ref(&self.0).serialize(s)
    }
}

/// Serializes a borrowed state in the first schema (for digests, without a clone).
struct V1Ref<'a>(&'a RunState);

impl Serialize for V1Ref<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let r = self.0;
        (
            (
                &r.run_id,
                &r.task_id,
                r.attempt,
                &r.agent_version,
                r.phase,
                &r.snapshot,
                &r.pending,
                r.retries,
                &r.stop,
            ),
            (
                &r.outcome,
                &r.report_error,
                &r.env,
                &r.source,
                r.patch_applied,
                &r.process,
                r.exit_code,
                r.epoch,
                &r.resumes,
            ),
        )
            .serialize(s)
    }
}

impl<'de> Deserialize<'de> for V1State {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (h, t): (V1Head, V1Tail) = Deserialize::deserialize(d)?;
        Ok(V1State(RunState {
            run_id: h.0,
            task_id: h.1,
            attempt: h.2,
            agent_version: h.3,
            phase: h.4,
            snapshot: h.5,
            pending: h.6,
            retries: h.7,
            stop: h.8,
            outcome: t.0,
            report_error: t.1,
            env: t.2,
            source: t.3,
            patch_applied: t.4,
            process: t.5,
            exit_code: t.6,
            epoch: t.7,
            resumes: t.8,
            ext: RunExt::default(),
        }))
    }
}

impl RunState {
    pub fn is_terminal(&self) -> bool {
        self.phase == Phase::Reported
    }

    /// A stable fingerprint of the whole state, stored in the journal to check replays.
    /// The first-schema fields always; [`RunExt`] only when it is not the default, so the
    /// digests of runs journaled before it existed are unchanged.
    pub fn digest(&self) -> String {
        let mut bytes = bincode::serialize(&V1Ref(self)).expect("RunState always serializes");
        if self.ext != RunExt::default() {
            bytes.extend(bincode::serialize(&self.ext).expect("RunExt always serializes"));
        }
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
                Phase::Pulled if self.ext.protocol >= 2 && !self.ext.claimed => CommandKind::Claim,
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
        if self.phase == Phase::New
            && !matches!(event, Event::Pulled { .. } | Event::PulledV2 { .. })
        {
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
            Event::PulledV2 {
                run_id,
                attempt,
                agent_version,
                snapshot,
                ext,
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
                self.ext = RunExt {
                    protocol: 2,
                    claimed: false,
                    pull: (**ext).clone(),
                };
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
                        | (CommandKind::Claim, EffectResult::Claimed)
                        | (
                            CommandKind::Claim | CommandKind::Wait,
                            EffectResult::StopObserved(_)
                        )
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
                // The report and the claim are retried forever (see `retries_forever`).
                if *retryable
                    && (pending.kind.retries_forever() || self.retries < MAX_STAGE_RETRIES)
                {
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
            EffectResult::Claimed => {
                self.ext.claimed = true;
                if let Some(why) = &self.ext.pull.input_error {
                    self.outcome = Some(Outcome::Failed {
                        reason: format!("invalid task: {why}"),
                    });
                }
            }
            // Recorded like a stop request: Terminate follows while a process runs.
            EffectResult::StopObserved(stop) => self.request_stop(stop.clone()),
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
