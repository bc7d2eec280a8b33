//! The PyTorch resolver for real: a PEP 503 package index served by this test on 127.0.0.1 with
//! tiny `torch`/`torchvision` wheels it writes itself (one index per CUDA build, a CPU index, a
//! find-links page, a legacy URL layout, and a stand-in for PyPI that has a plain `torch`), the
//! resolver reading it over HTTP, and uv and pip installing its answer into real venvs. No
//! outside index is reachable here, and none is used.

use clearml_agent::agent::cuda::CudaVersion;
use clearml_agent::effects::torch::{
    resolve, HttpPages, Platform, ResolveMode, TorchPlan, TorchSettings, TorchTarget,
};
use clearml_agent::effects::venv::{self, EnvSettings, EnvSpec, Manager};
use sha2::{Digest, Sha256};
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};

/// (index directory, package, version, wheel tag, Requires-Dist)
const WHEELS: &[(&str, &str, &str, &str, &[&str])] = &[
    ("pypi", "torch", "2.1.0", "py3-none-any", &[]),
    ("whl/cu121", "torch", "2.1.0+cu121", "py3-none-any", &[]),
    ("whl/cu121", "torch", "2.2.1+cu121", "py3-none-any", &[]),
    (
        "whl/cu121",
        "torchvision",
        "0.16.0+cu121",
        "py3-none-any",
        &["torch==2.1.0"],
    ),
    ("whl/cu118", "torch", "2.0.1+cu118", "py3-none-any", &[]),
    ("whl/cu118", "torch", "2.1.0+cu118", "py3-none-any", &[]),
    ("whl/cu117", "torch", "1.13.1+cu117", "py3-none-any", &[]),
    (
        "whl/cu117",
        "torch",
        "2.2.1+cu117",
        "cp27-cp27mu-linux_x86_64",
        &[],
    ),
    ("whl/cu113", "torch", "1.10.2+cu113", "py3-none-any", &[]),
    ("whl/cpu", "torch", "2.1.0+cpu", "py3-none-any", &[]),
    (
        "whl/cpu",
        "torchvision",
        "0.16.0+cpu",
        "py3-none-any",
        &["torch==2.1.0"],
    ),
];

// ---- wheels: a stored (uncompressed) zip with METADATA, WHEEL and a hashed RECORD ----

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn zip(entries: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut central = Vec::new();
    for (name, data) in entries {
        let offset = out.len() as u32;
        let (crc, size) = (crc32(data), data.len() as u32);
        let common = |buf: &mut Vec<u8>| {
            buf.extend(20u16.to_le_bytes()); // version needed
            buf.extend(0u16.to_le_bytes()); // flags
            buf.extend(0u16.to_le_bytes()); // stored
            buf.extend(0u16.to_le_bytes()); // time
            buf.extend(33u16.to_le_bytes()); // 1980-01-01
            buf.extend(crc.to_le_bytes());
            buf.extend(size.to_le_bytes());
            buf.extend(size.to_le_bytes());
            buf.extend((name.len() as u16).to_le_bytes());
            buf.extend(0u16.to_le_bytes()); // extra
        };
        out.extend(0x0403_4b50u32.to_le_bytes());
        common(&mut out);
        out.extend(name.as_bytes());
        out.extend(data);
        central.extend(0x0201_4b50u32.to_le_bytes());
        central.extend(20u16.to_le_bytes()); // made by
        common(&mut central);
        central.extend(0u16.to_le_bytes()); // comment
        central.extend(0u16.to_le_bytes()); // disk
        central.extend(0u16.to_le_bytes()); // internal attributes
        central.extend((0o100644u32 << 16).to_le_bytes());
        central.extend(offset.to_le_bytes());
        central.extend(name.as_bytes());
    }
    let (cd_offset, cd_size, n) = (out.len() as u32, central.len() as u32, entries.len() as u16);
    out.extend(central);
    out.extend(0x0605_4b50u32.to_le_bytes());
    out.extend([0u8; 4]);
    out.extend(n.to_le_bytes());
    out.extend(n.to_le_bytes());
    out.extend(cd_size.to_le_bytes());
    out.extend(cd_offset.to_le_bytes());
    out.extend(0u16.to_le_bytes());
    out
}

