//! A blocking Docker Engine client over the local unix socket (bollard inside a private
//! current-thread tokio runtime, since the agent's effects are synchronous). Every call has a
//! deadline; every error names what it was doing and to which image or container.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bollard::errors::Error as BollardError;
use bollard::models::{
    ContainerConfig, ContainerCreateBody, ContainerStateStatusEnum, CreateImageInfo,
};
use bollard::query_parameters::{
    CommitContainerOptionsBuilder, CreateContainerOptionsBuilder, CreateImageOptionsBuilder,
    KillContainerOptionsBuilder, ListContainersOptionsBuilder, RemoveContainerOptionsBuilder,
    StopContainerOptionsBuilder, WaitContainerOptionsBuilder,
};
use bollard::Docker;
use futures_util::StreamExt;

use super::image::split_reference;
use super::{clean, DockerError};

/// Where the engine listens when `DOCKER_HOST` does not say otherwise.
pub const DEFAULT_SOCKET: &str = "/var/run/docker.sock";

/// The socket to use: `DOCKER_HOST=unix:///path` or the default. `None` when `DOCKER_HOST`
/// names a transport other than a unix socket (not supported: the agent talks to a local engine).
pub fn socket_path(docker_host: Option<&str>) -> Option<PathBuf> {
    match docker_host.map(str::trim).filter(|h| !h.is_empty()) {
        None => Some(PathBuf::from(DEFAULT_SOCKET)),
        Some(h) => h.strip_prefix("unix://").map(PathBuf::from),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineVersion {
    /// The engine's release, e.g. `20.10.24+dfsg1`.
    pub version: String,
    /// The newest API the engine speaks.
    pub api_version: String,
    /// The API version this client uses after negotiation.
    pub negotiated: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    /// `sha256:...`, the image's content id (changes whenever the image does).
    pub id: String,
    /// `repo@sha256:...` for pulled images (empty for imported or built ones).
    pub repo_digests: Vec<String>,
    pub tags: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContainerStatus {
    Created,
    Running,
    Paused,
    Restarting,
    Removing,
    Exited,
    Dead,
    Other(String),
}

impl ContainerStatus {
    fn from_engine(s: Option<ContainerStateStatusEnum>) -> Self {
        match s {
            Some(ContainerStateStatusEnum::CREATED) => ContainerStatus::Created,
            Some(ContainerStateStatusEnum::RUNNING) => ContainerStatus::Running,
            Some(ContainerStateStatusEnum::PAUSED) => ContainerStatus::Paused,
            Some(ContainerStateStatusEnum::RESTARTING) => ContainerStatus::Restarting,
            Some(ContainerStateStatusEnum::REMOVING) => ContainerStatus::Removing,
            Some(ContainerStateStatusEnum::EXITED) => ContainerStatus::Exited,
            Some(ContainerStateStatusEnum::DEAD) => ContainerStatus::Dead,
            other => ContainerStatus::Other(format!("{other:?}")),
        }
    }
}

/// What the engine knows about one container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerState {
    pub id: String,
    pub name: String,
    pub image: String,
    pub status: ContainerStatus,
    pub running: bool,
    /// Set once the container has exited (meaningless while it runs).
    pub exit_code: Option<i64>,
    pub oom_killed: bool,
    /// RFC 3339, as the engine reports it; `0001-01-01T00:00:00Z` before the first start.
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// The container's environment (`docker inspect` shows this to anyone with engine access).
    pub env: Vec<String>,
}

impl ContainerState {
    /// Exited (or dead) with its code known.
    pub fn exited(&self) -> Option<i64> {
        matches!(self.status, ContainerStatus::Exited | ContainerStatus::Dead)
            .then_some(self.exit_code)
            .flatten()
    }
}

/// One line of `list` output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerListing {
    pub id: String,
    pub name: String,
    pub state: String,
    pub labels: BTreeMap<String, String>,
}

/// Deadlines: `api` for ordinary calls, `pull` for a whole image pull.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub api: Duration,
    pub pull: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            api: Duration::from_secs(120),
            pull: Duration::from_secs(3600),
        }
    }
}

pub struct Engine {
    rt: tokio::runtime::Runtime,
    docker: Docker,
    socket: PathBuf,
    timeouts: Timeouts,
}

/// bollard's own per-request timeout stays out of the way (long waits are ours to bound).
const CLIENT_TIMEOUT_SECS: u64 = 365 * 24 * 3600;

