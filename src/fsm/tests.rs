use super::*;
use proptest::prelude::*;

fn snapshot() -> TaskSnapshot {
    TaskSnapshot {
        task_id: "t1".into(),
        name: "train".into(),
        ..Default::default()
    }
}

fn pulled() -> Event {
    Event::Pulled {
        run_id: "t1.1".into(),
        attempt: 1,
        agent_version: "test".into(),
        snapshot: Box::new(snapshot()),
    }
}

fn pulled_v2(ext: PullExt) -> Event {
    Event::PulledV2 {
        run_id: "t1.1".into(),
        attempt: 1,
        agent_version: "test".into(),
        snapshot: Box::new(snapshot()),
        ext: Box::new(ext),
    }
}

fn result_for(kind: &CommandKind) -> EffectResult {
    match kind {
        CommandKind::ResolveEnv => EffectResult::EnvResolved(EnvFacts::default()),
        CommandKind::Clone => EffectResult::Cloned(SourceFacts::default()),
        CommandKind::ApplyPatch => EffectResult::Patched { applied: true },
        CommandKind::Launch => EffectResult::Launched(ProcessFacts::default()),
        CommandKind::Wait => EffectResult::Exited { code: 0 },
        CommandKind::Terminate => EffectResult::Terminated { code: Some(-15) },
        CommandKind::Report(_) => EffectResult::Reported,
        CommandKind::Claim => EffectResult::Claimed,
    }
}

/// Start and finish the next command with `result`, returning the command.
fn step(state: &mut RunState, result: impl FnOnce(&CommandKind) -> EffectResult) -> Command {
    let cmd = state.next_command().expect("a command is due");
    state
        .apply(&Event::EffectStarted {
            key: cmd.key.clone(),
            command: cmd.kind.clone(),
            epoch: 1,
        })
        .unwrap();
    let r = result(&cmd.kind);
    state
        .apply(&Event::EffectDone {
            key: cmd.key.clone(),
            result: r,
        })
        .unwrap();
    cmd
}

fn start(state: &mut RunState) -> Command {
    let cmd = state.next_command().expect("a command is due");
    state
        .apply(&Event::EffectStarted {
            key: cmd.key.clone(),
            command: cmd.kind.clone(),
            epoch: 1,
        })
        .unwrap();
    cmd
}

#[test]
fn happy_path_walks_every_phase_with_derived_keys() {
    let mut s = RunState::default();
    s.apply(&pulled()).unwrap();
    let mut keys = vec![];
    let mut phases = vec![s.phase];
    while !s.is_terminal() {
        keys.push(step(&mut s, result_for).key.0);
        phases.push(s.phase);
    }
    assert_eq!(
        keys,
        [
            "t1:1:EnvResolved",
            "t1:1:Cloned",
            "t1:1:Patched",
            "t1:1:Running",
            "t1:1:Exited",
            "t1:1:Reported"
        ]
    );
    assert_eq!(
        phases,
        [
            Phase::Pulled,
            Phase::EnvResolved,
            Phase::Cloned,
            Phase::Patched,
            Phase::Running,
            Phase::Running,
            Phase::Reported
        ]
    );
    assert_eq!(s.outcome, Some(Outcome::Completed));
    assert_eq!(s.next_command(), None);
}

#[test]
fn nonzero_exit_fails_with_upstream_reason() {
    let mut s = RunState::default();
    s.apply(&pulled()).unwrap();
    for _ in 0..4 {
        step(&mut s, result_for);
    }
    step(&mut s, |_| EffectResult::Exited { code: 3 });
    assert_eq!(
        s.outcome,
        Some(Outcome::Failed {
            reason: "worker execution exit code 3".into()
        })
    );
    let report = s.next_command().unwrap();
    assert!(matches!(
        report.kind,
        CommandKind::Report(Outcome::Failed { .. })
    ));
}

#[test]
fn failure_at_each_stage_fails_the_run_naming_the_stage() {
    for stage in 0..5 {
        let mut s = RunState::default();
        s.apply(&pulled()).unwrap();
        for _ in 0..stage {
            step(&mut s, result_for);
        }
        let cmd = start(&mut s);
        s.apply(&Event::EffectFailed {
            key: cmd.key.clone(),
            reason: "boom".into(),
            retryable: false,
        })
        .unwrap();
        let expected = format!("{}: boom", cmd.kind.failure_label());
        assert_eq!(s.outcome, Some(Outcome::Failed { reason: expected }));
        step(&mut s, result_for);
        assert!(s.is_terminal());
    }
}

