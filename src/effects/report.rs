//! `Report`: the run's outcome to the server. First the output the process left unshipped (the
//! last log batches), then the installed packages and the resolved commit, then the one status
//! call. Every step is retried until it lands (the state machine retries a report forever), so
//! an outage around the end of a task loses neither lines nor the status, and the run is not
//! cleaned up before.
//!
//! Never overrides a final status set by someone else (the user, the SDK), and never reports a
//! task another worker runs now. Redo is safe: reconcile reads the status back; a requeue that
//! landed is moved to the front of its queue again (idempotent).

use super::process::{self, Runtime};
use super::task::{api_failure, World, AGENT_SHUTDOWN};
use super::{EffectCtx, EffectFailure, EffectOutcome, Reconciled};
use crate::api::ApiError;
use crate::fsm::{EffectResult, Outcome, RunState};
use serde_json::json;

fn to_front(w: &World, state: &RunState, queue: Option<String>) {
    // A preempted or lost task goes first in line, not behind newer work.
    if let Some(q) = queue.or_else(|| state.snapshot.queue.clone()) {
        let _ = w.api.call(
            "queues.move_task_to_front",
            &json!({"queue": q, "task": state.task_id}),
        );
    }
}

pub fn perform(
    w: &World,
    rt: &dyn Runtime,
    state: &RunState,
    outcome: &Outcome,
    ctx: &mut EffectCtx,
) -> EffectOutcome {
    let task = &state.task_id;
    process::ship_rest(w, rt, state, ctx)?;
    // The installed packages, with the original request kept in org_pip.
    if let Some(env) = &state.env {
        if !env.installed.is_empty() {
            let org = state.snapshot.requirements.clone().unwrap_or_default();
            w.api
                .call(
                    "v2.5/tasks.set_requirements",
                    &json!({"task": task, "requirements": {"pip": env.installed, "org_pip": org}}),
                )
                .map(|_| ())
                .or_else(|e| transient_only(e, task))?;
        }
    }
    if state
        .snapshot
        .version_num
        .as_deref()
        .unwrap_or("")
        .is_empty()
    {
        if let Some(commit) = state.source.as_ref().and_then(|s| s.commit.clone()) {
            w.api
                .call(
                    "tasks.edit",
                    &json!({"task": task, "force": true, "script": {"version_num": commit}}),
                )
                .map(|_| ())
                .or_else(|e| transient_only(e, task))?;
        }
    }
    let view = w.server_view(task).map_err(api_failure)?;
    let (endpoint, reason, line) = match outcome {
        Outcome::Completed => (
            "tasks.completed",
            "worker execution done".to_string(),
            "Process completed successfully".to_string(),
        ),
        Outcome::Failed { reason } => (
            "tasks.failed",
            reason.clone(),
            format!("Process failed: {reason}"),
        ),
        Outcome::Aborted { by } if by == AGENT_SHUTDOWN => (
            "tasks.stopped",
            AGENT_SHUTDOWN.to_string(),
            "Process aborted: the agent was stopped (clearml-agent daemon --stop)".to_string(),
        ),
        Outcome::Aborted { .. } => (
            "tasks.stopped",
            "task was stopped by tasks.stop".to_string(),
            "Process aborted by user".to_string(),
        ),
        Outcome::Requeued { why } => (
            "tasks.enqueue",
            why.clone(),
            format!("Task requeued: {why}"),
        ),
    };
    // Someone else (the user, the SDK) may have set the final status already: never override
    // it. Only a task still running (as far as the server knows), and not by another worker,
    // is ours to finish; a requeue that already landed only needs its place in line.
    match &view {
        Some(v) if v.status == "in_progress" && w.taken_by_other(v).is_none() => {}
        Some(v) if v.status == "queued" && matches!(outcome, Outcome::Requeued { .. }) => {
            to_front(w, state, None);
            return Ok(EffectResult::Reported);
        }
        _ => return Ok(EffectResult::Reported),
    }
    w.say(state, "DEBUG", &line);
    let mut body = json!({"task": task, "status_reason": reason, "status_message": w.status_message(), "force": true});
    if let Outcome::Requeued { why } = outcome {
        body["status_message"] = json!(why);
        if let Some(q) = &state.snapshot.queue {
            body["queue"] = json!(q);
        }
    }
    match w.api.call(endpoint, &body) {
        Ok(data) => {
            // The crash harness stops here: the status is set, its journal record is not.
            crate::failpoint::hit("after-terminal-call");
            if matches!(outcome, Outcome::Requeued { .. }) {
                let queue = data["fields"]["execution.queue"]
                    .as_str()
                    .map(str::to_string);
                to_front(w, state, queue);
            }
            Ok(EffectResult::Reported)
        }
        Err(e) if e.is_code(400, 101) => Ok(EffectResult::Reported), // the task was deleted meanwhile
        Err(e) => Err(api_failure(e).into()),
    }
}

/// Bookkeeping calls: the server unreachable is retried; a refusal is logged and the report goes
/// on (it is not worth losing the status for).
fn transient_only(e: ApiError, task: &str) -> Result<(), EffectFailure> {
    let f = api_failure(e);
    if f.retryable {
        return Err(f);
    }
    tracing::warn!("task {task}: {}", f.reason);
    Ok(())
}

pub fn reconcile(w: &World, state: &RunState, outcome: &Outcome) -> Reconciled {
    match w.server_view(&state.task_id) {
        Ok(Some(v)) if !matches!(v.status.as_str(), "in_progress" | "queued" | "created") => {
            Reconciled::Done(EffectResult::Reported)
        }
        // A requeue that landed: make sure it is first in line, then it is done.
        Ok(Some(v)) if v.status == "queued" && matches!(outcome, Outcome::Requeued { .. }) => {
            to_front(w, state, None);
            Reconciled::Done(EffectResult::Reported)
        }
        _ => Reconciled::Redo,
    }
}
