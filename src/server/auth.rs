//! Credentials and tokens: HTTP Basic with the generated access key and secret, and HS256 JWTs
//! carrying the claims the clients decode without verifying (`api_version`, `server_version`,
//! `feature_set: "basic"`, `identity`, `exp`). The signature is checked here with a per-server
//! secret, so a forged or expired token gets 401/30.

use super::envelope::ApiError;
use axum::http::HeaderMap;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::Sha256;

/// Reads `n` random bytes from the kernel.
pub fn random_bytes(n: usize) -> Vec<u8> {
    use std::io::Read;
    let mut buf = vec![0u8; n];
    let mut f = std::fs::File::open("/dev/urandom").expect("/dev/urandom is readable");
    f.read_exact(&mut buf).expect("/dev/urandom yields bytes");
    buf
}

/// A 32-hex id (uuid4 without dashes), the id format of every ClearML entity.
pub fn new_id() -> String {
    let mut b = random_bytes(16);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn random_from(alphabet: &[u8], len: usize) -> String {
    random_bytes(len)
        .iter()
        .map(|b| alphabet[*b as usize % alphabet.len()] as char)
        .collect()
}

/// What the server persists about its one company and user.
#[derive(Clone, Serialize, Deserialize)]
pub struct ServerIdentity {
    pub access_key: String,
    pub secret_key: String,
    pub token_secret: String,
    pub user_id: String,
    pub user_name: String,
    pub company_id: String,
    pub company_name: String,
    pub server_uid: String,
}

impl std::fmt::Debug for ServerIdentity {
    // Never print the secrets, even in a debug dump.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerIdentity")
            .field("access_key", &self.access_key)
            .field("user_id", &self.user_id)
            .field("company_id", &self.company_id)
            .finish_non_exhaustive()
    }
}

impl ServerIdentity {
    /// Fresh credentials: never a fixed default.
    pub fn generate() -> Self {
        const UPPER: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
        const SECRET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_";
        ServerIdentity {
            access_key: random_from(UPPER, 30),
            secret_key: random_from(SECRET, 50),
            token_secret: URL_SAFE_NO_PAD.encode(random_bytes(32)),
            user_id: new_id(),
            user_name: "Default User".into(),
            company_id: "d1bd92a3b039400cbafc60a7a5b1e52b".into(),
            company_name: "clearml".into(),
            server_uid: new_id(),
        }
    }
}

/// Who is calling, from a valid Basic header or token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Identity {
    pub user: String,
    pub company: String,
    pub role: String,
    pub user_name: String,
    pub company_name: String,
}

impl Identity {
    pub fn of(server: &ServerIdentity) -> Self {
        Identity {
            user: server.user_id.clone(),
            company: server.company_id.clone(),
            role: "user".into(),
            user_name: server.user_name.clone(),
            company_name: server.company_name.clone(),
        }
    }
}

type HmacSha256 = Hmac<Sha256>;

fn sign(secret: &str, signing_input: &str) -> Vec<u8> {
    let mut mac = HmacSha256::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(signing_input.as_bytes());
    mac.finalize().into_bytes().to_vec()
}

/// Issues a token for `identity`, valid for `expiration_s` seconds from `now_s`.
pub fn issue_token(
    server: &ServerIdentity,
    identity: &Identity,
    now_s: u64,
    expiration_s: u64,
) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let claims = json!({
        "identity": identity,
        "iat": now_s,
        "exp": now_s + expiration_s,
        "session_id": new_id(),
        "env": "<unknown>",
        "api_version": super::API_VERSION,
        "server_version": super::SERVER_VERSION,
        "server_build": super::SERVER_BUILD,
        "feature_set": "basic",
    });
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    let input = format!("{header}.{payload}");
    let signature = URL_SAFE_NO_PAD.encode(sign(&server.token_secret, &input));
    format!("{input}.{signature}")
}

fn invalid_token(why: &str) -> ApiError {
    ApiError::new(401, 30, format!("Invalid token: {why}"))
}

