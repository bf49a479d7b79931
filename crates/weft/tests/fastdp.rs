//! End-to-end: the kernel VXLAN fast path on namespace hosts — chosen per peer, visible in
//! status and metrics, falling back to the sleeve when VXLAN is blocked and coming back, mixed
//! with sleeve-only peers without duplicates, and surviving a router restart.
//!
//! Needs root (CI runs as root); set WEFT_SKIP_NETNS_TESTS=1 to skip elsewhere.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use weft_testbed::Testbed;

const WEFT: &str = env!("CARGO_BIN_EXE_weft");
const CONVERGE: Duration = Duration::from_secs(30);

fn connections(tb: &Testbed, i: usize) -> Result<String> {
    tb.weft_ok(i, &["status", "connections"])
}

/// Launches hosts 1..=n, each given the ones before it, with per-host extra flags.
fn launch(tb: &Testbed, n: usize, extra: impl Fn(usize) -> Vec<&'static str>) -> Result<()> {
    for i in 1..=n {
        let mut args: Vec<String> = extra(i).into_iter().map(String::from).collect();
        args.extend((1..i).map(|j| tb.host(j).ip.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        tb.launch(i, &args)?;
    }
    wait_peers(tb, n, n * (n - 1))
}

/// Waits until every one of hosts 1..=n sees `n` peers with `conns` established connections.
fn wait_peers(tb: &Testbed, n: usize, conns: usize) -> Result<()> {
    let want = format!("Peers: {n} (with {conns} established connections)");
    for i in 1..=n {
        Testbed::wait_for(CONVERGE, || {
            let s = tb.weft_ok(i, &["status"])?;
            if s.contains(&want) {
                Ok(())
            } else {
                bail!("h{i} status:\n{s}")
            }
        })?;
    }
    Ok(())
}

/// What a failing fast-path test needs to be understood: connections, the whole forwarding
/// database (every port's entries, VXLAN's own), port flags, the log's tail.
fn dump(tb: &Testbed, hosts: &[usize]) {
    for &i in hosts {
        let ns = &tb.host(i).netns;
        let fdb = tb.exec(ns, "bridge", &["fdb", "show"]);
        let ports = tb.exec(ns, "bridge", &["-d", "link", "show"]);
        let log = tb.router_log(i);
        let lines: Vec<&str> = log.lines().collect();
        eprintln!(
            "h{i} connections:\n{}fdb:\n{}ports:\n{}log:\n{}",
            connections(tb, i).unwrap_or_default(),
            String::from_utf8_lossy(&fdb.stdout),
            String::from_utf8_lossy(&ports.stdout),
            lines[lines.len().saturating_sub(40)..].join("\n")
        );
    }
}

/// [`ping_clean`], dumping the hosts' fast-path state if it fails.
fn ping_clean_or_dump(tb: &Testbed, ns: &str, dst: &str, n: u32, hosts: &[usize]) -> Result<()> {
    let r = ping_clean(tb, ns, dst, n);
    if r.is_err() {
        dump(tb, hosts);
    }
    r
}

/// The `status connections` line of host `i` about the connection with host `j`.
fn line_to(tb: &Testbed, i: usize, j: usize) -> Result<String> {
    let c = connections(tb, i)?;
    let nick = format!("(host{j})");
    c.lines()
        .find(|l| l.contains(&nick))
        .map(str::to_string)
        .with_context(|| format!("h{i} has no connection to host{j}:\n{c}"))
}

/// Waits until host `i` shows the connection with host `j` carried by `overlay`.
fn wait_overlay(
    tb: &Testbed,
    i: usize,
    j: usize,
    overlay: &str,
    within: Duration,
) -> Result<String> {
    Testbed::wait_for(within, || {
        let l = line_to(tb, i, j)?;
        if l.contains(&format!(" established {overlay} ")) {
            Ok(l)
        } else {
            bail!("h{i}→h{j}: {l}\nlog:\n{}", tail(&tb.router_log(i)))
        }
    })
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// Container `c<i>` on host `i` with 10.32.0.<i>/12.
fn container(tb: &mut Testbed, i: usize) -> Result<String> {
    let c = tb.container(&format!("c{i}"))?;
    tb.weft_ok(i, &["attach", &format!("10.32.0.{i}/12"), &c])?;
    Ok(c)
}

/// Pings `dst` `n` times; fails on any loss or duplicate.
fn ping_clean(tb: &Testbed, ns: &str, dst: &str, n: u32) -> Result<()> {
    let out = tb.exec(
        ns,
        "ping",
        &["-c", &n.to_string(), "-i", "0.2", "-W", "2", dst],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || text.contains("DUP!") || !text.contains(" 0% packet loss") {
        bail!("ping {dst} from {ns}:\n{text}");
    }
    Ok(())
}

/// Broadcasts `n` pings from `ns` to the overlay's broadcast address and returns how many
/// packets each of `receivers` got meanwhile: exactly `n` when nothing is duplicated.
fn broadcast_counts(tb: &Testbed, ns: &str, receivers: &[&str], n: u32) -> Result<Vec<u64>> {
    let before: Vec<u64> = receivers
        .iter()
        .map(|r| tb.link_packets(r, "ethwe").map(|p| p.0))
        .collect::<Result<_>>()?;
    let out = tb.exec(
        ns,
        "ping",
        &[
            "-b",
            "-c",
            &n.to_string(),
            "-i",
            "0.2",
            "-W",
            "1",
            "10.47.255.255",
        ],
    );
    let _ = out; // Nobody answers broadcast pings; what counts is who received them.
    std::thread::sleep(Duration::from_millis(300));
    receivers
        .iter()
        .zip(before)
        .map(|(r, b)| Ok(tb.link_packets(r, "ethwe")?.0 - b))
        .collect()
}

#[test]
fn three_hosts_use_fastdp_fall_back_when_blocked_and_recover() -> Result<()> {
    let Some(mut tb) = weft_testbed::for_test("fdp", 3, Path::new(WEFT)) else {
        return Ok(());
    };
    launch(&tb, 3, |_| vec![])?;
    for (i, j) in [(1, 2), (1, 3), (2, 1), (2, 3), (3, 1), (3, 2)] {
        let l = wait_overlay(&tb, i, j, "fastdp", CONVERGE)?;
        // Underlay 1500 - VXLAN's 50.
        assert!(l.ends_with("mtu=1450"), "{l}");
    }
    let m = tb.http_get(&tb.host(1).netns, "127.0.0.1", 6782, "/metrics")?;
    assert!(
        m.contains(r#"weave_connections{state="established",type="fastdp",encryption=""} 2"#),
        "{m}"
    );
    let per_peer: Vec<&str> = m
        .lines()
        .filter(|l| l.starts_with("weft_connection_fastdp{"))
        .collect();
    assert_eq!(per_peer.len(), 2, "{m}");
    assert!(per_peer.iter().all(|l| l.ends_with(" 1")), "{per_peer:?}");

    let c1 = container(&mut tb, 1)?;
    let _c2 = container(&mut tb, 2)?;
    let c3 = container(&mut tb, 3)?;
    let h1 = tb.host(1).netns.clone();
    let (_, vx_tx0) = tb.link_packets(&h1, "weft-vx")?;
    ping_clean(&tb, &c1, "10.32.0.3", 10)?;
    let (_, vx_tx1) = tb.link_packets(&h1, "weft-vx")?;
    assert!(
        vx_tx1 - vx_tx0 >= 10,
        "pings went by VXLAN: {} packets",
        vx_tx1 - vx_tx0
    );
    // h1's bridge answers ARP for c3 itself (h3 announced its address, the VXLAN port has
    // neigh_suppress): c1's request never reaches c3.
    let mac3 = String::from_utf8_lossy(
        &tb.exec(&c3, "cat", &["/sys/class/net/ethwe/address"])
            .stdout,
    )
    .trim()
    .to_string();
    Testbed::wait_for(Duration::from_secs(10), || {
        let n = tb.exec(&h1, "ip", &["neigh", "show", "dev", "weft", "nud", "noarp"]);
        let n = String::from_utf8_lossy(&n.stdout);
        if n.contains(&format!("10.32.0.3 lladdr {mac3}")) {
            Ok(())
        } else {
            bail!("h1 has no neighbour entry for c3 ({mac3}):\n{n}")
        }
    })?;
    // c1 forgets c3 first (a probe of an entry it still held would be unicast, and pass),
    // then asks by broadcast.
    tb.exec(&c1, "ip", &["neigh", "flush", "all"]);
    let sniff = tb
        .cmd_in(&c3, "timeout")
        .args([
            "3",
            "tcpdump",
            "-i",
            "ethwe",
            "-n",
            "-e",
            "-l",
            "arp and ether broadcast",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    std::thread::sleep(Duration::from_millis(1200));
    ping_clean(&tb, &c1, "10.32.0.3", 1)?;
    let seen = String::from_utf8_lossy(&sniff.wait_with_output()?.stdout).into_owned();
    assert!(
        !seen.contains("who-has 10.32.0.3"),
        "ARP reached c3:\n{seen}"
    );
    let learnt = tb.exec(&c1, "ip", &["neigh", "show", "10.32.0.3"]);
    assert!(
        String::from_utf8_lossy(&learnt.stdout).contains(&mac3),
        "c1 learnt c3's MAC"
    );

    let gbps = weft_testbed::measure::iperf3(&mut tb, &c3, &c1, "10.32.0.3", 2, 1)?;
    assert!(gbps > 0.0);
    eprintln!("iperf3 c1→c3 over fastdp: {gbps:.2} Gbit/s");

    // VXLAN blocked on h3: its links go to sleeve, the connections stay up, traffic flows.
    tb.block_udp(3, 6784)?;
    let t0 = Instant::now();
    let l13 = wait_overlay(&tb, 1, 3, "sleeve", Duration::from_secs(15))?;
    eprintln!("h1→h3 on sleeve after {:?}: {l13}", t0.elapsed());
    assert!(l13.contains("(fastdp: "), "{l13}");
    assert!(l13.contains("UDP 6784"), "{l13}");
    wait_overlay(&tb, 3, 1, "sleeve", Duration::from_secs(15))?;
    assert!(line_to(&tb, 1, 2)?.contains(" established fastdp "));
    assert!(
        tb.weft_ok(1, &["status"])?
            .contains("Peers: 3 (with 6 established connections)")
    );
    ping_clean_or_dump(&tb, &c1, "10.32.0.3", 10, &[1, 3])?;
    let log = tb.router_log(1);
    assert!(log.contains("sleeve instead"), "{}", tail(&log));

    // Unblocked: back to the fast path by itself.
    tb.unblock_udp(3)?;
    let t0 = Instant::now();
    wait_overlay(&tb, 1, 3, "fastdp", Duration::from_secs(15))?;
    eprintln!("h1→h3 back on fastdp after {:?}", t0.elapsed());
    wait_overlay(&tb, 3, 1, "fastdp", Duration::from_secs(15))?;
    ping_clean_or_dump(&tb, &c1, "10.32.0.3", 10, &[1, 3])?;
    Ok(())
}

#[test]
fn mixed_mesh_and_relays_deliver_every_frame_once() -> Result<()> {
    let Some(mut tb) = weft_testbed::for_test("fdm", 4, Path::new(WEFT)) else {
        return Ok(());
    };
    // h4 without the fast path; h1 and h3 cannot reach each other (h2 or h4 relays).
    tb.block(1, 3)?;
    tb.block(3, 1)?;
    let h1 = tb.host(1).ip.to_string();
    let h2 = tb.host(2).ip.to_string();
    let h3 = tb.host(3).ip.to_string();
    tb.launch(1, &[])?;
    tb.launch(2, &[&h1])?;
    tb.launch(3, &[&h2])?;
    tb.launch(4, &["--no-fastdp", &h1, &h2, &h3])?;
    wait_peers(&tb, 4, 10)?;
    wait_overlay(&tb, 1, 2, "fastdp", CONVERGE)?;
    wait_overlay(&tb, 2, 3, "fastdp", CONVERGE)?;
    let l14 = wait_overlay(&tb, 1, 4, "sleeve", CONVERGE)?;
    assert!(
        l14.contains("(fastdp: fast path disabled on the peer)"),
        "{l14}"
    );
    // The peer that chose sleeve says so only in the log, not on every line.
    let l41 = line_to(&tb, 4, 1)?;
    assert!(
        l41.contains(" established sleeve ") && !l41.contains("(fastdp:"),
        "{l41}"
    );

    let c: Vec<String> = (1..=4)
        .map(|i| container(&mut tb, i))
        .collect::<Result<_>>()?;
    for (src, dst) in [(0, 1), (0, 2), (0, 3), (3, 0), (2, 0), (1, 3)] {
        ping_clean(&tb, &c[src], &format!("10.32.0.{}", dst + 1), 5)?;
    }
    // Broadcasts from each container reach every other container exactly once, whether by
    // VXLAN, by sleeve, or relayed.
    for src in 0..4 {
        let others: Vec<&str> = (0..4)
            .filter(|&o| o != src)
            .map(|o| c[o].as_str())
            .collect();
        let counts = broadcast_counts(&tb, &c[src], &others, 10)?;
        for (o, n) in others.iter().zip(&counts) {
            // A stray ARP or two may be counted; a duplicated broadcast would double it.
            assert!(
                (10..=13).contains(n),
                "c{} → {o}: {n} packets for 10 broadcasts",
                src + 1
            );
        }
    }
    Ok(())
}

/// Kills h1's router, relaunches it with `--resume` 2 s later and waits until its link to h2
/// is on the fast path again.
fn restart_router_1(tb: &Testbed) -> Result<()> {
    tb.kill_router(1)?;
    std::thread::sleep(Duration::from_secs(2));
    tb.weft_ok(1, &["launch", "--nickname=host1", "--resume"])?;
    // h1 was dialled by h2 and has no targets of its own: --resume redials the peers it was
    // connected to, rather than waiting for h2's reconnect backoff.
    let targets = tb.weft_ok(1, &["status", "targets"])?;
    assert!(targets.contains(&tb.host(2).ip.to_string()), "{targets}");
    wait_overlay(tb, 1, 2, "fastdp", CONVERGE)?;
    Ok(())
}

/// Waits until the spawned program `pid` has written `marker` to `log` (or ended); returns
/// the log.
fn wait_output(pid: u32, log: &Path, marker: &str, within: Duration) -> Result<String> {
    Testbed::wait_for(within, || {
        if Path::new(&format!("/proc/{pid}")).exists()
            && !std::fs::read_to_string(log)?.contains(marker)
        {
            bail!("pid {pid} still running")
        }
        Ok(())
    })?;
    Ok(std::fs::read_to_string(log)?)
}

/// Pings every 100 ms from c1 (h1) to c2 (h2) for 15 s while h1's router is killed after 3 s
/// and relaunched with `--resume` 2 s later. Returns the ping output and the answered seqs.
fn ping_across_a_restart(tb: &mut Testbed) -> Result<(String, Vec<u32>)> {
    launch(tb, 2, |_| vec![])?;
    wait_overlay(tb, 1, 2, "fastdp", CONVERGE)?;
    let c1 = container(tb, 1)?;
    let _c2 = container(tb, 2)?;
    ping_clean(tb, &c1, "10.32.0.2", 3)?;
    let pid = tb.spawn(
        &c1,
        "ping",
        &["-i", "0.1", "-c", "150", "-W", "1", "10.32.0.2"],
    )?;
    let log = tb.spawn_log("ping", 0);
    std::thread::sleep(Duration::from_secs(3));
    restart_router_1(tb)?;
    let text = wait_output(pid, &log, "packet loss", Duration::from_secs(30))?;
    let answered: Vec<u32> = text
        .lines()
        .filter(|l| l.contains("bytes from"))
        .filter_map(|l| l.split("icmp_seq=").nth(1)?.split(' ').next()?.parse().ok())
        .collect();
    eprintln!("across the restart: {}/150 pings answered", answered.len());
    let l = tb.router_log(1);
    assert!(l.contains("reusing VXLAN fast path device"), "{}", tail(&l));
    assert!(!text.contains("DUP!"), "{text}");
    if answered.len() < 135 {
        dump(tb, &[1, 2]);
    }
    Ok((text, answered))
}

/// While a router is down its kernel and its peers' kernels keep forwarding: the restarted
/// router adopts the VXLAN device and its entries, and peers keep a departed fast peer's
/// entries for a while.
#[test]
fn kernel_keeps_forwarding_while_the_router_is_down() -> Result<()> {
    let Some(mut tb) = weft_testbed::for_test("fdr", 2, Path::new(WEFT)) else {
        return Ok(());
    };
    let (text, answered) = ping_across_a_restart(&mut tb)?;
    // Seqs 35..=50 were sent between the kill (after 3 s) and the relaunch (after 5 s).
    let down: Vec<u32> = (35..=50).filter(|s| !answered.contains(s)).collect();
    assert!(
        down.len() <= 2,
        "unanswered while the router was down: {down:?}\n{text}"
    );
    Ok(())
}

/// The same restart, the whole run: traffic also keeps flowing after the restarted router
/// reconnects. (It once stopped a few seconds after the reconnect in CI: a restarted router
/// that had been dialled waited for its peer's reconnect backoff, and its first report told
/// the peer "no heartbeats arrive", knocking the peer's working fast path to sleeve; both are
/// gone, see the simulator's restart tests.)
#[test]
fn traffic_keeps_flowing_after_a_router_restart() -> Result<()> {
    let Some(mut tb) = weft_testbed::for_test("fdr2", 2, Path::new(WEFT)) else {
        return Ok(());
    };
    let (text, answered) = ping_across_a_restart(&mut tb)?;
    assert!(answered.len() >= 135, "{text}");
    Ok(())
}

#[test]
fn a_path_that_drops_large_vxlan_packets_is_named_and_avoided() -> Result<()> {
    let Some(mut tb) = weft_testbed::for_test("fdmtu", 2, Path::new(WEFT)) else {
        return Ok(());
    };
    // The underlay switch port of h2 takes only 1400-byte packets, though both hosts' own
    // interfaces say 1500: large packets between them vanish without an ICMP error.
    let u = tb.underlay().to_string();
    weft_testbed::run(
        tb.cmd_in(&u, "ip")
            .args(["link", "set", "h2", "mtu", "1400"]),
    )?;
    launch(&tb, 2, |_| vec![])?;
    let l = Testbed::wait_for(CONVERGE, || {
        let l = line_to(&tb, 1, 2)?;
        if l.contains("1450 bytes are lost") {
            Ok(l)
        } else {
            bail!("h1 → h2: {l}")
        }
    })?;
    assert!(l.contains(" established sleeve "), "{l}");
    let log = tb.router_log(1);
    assert!(log.contains("path MTU too small"), "{}", tail(&log));
    let c1 = container(&mut tb, 1)?;
    let _c2 = container(&mut tb, 2)?;
    // Packets that fit go through.
    ping_clean(&tb, &c1, "10.32.0.2", 3)?;
    Ok(())
}

/// The issue's check: an iperf3 transfer between containers on two hosts runs through a
/// `kill -9` of one router and its `launch --resume`: it keeps going (the kernels forward
/// while the router is down) or resumes within seconds, and is still going at the end.
#[test]
fn iperf3_keeps_going_across_a_router_restart() -> Result<()> {
    let Some(mut tb) = weft_testbed::for_test("fdri", 2, Path::new(WEFT)) else {
        return Ok(());
    };
    launch(&tb, 2, |_| vec![])?;
    wait_overlay(&tb, 1, 2, "fastdp", CONVERGE)?;
    let c1 = container(&mut tb, 1)?;
    let c2 = container(&mut tb, 2)?;
    ping_clean(&tb, &c1, "10.32.0.2", 3)?;
    let port = weft_testbed::measure::iperf3_server(&mut tb, &c2)?.to_string();
    let log = tb.spawn_log("iperf3", 1);
    let n = tb.spawn(
        &c1,
        "iperf3",
        &["-c", "10.32.0.2", "-p", &port, "-t", "20", "-i", "1", "-J"],
    )?;
    std::thread::sleep(Duration::from_secs(4));
    restart_router_1(&tb)?;
    let text = wait_output(n, &log, "\"end\"", Duration::from_secs(40))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("iperf3 output:\n{text}"))?;
    let gbps: Vec<f64> = v["intervals"]
        .as_array()
        .context("no intervals")?
        .iter()
        .map(|i| i["sum"]["bits_per_second"].as_f64().unwrap_or(0.0) / 1e9)
        .collect();
    eprintln!("iperf3 per second across the restart (Gbit/s): {gbps:.2?}");
    let stalled = |g: &f64| *g < 0.01;
    let mut longest = 0;
    let mut run = 0;
    for g in &gbps {
        run = if stalled(g) { run + 1 } else { 0 };
        longest = longest.max(run);
    }
    if longest > 3 || gbps.len() < 18 || gbps.iter().rev().take(3).any(stalled) {
        dump(&tb, &[1, 2]);
        bail!("the transfer stalled for {longest} s or did not finish: {gbps:.2?}");
    }
    Ok(())
}

/// VXLAN carries no authentication: a host on the underlay that is not a neighbour sends
/// VXLAN with weft's VNI straight at a router's port, and nothing of it reaches the bridge
/// (the host firewall drops it and counts it), while the neighbours keep their fast path.
#[test]
fn vxlan_from_a_host_that_is_not_a_neighbour_is_dropped() -> Result<()> {
    let Some(mut tb) = weft_testbed::for_test("fdpsrc", 3, Path::new(WEFT)) else {
        return Ok(());
    };
    launch(&tb, 2, |_| vec![])?;
    wait_overlay(&tb, 1, 2, "fastdp", CONVERGE)?;
    let c1 = container(&mut tb, 1)?;
    let _c2 = container(&mut tb, 2)?;
    ping_clean(&tb, &c1, "10.32.0.2", 3)?;

    // Host 3 runs no router: it makes its own VXLAN device with weft's VNI and port, aimed at
    // host 1, and asks for c1's address on it.
    let h3 = tb.host(3).netns.clone();
    let h1_ip = tb.host(1).ip.to_string();
    let vni = (0x7765u32).to_string();
    for args in [
        vec![
            "link",
            "add",
            "evil",
            "type",
            "vxlan",
            "id",
            &vni,
            "dstport",
            "6784",
            "remote",
            &h1_ip,
            "nolearning",
        ],
        vec!["addr", "add", "10.32.0.99/12", "dev", "evil"],
        vec!["link", "set", "evil", "up"],
    ] {
        let out = tb.exec(&h3, "ip", &args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let sniff = tb
        .cmd_in(&c1, "timeout")
        .args(["4", "tcpdump", "-i", "ethwe", "-n", "-l", "arp or icmp"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    std::thread::sleep(Duration::from_millis(1200));
    let out = tb.exec(
        &h3,
        "ping",
        &["-c", "3", "-i", "0.3", "-W", "1", "10.32.0.1"],
    );
    assert!(!out.status.success(), "the stranger reached c1");
    let seen = String::from_utf8_lossy(&sniff.wait_with_output()?.stdout).into_owned();
    assert!(
        !seen.contains("10.32.0.99"),
        "the stranger's frames reached c1:\n{seen}"
    );
    // Dropped by weft's rule, which says so in its counter.
    let rules = tb.exec(
        &tb.host(1).netns,
        "iptables",
        &["-L", "WEFT-INPUT", "-v", "-n", "-x"],
    );
    let rules = String::from_utf8_lossy(&rules.stdout).into_owned();
    let dropped: u64 = rules
        .lines()
        .find(|l| l.contains("not a neighbour"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("no VXLAN drop rule on h1:\n{rules}"))?;
    assert!(dropped >= 3, "{rules}");
    // The neighbour is untouched.
    assert!(line_to(&tb, 1, 2)?.contains(" established fastdp "));
    ping_clean(&tb, &c1, "10.32.0.2", 3)?;
    Ok(())
}

/// h1 and h3 are not neighbours (no discovery: they know each other only through h2). Once
/// their containers talk, they get a direct fast path of their own instead of the relay, shown
/// in the report but not among the connections (Weave's layout lists connections only).
#[test]
fn peers_that_are_not_neighbours_get_a_direct_fast_path_when_their_containers_talk() -> Result<()> {
    let Some(mut tb) = weft_testbed::for_test("fdd", 3, Path::new(WEFT)) else {
        return Ok(());
    };
    let h1 = tb.host(1).ip.to_string();
    let h2 = tb.host(2).ip.to_string();
    tb.launch(1, &["--no-discovery"])?;
    tb.launch(2, &["--no-discovery", &h1])?;
    tb.launch(3, &["--no-discovery", &h2])?;
    wait_peers(&tb, 3, 4)?;
    wait_overlay(&tb, 1, 2, "fastdp", CONVERGE)?;
    wait_overlay(&tb, 2, 3, "fastdp", CONVERGE)?;
    let c1 = container(&mut tb, 1)?;
    let c3 = container(&mut tb, 3)?;
    // The first packets take the relay through h2.
    ping_clean_or_dump(&tb, &c1, "10.32.0.3", 3, &[1, 2, 3])?;
    let direct = |i: usize, nick: &str| -> Result<String> {
        let r = tb.report_json(i)?;
        let paths = &r["Router"]["DirectPaths"];
        let overlay = paths
            .as_array()
            .and_then(|a| a.iter().find(|p| p["NickName"] == nick))
            .map(|p| p["Overlay"].as_str().unwrap_or_default().to_string());
        match overlay {
            Some(o) if o == "fastdp" => Ok(o),
            _ => bail!("h{i} direct paths: {paths}"),
        }
    };
    Testbed::wait_for(CONVERGE, || {
        direct(1, "host3")?;
        direct(3, "host1")
    })
    .inspect_err(|_| dump(&tb, &[1, 3]))?;
    // h1's kernel sends c3's frames straight to h3.
    let mac3 = tb.exec(&c3, "cat", &["/sys/class/net/ethwe/address"]);
    let mac3 = String::from_utf8_lossy(&mac3.stdout).trim().to_string();
    let h3 = tb.host(3).ip.to_string();
    Testbed::wait_for(Duration::from_secs(10), || {
        let fdb = tb.exec(
            &tb.host(1).netns,
            "bridge",
            &["fdb", "show", "dev", "weft-vx"],
        );
        let fdb = String::from_utf8_lossy(&fdb.stdout).into_owned();
        if fdb.contains(&format!("{mac3} dst {h3} ")) {
            Ok(())
        } else {
            bail!("no direct entry for c3 ({mac3}) on h1:\n{fdb}")
        }
    })?;
    // And h2 relays none of their traffic any more.
    let relayed = |i: usize| -> Result<u64> {
        let r = tb.report_json(i)?;
        Ok(r["Router"]["Stats"]["frames_relayed"]
            .as_u64()
            .unwrap_or_default())
    };
    let before = relayed(2)?;
    ping_clean_or_dump(&tb, &c1, "10.32.0.3", 10, &[1, 2, 3])?;
    assert_eq!(relayed(2)?, before, "h2 still relays");
    let conns = connections(&tb, 1)?;
    assert!(!conns.contains("(host3)"), "{conns}");
    // Broadcasts still arrive once: by the direct path, not again through the relay.
    let c2 = container(&mut tb, 2)?;
    for (src, others) in [(&c1, [&c2, &c3]), (&c3, [&c1, &c2])] {
        let others: Vec<&str> = others.iter().map(|c| c.as_str()).collect();
        let counts = broadcast_counts(&tb, src, &others, 10)?;
        for (o, n) in others.iter().zip(&counts) {
            assert!(
                (10..=13).contains(n),
                "{src} → {o}: {n} packets for 10 broadcasts"
            );
        }
    }
    Ok(())
}
