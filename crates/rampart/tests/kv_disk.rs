//! A full disk is an error, not a panic: the store answers the failed write with a clear
//! gRPC status, then the member exits non-zero with the reason (so it is restarted once the
//! disk has room) and its data stays readable. Needs root (mounts a small tmpfs).

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use rampart_kv::client::Client;
use rampart_kv::proto::etcdserverpb as pb;
use support::*;

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

struct Mount(std::path::PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_writes_cleanly_and_stops_the_member() {
    if !is_root() {
        rampart_test_support::skip(
            "a_full_disk_fails_writes_cleanly_and_stops_the_member",
            &"needs root to mount a tmpfs",
        );
        return;
    }
    let dir = TempDir::new("kv-disk");
    let mnt = dir.path("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let ok = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=6m", "tmpfs"])
        .arg(&mnt)
        .status()
        .unwrap()
        .success();
    assert!(ok, "mount tmpfs");
    let _mount = Mount(mnt.clone());

    let (mut node, ep) = spawn_kv_node(&mnt.join("data"));
    let mut c = Client::new(&[ep], Duration::from_secs(5)).unwrap();
    let value = vec![b'x'; 200_000];
    let start = Instant::now();
    let mut stored = 0;
    let err = loop {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the disk never filled up"
        );
        let r = c
            .put(pb::PutRequest {
                key: format!("k{stored}").into_bytes(),
                value: value.clone(),
                ..Default::default()
            })
            .await;
        match r {
            Ok(_) => stored += 1,
            Err(e) if stored == 0 && start.elapsed() < Duration::from_secs(20) => {
                // Still starting up.
                let _ = e;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => break e,
        }
    };
    let status = err.status().expect("a gRPC status");
    assert!(
        status.message().contains("No space left on device"),
        "{status:?}"
    );
    assert!(stored > 0, "some writes fit before the disk filled");

    // The member exits with the reason instead of lingering half-alive.
    let deadline = Instant::now() + Duration::from_secs(15);
    let exit = loop {
        if let Some(s) = node.exited() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the member kept running after a fatal write error"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!exit.success());
    let stderr = node.stderr();
    assert!(stderr.contains("the store stopped"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// A store started without RUST_LOG logs Rampart's own lines at info and keeps its
/// dependencies (openraft's state dumps) at warn; `--log-level info` opens them up again.
#[tokio::test]
async fn dependencies_are_quiet_unless_asked() {
    async fn store_log(extra: &[&str]) -> String {
        let dir = TempDir::new("quiet");
        let data = dir.path("kv");
        let (client, peer) = (
            format!("http://127.0.0.1:{}", free_port()),
            format!("http://127.0.0.1:{}", free_port()),
        );
        // `env -u`: the harness sets RUST_LOG=info for the processes it starts.
        let mut args = vec!["-u", "RUST_LOG", bin(), "kv", "serve", "--data-dir"];
        args.push(data.to_str().unwrap());
        args.extend(["--listen-client-urls", &client, "--listen-peer-urls", &peer]);
        args.extend_from_slice(extra);
        let mut node = Proc::spawn_program("kv", "env", &args);
        // A single node elects itself at once; openraft logs that at info.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !node.stderr().contains(" INFO rampart") && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        node.signal("TERM");
        node.wait_exit(Duration::from_secs(10)).await;
        node.stderr()
    }
    let quiet = store_log(&[]).await;
    assert!(quiet.contains(" INFO rampart"), "{quiet}");
    assert!(!quiet.contains(" INFO openraft"), "{quiet}");
    let loud = store_log(&["--log-level", "info"]).await;
    assert!(
        loud.contains(" INFO openraft"),
        "--log-level info shows them: {loud}"
    );
}
