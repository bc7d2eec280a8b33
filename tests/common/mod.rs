//! Shared helpers for the integration tests: the real binary, real child processes.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

/// The pinned Python clients' venv (`scripts/python-venv.sh`; `CLEARML_TEST_VENV` overrides).
pub fn python_venv() -> std::path::PathBuf {
    let venv = std::env::var_os("CLEARML_TEST_VENV")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/pyvenv"));
    assert!(
        venv.join("bin/clearml-agent").exists(),
        "the Python test venv is missing at {}: run scripts/python-venv.sh (scripts/test.sh does)",
        venv.display()
    );
    venv
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_clearml-agent")
}

/// A journal dir and an effects dir for one scenario.
pub struct Dirs {
    _tmp: tempfile::TempDir,
    pub journal: PathBuf,
    pub effects: PathBuf,
}

impl Dirs {
    pub fn new() -> Dirs {
        let tmp = tempfile::tempdir().unwrap();
        Dirs {
            journal: tmp.path().join("journal"),
            effects: tmp.path().join("effects"),
            _tmp: tmp,
        }
    }

    pub fn simulate_cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(bin());
        cmd.arg("simulate-run")
            .arg("--journal-dir")
            .arg(&self.journal)
            .arg("--effects-dir")
            .arg(&self.effects)
            .args(args)
            .env_remove("CLEARML_AGENT_FAILPOINTS");
        cmd
    }

    /// Run `clearml-agent journal ...` against this journal.
    pub fn journal(&self, args: &[&str]) -> Output {
        Command::new(bin())
            .arg("journal")
            .args(args)
            .arg("--journal-dir")
            .arg(&self.journal)
            .output()
            .unwrap()
    }

    /// Counts of each line in the simulated effects' durable log.
    pub fn effect_log(&self) -> BTreeMap<String, usize> {
        let text = std::fs::read_to_string(self.effects.join("effects.log")).unwrap_or_default();
        let mut counts = BTreeMap::new();
        for line in text.lines() {
            *counts.entry(line.to_string()).or_insert(0) += 1;
        }
        counts
    }
}

/// Run the child with a failpoint; when it reports the failpoint, `kill -9` it there.
/// Returns true if the failpoint was hit (and the child killed), false if it finished.
pub fn run_until_failpoint(mut cmd: Command, failpoints: &str) -> bool {
    let mut child = cmd
        .env("CLEARML_AGENT_FAILPOINTS", failpoints)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut hit = false;
    let mut other = String::new();
    for line in BufReader::new(stderr).lines() {
        let line = line.unwrap();
        if line.starts_with("FAILPOINT ") {
            hit = true;
            // std's Child::kill sends SIGKILL on unix: a real kill -9.
            child.kill().unwrap();
            break;
        }
        other.push_str(&line);
        other.push('\n');
    }
    let status = child.wait().unwrap();
    if !hit {
        assert!(
            status.success(),
            "child failed without a failpoint: {status}\n{other}"
        );
    } else {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(9), "child must die by SIGKILL");
    }
    hit
}

pub fn run_ok(mut cmd: Command) -> Output {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "command failed: {}\nstdout:{}\nstderr:{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}
pub mod agent;
pub mod imds;
pub mod proxy;
pub mod server;
pub mod web;