#[test]
fn illegal_events_are_typed_errors_and_change_nothing() {
    let mut s = RunState::default();
    let done = Event::EffectDone {
        key: EffectKey("t1:1:Cloned".into()),
        result: EffectResult::Reported,
    };
    assert!(matches!(
        transition(&s, &done),
        Err(FsmError::NotPulled { .. })
    ));
    s.apply(&pulled()).unwrap();
    assert_eq!(s.apply(&pulled()), Err(FsmError::AlreadyPulled));
    assert!(matches!(
        transition(&s, &done),
        Err(FsmError::NoPendingEffect { .. })
    ));
    let wrong_start = Event::EffectStarted {
        key: EffectKey("t1:1:Cloned".into()),
        command: CommandKind::Clone,
        epoch: 1,
    };
    assert!(matches!(
        transition(&s, &wrong_start),
        Err(FsmError::UnexpectedEffect { .. })
    ));
    let cmd = start(&mut s);
    let before = s.clone();
    let wrong_kind = Event::EffectDone {
        key: cmd.key.clone(),
        result: EffectResult::Reported,
    };
    assert!(matches!(
        s.apply(&wrong_kind),
        Err(FsmError::WrongResultKind { .. })
    ));
    assert_eq!(s, before, "a refused event must not change the state");
    let wrong_key = Event::EffectDone {
        key: EffectKey("other".into()),
        result: EffectResult::EnvResolved(EnvFacts::default()),
    };
    assert!(matches!(
        s.apply(&wrong_key),
        Err(FsmError::WrongEffectKey { .. })
    ));
    // Finish the run, then nothing more is accepted.
    s.apply(&Event::EffectFailed {
        key: cmd.key,
        reason: "x".into(),
        retryable: false,
    })
    .unwrap();
    step(&mut s, result_for);
    assert!(matches!(
        s.apply(&Event::AbortRequested { by: "u".into() }),
        Err(FsmError::Terminal { .. })
    ));
}

#[test]
fn abort_before_running_reports_aborted_without_more_stages() {
    let mut s = RunState::default();
    s.apply(&pulled()).unwrap();
    step(&mut s, result_for);
    s.apply(&Event::AbortRequested { by: "user".into() })
        .unwrap();
    let cmd = s.next_command().unwrap();
    assert_eq!(
        cmd.kind,
        CommandKind::Report(Outcome::Aborted { by: "user".into() })
    );
}

#[test]
fn abort_during_a_stage_waits_for_its_result() {
    let mut s = RunState::default();
    s.apply(&pulled()).unwrap();
    let cmd = start(&mut s);
    s.apply(&Event::AbortRequested { by: "user".into() })
        .unwrap();
    assert_eq!(
        s.next_command(),
        None,
        "the pending effect is reconciled first"
    );
    s.apply(&Event::EffectDone {
        key: cmd.key,
        result: result_for(&cmd.kind),
    })
    .unwrap();
    assert!(matches!(
        s.next_command().unwrap().kind,
        CommandKind::Report(Outcome::Aborted { .. })
    ));
}

#[test]
fn abort_while_running_terminates_then_reports() {
    let mut s = RunState::default();
    s.apply(&pulled()).unwrap();
    for _ in 0..4 {
        step(&mut s, result_for);
    }
    assert_eq!(s.phase, Phase::Running);
    s.apply(&Event::RequeueRequested {
        why: "preempted".into(),
    })
    .unwrap();
    let term = step(&mut s, result_for);
    assert_eq!(term.kind, CommandKind::Terminate);
    assert_eq!(term.key.0, "t1:1:Terminated");
    assert_eq!(
        s.outcome,
        Some(Outcome::Requeued {
            why: "preempted".into()
        })
    );
    // A later abort does not override the first stop.
    s.apply(&Event::AbortRequested { by: "user".into() })
        .unwrap();
    assert!(matches!(s.outcome, Some(Outcome::Requeued { .. })));
}

#[test]
fn stage_retries_are_bounded_but_report_retries_are_not() {
    let mut s = RunState::default();
    s.apply(&pulled()).unwrap();
    for i in 0..=MAX_STAGE_RETRIES {
        let cmd = start(&mut s);
        assert_eq!(cmd.kind, CommandKind::ResolveEnv);
        s.apply(&Event::EffectFailed {
            key: cmd.key,
            reason: format!("net {i}"),
            retryable: true,
        })
        .unwrap();
    }
    assert!(matches!(s.outcome, Some(Outcome::Failed { .. })));
    for _ in 0..50 {
        let cmd = start(&mut s);
        s.apply(&Event::EffectFailed {
            key: cmd.key,
            reason: "server down".into(),
            retryable: true,
        })
        .unwrap();
    }
    assert!(!s.is_terminal());
    assert!(matches!(
        s.next_command().unwrap().kind,
        CommandKind::Report(_)
    ));
}

