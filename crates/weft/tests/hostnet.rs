//! End-to-end on Docker-posture hosts (docker0, br_netfilter, FORWARD policy DROP, Docker's
//! chains): weft's firewall rules let containers talk, heal when flushed, survive `stop`,
//! leave with `reset`; `expose` routes, masquerades and isolates; a reused address is reached
//! at once (gratuitous ARP); a bridge lost while the router was away comes back with its ports.
//!
//! Needs root and iptables (CI runs as root); set WEFT_SKIP_NETNS_TESTS=1 to skip elsewhere.

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use weft_testbed::Testbed;

const WEFT: &str = env!("CARGO_BIN_EXE_weft");
const CONVERGE: Duration = Duration::from_secs(30);
/// The firewall check runs every 5 s; a repair must land within about 10.
const HEAL: Duration = Duration::from_secs(12);

fn launch(tb: &Testbed, n: usize, extra: &[&str]) -> Result<()> {
    tb.launch_mesh(n, extra)
}

fn attach(tb: &mut Testbed, host: usize, name: &str, args: &[&str]) -> Result<(String, String)> {
    let ns = tb.container(name)?;
    let mut a: Vec<&str> = vec!["attach"];
    a.extend_from_slice(args);
    a.push(&ns);
    let ip = tb.weft_ok(host, &a)?.trim().to_string();
    Ok((ns, ip))
}

/// One ping, one second: did it get an answer?
fn pings(tb: &Testbed, ns: &str, dst: &str) -> bool {
    tb.exec(ns, "ping", &["-c", "1", "-W", "1", dst])
        .status
        .success()
}

fn count(haystack: &str, needle: &str) -> usize {
    haystack.lines().filter(|l| *l == needle).count()
}

#[test]
fn docker_hosts_forward_heal_survive_stop_and_reset_cleanly() -> Result<()> {
    let Some(mut tb) = weft_testbed::for_test("fw", 2, Path::new(WEFT)) else {
        return Ok(());
    };
    launch(&tb, 2, &[])?;
    let (c1, _) = attach(&mut tb, 1, "a", &[])?;
    let (_, ip2) = attach(&mut tb, 1, "b", &[])?;
    let (_, ip3) = attach(&mut tb, 2, "c", &[])?;
    tb.wait_ping(&c1, &ip2, CONVERGE)?;
    tb.wait_ping(&c1, &ip3, CONVERGE)?;

    let save = tb.iptables_save(1)?;
    assert!(save.contains(":FORWARD DROP"), "{save}");
    assert_eq!(count(&save, "-A FORWARD -j WEFT-FORWARD"), 1, "{save}");
    assert!(save.contains("-A FORWARD -j DOCKER-USER"), "{save}");

    // Flushes of both tables (as `iptables -F` and a firewall reload do), then Docker
    // writing its rules again as it does when it restarts: weft's are repaired.
    tb.iptables(1, &["-F"])?;
    tb.iptables(1, &["-t", "nat", "-F"])?;
    tb.iptables_restore(&tb.host(1).netns, weft_testbed::DOCKER_RULES)?;
    let flushed = Instant::now();
    Testbed::wait_for(HEAL, || {
        let s = tb.iptables_save(1)?;
        if s.contains("-A FORWARD -j WEFT-FORWARD") && s.contains("-A POSTROUTING -j WEFT") {
            Ok(())
        } else {
            bail!("rules not back:\n{s}")
        }
    })?;
    let healed = flushed.elapsed();
    assert!(
        Testbed::wait_for(HEAL, || {
            if tb.router_log(1).contains("restored them") {
                Ok(())
            } else {
                bail!("the log does not say what was repaired")
            }
        })
        .is_ok(),
        "{}",
        tb.router_log(1)
    );
    tb.wait_ping(&c1, &ip2, HEAL)?;
    tb.wait_ping(&c1, &ip3, HEAL)?;
    eprintln!("rules restored {healed:?} after the flush");

    // Stopped, the rules stay: local and fast-path traffic go on through the kernels.
    tb.weft_ok(1, &["stop"])?;
    assert!(
        pings(&tb, &c1, &ip2),
        "local traffic stopped with the router"
    );
    assert!(
        pings(&tb, &c1, &ip3),
        "fast-path traffic stopped with the router"
    );
    // Without weft's rules, Docker's DROP policy cuts even the local pair: what they are for.
    tb.iptables(1, &["-D", "FORWARD", "-j", "WEFT-FORWARD"])?;
    assert!(
        !pings(&tb, &c1, &ip2),
        "FORWARD DROP did not apply to the bridge"
    );
    // A second launch puts the jump back, once.
    tb.launch(1, &[&tb.host(2).ip.to_string()])?;
    tb.wait_ping(&c1, &ip2, CONVERGE)?;
    tb.wait_ping(&c1, &ip3, CONVERGE)?;
    let save = tb.iptables_save(1)?;
    assert_eq!(count(&save, "-A FORWARD -j WEFT-FORWARD"), 1, "{save}");
    assert_eq!(count(&save, "-A INPUT -j WEFT-INPUT"), 1, "{save}");
    assert_eq!(count(&save, "-A POSTROUTING -j WEFT"), 1, "{save}");

    // Reset removes everything of weft's and nothing of Docker's.
    tb.weft_ok(1, &["reset"])?;
    let save = tb.iptables_save(1)?;
    assert!(!save.contains("WEFT"), "{save}");
    for docker in [
        "-A FORWARD -j DOCKER-USER",
        "-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE",
        ":FORWARD DROP",
    ] {
        assert!(save.contains(docker), "{docker} gone after reset:\n{save}");
    }
    Ok(())
}

