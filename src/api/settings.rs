//! How to reach and authenticate with the server. Built by the configuration layer from
//! clearml.conf / environment (`api.*`, `CLEARML_API_*`); this module does not read either.

use super::error::ApiError;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// The HTTP method of ordinary calls (`api.http.default_method`,
/// `CLEARML_API_DEFAULT_REQ_METHOD`). The server routes every method to the same handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HttpMethod {
    #[default]
    Get,
    Post,
    Put,
}

impl HttpMethod {
    pub(crate) fn to_reqwest(self) -> reqwest::Method {
        match self {
            HttpMethod::Get => reqwest::Method::GET,
            HttpMethod::Post => reqwest::Method::POST,
            HttpMethod::Put => reqwest::Method::PUT,
        }
    }
}

impl FromStr for HttpMethod {
    type Err = ApiError;

    /// Case-insensitive `get`, `post` or `put`, as the Python clients accept.
    fn from_str(s: &str) -> Result<Self, ApiError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "get" => Ok(HttpMethod::Get),
            "post" => Ok(HttpMethod::Post),
            "put" => Ok(HttpMethod::Put),
            _ => Err(ApiError::Config {
                field: "method",
                reason: format!("{s:?} is not GET, POST or PUT"),
            }),
        }
    }
}

/// Connection, credential and retry settings of an [`super::ApiClient`].
///
/// Credentials: `access_key` + `secret_key` (logs in with HTTP Basic), or only `token`
/// (token-only mode: refreshed by `auth.login` with the token itself), or both (the token is
/// used first, the key pair refreshes it). `Debug` masks the secret key and the token.
#[derive(Clone, PartialEq)]
pub struct ApiSettings {
    /// Base URL, e.g. `http://127.0.0.1:8008` (a trailing `/` is fine).
    pub api_host: String,
    pub access_key: Option<String>,
    pub secret_key: Option<String>,
    /// An existing token (`CLEARML_AUTH_TOKEN`).
    pub token: Option<String>,
    /// Sent as `X-ClearML-Worker`; the server uses it as the default `worker` of events.
    pub worker_id: Option<String>,
    /// Method of ordinary calls; `events.add_batch` is always POST.
    pub method: HttpMethod,
    /// Whole-request timeout (connect, send, read).
    pub timeout: Duration,
    /// HTTP sends per call at most, first try included (>= 1), for connection errors,
    /// timeouts and 429/502/503/504 answers.
    pub max_attempts: u32,
    /// Delay before the first retry; doubles at each further retry.
    pub retry_base: Duration,
    /// Upper bound of one retry delay (also of a server's `Retry-After`).
    pub retry_max_delay: Duration,
    /// Refresh the token when it expires within this long.
    pub token_refresh_threshold: Duration,
    /// Ask `auth.login` for tokens valid this long (`?expiration_sec=N`); `None`: server default.
    pub token_expiration_sec: Option<u64>,
    /// Verify the server's TLS certificate (`CLEARML_API_HOST_VERIFY_CERT`).
    pub verify_tls: bool,
    /// PEM bundle of extra trusted CAs (see [`TlsOptions::resolve`]).
    pub ca_bundle: Option<std::path::PathBuf>,
}

/// TLS verification as the Python clients read it (`backend_api/utils.py`:
/// `session.verify = CLEARML_API_HOST_VERIFY_CERT or api.verify_certificate`, which requests
/// takes as a bool or a CA bundle path, and then `REQUESTS_CA_BUNDLE` / `CURL_CA_BUNDLE`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsOptions {
    pub verify: bool,
    pub ca_bundle: Option<std::path::PathBuf>,
}

