//! A fault-injecting HTTP proxy on loopback in front of the embedded server: it forwards every
//! call (one request per upstream connection), or answers 500 with an error envelope, or drops
//! the connection unanswered, as switched by the test. It records every call it saw (endpoint,
//! task, status) so a test can count the calls an agent made, e.g. terminal status calls.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Pass,
    /// Every call answers 500 with a ClearML error envelope.
    Fail500,
    /// Every connection is closed without an answer (a server restarting).
    Drop,
}

#[derive(Debug, Clone)]
pub struct Seen {
    /// `tasks.completed`, without a version prefix.
    pub endpoint: String,
    pub task: Option<String>,
    /// 0 when the connection was dropped.
    pub status: u16,
}

pub struct FaultProxy {
    pub url: String,
    mode: Arc<Mutex<Mode>>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

fn read_request(conn: &mut TcpStream) -> Option<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match conn.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let len = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    let mut body = buf[head_end..].to_vec();
    while body.len() < len {
        match conn.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => body.extend_from_slice(&chunk[..n]),
        }
    }
    Some((head, body))
}

fn endpoint_of(head: &str) -> String {
    let path = head.split_whitespace().nth(1).unwrap_or("");
    let path = path.split('?').next().unwrap_or("").trim_start_matches('/');
    // `v2.5/tasks.started` -> `tasks.started`
    path.rsplit('/').next().unwrap_or("").to_string()
}

fn task_of(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    v["task"].as_str().map(str::to_string)
}

/// Forwards one request to `upstream` with `Connection: close` and returns the whole answer.
fn forward(upstream: &str, head: &str, body: &[u8]) -> Option<Vec<u8>> {
    let mut up = TcpStream::connect(upstream).ok()?;
    let mut lines: Vec<&str> = head
        .trim_end()
        .lines()
        .filter(|l| !l.to_ascii_lowercase().starts_with("connection:"))
        .collect();
    lines.push("Connection: close");
    let new_head = format!("{}\r\n\r\n", lines.join("\r\n"));
    up.write_all(new_head.as_bytes()).ok()?;
    up.write_all(body).ok()?;
    let mut answer = Vec::new();
    up.read_to_end(&mut answer).ok()?;
    (!answer.is_empty()).then_some(answer)
}

impl FaultProxy {
    /// Starts a proxy for `upstream_url` (`http://127.0.0.1:PORT`).
    pub fn start(upstream_url: &str) -> FaultProxy {
        let upstream = upstream_url.trim_start_matches("http://").to_string();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let mode = Arc::new(Mutex::new(Mode::Pass));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (m, s) = (mode.clone(), seen.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let (m, s, upstream) = (m.clone(), s.clone(), upstream.clone());
                std::thread::spawn(move || serve(conn, &upstream, &m, &s));
            }
        });
        FaultProxy { url, mode, seen }
    }

    pub fn set(&self, mode: Mode) {
        *self.mode.lock().unwrap() = mode;
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Calls to `endpoint` about `task` that the server answered 200.
    pub fn ok_calls(&self, endpoint: &str, task: &str) -> usize {
        self.seen()
            .iter()
            .filter(|c| {
                c.endpoint == endpoint && c.task.as_deref() == Some(task) && c.status == 200
            })
            .count()
    }

    /// Terminal status calls (completed, failed, stopped) the server accepted for `task`.
    pub fn terminal_calls(&self, task: &str) -> usize {
        ["tasks.completed", "tasks.failed", "tasks.stopped"]
            .iter()
            .map(|e| self.ok_calls(e, task))
            .sum()
    }
}

fn serve(mut conn: TcpStream, upstream: &str, mode: &Mutex<Mode>, seen: &Mutex<Vec<Seen>>) {
    while let Some((head, body)) = read_request(&mut conn) {
        let record = |status: u16| {
            seen.lock().unwrap().push(Seen {
                endpoint: endpoint_of(&head),
                task: task_of(&body),
                status,
            })
        };
        let current = *mode.lock().unwrap();
        match current {
            Mode::Drop => {
                record(0);
                return;
            }
            Mode::Fail500 => {
                record(500);
                let body = r#"{"meta":{"result_code":500,"result_subcode":0,"result_msg":"injected fault"},"data":{}}"#;
                let answer = format!(
                    "HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                if conn.write_all(answer.as_bytes()).is_err() {
                    return;
                }
            }
            Mode::Pass => {
                let Some(answer) = forward(upstream, &head, &body) else {
                    record(0);
                    return;
                };
                let status = String::from_utf8_lossy(&answer[..answer.len().min(32)])
                    .split_whitespace()
                    .nth(1)
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                record(status);
                let _ = conn.write_all(&answer);
                // The answer says `connection: close`: one request per client connection.
                return;
            }
        }
    }
}
