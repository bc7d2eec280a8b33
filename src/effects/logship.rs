//! Ships a run's output file to the task's console log (`events.add_batch`, level DEBUG, as the
//! Python agent does). The chunking is pure ([`chunk`]); [`LogShipper`] does the IO and moves its
//! offset only after the server acknowledged a batch, so a failed send is retried from the same
//! bytes and nothing is skipped.

use crate::api::ApiClient;
use serde_json::json;
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;

/// Largest message in one log event (upstream: 64 KiB).
pub const MAX_MESSAGE: usize = 64 * 1024;
/// Largest `events.add_batch` request body (upstream: 1 MiB).
pub const MAX_REQUEST: usize = 1024 * 1024;

/// Reduces terminal progress output: of a line redrawn with `\r`, only the last state is kept.
fn reduce_carriage_returns(line: &str) -> &str {
    match line.trim_end_matches('\r').rfind('\r') {
        Some(i) => &line[i + 1..],
        None => line,
    }
}

/// Splits `bytes` into log messages of at most [`MAX_MESSAGE`] bytes, each made of whole lines
/// (a longer line is cut at a character boundary). Only complete lines are taken unless `flush`;
/// returns the messages and how many bytes they consumed.
pub fn chunk(bytes: &[u8], flush: bool) -> (Vec<String>, usize) {
    let consumed = if flush {
        bytes.len()
    } else {
        match bytes.iter().rposition(|&b| b == b'\n') {
            Some(i) => i + 1,
            None if bytes.len() >= MAX_MESSAGE => bytes.len(),
            None => 0,
        }
    };
    let text = String::from_utf8_lossy(&bytes[..consumed]);
    let mut messages = Vec::new();
    let mut current = String::new();
    for raw in text.split_inclusive('\n') {
        let line = reduce_carriage_returns(raw.strip_suffix('\n').unwrap_or(raw));
        let mut piece = format!("{line}{}", if raw.ends_with('\n') { "\n" } else { "" });
        while !piece.is_empty() {
            if current.len() + piece.len() <= MAX_MESSAGE {
                current.push_str(&piece);
                piece.clear();
            } else if current.is_empty() {
                let mut cut = MAX_MESSAGE;
                while !piece.is_char_boundary(cut) {
                    cut -= 1;
                }
                messages.push(piece[..cut].to_string());
                piece = piece[cut..].to_string();
            } else {
                messages.push(std::mem::take(&mut current));
            }
        }
    }
    if !current.is_empty() {
        messages.push(current);
    }
    (messages, consumed)
}

/// Tails one output file into one task's log.
pub struct LogShipper {
    path: PathBuf,
    task: String,
    worker: String,
    offset: u64,
    /// Lines shipped so far (for progress and tests).
    pub shipped_lines: u64,
}

impl LogShipper {
    pub fn new(path: PathBuf, task: &str, worker: &str, offset: u64) -> Self {
        LogShipper {
            path,
            task: task.to_string(),
            worker: worker.to_string(),
            offset,
            shipped_lines: 0,
        }
    }

    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Sends whatever complete output is new (all of it when `flush`). Returns the bytes shipped.
    pub fn ship(&mut self, api: &ApiClient, flush: bool) -> Result<u64, crate::api::ApiError> {
        let mut shipped = 0;
        loop {
            let mut buf = Vec::new();
            if let Ok(mut f) = std::fs::File::open(&self.path) {
                let _ = f.seek(SeekFrom::Start(self.offset));
                let _ = f.take(MAX_REQUEST as u64).read_to_end(&mut buf);
            }
            if buf.is_empty() {
                return Ok(shipped);
            }
            let full_read = buf.len() == MAX_REQUEST;
            let (messages, consumed) = chunk(&buf, flush && !full_read);
            if consumed == 0 {
                return Ok(shipped);
            }
            let now = crate::host::now_ms();
            let events: Vec<serde_json::Value> = messages
                .iter()
                .map(|m| json!({"type": "log", "task": self.task, "level": "DEBUG", "worker": self.worker, "msg": m, "timestamp": now}))
                .collect();
            api.add_events(&events)?;
            self.offset += consumed as u64;
            self.shipped_lines += messages
                .iter()
                .map(|m| m.matches('\n').count() as u64)
                .sum::<u64>();
            shipped += consumed as u64;
            if !full_read {
                return Ok(shipped);
            }
        }
    }
}

/// Sends one line from the agent itself to the task's log (level INFO unless given).
pub fn agent_line(
    api: &ApiClient,
    task: &str,
    worker: &str,
    level: &str,
    msg: &str,
) -> Result<(), crate::api::ApiError> {
    let event = json!({"type": "log", "task": task, "level": level, "worker": worker, "msg": msg, "timestamp": crate::host::now_ms()});
    api.add_events(&[event]).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_complete_lines_unless_flushing() {
        let (m, n) = chunk(b"a\nb\npartial", false);
        assert_eq!((m, n), (vec!["a\nb\n".to_string()], 4));
        let (m, n) = chunk(b"a\nb\npartial", true);
        assert_eq!((m, n), (vec!["a\nb\npartial".to_string()], 11));
        assert_eq!(chunk(b"no newline yet", false), (vec![], 0));
    }

    #[test]
    fn progress_redraws_keep_the_last_state() {
        let (m, _) = chunk(b"10%\r50%\r100%\ndone\n", false);
        assert_eq!(m, vec!["100%\ndone\n".to_string()]);
        let (m, _) = chunk(b"windows line\r\n", false);
        assert_eq!(m, vec!["windows line\r\n".to_string()]);
    }

    #[test]
    fn messages_stay_under_the_cap_and_lose_nothing() {
        let line = "x".repeat(1000) + "\n";
        let input = line.repeat(200);
        let (m, n) = chunk(input.as_bytes(), false);
        assert_eq!(n, input.len());
        assert!(m.iter().all(|x| x.len() <= MAX_MESSAGE));
        assert_eq!(m.concat(), input);
        let huge = "é".repeat(MAX_MESSAGE) + "\n";
        let (m, _) = chunk(huge.as_bytes(), false);
        assert!(m.len() > 1 && m.iter().all(|x| x.len() <= MAX_MESSAGE));
        assert_eq!(m.concat(), huge);
    }
}
