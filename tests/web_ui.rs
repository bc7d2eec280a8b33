//! The web pages in headless Chromium (over WebDriver, from Rust) against a real server filled by
//! the real SDK (clearml 2.1.12), and, for the console and abort, a task run by our own daemon.
//! Screenshots of every page go to target/screenshots/. Without chromium and chromedriver the
//! browser tests skip, saying so; the HTTP-level tests (login, CSRF, /metrics) always run.

mod common;

use common::server::TestServer;
use common::web::Browser;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Env {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    server: TestServer,
}

impl Env {
    fn new() -> Env {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        let server = TestServer::start(&root.join("server"));
        std::fs::create_dir_all(root.join("home")).unwrap();
        Env {
            _tmp: tmp,
            root,
            server,
        }
    }

    fn python(&self, script: &str, args: &[&str]) -> Value {
        let out = Command::new(common::python_venv().join("bin/python"))
            .arg(
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("tests/python")
                    .join(script),
            )
            .args(args)
            .envs(self.server.client_env())
            .env("HOME", self.root.join("home"))
            .current_dir(&self.root)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{script} failed: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let line = stdout.lines().rev().find(|l| l.starts_with('{')).unwrap();
        serde_json::from_str(line).unwrap()
    }

    fn status(&self, id: &str) -> String {
        self.server.task(id)["status"].as_str().unwrap().to_string()
    }

