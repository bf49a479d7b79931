//! IPAM on the simulator: bootstrap modes, donation, claims, restarts, split brain, rmpeer and
//! reset, and randomized fault schedules checking that no address is ever held twice.
//!
//! Every test prints its seed; rerun a failure with `WEFT_SIM_SEED=<seed>`.

use std::net::Ipv4Addr;
use std::time::Duration;

use ipnet::Ipv4Net;
use weft_core::ipam::{InitMode, IpamConfig, IpamError, OpId, default_quorum};
use weft_core::rng::Rng;
use weft_sim::{Sim, test_seed};

const CHECK: Duration = Duration::from_millis(250);

fn universe() -> Ipv4Net {
    "10.32.0.0/12".parse().unwrap()
}

fn net(s: &str) -> Ipv4Net {
    s.parse().unwrap()
}

fn consensus(quorum: usize) -> IpamConfig {
    IpamConfig::new(universe(), InitMode::Consensus { quorum })
}

/// Runs until host `i` has answered `op`, and returns the answer.
fn answer(sim: &mut Sim, i: usize, op: OpId) -> Result<Ipv4Net, IpamError> {
    sim.run_until(Duration::from_secs(120), Duration::from_millis(50), |s| {
        if s.nodes[i].results.contains_key(&op) {
            Ok(())
        } else {
            Err(format!("h{i} has not answered op {op}"))
        }
    })
    .unwrap();
    sim.nodes[i].results[&op].clone()
}

fn alloc(sim: &mut Sim, i: usize, ident: &str) -> Ipv4Net {
    let op = sim.allocate(i, ident, None);
    answer(sim, i, op).unwrap_or_else(|e| panic!("h{i} allocate {ident}: {e}"))
}

#[test]
fn lone_peer_allocates_lowest_first_and_idempotently() {
    let mut sim = Sim::new(test_seed(20));
    sim.ipam = Some(consensus(default_quorum(0)));
    sim.add_node(&[], true);
    assert_eq!(alloc(&mut sim, 0, "a"), net("10.32.0.1/12"));
    assert_eq!(alloc(&mut sim, 0, "b"), net("10.32.0.2/12"));
    assert_eq!(alloc(&mut sim, 0, "a"), net("10.32.0.1/12"));
    sim.release(0, "a");
    assert_eq!(alloc(&mut sim, 0, "c"), net("10.32.0.1/12"));
    let op = sim.allocate(0, "d", Some(net("10.2.0.0/24")));
    assert!(matches!(
        answer(&mut sim, 0, op),
        Err(IpamError::OutOfRange { .. })
    ));
    let op = sim.allocate(0, "d", Some(net("10.40.0.0/24")));
    assert_eq!(answer(&mut sim, 0, op).unwrap(), net("10.40.0.1/24"));
}

/// Weave's worked example: host1 alone owns everything; host2 joins and gets the upper half
/// of host1's biggest free aligned block, 10.44.0.0/14, and its first address is 10.44.0.0.
#[test]
fn tutorial_worked_example() {
    let mut sim = Sim::new(test_seed(21));
    sim.ipam = Some(consensus(default_quorum(0)));
    sim.add_node(&[], true);
    assert_eq!(alloc(&mut sim, 0, "a1"), net("10.32.0.1/12"));
    sim.ipam = Some(consensus(default_quorum(1)));
    sim.add_node(&[0], true);
    sim.run_for(Duration::from_secs(2));
    assert_eq!(alloc(&mut sim, 1, "a2"), net("10.44.0.0/12"));
    sim.run_for(Duration::from_secs(1));
    sim.rings_converged(&sim.all()).unwrap();
    sim.addresses_unique().unwrap();
}

