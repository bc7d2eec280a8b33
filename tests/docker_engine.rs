//! Docker mode against the real Docker Engine (API over the unix socket): containers from the
//! locally built test image, output in a mounted log file, exit codes and stops from the
//! engine, re-attach by label, pulls from a local registry, the bootstrap script building and
//! reusing a venv, and no secret in what `docker inspect` shows. Skips (saying so) only when
//! the machine has no Docker socket at all.

#[path = "common/docker.rs"]
mod docker;

use std::fs;
use std::path::Path;
use std::time::Duration;

use clearml_agent::effects::docker::args::{parse, tokens_from_str};
use clearml_agent::effects::docker::bootstrap::{self, Bootstrap, Entry, PipSettings, PythonEnv};
use clearml_agent::effects::docker::spec::{
    bootstrap_command, container_name, labels, layout, logged_command, run_labels, BindMount,
    ContainerSpec,
};
use clearml_agent::effects::docker::{ContainerStatus, DockerError, Engine};
use docker::{
    engine_and_cleanup, engine_or_skip, read_lines_from, run_id, test_image, wait_until, Cleanup,
    Registry,
};

const LONG: Duration = Duration::from_secs(300);

fn s(items: &[&str]) -> Vec<String> {
    items.iter().map(|x| x.to_string()).collect()
}

/// A container of the test image running `program` with its output in `<io>/output.log`.
fn logged_spec(run: &str, io: &Path, program: &[&str]) -> ContainerSpec {
    ContainerSpec {
        image: test_image().to_string(),
        cmd: logged_command(layout::OUTPUT_LOG, &s(program)),
        env: vec![("CLEARML_TASK_ID".into(), "task-1".into())],
        labels: run_labels(run, "task-1", "worker-test"),
        mounts: vec![BindMount::rw(io, layout::IO_DIR)],
        init: true,
        ..ContainerSpec::default()
    }
}

fn create_and_start(
    engine: &Engine,
    cleanup: &mut Cleanup,
    run: &str,
    spec: &ContainerSpec,
) -> String {
    let name = container_name(run);
    let _ = engine.remove(&name);
    let id = engine
        .create(Some(&name), spec.create_body().unwrap())
        .unwrap();
    cleanup.ids.push(id.clone());
    engine.start(&id).unwrap();
    id
}

fn output(io: &Path) -> String {
    fs::read_to_string(io.join("output.log")).unwrap_or_default()
}

#[test]
fn engine_answers_with_a_negotiated_api_version() {
    let Some(engine) = engine_or_skip("engine_answers_with_a_negotiated_api_version") else {
        return;
    };
    let v = engine.version().unwrap();
    assert!(!v.version.is_empty());
    let num = |s: &str| -> (u32, u32) {
        let (a, b) = s.split_once('.').unwrap();
        (a.parse().unwrap(), b.parse().unwrap())
    };
    assert!(num(&v.negotiated) <= num(&v.api_version), "{v:?}");
    assert!(engine
        .image(test_image())
        .unwrap()
        .unwrap()
        .id
        .starts_with("sha256:"));
}

#[test]
fn output_lands_in_the_log_file_and_the_exit_code_comes_from_the_engine() {
    let Some((engine, mut cleanup)) = engine_and_cleanup("output_lands_in_the_log_file") else {
        return;
    };
    let io = tempfile::tempdir().unwrap();
    let run = run_id("exit3");
    let script = "printf 'first line\\n'; printf 'to stderr\\n' >&2; printf 'no newline'; exit 3";
    let id = create_and_start(
        &engine,
        &mut cleanup,
        &run,
        &logged_spec(&run, io.path(), &["sh", "-c", script]),
    );
    assert_eq!(engine.wait(&id, LONG).unwrap(), Some(3));
    let state = engine.inspect(&id).unwrap().unwrap();
    assert_eq!(state.status, ContainerStatus::Exited);
    assert_eq!(state.exited(), Some(3));
    assert!(
        state
            .started_at
            .as_deref()
            .is_some_and(|t| t.starts_with("20")),
        "{state:?}"
    );
    assert_eq!(state.labels[labels::TASK_ID], "task-1");
    // Every byte, in order, both streams: offsets into this file are exact.
    assert_eq!(output(io.path()), "first line\nto stderr\nno newline");
    let (rest, end) = read_lines_from(&io.path().join("output.log"), "first line\n".len() as u64);
    assert_eq!((rest.as_str(), end), ("to stderr\n", 21));
    // Waiting again (a re-attached agent) reads the same code.
    assert_eq!(engine.wait(&id, LONG).unwrap(), Some(3));
}

