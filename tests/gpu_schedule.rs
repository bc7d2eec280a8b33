//! `--uptime`/`--downtime` against upstream itself: the pinned Python clearml-agent's
//! `check_runtime` (its clock replaced by each hour of the week) and our `Schedule::allows` agree
//! on every upstream-valid form, at every hour and half hour of the week.

mod common;

use clearml_agent::agent::schedule::{LocalTime, Schedule, ScheduleKind};
use std::process::Command;

/// Upstream-valid entries (forms upstream skips or mis-reads, like `0-8`, are ours alone).
const CASES: &[(&str, &[&str])] = &[
    ("up", &["17-20 TUE"]),
    ("up", &["9-12,14-18 MON-FRI", "10-11 SAT"]),
    ("up", &["20 SAT,SUN"]),
    ("up", &["22-0 FRI"]),
    ("up", &["1-5 SUN", "6-7 wed"]),
    ("down", &["9-17 MON-FRI"]),
    ("down", &["12-13 MON,WED,FRI", "18 THU-SAT"]),
];

const SCRIPT: &str = r#"
import json, sys
from clearml_agent.helper import runtime_verification as rv
DAYS = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"]
class Clock:
    def __init__(self, day, hour): self.day, self.hour = day, hour
    def strftime(self, fmt): return DAYS[self.day]
out = []
for kind, entries in json.loads(sys.argv[1]):
    row = []
    for day in range(7):
        for hour in range(24):
            t = Clock(day, hour)
            rv.datetime = type("D", (), {"now": staticmethod(lambda t=t: t)})
            row.append(rv.check_runtime(entries, is_uptime=(kind == "up")))
    out.append(row)
print(json.dumps(out))
"#;

#[test]
fn schedules_agree_with_upstream_check_runtime() {
    let venv = common::python_venv();
    let cases: Vec<(&str, Vec<&str>)> = CASES.iter().map(|(k, e)| (*k, e.to_vec())).collect();
    let out = Command::new(venv.join("bin/python"))
        .args(["-c", SCRIPT, &serde_json::to_string(&cases).unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let upstream: Vec<Vec<bool>> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(upstream.len(), CASES.len());
    let mut pulls = 0;
    for ((kind, entries), expected) in CASES.iter().zip(&upstream) {
        let kind = if *kind == "up" {
            ScheduleKind::Uptime
        } else {
            ScheduleKind::Downtime
        };
        let entries: Vec<String> = entries.iter().map(|s| s.to_string()).collect();
        let schedule = Schedule::parse(kind, &entries).unwrap().unwrap();
        for day in 0..7u8 {
            for hour in 0..24u8 {
                let want = expected[day as usize * 24 + hour as usize];
                pulls += want as usize;
                for minute in [0, 30, 59] {
                    let t = LocalTime::new(day, hour, minute);
                    assert_eq!(
                        schedule.allows(t),
                        want,
                        "{entries:?} ({kind:?}) at {t}: upstream says {want}"
                    );
                }
            }
        }
    }
    // Both answers occur, so the comparison is not vacuous.
    assert!(pulls > 0 && pulls < CASES.len() * 168, "{pulls}");
}
