//! What the pages show, read from the store's documents under its lock (reads only; every change
//! goes through [`super::actions`]). Fields are read defensively: a document written by any
//! client may lack a field or hold another type, and the page shows what there is.

use crate::server::api::str_field;
use crate::server::store::{Doc, Docs, Kind};
use crate::server::App;
use serde_json::{Map, Value};
use std::collections::HashMap;

/// Milliseconds since the epoch of an ISO-8601 date field.
pub fn ms(doc: &Doc, field: &str) -> Option<u64> {
    let s = doc.get(field)?.as_str()?;
    let t = humantime::parse_rfc3339_weak(s.trim_end_matches('Z')).ok()?;
    Some(t.duration_since(std::time::UNIX_EPOCH).ok()?.as_millis() as u64)
}

/// A path segment as it goes into a URL.
pub fn url_seg(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

fn str_list(doc: &Doc, field: &str) -> Vec<String> {
    doc.get(field)
        .and_then(Value::as_array)
        .map(|l| {
            l.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn has(doc: &Doc, field: &str, tag: &str) -> bool {
    doc.get(field)
        .and_then(Value::as_array)
        .is_some_and(|l| l.iter().any(|t| t.as_str() == Some(tag)))
}

fn nested<'d>(doc: &'d Doc, path: &[&str]) -> Option<&'d Value> {
    let mut cur = doc.get(path[0])?;
    for p in &path[1..] {
        cur = cur.as_object()?.get(*p)?;
    }
    Some(cur)
}

fn nested_str<'d>(doc: &'d Doc, path: &[&str]) -> &'d str {
    nested(doc, path).and_then(Value::as_str).unwrap_or("")
}

/// The user-facing name of a status (the real UI's words).
pub fn status_label(status: &str, message: &str) -> &'static str {
    match status {
        "in_progress" if message == "stopping" => "Aborting",
        "in_progress" => "Running",
        "queued" => "Pending",
        "created" => "Draft",
        "stopped" => "Aborted",
        "completed" => "Completed",
        "failed" => "Failed",
        "published" | "publishing" => "Published",
        "closed" => "Closed",
        _ => "Unknown",
    }
}

/// One line of the experiments table.
#[derive(Debug, Clone)]
pub struct Row {
    pub id: String,
    pub name: String,
    pub status: String,
    pub status_message: String,
    pub status_reason: String,
    pub ty: String,
    pub project_id: String,
    pub project_name: String,
    pub queue: String,
    pub worker: String,
    pub created_ms: Option<u64>,
    pub started_ms: Option<u64>,
    pub completed_ms: Option<u64>,
    pub duration_ms: Option<u64>,
    pub updated_ms: Option<u64>,
    pub last_iteration: i64,
    /// `metric/variant` and the last value, by name.
    pub scalars: Vec<(String, f64)>,
    pub archived: bool,
    pub tags: Vec<String>,
}

fn duration(doc: &Doc, now_ms: u64) -> Option<u64> {
    let started = ms(doc, "started")?;
    let end = match str_field(doc, "status") {
        "in_progress" => now_ms,
        _ => ms(doc, "completed")
            .or_else(|| ms(doc, "status_changed"))
            .unwrap_or(started),
    };
    Some(end.saturating_sub(started))
}

/// The last value of every scalar series of a task (`last_metrics`), by name.
pub fn last_scalars(doc: &Doc) -> Vec<(String, f64)> {
    let mut out = Vec::new();
    if let Some(metrics) = doc.get("last_metrics").and_then(Value::as_object) {
        for variants in metrics.values().filter_map(Value::as_object) {
            for v in variants.values().filter_map(Value::as_object) {
                let (Some(metric), Some(value)) = (
                    v.get("metric").and_then(Value::as_str),
                    v.get("value").and_then(Value::as_f64),
                ) else {
                    continue;
                };
                let variant = v.get("variant").and_then(Value::as_str).unwrap_or("");
                out.push((format!("{metric}/{variant}"), value));
            }
        }
    }
    // The SDK's own machine monitor (`:monitor:...`) after the user's metrics.
    out.sort_by(|a, b| (a.0.starts_with(':'), &a.0).cmp(&(b.0.starts_with(':'), &b.0)));
    out
}

