//! The network nemesis: a private network per test run, and partitions made on demand.
//!
//! Each node gets its own network namespace with one interface, `eth0`, whose veth peer sits
//! on a bridge in a separate "hub" namespace:
//!
//! ```text
//!   {prefix}-n1        {prefix}-n2        {prefix}-n3
//!   eth0 10.S.0.1      eth0 10.S.0.2      eth0 10.S.0.3
//!     |                  |                  |
//!   v1 ---------------- v2 ---------------- v3    br0 in {prefix}-hub
//!                                            |
//!                                  ctl ------+        (only with a control link)
//!                                   |
//!                          rjc-XXXXXXXX 10.S.0.254    in the root namespace
//! ```
//!
//! [`Net::create_with_control`] adds the lower part: one veth from the root namespace to the
//! bridge, so that a harness running in the root namespace (its clients and its nemesis's
//! status probes) reaches every node directly, as Jepsen's control node does. Partitions
//! only ever name node addresses, so the control address `10.S.0.254` stays connected to
//! every node whatever the partition, again as in Jepsen. Plain [`Net::create`] leaves the
//! root namespace untouched.
//!
//! Why namespaces and not loopback aliases: a node that listens on `0.0.0.0`, or that
//! dials its peers by whatever address it was given, behaves exactly as on a real network,
//! and a partition cuts everything, including connections already open. Why a hub
//! namespace: nothing in the root namespace (its interfaces, routes, firewall) is touched,
//! so a crashed run cannot break the machine's networking, and deleting the namespaces
//! undoes everything.
//!
//! Partitions are iptables `DROP` rules inside each node's namespace, in a chain of their
//! own (`RAMPART-NEMESIS`, jumped to from `INPUT` and `OUTPUT`). Dropping rather than
//! rejecting is deliberate: a real partition makes packets vanish, so clients see timeouts,
//! not quick refusals, and that is the case where consensus systems go wrong. Every change
//! replaces the whole chain with one atomic `iptables-restore --noflush`, so changes are
//! idempotent and never leave half a rule set behind; other rules in the namespace are left
//! alone.
//!
//! Needs Linux, root (or CAP_SYS_ADMIN + CAP_NET_ADMIN), `ip` (iproute2) and `iptables`
//! (nft or legacy) on `PATH`.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::io::{self, Write as _};
use std::net::Ipv4Addr;
use std::process::{Child, Command, Stdio};

/// Why a network operation failed. A failed command carries the full command line and its
/// stderr, since that is what it takes to reproduce it by hand.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("invalid namespace prefix {prefix:?}: {rule}")]
    InvalidPrefix { prefix: String, rule: &'static str },
    #[error("a net has 1 to {max} nodes, not {nodes}", max = MAX_NODES)]
    BadSize { nodes: usize },
    #[error(
        "the node subnet {subnet} is already routed in the root namespace ({routes}); a \
         control link would clash with it: use another prefix, or clean up the run that owns it"
    )]
    SubnetInUse { subnet: String, routes: String },
    #[error("invalid partition: {reason}")]
    BadPartition { reason: String },
    #[error("`{command}` could not start: {source} (are iproute2 and iptables installed?)")]
    Spawn {
        command: String,
        #[source]
        source: io::Error,
    },
    #[error("`{command}` failed ({status}): {stderr}{hint}")]
    Failed {
        command: String,
        status: String,
        stderr: String,
        hint: &'static str,
    },
}

/// Addresses are `10.S.0.i` with `i` in 1..=250 (leaving room below the broadcast).
pub const MAX_NODES: usize = 250;

/// The last octet of the control address (the root namespace's end of the control link).
pub const CONTROL_HOST: u8 = 254;

/// The iptables chain holding the partition's rules in each node namespace.
pub const CHAIN: &str = "RAMPART-NEMESIS";

/// A private network of `n` nodes, removed on drop.
///
/// Stop the processes running in the namespaces before dropping it: a namespace that still
/// has processes loses its name but lives on until they exit.
#[derive(Debug)]
pub struct Net {
    prefix: String,
    nodes: usize,
    subnet: u8,
    /// Namespaces created so far, deleted in reverse order on drop.
    created: Vec<String>,
    /// The root namespace's end of the control link, once created.
    control_link: Option<String>,
}

