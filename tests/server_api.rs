//! The embedded server over real HTTP: transport, auth, the status table, queue atomicity,
//! worker TTL, persistence across a restart, the files server, and bad input.

mod common;

use common::server::TestServer;
use serde_json::{json, Value};
use std::collections::BTreeSet;

fn server() -> (tempfile::TempDir, TestServer) {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(&dir.path().join("data"));
    (dir, s)
}

/// The reference status table (clearml-server `bll/task/utils.py`), written out independently
/// of the server's own copy so that a mistake in either shows.
fn allowed(from: &str, to: &str) -> bool {
    let table: &[(&str, &[&str])] = &[
        ("created", &["queued", "in_progress"]),
        ("queued", &["created", "in_progress", "stopped"]),
        (
            "in_progress",
            &["stopped", "failed", "created", "completed"],
        ),
        (
            "stopped",
            &[
                "closed",
                "created",
                "failed",
                "queued",
                "in_progress",
                "published",
                "publishing",
                "completed",
            ],
        ),
        (
            "closed",
            &["created", "failed", "published", "publishing", "stopped"],
        ),
        ("failed", &["created", "stopped", "published", "queued"]),
        ("publishing", &["published"]),
        ("published", &[]),
        ("completed", &["published", "in_progress", "created"]),
    ];
    from == to
        || table
            .iter()
            .any(|(f, targets)| *f == from && targets.contains(&to))
}

/// Puts a fresh task into `status` using forced calls.
fn task_in(s: &TestServer, status: &str, queue: &str) -> String {
    let id = s.create_task("status table");
    let forced = |endpoint: &str, extra: Value| {
        let mut body = json!({"task": id, "force": true});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        s.call(endpoint, body).ok();
    };
    match status {
        "created" => {}
        "queued" => forced("tasks.enqueue", json!({"queue": queue})),
        "in_progress" => forced("tasks.started", json!({})),
        "stopped" => forced("tasks.stopped", json!({})),
        "failed" => forced("tasks.failed", json!({})),
        "completed" => forced("tasks.completed", json!({})),
        "closed" => forced("tasks.close", json!({})),
        "published" => forced("tasks.publish", json!({})),
        other => panic!("no way to reach {other}"),
    }
    assert_eq!(s.task(&id)["status"], status);
    id
}