#[test]
fn containers_cannot_reach_the_routers_ports() -> Result<()> {
    let Some(mut tb) = weft_testbed::for_test("fwin", 1, Path::new(WEFT)) else {
        return Ok(());
    };
    launch(&tb, 1, &[])?;
    let (c1, _) = attach(&mut tb, 1, "a", &[])?;
    let exposed = tb.weft_ok(1, &["expose"])?.trim().to_string();
    tb.wait_ping(&c1, &exposed, CONVERGE)?;
    // The host answers on its overlay address, but not on the router's control port.
    let probe = format!("exec 3<>/dev/tcp/{exposed}/6783 && echo open");
    let out = tb.exec(&c1, "timeout", &["3", "bash", "-c", &probe]);
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("open"),
        "a container reached the control port"
    );
    let save = tb.iptables_save(1)?;
    assert!(
        save.contains("-A WEFT-INPUT -i docker0 -p tcp -m tcp --dport 6783 -j DROP"),
        "{save}"
    );
    assert!(
        save.contains("--dport 6784 -m addrtype ! --src-type LOCAL"),
        "{save}"
    );
    Ok(())
}

#[test]
fn expose_routes_masquerades_and_isolates_subnets() -> Result<()> {
    let Some(mut tb) = weft_testbed::for_test("fwx", 2, Path::new(WEFT)) else {
        return Ok(());
    };
    launch(&tb, 2, &[])?;
    let h1 = tb.host(1).netns.clone();
    let (c1, ip1) = attach(&mut tb, 1, "a", &["net:10.32.0.0/16"])?;
    let (c2, ip2) = attach(&mut tb, 1, "b", &["net:10.33.0.0/16"])?;
    let (_, ip3) = attach(&mut tb, 2, "c", &["net:10.32.0.0/16"])?;
    let gw = tb
        .weft_ok(1, &["expose", "net:10.32.0.0/16"])?
        .trim()
        .to_string();

    // The host reaches the exposed subnet (here and across the overlay), not the other one.
    tb.wait_ping(&h1, &ip1, CONVERGE)?;
    tb.wait_ping(&h1, &ip3, CONVERGE)?;
    tb.wait_ping(&c1, &gw, CONVERGE)?;
    assert!(
        !pings(&tb, &h1, &ip2),
        "the host reached a subnet it did not expose"
    );

    // A client on another host reaches c1 through a port forward on host 1; c1 has no route
    // beyond its subnet, so this works only because weft masquerades what enters the subnet.
    tb.spawn(
        &c1,
        "busybox",
        &["nc", "-ll", "-p", "8080", "-e", "echo", "hello-from-c1"],
    )?;
    let dnat = format!("{ip1}:8080");
    tb.iptables(
        1,
        &[
            "-t",
            "nat",
            "-A",
            "PREROUTING",
            "-d",
            "198.18.0.1",
            "-p",
            "tcp",
            "--dport",
            "8080",
            "-j",
            "DNAT",
            "--to-destination",
            &dnat,
        ],
    )?;
    let h2 = tb.host(2).netns.clone();
    Testbed::wait_for(Duration::from_secs(10), || {
        let out = tb.exec(&h2, "busybox", &["nc", "-w", "2", "198.18.0.1", "8080"]);
        let got = String::from_utf8_lossy(&out.stdout);
        if got.contains("hello-from-c1") {
            Ok(())
        } else {
            bail!("no answer through the port forward: {got}")
        }
    })?;

    // c1 reaches "the world" beyond its host (which has no route back to the overlay).
    let world = tb.outside("world", Ipv4Addr::new(198, 18, 0, 200))?;
    tb.exec(&c1, "ip", &["route", "add", "default", "via", &gw]);
    tb.wait_ping(&c1, "198.18.0.200", Duration::from_secs(10))?;
    assert!(
        !pings(&tb, &world, &ip1),
        "the world reached the overlay directly"
    );

    // Routed between two exposed subnets through the host: dropped (subnets stay apart),
    // while the host itself still reaches both.
    let gw2 = tb
        .weft_ok(1, &["expose", "net:10.33.0.0/16"])?
        .trim()
        .to_string();
    tb.wait_ping(&h1, &ip2, CONVERGE)?;
    tb.wait_ping(&c2, &gw2, CONVERGE)?;
    tb.exec(&c2, "ip", &["route", "add", "default", "via", &gw2]);
    assert!(
        !pings(&tb, &c1, &ip2),
        "traffic was routed from one subnet into another"
    );

    let save = tb.iptables_save(1)?;
    for rule in [
        "-A WEFT-EXPOSE -d 10.32.0.0/16 -j ACCEPT",
        // (iptables-save prints the source before the destination)
        "-A WEFT ! -s 10.32.0.0/16 -d 10.32.0.0/16 -j MASQUERADE",
        "-A WEFT -s 10.32.0.0/16 ! -d 10.32.0.0/16 -j MASQUERADE",
        "-A WEFT ! -s 10.33.0.0/16 -d 10.33.0.0/16 -j MASQUERADE",
    ] {
        assert!(save.contains(rule), "{rule} missing:\n{save}");
    }

    // hide takes back what expose added; --without-masquerade exposes without NAT.
    tb.weft_ok(1, &["hide"])?;
    let save = tb.iptables_save(1)?;
    assert!(!save.contains("-A WEFT-EXPOSE"), "{save}");
    assert!(!save.contains("-A WEFT "), "{save}");
    assert!(
        !pings(&tb, &h1, &ip1),
        "hidden, the host still reaches the subnet"
    );
    tb.weft_ok(1, &["expose", "--without-masquerade", "net:10.32.0.0/16"])?;
    let save = tb.iptables_save(1)?;
    assert!(
        save.contains("-A WEFT-EXPOSE -d 10.32.0.0/16 -j ACCEPT"),
        "{save}"
    );
    assert!(!save.contains("-A WEFT -"), "{save}");
    Ok(())
}

