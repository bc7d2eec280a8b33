//! `clearml-agent daemon` and `clearml-agent execute`: the queue loop, worker registration and
//! status reports, and one journaled run per pulled task (see ARCHITECTURE.md for the flow).
//!
//! A task is only peeked at before its run is journaled: the run's first effect (the claim)
//! takes it out of its queue, so no crash leaves a task out of its queue that no journal knows.
//! Stops arrive through [`Controls`] (signals, `--stop`, preemption), are journaled by the
//! runner, and a shutdown comes back from the runner as [`Driven::Detached`], acted on here.

use super::controls::Controls;
use super::pull::snapshot_of;
use super::settings::AgentSettings;
use super::stats::Samples;
use crate::api::{ApiClient, ApiError, ApiSettings};
use crate::effects::real::RealEffects;
use crate::effects::task::{CurrentTask, World};
use crate::fsm::{Origin, RunState};
use crate::journal::{Journal, JournalConfig, JournalError};
use crate::runner::{Driven, Runner, RunnerError, SystemClock};
use serde_json::json;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Default)]
pub struct DaemonOptions {
    pub queues: Vec<String>,
    pub order_fairness: bool,
    pub create_queue: bool,
    pub polling_interval_s: Option<f64>,
    /// Stop after this many tasks (tests and benchmarks); `None` runs until signalled.
    pub max_tasks: Option<usize>,
}

fn api_settings(settings: &AgentSettings, worker_id: &str) -> anyhow::Result<ApiSettings> {
    Ok(ApiSettings {
        api_host: settings.api_server.clone(),
        access_key: settings.access_key.clone(),
        secret_key: settings.secret_key.clone(),
        token: settings.auth_token.clone(),
        worker_id: Some(worker_id.to_string()),
        method: settings.http_method.parse()?,
        ..ApiSettings::default()
    })
}

/// Waits until the server answers at all: a server that accepts connections but never answers
/// is reported within `agent.startup_probe_timeout_sec`, then retried with a progress line each
/// time (at most `attempts` times; `None` for ever).
fn wait_for_server(
    settings: &AgentSettings,
    api: &ApiSettings,
    attempts: Option<u32>,
) -> anyhow::Result<()> {
    let probe = ApiClient::new(ApiSettings {
        timeout: Duration::from_secs_f64(settings.startup_probe_timeout_s),
        max_attempts: 1,
        ..api.clone()
    })?;
    let started = Instant::now();
    for attempt in 1u32.. {
        match probe.call("debug.ping", &json!({})) {
            Ok(_) | Err(ApiError::Auth { .. }) => return Ok(()),
            Err(e @ ApiError::Server { code, .. }) if code < 500 => {
                tracing::debug!("debug.ping: {e}");
                return Ok(());
            }
            Err(e) if attempts.is_some_and(|n| attempt >= n) => return Err(e.into()),
            Err(e) => {
                let pause = Duration::from_secs(1u64 << attempt.min(5));
                tracing::warn!(
                    "the ClearML server at {} has not answered yet (attempt {attempt}, {:.0} s so far): {e}; retrying in {} s",
                    settings.api_server,
                    started.elapsed().as_secs_f64(),
                    pause.as_secs()
                );
                std::thread::sleep(pause);
            }
        }
    }
    unreachable!("the loop returns")
}

/// The API client for these settings, logged in.
pub fn connect(
    settings: &AgentSettings,
    worker_id: &str,
    attempts: Option<u32>,
) -> anyhow::Result<Arc<ApiClient>> {
    let api = api_settings(settings, worker_id)?;
    wait_for_server(settings, &api, attempts)?;
    let client = ApiClient::new(api)?;
    retry_transient("logging in", attempts, api_transient, || client.login())?;
    Ok(Arc::new(client))
}

fn api_transient(e: &ApiError) -> bool {
    crate::effects::task::api_failure(e.clone()).retryable
}

/// Start-up calls: a server that is down or answers 5xx is waited for (with a progress line
/// each time); any other error is returned.
fn retry_transient<T, E: std::fmt::Display>(
    what: &str,
    attempts: Option<u32>,
    transient: impl Fn(&E) -> bool,
    mut f: impl FnMut() -> Result<T, E>,
) -> Result<T, E> {
    for attempt in 1u32.. {
        match f() {
            Err(e) if transient(&e) && attempts.is_none_or(|n| attempt < n) => {
                let pause = Duration::from_secs(1u64 << attempt.min(5));
                tracing::warn!("{what}: {e}; retrying in {} s", pause.as_secs());
                std::thread::sleep(pause);
            }
            other => return other,
        }
    }
    unreachable!("the loop returns")
}

