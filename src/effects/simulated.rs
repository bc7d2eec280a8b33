//! Simulated effects: they do nothing to the world but keep durable evidence of every
//! call, so the crash harness can count effects across `kill -9` and restarts.
//!
//! Each perform appends `perform <key>` to `effects.log` (fsync'd) and writes a marker
//! file holding the result; reconcile finds the marker (the effect happened) or not.

use serde::{Deserialize, Serialize};
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use super::{
    EffectCtx, EffectFailure, EffectHandler, EffectOutcome, Interruption, Reconciled, StopSource,
};
use crate::fsm::{
    Command, CommandKind, EffectResult, EnvFacts, ProcessFacts, RunState, SourceFacts, StopRequest,
};

/// Which simulated outcome to produce.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Script {
    /// Fail this command (by [`CommandKind::name`]) with a fatal error.
    pub fail_at: Option<String>,
    /// Exit code of the simulated user process.
    pub exit_code: i32,
    /// Request an abort just before this command starts.
    pub abort_before: Option<String>,
    /// Request a requeue just before this command starts.
    pub requeue_before: Option<String>,
    /// Fail the report this many times (retryably) before it succeeds.
    pub report_failures: u32,
}

pub struct SimulatedEffects {
    dir: PathBuf,
    script: Script,
}

/// The script's stop requests, as a watcher would raise them: once, just before the named
/// command is due.
pub struct SimulatedStops {
    script: Script,
    sent: std::sync::atomic::AtomicBool,
}

impl SimulatedStops {
    pub fn new(script: Script) -> Self {
        SimulatedStops {
            script,
            sent: std::sync::atomic::AtomicBool::new(false),
        }
    }
}

impl StopSource for SimulatedStops {
    fn poll(&self, state: &RunState) -> Option<Interruption> {
        use std::sync::atomic::Ordering;
        if self.sent.load(Ordering::SeqCst) {
            return None;
        }
        let due = state.next_command()?;
        let name = due.kind.name();
        let stop = if self.script.abort_before.as_deref() == Some(name) {
            StopRequest::Abort {
                by: "simulated user".into(),
            }
        } else if self.script.requeue_before.as_deref() == Some(name) {
            StopRequest::Requeue {
                why: "simulated preemption".into(),
            }
        } else {
            return None;
        };
        self.sent.store(true, Ordering::SeqCst);
        Some(Interruption::Stop(stop))
    }
}

#[derive(Serialize, Deserialize)]
enum Marker {
    Done(EffectResult),
    Failed(String),
}

impl SimulatedEffects {
    pub fn new(dir: &Path, script: Script) -> std::io::Result<Self> {
        fs::create_dir_all(dir.join("markers"))?;
        Ok(SimulatedEffects {
            dir: dir.to_path_buf(),
            script,
        })
    }

    pub fn log_path(dir: &Path) -> PathBuf {
        dir.join("effects.log")
    }

    fn marker_path(&self, cmd: &Command) -> PathBuf {
        self.dir
            .join("markers")
            .join(cmd.key.as_str().replace(':', "_"))
    }

    fn log(&self, line: &str) {
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(Self::log_path(&self.dir))
            .expect("simulated effects log opens");
        writeln!(f, "{line}").expect("simulated effects log writes");
        f.sync_all().expect("simulated effects log syncs");
    }

    fn write_marker(&self, cmd: &Command, marker: &Marker) {
        let path = self.marker_path(cmd);
        let tmp = path.with_extension("tmp");
        fs::write(&tmp, serde_json::to_vec(marker).expect("marker serializes"))
            .expect("marker writes");
        fs::rename(&tmp, &path).expect("marker renames");
    }

    fn result_for(&self, state: &RunState, cmd: &Command) -> EffectResult {
        let run_dir = format!("runs/{}", cmd.key.as_str().replace(':', "_"));
        match &cmd.kind {
            CommandKind::ResolveEnv => EffectResult::EnvResolved(EnvFacts {
                python: "python3".into(),
                venv_dir: format!("venvs/{}", state.task_id),
                cache_hit: false,
                installed: vec!["six==1.16.0".into()],
            }),
            CommandKind::Clone => EffectResult::Cloned(SourceFacts {
                worktree: run_dir,
                commit: Some("0123456789abcdef0123456789abcdef01234567".into()),
            }),
            CommandKind::ApplyPatch => EffectResult::Patched { applied: true },
            CommandKind::Launch => EffectResult::Launched(ProcessFacts {
                pid: 4242,
                start_time: 1,
                run_dir,
            }),
            CommandKind::Wait => EffectResult::Exited {
                code: self.script.exit_code,
            },
            CommandKind::Terminate => EffectResult::Terminated { code: Some(-15) },
            CommandKind::Report(_) => EffectResult::Reported,
            CommandKind::Claim => EffectResult::Claimed,
        }
    }
}

impl EffectHandler for SimulatedEffects {
    fn perform(&mut self, state: &RunState, cmd: &Command, _ctx: &mut EffectCtx) -> EffectOutcome {
        self.log(&format!("perform {}", cmd.key));
        if matches!(cmd.kind, CommandKind::Report(_)) && self.script.report_failures > 0 {
            self.script.report_failures -= 1;
            return Err(EffectFailure::retry("simulated: server unreachable").into());
        }
        let marker = if self.script.fail_at.as_deref() == Some(cmd.kind.name()) {
            Marker::Failed(format!("simulated failure of {}", cmd.kind.name()))
        } else {
            Marker::Done(self.result_for(state, cmd))
        };
        self.write_marker(cmd, &marker);
        match marker {
            Marker::Done(r) => Ok(r),
            Marker::Failed(reason) => Err(EffectFailure::fatal(reason).into()),
        }
    }

    fn reconcile(&mut self, _state: &RunState, cmd: &Command) -> Reconciled {
        let found = fs::read(self.marker_path(cmd))
            .ok()
            .and_then(|b| serde_json::from_slice::<Marker>(&b).ok());
        match found {
            Some(Marker::Done(r)) => {
                self.log(&format!("reconcile-done {}", cmd.key));
                Reconciled::Done(r)
            }
            Some(Marker::Failed(reason)) => {
                self.log(&format!("reconcile-failed {}", cmd.key));
                Reconciled::Failed(EffectFailure::fatal(reason))
            }
            None => {
                self.log(&format!("reconcile-redo {}", cmd.key));
                Reconciled::Redo
            }
        }
    }
}
