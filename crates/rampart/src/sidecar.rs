//! `rampart sidecar`: the gateway arranged as a per-application proxy.
//!
//! Inbound: a listener that forwards to the local application at 127.0.0.1:APP_PORT and marks
//! requests (`x-sidecar-injected`, `x-original-host`). Outbound: the application's egress,
//! either with the routing of a gateway config file or, by default, transparently to each
//! connection's original destination (after the iptables REDIRECT that
//! `rampart sidecar iptables` prints or applies).

use std::net::SocketAddr;
use std::process::Command;

use anyhow::{Context, Result, bail};
use rampart_config::raw::{
    RawAccessLog, RawAdmin, RawCluster, RawConfig, RawFilter, RawForward, RawLimits, RawListener,
    RawMatch, RawPathMatch, RawRoute, RawRouteTable, RawVirtualHost,
};
use rampart_config::resilience::RawCircuitBreakers;

/// Where the sidecar listens and what it fronts.
pub(crate) struct SidecarPorts {
    pub(crate) app_port: u16,
    /// Connections to the local app at most; requests beyond wait for one (pending).
    pub(crate) app_max_connections: usize,
    pub(crate) inbound: SocketAddr,
    pub(crate) outbound: SocketAddr,
    pub(crate) admin: SocketAddr,
    pub(crate) workers: usize,
    pub(crate) access_log: String,
}

const LOCAL_APP: &str = "sidecar-local-app";
const PASSTHROUGH: &str = "sidecar-passthrough";

fn catch_all(table: &str, cluster: &str) -> RawRouteTable {
    RawRouteTable {
        name: table.to_owned(),
        virtual_hosts: vec![RawVirtualHost {
            name: "all".to_owned(),
            domains: vec!["*".to_owned()],
            routes: vec![RawRoute {
                name: Some(table.to_owned()),
                matcher: RawMatch {
                    path: Some(RawPathMatch {
                        prefix: Some("/".to_owned()),
                        ..RawPathMatch::default()
                    }),
                    ..RawMatch::default()
                },
                forward: Some(RawForward {
                    cluster: Some(cluster.to_owned()),
                    weighted_clusters: Vec::new(),
                    prefix_rewrite: None,
                    host_rewrite: None,
                    timeout: None,
                    retries: None,
                    hash_policy: Vec::new(),
                }),
                direct_response: None,
                redirect: None,
                function: None,
                trusted_headers: Vec::new(),
                request_headers: None,
                response_headers: None,
                filters: Vec::new(),
                max_request_body_bytes: None,
            }],
        }],
    }
}

fn cluster(
    name: &str,
    kind: Option<&str>,
    endpoints: Vec<String>,
    circuit_breakers: Option<RawCircuitBreakers>,
) -> RawCluster {
    RawCluster {
        name: name.to_owned(),
        kind: kind.map(str::to_owned),
        endpoints,
        lb_policy: None,
        connect_timeout: None,
        dns_refresh: None,
        protocol: None,
        idle_timeout: None,
        max_idle_per_endpoint: None,
        circuit_breakers,
        health_check: None,
        outlier_detection: None,
        tls: None,
    }
}

fn listener(
    name: &str,
    addr: SocketAddr,
    table: &str,
    filters: Vec<RawFilter>,
    original_dst: bool,
) -> RawListener {
    RawListener {
        name: name.to_owned(),
        address: addr.to_string(),
        route_table: table.to_owned(),
        filters,
        limits: RawLimits::default(),
        original_dst,
        tls: None,
        // Istio's "BASE" normalisation: dot segments resolved, but `//` and `%2F` kept as
        // the application sent them (a transparent hop must not break paths such as GitLab's
        // `/projects/group%2Fname`).
        http: rampart_config::http::RawHttpOptions {
            merge_slashes: Some(false),
            escaped_slashes: Some("keep".to_owned()),
            ..Default::default()
        },
    }
}

/// The sidecar's config: `base` (a gateway config for the outbound side, possibly empty) plus
/// the inbound listener and, when `base` has no listeners, a transparent outbound listener.
pub(crate) fn config(base: RawConfig, p: &SidecarPorts) -> RawConfig {
    let mut cfg = base;
    cfg.workers.get_or_insert(p.workers);
    cfg.admin.get_or_insert(RawAdmin {
        address: p.admin.to_string(),
        token_file: None,
        allowed_hosts: None,
        max_connections: None,
        header_read_timeout: None,
    });
    cfg.access_log.get_or_insert(RawAccessLog {
        format: p.access_log.clone(),
    });
    if cfg.listeners.is_empty() {
        cfg.route_tables
            .push(catch_all("sidecar-outbound", PASSTHROUGH));
        cfg.clusters
            .push(cluster(PASSTHROUGH, Some("original_dst"), Vec::new(), None));
        cfg.listeners.push(listener(
            "outbound",
            p.outbound,
            "sidecar-outbound",
            Vec::new(),
            true,
        ));
    }
    cfg.route_tables
        .push(catch_all("sidecar-inbound", LOCAL_APP));
    // The app is local and fast: a few connections, reused, serve many clients; requests
    // beyond them wait briefly instead of each opening (and keeping) a connection.
    cfg.clusters.push(cluster(
        LOCAL_APP,
        None,
        vec![format!("127.0.0.1:{}", p.app_port)],
        Some(RawCircuitBreakers {
            max_connections: Some(p.app_max_connections),
            max_pending_requests: Some(100_000),
            ..RawCircuitBreakers::default()
        }),
    ));
    cfg.listeners.push(listener(
        "inbound",
        p.inbound,
        "sidecar-inbound",
        vec![RawFilter::named("sidecar_inbound")],
        false,
    ));
    cfg
}

