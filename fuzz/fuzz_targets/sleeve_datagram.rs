//! The sleeve forwarder on arbitrary datagrams from a neighbour it shares keys with, and from
//! strangers: plain frames, heartbeats and encrypted datagrams (whose header is clear and
//! whose body must fail authentication without harm).
#![no_main]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use weft_core::crypto::{DataCipher, PeerKeys, Secret};
use weft_core::mesh::DataPlaneTable;
use weft_core::mesh::routes::BroadcastTrees;
use weft_core::overlay::{Forwarder, Output};
use weft_proto::PeerName;

struct Sink;

impl Output for Sink {
    fn send(&mut self, _: SocketAddr, _: &[&[u8]]) {}
    fn inject(&mut self, _: &[u8]) {}
    fn to_control(&mut self, _: SocketAddr, _: &[u8]) {}
}

fn start() -> Instant {
    static T: OnceLock<Instant> = OnceLock::new();
    *T.get_or_init(Instant::now)
}

fn forwarder() -> Forwarder {
    let pn = PeerName::from_u64;
    let addr: SocketAddr = "198.18.0.2:6783".parse().unwrap();
    let mut f = Forwarder::new(pn(1));
    f.set_table(Arc::new(DataPlaneTable {
        local: pn(1),
        unicast: BTreeMap::from([(pn(2), pn(2)), (pn(3), pn(3))]),
        broadcast: BroadcastTrees::fixed(BTreeMap::from([
            (pn(1), vec![pn(2), pn(3)]),
            (pn(2), vec![pn(3)]),
        ])),
        neighbours: BTreeMap::from([(pn(2), addr), (pn(3), addr)]),
        relay_children: [pn(2)].into(),
    }));
    f.set_fast([pn(2)].into());
    // Peer 2 encrypts (epochs 0 and 1), peer 3 is a trusted plaintext neighbour.
    let k = |b| Arc::new(Secret::new([b; 32]));
    f.set_keys(
        pn(2),
        &PeerKeys {
            send: Some((1, k(1))),
            recv: vec![(0, k(2)), (1, k(3))],
            cipher: DataCipher::Aes256Gcm,
        },
    );
    f
}

fuzz_target!(|data: &[u8]| {
    let mut f = forwarder();
    let from: SocketAddr = "198.18.0.2:6783".parse().unwrap();
    let mut d = data.to_vec();
    f.handle_datagram(start(), from, &mut d, &mut Sink);
    // And the same bytes as a local frame, and as a heartbeat to send.
    f.handle_local_frame(start(), data, &mut Sink);
    if let Some((h, rest)) = data.split_first_chunk::<10>() {
        f.handle_local_gso(start(), &weft_proto::offload::Gso(*h), rest, &mut Sink);
    }
    f.send_control(from, PeerName::from_u64(2), data, &mut Sink);
});
