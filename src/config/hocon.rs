//! A HOCON reader for `clearml.conf` as ClearML writes it: nested objects (`a { }`,
//! `a: { }`, `a = { }`), dotted keys, `:`/`=` separators, quoted and triple-quoted strings,
//! unquoted values, arrays, `#` and `//` comments, duplicate objects merged, and
//! `${VAR}` / `${?VAR}` substitution from other keys or the environment.
//! Errors carry the line and column.

use serde_json::{Map, Value};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}, column {column}: {message}")]
pub struct ParseError {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

/// Deepest nesting of objects and lists accepted: a clearml.conf is a few levels deep, and the
/// reader recurses once per level, so hostile input must not choose the stack depth.
pub const MAX_DEPTH: usize = 64;
/// Most parts of one dotted key (`a.b.c`): each part is one more level.
pub const MAX_KEY_PARTS: usize = MAX_DEPTH;
/// Largest configuration text accepted.
pub const MAX_BYTES: usize = 4 * 1024 * 1024;

struct Parser {
    chars: Vec<char>,
    pos: usize,
    depth: usize,
}

pub fn parse(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Value, ParseError> {
    if text.len() > MAX_BYTES {
        return Err(ParseError {
            line: 1,
            column: 1,
            message: format!(
                "the configuration is {} bytes; at most {MAX_BYTES} are read",
                text.len()
            ),
        });
    }
    let mut p = Parser {
        chars: text.chars().collect(),
        pos: 0,
        depth: 0,
    };
    p.skip_ws(true);
    let root = if p.peek() == Some('{') {
        p.pos += 1;
        let o = p.object_body(Some('}'))?;
        p.skip_ws(true);
        if p.peek().is_some() {
            return Err(p.error("unexpected text after the closing '}'"));
        }
        o
    } else {
        p.object_body(None)?
    };
    let mut root = Value::Object(root);
    let snapshot = root.clone();
    resolve(&mut root, &snapshot, env);
    Ok(root)
}

/// Replace `{"$subst": path, "optional": bool}` placeholders by the value at `path`
/// in the document, else the environment variable of that name.
fn resolve(v: &mut Value, root: &Value, env: &dyn Fn(&str) -> Option<String>) {
    match v {
        Value::Object(map) if map.contains_key("$subst") => {
            let path = map["$subst"].as_str().unwrap_or_default().to_string();
            let found = lookup(root, &path)
                .filter(|v| !v.is_object() || !v.as_object().unwrap().contains_key("$subst"))
                .cloned()
                .or_else(|| env(&path).map(Value::String));
            *v = found.unwrap_or(Value::Null);
        }
        Value::Object(map) => map.values_mut().for_each(|x| resolve(x, root, env)),
        Value::Array(items) => items.iter_mut().for_each(|x| resolve(x, root, env)),
        Value::String(s) if s.contains("\u{0}subst:") => {
            // A string with embedded substitutions, concatenated.
            let mut out = String::new();
            for (i, part) in s.split('\u{0}').enumerate() {
                match part.strip_prefix("subst:") {
                    Some(path) if i % 2 == 1 => {
                        let val = lookup(root, path)
                            .and_then(scalar_text)
                            .or_else(|| env(path));
                        out.push_str(&val.unwrap_or_default());
                    }
                    _ => out.push_str(part),
                }
            }
            *s = out;
        }
        _ => {}
    }
}

fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The value at a dotted path.
pub fn lookup<'v>(root: &'v Value, path: &str) -> Option<&'v Value> {
    path.split('.')
        .try_fold(root, |v, part| v.as_object()?.get(part))
}

/// Merge `value` into `map` at `path`, merging objects as HOCON does.
pub fn set_path(map: &mut Map<String, Value>, path: &[String], value: Value) {
    let (first, rest) = path.split_first().expect("non-empty path");
    if rest.is_empty() {
        match (map.get_mut(first), value) {
            (Some(Value::Object(old)), Value::Object(new)) => {
                for (k, v) in new {
                    set_path(old, &[k], v);
                }
            }
            (_, value) => {
                map.insert(first.clone(), value);
            }
        }
        return;
    }
    let entry = map
        .entry(first.clone())
        .or_insert_with(|| Value::Object(Map::new()));
    if !entry.is_object() {
        *entry = Value::Object(Map::new());
    }
    set_path(entry.as_object_mut().expect("object"), rest, value);
}

