//! `tasks.*`: the task documents, their status machine and their queue membership.

use super::{str_field, task, Ctx};
use crate::server::auth::new_id;
use crate::server::envelope::ApiError;
use crate::server::params::Params;
use crate::server::query::{project, sort, tags_match, NameFilter, Page};
use crate::server::status::transition_allowed;
use crate::server::store::{Doc, Docs, Kind};
use serde_json::{json, Map, Value};

pub const TYPES: [&str; 11] = [
    "training",
    "testing",
    "inference",
    "data_processing",
    "application",
    "monitor",
    "controller",
    "optimizer",
    "service",
    "qc",
    "custom",
];

/// Fields kept in the document but never returned (the real server excludes them too).
const INTERNAL: [&str; 1] = ["enqueue_status"];

pub fn handle(ctx: &Ctx, action: &str, p: &Params) -> Option<Result<Value, ApiError>> {
    Some(match action {
        "create" => create(ctx, p),
        "edit" => edit(ctx, p),
        "update" => update(ctx, p),
        "get_by_id" | "get_by_id_ex" => get_by_id(ctx, p),
        "get_all" | "get_all_ex" => get_all(ctx, p),
        "started" => set_status(ctx, p, "in_progress"),
        "stopped" => set_status(ctx, p, "stopped"),
        "failed" => set_status(ctx, p, "failed"),
        "completed" => set_status(ctx, p, "completed"),
        "close" => set_status(ctx, p, "closed"),
        "publish" => set_status(ctx, p, "published"),
        "stop" => stop(ctx, p),
        "ping" => ping(ctx, p),
        "enqueue" => enqueue(ctx, p),
        "dequeue" => dequeue(ctx, p),
        "reset" => reset(ctx, p),
        "delete" => delete(ctx, p),
        "clone" => clone(ctx, p),
        "set_requirements" => set_requirements(ctx, p),
        "add_or_update_artifacts" => add_or_update_artifacts(ctx, p),
        "delete_artifacts" => delete_artifacts(ctx, p),
        "get_hyper_params" => get_hyper_params(ctx, p),
        "edit_hyper_params" => edit_hyper_params(ctx, p),
        "delete_hyper_params" => delete_hyper_params(ctx, p),
        "get_configurations" => get_configurations(ctx, p),
        "get_configuration_names" => get_configuration_names(ctx, p),
        "edit_configuration" => edit_configuration(ctx, p),
        "delete_configuration" => delete_configuration(ctx, p),
        "get_types" => get_types(ctx),
        _ => return None,
    })
}

/// The document as the clients see it.
pub fn public(doc: &Doc) -> Doc {
    let mut out = doc.clone();
    for k in INTERNAL {
        out.remove(k);
    }
    out
}

fn touch(doc: &mut Doc, ctx: &Ctx) {
    let now = ctx.now_iso();
    doc.insert("last_update".into(), json!(now));
    doc.insert("last_change".into(), json!(now));
    doc.insert("last_changed_by".into(), json!(ctx.identity().user));
}

fn sub<'d>(doc: &'d mut Doc, field: &str) -> &'d mut Map<String, Value> {
    let entry = doc.entry(field.to_string()).or_insert_with(|| json!({}));
    if !entry.is_object() {
        *entry = json!({});
    }
    entry.as_object_mut().expect("made an object above")
}

fn check_string_list(p: &Params, field: &str) -> Result<(), ApiError> {
    p.str_list(field).map(|_| ())
}

/// Validates and applies the user-settable fields of `create`/`edit`. `script`, `execution`,
/// `output` and `models` are shallow-merged; everything else is replaced.
fn apply_fields(docs: &Docs, doc: &mut Doc, p: &Params) -> Result<Map<String, Value>, ApiError> {
    let mut fields = Map::new();
    if let Some(name) = p.str("name")? {
        if name.trim().chars().count() < 3 {
            return Err(ApiError::validation(
                "field 'name' must be at least 3 characters",
            ));
        }
    }
    if let Some(t) = p.str("type")? {
        if !TYPES.contains(&t) {
            return Err(ApiError::validation(format!(
                "field 'type' must be one of {}",
                TYPES.join(", ")
            )));
        }
    }
    if let Some(project) = p.str("project")? {
        if !project.is_empty() && docs.get(Kind::Project, project).is_none() {
            return Err(ApiError::invalid_project(project));
        }
    }
    check_string_list(p, "tags")?;
    check_string_list(p, "system_tags")?;
    for f in [
        "script",
        "execution",
        "output",
        "models",
        "runtime",
        "container",
        "hyperparams",
        "configuration",
    ] {
        p.object(f)?;
    }
    for f in ["comment", "parent", "output_dest"] {
        p.str(f)?;
    }
    for f in [
        "name",
        "type",
        "comment",
        "parent",
        "project",
        "tags",
        "system_tags",
        "runtime",
        "container",
        "hyperparams",
        "configuration",
    ] {
        if let Some(v) = p.get(f) {
            let v = if f == "name" {
                json!(v.as_str().unwrap_or("").trim())
            } else {
                v.clone()
            };
            doc.insert(f.into(), v.clone());
            fields.insert(f.into(), v);
        }
    }
    for f in ["script", "execution", "output", "models"] {
        if let Some(given) = p.object(f)? {
            let target = sub(doc, f);
            for (k, v) in given {
                let v = match (f, v) {
                    ("script", Value::String(s)) if k != "diff" => json!(s.trim()),
                    _ => v.clone(),
                };
                target.insert(k.clone(), v.clone());
                fields.insert(format!("{f}.{k}"), v);
            }
        }
    }
    if let Some(dest) = p.str("output_dest")? {
        sub(doc, "output").insert("destination".into(), json!(dest));
        fields.insert("output.destination".into(), json!(dest));
    }
    Ok(fields)
}

