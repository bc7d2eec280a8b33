//! The agent's end-to-end fixtures: the embedded server, git repositories made by the test,
//! daemons of the real binary with their own journal, runs and venv dirs, the task console.
#![allow(dead_code)]

use super::server::TestServer;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn venv() -> PathBuf {
    super::python_venv()
}

/// The pid a test script wrote to `file`.
pub fn read_pid(file: &Path) -> i32 {
    std::fs::read_to_string(file)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// Waits (bounded) until `pid` is gone or a zombie.
pub fn wait_gone(pid: i32, context: &dyn Fn() -> String) {
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

pub fn shared_cache(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target")
        .join(name)
}

pub fn git(dir: &Path, args: &[&str]) -> String {
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
pub fn make_repo(root: &Path) -> (PathBuf, String, String) {
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
    // Six lines over about 6 s: the task whose end an outage surrounds.
    std::fs::write(
        repo.join("short.py"),
        "import os, time\nwith open(os.environ['MARKER_FILE'], 'a') as f:\n    f.write(os.environ['CLEARML_TASK_ID'] + ' ' + str(os.getpid()) + '\\n')\nfor i in range(6):\n    print('out %d' % i, flush=True)\n    time.sleep(1)\n",
    )
    .unwrap();
    // 20 lines over 3 s, with a word a diff changes: the crash harness's task.
    std::fs::write(repo.join("word.py"), "WORD = 'plain'\n").unwrap();
    std::fs::write(
        repo.join("patchme.py"),
        "import os, time\nfrom word import WORD\nwith open(os.environ['MARKER_FILE'], 'a') as f:\n    f.write(os.environ['CLEARML_TASK_ID'] + ' ' + str(os.getpid()) + '\\n')\nfor i in range(20):\n    print('line %02d %s' % (i, WORD), flush=True)\n    time.sleep(0.15)\n",
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

pub struct Env {
    pub _tmp: tempfile::TempDir,
    pub root: PathBuf,
    pub server: TestServer,
}

impl Env {
    pub fn new() -> Env {
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

    pub fn client_env(&self, cmd: &mut Command) {
        cmd.envs(self.server.client_env())
            .env("HOME", self.root.join("home"))
            .env("PIP_CACHE_DIR", shared_cache("pip-cache"))
            .env("UV_CACHE_DIR", shared_cache("uv-cache"))
            .env("MARKER_FILE", self.root.join("markers.txt"))
            .env("PID_FILE", self.root.join("sleeper.pid"))
            .env("BURST_FLAG", self.root.join("burst.flag"));
    }

    pub fn make_task(&self, spec: Value) -> String {
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

    pub fn daemon(&self, name: &str) -> Daemon {
        self.daemon_with(name, &[])
    }

    pub fn daemon_with(&self, name: &str, extra_env: &[(&str, &str)]) -> Daemon {
        let log = self.root.join(format!("{name}.log"));
        let mut cmd = Command::new(super::bin());
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
    pub fn run_until_then_kill(
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
    pub fn wait_console(&self, id: &str, needle: &str, daemon: &Daemon) {
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

    pub fn wait_final(&self, id: &str, daemon: &Daemon) -> Value {
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
    pub fn inspect(&self, task: Option<&str>) -> Value {
        let out = Command::new(super::bin())
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

    pub fn console(&self, id: &str) -> String {
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

pub struct Daemon {
    pub child: std::cell::RefCell<Child>,
    pub log: PathBuf,
}

impl Daemon {
    pub fn tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
    pub fn stop(&mut self) {
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
pub struct GitDaemon(pub Child, pub u16);

/// A loopback port nothing listens on (yet).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl GitDaemon {
    pub fn start(base: &Path) -> GitDaemon {
        Self::start_on(base, free_port())
    }

    pub fn start_on(base: &Path, port: u16) -> GitDaemon {
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

/// The diff the crash harness's tasks carry: applied twice, it would not apply.
pub const DIFF_WORD: &str = "diff --git a/word.py b/word.py\n--- a/word.py\n+++ b/word.py\n@@ -1 +1 @@\n-WORD = 'plain'\n+WORD = 'patched'\n";

/// Waits until `log` shows a failpoint (true) or `done()` holds (then a few seconds more for a
/// failpoint that fires just after the server saw the effect).
pub fn wait_failpoint_or(
    log: &Path,
    done: &dyn Fn() -> bool,
    context: &dyn Fn() -> String,
) -> bool {
    let hit = || {
        std::fs::read_to_string(log)
            .unwrap_or_default()
            .contains("FAILPOINT")
    };
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        if hit() {
            return true;
        }
        if done() {
            let grace = Instant::now() + Duration::from_secs(5);
            while Instant::now() < grace {
                if hit() {
                    return true;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            return false;
        }
        assert!(
            Instant::now() < deadline,
            "neither a failpoint nor the end: {}",
            context()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Daemon {
    /// kill -9, and reap.
    pub fn kill9(&mut self) {
        let child = self.child.get_mut();
        unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
        let _ = child.wait();
    }

    pub fn signal(&mut self, sig: i32) {
        unsafe { libc::kill(self.child.get_mut().id() as i32, sig) };
    }
}

impl Env {
    /// How many times the task's script started (lines it wrote to the marker file).
    pub fn starts(&self, id: &str) -> usize {
        std::fs::read_to_string(self.root.join("markers.txt"))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.split(' ').next() == Some(id))
            .count()
    }

    /// The task's console lines starting with `prefix`, adjacent repeats (a batch sent again
    /// after a crash) dropped.
    pub fn lines(&self, id: &str, prefix: &str) -> Vec<String> {
        let mut lines: Vec<String> = self
            .console(id)
            .lines()
            .filter(|l| l.starts_with(prefix))
            .map(str::to_string)
            .collect();
        lines.dedup();
        let mut seen: Vec<String> = Vec::new();
        for l in lines {
            if !seen.contains(&l) {
                seen.push(l);
            }
        }
        seen
    }

    pub fn status(&self, id: &str) -> String {
        self.server.task(id)["status"]
            .as_str()
            .unwrap_or("")
            .to_string()
    }
}