#[test]
fn a_fresh_client_reattaches_by_label_and_loses_no_line() {
    // The guard has its own client: the one that starts the container is dropped mid-test.
    let Some((engine, mut cleanup)) = engine_and_cleanup("a_fresh_client_reattaches_by_label")
    else {
        return;
    };
    let io = tempfile::tempdir().unwrap();
    let log = io.path().join("output.log");
    let run = run_id("reattach");
    let script = "i=1; while [ $i -le 40 ]; do echo line $i; i=$((i+1)); sleep 0.05; done; exit 0";
    let id = create_and_start(
        &engine,
        &mut cleanup,
        &run,
        &logged_spec(&run, io.path(), &["sh", "-c", script]),
    );

    // The first agent life ships part of the output, then "crashes" (its client and the id gone).
    let mut shipped = String::new();
    let mut offset = 0;
    wait_until("some output", LONG, || {
        let (text, end) = read_lines_from(&log, offset);
        shipped.push_str(&text);
        offset = end;
        !shipped.is_empty()
    });
    drop(engine);

    // The next life knows only the run id (from its journal) and the shipped offset.
    let engine = Engine::connect_default().unwrap();
    let found = engine.find_by_labels(&[(labels::RUN_ID, &run)]).unwrap();
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].id, id);
    let code = loop {
        let (text, end) = read_lines_from(&log, offset);
        shipped.push_str(&text);
        offset = end;
        if let Some(code) = engine
            .wait(&found[0].id, Duration::from_millis(200))
            .unwrap()
        {
            let (text, end) = read_lines_from(&log, offset);
            shipped.push_str(&text);
            offset = end;
            break code;
        }
    };
    assert_eq!(code, 0);
    let expected: String = (1..=40).map(|i| format!("line {i}\n")).collect();
    assert_eq!(shipped, expected);
    assert_eq!(offset, fs::metadata(&log).unwrap().len());
    assert!(engine
        .find_by_labels(&[(labels::RUN_ID, "no-such-run")])
        .unwrap()
        .is_empty());
    engine.remove(&id).unwrap();
    assert!(engine.inspect(&id).unwrap().is_none());
    assert!(engine
        .find_by_labels(&[(labels::RUN_ID, &run)])
        .unwrap()
        .is_empty());
}

const SIGTERM_SCRIPT: &str = r#"
import signal, sys, time
mode = sys.argv[1]
def on_term(*_):
    print("got SIGTERM", flush=True)
    if mode == "exit":
        print("exiting cleanly", flush=True)
        sys.exit(0)
if mode != "default":
    signal.signal(signal.SIGTERM, on_term)
print("ready", flush=True)
while True:
    time.sleep(0.1)
"#;

#[test]
fn stop_sends_sigterm_then_kills_after_the_grace_period() {
    let Some((engine, mut cleanup)) = engine_and_cleanup("stop_sends_sigterm_then_kills") else {
        return;
    };
    // "default": no handler. The engine's init is PID 1 and passes SIGTERM on, so the task
    // dies of it (143); as PID 1 itself the signal would be ignored and only the kill would
    // end it (137).
    for (mode, expected_code) in [("exit", 0), ("ignore", 137), ("default", 143)] {
        let io = tempfile::tempdir().unwrap();
        let run = run_id(&format!("stop-{mode}"));
        let spec = logged_spec(&run, io.path(), &["python3", "-c", SIGTERM_SCRIPT, mode]);
        let id = create_and_start(&engine, &mut cleanup, &run, &spec);
        wait_until("the task to be ready", LONG, || {
            output(io.path()).contains("ready")
        });
        engine.stop(&id, Duration::from_secs(2)).unwrap();
        let state = engine.inspect(&id).unwrap().unwrap();
        assert_eq!(
            state.exited(),
            Some(expected_code),
            "{mode}: {state:?}\n{}",
            output(io.path())
        );
        let out = output(io.path());
        assert_eq!(
            out.contains("got SIGTERM"),
            mode != "default",
            "{mode}: the task's handler did not see SIGTERM:\n{out}"
        );
        assert_eq!(out.contains("exiting cleanly"), mode == "exit", "{out}");
        // Stopping a stopped container is fine (an abort racing the task's own exit).
        engine.stop(&id, Duration::from_secs(1)).unwrap();
    }
    assert!(matches!(
        engine.stop("clearml-no-such-container", Duration::from_secs(1)),
        Err(DockerError::NoSuchContainer(_))
    ));
}

