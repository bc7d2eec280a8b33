//! `events.*`: task logs and metrics. Log events are append-only and navigable by timestamp;
//! scalar events also update the task's `last_iteration` and `last_metrics`.

use super::{str_field, Ctx, Reply};
use crate::server::envelope::ApiError;
use crate::server::params::{drop_nulls, Params};
use crate::server::store::Kind;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

const EVENT_TYPES: [&str; 5] = [
    "log",
    "training_stats_scalar",
    "training_stats_vector",
    "training_debug_image",
    "plot",
];

pub fn handle(ctx: &Ctx, action: &str, p: &Params) -> Option<Result<Reply, ApiError>> {
    let json = |r: Result<Value, ApiError>| Some(r.map(Reply::Json));
    match action {
        "add_batch" => json(add_batch(ctx)),
        "add" => json(add_events(ctx, vec![Value::Object(p.0.clone())])),
        "get_task_log" => json(get_task_log(ctx, p)),
        "get_task_events" => json(get_task_events(ctx, p)),
        "download_task_log" => Some(download_task_log(ctx, p)),
        "delete_for_task" => json(delete_for_task(ctx, p)),
        "get_scalar_metrics_and_variants" => json(scalar_metrics_and_variants(ctx, p)),
        "scalar_metrics_iter_histogram" => json(scalar_histogram(ctx, p)),
        _ => None,
    }
}

/// The body of `add_batch`: json-lines (one event per line), or a JSON list of events.
fn parse_batch(body: &[u8]) -> Result<Vec<Value>, ApiError> {
    let text = std::str::from_utf8(body)
        .map_err(|_| ApiError::bad_request("events batch is not UTF-8"))?;
    if text.trim_start().starts_with('[') {
        return match serde_json::from_str::<Value>(text) {
            Ok(Value::Array(items)) => Ok(items.into_iter().map(drop_nulls).collect()),
            _ => Err(ApiError::bad_request(
                "events batch is not a valid JSON list",
            )),
        };
    }
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str::<Value>(l)
                .map(drop_nulls)
                .map_err(|e| {
                    ApiError::bad_request(format!(
                        "events batch line {}: not valid JSON: {e}",
                        i + 1
                    ))
                })
        })
        .collect()
}

fn add_batch(ctx: &Ctx) -> Result<Value, ApiError> {
    let events = parse_batch(ctx.raw_body)?;
    add_events(ctx, events)
}

fn metric_hash(name: &str) -> String {
    format!("{:x}", md5::compute(name.as_bytes()))
}

/// Validates each event, stores the good ones and updates their tasks. Bad events are counted
/// by reason, as the real server does; a batch with no good event is 400/131.
fn add_events(ctx: &Ctx, events: Vec<Value>) -> Result<Value, ApiError> {
    if events.is_empty() {
        return Err(ApiError::new(400, 17, "Batch contains no items"));
    }
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut logs: BTreeMap<String, Vec<(u64, Value)>> = BTreeMap::new();
    let mut others: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    // Each distinct task's status, looked up once per batch: None when the task is unknown.
    let wanted: std::collections::BTreeSet<String> = events
        .iter()
        .filter_map(|e| e.get("task").and_then(Value::as_str).map(str::to_string))
        .collect();
    let status: std::collections::HashMap<String, Option<String>> = ctx.store.read(|docs| {
        wanted
            .iter()
            .map(|t| {
                (
                    t.clone(),
                    docs.get(Kind::Task, t)
                        .map(|d| str_field(d, "status").to_string()),
                )
            })
            .collect()
    });
    for ev in events {
        let Value::Object(mut ev) = ev else {
            *errors
                .entry("Event must be a JSON object".into())
                .or_default() += 1;
            continue;
        };
        let ty = ev
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("")
            .replace(' ', "_");
        if !EVENT_TYPES.contains(&ty.as_str()) {
            *errors
                .entry(format!("Invalid event type {ty}"))
                .or_default() += 1;
            continue;
        }
        let Some(task) = ev.get("task").and_then(Value::as_str).map(str::to_string) else {
            *errors.entry("Event has no task".into()).or_default() += 1;
            continue;
        };
        let Some(Some(task_status)) = status.get(&task) else {
            *errors.entry("Invalid task id".into()).or_default() += 1;
            continue;
        };
        let allow_locked = ev
            .get("allow_locked")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        if matches!(task_status.as_str(), "published" | "publishing") && !allow_locked {
            *errors.entry("Task is published".into()).or_default() += 1;
            continue;
        }
        let ts = ev
            .get("timestamp")
            .or_else(|| ev.get("ts"))
            .and_then(Value::as_f64)
            .map(|t| t as u64)
            .unwrap_or(ctx.now_ms);
        if let Some(iter) = ev.get("iter") {
            if iter.as_i64().is_none() {
                *errors
                    .entry("Iteration must be a 64-bit integer".into())
                    .or_default() += 1;
                continue;
            }
        }
        ev.insert("type".into(), json!(ty));
        ev.insert("timestamp".into(), json!(ts));
        ev.remove("ts");
        if !ev.contains_key("worker") {
            if let Some(w) = &ctx.worker_header {
                ev.insert("worker".into(), json!(w));
            }
        }
        if ty == "log" {
            ev.entry("level").or_insert(json!("info"));
            ev.entry("msg").or_insert(json!(""));
            logs.entry(task).or_default().push((ts, Value::Object(ev)));
        } else {
            ev.entry("metric").or_insert(json!(""));
            ev.entry("variant").or_insert(json!(""));
            others.entry(task).or_default().push(Value::Object(ev));
        }
    }
    let mut added = 0u64;
    for (task, items) in &logs {
        ctx.store.append_logs(task, items)?;
        added += items.len() as u64;
    }
    for (task, items) in &others {
        ctx.store.append_events(task, items)?;
        added += items.len() as u64;
    }
    let errors_total: u64 = errors.values().sum();
    if added == 0 {
        return Err(ApiError::new(400, 131, "Events not added")
            .with_data(json!({"errors": errors_total, "errors_info": errors})));
    }
    ctx.store.write(|docs| {
        for task in logs.keys().chain(others.keys()) {
            if let Some(doc) = docs.doc_mut(Kind::Task, task) {
                doc.insert("last_update".into(), json!(ctx.now_iso()));
                if let Some(items) = others.get(task) {
                    update_metrics(doc, items);
                }
            }
        }
        Ok::<_, ApiError>(())
    })?;
    Ok(json!({"added": added, "errors": errors_total, "errors_info": errors}))
}

