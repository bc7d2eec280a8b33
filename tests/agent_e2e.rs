//! Our agent end to end: the embedded server, tasks created by the real Python SDK, git
//! repositories made by the test (served over file:// and over git:// by `git daemon` on
//! loopback), real venvs from PyPI, real child processes under the per-run supervisor.

mod common;

use common::server::TestServer;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn venv() -> PathBuf {
    common::python_venv()
}

/// The pid a test script wrote to `file`.
fn read_pid(file: &Path) -> i32 {
    std::fs::read_to_string(file)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// Waits (bounded) until `pid` is gone or a zombie.
fn wait_gone(pid: i32, context: &dyn Fn() -> String) {
    let gone =
        || std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| s.contains(") Z"));
    let deadline = Instant::now() + Duration::from_secs(60);
    while !gone() {
        assert!(
            Instant::now() < deadline,
            "the user process {pid} is still alive: {}",
            context()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn shared_cache(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target")
        .join(name)
}

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@t")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@t")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A repository with two commits: the first prints "version one", the second "version two".
fn make_repo(root: &Path) -> (PathBuf, String, String) {
    let repo = root.join("repo");
    std::fs::create_dir_all(repo.join("src")).unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    std::fs::write(
        repo.join("src/train.py"),
        "import six\nfrom helper import WORD\nprint('version one', WORD, six.__version__)\n",
    )
    .unwrap();
    std::fs::write(repo.join("src/helper.py"), "WORD = 'plain'\n").unwrap();
    std::fs::write(
        repo.join("fail.py"),
        "import sys\nprint('about to fail')\nsys.exit(3)\n",
    )
    .unwrap();
    std::fs::write(repo.join("sleeper.py"), "import os, time\nopen(os.environ['PID_FILE'], 'w').write(str(os.getpid()))\nfor i in range(600):\n    print('tick', i, flush=True)\n    time.sleep(0.2)\n").unwrap();
    std::fs::write(
        repo.join("chatty.py"),
        "import sys\nfor i in range(200000):\n    sys.stdout.write('line %06d\\n' % i)\n",
    )
    .unwrap();
    std::fs::write(repo.join("marker.py"), "import os, time\nwith open(os.environ['MARKER_FILE'], 'a') as f:\n    f.write(os.environ['CLEARML_TASK_ID'] + ' ' + os.environ['CLEARML_WORKER_ID'] + '\\n')\ntime.sleep(0.5)\n").unwrap();
    std::fs::write(
        repo.join("long.py"),
        "import os, time\nwith open(os.environ['PID_FILE'], 'a') as f:\n    f.write(str(os.getpid()) + '\\n')\nfor i in range(60):\n    print('tick %03d' % i, flush=True)\n    time.sleep(0.1)\n",
    )
    .unwrap();
    // The same 60 ticks over 30 s: the crash-during-a-run tests.
    std::fs::write(
        repo.join("steady.py"),
        "import os, time\nwith open(os.environ['PID_FILE'], 'a') as f:\n    f.write(str(os.getpid()) + '\\n')\nfor i in range(60):\n    print('tick %03d' % i, flush=True)\n    time.sleep(0.5)\n",
    )
    .unwrap();
    std::fs::write(
        repo.join("slow.py"),
        "import time\nfor i in range(60):\n    print('slow %03d' % i, flush=True)\n    time.sleep(0.5)\n",
    )
    .unwrap();
    std::fs::write(
        repo.join("crashy.py"),
        "import os, time\nwith open(os.environ['MARKER_FILE'], 'a') as f:\n    f.write(os.environ['CLEARML_TASK_ID'] + ' ' + str(os.getpid()) + '\\n')\nfor i in range(20):\n    print('line %02d' % i, flush=True)\n    time.sleep(0.05)\n",
    )
    .unwrap();
    std::fs::write(
        repo.join("burst.py"),
        "import os, sys, time\nflag = os.environ['BURST_FLAG']\ndef wait(p):\n    while not os.path.exists(p):\n        time.sleep(0.05)\nprint('waiting', flush=True)\nwait(flag)\nfor i in range(5000):\n    print('burst %05d %s' % (i, 'x' * 40))\nsys.stdout.flush()\nopen(flag + '.done', 'w').close()\nwait(flag + '.back')\nfor i in range(20):\n    print('after %02d' % i, flush=True)\n",
    )
    .unwrap();
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "-qm", "one"]);
    let first = git(&repo, &["rev-parse", "HEAD"]);
    std::fs::write(
        repo.join("src/train.py"),
        "import six\nfrom helper import WORD\nprint('version two', WORD, six.__version__)\n",
    )
    .unwrap();
    git(&repo, &["commit", "-qam", "two"]);
    let second = git(&repo, &["rev-parse", "HEAD"]);
    (repo, first, second)
}