#[test]
fn a_missing_image_fails_with_the_image_named() {
    let Some(engine) = engine_or_skip("a_missing_image_fails_with_the_image_named") else {
        return;
    };
    let registry = Registry::start();
    let image = format!("{}/clearml-test/does-not-exist:1", registry.addr);
    let mut lines = vec![];
    let err = engine
        .ensure_image(&image, false, &mut |l| lines.push(l.to_string()))
        .unwrap_err();
    assert!(matches!(err, DockerError::Pull { .. }), "{err:?}");
    assert!(err.to_string().contains(&image), "{err}");
    assert!(lines.iter().any(|l| l.contains(&image)), "{lines:?}");
    // A registry that is not there at all: the same, and at once.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let unreachable = format!("127.0.0.1:{port}/clearml-test/nowhere:1");
    let err = engine
        .ensure_image(&unreachable, true, &mut |_| {})
        .unwrap_err();
    assert!(
        matches!(err, DockerError::Pull { .. }) && err.to_string().contains(&unreachable),
        "{err}"
    );
    // Creating from an image that is not there (no pull) names it too.
    let spec = ContainerSpec {
        image: "clearml-test/never-built:0".into(),
        cmd: s(&["true"]),
        ..ContainerSpec::default()
    };
    let err = engine
        .create(None, spec.create_body().unwrap())
        .unwrap_err();
    assert_eq!(
        err,
        DockerError::ImageMissing {
            image: "clearml-test/never-built:0".into()
        }
    );
}

#[test]
fn pulls_from_a_local_registry_with_progress_and_force_pull_refreshes() {
    let Some((engine, mut cleanup)) = engine_and_cleanup("pulls_from_a_local_registry") else {
        return;
    };
    let registry = Registry::start();
    let name = format!("clearml-test/tiny-{}:1", std::process::id());
    let (reference, v1) = registry.push_tiny_image(&name, "version one\n");
    cleanup.images.push(reference.clone());
    engine.remove_image(&reference).unwrap();
    assert!(engine.image(&reference).unwrap().is_none());

    let mut lines = vec![];
    let got = engine
        .ensure_image(&reference, false, &mut |l| lines.push(l.to_string()))
        .unwrap();
    assert_eq!(got.id, v1);
    assert!(lines[0].contains(&reference), "{lines:?}");
    assert!(
        lines.iter().any(|l| l.contains("Pull complete")),
        "{lines:?}"
    );
    assert!(
        got.repo_digests.iter().any(|d| d.contains("@sha256:")),
        "{got:?}"
    );

    // The registry moves on to version two; the local tag still names version one.
    let (_, v2) = registry.push_tiny_image(&name, "version two\n");
    assert_ne!(v1, v2);
    docker::run(std::process::Command::new("docker").args(["tag", &v1, &reference]));
    let mut lines = vec![];
    let local = engine
        .ensure_image(&reference, false, &mut |l| lines.push(l.to_string()))
        .unwrap();
    assert_eq!(local.id, v1, "without force_pull the local image is used");
    assert!(lines.is_empty(), "no pull without force_pull: {lines:?}");
    let forced = engine
        .ensure_image(&reference, true, &mut |l| lines.push(l.to_string()))
        .unwrap();
    assert_eq!(
        forced.id, v2,
        "force_pull fetched the registry's current image"
    );
    assert!(
        lines.iter().any(|l| l.contains("Pulling docker image")),
        "{lines:?}"
    );
    cleanup.images.push(v1);
}

/// Host directories for one bootstrapped run.
struct RunDirs {
    io: tempfile::TempDir,
    conf: tempfile::TempDir,
    code: tempfile::TempDir,
}

