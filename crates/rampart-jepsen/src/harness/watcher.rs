//! The watch check: one watcher follows every key of the run through the faults, moving to
//! another node and resuming from the next revision it needs whenever its stream breaks or
//! goes quiet (as etcd's clients do). Afterwards its events must be exactly the store's
//! event history from revision 1, in order: every committed revision once, none skipped,
//! none repeated, across leader changes. The history itself is checked against the
//! operations: every acknowledged write must appear in it.

use std::collections::HashSet;
use std::time::Duration;

use rampart_kv::client::{Client, Security, prefix_end};
use rampart_kv::proto::etcdserverpb as pb;
use tokio::time::Instant;

use crate::history::{Op, OpKind, Outcome};

/// One event as the watcher saw it: revision, key, value.
pub(crate) type Seen = (i64, String, String);

/// A stream silent for this long (while the clients keep writing) counts as stuck.
const QUIET: Duration = Duration::from_secs(3);

/// How the watcher reaches the nodes: one endpoint at a time, in turn.
#[derive(Debug, Clone)]
pub(crate) struct Nodes {
    pub(crate) endpoints: Vec<String>,
    /// Per-request timeout of each client.
    pub(crate) timeout: Duration,
    pub(crate) security: Security,
}

/// Follow every key under `prefix` from revision 1 until `stop` (or until revision `until`
/// has been seen). Returns the events seen, or a description of a duplicate or
/// out-of-order event (the stream went backwards).
pub(crate) async fn follow(
    nodes: Nodes,
    prefix: &str,
    stop: Instant,
    until: Option<i64>,
) -> Result<Vec<Seen>, String> {
    let Nodes {
        endpoints,
        timeout,
        security,
    } = nodes;
    let mut seen: Vec<Seen> = Vec::new();
    let mut next = 1;
    let mut node = 0;
    while Instant::now() < stop {
        let endpoint = endpoints[node % endpoints.len()].clone();
        node += 1;
        let Ok(mut client) = Client::with_security(&[endpoint], timeout, security.clone()) else {
            continue;
        };
        let create = pb::WatchCreateRequest {
            key: prefix.as_bytes().to_vec(),
            range_end: prefix_end(prefix.as_bytes()),
            start_revision: next,
            ..Default::default()
        };
        let Ok((_requests, mut stream)) = client.watch(create).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        loop {
            let wait_until = stop.min(Instant::now() + QUIET);
            let msg = tokio::time::timeout_at(wait_until, stream.message()).await;
            // Quiet for too long, broken, or the run is over: resume elsewhere (or stop).
            let Ok(Ok(Some(resp))) = msg else { break };
            if resp.canceled {
                return Err(format!(
                    "the watch was cancelled at revision {next}: {}",
                    resp.cancel_reason
                ));
            }
            let mut last = next - 1;
            for ev in resp.events {
                let kv = ev.kv.unwrap_or_default();
                if kv.mod_revision < next {
                    return Err(format!(
                        "event at revision {} arrived after revision {} had been seen \
                         (a duplicate or out of order)",
                        kv.mod_revision,
                        next - 1
                    ));
                }
                last = last.max(kv.mod_revision);
                seen.push((
                    kv.mod_revision,
                    String::from_utf8_lossy(&kv.key).into_owned(),
                    String::from_utf8_lossy(&kv.value).into_owned(),
                ));
            }
            next = last + 1;
            if until.is_some_and(|u| next > u) {
                return Ok(seen);
            }
        }
    }
    Ok(seen)
}

