//! A linearizability checker for a register per key: read, write, and compare-and-set.
//!
//! A history is linearizable if every operation can be given one instant between its
//! invocation and its completion such that, taken in that order, the operations are a legal
//! run of the sequential model (here: one register per key, initially absent). That is the
//! guarantee etcd's KV API makes, so it is the bar `rampart-kv` is held to.
//!
//! # How
//! - **Per key.** Linearizability is compositional (Herlihy & Wing's locality; Horn &
//!   Kroening's P-compositionality): a history is linearizable iff each key's sub-history
//!   is. Checking keys apart turns one exponential search into many small ones.
//! - **Wing & Gong's search**, with Lowe's memoisation as in the Porcupine checker: a
//!   depth-first search over which pending operation takes effect next, on a doubly-linked
//!   list of invocation and completion entries in time order. Configurations already
//!   explored (the set of operations linearized, as a bitset, plus the register's value)
//!   are cached and never searched twice.
//! - **Two register-specific reductions** (in `search.rs`), because memoisation alone is
//!   not enough with 20 concurrent clients: the sets of concurrent operations that can be
//!   linearized in some order grow as 2^20. A read that matches the register is taken at
//!   once, as no alternative can do better; and a write that would overwrite a value some
//!   completed read still needs, when nothing can write that value again in time, is never
//!   tried. Reads of values nothing writes are reported before the search.
//!   `agrees_with_brute_force_on_small_histories` checks that none of this changes a
//!   verdict.
//! - **Unknown outcomes.** An `info` (or never completed) operation may take effect at any
//!   time after its invocation or never: its completion is at +∞, and the search succeeds
//!   once every operation with a known completion is placed. Writes and cas operations
//!   with unknown outcome whose new value nothing ever observed (no `ok` read returned it,
//!   no cas expected it) are dropped before the search: placing one only makes the reads
//!   after it fail until something overwrites it, so leaving it out is never worse, and
//!   each one kept can double the configurations a failing search explores. Failed
//!   operations and reads without an `ok` have no effect and are dropped too.
//!
//! The search is bounded ([`CheckOptions`]); when it runs out the verdict is
//! [`Verdict::Unknown`], which [`Report::is_ok`] counts as a failure: a checker that can
//! quietly give up is a checker that quietly passes.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::path::Path;

use crate::history::{self, HistoryError, Op, OpKind, Outcome};

mod search;

/// Bounds on the search for one key.
#[derive(Debug, Clone)]
pub struct CheckOptions {
    /// Search steps (one per entry visited) before the key's verdict becomes `Unknown`.
    /// Typical histories need a few steps per operation; the budget is for the
    /// pathological ones (many concurrent writes of few distinct values, or many unknown
    /// outcomes), where the search is exponential.
    pub max_steps_per_key: u64,
    /// Memory for the cache of explored configurations, per key. Each entry costs a bitset
    /// of the key's operations, so long histories with many unknown outcomes run out of
    /// memory before they run out of steps.
    pub max_cache_bytes_per_key: usize,
}

impl Default for CheckOptions {
    fn default() -> Self {
        Self {
            max_steps_per_key: 20_000_000,
            max_cache_bytes_per_key: 512 << 20,
        }
    }
}

/// The verdict on a whole history.
#[derive(Debug, Clone)]
pub struct Report {
    /// One entry per key, sorted by key.
    pub keys: Vec<KeyReport>,
}

/// The verdict on one key's sub-history.
#[derive(Debug, Clone)]
pub struct KeyReport {
    pub key: String,
    /// Operations that took part in the search.
    pub ops_checked: usize,
    /// Operations that cannot affect the verdict: failed ones, reads without a result, and
    /// writes and cas operations with unknown outcome whose value was never observed.
    pub ops_dropped: usize,
    pub steps: u64,
    pub verdict: Verdict,
}

#[derive(Debug, Clone)]
pub enum Verdict {
    Linearizable,
    Violation(Box<Violation>),
    /// The search budget ran out. Treat as a failure: nothing was proven.
    Unknown(GaveUp),
}

