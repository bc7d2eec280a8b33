//! The per-run supervisor: the user process must outlive a crashed agent (DESIGN.md). The agent
//! starts `clearml-agent supervise --run-dir D -- ARGV...` in a new session (so it leads its own
//! process group and no terminal or agent death signals it); the supervisor starts the user
//! process in that group with stdout and stderr appended to `D/output.log`, records both pids, waits,
//! and writes the exit status to `D/exit` (atomically) before it exits itself. The agent only reads
//! files: it can die, restart, and re-attach by pid plus process start time.
//!
//! Files in the run directory: `supervisor.pid` (pid and start time), `child.pid`, `output.log`,
//! `exit` (the exit code; a signal N is written as `-N`, as Python's `Popen.returncode` does).

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error("run dir {dir}: {source}")]
    Io { dir: String, source: std::io::Error },
    #[error("starting the supervisor for {argv0} in {dir}: {source}")]
    Spawn {
        argv0: String,
        dir: String,
        source: std::io::Error,
    },
    #[error("the supervisor in {dir} did not record the user process: {why}")]
    NoChild { dir: String, why: String },
}

pub const OUTPUT: &str = "output.log";
const EXIT: &str = "exit";
const SUPERVISOR_PID: &str = "supervisor.pid";
const CHILD_PID: &str = "child.pid";

/// What identifies a started supervisor across agent restarts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launched {
    pub pid: u32,
    pub start_time: u64,
}

/// A process's start time in clock ticks since boot (`/proc/PID/stat` field 22): a pid plus this
/// names one process even after pid reuse.
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses; fields resume after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Whether `pid` is still the process that was started at `start_time` (and not a zombie).
pub fn is_alive(pid: u32, start: u64) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let Some(close) = stat.rfind(')') else {
        return false;
    };
    let state = stat[close + 2..].chars().next().unwrap_or('X');
    state != 'Z' && state != 'X' && start_time(pid) == Some(start)
}

fn io(dir: &Path) -> impl FnOnce(std::io::Error) -> SupervisorError + '_ {
    move |source| SupervisorError::Io {
        dir: dir.display().to_string(),
        source,
    }
}

