//! Login and sessions. The form takes the server's access key and secret (what the real UI's
//! key login takes); success creates a server-side session whose random id travels only in an
//! HttpOnly, SameSite=Strict cookie, never in a URL. Each session has its own CSRF token, which
//! every POST must carry (form field `csrf` or header `X-CSRF-Token`); a POST whose `Origin`
//! names another host is refused as well. Sessions live in memory: a server restart logs out.

use super::{html, views, WebState};
use crate::server::auth::random_bytes;
use axum::extract::{FromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

pub const COOKIE: &str = "clearml_web_session";
/// A session unused this long is gone.
const IDLE_MS: u64 = 12 * 3600 * 1000;
/// And none lives longer than this.
const MAX_AGE_MS: u64 = 7 * 24 * 3600 * 1000;
/// Past this many sessions the least recently used is dropped.
const MAX_SESSIONS: usize = 1024;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A one-shot message for the next page (the outcome of an action).
#[derive(Clone, Debug)]
pub struct Flash {
    pub ok: bool,
    pub text: String,
}

struct Session {
    csrf: String,
    created_ms: u64,
    last_ms: u64,
    flash: Option<Flash>,
}

#[derive(Default)]
pub struct Sessions {
    inner: Mutex<HashMap<String, Session>>,
}

impl std::fmt::Debug for Sessions {
    // Never print session ids or tokens.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions").finish_non_exhaustive()
    }
}

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new session; returns its id.
    pub fn create(&self, now_ms: u64) -> String {
        let id = hex(&random_bytes(32));
        let mut map = self.lock();
        map.retain(|_, s| live(s, now_ms));
        if map.len() >= MAX_SESSIONS {
            if let Some(oldest) = map
                .iter()
                .min_by_key(|(_, s)| s.last_ms)
                .map(|(k, _)| k.clone())
            {
                map.remove(&oldest);
            }
        }
        map.insert(
            id.clone(),
            Session {
                csrf: hex(&random_bytes(32)),
                created_ms: now_ms,
                last_ms: now_ms,
                flash: None,
            },
        );
        id
    }

    /// The live session `id`: touches it and takes its flash when `take_flash`.
    fn touch(&self, id: &str, now_ms: u64, take_flash: bool) -> Option<(String, Option<Flash>)> {
        let mut map = self.lock();
        let s = map.get_mut(id)?;
        if !live(s, now_ms) {
            map.remove(id);
            return None;
        }
        s.last_ms = now_ms;
        let flash = if take_flash { s.flash.take() } else { None };
        Some((s.csrf.clone(), flash))
    }

    pub fn set_flash(&self, id: &str, flash: Flash) {
        if let Some(s) = self.lock().get_mut(id) {
            s.flash = Some(flash);
        }
    }

    pub fn remove(&self, id: &str) {
        self.lock().remove(id);
    }

    pub fn is_live(&self, id: &str, now_ms: u64) -> bool {
        self.lock().get(id).is_some_and(|s| live(s, now_ms))
    }

    pub fn count(&self, now_ms: u64) -> usize {
        self.lock().values().filter(|s| live(s, now_ms)).count()
    }
}

fn live(s: &Session, now_ms: u64) -> bool {
    now_ms.saturating_sub(s.last_ms) < IDLE_MS && now_ms.saturating_sub(s.created_ms) < MAX_AGE_MS
}

/// The session id from the request's cookie.
pub fn cookie_sid(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| {
            c.trim()
                .strip_prefix(COOKIE)
                .and_then(|r| r.strip_prefix('='))
                .map(str::to_string)
        })
}

/// A logged-in page request. Without a session: a redirect to the login page.
pub struct Authed {
    pub sid: String,
    pub csrf: String,
    pub flash: Option<Flash>,
}

/// A logged-in JSON request. Without a session: 401.
pub struct ApiAuthed(#[allow(dead_code)] pub Authed);

fn find(parts: &Parts, web: &WebState, take_flash: bool) -> Option<Authed> {
    let sid = cookie_sid(&parts.headers)?;
    let (csrf, flash) = web
        .sessions
        .touch(&sid, crate::host::now_ms(), take_flash)?;
    Some(Authed { sid, csrf, flash })
}

/// Where to come back after logging in: a local path only (never `//host` or a URL).
pub fn safe_next(next: &str) -> String {
    if next.starts_with('/') && !next.starts_with("//") && !next.contains('\\') {
        next.to_string()
    } else {
        "/projects".to_string()
    }
}

impl FromRequestParts<Arc<WebState>> for Authed {
    type Rejection = Response;
    async fn from_request_parts(
        parts: &mut Parts,
        web: &Arc<WebState>,
    ) -> Result<Self, Self::Rejection> {
        match find(parts, web, true) {
            Some(a) => Ok(a),
            None => {
                let here = parts
                    .uri
                    .path_and_query()
                    .map(|p| p.as_str())
                    .unwrap_or("/");
                let next: String =
                    percent_encoding::utf8_percent_encode(here, percent_encoding::NON_ALPHANUMERIC)
                        .to_string();
                Err(Redirect::to(&format!("/login?next={next}")).into_response())
            }
        }
    }
}

impl FromRequestParts<Arc<WebState>> for ApiAuthed {
    type Rejection = Response;
    async fn from_request_parts(
        parts: &mut Parts,
        web: &Arc<WebState>,
    ) -> Result<Self, Self::Rejection> {
        find(parts, web, false).map(ApiAuthed).ok_or_else(|| {
            (
                StatusCode::UNAUTHORIZED,
                axum::Json(serde_json::json!({"error": "not logged in"})),
            )
                .into_response()
        })
    }
}

/// Why a POST was refused: answered 403 with the reason.
pub struct Refused(&'static str);

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        (
            StatusCode::FORBIDDEN,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("Refused: {}. Reload the page and try again.", self.0),
        )
            .into_response()
    }
}