struct Env {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    server: TestServer,
}

impl Env {
    fn new() -> Env {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        let server = TestServer::start_with(&root.join("server"), &["--access-log"]);
        std::fs::create_dir_all(root.join("home")).unwrap();
        Env {
            _tmp: tmp,
            root,
            server,
        }
    }

    fn client_env(&self, cmd: &mut Command) {
        cmd.envs(self.server.client_env())
            .env("HOME", self.root.join("home"))
            .env("PIP_CACHE_DIR", shared_cache("pip-cache"))
            .env("UV_CACHE_DIR", shared_cache("uv-cache"))
            .env("MARKER_FILE", self.root.join("markers.txt"))
            .env("PID_FILE", self.root.join("sleeper.pid"))
            .env("BURST_FLAG", self.root.join("burst.flag"));
    }

    fn make_task(&self, spec: Value) -> String {
        let mut cmd = Command::new(venv().join("bin/python"));
        cmd.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/make_task.py"))
            .arg(spec.to_string())
            .current_dir(&self.root);
        self.client_env(&mut cmd);
        let out = cmd.output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "make_task failed: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let line = stdout.lines().rev().find(|l| l.starts_with('{')).unwrap();
        serde_json::from_str::<Value>(line).unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string()
    }

    fn daemon(&self, name: &str) -> Daemon {
        self.daemon_with(name, &[])
    }

    fn daemon_with(&self, name: &str, extra_env: &[(&str, &str)]) -> Daemon {
        let log = self.root.join(format!("{name}.log"));
        let mut cmd = Command::new(common::bin());
        cmd.args([
            "daemon",
            "--queue",
            "default",
            "--foreground",
            "--polling-interval",
            "0.5",
        ]);
        self.client_env(&mut cmd);
        cmd.env("CLEARML_WORKER_ID", format!("{name}:0"))
            .env(
                "CLEARML_AGENT_JOURNAL_DIR",
                self.root.join(format!("{name}-journal")),
            )
            .env(
                "CLEARML_AGENT__AGENT__RUNS_DIR",
                self.root.join(format!("{name}-runs")),
            )
            .env(
                "CLEARML_AGENT__AGENT__VENVS_DIR",
                self.root.join(format!("{name}-venvs")),
            )
            .env(
                "CLEARML_AGENT__AGENT__VENVS_CACHE__PATH",
                self.root.join("venvs-cache"),
            )
            .env(
                "CLEARML_AGENT__AGENT__VCS_CACHE__PATH",
                self.root.join(format!("{name}-vcs")),
            )
            .env(
                "CLEARML_AGENT__AGENT__TOOLS_DIR",
                shared_cache("agent-tools"),
            )
            .env("CLEARML_AGENT__AGENT__STOP_GRACE_PERIOD_SEC", "2")
            // Never the cloud metadata address: off unless a test points it at a loopback IMDS.
            .env("CLEARML_AGENT__AGENT__PREEMPTION__ENABLED", "false")
            .envs(extra_env.iter().copied())
            .stdout(Stdio::from(std::fs::File::create(&log).unwrap()))
            .stderr(Stdio::from(
                std::fs::File::options().append(true).open(&log).unwrap(),
            ));
        Daemon {
            child: cmd.spawn().unwrap().into(),
            log,
        }
    }

