//! The pages, as maud templates (checked at compile time, every value escaped). No inline
//! script or style: behaviour comes from `/static/app.js` through `data-*` attributes.

use super::assets;
use super::data::{
    status_label, url_seg, EntryView, Filter, ModelRef, ProjectRow, QueueView, Row, Table,
    TaskDetail, WorkerView,
};
use super::session::Authed;
use maud::{html, Markup, DOCTYPE};
use serde_json::{json, Value};

/// Date and time (UTC) of a millisecond timestamp.
pub fn fmt_time(ms: Option<u64>) -> String {
    match ms {
        None | Some(0) => String::new(),
        Some(ms) => {
            let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
            humantime::format_rfc3339_seconds(t)
                .to_string()
                .replace('T', " ")
                .trim_end_matches('Z')
                .to_string()
        }
    }
}

pub fn fmt_duration(ms: Option<u64>) -> String {
    let Some(ms) = ms else { return String::new() };
    let s = ms / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h {:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d {:02}h", s / 86400, (s % 86400) / 3600),
    }
}

fn fmt_num(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else if v.abs() >= 1000.0 || v.abs() < 0.001 {
        format!("{v:.4e}")
    } else {
        format!("{v:.4}")
    }
}

fn fmt_mb(v: Option<f64>) -> String {
    match v {
        None => String::new(),
        Some(mb) if mb >= 1024.0 => format!("{:.1} GB", mb / 1024.0),
        Some(mb) => format!("{mb:.0} MB"),
    }
}

fn fmt_pct(v: Option<f64>) -> String {
    v.map(|p| format!("{p:.0}%")).unwrap_or_default()
}

fn task_href(project: &str, id: &str, tab: &str) -> String {
    let project = if project.is_empty() { "*" } else { project };
    format!(
        "/projects/{}/experiments/{}/{tab}",
        url_seg(project),
        url_seg(id)
    )
}

fn badge(status: &str, message: &str) -> Markup {
    html! {
        span class={"badge status-" (status)} data-status=(status) { (status_label(status, message)) }
    }
}

fn layout(authed: Option<&Authed>, title: &str, page: &str, active: &str, body: Markup) -> Markup {
    let nav = [
        ("projects", "/projects", "Projects"),
        ("experiments", "/projects/*/experiments", "Experiments"),
        ("queues", "/queues", "Queues"),
        ("workers", "/workers", "Workers"),
    ];
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · ClearML agent server" }
                link rel="stylesheet" href={"/static/style.css?v=" (assets::version("style.css"))};
                script src={"/static/app.js?v=" (assets::version("app.js"))} defer {}
            }
            body data-page=(page) data-csrf=[authed.map(|a| a.csrf.as_str())] {
                header.top {
                    a.brand href="/projects" { "ClearML" span.sub { "agent server" } }
                    @if let Some(a) = authed {
                        nav {
                            @for (key, href, label) in nav {
                                a href=(href) class=[(key == active).then_some("active")] { (label) }
                            }
                        }
                        form.logout method="post" action="/logout" {
                            input type="hidden" name="csrf" value=(a.csrf);
                            button type="submit" { "Log out" }
                        }
                    }
                }
                main {
                    @if let Some(f) = authed.and_then(|a| a.flash.as_ref()) {
                        div id="flash" class={"flash " (if f.ok { "ok" } else { "error" })} { (f.text) }
                    }
                    (body)
                }
            }
        }
    }
}