fn new_task_doc(ctx: &Ctx, id: &str) -> Doc {
    let identity = ctx.identity();
    let now = ctx.now_iso();
    json!({
        "id": id,
        "name": "",
        "type": "training",
        "status": "created",
        "status_reason": "",
        "status_message": "",
        "status_changed": now,
        "comment": "",
        "user": identity.user,
        "company": identity.company,
        "project": null,
        "parent": null,
        "created": now,
        "last_update": now,
        "last_change": now,
        "last_changed_by": identity.user,
        "last_iteration": 0,
        "last_metrics": {},
        "execution": {},
        "script": {"binary": "python", "repository": "", "entry_point": ""},
        "runtime": {},
        "output": {},
        "models": {"input": [], "output": []},
        "container": {},
        "hyperparams": {},
        "configuration": {},
        "tags": [],
        "system_tags": [],
    })
    .as_object()
    .expect("literal object")
    .iter()
    .filter(|(_, v)| !v.is_null())
    .map(|(k, v)| (k.clone(), v.clone()))
    .collect()
}

fn create(ctx: &Ctx, p: &Params) -> Result<Value, ApiError> {
    p.req_str("name")?;
    p.req_str("type")?;
    let id = new_id();
    ctx.store.write(|docs| {
        let mut doc = new_task_doc(ctx, &id);
        apply_fields(docs, &mut doc, p)?;
        docs.insert(Kind::Task, &id, doc);
        Ok(json!({"id": id}))
    })
}

fn edit(ctx: &Ctx, p: &Params) -> Result<Value, ApiError> {
    let id = p.req_id("task")?;
    let force = p.bool("force", false)?;
    ctx.store.write(|docs| {
        let status = str_field(task(docs, id)?, "status").to_string();
        if !force && status != "created" {
            return Err(ApiError::task_status(format!(
                "expected=created, status={status}"
            )));
        }
        let mut doc = task(docs, id)?.clone();
        let fields = apply_fields(docs, &mut doc, p)?;
        touch(&mut doc, ctx);
        docs.insert(Kind::Task, id, doc);
        Ok(json!({"updated": 1, "fields": fields}))
    })
}

fn update(ctx: &Ctx, p: &Params) -> Result<Value, ApiError> {
    let id = p.req_id("task")?;
    let mut fields = Map::new();
    for f in [
        "name",
        "comment",
        "project",
        "parent",
        "status_reason",
        "status_message",
    ] {
        if let Some(v) = p.str(f)? {
            fields.insert(f.into(), json!(v));
        }
    }
    for f in ["tags", "system_tags"] {
        if let Some(v) = p.str_list(f)? {
            fields.insert(f.into(), json!(v));
        }
    }
    ctx.store.write(|docs| {
        task(docs, id)?;
        if let Some(project) = fields.get("project").and_then(Value::as_str) {
            if docs.get(Kind::Project, project).is_none() {
                return Err(ApiError::invalid_project(project));
            }
        }
        let doc = docs.doc_mut(Kind::Task, id).expect("checked above");
        for (k, v) in &fields {
            doc.insert(k.clone(), v.clone());
        }
        touch(doc, ctx);
        Ok(json!({"updated": 1, "fields": fields}))
    })
}

fn get_by_id(ctx: &Ctx, p: &Params) -> Result<Value, ApiError> {
    let id = p.req_id("task")?;
    ctx.store
        .read(|docs| Ok(json!({"task": public(task(docs, id)?)})))
}

fn str_or_list(p: &Params, field: &str) -> Result<Option<Vec<String>>, ApiError> {
    match p.get(field) {
        Some(Value::String(s)) => Ok(Some(vec![s.clone()])),
        _ => p.str_list(field),
    }
}

