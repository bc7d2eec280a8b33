//! `auth.*`, `users.*`, `server.*`, `debug.*`, `login.*`: identity, tokens and health.

use super::Ctx;
use crate::server::auth::issue_token;
use crate::server::envelope::ApiError;
use crate::server::params::Params;
use serde_json::{json, Value};

/// The longest token the server issues (the real server's cap: one year).
const MAX_EXPIRATION_S: i64 = 365 * 24 * 3600;

pub fn handle(
    ctx: &Ctx,
    service: &str,
    action: &str,
    p: &Params,
) -> Option<Result<Value, ApiError>> {
    Some(match (service, action) {
        ("auth", "login") => login(ctx, p),
        ("auth", "logout") => Ok(json!({})),
        ("auth", "fixed_users_mode") => Ok(
            json!({"enabled": false, "migration_enabled": false, "guest": {"enabled": false}, "server_errors": {}}),
        ),
        ("login", "supported_modes") => Ok(json!({
            "basic": {"enabled": false, "guest": {"enabled": false}},
            "sso": {}, "sso_providers": [],
            "server_errors": {"missed_es_upgrade": false, "es_connection_error": false},
            "authenticated": ctx.identity.is_some(),
        })),
        ("users", "get_current_user") => Ok(json!({
            "user": user(ctx),
            "getting_started": {},
            "settings": {"max_download_items": 1000},
        })),
        ("users", "get_by_id") => {
            let id = match p.req_id("user") {
                Ok(id) => id,
                Err(e) => return Some(Err(e)),
            };
            if id == ctx.server.user_id {
                Ok(json!({"user": user(ctx)}))
            } else {
                Err(ApiError::new(400, 10, format!("Invalid user id: id={id}")))
            }
        }
        ("users", "get_all" | "get_all_ex") => Ok(json!({"users": [user(ctx)]})),
        ("server", "info") => Ok(json!({
            "version": super::super::SERVER_VERSION,
            "build": super::super::SERVER_BUILD,
            "commit": "",
            "uid": ctx.server.server_uid,
            "api_version": super::super::API_VERSION,
        })),
        ("debug", "ping") => {
            let mut out = p.0.clone();
            out.insert("msg".into(), json!("ClearML server"));
            Ok(Value::Object(out))
        }
        _ => return None,
    })
}

fn user(ctx: &Ctx) -> Value {
    let i = ctx.identity();
    json!({
        "id": i.user, "name": i.user_name, "given_name": "Default", "family_name": "User",
        "company": {"id": i.company, "name": i.company_name}, "role": i.role, "created": crate::server::query::iso(0),
    })
}

fn login(ctx: &Ctx, p: &Params) -> Result<Value, ApiError> {
    let expiration = p
        .int("expiration_sec")?
        .unwrap_or(ctx.semantics.token_expiration_s as i64);
    if expiration <= 0 {
        return Err(ApiError::validation(
            "field 'expiration_sec' must be positive",
        ));
    }
    let identity = ctx.identity();
    let token = issue_token(
        ctx.server,
        &identity,
        ctx.now_ms / 1000,
        expiration.min(MAX_EXPIRATION_S) as u64,
    );
    Ok(json!({"token": token}))
}