impl Net {
    /// Builds the namespaces, bridge, veth pairs and addresses. If the names are taken (an
    /// earlier run crashed), this fails; call [`cleanup_stale`] first if that run is
    /// certainly dead. Concurrent runs need different prefixes.
    pub fn create(prefix: &str, nodes: usize) -> Result<Self, NetError> {
        Self::create_inner(prefix, nodes, false)
    }

    /// Like [`Net::create`], plus a control link: a veth from the root namespace to the
    /// bridge with the address [`Net::control_addr`], so that this process reaches every
    /// node's address directly. Partitions never cut the control address off.
    ///
    /// This does touch the root namespace (one interface, `rjc-` and 8 hex digits, and the
    /// route to the node subnet that comes with its address); drop and [`cleanup_stale`]
    /// remove it. Fails if the node subnet is already routed in the root namespace (another
    /// run whose prefix hashes to the same subnet, or a local network in `10.S.0.0/24`).
    pub fn create_with_control(prefix: &str, nodes: usize) -> Result<Self, NetError> {
        Self::create_inner(prefix, nodes, true)
    }

    fn create_inner(prefix: &str, nodes: usize, control: bool) -> Result<Self, NetError> {
        validate_prefix(prefix)?;
        if nodes == 0 || nodes > MAX_NODES {
            return Err(NetError::BadSize { nodes });
        }
        let mut net = Self {
            prefix: prefix.to_owned(),
            nodes,
            subnet: subnet_octet(prefix),
            created: Vec::new(),
            control_link: None,
        };
        // On error `net` is dropped here, which deletes whatever was created.
        net.build()?;
        if control {
            net.build_control()?;
        }
        tracing::info!(prefix, nodes, subnet = %net.subnet_cidr(), "network namespaces up");
        Ok(net)
    }

    fn build(&mut self) -> Result<(), NetError> {
        let hub = self.hub_ns();
        run(Command::new("ip").args(["netns", "add", &hub]))?;
        self.created.push(hub.clone());
        run(ip_in(&hub).args(["link", "set", "lo", "up"]))?;
        run(ip_in(&hub).args(["link", "add", "br0", "type", "bridge"]))?;
        run(ip_in(&hub).args(["link", "set", "br0", "up"]))?;
        for i in 1..=self.nodes {
            let ns = self.ns_name(i);
            run(Command::new("ip").args(["netns", "add", &ns]))?;
            self.created.push(ns.clone());
            let hub_end = format!("v{i}");
            // Created inside the hub with the peer placed straight into the node's
            // namespace: no interface ever appears in the root namespace.
            run(ip_in(&hub).args([
                "link", "add", &hub_end, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ]))?;
            run(ip_in(&hub).args(["link", "set", &hub_end, "master", "br0", "up"]))?;
            let cidr = format!("{}/24", self.addr(i));
            run(ip_in(&ns).args(["addr", "add", &cidr, "dev", "eth0"]))?;
            run(ip_in(&ns).args(["link", "set", "eth0", "up"]))?;
            run(ip_in(&ns).args(["link", "set", "lo", "up"]))?;
            let setup = format!(
                "*filter\n:{CHAIN} - [0:0]\n-A INPUT -j {CHAIN}\n-A OUTPUT -j {CHAIN}\nCOMMIT\n"
            );
            finish(spawn_restore(&ns, &setup)?)?;
        }
        Ok(())
    }

    fn build_control(&mut self) -> Result<(), NetError> {
        let subnet = self.subnet_cidr();
        // `root`: routes for this subnet or inside it (a default route does not conflict).
        let conflict = run(Command::new("ip").args(["-4", "route", "show", "root", &subnet]))?;
        if !conflict.trim().is_empty() {
            return Err(NetError::SubnetInUse {
                subnet,
                routes: conflict.trim().to_owned(),
            });
        }
        let link = control_link_name(&self.prefix);
        let hub = self.hub_ns();
        run(Command::new("ip").args([
            "link", "add", &link, "type", "veth", "peer", "name", "ctl", "netns", &hub,
        ]))?;
        self.control_link = Some(link.clone());
        run(ip_in(&hub).args(["link", "set", "ctl", "master", "br0", "up"]))?;
        let cidr = format!("{}/24", self.control_ip());
        run(Command::new("ip").args(["addr", "add", &cidr, "dev", &link]))?;
        run(Command::new("ip").args(["link", "set", &link, "up"]))?;
        tracing::info!(link, addr = %self.control_ip(), "control link up");
        Ok(())
    }

    /// The root namespace's address on the node subnet, if the net has a control link.
    pub fn control_addr(&self) -> Option<Ipv4Addr> {
        self.control_link.as_ref().map(|_| self.control_ip())
    }

