//! Histories: what the clients of a KV store asked for and what they were told, in the
//! order they saw it.
//!
//! The on-disk format is JSON lines, one [`Event`] per line, Jepsen style:
//!
//! ```text
//! {"process":3,"type":"invoke","f":"write","key":"k1","value":7,"time":1200}
//! {"process":3,"type":"ok","f":"write","key":"k1","value":7,"time":1850}
//! {"process":4,"type":"invoke","f":"read","key":"k1","value":null,"time":1300}
//! {"process":4,"type":"ok","f":"read","key":"k1","value":7,"time":1900}
//! {"process":5,"type":"invoke","f":"cas","key":"k1","value":[7,8],"time":2000}
//! {"process":5,"type":"info","f":"cas","key":"k1","value":[7,8],"time":9000}
//! ```
//!
//! Invocations and completions are separate lines (rather than one line per finished
//! operation) because a harness that crashes, or an operation that never returns, must still
//! leave a usable history: an invocation with no completion is an operation whose outcome is
//! unknown, which the checker can reason about, while a missing line cannot be.
//!
//! `fail` means the operation certainly did not take effect (the store said so); `info`
//! means the client does not know (a timeout, a dropped connection). Conflating the two is
//! the most common way a Jepsen test lies: a timed-out write may still be applied, later.
//! Unknown fields (such as an `"error"` string) are ignored, so a harness can record
//! why an operation failed without changing the format.

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::ser::{SerializeTuple, Serializer};
use serde::{Deserialize, Serialize};

/// Why a history could not be read or written. Parse errors name the line (1-based) so the
/// harness bug behind them can be found in the file.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("history {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("history line {line}: not a valid event ({reason})")]
    Malformed { line: usize, reason: String },
    #[error(
        "history line {line}: process {process} completed {f} on key {key:?} but has no open \
         invocation (a harness must write the invoke line before the completion)"
    )]
    NoInvocation {
        line: usize,
        process: u64,
        f: Func,
        key: String,
    },
    #[error(
        "history line {line}: process {process} completed {f} on key {key:?}, but its open \
         invocation (line {invoke_line}) is {invoked_f} on key {invoked_key:?}"
    )]
    Mismatch {
        line: usize,
        invoke_line: usize,
        process: u64,
        f: Func,
        key: String,
        invoked_f: Func,
        invoked_key: String,
    },
    #[error("history line {line}: {f} {kind} has value {value}, but {rule}")]
    BadValue {
        line: usize,
        f: Func,
        kind: EventType,
        value: Value,
        rule: &'static str,
    },
    #[error(
        "history line {line}: completion time {time} is before its invocation's time {invoked} \
         (line {invoke_line}); the harness clock must be monotonic"
    )]
    TimeTravel {
        line: usize,
        invoke_line: usize,
        time: u64,
        invoked: u64,
    },
}

/// The `type` of a history line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventType {
    Invoke,
    /// The operation took effect (and, for a read, returned the value on the line).
    Ok,
    /// The operation certainly did not take effect.
    Fail,
    /// The outcome is unknown: it may take effect at any time after its invocation.
    Info,
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Invoke => "invoke",
            Self::Ok => "ok",
            Self::Fail => "fail",
            Self::Info => "info",
        })
    }
}

/// The `f` of a history line: which register operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Func {
    Read,
    Write,
    Cas,
}

impl fmt::Display for Func {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Read => "read",
            Self::Write => "write",
            Self::Cas => "cas",
        })
    }
}

/// The `value` of a history line: `null`, an integer, or `[expected, new]` for a cas.
///
/// Typed rather than `serde_json::Value` so that a harness cannot write a value the checker
/// would reject, and so that parse errors happen at the line that is wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Value {
    #[default]
    Null,
    Int(i64),
    Pair(i64, i64),
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Null => f.write_str("null"),
            Self::Int(v) => write!(f, "{v}"),
            Self::Pair(a, b) => write!(f, "[{a}, {b}]"),
        }
    }
}

