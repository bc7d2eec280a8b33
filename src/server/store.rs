//! The server's own persistent store (sled; never the agent's journal).
//!
//! Documents (tasks, projects, queues, workers) live in memory behind one mutex, so that every
//! read-check-write (a status transition, a queue pop) is atomic. Changed documents are marked
//! dirty and written to their sled trees by a persister every 50 ms (so a queue popped 100 times
//! in that window is written once), and by [`Store::flush`] at shutdown. Events are append-only and go
//! straight to sled: log events keyed `task \0 timestamp seq` (so "latest N" and timestamp
//! navigation are range scans), other events keyed `task \0 seq`.

use serde_json::{Map, Value};
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

pub type Doc = Map<String, Value>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("server data dir {dir}: {source}")]
    Open { dir: String, source: sled::Error },
    #[error("server store: {0}")]
    Sled(#[from] sled::Error),
    #[error("server store: record {key} in tree {tree} is not valid JSON: {source}")]
    Corrupt {
        tree: &'static str,
        key: String,
        source: serde_json::Error,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Task,
    Project,
    Queue,
    Worker,
}

impl Kind {
    const ALL: [Kind; 4] = [Kind::Task, Kind::Project, Kind::Queue, Kind::Worker];
    fn tree_name(self) -> &'static str {
        match self {
            Kind::Task => "tasks",
            Kind::Project => "projects",
            Kind::Queue => "queues",
            Kind::Worker => "workers",
        }
    }
}

/// The in-memory documents. Handlers mutate them through [`Docs::doc_mut`] and friends, which
/// remember what changed so the store can write exactly that.
#[derive(Default)]
pub struct Docs {
    maps: HashMap<Kind, HashMap<String, Doc>>,
    dirty: HashSet<(Kind, String)>,
}

impl Docs {
    pub fn map(&self, kind: Kind) -> &HashMap<String, Doc> {
        static EMPTY: std::sync::OnceLock<HashMap<String, Doc>> = std::sync::OnceLock::new();
        self.maps
            .get(&kind)
            .unwrap_or_else(|| EMPTY.get_or_init(HashMap::new))
    }
    pub fn get(&self, kind: Kind, id: &str) -> Option<&Doc> {
        self.maps.get(&kind).and_then(|m| m.get(id))
    }
    pub fn doc_mut(&mut self, kind: Kind, id: &str) -> Option<&mut Doc> {
        let doc = self.maps.get_mut(&kind).and_then(|m| m.get_mut(id))?;
        self.dirty.insert((kind, id.to_string()));
        Some(doc)
    }
    pub fn insert(&mut self, kind: Kind, id: &str, doc: Doc) {
        self.maps
            .entry(kind)
            .or_default()
            .insert(id.to_string(), doc);
        self.dirty.insert((kind, id.to_string()));
    }
    pub fn remove(&mut self, kind: Kind, id: &str) -> Option<Doc> {
        let removed = self.maps.get_mut(&kind).and_then(|m| m.remove(id));
        self.dirty.insert((kind, id.to_string()));
        removed
    }
}

/// One stored event, as returned by the log and event scans.
pub type Event = Value;

pub struct Store {
    db: sled::Db,
    trees: HashMap<Kind, sled::Tree>,
    meta: sled::Tree,
    logs: sled::Tree,
    events: sled::Tree,
    log_counts: sled::Tree,
    docs: Mutex<Docs>,
    persist_lock: Mutex<()>,
}

/// How long a changed document may wait in memory before it is written to sled.
pub const PERSIST_EVERY: std::time::Duration = std::time::Duration::from_millis(50);

fn task_prefix(task: &str) -> Vec<u8> {
    let mut k = task.as_bytes().to_vec();
    k.push(0);
    k
}

fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    // Task ids hold no NUL, so `task \x01` bounds every key of `task \0 ...`.
    let mut end = prefix.to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    end
}

