//! Task environments as the Python agent builds them, for real (PyPI, uv, pip, poetry, git):
//! per-folder requirements.txt with `-r`, priority/post order read from the install log,
//! deferred local packages, pinned pip and extra flags, the URL download cache, git
//! credentials for `git+` requirements, and poetry / uv project repositories.

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use clearml_agent::effects::env_plan::{build_planned, plan_environment, EnvConfig, TaskEnvInput};
use clearml_agent::effects::project::ProjectMode;
use clearml_agent::effects::requirements::{
    restore_freeze, DirTree, EntryPoint, GitCredentials, RequirementsPolicy, TaskRequirements,
};
use clearml_agent::effects::venv::{install_local, EnvSettings, EnvSpec, Manager};

/// uv and poetry are installed once per checkout, here, and reused by later runs.
fn tools_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/agent-tools")
}

fn settings(root: &Path, cache: bool) -> EnvSettings {
    EnvSettings {
        venvs_dir: root.join("venvs"),
        cache_dir: root.join("cache"),
        tools_dir: tools_dir(),
        cache_enabled: cache,
        max_entries: 10,
        free_space_threshold_gb: 0.0,
    }
}

fn base(manager: Manager) -> EnvSpec {
    EnvSpec {
        manager,
        ..EnvSpec::default()
    }
}

fn write(root: &Path, files: &[(&str, &str)]) {
    for (rel, text) in files {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, text).unwrap();
    }
}

fn python_ok(python: &Path, code: &str) -> String {
    let out = Command::new(python)
        .args(["-c", code])
        .env_remove("PYTHONPATH")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{code}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Index of the first log line containing `needle`.
#[track_caller]
fn at(log: &[String], needle: &str) -> usize {
    log.iter()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("{needle:?} not in the log:\n{}", log.join("\n")))
}

fn task(pip: Option<&str>, wd: &str, entry: &str) -> TaskEnvInput {
    TaskEnvInput {
        requirements: TaskRequirements {
            pip: pip.map(str::to_string),
            org_pip: None,
        },
        entry: EntryPoint {
            working_dir: Some(wd.into()),
            entry_point: Some(entry.into()),
        },
        binary: Some("python3".into()),
    }
}

