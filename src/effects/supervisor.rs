//! The per-run supervisor: the user process must outlive a crashed agent (DESIGN.md). The agent
//! starts `clearml-agent supervise --run-dir D -- ARGV...` in a new session (so it leads its own
//! process group and no terminal or agent death signals it); the supervisor starts the user
//! process in that group with stdout and stderr on one pipe that it relays to `D/output.log`,
//! records both pids, waits, and writes the exit status to `D/exit` (atomically) before it exits
//! itself. The agent only reads files: it can die, restart, and re-attach by pid plus process
//! start time.
//!
//! The relay bounds what waits unshipped (the server may be unreachable for hours): the agent
//! writes the acknowledged offset to `D/shipped.offset`, and once more than `--max-unshipped`
//! bytes are past it, output is dropped until shipping catches up (to half the cap), then one
//! marker line says how many bytes were dropped.
//!
//! Files in the run directory: `supervisor.pid` (pid and start time), `child.pid`, `output.log`,
//! `shipped.offset`, `exit` (the exit code; a signal N is written as `-N`, as Python's
//! `Popen.returncode` does).

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
const SHIPPED: &str = "shipped.offset";
/// Held (flock) by the agent while it starts the supervisor and inherited by the supervisor:
/// a launch that cannot take it knows a supervisor of this run is starting or alive.
const LOCK: &str = "supervisor.lock";
/// How long output still held open by the user's own background children is relayed after the
/// user process exited.
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(2);

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

/// Tells the supervisor how much of `output.log` the server has acknowledged. A hint: not synced,
/// and a stale value only makes the cap bite early.
pub fn record_shipped(run_dir: &Path, offset: u64) {
    let tmp = run_dir.join(format!(".{SHIPPED}.tmp"));
    if std::fs::write(&tmp, offset.to_string()).is_ok() {
        let _ = std::fs::rename(&tmp, run_dir.join(SHIPPED));
    }
}

