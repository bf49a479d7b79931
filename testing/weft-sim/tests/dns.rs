//! weftDNS records on the simulator: convergence under partitions, tombstones beating stale
//! copies, a departed peer's names disappearing.
//!
//! Every test prints its seed; rerun a failure with `WEFT_SIM_SEED=<seed>`.

use std::net::Ipv4Addr;
use std::time::Duration;

use weft_core::rng::Rng;
use weft_sim::{Sim, test_seed};

const CHECK: Duration = Duration::from_millis(250);

fn sim_with_dns(seed: u64) -> Sim {
    let mut sim = Sim::new(seed);
    sim.dns_domain = Some("weave.local.".into());
    sim
}

#[test]
fn names_spread_and_removals_win_over_stale_copies() {
    let mut sim = sim_with_dns(test_seed(40));
    for i in 0..6usize {
        let t: Vec<usize> = if i == 0 { vec![] } else { vec![i - 1] };
        sim.add_node(&t, true);
    }
    let all = sim.all();
    sim.run_until(Duration::from_secs(60), CHECK, |s| s.converged(&all))
        .unwrap();
    sim.dns_add(0, "web.weave.local", "c0", Ipv4Addr::new(10, 32, 0, 1));
    sim.dns_add(5, "web.weave.local", "c5", Ipv4Addr::new(10, 32, 0, 2));
    sim.run_until(Duration::from_secs(30), CHECK, |s| s.dns_converged(&all))
        .unwrap();
    assert_eq!(sim.dns_view(3).len(), 2);
    // h0 is cut off from the others and removes its name there; the others keep a stale copy.
    let rest: Vec<usize> = (1..6).collect();
    sim.partition(&[0], &rest);
    sim.run_for(Duration::from_secs(1));
    assert_eq!(sim.dns_remove(0, "c0"), 1);
    sim.run_for(Duration::from_secs(5));
    assert!(
        sim.dns_view(3).iter().any(|e| e.2 == "c0"),
        "still stale on the far side"
    );
    sim.heal();
    sim.run_until(Duration::from_secs(300), CHECK, |s| {
        s.converged(&all)?;
        s.dns_converged(&all)
    })
    .unwrap();
    assert!(
        sim.dns_view(3).iter().all(|e| e.2 != "c0"),
        "the removal won"
    );
    // A peer that leaves takes its names along.
    sim.crash(5);
    sim.run_until(Duration::from_secs(120), CHECK, |s| {
        s.dns_converged(&[0, 1, 2, 3, 4])
    })
    .unwrap();
    assert!(sim.dns_view(0).is_empty());
}

/// Random adds and removals on random peers under partitions and heals: once the faults stop,
/// every peer knows exactly the names their origins hold.
#[test]
fn random_schedules_converge() {
    let base = test_seed(7000);
    let runs = std::env::var("WEFT_SIM_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20u64);
    for run in 0..runs {
        let seed = base + run;
        let mut rng = Rng::new(seed);
        let mut sim = sim_with_dns(seed);
        sim.link.udp_loss = rng.unit() * 0.05;
        let n = 3 + rng.below(15) as usize;
        for i in 0..n {
            let t: Vec<usize> = if i == 0 {
                vec![]
            } else {
                vec![rng.below(i as u64) as usize]
            };
            sim.add_node(&t, true);
        }
        for _ in 0..40 {
            let i = rng.below(n as u64) as usize;
            match rng.below(8) {
                0..=3 => {
                    let k = rng.below(10);
                    let c = format!("c{}", rng.below(6));
                    let addr = Ipv4Addr::from(0x0a20_0000 + rng.below(64) as u32);
                    sim.dns_add(i, &format!("n{k}.weave.local"), &c, addr);
                }
                4 | 5 => {
                    let c = format!("c{}", rng.below(6));
                    sim.dns_remove(i, &c);
                }
                6 => {
                    let cut = 1 + rng.below(n as u64 - 1) as usize;
                    let (a, b): (Vec<usize>, Vec<usize>) = (0..n).partition(|&x| x < cut);
                    sim.partition(&a, &b);
                }
                _ => sim.heal(),
            }
            sim.run_for(Duration::from_millis(rng.below(5000)));
        }
        sim.heal();
        let all = sim.all();
        sim.run_until(Duration::from_secs(600), CHECK, |s| {
            s.converged(&all)?;
            s.dns_converged(&all)
        })
        .unwrap_or_else(|e| panic!("run {run} (seed {seed}): {e}"));
    }
}
