//! The embedded store (issue 18, the foundation): real SQLite files, real
//! connections, and for the races real processes (this test binary run
//! again as a worker).

use std::collections::BTreeMap;
use valet::store::sqlite::{SqliteStore, SCHEMA_VERSION};
use valet::store::{Change, Record, Rotation, Since, Store, StoreError};

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn token(jti: &str, expires_at: i64) -> Record {
    Record::Token {
        jti: jti.into(),
        expires_at,
    }
}

#[test]
fn revocations_come_back_in_order_and_survive_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state/valet.db");
    let n = now();
    let s = SqliteStore::open(&path).unwrap();
    let first = vec![
        token("a", n + 60),
        Record::Client {
            client_id: "billing".into(),
            before: n,
        },
    ];
    let p1 = s.append(&first).unwrap();
    let second = vec![
        Record::Family {
            family: "f1".into(),
            expires_at: n + 600,
        },
        // An earlier cut-off never moves a later one back.
        Record::Client {
            client_id: "billing".into(),
            before: n - 100,
        },
        Record::Subject {
            subject: "https://idp.example\nalice".into(),
            before: n,
        },
    ];
    let p2 = s.append(&second).unwrap();
    assert!(p2 > p1 && p1 >= 2, "{p1} {p2}");
    let Since::Changes(all) = s.since(0, 100).unwrap() else {
        panic!("trimmed")
    };
    let positions: Vec<i64> = all.iter().map(|(p, _)| *p).collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{positions:?}");
    assert_eq!(*positions.last().unwrap(), p2);
    let records: Vec<Change> = all.into_iter().map(|(_, r)| r).collect();
    let want: Vec<Change> = [first, second.clone()]
        .concat()
        .into_iter()
        .map(Change::Revoked)
        .collect();
    assert_eq!(records, want);
    // A follower resumes from where it stopped, and a limit is a limit.
    let Since::Changes(rest) = s.since(p1, 2).unwrap() else {
        panic!("trimmed")
    };
    assert_eq!(rest.len(), 2);
    assert_eq!(rest[0].1, Change::Revoked(second[0].clone()));
    // What the log held beyond: the follower's lag in entries.
    assert_eq!(s.head(), p2);
    assert!(
        rest.last().unwrap().0 < p2,
        "more than the limit was waiting"
    );
    drop(s);
    let s = SqliteStore::open(&path).unwrap();
    let snap = s.snapshot().unwrap();
    assert_eq!(snap.position, p2);
    let mut got: Vec<String> = snap.records.iter().map(|r| format!("{r:?}")).collect();
    got.sort();
    let mut want = vec![
        format!("{:?}", token("a", n + 60)),
        format!("{:?}", second[0]),
        format!(
            "{:?}",
            Record::Client {
                client_id: "billing".into(),
                before: n
            }
        ),
        format!("{:?}", second[2]),
    ];
    want.sort();
    assert_eq!(got, want);
    let Since::Changes(none) = s.since(p2, 100).unwrap() else {
        panic!("trimmed")
    };
    assert!(none.is_empty());
    // A position this store never gave out: another store's, or one
    // restored from an older backup. The follower must read it whole.
    assert!(matches!(s.since(p2 + 1, 100).unwrap(), Since::Trimmed));
}

#[test]
fn rotation_is_first_then_in_grace_then_reuse() {
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteStore::open(&dir.path().join("v.db")).unwrap();
    let exp = now() + 3600;
    let t0 = 1_000_000;
    assert_eq!(s.rotate("r1", exp, t0, 5000).unwrap(), Rotation::First);
    assert_eq!(
        s.rotate("r1", exp, t0 + 4999, 5000).unwrap(),
        Rotation::InGrace
    );
    // The second use did not move the first's time.
    assert_eq!(
        s.rotate("r1", exp, t0 + 5000, 5000).unwrap(),
        Rotation::Reuse
    );
    // A use recorded after the first but begun before it counts as no time.
    assert_eq!(
        s.rotate("r1", exp, t0 - 10, 5000).unwrap(),
        Rotation::InGrace
    );
    // With no grace, every other use is reuse, even at the same instant.
    assert_eq!(s.rotate("r2", exp, t0, 0).unwrap(), Rotation::First);
    assert_eq!(s.rotate("r2", exp, t0, 0).unwrap(), Rotation::Reuse);
    // A refresh token revoked outright.
    s.append(&[token("r3", exp)]).unwrap();
    assert_eq!(s.rotate("r3", exp, t0, 5000).unwrap(), Rotation::Revoked);
    // Rotations are not revocations: not in the log, not in the snapshot.
    let snap = s.snapshot().unwrap();
    assert_eq!(snap.records, [token("r3", exp)]);
    assert_eq!(s.counts().unwrap().rotations, 2);
}

