//! `rampart kv bench`: a load generator for any etcd v3 endpoint (Rampart's store or etcd),
//! so both are measured by the very same client. Like etcd's own `benchmark` tool: many
//! concurrent clients over a few shared gRPC connections, spread across the endpoints.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use rampart_kv::proto::etcdserverpb as pb;
use rampart_kv::proto::etcdserverpb::kv_client::KvClient;
use rampart_kv::proto::etcdserverpb::watch_client::WatchClient;
use tonic::transport::{Channel, Endpoint};

#[derive(Clone, Copy, ValueEnum)]
enum Workload {
    /// Puts of `--value-size` bytes on `--key-space` keys.
    Put,
    /// Linearizable gets (add --serializable for local reads) of keys written first.
    Get,
    /// One writer, `--clients` watchers on one key: latency from put to each watcher's event.
    Watch,
}

#[derive(Args)]
pub(crate) struct BenchArgs {
    #[arg(value_enum)]
    workload: Workload,
    /// Concurrent clients (watchers for `watch`).
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// gRPC connections shared by the clients (per endpoint).
    #[arg(long, default_value_t = 4)]
    conns: usize,
    /// Requests in total (puts for `watch`).
    #[arg(long, default_value_t = 10_000)]
    total: u64,
    #[arg(long, default_value_t = 256)]
    value_size: usize,
    #[arg(long, default_value_t = 10_000)]
    key_space: u64,
    #[arg(long)]
    serializable: bool,
    /// Stop after this long even if `--total` is not reached.
    #[arg(long, default_value = "60s", value_parser = crate::cli_args::duration)]
    max_time: Duration,
}

fn channels(endpoints: &[String], conns: usize) -> Result<Vec<Channel>> {
    let mut out = Vec::new();
    for e in endpoints {
        let url = if e.contains("://") {
            e.clone()
        } else {
            format!("http://{e}")
        };
        for _ in 0..conns.max(1) {
            let ep = Endpoint::from_shared(url.clone())
                .with_context(|| format!("bad endpoint {e}"))?
                .tcp_nodelay(true)
                .connect_timeout(Duration::from_secs(2));
            out.push(ep.connect_lazy());
        }
    }
    Ok(out)
}

fn key(i: u64) -> Vec<u8> {
    format!("bench/{i:08}").into_bytes()
}

/// Percentile of sorted microsecond samples, in milliseconds.
fn pct(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)] as f64 / 1000.0
}

fn report(workload: &str, clients: usize, mut lat: Vec<u64>, errors: u64, elapsed: Duration) {
    lat.sort_unstable();
    let n = lat.len();
    let rps = n as f64 / elapsed.as_secs_f64();
    println!(
        "workload={workload} clients={clients} ok={n} errors={errors} secs={:.2} rps={rps:.0} p50_ms={:.3} p99_ms={:.3} p999_ms={:.3}",
        elapsed.as_secs_f64(),
        pct(&lat, 0.50),
        pct(&lat, 0.99),
        pct(&lat, 0.999)
    );
}

pub(crate) async fn run(endpoints: &[String], args: BenchArgs) -> Result<()> {
    let chans = channels(endpoints, args.conns)?;
    match args.workload {
        Workload::Put | Workload::Get => requests(&chans, &args).await,
        Workload::Watch => watch(&chans, &args).await,
    }
}

async fn requests(chans: &[Channel], args: &BenchArgs) -> Result<()> {
    let value = vec![b'v'; args.value_size];
    if matches!(args.workload, Workload::Get) {
        // Fill the keys the gets will read.
        let mut kv = KvClient::new(chans[0].clone());
        for i in 0..args.key_space.min(1000) {
            kv.put(pb::PutRequest {
                key: key(i),
                value: value.clone(),
                ..Default::default()
            })
            .await
            .context("filling keys")?;
        }
    }
    let next = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + args.max_time;
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..args.clients {
        let mut kv = KvClient::new(chans[c % chans.len()].clone());
        let (next, errors, value) = (next.clone(), errors.clone(), value.clone());
        let (total, space, get, serializable) = (
            args.total,
            args.key_space,
            matches!(args.workload, Workload::Get),
            args.serializable,
        );
        tasks.spawn(async move {
            let mut lat = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total || Instant::now() > deadline {
                    return lat;
                }
                let t = Instant::now();
                let ok = if get {
                    kv.range(pb::RangeRequest {
                        key: key(fastrand::u64(0..space.min(1000))),
                        serializable,
                        ..Default::default()
                    })
                    .await
                    .is_ok()
                } else {
                    kv.put(pb::PutRequest {
                        key: key(fastrand::u64(0..space)),
                        value: value.clone(),
                        ..Default::default()
                    })
                    .await
                    .is_ok()
                };
                if ok {
                    lat.push(u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX));
                } else {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    let mut lat = Vec::new();
    while let Some(r) = tasks.join_next().await {
        lat.extend(r?);
    }
    let name = match args.workload {
        Workload::Put => "put",
        Workload::Get if args.serializable => "get-serializable",
        _ => "get",
    };
    report(
        name,
        args.clients,
        lat,
        errors.load(Ordering::Relaxed),
        start.elapsed(),
    );
    Ok(())
}

async fn watch(chans: &[Channel], args: &BenchArgs) -> Result<()> {
    let origin = Instant::now();
    let wkey = b"bench/watched".to_vec();
    let mut streams = Vec::new();
    for w in 0..args.clients {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tx.send(pb::WatchRequest {
            request_union: Some(pb::watch_request::RequestUnion::CreateRequest(
                pb::WatchCreateRequest {
                    key: wkey.clone(),
                    ..Default::default()
                },
            )),
        })
        .await?;
        let mut stream = WatchClient::new(chans[w % chans.len()].clone())
            .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await?
            .into_inner();
        match stream.message().await? {
            Some(r) if r.created => {}
            other => bail!("watch not created: {other:?}"),
        }
        streams.push((tx, stream));
    }
    let total = args.total;
    let mut tasks = tokio::task::JoinSet::new();
    for (tx, mut stream) in streams {
        tasks.spawn(async move {
            let _keep = tx;
            let mut lat = Vec::new();
            let mut seen = 0u64;
            while seen < total {
                let Ok(Ok(Some(resp))) =
                    tokio::time::timeout(Duration::from_secs(10), stream.message()).await
                else {
                    break;
                };
                let now = u64::try_from(origin.elapsed().as_micros()).unwrap_or(u64::MAX);
                for ev in resp.events {
                    let sent: u64 = ev
                        .kv
                        .as_ref()
                        .and_then(|kv| std::str::from_utf8(&kv.value).ok()?.parse().ok())
                        .unwrap_or(now);
                    lat.push(now.saturating_sub(sent));
                    seen += 1;
                }
            }
            lat
        });
    }
    let mut kv = KvClient::new(chans[0].clone());
    let start = Instant::now();
    for _ in 0..total {
        let sent = u64::try_from(origin.elapsed().as_micros()).unwrap_or(u64::MAX);
        kv.put(pb::PutRequest {
            key: wkey.clone(),
            value: sent.to_string().into_bytes(),
            ..Default::default()
        })
        .await?;
        // Paced, so that the figure is fan-out latency, not queueing behind a burst.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut lat = Vec::new();
    while let Some(r) = tasks.join_next().await {
        lat.extend(r?);
    }
    let expected = total * args.clients as u64;
    let missing = expected.saturating_sub(lat.len() as u64);
    report("watch", args.clients, lat, missing, start.elapsed());
    Ok(())
}
