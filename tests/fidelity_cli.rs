//! The upstream command line pieces against the embedded server: `init` driven through its
//! prompts on a real pseudo-terminal and with flags only, and `list`.

mod common;

use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::server::TestServer;
use serde_json::json;

/// A child process on a pseudo-terminal: what it prints collects in `screen`.
struct Pty {
    child: std::process::Child,
    master: std::fs::File,
    screen: Arc<Mutex<String>>,
    /// How much of `screen` the last `expect` consumed.
    seen: usize,
}

impl Pty {
    fn spawn(mut cmd: Command) -> Pty {
        let (mut master, mut slave) = (0, 0);
        // SAFETY: openpty fills in two fds; null name/termios/winsize are allowed.
        let rc = unsafe {
            libc::openpty(
                &mut master,
                &mut slave,
                std::ptr::null_mut(),
                std::ptr::null(),
                std::ptr::null(),
            )
        };
        assert_eq!(rc, 0, "openpty");
        // SAFETY: both fds were just opened and are owned here.
        let slave = unsafe { OwnedFd::from_raw_fd(slave) };
        let master = unsafe { std::fs::File::from_raw_fd(master) };
        cmd.stdin(Stdio::from(slave.try_clone().unwrap()))
            .stdout(Stdio::from(slave.try_clone().unwrap()))
            .stderr(Stdio::from(slave));
        let child = cmd.spawn().unwrap();
        let screen = Arc::new(Mutex::new(String::new()));
        let (s, mut reader) = (screen.clone(), master.try_clone().unwrap());
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                s.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Pty {
            child,
            master,
            screen,
            seen: 0,
        }
    }

