//! `Launch`, `Wait` and `Terminate`: the user process, behind a [`Runtime`] (today the host's
//! per-run supervisor, [`HostRuntime`]; a container runtime slots in beside it: the container is
//! the supervisor, found again by its run label, its exit code read from the engine).
//!
//! `Wait` only observes: it ships output, pings the task, and returns when the process exited
//! (`Exited`) or when a watcher saw a stop (`StopObserved`: the server says abort, a preemption
//! notice, `daemon --stop`). It never signals the process; the runner journals the stop and the
//! state machine asks for `Terminate`, whose redo after a crash is harmless. A shutdown of the
//! agent detaches the run (`EffectError::Detached`): the process stays under its supervisor.
//!
//! `Launch` never starts two supervisors for one run: the runtime looks for the run's own first
//! (see [`super::supervisor::launch`]).

use super::logship::LogShipper;
use super::supervisor;
use super::task::{api_failure, inside, World};
use super::{
    EffectCtx, EffectError, EffectFailure, EffectOutcome, Interruption, ProgressStore, Reconciled,
    ShipProgress,
};
use crate::config::settings::LostProcess;
use crate::fsm::{EffectResult, ProcessFacts, RunState, StopRequest};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// What a runtime knows of a launched process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcStatus {
    Running,
    Exited(i32),
    /// Gone without an exit status (the machine rebooted, the supervisor was killed).
    Lost,
}

/// What to start.
pub struct LaunchSpec<'a> {
    pub run_id: &'a str,
    /// The run's process dir (`<runs>/<run>/proc`): output, exit status, pid files.
    pub proc_dir: &'a Path,
    pub argv: &'a [String],
    pub cwd: &'a Path,
    pub env: &'a [(String, String)],
    pub max_unshipped: u64,
}

/// Where user processes run. Implementations keep a process independent of the agent (the
/// agent may die and re-attach) and identify it by the run, never by a random name.
pub trait Runtime: Send {
    /// Starts `spec` unless this run already has a process (then its facts: never two).
    fn launch(&self, spec: &LaunchSpec) -> Result<ProcessFacts, EffectFailure>;
    /// The process started for the run whose process dir is `proc_dir`, if any.
    fn find(&self, proc_dir: &Path) -> Option<ProcessFacts>;
    fn status(&self, p: &ProcessFacts) -> ProcStatus;
    /// Sends `signal` to the process's group; false when it is gone.
    fn signal(&self, p: &ProcessFacts, signal: i32) -> bool;
    /// SIGTERM, up to `grace`, then SIGKILL; the exit status when one was recorded.
    fn terminate(&self, p: &ProcessFacts, grace: Duration) -> Option<i32>;
    /// The file the process's output goes to.
    fn output(&self, p: &ProcessFacts) -> PathBuf;
    /// Tells the output relay how much the server acknowledged (bounds unshipped output).
    fn record_shipped(&self, p: &ProcessFacts, offset: u64);
}

/// The host runtime: `clearml-agent supervise` in its own session ([`supervisor`]).
pub struct HostRuntime {
    pub agent_exe: PathBuf,
}

fn launched(p: &ProcessFacts) -> supervisor::Launched {
    supervisor::Launched {
        pid: p.pid,
        start_time: p.start_time,
    }
}

impl Runtime for HostRuntime {
    fn launch(&self, spec: &LaunchSpec) -> Result<ProcessFacts, EffectFailure> {
        let l = supervisor::launch(
            &self.agent_exe,
            spec.proc_dir,
            spec.argv,
            spec.cwd,
            spec.env,
            spec.max_unshipped,
        )
        .map_err(|e| EffectFailure::fatal(e.to_string()))?;
        Ok(ProcessFacts {
            pid: l.pid,
            start_time: l.start_time,
            run_dir: spec.proc_dir.display().to_string(),
        })
    }

    fn find(&self, proc_dir: &Path) -> Option<ProcessFacts> {
        supervisor::recorded(proc_dir).map(|l| ProcessFacts {
            pid: l.pid,
            start_time: l.start_time,
            run_dir: proc_dir.display().to_string(),
        })
    }

    fn status(&self, p: &ProcessFacts) -> ProcStatus {
        let dir = Path::new(&p.run_dir);
        if let Some(code) = supervisor::exit_code(dir) {
            return ProcStatus::Exited(code);
        }
        if supervisor::is_alive_here(dir, p.pid, p.start_time) {
            return ProcStatus::Running;
        }
        // It may have written its exit status between the two reads.
        match supervisor::exit_code(dir) {
            Some(code) => ProcStatus::Exited(code),
            None => ProcStatus::Lost,
        }
    }

    fn signal(&self, p: &ProcessFacts, signal: i32) -> bool {
        supervisor::signal_group(&launched(p), signal)
    }