/// Three peers started together agree on one ring by consensus; each allocates from its
/// share without asking anyone.
#[test]
fn consensus_among_three() {
    let mut sim = Sim::new(test_seed(22));
    sim.ipam = Some(consensus(default_quorum(2)));
    sim.add_node(&[1, 2], true);
    sim.add_node(&[0, 2], true);
    sim.add_node(&[0, 1], true);
    sim.run_for(Duration::from_secs(2));
    let ops: Vec<OpId> = (0..3)
        .map(|i| sim.allocate(i, &format!("c{i}"), None))
        .collect();
    let got: Vec<Ipv4Net> = ops
        .iter()
        .enumerate()
        .map(|(i, op)| answer(&mut sim, i, *op).unwrap())
        .collect();
    sim.run_for(Duration::from_secs(1));
    sim.rings_converged(&sim.all()).unwrap();
    let ring = sim.nodes[0].node.ipam().unwrap().ring().unwrap().clone();
    assert_eq!(ring.seeds().len(), 3, "everyone seeded the ring");
    for (i, a) in got.iter().enumerate() {
        let owner = ring.owner_of(u64::from(u32::from(a.addr())));
        assert_eq!(
            owner,
            Some(sim.name_of(i)),
            "h{i} allocated {a} from its own share"
        );
    }
    sim.addresses_unique().unwrap();
}

/// Without a quorum no ring is made, and a request fails after its deadline with the reason,
/// instead of hanging.
#[test]
fn no_quorum_fails_clearly_instead_of_hanging() {
    let mut sim = Sim::new(test_seed(23));
    sim.ipam = Some(consensus(2));
    sim.add_node(&[], true);
    let op = sim.allocate(0, "x", None);
    let e = answer(&mut sim, 0, op).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("timed out after 30s")
            && msg.contains("awaiting consensus (quorum: 2, known: 1)"),
        "{msg}"
    );
    assert!(!sim.nodes[0].node.ipam().unwrap().has_ring());
}

#[test]
fn observer_gets_the_ring_from_electors() {
    let mut sim = Sim::new(test_seed(24));
    sim.ipam = Some(consensus(default_quorum(0)));
    sim.add_node(&[], true);
    sim.ipam = Some(IpamConfig::new(universe(), InitMode::Observer));
    sim.add_node(&[0], true);
    sim.run_for(Duration::from_secs(1));
    // Only the observer asks; it must wake the elector, which makes the ring alone.
    let a = alloc(&mut sim, 1, "o");
    assert!(universe().contains(&a.addr()));
    let ring = sim.nodes[1].node.ipam().unwrap().ring().unwrap().clone();
    assert_eq!(ring.seeds(), &[sim.name_of(0)]);
}

#[test]
fn seeded_rings_need_no_consensus() {
    let mut sim = Sim::new(test_seed(25));
    let seeds = vec![
        weft_proto::PeerName::from_u64(0x0200_0000_0001),
        weft_proto::PeerName::from_u64(0x0200_0000_0002),
    ];
    sim.ipam = Some(IpamConfig::new(universe(), InitMode::Seed(seeds)));
    sim.add_node(&[], true);
    sim.add_node(&[0], true);
    // Each allocates in its own half before they even talk.
    let a = alloc(&mut sim, 0, "a");
    let b = alloc(&mut sim, 1, "b");
    assert_eq!(a, net("10.32.0.1/12"));
    assert_eq!(b, net("10.40.0.0/12"));
    sim.run_for(Duration::from_secs(2));
    sim.rings_converged(&sim.all()).unwrap();
}

/// Two clusters seeded separately refuse to merge when connected, say why, and keep working.
#[test]
fn separately_seeded_clusters_refuse_to_merge() {
    let mut sim = Sim::new(test_seed(26));
    sim.ipam = Some(consensus(default_quorum(0)));
    sim.add_node(&[], true);
    sim.add_node(&[], true);
    let a = alloc(&mut sim, 0, "a");
    let b = alloc(&mut sim, 1, "b");
    assert_eq!(a, b, "both think they own everything");
    sim.connect(1, 0);
    sim.run_for(Duration::from_secs(5));
    for i in 0..2 {
        let st = sim.nodes[i].node.ipam_status().unwrap();
        assert!(
            st.conflicts
                .iter()
                .any(|c| c.contains("seeded by different peers")),
            "h{i}: {:?}",
            st.conflicts
        );
        assert_eq!(sim.nodes[i].router().connected_peers().count(), 0);
    }
    let now = sim.now();
    let conns = sim.nodes[1].node.status(now).connections;
    assert!(
        conns
            .iter()
            .any(|c| c.error.as_deref().is_some_and(|e| e.contains("weft reset"))),
        "{conns:?}"
    );
    // Both keep allocating.
    alloc(&mut sim, 0, "a2");
    alloc(&mut sim, 1, "b2");
}