#[test]
fn nested_requirements_install_root_first_with_priority_and_post_alone() {
    let d = tempfile::tempdir().unwrap();
    let repo = d.path().join("repo");
    write(
        &repo,
        &[
            ("requirements.txt", "six==1.16.0\n"),
            (
                "src/requirements.txt",
                "# the app's packages\n-r common.txt\nattrs==23.2.0\nidna==3.7\n-e ./localpkg\n",
            ),
            ("src/common.txt", "packaging==24.0\n"),
            ("src/app/train.py", "print('hi')\n"),
            ("other/requirements.txt", "not-on-the-way==0.0.1\n"),
            (
                "localpkg/pyproject.toml",
                "[build-system]\nrequires = [\"setuptools>=61\"]\nbuild-backend = \"setuptools.build_meta\"\n\
                 [project]\nname = \"localpkg\"\nversion = \"0.1\"\n",
            ),
            ("localpkg/localpkg/__init__.py", "VALUE = 7\n"),
        ],
    );
    let cfg = EnvConfig {
        policy: RequirementsPolicy {
            priority_packages: vec!["idna".into()],
            post_packages: vec!["packaging".into()],
            ..Default::default()
        },
        download_cache: None,
        ..EnvConfig::default()
    };
    let s = settings(d.path(), true);
    let mut tree = DirTree(&repo);
    let planned = plan_environment(
        &cfg,
        &base(Manager::Uv),
        &GitCredentials::default(),
        &task(None, "src", "app/train.py"),
        Some(&mut tree),
        None,
        &d.path().join("scratch"),
    )
    .unwrap();
    let mut log = Vec::new();
    let venv = d.path().join("venvs/run1");
    let out = build_planned(&s, &planned, &venv, &mut |l| log.push(l.to_string()))
        .unwrap_or_else(|e| panic!("{e}\n{}", log.join("\n")));

    // Root first, then src/ (whose -r was read in place); other/ is not on the way.
    let root = at(
        &log,
        "Installing 1 package with uv (requirements.txt): six==1.16.0",
    );
    let prio = at(
        &log,
        "Installing 1 priority package with uv (src/requirements.txt): idna==3.7",
    );
    let main = at(
        &log,
        "Installing 2 packages with uv (src/requirements.txt): attrs==23.2.0, idna==3.7",
    );
    let post = at(
        &log,
        "Installing 1 post package with uv (src/requirements.txt): packaging==24.0",
    );
    assert!(
        root < prio && prio < main && main < post,
        "{}",
        log.join("\n")
    );
    // uv's own lines show what each call installed: idna alone, before attrs; packaging after.
    assert!(at(&log, "+ idna==3.7") < at(&log, "+ attrs==23.2.0"));
    assert!(at(&log, "+ attrs==23.2.0") < at(&log, "+ packaging==24.0"));
    assert!(!log.iter().any(|l| l.contains("not-on-the-way")));
    for pin in [
        "six==1.16.0",
        "attrs==23.2.0",
        "idna==3.7",
        "packaging==24.0",
    ] {
        assert!(
            out.installed.iter().any(|l| l == pin),
            "{pin}: {:?}",
            out.installed
        );
    }
    // The local package waits for the checkout, then installs from it.
    assert_eq!(out.deferred, vec!["-e ./localpkg"]);
    assert!(log
        .iter()
        .any(|l| l.contains("Deferred until the repository is checked out")));
    let frozen = install_local(
        &s,
        &planned.spec,
        &planned.options,
        &venv,
        &repo,
        &out.deferred,
        &mut |l| log.push(l.to_string()),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", log.join("\n")));
    assert!(frozen.iter().any(|l| l.contains("localpkg")), "{frozen:?}");
    let restored = restore_freeze(&frozen, &planned.selection.all_lines(), &[]);
    assert!(
        restored.contains(&"-e ./localpkg".to_string()),
        "{restored:?}"
    );
    assert_eq!(
        python_ok(
            &out.python,
            "import localpkg, six, attrs; print(localpkg.VALUE)"
        ),
        "7"
    );
}

#[test]
fn pip_is_pinned_and_extra_flags_reach_every_install() {
    let d = tempfile::tempdir().unwrap();
    let cfg = EnvConfig {
        pip_version: vec!["==24.0".into()],
        extra_pip_flags: vec!["--no-compile".into()],
        download_cache: None,
        ..EnvConfig::default()
    };
    let planned = plan_environment(
        &cfg,
        &base(Manager::Pip),
        &GitCredentials::default(),
        &task(Some("six==1.16.0\n"), ".", "t.py"),
        None,
        None,
        d.path(),
    )
    .unwrap();
    let mut log = Vec::new();
    let out = build_planned(
        &settings(d.path(), false),
        &planned,
        &d.path().join("v"),
        &mut |l| log.push(l.to_string()),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", log.join("\n")));
    assert!(log
        .iter()
        .any(|l| l.contains("Pinning pip in the environment: pip==24.0")));
    let version = python_ok(&out.python, "import pip; print(pip.__version__)");
    assert_eq!(version, "24.0");
    // Both pip calls (the pin and the packages) carry the flag.
    let runs: Vec<&String> = log
        .iter()
        .filter(|l| l.contains("-m pip install"))
        .collect();
    assert_eq!(runs.len(), 2, "{}", log.join("\n"));
    assert!(runs.iter().all(|l| l.contains("--no-compile")), "{runs:?}");
    assert!(out.installed.iter().any(|l| l == "six==1.16.0"));
}

/// A tiny HTTP server on loopback: `answer(request head) -> (status line, headers, body)`.
fn http_server(
    answer: impl Fn(&str) -> (String, Vec<(String, String)>, Vec<u8>) + Send + 'static,
) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut head = String::new();
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                head.push_str(&line);
            }
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap_or(0))
                })
                .unwrap_or(0);
            let mut body = vec![0; len];
            let _ = reader.read_exact(&mut body);
            let (status, headers, body) = answer(&head);
            let mut out = stream;
            let mut text = format!(
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n",
                body.len()
            );
            for (k, v) in headers {
                text.push_str(&format!("{k}: {v}\r\n"));
            }
            text.push_str("\r\n");
            let _ = out.write_all(text.as_bytes());
            let _ = out.write_all(&body);
        }
    });
    port
}

