use std::collections::HashMap;
use std::time::Instant;

use proptest::prelude::*;

use super::search::splitmix64;
use super::*;
use crate::history::{Event, EventType, Func, Value, parse_history};

fn op(process: u64, kind: OpKind, outcome: Outcome, invoke: u64, complete: u64) -> Op {
    Op {
        process,
        key: "k".to_owned(),
        kind,
        outcome,
        invoke,
        complete: Some(complete),
    }
}

fn w(process: u64, v: i64, invoke: u64, complete: u64) -> Op {
    op(process, OpKind::Write(v), Outcome::Ok, invoke, complete)
}

fn r(process: u64, v: Option<i64>, invoke: u64, complete: u64) -> Op {
    op(process, OpKind::Read(v), Outcome::Ok, invoke, complete)
}

fn cas(process: u64, expected: i64, new: i64, invoke: u64, complete: u64) -> Op {
    let kind = OpKind::Cas { expected, new };
    op(process, kind, Outcome::Ok, invoke, complete)
}

fn with(mut o: Op, outcome: Outcome) -> Op {
    o.outcome = outcome;
    o
}

fn on(key: &str, mut o: Op) -> Op {
    key.clone_into(&mut o.key);
    o
}

fn check(ops: &[Op]) -> Report {
    check_history(ops, &CheckOptions::default())
}

fn violation(report: &Report, key: &str) -> Violation {
    match &report.key(key).unwrap().verdict {
        Verdict::Violation(v) => (**v).clone(),
        other => panic!("expected a violation on {key:?}, got {other:?}\n{report}"),
    }
}

#[track_caller]
fn assert_linearizable(ops: &[Op]) {
    let report = check(ops);
    assert!(report.is_ok(), "{report}");
}

#[test]
fn stale_read_after_a_completed_write_is_a_violation() {
    // Reads an absent key after the write of 1 completed.
    let report = check(&[w(1, 1, 0, 10), r(2, None, 20, 30)]);
    assert!(!report.is_ok());
    let v = violation(&report, "k");
    // The write cannot go anywhere: the read, invoked after it completed, still needs the
    // key to be absent.
    assert_eq!(v.stuck.op.kind, OpKind::Write(1));
    assert_eq!(v.stuck.needed_by.unwrap().kind, OpKind::Read(None));
    assert_eq!(v.state, None);

    // Reads the value before the last completed write.
    let report = check(&[w(1, 1, 0, 10), w(1, 2, 20, 30), r(2, Some(1), 40, 50)]);
    let v = violation(&report, "k");
    assert_eq!(v.stuck.op.kind, OpKind::Write(2));
    assert_eq!(v.stuck.needed_by.unwrap().kind, OpKind::Read(Some(1)));
}

#[test]
fn lost_acknowledged_write_is_a_violation() {
    // Write 2 is acknowledged, nothing else writes, yet later reads still see 1.
    let report = check(&[
        w(1, 1, 0, 10),
        r(2, Some(1), 11, 12),
        w(1, 2, 20, 30),
        r(2, Some(1), 40, 50),
        r(3, Some(1), 60, 70),
    ]);
    let v = violation(&report, "k");
    assert_eq!(v.stuck.op.kind, OpKind::Write(2), "{report}");
    let needer = v.stuck.needed_by.unwrap();
    assert_eq!((needer.kind, needer.invoke), (OpKind::Read(Some(1)), 40));
    assert_eq!(v.linearized.len(), 2, "w1 and r1 linearize; w2 cannot");
}

#[test]
fn cas_against_a_value_that_was_never_there_is_a_violation() {
    let report = check(&[w(1, 1, 0, 10), cas(2, 5, 6, 20, 30)]);
    let v = violation(&report, "k");
    let want = OpKind::Cas {
        expected: 5,
        new: 6,
    };
    assert_eq!(v.stuck.op.kind, want);
    assert!(v.value_never_written, "found without a search");
    let text = report.to_string();
    assert!(
        text.contains(
            "key \"k\": NOT LINEARIZABLE. This operation needs a value that nothing on the key \
             writes before it completed:\n    process 2 cas 5 -> 6 ok"
        ),
        "{text}"
    );

    // 5 is written, but only after the cas completed.
    let report = check(&[w(1, 1, 0, 10), cas(2, 5, 6, 20, 30), w(3, 5, 40, 50)]);
    assert!(violation(&report, "k").value_never_written);
    // Written concurrently, it is fine.
    assert_linearizable(&[w(1, 1, 0, 10), cas(2, 5, 6, 20, 30), w(3, 5, 30, 50)]);

    // Absent never equals an integer, not even 0. (The read shows that the write of 0
    // could not have come before the cas.)
    let report = check(&[cas(1, 0, 1, 0, 10), w(2, 0, 0, 30), r(3, None, 15, 20)]);
    let v = violation(&report, "k");
    assert!(!v.value_never_written);
    assert_eq!(
        (v.state, v.stuck.op.kind),
        (
            None,
            OpKind::Cas {
                expected: 0,
                new: 1
            }
        )
    );
}