fn bootstrapped_spec(
    run: &str,
    dirs: &RunDirs,
    venvs: &Path,
    boot: &Bootstrap,
    requirements: &[String],
) -> ContainerSpec {
    let script = bootstrap::script(boot).unwrap();
    bootstrap::write_conf_dir(
        dirs.conf.path(),
        &script,
        requirements,
        "api { credentials { secret_key: \"S3CR3T-value\" } }\n",
    )
    .unwrap();
    let mut mounts = vec![
        BindMount::rw(dirs.io.path(), layout::IO_DIR),
        BindMount::ro(dirs.conf.path(), layout::CONF_DIR),
        BindMount::rw(dirs.code.path(), layout::CODE_DIR),
        BindMount::rw(venvs, layout::VENVS_DIR),
        BindMount::rw(docker::pip_cache_dir(), layout::PIP_CACHE_DIR),
    ];
    if let Some(ca) = docker::host_ca_bundle() {
        mounts.push(BindMount::ro(ca, layout::CA_BUNDLE));
    }
    ContainerSpec {
        image: test_image().to_string(),
        cmd: bootstrap_command(),
        env: vec![
            ("CLEARML_CONFIG_FILE".into(), layout::CONFIG_FILE.into()),
            ("CLEARML_TASK_ID".into(), "task-1".into()),
        ],
        labels: run_labels(run, "task-1", "worker-test"),
        mounts,
        init: true,
        ..ContainerSpec::default()
    }
}

fn host_pip() -> PipSettings {
    PipSettings {
        index_url: std::env::var("PIP_INDEX_URL").ok(),
        extra_index_urls: std::env::var("PIP_EXTRA_INDEX_URL")
            .map(|v| v.split_whitespace().map(String::from).collect())
            .unwrap_or_default(),
        trusted_hosts: vec![],
        cache_mounted: true,
    }
}

fn run_dirs() -> RunDirs {
    RunDirs {
        io: tempfile::tempdir().unwrap(),
        conf: tempfile::tempdir().unwrap(),
        code: tempfile::tempdir().unwrap(),
    }
}

#[test]
fn the_bootstrap_builds_a_venv_once_and_the_next_container_reuses_it() {
    let Some((engine, mut cleanup)) = engine_and_cleanup("the_bootstrap_builds_a_venv_once") else {
        return;
    };
    let venvs = tempfile::tempdir().unwrap();
    let image_id = engine.image(test_image()).unwrap().unwrap().id;
    let requirements = s(&["six==1.16.0"]);
    let pip = host_pip();
    let key = bootstrap::venv_key(&image_id, &requirements, true, &pip);
    let entry = "import os, sys, six; print('six', six.__version__, sys.prefix, os.environ.get('FROM_SETUP'))";

    let mut outputs = vec![];
    for n in 1..=2 {
        let run = run_id(&format!("venv{n}"));
        let dirs = run_dirs();
        fs::create_dir_all(dirs.code.path().join("src")).unwrap();
        let boot = Bootstrap {
            run_id: run.clone(),
            env: PythonEnv::Venv {
                key: key.clone(),
                python: None,
                system_site_packages: true,
            },
            pip: pip.clone(),
            ca_bundle_mounted: docker::host_ca_bundle().is_some(),
            setup_shell_script: Some(
                "export FROM_SETUP=setup-ran\necho setup script here\n".into(),
            ),
            workdir: format!("{}/src", layout::CODE_DIR),
            entry: Entry::Python {
                args: s(&["-c", entry]),
            },
        };
        let spec = bootstrapped_spec(&run, &dirs, venvs.path(), &boot, &requirements);
        let id = create_and_start(&engine, &mut cleanup, &run, &spec);
        let code = engine.wait(&id, LONG).unwrap();
        let out = output(dirs.io.path());
        assert_eq!(code, Some(0), "run {n}:\n{out}");
        assert_eq!(
            fs::read_to_string(dirs.io.path().join("stage")).unwrap(),
            "running\n"
        );
        assert!(
            out.contains(&format!("six 1.16.0 {}/runs/{run} setup-ran", layout::VENVS_DIR)),
            "run {n}: the task did not run in its venv copy with the setup script's exports:\n{out}"
        );
        assert!(
            out.find("setup script here") < out.find("six 1.16.0"),
            "{out}"
        );
        outputs.push(out);
    }
    assert!(
        outputs[0].contains(&format!("creating environment {key}")),
        "{}",
        outputs[0]
    );
    assert!(
        outputs[0].contains("installing requirements"),
        "{}",
        outputs[0]
    );
    assert!(
        outputs[1].contains(&format!("using cached environment {key}")),
        "{}",
        outputs[1]
    );
    assert!(
        !outputs[1].contains("installing requirements") && !outputs[1].contains("Collecting"),
        "{}",
        outputs[1]
    );
    let marker = venvs.path().join(&key).join(bootstrap::MARKER);
    assert!(fs::read_to_string(&marker).unwrap().contains(&key));
}

