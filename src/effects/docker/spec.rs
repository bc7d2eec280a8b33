//! One container's create options: the agent's parts (command, mounts, labels, env, GPUs)
//! combined with the user's docker arguments ([`RunOptions`]). Pure: builds the Engine API
//! body, touches nothing.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use bollard::models::{ContainerCreateBody, DeviceRequest, Mount, MountType};

use super::args::RunOptions;
use super::DockerError;

/// Container paths the agent mounts. Fixed, so a bootstrap script, a re-attached agent and a
/// user reading the docs agree on them.
pub mod layout {
    /// Read-write, per run: `output.log` (all output, appended), `stage` (setup / running).
    pub const IO_DIR: &str = "/run/clearml";
    pub const OUTPUT_LOG: &str = "/run/clearml/output.log";
    pub const STAGE_FILE: &str = "/run/clearml/stage";
    /// Read-only, per run: the bootstrap script, the task's config file (0600, the only place
    /// credentials reach the container), the requirements.
    pub const CONF_DIR: &str = "/etc/clearml-agent";
    pub const BOOTSTRAP: &str = "/etc/clearml-agent/bootstrap.sh";
    pub const CONFIG_FILE: &str = "/etc/clearml-agent/clearml.conf";
    pub const REQUIREMENTS: &str = "/etc/clearml-agent/requirements.txt";
    /// Read-write, per run: the checkout (patched) the entry point runs from.
    pub const CODE_DIR: &str = "/clearml/code";
    /// Read-write, shared: finished environments by key, and each run's working copy.
    pub const VENVS_DIR: &str = "/clearml/venvs";
    /// Read-write, shared: pip's download cache.
    pub const PIP_CACHE_DIR: &str = "/clearml/pip-cache";
    /// Read-only: the host's CA bundle, so installs trust what the host trusts.
    pub const CA_BUNDLE: &str = "/usr/local/share/clearml-agent/ca-bundle.pem";
}

/// Labels every agent container carries; re-attach finds a run's container by them.
pub mod labels {
    pub const RUN_ID: &str = "clearml-agent.run-id";
    pub const TASK_ID: &str = "clearml-agent.task-id";
    pub const WORKER_ID: &str = "clearml-agent.worker-id";
    /// Upstream's label, so tools that count a worker's containers keep working.
    pub const UPSTREAM_WORKER: &str = "clearml-worker-id";
}

/// The labels of one run's container.
pub fn run_labels(run_id: &str, task_id: &str, worker_id: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (labels::RUN_ID.to_string(), run_id.to_string()),
        (labels::TASK_ID.to_string(), task_id.to_string()),
        (labels::WORKER_ID.to_string(), worker_id.to_string()),
        (labels::UPSTREAM_WORKER.to_string(), worker_id.to_string()),
    ])
}

