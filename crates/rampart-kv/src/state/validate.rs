//! Checks a command must pass before it is proposed: what can be decided without the state
//! (empty keys, txn size, a key written twice in one txn branch).

use std::collections::BTreeSet;

use super::KeyRange;
use crate::error::KvError;
use crate::proto::etcdserverpb::{self as pb, request_op};
use crate::types::Command;

/// Most operations in one txn (etcd's default `--max-txn-ops`).
pub const MAX_TXN_OPS: usize = 128;

/// Validate a request before it is proposed: what can be checked without the state.
pub fn validate(cmd: &Command) -> Result<(), KvError> {
    match cmd {
        Command::Put(p) if p.key.is_empty() => Err(KvError::EmptyKey),
        Command::DeleteRange(d) if d.key.is_empty() => Err(KvError::EmptyKey),
        Command::Txn(t) => validate_txn(t),
        Command::As { cmd, .. } => validate(cmd),
        _ => Ok(()),
    }
}

fn validate_txn(t: &pb::TxnRequest) -> Result<(), KvError> {
    if t.compare.len() > MAX_TXN_OPS
        || t.success.len() > MAX_TXN_OPS
        || t.failure.len() > MAX_TXN_OPS
    {
        return Err(KvError::TooManyOps);
    }
    for c in &t.compare {
        if c.key.is_empty() {
            return Err(KvError::EmptyKey);
        }
    }
    for branch in [&t.success, &t.failure] {
        let mut puts: BTreeSet<&[u8]> = BTreeSet::new();
        let mut deletes: Vec<(&[u8], &[u8])> = Vec::new();
        collect_writes(branch, &mut puts, &mut deletes)?;
        for k in &puts {
            let hit = deletes
                .iter()
                .any(|(key, end)| KeyRange { key, end }.contains(k));
            if hit {
                return Err(KvError::DuplicateKey);
            }
        }
    }
    Ok(())
}

fn collect_writes<'a>(
    ops: &'a [pb::RequestOp],
    puts: &mut BTreeSet<&'a [u8]>,
    deletes: &mut Vec<(&'a [u8], &'a [u8])>,
) -> Result<(), KvError> {
    for op in ops {
        match &op.request {
            Some(request_op::Request::RequestPut(p)) => {
                if p.key.is_empty() {
                    return Err(KvError::EmptyKey);
                }
                if !puts.insert(&p.key) {
                    return Err(KvError::DuplicateKey);
                }
            }
            Some(request_op::Request::RequestDeleteRange(d)) => {
                if d.key.is_empty() {
                    return Err(KvError::EmptyKey);
                }
                deletes.push((&d.key, &d.range_end));
            }
            Some(request_op::Request::RequestRange(r)) if r.key.is_empty() => {
                return Err(KvError::EmptyKey);
            }
            Some(request_op::Request::RequestTxn(inner)) => {
                validate_txn(inner)?;
                // Writes of either nested branch may run alongside this branch's writes.
                collect_writes(&inner.success, puts, deletes)?;
                collect_writes(&inner.failure, puts, deletes)?;
            }
            Some(request_op::Request::RequestRange(_)) | None => {}
        }
    }
    Ok(())
}