fn get_all(ctx: &Ctx, p: &Params) -> Result<Value, ApiError> {
    let ids = str_or_list(p, "id")?;
    let name = p.str("name")?.map(NameFilter::new);
    let projects = str_or_list(p, "project")?;
    let statuses = str_or_list(p, "status")?;
    let types = str_or_list(p, "type")?;
    let users = str_or_list(p, "user")?;
    let parent = p.str("parent")?;
    let tags = p.str_list("tags")?;
    let system_tags = p.str_list("system_tags")?;
    let search_hidden = p.bool("search_hidden", false)? || ids.is_some();
    let search_text = p.str("search_text")?.map(str::to_lowercase);
    let only_fields = p.str_list("only_fields")?;
    let order_by = str_or_list(p, "order_by")?.unwrap_or_default();
    let page = Page::of(p)?;
    ctx.store.read(|docs| {
        let mut matched: Vec<&Doc> = docs
            .map(Kind::Task)
            .values()
            .filter(|d| {
                let s = |f: &str| str_field(d, f).to_string();
                ids.as_ref().is_none_or(|l| l.contains(&s("id")))
                    && name.as_ref().is_none_or(|n| n.matches(&s("name")))
                    && projects.as_ref().is_none_or(|l| l.contains(&s("project")))
                    && statuses.as_ref().is_none_or(|l| l.contains(&s("status")))
                    && types.as_ref().is_none_or(|l| l.contains(&s("type")))
                    && users.as_ref().is_none_or(|l| l.contains(&s("user")))
                    && parent.is_none_or(|x| x == s("parent"))
                    && tags.as_ref().is_none_or(|t| tags_match(d, "tags", t))
                    && system_tags
                        .as_ref()
                        .is_none_or(|t| tags_match(d, "system_tags", t))
                    && search_text.as_ref().is_none_or(|t| {
                        s("name").to_lowercase().contains(t)
                            || s("comment").to_lowercase().contains(t)
                            || s("id").contains(t)
                    })
            })
            .collect();
        if !search_hidden {
            matched.retain(|d| !has_tag(d, "system_tags", "hidden"));
        }
        sort(&mut matched, &order_by);
        let total = matched.len();
        let tasks: Vec<Value> = matched
            .into_iter()
            .skip(page.skip)
            .take(page.take)
            .map(|d| project(&public(d), only_fields.as_deref()))
            .collect();
        let mut out = json!({"tasks": tasks});
        if page.scroll {
            let next = (page.skip + page.take).min(total);
            out["scroll_id"] = json!(next.to_string());
        }
        Ok(out)
    })
}

pub fn has_tag(doc: &Doc, field: &str, tag: &str) -> bool {
    doc.get(field)
        .and_then(Value::as_array)
        .is_some_and(|l| l.iter().any(|t| t.as_str() == Some(tag)))
}

/// Moves `doc` to `to` if the status table (or `force`) allows it, setting the status fields.
pub fn change_status(
    doc: &mut Doc,
    ctx: &Ctx,
    to: &str,
    force: bool,
    reason: &str,
    message: &str,
) -> Result<Map<String, Value>, ApiError> {
    let from = str_field(doc, "status").to_string();
    if !transition_allowed(&from, to, force) {
        return Err(ApiError::task_status(format!(
            "Invalid status change: current_status={from}, new_status={to}"
        )));
    }
    let now = ctx.now_iso();
    let mut fields = Map::new();
    fields.insert("status".into(), json!(to));
    fields.insert("status_reason".into(), json!(reason));
    fields.insert("status_message".into(), json!(message));
    fields.insert("status_changed".into(), json!(now));
    fields.insert("last_update".into(), json!(now));
    fields.insert("last_change".into(), json!(now));
    fields.insert("last_changed_by".into(), json!(ctx.identity().user));
    for (k, v) in &fields {
        doc.insert(k.clone(), v.clone());
    }
    Ok(fields)
}

fn set_status(ctx: &Ctx, p: &Params, to: &str) -> Result<Value, ApiError> {
    let id = p.req_id("task")?;
    let force = p.bool("force", false)?;
    let reason = p.str("status_reason")?.unwrap_or("").to_string();
    let message = p.str("status_message")?.unwrap_or("").to_string();
    let publish = to == "completed" && p.bool("publish", false)?;
    ctx.store.write(|docs| {
        let mut doc = task(docs, id)?.clone();
        let mut fields = change_status(&mut doc, ctx, to, force, &reason, &message)?;
        let now = json!(ctx.now_iso());
        match to {
            "in_progress" if !doc.contains_key("started") => {
                doc.insert("started".into(), now.clone());
                fields.insert("started".into(), now);
            }
            "stopped" | "completed" => {
                doc.insert("completed".into(), now.clone());
                fields.insert("completed".into(), now);
            }
            "published" => {
                doc.insert("published".into(), now.clone());
                fields.insert("published".into(), now);
            }
            _ => {}
        }
        let mut published = 0;
        if publish {
            fields.extend(change_status(
                &mut doc,
                ctx,
                "published",
                false,
                &reason,
                &message,
            )?);
            doc.insert("published".into(), json!(ctx.now_iso()));
            published = 1;
        }
        docs.insert(Kind::Task, id, doc);
        let mut out = json!({"updated": 1, "fields": fields});
        match to {
            "in_progress" => out["started"] = json!(1),
            "completed" => out["published"] = json!(published),
            _ => {}
        }
        Ok(out)
    })
}

