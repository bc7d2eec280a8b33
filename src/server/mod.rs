//! `clearml-agent server`: an embedded ClearML-compatible control plane (REST API on one port,
//! files server on another) over its own sled store. Faithful enough that the unmodified Python
//! `clearml` SDK and `clearml-agent` work against it; see ../shared/reference/clearml-server-api.md.
//!
//! Layers: [`params`] decodes a request, [`auth`] authenticates it, [`api`] runs the endpoint
//! against [`store`], [`envelope`] answers. [`files`] is the blob store.

pub mod api;
pub mod auth;
pub mod envelope;
pub mod files;
pub mod params;
pub mod query;
pub mod status;
pub mod store;
pub mod web;

use api::{Ctx, Reply, Semantics};
use auth::{authenticate, ServerIdentity};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::serve::ListenerExt;
use axum::Router;
use envelope::{respond, ApiError, CallInfo};
use params::{parse_object, parse_path, Params};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use store::{Kind, Store};

/// The API version advertised in tokens and `server.info` (the real server's max).
pub const API_VERSION: &str = "2.31";
pub const SERVER_VERSION: &str = "2.0.0";
pub const SERVER_BUILD: &str = concat!("clearml-agent-rs-", env!("CARGO_PKG_VERSION"));

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("server stopped with an error: {0}")]
    Serve(std::io::Error),
}

/// How to run the server.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    pub host: String,
    /// 0 picks a free port (tests); the bound port is in [`Bound`].
    pub port: u16,
    pub files_port: u16,
    pub data_dir: PathBuf,
    /// Largest API request body; bigger ones get 413 with the envelope.
    pub max_body_bytes: usize,
    /// Log one line per API call (method, endpoint, status, duration) to stderr.
    pub access_log: bool,
    pub semantics: Semantics,
}

impl ServerOptions {
    pub fn new(data_dir: PathBuf) -> Self {
        ServerOptions {
            host: "127.0.0.1".into(),
            port: 8008,
            files_port: 8081,
            data_dir,
            max_body_bytes: 16 * 1024 * 1024,
            access_log: false,
            semantics: Semantics::default(),
        }
    }
}

/// Shared state of a running server.
pub struct App {
    pub store: Arc<Store>,
    pub server: ServerIdentity,
    pub semantics: Semantics,
    pub files_root: PathBuf,
    pub max_body_bytes: usize,
    pub access_log: bool,
}

/// Where the server listens, once bound.
#[derive(Debug, Clone)]
pub struct Bound {
    pub api: SocketAddr,
    pub files: SocketAddr,
    pub first_start: bool,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ServerError + '_ {
    move |source| ServerError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Opens the store, creating the identity and the `default` queue on the first start.
pub fn open_app(opts: &ServerOptions) -> Result<(App, bool), ServerError> {
    std::fs::create_dir_all(&opts.data_dir).map_err(io_err(&opts.data_dir))?;
    let store = Arc::new(Store::open(&opts.data_dir)?);
    store.start_persister();
    let (server, first_start) = match store.meta_get("identity")? {
        Some(bytes) => match serde_json::from_slice::<ServerIdentity>(&bytes) {
            Ok(identity) => (identity, false),
            Err(e) => {
                return Err(ServerError::Io {
                    path: opts.data_dir.join("db").display().to_string(),
                    source: std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("stored identity is corrupt: {e}"),
                    ),
                })
            }
        },
        None => {
            let identity = ServerIdentity::generate();
            store.meta_put(
                "identity",
                &serde_json::to_vec(&identity).expect("JSON encodes"),
            )?;
            (identity, true)
        }
    };
    let files_root = opts.data_dir.join("files");
    std::fs::create_dir_all(&files_root).map_err(io_err(&files_root))?;
    let app = App {
        store,
        server,
        semantics: opts.semantics.clone(),
        files_root,
        max_body_bytes: opts.max_body_bytes,
        access_log: opts.access_log,
    };
    if !app.store.read(|docs| !docs.map(Kind::Queue).is_empty()) && first_start {
        let ctx = system_ctx(&app);
        app.store
            .write(|docs| {
                api::queues::insert_queue(&ctx, docs, "default", vec![], vec!["default".into()])
            })
            .map_err(|e| ServerError::Io {
                path: opts.data_dir.display().to_string(),
                source: std::io::Error::other(e.msg),
            })?;
    }
    Ok((app, first_start))
}

