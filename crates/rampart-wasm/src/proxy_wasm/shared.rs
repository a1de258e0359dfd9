//! Shared data (a key-value map with compare-and-swap) and shared queues: how a plugin's
//! VMs on different worker threads talk to each other. Both belong to a VM id, live as
//! long as the process, and are bounded: a plugin cannot grow the host's memory without
//! limit through them.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, PoisonError};

use wasmtime::Caller;

use super::abi::{self, BAD_ARGUMENT, CAS_MISMATCH, EMPTY, INVALID_MEMORY_ACCESS, NOT_FOUND, OK};
use super::host::Host;

/// Bytes of keys and values one VM id may keep in shared data.
pub const MAX_SHARED_BYTES: usize = 16 << 20;
/// Items one queue holds; enqueueing more drops the oldest.
pub const MAX_QUEUE_ITEMS: usize = 4096;
/// Queues one VM id may register.
const MAX_QUEUES: usize = 256;

/// Told the id of a queue that has items: the registrant's thread calls
/// `proxy_on_queue_ready` (see [`super::Vm::queue_ready`]).
pub type QueueNotifier = Arc<dyn Fn(u32) + Send + Sync>;

#[derive(Default)]
struct Data {
    entries: HashMap<Vec<u8>, (Vec<u8>, u32)>,
    bytes: usize,
}

struct Queue {
    items: VecDeque<Vec<u8>>,
    notify: Option<QueueNotifier>,
}

#[derive(Default)]
struct Registry {
    data: HashMap<String, Data>,
    queues: Vec<Queue>,
    queue_ids: HashMap<(String, Vec<u8>), u32>,
    next_cas: u32,
}

static REGISTRY: LazyLock<Mutex<Registry>> = LazyLock::new(Mutex::default);

fn registry() -> MutexGuard<'static, Registry> {
    REGISTRY.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Registry {
    fn cas(&mut self) -> u32 {
        self.next_cas = self.next_cas.wrapping_add(1).max(1);
        self.next_cas
    }

    fn set(&mut self, vm: &str, key: Vec<u8>, value: Vec<u8>, cas: u32) -> i32 {
        let next = self.cas();
        let data = self.data.entry(vm.to_owned()).or_default();
        let old = data.entries.get(&key);
        if cas != 0 && old.is_some_and(|(_, c)| *c != cas) {
            return CAS_MISMATCH;
        }
        let freed = old.map_or(0, |(v, _)| key.len() + v.len());
        let bytes = data.bytes - freed + key.len() + value.len();
        if bytes > MAX_SHARED_BYTES {
            return BAD_ARGUMENT;
        }
        data.bytes = bytes;
        data.entries.insert(key, (value, next));
        OK
    }
}

pub(super) fn get_shared_data(
    mut caller: Caller<'_, Host>,
    key: (i32, i32),
    out: (i32, i32),
    cas_out: i32,
) -> i32 {
    let Some(key) = abi::read(&mut caller, key.0, key.1) else {
        return INVALID_MEMORY_ACCESS;
    };
    let found = registry()
        .data
        .get(&caller.data().plugin.vm_id)
        .and_then(|d| d.entries.get(&key).cloned());
    let Some((value, cas)) = found else {
        return NOT_FOUND;
    };
    if !abi::write(&mut caller, cas_out, &cas.to_le_bytes()) {
        return INVALID_MEMORY_ACCESS;
    }
    abi::give(&mut caller, &value, out.0, out.1)
}

pub(super) fn set_shared_data(
    mut caller: Caller<'_, Host>,
    key: (i32, i32),
    value: (i32, i32),
    cas: i32,
) -> i32 {
    let (Some(key), Some(value)) = (
        abi::read(&mut caller, key.0, key.1),
        abi::read(&mut caller, value.0, value.1),
    ) else {
        return INVALID_MEMORY_ACCESS;
    };
    let cas = u32::from_le_bytes(cas.to_le_bytes());
    registry().set(&caller.data().plugin.vm_id, key, value, cas)
}

