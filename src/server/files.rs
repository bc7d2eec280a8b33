//! The files server (the real one is a separate Flask service on port 8081): a blob store over
//! `<data-dir>/files`. `POST` multipart where each field name is the target path, `GET` and
//! `DELETE` a path, `POST /delete_many`. Every path is confined to the files root: `..`, NUL and
//! absolute components are refused before anything touches the disk.

use super::auth::authenticate;
use super::envelope::{respond, ApiError, CallInfo};
use super::App;
use axum::body::Body;
use axum::extract::{Multipart, Path as UrlPath, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::io::AsyncWriteExt;

/// `%XX` decoding (invalid escapes are kept as they are).
pub fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Some(b) = std::str::from_utf8(&bytes[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Maps a client path onto the files root, refusing anything that would leave it.
pub fn confine(root: &Path, rel: &str) -> Result<PathBuf, ApiError> {
    let decoded = percent_decode(rel);
    let mut out = root.to_path_buf();
    let mut depth = 0;
    for part in decoded.split(['/', '\\']) {
        match part {
            "" | "." => continue,
            ".." => {
                return Err(ApiError::new(
                    400,
                    12,
                    format!("Validation error: path escapes the files root: {rel}"),
                ))
            }
            p if p.contains('\0') => {
                return Err(ApiError::new(
                    400,
                    12,
                    "Validation error: path holds a NUL byte",
                ))
            }
            p => {
                out.push(p);
                depth += 1;
            }
        }
    }
    if depth == 0 {
        return Err(ApiError::new(
            400,
            12,
            format!("Validation error: empty file path: {rel:?}"),
        ));
    }
    Ok(out)
}

fn call(name: &str) -> CallInfo {
    let id = super::auth::new_id();
    CallInfo {
        trx: id.clone(),
        id,
        endpoint: format!("files.{name}"),
        requested_version: super::API_VERSION.into(),
        task: None,
    }
}

fn check_auth(app: &App, headers: &HeaderMap) -> Result<(), ApiError> {
    authenticate(&app.server, headers, crate::host::now_ms() / 1000).map(|_| ())
}

/// Authenticates the call and maps its path onto the files root.
fn authorized_target(app: &App, headers: &HeaderMap, path: &str) -> Result<PathBuf, ApiError> {
    check_auth(app, headers)?;
    confine(&app.files_root, path)
}

pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/", get(ping).post(upload_root))
        .route("/delete_many", post(delete_many))
        .route(
            "/{*path}",
            get(download).post(upload_under).delete(delete_one),
        )
        .layer(axum::extract::DefaultBodyLimit::disable())
        .with_state(app)
}

async fn ping() -> impl IntoResponse {
    (
        StatusCode::OK,
        "ClearML files server (clearml-agent server)",
    )
}

async fn upload_root(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    multipart: Multipart,
) -> Response {
    upload(app, headers, String::new(), multipart).await
}

async fn upload_under(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    UrlPath(prefix): UrlPath<String>,
    multipart: Multipart,
) -> Response {
    upload(app, headers, prefix, multipart).await
}

async fn upload(
    app: Arc<App>,
    headers: HeaderMap,
    prefix: String,
    mut multipart: Multipart,
) -> Response {
    let info = call("upload");
    if let Err(e) = check_auth(&app, &headers) {
        return respond(&info, Err(e));
    }
    let mut stored = Vec::new();
    loop {
        let mut field = match multipart.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => {
                return respond(
                    &info,
                    Err(ApiError::bad_request(format!(
                        "malformed multipart body: {e}"
                    ))),
                )
            }
        };
        let name = field_name(&field);
        let rel = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}/{name}")
        };
        let target = match confine(&app.files_root, &rel) {
            Ok(t) => t,
            Err(e) => return respond(&info, Err(e)),
        };
        if let Some(parent) = target.parent() {
            if let Err(e) = tokio::fs::create_dir_all(parent).await {
                return respond(
                    &info,
                    Err(ApiError::internal(format!(
                        "cannot create {}: {e}",
                        parent.display()
                    ))),
                );
            }
        }
        // Write beside the target, then rename: a reader never sees half a file.
        let tmp = target.with_extension(format!("upload-{}", super::auth::new_id()));
        let mut file = match tokio::fs::File::create(&tmp).await {
            Ok(f) => f,
            Err(e) => {
                return respond(
                    &info,
                    Err(ApiError::internal(format!(
                        "cannot write {}: {e}",
                        tmp.display()
                    ))),
                )
            }
        };
        loop {
            match field.chunk().await {
                Ok(Some(bytes)) => {
                    if let Err(e) = file.write_all(&bytes).await {
                        let _ = tokio::fs::remove_file(&tmp).await;
                        return respond(
                            &info,
                            Err(ApiError::internal(format!(
                                "cannot write {}: {e}",
                                tmp.display()
                            ))),
                        );
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    let _ = tokio::fs::remove_file(&tmp).await;
                    return respond(
                        &info,
                        Err(ApiError::bad_request(format!(
                            "upload of {rel} broke off: {e}"
                        ))),
                    );
                }
            }
        }
        let done = file
            .sync_all()
            .await
            .and(tokio::fs::rename(&tmp, &target).await);
        if let Err(e) = done {
            let _ = tokio::fs::remove_file(&tmp).await;
            return respond(
                &info,
                Err(ApiError::internal(format!(
                    "cannot store {}: {e}",
                    target.display()
                ))),
            );
        }
        stored.push(rel);
    }
    (StatusCode::OK, axum::Json(json!(stored))).into_response()
}

