//! A real `clearml-agent server` child process on free loopback ports, and a small client for it.

use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

pub struct TestServer {
    child: Option<Child>,
    pub api: String,
    pub files: String,
    pub key: String,
    pub secret: String,
    pub data_dir: PathBuf,
    http: reqwest::blocking::Client,
}

/// One answer: HTTP status and the JSON body (`Value::Null` when it is not JSON).
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
}

impl Answer {
    pub fn data(&self) -> &Value {
        &self.body["data"]
    }
    /// `(result_code, result_subcode)` from the envelope.
    pub fn codes(&self) -> (u64, u64) {
        let meta = &self.body["meta"];
        (
            meta["result_code"].as_u64().unwrap_or(0),
            meta["result_subcode"].as_u64().unwrap_or(0),
        )
    }
    #[track_caller]
    pub fn ok(self) -> Value {
        assert_eq!(self.status, 200, "call failed: {}", self.body);
        self.body["data"].clone()
    }
}

fn env_value(text: &str, name: &str) -> String {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("export {name}=")))
        .unwrap_or_else(|| panic!("{name} missing from server.env"))
        .to_string()
}

impl TestServer {
    /// Starts a server on `data_dir` (created if needed) and waits until it listens.
    pub fn start(data_dir: &Path) -> TestServer {
        Self::start_with(data_dir, &[])
    }

    pub fn start_with(data_dir: &Path, extra: &[&str]) -> TestServer {
        Self::start_on(data_dir, 0, 0, extra)
    }

    /// Where the server's stderr (and its `--access-log`) goes: beside the data dir.
    pub fn log_path(data_dir: &Path) -> PathBuf {
        data_dir.with_extension("log")
    }

    /// The server's stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(Self::log_path(&self.data_dir)).unwrap_or_default()
    }

    /// SIGTERM, then start again on the same data dir and the same ports.
    pub fn restart(&mut self) {
        self.stop();
        let port = |url: &str| url.rsplit(':').next().unwrap().parse::<u16>().unwrap();
        let fresh = Self::start_on(
            &self.data_dir.clone(),
            port(&self.api),
            port(&self.files),
            &[],
        );
        *self = fresh;
    }

    pub fn start_on(data_dir: &Path, port: u16, files_port: u16, extra: &[&str]) -> TestServer {
        let (port, files_port) = (port.to_string(), files_port.to_string());
        let mut child = Command::new(super::bin())
            .args([
                "server",
                "--port",
                &port,
                "--files-port",
                &files_port,
                "--json",
                "--data-dir",
            ])
            .arg(data_dir)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::from(
                std::fs::File::options()
                    .create(true)
                    .append(true)
                    .open(Self::log_path(data_dir))
                    .unwrap(),
            ))
            .spawn()
            .expect("server starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let info: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("bad start-up line {line:?}: {e}"));
        let env = std::fs::read_to_string(data_dir.join("server.env")).unwrap();
        TestServer {
            child: Some(child),
            api: info["api"].as_str().unwrap().to_string(),
            files: info["files"].as_str().unwrap().to_string(),
            key: env_value(&env, "CLEARML_API_ACCESS_KEY"),
            secret: env_value(&env, "CLEARML_API_SECRET_KEY"),
            data_dir: data_dir.to_path_buf(),
            http: reqwest::blocking::Client::builder()
                .timeout(std::time::Duration::from_secs(60))
                .build()
                .unwrap(),
        }
    }

    /// The environment a Python client needs to talk to this server.
    pub fn client_env(&self) -> Vec<(String, String)> {
        vec![
            ("CLEARML_API_HOST".into(), self.api.clone()),
            ("CLEARML_WEB_HOST".into(), self.api.clone()),
            ("CLEARML_FILES_HOST".into(), self.files.clone()),
            ("CLEARML_API_ACCESS_KEY".into(), self.key.clone()),
            ("CLEARML_API_SECRET_KEY".into(), self.secret.clone()),
            (
                "CLEARML_CONFIG_FILE".into(),
                "/nonexistent/clearml.conf".into(),
            ),
        ]
    }

    /// A raw request with Basic credentials.
    pub fn raw(&self, method: &str, path: &str, body: Vec<u8>) -> Answer {
        let req = self
            .http
            .request(method.parse().unwrap(), format!("{}{path}", self.api))
            .basic_auth(&self.key, Some(&self.secret))
            .body(body);
        Self::answer(req)
    }

    pub fn answer(req: reqwest::blocking::RequestBuilder) -> Answer {
        let resp = req.send().expect("request is answered");
        let status = resp.status().as_u16();
        let text = resp.text().unwrap_or_default();
        Answer {
            status,
            body: serde_json::from_str(&text).unwrap_or(Value::Null),
        }
    }

    /// `GET /endpoint` with a JSON body, as the clients send it.
    pub fn call(&self, endpoint: &str, body: Value) -> Answer {
        self.raw(
            "GET",
            &format!("/{endpoint}"),
            body.to_string().into_bytes(),
        )
    }

    pub fn http(&self) -> &reqwest::blocking::Client {
        &self.http
    }

    pub fn token(&self) -> String {
        self.call("auth.login", json!({})).ok()["token"]
            .as_str()
            .unwrap()
            .to_string()
    }

    pub fn create_task(&self, name: &str) -> String {
        let data = self
            .call("tasks.create", json!({"name": name, "type": "training"}))
            .ok();
        data["id"].as_str().unwrap().to_string()
    }

    pub fn default_queue(&self) -> String {
        self.call("queues.get_default", json!({})).ok()["id"]
            .as_str()
            .unwrap()
            .to_string()
    }

    pub fn task(&self, id: &str) -> Value {
        self.call("tasks.get_by_id", json!({"task": id})).ok()["task"].clone()
    }

    /// SIGTERM, then wait: the clean shutdown path.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let status = child.wait().unwrap();
            assert!(status.success(), "server exited with {status}");
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
