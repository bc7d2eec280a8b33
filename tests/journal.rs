//! The journal store's guarantees: compare-and-swap appends, epoch fencing, the record
//! cap, compaction, progress, persistence, live inspection and secret masking.

mod common;

use clearml_agent::effects::simulated::{Script, SimulatedEffects};
use clearml_agent::fsm::{Event, Outcome, TaskSnapshot};
use clearml_agent::journal::{
    EpochInfo, Journal, JournalConfig, JournalError, Progress, RecordBody, RunMeta,
};
use clearml_agent::runner::{Driven, Runner, SystemClock};
use common::*;

fn writer(dirs: &Dirs, config: JournalConfig) -> Journal {
    Journal::open_writer(&dirs.journal, EpochInfo::default(), config).unwrap()
}

fn completed_run(journal: Journal, dirs: &Dirs, task: &str) -> (Journal, String) {
    let effects = SimulatedEffects::new(&dirs.effects, Script::default()).unwrap();
    let mut runner = Runner::new(journal, effects, SystemClock);
    let run = runner
        .start(
            TaskSnapshot {
                task_id: task.into(),
                ..Default::default()
            },
            Default::default(),
        )
        .unwrap();
    let driven = runner.drive(&run).unwrap();
    assert!(matches!(driven, Driven::Terminal(ref s) if s.outcome == Some(Outcome::Completed)));
    (runner.journal().clone(), run)
}

fn abort(by: &str) -> RecordBody {
    RecordBody::Event(Event::AbortRequested { by: by.into() })
}

fn meta(run: &str) -> RunMeta {
    RunMeta {
        run_id: run.into(),
        task_id: "t".into(),
        attempt: 1,
        created_ms: 0,
    }
}

#[test]
fn appends_are_compare_and_swap_on_the_sequence() {
    let dirs = Dirs::new();
    let j = writer(&dirs, JournalConfig::default());
    assert_eq!(j.create_run(&meta("r"), &[abort("a")], 1).unwrap(), 2);
    assert!(matches!(
        j.create_run(&meta("r"), &[abort("a")], 1),
        Err(JournalError::RunExists { .. })
    ));
    assert_eq!(j.append("r", 2, &[abort("b"), abort("c")], 2).unwrap(), 4);
    match j.append("r", 3, &[abort("late")], 3) {
        Err(JournalError::SequenceConflict {
            expected, actual, ..
        }) => assert_eq!((expected, actual), (3, 4)),
        other => panic!("{other:?}"),
    }
    // Skipping ahead would leave a gap: refused too.
    assert!(matches!(
        j.append("r", 6, &[abort("x")], 3),
        Err(JournalError::SequenceConflict { .. })
    ));
    assert!(matches!(
        j.append("nope", 1, &[abort("x")], 3),
        Err(JournalError::NoSuchRun { .. })
    ));
    assert_eq!(j.next_seq("r").unwrap(), 4);
}

#[test]
fn a_newer_epoch_fences_the_older_writer() {
    let dirs = Dirs::new();
    let old = writer(&dirs, JournalConfig::default());
    old.create_run(&meta("r"), &[abort("a")], 1).unwrap();
    let mut newer = old.clone();
    let e = newer.begin_epoch(EpochInfo::default()).unwrap();
    assert_eq!(e, old.epoch().unwrap() + 1);
    match old.append("r", 2, &[abort("stale")], 2) {
        Err(JournalError::Fenced { mine, current, .. }) => assert_eq!((mine, current), (e - 1, e)),
        other => panic!("{other:?}"),
    }
    assert_eq!(newer.append("r", 2, &[abort("fresh")], 2).unwrap(), 3);
    assert_eq!(newer.epochs().unwrap().len() as u64, e);
}

#[test]
fn the_record_cap_refuses_further_appends() {
    let dirs = Dirs::new();
    let j = writer(
        &dirs,
        JournalConfig {
            max_records_per_run: 3,
            ..JournalConfig::default()
        },
    );
    j.create_run(&meta("r"), &[abort("a"), abort("b")], 1)
        .unwrap();
    j.append("r", 3, &[abort("c")], 1).unwrap();
    let err = j.append("r", 4, &[abort("d")], 1).unwrap_err();
    assert!(matches!(err, JournalError::RecordCap { cap: 3, .. }));
    assert!(err.to_string().contains("run r: record cap of 3 reached"));
}

