//! Mesh convergence, partitions, restarts and exactly-once broadcast on the simulator.
//!
//! Every test prints its seed; rerun a failure with `WEFT_SIM_SEED=<seed>`.

use std::collections::BTreeMap;
use std::time::Duration;

use weft_core::rng::Rng;
use weft_sim::{Sim, test_seed};

const CHECK: Duration = Duration::from_millis(250);

fn line(sim: &mut Sim, n: usize, discovery: bool) {
    for i in 0..n {
        let targets: Vec<usize> = if i == 0 { vec![] } else { vec![i - 1] };
        sim.add_node(&targets, discovery);
    }
}

#[test]
fn line_of_100_converges_without_discovery() {
    let mut sim = Sim::new(test_seed(1));
    line(&mut sim, 100, false);
    let all = sim.all();
    let took = sim
        .run_until(Duration::from_secs(120), CHECK, |s| s.converged(&all))
        .unwrap();
    eprintln!(
        "line of 100 converged in {took:?} virtual, {} steps",
        sim.steps
    );
    // Without discovery the graph stays a line: the ends are 99 hops apart.
    let t = &sim.nodes[0].table;
    assert_eq!(t.neighbours.len(), 1);
    assert_eq!(sim.nodes[0].router().connected_peers().count(), 1);
}

#[test]
fn ring_of_100_converges() {
    let mut sim = Sim::new(test_seed(2));
    for i in 0..100 {
        let targets = if i == 0 { vec![] } else { vec![i - 1] };
        sim.add_node(&targets, false);
    }
    // Close the ring from the last to the first.
    sim.connect(0, 99);
    let all = sim.all();
    sim.run_until(Duration::from_secs(120), CHECK, |s| s.converged(&all))
        .unwrap();
    for n in &sim.nodes {
        assert_eq!(n.router().connected_peers().count(), 2);
    }
}

#[test]
fn random_graph_of_100_converges() {
    let seed = test_seed(3);
    let mut sim = Sim::new(seed);
    let mut rng = Rng::new(seed);
    for i in 0..100usize {
        let mut targets = Vec::new();
        if i > 0 {
            for _ in 0..2 {
                targets.push(rng.below(i as u64) as usize);
            }
            targets.dedup();
        }
        sim.add_node(&targets, false);
    }
    let all = sim.all();
    sim.run_until(Duration::from_secs(120), CHECK, |s| s.converged(&all))
        .unwrap();
}

#[test]
fn discovery_turns_a_line_into_a_full_mesh() {
    let mut sim = Sim::new(test_seed(4));
    line(&mut sim, 20, true);
    let all = sim.all();
    sim.run_until(Duration::from_secs(300), CHECK, |s| {
        s.converged(&all)?;
        for (i, n) in s.nodes.iter().enumerate() {
            let c = n.router().connected_peers().count();
            if c != 19 {
                return Err(format!("h{i} has {c} connections"));
            }
        }
        Ok(())
    })
    .unwrap();
}

/// A peer learned from gossip is dialled at once, and kept until tried even when the only
/// peer that reported it goes at that very moment: h0 learns of h2 from h1 alone, h1 dies
/// as h0 hears of h2, and h0 and h2 still find each other.
#[test]
fn a_discovered_peer_is_dialled_even_when_its_reporter_dies() {
    for k in 0..10 {
        let mut sim = Sim::new(test_seed(40) + k);
        sim.add_node(&[], true);
        sim.add_node(&[0], true);
        sim.run_until(Duration::from_secs(30), CHECK, |s| s.converged(&[0, 1]))
            .unwrap();
        // h2 does not dial what it learns: only h0's discovery can bring the two together.
        sim.add_node(&[1], false);
        let (h1, h2) = (sim.name_of(1), sim.name_of(2));
        sim.run_until(Duration::from_secs(30), Duration::from_millis(1), |s| {
            // h1's entry lists h2: h0 knows where h2 is (h2's own entry only names h1).
            let t = s.nodes[0].router().topology();
            let listed = t
                .get(&h1)
                .is_some_and(|p| p.connections.iter().any(|c| c.peer == h2));
            if t.get(&h2).is_some() && listed {
                Ok(())
            } else {
                Err("h0 has not heard of h2".into())
            }
        })
        .unwrap();
        sim.crash(1);
        sim.nodes[1].dead = true;
        let start = sim.elapsed();
        sim.run_until(Duration::from_secs(30), Duration::from_millis(10), |s| {
            s.converged(&[0, 2])
        })
        .unwrap_or_else(|e| panic!("seed {}: {e}", sim.seed));
        let took = sim.elapsed() - start;
        assert!(
            took < Duration::from_secs(2),
            "seed {}: h0 and h2 met only after {took:?}",
            sim.seed
        );
    }
}

