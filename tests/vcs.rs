//! Checkout, cache, credentials and diff application against real repositories built
//! with the git CLI and served over file://, git:// (git daemon) and smart http
//! (`git http-backend` behind a small CGI bridge, with basic auth).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use clearml_agent::effects::vcs::{
    apply_diff, cache_key, checkout, is_checked_out, read_file_at, SourceSpec, VcsError,
    VcsSettings,
};

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args([
            "-c",
            "init.defaultBranch=main",
            "-c",
            "protocol.file.allow=always",
        ])
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "Test")
        .env("GIT_AUTHOR_EMAIL", "test@example.com")
        .env("GIT_COMMITTER_NAME", "Test")
        .env("GIT_COMMITTER_EMAIL", "test@example.com")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", dir)
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// An origin repository: main = c1 (tag v1) -> c2; feature = c1 -> c3.
struct Fixture {
    tmp: tempfile::TempDir,
    origin: PathBuf,
    c1: String,
    c2: String,
    c3: String,
}

impl Fixture {
    fn new() -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let origin = tmp.path().join("origin");
        std::fs::create_dir_all(&origin).unwrap();
        git(&origin, &["init", "-q"]);
        std::fs::write(origin.join("requirements.txt"), "numpy==1.0\n").unwrap();
        std::fs::write(origin.join("main.py"), "print(1)\nx = 1\ny = 2\n").unwrap();
        git(&origin, &["add", "."]);
        git(&origin, &["commit", "-q", "-m", "one"]);
        let c1 = git(&origin, &["rev-parse", "HEAD"]);
        git(&origin, &["tag", "-a", "v1", "-m", "release one"]);
        std::fs::write(origin.join("requirements.txt"), "numpy==2.0\n").unwrap();
        std::fs::write(origin.join("main.py"), "print(2)\nx = 1\ny = 2\n").unwrap();
        git(&origin, &["commit", "-q", "-am", "two"]);
        let c2 = git(&origin, &["rev-parse", "HEAD"]);
        git(&origin, &["checkout", "-q", "-b", "feature", &c1]);
        std::fs::write(origin.join("feature.txt"), "feature\n").unwrap();
        git(&origin, &["add", "."]);
        git(&origin, &["commit", "-q", "-m", "three"]);
        let c3 = git(&origin, &["rev-parse", "HEAD"]);
        git(&origin, &["checkout", "-q", "main"]);
        Fixture {
            tmp,
            origin,
            c1,
            c2,
            c3,
        }
    }

    fn url(&self) -> String {
        format!("file://{}", self.origin.display())
    }

    fn settings(&self) -> VcsSettings {
        VcsSettings {
            cache_dir: self.tmp.path().join("cache"),
            cache_enabled: true,
            ..Default::default()
        }
    }

    fn wt(&self, name: &str) -> PathBuf {
        self.tmp.path().join("runs").join(name)
    }

    /// A bare copy under `<tmp>/serve/repo.git`, for the daemons.
    fn serve_dir(&self) -> PathBuf {
        let serve = self.tmp.path().join("serve");
        std::fs::create_dir_all(&serve).unwrap();
        git(
            &serve,
            &[
                "clone",
                "-q",
                "--bare",
                self.origin.to_str().unwrap(),
                "repo.git",
            ],
        );
        serve
    }

    fn commit_more(&self, file: &str, content: &str) -> String {
        std::fs::write(self.origin.join(file), content).unwrap();
        git(&self.origin, &["add", "."]);
        git(&self.origin, &["commit", "-q", "-m", file]);
        git(&self.origin, &["rev-parse", "HEAD"])
    }
}

fn spec(url: &str) -> SourceSpec {
    SourceSpec {
        repository: url.to_string(),
        ..Default::default()
    }
}

fn run_checkout(
    settings: &VcsSettings,
    spec: &SourceSpec,
    wt: &Path,
) -> (
    Result<clearml_agent::effects::vcs::SourceOutcome, VcsError>,
    Vec<String>,
) {
    let mut lines = Vec::new();
    let res = checkout(settings, spec, wt, &mut |l| lines.push(l.to_string()));
    (res, lines)
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap()
}