/// A container name the engine accepts, derived from the run id (never random).
pub fn container_name(run_id: &str) -> String {
    let safe: String = run_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_.-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!("clearml-run-{safe}")
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindMount {
    pub host: PathBuf,
    pub container: String,
    pub read_only: bool,
}

impl BindMount {
    pub fn rw(host: impl Into<PathBuf>, container: &str) -> Self {
        BindMount {
            host: host.into(),
            container: container.into(),
            read_only: false,
        }
    }
    pub fn ro(host: impl Into<PathBuf>, container: &str) -> Self {
        BindMount {
            read_only: true,
            ..BindMount::rw(host, container)
        }
    }
}

/// `sh -c` program that sends everything to `log` (appending, so offsets only grow) and then
/// becomes `program` (exec, so signals reach it directly).
pub fn logged_command(log: &str, program: &[String]) -> Vec<String> {
    let mut cmd = vec![
        "/bin/sh".to_string(),
        "-c".to_string(),
        r#"exec >>"$0" 2>&1 </dev/null; exec "$@""#.to_string(),
        log.to_string(),
    ];
    cmd.extend(program.iter().cloned());
    cmd
}

/// The container command for a bootstrap script: output to the log, bash when the image has
/// it (task setup scripts are written for bash, as upstream runs them), else sh.
pub fn bootstrap_command() -> Vec<String> {
    vec![
        "/bin/sh".to_string(),
        "-c".to_string(),
        r#"exec >>"$0" 2>&1 </dev/null; if command -v bash >/dev/null 2>&1; then exec bash "$1"; fi; exec sh "$1""#
            .to_string(),
        layout::OUTPUT_LOG.to_string(),
        layout::BOOTSTRAP.to_string(),
    ]
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct ContainerSpec {
    pub image: String,
    pub cmd: Vec<String>,
    /// The agent's variables; they win over the user's `-e` of the same name. Never secrets:
    /// `docker inspect` shows them to anyone with engine access.
    pub env: Vec<(String, String)>,
    /// The agent's labels; they win over the user's `-l`.
    pub labels: BTreeMap<String, String>,
    pub mounts: Vec<BindMount>,
    pub gpus: Option<DeviceRequest>,
    /// Run a minimal init as PID 1 (the engine's docker-init): it forwards the stop signal to
    /// the task and reaps zombies, so a graceful stop works whatever the task's process is.
    pub init: bool,
    pub user: RunOptions,
}

impl ContainerSpec {
    /// The Engine API's create body. Fails (naming both) when a user mount lands on a path
    /// the agent mounts, which the engine would otherwise refuse with a less helpful message.
    pub fn create_body(&self) -> Result<ContainerCreateBody, DockerError> {
        let u = &self.user;
        let mut host = u.host.clone();
        let ours: Vec<&str> = self.mounts.iter().map(|m| m.container.as_str()).collect();
        let user_targets =
            host.binds
                .iter()
                .flatten()
                .filter_map(|b| b.split(':').nth(1).map(|t| (b.clone(), t.to_string())))
                .chain(
                    host.mounts.iter().flatten().filter_map(|m| {
                        m.target.clone().map(|t| (format!("--mount target={t}"), t))
                    }),
                );
        for (arg, target) in user_targets {
            let target = target.trim_end_matches('/');
            if let Some(clash) = ours.iter().find(|o| o.trim_end_matches('/') == target) {
                return Err(DockerError::BadArgument {
                    arg,
                    reason: format!("{clash} is mounted by the agent"),
                });
            }
        }
        let mut mounts: Vec<Mount> = self
            .mounts
            .iter()
            .map(|m| Mount {
                typ: Some(MountType::BIND),
                source: Some(m.host.to_string_lossy().into_owned()),
                target: Some(m.container.clone()),
                read_only: Some(m.read_only),
                ..Default::default()
            })
            .collect();
        mounts.extend(host.mounts.take().unwrap_or_default());
        host.mounts = Some(mounts);
        if let Some(gpu) = &self.gpus {
            let mut requests = vec![gpu.clone()];
            requests.extend(host.device_requests.take().unwrap_or_default());
            host.device_requests = Some(requests);
        }
        if host.init.is_none() {
            host.init = Some(self.init);
        }

        // One value per name, the agent's last so it wins; order of first appearance kept.
        let mut env: Vec<(String, String)> = Vec::new();
        for (k, v) in u.env.iter().chain(self.env.iter()) {
            match env.iter_mut().find(|(n, _)| n == k) {
                Some(slot) => slot.1 = v.clone(),
                None => env.push((k.clone(), v.clone())),
            }
        }
        let mut labels: HashMap<String, String> = u.labels.clone().into_iter().collect();
        labels.extend(self.labels.clone());

        Ok(ContainerCreateBody {
            image: Some(self.image.clone()),
            cmd: Some(self.cmd.clone()),
            entrypoint: u.entrypoint.clone(),
            env: Some(env.into_iter().map(|(k, v)| format!("{k}={v}")).collect()),
            labels: Some(labels),
            user: u.user.clone(),
            working_dir: u.workdir.clone(),
            hostname: u.hostname.clone(),
            stop_signal: u.stop_signal.clone(),
            exposed_ports: (!u.exposed_ports.is_empty()).then(|| u.exposed_ports.clone()),
            host_config: Some(host),
            ..Default::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::effects::docker::args::{parse, tokens_from_str};

    fn user(args: &str) -> RunOptions {
        parse(&tokens_from_str(args).unwrap(), &|_| None).unwrap()
    }

    #[test]
    fn agent_parts_win_and_user_parts_stay() {
        let spec = ContainerSpec {
            image: "img:1".into(),
            cmd: logged_command(layout::OUTPUT_LOG, &["python3".into(), "-c".into(), "print(1)".into()]),
            env: vec![("CLEARML_TASK_ID".into(), "t1".into())],
            labels: run_labels("t1.1", "t1", "w"),
            mounts: vec![BindMount::rw("/host/io", layout::IO_DIR), BindMount::ro("/host/conf", layout::CONF_DIR)],
            gpus: crate::effects::docker::args::gpus_for_visible_devices(Some("0,1")),
            init: true,
            user: user("-e A=1 -e CLEARML_TASK_ID=spoofed -l clearml-agent.run-id=spoofed -l team=x -v /d:/d:ro --gpus 1 --network host"),
        };
        let body = spec.create_body().unwrap();
        let env = body.env.unwrap();
        assert_eq!(
            env,
            vec!["A=1".to_string(), "CLEARML_TASK_ID=t1".to_string()]
        );
        let labels = body.labels.unwrap();
        assert_eq!(labels[labels::RUN_ID], "t1.1");
        assert_eq!(labels["team"], "x");
        let host = body.host_config.unwrap();
        let mounts = host.mounts.unwrap();
        assert_eq!(mounts.len(), 2);
        assert_eq!(mounts[1].read_only, Some(true));
        assert_eq!(host.binds, Some(vec!["/d:/d:ro".to_string()]));
        let gpus = host.device_requests.unwrap();
        assert_eq!(
            gpus[0].device_ids,
            Some(vec!["0".to_string(), "1".to_string()])
        );
        assert_eq!(gpus[1].count, Some(1));
        assert_eq!(host.init, Some(true));
        assert_eq!(host.network_mode.as_deref(), Some("host"));
        assert_eq!(body.cmd.unwrap()[3], layout::OUTPUT_LOG);
    }

    #[test]
    fn a_user_mount_on_an_agent_path_is_refused_by_name() {
        let spec = ContainerSpec {
            image: "i".into(),
            mounts: vec![BindMount::ro("/host/conf", layout::CONF_DIR)],
            user: user("-v /evil:/etc/clearml-agent/"),
            ..ContainerSpec::default()
        };
        let err = spec.create_body().unwrap_err().to_string();
        assert!(
            err.contains("/evil:/etc/clearml-agent/") && err.contains("mounted by the agent"),
            "{err}"
        );
    }

    #[test]
    fn names_are_engine_safe_and_stable() {
        assert_eq!(container_name("abc123.2"), "clearml-run-abc123.2");
        assert_eq!(container_name("a b/c"), "clearml-run-a-b-c");
    }
}