/// Checks a token's signature and expiry and returns its identity.
pub fn verify_token(
    server: &ServerIdentity,
    token: &str,
    now_s: u64,
) -> Result<Identity, ApiError> {
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(invalid_token("malformed"));
    };
    let given = URL_SAFE_NO_PAD
        .decode(signature)
        .map_err(|_| invalid_token("malformed signature"))?;
    let mut mac = HmacSha256::new_from_slice(server.token_secret.as_bytes())
        .expect("HMAC takes any key length");
    mac.update(format!("{header}.{payload}").as_bytes());
    mac.verify_slice(&given)
        .map_err(|_| invalid_token("signature does not match"))?;
    let claims: Value = URL_SAFE_NO_PAD
        .decode(payload)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| invalid_token("malformed claims"))?;
    let exp = claims
        .get("exp")
        .and_then(Value::as_u64)
        .ok_or_else(|| invalid_token("no expiry"))?;
    if exp <= now_s {
        return Err(invalid_token("token expired"));
    }
    serde_json::from_value(claims["identity"].clone())
        .map_err(|_| invalid_token("malformed identity"))
}

/// How the call presented itself.
pub enum Presented {
    Basic,
    Bearer,
}

/// Authenticates a call from its `Authorization` header (or the `clearml_token_basic` cookie).
pub fn authenticate(
    server: &ServerIdentity,
    headers: &HeaderMap,
    now_s: u64,
) -> Result<(Identity, Presented), ApiError> {
    let auth = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let cookie_token = headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| {
            c.trim()
                .strip_prefix("clearml_token_basic=")
                .map(str::to_string)
        });
    let Some(auth) = auth else {
        return match cookie_token {
            Some(token) => verify_token(server, &token, now_s).map(|i| (i, Presented::Bearer)),
            None => Err(ApiError::new(401, 20, "Unauthorized (missing credentials)")),
        };
    };
    let (scheme, rest) = auth.split_once(' ').unwrap_or((auth, ""));
    match scheme.to_ascii_lowercase().as_str() {
        "basic" => {
            let decoded = STANDARD
                .decode(rest.trim())
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| ApiError::new(401, 21, "Unauthorized (malformed credentials)"))?;
            let (key, secret) = decoded
                .split_once(':')
                .ok_or_else(|| ApiError::new(401, 21, "Unauthorized (malformed credentials)"))?;
            if constant_eq(key, &server.access_key) && constant_eq(secret, &server.secret_key) {
                Ok((Identity::of(server), Presented::Basic))
            } else {
                Err(ApiError::new(401, 22, "Unauthorized (invalid credentials)"))
            }
        }
        "bearer" => verify_token(server, rest.trim(), now_s).map(|i| (i, Presented::Bearer)),
        _ => Err(ApiError::new(
            401,
            10,
            "Unauthorized (bad authentication header type)",
        )),
    }
}

fn constant_eq(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_round_trip_forgery_and_expiry() {
        let server = ServerIdentity::generate();
        let me = Identity::of(&server);
        let token = issue_token(&server, &me, 1000, 60);
        assert_eq!(verify_token(&server, &token, 1001).unwrap(), me);
        assert_eq!(verify_token(&server, &token, 1060).unwrap_err().subcode, 30);
        let other = ServerIdentity::generate();
        assert_eq!(verify_token(&other, &token, 1001).unwrap_err().code, 401);
        // A payload swapped under the old signature is refused.
        let parts: Vec<&str> = token.split('.').collect();
        let evil = URL_SAFE_NO_PAD.encode(r#"{"exp": 99999999999, "identity": {}}"#);
        assert!(verify_token(
            &server,
            &format!("{}.{}.{}", parts[0], evil, parts[2]),
            1001
        )
        .is_err());
        assert!(verify_token(&server, "garbage", 1001).is_err());
    }

    #[test]
    fn generated_credentials_differ() {
        let a = ServerIdentity::generate();
        let b = ServerIdentity::generate();
        assert_ne!(a.access_key, b.access_key);
        assert_ne!(a.secret_key, b.secret_key);
        assert_eq!(new_id().len(), 32);
        assert!(!format!("{a:?}").contains(&a.secret_key));
    }
}
