//! The real effect handler: Python environments ([`crate::effects::venv`]), repositories
//! ([`crate::effects::vcs`]), the per-run supervisor ([`crate::effects::supervisor`]) and the
//! ClearML API. Every directory it touches is named by the run id (`<task>.<attempt>`), so a
//! resumed run finds its own work and two runs never share any.
//!
//! Requirements come from `script.requirements.pip`; when a task has none and has a repository,
//! `ResolveEnv` reads the repository's `requirements.txt` at the task's commit from the VCS cache
//! (populating it, so `Clone` then only copies). That is how the state machine keeps its order
//! (EnvResolved before Cloned) while honouring repository requirements.

use super::logship::{agent_line, LogShipper};
use super::settings::{AgentSettings, LostProcess, PackageManager};
use crate::api::{ApiClient, ApiError};
use crate::effects::supervisor::{self, Launched};
use crate::effects::{vcs, venv, EffectFailure, EffectHandler, ProgressStore, Reconciled};
use crate::fsm::{
    Command, CommandKind, EffectResult, EnvFacts, Outcome, ProcessFacts, RunState, SourceFacts,
    StopRequest,
};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Set when the daemon is asked to shut down: a run being waited on is left to its supervisor.
pub static SHUTDOWN: AtomicBool = AtomicBool::new(false);
/// Set by `daemon --stop` (SIGUSR1): running tasks are aborted and reported stopped.
pub static ABORT_ALL: AtomicBool = AtomicBool::new(false);
/// Set by `daemon --stop --drain` (SIGUSR2): stop pulling, let running tasks finish.
pub static DRAIN: AtomicBool = AtomicBool::new(false);
/// The stop reason of tasks aborted by `daemon --stop`.
pub const AGENT_SHUTDOWN: &str = "agent shutdown";

/// The (task, queue) a worker is running now, as its status reports say.
pub type CurrentTask = Arc<std::sync::Mutex<Option<(String, String)>>>;

pub struct RealEffects {
    pub settings: AgentSettings,
    pub api: Arc<ApiClient>,
    pub worker_id: String,
    /// This binary, started again as the per-run supervisor.
    pub agent_exe: PathBuf,
    /// Called when a shutdown is requested while a user process runs: the daemon unregisters and
    /// exits, leaving the run (intent journaled, no result) to be re-attached on the next start.
    /// The argument says why (recorded in the journal for the next start's resume reason).
    pub on_shutdown: Box<dyn Fn(&str) + Send>,
    pending_stop: Option<StopRequest>,
    /// Shared with the daemon's status reporter: (task, queue) while a user process is waited on.
    pub current_task: Option<CurrentTask>,
}

/// The directories of one run.
pub struct RunDirs {
    pub venv: PathBuf,
    pub code: PathBuf,
    pub proc: PathBuf,
}

impl RealEffects {
    pub fn new(
        settings: AgentSettings,
        api: Arc<ApiClient>,
        worker_id: String,
        agent_exe: PathBuf,
    ) -> Self {
        RealEffects {
            settings,
            api,
            worker_id,
            agent_exe,
            on_shutdown: Box::new(|_| {}),
            pending_stop: None,
            current_task: None,
        }
    }

    pub fn dirs(&self, state: &RunState) -> RunDirs {
        let run = self.settings.runs_dir.join(&state.run_id);
        RunDirs {
            venv: self.settings.venvs_dir.join(&state.run_id),
            code: run.join("code"),
            proc: run.join("proc"),
        }
    }

    /// A line from the agent in the task's console; failures to log never fail the run.
    fn say(&self, state: &RunState, level: &str, msg: &str) {
        let _ = agent_line(
            &self.api,
            &state.task_id,
            &self.worker_id,
            level,
            &format!("{msg}\n"),
        );
    }

    fn status_message(&self) -> String {
        format!("Changed by clearml-agent {}", self.worker_id)
    }

    fn venv_settings(&self) -> venv::EnvSettings {
        let cache = self.settings.venvs_cache_path.clone();
        venv::EnvSettings {
            venvs_dir: self.settings.venvs_dir.clone(),
            cache_enabled: cache.is_some(),
            cache_dir: cache.unwrap_or_else(|| self.settings.venvs_dir.join(".cache-disabled")),
            tools_dir: self.settings.tools_dir.clone(),
            max_entries: self.settings.venvs_cache_max_entries,
            free_space_threshold_gb: self.settings.venvs_cache_free_space_threshold_gb,
        }
    }

