//! `rampart kv`: run a store node, or talk to a store (or to etcd) from the command line.
//! Flags of `serve` are named after etcd's, so that etcd users can start a cluster the way
//! they already know.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, Subcommand};
use rampart_kv::client::{Client, Security, prefix_end};
use rampart_kv::proto::etcdserverpb as pb;
use rampart_kv::proto::mvccpb::event::EventType;
use rampart_kv::tls::TlsFiles;
use rampart_kv::{ClusterState, KvNode, NodeConfig};

#[derive(Args)]
pub(crate) struct KvArgs {
    /// Store endpoints (host:port or URL), comma-separated.
    #[arg(
        long,
        global = true,
        value_delimiter = ',',
        default_value = "127.0.0.1:2379"
    )]
    endpoints: Vec<String>,
    /// Longest wait for one request.
    #[arg(long, global = true, default_value = "5s", value_parser = crate::cli_args::duration)]
    command_timeout: Duration,
    /// `user:password` to log in with (as etcdctl's --user).
    #[arg(long = "user", id = "auth_user", global = true)]
    user: Option<String>,
    /// CA that signs the store's certificate: talk TLS (as etcdctl's --cacert).
    #[arg(long = "cacert", id = "tls_cacert", global = true)]
    cacert: Option<PathBuf>,
    /// Client certificate and key for stores that require one (etcdctl's --cert/--key).
    #[arg(
        long = "cert",
        id = "tls_cert",
        global = true,
        requires = "tls_key",
        requires = "tls_cacert"
    )]
    cert: Option<PathBuf>,
    #[arg(long = "key", id = "tls_key", global = true, requires = "tls_cert")]
    key: Option<PathBuf>,
    #[command(subcommand)]
    command: KvCommand,
}

#[derive(Subcommand)]
enum KvCommand {
    /// Run a store node.
    Serve(Box<ServeArgs>),
    /// Read a key (or every key with a prefix).
    Get(GetArgs),
    /// Every key with a prefix (same as `get --prefix`).
    Range {
        #[arg(long)]
        prefix: String,
        #[arg(long, default_value_t = 0)]
        limit: i64,
    },
    Put {
        key: String,
        value: String,
        /// Attach to this lease (hexadecimal id, as printed by `lease grant`).
        #[arg(long)]
        lease: Option<String>,
    },
    Del {
        key: String,
        #[arg(long)]
        prefix: bool,
    },
    /// Compare-and-swap: set KEY to NEW only if it currently holds EXPECTED (or is absent).
    Txn {
        key: String,
        /// The value KEY must hold; leave out with --absent.
        #[arg(long, conflicts_with = "absent")]
        expect: Option<String>,
        /// KEY must not exist.
        #[arg(long)]
        absent: bool,
        /// The new value.
        #[arg(long)]
        set: String,
    },
    /// Print events on a key or prefix.
    Watch(WatchArgs),
    /// Compact history up to a revision.
    Compact { revision: i64 },
    #[command(subcommand)]
    Lease(LeaseCommand),
    #[command(subcommand)]
    Member(MemberCommand),
    /// Status of every endpoint.
    Status,
    /// Load-test the endpoints (Rampart's store or etcd) and print throughput and latency.
    Bench(crate::kv_bench::BenchArgs),
    /// Make a development CA and certificates for local TLS clusters (not for production:
    /// the CA key is written next to the certificates).
    Certs {
        /// Where to write ca.pem, NAME.pem, NAME-key.pem, client.pem, client-key.pem.
        #[arg(long)]
        dir: PathBuf,
        /// Node names, comma-separated (each certificate is also valid for localhost,
        /// 127.0.0.1 and ::1).
        #[arg(long, value_delimiter = ',', required = true)]
        nodes: Vec<String>,
    },
}

#[derive(Args)]
struct GetArgs {
    key: String,
    #[arg(long)]
    prefix: bool,
    /// Read at this past revision.
    #[arg(long, default_value_t = 0)]
    rev: i64,
    #[arg(long, default_value_t = 0)]
    limit: i64,
    #[arg(long)]
    keys_only: bool,
    #[arg(long)]
    count_only: bool,
    /// Serve from the local node without confirming with the leader.
    #[arg(long)]
    serializable: bool,
}