/// What `rampart sidecar iptables` redirects.
pub(crate) struct Interception {
    pub(crate) inbound_port: u16,
    pub(crate) outbound_port: u16,
    /// Inbound TCP ports to capture; empty means all.
    pub(crate) app_ports: Vec<u16>,
    /// The proxy's own user, whose egress must not loop back into it.
    pub(crate) proxy_uid: u32,
}

const IN_CHAIN: &str = "RAMPART_INBOUND";
const OUT_CHAIN: &str = "RAMPART_OUTBOUND";

/// The iptables commands (arguments after `iptables`) that set interception up, in order.
pub(crate) fn install_rules(i: &Interception) -> Vec<Vec<String>> {
    let mut rules: Vec<Vec<String>> = Vec::new();
    let mut r = |args: &[&str]| rules.push(args.iter().map(|s| (*s).to_owned()).collect());
    let inb = i.inbound_port.to_string();
    let outb = i.outbound_port.to_string();
    let uid = i.proxy_uid.to_string();
    r(&["-t", "nat", "-N", IN_CHAIN]);
    if i.app_ports.is_empty() {
        r(&[
            "-t",
            "nat",
            "-A",
            IN_CHAIN,
            "-p",
            "tcp",
            "-j",
            "REDIRECT",
            "--to-ports",
            &inb,
        ]);
    } else {
        for port in &i.app_ports {
            let port = port.to_string();
            r(&[
                "-t",
                "nat",
                "-A",
                IN_CHAIN,
                "-p",
                "tcp",
                "--dport",
                &port,
                "-j",
                "REDIRECT",
                "--to-ports",
                &inb,
            ]);
        }
    }
    r(&["-t", "nat", "-A", "PREROUTING", "-p", "tcp", "-j", IN_CHAIN]);
    r(&["-t", "nat", "-N", OUT_CHAIN]);
    // The proxy's own connections go out as they are.
    r(&[
        "-t",
        "nat",
        "-A",
        OUT_CHAIN,
        "-m",
        "owner",
        "--uid-owner",
        &uid,
        "-j",
        "RETURN",
    ]);
    // Local traffic to 127.0.0.1 (the app talking to its own sidecar, health checks) too.
    r(&[
        "-t",
        "nat",
        "-A",
        OUT_CHAIN,
        "-d",
        "127.0.0.1/32",
        "-j",
        "RETURN",
    ]);
    r(&[
        "-t",
        "nat",
        "-A",
        OUT_CHAIN,
        "-p",
        "tcp",
        "-j",
        "REDIRECT",
        "--to-ports",
        &outb,
    ]);
    r(&["-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-j", OUT_CHAIN]);
    rules
}

/// The commands that undo [`install_rules`].
pub(crate) fn remove_rules() -> Vec<Vec<String>> {
    let v = |args: &[&str]| args.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    vec![
        v(&["-t", "nat", "-D", "PREROUTING", "-p", "tcp", "-j", IN_CHAIN]),
        v(&["-t", "nat", "-D", "OUTPUT", "-p", "tcp", "-j", OUT_CHAIN]),
        v(&["-t", "nat", "-F", IN_CHAIN]),
        v(&["-t", "nat", "-X", IN_CHAIN]),
        v(&["-t", "nat", "-F", OUT_CHAIN]),
        v(&["-t", "nat", "-X", OUT_CHAIN]),
    ]
}

/// Runs `iptables` with each rule; stops at the first failure unless `keep_going`.
pub(crate) fn run_rules(rules: &[Vec<String>], keep_going: bool) -> Result<()> {
    for args in rules {
        let out = Command::new("iptables")
            .args(args)
            .output()
            .context("cannot run iptables (is it installed, and are we root?)")?;
        if !out.status.success() && !keep_going {
            bail!(
                "iptables {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
    }
    Ok(())
}

pub(crate) fn print_rules(rules: &[Vec<String>]) {
    for args in rules {
        println!("iptables {}", args.join(" "));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ports() -> SidecarPorts {
        SidecarPorts {
            app_port: 8080,
            app_max_connections: 64,
            inbound: "0.0.0.0:15006".parse().unwrap(),
            outbound: "127.0.0.1:15001".parse().unwrap(),
            admin: "127.0.0.1:15000".parse().unwrap(),
            workers: 1,
            access_log: "off".into(),
        }
    }

    #[test]
    fn default_sidecar_config_is_valid_and_transparent() {
        let cfg = rampart_config::validate(config(RawConfig::default(), &ports())).unwrap();
        let out = cfg.listeners.iter().find(|l| l.name == "outbound").unwrap();
        assert!(out.original_dst);
        let inbound = cfg.listeners.iter().find(|l| l.name == "inbound").unwrap();
        assert_eq!(inbound.address.port(), 15006);
        assert_eq!(
            cfg.cluster(LOCAL_APP).unwrap().endpoints[0].to_string(),
            "127.0.0.1:8080"
        );
    }

    #[test]
    fn rules_exempt_the_proxy_and_redirect_the_rest() {
        let rules = install_rules(&Interception {
            inbound_port: 15006,
            outbound_port: 15001,
            app_ports: vec![8080],
            proxy_uid: 1337,
        });
        let text: Vec<String> = rules.iter().map(|r| r.join(" ")).collect();
        let pos = |needle: &str| text.iter().position(|t| t.contains(needle)).unwrap();
        assert!(
            text.iter().any(|t| t
                == "-t nat -A RAMPART_INBOUND -p tcp --dport 8080 -j REDIRECT --to-ports 15006")
        );
        assert!(
            pos("--uid-owner 1337 -j RETURN") < pos("-j REDIRECT --to-ports 15001"),
            "exemption first"
        );
        assert_eq!(remove_rules().len(), 6);
    }
}
