//! The search for one key: Wing & Gong with Lowe's memoisation (as in Porcupine), plus
//! two reductions that are specific to a register and that keep it fast when many clients
//! are concurrent.
//!
//! The history is a doubly-linked list of invocation and completion entries in time
//! order. Scanning from the head, every invocation before the first completion belongs to
//! an operation that may take effect next; the first completion belongs to one that must
//! have taken effect already. Taking an operation unlinks both its entries (in O(1), and
//! back in O(1) when undone); reaching a completion means undoing the latest choice and
//! trying the next candidate.

use std::collections::HashMap;

use super::{Blocked, Budget, GaveUp, Verdict, Violation};
use crate::history::{Op, OpKind, Outcome};

/// Checks one key's operations; returns the verdict and the steps it took.
pub(super) fn run(ops: &[&Op], budget_steps: u64, budget_bytes: usize) -> (Verdict, u64) {
    Search::new(ops).run(budget_steps, budget_bytes)
}

/// The register model: the new value if `op` can take effect on `state`, else `None`.
fn step(state: Option<i64>, op: &Op) -> Option<Option<i64>> {
    match op.kind {
        OpKind::Read(v) => (state == v).then_some(state),
        OpKind::Write(v) => Some(Some(v)),
        // An unknown-outcome cas that would fail here is the same as leaving it out, which
        // the search already tries, so only its successful form needs a step.
        OpKind::Cas { expected, new } => (state == Some(expected)).then_some(Some(new)),
    }
}

const NIL: u32 = u32::MAX;
const HEAD: u32 = 0;

/// One invocation or completion in the list.
#[derive(Clone, Copy)]
struct Node {
    op: u32,
    /// For an invocation, its completion's node; `NIL` for a completion.
    ret: u32,
    /// A completion at +∞ (unknown outcome).
    unbounded: bool,
    prev: u32,
    next: u32,
}

struct Search<'a> {
    ops: &'a [&'a Op],
    nodes: Vec<Node>,
    /// Zobrist keys: the hash of a set of linearized operations is the xor of its members',
    /// so it updates in O(1) as the search goes down and back up.
    zobrist: Vec<u64>,
    /// Dense ids for the register values that occur, absent included.
    values: HashMap<Option<i64>, u32>,
    /// Per operation, the value id it needs the register to hold (`ok` reads and cas) and
    /// the one it leaves there (writes and cas), or `NIL`.
    needs: Vec<u32>,
    makes: Vec<u32>,
    /// Per value id: the operations that need it, by completion time, and those that make
    /// it, by invocation time (for the overwrite check).
    needers: Vec<Vec<u32>>,
    makers: Vec<Vec<u32>>,
    deadline: Vec<u64>,
}

/// Where the search stands: the operations linearized so far and what they did.
struct Position {
    cache: Cache,
    linearized: Vec<u64>,
    /// Zobrist hash of `linearized`.
    set_hash: u64,
    state: Option<i64>,
    taken: Vec<Taken>,
    /// Per value id, the index of the first not-yet-linearized operation in `needers` and
    /// `makers`.
    needer_at: Vec<u32>,
    maker_at: Vec<u32>,
}

impl Position {
    /// Nothing linearized yet, over `ops` operations and `values` value ids.
    fn start(ops: usize, values: usize) -> Self {
        let words = ops.div_ceil(64);
        Self {
            cache: Cache::new(words),
            linearized: vec![0; words],
            set_hash: 0,
            state: None,
            taken: Vec::new(),
            needer_at: vec![0; values],
            maker_at: vec![0; values],
        }
    }
}

struct Taken {
    call: u32,
    /// The register before this operation.
    before: Option<i64>,
    /// Taken by the read reduction rather than chosen: there is no alternative to try.
    forced: bool,
    /// `needer_at` / `maker_at` before this operation moved them, or `NIL`.
    needer_was: u32,
    maker_was: u32,
}

/// The deepest dead end so far, as op indices (turned into a report at the end).
struct Deepest {
    linearized: Vec<u32>,
    state: Option<i64>,
    /// (op, what needed the value it would overwrite, or `NIL`)
    stuck: (u32, u32),
    pending: Vec<(u32, u32)>,
}

