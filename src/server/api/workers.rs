//! `workers.*`: registrations with a TTL that every status report refreshes. Expiry is lazy: an
//! entry whose `expires` has passed is invisible and is purged on the next write.

use super::{str_field, task, Ctx};
use crate::server::envelope::ApiError;
use crate::server::params::Params;
use crate::server::store::{Doc, Docs, Kind};
use serde_json::{json, Value};

pub fn handle(ctx: &Ctx, action: &str, p: &Params) -> Option<Result<Value, ApiError>> {
    Some(match action {
        "register" => register(ctx, p),
        "unregister" => unregister(ctx, p),
        "status_report" => status_report(ctx, p),
        "get_all" => get_all(ctx, p),
        "get_count" => get_count(ctx, p),
        _ => return None,
    })
}

fn expires(doc: &Doc) -> u64 {
    doc.get("expires_ms").and_then(Value::as_u64).unwrap_or(0)
}

fn alive(doc: &Doc, now_ms: u64) -> bool {
    expires(doc) > now_ms
}

/// Whether a live worker lists `queue` among the queues it serves.
pub fn queue_watched(docs: &Docs, queue: &str, now_ms: u64) -> bool {
    docs.map(Kind::Worker).values().any(|w| {
        alive(w, now_ms)
            && w.get("queues")
                .and_then(Value::as_array)
                .is_some_and(|q| q.iter().any(|x| x == queue))
    })
}

fn purge_expired(docs: &mut Docs, now_ms: u64) {
    let dead: Vec<String> = docs
        .map(Kind::Worker)
        .iter()
        .filter(|(_, w)| !alive(w, now_ms))
        .map(|(id, _)| id.clone())
        .collect();
    for id in dead {
        docs.remove(Kind::Worker, &id);
    }
}

fn validate_queues(docs: &Docs, queues: &Option<Vec<String>>) -> Result<(), ApiError> {
    for q in queues.iter().flatten() {
        docs.get(Kind::Queue, q)
            .ok_or_else(|| ApiError::invalid_queue(q))?;
    }
    Ok(())
}

fn new_worker(ctx: &Ctx, id: &str, timeout_s: u64) -> Doc {
    let identity = ctx.identity();
    let now = ctx.now_iso();
    json!({
        "id": id,
        "user": {"id": identity.user, "name": identity.user_name},
        "company": {"id": identity.company, "name": identity.company_name},
        "ip": ctx.client_ip,
        "register_time": now,
        "last_activity_time": now,
        "register_timeout": timeout_s,
        "expires_ms": ctx.now_ms + timeout_s * 1000,
        "queues": [],
        "tags": [],
        "system_tags": [],
        "key": format!("worker_{}_{}_{id}", identity.company, identity.user),
    })
    .as_object()
    .expect("literal object")
    .clone()
}

fn register(ctx: &Ctx, p: &Params) -> Result<Value, ApiError> {
    let id = p.req_id("worker")?;
    let timeout = p
        .int("timeout")?
        .unwrap_or(ctx.semantics.worker_timeout_s as i64);
    if timeout <= 0 {
        return Err(ApiError::new(
            400,
            1002,
            format!("Worker registration failed: timeout must be positive, worker={id}"),
        ));
    }
    let queues = p.str_list("queues")?;
    let tags = p.str_list("tags")?;
    let system_tags = p.str_list("system_tags")?;
    ctx.store.write(|docs| {
        validate_queues(docs, &queues)?;
        purge_expired(docs, ctx.now_ms);
        let mut doc = new_worker(ctx, id, timeout as u64);
        doc.insert("queues".into(), json!(queues.clone().unwrap_or_default()));
        doc.insert("tags".into(), json!(tags.clone().unwrap_or_default()));
        doc.insert(
            "system_tags".into(),
            json!(system_tags.clone().unwrap_or_default()),
        );
        docs.insert(Kind::Worker, id, doc);
        Ok(json!({}))
    })
}

fn unregister(ctx: &Ctx, p: &Params) -> Result<Value, ApiError> {
    let id = p.req_id("worker")?;
    ctx.store.write(|docs| {
        docs.remove(Kind::Worker, id);
        Ok(json!({}))
    })
}

