//! Real environment builds against PyPI with the system `python3`: pip and uv, the cache
//! (hit, concurrent builders, eviction), and installer failures.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use clearml_agent::effects::venv::{
    build, freeze, is_complete, EnvError, EnvOutcome, EnvSettings, EnvSpec, Manager, MARKER,
};

fn settings(root: &Path) -> EnvSettings {
    EnvSettings {
        venvs_dir: root.join("venvs"),
        cache_dir: root.join("cache"),
        tools_dir: root.join("tools"),
        cache_enabled: true,
        max_entries: 10,
        free_space_threshold_gb: 0.0,
    }
}

fn spec(manager: Manager, reqs: &[&str]) -> EnvSpec {
    EnvSpec {
        python: "python3".into(),
        requirements: reqs.iter().map(|s| s.to_string()).collect(),
        manager,
        ..EnvSpec::default()
    }
}

fn run_build(
    s: &EnvSettings,
    spec: &EnvSpec,
    venv: &Path,
) -> (Result<EnvOutcome, EnvError>, Vec<String>) {
    let mut lines = Vec::new();
    let r = build(s, spec, venv, &mut |l: &str| lines.push(l.to_string()));
    (r, lines)
}

/// Import six with the venv's python; returns (six version, sys.prefix).
fn import_six(python: &Path) -> (String, PathBuf) {
    let out = Command::new(python)
        .args([
            "-c",
            "import six, sys; print(six.__version__); print(sys.prefix)",
        ])
        .env_remove("PYTHONPATH")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "import six failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let mut l = text.lines();
    (l.next().unwrap().into(), PathBuf::from(l.next().unwrap()))
}

/// Cache entries (64-hex folder names) in `cache_dir`.
fn entries(cache_dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(cache_dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().into_string().unwrap())
        .filter(|n| n.len() == 64 && e_is_hex(n))
        .collect();
    v.sort();
    v
}

fn e_is_hex(n: &str) -> bool {
    n.bytes().all(|b| b.is_ascii_hexdigit())
}

fn leftovers(cache_dir: &Path) -> Vec<String> {
    fs::read_dir(cache_dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().into_string().unwrap())
        .filter(|n| n.contains(".tmp-"))
        .collect()
}

fn show(lines: &[String]) -> String {
    lines.join("\n")
}

#[test]
fn pip_build_then_cache_hit() {
    let root = tempfile::tempdir().unwrap();
    let s = settings(root.path());
    let sp = spec(
        Manager::Pip,
        &["six==1.16.0  # pinned", "", "# just a comment"],
    );

    let first = s.venvs_dir.join("run1");
    let (r, log) = run_build(&s, &sp, &first);
    let out = r.unwrap_or_else(|e| panic!("{e}\n{}", show(&log)));
    assert!(!out.cache_hit);
    assert!(
        out.python_version.starts_with("3."),
        "{}",
        out.python_version
    );
    assert!(
        out.installed.iter().any(|l| l == "six==1.16.0"),
        "{:?}",
        out.installed
    );
    assert!(is_complete(&first));
    assert!(
        log.iter()
            .any(|l| l.contains("Installing 1 package with pip")),
        "{}",
        show(&log)
    );
    assert!(
        log.iter()
            .any(|l| l.starts_with("Installed 1 package with pip in ")),
        "{}",
        show(&log)
    );
    let (ver, prefix) = import_six(&out.python);
    assert_eq!(ver, "1.16.0");
    assert_eq!(prefix, first);
    assert_eq!(entries(&s.cache_dir).len(), 1);

    // Same requirements, spelled differently: a hit, with no installer run.
    let second = s.venvs_dir.join("run2");
    let sp2 = spec(Manager::Pip, &["Six == 1.16.0"]);
    let (r, log) = run_build(&s, &sp2, &second);
    let hit = r.unwrap_or_else(|e| panic!("{e}\n{}", show(&log)));
    assert!(hit.cache_hit, "{}", show(&log));
    assert!(
        log.iter().any(|l| l.contains("Using cached environment")),
        "{}",
        show(&log)
    );
    assert!(
        !log.iter()
            .any(|l| l.contains("Installing") || l.contains("Creating virtual")),
        "installer ran on a hit:\n{}",
        show(&log)
    );
    assert_eq!(hit.installed, out.installed);
    assert!(is_complete(&second));
    let (ver, prefix) = import_six(&hit.python);
    assert_eq!(ver, "1.16.0");
    assert_eq!(prefix, second, "the materialized venv is its own prefix");
    // pip inside the materialized venv still works (freeze runs it).
    let frozen = freeze(&hit.python, Manager::Pip, &s).unwrap();
    assert!(frozen.iter().any(|l| l == "six==1.16.0"), "{frozen:?}");
    assert_eq!(entries(&s.cache_dir).len(), 1);
    assert!(leftovers(&s.cache_dir).is_empty());

    // A venv without its marker (a crash mid-build) is not complete.
    fs::remove_file(second.join(MARKER)).unwrap();
    assert!(!is_complete(&second));
}