#[test]
fn a_single_use_id_is_used_once_until_it_expires() {
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteStore::open(&dir.path().join("v.db")).unwrap();
    let n = now();
    assert!(s.use_once("assertion-1", n + 60).unwrap());
    assert!(!s.use_once("assertion-1", n + 60).unwrap());
    assert!(s.use_once("assertion-2", n + 60).unwrap());
    // Expired but not yet pruned: no longer counts as used.
    assert!(s.use_once("old", n - 1).unwrap());
    assert!(s.use_once("old", n + 60).unwrap());
    assert!(!s.use_once("old", n + 60).unwrap());
}

#[test]
fn pruning_removes_what_expired_in_bounded_batches_and_keeps_cut_offs() {
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteStore::open(&dir.path().join("v.db")).unwrap();
    let n = now();
    let mut records: Vec<Record> = (0..25)
        .map(|i| token(&format!("old-{i}"), n - 10))
        .collect();
    records.push(token("live", n + 600));
    records.push(Record::Client {
        client_id: "c".into(),
        before: n - 1_000_000,
    });
    s.append(&records).unwrap();
    for i in 0..5 {
        s.rotate(&format!("rot-{i}"), n - 1, 0, 0).unwrap();
    }
    // 10 a batch, per kind: the revocations and their log entries go in
    // three rounds, the rotations in one.
    assert_eq!(s.prune(n, 10).unwrap(), 10 + 10 + 5);
    assert_eq!(s.prune(n, 10).unwrap(), 10 + 10);
    assert_eq!(s.prune(n, 10).unwrap(), 5 + 5);
    assert_eq!(s.prune(n, 10).unwrap(), 0);
    let c = s.counts().unwrap();
    assert_eq!((c.tokens, c.clients, c.rotations, c.log), (1, 1, 0, 2));
}

#[test]
fn a_store_of_a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v.db");
    drop(SqliteStore::open(&path).unwrap());
    {
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute(
            "UPDATE meta SET value = ?1 WHERE key = 'schema'",
            [(SCHEMA_VERSION + 1).to_string()],
        )
        .unwrap();
    }
    match SqliteStore::open(&path).unwrap_err() {
        StoreError::Schema { found, .. } => assert_eq!(found, SCHEMA_VERSION + 1),
        e => panic!("{e}"),
    }
}

#[test]
fn another_connection_sees_a_write_as_soon_as_it_returns() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v.db");
    let writer = SqliteStore::open(&path).unwrap();
    let reader = SqliteStore::open(&path).unwrap();
    let mut at = 0;
    for i in 0..50 {
        let p = writer
            .append(&[token(&format!("t{i}"), now() + 60)])
            .unwrap();
        let Since::Changes(c) = reader.since(at, 100).unwrap() else {
            panic!("trimmed")
        };
        assert_eq!(c.len(), 1, "write {i} not visible");
        assert_eq!(c[0].0, p);
        at = p;
    }
}

/// The worker side of the race below: run as its own process.
const WORKER: &str = "VALET_STORE_RACE_WORKER";