impl Serialize for Value {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match *self {
            Self::Null => s.serialize_unit(),
            Self::Int(v) => s.serialize_i64(v),
            Self::Pair(a, b) => {
                let mut t = s.serialize_tuple(2)?;
                t.serialize_element(&a)?;
                t.serialize_element(&b)?;
                t.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Value;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("null, an integer, or a pair of integers [expected, new]")
            }
            fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
                Ok(Value::Null)
            }
            fn visit_none<E: de::Error>(self) -> Result<Value, E> {
                Ok(Value::Null)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
                Ok(Value::Int(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
                i64::try_from(v)
                    .map(Value::Int)
                    .map_err(|_| E::custom(format!("integer {v} does not fit in i64")))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
                let a = seq
                    .next_element()?
                    .ok_or_else(|| de::Error::invalid_length(0, &self))?;
                let b = seq
                    .next_element()?
                    .ok_or_else(|| de::Error::invalid_length(1, &self))?;
                if seq.next_element::<de::IgnoredAny>()?.is_some() {
                    return Err(de::Error::invalid_length(3, &self));
                }
                Ok(Value::Pair(a, b))
            }
        }
        d.deserialize_any(V)
    }
}

/// One line of a history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// A client's logical identity. One process runs one operation at a time; Jepsen gives
    /// a process that saw `info` a new number, since its old operation may still be running.
    pub process: u64,
    #[serde(rename = "type")]
    pub kind: EventType,
    pub f: Func,
    pub key: String,
    #[serde(default)]
    pub value: Value,
    /// Nanoseconds since the start of the run, from one monotonic clock for all processes.
    pub time: u64,
}

/// What an operation did to its key's register.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpKind {
    /// For a completed (`ok`) read, the value it returned; `None` means the key was absent.
    /// Reads that did not complete `ok` carry `None` and are ignored by the checker.
    Read(Option<i64>),
    Write(i64),
    Cas {
        expected: i64,
        new: i64,
    },
}

/// How an operation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    Ok,
    Fail,
    /// Unknown: an `info` completion, or no completion before the history ended.
    Info,
}

/// An invocation paired with its completion: the unit the checker reasons about.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Op {
    pub process: u64,
    pub key: String,
    pub kind: OpKind,
    pub outcome: Outcome,
    /// Invocation time (ns).
    pub invoke: u64,
    /// Completion time (ns) as recorded; `None` if the history ended first. For an `info`
    /// outcome this is only when the client gave up: the checker treats the operation as
    /// still running forever after. The parser never gives an `ok` operation `None`; the
    /// checker treats one built that way as unknown.
    pub complete: Option<u64>,
}

impl Op {
    pub fn f(&self) -> Func {
        match self.kind {
            OpKind::Read(_) => Func::Read,
            OpKind::Write(_) => Func::Write,
            OpKind::Cas { .. } => Func::Cas,
        }
    }
}

/// Seconds with microsecond precision: readable, and fine enough to order operations by eye.
struct Secs(u64);

impl fmt::Display for Secs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}.{:06}s",
            self.0 / 1_000_000_000,
            self.0 % 1_000_000_000 / 1000
        )
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "process {} ", self.process)?;
        match self.kind {
            OpKind::Read(v) => match (self.outcome, v) {
                (Outcome::Ok, Some(v)) => write!(f, "read -> {v}")?,
                (Outcome::Ok, None) => write!(f, "read -> null")?,
                _ => write!(f, "read")?,
            },
            OpKind::Write(v) => write!(f, "write {v}")?,
            OpKind::Cas { expected, new } => write!(f, "cas {expected} -> {new}")?,
        }
        let outcome = match self.outcome {
            Outcome::Ok => "ok",
            Outcome::Fail => "fail",
            Outcome::Info => "info",
        };
        write!(f, " {outcome} [invoked {}, ", Secs(self.invoke))?;
        match (self.outcome, self.complete) {
            (Outcome::Info, Some(t)) => write!(f, "gave up {}, may apply until forever]", Secs(t)),
            (_, Some(t)) => write!(f, "completed {}]", Secs(t)),
            (_, None) => write!(f, "never completed]"),
        }
    }
}

