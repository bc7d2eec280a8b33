//! Pure parts of the protocol, kept apart so they can be tested without a server: JWT claim
//! decoding, the response envelope, the backoff schedule, endpoint names and secret scrubbing.

use super::error::ApiError;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{Map, Value};
use std::time::Duration;

/// What the client reads from a token (decoded without verifying, as the Python clients do).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct TokenClaims {
    /// Expiry in unix seconds; `None` means the token never expires (no or unreadable `exp`).
    pub exp: Option<u64>,
    /// The server's API version, e.g. "2.31".
    pub api_version: Option<String>,
}

/// Decodes the payload of a JWT. A token that is not a readable JWT gives empty claims: the
/// server is the judge of its validity, the client only needs `exp` to refresh in time.
pub(crate) fn decode_claims(token: &str) -> TokenClaims {
    let Some(payload) = token.split('.').nth(1) else {
        return TokenClaims::default();
    };
    // Some issuers pad base64url; the no-pad engine rejects '='.
    let claims: Option<Map<String, Value>> = URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok());
    let Some(claims) = claims else {
        return TokenClaims::default();
    };
    let exp = claims.get("exp").and_then(|v| {
        v.as_u64()
            .or_else(|| v.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
    });
    let api_version = match claims.get("api_version") {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    };
    TokenClaims { exp, api_version }
}

/// True when a token expiring at `exp` must be refreshed at `now` (both unix seconds).
pub(crate) fn needs_refresh(exp: Option<u64>, now: u64, threshold: Duration) -> bool {
    exp.is_some_and(|exp| exp.saturating_sub(now) <= threshold.as_secs())
}

/// The delay before retry number `retry` (0-based): `base * 2^retry`, capped at `cap`.
pub(crate) fn backoff_delay(base: Duration, cap: Duration, retry: u32) -> Duration {
    let factor = 1u32.checked_shl(retry.min(31)).unwrap_or(u32::MAX);
    base.checked_mul(factor).unwrap_or(cap).min(cap)
}

/// Checks an endpoint name: `service.action`, optionally `vX.Y/service.action`, with an optional
/// leading or trailing `/`. Returns it without the slashes, ready to append to the host.
pub(crate) fn normalize_endpoint(endpoint: &str) -> Result<&str, ApiError> {
    let bad = |why: &str| ApiError::Config {
        field: "endpoint",
        reason: format!("{endpoint:?} {why}"),
    };
    let path = endpoint.strip_prefix('/').unwrap_or(endpoint);
    let path = path.strip_suffix('/').unwrap_or(path);
    let name = match path.split_once('/') {
        Some((version, name)) => {
            let digits = version
                .strip_prefix('v')
                .ok_or_else(|| bad("has a version prefix that is not vX.Y"))?;
            let ok = !digits.is_empty()
                && digits.split('.').count() <= 2
                && digits
                    .split('.')
                    .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
            if !ok {
                return Err(bad("has a version prefix that is not vX.Y"));
            }
            name
        }
        None => path,
    };
    let ident = |s: &str| {
        let mut bytes = s.bytes();
        bytes
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
            && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
    };
    match name.split_once('.') {
        Some((service, action)) if ident(service) && ident(action) => Ok(path),
        _ => Err(bad("is not <service>.<action>")),
    }
}