#[test]
fn race_worker() {
    let Ok(spec) = std::env::var(WORKER) else {
        return; // only as a child of the race test
    };
    let (path, out, start) = {
        let mut p = spec.split('|');
        (
            p.next().unwrap().to_string(),
            p.next().unwrap().to_string(),
            p.next().unwrap().parse::<u64>().unwrap(),
        )
    };
    let s = SqliteStore::open(std::path::Path::new(&path)).unwrap();
    // Both processes start together, then go as fast as they can.
    while (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64)
        < start
    {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    let mut lines = String::new();
    for i in 0..150 {
        let r = s.rotate(&format!("r{i}"), now() + 60, 0, 0).unwrap();
        let u = s.use_once(&format!("a{i}"), now() + 60).unwrap();
        lines.push_str(&format!("r{i} {:?}\na{i} {u}\n", r));
    }
    std::fs::write(out, lines).unwrap();
}

/// Two processes rotate the same refresh tokens and use the same assertion
/// ids at the same time: each token has exactly one first use, and each id
/// exactly one use, across processes.
#[test]
fn two_processes_racing_get_exactly_one_first_use_each() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v.db");
    drop(SqliteStore::open(&path).unwrap());
    let start = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
        + 1500;
    let children: Vec<_> = (0..2)
        .map(|k| {
            let out = dir.path().join(format!("out-{k}"));
            let child = std::process::Command::new(std::env::current_exe().unwrap())
                .args(["--exact", "race_worker", "--nocapture", "--test-threads=1"])
                .env(
                    WORKER,
                    format!("{}|{}|{start}", path.display(), out.display()),
                )
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap();
            (child, out)
        })
        .collect();
    let mut outcomes: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (mut child, out) in children {
        assert!(child.wait().unwrap().success());
        for line in std::fs::read_to_string(out).unwrap().lines() {
            let (k, v) = line.split_once(' ').unwrap();
            outcomes.entry(k.into()).or_default().push(v.into());
        }
    }
    assert_eq!(outcomes.len(), 300);
    for (k, mut v) in outcomes {
        v.sort();
        if k.starts_with('r') {
            assert_eq!(v, ["First", "Reuse"], "{k}");
        } else {
            assert_eq!(v, ["false", "true"], "{k}");
        }
    }
}

/// The revocation file an older valet wrote, 100 000 entries: rotations
/// (with their first use), revoked ids, families and cut-offs are copied
/// into a new store exactly, once; a second start copies nothing; the file
/// is left byte for byte.
#[test]
fn a_revocation_file_of_100k_entries_is_imported_exactly_once() {
    use valet::revocation::{Revocations, Rotation as R};
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("revocations.yaml");
    let store = dir.path().join("valet-state.db");
    let far = 4_102_444_800i64;
    let mut yaml = String::from("tokens:\n");
    for i in 0..40_000 {
        yaml.push_str(&format!(
            "  - {{jti: rot-{i}, expires_at: {far}, rotated_at: 1000, rotated_at_ms: {}}}\n",
            1_000_000 + i
        ));
    }
    for i in 0..40_000 {
        yaml.push_str(&format!("  - {{jti: rev-{i}, expires_at: {far}}}\n"));
    }
    // Expired entries are not carried over.
    for i in 0..5_000 {
        yaml.push_str(&format!("  - {{jti: old-{i}, expires_at: 1000}}\n"));
    }
    yaml.push_str("families:\n");
    for i in 0..10_000 {
        yaml.push_str(&format!("  - {{family: fam-{i}, expires_at: {far}}}\n"));
    }
    yaml.push_str("clients:\n");
    for i in 0..3_000 {
        yaml.push_str(&format!(
            "  - {{client_id: c-{i}, revoked_before: {}}}\n",
            1000 + i
        ));
    }
    yaml.push_str("subjects:\n");
    for i in 0..2_000 {
        yaml.push_str(&format!("  - {{subject: s-{i}, revoked_before: 500}}\n"));
    }
    std::fs::write(&file, &yaml).unwrap();
    let r = Revocations::open(&file, &store).unwrap();
    let c = r.store().counts().unwrap();
    assert_eq!(
        (
            c.tokens,
            c.families,
            c.clients,
            c.subjects,
            c.rotations,
            c.single_use
        ),
        (40_000, 10_000, 3_000, 2_000, 40_000, 40_000)
    );
    assert_eq!(c.log, 55_000);
    // Exact: each kind answers as the file said.
    assert_eq!(
        r.rotate("rot-39999", far, 1_039_999 + 10, 100).unwrap(),
        R::InGrace
    );
    assert_eq!(r.rotate("rot-0", far, 2_000_000, 100).unwrap(), R::Reuse);
    assert_eq!(r.rotate("rev-123", far, 0, 0).unwrap(), R::Revoked);
    let set = r.current();
    assert!(set.check(Some("rev-39999"), "", "", 0, None).is_some());
    assert!(set.check(None, "", "", 0, Some("fam-9999")).is_some());
    assert!(set.check(None, "c-2999", "", 3998, None).is_some());
    assert!(set.check(None, "c-2999", "", 3999, None).is_none());
    assert!(set.check(None, "", "s-1", 499, None).is_some());
    assert!(set.check(Some("old-1"), "", "", 0, None).is_none());
    drop(set);
    drop(r);
    let r = Revocations::open(&file, &store).unwrap();
    assert_eq!(r.store().counts().unwrap().log, 55_000, "imported twice");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), yaml);
}

