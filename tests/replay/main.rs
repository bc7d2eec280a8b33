//! Golden replay tests (as Temporal's replayer): journals exported from real runs are
//! checked in as fixtures; each must decode with today's codec and fold through today's
//! FSM to the state it reached when it was recorded.

use clearml_agent::fsm::{CommandKind, Outcome, RunState};
use clearml_agent::journal::export::RunExport;
use std::path::Path;

fn load(name: &str) -> RunExport {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/replay/fixtures")
        .join(format!("{name}.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Replays a fixture and returns its final state after checking it against the recording.
fn replay(name: &str) -> RunState {
    let export = load(name);
    assert!(
        export.records.iter().all(|r| r.raw_hex.is_some()),
        "{name}: fixtures keep the exact stored bytes"
    );
    let loaded = export.replay().unwrap_or_else(|e| panic!("{name}: {e}"));
    let recorded = export
        .final_state
        .clone()
        .expect("fixture has a final state");
    assert_eq!(
        loaded.state, recorded,
        "{name}: replay diverged from the recording"
    );
    assert_eq!(
        Some(loaded.state.digest()),
        export.final_digest,
        "{name}: digest"
    );
    assert!(
        loaded.state.is_terminal(),
        "{name}: fixtures are finished runs"
    );
    assert_eq!(loaded.state.pending, None);
    loaded.state
}

fn reason(s: &RunState) -> String {
    match &s.outcome {
        Some(Outcome::Failed { reason }) => reason.clone(),
        other => panic!("expected a failure, got {other:?}"),
    }
}

#[test]
fn happy_path_completes() {
    let s = replay("happy");
    assert_eq!(s.outcome, Some(Outcome::Completed));
    assert_eq!(s.exit_code, Some(0));
    assert!(s.env.is_some() && s.source.is_some() && s.process.is_some());
}

#[test]
fn each_stage_failure_fails_with_its_reason() {
    for (name, kind) in [
        ("fail-resolve-env", CommandKind::ResolveEnv),
        ("fail-clone", CommandKind::Clone),
        ("fail-apply-patch", CommandKind::ApplyPatch),
        ("fail-launch", CommandKind::Launch),
    ] {
        let s = replay(name);
        let r = reason(&s);
        assert!(r.starts_with(kind.failure_label()), "{name}: {r}");
        assert!(r.contains(kind.name()), "{name}: {r}");
        assert_eq!(s.process, None, "{name}: nothing ran after the failure");
    }
}

#[test]
fn nonzero_exit_fails_with_the_exit_code() {
    let s = replay("exit-code-3");
    assert_eq!(reason(&s), "worker execution exit code 3");
    assert_eq!(s.exit_code, Some(3));
}

#[test]
fn aborts_and_requeues_end_as_requested() {
    let s = replay("abort-before-clone");
    assert!(matches!(s.outcome, Some(Outcome::Aborted { .. })));
    assert_eq!(s.source, None, "no clone after the abort");
    let s = replay("abort-while-running");
    assert!(matches!(s.outcome, Some(Outcome::Aborted { .. })));
    assert!(
        s.process.is_some(),
        "the process was started, then terminated"
    );
    let s = replay("requeue-while-running");
    assert!(matches!(s.outcome, Some(Outcome::Requeued { .. })));
}

#[test]
fn a_report_that_failed_twice_is_retried_to_completion() {
    let export = load("report-retried");
    let failures = export
        .records
        .iter()
        .filter(|r| r.name == "EffectFailed")
        .count();
    assert_eq!(failures, 2);
    assert_eq!(replay("report-retried").outcome, Some(Outcome::Completed));
}

#[test]
fn runs_resumed_after_a_crash_complete_once() {
    for name in ["resume-after-intent", "resume-while-running"] {
        let s = replay(name);
        assert_eq!(s.outcome, Some(Outcome::Completed), "{name}");
        assert_eq!(s.resumes.len(), 1, "{name}");
        assert_eq!(s.resumes[0].reason, "agent restart");
        assert!(s.resumes[0].epoch > 1, "{name}: the resume is a new epoch");
    }
}

/// Fixture names (`happy`, `v2/happy`, `real/exit-code-3`) in `sub` of the fixtures dir.
fn fixtures(sub: &str) -> Vec<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/replay/fixtures")
        .join(sub);
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .map(|p| {
            let stem = p.file_stem().unwrap().to_str().unwrap().to_string();
            if sub.is_empty() {
                stem
            } else {
                format!("{sub}/{stem}")
            }
        })
        .collect();
    names.sort();
    names
}

#[test]
fn every_fixture_replays() {
    let first = fixtures("");
    assert!(
        first.len() >= 8,
        "at least 8 first-schema fixtures, found {first:?}"
    );
    let v2 = fixtures("v2");
    assert!(v2.len() >= 8, "protocol-2 fixtures: {v2:?}");
    let real = fixtures("real");
    assert!(real.len() >= 5, "real-handler fixtures: {real:?}");
    for name in first.iter().chain(&v2).chain(&real) {
        replay(name);
    }
}

/// The state every protocol-2 fixture ends in: claimed first, and a stop never reads as a
/// failure.
#[test]
fn protocol_2_fixtures_claim_first() {
    for name in fixtures("v2").iter().chain(&fixtures("real")) {
        let export = load(name);
        let first_intent = export
            .records
            .iter()
            .find(|r| r.name == "EffectStarted")
            .unwrap_or_else(|| panic!("{name}: no effect"));
        let text = serde_json::to_string(&first_intent.body).unwrap();
        assert!(text.contains("Claim"), "{name}: first effect {text}");
        let s = replay(name);
        assert!(s.ext.protocol == 2 && s.ext.claimed, "{name}");
    }
}

/// Real-handler runs: what the daemon journaled for real git, venv and processes.
#[test]
fn real_handler_fixtures_end_as_recorded() {
    let s = replay("real/completed-with-diff");
    assert_eq!(s.outcome, Some(Outcome::Completed));
    assert_eq!(s.patch_applied, Some(true));
    assert!(s.source.as_ref().and_then(|x| x.commit.clone()).is_some());
    assert_eq!(
        reason(&replay("real/exit-code-3")),
        "worker execution exit code 3"
    );
    let s = replay("real/aborted-while-running");
    assert!(
        matches!(s.outcome, Some(Outcome::Aborted { .. })),
        "{:?}",
        s.outcome
    );
    let export = load("real/aborted-while-running");
    assert!(
        export.records.iter().any(|r| serde_json::to_string(&r.body)
            .unwrap()
            .contains("StopObserved")),
        "the stop was observed by Wait and journaled before Terminate"
    );
    let r = reason(&replay("real/entry-point-outside-checkout"));
    assert!(r.contains("script.entry_point"), "{r}");
    let s = replay("real/resumed-after-kill-9");
    assert_eq!(s.outcome, Some(Outcome::Completed));
    assert_eq!(s.resumes.len(), 1);
}

#[test]
fn a_tampered_fixture_is_caught() {
    let mut export = load("happy");
    // Change the recorded exit code in the JSON only: the stored bytes disagree.
    let rec = export
        .records
        .iter_mut()
        .find(|r| {
            r.name == "EffectDone" && r.raw_hex.is_some() && {
                let b = serde_json::to_string(&r.body).unwrap();
                b.contains("Exited")
            }
        })
        .unwrap();
    let mut body = serde_json::to_value(&rec.body).unwrap();
    body["Event"]["EffectDone"]["result"]["Exited"]["code"] = serde_json::json!(7);
    rec.body = serde_json::from_value(body).unwrap();
    let err = export.replay().unwrap_err();
    assert!(err.contains("stored bytes decode to"), "{err}");
}