/// Queue names (or ids) to ids, as the Python agent resolves them.
fn resolve_queues(
    api: &ApiClient,
    names: &[String],
    create: bool,
) -> anyhow::Result<Vec<(String, String)>> {
    if names.is_empty() {
        let d = api.call("queues.get_default", &json!({}))?;
        return Ok(vec![(
            d["id"].as_str().unwrap_or("").to_string(),
            d["name"].as_str().unwrap_or("").to_string(),
        )]);
    }
    let mut out = Vec::new();
    for name in names {
        let found = api.call(
            "v2.5/queues.get_all",
            &json!({"name": format!("^{}$", regex_escape(name)), "only_fields": ["name", "id"]}),
        )?;
        let exact = found["queues"]
            .as_array()
            .and_then(|qs| qs.iter().find(|q| q["name"] == name.as_str()).cloned());
        let id = match exact {
            Some(q) => q["id"].as_str().unwrap_or("").to_string(),
            None => match api.call("queues.get_by_id", &json!({"queue": name})) {
                Ok(d) => d["queue"]["id"].as_str().unwrap_or("").to_string(),
                Err(e) if e.is_code(400, 701) && create => api
                    .call("queues.create", &json!({"name": name}))?["id"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
                Err(e) if e.is_code(400, 701) => {
                    anyhow::bail!("queue {name:?} does not exist (use --create-queue to create it)")
                }
                Err(e) => return Err(e.into()),
            },
        };
        out.push((id, name.clone()));
    }
    Ok(out)
}

fn regex_escape(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_alphanumeric() || c == '_' {
                c.to_string()
            } else {
                format!("\\{c}")
            }
        })
        .collect()
}

/// Sends `workers.status_report` every interval from a thread, with the current task.
struct Reporter {
    current: CurrentTask,
}

impl Reporter {
    fn start(
        api: Arc<ApiClient>,
        worker: String,
        queues: Vec<String>,
        every: Duration,
    ) -> Reporter {
        let current: CurrentTask = Arc::new(Mutex::new(None));
        let shared = current.clone();
        std::thread::spawn(move || {
            let mut samples = Samples::default();
            samples.machine_stats();
            let mut next = Instant::now() + Duration::from_secs(3).min(every);
            loop {
                while Instant::now() < next {
                    std::thread::sleep(Duration::from_millis(200));
                }
                next = Instant::now() + every;
                let mut body = json!({"worker": worker, "timestamp": crate::host::now_ms() / 1000 * 1000, "queues": queues, "machine_stats": samples.machine_stats()});
                if let Some((task, queue)) =
                    shared.lock().unwrap_or_else(|e| e.into_inner()).clone()
                {
                    body["task"] = json!(task);
                    body["queue"] = json!(queue);
                }
                let _ = api.call("workers.status_report", &body);
            }
        });
        Reporter { current }
    }

    fn set(&self, task: Option<(String, String)>) {
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = task;
    }
}

/// This binary, to start again as a supervisor: `/proc/self/exe` names the running image even
/// after the file was replaced by an upgrade (then `current_exe` names a deleted path).
fn agent_exe() -> std::io::Result<std::path::PathBuf> {
    let proc_exe = std::path::PathBuf::from("/proc/self/exe");
    if proc_exe.exists() {
        return Ok(proc_exe);
    }
    std::env::current_exe()
}

fn open_runner(
    settings: &AgentSettings,
    api: Arc<ApiClient>,
    worker_id: &str,
    controls: Arc<Controls>,
    current_task: Option<CurrentTask>,
) -> anyhow::Result<Runner<RealEffects>> {
    let journal = Journal::open_writer(
        &settings.journal_dir,
        crate::journal::EpochInfo::this_process(),
        JournalConfig {
            flush_every_append: settings.journal_flush,
            ..JournalConfig::default()
        },
    )?;
    let world = World {
        settings: settings.clone(),
        api,
        worker_id: worker_id.to_string(),
        agent_exe: agent_exe()?,
        current_task,
    };
    Ok(Runner::new(journal, RealEffects::new(world), SystemClock)
        .with_stops(controls)
        .with_retry_base(Duration::from_secs_f64(settings.stage_retry_base_s)))
}

