//! Encryption on the simulator: the real handshake, control cipher, data keys, rekeying and
//! password rotation, over a lossy network of many hosts.
//!
//! Every test prints its seed; rerun a failure with `WEFT_SIM_SEED=<seed>`.

use std::collections::BTreeMap;
use std::time::Duration;

use weft_core::mesh::ConnectionState;
use weft_core::rng::Rng;
use weft_sim::{Sim, test_seed};

const CHECK: Duration = Duration::from_millis(250);
const MARKER: &[u8] = b"marker-b4c1e0";

fn mac(i: usize) -> [u8; 6] {
    [2, 0xcc, 0, 0, (i >> 8) as u8, i as u8]
}

/// A frame whose payload carries the marker and a sequence number.
fn frame(dst: [u8; 6], src: [u8; 6], seq: u32) -> Vec<u8> {
    let mut f = vec![0u8; 14];
    f[0..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&src);
    f.extend_from_slice(MARKER);
    f.extend_from_slice(&seq.to_be_bytes());
    f
}

fn seq_of(f: &[u8]) -> u32 {
    u32::from_be_bytes(f[f.len() - 4..].try_into().unwrap())
}

fn random_graph(sim: &mut Sim, rng: &mut Rng, n: usize) {
    for i in 0..n {
        let targets: Vec<usize> = if i == 0 {
            vec![]
        } else {
            (0..2).map(|_| rng.below(i as u64) as usize).collect()
        };
        sim.add_node(&targets, false);
    }
}

/// 100 hosts sharing a password over a lossy network converge; floods reach everyone exactly
/// once; nothing readable crosses the wire, neither frames nor control traffic (DNS names).
#[test]
fn encrypted_mesh_of_100_converges_and_carries_frames_privately() {
    let seed = test_seed(50);
    let mut sim = Sim::new(seed);
    let mut rng = Rng::new(seed);
    sim.password = Some("correct horse".into());
    sim.dns_domain = Some("weave.local.".into());
    sim.link.udp_loss = 0.02;
    sim.watch_wire(MARKER);
    random_graph(&mut sim, &mut rng, 100);
    let all = sim.all();
    let took = sim
        .run_until(Duration::from_secs(180), CHECK, |s| s.converged(&all))
        .unwrap();
    eprintln!("100 encrypted hosts converged in {took:?} virtual");
    sim.link.udp_loss = 0.0;
    let name = format!("{}.weave.local.", std::str::from_utf8(MARKER).unwrap());
    sim.dns_add(7, &name, "c7", "10.32.0.7".parse().unwrap());
    for src in [0usize, 42, 99] {
        sim.send_frame(src, &frame([0xff; 6], mac(src), src as u32));
    }
    sim.run_for(Duration::from_secs(5));
    for (i, n) in sim.nodes.iter().enumerate() {
        let mut per_src: BTreeMap<u32, usize> = BTreeMap::new();
        for f in &n.injected {
            *per_src.entry(seq_of(f)).or_default() += 1;
        }
        for src in [0u32, 42, 99] {
            let want = usize::from(src as usize != i);
            assert_eq!(
                per_src.get(&src).copied().unwrap_or(0),
                want,
                "h{i} from h{src}"
            );
        }
    }
    assert!(sim.dns_converged(&all).is_ok(), "the DNS record spread");
    assert_eq!(
        sim.wire_hits, 0,
        "the marker never crossed the wire in clear"
    );
    let now = sim.now();
    let st = sim.nodes[0].node.status(now);
    assert!(st.encryption);
    assert!(
        st.connections
            .iter()
            .filter(|c| c.state == ConnectionState::Established)
            .all(|c| c.encrypted == Some(true))
    );
}