/// A restarted peer keeps its containers' addresses and does not hand them out again.
#[test]
fn restart_keeps_allocations() {
    let mut sim = Sim::new(test_seed(27));
    sim.ipam = Some(consensus(default_quorum(0)));
    sim.add_node(&[], true);
    sim.ipam = Some(consensus(default_quorum(1)));
    sim.add_node(&[0], true);
    let a = alloc(&mut sim, 1, "a");
    let b = alloc(&mut sim, 1, "b");
    sim.crash(1);
    sim.run_for(Duration::from_secs(5));
    sim.restart(1);
    assert_eq!(alloc(&mut sim, 1, "a"), a);
    let c = alloc(&mut sim, 1, "c");
    assert_ne!(c, a);
    assert_ne!(c, b);
    sim.addresses_unique().unwrap();
}

/// Saved state lost (disk replaced, state directory wiped) while containers kept running: the
/// restarted router reclaims their addresses from the ring its peers kept, before it serves
/// any allocation, so none is handed out again.
#[test]
fn lost_state_reclaims_what_containers_hold() {
    let mut sim = Sim::new(test_seed(31));
    sim.ipam = Some(consensus(default_quorum(0)));
    sim.add_node(&[], true);
    sim.ipam = Some(consensus(default_quorum(1)));
    sim.add_node(&[0], true);
    alloc(&mut sim, 0, "x");
    let a = alloc(&mut sim, 1, "a");
    let b = alloc(&mut sim, 1, "b");
    sim.lose_state(1);
    // Asked at once, before the ring has even come back from h0.
    let op = sim.allocate(1, "c", None);
    let c = answer(&mut sim, 1, op).unwrap();
    assert_ne!(c, a);
    assert_ne!(c, b);
    assert_eq!(alloc(&mut sim, 1, "a"), a, "a's address is a's again");
    sim.addresses_unique().unwrap();
}

/// Weave's "claim" sequence: both hosts lose their state and form a blank ring, the other
/// one first, so the addresses of the second one's containers must be claimed from it.
#[test]
fn blank_ring_after_state_loss_claims_from_the_new_owner() {
    let mut sim = Sim::new(test_seed(32));
    sim.ipam = Some(consensus(default_quorum(0)));
    sim.add_node(&[], true);
    sim.ipam = Some(consensus(default_quorum(1)));
    sim.add_node(&[0], true);
    let c1 = net("10.40.0.1/12");
    let op = sim.claim(1, "c1", c1);
    assert_eq!(answer(&mut sim, 1, op).unwrap(), c1);
    let c2 = alloc(&mut sim, 0, "c2");
    sim.crash(0);
    sim.crash(1);
    sim.nodes[0].persisted = None;
    sim.nodes[1].persisted = None;
    sim.restart(0);
    sim.run_for(Duration::from_secs(1));
    sim.restart(1);
    sim.run_until(Duration::from_secs(60), CHECK, |s| {
        match s.nodes[1].node.ipam().unwrap().reclaims_pending() {
            0 => Ok(()),
            n => Err(format!("h1 still reclaiming {n}")),
        }
    })
    .unwrap();
    let st = sim.nodes[1].node.ipam_status().unwrap();
    assert!(st.conflicts.is_empty(), "{:?}", st.conflicts);
    for k in 0..4 {
        let got = alloc(&mut sim, 0, &format!("n{k}"));
        assert!(got != c1 && got != c2, "h0 handed out {got} again");
    }
    sim.addresses_unique().unwrap();
}

