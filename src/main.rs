//! The `clearml-agent` command line: argument parsing and printing only.

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::time::{Duration, UNIX_EPOCH};

use clearml_agent::config::Config;
use clearml_agent::effects::simulated::{Script, SimulatedEffects, SimulatedStops};
use clearml_agent::fsm::{PullExt, TaskSnapshot};
use clearml_agent::host;
use clearml_agent::journal::{export, inspect, Journal, JournalConfig};
use clearml_agent::runner::{Driven, Runner, SystemClock};

#[derive(Parser)]
#[command(
    name = "clearml-agent",
    version,
    about = "ClearML Agent in Rust: pulls ClearML tasks from queues and runs them, journaling every step so a crashed or preempted agent resumes instead of losing the task"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Diagnostics at this level and above: error, warn, info, debug or trace.
    #[arg(
        long,
        global = true,
        default_value = "info",
        env = "CLEARML_AGENT_LOG_LEVEL"
    )]
    log_level: tracing::Level,
    /// Same as --log-level debug.
    #[arg(long, global = true)]
    debug: bool,
    /// Diagnostics as text lines, or as JSON objects for log collectors.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "text",
        env = "CLEARML_AGENT_LOG_FORMAT"
    )]
    log_format: LogFormat,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Every diagnostic goes through `tracing` to stderr (stdout stays for command output).