pub fn login(next: &str, error: Option<&str>) -> Markup {
    layout(
        None,
        "Log in",
        "login",
        "",
        html! {
            form.login method="post" action="/login" {
                h1 { "Log in" }
                p.hint { "With this server's credentials: " code { "CLEARML_API_ACCESS_KEY" } " and "
                    code { "CLEARML_API_SECRET_KEY" } " from " code { "server.env" } " in its data directory." }
                @if let Some(e) = error { div #login-error .flash.error { (e) } }
                input type="hidden" name="next" value=(next);
                label { "Access key" input #access_key type="text" name="access_key" autocomplete="username" required autofocus; }
                label { "Secret key" input #secret_key type="password" name="secret_key" autocomplete="current-password" required; }
                button #login-submit type="submit" { "Log in" }
            }
        },
    )
}

pub fn not_found(authed: &Authed, what: &str) -> Markup {
    layout(
        Some(authed),
        "Not found",
        "not-found",
        "",
        html! {
            h1 { "Not found" }
            p { "There is no " (what) "." }
        },
    )
}

pub fn projects(authed: &Authed, rows: &[ProjectRow]) -> Markup {
    layout(
        Some(authed),
        "Projects",
        "projects",
        "projects",
        html! {
            h1 { "Projects" }
            table #projects .grid {
                thead { tr {
                    th { "Project" } th.num { "Experiments" } th.num { "Running" } th.num { "Pending" }
                    th.num { "Completed" } th.num { "Failed" } th.num { "Aborted" } th { "Last update (UTC)" }
                } }
                tbody {
                    @for p in rows {
                        tr data-id=(p.id) {
                            td { a href={"/projects/" (url_seg(&p.id)) "/experiments"} { (p.name) }
                                @if !p.description.is_empty() { div.muted { (p.description) } } }
                            td.num { (p.total) }
                            @for (_, n) in &p.by_status { td.num { (n) } }
                            td { (fmt_time(p.updated_ms)) }
                        }
                    }
                }
            }
        },
    )
}

const STATUSES: [&str; 8] = [
    "created",
    "queued",
    "in_progress",
    "stopped",
    "completed",
    "failed",
    "published",
    "closed",
];

fn scalars_cell(row: &Row) -> Markup {
    html! {
        @for (name, v) in row.scalars.iter().take(3) {
            span.scalar { span.muted { (name) } " " (fmt_num(*v)) }
        }
        @if row.scalars.len() > 3 { span.muted { "+" (row.scalars.len() - 3) } }
    }
}

pub fn experiments(authed: &Authed, f: &Filter, t: &Table) -> Markup {
    let title = t.project_name.clone().unwrap_or_else(|| {
        if f.project == "*" {
            "All experiments".into()
        } else {
            format!("Project {}", f.project)
        }
    });
    let base = format!("/projects/{}/experiments", url_seg(&f.project));
    let pages = t.total.div_ceil(f.per).max(1);
    let columns: [(&str, &str); 9] = [
        ("name", "Name"),
        ("status", "Status"),
        ("type", "Type"),
        ("queue", "Queue"),
        ("worker", "Worker"),
        ("started", "Started (UTC)"),
        ("duration", "Duration"),
        ("", "Last scalars"),
        ("updated", "Updated (UTC)"),
    ];
    let live_query = format!("project={}&{}", url_seg(&f.project), f.query(&[]));
    layout(
        Some(authed),
        &title,
        "experiments",
        "experiments",
        html! {
            nav.crumbs { a href="/projects" { "Projects" } " / " (title) }
            h1 { (title) }
            form #filter .filter method="get" action=(base) {
                input type="search" name="q" value=(f.q) placeholder="Name, id, tag or comment";
                select name="status" {
                    option value="" { "Any status" }
                    @for s in STATUSES { option value=(s) selected[f.status == s] { (status_label(s, "")) } }
                }
                select name="type" {
                    option value="" { "Any type" }
                    @for ty in crate::server::api::tasks::TYPES { option value=(ty) selected[f.ty == ty] { (ty) } }
                }
                label.check { input type="checkbox" name="archived" value="1" checked[f.archived]; " Archived" }
                input type="hidden" name="sort" value=(f.sort);
                input type="hidden" name="dir" value=(if f.desc { "desc" } else { "asc" });
                @if f.per != 100 { input type="hidden" name="per" value=(f.per); }
                button type="submit" { "Filter" }
            }
            div #changed .flash.info hidden { "The list has changed. " a href="" { "Reload" } }
            p.muted #count { (t.total) " experiments" @if pages > 1 { ", page " (f.page + 1) " of " (pages) } }
            table #experiments .grid data-live=(live_query) {
                thead { tr {
                    @for (key, label) in columns {
                        @if key.is_empty() { th { (label) } } @else {
                            @let desc = if f.sort == key { !f.desc } else { !matches!(key, "name" | "status" | "type" | "queue" | "worker") };
                            th class=[(f.sort == key).then_some(if f.desc { "sorted desc" } else { "sorted asc" })] {
                                a href={(base) "?" (f.query(&[("sort", Some(key.to_string())), ("dir", Some((if desc { "desc" } else { "asc" }).to_string())), ("page", None)]))} { (label) }
                            }
                        }
                    }
                } }
                tbody {
                    @for r in &t.rows {
                        tr data-id=(r.id) data-status=(r.status) {
                            td.name { a href=(task_href(&r.project_id, &r.id, "execution")) { (r.name) }
                                @if f.project == "*" && !r.project_name.is_empty() { div.muted { (r.project_name) } } }
                            td data-col="status" { (badge(&r.status, &r.status_message)) }
                            td { (r.ty) }
                            td data-col="queue" { (r.queue) }
                            td data-col="worker" { (r.worker) }
                            td data-col="started" { (fmt_time(r.started_ms)) }
                            td.num data-col="duration" { (fmt_duration(r.duration_ms)) }
                            td data-col="scalars" { (scalars_cell(r)) }
                            td data-col="updated" { (fmt_time(r.updated_ms)) }
                        }
                    }
                }
            }
            @if t.rows.is_empty() { p.empty { "No experiments match." } }
            @if pages > 1 {
                nav.pager {
                    @if f.page > 0 { a href={(base) "?" (f.query(&[("page", Some(f.page.to_string()))]))} { "← Previous" } }
                    span { "Page " (f.page + 1) " of " (pages) }
                    @if f.page + 1 < pages { a #next-page href={(base) "?" (f.query(&[("page", Some((f.page + 2).to_string()))]))} { "Next →" } }
                }
            }
        },
    )
}

/// The live fields of one row, as the table's poller reads them.
pub fn row_json(r: &Row) -> Value {
    json!({
        "id": r.id,
        "status": r.status,
        "status_label": status_label(&r.status, &r.status_message),
        "queue": r.queue,
        "worker": r.worker,
        "started": fmt_time(r.started_ms),
        "duration": fmt_duration(r.duration_ms),
        "updated": fmt_time(r.updated_ms),
        "scalars": scalars_cell(r).into_string(),
        "status_reason": r.status_reason,
        "last_iteration": r.last_iteration,
    })
}

pub fn experiments_json(t: &Table) -> Value {
    json!({"total": t.total, "rows": t.rows.iter().map(row_json).collect::<Vec<_>>()})
}

/// The experiment page's tabs. Paths follow the real UI's, so its links work here too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tab {
    Execution,
    Configuration,
    Console,
    Artifacts,
    Info,
}

