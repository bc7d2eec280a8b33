//! Docker mode: tasks in containers through the Docker Engine API (bollard, over the local
//! unix socket; never the docker CLI), with the agent kept on the host.
//!
//! - [`engine`]: a blocking client for the calls the agent needs (ping and version
//!   negotiation, image inspect and pull with progress lines, create/start/wait/stop/kill/
//!   remove, find by label, inspect state, commit).
//! - [`args`]: upstream's docker argument rules (parse, filter, merge, mask) as pure functions.
//! - [`image`]: which image and arguments a task runs with.
//! - [`spec`]: one container's create options from the agent's parts and the user's arguments;
//!   the container paths the agent mounts ([`spec::layout`]).
//! - [`bootstrap`]: the shell script that runs first inside the container: environment from
//!   the venv cache (built with the image's own Python), then the task's entry point.
//!
//! The container is the supervisor: its command appends all output to a log file on a mounted
//! host directory (exact byte offsets for re-attach), the engine keeps the exit code, and labels
//! (run id, task id, worker id) find it again after an agent restart.

pub mod args;
pub mod bootstrap;
pub mod engine;
pub mod image;
pub mod spec;

pub use engine::{ContainerState, ContainerStatus, Engine, ImageInfo};

use crate::redact::redact_urls;

/// Every docker-mode failure names the image, container or argument at fault. Messages never
/// carry secrets (URL passwords are masked on the way in).
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum DockerError {
    #[error("cannot reach the Docker Engine at {socket}: {reason}")]
    Connect { socket: String, reason: String },
    #[error("docker image {image} is not available: {reason}")]
    Pull { image: String, reason: String },
    #[error("docker image {image} is not present locally")]
    ImageMissing { image: String },
    #[error("docker container {0} does not exist")]
    NoSuchContainer(String),
    #[error("docker engine: {action} {target}: {reason}")]
    Api {
        action: String,
        target: String,
        reason: String,
    },
    #[error("docker engine: {action} {target}: no answer within {secs} s")]
    Timeout {
        action: String,
        target: String,
        secs: u64,
    },
    #[error("docker argument {arg}: {reason}")]
    BadArgument { arg: String, reason: String },
    #[error("docker mode: {0}")]
    Setup(String),
}

impl DockerError {
    /// Worth retrying later (the engine is restarting, a registry hiccup), as opposed to a
    /// definite answer (no such image, a bad argument).
    pub fn is_retryable(&self) -> bool {
        match self {
            DockerError::Connect { .. } | DockerError::Timeout { .. } => true,
            DockerError::Api { reason, .. } | DockerError::Pull { reason, .. } => {
                let r = reason.to_ascii_lowercase();
                [
                    "timeout",
                    "connection reset",
                    "connection refused",
                    "tls handshake",
                    "i/o timeout",
                ]
                .iter()
                .any(|s| r.contains(s))
            }
            _ => false,
        }
    }
}

fn clean(text: impl AsRef<str>) -> String {
    redact_urls(text.as_ref().trim())
}
