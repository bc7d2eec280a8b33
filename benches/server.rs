//! Embedded server benchmarks (`cargo bench --bench server`), against the real binary over HTTP:
//! `queues.get_next_task` and `events.add_batch` throughput and latency with 100 concurrent
//! clients, server RSS idle and after 10,000 tasks with 1,000,000 log lines, and start-up time on
//! that data. The load generator runs on the same machine (2 cores here), so the numbers are a
//! floor. Prints a Markdown table.

mod support;
use support::{dir_size, percentile};

use serde_json::{json, Value};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

const CLIENTS: usize = 100;
const TASKS: usize = 10_000;
const LOG_LINES: usize = 1_000_000;
const LINES_PER_BATCH: usize = 100;

#[path = "../tests/common/mod.rs"]
mod common;
use common::server::TestServer;

/// Starts the server on `data` and times spawn -> listening.
fn start(data: &Path) -> (TestServer, Duration) {
    let t0 = Instant::now();
    let s = TestServer::start(data);
    (s, t0.elapsed())
}

fn rss_mib(s: &TestServer) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", s.pid())).unwrap();
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    kb / 1024.0
}

struct Client {
    http: reqwest::blocking::Client,
    api: String,
    token: String,
}

impl Client {
    fn new(s: &TestServer) -> Client {
        let http = reqwest::blocking::Client::builder()
            .tcp_nodelay(true)
            .build()
            .unwrap();
        let resp: Value = http
            .get(format!("{}/auth.login", s.api))
            .basic_auth(&s.key, Some(&s.secret))
            .send()
            .unwrap()
            .json()
            .unwrap();
        Client {
            http,
            api: s.api.clone(),
            token: resp["data"]["token"].as_str().unwrap().to_string(),
        }
    }
    fn call(&self, endpoint: &str, body: &Value) -> Value {
        let resp = self
            .http
            .get(format!("{}/{endpoint}", self.api))
            .bearer_auth(&self.token)
            .body(body.to_string())
            .send()
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        resp.json::<Value>().unwrap()["data"].clone()
    }
    fn post_lines(&self, body: String) -> Value {
        let resp = self
            .http
            .post(format!("{}/events.add_batch", self.api))
            .bearer_auth(&self.token)
            .header("content-type", "application/json-lines")
            .body(body)
            .send()
            .unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        resp.json::<Value>().unwrap()["data"].clone()
    }
}

/// Runs `work(client_index, client)` on CLIENTS threads; returns wall time and per-call latencies (ms).
fn parallel(
    s: &TestServer,
    work: impl Fn(usize, &Client, &mut Vec<f64>) + Send + Sync + 'static,
) -> (Duration, Vec<f64>) {
    let work = Arc::new(work);
    let clients: Vec<Client> = (0..CLIENTS).map(|_| Client::new(s)).collect();
    let t0 = Instant::now();
    let handles: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(i, c)| {
            let work = work.clone();
            std::thread::spawn(move || {
                let mut lat = Vec::new();
                work(i, &c, &mut lat);
                lat
            })
        })
        .collect();
    let mut all: Vec<f64> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    let wall = t0.elapsed();
    all.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (wall, all)
}

fn timed<T>(lat: &mut Vec<f64>, f: impl FnOnce() -> T) -> T {
    let t = Instant::now();
    let out = f();
    lat.push(t.elapsed().as_secs_f64() * 1000.0);
    out
}