/// The same run without a password shows the marker on the wire: the check above has teeth.
#[test]
fn unencrypted_mesh_shows_the_marker() {
    let mut sim = Sim::new(test_seed(51));
    sim.dns_domain = Some("weave.local.".into());
    sim.watch_wire(MARKER);
    sim.add_node(&[], false);
    sim.add_node(&[0], false);
    let all = sim.all();
    sim.run_until(Duration::from_secs(30), CHECK, |s| s.converged(&all))
        .unwrap();
    let name = format!("{}.weave.local.", std::str::from_utf8(MARKER).unwrap());
    sim.dns_add(0, &name, "c0", "10.32.0.7".parse().unwrap());
    sim.run_for(Duration::from_secs(1));
    assert!(sim.wire_hits > 0, "control traffic is readable");
    sim.watch_wire(MARKER);
    sim.send_frame(0, &frame([0xff; 6], mac(0), 1));
    sim.run_for(Duration::from_secs(1));
    assert_eq!(sim.nodes[1].injected.len(), 1);
    assert!(sim.wire_hits > 0);
}

fn failures(sim: &mut Sim, i: usize) -> Vec<String> {
    let now = sim.now();
    sim.nodes[i]
        .node
        .status(now)
        .connections
        .into_iter()
        .filter(|c| c.state != ConnectionState::Established)
        .filter_map(|c| c.error)
        .collect()
}

/// A host with the wrong password never joins; both sides say why.
#[test]
fn wrong_password_never_connects_and_both_sides_say_why() {
    let mut sim = Sim::new(test_seed(52));
    sim.password = Some("right".into());
    sim.add_node(&[], false);
    sim.add_node(&[0], false);
    sim.password = Some("wrong".into());
    sim.add_node(&[0, 1], false);
    sim.run_for(Duration::from_secs(60));
    assert!(sim.converged(&[0, 1]).is_ok());
    assert_eq!(sim.nodes[2].router().connected_peers().count(), 0);
    for i in [0, 1] {
        assert!(
            sim.nodes[i]
                .router()
                .connected_peers()
                .all(|p| *p != sim.name_of(2)),
            "h{i} never connects to h2"
        );
        let f = failures(&mut sim, i);
        assert!(
            f.iter().any(|e| e.contains("authentication failed")),
            "h{i} reports the failed inbound attempt: {f:?}"
        );
    }
    let f = failures(&mut sim, 2);
    assert!(
        f.iter()
            .filter(|e| e.contains("authentication failed"))
            .count()
            == 2,
        "h2 reports both refusals: {f:?}"
    );
    // The topology never mentions h2 on the others.
    let now = sim.now();
    let st = sim.nodes[0].node.status(now);
    assert!(st.peers.iter().all(|p| p.name != sim.name_of(2)));
}

/// An unencrypted host and an encrypted one refuse each other with a clear reason.
#[test]
fn mixed_encrypted_and_plain_peers_refuse_each_other() {
    let mut sim = Sim::new(test_seed(53));
    sim.password = Some("pw".into());
    sim.add_node(&[], false);
    sim.password = None;
    sim.add_node(&[0], false);
    sim.run_for(Duration::from_secs(20));
    assert_eq!(sim.nodes[0].router().connected_peers().count(), 0);
    let f = failures(&mut sim, 1);
    assert!(
        f.iter().any(|e| e.contains("password")),
        "the plain host is told a password is needed: {f:?}"
    );
}