/// Removes `task` from every queue's entries (or only `only`); returns how many were removed.
pub fn remove_from_queues(docs: &mut Docs, task: &str, only: Option<&str>) -> usize {
    let holding: Vec<String> = docs
        .map(Kind::Queue)
        .iter()
        .filter(|(qid, q)| {
            only.is_none_or(|o| o == qid.as_str())
                && q.get("entries")
                    .and_then(Value::as_array)
                    .is_some_and(|e| e.iter().any(|x| x["task"] == task))
        })
        .map(|(qid, _)| qid.clone())
        .collect();
    let mut removed = 0;
    for qid in holding {
        if let Some(q) = docs.doc_mut(Kind::Queue, &qid) {
            if let Some(Value::Array(entries)) = q.get_mut("entries") {
                let before = entries.len();
                entries.retain(|e| e["task"] != task);
                removed += before - entries.len();
            }
        }
    }
    removed
}

fn stop(ctx: &Ctx, p: &Params) -> Result<Value, ApiError> {
    let id = p.req_id("task")?;
    let force = p.bool("force", false)?;
    let reason = p.str("status_reason")?.unwrap_or("").to_string();
    let message = p.str("status_message")?.map(str::to_string);
    ctx.store.write(|docs| {
        let mut doc = task(docs, id)?.clone();
        let status = str_field(&doc, "status").to_string();
        let last_update_ms = doc
            .get("last_update")
            .and_then(Value::as_str)
            .and_then(|s| humantime::parse_rfc3339(s).ok())
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_millis() as u64);
        let worker_active = !str_field(&doc, "last_worker").is_empty()
            && ctx.now_ms.saturating_sub(last_update_ms)
                < ctx.semantics.task_update_timeout_s * 1000;
        let immediate =
            status == "queued" || has_tag(&doc, "system_tags", "development") || !worker_active;
        let fields = if immediate {
            let message =
                message.unwrap_or_else(|| format!("Stopped by {}", ctx.identity().user_name));
            let mut fields = change_status(&mut doc, ctx, "stopped", force, &reason, &message)?;
            doc.insert("completed".into(), json!(ctx.now_iso()));
            fields.insert("completed".into(), json!(ctx.now_iso()));
            if status == "queued" {
                remove_from_queues(docs, id, None);
            }
            fields
        } else {
            // A worker is running it: ask the worker to stop (it polls status_message).
            let mut fields = Map::new();
            fields.insert("status_reason".into(), json!(reason));
            fields.insert("status_message".into(), json!("stopping"));
            for (k, v) in &fields {
                doc.insert(k.clone(), v.clone());
            }
            touch(&mut doc, ctx);
            fields
        };
        docs.insert(Kind::Task, id, doc);
        Ok(json!({"updated": 1, "fields": fields}))
    })
}

fn ping(ctx: &Ctx, p: &Params) -> Result<Value, ApiError> {
    let id = p.req_id("task")?;
    ctx.store.write(|docs| {
        task(docs, id)?;
        let doc = docs.doc_mut(Kind::Task, id).expect("checked above");
        doc.insert("last_update".into(), json!(ctx.now_iso()));
        Ok(json!({}))
    })
}

/// The queue a call names: by id, by name (created when missing), or the default queue.
fn resolve_queue(
    ctx: &Ctx,
    docs: &mut Docs,
    queue: Option<&str>,
    queue_name: Option<&str>,
) -> Result<String, ApiError> {
    match (queue, queue_name) {
        (Some(_), Some(_)) => Err(ApiError::validation(
            "only one of 'queue' and 'queue_name' may be given",
        )),
        (Some(q), None) => {
            docs.get(Kind::Queue, q)
                .ok_or_else(|| ApiError::invalid_queue(q))?;
            Ok(q.to_string())
        }
        (None, Some(name)) => {
            let found = docs
                .map(Kind::Queue)
                .iter()
                .find(|(_, q)| str_field(q, "name") == name)
                .map(|(id, _)| id.clone());
            match found {
                Some(id) => Ok(id),
                None => super::queues::insert_queue(ctx, docs, name, vec![], vec![]),
            }
        }
        (None, None) => super::queues::default_queue(docs).map(|(id, _)| id),
    }
}

