//! `clearml-agent daemon` and `clearml-agent execute`: the queue loop, worker registration and
//! status reports, and one journaled run per pulled task (see ARCHITECTURE.md for the flow).

use super::effects::{snapshot_of, RealEffects, ABORT_ALL, DRAIN, SHUTDOWN};
use super::logship::agent_line;
use super::settings::AgentSettings;
use crate::api::{ApiClient, ApiSettings};
use crate::journal::{Journal, JournalConfig};
use crate::runner::{Driven, Runner, SystemClock};
use serde_json::{json, Value};
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

/// The API client for these settings, logged in.
pub fn connect(settings: &AgentSettings, worker_id: &str) -> anyhow::Result<Arc<ApiClient>> {
    let api = ApiSettings {
        api_host: settings.api_server.clone(),
        access_key: settings.access_key.clone(),
        secret_key: settings.secret_key.clone(),
        token: settings.auth_token.clone(),
        worker_id: Some(worker_id.to_string()),
        method: settings.http_method.parse()?,
        ..ApiSettings::default()
    };
    let client = ApiClient::new(api)?;
    client.login()?;
    Ok(Arc::new(client))
}

extern "C" fn on_signal(_: libc::c_int) {
    SHUTDOWN.store(true, Ordering::SeqCst);
}

extern "C" fn on_stop(_: libc::c_int) {
    ABORT_ALL.store(true, Ordering::SeqCst);
}

extern "C" fn on_drain(_: libc::c_int) {
    DRAIN.store(true, Ordering::SeqCst);
}

/// SIGTERM and SIGINT ask the daemon to stop pulling and exit, leaving running tasks to their
/// supervisors; SIGUSR1 (`--stop`) aborts them first; SIGUSR2 (`--stop --drain`) lets them finish.
pub fn install_signal_handlers() {
    unsafe {
        libc::signal(libc::SIGUSR1, on_stop as *const () as libc::sighandler_t);
        libc::signal(libc::SIGUSR2, on_drain as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
    }
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

/// Bytes received and sent on every non-loopback interface (`/proc/net/dev`).
fn net_bytes() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/net/dev").ok()?;
    let mut rx = 0;
    let mut tx = 0;
    for line in text.lines().skip(2) {
        let (name, rest) = line.split_once(':')?;
        if name.trim() == "lo" {
            continue;
        }
        let f: Vec<u64> = rest
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        rx += f.first().copied().unwrap_or(0);
        tx += f.get(8).copied().unwrap_or(0);
    }
    Some((rx, tx))
}

/// Previous samples, to turn counters into rates, and the GPU source.
struct Samples {
    cpu: Option<(u64, u64)>,
    net: Option<(u64, u64, Instant)>,
    gpus: Box<dyn super::gpu::GpuStats>,
}

impl Default for Samples {
    fn default() -> Self {
        Samples {
            cpu: None,
            net: None,
            gpus: super::gpu::detect(),
        }
    }
}

/// Machine stats for `workers.status_report` (CPU, memory, disk, network, and GPU fields when
/// NVML is present, in the units the Python agent reports).
fn machine_stats(prev: &mut Samples) -> Value {
    let mut stats = serde_json::Map::new();
    let gpu = prev.gpus.sample();
    super::gpu::add_to_stats(&mut stats, &gpu);
    if let Some((rx, tx)) = net_bytes() {
        if let Some((prx, ptx, at)) = prev.net {
            let dt = at.elapsed().as_secs_f64().max(0.001);
            let mb = |d: u64| ((d as f64 / 1_048_576.0 / dt) * 1000.0).round() / 1000.0;
            stats.insert("network_rx".into(), json!(mb(rx.saturating_sub(prx))));
            stats.insert("network_tx".into(), json!(mb(tx.saturating_sub(ptx))));
        }
        prev.net = Some((rx, tx, Instant::now()));
    }
    let prev_cpu = &mut prev.cpu;
    if let Ok(stat) = std::fs::read_to_string("/proc/stat") {
        let fields: Vec<u64> = stat
            .lines()
            .next()
            .unwrap_or("")
            .split_whitespace()
            .skip(1)
            .filter_map(|x| x.parse().ok())
            .collect();
        let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
        let total: u64 = fields.iter().sum();
        if let Some((pt, pi)) = *prev_cpu {
            let dt = total.saturating_sub(pt).max(1);
            let usage = 100.0 * (1.0 - idle.saturating_sub(pi) as f64 / dt as f64);
            stats.insert("cpu_usage".into(), json!([(usage * 100.0).round() / 100.0]));
        }
        *prev_cpu = Some((total, idle));
    }
    if let Ok(mem) = std::fs::read_to_string("/proc/meminfo") {
        let kb = |k: &str| {
            mem.lines()
                .find_map(|l| l.strip_prefix(k))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<f64>().ok())
        };
        if let (Some(total), Some(avail)) = (kb("MemTotal:"), kb("MemAvailable:")) {
            stats.insert("memory_free".into(), json!((avail / 1024.0).round()));
            stats.insert(
                "memory_used".into(),
                json!(((total - avail) / 1024.0).round()),
            );
        }
    }
    if let Some(home) = std::env::var_os("HOME") {
        let c = std::ffi::CString::new(home.to_string_lossy().as_bytes()).unwrap_or_default();
        let mut vfs: libc::statvfs = unsafe { std::mem::zeroed() };
        if unsafe { libc::statvfs(c.as_ptr(), &mut vfs) } == 0 && vfs.f_blocks > 0 {
            stats.insert(
                "disk_free_home".into(),
                json!((100.0 * vfs.f_bavail as f64 / vfs.f_blocks as f64).round()),
            );
        }
    }
    Value::Object(stats)
}

