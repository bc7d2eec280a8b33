//! The on-disk record envelope.
//!
//! ```text
//! offset  size  field
//! 0       4     magic "CMJR"
//! 4       2     schema version (big endian)
//! 6       2     event type
//! 8       2     flags (bit 0: may-ignore)
//! 10      4     payload length
//! 14      4     CRC32C over bytes 0..14 and the payload
//! 18      n     payload: bincode 1.3.3 of (at_ms, body)
//! ```
//! The CRC covers the header too, so a flipped type or length byte is caught as well.

use serde::{Deserialize, Serialize};

use crate::fsm::{Event, RunState, V1State};

pub const MAGIC: [u8; 4] = *b"CMJR";
pub const SCHEMA_VERSION: u16 = 1;
pub const HEADER_LEN: usize = 18;
/// A record a reader may skip when it does not know its type.
pub const FLAG_MAY_IGNORE: u16 = 1;

/// Event type codes. They are part of the on-disk format: never renumber.
pub mod types {
    pub const PULLED: u16 = 1;
    pub const EFFECT_STARTED: u16 = 2;
    pub const EFFECT_DONE: u16 = 3;
    pub const EFFECT_FAILED: u16 = 4;
    pub const ABORT_REQUESTED: u16 = 5;
    pub const REQUEUE_REQUESTED: u16 = 6;
    pub const RESUMED: u16 = 7;
    pub const PULLED_V2: u16 = 8;
    pub const STATE_DIGEST: u16 = 64;
    pub const SNAPSHOT: u16 = 65;
    pub const SNAPSHOT_V2: u16 = 66;
}

/// What a record holds: an FSM event, or journal bookkeeping.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RecordBody {
    Event(Event),
    /// The digest of the state folded from every record before this one.
    StateDigest {
        digest: String,
    },
    /// A compacted terminal run, as the first schema wrote it (its state without `RunExt`).
    Snapshot {
        state: Box<V1State>,
        digest: String,
        compacted_records: u64,
    },
    /// A compacted terminal run: its final state replaces its records.
    SnapshotV2 {
        state: Box<RunState>,
        digest: String,
        compacted_records: u64,
    },
}

impl RecordBody {
    pub fn event_type(&self) -> u16 {
        match self {
            RecordBody::Event(e) => match e {
                Event::Pulled { .. } => types::PULLED,
                Event::EffectStarted { .. } => types::EFFECT_STARTED,
                Event::EffectDone { .. } => types::EFFECT_DONE,
                Event::EffectFailed { .. } => types::EFFECT_FAILED,
                Event::AbortRequested { .. } => types::ABORT_REQUESTED,
                Event::RequeueRequested { .. } => types::REQUEUE_REQUESTED,
                Event::Resumed(_) => types::RESUMED,
                Event::PulledV2 { .. } => types::PULLED_V2,
            },
            RecordBody::StateDigest { .. } => types::STATE_DIGEST,
            RecordBody::Snapshot { .. } => types::SNAPSHOT,
            RecordBody::SnapshotV2 { .. } => types::SNAPSHOT_V2,
        }
    }

    /// Bookkeeping records may be skipped by an older reader; events may not.
    pub fn flags(&self) -> u16 {
        match self {
            RecordBody::StateDigest { .. } => FLAG_MAY_IGNORE,
            _ => 0,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            RecordBody::Event(e) => e.name(),
            RecordBody::StateDigest { .. } => "StateDigest",
            RecordBody::Snapshot { .. } | RecordBody::SnapshotV2 { .. } => "Snapshot",
        }
    }
}

fn known_type(t: u16) -> bool {
    (types::PULLED..=types::PULLED_V2).contains(&t)
        || (types::STATE_DIGEST..=types::SNAPSHOT_V2).contains(&t)
}

/// A decoded record. `body` is `None` for an unknown type flagged may-ignore.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub seq: u64,
    pub at_ms: u64,
    pub event_type: u16,
    pub flags: u16,
    pub body: Option<RecordBody>,
}

/// What is wrong with one stored record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("truncated: {found} bytes, the envelope header needs {HEADER_LEN}")]
    ShortHeader { found: usize },
    #[error("bad magic: expected {:?}, got {got:?}", String::from_utf8_lossy(&MAGIC))]
    BadMagic { got: String },
    #[error("unsupported schema version: expected {SCHEMA_VERSION}, got {got}")]
    Schema { got: u16 },
    #[error("truncated: envelope says {expected} payload bytes, found {found}")]
    Truncated { expected: usize, found: usize },
    #[error("CRC32C mismatch: expected {expected:08x}, got {got:08x}")]
    Crc { expected: u32, got: u32 },
    #[error("unknown event type {0} without the may-ignore flag")]
    UnknownType(u16),
    #[error("payload of event type {event_type} does not decode: {reason}")]
    Payload { event_type: u16, reason: String },
    #[error("payload decodes as {body}, but the envelope says event type {event_type}")]
    TypeMismatch { event_type: u16, body: &'static str },
}

pub fn encode(body: &RecordBody, at_ms: u64) -> Vec<u8> {
    let payload = bincode::serialize(&(at_ms, body)).expect("journal records always serialize");
    encode_raw(body.event_type(), body.flags(), &payload)
}