    fn queue_entries(&self) -> Vec<String> {
        let q = self
            .server
            .call(
                "queues.get_by_id",
                json!({"queue": self.server.default_queue()}),
            )
            .ok();
        q["queue"]["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["task"].as_str().unwrap().to_string())
            .collect()
    }
}

fn row_status(b: &Browser, id: &str) -> String {
    b.attr(&format!("tr[data-id=\"{id}\"]"), "data-status")
        .unwrap_or_default()
}

/// Login, the experiments table with the SDK's tasks and their statuses (updated live), the
/// experiment tabs (the SDK's own results-page link included), sorting and filtering, the queue
/// buttons, every task action, and the workers page.
#[test]
fn sdk_filled_pages_and_actions_in_chromium() {
    let env = Env::new();
    let s = &env.server;
    let Some(b) = Browser::start(&s.api) else {
        return;
    };
    let filled = env.python("web_fill.py", &["web demo"]);
    let id = |name: &str| filled["ids"][name].as_str().unwrap().to_string();
    let link = filled["link"].as_str().unwrap();
    assert!(
        link.starts_with(&format!("{}/projects/", s.api))
            && link.ends_with(&format!("/tasks/{}/output/log", id("local run"))),
        "the SDK builds its results-page link on CLEARML_WEB_HOST: {link}"
    );

    // Every page needs the login; a wrong secret is refused.
    b.goto("/projects/*/experiments");
    assert!(b.url().contains("/login?next="), "{}", b.url());
    b.screenshot("login");
    b.fill("#access_key", &s.key);
    b.fill("#secret_key", "not-the-secret");
    b.click("#login-submit");
    b.wait_text("#login-error", "Wrong access key or secret key", 10);
    // The form (re-rendered with the error) still leads back to the page first asked for.
    b.fill("#access_key", &s.key);
    b.fill("#secret_key", &s.secret);
    b.click("#login-submit");
    b.wait_until(10, "the login to lead back", |b| {
        b.url().ends_with("/projects/*/experiments")
    });
    assert!(!b.url().contains(&s.secret) && !b.url().contains(&s.key));

    // The experiments table: every task with its status.
    b.wait_until(10, "the table", |b| b.count("#experiments tbody tr") == 6);
    for (name, status) in [
        ("local run", "completed"),
        ("draft one", "created"),
        ("queued a", "queued"),
        ("queued b", "queued"),
        ("failed one", "failed"),
        ("aborted one", "stopped"),
    ] {
        assert_eq!(row_status(&b, &id(name)), status, "{name}");
    }
    let failed_row = b.text(&format!("tr[data-id=\"{}\"]", id("failed one")));
    assert!(
        failed_row.contains("Failed") && failed_row.contains("failed one"),
        "{failed_row}"
    );
    let run_row = b.text(&format!("tr[data-id=\"{}\"]", id("local run")));
    assert!(
        run_row.contains("loss/train 0.2"),
        "last scalar shown: {run_row}"
    );
    b.screenshot("experiments");

    // Live: a status change made elsewhere shows without a reload.
    s.call("tasks.enqueue", json!({"task": id("draft one")}))
        .ok();
    b.wait_until(20, "the draft to show as pending", |b| {
        row_status(b, &id("draft one")) == "queued"
    });

    // Sort by name, filter by status.
    b.click("#experiments th a[href*=\"sort=name\"]");
    b.wait_until(10, "sorted by name", |b| b.url().contains("sort=name"));
    assert_eq!(
        b.text("#experiments tbody tr:first-child td.name a"),
        "aborted one"
    );
    b.select("#filter select[name=status]", "failed");
    b.click("#filter button[type=submit]");
    b.wait_until(10, "the filter", |b| b.count("#experiments tbody tr") == 1);
    assert_eq!(row_status(&b, &id("failed one")), "failed");

    // The SDK's link opens the run's console.
    b.goto(link);
    b.wait_text("#console-lines", "hello from the local run", 20);
    assert_eq!(b.text("#task-status"), "Completed");
    b.screenshot("experiment-console");
    let base = format!("/projects/*/experiments/{}", id("local run"));
    b.goto(&format!("{base}/hyper-params/hyper-param"));
    let params = b.text("table.params");
    assert!(params.contains("lr") && params.contains("0.1"), "{params}");
    b.screenshot("experiment-configuration");
    b.goto(&format!("{base}/artifacts"));
    let uri = b
        .attr("#artifacts a", "data-uri")
        .expect("the artifact's URI");
    assert!(
        uri.starts_with(&s.files),
        "stored on our files server: {uri}"
    );
    // The link downloads through the page's session (the files server wants API credentials):
    // fetched from inside the page, with its cookie.
    let body = b.js("return fetch(document.querySelector('#artifacts a').href).then(r => r.text().then(t => r.status + ' ' + t));");
    let body = body.as_str().unwrap_or_default().to_string();
    assert!(
        body.starts_with("200 ") && body.contains("rows") && body.contains("42"),
        "the artifact downloads: {body}"
    );
    b.screenshot("experiment-artifacts");
    b.goto(&format!("{base}/info-output"));
    let scalars = b.text("#last-scalars");
    assert!(
        scalars.contains("loss") && scalars.contains("0.2"),
        "{scalars}"
    );
    b.goto(&format!(
        "/projects/*/experiments/{}/execution",
        id("queued a")
    ));
    let exec = b.text("#execution");
    for want in ["https://github.com/example/repo.git", "main", "train.py"] {
        assert!(exec.contains(want), "{want} in {exec}");
    }
    assert!(b.text("#requirements").contains("six==1.16.0"));
    b.screenshot("experiment-execution");

    // Queues: entries in order, to front, remove.
    b.goto("/queues");
    let order = || {
        let v = b.js("return Array.from(document.querySelectorAll('section.queue[data-queue=default] tr[data-task]')).map(r => r.dataset.task)");
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        order(),
        vec![id("queued a"), id("queued b"), id("draft one")]
    );
    b.screenshot("queues");
    b.click(&format!(
        "button[data-action=front][data-task=\"{}\"]",
        id("queued b")
    ));
    b.wait_text("#flash", "Moved to the front", 10);
    assert_eq!(
        env.queue_entries(),
        vec![id("queued b"), id("queued a"), id("draft one")]
    );
    assert_eq!(order(), env.queue_entries());
    b.click(&format!(
        "button[data-action=remove][data-task=\"{}\"]",
        id("queued a")
    ));
    b.wait_text("#flash", "Removed", 10);
    assert_eq!(env.queue_entries(), vec![id("queued b"), id("draft one")]);
    assert_eq!(env.status(&id("queued a")), "created", "back to draft");

    // Task actions, each through the API's rules.
    let page = |name: &str| format!("/projects/*/experiments/{}/execution", id(name));
    b.goto(&page("aborted one"));
    b.select("#enqueue-queue", &s.default_queue());
    b.click("#action-enqueue");
    b.wait_text("#flash", "Enqueued", 10);
    assert_eq!(env.status(&id("aborted one")), "queued");
    b.click("#action-dequeue");
    b.wait_text("#flash", "Dequeued", 10);
    assert_eq!(env.status(&id("aborted one")), "stopped");
    b.goto(&page("queued b"));
    b.click("#action-abort");
    b.wait_text("#flash", "Aborted", 10);
    assert_eq!(env.status(&id("queued b")), "stopped");
    assert_eq!(env.queue_entries(), vec![id("draft one")]);
    b.goto(&page("failed one"));
    b.click("#action-reset");
    b.wait_text("#flash", "Reset", 10);
    assert_eq!(env.status(&id("failed one")), "created");
    b.click("#action-clone");
    b.wait_text("#flash", "Cloned", 10);
    let clone_id = b.text("#task-id");
    assert_ne!(clone_id, id("failed one"));
    let clone = s.task(&clone_id);
    assert_eq!(
        (clone["name"].as_str(), clone["status"].as_str()),
        (Some("failed one (Clone)"), Some("created"))
    );
    b.goto(&page("aborted one"));
    b.click("#action-archive");
    b.wait_text("#flash", "Archived", 10);
    b.goto("/projects/*/experiments");
    assert_eq!(
        b.count(&format!("tr[data-id=\"{}\"]", id("aborted one"))),
        0,
        "archived tasks leave the table"
    );
    b.goto("/projects/*/experiments?archived=1");
    assert_eq!(
        b.count(&format!("tr[data-id=\"{}\"]", id("aborted one"))),
        1
    );
    // A transition the API refuses is reported on the page: a published task cannot be enqueued.
    s.call(
        "tasks.publish",
        json!({"task": id("local run"), "force": true}),
    )
    .ok();
    b.goto(&format!("{base}/execution"));
    b.click("#action-enqueue");
    b.wait_text("#flash", "Invalid status change", 10);
    assert_eq!(env.status(&id("local run")), "published");

    // Workers: what the last status report said.
    s.call(
        "workers.status_report",
        json!({"worker": "gpu-box:0", "timestamp": 1, "task": id("local run"), "queues": [s.default_queue()],
               "machine_stats": {"cpu_usage": [37.5], "memory_used": 2048, "memory_free": 1024,
                                 "gpu_usage": [50.0, 70.0], "gpu_memory_used": [1000, 1000], "gpu_memory_free": [3000, 3000]}}),
    )
    .ok();
    b.goto("/workers");
    let w = b.text("tr[data-worker=\"gpu-box:0\"]");
    for want in ["38%", "2.0 GB", "60% (2 GPU)", "local run", "default"] {
        assert!(w.contains(want), "{want} in {w}");
    }
    b.screenshot("workers");
    b.goto("/projects");
    assert!(b.text("#projects").contains("web demo"));
    b.screenshot("projects");
}

fn git(dir: &Path, args: &[&str]) {
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
}

struct Daemon(Child, PathBuf);

impl Daemon {
    fn tail(&self) -> String {
        let text = std::fs::read_to_string(&self.1).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A task run by our daemon: its console grows while the page is open (no reload), the workers
/// page shows the worker running it, and Abort on the page stops the user process.
#[test]
fn console_follows_a_daemon_run_and_abort_stops_it() {
    let env = Env::new();
    let s = &env.server;
    let Some(b) = Browser::start(&s.api) else {
        return;
    };
    let repo = env.root.join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    git(&repo, &["init", "-q", "-b", "main"]);
    std::fs::write(
        repo.join("ticker.py"),
        "import os, time\nopen(os.environ['PID_FILE'], 'w').write(str(os.getpid()))\nfor i in range(3000):\n    print('tick %04d' % i, flush=True)\n    time.sleep(0.2)\n",
    )
    .unwrap();
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "-qm", "ticker"]);
    let pid_file = env.root.join("ticker.pid");
    let made = env.python(
        "make_task.py",
        &[&json!({"project": "web", "name": "ticker", "repo": format!("file://{}", repo.display()), "script": "ticker.py", "queue": "default"}).to_string()],
    );
    let task = made["id"].as_str().unwrap().to_string();