/// Reads a history file. See [`parse_history`].
pub fn read_history(path: impl AsRef<Path>) -> Result<Vec<Op>, HistoryError> {
    let path = path.as_ref();
    let file = File::open(path).map_err(|source| HistoryError::Io {
        path: path.to_owned(),
        source,
    })?;
    parse_history(BufReader::new(file)).map_err(|e| match e {
        HistoryError::Io { source, .. } => HistoryError::Io {
            path: path.to_owned(),
            source,
        },
        other => other,
    })
}

/// Parses JSON lines (blank lines are skipped) and pairs them into operations, in the order
/// of their invocations.
///
/// A completion pairs with its process's latest open invocation. Real Jepsen never gives a
/// process two open operations, but if a harness does, the earlier one simply stays open,
/// which is the honest reading: its outcome is unknown. Invocations still open at the end
/// become [`Outcome::Info`] with no completion time.
pub fn parse_history(reader: impl BufRead) -> Result<Vec<Op>, HistoryError> {
    let mut pairer = Pairer::default();
    for (i, line) in reader.lines().enumerate() {
        let line_no = i + 1;
        let line = line.map_err(|source| HistoryError::Io {
            path: PathBuf::new(),
            source,
        })?;
        if line.trim().is_empty() {
            continue;
        }
        let event: Event = serde_json::from_str(&line).map_err(|e| HistoryError::Malformed {
            line: line_no,
            reason: e.to_string(),
        })?;
        pairer.push(line_no, event)?;
    }
    Ok(pairer.finish())
}

/// Pairs events that are already in memory; errors count events from 1 as "lines".
pub fn pair_events(events: &[Event]) -> Result<Vec<Op>, HistoryError> {
    let mut pairer = Pairer::default();
    for (i, e) in events.iter().enumerate() {
        pairer.push(i + 1, e.clone())?;
    }
    Ok(pairer.finish())
}

#[derive(Default)]
struct Pairer {
    ops: Vec<Op>,
    /// Per process, its open invocations as (index into `ops`, line), latest last.
    open: HashMap<u64, Vec<(usize, usize)>>,
}

impl Pairer {
    fn push(&mut self, line: usize, e: Event) -> Result<(), HistoryError> {
        if e.kind == EventType::Invoke {
            self.invoke(line, e)
        } else {
            self.complete(line, e)
        }
    }

    /// Opens an operation for the event's process.
    fn invoke(&mut self, line: usize, e: Event) -> Result<(), HistoryError> {
        let kind = match (e.f, e.value) {
            (Func::Read, Value::Null) => OpKind::Read(None),
            (Func::Read, _) => return Err(bad_value(line, &e, "a read is invoked with null")),
            (Func::Write, Value::Int(v)) => OpKind::Write(v),
            (Func::Write, _) => {
                return Err(bad_value(line, &e, "a write is invoked with an integer"));
            }
            (Func::Cas, Value::Pair(expected, new)) => OpKind::Cas { expected, new },
            (Func::Cas, _) => {
                return Err(bad_value(line, &e, "a cas is invoked with [expected, new]"));
            }
        };
        self.open
            .entry(e.process)
            .or_default()
            .push((self.ops.len(), line));
        self.ops.push(Op {
            process: e.process,
            key: e.key,
            kind,
            outcome: Outcome::Info,
            invoke: e.time,
            complete: None,
        });
        Ok(())
    }