    /// Creates a task running `script` from `repo`, starts daemon `agent-a`, waits until its
    /// console shows `marker`, then sends the daemon `signal` and reaps it. Returns the task id,
    /// the daemon's exit status and its log tail.
    fn run_until_then_kill(
        &self,
        repo: &Path,
        name: &str,
        script: &str,
        marker: &str,
        signal: i32,
    ) -> (String, std::process::ExitStatus, String) {
        let id = self.make_task(json!({"project": "e2e", "name": name, "repo": format!("file://{}", repo.display()), "script": script, "packages": ["six"], "queue": "default"}));
        let mut first = self.daemon("agent-a");
        self.wait_console(&id, marker, &first);
        unsafe { libc::kill(first.child.get_mut().id() as i32, signal) };
        let status = first.child.get_mut().wait().unwrap();
        (id, status, first.tail())
    }

    /// Waits until the task's console shows `needle` (the task has started and got that far).
    fn wait_console(&self, id: &str, needle: &str, daemon: &Daemon) {
        let deadline = Instant::now() + Duration::from_secs(300);
        while !self.console(id).contains(needle) {
            assert!(
                Instant::now() < deadline,
                "never started: {}",
                daemon.tail()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn wait_final(&self, id: &str, daemon: &Daemon) -> Value {
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            let t = self.server.task(id);
            if matches!(
                t["status"].as_str(),
                Some("completed" | "failed" | "stopped")
            ) {
                return t;
            }
            assert!(
                Instant::now() < deadline,
                "task {id} never finished: {t}\n{}",
                daemon.tail()
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// `journal inspect --json` of agent-a's journal: every run, or one task's runs.
    fn inspect(&self, task: Option<&str>) -> Value {
        let out = Command::new(common::bin())
            .args(["journal", "inspect", "--json", "--journal-dir"])
            .arg(self.root.join("agent-a-journal"))
            .args(task)
            .output()
            .unwrap();
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "journal inspect: {e}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        })
    }

    fn console(&self, id: &str) -> String {
        let data = self
            .server
            .call(
                "events.get_task_log",
                json!({"task": id, "batch_size": 100000, "navigate_earlier": false}),
            )
            .ok();
        data["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["msg"].as_str().unwrap_or(""))
            .collect::<Vec<_>>()
            .concat()
    }
}

struct Daemon {
    child: std::cell::RefCell<Child>,
    log: PathBuf,
}

impl Daemon {
    fn tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
    fn stop(&mut self) {
        let child = self.child.get_mut();
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let child = self.child.get_mut();
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// `git daemon` serving `base` on a free loopback port.
struct GitDaemon(Child, u16);

impl GitDaemon {
    fn start(base: &Path) -> GitDaemon {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("git")
            .args([
                "daemon",
                "--reuseaddr",
                "--export-all",
                "--listen=127.0.0.1",
            ])
            .arg(format!("--port={port}"))
            .arg(format!("--base-path={}", base.display()))
            .arg(base)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "git daemon did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        GitDaemon(child, port)
    }
}

impl Drop for GitDaemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

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

fn wait_for_failpoint(log: &Path, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if std::fs::read_to_string(log)
            .unwrap_or_default()
            .contains("FAILPOINT")
        {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The crash harness over the real pipeline: for every journal record S of a run, the agent is
/// stopped dead right after appending S (`CLEARML_AGENT_FAILPOINTS=after-seq:S`), killed with -9,
/// and restarted. Each time the task must end `completed` with exactly one terminal status call
/// seen by the server, the script must have run once, and every output line must be in the log.
#[test]
fn kill_9_after_every_journal_record_converges_to_one_completion() {
    let env = Env::new();
    let (repo, _, _) = make_repo(&env.root);
    let url = format!("file://{}", repo.display());
    let mut crashed_at = Vec::new();
    // Named points inside effects first (the first task also builds the venv and clones: those
    // are the points that can only be hit once), then after every journal record.
    let named = ["mid-install", "mid-clone", "mid-run", "after-terminal-call"];
    let points: Vec<String> = named
        .iter()
        .map(|s| s.to_string())
        .chain((1..40u64).map(|s| format!("after-seq:{s}")))
        .collect();
    let mut cloned_or_installed_once = true;
    for failpoint in points {
        let seq = failpoint.clone();
        let id = env.make_task(json!({"project": "e2e", "name": format!("crash at {seq}"), "repo": url, "script": "crashy.py", "packages": ["six"], "queue": "default"}));
        let mut first = env.daemon_with(
            "agent-a",
            &[("CLEARML_AGENT_FAILPOINTS", failpoint.as_str())],
        );
        let deadline = Instant::now() + Duration::from_secs(300);
        let hit;
        loop {
            if std::fs::read_to_string(&first.log)
                .unwrap_or_default()
                .contains("FAILPOINT")
            {
                hit = true;
                break;
            }
            if env.server.task(&id)["status"] == "completed" {
                // A point right after the terminal call (or after its record) fires just after
                // the server sets the status: give the agent a moment to print it.
                hit = wait_for_failpoint(&first.log, Duration::from_secs(5));
                break;
            }
            assert!(
                Instant::now() < deadline,
                "seq {seq}: neither the failpoint nor completion: {}",
                first.tail()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        unsafe { libc::kill(first.child.get_mut().id() as i32, libc::SIGKILL) };
        first.child.get_mut().wait().unwrap();
        if !hit {
            assert!(
                failpoint.starts_with("after-seq:")
                    || failpoint == "mid-clone"
                    || failpoint == "mid-install",
                "the named point {failpoint} was never reached"
            );
            if failpoint.starts_with("after-seq:") {
                // The run has fewer records than `seq`: every record has been crashed after.
                break;
            }
            cloned_or_installed_once = false;
            continue;
        }
        crashed_at.push(seq.clone());
        let mut second = env.daemon("agent-a");
        let t = env.wait_final(&id, &second);
        assert_eq!(
            t["status"],
            "completed",
            "crash after record {seq}: {t}\n{}",
            second.tail()
        );
        second.stop();
        let terminal_calls = env
            .server
            .log()
            .lines()
            .filter(|l| {
                l.contains(&format!("task={id} -> 200"))
                    && ["tasks.completed", "tasks.failed", "tasks.stopped"]
                        .iter()
                        .any(|e| l.contains(e))
            })
            .count();
        assert_eq!(
            terminal_calls, 1,
            "crash after record {seq}: exactly one terminal status call"
        );
        let markers = std::fs::read_to_string(env.root.join("markers.txt")).unwrap_or_default();
        let runs = markers.lines().filter(|l| l.starts_with(&id)).count();
        assert_eq!(runs, 1, "crash after record {seq}: the script ran once");
        let console = env.console(&id);
        let mut lines: Vec<&str> = console.lines().filter(|l| l.starts_with("line ")).collect();
        lines.dedup();
        let expected: Vec<String> = (0..20).map(|i| format!("line {i:02}")).collect();
        assert_eq!(
            lines, expected,
            "crash after record {seq}: every line, in order"
        );
    }
    assert!(
        crashed_at.len() >= 14,
        "crashed at the named points and at least 12 records: {crashed_at:?}"
    );
    assert!(
        crashed_at.iter().any(|c| c == "mid-run")
            && crashed_at.iter().any(|c| c == "after-terminal-call")
    );
    // Across every task and every crash: the repository was cloned once and the venv built once
    // (all later runs reuse the caches), whatever point the agent died at.
    let all: String = env
        .server
        .call("tasks.get_all", json!({"only_fields": ["id"]}))
        .ok()["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| env.console(t["id"].as_str().unwrap()))
        .collect();
    eprintln!("crash harness: killed -9 at {crashed_at:?}");
    let clones = all.lines().filter(|l| l.starts_with("Cloning ")).count();
    let builds = all.lines().filter(|l| l.starts_with("Installed ")).count();
    assert!(
        clones <= 2 && builds <= 2,
        "clones {clones}, venv builds {builds} (a crash mid-clone or mid-install may redo one)"
    );
    if cloned_or_installed_once {
        assert!(clones >= 1 && builds >= 1);
    }
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