#[test]
fn status_table_every_pair_with_and_without_force() {
    let (_d, s) = server();
    let default = s.default_queue();
    let second = s.call("queues.create", json!({"name": "second"})).ok()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let reachable = [
        "created",
        "queued",
        "in_progress",
        "stopped",
        "failed",
        "completed",
        "closed",
        "published",
    ];
    let targets = [
        ("tasks.started", "in_progress"),
        ("tasks.stopped", "stopped"),
        ("tasks.failed", "failed"),
        ("tasks.completed", "completed"),
        ("tasks.close", "closed"),
        ("tasks.publish", "published"),
        ("tasks.enqueue", "queued"),
    ];
    let mut checked = 0;
    for from in reachable {
        for (endpoint, to) in targets {
            for force in [false, true] {
                let id = task_in(&s, from, &default);
                let mut body = json!({"task": id, "force": force, "status_reason": "table test"});
                if endpoint == "tasks.enqueue" {
                    body["queue"] = json!(second);
                }
                let answer = s.call(endpoint, body);
                let expect_ok = force || allowed(from, to);
                let status_after = s.task(&id)["status"].as_str().unwrap().to_string();
                if expect_ok {
                    assert_eq!(
                        answer.status, 200,
                        "{from} -> {to} force={force}: {}",
                        answer.body
                    );
                    assert_eq!(status_after, to, "{from} -> {to} force={force}");
                } else {
                    assert_eq!(
                        answer.codes(),
                        (400, 110),
                        "{from} -> {to} must be refused: {}",
                        answer.body
                    );
                    assert_eq!(status_after, from, "a refused change leaves {from}");
                }
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 8 * 7 * 2);
}

#[test]
fn concurrent_get_next_task_hands_out_each_task_exactly_once() {
    let (_d, s) = server();
    let queue = s.call("queues.create", json!({"name": "race"})).ok()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut order = Vec::new();
    for i in 0..1000 {
        let id = s.create_task(&format!("task {i}"));
        s.call("tasks.enqueue", json!({"task": id, "queue": queue}))
            .ok();
        order.push(id);
    }
    assert_eq!(
        s.call("queues.get_num_entries", json!({"queue": queue}))
            .ok()["num"],
        1000
    );
    let s = std::sync::Arc::new(s);
    let handles: Vec<_> = (0..64)
        .map(|_| {
            let s = s.clone();
            let queue = queue.clone();
            std::thread::spawn(move || {
                let mut got = Vec::new();
                loop {
                    let data = s
                        .call("v2.14/queues.get_next_task", json!({"queue": queue}))
                        .ok();
                    match data.get("entry") {
                        Some(entry) => got.push(entry["task"].as_str().unwrap().to_string()),
                        None => return got,
                    }
                }
            })
        })
        .collect();
    let per_thread: Vec<Vec<String>> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let all: Vec<&String> = per_thread.iter().flatten().collect();
    assert_eq!(all.len(), 1000, "every entry handed out once");
    let distinct: BTreeSet<&String> = all.iter().copied().collect();
    assert_eq!(distinct.len(), 1000, "no entry handed out twice");
    // FIFO: what each poller got is in enqueue order.
    let position = |id: &String| order.iter().position(|x| x == id).unwrap();
    for got in &per_thread {
        assert!(
            got.windows(2).all(|w| position(&w[0]) < position(&w[1])),
            "a poller saw the queue out of order"
        );
    }
    assert_eq!(
        s.call("queues.get_next_task", json!({"queue": queue})).ok(),
        json!({}),
        "empty queue answers {{}}"
    );
}

#[test]
fn workers_expire_unless_they_report() {
    let (_d, s) = server();
    let queue = s.default_queue();
    s.call(
        "workers.register",
        json!({"worker": "host:0", "queues": [queue], "timeout": 2}),
    )
    .ok();
    s.call(
        "workers.register",
        json!({"worker": "host:1", "timeout": 2}),
    )
    .ok();
    let ids = |s: &TestServer| -> Vec<String> {
        let data = s.call("workers.get_all", json!({"last_seen": 0})).ok();
        data["workers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w["id"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(ids(&s), ["host:0", "host:1"]);
    let task = s.create_task("worked on");
    for _ in 0..4 {
        std::thread::sleep(std::time::Duration::from_millis(800));
        s.call("workers.status_report", json!({"worker": "host:0", "timestamp": 1, "task": task, "tags": null, "machine_stats": null})).ok();
    }
    // host:1 stopped reporting more than its TTL ago; host:0 kept refreshing its own.
    assert_eq!(ids(&s), ["host:0"]);
    let t = s.task(&task);
    assert_eq!(t["last_worker"], "host:0");
    assert!(t["last_worker_report"].is_string());
    let w = &s.call("workers.get_all", json!({})).ok()["workers"][0];
    assert_eq!(w["task"]["id"], task);
    assert_eq!(w["queues"][0]["id"], queue);
    std::thread::sleep(std::time::Duration::from_millis(2500));
    assert!(ids(&s).is_empty(), "host:0 expires too once it stops");
    // Unknown workers may report (auto-register) and unregister without error.
    s.call("workers.unregister", json!({"worker": "never-seen"}))
        .ok();
    assert_eq!(
        s.call(
            "workers.status_report",
            json!({"worker": "w", "timestamp": 1, "task": "nope"})
        )
        .codes(),
        (400, 101)
    );
    assert_eq!(
        s.call(
            "workers.register",
            json!({"worker": "w", "queues": ["nope"]})
        )
        .codes(),
        (400, 701)
    );
}

#[test]
fn restart_keeps_tasks_queue_entries_logs_and_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut s = TestServer::start(&data);
    let queue = s.default_queue();
    let project = s.call("projects.create", json!({"name": "persist"})).ok()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut tasks = Vec::new();
    for i in 0..20 {
        let id = s
            .call(
                "tasks.create",
                json!({"name": format!("kept {i}"), "type": "training", "project": project}),
            )
            .ok()["id"]
            .as_str()
            .unwrap()
            .to_string();
        if i % 2 == 0 {
            s.call("tasks.enqueue", json!({"task": id, "queue": queue}))
                .ok();
        }
        tasks.push(id);
    }
    let logged = &tasks[1];
    for batch in 0..10 {
        let lines: Vec<String> = (0..100)
            .map(|i| json!({"type": "log", "task": logged, "timestamp": 1_000_000 + batch * 100 + i, "level": "DEBUG", "msg": format!("line {}", batch * 100 + i)}).to_string())
            .collect();
        let answer = s
            .raw("POST", "/events.add_batch", lines.join("\n").into_bytes())
            .ok();
        assert_eq!(answer["added"], 100);
    }
    let token = s.token();
    let key = s.key.clone();
    s.stop();

    let s = TestServer::start(&data);
    assert_eq!(s.key, key, "credentials survive a restart");
    let all = s
        .call(
            "tasks.get_all",
            json!({"project": [project], "only_fields": ["id"]}),
        )
        .ok();
    assert_eq!(all["tasks"].as_array().unwrap().len(), 20);
    let entries =
        s.call("queues.get_by_id", json!({"queue": queue})).ok()["queue"]["entries"].clone();
    let queued: Vec<&str> = entries
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["task"].as_str().unwrap())
        .collect();
    let expected: Vec<&str> = tasks.iter().step_by(2).map(String::as_str).collect();
    assert_eq!(queued, expected, "queue entries and their order survive");
    let log = s
        .call(
            "events.get_task_log",
            json!({"task": logged, "batch_size": 2000, "navigate_earlier": false}),
        )
        .ok();
    assert_eq!(log["total"], 1000);
    let msgs: Vec<String> = log["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["msg"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        msgs,
        (0..1000).map(|i| format!("line {i}")).collect::<Vec<_>>()
    );
    let by_token = s
        .http()
        .get(format!("{}/tasks.get_by_id", s.api))
        .bearer_auth(&token)
        .body(json!({"task": logged}).to_string());
    assert_eq!(
        TestServer::answer(by_token).status,
        200,
        "a token issued before the restart stays valid"
    );
    let queues = s.call("queues.get_all", json!({"name": "^default$"})).ok();
    assert_eq!(
        queues["queues"].as_array().unwrap().len(),
        1,
        "no second default queue on restart"
    );
}

#[test]
fn transport_accepts_every_client_form() {
    let (_d, s) = server();
    let body = json!({"name": "^default$", "only_fields": ["id"]})
        .to_string()
        .into_bytes();
    for (method, path) in [
        ("GET", "/queues.get_all"),
        ("POST", "/v2.5/queues.get_all"),
        ("PUT", "/v2.23/queues.get_all/"),
        ("GET", "/v999.0/queues.get_all"),
    ] {
        let a = s.raw(method, path, body.clone());
        assert_eq!(a.status, 200, "{method} {path}");
        assert_eq!(a.data()["queues"].as_array().unwrap().len(), 1);
        assert_eq!(
            a.data()["queues"][0].as_object().unwrap().len(),
            1,
            "only_fields keeps just id"
        );
        assert_eq!(a.body["meta"]["endpoint"]["name"], "queues.get_all");
        assert!(a.body["meta"]["id"].is_string() && a.body["meta"]["trx"].is_string());
    }
    // The query string is merged into the body; digits become ints.
    let token = s.raw("GET", "/auth.login?expiration_sec=60", vec![]).ok()["token"]
        .as_str()
        .unwrap()
        .to_string();
    let claims = token.split('.').nth(1).unwrap();
    use base64::Engine;
    let claims: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(claims)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
        60
    );
    assert_eq!(claims["api_version"], "2.31");
    assert_eq!(claims["feature_set"], "basic");
    assert!(claims["server_version"].is_string() && claims["identity"]["user"].is_string());
    // Nulls are absent, not type errors.
    s.call(
        "workers.status_report",
        json!({"worker": "w:0", "timestamp": 1, "tags": null, "machine_stats": null}),
    )
    .ok();
    // Without credentials only the health endpoints answer.
    let anon = |path: &str| TestServer::answer(s.http().get(format!("{}{path}", s.api)));
    assert_eq!(anon("/debug.ping").status, 200);
    assert_eq!(anon("/server.info").ok()["api_version"], "2.31");
    assert_eq!(anon("/tasks.get_all").codes(), (401, 20));
    let options = s
        .http()
        .request(reqwest::Method::OPTIONS, format!("{}/tasks.get_all", s.api))
        .send()
        .unwrap();
    assert_eq!(options.status().as_u16(), 200);
}

#[test]
fn bad_input_gets_the_right_4xx_envelope_and_never_a_500() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start_with(&dir.path().join("data"), &["--max-body-mb", "1"]);
    let task = s.create_task("victim");
    let mut cases: Vec<(&str, common::server::Answer, (u64, u64))> = vec![
        (
            "malformed JSON",
            s.raw("GET", "/tasks.get_by_id", b"{not json".to_vec()),
            (400, 0),
        ),
        (
            "non-object body",
            s.raw("GET", "/tasks.get_by_id", b"[1]".to_vec()),
            (400, 12),
        ),
        (
            "wrong type",
            s.call("tasks.get_by_id", json!({"task": 5})),
            (400, 12),
        ),
        (
            "wrong list type",
            s.call("tasks.get_all", json!({"id": [1, 2]})),
            (400, 12),
        ),
        (
            "wrong bool type",
            s.call("tasks.started", json!({"task": task, "force": "yes"})),
            (400, 12),
        ),
        (
            "missing field",
            s.call("tasks.get_by_id", json!({})),
            (400, 11),
        ),
        (
            "unknown task",
            s.call(
                "tasks.get_by_id",
                json!({"task": "0123456789abcdef0123456789abcdef"}),
            ),
            (400, 101),
        ),
        (
            "unknown task status call",
            s.call("tasks.completed", json!({"task": "nope"})),
            (400, 101),
        ),
        (
            "unknown queue",
            s.call("queues.get_by_id", json!({"queue": "default"})),
            (400, 701),
        ),
        (
            "unknown queue pop",
            s.call("queues.get_next_task", json!({"queue": "nope"})),
            (400, 701),
        ),
        (
            "enqueue to unknown queue",
            s.call("tasks.enqueue", json!({"task": task, "queue": "nope"})),
            (400, 701),
        ),
        (
            "unknown project",
            s.call("projects.get_by_id", json!({"project": "nope"})),
            (400, 401),
        ),
        (
            "short name",
            s.call("tasks.create", json!({"name": "ab", "type": "training"})),
            (400, 12),
        ),
        (
            "bad type",
            s.call("tasks.create", json!({"name": "abc", "type": "cooking"})),
            (400, 12),
        ),
        (
            "duplicate queue",
            s.call("queues.create", json!({"name": "default"})),
            (400, 801),
        ),
        (
            "edit non-created",
            {
                s.call("tasks.started", json!({"task": task})).ok();
                s.call("tasks.edit", json!({"task": task, "name": "renamed"}))
            },
            (400, 110),
        ),
        (
            "empty event batch",
            s.raw("POST", "/events.add_batch", b"\n".to_vec()),
            (400, 17),
        ),
        (
            "garbage event line",
            s.raw(
                "POST",
                "/events.add_batch",
                b"{\"type\": \"log\"}\nnot json".to_vec(),
            ),
            (400, 0),
        ),
        (
            "events for unknown task",
            s.raw(
                "POST",
                "/events.add_batch",
                json!({"type": "log", "task": "nope", "msg": "x"})
                    .to_string()
                    .into_bytes(),
            ),
            (400, 131),
        ),
        (
            "unknown endpoint",
            s.call("tasks.levitate", json!({})),
            (404, 0),
        ),
        (
            "unknown service",
            s.call("nosuch.thing", json!({})),
            (404, 0),
        ),
        (
            "bad path",
            s.raw("GET", "/not-an-endpoint", vec![]),
            (400, 0),
        ),
        (
            "oversized body",
            s.raw("POST", "/tasks.create", vec![b' '; 2 * 1024 * 1024]),
            (413, 0),
        ),
        (
            "content encoding",
            TestServer::answer(
                s.http()
                    .get(format!("{}/debug.ping", s.api))
                    .header("content-encoding", "gzip")
                    .body("x"),
            ),
            (415, 0),
        ),
    ];
    let bearer = |token: &str| {
        TestServer::answer(
            s.http()
                .get(format!("{}/tasks.get_all", s.api))
                .bearer_auth(token),
        )
    };
    let good = s.token();
    let mut parts: Vec<&str> = good.split('.').collect();
    let forged_claims = "eyJleHAiOjk5OTk5OTk5OTksImlkZW50aXR5Ijp7fX0";
    parts[1] = forged_claims;
    cases.push(("forged token", bearer(&parts.join(".")), (401, 30)));
    cases.push(("garbage token", bearer("abc.def.ghi"), (401, 30)));
    let short = s.raw("GET", "/auth.login?expiration_sec=1", vec![]).ok()["token"]
        .as_str()
        .unwrap()
        .to_string();
    std::thread::sleep(std::time::Duration::from_millis(2100));
    cases.push(("expired token", bearer(&short), (401, 30)));
    cases.push((
        "wrong secret",
        TestServer::answer(
            s.http()
                .get(format!("{}/tasks.get_all", s.api))
                .basic_auth(&s.key, Some("wrong")),
        ),
        (401, 22),
    ));
    cases.push((
        "unknown auth scheme",
        TestServer::answer(
            s.http()
                .get(format!("{}/tasks.get_all", s.api))
                .header("authorization", "Digest abc"),
        ),
        (401, 10),
    ));
    for (what, answer, expected) in &cases {
        assert_eq!(answer.codes(), *expected, "{what}: {}", answer.body);
        assert_eq!(
            answer.status as u64, expected.0,
            "{what}: HTTP status equals result_code"
        );
        assert!(
            answer.body["meta"]["result_msg"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{what}: a message"
        );
    }
    // The server is still healthy after all of it.
    s.call("debug.ping", json!({})).ok();
}

#[test]
fn files_server_round_trip_auth_and_confinement() {
    let (_d, s) = server();
    let token = s.token();
    let upload = |field: &str, bytes: &'static [u8], auth: bool| {
        let form = reqwest::blocking::multipart::Form::new().part(
            field.to_string(),
            reqwest::blocking::multipart::Part::bytes(bytes).file_name("f"),
        );
        let mut req = s.http().post(format!("{}/", s.files)).multipart(form);
        if auth {
            req = req.bearer_auth(&token);
        }
        req.send().unwrap()
    };
    let r = upload(
        "demo/local run.x/artifacts/stats/stats.json",
        b"{\"rows\": 42}",
        true,
    );
    assert_eq!(r.status().as_u16(), 200, "{}", r.text().unwrap());
    let stored = s
        .data_dir
        .join("files/demo/local run.x/artifacts/stats/stats.json");
    assert_eq!(std::fs::read(&stored).unwrap(), b"{\"rows\": 42}");
    let get = |path: &str, auth: bool| {
        let mut req = s.http().get(format!("{}/{path}", s.files));
        if auth {
            req = req.bearer_auth(&token);
        }
        req.send().unwrap()
    };
    let r = get("demo/local%20run.x/artifacts/stats/stats.json", true);
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.bytes().unwrap().as_ref(), b"{\"rows\": 42}");
    assert_eq!(
        get("demo/local%20run.x/artifacts/stats/stats.json", false)
            .status()
            .as_u16(),
        401
    );
    assert_eq!(upload("x/y.txt", b"no", false).status().as_u16(), 401);
    // Escapes are refused before anything is written or read.
    let r = upload("../escaped.txt", b"evil", true);
    assert_eq!(r.status().as_u16(), 400);
    assert!(!s.data_dir.join("escaped.txt").exists());
    // Raw HTTP, because HTTP client libraries resolve dot segments before sending.
    let files_addr = s.files.trim_start_matches("http://").to_string();
    for path in [
        "/../server.env",
        "/%2e%2e/server.env",
        "/a/%2e%2e/%2e%2e/server.env",
        "/..%2fserver.env",
        "/a/..%5c..%5cserver.env",
    ] {
        use std::io::{Read, Write};
        let mut conn = std::net::TcpStream::connect(&files_addr).unwrap();
        write!(conn, "GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n").unwrap();
        let mut response = String::new();
        conn.read_to_string(&mut response).unwrap();
        assert!(response.starts_with("HTTP/1.1 400"), "{path}: {response}");
        assert!(
            response.contains("\"result_code\":400")
                && !response.contains("CLEARML_API_SECRET_KEY"),
            "{path}: {response}"
        );
    }
    assert_eq!(get("missing/file", true).status().as_u16(), 404);
    let r = s
        .http()
        .delete(format!(
            "{}/demo/local%20run.x/artifacts/stats/stats.json",
            s.files
        ))
        .bearer_auth(&token)
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert!(!stored.exists());
}

