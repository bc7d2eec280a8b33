//! The console: pages of a task's log without ever loading all of it.
//!
//! The store keeps log events ordered by (timestamp, arrival) and navigates by timestamp only.
//! A [`Cursor`] is a boundary in that order: `(ts, k)` sits after every event older than `ts`
//! and after the first `k` events stamped `ts`, so events sharing a millisecond are neither
//! skipped nor repeated at a page edge. A page is at most [`MAX_EVENTS`] events and about
//! [`MAX_BYTES`] of text. Search scans the log in chunks and stops at [`MAX_MATCHES`]; download
//! streams it in chunks.

use super::session::ApiAuthed;
use super::WebState;
use crate::server::store::{Event, Store, StoreError};
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;

pub const MAX_EVENTS: usize = 500;
pub const MAX_BYTES: usize = 512 * 1024;
pub const MAX_MATCHES: usize = 200;
const CHUNK: usize = 2000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub ts: u64,
    pub k: u64,
}

impl Cursor {
    pub fn parse(s: &str) -> Option<Cursor> {
        let (ts, k) = s.split_once('.')?;
        Some(Cursor {
            ts: ts.parse().ok()?,
            k: k.parse().ok()?,
        })
    }
    pub fn encode(&self) -> String {
        format!("{}.{}", self.ts, self.k)
    }
}

fn ts_of(e: &Event) -> u64 {
    e.get("timestamp").and_then(Value::as_u64).unwrap_or(0)
}

/// Events stamped `ts`, oldest first, at most `limit` of them.
fn at_ts(store: &Store, task: &str, ts: u64, limit: usize) -> Result<Vec<Event>, StoreError> {
    let mut got = store.logs(task, false, ts.checked_sub(1), limit)?;
    got.retain(|e| ts_of(e) == ts);
    Ok(got)
}

/// How many events are stamped `ts` (the size of one millisecond's group).
fn group_len(store: &Store, task: &str, ts: u64) -> Result<u64, StoreError> {
    let mut limit = 256;
    loop {
        let got = store.logs(task, false, ts.checked_sub(1), limit)?;
        let n = got.iter().take_while(|e| ts_of(e) == ts).count();
        if n < got.len() || got.len() < limit {
            return Ok(n as u64);
        }
        limit *= 4;
    }
}

/// One page: events oldest first, the boundaries before and after them.
#[derive(Debug)]
pub struct LogPage {
    pub events: Vec<Event>,
    pub start: Cursor,
    pub end: Cursor,
    /// Whether more events lie beyond the page in the direction it was read.
    pub more: bool,
}

/// Keeps events up to the count and byte caps (at least one).
fn cap(events: &mut Vec<Event>, limit: usize) -> bool {
    let mut bytes = 0;
    let mut keep = 0;
    for e in events.iter() {
        bytes += e.get("msg").and_then(Value::as_str).map_or(0, str::len);
        if keep > 0 && (keep >= limit || bytes > MAX_BYTES) {
            break;
        }
        keep += 1;
    }
    let cut = keep < events.len();
    events.truncate(keep);
    cut
}

/// The boundary after `events` (oldest first), which were read after `from`.
fn end_after(from: Cursor, events: &[Event]) -> Cursor {
    let Some(last) = events.last() else {
        return from;
    };
    let t = ts_of(last);
    let c = events.iter().rev().take_while(|e| ts_of(e) == t).count() as u64;
    if t == from.ts && c == events.len() as u64 {
        Cursor {
            ts: t,
            k: from.k + c,
        }
    } else {
        Cursor { ts: t, k: c }
    }
}

