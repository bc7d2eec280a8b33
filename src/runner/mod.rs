//! The only place that joins the journal and the effects.
//!
//! For one run: fold its records through the FSM, take the next command, append the
//! intent (flushed), perform the effect, append the result (flushed), repeat. Every event
//! is checked by the FSM *before* it is written, so the journal never holds an event
//! that replay would refuse. On start, every non-terminal run is resumed; an intent with
//! no result is handed to the effect handler's `reconcile` rather than performed again.

use crate::effects::{
    EffectCtx, EffectError, EffectHandler, EffectOutcome, Interruption, NoStops, ProgressStore,
    Reconciled, ShipProgress, StopSource,
};
use crate::fsm::{
    self, Command, CommandKind, Event, FsmError, PullExt, ResumeInfo, RunState, StopRequest,
    TaskSnapshot,
};
use crate::journal::{
    EpochInfo, Journal, JournalError, Progress, RecordBody, RunMeta, DIGEST_EVERY,
};
use std::sync::Arc;
use std::time::Duration;

/// Where time comes from; the FSM never reads a clock, the runner stamps records and waits.
pub trait Clock {
    fn now_ms(&self) -> u64;
    fn sleep(&self, d: Duration) {
        std::thread::sleep(d);
    }
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        crate::host::now_ms()
    }
}

/// Delay before the n-th retry of a stage (n >= 1): `base * 2^(n-1)`, at most a minute.
pub fn retry_delay(base: Duration, n: u32) -> Duration {
    base.saturating_mul(1u32 << n.saturating_sub(1).min(10))
        .min(Duration::from_secs(60))
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
    /// The run cannot progress now (its report or claim keeps failing); drive it again later.
    Deferred { state: RunState, reason: String },
    /// The run was left as it is on purpose (the agent is shutting down): its process stays
    /// under its supervisor and a later start resumes it. The daemon acts on this value.
    Detached { state: RunState, reason: String },
}

impl Driven {
    pub fn state(&self) -> &RunState {
        match self {
            Driven::Terminal(s)
            | Driven::Deferred { state: s, .. }
            | Driven::Detached { state: s, .. } => s,
        }
    }
}

/// One run's progress key, as the effects see it.
struct RunProgress<'a> {
    journal: &'a Journal,
    run: &'a str,
}