fn names(docs: &Docs, kind: Kind) -> HashMap<&str, &str> {
    docs.map(kind)
        .iter()
        .map(|(id, d)| (id.as_str(), str_field(d, "name")))
        .collect()
}

fn row_of(
    doc: &Doc,
    projects: &HashMap<&str, &str>,
    queues: &HashMap<&str, &str>,
    now_ms: u64,
) -> Row {
    let project_id = str_field(doc, "project").to_string();
    let queue_id = nested_str(doc, &["execution", "queue"]);
    Row {
        id: str_field(doc, "id").to_string(),
        name: str_field(doc, "name").to_string(),
        status: str_field(doc, "status").to_string(),
        status_message: str_field(doc, "status_message").to_string(),
        status_reason: str_field(doc, "status_reason").to_string(),
        ty: str_field(doc, "type").to_string(),
        project_name: projects
            .get(project_id.as_str())
            .copied()
            .unwrap_or("")
            .to_string(),
        project_id,
        queue: queues
            .get(queue_id)
            .map(|s| s.to_string())
            .unwrap_or_else(|| queue_id.to_string()),
        worker: str_field(doc, "last_worker").to_string(),
        created_ms: ms(doc, "created"),
        started_ms: ms(doc, "started"),
        completed_ms: ms(doc, "completed"),
        duration_ms: duration(doc, now_ms),
        updated_ms: ms(doc, "last_update"),
        last_iteration: doc
            .get("last_iteration")
            .and_then(Value::as_i64)
            .unwrap_or(0),
        scalars: last_scalars(doc),
        archived: has(doc, "system_tags", "archived"),
        tags: str_list(doc, "tags"),
    }
}

/// The experiments table's query: project, text, status, type, archived, sort, page.
#[derive(Debug, Clone, PartialEq)]
pub struct Filter {
    /// A project id, or `*` for every project.
    pub project: String,
    pub q: String,
    pub status: String,
    pub ty: String,
    pub archived: bool,
    pub sort: String,
    pub desc: bool,
    /// 0-based.
    pub page: usize,
    pub per: usize,
}

pub const SORTS: [&str; 9] = [
    "name", "status", "type", "queue", "worker", "started", "duration", "updated", "created",
];
pub const MAX_PER_PAGE: usize = 10_000;

impl Filter {
    pub fn from_query(project: &str, q: &HashMap<String, String>) -> Filter {
        let get = |k: &str| q.get(k).map(|s| s.trim().to_string()).unwrap_or_default();
        let sort = get("sort");
        Filter {
            project: if project.is_empty() {
                "*".into()
            } else {
                project.to_string()
            },
            q: get("q"),
            status: get("status"),
            ty: get("type"),
            archived: get("archived") == "1",
            sort: if SORTS.contains(&sort.as_str()) {
                sort
            } else {
                "created".into()
            },
            desc: get("dir") != "asc",
            page: get("page").parse::<usize>().unwrap_or(1).max(1) - 1,
            per: get("per")
                .parse::<usize>()
                .unwrap_or(100)
                .clamp(1, MAX_PER_PAGE),
        }
    }

    /// The query string of this filter with some keys changed (`None` removes one).
    pub fn query(&self, changes: &[(&str, Option<String>)]) -> String {
        let mut pairs: Vec<(&str, String)> = vec![
            ("q", self.q.clone()),
            ("status", self.status.clone()),
            ("type", self.ty.clone()),
            (
                "archived",
                if self.archived {
                    "1".into()
                } else {
                    String::new()
                },
            ),
            ("sort", self.sort.clone()),
            (
                "dir",
                if self.desc {
                    "desc".into()
                } else {
                    "asc".into()
                },
            ),
            ("page", (self.page + 1).to_string()),
            ("per", self.per.to_string()),
        ];
        for (k, v) in changes {
            pairs.retain(|(pk, _)| pk != k);
            if let Some(v) = v {
                pairs.push((k, v.clone()));
            }
        }
        pairs
            .into_iter()
            // Defaults stay out of the URL.
            .filter(|(k, v)| !matches!((*k, v.as_str()), (_, "") | ("page", "1") | ("per", "100")))
            .map(|(k, v)| format!("{k}={}", url_seg(&v)))
            .collect::<Vec<_>>()
            .join("&")
    }