impl Tab {
    pub fn from_path(tab: &str) -> Tab {
        let first = tab.trim_matches('/').split('/').next().unwrap_or("");
        match first {
            "hyper-params" | "configuration" | "config" => Tab::Configuration,
            "output" | "console" | "log" => Tab::Console,
            "artifacts" | "models" => Tab::Artifacts,
            "info-output" | "info" | "general" => Tab::Info,
            _ => Tab::Execution,
        }
    }
    fn path(self) -> &'static str {
        match self {
            Tab::Execution => "execution",
            Tab::Configuration => "hyper-params/hyper-param",
            Tab::Console => "output/log",
            Tab::Artifacts => "artifacts",
            Tab::Info => "info-output",
        }
    }
    fn label(self) -> &'static str {
        match self {
            Tab::Execution => "Execution",
            Tab::Configuration => "Configuration",
            Tab::Console => "Console",
            Tab::Artifacts => "Artifacts & models",
            Tab::Info => "Info",
        }
    }
}

fn get<'a>(v: &'a Value, path: &[&str]) -> &'a Value {
    let mut cur = v;
    for p in path {
        cur = cur.get(*p).unwrap_or(&Value::Null);
    }
    cur
}

fn text(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Array(l) if l.iter().all(Value::is_string) => l
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join("\n"),
        other => serde_json::to_string_pretty(other).unwrap_or_default(),
    }
}

fn field(label: &str, value: &str) -> Markup {
    html! {
        @if !value.is_empty() { dt { (label) } dd { (value) } }
    }
}

fn action_form(
    id: &str,
    action: &str,
    label: &str,
    authed: &Authed,
    back: &str,
    extra: Markup,
) -> Markup {
    html! {
        form.action method="post" action={"/web/tasks/" (url_seg(id)) "/" (action)} {
            input type="hidden" name="csrf" value=(authed.csrf);
            input type="hidden" name="back" value=(back);
            (extra)
            button type="submit" id={"action-" (action)} { (label) }
        }
    }
}

