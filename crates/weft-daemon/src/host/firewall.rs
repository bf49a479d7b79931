//! weft's share of the host firewall, as a pure function of what the router wants.
//!
//! Weave kept its rules in the host's iptables (`WEAVE`, `WEAVE-EXPOSE`, ...), and so do
//! Docker and kube-proxy; weft does the same with chains of its own, each reached by one jump
//! inserted first in a built-in chain:
//!
//! | table | built-in | weft's chain | what it holds |
//! |---|---|---|---|
//! | filter | FORWARD | `WEFT-FORWARD` | frames between ports of the bridge (containers, sleeve, VXLAN) are accepted, which Docker's FORWARD policy DROP would otherwise drop once `br_netfilter` passes bridged frames through iptables; traffic routed from one overlay subnet to another through this host is dropped (subnets stay isolated); containers' traffic leaving the bridge, and replies to it, is accepted; traffic entering the bridge goes through `WEFT-EXPOSE` |
//! | filter | – | `WEFT-EXPOSE` | one ACCEPT per exposed subnet: only those are reachable from the host's other interfaces |
//! | filter | INPUT | `WEFT-INPUT` | containers (on docker0 or the bridge) cannot reach the router's own ports; docker0's containers can reach weftDNS; the HTTP API on loopback refuses sources that are not local (kube-proxy's `route_localnet` would otherwise open it); VXLAN datagrams are taken only from neighbours' addresses (VXLAN carries no authentication: anyone who could send to the port could put frames on the bridge) |
//! | nat | POSTROUTING | `WEFT` | per exposed subnet without `--without-masquerade`: multicast left alone, traffic entering it from outside masqueraded (replies route back through this host), traffic leaving it for anywhere else masqueraded (containers and pods reach the world) |
//!
//! Invariants: every rule weft adds is in a `WEFT*` chain or is a jump to one, so removing
//! weft's rules (`weft reset`) is "delete the jumps, flush and delete the chains", which can
//! never touch a rule of anyone else's; applying is idempotent (chains are rewritten whole,
//! jumps are added only when missing), so a relaunch never duplicates rules.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};

use ipnet::Ipv4Net;

/// The filter table's chains, in the order they are declared (a chain is declared before a
/// rule jumps to it).
pub const FILTER_CHAINS: [&str; 3] = ["WEFT-EXPOSE", "WEFT-FORWARD", "WEFT-INPUT"];
pub const NAT_CHAINS: [&str; 1] = ["WEFT"];

/// What the rules depend on; the reconcile loop recomputes it from the host every round.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FirewallSpec {
    /// The weft bridge.
    pub bridge: String,
    /// Docker's bridge, when the host has one: its containers may not reach the overlay through
    /// the host, nor the router's ports.
    pub docker_bridge: Option<String>,
    /// Control TCP and sleeve UDP.
    pub port: u16,
    /// The VXLAN fast path's UDP port.
    pub vxlan_port: u16,
    /// When the fast path runs: the neighbours' addresses VXLAN may come from (all others
    /// are dropped), and the address it must be sent to (`--host`), if bound to one.
    pub vxlan_from: Option<VxlanSources>,
    /// Loopback listeners (the HTTP API, the status address) that non-local sources must not
    /// reach.
    pub local_only: Vec<SocketAddr>,
    /// weftDNS's port, when it runs: docker0's containers must reach it.
    pub dns_port: Option<u16>,
    /// Subnets the host is exposed in (its addresses on the bridge, network part only).
    pub exposed: BTreeSet<Ipv4Net>,
    /// Exposed subnets without NAT (`weft expose --without-masquerade`).
    pub no_masquerade: BTreeSet<Ipv4Net>,
    /// Whether the `physdev` match is usable: it tells bridged frames from routed packets.
    /// Without it, routed traffic between subnets on the bridge is accepted as bridged is.
    pub physdev: bool,
}

/// Who may send VXLAN to this host.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VxlanSources {
    pub neighbours: BTreeSet<Ipv4Addr>,
    pub local: Option<Ipv4Addr>,
}