fn init_logging(cli: &Cli) {
    let level = if cli.debug {
        tracing::Level::DEBUG
    } else {
        cli.log_level
    };
    let builder = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_target(false);
    let _ = match cli.log_format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

#[derive(Subcommand)]
enum Command {
    /// Inspect, verify, export and compact the agent's run journal.
    Journal {
        #[command(subcommand)]
        command: JournalCommand,
    },
    /// Pull tasks from queues and run them (journaled: a restarted agent resumes its runs).
    Daemon(DaemonArgs),
    /// Run one task by id (no queue), through the same journaled pipeline.
    Execute(ExecuteArgs),
    /// Print the merged configuration (file, CLEARML_* variables, overrides) with secrets hidden.
    Config(ConfigArgs),
    /// The per-run supervisor (started by the agent itself).
    #[command(hide = true)]
    Supervise(SuperviseArgs),
    /// Run the embedded ClearML-compatible server (REST API and files server) on its own store.
    Server(ServerArgs),
    /// Write ~/clearml.conf: paste the web app's credentials, confirm hosts, verify, git and index settings.
    Init(clearml_agent::agent::init::InitArgs),
    /// List the workers registered at the server.
    List(clearml_agent::agent::list::ListArgs),
    /// Drive one run with simulated effects (for the crash harness and fixtures).
    #[command(hide = true, name = "simulate-run")]
    SimulateRun(SimulateArgs),
}

#[derive(Args, Clone)]
struct DaemonArgs {
    /// Queues to pull from, by name or id, in priority order (default: the server's default queue).
    #[arg(long, num_args = 1..)]
    queue: Vec<String>,
    /// Visit every queue once per cycle instead of always starting from the first.
    #[arg(long)]
    order_fairness: bool,
    /// Stay in the foreground (the default; accepted for compatibility).
    #[arg(long)]
    foreground: bool,
    /// Run in the background (new session; output to a log beside the pid file).
    #[arg(long, conflicts_with = "foreground")]
    detached: bool,
    /// Stop the running daemon (recorded in agent.pid_file): abort its tasks, reported stopped
    /// with "agent shutdown", then exit. With --drain: stop pulling and let running tasks finish.
    #[arg(long)]
    stop: bool,
    /// With --stop: wait for running tasks to finish instead of aborting them.
    #[arg(long, requires = "stop")]
    drain: bool,
    /// Create the queues that do not exist.
    #[arg(long)]
    create_queue: bool,
    /// Seconds between polls of empty queues [default: agent.polling_interval, 5].
    #[arg(long)]
    polling_interval: Option<f64>,
    /// Exit after this many tasks.
    #[arg(long, hide = true)]
    max_tasks: Option<usize>,
    /// The clearml.conf to read [default: $CLEARML_CONFIG_FILE, else ~/clearml.conf].
    #[arg(long)]
    config_file: Option<PathBuf>,
}

#[derive(Args, Clone)]
struct ExecuteArgs {
    /// The task to run.
    #[arg(long)]
    id: String,
    /// Run a clone of the task instead of the task itself.
    #[arg(long)]
    clone: bool,
    /// The clearml.conf to read [default: $CLEARML_CONFIG_FILE, else ~/clearml.conf].
    #[arg(long)]
    config_file: Option<PathBuf>,
}

#[derive(Args, Clone)]
struct ConfigArgs {
    /// The clearml.conf to read [default: $CLEARML_CONFIG_FILE, else ~/clearml.conf].
    #[arg(long)]
    config_file: Option<PathBuf>,
    /// Print JSON instead of dotted key = value lines.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Clone)]
struct SuperviseArgs {
    /// The run's directory (output.log, exit, pid files).
    #[arg(long)]
    run_dir: PathBuf,
    /// Most bytes of output that may wait unshipped in output.log; beyond it output is dropped
    /// and a marker line says how much.
    #[arg(long, default_value_t = u64::MAX)]
    max_unshipped: u64,
    /// The user command.
    #[arg(last = true, required = true)]
    argv: Vec<String>,
}

#[derive(Args, Clone)]
struct ServerArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// API port (0 picks a free one).
    #[arg(long, default_value_t = 8008)]
    port: u16,
    /// Files server port (0 picks a free one).
    #[arg(long, default_value_t = 8081)]
    files_port: u16,
    /// Where the server keeps its store, files and generated credentials.
    #[arg(long, env = "CLEARML_SERVER_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Largest accepted API request body, in MiB.
    #[arg(long, default_value_t = 16)]
    max_body_mb: usize,
    /// Log one line per API call (method, endpoint, status, duration) to stderr.
    #[arg(long)]
    access_log: bool,
    /// Print the start-up information as one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Clone)]
struct JournalOpts {
    /// The journal directory [default: config key agent.journal.dir, else ~/.clearml/agent-journal].
    #[arg(long, global = true, env = "CLEARML_AGENT_JOURNAL_DIR")]
    journal_dir: Option<PathBuf>,
    /// The clearml.conf to read [default: $CLEARML_CONFIG_FILE, else ~/clearml.conf].
    #[arg(long, global = true)]
    config_file: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Subcommand)]
enum JournalCommand {
    /// List every run (no argument) or show one run's timeline (by run id or task id).
    Inspect {
        /// A run id (`<task_id>.<attempt>`) or a task id (shows each of its runs).
        run_or_task: Option<String>,
        #[command(flatten)]
        opts: JournalOpts,
    },
    /// Check CRCs, sequence gaps and state digests by re-folding every record through the
    /// state machine. Exits 1 when a problem is found.
    Verify {
        /// Only this run (default: every run).
        run: Option<String>,
        #[command(flatten)]
        opts: JournalOpts,
    },
    /// Export one run as JSON (usable as a replay-test fixture). Secrets are masked.
    Export {
        run: String,
        /// Write to this file instead of standard output.
        #[arg(long, short)]
        output: Option<PathBuf>,
        #[command(flatten)]
        opts: JournalOpts,
    },
    /// Replace terminal runs older than the retention period with a snapshot record.
    Compact {
        /// Retention period, e.g. `7d`, `12h`, `0s`.
        #[arg(long, default_value = "7d", value_parser = humantime::parse_duration)]
        older_than: Duration,
        #[command(flatten)]
        opts: JournalOpts,
    },
}

#[derive(Args)]
struct SimulateArgs {
    /// Task id of a new run; without it, only resume the journal's unfinished runs.
    #[arg(long)]
    task_id: Option<String>,
    /// Where the simulated effects keep their log and markers.
    #[arg(long)]
    effects_dir: PathBuf,
    #[arg(long)]
    fail_at: Option<String>,
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    exit_code: i32,
    #[arg(long)]
    abort_before: Option<String>,
    #[arg(long)]
    requeue_before: Option<String>,
    #[arg(long, default_value_t = 0)]
    report_failures: u32,
    #[arg(long, default_value = "https://example.invalid/repo.git")]
    repository: String,
    /// Do not resume unfinished runs first.
    #[arg(long)]
    no_resume: bool,
    /// Disable the flush after each append (to measure its cost only).
    #[arg(long)]
    no_flush: bool,
    #[command(flatten)]
    opts: JournalOpts,
}

fn main() {
    let cli = Cli::parse();
    init_logging(&cli);
    let code = match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("clearml-agent: error: {e:#}");
            2
        }
    };
    std::process::exit(code);
}

