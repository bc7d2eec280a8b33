//! `--uptime` / `--downtime` (and `agent.uptime` / `agent.downtime`): when a daemon pulls tasks.
//! Pure: the caller passes the local time ([`LocalTime::now`] reads the clock at the edge).
//! A schedule only gates pulling; running tasks are never stopped by it.
//!
//! Upstream (`helper/runtime_verification.py`, `Worker.should_be_currently_active`): entries
//! `"<hours> <days>"` such as `"17-20 TUE"`, `"9-12,14-18 MON-FRI"`, `"20 SAT,SUN"`; hours are
//! whole hours with the end excluded (`17-20` is 17:00 to 19:59), one hour `H` runs to midnight,
//! an end of `0` means midnight; days `SUN`..`SAT`, ranges and commas. Uptime: pull inside any
//! entry. Downtime: pull outside every entry. Before the schedule, a queue tag
//! `force_workers:off`/`on` and then the worker's runtime property `force=off/on` decide.
//!
//! Beyond upstream (where upstream skips the entry with a warning or raises): minutes
//! (`17:00-19:30`), several day tokens (`17:00-19:00 SAT SUN`, also what an unquoted
//! `--uptime 17-20 SAT SUN` gives), windows that start at `0` (upstream drops `0-8` because 0
//! is falsy), windows across midnight (`22-6 FRI` runs to Saturday 06:00) and day ranges across
//! the week's end (`FRI-MON`). Entries without days mean every day. A malformed entry, or both
//! uptime and downtime, is an error naming it (upstream ignores both schedules then).

use std::fmt;

const DAYS: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];
const DAY_MINUTES: u16 = 24 * 60;

/// A local wall-clock time: weekday (0 = Sunday, as `tm_wday`), hour, minute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalTime {
    pub weekday: u8,
    pub hour: u8,
    pub minute: u8,
}

impl LocalTime {
    pub fn new(weekday: u8, hour: u8, minute: u8) -> LocalTime {
        LocalTime {
            weekday: weekday % 7,
            hour: hour.min(23),
            minute: minute.min(59),
        }
    }

    /// The machine's local time now (the daemon's edge; everything else takes a value).
    pub fn now() -> LocalTime {
        let t = unsafe { libc::time(std::ptr::null_mut()) };
        let mut tm: libc::tm = unsafe { std::mem::zeroed() };
        unsafe { libc::localtime_r(&t, &mut tm) };
        LocalTime::new(tm.tm_wday as u8, tm.tm_hour as u8, tm.tm_min as u8)
    }

    fn minutes(&self) -> u16 {
        self.hour as u16 * 60 + self.minute as u16
    }
}

impl fmt::Display for LocalTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {:02}:{:02}",
            DAYS[self.weekday as usize % 7],
            self.hour,
            self.minute
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScheduleKind {
    Uptime,
    Downtime,
}

impl ScheduleKind {
    fn flag(self) -> &'static str {
        match self {
            ScheduleKind::Uptime => "--uptime",
            ScheduleKind::Downtime => "--downtime",
        }
    }
    fn word(self) -> &'static str {
        match self {
            ScheduleKind::Uptime => "uptime",
            ScheduleKind::Downtime => "downtime",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error("--uptime and --downtime (or agent.uptime and agent.downtime) exclude each other: give one of them")]
    Both,
    #[error("{flag}: {token:?} is not an hours range ({reason}); expected e.g. 17-20, 9-12,14-18, 17:30-19:00 or 20")]
    BadHours {
        flag: &'static str,
        token: String,
        reason: String,
    },
    #[error("{flag}: {token:?} is not a day or day range; expected e.g. SAT, MON-FRI or SAT,SUN")]
    BadDays { flag: &'static str, token: String },
    #[error(
        "{flag}: days {token:?} come before any hours; write hours first, e.g. \"17-20 {token}\""
    )]
    DaysWithoutHours { flag: &'static str, token: String },
}