    fn matches(&self, doc: &Doc) -> bool {
        let s = |f: &str| str_field(doc, f);
        if self.project != "*" && s("project") != self.project {
            return false;
        }
        if has(doc, "system_tags", "archived") != self.archived || has(doc, "system_tags", "hidden")
        {
            return false;
        }
        if !self.status.is_empty() && s("status") != self.status {
            return false;
        }
        if !self.ty.is_empty() && s("type") != self.ty {
            return false;
        }
        if !self.q.is_empty() {
            let needle = self.q.to_lowercase();
            let hit = |f: &str| s(f).to_lowercase().contains(&needle);
            if !(hit("name")
                || hit("id")
                || hit("comment")
                || str_list(doc, "tags")
                    .iter()
                    .any(|t| t.to_lowercase().contains(&needle)))
            {
                return false;
            }
        }
        true
    }
}

/// The table: one page of rows, how many match, how many the project has.
pub struct Table {
    pub rows: Vec<Row>,
    pub total: usize,
    pub project_name: Option<String>,
}

#[derive(PartialEq, PartialOrd)]
enum Key<'a> {
    Text(&'a str),
    Num(Option<u64>),
}

fn sort_key<'a>(doc: &'a Doc, sort: &str, queues: &HashMap<&str, &'a str>, now_ms: u64) -> Key<'a> {
    match sort {
        "name" => Key::Text(str_field(doc, "name")),
        "status" => Key::Text(str_field(doc, "status")),
        "type" => Key::Text(str_field(doc, "type")),
        "worker" => Key::Text(str_field(doc, "last_worker")),
        "queue" => {
            let q = nested_str(doc, &["execution", "queue"]);
            Key::Text(queues.get(q).copied().unwrap_or(q))
        }
        "started" => Key::Num(ms(doc, "started")),
        "duration" => Key::Num(duration(doc, now_ms)),
        "updated" => Key::Num(ms(doc, "last_update")),
        _ => Key::Num(ms(doc, "created")),
    }
}

/// One page of the experiments table. Only the page's rows are built; filtering and sorting
/// work on the documents in place.
pub fn experiments(docs: &Docs, filter: &Filter, now_ms: u64) -> Table {
    let projects = names(docs, Kind::Project);
    let queues = names(docs, Kind::Queue);
    let mut matched: Vec<(Key, &str, &Doc)> = docs
        .map(Kind::Task)
        .iter()
        .filter(|(_, d)| filter.matches(d))
        .map(|(id, d)| (sort_key(d, &filter.sort, &queues, now_ms), id.as_str(), d))
        .collect();
    // Ties broken by id so a page is stable between polls.
    matched.sort_by(|a, b| {
        let ord = a.0.partial_cmp(&b.0).unwrap_or(std::cmp::Ordering::Equal);
        let ord = if filter.desc { ord.reverse() } else { ord };
        ord.then_with(|| a.1.cmp(b.1))
    });
    let total = matched.len();
    let rows = matched
        .into_iter()
        .skip(filter.page.saturating_mul(filter.per))
        .take(filter.per)
        .map(|(_, _, d)| row_of(d, &projects, &queues, now_ms))
        .collect();
    Table {
        rows,
        total,
        project_name: projects.get(filter.project.as_str()).map(|s| s.to_string()),
    }
}

pub fn task_row(docs: &Docs, id: &str, now_ms: u64) -> Option<Row> {
    let doc = docs.get(Kind::Task, id)?;
    Some(row_of(
        doc,
        &names(docs, Kind::Project),
        &names(docs, Kind::Queue),
        now_ms,
    ))
}