/// Up to `limit` events after `from`, oldest first.
pub fn after(store: &Store, task: &str, from: Cursor, limit: usize) -> Result<LogPage, StoreError> {
    let limit = limit.clamp(1, MAX_EVENTS);
    let want = limit + 1 + from.k as usize;
    let mut got = store.logs(task, false, from.ts.checked_sub(1), want)?;
    let full = got.len() == want;
    // Skip the `k` events of `from.ts` already before the boundary.
    let skip = got
        .iter()
        .take(from.k as usize)
        .take_while(|e| ts_of(e) == from.ts)
        .count();
    got.drain(..skip);
    let more = cap(&mut got, limit) || full;
    let end = end_after(from, &got);
    Ok(LogPage {
        events: got,
        start: from,
        end,
        more,
    })
}

/// Up to `limit` events before `to`, oldest first.
pub fn before(store: &Store, task: &str, to: Cursor, limit: usize) -> Result<LogPage, StoreError> {
    let limit = limit.clamp(1, MAX_EVENTS);
    // The first `k` events of `to.ts` are before the boundary: the newest part of the page.
    let mut head = at_ts(store, task, to.ts, to.k as usize)?;
    let mut newest_first: Vec<Event> = head.drain(..).rev().collect();
    if newest_first.len() < limit + 1 {
        let older = store.logs(task, true, Some(to.ts), limit + 1 - newest_first.len())?;
        newest_first.extend(older);
    }
    let more = cap(&mut newest_first, limit) || newest_first.len() > limit;
    newest_first.truncate(limit);
    let events: Vec<Event> = newest_first.into_iter().rev().collect();
    let start = match events.first() {
        None => to,
        Some(first) => {
            let t = ts_of(first);
            let shown = events.iter().take_while(|e| ts_of(e) == t).count() as u64;
            let before_boundary = if t == to.ts {
                to.k
            } else {
                group_len(store, task, t)?
            };
            Cursor {
                ts: t,
                k: before_boundary.saturating_sub(shown),
            }
        }
    };
    Ok(LogPage {
        events,
        start,
        end: to,
        more,
    })
}

/// The newest `limit` events.
pub fn tail(store: &Store, task: &str, limit: usize) -> Result<LogPage, StoreError> {
    let limit = limit.clamp(1, MAX_EVENTS);
    let newest = store.logs(task, true, None, 1)?;
    let Some(last) = newest.first() else {
        let zero = Cursor { ts: 0, k: 0 };
        return Ok(LogPage {
            events: vec![],
            start: zero,
            end: zero,
            more: false,
        });
    };
    let t = ts_of(last);
    let end = Cursor {
        ts: t,
        k: group_len(store, task, t)?,
    };
    before(store, task, end, limit)
}

/// A line found by [`search`]: where its event starts and the line's text.
pub struct Match {
    pub at: Cursor,
    pub line: String,
}

/// The first [`MAX_MATCHES`] lines containing `needle` (case-insensitive), oldest first, and
/// how many events were scanned.
pub fn search(
    store: &Store,
    task: &str,
    needle: &str,
) -> Result<(Vec<Match>, u64, bool), StoreError> {
    let needle = needle.to_lowercase();
    let mut at = Cursor { ts: 0, k: 0 };
    let mut found = Vec::new();
    let mut scanned = 0u64;
    loop {
        let want = CHUNK + at.k as usize;
        let mut got = store.logs(task, false, at.ts.checked_sub(1), want)?;
        let skip = got
            .iter()
            .take(at.k as usize)
            .take_while(|e| ts_of(e) == at.ts)
            .count();
        got.drain(..skip);
        if got.is_empty() {
            return Ok((found, scanned, false));
        }
        let mut pos = at;
        for e in &got {
            let t = ts_of(e);
            let here = if t == pos.ts {
                pos
            } else {
                Cursor { ts: t, k: 0 }
            };
            let msg = e.get("msg").and_then(Value::as_str).unwrap_or("");
            if msg.to_lowercase().contains(&needle) {
                for line in msg.lines().filter(|l| l.to_lowercase().contains(&needle)) {
                    found.push(Match {
                        at: here,
                        line: line.chars().take(500).collect(),
                    });
                    if found.len() >= MAX_MATCHES {
                        return Ok((found, scanned + 1, true));
                    }
                }
            }
            pos = Cursor {
                ts: t,
                k: here.k + 1,
            };
            scanned += 1;
        }
        at = pos;
        if got.len() < want - skip {
            return Ok((found, scanned, false));
        }
    }
}

