//! Corrupt records: `journal verify` names each problem precisely, the runner refuses the
//! corrupt run and says why, and the other runs keep working.

mod common;

use clearml_agent::journal::envelope::{encode_raw, FLAG_MAY_IGNORE};
use clearml_agent::journal::{EpochInfo, Journal, JournalConfig};
use common::*;

/// Leave `task` as an unfinished run: killed after record 7 (written with the digest at 8).
fn unfinished(dirs: &Dirs, task: &str) {
    assert!(run_until_failpoint(
        dirs.simulate_cmd(&["--task-id", task, "--no-resume"]),
        "after-seq:7"
    ));
}

#[test]
fn verify_reports_each_corruption_and_the_runner_refuses_only_those_runs() {
    let dirs = Dirs::new();
    for t in ["flip", "trunc", "unknown", "ignorable", "healthy"] {
        unfinished(&dirs, t);
    }
    {
        let j = Journal::open_writer(
            &dirs.journal,
            EpochInfo::default(),
            JournalConfig::default(),
        )
        .unwrap();
        // A flipped byte inside record 5's payload.
        let mut rec = j.raw_records("flip.1").unwrap()[4].1.clone();
        let n = rec.len();
        rec[n - 2] ^= 0x40;
        j.put_raw_record("flip.1", 5, &rec).unwrap();
        // The last record cut short, as a torn write would leave it.
        let (last_seq, last) = j.raw_records("trunc.1").unwrap().pop().unwrap();
        j.put_raw_record("trunc.1", last_seq, &last[..last.len() - 5])
            .unwrap();
        // A record of a type this binary does not know, without and with may-ignore.
        let payload = bincode::serialize(&(1u64, "from the future")).unwrap();
        j.put_raw_record("unknown.1", 9, &encode_raw(999, 0, &payload))
            .unwrap();
        j.put_raw_record(
            "ignorable.1",
            9,
            &encode_raw(998, FLAG_MAY_IGNORE, &payload),
        )
        .unwrap();
    }

    let out = dirs.journal(&["verify"]);
    assert_eq!(out.status.code(), Some(1), "verify exits 1 on problems");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("run flip.1 record 5: CRC32C mismatch: expected "),
        "{text}"
    );
    assert!(
        text.contains("run trunc.1 record 8: truncated: envelope says "),
        "{text}"
    );
    assert!(
        text.contains("run unknown.1 record 9: unknown event type 999 without the may-ignore flag"),
        "{text}"
    );
    assert!(text.contains("run ignorable.1 ok"), "{text}");
    assert!(text.contains("run healthy.1 ok"), "{text}");
    assert!(text.contains("5 run(s) checked, 3 with problems"), "{text}");

    let report = json(&dirs.journal(&["verify", "--json"]));
    assert_eq!(report["ok"], false);
    let problems: Vec<(String, u64)> = report["runs"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|r| {
            let run = r["run"].as_str().unwrap().to_string();
            r["problems"]
                .as_array()
                .unwrap()
                .iter()
                .map(move |p| (run.clone(), p["seq"].as_u64().unwrap()))
        })
        .collect();
    assert_eq!(
        problems,
        vec![
            ("flip.1".into(), 5),
            ("trunc.1".into(), 8),
            ("unknown.1".into(), 9)
        ]
    );

    // Restart: the corrupt runs are refused with the reason, the others complete.
    let before = dirs.effect_log();
    let out = dirs.simulate_cmd(&[]).output().unwrap();
    assert_eq!(out.status.code(), Some(3), "refused runs give exit code 3");
    let stderr = String::from_utf8_lossy(&out.stderr);
    for (run, seq) in [("flip.1", 5), ("trunc.1", 8), ("unknown.1", 9)] {
        assert!(
            stderr.contains(&format!("run {run} record {seq}:"))
                && stderr.contains("refusing to act on this run"),
            "{stderr}"
        );
    }
    let after = dirs.effect_log();
    let new: Vec<&String> = after
        .keys()
        .filter(|l| after[*l] > before.get(*l).copied().unwrap_or(0))
        .collect();
    assert!(
        new.iter()
            .all(|l| l.contains("healthy:") || l.contains("ignorable:")),
        "{new:?}"
    );
    assert!(
        new.iter().any(|l| *l == "perform healthy:1:Reported"),
        "{new:?}"
    );
    assert!(
        new.iter().any(|l| *l == "perform ignorable:1:Reported"),
        "{new:?}"
    );

    let runs = json(&dirs.journal(&["inspect", "--json"]));
    let state = |id: &str| {
        runs.as_array()
            .unwrap()
            .iter()
            .find(|r| r["run_id"] == id)
            .unwrap()["state"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(state("healthy.1"), "completed");
    assert_eq!(state("ignorable.1"), "completed");
    assert!(state("flip.1").starts_with("corrupt: record 5: CRC32C mismatch"));
    assert!(state("trunc.1").starts_with("corrupt: record 8: truncated"));
}

#[test]
fn a_gap_and_a_wrong_digest_are_reported() {
    let dirs = Dirs::new();
    assert!(!run_until_failpoint(
        dirs.simulate_cmd(&["--task-id", "g"]),
        ""
    ));
    assert!(!run_until_failpoint(
        dirs.simulate_cmd(&["--task-id", "d"]),
        ""
    ));
    {
        let j = Journal::open_writer(
            &dirs.journal,
            EpochInfo::default(),
            JournalConfig::default(),
        )
        .unwrap();
        // Move record 4 to 40: a gap after record 3.
        let rec = j.raw_records("g.1").unwrap()[3].1.clone();
        j.put_raw_record("g.1", 40, &rec).unwrap();
        j.delete_raw_record("g.1", 4).unwrap();
        // Replace a stored digest with a valid record holding another digest.
        let digest_seq = j
            .raw_records("d.1")
            .unwrap()
            .iter()
            .find(|(seq, b)| {
                clearml_agent::journal::envelope::decode(*seq, b)
                    .unwrap()
                    .body
                    .is_some_and(|b| b.name() == "StateDigest")
            })
            .unwrap()
            .0;
        let forged = clearml_agent::journal::envelope::encode(
            &clearml_agent::journal::RecordBody::StateDigest {
                digest: "0000000000000000".into(),
            },
            0,
        );
        j.put_raw_record("d.1", digest_seq, &forged).unwrap();
    }
    let out = dirs.journal(&["verify", "g.1"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("run g.1 record 5: sequence gap: expected sequence 4, got 5"),
        "{text}"
    );
    let out = dirs.journal(&["verify", "d.1"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("state digest mismatch: expected 0000000000000000, got "),
        "{text}"
    );
}

/// Side entries (progress, run metadata, epochs) are checksummed too: a flipped byte is reported
/// by `journal verify` with the entry named, and reading it is an error, never a silent zero
/// (a zero progress would ship a run's whole output again; a bad run entry is not "no run").
#[test]
fn a_corrupt_side_entry_is_reported_precisely_and_never_read_as_a_default() {
    let dirs = Dirs::new();
    for t in ["p", "m"] {
        assert!(!run_until_failpoint(
            dirs.simulate_cmd(&["--task-id", t]),
            ""
        ));
    }
    {
        let j = Journal::open_writer(
            &dirs.journal,
            EpochInfo::default(),
            JournalConfig::default(),
        )
        .unwrap();
        j.set_progress(
            "p.1",
            &clearml_agent::journal::Progress {
                log_offset_shipped: 4096,
                last_heartbeat_ms: 1,
            },
        )
        .unwrap();
        let flip = |tree: &str, key: &[u8]| {
            let mut v = j.raw_side(tree, key).unwrap().expect("entry exists");
            let n = v.len();
            v[n - 1] ^= 0x10;
            j.put_raw_side(tree, key, &v).unwrap();
        };
        flip("progress", b"p.1");
        flip("runs", b"m.1");
        assert!(matches!(
            j.progress("p.1"),
            Err(clearml_agent::journal::JournalError::CorruptSide {
                tree: "progress",
                ..
            })
        ));
        let err = j.load_run("m.1").unwrap_err().to_string();
        assert!(err.contains("run metadata entry: CRC32C mismatch"), "{err}");
    }
    let out = dirs.journal(&["verify"]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("journal entry progress/p.1: CRC32C mismatch"),
        "{text}"
    );
    assert!(
        text.contains("journal entry runs/m.1: CRC32C mismatch"),
        "{text}"
    );
    let report = json(&dirs.journal(&["verify", "--json"]));
    assert_eq!(report["ok"], false);
    assert_eq!(report["side"].as_array().unwrap().len(), 2);
}
