//! Data-plane benchmark: in one run, on one test bed, TCP throughput (iperf3, 1, 4 and 8
//! streams) and ping RTT for the underlay itself, for raw kernel VXLAN set up by hand (a bridge
//! with an address on each host, static flood and MAC entries: the limit a fast path can reach;
//! and again with the addresses in namespaces behind veths, as containers are), and
//! between containers over weft: the VXLAN fast path (hosts 1 and 2), the sleeve (hosts 3 and
//! 4, `--no-fastdp`) and the encrypted sleeve (hosts 5 and 6, with a password); and, when it is
//! installed, wireguard-go between hosts 7 and 8 and boringtun (`boringtun-cli`) between
//! hosts 13 and 14. The sleeve rows run weft's default of one
//! worker per core; hosts 9 to 12 repeat them with one worker, for the ratio. Each figure is also given as a ratio of the
//! underlay's and of raw VXLAN's, with the routers' CPU cost per Gbit/s. A second table has
//! small packets: 64-byte UDP datagrams received per second (iperf3 -u -l 64 -b 0) with the
//! data plane's CPU per packet, and a TCP request/response ping-pong of 64-byte messages
//! (rate, p50 and p99 latency).
//!
//! Usage: weft-bench [SECONDS] (default 10). Needs root, iperf3 and ping.
//!
//! `weft-bench ipam [N]`: IP allocations per second through the HTTP API of one router
//! (N allocations then N releases, from 1 and from 8 concurrent clients).
//!
//! `weft-bench dns [SECONDS]`: weftDNS queries per second with the router pinned to one core
//! and the load generator on the other.
//!
//! `weft-bench hold [LAUNCH ARGS...]`: two routers launched with those arguments and a
//! container on each, left up for profiling by hand (`perf record -p`, iperf3) until a file
//! it names is removed.
//!
//! `weft-bench mesh [N]`: N real routers (default 50) on Docker-like hosts, launched together
//! as users start them (each given two earlier hosts), one container each: the time until
//! every container pings a random other, then each router's CPU while idle and its memory.

use anyhow::{Context, Result, bail};
use weft_testbed::{Posture, Testbed, measure};

struct Row {
    name: &'static str,
    tcp1: f64,
    tcp4: f64,
    tcp8: f64,
    rtt_ms: f64,
    /// Small packets and request/response (not measured for the raw VXLAN rows).
    small: Option<Small>,
    /// Both routers' CPU seconds per second of transfer, per Gbit/s (1-stream run).
    cpu_per_gbit: Option<f64>,
    /// The larger router's resident memory (VmRSS) right after the transfers, in MB.
    rss_mb: Option<f64>,
}

