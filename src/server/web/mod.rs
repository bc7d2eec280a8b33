//! The web pages of `clearml-agent server`, on the API's own port: every path the API does not
//! own (`/vX.Y/service.action` and `/service.action` stay the API's) is a page here, so the
//! `CLEARML_WEB_HOST` the server prints (the API address) and the SDK's results-page link
//! (`<web>/projects/<project>/tasks/<task>/output/log`, or `/experiments/` before API 2.31) open
//! the task's page. Plus `/metrics` in the Prometheus text format.
//!
//! Layers: [`session`] (login with the server's key and secret, a server-side session behind an
//! HttpOnly SameSite=Strict cookie, a per-session CSRF token on every POST), [`data`] (what the
//! pages show, read from the store), [`views`] (maud templates, checked at compile time),
//! [`console`] (log paging by cursor, search, download), [`actions`] (buttons, run in-process
//! through the API's own handlers), [`metrics`] (the request layer and the scrape), [`assets`]
//! (script, style and plotly.js, all inside the binary).

pub mod actions;
pub mod assets;
pub mod console;
pub mod data;
pub mod metrics;
pub mod session;
pub mod views;

use super::App;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use session::{Authed, Sessions};
use std::collections::HashMap;
use std::sync::Arc;

/// What the pages share.
pub struct WebState {
    pub app: Arc<App>,
    pub sessions: Arc<Sessions>,
    pub metrics: metrics::Metrics,
}

/// The web module as the server mounts it.
pub struct Web {
    state: Arc<WebState>,
}

impl Web {
    pub fn new(app: Arc<App>) -> Web {
        let sessions = Arc::new(Sessions::default());
        let metrics = metrics::Metrics::new(app.clone(), sessions.clone());
        Web {
            state: Arc::new(WebState {
                app,
                sessions,
                metrics,
            }),
        }
    }

    /// The pages and `/metrics` merged with `api` (whose fallback answers every other path), all
    /// behind the request-metrics layer.
    pub fn wrap(&self, api: Router) -> Router {
        routes(self.state.clone())
            .merge(api)
            .layer(axum::middleware::from_fn_with_state(
                self.state.clone(),
                metrics::track,
            ))
    }

    pub fn state(&self) -> &Arc<WebState> {
        &self.state
    }
}

fn routes(state: Arc<WebState>) -> Router {
    let pages = Router::new()
        .route("/", get(|| async { Redirect::to("/projects") }))
        .route("/login", get(session::login_page).post(session::login))
        .route("/logout", post(session::logout))
        .route("/projects", get(projects_page))
        .route("/projects/{project}", get(project_root))
        .route("/projects/{project}/experiments", get(experiments_page))
        .route("/projects/{project}/tasks", get(experiments_page))
        .route(
            "/projects/{project}/experiments/{task}",
            get(task_page_default),
        )
        .route("/projects/{project}/tasks/{task}", get(task_page_default))
        .route(
            "/projects/{project}/experiments/{task}/{*tab}",
            get(task_page),
        )
        .route("/projects/{project}/tasks/{task}/{*tab}", get(task_page))
        .route(
            "/experiments",
            get(|| async { Redirect::to("/projects/*/experiments") }),
        )
        .route("/queues", get(queues_page))
        .route("/workers", get(workers_page))
        .route("/web/tasks/{task}/{action}", post(actions::task_action))
        .route("/web/queues/{queue}/{action}", post(actions::queue_action))
        .route("/web/api/experiments", get(experiments_json))
        .route("/web/api/tasks/{task}/status", get(task_status_json))
        .route("/web/api/tasks/{task}/log", get(console::page))
        .route(
            "/web/api/tasks/{task}/log/search",
            get(console::search_route),
        )
        .route("/web/api/tasks/{task}/log.txt", get(console::download))
        .route("/web/files/{*path}", get(file_download))
        .layer(axum::middleware::map_response(security_headers));
    pages
        .route("/static/{file}", get(assets::serve))
        .route("/metrics", get(metrics::scrape))
        .with_state(state)
}

/// Every page: no framing, no sniffing, scripts only from here, never cached.
async fn security_headers(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
             img-src 'self' data: http: https:; connect-src 'self'; frame-ancestors 'none'; \
             form-action 'self'; base-uri 'none'; object-src 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    resp
}

fn html(markup: maud::Markup) -> Response {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        markup.into_string(),
    )
        .into_response()
}

fn json(value: serde_json::Value) -> Response {
    axum::Json(value).into_response()
}