/// Whether `op` is known to have taken effect, at a known time.
fn known_ok(op: &Op) -> bool {
    op.outcome == Outcome::Ok && op.complete.is_some()
}

/// The history as a linked list behind a `HEAD` node: every operation's invocation and
/// completion (at its `deadline`), in time order, each invocation linked to its completion.
fn event_list(ops: &[&Op], deadline: &[u64]) -> Vec<Node> {
    // (time, rank, op): at equal times invocations sort before completions, so
    // operations that touch in time count as concurrent (the lenient reading of a clock
    // with finite resolution); unknown completions sort after everything.
    let mut entries: Vec<(u64, u8, u32)> = Vec::with_capacity(ops.len() * 2);
    for (i, op) in ops.iter().enumerate() {
        let i = i as u32;
        entries.push((op.invoke, 0, i));
        let rank = if known_ok(op) { 1 } else { 2 };
        entries.push((deadline[i as usize], rank, i));
    }
    entries.sort_unstable();
    let mut nodes = Vec::with_capacity(entries.len() + 1);
    nodes.push(Node {
        op: NIL,
        ret: NIL,
        unbounded: false,
        prev: NIL,
        next: NIL,
    });
    let mut ret_of = vec![NIL; ops.len()];
    for (k, &(_, rank, op)) in entries.iter().enumerate() {
        let idx = k as u32 + 1;
        nodes[k].next = idx;
        nodes.push(Node {
            op,
            ret: NIL,
            unbounded: rank == 2,
            prev: k as u32,
            next: NIL,
        });
        if rank != 0 {
            ret_of[op as usize] = idx;
        }
    }
    for (k, &(_, rank, op)) in entries.iter().enumerate() {
        if rank == 0 {
            nodes[k + 1].ret = ret_of[op as usize];
        }
    }
    nodes
}

