//! Our agent side by side with the Python clearml-agent 3.0.3 (`cargo bench --bench agent`), in
//! the same run, against the same embedded server, with the same task (the method of
//! ../shared/reference/python-agent-baseline.md): enqueue -> first line of user code (cold and
//! warm venv cache) and enqueue -> completed; daemon RSS and CPU idle for 60 s; peak RSS of the
//! agent's processes during a run (the user script excluded); delivery of a 200,000-line burst.
//! Needs the pinned Python clients (`scripts/python-venv.sh`) and PyPI. Prints Markdown tables.

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use common::server::TestServer;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::percentile;

const REPS: usize = 3;

fn venv() -> PathBuf {
    common::python_venv()
}

fn now_s() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

#[derive(Clone, Copy, PartialEq)]
enum Agent {
    Rust,
    Python,
}

impl Agent {
    fn name(self) -> &'static str {
        match self {
            Agent::Rust => "clearml-agent (Rust)",
            Agent::Python => "clearml-agent 3.0.3 (Python)",
        }
    }
}

struct Bench {
    root: PathBuf,
    server: TestServer,
    seed: u64,
}

struct Daemon {
    child: Child,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Bench {
    fn env(&self, cmd: &mut Command, home: &Path) {
        cmd.envs(self.server.client_env())
            .env("HOME", home)
            .env("PYTHONUNBUFFERED", "1")
            .current_dir(home);
    }

    fn make_task(&self, home: &Path, script: &Path, name: &str) -> String {
        let mut cmd = Command::new(venv().join("bin/python"));
        cmd.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/make_task.py"))
            .arg(
                json!({"project": "bench", "name": name, "script": script, "packages": ["six"]})
                    .to_string(),
            );
        self.env(&mut cmd, home);
        let out = cmd.output().unwrap();
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

    fn daemon(&self, agent: Agent, home: &Path) -> Daemon {
        std::fs::create_dir_all(home).unwrap();
        let log = std::fs::File::create(home.join("daemon.log")).unwrap();
        let mut cmd = match agent {
            Agent::Rust => {
                let mut c = Command::new(common::bin());
                c.args(["daemon", "--queue", "default", "--foreground"])
                    .env("CLEARML_AGENT__AGENT__TOOLS_DIR", self.root.join("tools"))
                    // Never the cloud metadata address from a benchmark.
                    .env("CLEARML_AGENT__AGENT__PREEMPTION__ENABLED", "false")
                    .env("CLEARML_WORKER_ID", "rust:0");
                c
            }
            Agent::Python => {
                let mut c = Command::new(venv().join("bin/clearml-agent"));
                c.args(["daemon", "--queue", "default", "--foreground"])
                    .env(
                        "PATH",
                        format!(
                            "{}:{}",
                            venv().join("bin").display(),
                            std::env::var("PATH").unwrap_or_default()
                        ),
                    )
                    .env("CLEARML_WORKER_ID", "python:0");
                c
            }
        };
        self.env(&mut cmd, home);
        cmd.stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log));
        Daemon {
            child: cmd.spawn().unwrap(),
        }
    }

    fn random_phase(&mut self) -> Duration {
        self.seed = self
            .seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        Duration::from_millis((self.seed >> 33) % 5000)
    }