#[derive(Args)]
struct WatchArgs {
    key: String,
    #[arg(long)]
    prefix: bool,
    /// Start from this revision (history first, then live).
    #[arg(long, default_value_t = 0)]
    rev: i64,
    #[arg(long)]
    prev_kv: bool,
    /// Stop after this many events.
    #[arg(long)]
    count: Option<usize>,
}

#[derive(Subcommand)]
enum LeaseCommand {
    Grant {
        ttl: i64,
    },
    Revoke {
        id: String,
    },
    /// Keep a lease alive (until interrupted, or once with --once).
    KeepAlive {
        id: String,
        #[arg(long)]
        once: bool,
    },
    TimeToLive {
        id: String,
        #[arg(long)]
        keys: bool,
    },
    List,
}

#[derive(Subcommand)]
enum MemberCommand {
    List,
    /// Add a member by its peer URL (start it afterwards with --initial-cluster-state existing).
    Add {
        peer_url: String,
        #[arg(long)]
        learner: bool,
    },
    Promote {
        id: String,
    },
    Remove {
        id: String,
    },
}

#[derive(Args)]
pub(crate) struct ServeArgs {
    #[arg(long, default_value = "default")]
    name: String,
    /// Data directory (created if missing).
    #[arg(long, default_value = "default.rampart-kv")]
    data_dir: PathBuf,
    #[arg(long, default_value = "http://127.0.0.1:2379")]
    listen_client_urls: String,
    /// Defaults to --listen-client-urls.
    #[arg(long)]
    advertise_client_urls: Option<String>,
    #[arg(long, default_value = "http://127.0.0.1:2380")]
    listen_peer_urls: String,
    /// Defaults to --listen-peer-urls. The member id derives from it.
    #[arg(long)]
    initial_advertise_peer_urls: Option<String>,
    /// `name=peerURL,...`; defaults to this node alone.
    #[arg(long)]
    initial_cluster: Option<String>,
    #[arg(long, default_value = "new", value_parser = ["new", "existing"])]
    initial_cluster_state: String,
    #[arg(long, default_value = "5s", value_parser = crate::cli_args::duration)]
    request_timeout: Duration,
    /// Raft heartbeat interval.
    #[arg(long, default_value = "100ms", value_parser = crate::cli_args::duration)]
    heartbeat_interval: Duration,
    /// Raft election timeout (a random value between it and twice it is used).
    #[arg(long, default_value = "1s", value_parser = crate::cli_args::duration)]
    election_timeout: Duration,
    #[arg(long, default_value_t = 10_000)]
    snapshot_count: u64,
    /// Revisions of history kept for watches and past reads (0: until an explicit compact).
    #[arg(long, default_value_t = 100_000)]
    history_retention: u64,
    #[arg(long, default_value_t = 3 * 512 * 1024)]
    max_request_bytes: usize,
    /// Lifetime of auth tokens, in seconds (etcd's flag).
    #[arg(long, default_value_t = 300)]
    auth_token_ttl: u64,
    /// Client port TLS: certificate (PEM); with it the client URLs are https.
    #[arg(long, requires = "key_file")]
    cert_file: Option<PathBuf>,
    #[arg(long, requires = "cert_file")]
    key_file: Option<PathBuf>,
    /// CA that signs client certificates (checked when a client offers one).
    #[arg(long, requires = "cert_file")]
    trusted_ca_file: Option<PathBuf>,
    /// Require a client certificate signed by --trusted-ca-file.
    #[arg(long, requires = "trusted_ca_file")]
    client_cert_auth: bool,
    /// Peer TLS: this member's certificate, presented to and by other members.
    #[arg(long, requires = "peer_key_file")]
    peer_cert_file: Option<PathBuf>,
    #[arg(long, requires = "peer_cert_file")]
    peer_key_file: Option<PathBuf>,
    /// CA that signs every member's peer certificate.
    #[arg(long, requires = "peer_cert_file")]
    peer_trusted_ca_file: Option<PathBuf>,
    /// Require members to present a certificate signed by --peer-trusted-ca-file.
    #[arg(long, requires = "peer_trusted_ca_file")]
    peer_client_cert_auth: bool,
    /// Size of the state file past which writes that add data raise the NOSPACE alarm and
    /// are refused (etcd's flag; 0 means etcd's default, 2 GiB).
    #[arg(long, default_value_t = 0)]
    quota_backend_bytes: u64,
}

