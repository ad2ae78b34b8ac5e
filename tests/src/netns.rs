//! Network namespaces for partition tests (Linux, root: `ip netns`, veth, bridge).
//!
//! [`Netns::create`] gives each node `i` (1-based) its own namespace
//! `mk<pid>-<i>` with two links:
//!
//! - a **client** veth pair to the test process's (root) namespace:
//!   `10.<a>.<i>.1/30` on the root side, `10.<a>.<i>.2/30` inside. The node's
//!   c2s listeners and admin API bind to the inside address
//!   ([`Netns::client_ip`]), which the test process reaches directly;
//! - a **cluster** veth pair to a bridge: `10.<b>.0.<10 + i>/24` inside, the
//!   node's `[cluster] listen` ([`Netns::cluster_addr`], port 7946).
//!
//! The bridge lives in one more namespace, `mk<pid>-h` (the hub), rather than
//! in the root namespace: bridged traffic in the root namespace goes through
//! the host's netfilter FORWARD chain whenever `br_netfilter` is loaded
//! (`net.bridge.bridge-nf-call-iptables = 1`), which a Docker host drops by
//! policy; the hub namespace has its own, empty, netfilter and keeps the
//! cluster network out of the host altogether.
//!
//! [`Netns::cut`] sets the hub side of a node's cluster veth down: the node
//! loses every other node, while the test process still reaches its client
//! address. [`Netns::heal`] sets it up again. [`Netns::blackhole`] also sets
//! the root side of its client veth down: nothing reaches the node or leaves it. Dropping the value deletes the
//! namespaces, and with them the bridge and every veth.
//!
//! Names carry the test process's id, so concurrent test processes do not
//! collide; the second octets `<a>` and `<b>` are derived from it too.
//! Interface names stay within Linux's 15 characters (`mk<pid>c<i>`).

use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Command, Output};

use crate::cluster::Placement;

/// The port of every node's cluster transport (each namespace has its own ports).
pub const CLUSTER_PORT: u16 = 7946;

/// A set of per-node network namespaces joined by a bridge; removed on drop.
pub struct Netns {
    prefix: String,
    nodes: usize,
    client_octet: u8,
    cluster_octet: u8,
    /// Namespaces created so far (deleted on drop, last first).
    namespaces: Vec<String>,
    /// Links created in the root namespace (deleted on drop).
    root_links: Vec<String>,
}

/// Runs `ip` with these arguments.
fn ip(args: &[&str]) -> Output {
    match Command::new("ip").args(args).output() {
        Ok(o) => o,
        Err(e) => panic!("cannot run `ip {}` ({e}): install iproute2 (apt-get install -y iproute2)", args.join(" ")),
    }
}

/// Runs `ip`, ignoring every failure (clean-up; must not panic in `Drop`).
fn ip_quiet(args: &[&str]) -> Option<Output> {
    Command::new("ip").args(args).output().ok()
}

