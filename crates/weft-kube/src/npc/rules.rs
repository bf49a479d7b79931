//! One node's share of NetworkPolicy as a rule set: the pods on this node each policy
//! selects, the peers its rules allow (pod addresses and address ranges, cluster-wide), and
//! one rule per (policy, rule, port). A node enforces egress for connections its own pods
//! open and ingress for connections to them; a connection between two nodes is checked by
//! both. The rule set has an evaluator with the exact semantics of the nftables chains it is
//! rendered to ([`super::nft`]), so it is checked against the oracle ([`super::policy`])
//! without a kernel.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::policy::{Cluster, Direction, End, Pod, rules_of, types};

/// The local pods isolated for ingress (egress): every new connection to (from) them must
/// match a rule.
pub const IN_ISOLATED: &str = "in_isolated";
pub const EG_ISOLATED: &str = "eg_isolated";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proto {
    Tcp,
    Udp,
    Sctp,
}

impl Proto {
    /// From the API's spelling (`TCP`, `UDP`, `SCTP`).
    pub fn from_api(s: &str) -> Option<Proto> {
        match s {
            "TCP" => Some(Proto::Tcp),
            "UDP" => Some(Proto::Udp),
            "SCTP" => Some(Proto::Sctp),
            _ => None,
        }
    }

    pub fn api(self) -> &'static str {
        match self {
            Proto::Tcp => "TCP",
            Proto::Udp => "UDP",
            Proto::Sctp => "SCTP",
        }
    }

    /// nftables' name.
    pub fn nft(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Sctp => "sctp",
        }
    }
}

/// Sorted, disjoint, inclusive address ranges (nftables' interval sets refuse overlaps).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ranges(Vec<(u32, u32)>);

impl Ranges {
    pub fn new(mut r: Vec<(u32, u32)>) -> Ranges {
        r.sort_unstable();
        let mut out: Vec<(u32, u32)> = Vec::with_capacity(r.len());
        for (lo, hi) in r {
            match out.last_mut() {
                Some(last) if u64::from(lo) <= u64::from(last.1) + 1 => last.1 = last.1.max(hi),
                _ => out.push((lo, hi)),
            }
        }
        Ranges(out)
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let ip = u32::from(ip);
        let i = self.0.partition_point(|&(lo, _)| lo <= ip);
        i > 0 && self.0[i - 1].1 >= ip
    }

