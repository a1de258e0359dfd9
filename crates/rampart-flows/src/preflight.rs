//! Checks run before anything is loaded, so that a missing privilege or kernel feature gives an
//! actionable [`FlowsError`] instead of a bare `EPERM` from deep inside the loader.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::FlowsError;

/// Capability bits in `CapEff` (include/uapi/linux/capability.h).
const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Every tracepoint the programs attach to, as `(category, name)`.
pub(crate) const TRACEPOINTS: &[(&str, &str, &str)] = &[
    ("sock", "inet_sock_set_state", "sock:inet_sock_set_state"),
    ("sock", "sock_send_length", "sock:sock_send_length"),
    ("sock", "sock_recv_length", "sock:sock_recv_length"),
    ("tcp", "tcp_destroy_sock", "tcp:tcp_destroy_sock"),
    ("tcp", "tcp_retransmit_skb", "tcp:tcp_retransmit_skb"),
    ("tcp", "tcp_send_reset", "tcp:tcp_send_reset"),
    ("tcp", "tcp_receive_reset", "tcp:tcp_receive_reset"),
];

/// Where the checks look; tests point these at a temporary directory.
#[derive(Debug, Clone)]
pub(crate) struct SystemPaths {
    pub(crate) proc_status: PathBuf,
    pub(crate) btf: PathBuf,
    /// The tracefs mount point (`/sys/kernel/tracing`).
    pub(crate) tracefs: PathBuf,
    /// The legacy location under debugfs; aya uses it when the tracefs mount point is empty.
    pub(crate) debugfs_tracing: PathBuf,
}

impl SystemPaths {
    pub(crate) fn system() -> Self {
        Self {
            proc_status: "/proc/self/status".into(),
            btf: "/sys/kernel/btf/vmlinux".into(),
            tracefs: "/sys/kernel/tracing".into(),
            debugfs_tracing: "/sys/kernel/debug/tracing".into(),
        }
    }

    /// The `events` directory aya will read tracepoint ids from: the tracefs mount point when
    /// it exists and is not empty, else the debugfs location (aya's `find_tracefs_path`).
    fn events_dir(&self) -> PathBuf {
        let populated =
            |dir: &PathBuf| fs::read_dir(dir).is_ok_and(|mut entries| entries.next().is_some());
        if !populated(&self.tracefs) && populated(&self.debugfs_tracing) {
            self.debugfs_tracing.join("events")
        } else {
            self.tracefs.join("events")
        }
    }
}

/// Runs every check; with `mount_tracefs`, mounts tracefs when it is missing.
pub(crate) fn check(paths: &SystemPaths, mount_tracefs: bool) -> Result<(), FlowsError> {
    privileges_and_btf(paths, check_privileges)?;

    let mut events = paths.events_dir();
    if !events.is_dir() {
        if !mount_tracefs {
            return Err(FlowsError::TracefsNotMounted { events });
        }
        mount(&paths.tracefs)?;
        events = paths.events_dir();
        if !events.is_dir() {
            return Err(FlowsError::TracefsNotMounted { events });
        }
    }

    for (category, name, full) in TRACEPOINTS {
        let path = events.join(category).join(name);
        if !path.is_dir() {
            return Err(FlowsError::MissingTracepoint { name: full, path });
        }
    }
    Ok(())
}

/// The checks for [`crate::TcCounter`]: CAP_BPF (or CAP_SYS_ADMIN) and CAP_NET_ADMIN, and
/// kernel BTF (the context accesses are CO-RE relocated). No tracefs: TC needs none.
pub(crate) fn check_tc(paths: &SystemPaths) -> Result<(), FlowsError> {
    privileges_and_btf(paths, check_tc_privileges)?;
    Ok(())
}

/// Reads this process's capabilities and applies `rule` to them, then checks for kernel BTF.
fn privileges_and_btf(
    paths: &SystemPaths,
    rule: fn(&str) -> Result<(), PrivError>,
) -> Result<(), FlowsError> {
    let status =
        fs::read_to_string(&paths.proc_status).map_err(|source| FlowsError::ProcStatus {
            path: paths.proc_status.clone(),
            source,
        })?;
    rule(&status).map_err(|e| match e {
        PrivError::Unparsable(what) => FlowsError::ProcStatus {
            path: paths.proc_status.clone(),
            source: io::Error::new(io::ErrorKind::InvalidData, what),
        },
        PrivError::Denied(e) => e,
    })?;
    if !paths.btf.exists() {
        return Err(FlowsError::NoBtf {
            path: paths.btf.clone(),
        });
    }
    Ok(())
}

fn mount(target: &Path) -> Result<(), FlowsError> {
    rustix::mount::mount(
        "tracefs",
        target,
        "tracefs",
        rustix::mount::MountFlags::empty(),
        None,
    )
    .map_err(|e| FlowsError::TracefsMount {
        target: target.to_owned(),
        source: e.into(),
    })
}