/// Processes (on this host, in any container) waiting in the bootstrap's `flock` on `lock`
/// (the lock file's path inside the container).
fn waiting_on_lock(lock: &str) -> usize {
    let Ok(procs) = fs::read_dir("/proc") else {
        return 0;
    };
    procs
        .flatten()
        .filter(|p| {
            let cmdline = fs::read(p.path().join("cmdline")).unwrap_or_default();
            String::from_utf8_lossy(&cmdline).contains("fcntl.flock(9")
                && fs::read_link(p.path().join("fd/9")).is_ok_and(|l| l == Path::new(lock))
        })
        .count()
}

#[test]
fn concurrent_runs_build_one_environment_and_a_killed_build_is_redone() {
    let Some((engine, mut cleanup)) = engine_and_cleanup("concurrent_runs_build_one_environment")
    else {
        return;
    };
    let venvs = tempfile::tempdir().unwrap();
    let image_id = engine.image(test_image()).unwrap().unwrap().id;
    let requirements = s(&["six==1.16.0"]);
    let pip = host_pip();
    let key = bootstrap::venv_key(&image_id, &requirements, false, &pip);
    // What a container killed mid-build leaves: the entry without its marker.
    let leftover = venvs.path().join(&key).join("half-installed");
    fs::create_dir_all(&leftover).unwrap();
    // The host holds the entry's lock (as the agent's eviction would), so both runs queue on it.
    let lock = fs::File::create(venvs.path().join(format!("{key}.lock"))).unwrap();
    fs2::FileExt::lock_exclusive(&lock).unwrap();

    let mut runs = vec![];
    for n in 1..=2 {
        let run = run_id(&format!("concurrent{n}"));
        let dirs = run_dirs();
        let boot = Bootstrap {
            run_id: run.clone(),
            env: PythonEnv::Venv {
                key: key.clone(),
                python: Some("python3".into()),
                system_site_packages: false,
            },
            pip: pip.clone(),
            ca_bundle_mounted: docker::host_ca_bundle().is_some(),
            setup_shell_script: None,
            workdir: layout::CODE_DIR.into(),
            entry: Entry::Python {
                args: s(&["-c", "import six; print('six', six.__version__)"]),
            },
        };
        let spec = bootstrapped_spec(&run, &dirs, venvs.path(), &boot, &requirements);
        let id = create_and_start(&engine, &mut cleanup, &run, &spec);
        runs.push((id, dirs));
    }
    let lock_in_container = format!("{}/{key}.lock", layout::VENVS_DIR);
    wait_until("both runs to wait on the venv lock", LONG, || {
        waiting_on_lock(&lock_in_container) == 2
    });
    assert!(leftover.exists(), "nothing is touched without the lock");
    fs2::FileExt::unlock(&lock).unwrap();

    let mut outputs = vec![];
    for (id, dirs) in &runs {
        let code = engine.wait(id, LONG).unwrap();
        let out = output(dirs.io.path());
        assert_eq!(code, Some(0), "{out}");
        assert!(out.contains("six 1.16.0"), "{out}");
        outputs.push(out);
    }
    let built = outputs
        .iter()
        .filter(|o| o.contains("creating environment"))
        .count();
    let waited = outputs
        .iter()
        .filter(|o| o.contains("built by another run meanwhile"))
        .count();
    assert_eq!((built, waited), (1, 1), "{outputs:#?}");
    assert!(!leftover.exists(), "the half-built entry was replaced");
    assert!(venvs.path().join(&key).join(bootstrap::MARKER).exists());
}

#[test]
fn a_failed_install_fails_in_setup_with_the_reason_and_leaves_no_cache_entry() {
    let Some((engine, mut cleanup)) = engine_and_cleanup("a_failed_install_fails_in_setup") else {
        return;
    };
    let venvs = tempfile::tempdir().unwrap();
    let requirements = s(&["clearml-agent-test-no-such-package-xyz==0.0.1"]);
    let run = run_id("badreq");
    let dirs = run_dirs();
    let boot = Bootstrap {
        run_id: run.clone(),
        env: PythonEnv::Venv {
            key: "badkey".into(),
            python: None,
            system_site_packages: false,
        },
        pip: host_pip(),
        ca_bundle_mounted: docker::host_ca_bundle().is_some(),
        setup_shell_script: None,
        workdir: layout::CODE_DIR.into(),
        entry: Entry::Python {
            args: s(&["-c", "print('must not run')"]),
        },
    };
    let spec = bootstrapped_spec(&run, &dirs, venvs.path(), &boot, &requirements);
    let id = create_and_start(&engine, &mut cleanup, &run, &spec);
    let code = engine.wait(&id, LONG).unwrap();
    let out = output(dirs.io.path());
    assert_eq!(code, Some(bootstrap::SETUP_FAILED_EXIT), "{out}");
    let stage = fs::read_to_string(dirs.io.path().join("stage")).unwrap();
    assert!(
        stage.starts_with("failed: installing the requirements failed"),
        "{stage}"
    );
    assert!(
        out.contains("clearml-agent-test-no-such-package-xyz"),
        "pip's error is in the console:\n{out}"
    );
    assert!(!out.contains("must not run"));
    assert!(
        !venvs.path().join("badkey").exists(),
        "a failed build leaves no entry"
    );
}

