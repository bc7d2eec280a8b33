//! `clearml-agent list`: the workers the server knows (upstream `Worker.list`:
//! `workers.get_all` with `last_seen=0`), as a table or `--json`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use serde_json::{json, Value};

use super::settings::AgentSettings;
use crate::api::{ApiClient, ApiSettings, TlsOptions};
use crate::config::Config;

#[derive(clap::Args, Clone, Debug)]
pub struct ListArgs {
    /// Print the workers as JSON (the server's `workers.get_all` answer).
    #[arg(long)]
    pub json: bool,
    /// The clearml.conf to read [default: $CLEARML_CONFIG_FILE, else ~/clearml.conf].
    #[arg(long)]
    pub config_file: Option<PathBuf>,
}

/// The API settings of the agent's configuration, TLS included (`api.verify_certificate`,
/// `CLEARML_API_HOST_VERIFY_CERT`, CA bundle variables). `daemon::connect` should use this
/// too (phase B).
pub fn api_settings(
    config: &Config,
    settings: &AgentSettings,
    worker_id: Option<String>,
) -> Result<ApiSettings> {
    let tls = TlsOptions::resolve(config.get("api.verify_certificate"), &|k| {
        std::env::var(k).ok()
    });
    Ok(ApiSettings {
        api_host: settings.api_server.clone(),
        access_key: settings.access_key.clone(),
        secret_key: settings.secret_key.clone(),
        token: settings.auth_token.clone(),
        worker_id,
        method: settings.http_method.parse()?,
        verify_tls: tls.verify,
        ca_bundle: tls.ca_bundle,
        ..ApiSettings::default()
    })
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// One table row per worker: id, queues, running task, last activity.
pub fn rows(workers: &[Value]) -> Vec<Vec<String>> {
    workers
        .iter()
        .map(|w| {
            let queues: Vec<String> = w["queues"]
                .as_array()
                .map(|q| {
                    q.iter()
                        .map(
                            |q| match q.get("name").map(text).filter(|n| !n.is_empty()) {
                                Some(name) => name,
                                None => text(q.get("id").unwrap_or(q)),
                            },
                        )
                        .collect()
                })
                .unwrap_or_default();
            let task = match (&w["task"]["id"], &w["task"]["name"]) {
                (Value::String(id), Value::String(name)) if !name.is_empty() => {
                    format!("{id} ({name})")
                }
                (Value::String(id), _) => id.clone(),
                _ => "-".into(),
            };
            vec![
                text(&w["id"]),
                if queues.is_empty() {
                    "-".into()
                } else {
                    queues.join(",")
                },
                task,
                text(&w["last_activity_time"]),
            ]
        })
        .collect()
}

pub fn run(args: ListArgs) -> Result<i32> {
    let (config, settings) = super::settings::load(args.config_file.as_deref())?;
    let api = ApiClient::new(api_settings(&config, &settings, None)?)?;
    let data = api
        .call("workers.get_all", &json!({"last_seen": 0}))
        .with_context(|| format!("listing the workers of {}", settings.api_server))?;
    let workers = data["workers"].as_array().cloned().unwrap_or_default();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&workers)?);
        return Ok(0);
    }
    if workers.is_empty() {
        println!("no workers registered at {}", settings.api_server);
        return Ok(0);
    }
    let header = ["WORKER", "QUEUES", "TASK", "LAST ACTIVITY"];
    let rows = rows(&workers);
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let parts: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect();
        println!("{}", parts.join("  ").trim_end());
    };
    line(header.iter().map(|s| s.to_string()).collect());
    for r in rows {
        line(r);
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_name_queues_and_tasks() {
        let w = vec![
            json!({"id": "box:0", "queues": [{"id": "q1", "name": "default"}, {"id": "q2"}],
                   "task": {"id": "t1", "name": "train"}, "last_activity_time": "2024-01-01T00:00:00Z"}),
            json!({"id": "idle:1", "queues": []}),
        ];
        assert_eq!(
            rows(&w),
            vec![
                vec!["box:0", "default,q2", "t1 (train)", "2024-01-01T00:00:00Z"],
                vec!["idle:1", "-", "-", ""],
            ]
        );
    }
}