/// Sends `workers.status_report` every interval from a thread, with the current task.
struct Reporter {
    current: super::effects::CurrentTask,
}

impl Reporter {
    fn start(
        api: Arc<ApiClient>,
        worker: String,
        queues: Vec<String>,
        every: Duration,
    ) -> Reporter {
        let current: super::effects::CurrentTask = Arc::new(Mutex::new(None));
        let shared = current.clone();
        std::thread::spawn(move || {
            let mut prev = Samples::default();
            machine_stats(&mut prev);
            let mut next = Instant::now() + Duration::from_secs(3).min(every);
            loop {
                while Instant::now() < next {
                    std::thread::sleep(Duration::from_millis(200));
                }
                next = Instant::now() + every;
                let mut body = json!({"worker": worker, "timestamp": crate::host::now_ms() / 1000 * 1000, "queues": queues, "machine_stats": machine_stats(&mut prev)});
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

fn open_runner(
    settings: &AgentSettings,
    api: Arc<ApiClient>,
    worker_id: &str,
) -> anyhow::Result<Runner<RealEffects>> {
    let journal = Journal::open_writer(
        &settings.journal_dir,
        crate::host::this_agent(),
        JournalConfig {
            flush_every_append: settings.journal_flush,
            ..JournalConfig::default()
        },
    )?;
    let exe = std::env::current_exe()?;
    let mut effects = RealEffects::new(settings.clone(), api.clone(), worker_id.to_string(), exe);
    let (api2, worker, marks) = (api, worker_id.to_string(), journal.clone());
    effects.on_shutdown = Box::new(move |why| {
        // The user process stays under its supervisor; the next start re-attaches to it.
        if let Err(e) = marks.record_shutdown(why) {
            eprintln!("clearml-agent: recording the shutdown in the journal: {e}");
        }
        let _ = api2.call("workers.unregister", &json!({"worker": worker}));
        eprintln!("clearml-agent: shutting down; the running task stays under its supervisor and is resumed on the next start");
        std::process::exit(0);
    });
    Ok(Runner::new(journal, effects, SystemClock))
}

/// Watches for preemption notices where the metadata endpoint answers (or when forced on).
fn start_preemption_watcher(settings: &AgentSettings) {
    let providers =
        super::preemption::Provider::parse(&settings.preemption_provider).unwrap_or_default();
    let base = settings.preemption_metadata_url.clone();
    let on = match settings.preemption_enabled {
        Some(forced) => forced,
        None => super::preemption::endpoint_answers(&base),
    };
    if on {
        eprintln!("clearml-agent daemon: watching {base} for preemption notices");
        super::preemption::start(
            base,
            providers,
            Duration::from_secs_f64(settings.preemption_poll_s),
        );
    }
}

/// Drives a run until it is terminal; a report that keeps failing is retried with a pause.
fn drive_to_end(
    runner: &mut Runner<RealEffects>,
    run: &str,
) -> anyhow::Result<crate::fsm::RunState> {
    let mut driven = runner.drive(run)?;
    loop {
        match driven {
            Driven::Terminal(state) => return Ok(state),
            Driven::Deferred { reason, .. } => {
                eprintln!("clearml-agent: run {run}: {reason}");
                std::thread::sleep(Duration::from_secs(5));
                driven = runner.drive(run)?;
            }
        }
    }
}

/// Pulls one task's document and runs it through the journaled pipeline. `announce` runs once
/// the task is ours (journaled and marked started).
fn run_task(
    runner: &mut Runner<RealEffects>,
    api: &ApiClient,
    worker: &str,
    task_id: &str,
    queue: Option<&str>,
    announce: &mut dyn FnMut(),
) -> anyhow::Result<crate::fsm::RunState> {
    let task = api.call("v2.5/tasks.get_by_id", &json!({"task": task_id}))?["task"].clone();
    // Journal first: from here on a crash leaves a run to resume (the resume check re-claims a
    // task still marked queued), never a started task that no agent knows about.
    let run = runner.start(snapshot_of(&task, queue))?;
    if let Err(e) = api.call(
        "v2.5/tasks.started",
        &json!({"task": task_id, "force": true, "status_message": "pulled by agent"}),
    ) {
        eprintln!("clearml-agent: task {task_id} could not be started: {e}");
        runner.request_stop(
            &run,
            crate::fsm::StopRequest::Abort {
                by: format!("could not be started: {e}"),
            },
        )?;
        return drive_to_end(runner, &run);
    }
    announce();
    // Runtime bookkeeping the UI shows, as the Python agent writes it.
    let mut runtime = task["runtime"].as_object().cloned().unwrap_or_default();
    runtime.insert(
        "_exec_agent_hostname".into(),
        json!(crate::host::hostname()),
    );
    let _ = api.call(
        "tasks.edit",
        &json!({"task": task_id, "force": true, "runtime": runtime}),
    );
    let _ = agent_line(
        api,
        task_id,
        worker,
        "INFO",
        &format!("Running task '{task_id}' as run {run}\n"),
    );
    drive_to_end(runner, &run)
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
    eprintln!(
        "clearml-agent: asked daemon {pid} to {}",
        if drain {
            "drain and exit"
        } else {
            "abort its tasks and exit"
        }
    );
    while unsafe { libc::kill(pid, 0) } == 0 {
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!("clearml-agent: daemon {pid} exited");
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

pub fn daemon(settings: AgentSettings, opts: DaemonOptions) -> anyhow::Result<i32> {
    install_signal_handlers();
    let pid_path = settings.pid_file.clone();
    if let Some(dir) = pid_path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&pid_path, std::process::id().to_string())?;
    let worker = settings.worker_id(0);
    let api = connect(&settings, &worker)?;
    let queues = resolve_queues(&api, &opts.queues, opts.create_queue)?;
    let ids: Vec<String> = queues.iter().map(|(id, _)| id.clone()).collect();
    api.call(
        "workers.register",
        &json!({"worker": worker, "queues": ids}),
    )?;
    eprintln!(
        "clearml-agent daemon: worker {worker} listening to {} on {}",
        queues
            .iter()
            .map(|(_, n)| n.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        settings.api_server
    );
    let reporter = Reporter::start(
        api.clone(),
        worker.clone(),
        ids.clone(),
        Duration::from_secs_f64(settings.status_report_interval_s),
    );
    let mut runner = open_runner(&settings, api.clone(), &worker)?;
    // The status reports name the task whose process is being waited on, resumed runs included.
    runner.effects_mut().current_task = Some(reporter.current.clone());
    // Runs a previous life of this agent left unfinished come first.
    let reason = runner.journal().restart_reason()?;
    for (run, result) in runner.resume_all(&reason)? {
        match result {
            Ok(Driven::Terminal(state)) => {
                eprintln!("clearml-agent: resumed run {run}: {}", state.status_label())
            }
            Ok(Driven::Deferred { .. }) => {
                let state = drive_to_end(&mut runner, &run)?;
                eprintln!("clearml-agent: resumed run {run}: {}", state.status_label());
            }
            Err(e) => eprintln!("clearml-agent: run {run} could not be resumed: {e}"),
        }
    }
    start_preemption_watcher(&settings);
    let poll = Duration::from_secs_f64(
        opts.polling_interval_s
            .unwrap_or(settings.polling_interval_s),
    );
    let mut done = 0usize;
    let stopping = || {
        SHUTDOWN.load(Ordering::SeqCst)
            || ABORT_ALL.load(Ordering::SeqCst)
            || DRAIN.load(Ordering::SeqCst)
            || super::preemption::PREEMPTED.load(Ordering::SeqCst)
    };
    while !stopping() && opts.max_tasks.is_none_or(|m| done < m) {
        let mut pulled = false;
        for (qid, qname) in &queues {
            if stopping() {
                break;
            }
            let next = match api.call("v2.14/queues.get_next_task", &json!({"queue": qid})) {
                Ok(d) => d,
                Err(e) => {
                    eprintln!("clearml-agent: polling queue {qname}: {e}");
                    continue;
                }
            };
            let Some(task_id) = next["entry"]["task"].as_str().map(str::to_string) else {
                continue;
            };
            pulled = true;
            let mut announce = || {
                reporter.set(Some((task_id.clone(), qid.clone())));
                // Report at once (as upstream): the server needs `last_worker` to route a UI
                // abort to us ("stopping") instead of stopping the task itself.
                let _ = api.call(
                    "workers.status_report",
                    &json!({"worker": worker, "timestamp": crate::host::now_ms() / 1000 * 1000, "task": task_id, "queue": qid, "queues": ids}),
                );
                let _ = agent_line(
                    &api,
                    &task_id,
                    &worker,
                    "INFO",
                    &format!("task {task_id} pulled from {qid} by worker {worker}\n"),
                );
            };
            match run_task(
                &mut runner,
                &api,
                &worker,
                &task_id,
                Some(qid),
                &mut announce,
            ) {
                Ok(state) => eprintln!("clearml-agent: task {task_id}: {}", state.status_label()),
                Err(e) => {
                    eprintln!("clearml-agent: task {task_id}: {e:#}");
                    let _ = api.call("tasks.failed", &json!({"task": task_id, "force": true, "status_reason": format!("agent error: {e}"), "status_message": format!("Changed by clearml-agent {worker}")}));
                }
            }
            reporter.set(None);
            done += 1;
            if !opts.order_fairness {
                break; // priority order: start again from the first queue
            }
        }
        if !pulled {
            let until = Instant::now() + poll;
            while Instant::now() < until && !stopping() {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    let _ = runner.journal().record_shutdown("daemon exited");
    let _ = api.call(
        "workers.unregister",
        &json!({"worker": worker, "queues": ids}),
    );
    let _ = std::fs::remove_file(&pid_path);
    Ok(0)
}

/// `execute --id TASK [--clone]`: the same pipeline for one task, no queue. Exits with 0 when the
/// task completed, 1 otherwise.
pub fn execute(settings: AgentSettings, task: &str, clone: bool) -> anyhow::Result<i32> {
    install_signal_handlers();
    let worker = settings.worker_id(0);
    let api = connect(&settings, &worker)?;
    let task_id = if clone {
        let id = api.call("tasks.clone", &json!({"task": task}))?["id"]
            .as_str()
            .unwrap_or("")
            .to_string();
        eprintln!("clearml-agent execute: cloned task {task} as {id}");
        id
    } else {
        task.to_string()
    };
    match api.call("v2.5/tasks.get_by_id", &json!({"task": task_id})) {
        Err(e) if e.is_code(400, 101) => anyhow::bail!(
            "Could not find task id={task_id} (for host {})",
            settings.api_server
        ),
        Err(e) => return Err(e.into()),
        Ok(_) => {}
    }
    let _ = api.call(
        "tasks.dequeue",
        &json!({"task": task_id, "new_status": "in_progress"}),
    );
    api.call("v2.5/tasks.started", &json!({"task": task_id, "force": true, "status_reason": "worker started execution", "status_message": format!("Changed by clearml-agent {worker}")}))?;
    let mut runner = open_runner(&settings, api.clone(), &worker)?;
    // A run of this task an earlier `execute` left unfinished is resumed, not started again.
    let unfinished = runner.journal().find_runs(&task_id)?.into_iter().find(|m| {
        runner
            .journal()
            .load_run(&m.run_id)
            .is_ok_and(|l| !l.state.is_terminal())
    });
    let state = match unfinished {
        Some(meta) => {
            let reason = runner.journal().restart_reason()?;
            eprintln!("clearml-agent execute: resuming run {}", meta.run_id);
            runner.resume(&meta.run_id, &reason)?;
            drive_to_end(&mut runner, &meta.run_id)?
        }
        None => run_task(&mut runner, &api, &worker, &task_id, None, &mut || {})?,
    };
    let _ = runner.journal().record_shutdown("execute finished");
    eprintln!(
        "clearml-agent execute: task {task_id}: {}",
        state.status_label()
    );
    Ok(
        if matches!(state.outcome, Some(crate::fsm::Outcome::Completed)) {
            0
        } else {
            1
        },
    )
}