impl ProgressStore for RunProgress<'_> {
    fn load(&self) -> Result<ShipProgress, String> {
        self.journal
            .progress(self.run)
            .map(|p| ShipProgress {
                log_offset_shipped: p.log_offset_shipped,
                last_heartbeat_ms: p.last_heartbeat_ms,
            })
            .map_err(|e| e.to_string())
    }
    fn save(&mut self, p: ShipProgress) -> Result<(), String> {
        let progress = Progress {
            log_offset_shipped: p.log_offset_shipped,
            last_heartbeat_ms: p.last_heartbeat_ms,
        };
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

/// Drives runs: one runner per run when several run at once (each with its own handler and
/// stop source, all sharing one [`Journal`], whose appends are per run).
pub struct Runner<E, C = SystemClock> {
    journal: Journal,
    effects: E,
    clock: C,
    stops: Arc<dyn StopSource>,
    retry_base: Duration,
}

impl<E: EffectHandler, C: Clock> Runner<E, C> {
    pub fn new(journal: Journal, effects: E, clock: C) -> Self {
        Runner {
            journal,
            effects,
            clock,
            stops: Arc::new(NoStops),
            retry_base: Duration::from_secs(2),
        }
    }

    /// The watchers of the runs this runner drives (signals, `--stop`, preemption).
    pub fn with_stops(mut self, stops: Arc<dyn StopSource>) -> Self {
        self.stops = stops;
        self
    }

    /// First delay before a retryable stage failure is retried (doubling after).
    pub fn with_retry_base(mut self, base: Duration) -> Self {
        self.retry_base = base;
        self
    }

    pub fn journal(&self) -> &Journal {
        &self.journal
    }

    pub fn effects_mut(&mut self) -> &mut E {
        &mut self.effects
    }

    /// Record a freshly pulled task as a new run; returns its run id (`{task_id}.{attempt}`).
    /// Nothing was done on the server yet: the run's first effect claims the task.
    pub fn start(&mut self, snapshot: TaskSnapshot, ext: PullExt) -> Result<String, RunnerError> {
        let attempt = self.journal.find_runs(&snapshot.task_id)?.len() as u32 + 1;
        let run = format!("{}.{attempt}", snapshot.task_id);
        let event = Event::PulledV2 {
            run_id: run.clone(),
            attempt,
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            snapshot: Box::new(snapshot.clone()),
            ext: Box::new(ext),
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
                Ok(loaded) if loaded.state.is_terminal() => {
                    // A crash may have come between the final record and the clean-up.
                    self.effects.clean_up(&loaded.state);
                    continue;
                }
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
            if let Some(reason) = self.finish_pending(&mut cur, &pending)? {
                return Ok(self.detach(cur, reason));
            }
        }
        loop {
            if cur.state.is_terminal() {
                self.effects.clean_up(&cur.state);
                return Ok(Driven::Terminal(cur.state));
            }
            // Watchers: a stop is journaled before anything acts on it; a shutdown leaves the
            // run as it is.
            match self.stops.poll(&cur.state) {
                Some(Interruption::Detach(reason)) => return Ok(self.detach(cur, reason)),
                Some(Interruption::Stop(stop)) => self.take_stop(&mut cur, stop)?,
                None => {}
            }
            let Some(cmd) = cur.state.next_command() else {
                // Unreachable for a consistent state: non-terminal, nothing pending.
                return Ok(Driven::Deferred {
                    reason: format!("no command is due in state {}", cur.state.status_label()),
                    state: cur.state,
                });
            };
            // Stages back off here; a claim or report is paced by the caller (see `deferred`).
            if cur.state.retries > 0 && !cmd.kind.retries_forever() {
                self.clock
                    .sleep(retry_delay(self.retry_base, cur.state.retries));
            }
            let epoch = self.journal.epoch().unwrap_or(0);
            self.append(
                &mut cur,
                Event::EffectStarted {
                    key: cmd.key.clone(),
                    command: cmd.kind.clone(),
                    epoch,
                },
            )?;
            let result = self.perform(&cur, &cmd);
            if let Some(reason) = self.record_result(&mut cur, &cmd, result)? {
                return Ok(self.detach(cur, reason));
            }
            if let Some(reason) = deferred(&cur.state) {
                return Ok(Driven::Deferred {
                    state: cur.state,
                    reason,
                });
            }
        }
    }

    fn perform(&mut self, cur: &Cursor, cmd: &Command) -> EffectOutcome {
        let mut progress = RunProgress {
            journal: &self.journal,
            run: &cur.run,
        };
        let mut ctx = EffectCtx {
            progress: &mut progress,
            stops: self.stops.as_ref(),
        };
        self.effects.perform(&cur.state, cmd, &mut ctx)
    }

    fn detach(&mut self, cur: Cursor, reason: String) -> Driven {
        self.effects.on_detach(&cur.state, &reason);
        Driven::Detached {
            state: cur.state,
            reason,
        }
    }

    /// Settle an intent found without a result (the agent died during its effect). Returns
    /// the reason when the redo detached.
    fn finish_pending(
        &mut self,
        cur: &mut Cursor,
        cmd: &Command,
    ) -> Result<Option<String>, RunnerError> {
        let result = match self.effects.reconcile(&cur.state, cmd) {
            Reconciled::Done(r) => Ok(r),
            Reconciled::Failed(f) => Err(EffectError::Failed(f)),
            Reconciled::Redo => self.perform(cur, cmd),
        };
        self.record_result(cur, cmd, result)
    }

    /// Journal an effect's result; a detached effect journals nothing (its intent stays).
    fn record_result(
        &mut self,
        cur: &mut Cursor,
        cmd: &Command,
        result: EffectOutcome,
    ) -> Result<Option<String>, RunnerError> {
        let event = match result {
            Ok(result) => Event::EffectDone {
                key: cmd.key.clone(),
                result,
            },
            Err(EffectError::Failed(f)) => Event::EffectFailed {
                key: cmd.key.clone(),
                reason: f.reason,
                retryable: f.retryable,
            },
            Err(EffectError::Detached(reason)) => return Ok(Some(reason)),
        };
        self.append(cur, event)?;
        Ok(None)
    }

    fn take_stop(&mut self, cur: &mut Cursor, stop: StopRequest) -> Result<(), RunnerError> {
        // A second request, or one for a decided run, changes nothing: not journaled.
        if cur.state.stop.is_some() || cur.state.outcome.is_some() {
            return Ok(());
        }
        self.append(cur, stop_event(stop))
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

/// A report or claim that just failed retryably: stop driving; the caller drives it again later
/// (with its own pause), so a long outage does not hold a runner in a tight loop.
fn deferred(state: &RunState) -> Option<String> {
    let due = state.next_command()?;
    if !due.kind.retries_forever() || state.retries == 0 {
        return None;
    }
    Some(match &due.kind {
        CommandKind::Report(o) => {
            format!("reporting {o} failed {} time(s); will retry", state.retries)
        }
        _ => format!(
            "claiming the task failed {} time(s); will retry",
            state.retries
        ),
    })
}
