//! End-to-end: the real `weft` binary on hosts made of network namespaces.
//!
//! Needs root (CI runs as root); set WEFT_SKIP_NETNS_TESTS=1 to skip elsewhere.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use weft_testbed::Testbed;

const WEFT: &str = env!("CARGO_BIN_EXE_weft");
const CONVERGE: Duration = Duration::from_secs(30);

/// The tutorial's three hosts: h2 given h1, h3 given h1 and h2.
fn launch_tutorial(tb: &Testbed) -> Result<()> {
    let h1 = tb.host(1).ip.to_string();
    let h2 = tb.host(2).ip.to_string();
    tb.launch(1, &[])?;
    tb.launch(2, &[&h1])?;
    tb.launch(3, &[&h1, &h2])?;
    Ok(())
}

/// Two hosts: h2 launched with h1 as its peer, both with `extra` flags, meshed.
fn launch_pair(tb: &Testbed, extra: &[&str]) -> Result<()> {
    let h1 = tb.host(1).ip.to_string();
    let mut with_peer = extra.to_vec();
    with_peer.push(&h1);
    tb.launch(1, extra)?;
    tb.launch(2, &with_peer)?;
    tb.wait_full_mesh(2)
}

/// Attaches a fresh container `c<i>` with 10.32.0.<i>/12 on host `i`.
fn attached_container(tb: &mut Testbed, i: usize) -> Result<String> {
    let c = tb.container(&format!("c{i}"))?;
    tb.weft_ok(i, &["attach", &format!("10.32.0.{i}/12"), &c])?;
    Ok(c)
}

fn has_link(tb: &Testbed, ns: &str, link: &str) -> bool {
    tb.exec(ns, "ip", &["link", "show", link]).status.success()
}

