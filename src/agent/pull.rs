//! A task document (as `tasks.get_by_id` returns it) to the snapshot a run records. Pure.
//!
//! Bad input never becomes an empty script: a field of the wrong JSON type, or an entry point or
//! working dir outside the checkout, is recorded as the run's input error, and the run fails the
//! task with a reason that names the field. Repository credentials are stripped: the snapshot
//! keeps a reference to where they came from.

use crate::effects::vcs;
use crate::fsm::{CredentialRef, Origin, PullExt, TaskSnapshot};
use serde_json::Value;

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// Collects the first problem found; later reads still return what they can.
struct Reader<'a> {
    task: &'a Value,
    error: Option<String>,
}

impl Reader<'_> {
    fn at(&self, path: &[&str]) -> Option<&Value> {
        let mut cur = self.task;
        for p in path {
            cur = cur.get(*p)?;
        }
        (!cur.is_null()).then_some(cur)
    }

    fn fail(&mut self, why: String) {
        self.error.get_or_insert(why);
    }

    fn string(&mut self, path: &[&str]) -> Option<String> {
        match self.at(path)? {
            Value::String(s) => Some(s.clone()),
            other => {
                let why = format!(
                    "{}: expected a string, got {}",
                    path.join("."),
                    type_name(other)
                );
                self.fail(why);
                None
            }
        }
    }

    /// A path relative to the checkout that must stay inside it.
    fn relative(&mut self, path: &[&str], first_word: bool) -> Option<String> {
        let text = self.string(path)?;
        let rel = if first_word {
            text.split_whitespace().next().unwrap_or("").to_string()
        } else {
            text.clone()
        };
        let mut depth = 0i32;
        let escapes = rel.starts_with('/')
            || rel.split('/').any(|part| {
                match part {
                    ".." => depth -= 1,
                    "" | "." => {}
                    _ => depth += 1,
                }
                depth < 0
            });
        if escapes {
            self.fail(format!(
                "{}: {rel:?} points outside the task's checkout",
                path.join(".")
            ));
        }
        Some(text)
    }
}

/// The snapshot a run records, and what it records beside it.
pub fn snapshot_of(task: &Value, queue: Option<&str>, origin: Origin) -> (TaskSnapshot, PullExt) {
    let mut r = Reader { task, error: None };
    if let Some(script) = r.at(&["script"]) {
        if !script.is_object() {
            let why = format!("script: expected an object, got {}", type_name(script));
            r.fail(why);
        }
    }
    let requirements = match r.at(&["script", "requirements"]) {
        None => None,
        Some(Value::Object(_)) => match r.at(&["script", "requirements", "pip"]) {
            None => None,
            Some(Value::String(text)) => Some(text.clone()),
            Some(Value::Array(lines)) if lines.iter().all(Value::is_string) => Some(
                lines
                    .iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join("\n"),
            ),
            Some(other) => {
                let why = format!(
                    "script.requirements.pip: expected a string or a list of strings, got {}",
                    type_name(other)
                );
                r.fail(why);
                None
            }
        },
        Some(other) => {
            let why = format!(
                "script.requirements: expected an object, got {}",
                type_name(other)
            );
            r.fail(why);
            None
        }
    };
    let container_args = match r.at(&["container", "arguments"]) {
        Some(Value::String(a)) => a.split_whitespace().map(str::to_string).collect(),
        _ => vec![],
    };
    let mut credentials = None;
    let repository = r.string(&["script", "repository"]).map(|url| {
        let stripped = vcs::strip_credentials(&url);
        if stripped != url.trim() {
            credentials = Some(CredentialRef::TaskRepositoryUrl);
        }
        stripped
    });
    let snapshot = TaskSnapshot {
        task_id: r.string(&["id"]).unwrap_or_default(),
        name: r.string(&["name"]).unwrap_or_default(),
        project: r.string(&["project"]),
        queue: queue.map(str::to_string),
        repository,
        branch: r.string(&["script", "branch"]),
        tag: r.string(&["script", "tag"]),
        version_num: r.string(&["script", "version_num"]),
        entry_point: r.relative(&["script", "entry_point"], true),
        working_dir: r.relative(&["script", "working_dir"], false),
        binary: r.string(&["script", "binary"]),
        diff: r.string(&["script", "diff"]),
        requirements,
        container_image: r.string(&["container", "image"]).filter(|i| !i.is_empty()),
        container_args,
    };
    let ext = PullExt {
        origin,
        credentials,
        input_error: r.error,
    };
    (snapshot, ext)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_pip_as_string_or_list() {
        let t = json!({"id": "t1", "name": "n", "script": {"requirements": {"pip": ["six", "clearml"]}, "entry_point": "a.py"}});
        let (s, ext) = snapshot_of(&t, Some("q"), Origin::Queue);
        assert_eq!(s.requirements.as_deref(), Some("six\nclearml"));
        assert_eq!(
            (
                s.task_id.as_str(),
                s.queue.as_deref(),
                s.entry_point.as_deref()
            ),
            ("t1", Some("q"), Some("a.py"))
        );
        assert_eq!(ext.input_error, None);
        let t = json!({"id": "t2", "script": {"requirements": {"pip": "six\n"}}});
        assert_eq!(
            snapshot_of(&t, None, Origin::Execute)
                .0
                .requirements
                .as_deref(),
            Some("six\n")
        );
    }

    #[test]
    fn wrong_types_and_escaping_paths_name_the_field() {
        for (script, field) in [
            (
                json!({"repository": 5}),
                "script.repository: expected a string, got a number",
            ),
            (
                json!({"diff": {"a": 1}}),
                "script.diff: expected a string, got an object",
            ),
            (
                json!({"requirements": {"pip": 3}}),
                "script.requirements.pip",
            ),
            (
                json!({"requirements": "six"}),
                "script.requirements: expected an object",
            ),
            (
                json!({"entry_point": ["a.py"]}),
                "script.entry_point: expected a string, got a list",
            ),
            (
                json!({"entry_point": "../../etc/x.py"}),
                "script.entry_point: \"../../etc/x.py\" points outside",
            ),
            (json!({"entry_point": "/tmp/x.py"}), "points outside"),
            (json!({"working_dir": "a/../../b"}), "script.working_dir"),
            (json!("just a string"), "script: expected an object"),
        ] {
            let t = json!({"id": "t", "script": script});
            let (_, ext) = snapshot_of(&t, None, Origin::Queue);
            let err = ext.input_error.unwrap_or_default();
            assert!(err.contains(field), "{script}: {err}");
        }
        let t = json!({"id": "t", "script": {"entry_point": "sub/../a.py -x ../y", "working_dir": "."}});
        assert_eq!(snapshot_of(&t, None, Origin::Queue).1.input_error, None);
    }

    #[test]
    fn repository_credentials_are_not_recorded() {
        let t = json!({"id": "t", "script": {"repository": "https://bob:hunter2@git.example.com/r.git"}});
        let (s, ext) = snapshot_of(&t, None, Origin::Queue);
        assert_eq!(
            s.repository.as_deref(),
            Some("https://git.example.com/r.git")
        );
        assert_eq!(ext.credentials, Some(CredentialRef::TaskRepositoryUrl));
        let t = json!({"id": "t", "script": {"repository": "git@github.com:x/y.git"}});
        assert_eq!(snapshot_of(&t, None, Origin::Queue).1.credentials, None);
    }
}