#[test]
fn get_all_filters_regex_names_projection_and_hidden() {
    let (_d, s) = server();
    let a = s.create_task("alpha train");
    let b = s.create_task("beta train");
    let hidden = s.create_task("alpha hidden");
    s.call(
        "tasks.edit",
        json!({"task": hidden, "system_tags": ["hidden"], "runtime": {"x": 1, "y": 2}}),
    )
    .ok();
    s.call(
        "tasks.edit",
        json!({"task": a, "script": {"requirements": {"pip": "six"}, "entry_point": "a.py"}}),
    )
    .ok();
    let ids = |body: Value| -> Vec<String> {
        let mut v: Vec<String> = s.call("tasks.get_all", body).ok()["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["id"].as_str().unwrap().to_string())
            .collect();
        v.sort();
        v
    };
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    assert_eq!(
        ids(json!({"name": "^alpha"})),
        vec![a.clone()],
        "hidden tasks are left out"
    );
    assert_eq!(
        ids(json!({"name": "^alpha", "search_hidden": true})),
        sorted(vec![a.clone(), hidden.clone()])
    );
    assert_eq!(
        ids(json!({"name": "train$"})),
        sorted(vec![a.clone(), b.clone()])
    );
    assert_eq!(
        ids(json!({"id": [hidden]})),
        vec![hidden.clone()],
        "asking by id finds hidden tasks"
    );
    let t = &s
        .call(
            "tasks.get_all",
            json!({"id": [a], "only_fields": ["script.requirements", "status"]}),
        )
        .ok()["tasks"][0];
    assert_eq!(
        t,
        &json!({"id": a, "status": "created", "script": {"requirements": {"pip": "six"}}})
    );
    let t = &s
        .call(
            "tasks.get_all",
            json!({"id": [hidden], "only_fields": ["runtime.y"]}),
        )
        .ok()["tasks"][0];
    assert_eq!(t, &json!({"id": hidden, "runtime": {"y": 2}}));
    let page = s
        .call(
            "tasks.get_all",
            json!({"order_by": ["-name"], "page": 0, "page_size": 1, "only_fields": ["name"]}),
        )
        .ok();
    assert_eq!(page["tasks"][0]["name"], "beta train");
}

#[test]
fn task_log_navigation_and_order() {
    let (_d, s) = server();
    let task = s.create_task("chatty");
    let lines: Vec<String> = (0..50)
        .map(|i| json!({"type": "log", "task": task, "timestamp": 1000 + i, "level": "info", "msg": format!("m{i}")}).to_string())
        .collect();
    assert_eq!(
        s.raw(
            "GET",
            "/v2.23/events.add_batch",
            lines.join("\n").into_bytes()
        )
        .ok()["added"],
        50
    );
    let msgs = |body: Value| -> Vec<String> {
        let data = s.call("events.get_task_log", body).ok();
        data["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["msg"].as_str().unwrap().to_string())
            .collect()
    };
    // The SDK's get_reported_console_output: latest N, ascending.
    assert_eq!(
        msgs(json!({"task": task, "batch_size": 3, "navigate_earlier": true, "order": "asc"})),
        ["m47", "m48", "m49"]
    );
    assert_eq!(
        msgs(json!({"task": task, "batch_size": 3})),
        ["m49", "m48", "m47"]
    );
    assert_eq!(
        msgs(json!({"task": task, "batch_size": 2, "from_timestamp": 1010})),
        ["m9", "m8"]
    );
    assert_eq!(
        msgs(
            json!({"task": task, "batch_size": 2, "navigate_earlier": false, "from_timestamp": 1010})
        ),
        ["m11", "m12"]
    );
    assert_eq!(
        msgs(json!({"task": task, "batch_size": 2, "navigate_earlier": false})),
        ["m0", "m1"]
    );
    let text = s
        .http()
        .get(format!("{}/events.download_task_log", s.api))
        .basic_auth(&s.key, Some(&s.secret))
        .body(json!({"task": task, "line_type": "text"}).to_string())
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert_eq!(text.lines().count(), 50);
    assert!(text.lines().last().unwrap().ends_with("m49"));
    // Scalars update last_iteration and last_metrics.
    let scalars: Vec<String> = (0..3)
        .map(|i| json!({"type": "training_stats_scalar", "task": task, "iter": i, "metric": "loss", "variant": "train", "value": 3.0 - i as f64}).to_string())
        .collect();
    s.raw("GET", "/events.add_batch", scalars.join("\n").into_bytes())
        .ok();
    let t = s.task(&task);
    assert_eq!(t["last_iteration"], 2);
    let lm = t["last_metrics"]
        .as_object()
        .unwrap()
        .values()
        .next()
        .unwrap()
        .as_object()
        .unwrap()
        .values()
        .next()
        .unwrap()
        .clone();
    assert_eq!(
        (
            lm["value"].as_f64(),
            lm["min_value"].as_f64(),
            lm["max_value"].as_f64(),
            lm["count"].as_u64()
        ),
        (Some(1.0), Some(1.0), Some(3.0), Some(3))
    );
    let hist = s
        .call(
            "events.scalar_metrics_iter_histogram",
            json!({"task": task}),
        )
        .ok();
    assert_eq!(hist["loss"]["train"]["y"], json!([3.0, 2.0, 1.0]));
}

#[test]
fn stop_edit_enqueue_and_reset_semantics() {
    let (_d, s) = server();
    let queue = s.default_queue();
    // A queued task stops at once and leaves its queue.
    let queued = s.create_task("queued one");
    let enq = s
        .call("tasks.enqueue", json!({"task": queued, "queue": queue}))
        .ok();
    assert_eq!(enq["fields"]["execution.queue"], queue);
    assert_eq!(enq["queue_watched"], false);
    s.call("tasks.stop", json!({"task": queued})).ok();
    assert_eq!(s.task(&queued)["status"], "stopped");
    assert_eq!(
        s.call("queues.get_num_entries", json!({"queue": queue}))
            .ok()["num"],
        0
    );
    // A task a live worker reports on gets the "stopping" handshake instead.
    let running = s.create_task("running one");
    s.call(
        "tasks.started",
        json!({"task": running, "force": true, "status_message": "pulled by agent"}),
    )
    .ok();
    s.call(
        "workers.status_report",
        json!({"worker": "w:0", "timestamp": 1, "task": running}),
    )
    .ok();
    s.call(
        "tasks.stop",
        json!({"task": running, "force": false, "status_reason": "abort request"}),
    )
    .ok();
    let t = s.task(&running);
    assert_eq!(
        (t["status"].as_str(), t["status_message"].as_str()),
        (Some("in_progress"), Some("stopping"))
    );
    s.call(
        "tasks.stopped",
        json!({"task": running, "status_reason": "task was stopped by tasks.stop"}),
    )
    .ok();
    assert_eq!(
        s.task(&running)["status_reason"],
        "task was stopped by tasks.stop"
    );
    // edit: script is merged, runtime replaced.
    let id = s.create_task("edited");
    s.call("tasks.edit", json!({"task": id, "script": {"repository": " https://x/y.git ", "entry_point": "a.py"}, "runtime": {"a": 1}})).ok();
    s.call(
        "tasks.edit",
        json!({"task": id, "script": {"branch": "main"}, "runtime": {"b": 2}}),
    )
    .ok();
    let t = s.task(&id);
    assert_eq!(
        t["script"]["repository"], "https://x/y.git",
        "whitespace stripped"
    );
    assert_eq!(t["script"]["entry_point"], "a.py");
    assert_eq!(t["script"]["branch"], "main");
    assert_eq!(t["runtime"], json!({"b": 2}));
    // Enqueue drops the development tag; completed -> queued needs a reset first.
    s.call(
        "tasks.edit",
        json!({"task": id, "system_tags": ["development"]}),
    )
    .ok();
    s.call("tasks.enqueue", json!({"task": id})).ok();
    assert_eq!(s.task(&id)["system_tags"], json!([]));
    s.call("tasks.completed", json!({"task": id, "force": true}))
        .ok();
    assert_eq!(
        s.call("tasks.enqueue", json!({"task": id, "queue": queue}))
            .codes(),
        (400, 110)
    );
    s.call("tasks.reset", json!({"task": id})).ok();
    let t = s.task(&id);
    assert_eq!(
        (t["status"].as_str(), t["runtime"].clone()),
        (Some("created"), json!({}))
    );
    s.call("tasks.enqueue", json!({"task": id, "queue": queue}))
        .ok();
    // dequeue never fails for a running task; it restores the status asked for.
    let d = s.call("tasks.dequeue", json!({"task": id})).ok();
    assert_eq!(d["dequeued"], 1);
    assert_eq!(s.task(&id)["status"], "created");
    // clone copies the definition, not the run.
    let c = s
        .call("tasks.clone", json!({"task": id, "new_task_name": "copy"}))
        .ok()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let copy = s.task(&c);
    assert_eq!(
        (
            copy["status"].as_str(),
            copy["parent"].as_str(),
            copy["script"]["branch"].as_str()
        ),
        (Some("created"), Some(id.as_str()), Some("main"))
    );
    // delete removes it everywhere.
    s.call("tasks.delete", json!({"task": c})).ok();
    assert_eq!(
        s.call("tasks.get_by_id", json!({"task": c})).codes(),
        (400, 101)
    );
}
