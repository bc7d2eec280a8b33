//! The daemon's watchers as one [`StopSource`]: signals (SIGTERM/SIGINT: shut down and leave
//! running tasks to their supervisors; SIGUSR1, `daemon --stop`: abort them; SIGUSR2,
//! `daemon --stop --drain`: stop pulling, let them finish) and preemption notices. Flags are
//! owned here and registered with `signal-hook`, so nothing is a process-global input: a test
//! or a second daemon in one process gets its own.

use crate::effects::task::AGENT_SHUTDOWN;
use crate::effects::{Interruption, StopSource};
use crate::fsm::{RunState, StopRequest};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

#[derive(Default)]
pub struct Controls {
    pub shutdown: Arc<AtomicBool>,
    pub abort_all: Arc<AtomicBool>,
    pub drain: Arc<AtomicBool>,
    preempted: Mutex<Option<String>>,
    /// `agent.resume.on_preemption: requeue` (else the run is left to resume on this disk).
    pub requeue_on_preemption: bool,
}

impl Controls {
    pub fn new(requeue_on_preemption: bool) -> Arc<Controls> {
        Arc::new(Controls {
            requeue_on_preemption,
            ..Controls::default()
        })
    }

    /// Routes SIGTERM/SIGINT, SIGUSR1 and SIGUSR2 to these flags.
    pub fn register_signals(&self) -> std::io::Result<()> {
        use signal_hook::consts::{SIGINT, SIGTERM, SIGUSR1, SIGUSR2};
        use signal_hook::flag::register;
        register(SIGTERM, self.shutdown.clone())?;
        register(SIGINT, self.shutdown.clone())?;
        register(SIGUSR1, self.abort_all.clone())?;
        register(SIGUSR2, self.drain.clone())?;
        Ok(())
    }

    /// A preemption notice arrived (from the watcher thread).
    pub fn preempt(&self, notice: String) {
        *self.preempted.lock().unwrap_or_else(|e| e.into_inner()) = Some(notice);
    }

    pub fn preemption(&self) -> Option<String> {
        self.preempted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// No new task may be pulled.
    pub fn stopping(&self) -> bool {
        self.shutdown.load(Ordering::SeqCst)
            || self.abort_all.load(Ordering::SeqCst)
            || self.drain.load(Ordering::SeqCst)
            || self.preemption().is_some()
    }
}

impl StopSource for Controls {
    fn poll(&self, _state: &RunState) -> Option<Interruption> {
        if self.shutdown.load(Ordering::SeqCst) {
            return Some(Interruption::Detach("SIGTERM or SIGINT".into()));
        }
        if self.abort_all.load(Ordering::SeqCst) {
            return Some(Interruption::Stop(StopRequest::Abort {
                by: AGENT_SHUTDOWN.into(),
            }));
        }
        let notice = self.preemption()?;
        Some(if self.requeue_on_preemption {
            Interruption::Stop(StopRequest::Requeue {
                why: format!("preempted: {notice}"),
            })
        } else {
            Interruption::Detach(format!("preemption notice: {notice}"))
        })
    }
}
