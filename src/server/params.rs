//! Request decoding as the real server does it: `/vX.Y/service.action` or `/service.action`, a JSON
//! object body on any method (GET included), the query string merged in (dotted keys nest, `k[]` and
//! repeated keys make lists, `true`/digits are coerced), and every `null` dropped before validation.
//! [`Params`] then gives typed access that answers a wrong type with 400/12 naming the field.

use super::envelope::ApiError;
use serde_json::{Map, Number, Value};

/// `service.action` and the requested version, from the URL path.
#[derive(Debug, Clone, PartialEq)]
pub struct Endpoint {
    pub service: String,
    pub action: String,
    pub version: Option<String>,
}

impl Endpoint {
    pub fn name(&self) -> String {
        format!("{}.{}", self.service, self.action)
    }
}

fn is_ident(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// `^/?(v(\d+\.?\d+)/)?([a-zA-Z_]\w+)\.([a-zA-Z_]\w+)/?$`, the server's own path regex.
pub fn parse_path(path: &str) -> Option<Endpoint> {
    let path = path.strip_prefix('/').unwrap_or(path);
    let path = path.strip_suffix('/').unwrap_or(path);
    let (version, rest) = match path.split_once('/') {
        Some((v, rest)) => {
            let digits = v.strip_prefix('v')?;
            let ok = !digits.is_empty()
                && digits.chars().all(|c| c.is_ascii_digit() || c == '.')
                && digits.chars().filter(|&c| c == '.').count() <= 1
                && digits.starts_with(|c: char| c.is_ascii_digit())
                && digits.ends_with(|c: char| c.is_ascii_digit());
            if !ok {
                return None;
            }
            (Some(digits.to_string()), rest)
        }
        None => (None, path),
    };
    let (service, action) = rest.split_once('.')?;
    if !is_ident(service) || !is_ident(action) || service.len() < 2 || action.len() < 2 {
        return None;
    }
    Some(Endpoint {
        service: service.to_string(),
        action: action.to_string(),
        version,
    })
}

/// Removes every `null` (in objects and lists), as the real server does before validation.
pub fn drop_nulls(value: Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k, drop_nulls(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(
            items
                .into_iter()
                .filter(|v| !v.is_null())
                .map(drop_nulls)
                .collect(),
        ),
        other => other,
    }
}

fn percent_decode(s: &str) -> String {
    crate::server::files::percent_decode(&s.replace('+', " "))
}

fn coerce(raw: &str) -> Value {
    match raw {
        "true" | "True" | "TRUE" => return Value::Bool(true),
        "false" | "False" | "FALSE" => return Value::Bool(false),
        _ => {}
    }
    if let Ok(i) = raw.parse::<i64>() {
        return Value::Number(i.into());
    }
    if let Ok(f) = raw.parse::<f64>() {
        if let Some(n) = Number::from_f64(f) {
            return Value::Number(n);
        }
    }
    Value::String(raw.to_string())
}

/// Merges `a=1&b.c=x&l[]=1&l[]=2` into `body`.
pub fn merge_query(body: &mut Map<String, Value>, query: &str) {
    // (key, values, written as `key[]`): a key seen more than once, or with [], becomes a list.
    let mut grouped: Vec<(String, Vec<Value>, bool)> = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let raw_key = percent_decode(k);
        let value = coerce(&percent_decode(v));
        let (key, bracketed) = match raw_key.strip_suffix("[]") {
            Some(base) => (base.to_string(), true),
            None => (raw_key, false),
        };
        match grouped.iter_mut().find(|(k, _, _)| *k == key) {
            Some(entry) => {
                entry.1.push(value);
                entry.2 |= bracketed;
            }
            None => grouped.push((key, vec![value], bracketed)),
        }
    }
    for (key, mut values, bracketed) in grouped {
        let value = if values.len() == 1 && !bracketed {
            values.remove(0)
        } else {
            Value::Array(values)
        };
        crate::server::query::set_path(body, &key, value);
    }
}

/// Decodes a JSON-object body (empty means `{}`) and merges the query string.
pub fn parse_object(body: &[u8], query: Option<&str>) -> Result<Map<String, Value>, ApiError> {
    let text = std::str::from_utf8(body)
        .map_err(|_| ApiError::bad_request("request body is not UTF-8"))?;
    let mut map = if text.trim().is_empty() {
        Map::new()
    } else {
        match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(map)) => map,
            Ok(_) => return Err(ApiError::validation("request body must be a JSON object")),
            Err(e) => {
                return Err(ApiError::bad_request(format!(
                    "Content could not be parsed as JSON: {e}"
                )))
            }
        }
    };
    if let Some(q) = query {
        merge_query(&mut map, q);
    }
    match drop_nulls(Value::Object(map)) {
        Value::Object(map) => Ok(map),
        _ => unreachable!("drop_nulls keeps the shape"),
    }
}

/// Typed, validating access to the request fields.
#[derive(Debug, Clone, Default)]
pub struct Params(pub Map<String, Value>);

fn type_error(field: &str, expected: &str) -> ApiError {
    ApiError::validation(format!("field '{field}' must be {expected}"))
}

