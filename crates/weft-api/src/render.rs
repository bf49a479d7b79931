//! The text layouts of `weft status`, following Weave's so that habits and scripts carry over:
//! labels right-aligned to end in column 16, the same line formats for connections and peers.

use std::fmt::Write;

use crate::types::{ConnectionReport, ContainerEntry, Report};

/// `Label: value` with the label right-aligned to column 15.
fn line(out: &mut String, label: &str, value: impl std::fmt::Display) {
    let _ = writeln!(out, "{label:>15}: {value}");
}

/// The router section of `weft status`.
pub fn status(r: &Report) -> String {
    let rt = &r.router;
    let mut out = String::new();
    line(
        &mut out,
        "Version",
        format!("{} (version check update disabled)", r.version),
    );
    out.push('\n');
    line(&mut out, "Service", "router");
    let protocol = if rt.protocol_min_version == rt.protocol_max_version {
        format!("{} {}", rt.protocol, rt.protocol_max_version)
    } else {
        format!(
            "{} {}..{}",
            rt.protocol, rt.protocol_min_version, rt.protocol_max_version
        )
    };
    line(&mut out, "Protocol", protocol);
    line(&mut out, "Name", format!("{}({})", rt.name, rt.nick_name));
    line(&mut out, "Encryption", enabled(rt.encryption));
    line(&mut out, "PeerDiscovery", enabled(rt.peer_discovery));
    line(&mut out, "Targets", rt.targets.len());
    line(&mut out, "Connections", connection_counts(&rt.connections));
    let (mut est, mut pend) = (0, 0);
    for p in &rt.peers {
        for c in &p.connections {
            if c.established {
                est += 1;
            } else {
                pend += 1;
            }
        }
    }
    let peers = match (est, pend) {
        (0, 0) => format!("{}", rt.peers.len()),
        (e, 0) => format!("{} (with {e} established connections)", rt.peers.len()),
        (e, p) => format!(
            "{} (with {e} established, {p} pending connections)",
            rt.peers.len()
        ),
    };
    line(&mut out, "Peers", peers);
    let trusted = if rt.trusted_subnets.is_empty() {
        "none".to_string()
    } else {
        rt.trusted_subnets.join(", ")
    };
    line(&mut out, "TrustedSubnets", trusted);
    if let Some(i) = &r.ipam {
        out.push('\n');
        line(&mut out, "Service", "ipam");
        line(&mut out, "Status", &i.status);
        line(&mut out, "Range", &i.range);
        line(&mut out, "DefaultSubnet", &i.default_subnet);
        if !i.conflicts.is_empty() {
            line(
                &mut out,
                "Conflicts",
                format!("{} (see 'weft status ipam')", i.conflicts.len()),
            );
        }
    }
    if let Some(d) = &r.dns {
        out.push('\n');
        line(&mut out, "Service", "dns");
        line(&mut out, "Domain", &d.domain);
        let up = if d.upstream.is_empty() {
            "none".to_string()
        } else {
            d.upstream.join(", ")
        };
        line(&mut out, "Upstream", up);
        line(&mut out, "TTL", d.ttl);
        line(
            &mut out,
            "Entries",
            d.entries.iter().filter(|e| !e.tombstone).count(),
        );
    }
    if let Some(p) = &r.proxy {
        out.push('\n');
        line(&mut out, "Service", "proxy");
        line(&mut out, "Address", p.addresses.join(", "));
    }
    if let Some(p) = &r.plugin {
        out.push('\n');
        line(&mut out, "Service", "plugin (legacy)");
        line(&mut out, "DriverName", &p.driver_name);
    }
    out
}