#[test]
fn claims_in_own_range_in_anothers_and_in_use() {
    let mut sim = Sim::new(test_seed(28));
    sim.ipam = Some(consensus(default_quorum(0)));
    sim.add_node(&[], true);
    sim.ipam = Some(consensus(default_quorum(1)));
    sim.add_node(&[0], true);
    alloc(&mut sim, 0, "x");
    // h1 claims an address in h0's range: h0 gives it up.
    let op = sim.claim(1, "c1", net("10.33.0.5/12"));
    assert_eq!(answer(&mut sim, 1, op).unwrap(), net("10.33.0.5/12"));
    // h0 claims the address h0 already gave to "x": refused.
    let op = sim.claim(0, "c2", net("10.32.0.1/12"));
    assert!(matches!(
        answer(&mut sim, 0, op),
        Err(IpamError::InUse { .. })
    ));
    // h1 claims the address h0 has allocated: h0 refuses to give it.
    let op = sim.claim(1, "c3", net("10.32.0.1/12"));
    let e = answer(&mut sim, 1, op).unwrap_err();
    assert!(matches!(e, IpamError::OwnedByPeer { .. }), "{e}");
    // Outside the range: just recorded.
    let op = sim.claim(1, "c4", net("192.168.7.7/24"));
    assert_eq!(answer(&mut sim, 1, op).unwrap(), net("192.168.7.7/24"));
    sim.run_for(Duration::from_secs(1));
    sim.addresses_unique().unwrap();
}

#[test]
fn rmpeer_takes_over_a_dead_peers_space_only() {
    let mut sim = Sim::new(test_seed(29));
    sim.ipam = Some(consensus(default_quorum(2)));
    sim.add_node(&[1, 2], true);
    sim.add_node(&[0, 2], true);
    sim.add_node(&[0, 1], true);
    for i in 0..3 {
        alloc(&mut sim, i, &format!("c{i}"));
    }
    sim.run_for(Duration::from_secs(2));
    let dead = sim.name_of(2).to_string();
    let e = sim.rmpeer(0, &dead).unwrap_err();
    assert!(
        matches!(e, weft_core::ipam::RmPeerError::Reachable(_)),
        "{e}"
    );
    sim.crash(2);
    sim.nodes[2].dead = true;
    sim.run_until(Duration::from_secs(120), CHECK, |s| s.converged(&[0, 1]))
        .unwrap();
    let st = sim.nodes[0].node.ipam_status().unwrap();
    assert!(
        st.unreachable_ips > 0,
        "status shows space owned by the dead peer"
    );
    // By nickname.
    let moved = sim.rmpeer(0, "h2").unwrap();
    assert!(moved >= 1 << 18, "took over {moved}");
    sim.run_until(Duration::from_secs(60), CHECK, |s| {
        s.rings_converged(&[0, 1])
    })
    .unwrap();
    assert_eq!(sim.nodes[1].node.ipam_status().unwrap().unreachable_ips, 0);
}

#[test]
fn reset_hands_space_to_a_live_peer() {
    let mut sim = Sim::new(test_seed(30));
    sim.ipam = Some(consensus(default_quorum(0)));
    sim.add_node(&[], true);
    sim.ipam = Some(consensus(default_quorum(1)));
    sim.add_node(&[0], true);
    alloc(&mut sim, 0, "a");
    alloc(&mut sim, 1, "b");
    let heir = sim.reset(0);
    assert_eq!(heir, Some(sim.name_of(1)));
    sim.run_until(Duration::from_secs(60), CHECK, |s| s.rings_converged(&[1]))
        .unwrap();
    let st = sim.nodes[1].node.ipam_status().unwrap();
    assert_eq!(st.unreachable_ips, 0);
    assert_eq!(st.owners.len(), 1, "h1 owns everything now");
}