/// A span of minutes in a day, end excluded; `start > end` runs across midnight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Span {
    start: u16,
    end: u16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Window {
    spans: Vec<Span>,
    days: [bool; 7],
}

impl Window {
    fn contains(&self, t: LocalTime) -> bool {
        let (d, m) = (t.weekday as usize % 7, t.minutes());
        let yesterday = (d + 6) % 7;
        self.spans.iter().any(|s| {
            if s.start < s.end {
                self.days[d] && s.start <= m && m < s.end
            } else {
                (self.days[d] && m >= s.start) || (self.days[yesterday] && m < s.end)
            }
        })
    }

    fn describe(&self) -> String {
        let hm = |m: u16| format!("{:02}:{:02}", m / 60, m % 60);
        let spans: Vec<String> = self
            .spans
            .iter()
            .map(|s| format!("{}-{}", hm(s.start), hm(s.end)))
            .collect();
        let days: Vec<&str> = (0..7).filter(|d| self.days[*d]).map(|d| DAYS[d]).collect();
        let days = if days.len() == 7 {
            "every day".to_string()
        } else {
            days.join(",")
        };
        format!("{} {days}", spans.join(","))
    }
}

/// A parsed `--uptime` or `--downtime`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    kind: ScheduleKind,
    windows: Vec<Window>,
}

fn parse_time(text: &str, end: bool) -> Result<u16, String> {
    let (h, m) = match text.split_once(':') {
        Some((h, m)) if m.len() == 2 => (h, m),
        Some(_) => return Err("minutes take two digits".into()),
        None => (text, "0"),
    };
    let h: u16 = h.parse().map_err(|_| format!("{h:?} is not an hour"))?;
    let m: u16 = m.parse().map_err(|_| format!("{m:?} is not a minute"))?;
    if m > 59 || h > 24 || (h == 24 && (m != 0 || !end)) {
        return Err(format!("{text} is not a time of day"));
    }
    let total = h * 60 + m;
    // An end of 0 is midnight, as upstream reads `20-0`.
    Ok(if end && total == 0 {
        DAY_MINUTES
    } else {
        total
    })
}

fn parse_hours(token: &str) -> Result<Vec<Span>, String> {
    token
        .split(',')
        .map(|part| {
            let (start, end) = match part.split_once('-') {
                Some((a, b)) => (parse_time(a, false)?, parse_time(b, true)?),
                None => (parse_time(part, false)?, DAY_MINUTES),
            };
            if start == end {
                return Err(format!("{part} is an empty window"));
            }
            Ok(Span { start, end })
        })
        .collect()
}

fn parse_days(token: &str) -> Option<[bool; 7]> {
    let day = |d: &str| DAYS.iter().position(|x| x.eq_ignore_ascii_case(d.trim()));
    let mut days = [false; 7];
    for part in token.split(',').filter(|p| !p.trim().is_empty()) {
        let (a, b) = match part.split_once('-') {
            Some((a, b)) => (day(a)?, day(b)?),
            None => (day(part)?, day(part)?),
        };
        let mut d = a;
        loop {
            days[d] = true;
            if d == b {
                break;
            }
            d = (d + 1) % 7;
        }
    }
    days.iter().any(|d| *d).then_some(days)
}