fn enqueue(ctx: &Ctx, p: &Params) -> Result<Value, ApiError> {
    let id = p.req_id("task")?;
    let force = p.bool("force", false)?;
    let queue = p.str("queue")?;
    let queue_name = p.str("queue_name")?;
    let reason = p.str("status_reason")?.unwrap_or("").to_string();
    let message = p.str("status_message")?.unwrap_or("").to_string();
    ctx.store.write(|docs| {
        task(docs, id)?;
        let qid = resolve_queue(ctx, docs, queue, queue_name)?;
        let current = str_field(task(docs, id)?, "status").to_string();
        if !transition_allowed(&current, "queued", force) {
            return Err(ApiError::task_status(format!(
                "Invalid status change: current_status={current}, new_status=queued"
            )));
        }
        let in_queue = docs
            .get(Kind::Queue, &qid)
            .and_then(|q| q.get("entries"))
            .and_then(Value::as_array)
            .is_some_and(|e| e.iter().any(|x| x["task"] == id));
        if in_queue {
            return Err(ApiError::new(
                400,
                706,
                format!("Task already queued: task={id}, queue={qid}"),
            ));
        }
        let mut doc = task(docs, id)?.clone();
        let previous = str_field(&doc, "status").to_string();
        let mut fields = change_status(&mut doc, ctx, "queued", force, &reason, &message)?;
        doc.insert("enqueue_status".into(), json!(previous));
        if let Some(Value::Array(tags)) = doc.get_mut("system_tags") {
            tags.retain(|t| t != "development");
        }
        sub(&mut doc, "execution").insert("queue".into(), json!(qid));
        fields.insert("execution.queue".into(), json!(qid));
        docs.insert(Kind::Task, id, doc);
        remove_from_queues(docs, id, None);
        let q = docs.doc_mut(Kind::Queue, &qid).expect("resolved above");
        let entry = json!({"task": id, "added": ctx.now_iso()});
        match q.get_mut("entries") {
            Some(Value::Array(entries)) => entries.push(entry),
            _ => {
                q.insert("entries".into(), json!([entry]));
            }
        }
        q.insert("last_update".into(), json!(ctx.now_iso()));
        let watched = super::workers::queue_watched(docs, &qid, ctx.now_ms);
        Ok(json!({"queued": 1, "updated": 1, "fields": fields, "queue_watched": watched}))
    })
}

fn dequeue(ctx: &Ctx, p: &Params) -> Result<Value, ApiError> {
    let id = p.req_id("task")?;
    let all = p.bool("remove_from_all_queues", false)?;
    let new_status = p.str("new_status")?.map(str::to_string);
    let reason = p.str("status_reason")?.unwrap_or("").to_string();
    let message = p.str("status_message")?.unwrap_or("").to_string();
    ctx.store.write(|docs| {
        let mut doc = task(docs, id)?.clone();
        let status = str_field(&doc, "status").to_string();
        let queue = doc
            .get("execution")
            .and_then(|e| e.get("queue"))
            .and_then(Value::as_str)
            .map(str::to_string);
        let mut dequeued = 0;
        if status == "queued" {
            dequeued = if all {
                remove_from_queues(docs, id, None)
            } else {
                remove_from_queues(docs, id, queue.as_deref())
            };
        }
        let mut updated = 0;
        let mut fields = Map::new();
        if status == "queued" || status == "in_progress" {
            let target = new_status
                .clone()
                .or_else(|| {
                    doc.get("enqueue_status")
                        .and_then(Value::as_str)
                        .map(str::to_string)
                })
                .unwrap_or_else(|| "created".into());
            fields = change_status(&mut doc, ctx, &target, true, &reason, &message)?;
            doc.remove("enqueue_status");
            updated = 1;
            docs.insert(Kind::Task, id, doc);
        }
        Ok(json!({"dequeued": dequeued, "updated": updated, "fields": fields}))
    })
}

fn reset(ctx: &Ctx, p: &Params) -> Result<Value, ApiError> {
    let id = p.req_id("task")?;
    let force = p.bool("force", false)?;
    let clear_all = p.bool("clear_all", false)?;
    let removed_events = ctx.store.write(|docs| {
        let mut doc = task(docs, id)?.clone();
        let status = str_field(&doc, "status").to_string();
        if status == "published" && !force {
            return Err(ApiError::task_status(format!("cannot reset a published task without force: task={id}")));
        }
        let dequeued = remove_from_queues(docs, id, None);
        let mut fields = change_status(&mut doc, ctx, "created", true, "reset", "reset")?;
        doc.insert("last_iteration".into(), json!(0));
        doc.insert("last_metrics".into(), json!({}));
        doc.insert("runtime".into(), json!({}));
        sub(&mut doc, "models").insert("output".into(), json!([]));
        for f in ["last_worker", "last_worker_report", "started", "completed", "published", "enqueue_status"] {
            doc.remove(f);
        }
        let execution = sub(&mut doc, "execution");
        execution.remove("queue");
        if let Some(Value::Array(artifacts)) = execution.get_mut("artifacts") {
            artifacts.retain(|a| a.get("mode").and_then(Value::as_str) == Some("input"));
        }
        let output = sub(&mut doc, "output");
        output.remove("result");
        output.remove("error");
        if clear_all {
            doc.insert("execution".into(), json!({}));
            doc.insert("script".into(), json!({}));
        }
        fields.insert("last_iteration".into(), json!(0));
        docs.insert(Kind::Task, id, doc);
        Ok::<_, ApiError>(json!({"updated": 1, "fields": fields, "dequeued": {"removed": dequeued}, "deleted_models": 0}))
    })?;
    let deleted = ctx.store.delete_events(id)?;
    let mut out = removed_events;
    out["events"] = json!({"deleted": deleted});
    Ok(out)
}