/// Compare what the watcher saw with the full history read afterwards from revision 1 on a
/// healthy cluster, and that history with the acknowledged writes. Returns the problems.
pub(crate) fn compare(seen: &[Seen], full: &[Seen], ops: &[Op]) -> Vec<String> {
    let mut problems = Vec::new();
    if seen.is_empty() {
        problems.push("the watcher saw no events at all".to_string());
    }
    if seen.len() > full.len() {
        problems.push(format!(
            "the watcher saw {} events, more than the {} in the store's history",
            seen.len(),
            full.len()
        ));
    }
    if let Some(i) = seen.iter().zip(full).position(|(a, b)| a != b) {
        problems.push(format!(
            "watch event {i} was {:?}, the store's history has {:?} there (a revision \
             skipped, repeated or changed)",
            seen[i], full[i]
        ));
    }
    let written: HashSet<(&str, String)> = full
        .iter()
        .map(|(_, k, v)| (k.as_str(), v.clone()))
        .collect();
    for op in ops {
        if op.outcome != Outcome::Ok {
            continue;
        }
        let value = match op.kind {
            OpKind::Write(v) => v,
            OpKind::Cas { new, .. } => new,
            OpKind::Read(_) => continue,
        };
        if !written.contains(&(op.key.as_str(), value.to_string())) {
            problems.push(format!(
                "the acknowledged {op} is missing from the store's event history"
            ));
            break;
        }
    }
    problems
}

/// The store's whole event history under `prefix`, from revision 1 up to the revision a
/// linearizable read reports now.
pub(crate) async fn full_history(
    endpoints: &[String],
    prefix: &str,
    within: Duration,
    security: &Security,
) -> Result<Vec<Seen>, String> {
    let deadline = Instant::now() + within;
    let mut client = Client::with_security(endpoints, Duration::from_secs(2), security.clone())
        .map_err(|e| e.to_string())?;
    let current = client
        .range(pb::RangeRequest {
            key: prefix.as_bytes().to_vec(),
            range_end: prefix_end(prefix.as_bytes()),
            count_only: true,
            ..Default::default()
        })
        .await
        .map_err(|e| format!("reading the current revision: {e}"))?
        .header
        .map_or(0, |h| h.revision);
    let nodes = Nodes {
        endpoints: endpoints.to_vec(),
        timeout: Duration::from_secs(2),
        security: security.clone(),
    };
    let all = follow(nodes, prefix, deadline, Some(current)).await?;
    let upto: Vec<Seen> = all
        .into_iter()
        .filter(|(rev, _, _)| *rev <= current)
        .collect();
    let last = upto.last().map_or(1, |(rev, _, _)| *rev);
    if last < current {
        return Err(format!(
            "the store's event history could only be read up to revision {last} of {current}"
        ));
    }
    Ok(upto)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(rev: i64, key: &str, value: i64) -> Seen {
        (rev, key.to_string(), value.to_string())
    }

    fn write(key: &str, value: i64) -> Op {
        Op {
            process: 0,
            key: key.to_string(),
            kind: OpKind::Write(value),
            outcome: Outcome::Ok,
            invoke: 0,
            complete: Some(1),
        }
    }

    #[test]
    fn the_same_sequence_passes_and_a_prefix_is_fine() {
        let full = vec![ev(2, "k0", 1), ev(3, "k1", 2), ev(4, "k0", 3)];
        let ops = vec![write("k0", 1), write("k1", 2), write("k0", 3)];
        assert!(compare(&full, &full, &ops).is_empty());
        assert!(compare(&full[..2], &full, &ops).is_empty());
    }

    #[test]
    fn skipped_repeated_and_lost_events_are_caught() {
        let full = vec![ev(2, "k0", 1), ev(3, "k1", 2), ev(4, "k0", 3)];
        let ops = vec![write("k0", 1), write("k1", 2), write("k0", 3)];
        let skipped = vec![ev(2, "k0", 1), ev(4, "k0", 3)];
        assert!(!compare(&skipped, &full, &ops).is_empty());
        let repeated = vec![ev(2, "k0", 1), ev(2, "k0", 1), ev(3, "k1", 2)];
        assert!(!compare(&repeated, &full, &ops).is_empty());
        // An acknowledged write that never shows up in the history.
        let lost = vec![
            write("k0", 1),
            write("k1", 2),
            write("k0", 3),
            write("k2", 9),
        ];
        assert!(!compare(&full, &full, &lost).is_empty());
        assert!(!compare(&[], &full, &ops).is_empty());
    }
}
