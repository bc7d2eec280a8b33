//! The only place that joins the journal and the effects.
//!
//! For one run: fold its records through the FSM, take the next command, append the
//! intent (flushed), perform the effect, append the result (flushed), repeat. Every event
//! is checked by the FSM *before* it is written, so the journal never holds an event
//! that replay would refuse. On start, every non-terminal run is resumed; an intent with
//! no result is handed to the effect handler's `reconcile` rather than performed again.

use crate::effects::{EffectFailure, EffectHandler, ProgressStore, Reconciled};
use crate::fsm::{
    self, Command, CommandKind, EffectResult, Event, FsmError, ResumeInfo, RunState, StopRequest,
    TaskSnapshot,
};
use crate::journal::{
    EpochInfo, Journal, JournalError, Progress, RecordBody, RunMeta, DIGEST_EVERY,
};

/// Where time comes from; the FSM never reads a clock, the runner stamps records.
pub trait Clock {
    fn now_ms(&self) -> u64;
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        crate::host::now_ms()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// A bug: the runner built an event its own FSM refuses. Nothing was written.
    #[error("run {run}: internal error, the state machine refused {event}: {source}")]
    Fsm {
        run: String,
        event: &'static str,
        #[source]
        source: FsmError,
    },
}

/// How driving one run ended, per run, when several are resumed.
pub type RunResult = Result<Driven, RunnerError>;

/// Where driving a run stopped.
#[derive(Debug, Clone, PartialEq)]
pub enum Driven {
    /// The run is over and its outcome reported.
    Terminal(RunState),
    /// The run cannot progress now (its report keeps failing); resume it later.
    Deferred { state: RunState, reason: String },
}

impl Driven {
    pub fn state(&self) -> &RunState {
        match self {
            Driven::Terminal(s) | Driven::Deferred { state: s, .. } => s,
        }
    }
}

/// One run's progress key, as the effects see it.
struct RunProgress<'a> {
    journal: &'a Journal,
    run: &'a str,
}

impl ProgressStore for RunProgress<'_> {
    fn load(&self) -> Progress {
        self.journal.progress(self.run).unwrap_or_default()
    }
    fn save(&mut self, progress: Progress) -> Result<(), String> {
        self.journal
            .set_progress(self.run, &progress)
            .map_err(|e| e.to_string())
    }
}

/// A run being driven: its folded state and the next sequence to append.
struct Cursor {
    run: String,
    state: RunState,
    next_seq: u64,
}

pub struct Runner<E, C = SystemClock> {
    journal: Journal,
    effects: E,
    clock: C,
}

impl<E: EffectHandler, C: Clock> Runner<E, C> {
    pub fn new(journal: Journal, effects: E, clock: C) -> Self {
        Runner {
            journal,
            effects,
            clock,
        }
    }

    pub fn journal(&self) -> &Journal {
        &self.journal
    }

    pub fn effects_mut(&mut self) -> &mut E {
        &mut self.effects
    }

    /// Record a freshly pulled task as a new run; returns its run id (`{task_id}.{attempt}`).
    pub fn start(&mut self, snapshot: TaskSnapshot) -> Result<String, RunnerError> {
        let attempt = self.journal.find_runs(&snapshot.task_id)?.len() as u32 + 1;
        let run = format!("{}.{attempt}", snapshot.task_id);
        let event = Event::Pulled {
            run_id: run.clone(),
            attempt,
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            snapshot: Box::new(snapshot.clone()),
        };
        check(&run, &RunState::default(), &event)?;
        let meta = RunMeta {
            run_id: run.clone(),
            task_id: snapshot.task_id,
            attempt,
            created_ms: self.clock.now_ms(),
        };
        self.journal
            .create_run(&meta, &[RecordBody::Event(event)], meta.created_ms)?;
        Ok(run)
    }

    /// Resume every non-terminal run in the journal. A corrupt run is refused (its error
    /// is returned in the list) and the others go on.
    pub fn resume_all(&mut self, reason: &str) -> Result<Vec<(String, RunResult)>, RunnerError> {
        let mut out = vec![];
        for meta in self.journal.runs()? {
            let result = match self.journal.load_run(&meta.run_id) {
                Ok(loaded) if loaded.state.is_terminal() => continue,
                Ok(_) => self.resume(&meta.run_id, reason),
                Err(e) => Err(e.into()),
            };
            out.push((meta.run_id, result));
        }
        Ok(out)
    }

    /// Record that this agent picked the run up again, then drive it.
    pub fn resume(&mut self, run: &str, reason: &str) -> Result<Driven, RunnerError> {
        let mut cur = self.load(run)?;
        if !cur.state.is_terminal() {
            let who = self.who();
            let event = Event::Resumed(ResumeInfo {
                epoch: self.journal.epoch().unwrap_or(0),
                host: who.host,
                pid: who.pid,
                boot_id: who.boot_id,
                reason: reason.to_string(),
            });
            self.append(&mut cur, event)?;
            // The world may have moved on while no agent watched this run.
            if cur.state.stop.is_none() && cur.state.outcome.is_none() {
                if let Some(stop) = self.effects.check_on_resume(&cur.state) {
                    self.append(&mut cur, stop_event(stop))?;
                }
            }
        }
        self.drive_cursor(cur)
    }

    /// Drive a run until it is terminal or deferred.
    pub fn drive(&mut self, run: &str) -> Result<Driven, RunnerError> {
        let cur = self.load(run)?;
        self.drive_cursor(cur)
    }

