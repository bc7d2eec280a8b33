//! The API client against the real embedded server (login, calls, errors, token renewal,
//! events) and against a scripted loopback HTTP responder (retries, 401 handling, wire format).

mod common;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use clearml_agent::api::{ApiClient, ApiError, ApiSettings, HttpMethod, AGENT_HEADER_VALUE};
use common::server::TestServer;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const WORKER: &str = "api-test:0";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn settings(server: &TestServer) -> ApiSettings {
    ApiSettings {
        api_host: server.api.clone(),
        access_key: Some(server.key.clone()),
        secret_key: Some(server.secret.clone()),
        worker_id: Some(WORKER.into()),
        max_attempts: 3,
        retry_base: Duration::from_millis(10),
        retry_max_delay: Duration::from_millis(50),
        timeout: Duration::from_secs(30),
        ..ApiSettings::default()
    }
}

fn token_only(server: &TestServer, token: &str) -> ApiSettings {
    ApiSettings {
        access_key: None,
        secret_key: None,
        token: Some(token.to_string()),
        ..settings(server)
    }
}

/// A signed token from the server, valid `sec` seconds.
fn server_token(server: &TestServer, sec: u64) -> String {
    server
        .raw("GET", &format!("/auth.login?expiration_sec={sec}"), vec![])
        .ok()["token"]
        .as_str()
        .unwrap()
        .to_string()
}

/// An unsigned JWT with these claims.
fn jwt(claims: Value) -> String {
    format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        URL_SAFE_NO_PAD.encode(b"not-a-real-signature")
    )
}

#[track_caller]
fn assert_no_secret(err: &ApiError, secrets: &[&str]) {
    let text = format!("{err} {err:?}");
    for s in secrets {
        assert!(!text.contains(s), "a secret leaked into the error: {text}");
    }
}

fn started() -> (tempfile::TempDir, TestServer) {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(&dir.path().join("data"));
    (dir, server)
}

#[test]
fn logs_in_and_calls_endpoints() {
    let (_dir, server) = started();
    let client = ApiClient::new(settings(&server)).unwrap();
    assert_eq!(
        client.server_api_version(),
        None,
        "no contact before a call"
    );
    // The first call logs in by itself.
    let queue = client.call("queues.get_default", &json!({})).unwrap();
    assert_eq!(queue["id"].as_str().unwrap(), server.default_queue());
    assert_eq!(client.server_api_version().as_deref(), Some("2.31"));

    let created = client
        .call(
            "tasks.create",
            &json!({"name": "api-client", "type": "training"}),
        )
        .unwrap();
    let id = created["id"].as_str().unwrap().to_string();
    let task = client
        .call("tasks.get_by_id", &json!({"task": id}))
        .unwrap();
    assert_eq!(task["task"]["name"], "api-client");
    // Versioned and slash-prefixed endpoints reach the same handlers.
    let all = client
        .call("/v2.13/tasks.get_all", &json!({"id": [id]}))
        .unwrap();
    assert_eq!(all["tasks"].as_array().unwrap().len(), 1);

    // POST and PUT clients see the same data; an explicit login works too.
    for method in [HttpMethod::Post, HttpMethod::Put] {
        let c = ApiClient::new(ApiSettings {
            method,
            ..settings(&server)
        })
        .unwrap();
        c.login().unwrap();
        let t = c.call("tasks.get_by_id", &json!({"task": id})).unwrap();
        assert_eq!(t["task"]["id"], id.as_str(), "{method:?}");
    }
}

#[test]
fn error_envelopes_become_server_errors() {
    let (_dir, server) = started();
    let client = ApiClient::new(settings(&server)).unwrap();
    let err = client
        .call("queues.get_by_id", &json!({"queue": "nope"}))
        .unwrap_err();
    match &err {
        ApiError::Server {
            endpoint,
            code,
            subcode,
            ..
        } => {
            assert_eq!(
                (endpoint.as_str(), *code, *subcode),
                ("queues.get_by_id", 400, 701)
            );
        }
        other => panic!("expected a server error, got {other:?}"),
    }
    assert!(err.is_code(400, 701) && !err.is_retryable());
    assert!(err.to_string().contains("queues.get_by_id"), "{err}");

    let unknown = client.call("nope.nothing", &json!({})).unwrap_err();
    assert!(unknown.is_code(404, 0), "{unknown:?}");
    assert_no_secret(&err, &[&server.secret]);
    assert_no_secret(&unknown, &[&server.secret]);
}

