//! Docker fixtures for the tests that use the real engine: the base image (built once by
//! scripts/docker-test-image.sh, reused by tag), a local registry (Debian's docker-registry on
//! 127.0.0.1), containers removed when a test ends.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use clearml_agent::effects::docker::engine::{socket_path, Timeouts};
use clearml_agent::effects::docker::Engine;

/// The engine, or `None` (after saying so) when this machine has no Docker socket at all. Any
/// other problem (a socket that does not answer) fails the test.
pub fn engine_or_skip(test: &str) -> Option<Engine> {
    let host = std::env::var("DOCKER_HOST").ok();
    let Some(socket) = socket_path(host.as_deref()) else {
        panic!("DOCKER_HOST={host:?} is not a unix socket; the agent only talks to a local engine");
    };
    if !socket.exists() {
        eprintln!(
            "SKIPPED {test}: no Docker socket at {} (docker-mode tests need a Docker Engine)",
            socket.display()
        );
        return None;
    }
    Some(
        Engine::connect(&socket, Timeouts::default())
            .expect("the Docker socket exists but the engine does not answer"),
    )
}

/// The test image's tag, built (about 1.5 min cold) or found by its recipe hash.
pub fn test_image() -> &'static str {
    static TAG: OnceLock<String> = OnceLock::new();
    TAG.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/docker-test-image.sh");
        let out = Command::new(&script)
            .stderr(Stdio::inherit())
            .output()
            .expect("running docker-test-image.sh");
        assert!(out.status.success(), "scripts/docker-test-image.sh failed");
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    })
}

/// A run id unique to this test process, so leftovers of an aborted run never collide.
pub fn run_id(test: &str) -> String {
    format!("{test}-{}", std::process::id())
}

/// Removes containers and images when the test ends, pass or fail, through its own client
/// (a test may drop its engine to play an agent crash).
pub struct Cleanup {
    engine: Engine,
    pub ids: Vec<String>,
    pub images: Vec<String>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for id in &self.ids {
            let _ = self.engine.remove(id);
        }
        for image in &self.images {
            let _ = self.engine.remove_image(image);
        }
    }
}

/// The engine and a cleanup guard, or `None` (skip) as [`engine_or_skip`].
pub fn engine_and_cleanup(test: &str) -> Option<(Engine, Cleanup)> {
    let engine = engine_or_skip(test)?;
    let cleanup = Cleanup {
        engine: Engine::connect_default().expect("a second client to the engine"),
        ids: vec![],
        images: vec![],
    };
    Some((engine, cleanup))
}

/// The complete lines of `path` from `offset`, and the offset after them (a partly written last
/// line stays for the next read, as the log shipper does).
pub fn read_lines_from(path: &Path, offset: u64) -> (String, u64) {
    let Ok(bytes) = std::fs::read(path) else {
        return (String::new(), offset);
    };
    let start = (offset as usize).min(bytes.len());
    let end = bytes[start..]
        .iter()
        .rposition(|b| *b == b'\n')
        .map(|p| start + p + 1)
        .unwrap_or(start);
    (
        String::from_utf8_lossy(&bytes[start..end]).into_owned(),
        end as u64,
    )
}

pub fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The host's CA bundle (what pip trusts here), to mount into containers.
pub fn host_ca_bundle() -> Option<PathBuf> {
    ["PIP_CERT", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE"]
        .iter()
        .filter_map(|v| std::env::var_os(v).map(PathBuf::from))
        .chain([PathBuf::from("/etc/ssl/certs/ca-certificates.crt")])
        .find(|p| p.is_file())
}

/// pip's download cache for the docker tests, kept across runs under target/.
pub fn pip_cache_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/docker-test/pip-cache");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Debian's docker-registry serving on 127.0.0.1 (the engine treats loopback registries as
/// insecure, so plain HTTP works), storage in a temp dir; stopped on drop.
pub struct Registry {
    child: Child,
    pub addr: String,
    _dir: tempfile::TempDir,
}

impl Registry {
    pub fn start() -> Registry {
        let bin = ["/usr/bin/docker-registry", "/usr/sbin/docker-registry"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect(
                "docker-registry is not installed (apt-get install docker-registry; .ci/run does)",
            );
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let child = Command::new(bin)
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            // It logs every 404 a missing-image test provokes, at error level.
            .stderr(Stdio::null())
            .spawn()
            .expect("starting docker-registry");
        let reg = Registry {
            child,
            addr,
            _dir: dir,
        };
        wait_until(
            "the registry to answer /v2/",
            Duration::from_secs(60),
            || reg.answers(),
        );
        reg
    }

    fn answers(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(&self.addr) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        let req = format!("GET /v2/ HTTP/1.0\r\nHost: {}\r\n\r\n", self.addr);
        if s.write_all(req.as_bytes()).is_err() {
            return false;
        }
        let mut answer = String::new();
        let _ = s.read_to_string(&mut answer);
        answer.starts_with("HTTP/1.") && answer.contains(" 200 ")
    }

    /// Push a one-file image (`/hello.txt` = `content`) as `<registry>/<name>` and drop the local
    /// tag; returns the reference and the image id. A fixture step, so it uses the docker CLI.
    pub fn push_tiny_image(&self, name: &str, content: &str) -> (String, String) {
        let reference = format!("{}/{name}", self.addr);
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("hello.txt"), content).unwrap();
        let tar = dir.path().join("rootfs.tar");
        run(Command::new("tar")
            .arg("-C")
            .arg(dir.path())
            .arg("-cf")
            .arg(&tar)
            .arg("hello.txt"));
        let id = run(Command::new("docker")
            .arg("import")
            .arg(&tar)
            .arg(&reference))
        .trim()
        .to_string();
        run(Command::new("docker").args(["push", &reference]));
        (reference, id)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
