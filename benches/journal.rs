//! Journal benchmarks (`cargo bench --bench journal`): append+flush latency per transition,
//! start-up replay speed over 10,000 journaled runs, and bytes on disk per completed run.
//! Runs in a temp dir on the same disk as the repository; prints a Markdown table.

mod support;
use support::{dir_size, percentile};

use clearml_agent::effects::simulated::{Script, SimulatedEffects};
use clearml_agent::fsm::{CommandKind, EffectKey, Event, TaskSnapshot};
use clearml_agent::journal::{EpochInfo, Journal, JournalConfig, RecordBody, RunMeta};
use clearml_agent::runner::{Runner, SystemClock};
use std::time::Instant;

fn append_latency(n: usize) -> (f64, f64, f64) {
    let tmp = tempfile::tempdir_in(".").unwrap();
    let j =
        Journal::open_writer(tmp.path(), EpochInfo::default(), JournalConfig::default()).unwrap();
    let meta = RunMeta {
        run_id: "bench.1".into(),
        task_id: "bench".into(),
        attempt: 1,
        created_ms: 0,
    };
    let mut seq = j
        .create_run(
            &meta,
            &[RecordBody::Event(Event::AbortRequested { by: "x".into() })],
            0,
        )
        .unwrap();
    let body = RecordBody::Event(Event::EffectStarted {
        key: EffectKey("0123456789abcdef0123456789abcdef:1:Cloned".into()),
        command: CommandKind::Clone,
        epoch: 1,
    });
    let mut lat = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        seq = j
            .append("bench.1", seq, std::slice::from_ref(&body), 1)
            .unwrap();
        lat.push(t.elapsed().as_secs_f64() * 1e3);
    }
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        lat[lat.len() - 1],
    )
}

/// Write `runs` completed simulated runs, then time a fresh open + fold of all of them.
fn replay_speed(runs: usize) -> (f64, f64, u64, u64, f64) {
    let tmp = tempfile::tempdir_in(".").unwrap();
    let jdir = tmp.path().join("j");
    let records;
    let logical;
    {
        let config = JournalConfig {
            flush_every_append: false, // setup only; flushed once below
            max_records_per_run: 10_000,
        };
        let j = Journal::open_writer(&jdir, EpochInfo::default(), config).unwrap();
        let effects = SimulatedEffects::new(&tmp.path().join("e"), Script::default()).unwrap();
        let mut runner = Runner::new(j, effects, SystemClock);
        for i in 0..runs {
            let run = runner
                .start(
                    TaskSnapshot {
                        task_id: format!("{i:032x}"),
                        name: "bench task".into(),
                        repository: Some("https://github.com/allegroai/clearml.git".into()),
                        entry_point: Some("examples/train.py".into()),
                        requirements: Some("six\ntorch==2.5.1\n".into()),
                        ..Default::default()
                    },
                    Default::default(),
                )
                .unwrap();
            runner.drive(&run).unwrap();
        }
        let j = runner.journal();
        j.flush().unwrap();
        let all = j.runs().unwrap();
        records = all
            .iter()
            .map(|m| j.raw_records(&m.run_id).unwrap().len() as u64)
            .sum::<u64>();
        logical = all
            .iter()
            .flat_map(|m| j.raw_records(&m.run_id).unwrap())
            .map(|(_, b)| b.len() as u64)
            .sum::<u64>();
    }
    let disk = dir_size(&jdir);
    let t = Instant::now();
    let (j, _) = Journal::open_reader(&jdir).unwrap();
    let open_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let mut terminal = 0;
    for m in j.runs().unwrap() {
        if j.load_run(&m.run_id).unwrap().state.is_terminal() {
            terminal += 1;
        }
    }
    let fold_s = t.elapsed().as_secs_f64();
    assert_eq!(terminal, runs);
    (
        runs as f64 / (open_s + fold_s),
        open_s,
        disk / runs as u64,
        logical / runs as u64,
        records as f64 / runs as f64,
    )
}

fn main() {
    // `cargo bench` passes --bench; any numeric argument overrides the run count.
    let runs: usize = std::env::args()
        .filter_map(|a| a.parse().ok())
        .next()
        .unwrap_or(10_000);
    let (p50, p99, max) = append_latency(2_000);
    println!("| measure | value |");
    println!("|---|---|");
    println!("| append + flush per transition, p50 (2,000 appends) | {p50:.3} ms |");
    println!("| append + flush per transition, p99 | {p99:.3} ms |");
    println!("| append + flush per transition, max | {max:.3} ms |");
    let (rate, open_s, disk, logical, recs) = replay_speed(runs);
    println!("| start-up replay: open + fold {runs} completed runs | {rate:.0} runs/s (open {open_s:.3} s) |");
    println!("| records per completed run | {recs:.1} |");
    println!("| record bytes per completed run (envelopes) | {logical} B |");
    println!("| sled directory size per completed run | {disk} B |");
}