#[test]
fn tokens_are_renewed_before_they_expire() {
    let (_dir, server) = started();
    // Key/secret: 2-second tokens; calls keep working after the first token has expired.
    let client = ApiClient::new(ApiSettings {
        token_expiration_sec: Some(2),
        token_refresh_threshold: Duration::from_secs(1),
        ..settings(&server)
    })
    .unwrap();
    client.call("queues.get_default", &json!({})).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    client.call("queues.get_default", &json!({})).unwrap();

    // Token-only: an expired token cannot be renewed, so only renewal *before* expiry keeps
    // this client working for longer than one token's life (4 s).
    let first = server_token(&server, 4);
    let client = ApiClient::new(ApiSettings {
        token_expiration_sec: Some(4),
        token_refresh_threshold: Duration::from_secs(2),
        ..token_only(&server, &first)
    })
    .unwrap();
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_secs(7) {
        client
            .call("queues.get_default", &json!({}))
            .unwrap_or_else(|e| panic!("after {:?}: {e}", start.elapsed()));
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn bad_tokens_fail_cleanly_or_are_replaced() {
    let (_dir, server) = started();
    let forged = jwt(json!({"exp": now() + 3600, "api_version": "2.31", "identity": {}}));

    // Token-only, forged token: the call gets 401, renewal with the same token is refused.
    let client = ApiClient::new(token_only(&server, &forged)).unwrap();
    let err = client.call("queues.get_default", &json!({})).unwrap_err();
    assert!(
        matches!(&err, ApiError::Auth { endpoint, code: 401, subcode: 30, .. } if endpoint == "queues.get_default"),
        "{err:?}"
    );
    assert_no_secret(&err, &[&forged, &server.secret]);

    // Token-only, expired (genuine) token: renewal is attempted first and refused.
    let expired = server_token(&server, 1);
    std::thread::sleep(Duration::from_millis(2100));
    let client = ApiClient::new(token_only(&server, &expired)).unwrap();
    let err = client.call("queues.get_default", &json!({})).unwrap_err();
    assert!(err.is_code(401, 30), "{err:?}");
    assert!(matches!(err, ApiError::Auth { .. }), "{err:?}");
    assert_no_secret(&err, &[&expired, &server.secret]);

    // Key/secret client whose token became invalid: the 401 triggers a new login.
    let client = ApiClient::new(settings(&server)).unwrap();
    client.login().unwrap();
    client.set_token(&forged);
    let data = client.call("queues.get_default", &json!({})).unwrap();
    assert!(data["id"].is_string());

    // Wrong secret: an Auth error that does not repeat the secret or the Basic header.
    let wrong = "wrong-secret-value-123";
    let client = ApiClient::new(ApiSettings {
        secret_key: Some(wrong.into()),
        ..settings(&server)
    })
    .unwrap();
    let err = client.call("queues.get_default", &json!({})).unwrap_err();
    assert!(err.is_code(401, 22), "{err:?}");
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{}:{wrong}", server.key));
    assert_no_secret(&err, &[wrong, &basic]);
    let err = client.login().unwrap_err();
    assert!(matches!(err, ApiError::Auth { code: 401, .. }), "{err:?}");
    assert_no_secret(&err, &[wrong, &basic]);
}

#[test]
fn log_events_round_trip() {
    let (_dir, server) = started();
    let client = ApiClient::new(settings(&server)).unwrap();
    let task = server.create_task("events");
    let base_ts = 1_700_000_000_000u64;
    let events: Vec<Value> = (0..3)
        .map(|i| {
            json!({"type": "log", "task": task, "level": "info",
                "msg": format!("line {i}\nwith \"quotes\""), "timestamp": base_ts + i})
        })
        .collect();
    assert_eq!(client.add_events(&events).unwrap(), 3);
    assert_eq!(client.add_events(&[]).unwrap(), 0);

    let log = client
        .call(
            "events.get_task_log",
            &json!({"task": task, "navigate_earlier": false}),
        )
        .unwrap();
    let got: Vec<&str> = log["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["msg"].as_str().unwrap())
        .collect();
    assert_eq!(
        got,
        [
            "line 0\nwith \"quotes\"",
            "line 1\nwith \"quotes\"",
            "line 2\nwith \"quotes\""
        ]
    );
    // The worker header became the events' default worker.
    assert_eq!(log["events"][0]["worker"], WORKER);

    // One event for an unknown task: the batch is partly refused, which is an error.
    let mixed = vec![
        events[0].clone(),
        json!({"type": "log", "task": "0123456789abcdef0123456789abcdef", "msg": "x"}),
    ];
    let err = client.add_events(&mixed).unwrap_err();
    assert!(err.is_code(400, 131), "{err:?}");
    assert!(err.to_string().contains("1 of 2"), "{err}");
    // All refused: the server's own 400/131.
    let err = client.add_events(&mixed[1..]).unwrap_err();
    assert!(err.is_code(400, 131), "{err:?}");
}

// ---- A scripted HTTP responder on loopback ------------------------------------------------

#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: String,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

struct Fake {
    api: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Fake {
    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

/// Answers each request with `handler(index, request)` = (status, body), one per connection.
fn fake(handler: impl Fn(usize, &Seen) -> (u16, String) + Send + 'static) -> Fake {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let api = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                continue;
            }
            let mut parts = line.split_whitespace();
            let method = parts.next().unwrap_or("").to_string();
            let path = parts.next().unwrap_or("").to_string();
            let mut headers = Vec::new();
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
                    break;
                }
                if let Some((k, v)) = h.split_once(':') {
                    headers.push((k.trim().to_string(), v.trim().to_string()));
                }
            }
            let len: usize = headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                .and_then(|(_, v)| v.parse().ok())
                .unwrap_or(0);
            let mut body = vec![0; len];
            reader.read_exact(&mut body).unwrap();
            let req = Seen {
                method,
                path,
                headers,
                body: String::from_utf8_lossy(&body).into_owned(),
            };
            let index = {
                let mut log = log.lock().unwrap();
                log.push(req.clone());
                log.len() - 1
            };
            let (status, text) = handler(index, &req);
            let _ = write!(
                stream,
                "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
                text.len()
            );
        }
    });
    Fake { api, seen }
}

