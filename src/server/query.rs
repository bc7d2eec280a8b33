//! Shared query helpers for the `get_all` endpoints: regex name filters (Python `re.search`
//! semantics, case-sensitive), tag filters with `-tag` exclusion and the `__$` operators,
//! `only_fields` dotted projection, ordering and paging, and timestamps on the wire.

use super::envelope::ApiError;
use super::params::Params;
use super::store::Doc;
use serde_json::{Map, Value};

/// ISO-8601 UTC with milliseconds, the form every date field has on the wire.
pub fn iso(ms: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_millis(t).to_string()
}

pub fn now_iso() -> String {
    iso(crate::host::now_ms())
}

/// A `name` filter: a regex searched anywhere in the name; a pattern that does not compile is
/// matched as plain text rather than refused (the clients escape names themselves).
pub struct NameFilter(Option<regex::Regex>, String);

impl NameFilter {
    pub fn new(pattern: &str) -> Self {
        NameFilter(regex::Regex::new(pattern).ok(), pattern.to_string())
    }
    pub fn matches(&self, name: &str) -> bool {
        match &self.0 {
            Some(re) => re.is_match(name),
            None => name.contains(&self.1),
        }
    }
}

fn str_list(doc: &Doc, field: &str) -> Vec<String> {
    doc.get(field)
        .and_then(Value::as_array)
        .map(|l| {
            l.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// A tags filter: plain tags must (any of them, or all with `__$all`) be present, `-tag` and
/// `__$not tag` must be absent.
pub fn tags_match(doc: &Doc, field: &str, filter: &[String]) -> bool {
    let have = str_list(doc, field);
    let mut include = Vec::new();
    let mut exclude = Vec::new();
    let mut all = false;
    let mut negate_next = false;
    for tag in filter {
        match tag.as_str() {
            "__$all" | "__$and" => all = true,
            "__$any" | "__$or" => all = false,
            "__$not" => negate_next = true,
            t => {
                if negate_next {
                    exclude.push(t.to_string());
                    negate_next = false;
                } else if let Some(x) = t.strip_prefix('-') {
                    exclude.push(x.to_string());
                } else {
                    include.push(t.to_string());
                }
            }
        }
    }
    if exclude.iter().any(|t| have.contains(t)) {
        return false;
    }
    if include.is_empty() {
        return true;
    }
    if all {
        include.iter().all(|t| have.contains(t))
    } else {
        include.iter().any(|t| have.contains(t))
    }
}

fn get_path<'a>(doc: &'a Map<String, Value>, path: &str) -> Option<&'a Value> {
    let mut parts = path.split('.');
    let mut cur = doc.get(parts.next()?)?;
    for p in parts {
        cur = cur.as_object()?.get(p)?;
    }
    Some(cur)
}

/// Sets `a.b.c` in a nested object, creating (or replacing non-object) intermediate levels.
pub fn set_path(out: &mut Map<String, Value>, path: &str, value: Value) {
    match path.split_once('.') {
        None => {
            out.insert(path.to_string(), value);
        }
        Some((head, rest)) => {
            let entry = out
                .entry(head.to_string())
                .or_insert_with(|| Value::Object(Map::new()));
            if let Value::Object(inner) = entry {
                set_path(inner, rest, value);
            }
        }
    }
}

/// `only_fields` projection with dotted paths; `id` is always included. `-field` entries
/// exclude instead. Without `only_fields` the document is returned whole.
pub fn project(doc: &Doc, only_fields: Option<&[String]>) -> Value {
    let Some(fields) = only_fields.filter(|f| !f.is_empty()) else {
        return Value::Object(doc.clone());
    };
    if fields.iter().all(|f| f.starts_with('-')) {
        let mut out = doc.clone();
        for f in fields {
            out.remove(&f[1..]);
        }
        return Value::Object(out);
    }
    let mut out = Map::new();
    if let Some(id) = doc.get("id") {
        out.insert("id".into(), id.clone());
    }
    for f in fields.iter().filter(|f| !f.starts_with('-')) {
        if let Some(v) = get_path(doc, f) {
            set_path(&mut out, f, v.clone());
        }
    }
    Value::Object(out)
}

fn compare(a: &Value, b: &Value) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x
            .as_f64()
            .unwrap_or(0.0)
            .partial_cmp(&y.as_f64().unwrap_or(0.0))
            .unwrap_or(Ordering::Equal),
        (Value::String(x), Value::String(y)) => x.cmp(y),
        (Value::Null, Value::Null) => Ordering::Equal,
        (Value::Null, _) => Ordering::Less,
        (_, Value::Null) => Ordering::Greater,
        _ => a.to_string().cmp(&b.to_string()),
    }
}