impl<'a> Search<'a> {
    fn new(ops: &'a [&'a Op]) -> Self {
        let deadline: Vec<u64> = ops
            .iter()
            .map(|op| match (op.outcome, op.complete) {
                (Outcome::Ok, Some(t)) => t,
                _ => u64::MAX,
            })
            .collect();
        let nodes = event_list(ops, &deadline);
        let mut values = HashMap::from([(None, 0)]);
        let mut id = |v: Option<i64>| {
            let next = values.len() as u32;
            *values.entry(v).or_insert(next)
        };
        let mut needs = Vec::with_capacity(ops.len());
        let mut makes = Vec::with_capacity(ops.len());
        for op in ops {
            let (need, make) = match (op.kind, known_ok(op)) {
                (OpKind::Read(v), _) => (id(v), NIL),
                (OpKind::Write(v), _) => (NIL, id(Some(v))),
                (OpKind::Cas { expected, new }, true) => (id(Some(expected)), id(Some(new))),
                // An unknown cas need not happen, so it needs nothing.
                (OpKind::Cas { new, .. }, false) => (NIL, id(Some(new))),
            };
            needs.push(need);
            makes.push(make);
        }
        let mut needers = vec![Vec::new(); values.len()];
        let mut makers = vec![Vec::new(); values.len()];
        for op in 0..ops.len() {
            if needs[op] != NIL {
                needers[needs[op] as usize].push(op as u32);
            }
            if makes[op] != NIL {
                makers[makes[op] as usize].push(op as u32);
            }
        }
        for list in &mut needers {
            list.sort_by_key(|&op| deadline[op as usize]);
        }
        for list in &mut makers {
            list.sort_by_key(|&op| ops[op as usize].invoke);
        }
        Self {
            ops,
            nodes,
            zobrist: (0..ops.len() as u64).map(splitmix64).collect(),
            values,
            needs,
            makes,
            needers,
            makers,
            deadline,
        }
    }

    fn run(mut self, budget_steps: u64, budget_bytes: usize) -> (Verdict, u64) {
        if let Some(op) = self.needs_unwritten_value() {
            return (self.unwritten(op), 0);
        }
        let mut at = Position::start(self.ops.len(), self.values.len());
        let mut deepest: Option<Deepest> = None;
        let mut steps = 0u64;
        let mut entry = NIL;
        // At a configuration not scanned before (rather than resuming a scan after undoing
        // one choice).
        let mut fresh = true;
        loop {
            if self.nodes[HEAD as usize].next == NIL {
                return (Verdict::Linearizable, steps);
            }
            steps += 1;
            if steps > budget_steps {
                return (gave_up(Budget::Steps(budget_steps), &deepest), steps);
            }
            if at.cache.bytes > budget_bytes {
                return (gave_up(Budget::CacheBytes(budget_bytes), &deepest), steps);
            }
            if fresh {
                fresh = false;
                // Reduction 1: a pending read that matches the register can be linearized
                // first without loss of generality (a read changes nothing, and nothing still
                // pending completed before it was invoked), so it is taken without making it
                // a choice. Otherwise every interleaving of the reads open at once is a
                // configuration of its own.
                if let Some(read) = self.matching_read(at.state) {
                    if self.take(read, true, &mut at) {
                        fresh = true;
                        continue;
                    }
                    // Taking the read leads somewhere already explored, without success;
                    // since the read could go first, this configuration fails too.
                    match self.backtrack(&mut at) {
                        Some(next) => entry = next,
                        None => return (self.violation(deepest), steps),
                    }
                    continue;
                }
                entry = self.nodes[HEAD as usize].next;
            }
            let node = self.nodes[entry as usize];
            if node.ret != NIL {
                // An invocation: try to let it take effect now.
                if self.take(entry, false, &mut at) {
                    fresh = true;
                } else {
                    entry = node.next;
                }
                continue;
            }
            // A completion: its operation had to take effect by now and did not.
            if node.unbounded {
                // Every completion left is at +∞: all known outcomes are placed, and the
                // unknown ones may never have happened.
                return (Verdict::Linearizable, steps);
            }
            if deepest
                .as_ref()
                .is_none_or(|d| at.taken.len() > d.linearized.len())
            {
                deepest = Some(self.snapshot(&at, entry));
            }
            match self.backtrack(&mut at) {
                Some(next) => entry = next,
                None => return (self.violation(deepest), steps),
            }
        }
    }

    /// An operation needing a value (other than the initial absent one) that no operation
    /// invoked before its deadline writes. The search would find these too, but only after
    /// exploring every configuration before them, since no reduction applies to a value the
    /// register never holds.
    fn needs_unwritten_value(&self) -> Option<u32> {
        // Value id 0 is the absent value, which needs no writer.
        (1..self.values.len()).find_map(|value| {
            // Sorted by deadline: if the earliest needer is served, all are.
            let &first = self.needers[value].first()?;
            let served = self.makers[value]
                .first()
                .is_some_and(|&m| self.ops[m as usize].invoke <= self.deadline[first as usize]);
            (!served).then_some(first)
        })
    }

    fn unwritten(&self, op: u32) -> Verdict {
        Verdict::Violation(Box::new(Violation {
            linearized: Vec::new(),
            state: None,
            stuck: Blocked {
                op: self.ops[op as usize].clone(),
                needed_by: None,
            },
            pending: Vec::new(),
            value_never_written: true,
        }))
    }

    /// A pending invocation of a read that returned the register's current value.
    fn matching_read(&self, state: Option<i64>) -> Option<u32> {
        let mut e = self.nodes[HEAD as usize].next;
        while e != NIL {
            let node = self.nodes[e as usize];
            if node.ret == NIL {
                // Only invocations before the first completion are pending.
                return None;
            }
            if self.ops[node.op as usize].kind == OpKind::Read(state) {
                return Some(e);
            }
            e = node.next;
        }
        None
    }

    /// Reduction 2: overwriting the register is a dead end, however the rest is ordered,
    /// if some operation still needs its current value and nothing that could write that
    /// value again is invoked before that operation's deadline. With unique or rarely
    /// repeated values (the usual workloads) this rejects a wrong choice of write at once,
    /// instead of after exploring every configuration behind it. Returns that operation.
    fn overwrite_dead_end(&self, at: &Position, op: u32) -> Option<u32> {
        let value = *self.values.get(&at.state)? as usize;
        let needers = &self.needers[value];
        let mut i = at.needer_at[value] as usize;
        // Skip the operation itself (a cas using the value up) and any taken out of order.
        while i < needers.len() && (needers[i] == op || is_set(&at.linearized, needers[i])) {
            i += 1;
        }
        let needer = *needers.get(i)?;
        match self.makers[value].get(at.maker_at[value] as usize) {
            Some(&maker) if self.deadline[needer as usize] >= self.ops[maker as usize].invoke => {
                None
            }
            _ => Some(needer),
        }
    }

    /// For a report: if `op` fits the model now but reduction 2 ruled it out, the operation
    /// that still needed the value it would overwrite.
    fn needed_by(&self, at: &Position, op: u32) -> Option<u32> {
        let next = step(at.state, self.ops[op as usize])?;
        if next == at.state {
            return None;
        }
        self.overwrite_dead_end(at, op)
    }

    /// Linearizes the invocation at `call` next, unless the model forbids it, it is a dead
    /// end, or the configuration it leads to was explored before.
    fn take(&mut self, call: u32, forced: bool, at: &mut Position) -> bool {
        let op = self.nodes[call as usize].op;
        let o = op as usize;
        let Some(next) = step(at.state, self.ops[o]) else {
            return false;
        };
        if next != at.state && self.overwrite_dead_end(at, op).is_some() {
            return false;
        }
        set_bit(&mut at.linearized, op, true);
        let hash = at.set_hash ^ self.zobrist[o];
        if !at
            .cache
            .insert(hash ^ state_hash(next), &at.linearized, next)
        {
            set_bit(&mut at.linearized, op, false);
            return false;
        }
        let needer_was = advance(
            &self.needers,
            &mut at.needer_at,
            self.needs[o],
            op,
            &at.linearized,
        );
        let maker_was = advance(
            &self.makers,
            &mut at.maker_at,
            self.makes[o],
            op,
            &at.linearized,
        );
        at.taken.push(Taken {
            call,
            before: at.state,
            forced,
            needer_was,
            maker_was,
        });
        at.state = next;
        at.set_hash = hash;
        self.lift(call);
        true
    }

    /// Undoes operations back to the latest real choice; returns the entry after it, where
    /// the scan for an alternative resumes, or `None` if no choice is left.
    fn backtrack(&mut self, at: &mut Position) -> Option<u32> {
        loop {
            let t = at.taken.pop()?;
            let op = self.nodes[t.call as usize].op;
            let o = op as usize;
            at.state = t.before;
            set_bit(&mut at.linearized, op, false);
            at.set_hash ^= self.zobrist[o];
            if t.needer_was != NIL {
                at.needer_at[self.needs[o] as usize] = t.needer_was;
            }
            if t.maker_was != NIL {
                at.maker_at[self.makes[o] as usize] = t.maker_was;
            }
            self.unlift(t.call);
            if !t.forced {
                return Some(self.nodes[t.call as usize].next);
            }
        }
    }

    /// Unlinks an invocation and its completion (dancing links: their own pointers are
    /// kept, so [`Search::unlift`] can put them back in O(1), in reverse order).
    fn lift(&mut self, call: u32) {
        let c = self.nodes[call as usize];
        self.nodes[c.prev as usize].next = c.next;
        self.nodes[c.next as usize].prev = c.prev;
        let r = self.nodes[c.ret as usize];
        self.nodes[r.prev as usize].next = r.next;
        if r.next != NIL {
            self.nodes[r.next as usize].prev = r.prev;
        }
    }

    fn unlift(&mut self, call: u32) {
        let c = self.nodes[call as usize];
        let ret = c.ret;
        let r = self.nodes[ret as usize];
        self.nodes[r.prev as usize].next = ret;
        if r.next != NIL {
            self.nodes[r.next as usize].prev = ret;
        }
        self.nodes[c.prev as usize].next = call;
        self.nodes[c.next as usize].prev = call;
    }

    fn snapshot(&self, at: &Position, stuck: u32) -> Deepest {
        let stuck_op = self.nodes[stuck as usize].op;
        let mut pending = Vec::new();
        let mut e = self.nodes[HEAD as usize].next;
        while e != stuck && e != NIL {
            let node = self.nodes[e as usize];
            if node.ret != NIL && node.op != stuck_op {
                pending.push((node.op, self.needed_by(at, node.op).unwrap_or(NIL)));
            }
            e = node.next;
        }
        Deepest {
            linearized: at
                .taken
                .iter()
                .map(|t| self.nodes[t.call as usize].op)
                .collect(),
            state: at.state,
            stuck: (stuck_op, self.needed_by(at, stuck_op).unwrap_or(NIL)),
            pending,
        }
    }

    fn violation(&self, deepest: Option<Deepest>) -> Verdict {
        let op = |i: u32| self.ops[i as usize].clone();
        let blocked = |(i, needer): (u32, u32)| Blocked {
            op: op(i),
            needed_by: (needer != NIL).then(|| op(needer)),
        };
        let Some(d) = deepest else {
            // Unreachable: the search only fails at a completion, which snapshots.
            return gave_up(Budget::Steps(0), &None);
        };
        Verdict::Violation(Box::new(Violation {
            linearized: d.linearized.iter().map(|&i| op(i)).collect(),
            state: d.state,
            stuck: blocked(d.stuck),
            pending: d.pending.iter().copied().map(blocked).collect(),
            value_never_written: false,
        }))
    }
}

