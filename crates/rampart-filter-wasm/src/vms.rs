//! Each worker thread's VMs, one per plugin, and the task that drives a VM between
//! requests (ticks, queue notices, the answers to calls made from the root context).
//!
//! The gateway's workers are single-threaded runtimes, so a request, its body and the
//! tasks spawned for a VM all run on the VM's thread: no lock on the request path. A VM is
//! made on its thread's first request, or ahead of it when the filter is built; a failing
//! VM is dropped and the next call makes a new one. A request holds the serial of the VM
//! that opened its context, so it never calls a replacement with a stale context.

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use rampart_wasm::proxy_wasm::{HttpCall, QueueNotifier, ROOT, Vm};
use rampart_wasm::{Sandbox, WasmError};
use tokio::sync::Notify;

use crate::{Shared, callout};

struct Slot {
    owner: Weak<Shared>,
    vm: Vm,
}

thread_local! {
    static VMS: RefCell<HashMap<u64, Slot>> = RefCell::new(HashMap::new());
}

/// Runs `f` on this thread's VM of the plugin, making it first if needed (`serial` None),
/// or on the VM with that serial (`None` back when it is gone: it failed earlier, and that
/// failure was counted). A failure drops the VM. The time spent is measured.
pub(crate) fn with_vm<T>(
    s: &Arc<Shared>,
    serial: Option<u64>,
    f: impl FnOnce(&Sandbox, &mut Vm) -> Result<T, WasmError>,
) -> Option<Result<T, WasmError>> {
    run(s, serial, true, f)
}

fn run<T>(
    s: &Arc<Shared>,
    serial: Option<u64>,
    timed: bool,
    f: impl FnOnce(&Sandbox, &mut Vm) -> Result<T, WasmError>,
) -> Option<Result<T, WasmError>> {
    VMS.with(|cell| {
        let mut vms = cell.try_borrow_mut().ok()?;
        vms.retain(|_, slot| slot.owner.strong_count() > 0);
        let slot = match vms.entry(s.id) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                if serial.is_some() {
                    return None;
                }
                let (vm, ready) = match start(s) {
                    Ok(v) => v,
                    Err(e) => return Some(Err(e)),
                };
                spawn_driver(Arc::downgrade(s), vm.serial(), ready);
                e.insert(Slot {
                    owner: Arc::downgrade(s),
                    vm,
                })
            }
        };
        if serial.is_some_and(|want| want != slot.vm.serial()) {
            return None;
        }
        let began = timed.then(Instant::now);
        let result = f(&s.sandbox, &mut slot.vm);
        if let Some(t) = began {
            s.time.observe(t.elapsed().as_secs_f64());
        }
        for line in slot.vm.take_logs() {
            tracing::info!(plugin = %s.plugin, level = line.level, "{}", line.message);
        }
        if result.is_err() {
            vms.remove(&s.id);
        }
        Some(result)
    })
}

/// Queues with items, told by the shared-queue registry, for the driver to deliver.
#[derive(Default)]
struct Ready {
    queues: Mutex<BTreeSet<u32>>,
    notify: Notify,
}

fn start(s: &Arc<Shared>) -> Result<(Vm, Arc<Ready>), WasmError> {
    let ready = Arc::new(Ready::default());
    let notifier: QueueNotifier = {
        let ready = ready.clone();
        Arc::new(move |q| {
            ready
                .queues
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(q);
            ready.notify.notify_one();
        })
    };
    let vm = Vm::start(&s.sandbox, &s.prepared, Some(notifier))?;
    Ok((vm, ready))
}

/// Makes this thread's VM ahead of the first request (on a worker, at build).
pub(crate) fn warm(s: &Arc<Shared>) {
    if let Some(Err(e)) = run(s, None, false, |_, _| Ok(())) {
        s.failed_vm(&e);
    }
}

/// How long the driver sleeps when the plugin asked for no ticks, before it checks that
/// its VM is still there.
const IDLE: Duration = Duration::from_secs(1);

/// Drives the VM with `serial` on this thread until it is gone: ticks at the plugin's
/// period, queue notices as they come.
fn spawn_driver(owner: Weak<Shared>, serial: u64, ready: Arc<Ready>) {
    let Ok(handle) = tokio::runtime::Handle::try_current() else {
        return;
    };
    handle.spawn(async move {
        let mut next_tick: Option<Instant> = None;
        loop {
            let Some(s) = owner.upgrade() else { return };
            let Some(Ok(period)) = run(&s, Some(serial), false, |_, vm| Ok(vm.tick_period()))
            else {
                return;
            };
            drop(s);
            let now = Instant::now();
            let due = match (period, next_tick) {
                (Some(p), None) => now + p,
                (Some(_), Some(t)) => t,
                (None, _) => now + IDLE,
            };
            next_tick = period.map(|_| due);
            let ticked = tokio::select! {
                () = tokio::time::sleep_until(due.into()) => true,
                () = ready.notify.notified() => false,
            };
            let Some(s) = owner.upgrade() else { return };
            let queues: Vec<u32> =
                std::mem::take(&mut *ready.queues.lock().unwrap_or_else(PoisonError::into_inner))
                    .into_iter()
                    .collect();
            let outcome = with_vm(&s, Some(serial), |sb, vm| {
                for q in queues {
                    vm.queue_ready(sb, q)?;
                }
                if ticked && period.is_some() {
                    vm.tick(sb)?;
                }
                Ok(vm.take_calls())
            });
            if ticked {
                next_tick = None;
            }
            match outcome {
                Some(Ok(calls)) => {
                    for call in calls {
                        tokio::spawn(answer_root(owner.clone(), serial, call));
                    }
                }
                Some(Err(e)) => {
                    s.failed_vm(&e);
                    return;
                }
                None => return,
            }
        }
    });
}

/// The request's context in a VM: `proxy_on_done` / `proxy_on_log` / `proxy_on_delete`
/// run when the last holder (the request, its response body) lets go.
pub(crate) struct Stream {
    pub(crate) owner: Weak<Shared>,
    pub(crate) serial: u64,
    pub(crate) id: i32,
}

impl Drop for Stream {
    fn drop(&mut self) {
        let Some(s) = self.owner.upgrade() else {
            return;
        };
        // Not in a VM call (then the VM is busy: the context stays, as a leak would), and
        // not while the thread goes away.
        let outcome = VMS
            .try_with(|_| ())
            .ok()
            .and_then(|()| with_vm(&s, Some(self.serial), |sb, vm| vm.done(sb, self.id)));
        if let Some(Err(e)) = outcome {
            s.failed_vm(&e);
        }
    }
}

/// Sends a call the root context made (from a tick or a queue notice) and hands the answer
/// to the VM with `serial`, sending on any calls it makes in turn.
pub(crate) async fn answer_root(owner: Weak<Shared>, serial: u64, call: HttpCall) {
    let mut calls = vec![call];
    while let Some(call) = calls.pop() {
        let Some(s) = owner.upgrade() else { return };
        let answer = callout::send(&s, &call).await;
        let outcome = with_vm(&s, Some(serial), |sb, vm| {
            vm.http_call_response(sb, (ROOT, call.token), answer, None)?;
            Ok(vm.take_calls())
        });
        match outcome {
            Some(Ok(more)) => calls.extend(more),
            Some(Err(e)) => {
                s.failed_vm(&e);
                return;
            }
            None => return,
        }
    }
}