#[test]
fn tutorial_three_hosts_mesh_and_ping() -> Result<()> {
    let Some(mut tb) = weft_testbed::for_test("tut", 3, Path::new(WEFT)) else {
        return Ok(());
    };
    launch_tutorial(&tb)?;
    tb.wait_full_mesh(3)?;

    let s = tb.status(1, &[])?;
    for line in [
        "        Service: router",
        "       Protocol: weft 1",
        "     Encryption: disabled",
        "  PeerDiscovery: enabled",
        "        Targets: 0",
        "    Connections: 2 (2 established)",
        " TrustedSubnets: none",
    ] {
        assert!(s.contains(line), "missing {line:?} in\n{s}");
    }
    assert!(s.contains("(host1)"), "{s}");
    let s3 = tb.status(3, &[])?;
    assert!(s3.contains("        Targets: 2"), "{s3}");
    let targets = tb.status(3, &["targets"])?;
    assert_eq!(targets, "198.18.0.1\n198.18.0.2\n");
    // Within a second or two of heartbeats, both links are on the kernel's VXLAN fast path.
    let conns = Testbed::wait_for(CONVERGE, || {
        let c = tb.status(1, &["connections"])?;
        if c.matches(" established fastdp ").count() == 2 {
            Ok(c)
        } else {
            bail!("h1 connections:\n{c}")
        }
    })?;
    assert_eq!(conns.lines().count(), 2, "{conns}");
    for l in conns.lines() {
        assert!(l.starts_with("<- 198.18.0."), "{l}");
        // Underlay 1500 minus VXLAN's 50.
        assert!(l.ends_with("mtu=1450"), "{l}");
    }
    let m = tb.http_get(&tb.host(1).netns, "127.0.0.1", 6782, "/metrics")?;
    assert!(
        m.contains(r#"weave_connections{state="established",type="fastdp",encryption=""} 2"#),
        "{m}"
    );
    let peers = tb.status(2, &["peers"])?;
    for nick in ["(host1)", "(host2)", "(host3)"] {
        assert!(peers.contains(nick), "{peers}");
    }
    assert_eq!(peers.matches("established").count(), 6, "{peers}");

    let c1 = tb.container("c1")?;
    let c3 = tb.container("c3")?;
    assert_eq!(
        tb.weft_ok(1, &["attach", "10.32.0.1/12", &c1])?.trim(),
        "10.32.0.1"
    );
    assert_eq!(
        tb.weft_ok(3, &["attach", "10.32.0.3/12", &c3])?.trim(),
        "10.32.0.3"
    );
    let ps = tb.weft_ok(1, &["ps"])?;
    // The host's own line comes first, with no address while it is not exposed.
    let mut lines = ps.lines();
    assert_eq!(
        lines.next().map(|l| l.split_whitespace().count()),
        Some(2),
        "{ps}"
    );
    assert!(ps.starts_with("weave:expose "), "{ps}");
    let fields: Vec<&str> = lines.flat_map(str::split_whitespace).collect();
    assert_eq!(fields.len(), 3, "{ps}");
    assert_eq!(fields[0], c1);
    assert_eq!(fields[2], "10.32.0.1/12");
    tb.wait_ping(&c1, "10.32.0.3", CONVERGE)?;
    let out = tb.exec(&c3, "ping", &["-c", "3", "-i", "0.2", "10.32.0.1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // The container got the overlay MTU.
    let link = tb.exec(&c1, "ip", &["link", "show", "ethwe"]);
    assert!(String::from_utf8_lossy(&link.stdout).contains("mtu 1450"));

    // connect / forget change the targets (and what status shows).
    tb.weft_ok(1, &["connect", "198.18.0.9"])?;
    assert_eq!(tb.status(1, &["targets"])?, "198.18.0.9\n");
    let conns = Testbed::wait_for(CONVERGE, || {
        let c = tb.status(1, &["connections"])?;
        if c.contains("-> 198.18.0.9:6783") {
            Ok(c)
        } else {
            bail!("{c}")
        }
    })?;
    assert!(
        conns.contains("connecting") || conns.contains("failed") || conns.contains("retrying"),
        "{conns}"
    );
    tb.weft_ok(1, &["forget", "198.18.0.9"])?;
    assert_eq!(tb.status(1, &["targets"])?, "");
    tb.weft_ok(
        1,
        &["connect", "--replace", "198.18.0.2", "198.18.0.3:6783"],
    )?;
    assert_eq!(tb.status(1, &["targets"])?, "198.18.0.2\n198.18.0.3:6783\n");

    // Detach: the address goes, and the interface with it.
    assert_eq!(tb.weft_ok(3, &["detach", &c3])?.trim(), "10.32.0.3");
    assert!(!has_link(&tb, &c3, "ethwe"));
    assert_eq!(
        weft_testbed::ps_only_the_host(&tb.weft_ok(3, &["ps"])?),
        Ok(())
    );
    Ok(())
}

#[test]
fn relays_through_a_third_host_when_the_direct_path_is_blocked() -> Result<()> {
    let Some(mut tb) = weft_testbed::for_test("rly", 3, Path::new(WEFT)) else {
        return Ok(());
    };
    tb.block(1, 3)?;
    launch_tutorial(&tb)?;
    // h1 and h3 each know all three peers, through h2.
    for i in [1, 3] {
        Testbed::wait_for(CONVERGE, || {
            let s = tb.status(i, &[])?;
            if s.contains("Peers: 3 (with 4 established connections)") {
                Ok(())
            } else {
                bail!("{s}")
            }
        })?;
    }
    let c1 = tb.container("c1")?;
    let c3 = tb.container("c3")?;
    tb.weft_ok(1, &["attach", "10.32.0.1/12", &c1])?;
    tb.weft_ok(3, &["attach", "10.32.0.3/12", &c3])?;
    tb.wait_ping(&c1, "10.32.0.3", CONVERGE)?;
    let out = tb.exec(&c1, "ping", &["-c", "3", "-i", "0.2", "10.32.0.3"]);
    assert!(out.status.success());
    // The frames went through h2.
    let report = tb.report_json(2)?;
    let relayed = report["Router"]["Stats"]["frames_relayed"]
        .as_u64()
        .unwrap();
    assert!(relayed >= 6, "h2 relayed {relayed} frames");
    // The same figures through a Weave-style template, as scripts ask for them.
    let t = tb.weft_ok(
        2,
        &[
            "report",
            "-f",
            "{{.Router.NickName}} {{len .Router.Peers}}{{range .Router.Connections}} {{.State}}{{end}}",
        ],
    )?;
    assert_eq!(t, "host2 3 established established", "{t}");
    let bad = tb.weft(2, &["report", "-f", "{{range .Router.Peers}}"]);
    let e = String::from_utf8_lossy(&bad.stderr);
    assert!(
        !bad.status.success() && e.contains("without {{end}}"),
        "{e}"
    );
    // h3 dialled h1 and keeps failing; status says so.
    let conns = Testbed::wait_for(CONVERGE, || {
        let c = tb.status(3, &["connections"])?;
        let l = c
            .lines()
            .find(|l| l.starts_with("-> 198.18.0.1:6783"))
            .unwrap_or_default()
            .to_string();
        if l.contains("failed") || l.contains("retrying") {
            Ok(c)
        } else {
            bail!("{c}")
        }
    })?;
    assert!(
        conns.contains("-> 198.18.0.2:6783       established"),
        "{conns}"
    );
    assert!(
        tb.status(3, &[])?
            .contains("Connections: 2 (1 established, 1 ")
    );
    // h1 learned h3's address from h2 (discovery) and shows its own failing attempts.
    Testbed::wait_for(CONVERGE, || {
        let c = tb.status(1, &["connections"])?;
        let l = c
            .lines()
            .find(|l| l.starts_with("-> 198.18.0.3:6783"))
            .unwrap_or_default();
        if l.contains("failed") || l.contains("retrying") || l.contains("connecting") {
            Ok(())
        } else {
            bail!("{c}")
        }
    })?;
    Ok(())
}

#[test]
fn frames_bigger_than_the_underlay_mtu_are_fragmented_not_dropped() -> Result<()> {
    let Some(mut tb) = weft_testbed::for_test("frag", 2, Path::new(WEFT)) else {
        return Ok(());
    };
    // The sleeve's fragmenting is what is under test. With the fast path on, the pings
    // raced it: once both routers' heartbeats settle on VXLAN (whose outer packets the
    // kernel fragments), a 7000-byte ping with DF set meets the VXLAN device's own path-MTU
    // check (frag needed, mtu 1450); a slow CI run got there before the pings.
    launch_pair(&tb, &["--mtu=8000", "--no-fastdp"])?;
    let c1 = attached_container(&mut tb, 1)?;
    attached_container(&mut tb, 2)?;
    tb.wait_ping(&c1, "10.32.0.2", CONVERGE)?;
    // 7000-byte pings with DF set inside the overlay: each frame needs several underlay
    // packets (MTU 1500), which the sleeve socket lets the kernel fragment.
    let out = tb.exec(
        &c1,
        "ping",
        &[
            "-c",
            "3",
            "-i",
            "0.2",
            "-s",
            "7000",
            "-M",
            "do",
            "10.32.0.2",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    Ok(())
}

#[test]
fn containers_by_pid_and_by_namespace_path() -> Result<()> {
    let Some(mut tb) = weft_testbed::for_test("pid", 1, Path::new(WEFT)) else {
        return Ok(());
    };
    tb.launch(1, &[])?;
    let c = tb.container("c")?;
    let pid = tb.spawn(&c, "sleep", &["600"])?.to_string();
    let ips = tb.weft_ok(1, &["attach", "--no-multicast-route", "10.32.0.5/12", &pid])?;
    assert_eq!(ips.trim(), "10.32.0.5");
    let ps = tb.weft_ok(1, &["ps", &pid])?;
    assert!(
        ps.starts_with(&format!("{pid} ")) && ps.trim_end().ends_with("10.32.0.5/12"),
        "{ps}"
    );
    let routes = tb.exec(&c, "ip", &["route"]);
    assert!(!String::from_utf8_lossy(&routes.stdout).contains("224.0.0.0/4"));
    // A second address on the same container, named by its namespace path this time.
    let path = format!("/run/netns/{c}");
    tb.weft_ok(1, &["attach", "ip:10.40.0.5/16", &path])?;
    assert!(
        tb.weft_ok(1, &["ps"])?
            .contains("10.32.0.5/12 10.40.0.5/16")
    );
    assert_eq!(
        tb.weft_ok(1, &["detach", "10.40.0.5/16", &c])?.trim(),
        "10.40.0.5"
    );
    assert_eq!(tb.weft_ok(1, &["detach", &path])?.trim(), "10.32.0.5");
    assert_eq!(
        weft_testbed::ps_only_the_host(&tb.weft_ok(1, &["ps"])?),
        Ok(())
    );
    Ok(())
}

#[test]
fn killed_router_resumes_its_peers_and_traffic() -> Result<()> {
    let Some(mut tb) = weft_testbed::for_test("res", 2, Path::new(WEFT)) else {
        return Ok(());
    };
    let h1 = tb.host(1).ip.to_string();
    launch_pair(&tb, &[])?;
    let c1 = attached_container(&mut tb, 1)?;
    let c2 = attached_container(&mut tb, 2)?;
    tb.wait_ping(&c1, "10.32.0.2", CONVERGE)?;
    let name_before = std::fs::read_to_string(tb.host(2).state_dir.join("peer-name"))?;

    tb.kill_router(2)?;
    // Launching again refuses peer arguments with --resume...
    let out = tb.weft(2, &["launch", "--resume", &h1]);
    assert!(!out.status.success());
    // ...and with --resume alone reconnects to h1.
    tb.launch(2, &["--resume"])?;
    assert_eq!(tb.status(2, &["targets"])?, format!("{h1}\n"));
    tb.wait_full_mesh(2)?;
    let name_after = std::fs::read_to_string(tb.host(2).state_dir.join("peer-name"))?;
    assert_eq!(name_before, name_after, "the peer name survives restarts");
    // The bridge and the container's link survived; traffic flows again.
    tb.wait_ping(&c1, "10.32.0.2", CONVERGE)?;
    assert!(tb.weft_ok(2, &["ps"])?.contains("10.32.0.2/12"));

    // stop leaves the network in place; reset removes it.
    let h2ns = tb.host(2).netns.clone();
    tb.weft_ok(2, &["stop"])?;
    assert!(has_link(&tb, &h2ns, "weft"));
    tb.weft_ok(2, &["reset"])?;
    assert!(!has_link(&tb, &h2ns, "weft"));
    assert!(!has_link(&tb, &c2, "ethwe"));
    Ok(())
}

#[test]
fn bad_input_gets_clear_errors_and_leaves_nothing_behind() -> Result<()> {
    let Some(mut tb) = weft_testbed::for_test("bad", 2, Path::new(WEFT)) else {
        return Ok(());
    };
    // A router that cannot start says why, from its log.
    let out = tb.weft(2, &["launch", "--mtu=10"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--mtu 10 is out of range"), "{err}");
    // Not running yet.
    let out = tb.weft(1, &["status"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not running"));

    tb.launch(1, &[])?;
    let out = tb.weft(1, &["launch"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already running"));

    let c = tb.container("c")?;
    let c2 = tb.container("c2")?;
    // The router itself lives in the host's namespace: attaching it must be refused.
    let router_pid = tb.our_router_pid(1).expect("router running").to_string();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["attach", "10.32.0.1/12", "no-such-container"],
            "not found",
        ),
        (vec!["attach", "10.32.0.1/33", &c], "not an IPv4 address"),
        (vec!["attach", "banana", &c], "not an IPv4 address"),
        (vec!["attach", "10.47.255.255/12", &c], "broadcast address"),
        (vec!["detach", &c], "not attached"),
        (vec!["status", "bogus"], "Invalid 'weft status' sub-command"),
        (vec!["connect", "no-such-host.invalid"], "cannot resolve"),
        (
            vec!["attach", "10.32.0.1/12", &router_pid],
            "host network namespace",
        ),
    ];
    for (args, want) in cases {
        let out = tb.weft(1, &args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} should fail");
        assert!(err.contains(want), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: one-line error: {err}");
    }
    tb.weft_ok(1, &["attach", "10.32.0.1/12", &c])?;
    let out = tb.weft(1, &["attach", "10.32.0.1/12", &c2]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("already in use"));
    // The failed attaches left no links on the host and no ethwe in c2.
    let links = String::from_utf8_lossy(&tb.exec(&tb.host(1).netns, "ip", &["-o", "link"]).stdout)
        .into_owned();
    assert_eq!(links.matches("vethwl").count(), 1, "{links}");
    assert!(!has_link(&tb, &c2, "ethwe"));
    Ok(())
}

#[test]
fn garbage_on_the_wire_is_dropped_and_counted() -> Result<()> {
    let Some(tb) = weft_testbed::for_test("junk", 2, Path::new(WEFT)) else {
        return Ok(());
    };
    let h1 = tb.host(1).ip.to_string();
    launch_pair(&tb, &[])?;
    let h2ns = tb.host(2).netns.clone();
    // Junk datagrams on the sleeve port and junk bytes on the control port.
    let script = format!(
        "for i in $(seq 1 50); do printf 'garbage-%d' $i > /dev/udp/{h1}/6783; done; \
         printf '\\x10\\x00\\x01\\x02' > /dev/udp/{h1}/6783; \
         printf 'GET / HTTP/1.0\\r\\n\\r\\n' > /dev/tcp/{h1}/6783; \
         head -c 100000 /dev/urandom > /dev/tcp/{h1}/6783; true"
    );
    let out = tb.exec(&h2ns, "bash", &["-c", &script]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::thread::sleep(Duration::from_millis(500));
    let report = tb.report_json(1)?;
    let stats = &report["Router"]["Stats"];
    let dropped = stats["dropped_malformed"].as_u64().unwrap()
        + stats["control_udp_unexpected"].as_u64().unwrap();
    assert!(dropped >= 50, "{stats}");
    assert!(
        stats["control_protocol_errors"].as_u64().unwrap() >= 2,
        "{stats}"
    );
    // The mesh is unharmed.
    tb.wait_full_mesh(2)?;
    Ok(())
}

/// A peer learned from gossip is dialled at once: h1 learns of h3 only from h2 (h3 does not
/// dial what it learns), and h2 dies the moment h1 hears of h3. h1 still dials h3; before,
/// it waited, lost h3 with h2 and never heard of it again.
#[test]
fn a_discovered_peer_is_dialled_though_its_reporter_dies() -> Result<()> {
    let Some(tb) = weft_testbed::for_test("dsc", 3, Path::new(WEFT)) else {
        return Ok(());
    };
    launch_pair(&tb, &[])?;
    tb.launch(3, &["--no-discovery", &tb.host(2).ip.to_string()])?;
    let start = std::time::Instant::now();
    loop {
        if tb.status(1, &["peers"])?.contains("(host3)") {
            break;
        }
        if start.elapsed() > CONVERGE {
            bail!("h1 never heard of h3");
        }
    }
    tb.kill_router(2)?;
    Testbed::wait_for(CONVERGE, || {
        let s = tb.status(3, &["connections"])?;
        if s.contains("established") && s.contains(&tb.host(1).ip.to_string()) {
            Ok(())
        } else {
            bail!(
                "h3 is not connected to h1:\n{s}\nh1's log:\n{}",
                tb.router_log(1)
            )
        }
    })?;
    Ok(())
}

/// Weave's router ran with Docker's restart policy: weft's supervisor starts a router that
/// dies again (SIGKILL, or SIGTERM from outside), with its containers still attached and
/// their names intact; `weft stop` stops it for good; `--no-restart` turns supervision off.
#[test]
fn a_router_that_dies_is_started_again() -> Result<()> {
    let Some(mut tb) = weft_testbed::for_test("sup", 1, Path::new(WEFT)) else {
        return Ok(());
    };
    tb.launch(1, &["--dns-listen-address=0.0.0.0:53"])?;
    let c = tb.container("c")?;
    let a = tb
        .weft_ok(1, &["attach", "-h", "web", &c])?
        .trim()
        .to_string();
    for signal in ["-9", "-TERM"] {
        let old = tb.signal_router_only(1, signal)?;
        Testbed::wait_for(Duration::from_secs(10), || {
            match tb.our_router_pid(1) {
                Some(p) if p != old => {}
                _ => bail!("no new router after kill {signal}"),
            }
            let ps = tb.weft_ok(1, &["ps", &c])?;
            let dns = tb.status(1, &["dns"])?;
            if ps.contains(&a) && dns.contains("web") && dns.contains(&a) {
                Ok(())
            } else {
                bail!("after kill {signal}: ps {ps:?}, dns {dns:?}")
            }
        })?;
    }
    assert!(
        tb.router_log(1).contains("exited unexpectedly"),
        "the log says why: {}",
        tb.router_log(1)
    );
    tb.weft_ok(1, &["stop"])?;
    assert!(tb.our_supervisor_pid(1).is_none() && tb.our_router_pid(1).is_none());
    std::thread::sleep(Duration::from_secs(2));
    assert!(tb.our_router_pid(1).is_none(), "stop is for good");
    assert!(!tb.weft(1, &["status"]).status.success());
    // Without supervision a dead router stays dead.
    tb.launch(1, &["--no-restart"])?;
    assert!(tb.our_supervisor_pid(1).is_none());
    tb.signal_router_only(1, "-9")?;
    std::thread::sleep(Duration::from_secs(2));
    assert!(tb.our_router_pid(1).is_none());
    Ok(())
}

/// A router whose data plane dies (its TAP device deleted under it) does not linger,
/// answering its API while carrying nothing: it exits non-zero, saying why, and the
/// supervisor starts one that makes the device again and carries traffic.
#[test]
fn a_router_whose_data_plane_dies_exits_and_comes_back() -> Result<()> {
    let Some(mut tb) = weft_testbed::for_test("tapdie", 2, Path::new(WEFT)) else {
        return Ok(());
    };
    tb.launch_mesh(2, &["--no-fastdp"])?;
    let a = tb.container("a")?;
    let b = tb.container("b")?;
    let ip_a = tb.weft_ok(1, &["attach", &a])?.trim().to_string();
    tb.weft_ok(2, &["attach", &b])?;
    tb.wait_ping(&b, &ip_a, Duration::from_secs(20))?;
    let old = tb.our_router_pid(1).context("a router")?;
    let ns = tb.host(1).netns.clone();
    weft_testbed::run(
        std::process::Command::new("ip").args(["-n", &ns, "link", "del", "weft-tap"]),
    )?;
    Testbed::wait_for(Duration::from_secs(20), || {
        let log = tb.router_log(1);
        if log.contains("the data plane stopped") && log.contains("(exit status: 1)") {
            Ok(())
        } else {
            bail!("log: {log}")
        }
    })?;
    Testbed::wait_for(Duration::from_secs(30), || match tb.our_router_pid(1) {
        Some(p) if p != old => Ok(()),
        _ => bail!("no new router"),
    })?;
    tb.wait_ping(&b, &ip_a, Duration::from_secs(30))?;
    Ok(())
}

/// The loopback API is not everyone's: an unprivileged local user reads status, as with Weave,
/// but cannot change the network; root (the CLI) can.
#[test]
fn unprivileged_local_users_read_status_but_change_nothing() -> Result<()> {
    let Some(tb) = weft_testbed::for_test("apiuid", 1, Path::new(WEFT)) else {
        return Ok(());
    };
    tb.launch(1, &[])?;
    let ns = tb.host(1).netns.clone();
    let as_nobody = |request: &str| -> Result<String> {
        let script = format!(
            "exec 3<>/dev/tcp/127.0.0.1/6784 && printf '{request} HTTP/1.0\\r\\nContent-Length: 0\\r\\n\\r\\n' >&3 && cat <&3"
        );
        let out = weft_testbed::run(tb.cmd_in(&ns, "setpriv").args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "bash",
            "-c",
            &script,
        ]))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let status = as_nobody("GET /status")?;
    assert!(status.starts_with("HTTP/1.0 200"), "{status}");
    for change in [
        "POST /forget",
        "DELETE /peer",
        "POST /expose",
        "DELETE /ip/x",
    ] {
        let r = as_nobody(change)?;
        assert!(r.starts_with("HTTP/1.0 403"), "{change}: {r}");
        assert!(r.contains("needs root") && r.contains("uid 65534"), "{r}");
    }
    // Root, through the CLI, still can.
    tb.weft_ok(1, &["expose"])?;
    Ok(())
}