impl Schedule {
    /// Parses the entries of one flag (None when there are none). Entries may be split at
    /// spaces anyhow: an hours token starts a window, day tokens after it belong to it.
    pub fn parse(
        kind: ScheduleKind,
        entries: &[String],
    ) -> Result<Option<Schedule>, ScheduleError> {
        let flag = kind.flag();
        let mut windows: Vec<Window> = Vec::new();
        let mut days_given = Vec::new();
        for token in entries.iter().flat_map(|e| e.split_whitespace()) {
            if token.starts_with(|c: char| c.is_ascii_digit()) {
                let spans = parse_hours(token).map_err(|reason| ScheduleError::BadHours {
                    flag,
                    token: token.to_string(),
                    reason,
                })?;
                windows.push(Window {
                    spans,
                    days: [false; 7],
                });
                days_given.push(false);
            } else {
                let days = parse_days(token).ok_or_else(|| ScheduleError::BadDays {
                    flag,
                    token: token.to_string(),
                })?;
                let w = windows
                    .last_mut()
                    .ok_or_else(|| ScheduleError::DaysWithoutHours {
                        flag,
                        token: token.to_string(),
                    })?;
                for (d, on) in days.iter().enumerate() {
                    w.days[d] |= on;
                }
                if let Some(g) = days_given.last_mut() {
                    *g = true;
                }
            }
        }
        for (w, given) in windows.iter_mut().zip(days_given) {
            if !given {
                w.days = [true; 7];
            }
        }
        Ok((!windows.is_empty()).then_some(Schedule { kind, windows }))
    }

    /// Both flags (or config keys) at once: one may be given, not both.
    pub fn from_flags(
        uptime: &[String],
        downtime: &[String],
    ) -> Result<Option<Schedule>, ScheduleError> {
        let up = Schedule::parse(ScheduleKind::Uptime, uptime)?;
        let down = Schedule::parse(ScheduleKind::Downtime, downtime)?;
        match (up, down) {
            (Some(_), Some(_)) => Err(ScheduleError::Both),
            (up, down) => Ok(up.or(down)),
        }
    }

    pub fn kind(&self) -> ScheduleKind {
        self.kind
    }

    /// Whether `t` falls in one of the windows.
    pub fn in_window(&self, t: LocalTime) -> bool {
        self.windows.iter().any(|w| w.contains(t))
    }

    /// Whether the daemon pulls at `t`: inside an uptime window, or outside every downtime one.
    pub fn allows(&self, t: LocalTime) -> bool {
        self.in_window(t) == (self.kind == ScheduleKind::Uptime)
    }

    /// One line per window, for `daemon --status` and the start-up banner.
    pub fn describe(&self) -> Vec<String> {
        self.windows
            .iter()
            .map(|w| format!("{} {}", self.kind.word(), w.describe()))
            .collect()
    }
}

/// Queue tags and the worker runtime property that override any schedule.
pub const QUEUE_TAG_ON: &str = "force_workers:on";
pub const QUEUE_TAG_OFF: &str = "force_workers:off";
pub const FORCE_PROPERTY: &str = "force";

/// Whether to pull from one queue now, and why (for the log and the status report).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gate {
    pub pull: bool,
    pub why: String,
    /// A runtime property value that was ignored.
    pub warning: Option<String>,
}

/// Upstream's `should_be_currently_active`: the queue tag `force_workers:off` (then `:on`)
/// wins, then the worker runtime property `force` (`on`/`off`; anything else is ignored with a
/// warning), then the schedule; no schedule means pull.
pub fn gate(
    queue_tags: &[String],
    force_property: Option<&str>,
    schedule: Option<&Schedule>,
    now: LocalTime,
) -> Gate {
    let gate = |pull: bool, why: String| Gate {
        pull,
        why,
        warning: None,
    };
    if queue_tags.iter().any(|t| t == QUEUE_TAG_OFF) {
        return gate(false, format!("queue tagged {QUEUE_TAG_OFF}"));
    }
    if queue_tags.iter().any(|t| t == QUEUE_TAG_ON) {
        return gate(true, format!("queue tagged {QUEUE_TAG_ON}"));
    }
    let mut warning = None;
    if let Some(value) = force_property {
        match value.to_ascii_lowercase().as_str() {
            "off" => return gate(false, format!("worker runtime property {FORCE_PROPERTY}=off")),
            "on" => return gate(true, format!("worker runtime property {FORCE_PROPERTY}=on")),
            _ => {
                warning = Some(format!(
                    "invalid worker runtime property {FORCE_PROPERTY}={value:?} (expected on or off): ignored"
                ))
            }
        }
    }
    let mut g = match schedule {
        None => gate(true, "no uptime/downtime schedule".into()),
        Some(s) => {
            let inside = s.in_window(now);
            let pull = s.allows(now);
            let word = s.kind.word();
            let place = if inside { "inside" } else { "outside" };
            gate(
                pull,
                format!("{place} {word} at {now} ({})", s.describe().join("; ")),
            )
        }
    };
    g.warning = warning;
    g
}