    /// Completes the process's latest open operation, which must be for the same function
    /// and key, and not later than the completion.
    fn complete(&mut self, line: usize, e: Event) -> Result<(), HistoryError> {
        let Some((idx, invoke_line)) = self.open.get_mut(&e.process).and_then(Vec::pop) else {
            return Err(HistoryError::NoInvocation {
                line,
                process: e.process,
                f: e.f,
                key: e.key,
            });
        };
        let op = &mut self.ops[idx];
        if op.f() != e.f || op.key != e.key {
            return Err(HistoryError::Mismatch {
                line,
                invoke_line,
                process: e.process,
                f: e.f,
                key: e.key,
                invoked_f: op.f(),
                invoked_key: op.key.clone(),
            });
        }
        if e.time < op.invoke {
            return Err(HistoryError::TimeTravel {
                line,
                invoke_line,
                time: e.time,
                invoked: op.invoke,
            });
        }
        op.kind = completed_kind(op.kind, line, &e)?;
        op.outcome = match e.kind {
            EventType::Ok => Outcome::Ok,
            EventType::Fail => Outcome::Fail,
            EventType::Info | EventType::Invoke => Outcome::Info,
        };
        op.complete = Some(e.time);
        Ok(())
    }

    fn finish(self) -> Vec<Op> {
        self.ops
    }
}

/// The operation as its completion `e` leaves it: an `ok` read learns the value it read;
/// anything else must repeat its invoked value, or be null.
fn completed_kind(kind: OpKind, line: usize, e: &Event) -> Result<OpKind, HistoryError> {
    match (kind, e.value) {
        (OpKind::Read(_), v) if e.kind == EventType::Ok => Ok(OpKind::Read(match v {
            Value::Null => None,
            Value::Int(v) => Some(v),
            Value::Pair(..) => {
                return Err(bad_value(line, e, "a read returns null or an integer"));
            }
        })),
        // Failed or unknown reads returned nothing; whatever the line says is ignored.
        (OpKind::Read(_), _) | (OpKind::Write(_) | OpKind::Cas { .. }, Value::Null) => Ok(kind),
        (OpKind::Write(w), Value::Int(v)) if w == v => Ok(kind),
        (OpKind::Write(_), _) => Err(bad_value(
            line,
            e,
            "a write's completion repeats its invoked value or is null",
        )),
        (OpKind::Cas { expected, new }, Value::Pair(a, b)) if (a, b) == (expected, new) => Ok(kind),
        (OpKind::Cas { .. }, _) => Err(bad_value(
            line,
            e,
            "a cas's completion repeats its invoked pair or is null",
        )),
    }
}

fn bad_value(line: usize, e: &Event, rule: &'static str) -> HistoryError {
    HistoryError::BadValue {
        line,
        f: e.f,
        kind: e.kind,
        value: e.value,
        rule,
    }
}

/// Appends events to a history file from many client tasks at once.
///
/// The timestamp is taken while holding the lock, so lines in the file are in time order and
/// an invocation written before a completion can never carry a later time: the checker's
/// real-time order is exactly the order in which the harness observed things. The lock is
/// held only for formatting into a buffer, never across an `.await`, so a std mutex is the
/// right tool even in an async harness. Lines reach the file when the buffer fills, on
/// [`HistoryWriter::flush`], and on drop (where errors are lost: flush before you check).
pub struct HistoryWriter {
    start: Instant,
    path: PathBuf,
    out: Mutex<BufWriter<File>>,
}