/// One line of the projects page.
pub struct ProjectRow {
    /// `*` for "all experiments".
    pub id: String,
    pub name: String,
    pub description: String,
    pub total: usize,
    pub by_status: Vec<(&'static str, usize)>,
    pub updated_ms: Option<u64>,
}

const COUNTED: [&str; 5] = ["in_progress", "queued", "completed", "failed", "stopped"];

pub fn project_rows(docs: &Docs) -> Vec<ProjectRow> {
    // Per project (and `*`): tasks, tasks by status, last update.
    type Counts<'a> = (usize, HashMap<&'a str, usize>, Option<u64>);
    let mut counts: HashMap<&str, Counts> = HashMap::new();
    for d in docs.map(Kind::Task).values() {
        if has(d, "system_tags", "hidden") || has(d, "system_tags", "archived") {
            continue;
        }
        let status = str_field(d, "status");
        let updated = ms(d, "last_update");
        for key in ["*", str_field(d, "project")] {
            let e = counts.entry(key).or_default();
            e.0 += 1;
            *e.1.entry(status).or_default() += 1;
            e.2 = e.2.max(updated);
        }
    }
    let row = |id: &str, name: &str, description: &str| {
        let (total, by, updated) = counts.get(id).cloned().unwrap_or_default();
        ProjectRow {
            id: id.to_string(),
            name: name.to_string(),
            description: description.to_string(),
            total,
            by_status: COUNTED
                .iter()
                .map(|s| (*s, by.get(s).copied().unwrap_or(0)))
                .collect(),
            updated_ms: updated,
        }
    };
    let mut out = vec![row("*", "All experiments", "")];
    let mut projects: Vec<&Doc> = docs
        .map(Kind::Project)
        .values()
        .filter(|p| !has(p, "system_tags", "hidden") && !has(p, "system_tags", "archived"))
        .collect();
    projects.sort_by(|a, b| str_field(a, "name").cmp(str_field(b, "name")));
    for p in projects {
        out.push(row(
            str_field(p, "id"),
            str_field(p, "name"),
            str_field(p, "description"),
        ));
    }
    out
}

/// The experiment page's data.
pub struct TaskDetail {
    pub row: Row,
    pub doc: Doc,
    /// Every queue (id, name) for the enqueue selector, the default first.
    pub queues: Vec<(String, String)>,
    pub parent_name: Option<String>,
}

pub fn task_detail(docs: &Docs, id: &str, now_ms: u64) -> Option<TaskDetail> {
    let doc = docs.get(Kind::Task, id)?;
    let row = task_row(docs, id, now_ms)?;
    let mut queues: Vec<(String, String, bool)> = docs
        .map(Kind::Queue)
        .iter()
        .map(|(qid, q)| {
            (
                qid.clone(),
                str_field(q, "name").to_string(),
                has(q, "system_tags", "default"),
            )
        })
        .collect();
    queues.sort_by(|a, b| b.2.cmp(&a.2).then_with(|| a.1.cmp(&b.1)));
    let parent_name = docs
        .get(Kind::Task, str_field(doc, "parent"))
        .map(|p| str_field(p, "name").to_string());
    let doc = crate::server::api::tasks::public(doc);
    Some(TaskDetail {
        row,
        doc,
        queues: queues.into_iter().map(|(i, n, _)| (i, n)).collect(),
        parent_name,
    })
}

/// A model of a task, as far as it is known.
pub struct ModelRef {
    pub role: &'static str,
    pub name: String,
    pub id: String,
    pub uri: String,
    pub framework: String,
}

/// The task's input and output models. The model documents come from `models.get_all` through
/// the API when the server has the models service; without it, from the task's own references.
pub fn models_of(app: &App, doc: &Doc) -> Vec<ModelRef> {
    let mut refs = Vec::new();
    for (role, field) in [("input", "input"), ("output", "output")] {
        if let Some(list) = nested(doc, &["models", field]).and_then(Value::as_array) {
            for m in list.iter().filter_map(Value::as_object) {
                refs.push(ModelRef {
                    role,
                    name: m
                        .get("name")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string(),
                    id: m
                        .get("model")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string(),
                    uri: String::new(),
                    framework: String::new(),
                });
            }
        }
    }
    let ids: Vec<Value> = refs
        .iter()
        .filter(|m| !m.id.is_empty())
        .map(|m| Value::String(m.id.clone()))
        .collect();
    if ids.is_empty() {
        return refs;
    }
    let mut params = Map::new();
    params.insert("id".into(), Value::Array(ids));
    let found = crate::server::api::call_in_process(
        &app.store,
        &app.server,
        &app.semantics,
        "models.get_all",
        params,
    );
    if let Ok(data) = found {
        for m in data
            .get("models")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let id = m.get("id").and_then(Value::as_str).unwrap_or("");
            for r in refs.iter_mut().filter(|r| r.id == id) {
                r.uri = m
                    .get("uri")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string();
                r.framework = m
                    .get("framework")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string();
                if r.name.is_empty() {
                    r.name = m
                        .get("name")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string();
                }
            }
        }
    }
    refs
}

