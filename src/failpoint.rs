//! Crash-injection points for the crash harness (`CLEARML_AGENT_FAILPOINTS`).
//!
//! A comma-separated list of specs:
//! - `after-append:N`: the N-th journal append made by this process;
//! - `after-seq:S`: the append that writes record S of any run;
//! - `NAME`: a named point inside an effect (`failpoint::hit("NAME")`).
//!
//! When a point triggers, the process prints `FAILPOINT <what>` on stderr and then stops
//! dead (it sleeps), so the harness can `kill -9` it exactly there. Unset, every check
//! is one relaxed load of an already-parsed empty list.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

pub const ENV: &str = "CLEARML_AGENT_FAILPOINTS";

#[derive(Debug, PartialEq, Eq)]
enum Spec {
    AfterAppend(u64),
    AfterSeq(u64),
    Named(String),
}

fn specs() -> &'static [Spec] {
    static SPECS: OnceLock<Vec<Spec>> = OnceLock::new();
    SPECS.get_or_init(|| std::env::var(ENV).map(|v| parse(&v)).unwrap_or_default())
}

fn parse(v: &str) -> Vec<Spec> {
    v.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| match s.split_once(':') {
            Some(("after-append", n)) => n.parse().map(Spec::AfterAppend),
            Some(("after-seq", n)) => n.parse().map(Spec::AfterSeq),
            _ => Ok(Spec::Named(s.to_string())),
        })
        .filter_map(Result::ok)
        .collect()
}

static APPENDS: AtomicU64 = AtomicU64::new(0);

/// Called by the journal after an append of records `first..=last` was flushed.
pub fn after_append(run: &str, first: u64, last: u64) {
    let specs = specs();
    if specs.is_empty() {
        return;
    }
    let n = APPENDS.fetch_add(1, Ordering::SeqCst) + 1;
    for spec in specs {
        let hit = match spec {
            Spec::AfterAppend(k) => *k == n,
            Spec::AfterSeq(s) => (first..=last).contains(s),
            Spec::Named(_) => false,
        };
        if hit {
            trigger(&format!("after-append run={run} seq={last} append={n}"));
        }
    }
}

/// A named point inside an effect.
pub fn hit(name: &str) {
    if specs()
        .iter()
        .any(|s| matches!(s, Spec::Named(n) if n == name))
    {
        trigger(name);
    }
}

fn trigger(what: &str) -> ! {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "FAILPOINT {what}");
    let _ = err.flush();
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_specs_and_ignores_garbage() {
        assert_eq!(
            parse("after-append:3, after-seq:7,mid-clone,after-seq:x"),
            vec![
                Spec::AfterAppend(3),
                Spec::AfterSeq(7),
                Spec::Named("mid-clone".into())
            ]
        );
    }
}