fn wheel(index: &str, name: &str, version: &str, tag: &str, requires: &[&str]) -> Vec<u8> {
    use base64::Engine;
    let info = format!("{name}-{version}.dist-info");
    let mut metadata = format!("Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n");
    for r in requires {
        metadata.push_str(&format!("Requires-Dist: {r}\n"));
    }
    let mut entries = vec![
        (format!("{name}/__init__.py"), format!("__version__ = {version:?}\nindex = {index:?}\n").into_bytes()),
        (format!("{info}/METADATA"), metadata.into_bytes()),
        (
            format!("{info}/WHEEL"),
            format!("Wheel-Version: 1.0\nGenerator: clearml-agent-tests\nRoot-Is-Purelib: true\nTag: {tag}\n").into_bytes(),
        ),
    ];
    let mut record = String::new();
    for (path, data) in &entries {
        let hash = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(data));
        record.push_str(&format!("{path},sha256={hash},{}\n", data.len()));
    }
    record.push_str(&format!("{info}/RECORD,,\n"));
    entries.push((format!("{info}/RECORD"), record.into_bytes()));
    zip(&entries)
}

fn file_name(name: &str, version: &str, tag: &str) -> String {
    format!("{name}-{version}-{tag}.whl")
}

fn href(file: &str) -> String {
    file.replace('+', "%2B")
}

fn page(links: &[(String, String)]) -> String {
    let body: String = links
        .iter()
        .map(|(h, t)| format!("<a href=\"{h}\">{t}</a><br/>\n"))
        .collect();
    format!("<!DOCTYPE html>\n<html><body>\n{body}</body></html>\n")
}

/// The index tree, written once per fixture version under target/tmp.
fn fixture() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("gpu-torch-index-v1");
        if dir.join("done").exists() {
            return dir;
        }
        let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("gpu-torch-index.{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        let mut indexes: std::collections::BTreeMap<
            &str,
            std::collections::BTreeMap<&str, Vec<String>>,
        > = Default::default();
        for (index, name, version, tag, requires) in WHEELS {
            let file = file_name(name, version, tag);
            let project = tmp.join(index).join(name);
            std::fs::create_dir_all(&project).unwrap();
            std::fs::write(
                project.join(&file),
                wheel(index, name, version, tag, requires),
            )
            .unwrap();
            indexes
                .entry(index)
                .or_default()
                .entry(name)
                .or_default()
                .push(file);
        }
        for (index, projects) in &indexes {
            let root: Vec<_> = projects
                .keys()
                .map(|p| (format!("{p}/"), p.to_string()))
                .collect();
            std::fs::write(tmp.join(index).join("index.html"), page(&root)).unwrap();
            let mut flat = Vec::new();
            for (project, files) in projects {
                let links: Vec<_> = files.iter().map(|f| (href(f), f.clone())).collect();
                std::fs::write(
                    tmp.join(index).join(project).join("index.html"),
                    page(&links),
                )
                .unwrap();
                flat.extend(
                    files
                        .iter()
                        .map(|f| (format!("{project}/{}", href(f)), f.clone())),
                );
            }
            // The find-links page upstream's direct mode reads.
            std::fs::write(tmp.join(index).join("torch_stable.html"), page(&flat)).unwrap();
        }
        // Upstream's legacy URL layout (torch_url_template): <prefix><cuXYZ>/torch-<version>-<tag>.whl
        let legacy = tmp.join("legacy/cu121");
        std::fs::create_dir_all(&legacy).unwrap();
        std::fs::write(
            legacy.join("torch-2.1.0-py3-none-any.whl"),
            wheel("legacy", "torch", "2.1.0", "py3-none-any", &[]),
        )
        .unwrap();
        std::fs::write(tmp.join("done"), "").unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::rename(&tmp, &dir).unwrap();
        dir
    })
}