fn main() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let (mut s, _) = start(&data);
    std::thread::sleep(Duration::from_secs(1));
    let idle_rss = rss_mib(&s);
    let admin = Client::new(&s);
    let queue = admin.call("queues.create", &json!({"name": "bench"}))["id"]
        .as_str()
        .unwrap()
        .to_string();

    // 10,000 tasks, created and enqueued by 100 clients.
    let q = queue.clone();
    let (create_wall, _) = parallel(&s, move |i, c, lat| {
        for n in 0..TASKS / CLIENTS {
            let id = timed(lat, || {
                c.call(
                    "tasks.create",
                    &json!({"name": format!("bench {i}-{n}"), "type": "training"}),
                )
            })["id"]
                .as_str()
                .unwrap()
                .to_string();
            timed(lat, || {
                c.call("tasks.enqueue", &json!({"task": id, "queue": q}))
            });
        }
    });
    let task_ids: Vec<String> = admin.call("tasks.get_all", &json!({"only_fields": ["id"]}))
        ["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(task_ids.len(), TASKS);

    // 100 pollers pop the queue dry.
    let q = queue.clone();
    let popped = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = popped.clone();
    let (pop_wall, pop_lat) = parallel(&s, move |_, c, lat| loop {
        let data = timed(lat, || c.call("queues.get_next_task", &json!({"queue": q})));
        if data.get("entry").is_none() {
            return;
        }
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    });
    assert_eq!(popped.load(std::sync::atomic::Ordering::Relaxed), TASKS);

    // 100 senders ship 1,000,000 log lines in batches of 100, spread over the 10,000 tasks.
    let ids = Arc::new(task_ids);
    let (log_wall, log_lat) = parallel(&s, move |i, c, lat| {
        let batches = LOG_LINES / LINES_PER_BATCH / CLIENTS;
        for b in 0..batches {
            let task = &ids[(i * batches + b) % ids.len()];
            let body: Vec<String> = (0..LINES_PER_BATCH)
                .map(|l| {
                    json!({"type": "log", "task": task, "timestamp": 1_795_000_000_000u64 + (b * LINES_PER_BATCH + l) as u64,
                           "level": "DEBUG", "worker": "bench:0", "msg": format!("epoch {b} step {l}: loss=0.{l:04} lr=0.001")})
                    .to_string()
                })
                .collect();
            let added = timed(lat, || c.post_lines(body.join("\n")))["added"]
                .as_u64()
                .unwrap();
            assert_eq!(added as usize, LINES_PER_BATCH);
        }
    });
    std::thread::sleep(Duration::from_secs(1));
    let loaded_rss = rss_mib(&s);
    s.stop();

    // Restart on the same data: time until the API listens, and what a fresh start holds.
    let (mut s, restart) = start(&data);
    let check = Client::new(&s);
    let total = check.call(
        "tasks.get_all",
        &json!({"only_fields": ["id"], "page": 0, "page_size": 1}),
    );
    assert_eq!(total["tasks"].as_array().unwrap().len(), 1);
    std::thread::sleep(Duration::from_secs(1));
    let restarted_rss = rss_mib(&s);
    s.stop();

    let ms = |v: &[f64], p: f64| format!("{:.2}", percentile(v, p));
    println!("| measure | result |");
    println!("|---|---|");
    println!(
        "| create + enqueue 10,000 tasks, 100 clients | {:.0} calls/s ({:.1} s) |",
        (2 * TASKS) as f64 / create_wall.as_secs_f64(),
        create_wall.as_secs_f64()
    );
    println!(
        "| `queues.get_next_task`, 100 concurrent pollers, 10,000 entries | {:.0} calls/s; p50 {} ms, p99 {} ms, max {} ms |",
        pop_lat.len() as f64 / pop_wall.as_secs_f64(),
        ms(&pop_lat, 0.5),
        ms(&pop_lat, 0.99),
        ms(&pop_lat, 1.0)
    );
    println!(
        "| `events.add_batch`, 100 concurrent senders, 100 log lines per batch | {:.0} batches/s = {:.0} lines/s; p50 {} ms, p99 {} ms |",
        log_lat.len() as f64 / log_wall.as_secs_f64(),
        LOG_LINES as f64 / log_wall.as_secs_f64(),
        ms(&log_lat, 0.5),
        ms(&log_lat, 0.99)
    );
    println!("| server RSS idle (fresh data dir) | {idle_rss:.1} MiB |");
    println!("| server RSS after 10,000 tasks + 1,000,000 log lines | {loaded_rss:.1} MiB |");
    println!(
        "| start-up on that data (spawn -> listening) | {:.0} ms |",
        restart.as_secs_f64() * 1000.0
    );
    println!("| server RSS right after that restart | {restarted_rss:.1} MiB |");
    println!(
        "| data dir size | {:.0} MiB |",
        dir_size(&data) as f64 / 1048576.0
    );
}
