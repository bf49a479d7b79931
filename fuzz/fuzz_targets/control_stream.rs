//! A stranger's TCP stream into a router, before and after authentication matters:
//! - mode 0: an encrypted router; a valid header, then arbitrary handshake frames;
//! - mode 1: an encrypted router; arbitrary bytes from the first byte;
//! - mode 2: an unencrypted router with IPAM and DNS; a valid header and Hello, then arbitrary
//!   control messages (gossip payloads for every channel included), each length-prefixed by
//!   one byte of the input.
//!
//! The router must drop bad input and close the connection, never panic.
#![no_main]

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use weft_core::crypto::{self, SeededEntropy};
use weft_core::ipam::{InitMode, IpamConfig};
use weft_core::mesh::{CryptoSettings, RouterConfig, Timing};
use weft_core::node::Node;
use weft_proto::PeerName;
use weft_proto::control::{self, ControlMsg, Hello};

fn start() -> Instant {
    static T: OnceLock<Instant> = OnceLock::new();
    *T.get_or_init(Instant::now)
}

fn crypto_settings() -> CryptoSettings {
    static PSK: OnceLock<crypto::Secret> = OnceLock::new();
    let psk = PSK
        .get_or_init(|| crypto::derive_psk_with(b"fuzz", 64, 1))
        .clone();
    let e = SeededEntropy::new(7);
    CryptoSettings {
        static_key: crypto::generate_static_key(&e).0,
        psks: vec![psk],
        trusted: Vec::new(),
        rekey_interval: crypto::REKEY_INTERVAL,
        offer_aes_gcm: true,
        entropy: e,
    }
}

fn node(encrypted: bool) -> Node {
    let cfg = RouterConfig {
        name: PeerName::from_u64(1),
        nickname: "fuzz".into(),
        tcp_port: 6783,
        udp_port: 6783,
        conn_limit: 0,
        discovery: true,
        mtu: 1376,
        timing: Timing::default(),
        crypto: encrypted.then(crypto_settings),
        gossip_chunk: weft_proto::MAX_GOSSIP_CHUNK,
        protocol_max: weft_proto::control::PROTOCOL_MAX,
        full_mesh_peers: weft_core::mesh::FULL_MESH_PEERS,
    };
    let ipam = (!encrypted).then(|| {
        (
            IpamConfig::new(
                "10.32.0.0/12".parse().unwrap(),
                InitMode::Consensus { quorum: 1 },
            ),
            None,
        )
    });
    let dns = (!encrypted).then_some("weave.local.");
    Node::new(cfg, ipam, dns, start(), 1).unwrap()
}

fn drain(n: &mut Node) {
    while n.poll_event().is_some() {}
    while n.poll_action().is_some() {}
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let remote: SocketAddr = "198.18.0.9:40000".parse().unwrap();
    match mode % 3 {
        0 | 1 => {
            let mut n = node(true);
            let Some(conn) = n.handle_accept(start(), remote) else {
                return;
            };
            if mode % 3 == 0 {
                let h = control::encode_header(1, 1, control::FLAG_ENCRYPTED);
                n.handle_conn_data(start(), conn, &h);
            }
            for chunk in rest.chunks(97) {
                n.handle_conn_data(start(), conn, chunk);
                drain(&mut n);
            }
            n.handle_timeout(start() + Duration::from_secs(60));
            drain(&mut n);
        }
        _ => {
            let mut n = node(false);
            let Some(conn) = n.handle_accept(start(), remote) else {
                return;
            };
            n.handle_conn_data(start(), conn, &control::encode_header(1, 1, 0));
            let hello = ControlMsg::Hello(Hello {
                name: PeerName::from_u64(2),
                nickname: "stranger".into(),
                uid: 5,
                conn_id: 6,
                tcp_port: 6783,
                udp_port: 6783,
                trusts_you: false,
            });
            n.handle_conn_data(start(), conn, &hello.encode_framed());
            drain(&mut n);
            let mut rest = rest;
            while let Some((&len, tail)) = rest.split_first() {
                let len = usize::from(len).min(tail.len());
                let (body, tail) = tail.split_at(len);
                n.handle_conn_data(start(), conn, &control::frame(body));
                drain(&mut n);
                rest = tail;
            }
            n.handle_timeout(start() + Duration::from_secs(5));
            drain(&mut n);
        }
    }
});
