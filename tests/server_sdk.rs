//! The embedded server against the real Python clients from PyPI: the `clearml` SDK (2.1.12) and
//! the `clearml-agent` (3.0.3), installed by `scripts/python-venv.sh` (the README's test command
//! and `.ci/run` run it first). Nothing here is mocked: the agent builds a real venv with pip,
//! runs the task as a child process and reports back through our server.

mod common;

use common::server::TestServer;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn venv() -> PathBuf {
    common::python_venv()
}

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/python")
        .join(name)
}

/// The environment of a Python client: the server's exports, a private HOME, a shared pip cache.
fn client(cmd: &mut Command, s: &TestServer, home: &Path) {
    cmd.envs(s.client_env())
        .env("HOME", home)
        .env(
            "PIP_CACHE_DIR",
            Path::new(env!("CARGO_MANIFEST_DIR")).join("target/pip-cache"),
        )
        .env("PYTHONUNBUFFERED", "1")
        .current_dir(home);
}

/// Runs a helper script and returns the JSON object it prints last.
fn python(s: &TestServer, home: &Path, name: &str, args: &[&str]) -> Value {
    python_file(s, home, &script(name), args)
}

fn python_file(s: &TestServer, home: &Path, file: &Path, args: &[&str]) -> Value {
    let name = file.file_name().unwrap().to_string_lossy().to_string();
    let mut cmd = Command::new(venv().join("bin/python"));
    cmd.arg(file).args(args);
    client(&mut cmd, s, home);
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{name} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let last = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("{name} printed no JSON:\n{stdout}"));
    serde_json::from_str(last).unwrap()
}

struct PythonAgent {
    child: Child,
    log: PathBuf,
}

impl PythonAgent {
    fn start(s: &TestServer, home: &Path) -> PythonAgent {
        let log = home.join("agent.log");
        let out = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new(venv().join("bin/clearml-agent"));
        cmd.args(["daemon", "--queue", "default", "--foreground"])
            .env(
                "PATH",
                format!(
                    "{}:{}",
                    venv().join("bin").display(),
                    std::env::var("PATH").unwrap_or_default()
                ),
            )
            .stdout(Stdio::from(out.try_clone().unwrap()))
            .stderr(Stdio::from(out));
        client(&mut cmd, s, home);
        PythonAgent {
            child: cmd.spawn().unwrap(),
            log,
        }
    }