    fn vcs_settings(&self) -> vcs::VcsSettings {
        let cache = self.settings.vcs_cache_path.clone();
        vcs::VcsSettings {
            cache_enabled: cache.is_some(),
            cache_dir: cache.unwrap_or_else(|| self.settings.runs_dir.join(".vcs-cache")),
            git_user: self.settings.git_user.clone(),
            git_pass: self.settings.git_pass.clone(),
            git_host: self.settings.git_host.clone(),
            force_git_ssh_protocol: self.settings.force_git_ssh_protocol,
        }
    }

    fn source_spec(state: &RunState) -> Option<vcs::SourceSpec> {
        let s = &state.snapshot;
        let repo = s.repository.clone().filter(|r| !r.trim().is_empty())?;
        let nonempty = |v: &Option<String>| v.clone().filter(|x| !x.trim().is_empty());
        Some(vcs::SourceSpec {
            repository: repo,
            branch: nonempty(&s.branch),
            tag: nonempty(&s.tag),
            commit: nonempty(&s.version_num),
        })
    }

    fn python_for(&self, state: &RunState) -> String {
        let binary = state.snapshot.binary.clone().unwrap_or_default();
        if let Some(p) = &self.settings.python_binary {
            return p.clone();
        }
        if binary.starts_with("python") {
            // The task's `python3.11` is used when this machine has it; else the default python3.
            if which(&binary).is_some() {
                return binary;
            }
        }
        "python3".into()
    }

    fn resolve_env(&mut self, state: &RunState) -> Result<EffectResult, EffectFailure> {
        let dirs = self.dirs(state);
        let mut requirements =
            requirement_lines(state.snapshot.requirements.as_deref().unwrap_or(""));
        if requirements.is_empty() {
            if let Some(spec) = Self::source_spec(state) {
                let vcs_settings = self.vcs_settings();
                let mut log = |l: &str| self.say(state, "INFO", l);
                match vcs::read_file_at(&vcs_settings, &spec, "requirements.txt", &mut log) {
                    Ok(Some(text)) => {
                        requirements = requirement_lines(&text);
                        self.say(
                            state,
                            "INFO",
                            &format!(
                                "Using the repository's requirements.txt ({} lines)",
                                requirements.len()
                            ),
                        );
                    }
                    Ok(None) => {}
                    Err(e) => return Err(EffectFailure::fatal(e.to_string())),
                }
            }
        }
        let spec = venv::EnvSpec {
            python: self.python_for(state),
            requirements,
            manager: match self.settings.package_manager {
                PackageManager::Uv => venv::Manager::Uv,
                PackageManager::Pip => venv::Manager::Pip,
            },
            extra_index_urls: self.settings.extra_index_url.clone(),
            priority_packages: self.settings.priority_packages.clone(),
            post_packages: self.settings.post_packages.clone(),
            force_upgrade: self.settings.force_upgrade,
            system_site_packages: self.settings.system_site_packages,
            cuda_version: self.settings.cuda_version.clone(),
        };
        // A half-built venv from a crashed attempt is never reused.
        let _ = std::fs::remove_dir_all(&dirs.venv);
        let env_settings = self.venv_settings();
        let mut log = |l: &str| {
            self.say(state, "INFO", l);
            if l.contains("Collecting") || l.contains("Resolved") || l.contains("Downloading") {
                crate::failpoint::hit("mid-install");
            }
        };
        let outcome = venv::build(&env_settings, &spec, &dirs.venv, &mut log)
            .map_err(|e| EffectFailure::fatal(e.to_string()))?;
        Ok(EffectResult::EnvResolved(EnvFacts {
            python: outcome.python.display().to_string(),
            venv_dir: outcome.venv_dir.display().to_string(),
            cache_hit: outcome.cache_hit,
            installed: outcome.installed,
        }))
    }

    fn clone_source(&mut self, state: &RunState) -> Result<EffectResult, EffectFailure> {
        let dirs = self.dirs(state);
        let _ = std::fs::remove_dir_all(&dirs.code);
        let Some(spec) = Self::source_spec(state) else {
            std::fs::create_dir_all(&dirs.code)
                .map_err(|e| EffectFailure::fatal(format!("{}: {e}", dirs.code.display())))?;
            return Ok(EffectResult::Cloned(SourceFacts {
                worktree: dirs.code.display().to_string(),
                commit: None,
            }));
        };
        let _ = std::fs::remove_file(dirs.code.join(CLONED_MARKER));
        let settings = self.vcs_settings();
        let mut log = |l: &str| {
            self.say(state, "INFO", l);
            crate::failpoint::hit("mid-clone");
        };
        let out = vcs::checkout(&settings, &spec, &dirs.code, &mut log)
            .map_err(|e| EffectFailure::fatal(e.to_string()))?;
        // Written last: a resumed run trusts a checkout only with it (see `reconcile`).
        let _ = std::fs::write(dirs.code.join(CLONED_MARKER), &out.commit);
        Ok(EffectResult::Cloned(SourceFacts {
            worktree: out.worktree.display().to_string(),
            commit: Some(out.commit),
        }))
    }

