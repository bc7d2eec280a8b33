//! `journal export`: a run as JSON, usable as a replay-test fixture.
//!
//! Each record carries its decoded body and its exact stored bytes (`raw_hex`), so a
//! fixture checks both the state machine and the frozen on-disk codec. A record whose
//! body had to be redacted carries no raw bytes (they would hold the secret).

use serde::{Deserialize, Serialize};

use super::envelope::{self, RecordBody};
use super::replay::{self, LoadedRun, Problem};
use super::{Journal, JournalError};
use crate::fsm::RunState;
use crate::redact;

pub const FORMAT: &str = "clearml-agent-journal-export";
pub const FORMAT_VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExportedRecord {
    pub seq: u64,
    pub at_ms: u64,
    pub event_type: u16,
    pub flags: u16,
    pub name: String,
    /// `None` for an unknown may-ignore record or one that does not decode.
    pub body: Option<RecordBody>,
    pub raw_hex: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub redacted: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunExport {
    pub format: String,
    pub format_version: u32,
    pub schema_version: u16,
    pub run_id: String,
    pub task_id: String,
    pub attempt: u32,
    pub records: Vec<ExportedRecord>,
    /// The state the records fold to, when they fold.
    pub final_state: Option<RunState>,
    pub final_digest: Option<String>,
    pub final_status: String,
}

pub fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn from_hex(hex: &str) -> Result<Vec<u8>, String> {
    if !hex.len().is_multiple_of(2) {
        return Err(format!("odd-length hex string ({} chars)", hex.len()));
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| {
            u8::from_str_radix(&hex[i..i + 2], 16).map_err(|e| format!("bad hex at char {i}: {e}"))
        })
        .collect()
}

/// Serialize with secrets masked; reports whether anything was masked.
fn redacted_body(body: &RecordBody) -> (RecordBody, bool) {
    let original = serde_json::to_value(body).expect("record bodies serialize");
    let mut value = original.clone();
    redact::redact_json(&mut value);
    if value == original {
        return (body.clone(), false);
    }
    let masked = serde_json::from_value(value).expect("redaction keeps the shape");
    (masked, true)
}

pub fn export_run(journal: &Journal, run: &str) -> Result<RunExport, JournalError> {
    let meta = journal
        .run_meta(run)?
        .ok_or_else(|| JournalError::NoSuchRun {
            run: run.to_string(),
        })?;
    let raw = journal.raw_records(run)?;
    let records = raw
        .iter()
        .map(|(seq, bytes)| match envelope::decode(*seq, bytes) {
            Ok(rec) => {
                let (body, redacted) = match &rec.body {
                    Some(b) => {
                        let (b, r) = redacted_body(b);
                        (Some(b), r)
                    }
                    None => (None, false),
                };
                ExportedRecord {
                    seq: *seq,
                    at_ms: rec.at_ms,
                    event_type: rec.event_type,
                    flags: rec.flags,
                    name: body
                        .as_ref()
                        .map_or("(unknown, may-ignore)", |b| b.name())
                        .into(),
                    body,
                    raw_hex: (!redacted).then(|| to_hex(bytes)),
                    redacted,
                    error: None,
                }
            }
            Err(e) => ExportedRecord {
                seq: *seq,
                at_ms: 0,
                event_type: 0,
                flags: 0,
                name: "(corrupt)".into(),
                body: None,
                raw_hex: Some(to_hex(bytes)),
                redacted: false,
                error: Some(e.to_string()),
            },
        })
        .collect();
    let folded = replay::load(run, &raw);
    let (final_state, final_digest, final_status) = match folded {
        Ok(l) => {
            let digest = l.state.digest();
            let status = l.state.status_label();
            let mut value = serde_json::to_value(&l.state).expect("state serializes");
            redact::redact_json(&mut value);
            let state: RunState = serde_json::from_value(value).expect("redaction keeps the shape");
            (Some(state), Some(digest), status)
        }
        Err(p) => (None, None, format!("corrupt: {p}")),
    };
    Ok(RunExport {
        format: FORMAT.into(),
        format_version: FORMAT_VERSION,
        schema_version: envelope::SCHEMA_VERSION,
        run_id: meta.run_id,
        task_id: meta.task_id,
        attempt: meta.attempt,
        records,
        final_state,
        final_digest,
        final_status,
    })
}

impl RunExport {
    /// The stored bytes of every record: the exact bytes where the export has them,
    /// re-encoded from the body where it had to be redacted. A record whose raw bytes do
    /// not decode to the exported body is an error: the codec changed.
    pub fn raw_records(&self) -> Result<Vec<(u64, Vec<u8>)>, String> {
        self.records
            .iter()
            .map(|r| {
                let bytes = match (&r.raw_hex, &r.body) {
                    (Some(hex), body) => {
                        let bytes = from_hex(hex).map_err(|e| format!("record {}: {e}", r.seq))?;
                        if let (Some(body), Ok(decoded)) = (body, envelope::decode(r.seq, &bytes)) {
                            if decoded.body.as_ref() != Some(body) {
                                return Err(format!(
                                    "record {}: stored bytes decode to {:?}, the export says {}",
                                    r.seq,
                                    decoded.body.map(|b| b.name()),
                                    body.name()
                                ));
                            }
                        }
                        bytes
                    }
                    (None, Some(body)) => envelope::encode(body, r.at_ms),
                    (None, None) => {
                        return Err(format!("record {}: neither bytes nor body", r.seq))
                    }
                };
                Ok((r.seq, bytes))
            })
            .collect()
    }

    /// Replay the exported records through the FSM, exactly as the runner loads a run.
    pub fn replay(&self) -> Result<LoadedRun, String> {
        let raw = self.raw_records()?;
        replay::load(&self.run_id, &raw).map_err(|p: Problem| format!("run {} {p}", self.run_id))
    }
}