/// Reads a response: the envelope's `data` on success, else the matching error.
///
/// The HTTP status must equal `meta.result_code`. A non-2xx answer without a usable envelope
/// (a proxy's HTML error page) becomes a [`ApiError::Server`] with the HTTP status, so that it
/// keeps its retryability; a 2xx answer without one is a [`ApiError::Protocol`] error.
pub(crate) fn parse_envelope(endpoint: &str, status: u16, body: &[u8]) -> Result<Value, ApiError> {
    let success = (200..300).contains(&status);
    let protocol = |reason: String| ApiError::Protocol {
        endpoint: endpoint.to_string(),
        reason,
    };
    let no_envelope = |why: &str| {
        if success {
            protocol(format!("HTTP {status}: {why}"))
        } else {
            ApiError::Server {
                endpoint: endpoint.to_string(),
                code: status,
                subcode: 0,
                message: format!("HTTP {status} without a ClearML envelope ({why})"),
            }
        }
    };
    let Ok(Value::Object(mut doc)) = serde_json::from_slice::<Value>(body) else {
        return Err(no_envelope("the body is not a JSON object"));
    };
    let Some(Value::Object(meta)) = doc.get("meta") else {
        return Err(no_envelope("missing meta section"));
    };
    let Some(code) = meta.get("result_code").and_then(Value::as_u64) else {
        return Err(protocol("meta.result_code is not an integer".into()));
    };
    if code != u64::from(status) {
        return Err(protocol(format!(
            "HTTP status {status} disagrees with meta.result_code {code}"
        )));
    }
    if success {
        return Ok(match doc.remove("data") {
            Some(Value::Null) | None => Value::Object(Map::new()),
            Some(data) => data,
        });
    }
    let subcode = meta
        .get("result_subcode")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    let message = meta
        .get("result_msg")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    Err(ApiError::Server {
        endpoint: endpoint.to_string(),
        code: status,
        subcode: u32::try_from(subcode).unwrap_or(u32::MAX),
        message,
    })
}