    fn apply_patch(&mut self, state: &RunState) -> Result<EffectResult, EffectFailure> {
        let dirs = self.dirs(state);
        let diff = state.snapshot.diff.clone().unwrap_or_default();
        let marker = dirs.code.join(".clearml-agent-patched");
        let applied = if Self::source_spec(state).is_some() {
            let mut log = |l: &str| self.say(state, "INFO", l);
            vcs::apply_diff(&dirs.code, &diff, &mut log)
                .map_err(|e| EffectFailure::fatal(e.to_string()))?
        } else {
            // No repository: the "diff" is the script itself (how the SDK stores a standalone script).
            let entry = entry_script(state).unwrap_or_else(|| "script.py".into());
            let target = dirs.code.join(&entry);
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| EffectFailure::fatal(format!("{}: {e}", parent.display())))?;
            }
            std::fs::write(&target, diff.as_bytes())
                .map_err(|e| EffectFailure::fatal(format!("{}: {e}", target.display())))?;
            true
        };
        let _ = std::fs::write(&marker, if applied { "applied" } else { "nothing" });
        Ok(EffectResult::Patched { applied })
    }

    fn launch(&mut self, state: &RunState) -> Result<EffectResult, EffectFailure> {
        let dirs = self.dirs(state);
        let env = state
            .env
            .clone()
            .ok_or_else(|| EffectFailure::fatal("no environment was resolved"))?;
        let snapshot = &state.snapshot;
        let working_dir = dirs.code.join(
            snapshot
                .working_dir
                .clone()
                .filter(|w| !w.is_empty())
                .unwrap_or_else(|| ".".into()),
        );
        if !working_dir.is_dir() {
            return Err(EffectFailure::fatal(format!(
                "working directory {} does not exist in the repository",
                snapshot.working_dir.clone().unwrap_or_default()
            )));
        }
        let entry = snapshot.entry_point.clone().unwrap_or_default();
        let entry = entry.trim();
        if entry.is_empty() {
            return Err(EffectFailure::fatal(
                "the task has no entry point (script.entry_point is empty)",
            ));
        }
        let binary = snapshot.binary.clone().unwrap_or_else(|| "python".into());
        let mut words: Vec<String> = entry.split_whitespace().map(str::to_string).collect();
        let argv: Vec<String> = if binary.starts_with("bash")
            || binary.starts_with("sh")
            || binary.ends_with("/bash")
        {
            let script = &words[0];
            if !working_dir.join(script).is_file() {
                return Err(EffectFailure::fatal(format!(
                    "entry point {script} not found in {}",
                    working_dir.display()
                )));
            }
            let mut v = vec![binary.clone()];
            v.append(&mut words);
            v
        } else if words[0] == "-m" {
            let mut v = vec![env.python.clone(), "-u".into()];
            v.append(&mut words);
            v
        } else {
            let script = &words[0];
            if !working_dir.join(script).is_file() {
                return Err(EffectFailure::fatal(format!(
                    "entry point {script} not found in {}",
                    working_dir.display()
                )));
            }
            let mut v = vec![env.python.clone(), "-u".into()];
            v.append(&mut words);
            v
        };
        std::fs::create_dir_all(&dirs.proc)
            .map_err(|e| EffectFailure::fatal(format!("{}: {e}", dirs.proc.display())))?;
        let conf = dirs.proc.join("clearml.conf");
        write_task_config(&conf, &self.settings)
            .map_err(|e| EffectFailure::fatal(format!("{}: {e}", conf.display())))?;
        let mut pythonpath = format!("{}:{}", working_dir.display(), dirs.code.display());
        if let Ok(existing) = std::env::var("PYTHONPATH") {
            pythonpath = format!("{pythonpath}:{existing}");
        }
        let envs = vec![
            ("CLEARML_TASK_ID".to_string(), state.task_id.clone()),
            ("CLEARML_LOG_TASK_TO_BACKEND".into(), "0".into()),
            ("CLEARML_CONFIG_FILE".into(), conf.display().to_string()),
            ("CLEARML_WORKER_ID".into(), self.worker_id.clone()),
            ("CLEARML_API_HOST".into(), self.settings.api_server.clone()),
            ("CLEARML_WEB_HOST".into(), self.settings.web_server.clone()),
            (
                "CLEARML_FILES_HOST".into(),
                self.settings.files_server.clone(),
            ),
            ("PYTHONPATH".into(), pythonpath),
            ("PYTHONUNBUFFERED".into(), "1".into()),
            ("VIRTUAL_ENV".into(), env.venv_dir.clone()),
        ];
        self.say(
            state,
            "INFO",
            &format!("Starting Task Execution: {}", argv.join(" ")),
        );
        let launched = supervisor::launch(
            &self.agent_exe,
            &dirs.proc,
            &argv,
            &working_dir,
            &envs,
            self.settings.max_unshipped_output_bytes,
        )
        .map_err(|e| EffectFailure::fatal(e.to_string()))?;
        Ok(EffectResult::Launched(ProcessFacts {
            pid: launched.pid,
            start_time: launched.start_time,
            run_dir: dirs.proc.display().to_string(),
        }))
    }

    /// Waits for the user process while shipping its output, pinging the task and watching for
    /// a stop request; survives agent restarts because it only reads the supervisor's files.
    fn wait(
        &mut self,
        state: &RunState,
        progress: &mut dyn ProgressStore,
    ) -> Result<EffectResult, EffectFailure> {
        // A run being closed (its task moved on) is not reported as this worker's task.
        if state.stop.is_none() {
            let queue = state.snapshot.queue.clone().unwrap_or_default();
            self.set_current_task(Some((state.task_id.clone(), queue)));
        }
        let result = self.wait_for_exit(state, progress);
        self.set_current_task(None);
        result
    }

    fn set_current_task(&self, task: Option<(String, String)>) {
        if let Some(current) = &self.current_task {
            *current.lock().unwrap_or_else(|e| e.into_inner()) = task;
        }
    }

    fn wait_for_exit(
        &mut self,
        state: &RunState,
        progress: &mut dyn ProgressStore,
    ) -> Result<EffectResult, EffectFailure> {
        let facts = state
            .process
            .clone()
            .ok_or_else(|| EffectFailure::fatal("no process was launched"))?;
        let run_dir = PathBuf::from(&facts.run_dir);
        let launched = Launched {
            pid: facts.pid,
            start_time: facts.start_time,
        };
        // Shipping goes on from what the server acknowledged before (the journal's progress key).
        let mut shipped = Shipped {
            run_dir: &run_dir,
            store: progress,
        };
        let mut shipper = LogShipper::new(
            supervisor::output_path(&run_dir),
            &state.task_id,
            &self.worker_id,
            shipped.store.load().log_offset_shipped,
        );
        let secs = Duration::from_secs_f64;
        let (flush_every, poll_every, ping_every) = (
            secs(self.settings.log_flush_interval_s),
            secs(self.settings.polling_interval_s),
            secs(self.settings.task_ping_interval_s),
        );
        let (mut last_flush, mut last_poll, mut last_ping) =
            (Instant::now(), Instant::now(), Instant::now());
        if state.stop.is_some() {
            // A stop is already on record (found by the resume check): no need to wait for it.
            supervisor::terminate(&run_dir, &launched, secs(self.settings.stop_grace_s));
            self.ship(&mut shipper, &mut shipped, true);
            let code = supervisor::exit_code(&run_dir).unwrap_or(-9);
            return Ok(EffectResult::Exited { code });
        }
        let mut created_polls = 0;
        loop {
            if let Some(code) = supervisor::exit_code(&run_dir) {
                self.ship(&mut shipper, &mut shipped, true);
                return Ok(EffectResult::Exited { code });
            }
            if !supervisor::is_alive(launched.pid, launched.start_time)
                && supervisor::exit_code(&run_dir).is_none()
            {
                // The supervisor died without an exit status: the machine (or its process
                // tree) went down under us. Never report that as completed.
                self.ship(&mut shipper, &mut shipped, true);
                return match self.settings.on_lost_process {
                    LostProcess::Requeue => {
                        self.pending_stop = Some(StopRequest::Requeue {
                            why: format!("requeued after agent restart on {}", self.worker_id),
                        });
                        Ok(EffectResult::Exited { code: -9 })
                    }
                    LostProcess::Fail => Err(EffectFailure::fatal("agent host restarted")),
                };
            }
            if super::preemption::PREEMPTED.load(Ordering::SeqCst) {
                let notice = super::preemption::notice();
                self.say(
                    state,
                    "WARNING",
                    &format!(
                        "Preemption notice ({notice}): signalling the task so it can checkpoint"
                    ),
                );
                if !self.settings.requeue_on_preemption {
                    // Leave the process to its supervisor; the run resumes on this disk.
                    supervisor::signal_group(&launched, self.settings.preemption_signal);
                    self.ship(&mut shipper, &mut shipped, false);
                    (self.on_shutdown)(&format!("preemption notice: {notice}"));
                }
                supervisor::signal_group(&launched, self.settings.preemption_signal);
                supervisor::terminate(&run_dir, &launched, secs(self.settings.stop_grace_s));
                self.ship(&mut shipper, &mut shipped, true);
                self.pending_stop = Some(StopRequest::Requeue {
                    why: format!("preempted: {notice}"),
                });
                let code = supervisor::exit_code(&run_dir).unwrap_or(-9);
                return Ok(EffectResult::Exited { code });
            }
            if SHUTDOWN.load(Ordering::SeqCst) {
                self.ship(&mut shipper, &mut shipped, false);
                (self.on_shutdown)("SIGTERM or SIGINT");
            }
            if ABORT_ALL.load(Ordering::SeqCst) {
                self.say(
                    state,
                    "WARNING",
                    "The agent is being stopped (clearml-agent daemon --stop): aborting the task",
                );
                supervisor::terminate(&run_dir, &launched, secs(self.settings.stop_grace_s));
                self.ship(&mut shipper, &mut shipped, true);
                self.pending_stop = Some(StopRequest::Abort {
                    by: AGENT_SHUTDOWN.into(),
                });
                let code = supervisor::exit_code(&run_dir).unwrap_or(-9);
                return Ok(EffectResult::Exited { code });
            }
            if last_flush.elapsed() >= flush_every {
                self.ship(&mut shipper, &mut shipped, false);
                last_flush = Instant::now();
                if shipper.offset() > 0 {
                    crate::failpoint::hit("mid-run");
                }
            }
            if last_ping.elapsed() >= ping_every {
                let _ = self.api.call("tasks.ping", &json!({"task": state.task_id}));
                last_ping = Instant::now();
            }
            if last_poll.elapsed() >= poll_every {
                last_poll = Instant::now();
                if let Some(stop) = self.stop_reason(state, &mut created_polls) {
                    self.say(
                        state,
                        "ERROR",
                        &format!("User aborted: stopping task ({stop})"),
                    );
                    supervisor::terminate(&run_dir, &launched, secs(self.settings.stop_grace_s));
                    self.ship(&mut shipper, &mut shipped, true);
                    self.pending_stop = Some(StopRequest::Abort { by: stop });
                    let code = supervisor::exit_code(&run_dir).unwrap_or(-9);
                    return Ok(EffectResult::Exited { code });
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn ship(&self, shipper: &mut LogShipper, shipped: &mut Shipped, flush: bool) {
        // A failed send keeps the offset: the same bytes go again next time.
        if shipper.ship(&self.api, flush).is_ok() {
            shipped.record(shipper.offset());
        }
    }

    /// The task as the server sees it now; `None` when it no longer exists.
    fn server_view(&self, task: &str) -> Result<Option<TaskView>, ApiError> {
        let data = self.api.call(
            "v2.14/tasks.get_all",
            &json!({"id": [task], "only_fields": ["status", "status_message", "last_worker"], "search_hidden": true}),
        )?;
        let text = |t: &Value, k: &str| t[k].as_str().unwrap_or("").to_string();
        Ok(data["tasks"]
            .as_array()
            .and_then(|t| t.first())
            .map(|t| TaskView {
                status: text(t, "status"),
                message: text(t, "status_message"),
                last_worker: text(t, "last_worker"),
            }))
    }

    /// Another worker runs the task now (it was requeued and pulled elsewhere).
    fn taken_by_other<'v>(&self, view: &'v TaskView) -> Option<&'v str> {
        (view.status == "in_progress"
            && !view.last_worker.is_empty()
            && view.last_worker != self.worker_id)
            .then_some(view.last_worker.as_str())
    }

    /// Why the task must stop, if it must (the Python agent's `TaskStopSignal`).
    fn stop_reason(&self, state: &RunState, created_polls: &mut u32) -> Option<String> {
        let Some(task) = self.server_view(&state.task_id).ok()? else {
            return Some("task not found".into());
        };
        if let Some(other) = self.taken_by_other(&task) {
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
                self.say(
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

    fn terminate(&mut self, state: &RunState) -> Result<EffectResult, EffectFailure> {
        let Some(facts) = state.process.clone() else {
            return Ok(EffectResult::Terminated { code: None });
        };
        let run_dir = PathBuf::from(&facts.run_dir);
        supervisor::terminate(
            &run_dir,
            &Launched {
                pid: facts.pid,
                start_time: facts.start_time,
            },
            Duration::from_secs_f64(self.settings.stop_grace_s),
        );
        Ok(EffectResult::Terminated {
            code: supervisor::exit_code(&run_dir),
        })
    }

    /// Whether `task` waits in the queue it was pulled from (someone enqueued it again).
    fn waits_in_queue(&self, state: &RunState) -> bool {
        let Some(queue) = &state.snapshot.queue else {
            return false;
        };
        self.api
            .call("queues.get_by_id", &json!({"queue": queue}))
            .map(|d| {
                d["queue"]["entries"].as_array().is_some_and(|e| {
                    e.iter()
                        .any(|e| e["task"].as_str() == Some(state.task_id.as_str()))
                })
            })
            .unwrap_or(false)
    }

    /// The resume check: whether the task moved on while no agent watched this run.
    fn moved_on(&self, state: &RunState) -> Option<String> {
        let view = match self.server_view(&state.task_id) {
            Ok(Some(v)) => v,
            Ok(None) => return Some("task not found".into()),
            // Unreachable now: the run goes on and the running checks catch up later.
            Err(_) => return None,
        };
        if let Some(other) = self.taken_by_other(&view) {
            return Some(format!("task taken by worker {other}"));
        }
        match view.status.as_str() {
            "in_progress" if view.message.contains("stopping") => Some("stopped".into()),
            "in_progress" => None,
            "created" => Some("reset while the agent was down".into()),
            // Pulled but not yet marked started when the agent died: still ours unless it was
            // put back in its queue meanwhile.
            "queued" if !self.waits_in_queue(state) => {
                let _ = self.api.call(
                    "v2.5/tasks.started",
                    &json!({"task": state.task_id, "force": true, "status_message": "launch by agent"}),
                );
                None
            }
            "queued" => Some("enqueued again while the agent was down".into()),
            other => Some(format!(
                "status changed to {other} while the agent was down"
            )),
        }
    }

    fn report(
        &mut self,
        state: &RunState,
        outcome: &Outcome,
    ) -> Result<EffectResult, EffectFailure> {
        let task = &state.task_id;
        let fail = |e: ApiError| {
            if e.is_retryable() {
                EffectFailure::retry(e.to_string())
            } else {
                EffectFailure::fatal(e.to_string())
            }
        };
        // The installed packages, with the original request kept in org_pip.
        if let Some(env) = &state.env {
            if !env.installed.is_empty() {
                let org = state.snapshot.requirements.clone().unwrap_or_default();
                let _ = self.api.call(
                    "v2.5/tasks.set_requirements",
                    &json!({"task": task, "requirements": {"pip": env.installed, "org_pip": org}}),
                );
            }
        }
        if state
            .snapshot
            .version_num
            .as_deref()
            .unwrap_or("")
            .is_empty()
        {
            if let Some(commit) = state.source.as_ref().and_then(|s| s.commit.clone()) {
                let _ = self.api.call(
                    "tasks.edit",
                    &json!({"task": task, "force": true, "script": {"version_num": commit}}),
                );
            }
        }
        let view = self.server_view(task).map_err(fail)?;
        let (endpoint, reason, line) = match outcome {
            Outcome::Completed => (
                "tasks.completed",
                "worker execution done".to_string(),
                "Process completed successfully".to_string(),
            ),
            Outcome::Failed { reason } => (
                "tasks.failed",
                reason.clone(),
                format!("Process failed: {reason}"),
            ),
            Outcome::Aborted { by } if by == AGENT_SHUTDOWN => (
                "tasks.stopped",
                AGENT_SHUTDOWN.to_string(),
                "Process aborted: the agent was stopped (clearml-agent daemon --stop)".to_string(),
            ),
            Outcome::Aborted { .. } => (
                "tasks.stopped",
                "task was stopped by tasks.stop".to_string(),
                "Process aborted by user".to_string(),
            ),
            Outcome::Requeued { why } => (
                "tasks.enqueue",
                why.clone(),
                format!("Task requeued: {why}"),
            ),
        };
        self.say(state, "DEBUG", &line);
        // Someone else (the user, the SDK) may have set the final status already: never override it.
        // Only a task still running (as far as the server knows), and not by another worker, is
        // ours to finish.
        match &view {
            Some(v) if v.status == "in_progress" && self.taken_by_other(v).is_none() => {}
            _ => return Ok(EffectResult::Reported),
        }
        let mut body = json!({"task": task, "status_reason": reason, "status_message": self.status_message(), "force": true});
        if let Outcome::Requeued { why } = outcome {
            body["status_message"] = json!(why);
            if let Some(q) = &state.snapshot.queue {
                body["queue"] = json!(q);
            }
        }
        match self.api.call(endpoint, &body) {
            Ok(data) => {
                // The crash harness stops here: the status is set, its journal record is not.
                crate::failpoint::hit("after-terminal-call");
                if matches!(outcome, Outcome::Requeued { .. }) {
                    // A preempted or lost task goes first in line, not behind newer work.
                    let queue = data["fields"]["execution.queue"]
                        .as_str()
                        .map(str::to_string);
                    if let Some(q) = queue.or_else(|| state.snapshot.queue.clone()) {
                        let _ = self.api.call(
                            "queues.move_task_to_front",
                            &json!({"queue": q, "task": task}),
                        );
                    }
                }
                Ok(EffectResult::Reported)
            }
            Err(e) if e.is_code(400, 101) => Ok(EffectResult::Reported), // the task was deleted meanwhile
            Err(e) => Err(fail(e)),
        }
    }
}

impl EffectHandler for RealEffects {
    fn perform(
        &mut self,
        state: &RunState,
        cmd: &Command,
        progress: &mut dyn ProgressStore,
    ) -> Result<EffectResult, EffectFailure> {
        match &cmd.kind {
            CommandKind::ResolveEnv => self.resolve_env(state),
            CommandKind::Clone => self.clone_source(state),
            CommandKind::ApplyPatch => self.apply_patch(state),
            CommandKind::Launch => self.launch(state),
            CommandKind::Wait => self.wait(state, progress),
            CommandKind::Terminate => self.terminate(state),
            CommandKind::Report(outcome) => self.report(state, outcome),
        }
    }

    fn reconcile(&mut self, state: &RunState, cmd: &Command) -> Reconciled {
        let dirs = self.dirs(state);
        match &cmd.kind {
            // A finished venv and a finished checkout are kept, not rebuilt.
            CommandKind::ResolveEnv => match venv::completed(&dirs.venv) {
                Some(m) => Reconciled::Done(EffectResult::EnvResolved(EnvFacts {
                    python: venv::venv_python(&dirs.venv).display().to_string(),
                    venv_dir: dirs.venv.display().to_string(),
                    cache_hit: false,
                    installed: m.installed,
                })),
                None => Reconciled::Redo,
            },
            CommandKind::Clone if Self::source_spec(state).is_some() => {
                match std::fs::read_to_string(dirs.code.join(CLONED_MARKER)) {
                    Ok(commit) if !commit.is_empty() => {
                        Reconciled::Done(EffectResult::Cloned(SourceFacts {
                            worktree: dirs.code.display().to_string(),
                            commit: Some(commit),
                        }))
                    }
                    _ => Reconciled::Redo,
                }
            }
            CommandKind::ApplyPatch => {
                match std::fs::read_to_string(dirs.code.join(".clearml-agent-patched")) {
                    Ok(s) => Reconciled::Done(EffectResult::Patched {
                        applied: s == "applied",
                    }),
                    Err(_) => Reconciled::Redo,
                }
            }
            CommandKind::Launch => match supervisor::recorded(&dirs.proc) {
                Some(l) => Reconciled::Done(EffectResult::Launched(ProcessFacts {
                    pid: l.pid,
                    start_time: l.start_time,
                    run_dir: dirs.proc.display().to_string(),
                })),
                None => Reconciled::Redo,
            },
            CommandKind::Report(_) => match self.server_view(&state.task_id) {
                Ok(Some(v))
                    if !matches!(v.status.as_str(), "in_progress" | "queued" | "created") =>
                {
                    Reconciled::Done(EffectResult::Reported)
                }
                _ => Reconciled::Redo,
            },
            // Anything else is done again (from the caches); waiting re-attaches.
            _ => Reconciled::Redo,
        }
    }

    fn check_on_resume(&mut self, state: &RunState) -> Option<StopRequest> {
        let why = self.moved_on(state)?;
        eprintln!(
            "clearml-agent: task {} moved on while the agent was down ({why}): closing run {}",
            state.task_id, state.run_id
        );
        Some(StopRequest::Abort { by: why })
    }

    fn clean_up(&mut self, state: &RunState) {
        if !self.settings.clean_up_runs {
            return;
        }
        let dirs = self.dirs(state);
        let _ = std::fs::remove_dir_all(&dirs.venv);
        let _ = std::fs::remove_dir_all(self.settings.runs_dir.join(&state.run_id));
    }

    fn poll_stop(&mut self, _state: &RunState) -> Option<StopRequest> {
        if let Some(stop) = self.pending_stop.take() {
            return Some(stop);
        }
        // A notice before the user process runs: give the task back right away.
        (super::preemption::PREEMPTED.load(Ordering::SeqCst) && self.settings.requeue_on_preemption)
            .then(|| StopRequest::Requeue {
                why: format!("preempted: {}", super::preemption::notice()),
            })
    }
}

/// In a run's checkout once it is complete: the commit checked out.
const CLONED_MARKER: &str = ".clearml-agent-cloned";

/// What the resume and stop checks read of a task.
struct TaskView {
    status: String,
    message: String,
    last_worker: String,
}

/// Where the acknowledged output offset is kept: the journal's progress key (what a resumed run
/// continues from) and a hint file the supervisor reads to bound unshipped output.
struct Shipped<'a> {
    run_dir: &'a Path,
    store: &'a mut dyn ProgressStore,
}

impl Shipped<'_> {
    fn record(&mut self, offset: u64) {
        let mut p = self.store.load();
        if p.log_offset_shipped == offset {
            return;
        }
        p.log_offset_shipped = offset;
        p.last_heartbeat_ms = crate::host::now_ms();
        if let Err(e) = self.store.save(p) {
            // Not fatal: at worst the batches since the last saved offset are sent again.
            eprintln!("clearml-agent: saving the shipped log offset: {e}");
        }
        supervisor::record_shipped(self.run_dir, offset);
    }
}

/// Requirement lines from `script.requirements.pip` (comments and blanks dropped).
pub fn requirement_lines(text: &str) -> Vec<String> {
    text.lines()
        .map(|l| l.split(" #").next().unwrap_or("").trim())
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect()
}

fn entry_script(state: &RunState) -> Option<String> {
    let entry = state.snapshot.entry_point.clone()?;
    let first = entry.split_whitespace().next()?.to_string();
    (first != "-m").then_some(first)
}

fn which(binary: &str) -> Option<PathBuf> {
    if binary.contains('/') {
        return Path::new(binary).is_file().then(|| PathBuf::from(binary));
    }
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(binary))
            .find(|c| c.is_file())
    })
}

