//! Folding stored records through the FSM: strict loading for the runner, exhaustive
//! checking for `journal verify`. Both share [`fold_record`], so they cannot disagree.

use serde::Serialize;
use std::fmt;

use super::envelope::{self, EnvelopeError, Record, RecordBody};
use crate::fsm::{FsmError, RunState};

/// One thing wrong with a run, located at a record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    pub seq: u64,
    pub detail: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "record {}: {}", self.seq, self.detail)
    }
}

impl Problem {
    fn envelope(seq: u64, e: &EnvelopeError) -> Self {
        Problem {
            seq,
            detail: e.to_string(),
        }
    }
    fn gap(seq: u64, expected: u64) -> Self {
        Problem {
            seq,
            detail: format!("sequence gap: expected sequence {expected}, got {seq}"),
        }
    }
    fn fsm(seq: u64, event: &str, e: &FsmError) -> Self {
        Problem {
            seq,
            detail: format!("the state machine refused {event}: {e}"),
        }
    }
    fn digest(seq: u64, expected: &str, got: &str) -> Self {
        Problem {
            seq,
            detail: format!("state digest mismatch: expected {expected}, got {got}"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct LoadedRun {
    pub state: RunState,
    /// The sequence the next append must name.
    pub next_seq: u64,
    /// Records stored now (1 for a compacted run).
    pub records: u64,
    pub first_at_ms: u64,
    pub last_at_ms: u64,
    pub last_event: String,
    pub compacted: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    pub run: String,
    pub records: u64,
    pub problems: Vec<Problem>,
    /// The state reached by folding up to the first problem.
    pub state: String,
    pub digest: String,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

struct Fold {
    state: RunState,
    compacted: bool,
}

/// Apply one decoded record to the fold.
fn fold_record(fold: &mut Fold, rec: &Record) -> Result<(), Problem> {
    match &rec.body {
        None => Ok(()), // unknown but may-ignore
        Some(RecordBody::Event(e)) => fold
            .state
            .apply(e)
            .map_err(|err| Problem::fsm(rec.seq, e.name(), &err)),
        Some(RecordBody::StateDigest { digest }) => {
            let got = fold.state.digest();
            if &got == digest {
                Ok(())
            } else {
                Err(Problem::digest(rec.seq, digest, &got))
            }
        }
        Some(RecordBody::Snapshot { state, digest, .. }) => {
            fold_snapshot(fold, rec.seq, &state.0, digest)
        }
        Some(RecordBody::SnapshotV2 { state, digest, .. }) => {
            fold_snapshot(fold, rec.seq, state, digest)
        }
    }
}

fn fold_snapshot(fold: &mut Fold, seq: u64, state: &RunState, digest: &str) -> Result<(), Problem> {
    {
        {
            if seq != 1 {
                return Err(Problem {
                    seq,
                    detail: "a snapshot record may only be the first record of a run".into(),
                });
            }
            let got = state.digest();
            if got != digest {
                return Err(Problem::digest(seq, digest, &got));
            }
            fold.state = state.clone();
            fold.compacted = true;
            Ok(())
        }
    }
}

/// Strict load: the first problem refuses the whole run.
pub fn load(_run: &str, raw: &[(u64, Vec<u8>)]) -> Result<LoadedRun, Problem> {
    if raw.is_empty() {
        return Err(Problem {
            seq: 1,
            detail: "the run has no records".into(),
        });
    }
    let mut fold = Fold {
        state: RunState::default(),
        compacted: false,
    };
    let (mut first_at_ms, mut last_at_ms, mut last_event) = (0, 0, String::new());
    for (i, (seq, bytes)) in raw.iter().enumerate() {
        let expected = i as u64 + 1;
        if *seq != expected {
            return Err(Problem::gap(*seq, expected));
        }
        let rec = envelope::decode(*seq, bytes).map_err(|e| Problem::envelope(*seq, &e))?;
        fold_record(&mut fold, &rec)?;
        if i == 0 {
            first_at_ms = rec.at_ms;
        }
        last_at_ms = rec.at_ms;
        // Bookkeeping records (digests, ignored types) are not what a user means by "last event".
        if let Some(
            body @ (RecordBody::Event(_)
            | RecordBody::Snapshot { .. }
            | RecordBody::SnapshotV2 { .. }),
        ) = &rec.body
        {
            last_event = body.name().to_string();
        }
    }
    Ok(LoadedRun {
        state: fold.state,
        next_seq: raw.len() as u64 + 1,
        records: raw.len() as u64,
        first_at_ms,
        last_at_ms,
        last_event,
        compacted: fold.compacted,
    })
}

/// Exhaustive check: every envelope is decoded and every gap reported; folding stops at
/// the first record that cannot be folded, since later states would be meaningless.
pub fn verify(run: &str, raw: &[(u64, Vec<u8>)]) -> VerifyReport {
    let mut problems = vec![];
    let mut fold = Fold {
        state: RunState::default(),
        compacted: false,
    };
    let mut folding = true;
    let mut expected = 1;
    if raw.is_empty() {
        problems.push(Problem {
            seq: 1,
            detail: "the run has no records".into(),
        });
    }
    for (seq, bytes) in raw {
        if *seq != expected {
            problems.push(Problem::gap(*seq, expected));
            folding = false;
        }
        expected = seq + 1;
        match envelope::decode(*seq, bytes) {
            Err(e) => {
                problems.push(Problem::envelope(*seq, &e));
                folding = false;
            }
            Ok(rec) if folding => {
                if let Err(p) = fold_record(&mut fold, &rec) {
                    problems.push(p);
                    folding = false;
                }
            }
            Ok(_) => {}
        }
    }
    VerifyReport {
        run: run.to_string(),
        records: raw.len() as u64,
        problems,
        state: fold.state.status_label(),
        digest: fold.state.digest(),
    }
}
