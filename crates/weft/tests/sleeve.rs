//! End-to-end: the userspace sleeve's big-frame machinery on namespace hosts — offload
//! super-frames and weft's own fragmentation, plain and encrypted, with fragments lost on the
//! underlay: frames arrive intact or not at all.
//!
//! Needs root (CI runs as root); set WEFT_SKIP_NETNS_TESTS=1 to skip elsewhere.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use weft_testbed::Testbed;

const WEFT: &str = env!("CARGO_BIN_EXE_weft");
const CONVERGE: Duration = Duration::from_secs(30);

/// Two sleeve-only hosts with `extra` flags and a container on each (10.32.0.1 and .2).
fn pair(tb: &mut Testbed, extra: &[&str]) -> Result<(String, String)> {
    let h1 = tb.host(1).ip.to_string();
    let mut args = vec!["--no-fastdp"];
    args.extend_from_slice(extra);
    tb.launch(1, &args)?;
    args.push(&h1);
    tb.launch(2, &args)?;
    Testbed::wait_for(CONVERGE, || {
        let s = tb.weft_ok(1, &["status"])?;
        if s.contains("Peers: 2 (with 2 established connections)") {
            Ok(())
        } else {
            bail!("{s}")
        }
    })?;
    let mut cs = Vec::new();
    for i in 1..=2 {
        let c = tb.container(&format!("c{i}"))?;
        tb.weft_ok(i, &["attach", &format!("10.32.0.{i}/12"), &c])?;
        cs.push(c);
    }
    tb.wait_ping(&cs[0], "10.32.0.2", CONVERGE)?;
    Ok((cs.remove(0), cs.remove(0)))
}

/// Drops `percent` % of the sleeve's UDP packets arriving at host `i`, at random.
fn lossy(tb: &Testbed, i: usize, percent: u32) -> Result<()> {
    tb.nft(
        i,
        &format!(
            "table inet weftloss {{
               chain input {{
                 type filter hook input priority 0;
                 udp dport 6783 numgen random mod 100 < {percent} drop
               }}
             }}"
        ),
    )
}

fn stats(tb: &Testbed, i: usize) -> Result<serde_json::Value> {
    let r = tb.report_json(i)?;
    Ok(r["Router"]["Stats"].clone())
}

#[test]
fn big_frames_cross_fragmented_and_intact_or_not_at_all_plain_and_encrypted() -> Result<()> {
    for (tag, extra) in [("sfp", vec![]), ("sfe", vec!["--password=frag-test"])] {
        let Some(mut tb) = weft_testbed::for_test(tag, 2, Path::new(WEFT)) else {
            return Ok(());
        };
        // 7000-byte frames: each crosses as one sleeve datagram in five weft fragments.
        let mut args = vec!["--mtu=8000"];
        args.extend(extra.iter().copied());
        let (c1, _c2) = pair(&mut tb, &args)?;
        let out = tb.exec(
            &c1,
            "ping",
            &[
                "-c",
                "5",
                "-i",
                "0.1",
                "-s",
                "7000",
                "-M",
                "do",
                "10.32.0.2",
            ],
        );
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(text.contains(" 0% packet loss"), "{text}");
        let s = stats(&tb, 2)?;
        assert!(s["datagrams_reassembled"].as_u64() >= Some(5), "{s}");

        // 10% of the underlay packets lost: a datagram missing a fragment is dropped whole,
        // so some pings go unanswered, and ping (which checks every byte it gets back) sees
        // nothing corrupted or duplicated. (A fragment train leaves as one offload packet that
        // stays whole across veths; a limit of one segment per packet cuts it on the wire, so
        // fragments get lost one by one, as on a real network.)
        for i in 1..=2 {
            let ns = tb.host(i).netns.clone();
            weft_testbed::run(tb.cmd_in(&ns, "ip").args([
                "link",
                "set",
                "eth0",
                "gso_max_segs",
                "1",
            ]))?;
        }
        lossy(&tb, 2, 10)?;
        let out = tb.exec(
            &c1,
            "ping",
            &[
                "-c",
                "60",
                "-i",
                "0.05",
                "-W",
                "1",
                "-s",
                "7000",
                "-M",
                "do",
                "-p",
                "a5c3",
                "10.32.0.2",
            ],
        );
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(
            !text.contains("wrong data") && !err.contains("wrong data"),
            "{text}{err}"
        );
        assert!(!text.contains("DUP!"), "{text}");
        let received: u32 = text
            .split(", ")
            .find_map(|p| p.strip_suffix(" received"))
            .context("no ping summary")?
            .parse()?;
        assert!(
            received > 0 && received < 60,
            "{tag}: {received}/60 with 10% loss\n{text}"
        );
        let s = stats(&tb, 2)?;
        assert!(s["dropped_fragments_incomplete"].as_u64() >= Some(1), "{s}");
        assert_eq!(s["dropped_auth_failed"].as_u64(), Some(0), "{s}");
        eprintln!("{tag}: {received}/60 big pings answered with 10% of fragments lost; {s}");
    }
    Ok(())
}