    fn terminate(&self, p: &ProcessFacts, grace: Duration) -> Option<i32> {
        let dir = Path::new(&p.run_dir);
        supervisor::terminate(dir, &launched(p), grace);
        supervisor::exit_code(dir)
    }

    fn output(&self, p: &ProcessFacts) -> PathBuf {
        supervisor::output_path(Path::new(&p.run_dir))
    }

    fn record_shipped(&self, p: &ProcessFacts, offset: u64) {
        supervisor::record_shipped(Path::new(&p.run_dir), offset);
    }
}

/// The config file the task's SDK reads (mode 0600: it holds the credentials).
fn write_task_config(path: &Path, w: &World) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let s = &w.settings;
    let q = |v: &str| serde_json::to_string(v).unwrap_or_default();
    let mut text = format!(
        "api {{\n  api_server: {}\n  web_server: {}\n  files_server: {}\n",
        q(&s.api_server),
        q(&s.web_server),
        q(&s.files_server)
    );
    if let (Some(k), Some(sec)) = (&s.access_key, &s.secret_key) {
        text.push_str(&format!(
            "  credentials {{\n    access_key: {}\n    secret_key: {}\n  }}\n",
            q(k),
            q(sec)
        ));
    }
    text.push_str("}\n");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(text.as_bytes())
}

pub fn launch(w: &World, rt: &dyn Runtime, state: &RunState) -> EffectOutcome {
    let dirs = w.dirs(state);
    // Never two: a process this run already has is the result (its start was not journaled).
    if let Some(found) = rt.find(&dirs.proc) {
        return Ok(EffectResult::Launched(found));
    }
    let env = state
        .env
        .clone()
        .ok_or_else(|| EffectFailure::fatal("no environment was resolved"))?;
    let snapshot = &state.snapshot;
    let working = snapshot.working_dir.clone().unwrap_or_default();
    let working_dir = inside(&dirs.code, &working, "script.working_dir")?;
    if !working_dir.is_dir() {
        return Err(EffectFailure::fatal(format!(
            "working directory {working} does not exist in the repository"
        ))
        .into());
    }
    let entry = snapshot.entry_point.clone().unwrap_or_default();
    let entry = entry.trim();
    if entry.is_empty() {
        return Err(EffectFailure::fatal(
            "the task has no entry point (script.entry_point is empty)",
        )
        .into());
    }
    let binary = snapshot.binary.clone().unwrap_or_else(|| "python".into());
    let mut words: Vec<String> = entry.split_whitespace().map(str::to_string).collect();
    let shell = binary.starts_with("bash") || binary.starts_with("sh") || binary.ends_with("/bash");
    let module = !shell && words[0] == "-m";
    if !module {
        let script = inside(&working_dir, &words[0], "script.entry_point")?;
        if !script.is_file() {
            return Err(EffectFailure::fatal(format!(
                "entry point {} not found in {}",
                words[0],
                working_dir.display()
            ))
            .into());
        }
    }
    let mut argv = if shell {
        vec![binary.clone()]
    } else {
        vec![env.python.clone(), "-u".into()]
    };
    argv.append(&mut words);
    std::fs::create_dir_all(&dirs.proc)
        .map_err(|e| EffectFailure::fatal(format!("{}: {e}", dirs.proc.display())))?;
    let conf = dirs.proc.join("clearml.conf");
    write_task_config(&conf, w)
        .map_err(|e| EffectFailure::fatal(format!("{}: {e}", conf.display())))?;
    let mut pythonpath = format!("{}:{}", working_dir.display(), dirs.code.display());
    if let Ok(existing) = std::env::var("PYTHONPATH") {
        pythonpath = format!("{pythonpath}:{existing}");
    }
    let s = &w.settings;
    let envs = vec![
        ("CLEARML_TASK_ID".to_string(), state.task_id.clone()),
        ("CLEARML_LOG_TASK_TO_BACKEND".into(), "0".into()),
        ("CLEARML_CONFIG_FILE".into(), conf.display().to_string()),
        ("CLEARML_WORKER_ID".into(), w.worker_id.clone()),
        ("CLEARML_API_HOST".into(), s.api_server.clone()),
        ("CLEARML_WEB_HOST".into(), s.web_server.clone()),
        ("CLEARML_FILES_HOST".into(), s.files_server.clone()),
        ("PYTHONPATH".into(), pythonpath),
        ("PYTHONUNBUFFERED".into(), "1".into()),
        ("VIRTUAL_ENV".into(), env.venv_dir.clone()),
    ];
    w.say(
        state,
        "INFO",
        &format!("Starting Task Execution: {}", argv.join(" ")),
    );
    let facts = rt.launch(&LaunchSpec {
        run_id: &state.run_id,
        proc_dir: &dirs.proc,
        argv: &argv,
        cwd: &working_dir,
        env: &envs,
        max_unshipped: s.max_unshipped_output_bytes,
    })?;
    Ok(EffectResult::Launched(facts))
}