fn event_json(e: &Event) -> Value {
    json!({
        "ts": ts_of(e),
        "level": e.get("level").and_then(Value::as_str).unwrap_or(""),
        "msg": e.get("msg").and_then(Value::as_str).unwrap_or(""),
    })
}

fn failed(e: impl std::fmt::Display) -> Response {
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        axum::Json(json!({"error": e.to_string()})),
    )
        .into_response()
}

fn known(web: &WebState, task: &str) -> bool {
    web.app
        .store
        .read(|docs| docs.get(crate::server::store::Kind::Task, task).is_some())
}

/// `GET /web/api/tasks/{task}/log?after=C` (newer than C), `?before=C` (older than C), or
/// neither (the newest page); `limit` events at most.
pub async fn page(
    State(web): State<Arc<WebState>>,
    _authed: ApiAuthed,
    Path(task): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if !known(&web, &task) {
        return (
            StatusCode::NOT_FOUND,
            axum::Json(json!({"error": "no such task"})),
        )
            .into_response();
    }
    let limit = q.get("limit").and_then(|l| l.parse().ok()).unwrap_or(200);
    let after_c = q.get("after").and_then(|c| Cursor::parse(c));
    let before_c = q.get("before").and_then(|c| Cursor::parse(c));
    let result = tokio::task::spawn_blocking(move || {
        let store = &web.app.store;
        let page = match (after_c, before_c) {
            (Some(c), _) => after(store, &task, c, limit),
            (None, Some(c)) => before(store, &task, c, limit),
            (None, None) => tail(store, &task, limit),
        }?;
        Ok::<_, StoreError>((page, store.log_count(&task)?))
    })
    .await;
    match result {
        Ok(Ok((p, total))) => axum::Json(json!({
            "events": p.events.iter().map(event_json).collect::<Vec<_>>(),
            "start": p.start.encode(),
            "end": p.end.encode(),
            "more": p.more,
            "total": total,
        }))
        .into_response(),
        Ok(Err(e)) => failed(e),
        Err(e) => failed(e),
    }
}

/// `GET /web/api/tasks/{task}/log/search?q=text`.
pub async fn search_handler(web: Arc<WebState>, task: String, needle: String) -> Response {
    if needle.trim().is_empty() {
        return axum::Json(json!({"matches": [], "scanned": 0, "truncated": false}))
            .into_response();
    }
    let result = tokio::task::spawn_blocking(move || search(&web.app.store, &task, &needle)).await;
    match result {
        Ok(Ok((matches, scanned, truncated))) => axum::Json(json!({
            "matches": matches.iter().map(|m| json!({"at": m.at.encode(), "line": m.line})).collect::<Vec<_>>(),
            "scanned": scanned,
            "truncated": truncated,
        }))
        .into_response(),
        Ok(Err(e)) => failed(e),
        Err(e) => failed(e),
    }
}

pub async fn search_route(
    State(web): State<Arc<WebState>>,
    _authed: ApiAuthed,
    Path(task): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if !known(&web, &task) {
        return (
            StatusCode::NOT_FOUND,
            axum::Json(json!({"error": "no such task"})),
        )
            .into_response();
    }
    search_handler(web, task, q.get("q").cloned().unwrap_or_default()).await
}