fn update_metrics(doc: &mut Map<String, Value>, items: &[Value]) {
    let mut last_iter = doc
        .get("last_iteration")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    let metrics = doc.entry("last_metrics").or_insert_with(|| json!({}));
    if !metrics.is_object() {
        *metrics = json!({});
    }
    for ev in items {
        let iter = ev.get("iter").and_then(Value::as_i64);
        if let Some(i) = iter {
            last_iter = last_iter.max(i);
        }
        if ev["type"] != "training_stats_scalar" {
            continue;
        }
        let Some(value) = ev.get("value").and_then(Value::as_f64) else {
            continue;
        };
        let metric = ev["metric"].as_str().unwrap_or("");
        let variant = ev["variant"].as_str().unwrap_or("");
        let iter = iter.unwrap_or(0);
        let m = metrics
            .as_object_mut()
            .expect("made an object above")
            .entry(metric_hash(metric))
            .or_insert_with(|| json!({}));
        let v = m
            .as_object_mut()
            .map(|m| m.entry(metric_hash(variant)).or_insert_with(|| json!({})));
        let Some(v) = v.and_then(Value::as_object_mut) else {
            continue;
        };
        let count = v.get("count").and_then(Value::as_u64).unwrap_or(0);
        let mean = v.get("mean_value").and_then(Value::as_f64).unwrap_or(0.0);
        if count == 0 {
            v.insert("metric".into(), json!(metric));
            v.insert("variant".into(), json!(variant));
            v.insert("first_value".into(), json!(value));
            v.insert("first_value_iteration".into(), json!(iter));
            v.insert("min_value".into(), json!(value));
            v.insert("min_value_iteration".into(), json!(iter));
            v.insert("max_value".into(), json!(value));
            v.insert("max_value_iteration".into(), json!(iter));
        }
        if value < v.get("min_value").and_then(Value::as_f64).unwrap_or(value) {
            v.insert("min_value".into(), json!(value));
            v.insert("min_value_iteration".into(), json!(iter));
        }
        if value > v.get("max_value").and_then(Value::as_f64).unwrap_or(value) {
            v.insert("max_value".into(), json!(value));
            v.insert("max_value_iteration".into(), json!(iter));
        }
        v.insert("value".into(), json!(value));
        v.insert("iter".into(), json!(iter));
        v.insert("count".into(), json!(count + 1));
        v.insert(
            "mean_value".into(),
            json!(mean + (value - mean) / (count + 1) as f64),
        );
    }
    doc.insert("last_iteration".into(), json!(last_iter));
}

fn known_task(ctx: &Ctx, id: &str) -> Result<(), ApiError> {
    ctx.store.read(|docs| super::task(docs, id).map(|_| ()))
}

fn get_task_log(ctx: &Ctx, p: &Params) -> Result<Value, ApiError> {
    let task = p.req_id("task")?;
    let batch = p.int("batch_size")?.unwrap_or(5000).clamp(1, 100_000) as usize;
    let earlier = p.bool("navigate_earlier", true)?;
    let from = p.number("from_timestamp")?.map(|t| t.max(0.0) as u64);
    let order = p.str("order")?.map(str::to_string);
    if let Some(o) = &order {
        if o != "asc" && o != "desc" {
            return Err(ApiError::validation("field 'order' must be asc or desc"));
        }
    }
    known_task(ctx, task)?;
    let mut events = ctx.store.logs(task, earlier, from, batch)?;
    // Navigating earlier yields newest first; `order` reverses when it disagrees.
    let natural = if earlier { "desc" } else { "asc" };
    if order.as_deref().is_some_and(|o| o != natural) {
        events.reverse();
    }
    let total = ctx.store.log_count(task)?;
    Ok(json!({"events": events, "returned": events.len(), "total": total}))
}