fn gave_up(budget: Budget, deepest: &Option<Deepest>) -> Verdict {
    Verdict::Unknown(GaveUp {
        budget,
        longest_prefix: deepest.as_ref().map_or(0, |d| d.linearized.len()),
    })
}

fn is_set(bits: &[u64], i: u32) -> bool {
    bits[i as usize / 64] & (1 << (i % 64)) != 0
}

fn set_bit(bits: &mut [u64], i: u32, on: bool) {
    let (word, bit) = (i as usize / 64, 1 << (i % 64));
    if on {
        bits[word] |= bit;
    } else {
        bits[word] &= !bit;
    }
}

/// After `op` was linearized: if it was the first not-yet-linearized entry of its value's
/// list, moves the cursor past every linearized entry and returns where it was (for undo);
/// otherwise `NIL`.
fn advance(lists: &[Vec<u32>], cursors: &mut [u32], value: u32, op: u32, bits: &[u64]) -> u32 {
    if value == NIL {
        return NIL;
    }
    let (list, cursor) = (&lists[value as usize], &mut cursors[value as usize]);
    if list.get(*cursor as usize) != Some(&op) {
        return NIL;
    }
    let was = *cursor;
    while list.get(*cursor as usize).is_some_and(|&o| is_set(bits, o)) {
        *cursor += 1;
    }
    was
}

