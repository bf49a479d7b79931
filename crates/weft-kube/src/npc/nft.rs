//! A [`Ruleset`] as an nftables script for `nft -f`: one transaction that brings the table
//! `inet weft-npc` from whatever it held to exactly this rule set, keeping its counters and
//! its record of blocked connections.
//!
//! The table filters the forward hook. With `br_netfilter` (which Docker and Kubernetes
//! nodes load, and weft-kube turns on), frames bridged between two pods on the weft bridge
//! pass through it too, so local, remote and outside traffic all meet the same chains:
//! established connections pass; a new one from an egress-isolated local pod must match an
//! egress rule, and one to an ingress-isolated local pod an ingress rule (a rule *returns*,
//! so a connection between two local pods is checked both ways); what matches none is
//! counted, recorded and dropped. Other tables' verdicts (Docker's, kube-proxy's, weft's own
//! FORWARD accept) are untouched: nftables drops a packet if any base chain does.

use std::collections::BTreeSet;
use std::fmt::Write;

use super::rules::{EG_ISOLATED, IN_ISOLATED, PortMatch, Proto, Rule, Ruleset, SetKind};

pub const FAMILY: &str = "inet";
pub const TABLE: &str = "weft-npc";
/// Recently blocked connections: (source, destination, protocol, port), a minute each.
pub const BLOCKED_SETS: [&str; 2] = ["blocked_in", "blocked_eg"];
const BLOCKED_SIZE: usize = 4096;

/// The counters of dropped new connections, by direction and protocol.
pub fn counters() -> impl Iterator<Item = (&'static str, &'static str, String)> {
    ["ingress", "egress"].into_iter().flat_map(|dir| {
        ["tcp", "udp", "sctp", "other"]
            .into_iter()
            .map(move |p| (dir, p, counter_name(dir, p)))
    })
}

fn counter_name(dir: &str, proto: &str) -> String {
    format!("blocked_{}_{proto}", &dir[..2])
}

fn set_type(kind: &SetKind) -> &'static str {
    match kind {
        SetKind::Addrs(_) => "type ipv4_addr; flags interval;",
        SetKind::Named(_) => "type ipv4_addr . inet_proto . inet_service;",
    }
}

/// The script taking the table from holding the sets `previous` (names, from the last
/// script applied; empty at first) to `rs`.
pub fn script(rs: &Ruleset, previous: &BTreeSet<String>) -> String {
    let mut s = String::new();
    let t = format!("{FAMILY} {TABLE}");
    // Declarations are idempotent: an existing table, chain, set or counter is kept.
    let _ = writeln!(s, "table {t} {{");
    for (_, _, c) in counters() {
        let _ = writeln!(s, "  counter {c} {{ }}");
    }
    for b in BLOCKED_SETS {
        let _ = writeln!(
            s,
            "  set {b} {{ type ipv4_addr . ipv4_addr . inet_proto . inet_service; size {BLOCKED_SIZE}; flags dynamic,timeout; timeout 1m; }}"
        );
    }
    for (name, kind) in &rs.sets {
        let _ = writeln!(s, "  set {name} {{ {} }}", set_type(kind));
    }
    let _ = writeln!(
        s,
        "  chain forward {{ type filter hook forward priority filter; policy accept; }}"
    );
    let _ = writeln!(s, "  chain ingress {{ }}");
    let _ = writeln!(s, "  chain egress {{ }}");
    let _ = writeln!(s, "}}");
    for chain in ["forward", "ingress", "egress"] {
        let _ = writeln!(s, "flush chain {t} {chain}");
    }
    for name in rs.sets.keys() {
        let _ = writeln!(s, "flush set {t} {name}");
    }
    // Sets gone from the rule set, now that no rule refers to them.
    for name in previous.iter().filter(|n| !rs.sets.contains_key(*n)) {
        let _ = writeln!(s, "delete set {t} {name}");
    }
    for (name, kind) in &rs.sets {
        let elems: Vec<String> = match kind {
            SetKind::Addrs(r) => r
                .iter()
                .map(|(lo, hi)| {
                    if lo == hi {
                        lo.to_string()
                    } else {
                        format!("{lo}-{hi}")
                    }
                })
                .collect(),
            SetKind::Named(n) => n
                .iter()
                .map(|(ip, p, port)| format!("{ip} . {} . {port}", p.nft()))
                .collect(),
        };
        // In slices: one huge line is slow to parse and hard to read in a failure.
        for chunk in elems.chunks(512) {
            let _ = writeln!(s, "add element {t} {name} {{ {} }}", chunk.join(", "));
        }
    }
    let _ = writeln!(
        s,
        "add rule {t} forward ct state established,related accept"
    );
    let _ = writeln!(
        s,
        "add rule {t} forward ip saddr @{EG_ISOLATED} jump egress"
    );
    let _ = writeln!(
        s,
        "add rule {t} forward ip daddr @{IN_ISOLATED} jump ingress"
    );
    for (chain, rules, dir) in [
        ("ingress", &rs.ingress, "ingress"),
        ("egress", &rs.egress, "egress"),
    ] {
        for r in rules {
            let _ = writeln!(s, "add rule {t} {chain} {}", rule(r, dir == "ingress"));
        }
        for p in [Proto::Tcp, Proto::Udp, Proto::Sctp] {
            let _ = writeln!(
                s,
                "add rule {t} {chain} meta l4proto {} counter name {}",
                p.nft(),
                counter_name(dir, p.nft())
            );
        }
        let _ = writeln!(
            s,
            "add rule {t} {chain} meta l4proto != {{ tcp, udp, sctp }} counter name {}",
            counter_name(dir, "other")
        );
        let _ = writeln!(
            s,
            "add rule {t} {chain} meta l4proto {{ tcp, udp, sctp }} update @blocked_{} {{ ip saddr . ip daddr . meta l4proto . th dport }}",
            &dir[..2]
        );
        let _ = writeln!(s, "add rule {t} {chain} drop");
    }
    s
}

