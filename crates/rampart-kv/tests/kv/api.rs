//! etcd v3 API semantics on a single real node (gRPC over loopback).

use std::time::Duration;

use crate::support::*;
use rampart_kv::client::prefix_end;
use rampart_kv::proto::etcdserverpb as pb;
use rampart_kv::proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use rampart_kv::proto::etcdserverpb::request_op::Request as Op;
use rampart_kv::proto::etcdserverpb::response_op::Response as OpResp;
use tonic::Code;

fn cmp_value(key: &str, v: &str) -> pb::Compare {
    pb::Compare {
        result: CompareResult::Equal as i32,
        target: CompareTarget::Value as i32,
        key: key.into(),
        target_union: Some(TargetUnion::Value(v.into())),
        range_end: Vec::new(),
    }
}

fn code(e: &rampart_kv::client::ClientError) -> (Code, String) {
    let s = e.status().expect("a gRPC status");
    (s.code(), s.message().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_txn_history_leases_and_watch_behave_like_etcd() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = cluster_configs(dir.path(), 1).remove(0);
    cfg.watch_progress_interval = Duration::from_millis(300);
    let node = start(cfg.clone()).await.unwrap();
    let mut c = client(&[&cfg]);

    // Revisions: an empty store is at 1; each write adds one.
    let r = c.range(get("a")).await.unwrap();
    assert_eq!(r.header.as_ref().unwrap().revision, 1);
    assert_eq!(r.count, 0);
    let p = c.put(put("a", "1")).await.unwrap();
    assert_eq!(p.header.as_ref().unwrap().revision, 2);
    assert!(p.prev_kv.is_none());
    let p = c.put(put("a", "2")).await.unwrap();
    let prev = p.prev_kv.unwrap();
    assert_eq!(
        (prev.value.as_slice(), prev.version, prev.mod_revision),
        (&b"1"[..], 1, 2)
    );
    let kv = c.range(get("a")).await.unwrap().kvs.remove(0);
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (2, 3, 2));

    // Ranges: prefix, limit, count, sort, keys_only, reads at past revisions.
    for (k, v) in [("p/c", "x"), ("p/a", "z"), ("p/b", "y")] {
        c.put(put(k, v)).await.unwrap();
    }
    let r = c
        .range(pb::RangeRequest {
            key: "p/".into(),
            range_end: prefix_end(b"p/"),
            limit: 2,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(r.count, 3);
    assert!(r.more);
    let keys: Vec<_> = r.kvs.iter().map(|kv| kv.key.clone()).collect();
    assert_eq!(keys, vec![b"p/a".to_vec(), b"p/b".to_vec()]);
    // A limited scan keeps only the window but still counts every match: descending by
    // key, with a revision filter, and count_only.
    let r = c
        .range(pb::RangeRequest {
            key: "p/".into(),
            range_end: prefix_end(b"p/"),
            limit: 1,
            sort_order: pb::range_request::SortOrder::Descend as i32,
            min_mod_revision: 5,
            ..Default::default()
        })
        .await
        .unwrap();
    let keys: Vec<_> = r.kvs.iter().map(|kv| kv.key.clone()).collect();
    assert_eq!((keys, r.count, r.more), (vec![b"p/b".to_vec()], 2, true));
    let r = c
        .range(pb::RangeRequest {
            key: "p/".into(),
            range_end: prefix_end(b"p/"),
            count_only: true,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!((r.kvs.len(), r.count, r.more), (0, 3, false));
    let r = c
        .range(pb::RangeRequest {
            key: "p/".into(),
            range_end: prefix_end(b"p/"),
            sort_order: pb::range_request::SortOrder::Descend as i32,
            sort_target: pb::range_request::SortTarget::Value as i32,
            keys_only: true,
            ..Default::default()
        })
        .await
        .unwrap();
    let keys: Vec<_> = r.kvs.iter().map(|kv| kv.key.clone()).collect();
    assert_eq!(
        keys,
        vec![b"p/a".to_vec(), b"p/b".to_vec(), b"p/c".to_vec()]
    );
    assert!(r.kvs.iter().all(|kv| kv.value.is_empty()));
    let old = c
        .range(pb::RangeRequest {
            revision: 2,
            ..get("a")
        })
        .await
        .unwrap();
    assert_eq!(old.kvs[0].value, b"1");
    let none = c
        .range(pb::RangeRequest {
            key: "p/".into(),
            range_end: prefix_end(b"p/"),
            revision: 3,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(none.count, 0, "p/ keys did not exist at revision 3");

    // Delete with prev_kvs.
    let d = c
        .delete(pb::DeleteRangeRequest {
            key: "p/a".into(),
            range_end: "p/c".into(),
            prev_kv: true,
        })
        .await
        .unwrap();
    assert_eq!(d.deleted, 2);
    assert_eq!(d.prev_kvs.len(), 2);
    let rev_after_delete = d.header.unwrap().revision;
    assert_eq!(rev_after_delete, 7);
    // Deleting nothing does not move the revision.
    let d = c
        .delete(pb::DeleteRangeRequest {
            key: "nothing".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!((d.deleted, d.header.unwrap().revision), (0, 7));

    // Txn: compare-and-swap, nested txn, reads inside, one revision for all writes.
    let t = c
        .txn(pb::TxnRequest {
            compare: vec![cmp_value("a", "2")],
            success: vec![
                pb::RequestOp {
                    request: Some(Op::RequestPut(put("a", "3"))),
                },
                pb::RequestOp {
                    request: Some(Op::RequestPut(put("b", "1"))),
                },
                pb::RequestOp {
                    request: Some(Op::RequestRange(get("a"))),
                },
                pb::RequestOp {
                    request: Some(Op::RequestTxn(pb::TxnRequest {
                        compare: vec![cmp_value("a", "2")],
                        success: vec![pb::RequestOp {
                            request: Some(Op::RequestPut(put("nested", "ok"))),
                        }],
                        failure: vec![],
                    })),
                },
            ],
            failure: vec![],
        })
        .await
        .unwrap();
    assert!(t.succeeded);
    assert_eq!(t.header.as_ref().unwrap().revision, 8);
    match &t.responses[2].response {
        Some(OpResp::ResponseRange(r)) => {
            assert_eq!(r.kvs[0].value, b"3", "reads see the txn's writes");
        }
        other => panic!("unexpected {other:?}"),
    }
    match &t.responses[3].response {
        // Nested compares are decided on the state before the txn (a was "2").
        Some(OpResp::ResponseTxn(inner)) => assert!(inner.succeeded),
        other => panic!("unexpected {other:?}"),
    }
    let kv = c.range(get("b")).await.unwrap().kvs.remove(0);
    assert_eq!(kv.mod_revision, 8);
    let t = c
        .txn(pb::TxnRequest {
            compare: vec![cmp_value("a", "2")],
            success: vec![pb::RequestOp {
                request: Some(Op::RequestPut(put("a", "never"))),
            }],
            failure: vec![pb::RequestOp {
                request: Some(Op::RequestRange(get("a"))),
            }],
        })
        .await
        .unwrap();
    assert!(!t.succeeded);
    assert_eq!(
        t.header.unwrap().revision,
        8,
        "a failed read-only branch writes nothing"
    );
    let dup = c
        .txn(pb::TxnRequest {
            compare: vec![],
            success: vec![
                pb::RequestOp {
                    request: Some(Op::RequestPut(put("x", "1"))),
                },
                pb::RequestOp {
                    request: Some(Op::RequestPut(put("x", "2"))),
                },
            ],
            failure: vec![],
        })
        .await
        .unwrap_err();
    assert_eq!(
        code(&dup),
        (
            Code::InvalidArgument,
            "etcdserver: duplicate key given in txn request".into()
        )
    );

    // Errors with etcd's codes and messages.
    let e = c.range(get("")).await.unwrap_err();
    assert_eq!(
        code(&e),
        (
            Code::InvalidArgument,
            "etcdserver: key is not provided".into()
        )
    );
    let e = c
        .range(pb::RangeRequest {
            revision: 1000,
            ..get("a")
        })
        .await
        .unwrap_err();
    assert_eq!(
        code(&e),
        (
            Code::OutOfRange,
            "etcdserver: mvcc: required revision is a future revision".into()
        )
    );
    let e = c
        .put(pb::PutRequest {
            lease: 12345,
            ..put("l", "v")
        })
        .await
        .unwrap_err();
    assert_eq!(
        code(&e),
        (
            Code::NotFound,
            "etcdserver: requested lease not found".into()
        )
    );
    let big = vec![b'x'; 1_600_000];
    let e = c
        .put(pb::PutRequest {
            key: "big".into(),
            value: big,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        code(&e),
        (
            Code::InvalidArgument,
            "etcdserver: request is too large".into()
        )
    );

    // Watch from a past revision: history in order, then live events; prev_kv on request.
    let (_w, mut stream) = c
        .watch(pb::WatchCreateRequest {
            key: "a".into(),
            start_revision: 2,
            prev_kv: true,
            ..Default::default()
        })
        .await
        .unwrap();
    let created = stream.message().await.unwrap().unwrap();
    assert!(created.created);
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let resp = stream.message().await.unwrap().unwrap();
        for ev in resp.events {
            let kv = ev.kv.unwrap();
            seen.push((kv.mod_revision, kv.value, ev.prev_kv.map(|p| p.value)));
        }
    }
    assert_eq!(
        seen,
        vec![
            (2, b"1".to_vec(), None),
            (3, b"2".to_vec(), Some(b"1".to_vec())),
            (8, b"3".to_vec(), Some(b"2".to_vec())),
        ]
    );
    c.put(put("a", "4")).await.unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(resp.events[0].kv.as_ref().unwrap().value, b"4");

    // Compaction: past reads and watches before it fail with the compacted error.
    let rev = c.range(get("a")).await.unwrap().header.unwrap().revision;
    c.compact(rev - 1).await.unwrap();
    let e = c
        .range(pb::RangeRequest {
            revision: 2,
            ..get("a")
        })
        .await
        .unwrap_err();
    assert_eq!(
        code(&e),
        (
            Code::OutOfRange,
            "etcdserver: mvcc: required revision has been compacted".into()
        )
    );
    let (_w2, mut stream) = c
        .watch(pb::WatchCreateRequest {
            key: "a".into(),
            start_revision: 2,
            ..Default::default()
        })
        .await
        .unwrap();
    let _created = stream.message().await.unwrap().unwrap();
    let cancelled = stream.message().await.unwrap().unwrap();
    assert!(cancelled.canceled);
    assert_eq!(cancelled.compact_revision, rev - 1);

    // Progress: periodic notifications on an idle watch (progress_notify) and on request.
    let (progress_tx, mut stream) = c
        .watch(pb::WatchCreateRequest {
            key: "idle".into(),
            progress_notify: true,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(stream.message().await.unwrap().unwrap().created);
    let current = c.range(get("a")).await.unwrap().header.unwrap().revision;
    let tick = tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(tick.events.is_empty() && !tick.canceled);
    assert_eq!(tick.header.unwrap().revision, current);
    progress_tx
        .send(pb::WatchRequest {
            request_union: Some(pb::watch_request::RequestUnion::ProgressRequest(
                pb::WatchProgressRequest {},
            )),
        })
        .await
        .unwrap();
    let reply = tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(reply.header.unwrap().revision, current);

    // Leases: keys go with the lease, through the log (one revision, DELETE events).
    let lease = c.lease_grant(30).await.unwrap();
    c.put(pb::PutRequest {
        lease: lease.id,
        ..put("leased/1", "v")
    })
    .await
    .unwrap();
    c.put(pb::PutRequest {
        lease: lease.id,
        ..put("leased/2", "v")
    })
    .await
    .unwrap();
    let ttl = c.lease_time_to_live(lease.id, true).await.unwrap();
    assert_eq!(ttl.granted_ttl, 30);
    assert!(ttl.ttl > 25 && ttl.ttl <= 30, "{ttl:?}");
    assert_eq!(ttl.keys.len(), 2);
    assert_eq!(c.lease_keep_alive_once(lease.id).await.unwrap(), 30);
    let before = c.range(get("a")).await.unwrap().header.unwrap().revision;
    c.lease_revoke(lease.id).await.unwrap();
    let r = c
        .range(pb::RangeRequest {
            key: "leased/".into(),
            range_end: prefix_end(b"leased/"),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(r.count, 0);
    assert_eq!(r.header.unwrap().revision, before + 1);
    assert_eq!(c.lease_keep_alive_once(lease.id).await.unwrap(), 0);
    assert_eq!(c.lease_time_to_live(lease.id, false).await.unwrap().ttl, -1);

    // An expiring lease is revoked by the leader (the minimum TTL follows the election timeout).
    let short = c.lease_grant(1).await.unwrap();
    assert!(short.ttl >= 1);
    c.put(pb::PutRequest {
        lease: short.id,
        ..put("ephemeral", "v")
    })
    .await
    .unwrap();
    let mut c2 = c.clone();
    eventually(
        Duration::from_secs(10),
        "the expired lease's key is deleted",
        move || {
            let mut c = c2.clone();
            async move { c.range(get("ephemeral")).await.unwrap().count == 0 }
        },
    )
    .await;
    c2 = c.clone();
    assert!(
        c2.lease_list()
            .await
            .unwrap()
            .leases
            .iter()
            .all(|l| l.id != short.id)
    );

    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_log_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = cluster_configs(dir.path(), 1).remove(0);
    let node = start(cfg.clone()).await.unwrap();
    let mut c = client(&[&cfg]);
    let marker = "MARKER-0123456789-ABCDEFGHIJ";
    for i in 0..20 {
        c.put(put(&format!("k{i}"), marker)).await.unwrap();
    }
    node.shutdown().await;
    drop(node);
    drop(c);
    // Wait for the files to be released, then flip one byte inside the stored entries. redb
    // writes copy-on-write, so stale copies of a page can remain in free space: damage every
    // copy, so the live one is surely hit.
    let log = cfg.data_dir.join("raft-log.redb");
    let mut bytes = std::fs::read(&log).unwrap();
    let hits: Vec<usize> = bytes
        .windows(marker.len())
        .enumerate()
        .filter(|(_, w)| *w == marker.as_bytes())
        .map(|(i, _)| i)
        .collect();
    assert!(!hits.is_empty(), "the entry is in the log file");
    for at in hits {
        bytes[at + 3] ^= 0x20;
    }
    std::fs::write(&log, &bytes).unwrap();
    let err = refused_start(&cfg).await;
    assert!(err.contains("raft-log.redb"), "{err}");
    assert!(
        err.contains("refusing to start") || err.contains("damaged"),
        "{err}"
    );

    // A truncated file is refused too.
    let half = bytes.len() / 2;
    std::fs::write(&log, &bytes[..half]).unwrap();
    let err = start(cfg.clone()).await.unwrap_err().to_string();
    assert!(err.contains("raft-log.redb"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_state_file_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = cluster_configs(dir.path(), 1).remove(0);
    let node = start(cfg.clone()).await.unwrap();
    let mut c = client(&[&cfg]);
    let marker = "STATE-MARKER-0123456789-ABCDEFGHIJ";
    c.put(put("k", marker)).await.unwrap();
    node.shutdown().await;
    drop(node);
    drop(c);
    let state = cfg.data_dir.join("state.redb");
    // The state machine commits without fsync: wait until the value is in the file.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let (bytes, at) = loop {
        let bytes = std::fs::read(&state).unwrap();
        if let Some(at) = bytes
            .windows(marker.len())
            .position(|w| w == marker.as_bytes())
        {
            break (bytes, at);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the value never reached the state file"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut damaged = bytes.clone();
    damaged[at + 5] ^= 0x01;
    std::fs::write(&state, &damaged).unwrap();
    let err = refused_start(&cfg).await;
    assert!(err.contains("state.redb"), "{err}");
    std::fs::write(&state, &bytes[..bytes.len() / 3]).unwrap();
    let err = start(cfg.clone()).await.unwrap_err().to_string();
    assert!(err.contains("state.redb"), "{err}");
}

/// The crate's client over TLS with a client certificate, logging in with a user: what
/// `rampart kv --cacert/--cert/--key --user` and the Jepsen harness build on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_speaks_tls_and_logs_in() {
    use rampart_kv::client::{Client, Security};
    use rampart_kv::tls::{TlsFiles, client_config, dev_certs};

    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    dev_certs(&certs, &["n1".into()]).unwrap();
    let files = |name: &str, client_cert_auth: bool| TlsFiles {
        cert_file: certs.join(format!("{name}.pem")),
        key_file: certs.join(format!("{name}-key.pem")),
        trusted_ca_file: Some(certs.join("ca.pem")),
        client_cert_auth,
    };
    let mut cfg =
        rampart_kv::NodeConfig::single("n1", dir.path().join("data"), free_addr(), free_addr());
    cfg.client_tls = Some(files("n1", true));
    let node = start(cfg.clone()).await.unwrap();
    let ep = vec![cfg.listen_client.to_string()];
    let tls = Some(client_config(&files("client", false)).unwrap());
    let secure = |user: Option<(&str, &str)>| {
        Client::with_security(
            &ep,
            Duration::from_secs(5),
            Security {
                tls: tls.clone(),
                user: user.map(|(u, p)| (u.to_string(), p.to_string())),
            },
        )
        .unwrap()
    };

    // Auth is off: credentials are ignored (as etcdctl does), and root is set up.
    let mut admin = secure(Some(("root", "pw")));
    admin.put(put("before", "1")).await.unwrap();
    admin.user_add("root", "pw").await.unwrap();
    admin.user_grant_role("root", "root").await.unwrap();
    admin.auth_enable().await.unwrap();

    let mut plain = Client::new(&ep, Duration::from_secs(2)).unwrap();
    assert!(
        plain.range(get("before")).await.is_err(),
        "plain HTTP/2 was served"
    );
    let mut anonymous = secure(None);
    let err = anonymous.put(put("k", "v")).await.unwrap_err();
    assert_eq!(
        err.status().unwrap().message(),
        "etcdserver: user name is empty"
    );
    let mut wrong = secure(Some(("root", "nope")));
    let err = wrong.range(get("before")).await.unwrap_err();
    assert_eq!(
        err.status().unwrap().message(),
        "etcdserver: authentication failed, invalid user ID or password"
    );
    let mut root = secure(Some(("root", "pw")));
    root.put(put("k", "v")).await.unwrap();
    assert_eq!(root.range(get("k")).await.unwrap().kvs[0].value, b"v");
    node.shutdown().await;
}

/// etcd's apply-time rule: a write checked under an older auth revision is checked again
/// when applied, so a revoke ordered before it wins even if the check ran earlier.
#[tokio::test]
async fn a_write_checked_under_an_older_auth_revision_is_checked_again_at_apply() {
    use openraft::storage::RaftStateMachine;
    use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};
    use rampart_kv::auth::{AuthCommand, Perm, PermKind};
    use rampart_kv::state::StateMachine;
    use rampart_kv::types::{Command, Reply};

    let dir = tempfile::tempdir().unwrap();
    let (mut sm, shared) = StateMachine::open(dir.path(), 0).unwrap();
    let mut index = 0;
    let mut apply = async |cmd: Command| {
        index += 1;
        let entry = Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(cmd),
        };
        sm.apply(vec![entry]).await.unwrap().remove(0)
    };
    let grant = Perm {
        kind: PermKind::ReadWrite,
        key: b"app/".to_vec(),
        range_end: b"app0".to_vec(),
    };
    for c in [
        AuthCommand::UserAdd {
            name: "root".into(),
            password: None,
        },
        AuthCommand::UserGrantRole {
            user: "root".into(),
            role: "root".into(),
        },
        AuthCommand::UserAdd {
            name: "alice".into(),
            password: None,
        },
        AuthCommand::RoleAdd { name: "app".into() },
        AuthCommand::RoleGrantPermission {
            role: "app".into(),
            perm: grant.clone(),
        },
        AuthCommand::UserGrantRole {
            user: "alice".into(),
            role: "app".into(),
        },
        AuthCommand::Enable {
            secret: vec![1; 32],
        },
    ] {
        assert!(matches!(apply(Command::Auth(c)).await, Reply::Done { .. }));
    }
    let checked_at = shared.auth().revision;
    let write = |key: &str| Command::As {
        user: "alice".into(),
        auth_revision: checked_at,
        cmd: Box::new(Command::Put(put(key, "v"))),
    };
    assert!(matches!(apply(write("app/a")).await, Reply::Put(_)));
    // The permission is revoked after alice's next write was checked, before it applies.
    let revoke = AuthCommand::RoleRevokePermission {
        role: "app".into(),
        key: grant.key,
        range_end: grant.range_end,
    };
    assert!(matches!(
        apply(Command::Auth(revoke)).await,
        Reply::Done { .. }
    ));
    match apply(write("app/b")).await {
        Reply::Error(e) => assert_eq!(e.to_string(), "etcdserver: permission denied"),
        other => panic!("applied despite the revoke: {other:?}"),
    }
}

/// A live watch whose client stops reading falls behind the broadcast of applied revisions;
/// when it catches up from history after a compaction has removed what it still owes, it is
/// cancelled with the compacted revision (as etcd does) instead of skipping events: what it
/// did deliver has no gap (one of issue 13's missing tests).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_watch_is_cancelled_by_compaction_never_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = cluster_configs(dir.path(), 1).remove(0);
    let node = start(cfg.clone()).await.unwrap();
    let mut c = client(&[&cfg]);
    let first = c
        .put(put("lag/0", "x"))
        .await
        .unwrap()
        .header
        .unwrap()
        .revision
        + 1;
    let mut watcher = client(&[&cfg]);
    let (_w, mut stream) = watcher
        .watch(pb::WatchCreateRequest {
            key: "lag/".into(),
            range_end: prefix_end(b"lag/"),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(stream.message().await.unwrap().unwrap().created);
    // The watcher reads nothing while more revisions than the broadcast holds (1,024) are
    // applied, with values large enough (32 MiB in all) to fill every buffer on the way.
    let value = "v".repeat(16 * 1024);
    let mut last = 0;
    for i in 0..2000 {
        last = c
            .put(put(&format!("lag/{}", i % 7), &value))
            .await
            .unwrap()
            .header
            .unwrap()
            .revision;
    }
    c.compact(last).await.unwrap();

    let mut next = first;
    let mut cancelled = None;
    while next <= last {
        let resp = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("the watch answers")
            .unwrap()
            .expect("the stream stays open until cancelled");
        if resp.canceled {
            cancelled = Some(resp.compact_revision);
            break;
        }
        for e in &resp.events {
            let rev = e.kv.as_ref().unwrap().mod_revision;
            assert_eq!(rev, next, "no revision skipped");
            next += 1;
        }
    }
    match cancelled {
        Some(compacted) => assert!(
            compacted >= next,
            "cancelled at {compacted} with revision {next} still owed"
        ),
        // Everything arrived before the compaction caught up with the watcher: also right.
        None => assert_eq!(next, last + 1),
    }
    assert!(
        cancelled.is_some(),
        "this load is meant to make the watcher lag past the compaction (delivered up to {next})"
    );
    node.shutdown().await;
}