fn status_report(ctx: &Ctx, p: &Params) -> Result<Value, ApiError> {
    let id = p.req_id("worker")?;
    if p.int("timestamp")?.is_none() {
        return Err(ApiError::missing_field("timestamp"));
    }
    let task_id = p.str("task")?.map(str::to_string);
    let queue = p.str("queue")?.map(str::to_string);
    let queues = p.str_list("queues")?;
    let tags = p.str_list("tags")?;
    // Kept as reported, for the web page's workers table (the real server keeps a series).
    let machine_stats = p.object("machine_stats")?.cloned();
    ctx.store.write(|docs| {
        let task_ref = match &task_id {
            Some(t) => {
                let doc = task(docs, t)?;
                let project = doc
                    .get("project")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string();
                let project_name = docs
                    .get(Kind::Project, &project)
                    .map(|p| str_field(p, "name").to_string())
                    .unwrap_or_default();
                Some((
                    json!({"id": t, "name": str_field(doc, "name")}),
                    json!({"id": project, "name": project_name}),
                ))
            }
            None => None,
        };
        let mut doc = match docs.get(Kind::Worker, id) {
            Some(w) if alive(w, ctx.now_ms) => w.clone(),
            // Auto-register, as the real server does (`auto_register: true`).
            _ => new_worker(ctx, id, ctx.semantics.worker_timeout_s),
        };
        let timeout = doc
            .get("register_timeout")
            .and_then(Value::as_u64)
            .unwrap_or(ctx.semantics.worker_timeout_s);
        doc.insert("last_activity_time".into(), json!(ctx.now_iso()));
        doc.insert("last_report_time".into(), json!(ctx.now_iso()));
        doc.insert("expires_ms".into(), json!(ctx.now_ms + timeout * 1000));
        if let Some(q) = &queue {
            doc.insert("queue".into(), json!(q));
        }
        if let Some(q) = &queues {
            doc.insert("queues".into(), json!(q));
        }
        if let Some(t) = &tags {
            doc.insert("tags".into(), json!(t));
        }
        if let Some(stats) = &machine_stats {
            doc.insert("machine_stats".into(), Value::Object(stats.clone()));
        }
        match task_ref {
            Some((t, project)) => {
                doc.insert("task".into(), t);
                doc.insert("project".into(), project);
            }
            None => {
                doc.remove("task");
                doc.remove("project");
            }
        }
        docs.insert(Kind::Worker, id, doc);
        if let Some(t) = &task_id {
            let now = json!(ctx.now_iso());
            let tdoc = docs.doc_mut(Kind::Task, t).expect("checked above");
            tdoc.insert("last_worker".into(), json!(id));
            tdoc.insert("last_worker_report".into(), now.clone());
            tdoc.insert("last_update".into(), now);
        }
        purge_expired(docs, ctx.now_ms);
        Ok(json!({}))
    })
}

fn queue_info(docs: &Docs, qid: &str) -> Value {
    match docs.get(Kind::Queue, qid) {
        None => json!({"id": qid}),
        Some(q) => {
            let entries = q
                .get("entries")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let next = entries.first().and_then(|e| e["task"].as_str()).map(|t| {
                json!({"id": t, "name": docs.get(Kind::Task, t).map(|d| str_field(d, "name")).unwrap_or("")})
            });
            let mut info = json!({"id": qid, "name": str_field(q, "name"), "display_name": q.get("display_name"), "num_tasks": entries.len()});
            if let Some(n) = next {
                info["next_task"] = n;
            }
            info
        }
    }
}

fn shown(docs: &Docs, w: &Doc, now_ms: u64) -> Value {
    let mut out = w.clone();
    out.remove("expires_ms");
    if let Some(tid) = w
        .get("task")
        .and_then(|t| t.get("id"))
        .and_then(Value::as_str)
    {
        if let Some(t) = docs.get(Kind::Task, tid) {
            let started = t
                .get("started")
                .and_then(Value::as_str)
                .and_then(|s| humantime::parse_rfc3339(s).ok());
            let running_ms = started
                .and_then(|s| s.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| now_ms.saturating_sub(d.as_millis() as u64));
            out.insert(
                "task".into(),
                json!({"id": tid, "name": str_field(t, "name"), "running_time": running_ms, "last_iteration": t.get("last_iteration").cloned().unwrap_or(json!(0))}),
            );
        }
    }
    if let Some(q) = w.get("queue").and_then(Value::as_str) {
        out.insert("queue".into(), queue_info(docs, q));
    }
    let queues: Vec<Value> = w
        .get("queues")
        .and_then(Value::as_array)
        .map(|l| {
            l.iter()
                .filter_map(Value::as_str)
                .map(|q| queue_info(docs, q))
                .collect()
        })
        .unwrap_or_default();
    out.insert("queues".into(), Value::Array(queues));
    Value::Object(out)
}

fn seen_within(w: &Doc, now_ms: u64, last_seen_s: i64) -> bool {
    if last_seen_s <= 0 {
        return true;
    }
    let last = w
        .get("last_activity_time")
        .and_then(Value::as_str)
        .and_then(|s| humantime::parse_rfc3339(s).ok())
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_millis() as u64);
    last + (last_seen_s as u64) * 1000 >= now_ms
}

fn get_all(ctx: &Ctx, p: &Params) -> Result<Value, ApiError> {
    let last_seen = p.int("last_seen")?.unwrap_or(3600);
    let pattern = p
        .str("worker_pattern")?
        .map(crate::server::query::NameFilter::new);
    ctx.store.read(|docs| {
        let mut workers: Vec<&Doc> = docs
            .map(Kind::Worker)
            .values()
            .filter(|w| alive(w, ctx.now_ms) && seen_within(w, ctx.now_ms, last_seen))
            .filter(|w| pattern.as_ref().is_none_or(|f| f.matches(str_field(w, "id"))))
            .collect();
        workers.sort_by(|a, b| str_field(a, "id").cmp(str_field(b, "id")));
        Ok(json!({"workers": workers.into_iter().map(|w| shown(docs, w, ctx.now_ms)).collect::<Vec<_>>()}))
    })
}

fn get_count(ctx: &Ctx, p: &Params) -> Result<Value, ApiError> {
    let last_seen = p.int("last_seen")?.unwrap_or(0);
    ctx.store.read(|docs| {
        let n = docs
            .map(Kind::Worker)
            .values()
            .filter(|w| alive(w, ctx.now_ms) && seen_within(w, ctx.now_ms, last_seen))
            .count();
        Ok(json!({"count": n}))
    })
}