#[test]
fn pending_flows_are_bounded_in_total_and_expired_ones_make_room() {
    use valet::store::Flow;
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteStore::open(&dir.path().join("v.db")).unwrap();
    let now = now() * 1000;
    let flow = |subject: &str, expires_at_ms: i64| Flow {
        provider: "p".into(),
        subject: subject.into(),
        sealed: vec![1, 2, 3],
        expires_at_ms,
    };
    assert!(s
        .start_flow("a", &flow("alice", now + 60_000), 5, 3, now)
        .unwrap());
    assert!(s.start_flow("b", &flow("bob", now - 1), 5, 3, now).unwrap());
    assert!(s
        .start_flow("c", &flow("carol", now + 60_000), 5, 3, now)
        .unwrap());
    // Full: the expired one makes room, then nothing does.
    assert!(s
        .start_flow("d", &flow("dave", now + 60_000), 5, 3, now)
        .unwrap());
    assert!(!s
        .start_flow("e", &flow("erin", now + 60_000), 5, 3, now)
        .unwrap());
    assert!(
        s.take_flow("b", "p").unwrap().is_none(),
        "the expired flow was dropped"
    );
    assert!(
        s.take_flow("e", "p").unwrap().is_none(),
        "a refused flow was kept"
    );
    assert_eq!(s.counts().unwrap().oauth1_flows, 3);
    // Taking is by provider too, and once.
    assert!(s.take_flow("a", "q").unwrap().is_none());
    assert_eq!(
        s.take_flow("a", "p").unwrap().unwrap(),
        flow("alice", now + 60_000)
    );
    assert!(s.take_flow("a", "p").unwrap().is_none());
    // A start that ends the subject's own oldest flow makes its own room;
    // one refused ends nothing.
    let s2 = SqliteStore::open(&dir.path().join("w.db")).unwrap();
    assert!(s2
        .start_flow("a1", &flow("alice", now + 60_000), 1, 2, now)
        .unwrap());
    assert!(s2
        .start_flow("b1", &flow("bob", now + 60_000), 1, 2, now)
        .unwrap());
    assert!(s2
        .start_flow("a2", &flow("alice", now + 61_000), 1, 2, now)
        .unwrap());
    assert!(s2.take_flow("a1", "p").unwrap().is_none(), "ended by a2");
    assert!(!s2
        .start_flow("c1", &flow("carol", now + 60_000), 1, 2, now)
        .unwrap());
    assert_eq!(s2.counts().unwrap().oauth1_flows, 2);
    // Expired flows are pruned with the rest.
    assert!(s
        .start_flow("f", &flow("frank", now - 5_000), 5, 10, now)
        .unwrap());
    assert!(s.prune(now / 1000, 100).unwrap() >= 1);
    assert!(s.take_flow("f", "p").unwrap().is_none());
}