/// Build an envelope around an arbitrary payload; also used by tests to forge records.
pub fn encode_raw(event_type: u16, flags: u16, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&SCHEMA_VERSION.to_be_bytes());
    out.extend_from_slice(&event_type.to_be_bytes());
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    let crc = crc32c::crc32c_append(crc32c::crc32c(&out), payload);
    out.extend_from_slice(&crc.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

fn be16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}
fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// The checked header fields and payload of an envelope: magic, length and CRC verified, then
/// the schema (after the CRC, so a corrupt version field reads as corruption).
struct Checked<'a> {
    event_type: u16,
    flags: u16,
    payload: &'a [u8],
}

fn check(bytes: &[u8]) -> Result<Checked<'_>, EnvelopeError> {
    if bytes.len() < HEADER_LEN {
        return Err(EnvelopeError::ShortHeader { found: bytes.len() });
    }
    if bytes[0..4] != MAGIC {
        return Err(EnvelopeError::BadMagic {
            got: String::from_utf8_lossy(&bytes[0..4]).into_owned(),
        });
    }
    let len = be32(&bytes[10..14]) as usize;
    let stored_crc = be32(&bytes[14..18]);
    let payload = &bytes[HEADER_LEN..];
    if payload.len() != len {
        return Err(EnvelopeError::Truncated {
            expected: len,
            found: payload.len(),
        });
    }
    let crc = crc32c::crc32c_append(crc32c::crc32c(&bytes[0..14]), payload);
    if crc != stored_crc {
        return Err(EnvelopeError::Crc {
            expected: stored_crc,
            got: crc,
        });
    }
    let schema = be16(&bytes[4..6]);
    if schema != SCHEMA_VERSION {
        return Err(EnvelopeError::Schema { got: schema });
    }
    Ok(Checked {
        event_type: be16(&bytes[6..8]),
        flags: be16(&bytes[8..10]),
        payload,
    })
}

pub fn decode(seq: u64, bytes: &[u8]) -> Result<Record, EnvelopeError> {
    let Checked {
        event_type,
        flags,
        payload,
    } = check(bytes)?;
    if !known_type(event_type) {
        if flags & FLAG_MAY_IGNORE != 0 {
            let at_ms = payload
                .get(0..8)
                .map_or(0, |b| u64::from_le_bytes(b.try_into().expect("8 bytes")));
            return Ok(Record {
                seq,
                at_ms,
                event_type,
                flags,
                body: None,
            });
        }
        return Err(EnvelopeError::UnknownType(event_type));
    }
    let (at_ms, body): (u64, RecordBody) =
        bincode::deserialize(payload).map_err(|e| EnvelopeError::Payload {
            event_type,
            reason: e.to_string(),
        })?;
    if body.event_type() != event_type {
        return Err(EnvelopeError::TypeMismatch {
            event_type,
            body: body.name(),
        });
    }
    Ok(Record {
        seq,
        at_ms,
        event_type,
        flags,
        body: Some(body),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> RecordBody {
        RecordBody::Event(Event::AbortRequested { by: "alice".into() })
    }

    #[test]
    fn roundtrip() {
        let bytes = encode(&sample(), 42);
        let rec = decode(7, &bytes).unwrap();
        assert_eq!(rec.seq, 7);
        assert_eq!(rec.at_ms, 42);
        assert_eq!(rec.body, Some(sample()));
    }

    #[test]
    fn every_single_byte_flip_is_detected() {
        let bytes = encode(&sample(), 42);
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x01;
            assert!(decode(1, &b).is_err(), "flip at byte {i} went unnoticed");
        }
    }

    #[test]
    fn truncation_is_reported_with_lengths() {
        let bytes = encode(&sample(), 42);
        let cut = &bytes[..bytes.len() - 3];
        match decode(1, cut) {
            Err(EnvelopeError::Truncated { expected, found }) => assert_eq!(expected, found + 3),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            decode(1, &bytes[..5]),
            Err(EnvelopeError::ShortHeader { found: 5 })
        ));
    }

    #[test]
    fn unknown_types_fail_unless_may_ignore() {
        let payload = bincode::serialize(&(5u64, "future")).unwrap();
        assert_eq!(
            decode(1, &encode_raw(999, 0, &payload)),
            Err(EnvelopeError::UnknownType(999))
        );
        let rec = decode(1, &encode_raw(999, FLAG_MAY_IGNORE, &payload)).unwrap();
        assert_eq!(rec.body, None);
        assert_eq!(rec.at_ms, 5);
    }
}

/// Side-tree entries (run metadata, progress, epochs, clean-stop notes) use the same envelope,
/// with type codes of their own, so a flipped bit there is caught as well. Entries written
/// before they had one (no magic) are read as they were stored.
pub mod side {
    pub const RUN_META: u16 = 128;
    pub const PROGRESS: u16 = 129;
    pub const EPOCH: u16 = 130;
    pub const SHUTDOWN: u16 = 131;
}

pub fn encode_side(kind: u16, payload: &[u8]) -> Vec<u8> {
    encode_raw(kind, 0, payload)
}

/// The payload of a side entry; `Ok(None)` marks one from before side envelopes (the caller
/// decodes the bytes as they are).
pub fn decode_side(kind: u16, bytes: &[u8]) -> Result<Option<&[u8]>, EnvelopeError> {
    if bytes.len() < 4 || bytes[0..4] != MAGIC {
        return Ok(None);
    }
    let checked = check(bytes)?;
    if checked.event_type != kind {
        return Err(EnvelopeError::TypeMismatch {
            event_type: checked.event_type,
            body: "a side entry of another kind",
        });
    }
    let payload = checked.payload;
    Ok(Some(payload))
}
