//! The task status machine of the real server (`apiserver/bll/task/utils.py`), as a pure table.

/// Every status a task can have.
pub const STATUSES: [&str; 10] = [
    "created",
    "queued",
    "in_progress",
    "stopped",
    "published",
    "publishing",
    "closed",
    "failed",
    "completed",
    "unknown",
];

/// The statuses `from` may move to without `force`.
pub fn allowed_targets(from: &str) -> &'static [&'static str] {
    match from {
        "created" => &["queued", "in_progress"],
        "queued" => &["created", "in_progress", "stopped"],
        "in_progress" => &["stopped", "failed", "created", "completed"],
        "stopped" => &[
            "closed",
            "created",
            "failed",
            "queued",
            "in_progress",
            "published",
            "publishing",
            "completed",
        ],
        "closed" => &["created", "failed", "published", "publishing", "stopped"],
        "failed" => &["created", "stopped", "published", "queued"],
        "publishing" => &["published"],
        "completed" => &["published", "in_progress", "created"],
        _ => &[],
    }
}

/// Whether `from -> to` is allowed. A same-status call always is; `force` skips the table.
pub fn transition_allowed(from: &str, to: &str, force: bool) -> bool {
    force || from == to || allowed_targets(from).contains(&to)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_matches_the_reference() {
        assert!(transition_allowed("created", "queued", false));
        assert!(!transition_allowed("completed", "queued", false));
        assert!(transition_allowed("completed", "queued", true));
        assert!(transition_allowed("in_progress", "in_progress", false));
        assert!(!transition_allowed("published", "created", false));
        let allowed: usize = STATUSES.iter().map(|s| allowed_targets(s).len()).sum();
        assert_eq!(allowed, 2 + 3 + 4 + 8 + 5 + 4 + 1 + 3);
    }
}
