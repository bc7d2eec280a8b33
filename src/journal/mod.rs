//! The persistent, append-only journal of every run, in sled.
//!
//! Trees:
//! - `runs`: run id -> [`RunMeta`]
//! - `records`: run id ++ 0x00 ++ seq (u64 big endian, gap-free from 1) -> envelope
//! - `progress`: run id -> [`Progress`] (overwritten in place, never appended)
//! - `meta`: `epoch` -> the current agent epoch (u64 big endian)
//! - `epochs`: epoch (u64 big endian) -> [`EpochInfo`]
//!
//! Every append is one sled transaction that checks the writer's epoch (fencing) and the
//! expected sequence (compare-and-swap), and is flushed to disk before it returns.

pub mod envelope;
pub mod export;
pub mod inspect;
mod replay;

pub use envelope::{EnvelopeError, Record, RecordBody};
pub use replay::{load as fold_records, LoadedRun, Problem, VerifyReport};

use serde::{Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;
use std::path::{Path, PathBuf};

/// Records per run before appends are refused (a crash loop must not fill the disk).
pub const DEFAULT_MAX_RECORDS_PER_RUN: u64 = 10_000;
/// Terminal runs older than this are compacted to a snapshot.
pub const DEFAULT_RETENTION_MS: u64 = 7 * 24 * 3600 * 1000;
/// A state digest record is written after this many records (and at the end of a run).
pub const DIGEST_EVERY: u64 = 8;

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal at {dir}: {source}")]
    Storage {
        dir: PathBuf,
        #[source]
        source: sled::Error,
    },
    #[error("journal at {dir} is locked by another agent process (pid {holder}); stop it or pass another --journal-dir")]
    Locked { dir: PathBuf, holder: String },
    #[error("run {run}: a run with this id already exists")]
    RunExists { run: String },
    #[error("run {run}: no such run in the journal")]
    NoSuchRun { run: String },
    #[error("run {run}: append expected sequence {expected}, but the journal is at {actual}")]
    SequenceConflict {
        run: String,
        expected: u64,
        actual: u64,
    },
    #[error("run {run}: writer epoch {mine} is fenced off by a newer agent (epoch {current})")]
    Fenced {
        run: String,
        mine: u64,
        current: u64,
    },
    #[error("run {run}: record cap of {cap} reached; the run is refused to protect the disk")]
    RecordCap { run: String, cap: u64 },
    #[error("this journal handle is read-only (opened for inspection)")]
    ReadOnly,
    #[error("run {run} {problem}; refusing to act on this run (see `clearml-agent journal verify {run}`)")]
    Corrupt { run: String, problem: Problem },
    #[error(
        "journal entry {tree}/{key} is corrupt: {detail} (see `clearml-agent journal verify`)"
    )]
    CorruptSide {
        tree: &'static str,
        key: String,
        detail: String,
    },
    #[error("journal directory {dir} was removed or replaced while this agent was using it; nothing more can be recorded there")]
    Gone { dir: PathBuf },
}

type Result<T, E = JournalError> = std::result::Result<T, E>;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunMeta {
    pub run_id: String,
    pub task_id: String,
    pub attempt: u32,
    pub created_ms: u64,
}

/// Who started the agent: appended on every start, it fences older writers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpochInfo {
    pub epoch: u64,
    pub host: String,
    pub pid: u32,
    pub boot_id: String,
    pub started_ms: u64,
    pub agent_version: String,
    /// `""` for an agent; `"maintenance"` for `journal compact`, which the restart reason of
    /// the next agent looks past.
    pub role: String,
}

/// An epoch entry as written before side envelopes (no role).
#[derive(Deserialize)]
struct LegacyEpochInfo {
    epoch: u64,
    host: String,
    pid: u32,
    boot_id: String,
    started_ms: u64,
    agent_version: String,
}

pub const MAINTENANCE: &str = "maintenance";