impl Parser {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn peek_str(&self, s: &str) -> bool {
        s.chars()
            .enumerate()
            .all(|(i, c)| self.chars.get(self.pos + i) == Some(&c))
    }

    fn error(&self, message: &str) -> ParseError {
        let upto = &self.chars[..self.pos.min(self.chars.len())];
        let line = upto.iter().filter(|c| **c == '\n').count() + 1;
        let column = upto.iter().rev().take_while(|c| **c != '\n').count() + 1;
        ParseError {
            line,
            column,
            message: message.to_string(),
        }
    }

    /// Skip spaces and comments; newlines too when `newlines`.
    fn skip_ws(&mut self, newlines: bool) {
        while let Some(c) = self.peek() {
            if c == '#' || self.peek_str("//") {
                while self.peek().is_some_and(|c| c != '\n') {
                    self.pos += 1;
                }
            } else if c == '\n' && !newlines {
                return;
            } else if c.is_whitespace() || c == '\u{feff}' {
                self.pos += 1;
            } else {
                return;
            }
        }
    }

    fn object_body(&mut self, close: Option<char>) -> Result<Map<String, Value>, ParseError> {
        let mut map = Map::new();
        loop {
            self.skip_ws(true);
            while self.peek() == Some(',') {
                self.pos += 1;
                self.skip_ws(true);
            }
            match (self.peek(), close) {
                (None, None) => return Ok(map),
                (None, Some(c)) => return Err(self.error(&format!("missing closing '{c}'"))),
                (Some(c), Some(close)) if c == close => {
                    self.pos += 1;
                    return Ok(map);
                }
                _ => {}
            }
            if self.peek_str("include ") {
                // Includes are not followed; the line is skipped.
                while self.peek().is_some_and(|c| c != '\n') {
                    self.pos += 1;
                }
                continue;
            }
            let path = self.key_path()?;
            self.skip_ws(false);
            let value = match self.peek() {
                Some(':') | Some('=') => {
                    self.pos += 1;
                    self.skip_ws(true);
                    self.value()?
                }
                Some('{') => self.value()?,
                _ => {
                    return Err(self.error(&format!(
                        "expected ':', '=' or '{{' after key {:?}",
                        path.join(".")
                    )))
                }
            };
            set_path(&mut map, &path, value);
        }
    }

    fn key_path(&mut self) -> Result<Vec<String>, ParseError> {
        let mut parts = vec![];
        let mut current = String::new();
        loop {
            match self.peek() {
                Some('"') => current.push_str(&self.quoted()?),
                Some('.') => {
                    self.pos += 1;
                    parts.push(std::mem::take(&mut current));
                }
                Some(c) if c.is_alphanumeric() || "_-/$@".contains(c) => {
                    current.push(c);
                    self.pos += 1;
                }
                _ => break,
            }
            if parts.len() >= MAX_KEY_PARTS {
                return Err(self.error(&format!(
                    "a dotted key with more than {MAX_KEY_PARTS} parts"
                )));
            }
        }
        parts.push(current);
        if parts.iter().any(String::is_empty) {
            return Err(self.error("expected a key"));
        }
        Ok(parts)
    }

    fn quoted(&mut self) -> Result<String, ParseError> {
        if self.peek_str("\"\"\"") {
            self.pos += 3;
            let start = self.pos;
            while !self.peek_str("\"\"\"") {
                if self.peek().is_none() {
                    return Err(self.error("unterminated triple-quoted string"));
                }
                self.pos += 1;
            }
            let s: String = self.chars[start..self.pos].iter().collect();
            self.pos += 3;
            return Ok(s);
        }
        self.pos += 1;
        let mut s = String::new();
        loop {
            match self.peek() {
                None | Some('\n') => return Err(self.error("unterminated string")),
                Some('"') => {
                    self.pos += 1;
                    return Ok(s);
                }
                Some('\\') => {
                    self.pos += 1;
                    let c = self
                        .peek()
                        .ok_or_else(|| self.error("unterminated escape"))?;
                    s.push(match c {
                        'n' => '\n',
                        't' => '\t',
                        'r' => '\r',
                        other => other,
                    });
                    self.pos += 1;
                }
                Some(c) => {
                    s.push(c);
                    self.pos += 1;
                }
            }
        }
    }