#[test]
fn protocol_2_claims_first_then_walks_the_same_phases() {
    let mut s = RunState::default();
    s.apply(&pulled_v2(PullExt::default())).unwrap();
    let mut keys = vec![];
    while !s.is_terminal() {
        keys.push(step(&mut s, result_for).key.0);
    }
    assert_eq!(keys[0], "t1:1:Claimed");
    assert_eq!(keys.len(), 7);
    assert!(s.ext.claimed && s.ext.protocol == 2);
    assert_eq!(s.outcome, Some(Outcome::Completed));
}

#[test]
fn a_stop_observed_by_wait_is_terminated_then_reported_never_failed() {
    let mut s = RunState::default();
    s.apply(&pulled_v2(PullExt::default())).unwrap();
    for _ in 0..5 {
        step(&mut s, result_for);
    }
    let wait = step(&mut s, |_| {
        EffectResult::StopObserved(StopRequest::Requeue {
            why: "preempted: aws".into(),
        })
    });
    assert_eq!(wait.kind, CommandKind::Wait);
    assert_eq!(
        s.outcome, None,
        "nothing decided before the process is stopped"
    );
    let term = start(&mut s);
    assert_eq!(term.kind, CommandKind::Terminate);
    // The agent dies in the grace period: the process exited by SIGTERM meanwhile.
    s.apply(&Event::EffectDone {
        key: term.key,
        result: EffectResult::Terminated { code: Some(-15) },
    })
    .unwrap();
    assert_eq!(
        s.outcome,
        Some(Outcome::Requeued {
            why: "preempted: aws".into()
        })
    );
}

#[test]
fn a_claim_that_finds_the_task_taken_closes_the_run_without_stages() {
    let mut s = RunState::default();
    s.apply(&pulled_v2(PullExt::default())).unwrap();
    step(&mut s, |_| {
        EffectResult::StopObserved(StopRequest::Abort {
            by: "task taken by worker b".into(),
        })
    });
    assert!(matches!(
        s.next_command().unwrap().kind,
        CommandKind::Report(Outcome::Aborted { .. })
    ));
    // Claims are retried without bound, like reports.
    let mut s = RunState::default();
    s.apply(&pulled_v2(PullExt::default())).unwrap();
    for _ in 0..20 {
        let cmd = start(&mut s);
        s.apply(&Event::EffectFailed {
            key: cmd.key,
            reason: "server down".into(),
            retryable: true,
        })
        .unwrap();
    }
    assert_eq!(s.next_command().unwrap().kind, CommandKind::Claim);
}