/// Explored configurations: (set of linearized operations, register value). Bitsets live in
/// one flat arena, chained by hash, so a lookup allocates nothing and an insert appends.
struct Cache {
    words: usize,
    bits: Vec<u64>,
    states: Vec<Option<i64>>,
    /// Next entry with the same hash, or `NIL`.
    chain: Vec<u32>,
    heads: HashMap<u64, u32>,
    bytes: usize,
}

impl Cache {
    fn new(words: usize) -> Self {
        Self {
            words,
            bits: Vec::new(),
            states: Vec::new(),
            chain: Vec::new(),
            heads: HashMap::new(),
            bytes: 0,
        }
    }

    /// Inserts unless present; true if it was new.
    fn insert(&mut self, hash: u64, set: &[u64], state: Option<i64>) -> bool {
        let head = self.heads.get(&hash).copied().unwrap_or(NIL);
        let mut e = head;
        while e != NIL {
            let i = e as usize;
            if self.states[i] == state && self.bits[i * self.words..(i + 1) * self.words] == *set {
                return false;
            }
            e = self.chain[i];
        }
        let idx = self.states.len() as u32;
        self.bits.extend_from_slice(set);
        self.states.push(state);
        self.chain.push(head);
        self.heads.insert(hash, idx);
        // The bitset, state, chain link, and the hash map's key, value and control byte.
        self.bytes += self.words * 8 + 16 + 4 + 13;
        true
    }
}

pub(super) fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn state_hash(state: Option<i64>) -> u64 {
    match state {
        None => 0x005E_ED0F_AB5E_0017,
        Some(v) => splitmix64(v as u64 ^ 0xA5A5_A5A5_A5A5_A5A5),
    }
}