/// The part's field name: `name="..."`, or the RFC 5987 `name*=utf-8''...` form some clients
/// (reqwest) send for names with spaces.
fn field_name(field: &axum::extract::multipart::Field<'_>) -> String {
    if let Some(name) = field.name().filter(|n| !n.is_empty()) {
        return name.to_string();
    }
    let disposition = field
        .headers()
        .get(header::CONTENT_DISPOSITION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    disposition
        .split(';')
        .find_map(|p| p.trim().strip_prefix("name*="))
        .map(|v| {
            let v = v.trim_matches('"');
            let encoded = v.split_once("''").map_or(v, |(_, rest)| rest);
            percent_decode(encoded)
        })
        .unwrap_or_default()
}

async fn download(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    UrlPath(path): UrlPath<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let info = call("download");
    let target = match authorized_target(&app, &headers, &path) {
        Ok(t) => t,
        Err(e) => return respond(&info, Err(e)),
    };
    let file = match tokio::fs::File::open(&target).await {
        Ok(f) if target.is_file() => f,
        _ => {
            return respond(
                &info,
                Err(ApiError::new(404, 0, format!("File not found: {path}"))),
            )
        }
    };
    let len = file.metadata().await.map(|m| m.len()).unwrap_or(0);
    let stream = tokio_util_stream(file);
    let mut response = Response::new(Body::from_stream(stream));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(header::CONTENT_LENGTH, header::HeaderValue::from(len));
    if query.contains_key("download") {
        let name = target
            .file_name()
            .map(|n| n.to_string_lossy().replace('"', ""))
            .unwrap_or_default();
        if let Ok(v) = header::HeaderValue::from_str(&format!("attachment; filename=\"{name}\"")) {
            headers.insert(header::CONTENT_DISPOSITION, v);
        }
    }
    response
}

/// A file as a stream of chunks, without pulling in tokio-util for one adapter.
fn tokio_util_stream(
    file: tokio::fs::File,
) -> impl futures_core_stream::Stream<Item = Result<Vec<u8>, std::io::Error>> + Send {
    futures_core_stream::unfold(file, |mut file| async move {
        use tokio::io::AsyncReadExt;
        let mut buf = vec![0u8; 256 * 1024];
        match file.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(buf), file))
            }
            Err(e) => Some((Err(e), file)),
        }
    })
}

/// The smallest stream toolkit the download needs.
mod futures_core_stream {
    pub use futures_util::stream::{unfold, Stream};
}

async fn delete_one(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    UrlPath(path): UrlPath<String>,
) -> Response {
    let info = call("delete");
    let target = match authorized_target(&app, &headers, &path) {
        Ok(t) => t,
        Err(e) => return respond(&info, Err(e)),
    };
    match tokio::fs::remove_file(&target).await {
        Ok(()) => (StatusCode::OK, axum::Json(json!({"deleted": path}))).into_response(),
        Err(_) => respond(
            &info,
            Err(ApiError::new(404, 0, format!("File not found: {path}"))),
        ),
    }
}

async fn delete_many(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let info = call("delete_many");
    if let Err(e) = check_auth(&app, &headers) {
        return respond(&info, Err(e));
    }
    let files: Vec<String> = match serde_json::from_slice::<Value>(&body) {
        Ok(v) => match v.get("files").and_then(Value::as_array) {
            Some(l) => l
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect(),
            None => return respond(&info, Err(ApiError::missing_field("files"))),
        },
        Err(e) => {
            return respond(
                &info,
                Err(ApiError::bad_request(format!(
                    "Content could not be parsed as JSON: {e}"
                ))),
            )
        }
    };
    let mut deleted = Vec::new();
    let mut errors = serde_json::Map::new();
    for f in files {
        match confine(&app.files_root, &f) {
            Ok(target) => match tokio::fs::remove_file(&target).await {
                Ok(()) => deleted.push(f),
                Err(e) => {
                    errors.insert(f, json!(e.to_string()));
                }
            },
            Err(e) => {
                errors.insert(f, json!(e.msg));
            }
        }
    }
    (
        StatusCode::OK,
        axum::Json(json!({"deleted": deleted, "errors": errors})),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_under_the_root() {
        let root = Path::new("/data/files");
        assert_eq!(
            confine(root, "demo/local%20run.x/a.json").unwrap(),
            root.join("demo/local run.x/a.json")
        );
        assert_eq!(confine(root, "/a//./b").unwrap(), root.join("a/b"));
        for bad in [
            "../etc/passwd",
            "a/../../x",
            "%2e%2e/x",
            "a/%2E%2E/%2E%2E/x",
            "a\\..\\..\\x",
            "",
            "/",
            "a%00b",
        ] {
            assert!(confine(root, bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn decoding() {
        assert_eq!(percent_decode("a%20b%2Fc%zz%"), "a b/c%zz%");
        assert_eq!(percent_decode("%é%"), "%é%");
    }
}