#[derive(Debug)]
enum PrivError {
    Unparsable(&'static str),
    Denied(FlowsError),
}

/// `(euid, CapEff)` from the text of `/proc/self/status`.
fn euid_and_caps(status: &str) -> Result<(u32, u64), PrivError> {
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name).map(str::trim))
            .ok_or(PrivError::Unparsable("no such field"))
    };
    // "Uid:\treal\teffective\tsaved\tfs"
    let euid = field("Uid:")?
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u32>().ok())
        .ok_or(PrivError::Unparsable("bad Uid line"))?;
    let cap_eff = u64::from_str_radix(field("CapEff:")?, 16)
        .map_err(|_| PrivError::Unparsable("bad CapEff line"))?;
    Ok((euid, cap_eff))
}

/// The names of the capabilities in `wanted` that `cap_eff` lacks, comma-separated.
fn missing(cap_eff: u64, wanted: &[(u32, &str)]) -> String {
    let names: Vec<&str> = wanted
        .iter()
        .filter(|(bit, _)| cap_eff & (1u64 << bit) == 0)
        .map(|(_, name)| *name)
        .collect();
    names.join(", ")
}

/// Decides from the text of `/proc/self/status`: CAP_BPF + CAP_PERFMON (or CAP_SYS_ADMIN,
/// which implies both on older kernels) in the effective set. Root normally has them all;
/// root in a container that dropped them does not, and gets the error naming what is missing.
fn check_privileges(status: &str) -> Result<(), PrivError> {
    let (euid, cap_eff) = euid_and_caps(status)?;
    let has = |bit: u32| cap_eff & (1u64 << bit) != 0;

    if has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON)) {
        return Ok(());
    }
    Err(PrivError::Denied(FlowsError::NotPermitted {
        euid,
        missing: missing(
            cap_eff,
            &[(CAP_BPF, "CAP_BPF"), (CAP_PERFMON, "CAP_PERFMON")],
        ),
    }))
}