/// Sorts by `order_by` (`-` for descending), then by creation time and id for a stable order.
pub fn sort(docs: &mut [&Doc], order_by: &[String]) {
    docs.sort_by(|a, b| {
        for key in order_by {
            let (desc, path) = match key.strip_prefix('-') {
                Some(p) => (true, p),
                None => (false, key.as_str()),
            };
            let null = Value::Null;
            let ord = compare(
                get_path(a, path).unwrap_or(&null),
                get_path(b, path).unwrap_or(&null),
            );
            let ord = if desc { ord.reverse() } else { ord };
            if ord != std::cmp::Ordering::Equal {
                return ord;
            }
        }
        let created = |d: &Doc| {
            d.get("created")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string()
        };
        created(a).cmp(&created(b)).then_with(|| {
            let id = |d: &Doc| {
                d.get("id")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string()
            };
            id(a).cmp(&id(b))
        })
    });
}

/// `page`/`page_size` paging (and `size` with a numeric `scroll_id` offset for the scroll API).
pub struct Page {
    pub skip: usize,
    pub take: usize,
    pub scroll: bool,
}

impl Page {
    pub fn of(p: &Params) -> Result<Page, ApiError> {
        let page = p.int("page")?.unwrap_or(0).max(0) as usize;
        let page_size = p.int("page_size")?;
        if let Some(size) = p.int("size")? {
            let offset = p
                .str("scroll_id")?
                .and_then(|s| s.parse::<usize>().ok())
                .unwrap_or(0);
            let offset = if p.bool("refresh_scroll", false)? {
                0
            } else {
                offset
            };
            return Ok(Page {
                skip: offset,
                take: size.max(0) as usize,
                scroll: true,
            });
        }
        match page_size {
            Some(size) => Ok(Page {
                skip: page * size.max(0) as usize,
                take: size.max(0) as usize,
                scroll: false,
            }),
            None => Ok(Page {
                skip: 0,
                take: usize::MAX,
                scroll: false,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn doc(v: Value) -> Doc {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn projection_keeps_id_and_dotted_paths() {
        let d = doc(
            json!({"id": "t", "status": "queued", "runtime": {"a": 1, "b": 2}, "script": {"requirements": {"pip": "x"}}}),
        );
        let fields = vec![
            "status".to_string(),
            "runtime.a".to_string(),
            "script.requirements".to_string(),
            "nope.x".to_string(),
        ];
        assert_eq!(
            project(&d, Some(&fields)),
            json!({"id": "t", "status": "queued", "runtime": {"a": 1}, "script": {"requirements": {"pip": "x"}}})
        );
    }

    #[test]
    fn tag_filters() {
        let d = doc(json!({"system_tags": ["archived", "x"]}));
        assert!(!tags_match(&d, "system_tags", &["-archived".into()]));
        assert!(tags_match(&d, "system_tags", &["-hidden".into()]));
        assert!(tags_match(&d, "system_tags", &["y".into(), "x".into()]));
        assert!(!tags_match(
            &d,
            "system_tags",
            &["__$all".into(), "y".into(), "x".into()]
        ));
        assert!(!tags_match(
            &d,
            "system_tags",
            &["__$not".into(), "x".into()]
        ));
    }

    #[test]
    fn names_are_searched_not_anchored() {
        assert!(NameFilter::new("default").matches("my default queue"));
        assert!(!NameFilter::new("^default$").matches("my default queue"));
        assert!(NameFilter::new("a(b").matches("xa(by"));
    }
}