fn envelope(endpoint: &str, code: u16, subcode: u32, data: Value) -> (u16, String) {
    let body = json!({"meta": {"id": "0", "trx": "0", "endpoint": {"name": endpoint},
        "result_code": code, "result_subcode": subcode, "result_msg": "msg", "error_stack": null,
        "error_data": {}}, "data": data});
    (code, body.to_string())
}

fn fake_settings(fake: &Fake) -> ApiSettings {
    ApiSettings {
        api_host: format!("{}/", fake.api),
        access_key: None,
        secret_key: None,
        token: Some(jwt(json!({"exp": now() + 3600, "api_version": "2.20"}))),
        worker_id: Some(WORKER.into()),
        max_attempts: 3,
        retry_base: Duration::from_millis(5),
        retry_max_delay: Duration::from_millis(20),
        ..ApiSettings::default()
    }
}

#[test]
fn retries_502_then_succeeds_with_the_expected_request() {
    let server = fake(|i, _| {
        if i < 2 {
            (502, "<html>bad gateway</html>".into())
        } else {
            envelope(
                "queues.get_next_task",
                200,
                0,
                json!({"entry": {"task": "t1"}}),
            )
        }
    });
    let settings = fake_settings(&server);
    let token = settings.token.clone().unwrap();
    let client = ApiClient::new(settings).unwrap();
    assert_eq!(client.server_api_version().as_deref(), Some("2.20"));
    let data = client
        .call("v2.14/queues.get_next_task", &json!({"queue": "q"}))
        .unwrap();
    assert_eq!(data["entry"]["task"], "t1");
    let seen = server.seen();
    assert_eq!(seen.len(), 3, "{seen:#?}");
    for req in &seen {
        assert_eq!(req.method, "GET");
        assert_eq!(req.path, "/v2.14/queues.get_next_task");
        assert_eq!(req.header("X-ClearML-Agent"), Some(AGENT_HEADER_VALUE));
        assert_eq!(req.header("X-ClearML-Worker"), Some(WORKER));
        assert_eq!(req.header("Content-Type"), Some("application/json"));
        assert_eq!(
            req.header("Authorization"),
            Some(format!("Bearer {token}").as_str())
        );
        assert_eq!(
            serde_json::from_str::<Value>(&req.body).unwrap(),
            json!({"queue": "q"})
        );
    }
}