/// Steady traffic between two ends of a three-host line across ten minutes: five rekeys on
/// each link, reordering on the wire, and not one frame lost.
#[test]
fn rekeying_loses_no_traffic() {
    let mut sim = Sim::new(test_seed(54));
    sim.password = Some("pw".into());
    sim.add_node(&[], false);
    sim.add_node(&[0], false);
    sim.add_node(&[1], false);
    let all = sim.all();
    sim.run_until(Duration::from_secs(30), CHECK, |s| s.converged(&all))
        .unwrap();
    // Teach both ends each other's MAC, then send unicast both ways every 20 ms.
    sim.send_frame(0, &frame([0xff; 6], mac(0), 0));
    sim.send_frame(2, &frame([0xff; 6], mac(2), 0));
    sim.run_for(Duration::from_secs(1));
    for n in sim.nodes.iter_mut() {
        n.injected.clear();
    }
    let sent = 30_000u32;
    for seq in 1..=sent {
        sim.send_frame(0, &frame(mac(2), mac(0), seq));
        sim.send_frame(2, &frame(mac(0), mac(2), seq));
        sim.run_for(Duration::from_millis(20));
    }
    sim.run_for(Duration::from_secs(1));
    for i in [0, 2] {
        let got: Vec<u32> = sim.nodes[i].injected.iter().map(|f| seq_of(f)).collect();
        assert_eq!(got.len(), sent as usize, "h{i} received every frame");
    }
    let now = sim.now();
    let st = sim.nodes[1].node.status(now);
    for c in &st.connections {
        assert!(c.key_epoch.unwrap_or(0) >= 4, "rekeyed: {c:?}");
    }
    let s = sim.nodes[1].forwarder.stats();
    assert_eq!(
        (s.dropped_no_key, s.dropped_auth, s.dropped_replay),
        (0, 0, 0)
    );
}

/// Each connection picks its data cipher from both ends' headers: AES-256-GCM only between
/// routers that both offer it and speak version 4; ChaCha20-Poly1305 with a router that does
/// not offer it (no AES instructions) or an older release. Frames cross every pairing, and
/// a relay re-seals each hop with that hop's cipher.
#[test]
fn each_connection_chooses_its_cipher_and_mixed_meshes_carry_frames() {
    use weft_core::crypto::DataCipher;
    let mut sim = Sim::new(test_seed(58));
    sim.password = Some("pw".into());
    // 0 and 1: current, with AES; 2: current, without; 3: the previous release.
    sim.add_node(&[], false);
    sim.add_node(&[0], false);
    sim.offer_aes_gcm = false;
    sim.add_node(&[0, 1], false);
    sim.offer_aes_gcm = true;
    sim.protocol_max = weft_proto::control::VERSION_BOUND_HEADERS - 1;
    sim.add_node(&[0, 1, 2], false);
    let all = sim.all();
    sim.run_until(Duration::from_secs(30), CHECK, |s| s.converged(&all))
        .unwrap();
    let now = sim.now();
    for i in 0..4 {
        let st = sim.nodes[i].node.status(now);
        let mut seen = 0;
        for c in st
            .connections
            .iter()
            .filter(|c| c.state == ConnectionState::Established)
        {
            let (peer, _) = c.peer.clone().unwrap();
            let j = (0..4).find(|&j| sim.name_of(j) == peer).unwrap();
            let want = if i.max(j) <= 1 {
                DataCipher::Aes256Gcm
            } else {
                DataCipher::ChaCha20Poly1305
            };
            assert_eq!(c.cipher, Some(want.name()), "h{i} to h{j}");
            seen += 1;
        }
        assert_eq!(seen, 3, "h{i} connects to every other");
    }
    for src in 0..4 {
        sim.send_frame(src, &frame([0xff; 6], mac(src), src as u32));
    }
    sim.run_for(Duration::from_secs(2));
    for (i, n) in sim.nodes.iter().enumerate() {
        let mut got: Vec<u32> = n.injected.iter().map(|f| seq_of(f)).collect();
        got.sort_unstable();
        let want: Vec<u32> = (0..4u32).filter(|&s| s as usize != i).collect();
        assert_eq!(got, want, "h{i} got each flood once");
        let s = n.forwarder.stats();
        assert_eq!((s.dropped_auth, s.dropped_no_key), (0, 0), "h{i}");
    }
}

