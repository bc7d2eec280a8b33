//! Preemption notices from the cloud metadata service: AWS spot (`instance-action`, IMDSv2 token
//! first), GCP (`instance/preempted`) and Azure scheduled events (`Preempt`). A watcher thread polls
//! every few seconds; a notice sets [`PREEMPTED`], which the daemon (stop pulling) and the running
//! effect (signal the user process, requeue or leave it) act on. The base URL is configurable so
//! tests serve the endpoints on loopback.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

pub static PREEMPTED: AtomicBool = AtomicBool::new(false);
static NOTICE: Mutex<String> = Mutex::new(String::new());

/// What the notice said (for the journal and the task's status message).
pub fn notice() -> String {
    NOTICE.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    Aws,
    Gcp,
    Azure,
}

impl Provider {
    pub fn parse(s: &str) -> Option<Vec<Provider>> {
        match s {
            "auto" | "" => Some(vec![Provider::Aws, Provider::Gcp, Provider::Azure]),
            "aws" => Some(vec![Provider::Aws]),
            "gcp" => Some(vec![Provider::Gcp]),
            "azure" => Some(vec![Provider::Azure]),
            _ => None,
        }
    }
}

fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(2))
        .connect_timeout(Duration::from_millis(500))
        .build()
        .expect("an HTTP client builds")
}

/// One check of one provider: `Some(description)` when a preemption is announced.
pub fn check(http: &reqwest::blocking::Client, base: &str, provider: Provider) -> Option<String> {
    match provider {
        Provider::Aws => {
            let token = http
                .put(format!("{base}/latest/api/token"))
                .header("X-aws-ec2-metadata-token-ttl-seconds", "21600")
                .send()
                .ok()
                .filter(|r| r.status().is_success())
                .and_then(|r| r.text().ok());
            let mut req = http.get(format!("{base}/latest/meta-data/spot/instance-action"));
            if let Some(t) = token {
                req = req.header("X-aws-ec2-metadata-token", t.trim());
            }
            let resp = req.send().ok().filter(|r| r.status().is_success())?;
            let body: serde_json::Value = resp.json().ok()?;
            let action = body["action"].as_str()?;
            Some(format!(
                "aws spot instance-action {action} at {}",
                body["time"].as_str().unwrap_or("?")
            ))
        }
        Provider::Gcp => {
            let resp = http
                .get(format!("{base}/computeMetadata/v1/instance/preempted"))
                .header("Metadata-Flavor", "Google")
                .send()
                .ok()
                .filter(|r| r.status().is_success())?;
            (resp.text().ok()?.trim() == "TRUE").then(|| "gcp instance preempted".to_string())
        }
        Provider::Azure => {
            let resp = http
                .get(format!(
                    "{base}/metadata/scheduledevents?api-version=2020-07-01"
                ))
                .header("Metadata", "true")
                .send()
                .ok()
                .filter(|r| r.status().is_success())?;
            let body: serde_json::Value = resp.json().ok()?;
            body["Events"]
                .as_array()?
                .iter()
                .find(|e| e["EventType"] == "Preempt")
                .map(|e| {
                    format!(
                        "azure scheduled event Preempt at {}",
                        e["NotBefore"].as_str().unwrap_or("?")
                    )
                })
        }
    }
}

/// Whether anything answers at `base` (the watcher is on by default only where it does).
pub fn endpoint_answers(base: &str) -> bool {
    client().get(base).send().is_ok()
}

/// Starts the watcher thread.
pub fn start(base: String, providers: Vec<Provider>, every: Duration) {
    std::thread::spawn(move || {
        let http = client();
        loop {
            for p in &providers {
                if let Some(what) = check(&http, &base, *p) {
                    *NOTICE.lock().unwrap_or_else(|e| e.into_inner()) = what.clone();
                    PREEMPTED.store(true, Ordering::SeqCst);
                    eprintln!("clearml-agent: preemption notice: {what}");
                    return;
                }
            }
            std::thread::sleep(every);
        }
    });
}
