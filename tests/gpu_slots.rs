//! Property tests of the dynamic-GPU slot allocator: random sequences of allocate, release and
//! crash-and-rebuild (from the journal's run -> GPUs list, as a restarted daemon does) never hand
//! one GPU to two runs, and a rebuilt allocator continues exactly where the journal says.

use clearml_agent::agent::gpu_select::GpuId;
use clearml_agent::agent::gpu_slots::{Admission, AllocError, GpuRequest, SlotAllocator};
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};

#[derive(Debug, Clone)]
enum Op {
    /// A task asks for `min..=max` GPUs; the grant is journaled before the task starts.
    Allocate { min: u32, max: u32 },
    /// The daemon allocated, then died before the journal record: the grant is lost.
    AllocateThenCrash { min: u32, max: u32 },
    /// The run with this (modulo) position ended.
    Release(usize),
    /// kill -9 and restart: rebuild from the journal, its entries in a shuffled order.
    Crash { rotate: usize },
}

fn arb_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u32..4, 0u32..5).prop_map(|(a, b)| Op::Allocate { min: a.min(b), max: a.max(b) }),
        1 => (1u32..3, 1u32..4).prop_map(|(a, b)| Op::AllocateThenCrash { min: a.min(b), max: a.max(b) }),
        3 => (0usize..16).prop_map(Op::Release),
        1 => (0usize..16).prop_map(|rotate| Op::Crash { rotate }),
    ]
}

fn pool(n: u32) -> Vec<GpuId> {
    (0..n).map(GpuId::index).collect()
}

/// No GPU held by two runs, holdings within the pool, and free + busy = pool.
fn assert_sound(a: &SlotAllocator, max_runs: Option<usize>) {
    let mut seen = BTreeSet::new();
    for (run, gpus) in a.holdings() {
        for g in gpus {
            assert!(
                seen.insert(g.clone()),
                "GPU {g} handed to two runs (one is {run})"
            );
            assert!(
                a.pool().contains(g),
                "run {run} holds {g}, outside the pool"
            );
        }
    }
    let free: BTreeSet<GpuId> = a.free().into_iter().collect();
    assert!(free.is_disjoint(&seen), "a held GPU is listed free");
    let all: BTreeSet<GpuId> = free.union(&seen).cloned().collect();
    assert_eq!(all, a.pool().iter().cloned().collect());
    if let Some(max) = max_runs {
        assert!(a.running() <= max, "{} runs, limit {max}", a.running());
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn never_one_gpu_for_two_runs(
        gpus in 0u32..6,
        limit in proptest::option::of(1usize..5),
        ops in proptest::collection::vec(arb_op(), 1..80),
    ) {
        let mut journal: BTreeMap<String, Vec<GpuId>> = BTreeMap::new();
        let mut alloc = SlotAllocator::new(pool(gpus), limit);
        let mut next = 0u32;
        for op in ops {
            match op {
                Op::Allocate { min, max } | Op::AllocateThenCrash { min, max } => {
                    next += 1;
                    let run = format!("task{next}.1");
                    let free_before = alloc.free();
                    let req = GpuRequest { min, max };
                    let admission = alloc.admits(req);
                    match alloc.allocate(&run, req) {
                        Ok(grant) => {
                            // Exactly the first free GPUs, as many as allowed.
                            let n = free_before.len().min(max as usize);
                            prop_assert!(n >= min as usize);
                            prop_assert_eq!(&grant, &free_before[..n].to_vec());
                            prop_assert_eq!(admission, Admission::Admit { gpus: n as u32 });
                            for other in journal.values() {
                                prop_assert!(grant.iter().all(|g| !other.contains(g)));
                            }
                            if matches!(op, Op::Allocate { .. }) {
                                journal.insert(run, grant);
                            } else {
                                // Died before the record: the restarted daemon never saw it.
                                alloc = SlotAllocator::rebuild(pool(gpus), limit, journal.clone()).allocator;
                            }
                        }
                        Err(AllocError::NotEnoughGpus { need, free, .. }) => {
                            prop_assert_eq!(need, min);
                            prop_assert_eq!(free, free_before.len());
                            prop_assert!(free_before.len() < min as usize);
                        }
                        Err(AllocError::RunLimit { running, max, .. }) => {
                            prop_assert_eq!(Some(max), limit);
                            prop_assert!(running >= max);
                        }
                        Err(e) => prop_assert!(false, "unexpected refusal {e}"),
                    }
                }
                Op::Release(i) => {
                    if let Some(run) = journal.keys().nth(i % journal.len().max(1)).cloned() {
                        let gpus = journal.remove(&run);
                        prop_assert_eq!(alloc.release(&run), gpus);
                    }
                }
                Op::Crash { rotate } => {
                    let mut entries: Vec<_> = journal.clone().into_iter().collect();
                    if !entries.is_empty() {
                        let k = rotate % entries.len();
                        entries.rotate_left(k);
                        entries.reverse();
                    }
                    let rebuilt = SlotAllocator::rebuild(pool(gpus), limit, entries);
                    prop_assert!(rebuilt.conflicts.is_empty(), "{:?}", rebuilt.conflicts);
                    // The same allocator as before the crash: nothing lost, nothing invented.
                    prop_assert_eq!(&rebuilt.allocator, &alloc);
                    alloc = rebuilt.allocator;
                }
            }
            prop_assert_eq!(alloc.holdings(), &journal);
            assert_sound(&alloc, limit);
        }
    }

    /// A journal that (through a bug or a changed --gpus) records overlapping or out-of-pool
    /// GPUs: those runs keep what they hold, and no allocation after the rebuild hands out a
    /// GPU that any live run holds.
    #[test]
    fn rebuilt_conflicts_are_never_handed_out(
        gpus in 1u32..6,
        recorded in proptest::collection::vec(proptest::collection::btree_set(0u32..8, 0..4), 0..5),
        ops in proptest::collection::vec(arb_op(), 1..40),
    ) {
        let held: Vec<(String, Vec<GpuId>)> = recorded
            .iter()
            .enumerate()
            .map(|(i, set)| (format!("old{i}.1"), set.iter().copied().map(GpuId::index).collect()))
            .collect();
        let mut alloc = SlotAllocator::rebuild(pool(gpus), None, held).allocator;
        let mut next = 0;
        for op in ops {
            match op {
                Op::Allocate { min, max } | Op::AllocateThenCrash { min, max } => {
                    next += 1;
                    let run = format!("new{next}.1");
                    let before = alloc.holdings().clone();
                    if let Ok(grant) = alloc.allocate(&run, GpuRequest { min, max }) {
                        for (other, gpus) in &before {
                            prop_assert!(
                                grant.iter().all(|g| !gpus.contains(g)),
                                "{:?} granted to {} while {} holds {:?}", grant, run, other, gpus
                            );
                        }
                        prop_assert!(grant.iter().all(|g| alloc.pool().contains(g)));
                    }
                }
                Op::Release(i) => {
                    let run = alloc.holdings().keys().nth(i % alloc.running().max(1)).cloned();
                    if let Some(run) = run {
                        alloc.release(&run);
                    }
                }
                Op::Crash { .. } => {
                    let held: Vec<_> = alloc.holdings().clone().into_iter().collect();
                    alloc = SlotAllocator::rebuild(pool(gpus), None, held).allocator;
                }
            }
            let busy: BTreeSet<GpuId> = alloc.holdings().values().flatten().cloned().collect();
            prop_assert!(alloc.free().iter().all(|g| !busy.contains(g)));
        }
    }
}
