//! The buttons. Each is a POST carrying the session's CSRF token, run in-process through the
//! API's own handlers ([`crate::server::api::call_in_process`]), so a page can do exactly what
//! an API client may and the status rules live in one place. The outcome is a flash message on
//! the page the form came from.

use super::session::{check_post, safe_next, Flash};
use super::WebState;
use crate::server::api::call_in_process;
use crate::server::envelope::ApiError;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::sync::Arc;

fn call(web: &WebState, endpoint: &str, params: Value) -> Result<Value, ApiError> {
    let params = match params {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    let app = &web.app;
    call_in_process(&app.store, &app.server, &app.semantics, endpoint, params)
}

/// What a task button does, as API calls. Returns the message to show and, for a clone, the
/// new task's id.
pub fn run_task_action(
    web: &WebState,
    task: &str,
    action: &str,
    form: &HashMap<String, String>,
) -> Result<(String, Option<String>), ApiError> {
    let id = json!(task);
    match action {
        "abort" => {
            let out = call(
                web,
                "tasks.stop",
                json!({"task": id, "status_reason": "aborted from the web page"}),
            )?;
            let asked = out["fields"]["status_message"] == "stopping";
            Ok((
                if asked {
                    "Abort requested: the worker running it will stop it.".into()
                } else {
                    "Aborted.".into()
                },
                None,
            ))
        }
        "enqueue" => {
            let queue = form.get("queue").map(String::as_str).unwrap_or("");
            let mut p = json!({"task": id, "status_reason": "enqueued from the web page"});
            if !queue.is_empty() {
                p["queue"] = json!(queue);
            }
            call(web, "tasks.enqueue", p)?;
            Ok(("Enqueued.".into(), None))
        }
        "dequeue" => {
            let out = call(
                web,
                "tasks.dequeue",
                json!({"task": id, "status_reason": "dequeued from the web page"}),
            )?;
            if out["dequeued"].as_u64().unwrap_or(0) == 0
                && out["updated"].as_u64().unwrap_or(0) == 0
            {
                return Err(ApiError::task_status("the task is not queued"));
            }
            Ok(("Dequeued.".into(), None))
        }
        "reset" => {
            call(web, "tasks.reset", json!({"task": id}))?;
            Ok((
                "Reset: the experiment is a draft again and its outputs are cleared.".into(),
                None,
            ))
        }
        "clone" => {
            let name = form.get("name").map(|s| s.trim()).filter(|s| !s.is_empty());
            let mut p = json!({"task": id});
            if let Some(n) = name {
                p["new_task_name"] = json!(n);
            }
            let out = call(web, "tasks.clone", p)?;
            let new_id = out["id"].as_str().unwrap_or("").to_string();
            Ok(("Cloned: this is the new draft.".into(), Some(new_id)))
        }
        "archive" | "unarchive" => {
            let current = call(web, "tasks.get_by_id", json!({"task": id}))?;
            let mut tags: Vec<String> = current["task"]["system_tags"]
                .as_array()
                .map(|l| {
                    l.iter()
                        .filter_map(|t| t.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            tags.retain(|t| t != "archived");
            if action == "archive" {
                // A queued task leaves its queue first, as the real server's tasks.archive does.
                if current["task"]["status"] == "queued" {
                    call(
                        web,
                        "tasks.dequeue",
                        json!({"task": id, "status_reason": "archived"}),
                    )?;
                }
                tags.push("archived".into());
            }
            call(
                web,
                "tasks.update",
                json!({"task": id, "system_tags": tags}),
            )?;
            Ok((
                if action == "archive" {
                    "Archived."
                } else {
                    "Restored from the archive."
                }
                .into(),
                None,
            ))
        }
        other => Err(ApiError::bad_request(format!("unknown action {other}"))),
    }
}

/// What a queue button does.
pub fn run_queue_action(
    web: &WebState,
    queue: &str,
    action: &str,
    form: &HashMap<String, String>,
) -> Result<String, ApiError> {
    let task = form.get("task").cloned().unwrap_or_default();
    let q = json!(queue);
    match action {
        "front" => call(
            web,
            "queues.move_task_to_front",
            json!({"queue": q, "task": task}),
        )
        .map(|_| "Moved to the front.".into()),
        "back" => call(
            web,
            "queues.move_task_to_back",
            json!({"queue": q, "task": task}),
        )
        .map(|_| "Moved to the back.".into()),
        "remove" => call(
            web,
            "queues.remove_task",
            json!({"queue": q, "task": task, "update_task_status": true}),
        )
        .map(|_| "Removed from the queue (the task is back to its previous status).".into()),
        "clear" => call(
            web,
            "queues.clear_queue",
            json!({"queue": q, "update_task_status": true}),
        )
        .map(|out| {
            format!(
                "Cleared ({} removed).",
                out["removed_tasks"].as_array().map_or(0, Vec::len)
            )
        }),
        other => Err(ApiError::bad_request(format!("unknown action {other}"))),
    }
}

fn flash(web: &WebState, sid: &str, result: Result<String, ApiError>) {
    let f = match result {
        Ok(text) => Flash { ok: true, text },
        Err(e) => Flash {
            ok: false,
            text: e.msg,
        },
    };
    web.sessions.set_flash(sid, f);
}

/// `POST /web/tasks/{task}/{action}`.
pub async fn task_action(
    State(web): State<Arc<WebState>>,
    headers: HeaderMap,
    Path((task, action)): Path<(String, String)>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let authed = match check_post(&web, &headers, form.get("csrf").map(String::as_str)) {
        Ok(a) => a,
        Err(r) => return r.into_response(),
    };
    let back = safe_next(form.get("back").map(String::as_str).unwrap_or("/projects"));
    let w = web.clone();
    let (t, a, f) = (task.clone(), action.clone(), form.clone());
    let result = tokio::task::spawn_blocking(move || run_task_action(&w, &t, &a, &f))
        .await
        .unwrap_or_else(|e| Err(ApiError::internal(e.to_string())));
    let target = match &result {
        Ok((_, Some(new_id))) => format!("/projects/*/experiments/{new_id}/execution"),
        _ => back,
    };
    flash(&web, &authed.sid, result.map(|(m, _)| m));
    Redirect::to(&target).into_response()
}

/// `POST /web/queues/{queue}/{action}`.
pub async fn queue_action(
    State(web): State<Arc<WebState>>,
    headers: HeaderMap,
    Path((queue, action)): Path<(String, String)>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let authed = match check_post(&web, &headers, form.get("csrf").map(String::as_str)) {
        Ok(a) => a,
        Err(r) => return r.into_response(),
    };
    let back = safe_next(form.get("back").map(String::as_str).unwrap_or("/queues"));
    let w = web.clone();
    let result = tokio::task::spawn_blocking(move || run_queue_action(&w, &queue, &action, &form))
        .await
        .unwrap_or_else(|e| Err(ApiError::internal(e.to_string())));
    flash(&web, &authed.sid, result);
    Redirect::to(&back).into_response()
}
