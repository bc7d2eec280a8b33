//! What every real effect shares: the settings, the API client, this worker's id, the run's
//! directories, the task as the server sees it now, and how API errors are classified.

use super::logship::agent_line;
use super::EffectFailure;
use crate::api::{ApiClient, ApiError};
use crate::config::settings::AgentSettings;
use crate::fsm::RunState;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// The (task, queue) a worker is running now, as its status reports say.
pub type CurrentTask = Arc<Mutex<Option<(String, String)>>>;

/// The stop reason of tasks aborted by `daemon --stop`.
pub const AGENT_SHUTDOWN: &str = "agent shutdown";

/// The context of the real effects.
pub struct World {
    pub settings: AgentSettings,
    pub api: Arc<ApiClient>,
    pub worker_id: String,
    /// This binary, started again as the per-run supervisor.
    pub agent_exe: PathBuf,
    /// Shared with the daemon's status reporter: (task, queue) while a user process is waited on.
    pub current_task: Option<CurrentTask>,
}

/// The directories of one run, all named by its run id.
pub struct RunDirs {
    pub venv: PathBuf,
    /// `<runs_dir>/<run>`: markers of this run's effects live here, outside the checkout.
    pub run: PathBuf,
    pub code: PathBuf,
    pub proc: PathBuf,
}

/// What the resume, claim, stop and report checks read of a task.
#[derive(Debug, Clone)]
pub struct TaskView {
    pub status: String,
    pub message: String,
    pub last_worker: String,
}

/// An API error as an effect failure: the server unreachable, answering 5xx or garbage is worth
/// retrying; any other answer is definite.
pub fn api_failure(e: ApiError) -> EffectFailure {
    let transient = match &e {
        ApiError::Transport { .. } | ApiError::Protocol { .. } => true,
        ApiError::Server { code, .. } => *code >= 500 || e.is_retryable(),
        _ => false,
    };
    if transient {
        EffectFailure::retry(e.to_string())
    } else {
        EffectFailure::fatal(e.to_string())
    }
}

impl World {
    pub fn dirs(&self, state: &RunState) -> RunDirs {
        let run = self.settings.runs_dir.join(&state.run_id);
        RunDirs {
            venv: self.settings.venvs_dir.join(&state.run_id),
            code: run.join("code"),
            proc: run.join("proc"),
            run,
        }
    }

    /// A line from the agent in the task's console; failures to log never fail the run.
    pub fn say(&self, state: &RunState, level: &str, msg: &str) {
        let _ = agent_line(
            &self.api,
            &state.task_id,
            &self.worker_id,
            level,
            &format!("{msg}\n"),
        );
    }

    pub fn status_message(&self) -> String {
        format!("Changed by clearml-agent {}", self.worker_id)
    }

    pub fn set_current_task(&self, task: Option<(String, String)>) {
        if let Some(current) = &self.current_task {
            *current.lock().unwrap_or_else(|e| e.into_inner()) = task;
        }
    }

    /// The task as the server sees it now; `None` when it no longer exists.
    pub fn server_view(&self, task: &str) -> Result<Option<TaskView>, ApiError> {
        let data = self.api.call(
            "v2.14/tasks.get_all",
            &json!({"id": [task], "only_fields": ["status", "status_message", "last_worker"], "search_hidden": true}),
        )?;
        let text = |t: &Value, k: &str| t[k].as_str().unwrap_or("").to_string();
        Ok(data["tasks"]
            .as_array()
            .and_then(|t| t.first())
            .map(|t| TaskView {
                status: text(t, "status"),
                message: text(t, "status_message"),
                last_worker: text(t, "last_worker"),
            }))
    }

    /// Another worker runs the task now (it was requeued and pulled elsewhere).
    pub fn taken_by_other<'v>(&self, view: &'v TaskView) -> Option<&'v str> {
        (view.status == "in_progress"
            && !view.last_worker.is_empty()
            && view.last_worker != self.worker_id)
            .then_some(view.last_worker.as_str())
    }

    /// Whether the task waits in the queue it was pulled from (someone enqueued it again).
    pub fn waits_in_queue(&self, state: &RunState) -> bool {
        let Some(queue) = &state.snapshot.queue else {
            return false;
        };
        self.api
            .call("queues.get_by_id", &json!({"queue": queue}))
            .map(|d| {
                d["queue"]["entries"].as_array().is_some_and(|e| {
                    e.iter()
                        .any(|e| e["task"].as_str() == Some(state.task_id.as_str()))
                })
            })
            .unwrap_or(false)
    }

    /// The resume check: whether the task moved on while no agent watched this run.
    pub fn moved_on(&self, state: &RunState) -> Option<String> {
        let view = match self.server_view(&state.task_id) {
            Ok(Some(v)) => v,
            Ok(None) => return Some("task not found".into()),
            // Unreachable now: the run goes on and the running checks catch up later.
            Err(_) => return None,
        };
        if let Some(other) = self.taken_by_other(&view) {
            return Some(format!("task taken by worker {other}"));
        }
        // A protocol-2 run not claimed yet: its claim decides (nothing was done for it yet).
        if state.ext.protocol >= 2 && !state.ext.claimed {
            return None;
        }
        match view.status.as_str() {
            "in_progress" if view.message.contains("stopping") => Some("stopped".into()),
            "in_progress" => None,
            "created" => Some("reset while the agent was down".into()),
            // A run journaled before claims were journal effects may have died before it
            // marked the task started: still ours unless it was put back in its queue.
            "queued" if state.ext.protocol < 2 && !self.waits_in_queue(state) => None,
            "queued" => Some("enqueued again while the agent was down".into()),
            other => Some(format!(
                "status changed to {other} while the agent was down"
            )),
        }
    }
}

/// `rel` (a task's `working_dir` or entry point) resolved inside `base`, the run's checkout: an
/// absolute path, a `..` that climbs out, or a symlink that leads out is refused, naming `field`.
pub fn inside(base: &std::path::Path, rel: &str, field: &str) -> Result<PathBuf, EffectFailure> {
    use std::path::Component;
    let outside = || {
        EffectFailure::fatal(format!(
            "{field} {rel:?} resolves outside the task's checkout"
        ))
    };
    let mut depth = 0usize;
    for c in std::path::Path::new(rel).components() {
        match c {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir if depth > 0 => depth -= 1,
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => {
                return Err(outside())
            }
        }
    }
    let path = base.join(rel);
    // Whatever exists of it must not lead out through a symlink.
    let mut existing = path.as_path();
    while !existing.exists() {
        match existing.parent() {
            Some(p) => existing = p,
            None => return Ok(path),
        }
    }
    let (Ok(real), Ok(real_base)) = (existing.canonicalize(), base.canonicalize()) else {
        return Ok(path);
    };
    if real.starts_with(&real_base) {
        Ok(path)
    } else {
        Err(outside())
    }
}
