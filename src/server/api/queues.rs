//! `queues.*`: named FIFO queues of task entries. `get_next_task` pops the head atomically (the
//! store's lock makes the read-pop-write one step), so concurrent agents never get the same task.

use super::{str_field, Ctx};
use crate::server::auth::new_id;
use crate::server::envelope::ApiError;
use crate::server::params::Params;
use crate::server::query::{project, sort, tags_match, NameFilter, Page};
use crate::server::store::{Doc, Docs, Kind};
use serde_json::{json, Value};

/// Queues with these tags are hidden from `get_all` unless asked for (`services.queues.hidden_tags`).
const HIDDEN_TAGS: [&str; 1] = ["k8s-glue"];

pub fn handle(ctx: &Ctx, action: &str, p: &Params) -> Option<Result<Value, ApiError>> {
    Some(match action {
        "create" => create(ctx, p),
        "get_all" | "get_all_ex" => get_all(ctx, p),
        "get_by_id" => get_by_id(ctx, p),
        "get_default" => ctx
            .store
            .read(|docs| default_queue(docs).map(|(id, name)| json!({"id": id, "name": name}))),
        "get_next_task" => get_next_task(ctx, p),
        "get_num_entries" => get_num_entries(ctx, p),
        "add_task" => add_task(ctx, p),
        "remove_task" => remove_task(ctx, p),
        "clear_queue" => clear_queue(ctx, p),
        "peek_task" => peek_task(ctx, p),
        "update" => update(ctx, p),
        "delete" => delete(ctx, p),
        "move_task_to_front" => move_task(ctx, p, Move::Front),
        "move_task_to_back" => move_task(ctx, p, Move::Back),
        "move_task_forward" => move_task(ctx, p, Move::By(-1)),
        "move_task_backward" => move_task(ctx, p, Move::By(1)),
        "get_queue_metrics" => Ok(json!({"queues": []})),
        _ => return None,
    })
}

fn queue<'d>(docs: &'d Docs, id: &str) -> Result<&'d Doc, ApiError> {
    docs.get(Kind::Queue, id)
        .ok_or_else(|| ApiError::invalid_queue(id))
}

fn entries(doc: &Doc) -> Vec<Value> {
    entries_of(doc).to_vec()
}