/// Runs `ip` and panics with its stderr if it fails.
fn ip_ok(args: &[&str]) {
    let out = ip(args);
    assert!(
        out.status.success(),
        "`ip {}` failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

impl Netns {
    /// Namespaces for nodes `1..=nodes` (at most 9), the hub and its bridge.
    ///
    /// Panics with a clear message when `ip netns add` fails (the test is not
    /// root): partition tests must not pass by doing nothing.
    pub fn create(nodes: usize) -> Netns {
        assert!((1..=9).contains(&nodes), "Netns supports 1 to 9 nodes, not {nodes}");
        let pid = std::process::id();
        let prefix = format!("mk{pid}");
        let mut net = Netns {
            prefix,
            nodes,
            client_octet: 100 + (pid % 50) as u8,
            cluster_octet: 150 + (pid % 50) as u8,
            namespaces: Vec::new(),
            root_links: Vec::new(),
        };
        // Leftovers of a crashed earlier process that had the same pid (no
        // live process can have it, so this touches nothing in use).
        let _ = ip_quiet(&["netns", "del", &net.hub()]);
        for i in 1..=nodes {
            let _ = ip_quiet(&["netns", "del", &net.ns(i)]);
            let _ = ip_quiet(&["link", "del", &net.root_client_link(i)]);
        }

        let hub = net.hub();
        let out = ip(&["netns", "add", &hub]);
        if !out.status.success() {
            panic!(
                "`ip netns add {hub}` failed ({}): {}\nthe partition tests need root (CAP_SYS_ADMIN and CAP_NET_ADMIN) \
                 to create network namespaces; CI runs them as root",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        net.namespaces.push(hub.clone());
        let bridge = net.bridge();
        ip_ok(&["-n", &hub, "link", "set", "lo", "up"]);
        ip_ok(&["-n", &hub, "link", "add", &bridge, "type", "bridge"]);
        ip_ok(&["-n", &hub, "link", "set", &bridge, "up"]);

        for i in 1..=nodes {
            let ns = net.ns(i);
            ip_ok(&["netns", "add", &ns]);
            net.namespaces.push(ns.clone());
            ip_ok(&["-n", &ns, "link", "set", "lo", "up"]);

            // Client network: root <-> node i, a /30 of its own.
            let (root_side, ns_side) = (net.root_client_link(i), net.ns_client_link(i));
            ip_ok(&["link", "add", &root_side, "type", "veth", "peer", "name", &ns_side, "netns", &ns]);
            net.root_links.push(root_side.clone());
            let c = net.client_octet;
            ip_ok(&["addr", "add", &format!("10.{c}.{i}.1/30"), "dev", &root_side]);
            ip_ok(&["link", "set", &root_side, "up"]);
            ip_ok(&["-n", &ns, "addr", "add", &format!("{}/30", net.client_ip(i)), "dev", &ns_side]);
            ip_ok(&["-n", &ns, "link", "set", &ns_side, "up"]);

            // Cluster network: node i <-> the hub's bridge.
            let (ns_side, hub_side) = (net.ns_cluster_link(i), net.hub_cluster_link(i));
            ip_ok(&["link", "add", &ns_side, "netns", &ns, "type", "veth", "peer", "name", &hub_side, "netns", &hub]);
            ip_ok(&["-n", &hub, "link", "set", &hub_side, "master", &bridge]);
            ip_ok(&["-n", &hub, "link", "set", &hub_side, "up"]);
            ip_ok(&["-n", &ns, "addr", "add", &format!("{}/24", net.cluster_ip(i)), "dev", &ns_side]);
            ip_ok(&["-n", &ns, "link", "set", &ns_side, "up"]);
        }
        net
    }

    /// How many node namespaces there are.
    pub fn nodes(&self) -> usize {
        self.nodes
    }

    /// The namespace of node `i` (1-based).
    pub fn ns(&self, i: usize) -> String {
        format!("{}-{i}", self.prefix)
    }

    /// The namespace holding the bridge.
    pub fn hub(&self) -> String {
        format!("{}-h", self.prefix)
    }

    fn bridge(&self) -> String {
        format!("{}br", self.prefix)
    }

    fn root_client_link(&self, i: usize) -> String {
        format!("{}c{i}", self.prefix)
    }

    fn ns_client_link(&self, i: usize) -> String {
        format!("{}n{i}", self.prefix)
    }

    fn ns_cluster_link(&self, i: usize) -> String {
        format!("{}k{i}", self.prefix)
    }

    fn hub_cluster_link(&self, i: usize) -> String {
        format!("{}h{i}", self.prefix)
    }

    fn check(&self, i: usize) {
        assert!((1..=self.nodes).contains(&i), "no node {i} (nodes are 1..={})", self.nodes);
    }

    /// Node `i`'s address on its client network: c2s and admin API bind here.
    pub fn client_ip(&self, i: usize) -> Ipv4Addr {
        self.check(i);
        Ipv4Addr::new(10, self.client_octet, i as u8, 2)
    }

    /// Node `i`'s address on the cluster network.
    pub fn cluster_ip(&self, i: usize) -> Ipv4Addr {
        self.check(i);
        Ipv4Addr::new(10, self.cluster_octet, 0, 10 + i as u8)
    }

    /// Node `i`'s `[cluster] listen` address.
    pub fn cluster_addr(&self, i: usize) -> SocketAddr {
        SocketAddr::from((self.cluster_ip(i), CLUSTER_PORT))
    }

    /// `ip netns exec <ns of node i>`: runs a command inside node `i`'s namespace.
    pub fn command_prefix(&self, i: usize) -> Vec<String> {
        self.check(i);
        ["ip", "netns", "exec"].iter().map(|s| s.to_string()).chain([self.ns(i)]).collect()
    }

    /// Where node `i` of a [`crate::cluster::TestCluster`] runs.
    pub fn placement(&self, i: usize) -> Placement {
        Placement { ip: self.client_ip(i), cluster_addr: self.cluster_addr(i), command_prefix: self.command_prefix(i) }
    }

    /// Cuts node `i` off the cluster network (its client network stays up).
    pub fn cut(&self, i: usize) {
        self.check(i);
        ip_ok(&["-n", &self.hub(), "link", "set", &self.hub_cluster_link(i), "down"]);
    }

    /// Drops every packet of node `i`: its cluster network and its client
    /// network (clients connected to it see silence, not a reset).
    pub fn blackhole(&self, i: usize) {
        self.cut(i);
        ip_ok(&["link", "set", &self.root_client_link(i), "down"]);
    }

    /// Reconnects node `i` to the cluster network.
    pub fn heal(&self, i: usize) {
        self.check(i);
        ip_ok(&["-n", &self.hub(), "link", "set", &self.hub_cluster_link(i), "up"]);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting a namespace deletes the links in it and their veth peers;
        // the root-side links go explicitly too, in case a namespace lingers
        // (`ip netns del` only unmounts it while a process still runs inside).
        for link in self.root_links.drain(..).rev() {
            let _ = ip_quiet(&["link", "del", &link]);
        }
        for ns in self.namespaces.drain(..).rev() {
            match ip_quiet(&["netns", "del", &ns]) {
                Some(out) if out.status.success() => {}
                Some(out) => {
                    eprintln!(
                        "could not delete network namespace {ns}: {}",
                        String::from_utf8_lossy(&out.stderr).trim()
                    )
                }
                None => eprintln!("could not run `ip netns del {ns}`"),
            }
        }
    }
}
