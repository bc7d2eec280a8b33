//! TLS to the API server: a loopback HTTPS endpoint with a certificate from a CA the test
//! makes (openssl CLI). Verification fails by default, passes with the CA bundle (as
//! `api.verify_certificate: /path` or `REQUESTS_CA_BUNDLE` give it), passes with verification
//! off (`api.verify_certificate: false` / `CLEARML_API_HOST_VERIFY_CERT=0`).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use clearml_agent::api::{ApiClient, ApiError, ApiSettings, TlsOptions};
use serde_json::json;

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA (`ca.pem`) and a server certificate for 127.0.0.1 signed by it (`server.pem`,
/// `server.key`).
fn make_certs(dir: &Path) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=fidelity test CA",
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
    );
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ],
    );
}

struct Https(Child);

impl Drop for Https {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A python HTTPS server answering every call with an empty ClearML envelope; returns its
/// port.
fn https_server(dir: &Path) -> (Https, u16) {
    let script = r#"
import http.server, json, ssl, sys
class H(http.server.BaseHTTPRequestHandler):
    def answer(self):
        n = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(n)
        body = json.dumps({"meta": {"result_code": 200, "result_subcode": 0, "result_msg": "OK"}, "data": {"ok": True}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    do_GET = do_POST = answer
    def log_message(self, *a):
        pass
srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(sys.argv[1], sys.argv[2])
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
print(srv.server_address[1], flush=True)
srv.serve_forever()
"#;
    let mut child = Command::new("python3")
        .args(["-c", script])
        .arg(dir.join("server.pem"))
        .arg(dir.join("server.key"))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port = line.trim().parse().expect("the server prints its port");
    (Https(child), port)
}

/// A token the client takes as valid (it never logs in here).
fn token() -> String {
    let b = |v: serde_json::Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    format!(
        "{}.{}.sig",
        b(json!({"alg": "HS256"})),
        b(json!({"exp": exp}))
    )
}

fn client(port: u16, tls: TlsOptions) -> ApiClient {
    ApiClient::new(ApiSettings {
        api_host: format!("https://127.0.0.1:{port}"),
        token: Some(token()),
        max_attempts: 1,
        timeout: Duration::from_secs(20),
        verify_tls: tls.verify,
        ca_bundle: tls.ca_bundle,
        ..ApiSettings::default()
    })
    .unwrap()
}

#[test]
fn a_private_ca_needs_its_bundle_or_verification_off() {
    let d = tempfile::tempdir().unwrap();
    make_certs(d.path());
    let (_server, port) = https_server(d.path());
    let none = |_: &str| None;

    // Default: the webpki roots do not know this CA.
    let e = client(port, TlsOptions::resolve(None, &none))
        .call("debug.ping", &json!({}))
        .unwrap_err();
    assert!(
        matches!(e, ApiError::Transport { .. })
            || e.to_string().to_lowercase().contains("certificate"),
        "{e}"
    );

    // The bundle from api.verify_certificate, and from REQUESTS_CA_BUNDLE.
    let ca = d.path().join("ca.pem");
    let from_config = TlsOptions::resolve(Some(&json!(ca.display().to_string())), &none);
    assert_eq!(
        client(port, from_config)
            .call("debug.ping", &json!({}))
            .unwrap(),
        json!({"ok": true})
    );
    let ca_s = ca.display().to_string();
    let env = |k: &str| (k == "REQUESTS_CA_BUNDLE").then(|| ca_s.clone());
    let from_env = TlsOptions::resolve(None, &env);
    assert_eq!(from_env.ca_bundle.as_deref(), Some(ca.as_path()));
    client(port, from_env)
        .call("debug.ping", &json!({}))
        .unwrap();

    // Verification off, from the config or the variable.
    client(port, TlsOptions::resolve(Some(&json!(false)), &none))
        .call("debug.ping", &json!({}))
        .unwrap();
    let off = |k: &str| (k == "CLEARML_API_HOST_VERIFY_CERT").then(|| "false".to_string());
    client(port, TlsOptions::resolve(None, &off))
        .call("debug.ping", &json!({}))
        .unwrap();

    // A bundle that is not PEM is a configuration error naming the file.
    let junk = d.path().join("junk.pem");
    std::fs::write(&junk, "not a certificate").unwrap();
    let e = ApiClient::new(ApiSettings {
        api_host: format!("https://127.0.0.1:{port}"),
        token: Some(token()),
        ca_bundle: Some(junk.clone()),
        ..ApiSettings::default()
    })
    .unwrap_err();
    assert!(e.to_string().contains("junk.pem"), "{e}");
}
