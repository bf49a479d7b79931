//! IP address management end to end: the real `weft` binary on namespace hosts.
//!
//! Needs root (CI runs as root); set WEFT_SKIP_NETNS_TESTS=1 to skip elsewhere.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use weft_testbed::Testbed;

const WEFT: &str = env!("CARGO_BIN_EXE_weft");
const CONVERGE: Duration = Duration::from_secs(30);

fn launch_tutorial(tb: &Testbed, extra: &[&str]) -> Result<()> {
    let h1 = tb.host(1).ip.to_string();
    let h2 = tb.host(2).ip.to_string();
    tb.launch(1, extra)?;
    let mut a = extra.to_vec();
    a.push(&h1);
    tb.launch(2, &a)?;
    a.push(&h2);
    tb.launch(3, &a)?;
    tb.wait_status(&[1, 2, 3], "Peers: 3 (with 6 established connections)")
}

/// An HTTP request to host `i`'s API from inside its namespace; returns (status, body).
fn http(tb: &Testbed, i: usize, method: &str, path: &str) -> (u16, String) {
    let script = format!(
        "exec 3<>/dev/tcp/127.0.0.1/6784; printf '{method} {path} HTTP/1.0\\r\\nContent-Length: 0\\r\\n\\r\\n' >&3; cat <&3"
    );
    let out = tb.exec(&tb.host(i).netns, "bash", &["-c", &script]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_string();
    (status, body)
}

#[test]
fn containers_without_addresses_get_distinct_ones_and_ping() -> Result<()> {
    let Some(mut tb) = weft_testbed::for_test("ipa", 3, Path::new(WEFT)) else {
        return Ok(());
    };
    launch_tutorial(&tb, &[])?;
    let mut addrs = Vec::new();
    let mut containers = Vec::new();
    for i in 1..=3 {
        for k in 0..2 {
            let c = tb.container(&format!("h{i}k{k}"))?;
            let a = tb.attach(i, &[], &c)?;
            addrs.push(a.parse::<std::net::Ipv4Addr>()?);
            containers.push((i, c));
        }
    }
    let distinct: BTreeSet<_> = addrs.iter().collect();
    assert_eq!(distinct.len(), addrs.len(), "{addrs:?}");
    let range: ipnet::Ipv4Net = "10.32.0.0/12".parse()?;
    assert!(addrs.iter().all(|a| range.contains(a)), "{addrs:?}");
    // Everyone reaches everyone.
    for (_, c) in &containers {
        for a in &addrs {
            tb.wait_ping(c, &a.to_string(), CONVERGE)?;
        }
    }
    let s = tb.weft_ok(1, &["status"])?;
    for line in [
        "        Service: ipam",
        "         Status: ready",
        "          Range: 10.32.0.0/12",
        "  DefaultSubnet: 10.32.0.0/12",
    ] {
        assert!(s.contains(line), "missing {line:?} in\n{s}");
    }
    let ipam = tb.weft_ok(1, &["status", "ipam"])?;
    let first = ipam.lines().next().unwrap_or_default().to_string();
    assert!(
        first.contains("(host1)") && first.ends_with("(2 active)"),
        "{ipam}"
    );
    assert!(
        first.contains("IPs (") && first.contains("% of total)"),
        "{ipam}"
    );
    // ps shows the allocated address with the range's prefix.
    let ps = tb.weft_ok(1, &["ps"])?;
    assert!(ps.contains(&format!("{}/12", addrs[0])), "{ps}");
    // net:CIDR gives an address in that subnet; a second one on the same container adds to
    // ethwe.
    // (A subnet none of the addresses is in: one the container has an address in already
    // would give that address again, as Weave does.)
    let (_, c) = &containers[0];
    let subnet: ipnet::Ipv4Net = (32..48u8)
        .map(|b| ipnet::Ipv4Net::new(std::net::Ipv4Addr::new(10, b, 0, 0), 16).unwrap())
        .find(|n| !addrs.iter().any(|a| n.contains(a)))
        .expect("a free /16");
    let a = tb.attach(1, &[&format!("net:{subnet}")], c)?;
    assert!(subnet.contains(&a.parse::<std::net::Ipv4Addr>()?), "{a}");
    let out = tb.weft_ok(1, &["ps", c])?;
    assert_eq!(out.split_whitespace().count(), 4, "{out}");
    Ok(())
}

#[test]
fn ip_api_has_weaves_shapes() -> Result<()> {
    let Some(tb) = weft_testbed::for_test("api", 1, Path::new(WEFT)) else {
        return Ok(());
    };
    tb.launch(1, &[])?;
    assert_eq!(
        http(&tb, 1, "POST", "/ip/abc"),
        (200, "10.32.0.1/12\n".into())
    );
    assert_eq!(
        http(&tb, 1, "POST", "/ip/abc"),
        (200, "10.32.0.1/12\n".into()),
        "idempotent"
    );
    assert_eq!(
        http(&tb, 1, "GET", "/ip/abc"),
        (200, "10.32.0.1/12\n".into())
    );
    let (st, body) = http(&tb, 1, "POST", "/ip/def/10.40.0.0/24");
    assert_eq!((st, body.as_str()), (200, "10.40.0.1/24\n"));
    assert_eq!(http(&tb, 1, "PUT", "/ip/ghi/10.32.9.9/12").0, 204);
    let (st, body) = http(&tb, 1, "PUT", "/ip/jkl/10.32.9.9/12");
    assert_eq!(st, 409, "{body}");
    assert!(body.contains("already in use by ghi"), "{body}");
    assert_eq!(http(&tb, 1, "DELETE", "/ip/abc").0, 204);
    // Released: not found, as in Weave's API.
    assert_eq!(http(&tb, 1, "GET", "/ip/abc").0, 404);
    let (st, body) = http(&tb, 1, "DELETE", "/ip/abc");
    assert_eq!(st, 400, "{body}");
    assert_eq!(http(&tb, 1, "GET", "/ring").0, 200);
    assert_eq!(
        http(&tb, 1, "GET", "/ipinfo/defaultsubnet"),
        (200, "10.32.0.0/12\n".into())
    );
    let (st, body) = http(&tb, 1, "POST", "/ip/x/192.168.0.0/24");
    assert_eq!(st, 400, "{body}");
    assert!(body.contains("outside the allocation range"), "{body}");
    Ok(())
}

#[test]
fn a_restarted_router_keeps_its_containers_addresses() -> Result<()> {
    let Some(mut tb) = weft_testbed::for_test("ipr", 2, Path::new(WEFT)) else {
        return Ok(());
    };
    let h1 = tb.host(1).ip.to_string();
    tb.launch(1, &[])?;
    tb.launch(2, &[&h1])?;
    tb.wait_status(&[1, 2], "Peers: 2 (with 2 established connections)")?;
    let c1 = tb.container("a")?;
    let c2 = tb.container("b")?;
    let a1 = tb.attach(2, &[], &c1)?;
    let a2 = tb.attach(2, &[], &c2)?;
    tb.kill_router(2)?;
    tb.launch(2, &["--resume"])?;
    tb.wait_status(&[1, 2], "Peers: 2 (with 2 established connections)")?;
    let ps = tb.weft_ok(2, &["ps"])?;
    assert!(
        ps.contains(&format!("{a1}/12")) && ps.contains(&format!("{a2}/12")),
        "{ps}"
    );
    let c3 = tb.container("c")?;
    let c4 = tb.container("d")?;
    let a3 = tb.attach(2, &[], &c3)?;
    let a4 = tb.attach(1, &[], &c4)?;
    let all: BTreeSet<&String> = [&a1, &a2, &a3, &a4].into_iter().collect();
    assert_eq!(all.len(), 4, "{a1} {a2} {a3} {a4}");
    tb.wait_ping(&c1, &a4, CONVERGE)?;
    Ok(())
}

#[test]
fn separately_started_clusters_refuse_to_join_and_keep_working() -> Result<()> {
    let Some(mut tb) = weft_testbed::for_test("spl", 2, Path::new(WEFT)) else {
        return Ok(());
    };
    tb.launch(1, &[])?;
    tb.launch(2, &[])?;
    let c1 = tb.container("a")?;
    let c2 = tb.container("b")?;
    let a1 = tb.attach(1, &[], &c1)?;
    let a2 = tb.attach(2, &[], &c2)?;
    assert_eq!(a1, a2, "both seeded their own ring");
    tb.weft_ok(2, &["connect", &tb.host(1).ip.to_string()])?;
    // Whichever side refused, both show why: the dialling side on its target, the other on
    // the refused inbound connection.
    for i in [2, 1] {
        let conns = Testbed::wait_for(CONVERGE, || {
            let c = tb.weft_ok(i, &["status", "connections"])?;
            if c.contains("seeded by different peers") {
                Ok(c)
            } else {
                bail!("h{i}: {c}")
            }
        })?;
        assert!(conns.contains("failed"), "h{i}: {conns}");
        assert!(
            conns.contains("weft reset"),
            "h{i} says what to do: {conns}"
        );
    }
    for i in [1, 2] {
        // Each side notices when it gets the other's ring (on this or a retried connection).
        Testbed::wait_for(CONVERGE, || {
            let ipam = tb.weft_ok(i, &["status", "ipam"])?;
            if ipam.contains("seeded by different peers") {
                Ok(())
            } else {
                bail!("h{i}: {ipam}")
            }
        })?;
        let s = tb.weft_ok(i, &["status"])?;
        assert!(
            s.contains("Status: ready") && s.contains("Conflicts: "),
            "h{i}: {s}"
        );
        assert!(
            tb.router_log(i).contains("seeded by different peers"),
            "h{i} logs it"
        );
    }
    // Both keep working on their own.
    let c3 = tb.container("c")?;
    let c4 = tb.container("d")?;
    tb.attach(1, &[], &c3)?;
    tb.attach(2, &[], &c4)?;
    tb.wait_ping(&c3, &a1, CONVERGE)?;
    // The advice works: reset one cluster's hosts and launch them with a peer of the other.
    tb.weft_ok(2, &["reset"])?;
    tb.launch(2, &[&tb.host(1).ip.to_string()])?;
    tb.wait_status(&[1, 2], "Peers: 2 (with 2 established connections)")?;
    let c5 = tb.container("e")?;
    let a5 = tb.attach(2, &[], &c5)?;
    assert!(a5 != a1, "one ring now: {a5}");
    tb.wait_ping(&c5, &a1, CONVERGE)?;
    Ok(())
}

#[test]
fn rmpeer_frees_a_dead_hosts_space_and_reset_hands_over() -> Result<()> {
    let Some(mut tb) = weft_testbed::for_test("rmp", 3, Path::new(WEFT)) else {
        return Ok(());
    };
    launch_tutorial(&tb, &[])?;
    for i in 1..=3 {
        let c = tb.container(&format!("c{i}"))?;
        tb.attach(i, &[], &c)?;
    }
    // rmpeer of a live peer is refused.
    let out = tb.weft(1, &["rmpeer", "host2"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("still reachable"));
    // host3 dies for good.
    tb.kill_router(3)?;
    let ipam = Testbed::wait_for(Duration::from_secs(60), || {
        let s = tb.weft_ok(1, &["status", "ipam"])?;
        if s.contains("- unreachable!") {
            Ok(s)
        } else {
            bail!("{s}")
        }
    })?;
    assert!(ipam.contains("owned by unreachable peers"), "{ipam}");
    assert!(
        ipam.contains("run 'weft rmpeer PEER'"),
        "says what to do: {ipam}"
    );
    let out = tb.weft_ok(1, &["rmpeer", "host3"])?;
    assert!(out.contains("IPs taken over from host3"), "{out}");
    let n: u64 = out.split_whitespace().next().unwrap_or("0").parse()?;
    assert!(n > 0, "{out}");
    Testbed::wait_for(CONVERGE, || {
        let s = tb.weft_ok(2, &["status", "ipam"])?;
        if s.contains("unreachable") {
            bail!("{s}")
        } else {
            Ok(())
        }
    })?;
    // reset on host2 hands its space to host1, which then owns everything.
    tb.weft_ok(2, &["reset"])?;
    let ipam = Testbed::wait_for(Duration::from_secs(60), || {
        let s = tb.weft_ok(1, &["status", "ipam"])?;
        if s.lines().filter(|l| l.contains(" IPs (")).count() == 1 {
            Ok(s)
        } else {
            bail!("{s}")
        }
    })?;
    assert!(
        ipam.contains("(100.0% of total)") || ipam.contains("1048576 IPs"),
        "{ipam}"
    );
    Ok(())
}

#[test]
fn detach_and_vanished_containers_release_addresses() -> Result<()> {
    let Some(mut tb) = weft_testbed::for_test("rel", 1, Path::new(WEFT)) else {
        return Ok(());
    };
    tb.launch(1, &[])?;
    let c1 = tb.container("a")?;
    assert_eq!(tb.attach(1, &[], &c1)?, "10.32.0.1");
    assert_eq!(tb.weft_ok(1, &["detach", &c1])?.trim(), "10.32.0.1");
    let c2 = tb.container("b")?;
    assert_eq!(
        tb.attach(1, &[], &c2)?,
        "10.32.0.1",
        "the released address is reused"
    );
    // A container that disappears gives its address back within seconds.
    let out = std::process::Command::new("ip")
        .args(["netns", "del", &c2])
        .output()?;
    assert!(out.status.success());
    let start = Instant::now();
    let c3 = tb.container("c")?;
    Testbed::wait_for(Duration::from_secs(10), || {
        let (st, body) = http(&tb, 1, "GET", &format!("/ip/{c2}"));
        if st == 404 {
            Ok(())
        } else {
            bail!("still allocated: {st} {body}")
        }
    })?;
    assert_eq!(
        weft_testbed::ps_only_the_host(&tb.weft_ok(1, &["ps"])?),
        Ok(())
    );
    eprintln!("released {:?} after the namespace went", start.elapsed());
    assert_eq!(tb.attach(1, &[], &c3)?, "10.32.0.1");
    Ok(())
}

#[test]
fn waiting_for_consensus_fails_clearly_and_bad_ranges_are_reported() -> Result<()> {
    let Some(mut tb) = weft_testbed::for_test("tmo", 2, Path::new(WEFT)) else {
        return Ok(());
    };
    // host2 expects host1 (quorum 2) but host1 is not up: the attach fails, bounded, saying why.
    let h1 = tb.host(1).ip.to_string();
    tb.launch(2, &["--ipalloc-timeout=3", &h1])?;
    let c = tb.container("c")?;
    let start = Instant::now();
    let out = tb.weft(2, &["attach", &c]);
    let took = start.elapsed();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("timed out after 3s"), "{err}");
    assert!(
        err.contains("awaiting consensus (quorum: 2, known: 1)"),
        "{err}"
    );
    assert!(took < Duration::from_secs(10), "{took:?}");
    // Nothing half-done: the container has no interface.
    assert!(
        !tb.exec(&c, "ip", &["link", "show", "ethwe"])
            .status
            .success()
    );
    tb.weft_ok(2, &["status", "ipam"])?;
    tb.weft_ok(2, &["stop"])?;

    // A changed --ipalloc-range against saved allocations starts the new range afresh, as
    // Weave did, and says what it did with the old state.
    tb.launch(1, &[])?;
    tb.attach(1, &[], &c)?;
    tb.weft_ok(1, &["stop"])?;
    tb.launch(1, &["--ipalloc-range=10.99.0.0/16"])?;
    let log = tb.router_log(1);
    assert!(
        log.contains("saved IP allocation state is for range 10.32.0.0/12")
            && log.contains("set it aside"),
        "{log}"
    );
    tb.weft_ok(1, &["stop"])?;
    // Launching with the old range takes its state up again: the address is kept.
    tb.launch(1, &[])?;
    assert!(tb.weft_ok(1, &["ps"])?.contains("10.32.0.1/12"));
    Ok(())
}

/// A router killed with SIGKILL at arbitrary moments while allocating never loses an
/// allocation it had answered: after a restart every answered address is still there.
#[test]
fn kill_9_during_allocations_loses_no_answered_allocation() -> Result<()> {
    let Some(tb) = weft_testbed::for_test("k9", 1, Path::new(WEFT)) else {
        return Ok(());
    };
    tb.launch(1, &[])?;
    let ns = tb.host(1).netns.clone();
    let log = std::env::temp_dir().join(format!("{}-answers", tb.prefix));
    for round in 0..4 {
        // Allocate as fast as possible, writing down each answer as it arrives.
        let script = format!(
            "i=0; while true; do i=$((i+1)); \
             r=$( (exec 3<>/dev/tcp/127.0.0.1/6784 && printf 'POST /ip/r{round}k%d HTTP/1.0\\r\\nContent-Length: 0\\r\\n\\r\\n' $i >&3 && cat <&3) 2>/dev/null | tail -n 1); \
             case \"$r\" in 10.*) echo \"r{round}k$i $r\" >> {log};; *) exit 0;; esac; done",
            log = log.display()
        );
        let mut child = tb.cmd_in(&ns, "bash").args(["-c", &script]).spawn()?;
        std::thread::sleep(Duration::from_millis(300 + 150 * round));
        tb.kill_router(1)?;
        let _ = child.wait();
        tb.launch(1, &["--resume"])?;
        let answers = std::fs::read_to_string(&log).unwrap_or_default();
        let mut checked = 0;
        for line in answers.lines() {
            let mut f = line.split_whitespace();
            let (Some(id), Some(addr)) = (f.next(), f.next()) else {
                continue;
            };
            let (_, body) = http(&tb, 1, "GET", &format!("/ip/{id}"));
            assert_eq!(body.trim(), addr, "round {round}: {id} lost its address");
            checked += 1;
        }
        assert!(checked > 0, "round {round}: no allocation was answered");
        eprintln!("round {round}: {checked} answered allocations all survived");
    }
    let _ = std::fs::remove_file(&log);
    Ok(())
}

#[test]
fn expose_gives_the_host_an_overlay_address() -> Result<()> {
    let Some(mut tb) = weft_testbed::for_test("exp", 2, Path::new(WEFT)) else {
        return Ok(());
    };
    let h1 = tb.host(1).ip.to_string();
    tb.launch(1, &[])?;
    tb.launch(2, &[&h1])?;
    tb.wait_status(&[1, 2], "Peers: 2 (with 2 established connections)")?;
    let c = tb.container("c")?;
    let a = tb.attach(2, &[], &c)?;
    let e = tb.weft_ok(1, &["expose"])?.trim().to_string();
    assert!(e.starts_with("10."), "{e}");
    // The host itself now reaches a container on the other host, and back.
    let h1ns = tb.host(1).netns.clone();
    tb.wait_ping(&h1ns, &a, CONVERGE)?;
    tb.wait_ping(&c, &e, CONVERGE)?;
    let ps = tb.weft_ok(1, &["ps"])?;
    assert!(
        ps.starts_with("weave:expose ") && ps.contains(&format!("{e}/12")),
        "{ps}"
    );
    let (_, body) = http(&tb, 1, "GET", "/ip/weave:expose");
    assert_eq!(body.trim(), format!("{e}/12"));
    assert_eq!(tb.weft_ok(1, &["hide"])?.trim(), e);
    assert_eq!(
        weft_testbed::ps_only_the_host(&tb.weft_ok(1, &["ps"])?),
        Ok(())
    );
    let (st, _) = http(&tb, 1, "GET", "/ip/weave:expose");
    assert_eq!(st, 404, "hide released the address");
    Ok(())
}

/// The sequence Weave users script: launch, attach from the range, reset, launch. Reset
/// removes every state file, so the second launch starts as a new peer, and allocates again.
/// Then a launch under another name than the saved state's starts as that peer, with the old
/// state set aside (not refused, as before).
#[test]
fn reset_starts_clean_and_a_new_name_sets_the_old_state_aside() -> Result<()> {
    let Some(mut tb) = weft_testbed::for_test("rst", 1, Path::new(WEFT)) else {
        return Ok(());
    };
    let state = tb.host(1).state_dir.clone();
    let first = tb.launch(1, &[])?.trim().to_string();
    let c = tb.container("c")?;
    let a = tb.attach(1, &[], &c)?;
    assert!(a.starts_with("10."), "{a}");
    assert!(state.join("ipam.json").exists());
    tb.weft_ok(1, &["reset"])?;
    let left: Vec<String> = std::fs::read_dir(&state)?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_, _>>()?;
    assert!(left.is_empty(), "reset left {left:?}");
    let second = tb.launch(1, &[])?.trim().to_string();
    assert_ne!(first, second, "a reset host is a new peer");
    let d = tb.container("d")?;
    assert!(tb.attach(1, &[], &d)?.starts_with("10."));

    // Another name against the saved state: starts, and keeps the old state aside; d keeps
    // its address in the new peer's ring.
    tb.weft_ok(1, &["stop"])?;
    tb.launch(1, &["--name=12:34:56:78:9a:bc"])?;
    let e = tb.container("e")?;
    assert!(tb.attach(1, &[], &e)?.starts_with("10."));
    let aside = state.join(format!("ipam.json.{}", second.replace(':', "-")));
    assert!(aside.exists(), "no {}", aside.display());
    assert!(
        tb.router_log(1).contains("set it aside"),
        "{}",
        tb.router_log(1)
    );
    // The log's advice works: the old name again takes its state up again.
    tb.weft_ok(1, &["stop"])?;
    tb.launch(1, &[&format!("--name={second}")])?;
    assert!(!aside.exists(), "{} still aside", aside.display());
    assert!(state.join("ipam.json.12-34-56-78-9a-bc").exists());
    assert!(
        tb.router_log(1)
            .contains("took up this peer's saved IP allocation state again")
    );
    Ok(())
}

/// `detach C` with no address takes what `attach C` with no address gave (the default
/// subnet's addresses) and prints it, leaving addresses in other subnets, as Weave's did.
#[test]
fn detach_without_addresses_takes_the_default_subnets() -> Result<()> {
    let Some(mut tb) = weft_testbed::for_test("dtd", 1, Path::new(WEFT)) else {
        return Ok(());
    };
    tb.launch(1, &["--ipalloc-default-subnet=10.32.0.0/16"])?;
    let c = tb.container("c")?;
    let default = tb.attach(1, &[], &c)?;
    let other = tb.attach(1, &["net:10.33.0.0/16"], &c)?;
    assert!(default.starts_with("10.32.") && other.starts_with("10.33."));
    assert_eq!(tb.weft_ok(1, &["detach", &c])?.trim(), default);
    let ps = tb.weft_ok(1, &["ps", &c])?;
    assert!(
        ps.contains(&format!("{other}/16")) && !ps.contains(&default),
        "{ps}"
    );
    Ok(())
}

/// Addresses outside the allocation range are never the allocator's business: attach,
/// expose, detach and hide of such addresses answer at once even while the ring waits for a
/// consensus it cannot reach, and they create no ring.
#[test]
fn addresses_outside_the_range_answer_at_once_and_make_no_ring() -> Result<()> {
    let Some(mut tb) = weft_testbed::for_test("oor", 1, Path::new(WEFT)) else {
        return Ok(());
    };
    tb.launch(1, &["--ipalloc-init=consensus=2", "--ipalloc-timeout=20"])?;
    let c = tb.container("c")?;
    let start = Instant::now();
    assert_eq!(tb.attach(1, &["10.2.1.4/24"], &c)?, "10.2.1.4");
    assert_eq!(
        tb.weft_ok(1, &["expose", "10.2.1.2/24"])?.trim(),
        "10.2.1.2"
    );
    let (st, _) = http(&tb, 1, "PUT", "/ip/other/10.2.1.9/24");
    assert_eq!(st, 204);
    assert_eq!(
        tb.weft_ok(1, &["detach", "10.2.1.4/24", &c])?.trim(),
        "10.2.1.4"
    );
    assert_eq!(tb.weft_ok(1, &["hide", "10.2.1.2/24"])?.trim(), "10.2.1.2");
    let took = start.elapsed();
    assert!(took < Duration::from_secs(10), "waited {took:?}");
    // No ring, and no consensus was even started: nothing in status ipam, the allocator idle.
    assert_eq!(tb.weft_ok(1, &["status", "ipam"])?, "");
    let status = tb.weft_ok(1, &["status"])?;
    assert!(status.contains("Status: idle"), "{status}");
    Ok(())
}

/// Weave's "claim" sequence: both hosts lose everything they saved (the whole state
/// directory) while their containers run, and form a blank ring, the other host first. The
/// containers are found on the bridge again and their addresses re-claimed before anything is
/// handed out: the first address the other host would give is the one host 1's container
/// holds, and it is not given.
#[test]
fn lost_state_never_hands_out_a_running_containers_address() -> Result<()> {
    let Some(mut tb) = weft_testbed::for_test("slo", 2, Path::new(WEFT)) else {
        return Ok(());
    };
    let range = "--ipalloc-range=10.2.0.0/16";
    let (h1, h2) = (tb.host(1).ip.to_string(), tb.host(2).ip.to_string());
    tb.launch(1, &[range, &h2])?;
    tb.launch(2, &[range, &h1])?;
    tb.wait_status(&[1, 2], "Peers: 2 (with 2 established connections)")?;
    let c1 = tb.container("c1")?;
    assert_eq!(tb.attach(1, &["10.2.0.1/16"], &c1)?, "10.2.0.1");
    let exposed = tb.weft_ok(1, &["expose"])?.trim().to_string();
    let c2 = tb.container("c2")?;
    let a2 = tb.attach(2, &[], &c2)?;
    tb.wait_ping(&c2, "10.2.0.1", CONVERGE)?;
    tb.weft_ok(1, &["stop"])?;
    tb.weft_ok(2, &["stop"])?;
    for i in [1, 2] {
        std::fs::remove_dir_all(&tb.host(i).state_dir)?;
    }

    tb.launch(2, &[range])?;
    tb.launch(1, &[range, &h2])?;
    tb.wait_status(&[1, 2], "Peers: 2 (with 2 established connections)")?;
    Testbed::wait_for(CONVERGE, || {
        let log = tb.router_log(1);
        if log.contains("reclaimed 10.2.0.1 for") && log.contains(&format!("reclaimed {exposed}")) {
            Ok(())
        } else {
            bail!("host 1 has not reclaimed its container's address:\n{log}")
        }
    })?;
    let ps = tb.weft_ok(1, &["ps"])?;
    assert!(
        ps.contains("10.2.0.1/16"),
        "the container is listed again: {ps}"
    );
    assert!(ps.contains("weave:expose") && ps.contains(&exposed), "{ps}");
    let c3 = tb.container("c3")?;
    let a3 = tb.attach(2, &[], &c3)?;
    assert!(
        a3 != "10.2.0.1" && a3 != a2 && a3 != exposed,
        "handed out {a3} again"
    );
    tb.wait_ping(&c1, &a3, CONVERGE)?;
    // The container is released as any once it goes.
    tb.weft_ok(1, &["detach", &c1])?;
    let (_, body) = http(&tb, 1, "GET", &format!("/ip/{c1}"));
    assert!(!body.contains("10.2.0.1"), "{body}");
    Ok(())
}

/// A subnet's network address given as an address (`10.2.1.0/24`) is accepted, with a
/// warning, as Weave did; the broadcast address is still refused with what to do.
#[test]
fn a_subnets_network_address_is_accepted_with_a_warning() -> Result<()> {
    let Some(mut tb) = weft_testbed::for_test("nwa", 1, Path::new(WEFT)) else {
        return Ok(());
    };
    tb.launch(1, &[])?;
    let c = tb.container("c")?;
    let out = tb.weft(1, &["attach", "10.2.1.0/24", &c]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "10.2.1.0");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("network address of 10.2.1.0/24"), "{err}");
    let ps = tb.weft_ok(1, &["ps", &c])?;
    assert!(ps.contains("10.2.1.0/24"), "{ps}");
    let exposed = tb.weft(1, &["expose", "10.2.2.0/24"]);
    assert!(exposed.status.success(), "{exposed:?}");
    let d = tb.container("d")?;
    let bad = tb.weft(1, &["attach", "10.2.1.255/24", &d]);
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("broadcast address") && err.contains("choose a host address"),
        "{err}"
    );
    Ok(())
}