fn head_is_detached(wt: &Path) -> bool {
    git(wt, &["rev-parse", "--abbrev-ref", "HEAD"]) == "HEAD"
}

#[test]
fn checkout_by_commit_tag_branch_and_default_over_file_url() {
    let fx = Fixture::new();
    let settings = fx.settings();

    // Abbreviated commit.
    let s = SourceSpec {
        commit: Some(fx.c1[..10].to_string()),
        branch: Some("main".into()), // the commit wins over the branch
        ..spec(&fx.url())
    };
    let wt = fx.wt("by-commit");
    let (res, log) = run_checkout(&settings, &s, &wt);
    let out = res.unwrap();
    assert_eq!(out.commit, fx.c1);
    assert!(!out.cache_hit);
    assert_eq!(read(&wt.join("main.py")), "print(1)\nx = 1\ny = 2\n");
    assert!(head_is_detached(&wt));
    assert!(is_checked_out(&wt, &fx.c1));
    assert!(!is_checked_out(&wt, &fx.c2));
    assert_eq!(git(&wt, &["remote", "get-url", "origin"]), fx.url());
    assert!(log.iter().any(|l| l.starts_with("Cloning ")), "{log:?}");
    assert!(
        log.iter()
            .any(|l| l.contains(&format!("Checked out {}", fx.c1))),
        "{log:?}"
    );

    // Annotated tag.
    let s = SourceSpec {
        tag: Some("v1".into()),
        branch: Some("feature".into()),
        ..spec(&fx.url())
    };
    let wt = fx.wt("by-tag");
    let out = run_checkout(&settings, &s, &wt).0.unwrap();
    assert_eq!(out.commit, fx.c1);
    assert!(out.cache_hit);
    assert!(!wt.join("feature.txt").exists());

    // Branch, also spelled as upstream records it.
    for branch in ["feature", "origin/feature"] {
        let s = SourceSpec {
            branch: Some(branch.into()),
            ..spec(&fx.url())
        };
        let wt = fx.wt(&format!("by-branch-{}", branch.replace('/', "-")));
        let out = run_checkout(&settings, &s, &wt).0.unwrap();
        assert_eq!(out.commit, fx.c3, "{branch}");
        assert_eq!(read(&wt.join("feature.txt")), "feature\n");
        assert!(head_is_detached(&wt));
        // All branches are there for the user's code that inspects git.
        assert_eq!(git(&wt, &["rev-parse", "origin/main"]), fx.c2);
    }

    // Nothing named: the default branch.
    let wt = fx.wt("default");
    let (res, log) = run_checkout(&settings, &spec(&fx.url()), &wt);
    assert_eq!(res.unwrap().commit, fx.c2);
    assert!(
        log.iter().any(|l| l.contains("default branch main")),
        "{log:?}"
    );
    assert_eq!(read(&wt.join("requirements.txt")), "numpy==2.0\n");
}