#[test]
fn concurrent_overlaps_that_are_linearizable_pass() {
    // A read during a write may see either value.
    assert_linearizable(&[
        w(1, 1, 0, 100),
        r(2, Some(1), 10, 20),
        r(3, Some(1), 30, 40),
    ]);
    assert_linearizable(&[w(1, 1, 0, 100), r(2, None, 10, 20), r(3, Some(1), 30, 40)]);
    // Writes 1 and 2 overlap; reading 2 then 1 forces the order w2, w1 inside both windows.
    assert_linearizable(&[
        w(1, 1, 0, 100),
        w(2, 2, 50, 150),
        r(3, Some(2), 60, 70),
        r(3, Some(1), 80, 90),
        r(4, Some(1), 160, 170),
    ]);
    // Two cas racing from the same value: one wins, the other fails (and is dropped).
    assert_linearizable(&[
        w(1, 1, 0, 10),
        cas(2, 1, 2, 20, 40),
        with(cas(3, 1, 3, 20, 40), Outcome::Fail),
        r(4, Some(2), 50, 60),
    ]);
    // Operations that only touch at an instant count as concurrent.
    assert_linearizable(&[w(1, 1, 0, 10), r(2, None, 10, 20)]);
}

#[test]
fn reads_cannot_go_back_in_time_even_inside_a_write() {
    // Once a read saw 1, a later read cannot see the absent value again.
    let report = check(&[w(1, 1, 0, 100), r(2, Some(1), 10, 20), r(3, None, 30, 40)]);
    let v = violation(&report, "k");
    assert_eq!(v.stuck.op.kind, OpKind::Read(Some(1)));
    // The write that read 1 needs could not go first, because of the later read.
    assert_eq!(v.pending.len(), 1);
    assert_eq!(v.pending[0].op.kind, OpKind::Write(1));
    let needer = v.pending[0].needed_by.as_ref().unwrap();
    assert_eq!(needer.kind, OpKind::Read(None));
}

#[test]
fn unknown_writes_may_apply_late_or_never() {
    // The client gave up at 5, but the write landed between 20 and 30.
    assert_linearizable(&[
        with(w(1, 1, 0, 5), Outcome::Info),
        r(2, None, 10, 20),
        r(2, Some(1), 30, 40),
        r(3, Some(1), 50, 60),
    ]);
    // ... or never.
    assert_linearizable(&[with(w(1, 1, 0, 5), Outcome::Info), r(2, None, 100, 200)]);
    // A never-completed cas applies late too.
    let mut pending = cas(1, 1, 2, 20, 0);
    pending.outcome = Outcome::Info;
    pending.complete = None;
    assert_linearizable(&[
        w(1, 1, 0, 10),
        pending,
        r(2, Some(1), 30, 40),
        r(2, Some(2), 50, 60),
    ]);
    // But once it has been seen it cannot be unseen.
    let report = check(&[
        with(w(1, 1, 0, 5), Outcome::Info),
        r(2, Some(1), 10, 20),
        r(2, None, 30, 40),
    ]);
    assert!(!report.is_ok());
}

#[test]
fn failed_operations_did_not_happen() {
    let report = check(&[with(w(1, 5, 0, 10), Outcome::Fail), r(2, Some(5), 20, 30)]);
    assert!(!report.is_ok(), "a failed write must not be visible");
    assert_linearizable(&[with(w(1, 5, 0, 10), Outcome::Fail), r(2, None, 20, 30)]);
    // Reads without a result constrain nothing.
    assert_linearizable(&[
        w(1, 1, 0, 10),
        with(r(2, Some(7), 20, 30), Outcome::Info),
        with(r(3, Some(8), 20, 30), Outcome::Fail),
    ]);
}