/// The config file the task's SDK reads (mode 0600: it holds the credentials).
fn write_task_config(path: &Path, s: &AgentSettings) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
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

/// The snapshot a run records, from the server's task document.
pub fn snapshot_of(task: &Value, queue: Option<&str>) -> crate::fsm::TaskSnapshot {
    let s = |path: &[&str]| -> Option<String> {
        let mut cur = task;
        for p in path {
            cur = cur.get(*p)?;
        }
        cur.as_str().map(str::to_string)
    };
    let requirements = match task
        .get("script")
        .and_then(|s| s.get("requirements"))
        .and_then(|r| r.get("pip"))
    {
        Some(Value::String(text)) => Some(text.clone()),
        Some(Value::Array(lines)) => Some(
            lines
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join("\n"),
        ),
        _ => None,
    };
    let container_args = s(&["container", "arguments"])
        .map(|a| a.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default();
    crate::fsm::TaskSnapshot {
        task_id: s(&["id"]).unwrap_or_default(),
        name: s(&["name"]).unwrap_or_default(),
        project: s(&["project"]),
        queue: queue.map(str::to_string),
        repository: s(&["script", "repository"]),
        branch: s(&["script", "branch"]),
        tag: s(&["script", "tag"]),
        version_num: s(&["script", "version_num"]),
        entry_point: s(&["script", "entry_point"]),
        working_dir: s(&["script", "working_dir"]),
        binary: s(&["script", "binary"]),
        diff: s(&["script", "diff"]),
        requirements,
        container_image: s(&["container", "image"]).filter(|i| !i.is_empty()),
        container_args,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requirement_lines_drop_comments() {
        assert_eq!(
            requirement_lines("# header\n\nsix\nnumpy>=1 # pinned\n  clearml\n"),
            vec!["six", "numpy>=1", "clearml"]
        );
    }

    #[test]
    fn snapshot_reads_pip_as_string_or_list() {
        let t = json!({"id": "t1", "name": "n", "script": {"requirements": {"pip": ["six", "clearml"]}, "entry_point": "a.py"}});
        let s = snapshot_of(&t, Some("q"));
        assert_eq!(s.requirements.as_deref(), Some("six\nclearml"));
        assert_eq!(
            (
                s.task_id.as_str(),
                s.queue.as_deref(),
                s.entry_point.as_deref()
            ),
            ("t1", Some("q"), Some("a.py"))
        );
        let t = json!({"id": "t2", "script": {"requirements": {"pip": "six\n"}}});
        assert_eq!(snapshot_of(&t, None).requirements.as_deref(), Some("six\n"));
    }
}