/// `GET /web/api/tasks/{task}/log.txt`: the whole console as text, streamed chunk by chunk.
pub async fn download(
    State(web): State<Arc<WebState>>,
    _authed: ApiAuthed,
    Path(task): Path<String>,
) -> Response {
    if !known(&web, &task) {
        return (StatusCode::NOT_FOUND, "no such task").into_response();
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(4);
    let name = format!("attachment; filename=\"{task}.log\"");
    tokio::task::spawn_blocking(move || {
        let mut at = Cursor { ts: 0, k: 0 };
        loop {
            let page = match after(&web.app.store, &task, at, MAX_EVENTS) {
                Ok(p) => p,
                Err(e) => {
                    let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
                    return;
                }
            };
            if page.events.is_empty() {
                return;
            }
            let mut buf = Vec::new();
            for e in &page.events {
                let msg = e.get("msg").and_then(Value::as_str).unwrap_or("");
                buf.extend_from_slice(msg.as_bytes());
                if !msg.ends_with('\n') {
                    buf.push(b'\n');
                }
            }
            if tx.blocking_send(Ok(buf)).is_err() {
                return; // the client went away
            }
            at = page.end;
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    (
        [
            (
                header::CONTENT_TYPE,
                "text/plain; charset=utf-8".to_string(),
            ),
            (header::CONTENT_DISPOSITION, name),
        ],
        Body::from_stream(stream),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fill(store: &Store, task: &str, stamps: &[u64]) {
        let events: Vec<(u64, Event)> = stamps
            .iter()
            .enumerate()
            .map(|(i, ts)| {
                (
                    *ts,
                    json!({"timestamp": ts, "msg": format!("line {i}\n"), "level": "info"}),
                )
            })
            .collect();
        store.append_logs(task, &events).unwrap();
    }

    fn msgs(p: &LogPage) -> Vec<String> {
        p.events
            .iter()
            .map(|e| e["msg"].as_str().unwrap().trim().to_string())
            .collect()
    }

    /// Paging in both directions sees every event exactly once, also when a millisecond's group
    /// of events straddles a page edge.
    #[test]
    fn pages_cover_every_event_once_across_shared_timestamps() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        // 3 at t=10, 7 at t=20, 1 at t=30, 5 at t=40.
        let stamps: Vec<u64> = [10; 3]
            .into_iter()
            .chain([20; 7])
            .chain([30])
            .chain([40; 5])
            .collect();
        fill(&store, "t", &stamps);
        let all: Vec<String> = (0..stamps.len()).map(|i| format!("line {i}")).collect();
        for limit in 1..=6 {
            let mut seen = Vec::new();
            let mut at = Cursor { ts: 0, k: 0 };
            loop {
                let p = after(&store, "t", at, limit).unwrap();
                if p.events.is_empty() {
                    break;
                }
                seen.extend(msgs(&p));
                at = p.end;
            }
            assert_eq!(seen, all, "forward, limit {limit}");
            let mut p = tail(&store, "t", limit).unwrap();
            let mut back = msgs(&p);
            for _ in 0..100 {
                if !p.more {
                    break;
                }
                p = before(&store, "t", p.start, limit).unwrap();
                let mut m = msgs(&p);
                m.extend(back);
                back = m;
            }
            assert_eq!(p.start, Cursor { ts: 10, k: 0 }, "limit {limit}");
            assert_eq!(back, all, "backward, limit {limit}");
        }
        // A tail followed by `after` sees only what arrives later.
        let t = tail(&store, "t", 4).unwrap();
        assert!(after(&store, "t", t.end, 10).unwrap().events.is_empty());
        fill(&store, "t", &[40, 50]);
        let newer = after(&store, "t", t.end, 10).unwrap();
        assert_eq!(newer.events.len(), 2);
        let (matches, scanned, truncated) = search(&store, "t", "LINE 1").unwrap();
        // "line 1", "line 10".."line 15", and the second fill's "line 1".
        assert_eq!((matches.len(), scanned, truncated), (8, 18, false));
        let jump = after(&store, "t", matches[1].at, 1).unwrap();
        assert_eq!(msgs(&jump), vec!["line 10"]);
    }
}