#[test]
fn keys_are_checked_independently() {
    // As one register this would be a stale read; as two it is fine.
    assert_linearizable(&[on("a", w(1, 1, 0, 10)), on("b", r(2, None, 20, 30))]);
    // A violation on one key does not taint another.
    let report = check(&[
        on("a", w(1, 1, 0, 10)),
        on("a", r(2, None, 20, 30)),
        on("b", w(1, 1, 40, 50)),
        on("b", r(2, Some(1), 60, 70)),
    ]);
    assert!(!report.is_ok());
    let failed: Vec<&str> = report.failures().map(|k| k.key.as_str()).collect();
    assert_eq!(failed, ["a"]);
    assert!(matches!(
        report.key("b").unwrap().verdict,
        Verdict::Linearizable
    ));
    assert_eq!(report.ops_checked(), 4);
}

#[test]
fn unobserved_unknown_writes_are_dropped_before_the_search() {
    let report = check(&[
        w(1, 1, 0, 10),
        with(w(2, 2, 0, 5), Outcome::Info),
        with(cas(3, 1, 3, 0, 5), Outcome::Info),
        with(w(4, 4, 0, 5), Outcome::Info),
        r(5, Some(4), 20, 30),
    ]);
    assert!(report.is_ok(), "{report}");
    let k = report.key("k").unwrap();
    // The write of 2 and the cas to 3 were never seen; the write of 4 was.
    assert_eq!((k.ops_checked, k.ops_dropped), (3, 2));
}