pub fn task(
    authed: &Authed,
    d: &TaskDetail,
    models: &[ModelRef],
    tab: Tab,
    files_root: &std::path::Path,
) -> Markup {
    let r = &d.row;
    let doc = Value::Object(d.doc.clone());
    let here = task_href(&r.project_id, &r.id, tab.path());
    let status = r.status.as_str();
    let running = matches!(status, "in_progress" | "queued");
    layout(
        Some(authed),
        &r.name,
        "task",
        "experiments",
        html! {
            nav.crumbs {
                a href="/projects" { "Projects" } " / "
                a href={"/projects/" (url_seg(if r.project_id.is_empty() { "*" } else { &r.project_id })) "/experiments"} {
                    @if r.project_name.is_empty() { "All experiments" } @else { (r.project_name) }
                }
                " / " (r.name)
            }
            div.task-head #task data-id=(r.id) data-status=(status) {
                h1 { (r.name) " " span #task-status { (badge(status, &r.status_message)) }
                    @if r.archived { " " span.badge.archived { "Archived" } } }
                p.meta {
                    span { "ID " code #task-id { (r.id) } }
                    span { (r.ty) }
                    @if !r.queue.is_empty() { span { "queue " b #task-queue { (r.queue) } } }
                    @if !r.worker.is_empty() { span { "worker " b #task-worker { (r.worker) } } }
                    @if r.started_ms.is_some() { span { "started " (fmt_time(r.started_ms)) " UTC" } }
                    span #task-duration { (fmt_duration(r.duration_ms)) }
                }
                @if !r.status_reason.is_empty() || (!r.status_message.is_empty() && r.status_message != "stopping") {
                    p.muted #task-reason { (r.status_reason) @if !r.status_message.is_empty() { " · " (r.status_message) } }
                }
            }
            div.actions {
                @if running { (action_form(&r.id, "abort", "Abort", authed, &here, html! {})) }
                @if status == "queued" { (action_form(&r.id, "dequeue", "Dequeue", authed, &here, html! {})) }
                @if !running {
                    (action_form(&r.id, "enqueue", "Enqueue", authed, &here, html! {
                        select name="queue" #enqueue-queue aria-label="Queue" {
                            @for (qid, name) in &d.queues { option value=(qid) { (name) } }
                        }
                    }))
                    (action_form(&r.id, "reset", "Reset", authed, &here, html! {}))
                }
                (action_form(&r.id, "clone", "Clone", authed, &here, html! {}))
                @if r.archived { (action_form(&r.id, "unarchive", "Restore", authed, &here, html! {})) }
                @else { (action_form(&r.id, "archive", "Archive", authed, &here, html! {})) }
            }
            nav.tabs {
                @for t in [Tab::Execution, Tab::Configuration, Tab::Console, Tab::Artifacts, Tab::Info] {
                    a href=(task_href(&r.project_id, &r.id, t.path())) class=[(t == tab).then_some("active")] id={"tab-" (t.path().split('/').next().unwrap_or(""))} { (t.label()) }
                }
            }
            section.tab {
                @match tab {
                    Tab::Execution => (execution(&doc)),
                    Tab::Configuration => (configuration(&doc)),
                    Tab::Console => (console(r)),
                    Tab::Artifacts => (artifacts(&doc, models, files_root)),
                    Tab::Info => (info(d, &doc)),
                }
            }
        },
    )
}

fn execution(doc: &Value) -> Markup {
    let s = |p: &[&str]| text(get(doc, p));
    let repo = crate::redact::redact_urls(&s(&["script", "repository"]));
    let requirements = get(doc, &["script", "requirements"]);
    let pip = text(get(requirements, &["pip"]));
    let diff = s(&["script", "diff"]);
    html! {
        h2 { "Source" }
        dl.fields #execution {
            (field("Repository", &repo))
            (field("Branch", &s(&["script", "branch"])))
            (field("Commit", &s(&["script", "version_num"])))
            (field("Tag", &s(&["script", "tag"])))
            (field("Working directory", &s(&["script", "working_dir"])))
            (field("Entry point", &s(&["script", "entry_point"])))
            (field("Binary", &s(&["script", "binary"])))
        }
        @if repo.is_empty() && s(&["script", "entry_point"]).is_empty() { p.empty { "No source recorded." } }
        h2 { "Uncommitted changes" }
        @if diff.trim().is_empty() { p.empty { "None." } } @else { pre.code #diff { (diff) } }
        h2 { "Python packages" }
        @if pip.trim().is_empty() { p.empty { "None recorded." } } @else { pre.code #requirements { (pip) } }
        @let org = text(get(requirements, &["org_pip"]));
        @if !org.trim().is_empty() { details { summary { "As originally requested" } pre.code { (org) } } }
        h2 { "Container" }
        @let image = s(&["container", "image"]);
        @if image.is_empty() { p.empty { "None: runs on the agent's host." } } @else {
            dl.fields #container {
                (field("Image", &image))
                (field("Arguments", &crate::redact::redact_urls(&s(&["container", "arguments"]))))
            }
            @let setup = s(&["container", "setup_shell_script"]);
            @if !setup.is_empty() { h3 { "Setup script" } pre.code { (setup) } }
        }
    }
}

fn configuration(doc: &Value) -> Markup {
    let sections = get(doc, &["hyperparams"])
        .as_object()
        .cloned()
        .unwrap_or_default();
    let configs = get(doc, &["configuration"])
        .as_object()
        .cloned()
        .unwrap_or_default();
    html! {
        h2 { "Hyperparameters" }
        @if sections.is_empty() { p.empty { "None." } }
        @for (section, params) in &sections {
            h3 { (section) }
            table.grid.params data-section=(section) {
                thead { tr { th { "Name" } th { "Value" } th { "Type" } th { "Description" } } }
                tbody {
                    @for (name, p) in params.as_object().into_iter().flatten() {
                        tr { td { (name) } td.value { (text(get(p, &["value"]))) } td { (text(get(p, &["type"]))) } td { (text(get(p, &["description"]))) } }
                    }
                }
            }
        }
        h2 { "Configuration objects" }
        @if configs.is_empty() { p.empty { "None." } }
        @for (name, item) in &configs {
            h3 { (name) @let ty = text(get(item, &["type"])); @if !ty.is_empty() { " " span.muted { (ty) } } }
            pre.code { (text(get(item, &["value"]))) }
        }
    }
}

fn console(r: &Row) -> Markup {
    let live = matches!(r.status.as_str(), "in_progress" | "queued" | "created");
    html! {
        div #console data-task=(r.id) data-live=(live) {
            div.console-bar {
                form #console-search {
                    input type="search" name="q" placeholder="Search the whole console" aria-label="Search";
                    button type="submit" { "Search" }
                }
                a #console-download href={"/web/api/tasks/" (url_seg(&r.id)) "/log.txt"} download { "Download" }
                label.check { input #console-follow type="checkbox" checked; " Follow" }
                span.muted #console-info {}
            }
            div #console-matches hidden {}
            button #console-earlier type="button" hidden { "Load earlier" }
            pre #console-lines .console {}
            button #console-later type="button" hidden { "Load later" }
        }
    }
}

fn link_or_text(files_root: &std::path::Path, uri: &str) -> Markup {
    html! {
        @if let Some(href) = super::data::local_file_href(files_root, uri) {
            a href=(href) download data-uri=(crate::redact::redact_urls(uri)) { (crate::redact::redact_urls(uri)) }
        } @else if uri.starts_with("http://") || uri.starts_with("https://") {
            a href=(uri) download { (crate::redact::redact_urls(uri)) }
        } @else { (uri) }
    }
}

fn artifacts(doc: &Value, models: &[ModelRef], files_root: &std::path::Path) -> Markup {
    let list = get(doc, &["execution", "artifacts"])
        .as_array()
        .cloned()
        .unwrap_or_default();
    html! {
        h2 { "Artifacts" }
        @if list.is_empty() { p.empty { "None." } } @else {
            table.grid #artifacts {
                thead { tr { th { "Key" } th { "Type" } th { "Mode" } th { "File" } th.num { "Size" } th { "Hash" } } }
                tbody {
                    @for a in &list {
                        tr {
                            td { (text(get(a, &["key"]))) }
                            td { (text(get(a, &["type"]))) }
                            td { (text(get(a, &["mode"]))) }
                            td { (link_or_text(files_root, &text(get(a, &["uri"])))) }
                            td.num { (get(a, &["content_size"]).as_f64().map(|b| fmt_mb(Some(b / 1_048_576.0))).unwrap_or_default()) }
                            td { code { (text(get(a, &["hash"])).chars().take(12).collect::<String>()) } }
                        }
                    }
                }
            }
        }
        h2 { "Models" }
        @if models.is_empty() { p.empty { "None." } } @else {
            table.grid #models {
                thead { tr { th { "Role" } th { "Name" } th { "Model id" } th { "Framework" } th { "File" } } }
                tbody {
                    @for m in models {
                        tr { td { (m.role) } td { (m.name) } td { code { (m.id) } } td { (m.framework) } td { (link_or_text(files_root, &m.uri)) } }
                    }
                }
            }
        }
    }
}