fn run(cli: Cli) -> Result<i32> {
    match cli.command {
        Command::Journal { command } => journal_command(command),
        Command::SimulateRun(args) => simulate(args),
        Command::Server(args) => server(args),
        Command::Daemon(args) => {
            let (_, settings) = clearml_agent::agent::settings::load(args.config_file.as_deref())?;
            if args.stop {
                return clearml_agent::agent::daemon::stop_daemon(&settings, args.drain);
            }
            if args.detached {
                let argv: Vec<String> = std::env::args().skip(1).collect();
                return clearml_agent::agent::daemon::detach(&settings, &argv);
            }
            let opts = clearml_agent::agent::daemon::DaemonOptions {
                queues: args.queue,
                order_fairness: args.order_fairness,
                create_queue: args.create_queue,
                polling_interval_s: args.polling_interval,
                max_tasks: args.max_tasks,
            };
            clearml_agent::agent::daemon::daemon(settings, opts)
        }
        Command::Execute(args) => {
            let (_, settings) = clearml_agent::agent::settings::load(args.config_file.as_deref())?;
            clearml_agent::agent::daemon::execute(settings, &args.id, args.clone)
        }
        Command::Config(args) => print_config(args),
        Command::Init(args) => clearml_agent::agent::init::run(args),
        Command::List(args) => clearml_agent::agent::list::run(args),
        Command::Supervise(args) => Ok(clearml_agent::effects::supervisor::supervise(
            &args.run_dir,
            &args.argv,
            args.max_unshipped,
        )),
    }
}

fn print_config(args: ConfigArgs) -> Result<i32> {
    let (config, _settings) = clearml_agent::agent::settings::load(args.config_file.as_deref())?;
    let mut root = config.root.clone();
    clearml_agent::redact::redact_json(&mut root);
    if args.json {
        print_json(&root)?;
        return Ok(0);
    }
    fn walk(prefix: &str, v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(map) => {
                for (k, v) in map {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&key, v, out);
                }
            }
            other => out.push(format!("{prefix} = {other}")),
        }
    }
    let mut lines = vec![];
    walk("", &root, &mut lines);
    match &config.source {
        Some(p) => println!("# configuration file: {}", p.display()),
        None => println!("# no configuration file; environment only"),
    }
    for l in lines {
        println!("{l}");
    }
    Ok(0)
}

fn home() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn server(args: ServerArgs) -> Result<i32> {
    use clearml_agent::server::{client_exports, run, ServerOptions};
    let data_dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| home().join(".clearml").join("server"));
    let mut opts = ServerOptions::new(data_dir.clone());
    opts.host = args.host.clone();
    opts.port = args.port;
    opts.files_port = args.files_port;
    opts.max_body_bytes = args.max_body_mb.max(1) * 1024 * 1024;
    opts.access_log = args.access_log;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let json = args.json;
    let started = std::time::Instant::now();
    runtime.block_on(run(
        opts,
        |app, bound| {
            let env_file = data_dir.join("server.env");
            if json {
                let info = serde_json::json!({
                    "api": format!("http://{}", bound.api),
                    "files": format!("http://{}", bound.files),
                    "data_dir": data_dir,
                    "env_file": env_file,
                    "clearml_conf": data_dir.join("clearml.conf"),
                    "access_key": app.server.access_key,
                    "first_start": bound.first_start,
                    "startup_ms": started.elapsed().as_millis() as u64,
                });
                println!("{info}");
            } else {
                println!(
                    "clearml-agent server: API http://{} files http://{} data {} (ready in {} ms)",
                    bound.api,
                    bound.files,
                    data_dir.display(),
                    started.elapsed().as_millis()
                );
                if bound.first_start {
                    println!("New credentials were generated. Point the SDK and agents at this server:");
                } else {
                    println!("Point the SDK and agents at this server (`. {}` sets all of it):", env_file.display());
                }
                print!("{}", client_exports(app, bound, bound.first_start));
                println!("A clearml.conf with the same settings: {}", data_dir.join("clearml.conf").display());
            }
            use std::io::Write;
            let _ = std::io::stdout().flush();
        },
        shutdown_signal(),
    ))
    .with_context(|| format!("server with data dir {}", data_dir.display()))?;
    eprintln!("clearml-agent server: stopped, store flushed");
    Ok(0)
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler installs");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler installs");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

fn journal_dir(opts: &JournalOpts) -> Result<PathBuf> {
    if let Some(dir) = &opts.journal_dir {
        return Ok(dir.clone());
    }
    Ok(Config::load(opts.config_file.as_deref())?.journal_dir())
}

fn open_reader(opts: &JournalOpts) -> Result<Journal> {
    let dir = journal_dir(opts)?;
    if !dir.exists() {
        bail!("no journal at {} (pass --journal-dir)", dir.display());
    }
    let (journal, snapshot) = Journal::open_reader(&dir)?;
    if snapshot {
        tracing::info!(
            "{} is in use by a running agent; showing a point-in-time copy",
            dir.display()
        );
    }
    Ok(journal)
}