#[test]
fn second_checkout_reuses_cache_and_sees_new_commits() {
    let fx = Fixture::new();
    let settings = fx.settings();
    let s = SourceSpec {
        branch: Some("main".into()),
        ..spec(&fx.url())
    };
    let (first, _) = run_checkout(&settings, &s, &fx.wt("a"));
    let first = first.unwrap();
    assert!(!first.cache_hit);
    assert_eq!(first.commit, fx.c2);
    let entries: Vec<_> = std::fs::read_dir(&settings.cache_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(entries.len(), 2, "one mirror and its lock: {entries:?}");

    let c4 = fx.commit_more("new.txt", "new\n");
    let (second, log) = run_checkout(&settings, &s, &fx.wt("b"));
    let second = second.unwrap();
    assert!(second.cache_hit);
    assert_eq!(second.commit, c4);
    assert_eq!(read(&fx.wt("b").join("new.txt")), "new\n");
    assert!(
        log.iter().any(|l| l.starts_with("Using cached repository")),
        "{log:?}"
    );

    // A pinned commit that the cache has is checked out without fetching.
    let pinned = SourceSpec {
        commit: Some(c4.clone()),
        ..spec(&fx.url())
    };
    let (third, log) = run_checkout(&settings, &pinned, &fx.wt("c"));
    assert_eq!(third.unwrap().commit, c4);
    assert!(log.iter().any(|l| l.contains("not fetching")), "{log:?}");

    // A commit whose branch was deleted upstream after the cache got it.
    git(&fx.origin, &["checkout", "-q", "-b", "doomed"]);
    let c5 = fx.commit_more("doomed.txt", "doomed\n");
    git(&fx.origin, &["checkout", "-q", "main"]);
    let branch = SourceSpec {
        branch: Some("doomed".into()),
        ..spec(&fx.url())
    };
    assert_eq!(
        run_checkout(&settings, &branch, &fx.wt("d"))
            .0
            .unwrap()
            .commit,
        c5
    );
    git(&fx.origin, &["branch", "-q", "-D", "doomed"]);
    let err = run_checkout(&settings, &branch, &fx.wt("e")).0.unwrap_err();
    assert!(matches!(err, VcsError::BranchNotFound { .. }), "{err:?}");
    let orphan = SourceSpec {
        commit: Some(c5.clone()),
        ..spec(&fx.url())
    };
    let out = run_checkout(&settings, &orphan, &fx.wt("f")).0.unwrap();
    assert_eq!(out.commit, c5);
    assert_eq!(read(&fx.wt("f").join("doomed.txt")), "doomed\n");

    // Re-running into a crashed attempt's leftover directory starts clean.
    std::fs::write(fx.wt("c").join("junk"), "x").unwrap();
    std::fs::remove_file(fx.wt("c").join(".git/clearml-agent-checkout")).unwrap();
    assert!(!is_checked_out(&fx.wt("c"), &c4));
    let (again, _) = run_checkout(&settings, &pinned, &fx.wt("c"));
    assert_eq!(again.unwrap().commit, c4);
    assert!(!fx.wt("c").join("junk").exists());
    assert!(is_checked_out(&fx.wt("c"), &c4));
}

#[test]
fn submodules_are_checked_out() {
    let fx = Fixture::new();
    let sub = fx.tmp.path().join("sub");
    std::fs::create_dir_all(&sub).unwrap();
    git(&sub, &["init", "-q"]);
    std::fs::write(sub.join("lib.py"), "VALUE = 42\n").unwrap();
    git(&sub, &["add", "."]);
    git(&sub, &["commit", "-q", "-m", "sub"]);
    let sub_url = format!("file://{}", sub.display());
    git(
        &fx.origin,
        &["submodule", "add", "-q", &sub_url, "vendor/sub"],
    );
    git(&fx.origin, &["commit", "-q", "-m", "add submodule"]);
    let wt = fx.wt("a");
    let (res, log) = run_checkout(&fx.settings(), &spec(&fx.url()), &wt);
    res.unwrap();
    assert_eq!(read(&wt.join("vendor/sub/lib.py")), "VALUE = 42\n");
    assert!(
        log.iter().any(|l| l.contains("submodule vendor/sub")),
        "{log:?}"
    );
}

#[test]
fn cache_disabled_leaves_no_cache_behind() {
    let fx = Fixture::new();
    let settings = VcsSettings {
        cache_enabled: false,
        ..fx.settings()
    };
    let s = SourceSpec {
        tag: Some("v1".into()),
        ..spec(&fx.url())
    };
    let out = run_checkout(&settings, &s, &fx.wt("a")).0.unwrap();
    assert_eq!(out.commit, fx.c1);
    assert!(!out.cache_hit);
    let again = run_checkout(&settings, &s, &fx.wt("b")).0.unwrap();
    assert!(!again.cache_hit);
    assert!(!settings.cache_dir.exists());
}

#[test]
fn missing_commit_tag_branch_and_bad_urls_are_named() {
    let fx = Fixture::new();
    let settings = fx.settings();
    let missing = "0123456789abcdef0123456789abcdef01234567";
    let s = SourceSpec {
        commit: Some(missing.into()),
        ..spec(&fx.url())
    };
    let err = run_checkout(&settings, &s, &fx.wt("a")).0.unwrap_err();
    assert!(matches!(err, VcsError::CommitNotFound { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains(missing) && msg.contains(&fx.url()), "{msg}");
    assert!(!is_checked_out(&fx.wt("a"), missing));

    let s = SourceSpec {
        tag: Some("v9".into()),
        ..spec(&fx.url())
    };
    let msg = run_checkout(&settings, &s, &fx.wt("b"))
        .0
        .unwrap_err()
        .to_string();
    assert!(msg.contains("tag v9") && msg.contains(&fx.url()), "{msg}");

    let s = SourceSpec {
        branch: Some("nope".into()),
        ..spec(&fx.url())
    };
    let msg = run_checkout(&settings, &s, &fx.wt("c"))
        .0
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("branch nope") && msg.contains(&fx.url()),
        "{msg}"
    );

    let bad = format!("file://{}/does-not-exist", fx.tmp.path().display());
    let err = run_checkout(&settings, &spec(&bad), &fx.wt("d"))
        .0
        .unwrap_err();
    assert!(matches!(err, VcsError::Unreachable { .. }), "{err:?}");
    assert!(err.to_string().contains(&bad), "{err}");
    assert!(!err.is_retryable());
    // A failed first clone leaves no entry that would pass for a cache hit.
    assert!(!settings.cache_dir.join(cache_key(&bad)).exists());
    assert!(settings.cache_dir.join(cache_key(&fx.url())).exists());

    let port = free_port();
    let bad = format!("git://127.0.0.1:{port}/repo.git");
    let err = run_checkout(&settings, &spec(&bad), &fx.wt("f"))
        .0
        .unwrap_err();
    assert!(err.to_string().contains(&bad), "{err}");
    assert!(err.is_retryable(), "{err:?}");
}

#[test]
fn read_file_at_reads_the_resolved_commit() {
    let fx = Fixture::new();
    let settings = fx.settings();
    let mut log = |_: &str| {};
    let at = |commit: Option<&str>, tag: Option<&str>| SourceSpec {
        commit: commit.map(str::to_string),
        tag: tag.map(str::to_string),
        ..spec(&fx.url())
    };
    let r1 = read_file_at(
        &settings,
        &at(Some(&fx.c1), None),
        "requirements.txt",
        &mut log,
    );
    assert_eq!(r1.unwrap().as_deref(), Some("numpy==1.0\n"));
    let r2 = read_file_at(&settings, &at(None, None), "requirements.txt", &mut log);
    assert_eq!(r2.unwrap().as_deref(), Some("numpy==2.0\n"));
    let r3 = read_file_at(
        &settings,
        &at(None, Some("v1")),
        "requirements.txt",
        &mut log,
    );
    assert_eq!(r3.unwrap().as_deref(), Some("numpy==1.0\n"));
    let none = read_file_at(&settings, &at(Some(&fx.c1), None), "feature.txt", &mut log);
    assert_eq!(none.unwrap(), None);
    let err = read_file_at(&settings, &at(Some("deadbeef"), None), "x", &mut log).unwrap_err();
    assert!(err.to_string().contains("deadbeef"), "{err}");
}

#[test]
fn diffs_apply_or_name_the_failing_file() {
    let fx = Fixture::new();
    let settings = fx.settings();
    // The uncommitted change, as the SDK records it: against c2 (main).
    std::fs::write(fx.origin.join("main.py"), "print(2)\nx = 10\ny = 2\n").unwrap();
    std::fs::write(fx.origin.join("added.py"), "print('new')\n").unwrap();
    git(&fx.origin, &["add", "-N", "added.py"]);
    let diff = git(&fx.origin, &["diff"]) + "\n";
    git(&fx.origin, &["reset", "-q", "--hard"]);
    std::fs::remove_file(fx.origin.join("added.py")).ok();

    let wt = fx.wt("ok");
    run_checkout(&settings, &spec(&fx.url()), &wt).0.unwrap();
    let mut log = Vec::new();
    assert!(!apply_diff(&wt, "  \n", &mut |l| log.push(l.to_string())).unwrap());
    assert!(apply_diff(&wt, &diff, &mut |l| log.push(l.to_string())).unwrap());
    assert_eq!(read(&wt.join("main.py")), "print(2)\nx = 10\ny = 2\n");
    assert_eq!(read(&wt.join("added.py")), "print('new')\n");
    // The checkout marker survives: the diff is applied on top of a finished checkout.
    let c2 = fx.c2.clone();
    assert!(is_checked_out(&wt, &c2));

    // The same diff against c1 (`print(1)`): main.py does not match.
    let wt = fx.wt("bad");
    let s = SourceSpec {
        commit: Some(fx.c1.clone()),
        ..spec(&fx.url())
    };
    run_checkout(&settings, &s, &wt).0.unwrap();
    let err = apply_diff(&wt, &diff, &mut |_| {}).unwrap_err();
    match &err {
        VcsError::DiffNotApplied { files, .. } => assert_eq!(files, &["main.py"]),
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().contains("main.py"), "{err}");
    // Nothing was half-applied.
    assert!(!wt.join("added.py").exists());
    assert_eq!(read(&wt.join("main.py")), "print(1)\nx = 1\ny = 2\n");

    // Zero-context hunks (`git diff -U0`), as the Python agent's `--unidiff-zero` allows.
    std::fs::write(fx.origin.join("main.py"), "print(2)\nx = 1\nz = 3\ny = 2\n").unwrap();
    let zero = git(&fx.origin, &["diff", "-U0"]) + "\n";
    git(&fx.origin, &["reset", "-q", "--hard"]);
    let wt = fx.wt("zero");
    run_checkout(&settings, &spec(&fx.url()), &wt).0.unwrap();
    assert!(apply_diff(&wt, &zero, &mut |_| {}).unwrap());
    assert_eq!(read(&wt.join("main.py")), "print(2)\nx = 1\nz = 3\ny = 2\n");

    // A plain unified diff without git's headers: libgit2 cannot parse it, `git apply`
    // (the fallback) can.
    let plain: String = zero
        .lines()
        .filter(|l| !l.starts_with("diff --git") && !l.starts_with("index "))
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(plain.starts_with("--- a/main.py"), "{plain}");
    let wt = fx.wt("plain");
    run_checkout(&settings, &spec(&fx.url()), &wt).0.unwrap();
    let mut log = Vec::new();
    assert!(apply_diff(&wt, &plain, &mut |l| log.push(l.to_string())).unwrap());
    assert_eq!(read(&wt.join("main.py")), "print(2)\nx = 1\nz = 3\ny = 2\n");
    assert!(log.iter().any(|l| l.contains("git apply")), "{log:?}");
}

// ---------------------------------------------------------------------------------------
// Network: git daemon

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_for_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "port {port} never opened");
        std::thread::sleep(Duration::from_millis(50));
    }
}