fn system_ctx(app: &App) -> Ctx<'_> {
    Ctx {
        store: &app.store,
        server: &app.server,
        semantics: &app.semantics,
        identity: None,
        worker_header: None,
        client_ip: String::new(),
        now_ms: crate::host::now_ms(),
        raw_body: &[],
    }
}

/// Runs both listeners until `shutdown` resolves, then drains in-flight calls and flushes the
/// store. `on_bound` is called once both ports are listening.
pub async fn run(
    opts: ServerOptions,
    on_bound: impl FnOnce(&App, &Bound),
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let (app, first_start) = open_app(&opts)?;
    let app = Arc::new(app);
    let bind = |port: u16| {
        let addr = format!("{}:{port}", opts.host);
        async move {
            tokio::net::TcpListener::bind(&addr)
                .await
                .map_err(|source| ServerError::Bind { addr, source })
        }
    };
    let api_listener = bind(opts.port).await?;
    let files_listener = bind(opts.files_port).await?;
    let bound = Bound {
        api: api_listener.local_addr().map_err(ServerError::Serve)?,
        files: files_listener.local_addr().map_err(ServerError::Serve)?,
        first_start,
    };
    write_client_config(&app, &opts.data_dir, &bound)?;
    on_bound(&app, &bound);

    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = tx.send(true);
    });
    let stop = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|v| *v).await;
    };
    // TCP_NODELAY: without it every small answer waits ~40 ms for a delayed ACK.
    let nodelay = |tcp: &mut tokio::net::TcpStream| {
        let _ = tcp.set_nodelay(true);
    };
    // The web pages share the API's port (the API keeps its paths); /metrics counts every call.
    let api_router =
        web::Web::new(app.clone()).wrap(Router::new().fallback(api_call).with_state(app.clone()));
    let api = axum::serve(
        api_listener.tap_io(nodelay),
        api_router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(stop(rx.clone()));
    let files = axum::serve(files_listener.tap_io(nodelay), files::router(app.clone()))
        .with_graceful_shutdown(stop(rx));
    let (a, f) = tokio::join!(api, files);
    a.map_err(ServerError::Serve)?;
    f.map_err(ServerError::Serve)?;
    app.store.flush()?;
    Ok(())
}

/// The `CLEARML_*` exports a client needs, one per line. The secret is included only when
/// `with_secret` (the 0600 env file), never in console output after the first start.
pub fn client_exports(app: &App, bound: &Bound, with_secret: bool) -> String {
    let api = format!("http://{}", bound.api);
    let secret = if with_secret {
        app.server.secret_key.clone()
    } else {
        "<see server.env in the data dir>".into()
    };
    format!(
        "export CLEARML_API_HOST={api}\nexport CLEARML_WEB_HOST={api}\nexport CLEARML_FILES_HOST=http://{}\n\
         export CLEARML_API_ACCESS_KEY={}\nexport CLEARML_API_SECRET_KEY={secret}\n",
        bound.files, app.server.access_key
    )
}

fn write_private(path: &Path, text: &str) -> Result<(), ServerError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io_err(&tmp))?;
    f.write_all(text.as_bytes()).map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io_err(path))
}

/// Writes `<data-dir>/server.env` (exports) and `<data-dir>/clearml.conf` (an `api` section),
/// both mode 0600 because they hold the secret.
fn write_client_config(app: &App, data_dir: &Path, bound: &Bound) -> Result<(), ServerError> {
    write_private(
        &data_dir.join("server.env"),
        &client_exports(app, bound, true),
    )?;
    let conf = format!(
        "# Written by `clearml-agent server`: point the SDK and agents at this server.\napi {{\n    \
         api_server: \"http://{api}\"\n    web_server: \"http://{api}\"\n    files_server: \"http://{files}\"\n    \
         credentials {{\n        access_key: \"{key}\"\n        secret_key: \"{secret}\"\n    }}\n}}\n",
        api = bound.api,
        files = bound.files,
        key = app.server.access_key,
        secret = app.server.secret_key,
    );
    write_private(&data_dir.join("clearml.conf"), &conf)
}