/// Registers (or takes over: the last registrant is told) the queue `name` of this VM id.
pub(super) fn register_queue(mut caller: Caller<'_, Host>, name: (i32, i32), id_out: i32) -> i32 {
    let Some(name) = abi::read(&mut caller, name.0, name.1) else {
        return INVALID_MEMORY_ACCESS;
    };
    let vm = caller.data().plugin.vm_id.clone();
    let notify = caller.data().notifier.clone();
    let id = {
        let mut r = registry();
        let registered = r.queue_ids.keys().filter(|(v, _)| *v == vm).count();
        match r.queue_ids.get(&(vm.clone(), name.clone())).copied() {
            Some(id) => {
                if let Some(q) = usize::try_from(id).ok().and_then(|i| r.queues.get_mut(i)) {
                    q.notify = notify;
                }
                id
            }
            None if registered < MAX_QUEUES => {
                let id = u32::try_from(r.queues.len()).unwrap_or(u32::MAX);
                r.queues.push(Queue {
                    items: VecDeque::new(),
                    notify,
                });
                r.queue_ids.insert((vm, name), id);
                id
            }
            None => return BAD_ARGUMENT,
        }
    };
    if abi::write(&mut caller, id_out, &id.to_le_bytes()) {
        OK
    } else {
        INVALID_MEMORY_ACCESS
    }
}

pub(super) fn resolve_queue(
    mut caller: Caller<'_, Host>,
    vm: (i32, i32),
    name: (i32, i32),
    id_out: i32,
) -> i32 {
    let (Some(vm), Some(name)) = (
        abi::read(&mut caller, vm.0, vm.1),
        abi::read(&mut caller, name.0, name.1),
    ) else {
        return INVALID_MEMORY_ACCESS;
    };
    let vm = String::from_utf8_lossy(&vm).into_owned();
    let Some(id) = registry().queue_ids.get(&(vm, name)).copied() else {
        return NOT_FOUND;
    };
    if abi::write(&mut caller, id_out, &id.to_le_bytes()) {
        OK
    } else {
        INVALID_MEMORY_ACCESS
    }
}

pub(super) fn enqueue(mut caller: Caller<'_, Host>, id: i32, value: (i32, i32)) -> i32 {
    let Some(value) = abi::read(&mut caller, value.0, value.1) else {
        return INVALID_MEMORY_ACCESS;
    };
    let id = u32::from_le_bytes(id.to_le_bytes());
    let notify = {
        let mut r = registry();
        let Some(q) = usize::try_from(id).ok().and_then(|i| r.queues.get_mut(i)) else {
            return NOT_FOUND;
        };
        if q.items.len() >= MAX_QUEUE_ITEMS {
            q.items.pop_front();
        }
        q.items.push_back(value);
        q.notify.clone()
    };
    // Told outside the lock: the notifier may wake another thread's VM.
    if let Some(n) = notify {
        n(id);
    }
    OK
}

pub(super) fn dequeue(mut caller: Caller<'_, Host>, id: i32, out: (i32, i32)) -> i32 {
    let id = u32::from_le_bytes(id.to_le_bytes());
    let item = {
        let mut r = registry();
        let Some(q) = usize::try_from(id).ok().and_then(|i| r.queues.get_mut(i)) else {
            return NOT_FOUND;
        };
        q.items.pop_front()
    };
    match item {
        Some(v) => abi::give(&mut caller, &v, out.0, out.1),
        None => EMPTY,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compare_and_swap_and_the_byte_bound() {
        let mut r = Registry::default();
        assert_eq!(r.set("vm", b"k".to_vec(), b"1".to_vec(), 0), OK);
        let cas = r.data["vm"].entries[&b"k".to_vec()].1;
        assert_eq!(
            r.set("vm", b"k".to_vec(), b"2".to_vec(), cas + 1),
            CAS_MISMATCH
        );
        assert_eq!(r.set("vm", b"k".to_vec(), b"2".to_vec(), cas), OK);
        assert_eq!(r.set("vm", b"k".to_vec(), b"3".to_vec(), cas), CAS_MISMATCH);
        assert_eq!(r.data["vm"].bytes, 2);
        let big = vec![0; MAX_SHARED_BYTES];
        assert_eq!(r.set("vm", b"big".to_vec(), big, 0), BAD_ARGUMENT);
        assert_eq!(r.data["vm"].bytes, 2, "a refused set takes no room");
        assert!(!r.data.contains_key("other"));
    }
}