#[test]
fn simultaneous_dials_leave_one_connection() {
    for seed in 0..20 {
        let mut sim = Sim::new(test_seed(100 + seed));
        sim.add_node(&[1], false);
        sim.add_node(&[0], false);
        let all = sim.all();
        sim.run_until(Duration::from_secs(30), CHECK, |s| s.converged(&all))
            .unwrap();
        sim.run_for(Duration::from_secs(30));
        for n in &sim.nodes {
            assert_eq!(n.router().connected_peers().count(), 1);
        }
        let now = sim.now();
        let st = sim.nodes[0].node.status(now);
        assert_eq!(st.connections.len(), 1, "{:?}", st.connections);
    }
}

/// Routers relaunched with `--resume` redial the peers they knew (as `ip:port`). One that is
/// dialled by such a peer before its own retry comes round keeps that connection instead of
/// dialling a second one, whose tie-break would replace the first and drop traffic.
#[test]
fn a_resumed_router_does_not_redial_a_peer_that_dialled_it() {
    for seed in 0..20 {
        let mut sim = Sim::new(test_seed(300 + seed));
        sim.add_node(&[], false);
        sim.add_node(&[0], false);
        let all = sim.all();
        sim.run_until(Duration::from_secs(30), CHECK, |s| s.converged(&all))
            .unwrap();
        sim.crash(0);
        sim.crash(1);
        sim.run_for(Duration::from_millis(500));
        // h0 comes back first and finds h1 down; h1 then dials h0 before h0's retry.
        sim.restart(0);
        sim.run_for(Duration::from_millis(300));
        sim.restart(1);
        sim.run_until(Duration::from_secs(30), CHECK, |s| s.converged(&all))
            .unwrap();
        let accepted = sim.accepted;
        sim.run_for(Duration::from_secs(60));
        assert_eq!(
            sim.accepted, accepted,
            "seed {}: a second connection was made",
            sim.seed
        );
        for n in &sim.nodes {
            assert_eq!(n.router().connected_peers().count(), 1);
        }
    }
}

#[test]
fn partition_and_heal() {
    let seed = test_seed(5);
    let mut sim = Sim::new(seed);
    let mut rng = Rng::new(seed);
    for i in 0..40usize {
        let targets: Vec<usize> = if i == 0 {
            vec![]
        } else {
            vec![rng.below(i as u64) as usize]
        };
        sim.add_node(&targets, true);
    }
    let all = sim.all();
    sim.run_until(Duration::from_secs(300), CHECK, |s| s.converged(&all))
        .unwrap();
    let (a, b): (Vec<usize>, Vec<usize>) = all.iter().partition(|&&i| i % 2 == 0);
    sim.partition(&a, &b);
    // Each side notices (heartbeat timeouts), forgets the other and converges on its own.
    let took = sim
        .run_until(Duration::from_secs(300), CHECK, |s| {
            s.converged(&a)?;
            s.converged(&b)
        })
        .unwrap();
    eprintln!("split detected and converged in {took:?}");
    sim.heal();
    let took = sim
        .run_until(Duration::from_secs(600), CHECK, |s| s.converged(&all))
        .unwrap();
    eprintln!("healed in {took:?}");
}

#[test]
fn restarted_peer_with_new_uid_replaces_old() {
    let mut sim = Sim::new(test_seed(6));
    line(&mut sim, 10, true);
    let all = sim.all();
    sim.run_until(Duration::from_secs(120), CHECK, |s| s.converged(&all))
        .unwrap();
    let old_uid = sim.nodes[5].router().uid();
    // Let h5's version climb so that its old entry is "newer" than the new router's first one.
    sim.run_for(Duration::from_secs(60));
    sim.crash(5);
    sim.run_for(Duration::from_secs(1));
    sim.restart(5);
    assert_ne!(sim.nodes[5].router().uid(), old_uid);
    sim.run_until(Duration::from_secs(300), CHECK, |s| s.converged(&all))
        .unwrap();
}

#[test]
fn crashed_peer_is_forgotten() {
    let mut sim = Sim::new(test_seed(7));
    line(&mut sim, 6, true);
    let all = sim.all();
    sim.run_until(Duration::from_secs(120), CHECK, |s| s.converged(&all))
        .unwrap();
    sim.crash(3);
    let rest: Vec<usize> = all.iter().copied().filter(|&i| i != 3).collect();
    sim.run_until(Duration::from_secs(120), CHECK, |s| s.converged(&rest))
        .unwrap();
}