/// One queue and its entries in order.
pub struct QueueView {
    pub id: String,
    pub name: String,
    pub default: bool,
    pub entries: Vec<EntryView>,
    /// Live workers that serve this queue.
    pub workers: Vec<String>,
}

pub struct EntryView {
    pub task: String,
    pub name: String,
    pub status: String,
    pub project: String,
    pub added_ms: Option<u64>,
}

fn alive(w: &Doc, now_ms: u64) -> bool {
    w.get("expires_ms").and_then(Value::as_u64).unwrap_or(0) > now_ms
}

pub fn queues(docs: &Docs, now_ms: u64) -> Vec<QueueView> {
    let mut out: Vec<QueueView> = docs
        .map(Kind::Queue)
        .iter()
        .map(|(id, q)| {
            let entries = q
                .get("entries")
                .and_then(Value::as_array)
                .map(|l| l.iter().filter_map(Value::as_object).collect::<Vec<_>>())
                .unwrap_or_default()
                .into_iter()
                .map(|e| {
                    let task = e.get("task").and_then(Value::as_str).unwrap_or("");
                    let t = docs.get(Kind::Task, task);
                    EntryView {
                        task: task.to_string(),
                        name: t
                            .map(|t| str_field(t, "name").to_string())
                            .unwrap_or_default(),
                        status: t
                            .map(|t| str_field(t, "status").to_string())
                            .unwrap_or_default(),
                        project: t
                            .map(|t| str_field(t, "project").to_string())
                            .unwrap_or_default(),
                        added_ms: ms(e, "added"),
                    }
                })
                .collect();
            let mut workers: Vec<String> = docs
                .map(Kind::Worker)
                .values()
                .filter(|w| alive(w, now_ms))
                .filter(|w| {
                    w.get("queues")
                        .and_then(Value::as_array)
                        .is_some_and(|l| l.iter().any(|x| x == id.as_str()))
                })
                .map(|w| str_field(w, "id").to_string())
                .collect();
            workers.sort();
            QueueView {
                id: id.clone(),
                name: str_field(q, "name").to_string(),
                default: has(q, "system_tags", "default"),
                entries,
                workers,
            }
        })
        .collect();
    out.sort_by(|a, b| b.default.cmp(&a.default).then_with(|| a.name.cmp(&b.name)));
    out
}

/// One live worker and its last status report.
pub struct WorkerView {
    pub id: String,
    pub ip: String,
    pub task: Option<(String, String, String)>,
    pub queues: Vec<String>,
    pub last_seen_ms: Option<u64>,
    pub registered_ms: Option<u64>,
    pub cpu_pct: Option<f64>,
    pub mem_used_mb: Option<f64>,
    pub mem_free_mb: Option<f64>,
    pub gpu_pct: Option<f64>,
    pub gpu_mem_used_mb: Option<f64>,
    pub gpu_mem_free_mb: Option<f64>,
    pub gpus: usize,
}