    fn value(&mut self) -> Result<Value, ParseError> {
        if matches!(self.peek(), Some('{') | Some('[')) {
            if self.depth >= MAX_DEPTH {
                return Err(self.error(&format!(
                    "objects and lists nested deeper than {MAX_DEPTH} levels"
                )));
            }
            self.depth += 1;
            let v = self.nested();
            self.depth -= 1;
            return v;
        }
        self.scalar_or_end()
    }

    fn scalar_or_end(&mut self) -> Result<Value, ParseError> {
        match self.peek() {
            None => Err(self.error("expected a value")),
            _ => self.scalar(),
        }
    }

    fn nested(&mut self) -> Result<Value, ParseError> {
        match self.peek() {
            Some('{') => {
                self.pos += 1;
                Ok(Value::Object(self.object_body(Some('}'))?))
            }
            Some('[') => {
                self.pos += 1;
                let mut items = vec![];
                loop {
                    self.skip_ws(true);
                    match self.peek() {
                        Some(']') => {
                            self.pos += 1;
                            return Ok(Value::Array(items));
                        }
                        Some(',') => self.pos += 1,
                        None => return Err(self.error("missing closing ']'")),
                        Some('}') => return Err(self.error("missing closing ']' before '}'")),
                        _ => {
                            let before = self.pos;
                            items.push(self.value()?);
                            // A value that consumed nothing would loop forever.
                            if self.pos == before {
                                return Err(self.error("unexpected character in a list"));
                            }
                        }
                    }
                }
            }
            None => Err(self.error("expected a value")),
            _ => self.scalar(),
        }
    }