/// One table's part of the rule set.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TableRules {
    pub table: &'static str,
    /// weft's chains with their whole contents (rule arguments after `-A CHAIN`).
    pub chains: Vec<(&'static str, Vec<String>)>,
    /// Jumps into weft's chains, each inserted first in its built-in chain: `(built-in, rule)`.
    pub jumps: Vec<(&'static str, String)>,
}

/// The complete rule set for a spec: filter, then nat.
pub fn rules(spec: &FirewallSpec) -> [TableRules; 2] {
    let br = &spec.bridge;
    let mut forward = Vec::new();
    if let Some(d) = &spec.docker_bridge {
        forward.push(format!("-i {d} -o {br} -j DROP"));
    }
    if spec.physdev {
        forward.push(format!(
            "-i {br} -o {br} -m physdev --physdev-is-bridged -j ACCEPT"
        ));
        forward.push(format!("-i {br} -o {br} -j DROP"));
    } else {
        forward.push(format!("-i {br} -o {br} -j ACCEPT"));
    }
    forward.push(format!("-o {br} -j WEFT-EXPOSE"));
    forward.push(format!("-i {br} ! -o {br} -j ACCEPT"));
    forward.push(format!(
        "-o {br} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"
    ));

    let expose: Vec<String> = spec
        .exposed
        .iter()
        .map(|c| format!("-d {c} -j ACCEPT"))
        .collect();

    let mut input = Vec::new();
    let container_sides: Vec<&str> = spec
        .docker_bridge
        .iter()
        .map(String::as_str)
        .chain(std::iter::once(br.as_str()))
        .collect();
    if let (Some(d), Some(port)) = (&spec.docker_bridge, spec.dns_port) {
        for proto in ["udp", "tcp"] {
            input.push(format!("-i {d} -p {proto} --dport {port} -j ACCEPT"));
        }
    }
    for side in &container_sides {
        input.push(format!("-i {side} -p tcp --dport {} -j DROP", spec.port));
        input.push(format!("-i {side} -p udp --dport {} -j DROP", spec.port));
        input.push(format!(
            "-i {side} -p udp --dport {} -j DROP",
            spec.vxlan_port
        ));
    }
    if let Some(v) = &spec.vxlan_from {
        let to = v.local.map(|a| format!(" -d {a}/32")).unwrap_or_default();
        for n in &v.neighbours {
            input.push(format!(
                "-s {n}/32{to} -p udp --dport {} -j ACCEPT",
                spec.vxlan_port
            ));
        }
        input.push(format!(
            "-p udp --dport {} -m comment --comment \"weft: VXLAN from a host that is not a neighbour\" -j DROP",
            spec.vxlan_port
        ));
    }
    let mut local_only: Vec<&SocketAddr> = spec
        .local_only
        .iter()
        .filter(|a| a.ip().is_loopback() && a.is_ipv4())
        .collect();
    local_only.dedup();
    for a in local_only {
        input.push(format!(
            "-d {}/32 -p tcp --dport {} -m addrtype ! --src-type LOCAL -m conntrack ! --ctstate RELATED,ESTABLISHED -m comment --comment \"weft: non-local access to a local-only port\" -j DROP",
            a.ip(),
            a.port()
        ));
    }

    let mut nat = Vec::new();
    for c in spec.exposed.difference(&spec.no_masquerade) {
        nat.push(format!("-s {c} -d 224.0.0.0/4 -j RETURN"));
        nat.push(format!("-d {c} ! -s {c} -j MASQUERADE"));
        nat.push(format!("-s {c} ! -d {c} -j MASQUERADE"));
    }

    [
        TableRules {
            table: "filter",
            chains: vec![
                ("WEFT-EXPOSE", expose),
                ("WEFT-FORWARD", forward),
                ("WEFT-INPUT", input),
            ],
            jumps: vec![
                ("FORWARD", "-j WEFT-FORWARD".into()),
                ("INPUT", "-j WEFT-INPUT".into()),
            ],
        },
        TableRules {
            table: "nat",
            chains: vec![("WEFT", nat)],
            jumps: vec![("POSTROUTING", "-j WEFT".into())],
        },
    ]
}

fn is_our_chain(name: &str) -> bool {
    name == "WEFT" || name.starts_with("WEFT-")
}

/// The lines of an `iptables-save` table dump that are weft's: its chain declarations, their
/// rules, and jumps into them from elsewhere. Comparing these before and after tells whether
/// someone removed or changed weft's rules.
pub fn ours(save: &str) -> Vec<String> {
    save.lines()
        .filter(|l| {
            if let Some(decl) = l.strip_prefix(':') {
                return is_our_chain(decl.split_whitespace().next().unwrap_or(""));
            }
            let mut words = l.split_whitespace();
            if words.next() != Some("-A") {
                return false;
            }
            let chain = words.next().unwrap_or("");
            is_our_chain(chain) || jump_target(l).is_some_and(is_our_chain)
        })
        .map(str::to_string)
        .collect()
}

fn jump_target(rule: &str) -> Option<&str> {
    let mut words = rule.split_whitespace();
    while let Some(w) = words.next() {
        if w == "-j" || w == "-g" {
            return words.next();
        }
    }
    None
}

/// `iptables-restore --noflush` input that makes a table hold `want`: weft's chains are
/// declared (which empties them) and refilled, and the jumps that `current` (the table's
/// `iptables-save` dump) lacks are inserted first in their built-in chains.
pub fn apply_text(want: &TableRules, current: &str) -> String {
    let have = ours(current);
    let mut out = format!("*{}\n", want.table);
    for (chain, _) in &want.chains {
        out.push_str(&format!(":{chain} - [0:0]\n"));
    }
    for (chain, rules) in &want.chains {
        for r in rules {
            out.push_str(&format!("-A {chain} {r}\n"));
        }
    }
    for (builtin, rule) in &want.jumps {
        let line = format!("-A {builtin} {rule}");
        if !have.contains(&line) {
            out.push_str(&format!("-I {builtin} 1 {rule}\n"));
        }
    }
    out.push_str("COMMIT\n");
    out
}

/// `iptables-restore --noflush` input that removes everything of weft's from a table (given its
/// `iptables-save` dump), or `None` when there is nothing to remove.
pub fn remove_text(table: &str, current: &str) -> Option<String> {
    let mine = ours(current);
    if mine.is_empty() {
        return None;
    }
    let mut out = format!("*{table}\n");
    // Jumps first (a chain still referenced cannot be deleted), then weft's chains.
    for l in &mine {
        if let Some(rest) = l.strip_prefix("-A ")
            && !is_our_chain(rest.split_whitespace().next().unwrap_or(""))
        {
            out.push_str(&format!("-D {rest}\n"));
        }
    }
    let chains: Vec<&str> = mine
        .iter()
        .filter_map(|l| l.strip_prefix(':'))
        .filter_map(|d| d.split_whitespace().next())
        .collect();
    for c in &chains {
        out.push_str(&format!("-F {c}\n"));
    }
    for c in &chains {
        out.push_str(&format!("-X {c}\n"));
    }
    out.push_str("COMMIT\n");
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> FirewallSpec {
        FirewallSpec {
            bridge: "weft".into(),
            docker_bridge: Some("docker0".into()),
            port: 6783,
            vxlan_port: 6784,
            vxlan_from: None,
            local_only: vec![
                "127.0.0.1:6784".parse().unwrap(),
                "127.0.0.1:6782".parse().unwrap(),
            ],
            dns_port: Some(53),
            exposed: BTreeSet::new(),
            no_masquerade: BTreeSet::new(),
            physdev: true,
        }
    }

    fn chain<'a>(t: &'a TableRules, name: &str) -> &'a [String] {
        &t.chains.iter().find(|(c, _)| *c == name).unwrap().1
    }

    #[test]
    fn bridged_frames_are_accepted_and_routed_ones_between_subnets_dropped() {
        let [filter, _] = rules(&spec());
        let fwd = chain(&filter, "WEFT-FORWARD");
        assert_eq!(
            fwd,
            [
                "-i docker0 -o weft -j DROP",
                "-i weft -o weft -m physdev --physdev-is-bridged -j ACCEPT",
                "-i weft -o weft -j DROP",
                "-o weft -j WEFT-EXPOSE",
                "-i weft ! -o weft -j ACCEPT",
                "-o weft -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
            ]
        );
        assert_eq!(
            filter.jumps,
            [
                ("FORWARD", "-j WEFT-FORWARD".to_string()),
                ("INPUT", "-j WEFT-INPUT".to_string())
            ]
        );
    }

    #[test]
    fn vxlan_comes_only_from_neighbours_when_the_fast_path_runs() {
        let [filter, _] = rules(&spec());
        assert!(
            !chain(&filter, "WEFT-INPUT")
                .iter()
                .any(|r| r.contains("--dport 6784 -m comment")),
            "no fast path, no rule"
        );
        let mut s = spec();
        s.vxlan_from = Some(VxlanSources {
            neighbours: BTreeSet::from([Ipv4Addr::new(198, 18, 0, 2)]),
            local: Some(Ipv4Addr::new(198, 18, 0, 1)),
        });
        let [filter, _] = rules(&s);
        let input = chain(&filter, "WEFT-INPUT");
        let accept = input
            .iter()
            .position(|r| r == "-s 198.18.0.2/32 -d 198.18.0.1/32 -p udp --dport 6784 -j ACCEPT")
            .unwrap();
        let drop = input
            .iter()
            .position(|r| r.starts_with("-p udp --dport 6784 -m comment") && r.ends_with("-j DROP"))
            .unwrap();
        assert!(accept < drop);
        // Containers are refused before any neighbour rule could accept them.
        let container = input
            .iter()
            .position(|r| r == "-i weft -p udp --dport 6784 -j DROP")
            .unwrap();
        assert!(container < accept);
    }

    #[test]
    fn without_physdev_or_docker_the_bridge_is_accepted_whole() {
        let mut s = spec();
        s.physdev = false;
        s.docker_bridge = None;
        let [filter, _] = rules(&s);
        let fwd = chain(&filter, "WEFT-FORWARD");
        assert_eq!(fwd[0], "-i weft -o weft -j ACCEPT");
        assert!(!fwd.iter().any(|r| r.contains("docker0")));
        // No docker0: no DNS accept for it, but the bridge still cannot reach the router.
        let input = chain(&filter, "WEFT-INPUT");
        assert!(!input.iter().any(|r| r.contains("--dport 53")));
        assert!(input.contains(&"-i weft -p tcp --dport 6783 -j DROP".to_string()));
    }

    #[test]
    fn containers_cannot_reach_router_ports_and_the_api_is_local_only() {
        let [filter, _] = rules(&spec());
        let input = chain(&filter, "WEFT-INPUT");
        for side in ["docker0", "weft"] {
            for r in [
                format!("-i {side} -p tcp --dport 6783 -j DROP"),
                format!("-i {side} -p udp --dport 6783 -j DROP"),
                format!("-i {side} -p udp --dport 6784 -j DROP"),
            ] {
                assert!(input.contains(&r), "{r} missing from {input:?}");
            }
        }
        // DNS is accepted before anything is dropped.
        assert_eq!(input[0], "-i docker0 -p udp --dport 53 -j ACCEPT");
        assert_eq!(input[1], "-i docker0 -p tcp --dport 53 -j ACCEPT");
        let local: Vec<_> = input.iter().filter(|r| r.contains("src-type")).collect();
        assert_eq!(local.len(), 2);
        assert!(local[0].starts_with("-d 127.0.0.1/32 -p tcp --dport 6784 "));
        assert!(local[1].starts_with("-d 127.0.0.1/32 -p tcp --dport 6782 "));
    }

    #[test]
    fn a_non_loopback_api_gets_no_local_only_rule() {
        let mut s = spec();
        s.local_only = vec!["0.0.0.0:6784".parse().unwrap()];
        let [filter, _] = rules(&s);
        assert!(
            !chain(&filter, "WEFT-INPUT")
                .iter()
                .any(|r| r.contains("src-type"))
        );
    }

    #[test]
    fn exposed_subnets_are_accepted_and_masqueraded_unless_asked_not_to() {
        let mut s = spec();
        let a: Ipv4Net = "10.32.0.0/12".parse().unwrap();
        let b: Ipv4Net = "10.2.1.0/24".parse().unwrap();
        s.exposed = [a, b].into();
        s.no_masquerade = [b].into();
        let [filter, nat] = rules(&s);
        assert_eq!(
            chain(&filter, "WEFT-EXPOSE"),
            ["-d 10.2.1.0/24 -j ACCEPT", "-d 10.32.0.0/12 -j ACCEPT"]
        );
        assert_eq!(
            chain(&nat, "WEFT"),
            [
                "-s 10.32.0.0/12 -d 224.0.0.0/4 -j RETURN",
                "-d 10.32.0.0/12 ! -s 10.32.0.0/12 -j MASQUERADE",
                "-s 10.32.0.0/12 ! -d 10.32.0.0/12 -j MASQUERADE",
            ]
        );
        assert_eq!(nat.jumps, [("POSTROUTING", "-j WEFT".to_string())]);
    }

    #[test]
    fn nothing_exposed_means_empty_expose_and_nat_chains() {
        let [filter, nat] = rules(&spec());
        assert!(chain(&filter, "WEFT-EXPOSE").is_empty());
        assert!(chain(&nat, "WEFT").is_empty());
    }

    const SAVED: &str = "# Generated by iptables-save v1.8.9 (nf_tables)