/// Masks every JWT-shaped substring (`eyJ...`): a token must not reach an error message even if
/// a server or proxy echoes it back.
pub(crate) fn mask_jwts(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find("eyJ") {
        out.push_str(&rest[..pos]);
        let tail = &rest[pos..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '=')))
            .unwrap_or(tail.len());
        // Only a header.payload[.signature] shape is a token; "eyJ" alone is left alone.
        if tail[..end].contains('.') {
            out.push_str(crate::redact::MASK);
        } else {
            out.push_str(&tail[..end]);
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::URL_SAFE;
    use serde_json::json;

    fn jwt(claims: &Value) -> String {
        format!(
            "{}.{}.sig",
            URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        )
    }

    #[test]
    fn decodes_exp_and_api_version() {
        let t = jwt(&json!({"exp": 1_700_000_000u64, "api_version": "2.31", "identity": {}}));
        assert_eq!(
            decode_claims(&t),
            TokenClaims {
                exp: Some(1_700_000_000),
                api_version: Some("2.31".into())
            }
        );
        // Float exp and numeric version, as some issuers write them.
        let t = jwt(&json!({"exp": 12.5, "api_version": 2.5}));
        assert_eq!(decode_claims(&t).exp, Some(12));
        assert_eq!(decode_claims(&t).api_version.as_deref(), Some("2.5"));
    }

    #[test]
    fn decodes_padded_payloads() {
        // A payload whose length needs padding, encoded with '=' padding.
        let claims = json!({"exp": 5, "x": "abc"});
        let padded = format!("h.{}.s", URL_SAFE.encode(claims.to_string()));
        assert!(padded.contains('='), "test needs a padded payload");
        assert_eq!(decode_claims(&padded).exp, Some(5));
    }

    #[test]
    fn unreadable_tokens_never_expire() {
        for t in [
            "",
            "opaque",
            "a.!!!.c",
            &jwt(&json!({"no": "exp"})),
            "a.W10.c",
        ] {
            assert_eq!(decode_claims(t).exp, None, "{t}");
        }
        assert_eq!(decode_claims(&jwt(&json!({"exp": -3}))).exp, None);
    }

    #[test]
    fn refresh_threshold() {
        let t = Duration::from_secs(60);
        assert!(!needs_refresh(None, 1000, t));
        assert!(!needs_refresh(Some(1061), 1000, t));
        assert!(needs_refresh(Some(1060), 1000, t));
        assert!(needs_refresh(Some(10), 1000, t), "already expired");
        assert!(needs_refresh(Some(1000), 1000, Duration::ZERO));
        assert!(!needs_refresh(Some(1001), 1000, Duration::ZERO));
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let base = Duration::from_millis(500);
        let cap = Duration::from_secs(10);
        let got: Vec<u128> = (0..8)
            .map(|i| backoff_delay(base, cap, i).as_millis())
            .collect();
        assert_eq!(got, [500, 1000, 2000, 4000, 8000, 10000, 10000, 10000]);
        assert_eq!(backoff_delay(base, cap, u32::MAX), cap);
        assert_eq!(
            backoff_delay(Duration::from_secs(u64::MAX / 2), cap, 3),
            cap
        );
        assert_eq!(backoff_delay(Duration::ZERO, cap, 5), Duration::ZERO);
    }

    #[test]
    fn endpoint_names() {
        for (given, want) in [
            ("tasks.get_all", "tasks.get_all"),
            ("/tasks.get_all", "tasks.get_all"),
            ("v2.14/queues.get_next_task", "v2.14/queues.get_next_task"),
            ("/v2/auth.login/", "v2/auth.login"),
            ("_x.y1", "_x.y1"),
        ] {
            assert_eq!(normalize_endpoint(given).unwrap(), want);
        }
        for bad in [
            "",
            "tasks",
            "tasks.",
            ".get",
            "tasks.get.all",
            "x/tasks.get",
            "v/tasks.get",
            "v2.1.3/tasks.get",
            "tasks.get?x=1",
            "tasks.get all",
            "1tasks.get",
            "v2.1/a/b.c",
        ] {
            let err = normalize_endpoint(bad).unwrap_err();
            assert!(
                matches!(
                    err,
                    ApiError::Config {
                        field: "endpoint",
                        ..
                    }
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn envelope_success_returns_data() {
        let body = json!({"meta": {"result_code": 200, "result_subcode": 0, "result_msg": "OK",
            "endpoint": {"name": "queues.get_default"}}, "data": {"id": "q"}});
        let data = parse_envelope("queues.get_default", 200, body.to_string().as_bytes()).unwrap();
        assert_eq!(data, json!({"id": "q"}));
        let no_data = json!({"meta": {"result_code": 200}});
        assert_eq!(
            parse_envelope("a.b", 200, no_data.to_string().as_bytes()).unwrap(),
            json!({})
        );
    }

    #[test]
    fn envelope_error_maps_codes() {
        let body = json!({"meta": {"result_code": 400, "result_subcode": 701,
            "result_msg": "Invalid queue id", "endpoint": {"name": "queues.get_by_id"}}, "data": {}});
        let err = parse_envelope("queues.get_by_id", 400, body.to_string().as_bytes()).unwrap_err();
        assert_eq!(
            err,
            ApiError::Server {
                endpoint: "queues.get_by_id".into(),
                code: 400,
                subcode: 701,
                message: "Invalid queue id".into()
            }
        );
    }

    #[test]
    fn envelope_protocol_errors() {
        let missing_meta = json!({"data": {}}).to_string();
        let err = parse_envelope("a.b", 200, missing_meta.as_bytes()).unwrap_err();
        assert!(
            matches!(&err, ApiError::Protocol { endpoint, reason } if endpoint == "a.b" && reason.contains("missing meta")),
            "{err:?}"
        );
        assert!(matches!(
            parse_envelope("a.b", 200, b"<html>").unwrap_err(),
            ApiError::Protocol { .. }
        ));
        let mismatch = json!({"meta": {"result_code": 400}}).to_string();
        assert!(matches!(
            parse_envelope("a.b", 200, mismatch.as_bytes()).unwrap_err(),
            ApiError::Protocol { .. }
        ));
        let no_code = json!({"meta": {"result_code": "200"}}).to_string();
        assert!(matches!(
            parse_envelope("a.b", 200, no_code.as_bytes()).unwrap_err(),
            ApiError::Protocol { .. }
        ));
    }

    #[test]
    fn non_json_error_keeps_the_http_status() {
        let err = parse_envelope("a.b", 502, b"<html>Bad Gateway</html>").unwrap_err();
        assert!(err.is_code(502, 0), "{err:?}");
        assert!(err.is_retryable());
    }

    #[test]
    fn jwts_are_masked() {
        let t = jwt(&json!({"exp": 1}));
        let text = format!("Invalid token {t}, again:{t}. eyJ alone stays");
        let masked = mask_jwts(&text);
        assert!(!masked.contains(&t), "{masked}");
        assert_eq!(masked.matches(crate::redact::MASK).count(), 2);
        assert!(masked.ends_with("eyJ alone stays"));
        assert_eq!(mask_jwts("no tokens here"), "no tokens here");
    }
}
