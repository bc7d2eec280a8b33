//! Web page benchmarks (`cargo bench --bench web`): the experiments table with 10,000 tasks and
//! the console of a task with 1,000,000 log lines, timed over HTTP against the real binary with
//! one logged-in client (so the time is the server's, plus loopback). The data is written
//! in-process through the API's own handlers and the store before the server starts. Prints a
//! Markdown table.

mod support;
use support::{dir_size, percentile};

#[path = "../tests/common/mod.rs"]
mod common;
use common::server::TestServer;

use clearml_agent::server::api::call_in_process;
use clearml_agent::server::{open_app, ServerOptions};
use serde_json::{json, Map, Value};
use std::time::Instant;

const TASKS: usize = 10_000;
const LOG_LINES: u64 = 1_000_000;
/// Lines stamped with the same millisecond (as a burst of output shipped in one batch is).
const LINES_PER_MS: u64 = 100;
const STATUSES: [&str; 5] = ["created", "queued", "in_progress", "completed", "failed"];

fn obj(v: Value) -> Map<String, Value> {
    v.as_object().unwrap().clone()
}

/// Fills `data`: 10 projects, 10,000 tasks in five statuses with two scalars each, and one task
/// with 1,000,000 log lines. Returns the long task's id and the first log timestamp.
fn fill(data: &std::path::Path) -> (String, u64) {
    let (app, _) = open_app(&ServerOptions::new(data.to_path_buf())).unwrap();
    let call = |ep: &str, p: Value| {
        call_in_process(&app.store, &app.server, &app.semantics, ep, obj(p)).unwrap()
    };
    let projects: Vec<String> = (0..10)
        .map(|i| {
            call(
                "projects.create",
                json!({"name": format!("project {i:02}")}),
            )["id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let queue = call("queues.get_default", json!({}))["id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut long = String::new();
    for i in 0..TASKS {
        let id = call(
            "tasks.create",
            json!({"name": format!("experiment {i:05}"), "type": "training", "project": projects[i % 10],
                   "script": {"repository": "https://github.com/example/repo.git", "branch": "main", "entry_point": "train.py"}}),
        )["id"]
            .as_str()
            .unwrap()
            .to_string();
        let status = STATUSES[i % STATUSES.len()];
        if status != "created" {
            call("tasks.enqueue", json!({"task": id, "queue": queue}));
        }
        if matches!(status, "in_progress" | "completed" | "failed") {
            call("queues.get_next_task", json!({"queue": queue}));
            call("tasks.started", json!({"task": id}));
            for (metric, value) in [("loss", 1.0 / (i + 1) as f64), ("accuracy", 0.5)] {
                call(
                    "events.add",
                    json!({"type": "training_stats_scalar", "task": id, "metric": metric, "variant": "train", "value": value, "iter": 10}),
                );
            }
        }
        match status {
            "completed" => {
                call("tasks.completed", json!({"task": id}));
            }
            "failed" => {
                call("tasks.failed", json!({"task": id}));
            }
            _ => {}
        }
        if i == 0 {
            long = id;
        }
    }
    let t0 = 1_700_000_000_000u64;
    for chunk in 0..(LOG_LINES / 1000) {
        let events: Vec<(u64, Value)> = (0..1000)
            .map(|j| {
                let n = chunk * 1000 + j;
                let ts = t0 + n / LINES_PER_MS;
                (ts, json!({"type": "log", "task": long, "timestamp": ts, "level": "info", "worker": "bench",
                            "msg": format!("step {n:07} loss=0.{:04} some typical training output", n % 10_000)}))
            })
            .collect();
        app.store.append_logs(&long, &events).unwrap();
    }
    app.store.flush().unwrap();
    (long, t0)
}

struct Web {
    http: reqwest::blocking::Client,
    api: String,
    cookie: String,
}

impl Web {
    fn login(s: &TestServer) -> Web {
        let http = reqwest::blocking::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .tcp_nodelay(true)
            .build()
            .unwrap();
        let resp = http
            .post(format!("{}/login", s.api))
            .form(&[
                ("access_key", s.key.as_str()),
                ("secret_key", s.secret.as_str()),
            ])
            .send()
            .unwrap();
        let cookie = resp.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_string();
        Web {
            http,
            api: s.api.clone(),
            cookie,
        }
    }

    /// Median and p95 (ms) of `n` GETs of `path`, and the body size of the last one.
    fn time(&self, path: &str, n: usize) -> (f64, f64, usize, String) {
        let mut ms = Vec::new();
        let mut body = String::new();
        for _ in 0..n {
            let t = Instant::now();
            let resp = self
                .http
                .get(format!("{}{path}", self.api))
                .header("cookie", &self.cookie)
                .send()
                .unwrap();
            assert!(resp.status().is_success(), "{path}: {}", resp.status());
            body = resp.text().unwrap();
            ms.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        ms.sort_by(|a, b| a.partial_cmp(b).unwrap());
        (
            percentile(&ms, 0.5),
            percentile(&ms, 0.95),
            body.len(),
            body,
        )
    }
}

fn main() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("server");
    let t = Instant::now();
    let (long, t0) = fill(&data);
    eprintln!(
        "filled {TASKS} tasks and {LOG_LINES} log lines in {:.1} s ({:.0} MiB on disk)",
        t.elapsed().as_secs_f64(),
        dir_size(&data) as f64 / 1048576.0
    );
    let s = TestServer::start(&data);
    let w = Web::login(&s);
    println!("| page ({TASKS} tasks, {LOG_LINES} log lines) | median ms | p95 ms | bytes |");
    println!("|---|---:|---:|---:|");
    let row = |what: &str, (med, p95, bytes, _): (f64, f64, usize, String)| {
        println!("| {what} | {med:.1} | {p95:.1} | {bytes} |");
    };
    row(
        "experiments table, all projects, newest first, 100 rows",
        w.time("/projects/*/experiments", 30),
    );
    row(
        "experiments table, sorted by name",
        w.time("/projects/*/experiments?sort=name&dir=asc", 30),
    );
    row(
        "experiments table, sorted by duration, page 50",
        w.time("/projects/*/experiments?sort=duration&page=50", 30),
    );
    row(
        "experiments table, text filter `experiment 0999`",
        w.time("/projects/*/experiments?q=experiment%200999", 30),
    );
    row(
        "experiments table, status filter `failed`",
        w.time("/projects/*/experiments?status=failed", 30),
    );
    row(
        "experiments table, all 10,000 rows in one page",
        w.time("/projects/*/experiments?per=10000", 5),
    );
    row(
        "live-status JSON of the 100-row page",
        w.time("/web/api/experiments?project=*", 30),
    );
    row("projects page", w.time("/projects", 30));
    row(
        "experiment page, console tab (HTML, log loads separately)",
        w.time(&format!("/projects/*/experiments/{long}/output/log"), 30),
    );
    let tail = w.time(&format!("/web/api/tasks/{long}/log?limit=300"), 30);
    let page: Value = serde_json::from_str(&tail.3).unwrap();
    assert_eq!(page["events"].as_array().unwrap().len(), 300);
    assert_eq!(page["total"], LOG_LINES);
    row("console: newest 300 lines (first view)", tail);
    let start = page["start"].as_str().unwrap().to_string();
    row(
        "console: 500 earlier lines from the tail",
        w.time(
            &format!("/web/api/tasks/{long}/log?limit=500&before={start}"),
            30,
        ),
    );
    let mid = format!("{}.0", t0 + LOG_LINES / LINES_PER_MS / 2);
    let before_mid = w.time(
        &format!("/web/api/tasks/{long}/log?limit=500&before={mid}"),
        30,
    );
    let first: Value = serde_json::from_str(&before_mid.3).unwrap();
    assert_eq!(
        first["events"][499]["msg"].as_str().unwrap()[..12].to_string(),
        format!("step {:07}", LOG_LINES / 2 - 1)
    );
    row("console: 500 lines before the middle line", before_mid);
    row(
        "console: 500 lines after the middle line",
        w.time(
            &format!("/web/api/tasks/{long}/log?limit=500&after={mid}"),
            30,
        ),
    );
    let search = w.time(
        &format!("/web/api/tasks/{long}/log/search?q=step%200999999"),
        3,
    );
    let found: Value = serde_json::from_str(&search.3).unwrap();
    assert_eq!(
        found["matches"].as_array().unwrap().len(),
        1,
        "{}",
        search.3
    );
    row("console: search the whole log (1 match, full scan)", search);
    row(
        "console: download the whole log as text",
        w.time(&format!("/web/api/tasks/{long}/log.txt"), 1),
    );
}