struct KillOnDrop(Child);
impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn checkout_over_git_daemon() {
    let fx = Fixture::new();
    let serve = fx.serve_dir();
    let port = free_port();
    let _daemon = KillOnDrop(
        Command::new("git")
            .arg("daemon")
            .arg("--reuseaddr")
            .arg(format!("--base-path={}", serve.display()))
            .arg("--export-all")
            .arg(format!("--port={port}"))
            .arg("--listen=127.0.0.1")
            .arg(&serve)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("git daemon starts"),
    );
    wait_for_port(port);
    let url = format!("git://127.0.0.1:{port}/repo.git");
    let settings = fx.settings();

    let s = SourceSpec {
        commit: Some(fx.c1.clone()),
        ..spec(&url)
    };
    let (res, log) = run_checkout(&settings, &s, &fx.wt("a"));
    let out = res.unwrap();
    assert_eq!(out.commit, fx.c1);
    assert!(!out.cache_hit);
    assert!(log.iter().any(|l| l.starts_with("Received ")), "{log:?}");
    assert_eq!(git(&fx.wt("a"), &["remote", "get-url", "origin"]), url);

    let s = SourceSpec {
        branch: Some("feature".into()),
        ..spec(&url)
    };
    let out = run_checkout(&settings, &s, &fx.wt("b")).0.unwrap();
    assert_eq!(out.commit, fx.c3);
    assert!(out.cache_hit);
    let r = read_file_at(&settings, &spec(&url), "requirements.txt", &mut |_| {});
    assert_eq!(r.unwrap().as_deref(), Some("numpy==2.0\n"));

    let s = SourceSpec {
        commit: Some("0123456789abcdef0123456789abcdef01234567".into()),
        ..spec(&url)
    };
    let msg = run_checkout(&settings, &s, &fx.wt("c"))
        .0
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("0123456789abcdef") && msg.contains(&url),
        "{msg}"
    );
}