/// Where the search got furthest before every path failed: the likeliest place to look.
#[derive(Debug, Clone)]
pub struct Violation {
    /// The longest sequence of operations the search could linearize, in order.
    pub linearized: Vec<Op>,
    /// The register's value after `linearized` (`None`: absent).
    pub state: Option<i64>,
    /// The operation whose completion came before it could be placed: the history says it
    /// finished, but no legal order puts it anywhere.
    pub stuck: Blocked,
    /// The other operations open at that point, none of which could be placed next either.
    pub pending: Vec<Blocked>,
    /// Found before any search: `stuck` needs a value (it read it, or a cas expected it)
    /// that no operation on the key writes before `stuck` completed. `linearized` is empty.
    pub value_never_written: bool,
}

/// An operation that could not be placed next, and, when the register would have allowed
/// it, why not.
#[derive(Debug, Clone)]
pub struct Blocked {
    pub op: Op,
    /// Placing `op` would overwrite the current value, which this operation (a read or cas
    /// the history says completed) still needs, and nothing invoked before that operation's
    /// deadline could write the value again. For a stale read, this is the read; for a
    /// lost write, `op` is the write and this is the read that did not see it.
    pub needed_by: Option<Op>,
}

impl fmt::Display for Blocked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.op)?;
        if let Some(n) = &self.needed_by {
            write!(
                f,
                "\n        (would overwrite the value still needed by: {n})"
            )?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy)]
pub struct GaveUp {
    pub budget: Budget,
    /// Length of the longest linearizable prefix seen before giving up.
    pub longest_prefix: usize,
}

#[derive(Debug, Clone, Copy)]
pub enum Budget {
    Steps(u64),
    CacheBytes(usize),
}

impl Report {
    /// True only if every key is linearizable; `Unknown` is a failure.
    pub fn is_ok(&self) -> bool {
        self.keys
            .iter()
            .all(|k| matches!(k.verdict, Verdict::Linearizable))
    }

    pub fn ops_checked(&self) -> usize {
        self.keys.iter().map(|k| k.ops_checked).sum()
    }

    pub fn ops_dropped(&self) -> usize {
        self.keys.iter().map(|k| k.ops_dropped).sum()
    }

    /// The keys that are not proven linearizable.
    pub fn failures(&self) -> impl Iterator<Item = &KeyReport> {
        self.keys
            .iter()
            .filter(|k| !matches!(k.verdict, Verdict::Linearizable))
    }

    pub fn key(&self, key: &str) -> Option<&KeyReport> {
        self.keys.iter().find(|k| k.key == key)
    }
}

/// How many operations of the linearized prefix a report shows: the end of the prefix is
/// what led to the dead end; the rest is in [`Violation::linearized`].
const PREFIX_TAIL_SHOWN: usize = 10;

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let violations = self
            .keys
            .iter()
            .filter(|k| matches!(k.verdict, Verdict::Violation(_)))
            .count();
        let unknown = self
            .keys
            .iter()
            .filter(|k| matches!(k.verdict, Verdict::Unknown(_)))
            .count();
        writeln!(
            f,
            "linearizability: {} ({} keys, {} ops checked, {} dropped; {violations} not \
             linearizable, {unknown} unknown)",
            if self.is_ok() { "OK" } else { "FAILED" },
            self.keys.len(),
            self.ops_checked(),
            self.ops_dropped(),
        )?;
        for k in self.failures() {
            write!(f, "{k}")?;
        }
        Ok(())
    }
}