fn print_json(value: &impl serde::Serialize) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

fn fmt_time(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

fn fmt_age(ms: u64) -> String {
    let secs = host::now_ms().saturating_sub(ms) / 1000;
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{}s", s / 60, s % 60),
        s if s < 86400 => format!("{}h{}m", s / 3600, (s % 3600) / 60),
        s => format!("{}d{}h", s / 86400, (s % 86400) / 3600),
    }
}

/// Print rows as aligned columns.
fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let n = cells.len();
        let text: Vec<String> = cells
            .into_iter()
            .enumerate()
            .map(|(i, c)| {
                if i + 1 == n {
                    c
                } else {
                    format!("{c:<w$}", w = widths[i])
                }
            })
            .collect();
        println!("{}", text.join("  ").trim_end());
    };
    line(header.iter().map(|h| h.to_string()).collect());
    for row in rows {
        line(row.clone());
    }
}

fn journal_command(command: JournalCommand) -> Result<i32> {
    match command {
        JournalCommand::Inspect { run_or_task, opts } => {
            let journal = open_reader(&opts)?;
            match run_or_task {
                None => {
                    let runs = inspect::summaries(&journal)?;
                    if opts.json {
                        print_json(&runs)?;
                    } else if runs.is_empty() {
                        println!("no runs in {}", journal.dir().display());
                    } else {
                        let rows: Vec<Vec<String>> = runs
                            .iter()
                            .map(|r| {
                                vec![
                                    r.run_id.clone(),
                                    r.task_id.clone(),
                                    r.state.clone(),
                                    r.attempt.to_string(),
                                    r.resumes.to_string(),
                                    r.epoch.to_string(),
                                    fmt_age(r.created_ms),
                                    r.last_event.clone(),
                                ]
                            })
                            .collect();
                        print_table(
                            &[
                                "RUN",
                                "TASK",
                                "STATE",
                                "ATTEMPT",
                                "RESUMES",
                                "EPOCH",
                                "AGE",
                                "LAST EVENT",
                            ],
                            &rows,
                        );
                    }
                }
                Some(id) => {
                    let metas = journal.find_runs(&id)?;
                    if metas.is_empty() {
                        bail!(
                            "no run or task {id:?} in the journal at {}",
                            journal.dir().display()
                        );
                    }
                    let timelines = metas
                        .iter()
                        .map(|m| inspect::timeline(&journal, &m.run_id))
                        .collect::<Result<Vec<_>, _>>()?;
                    if opts.json {
                        print_json(&timelines)?;
                    } else {
                        for t in &timelines {
                            let s = &t.summary;
                            println!(
                                "run {}  task {}  attempt {}  state {}  records {}  resumes {}  log shipped {} bytes",
                                s.run_id, s.task_id, s.attempt, s.state, s.records, s.resumes,
                                t.progress.log_offset_shipped
                            );
                            if let Some(outcome) = &s.outcome {
                                println!("outcome: {outcome}");
                            }
                            let rows: Vec<Vec<String>> = t
                                .entries
                                .iter()
                                .map(|e| {
                                    vec![
                                        e.seq.to_string(),
                                        fmt_time(e.at_ms),
                                        e.event.clone(),
                                        e.effect_key.clone().unwrap_or_else(|| "-".into()),
                                        e.duration_ms.map_or("-".into(), |d| format!("{d}ms")),
                                        e.detail.clone(),
                                    ]
                                })
                                .collect();
                            print_table(
                                &["SEQ", "TIME", "EVENT", "EFFECT KEY", "DURATION", "DETAIL"],
                                &rows,
                            );
                            println!();
                        }
                    }
                }
            }
            Ok(0)
        }
        JournalCommand::Verify { run, opts } => {
            let journal = open_reader(&opts)?;
            let runs: Vec<String> = match run {
                Some(r) => {
                    if journal.run_meta(&r)?.is_none() {
                        bail!(
                            "run {r:?}: no such run in the journal at {}",
                            journal.dir().display()
                        );
                    }
                    vec![r]
                }
                None => journal.runs()?.into_iter().map(|m| m.run_id).collect(),
            };
            let reports = runs
                .iter()
                .map(|r| journal.verify_run(r))
                .collect::<Result<Vec<_>, _>>()?;
            let side = journal.verify_side()?;
            let bad = reports.iter().filter(|r| !r.ok()).count();
            if opts.json {
                print_json(
                    &serde_json::json!({ "ok": bad == 0 && side.is_empty(), "runs": reports, "side": side }),
                )?;
            } else {
                for p in &side {
                    println!("journal entry {}/{}: {}", p.tree, p.key, p.detail);
                }
                for r in &reports {
                    if r.ok() {
                        println!(
                            "run {} ok: {} records, state {}, digest {}",
                            r.run, r.records, r.state, r.digest
                        );
                    }
                    for p in &r.problems {
                        println!("run {} {p}", r.run);
                    }
                }
                println!(
                    "{} run(s) checked, {bad} with problems; {} corrupt journal entr{}",
                    reports.len(),
                    side.len(),
                    if side.len() == 1 { "y" } else { "ies" }
                );
            }
            Ok(if bad == 0 && side.is_empty() { 0 } else { 1 })
        }
        JournalCommand::Export { run, output, opts } => {
            let journal = open_reader(&opts)?;
            let exported = export::export_run(&journal, &run)?;
            let text = serde_json::to_string_pretty(&exported)?;
            match output {
                Some(path) => std::fs::write(&path, text + "\n")
                    .with_context(|| format!("writing export to {}", path.display()))?,
                None => println!("{text}"),
            }
            Ok(0)
        }
        JournalCommand::Compact { older_than, opts } => {
            let dir = journal_dir(&opts)?;
            // A maintenance epoch, stopped cleanly: the next agent's restart reason looks past it.
            let who = clearml_agent::journal::EpochInfo {
                role: clearml_agent::journal::MAINTENANCE.into(),
                ..clearml_agent::journal::EpochInfo::this_process()
            };
            let journal = Journal::open_writer(&dir, who, JournalConfig::default())?;
            let compacted = journal.compact(host::now_ms(), older_than.as_millis() as u64)?;
            journal.record_shutdown("journal compact")?;
            if opts.json {
                print_json(&serde_json::json!({ "compacted": compacted }))?;
            } else {
                println!("compacted {} run(s)", compacted.len());
                for r in compacted {
                    println!("  {r}");
                }
            }
            Ok(0)
        }
    }
}