fn info(d: &TaskDetail, doc: &Value) -> Markup {
    let r = &d.row;
    let s = |p: &[&str]| text(get(doc, p));
    let runtime = get(doc, &["runtime"])
        .as_object()
        .cloned()
        .unwrap_or_default();
    let metrics = get(doc, &["last_metrics"])
        .as_object()
        .cloned()
        .unwrap_or_default();
    html! {
        dl.fields #info {
            (field("ID", &r.id))
            (field("Status", status_label(&r.status, &r.status_message)))
            (field("Status reason", &r.status_reason))
            (field("Status message", &r.status_message))
            (field("Type", &r.ty))
            (field("Project", &r.project_name))
            (field("Created (UTC)", &fmt_time(r.created_ms)))
            (field("Started (UTC)", &fmt_time(r.started_ms)))
            (field("Finished (UTC)", &fmt_time(r.completed_ms)))
            (field("Last update (UTC)", &fmt_time(r.updated_ms)))
            (field("Last iteration", &r.last_iteration.to_string()))
            (field("Worker", &r.worker))
            (field("Parent", &d.parent_name.clone().unwrap_or_else(|| s(&["parent"]))))
            (field("Tags", &r.tags.join(", ")))
            (field("System tags", &text(get(doc, &["system_tags"])).replace('\n', ", ")))
            (field("Comment", &s(&["comment"])))
            (field("Output destination", &s(&["output", "destination"])))
        }
        h2 { "Last scalar values" }
        @if metrics.is_empty() { p.empty { "None reported." } } @else {
            table.grid #last-scalars {
                thead { tr { th { "Metric" } th { "Variant" } th.num { "Last" } th.num { "Min" } th.num { "Max" } th.num { "Iteration" } } }
                tbody {
                    @for variants in metrics.values() {
                        @for v in variants.as_object().into_iter().flatten().map(|(_, v)| v) {
                            tr {
                                td { (text(get(v, &["metric"]))) } td { (text(get(v, &["variant"]))) }
                                td.num { (get(v, &["value"]).as_f64().map(fmt_num).unwrap_or_default()) }
                                td.num { (get(v, &["min_value"]).as_f64().map(fmt_num).unwrap_or_default()) }
                                td.num { (get(v, &["max_value"]).as_f64().map(fmt_num).unwrap_or_default()) }
                                td.num { (text(get(v, &["iter"]))) }
                            }
                        }
                    }
                }
            }
        }
        h2 { "Runtime properties" }
        @if runtime.is_empty() { p.empty { "None." } } @else {
            table.grid #runtime { tbody { @for (k, v) in &runtime { tr { td { (k) } td { (text(v)) } } } } }
        }
    }
}