/// For TC: CAP_NET_ADMIN (qdiscs and filters over netlink) and CAP_BPF (or CAP_SYS_ADMIN).
fn check_tc_privileges(status: &str) -> Result<(), PrivError> {
    let (euid, cap_eff) = euid_and_caps(status)?;
    let has = |bit: u32| cap_eff & (1u64 << bit) != 0;

    if has(CAP_NET_ADMIN) && (has(CAP_BPF) || has(CAP_SYS_ADMIN)) {
        return Ok(());
    }
    let mut wanted = vec![(CAP_NET_ADMIN, "CAP_NET_ADMIN")];
    if !has(CAP_SYS_ADMIN) {
        wanted.insert(0, (CAP_BPF, "CAP_BPF"));
    }
    Err(PrivError::Denied(FlowsError::TcNotPermitted {
        euid,
        missing: missing(cap_eff, &wanted),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(uid: u32, cap_eff: u64) -> String {
        format!(
            "Name:\ttest\nUid:\t{uid}\t{uid}\t{uid}\t{uid}\nGid:\t0\t0\t0\t0\n\
             CapInh:\t0000000000000000\nCapEff:\t{cap_eff:016x}\n"
        )
    }

    #[test]
    fn root_with_all_caps_passes() {
        check_privileges(&status(0, 0x0000_01ff_ffff_ffff)).unwrap();
    }

    #[test]
    fn bpf_and_perfmon_suffice_without_root() {
        check_privileges(&status(1000, (1 << CAP_BPF) | (1 << CAP_PERFMON))).unwrap();
    }

    #[test]
    fn unprivileged_is_refused_naming_the_missing_caps() {
        let Err(PrivError::Denied(e)) = check_privileges(&status(1000, 1 << CAP_BPF)) else {
            panic!("expected a refusal");
        };
        let msg = e.to_string();
        assert!(msg.contains("effective uid 1000"), "{msg}");
        assert!(msg.contains("missing: CAP_PERFMON"), "{msg}");
        assert!(!msg.contains("CAP_BPF,"), "{msg}");
        assert!(msg.contains("setcap"), "{msg}");
    }

    #[test]
    fn root_without_caps_is_refused() {
        let Err(PrivError::Denied(e)) = check_privileges(&status(0, 0)) else {
            panic!("expected a refusal");
        };
        assert!(
            e.to_string().contains("missing: CAP_BPF, CAP_PERFMON"),
            "{e}"
        );
    }

    #[test]
    fn tc_needs_net_admin_and_bpf() {
        check_tc_privileges(&status(0, 0x0000_01ff_ffff_ffff)).unwrap();
        check_tc_privileges(&status(1000, (1 << CAP_BPF) | (1 << CAP_NET_ADMIN))).unwrap();
        let Err(PrivError::Denied(e)) = check_tc_privileges(&status(1000, 1 << CAP_BPF)) else {
            panic!("expected a refusal");
        };
        let msg = e.to_string();
        assert!(msg.contains("missing: CAP_NET_ADMIN"), "{msg}");
        assert!(msg.contains("cap_net_admin"), "{msg}");
        let Err(PrivError::Denied(e)) = check_tc_privileges(&status(0, 0)) else {
            panic!("expected a refusal");
        };
        assert!(
            e.to_string().contains("missing: CAP_BPF, CAP_NET_ADMIN"),
            "{e}"
        );
    }

    #[test]
    fn garbage_status_is_an_error_not_a_panic() {
        assert!(matches!(
            check_privileges("Name: x\n"),
            Err(PrivError::Unparsable(_))
        ));
        assert!(matches!(
            check_privileges("Uid:\t0\t0\t0\t0\nCapEff:\tzz\n"),
            Err(PrivError::Unparsable(_))
        ));
    }

    /// A fake /sys and /proc: every check can be driven without touching the machine.
    struct Fake {
        dir: PathBuf,
        paths: SystemPaths,
    }

    impl Fake {
        fn new(tag: &str) -> Self {
            let dir = std::env::temp_dir().join(format!(
                "rampart-flows-preflight-{tag}-{}",
                std::process::id()
            ));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            let paths = SystemPaths {
                proc_status: dir.join("status"),
                btf: dir.join("vmlinux"),
                tracefs: dir.join("tracing"),
                debugfs_tracing: dir.join("debug/tracing"),
            };
            fs::write(&paths.proc_status, status(0, 0x0000_01ff_ffff_ffff)).unwrap();
            fs::write(&paths.btf, b"btf").unwrap();
            fs::create_dir_all(&paths.tracefs).unwrap();
            Self { dir, paths }
        }

        fn add_tracepoints(&self) {
            for (cat, name, _) in TRACEPOINTS {
                fs::create_dir_all(self.paths.tracefs.join("events").join(cat).join(name)).unwrap();
            }
        }
    }

    impl Drop for Fake {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }

    #[test]
    fn all_present_passes() {
        let f = Fake::new("ok");
        f.add_tracepoints();
        check(&f.paths, false).unwrap();
    }

    #[test]
    fn missing_btf_is_reported() {
        let f = Fake::new("btf");
        f.add_tracepoints();
        fs::remove_file(&f.paths.btf).unwrap();
        let e = check(&f.paths, false).unwrap_err();
        assert!(matches!(e, FlowsError::NoBtf { .. }), "{e}");
        assert!(e.to_string().contains("CONFIG_DEBUG_INFO_BTF"), "{e}");
    }

    #[test]
    fn unmounted_tracefs_says_how_to_mount_it() {
        let f = Fake::new("tracefs");
        let e = check(&f.paths, false).unwrap_err();
        assert!(matches!(e, FlowsError::TracefsNotMounted { .. }), "{e}");
        assert!(
            e.to_string()
                .contains("mount -t tracefs tracefs /sys/kernel/tracing"),
            "{e}"
        );
    }

    #[test]
    fn missing_tracepoint_is_named() {
        let f = Fake::new("tp");
        f.add_tracepoints();
        fs::remove_dir(f.paths.tracefs.join("events/sock/sock_recv_length")).unwrap();
        let e = check(&f.paths, false).unwrap_err();
        assert!(
            matches!(
                e,
                FlowsError::MissingTracepoint {
                    name: "sock:sock_recv_length",
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn debugfs_location_is_used_only_when_tracefs_is_empty_like_aya() {
        let f = Fake::new("debugfs");
        f.add_tracepoints();
        // debugfs tracing exists but has no events: tracefs is populated, so aya (and the
        // check) use tracefs.
        fs::create_dir_all(&f.paths.debugfs_tracing).unwrap();
        check(&f.paths, false).unwrap();
        // tracefs empty, debugfs populated without the events: aya would look there and fail.
        fs::remove_dir_all(&f.paths.tracefs).unwrap();
        fs::create_dir_all(&f.paths.tracefs).unwrap();
        fs::write(f.paths.debugfs_tracing.join("trace"), "").unwrap();
        let e = check(&f.paths, false).unwrap_err();
        assert!(matches!(e, FlowsError::TracefsNotMounted { .. }), "{e}");
    }

    #[test]
    fn unprivileged_status_file_is_refused() {
        let f = Fake::new("priv");
        f.add_tracepoints();
        fs::write(&f.paths.proc_status, status(1000, 0)).unwrap();
        let e = check(&f.paths, false).unwrap_err();
        assert!(
            matches!(e, FlowsError::NotPermitted { euid: 1000, .. }),
            "{e}"
        );
    }
}