#[test]
fn retries_are_bounded_and_only_for_transient_statuses() {
    for status in [503u16, 429, 504, 502] {
        let server = fake(move |_, _| envelope("a.b", status, 0, json!({})));
        let client = ApiClient::new(fake_settings(&server)).unwrap();
        let err = client.call("a.b", &json!({})).unwrap_err();
        assert!(err.is_code(status, 0) && err.is_retryable(), "{err:?}");
        assert_eq!(
            server.seen().len(),
            3,
            "status {status}: max_attempts sends"
        );
    }
    for status in [500u16, 400, 404, 403] {
        let server = fake(move |_, _| envelope("a.b", status, 7, json!({})));
        let client = ApiClient::new(fake_settings(&server)).unwrap();
        let err = client.call("a.b", &json!({})).unwrap_err();
        assert!(err.is_code(status, 7) && !err.is_retryable(), "{err:?}");
        assert_eq!(server.seen().len(), 1, "status {status} is not retried");
    }
}

#[test]
fn protocol_errors_are_reported() {
    let server = fake(|i, _| match i {
        0 => (200, json!({"data": {}}).to_string()),
        _ => (200, "not json".into()),
    });
    let client = ApiClient::new(fake_settings(&server)).unwrap();
    for _ in 0..2 {
        let err = client.call("tasks.get_all", &json!({})).unwrap_err();
        assert!(
            matches!(&err, ApiError::Protocol { endpoint, .. } if endpoint == "tasks.get_all"),
            "{err:?}"
        );
    }
}

#[test]
fn unauthorized_call_logs_in_again_and_is_retried_once() {
    let tokens = [
        jwt(json!({"exp": now() + 3600, "n": 1})),
        jwt(json!({"exp": now() + 3600, "n": 2})),
    ];
    let t = tokens.clone();
    let server = fake(move |i, req| {
        if req.path.starts_with("/auth.login") {
            let n = usize::from(i > 0);
            return envelope("auth.login", 200, 0, json!({"token": t[n]}));
        }
        match req.header("Authorization") {
            Some(h) if h == format!("Bearer {}", t[1]) => {
                envelope("tasks.get_all", 200, 0, json!({"tasks": []}))
            }
            _ => envelope("tasks.get_all", 401, 30, json!({})),
        }
    });
    let key = "AKEY";
    let secret = "SECRET-never-shown";
    let client = ApiClient::new(ApiSettings {
        access_key: Some(key.into()),
        secret_key: Some(secret.into()),
        token: None,
        token_expiration_sec: Some(600),
        ..fake_settings(&server)
    })
    .unwrap();
    client.call("tasks.get_all", &json!({})).unwrap();
    let seen = server.seen();
    let paths: Vec<&str> = seen.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "/auth.login?expiration_sec=600",
            "/tasks.get_all",
            "/auth.login?expiration_sec=600",
            "/tasks.get_all"
        ]
    );
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{key}:{secret}"))
    );
    assert_eq!(seen[0].header("Authorization"), Some(basic.as_str()));
    assert_eq!(seen[2].header("Authorization"), Some(basic.as_str()));
    assert_eq!(seen[0].header("X-ClearML-Agent"), Some(AGENT_HEADER_VALUE));
}