#[test]
fn offload_super_frames_carry_tcp_plain_and_encrypted() -> Result<()> {
    for (tag, extra) in [("sop", vec![]), ("soe", vec!["--password=offload-test"])] {
        let Some(mut tb) = weft_testbed::for_test(tag, 2, Path::new(WEFT)) else {
            return Ok(());
        };
        let (c1, c2) = pair(&mut tb, &extra)?;
        let gbps = weft_testbed::measure::iperf3(&mut tb, &c2, &c1, "10.32.0.2", 2, 1)?;
        let s = stats(&tb, 2)?;
        eprintln!("{tag}: iperf3 over the sleeve {gbps:.2} Gbit/s; {s}");
        assert!(gbps > 0.0);
        // TCP went as super-frames: far fewer datagrams than 1438-byte segments would need.
        let bytes = gbps * 1e9 / 8.0 * 2.0;
        let datagrams = s["datagrams_reassembled"].as_u64().unwrap_or(0) as f64;
        assert!(datagrams > 0.0 && datagrams < bytes / 1438.0 / 4.0, "{s}");
        assert_eq!(s["tap_write_errors"].as_u64(), Some(0), "{s}");
    }
    Ok(())
}

/// A router relaunched with another overlay MTU (here: with a password, so the encrypted
/// sleeve's 1413 instead of 1438) gives its attached containers the new MTU, so full-size
/// frames still get through.
#[test]
fn a_relaunch_with_another_mtu_updates_attached_containers() -> Result<()> {
    let Some(mut tb) = weft_testbed::for_test("smtu", 2, Path::new(WEFT)) else {
        return Ok(());
    };
    let (c1, _c2) = pair(&mut tb, &[])?;
    let mtu = |tb: &Testbed| -> Result<String> {
        let o = tb.exec(&c1, "cat", &["/sys/class/net/ethwe/mtu"]);
        Ok(String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    assert_eq!(mtu(&tb)?, "1438");
    for i in 1..=2 {
        tb.weft_ok(i, &["stop"])?;
    }
    for i in 1..=2 {
        tb.weft_ok(
            i,
            &[
                "launch",
                "--no-fastdp",
                "--password=another-mtu",
                "--resume",
            ],
        )?;
    }
    Testbed::wait_for(CONVERGE, || {
        let m = mtu(&tb)?;
        if m == "1413" {
            Ok(())
        } else {
            bail!("ethwe mtu {m}")
        }
    })?;
    // The largest ping that fits the new MTU: 1413 - 20 - 8.
    tb.wait_ping(&c1, "10.32.0.2", CONVERGE)?;
    let out = tb.exec(
        &c1,
        "ping",
        &["-c", "3", "-s", "1385", "-M", "do", "-W", "2", "10.32.0.2"],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    if !text.contains(" 0% packet loss") {
        let mut diag = String::new();
        for i in 1..=2 {
            diag += &format!(
                "--- h{i} connections\n{}\n",
                tb.weft_ok(i, &["status", "connections"])
                    .unwrap_or_default()
            );
            diag += &format!("--- h{i} log\n{}\n", tb.router_log(i));
        }
        panic!("{text}\n{diag}");
    }
    Ok(())
}

/// What a burst of numbered small datagrams from c1 (10.32.0.1) to c2 (10.32.0.2) became:
/// the sequence numbers that arrived, in arrival order, and how many arrived damaged.
fn small_datagrams(c1: &str, c2: &str, count: u32) -> Result<(Vec<u32>, usize)> {
    use std::net::UdpSocket;
    fn payload(seq: u32) -> [u8; 64] {
        let mut p = [0u8; 64];
        p[..4].copy_from_slice(&seq.to_be_bytes());
        for (i, b) in p[4..].iter_mut().enumerate() {
            *b = (seq as usize).wrapping_mul(31).wrapping_add(i) as u8;
        }
        p
    }
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let receiver = weft_testbed::in_netns(c2, move || -> std::io::Result<(Vec<u32>, usize)> {
        let sock = UdpSocket::bind("10.32.0.2:7000")?;
        let _ = ready_tx.send(());
        let (mut seqs, mut damaged) = (Vec::new(), 0);
        let mut buf = [0u8; 2048];
        sock.set_read_timeout(Some(Duration::from_secs(10)))?;
        loop {
            match sock.recv(&mut buf) {
                Ok(n) => {
                    let seq = u32::from_be_bytes(buf[..4].try_into().expect("4 bytes"));
                    if buf[..n] != payload(seq) {
                        damaged += 1;
                    }
                    seqs.push(seq);
                    // Once the flow has started, a quiet second means it is over.
                    sock.set_read_timeout(Some(Duration::from_secs(1)))?;
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return Ok((seqs, damaged));
                }
                Err(e) => return Err(e),
            }
        }
    });
    ready_rx
        .recv_timeout(Duration::from_secs(10))
        .context("receiver did not start")?;
    let sender = weft_testbed::in_netns(c1, move || -> std::io::Result<()> {
        let sock = UdpSocket::bind("10.32.0.1:0")?;
        for seq in 0..count {
            sock.send_to(&payload(seq), "10.32.0.2:7000")?;
            // Bursts of 32 back to back, as a busy service sends them: batches to read.
            if seq % 32 == 31 {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        Ok(())
    });
    sender.join().expect("sender thread")??;
    Ok(receiver.join().expect("receiver thread")??)
}

/// Small datagrams in bursts cross the batched sleeve (offload trains between the routers,
/// super-frames into the receiving bridge) once each, undamaged and, over an underlay that
/// keeps order, in order, plain and encrypted: with loss on the underlay too;
/// and with reordering on the underlay, still once each and undamaged (the replay window
/// takes late datagrams).
#[test]
fn small_packets_in_batches_arrive_once_in_order_plain_and_encrypted() -> Result<()> {
    let count = 6000;
    // Three workers each: a flow's datagrams must stay in order across them.
    for (tag, extra) in [
        ("sbp", vec!["--sleeve-workers=3"]),
        ("sbe", vec!["--sleeve-workers=3", "--password=batch-test"]),
    ] {
        let Some(mut tb) = weft_testbed::for_test(tag, 2, Path::new(WEFT)) else {
            return Ok(());
        };
        let (c1, c2) = pair(&mut tb, &extra)?;
        let once_each = |seqs: &[u32]| {
            let mut sorted = seqs.to_vec();
            sorted.sort_unstable();
            sorted.windows(2).all(|w| w[0] < w[1])
        };

        let (seqs, damaged) = small_datagrams(&c1, &c2, count)?;
        let s = stats(&tb, 2)?;
        eprintln!("{tag}: {} of {count} arrived; {s}", seqs.len());
        assert_eq!(damaged, 0);
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "out of order or twice"
        );
        assert!(seqs.len() as u32 > count / 2, "{} of {count}", seqs.len());
        let (batches, datagrams) = (
            s["udp_recv_batches"].as_u64().unwrap_or(0),
            s["udp_recv_datagrams"].as_u64().unwrap_or(0),
        );
        assert!(
            datagrams > batches,
            "no receive batch held more than one datagram: {s}"
        );
        assert!(
            s["tap_super_frames_written"].as_u64().unwrap_or(0) > 0,
            "no run of datagrams reached the bridge as one super-frame: {s}"
        );
        let sender = stats(&tb, 1)?;
        assert!(
            sender["udp_send_trains"].as_u64().unwrap_or(0) > 0,
            "no run of datagrams left as one offload send: {sender}"
        );

        lossy(&tb, 2, 10)?;
        let (seqs, damaged) = small_datagrams(&c1, &c2, count)?;
        eprintln!("{tag} with 10% loss: {} of {count} arrived", seqs.len());
        assert_eq!(damaged, 0);
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "out of order or twice"
        );
        assert!(seqs.len() < count as usize, "the underlay lost nothing?");

        tb.reorder(1, 20)?;
        let (seqs, damaged) = small_datagrams(&c1, &c2, count)?;
        let late = seqs.windows(2).filter(|w| w[0] > w[1]).count();
        eprintln!(
            "{tag} with loss and reordering: {} of {count} arrived, {late} after a later one",
            seqs.len()
        );
        assert_eq!(damaged, 0);
        assert!(late > 0, "the underlay reordered nothing");
        assert!(once_each(&seqs), "a datagram arrived twice");
        assert!(!seqs.is_empty());
    }
    Ok(())
}

#[test]
fn a_replayed_datagram_is_dropped_whichever_worker_reads_it() -> Result<()> {
    let Some(mut tb) = weft_testbed::for_test("srp", 2, Path::new(WEFT)) else {
        return Ok(());
    };
    let (c1, _c2) = pair(&mut tb, &["--sleeve-workers=3", "--password=replay-test"])?;
    let (h1, h2) = (tb.host(1).ip, tb.host(2).ip);
    // Encrypted echo requests on their way to host 2 (heartbeats are smaller).
    let cap = tb.capture(&format!(
        "udp and dst host {h2} and dst port 6783 and greater 300"
    ))?;
    let out = tb.exec(
        &c1,
        "ping",
        &["-c", "5", "-i", "0.2", "-s", "300", "10.32.0.2"],
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(" 0% packet loss"),
        "every request arrived, so every copy of one is a replay: {out:?}"
    );
    let captured = || -> Result<Vec<Vec<u8>>> {
        Ok(weft_testbed::pcap::packets(&cap)?
            .iter()
            .filter(|f| weft_testbed::pcap::is_ip_port(f, 17, 6783))
            .filter_map(|f| {
                let l4 = 14 + usize::from(f[14] & 0x0f) * 4;
                let len = usize::from(u16::from_be_bytes([f[l4 + 4], f[l4 + 5]]));
                // One datagram per packet (not a receive-offload train).
                (f.len() == l4 + len).then(|| f[l4 + 8..].to_vec())
            })
            .collect())
    };
    // tcpdump writes each packet as it comes, but on a busy machine a little later.
    let _ = Testbed::wait_for(Duration::from_secs(5), || match captured()? {
        d if d.len() >= 5 => Ok(()),
        d => bail!("captured {} of 5", d.len()),
    });
    let datagrams = captured()?;
    assert!(!datagrams.is_empty(), "no echo request captured");
    let before = stats(&tb, 2)?["dropped_replay"].as_u64().unwrap_or(0);
    // From a dozen source ports: the kernel spreads them over host 2's three sockets.
    let ports: Vec<u16> = (41000..41012).collect();
    let sent = datagrams.len() * ports.len();
    let to = std::net::SocketAddr::from((h2, 6783));
    weft_testbed::in_netns(&tb.host(1).netns, move || -> std::io::Result<()> {
        for port in ports {
            let s = std::net::UdpSocket::bind((h1, port))?;
            for d in &datagrams {
                s.send_to(d, to)?;
            }
        }
        Ok(())
    })
    .join()
    .expect("the replaying thread")??;
    Testbed::wait_for(CONVERGE, || {
        let replays = stats(&tb, 2)?["dropped_replay"].as_u64().unwrap_or(0) - before;
        if replays as usize == sent {
            Ok(())
        } else {
            bail!("{replays} of {sent} copies dropped as replays")
        }
    })?;
    Ok(())
}
