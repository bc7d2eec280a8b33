//! The real effect handler: one [`EffectHandler`] that hands each command to its module
//! ([`super::claim`], [`super::env`], [`super::source`], [`super::patch`], [`super::process`],
//! [`super::report`]). It holds no decision of its own.

use super::process::{self, HostRuntime, Runtime};
use super::task::World;
use super::{
    claim, env, patch, report, source, EffectCtx, EffectHandler, EffectOutcome, Reconciled,
};
use crate::fsm::{Command, CommandKind, RunState, StopRequest};

pub struct RealEffects {
    pub world: World,
    /// Where user processes run: the host supervisor today.
    pub runtime: Box<dyn Runtime>,
}

impl RealEffects {
    pub fn new(world: World) -> Self {
        let runtime = Box::new(HostRuntime {
            agent_exe: world.agent_exe.clone(),
        });
        RealEffects { world, runtime }
    }
}

impl EffectHandler for RealEffects {
    fn perform(&mut self, state: &RunState, cmd: &Command, ctx: &mut EffectCtx) -> EffectOutcome {
        let (w, rt) = (&self.world, self.runtime.as_ref());
        match &cmd.kind {
            CommandKind::Claim => claim::perform(w, state, false),
            CommandKind::ResolveEnv => env::perform(w, state),
            CommandKind::Clone => source::perform(w, state),
            CommandKind::ApplyPatch => patch::perform(w, state),
            CommandKind::Launch => process::launch(w, rt, state),
            CommandKind::Wait => process::wait(w, rt, state, ctx),
            CommandKind::Terminate => process::terminate(w, rt, state),
            CommandKind::Report(outcome) => report::perform(w, rt, state, outcome, ctx),
        }
    }

    fn reconcile(&mut self, state: &RunState, cmd: &Command) -> Reconciled {
        let (w, rt) = (&self.world, self.runtime.as_ref());
        match &cmd.kind {
            CommandKind::Claim => claim::reconcile(w, state),
            CommandKind::ResolveEnv => env::reconcile(w, state),
            CommandKind::Clone => source::reconcile(w, state),
            CommandKind::ApplyPatch => patch::reconcile(w, state),
            CommandKind::Launch => process::reconcile_launch(w, rt, state),
            // Waiting again re-attaches to the process.
            CommandKind::Wait => Reconciled::Redo,
            CommandKind::Terminate => process::reconcile_terminate(rt, state),
            CommandKind::Report(outcome) => report::reconcile(w, state, outcome),
        }
    }

    fn check_on_resume(&mut self, state: &RunState) -> Option<StopRequest> {
        let why = self.world.moved_on(state)?;
        tracing::warn!(
            "task {} moved on while the agent was down ({why}): closing run {}",
            state.task_id,
            state.run_id
        );
        Some(StopRequest::Abort { by: why })
    }

    fn clean_up(&mut self, state: &RunState) {
        let w = &self.world;
        if !w.settings.clean_up_runs {
            return;
        }
        let dirs = w.dirs(state);
        let _ = std::fs::remove_dir_all(&dirs.venv);
        let _ = std::fs::remove_dir_all(&dirs.run);
    }

    fn on_detach(&mut self, state: &RunState, reason: &str) {
        // Preemption with `agent.resume.on_preemption: resume`: the process stays, but is told
        // so it can checkpoint before the machine goes.
        if reason.starts_with("preemption") {
            if let Some(facts) = &state.process {
                self.runtime
                    .signal(facts, self.world.settings.preemption_signal);
            }
        }
    }
}