#[test]
fn a_second_401_is_returned_not_looped() {
    let server = fake(|_, req| {
        if req.path.starts_with("/auth.login") {
            let token = jwt(json!({"exp": now() + 3600}));
            envelope("auth.login", 200, 0, json!({"token": token}))
        } else {
            envelope("tasks.get_all", 401, 30, json!({}))
        }
    });
    let client = ApiClient::new(ApiSettings {
        access_key: Some("K".into()),
        secret_key: Some("S-secret".into()),
        ..fake_settings(&server)
    })
    .unwrap();
    let err = client.call("tasks.get_all", &json!({})).unwrap_err();
    assert!(err.is_code(401, 30), "{err:?}");
    // The settings' token, 401, one login, the retry, 401: nothing more.
    assert_eq!(server.seen().len(), 3);
}

#[test]
fn token_only_renewal_presents_the_token() {
    let old = jwt(json!({"exp": now() + 10}));
    let new = jwt(json!({"exp": now() + 3600}));
    let n = new.clone();
    let server = fake(move |_, req| {
        if req.path.starts_with("/auth.login") {
            envelope("auth.login", 200, 0, json!({"token": n}))
        } else {
            envelope("a.b", 200, 0, json!({}))
        }
    });
    let client = ApiClient::new(ApiSettings {
        token: Some(old.clone()),
        // The old token expires within the threshold: renew before the call.
        token_refresh_threshold: Duration::from_secs(60),
        ..fake_settings(&server)
    })
    .unwrap();
    client.call("a.b", &json!({})).unwrap();
    client.call("a.b", &json!({})).unwrap();
    let seen = server.seen();
    let paths: Vec<&str> = seen.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(paths, ["/auth.login", "/a.b", "/a.b"]);
    assert_eq!(
        seen[0].header("Authorization"),
        Some(format!("Bearer {old}").as_str())
    );
    assert_eq!(
        seen[1].header("Authorization"),
        Some(format!("Bearer {new}").as_str())
    );
}

#[test]
fn add_events_sends_json_lines_by_post() {
    let server = fake(|i, req| {
        let lines = req.body.lines().count() as u64;
        // The second batch is answered as if one event had been refused.
        let added = if i == 0 { lines } else { lines - 1 };
        envelope(
            "events.add_batch",
            200,
            0,
            json!({"added": added, "errors": lines - added, "errors_info": {"Invalid task id": lines - added}}),
        )
    });
    let client = ApiClient::new(fake_settings(&server)).unwrap();
    let events = [
        json!({"type": "log", "task": "t", "msg": "a\nb"}),
        json!({"type": "log", "task": "t", "msg": "c"}),
    ];
    assert_eq!(client.add_events(&events).unwrap(), 2);
    let err = client.add_events(&events).unwrap_err();
    assert!(err.is_code(400, 131), "{err:?}");
    assert!(err.to_string().contains("Invalid task id"), "{err}");
    let req = &server.seen()[0];
    assert_eq!(req.method, "POST");
    assert_eq!(req.path, "/events.add_batch");
    assert_eq!(req.header("Content-Type"), Some("application/json-lines"));
    let lines: Vec<Value> = req
        .body
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines, events);
}

#[test]
fn connection_refused_is_a_transport_error_after_the_retries() {
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let secret = "secret-for-refused";
    let client = ApiClient::new(ApiSettings {
        api_host: format!("http://127.0.0.1:{port}"),
        access_key: Some("K".into()),
        secret_key: Some(secret.into()),
        max_attempts: 3,
        retry_base: Duration::from_millis(5),
        ..ApiSettings::default()
    })
    .unwrap();
    let err = client.call("queues.get_default", &json!({})).unwrap_err();
    match &err {
        // The login is the first request; the error names the call that needed it.
        ApiError::Transport { endpoint, reason } => {
            assert_eq!(endpoint, "auth.login");
            assert!(reason.contains("after 3 attempts"), "{reason}");
        }
        other => panic!("expected a transport error, got {other:?}"),
    }
    assert!(err.is_retryable());
    assert_no_secret(&err, &[secret]);
    let dbg = format!("{client:?}");
    assert!(!dbg.contains(secret), "{dbg}");
}