/// Randomized schedules of allocate / release / claim / restart / partition / heal / crash +
/// rmpeer / lost state across 3–50 peers: at no point is an address held twice; after the faults stop the
/// rings converge and all space belongs to live peers.
#[test]
fn random_schedules_never_hand_out_an_address_twice() {
    let base = test_seed(5000);
    let runs = std::env::var("WEFT_SIM_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20u64);
    for run in 0..runs {
        let seed = base + run;
        let mut rng = Rng::new(seed);
        let mut sim = Sim::new(seed);
        sim.link.udp_loss = rng.unit() * 0.05;
        let n = 3 + rng.below(if run % 5 == 0 { 48 } else { 10 }) as usize;
        // A small range so that donations and exhaustion really happen.
        let small: Ipv4Net = "10.32.0.0/22".parse().unwrap();
        let quorum = n / 2 + 1;
        let mut cfg = IpamConfig::new(small, InitMode::Consensus { quorum });
        cfg.request_timeout = Duration::from_secs(20);
        sim.ipam = Some(cfg);
        for i in 0..n {
            let targets: Vec<usize> = if i == 0 {
                vec![]
            } else {
                vec![rng.below(i as u64) as usize]
            };
            sim.add_node(&targets, true);
        }
        let mut idents: Vec<(usize, String)> = Vec::new();
        let mut next = 0;
        let mut gone = 0;
        for step in 0..60 {
            let i = rng.below(n as u64) as usize;
            match rng.below(13) {
                0..=4 if sim.nodes[i].alive => {
                    next += 1;
                    let ident = format!("k{next}");
                    sim.allocate(i, &ident, None);
                    idents.push((i, ident));
                }
                5 | 6 if !idents.is_empty() => {
                    let k = rng.below(idents.len() as u64) as usize;
                    let (h, ident) = idents.swap_remove(k);
                    if sim.nodes[h].alive {
                        sim.release(h, &ident);
                    }
                }
                7 if sim.nodes[i].alive => {
                    next += 1;
                    let a = Ipv4Addr::from(0x0a20_0000 + rng.below(1024) as u32);
                    let ident = format!("k{next}");
                    sim.claim(i, &ident, Ipv4Net::new(a, 22).unwrap());
                    idents.push((i, ident));
                }
                8 => {
                    if sim.nodes[i].alive {
                        sim.crash(i);
                    } else if !sim.nodes[i].dead {
                        sim.restart(i);
                    }
                }
                9 => {
                    let cut = 1 + rng.below(n as u64 - 1) as usize;
                    let (a, b): (Vec<usize>, Vec<usize>) = (0..n).partition(|&x| x < cut);
                    sim.partition(&a, &b);
                }
                10 => sim.heal(),
                11 if gone < n / 3 && sim.nodes[i].alive && i != 0 => {
                    // A host dies for good; its containers go with it.
                    sim.crash(i);
                    sim.nodes[i].dead = true;
                    gone += 1;
                }
                12 if !sim.nodes[i].dead => {
                    // The state directory is wiped; the containers keep running.
                    sim.lose_state(i);
                }
                _ => {}
            }
            sim.run_for(Duration::from_millis(rng.below(3000)));
            sim.addresses_unique()
                .unwrap_or_else(|e| panic!("run {run} (seed {seed}) step {step}: {e}"));
        }
        // Faults stop: heal, bring back the living, and remove the dead from one host.
        sim.heal();
        let live: Vec<usize> = (0..n).filter(|&i| !sim.nodes[i].dead).collect();
        for &i in &live {
            if !sim.nodes[i].alive {
                sim.restart(i);
            }
        }
        // A host whose only peers died would stay cut off (as in any mesh): the operator
        // connects the survivors, as 'weft connect' would.
        for &i in &live[1..] {
            sim.connect(i, live[0]);
        }
        if let Err(e) = sim.run_until(Duration::from_secs(900), CHECK, |s| s.converged(&live)) {
            for &i in &live {
                let st = sim.nodes[i].node.ipam_status().unwrap();
                eprintln!("h{i}: {} conflicts {:?}", st.status, st.conflicts);
                let now = sim.now();
                for c in sim.nodes[i].node.status(now).connections {
                    eprintln!("   {:?} {:?} {:?}", c.addr, c.state, c.error);
                }
            }
            panic!("run {run}: {e}");
        }
        let remover = live[0];
        let dead: Vec<usize> = (0..n).filter(|&i| sim.nodes[i].dead).collect();
        for d in dead {
            let name = sim.name_of(d).to_string();
            sim.rmpeer(remover, &name)
                .unwrap_or_else(|e| panic!("run {run}: rmpeer {name}: {e}"));
        }
        // Make sure a ring exists even if nobody asked for an address yet.
        sim.allocate(live[0], "final", None);
        sim.run_until(Duration::from_secs(900), CHECK, |s| {
            s.addresses_unique()?;
            s.rings_converged(&live)
        })
        .unwrap_or_else(|e| panic!("run {run} (seed {seed}): {e}"));
    }
}