    fn control_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, self.subnet, 0, CONTROL_HOST)
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Number of nodes; they are numbered `1..=len()`.
    pub fn len(&self) -> usize {
        self.nodes
    }

    pub fn is_empty(&self) -> bool {
        self.nodes == 0
    }

    pub fn nodes(&self) -> impl Iterator<Item = usize> + use<> {
        1..=self.nodes
    }

    /// The node subnet, e.g. `10.137.0.0/24`.
    pub fn subnet_cidr(&self) -> String {
        format!("10.{}.0.0/24", self.subnet)
    }

    /// Node `i`'s address.
    ///
    /// # Panics
    /// If `i` is not in `1..=len()`: node numbers come from the harness, not from outside.
    pub fn addr(&self, i: usize) -> Ipv4Addr {
        self.check_node(i);
        Ipv4Addr::new(10, self.subnet, 0, i as u8)
    }

    /// Node `i`'s namespace name, for `ip netns exec` and friends.
    ///
    /// # Panics
    /// If `i` is not in `1..=len()`.
    pub fn ns_name(&self, i: usize) -> String {
        self.check_node(i);
        format!("{}-n{i}", self.prefix)
    }

    pub fn hub_ns(&self) -> String {
        format!("{}-hub", self.prefix)
    }

    /// A command that runs `program` inside node `i`'s namespace (add arguments, then
    /// spawn). For tokio, convert with `tokio::process::Command::from`. `ip netns exec`
    /// execs the program, so the child's pid is the program's own and killing it works.
    ///
    /// # Panics
    /// If `i` is not in `1..=len()`.
    pub fn command(&self, i: usize, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns_name(i), program]);
        cmd
    }

    /// Splits the nodes into groups that cannot reach each other; nodes within a group still
    /// can. Every node must be in exactly one group. Replaces any earlier partition.
    pub fn partition(&self, groups: &[Vec<usize>]) -> Result<(), NetError> {
        let mut group_of = vec![None; self.nodes + 1];
        for (g, members) in groups.iter().enumerate() {
            for &i in members {
                self.valid_node(i)?;
                if group_of[i].replace(g).is_some() {
                    return Err(bad_partition(format!("node {i} is in two groups")));
                }
            }
        }
        if let Some(i) = self.nodes().find(|&i| group_of[i].is_none()) {
            return Err(bad_partition(format!(
                "node {i} is in no group (list every node; a group of one isolates it)"
            )));
        }
        let mut cut = BTreeSet::new();
        for a in self.nodes() {
            for b in self.nodes() {
                if a < b && group_of[a] != group_of[b] {
                    cut.insert((a, b));
                }
            }
        }
        self.cut(&cut)
    }

    /// Jepsen's "bridge": `left` and `right` cannot reach each other, and `bridge` reaches
    /// both. No majority sees a single leader-compatible view, which shakes out protocols
    /// that assume partitions are clean. Together they must list every node once.
    pub fn bridge_partition(
        &self,
        left: &[usize],
        bridge: usize,
        right: &[usize],
    ) -> Result<(), NetError> {
        // Validate as a three-way partition, then let the bridge through.
        self.valid_node(bridge)?;
        let groups = [left.to_vec(), vec![bridge], right.to_vec()];
        let mut seen = BTreeSet::new();
        for &i in groups.iter().flatten() {
            self.valid_node(i)?;
            if !seen.insert(i) {
                return Err(bad_partition(format!("node {i} is listed twice")));
            }
        }
        if seen.len() != self.nodes {
            return Err(bad_partition(
                "left, bridge and right must list every node".to_owned(),
            ));
        }
        let cut = left
            .iter()
            .flat_map(|&a| right.iter().map(move |&b| (a.min(b), a.max(b))))
            .collect();
        self.cut(&cut)
    }

    /// Cuts node `i` off from every other node.
    pub fn isolate(&self, i: usize) -> Result<(), NetError> {
        self.valid_node(i)?;
        let rest = self.nodes().filter(|&j| j != i).collect();
        self.partition(&[vec![i], rest])
    }

    /// Removes every partition.
    pub fn heal(&self) -> Result<(), NetError> {
        self.cut(&BTreeSet::new())
    }

    /// The primitive under the partitions: exactly these pairs (both directions) drop each
    /// other's packets afterwards, all others pass. All nodes are updated in parallel, so
    /// the change takes one iptables run, not one per node.
    pub fn cut(&self, pairs: &BTreeSet<(usize, usize)>) -> Result<(), NetError> {
        for &(a, b) in pairs {
            self.valid_node(a)?;
            self.valid_node(b)?;
        }
        let mut children = Vec::with_capacity(self.nodes);
        for i in self.nodes() {
            let mut rules = format!("*filter\n:{CHAIN} - [0:0]\n");
            for &(a, b) in pairs {
                let other = match (a == i, b == i) {
                    (true, false) => b,
                    (false, true) => a,
                    _ => continue,
                };
                let addr = self.addr(other);
                // Writing to a String cannot fail.
                let _ = write!(
                    rules,
                    "-A {CHAIN} -s {addr} -j DROP\n-A {CHAIN} -d {addr} -j DROP\n"
                );
            }
            rules.push_str("COMMIT\n");
            children.push(spawn_restore(&self.ns_name(i), &rules));
        }
        // Wait for every child even after a failure, so none is left running.
        let mut first_err = None;
        for child in children {
            if let Err(e) = child.and_then(finish) {
                first_err.get_or_insert(e);
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => {
                tracing::info!(prefix = %self.prefix, cut = ?pairs, "partition applied");
                Ok(())
            }
        }
    }

    fn check_node(&self, i: usize) {
        assert!(
            (1..=self.nodes).contains(&i),
            "node {i} does not exist: nodes are numbered 1..={}",
            self.nodes
        );
    }

    fn valid_node(&self, i: usize) -> Result<(), NetError> {
        if (1..=self.nodes).contains(&i) {
            Ok(())
        } else {
            Err(bad_partition(format!(
                "node {i} does not exist: nodes are numbered 1..={}",
                self.nodes
            )))
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        // The control link first (deleting the hub would take it along, but say so if it
        // cannot be deleted), then nodes, then the hub: deleting a node namespace destroys
        // its veth, and with it the peer on the bridge.
        if let Some(link) = &self.control_link
            && let Err(e) = run(Command::new("ip").args(["link", "delete", link]))
        {
            tracing::warn!(link, error = %e, "could not delete the control link");
        }
        for ns in self.created.iter().rev() {
            if let Err(e) = run(Command::new("ip").args(["netns", "delete", ns])) {
                tracing::warn!(namespace = %ns, error = %e, "could not delete network namespace");
            }
        }
    }
}

/// Deletes the namespaces a crashed run with this prefix left behind, after killing the
/// processes still inside them (they could only be that run's nodes, and would otherwise
/// keep the namespace alive, unreachable). Returns the namespaces deleted.
pub fn cleanup_stale(prefix: &str) -> Result<Vec<String>, NetError> {
    validate_prefix(prefix)?;
    let link = control_link_name(prefix);
    let mut deleted = Vec::new();
    if run(Command::new("ip").args(["link", "show", "dev", &link])).is_ok() {
        run(Command::new("ip").args(["link", "delete", &link]))?;
        deleted.push(link);
    }
    let out = run(Command::new("ip").args(["netns", "list"]))?;
    let hub = format!("{prefix}-hub");
    let node_prefix = format!("{prefix}-n");
    // Lines look like "name" or "name (id: 3)".
    for name in out.lines().filter_map(|l| l.split_whitespace().next()) {
        let ours = name == hub
            || name
                .strip_prefix(&node_prefix)
                .is_some_and(|rest| !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit()));
        if !ours {
            continue;
        }
        let pids = run(Command::new("ip").args(["netns", "pids", name]))?;
        let pids: Vec<&str> = pids.split_whitespace().collect();
        if !pids.is_empty() {
            tracing::warn!(
                namespace = name,
                ?pids,
                "killing processes left in a stale namespace"
            );
            // A process may exit between listing and killing; that is fine.
            let _ = run(Command::new("kill").arg("-KILL").args(&pids));
        }
        run(Command::new("ip").args(["netns", "delete", name]))?;
        deleted.push(name.to_owned());
    }
    Ok(deleted)
}