#[test]
fn violation_report_names_the_key_and_the_stuck_operation() {
    let ops = [
        on("users/1", w(7, 1, 1_000_000_000, 1_000_500_000)),
        on("users/1", r(8, None, 2_000_000_000, 2_000_001_000)),
    ];
    let text = check(&ops).to_string();
    for want in [
        "linearizability: FAILED (1 keys, 2 ops checked, 0 dropped; 1 not linearizable, 0 unknown)",
        "key \"users/1\": NOT LINEARIZABLE. Longest linearizable prefix: 0 of 2 ops, leaving \
         the value absent.",
        "could not be linearized:\n    process 7 write 1 ok [invoked 1.000000s, completed \
         1.000500s]\n        (would overwrite the value still needed by: process 8 read -> \
         null ok [invoked 2.000000s, completed 2.000001s])",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
    let ok = check(&ops[..1]).to_string();
    assert_eq!(
        ok,
        "linearizability: OK (1 keys, 1 ops checked, 0 dropped; 0 not linearizable, 0 unknown)\n"
    );
}

#[test]
fn exhausted_budget_is_unknown_and_not_ok() {
    // Twelve concurrent writes of 0 or 1, then a read of each value in turn: no order of
    // the writes ends in both, which takes the search more than ten steps to find out.
    let mut ops: Vec<Op> = (0..12).map(|p| w(p, p as i64 % 2, 0, 100)).collect();
    ops.push(r(98, Some(0), 200, 300));
    ops.push(r(99, Some(1), 400, 500));
    let tight = CheckOptions {
        max_steps_per_key: 10,
        ..CheckOptions::default()
    };
    let report = check_history(&ops, &tight);
    assert!(!report.is_ok());
    let k = report.key("k").unwrap();
    assert!(
        matches!(
            k.verdict,
            Verdict::Unknown(GaveUp {
                budget: Budget::Steps(10),
                ..
            })
        ),
        "{report}"
    );
    assert!(
        report
            .to_string()
            .contains("UNKNOWN (search budget exceeded")
    );

    let tiny_cache = CheckOptions {
        max_cache_bytes_per_key: 256,
        ..CheckOptions::default()
    };
    let report = check_history(&ops, &tiny_cache);
    assert!(matches!(
        report.key("k").unwrap().verdict,
        Verdict::Unknown(GaveUp {
            budget: Budget::CacheBytes(256),
            ..
        })
    ));
    // With the default budget the memoised search settles it.
    let report = check(&ops);
    violation(&report, "k");
    assert!(report.keys[0].steps > 10);
}

#[test]
fn check_file_reads_and_checks() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("h.jsonl");
    std::fs::write(
        &path,
        "{\"process\":1,\"type\":\"invoke\",\"f\":\"write\",\"key\":\"a\",\"value\":1,\"time\":1}\n\
         {\"process\":1,\"type\":\"ok\",\"f\":\"write\",\"key\":\"a\",\"value\":1,\"time\":2}\n\
         {\"process\":1,\"type\":\"invoke\",\"f\":\"read\",\"key\":\"a\",\"value\":null,\"time\":3}\n\
         {\"process\":1,\"type\":\"ok\",\"f\":\"read\",\"key\":\"a\",\"value\":null,\"time\":4}\n",
    )
    .unwrap();
    assert!(!check_file(&path).unwrap().is_ok());
    let err = check_file(dir.path().join("missing"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("missing"), "{err}");
}

// ---- Generated histories -------------------------------------------------------------

/// One operation of a generated run; see [`simulate`].
#[derive(Debug, Clone, Copy)]
struct Choice {
    key: u8,
    f: u8,
    a: i64,
    b: i64,
    process: usize,
    /// Idle time of the process before it invokes this operation.
    think: u64,
    latency: u64,
    /// Where in its window the operation takes effect, in percent.
    at: u8,
    /// 0: failed (no effect), 1: unknown but applied, 2: unknown and not applied, else ok.
    fate: u8,
}

/// Lays the operations out in time the way clients would (each process runs one at a
/// time), picks for each an instant inside its window, then executes them in the order of
/// those instants against a model register per key to learn what reads returned and
/// which cas operations succeeded. By construction the result is linearizable, with as
/// much real concurrency as the windows give it.
fn simulate(choices: &[Choice], processes: usize) -> Vec<Op> {
    // (process id, free from)
    let mut procs: Vec<(u64, u64)> = (0..processes as u64).map(|p| (p, 0)).collect();
    let mut next_id = processes as u64;
    let mut ops = Vec::with_capacity(choices.len());
    let mut points = Vec::with_capacity(choices.len());
    for (i, c) in choices.iter().enumerate() {
        let slot = c.process % processes;
        let (id, free) = procs[slot];
        let invoke = free + c.think;
        let complete = invoke + c.latency;
        points.push((invoke + c.latency * u64::from(c.at) / 100, i));
        let kind = match c.f {
            0 => OpKind::Read(None),
            1 => OpKind::Write(c.a),
            _ => OpKind::Cas {
                expected: c.a,
                new: c.b,
            },
        };
        let outcome = match c.fate {
            0 => Outcome::Fail,
            1 | 2 => Outcome::Info,
            _ => Outcome::Ok,
        };
        ops.push(Op {
            process: id,
            key: format!("k{}", c.key),
            kind,
            outcome,
            invoke,
            complete: Some(complete),
        });
        procs[slot].1 = complete + 1;
        if outcome == Outcome::Info {
            // Jepsen retires a process whose operation is in doubt.
            procs[slot].0 = next_id;
            next_id += 1;
        }
    }
    points.sort_unstable();
    let mut model: HashMap<u8, i64> = HashMap::new();
    for (_, i) in points {
        let (c, op) = (&choices[i], &mut ops[i]);
        let current = model.get(&c.key).copied();
        let applies = matches!(c.fate, 1 | 3..);
        match op.kind {
            OpKind::Read(_) if op.outcome == Outcome::Ok => op.kind = OpKind::Read(current),
            OpKind::Read(_) => {}
            OpKind::Write(v) => {
                if applies {
                    model.insert(c.key, v);
                }
            }
            OpKind::Cas { expected, new } => {
                if current != Some(expected) {
                    // It would have been refused; an unknown outcome stays unknown.
                    if op.outcome == Outcome::Ok {
                        op.outcome = Outcome::Fail;
                    }
                } else if applies {
                    model.insert(c.key, new);
                }
            }
        }
    }
    ops
}

fn choice(keys: u8, values: i64) -> impl Strategy<Value = Choice> {
    (
        (0..keys, 0..3u8, 0..values, 0..values),
        (0..64usize, 0..50u64, 0..200u64, 0..=100u8, 0..12u8),
    )
        .prop_map(
            |((key, f, a, b), (process, think, latency, at, fate))| Choice {
                key,
                f,
                a,
                b,
                process,
                think,
                latency,
                at,
                fate,
            },
        )
}

/// The events a harness would have written for these operations, in file order.
fn to_events(ops: &[Op]) -> Vec<Event> {
    let mut events = Vec::new();
    for o in ops {
        let value = match o.kind {
            OpKind::Read(_) => Value::Null,
            OpKind::Write(v) => Value::Int(v),
            OpKind::Cas { expected, new } => Value::Pair(expected, new),
        };
        events.push((
            o.invoke,
            0,
            Event {
                process: o.process,
                kind: EventType::Invoke,
                f: o.f(),
                key: o.key.clone(),
                value,
                time: o.invoke,
            },
        ));
        let (kind, value) = match (o.outcome, o.kind) {
            (Outcome::Ok, OpKind::Read(v)) => (EventType::Ok, v.map_or(Value::Null, Value::Int)),
            (Outcome::Ok, _) => (EventType::Ok, value),
            (Outcome::Fail, _) => (EventType::Fail, value),
            (Outcome::Info, _) => (EventType::Info, value),
        };
        if let Some(t) = o.complete {
            events.push((
                t,
                1,
                Event {
                    process: o.process,
                    kind,
                    f: o.f(),
                    key: o.key.clone(),
                    value,
                    time: t,
                },
            ));
        }
    }
    events.sort_by_key(|(t, rank, _)| (*t, *rank));
    events.into_iter().map(|(_, _, e)| e).collect()
}

proptest! {
    #[test]
    fn histories_of_sequential_executions_are_linearizable(
        choices in prop::collection::vec(choice(3, 4), 1..150),
        processes in 1..12usize,
    ) {
        let ops = simulate(&choices, processes);
        let report = check(&ops);
        prop_assert!(report.is_ok(), "{}", report);
    }

    #[test]
    fn a_read_of_a_value_never_written_is_caught(
        choices in prop::collection::vec(choice(2, 4), 1..150),
        processes in 1..12usize,
        pick in any::<prop::sample::Index>(),
    ) {
        let mut ops = simulate(&choices, processes);
        let reads: Vec<usize> = (0..ops.len())
            .filter(|&i| matches!((ops[i].kind, ops[i].outcome), (OpKind::Read(_), Outcome::Ok)))
            .collect();
        prop_assume!(!reads.is_empty());
        let i = reads[pick.index(reads.len())];
        ops[i].kind = OpKind::Read(Some(1_000_000));
        let report = check(&ops);
        prop_assert!(!report.is_ok());
        let failed = report.failures().next().unwrap();
        prop_assert_eq!(&failed.key, &ops[i].key);
        prop_assert!(matches!(failed.verdict, Verdict::Violation(_)), "{}", report);
    }

    #[test]
    fn a_read_of_absent_after_a_completed_write_is_caught(
        choices in prop::collection::vec(choice(2, 4), 1..150),
        processes in 1..12usize,
        pick in any::<prop::sample::Index>(),
    ) {
        let mut ops = simulate(&choices, processes);
        // Reads invoked after some write or cas on their key completed `ok`: absent can
        // never come back, so reading it is a violation that only the search can find.
        let reads: Vec<usize> = (0..ops.len())
            .filter(|&i| {
                let r = &ops[i];
                matches!((r.kind, r.outcome), (OpKind::Read(_), Outcome::Ok))
                    && ops.iter().any(|o| {
                        o.key == r.key
                            && o.outcome == Outcome::Ok
                            && o.f() != Func::Read
                            && o.complete.unwrap() < r.invoke
                    })
            })
            .collect();
        prop_assume!(!reads.is_empty());
        let i = reads[pick.index(reads.len())];
        ops[i].kind = OpKind::Read(None);
        let report = check(&ops);
        let failed: Vec<&str> = report.failures().map(|k| k.key.as_str()).collect();
        prop_assert_eq!(failed, vec![ops[i].key.as_str()], "{}", report);
        let Verdict::Violation(v) = &report.failures().next().unwrap().verdict else {
            panic!("{report}");
        };
        prop_assert!(!v.value_never_written);
    }

    #[test]
    fn histories_survive_a_round_trip_through_json_lines(
        choices in prop::collection::vec(choice(3, 4), 0..100),
        processes in 1..8usize,
    ) {
        let ops = simulate(&choices, processes);
        let mut text = Vec::new();
        for e in to_events(&ops) {
            serde_json::to_writer(&mut text, &e).unwrap();
            text.push(b'\n');
        }
        let mut parsed = parse_history(text.as_slice()).unwrap();
        let mut want = ops.clone();
        for o in &mut want {
            // A result is only recorded for an ok read.
            if o.outcome != Outcome::Ok && o.f() == Func::Read {
                o.kind = OpKind::Read(None);
            }
        }
        let order = |o: &Op| (o.invoke, o.process);
        parsed.sort_by_key(order);
        want.sort_by_key(order);
        prop_assert_eq!(parsed, want);
    }
}

/// Linearizability by definition, for cross-checking: try every order that respects real
/// time, placing operations with a known outcome necessarily and the rest optionally
/// (failed ones never). It shares nothing with the checker but the register's rules.
fn brute_force(ops: &[Op]) -> bool {
    fn required(op: &Op) -> bool {
        op.outcome == Outcome::Ok && op.complete.is_some()
    }
    fn go(ops: &[&Op], placed: &mut Vec<bool>, state: Option<i64>) -> bool {
        if (0..ops.len()).all(|i| placed[i] || !required(ops[i])) {
            return true;
        }
        for i in 0..ops.len() {
            if placed[i] {
                continue;
            }
            // Real time: nothing still unplaced may have completed before this was invoked.
            let blocked = (0..ops.len()).any(|j| {
                !placed[j] && required(ops[j]) && ops[j].complete.unwrap() < ops[i].invoke
            });
            if blocked {
                continue;
            }
            let next = match ops[i].kind {
                OpKind::Read(v) if v == state => state,
                OpKind::Read(_) => continue,
                OpKind::Write(v) => Some(v),
                OpKind::Cas { expected, new } if state == Some(expected) => Some(new),
                OpKind::Cas { .. } => continue,
            };
            placed[i] = true;
            let ok = go(ops, placed, next);
            placed[i] = false;
            if ok {
                return true;
            }
        }
        false
    }
    let kept: Vec<&Op> = ops.iter().filter(|o| o.outcome != Outcome::Fail).collect();
    go(&kept, &mut vec![false; kept.len()], None)
}

fn arbitrary_op() -> impl Strategy<Value = Op> {
    let kind = prop_oneof![
        prop::option::of(0..3i64).prop_map(OpKind::Read),
        (0..3i64).prop_map(OpKind::Write),
        (0..3i64, 0..3i64).prop_map(|(expected, new)| OpKind::Cas { expected, new }),
    ];
    let outcome = prop_oneof![
        6 => Just(Outcome::Ok),
        1 => Just(Outcome::Info),
        1 => Just(Outcome::Fail),
    ];
    // A length of 6 stands for "never completed".
    (kind, outcome, 0..10u64, 0..7u64).prop_map(|(kind, outcome, invoke, len)| Op {
        process: 0,
        key: "k".to_owned(),
        kind,
        outcome,
        invoke,
        complete: (len < 6).then_some(invoke + len),
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Arbitrary small histories, mostly not linearizable: the reductions and the
    /// memoisation must never change the verdict.
    #[test]
    fn agrees_with_brute_force_on_small_histories(
        ops in prop::collection::vec(arbitrary_op(), 0..8),
    ) {
        let report = check(&ops);
        prop_assert_eq!(report.is_ok(), brute_force(&ops), "{}", report);
    }
}

/// A small deterministic generator for the large history (proptest shrinks, it does not
/// need to be fast; this needs to be the same every run).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = splitmix64(self.0);
        self.0 % n
    }
}

/// A history shaped like a Jepsen run: `processes` clients with latencies ~20x their think
/// time (so nearly all of them always have an operation open) and 2% of operations with
/// unknown outcomes. `values == 0` writes unique values (each write its own); otherwise
/// values are drawn from `0..values`, as Jepsen's register workloads do (where many
/// writes of the same value make the search's reductions weaker).
fn large_history(ops: usize, keys: u8, processes: usize, values: u64) -> Vec<Op> {
    let mut rng = Rng(42);
    let choices: Vec<Choice> = (1..=ops as i64)
        .map(|n| {
            let f = match rng.below(10) {
                0..=4 => 0,
                5..=7 => 1,
                _ => 2,
            };
            let (a, b) = if values > 0 {
                (rng.below(values) as i64, rng.below(values) as i64)
            } else if f == 2 {
                // A cas expects a recently written value, so that some succeed.
                (n - 1 - rng.below(processes as u64) as i64, n)
            } else {
                (n, n)
            };
            Choice {
                key: rng.below(u64::from(keys)) as u8,
                f,
                a,
                b,
                process: rng.below(processes as u64) as usize,
                think: rng.below(100),
                latency: 500 + rng.below(3000),
                at: rng.below(101) as u8,
                fate: if rng.below(100) < 2 {
                    1 + rng.below(2) as u8
                } else {
                    3
                },
            }
        })
        .collect();
    simulate(&choices, processes)
}

fn time_check(ops: &[Op]) -> Report {
    let started = Instant::now();
    let report = check(ops);
    let took = started.elapsed();
    let steps: u64 = report.keys.iter().map(|k| k.steps).sum();
    let open = max_open(ops);
    let unknown = ops.iter().filter(|o| o.outcome == Outcome::Info).count();
    eprintln!(
        "{} keys, {} ops ({} checked, {} dropped; up to {open} open at once, {unknown} unknown \
         outcomes): {} in {took:?}, {steps} steps",
        report.keys.len(),
        ops.len(),
        report.ops_checked(),
        report.ops_dropped(),
        if report.is_ok() { "ok" } else { "FAILED" },
    );
    report
}

/// The most operations in flight at one instant (until their client heard back), to show
/// the generated history is as concurrent as claimed.
fn max_open(ops: &[Op]) -> usize {
    let mut edges: Vec<(u64, i8)> = ops
        .iter()
        .flat_map(|o| [(o.invoke, 1), (o.complete.unwrap_or(u64::MAX), -1)])
        .collect();
    edges.sort_unstable_by_key(|&(t, d)| (t, -d));
    let (mut open, mut most) = (0i64, 0i64);
    for (_, d) in edges {
        open += i64::from(d);
        most = most.max(open);
    }
    most as usize
}

/// Corruptions of one `ok` read that each make a linearizable history non-linearizable:
/// a value never written; absent after a write completed; the first value written, after
/// a later write completed (with unique values, nothing can bring it back).
fn corruptions(history: &[Op]) -> Vec<(&'static str, Vec<Op>)> {
    let is_read = |o: &Op| matches!((o.kind, o.outcome), (OpKind::Read(_), Outcome::Ok));
    let first_write = history
        .iter()
        .find(|o| o.outcome == Outcome::Ok && o.f() == Func::Write)
        .unwrap();
    let late_read = history.iter().rposition(|o| {
        is_read(o) && o.key == first_write.key && o.invoke > first_write.complete.unwrap() + 1000
    });
    let late_read = late_read.unwrap();
    let OpKind::Write(first_value) = first_write.kind else {
        unreachable!()
    };
    [
        ("never written", Some(-1)),
        ("absent again", None),
        ("the first value again", Some(first_value)),
    ]
    .into_iter()
    .map(|(what, value)| {
        let mut bad = history.to_vec();
        bad[late_read].kind = OpKind::Read(value);
        (what, bad)
    })
    .collect()
}

#[test]
fn a_large_history_checks_quickly() {
    // One key, 5000 operations, 20 clients: the worst case for the search, since P-
    // compositionality cannot split it. Then the same load spread over 8 keys.
    for (ops, keys) in [(5000, 1), (20_000, 8)] {
        let history = large_history(ops, keys, 20, 0);
        let report = time_check(&history);
        assert!(report.is_ok(), "{report}");
        let steps: u64 = report.keys.iter().map(|k| k.steps).sum();
        // Steps, not time, so a loaded machine cannot make this flaky: the search should
        // visit each entry a few times per open operation, not explore orders.
        assert!(steps < 10 * ops as u64, "{steps} steps for {ops} ops");

        for (what, bad) in corruptions(&history) {
            eprint!("  late read returns {what}: ");
            let report = time_check(&bad);
            assert_eq!(report.failures().count(), 1, "{report}");
            let failed = report.failures().next().unwrap();
            assert!(matches!(failed.verdict, Verdict::Violation(_)), "{report}");
            assert!(failed.steps < 10 * ops as u64, "{} steps", failed.steps);
        }
    }
}
