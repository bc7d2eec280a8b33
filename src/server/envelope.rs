//! The ClearML response envelope and the server's error type.
//!
//! Every answer is `{"meta": {...}, "data": {...}}` with the HTTP status equal to
//! `meta.result_code`; the codes and subcodes are the real server's (`apierrors/errors.conf`), because
//! the clients branch on them (401 -> login again, 400/701 -> "not a queue id, try it as a name").

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};

/// An error answer: HTTP code, ClearML subcode, message and optional `error_data`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{code}/{subcode}: {msg}")]
pub struct ApiError {
    pub code: u16,
    pub subcode: u32,
    pub msg: String,
    pub data: Value,
}

impl ApiError {
    pub fn new(code: u16, subcode: u32, msg: impl Into<String>) -> Self {
        ApiError {
            code,
            subcode,
            msg: msg.into(),
            data: json!({}),
        }
    }
    pub fn with_data(mut self, data: Value) -> Self {
        self.data = data;
        self
    }
    pub fn bad_request(msg: impl Into<String>) -> Self {
        Self::new(400, 0, msg)
    }
    pub fn not_supported(msg: impl Into<String>) -> Self {
        Self::new(400, 1, format!("Not supported: {}", msg.into()))
    }
    pub fn missing_field(field: &str) -> Self {
        Self::new(
            400,
            11,
            format!("Validation error (missing required fields): {field}"),
        )
    }
    pub fn validation(msg: impl Into<String>) -> Self {
        Self::new(400, 12, format!("Validation error: {}", msg.into()))
    }
    pub fn invalid_task(id: &str) -> Self {
        Self::new(400, 101, format!("Invalid task id: id={id}"))
    }
    pub fn task_status(msg: impl Into<String>) -> Self {
        Self::new(400, 110, format!("Invalid task status: {}", msg.into()))
    }
    pub fn missing_task_fields(msg: impl Into<String>) -> Self {
        Self::new(
            400,
            122,
            format!("Task is missing expected fields: {}", msg.into()),
        )
    }
    pub fn invalid_project(id: &str) -> Self {
        Self::new(400, 401, format!("Invalid project id: id={id}"))
    }
    pub fn invalid_queue(id: &str) -> Self {
        Self::new(400, 701, format!("Invalid queue id: id={id}"))
    }
    pub fn not_unique(what: &str) -> Self {
        Self::new(
            400,
            801,
            format!("Value combination already exists (unique indices): {what}"),
        )
    }
    pub fn unknown_endpoint(name: &str, version: &str) -> Self {
        Self::new(
            404,
            0,
            format!("Unable to find endpoint for name {name} and version {version}"),
        )
    }
    pub fn internal(msg: impl Into<String>) -> Self {
        Self::new(500, 0, format!("General data error: {}", msg.into()))
    }
}

/// What the meta section needs to know about the call being answered.
#[derive(Debug, Clone, Default)]
pub struct CallInfo {
    pub id: String,
    pub trx: String,
    pub endpoint: String,
    pub requested_version: String,
    /// The task the call is about, when it names one (for the access log).
    pub task: Option<String>,
}

/// The full envelope as an HTTP response.
pub fn respond(call: &CallInfo, result: Result<Value, ApiError>) -> Response {
    let (code, subcode, msg, data, error_data) = match result {
        Ok(data) => (200u16, 0u32, "OK".to_string(), data, json!({})),
        Err(e) => (e.code, e.subcode, e.msg, json!({}), e.data),
    };
    let body = json!({
        "meta": {
            "id": call.id,
            "trx": call.trx,
            "endpoint": {
                "name": call.endpoint,
                "requested_version": call.requested_version,
                "actual_version": crate::server::API_VERSION,
            },
            "result_code": code,
            "result_subcode": subcode,
            "result_msg": msg,
            "error_stack": Value::Null,
            "error_data": error_data,
        },
        "data": data,
    });
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_REQUEST);
    let mut response = (status, axum::Json(body)).into_response();
    response.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("application/json"),
    );
    response
}

/// An empty JSON object, the `data` of most write endpoints.
pub fn empty() -> Value {
    Value::Object(Map::new())
}
