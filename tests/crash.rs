//! Crash harness: a real child process running a real journal is `kill -9`ed after every
//! journal append, restarted, and must converge to the same final state with every effect
//! performed exactly once.

mod common;

use clearml_agent::fsm::{Outcome, RunState};
use clearml_agent::journal::Journal;
use common::*;

const EFFECT_KEYS_HAPPY: [&str; 7] = [
    "Claimed",
    "EnvResolved",
    "Cloned",
    "Patched",
    "Running",
    "Exited",
    "Reported",
];

fn final_state(dirs: &Dirs, run: &str) -> RunState {
    let (journal, _) = Journal::open_reader(&dirs.journal).unwrap();
    let report = journal.verify_run(run).unwrap();
    assert!(report.ok(), "journal must verify: {:?}", report.problems);
    journal.load_run(run).unwrap().state
}

/// What must be identical however often the agent died: everything but the resume log.
fn essence(s: &RunState) -> RunState {
    RunState {
        resumes: vec![],
        epoch: 0,
        ..s.clone()
    }
}

fn records_of(dirs: &Dirs, run: &str) -> u64 {
    let (journal, _) = Journal::open_reader(&dirs.journal).unwrap();
    journal.raw_records(run).unwrap().len() as u64
}

fn performs(dirs: &Dirs) -> Vec<(String, usize)> {
    dirs.effect_log()
        .into_iter()
        .filter_map(|(line, n)| line.strip_prefix("perform ").map(|k| (k.to_string(), n)))
        .collect()
}

fn check_scenario(args: &[&str], expect: fn(&Outcome) -> bool) {
    let task = "task0";
    let run = "task0.1";
    let mut full: Vec<&str> = vec!["--task-id", task];
    full.extend_from_slice(args);

    let baseline = Dirs::new();
    assert!(!run_until_failpoint(baseline.simulate_cmd(&full), ""));
    let expected = final_state(&baseline, run);
    assert!(
        expect(expected.outcome.as_ref().unwrap()),
        "{:?}",
        expected.outcome
    );
    let expected_performs = performs(&baseline);
    assert!(expected_performs.iter().all(|(_, n)| *n == 1));
    let total = records_of(&baseline, run);
    assert!(total >= 8, "a run has at least 8 records, got {total}");

    for k in 1..=total {
        let dirs = Dirs::new();
        assert!(
            run_until_failpoint(dirs.simulate_cmd(&full), &format!("after-seq:{k}")),
            "failpoint after record {k} must be reached"
        );
        // Restart: resume only, same effect script.
        let mut resume: Vec<&str> = vec![];
        resume.extend_from_slice(args);
        assert!(!run_until_failpoint(dirs.simulate_cmd(&resume), ""));
        let state = final_state(&dirs, run);
        assert_eq!(
            essence(&state),
            essence(&expected),
            "kill -9 after record {k} of {args:?} changed the final state"
        );
        let got = performs(&dirs);
        assert_eq!(
            got, expected_performs,
            "kill -9 after record {k} of {args:?}: every effect exactly once"
        );
        // The last append writes the final result and its digest together: a kill after
        // it leaves a terminal run that needs no resume.
        let was_terminal = k >= total - 1;
        assert_eq!(
            state.resumes.len(),
            usize::from(!was_terminal),
            "after record {k}"
        );
    }
}

#[test]
fn happy_path_survives_kill_after_every_append() {
    check_scenario(&[], |o| *o == Outcome::Completed);
}

#[test]
fn stage_failure_survives_kill_after_every_append() {
    check_scenario(
        &["--fail-at", "clone"],
        |o| matches!(o, Outcome::Failed { reason } if reason.contains("clone")),
    );
}

#[test]
fn nonzero_exit_survives_kill_after_every_append() {
    check_scenario(
        &["--exit-code", "3"],
        |o| matches!(o, Outcome::Failed { reason } if reason == "worker execution exit code 3"),
    );
}

#[test]
fn abort_while_running_survives_kill_after_every_append() {
    check_scenario(&["--abort-before", "wait"], |o| {
        matches!(o, Outcome::Aborted { .. })
    });
}

/// The harshest schedule: every restart is killed again after exactly one more record,
/// so the run advances one record per agent life.
#[test]
fn crash_loop_advances_one_record_per_restart_and_completes() {
    let dirs = Dirs::new();
    let run = "task0.1";
    assert!(run_until_failpoint(
        dirs.simulate_cmd(&["--task-id", "task0"]),
        "after-append:1"
    ));
    let mut restarts = 0;
    // Each life appends its Resumed record, then one more, then dies.
    while run_until_failpoint(dirs.simulate_cmd(&[]), "after-append:2") {
        restarts += 1;
        assert!(restarts < 100, "the run must converge");
    }
    let state = final_state(&dirs, run);
    assert_eq!(state.outcome, Some(Outcome::Completed));
    assert!(
        state.resumes.len() >= EFFECT_KEYS_HAPPY.len(),
        "{restarts} restarts"
    );
    // Every killed restart resumed the run; the last one finished it, so the final
    // (unkilled) start found nothing to resume.
    assert_eq!(state.resumes.len(), restarts);
    // Each resume records a new epoch.
    let epochs: Vec<u64> = state.resumes.iter().map(|r| r.epoch).collect();
    assert!(epochs.windows(2).all(|w| w[0] < w[1]), "{epochs:?}");
    let got = performs(&dirs);
    let keys: Vec<String> = got.iter().map(|(k, _)| k.clone()).collect();
    for suffix in EFFECT_KEYS_HAPPY {
        assert!(keys.contains(&format!("task0:1:{suffix}")), "{keys:?}");
    }
    assert!(got.iter().all(|(_, n)| *n == 1), "exactly once: {got:?}");
    // Some intents were reconciled rather than performed again.
    let log = dirs.effect_log();
    assert!(log.keys().any(|l| l.starts_with("reconcile-")), "{log:?}");
}