    let log = env.root.join("daemon.log");
    let cache = |n: &str| Path::new(env!("CARGO_MANIFEST_DIR")).join("target").join(n);
    let daemon = Daemon(
        Command::new(common::bin())
            .args([
                "daemon",
                "--queue",
                "default",
                "--foreground",
                "--polling-interval",
                "0.5",
            ])
            .envs(s.client_env())
            .env("HOME", env.root.join("home"))
            .env("PID_FILE", &pid_file)
            .env("CLEARML_WORKER_ID", "web-agent:0")
            .env("CLEARML_AGENT_JOURNAL_DIR", env.root.join("journal"))
            .env("CLEARML_AGENT__AGENT__RUNS_DIR", env.root.join("runs"))
            .env("CLEARML_AGENT__AGENT__VENVS_DIR", env.root.join("venvs"))
            .env(
                "CLEARML_AGENT__AGENT__VENVS_CACHE__PATH",
                env.root.join("venvs-cache"),
            )
            .env(
                "CLEARML_AGENT__AGENT__VCS_CACHE__PATH",
                env.root.join("vcs"),
            )
            .env("CLEARML_AGENT__AGENT__TOOLS_DIR", cache("agent-tools"))
            .env("CLEARML_AGENT__AGENT__PREEMPTION__ENABLED", "false")
            .env("CLEARML_AGENT__AGENT__STOP_GRACE_PERIOD_SEC", "2")
            .env("PIP_CACHE_DIR", cache("pip-cache"))
            .env("UV_CACHE_DIR", cache("uv-cache"))
            .stdout(Stdio::from(std::fs::File::create(&log).unwrap()))
            .stderr(Stdio::from(
                std::fs::File::options().append(true).open(&log).unwrap(),
            ))
            .spawn()
            .unwrap(),
        log,
    );

