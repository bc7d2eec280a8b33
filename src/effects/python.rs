//! Which Python a task's venv is built on, as the Python agent chooses it
//! (`worker.py` `_get_task_python_version`, `install_virtualenv`,
//! `find_python_executable_for_version`):
//!
//! - The request is the task's `script.binary` version (`python3.10` -> `3.10`), unless
//!   `agent.ignore_requested_python_version`; else `agent.python_binary`, else
//!   `agent.default_python`, else `3` ([`requested_python`]).
//! - A version `3.10.4` is tried as `python3.10.4`, `python3.10`, `python3`, `python`: the
//!   first whose version matches wins; when none matches, the first that runs is used with a
//!   warning ("not found in path, using ... instead"). A path is used as it is. When nothing
//!   runs at all, the fallback request (upstream: `python_binary`/`default_python`) is tried,
//!   and then the failure names what was requested and every name tried.

use std::path::Path;

use super::venv::{find_executable, find_interpreter, EnvError, Interpreter};

/// The version a `script.binary` asks for: `python3.10` -> `3.10`, `/usr/bin/python3` -> `3`;
/// `None` for `python`, `bash` or anything else.
pub fn task_python_version(binary: &str) -> Option<String> {
    let name = binary.trim().rsplit('/').next()?;
    let v = name.strip_prefix("python")?;
    let parts: Vec<&str> = v.split('.').collect();
    let major: u32 = parts.first()?.parse().ok()?;
    match parts.get(1) {
        None => Some(major.to_string()),
        Some(minor) => Some(format!("{major}.{}", minor.parse::<u32>().ok()?)),
    }
}

/// What to ask for: (request, fallback). See the module doc.
pub fn requested_python(
    task_binary: Option<&str>,
    python_binary: Option<&str>,
    default_python: Option<&str>,
    ignore_requested_python_version: bool,
) -> (String, Option<String>) {
    let nonempty = |v: Option<&str>| {
        v.map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    let configured = nonempty(python_binary).or_else(|| nonempty(default_python));
    let task = (!ignore_requested_python_version)
        .then(|| task_binary.and_then(task_python_version))
        .flatten();
    match task {
        Some(v) => (v, configured),
        None => (configured.unwrap_or_else(|| "3".into()), None),
    }
}

/// `3.10`, `python3.10` -> `Some("3.10")`; `python` -> `Some("")`; other names -> `None`.
fn version_of_request(request: &str) -> Option<String> {
    let v = request.strip_prefix("python").unwrap_or(request);
    (v.is_empty()
        || v.split('.')
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())))
    .then(|| v.to_string())
}

/// The executable names tried for a version: `3.10.4` -> python3.10.4, python3.10, python3,
/// python.
pub fn candidates(version: &str) -> Vec<String> {
    let parts: Vec<&str> = version.split('.').filter(|p| !p.is_empty()).collect();
    (0..=parts.len())
        .rev()
        .map(|n| format!("python{}", parts[..n].join(".")))
        .collect()
}

/// `version` (e.g. `3.10.12`) is what `wanted` (e.g. `3.10`) asks for, part by part.
fn matches(version: &str, wanted: &str) -> bool {
    let have: Vec<&str> = version.split('.').collect();
    wanted
        .split('.')
        .filter(|p| !p.is_empty())
        .enumerate()
        .all(|(i, w)| have.get(i) == Some(&w))
}

/// Finds the interpreter for `request` (see the module doc), logging a fallback.
pub(super) fn find_python(
    request: &str,
    fallback: Option<&str>,
    log: &mut dyn FnMut(&str),
) -> Result<Interpreter, EnvError> {
    match find_one(request, log) {
        Ok(i) => Ok(i),
        Err(EnvError::InterpreterNotFound { name, mut tried }) => {
            let Some(fb) = fallback.filter(|f| f.trim() != request.trim()) else {
                return Err(EnvError::InterpreterNotFound { name, tried });
            };
            log(&format!(
                "Warning: could not locate requested Python version {request}, reverting to \
                 version {fb}"
            ));
            find_one(fb, log).map_err(|e| match e {
                EnvError::InterpreterNotFound { tried: more, .. } => {
                    tried.extend(more);
                    EnvError::InterpreterNotFound { name, tried }
                }
                other => other,
            })
        }
        Err(e) => Err(e),
    }
}