/// `http://host:port` → a socket address to listen on.
fn listen_addr(url: &str) -> Result<SocketAddr> {
    let hostport = url.split("://").nth(1).unwrap_or(url).trim_end_matches('/');
    hostport
        .parse()
        .with_context(|| format!("{url:?} is not http://IP:PORT"))
}

impl ServeArgs {
    pub(crate) fn node_config(&self) -> Result<NodeConfig> {
        let listen_client =
            listen_addr(&self.listen_client_urls).context("--listen-client-urls")?;
        let listen_peer = listen_addr(&self.listen_peer_urls).context("--listen-peer-urls")?;
        let advertise_peer = self
            .initial_advertise_peer_urls
            .clone()
            .unwrap_or_else(|| self.listen_peer_urls.clone());
        let initial_cluster = self.initial_cluster(&advertise_peer)?;
        self.check_url_schemes()?;
        Ok(NodeConfig {
            name: self.name.clone(),
            data_dir: self.data_dir.clone(),
            listen_client,
            advertise_client: self
                .advertise_client_urls
                .clone()
                .unwrap_or_else(|| self.listen_client_urls.clone()),
            listen_peer,
            advertise_peer,
            initial_cluster,
            cluster_state: if self.initial_cluster_state == "existing" {
                ClusterState::Existing
            } else {
                ClusterState::New
            },
            request_timeout: self.request_timeout,
            heartbeat: self.heartbeat_interval,
            election_timeout: self.election_timeout,
            snapshot_count: self.snapshot_count,
            history_retention: self.history_retention,
            max_request_bytes: self.max_request_bytes,
            watch_progress_interval: Duration::from_secs(600),
            auth_token_ttl: Duration::from_secs(self.auth_token_ttl),
            client_tls: tls_files(
                self.cert_file.as_ref(),
                self.key_file.as_ref(),
                self.trusted_ca_file.as_ref(),
                self.client_cert_auth,
            ),
            peer_tls: tls_files(
                self.peer_cert_file.as_ref(),
                self.peer_key_file.as_ref(),
                self.peer_trusted_ca_file.as_ref(),
                self.peer_client_cert_auth,
            ),
            quota_backend_bytes: if self.quota_backend_bytes == 0 {
                rampart_kv::quota::DEFAULT_QUOTA_BYTES
            } else {
                self.quota_backend_bytes
            },
        })
    }

    /// `--initial-cluster` as (name, peer URL) pairs; this node alone when it is not given.
    fn initial_cluster(&self, advertise_peer: &str) -> Result<Vec<(String, String)>> {
        let Some(s) = &self.initial_cluster else {
            return Ok(vec![(self.name.clone(), advertise_peer.to_string())]);
        };
        s.split(',')
            .map(|m| {
                m.split_once('=')
                    .map(|(n, u)| (n.trim().to_string(), u.trim().to_string()))
                    .ok_or_else(|| anyhow!("--initial-cluster: {m:?} is not name=peerURL"))
            })
            .collect()
    }

    /// A listen URL is https:// exactly when its port's certificate is given.
    fn check_url_schemes(&self) -> Result<()> {
        for (what, url, tls) in [
            (
                "--listen-client-urls",
                &self.listen_client_urls,
                self.cert_file.is_some(),
            ),
            (
                "--listen-peer-urls",
                &self.listen_peer_urls,
                self.peer_cert_file.is_some(),
            ),
        ] {
            if url.starts_with("https://") != tls {
                bail!(
                    "{what} {url}: use https:// exactly when the port's certificate is given \
                     ({})",
                    if what == "--listen-client-urls" {
                        "--cert-file"
                    } else {
                        "--peer-cert-file"
                    }
                );
            }
        }
        Ok(())
    }
}