/// Resident set size of process `pid`, in MB. (Not the peak: with a password the peak holds
/// the 64 MiB Argon2id derivation at start-up, which is freed before any traffic.)
fn rss_mb(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

fn routers_cpu(tb: &Testbed, hosts: [usize; 2]) -> f64 {
    pids_cpu(&router_pids(tb, hosts))
}

fn router_pids(tb: &Testbed, hosts: [usize; 2]) -> Vec<u32> {
    hosts.iter().filter_map(|&i| tb.our_router_pid(i)).collect()
}

fn pids_cpu(pids: &[u32]) -> f64 {
    pids.iter().filter_map(|&p| measure::cpu_seconds(p)).sum()
}

/// Small-packet figures for one path.
struct Small {
    /// 64-byte UDP datagrams received per second (iperf3 -u -l 64 -b 0).
    pps: f64,
    /// The data plane's CPU (both ends, in cores) during that run, when it is a process.
    cpu_cores: Option<f64>,
    /// 64-byte TCP request/response round trips per second on one connection, and their
    /// latency percentiles in microseconds.
    rr_per_s: f64,
    rr_p50_us: f64,
    rr_p99_us: f64,
}

/// Small-packet rate (with the CPU of `pids` meanwhile) and request/response from
/// `client` to `server` at `dst`.
fn small(
    tb: &mut Testbed,
    server: &str,
    client: &str,
    dst: &str,
    secs: u32,
    pids: &[u32],
) -> Result<Small> {
    let cpu0 = pids_cpu(pids);
    let t0 = std::time::Instant::now();
    let pps = measure::iperf3_udp_pps(tb, server, client, dst, secs, 64)?;
    let cpu_cores =
        (!pids.is_empty()).then(|| (pids_cpu(pids) - cpu0) / t0.elapsed().as_secs_f64());
    let (rr_per_s, rr_p50_us, rr_p99_us) = request_response(tb, server, client, dst, secs)?;
    Ok(Small {
        pps,
        cpu_cores,
        rr_per_s,
        rr_p50_us,
        rr_p99_us,
    })
}

/// A TCP_RR-style ping-pong of 64-byte messages between this program run as `rr-server` in
/// `server` and as `rr-client` in `client`: (round trips per second, p50 µs, p99 µs).
fn request_response(
    tb: &mut Testbed,
    server: &str,
    client: &str,
    dst: &str,
    secs: u32,
) -> Result<(f64, f64, f64)> {
    static PORT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(7100);
    let port = PORT
        .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        .to_string();
    let exe = std::env::current_exe()?.to_string_lossy().into_owned();
    tb.spawn(server, "env", &[&exe, "rr-server", &port])?;
    let out = tb.exec(client, &exe, &["rr-client", dst, &port, &secs.to_string()]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let field = |k: &str| -> Result<f64> {
        text.split_whitespace()
            .find_map(|w| w.strip_prefix(k)?.strip_prefix('='))
            .with_context(|| {
                format!(
                    "no {k} from rr-client: {text}{}",
                    String::from_utf8_lossy(&out.stderr)
                )
            })?
            .parse()
            .context("rr-client figure")
    };
    Ok((field("per_s")?, field("p50_us")?, field("p99_us")?))
}

/// `rr-server PORT`: on one TCP connection, answers every 64-byte message with 64 bytes.
fn rr_server(args: &[String]) -> Result<()> {
    use std::io::{Read, Write};
    let port: u16 = args.first().context("rr-server PORT")?.parse()?;
    let listener = std::net::TcpListener::bind(("0.0.0.0", port))?;
    let (mut s, _) = listener.accept()?;
    s.set_nodelay(true)?;
    let mut buf = [0u8; 64];
    while s.read_exact(&mut buf).is_ok() {
        s.write_all(&buf)?;
    }
    Ok(())
}

/// `rr-client DST PORT SECS`: one message in flight at a time for SECS seconds; prints
/// `per_s=… p50_us=… p99_us=…`.
fn rr_client(args: &[String]) -> Result<()> {
    use std::io::{Read, Write};
    let [dst, port, secs] = args else {
        bail!("rr-client DST PORT SECS");
    };
    let addr = format!("{dst}:{port}");
    let start = std::time::Instant::now();
    let mut s = loop {
        match std::net::TcpStream::connect(&addr) {
            Ok(s) => break s,
            Err(_) if start.elapsed() < std::time::Duration::from_secs(5) => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => bail!("connecting to {addr}: {e}"),
        }
    };
    s.set_nodelay(true)?;
    let run = std::time::Duration::from_secs(secs.parse()?);
    let mut buf = [7u8; 64];
    let mut rtts = Vec::new();
    let t0 = std::time::Instant::now();
    while t0.elapsed() < run {
        let t = std::time::Instant::now();
        s.write_all(&buf)?;
        s.read_exact(&mut buf)?;
        rtts.push(t.elapsed().as_nanos() as u64);
    }
    let total = t0.elapsed().as_secs_f64();
    rtts.sort_unstable();
    let pct = |p: f64| rtts[((rtts.len() - 1) as f64 * p) as usize] as f64 / 1000.0;
    println!(
        "per_s={:.0} p50_us={:.1} p99_us={:.1}",
        rtts.len() as f64 / total,
        pct(0.5),
        pct(0.99)
    );
    Ok(())
}

/// wireguard-go between the host namespaces of `a` and `b` (10.40.1.x/24 on its TUN, MTU
/// 1420, as ../shared/bench runs it), when `wireguard-go` and `wg` are on PATH; `None`
/// otherwise. Put Debian 13's build first on PATH for the current one:
/// `PATH="$(../shared/bench/modern-peers.sh):$PATH"`.
fn wireguard_go(tb: &mut Testbed, hosts: [usize; 2], secs: u32) -> Result<Option<Row>> {
    userspace_wireguard(tb, Wireguard::Go, hosts, secs)
}

/// The userspace WireGuards the bench runs next to weft, both configured with `wg`.
#[derive(Clone, Copy)]
enum Wireguard {
    Go,
    /// Cloudflare's, in Rust (`cargo install boringtun-cli`), with two threads as
    /// ../shared/bench runs it.
    Boringtun,
}

impl Wireguard {
    fn name(self) -> &'static str {
        match self {
            Wireguard::Go => "wireguard-go",
            Wireguard::Boringtun => "boringtun",
        }
    }

    fn program(self) -> &'static str {
        match self {
            Wireguard::Go => "wireguard-go",
            Wireguard::Boringtun => "boringtun-cli",
        }
    }

    /// The command that runs the device `dev` in the foreground.
    fn command(self, dev: &str) -> Vec<String> {
        let v: Vec<&str> = match self {
            Wireguard::Go => vec!["env", "WG_PROCESS_FOREGROUND=1", "wireguard-go", "-f", dev],
            Wireguard::Boringtun => vec![
                "boringtun-cli",
                "--foreground",
                "--disable-drop-privileges",
                "--threads",
                "2",
                dev,
            ],
        };
        v.into_iter().map(String::from).collect()
    }
}

/// boringtun between hosts `a` and `b`, as [`wireguard_go`], when `boringtun-cli` is on PATH.
fn boringtun(tb: &mut Testbed, hosts: [usize; 2], secs: u32) -> Result<Option<Row>> {
    userspace_wireguard(tb, Wireguard::Boringtun, hosts, secs)
}