impl Store {
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        let db = sled::Config::new()
            .path(dir.join("db"))
            .flush_every_ms(Some(200))
            // sled's default page cache is 1 GiB; the documents already live in memory.
            .cache_capacity(64 * 1024 * 1024)
            .open()
            .map_err(|source| StoreError::Open {
                dir: dir.display().to_string(),
                source,
            })?;
        let mut trees = HashMap::new();
        let mut docs = Docs::default();
        for kind in Kind::ALL {
            let tree = db.open_tree(kind.tree_name())?;
            let mut map = HashMap::new();
            for item in tree.iter() {
                let (k, v) = item?;
                let key = String::from_utf8_lossy(&k).into_owned();
                let doc: Doc =
                    serde_json::from_slice(&v).map_err(|source| StoreError::Corrupt {
                        tree: kind.tree_name(),
                        key: key.clone(),
                        source,
                    })?;
                map.insert(key, doc);
            }
            docs.maps.insert(kind, map);
            trees.insert(kind, tree);
        }
        Ok(Store {
            meta: db.open_tree("meta")?,
            logs: db.open_tree("logs")?,
            events: db.open_tree("events")?,
            log_counts: db.open_tree("log_counts")?,
            db,
            trees,
            docs: Mutex::new(docs),
            persist_lock: Mutex::new(()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Docs> {
        // A panic in one call must not take the server down: the documents stay consistent
        // because every call validates before it mutates.
        self.docs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on the documents under the lock. Whatever it changed (whether `f` succeeded or
    /// not) is marked dirty and written to sled by the persister within [`PERSIST_EVERY`], or by
    /// [`Store::flush`]; many changes to one document in that window cost one write.
    pub fn write<T, E: From<StoreError>>(
        &self,
        f: impl FnOnce(&mut Docs) -> Result<T, E>,
    ) -> Result<T, E> {
        let mut docs = self.lock();
        f(&mut docs)
    }

    /// Writes every dirty document to sled. The snapshot is taken under the documents' lock (so
    /// it is consistent); the writes happen after it is released, serialized by `persist_lock`
    /// so that an older snapshot never lands after a newer one.
    pub fn persist_dirty(&self) -> Result<usize, StoreError> {
        let _order = self.persist_lock.lock().unwrap_or_else(|e| e.into_inner());
        let snapshot: Vec<(Kind, String, Option<Vec<u8>>)> = {
            let mut docs = self.lock();
            let dirty: Vec<(Kind, String)> = docs.dirty.drain().collect();
            dirty
                .into_iter()
                .map(|(kind, id)| {
                    let bytes = docs
                        .get(kind, &id)
                        .map(|d| serde_json::to_vec(d).expect("JSON encodes"));
                    (kind, id, bytes)
                })
                .collect()
        };
        let mut batches: HashMap<Kind, sled::Batch> = HashMap::new();
        for (kind, id, bytes) in &snapshot {
            let batch = batches.entry(*kind).or_default();
            match bytes {
                Some(b) => batch.insert(id.as_bytes(), b.as_slice()),
                None => batch.remove(id.as_bytes()),
            }
        }
        for (kind, batch) in batches {
            self.trees[&kind].apply_batch(batch)?;
        }
        Ok(snapshot.len())
    }

    /// Starts the background persister; it stops when the store is dropped.
    pub fn start_persister(self: &std::sync::Arc<Self>) {
        let weak = std::sync::Arc::downgrade(self);
        std::thread::Builder::new()
            .name("store-persister".into())
            .spawn(move || loop {
                std::thread::sleep(PERSIST_EVERY);
                let Some(store) = weak.upgrade() else { return };
                if let Err(e) = store.persist_dirty() {
                    eprintln!("clearml-agent server: writing documents to the store failed (will retry): {e}");
                }
            })
            .expect("a thread starts");
    }

    /// Runs `f` on the documents under the lock, read-only.
    pub fn read<T>(&self, f: impl FnOnce(&Docs) -> T) -> T {
        f(&self.lock())
    }

    pub fn meta_get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.meta.get(key)?.map(|v| v.to_vec()))
    }

    pub fn meta_put(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.meta.insert(key, value)?;
        self.db.flush()?;
        Ok(())
    }

    /// Appends log events (each with its timestamp) for one task.
    pub fn append_logs(&self, task: &str, events: &[(u64, Event)]) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        let prefix = task_prefix(task);
        for (ts, ev) in events {
            let mut key = prefix.clone();
            key.extend_from_slice(&ts.to_be_bytes());
            key.extend_from_slice(&self.db.generate_id()?.to_be_bytes());
            batch.insert(key, serde_json::to_vec(ev).expect("JSON encodes"));
        }
        self.logs.apply_batch(batch)?;
        let n = events.len() as u64;
        self.log_counts.fetch_and_update(task.as_bytes(), |old| {
            let current = old
                .and_then(|b| b.try_into().ok())
                .map(u64::from_be_bytes)
                .unwrap_or(0);
            Some((current + n).to_be_bytes().to_vec())
        })?;
        Ok(())
    }

    pub fn append_events(&self, task: &str, events: &[Event]) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        let prefix = task_prefix(task);
        for ev in events {
            let mut key = prefix.clone();
            key.extend_from_slice(&self.db.generate_id()?.to_be_bytes());
            batch.insert(key, serde_json::to_vec(ev).expect("JSON encodes"));
        }
        self.events.apply_batch(batch)?;
        Ok(())
    }

    pub fn log_count(&self, task: &str) -> Result<u64, StoreError> {
        Ok(self
            .log_counts
            .get(task.as_bytes())?
            .and_then(|b| b.as_ref().try_into().ok())
            .map(u64::from_be_bytes)
            .unwrap_or(0))
    }

    /// Up to `limit` log events of `task`: newest first and strictly before `before_ms` when
    /// `earlier`, else oldest first and strictly after `after_ms`.
    pub fn logs(
        &self,
        task: &str,
        earlier: bool,
        bound_ms: Option<u64>,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError> {
        let prefix = task_prefix(task);
        let end = prefix_end(&prefix);
        let key_at = |ts: u64| {
            let mut k = prefix.clone();
            k.extend_from_slice(&ts.to_be_bytes());
            k
        };
        let mut out = Vec::new();
        let decode = |v: sled::IVec| serde_json::from_slice::<Value>(&v).unwrap_or(Value::Null);
        if earlier {
            let upper = bound_ms.map(key_at).unwrap_or_else(|| end.clone());
            for item in self.logs.range(prefix.clone()..upper).rev().take(limit) {
                out.push(decode(item?.1));
            }
        } else {
            let lower = bound_ms
                .map(|t| key_at(t.saturating_add(1)))
                .unwrap_or_else(|| prefix.clone());
            for item in self.logs.range(lower..end).take(limit) {
                out.push(decode(item?.1));
            }
        }
        Ok(out)
    }

    /// Non-log events of `task`, in arrival order, from position `skip`.
    pub fn events(&self, task: &str) -> impl Iterator<Item = Result<Event, StoreError>> + '_ {
        self.events.scan_prefix(task_prefix(task)).map(|item| {
            let (_, v) = item?;
            Ok(serde_json::from_slice::<Value>(&v).unwrap_or(Value::Null))
        })
    }

    /// Deletes every event of `task`; returns how many were removed.
    pub fn delete_events(&self, task: &str) -> Result<u64, StoreError> {
        let mut removed = 0;
        for tree in [&self.logs, &self.events] {
            let mut batch = sled::Batch::default();
            for item in tree.scan_prefix(task_prefix(task)) {
                batch.remove(item?.0);
                removed += 1;
            }
            tree.apply_batch(batch)?;
        }
        self.log_counts.remove(task.as_bytes())?;
        Ok(removed)
    }

    /// Writes every pending change and syncs sled to disk.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.persist_dirty()?;
        self.db.flush()?;
        Ok(())
    }
}