impl fmt::Debug for HistoryWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HistoryWriter")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl HistoryWriter {
    /// Creates (or truncates) the file; time zero is now.
    pub fn create(path: impl AsRef<Path>) -> Result<Self, HistoryError> {
        Self::with_start(path, Instant::now())
    }

    /// Like [`HistoryWriter::create`] with a caller-chosen time zero, so that several files
    /// (say, a history and a nemesis log) share one timeline.
    pub fn with_start(path: impl AsRef<Path>, start: Instant) -> Result<Self, HistoryError> {
        let path = path.as_ref().to_owned();
        let file = File::create(&path).map_err(|source| HistoryError::Io {
            path: path.clone(),
            source,
        })?;
        Ok(Self {
            start,
            path,
            out: Mutex::new(BufWriter::new(file)),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Nanoseconds since time zero on the writer's clock.
    pub fn elapsed_ns(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Stamps and appends one event; returns the time it was given.
    pub fn record(
        &self,
        process: u64,
        kind: EventType,
        f: Func,
        key: &str,
        value: Value,
    ) -> Result<u64, HistoryError> {
        let mut out = self.out.lock().unwrap_or_else(PoisonError::into_inner);
        let time = self.elapsed_ns();
        let event = Event {
            process,
            kind,
            f,
            key: key.to_owned(),
            value,
            time,
        };
        Self::append(&mut out, &event).map_err(|source| self.io_err(source))?;
        Ok(time)
    }

    /// Appends an event as given, with its own time (for replaying or merging histories).
    pub fn write_event(&self, event: &Event) -> Result<(), HistoryError> {
        let mut out = self.out.lock().unwrap_or_else(PoisonError::into_inner);
        Self::append(&mut out, event).map_err(|source| self.io_err(source))
    }

    pub fn flush(&self) -> Result<(), HistoryError> {
        let mut out = self.out.lock().unwrap_or_else(PoisonError::into_inner);
        out.flush().map_err(|source| self.io_err(source))
    }

    fn append(out: &mut BufWriter<File>, event: &Event) -> io::Result<()> {
        serde_json::to_writer(&mut *out, event)?;
        out.write_all(b"\n")
    }

    fn io_err(&self, source: io::Error) -> HistoryError {
        HistoryError::Io {
            path: self.path.clone(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Vec<Op>, HistoryError> {
        parse_history(text.as_bytes())
    }

    #[test]
    fn pairs_invocations_with_completions() {
        let ops = parse(
            r#"{"process":1,"type":"invoke","f":"write","key":"a","value":3,"time":10}
{"process":2,"type":"invoke","f":"read","key":"a","value":null,"time":11}

{"process":2,"type":"ok","f":"read","key":"a","value":3,"time":20}
{"process":1,"type":"ok","f":"write","key":"a","value":3,"time":21,"error":"ignored"}
{"process":3,"type":"invoke","f":"cas","key":"b","value":[1,2],"time":30}
{"process":3,"type":"info","f":"cas","key":"b","time":40}
{"process":4,"type":"invoke","f":"read","key":"b","time":50}
{"process":4,"type":"ok","f":"read","key":"b","value":null,"time":51}
{"process":5,"type":"invoke","f":"write","key":"b","value":9,"time":60}
"#,
        )
        .unwrap();
        assert_eq!(ops.len(), 5);
        assert_eq!(ops[0].kind, OpKind::Write(3));
        assert_eq!((ops[0].outcome, ops[0].complete), (Outcome::Ok, Some(21)));
        assert_eq!(ops[1].kind, OpKind::Read(Some(3)));
        assert_eq!(
            ops[2].kind,
            OpKind::Cas {
                expected: 1,
                new: 2
            }
        );
        assert_eq!(ops[2].outcome, Outcome::Info);
        assert_eq!(ops[3].kind, OpKind::Read(None));
        assert_eq!(ops[3].outcome, Outcome::Ok);
        assert_eq!((ops[4].outcome, ops[4].complete), (Outcome::Info, None));
    }

    #[test]
    fn a_reused_process_pairs_with_its_latest_open_invocation() {
        let ops = parse(
            r#"{"process":1,"type":"invoke","f":"write","key":"a","value":1,"time":1}
{"process":1,"type":"invoke","f":"write","key":"a","value":2,"time":2}
{"process":1,"type":"ok","f":"write","key":"a","value":2,"time":3}
"#,
        )
        .unwrap();
        assert_eq!((ops[0].outcome, ops[0].complete), (Outcome::Info, None));
        assert_eq!((ops[1].outcome, ops[1].complete), (Outcome::Ok, Some(3)));
    }

    #[test]
    fn errors_name_the_line_and_the_problem() {
        let cases = [
            ("{\"process\":1}\n", "history line 1: not a valid event"),
            (
                "\n{\"process\":1,\"type\":\"ok\",\"f\":\"read\",\"key\":\"a\",\"value\":1,\"time\":1}\n",
                "history line 2: process 1 completed read on key \"a\" but has no open invocation",
            ),
            (
                "{\"process\":1,\"type\":\"invoke\",\"f\":\"write\",\"key\":\"a\",\"value\":null,\"time\":1}\n",
                "history line 1: write invoke has value null, but a write is invoked with an integer",
            ),
            (
                "{\"process\":1,\"type\":\"invoke\",\"f\":\"cas\",\"key\":\"a\",\"value\":[1,2,3],\"time\":1}\n",
                "history line 1: not a valid event (invalid length 3",
            ),
            (
                "{\"process\":1,\"type\":\"invoke\",\"f\":\"read\",\"key\":\"a\",\"time\":5}\n\
                 {\"process\":1,\"type\":\"ok\",\"f\":\"write\",\"key\":\"a\",\"value\":1,\"time\":6}\n",
                "history line 2: process 1 completed write on key \"a\", but its open invocation \
                 (line 1) is read on key \"a\"",
            ),
            (
                "{\"process\":1,\"type\":\"invoke\",\"f\":\"read\",\"key\":\"a\",\"time\":5}\n\
                 {\"process\":1,\"type\":\"ok\",\"f\":\"read\",\"key\":\"a\",\"value\":1,\"time\":4}\n",
                "history line 2: completion time 4 is before its invocation's time 5",
            ),
            (
                "{\"process\":1,\"type\":\"invoke\",\"f\":\"write\",\"key\":\"a\",\"value\":1,\"time\":5}\n\
                 {\"process\":1,\"type\":\"ok\",\"f\":\"write\",\"key\":\"a\",\"value\":2,\"time\":6}\n",
                "history line 2: write ok has value 2, but a write's completion repeats",
            ),
            (
                "{\"process\":1,\"type\":\"invoke\",\"f\":\"write\",\"key\":\"a\",\"value\":18446744073709551615,\"time\":5}\n",
                "does not fit in i64",
            ),
        ];
        for (text, want) in cases {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.contains(want), "{err:?} does not contain {want:?}");
        }
    }

    #[test]
    fn writer_output_parses_back_in_time_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("history.jsonl");
        let w = std::sync::Arc::new(HistoryWriter::create(&path).unwrap());
        let threads: Vec<_> = (0..4u64)
            .map(|p| {
                let w = w.clone();
                std::thread::spawn(move || {
                    for v in 0..50 {
                        let key = format!("k{p}");
                        w.record(p, EventType::Invoke, Func::Write, &key, Value::Int(v))
                            .unwrap();
                        w.record(p, EventType::Ok, Func::Write, &key, Value::Int(v))
                            .unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        w.write_event(&Event {
            process: 9,
            kind: EventType::Invoke,
            f: Func::Cas,
            key: "c".into(),
            value: Value::Pair(1, 2),
            time: w.elapsed_ns(),
        })
        .unwrap();
        w.flush().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let times: Vec<u64> = text
            .lines()
            .map(|l| serde_json::from_str::<Event>(l).unwrap().time)
            .collect();
        assert!(
            times.windows(2).all(|w| w[0] <= w[1]),
            "file order is time order"
        );
        let ops = read_history(&path).unwrap();
        assert_eq!(ops.len(), 201);
        assert!(ops[..200].iter().all(|o| o.outcome == Outcome::Ok));
        assert_eq!(
            ops[200].kind,
            OpKind::Cas {
                expected: 1,
                new: 2
            }
        );
    }
}