fn userspace_wireguard(
    tb: &mut Testbed,
    wg: Wireguard,
    [a, b]: [usize; 2],
    secs: u32,
) -> Result<Option<Row>> {
    let has = |p: &str| {
        std::process::Command::new(p)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    let name = wg.name();
    if !has(wg.program()) || !has("wg") {
        eprintln!("{} or wg not installed: no {name} row", wg.program());
        return Ok(None);
    }
    eprintln!("{name}: iperf3 {secs}s x3, UDP, request/response, ping...");
    let key = |args: &[&str], input: Option<&str>| -> Result<String> {
        use std::io::Write;
        let mut c = std::process::Command::new("wg")
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()?;
        if let Some(i) = input {
            c.stdin
                .take()
                .context("wg stdin")?
                .write_all(i.as_bytes())?;
        }
        let o = c.wait_with_output()?;
        Ok(String::from_utf8(o.stdout)?.trim().to_string())
    };
    let mut keys = Vec::new();
    for _ in 0..2 {
        let private = key(&["genkey"], None)?;
        let public = key(&["pubkey"], Some(&private))?;
        keys.push((private, public));
    }
    // Interface names are global to the control sockets (/var/run/wireguard): unique per
    // run and per kind.
    let tag = match wg {
        Wireguard::Go => 'w',
        Wireguard::Boringtun => 'b',
    };
    let dev = |i: usize| format!("wt{tag}{}x{i}", std::process::id() % 100_000);
    let mut pids = Vec::new();
    for i in [a, b] {
        let ns = tb.host(i).netns.clone();
        let d = dev(i);
        let cmd = wg.command(&d);
        let args: Vec<&str> = cmd[1..].iter().map(String::as_str).collect();
        pids.push(tb.spawn(&ns, &cmd[0], &args)?);
        let sock = format!("/var/run/wireguard/{d}.sock");
        Testbed::wait_for(std::time::Duration::from_secs(5), || {
            if std::path::Path::new(&sock).exists() {
                Ok(())
            } else {
                bail!("{name} {d} did not start")
            }
        })?;
    }
    for (k, (i, j)) in [(a, b), (b, a)].into_iter().enumerate() {
        let ns = tb.host(i).netns.clone();
        let keyfile = tb.dir().join(format!("wg{i}.key"));
        std::fs::write(&keyfile, &keys[k].0)?;
        let endpoint = format!("{}:51820", tb.host(j).ip);
        let allowed = format!("10.40.1.{j}/32");
        let d = dev(i);
        let keypath = keyfile.to_string_lossy().into_owned();
        let peer_pub = keys[1 - k].1.clone();
        let addr = format!("10.40.1.{i}/24");
        let cmds: [Vec<&str>; 3] = [
            vec![
                "wg",
                "set",
                &d,
                "listen-port",
                "51820",
                "private-key",
                &keypath,
                "peer",
                &peer_pub,
                "endpoint",
                &endpoint,
                "allowed-ips",
                &allowed,
            ],
            vec!["ip", "addr", "add", &addr, "dev", &d],
            vec!["ip", "link", "set", &d, "mtu", "1420", "up"],
        ];
        for c in cmds {
            weft_testbed::run(tb.cmd_in(&ns, c[0]).args(&c[1..]))?;
        }
    }
    let (na, nb) = (tb.host(a).netns.clone(), tb.host(b).netns.clone());
    let dst = format!("10.40.1.{b}");
    tb.wait_ping(&na, &dst, std::time::Duration::from_secs(10))?;
    let cpu0 = pids_cpu(&pids);
    let t0 = std::time::Instant::now();
    let tcp1 = measure::iperf3(tb, &nb, &na, &dst, secs, 1)?;
    let cpu = (pids_cpu(&pids) - cpu0) / t0.elapsed().as_secs_f64();
    Ok(Some(Row {
        name,
        tcp1,
        tcp4: measure::iperf3(tb, &nb, &na, &dst, secs, 4)?,
        tcp8: measure::iperf3(tb, &nb, &na, &dst, secs, 8)?,
        small: Some(small(tb, &nb, &na, &dst, secs, &pids)?),
        rtt_ms: measure::ping_rtt(tb, &na, &dst, 50)?,
        cpu_per_gbit: Some(cpu / tcp1.max(1e-9)),
        rss_mb: pids.iter().filter_map(|&p| rss_mb(p)).reduce(f64::max),
    }))
}

/// Launches routers on hosts `a` and `b` with `extra` flags, attaches a container to each, and
/// measures between the containers.
fn weft_pair(
    tb: &mut Testbed,
    name: &'static str,
    [a, b]: [usize; 2],
    extra: &[&str],
    secs: u32,
) -> Result<Row> {
    eprintln!("{name}: launching, iperf3 {secs}s x3, UDP, request/response, ping...");
    let (ca, cb, dst) = launch_pair(tb, [a, b], extra)?;
    let cpu0 = routers_cpu(tb, [a, b]);
    let t0 = std::time::Instant::now();
    let tcp1 = measure::iperf3(tb, &cb, &ca, &dst, secs, 1)?;
    let cpu = (routers_cpu(tb, [a, b]) - cpu0) / t0.elapsed().as_secs_f64();
    let tcp4 = measure::iperf3(tb, &cb, &ca, &dst, secs, 4)?;
    let tcp8 = measure::iperf3(tb, &cb, &ca, &dst, secs, 8)?;
    let pids = router_pids(tb, [a, b]);
    let small = small(tb, &cb, &ca, &dst, secs, &pids)?;
    let rss_mb = [a, b]
        .iter()
        .filter_map(|&i| tb.our_router_pid(i).and_then(rss_mb))
        .reduce(f64::max);
    let rtt_ms = measure::ping_rtt(tb, &ca, &dst, 50)?;
    Ok(Row {
        name,
        tcp1,
        tcp4,
        tcp8,
        small: Some(small),
        rtt_ms,
        cpu_per_gbit: Some(cpu / tcp1.max(1e-9)),
        rss_mb,
    })
}

/// Routers on hosts `a` and `b` launched with `extra` (`b` given `a`), and a container on
/// each at 10.32.0.`a` and 10.32.0.`b` that reach each other: (container a, container b,
/// b's address).
fn launch_pair(
    tb: &mut Testbed,
    [a, b]: [usize; 2],
    extra: &[&str],
) -> Result<(String, String, String)> {
    let aip = tb.host(a).ip.to_string();
    tb.launch(a, extra)?;
    let mut with_peer = extra.to_vec();
    with_peer.push(&aip);
    tb.launch(b, &with_peer)?;
    let (ca, cb) = (
        tb.container(&format!("c{a}"))?,
        tb.container(&format!("c{b}"))?,
    );
    let dst = format!("10.32.0.{b}");
    tb.weft_ok(a, &["attach", &format!("10.32.0.{a}/12"), &ca])?;
    tb.weft_ok(b, &["attach", &format!("{dst}/12"), &cb])?;
    tb.wait_ping(&ca, &dst, std::time::Duration::from_secs(30))?;
    Ok((ca, cb, dst))
}

/// `weft-bench hold [LAUNCH ARGS...]`: two weft hosts launched with the given arguments, a
/// container on each (10.32.0.1 and 10.32.0.2), left up for profiling by hand until the file
/// it prints is removed; then everything is taken down.
fn hold(extra: &[String]) -> Result<()> {
    let weft = weft_testbed::weft_binary()?;
    let mut tb = Testbed::with_posture("hold", 2, &weft, Posture::Bare)?;
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let (c1, c2, _) = launch_pair(&mut tb, [1, 2], &extra)?;
    let flag = std::env::temp_dir().join(format!("weft-hold-{}", std::process::id()));
    std::fs::write(&flag, "")?;
    println!(
        "containers {c1} (10.32.0.1) and {c2} (10.32.0.2); routers {:?}; remove {} to end",
        router_pids(&tb, [1, 2]),
        flag.display()
    );
    while flag.exists() {
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    Ok(())
}

/// Kernel VXLAN between the host namespaces of `a` and `b`, as in the shared baseline
/// (../shared/bench): VNI 4242, port 4789, bridge `bvbr0` holding 10.40.0.<i>/24. With
/// `veth`, the address is instead in a container namespace plugged into the bridge by a veth
/// pair, the way weft's containers are: the like-for-like baseline for weft's fast path.
fn raw_vxlan(tb_mut: &mut Testbed, [a, b]: [usize; 2], secs: u32, veth: bool) -> Result<Row> {
    eprintln!(
        "raw kernel VXLAN{}: iperf3 {secs}s x2, ping...",
        if veth { ", endpoints behind veths" } else { "" }
    );
    let mut endpoint = std::collections::BTreeMap::new();
    for (i, j) in [(a, b), (b, a)] {
        let ns = tb_mut.host(i).netns.clone();
        let container = if veth {
            Some(tb_mut.container(&format!("rv{i}"))?)
        } else {
            None
        };
        let (me, peer) = (tb_mut.host(i).ip.to_string(), tb_mut.host(j).ip.to_string());
        let ip = |args: &[&str]| -> Result<()> {
            weft_testbed::run(tb_mut.cmd_in(&ns, args[0]).args(&args[1..])).map(|_| ())
        };
        ip(&[
            "ip",
            "link",
            "add",
            "bvx0",
            "type",
            "vxlan",
            "id",
            "4242",
            "local",
            &me,
            "dev",
            "eth0",
            "dstport",
            "4789",
            "nolearning",
        ])?;
        ip(&["ip", "link", "set", "bvx0", "mtu", "1450"])?;
        ip(&[
            "bridge",
            "fdb",
            "append",
            "00:00:00:00:00:00",
            "dev",
            "bvx0",
            "dst",
            &peer,
        ])?;
        ip(&[
            "ip",
            "link",
            "add",
            "bvbr0",
            "type",
            "bridge",
            "stp_state",
            "0",
            "forward_delay",
            "0",
        ])?;
        ip(&["ip", "link", "set", "bvbr0", "mtu", "1450"])?;
        ip(&["ip", "link", "set", "bvx0", "master", "bvbr0", "up"])?;
        ip(&["ip", "link", "set", "bvbr0", "up"])?;
        if let Some(c) = container {
            ip(&[
                "ip", "link", "add", "bvv0", "mtu", "1450", "type", "veth", "peer", "name", "eth0",
                "mtu", "1450", "netns", &c,
            ])?;
            ip(&["ip", "link", "set", "bvv0", "master", "bvbr0", "up"])?;
            let cip = |args: &[&str]| -> Result<()> {
                weft_testbed::run(tb_mut.cmd_in(&c, args[0]).args(&args[1..])).map(|_| ())
            };
            cip(&[
                "ip",
                "addr",
                "add",
                &format!("10.40.0.{i}/24"),
                "dev",
                "eth0",
            ])?;
            cip(&["ip", "link", "set", "eth0", "up"])?;
            endpoint.insert(i, (c, "eth0"));
        } else {
            ip(&[
                "ip",
                "addr",
                "add",
                &format!("10.40.0.{i}/24"),
                "dev",
                "bvbr0",
            ])?;
            endpoint.insert(i, (ns.clone(), "bvbr0"));
        }
    }
    for (i, j) in [(a, b), (b, a)] {
        let (ens, dev) = endpoint[&j].clone();
        let mac = weft_testbed::run(
            tb_mut
                .cmd_in(&ens, "cat")
                .arg(format!("/sys/class/net/{dev}/address")),
        )?;
        let mac = String::from_utf8_lossy(&mac.stdout).trim().to_string();
        let peer = tb_mut.host(j).ip.to_string();
        weft_testbed::run(
            tb_mut
                .cmd_in(&tb_mut.host(i).netns, "bridge")
                .args(["fdb", "add", &mac, "dev", "bvx0", "dst", &peer, "static"]),
        )?;
    }
    let (na, nb) = (endpoint[&a].0.clone(), endpoint[&b].0.clone());
    let dst = format!("10.40.0.{b}");
    tb_mut.wait_ping(&na, &dst, std::time::Duration::from_secs(10))?;
    let row = Row {
        name: if veth {
            "raw kernel VXLAN, endpoints behind veths"
        } else {
            "raw kernel VXLAN (bridge, static FDB)"
        },
        tcp1: measure::iperf3(tb_mut, &nb, &na, &dst, secs, 1)?,
        tcp4: measure::iperf3(tb_mut, &nb, &na, &dst, secs, 4)?,
        tcp8: measure::iperf3(tb_mut, &nb, &na, &dst, secs, 8)?,
        small: None,
        rtt_ms: measure::ping_rtt(tb_mut, &na, &dst, 50)?,
        cpu_per_gbit: None,
        rss_mb: None,
    };
    for i in [a, b] {
        let ns = tb_mut.host(i).netns.clone();
        for l in ["bvbr0", "bvx0", "bvv0"] {
            let _ = tb_mut.exec(&ns, "ip", &["link", "del", l]);
        }
    }
    Ok(row)
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("ipam-client") => return ipam_client(&args[2..]),
        Some("ipam") => {
            return ipam_bench(args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(2000));
        }
        Some("dns-client") => return dns_client(&args[2..]),
        Some("dns") => {
            return dns_bench(args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(5));
        }
        Some("rr-server") => return rr_server(&args[2..]),
        Some("rr-client") => return rr_client(&args[2..]),
        Some("hold") => return hold(&args[2..]),
        Some("mesh") => {
            return mesh_bench(args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(50));
        }
        _ => {}
    }
    if !weft_testbed::available() {
        bail!("the benchmark builds network namespaces and needs root");
    }
    let secs: u32 = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(10);
    let weft = weft_testbed::weft_binary()?;
    let mut tb = Testbed::with_posture("bench", 14, &weft, Posture::Bare)?;
    let (h1, h2) = (tb.host(1).netns.clone(), tb.host(2).netns.clone());
    let h2ip = tb.host(2).ip.to_string();
    let mut rows = Vec::new();

    eprintln!("underlay: iperf3 {secs}s x3, UDP, request/response, ping...");
    rows.push(Row {
        name: "underlay (veth+bridge)",
        tcp1: measure::iperf3(&mut tb, &h2, &h1, &h2ip, secs, 1)?,
        tcp4: measure::iperf3(&mut tb, &h2, &h1, &h2ip, secs, 4)?,
        tcp8: measure::iperf3(&mut tb, &h2, &h1, &h2ip, secs, 8)?,
        small: Some(small(&mut tb, &h2, &h1, &h2ip, secs, &[])?),
        rtt_ms: measure::ping_rtt(&tb, &h1, &h2ip, 50)?,
        cpu_per_gbit: None,
        rss_mb: None,
    });

    rows.push(raw_vxlan(&mut tb, [1, 2], secs, false)?);
    rows.push(raw_vxlan(&mut tb, [1, 2], secs, true)?);
    rows.push(weft_pair(
        &mut tb,
        "weft fast path (VXLAN)",
        [1, 2],
        &[],
        secs,
    )?);
    rows.push(weft_pair(
        &mut tb,
        "weft sleeve",
        [3, 4],
        &["--no-fastdp"],
        secs,
    )?);
    rows.push(weft_pair(
        &mut tb,
        "weft sleeve, encrypted",
        [5, 6],
        &["--password=benchmark"],
        secs,
    )?);
    if let Some(r) = wireguard_go(&mut tb, [7, 8], secs)? {
        rows.push(r);
    }
    if let Some(r) = boringtun(&mut tb, [13, 14], secs)? {
        rows.push(r);
    }
    // The sleeve rows above run one worker per core (weft's default); these pin one.
    let one = rows.len();
    rows.push(weft_pair(
        &mut tb,
        "weft sleeve, 1 worker",
        [9, 10],
        &["--no-fastdp", "--sleeve-workers=1"],
        secs,
    )?);
    rows.push(weft_pair(
        &mut tb,
        "weft sleeve, encrypted, 1 worker",
        [11, 12],
        &["--password=benchmark", "--sleeve-workers=1"],
        secs,
    )?);
    let fast = tb.weft_ok(1, &["status", "connections"])?;
    if !fast.contains(" fastdp ") {
        bail!("the fast-path row did not use the fast path:\n{fast}");
    }

    let (base, vx) = (&rows[0], &rows[1]);
    println!(
        "\n| path | TCP 1 stream Gbit/s | x underlay | x kernel VXLAN | TCP 4 streams Gbit/s | x underlay | x kernel VXLAN | TCP 8 streams Gbit/s | x kernel VXLAN | RTT ms | vs underlay | router CPU cores per Gbit/s | router RSS after load MB |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in &rows {
        println!(
            "| {} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:+.3} ms | {} | {} |",
            r.name,
            r.tcp1,
            r.tcp1 / base.tcp1,
            r.tcp1 / vx.tcp1,
            r.tcp4,
            r.tcp4 / base.tcp4,
            r.tcp4 / vx.tcp4,
            r.tcp8,
            r.tcp8 / vx.tcp8,
            r.rtt_ms,
            r.rtt_ms - base.rtt_ms,
            r.cpu_per_gbit
                .map_or("-".to_string(), |c| format!("{c:.2}")),
            r.rss_mb.map_or("-".to_string(), |m| format!("{m:.1}"))
        );
    }
    let pps_of = |name: &str| {
        rows.iter()
            .find(|r| r.name == name)
            .and_then(|r| r.small.as_ref().map(|s| s.pps))
    };
    let (wg, bt) = (pps_of("wireguard-go"), pps_of("boringtun"));
    let base_pps = base.small.as_ref().map_or(f64::NAN, |s| s.pps);
    println!(
        "\n| path | UDP 64 B received kpps | x underlay | x wireguard-go | data-plane CPU, cores | kpps per data-plane core | data-plane CPU s per M packets | TCP 64 B request/response per s | p50 µs | p99 µs |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for r in &rows {
        let Some(s) = &r.small else { continue };
        // The fast path's data plane is the kernel: its router's CPU says nothing per packet.
        let cores = s.cpu_cores.filter(|&c| c >= 0.01);
        println!(
            "| {} | {:.1} | {:.3} | {} | {} | {} | {} | {:.0} | {:.1} | {:.1} |",
            r.name,
            s.pps / 1e3,
            s.pps / base_pps,
            wg.map_or("-".to_string(), |w| format!("{:.2}", s.pps / w)),
            cores.map_or("-".to_string(), |c| format!("{c:.2}")),
            cores.map_or("-".to_string(), |c| format!(
                "{:.1}",
                s.pps / 1e3 / c.max(1e-9)
            )),
            cores.map_or("-".to_string(), |c| format!(
                "{:.2}",
                c / (s.pps / 1e6).max(1e-9)
            )),
            s.rr_per_s,
            s.rr_p50_us,
            s.rr_p99_us
        );
    }
    let (vx_veth, fast) = (&rows[2], &rows[3]);
    println!(
        "\nweft fast path / raw kernel VXLAN: TCP 1 stream {:.2}x, 4 streams {:.2}x (bridge endpoint); {:.2}x, {:.2}x (endpoints behind veths, like containers)",
        fast.tcp1 / vx.tcp1,
        fast.tcp4 / vx.tcp4,
        fast.tcp1 / vx_veth.tcp1,
        fast.tcp4 / vx_veth.tcp4,
    );
    let (plain, enc) = (&rows[4], &rows[5]);
    let pps = |r: &Row| r.small.as_ref().map_or(f64::NAN, |s| s.pps);
    println!(
        "\ntargets (issue 20): encrypted sleeve 64 B packets/s {} wireguard-go's (want >= 3; {} boringtun's); sleeve 4 streams {:.2}x kernel VXLAN (want >= 0.5); encrypted sleeve 1 stream {:.2}x kernel VXLAN (want >= 0.6)",
        wg.map_or("- (no wireguard-go)".to_string(), |w| format!(
            "{:.2}x",
            pps(enc) / w
        )),
        bt.map_or("- (no boringtun)".to_string(), |b| format!(
            "{:.2}x",
            pps(enc) / b
        )),
        plain.tcp4 / vx.tcp4,
        enc.tcp1 / vx.tcp1
    );
    // As many as the sleeve row's router says it runs (its default).
    let log = tb.router_log(3);
    let workers = log
        .split("sleeve data plane: ")
        .nth(1)
        .and_then(|t| t.split_whitespace().next())
        .unwrap_or("?");
    for (many, single) in [(plain, &rows[one]), (enc, &rows[one + 1])] {
        let cpu_per_m = |r: &Row| {
            r.small
                .as_ref()
                .and_then(|s| Some(s.cpu_cores? / (s.pps / 1e6).max(1e-9)))
                .unwrap_or(f64::NAN)
        };
        println!(
            "\n{} with {workers} workers / 1 worker: TCP 1 stream {:.2}x, 4 streams {:.2}x, 8 streams {:.2}x, 64 B packets/s {:.2}x, data-plane CPU per packet {:.2}x, router CPU per Gbit/s {:.2}x",
            many.name,
            many.tcp1 / single.tcp1,
            many.tcp4 / single.tcp4,
            many.tcp8 / single.tcp8,
            pps(many) / pps(single),
            cpu_per_m(many) / cpu_per_m(single),
            many.cpu_per_gbit.unwrap_or(f64::NAN) / single.cpu_per_gbit.unwrap_or(f64::NAN),
        );
    }
    println!(
        "\nencrypted / unencrypted sleeve: TCP 1 stream {:.2}x, 4 streams {:.2}x, RTT {:.2}x",
        enc.tcp1 / plain.tcp1,
        enc.tcp4 / plain.tcp4,
        enc.rtt_ms / plain.rtt_ms
    );
    for i in [4, 6] {
        let stats = tb.weft_ok(i, &["report"])?;
        let v: serde_json::Value = serde_json::from_str(&stats)?;
        println!("\nreceiving router h{i} counters: {}", v["Router"]["Stats"]);
    }
    Ok(())
}

/// One HTTP/1.1 keep-alive connection to the API; returns (status, body).
struct Http {
    stream: std::io::BufReader<std::net::TcpStream>,
}

impl Http {
    fn connect() -> Result<Http> {
        let s = std::net::TcpStream::connect("127.0.0.1:6784")?;
        s.set_nodelay(true)?;
        Ok(Http {
            stream: std::io::BufReader::new(s),
        })
    }

    fn request(&mut self, method: &str, path: &str) -> Result<(u16, String)> {
        use std::io::{BufRead, Read, Write};
        let req = format!("{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n");
        self.stream.get_mut().write_all(req.as_bytes())?;
        let mut status = 0;
        let mut len = 0usize;
        let mut line = String::new();
        loop {
            line.clear();
            self.stream.read_line(&mut line)?;
            if status == 0 {
                status = line.split_whitespace().nth(1).unwrap_or("0").parse()?;
            } else if line == "\r\n" {
                break;
            } else if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse()?;
            }
        }
        let mut body = vec![0u8; len];
        self.stream.read_exact(&mut body)?;
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }
}