// ---------------------------------------------------------------------------------------
// Network: smart http through `git http-backend`, with basic auth

struct HttpServer {
    port: u16,
    unauthorized: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
}

/// Serve `root` with `git http-backend` as CGI, requiring `user:pass` basic auth.
fn http_server(root: PathBuf, user: &str, pass: &str) -> HttpServer {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
    );
    let unauthorized = Arc::new(AtomicUsize::new(0));
    let requests = Arc::new(AtomicUsize::new(0));
    let (un, rq) = (unauthorized.clone(), requests.clone());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            rq.fetch_add(1, Ordering::SeqCst);
            let _ = serve_one(stream, &root, &expected, &un);
        }
    });
    HttpServer {
        port,
        unauthorized,
        requests,
    }
}

fn serve_one(
    stream: TcpStream,
    root: &Path,
    expected_auth: &str,
    unauthorized: &AtomicUsize,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or("GET").to_string();
    let target = parts.next().unwrap_or("/").to_string();
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line)?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let mut body = Vec::new();
    if let Some(len) = header("content-length").and_then(|l| l.parse::<usize>().ok()) {
        body.resize(len, 0);
        reader.read_exact(&mut body)?;
    } else if header("transfer-encoding").is_some_and(|t| t.contains("chunked")) {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size)?;
            let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            let mut chunk = vec![0; size + 2];
            reader.read_exact(&mut chunk)?;
            if size == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..size]);
        }
    }
    if header("authorization").as_deref() != Some(expected_auth) {
        unauthorized.fetch_add(1, Ordering::SeqCst);
        writer.write_all(
            b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"git\"\r\n\
              Content-Length: 0\r\nConnection: close\r\n\r\n",
        )?;
        return Ok(());
    }
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let mut cgi = Command::new("git")
        .arg("http-backend")
        .env("GIT_PROJECT_ROOT", root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("REQUEST_METHOD", &method)
        .env("PATH_INFO", path)
        .env("QUERY_STRING", query)
        .env("CONTENT_TYPE", header("content-type").unwrap_or_default())
        .env("CONTENT_LENGTH", body.len().to_string())
        .env("GIT_PROTOCOL", header("git-protocol").unwrap_or_default())
        .env("REMOTE_ADDR", "127.0.0.1")
        .env("REMOTE_USER", "tester")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    cgi.stdin.take().unwrap().write_all(&body)?;
    let out = cgi.wait_with_output()?;
    let raw = out.stdout;
    let (head_end, sep) = match raw.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(p) => (p, 4),
        None => (raw.windows(2).position(|w| w == b"\n\n").unwrap_or(0), 2),
    };
    let head = String::from_utf8_lossy(&raw[..head_end]).to_string();
    let payload = &raw[(head_end + sep).min(raw.len())..];
    let mut status = "200 OK".to_string();
    let mut response = Vec::new();
    let mut extra = String::new();
    for line in head.lines() {
        match line.split_once(':') {
            Some((k, v)) if k.eq_ignore_ascii_case("status") => status = v.trim().to_string(),
            Some(_) => extra.push_str(&format!("{}\r\n", line.trim_end())),
            None => {}
        }
    }
    response.extend_from_slice(
        format!(
            "HTTP/1.1 {status}\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n",
            payload.len()
        )
        .as_bytes(),
    );
    response.extend_from_slice(payload);
    writer.write_all(&response)
}