impl TlsOptions {
    /// From the config value `api.verify_certificate` (a bool, "true"/"false", or a path to
    /// a CA bundle) and the environment (`CLEARML_API_HOST_VERIFY_CERT` /
    /// `TRAINS_API_HOST_VERIFY_CERT` win for on/off; without a bundle from the config,
    /// `REQUESTS_CA_BUNDLE`, then `CURL_CA_BUNDLE`, then `SSL_CERT_FILE` name one). The caller
    /// reads both; this module does not.
    pub fn resolve(
        verify_certificate: Option<&serde_json::Value>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> TlsOptions {
        use serde_json::Value;
        let flag = |s: &str| match s.trim().to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" | "on" => Some(true),
            "0" | "false" | "no" | "off" => Some(false),
            _ => None,
        };
        let (mut verify, mut bundle) = match verify_certificate {
            Some(Value::Bool(b)) => (*b, None),
            Some(Value::String(s)) => match flag(s) {
                Some(b) => (b, None),
                None if !s.trim().is_empty() => (true, Some(crate::config::expand_home(s.trim()))),
                None => (true, None),
            },
            _ => (true, None),
        };
        if let Some(b) = env("CLEARML_API_HOST_VERIFY_CERT")
            .or_else(|| env("TRAINS_API_HOST_VERIFY_CERT"))
            .and_then(|v| flag(&v))
        {
            verify = b;
        }
        if verify && bundle.is_none() {
            bundle = ["REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE"]
                .iter()
                .find_map(|k| env(k).filter(|v| !v.trim().is_empty()))
                .map(std::path::PathBuf::from);
        }
        TlsOptions {
            verify,
            ca_bundle: if verify { bundle } else { None },
        }
    }
}

impl Default for ApiSettings {
    fn default() -> Self {
        ApiSettings {
            api_host: "http://127.0.0.1:8008".into(),
            access_key: None,
            secret_key: None,
            token: None,
            worker_id: None,
            method: HttpMethod::Get,
            timeout: Duration::from_secs(60),
            max_attempts: 5,
            retry_base: Duration::from_millis(500),
            retry_max_delay: Duration::from_secs(10),
            token_refresh_threshold: Duration::from_secs(60),
            token_expiration_sec: None,
            verify_tls: true,
            ca_bundle: None,
        }
    }
}

impl fmt::Debug for ApiSettings {
    // By hand: the secret key and the token must never reach a log or a panic message.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let masked = |v: &Option<String>| v.as_ref().map(|_| crate::redact::MASK);
        f.debug_struct("ApiSettings")
            .field("api_host", &crate::redact::redact_urls(&self.api_host))
            .field("access_key", &self.access_key)
            .field("secret_key", &masked(&self.secret_key))
            .field("token", &masked(&self.token))
            .field("worker_id", &self.worker_id)
            .field("method", &self.method)
            .field("timeout", &self.timeout)
            .field("max_attempts", &self.max_attempts)
            .field("retry_base", &self.retry_base)
            .field("retry_max_delay", &self.retry_max_delay)
            .field("token_refresh_threshold", &self.token_refresh_threshold)
            .field("token_expiration_sec", &self.token_expiration_sec)
            .field("verify_tls", &self.verify_tls)
            .field("ca_bundle", &self.ca_bundle)
            .finish()
    }
}