    /// Waits for `text` after what was already matched.
    #[track_caller]
    fn expect(&mut self, text: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            {
                let screen = self.screen.lock().unwrap();
                if let Some(i) = screen[self.seen..].find(text) {
                    self.seen += i + text.len();
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "{text:?} never came; the screen:\n{}",
                self.screen.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn send(&mut self, line: &str) {
        self.master.write_all(line.as_bytes()).unwrap();
        self.master.write_all(b"\n").unwrap();
    }

    fn finish(mut self) -> (i32, String) {
        let status = self.child.wait().unwrap();
        std::thread::sleep(Duration::from_millis(100));
        let screen = self.screen.lock().unwrap().clone();
        (status.code().unwrap_or(-1), screen)
    }
}

fn init_cmd(home: &Path, target: &Path) -> Command {
    let mut cmd = Command::new(common::bin());
    cmd.arg("init")
        .arg("--config-file")
        .arg(target)
        .env("HOME", home)
        .env_remove("CLEARML_CONFIG_FILE")
        .env_remove("CLEARML_API_SECRET_KEY")
        .env_remove("CLEARML_AGENT_GIT_PASS");
    cmd
}

fn read_conf(path: &Path) -> serde_json::Value {
    clearml_agent::config::hocon::parse(&std::fs::read_to_string(path).unwrap(), &|_| None).unwrap()
}

#[test]
fn init_through_its_prompts_on_a_terminal() {
    let d = tempfile::tempdir().unwrap();
    let server = TestServer::start(&d.path().join("srv"));
    let target = d.path().join("home/clearml.conf");
    // What the user pastes: the server's own client configuration (same shape as the web app's).
    let block = std::fs::read_to_string(server.data_dir.join("clearml.conf")).unwrap();

    let mut t = Pty::spawn(init_cmd(&d.path().join("home"), &target));
    t.expect("CLEARML-AGENT setup process");
    t.expect("Paste copied configuration here:");
    for line in block.lines() {
        t.send(line);
    }
    t.expect("Detected credentials key=");
    t.expect(&format!("API Host configured to: [{}]", server.api));
    t.send("");
    t.expect("Web Application Host configured to:");
    t.send("");
    t.expect(&format!(
        "File Store Host configured to: [{}]",
        server.files
    ));
    t.send("");
    t.expect("Credentials verified!");
    t.expect("Default Output URI");
    t.send("S");
    t.expect("Enter git username");
    t.send("robot");
    t.expect("Enter git personal token for user 'robot':");
    t.send("tok-SECRET-123");
    t.expect("token=***");
    t.expect("extra-index-url");
    t.send("https://idx.example/simple");
    t.expect("Another artifact repository?");
    t.send("");
    t.expect("CLEARML-AGENT setup completed successfully.");
    let (code, screen) = t.finish();
    assert_eq!(code, 0, "{screen}");
    // Read without echo, and never printed.
    assert!(!screen.contains("tok-SECRET-123"), "{screen}");

    assert_eq!(
        std::fs::metadata(&target).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let conf = read_conf(&target);
    assert_eq!(conf["api"]["api_server"], server.api.as_str());
    assert_eq!(conf["api"]["files_server"], server.files.as_str());
    assert_eq!(
        conf["api"]["credentials"]["access_key"],
        server.key.as_str()
    );
    assert_eq!(
        conf["api"]["credentials"]["secret_key"],
        server.secret.as_str()
    );
    assert_eq!(conf["agent"]["git_user"], "robot");
    assert_eq!(conf["agent"]["git_pass"], "tok-SECRET-123");
    assert_eq!(
        conf["agent"]["package_manager"]["extra_index_url"],
        json!(["https://idx.example/simple"])
    );
    assert_eq!(
        conf["sdk"]["development"]["default_output_uri"],
        server.files.as_str()
    );
    // The agent reads the file it wrote.
    let out = Command::new(common::bin())
        .args(["config", "--json", "--config-file"])
        .arg(&target)
        .output()
        .unwrap();
    assert!(out.status.success());
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(shown["api"]["api_server"], server.api.as_str());

    // A second run asks before replacing it, and "no" leaves it alone.
    let before = std::fs::read(&target).unwrap();
    let mut t = Pty::spawn(init_cmd(&d.path().join("home"), &target));
    t.expect("Configuration file already exists");
    t.expect("Overwrite it? [y/N]");
    t.send("n");
    t.expect("the file is unchanged");
    let (code, screen) = t.finish();
    assert_eq!(code, 0, "{screen}");
    assert_eq!(std::fs::read(&target).unwrap(), before);
}

#[test]
fn init_with_flags_only_verifies_and_never_overwrites_without_force() {
    let d = tempfile::tempdir().unwrap();
    let server = TestServer::start(&d.path().join("srv"));
    let target = d.path().join("conf/clearml.conf");
    let run = |secret: &str, force: bool| {
        let mut cmd = init_cmd(d.path(), &target);
        cmd.args(["--api-host", &server.api, "--files-host", &server.files])
            .args(["--access-key", &server.key, "--secret-key", secret])
            .args(["--git-user", "ci", "--git-pass", "pw-xyz"])
            .args([
                "--extra-index-url",
                "https://a/simple",
                "--extra-index-url",
                "https://b/simple",
            ])
            .args(["--default-output-uri", "s3://bucket/out"])
            .stdin(Stdio::null());
        if force {
            cmd.arg("--force");
        }
        cmd.output().unwrap()
    };
    // Wrong secret: verification fails, no file, the secret not printed.
    let bad = run("not-the-secret-at-all", false);
    assert_ne!(bad.status.code(), Some(0));
    let text =
        String::from_utf8_lossy(&bad.stdout).to_string() + &String::from_utf8_lossy(&bad.stderr);
    assert!(text.contains("could not verify credentials"), "{text}");
    assert!(!text.contains("not-the-secret-at-all"), "{text}");
    assert!(!target.exists());

    let ok = run(&server.secret, false);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let conf = read_conf(&target);
    assert_eq!(conf["api"]["api_server"], server.api.as_str());
    assert_eq!(conf["agent"]["git_user"], "ci");
    assert_eq!(
        conf["agent"]["package_manager"]["extra_index_url"],
        json!(["https://a/simple", "https://b/simple"])
    );
    assert_eq!(
        conf["sdk"]["development"]["default_output_uri"],
        "s3://bucket/out"
    );
    assert!(!String::from_utf8_lossy(&ok.stdout).contains("pw-xyz"));
    assert_eq!(
        std::fs::metadata(&target).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // Exists: refused without --force, replaced with it.
    std::fs::write(&target, "api { api_server: \"http://keep\" }\n").unwrap();
    let again = run(&server.secret, false);
    assert_ne!(again.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));
    assert!(std::fs::read_to_string(&target)
        .unwrap()
        .contains("http://keep"));
    assert!(run(&server.secret, true).status.success());
    assert_eq!(read_conf(&target)["api"]["api_server"], server.api.as_str());
}

#[test]
fn list_shows_registered_workers() {
    let d = tempfile::tempdir().unwrap();
    let server = TestServer::start(&d.path().join("srv"));
    server
        .call(
            "workers.register",
            json!({"worker": "gpu-box:0", "queues": [server.default_queue()]}),
        )
        .ok();
    let conf = server.data_dir.join("clearml.conf");
    let list = |json: bool| {
        let mut cmd = Command::new(common::bin());
        cmd.arg("list").arg("--config-file").arg(&conf);
        if json {
            cmd.arg("--json");
        }
        for k in [
            "CLEARML_API_HOST",
            "CLEARML_API_ACCESS_KEY",
            "CLEARML_API_SECRET_KEY",
        ] {
            cmd.env_remove(k);
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let workers: serde_json::Value = serde_json::from_str(&list(true)).unwrap();
    let w = workers
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["id"] == "gpu-box:0")
        .unwrap_or_else(|| panic!("{workers}"));
    assert_eq!(w["queues"][0]["name"], "default");
    let table = list(false);
    let row = table
        .lines()
        .find(|l| l.starts_with("gpu-box:0"))
        .unwrap_or_else(|| panic!("{table}"));
    assert!(row.contains("default"), "{table}");
    assert!(table.starts_with("WORKER"), "{table}");
}
