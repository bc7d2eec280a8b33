//! The client's one error type. Every variant names the endpoint (or settings field) at fault,
//! and no variant ever carries a secret: messages that come from outside (server answers,
//! transport errors) are scrubbed by the client before they are stored here.

/// What went wrong with an API call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// The server could not be reached or the answer could not be read (connection refused,
    /// timeout, reset), after all retries.
    #[error("{endpoint}: cannot reach the ClearML server: {reason}")]
    Transport { endpoint: String, reason: String },
    /// The server answered with an error envelope (or a non-2xx status without one).
    #[error("{endpoint}: server answered {code}/{subcode}: {message}")]
    Server {
        endpoint: String,
        code: u16,
        subcode: u32,
        message: String,
    },
    /// The answer does not follow the ClearML protocol (not JSON, no `meta`, inconsistent codes).
    #[error("{endpoint}: invalid answer from the ClearML server: {reason}")]
    Protocol { endpoint: String, reason: String },
    /// `auth.login` refused the credentials (or the token, in token-only mode); `endpoint` is the
    /// call that needed the login. `code`/`subcode` are the server's (e.g. 401/30).
    #[error("{endpoint}: authentication failed ({code}/{subcode}): {reason}")]
    Auth {
        endpoint: String,
        code: u16,
        subcode: u32,
        reason: String,
    },
    /// The settings (or the endpoint name passed by the caller) are unusable.
    #[error("invalid API setting `{field}`: {reason}")]
    Config { field: &'static str, reason: String },
}

impl ApiError {
    /// True when the server answered with exactly this `(result_code, result_subcode)`.
    pub fn is_code(&self, code: u16, subcode: u32) -> bool {
        self.codes() == Some((code, subcode))
    }

    /// The server's `(result_code, result_subcode)`, when the server answered.
    pub fn codes(&self) -> Option<(u16, u32)> {
        match self {
            ApiError::Server { code, subcode, .. } | ApiError::Auth { code, subcode, .. } => {
                Some((*code, *subcode))
            }
            _ => None,
        }
    }

    /// True for failures that may pass if the call is repeated later: the server was
    /// unreachable or answered "overloaded / gateway" statuses. Callers (the daemon loop) use it
    /// to decide between waiting and giving up.
    pub fn is_retryable(&self) -> bool {
        match self {
            ApiError::Transport { .. } => true,
            ApiError::Server { code, .. } => is_retryable_status(*code),
            _ => false,
        }
    }
}

/// HTTP statuses that the client retries with backoff: gateway errors, rate limiting and
/// maintenance (503 too, but always bounded).
pub(crate) fn is_retryable_status(code: u16) -> bool {
    matches!(code, 429 | 502 | 503 | 504)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_retryability() {
        let server = |code, subcode| ApiError::Server {
            endpoint: "queues.get_by_id".into(),
            code,
            subcode,
            message: "m".into(),
        };
        assert!(server(400, 701).is_code(400, 701));
        assert!(!server(400, 701).is_code(400, 0));
        assert!(!server(400, 701).is_retryable());
        assert!(server(502, 0).is_retryable());
        assert!(server(503, 0).is_retryable());
        let auth = ApiError::Auth {
            endpoint: "tasks.get_all".into(),
            code: 401,
            subcode: 30,
            reason: "Invalid token".into(),
        };
        assert!(auth.is_code(401, 30));
        assert!(!auth.is_retryable());
        let transport = ApiError::Transport {
            endpoint: "x.y".into(),
            reason: "refused".into(),
        };
        assert!(transport.is_retryable());
        assert_eq!(transport.codes(), None);
        assert!(transport.to_string().starts_with("x.y: "));
    }
}