/// One rule's matches, then `return` (allowed: on to the other direction's check).
fn rule(r: &Rule, ingress: bool) -> String {
    let (local, far) = if ingress {
        ("daddr", "saddr")
    } else {
        ("saddr", "daddr")
    };
    let mut m = format!("ip {local} @{}", r.local);
    if let Some(p) = &r.peer {
        let _ = write!(m, " ip {far} @{p}");
    }
    match &r.port {
        PortMatch::Any => {}
        PortMatch::Proto(p) => {
            let _ = write!(m, " meta l4proto {}", p.nft());
        }
        PortMatch::Range(p, lo, hi) if lo == hi => {
            let _ = write!(m, " meta l4proto {} th dport {lo}", p.nft());
        }
        PortMatch::Range(p, lo, hi) => {
            let _ = write!(m, " meta l4proto {} th dport {lo}-{hi}", p.nft());
        }
        PortMatch::Named(set) => {
            let _ = write!(m, " ip daddr . meta l4proto . th dport @{set}");
        }
    }
    // Policy names are DNS labels: nothing in them needs quoting but the quotes.
    let comment: String = r.comment.chars().filter(|c| *c != '"').take(120).collect();
    format!("{m} return comment \"{comment}\"")
}

/// The script removing the table (weft-kube npc stopping for good, or a test cleaning up).
pub fn remove_script() -> String {
    format!("delete table {FAMILY} {TABLE}\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::npc::rules::Ranges;

    #[test]
    fn a_script_declares_replaces_and_deletes() {
        let mut rs = Ruleset::default();
        rs.sets.insert(
            IN_ISOLATED.into(),
            SetKind::Addrs(Ranges::new(vec![(1, 1)])),
        );
        rs.sets
            .insert(EG_ISOLATED.into(), SetKind::Addrs(Ranges::default()));
        rs.sets
            .insert("p0_in_t".into(), SetKind::Addrs(Ranges::new(vec![(1, 1)])));
        rs.sets.insert(
            "p0_in0_peers".into(),
            SetKind::Addrs(Ranges::new(vec![(0x0a00_0000, 0x0aff_ffff)])),
        );
        rs.ingress.push(Rule {
            comment: "x/p in rule 0".into(),
            local: "p0_in_t".into(),
            peer: Some("p0_in0_peers".into()),
            port: PortMatch::Range(Proto::Tcp, 80, 81),
        });
        let previous = ["p1_in_t".to_string()].into();
        let s = script(&rs, &previous);
        assert!(s.contains("add element inet weft-npc p0_in0_peers { 10.0.0.0-10.255.255.255 }"));
        assert!(s.contains(
            "add rule inet weft-npc ingress ip daddr @p0_in_t ip saddr @p0_in0_peers meta l4proto tcp th dport 80-81 return comment \"x/p in rule 0\""
        ));
        assert!(s.contains("delete set inet weft-npc p1_in_t"));
        assert!(
            !s.contains("add element inet weft-npc eg_isolated"),
            "no empty element list"
        );
    }
}
