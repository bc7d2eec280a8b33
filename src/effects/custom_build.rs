//! `agent.custom_build_script` (or `CLEARML_AGENT_CUSTOM_BUILD_SCRIPT`): a user script that
//! builds the task's environment instead of the agent, as upstream's
//! `Worker.run_custom_build_script` (worker.py 4329).
//!
//! The script runs after the clone with `CLEARML_TASK_SCRIPT_ENTRY`,
//! `CLEARML_TASK_WORKING_DIR`, `CLEARML_VENV_PATH`, `CLEARML_GIT_ROOT`,
//! `CLEARML_AGENT_CUSTOM_BUILD_SCRIPT`, `CLEARML_CUSTOM_BUILD_TASK_CONFIG_JSON` (the task
//! document) and `CLEARML_CUSTOM_BUILD_OUTPUT` (a file it writes `{"binary",
//! "entry_point", "working_dir"}` into). A non-zero exit fails the task; a missing script,
//! no output, bad JSON, a missing field or a path that does not exist is a warning and the
//! agent builds the environment itself ([`CustomBuildOutcome::Skipped`]).

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::venv::{describe, run_logged, tail, tool};

/// What the script said to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomBuild {
    pub binary: PathBuf,
    pub entry_point: PathBuf,
    pub working_dir: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CustomBuildOutcome {
    Built(CustomBuild),
    /// Why the agent's own build is used instead (logged as a warning).
    Skipped(String),
}

#[derive(Debug, thiserror::Error)]
pub enum CustomBuildError {
    #[error("custom build script {script} failed with return code {code}\n{tail}")]
    Failed {
        script: String,
        code: i32,
        tail: String,
    },
    #[error("custom build script {script}: {detail}")]
    Run { script: String, detail: String },
}

/// The script's inputs.
pub struct CustomBuildInput<'a> {
    /// As configured: `~` and `$VAR`/`${VAR}` are expanded.
    pub script: &'a str,
    /// The task document (`tasks.get_by_id`), passed as compact JSON.
    pub task: &'a Value,
    pub entry_point: &'a str,
    pub working_dir: &'a str,
    pub venv_dir: &'a Path,
    pub git_root: &'a Path,
    /// Where the output file is created (the run's own folder).
    pub output_dir: &'a Path,
}

/// `~` and `$VAR` / `${VAR}` expanded from `env` (unknown variables are left as they are, as
/// Python's `os.path.expandvars`).
pub fn expand(path: &str, env: &dyn Fn(&str) -> Option<String>) -> String {
    let mut out = String::new();
    let chars: Vec<char> = path.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        if chars[i] == '$' {
            let (name, end) = if chars.get(i + 1) == Some(&'{') {
                match chars[i + 2..].iter().position(|&c| c == '}') {
                    Some(p) => (
                        chars[i + 2..i + 2 + p].iter().collect::<String>(),
                        i + 3 + p,
                    ),
                    None => (String::new(), i + 1),
                }
            } else {
                let n: String = chars[i + 1..]
                    .iter()
                    .take_while(|c| c.is_ascii_alphanumeric() || **c == '_')
                    .collect();
                let len = n.len();
                (n, i + 1 + len)
            };
            match (!name.is_empty()).then(|| env(&name)).flatten() {
                Some(v) => {
                    out.push_str(&v);
                    i = end;
                    continue;
                }
                None => {
                    out.extend(&chars[i..end.max(i + 1)]);
                    i = end.max(i + 1);
                    continue;
                }
            }
        }
        out.push(chars[i]);
        i += 1;
    }
    crate::config::expand_home(&out).display().to_string()
}