impl Engine {
    /// Connect to the engine at `DOCKER_HOST` (a unix socket) or the default socket, negotiate
    /// the API version down to what the engine speaks, and check it answers.
    pub fn connect_default() -> Result<Engine, DockerError> {
        let host = std::env::var("DOCKER_HOST").ok();
        let socket = socket_path(host.as_deref()).ok_or_else(|| DockerError::Connect {
            socket: host.clone().unwrap_or_default(),
            reason: "only a local unix socket (unix:///path) is supported".into(),
        })?;
        Engine::connect(&socket, Timeouts::default())
    }

    pub fn connect(socket: &Path, timeouts: Timeouts) -> Result<Engine, DockerError> {
        let connect_err = |reason: String| DockerError::Connect {
            socket: socket.display().to_string(),
            reason,
        };
        if !socket.exists() {
            return Err(connect_err("no such socket".into()));
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| connect_err(format!("starting the I/O runtime: {e}")))?;
        let path = socket.to_string_lossy().into_owned();
        let docker =
            Docker::connect_with_unix(&path, CLIENT_TIMEOUT_SECS, bollard::API_DEFAULT_VERSION)
                .map_err(|e| connect_err(clean(e.to_string())))?;
        let docker = rt
            .block_on(async {
                tokio::time::timeout(timeouts.api, docker.negotiate_version()).await
            })
            .map_err(|_| connect_err(format!("no answer within {} s", timeouts.api.as_secs())))?
            .map_err(|e| connect_err(clean(e.to_string())))?;
        let engine = Engine {
            rt,
            docker,
            socket: socket.to_path_buf(),
            timeouts,
        };
        engine
            .call("ping", "", engine.docker.ping())
            .map_err(|e| connect_err(e.to_string()))?;
        Ok(engine)
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    fn call<T>(
        &self,
        action: &str,
        target: &str,
        fut: impl Future<Output = Result<T, BollardError>>,
    ) -> Result<T, DockerError> {
        self.call_within(self.timeouts.api, action, target, fut)
    }

    fn call_within<T>(
        &self,
        limit: Duration,
        action: &str,
        target: &str,
        fut: impl Future<Output = Result<T, BollardError>>,
    ) -> Result<T, DockerError> {
        match self
            .rt
            .block_on(async { tokio::time::timeout(limit, fut).await })
        {
            Err(_) => Err(DockerError::Timeout {
                action: action.into(),
                target: target.into(),
                secs: limit.as_secs(),
            }),
            Ok(r) => r.map_err(|e| api_error(action, target, e)),
        }
    }

    pub fn version(&self) -> Result<EngineVersion, DockerError> {
        let v = self.call("version", "", self.docker.version())?;
        Ok(EngineVersion {
            version: v.version.unwrap_or_default(),
            api_version: v.api_version.unwrap_or_default(),
            negotiated: self.docker.client_version().to_string(),
        })
    }

    /// The local image, or `None` when the engine has no such image.
    pub fn image(&self, image: &str) -> Result<Option<ImageInfo>, DockerError> {
        match self.call("inspect image", image, self.docker.inspect_image(image)) {
            Ok(i) => Ok(Some(ImageInfo {
                id: i.id.unwrap_or_default(),
                repo_digests: i.repo_digests.unwrap_or_default(),
                tags: i.repo_tags.unwrap_or_default(),
            })),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Pull `image` (a tag, `latest` when none, or a digest), reporting progress as console
    /// lines. A failure names the image and says what the registry answered.
    pub fn pull(
        &self,
        image: &str,
        progress: &mut dyn FnMut(&str),
    ) -> Result<ImageInfo, DockerError> {
        let (repo, tag) = split_reference(image);
        let options = CreateImageOptionsBuilder::default()
            .from_image(&repo)
            .tag(&tag)
            .build();
        progress(&format!("Pulling docker image {image}"));
        let pull_err = |reason: String| DockerError::Pull {
            image: image.to_string(),
            reason: format!("pulling it failed: {}", clean(reason)),
        };
        let mut lines = PullProgress::default();
        let result = self.rt.block_on(async {
            let mut stream = self.docker.create_image(Some(options), None, None);
            let deadline = tokio::time::sleep(self.timeouts.pull);
            tokio::pin!(deadline);
            loop {
                tokio::select! {
                    _ = &mut deadline => {
                        return Err(pull_err(format!("no progress within {} s", self.timeouts.pull.as_secs())));
                    }
                    item = stream.next() => match item {
                        None => return Ok(()),
                        Some(Ok(info)) => {
                            if let Some(line) = lines.line(&info) {
                                progress(&line);
                            }
                        }
                        Some(Err(e)) => return Err(pull_err(bollard_reason(&e))),
                    }
                }
            }
        });
        result?;
        let info = self
            .image(image)?
            .ok_or_else(|| pull_err("the engine reports no image after the pull".into()))?;
        progress(&format!("Pulled docker image {image} ({})", info.id));
        Ok(info)
    }

    /// The image to run: the local one unless `force_pull` (then pulled, falling back to a local
    /// copy with a warning line when the registry fails), pulled when missing.
    pub fn ensure_image(
        &self,
        image: &str,
        force_pull: bool,
        progress: &mut dyn FnMut(&str),
    ) -> Result<ImageInfo, DockerError> {
        let local = self.image(image)?;
        match (local, force_pull) {
            (Some(info), false) => Ok(info),
            (None, _) => self.pull(image, progress),
            (Some(info), true) => match self.pull(image, progress) {
                Ok(pulled) => Ok(pulled),
                Err(e) => {
                    progress(&format!("Warning: {e}; using the local image {}", info.id));
                    Ok(info)
                }
            },
        }
    }

    /// Create a container; returns its id.
    pub fn create(
        &self,
        name: Option<&str>,
        body: ContainerCreateBody,
    ) -> Result<String, DockerError> {
        let image = body.image.clone().unwrap_or_default();
        let mut options = CreateContainerOptionsBuilder::default();
        if let Some(n) = name {
            options = options.name(n);
        }
        let created = self
            .call(
                "create container from",
                &image,
                self.docker.create_container(Some(options.build()), body),
            )
            .map_err(|e| match e {
                DockerError::Api { ref reason, .. } if reason.contains("No such image") => {
                    DockerError::ImageMissing {
                        image: image.clone(),
                    }
                }
                other => other,
            })?;
        Ok(created.id)
    }

    pub fn start(&self, id: &str) -> Result<(), DockerError> {
        self.call("start container", id, self.docker.start_container(id, None))
            .map_err(|e| not_found_as(e, id))
    }

    /// The container's state, or `None` when it no longer exists.
    pub fn inspect(&self, id: &str) -> Result<Option<ContainerState>, DockerError> {
        let c = match self.call(
            "inspect container",
            id,
            self.docker.inspect_container(id, None),
        ) {
            Ok(c) => c,
            Err(e) if is_not_found(&e) => return Ok(None),
            Err(e) => return Err(e),
        };
        let state = c.state.unwrap_or_default();
        let config = c.config.unwrap_or_default();
        Ok(Some(ContainerState {
            id: c.id.unwrap_or_default(),
            name: c
                .name
                .unwrap_or_default()
                .trim_start_matches('/')
                .to_string(),
            image: c.image.unwrap_or_default(),
            status: ContainerStatus::from_engine(state.status),
            running: state.running.unwrap_or(false),
            exit_code: state.exit_code,
            oom_killed: state.oom_killed.unwrap_or(false),
            started_at: state.started_at,
            finished_at: state.finished_at,
            labels: config.labels.unwrap_or_default().into_iter().collect(),
            env: config.env.unwrap_or_default(),
        }))
    }

    /// Wait until the container is not running and return its exit code; `Ok(None)` when
    /// `limit` passed first (the container still runs). The code comes from the engine, so it
    /// survives an agent restart.
    pub fn wait(&self, id: &str, limit: Duration) -> Result<Option<i64>, DockerError> {
        let options = WaitContainerOptionsBuilder::default()
            .condition("not-running")
            .build();
        let waited = self.rt.block_on(async {
            let mut stream = self.docker.wait_container(id, Some(options));
            tokio::time::timeout(limit, stream.next()).await
        });
        match waited {
            Err(_) => Ok(None),
            Ok(None) => self.exit_code_now(id),
            Ok(Some(Ok(r))) => Ok(Some(r.status_code)),
            // bollard reports a non-zero exit as an error carrying the code.
            Ok(Some(Err(BollardError::DockerContainerWaitError { code, .. }))) => Ok(Some(code)),
            Ok(Some(Err(e))) => Err(not_found_as(api_error("wait for container", id, e), id)),
        }
    }

    fn exit_code_now(&self, id: &str) -> Result<Option<i64>, DockerError> {
        let state = self
            .inspect(id)?
            .ok_or_else(|| DockerError::NoSuchContainer(id.into()))?;
        Ok(state.exited())
    }

    /// Stop: SIGTERM (or the image's stop signal), then SIGKILL after `grace`. Stopping a
    /// container that already stopped is not an error.
    pub fn stop(&self, id: &str, grace: Duration) -> Result<(), DockerError> {
        let secs = grace.as_secs() + u64::from(grace.subsec_nanos() > 0);
        let options = StopContainerOptionsBuilder::default()
            .t(i32::try_from(secs).unwrap_or(i32::MAX))
            .build();
        let limit = self.timeouts.api + grace;
        match self.call_within(
            limit,
            "stop container",
            id,
            self.docker.stop_container(id, Some(options)),
        ) {
            Ok(()) => Ok(()),
            Err(e) if status_of(&e) == Some(304) => Ok(()),
            Err(e) => Err(not_found_as(e, id)),
        }
    }

    pub fn kill(&self, id: &str, signal: &str) -> Result<(), DockerError> {
        let options = KillContainerOptionsBuilder::default()
            .signal(signal)
            .build();
        match self.call(
            "kill container",
            id,
            self.docker.kill_container(id, Some(options)),
        ) {
            Ok(()) => Ok(()),
            // 409: not running, which is what a kill wants.
            Err(e) if status_of(&e) == Some(409) => Ok(()),
            Err(e) => Err(not_found_as(e, id)),
        }
    }

    /// Remove the container (forced: a running one is killed first). Idempotent.
    pub fn remove(&self, id: &str) -> Result<(), DockerError> {
        let options = RemoveContainerOptionsBuilder::default().force(true).build();
        match self.call(
            "remove container",
            id,
            self.docker.remove_container(id, Some(options)),
        ) {
            Err(e) if is_not_found(&e) => Ok(()),
            other => other,
        }
    }

    /// Containers (running or not) carrying every one of `labels`.
    pub fn find_by_labels(
        &self,
        labels: &[(&str, &str)],
    ) -> Result<Vec<ContainerListing>, DockerError> {
        let filters: HashMap<String, Vec<String>> = HashMap::from([(
            "label".to_string(),
            labels.iter().map(|(k, v)| format!("{k}={v}")).collect(),
        )]);
        let options = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        let target = labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",");
        let list = self.call(
            "list containers",
            &target,
            self.docker.list_containers(Some(options)),
        )?;
        Ok(list
            .into_iter()
            .map(|c| ContainerListing {
                id: c.id.unwrap_or_default(),
                name: c
                    .names
                    .unwrap_or_default()
                    .first()
                    .map(|n| n.trim_start_matches('/').to_string())
                    .unwrap_or_default(),
                state: c.state.map(|s| s.to_string()).unwrap_or_default(),
                labels: c.labels.unwrap_or_default().into_iter().collect(),
            })
            .collect())
    }

    /// Commit the container's filesystem as `reference` (`repo[:tag]`) with `config` (command,
    /// entry point, env, working dir, labels of the new image); returns the image id.
    pub fn commit(
        &self,
        id: &str,
        reference: &str,
        config: ContainerConfig,
    ) -> Result<String, DockerError> {
        let (repo, tag) = split_reference(reference);
        let options = CommitContainerOptionsBuilder::default()
            .container(id)
            .repo(&repo)
            .tag(&tag)
            .pause(true)
            .build();
        let r = self
            .call(
                "commit container",
                id,
                self.docker.commit_container(options, config),
            )
            .map_err(|e| not_found_as(e, id))?;
        Ok(r.id)
    }

    /// Remove an image (forced); a missing one is not an error.
    pub fn remove_image(&self, image: &str) -> Result<(), DockerError> {
        let options = bollard::query_parameters::RemoveImageOptionsBuilder::default()
            .force(true)
            .build();
        match self.call(
            "remove image",
            image,
            self.docker.remove_image(image, Some(options), None),
        ) {
            Ok(_) => Ok(()),
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

fn status_of(e: &DockerError) -> Option<u16> {
    match e {
        DockerError::Api { reason, .. } => reason
            .strip_prefix("HTTP ")
            .and_then(|r| r.get(..3))
            .and_then(|c| c.parse().ok()),
        _ => None,
    }
}

fn is_not_found(e: &DockerError) -> bool {
    status_of(e) == Some(404)
}

fn not_found_as(e: DockerError, id: &str) -> DockerError {
    if is_not_found(&e) {
        DockerError::NoSuchContainer(id.to_string())
    } else {
        e
    }
}

fn bollard_reason(e: &BollardError) -> String {
    match e {
        BollardError::DockerResponseServerError {
            status_code,
            message,
        } => {
            format!("HTTP {status_code}: {}", clean(message))
        }
        BollardError::DockerStreamError { error } => clean(error),
        other => clean(other.to_string()),
    }
}

fn api_error(action: &str, target: &str, e: BollardError) -> DockerError {
    DockerError::Api {
        action: action.into(),
        target: target.into(),
        reason: bollard_reason(&e),
    }
}

/// Turns the engine's pull stream into console lines: each layer's status when it changes,
/// download and extract progress in quarter steps, registry messages as they come. A pull of
/// a large image prints tens of lines, not thousands.
#[derive(Debug, Default)]
pub struct PullProgress {
    layers: HashMap<String, (String, i64)>,
}

impl PullProgress {
    pub fn line(&mut self, info: &CreateImageInfo) -> Option<String> {
        let status = info.status.as_deref().unwrap_or("").trim();
        if status.is_empty() {
            return None;
        }
        let Some(id) = info.id.as_deref().filter(|i| !i.is_empty()) else {
            return Some(status.to_string());
        };
        let (current, total) = info
            .progress_detail
            .as_ref()
            .map(|d| (d.current.unwrap_or(0), d.total.unwrap_or(0)))
            .unwrap_or((0, 0));
        let quarter = if total > 0 {
            (current * 4 / total).min(4)
        } else {
            -1
        };
        let prev = self.layers.get(id);
        let changed = match prev {
            None => true,
            Some((s, q)) => s != status || (quarter >= 0 && quarter > *q),
        };
        if !changed {
            return None;
        }
        self.layers
            .insert(id.to_string(), (status.to_string(), quarter));
        Some(if total > 0 {
            format!(
                "{id}: {status} {}/{} ({}%)",
                human_bytes(current),
                human_bytes(total),
                current * 100 / total
            )
        } else {
            format!("{id}: {status}")
        })
    }
}

fn human_bytes(n: i64) -> String {
    let n = n as f64;
    if n >= 1e9 {
        format!("{:.1} GB", n / 1e9)
    } else if n >= 1e6 {
        format!("{:.1} MB", n / 1e6)
    } else if n >= 1e3 {
        format!("{:.1} kB", n / 1e3)
    } else {
        format!("{n} B")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::models::ProgressDetail;

    fn info(id: Option<&str>, status: &str, cur: i64, total: i64) -> CreateImageInfo {
        CreateImageInfo {
            id: id.map(String::from),
            status: Some(status.into()),
            progress_detail: Some(ProgressDetail {
                current: Some(cur),
                total: Some(total),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn pull_progress_prints_changes_and_quarters_only() {
        let mut p = PullProgress::default();
        let mut lines = vec![];
        lines.extend(p.line(&info(None, "Pulling from x/y", 0, 0)));
        lines.extend(p.line(&info(Some("abc"), "Pulling fs layer", 0, 0)));
        for cur in (0..=100).step_by(5) {
            lines.extend(p.line(&info(Some("abc"), "Downloading", cur * 10_000, 1_000_000)));
        }
        lines.extend(p.line(&info(Some("abc"), "Download complete", 0, 0)));
        lines.extend(p.line(&info(Some("abc"), "Download complete", 0, 0)));
        assert_eq!(lines[0], "Pulling from x/y");
        assert_eq!(lines[1], "abc: Pulling fs layer");
        let downloading: Vec<_> = lines.iter().filter(|l| l.contains("Downloading")).collect();
        assert_eq!(downloading.len(), 5, "{lines:?}");
        assert!(
            downloading[4].ends_with("1.0 MB/1.0 MB (100%)"),
            "{lines:?}"
        );
        assert_eq!(lines.last().unwrap(), "abc: Download complete");
        assert_eq!(lines.len(), 8);
    }

    #[test]
    fn socket_from_docker_host() {
        assert_eq!(socket_path(None), Some(PathBuf::from(DEFAULT_SOCKET)));
        assert_eq!(
            socket_path(Some("unix:///tmp/d.sock")),
            Some(PathBuf::from("/tmp/d.sock"))
        );
        assert_eq!(socket_path(Some("tcp://1.2.3.4:2375")), None);
    }

    #[test]
    fn http_status_is_read_back_from_errors() {
        let e = api_error(
            "x",
            "y",
            BollardError::DockerResponseServerError {
                status_code: 404,
                message: "No such container: y".into(),
            },
        );
        assert!(is_not_found(&e));
        assert_eq!(
            not_found_as(e, "y"),
            DockerError::NoSuchContainer("y".into())
        );
    }
}