    /// Enqueues `id` and waits for it to complete: (enqueue time, USER_START, completed time).
    fn run(&mut self, id: &str) -> (f64, f64, f64) {
        std::thread::sleep(self.random_phase());
        self.server
            .call(
                "tasks.enqueue",
                json!({"task": id, "queue_name": "default"}),
            )
            .ok();
        let enqueued = now_s();
        let deadline = Instant::now() + Duration::from_secs(900);
        loop {
            let t = self.server.task(id);
            match t["status"].as_str() {
                Some("completed") => {
                    let done =
                        humantime::parse_rfc3339(t["status_changed"].as_str().unwrap()).unwrap();
                    let done = done
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap()
                        .as_secs_f64();
                    let log = self
                        .server
                        .call(
                            "events.get_task_log",
                            json!({"task": id, "batch_size": 100000, "navigate_earlier": false}),
                        )
                        .ok();
                    let start = log["events"].as_array().unwrap().iter().find_map(|e| {
                        e["msg"].as_str().and_then(|m| {
                            m.lines().find_map(|l| {
                                l.strip_prefix("USER_START ")
                                    .and_then(|v| v.trim().parse::<f64>().ok())
                            })
                        })
                    });
                    return (enqueued, start.expect("USER_START line"), done);
                }
                Some("failed") | Some("stopped") => panic!("task {id} ended {t}"),
                _ => {}
            }
            assert!(Instant::now() < deadline, "task {id} did not finish");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// All descendants of `pid` (and itself), from /proc.
fn tree(pid: u32) -> Vec<u32> {
    let mut parent = std::collections::HashMap::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(p) = e.file_name().to_string_lossy().parse::<u32>() {
            if let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) {
                if let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) {
                    if let Some(pp) = rest
                        .split_whitespace()
                        .nth(1)
                        .and_then(|x| x.parse::<u32>().ok())
                    {
                        parent.insert(p, pp);
                    }
                }
            }
        }
    }
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        let cur = out[i];
        out.extend(parent.iter().filter(|(_, pp)| **pp == cur).map(|(p, _)| *p));
        i += 1;
    }
    out
}

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

fn cpu_ticks(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let rest = &s[s.rfind(')')? + 2..];
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
        })
        .unwrap_or(0)
}

fn is_user_script(pid: u32, marker: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).contains(marker))
        .unwrap_or(false)
}

/// Samples the daemon's process tree (user scripts excluded) until `stop` is set: peak RSS in MiB.
fn peak_rss(
    pid: u32,
    marker: &'static str,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<f64> {
    std::thread::spawn(move || {
        let mut peak = 0;
        while !stop.load(std::sync::atomic::Ordering::SeqCst) {
            let total: u64 = tree(pid)
                .into_iter()
                .filter(|p| !is_user_script(*p, marker))
                .map(rss_kb)
                .sum();
            peak = peak.max(total);
            std::thread::sleep(Duration::from_millis(50));
        }
        peak as f64 / 1024.0
    })
}

#[derive(Default)]
struct Results {
    cold_first: Vec<f64>,
    cold_total: Vec<f64>,
    warm_first: Vec<f64>,
    warm_total: Vec<f64>,
    idle_rss: f64,
    idle_cpu: f64,
    peak_rss: f64,
    log_delay: f64,
}

fn med(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    percentile(&v, 0.5)
}