impl fmt::Display for KeyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.verdict {
            Verdict::Linearizable => writeln!(
                f,
                "key {:?}: linearizable ({} ops, {} steps)",
                self.key, self.ops_checked, self.steps
            ),
            Verdict::Unknown(g) => {
                let budget = match g.budget {
                    Budget::Steps(n) => format!("{n} search steps"),
                    Budget::CacheBytes(n) if n >= 1 << 20 => {
                        format!("{} MiB of search cache", n >> 20)
                    }
                    Budget::CacheBytes(n) => format!("{n} bytes of search cache"),
                };
                writeln!(
                    f,
                    "key {:?}: UNKNOWN (search budget exceeded: {budget}; longest linearizable \
                     prefix {} of {} ops). Not proven linearizable: treat as a failure, or \
                     raise CheckOptions and check again.",
                    self.key, g.longest_prefix, self.ops_checked
                )
            }
            Verdict::Violation(v) if v.value_never_written => writeln!(
                f,
                "key {:?}: NOT LINEARIZABLE. This operation needs a value that nothing on the \
                 key writes before it completed:\n    {}",
                self.key, v.stuck
            ),
            Verdict::Violation(v) => {
                let state = v
                    .state
                    .map_or_else(|| "absent".to_owned(), |s| s.to_string());
                writeln!(
                    f,
                    "key {:?}: NOT LINEARIZABLE. Longest linearizable prefix: {} of {} ops, \
                     leaving the value {state}.",
                    self.key,
                    v.linearized.len(),
                    self.ops_checked
                )?;
                writeln!(f, "  could not be linearized:\n    {}", v.stuck)?;
                if !v.pending.is_empty() {
                    writeln!(f, "  also open then, none of which fits next either:")?;
                    for op in &v.pending {
                        writeln!(f, "    {op}")?;
                    }
                }
                let skip = v.linearized.len().saturating_sub(PREFIX_TAIL_SHOWN);
                if !v.linearized.is_empty() {
                    writeln!(
                        f,
                        "  end of the linearized prefix ({} shown, oldest first):",
                        v.linearized.len() - skip
                    )?;
                    for op in &v.linearized[skip..] {
                        writeln!(f, "    {op}")?;
                    }
                }
                Ok(())
            }
        }
    }
}

/// Reads a history file and checks it with default options.
pub fn check_file(path: impl AsRef<Path>) -> Result<Report, HistoryError> {
    let ops = history::read_history(path)?;
    Ok(check_history(&ops, &CheckOptions::default()))
}

/// Checks each key's sub-history independently.
pub fn check_history(ops: &[Op], opts: &CheckOptions) -> Report {
    let mut by_key: BTreeMap<&str, Vec<&Op>> = BTreeMap::new();
    for op in ops {
        by_key.entry(op.key.as_str()).or_default().push(op);
    }
    let keys = by_key
        .into_iter()
        .map(|(key, ops)| check_key(key, &ops, opts))
        .collect();
    Report { keys }
}

fn check_key(key: &str, all: &[&Op], opts: &CheckOptions) -> KeyReport {
    let ops = relevant(all);
    let (verdict, steps) = search::run(&ops, opts.max_steps_per_key, opts.max_cache_bytes_per_key);
    KeyReport {
        key: key.to_owned(),
        ops_checked: ops.len(),
        ops_dropped: all.len() - ops.len(),
        steps,
        verdict,
    }
}

/// The operations that can affect one key's verdict (see the module docs for why the rest
/// cannot).
fn relevant<'a>(all: &[&'a Op]) -> Vec<&'a Op> {
    let mut observed = HashSet::new();
    for op in all {
        match (op.kind, op.outcome) {
            (OpKind::Read(Some(v)), Outcome::Ok) if op.complete.is_some() => {
                observed.insert(v);
            }
            (OpKind::Cas { expected, .. }, Outcome::Ok | Outcome::Info) => {
                observed.insert(expected);
            }
            _ => {}
        }
    }
    all.iter()
        .copied()
        .filter(|op| match (op.outcome, op.complete, op.kind) {
            (Outcome::Fail, ..) => false,
            (Outcome::Ok, Some(_), _) => true,
            // An `ok` without a completion time (only possible for operations built in
            // code) has no deadline, so it counts as unknown.
            (Outcome::Ok | Outcome::Info, _, OpKind::Read(_)) => false,
            (Outcome::Ok | Outcome::Info, _, OpKind::Write(v) | OpKind::Cas { new: v, .. }) => {
                observed.contains(&v)
            }
        })
        .collect()
}

#[cfg(test)]
mod tests;
