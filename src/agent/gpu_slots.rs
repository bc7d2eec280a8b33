//! Run slots and dynamic GPUs of one daemon: which GPUs each running task holds, how many tasks
//! run at once (`--services-mode N`), and whether the next task of a queue can be pulled.
//!
//! Pure and deterministic: no clock, no IO, GPUs handed out in pool (`--gpus`) order. The daemon
//! journals a run's GPUs before it starts the run, releases them when the run is terminal, and
//! after a crash or restart rebuilds the allocator from the journal's (run -> GPUs) list with
//! [`SlotAllocator::rebuild`]; the journal, not this value, is the truth.
//!
//! Invariant: [`SlotAllocator::allocate`] never hands out a GPU that any live run holds. A rebuilt
//! list may break that on its own (two runs recorded on one GPU, a GPU no longer in `--gpus`):
//! such runs keep what they hold (their processes are running there), the GPU stays busy until
//! every holder released it, and [`Rebuilt::conflicts`] says what was found.

use super::gpu_select::{GpuId, QueueGpus};
use std::collections::{BTreeMap, BTreeSet};

/// How many GPUs one task asks for: it starts with at least `min` free and gets up to `max`.
/// `0..=0` is a run slot without GPUs (services mode, static `--gpus`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GpuRequest {
    pub min: u32,
    pub max: u32,
}

impl GpuRequest {
    pub const NONE: GpuRequest = GpuRequest { min: 0, max: 0 };
}

