//! The endpoints, one module per ClearML service. Every handler is synchronous: it takes the call
//! context and the validated parameters and does its read-check-write on the store under the
//! store's lock, so each call is atomic with respect to every other.

pub mod events;
pub mod projects;
pub mod queues;
pub mod system;
pub mod tasks;
pub mod workers;

use super::auth::{Identity, ServerIdentity};
use super::envelope::ApiError;
use super::params::{Endpoint, Params};
use super::store::{Docs, Kind, Store, StoreError};
use serde_json::Value;

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        ApiError::internal(e.to_string())
    }
}

/// What a handler answers: JSON for the envelope, or raw text (`events.download_task_log`).
pub enum Reply {
    Json(Value),
    Text(String),
}

/// Tunables of the server's semantics.
#[derive(Debug, Clone)]
pub struct Semantics {
    /// Default worker registration TTL (s), refreshed by every status report.
    pub worker_timeout_s: u64,
    /// A task whose worker reported within this many seconds is "actively running" (`tasks.stop`).
    pub task_update_timeout_s: u64,
    /// Default token lifetime (s).
    pub token_expiration_s: u64,
}

impl Default for Semantics {
    fn default() -> Self {
        Semantics {
            worker_timeout_s: 600,
            task_update_timeout_s: 600,
            token_expiration_s: 30 * 24 * 3600,
        }
    }
}

/// Everything one call can see.
pub struct Ctx<'a> {
    pub store: &'a Store,
    pub server: &'a ServerIdentity,
    pub semantics: &'a Semantics,
    /// `None` for the endpoints that answer without authentication.
    pub identity: Option<Identity>,
    /// `X-ClearML-Worker` (or `X-Trains-Worker`), the default `worker` of events.
    pub worker_header: Option<String>,
    pub client_ip: String,
    pub now_ms: u64,
    pub raw_body: &'a [u8],
}

impl Ctx<'_> {
    pub fn now_iso(&self) -> String {
        super::query::iso(self.now_ms)
    }
    pub fn identity(&self) -> Identity {
        self.identity
            .clone()
            .unwrap_or_else(|| Identity::of(self.server))
    }
}

/// The endpoints that answer without credentials.
pub fn is_public(ep: &Endpoint) -> bool {
    matches!(
        (ep.service.as_str(), ep.action.as_str()),
        ("debug", "ping")
            | ("server", "info")
            | ("auth", "fixed_users_mode")
            | ("login", "supported_modes")
    )
}

/// Routes one call; `None` means no such endpoint (404/0).
pub fn dispatch(ctx: &Ctx, ep: &Endpoint, p: &Params) -> Option<Result<Reply, ApiError>> {
    let action = ep.action.as_str();
    match ep.service.as_str() {
        "tasks" => tasks::handle(ctx, action, p).map(|r| r.map(Reply::Json)),
        "queues" => queues::handle(ctx, action, p).map(|r| r.map(Reply::Json)),
        "workers" => workers::handle(ctx, action, p).map(|r| r.map(Reply::Json)),
        "events" => events::handle(ctx, action, p),
        "projects" => projects::handle(ctx, action, p).map(|r| r.map(Reply::Json)),
        "auth" | "users" | "server" | "debug" | "login" => {
            system::handle(ctx, &ep.service, action, p).map(|r| r.map(Reply::Json))
        }
        _ => None,
    }
}

/// The task `id`, or 400/101.
pub fn task<'d>(docs: &'d Docs, id: &str) -> Result<&'d super::store::Doc, ApiError> {
    docs.get(Kind::Task, id)
        .ok_or_else(|| ApiError::invalid_task(id))
}

pub fn str_field<'d>(doc: &'d super::store::Doc, field: &str) -> &'d str {
    doc.get(field).and_then(Value::as_str).unwrap_or("")
}

/// Runs `service.action` in-process as the server's own user, through [`dispatch`] and so the same
/// handlers and rules as an HTTP call (the web pages' actions use it). A handler panic answers 500.
pub fn call_in_process(
    store: &Store,
    server: &ServerIdentity,
    semantics: &Semantics,
    endpoint: &str,
    params: serde_json::Map<String, Value>,
) -> Result<Value, ApiError> {
    let (service, action) = endpoint.split_once('.').unwrap_or((endpoint, ""));
    let ep = Endpoint {
        service: service.to_string(),
        action: action.to_string(),
        version: None,
    };
    let ctx = Ctx {
        store,
        server,
        semantics,
        identity: Some(Identity::of(server)),
        worker_header: None,
        client_ip: "web".into(),
        now_ms: crate::host::now_ms(),
        raw_body: &[],
    };
    let p = Params(params);
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| dispatch(&ctx, &ep, &p))) {
        Ok(Some(Ok(Reply::Json(v)))) => Ok(v),
        Ok(Some(Ok(Reply::Text(t)))) => Ok(Value::String(t)),
        Ok(Some(Err(e))) => Err(e),
        Ok(None) => Err(ApiError::unknown_endpoint(endpoint, super::API_VERSION)),
        Err(_) => Err(ApiError::internal(format!(
            "endpoint {endpoint} failed unexpectedly"
        ))),
    }
}
