//! What `journal inspect` shows: one summary line per run, or one run's timeline.

use serde::Serialize;
use std::collections::HashMap;

use super::envelope::{self, RecordBody};
use super::{Journal, JournalError, Progress, RunMeta};
use crate::fsm::{EffectResult, Event};
use crate::redact;

#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    pub run_id: String,
    pub task_id: String,
    pub attempt: u32,
    /// Phase, outcome, or `corrupt: ...` for a run that does not verify.
    pub state: String,
    /// The outcome with its reason, once decided.
    pub outcome: Option<String>,
    pub created_ms: u64,
    pub last_at_ms: u64,
    pub last_event: String,
    pub records: u64,
    pub resumes: usize,
    pub epoch: u64,
    pub compacted: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct TimelineEntry {
    pub seq: u64,
    pub at_ms: u64,
    pub event: String,
    pub effect_key: Option<String>,
    /// For an effect's result: the time since its intent.
    pub duration_ms: Option<u64>,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunTimeline {
    pub summary: RunSummary,
    pub progress: Progress,
    pub entries: Vec<TimelineEntry>,
}

pub fn summaries(journal: &Journal) -> Result<Vec<RunSummary>, JournalError> {
    journal
        .runs()?
        .into_iter()
        .map(|meta| summary(journal, meta))
        .collect()
}

/// One run's summary line; a corrupt run is summarised, not an error.
pub fn summary(journal: &Journal, meta: RunMeta) -> Result<RunSummary, JournalError> {
    let mut s = RunSummary {
        run_id: meta.run_id.clone(),
        task_id: meta.task_id,
        attempt: meta.attempt,
        state: String::new(),
        outcome: None,
        created_ms: meta.created_ms,
        last_at_ms: meta.created_ms,
        last_event: String::new(),
        records: 0,
        resumes: 0,
        epoch: 0,
        compacted: false,
    };
    match journal.load_run(&meta.run_id) {
        Ok(l) => {
            s.state = l.state.status_label();
            s.outcome = l
                .state
                .outcome
                .as_ref()
                .map(|o| redact::redact_urls(&o.to_string()));
            s.last_at_ms = l.last_at_ms;
            s.last_event = l.last_event;
            s.records = l.records;
            s.resumes = l.state.resumes.len();
            s.epoch = l.state.epoch;
            s.compacted = l.compacted;
        }
        Err(JournalError::Corrupt { problem, .. }) => {
            s.state = format!("corrupt: {problem}");
            s.records = journal.raw_records(&meta.run_id)?.len() as u64;
        }
        Err(e) => return Err(e),
    }
    Ok(s)
}

fn describe(body: &RecordBody) -> String {
    let text = match body {
        RecordBody::Event(e) => match e {
            Event::Pulled {
                snapshot, attempt, ..
            }
            | Event::PulledV2 {
                snapshot, attempt, ..
            } => format!(
                "task {:?} attempt {attempt}, repo {}",
                snapshot.name,
                snapshot.repository.as_deref().unwrap_or("(none)")
            ),
            Event::EffectStarted { command, epoch, .. } => {
                format!("{} (epoch {epoch})", command.name())
            }
            Event::EffectDone { result, .. } => match result {
                EffectResult::EnvResolved(env) => format!(
                    "python {}, venv {}{}",
                    env.python,
                    env.venv_dir,
                    if env.cache_hit { " (cached)" } else { "" }
                ),
                EffectResult::Cloned(src) => format!(
                    "commit {} in {}",
                    src.commit.as_deref().unwrap_or("(none)"),
                    src.worktree
                ),
                EffectResult::Patched { applied } => {
                    if *applied { "diff applied" } else { "no diff" }.into()
                }
                EffectResult::Launched(p) => format!("pid {} in {}", p.pid, p.run_dir),
                EffectResult::Exited { code } => format!("exit code {code}"),
                EffectResult::Terminated { code } => format!("terminated, exit {code:?}"),
                EffectResult::Reported => "reported".into(),
                EffectResult::Claimed => "task claimed".into(),
                EffectResult::StopObserved(stop) => format!("stop observed: {stop:?}"),
            },
            Event::EffectFailed {
                reason, retryable, ..
            } => format!("{}{reason}", if *retryable { "retryable: " } else { "" }),
            Event::AbortRequested { by } => format!("by {by}"),
            Event::RequeueRequested { why } => why.clone(),
            Event::Resumed(r) => format!(
                "epoch {} on {} pid {}: {}",
                r.epoch, r.host, r.pid, r.reason
            ),
        },
        RecordBody::StateDigest { digest } => digest.clone(),
        RecordBody::Snapshot {
            compacted_records,
            state,
            ..
        } => format!(
            "compacted {compacted_records} records; final: {}",
            state.0.status_label()
        ),
        RecordBody::SnapshotV2 {
            compacted_records,
            state,
            ..
        } => format!(
            "compacted {compacted_records} records; final: {}",
            state.status_label()
        ),
    };
    redact::redact_urls(&text)
}

pub fn timeline(journal: &Journal, run: &str) -> Result<RunTimeline, JournalError> {
    let meta = journal
        .run_meta(run)?
        .ok_or_else(|| JournalError::NoSuchRun {
            run: run.to_string(),
        })?;
    let summary = summary(journal, meta)?;
    let mut started: HashMap<String, u64> = HashMap::new();
    let mut entries = vec![];
    for (seq, bytes) in journal.raw_records(run)? {
        let entry = match envelope::decode(seq, &bytes) {
            Err(e) => TimelineEntry {
                seq,
                at_ms: 0,
                event: "(corrupt)".into(),
                effect_key: None,
                duration_ms: None,
                detail: e.to_string(),
            },
            Ok(rec) => {
                let key = match &rec.body {
                    Some(RecordBody::Event(e)) => e.effect_key().map(|k| k.to_string()),
                    _ => None,
                };
                let duration_ms = match &rec.body {
                    Some(RecordBody::Event(Event::EffectStarted { key, .. })) => {
                        started.insert(key.to_string(), rec.at_ms);
                        None
                    }
                    Some(RecordBody::Event(Event::EffectDone { key, .. }))
                    | Some(RecordBody::Event(Event::EffectFailed { key, .. })) => started
                        .get(key.as_str())
                        .map(|t| rec.at_ms.saturating_sub(*t)),
                    _ => None,
                };
                TimelineEntry {
                    seq,
                    at_ms: rec.at_ms,
                    event: rec
                        .body
                        .as_ref()
                        .map_or(format!("(type {}, ignored)", rec.event_type), |b| {
                            b.name().to_string()
                        }),
                    effect_key: key,
                    duration_ms,
                    detail: rec.body.as_ref().map(describe).unwrap_or_default(),
                }
            }
        };
        entries.push(entry);
    }
    Ok(RunTimeline {
        progress: journal.progress(run)?,
        summary,
        entries,
    })
}