/// The client's TLS and credentials from the global flags.
fn security(args: &KvArgs) -> Result<Security> {
    let identity = args.cert.as_deref().zip(args.key.as_deref());
    let tls = args
        .cacert
        .as_deref()
        .map(|ca| rampart_kv::tls::client_tls(ca, identity))
        .transpose()?;
    let user = match &args.user {
        None => None,
        Some(u) => {
            let (name, pw) = u
                .split_once(':')
                .ok_or_else(|| anyhow!("--user {u:?} is not user:password"))?;
            Some((name.to_string(), pw.to_string()))
        }
    };
    Ok(Security { tls, user })
}

/// One port's TLS settings from its flags (clap makes the certificate and key come together).
fn tls_files(
    cert: Option<&PathBuf>,
    key: Option<&PathBuf>,
    ca: Option<&PathBuf>,
    client_cert_auth: bool,
) -> Option<TlsFiles> {
    Some(TlsFiles {
        cert_file: cert?.clone(),
        key_file: key?.clone(),
        trusted_ca_file: ca.cloned(),
        client_cert_auth,
    })
}

fn hex_id(s: &str) -> Result<u64> {
    u64::from_str_radix(s.trim_start_matches("0x"), 16)
        .with_context(|| format!("{s:?} is not a hexadecimal id"))
}

fn lease_id(s: &str) -> Result<i64> {
    i64::try_from(hex_id(s)?).context("lease id out of range")
}

pub(crate) fn run(args: KvArgs) -> Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the runtime")?;
    rt.block_on(run_async(args))
}