pub fn reconcile_launch(w: &World, rt: &dyn Runtime, state: &RunState) -> Reconciled {
    match rt.find(&w.dirs(state).proc) {
        Some(facts) => Reconciled::Done(EffectResult::Launched(facts)),
        None => Reconciled::Redo,
    }
}

/// Where the acknowledged output offset is kept: the journal's progress key (what a resumed run
/// continues from) and the runtime's hint to its relay.
pub struct Shipping<'a> {
    shipper: LogShipper,
    facts: &'a ProcessFacts,
}

impl<'a> Shipping<'a> {
    /// From what the server acknowledged before; a progress entry that cannot be trusted
    /// detaches the run rather than shipping everything again (or skipping output).
    pub fn new(
        w: &World,
        rt: &dyn Runtime,
        state: &RunState,
        facts: &'a ProcessFacts,
        progress: &dyn ProgressStore,
    ) -> Result<Shipping<'a>, EffectError> {
        let offset = progress
            .load()
            .map_err(|e| {
                EffectError::Detached(format!(
                    "run {}: the journal's progress entry cannot be read ({e}); see `clearml-agent journal verify`",
                    state.run_id
                ))
            })?
            .log_offset_shipped;
        Ok(Shipping {
            shipper: LogShipper::new(rt.output(facts), &state.task_id, &w.worker_id, offset),
            facts,
        })
    }

    /// Ships what is new; true when everything up to now reached the server.
    pub fn ship(
        &mut self,
        w: &World,
        rt: &dyn Runtime,
        progress: &mut dyn ProgressStore,
        flush: bool,
    ) -> Result<(), crate::api::ApiError> {
        // A failed send keeps the offset: the same bytes go again next time.
        let sent = self.shipper.ship(&w.api, flush);
        let offset = self.shipper.offset();
        let before = progress.load().map(|p| p.log_offset_shipped).unwrap_or(0);
        if offset != before {
            let p = ShipProgress {
                log_offset_shipped: offset,
                last_heartbeat_ms: crate::host::now_ms(),
            };
            if let Err(e) = progress.save(p) {
                // Not fatal: at worst the batches since the last saved offset are sent again.
                tracing::warn!("saving the shipped log offset: {e}");
            }
            rt.record_shipped(self.facts, offset);
        }
        sent.map(|_| ())
    }

    pub fn offset(&self) -> u64 {
        self.shipper.offset()
    }
}

/// Why the task must stop, if the server says so (the Python agent's `TaskStopSignal`).
fn server_stop(w: &World, state: &RunState, created_polls: &mut u32) -> Option<String> {
    let Some(task) = w.server_view(&state.task_id).ok()? else {
        return Some("task not found".into());
    };
    if let Some(other) = w.taken_by_other(&task) {
        return Some(format!("task taken by worker {other}"));
    }
    let (status, message) = (task.status.as_str(), task.message.as_str());
    match status {
        "in_progress" if message.contains("stopping") => Some("stopped".into()),
        "stopped" | "closed" | "failed" | "published" | "queued" | "completed" => {
            Some(format!("status changed to {status}"))
        }
        "created" => {
            *created_polls += 1;
            w.say(
                state,
                "WARNING",
                &format!("Task {} was reset! ({}/4)", state.task_id, created_polls),
            );
            (*created_polls >= 4).then(|| "reset".into())
        }
        _ => {
            *created_polls = 0;
            None
        }
    }
}

/// Waits for the user process while shipping its output, pinging the task and watching for a
/// stop; survives agent restarts because it only reads what the runtime records.
pub fn wait(w: &World, rt: &dyn Runtime, state: &RunState, ctx: &mut EffectCtx) -> EffectOutcome {
    // A run being closed (its task moved on) is not reported as this worker's task.
    if state.stop.is_none() {
        let queue = state.snapshot.queue.clone().unwrap_or_default();
        w.set_current_task(Some((state.task_id.clone(), queue)));
    }
    let result = observe(w, rt, state, ctx);
    w.set_current_task(None);
    result
}