fn not_found(authed: &Authed, what: &str) -> Response {
    (StatusCode::NOT_FOUND, html(views::not_found(authed, what))).into_response()
}

async fn projects_page(State(web): State<Arc<WebState>>, authed: Authed) -> Response {
    let rows = web.app.store.read(data::project_rows);
    html(views::projects(&authed, &rows))
}

async fn project_root(Path(project): Path<String>) -> Redirect {
    Redirect::to(&format!(
        "/projects/{}/experiments",
        data::url_seg(&project)
    ))
}

async fn experiments_page(
    State(web): State<Arc<WebState>>,
    authed: Authed,
    Path(project): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let filter = data::Filter::from_query(&project, &q);
    let now = crate::host::now_ms();
    let table = web
        .app
        .store
        .read(|docs| data::experiments(docs, &filter, now));
    html(views::experiments(&authed, &filter, &table))
}

async fn experiments_json(
    State(web): State<Arc<WebState>>,
    _authed: session::ApiAuthed,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let project = q.get("project").cloned().unwrap_or_else(|| "*".into());
    let filter = data::Filter::from_query(&project, &q);
    let now = crate::host::now_ms();
    let table = web
        .app
        .store
        .read(|docs| data::experiments(docs, &filter, now));
    json(views::experiments_json(&table))
}

async fn task_status_json(
    State(web): State<Arc<WebState>>,
    _authed: session::ApiAuthed,
    Path(task): Path<String>,
) -> Response {
    let now = crate::host::now_ms();
    match web.app.store.read(|docs| data::task_row(docs, &task, now)) {
        Some(row) => json(views::row_json(&row)),
        None => (
            StatusCode::NOT_FOUND,
            json(serde_json::json!({"error": "no such task"})),
        )
            .into_response(),
    }
}

async fn task_page_default(
    state: State<Arc<WebState>>,
    authed: Authed,
    Path((project, task)): Path<(String, String)>,
) -> Response {
    render_task(state, authed, project, task, String::new())
}

async fn task_page(
    state: State<Arc<WebState>>,
    authed: Authed,
    Path((project, task, tab)): Path<(String, String, String)>,
) -> Response {
    render_task(state, authed, project, task, tab)
}

fn render_task(
    State(web): State<Arc<WebState>>,
    authed: Authed,
    _project: String,
    task: String,
    tab: String,
) -> Response {
    let now = crate::host::now_ms();
    let Some(detail) = web
        .app
        .store
        .read(|docs| data::task_detail(docs, &task, now))
    else {
        return not_found(&authed, &format!("experiment {task}"));
    };
    let models = data::models_of(&web.app, &detail.doc);
    let tab = views::Tab::from_path(&tab);
    html(views::task(
        &authed,
        &detail,
        &models,
        tab,
        &web.app.files_root,
    ))
}

async fn queues_page(State(web): State<Arc<WebState>>, authed: Authed) -> Response {
    let now = crate::host::now_ms();
    let queues = web.app.store.read(|docs| data::queues(docs, now));
    html(views::queues(&authed, &queues))
}

async fn workers_page(State(web): State<Arc<WebState>>, authed: Authed) -> Response {
    let now = crate::host::now_ms();
    let workers = web.app.store.read(|docs| data::workers(docs, now));
    html(views::workers(&authed, &workers))
}

/// `GET /web/files/{path}`: a file of the files server, for a logged-in page (the files server
/// itself wants API credentials, which a browser does not have).
async fn file_download(
    State(web): State<Arc<WebState>>,
    _authed: Authed,
    Path(path): Path<String>,
) -> Response {
    use tokio::io::AsyncReadExt;
    let target = match crate::server::files::confine(&web.app.files_root, &path) {
        Ok(t) => t,
        Err(e) => return (StatusCode::BAD_REQUEST, e.msg).into_response(),
    };
    let file = match tokio::fs::File::open(&target).await {
        Ok(f) if target.is_file() => f,
        _ => return (StatusCode::NOT_FOUND, "no such file").into_response(),
    };
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().replace('"', ""))
        .unwrap_or_default();
    let stream = futures_util::stream::unfold(file, |mut f| async move {
        let mut buf = vec![0u8; 64 * 1024];
        match f.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok::<_, std::io::Error>(buf), f))
            }
            Err(e) => Some((Err(e), f)),
        }
    });
    (
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{name}\""),
            ),
        ],
        axum::body::Body::from_stream(stream),
    )
        .into_response()
}