#[test]
fn concurrent_builders_of_one_key_build_once() {
    let root = tempfile::tempdir().unwrap();
    let s = settings(root.path());
    let sp = spec(Manager::Pip, &["six==1.15.0"]);
    let results: Vec<(Result<EnvOutcome, EnvError>, Vec<String>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = ["a", "b"]
            .iter()
            .map(|name| {
                let (s, sp) = (&s, &sp);
                let dir = s.venvs_dir.join(name);
                scope.spawn(move || run_build(s, sp, &dir))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut hits = 0;
    for (r, log) in &results {
        let out = r.as_ref().unwrap_or_else(|e| panic!("{e}\n{}", show(log)));
        hits += out.cache_hit as usize;
        assert_eq!(import_six(&out.python).0, "1.15.0");
    }
    assert_eq!(hits, 1, "exactly one builder, the other hits");
    assert_eq!(entries(&s.cache_dir).len(), 1);
}

#[test]
fn uv_build_installs_uv_and_keeps_pip() {
    let root = tempfile::tempdir().unwrap();
    let mut s = settings(root.path());
    s.cache_enabled = false;
    let sp = spec(Manager::Uv, &["six"]);
    let venv = s.venvs_dir.join("uv1");
    let (r, log) = run_build(&s, &sp, &venv);
    let out = r.unwrap_or_else(|e| panic!("{e}\n{}", show(&log)));
    assert!(!out.cache_hit);
    assert!(
        log.iter().any(|l| l.contains("cache not used")),
        "{}",
        show(&log)
    );
    let uv_on_path = Command::new("uv").arg("--version").output().is_ok();
    if !uv_on_path {
        assert!(
            log.iter().any(|l| l.contains("installing it into")),
            "{}",
            show(&log)
        );
        assert!(s.tools_dir.join("uv-venv/bin/uv").is_file());
    }
    assert!(
        out.installed.iter().any(|l| l.starts_with("six==")),
        "{:?}",
        out.installed
    );
    assert!(
        log.iter()
            .any(|l| l.starts_with("Installed 1 package with uv in ")),
        "{}",
        show(&log)
    );
    import_six(&out.python);
    // --seed: the venv has pip, so `python -m pip` works for the task.
    let pip = Command::new(&out.python)
        .args(["-m", "pip", "--version"])
        .output()
        .unwrap();
    assert!(
        pip.status.success(),
        "{}",
        String::from_utf8_lossy(&pip.stderr)
    );
    assert!(is_complete(&venv));

    // uv's unknown-package error names the package.
    let bad = spec(
        Manager::Uv,
        &["this-package-does-not-exist-clearml-rs==1.0"],
    );
    let (r, log) = run_build(&s, &bad, &s.venvs_dir.join("uv2"));
    let e = r.expect_err("an unknown package must fail");
    let msg = e.to_string();
    assert!(
        matches!(
            e,
            EnvError::Install {
                manager: Manager::Uv,
                ..
            }
        ),
        "{msg}"
    );
    assert!(
        msg.contains("this-package-does-not-exist-clearml-rs"),
        "{msg}"
    );
    assert!(
        msg.contains("not found in the package registry"),
        "{msg}\n{}",
        show(&log)
    );
    assert!(!is_complete(&s.venvs_dir.join("uv2")));
}

#[test]
fn pip_unknown_package_fails_naming_it() {
    let root = tempfile::tempdir().unwrap();
    let s = settings(root.path());
    let mut sp = spec(
        Manager::Pip,
        &["this-package-does-not-exist-clearml-rs==1.0"],
    );
    sp.extra_index_urls = vec!["https://alice:s3cret@127.0.0.1:9/simple".into()];
    let venv = s.venvs_dir.join("bad");
    let (r, log) = run_build(&s, &sp, &venv);
    let e = r.expect_err("an unknown package must fail");
    let msg = e.to_string();
    assert!(
        matches!(
            e,
            EnvError::Install {
                manager: Manager::Pip,
                ..
            }
        ),
        "{msg}"
    );
    assert!(
        msg.contains("No matching distribution found for this-package-does-not-exist-clearml-rs"),
        "{msg}"
    );
    assert!(!msg.contains("s3cret"), "credentials leaked: {msg}");
    assert!(
        !log.iter().any(|l| l.contains("s3cret")),
        "credentials leaked: {}",
        show(&log)
    );
    assert!(msg.lines().count() < 40, "bounded: {msg}");
    assert!(!is_complete(&venv));
    assert!(
        entries(&s.cache_dir).is_empty(),
        "a failed build is not cached"
    );
    assert!(leftovers(&s.cache_dir).is_empty());
}

#[test]
fn cache_evicts_least_recently_used() {
    let root = tempfile::tempdir().unwrap();
    let mut s = settings(root.path());
    s.max_entries = 2;
    let mut made = Vec::new();
    for (i, v) in ["1.14.0", "1.15.0", "1.16.0"].iter().enumerate() {
        let req = format!("six=={v}");
        let (r, log) = run_build(
            &s,
            &spec(Manager::Pip, &[&req]),
            &s.venvs_dir.join(format!("r{i}")),
        );
        let out = r.unwrap_or_else(|e| panic!("{e}\n{}", show(&log)));
        assert!(!out.cache_hit);
        made.push(entries(&s.cache_dir));
    }
    let left = entries(&s.cache_dir);
    assert_eq!(left.len(), 2, "{left:?}");
    // The first entry (least recently used) is the one that went.
    let first = &made[0][0];
    assert!(!left.contains(first), "{left:?}");
    assert!(leftovers(&s.cache_dir).is_empty());

    // Free space below the threshold: everything but the entry just made goes.
    s.free_space_threshold_gb = 1e12;
    let (r, log) = run_build(
        &s,
        &spec(Manager::Pip, &["six==1.13.0"]),
        &s.venvs_dir.join("r3"),
    );
    r.unwrap_or_else(|e| panic!("{e}\n{}", show(&log)));
    let after = entries(&s.cache_dir);
    assert_eq!(after.len(), 1, "{after:?}\n{}", show(&log));
    assert!(!left.contains(&after[0]));
    assert!(log.iter().any(|l| l.contains("below")), "{}", show(&log));
}

#[test]
fn missing_interpreter_is_named() {
    let root = tempfile::tempdir().unwrap();
    let s = settings(root.path());
    let mut sp = spec(Manager::Pip, &["six"]);
    sp.python = "python3.99-not-installed".into();
    let (r, _) = run_build(&s, &sp, &s.venvs_dir.join("x"));
    let e = r.expect_err("no such interpreter");
    assert!(matches!(e, EnvError::InterpreterNotFound { .. }));
    assert!(e.to_string().contains("python3.99-not-installed"), "{e}");
}