// ---- the index server ----

struct IndexServer {
    port: u16,
    requests: Arc<Mutex<Vec<String>>>,
}

impl IndexServer {
    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}/{path}", self.port)
    }
    fn saw(&self, request: &str) -> bool {
        self.requests.lock().unwrap().iter().any(|r| r == request)
    }
}

fn serve(mut stream: TcpStream, root: &Path, log: &Mutex<Vec<String>>) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut first = String::new();
    reader.read_line(&mut first)?;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header == "\r\n" {
            break;
        }
    }
    let mut parts = first.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or("/"));
    let path = target
        .split(['?', '#'])
        .next()
        .unwrap_or("/")
        .replace("%2B", "+")
        .replace("%2b", "+");
    log.lock().unwrap().push(format!("{method} {path}"));
    let mut file = root.join(path.trim_start_matches('/'));
    if path.ends_with('/') {
        file = file.join("index.html");
    }
    let body = if path.contains("..") {
        None
    } else {
        std::fs::read(&file).ok().filter(|_| file.is_file())
    };
    let head = |status: &str, len: usize, kind: &str| {
        format!("HTTP/1.1 {status}\r\nContent-Length: {len}\r\nContent-Type: {kind}\r\nConnection: close\r\n\r\n")
    };
    match body {
        Some(body) => {
            let kind = if file.extension().is_some_and(|e| e == "html") {
                "text/html"
            } else {
                "application/octet-stream"
            };
            stream.write_all(head("200 OK", body.len(), kind).as_bytes())?;
            if method != "HEAD" {
                stream.write_all(&body)?;
            }
        }
        None => stream
            .write_all(head("404 Not Found", 9, "text/plain").as_bytes())
            .and_then(|_| {
                if method != "HEAD" {
                    stream.write_all(b"not found")
                } else {
                    Ok(())
                }
            })?,
    }
    stream.flush()
}

fn server() -> &'static IndexServer {
    static SERVER: OnceLock<IndexServer> = OnceLock::new();
    SERVER.get_or_init(|| {
        let root = fixture().to_path_buf();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let log = requests.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (root, log) = (root.clone(), log.clone());
                std::thread::spawn(move || {
                    let _ = serve(stream, &root, &log);
                });
            }
        });
        IndexServer { port, requests }
    })
}

// ---- helpers ----

fn settings(mode: ResolveMode) -> TorchSettings {
    let s = server();
    TorchSettings {
        mode,
        extra_index_url_template: s.url("whl/cu{}/"),
        nightly_extra_index_url_template: s.url("whl/nightly/cu{}/"),
        torch_page: s.url("whl/cu{}/torch_stable.html"),
        torch_nightly_page: s.url("whl/nightly/cu{}/torch_nightly.html"),
        url_template_prefix: s.url("legacy/"),
        url_template: "{0.cuda_version}/torch-{0.torch_version}-py3-none-any.whl".into(),
        nightly: false,
    }
}