fn write_atomic(dir: &Path, name: &str, text: &str) -> Result<(), SupervisorError> {
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut f = std::fs::File::create(&tmp).map_err(io(dir))?;
    f.write_all(text.as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(io(dir))?;
    std::fs::rename(&tmp, dir.join(name)).map_err(io(dir))
}

/// Starts the supervisor for `argv` (run in `cwd` with `env` added) and waits until it has
/// started the user process.
pub fn launch(
    agent_exe: &Path,
    run_dir: &Path,
    argv: &[String],
    cwd: &Path,
    env: &[(String, String)],
) -> Result<Launched, SupervisorError> {
    std::fs::create_dir_all(run_dir).map_err(io(run_dir))?;
    let mut cmd = Command::new(agent_exe);
    cmd.arg("supervise")
        .arg("--run-dir")
        .arg(run_dir)
        .arg("--")
        .args(argv);
    cmd.current_dir(cwd)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: setsid is async-signal-safe; it makes the supervisor a session and group leader.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(|source| SupervisorError::Spawn {
        argv0: argv.first().cloned().unwrap_or_default(),
        dir: run_dir.display().to_string(),
        source,
    })?;
    let pid = child.id();
    // The supervisor is detached on purpose: reap it from a thread so it never lingers as a zombie
    // while this agent lives (after an agent restart, init reaps it).
    std::thread::spawn(move || {
        let mut child = child;
        let _ = child.wait();
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if run_dir.join(CHILD_PID).exists() || run_dir.join(EXIT).exists() {
            break;
        }
        if Instant::now() > deadline {
            return Err(SupervisorError::NoChild {
                dir: run_dir.display().to_string(),
                why: "timed out after 30 s".into(),
            });
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let start = start_time(pid).unwrap_or(0);
    Ok(Launched {
        pid,
        start_time: start,
    })
}

/// The recorded supervisor of a run dir, if any.
pub fn recorded(run_dir: &Path) -> Option<Launched> {
    let text = std::fs::read_to_string(run_dir.join(SUPERVISOR_PID)).ok()?;
    let mut it = text.split_whitespace();
    Some(Launched {
        pid: it.next()?.parse().ok()?,
        start_time: it.next()?.parse().ok()?,
    })
}

/// The user process's pid, as recorded by the supervisor.
pub fn child_pid(run_dir: &Path) -> Option<u32> {
    std::fs::read_to_string(run_dir.join(CHILD_PID))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The exit status, once the supervisor has recorded it.
pub fn exit_code(run_dir: &Path) -> Option<i32> {
    std::fs::read_to_string(run_dir.join(EXIT))
        .ok()?
        .trim()
        .parse()
        .ok()
}

pub fn output_path(run_dir: &Path) -> PathBuf {
    run_dir.join(OUTPUT)
}

/// Signals the whole process group (the supervisor leads it; the user process and its children
/// are in it). Returns false when the group is gone.
pub fn signal_group(launched: &Launched, signal: i32) -> bool {
    if !is_alive(launched.pid, launched.start_time) {
        return false;
    }
    // SAFETY: plain kill(2) on a process group we created.
    unsafe { libc::killpg(launched.pid as i32, signal) == 0 }
}

/// SIGTERM to the group, up to `grace` for it to go, then SIGKILL. Returns once the supervisor
/// has written the exit status (or is gone).
pub fn terminate(run_dir: &Path, launched: &Launched, grace: Duration) {
    signal_group(launched, libc::SIGTERM);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if exit_code(run_dir).is_some() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if let Some(child) = child_pid(run_dir) {
        // The user process may have left the group; kill it by pid too.
        unsafe { libc::kill(child as i32, libc::SIGKILL) };
    }
    signal_group(launched, libc::SIGKILL);
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline
        && exit_code(run_dir).is_none()
        && is_alive(launched.pid, launched.start_time)
    {
        std::thread::sleep(Duration::from_millis(20));
    }
}

extern "C" fn ignore_signal(_: libc::c_int) {}

/// The `supervise` subcommand's body: runs in the new session started by [`launch`].
pub fn supervise(run_dir: &Path, argv: &[String]) -> i32 {
    let record = |name: &str, text: String| {
        if let Err(e) = write_atomic(run_dir, name, &text) {
            eprintln!("clearml-agent supervise: {e}");
        }
    };
    let me = std::process::id();
    record(
        SUPERVISOR_PID,
        format!("{me} {}", start_time(me).unwrap_or(0)),
    );
    // Stay alive through the group SIGTERM long enough to record the exit status. A handler (not
    // SIG_IGN) is used because handlers reset to default in the exec'd user process.
    unsafe {
        libc::signal(
            libc::SIGTERM,
            ignore_signal as *const () as libc::sighandler_t,
        );
        libc::signal(
            libc::SIGINT,
            ignore_signal as *const () as libc::sighandler_t,
        );
        libc::signal(
            libc::SIGHUP,
            ignore_signal as *const () as libc::sighandler_t,
        );
    }
    let output = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(run_dir.join(OUTPUT));
    let code = match (argv.split_first(), output) {
        (None, _) => {
            record(EXIT, "127".into());
            return 127;
        }
        (_, Err(e)) => {
            eprintln!(
                "clearml-agent supervise: {}: {e}",
                run_dir.join(OUTPUT).display()
            );
            record(EXIT, "127".into());
            return 127;
        }
        (Some((program, args)), Ok(out)) => {
            let err = out.try_clone();
            let mut cmd = Command::new(program);
            cmd.args(args).stdin(Stdio::null()).stdout(out);
            if let Ok(err) = err {
                cmd.stderr(err);
            }
            match cmd.spawn() {
                Ok(mut child) => {
                    record(CHILD_PID, child.id().to_string());
                    match child.wait() {
                        Ok(status) => {
                            use std::os::unix::process::ExitStatusExt;
                            status
                                .code()
                                .unwrap_or_else(|| -status.signal().unwrap_or(9))
                        }
                        Err(_) => -9,
                    }
                }
                Err(e) => {
                    // The reason goes where the user will look: the task's output.
                    if let Ok(mut out) = std::fs::OpenOptions::new()
                        .append(true)
                        .open(run_dir.join(OUTPUT))
                    {
                        let _ = writeln!(out, "clearml-agent: cannot start {program}: {e}");
                    }
                    127
                }
            }
        }
    };
    record(EXIT, code.to_string());
    code
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_identifies_this_process() {
        let me = std::process::id();
        let t = start_time(me).expect("own stat is readable");
        assert!(is_alive(me, t));
        assert!(
            !is_alive(me, t + 1),
            "a different start time is a different process"
        );
        assert!(!is_alive(u32::MAX - 1, t));
    }
}