/// One side-tree entry that does not verify.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SideProblem {
    pub tree: &'static str,
    pub key: String,
    pub detail: String,
}

fn side_value<T: serde::de::DeserializeOwned>(
    kind: u16,
    bytes: &[u8],
) -> std::result::Result<T, String> {
    let payload = envelope::decode_side(kind, bytes)
        .map_err(|e| e.to_string())?
        .unwrap_or(bytes);
    bincode::deserialize(payload).map_err(|e| format!("does not decode: {e}"))
}

fn side_bytes<T: Serialize>(kind: u16, value: &T) -> Vec<u8> {
    envelope::encode_side(
        kind,
        &bincode::serialize(value).expect("side entries serialize"),
    )
}

impl EpochInfo {
    /// Who this process is; the journal fills in the epoch number.
    pub fn this_process() -> EpochInfo {
        EpochInfo {
            epoch: 0,
            host: crate::host::hostname(),
            pid: std::process::id(),
            boot_id: crate::host::boot_id(),
            started_ms: crate::host::now_ms(),
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            role: String::new(),
        }
    }
}

/// Heartbeat-like progress: overwritten in place, never appended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// Bytes of the run's output file that the server acknowledged.
    pub log_offset_shipped: u64,
    pub last_heartbeat_ms: u64,
}

#[derive(Debug, Clone)]
pub struct JournalConfig {
    pub max_records_per_run: u64,
    /// Flush to disk on every append (on by default; off only to measure its cost).
    pub flush_every_append: bool,
}

impl Default for JournalConfig {
    fn default() -> Self {
        JournalConfig {
            max_records_per_run: DEFAULT_MAX_RECORDS_PER_RUN,
            flush_every_append: true,
        }
    }
}

#[derive(Clone)]
pub struct Journal {
    dir: PathBuf,
    db: sled::Db,
    runs: sled::Tree,
    records: sled::Tree,
    progress: sled::Tree,
    meta: sled::Tree,
    epochs: sled::Tree,
    /// `None` for a read-only handle.
    epoch: Option<u64>,
    config: JournalConfig,
    /// (device, inode) of the directory when it was opened: a directory removed (or replaced)
    /// under a running agent is noticed before anything more is written to it.
    identity: Option<(u64, u64)>,
    /// Deletes the point-in-time copy a reader opened; declared last so sled is closed first.
    _copy: Option<std::sync::Arc<CopyGuard>>,
}

fn dir_identity(dir: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(dir).ok().map(|m| (m.dev(), m.ino()))
}

/// Only the agent's user may read the journal: 0700 on directories, 0600 on files.
fn restrict(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            restrict(&entry.path())?;
        } else {
            std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(0o600))?;
        }
    }
    Ok(())
}

/// Removes a journal copy when the last handle on it is dropped.
struct CopyGuard(PathBuf);

impl Drop for CopyGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const EPOCH_KEY: &[u8] = b"epoch";
/// `shutdown/<epoch>` -> why that epoch's agent stopped on purpose.
const SHUTDOWN_PREFIX: &[u8] = b"shutdown/";

fn shutdown_key(epoch: u64) -> Vec<u8> {
    [SHUTDOWN_PREFIX, &epoch.to_be_bytes()].concat()
}

/// Why runs are being resumed, from the previous agent's epoch record, whether that agent
/// recorded a clean stop (`clean_stop`), and this host's boot id.
pub fn describe_restart(prev: &EpochInfo, clean_stop: Option<&str>, boot_id: &str) -> String {
    let who = format!(
        "agent epoch {} (pid {} on {})",
        prev.epoch, prev.pid, prev.host
    );
    if !prev.boot_id.is_empty() && !boot_id.is_empty() && prev.boot_id != boot_id {
        format!("host rebooted under {who}")
    } else if let Some(why) = clean_stop {
        format!("{who} stopped cleanly ({why})")
    } else {
        format!("{who} died without a clean shutdown (crash or kill -9)")
    }
}

