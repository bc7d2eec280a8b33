//! The ClearML REST API client the agent uses (blocking, thread-safe).
//!
//! Behaviour, matching the Python clients (see shared/reference/clearml-server-api.md §1–2):
//! - A call is `<method> <api_host>/<endpoint>` with a JSON body, GET by default
//!   ([`ApiSettings::method`]); the endpoint may carry a version prefix (`v2.14/queues.get_next_task`).
//!   The answer is an envelope `{"meta": {...}, "data": {...}}` whose `meta.result_code` equals
//!   the HTTP status; [`ApiClient::call`] returns `data` or an [`ApiError`] with code/subcode.
//! - Authentication: `auth.login` with HTTP Basic `key:secret` yields a JWT that later calls
//!   send as `Bearer`. The token's `exp` claim is read without verifying; the token is renewed
//!   before it expires (within [`ApiSettings::token_refresh_threshold`]) and once when a call
//!   answers 401, after which that call is retried once. With only a token (token-only mode),
//!   renewal calls `auth.login` with the token itself. Renewal is serialized: concurrent callers
//!   that saw the same stale token log in once.
//! - Retries: connection errors, timeouts and 429/502/503/504 answers are retried with
//!   exponential backoff (`retry_base * 2^n`, capped by `retry_max_delay`, and by `Retry-After`
//!   when the server sends one) up to [`ApiSettings::max_attempts`] sends in all; 503 is never
//!   retried forever. Any other error answer is returned at once. Note that a timed-out call may
//!   have been executed by the server; like the Python clients, it is sent again anyway.
//! - `events.add_batch` ([`ApiClient::add_events`]) is a POST with a json-lines body, and every
//!   event must be accepted.
//! - Every request carries `X-ClearML-Agent: clearml-agent-rs-<version>` and, when configured,
//!   `X-ClearML-Worker`. One `reqwest` blocking client (keep-alive pool, `TCP_NODELAY`) serves
//!   all calls. Being blocking, an [`ApiClient`] must not be created or dropped inside an async
//!   runtime's worker thread.
//! - Secrets (secret key, tokens, the Basic header) never appear in errors or `Debug` output:
//!   external text is scrubbed before it is put in an [`ApiError`].

mod error;
mod settings;
mod wire;