/// A (on host 1) reaches B's address again after B is gone and C took it, C on host 1 and then
/// on host 2; returns how long each took after C's attach returned.
fn reused_address_reached(extra: &[&str], tag: &str) -> Result<Vec<Duration>> {
    let Some(mut tb) = weft_testbed::for_test(tag, 2, Path::new(WEFT)) else {
        return Ok(Vec::new());
    };
    launch(&tb, 2, extra)?;
    let (a, _) = attach(&mut tb, 1, "a", &[])?;
    let mut took = Vec::new();
    for (host, round) in [(1, "l"), (2, "r")] {
        let (b, ipb) = attach(&mut tb, host, &format!("b{round}"), &[])?;
        tb.wait_ping(&a, &ipb, CONVERGE)?;
        // A knows B's MAC now. B goes; C comes with B's address.
        tb.weft_ok(host, &["detach", &b])?;
        let (c, _) = attach(&mut tb, host, &format!("c{round}"), &[&format!("{ipb}/12")])?;
        let start = Instant::now();
        let neigh = String::from_utf8_lossy(&tb.exec(&a, "ip", &["neigh"]).stdout).into_owned();
        tb.wait_ping(&a, &ipb, Duration::from_secs(20))
            .with_context(|| format!("A's neighbours: {neigh}"))?;
        took.push(start.elapsed());
        let _ = c;
    }
    Ok(took)
}

#[test]
fn a_reused_address_is_reached_at_once_on_the_sleeve() -> Result<()> {
    let took = reused_address_reached(&["--no-fastdp"], "arps")?;
    eprintln!("reached the new holder after {took:?} (local, across the sleeve)");
    for t in took {
        // The first one-second ping answered: no neighbour timeout was waited out.
        assert!(t < Duration::from_secs(1), "{t:?}");
    }
    Ok(())
}

#[test]
fn a_reused_address_is_reached_quickly_on_the_fast_path() -> Result<()> {
    let took = reused_address_reached(&[], "arpf")?;
    eprintln!("reached the new holder after {took:?} (local, across the fast path)");
    if let [local, remote] = took[..] {
        assert!(local < Duration::from_secs(1), "{local:?}");
        // Across the fast path the announcement waits for the new container's record to
        // reach us (a MAC poll, 2 s, and gossip); a neighbour timeout would take 5-10 s.
        assert!(remote < Duration::from_secs(4), "{remote:?}");
    }
    Ok(())
}