async fn run_async(args: KvArgs) -> Result<ExitCode> {
    if let KvCommand::Serve(serve) = &args.command {
        return serve_node(serve).await;
    }
    if let KvCommand::Certs { dir, nodes } = &args.command {
        for f in rampart_kv::tls::dev_certs(dir, nodes)? {
            println!("{}", f.display());
        }
        return Ok(ExitCode::SUCCESS);
    }
    if let KvCommand::Bench(bench) = args.command {
        crate::kv_bench::run(&args.endpoints, bench).await?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut c = Client::with_security(&args.endpoints, args.command_timeout, security(&args)?)?;
    match args.command {
        KvCommand::Serve(_) | KvCommand::Bench(_) | KvCommand::Certs { .. } => {
            unreachable!("handled above")
        }
        KvCommand::Get(get_args) => get(&mut c, get_args).await?,
        KvCommand::Range { prefix, limit } => range(&mut c, prefix, limit).await?,
        KvCommand::Put { key, value, lease } => put(&mut c, key, value, lease).await?,
        KvCommand::Del { key, prefix } => del(&mut c, key, prefix).await?,
        KvCommand::Txn {
            key,
            expect,
            absent,
            set,
        } => return txn(&mut c, key, expect, absent, set).await,
        KvCommand::Watch(watch_args) => watch(&mut c, watch_args).await?,
        KvCommand::Compact { revision } => {
            c.compact(revision).await?;
            println!("compacted revision {revision}");
        }
        KvCommand::Lease(cmd) => lease(&mut c, cmd).await?,
        KvCommand::Member(cmd) => member(&mut c, cmd).await?,
        KvCommand::Status => return status(&mut c, &args.endpoints).await,
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs a store node until SIGTERM/SIGINT, or until it stops on an error.
async fn serve_node(serve: &ServeArgs) -> Result<ExitCode> {
    let node = KvNode::start(serve.node_config()?).await?;
    tokio::select! {
        r = crate::wait_for_termination() => r?,
        reason = node.stopped_on_error() => {
            // Let the requests that failed with it get their answers out first.
            tokio::time::sleep(Duration::from_millis(500)).await;
            node.shutdown().await;
            bail!("the store stopped: {reason}");
        }
    }
    tracing::info!("shutting down the kv node");
    node.shutdown().await;
    Ok(ExitCode::SUCCESS)
}

/// The end of the range a key names: every key with it as prefix, or the key alone.
fn range_end(key: &str, prefix: bool) -> Vec<u8> {
    if prefix {
        prefix_end(key.as_bytes())
    } else {
        Vec::new()
    }
}

async fn get(c: &mut Client, a: GetArgs) -> Result<()> {
    let r = c
        .range(pb::RangeRequest {
            range_end: range_end(&a.key, a.prefix),
            key: a.key.into_bytes(),
            limit: a.limit,
            revision: a.rev,
            keys_only: a.keys_only,
            count_only: a.count_only,
            serializable: a.serializable,
            ..Default::default()
        })
        .await?;
    if a.count_only {
        println!("{}", r.count);
    }
    for kv in r.kvs {
        println!("{}", String::from_utf8_lossy(&kv.key));
        if !a.keys_only {
            println!("{}", String::from_utf8_lossy(&kv.value));
        }
    }
    Ok(())
}

async fn range(c: &mut Client, prefix: String, limit: i64) -> Result<()> {
    let r = c
        .range(pb::RangeRequest {
            range_end: prefix_end(prefix.as_bytes()),
            key: prefix.into_bytes(),
            limit,
            ..Default::default()
        })
        .await?;
    for kv in r.kvs {
        println!(
            "{}\n{}",
            String::from_utf8_lossy(&kv.key),
            String::from_utf8_lossy(&kv.value)
        );
    }
    Ok(())
}

async fn put(c: &mut Client, key: String, value: String, lease: Option<String>) -> Result<()> {
    let lease = lease.as_deref().map(lease_id).transpose()?.unwrap_or(0);
    c.put(pb::PutRequest {
        key: key.into_bytes(),
        value: value.into_bytes(),
        lease,
        ..Default::default()
    })
    .await?;
    println!("OK");
    Ok(())
}

async fn del(c: &mut Client, key: String, prefix: bool) -> Result<()> {
    let r = c
        .delete(pb::DeleteRangeRequest {
            range_end: range_end(&key, prefix),
            key: key.into_bytes(),
            prev_kv: false,
        })
        .await?;
    println!("{}", r.deleted);
    Ok(())
}

/// Compare-and-swap; exits with 2 when the comparison fails.
async fn txn(
    c: &mut Client,
    key: String,
    expect: Option<String>,
    absent: bool,
    set: String,
) -> Result<ExitCode> {
    use pb::compare::{CompareResult, CompareTarget, TargetUnion};
    let compare = match (expect, absent) {
        (Some(v), _) => pb::Compare {
            result: CompareResult::Equal as i32,
            target: CompareTarget::Value as i32,
            key: key.clone().into_bytes(),
            target_union: Some(TargetUnion::Value(v.into_bytes())),
            range_end: Vec::new(),
        },
        (None, true) => pb::Compare {
            result: CompareResult::Equal as i32,
            target: CompareTarget::Version as i32,
            key: key.clone().into_bytes(),
            target_union: Some(TargetUnion::Version(0)),
            range_end: Vec::new(),
        },
        (None, false) => bail!("give --expect VALUE or --absent"),
    };
    let r = c
        .txn(pb::TxnRequest {
            compare: vec![compare],
            success: vec![pb::RequestOp {
                request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
                    key: key.into_bytes(),
                    value: set.into_bytes(),
                    ..Default::default()
                })),
            }],
            failure: Vec::new(),
        })
        .await?;
    if r.succeeded {
        println!("SUCCESS");
        Ok(ExitCode::SUCCESS)
    } else {
        println!("FAILURE");
        Ok(ExitCode::from(2))
    }
}

/// Prints events until the stream ends or `--count` events have been printed.
async fn watch(c: &mut Client, a: WatchArgs) -> Result<()> {
    let (_tx, mut stream) = c
        .watch(pb::WatchCreateRequest {
            range_end: range_end(&a.key, a.prefix),
            key: a.key.into_bytes(),
            start_revision: a.rev,
            prev_kv: a.prev_kv,
            ..Default::default()
        })
        .await?;
    let mut seen = 0;
    while let Some(resp) = stream.message().await? {
        if resp.canceled {
            bail!("watch cancelled: {}", resp.cancel_reason);
        }
        for ev in resp.events {
            let kind = if ev.r#type == EventType::Delete as i32 {
                "DELETE"
            } else {
                "PUT"
            };
            let kv = ev.kv.unwrap_or_default();
            println!(
                "{kind}\n{}\n{}",
                String::from_utf8_lossy(&kv.key),
                String::from_utf8_lossy(&kv.value)
            );
            seen += 1;
            if a.count.is_some_and(|n| seen >= n) {
                return Ok(());
            }
        }
    }
    Ok(())
}