fn main() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let server = TestServer::start(&root.join("server"));
    let mut b = Bench {
        root: root.clone(),
        server,
        seed: 42,
    };
    let stamp = root.join("stamp.py");
    std::fs::write(&stamp, "import time; print('USER_START', time.time(), flush=True)\nimport six\nprint('six', six.__version__)\n").unwrap();
    let burst = root.join("burst.py");
    std::fs::write(&burst, "import sys, time\nfor i in range(200000):\n    sys.stdout.write('burst %06d\\n' % i)\nsys.stdout.flush()\nprint('LAST', time.time(), flush=True)\ntime.sleep(8)\n").unwrap();
    let mut results: Vec<(Agent, Results)> = Vec::new();
    for agent in [Agent::Rust, Agent::Python] {
        let mut r = Results::default();
        for rep in 0..REPS {
            let home = root.join(format!(
                "{}-home-{rep}",
                if agent == Agent::Rust { "rust" } else { "py" }
            ));
            let d = b.daemon(agent, &home);
            if rep == 0 {
                // Idle: 60 s after a settling pause, the daemon's whole tree.
                std::thread::sleep(Duration::from_secs(5));
                let pids = tree(d.child.id());
                let cpu0: u64 = pids.iter().map(|p| cpu_ticks(*p)).sum();
                let mut rss = Vec::new();
                for _ in 0..60 {
                    rss.push(
                        tree(d.child.id()).into_iter().map(rss_kb).sum::<u64>() as f64 / 1024.0,
                    );
                    std::thread::sleep(Duration::from_secs(1));
                }
                let cpu1: u64 = tree(d.child.id()).iter().map(|p| cpu_ticks(*p)).sum();
                r.idle_rss = med(&rss);
                r.idle_cpu = (cpu1.saturating_sub(cpu0)) as f64 / 100.0;
            }
            let cold = b.make_task(&home, &stamp, &format!("cold {rep}"));
            let (e, s, c) = b.run(&cold);
            r.cold_first.push(s - e);
            r.cold_total.push(c - e);
            let warm = b.make_task(&home, &stamp, &format!("warm {rep}"));
            let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let sampler =
                (rep == REPS - 1).then(|| peak_rss(d.child.id(), "stamp.py", stop.clone()));
            let (e, s, c) = b.run(&warm);
            stop.store(true, std::sync::atomic::Ordering::SeqCst);
            if let Some(h) = sampler {
                r.peak_rss = h.join().unwrap();
            }
            r.warm_first.push(s - e);
            r.warm_total.push(c - e);
            if rep == REPS - 1 {
                let id = b.make_task(&home, &burst, "burst");
                b.server
                    .call(
                        "tasks.enqueue",
                        json!({"task": id, "queue_name": "default"}),
                    )
                    .ok();
                // Poll the log until all 200,000 lines are visible; delay from the LAST stamp.
                let deadline = Instant::now() + Duration::from_secs(600);
                let (mut last, mut all_at) = (None, None);
                while all_at.is_none() {
                    assert!(Instant::now() < deadline, "burst lines never all arrived");
                    let log = b
                        .server
                        .call(
                            "events.get_task_log",
                            json!({"task": id, "batch_size": 100000, "navigate_earlier": false}),
                        )
                        .ok();
                    let text: String = log["events"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .filter_map(|e| e["msg"].as_str())
                        .collect();
                    if last.is_none() {
                        last = text.lines().find_map(|l| {
                            l.strip_prefix("LAST ")
                                .and_then(|v| v.trim().parse::<f64>().ok())
                        });
                    }
                    if text.lines().filter(|l| l.starts_with("burst ")).count() == 200_000
                        && last.is_some()
                    {
                        all_at = Some(now_s());
                    }
                    std::thread::sleep(Duration::from_millis(250));
                }
                r.log_delay = all_at.unwrap() - last.unwrap_or(0.0);
                std::thread::sleep(Duration::from_secs(10));
            }
            drop(d);
        }
        results.push((agent, r));
    }
    let row = |label: &str, f: &dyn Fn(&Results) -> String| {
        println!("| {label} | {} | {} |", f(&results[0].1), f(&results[1].1));
    };
    let rng = |v: &[f64]| {
        let (lo, hi) = v
            .iter()
            .fold((f64::MAX, f64::MIN), |(a, b), x| (a.min(*x), b.max(*x)));
        format!("{:.2} s ({lo:.2}-{hi:.2}, {})", med(v), v.len())
    };
    println!(
        "| measure (median (min-max, n)) | {} | {} |",
        results[0].0.name(),
        results[1].0.name()
    );
    println!("|---|---|---|");
    row("cold venv cache: enqueue -> first user line", &|r| {
        rng(&r.cold_first)
    });
    row("cold venv cache: enqueue -> completed", &|r| {
        rng(&r.cold_total)
    });
    row("warm venv cache: enqueue -> first user line", &|r| {
        rng(&r.warm_first)
    });
    row("warm venv cache: enqueue -> completed", &|r| {
        rng(&r.warm_total)
    });
    row("idle daemon RSS (median of 60 samples)", &|r| {
        format!("{:.1} MiB", r.idle_rss)
    });
    row("idle daemon CPU over 60 s", &|r| {
        format!("{:.2} CPU-s", r.idle_cpu)
    });
    row("peak RSS of the agent's processes, warm run", &|r| {
        format!("{:.1} MiB", r.peak_rss)
    });
    row(
        "200,000 lines: last printed -> all visible in the server",
        &|r| format!("{:.2} s", r.log_delay),
    );
}