/// Runs inside the host's namespace: `ipam-client N CLIENTS TAG`; prints allocs/s, releases/s
/// and allocation latency percentiles.
fn ipam_client(args: &[String]) -> Result<()> {
    let n: usize = args.first().map(|s| s.parse()).transpose()?.unwrap_or(1000);
    let clients: usize = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(1);
    let tag = args.get(2).cloned().unwrap_or_else(|| "b".into());
    let per = n / clients;
    let run = |phase: &'static str| -> Result<(f64, Vec<f64>)> {
        let start = std::time::Instant::now();
        let handles: Vec<_> = (0..clients)
            .map(|c| {
                let tag = tag.clone();
                std::thread::spawn(move || -> Result<Vec<f64>> {
                    let mut h = Http::connect()?;
                    let mut lat = Vec::with_capacity(per);
                    for k in 0..per {
                        let t = std::time::Instant::now();
                        let (method, want) = if phase == "alloc" {
                            ("POST", 200)
                        } else {
                            ("DELETE", 204)
                        };
                        let (st, body) = h.request(method, &format!("/ip/{tag}{c}x{k}"))?;
                        if st != want {
                            bail!("{method} answered {st}: {body}");
                        }
                        lat.push(t.elapsed().as_secs_f64() * 1000.0);
                    }
                    Ok(lat)
                })
            })
            .collect();
        let mut lat = Vec::new();
        for h in handles {
            lat.extend(
                h.join()
                    .map_err(|_| anyhow::anyhow!("client thread panicked"))??,
            );
        }
        Ok(((per * clients) as f64 / start.elapsed().as_secs_f64(), lat))
    };
    let (alloc_rate, mut lat) = run("alloc")?;
    let (release_rate, _) = run("release")?;
    lat.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| lat[((lat.len() as f64 - 1.0) * p) as usize];
    println!(
        "{clients} client(s), {} allocations: {alloc_rate:.0} allocations/s (p50 {:.2} ms, p99 {:.2} ms), {release_rate:.0} releases/s",
        per * clients,
        pct(0.5),
        pct(0.99)
    );
    Ok(())
}

