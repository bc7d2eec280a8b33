//! A fake cloud metadata service for preemption tests and benchmarks.

/// A fake AWS instance metadata service on loopback: IMDSv2 token, then `spot/instance-action`
/// answers 404 until `notice` is set.
pub fn fake_imds(notice: std::sync::Arc<std::sync::atomic::AtomicBool>) -> u16 {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let mut conn = conn;
            let mut buf = Vec::new();
            let mut chunk = [0u8; 1024];
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                match conn.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            let head = String::from_utf8_lossy(&buf).to_string();
            let (status, body) = if head.starts_with("PUT /latest/api/token") {
                ("200 OK", "token-abc".to_string())
            } else if head.starts_with("GET /latest/meta-data/spot/instance-action")
                && head
                    .to_ascii_lowercase()
                    .contains("x-aws-ec2-metadata-token: token-abc")
                && notice.load(std::sync::atomic::Ordering::SeqCst)
            {
                (
                    "200 OK",
                    r#"{"action": "terminate", "time": "2026-11-28T07:00:00Z"}"#.to_string(),
                )
            } else if head.starts_with("GET / ") {
                ("200 OK", "latest".to_string())
            } else {
                ("404 Not Found", "not found".to_string())
            };
            let _ = write!(
                conn,
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    port
}