fn entries_of(doc: &Doc) -> &[Value] {
    doc.get("entries")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

/// The queue tagged `default`: 400/707 when none is, 400/708 when several are.
pub fn default_queue(docs: &Docs) -> Result<(String, String), ApiError> {
    let found: Vec<(String, String)> = docs
        .map(Kind::Queue)
        .iter()
        .filter(|(_, q)| tags_match(q, "system_tags", &["default".into()]))
        .map(|(id, q)| (id.clone(), str_field(q, "name").to_string()))
        .collect();
    match found.len() {
        0 => Err(ApiError::new(400, 707, "No default queue found")),
        1 => Ok(found.into_iter().next().expect("one element")),
        _ => Err(ApiError::new(400, 708, "Multiple default queues found")),
    }
}

/// Creates a queue named `name` (unique, at least 3 characters) and returns its id.
pub fn insert_queue(
    ctx: &Ctx,
    docs: &mut Docs,
    name: &str,
    tags: Vec<String>,
    system_tags: Vec<String>,
) -> Result<String, ApiError> {
    if name.chars().count() < 3 {
        return Err(ApiError::validation(
            "field 'name' must be at least 3 characters",
        ));
    }
    if docs
        .map(Kind::Queue)
        .values()
        .any(|q| str_field(q, "name") == name)
    {
        return Err(ApiError::not_unique(&format!("name={name}")));
    }
    let id = new_id();
    let identity = ctx.identity();
    let doc = json!({
        "id": id, "name": name, "display_name": name, "user": identity.user, "company": identity.company,
        "created": ctx.now_iso(), "last_update": ctx.now_iso(), "tags": tags, "system_tags": system_tags,
        "entries": [], "metadata": {},
    });
    docs.insert(
        Kind::Queue,
        &id,
        doc.as_object().expect("literal object").clone(),
    );
    Ok(id)
}

fn create(ctx: &Ctx, p: &Params) -> Result<Value, ApiError> {
    let name = p.req_str("name")?.trim().to_string();
    let tags = p.str_list("tags")?.unwrap_or_default();
    let system_tags = p.str_list("system_tags")?.unwrap_or_default();
    let display_name = p.str("display_name")?.map(str::to_string);
    let metadata = p.object("metadata")?.cloned();
    ctx.store.write(|docs| {
        let id = insert_queue(ctx, docs, &name, tags, system_tags)?;
        let q = docs.doc_mut(Kind::Queue, &id).expect("just inserted");
        if let Some(d) = display_name {
            q.insert("display_name".into(), json!(d));
        }
        if let Some(m) = metadata {
            q.insert("metadata".into(), Value::Object(m));
        }
        Ok(json!({"id": id}))
    })
}

fn shown(doc: &Doc, max_entries: Option<i64>) -> Doc {
    let mut out = doc.clone();
    if let Some(max) = max_entries {
        let mut e = entries(doc);
        e.truncate(max.max(0) as usize);
        out.insert("entries".into(), Value::Array(e));
    }
    out
}

fn get_all(ctx: &Ctx, p: &Params) -> Result<Value, ApiError> {
    let ids = match p.get("id") {
        Some(Value::String(s)) => Some(vec![s.clone()]),
        _ => p.str_list("id")?,
    };
    let name = p.str("name")?.map(NameFilter::new);
    let tags = p.str_list("tags")?;
    let system_tags = p.str_list("system_tags")?;
    let search_hidden = p.bool("search_hidden", false)? || ids.is_some() || name.is_some();
    let only_fields = p.str_list("only_fields")?;
    let max_entries = p.int("max_task_entries")?;
    let order_by = p.str_list("order_by")?.unwrap_or_default();
    let search_text = p.str("search_text")?.map(str::to_lowercase);
    let page = Page::of(p)?;
    ctx.store.read(|docs| {
        let mut matched: Vec<&Doc> = docs
            .map(Kind::Queue)
            .values()
            .filter(|q| {
                ids.as_ref()
                    .is_none_or(|l| l.iter().any(|i| i == str_field(q, "id")))
                    && name
                        .as_ref()
                        .is_none_or(|n| n.matches(str_field(q, "name")))
                    && tags.as_ref().is_none_or(|t| tags_match(q, "tags", t))
                    && system_tags
                        .as_ref()
                        .is_none_or(|t| tags_match(q, "system_tags", t))
                    && (search_hidden
                        || !HIDDEN_TAGS
                            .iter()
                            .any(|h| tags_match(q, "tags", &[h.to_string()])))
                    && search_text
                        .as_ref()
                        .is_none_or(|t| str_field(q, "name").to_lowercase().contains(t))
            })
            .collect();
        sort(&mut matched, &order_by);
        let queues: Vec<Value> = matched
            .into_iter()
            .skip(page.skip)
            .take(page.take)
            .map(|q| project(&shown(q, max_entries), only_fields.as_deref()))
            .collect();
        Ok(json!({"queues": queues}))
    })
}

fn get_by_id(ctx: &Ctx, p: &Params) -> Result<Value, ApiError> {
    let id = p.req_id("queue")?;
    let max_entries = p.int("max_task_entries")?;
    ctx.store
        .read(|docs| Ok(json!({"queue": shown(queue(docs, id)?, max_entries)})))
}

fn get_next_task(ctx: &Ctx, p: &Params) -> Result<Value, ApiError> {
    let id = p.req_id("queue")?;
    let only_task = p.str("task")?;
    let task_info = p.bool("get_task_info", false)?;
    ctx.store.write(|docs| {
        let head = queue(docs, id)?
            .get("entries")
            .and_then(Value::as_array)
            .and_then(|e| e.first());
        let head_matches = match (head, only_task) {
            (None, _) => false,
            (Some(head), Some(t)) => head["task"] == t,
            (Some(_), None) => true,
        };
        if !head_matches {
            return Ok(json!({}));
        }
        // Pop in place: cloning the entry list would make every pop O(queue length).
        let q = docs.doc_mut(Kind::Queue, id).expect("checked above");
        let entry = match q.get_mut("entries") {
            Some(Value::Array(list)) => list.remove(0),
            _ => unreachable!("the head was read above"),
        };
        q.insert("last_update".into(), json!(ctx.now_iso()));
        let task_id = entry["task"].as_str().unwrap_or("").to_string();
        let mut out = json!({"entry": entry});
        // The real server's race fix: a task stopped while queued goes back to queued when popped.
        if let Some(t) = docs.doc_mut(Kind::Task, &task_id) {
            if str_field(t, "status") == "stopped" {
                t.insert("status".into(), json!("queued"));
            }
            if task_info {
                out["task_info"] = json!({"company": t.get("company"), "user": t.get("user")});
            }
        }
        Ok(out)
    })
}

fn get_num_entries(ctx: &Ctx, p: &Params) -> Result<Value, ApiError> {
    let id = p.req_id("queue")?;
    ctx.store
        .read(|docs| Ok(json!({"num": entries(queue(docs, id)?).len()})))
}

fn add_task(ctx: &Ctx, p: &Params) -> Result<Value, ApiError> {
    let id = p.req_id("queue")?;
    let task = p.req_id("task")?;
    ctx.store.write(|docs| {
        super::task(docs, task)?;
        if entries_of(queue(docs, id)?)
            .iter()
            .any(|e| e["task"] == task)
        {
            return Err(ApiError::new(
                400,
                706,
                format!("Task already queued: task={task}, queue={id}"),
            ));
        }
        let q = docs.doc_mut(Kind::Queue, id).expect("checked above");
        match q.get_mut("entries") {
            Some(Value::Array(list)) => list.push(json!({"task": task, "added": ctx.now_iso()})),
            _ => {
                q.insert(
                    "entries".into(),
                    json!([{"task": task, "added": ctx.now_iso()}]),
                );
            }
        }
        q.insert("last_update".into(), json!(ctx.now_iso()));
        Ok(json!({"added": 1}))
    })
}

fn remove_task(ctx: &Ctx, p: &Params) -> Result<Value, ApiError> {
    let id = p.req_id("queue")?;
    let task = p.req_id("task")?;
    let update_status = p.bool("update_task_status", false)?;
    ctx.store.write(|docs| {
        queue(docs, id)?;
        let removed = super::tasks::remove_from_queues(docs, task, Some(id));
        if update_status && removed > 0 {
            revert_queued(ctx, docs, task);
        }
        Ok(json!({"removed": removed}))
    })
}

/// A task taken out of its queue goes back to the status it had before it was enqueued.
fn revert_queued(ctx: &Ctx, docs: &mut Docs, task: &str) {
    if let Some(t) = docs.doc_mut(Kind::Task, task) {
        if str_field(t, "status") == "queued" {
            let back = t
                .get("enqueue_status")
                .and_then(Value::as_str)
                .unwrap_or("created")
                .to_string();
            let _ = super::tasks::change_status(t, ctx, &back, true, "", "");
            t.remove("enqueue_status");
        }
    }
}

fn clear_queue(ctx: &Ctx, p: &Params) -> Result<Value, ApiError> {
    let id = p.req_id("queue")?;
    let update_status = p.bool("update_task_status", false)?;
    ctx.store.write(|docs| {
        let tasks: Vec<String> = entries(queue(docs, id)?)
            .iter()
            .filter_map(|e| e["task"].as_str().map(str::to_string))
            .collect();
        docs.doc_mut(Kind::Queue, id)
            .expect("checked above")
            .insert("entries".into(), json!([]));
        if update_status {
            for t in &tasks {
                revert_queued(ctx, docs, t);
            }
        }
        Ok(json!({"removed_tasks": tasks}))
    })
}

fn peek_task(ctx: &Ctx, p: &Params) -> Result<Value, ApiError> {
    let id = p.req_id("queue")?;
    ctx.store.read(|docs| {
        Ok(match entries(queue(docs, id)?).first() {
            Some(e) => json!({"task": e["task"]}),
            None => json!({}),
        })
    })
}

fn update(ctx: &Ctx, p: &Params) -> Result<Value, ApiError> {
    let id = p.req_id("queue")?;
    let name = p.str("name")?.map(|s| s.trim().to_string());
    let mut fields = serde_json::Map::new();
    for f in ["tags", "system_tags"] {
        if let Some(v) = p.str_list(f)? {
            fields.insert(f.into(), json!(v));
        }
    }
    if let Some(d) = p.str("display_name")? {
        fields.insert("display_name".into(), json!(d));
    }
    ctx.store.write(|docs| {
        queue(docs, id)?;
        if let Some(name) = &name {
            if name.chars().count() < 3 {
                return Err(ApiError::validation(
                    "field 'name' must be at least 3 characters",
                ));
            }
            if docs
                .map(Kind::Queue)
                .iter()
                .any(|(qid, q)| qid != id && str_field(q, "name") == name)
            {
                return Err(ApiError::not_unique(&format!("name={name}")));
            }
            fields.insert("name".into(), json!(name));
        }
        let q = docs.doc_mut(Kind::Queue, id).expect("checked above");
        for (k, v) in &fields {
            q.insert(k.clone(), v.clone());
        }
        q.insert("last_update".into(), json!(ctx.now_iso()));
        Ok(json!({"updated": 1, "fields": fields}))
    })
}

fn delete(ctx: &Ctx, p: &Params) -> Result<Value, ApiError> {
    let id = p.req_id("queue")?;
    let force = p.bool("force", false)?;
    ctx.store.write(|docs| {
        let tasks = entries(queue(docs, id)?);
        if !tasks.is_empty() && !force {
            return Err(ApiError::new(
                400,
                702,
                format!(
                    "Queue is not empty: queue={id}, num_entries={}",
                    tasks.len()
                ),
            ));
        }
        docs.remove(Kind::Queue, id);
        for e in &tasks {
            if let Some(t) = e["task"].as_str() {
                revert_queued(ctx, docs, t);
            }
        }
        Ok(json!({"deleted": 1}))
    })
}

enum Move {
    Front,
    Back,
    By(i64),
}

fn move_task(ctx: &Ctx, p: &Params, how: Move) -> Result<Value, ApiError> {
    let id = p.req_id("queue")?;
    let task = p.req_id("task")?;
    let count = p.int("count")?.unwrap_or(1).max(1);
    ctx.store.write(|docs| {
        let mut list = entries(queue(docs, id)?);
        let pos = list
            .iter()
            .position(|e| e["task"] == task)
            .ok_or_else(|| ApiError::invalid_task(task).with_data(json!({"queue": id})))?;
        let entry = list.remove(pos);
        let new_pos = match how {
            Move::Front => 0,
            Move::Back => list.len(),
            Move::By(dir) => (pos as i64 + dir * count).clamp(0, list.len() as i64) as usize,
        };
        list.insert(new_pos, entry);
        docs.doc_mut(Kind::Queue, id)
            .expect("checked above")
            .insert("entries".into(), Value::Array(list));
        Ok(json!({"position": new_pos}))
    })
}