pub use error::ApiError;
pub use settings::{ApiSettings, HttpMethod, TlsOptions};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use reqwest::blocking::{Client, RequestBuilder};
use reqwest::header::{HeaderMap, HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use serde_json::Value;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Value of the `X-ClearML-Agent` header.
pub const AGENT_HEADER_VALUE: &str = concat!("clearml-agent-rs-", env!("CARGO_PKG_VERSION"));

const LOGIN: &str = "auth.login";
const ADD_BATCH: &str = "events.add_batch";

/// The token in use and what the client read from it.
struct Token {
    raw: String,
    claims: wire::TokenClaims,
}

impl Token {
    fn new(raw: String) -> Token {
        let claims = wire::decode_claims(&raw);
        Token { raw, claims }
    }
}

/// How one request authenticates.
enum Credentials<'a> {
    Basic,
    Bearer(&'a str),
}

/// A blocking ClearML API client. `Send + Sync`: share it between threads by reference or `Arc`.
pub struct ApiClient {
    settings: ApiSettings,
    /// `api_host` without a trailing `/`.
    base: String,
    http: Client,
    /// `None` until the first login (unless the settings carry a token). The lock is held during
    /// a login so that concurrent callers do not log in several times.
    token: Mutex<Option<Token>>,
    /// Literal secrets to scrub from any external text (tokens are masked by shape).
    secrets: Vec<String>,
}

impl std::fmt::Debug for ApiClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiClient")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl ApiClient {
    /// Validates the settings and builds the HTTP client; does not contact the server.
    pub fn new(settings: ApiSettings) -> Result<ApiClient, ApiError> {
        settings.validate()?;
        let mut headers = HeaderMap::new();
        headers.insert(
            "X-ClearML-Agent",
            HeaderValue::from_static(AGENT_HEADER_VALUE),
        );
        if let Some(worker) = &settings.worker_id {
            // validate() checked that it is a valid header value.
            if let Ok(v) = HeaderValue::from_str(worker) {
                headers.insert("X-ClearML-Worker", v);
            }
        }
        let mut builder = Client::builder();
        if let (true, Some(path)) = (settings.verify_tls, &settings.ca_bundle) {
            let bad = |reason: String| ApiError::Config {
                field: "ca_bundle",
                reason: format!("{}: {reason}", path.display()),
            };
            let pem = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
            let certs =
                reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| bad(e.to_string()))?;
            if certs.is_empty() {
                return Err(bad("no PEM certificate in it".into()));
            }
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        let http = builder
            .default_headers(headers)
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout.min(Duration::from_secs(30)))
            .tcp_nodelay(true)
            .tcp_keepalive(Some(Duration::from_secs(60)))
            .danger_accept_invalid_certs(!settings.verify_tls)
            .build()
            .map_err(|e| ApiError::Config {
                field: "api_host",
                reason: format!("cannot build the HTTP client: {}", error_chain(&e)),
            })?;
        let mut secrets = Vec::new();
        if let Some(secret) = &settings.secret_key {
            secrets.push(secret.clone());
            if let Some(key) = &settings.access_key {
                secrets.push(STANDARD.encode(format!("{key}:{secret}")));
            }
        }
        secrets.extend(settings.token.clone());
        Ok(ApiClient {
            base: settings.api_host.trim_end_matches('/').to_string(),
            token: Mutex::new(settings.token.clone().map(Token::new)),
            http,
            secrets,
            settings,
        })
    }

    /// Logs in now (or renews the token in token-only mode), replacing the current token.
    pub fn login(&self) -> Result<(), ApiError> {
        let mut slot = self.lock_token();
        let token = self.fetch_token(LOGIN, slot.as_ref())?;
        *slot = Some(token);
        Ok(())
    }

    /// Calls `endpoint` (e.g. `tasks.get_by_id` or `v2.14/queues.get_next_task`) with `body` and
    /// returns the envelope's `data`. Logs in first if needed.
    pub fn call(&self, endpoint: &str, body: &Value) -> Result<Value, ApiError> {
        let path = wire::normalize_endpoint(endpoint)?;
        let bytes = serde_json::to_vec(body).map_err(|e| ApiError::Protocol {
            endpoint: endpoint.to_string(),
            reason: format!("cannot serialize the request: {e}"),
        })?;
        self.authorized(
            endpoint,
            path,
            self.settings.method,
            "application/json",
            bytes,
        )
    }

    /// Sends `events` with `events.add_batch` (POST, json-lines) and returns how many were added.
    /// It is an error (400/131, with the server's reasons) unless every event was added.
    pub fn add_events(&self, events: &[Value]) -> Result<u64, ApiError> {
        if events.is_empty() {
            // The server rejects an empty batch; there is nothing to send.
            return Ok(0);
        }
        let mut body = Vec::new();
        for event in events {
            // Compact serialization never emits a raw newline, so one event is one line.
            serde_json::to_writer(&mut body, event).map_err(|e| ApiError::Protocol {
                endpoint: ADD_BATCH.into(),
                reason: format!("cannot serialize an event: {e}"),
            })?;
            body.push(b'\n');
        }
        let data = self.authorized(
            ADD_BATCH,
            ADD_BATCH,
            HttpMethod::Post,
            "application/json-lines",
            body,
        )?;
        let added =
            data.get("added")
                .and_then(Value::as_u64)
                .ok_or_else(|| ApiError::Protocol {
                    endpoint: ADD_BATCH.into(),
                    reason: "the answer has no integer `added`".into(),
                })?;
        let expected = events.len() as u64;
        if added != expected {
            let why = data.get("errors_info").cloned().unwrap_or(Value::Null);
            return Err(ApiError::Server {
                endpoint: ADD_BATCH.into(),
                code: 400,
                subcode: 131,
                message: self.scrub(&format!(
                    "only {added} of {expected} events were added: {why}"
                )),
            });
        }
        Ok(added)
    }

    /// The server's API version from the current token's `api_version` claim (e.g. "2.31");
    /// `None` before the first login or when the token does not say.
    pub fn server_api_version(&self) -> Option<String> {
        self.lock_token()
            .as_ref()
            .and_then(|t| t.claims.api_version.clone())
    }

    /// Adopts a token obtained elsewhere (e.g. a rotated `CLEARML_AUTH_TOKEN`); the next call
    /// uses it. If the server rejects it, the client renews it as after any 401.
    pub fn set_token(&self, token: &str) {
        *self.lock_token() = Some(Token::new(token.to_string()));
    }

    fn lock_token(&self) -> MutexGuard<'_, Option<Token>> {
        // A panic elsewhere while holding the lock leaves a consistent Option: keep using it.
        self.token.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A token valid for at least the refresh threshold, logging in when needed.
    fn valid_token(&self, endpoint: &str) -> Result<String, ApiError> {
        let mut slot = self.lock_token();
        let fresh = slot.as_ref().is_some_and(|t| {
            !wire::needs_refresh(
                t.claims.exp,
                unix_now(),
                self.settings.token_refresh_threshold,
            )
        });
        if !fresh {
            *slot = Some(self.fetch_token(endpoint, slot.as_ref())?);
        }
        Ok(slot.as_ref().map(|t| t.raw.clone()).unwrap_or_default())
    }

    /// After a 401 with `stale`: log in again, unless another thread already did.
    fn renew_after_401(&self, endpoint: &str, stale: &str) -> Result<String, ApiError> {
        let mut slot = self.lock_token();
        if let Some(t) = slot.as_ref().filter(|t| t.raw != stale) {
            return Ok(t.raw.clone());
        }
        let token = self.fetch_token(endpoint, slot.as_ref())?;
        let raw = token.raw.clone();
        *slot = Some(token);
        Ok(raw)
    }

    /// Calls `auth.login`: Basic with the key pair, or Bearer with `current` in token-only mode.
    /// Called with the token lock held. `endpoint` is the call that needs the token.
    fn fetch_token(&self, endpoint: &str, current: Option<&Token>) -> Result<Token, ApiError> {
        let credentials = if self.settings.access_key.is_some() {
            Credentials::Basic
        } else {
            match current {
                Some(t) => Credentials::Bearer(&t.raw),
                None => {
                    return Err(ApiError::Config {
                        field: "access_key",
                        reason: "no credentials to log in with".into(),
                    })
                }
            }
        };
        let path = match self.settings.token_expiration_sec {
            Some(sec) => format!("{LOGIN}?expiration_sec={sec}"),
            None => LOGIN.to_string(),
        };
        let auth_failed = |code, subcode, reason: String| ApiError::Auth {
            endpoint: endpoint.to_string(),
            code,
            subcode,
            reason,
        };
        let data = match self.send(
            LOGIN,
            &path,
            self.settings.method,
            None,
            Vec::new(),
            &credentials,
        ) {
            Ok(data) => data,
            Err(ApiError::Server {
                code: code @ (401 | 403),
                subcode,
                message,
                ..
            }) => {
                let mode = match credentials {
                    Credentials::Basic => "the access key and secret",
                    Credentials::Bearer(_) => "the token",
                };
                return Err(auth_failed(
                    code,
                    subcode,
                    format!("{LOGIN} rejected {mode}: {message}"),
                ));
            }
            Err(other) => return Err(other),
        };
        match data.get("token").and_then(Value::as_str) {
            Some(raw) if !raw.is_empty() => Ok(Token::new(raw.to_string())),
            _ => Err(ApiError::Protocol {
                endpoint: LOGIN.into(),
                reason: "the answer has no token".into(),
            }),
        }
    }

    /// One authorized call: with a valid token, renewed and retried once on 401.
    fn authorized(
        &self,
        endpoint: &str,
        path: &str,
        method: HttpMethod,
        content_type: &'static str,
        body: Vec<u8>,
    ) -> Result<Value, ApiError> {
        let token = self.valid_token(endpoint)?;
        let bearer = Credentials::Bearer(&token);
        match self.send(
            endpoint,
            path,
            method,
            Some(content_type),
            body.clone(),
            &bearer,
        ) {
            Err(e) if e.codes().is_some_and(|(code, _)| code == 401) => {
                let token = self.renew_after_401(endpoint, &token)?;
                let bearer = Credentials::Bearer(&token);
                self.send(endpoint, path, method, Some(content_type), body, &bearer)
            }
            other => other,
        }
    }

    /// Sends one request, retrying transport failures and 429/502/503/504 with backoff, and
    /// parses the envelope.
    fn send(
        &self,
        endpoint: &str,
        path: &str,
        method: HttpMethod,
        content_type: Option<&'static str>,
        body: Vec<u8>,
        credentials: &Credentials<'_>,
    ) -> Result<Value, ApiError> {
        let url = format!("{}/{path}", self.base);
        let attempts = self.settings.max_attempts.max(1);
        let mut retry = 0u32;
        loop {
            let last = retry + 1 >= attempts;
            let mut req: RequestBuilder = self.http.request(method.to_reqwest(), &url);
            req = match credentials {
                Credentials::Basic => req.basic_auth(
                    self.settings.access_key.as_deref().unwrap_or(""),
                    self.settings.secret_key.as_deref(),
                ),
                Credentials::Bearer(token) => req.bearer_auth(token),
            };
            if let Some(ct) = content_type {
                req = req.header(CONTENT_TYPE, ct).body(body.clone());
            }
            let retry_after = match req.send() {
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    if error::is_retryable_status(status) && !last {
                        resp.headers()
                            .get(RETRY_AFTER)
                            .and_then(|v| v.to_str().ok())
                            .and_then(|v| v.trim().parse::<u64>().ok())
                            .map(Duration::from_secs)
                    } else {
                        match resp.bytes() {
                            Ok(bytes) => {
                                return wire::parse_envelope(endpoint, status, &bytes)
                                    .map_err(|e| self.scrub_error(e))
                            }
                            Err(e) if last => return Err(self.transport(endpoint, &e, retry + 1)),
                            Err(_) => None,
                        }
                    }
                }
                Err(e) if last => return Err(self.transport(endpoint, &e, retry + 1)),
                Err(_) => None,
            };
            let backoff = wire::backoff_delay(
                self.settings.retry_base,
                self.settings.retry_max_delay,
                retry,
            );
            // A server's Retry-After may lengthen the wait, but never beyond the cap.
            let delay = match retry_after {
                Some(after) => backoff.max(after.min(self.settings.retry_max_delay)),
                None => backoff,
            };
            std::thread::sleep(delay);
            retry += 1;
        }
    }

    fn transport(&self, endpoint: &str, e: &reqwest::Error, attempts: u32) -> ApiError {
        ApiError::Transport {
            endpoint: endpoint.to_string(),
            reason: self.scrub(&format!(
                "{} (after {attempts} attempt{})",
                error_chain(e),
                if attempts == 1 { "" } else { "s" }
            )),
        }
    }

    /// Removes secrets from text that came from outside (server messages, transport errors).
    fn scrub(&self, text: &str) -> String {
        let mut out = crate::redact::redact_urls(&wire::mask_jwts(text));
        for secret in &self.secrets {
            if out.contains(secret.as_str()) {
                out = out.replace(secret.as_str(), crate::redact::MASK);
            }
        }
        out
    }

    fn scrub_error(&self, e: ApiError) -> ApiError {
        match e {
            ApiError::Server {
                endpoint,
                code,
                subcode,
                message,
            } => ApiError::Server {
                endpoint,
                code,
                subcode,
                message: self.scrub(&message),
            },
            ApiError::Protocol { endpoint, reason } => ApiError::Protocol {
                endpoint,
                reason: self.scrub(&reason),
            },
            other => other,
        }
    }
}