#[test]
fn client_records_are_created_once_and_replaced_only_as_last_read() {
    use valet::store::ClientWrite;
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteStore::open(&dir.path().join("v.db")).unwrap();
    assert!(s
        .put_client("billing", Some("{\"v\":1}"), ClientWrite::Create)
        .unwrap());
    assert!(!s
        .put_client("billing", Some("{\"v\":9}"), ClientWrite::Create)
        .unwrap());
    // Compare and set: a change made on a stale read is refused.
    let stale = ClientWrite::Replace {
        current: "{\"v\":0}",
    };
    assert!(!s.put_client("billing", Some("{\"v\":2}"), stale).unwrap());
    let fresh = ClientWrite::Replace {
        current: "{\"v\":1}",
    };
    assert!(s.put_client("billing", Some("{\"v\":2}"), fresh).unwrap());
    assert!(!s.put_client("nobody", Some("{}"), fresh).unwrap());
    assert_eq!(
        s.clients().unwrap(),
        [("billing".to_string(), "{\"v\":2}".to_string())]
    );
    // Every change is in the log for the other processes.
    let Since::Changes(log) = s.since(0, 100).unwrap() else {
        panic!("trimmed")
    };
    let ids: Vec<_> = log.iter().map(|(_, c)| c.clone()).collect();
    assert_eq!(
        ids,
        [
            Change::Client {
                id: "billing".into()
            },
            Change::Client {
                id: "billing".into()
            }
        ]
    );
    assert_eq!(s.counts().unwrap().managed_clients, 1);
}

/// A follower behind changes that were pruned unread (client and OAuth 1.0
/// token changes) is told to read the store whole; an entry of a kind only
/// a newer valet knows is passed over, never a wall.
#[test]
fn a_follower_behind_pruned_changes_reads_whole_and_unknown_kinds_are_passed() {
    use valet::store::ClientWrite;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v.db");
    let s = SqliteStore::open(&path).unwrap();
    assert!(s.put_client("a", Some("{}"), ClientWrite::Create).unwrap());
    let p = s.append(&[token("t", now() + 60)]).unwrap();
    assert!(matches!(s.since(0, 10).unwrap(), Since::Changes(c) if c.len() == 2));
    // Eight days on, the client change's entry is pruned.
    assert!(s.prune(now() + 8 * 86_400, 100).unwrap() >= 1);
    assert!(matches!(s.since(0, 10).unwrap(), Since::Trimmed));
    assert!(matches!(s.since(p, 10).unwrap(), Since::Changes(c) if c.is_empty()));
    // A newer valet's entry.
    let raw = rusqlite::Connection::open(&path).unwrap();
    raw.execute("INSERT INTO log (kind, key, value) VALUES (99, 'x', 0)", [])
        .unwrap();
    let Since::Changes(c) = s.since(p, 10).unwrap() else {
        panic!("trimmed")
    };
    assert_eq!(c.len(), 1);
    assert!(c[0].0 > p);
    assert_eq!(c[0].1, Change::Other);
}

/// The audit log: appended by compare-and-set, so writers on two
/// connections (two processes on one file) racing to append form one chain,
/// never a fork; nothing is pruned.
#[test]
fn audit_records_from_two_writers_form_one_chain() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v.db");
    let s = SqliteStore::open(&path).unwrap();
    assert!(s.audit_append(1, "one").unwrap());
    assert!(!s.audit_append(1, "again").unwrap(), "entry 1 is taken");
    assert!(!s.audit_append(3, "gap").unwrap(), "no gaps");
    assert_eq!(s.audit_last().unwrap(), Some((1, "one".to_string())));
    assert_eq!(s.audit(0, 10).unwrap(), [(1, "one".to_string())]);

    let fresh = dir.path().join("chain.db");
    std::thread::scope(|t| {
        for w in 0..2 {
            let fresh = &fresh;
            t.spawn(move || {
                let s = SqliteStore::open(fresh).unwrap();
                for i in 0..50 {
                    valet::app::audit::record(
                        &s,
                        &format!("writer-{w}"),
                        "test",
                        Some(&format!("c{i}")),
                        serde_json::Value::Null,
                    )
                    .unwrap();
                }
            });
        }
    });
    let s = SqliteStore::open(&fresh).unwrap();
    let v = valet::app::audit::verify(&s, &[]).unwrap();
    assert_eq!(v.records, 100);
    assert!(s.prune(i64::MAX, 1000).is_ok());
    assert_eq!(s.audit(0, 1000).unwrap().len(), 100, "never pruned");
    assert_eq!(s.audit(98, 1000).unwrap().len(), 2, "from a position");
}
