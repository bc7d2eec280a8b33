//! The agent's command line: `config` hides secrets and reports bad files precisely; every
//! command has `--help`.

mod common;

use std::process::Command;

fn agent(args: &[&str]) -> std::process::Output {
    Command::new(common::bin())
        .args(args)
        .env_remove("CLEARML_CONFIG_FILE")
        .env(
            "HOME",
            std::env::temp_dir().join("clearml-agent-cli-test-home"),
        )
        .env("CLEARML_API_SECRET_KEY", "s3cr3t-value-that-must-not-show")
        .env("CLEARML_API_ACCESS_KEY", "KEY123")
        .env("CLEARML_API_HOST", "http://example:8008")
        .output()
        .unwrap()
}

#[test]
fn config_merges_the_environment_and_hides_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("clearml.conf");
    std::fs::write(
        &conf,
        "agent {\n  git_user: me\n  git_pass: \"hunter2\"\n  package_manager.type: pip\n}\n",
    )
    .unwrap();
    let out = agent(&["config", "--config-file", conf.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("api.api_server = \"http://example:8008\""),
        "{text}"
    );
    assert!(
        text.contains("agent.package_manager.type = \"pip\""),
        "{text}"
    );
    assert!(
        !text.contains("hunter2") && !text.contains("s3cr3t"),
        "secrets hidden: {text}"
    );
    let out = agent(&["config", "--json", "--config-file", conf.to_str().unwrap()]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["agent"]["git_user"], "me");
    assert_ne!(json["agent"]["git_pass"], "hunter2");
}

#[test]
fn bad_config_names_the_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("clearml.conf");
    std::fs::write(&conf, "agent {\n  worker_name: x\n  broken: [1, 2\n}\n").unwrap();
    let out = agent(&["config", "--config-file", conf.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("clearml.conf") && err.contains("line"),
        "{err}"
    );
    std::fs::write(&conf, "agent.package_manager.type: conda\n").unwrap();
    let out = agent(&["daemon", "--config-file", conf.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("agent.package_manager.type"), "{err}");
}

#[test]
fn every_command_has_help() {
    for cmd in [
        &["daemon"][..],
        &["execute"],
        &["config"],
        &["server"],
        &["journal", "inspect"],
    ] {
        let mut args = cmd.to_vec();
        args.push("--help");
        let out = agent(&args);
        assert!(out.status.success(), "{cmd:?}");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("Usage"),
            "{cmd:?}"
        );
    }
}

/// Issue 9, item 14: a deeply nested clearml.conf or a 200k-part dotted key is a clear error
/// naming the file and line, never a stack overflow (exit 134).
#[test]
fn hostile_config_nesting_is_an_error_naming_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("clearml.conf");
    for text in [
        format!(
            "agent {{\n  x: {}1{}\n}}\n",
            "{a: ".repeat(200_000),
            "}".repeat(200_000)
        ),
        format!("# comment\n{} = 1\n", vec!["k"; 200_000].join(".")),
    ] {
        std::fs::write(&conf, text).unwrap();
        let out = agent(&["config", "--config-file", conf.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "a clean error exit: {err}");
        assert!(
            err.contains(&format!("config file {}: line 2", conf.display())),
            "{err}"
        );
    }
}

/// Diagnostics go through `tracing`: `--log-format json` makes each stderr line a JSON object
/// with a level and a message (here: the start-up probe of a server that is not there).
#[test]
fn diagnostics_can_be_json_lines_for_log_collectors() {
    use std::io::BufRead;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let home = tempfile::tempdir().unwrap();
    let mut child = Command::new(common::bin())
        .args(["--log-format", "json", "daemon", "--queue", "q"])
        .env_remove("CLEARML_CONFIG_FILE")
        .env("HOME", home.path())
        .env("CLEARML_API_HOST", format!("http://127.0.0.1:{port}"))
        .env("CLEARML_API_ACCESS_KEY", "KEY")
        .env("CLEARML_API_SECRET_KEY", "SECRET")
        .env("CLEARML_AGENT__AGENT__PREEMPTION__ENABLED", "false")
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let line = std::io::BufReader::new(child.stderr.take().unwrap())
        .lines()
        .next()
        .unwrap()
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let v: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
    assert_eq!(v["level"], "WARN", "{line}");
    assert!(
        v["fields"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("has not answered yet")),
        "{line}"
    );
    let help = agent(&["daemon", "--help"]);
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(
        text.contains("--log-level") && text.contains("--log-format"),
        "{text}"
    );
}