fn get_task_events(ctx: &Ctx, p: &Params) -> Result<Value, ApiError> {
    let task = p.req_id("task")?;
    let event_type = p.str("event_type")?.unwrap_or("*").to_string();
    let batch = p.int("batch_size")?.unwrap_or(500).clamp(1, 10_000) as usize;
    let desc = p.str("order")? == Some("desc");
    let offset = p
        .str("scroll_id")?
        .and_then(|s| s.parse::<usize>().ok())
        .unwrap_or(0);
    let metrics: Vec<String> = p
        .list("metrics")?
        .map(|l| {
            l.iter()
                .filter_map(|m| m.get("metric").and_then(Value::as_str).map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    known_task(ctx, task)?;
    let mut all: Vec<Value> = if event_type == "log" {
        ctx.store.logs(task, false, None, usize::MAX)?
    } else {
        let mut v = Vec::new();
        for ev in ctx.store.events(task) {
            let ev = ev?;
            if (event_type == "*" || ev["type"] == event_type.as_str())
                && (metrics.is_empty() || metrics.iter().any(|m| ev["metric"] == m.as_str()))
            {
                v.push(ev);
            }
        }
        v
    };
    if desc {
        all.reverse();
    }
    let total = all.len();
    let page: Vec<Value> = all.into_iter().skip(offset).take(batch).collect();
    let next = offset + page.len();
    Ok(
        json!({"events": page, "returned": page.len(), "total": total, "scroll_id": next.to_string()}),
    )
}

fn download_task_log(ctx: &Ctx, p: &Params) -> Result<Reply, ApiError> {
    let task = p.req_id("task")?;
    let line_type = p.str("line_type")?.unwrap_or("json").to_string();
    if line_type != "json" && line_type != "text" {
        return Err(ApiError::validation(
            "field 'line_type' must be json or text",
        ));
    }
    known_task(ctx, task)?;
    let mut out = String::new();
    for ev in ctx.store.logs(task, false, None, usize::MAX)? {
        if line_type == "json" {
            out.push_str(&ev.to_string());
            out.push('\n');
        } else {
            let ts = ev["timestamp"].as_u64().unwrap_or(0);
            let msg = ev["msg"].as_str().unwrap_or("");
            out.push_str(&format!(
                "{} {} {}\n",
                crate::server::query::iso(ts),
                ev["level"].as_str().unwrap_or(""),
                msg.trim_end_matches('\n')
            ));
        }
    }
    Ok(Reply::Text(out))
}

fn delete_for_task(ctx: &Ctx, p: &Params) -> Result<Value, ApiError> {
    let task = p.req_id("task")?;
    known_task(ctx, task)?;
    Ok(json!({"deleted": ctx.store.delete_events(task)?}))
}

fn scalars(ctx: &Ctx, task: &str) -> Result<Vec<Value>, ApiError> {
    let mut out = Vec::new();
    for ev in ctx.store.events(task) {
        let ev = ev?;
        if ev["type"] == "training_stats_scalar" {
            out.push(ev);
        }
    }
    Ok(out)
}

fn scalar_metrics_and_variants(ctx: &Ctx, p: &Params) -> Result<Value, ApiError> {
    let task = p.req_id("task")?;
    known_task(ctx, task)?;
    let mut metrics: Map<String, Value> = Map::new();
    for ev in scalars(ctx, task)? {
        let (m, v) = (
            ev["metric"].as_str().unwrap_or(""),
            ev["variant"].as_str().unwrap_or(""),
        );
        let entry = metrics.entry(m.to_string()).or_insert_with(|| json!({}));
        entry[v] = json!({"name": v});
    }
    Ok(json!({"metrics": metrics}))
}

fn scalar_histogram(ctx: &Ctx, p: &Params) -> Result<Value, ApiError> {
    let task = p.req_id("task")?;
    let key = p.str("key")?.unwrap_or("iter").to_string();
    if !["iter", "timestamp", "iso_time"].contains(&key.as_str()) {
        return Err(ApiError::validation(
            "field 'key' must be iter, timestamp or iso_time",
        ));
    }
    known_task(ctx, task)?;
    let mut series: BTreeMap<(String, String), BTreeMap<i64, f64>> = BTreeMap::new();
    for ev in scalars(ctx, task)? {
        let x = if key == "iter" {
            ev["iter"].as_i64().unwrap_or(0)
        } else {
            ev["timestamp"].as_i64().unwrap_or(0)
        };
        let (m, v) = (
            ev["metric"].as_str().unwrap_or("").to_string(),
            ev["variant"].as_str().unwrap_or("").to_string(),
        );
        series
            .entry((m, v))
            .or_default()
            .insert(x, ev["value"].as_f64().unwrap_or(0.0));
    }
    let mut out = Map::new();
    for ((metric, variant), points) in series {
        let entry = out.entry(metric).or_insert_with(|| json!({}));
        entry[variant.as_str()] = json!({
            "name": variant,
            "x": points.keys().collect::<Vec<_>>(),
            "y": points.values().collect::<Vec<_>>(),
        });
    }
    Ok(Value::Object(out))
}
