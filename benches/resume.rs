//! Crash-resilience benchmarks (`cargo bench --bench resume`), over the real daemon and the
//! embedded server: time from an agent restart (after `kill -9`) to the first output line it
//! ships (re-attached), over 20 crashes; time from a preemption notice to the task requeued; and
//! the cost of journaling (a trivial task end to end, with and without a flush per record).

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use common::server::TestServer;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::percentile;

struct Ctx {
    root: PathBuf,
    server: TestServer,
}

impl Ctx {
    fn make_task(&self, script: &Path, name: &str) -> String {
        let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/pyvenv");
        let out = Command::new(venv.join("bin/python"))
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/make_task.py"))
            .arg(json!({"project": "bench", "name": name, "script": script, "packages": ["six"], "queue": "default"}).to_string())
            .envs(self.server.client_env())
            .env("HOME", self.root.join("home"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        serde_json::from_str::<Value>(text.lines().rev().find(|l| l.starts_with('{')).unwrap())
            .unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string()
    }

    fn daemon(&self, extra: &[(&str, &str)]) -> Child {
        std::fs::create_dir_all(self.root.join("home")).unwrap();
        Command::new(common::bin())
            .args(["daemon", "--queue", "default", "--polling-interval", "0.2"])
            .envs(self.server.client_env())
            .env("HOME", self.root.join("home"))
            .env(
                "CLEARML_AGENT__AGENT__TOOLS_DIR",
                Path::new(env!("CARGO_MANIFEST_DIR")).join("target/agent-tools"),
            )
            .env(
                "UV_CACHE_DIR",
                Path::new(env!("CARGO_MANIFEST_DIR")).join("target/uv-cache"),
            )
            .env("CLEARML_AGENT__AGENT__PREEMPTION__ENABLED", "false")
            .envs(extra.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    }

    fn log_total(&self, id: &str) -> u64 {
        self.server
            .call("events.get_task_log", json!({"task": id, "batch_size": 1}))
            .ok()["total"]
            .as_u64()
            .unwrap_or(0)
    }

    fn console_has(&self, id: &str, needle: &str) -> bool {
        let data = self
            .server
            .call(
                "events.get_task_log",
                json!({"task": id, "batch_size": 10000, "navigate_earlier": false}),
            )
            .ok();
        data["events"].as_array().is_some_and(|e| {
            e.iter()
                .any(|e| e["msg"].as_str().is_some_and(|m| m.contains(needle)))
        })
    }

    fn status(&self, id: &str) -> String {
        self.server.task(id)["status"]
            .as_str()
            .unwrap_or("")
            .to_string()
    }
}

fn wait(what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(600);
    while !f() {
        assert!(Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn kill9(child: &mut Child) {
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    let _ = child.wait();
}

fn stats(v: &mut [f64]) -> String {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    format!(
        "p50 {:.3} s, p90 {:.3} s, max {:.3} s (n={})",
        percentile(v, 0.5),
        percentile(v, 0.9),
        percentile(v, 1.0),
        v.len()
    )
}

fn main() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let server = TestServer::start(&root.join("server"));
    let c = Ctx {
        root: root.clone(),
        server,
    };
    let chatty = root.join("chatty.py");
    std::fs::write(&chatty, "import time\nfor i in range(100000):\n    print('line', i, flush=True)\n    time.sleep(0.05)\n").unwrap();
    let trivial = root.join("trivial.py");
    std::fs::write(&trivial, "print('done')\n").unwrap();

    // 1. kill -9 -> restart -> first line shipped by the new agent.
    let id = c.make_task(&chatty, "chatty");
    let mut d = c.daemon(&[]);
    // The script's own output (not the install log): the run is past its venv build.
    wait("the task runs", || c.console_has(&id, "line 20"));
    let mut reattach = Vec::new();
    for _ in 0..20 {
        kill9(&mut d);
        std::thread::sleep(Duration::from_millis(300));
        let before = c.log_total(&id);
        let t0 = Instant::now();
        d = c.daemon(&[]);
        wait("a line after restart", || c.log_total(&id) > before);
        reattach.push(t0.elapsed().as_secs_f64());
        std::thread::sleep(Duration::from_millis(500));
    }
    c.server.call("tasks.stop", json!({"task": id})).ok();
    wait("the chatty task stops", || c.status(&id) == "stopped");
    kill9(&mut d);

    // 2. Preemption notice -> task back in its queue (default poll interval).
    let mut requeue = Vec::new();
    for i in 0..5 {
        let notice = Arc::new(AtomicBool::new(false));
        let port = common::imds::fake_imds(notice.clone());
        let url = format!("http://127.0.0.1:{port}");
        let id = c.make_task(&chatty, &format!("preempted {i}"));
        let mut d = c.daemon(&[
            ("CLEARML_AGENT__AGENT__PREEMPTION__ENABLED", "true"),
            ("CLEARML_AGENT__AGENT__PREEMPTION__METADATA_URL", &url),
            ("CLEARML_AGENT__AGENT__PREEMPTION__PROVIDER", "aws"),
            ("CLEARML_AGENT__AGENT__STOP_GRACE_PERIOD_SEC", "1"),
        ]);
        wait("the task runs", || c.console_has(&id, "line 10"));
        let t0 = Instant::now();
        notice.store(true, Ordering::SeqCst);
        wait("requeued", || c.status(&id) == "queued");
        requeue.push(t0.elapsed().as_secs_f64());
        let _ = d.wait();
        c.server.call("tasks.dequeue", json!({"task": id})).ok();
        c.server
            .call("tasks.stopped", json!({"task": id, "force": true}))
            .ok();
    }

    // 3. Journaling cost: a trivial task, enqueue -> completed, with and without flushes.
    let mut with = Vec::new();
    let mut without = Vec::new();
    for (round, flush) in ["true", "false", "true", "false"].into_iter().enumerate() {
        let jdir = root
            .join(format!("journal-{round}"))
            .to_string_lossy()
            .to_string();
        let mut d = c.daemon(&[
            ("CLEARML_AGENT__AGENT__JOURNAL__FLUSH", flush),
            ("CLEARML_AGENT_JOURNAL_DIR", &jdir),
        ]);
        for i in 0..5 {
            let id = c.make_task(&trivial, &format!("trivial {round} {i}"));
            let t1 = Instant::now();
            wait("trivial completes", || c.status(&id) == "completed");
            let took = t1.elapsed().as_secs_f64();
            if flush == "true" {
                with.push(took);
            } else {
                without.push(took);
            }
        }
        kill9(&mut d);
    }
    println!("| measure | result |");
    println!("|---|---|");
    println!("| agent restart after kill -9 -> first line shipped again (re-attached), 20 crashes | {} |", stats(&mut reattach));
    println!(
        "| preemption notice -> task requeued (poll every 2 s, 1 s grace), 5 notices | {} |",
        stats(&mut requeue)
    );
    println!(
        "| trivial task, enqueued -> completed, journal flushed per record | {} |",
        stats(&mut with)
    );
    println!("| same, journal not flushed | {} |", stats(&mut without));
}