#[cfg(test)]
mod tests {
    use super::*;

    const SUN: u8 = 0;
    const MON: u8 = 1;
    const TUE: u8 = 2;
    const FRI: u8 = 5;
    const SAT: u8 = 6;

    fn up(entries: &[&str]) -> Schedule {
        Schedule::parse(ScheduleKind::Uptime, &strings(entries))
            .unwrap()
            .unwrap()
    }

    fn strings(e: &[&str]) -> Vec<String> {
        e.iter().map(|s| s.to_string()).collect()
    }

    fn at(d: u8, h: u8, m: u8) -> LocalTime {
        LocalTime::new(d, h, m)
    }

    #[test]
    fn upstream_hours_are_whole_and_end_excluded() {
        let s = up(&["17-20 TUE"]);
        assert!(s.allows(at(TUE, 17, 0)));
        assert!(s.allows(at(TUE, 19, 59)));
        assert!(!s.allows(at(TUE, 20, 0)));
        assert!(!s.allows(at(TUE, 16, 59)));
        assert!(!s.allows(at(MON, 18, 0)));
        // One hour: to midnight. End 0: midnight.
        let s = up(&["20 SAT,SUN"]);
        assert!(s.allows(at(SUN, 23, 59)) && s.allows(at(SAT, 20, 0)));
        assert!(!s.allows(at(SAT, 19, 59)) && !s.allows(at(MON, 21, 0)));
        let s = up(&["22-0 FRI"]);
        assert!(s.allows(at(FRI, 23, 30)) && !s.allows(at(SAT, 0, 0)));
    }

    #[test]
    fn upstream_day_ranges_lists_and_several_entries() {
        let s = up(&["9-12,14-18 MON-FRI", "10-11 SAT"]);
        assert!(s.allows(at(MON, 9, 0)) && s.allows(at(FRI, 17, 59)));
        assert!(!s.allows(at(TUE, 12, 30)));
        assert!(s.allows(at(TUE, 14, 0)));
        assert!(s.allows(at(SAT, 10, 15)) && !s.allows(at(SAT, 11, 0)));
        assert!(!s.allows(at(SUN, 10, 0)));
        assert!(
            up(&["1-2 sun"]).allows(at(SUN, 1, 0)),
            "days are case-insensitive"
        );
    }

    #[test]
    fn downtime_pulls_outside_its_windows() {
        let s = Schedule::parse(ScheduleKind::Downtime, &strings(&["9-17 MON-FRI"]))
            .unwrap()
            .unwrap();
        assert!(!s.allows(at(MON, 9, 0)));
        assert!(s.allows(at(MON, 17, 0)));
        assert!(s.allows(at(SAT, 12, 0)));
    }

    #[test]
    fn minutes_several_day_tokens_and_unquoted_flags() {
        // The form, and the same split into argv words by an unquoted shell.
        for s in [
            up(&["17:00-19:00 SAT SUN"]),
            up(&["17:00-19:00", "SAT", "SUN"]),
        ] {
            assert!(s.allows(at(SAT, 17, 0)) && s.allows(at(SUN, 18, 59)));
            assert!(!s.allows(at(SUN, 19, 0)) && !s.allows(at(FRI, 18, 0)));
        }
        let s = up(&["17:30-19:15 MON", "8 TUE"]);
        assert!(!s.allows(at(MON, 17, 29)) && s.allows(at(MON, 17, 30)));
        assert!(!s.allows(at(MON, 19, 15)) && s.allows(at(TUE, 8, 0)));
        assert_eq!(
            s.describe(),
            vec!["uptime 17:30-19:15 MON", "uptime 08:00-24:00 TUE"]
        );
    }

