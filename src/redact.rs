//! Keeps secrets out of everything a user can see: inspect, export, errors.

use serde_json::Value;

pub const MASK: &str = "********";

/// Field names whose values are secrets, as ClearML names them (api.credentials.secret_key,
/// agent.git_pass, tokens...).
pub fn is_secret_key(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    [
        "secret",
        "password",
        "passwd",
        "token",
        "git_pass",
        "access_key",
    ]
    .iter()
    .any(|s| n.contains(s))
}

/// Mask the password in every `scheme://user:password@host` inside `text`.
pub fn redact_urls(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find("://") {
        let (head, tail) = rest.split_at(pos + 3);
        out.push_str(head);
        let end = tail
            .find(|c: char| c.is_whitespace() || c == '/' || c == '"' || c == '\'')
            .unwrap_or(tail.len());
        let authority = &tail[..end];
        match authority.rfind('@') {
            Some(at) => {
                let userinfo = &authority[..at];
                match userinfo.split_once(':') {
                    Some((user, _)) => out.push_str(&format!("{user}:{MASK}")),
                    None => out.push_str(MASK),
                }
                out.push_str(&authority[at..]);
            }
            None => out.push_str(authority),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

/// Redact a JSON value in place: secret-named fields are masked, URLs lose passwords.
pub fn redact_json(value: &mut Value) {
    match value {
        Value::String(s) if s.contains("://") => *s = redact_urls(s),
        Value::Array(items) => items.iter_mut().for_each(redact_json),
        Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                if is_secret_key(k) && !v.is_null() {
                    *v = Value::String(MASK.into());
                } else {
                    redact_json(v);
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_their_passwords_only() {
        assert_eq!(
            redact_urls("clone https://bob:hunter2@github.com/x/y.git now"),
            format!("clone https://bob:{MASK}@github.com/x/y.git now")
        );
        assert_eq!(
            redact_urls("https://tok3n@host/x and git@github.com:x/y"),
            format!("https://{MASK}@host/x and git@github.com:x/y")
        );
        assert_eq!(redact_urls("http://host:8080/a"), "http://host:8080/a");
    }

    #[test]
    fn secret_fields_are_masked_recursively() {
        let mut v = serde_json::json!({
            "api": {"secret_key": "S3CR3T", "access_key": "AK"},
            "repo": "https://u:p@h/r.git",
            "list": [{"git_pass": "pw"}],
            "effect_key": "t:1:Cloned"
        });
        redact_json(&mut v);
        let text = v.to_string();
        for secret in ["S3CR3T", "AK\"", ":p@", "\"pw\""] {
            assert!(!text.contains(secret), "{secret} leaked in {text}");
        }
        assert!(text.contains("t:1:Cloned"));
    }
}