#[test]
fn terminal_runs_compact_to_a_snapshot_after_retention() {
    let dirs = Dirs::new();
    let (j, done) = completed_run(writer(&dirs, JournalConfig::default()), &dirs, "done");
    let before = j.load_run(&done).unwrap();
    assert!(before.records > 10);
    // An unfinished run is never compacted.
    j.create_run(&meta("open.1"), &[abort("x")], 0).unwrap();
    let now = before.last_at_ms + 1000;
    assert!(
        j.compact(now, 5000).unwrap().is_empty(),
        "retention not reached"
    );
    assert_eq!(j.compact(now, 1000).unwrap(), vec![done.clone()]);
    let after = j.load_run(&done).unwrap();
    assert!(after.compacted);
    assert_eq!(after.records, 1);
    assert_eq!(after.state, before.state);
    assert_eq!(after.state.digest(), before.state.digest());
    assert!(j.verify_run(&done).unwrap().ok());
    assert_eq!(j.raw_records("open.1").unwrap().len(), 1);
    // Idempotent.
    assert!(j.compact(now, 0).unwrap().is_empty());
}

#[test]
fn progress_is_overwritten_in_place_and_everything_persists() {
    let dirs = Dirs::new();
    let (j, run) = completed_run(writer(&dirs, JournalConfig::default()), &dirs, "p");
    let records = j.raw_records(&run).unwrap().len();
    for offset in [10, 20, 30] {
        j.set_progress(
            &run,
            &Progress {
                log_offset_shipped: offset,
                last_heartbeat_ms: offset * 2,
            },
        )
        .unwrap();
    }
    assert_eq!(
        j.raw_records(&run).unwrap().len(),
        records,
        "progress is not appended"
    );
    let state = j.load_run(&run).unwrap().state;
    drop(j);
    let (reopened, snapshot) = Journal::open_reader(&dirs.journal).unwrap();
    assert!(!snapshot);
    assert_eq!(reopened.progress(&run).unwrap().log_offset_shipped, 30);
    assert_eq!(reopened.load_run(&run).unwrap().state, state);
    assert!(matches!(
        reopened.append(&run, 99, &[abort("x")], 0),
        Err(JournalError::ReadOnly)
    ));
}

