//! Our agent end to end: the embedded server, tasks created by the real Python SDK, git
//! repositories made by the test (served over file:// and over git:// by `git daemon` on
//! loopback), real venvs from PyPI, real child processes under the per-run supervisor.

mod common;

use common::agent::*;
use serde_json::{json, Value};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const DIFF_HELPER: &str = "diff --git a/src/helper.py b/src/helper.py\n--- a/src/helper.py\n+++ b/src/helper.py\n@@ -1 +1 @@\n-WORD = 'plain'\n+WORD = 'patched-by-diff'\n";

#[test]
fn daemon_runs_tasks_from_git_with_diffs_caches_failures_and_aborts() {
    let env = Env::new();
    let (repo, first, _second) = make_repo(&env.root);
    let served = GitDaemon::start(&env.root);
    let mut daemon = env.daemon("agent-a");
    let file_url = format!("file://{}", repo.display());
    let git_url = format!("git://127.0.0.1:{}/repo", served.1);

    // A task at the first commit, with an uncommitted diff and requirements ["six"], over git://.
    let id = env.make_task(json!({"project": "e2e", "name": "at commit with diff", "repo": git_url, "commit": first,
        "script": "src/train.py", "working_dir": "src", "packages": ["six"], "diff": DIFF_HELPER, "queue": "default"}));
    let t = env.wait_final(&id, &daemon);
    let console = env.console(&id);
    assert_eq!(
        t["status"],
        "completed",
        "{t}\n{console}\n{}",
        daemon.tail()
    );
    assert_eq!(t["status_reason"], "worker execution done");
    assert!(
        console.contains("version one patched-by-diff"),
        "the diff's effect shows: {console}"
    );
    // ... and the SDK reads the same console output back.
    let mut sdk = Command::new(venv().join("bin/python"));
    sdk.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/status.py"))
        .arg(&id)
        .arg("1000")
        .current_dir(&env.root);
    env.client_env(&mut sdk);
    let out = sdk.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let read: Value =
        serde_json::from_str(stdout.lines().rev().find(|l| l.starts_with('{')).unwrap()).unwrap();
    assert_eq!(read["status"], "completed");
    assert!(
        read["console"].as_array().unwrap().iter().any(|m| m
            .as_str()
            .is_some_and(|m| m.contains("version one patched-by-diff"))),
        "{read}"
    );
    let req = &t["script"]["requirements"];
    assert!(
        req["pip"].as_array().is_some_and(|l| l
            .iter()
            .any(|p| p.as_str().is_some_and(|p| p.starts_with("six==")))),
        "{req}"
    );
    assert!(
        req["org_pip"].as_str().is_some_and(|o| o.contains("six")),
        "{req}"
    );

    // The same requirements again (over file:// this time): the venv cache is hit.
    let id = env.make_task(
        json!({"project": "e2e", "name": "cached env", "repo": file_url, "branch": "main",
        "script": "src/train.py", "working_dir": "src", "packages": ["six"], "queue": "default"}),
    );
    let t = env.wait_final(&id, &daemon);
    let console = env.console(&id);
    assert_eq!(t["status"], "completed", "{console}");
    assert!(console.contains("Using cached environment"), "{console}");
    assert!(
        console.contains("version two plain"),
        "branch main = the second commit: {console}"
    );
    assert_eq!(
        t["script"]["version_num"].as_str().map(|v| v.len()),
        Some(40),
        "the resolved commit is written back"
    );

    // Exit code 3.
    let id = env.make_task(json!({"project": "e2e", "name": "exits 3", "repo": file_url, "script": "fail.py", "packages": ["six"], "queue": "default"}));
    let t = env.wait_final(&id, &daemon);
    assert_eq!(
        (t["status"].as_str(), t["status_reason"].as_str()),
        (Some("failed"), Some("worker execution exit code 3")),
        "{}",
        env.console(&id)
    );

    // Abort from the SDK side (tasks.stop): the process group is killed, the task ends stopped.
    let pid_file = env.root.join("sleeper.pid");
    let id = env.make_task(json!({"project": "e2e", "name": "sleeper", "repo": file_url, "script": "sleeper.py", "packages": ["six"], "queue": "default"}));
    let deadline = Instant::now() + Duration::from_secs(300);
    while !(pid_file.exists() && env.console(&id).contains("tick 3")) {
        assert!(
            Instant::now() < deadline,
            "sleeper never started: {}",
            daemon.tail()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let pid = read_pid(&pid_file);
    env.server
        .call(
            "tasks.stop",
            json!({"task": id, "status_reason": "abort request"}),
        )
        .ok();
    let t = env.wait_final(&id, &daemon);
    assert_eq!(
        (t["status"].as_str(), t["status_reason"].as_str()),
        (Some("stopped"), Some("task was stopped by tasks.stop"))
    );
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists()
            || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .unwrap_or_default()
                .contains(") Z"),
        "the user process is gone"
    );

    // Bad inputs fail with a reason naming the problem, and the daemon goes on.
    let bad: Vec<(Value, &str)> = vec![
        (
            json!({"name": "bad url", "repo": format!("file://{}/nope", env.root.display()), "script": "x.py"}),
            "nope",
        ),
        (
            json!({"name": "bad commit", "repo": file_url, "commit": "deadbeefdeadbeefdeadbeefdeadbeefdeadbeef", "script": "fail.py"}),
            "deadbeef",
        ),
        (
            json!({"name": "bad diff", "repo": file_url, "script": "fail.py", "diff": "diff --git a/fail.py b/fail.py\n--- a/fail.py\n+++ b/fail.py\n@@ -1 +1 @@\n-this line is not there\n+x\n"}),
            "fail.py",
        ),
        (
            json!({"name": "no entry point", "repo": file_url, "script": "missing.py"}),
            "missing.py",
        ),
        (
            json!({"name": "bad package", "repo": file_url, "script": "fail.py", "packages": ["this-package-does-not-exist-clearml-rs==1.0"]}),
            "this-package-does-not-exist-clearml-rs",
        ),
    ];
    for (mut spec, needle) in bad {
        spec["project"] = json!("e2e");
        spec["queue"] = json!("default");
        if spec.get("packages").is_none() {
            spec["packages"] = json!(["six"]);
        }
        let name = spec["name"].as_str().unwrap().to_string();
        let id = env.make_task(spec);
        let t = env.wait_final(&id, &daemon);
        assert_eq!(t["status"], "failed", "{name}: {t}");
        assert!(
            t["status_reason"]
                .as_str()
                .is_some_and(|r| r.contains(needle)),
            "{name}: reason {} should name {needle}",
            t["status_reason"]
        );
    }
    daemon.stop();
}

#[test]
fn execute_runs_one_task_and_its_clone_without_a_queue() {
    let env = Env::new();
    let (repo, first, _) = make_repo(&env.root);
    let id = env.make_task(json!({"project": "e2e", "name": "direct", "repo": format!("file://{}", repo.display()), "commit": first,
        "script": "src/train.py", "working_dir": "src", "packages": ["six"]}));
    let run = |args: &[&str]| {
        let mut cmd = Command::new(common::bin());
        cmd.args(args);
        env.client_env(&mut cmd);
        cmd.env("CLEARML_AGENT_JOURNAL_DIR", env.root.join("exec-journal"))
            .env("CLEARML_AGENT__AGENT__RUNS_DIR", env.root.join("exec-runs"))
            .env(
                "CLEARML_AGENT__AGENT__VENVS_DIR",
                env.root.join("exec-venvs"),
            )
            .env(
                "CLEARML_AGENT__AGENT__TOOLS_DIR",
                shared_cache("agent-tools"),
            )
            .env("CLEARML_AGENT__AGENT__PREEMPTION__ENABLED", "false")
            .env("CLEARML_WORKER_ID", "exec:0");
        cmd.output().unwrap()
    };
    let out = run(&["execute", "--id", &id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let t = env.server.task(&id);
    assert_eq!(t["status"], "completed");
    assert!(env.console(&id).contains("version one plain"));
    // --clone runs a copy and leaves the original alone.
    let out = run(&["execute", "--id", &id, "--clone"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let clones = env
        .server
        .call(
            "tasks.get_all",
            json!({"parent": id, "only_fields": ["status"]}),
        )
        .ok();
    let clones = clones["tasks"].as_array().unwrap();
    assert_eq!(clones.len(), 1);
    assert_eq!(clones[0]["status"], "completed");
    // An unknown task is a clean error naming it.
    let out = run(&["execute", "--id", "0123456789abcdef0123456789abcdef"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("0123456789abcdef0123456789abcdef"));
    // The journal shows the runs.
    let out = Command::new(common::bin())
        .args(["journal", "inspect", "--json", "--journal-dir"])
        .arg(env.root.join("exec-journal"))
        .output()
        .unwrap();
    let runs: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(runs.as_array().map(|r| r.len()), Some(2), "{runs}");
}

#[test]
fn two_daemons_run_each_of_twenty_tasks_exactly_once() {
    let env = Env::new();
    let (repo, _, _) = make_repo(&env.root);
    let file_url = format!("file://{}", repo.display());
    let mut ids = Vec::new();
    for i in 0..20 {
        ids.push(env.make_task(json!({"project": "e2e", "name": format!("marker {i}"), "repo": file_url, "script": "marker.py", "packages": ["six"], "queue": "default"})));
    }
    let mut a = env.daemon("agent-a");
    let mut b = env.daemon("agent-b");
    for id in &ids {
        let t = env.wait_final(id, &a);
        assert_eq!(t["status"], "completed", "{id}: {}\n{}", a.tail(), b.tail());
    }
    a.stop();
    b.stop();
    let markers = std::fs::read_to_string(env.root.join("markers.txt")).unwrap();
    for id in &ids {
        let runs = markers
            .lines()
            .filter(|l| l.split(' ').next() == Some(id.as_str()))
            .count();
        assert_eq!(runs, 1, "task {id} ran exactly once");
    }
    assert_eq!(markers.lines().count(), 20);
    for worker in ["agent-a:0", "agent-b:0"] {
        assert!(
            markers.lines().any(|l| l.ends_with(worker)),
            "both daemons pulled work: {markers}\n{}\n{}",
            a.tail(),
            b.tail()
        );
    }
}

#[test]
fn every_line_of_a_200k_line_script_reaches_the_server_in_order() {
    let env = Env::new();
    let (repo, _, _) = make_repo(&env.root);
    let mut daemon = env.daemon("agent-a");
    let id = env.make_task(json!({"project": "e2e", "name": "chatty", "repo": format!("file://{}", repo.display()), "script": "chatty.py", "packages": ["six"], "queue": "default"}));
    let t = env.wait_final(&id, &daemon);
    assert_eq!(t["status"], "completed", "{}", daemon.tail());
    daemon.stop();
    let console = env.console(&id);
    let lines: Vec<&str> = console.lines().filter(|l| l.starts_with("line ")).collect();
    assert_eq!(lines.len(), 200_000, "every line arrives");
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(*l, format!("line {i:06}"), "in order");
    }
}

/// Kill the daemon during a 30 s run (SIGKILL or SIGTERM), restart it: the script is never
/// restarted, its output (including what it printed while no agent ran) arrives, the run ends once.
fn survive_agent_death(signal: i32) {
    let env = Env::new();
    let (repo, _, _) = make_repo(&env.root);
    let pid_file = env.root.join("sleeper.pid");
    let (id, status, first_tail) =
        env.run_until_then_kill(&repo, "steady", "steady.py", "tick 005", signal);
    // The journal records which agent process holds it.
    let first_pid = std::fs::read_to_string(env.root.join("agent-a-journal/agent.pid")).unwrap();
    if signal == libc::SIGTERM {
        assert!(status.success(), "SIGTERM exits 0: {status}\n{first_tail}");
    }
    // The user process keeps running under its supervisor while no agent is there.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(env.server.task(&id)["status"], "in_progress");
    let second = env.daemon("agent-a");
    let t = env.wait_final(&id, &second);
    assert_eq!(t["status"], "completed", "{first_tail}\n{}", second.tail());
    let pids = std::fs::read_to_string(&pid_file).unwrap();
    assert_eq!(
        pids.lines().count(),
        1,
        "the script ran exactly once: {pids}"
    );
    let console = env.console(&id);
    let mut ticks: Vec<&str> = console.lines().filter(|l| l.starts_with("tick ")).collect();
    // At most one batch may repeat after a crash: drop adjacent repeats, then demand 0..60 in order.
    ticks.dedup();
    let mut seen = Vec::new();
    for t in ticks {
        if !seen.contains(&t) {
            seen.push(t);
        }
    }
    let expected: Vec<String> = (0..60).map(|i| format!("tick {i:03}")).collect();
    assert_eq!(seen, expected, "every line, in order");
    let runs = env.inspect(None);
    assert_eq!(
        runs.as_array().map(|r| r.len()),
        Some(1),
        "one run, resumed: {runs}"
    );
    assert_eq!(runs[0]["resumes"], 1, "{runs}");
    // The timeline names the attempt, the epochs and why the run was resumed.
    let timeline = env.inspect(Some(&id));
    let text = timeline.to_string();
    let why = if signal == libc::SIGKILL {
        "died without a clean shutdown (crash or kill -9)"
    } else {
        "stopped cleanly (SIGTERM or SIGINT)"
    };
    assert!(
        text.contains(&format!("agent epoch 1 (pid {}", first_pid)) && text.contains(why),
        "{text}"
    );
    assert!(text.contains("epoch 2"), "{text}");
    assert!(
        timeline[0]["progress"]["log_offset_shipped"].as_u64() > Some(0),
        "the shipped offset is in the journal's progress key: {text}"
    );
}

#[test]
fn kill_9_during_a_run_reattaches_without_restarting_the_script() {
    survive_agent_death(libc::SIGKILL);
}

#[test]
fn sigterm_during_a_run_leaves_the_task_to_its_supervisor_and_resumes() {
    survive_agent_death(libc::SIGTERM);
}

/// Kills agent-a during a run, then kills the supervisor's whole process group the way a power
/// cut would (no exit file is ever written), and restarts agent-a with `extra_env`. Returns the
/// task id and the restarted daemon.
fn lose_the_process(env: &Env, extra_env: &[(&str, &str)]) -> (String, Daemon) {
    let (repo, _, _) = make_repo(&env.root);
    let (id, _, _) = env.run_until_then_kill(&repo, "lost", "long.py", "tick 005", libc::SIGKILL);
    let sup = std::fs::read_dir(env.root.join("agent-a-runs"))
        .unwrap()
        .flatten()
        .map(|e| e.path().join("proc/supervisor.pid"))
        .find(|p| p.exists())
        .expect("a supervisor pid file");
    let pgid: i32 = std::fs::read_to_string(&sup)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    unsafe { libc::killpg(pgid, libc::SIGKILL) };
    std::thread::sleep(Duration::from_millis(500));
    (id, env.daemon_with("agent-a", extra_env))
}

/// The machine "reboots" under a run: the agent and the user process tree die together, so no
/// exit status is ever recorded. The restarted agent requeues the task (never reports it
/// completed), and it then runs again from the start.
#[test]
fn a_lost_process_is_requeued_and_runs_again() {
    let env = Env::new();
    let pid_file = env.root.join("sleeper.pid");
    let (id, second) = lose_the_process(&env, &[]);
    let t = env.wait_final(&id, &second);
    assert_eq!(t["status"], "completed", "{}", second.tail());
    assert_eq!(
        std::fs::read_to_string(&pid_file).unwrap().lines().count(),
        2,
        "ran again after the loss"
    );
    let text = env.inspect(None).to_string();
    assert!(
        text.contains("requeued after agent restart on agent-a:0"),
        "{text}"
    );
    assert!(text.contains("completed"), "{text}");
}

/// The same loss with `agent.resume.on_lost_process: fail`: the task fails with a reason of its
/// own, never `completed`, and is not run again.
#[test]
fn a_lost_process_fails_the_task_when_so_configured() {
    let env = Env::new();
    let pid_file = env.root.join("sleeper.pid");
    let fail = [("CLEARML_AGENT__AGENT__RESUME__ON_LOST_PROCESS", "fail")];
    let (id, second) = lose_the_process(&env, &fail);
    let t = env.wait_final(&id, &second);
    assert_eq!(t["status"], "failed", "{}", second.tail());
    let reason = t["status_reason"].as_str().unwrap_or("");
    assert!(reason.contains("lost: agent host restarted"), "{t}");
    assert_eq!(
        std::fs::read_to_string(&pid_file).unwrap().lines().count(),
        1,
        "not run again"
    );
}

/// The task is aborted from the SDK while no agent runs: the restarted agent kills the process
/// group it re-attached to and the task ends `stopped`.
#[test]
fn an_abort_while_the_agent_is_down_is_honoured_after_restart() {
    let env = Env::new();
    let (repo, _, _) = make_repo(&env.root);
    let pid_file = env.root.join("sleeper.pid");
    let (id, _, _) = env.run_until_then_kill(
        &repo,
        "aborted while down",
        "sleeper.py",
        "tick 3",
        libc::SIGKILL,
    );
    let pid = read_pid(&pid_file);
    let mut stop = Command::new(venv().join("bin/python"));
    stop.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/stop.py"))
        .arg(&id)
        .current_dir(&env.root);
    env.client_env(&mut stop);
    assert!(stop.status().unwrap().success());
    assert!(
        Path::new(&format!("/proc/{pid}")).exists(),
        "the script outlived the agent"
    );
    let second = env.daemon("agent-a");
    let t = env.wait_final(&id, &second);
    assert_eq!(
        (t["status"].as_str(), t["status_reason"].as_str()),
        (Some("stopped"), Some("task was stopped by tasks.stop")),
        "{}",
        second.tail()
    );
    wait_gone(pid, &String::new);
}

/// The server goes away for 20 s in the middle of a run: output piles up in the run's file and is
/// delivered when the server is back; the task completes; nothing is lost.
#[test]
fn a_server_outage_mid_run_loses_nothing() {
    let mut env = Env::new();
    let (repo, _, _) = make_repo(&env.root);
    let id = env.make_task(json!({"project": "e2e", "name": "outage", "repo": format!("file://{}", repo.display()), "script": "slow.py", "packages": ["six"], "queue": "default"}));
    let daemon = env.daemon("agent-a");
    env.wait_console(&id, "slow 003", &daemon);
    env.server.stop();
    std::thread::sleep(Duration::from_secs(20));
    env.server.restart();
    let t = env.wait_final(&id, &daemon);
    assert_eq!(t["status"], "completed", "{}", daemon.tail());
    let console = env.console(&id);
    let mut lines: Vec<&str> = console.lines().filter(|l| l.starts_with("slow ")).collect();
    lines.dedup();
    let expected: Vec<String> = (0..60).map(|i| format!("slow {i:03}")).collect();
    assert_eq!(lines, expected, "every line, in order, none lost");
}

/// A spot interruption notice: the agent signals the task, requeues it at the front of its
/// queue and stops pulling; a second daemon picks it up and completes it.
#[test]
fn a_preemption_notice_requeues_the_task_for_another_daemon() {
    let env = Env::new();
    let (repo, _, _) = make_repo(&env.root);
    let notice = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let port = common::imds::fake_imds(notice.clone());
    let url = format!("http://127.0.0.1:{port}");
    let id = env.make_task(json!({"project": "e2e", "name": "preempted", "repo": format!("file://{}", repo.display()), "script": "slow.py", "packages": ["six"], "queue": "default"}));
    let mut a = env.daemon_with(
        "agent-a",
        &[
            (
                "CLEARML_AGENT__AGENT__PREEMPTION__METADATA_URL",
                url.as_str(),
            ),
            ("CLEARML_AGENT__AGENT__PREEMPTION__PROVIDER", "aws"),
            ("CLEARML_AGENT__AGENT__PREEMPTION__ENABLED", "true"),
            ("CLEARML_AGENT__AGENT__PREEMPTION__POLL_INTERVAL_SEC", "1"),
        ],
    );
    env.wait_console(&id, "slow 003", &a);
    notice.store(true, std::sync::atomic::Ordering::SeqCst);
    let noticed = Instant::now();
    while env.server.task(&id)["status"] != "queued" {
        assert!(
            noticed.elapsed() < Duration::from_secs(30),
            "not requeued: {}",
            a.tail()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let t = env.server.task(&id);
    assert!(
        t["status_message"]
            .as_str()
            .is_some_and(|m| m.contains("preempted")),
        "{t}"
    );
    let default = env.server.default_queue();
    let entries = env
        .server
        .call("queues.get_by_id", json!({"queue": default}))
        .ok()["queue"]["entries"]
        .clone();
    assert_eq!(entries[0]["task"], id, "requeued at the front");
    // The preempted daemon stops pulling and exits.
    let deadline = Instant::now() + Duration::from_secs(30);
    while a.child.get_mut().try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "the preempted daemon kept running: {}",
            a.tail()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let b = env.daemon("agent-b");
    let t = env.wait_final(&id, &b);
    assert_eq!(t["status"], "completed", "{}", b.tail());
}

/// `daemon --detached` runs in the background with a pid file; `daemon --stop` aborts its running
/// task (reported `stopped`, "agent shutdown", never `completed`) and waits for it to exit;
/// `daemon --stop --drain` stops pulling and lets the running task finish first.
#[test]
fn detached_daemon_stop_and_drain() {
    let env = Env::new();
    let (repo, _, _) = make_repo(&env.root);
    let pid_file = env.root.join("agent.pid");
    let agent = |args: &[&str]| {
        let mut cmd = Command::new(common::bin());
        cmd.args(args);
        env.client_env(&mut cmd);
        cmd.env("CLEARML_AGENT_JOURNAL_DIR", env.root.join("d-journal"))
            .env("CLEARML_AGENT__AGENT__RUNS_DIR", env.root.join("d-runs"))
            .env("CLEARML_AGENT__AGENT__VENVS_DIR", env.root.join("d-venvs"))
            .env(
                "CLEARML_AGENT__AGENT__TOOLS_DIR",
                shared_cache("agent-tools"),
            )
            .env("CLEARML_AGENT__AGENT__PID_FILE", &pid_file)
            .env("CLEARML_AGENT__AGENT__PREEMPTION__ENABLED", "false")
            .env("CLEARML_AGENT__AGENT__STOP_GRACE_PERIOD_SEC", "2")
            .env("CLEARML_WORKER_ID", "detached:0");
        cmd.output().unwrap()
    };
    let wait_for = |what: &str, f: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(300);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let url = format!("file://{}", repo.display());
    // --stop: the running task is aborted as "agent shutdown".
    let out = agent(&[
        "daemon",
        "--queue",
        "default",
        "--detached",
        "--polling-interval",
        "0.5",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for("the pid file", &|| pid_file.exists());
    let id = env.make_task(json!({"project": "e2e", "name": "stopped by --stop", "repo": url, "script": "sleeper.py", "packages": ["six"], "queue": "default"}));
    wait_for("the task to run", &|| env.console(&id).contains("tick 2"));
    let out = agent(&["daemon", "--stop"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let t = env.server.task(&id);
    assert_eq!(
        (t["status"].as_str(), t["status_reason"].as_str()),
        (Some("stopped"), Some("agent shutdown")),
        "{t}"
    );
    assert!(!pid_file.exists(), "the pid file is removed on exit");
    // --stop --drain: the running task completes, the next one stays queued.
    let out = agent(&[
        "daemon",
        "--queue",
        "default",
        "--detached",
        "--polling-interval",
        "0.5",
    ]);
    assert!(out.status.success());
    wait_for("the pid file", &|| pid_file.exists());
    let running = env.make_task(json!({"project": "e2e", "name": "drained", "repo": url, "script": "long.py", "packages": ["six"], "queue": "default"}));
    wait_for("the task to run", &|| {
        env.console(&running).contains("tick 002")
    });
    let waiting = env.make_task(json!({"project": "e2e", "name": "left queued", "repo": url, "script": "fail.py", "packages": ["six"], "queue": "default"}));
    let out = agent(&["daemon", "--stop", "--drain"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(env.server.task(&running)["status"], "completed");
    assert_eq!(env.server.task(&waiting)["status"], "queued");
    let out = agent(&["daemon", "--stop"]);
    assert!(!out.status.success(), "no daemon left to stop");
}

/// The task is deleted while no agent runs: the restarted agent stops the process it re-attached
/// to and closes the run locally (no status to report on a task that no longer exists).
#[test]
fn a_task_deleted_while_the_agent_is_down_is_closed_locally() {
    let env = Env::new();
    let (repo, _, _) = make_repo(&env.root);
    let pid_file = env.root.join("sleeper.pid");
    let (id, _, _) = env.run_until_then_kill(
        &repo,
        "deleted while down",
        "sleeper.py",
        "tick 3",
        libc::SIGKILL,
    );
    let pid = read_pid(&pid_file);
    env.server
        .call("tasks.delete", json!({"task": id, "force": true}))
        .ok();
    let mut second = env.daemon("agent-a");
    wait_gone(pid, &|| second.tail());
    let journal = env.root.join("agent-a-journal");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        second.stop();
        let out = Command::new(common::bin())
            .args(["journal", "inspect", "--json", "--journal-dir"])
            .arg(&journal)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        if text.contains("aborted") {
            assert!(!text.contains("completed"), "{text}");
            break;
        }
        assert!(Instant::now() < deadline, "the run was not closed: {text}");
        second = env.daemon("agent-a");
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// Restarts agent-a after a kill and waits until its journal shows `needle`; returns the
/// journal's JSON text.
fn wait_journal(env: &Env, daemon: &Daemon, task: &str, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = env.inspect(Some(task)).to_string();
        if text.contains(needle) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "the journal never showed {needle:?}: {text}\n{}",
            daemon.tail()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Lines of the server's access log that set a terminal status on `task`.
fn terminal_calls(env: &Env, task: &str) -> usize {
    env.server
        .log()
        .lines()
        .filter(|l| {
            l.contains(&format!("task={task} ->"))
                && ["tasks.completed", "tasks.failed", "tasks.stopped"]
                    .iter()
                    .any(|e| l.contains(e))
        })
        .count()
}

/// Kills agent-a during a sleeper run, lets `meanwhile` change the task on the server, restarts
/// agent-a and waits until its journal closes the run as aborted by `why`: the user process is
/// gone, the run never completed, and agent-a sent no terminal status. Returns the task id.
fn closed_while_down(env: &Env, name: &str, meanwhile: impl Fn(&str), why: &str) -> String {
    let (repo, _, _) = make_repo(&env.root);
    let (id, _, _) = env.run_until_then_kill(&repo, name, "sleeper.py", "tick 3", libc::SIGKILL);
    let pid = read_pid(&env.root.join("sleeper.pid"));
    meanwhile(&id);
    let mut second = env.daemon("agent-a");
    wait_gone(pid, &|| second.tail());
    let text = wait_journal(env, &second, &id, &format!("aborted by {why}"));
    assert!(!text.contains("completed"), "{text}");
    second.stop();
    assert_eq!(terminal_calls(env, &id), 0, "agent-a set no status");
    id
}

/// While agent-a is down another worker takes the task (it now reports it): the restarted
/// agent stops its own copy of the process and closes the run locally, leaving the task's
/// status to the other worker.
#[test]
fn a_task_taken_by_another_worker_while_down_is_left_to_it() {
    let env = Env::new();
    let take = |id: &str| {
        env.server
            .call("workers.register", json!({"worker": "agent-b:0"}))
            .ok();
        env.server
            .call(
                "workers.status_report",
                json!({"worker": "agent-b:0", "timestamp": 1_700_000_000_000u64, "task": id}),
            )
            .ok();
        assert_eq!(env.server.task(id)["last_worker"], "agent-b:0");
    };
    let why = "task taken by worker agent-b:0";
    let id = closed_while_down(&env, "taken while down", take, why);
    let t = env.server.task(&id);
    assert_eq!(t["status"], "in_progress", "left to agent-b");
    assert_eq!(
        t["last_worker"], "agent-b:0",
        "agent-a never claimed it back"
    );
}

/// The task is reset while agent-a is down: the restarted agent closes the run at once (no
/// "reset" polls), stops the process, and leaves the task `created`.
#[test]
fn a_task_reset_while_down_is_closed_locally() {
    let env = Env::new();
    let reset = |id: &str| {
        env.server
            .call("tasks.reset", json!({"task": id, "force": true}))
            .ok();
        assert_eq!(env.server.task(id)["status"], "created");
    };
    let why = "reset while the agent was down";
    let id = closed_while_down(&env, "reset while down", reset, why);
    assert_eq!(env.server.task(&id)["status"], "created");
}

/// The server is unreachable while the script prints far more than
/// `agent.max_unshipped_output_mb`: the run's file stops growing at the cap, a marker line says
/// how much was dropped, and everything before and after it arrives in order.
#[test]
fn output_past_the_cap_while_the_server_is_down_is_dropped_with_a_marker() {
    let mut env = Env::new();
    let (repo, _, _) = make_repo(&env.root);
    let id = env.make_task(json!({"project": "e2e", "name": "burst", "repo": format!("file://{}", repo.display()), "script": "burst.py", "packages": ["six"], "queue": "default"}));
    // 0.05 MiB: about 1,000 of the 5,000 burst lines fit.
    let daemon = env.daemon_with(
        "agent-a",
        &[("CLEARML_AGENT__AGENT__MAX_UNSHIPPED_OUTPUT_MB", "0.05")],
    );
    env.wait_console(&id, "waiting", &daemon);
    let deadline = Instant::now() + Duration::from_secs(120);
    env.server.stop();
    let flag = env.root.join("burst.flag");
    std::fs::write(&flag, "").unwrap();
    while !flag.with_extension("flag.done").exists() {
        assert!(Instant::now() < deadline, "no burst: {}", daemon.tail());
        std::thread::sleep(Duration::from_millis(50));
    }
    let proc_dir = std::fs::read_dir(env.root.join("agent-a-runs"))
        .unwrap()
        .flatten()
        .map(|e| e.path().join("proc"))
        .find(|p| p.exists())
        .expect("a run dir");
    let size = std::fs::metadata(proc_dir.join("output.log"))
        .unwrap()
        .len();
    assert!(
        size < 2 * 52_429 + 4096,
        "the file stopped growing near the cap: {size} bytes"
    );
    env.server.restart();
    // Once the kept output is shipped, the relay writes again.
    loop {
        let shipped: u64 = std::fs::read_to_string(proc_dir.join("shipped.offset"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        if shipped >= size {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never caught up: {}",
            daemon.tail()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::fs::write(flag.with_extension("flag.back"), "").unwrap();
    let t = env.wait_final(&id, &daemon);
    assert_eq!(t["status"], "completed", "{}", daemon.tail());
    let console = env.console(&id);
    let lines: Vec<&str> = console
        .lines()
        .filter(|l| {
            l.starts_with("burst ") || l.starts_with("after ") || l.contains("dropped here")
        })
        .collect();
    let marker = lines
        .iter()
        .position(|l| l.contains("dropped here"))
        .unwrap_or_else(|| panic!("no truncation marker: {console}"));
    assert!(
        marker > 500 && marker < 2000,
        "about the cap's worth kept: {marker}: {:?}",
        &lines[marker.saturating_sub(3)..(marker + 3).min(lines.len())]
    );
    let kept: Vec<String> = (0..marker)
        .map(|i| format!("burst {i:05} {}", "x".repeat(40)))
        .collect();
    assert_eq!(lines[..marker], kept, "the head of the burst, in order");
    let dropped: u64 = lines[marker]
        .trim_start_matches("[clearml-agent: ")
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        dropped,
        (5000 - marker as u64) * 53,
        "the marker counts the dropped bytes"
    );
    let after: Vec<String> = (0..20).map(|i| format!("after {i:02}")).collect();
    assert_eq!(lines[marker + 1..], after, "everything after the outage");
}

/// Issue 9, item 3: the server answers 500 for 25 s around the end of a short task, then (for
/// another task) drops every connection while it restarts. Each time every output line arrives,
/// the final status lands exactly once, and the run is not cleaned up before.
#[test]
fn output_and_final_status_survive_500s_and_a_server_restart_around_the_end_of_a_task() {
    use common::proxy::{FaultProxy, Mode};
    let mut env = Env::new();
    let proxy = FaultProxy::start(&env.server.api);
    let (repo, _, _) = make_repo(&env.root);
    let url = format!("file://{}", repo.display());
    let mut daemon = env.daemon_with("agent-a", &[("CLEARML_API_HOST", proxy.url.as_str())]);
    let expected: Vec<String> = (0..6).map(|i| format!("out {i}")).collect();

    let id = env.make_task(json!({"project": "e2e", "name": "500s at the end", "repo": url, "script": "short.py", "packages": ["six"], "queue": "default"}));
    env.wait_console(&id, "out 1", &daemon);
    proxy.set(Mode::Fail500);
    let outage = Instant::now();
    // The script ends about 5 s into the outage; its last lines wait on disk meanwhile.
    while outage.elapsed() < Duration::from_secs(25) {
        assert_eq!(env.status(&id), "in_progress", "{}", daemon.tail());
        std::thread::sleep(Duration::from_millis(500));
    }
    let run_dir = std::fs::read_dir(env.root.join("agent-a-runs"))
        .unwrap()
        .flatten()
        .any(|e| e.path().join("proc/output.log").exists());
    assert!(
        run_dir,
        "the run's output stays on disk until the server has it"
    );
    proxy.set(Mode::Pass);
    let t = env.wait_final(&id, &daemon);
    assert_eq!(t["status"], "completed", "{}", daemon.tail());
    assert_eq!(env.lines(&id, "out "), expected, "every line");
    assert_eq!(proxy.terminal_calls(&id), 1);

    let id = env.make_task(json!({"project": "e2e", "name": "restart at the end", "repo": url, "script": "short.py", "packages": ["six"], "queue": "default"}));
    env.wait_console(&id, "out 1", &daemon);
    proxy.set(Mode::Drop);
    env.server.restart();
    std::thread::sleep(Duration::from_secs(8));
    proxy.set(Mode::Pass);
    let t = env.wait_final(&id, &daemon);
    assert_eq!(t["status"], "completed", "{}", daemon.tail());
    assert_eq!(env.lines(&id, "out "), expected, "every line");
    assert_eq!(proxy.terminal_calls(&id), 1);
    daemon.stop();
}

/// Issue 10: a transient network error during the clone is retried with backoff (and journaled
/// as a retryable failure) instead of failing the task; the repository comes up a few seconds
/// later and the task completes.
#[test]
fn a_transient_clone_failure_is_retried_not_fatal() {
    let env = Env::new();
    let (_repo, first, _) = make_repo(&env.root);
    let port = common::agent::free_port();
    let id = env.make_task(
        json!({"project": "e2e", "name": "late git", "repo": format!("git://127.0.0.1:{port}/repo"),
        "commit": first, "script": "fail.py", "packages": ["six"], "queue": "default"}),
    );
    let daemon = env.daemon_with(
        "agent-a",
        &[("CLEARML_AGENT__AGENT__STAGE_RETRY_BASE_SEC", "2")],
    );
    // The first attempt fails (nothing listens); the git server starts before the retries end.
    let deadline = Instant::now() + Duration::from_secs(300);
    let journal_text = || {
        let out = Command::new(common::bin())
            .args(["journal", "inspect", &id, "--json", "--journal-dir"])
            .arg(env.root.join("agent-a-journal"))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    while !journal_text().contains("retryable: cannot fetch repository") {
        assert!(
            Instant::now() < deadline,
            "no retryable failure: {}",
            daemon.tail()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let _git = GitDaemon::start_on(&env.root, port);
    let t = env.wait_final(&id, &daemon);
    assert_eq!(
        (t["status"].as_str(), t["status_reason"].as_str()),
        (Some("failed"), Some("worker execution exit code 3")),
        "the clone succeeded on a retry and the script ran: {}",
        daemon.tail()
    );
}

/// Issue 9, items 9 and 15: a task whose script fields have the wrong JSON type, or whose entry
/// point or working dir leaves the checkout, fails naming the field; nothing is written outside
/// the run's directory, and the daemon goes on.
#[test]
fn bad_task_documents_fail_naming_the_field_and_write_nothing_outside() {
    let env = Env::new();
    let (repo, _, _) = make_repo(&env.root);
    let url = format!("file://{}", repo.display());
    let mut daemon = env.daemon("agent-a");
    let queue = env.server.default_queue();
    let escape = env.root.join("agent-a-runs/escaped.py");
    let cases: Vec<(Value, &str)> = vec![
        (
            json!({"repository": 5, "entry_point": "x.py"}),
            "script.repository",
        ),
        (
            json!({"diff": {"a": 1}, "entry_point": "x.py"}),
            "script.diff",
        ),
        (
            json!({"requirements": {"pip": 7}, "entry_point": "x.py"}),
            "script.requirements.pip",
        ),
        (json!({"entry_point": ["x.py"]}), "script.entry_point"),
        // No repository: the diff is the script, and it must not land outside the run dir.
        (
            json!({"entry_point": "../../escaped.py", "diff": "print('escaped')\n"}),
            "script.entry_point",
        ),
        (
            json!({"repository": url, "entry_point": "fail.py", "working_dir": "../.."}),
            "script.working_dir",
        ),
    ];
    for (script, field) in cases {
        let created = env.server.call(
            "tasks.create",
            json!({"name": format!("bad {field}"), "type": "training", "script": script}),
        );
        if created.status != 200 {
            // The server itself refused the document: the field must be named there.
            assert!(
                created
                    .body
                    .to_string()
                    .contains(field.rsplit('.').next().unwrap()),
                "{}",
                created.body
            );
            continue;
        }
        let id = created.data()["id"].as_str().unwrap().to_string();
        env.server
            .call("tasks.enqueue", json!({"task": id, "queue": queue}))
            .ok();
        let t = env.wait_final(&id, &daemon);
        assert_eq!(t["status"], "failed", "{script}: {t}");
        let reason = t["status_reason"].as_str().unwrap_or("");
        assert!(
            reason.contains(field),
            "{script}: reason {reason:?} should name {field}"
        );
    }
    assert!(
        !escape.exists(),
        "the script was written outside the run dir"
    );
    daemon.stop();
}

/// Issue 9, item 15: the journal directory is deleted under a running daemon: it notices before
/// pulling anything more, says so, and exits non-zero; the next task stays in its queue.
#[test]
fn a_daemon_whose_journal_dir_is_deleted_stops_pulling_with_a_clear_error() {
    let env = Env::new();
    let (repo, _, _) = make_repo(&env.root);
    let mut daemon = env.daemon("agent-a");
    let journal = env.root.join("agent-a-journal");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !daemon.tail().contains("listening to") {
        assert!(Instant::now() < deadline, "{}", daemon.tail());
        std::thread::sleep(Duration::from_millis(100));
    }
    std::fs::remove_dir_all(&journal).unwrap();
    let id = env.make_task(json!({"project": "e2e", "name": "after the journal went", "repo": format!("file://{}", repo.display()), "script": "fail.py", "packages": ["six"], "queue": "default"}));
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = daemon.child.get_mut().try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the daemon kept going: {}",
            daemon.tail()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(status.code(), Some(1), "{}", daemon.tail());
    assert!(
        daemon.tail().contains("was removed or replaced"),
        "{}",
        daemon.tail()
    );
    assert_eq!(env.status(&id), "queued", "the task was not taken");
}

/// Issue 9, item 15: a server that accepts connections but never answers: the daemon says so
/// within a few seconds and keeps retrying, with a progress line each time.
#[test]
fn a_server_that_never_answers_is_reported_within_seconds_and_retried() {
    let env = Env::new();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let held = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let keep = held.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            keep.lock().unwrap().push(conn); // accepted, never answered
        }
    });
    let started = Instant::now();
    let mut daemon = env.daemon_with("agent-a", &[("CLEARML_API_HOST", url.as_str())]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !daemon.tail().contains("attempt 2") {
        assert!(
            Instant::now() < deadline,
            "no progress lines: {}",
            daemon.tail()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let first = daemon.tail();
    assert!(first.contains("has not answered yet (attempt 1"), "{first}");
    assert!(
        daemon.child.get_mut().try_wait().unwrap().is_none(),
        "still retrying"
    );
    eprintln!(
        "first two progress lines after {:.1} s",
        started.elapsed().as_secs_f64()
    );
    daemon.stop();
}

/// Issue 9, item 16: `agent.preemption.enabled: auto` decides from the machine's DMI facts
/// first. On a machine that is on no cloud it never talks to the metadata address; on "Amazon
/// EC2" it polls that cloud's service (here a loopback stand-in).
#[test]
fn preemption_auto_mode_talks_to_a_metadata_service_only_on_its_cloud() {
    let env = Env::new();
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let counter = hits.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            drop(conn);
        }
    });
    let dmi = |vendor: &str, product: &str| {
        let dir = env.root.join(format!("dmi-{}", vendor.replace(' ', "-")));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("sys_vendor"), format!("{vendor}\n")).unwrap();
        std::fs::write(dir.join("product_name"), format!("{product}\n")).unwrap();
        dir.display().to_string()
    };
    let run = |dir: &str| {
        env.daemon_with(
            "agent-a",
            &[
                ("CLEARML_AGENT__AGENT__PREEMPTION__ENABLED", "auto"),
                (
                    "CLEARML_AGENT__AGENT__PREEMPTION__METADATA_URL",
                    url.as_str(),
                ),
                ("CLEARML_AGENT__AGENT__PREEMPTION__DMI_DIR", dir),
                ("CLEARML_AGENT__AGENT__PREEMPTION__POLL_INTERVAL_SEC", "0.2"),
            ],
        )
    };
    let wait_for = |what: &str, d: &Daemon, f: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !f() {
            assert!(Instant::now() < deadline, "{what}: {}", d.tail());
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    // Not a cloud: the daemon starts, reaches its queue loop, and never connects.
    let mut d = run(&dmi("QEMU", "Standard PC (i440FX + PIIX, 1996)"));
    wait_for("the queue loop", &d, &|| {
        env.server.log().contains("queues.peek_task")
    });
    d.stop();
    assert_eq!(
        hits.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "{}",
        d.tail()
    );
    // Amazon EC2: the AWS endpoints are polled.
    let mut d = run(&dmi("Amazon EC2", "m5.large"));
    wait_for("polls of the metadata service", &d, &|| {
        hits.load(std::sync::atomic::Ordering::SeqCst) >= 2
    });
    d.stop();
}

/// Issue 9, item 5: a repository URL with a password: the journal stores it without (a reference
/// to the task's URL instead), so no file of the journal holds the password, and the failure
/// reason the user sees masks it.
#[test]
fn repository_credentials_never_reach_the_journal() {
    let env = Env::new();
    let port = common::agent::free_port();
    let id = env.make_task(json!({"project": "e2e", "name": "with password",
        "repo": format!("https://bob:hunter2secret@127.0.0.1:{port}/r.git"), "script": "x.py",
        "packages": ["six"], "queue": "default"}));
    let mut daemon = env.daemon_with(
        "agent-a",
        &[("CLEARML_AGENT__AGENT__STAGE_RETRY_BASE_SEC", "0.1")],
    );
    let t = env.wait_final(&id, &daemon);
    daemon.stop();
    assert_eq!(t["status"], "failed", "nothing listens there: {t}");
    let reason = t["status_reason"].as_str().unwrap_or("");
    assert!(
        reason.contains("127.0.0.1") && !reason.contains("hunter2secret"),
        "{reason}"
    );
    fn files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            if e.path().is_dir() {
                files(&e.path(), out);
            } else {
                out.push(e.path());
            }
        }
    }
    let mut all = vec![];
    files(&env.root.join("agent-a-journal"), &mut all);
    assert!(all.len() >= 2);
    for f in all {
        let bytes = std::fs::read(&f).unwrap();
        assert!(
            !bytes.windows(13).any(|w| w == b"hunter2secret"),
            "{} holds the password",
            f.display()
        );
    }
    let text = env.inspect(Some(&id)).to_string();
    assert!(
        text.contains(&format!("https://127.0.0.1:{port}/r.git")),
        "{text}"
    );
}

/// Issue 10: terminal runs older than `agent.journal.retention` are compacted when the daemon
/// starts (here a retention of 0 s), and stay readable.
#[test]
fn finished_runs_are_compacted_when_the_daemon_starts() {
    let env = Env::new();
    let (repo, _, _) = make_repo(&env.root);
    let id = env.make_task(json!({"project": "e2e", "name": "to compact", "repo": format!("file://{}", repo.display()), "script": "fail.py", "packages": ["six"], "queue": "default"}));
    let mut a = env.daemon("agent-a");
    env.wait_final(&id, &a);
    a.stop();
    assert_eq!(env.inspect(None)[0]["compacted"], false);
    let mut b = env.daemon_with(
        "agent-a",
        &[("CLEARML_AGENT__AGENT__JOURNAL__RETENTION", "0s")],
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while !b.tail().contains("compacted 1 finished run") {
        assert!(Instant::now() < deadline, "{}", b.tail());
        std::thread::sleep(Duration::from_millis(100));
    }
    b.stop();
    let runs = env.inspect(None);
    assert_eq!(runs[0]["compacted"], true, "{runs}");
    assert_eq!(runs[0]["state"], "failed", "{runs}");
}