#[test]
fn credentials_reach_the_container_only_through_the_private_config_file() {
    let Some((engine, mut cleanup)) =
        engine_and_cleanup("credentials_reach_the_container_only_through_the_config_file")
    else {
        return;
    };
    let venvs = tempfile::tempdir().unwrap();
    let run = run_id("secrets");
    let dirs = run_dirs();
    let boot = Bootstrap {
        run_id: run.clone(),
        env: PythonEnv::Prebuilt { python: "python3".into() },
        pip: PipSettings::default(),
        ca_bundle_mounted: false,
        setup_shell_script: None,
        workdir: layout::CODE_DIR.into(),
        entry: Entry::Program {
            argv: s(&[
                "sh",
                "-c",
                "stat -c 'mode %a' \"$CLEARML_CONFIG_FILE\"; grep -c S3CR3T \"$CLEARML_CONFIG_FILE\"; echo env-hits $(env | grep -c S3CR3T)",
            ]),
        },
    };
    let mut spec = bootstrapped_spec(&run, &dirs, venvs.path(), &boot, &[]);
    // User arguments with a secret-looking variable are theirs to set; ours carry none.
    spec.user = parse(&tokens_from_str("-e PLAIN=1").unwrap(), &|_| None).unwrap();
    let id = create_and_start(&engine, &mut cleanup, &run, &spec);
    assert_eq!(
        engine.wait(&id, LONG).unwrap(),
        Some(0),
        "{}",
        output(dirs.io.path())
    );
    let state = engine.inspect(&id).unwrap().unwrap();
    let shown = format!("{:?} {:?}", state.env, state.labels);
    assert!(
        !shown.contains("S3CR3T"),
        "docker inspect shows a secret: {shown}"
    );
    assert!(state.env.iter().any(|e| e == "PLAIN=1"), "{shown}");
    let out = output(dirs.io.path());
    assert!(out.contains("mode 600\n1\nenv-hits 0\n"), "{out}");
    // A prebuilt environment: no package operation at all.
    assert!(
        out.starts_with("clearml-agent: using the image's environment as it is (python3)\n"),
        "{out}"
    );
    assert!(!out.contains("pip") && !out.contains("venv"), "{out}");
}

#[test]
fn a_committed_container_becomes_an_image_that_runs() {
    let Some((engine, mut cleanup)) = engine_and_cleanup("a_committed_container_becomes_an_image")
    else {
        return;
    };
    let io = tempfile::tempdir().unwrap();
    let run = run_id("commit");
    let spec = logged_spec(
        &run,
        io.path(),
        &["sh", "-c", "echo built-in-container > /opt/built.txt"],
    );
    let id = create_and_start(&engine, &mut cleanup, &run, &spec);
    assert_eq!(engine.wait(&id, LONG).unwrap(), Some(0));
    let reference = format!("clearml-agent-test/committed:{}", std::process::id());
    cleanup.images.push(reference.clone());
    let config = bollard::models::ContainerConfig {
        cmd: Some(s(&["cat", "/opt/built.txt"])),
        labels: Some([("built-by".to_string(), "clearml-agent-test".to_string())].into()),
        ..Default::default()
    };
    let image_id = engine.commit(&id, &reference, config).unwrap();
    assert_eq!(engine.image(&reference).unwrap().unwrap().id, image_id);

    let io2 = tempfile::tempdir().unwrap();
    let run2 = run_id("commit-run");
    let mut spec2 = logged_spec(&run2, io2.path(), &["cat", "/opt/built.txt"]);
    spec2.image = reference.clone();
    let id2 = create_and_start(&engine, &mut cleanup, &run2, &spec2);
    assert_eq!(engine.wait(&id2, LONG).unwrap(), Some(0));
    assert_eq!(output(io2.path()), "built-in-container\n");
}