fn stat_avg(stats: Option<&Map<String, Value>>, key: &str) -> Option<f64> {
    match stats?.get(key)? {
        Value::Array(l) => {
            let v: Vec<f64> = l.iter().filter_map(Value::as_f64).collect();
            (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
        }
        v => v.as_f64(),
    }
}

fn stat_sum(stats: Option<&Map<String, Value>>, key: &str) -> Option<f64> {
    match stats?.get(key)? {
        Value::Array(l) => {
            let v: Vec<f64> = l.iter().filter_map(Value::as_f64).collect();
            (!v.is_empty()).then(|| v.iter().sum())
        }
        v => v.as_f64(),
    }
}

pub fn workers(docs: &Docs, now_ms: u64) -> Vec<WorkerView> {
    let queues = names(docs, Kind::Queue);
    let mut out: Vec<WorkerView> = docs
        .map(Kind::Worker)
        .values()
        .filter(|w| alive(w, now_ms))
        .map(|w| {
            let stats = w.get("machine_stats").and_then(Value::as_object);
            let task = nested(w, &["task", "id"])
                .and_then(Value::as_str)
                .map(|tid| {
                    let t = docs.get(Kind::Task, tid);
                    (
                        tid.to_string(),
                        t.map(|t| str_field(t, "name").to_string())
                            .unwrap_or_default(),
                        t.map(|t| str_field(t, "project").to_string())
                            .unwrap_or_default(),
                    )
                });
            WorkerView {
                id: str_field(w, "id").to_string(),
                ip: str_field(w, "ip").to_string(),
                task,
                queues: str_list(w, "queues")
                    .iter()
                    .map(|q| {
                        queues
                            .get(q.as_str())
                            .map(|s| s.to_string())
                            .unwrap_or_else(|| q.clone())
                    })
                    .collect(),
                last_seen_ms: ms(w, "last_activity_time"),
                registered_ms: ms(w, "register_time"),
                cpu_pct: stat_avg(stats, "cpu_usage"),
                mem_used_mb: stat_avg(stats, "memory_used"),
                mem_free_mb: stat_avg(stats, "memory_free"),
                gpu_pct: stat_avg(stats, "gpu_usage"),
                gpu_mem_used_mb: stat_sum(stats, "gpu_memory_used"),
                gpu_mem_free_mb: stat_sum(stats, "gpu_memory_free"),
                gpus: stats
                    .and_then(|s| s.get("gpu_usage"))
                    .and_then(Value::as_array)
                    .map_or(0, Vec::len),
            }
        })
        .collect();
    out.sort_by(|a, b| a.id.cmp(&b.id));
    out
}

/// The web path that serves `uri` from this server's files root (`/web/files/...`, behind the
/// page login) when `uri` is an http(s) URL whose path is a file stored here, so a download link
/// works from the page without the files server's API credentials.
pub fn local_file_href(files_root: &std::path::Path, uri: &str) -> Option<String> {
    let rest = uri
        .strip_prefix("http://")
        .or_else(|| uri.strip_prefix("https://"))?;
    let path = &rest[rest.find('/')?..];
    let path = path.split(['?', '#']).next().unwrap_or("");
    let target = crate::server::files::confine(files_root, path.trim_start_matches('/')).ok()?;
    target.is_file().then(|| format!("/web/files{path}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn q(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn filter_reads_and_writes_its_query() {
        let f = Filter::from_query(
            "p1",
            &q(&[
                ("q", "a b"),
                ("sort", "name"),
                ("dir", "asc"),
                ("page", "3"),
                ("per", "99999"),
            ]),
        );
        assert_eq!(
            (f.page, f.per, f.desc, f.sort.as_str()),
            (2, MAX_PER_PAGE, false, "name")
        );
        assert_eq!(
            f.query(&[("page", None)]),
            "q=a%20b&sort=name&dir=asc&per=10000"
        );
        let bad = Filter::from_query("", &q(&[("sort", "'; drop"), ("page", "0")]));
        assert_eq!(
            (bad.project.as_str(), bad.sort.as_str(), bad.page),
            ("*", "created", 0)
        );
    }

    #[test]
    fn scalars_and_durations_from_a_document() {
        let doc: Doc = json!({
            "status": "completed", "started": "2026-01-01T00:00:00.000Z", "completed": "2026-01-01T00:01:30.500Z",
            "last_metrics": {"h1": {"h2": {"metric": "loss", "variant": "train", "value": 0.5}, "h3": {"metric": "loss", "variant": "val"}}},
        }).as_object().unwrap().clone();
        assert_eq!(duration(&doc, 0), Some(90_500));
        assert_eq!(last_scalars(&doc), vec![("loss/train".to_string(), 0.5)]);
        assert_eq!(status_label("in_progress", "stopping"), "Aborting");
    }
}