fn delete(ctx: &Ctx, p: &Params) -> Result<Value, ApiError> {
    let id = p.req_id("task")?;
    let force = p.bool("force", false)?;
    ctx.store.write(|docs| {
        let status = str_field(task(docs, id)?, "status").to_string();
        if !force && (status == "in_progress" || status == "published") {
            return Err(ApiError::task_status(format!(
                "cannot delete a task that is {status} without force: task={id}"
            )));
        }
        remove_from_queues(docs, id, None);
        docs.remove(Kind::Task, id);
        Ok::<_, ApiError>(())
    })?;
    let deleted = ctx.store.delete_events(id)?;
    Ok(
        json!({"deleted": 1, "updated_children": 0, "updated_models": 0, "events": {"deleted": deleted}, "urls": {}}),
    )
}

fn clone(ctx: &Ctx, p: &Params) -> Result<Value, ApiError> {
    let source = p.req_id("task")?;
    for f in [
        "new_task_hyperparams",
        "new_task_configuration",
        "new_task_container",
        "execution_overrides",
    ] {
        p.object(f)?;
    }
    p.str_list("new_task_tags")?;
    p.str_list("new_task_system_tags")?;
    let id = new_id();
    ctx.store.write(|docs| {
        let src = task(docs, source)?.clone();
        let mut doc = new_task_doc(ctx, &id);
        for f in [
            "script",
            "hyperparams",
            "configuration",
            "container",
            "tags",
            "type",
            "project",
            "comment",
        ] {
            if let Some(v) = src.get(f) {
                doc.insert(f.into(), v.clone());
            }
        }
        let mut execution = src
            .get("execution")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        execution.remove("queue");
        execution.remove("artifacts");
        if let Some(over) = p.object("execution_overrides")? {
            execution.extend(over.clone());
        }
        doc.insert("execution".into(), Value::Object(execution));
        let inputs = src
            .get("models")
            .and_then(|m| m.get("input"))
            .cloned()
            .unwrap_or(json!([]));
        doc.insert("models".into(), json!({"input": inputs, "output": []}));
        if let Some(dest) = src.get("output").and_then(|o| o.get("destination")) {
            doc.insert("output".into(), json!({"destination": dest}));
        }
        let system_tags: Vec<Value> = src
            .get("system_tags")
            .and_then(Value::as_array)
            .map(|l| {
                l.iter()
                    .filter(|t| *t != "development" && *t != "archived")
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        doc.insert("system_tags".into(), json!(system_tags));
        let parent = p
            .str("new_task_parent")?
            .map(str::to_string)
            .unwrap_or_else(|| source.to_string());
        doc.insert("parent".into(), json!(parent));
        doc.insert(
            "name".into(),
            json!(p
                .str("new_task_name")?
                .map(str::to_string)
                .unwrap_or_else(|| format!("{} (Clone)", str_field(&src, "name")))),
        );
        for (param, field) in [
            ("new_task_comment", "comment"),
            ("new_task_project", "project"),
            ("new_task_tags", "tags"),
            ("new_task_system_tags", "system_tags"),
            ("new_task_hyperparams", "hyperparams"),
            ("new_task_configuration", "configuration"),
            ("new_task_container", "container"),
        ] {
            if let Some(v) = p.get(param) {
                doc.insert(field.into(), v.clone());
            }
        }
        if let Some(project) = doc.get("project").and_then(Value::as_str) {
            if docs.get(Kind::Project, project).is_none() {
                return Err(ApiError::invalid_project(project));
            }
        }
        docs.insert(Kind::Task, &id, doc);
        Ok(json!({"id": id}))
    })
}

fn set_requirements(ctx: &Ctx, p: &Params) -> Result<Value, ApiError> {
    let id = p.req_id("task")?;
    let requirements = p
        .object("requirements")?
        .ok_or_else(|| ApiError::missing_field("requirements"))?
        .clone();
    ctx.store.write(|docs| {
        let has_script = task(docs, id)?
            .get("script")
            .and_then(Value::as_object)
            .is_some_and(|s| !s.is_empty());
        if !has_script {
            return Err(ApiError::missing_task_fields(format!(
                "task {id} has no script"
            )));
        }
        let doc = docs.doc_mut(Kind::Task, id).expect("checked above");
        sub(doc, "script").insert("requirements".into(), Value::Object(requirements.clone()));
        touch(doc, ctx);
        Ok(json!({"updated": 1, "fields": {"script.requirements": requirements}}))
    })
}

fn artifact_key(a: &Value) -> (String, String) {
    (
        a.get("mode")
            .and_then(Value::as_str)
            .unwrap_or("output")
            .to_string(),
        a.get("key")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string(),
    )
}

fn add_or_update_artifacts(ctx: &Ctx, p: &Params) -> Result<Value, ApiError> {
    let id = p.req_id("task")?;
    let artifacts = p
        .list("artifacts")?
        .ok_or_else(|| ApiError::missing_field("artifacts"))?;
    if artifacts.is_empty() {
        return Err(ApiError::validation(
            "field 'artifacts' must hold at least one artifact",
        ));
    }
    for (i, a) in artifacts.iter().enumerate() {
        for f in ["key", "type"] {
            if a.get(f).and_then(Value::as_str).is_none() {
                return Err(ApiError::validation(format!(
                    "artifacts[{i}].{f} is required and must be a string"
                )));
            }
        }
    }
    ctx.store.write(|docs| {
        task(docs, id)?;
        let doc = docs.doc_mut(Kind::Task, id).expect("checked above");
        let execution = sub(doc, "execution");
        let list = execution.entry("artifacts").or_insert_with(|| json!([]));
        if !list.is_array() {
            *list = json!([]);
        }
        let list = list.as_array_mut().expect("made a list above");
        for a in artifacts {
            let mut a = a.clone();
            if a.get("mode").is_none() {
                a["mode"] = json!("output");
            }
            match list
                .iter_mut()
                .find(|x| artifact_key(x) == artifact_key(&a))
            {
                Some(existing) => *existing = a,
                None => list.push(a),
            }
        }
        touch(doc, ctx);
        Ok(json!({"updated": artifacts.len()}))
    })
}

fn delete_artifacts(ctx: &Ctx, p: &Params) -> Result<Value, ApiError> {
    let id = p.req_id("task")?;
    let keys: Vec<(String, String)> = p
        .list("artifacts")?
        .ok_or_else(|| ApiError::missing_field("artifacts"))?
        .iter()
        .map(artifact_key)
        .collect();
    ctx.store.write(|docs| {
        task(docs, id)?;
        let doc = docs.doc_mut(Kind::Task, id).expect("checked above");
        let mut deleted = 0;
        if let Some(Value::Array(list)) = sub(doc, "execution").get_mut("artifacts") {
            let before = list.len();
            list.retain(|a| !keys.contains(&artifact_key(a)));
            deleted = before - list.len();
        }
        Ok(json!({"deleted": deleted}))
    })
}

/// Hyperparameter and configuration edits are allowed on a task being created or run by its own
/// process; anything else needs `force`.
fn editable(doc: &Doc, force: bool, id: &str) -> Result<(), ApiError> {
    let status = str_field(doc, "status");
    if force || status == "created" || status == "in_progress" {
        Ok(())
    } else {
        Err(ApiError::task_status(format!(
            "task {id} is {status}; expected=created (use force)"
        )))
    }
}

fn task_ids(p: &Params) -> Result<Vec<String>, ApiError> {
    p.str_list("tasks")?
        .ok_or_else(|| ApiError::missing_field("tasks"))
}

fn get_hyper_params(ctx: &Ctx, p: &Params) -> Result<Value, ApiError> {
    let ids = task_ids(p)?;
    ctx.store.read(|docs| {
        let mut params = Vec::new();
        for id in &ids {
            let doc = task(docs, id)?;
            let items: Vec<Value> = doc
                .get("hyperparams")
                .and_then(Value::as_object)
                .map(|sections| {
                    sections
                        .values()
                        .filter_map(Value::as_object)
                        .flat_map(|s| s.values().cloned())
                        .collect()
                })
                .unwrap_or_default();
            params.push(json!({"task": id, "hyperparams": items}));
        }
        Ok(json!({"params": params}))
    })
}

fn param_item(v: &Value, i: usize, what: &str, with_section: bool) -> Result<Value, ApiError> {
    let obj = v
        .as_object()
        .ok_or_else(|| ApiError::validation(format!("{what}[{i}] must be an object")))?;
    let name = obj
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::validation(format!("{what}[{i}].name is required")))?;
    let as_str = |k: &str| match obj.get(k) {
        None => json!(""),
        Some(Value::String(s)) => json!(s),
        Some(other) => json!(other.to_string()),
    };
    let mut item = json!({"name": name, "value": as_str("value"), "type": as_str("type"), "description": as_str("description")});
    if with_section {
        item["section"] = json!(obj
            .get("section")
            .and_then(Value::as_str)
            .unwrap_or("General"));
    }
    Ok(item)
}

fn edit_hyper_params(ctx: &Ctx, p: &Params) -> Result<Value, ApiError> {
    let id = p.req_id("task")?;
    let force = p.bool("force", false)?;
    let replace = p.str("replace_hyperparams")?.unwrap_or("none").to_string();
    if !["none", "section", "all"].contains(&replace.as_str()) {
        return Err(ApiError::validation(
            "field 'replace_hyperparams' must be none, section or all",
        ));
    }
    let items = p
        .list("hyperparams")?
        .ok_or_else(|| ApiError::missing_field("hyperparams"))?;
    let items: Vec<Value> = items
        .iter()
        .enumerate()
        .map(|(i, v)| param_item(v, i, "hyperparams", true))
        .collect::<Result<_, _>>()?;
    ctx.store.write(|docs| {
        editable(task(docs, id)?, force, id)?;
        let doc = docs.doc_mut(Kind::Task, id).expect("checked above");
        let hp = sub(doc, "hyperparams");
        if replace == "all" {
            hp.clear();
        }
        if replace == "section" {
            for item in &items {
                hp.remove(item["section"].as_str().unwrap_or(""));
            }
        }
        for item in &items {
            let section = item["section"].as_str().unwrap_or("General").to_string();
            let name = item["name"].as_str().unwrap_or("").to_string();
            let s = hp.entry(section).or_insert_with(|| json!({}));
            if !s.is_object() {
                *s = json!({});
            }
            s.as_object_mut()
                .expect("made an object above")
                .insert(name, item.clone());
        }
        touch(doc, ctx);
        Ok(json!({"updated": 1}))
    })
}

fn delete_hyper_params(ctx: &Ctx, p: &Params) -> Result<Value, ApiError> {
    let id = p.req_id("task")?;
    let force = p.bool("force", false)?;
    let items = p
        .list("hyperparams")?
        .ok_or_else(|| ApiError::missing_field("hyperparams"))?
        .clone();
    ctx.store.write(|docs| {
        editable(task(docs, id)?, force, id)?;
        let doc = docs.doc_mut(Kind::Task, id).expect("checked above");
        let hp = sub(doc, "hyperparams");
        let mut deleted = 0;
        for item in &items {
            let section = item
                .get("section")
                .and_then(Value::as_str)
                .unwrap_or("General");
            match item.get("name").and_then(Value::as_str) {
                None => deleted += usize::from(hp.remove(section).is_some()),
                Some(name) => {
                    if let Some(Value::Object(s)) = hp.get_mut(section) {
                        deleted += usize::from(s.remove(name).is_some());
                    }
                }
            }
        }
        touch(doc, ctx);
        Ok(json!({"deleted": deleted}))
    })
}

fn configuration_items(doc: &Doc, names: Option<&Vec<String>>) -> Vec<Value> {
    doc.get("configuration")
        .and_then(Value::as_object)
        .map(|c| {
            c.iter()
                .filter(|(k, _)| names.is_none_or(|n| n.contains(k)))
                .map(|(_, v)| v.clone())
                .collect()
        })
        .unwrap_or_default()
}

fn get_configurations(ctx: &Ctx, p: &Params) -> Result<Value, ApiError> {
    let ids = task_ids(p)?;
    let names = p.str_list("names")?;
    ctx.store.read(|docs| {
        let mut out = Vec::new();
        for id in &ids {
            out.push(json!({"task": id, "configuration": configuration_items(task(docs, id)?, names.as_ref())}));
        }
        Ok(json!({"configurations": out}))
    })
}

fn get_configuration_names(ctx: &Ctx, p: &Params) -> Result<Value, ApiError> {
    let ids = task_ids(p)?;
    ctx.store.read(|docs| {
        let mut out = Vec::new();
        for id in &ids {
            let names: Vec<String> = task(docs, id)?
                .get("configuration")
                .and_then(Value::as_object)
                .map(|c| c.keys().cloned().collect())
                .unwrap_or_default();
            out.push(json!({"task": id, "names": names}));
        }
        Ok(json!({"configurations": out}))
    })
}

fn edit_configuration(ctx: &Ctx, p: &Params) -> Result<Value, ApiError> {
    let id = p.req_id("task")?;
    let force = p.bool("force", false)?;
    let replace = p.bool("replace_configuration", false)?;
    let items = p
        .list("configuration")?
        .ok_or_else(|| ApiError::missing_field("configuration"))?;
    let items: Vec<Value> = items
        .iter()
        .enumerate()
        .map(|(i, v)| param_item(v, i, "configuration", false))
        .collect::<Result<_, _>>()?;
    ctx.store.write(|docs| {
        editable(task(docs, id)?, force, id)?;
        let doc = docs.doc_mut(Kind::Task, id).expect("checked above");
        let conf = sub(doc, "configuration");
        if replace {
            conf.clear();
        }
        for item in &items {
            conf.insert(
                item["name"].as_str().unwrap_or("").to_string(),
                item.clone(),
            );
        }
        touch(doc, ctx);
        Ok(json!({"updated": 1}))
    })
}

fn delete_configuration(ctx: &Ctx, p: &Params) -> Result<Value, ApiError> {
    let id = p.req_id("task")?;
    let force = p.bool("force", false)?;
    let names = p
        .str_list("configuration")?
        .ok_or_else(|| ApiError::missing_field("configuration"))?;
    ctx.store.write(|docs| {
        editable(task(docs, id)?, force, id)?;
        let doc = docs.doc_mut(Kind::Task, id).expect("checked above");
        let conf = sub(doc, "configuration");
        let deleted = names
            .iter()
            .filter(|n| conf.remove(n.as_str()).is_some())
            .count();
        touch(doc, ctx);
        Ok(json!({"deleted": deleted}))
    })
}

fn get_types(ctx: &Ctx) -> Result<Value, ApiError> {
    ctx.store.read(|docs| {
        let mut types: Vec<String> = docs
            .map(Kind::Task)
            .values()
            .map(|d| str_field(d, "type").to_string())
            .collect();
        types.sort();
        types.dedup();
        Ok(json!({"types": types}))
    })
}