/// Namespace names end up in `/run/netns/` and in command lines; keep them boring.
fn validate_prefix(prefix: &str) -> Result<(), NetError> {
    let rule = if prefix.is_empty() || prefix.len() > 32 {
        "must be 1 to 32 characters"
    } else if !prefix
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        "may use only a-z, 0-9 and '-'"
    } else if !prefix.as_bytes()[0].is_ascii_lowercase() {
        "must start with a letter"
    } else {
        return Ok(());
    };
    Err(NetError::InvalidPrefix {
        prefix: prefix.to_owned(),
        rule,
    })
}

/// The second octet of the node subnet, from the prefix (FNV-1a). Two nets can never see
/// each other whatever their addresses (each has its own bridge, and no route leaves it),
/// so a collision is harmless; distinct subnets only keep logs and packet captures from
/// different runs apart.
fn subnet_octet(prefix: &str) -> u8 {
    let h = fnv1a(prefix);
    // 10.16.0.0 to 10.239.0.0: clear of the low ranges people tend to hand-configure.
    16 + (h % 224) as u8
}

fn fnv1a(s: &str) -> u32 {
    s.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// The root namespace's end of the control link: interface names have at most 15
/// characters, so the prefix itself does not fit; its hash does.
pub fn control_link_name(prefix: &str) -> String {
    format!("rjc-{:08x}", fnv1a(prefix))
}

fn bad_partition(reason: String) -> NetError {
    NetError::BadPartition { reason }
}

fn ip_in(ns: &str) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["-n", ns]);
    cmd
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs a command to completion; its stdout on success.
fn run(cmd: &mut Command) -> Result<String, NetError> {
    let command = describe(cmd);
    tracing::debug!(%command, "run");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|source| NetError::Spawn {
            command: command.clone(),
            source,
        })?;
    check_output(command, &out)
}