fn entry_form(q: &QueueView, e: &EntryView, action: &str, label: &str, authed: &Authed) -> Markup {
    html! {
        form.action.inline method="post" action={"/web/queues/" (url_seg(&q.id)) "/" (action)} {
            input type="hidden" name="csrf" value=(authed.csrf);
            input type="hidden" name="task" value=(e.task);
            input type="hidden" name="back" value="/queues";
            button type="submit" data-action=(action) data-task=(e.task) { (label) }
        }
    }
}

pub fn queues(authed: &Authed, queues: &[QueueView]) -> Markup {
    layout(
        Some(authed),
        "Queues",
        "queues",
        "queues",
        html! {
            h1 { "Queues" }
            div #live data-refresh="3000" {
                @for q in queues {
                    section.queue data-queue=(q.name) data-id=(q.id) {
                        h2 { (q.name) @if q.default { " " span.badge { "default" } }
                            " " span.muted.depth { (q.entries.len()) " pending" } }
                        p.muted { "Served by: "
                            @if q.workers.is_empty() { "no worker" } @else { (q.workers.join(", ")) } }
                        @if q.entries.is_empty() { p.empty { "Empty." } } @else {
                            table.grid.entries {
                                thead { tr { th.num { "#" } th { "Experiment" } th { "Status" } th { "Enqueued (UTC)" } th { "" } } }
                                tbody {
                                    @for (i, e) in q.entries.iter().enumerate() {
                                        tr data-task=(e.task) {
                                            td.num { (i + 1) }
                                            td { a href=(task_href(&e.project, &e.task, "execution")) { @if e.name.is_empty() { (e.task) } @else { (e.name) } } }
                                            td { (badge(&e.status, "")) }
                                            td { (fmt_time(e.added_ms)) }
                                            td.buttons {
                                                (entry_form(q, e, "front", "To front", authed))
                                                (entry_form(q, e, "back", "To back", authed))
                                                (entry_form(q, e, "remove", "Remove", authed))
                                            }
                                        }
                                    }
                                }
                            }
                            form.action method="post" action={"/web/queues/" (url_seg(&q.id)) "/clear"} {
                                input type="hidden" name="csrf" value=(authed.csrf);
                                input type="hidden" name="back" value="/queues";
                                button type="submit" data-action="clear" { "Clear queue" }
                            }
                        }
                    }
                }
            }
        },
    )
}