fn shipped(run_dir: &Path) -> u64 {
    std::fs::read_to_string(run_dir.join(SHIPPED))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// Starts the supervisor for `argv` (run in `cwd` with `env` added) and waits until it has
/// started the user process.
pub fn launch(
    agent_exe: &Path,
    run_dir: &Path,
    argv: &[String],
    cwd: &Path,
    env: &[(String, String)],
    max_unshipped: u64,
) -> Result<Launched, SupervisorError> {
    std::fs::create_dir_all(run_dir).map_err(io(run_dir))?;
    // Never two supervisors for one run: one that is starting or alive holds the lock, one that
    // started before (and may have died since) left its pid file.
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(run_dir.join(LOCK))
        .map_err(io(run_dir))?;
    use std::os::fd::AsRawFd;
    let fd = lock.as_raw_fd();
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return wait_recorded(run_dir);
    }
    if let Some(found) = recorded(run_dir) {
        return Ok(found);
    }
    let mut cmd = Command::new(agent_exe);
    // The program may be `/proc/self/exe`: `ps` shows the name instead.
    cmd.arg0("clearml-agent");
    cmd.arg("supervise")
        .arg("--run-dir")
        .arg(run_dir)
        .arg("--max-unshipped")
        .arg(max_unshipped.to_string())
        .arg("--")
        .args(argv);
    cmd.current_dir(cwd)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: setsid and fcntl are async-signal-safe; setsid makes the supervisor a session and
    // group leader, and clearing close-on-exec hands it the launch lock for its lifetime.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
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

/// A supervisor that holds the lock but has not recorded itself yet: wait for its record.
fn wait_recorded(run_dir: &Path) -> Result<Launched, SupervisorError> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(found) = recorded(run_dir) {
            return Ok(found);
        }
        if Instant::now() > deadline {
            return Err(SupervisorError::NoChild {
                dir: run_dir.display().to_string(),
                why: "another supervisor holds the run's lock but never recorded itself".into(),
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether the recorded supervisor `pid` (started at `start`) is alive, on this boot: a record
/// from before a reboot names a process that is gone, whatever runs under that pid now.
pub fn is_alive_here(run_dir: &Path, pid: u32, start: u64) -> bool {
    let text = std::fs::read_to_string(run_dir.join(SUPERVISOR_PID)).unwrap_or_default();
    let boot = text.split_whitespace().nth(2).unwrap_or("");
    let here = crate::host::boot_id();
    (boot.is_empty() || here.is_empty() || boot == here) && is_alive(pid, start)
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
    // The crash harness stops the agent here: inside the grace period of a stop.
    crate::failpoint::hit("in-grace");
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

fn append(out: &mut std::fs::File, bytes: &[u8], written: &mut u64, ends_line: &mut bool) {
    // A full disk or a removed file must not stop the relay: the user process would block.
    if !bytes.is_empty() && out.write_all(bytes).is_ok() {
        *written += bytes.len() as u64;
        *ends_line = bytes.ends_with(b"\n");
    }
}

/// The line that says how much output was dropped (on a line of its own).
fn append_marker(
    out: &mut std::fs::File,
    dropped: u64,
    cap: u64,
    written: &mut u64,
    ends_line: &mut bool,
) {
    let text = format!(
        "{}[clearml-agent: {dropped} bytes of output dropped here: more than {cap} bytes were waiting for the server]\n",
        if *ends_line { "" } else { "\n" }
    );
    append(out, text.as_bytes(), written, ends_line);
}

/// Copies the user process's output into `out` until the pipe closes, keeping at most `cap`
/// bytes past the shipped offset (see the module docs). Returns the bytes dropped.
pub fn relay(
    mut from: impl std::io::Read,
    out: &mut std::fs::File,
    run_dir: &Path,
    cap: u64,
) -> u64 {
    let mut written = out.metadata().map(|m| m.len()).unwrap_or(0);
    let mut acked = shipped(run_dir);
    let mut dropping = false;
    let mut dropped = 0u64;
    let mut dropped_ends_line = true;
    let mut total_dropped = 0u64;
    let mut ends_line = true;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        let mut chunk = &buf[..n];
        // While dropping, resume only at half the cap, so one slow server gives one marker.
        let limit = if dropping { cap / 2 } else { cap };
        let room = |acked: u64| limit.saturating_sub(written.saturating_sub(acked));
        // One small file read per pipe read while over: a fast writer's output coalesces in
        // the pipe meanwhile, so this stays cheap.
        if n as u64 > room(acked) {
            acked = shipped(run_dir);
        }
        let room = room(acked);
        if dropping {
            if n as u64 > room {
                dropped += n as u64;
                dropped_ends_line = chunk.ends_with(b"\n");
                continue;
            }
            // Resume at a line start: the rest of a line cut by the drop goes too.
            if !dropped_ends_line {
                let Some(i) = chunk.iter().position(|&b| b == b'\n') else {
                    dropped += n as u64;
                    continue;
                };
                dropped += i as u64 + 1;
                chunk = &chunk[i + 1..];
            }
            append_marker(out, dropped, cap, &mut written, &mut ends_line);
            total_dropped += dropped;
            (dropping, dropped) = (false, 0);
            append(out, chunk, &mut written, &mut ends_line);
            continue;
        }
        if n as u64 <= room {
            append(out, chunk, &mut written, &mut ends_line);
            continue;
        }
        // Over the cap: keep the whole lines that fit and drop from there on.
        let keep = chunk[..room as usize]
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1);
        append(out, &chunk[..keep], &mut written, &mut ends_line);
        dropping = true;
        dropped = (n - keep) as u64;
        dropped_ends_line = chunk.ends_with(b"\n");
    }
    if dropping {
        append_marker(out, dropped, cap, &mut written, &mut ends_line);
        total_dropped += dropped;
    }
    total_dropped
}

/// The `supervise` subcommand's body: runs in the new session started by [`launch`].
pub fn supervise(run_dir: &Path, argv: &[String], max_unshipped: u64) -> i32 {
    let record = |name: &str, text: String| {
        if let Err(e) = write_atomic(run_dir, name, &text) {
            tracing::error!("supervise: {e}");
        }
    };
    let me = std::process::id();
    // pid, start time and boot id: re-attach by the three (see `is_alive_here`).
    record(
        SUPERVISOR_PID,
        format!(
            "{me} {} {}",
            start_time(me).unwrap_or(0),
            crate::host::boot_id()
        ),
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
            tracing::error!("supervise: {}: {e}", run_dir.join(OUTPUT).display());
            record(EXIT, "127".into());
            return 127;
        }
        (Some((program, args)), Ok(mut out)) => {
            // One pipe for stdout and stderr keeps their lines in the order they were written.
            let (reader, writer) = match std::io::pipe() {
                Ok(p) => p,
                Err(e) => {
                    tracing::error!("supervise: output pipe: {e}");
                    record(EXIT, "127".into());
                    return 127;
                }
            };
            let mut cmd = Command::new(program);
            cmd.args(args).stdin(Stdio::null());
            match writer.try_clone() {
                Ok(err) => {
                    cmd.stdout(writer).stderr(err);
                }
                Err(_) => {
                    cmd.stdout(writer);
                }
            }
            let spawned = cmd.spawn();
            // Our copies of the write end must go, or the relay never sees the end of output.
            drop(cmd);
            let dir = run_dir.to_path_buf();
            let (done_tx, done_rx) = std::sync::mpsc::channel();
            let relay_out = out.try_clone();
            std::thread::spawn(move || {
                if let Ok(mut relay_out) = relay_out {
                    relay(reader, &mut relay_out, &dir, max_unshipped);
                }
                let _ = done_tx.send(());
            });
            let drained = || {
                let _ = done_rx.recv_timeout(DRAIN_AFTER_EXIT);
            };
            match spawned {
                Ok(mut child) => {
                    record(CHILD_PID, child.id().to_string());
                    let status = child.wait();
                    drained();
                    match status {
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
                    drained();
                    // The reason goes where the user will look: the task's output.
                    let _ = writeln!(out, "clearml-agent: cannot start {program}: {e}");
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

    /// Yields one line per read; after `ack_at` reads it acknowledges everything written so far.
    struct Lines {
        lines: Vec<String>,
        next: usize,
        ack_at: Option<usize>,
        dir: PathBuf,
    }

    impl std::io::Read for Lines {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if Some(self.next) == self.ack_at {
                let len = std::fs::metadata(self.dir.join(OUTPUT)).unwrap().len();
                record_shipped(&self.dir, len);
            }
            let Some(line) = self.lines.get(self.next) else {
                return Ok(0);
            };
            self.next += 1;
            buf[..line.len()].copy_from_slice(line.as_bytes());
            Ok(line.len())
        }
    }

    fn relay_lines(n: usize, cap: u64, ack_at: Option<usize>) -> (String, u64) {
        relay_chunks(n, None, cap, ack_at)
    }

    /// Relays `n` lines of 10 bytes, one per read or re-cut into reads of `cut` bytes.
    fn relay_chunks(
        n: usize,
        cut: Option<usize>,
        cap: u64,
        ack_at: Option<usize>,
    ) -> (String, u64) {
        let dir = std::env::temp_dir().join(format!(
            "clearml-relay-{}-{n}-{cut:?}-{cap}-{ack_at:?}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut out = std::fs::File::create(dir.join(OUTPUT)).unwrap();
        let mut lines: Vec<String> = (0..n).map(|i| format!("line {i:04}\n")).collect();
        if let Some(cut) = cut {
            let all = lines.concat();
            lines = all
                .as_bytes()
                .chunks(cut)
                .map(|c| String::from_utf8(c.to_vec()).unwrap())
                .collect();
        }
        let reader = Lines {
            lines,
            next: 0,
            ack_at,
            dir: dir.clone(),
        };
        let dropped = relay(reader, &mut out, &dir, cap);
        let text = std::fs::read_to_string(dir.join(OUTPUT)).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        (text, dropped)
    }

    #[test]
    fn relay_keeps_everything_under_the_cap() {
        let (text, dropped) = relay_lines(100, 10_000, None);
        assert_eq!(dropped, 0);
        assert_eq!(text.lines().count(), 100);
        assert!(text.ends_with("line 0099\n"));
    }

    #[test]
    fn relay_drops_past_the_cap_with_a_marker_and_resumes_when_shipped() {
        // Lines are 10 bytes; the cap holds 20 of them. Nothing is acknowledged until the
        // 60th read, so lines 20..60 are dropped and one marker says so.
        let (text, dropped) = relay_lines(200, 200, Some(60));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[..20],
            (0..20).map(|i| format!("line {i:04}")).collect::<Vec<_>>()
        );
        assert_eq!(
            lines[20],
            "[clearml-agent: 400 bytes of output dropped here: more than 200 bytes were waiting for the server]"
        );
        assert_eq!(lines[21], "line 0060");
        // Nothing is acknowledged again, so the cap bites once more, and the end of output
        // says how much went; the markers account for every dropped byte.
        assert!(lines.last().unwrap().contains("dropped here"), "{text}");
        let in_markers: u64 = lines
            .iter()
            .filter_map(|l| l.strip_prefix("[clearml-agent: "))
            .map(|l| l.split(' ').next().unwrap().parse::<u64>().unwrap())
            .sum();
        assert_eq!(in_markers, dropped);
        let kept = lines.iter().filter(|l| l.starts_with("line ")).count() as u64;
        assert_eq!(kept * 10 + dropped, 2000, "every byte is kept or counted");
    }

    #[test]
    fn relay_cuts_at_line_boundaries_whatever_the_reads() {
        // Reads of 77 bytes cut lines anywhere; kept output is whole lines and markers only.
        let (text, dropped) = relay_chunks(1000, Some(77), 500, Some(40));
        let mut kept = 0u64;
        let mut in_markers = 0u64;
        let mut last = None;
        for l in text.lines() {
            if let Some(m) = l.strip_prefix("[clearml-agent: ") {
                in_markers += m.split(' ').next().unwrap().parse::<u64>().unwrap();
                continue;
            }
            let i: u32 = l
                .strip_prefix("line ")
                .and_then(|x| x.parse().ok())
                .unwrap_or_else(|| panic!("a cut line {l:?} in {text}"));
            assert!(last < Some(i), "in order: {text}");
            last = Some(i);
            kept += 10;
        }
        assert!(dropped > 0 && in_markers == dropped, "{text}");
        assert_eq!(kept + dropped, 10_000, "every byte is kept or counted");
    }

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