/// Watches for preemption notices on the cloud this machine is on (never elsewhere).
fn start_preemption_watcher(settings: &AgentSettings, controls: Arc<Controls>) {
    use super::preemption::{local_cloud, providers_to_watch, Provider};
    let configured = Provider::parse(&settings.preemption_provider).unwrap_or_default();
    let local = match settings.preemption_enabled {
        Some(false) => None,
        _ => local_cloud(&settings.preemption_dmi_dir),
    };
    let providers = providers_to_watch(settings.preemption_enabled, &configured, local);
    if providers.is_empty() {
        tracing::debug!("preemption watcher off (no cloud detected, or disabled)");
        return;
    }
    let base = settings.preemption_metadata_url.clone();
    tracing::info!("watching {base} for preemption notices ({providers:?})");
    super::preemption::start(
        base,
        providers,
        Duration::from_secs_f64(settings.preemption_poll_s),
        controls,
    );
}

/// How driving a run to its end came out.
enum Ended {
    Terminal(Box<RunState>),
    /// The agent is shutting down; the run stays for the next start.
    Detached(String),
}

/// Drives a run until it is terminal; a report or claim that keeps failing is retried with a
/// growing pause and a progress line each time.
fn drive_to_end(
    runner: &mut Runner<RealEffects>,
    controls: &Controls,
    run: &str,
    driven: Result<Driven, RunnerError>,
) -> Result<Ended, RunnerError> {
    let mut driven = driven?;
    let mut pause = Duration::from_secs(1);
    loop {
        match driven {
            Driven::Terminal(state) => return Ok(Ended::Terminal(Box::new(state))),
            Driven::Detached { reason, .. } => return Ok(Ended::Detached(reason)),
            Driven::Deferred { reason, .. } => {
                tracing::warn!("run {run}: {reason} (next try in {} s)", pause.as_secs());
                let until = Instant::now() + pause;
                while Instant::now() < until {
                    if controls.shutdown.load(Ordering::SeqCst) {
                        return Ok(Ended::Detached("SIGTERM or SIGINT".into()));
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                pause = (pause * 2).min(Duration::from_secs(30));
                driven = runner.drive(run)?;
            }
        }
    }
}

/// Journal errors after which no run can be trusted to be recorded: stop pulling.
fn journal_broken(e: &RunnerError) -> bool {
    matches!(
        e,
        RunnerError::Journal(
            JournalError::Storage { .. }
                | JournalError::Gone { .. }
                | JournalError::Fenced { .. }
                | JournalError::ReadOnly
        )
    )
}

/// `daemon --stop [--drain]`: signals the recorded daemon and waits for it to exit.
pub fn stop_daemon(settings: &AgentSettings, drain: bool) -> anyhow::Result<i32> {
    let path = &settings.pid_file;
    let pid: i32 = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("no running daemon recorded in {}: {e}", path.display()))?
        .trim()
        .parse()
        .map_err(|_| anyhow::anyhow!("pid file {} does not hold a pid", path.display()))?;
    let signal = if drain { libc::SIGUSR2 } else { libc::SIGUSR1 };
    if unsafe { libc::kill(pid, signal) } != 0 {
        let _ = std::fs::remove_file(path);
        anyhow::bail!(
            "daemon pid {pid} (from {}) is not running; removed the stale pid file",
            path.display()
        );
    }
    tracing::info!(
        "asked daemon {pid} to {}",
        if drain {
            "drain and exit"
        } else {
            "abort its tasks and exit"
        }
    );
    while unsafe { libc::kill(pid, 0) } == 0 {
        std::thread::sleep(Duration::from_millis(200));
    }
    tracing::info!("daemon {pid} exited");
    Ok(0)
}

/// `--detached`: starts this same daemon in the background (new session, output to a log file
/// beside the pid file) and returns once it is started.
pub fn detach(settings: &AgentSettings, args: &[String]) -> anyhow::Result<i32> {
    use std::os::unix::process::CommandExt;
    let log = settings.pid_file.with_extension("log");
    if let Some(dir) = log.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)?;
    let mut cmd = std::process::Command::new(std::env::current_exe()?);
    cmd.args(args.iter().filter(|a| *a != "--detached"))
        .stdin(std::process::Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out);
    // SAFETY: setsid is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    println!(
        "clearml-agent daemon running in the background: pid {}, log {}",
        child.id(),
        log.display()
    );
    Ok(0)
}