/// A POST from a logged-in session whose CSRF token (form field or `X-CSRF-Token`) matches and
/// whose `Origin`, when sent, is this host.
pub fn check_post(
    web: &WebState,
    headers: &HeaderMap,
    form_token: Option<&str>,
) -> Result<Authed, Refused> {
    if !same_origin(headers) {
        return Err(Refused("the request came from another site"));
    }
    let sid = cookie_sid(headers).ok_or(Refused("not logged in"))?;
    let (csrf, _) = web
        .sessions
        .touch(&sid, crate::host::now_ms(), false)
        .ok_or(Refused("the session has expired"))?;
    let given = form_token
        .map(str::to_string)
        .or_else(|| {
            headers
                .get("x-csrf-token")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        })
        .unwrap_or_default();
    if !constant_eq(given.as_bytes(), csrf.as_bytes()) {
        return Err(Refused(
            "the form's security token does not match this session",
        ));
    }
    Ok(Authed {
        sid,
        csrf,
        flash: None,
    })
}

/// `Origin` absent (old browsers, same-origin GET-to-POST forms in some) or naming the `Host`.
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let origin_host = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
        .unwrap_or("");
    !host.is_empty() && origin_host == host
}

fn constant_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[derive(Deserialize)]
pub struct LoginForm {
    #[serde(default)]
    access_key: String,
    #[serde(default)]
    secret_key: String,
    #[serde(default)]
    next: String,
}

pub async fn login_page(Query(q): Query<HashMap<String, String>>) -> Response {
    let next = safe_next(q.get("next").map(String::as_str).unwrap_or("/projects"));
    html(views::login(&next, None))
}

pub async fn login(
    State(web): State<Arc<WebState>>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    let next = safe_next(&form.next);
    if !same_origin(&headers) {
        return (
            StatusCode::FORBIDDEN,
            "Refused: the request came from another site",
        )
            .into_response();
    }
    let server = &web.app.server;
    let ok = constant_eq(
        form.access_key.trim().as_bytes(),
        server.access_key.as_bytes(),
    ) & constant_eq(
        form.secret_key.trim().as_bytes(),
        server.secret_key.as_bytes(),
    );
    if !ok {
        return (
            StatusCode::UNAUTHORIZED,
            html(views::login(&next, Some("Wrong access key or secret key."))),
        )
            .into_response();
    }
    let sid = web.sessions.create(crate::host::now_ms());
    let cookie = format!(
        "{COOKIE}={sid}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}",
        MAX_AGE_MS / 1000
    );
    ([(header::SET_COOKIE, cookie)], Redirect::to(&next)).into_response()
}

#[derive(Deserialize)]
pub struct LogoutForm {
    #[serde(default)]
    csrf: String,
}

pub async fn logout(
    State(web): State<Arc<WebState>>,
    headers: HeaderMap,
    Form(form): Form<LogoutForm>,
) -> Response {
    let authed = match check_post(&web, &headers, Some(&form.csrf)) {
        Ok(a) => a,
        Err(r) => return r.into_response(),
    };
    web.sessions.remove(&authed.sid);
    (
        [(
            header::SET_COOKIE,
            format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
        )],
        Redirect::to("/login"),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_expire_and_are_bounded() {
        let s = Sessions::default();
        let id = s.create(1000);
        assert!(s.touch(&id, 2000, false).is_some());
        assert!(s.touch(&id, 2000 + IDLE_MS, false).is_none());
        assert!(s.touch("nope", 2000, false).is_none());
        for i in 0..(MAX_SESSIONS + 10) {
            s.create(10_000 + i as u64);
        }
        assert!(s.count(20_000) <= MAX_SESSIONS);
    }

    #[test]
    fn next_is_local_only() {
        assert_eq!(safe_next("/queues?x=1"), "/queues?x=1");
        for bad in [
            "//evil.example/",
            "http://evil.example/",
            "/\\evil",
            "queues",
        ] {
            assert_eq!(safe_next(bad), "/projects", "{bad}");
        }
    }

    #[test]
    fn origin_must_name_the_host() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, "127.0.0.1:8008".parse().unwrap());
        assert!(same_origin(&h));
        h.insert(header::ORIGIN, "http://127.0.0.1:8008".parse().unwrap());
        assert!(same_origin(&h));
        h.insert(header::ORIGIN, "http://evil.example".parse().unwrap());
        assert!(!same_origin(&h));
        h.insert(header::ORIGIN, "null".parse().unwrap());
        assert!(!same_origin(&h));
    }
}