/// Runs the script (see the module doc), its output going to `log`.
pub fn run_custom_build_script(
    input: &CustomBuildInput,
    log: &mut dyn FnMut(&str),
) -> Result<CustomBuildOutcome, CustomBuildError> {
    let script = expand(input.script, &|k| std::env::var(k).ok());
    if !Path::new(&script).is_file() {
        return Ok(CustomBuildOutcome::Skipped(format!(
            "Build script {script} is not found"
        )));
    }
    log(&format!("Running custom build script {script}"));
    let run_err = |detail: String| CustomBuildError::Run {
        script: script.clone(),
        detail,
    };
    std::fs::create_dir_all(input.output_dir)
        .map_err(|e| run_err(format!("{}: {e}", input.output_dir.display())))?;
    let output = input.output_dir.join("custom_build_output.json");
    let _ = std::fs::remove_file(&output);
    std::fs::write(&output, "").map_err(|e| run_err(format!("{}: {e}", output.display())))?;
    let task_json = serde_json::to_string(input.task).unwrap_or_else(|_| "{}".into());
    let mut cmd = tool(&script);
    cmd.env("CLEARML_TASK_SCRIPT_ENTRY", input.entry_point)
        .env("CLEARML_TASK_WORKING_DIR", input.working_dir)
        .env("CLEARML_VENV_PATH", input.venv_dir)
        .env("CLEARML_GIT_ROOT", input.git_root)
        .env("CLEARML_AGENT_CUSTOM_BUILD_SCRIPT", &script)
        .env("CLEARML_CUSTOM_BUILD_TASK_CONFIG_JSON", task_json)
        .env("CLEARML_CUSTOM_BUILD_OUTPUT", &output)
        .current_dir(input.git_root);
    let command = describe(&cmd);
    let ran = run_logged(&mut cmd, log).map_err(|e| run_err(format!("`{command}`: {e}")))?;
    if !ran.status.success() {
        return Err(CustomBuildError::Failed {
            script,
            code: ran.status.code().unwrap_or(-1),
            tail: tail(&ran.lines),
        });
    }
    let text = std::fs::read_to_string(&output).unwrap_or_default();
    Ok(parse_output(&script, &output, &text))
}