/// Moving three hosts from one password to another, one host at a time, with traffic flowing
/// the whole time: accept both, dial with the new one, drop the old one. No frame is lost, the
/// old password then no longer lets anyone in, and the new one does.
#[test]
fn rolling_password_change_loses_nothing() {
    let mut sim = Sim::new(test_seed(55));
    sim.password = Some("old".into());
    sim.add_node(&[], false);
    sim.add_node(&[0], false);
    sim.add_node(&[0, 1], false);
    let all = sim.all();
    sim.run_until(Duration::from_secs(30), CHECK, |s| s.converged(&all))
        .unwrap();
    for i in 0..3 {
        sim.send_frame(i, &frame([0xff; 6], mac(i), 0));
    }
    sim.run_for(Duration::from_secs(1));
    for n in sim.nodes.iter_mut() {
        n.injected.clear();
    }
    let steps: [(usize, &[&str]); 9] = [
        (0, &["old", "new"]),
        (1, &["old", "new"]),
        (2, &["old", "new"]),
        (0, &["new", "old"]),
        (1, &["new", "old"]),
        (2, &["new", "old"]),
        (0, &["new"]),
        (1, &["new"]),
        (2, &["new"]),
    ];
    let mut seq = 0u32;
    for (host, pw) in steps {
        sim.set_passwords(host, pw);
        // A minute per step (spanning rekeys), traffic every 50 ms around the triangle.
        for _ in 0..1200 {
            seq += 1;
            sim.send_frame(0, &frame(mac(1), mac(0), seq));
            sim.send_frame(1, &frame(mac(2), mac(1), seq));
            sim.send_frame(2, &frame(mac(0), mac(2), seq));
            sim.run_for(Duration::from_millis(50));
        }
    }
    sim.run_for(Duration::from_secs(1));
    for i in 0..3 {
        assert_eq!(
            sim.nodes[i].injected.len(),
            seq as usize,
            "h{i} lost frames"
        );
    }
    assert!(sim.converged(&all).is_ok(), "still one mesh");
    // The old password no longer gets in; the new one does.
    sim.password = Some("old".into());
    let late_old = sim.add_node(&[0], false);
    sim.password = Some("new".into());
    let late_new = sim.add_node(&[1], false);
    sim.run_for(Duration::from_secs(30));
    assert_eq!(sim.nodes[late_old].router().connected_peers().count(), 0);
    assert!(sim.converged(&[0, 1, 2, late_new]).is_ok());
}

/// A connection authenticated with a password that is later dropped must prove a current one
/// at its next rekey: a host left on the old password alone is cut off.
#[test]
fn dropped_password_stops_old_connections_at_the_next_rekey() {
    let mut sim = Sim::new(test_seed(56));
    sim.password = Some("old".into());
    sim.add_node(&[], false);
    sim.add_node(&[0], false);
    sim.add_node(&[0, 1], false);
    let all = sim.all();
    sim.run_until(Duration::from_secs(30), CHECK, |s| s.converged(&all))
        .unwrap();
    // h0 and h1 move to "new"; h2 never learns it.
    for i in [0, 1] {
        sim.set_passwords(i, &["new", "old"]);
    }
    for i in [0, 1] {
        sim.set_passwords(i, &["new"]);
    }
    sim.run_for(Duration::from_secs(200));
    assert!(sim.converged(&[0, 1]).is_ok());
    assert_eq!(sim.nodes[2].router().connected_peers().count(), 0);
    let f = failures(&mut sim, 2);
    assert!(
        f.iter().any(|e| e.contains("authentication failed")),
        "{f:?}"
    );
}

#[test]
fn encrypted_runs_are_deterministic() {
    let run = |seed| {
        let mut sim = Sim::new(seed);
        sim.password = Some("pw".into());
        sim.link.udp_loss = 0.1;
        for i in 0..8 {
            let t: Vec<usize> = if i == 0 { vec![] } else { vec![i - 1] };
            sim.add_node(&t, true);
        }
        sim.run_for(Duration::from_secs(150));
        sim.crash(3);
        sim.run_for(Duration::from_secs(40));
        sim.restart(3);
        sim.run_for(Duration::from_secs(40));
        (sim.trace_hash, sim.steps)
    };
    let seed = test_seed(57);
    assert_eq!(run(seed), run(seed));
}