fn cuda(major: u32, minor: u32) -> TorchTarget {
    TorchTarget::Cuda(CudaVersion::new(major, minor))
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn resolve_with(
    reqs: &[&str],
    target: TorchTarget,
    s: &TorchSettings,
) -> Result<TorchPlan, clearml_agent::effects::torch::TorchError> {
    let platform = Platform::this_machine((3, 11));
    resolve(&strings(reqs), &[], target, &platform, s, &HttpPages::new())
}

/// An empty venv made by the agent's own builder (which also makes sure uv is there). Always
/// with uv (`--seed` puts pip in it): `python -m venv` costs seconds and tests nothing here.
fn new_venv(root: &Path) -> (PathBuf, Platform) {
    let tools = Path::new(env!("CARGO_TARGET_TMPDIR")).join("agent-tools");
    let settings = EnvSettings {
        venvs_dir: root.join("venvs"),
        cache_dir: root.join("cache"),
        tools_dir: tools,
        cache_enabled: false,
        max_entries: 1,
        free_space_threshold_gb: 0.0,
    };
    let spec = EnvSpec {
        manager: Manager::Uv,
        ..EnvSpec::default()
    };
    let mut log = Vec::new();
    let out = venv::build(&settings, &spec, &root.join("venv"), &mut |l| {
        log.push(l.to_string())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", log.join("\n")));
    (
        out.python,
        Platform::for_python_version(&out.python_version).unwrap(),
    )
}

fn uv_binary() -> PathBuf {
    let tools = Path::new(env!("CARGO_TARGET_TMPDIR")).join("agent-tools/uv-venv/bin/uv");
    if tools.is_file() {
        return tools;
    }
    PathBuf::from("uv")
}

/// Installs `plan` the way the venv builder does (`--extra-index-url` per URL, `-r file`), with
/// the PyPI stand-in as the main index so nothing leaves this machine.
fn install(manager: Manager, python: &Path, plan: &TorchPlan, root: &Path) -> std::process::Output {
    let reqs = root.join("requirements.txt");
    std::fs::write(&reqs, plan.requirements.join("\n") + "\n").unwrap();
    let mut cmd = match manager {
        Manager::Uv => {
            let mut c = Command::new(uv_binary());
            c.args(["pip", "install", "--no-cache", "--python"])
                .arg(python);
            c
        }
        Manager::Pip => {
            let mut c = Command::new(python);
            c.args([
                "-m",
                "pip",
                "install",
                "--no-cache-dir",
                "--disable-pip-version-check",
            ]);
            c
        }
    };
    cmd.env("PIP_CONFIG_FILE", "/dev/null")
        .env("UV_NO_CONFIG", "1");
    cmd.arg("--index-url").arg(server().url("pypi/"));
    for url in &plan.extra_index_urls {
        cmd.arg("--extra-index-url").arg(url);
    }
    cmd.arg("-r").arg(&reqs);
    cmd.output().unwrap()
}

fn imported(python: &Path, module: &str) -> String {
    let out = Command::new(python)
        .args([
            "-c",
            &format!("import {module}; print({module}.__version__, {module}.index)"),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn assert_installed(out: &std::process::Output) {
    assert!(
        out.status.success(),
        "install failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

// ---- tests ----

/// CUDA 12.4 has no index of its own here: the resolver walks down (cu124, cu123, cu122 are
/// missing) to cu121, as upstream probes, and uv installs the cu121 builds of torch and
/// torchvision rather than the PyPI stand-in's plain torch.
#[test]
fn uv_installs_the_cuda_build_from_the_walked_down_index() {
    let s = server();
    let plan = resolve_with(
        &["torch==2.1.0", "torchvision"],
        cuda(12, 4),
        &settings(ResolveMode::Pip),
    )
    .unwrap();
    assert_eq!(plan.index.as_deref(), Some(s.url("whl/cu121/").as_str()));
    assert_eq!(
        plan.requirements,
        strings(&["torch==2.1.0.*", "torchvision"])
    );
    assert_eq!(plan.extra_index_urls, vec![s.url("whl/cu121/")]);
    assert!(s.saw("GET /whl/cu124/") && s.saw("GET /whl/cu122/") && s.saw("GET /whl/cu121/torch/"));
    assert!(
        plan.notes
            .iter()
            .any(|n| n.contains("no index for cu124, cu123, cu122")),
        "{:?}",
        plan.notes
    );

    let dir = tempfile::tempdir().unwrap();
    let (python, platform) = new_venv(dir.path());
    assert_eq!(platform.os, std::env::consts::OS);
    assert_installed(&install(Manager::Uv, &python, &plan, dir.path()));
    assert_eq!(imported(&python, "torch"), "2.1.0+cu121 whl/cu121");
    assert_eq!(imported(&python, "torchvision"), "0.16.0+cu121 whl/cu121");
}

/// pip merges every index and takes the highest match: the `+cu118` local build beats PyPI's
/// plain 2.1.0 once the resolver has dropped the pin's `+cu121` label and added the cu118 index.
#[test]
fn pip_installs_the_cuda_build_despite_a_foreign_local_label() {
    let s = server();
    let plan = resolve_with(
        &["torch==2.1.0+cu121"],
        cuda(11, 8),
        &settings(ResolveMode::Pip),
    )
    .unwrap();
    assert_eq!(plan.index.as_deref(), Some(s.url("whl/cu118/").as_str()));
    assert_eq!(plan.requirements, strings(&["torch==2.1.0.*"]));
    let dir = tempfile::tempdir().unwrap();
    let (python, _) = new_venv(dir.path());
    assert_installed(&install(Manager::Pip, &python, &plan, dir.path()));
    assert_eq!(imported(&python, "torch"), "2.1.0+cu118 whl/cu118");
}

/// `--cpu-only`: the CPU index, derived from the template, and its builds.
#[test]
fn cpu_only_uses_the_cpu_index() {
    let s = server();
    let plan = resolve_with(
        &["torch==2.1.0", "torchvision==0.16.0"],
        TorchTarget::Cpu,
        &settings(ResolveMode::Pip),
    )
    .unwrap();
    assert_eq!(plan.extra_index_urls, vec![s.url("whl/cpu/")]);
    let dir = tempfile::tempdir().unwrap();
    let (python, _) = new_venv(dir.path());
    assert_installed(&install(Manager::Uv, &python, &plan, dir.path()));
    assert_eq!(imported(&python, "torch"), "2.1.0+cpu whl/cpu");
    assert_eq!(imported(&python, "torchvision"), "0.16.0+cpu whl/cpu");
}

/// Direct mode: the line becomes `torch @ <wheel URL>` from the find-links page, installable
/// with no extra index at all.
#[test]
fn direct_mode_pins_the_wheel_url() {
    let s = server();
    let plan = resolve_with(
        &["torch==2.1.0 ; python_version >= '3'"],
        cuda(12, 1),
        &settings(ResolveMode::Direct),
    )
    .unwrap();
    let url = s.url("whl/cu121/torch/torch-2.1.0%2Bcu121-py3-none-any.whl");
    assert_eq!(
        plan.requirements,
        vec![format!("torch @ {url} ; python_version >= '3'")]
    );
    assert!(plan.extra_index_urls.is_empty());
    let dir = tempfile::tempdir().unwrap();
    let (python, _) = new_venv(dir.path());
    assert_installed(&install(Manager::Pip, &python, &plan, dir.path()));
    assert_eq!(imported(&python, "torch"), "2.1.0+cu121 whl/cu121");
}

/// Direct mode with no page for any CUDA version: upstream's `torch_url_template` under
/// `torch_url_template_prefix`, checked with HEAD.
#[test]
fn direct_mode_falls_back_to_the_url_template() {
    let s = server();
    let mut settings = settings(ResolveMode::Direct);
    settings.torch_page = s.url("nowhere/cu{}/torch_stable.html");
    let plan = resolve_with(&["torch==2.1.0"], cuda(12, 1), &settings).unwrap();
    assert_eq!(
        plan.requirements,
        vec![format!(
            "torch @ {}",
            s.url("legacy/cu121/torch-2.1.0-py3-none-any.whl")
        )]
    );
    assert!(s.saw("HEAD /legacy/cu121/torch-2.1.0-py3-none-any.whl"));
    // A version the template does not have: an error naming the URL tried.
    let e = resolve_with(&["torch==2.2.1"], cuda(12, 1), &settings).unwrap_err();
    assert!(
        e.reason
            .contains("legacy/cu121/torch-2.2.1-py3-none-any.whl"),
        "{}",
        e.reason
    );
}

/// Old pins live only on lower CUDA indexes: the walk finds them there, and a torch below 1.11
/// brings upstream's setuptools<59.
#[test]
fn old_pins_found_on_lower_cuda_indexes() {
    let s = server();
    let plan = resolve_with(&["torch==1.13.1"], cuda(12, 1), &settings(ResolveMode::Pip)).unwrap();
    assert_eq!(plan.index.as_deref(), Some(s.url("whl/cu117/").as_str()));
    assert_eq!(plan.requirements, strings(&["torch==1.13.1.*"]));
    let plan = resolve_with(&["torch==1.10.2"], cuda(12, 1), &settings(ResolveMode::Pip)).unwrap();
    assert_eq!(plan.index.as_deref(), Some(s.url("whl/cu113/").as_str()));
    assert_eq!(
        plan.requirements,
        strings(&["torch==1.10.2.*", "setuptools<59"])
    );
    let e = resolve_with(&["torch<1.10"], cuda(12, 1), &settings(ResolveMode::Pip)).unwrap_err();
    assert!(
        e.reason.contains("torch<1.10") && e.reason.contains("has 1.10.2+cu113"),
        "{}",
        e.reason
    );
}

/// A pin no index can satisfy: the reason names the package, the CUDA version, python and
/// platform, and each index tried with what it has (including wheels for other pythons).
#[test]
fn unsatisfiable_pin_names_package_cuda_and_indexes() {
    let s = server();
    let e = resolve_with(
        &["torch==2.2.1", "torchvision"],
        cuda(11, 7),
        &settings(ResolveMode::Pip),
    )
    .unwrap_err();
    assert!(!e.retryable);
    let r = &e.reason;
    assert!(
        r.contains("torch==2.2.1.*") && r.contains("CUDA 11.7") && r.contains("python 3.11"),
        "{r}"
    );
    assert!(
        r.contains(&s.url("whl/cu117/")) && r.contains("has 1.13.1+cu117"),
        "{r}"
    );
    assert!(
        r.contains("1 file(s) for other pythons or platforms"),
        "{r}"
    );
    assert!(r.contains("no index at cu116"), "{r}");
    // The installers agree that the pin cannot be met from that index.
    let dir = tempfile::tempdir().unwrap();
    let (python, _) = new_venv(dir.path());
    let forced = TorchPlan {
        requirements: strings(&["torch==2.2.1.*"]),
        extra_index_urls: vec![s.url("whl/cu117/")],
        ..TorchPlan::default()
    };
    assert!(!install(Manager::Uv, &python, &forced, dir.path())
        .status
        .success());
}

/// Other lines, configured extra indexes and `pytorch_resolve: none` are left alone; an index
/// that cannot be reached is a retryable failure naming it.
#[test]
fn other_lines_none_mode_and_unreachable_index() {
    let s = server();
    let platform = Platform::this_machine((3, 11));
    let extra = strings(&["https://mirror.example/simple/"]);
    let reqs = strings(&["six==1.16.0", "torch>=2.0,<2.2  # comment", "-e ./local"]);
    let plan = resolve(
        &reqs,
        &extra,
        cuda(12, 1),
        &platform,
        &settings(ResolveMode::Pip),
        &HttpPages::new(),
    )
    .unwrap();
    assert_eq!(
        plan.requirements,
        strings(&["six==1.16.0", "torch>=2.0,<2.2", "-e ./local"])
    );
    assert_eq!(
        plan.extra_index_urls,
        vec![extra[0].clone(), s.url("whl/cu121/")]
    );
    let plan = resolve(
        &reqs,
        &extra,
        cuda(12, 1),
        &platform,
        &settings(ResolveMode::None),
        &HttpPages::new(),
    )
    .unwrap();
    assert_eq!(plan.extra_index_urls, extra);
    assert_eq!(plan.index, None);
    // Nothing listens on a port just freed.
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut unreachable = settings(ResolveMode::Pip);
    unreachable.extra_index_url_template = format!("http://127.0.0.1:{closed}/whl/cu{{}}/");
    let e = resolve(
        &reqs,
        &[],
        cuda(12, 1),
        &platform,
        &unreachable,
        &HttpPages::new(),
    )
    .unwrap_err();
    assert!(
        e.retryable && e.reason.contains(&format!("127.0.0.1:{closed}/whl/cu121/")),
        "{}",
        e.reason
    );
}