/// Upstream's checks of the output file.
fn parse_output(script: &str, output: &Path, text: &str) -> CustomBuildOutcome {
    let skip = CustomBuildOutcome::Skipped;
    if text.trim().is_empty() {
        return skip(format!("Build script {script} did not return any output"));
    }
    let v: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            return skip(format!(
                "Failed parsing build script output JSON ({}): {e}",
                output.display()
            ))
        }
    };
    let field = |name: &str| v.get(name).and_then(Value::as_str).map(PathBuf::from);
    let mut got = Vec::new();
    for name in ["binary", "entry_point", "working_dir"] {
        match field(name) {
            Some(p) => got.push(p),
            None => return skip(format!("Build script output missing {name} field")),
        }
    }
    let (binary, entry_point, working_dir) = (got[0].clone(), got[1].clone(), got[2].clone());
    if !binary.is_file() {
        return skip(format!(
            "Invalid binary path returned from custom build script: {}",
            binary.display()
        ));
    }
    if !entry_point.is_file() {
        return skip(format!(
            "Invalid entrypoint path returned from custom build script: {}",
            entry_point.display()
        ));
    }
    if !working_dir.is_dir() {
        return skip(format!(
            "Invalid working dir returned from custom build script: {}",
            working_dir.display()
        ));
    }
    CustomBuildOutcome::Built(CustomBuild {
        binary,
        entry_point,
        working_dir,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn expands_home_and_variables() {
        let env = |k: &str| (k == "TOOLS").then(|| "/opt/tools".to_string());
        assert_eq!(expand("$TOOLS/build.sh", &env), "/opt/tools/build.sh");
        assert_eq!(expand("${TOOLS}/b", &env), "/opt/tools/b");
        assert_eq!(expand("$NOPE/b", &env), "$NOPE/b");
        let home = std::env::var("HOME").unwrap();
        assert_eq!(expand("~/b.sh", &env), format!("{home}/b.sh"));
    }

    fn script(dir: &Path, body: &str) -> PathBuf {
        let p = dir.join("build.sh");
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    #[test]
    fn the_script_gets_upstreams_variables_and_its_json_is_checked() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("repo");
        std::fs::create_dir_all(root.join("src")).unwrap();
        std::fs::write(root.join("src/main.py"), "print(1)\n").unwrap();
        let venv = d.path().join("venv");
        let s = script(
            d.path(),
            r#"echo "entry=$CLEARML_TASK_SCRIPT_ENTRY wd=$CLEARML_TASK_WORKING_DIR venv=$CLEARML_VENV_PATH"
echo "$CLEARML_CUSTOM_BUILD_TASK_CONFIG_JSON" > "$CLEARML_GIT_ROOT/task.json"
printf '{"binary": "/bin/sh", "entry_point": "%s/src/main.py", "working_dir": "%s/src"}' "$CLEARML_GIT_ROOT" "$CLEARML_GIT_ROOT" > "$CLEARML_CUSTOM_BUILD_OUTPUT""#,
        );
        let task = serde_json::json!({"id": "t1", "script": {"entry_point": "main.py"}});
        let input = CustomBuildInput {
            script: s.to_str().unwrap(),
            task: &task,
            entry_point: "main.py",
            working_dir: "src",
            venv_dir: &venv,
            git_root: &root,
            output_dir: &d.path().join("proc"),
        };
        let mut log = Vec::new();
        let out = run_custom_build_script(&input, &mut |l| log.push(l.to_string())).unwrap();
        assert_eq!(
            out,
            CustomBuildOutcome::Built(CustomBuild {
                binary: "/bin/sh".into(),
                entry_point: root.join("src/main.py"),
                working_dir: root.join("src"),
            })
        );
        assert!(
            log.iter()
                .any(|l| l == &format!("entry=main.py wd=src venv={}", venv.display())),
            "{log:?}"
        );
        let seen: Value =
            serde_json::from_str(&std::fs::read_to_string(root.join("task.json")).unwrap())
                .unwrap();
        assert_eq!(seen, task);

        // No output: skipped, the agent builds. A failing script fails the run.
        let quiet = script(d.path(), "exit 0");
        let input = CustomBuildInput {
            script: quiet.to_str().unwrap(),
            ..input
        };
        assert!(matches!(
            run_custom_build_script(&input, &mut |_| {}).unwrap(),
            CustomBuildOutcome::Skipped(why) if why.contains("did not return any output")
        ));
        let failing = script(d.path(), "echo broken >&2; exit 3");
        let input = CustomBuildInput {
            script: failing.to_str().unwrap(),
            ..input
        };
        let e = run_custom_build_script(&input, &mut |_| {}).unwrap_err();
        assert!(matches!(e, CustomBuildError::Failed { code: 3, .. }), "{e}");
        assert!(e.to_string().contains("broken"), "{e}");
        let input = CustomBuildInput {
            script: "/no/such/build.sh",
            ..input
        };
        assert!(matches!(
            run_custom_build_script(&input, &mut |_| {}).unwrap(),
            CustomBuildOutcome::Skipped(why) if why.contains("/no/such/build.sh")
        ));
    }

    #[test]
    fn output_checks() {
        let out = Path::new("/tmp/o.json");
        let skipped = |text: &str| match parse_output("s", out, text) {
            CustomBuildOutcome::Skipped(why) => why,
            other => panic!("{other:?}"),
        };
        assert!(skipped("not json").contains("Failed parsing"));
        assert!(
            skipped(r#"{"binary": "/bin/sh", "entry_point": "/bin/sh"}"#).contains("working_dir")
        );
        assert!(
            skipped(r#"{"binary": "/no/bin", "entry_point": "/bin/sh", "working_dir": "/"}"#)
                .contains("Invalid binary")
        );
        assert!(
            skipped(r#"{"binary": "/bin/sh", "entry_point": "/no/e.py", "working_dir": "/"}"#)
                .contains("Invalid entrypoint")
        );
        assert!(skipped(
            r#"{"binary": "/bin/sh", "entry_point": "/bin/sh", "working_dir": "/no/wd"}"#
        )
        .contains("Invalid working dir"));
    }
}