fn ipam_bench(n: usize) -> Result<()> {
    if !weft_testbed::available() {
        bail!("the benchmark builds network namespaces and needs root");
    }
    let weft = weft_testbed::weft_binary()?;
    let tb = Testbed::with_posture("ipbench", 1, &weft, Posture::Bare)?;
    tb.launch(1, &[])?;
    let me = std::env::current_exe()?;
    let me = me.to_str().expect("utf-8 path");
    println!(
        "IP allocation through the HTTP API of one router (each allocation is persisted with fsync before it is answered):"
    );
    for (clients, tag) in [(1, "a"), (8, "b")] {
        let out = tb
            .cmd_in(&tb.host(1).netns, me)
            .args(["ipam-client", &n.to_string(), &clients.to_string(), tag])
            .output()?;
        if !out.status.success() {
            bail!("client failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        print!("{}", String::from_utf8_lossy(&out.stdout));
    }
    Ok(())
}

/// A minimal A query for `name` with id `id`.
fn dns_query(id: u16, name: &str) -> Vec<u8> {
    let mut q = Vec::with_capacity(64);
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

/// Runs inside the host's namespace: `dns-client SECONDS THREADS NAME`; closed-loop queries.
fn dns_client(args: &[String]) -> Result<()> {
    let secs: u64 = args.first().map(|s| s.parse()).transpose()?.unwrap_or(5);
    let threads: usize = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(4);
    let name = args
        .get(2)
        .cloned()
        .unwrap_or_else(|| "bench.weave.local".into());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let name = name.clone();
            std::thread::spawn(move || -> Result<(u64, u64)> {
                let sock = std::net::UdpSocket::bind("127.0.0.1:0")?;
                sock.connect("127.0.0.1:53")?;
                sock.set_read_timeout(Some(std::time::Duration::from_millis(500)))?;
                let (mut ok, mut lost) = (0u64, 0u64);
                let mut buf = [0u8; 1500];
                let mut id = (t as u16) << 12;
                while std::time::Instant::now() < deadline {
                    id = id.wrapping_add(1);
                    sock.send(&dns_query(id, &name))?;
                    match sock.recv(&mut buf) {
                        Ok(n) if n >= 12 && buf[0..2] == id.to_be_bytes() && buf[3] & 0x0f == 0 => {
                            ok += 1
                        }
                        _ => lost += 1,
                    }
                }
                Ok((ok, lost))
            })
        })
        .collect();
    let (mut ok, mut lost) = (0, 0);
    for h in handles {
        let (o, l) = h
            .join()
            .map_err(|_| anyhow::anyhow!("client thread panicked"))??;
        ok += o;
        lost += l;
    }
    println!(
        "{threads} closed-loop clients, {secs} s: {:.0} answered queries/s ({lost} unanswered)",
        ok as f64 / secs as f64
    );
    Ok(())
}

fn mesh_bench(n: usize) -> Result<()> {
    if !weft_testbed::available() {
        bail!("the benchmark builds network namespaces and needs root");
    }
    if n < 2 {
        bail!("a mesh needs at least 2 routers");
    }
    let weft = weft_testbed::weft_binary()?;
    let mut tb = Testbed::with_posture("meshb", n, &weft, Posture::Docker)?;
    tb.pin_underlay_neighbours()?;
    let mut rng: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut pick = |below: usize| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng % below as u64) as usize
    };
    let start = std::time::Instant::now();
    for i in 1..=n {
        let mut targets: Vec<String> = Vec::new();
        while targets.len() < (i - 1).min(2) {
            let ip = tb.host(1 + pick(i - 1)).ip.to_string();
            if !targets.contains(&ip) {
                targets.push(ip);
            }
        }
        let mut args = vec!["--log-level=warning"];
        args.extend(targets.iter().map(String::as_str));
        tb.launch(i, &args)?;
    }
    let launched = start.elapsed();
    tb.wait_status(
        &(1..=n).rev().collect::<Vec<_>>(),
        &format!("Peers: {n} (with"),
    )?;
    let known = start.elapsed();
    let mut addrs = Vec::new();
    let mut containers = Vec::new();
    for i in 1..=n {
        let c = tb.container(&format!("{i}"))?;
        let addr = tb.attach(i, &[], &c)?;
        addrs.push(addr.split('/').next().unwrap_or(&addr).to_string());
        containers.push(c);
    }
    let attached = start.elapsed();
    for (i, container) in containers.iter().enumerate() {
        let j = (i + 1 + pick(n - 1)) % n;
        if std::env::var_os("WEFT_BENCH_DIAG").is_some() {
            // One ping first; if it fails, what each side's kernel holds for the other.
            let dump = |ns: &str, dev: &str| {
                tb.cmd_in(ns, "timeout")
                    .args(["5", "tcpdump", "-nei", dev, "-l", "icmp or arp"])
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::null())
                    .spawn()
            };
            let (hs, hd) = (tb.host(i + 1).netns.clone(), tb.host(j + 1).netns.clone());
            let cap = [
                dump(&hs, "weft-vx")?,
                dump(&hd, "weft-vx")?,
                dump(&hd, "weft")?,
                dump(&hs, "weft")?,
            ];
            std::thread::sleep(std::time::Duration::from_millis(500));
            let out = tb.exec(container, "ping", &["-c", "1", "-W", "2", &addrs[j]]);
            let caps: Vec<String> = cap
                .into_iter()
                .map(|c| {
                    c.wait_with_output()
                        .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
                        .unwrap_or_default()
                })
                .collect();
            if !out.status.success() {
                eprintln!(
                    "DIAG capture src weft-vx:\n{}\nDIAG dst weft-vx:\n{}\nDIAG dst weft:\n{}\nDIAG src weft:\n{}",
                    caps[0], caps[1], caps[2], caps[3]
                );
            }
            if !out.status.success() {
                let show = |ns: &str, prog: &str, args: &[&str]| {
                    let o = tb.exec(ns, prog, args);
                    format!(
                        "$ {prog} {}\n{}{}",
                        args.join(" "),
                        String::from_utf8_lossy(&o.stdout),
                        String::from_utf8_lossy(&o.stderr)
                    )
                };
                eprintln!(
                    "DIAG host {} -> host {} ({}) failed:\n{}{}{}{}{}{}",
                    i + 1,
                    j + 1,
                    addrs[j],
                    String::from_utf8_lossy(&out.stdout),
                    show(container, "ip", &["neigh"]),
                    show(container, "ip", &["-br", "addr"]),
                    show(
                        &hs,
                        "ip",
                        &["neigh", "show", "dev", "weft", "to", &addrs[j]]
                    ),
                    show(
                        &hd,
                        "ip",
                        &["neigh", "show", "dev", "weft", "to", &addrs[i]]
                    ),
                    show(&containers[j], "ip", &["-br", "link"]),
                );
                // Bridge ports not forwarding (a container's port still learning, or gone).
                eprintln!(
                    "DIAG src bridge ports not forwarding: {:?}",
                    show(&hs, "bridge", &["link", "show"])
                        .lines()
                        .filter(|l| l.contains("master weft") && !l.contains("state forwarding"))
                        .collect::<Vec<_>>()
                );
                let dst_mac = String::from_utf8_lossy(
                    &tb.exec(&containers[j], "cat", &["/sys/class/net/ethwe/address"])
                        .stdout,
                )
                .trim()
                .to_string();
                let src_mac = String::from_utf8_lossy(
                    &tb.exec(container, "cat", &["/sys/class/net/ethwe/address"])
                        .stdout,
                )
                .trim()
                .to_string();
                let fdb_s = show(&hs, "bridge", &["fdb", "show", "br", "weft"]);
                let fdb_d = show(&hd, "bridge", &["fdb", "show", "br", "weft"]);
                eprintln!(
                    "DIAG src fdb for dst mac {dst_mac}: {:?}\nDIAG dst fdb for src mac {src_mac}: {:?}\nDIAG vxlan fdb src->{}: {:?}",
                    fdb_s
                        .lines()
                        .filter(|l| l.contains(&dst_mac))
                        .collect::<Vec<_>>(),
                    fdb_d
                        .lines()
                        .filter(|l| l.contains(&src_mac))
                        .collect::<Vec<_>>(),
                    tb.host(j + 1).ip,
                    show(&hs, "bridge", &["fdb", "show", "dev", "weft-vx"])
                        .lines()
                        .filter(|l| l.contains(&tb.host(j + 1).ip.to_string())
                            && (l.starts_with("00:00") || l.contains(&dst_mac)))
                        .collect::<Vec<_>>(),
                );
            }
        }
        let took = tb.wait_ping(container, &addrs[j], std::time::Duration::from_secs(300))?;
        // A slow first reply is worth its connections' state, to see which path it took.
        if took > std::time::Duration::from_secs(3) {
            eprintln!(
                "host {} -> host {} ({}) took {:.1} s:\n{}",
                i + 1,
                j + 1,
                addrs[j],
                took.as_secs_f64(),
                tb.status(i + 1, &["connections"]).unwrap_or_default()
            );
        }
    }
    let reachable = start.elapsed();
    // Idle: a few seconds for the last gossip to settle, then CPU over 20 s.
    std::thread::sleep(std::time::Duration::from_secs(5));
    let pids: Vec<u32> = (1..=n).filter_map(|i| tb.our_router_pid(i)).collect();
    let before: Vec<f64> = pids
        .iter()
        .map(|&p| measure::cpu_seconds(p).unwrap_or(0.0))
        .collect();
    let window = 20.0;
    std::thread::sleep(std::time::Duration::from_secs_f64(window));
    let cpu: Vec<f64> = pids
        .iter()
        .zip(&before)
        .map(|(&p, b)| (measure::cpu_seconds(p).unwrap_or(0.0) - b) / window * 100.0)
        .collect();
    let rss: Vec<f64> = (1..=n)
        .filter_map(|i| tb.router_rss_kib(i).ok())
        .map(|k| k as f64 / 1024.0)
        .collect();
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let max = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
    println!(
        "{n} routers: launched in {:.1} s, every router knew every other at {:.1} s, containers attached at {:.1} s, every container reached a random other at {:.1} s",
        launched.as_secs_f64(),
        known.as_secs_f64(),
        attached.as_secs_f64(),
        reachable.as_secs_f64()
    );
    println!(
        "idle CPU per router: mean {:.2}% of a core, max {:.2}%; memory (RSS) mean {:.1} MB, max {:.1} MB",
        mean(&cpu),
        max(&cpu),
        mean(&rss),
        max(&rss)
    );
    println!(
        "routers={n} reachable_s={:.1} idle_cpu_pct_mean={:.2} idle_cpu_pct_max={:.2} rss_mb_mean={:.1} rss_mb_max={:.1}",
        reachable.as_secs_f64(),
        mean(&cpu),
        max(&cpu),
        mean(&rss),
        max(&rss)
    );
    Ok(())
}