fn simulate(args: SimulateArgs) -> Result<i32> {
    let dir = journal_dir(&args.opts)?;
    let config = JournalConfig {
        flush_every_append: !args.no_flush,
        ..JournalConfig::default()
    };
    let journal = Journal::open_writer(
        &dir,
        clearml_agent::journal::EpochInfo::this_process(),
        config,
    )?;
    let script = Script {
        fail_at: args.fail_at,
        exit_code: args.exit_code,
        abort_before: args.abort_before,
        requeue_before: args.requeue_before,
        report_failures: args.report_failures,
    };
    let stops = std::sync::Arc::new(SimulatedStops::new(script.clone()));
    let effects = SimulatedEffects::new(&args.effects_dir, script)
        .with_context(|| format!("effects dir {}", args.effects_dir.display()))?;
    let mut runner = Runner::new(journal, effects, SystemClock).with_stops(stops);
    let mut results = vec![];
    let mut refused = 0;
    let resumed = if args.no_resume {
        vec![]
    } else {
        {
            let reason = runner.journal().restart_reason()?;
            runner.resume_all(&reason)?
        }
    };
    for (run, result) in resumed {
        match result {
            Ok(driven) => results.push((run, driven)),
            // One bad run must not stop the others.
            Err(e) => {
                refused += 1;
                tracing::error!("{e}");
            }
        }
    }
    if let Some(task_id) = args.task_id {
        let snapshot = TaskSnapshot {
            name: format!("simulated {task_id}"),
            task_id,
            repository: Some(args.repository),
            entry_point: Some("train.py".into()),
            requirements: Some("six\n".into()),
            ..TaskSnapshot::default()
        };
        let run = runner.start(snapshot, PullExt::default())?;
        let driven = runner.drive(&run)?;
        results.push((run, driven));
    }
    // Deferred runs (a report that keeps failing) are retried here until they finish.
    for (run, driven) in results.iter_mut() {
        while matches!(driven, Driven::Deferred { .. }) {
            *driven = runner.drive(run)?;
        }
    }
    let summary: Vec<_> = results
        .iter()
        .map(|(run, d)| serde_json::json!({"run": run, "state": d.state().status_label(), "digest": d.state().digest()}))
        .collect();
    if args.opts.json {
        print_json(&summary)?;
    } else {
        for (run, d) in &results {
            println!("run {run}: {}", d.state().status_label());
        }
    }
    Ok(if refused == 0 { 0 } else { 3 })
}