fn record_key(run: &str, seq: u64) -> Vec<u8> {
    let mut k = run_prefix(run);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

fn run_prefix(run: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(run.len() + 9);
    k.extend_from_slice(run.as_bytes());
    k.push(0);
    k
}

fn seq_of(key: &[u8]) -> u64 {
    let n = key.len();
    u64::from_be_bytes(key[n - 8..].try_into().expect("record keys end in 8 bytes"))
}

fn be_u64(v: &[u8]) -> u64 {
    v.try_into().map(u64::from_be_bytes).unwrap_or(0)
}

impl Journal {
    /// Open for an agent that will write: bumps and records the epoch.
    pub fn open_writer(dir: &Path, who: EpochInfo, config: JournalConfig) -> Result<Journal> {
        let mut j = Self::open_db(dir, config)?;
        j.begin_epoch(who)?;
        Ok(j)
    }

    /// Open for inspection. If a running agent holds the lock, a point-in-time copy is
    /// opened instead, so `journal inspect` works next to a live daemon.
    pub fn open_reader(dir: &Path) -> Result<(Journal, bool)> {
        match Self::open_db(dir, JournalConfig::default()) {
            Ok(j) => Ok((j, false)),
            Err(JournalError::Locked { .. }) => {
                // The live agent may write while we copy; a torn copy fails to open, so
                // take a fresh copy a few times before giving up.
                // Unique per reader: two inspections at once must not share (and delete) a copy.
                let copy = std::env::temp_dir().join(format!(
                    "clearml-agent-journal-snapshot-{}",
                    uuid::Uuid::new_v4().simple()
                ));
                let mut last = None;
                for _ in 0..3 {
                    let _ = std::fs::remove_dir_all(&copy);
                    if let Err(e) = copy_dir(dir, &copy) {
                        last = Some(JournalError::Storage {
                            dir: dir.to_path_buf(),
                            source: sled::Error::Io(e),
                        });
                        continue;
                    }
                    match Self::open_db(&copy, JournalConfig::default()) {
                        Ok(mut j) => {
                            j._copy = Some(std::sync::Arc::new(CopyGuard(copy)));
                            return Ok((j, true));
                        }
                        Err(e) => last = Some(e),
                    }
                }
                let _ = std::fs::remove_dir_all(&copy);
                Err(last.expect("at least one attempt"))
            }
            Err(e) => Err(e),
        }
    }

    fn open_db(dir: &Path, config: JournalConfig) -> Result<Journal> {
        let storage = |source| JournalError::Storage {
            dir: dir.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(|e| storage(sled::Error::Io(e)))?;
        use std::os::unix::fs::PermissionsExt;
        // Closed to others before sled writes anything into it.
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
        let db = sled::Config::new()
            .path(dir)
            // Our own flush at every append is the durability point; no background flusher.
            .flush_every_ms(None)
            .open()
            .map_err(|e| match e {
                sled::Error::Io(io) if io.kind() == std::io::ErrorKind::WouldBlock => {
                    JournalError::Locked {
                        dir: dir.to_path_buf(),
                        holder: lock_holder(dir),
                    }
                }
                sled::Error::Io(io) if io.to_string().contains("lock") => JournalError::Locked {
                    dir: dir.to_path_buf(),
                    holder: lock_holder(dir),
                },
                other => storage(other),
            })?;
        let tree = |name: &str| db.open_tree(name).map_err(storage);
        Ok(Journal {
            runs: tree("runs")?,
            records: tree("records")?,
            progress: tree("progress")?,
            meta: tree("meta")?,
            epochs: tree("epochs")?,
            db,
            dir: dir.to_path_buf(),
            epoch: None,
            config,
            identity: dir_identity(dir),
            _copy: None,
        })
    }

    /// Whether the directory this handle writes to is still the one it opened.
    pub fn check_dir(&self) -> Result<()> {
        match (self.identity, dir_identity(&self.dir)) {
            (Some(a), Some(b)) if a == b => Ok(()),
            (None, _) => Ok(()),
            _ => Err(JournalError::Gone {
                dir: self.dir.clone(),
            }),
        }
    }

    fn storage(&self, source: sled::Error) -> JournalError {
        JournalError::Storage {
            dir: self.dir.clone(),
            source,
        }
    }

    /// Start a new epoch for this handle; every handle with an older epoch is fenced.
    pub fn begin_epoch(&mut self, mut who: EpochInfo) -> Result<u64> {
        let next = self
            .meta
            .update_and_fetch(EPOCH_KEY, |old| {
                Some((old.map_or(0, be_u64) + 1).to_be_bytes().to_vec())
            })
            .map_err(|e| self.storage(e))?
            .map_or(1, |v| be_u64(&v));
        who.epoch = next;
        let info = side_bytes(envelope::side::EPOCH, &who);
        self.epochs
            .insert(next.to_be_bytes(), info)
            .map_err(|e| self.storage(e))?;
        self.flush()?;
        std::fs::write(self.dir.join("agent.pid"), std::process::id().to_string())
            .map_err(|e| self.storage(sled::Error::Io(e)))?;
        restrict(&self.dir).map_err(|e| self.storage(sled::Error::Io(e)))?;
        self.epoch = Some(next);
        Ok(next)
    }

    pub fn epoch(&self) -> Option<u64> {
        self.epoch
    }

    /// Records that this epoch's agent is stopping on purpose (a signal, a preemption notice),
    /// so the next start can tell a clean stop from a crash.
    pub fn record_shutdown(&self, why: &str) -> Result<()> {
        let epoch = self.epoch.ok_or(JournalError::ReadOnly)?;
        self.meta
            .insert(
                shutdown_key(epoch),
                side_bytes(envelope::side::SHUTDOWN, &why),
            )
            .map_err(|e| self.storage(e))?;
        self.flush()
    }

    /// Why this agent is resuming the runs an earlier one left: the previous epoch, whether it
    /// stopped cleanly or died, and whether the host rebooted since.
    pub fn restart_reason(&self) -> Result<String> {
        let current = self.epoch.unwrap_or(u64::MAX);
        let epochs = self.epochs()?;
        let this = epochs.iter().find(|e| e.epoch == current);
        // Maintenance (`journal compact`) is not an agent life: look past it.
        let Some(prev) = epochs
            .iter()
            .filter(|e| e.epoch < current && e.role != MAINTENANCE)
            .max_by_key(|e| e.epoch)
        else {
            return Ok("first start of this journal".into());
        };
        let clean = self.shutdown_note(prev.epoch)?;
        Ok(describe_restart(
            prev,
            clean.as_deref(),
            this.map_or("", |t| t.boot_id.as_str()),
        ))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn config(&self) -> &JournalConfig {
        &self.config
    }

    fn shutdown_note(&self, epoch: u64) -> Result<Option<String>> {
        let Some(v) = self
            .meta
            .get(shutdown_key(epoch))
            .map_err(|e| self.storage(e))?
        else {
            return Ok(None);
        };
        match envelope::decode_side(envelope::side::SHUTDOWN, &v) {
            Ok(None) => Ok(Some(String::from_utf8_lossy(&v).to_string())),
            Ok(Some(payload)) => bincode::deserialize(payload)
                .map(Some)
                .map_err(|e| self.corrupt_side("meta", format!("shutdown/{epoch}"), e.to_string())),
            Err(e) => Err(self.corrupt_side("meta", format!("shutdown/{epoch}"), e.to_string())),
        }
    }

    fn corrupt_side(&self, tree: &'static str, key: String, detail: String) -> JournalError {
        JournalError::CorruptSide { tree, key, detail }
    }

    fn decode_epoch(v: &[u8]) -> std::result::Result<EpochInfo, String> {
        match envelope::decode_side(envelope::side::EPOCH, v).map_err(|e| e.to_string())? {
            Some(payload) => bincode::deserialize(payload).map_err(|e| e.to_string()),
            None => bincode::deserialize::<LegacyEpochInfo>(v)
                .map(|l| EpochInfo {
                    epoch: l.epoch,
                    host: l.host,
                    pid: l.pid,
                    boot_id: l.boot_id,
                    started_ms: l.started_ms,
                    agent_version: l.agent_version,
                    role: String::new(),
                })
                .map_err(|e| format!("does not decode: {e}")),
        }
    }

    pub fn epochs(&self) -> Result<Vec<EpochInfo>> {
        self.epochs
            .iter()
            .map(|item| {
                let (k, v) = item.map_err(|e| self.storage(e))?;
                Self::decode_epoch(&v)
                    .map_err(|d| self.corrupt_side("epochs", be_u64(&k).to_string(), d))
            })
            .collect()
    }

    /// Every side-tree entry that does not verify (for `journal verify`).
    pub fn verify_side(&self) -> Result<Vec<SideProblem>> {
        let mut problems = vec![];
        let mut check = |tree: &'static str, key: String, r: std::result::Result<(), String>| {
            if let Err(detail) = r {
                problems.push(SideProblem { tree, key, detail });
            }
        };
        for item in self.runs.iter() {
            let (k, v) = item.map_err(|e| self.storage(e))?;
            let r = side_value::<RunMeta>(envelope::side::RUN_META, &v).map(|_| ());
            check("runs", String::from_utf8_lossy(&k).into_owned(), r);
        }
        for item in self.progress.iter() {
            let (k, v) = item.map_err(|e| self.storage(e))?;
            let r = side_value::<Progress>(envelope::side::PROGRESS, &v).map(|_| ());
            check("progress", String::from_utf8_lossy(&k).into_owned(), r);
        }
        for item in self.epochs.iter() {
            let (k, v) = item.map_err(|e| self.storage(e))?;
            check(
                "epochs",
                be_u64(&k).to_string(),
                Self::decode_epoch(&v).map(|_| ()),
            );
        }
        for item in self.meta.iter() {
            let (k, v) = item.map_err(|e| self.storage(e))?;
            if k.as_ref() == EPOCH_KEY {
                let r = (v.len() == 8)
                    .then_some(())
                    .ok_or_else(|| format!("the epoch counter is {} bytes, not 8", v.len()));
                check("meta", "epoch".into(), r);
            } else if let Some(epoch) = k.strip_prefix(SHUTDOWN_PREFIX) {
                let r = match envelope::decode_side(envelope::side::SHUTDOWN, &v) {
                    Ok(Some(p)) => bincode::deserialize::<String>(p)
                        .map(|_| ())
                        .map_err(|e| e.to_string()),
                    Ok(None) => Ok(()),
                    Err(e) => Err(e.to_string()),
                };
                check("meta", format!("shutdown/{}", be_u64(epoch)), r);
            }
        }
        Ok(problems)
    }

    /// Overwrite one side entry. Only for tests and repair tools.
    #[doc(hidden)]
    pub fn put_raw_side(&self, tree: &str, key: &[u8], bytes: &[u8]) -> Result<()> {
        let t = match tree {
            "runs" => &self.runs,
            "progress" => &self.progress,
            "epochs" => &self.epochs,
            _ => &self.meta,
        };
        t.insert(key, bytes).map_err(|e| self.storage(e))?;
        self.flush()
    }

    /// A side entry's stored bytes. Only for tests and repair tools.
    #[doc(hidden)]
    pub fn raw_side(&self, tree: &str, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let t = match tree {
            "runs" => &self.runs,
            "progress" => &self.progress,
            "epochs" => &self.epochs,
            _ => &self.meta,
        };
        Ok(t.get(key).map_err(|e| self.storage(e))?.map(|v| v.to_vec()))
    }

    pub fn flush(&self) -> Result<()> {
        self.db.flush().map(|_| ()).map_err(|e| self.storage(e))
    }

    /// Register a new run together with its first records, atomically: a run never
    /// exists without records. Fails if the id is taken.
    pub fn create_run(&self, meta: &RunMeta, first: &[RecordBody], at_ms: u64) -> Result<u64> {
        self.write(&meta.run_id, 1, first, at_ms, Some(meta))
    }

    /// A run's metadata; an entry that does not verify is an error, never "no such run".
    pub fn run_meta(&self, run: &str) -> Result<Option<RunMeta>> {
        let Some(v) = self.runs.get(run).map_err(|e| self.storage(e))? else {
            return Ok(None);
        };
        side_value(envelope::side::RUN_META, &v)
            .map(Some)
            .map_err(|d| self.corrupt_side("runs", run.to_string(), d))
    }

    /// Every run, oldest first.
    pub fn runs(&self) -> Result<Vec<RunMeta>> {
        let mut out = vec![];
        for item in self.runs.iter() {
            let (k, v) = item.map_err(|e| self.storage(e))?;
            // A corrupt entry is listed (loading the run reports it), never dropped.
            let meta = side_value(envelope::side::RUN_META, &v).unwrap_or_else(|_| RunMeta {
                run_id: String::from_utf8_lossy(&k).into_owned(),
                task_id: "?".into(),
                attempt: 0,
                created_ms: 0,
            });
            out.push(meta);
        }
        out.sort_by(|a, b| (a.created_ms, &a.run_id).cmp(&(b.created_ms, &b.run_id)));
        Ok(out)
    }

    /// Runs matching a run id exactly, else every run of that task id.
    pub fn find_runs(&self, run_or_task: &str) -> Result<Vec<RunMeta>> {
        if let Some(meta) = self.run_meta(run_or_task)? {
            return Ok(vec![meta]);
        }
        Ok(self
            .runs()?
            .into_iter()
            .filter(|m| m.task_id == run_or_task)
            .collect())
    }

    /// The raw stored records of a run, in key order: (seq, bytes).
    pub fn raw_records(&self, run: &str) -> Result<Vec<(u64, Vec<u8>)>> {
        self.records
            .scan_prefix(run_prefix(run))
            .map(|item| {
                let (k, v) = item.map_err(|e| self.storage(e))?;
                Ok((seq_of(&k), v.to_vec()))
            })
            .collect()
    }

    /// Append records at `expected_seq`, `expected_seq + 1`, ... in one transaction,
    /// flushed to disk. Returns the next sequence number.
    pub fn append(
        &self,
        run: &str,
        expected_seq: u64,
        bodies: &[RecordBody],
        at_ms: u64,
    ) -> Result<u64> {
        self.write(run, expected_seq, bodies, at_ms, None)
    }

    fn write(
        &self,
        run: &str,
        expected_seq: u64,
        bodies: &[RecordBody],
        at_ms: u64,
        new_run: Option<&RunMeta>,
    ) -> Result<u64> {
        assert!(!bodies.is_empty(), "an append writes at least one record");
        let mine = self.epoch.ok_or(JournalError::ReadOnly)?;
        self.check_dir()?;
        let last = expected_seq + bodies.len() as u64 - 1;
        if last > self.config.max_records_per_run {
            return Err(JournalError::RecordCap {
                run: run.to_string(),
                cap: self.config.max_records_per_run,
            });
        }
        let values: Vec<(Vec<u8>, Vec<u8>)> = bodies
            .iter()
            .enumerate()
            .map(|(i, b)| {
                (
                    record_key(run, expected_seq + i as u64),
                    envelope::encode(b, at_ms),
                )
            })
            .collect();
        let prev_key = (expected_seq > 1).then(|| record_key(run, expected_seq - 1));
        let new_run = new_run.map(|m| side_bytes(envelope::side::RUN_META, m));
        let outcome =
            (&self.records, &self.meta, &self.runs).transaction(|(records, meta, runs)| {
                let current = meta.get(EPOCH_KEY)?.map_or(0, |v| be_u64(&v));
                if current != mine {
                    return Err(ConflictableTransactionError::Abort(Rejection::Fenced(
                        current,
                    )));
                }
                if let Some(prev) = &prev_key {
                    if records.get(prev)?.is_none() {
                        return Err(ConflictableTransactionError::Abort(Rejection::Sequence));
                    }
                }
                match &new_run {
                    Some(_) if runs.get(run.as_bytes())?.is_some() => {
                        return Err(ConflictableTransactionError::Abort(Rejection::RunExists));
                    }
                    Some(m) => {
                        runs.insert(run.as_bytes(), m.as_slice())?;
                    }
                    None if runs.get(run.as_bytes())?.is_none() => {
                        return Err(ConflictableTransactionError::Abort(Rejection::NoSuchRun));
                    }
                    None => {}
                }
                for (k, v) in &values {
                    if records.get(k)?.is_some() {
                        return Err(ConflictableTransactionError::Abort(Rejection::Sequence));
                    }
                    records.insert(k.as_slice(), v.as_slice())?;
                }
                Ok(())
            });
        match outcome {
            Ok(()) => {}
            Err(TransactionError::Abort(Rejection::Fenced(current))) => {
                return Err(JournalError::Fenced {
                    run: run.to_string(),
                    mine,
                    current,
                })
            }
            Err(TransactionError::Abort(Rejection::Sequence)) => {
                return Err(JournalError::SequenceConflict {
                    run: run.to_string(),
                    expected: expected_seq,
                    actual: self.next_seq(run)?,
                })
            }
            Err(TransactionError::Abort(Rejection::RunExists)) => {
                return Err(JournalError::RunExists {
                    run: run.to_string(),
                })
            }
            Err(TransactionError::Abort(Rejection::NoSuchRun)) => {
                return Err(JournalError::NoSuchRun {
                    run: run.to_string(),
                })
            }
            Err(TransactionError::Storage(e)) => return Err(self.storage(e)),
        }
        if self.config.flush_every_append {
            self.flush()?;
        }
        crate::failpoint::after_append(run, expected_seq, last);
        Ok(last + 1)
    }

    /// The sequence number the next append to `run` must name.
    pub fn next_seq(&self, run: &str) -> Result<u64> {
        let last = self
            .records
            .scan_prefix(run_prefix(run))
            .keys()
            .next_back()
            .transpose()
            .map_err(|e| self.storage(e))?;
        Ok(last.map_or(1, |k| seq_of(&k) + 1))
    }

    /// A run's progress (zero when none was saved); an entry that does not verify is an error,
    /// never a silent zero (that would ship the whole output again).
    pub fn progress(&self, run: &str) -> Result<Progress> {
        match self.progress.get(run).map_err(|e| self.storage(e))? {
            None => Ok(Progress::default()),
            Some(v) => side_value(envelope::side::PROGRESS, &v)
                .map_err(|d| self.corrupt_side("progress", run.to_string(), d)),
        }
    }

    pub fn set_progress(&self, run: &str, progress: &Progress) -> Result<()> {
        if self.epoch.is_none() {
            return Err(JournalError::ReadOnly);
        }
        let v = side_bytes(envelope::side::PROGRESS, progress);
        self.progress.insert(run, v).map_err(|e| self.storage(e))?;
        self.flush()
    }

    /// Overwrite one stored record's bytes. Only for tests and repair tools.
    #[doc(hidden)]
    pub fn put_raw_record(&self, run: &str, seq: u64, bytes: &[u8]) -> Result<()> {
        self.records
            .insert(record_key(run, seq), bytes)
            .map_err(|e| self.storage(e))?;
        self.flush()
    }

    /// Remove one stored record. Only for tests and repair tools.
    #[doc(hidden)]
    pub fn delete_raw_record(&self, run: &str, seq: u64) -> Result<()> {
        self.records
            .remove(record_key(run, seq))
            .map_err(|e| self.storage(e))?;
        self.flush()
    }

    /// Replace each terminal run whose last record is older than `retention_ms` with a
    /// single snapshot record of its final state. Returns the compacted run ids.
    pub fn compact(&self, now_ms: u64, retention_ms: u64) -> Result<Vec<String>> {
        if self.epoch.is_none() {
            return Err(JournalError::ReadOnly);
        }
        let mut compacted = vec![];
        for meta in self.runs()? {
            let Ok(loaded) = self.load_run(&meta.run_id) else {
                continue; // corrupt runs are kept as they are, for `journal verify`
            };
            let old_enough = loaded.last_at_ms.saturating_add(retention_ms) <= now_ms;
            if !loaded.state.is_terminal() || loaded.compacted || !old_enough {
                continue;
            }
            let body = RecordBody::SnapshotV2 {
                digest: loaded.state.digest(),
                compacted_records: loaded.records,
                state: Box::new(loaded.state),
            };
            let value = envelope::encode(&body, loaded.last_at_ms);
            let mut batch = sled::Batch::default();
            for (seq, _) in self.raw_records(&meta.run_id)? {
                batch.remove(record_key(&meta.run_id, seq));
            }
            batch.insert(record_key(&meta.run_id, 1), value);
            self.records
                .apply_batch(batch)
                .map_err(|e| self.storage(e))?;
            let _ = self.progress.remove(meta.run_id.as_bytes());
            compacted.push(meta.run_id);
        }
        self.flush()?;
        Ok(compacted)
    }

    /// Fold a run's records into its state; refuses a run with any unverifiable record.
    pub fn load_run(&self, run: &str) -> Result<LoadedRun> {
        let meta = match self.run_meta(run) {
            Err(JournalError::CorruptSide { detail, .. }) => {
                return Err(JournalError::Corrupt {
                    run: run.to_string(),
                    problem: Problem {
                        seq: 0,
                        detail: format!("run metadata entry: {detail}"),
                    },
                })
            }
            other => other?,
        };
        if meta.is_none() {
            return Err(JournalError::NoSuchRun {
                run: run.to_string(),
            });
        }
        let raw = self.raw_records(run)?;
        replay::load(run, &raw).map_err(|problem| JournalError::Corrupt {
            run: run.to_string(),
            problem,
        })
    }

    /// Check every record of a run and report every problem found.
    pub fn verify_run(&self, run: &str) -> Result<VerifyReport> {
        let raw = self.raw_records(run)?;
        Ok(replay::verify(run, &raw))
    }
}

enum Rejection {
    Fenced(u64),
    Sequence,
    RunExists,
    NoSuchRun,
}

fn lock_holder(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("agent.pid"))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prev(boot: &str) -> EpochInfo {
        EpochInfo {
            epoch: 4,
            host: "gpu-1".into(),
            pid: 77,
            boot_id: boot.into(),
            ..EpochInfo::default()
        }
    }

    #[test]
    fn a_restart_is_told_apart_from_a_crash_and_a_reboot() {
        assert_eq!(
            describe_restart(&prev("b1"), None, "b1"),
            "agent epoch 4 (pid 77 on gpu-1) died without a clean shutdown (crash or kill -9)"
        );
        assert_eq!(
            describe_restart(&prev("b1"), Some("SIGTERM or SIGINT"), "b1"),
            "agent epoch 4 (pid 77 on gpu-1) stopped cleanly (SIGTERM or SIGINT)"
        );
        assert_eq!(
            describe_restart(&prev("b1"), Some("SIGTERM or SIGINT"), "b2"),
            "host rebooted under agent epoch 4 (pid 77 on gpu-1)"
        );
    }
}