#[test]
fn inspect_works_next_to_a_live_agent_and_writers_are_told_who_holds_the_lock() {
    let dirs = Dirs::new();
    let (j, run) = completed_run(writer(&dirs, JournalConfig::default()), &dirs, "live");
    // `j` holds the lock, as a running daemon would.
    let out = dirs.journal(&["inspect", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let runs = json(&out);
    assert_eq!(runs[0]["run_id"], run.as_str());
    assert_eq!(runs[0]["state"], "completed");
    let out = dirs.journal(&["compact"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "locked by another agent process (pid {})",
            std::process::id()
        )),
        "{err}"
    );
    drop(j);
}

#[test]
fn secrets_in_a_task_never_reach_inspect_or_export() {
    let dirs = Dirs::new();
    let url = "https://oauth2:ghp_S3cr3tT0ken@git.example.com/team/repo.git";
    let out = dirs
        .simulate_cmd(&["--task-id", "s", "--repository", url, "--fail-at", "clone"])
        .output()
        .unwrap();
    assert!(out.status.success());
    for args in [
        vec!["inspect"],
        vec!["inspect", "--json"],
        vec!["inspect", "s"],
        vec!["inspect", "s", "--json"],
        vec!["export", "s.1"],
        vec!["verify", "--json"],
    ] {
        let out = dirs.journal(&args);
        assert!(out.status.success(), "{args:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            !text.contains("ghp_S3cr3tT0ken"),
            "{args:?} leaked the token:\n{text}"
        );
    }
    let export = json(&dirs.journal(&["export", "s.1"]));
    let pulled = &export["records"][0];
    assert_eq!(pulled["redacted"], true);
    assert!(pulled["raw_hex"].is_null());
    assert!(
        pulled["body"]["Event"]["PulledV2"]["snapshot"]["repository"]
            .as_str()
            .unwrap()
            .contains("oauth2:********@git.example.com")
    );
}

#[test]
fn every_journal_command_has_help_and_json() {
    for sub in ["inspect", "verify", "export", "compact"] {
        let out = std::process::Command::new(bin())
            .args(["journal", sub, "--help"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains("--json") && text.contains("--journal-dir"),
            "{sub}: {text}"
        );
    }
}

#[test]
fn the_journal_dir_comes_from_clearml_conf_and_a_bad_file_names_line_and_column() {
    let dirs = Dirs::new();
    assert!(dirs
        .simulate_cmd(&["--task-id", "c"])
        .output()
        .unwrap()
        .status
        .success());
    let conf = dirs.effects.join("clearml.conf");
    std::fs::write(
        &conf,
        format!(
            "agent {{\n  journal {{ dir: \"{}\" }}\n}}\n",
            dirs.journal.display()
        ),
    )
    .unwrap();
    let out = std::process::Command::new(bin())
        .args(["journal", "inspect", "--json"])
        .env("CLEARML_CONFIG_FILE", &conf)
        .env_remove("CLEARML_AGENT_JOURNAL_DIR")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(json(&out)[0]["run_id"], "c.1");
    std::fs::write(&conf, "agent {\n  journal { dir: \"/x }\n}\n").unwrap();
    let out = std::process::Command::new(bin())
        .args(["journal", "inspect", "--config-file"])
        .arg(&conf)
        .env_remove("CLEARML_AGENT_JOURNAL_DIR")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(&format!("config file {}: line 2, column", conf.display()))
            && err.contains("unterminated string"),
        "{err}"
    );
}

/// `journal compact` is maintenance, not an agent life: the next agent's resume reason still
/// names the agent that died.
#[test]
fn compact_does_not_disturb_the_next_restart_reason() {
    let dirs = Dirs::new();
    assert!(run_until_failpoint(
        dirs.simulate_cmd(&["--task-id", "r"]),
        "after-seq:5"
    ));
    let out = dirs.journal(&["compact", "--older-than", "0s"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!run_until_failpoint(dirs.simulate_cmd(&[]), ""));
    let timeline = json(&dirs.journal(&["inspect", "r", "--json"]));
    let text = timeline.to_string();
    assert!(
        text.contains("agent epoch 1 (pid") && text.contains("died without a clean shutdown"),
        "{text}"
    );
    assert!(!text.contains("journal compact"), "{text}");
}

/// Issue 9, item 5: the journal directory is 0700 and its files 0600.
#[test]
fn the_journal_is_readable_by_its_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let dirs = Dirs::new();
    assert!(!run_until_failpoint(
        dirs.simulate_cmd(&["--task-id", "x"]),
        ""
    ));
    fn walk(p: &std::path::Path, seen: &mut usize) {
        let mode = std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        if p.is_dir() {
            assert_eq!(mode, 0o700, "{}", p.display());
            for e in std::fs::read_dir(p).unwrap() {
                walk(&e.unwrap().path(), seen);
            }
        } else {
            assert_eq!(mode, 0o600, "{}", p.display());
            *seen += 1;
        }
    }
    let mut files = 0;
    walk(&dirs.journal, &mut files);
    assert!(files >= 2, "sled's files were checked");
}

/// Issue 12 ahead: one runner per run, on threads of their own, sharing one journal (appends are
/// per run). Both runs complete, both verify, and a real handler's runner can be sent to a thread.
#[test]
fn runners_on_several_threads_share_one_journal() {
    fn sendable<T: Send>() {}
    sendable::<Runner<clearml_agent::effects::real::RealEffects>>();
    let dirs = Dirs::new();
    let journal = writer(&dirs, JournalConfig::default());
    let handles: Vec<_> = (0..4)
        .map(|i| {
            let journal = journal.clone();
            let effects_dir = dirs.effects.join(format!("e{i}"));
            std::thread::spawn(move || {
                let effects = SimulatedEffects::new(&effects_dir, Script::default()).unwrap();
                let mut runner = Runner::new(journal, effects, SystemClock);
                let run = runner
                    .start(
                        TaskSnapshot {
                            task_id: format!("t{i}"),
                            ..Default::default()
                        },
                        Default::default(),
                    )
                    .unwrap();
                let driven = runner.drive(&run).unwrap();
                assert_eq!(driven.state().outcome, Some(Outcome::Completed));
                run
            })
        })
        .collect();
    for h in handles {
        let run = h.join().unwrap();
        assert!(journal.verify_run(&run).unwrap().ok(), "{run}");
    }
    assert_eq!(journal.runs().unwrap().len(), 4);
}