    b.login(&s.key, &s.secret);
    b.wait_until(10, "the login", |b| b.url().ends_with("/projects"));
    b.goto(&format!("/projects/*/experiments/{task}/output/log"));
    let lines = |b: &Browser| {
        b.js("return (document.getElementById('console-lines').textContent.match(/tick \\d+/g) || []).length")
            .as_u64()
            .unwrap_or(0)
    };
    let deadline = Instant::now() + Duration::from_secs(300);
    while lines(&b) < 3 {
        assert!(
            Instant::now() < deadline,
            "the task never printed: {}",
            daemon.tail()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(b.text("#task-status"), "Running");
    let first = lines(&b);
    b.wait_until(60, "the console to grow without a reload", |b| {
        lines(b) >= first + 5
    });
    assert!(
        b.js("return performance.getEntriesByType('navigation').length")
            .as_u64()
            == Some(1)
    );
    b.screenshot("experiment-console-live");
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();

    b.goto("/workers");
    let w = b.text("tr[data-worker=\"web-agent:0\"]");
    assert!(w.contains("ticker") && w.contains("default"), "{w}");
    b.screenshot("workers-running");

    b.goto(&format!("/projects/*/experiments/{task}/output/log"));
    b.click("#action-abort");
    b.wait_text("#flash", "Abort requested", 10);
    b.wait_text("#task-status", "Aborted", 120);
    assert_eq!(env.status(&task), "stopped", "{}", daemon.tail());
    let gone =
        || std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| s.contains(") Z"));
    let deadline = Instant::now() + Duration::from_secs(60);
    while !gone() {
        assert!(
            Instant::now() < deadline,
            "the user process {pid} still runs: {}",
            daemon.tail()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    b.screenshot("experiment-aborted");
}

/// A console of 20,000 lines in the browser: the page loads only its tail, "Load earlier" pages
/// back, and a search over the whole log jumps to a line far from the tail.
#[test]
fn console_pages_and_searches_a_long_log_in_chromium() {
    let env = Env::new();
    let s = &env.server;
    let Some(b) = Browser::start(&s.api) else {
        return;
    };
    let task = s.create_task("long log");
    for chunk in 0..20 {
        let batch: String = (0..1000)
            .map(|i| {
                let n = chunk * 1000 + i;
                json!({"type": "log", "task": task, "timestamp": 1_700_000_000_000u64 + n / 10, "msg": format!("line {n:05}"), "level": "info"}).to_string() + "\n"
            })
            .collect();
        let r = s.raw("POST", "/events.add_batch", batch.into_bytes());
        assert_eq!(r.status, 200, "{:?}", r.body);
    }
    b.login(&s.key, &s.secret);
    b.wait_until(10, "the login", |b| b.url().ends_with("/projects"));
    b.goto(&format!("/projects/*/experiments/{task}/output/log"));
    b.wait_text("#console-lines", "line 19999", 20);
    let count = |b: &Browser| {
        b.js("return document.querySelectorAll('#console-lines span').length")
            .as_u64()
            .unwrap()
    };
    assert_eq!(count(&b), 300, "only the tail is loaded");
    assert!(!b.text("#console-lines").contains("line 19699"));
    b.click("#console-earlier");
    b.wait_until(10, "an earlier page", |b| count(b) == 800);
    assert!(b.text("#console-lines").contains("line 19200"));
    b.fill("#console-search input[name=q]", "line 00042");
    b.click("#console-search button");
    b.wait_text("#console-matches", "1 matching lines", 20);
    b.click("#console-matches a");
    b.wait_text("#console-lines mark", "line 00042", 20);
    b.screenshot("experiment-console-search");
}

/// Over plain HTTP: the session cookie's flags, CSRF and Origin checks on actions, logout, JSON
/// endpoints without a session, and /metrics.
#[test]
fn login_csrf_and_metrics_over_http() {
    let env = Env::new();
    let s = &env.server;
    let task = s.create_task("guarded");
    let http = reqwest::blocking::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let url = |p: &str| format!("{}{p}", s.api);
    assert_eq!(
        http.get(url("/web/api/experiments"))
            .send()
            .unwrap()
            .status(),
        401
    );
    let bad = http
        .post(url("/login"))
        .form(&[("access_key", s.key.as_str()), ("secret_key", "x")])
        .send()
        .unwrap();
    assert_eq!(bad.status(), 401);
    let ok = http
        .post(url("/login"))
        .form(&[
            ("access_key", s.key.as_str()),
            ("secret_key", s.secret.as_str()),
            ("next", "//evil.example/"),
        ])
        .send()
        .unwrap();
    assert_eq!(ok.status(), 303);
    assert_eq!(ok.headers()["location"], "/projects", "no open redirect");
    let set = ok.headers()["set-cookie"].to_str().unwrap().to_string();
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(set.contains(flag), "{flag} in {set}");
    }
    let cookie = set.split(';').next().unwrap().to_string();
    let page = http
        .get(url(&format!("/projects/*/experiments/{task}")))
        .header("cookie", &cookie)
        .send()
        .unwrap();
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    let html = page.text().unwrap();
    let csrf = html
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_string();
    assert!(!html.contains(&s.secret));

    let archive = |token: &str, origin: Option<&str>| {
        let mut req = http
            .post(url(&format!("/web/tasks/{task}/archive")))
            .header("cookie", &cookie)
            .form(&[("csrf", token), ("back", "/projects")]);
        if let Some(o) = origin {
            req = req.header("origin", o);
        }
        req.send().unwrap().status().as_u16()
    };
    let archived = || {
        s.task(&task)["system_tags"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t == "archived")
    };
    assert_eq!(archive("", None), 403);
    assert_eq!(archive("0".repeat(64).as_str(), None), 403);
    assert_eq!(archive(&csrf, Some("http://evil.example")), 403);
    assert!(!archived(), "refused POSTs change nothing");
    assert_eq!(archive(&csrf, Some(&s.api)), 303);
    assert!(archived());
    // Logout ends the session: the same cookie leads to the login page.
    let out = http
        .post(url("/logout"))
        .header("cookie", &cookie)
        .form(&[("csrf", csrf.as_str())])
        .send()
        .unwrap();
    assert_eq!(out.status(), 303);
    let after = http
        .get(url("/projects"))
        .header("cookie", &cookie)
        .send()
        .unwrap();
    assert_eq!(after.status(), 303);
    assert!(after.headers()["location"]
        .to_str()
        .unwrap()
        .starts_with("/login"));
    assert_eq!(archive(&csrf, None), 403);

    // /metrics: credentials required; then the exporter's text.
    assert_eq!(http.get(url("/metrics")).send().unwrap().status(), 401);
    s.call("tasks.enqueue", json!({"task": s.create_task("waiting")}))
        .ok();
    let text = http
        .get(url("/metrics"))
        .basic_auth(&s.key, Some(&s.secret))
        .send()
        .unwrap()
        .text()
        .unwrap();
    for want in [
        "clearml_server_queue_depth{queue=\"default\"} 1",
        "clearml_server_tasks{status=\"queued\"} 1",
        "clearml_server_tasks{status=\"created\"} 1",
        "clearml_server_requests_total{endpoint=\"tasks.create\",code=\"200\"} 2",
        "clearml_server_requests_total{endpoint=\"web /web/tasks/{task}/{action}\",code=\"403\"} 4",
        "clearml_server_request_duration_seconds_bucket{endpoint=\"tasks.get_by_id\",le=\"+Inf\"}",
        "# TYPE clearml_server_request_duration_seconds histogram",
        "clearml_server_workers 0",
        "clearml_server_store_size_bytes ",
    ] {
        assert!(text.contains(want), "{want} in /metrics:\n{text}");
    }
    // An unknown endpoint does not mint a label of its own.
    s.call("nope.nothing", json!({}));
    let text = http
        .get(url("/metrics"))
        .basic_auth(&s.key, Some(&s.secret))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(
        !text.contains("nope.nothing") && text.contains("endpoint=\"unknown\",code=\"404\""),
        "{text}"
    );
}
