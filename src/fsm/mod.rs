//! The task-execution state machine: pure, total, deterministic.
//!
//! `transition(state, event) -> (state, commands)` has no IO, no clock and no randomness:
//! time, ids and every answer from the outside world arrive as event payloads, so folding
//! the same events always yields the same state (and the same [`RunState::digest`]).
//!
//! A run walks `Pulled -> EnvResolved -> Cloned -> Patched -> Running -> Reported`. Each
//! step is driven by one [`Command`] whose effect is bracketed in the journal by an intent
//! ([`Event::EffectStarted`]) and a result ([`Event::EffectDone`] / [`Event::EffectFailed`]).

mod event;
mod state;

pub use event::{
    Command, CommandKind, CredentialRef, EffectKey, EffectResult, EnvFacts, Event, Origin,
    ProcessFacts, PullExt, ResumeInfo, SourceFacts, TaskSnapshot,
};
pub use state::{Outcome, Phase, RunExt, RunState, StopRequest, V1State, MAX_STAGE_RETRIES};

use thiserror::Error;

/// Why an event was refused. The state is left unchanged when this is returned.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FsmError {
    #[error("run is already terminal ({outcome}); event {event} is not allowed")]
    Terminal {
        outcome: String,
        event: &'static str,
    },
    #[error("event {event} is not allowed before the run was pulled")]
    NotPulled { event: &'static str },
    #[error("run was already pulled; a second Pulled event is not allowed")]
    AlreadyPulled,
    #[error("effect {started} started while effect {pending} is still pending")]
    EffectPending { pending: String, started: String },
    #[error("effect {got} started, but the state machine expected {expected}")]
    UnexpectedEffect { expected: String, got: String },
    #[error("result for effect {got}, but no effect is pending")]
    NoPendingEffect { got: String },
    #[error("result for effect {got}, but the pending effect is {pending}")]
    WrongEffectKey { pending: String, got: String },
    #[error("effect {key} returned a {got} result, expected {expected}")]
    WrongResultKind {
        key: String,
        expected: &'static str,
        got: &'static str,
    },
}

/// Apply one event. On success returns the new state and the commands that became due
/// (at most one: the state machine is sequential). On error the caller's state is untouched.
pub fn transition(state: &RunState, event: &Event) -> Result<(RunState, Vec<Command>), FsmError> {
    let mut next = state.clone();
    next.apply(event)?;
    let commands = next.next_command().into_iter().collect();
    Ok((next, commands))
}

/// Fold a sequence of events from the empty state. Stops at the first refused event and
/// reports its zero-based index.
pub fn fold<'a>(
    events: impl IntoIterator<Item = &'a Event>,
) -> Result<RunState, (usize, FsmError)> {
    let mut state = RunState::default();
    for (i, event) in events.into_iter().enumerate() {
        state.apply(event).map_err(|e| (i, e))?;
    }
    Ok(state)
}

#[cfg(test)]
mod tests;