pub fn workers(authed: &Authed, workers: &[WorkerView]) -> Markup {
    layout(
        Some(authed),
        "Workers",
        "workers",
        "workers",
        html! {
            h1 { "Workers" }
            div #live data-refresh="3000" {
                @if workers.is_empty() { p.empty { "No worker has reported recently." } } @else {
                    table.grid #workers {
                        thead { tr {
                            th { "Worker" } th { "Running" } th { "Queues" } th.num { "CPU" } th.num { "Memory used" }
                            th.num { "Memory free" } th.num { "GPU" } th.num { "GPU memory" } th { "Last seen (UTC)" } th { "Address" }
                        } }
                        tbody {
                            @for w in workers {
                                tr data-worker=(w.id) {
                                    td { (w.id) }
                                    td data-col="task" { @if let Some((id, name, project)) = &w.task {
                                        a href=(task_href(project, id, "output/log")) { @if name.is_empty() { (id) } @else { (name) } } } }
                                    td data-col="queues" { (w.queues.join(", ")) }
                                    td.num data-col="cpu" { (fmt_pct(w.cpu_pct)) }
                                    td.num { (fmt_mb(w.mem_used_mb)) }
                                    td.num { (fmt_mb(w.mem_free_mb)) }
                                    td.num { @if w.gpus > 0 { (fmt_pct(w.gpu_pct)) " (" (w.gpus) " GPU)" } }
                                    td.num { @if w.gpus > 0 { (fmt_mb(w.gpu_mem_used_mb)) " / " (fmt_mb(w.gpu_mem_used_mb.zip(w.gpu_mem_free_mb).map(|(u, f)| u + f))) } }
                                    td { (fmt_time(w.last_seen_ms)) }
                                    td { (w.ip) }
                                }
                            }
                        }
                    }
                }
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(fmt_duration(Some(59_999)), "59s");
        assert_eq!(fmt_duration(Some(3_600_000 + 120_000)), "1h 02m");
        assert_eq!(fmt_time(Some(1_700_000_000_000)), "2023-11-14 22:13:20");
        assert_eq!(Tab::from_path("output/log"), Tab::Console);
        assert_eq!(
            Tab::from_path("hyper-params/hyper-param/Args"),
            Tab::Configuration
        );
        assert_eq!(Tab::from_path(""), Tab::Execution);
    }

    #[test]
    fn values_are_escaped() {
        let a = Authed {
            sid: "s".into(),
            csrf: "c".into(),
            flash: None,
        };
        let html = not_found(&a, "<script>alert(1)</script>").into_string();
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(!html.contains("<script>alert"));
    }
}