#[test]
fn converges_with_udp_loss() {
    let mut sim = Sim::new(test_seed(8));
    sim.link.udp_loss = 0.2;
    line(&mut sim, 15, true);
    let all = sim.all();
    sim.run_until(Duration::from_secs(300), CHECK, |s| s.converged(&all))
        .unwrap();
}

#[test]
fn runs_are_deterministic() {
    let run = |seed| {
        let mut sim = Sim::new(seed);
        sim.link.udp_loss = 0.1;
        line(&mut sim, 12, true);
        sim.run_for(Duration::from_secs(5));
        sim.crash(4);
        sim.run_for(Duration::from_secs(40));
        sim.restart(4);
        sim.run_for(Duration::from_secs(40));
        (sim.trace_hash, sim.steps)
    };
    let seed = test_seed(9);
    assert_eq!(run(seed), run(seed));
    assert_ne!(run(seed).0, run(seed + 1).0);
}

fn frame(dst: [u8; 6], src: [u8; 6], tag: u8) -> Vec<u8> {
    let mut f = vec![tag; 60];
    f[0..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&src);
    f
}

fn mac(i: usize) -> [u8; 6] {
    [2, 0xcc, 0, 0, (i >> 8) as u8, i as u8]
}

/// After convergence, a flood from every host reaches every other host exactly once, and
/// unicast replies then go straight to the right host.
#[test]
fn broadcast_reaches_every_peer_exactly_once_and_unicast_follows() {
    let seed = test_seed(10);
    let mut sim = Sim::new(seed);
    let mut rng = Rng::new(seed);
    for i in 0..30usize {
        let targets: Vec<usize> = if i == 0 {
            vec![]
        } else {
            vec![rng.below(i as u64) as usize]
        };
        sim.add_node(&targets, false);
    }
    let all = sim.all();
    sim.run_until(Duration::from_secs(120), CHECK, |s| s.converged(&all))
        .unwrap();
    for src in 0..30usize {
        sim.send_frame(src, &frame([0xff; 6], mac(src), src as u8));
    }
    sim.run_for(Duration::from_secs(1));
    for (i, n) in sim.nodes.iter().enumerate() {
        let mut per_src: BTreeMap<u8, usize> = BTreeMap::new();
        for f in &n.injected {
            *per_src.entry(f[20]).or_default() += 1;
        }
        for src in 0..30usize {
            let want = usize::from(src != i);
            assert_eq!(
                per_src.get(&(src as u8)).copied().unwrap_or(0),
                want,
                "h{i} from h{src}"
            );
        }
    }
    // Unicast from h29 to h0's MAC (learned from h0's flood) lands only on h0.
    for n in sim.nodes.iter_mut() {
        n.injected.clear();
    }
    sim.send_frame(29, &frame(mac(0), mac(29), 0xab));
    sim.run_for(Duration::from_secs(1));
    for (i, n) in sim.nodes.iter().enumerate() {
        assert_eq!(n.injected.len(), usize::from(i == 0), "h{i}");
    }
}

/// A partial mesh where h0 and h2 cannot reach each other still carries frames between them
/// through h1.
#[test]
fn frames_relay_around_a_cut_link() {
    let mut sim = Sim::new(test_seed(11));
    sim.add_node(&[], true);
    sim.add_node(&[0], true);
    sim.add_node(&[0, 1], true);
    sim.partition(&[0], &[2]);
    let all = sim.all();
    sim.run_until(Duration::from_secs(60), CHECK, |s| s.converged(&all))
        .unwrap();
    sim.send_frame(0, &frame([0xff; 6], mac(0), 1));
    sim.run_for(Duration::from_millis(100));
    assert_eq!(sim.nodes[2].injected.len(), 1);
    sim.send_frame(2, &frame(mac(0), mac(2), 2));
    sim.run_for(Duration::from_millis(100));
    assert_eq!(sim.nodes[0].injected.len(), 1);
    let now = sim.now();
    let st = sim.nodes[0].node.status(now);
    assert!(
        st.connections
            .iter()
            .any(|c| c.addr == Sim::addr(2)
                && c.state != weft_core::mesh::ConnectionState::Established),
        "h0 shows its failing attempt to h2: {:?}",
        st.connections
    );
}