/// One line per endpoint; fails when any endpoint did not answer.
async fn status(c: &mut Client, endpoints: &[String]) -> Result<ExitCode> {
    let mut failed = false;
    for (i, r) in c.status_all().await {
        let ep = &endpoints[i];
        match r {
            Ok(s) => println!(
                "{ep}, {:x}, {}, leader {:x}, term {}, index {}, applied {}, revision {}, db {} B{}",
                s.header.as_ref().map_or(0, |h| h.member_id),
                s.version,
                s.leader,
                s.raft_term,
                s.raft_index,
                s.raft_applied_index,
                s.header.as_ref().map_or(0, |h| h.revision),
                s.db_size,
                if s.is_learner { ", learner" } else { "" }
            ),
            Err(e) => {
                failed = true;
                println!("{ep}: {}", e.message());
            }
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

async fn lease(c: &mut Client, cmd: LeaseCommand) -> Result<()> {
    match cmd {
        LeaseCommand::Grant { ttl } => {
            let r = c.lease_grant(ttl).await?;
            println!("lease {:016x} granted with TTL({}s)", r.id, r.ttl);
        }
        LeaseCommand::Revoke { id } => {
            c.lease_revoke(lease_id(&id)?).await?;
            println!("lease {id} revoked");
        }
        LeaseCommand::KeepAlive { id, once } => {
            let id = lease_id(&id)?;
            loop {
                let ttl = c.lease_keep_alive_once(id).await?;
                if ttl <= 0 {
                    bail!("lease {id:016x} expired or revoked");
                }
                println!("lease {id:016x} keepalived with TTL({ttl})");
                if once {
                    return Ok(());
                }
                tokio::time::sleep(Duration::from_secs(
                    u64::try_from(ttl / 3).unwrap_or(1).max(1),
                ))
                .await;
            }
        }
        LeaseCommand::TimeToLive { id, keys } => {
            let r = c.lease_time_to_live(lease_id(&id)?, keys).await?;
            if r.ttl < 0 {
                println!("lease {id} already expired");
            } else {
                let keys: Vec<_> = r
                    .keys
                    .iter()
                    .map(|k| String::from_utf8_lossy(k).into_owned())
                    .collect();
                println!(
                    "lease {id} granted with TTL({}s), remaining({}s), attached keys({keys:?})",
                    r.granted_ttl, r.ttl
                );
            }
        }
        LeaseCommand::List => {
            let r = c.lease_list().await?;
            println!("found {} leases", r.leases.len());
            for l in r.leases {
                println!("{:016x}", l.id);
            }
        }
    }
    Ok(())
}

async fn member(c: &mut Client, cmd: MemberCommand) -> Result<()> {
    let print = |members: &[pb::Member]| {
        for m in members {
            println!(
                "{:x}, {}, {}, {}, {}",
                m.id,
                if m.is_learner { "learner" } else { "voter" },
                m.name,
                m.peer_ur_ls.join(","),
                m.client_ur_ls.join(",")
            );
        }
    };
    match cmd {
        MemberCommand::List => print(&c.member_list().await?.members),
        MemberCommand::Add { peer_url, learner } => {
            let r = c.member_add(&peer_url, learner).await?;
            let id = r.member.as_ref().map_or(0, |m| m.id);
            println!("member {id:x} added");
            print(&r.members);
        }
        MemberCommand::Promote { id } => {
            let r = c.member_promote(hex_id(&id)?).await?;
            println!("member {id} promoted");
            print(&r.members);
        }
        MemberCommand::Remove { id } => {
            let r = c.member_remove(hex_id(&id)?).await?;
            println!("member {id} removed");
            print(&r.members);
        }
    }
    Ok(())
}