#[test]
fn a_bridge_lost_while_the_router_was_away_comes_back_with_its_ports() -> Result<()> {
    let Some(mut tb) = weft_testbed::for_test("fwbr", 1, Path::new(WEFT)) else {
        return Ok(());
    };
    launch(&tb, 1, &[])?;
    let h1 = tb.host(1).netns.clone();
    let (c1, _) = attach(&mut tb, 1, "a", &[])?;
    let (_, ip2) = attach(&mut tb, 1, "b", &[])?;
    tb.wait_ping(&c1, &ip2, CONVERGE)?;

    // Set down while the router runs: brought back up.
    tb.exec(&h1, "ip", &["link", "set", "weft", "down"]);
    tb.wait_ping(&c1, &ip2, HEAL)?;
    assert!(tb.router_log(1).contains("brought it back up"));

    // Deleted while the router is away: made anew at launch, with the containers' ports.
    tb.weft_ok(1, &["stop"])?;
    let del = tb.exec(&h1, "ip", &["link", "del", "weft"]);
    assert!(del.status.success());
    assert!(!pings(&tb, &c1, &ip2));
    tb.launch(1, &[])?;
    tb.wait_ping(&c1, &ip2, CONVERGE)?;
    assert!(
        tb.router_log(1).contains("plugged it back in"),
        "{}",
        tb.router_log(1)
    );
    Ok(())
}

/// Between h1 and h2 the underlay drops UDP packets over 700 bytes (IP length), both ways,
/// without a word (no ICMP): the sleeve learns the path's limit and 10 KB pings pass. Returns
/// how long after the mesh formed the first one did.
fn small_path(extra: &[&str], tag: &str) -> Result<Option<Duration>> {
    let Some(mut tb) = weft_testbed::for_test(tag, 2, Path::new(WEFT)) else {
        return Ok(None);
    };
    tb.narrow_path(1, 2, 700)?;
    launch(&tb, 2, extra)?;
    let meshed = Instant::now();
    let (c1, _) = attach(&mut tb, 1, "a", &[])?;
    let (_, ip2) = attach(&mut tb, 2, "b", &[])?;
    tb.wait_ping(&c1, &ip2, CONVERGE)?;
    Testbed::wait_for(Duration::from_secs(60), || {
        let out = tb.exec(&c1, "ping", &["-c", "1", "-W", "2", "-s", "10000", &ip2]);
        if out.status.success() {
            Ok(())
        } else {
            bail!(
                "no 10 KB ping yet; h1: {}",
                tb.weft_ok(1, &["status", "connections"])?
            )
        }
    })?;
    let settled = meshed.elapsed();
    // Several in a row: not a lucky one.
    let out = tb.exec(
        &c1,
        "ping",
        &["-c", "5", "-i", "0.2", "-W", "2", "-s", "10000", &ip2],
    );
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains(" 0% packet loss"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // The learned limit shows: at most 700 - 28 bytes of payload, less the sleeve's headers.
    let conns = tb.weft_ok(1, &["status", "connections"])?;
    let mtu: u32 = conns
        .split_whitespace()
        .find_map(|w| w.strip_prefix("mtu="))
        .and_then(|m| m.parse().ok())
        .with_context(|| format!("no mtu= in {conns}"))?;
    assert!(mtu <= 672 - 34 && mtu > 500, "{conns}");
    assert!(conns.contains(" sleeve "), "{conns}");
    assert!(
        tb.router_log(1).contains("carries datagrams of at most"),
        "{}",
        tb.router_log(1)
    );
    Ok(Some(settled))
}

#[test]
fn a_narrow_path_is_learned_on_the_sleeve() -> Result<()> {
    if let Some(t) = small_path(&["--no-fastdp"], "pmtus")? {
        eprintln!("10 KB pings pass {t:?} after the mesh formed (--no-fastdp)");
    }
    Ok(())
}

#[test]
fn a_narrow_path_is_learned_when_the_fast_path_falls_back() -> Result<()> {
    if let Some(t) = small_path(&[], "pmtuf")? {
        eprintln!("10 KB pings pass {t:?} after the mesh formed (fast path allowed)");
    }
    Ok(())
}

/// Hairpin mode on the router's own bridge port (set by other software) is detected and
/// logged, as Weave did.
#[test]
fn hairpin_mode_on_the_routers_port_is_logged() -> Result<()> {
    let Some(tb) = weft_testbed::for_test("hpn", 1, Path::new(WEFT)) else {
        return Ok(());
    };
    tb.launch(1, &[])?;
    let ns = tb.host(1).netns.clone();
    let out = tb.exec(
        &ns,
        "sh",
        &["-c", "echo 1 > /sys/class/net/weft-tap/brport/hairpin_mode"],
    );
    assert!(out.status.success(), "{out:?}");
    Testbed::wait_for(HEAL, || {
        let log = tb.router_log(1);
        if log.contains("Hairpin mode enabled on \"weft-tap\"") {
            Ok(())
        } else {
            bail!("not logged:\n{log}")
        }
    })?;
    Ok(())
}