impl Params {
    pub fn get(&self, field: &str) -> Option<&Value> {
        self.0.get(field)
    }
    pub fn has(&self, field: &str) -> bool {
        self.0.contains_key(field)
    }
    pub fn str(&self, field: &str) -> Result<Option<&str>, ApiError> {
        match self.0.get(field) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(type_error(field, "a string")),
        }
    }
    pub fn req_str(&self, field: &str) -> Result<&str, ApiError> {
        match self.str(field)? {
            Some(s) => Ok(s),
            None => Err(ApiError::missing_field(field)),
        }
    }
    /// A required id: present, a string, not empty.
    pub fn req_id(&self, field: &str) -> Result<&str, ApiError> {
        let s = self.req_str(field)?;
        if s.trim().is_empty() {
            return Err(ApiError::validation(format!(
                "field '{field}' must not be empty"
            )));
        }
        Ok(s)
    }
    pub fn bool(&self, field: &str, default: bool) -> Result<bool, ApiError> {
        match self.0.get(field) {
            None => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(_) => Err(type_error(field, "a boolean")),
        }
    }
    pub fn int(&self, field: &str) -> Result<Option<i64>, ApiError> {
        match self.0.get(field) {
            None => Ok(None),
            Some(Value::Number(n)) => match n.as_i64() {
                Some(i) => Ok(Some(i)),
                None => match n.as_f64() {
                    Some(f) if f.fract() == 0.0 && f.abs() < 9.0e18 => Ok(Some(f as i64)),
                    _ => Err(type_error(field, "an integer")),
                },
            },
            Some(_) => Err(type_error(field, "an integer")),
        }
    }
    pub fn number(&self, field: &str) -> Result<Option<f64>, ApiError> {
        match self.0.get(field) {
            None => Ok(None),
            Some(Value::Number(n)) => Ok(n.as_f64()),
            Some(_) => Err(type_error(field, "a number")),
        }
    }
    /// A list of strings. The real schema types these as arrays; a bare string is refused.
    pub fn str_list(&self, field: &str) -> Result<Option<Vec<String>>, ApiError> {
        match self.0.get(field) {
            None => Ok(None),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| type_error(field, "a list of strings"))
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            Some(_) => Err(type_error(field, "a list of strings")),
        }
    }
    pub fn object(&self, field: &str) -> Result<Option<&Map<String, Value>>, ApiError> {
        match self.0.get(field) {
            None => Ok(None),
            Some(Value::Object(m)) => Ok(Some(m)),
            Some(_) => Err(type_error(field, "an object")),
        }
    }
    pub fn list(&self, field: &str) -> Result<Option<&Vec<Value>>, ApiError> {
        match self.0.get(field) {
            None => Ok(None),
            Some(Value::Array(items)) => Ok(Some(items)),
            Some(_) => Err(type_error(field, "a list")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn paths_with_and_without_version() {
        let e = parse_path("/v2.23/tasks.get_all").unwrap();
        assert_eq!(
            (e.service.as_str(), e.action.as_str(), e.version.as_deref()),
            ("tasks", "get_all", Some("2.23"))
        );
        let e = parse_path("/auth.login/").unwrap();
        assert_eq!((e.name(), e.version), ("auth.login".to_string(), None));
        assert!(parse_path("/v999.0/debug.ping").is_some());
        for bad in [
            "/",
            "/tasks",
            "/vx/tasks.get_all",
            "/a/b/tasks.get_all",
            "/tasks.",
            "/1a.b2",
            "/../x.y",
        ] {
            assert!(parse_path(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn query_merges_nests_and_coerces() {
        let mut body = Map::new();
        merge_query(
            &mut body,
            "expiration_sec=60&a.b=true&types[]=config&l=1&l=x&n=1.5&s=hello%20you",
        );
        assert_eq!(
            Value::Object(body),
            json!({"expiration_sec": 60, "a": {"b": true}, "types": ["config"], "l": [1, "x"], "n": 1.5, "s": "hello you"})
        );
    }

    #[test]
    fn nulls_are_absent() {
        let m = parse_object(
            br#"{"tags": null, "x": {"y": null, "z": 1}, "l": [1, null]}"#,
            None,
        )
        .unwrap();
        assert_eq!(Value::Object(m), json!({"x": {"z": 1}, "l": [1]}));
    }

    #[test]
    fn wrong_types_name_the_field() {
        let p = Params(parse_object(br#"{"task": 5, "force": "yes", "id": "abc"}"#, None).unwrap());
        assert!(p.req_str("task").unwrap_err().msg.contains("'task'"));
        assert_eq!(p.bool("force", false).unwrap_err().subcode, 12);
        assert_eq!(p.str_list("id").unwrap_err().subcode, 12);
        assert_eq!(p.req_str("queue").unwrap_err().subcode, 11);
        assert_eq!(parse_object(b"{not json", None).unwrap_err().code, 400);
        assert_eq!(parse_object(b"[1,2]", None).unwrap_err().subcode, 12);
    }
}