    pub fn iter(&self) -> impl Iterator<Item = (Ipv4Addr, Ipv4Addr)> + '_ {
        self.0
            .iter()
            .map(|&(lo, hi)| (Ipv4Addr::from(lo), Ipv4Addr::from(hi)))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

fn net_range(n: &Ipv4Net) -> (u32, u32) {
    (u32::from(n.network()), u32::from(n.broadcast()))
}

/// `cidr` without the `except` blocks, as ranges.
fn cidr_minus(cidr: Ipv4Net, except: &[Ipv4Net]) -> Vec<(u32, u32)> {
    let mut keep = vec![net_range(&cidr)];
    for e in except {
        let (elo, ehi) = net_range(e);
        keep = keep
            .into_iter()
            .flat_map(|(lo, hi)| {
                let mut parts = Vec::new();
                if ehi < lo || elo > hi {
                    parts.push((lo, hi));
                } else {
                    if elo > lo {
                        parts.push((lo, elo - 1));
                    }
                    if ehi < hi {
                        parts.push((ehi + 1, hi));
                    }
                }
                parts
            })
            .collect();
    }
    keep
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SetKind {
    /// Addresses and address ranges.
    Addrs(Ranges),
    /// (address, protocol, port): named ports resolved on the pods that name them.
    Named(BTreeSet<(Ipv4Addr, Proto, u16)>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PortMatch {
    Any,
    /// Every port of one protocol.
    Proto(Proto),
    Range(Proto, u16, u16),
    /// The destination address, protocol and port are in this [`SetKind::Named`] set.
    Named(String),
}

/// Lets a connection through when its local end (the source for egress, the destination
/// for ingress) is in `local`, its far end in `peer` (anything if none), and its port
/// matches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// "namespace/policy direction rule-index", for people reading the ruleset.
    pub comment: String,
    pub local: String,
    pub peer: Option<String>,
    pub port: PortMatch,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ruleset {
    /// Every set by name; the isolation sets are always there.
    pub sets: BTreeMap<String, SetKind>,
    pub ingress: Vec<Rule>,
    pub egress: Vec<Rule>,
}

/// A pod's address, for pods policy applies to.
fn ip_of(p: &Pod) -> Option<Ipv4Addr> {
    p.ip
}

/// Compiles `cluster`'s policies for a node whose own pods are those `pods` for which
/// `local` holds; `pods` are all the pods known, the peers rules may name.
pub fn compile(cluster: &Cluster, pods: &[Pod], local: impl Fn(&Pod) -> bool) -> Ruleset {
    let mut rs = Ruleset::default();
    let mut isolated: [BTreeSet<u32>; 2] = Default::default();
    let local_pods: Vec<&Pod> = pods
        .iter()
        .filter(|p| ip_of(p).is_some() && local(p))
        .collect();
    let mut policies: Vec<&NetworkPolicy> = cluster.policies.iter().collect();
    policies.sort_by(|a, b| {
        (&a.metadata.namespace, &a.metadata.name).cmp(&(&b.metadata.namespace, &b.metadata.name))
    });
    for (k, p) in policies.into_iter().enumerate() {
        let ns = p.metadata.namespace.as_deref().unwrap_or_default();
        let (ing, eg) = types(p);
        let mut c = PolicyCompiler {
            cluster,
            pods,
            ns,
            targets: Vec::new(),
            rs: &mut rs,
        };
        for (dir, on, slot) in [
            (Direction::Ingress, ing, 0usize),
            (Direction::Egress, eg, 1),
        ] {
            if !on {
                continue;
            }
            // Exactly the local pods the oracle says this policy isolates that way.
            c.targets = local_pods
                .iter()
                .copied()
                .filter(|pod| cluster.selecting(pod, dir).any(|q| std::ptr::eq(q, p)))
                .collect();
            if c.targets.is_empty() {
                continue;
            }
            isolated[slot].extend(c.targets.iter().filter_map(|t| ip_of(t)).map(u32::from));
            c.policy(k, p, dir);
        }
    }
    for (name, ips) in [IN_ISOLATED, EG_ISOLATED].into_iter().zip(isolated) {
        let r = ips.into_iter().map(|i| (i, i)).collect();
        rs.sets.insert(name.into(), SetKind::Addrs(Ranges::new(r)));
    }
    rs
}

struct PolicyCompiler<'a> {
    cluster: &'a Cluster,
    pods: &'a [Pod],
    ns: &'a str,
    targets: Vec<&'a Pod>,
    rs: &'a mut Ruleset,
}

impl PolicyCompiler<'_> {
    fn policy(&mut self, k: usize, p: &NetworkPolicy, dir: Direction) {
        let d = match dir {
            Direction::Ingress => "in",
            Direction::Egress => "eg",
        };
        let local = format!("p{k}_{d}_t");
        let ips = self
            .targets
            .iter()
            .filter_map(|t| ip_of(t))
            .map(|i| (u32::from(i), u32::from(i)))
            .collect();
        self.rs
            .sets
            .insert(local.clone(), SetKind::Addrs(Ranges::new(ips)));
        let rules = rules_of(p, dir);
        let name = format!(
            "{}/{}",
            self.ns,
            p.metadata.name.as_deref().unwrap_or_default()
        );
        for (r, (peers, ports)) in rules.into_iter().enumerate() {
            let prefix = format!("p{k}_{d}{r}");
            let comment = format!("{name} {} rule {r}", d);
            let peers = peers.filter(|p| !p.is_empty());
            let peer_set = peers.map(|ps| {
                let set = format!("{prefix}_peers");
                let ranges = self.peer_ranges(ps);
                self.rs.sets.insert(set.clone(), SetKind::Addrs(ranges));
                set
            });
            let ports: Vec<&NetworkPolicyPort> = ports.into_iter().flatten().collect();
            if ports.is_empty() {
                self.push(dir, &comment, &local, peer_set.clone(), PortMatch::Any);
                continue;
            }
            for (e, port) in ports.into_iter().enumerate() {
                // A protocol the API would have refused: the entry matches nothing.
                let Some(proto) = Proto::from_api(port.protocol.as_deref().unwrap_or("TCP")) else {
                    continue;
                };
                match &port.port {
                    None => self.push(
                        dir,
                        &comment,
                        &local,
                        peer_set.clone(),
                        PortMatch::Proto(proto),
                    ),
                    Some(IntOrString::Int(n)) => {
                        let from = *n;
                        let to = port.end_port.unwrap_or(from);
                        let (Ok(from), Ok(to)) = (u16::try_from(from), u16::try_from(to)) else {
                            continue;
                        };
                        if from == 0 || to < from {
                            continue;
                        }
                        self.push(
                            dir,
                            &comment,
                            &local,
                            peer_set.clone(),
                            PortMatch::Range(proto, from, to),
                        );
                    }
                    Some(IntOrString::String(port_name)) => {
                        let set = format!("{prefix}_named{e}");
                        // A named port is the destination's: for ingress one of our targets,
                        // for egress a peer pod (whose match is folded into the set).
                        let (holders, peer): (Vec<&Pod>, Option<String>) = match dir {
                            Direction::Ingress => (self.targets.clone(), peer_set.clone()),
                            Direction::Egress => (
                                self.pods
                                    .iter()
                                    .filter(|pod| {
                                        peers.is_none_or(|ps| {
                                            ps.iter().any(|peer| {
                                                self.cluster.peer_is(peer, self.ns, End::Pod(pod))
                                            })
                                        })
                                    })
                                    .collect(),
                                None,
                            ),
                        };
                        let elems = holders
                            .iter()
                            .filter_map(|h| Some((ip_of(h)?, h)))
                            .flat_map(|(ip, h)| {
                                h.named_ports
                                    .iter()
                                    .filter(|(n, pr, _)| n == port_name && pr == proto.api())
                                    .map(move |(_, _, num)| (ip, proto, *num))
                            })
                            .collect();
                        self.rs.sets.insert(set.clone(), SetKind::Named(elems));
                        self.push(dir, &comment, &local, peer, PortMatch::Named(set));
                    }
                }
            }
        }
    }

    fn push(
        &mut self,
        dir: Direction,
        comment: &str,
        local: &str,
        peer: Option<String>,
        port: PortMatch,
    ) {
        let rule = Rule {
            comment: comment.into(),
            local: local.into(),
            peer,
            port,
        };
        match dir {
            Direction::Ingress => self.rs.ingress.push(rule),
            Direction::Egress => self.rs.egress.push(rule),
        }
    }

    /// The addresses a rule's peers stand for: pods by selector (as addresses), IP blocks
    /// minus their exceptions.
    fn peer_ranges(&self, peers: &[NetworkPolicyPeer]) -> Ranges {
        let mut r = Vec::new();
        for peer in peers {
            if let Some(block) = &peer.ip_block {
                // Unparseable: the API would have refused it; it allows nothing.
                if let Ok(cidr) = block.cidr.parse::<Ipv4Net>() {
                    let except: Vec<Ipv4Net> = block
                        .except
                        .iter()
                        .flatten()
                        .filter_map(|e| e.parse().ok())
                        .collect();
                    r.extend(cidr_minus(cidr, &except));
                }
                continue;
            }
            for pod in self.pods {
                if let Some(ip) = ip_of(pod)
                    && self.cluster.peer_is(peer, self.ns, End::Pod(pod))
                {
                    r.push((u32::from(ip), u32::from(ip)));
                }
            }
        }
        Ranges::new(r)
    }
}

impl Ruleset {
    fn has(&self, set: &str, ip: Ipv4Addr) -> bool {
        match self.sets.get(set) {
            Some(SetKind::Addrs(r)) => r.contains(ip),
            _ => false,
        }
    }

    fn port_matches(&self, m: &PortMatch, dst: Ipv4Addr, port: Option<(Proto, u16)>) -> bool {
        match (m, port) {
            (PortMatch::Any, _) => true,
            (_, None) => false,
            (PortMatch::Proto(p), Some((q, _))) => *p == q,
            (PortMatch::Range(p, lo, hi), Some((q, n))) => *p == q && (*lo..=*hi).contains(&n),
            (PortMatch::Named(set), Some((q, n))) => {
                matches!(self.sets.get(set), Some(SetKind::Named(s)) if s.contains(&(dst, q, n)))
            }
        }
    }

    /// Whether this node lets a new connection from its pod at `src` out to `dst` (`port`:
    /// protocol and destination port; none for protocols without ports).
    pub fn egress_allows(&self, src: Ipv4Addr, dst: Ipv4Addr, port: Option<(Proto, u16)>) -> bool {
        !self.has(EG_ISOLATED, src)
            || self.egress.iter().any(|r| {
                self.has(&r.local, src)
                    && r.peer.as_ref().is_none_or(|p| self.has(p, dst))
                    && self.port_matches(&r.port, dst, port)
            })
    }

    /// Whether this node lets a new connection from `src` in to its pod at `dst`.
    pub fn ingress_allows(&self, src: Ipv4Addr, dst: Ipv4Addr, port: Option<(Proto, u16)>) -> bool {
        !self.has(IN_ISOLATED, dst)
            || self.ingress.iter().any(|r| {
                self.has(&r.local, dst)
                    && r.peer.as_ref().is_none_or(|p| self.has(p, src))
                    && self.port_matches(&r.port, dst, port)
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::npc::policy::Labels;

    #[test]
    fn ranges_merge_and_answer() {
        let r = Ranges::new(vec![(10, 20), (5, 9), (30, 30), (15, 25)]);
        assert_eq!(r.0, vec![(5, 25), (30, 30)]);
        assert!(r.contains(Ipv4Addr::from(5)) && r.contains(Ipv4Addr::from(30)));
        assert!(!r.contains(Ipv4Addr::from(26)) && !r.contains(Ipv4Addr::from(4)));
        let all = Ranges::new(vec![(0, u32::MAX), (7, 9)]);
        assert_eq!(all.0, vec![(0, u32::MAX)]);
    }

    #[test]
    fn a_block_minus_its_exceptions() {
        let n = |s: &str| s.parse::<Ipv4Net>().unwrap();
        let parts = Ranges::new(cidr_minus(
            n("10.0.0.0/8"),
            &[n("10.1.0.0/16"), n("10.0.0.0/16"), n("11.0.0.0/8")],
        ));
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        assert!(!parts.contains(ip("10.0.5.5")));
        assert!(!parts.contains(ip("10.1.255.255")));
        assert!(parts.contains(ip("10.2.0.0")));
        assert!(parts.contains(ip("10.255.255.255")));
        assert!(!parts.contains(ip("11.0.0.1")));
    }

    /// A small deterministic generator: the cases need variety, not quality.
    struct Gen(u64);
    impl Gen {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
        fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
            &xs[self.below(xs.len() as u64) as usize]
        }
        fn chance(&mut self, one_in: u64) -> bool {
            self.below(one_in) == 0
        }
    }

    fn selector(g: &mut Gen, key: &str, values: &[&str]) -> serde_json::Value {
        match g.below(4) {
            0 => serde_json::json!({}),
            1 => serde_json::json!({"matchLabels": {key: g.pick(values)}}),
            2 => {
                let vs: Vec<&str> = values.iter().copied().filter(|_| g.chance(2)).collect();
                let op = *g.pick(&["In", "NotIn"]);
                serde_json::json!({"matchExpressions": [{"key": key, "operator": op, "values": vs}]})
            }
            _ => {
                let op = *g.pick(&["Exists", "DoesNotExist"]);
                let k = if g.chance(2) { key } else { "other" };
                serde_json::json!({"matchExpressions": [{"key": k, "operator": op}]})
            }
        }
    }

    fn peer(g: &mut Gen) -> serde_json::Value {
        match g.below(4) {
            0 => serde_json::json!({"podSelector": selector(g, "pod", &["a", "b", "c"])}),
            1 => serde_json::json!({"namespaceSelector": selector(g, "ns", &["x", "y", "z"])}),
            2 => serde_json::json!({
                "namespaceSelector": selector(g, "ns", &["x", "y", "z"]),
                "podSelector": selector(g, "pod", &["a", "b", "c"])
            }),
            _ => {
                let cidr = *g.pick(&["10.32.0.0/16", "10.32.1.0/24", "0.0.0.0/0", "10.32.2.2/32"]);
                let except: Vec<&str> = ["10.32.1.0/26", "10.32.2.0/24", "10.32.0.2/32"]
                    .into_iter()
                    .filter(|_| g.chance(3))
                    .collect();
                serde_json::json!({"ipBlock": {"cidr": cidr, "except": except}})
            }
        }
    }

    fn port(g: &mut Gen) -> serde_json::Value {
        let proto = *g.pick(&["TCP", "UDP", "SCTP"]);
        match g.below(5) {
            0 => serde_json::json!({"protocol": proto}),
            1 => serde_json::json!({"protocol": proto, "port": 80 + g.below(2)}),
            2 => serde_json::json!({"port": 79, "endPort": 80 + g.below(2)}),
            3 => serde_json::json!({"port": *g.pick(&["serve-80-tcp", "serve-81-udp", "nope"])}),
            _ => {
                serde_json::json!({"protocol": proto, "port": *g.pick(&["serve-80-tcp", "serve-81-udp"])})
            }
        }
    }

    fn rules(g: &mut Gen, key: &str) -> Vec<serde_json::Value> {
        (0..g.below(3))
            .map(|_| {
                let mut r = serde_json::Map::new();
                if !g.chance(3) {
                    let n = 1 + g.below(2);
                    r.insert(key.into(), (0..n).map(|_| peer(g)).collect());
                }
                if !g.chance(3) {
                    let n = 1 + g.below(2);
                    r.insert("ports".into(), (0..n).map(|_| port(g)).collect());
                }
                serde_json::Value::Object(r)
            })
            .collect()
    }

    fn random_policy(g: &mut Gen, i: usize) -> NetworkPolicy {
        let mut spec = serde_json::json!({"podSelector": selector(g, "pod", &["a", "b", "c"])});
        if !g.chance(4) {
            spec["ingress"] = rules(g, "from").into();
        }
        if g.chance(2) {
            spec["egress"] = rules(g, "to").into();
        }
        match g.below(4) {
            0 => spec["policyTypes"] = serde_json::json!(["Ingress"]),
            1 => spec["policyTypes"] = serde_json::json!(["Egress"]),
            2 => spec["policyTypes"] = serde_json::json!(["Ingress", "Egress"]),
            _ => {}
        }
        let ns = *g.pick(&["x", "y", "z"]);
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": format!("p{i}"), "namespace": ns},
            "spec": spec
        }))
        .expect("a policy")
    }

    /// Namespaces x, y, z and pods a, b, c in each, on two nodes, with the e2e suite's
    /// named ports (some pods lack some, so named ports resolve differently per pod).
    fn world(g: &mut Gen) -> (Cluster, Vec<Pod>, Vec<u8>) {
        let mut pods = Vec::new();
        let mut namespaces = BTreeMap::new();
        let mut node = Vec::new();
        for (i, ns) in ["x", "y", "z"].into_iter().enumerate() {
            let labels: Labels = [("ns".to_string(), ns.to_string())].into();
            namespaces.insert(ns.to_string(), labels);
            for (j, name) in ["a", "b", "c"].into_iter().enumerate() {
                let mut named_ports = Vec::new();
                for (n, pr, num) in [
                    ("serve-80-tcp", "TCP", 80),
                    ("serve-81-udp", "UDP", 81),
                    ("serve-80-tcp", "TCP", 81),
                ] {
                    if g.chance(2) {
                        named_ports.push((n.to_string(), pr.to_string(), num));
                    }
                }
                let mut labels: Labels = [("pod".to_string(), name.to_string())].into();
                if g.chance(4) {
                    labels.insert("other".into(), "1".into());
                }
                pods.push(Pod {
                    namespace: ns.into(),
                    name: name.into(),
                    labels,
                    ip: Some([10, 32, i as u8 + 1, j as u8 + 1].into()),
                    named_ports,
                });
                node.push(g.below(2) as u8);
            }
        }
        let n = g.below(5) as usize;
        let policies = (0..n).map(|i| random_policy(g, i)).collect();
        (
            Cluster {
                namespaces,
                policies,
            },
            pods,
            node,
        )
    }

    /// For thousands of random clusters, the two nodes' rule sets together decide every
    /// connection between pods, and from and to outside addresses, exactly as the oracle.
    #[test]
    fn compiled_rules_agree_with_the_oracle() {
        let mut g = Gen(0x9e37_79b9_7f4a_7c15);
        let outside: [Ipv4Addr; 3] = [
            [192, 0, 2, 7].into(),
            [10, 32, 1, 9].into(),
            [10, 32, 2, 200].into(),
        ];
        let ports = [
            Some((Proto::Tcp, 80)),
            Some((Proto::Tcp, 81)),
            Some((Proto::Udp, 80)),
            Some((Proto::Udp, 81)),
            Some((Proto::Sctp, 80)),
            None,
        ];
        let mut checked = 0u64;
        for case in 0..3000 {
            let (cluster, pods, node) = world(&mut g);
            let rs: Vec<Ruleset> = (0..2u8)
                .map(|n| {
                    compile(&cluster, &pods, |p| {
                        let i = pods.iter().position(|q| q == p).expect("a pod");
                        node[i] == n
                    })
                })
                .collect();
            let ends: Vec<End> = pods
                .iter()
                .map(End::Pod)
                .chain(outside.iter().map(|&a| End::Address(a)))
                .collect();
            let node_of = |e: &End| match e {
                End::Pod(p) => pods.iter().position(|q| q == *p).map(|i| node[i]),
                End::Address(_) => None,
            };
            let ip = |e: &End| match e {
                End::Pod(p) => p.ip.expect("an address"),
                End::Address(a) => *a,
            };
            for s in &ends {
                for d in &ends {
                    if node_of(s).is_none() && node_of(d).is_none() {
                        continue;
                    }
                    for port in ports {
                        let want = match port {
                            Some((p, n)) => cluster.allows(*s, *d, p.api(), n),
                            // No ports: only rules without ports let it through.
                            None => oracle_portless(&cluster, *s, *d),
                        };
                        let eg = node_of(s)
                            .is_none_or(|n| rs[n as usize].egress_allows(ip(s), ip(d), port));
                        let ing = node_of(d)
                            .is_none_or(|n| rs[n as usize].ingress_allows(ip(s), ip(d), port));
                        assert_eq!(
                            eg && ing,
                            want,
                            "case {case}: {:?} -> {:?} {port:?}\npolicies: {}\nrules: {:#?}",
                            ip(s),
                            ip(d),
                            serde_json::to_string_pretty(&cluster.policies).unwrap(),
                            rs
                        );
                        checked += 1;
                    }
                }
            }
        }
        assert!(checked > 1_000_000, "{checked}");
    }

    /// The oracle for a protocol without ports (ICMP): a rule allows it only if it lists no
    /// ports. Expressed through the oracle by asking for a protocol no port entry can name.
    fn oracle_portless(c: &Cluster, s: End, d: End) -> bool {
        c.allows(s, d, "ICMP", 0)
    }
}