/// An error and its sources, joined: reqwest's top-level message alone hides the cause
/// ("connection refused", "timed out").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<ApiClient>();
    }

    #[test]
    fn scrub_removes_secrets_and_basic_header() {
        let client = ApiClient::new(ApiSettings {
            access_key: Some("KEY".into()),
            secret_key: Some("very-secret".into()),
            ..ApiSettings::default()
        })
        .unwrap();
        let basic = STANDARD.encode("KEY:very-secret");
        let text = format!("bad KEY very-secret Basic {basic} Bearer eyJa.eyJb.c");
        let out = client.scrub(&text);
        assert!(!out.contains("very-secret") && !out.contains(&basic) && !out.contains("eyJa"));
        assert!(out.contains("KEY"), "{out}");
        let dbg = format!("{client:?}");
        assert!(!dbg.contains("very-secret"), "{dbg}");
    }

    #[test]
    fn invalid_endpoint_is_a_config_error_without_network() {
        let client = ApiClient::new(ApiSettings {
            token: Some("t".into()),
            ..ApiSettings::default()
        })
        .unwrap();
        let err = client.call("not an endpoint", &Value::Null).unwrap_err();
        assert!(matches!(
            err,
            ApiError::Config {
                field: "endpoint",
                ..
            }
        ));
    }
}