fn find_one(request: &str, log: &mut dyn FnMut(&str)) -> Result<Interpreter, EnvError> {
    let request = request.trim();
    if request.contains('/') || Path::new(request).is_absolute() {
        return find_interpreter(request);
    }
    let Some(version) = version_of_request(request) else {
        // A plain name (`pypy3`): used as it is.
        return find_interpreter(request);
    };
    let names = candidates(&version);
    let mut first_working: Option<Interpreter> = None;
    for name in &names {
        if find_executable(name).is_none() {
            continue;
        }
        // A pyenv shim for a version that is not installed fails here: skipped, as upstream.
        let Ok(found) = find_interpreter(name) else {
            continue;
        };
        if matches(&found.version, &version) {
            return Ok(found);
        }
        if first_working.is_none() {
            first_working = Some(found);
        }
    }
    match first_working {
        Some(found) => {
            log(&format!(
                "Python executable with version {request:?} requested by the Task, not found in \
                 path, using '{}' (v{}) instead",
                found.executable.display(),
                found.version
            ));
            Ok(found)
        }
        None => Err(EnvError::InterpreterNotFound {
            name: request.to_string(),
            tried: names,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_versions() {
        assert_eq!(task_python_version("python3.10"), Some("3.10".into()));
        assert_eq!(task_python_version("/usr/bin/python3"), Some("3".into()));
        assert_eq!(task_python_version("python3.11.4"), Some("3.11".into()));
        assert_eq!(task_python_version("python"), None);
        assert_eq!(task_python_version("bash"), None);
        assert_eq!(task_python_version("python3.x"), None);
    }

    #[test]
    fn request_order_is_upstream() {
        let r = |t, pb, dp, ig| requested_python(t, pb, dp, ig);
        assert_eq!(
            r(Some("python3.10"), Some("3.11"), None, false),
            ("3.10".into(), Some("3.11".into()))
        );
        assert_eq!(
            r(Some("python3.10"), Some("3.11"), None, true),
            ("3.11".into(), None)
        );
        assert_eq!(
            r(Some("bash"), None, Some("3.9"), false),
            ("3.9".into(), None)
        );
        assert_eq!(r(None, Some(""), Some(" "), false), ("3".into(), None));
        assert_eq!(
            r(None, Some("/opt/py/bin/python3"), Some("3.9"), false),
            ("/opt/py/bin/python3".into(), None)
        );
    }

    #[test]
    fn candidate_chain() {
        assert_eq!(
            candidates("3.10.4"),
            vec!["python3.10.4", "python3.10", "python3", "python"]
        );
        assert_eq!(candidates("3"), vec!["python3", "python"]);
        assert_eq!(candidates(""), vec!["python"]);
        assert!(matches("3.10.12", "3.10"));
        assert!(!matches("3.100.1", "3.10"));
        assert!(matches("3.11.7", "3"));
        assert_eq!(version_of_request("python3.10"), Some("3.10".into()));
        assert_eq!(version_of_request("3.10"), Some("3.10".into()));
        assert_eq!(version_of_request("python-does-not-exist-9.9"), None);
    }

    #[test]
    fn a_missing_version_falls_back_with_a_warning_and_nothing_at_all_is_named() {
        // python3 exists on every machine this runs on.
        let mut log = Vec::new();
        let found = find_python("3.99", None, &mut |l| log.push(l.to_string())).unwrap();
        assert!(found.version.starts_with("3."), "{}", found.version);
        assert!(
            log.iter()
                .any(|l| l.contains("\"3.99\" requested by the Task")),
            "{log:?}"
        );
        let e = find_python(
            "/nonexistent/python3.99",
            Some("/also/missing/python"),
            &mut |_| {},
        )
        .err()
        .unwrap();
        let msg = e.to_string();
        assert!(msg.contains("/nonexistent/python3.99"), "{msg}");
        assert!(matches!(e, EnvError::InterpreterNotFound { .. }));
    }
}