    /// Record an abort or requeue request from outside for a run.
    pub fn request_stop(&mut self, run: &str, stop: StopRequest) -> Result<RunState, RunnerError> {
        let mut cur = self.load(run)?;
        // A request for a finished run, or a second request, changes nothing.
        if !cur.state.is_terminal() && cur.state.stop.is_none() && cur.state.outcome.is_none() {
            self.append(&mut cur, stop_event(stop))?;
        }
        Ok(cur.state)
    }

    fn load(&self, run: &str) -> Result<Cursor, RunnerError> {
        let loaded = self.journal.load_run(run)?;
        Ok(Cursor {
            run: run.to_string(),
            state: loaded.state,
            next_seq: loaded.next_seq,
        })
    }

    fn who(&self) -> EpochInfo {
        let epoch = self.journal.epoch().unwrap_or(0);
        self.journal
            .epochs()
            .ok()
            .and_then(|all| all.into_iter().find(|e| e.epoch == epoch))
            .unwrap_or_default()
    }

    fn drive_cursor(&mut self, mut cur: Cursor) -> Result<Driven, RunnerError> {
        if let Some(pending) = cur.state.pending.clone() {
            self.finish_pending(&mut cur, &pending)?;
        }
        loop {
            if cur.state.is_terminal() {
                self.effects.clean_up(&cur.state);
                return Ok(Driven::Terminal(cur.state));
            }
            self.take_stop_request(&mut cur)?;
            let Some(cmd) = cur.state.next_command() else {
                // Unreachable for a consistent state: non-terminal, nothing pending.
                return Ok(Driven::Deferred {
                    reason: format!("no command is due in state {}", cur.state.status_label()),
                    state: cur.state,
                });
            };
            let epoch = self.journal.epoch().unwrap_or(0);
            self.append(
                &mut cur,
                Event::EffectStarted {
                    key: cmd.key.clone(),
                    command: cmd.kind.clone(),
                    epoch,
                },
            )?;
            let mut progress = RunProgress {
                journal: &self.journal,
                run: &cur.run,
            };
            let result = self.effects.perform(&cur.state, &cmd, &mut progress);
            self.record_result(&mut cur, &cmd, result)?;
            if let Some(reason) = deferred_report(&cur.state) {
                return Ok(Driven::Deferred {
                    state: cur.state,
                    reason,
                });
            }
        }
    }

    /// Settle an intent found without a result (the agent died during its effect).
    fn finish_pending(&mut self, cur: &mut Cursor, cmd: &Command) -> Result<(), RunnerError> {
        let result = match self.effects.reconcile(&cur.state, cmd) {
            Reconciled::Done(r) => Ok(r),
            Reconciled::Failed(f) => Err(f),
            Reconciled::Redo => {
                let mut progress = RunProgress {
                    journal: &self.journal,
                    run: &cur.run,
                };
                self.effects.perform(&cur.state, cmd, &mut progress)
            }
        };
        self.record_result(cur, cmd, result)
    }

    fn record_result(
        &mut self,
        cur: &mut Cursor,
        cmd: &Command,
        result: Result<EffectResult, EffectFailure>,
    ) -> Result<(), RunnerError> {
        // A stop that ended the user process must be on record before its exit status,
        // so the outcome reads "aborted", not "failed with exit code -15".
        if cmd.kind == CommandKind::Wait {
            self.take_stop_request(cur)?;
        }
        let event = match result {
            Ok(result) => Event::EffectDone {
                key: cmd.key.clone(),
                result,
            },
            Err(f) => Event::EffectFailed {
                key: cmd.key.clone(),
                reason: f.reason,
                retryable: f.retryable,
            },
        };
        self.append(cur, event)
    }

    fn take_stop_request(&mut self, cur: &mut Cursor) -> Result<(), RunnerError> {
        if cur.state.stop.is_some() || cur.state.outcome.is_some() {
            return Ok(());
        }
        match self.effects.poll_stop(&cur.state) {
            Some(stop) => self.append(cur, stop_event(stop)),
            None => Ok(()),
        }
    }

    /// Check the event against the FSM, then append it (with a state digest when due).
    fn append(&mut self, cur: &mut Cursor, event: Event) -> Result<(), RunnerError> {
        let (next, _) = check(&cur.run, &cur.state, &event)?;
        let seq = cur.next_seq;
        let mut bodies = vec![RecordBody::Event(event)];
        if next.is_terminal() || (seq + 1).is_multiple_of(DIGEST_EVERY) {
            bodies.push(RecordBody::StateDigest {
                digest: next.digest(),
            });
        }
        cur.next_seq = self
            .journal
            .append(&cur.run, seq, &bodies, self.clock.now_ms())?;
        cur.state = next;
        Ok(())
    }
}

fn check(
    run: &str,
    state: &RunState,
    event: &Event,
) -> Result<(RunState, Vec<Command>), RunnerError> {
    fsm::transition(state, event).map_err(|source| RunnerError::Fsm {
        run: run.to_string(),
        event: event.name(),
        source,
    })
}

fn stop_event(stop: StopRequest) -> Event {
    match stop {
        StopRequest::Abort { by } => Event::AbortRequested { by },
        StopRequest::Requeue { why } => Event::RequeueRequested { why },
    }
}

/// A report that just failed retryably: stop driving; the run resumes later.
fn deferred_report(state: &RunState) -> Option<String> {
    let due = state.next_command()?;
    (matches!(due.kind, CommandKind::Report(_)) && state.retries > 0).then(|| {
        format!(
            "reporting {} failed {} time(s); will retry",
            state
                .outcome
                .as_ref()
                .map_or("outcome".into(), |o| o.to_string()),
            state.retries
        )
    })
}