/// A valid pure-python wheel `tinyw-0.1` (module `tinyw`, VALUE = 42).
fn tiny_wheel(path: &Path) {
    let script = r#"
import base64, hashlib, sys, zipfile
files = {
    "tinyw/__init__.py": b"VALUE = 42\n",
    "tinyw-0.1.dist-info/METADATA": b"Metadata-Version: 2.1\nName: tinyw\nVersion: 0.1\n",
    "tinyw-0.1.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
}
record = []
with zipfile.ZipFile(sys.argv[1], "w") as z:
    for name, data in files.items():
        z.writestr(name, data)
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(data)}")
    record.append("tinyw-0.1.dist-info/RECORD,,")
    z.writestr("tinyw-0.1.dist-info/RECORD", "\n".join(record) + "\n")
"#;
    let st = Command::new("python3")
        .args(["-c", script])
        .arg(path)
        .status()
        .unwrap();
    assert!(st.success());
}

#[test]
fn url_wheels_are_downloaded_once_and_the_freeze_names_the_url() {
    let d = tempfile::tempdir().unwrap();
    let wheel = d.path().join("tinyw-0.1-py3-none-any.whl");
    tiny_wheel(&wheel);
    let bytes = fs::read(&wheel).unwrap();
    let gets = Arc::new(Mutex::new(0));
    let g = gets.clone();
    let port = http_server(move |head| {
        if head.starts_with("GET /wheels/tinyw-0.1-py3-none-any.whl") {
            *g.lock().unwrap() += 1;
            ("200 OK".into(), vec![], bytes.clone())
        } else {
            ("404 Not Found".into(), vec![], b"no".to_vec())
        }
    });
    let url = format!("http://127.0.0.1:{port}/wheels/tinyw-0.1-py3-none-any.whl");
    let cache = d.path().join("pip-download-cache/cpu");
    let cfg = EnvConfig {
        download_cache: Some(cache.clone()),
        ..EnvConfig::default()
    };
    let pip = format!("six==1.16.0\n{url}\n");
    for run in ["a", "b"] {
        let planned = plan_environment(
            &cfg,
            &base(Manager::Uv),
            &GitCredentials::default(),
            &task(Some(&pip), ".", "t.py"),
            None,
            None,
            d.path(),
        )
        .unwrap();
        let mut log = Vec::new();
        // The venv cache is off: both runs really install, the second from the file.
        let out = build_planned(
            &settings(d.path(), false),
            &planned,
            &d.path().join(run),
            &mut |l| log.push(l.to_string()),
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", log.join("\n")));
        assert_eq!(
            python_ok(&out.python, "import tinyw; print(tinyw.VALUE)"),
            "42"
        );
        let file = format!(
            "file://{}",
            cache.join("tinyw-0.1-py3-none-any.whl").display()
        );
        assert_eq!(out.downloads, vec![(file, url.clone())]);
        let restored = restore_freeze(
            &out.installed,
            &planned.selection.all_lines(),
            &out.downloads,
        );
        assert!(
            restored.contains(&url),
            "{restored:?} from {:?}",
            out.installed
        );
        assert!(
            !restored.iter().any(|l| l.contains("file://")),
            "{restored:?}"
        );
        if run == "b" {
            assert!(
                log.iter()
                    .any(|l| l.contains("from the pip download cache")),
                "{}",
                log.join("\n")
            );
        }
    }
    assert_eq!(*gets.lock().unwrap(), 1, "the wheel is fetched once");
    assert!(cache.join("tinyw-0.1-py3-none-any.whl").is_file());
}

#[test]
fn git_credentials_reach_the_git_server_and_never_the_log() {
    let d = tempfile::tempdir().unwrap();
    let seen: Arc<Mutex<Vec<String>>> = Arc::new(Mutex::new(Vec::new()));
    let s2 = seen.clone();
    // A git smart-HTTP endpoint that insists on credentials, then has no such repository.
    let port = http_server(move |head| {
        let auth = head
            .lines()
            .find_map(|l| l.strip_prefix("Authorization: Basic "))
            .map(str::to_string);
        match auth {
            None => (
                "401 Unauthorized".into(),
                vec![("WWW-Authenticate".into(), "Basic realm=\"git\"".into())],
                vec![],
            ),
            Some(a) => {
                s2.lock().unwrap().push(a);
                ("404 Not Found".into(), vec![], b"no such repo".to_vec())
            }
        }
    });
    let creds = GitCredentials {
        user: Some("robot".into()),
        pass: Some("s3cret-T0ken".into()),
        host: None,
    };
    let line = format!("mylib @ git+http://127.0.0.1:{port}/org/mylib.git@main");
    let cfg = EnvConfig {
        download_cache: None,
        ..EnvConfig::default()
    };
    let planned = plan_environment(
        &cfg,
        &base(Manager::Pip),
        &creds,
        &task(Some(&format!("six==1.16.0\n{line}\n")), ".", "t.py"),
        None,
        None,
        d.path(),
    )
    .unwrap();
    let mut log = Vec::new();
    let err = build_planned(
        &settings(d.path(), false),
        &planned,
        &d.path().join("v"),
        &mut |l| log.push(l.to_string()),
    )
    .expect_err("the repository does not exist");
    use base64::Engine;
    let expected = base64::engine::general_purpose::STANDARD.encode("robot:s3cret-T0ken");
    assert!(
        seen.lock().unwrap().iter().any(|a| a.trim() == expected),
        "the server never saw the credentials: {:?}\n{}",
        seen.lock().unwrap(),
        log.join("\n")
    );
    // The VCS line ran alone, after the main step.
    assert!(at(&log, "Installing 1 package with pip") < at(&log, "Installing 1 external package"));
    let all = format!("{err}\n{}", log.join("\n"));
    assert!(!all.contains("s3cret-T0ken"), "{all}");
    assert!(all.contains("mylib"), "{err}");
}

/// Runs `tool args` in `dir`, asserting success.
fn run_in(dir: &Path, tool: &Path, args: &[&str]) {
    let out = Command::new(tool)
        .args(args)
        .current_dir(dir)
        .env("UV_PYTHON_DOWNLOADS", "never")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{} {args:?}: {}{}",
        tool.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Builds the project env of `repo` twice from its files (no checkout: dependencies only,
/// cached), then once from the checkout (the project installed too).
fn project_builds(
    repo: &Path,
    mode: ProjectMode,
    manager: Manager,
    import_dep: &str,
    package: &str,
) {
    let d = tempfile::tempdir().unwrap();
    let cfg = EnvConfig {
        project_mode: mode,
        download_cache: None,
        ..EnvConfig::default()
    };
    let s = settings(d.path(), true);
    // The task's own package list is ignored in project mode.
    let t = task(
        Some("this-package-does-not-exist-clearml-rs==1\n"),
        ".",
        "main.py",
    );
    let mut hits = Vec::new();
    for run in ["a", "b"] {
        let mut tree = DirTree(repo);
        let planned = plan_environment(
            &cfg,
            &base(manager),
            &GitCredentials::default(),
            &t,
            Some(&mut tree),
            None,
            &d.path().join(format!("scratch-{run}")),
        )
        .unwrap();
        assert!(planned.options.project.is_some(), "{:?}", planned.notes);
        let mut log = Vec::new();
        let out = build_planned(&s, &planned, &d.path().join(run), &mut |l| {
            log.push(l.to_string())
        })
        .unwrap_or_else(|e| panic!("{e}\n{}", log.join("\n")));
        python_ok(&out.python, &format!("import {import_dep}"));
        let own = Command::new(&out.python)
            .args(["-c", &format!("import {package}")])
            .current_dir(d.path())
            .env_remove("PYTHONPATH")
            .output()
            .unwrap();
        assert!(
            !own.status.success(),
            "deps-only build installed the project"
        );
        hits.push(out.cache_hit);
    }
    assert_eq!(
        hits,
        vec![false, true],
        "the second build comes from the cache"
    );
    let mut tree = DirTree(repo);
    let planned = plan_environment(
        &cfg,
        &base(manager),
        &GitCredentials::default(),
        &t,
        Some(&mut tree),
        Some(repo),
        d.path(),
    )
    .unwrap();
    let mut log = Vec::new();
    let out = build_planned(&s, &planned, &d.path().join("c"), &mut |l| {
        log.push(l.to_string())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", log.join("\n")));
    assert!(!out.cache_hit);
    python_ok(&out.python, &format!("import {import_dep}, {package}"));
}

#[test]
fn a_uv_lock_repository_builds_its_environment() {
    let d = tempfile::tempdir().unwrap();
    let repo = d.path().join("repo");
    write(
        &repo,
        &[
            (
                "pyproject.toml",
                "[project]\nname = \"demo-uv\"\nversion = \"0.1.0\"\nrequires-python = \">=3.9\"\n\
                 dependencies = [\"six==1.16.0\"]\n\n[build-system]\nrequires = [\"hatchling\"]\n\
                 build-backend = \"hatchling.build\"\n\n[tool.hatch.build.targets.wheel]\npackages = [\"demo_uv\"]\n",
            ),
            ("demo_uv/__init__.py", "import six\n"),
            ("main.py", "import demo_uv\n"),
        ],
    );
    // The repository's lock file, made by uv itself.
    let s = settings(d.path(), false);
    let mut log = Vec::new();
    let planned = plan_environment(
        &EnvConfig::default(),
        &base(Manager::Uv),
        &GitCredentials::default(),
        &task(Some("six\n"), ".", "t.py"),
        None,
        None,
        d.path(),
    )
    .unwrap();
    // Any uv build puts uv into the shared tools dir (or finds it on PATH).
    build_planned(&s, &planned, &d.path().join("bootstrap"), &mut |l| {
        log.push(l.to_string())
    })
    .unwrap();
    let uv = which("uv").unwrap_or_else(|| tools_dir().join("uv-venv/bin/uv"));
    run_in(&repo, &uv, &["lock"]);
    assert!(repo.join("uv.lock").is_file());
    project_builds(
        &repo,
        ProjectMode {
            poetry: false,
            uv: true,
        },
        Manager::Uv,
        "six",
        "demo_uv",
    );
}

#[test]
fn a_poetry_repository_builds_its_environment() {
    let d = tempfile::tempdir().unwrap();
    let repo = d.path().join("repo");
    write(
        &repo,
        &[
            (
                "pyproject.toml",
                "[project]\nname = \"demo-poetry\"\nversion = \"0.1.0\"\nrequires-python = \">=3.9\"\n\
                 dependencies = [\"six==1.16.0\"]\n\n[tool.poetry]\npackages = [{ include = \"demo_poetry\" }]\n\n\
                 # This machine's PyPI mirror serves only the simple API.\n\
                 [[tool.poetry.source]]\nname = \"pypi-simple\"\nurl = \"https://pypi.org/simple/\"\npriority = \"primary\"\n\n\
                 [build-system]\nrequires = [\"poetry-core>=2.0\"]\nbuild-backend = \"poetry.core.masonry.api\"\n",
            ),
            ("demo_poetry/__init__.py", "import six\n"),
        ],
    );
    // A first build from the checkout installs poetry (into the shared tools dir) and
    // writes the repository's poetry.lock, as `poetry install` does.
    let mode = ProjectMode {
        poetry: true,
        uv: false,
    };
    let cfg = EnvConfig {
        project_mode: mode,
        download_cache: None,
        ..EnvConfig::default()
    };
    let mut tree = DirTree(&repo);
    let planned = plan_environment(
        &cfg,
        &base(Manager::Pip),
        &GitCredentials::default(),
        &task(None, ".", "main.py"),
        Some(&mut tree),
        Some(&repo),
        d.path(),
    )
    .unwrap();
    let mut log = Vec::new();
    build_planned(
        &settings(d.path(), false),
        &planned,
        &d.path().join("first"),
        &mut |l| log.push(l.to_string()),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", log.join("\n")));
    assert!(repo.join("poetry.lock").is_file(), "{}", log.join("\n"));
    project_builds(&repo, mode, Manager::Pip, "six", "demo_poetry");
}

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

#[test]
fn a_missing_interpreter_fails_naming_it() {
    let d = tempfile::tempdir().unwrap();
    let cfg = EnvConfig {
        python_binary: Some("/opt/nowhere/bin/python3.42".into()),
        ignore_requested_python_version: true,
        download_cache: None,
        ..EnvConfig::default()
    };
    let planned = plan_environment(
        &cfg,
        &base(Manager::Uv),
        &GitCredentials::default(),
        &task(Some("six\n"), ".", "t.py"),
        None,
        None,
        d.path(),
    )
    .unwrap();
    let e = build_planned(
        &settings(d.path(), false),
        &planned,
        &d.path().join("v"),
        &mut |_| {},
    )
    .unwrap_err();
    assert!(e.to_string().contains("/opt/nowhere/bin/python3.42"), "{e}");
}