    fn tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for PythonAgent {
    fn drop(&mut self) {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls the server until `done(task)` holds; a deadline only keeps a broken run from hanging CI.
fn wait_for(
    s: &TestServer,
    id: &str,
    agent: &PythonAgent,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let task = s.task(id);
        if done(&task) {
            return task;
        }
        assert!(
            Instant::now() < deadline,
            "task {id} never reached {what}: {task}\nagent log:\n{}",
            agent.tail()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn sdk_creates_and_the_python_agent_runs_and_aborts_tasks() {
    let tmp = tempfile::tempdir().unwrap();
    let s = TestServer::start(&tmp.path().join("server"));
    let home = tmp.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let job = home.join("job.py");
    std::fs::write(
        &job,
        "import six\nprint('hello from the task', six.__version__)\n",
    )
    .unwrap();

    // SDK: Task.create (script + packages), parameters, Task.enqueue, get_status, Task.get_tasks.
    let flow = python(
        &s,
        &home,
        "sdk_flow.py",
        &[job.to_str().unwrap(), "demo", "remote job"],
    );
    let id = flow["id"].as_str().unwrap().to_string();
    assert_eq!(flow["created_status"], "created");
    assert_eq!(flow["queued_status"], "queued");
    assert_eq!(flow["listed"], serde_json::json!([id]));
    assert_eq!(flow["params"]["General/lr"], "0.25");
    assert_eq!(flow["params"]["General/epochs"], "3");
    assert_eq!(flow["params"]["Extra/name"], "adam");
    let stored = s.task(&id);
    assert_eq!(
        stored["script"]["requirements"]["pip"]
            .as_str()
            .map(|p| p.contains("six")),
        Some(true),
        "{stored}"
    );

    // The real Python agent pulls it, builds a venv, runs it; the SDK reads the console back.
    let agent = PythonAgent::start(&s, &home);
    let done = wait_for(&s, &id, &agent, "a final status", |t| {
        matches!(
            t["status"].as_str(),
            Some("completed" | "failed" | "stopped")
        )
    });
    assert_eq!(done["status"], "completed", "agent log:\n{}", agent.tail());
    assert_eq!(done["status_reason"], "worker execution done");
    let status = python(&s, &home, "status.py", &[&id, "200"]);
    assert_eq!(status["status"], "completed");
    let console: Vec<String> = status["console"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap().to_string())
        .collect();
    assert!(
        console.iter().any(|l| l.contains("hello from the task")),
        "console: {console:?}"
    );
    assert!(
        console.iter().any(|l| l.contains("pulled from")),
        "the agent's own lines are there too"
    );

    // Abort: a long task, stopped from the SDK while it prints; the agent kills it and reports.
    let sleeper = home.join("sleeper.py");
    std::fs::write(&sleeper, "import time\nfor i in range(600):\n    print('tick', i, flush=True)\n    time.sleep(0.5)\n").unwrap();
    let flow = python(
        &s,
        &home,
        "sdk_flow.py",
        &[sleeper.to_str().unwrap(), "demo", "sleeper job"],
    );
    let long = flow["id"].as_str().unwrap().to_string();
    wait_for(&s, &long, &agent, "in_progress with output", |t| {
        t["status"] == "in_progress"
            && s.call(
                "events.get_task_log",
                serde_json::json!({"task": long, "batch_size": 500}),
            )
            .ok()["events"]
                .as_array()
                .is_some_and(|e| {
                    e.iter()
                        .any(|ev| ev["msg"].as_str().is_some_and(|m| m.contains("tick 2")))
                })
    });
    python(&s, &home, "stop.py", &[&long]);
    let stopped = wait_for(&s, &long, &agent, "stopped", |t| {
        t["status"] != "in_progress"
    });
    assert_eq!(stopped["status"], "stopped", "agent log:\n{}", agent.tail());
    assert_eq!(stopped["status_reason"], "task was stopped by tasks.stop");
    let after = python(&s, &home, "status.py", &[&long, "50"]);
    assert_eq!(after["status"], "stopped");
}

#[test]
fn local_task_init_reports_scalars_and_uploads_an_artifact() {
    let tmp = tempfile::tempdir().unwrap();
    let s = TestServer::start(&tmp.path().join("server"));
    let home = tmp.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    // Run a copy outside this repository: the SDK analyses the script's git repository (and
    // would walk this checkout's target/ dir), which a user's standalone script does not have.
    let local = home.join("local_run.py");
    std::fs::copy(script("local_run.py"), &local).unwrap();
    let run = python_file(&s, &home, &local, &["demo", "local run"]);
    let id = run["id"].as_str().unwrap().to_string();
    let back = python(&s, &home, "readback.py", &[&id]);
    assert_eq!(back["status"], "completed");
    assert_eq!(
        back["scalars"]["loss"]["train"]["x"],
        serde_json::json!([0, 1, 2, 3, 4])
    );
    assert_eq!(back["scalars"]["loss"]["train"]["y"][4], 0.2);
    assert_eq!(back["last_metrics"]["acc"]["val"]["last"], 0.9);
    assert_eq!(back["params"]["General/lr"], "0.1");
    assert_eq!(
        back["artifact"],
        serde_json::json!({"rows": 42, "ok": true})
    );
    let url = back["artifact_url"].as_str().unwrap();
    assert!(
        url.starts_with(&s.files),
        "uploaded to our files server: {url}"
    );
    let on_disk = s
        .data_dir
        .join("files")
        .join(format!("demo/local run.{id}/artifacts/stats/stats.json"));
    assert!(on_disk.exists(), "{} exists", on_disk.display());
}