#[test]
fn bad_input_is_claimed_then_failed_naming_the_field() {
    let mut s = RunState::default();
    let ext = PullExt {
        input_error: Some("script.diff: expected a string, got a number".into()),
        ..PullExt::default()
    };
    s.apply(&pulled_v2(ext)).unwrap();
    step(&mut s, result_for);
    match s.next_command().unwrap().kind {
        CommandKind::Report(Outcome::Failed { reason }) => {
            assert!(reason.contains("script.diff"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_digest_of_a_first_schema_state_ignores_the_default_extension() {
    let mut v1 = RunState::default();
    v1.apply(&pulled()).unwrap();
    let mut v2 = RunState::default();
    v2.apply(&pulled_v2(PullExt::default())).unwrap();
    assert_ne!(
        v1.digest(),
        v2.digest(),
        "the extension counts once it is set"
    );
    let bytes = bincode::serialize(&V1State(v1.clone())).unwrap();
    let back: V1State = bincode::deserialize(&bytes).unwrap();
    assert_eq!(back.0, v1);
}

// ---------- property tests ----------

/// A choice of what happens next; interpreted against the current state so that most
/// generated sequences walk deep into the machine instead of failing at the first event.
#[derive(Debug, Clone)]
enum Action {
    StartDue,
    FinishPending { ok: bool, code: i32 },
    FailPending { retryable: bool },
    Abort,
    Requeue,
    Resume,
    Random(Event),
}

fn arb_event() -> impl Strategy<Value = Event> {
    let key = prop_oneof![
        Just("t1:1:EnvResolved"),
        Just("t1:1:Cloned"),
        Just("t1:1:Running"),
        Just("t1:1:Reported"),
        Just("junk")
    ]
    .prop_map(|k| EffectKey(k.to_string()));
    prop_oneof![
        Just(pulled()),
        Just(pulled_v2(PullExt::default())),
        (key.clone(), any::<u64>()).prop_map(|(key, epoch)| Event::EffectStarted {
            key,
            command: CommandKind::Clone,
            epoch
        }),
        (key.clone(), any::<i32>()).prop_map(|(key, code)| Event::EffectDone {
            key,
            result: EffectResult::Exited { code }
        }),
        (key, any::<bool>()).prop_map(|(key, retryable)| Event::EffectFailed {
            key,
            reason: "r".into(),
            retryable
        }),
        ".{0,8}".prop_map(|by| Event::AbortRequested { by }),
    ]
}

fn arb_action() -> impl Strategy<Value = Action> {
    prop_oneof![
        6 => Just(Action::StartDue),
        6 => (any::<bool>(), -3i32..3).prop_map(|(ok, code)| Action::FinishPending { ok, code }),
        2 => any::<bool>().prop_map(|retryable| Action::FailPending { retryable }),
        1 => Just(Action::Abort),
        1 => Just(Action::Requeue),
        1 => Just(Action::Resume),
        2 => arb_event().prop_map(Action::Random),
    ]
}

fn event_for(state: &RunState, action: &Action) -> Event {
    let pending = state.pending.clone();
    let pending_key = pending
        .as_ref()
        .map(|c| c.key.clone())
        .unwrap_or(EffectKey("none".into()));
    match action {
        Action::StartDue => match state.next_command() {
            Some(c) => Event::EffectStarted {
                key: c.key,
                command: c.kind,
                epoch: 1,
            },
            None => pulled(),
        },
        Action::FinishPending { ok, code } => Event::EffectDone {
            key: pending_key,
            result: match (&pending, ok) {
                (Some(c), true) if c.kind == CommandKind::Wait && *code == 2 => {
                    EffectResult::StopObserved(StopRequest::Abort {
                        by: "watcher".into(),
                    })
                }
                (Some(c), true) if c.kind == CommandKind::Wait => {
                    EffectResult::Exited { code: *code }
                }
                (Some(c), true) => result_for(&c.kind),
                _ => EffectResult::Reported,
            },
        },
        Action::FailPending { retryable } => Event::EffectFailed {
            key: pending_key,
            reason: "failure".into(),
            retryable: *retryable,
        },
        Action::Abort => Event::AbortRequested { by: "user".into() },
        Action::Requeue => Event::RequeueRequested {
            why: "preempted".into(),
        },
        Action::Resume => Event::Resumed(ResumeInfo {
            epoch: 2,
            reason: "restart".into(),
            ..Default::default()
        }),
        Action::Random(e) => e.clone(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_sequences_never_panic_and_replay_identically(
        actions in proptest::collection::vec(arb_action(), 0..60),
        pull_first in any::<bool>(),
        v2 in any::<bool>(),
    ) {
        let mut state = RunState::default();
        let mut accepted = vec![];
        if pull_first {
            let first = if v2 { pulled_v2(PullExt::default()) } else { pulled() };
            state.apply(&first).unwrap();
            accepted.push(first);
        }
        for action in &actions {
            let event = event_for(&state, action);
            match transition(&state, &event) {
                Ok((next, commands)) => {
                    prop_assert_eq!(commands, next.next_command().into_iter().collect::<Vec<_>>());
                    prop_assert!(next.phase >= state.phase, "phases never go back");
                    if let Some(c) = &next.pending {
                        prop_assert_eq!(&c.key, &EffectKey::new(&next.task_id, next.attempt, c.kind.target_state()));
                    }
                    state = next;
                    accepted.push(event);
                }
                Err(_) => {
                    // The original state is untouched by a refused event.
                    let mut copy = state.clone();
                    prop_assert!(copy.apply(&event).is_err());
                    prop_assert_eq!(&copy, &state);
                }
            }
        }
        let first = fold(&accepted).expect("accepted events fold");
        let second = fold(&accepted).expect("accepted events fold again");
        prop_assert_eq!(&first, &state);
        prop_assert_eq!(&first, &second);
        prop_assert_eq!(first.digest(), second.digest());
    }

    #[test]
    fn arbitrary_events_never_panic(events in proptest::collection::vec(arb_event(), 0..40)) {
        let mut state = RunState::default();
        for e in &events {
            let _ = state.apply(e);
            let _ = state.next_command();
            let _ = state.digest();
        }
    }
}