/// `weft status dns`: `<name> <address> <container> <origin peer>` per live entry, the name
/// without the domain.
pub fn dns(r: &Report) -> String {
    let Some(d) = &r.dns else {
        return "weftDNS is disabled\n".into();
    };
    let suffix = format!(".{}", d.domain.trim_start_matches('.'));
    let mut out = String::new();
    for e in d.entries.iter().filter(|e| !e.tombstone) {
        let name = e
            .hostname
            .strip_suffix(&suffix)
            .or_else(|| e.hostname.strip_suffix(suffix.trim_end_matches('.')))
            .unwrap_or(&e.hostname);
        let _ = writeln!(
            out,
            "{name:<12} {:<15} {:>12.12} {}",
            e.address, e.container_id, e.origin
        );
    }
    out
}

/// `weft status ipam`: space per peer (ours first), what is unreachable, what was refused.
pub fn ipam(r: &Report) -> String {
    let mut out = String::new();
    let Some(i) = &r.ipam else {
        return "IP address allocation is disabled\n".into();
    };
    // As Weave: nothing before the ring exists; why not yet is in `weft status` (Status:).
    if i.owners.is_empty() {
        return out;
    }
    let total = i.range_num_ips.max(1) as f64;
    let mut owners: Vec<&crate::types::IpamOwnerReport> = i.owners.iter().collect();
    owners.sort_by_key(|o| !o.local);
    for o in owners {
        let info = if o.local {
            format!("({} active)", o.active)
        } else if !o.reachable {
            "- unreachable!".to_string()
        } else {
            String::new()
        };
        let who = format!("{}({})", o.name, o.nick_name);
        let pct = o.ips as f64 * 100.0 / total;
        let _ = writeln!(
            out,
            "{who:<37} {:>8} IPs ({pct:04.1}% of total) {info}",
            o.ips
        );
    }
    if i.unreachable_ips > 0 {
        let pct = i.unreachable_ips as f64 * 100.0 / total;
        let _ = writeln!(
            out,
            "\n{} IPs ({pct:.1}% of total) are owned by unreachable peers; if those peers are gone for good, run 'weft rmpeer PEER' on one host.",
            i.unreachable_ips
        );
    }
    for c in &i.conflicts {
        let _ = writeln!(out, "\nrefused IP allocation data from {c}");
    }
    out
}

fn enabled(b: bool) -> &'static str {
    if b { "enabled" } else { "disabled" }
}

/// `N (a established, b pending, ...)`: every entry counts toward N; the breakdown lists the
/// non-zero states in a fixed order and never lists `waiting`.
fn connection_counts(conns: &[ConnectionReport]) -> String {
    let order = ["established", "pending", "retrying", "failed", "connecting"];
    let parts: Vec<String> = order
        .iter()
        .filter_map(|s| {
            let n = conns.iter().filter(|c| c.state == *s).count();
            (n > 0).then(|| format!("{n} {s}"))
        })
        .collect();
    if parts.is_empty() {
        format!("{}", conns.len())
    } else {
        format!("{} ({})", conns.len(), parts.join(", "))
    }
}

/// `weft status connections`: `<dir> <address> <state> <info> <attrs>`.
pub fn connections(r: &Report) -> String {
    let mut out = String::new();
    for c in &r.router.connections {
        let dir = if c.outbound { "->" } else { "<-" };
        let attrs: Vec<String> = c.attrs.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let mut l = format!("{dir} {:<21} {:<11} {}", c.address, c.state, c.info);
        if !attrs.is_empty() {
            l.push(' ');
            l.push_str(&attrs.join(" "));
        }
        if let Some(why) = &c.overlay_reason {
            l.push_str(&format!(" (fastdp: {why})"));
        }
        let _ = writeln!(out, "{}", l.trim_end());
    }
    out
}

/// `weft status peers`: each peer, then its connections as it reports them.
pub fn peers(r: &Report) -> String {
    let mut out = String::new();
    for p in &r.router.peers {
        let _ = writeln!(out, "{}({})", p.name, p.nick_name);
        for c in &p.connections {
            let dir = if c.outbound { "->" } else { "<-" };
            let who = format!("{}({})", c.name, c.nick_name);
            let state = if c.established {
                "established"
            } else {
                "pending"
            };
            let _ = writeln!(out, "   {dir} {:<21} {who:<37} {state}", c.address);
        }
    }
    out
}