*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:DOCKER - [0:0]
:DOCKER-USER - [0:0]
:WEFT-EXPOSE - [0:0]
:WEFT-FORWARD - [0:0]
:WEFT-INPUT - [0:0]
-A INPUT -j WEFT-INPUT
-A FORWARD -j WEFT-FORWARD
-A FORWARD -j DOCKER-USER
-A FORWARD -o docker0 -j DOCKER
-A WEFT-FORWARD -i weft -o weft -j ACCEPT
-A WEFT-FORWARD -o weft -j WEFT-EXPOSE
COMMIT
";

    #[test]
    fn ours_picks_weft_chains_their_rules_and_jumps_only() {
        assert_eq!(
            ours(SAVED),
            [
                ":WEFT-EXPOSE - [0:0]",
                ":WEFT-FORWARD - [0:0]",
                ":WEFT-INPUT - [0:0]",
                "-A INPUT -j WEFT-INPUT",
                "-A FORWARD -j WEFT-FORWARD",
                "-A WEFT-FORWARD -i weft -o weft -j ACCEPT",
                "-A WEFT-FORWARD -o weft -j WEFT-EXPOSE",
            ]
        );
    }

    #[test]
    fn applying_twice_does_not_duplicate_jumps() {
        let [filter, nat] = rules(&spec());
        let fresh = apply_text(&filter, "*filter\n:FORWARD DROP [0:0]\nCOMMIT\n");
        assert!(fresh.contains("-I FORWARD 1 -j WEFT-FORWARD\n"));
        assert!(fresh.contains("-I INPUT 1 -j WEFT-INPUT\n"));
        assert!(fresh.starts_with(
            "*filter\n:WEFT-EXPOSE - [0:0]\n:WEFT-FORWARD - [0:0]\n:WEFT-INPUT - [0:0]\n"
        ));
        assert!(fresh.ends_with("COMMIT\n"));
        let again = apply_text(&filter, SAVED);
        assert!(!again.contains("-I "), "{again}");
        // Chains are rewritten whole either way.
        assert!(again.contains("-A WEFT-FORWARD -i weft ! -o weft -j ACCEPT\n"));
        let nat_text = apply_text(&nat, "*nat\n:POSTROUTING ACCEPT [0:0]\nCOMMIT\n");
        assert!(nat_text.contains("-I POSTROUTING 1 -j WEFT\n"));
    }

    #[test]
    fn removal_deletes_jumps_then_chains_and_nothing_else() {
        let text = remove_text("filter", SAVED).unwrap();
        assert_eq!(
            text,
            "*filter
-D INPUT -j WEFT-INPUT
-D FORWARD -j WEFT-FORWARD
-F WEFT-EXPOSE
-F WEFT-FORWARD
-F WEFT-INPUT
-X WEFT-EXPOSE
-X WEFT-FORWARD
-X WEFT-INPUT
COMMIT
"
        );
        assert!(!text.contains("DOCKER"));
        assert_eq!(
            remove_text("nat", "*nat\n:POSTROUTING ACCEPT [0:0]\nCOMMIT\n"),
            None
        );
    }

    #[test]
    fn a_chain_named_like_ours_but_longer_is_not_ours() {
        assert!(ours(":WEFTX - [0:0]\n-A FORWARD -j WEFTX\n").is_empty());
    }
}