/// The agent stops on purpose, leaving `reason` for the next start's resume reason.
fn shut_down(runner: &Runner<RealEffects>, api: &ApiClient, worker: &str, reason: &str) {
    crate::failpoint::hit("on-detach");
    if let Err(e) = runner.journal().record_shutdown(reason) {
        tracing::error!("recording the shutdown in the journal: {e}");
    }
    let _ = api.call("workers.unregister", &json!({"worker": worker}));
}

pub fn daemon(settings: AgentSettings, opts: DaemonOptions) -> anyhow::Result<i32> {
    let controls = Controls::new(settings.requeue_on_preemption);
    controls.register_signals()?;
    let pid_path = settings.pid_file.clone();
    if let Some(dir) = pid_path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&pid_path, std::process::id().to_string())?;
    let worker = settings.worker_id(0);
    let api = connect(&settings, &worker, None)?;
    let queues = retry_transient(
        "resolving the queues",
        None,
        |e: &anyhow::Error| e.downcast_ref::<ApiError>().is_some_and(api_transient),
        || resolve_queues(&api, &opts.queues, opts.create_queue),
    )?;
    let ids: Vec<String> = queues.iter().map(|(id, _)| id.clone()).collect();
    retry_transient("registering the worker", None, api_transient, || {
        api.call(
            "workers.register",
            &json!({"worker": worker, "queues": ids}),
        )
    })?;
    let reporter = Reporter::start(
        api.clone(),
        worker.clone(),
        ids.clone(),
        Duration::from_secs_f64(settings.status_report_interval_s),
    );
    let mut runner = open_runner(
        &settings,
        api.clone(),
        &worker,
        controls.clone(),
        Some(reporter.current.clone()),
    )?;
    let finish = |runner: &Runner<RealEffects>, reason: &str, code: i32| {
        shut_down(runner, &api, &worker, reason);
        let _ = std::fs::remove_file(&pid_path);
        if code == 0 {
            tracing::info!("shutting down ({reason}); running tasks stay under their supervisors and are resumed on the next start");
        }
        Ok(code)
    };
    // Runs a previous life of this agent left unfinished come first.
    let reason = runner.journal().restart_reason()?;
    for (run, result) in runner.resume_all(&reason)? {
        let driven = match result {
            Err(e) if !journal_broken(&e) => {
                tracing::error!("run {run} could not be resumed: {e}");
                continue;
            }
            other => other,
        };
        match drive_to_end(&mut runner, &controls, &run, driven) {
            Ok(Ended::Terminal(state)) => {
                tracing::info!("resumed run {run}: {}", state.status_label())
            }
            Ok(Ended::Detached(why)) => return finish(&runner, &why, 0),
            Err(e) => {
                tracing::error!("run {run}: {e}");
                if journal_broken(&e) {
                    return finish(&runner, "journal error", 1);
                }
            }
        }
    }
    // Terminal runs past the retention period shrink to one record each.
    match runner.journal().compact(
        crate::host::now_ms(),
        settings.journal_retention.as_millis() as u64,
    ) {
        Ok(done) if !done.is_empty() => tracing::info!("compacted {} finished run(s)", done.len()),
        Ok(_) => {}
        Err(e) => tracing::warn!("compacting the journal: {e}"),
    }
    start_preemption_watcher(&settings, controls.clone());
    // Ready: the journal is open and the runs of an earlier life are done.
    tracing::info!(
        "worker {worker} listening to {} on {}",
        queues
            .iter()
            .map(|(_, n)| n.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        settings.api_server
    );
    let poll = Duration::from_secs_f64(
        opts.polling_interval_s
            .unwrap_or(settings.polling_interval_s),
    );
    let mut done = 0usize;
    while !controls.stopping() && opts.max_tasks.is_none_or(|m| done < m) {
        // A journal directory removed under the daemon would lose every later run.
        if let Err(e) = runner.journal().check_dir() {
            tracing::error!("{e}; no more tasks are pulled");
            let _ = api.call("workers.unregister", &json!({"worker": worker}));
            let _ = std::fs::remove_file(&pid_path);
            return Ok(1);
        }
        let mut pulled = false;
        for (qid, qname) in &queues {
            if controls.stopping() {
                break;
            }
            let next = match api.call("queues.peek_task", &json!({"queue": qid})) {
                Ok(d) => d,
                Err(e) => {
                    tracing::warn!("polling queue {qname}: {e}");
                    continue;
                }
            };
            let Some(task_id) = next["task"].as_str().map(str::to_string) else {
                continue;
            };
            let task = match api.call("v2.5/tasks.get_by_id", &json!({"task": task_id})) {
                Ok(d) => d["task"].clone(),
                Err(e) => {
                    tracing::warn!("reading task {task_id} from queue {qname}: {e}");
                    continue;
                }
            };
            pulled = true;
            // Journal first: the claim (out of the queue, tasks.started) is the run's first effect.
            let (snapshot, ext) = snapshot_of(&task, Some(qid), Origin::Queue);
            let driven = runner.start(snapshot, ext).map(|run| {
                crate::failpoint::hit("after-pulled");
                let driven = runner.drive(&run);
                (run, driven)
            });
            let ended = match driven {
                Ok((run, driven)) => drive_to_end(&mut runner, &controls, &run, driven),
                Err(e) => Err(e),
            };
            reporter.set(None);
            match ended {
                Ok(Ended::Terminal(state)) => {
                    tracing::info!("task {task_id}: {}", state.status_label());
                    if state.ext.claimed {
                        done += 1;
                    }
                }
                Ok(Ended::Detached(why)) => return finish(&runner, &why, 0),
                Err(e) => {
                    // Nothing is sent for the task: no journaled intent covers it.
                    tracing::error!("task {task_id}: {e}");
                    if journal_broken(&e) {
                        return finish(&runner, "journal error", 1);
                    }
                }
            }
            if !opts.order_fairness {
                break; // priority order: start again from the first queue
            }
        }
        if !pulled {
            let until = Instant::now() + poll;
            while Instant::now() < until && !controls.stopping() {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    finish(&runner, "daemon exited", 0)
}

/// `execute --id TASK [--clone]`: the same pipeline for one task, no queue. Exits with 0 when the
/// task completed, 1 otherwise.
pub fn execute(settings: AgentSettings, task: &str, clone: bool) -> anyhow::Result<i32> {
    let controls = Controls::new(settings.requeue_on_preemption);
    controls.register_signals()?;
    let worker = settings.worker_id(0);
    let api = connect(&settings, &worker, Some(5))?;
    let task_id = if clone {
        let id = api.call("tasks.clone", &json!({"task": task}))?["id"]
            .as_str()
            .unwrap_or("")
            .to_string();
        tracing::info!("cloned task {task} as {id}");
        id
    } else {
        task.to_string()
    };
    let doc = match api.call("v2.5/tasks.get_by_id", &json!({"task": task_id})) {
        Err(e) if e.is_code(400, 101) => anyhow::bail!(
            "Could not find task id={task_id} (for host {})",
            settings.api_server
        ),
        Err(e) => return Err(e.into()),
        Ok(d) => d["task"].clone(),
    };
    let mut runner = open_runner(&settings, api.clone(), &worker, controls.clone(), None)?;
    // A run of this task an earlier `execute` left unfinished is resumed, not started again.
    let unfinished = runner.journal().find_runs(&task_id)?.into_iter().find(|m| {
        runner
            .journal()
            .load_run(&m.run_id)
            .is_ok_and(|l| !l.state.is_terminal())
    });
    let (run, driven) = match unfinished {
        Some(meta) => {
            let reason = runner.journal().restart_reason()?;
            tracing::info!("resuming run {}", meta.run_id);
            let driven = runner.resume(&meta.run_id, &reason);
            (meta.run_id, driven)
        }
        None => {
            let (snapshot, ext) = snapshot_of(&doc, None, Origin::Execute);
            let run = runner.start(snapshot, ext)?;
            let driven = runner.drive(&run);
            (run, driven)
        }
    };
    let state = match drive_to_end(&mut runner, &controls, &run, driven)? {
        Ended::Terminal(state) => state,
        Ended::Detached(why) => {
            shut_down(&runner, &api, &worker, &why);
            tracing::warn!("task {task_id}: left to its supervisor ({why})");
            return Ok(1);
        }
    };
    let _ = runner.journal().record_shutdown("execute finished");
    tracing::info!("task {task_id}: {}", state.status_label());
    Ok(
        if matches!(state.outcome, Some(crate::fsm::Outcome::Completed)) {
            0
        } else {
            1
        },
    )
}