/// `weft status targets`: one per line, as given.
pub fn targets(r: &Report) -> String {
    r.router.targets.iter().map(|t| format!("{t}\n")).collect()
}

/// `weft ps`: `<id> <mac> <cidr>...`.
pub fn ps(entries: &[ContainerEntry]) -> String {
    let mut out = String::new();
    for e in entries {
        // Docker container ids are shown short, as `docker ps` and Weave's `ps` do.
        let docker_id = e.id.len() == 64 && e.id.bytes().all(|b| b.is_ascii_hexdigit());
        let id = if docker_id {
            &e.id[..12]
        } else {
            e.id.as_str()
        };
        let mut l = format!("{id} {}", e.mac);
        for c in &e.cidrs {
            let _ = write!(l, " {c}");
        }
        let _ = writeln!(out, "{l}");
    }
    out
}

/// A UTC timestamp as `2006-01-02 15:04:05`, without a time-zone database.
pub fn utc_timestamp(unix_secs: u64) -> String {
    let days = (unix_secs / 86_400) as i64;
    let secs = unix_secs % 86_400;
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        secs / 3600,
        (secs / 60) % 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::*;

    #[test]
    fn the_report_carries_weaves_version_check_disabled() {
        let v: serde_json::Value = serde_json::to_value(report()).unwrap();
        assert_eq!(v["VersionCheck"]["Enabled"], serde_json::json!(false));
        assert_eq!(v["VersionCheck"]["NewVersion"], serde_json::json!(""));
    }

    #[test]
    fn status_ipam_is_empty_before_a_ring_exists() {
        let mut r = report();
        r.ipam = Some(IpamReport {
            status: "awaiting consensus (quorum: 2, known: 1)".into(),
            ..Default::default()
        });
        assert_eq!(ipam(&r), "");
    }

    fn report() -> Report {
        let conn = |peer: &str, nick: &str, est: bool| PeerConnectionReport {
            name: peer.into(),
            nick_name: nick.into(),
            address: "198.18.0.2:6783".into(),
            outbound: true,
            established: est,
        };
        Report {
            ready: true,
            version: "0.1.0".into(),
            version_check: Default::default(),
            router: RouterReport {
                protocol: "weft".into(),
                protocol_min_version: 1,
                protocol_max_version: 1,
                name: "6e:b2:81:6c:ac:b3".into(),
                nick_name: "host1".into(),
                peer_discovery: true,
                targets: vec!["198.18.0.2".into()],
                peers: vec![
                    PeerReport {
                        name: "6e:b2:81:6c:ac:b3".into(),
                        nick_name: "host1".into(),
                        connections: vec![conn("aa:00:00:00:00:02", "host2", true)],
                        ..Default::default()
                    },
                    PeerReport {
                        name: "aa:00:00:00:00:02".into(),
                        nick_name: "host2".into(),
                        connections: vec![conn("6e:b2:81:6c:ac:b3", "host1", true)],
                        ..Default::default()
                    },
                ],
                connections: vec![
                    ConnectionReport {
                        address: "198.18.0.2:6783".into(),
                        outbound: true,
                        state: "established".into(),
                        info: "sleeve aa:00:00:00:00:02(host2)".into(),
                        attrs: [("mtu".to_string(), "1438".to_string())].into(),
                        key_epoch: None,
                        cipher: None,
                        overlay_reason: Some("fast path disabled on the peer".into()),
                    },
                    ConnectionReport {
                        address: "198.18.0.3:6783".into(),
                        outbound: true,
                        state: "failed".into(),
                        info: "connect: connection refused, retry: 2026-11-24 10:00:00".into(),
                        attrs: Default::default(),
                        key_epoch: None,
                        cipher: None,
                        overlay_reason: None,
                    },
                ],
                ..Default::default()
            },
            ipam: None,
            dns: None,
            proxy: None,
            plugin: None,
            docker_unavailable: None,
        }
    }

    #[test]
    fn encrypted_connection_layout() {
        let mut r = report();
        r.router.encryption = true;
        r.router.connections[0].info =
            format!("{:<11} {}", "encrypted", r.router.connections[0].info);
        r.router.connections[0]
            .attrs
            .insert("encrypted".into(), "true".into());
        let s = connections(&r);
        assert_eq!(
            s.lines().next().unwrap(),
            "-> 198.18.0.2:6783       established encrypted   sleeve aa:00:00:00:00:02(host2) encrypted=true mtu=1438 (fastdp: fast path disabled on the peer)"
        );
        assert!(status(&r).contains("     Encryption: enabled\n"));
    }

    #[test]
    fn status_layout_matches_weave() {
        let s = status(&report());
        let want = "        Version: 0.1.0 (version check update disabled)

        Service: router
       Protocol: weft 1
           Name: 6e:b2:81:6c:ac:b3(host1)
     Encryption: disabled
  PeerDiscovery: enabled
        Targets: 1
    Connections: 2 (1 established, 1 failed)
          Peers: 2 (with 2 established connections)
 TrustedSubnets: none
";
        assert_eq!(s, want);
    }

    #[test]
    fn connection_and_peer_lines() {
        let r = report();
        let c = connections(&r);
        assert_eq!(
            c.lines().next().unwrap(),
            "-> 198.18.0.2:6783       established sleeve aa:00:00:00:00:02(host2) mtu=1438 (fastdp: fast path disabled on the peer)"
        );
        let p = peers(&r);
        assert_eq!(
            p.lines().nth(1).unwrap(),
            "   -> 198.18.0.2:6783       aa:00:00:00:00:02(host2)              established"
        );
    }

    #[test]
    fn ipam_layouts() {
        let mut r = report();
        r.ipam = Some(IpamReport {
            status: "ready".into(),
            range: "10.32.0.0/12".into(),
            range_num_ips: 1 << 20,
            default_subnet: "10.32.0.0/12".into(),
            owners: vec![
                IpamOwnerReport {
                    name: "aa:00:00:00:00:02".into(),
                    nick_name: "host2".into(),
                    ips: 1 << 18,
                    reachable: false,
                    local: false,
                    active: 0,
                },
                IpamOwnerReport {
                    name: "6e:b2:81:6c:ac:b3".into(),
                    nick_name: "host1".into(),
                    ips: 3 << 18,
                    reachable: true,
                    local: true,
                    active: 2,
                },
            ],
            unreachable_ips: 1 << 18,
            ..Default::default()
        });
        let s = status(&r);
        assert!(s.ends_with(
            "\n        Service: ipam\n         Status: ready\n          Range: 10.32.0.0/12\n  DefaultSubnet: 10.32.0.0/12\n"
        ), "{s}");
        let mut d = r.clone();
        d.proxy = Some(ProxyReport {
            addresses: vec!["unix:///run/weft/weft.sock".into()],
            tls: None,
        });
        d.plugin = Some(PluginReport {
            driver_name: "weft".into(),
        });
        let s = status(&d);
        assert!(s.ends_with(
            "\n        Service: proxy\n        Address: unix:///run/weft/weft.sock\n\n        Service: plugin (legacy)\n     DriverName: weft\n"
        ), "{s}");
        let i = ipam(&r);
        let lines: Vec<&str> = i.lines().collect();
        assert_eq!(
            lines[0],
            "6e:b2:81:6c:ac:b3(host1)                786432 IPs (75.0% of total) (2 active)"
        );
        assert_eq!(
            lines[1],
            "aa:00:00:00:00:02(host2)                262144 IPs (25.0% of total) - unreachable!"
        );
        assert!(i.contains("262144 IPs (25.0% of total) are owned by unreachable peers"));
    }

    #[test]
    fn timestamps() {
        assert_eq!(utc_timestamp(0), "1970-01-01 00:00:00");
        assert_eq!(utc_timestamp(1_795_000_000), "2026-11-18 11:06:40");
    }
}