    #[test]
    fn beyond_upstream_midnight_week_wrap_and_zero() {
        // Across midnight: the hours after 0:00 belong to the window of the day before.
        let s = up(&["22-6 FRI"]);
        assert!(s.allows(at(FRI, 22, 0)) && s.allows(at(SAT, 5, 59)));
        assert!(!s.allows(at(SAT, 6, 0)) && !s.allows(at(FRI, 5, 0)) && !s.allows(at(SAT, 23, 0)));
        // Day ranges across the week's end.
        let s = up(&["0-8 FRI-MON"]);
        for d in [FRI, SAT, SUN, MON] {
            assert!(s.allows(at(d, 0, 0)), "day {d}");
        }
        assert!(!s.allows(at(TUE, 0, 0)));
        // No days: every day.
        let s = up(&["9-10"]);
        assert!((0..7).all(|d| s.allows(at(d, 9, 30))));
        assert_eq!(s.describe(), vec!["uptime 09:00-10:00 every day"]);
    }

    #[test]
    fn bad_entries_are_named() {
        let err = |e: &[&str]| Schedule::parse(ScheduleKind::Uptime, &strings(e)).unwrap_err();
        assert!(
            matches!(err(&["17-20 XYZ"]), ScheduleError::BadDays { token, .. } if token == "XYZ")
        );
        assert!(
            matches!(err(&["25-26 MON"]), ScheduleError::BadHours { token, .. } if token == "25-26")
        );
        assert!(
            matches!(err(&["5-5 MON"]), ScheduleError::BadHours { reason, .. } if reason.contains("empty"))
        );
        assert!(matches!(
            err(&["17:3-18 MON"]),
            ScheduleError::BadHours { .. }
        ));
        assert!(matches!(
            err(&["17:60-18 MON"]),
            ScheduleError::BadHours { .. }
        ));
        assert!(matches!(
            err(&["MON 17-20"]),
            ScheduleError::DaysWithoutHours { .. }
        ));
        assert!(err(&["1x MON"]).to_string().starts_with("--uptime: \"1x\""));
        assert_eq!(Schedule::parse(ScheduleKind::Uptime, &[]).unwrap(), None);
        assert_eq!(
            Schedule::from_flags(&strings(&["1-2 MON"]), &strings(&["3-4 MON"])).unwrap_err(),
            ScheduleError::Both
        );
        assert_eq!(
            Schedule::from_flags(&[], &strings(&["3-4 MON"]))
                .unwrap()
                .unwrap()
                .kind(),
            ScheduleKind::Downtime
        );
    }

    #[test]
    fn force_tags_and_property_come_first() {
        let s = up(&["17-20 TUE"]);
        let outside = at(MON, 9, 0);
        let tags = |t: &[&str]| strings(t);
        let g = gate(&[], None, Some(&s), outside);
        assert!(
            !g.pull && g.why.starts_with("outside uptime at MON 09:00"),
            "{}",
            g.why
        );
        assert!(gate(&tags(&[QUEUE_TAG_ON]), None, Some(&s), outside).pull);
        assert!(
            !gate(
                &tags(&[QUEUE_TAG_OFF, QUEUE_TAG_ON]),
                Some("on"),
                None,
                outside
            )
            .pull
        );
        assert!(gate(&[], Some("ON"), Some(&s), outside).pull);
        assert!(!gate(&[], Some("off"), None, outside).pull);
        let g = gate(&[], Some("maybe"), Some(&s), at(TUE, 18, 0));
        assert!(g.pull && g.warning.unwrap().contains("maybe"));
        assert!(gate(&[], None, None, outside).pull);
    }
}