fn header_str(headers: &HeaderMap, names: &[&str]) -> Option<String> {
    names.iter().find_map(|n| {
        headers
            .get(*n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    })
}

/// The one API handler: every path and method comes here.
async fn api_call(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
) -> Response {
    let started = std::time::Instant::now();
    let (parts, body) = req.into_parts();
    let call_id = auth::new_id();
    let trx = header_str(&parts.headers, &["x-clearml-trx", "x-trains-trx"])
        .unwrap_or_else(|| call_id.clone());
    let endpoint = parse_path(parts.uri.path());
    let mut info = CallInfo {
        id: call_id,
        trx,
        endpoint: endpoint
            .as_ref()
            .map(|e| e.name())
            .unwrap_or_else(|| parts.uri.path().to_string()),
        requested_version: endpoint
            .as_ref()
            .and_then(|e| e.version.clone())
            .unwrap_or_else(|| API_VERSION.into()),
        task: None,
    };
    if parts.method == Method::OPTIONS {
        return StatusCode::OK.into_response();
    }
    let result = handle(&app, &parts, body, endpoint, peer, &mut info).await;
    let status = match &result {
        Ok(_) => 200,
        Err(e) => e.code,
    };
    if app.access_log || status == 404 {
        eprintln!(
            "api {} {}{} -> {} ({:.1} ms)",
            parts.method,
            info.endpoint,
            info.task
                .as_deref()
                .map(|t| format!(" task={t}"))
                .unwrap_or_default(),
            status,
            started.elapsed().as_secs_f64() * 1000.0
        );
    }
    match result {
        Ok(Reply::Text(text)) => (
            StatusCode::OK,
            [("content-type", "text/plain; charset=utf-8")],
            text,
        )
            .into_response(),
        Ok(Reply::Json(v)) => respond(&info, Ok(v)),
        Err(e) => respond(&info, Err(e)),
    }
}

/// Reads the body up to `limit`. An oversized body is still read (and dropped) up to a hard cap,
/// so the client, which is still sending, receives the 413 instead of a connection reset.
async fn read_body(body: axum::body::Body, limit: usize) -> Result<axum::body::Bytes, ApiError> {
    use futures_util::StreamExt;
    let drain_cap = limit.saturating_mul(4).max(64 * 1024 * 1024);
    let mut stream = body.into_data_stream();
    let mut buf = Vec::new();
    let mut seen = 0usize;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk
            .map_err(|e| ApiError::bad_request(format!("request body could not be read: {e}")))?;
        seen += chunk.len();
        if seen <= limit {
            buf.extend_from_slice(&chunk);
        } else if seen > drain_cap {
            break;
        }
    }
    if seen > limit {
        return Err(ApiError::new(
            413,
            0,
            format!("Request body exceeds the limit of {limit} bytes"),
        ));
    }
    Ok(buf.into())
}

async fn handle(
    app: &App,
    parts: &axum::http::request::Parts,
    body: axum::body::Body,
    endpoint: Option<params::Endpoint>,
    peer: SocketAddr,
    info: &mut CallInfo,
) -> Result<Reply, ApiError> {
    let Some(ep) = endpoint else {
        return Err(ApiError::bad_request(format!(
            "Invalid request path {}",
            parts.uri.path()
        )));
    };
    if parts.headers.contains_key("content-encoding") {
        return Err(ApiError::new(415, 0, "Content encoding is not supported"));
    }
    let bytes = read_body(body, app.max_body_bytes).await?;
    let now_ms = crate::host::now_ms();
    let identity = match authenticate(&app.server, &parts.headers, now_ms / 1000) {
        Ok((identity, _)) => Some(identity),
        Err(e) if !api::is_public(&ep) => return Err(e),
        Err(_) => None,
    };
    let query = parts.uri.query();
    let params = if ep.service == "events" && ep.action == "add_batch" {
        // The body is json-lines; only the query string holds parameters.
        parse_object(b"", query)?
    } else {
        parse_object(&bytes, query)?
    };
    let client_ip = header_str(&parts.headers, &["x-real-ip"])
        .or_else(|| {
            header_str(&parts.headers, &["x-forwarded-for"])
                .map(|v| v.split(',').next().unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| peer.ip().to_string());
    let ctx = Ctx {
        store: &app.store,
        server: &app.server,
        semantics: &app.semantics,
        identity,
        worker_header: header_str(&parts.headers, &["x-clearml-worker", "x-trains-worker"]),
        client_ip,
        now_ms,
        raw_body: &bytes,
    };
    let p = Params(params);
    info.task = p.str("task").ok().flatten().map(str::to_string);
    // A handler bug must answer 500 with the envelope, never drop the connection.
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        api::dispatch(&ctx, &ep, &p)
    }));
    match outcome {
        Ok(Some(result)) => result,
        Ok(None) => {
            info.requested_version = ep.version.clone().unwrap_or_else(|| "?".into());
            Err(ApiError::unknown_endpoint(
                &ep.name(),
                &info.requested_version,
            ))
        }
        Err(_) => Err(ApiError::internal(format!(
            "endpoint {} failed unexpectedly",
            ep.name()
        ))),
    }
}