/// Randomized schedules of crashes, restarts, partitions and heals on random graphs: whatever
/// happened, once the faults stop the mesh converges.
#[test]
fn random_fault_schedules_converge() {
    let base = test_seed(1000);
    let runs = std::env::var("WEFT_SIM_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(12u64);
    for run in 0..runs {
        let seed = base + run;
        let mut sim = Sim::new(seed);
        let mut rng = Rng::new(seed);
        sim.link.udp_loss = rng.unit() * 0.1;
        // Every other run encrypted: handshakes and rekeys under the same faults.
        if run % 2 == 1 {
            sim.password = Some("pw".into());
        }
        let n = 5 + rng.below(20) as usize;
        for i in 0..n {
            let targets: Vec<usize> = if i == 0 {
                vec![]
            } else {
                vec![rng.below(i as u64) as usize]
            };
            sim.add_node(&targets, rng.below(4) != 0);
        }
        for _ in 0..8 {
            match rng.below(4) {
                0 => {
                    let i = rng.below(n as u64) as usize;
                    if sim.nodes[i].alive {
                        sim.crash(i);
                    } else {
                        sim.restart(i);
                    }
                }
                1 => {
                    let cut = rng.below(n as u64) as usize;
                    let (a, b): (Vec<usize>, Vec<usize>) = (0..n).partition(|&i| i < cut);
                    sim.partition(&a, &b);
                }
                2 => sim.heal(),
                _ => {}
            }
            let d = Duration::from_millis(rng.below(60_000));
            sim.run_for(d);
        }
        sim.heal();
        for i in 0..n {
            if !sim.nodes[i].alive {
                sim.restart(i);
            }
        }
        let all = sim.all();
        sim.run_until(Duration::from_secs(900), CHECK, |s| s.converged(&all))
            .unwrap_or_else(|e| panic!("run {run}: {e}"));
    }
}

#[test]
fn connection_limit_is_respected() {
    let mut sim = Sim::new(test_seed(12));
    sim.conn_limit = 3;
    sim.add_node(&[], false);
    for _ in 0..6 {
        sim.add_node(&[0], false);
    }
    sim.run_for(Duration::from_secs(60));
    assert_eq!(sim.nodes[0].router().connected_peers().count(), 3);
    let connected = sim.nodes[1..]
        .iter()
        .filter(|n| n.router().connected_peers().count() == 1)
        .count();
    assert_eq!(connected, 3);
    // The refused ones keep trying and say so.
    let now = sim.now();
    let refused = sim.nodes[1..]
        .iter_mut()
        .find(|n| n.router().connected_peers().count() == 0)
        .unwrap();
    let st = refused.node.status(now);
    assert!(
        st.connections
            .iter()
            .any(|c| c.error.is_some() && c.state != weft_core::mesh::ConnectionState::Established),
        "{:?}",
        st.connections
    );
}

/// Routers of earlier releases (protocol 1: whole topologies; 2: versions and digests) and
/// of this one (3: lazy-push repair of the broadcast tree) in one mesh: every pair
/// negotiates the older side's protocol, they converge, and a restart and a death reach
/// every host either way.
#[test]
fn old_and_new_protocols_mix_in_one_mesh() {
    let seed = test_seed(60);
    let mut sim = Sim::new(seed);
    let mut rng = Rng::new(seed);
    let n = 40usize;
    let mut protocol = Vec::new();
    let mut old = Vec::new();
    for i in 0..n {
        let p = 1 + rng.below(3) as u8;
        sim.protocol_max = p;
        protocol.push(p);
        if p == 1 {
            old.push(i);
        }
        let targets: Vec<usize> = if i == 0 {
            vec![]
        } else {
            vec![rng.below(i as u64) as usize]
        };
        sim.add_node(&targets, true);
    }
    let all = sim.all();
    sim.run_until(Duration::from_secs(120), CHECK, |s| s.converged(&all))
        .unwrap();
    let names: BTreeMap<_, _> = (0..n).map(|i| (sim.nodes[i].router().name(), i)).collect();
    let mut mixed = 0;
    for i in 0..n {
        for (peer, version) in sim.nodes[i].router().neighbour_protocols() {
            let j = names[&peer];
            let want = protocol[i].min(protocol[j]);
            assert_eq!(version, want, "h{i}-h{j} negotiated {version}");
            mixed += usize::from(want == 1);
        }
    }
    assert!(mixed > 0 && !old.is_empty() && old.len() < n);

    // A new host's entry reaches everyone, whichever protocol carried it.
    let restarted = old.first().copied().unwrap();
    sim.restart(restarted);
    let fresh = (0..n).find(|i| !old.contains(i)).unwrap();
    sim.crash(fresh);
    let took = sim
        .run_until(Duration::from_secs(60), CHECK, |s| s.converged(&all))
        .unwrap();
    eprintln!(
        "{} old of {n}; restart and death known everywhere after {took:?}",
        old.len()
    );
}