#[test]
fn http_with_credentials_and_no_secret_in_logs_or_errors() {
    let fx = Fixture::new();
    let serve = fx.serve_dir();
    let secret = "s3cr3t-T0KEN";
    let server = http_server(serve, "alice", secret);
    let url = format!("http://127.0.0.1:{}/repo.git", server.port);

    // git_user / git_pass offered through the callback.
    let settings = VcsSettings {
        git_user: Some("alice".into()),
        git_pass: Some(secret.into()),
        ..fx.settings()
    };
    let s = SourceSpec {
        tag: Some("v1".into()),
        ..spec(&url)
    };
    let (res, log) = run_checkout(&settings, &s, &fx.wt("a"));
    assert_eq!(res.unwrap().commit, fx.c1);
    assert!(!log.join("\n").contains(secret), "{log:?}");

    // git_host names another host: nothing is offered, and the error says why.
    let elsewhere = VcsSettings {
        git_host: Some("github.com".into()),
        cache_enabled: false,
        ..settings.clone()
    };
    let err = run_checkout(&elsewhere, &s, &fx.wt("b")).0.unwrap_err();
    assert!(matches!(err, VcsError::AuthRefused { .. }), "{err:?}");
    assert!(err.to_string().contains(&url), "{err}");

    // A wrong password: refused once, no retry loop, the password never shown.
    let wrong = "wr0ng-PASSWORD";
    let bad = VcsSettings {
        git_pass: Some(wrong.into()),
        cache_enabled: false,
        ..settings.clone()
    };
    let before = server.unauthorized.load(Ordering::SeqCst);
    let (res, log) = run_checkout(&bad, &s, &fx.wt("c"));
    let err = res.unwrap_err();
    assert!(matches!(err, VcsError::AuthRefused { .. }), "{err:?}");
    let refusals = server.unauthorized.load(Ordering::SeqCst) - before;
    eprintln!("refusals: {refusals}; {err}");
    assert!(
        refusals <= 3,
        "{refusals} refused requests: the callback looped"
    );
    let everything = format!("{err} {err:?} {}", log.join("\n"));
    assert!(!everything.contains(wrong), "{everything}");

    // Credentials embedded in the URL: used, and masked everywhere.
    let embedded = format!("http://alice:{secret}@127.0.0.1:{}/repo.git", server.port);
    let plain = VcsSettings {
        cache_enabled: true,
        ..fx.settings()
    };
    let (res, log) = run_checkout(&plain, &spec(&embedded), &fx.wt("d"));
    assert_eq!(res.unwrap().commit, fx.c2);
    assert!(!log.join("\n").contains(secret), "{log:?}");
    assert!(log.iter().any(|l| l.contains("alice:********@")), "{log:?}");
    // The worktree's origin carries no credentials.
    assert_eq!(git(&fx.wt("d"), &["remote", "get-url", "origin"]), url);
    let wrong_embedded = format!("http://alice:{wrong}@127.0.0.1:{}/repo.git", server.port);
    let s = SourceSpec {
        commit: Some("0123456789abcdef0123456789abcdef01234567".into()),
        ..spec(&wrong_embedded)
    };
    let (res, log) = run_checkout(&fx.settings(), &s, &fx.wt("e"));
    let err = res.unwrap_err();
    let everything = format!("{err} {err:?} {}", log.join("\n"));
    assert!(!everything.contains(wrong), "{everything}");
    assert!(everything.contains("127.0.0.1"), "{everything}");
    assert!(server.requests.load(Ordering::SeqCst) > 0);
}