impl ApiSettings {
    /// Rejects settings the client cannot work with, naming the field.
    pub fn validate(&self) -> Result<(), ApiError> {
        let host = crate::redact::redact_urls(&self.api_host);
        let url = reqwest::Url::parse(&self.api_host).map_err(|e| ApiError::Config {
            field: "api_host",
            reason: format!("{host:?} is not a URL: {e}"),
        })?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(ApiError::Config {
                field: "api_host",
                reason: format!("{host:?} is not an http(s) URL"),
            });
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(ApiError::Config {
                field: "api_host",
                reason: format!("{host:?} must not have a query or fragment"),
            });
        }
        let blank = |v: &Option<String>| v.as_deref().is_some_and(|s| s.trim().is_empty());
        for (field, value) in [
            ("access_key", &self.access_key),
            ("secret_key", &self.secret_key),
            ("token", &self.token),
        ] {
            if blank(value) {
                return Err(ApiError::Config {
                    field,
                    reason: "is set but empty".into(),
                });
            }
        }
        match (&self.access_key, &self.secret_key) {
            (Some(_), None) => {
                return Err(ApiError::Config {
                    field: "secret_key",
                    reason: "access_key is set without secret_key".into(),
                })
            }
            (None, Some(_)) => {
                return Err(ApiError::Config {
                    field: "access_key",
                    reason: "secret_key is set without access_key".into(),
                })
            }
            (None, None) if self.token.is_none() => {
                return Err(ApiError::Config {
                    field: "access_key",
                    reason: "no credentials: set access_key and secret_key, or token".into(),
                })
            }
            _ => {}
        }
        if self.timeout.is_zero() {
            return Err(ApiError::Config {
                field: "timeout",
                reason: "must be positive".into(),
            });
        }
        if self.max_attempts == 0 {
            return Err(ApiError::Config {
                field: "max_attempts",
                reason: "must be at least 1".into(),
            });
        }
        if self.token_expiration_sec == Some(0) {
            return Err(ApiError::Config {
                field: "token_expiration_sec",
                reason: "must be positive".into(),
            });
        }
        if let Some(w) = &self.worker_id {
            if reqwest::header::HeaderValue::from_str(w).is_err() {
                return Err(ApiError::Config {
                    field: "worker_id",
                    reason: format!("{w:?} cannot be sent in an HTTP header"),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_keys() -> ApiSettings {
        ApiSettings {
            access_key: Some("AKEY".into()),
            secret_key: Some("s3cr3t-value".into()),
            token: Some("tok-en.value.x".into()),
            ..ApiSettings::default()
        }
    }

    #[test]
    fn debug_masks_secrets() {
        let s = ApiSettings {
            api_host: "https://user:pw-secret@api.example.com".into(),
            ..with_keys()
        };
        let dbg = format!("{s:?} {s:#?}");
        for secret in ["s3cr3t-value", "tok-en.value.x", "pw-secret"] {
            assert!(!dbg.contains(secret), "{secret} leaked: {dbg}");
        }
        assert!(dbg.contains("AKEY"));
    }

    #[test]
    fn validation_names_the_field() {
        assert!(with_keys().validate().is_ok());
        let field = |s: ApiSettings| match s.validate() {
            Err(ApiError::Config { field, .. }) => field,
            other => panic!("expected a config error, got {other:?}"),
        };
        let d = with_keys;
        assert_eq!(
            field(ApiSettings {
                api_host: "ftp://x".into(),
                ..d()
            }),
            "api_host"
        );
        assert_eq!(
            field(ApiSettings {
                api_host: "not a url".into(),
                ..d()
            }),
            "api_host"
        );
        assert_eq!(
            field(ApiSettings {
                secret_key: None,
                ..d()
            }),
            "secret_key"
        );
        assert_eq!(
            field(ApiSettings {
                access_key: None,
                ..d()
            }),
            "access_key"
        );
        assert_eq!(field(ApiSettings::default()), "access_key");
        assert_eq!(
            field(ApiSettings {
                max_attempts: 0,
                ..d()
            }),
            "max_attempts"
        );
        assert_eq!(
            field(ApiSettings {
                timeout: Duration::ZERO,
                ..d()
            }),
            "timeout"
        );
        assert_eq!(
            field(ApiSettings {
                token: Some(" ".into()),
                ..d()
            }),
            "token"
        );
        assert_eq!(
            field(ApiSettings {
                worker_id: Some("a\nb".into()),
                ..d()
            }),
            "worker_id"
        );
        // Token-only mode is valid.
        let token_only = ApiSettings {
            access_key: None,
            secret_key: None,
            ..d()
        };
        assert!(token_only.validate().is_ok());
    }

    #[test]
    fn tls_options_as_the_python_clients_read_them() {
        use serde_json::json;
        let none = |_: &str| None;
        let r = TlsOptions::resolve;
        assert_eq!(
            r(None, &none),
            TlsOptions {
                verify: true,
                ca_bundle: None
            }
        );
        assert!(!r(Some(&json!(false)), &none).verify);
        assert!(!r(Some(&json!("False")), &none).verify);
        assert_eq!(
            r(Some(&json!("/etc/ca.pem")), &none),
            TlsOptions {
                verify: true,
                ca_bundle: Some("/etc/ca.pem".into())
            }
        );
        let env = |k: &str| match k {
            "CLEARML_API_HOST_VERIFY_CERT" => Some("0".to_string()),
            _ => None,
        };
        assert_eq!(
            r(Some(&json!("/etc/ca.pem")), &env),
            TlsOptions {
                verify: false,
                ca_bundle: None
            }
        );
        let env = |k: &str| match k {
            "SSL_CERT_FILE" => Some("/ssl.pem".to_string()),
            "REQUESTS_CA_BUNDLE" => Some("/req.pem".to_string()),
            _ => None,
        };
        assert_eq!(r(None, &env).ca_bundle, Some("/req.pem".into()));
        assert_eq!(
            r(Some(&json!("/cfg.pem")), &env).ca_bundle,
            Some("/cfg.pem".into())
        );
    }

    #[test]
    fn method_parsing() {
        assert_eq!("post".parse::<HttpMethod>().unwrap(), HttpMethod::Post);
        assert_eq!(" PUT ".parse::<HttpMethod>().unwrap(), HttpMethod::Put);
        assert_eq!("Get".parse::<HttpMethod>().unwrap(), HttpMethod::Get);
        assert!("delete".parse::<HttpMethod>().is_err());
    }
}