fn check_output(command: String, out: &std::process::Output) -> Result<String, NetError> {
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    let hint = if stderr.contains("File exists") {
        " (left over from an earlier run? if it is dead, call netns::cleanup_stale with its prefix)"
    } else if stderr.contains("Operation not permitted") || stderr.contains("Permission denied") {
        " (network namespaces need root, or CAP_SYS_ADMIN and CAP_NET_ADMIN)"
    } else {
        ""
    };
    Err(NetError::Failed {
        command,
        status: out.status.to_string(),
        stderr,
        hint,
    })
}

/// Starts `iptables-restore --noflush` in a namespace with `rules` on stdin. Declaring the
/// chain in the input flushes it first, which is what makes each update a full replacement.
fn spawn_restore(ns: &str, rules: &str) -> Result<(String, Child), NetError> {
    let mut cmd = Command::new("ip");
    // -w: legacy iptables takes a machine-wide lock; wait for it rather than fail.
    cmd.args([
        "netns",
        "exec",
        ns,
        "iptables-restore",
        "--noflush",
        "-w",
        "5",
    ]);
    let command = describe(&cmd);
    tracing::debug!(%command, %rules, "run");
    let spawn_err = |source| NetError::Spawn {
        command: command.clone(),
        source,
    };
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_err)?;
    // Rule sets are a few KiB at most, well under a pipe buffer, so writing before reading
    // the child's output cannot deadlock. Dropping stdin closes it.
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(rules.as_bytes()).map_err(spawn_err)?;
    }
    Ok((command, child))
}

fn finish((command, child): (String, Child)) -> Result<(), NetError> {
    let out = child.wait_with_output().map_err(|source| NetError::Spawn {
        command: command.clone(),
        source,
    })?;
    check_output(command, &out).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_validated() {
        for ok in ["rj", "jepsen-1", "a"] {
            validate_prefix(ok).unwrap();
        }
        for (bad, why) in [
            ("", "1 to 32"),
            ("Upper", "only a-z"),
            ("a/b", "only a-z"),
            ("1abc", "start with a letter"),
            ("-x", "start with a letter"),
        ] {
            let err = validate_prefix(bad).unwrap_err().to_string();
            assert!(err.contains(why), "{bad:?}: {err}");
        }
    }

    #[test]
    fn subnets_differ_by_prefix_and_stay_in_range() {
        let octets: BTreeSet<u8> = (0..50).map(|i| subnet_octet(&format!("run{i}"))).collect();
        assert!(octets.len() > 40, "{octets:?}");
        assert!(octets.iter().all(|o| (16..240).contains(o)));
        assert_eq!(subnet_octet("same"), subnet_octet("same"));
    }

    #[test]
    fn failed_commands_name_the_command_and_its_stderr() {
        let err = run(Command::new("ip").args(["netns", "delete", "rampart-jepsen-no-such-ns"]))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("`ip netns delete rampart-jepsen-no-such-ns` failed"),
            "{err}"
        );
        let err = run(&mut Command::new("rampart-jepsen-no-such-program"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("could not start"), "{err}");
    }
}