impl From<&QueueGpus> for GpuRequest {
    fn from(q: &QueueGpus) -> Self {
        GpuRequest {
            min: q.min,
            max: q.max,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllocError {
    #[error("run {run} already holds a slot (GPUs [{gpus}])")]
    AlreadyHolds { run: String, gpus: String },
    #[error("run {run}: {need} GPUs needed, {free} free")]
    NotEnoughGpus { run: String, need: u32, free: usize },
    #[error("run {run}: {running} tasks are running, the limit is {max}")]
    RunLimit {
        run: String,
        running: usize,
        max: usize,
    },
    #[error("run {run}: asks for at least {min} and at most {max} GPUs")]
    BadRequest { run: String, min: u32, max: u32 },
}

/// Whether a task asking for `GpuRequest` could start now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Yes, and it would get this many GPUs.
    Admit {
        gpus: u32,
    },
    NotEnoughGpus {
        need: u32,
        free: usize,
    },
    RunLimit {
        running: usize,
        max: usize,
    },
}

/// Something a rebuilt list held that a fresh allocation never would.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Conflict {
    /// Several runs recorded on one GPU.
    Shared { gpu: GpuId, runs: Vec<String> },
    /// A run holds a GPU this daemon no longer shares (`--gpus` changed across the restart).
    OutsidePool { gpu: GpuId, run: String },
    /// More runs resumed than `--services-mode` now allows; no new one starts until below.
    OverRunLimit { running: usize, max: usize },
}

/// What to do on one poll, given the queues in priority order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PullPlan {
    /// Pull the next task of `queues[index]`; it will get `gpus` GPUs.
    Pull { index: usize, gpus: u32 },
    /// The first queue with tasks cannot be served yet: wait, and do not pull from lower
    /// priority queues meanwhile (upstream's rule, so big tasks are not starved by small ones).
    Wait { index: usize, why: Admission },
    /// No queue has a task.
    Idle,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotAllocator {
    pool: Vec<GpuId>,
    max_runs: Option<usize>,
    held: BTreeMap<String, Vec<GpuId>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rebuilt {
    pub allocator: SlotAllocator,
    pub conflicts: Vec<Conflict>,
}

impl SlotAllocator {
    /// `pool`: the GPUs to share (empty without `--dynamic-gpus`); `max_runs`: how many tasks
    /// at once (None: no limit other than the GPUs).
    pub fn new(pool: Vec<GpuId>, max_runs: Option<usize>) -> SlotAllocator {
        SlotAllocator {
            pool,
            max_runs,
            held: BTreeMap::new(),
        }
    }

    /// The allocator a restarted daemon continues with: `held` is every non-terminal run and
    /// the GPUs its journal records (in any order; a run listed twice holds the union).
    pub fn rebuild(
        pool: Vec<GpuId>,
        max_runs: Option<usize>,
        held: impl IntoIterator<Item = (String, Vec<GpuId>)>,
    ) -> Rebuilt {
        let mut a = SlotAllocator::new(pool, max_runs);
        for (run, gpus) in held {
            let entry = a.held.entry(run).or_default();
            for g in gpus {
                if !entry.contains(&g) {
                    entry.push(g);
                }
            }
        }
        let mut holders: BTreeMap<&GpuId, Vec<String>> = BTreeMap::new();
        for (run, gpus) in &a.held {
            for g in gpus {
                holders.entry(g).or_default().push(run.clone());
            }
        }
        let mut conflicts = Vec::new();
        for (gpu, runs) in holders {
            if !a.pool.contains(gpu) {
                conflicts.extend(runs.iter().map(|run| Conflict::OutsidePool {
                    gpu: gpu.clone(),
                    run: run.clone(),
                }));
            }
            if runs.len() > 1 {
                conflicts.push(Conflict::Shared {
                    gpu: gpu.clone(),
                    runs,
                });
            }
        }
        if let Some(max) = a.max_runs.filter(|m| a.held.len() > *m) {
            conflicts.push(Conflict::OverRunLimit {
                running: a.held.len(),
                max,
            });
        }
        Rebuilt {
            allocator: a,
            conflicts,
        }
    }

    fn busy(&self) -> BTreeSet<&GpuId> {
        self.held.values().flatten().collect()
    }

    /// Free GPUs, in pool order.
    pub fn free(&self) -> Vec<GpuId> {
        let busy = self.busy();
        self.pool
            .iter()
            .filter(|g| !busy.contains(g))
            .cloned()
            .collect()
    }

    pub fn pool(&self) -> &[GpuId] {
        &self.pool
    }

    pub fn running(&self) -> usize {
        self.held.len()
    }

    /// The GPUs a run holds (None: it holds no slot).
    pub fn held_by(&self, run: &str) -> Option<&[GpuId]> {
        self.held.get(run).map(Vec::as_slice)
    }

    /// Every run and its GPUs, by run id: what the journal should agree with.
    pub fn holdings(&self) -> &BTreeMap<String, Vec<GpuId>> {
        &self.held
    }

    pub fn admits(&self, req: GpuRequest) -> Admission {
        if let Some(max) = self.max_runs.filter(|m| self.held.len() >= *m) {
            return Admission::RunLimit {
                running: self.held.len(),
                max,
            };
        }
        let free = self.free().len();
        if (free as u64) < req.min as u64 {
            return Admission::NotEnoughGpus {
                need: req.min,
                free,
            };
        }
        Admission::Admit {
            gpus: free.min(req.max as usize) as u32,
        }
    }

    /// Gives `run` a slot and as many free GPUs as there are, at least `req.min`, at most
    /// `req.max`, the first ones in pool order. Refused (nothing changes) when the run already
    /// holds a slot, too few GPUs are free, or the run limit is reached.
    pub fn allocate(&mut self, run: &str, req: GpuRequest) -> Result<Vec<GpuId>, AllocError> {
        if req.min > req.max {
            return Err(AllocError::BadRequest {
                run: run.into(),
                min: req.min,
                max: req.max,
            });
        }
        if let Some(gpus) = self.held.get(run) {
            return Err(AllocError::AlreadyHolds {
                run: run.into(),
                gpus: gpus
                    .iter()
                    .map(|g| g.as_env())
                    .collect::<Vec<_>>()
                    .join(","),
            });
        }
        let n = match self.admits(req) {
            Admission::Admit { gpus } => gpus as usize,
            Admission::NotEnoughGpus { need, free } => {
                return Err(AllocError::NotEnoughGpus {
                    run: run.into(),
                    need,
                    free,
                })
            }
            Admission::RunLimit { running, max } => {
                return Err(AllocError::RunLimit {
                    run: run.into(),
                    running,
                    max,
                })
            }
        };
        let grant: Vec<GpuId> = self.free().into_iter().take(n).collect();
        self.held.insert(run.to_string(), grant.clone());
        Ok(grant)
    }

    /// The run ended: its GPUs are free again (unless another run also holds them, see the
    /// module note). Releasing a run that holds nothing is a no-op answering None.
    pub fn release(&mut self, run: &str) -> Option<Vec<GpuId>> {
        self.held.remove(run)
    }

    /// Upstream's poll over `queues` (priority order, `true` where the queue has a task): the
    /// first queue with a task is pulled if its request can be met now, else the daemon waits.
    pub fn plan_pull(&self, queues: &[(GpuRequest, bool)]) -> PullPlan {
        match queues.iter().position(|(_, has_task)| *has_task) {
            None => PullPlan::Idle,
            Some(index) => match self.admits(queues[index].0) {
                Admission::Admit { gpus } => PullPlan::Pull { index, gpus },
                why => PullPlan::Wait { index, why },
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(list: &[u32]) -> Vec<GpuId> {
        list.iter().copied().map(GpuId::index).collect()
    }

    fn req(min: u32, max: u32) -> GpuRequest {
        GpuRequest { min, max }
    }

    #[test]
    fn allocates_in_pool_order_and_releases() {
        let mut a = SlotAllocator::new(g(&[0, 1, 2, 3]), None);
        assert_eq!(a.allocate("r1", req(2, 2)).unwrap(), g(&[0, 1]));
        assert_eq!(a.allocate("r2", req(1, 1)).unwrap(), g(&[2]));
        assert_eq!(a.free(), g(&[3]));
        assert_eq!(
            a.allocate("r3", req(2, 2)),
            Err(AllocError::NotEnoughGpus {
                run: "r3".into(),
                need: 2,
                free: 1
            })
        );
        // Refusal changes nothing.
        assert_eq!(a.free(), g(&[3]));
        assert_eq!(a.release("r1"), Some(g(&[0, 1])));
        assert_eq!(a.release("r1"), None);
        assert_eq!(a.allocate("r3", req(2, 2)).unwrap(), g(&[0, 1]));
        assert!(matches!(
            a.allocate("r3", req(1, 1)),
            Err(AllocError::AlreadyHolds { .. })
        ));
    }

    #[test]
    fn min_max_requests_take_what_is_free() {
        let mut a = SlotAllocator::new(g(&[4, 5, 6, 7]), None);
        assert_eq!(a.allocate("one", req(1, 1)).unwrap(), g(&[4]));
        // Opportunistic 1-4: the three that are free.
        assert_eq!(a.allocate("opp", req(1, 4)).unwrap(), g(&[5, 6, 7]));
        assert_eq!(
            a.admits(req(1, 4)),
            Admission::NotEnoughGpus { need: 1, free: 0 }
        );
        assert!(matches!(
            a.allocate("bad", req(3, 2)),
            Err(AllocError::BadRequest { .. })
        ));
    }

    #[test]
    fn run_limit_without_gpus() {
        let mut a = SlotAllocator::new(vec![], Some(2));
        assert_eq!(a.allocate("a", GpuRequest::NONE).unwrap(), vec![]);
        assert_eq!(a.allocate("b", GpuRequest::NONE).unwrap(), vec![]);
        assert_eq!(
            a.allocate("c", GpuRequest::NONE),
            Err(AllocError::RunLimit {
                run: "c".into(),
                running: 2,
                max: 2
            })
        );
        a.release("a");
        assert!(a.allocate("c", GpuRequest::NONE).is_ok());
    }

    #[test]
    fn rebuild_restores_and_reports_conflicts() {
        let rebuilt = SlotAllocator::rebuild(
            g(&[0, 1, 2]),
            Some(2),
            vec![
                ("t2.1".to_string(), g(&[1])),
                ("t1.1".to_string(), g(&[0, 1])),
                ("t3.1".to_string(), g(&[7])),
            ],
        );
        let a = &rebuilt.allocator;
        assert_eq!(a.free(), g(&[2]));
        assert_eq!(a.held_by("t1.1"), Some(g(&[0, 1]).as_slice()));
        assert_eq!(
            rebuilt.conflicts,
            vec![
                Conflict::Shared {
                    gpu: GpuId::index(1),
                    runs: vec!["t1.1".into(), "t2.1".into()]
                },
                Conflict::OutsidePool {
                    gpu: GpuId::index(7),
                    run: "t3.1".into()
                },
                Conflict::OverRunLimit { running: 3, max: 2 },
            ]
        );
        // The shared GPU stays busy until both holders released it.
        let mut a = rebuilt.allocator;
        a.release("t3.1");
        a.release("t1.1");
        assert_eq!(a.free(), g(&[0, 2]));
        a.release("t2.1");
        assert_eq!(a.free(), g(&[0, 1, 2]));
    }

    #[test]
    fn pull_plan_follows_priority() {
        let mut a = SlotAllocator::new(g(&[0, 1, 2]), None);
        let dual = req(2, 2);
        let single = req(1, 1);
        assert_eq!(
            a.plan_pull(&[(dual, false), (single, false)]),
            PullPlan::Idle
        );
        assert_eq!(
            a.plan_pull(&[(dual, false), (single, true)]),
            PullPlan::Pull { index: 1, gpus: 1 }
        );
        a.allocate("x", single).unwrap();
        a.allocate("y", single).unwrap();
        // The dual queue has a task but only one GPU is free: wait, even though the single
        // queue could be served (upstream's rule).
        assert_eq!(
            a.plan_pull(&[(dual, true), (single, true)]),
            PullPlan::Wait {
                index: 0,
                why: Admission::NotEnoughGpus { need: 2, free: 1 }
            }
        );
    }
}
