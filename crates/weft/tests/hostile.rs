//! A hostile peer against real routers: while it holds hundreds of half-open connections,
//! joins as a peer that invents 20,000 peers, sends frames with 20,000 random source MACs,
//! floods forged fragments and DNS queries, and asks for every full state for ten seconds
//! without reading (the router queues one copy at a time), the real peers stay connected (no
//! flap), a new peer joins, traffic flows and the router's memory stays within a stated bound.
//!
//! Needs root (CI runs as root); set WEFT_SKIP_NETNS_TESTS=1 to skip elsewhere.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use weft_api::types::Report;
use weft_hostile::{Peer, Rng};
use weft_testbed::Testbed;

const WEFT: &str = env!("CARGO_BIN_EXE_weft");
const CONVERGE: Duration = Duration::from_secs(30);
/// What a router may hold under all of this (it idles at about 15 MiB).
const RSS_BOUND_MIB: u64 = 128;

fn report(tb: &Testbed, i: usize) -> Result<Report> {
    Ok(serde_json::from_str(&tb.weft_ok(i, &["report"])?)?)
}

/// Lines of host `i`'s log saying a connection with one of `nicks` ended.
fn flaps(tb: &Testbed, i: usize, nicks: &[&str]) -> Vec<String> {
    tb.router_log(i)
        .lines()
        .filter(|l| l.contains("connection shutting down") || l.contains("Removed unreachable"))
        .filter(|l| nicks.iter().any(|n| l.contains(&format!("({n})"))))
        .map(str::to_string)
        .collect()
}

#[test]
fn real_peers_shrug_off_a_hostile_one() -> Result<()> {
    let Some(mut tb) = weft_testbed::for_test("hostile", 4, Path::new(WEFT)) else {
        return Ok(());
    };
    tb.launch(1, &[])?;
    tb.launch(2, &[&tb.host(1).ip.to_string()])?;
    let c1 = tb.container("c1")?;
    let c2 = tb.container("c2")?;
    let ip1 = tb.weft_ok(1, &["attach", &c1])?.trim().to_string();
    let ip2 = tb.weft_ok(2, &["attach", &c2])?.trim().to_string();
    tb.wait_ping(&c1, &ip2, CONVERGE)?;
    let h2_name: weft_proto::PeerName = report(&tb, 2)?.router.name.parse()?;
    let pid1 = tb.our_router_pid(1).context("router 1")?;
    let rss_before = tb.router_rss_kib(1)? / 1024;

    // The hostile peer lives in host 3's namespace (no router there); sockets keep the
    // namespace they were made in.
    let stranger = weft_linux::netns::Netns::open(
        &Path::new(weft_linux::netns::NAMED_NETNS_DIR).join(&tb.host(3).netns),
    )?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let router = SocketAddr::from((tb.host(1).ip, 6783));
    let started = Instant::now();
    let (held, mut peer, udp) =
        rt.block_on(weft_linux::netns::run_in(&stranger, move || async move {
            let mut rng = Rng::new(7);
            let any = std::net::IpAddr::from([0, 0, 0, 0]);
            let udp = weft_hostile::udp_socket(any)?;
            let port = udp.local_addr()?.port();
            // Joined first: its own half-open connections would stop it joining (the per-source
            // cap).
            let mut p = Peer::join(router, rng.name(), port)?;
            let held = weft_hostile::silent_connections(router, 300);
            p.invent_peers(&mut rng, 20_000, 1)?;
            anyhow::Ok((held, p, udp))
        }))??;
    // The router takes the hostile peer's frames once their connection is established, which
    // under load (20,000 invented peers to digest, a parallel test suite) takes longer than
    // any fixed pause; its heartbeat is sent again until then. Sockets keep their namespace.
    Testbed::wait_for(CONVERGE, || {
        peer.establish(&udp)?;
        std::thread::sleep(Duration::from_millis(200));
        let s = tb.status(1, &["connections"])?;
        if s.lines()
            .any(|l| l.contains("(hostile)") && l.contains(" established "))
        {
            Ok(())
        } else {
            bail!("the hostile peer is not established at h1:\n{s}")
        }
    })?;
    std::thread::sleep(Duration::from_millis(300));
    let mut rng = Rng::new(8);
    peer.frames_with_random_macs(&udp, &mut rng, 20_000)?;
    weft_hostile::fragments(&udp, router, &mut rng, Some(h2_name), 30_000)?;
    weft_hostile::dns_queries(
        &udp,
        SocketAddr::new(router.ip(), 53),
        &mut rng,
        "weave.local",
        20_000,
    )?;
    // Asks for everything and never reads, for the rest of the test: the router's queue to
    // it fills, and stays full.
    let asker = std::thread::spawn(move || {
        for _ in 0..40 {
            // A router that hangs up on us has also stopped queueing for us.
            if peer.ask_for_everything(100).is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        peer
    });

    // A new real peer joins while all that is held open.
    let joined = Instant::now();
    tb.launch(4, &[&tb.host(1).ip.to_string()])?;
    Testbed::wait_for(CONVERGE, || {
        let s = tb.status(4, &["connections"])?;
        if s.contains("(host1)") && s.contains(" established ") {
            Ok(())
        } else {
            let log = tb.router_log(1);
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            bail!("h4:\n{s}\nh1 log (newest first):\n{}", tail.join("\n"))
        }
    })?;
    eprintln!("a new peer joined in {:?}", joined.elapsed());
    tb.wait_ping(&c1, &ip2, Duration::from_secs(5))?;
    tb.wait_ping(&c2, &ip1, Duration::from_secs(5))?;
    let peer = asker.join().expect("asker");
    eprintln!(
        "hostile: {} half-open connections, {} control bytes sent, in {:?}",
        held.len(),
        peer.sent,
        started.elapsed()
    );

    let r1 = report(&tb, 1)?;
    let stat = |k: &str| r1.router.stats.get(k).copied().unwrap_or(0);
    let rss = tb.router_rss_kib(1)? / 1024;
    eprintln!(
        "router 1: RSS {rss_before} MiB before, {rss} MiB under attack; peers refused at the bound {}, MACs refused {}, fragments from the wrong source {}, unknown senders {}, half-open shed {}, full states held back {}",
        stat("gossip_entries_over_limit"),
        stat("macs_refused"),
        stat("dropped_wrong_source"),
        stat("dropped_unknown_sender"),
        stat("control_refused_half_open"),
        stat("control_full_states_held"),
    );
    assert!(rss < RSS_BOUND_MIB, "router 1 RSS {rss} MiB");
    assert!(
        stat("gossip_entries_over_limit") > 0,
        "the topology bound held"
    );
    assert!(stat("macs_refused") > 0, "the MAC cache bound held");
    assert!(
        stat("control_full_states_held") > 0,
        "full states for the peer that never reads were not queued twice"
    );
    assert!(
        stat("dropped_wrong_source") > 0,
        "spoofed fragments were dropped"
    );
    // The real peers never lost each other.
    assert_eq!(flaps(&tb, 1, &["host2", "host4"]), Vec::<String>::new());
    assert_eq!(flaps(&tb, 2, &["host1"]), Vec::<String>::new());
    assert!(tb.our_router_pid(1) == Some(pid1), "router 1 kept running");
    drop(peer);
    drop(held);
    Ok(())
}