fn dns_bench(secs: u64) -> Result<()> {
    if !weft_testbed::available() {
        bail!("the benchmark builds network namespaces and needs root");
    }
    let weft = weft_testbed::weft_binary()?;
    let tb = Testbed::with_posture("dnsbench", 1, &weft, Posture::Bare)?;
    tb.launch(1, &["--log-level=warning"])?;
    tb.weft_ok(
        1,
        &[
            "dns-add",
            "10.32.0.9",
            "10.32.0.10",
            "-h",
            "bench.weave.local",
        ],
    )?;
    let pid = tb.our_router_pid(1).context("router pid")?;
    // The router gets core 0 only (all its threads); the load generator core 1.
    let out = std::process::Command::new("taskset")
        .args(["-a", "-p", "-c", "0", &pid.to_string()])
        .output()?;
    if !out.status.success() {
        bail!("taskset failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let me = std::env::current_exe()?;
    let me = me.to_str().expect("utf-8 path");
    println!("weftDNS, local name with 2 addresses, router pinned to one core:");
    for threads in [1, 4, 16] {
        let mut cmd = std::process::Command::new("taskset");
        cmd.args([
            "-c",
            "1",
            "ip",
            "netns",
            "exec",
            &tb.host(1).netns,
            me,
            "dns-client",
        ])
        .args([
            secs.to_string(),
            threads.to_string(),
            "bench.weave.local".into(),
        ]);
        let out = cmd.output()?;
        if !out.status.success() {
            bail!("client failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        print!("{}", String::from_utf8_lossy(&out.stdout));
    }
    Ok(())
}
