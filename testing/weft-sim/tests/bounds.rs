//! Full states cut into chunks: a mesh whose topology and DNS records are many times the
//! chunk size still reaches a newcomer whole, through chunks only, and no message on the
//! wire is larger than a chunk (plus framing).
//!
//! Every test prints its seed; rerun a failure with `WEFT_SIM_SEED=<seed>`.

use std::net::Ipv4Addr;
use std::time::Duration;

use weft_sim::{Sim, test_seed};

const CHECK: Duration = Duration::from_millis(100);
const CHUNK: usize = 2048;

#[test]
fn a_newcomer_gets_full_states_many_chunks_long() {
    let mut sim = Sim::new(test_seed(91));
    sim.dns_domain = Some("weave.local.".into());
    sim.gossip_chunk = CHUNK;
    for i in 0..30usize {
        let t: Vec<usize> = if i == 0 { vec![] } else { vec![i - 1] };
        sim.add_node(&t, true);
    }
    let old = sim.all();
    sim.run_until(Duration::from_secs(120), CHECK, |s| s.converged(&old))
        .unwrap();
    for i in 0..30usize {
        for c in 0..20u8 {
            sim.dns_add(
                i,
                &format!("service-{i}-{c}.weave.local"),
                &format!("container-{i}-{c}"),
                Ipv4Addr::new(10, 32, i as u8, c + 1),
            );
        }
    }
    sim.run_until(Duration::from_secs(60), CHECK, |s| s.dns_converged(&old))
        .unwrap();
    let topology = sim.nodes[0]
        .router()
        .topology()
        .full_update()
        .encode()
        .len();
    assert!(
        topology > 6 * CHUNK,
        "the topology ({topology} bytes) should need many chunks"
    );

    // The newcomer dials one host and discovers nobody: everything it learns of the other 29
    // comes in that host's chunked full states, well before periodic gossip (30 s) could
    // fill a gap.
    let new = sim.add_node(&[7], false);
    let all = sim.all();
    let took = sim
        .run_until(Duration::from_secs(10), CHECK, |s| {
            s.converged(&all)?;
            s.dns_converged(&all)
        })
        .unwrap();
    assert_eq!(sim.dns_view(new).len(), 600);
    eprintln!(
        "newcomer whole after {took:?}; topology {topology} bytes; largest message {} bytes",
        sim.max_message
    );
    // A chunk plus the control message around it and the frame's length prefix.
    assert!(
        sim.max_message <= CHUNK + 32,
        "a message of {} bytes went out, chunks are {CHUNK}",
        sim.max_message
    );
}

#[test]
fn discovered_targets_stay_within_twice_the_connection_limit() {
    let mut sim = Sim::new(test_seed(92));
    sim.conn_limit = 3;
    for i in 0..16usize {
        let t: Vec<usize> = if i == 0 { vec![] } else { vec![i - 1] };
        sim.add_node(&t, true);
    }
    sim.run_for(Duration::from_secs(60));
    for i in sim.all() {
        let r = sim.nodes[i].router();
        assert_eq!(r.topology().len(), 16, "h{i} knows everyone");
        // One given target at most, and at most 2 × 3 discovered.
        assert!(
            r.target_count() <= 1 + 6,
            "h{i} keeps {} targets",
            r.target_count()
        );
    }
}