fn observe(w: &World, rt: &dyn Runtime, state: &RunState, ctx: &mut EffectCtx) -> EffectOutcome {
    let facts = state
        .process
        .clone()
        .ok_or_else(|| EffectFailure::fatal("no process was launched"))?;
    let mut shipping = Shipping::new(w, rt, state, &facts, &*ctx.progress)?;
    let s = &w.settings;
    let secs = Duration::from_secs_f64;
    let (flush_every, poll_every, ping_every) = (
        secs(s.log_flush_interval_s),
        secs(s.polling_interval_s),
        secs(s.task_ping_interval_s),
    );
    // The first pass ships at once: a re-attached run delivers what was printed while no agent
    // watched without waiting a flush interval.
    let (mut last_flush, mut last_poll, mut last_ping) = (
        Instant::now()
            .checked_sub(flush_every)
            .unwrap_or_else(Instant::now),
        Instant::now(),
        Instant::now(),
    );
    let mut created_polls = 0;
    loop {
        match rt.status(&facts) {
            ProcStatus::Exited(code) => {
                // What is not shipped now is shipped by the report, which retries until it lands.
                let _ = shipping.ship(w, rt, ctx.progress, true);
                return Ok(EffectResult::Exited { code });
            }
            ProcStatus::Lost => {
                // The machine (or the process tree) went down under us without an exit status.
                // Never report that as completed.
                let _ = shipping.ship(w, rt, ctx.progress, true);
                return match s.on_lost_process {
                    LostProcess::Requeue => Ok(EffectResult::StopObserved(StopRequest::Requeue {
                        why: format!("requeued after agent restart on {}", w.worker_id),
                    })),
                    LostProcess::Fail => Err(EffectFailure::fatal("agent host restarted").into()),
                };
            }
            ProcStatus::Running => {}
        }
        // A stop already on record (found by the resume check) needs no more waiting.
        if let Some(stop) = &state.stop {
            return Ok(EffectResult::StopObserved(stop.clone()));
        }
        match ctx.stops.poll(state) {
            Some(Interruption::Stop(stop)) => {
                w.say(state, "WARNING", &format!("Stopping the task: {stop:?}"));
                let _ = shipping.ship(w, rt, ctx.progress, false);
                return Ok(EffectResult::StopObserved(stop));
            }
            Some(Interruption::Detach(why)) => {
                let _ = shipping.ship(w, rt, ctx.progress, false);
                return Err(EffectError::Detached(why));
            }
            None => {}
        }
        if last_flush.elapsed() >= flush_every {
            let _ = shipping.ship(w, rt, ctx.progress, false);
            last_flush = Instant::now();
            if shipping.offset() > 0 {
                crate::failpoint::hit("mid-run");
            }
        }
        if last_ping.elapsed() >= ping_every {
            let _ = w.api.call("tasks.ping", &json!({"task": state.task_id}));
            last_ping = Instant::now();
        }
        if last_poll.elapsed() >= poll_every {
            last_poll = Instant::now();
            if let Some(by) = server_stop(w, state, &mut created_polls) {
                w.say(
                    state,
                    "ERROR",
                    &format!("User aborted: stopping task ({by})"),
                );
                let _ = shipping.ship(w, rt, ctx.progress, false);
                return Ok(EffectResult::StopObserved(StopRequest::Abort { by }));
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Stops the user process after a journaled stop. A preemption gets its checkpoint signal first.
pub fn terminate(w: &World, rt: &dyn Runtime, state: &RunState) -> EffectOutcome {
    let Some(facts) = state.process.clone() else {
        return Ok(EffectResult::Terminated { code: None });
    };
    let s = &w.settings;
    if let Some(StopRequest::Requeue { why }) = &state.stop {
        if why.starts_with("preempted") && s.preemption_signal != libc::SIGTERM {
            rt.signal(&facts, s.preemption_signal);
        }
    }
    let code = rt.terminate(&facts, Duration::from_secs_f64(s.stop_grace_s));
    Ok(EffectResult::Terminated { code })
}

pub fn reconcile_terminate(rt: &dyn Runtime, state: &RunState) -> Reconciled {
    let Some(facts) = &state.process else {
        return Reconciled::Done(EffectResult::Terminated { code: None });
    };
    match rt.status(facts) {
        ProcStatus::Exited(code) => Reconciled::Done(EffectResult::Terminated { code: Some(code) }),
        ProcStatus::Lost => Reconciled::Done(EffectResult::Terminated { code: None }),
        // Signalling again is harmless.
        ProcStatus::Running => Reconciled::Redo,
    }
}

/// Ships the output the process left unshipped (the report's first step): fails retryably while
/// the server does not take it, so the run is not reported, nor cleaned up, before it has it.
pub fn ship_rest(
    w: &World,
    rt: &dyn Runtime,
    state: &RunState,
    ctx: &mut EffectCtx,
) -> Result<(), EffectError> {
    let Some(facts) = &state.process else {
        return Ok(());
    };
    if !rt.output(facts).exists() {
        return Ok(());
    }
    let mut shipping = Shipping::new(w, rt, state, facts, &*ctx.progress)?;
    shipping
        .ship(w, rt, ctx.progress, true)
        .map_err(|e| EffectError::Failed(api_failure(e)))
}
