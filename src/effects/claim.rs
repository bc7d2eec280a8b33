//! `Claim`: the task becomes this agent's. The daemon journals `PulledV2` after only peeking at
//! its queue, so the claim is the first change on the server, and it is bracketed by the
//! journal like every other effect: out of the queue (`queues.remove_task`), then
//! `tasks.started`, then the status report that routes a UI abort to this worker.
//!
//! Redo is safe: removing a task that is no longer queued removes nothing, and `tasks.started`
//! on a task this worker already started changes nothing. The one question a redo must answer
//! differently is "nothing was removed": on a first attempt someone else took the task; after a
//! crash (or a retried attempt) it was this agent.

use super::task::{api_failure, World};
use super::{EffectOutcome, Reconciled};
use crate::fsm::{EffectResult, Origin, RunState, StopRequest};
use serde_json::json;

fn abort(by: impl Into<String>) -> EffectOutcome {
    Ok(EffectResult::StopObserved(StopRequest::Abort {
        by: by.into(),
    }))
}

pub fn perform(w: &World, state: &RunState, again: bool) -> EffectOutcome {
    let task = &state.task_id;
    // A retried attempt is a redo too: its first try may have removed the task already.
    let again = again || state.retries > 0;
    match (state.ext.pull.origin, &state.snapshot.queue) {
        (Origin::Queue, Some(queue)) => {
            let removed = w
                .api
                .call("queues.remove_task", &json!({"queue": queue, "task": task}))
                .map_err(api_failure)?["removed"]
                .as_u64()
                .unwrap_or(0);
            crate::failpoint::hit("after-dequeue");
            if removed == 0 {
                let view = w.server_view(task).map_err(api_failure)?;
                match view {
                    None => return abort("task not found"),
                    Some(v) => {
                        if let Some(other) = w.taken_by_other(&v) {
                            return abort(format!("task taken by worker {other}"));
                        }
                        match v.status.as_str() {
                            // Popped by another worker that has not started it yet.
                            "queued" if !again => {
                                return abort("task taken by another worker before the claim")
                            }
                            "queued" | "in_progress" => {}
                            other => {
                                return abort(format!(
                                    "status changed to {other} before the agent started it"
                                ))
                            }
                        }
                    }
                }
            }
        }
        (Origin::Queue, None) => {}
        (Origin::Execute, _) => {
            // `execute` runs a task wherever it waits: out of its queue first, as upstream.
            let view = w.server_view(task).map_err(api_failure)?;
            if view.as_ref().is_some_and(|v| v.status == "queued") {
                w.api
                    .call(
                        "tasks.dequeue",
                        &json!({"task": task, "new_status": "in_progress"}),
                    )
                    .map_err(api_failure)?;
            }
        }
    }
    w.api
        .call(
            "v2.5/tasks.started",
            &json!({"task": task, "force": true, "status_reason": "worker started execution", "status_message": "pulled by agent"}),
        )
        .map_err(api_failure)?;
    crate::failpoint::hit("after-started");
    announce(w, state);
    Ok(EffectResult::Claimed)
}

/// Best effort: the UI's view of who runs the task (a missed one is sent by the reporter).
fn announce(w: &World, state: &RunState) {
    let task = &state.task_id;
    let queue = state.snapshot.queue.clone().unwrap_or_default();
    w.set_current_task(Some((task.clone(), queue.clone())));
    // At once (as upstream): the server needs `last_worker` to route a UI abort to us
    // ("stopping") instead of stopping the task itself.
    let mut report = json!({"worker": w.worker_id, "timestamp": crate::host::now_ms() / 1000 * 1000, "task": task});
    if !queue.is_empty() {
        report["queue"] = json!(queue);
    }
    let _ = w.api.call("workers.status_report", &report);
    // Runtime bookkeeping the UI shows, merged into what the task has, as upstream writes it.
    let runtime = w
        .api
        .call(
            "v2.14/tasks.get_all",
            &json!({"id": [task], "only_fields": ["runtime"]}),
        )
        .ok()
        .and_then(|d| d["tasks"][0]["runtime"].as_object().cloned());
    let mut runtime = runtime.unwrap_or_default();
    runtime.insert(
        "_exec_agent_hostname".into(),
        json!(crate::host::hostname()),
    );
    let _ = w.api.call(
        "tasks.edit",
        &json!({"task": task, "force": true, "runtime": runtime}),
    );
    w.say(
        state,
        "INFO",
        &format!(
            "task {task} pulled by worker {} as run {}",
            w.worker_id, state.run_id
        ),
    );
}

/// A claim found without a result is claimed again (see the module docs).
pub fn reconcile(w: &World, state: &RunState) -> Reconciled {
    match perform(w, state, true) {
        Ok(r) => Reconciled::Done(r),
        // Never `Redo`: a plain perform would take "nothing removed" for someone else's pop.
        // A transient failure is journaled as one, and the retry knows it is a redo.
        Err(super::EffectError::Failed(f)) => Reconciled::Failed(f),
        Err(super::EffectError::Detached(why)) => {
            Reconciled::Failed(super::EffectFailure::retry(why))
        }
    }
}