    /// A string, number, boolean, null or substitution, possibly concatenated, up to the
    /// end of the line, a comma, a comment or a closing bracket.
    fn scalar(&mut self) -> Result<Value, ParseError> {
        let mut text = String::new();
        let mut quoted = false;
        let mut substs = 0;
        let mut only_subst: Option<(String, bool)> = None;
        loop {
            match self.peek() {
                Some('"') => {
                    text.push_str(&self.quoted()?);
                    quoted = true;
                }
                Some('$') if self.peek_str("${") => {
                    self.pos += 2;
                    let optional = self.peek() == Some('?');
                    if optional {
                        self.pos += 1;
                    }
                    let start = self.pos;
                    while self.peek().is_some_and(|c| c != '}') {
                        self.pos += 1;
                    }
                    if self.peek().is_none() {
                        return Err(self.error("unterminated substitution"));
                    }
                    let path: String = self.chars[start..self.pos].iter().collect();
                    self.pos += 1;
                    substs += 1;
                    if text.trim().is_empty() && substs == 1 {
                        only_subst = Some((path.trim().to_string(), optional));
                    } else {
                        only_subst = None;
                    }
                    text.push_str(&format!("\u{0}subst:{}\u{0}", path.trim()));
                }
                None | Some('\n') | Some(',') | Some('}') | Some(']') | Some('#') => break,
                // `//` opens a comment only after a space, so `http://host` stays a value.
                Some('/')
                    if self.peek_str("//")
                        && text.chars().last().is_none_or(char::is_whitespace) =>
                {
                    break
                }
                Some(c) => {
                    if !c.is_whitespace() {
                        only_subst = None;
                    }
                    text.push(c);
                    self.pos += 1;
                }
            }
        }
        if let Some((path, optional)) = only_subst.filter(|_| substs == 1) {
            let mut m = Map::new();
            m.insert("$subst".into(), Value::String(path));
            m.insert("optional".into(), Value::Bool(optional));
            return Ok(Value::Object(m));
        }
        let trimmed = text.trim();
        if quoted || substs > 0 {
            return Ok(Value::String(trimmed.to_string()));
        }
        Ok(match trimmed {
            "true" | "yes" | "on" => Value::Bool(true),
            "false" | "no" | "off" => Value::Bool(false),
            "null" => Value::Null,
            t => t
                .parse::<i64>()
                .map(Value::from)
                .or_else(|_| t.parse::<f64>().map(Value::from))
                .unwrap_or_else(|_| Value::String(t.to_string())),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        (name == "MY_HOME").then(|| "/home/me".to_string())
    }

    #[test]
    fn parses_clearml_conf_shapes() {
        let text = r#"
# ClearML config
api {
    api_server: http://127.0.0.1:8008
    credentials {"access_key": "AK", "secret_key": "SK"}
}
agent.git_user = "bob"
agent {
    package_manager: {
        type: pip,
        extra_index_url: ["https://a/simple", "https://b/simple"]
    }
    journal { dir: ${MY_HOME}/.clearml/journal }  // trailing comment
    worker_id: ""
    venvs_cache.max_entries = 10
    docker_init_bash_script = """
line one
line two"""
    force: true
    from_key: ${agent.git_user}
}
"#;
        let v = parse(text, &env).unwrap();
        assert_eq!(
            lookup(&v, "api.api_server").unwrap(),
            "http://127.0.0.1:8008"
        );
        assert_eq!(lookup(&v, "api.credentials.secret_key").unwrap(), "SK");
        assert_eq!(lookup(&v, "agent.git_user").unwrap(), "bob");
        assert_eq!(lookup(&v, "agent.package_manager.type").unwrap(), "pip");
        assert_eq!(
            lookup(&v, "agent.package_manager.extra_index_url").unwrap()[1],
            "https://b/simple"
        );
        assert_eq!(
            lookup(&v, "agent.journal.dir").unwrap(),
            "/home/me/.clearml/journal"
        );
        assert_eq!(lookup(&v, "agent.venvs_cache.max_entries").unwrap(), 10);
        assert_eq!(lookup(&v, "agent.worker_id").unwrap(), "");
        assert_eq!(lookup(&v, "agent.force").unwrap(), true);
        assert_eq!(lookup(&v, "agent.from_key").unwrap(), "bob");
        assert!(lookup(&v, "agent.docker_init_bash_script")
            .unwrap()
            .as_str()
            .unwrap()
            .contains("line one\nline two"));
    }

    #[test]
    fn errors_name_line_and_column() {
        let err = parse("api {\n  host: \"unterminated\n}\n", &env).unwrap_err();
        assert_eq!((err.line, err.message.as_str()), (2, "unterminated string"));
        let err = parse("agent {\n  x: 1\n", &env).unwrap_err();
        assert!(err.message.contains("missing closing '}'"), "{err}");
        assert_eq!(err.line, 3);
        let err = parse("a b c\n", &env).unwrap_err();
        assert_eq!((err.line, err.column), (1, 3));
    }

    #[test]
    fn hostile_depth_and_key_length_are_errors_not_stack_overflows() {
        // Run on a small stack: a recursive reader without limits would overflow it.
        let handle = std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(|| {
                let deep = format!("a: {}1{}", "{x: ".repeat(100_000), "}".repeat(100_000));
                let e = parse(&deep, &|_| None).unwrap_err();
                assert!(e.message.contains("deeper than 64"), "{e}");
                assert_eq!(e.line, 1);
                let lists = format!("a: {}", "[".repeat(200_000));
                assert!(parse(&lists, &|_| None).is_err());
                let dotted = format!("\n{} = 1\n", vec!["k"; 200_000].join("."));
                let e = parse(&dotted, &|_| None).unwrap_err();
                assert!(e.message.contains("more than 64 parts"), "{e}");
                assert_eq!(e.line, 2);
                // At the limit it still reads.
                let ok = format!("a: {}1{}", "{x: ".repeat(60), "}".repeat(60));
                assert!(parse(&ok, &|_| None).is_ok());
            })
            .unwrap();
        handle.join().unwrap();
        let big = "x".repeat(MAX_BYTES + 1);
        assert!(parse(&big, &|_| None)
            .unwrap_err()
            .message
            .contains("bytes"));
    }

    #[test]
    fn unterminated_lists_are_errors_not_hangs() {
        for text in ["a: [1, 2\n}", "a { b: [1, 2\n}\n", "a: [1, 2"] {
            let e = parse(text, &|_| None).unwrap_err();
            assert!(e.to_string().contains("line"), "{text}: {e}");
        }
    }
}
