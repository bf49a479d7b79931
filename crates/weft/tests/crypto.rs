//! End-to-end encryption: the real `weft` binary on namespace hosts, with tcpdump on the
//! underlay to check what crosses the wire.
//!
//! Needs root (CI runs as root); set WEFT_SKIP_NETNS_TESTS=1 to skip elsewhere.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use weft_api::types::Report;
use weft_testbed::{Testbed, pcap};

const WEFT: &str = env!("CARGO_BIN_EXE_weft");
const CONVERGE: Duration = Duration::from_secs(30);
/// 16 bytes that `ping -p` repeats through every echo payload.
const MARKER: &[u8; 16] = b"weft-SECRET-1234";

fn report(tb: &Testbed, i: usize) -> Result<Report> {
    Ok(serde_json::from_str(&tb.weft_ok(i, &["report"])?)?)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Pings `dst` from namespace `ns` `count` times with the marker as payload pattern.
fn ping_marker(tb: &Testbed, ns: &str, dst: &str, count: u32) -> Result<()> {
    let out = tb.exec(
        ns,
        "ping",
        &[
            "-c",
            &count.to_string(),
            "-i",
            "0.2",
            "-W",
            "2",
            "-p",
            &hex(MARKER),
            dst,
        ],
    );
    if !out.status.success() {
        bail!(
            "ping {dst} from {ns} failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    Ok(())
}

fn wait_connections(tb: &Testbed, i: usize, want: &[&str]) -> Result<String> {
    Testbed::wait_for(CONVERGE, || {
        let s = tb.status(i, &["connections"])?;
        if want.iter().all(|w| s.contains(w)) {
            Ok(s)
        } else {
            bail!(
                "h{i} connections lack {want:?}:\n{s}\nlog:\n{}",
                tb.router_log(i)
            )
        }
    })
}

fn wait_established(tb: &Testbed, i: usize, n: usize) -> Result<()> {
    Testbed::wait_for(CONVERGE, || {
        let s = tb.status(i, &["connections"])?;
        let got = s.matches(" established ").count();
        if got == n {
            Ok(())
        } else {
            bail!("h{i} has {got} established connections, want {n}:\n{s}")
        }
    })
}

/// Waits until host `i` routes directly to `n` peers (no relays): the data plane then uses
/// the links whose encryption the test checks.
fn wait_direct_routes(tb: &Testbed, i: usize, n: usize) -> Result<()> {
    Testbed::wait_for(CONVERGE, || {
        let r = report(tb, i)?;
        let routes = &r.router.unicast_routes;
        let direct = routes.iter().filter(|u| u.dest == u.via).count();
        if direct == n && routes.len() == n {
            Ok(())
        } else {
            bail!("h{i} routes are not all direct yet: {routes:?}")
        }
    })
}

/// A file only root can read, holding `password` and a newline.
fn password_file(tb: &Testbed, i: usize, password: &str) -> Result<PathBuf> {
    let dir = tb
        .host(i)
        .state_dir
        .parent()
        .context("host directory")?
        .to_path_buf();
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("password");
    std::fs::write(&path, format!("{password}\n"))?;
    Ok(path)
}

/// Two hosts with the same password (given three different ways) carry container traffic that
/// never shows in clear on the underlay; a host with the wrong password and one with none stay
/// out, and everybody says why.
#[test]
fn same_password_meshes_privately_and_others_are_refused() -> Result<()> {
    let Some(mut tb) = weft_testbed::for_test("enc", 4, Path::new(WEFT)) else {
        return Ok(());
    };
    let cap = tb.capture("udp or tcp or icmp")?;
    let (h1, h2) = (tb.host(1).ip.to_string(), tb.host(2).ip.to_string());
    let file = password_file(&tb, 1, "correct horse battery")?;
    tb.launch(1, &["--password-file", file.to_str().unwrap()])?;
    // Weave's variable on h2.
    weft_testbed::run(
        tb.weft_cmd(2, &["launch", "--nickname=host2", &h1])
            .env("WEAVE_PASSWORD", "correct horse battery"),
    )?;
    for i in [1, 2] {
        wait_established(&tb, i, 1)?;
    }
    tb.launch(3, &["--password=wrong password", &h1, &h2])?;
    tb.launch(4, &[&h1])?;

    let s = tb.status(1, &[])?;
    assert!(s.contains("     Encryption: enabled\n"), "{s}");
    let conns = tb.status(1, &["connections"])?;
    let line = conns
        .lines()
        .find(|l| l.contains("(host2)"))
        .with_context(|| conns.clone())?;
    assert!(
        line.contains(" established encrypted   sleeve ") && line.contains("encrypted=true"),
        "{line}"
    );
    // 1500 - 87: the encrypted sleeve's overhead.
    assert!(line.ends_with("mtu=1413"), "{line}");

    let c1 = tb.container("c1")?;
    let c2 = tb.container("c2")?;
    tb.weft_ok(1, &["attach", "10.32.0.1/12", &c1])?;
    tb.weft_ok(2, &["attach", "10.32.0.2/12", &c2])?;
    tb.wait_ping(&c1, "10.32.0.2", CONVERGE)?;
    ping_marker(&tb, &c1, "10.32.0.2", 5)?;
    // Big frames too (several datagrams' worth of marker each).
    let out = tb.exec(
        &c2,
        "ping",
        &["-c", "2", "-s", "1300", "-p", &hex(MARKER), "10.32.0.1"],
    );
    assert!(out.status.success());

    // The refused hosts say why, and so does h1 about the attempt it refused.
    let s3 = wait_connections(&tb, 3, &["authentication failed"])?;
    assert!(
        s3.lines()
            .filter(|l| l.contains("authentication failed"))
            .count()
            == 2,
        "h3 was refused by both: {s3}"
    );
    wait_connections(&tb, 1, &["198.18.0.3", "authentication failed"])?;
    assert!(tb.router_log(1).contains("authentication failed"));
    wait_connections(&tb, 4, &["password"])?;
    let peers = tb.status(1, &["peers"])?;
    assert!(
        !peers.contains("(host3)") && !peers.contains("(host4)"),
        "{peers}"
    );
    assert!(tb.status(3, &["peers"])?.matches("(host").count() == 1);

    std::thread::sleep(Duration::from_millis(500));
    let packets = pcap::packets(&cap)?;
    let sleeve = packets
        .iter()
        .filter(|p| pcap::is_ip_port(p, 17, 6783))
        .count();
    assert!(
        sleeve >= 14,
        "the pings crossed the underlay: {sleeve} sleeve packets"
    );
    assert_eq!(
        pcap::count_containing(&packets, MARKER),
        0,
        "the marker never crossed the underlay in clear"
    );
    // The capture does see payloads: the same pattern pinged host to host shows up.
    let out = tb.exec(
        &tb.host(1).netns,
        "ping",
        &["-c", "2", "-p", &hex(MARKER), "198.18.0.2"],
    );
    assert!(out.status.success());
    std::thread::sleep(Duration::from_millis(500));
    assert!(pcap::count_containing(&pcap::packets(&cap)?, MARKER) >= 2);

    // Metrics label connections by encryption, as Weave's did, on the status address.
    let m = tb.http_get(&tb.host(1).netns, "127.0.0.1", 6782, "/metrics")?;
    assert!(
        m.contains(r#"weave_connections{state="established",type="sleeve",encryption="yes"} 1"#),
        "{m}"
    );
    assert!(m.contains("weft_passwords_accepted 1"), "{m}");
    assert!(
        m.contains(r#"weft_sleeve_dropped_total{reason="auth_failed"} 0"#),
        "{m}"
    );
    // The read-only status listener answers the CLI too.
    let s = tb.weft_ok(1, &["--http-addr", "127.0.0.1:6782", "status"])?;
    assert!(s.contains("Encryption: enabled"), "{s}");

    // The report counts no failed decryption between the two that share a password.
    let r = report(&tb, 2)?;
    assert!(r.router.encryption);
    assert_eq!(r.router.stats["dropped_auth_failed"], 0);
    assert!(r.router.stats["datagrams_decrypted"] > 10);
    Ok(())
}

/// `ping -c N -i 0.1` in the background (see [`ping_summary`]).
fn background_ping(tb: &mut Testbed, ns: &str, dst: &str, count: u32) -> Result<()> {
    tb.spawn(
        ns,
        "ping",
        &["-c", &count.to_string(), "-i", "0.1", "-W", "1", dst],
    )?;
    Ok(())
}

/// Waits for a spawned ping (the `n`th spawned program) to finish; returns (sent, received).
fn ping_summary(tb: &Testbed, n: usize, timeout: Duration) -> Result<(u32, u32)> {
    let log = tb.spawn_log("ping", n);
    Testbed::wait_for(timeout, || {
        let s = std::fs::read_to_string(&log).unwrap_or_default();
        let Some(line) = s.lines().find(|l| l.contains("packets transmitted")) else {
            bail!("ping still running: {log:?}");
        };
        let nums: Vec<u32> = line
            .split(|c: char| !c.is_ascii_digit())
            .filter(|w| !w.is_empty())
            .take(2)
            .map(|w| w.parse().unwrap())
            .collect();
        Ok((nums[0], nums[1]))
    })
}

fn password_cmd(tb: &Testbed, i: usize, args: &[&str], stdin: Option<&str>) -> Result<String> {
    let mut all = vec!["password"];
    all.extend_from_slice(args);
    let mut cmd = tb.weft_cmd(i, &all);
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn()?;
    let mut input = child.stdin.take().expect("piped");
    input.write_all(stdin.unwrap_or("").as_bytes())?;
    drop(input);
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "weft password {args:?} on h{i} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Three hosts move from one password to another, host by host, while pings run around the
/// triangle every 100 ms: none is lost, the connections stay up, and afterwards the old
/// password no longer lets a host in.
#[test]
fn rolling_password_change_keeps_pings_flowing() -> Result<()> {
    let Some(mut tb) = weft_testbed::for_test("roll", 4, Path::new(WEFT)) else {
        return Ok(());
    };
    let (h1, h2) = (tb.host(1).ip.to_string(), tb.host(2).ip.to_string());
    tb.launch(1, &["--password=old secret"])?;
    tb.launch(2, &["--password=old secret", &h1])?;
    tb.launch(3, &["--password=old secret", &h1, &h2])?;
    for i in 1..=3 {
        wait_established(&tb, i, 2)?;
    }
    let mut cs = Vec::new();
    for i in 1..=3 {
        let c = tb.container(&format!("c{i}"))?;
        tb.weft_ok(i, &["attach", &format!("10.32.0.{i}/12"), &c])?;
        cs.push(c);
    }
    for (a, b) in [(0, 1), (1, 2), (2, 0)] {
        tb.wait_ping(&cs[a], &format!("10.32.0.{}", b + 1), CONVERGE)?;
    }
    let count = 300u32;
    for (a, b) in [(0, 1), (1, 2), (2, 0)] {
        background_ping(
            &mut tb,
            &cs[a].clone(),
            &format!("10.32.0.{}", b + 1),
            count,
        )?;
    }
    let step = Duration::from_secs(3);
    std::thread::sleep(step);
    // Step 1, every host: accept the new password too (argument, file, standard input).
    let file = password_file(&tb, 2, "new secret")?;
    assert_eq!(
        password_cmd(&tb, 1, &["add", "new secret"], None)?,
        "2 passwords accepted\n"
    );
    password_cmd(&tb, 2, &["add", "--file", file.to_str().unwrap()], None)?;
    password_cmd(&tb, 3, &["add"], Some("new secret\n"))?;
    std::thread::sleep(step);
    // Step 2, every host: dial and rekey with the new one.
    for i in 1..=3 {
        password_cmd(&tb, i, &["use", "new secret"], None)?;
    }
    // Dropping the password in use is refused with what to do instead.
    let out = tb.weft(1, &["password", "drop", "new secret"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("weft password use"));
    std::thread::sleep(step);
    // Step 3, every host: stop accepting the old one.
    for i in 1..=3 {
        assert_eq!(
            password_cmd(&tb, i, &["drop", "old secret"], None)?,
            "1 password accepted\n"
        );
    }
    let mut lost = 0;
    for n in 0..3 {
        let (sent, received) = ping_summary(&tb, n, Duration::from_secs(60))?;
        eprintln!("ping {n}: {sent} sent, {received} received during the roll");
        assert_eq!(sent, count);
        lost += sent - received;
    }
    assert_eq!(lost, 0, "no ping lost during the password roll");
    for i in 1..=3 {
        wait_established(&tb, i, 2)?;
    }
    // Connections that proved the old password proved the new one by rekeying.
    let r = report(&tb, 3)?;
    for c in &r.router.connections {
        assert!(c.key_epoch.unwrap_or(0) >= 1, "{c:?}");
    }
    assert_eq!(r.router.passwords_accepted, 1);
    // A latecomer with the old password stays out.
    tb.launch(4, &["--password=old secret", &h1])?;
    wait_connections(&tb, 4, &["authentication failed"])?;
    Ok(())
}

/// Each connection seals data with the cipher both ends offer: AES-256-GCM between routers
/// that offer it, ChaCha20-Poly1305 with one that does not (`--data-cipher`, as on a CPU
/// without AES instructions). Every pairing carries container traffic, never in clear, and
/// `weft report` says which cipher each connection uses.
#[test]
fn each_connection_seals_with_the_cipher_both_ends_offer() -> Result<()> {
    let Some(mut tb) = weft_testbed::for_test("ciph", 3, Path::new(WEFT)) else {
        return Ok(());
    };
    let cap = tb.capture("udp port 6783")?;
    let (h1, h2) = (tb.host(1).ip.to_string(), tb.host(2).ip.to_string());
    tb.launch(1, &["--password=pw", "--data-cipher=aes-256-gcm"])?;
    tb.launch(2, &["--password=pw", "--data-cipher=aes-256-gcm", &h1])?;
    tb.launch(
        3,
        &["--password=pw", "--data-cipher=chacha20-poly1305", &h1, &h2],
    )?;
    let mut cs = Vec::new();
    for i in 1..=3 {
        wait_established(&tb, i, 2)?;
        wait_direct_routes(&tb, i, 2)?;
        let c = tb.container(&format!("c{i}"))?;
        tb.weft_ok(i, &["attach", &format!("10.32.0.{i}/12"), &c])?;
        cs.push(c);
    }
    for (a, b) in [(0, 1), (1, 2), (2, 0)] {
        let dst = format!("10.32.0.{}", b + 1);
        tb.wait_ping(&cs[a], &dst, CONVERGE)?;
        ping_marker(&tb, &cs[a], &dst, 3)?;
    }
    let hosts: Vec<String> = (1..=3).map(|i| format!("{}:", tb.host(i).ip)).collect();
    for i in 1..=3 {
        let r = report(&tb, i)?;
        assert_eq!(
            r.router.connections.len(),
            2,
            "h{i}: {:?}",
            r.router.connections
        );
        for c in &r.router.connections {
            // Inbound or outbound, the address is the peer's underlay address.
            let peer = 1 + hosts
                .iter()
                .position(|h| c.address.starts_with(h.as_str()))
                .context("a connection to a host of the bed")?;
            let want = if i != 3 && peer != 3 {
                "aes-256-gcm"
            } else {
                "chacha20-poly1305"
            };
            assert_eq!(c.cipher.as_deref(), Some(want), "h{i}: {c:?}");
        }
        assert_eq!(r.router.stats["dropped_auth_failed"], 0, "h{i}");
        assert!(r.router.stats["datagrams_decrypted"] >= 6, "h{i}");
    }
    std::thread::sleep(Duration::from_millis(500));
    let packets = pcap::packets(&cap)?;
    assert!(packets.len() >= 18, "the pings crossed the capture");
    assert_eq!(
        pcap::count_containing(&packets, MARKER),
        0,
        "nothing in clear"
    );
    Ok(())
}

/// Peers that trust each other's underlay addresses exchange data in clear (control traffic
/// stays encrypted); a peer that trusts nobody still gets encrypted data.
#[test]
fn trusted_subnets_leave_data_in_clear_only_between_trusting_peers() -> Result<()> {
    let Some(mut tb) = weft_testbed::for_test("trust", 3, Path::new(WEFT)) else {
        return Ok(());
    };
    let cap12 = tb.capture("host 198.18.0.1 and host 198.18.0.2")?;
    let cap13 = tb.capture("host 198.18.0.3")?;
    let (h1, h2) = (tb.host(1).ip.to_string(), tb.host(2).ip.to_string());
    let trust = "--trusted-subnets=198.18.0.0/24";
    tb.launch(1, &["--password=pw", trust])?;
    tb.launch(2, &["--password=pw", trust, &h1])?;
    tb.launch(3, &["--password=pw", &h1, &h2])?;
    for i in 1..=3 {
        wait_established(&tb, i, 2)?;
        wait_direct_routes(&tb, i, 2)?;
    }
    let s = tb.status(1, &[])?;
    assert!(s.contains(" TrustedSubnets: 198.18.0.0/24\n"), "{s}");
    // Plaintext between trusting peers: the kernel's VXLAN fast path may carry it.
    let conns = Testbed::wait_for(CONVERGE, || {
        let c = tb.status(1, &["connections"])?;
        if c.contains(" unencrypted fastdp ") {
            Ok(c)
        } else {
            bail!("h1 → h2 not on the fast path yet:\n{c}")
        }
    })?;
    for l in conns.lines() {
        if l.contains("(host2)") {
            assert!(
                l.contains(" unencrypted fastdp ") && !l.contains("encrypted=true"),
                "{l}"
            );
        } else {
            assert!(
                l.contains(" encrypted   sleeve ") && l.contains("encrypted=true"),
                "{l}"
            );
        }
    }
    let mut cs = Vec::new();
    for i in 1..=3 {
        let c = tb.container(&format!("c{i}"))?;
        tb.weft_ok(i, &["attach", &format!("10.32.0.{i}/12"), &c])?;
        cs.push(c);
    }
    tb.wait_ping(&cs[0], "10.32.0.2", CONVERGE)?;
    tb.wait_ping(&cs[0], "10.32.0.3", CONVERGE)?;
    ping_marker(&tb, &cs[0], "10.32.0.2", 3)?;
    ping_marker(&tb, &cs[0], "10.32.0.3", 3)?;
    // A DNS name gossiped from h1 reaches h2 over the (still encrypted) control channel.
    let name = "hush-b7f3e1.weave.local.";
    tb.weft_ok(1, &["dns-add", "10.32.0.99", "-h", name])?;
    Testbed::wait_for(CONVERGE, || {
        let out = tb.weft_ok(2, &["dns-lookup", name])?;
        if out.contains("10.32.0.99") {
            Ok(())
        } else {
            bail!("h2 does not know {name} yet")
        }
    })?;
    std::thread::sleep(Duration::from_millis(500));
    let p12 = pcap::packets(&cap12)?;
    let p13 = pcap::packets(&cap13)?;
    let clear = pcap::count_containing(&p12, MARKER);
    let vxlan12 = p12.iter().filter(|p| pcap::is_ip_port(p, 17, 6784)).count();
    assert!(
        clear >= 2,
        "data between trusting peers is in clear: {clear} of {vxlan12} VXLAN packets carry the marker; h1 connections:\n{}",
        tb.status(1, &["connections"])?
    );
    assert_eq!(
        pcap::count_containing(&p12, b"hush-b7f3e1"),
        0,
        "control is not"
    );
    assert_eq!(pcap::count_containing(&p13, MARKER), 0, "h3 trusts nobody");
    assert!(
        p13.iter().filter(|p| pcap::is_ip_port(p, 17, 6783)).count() >= 6,
        "the h3 pings crossed the capture"
    );
    Ok(())
}

/// A stranger on the underlay keeps hundreds of connections open to an encrypted router's
/// control port and never says a word: a peer with the password still joins at once, the
/// router does not refuse it for a full table, and stays small.
#[test]
fn a_peer_joins_while_a_stranger_holds_hundreds_of_silent_connections() -> Result<()> {
    let Some(tb) = weft_testbed::for_test("silent", 3, Path::new(WEFT)) else {
        return Ok(());
    };
    let pw = "--password=correct horse battery";
    tb.launch(1, &[pw])?;
    let target = std::net::SocketAddr::from((tb.host(1).ip, 6783));
    // The stranger: host 3's namespace, no weft. Sockets keep the namespace they were made in.
    let stranger = weft_linux::netns::Netns::open(
        &Path::new(weft_linux::netns::NAMED_NETNS_DIR).join(&tb.host(3).netns),
    )?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let open = |n: usize| -> Result<Vec<std::net::TcpStream>> {
        let held = rt.block_on(weft_linux::netns::run_in(&stranger, move || async move {
            (0..n)
                .filter_map(|_| {
                    std::net::TcpStream::connect_timeout(&target, Duration::from_millis(300)).ok()
                })
                .collect::<Vec<_>>()
        }))?;
        Ok(held)
    };
    let mut held = open(400)?;
    let started = std::time::Instant::now();
    tb.launch(2, &[pw, &tb.host(1).ip.to_string()])?;
    // The stranger keeps at it while the peer joins.
    held.extend(open(200)?);
    wait_established(&tb, 2, 1)?;
    let joined = started.elapsed();
    eprintln!(
        "joined {joined:?} after launch, with {} stranger connections made",
        held.len()
    );
    assert!(joined < CONVERGE);
    let log = tb.router_log(1);
    assert!(!log.contains("connection limit reached"), "{log}");
    let report: Report = serde_json::from_str(&tb.weft_ok(1, &["report"])?)?;
    let dropped = report.router.stats["control_refused_half_open"];
    eprintln!("half-open connections refused or shed: {dropped}");
    let rss_kib = tb.router_rss_kib(1)?;
    eprintln!("router 1 RSS: {} MiB", rss_kib / 1024);
    assert!(rss_kib < 256 * 1024, "router 1 RSS {rss_kib} KiB");
    drop(held);
    Ok(())
}