/// The state directory made read-only for the router: a read-only bind mount over it, made
/// in the router's own mount namespace (nothing else sees it), removed when the test ends,
/// however it ends.
struct ReadOnly {
    pid: u32,
    dir: String,
}

impl ReadOnly {
    fn mount(pid: u32, args: &[&str]) -> Result<()> {
        let t = pid.to_string();
        weft_testbed::run(
            std::process::Command::new("nsenter")
                .args(["--target", &t, "--mount", "--", "mount"])
                .args(args),
        )
        .map(drop)
    }

    fn over(pid: u32, dir: &Path) -> Result<ReadOnly> {
        let d = dir.to_str().expect("a UTF-8 path").to_string();
        Self::mount(pid, &["--bind", &d, &d])?;
        let ro = ReadOnly { pid, dir: d };
        Self::mount(pid, &["-o", "remount,bind,ro", &ro.dir, &ro.dir])?;
        Ok(ro)
    }
}

impl Drop for ReadOnly {
    fn drop(&mut self) {
        let t = self.pid.to_string();
        let _ = std::process::Command::new("nsenter")
            .args(["--target", &t, "--mount", "--", "umount", &self.dir])
            .status();
    }
}

/// A state directory that cannot be written (a full disk, a read-only mount): the router
/// refuses new addresses and says why, keeps carrying traffic and does not exit; once the
/// state can be saved again, addresses are handed out again.
#[test]
fn an_unwritable_state_dir_refuses_new_addresses_and_keeps_traffic() -> Result<()> {
    let Some(mut tb) = weft_testbed::for_test("rostate", 2, Path::new(WEFT)) else {
        return Ok(());
    };
    tb.launch_mesh(2, &[])?;
    let a = tb.container("a")?;
    let b = tb.container("b")?;
    let c = tb.container("c")?;
    let ip_a = tb.weft_ok(1, &["attach", &a])?.trim().to_string();
    tb.weft_ok(2, &["attach", &b])?;
    tb.wait_ping(&b, &ip_a, CONVERGE)?;
    let pid = tb.our_router_pid(1);
    {
        let _ro = ReadOnly::over(pid.expect("a router"), &tb.host(1).state_dir)?;
        let out = tb.weft(1, &["attach", &c]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "attached with no durable state");
        assert!(err.contains("cannot save the IP allocation state"), "{err}");
        tb.wait_ping(&b, &ip_a, Duration::from_secs(5))?;
        assert_eq!(tb.our_router_pid(1), pid, "the router did not exit");
    }
    let ip_c = tb.weft_ok(1, &["attach", &c])?.trim().to_string();
    tb.wait_ping(&b, &ip_c, CONVERGE)?;
    Ok(())
}
