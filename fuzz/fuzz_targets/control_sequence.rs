//! Stateful: an unencrypted router (IPAM, DNS, fast path) and two peers that passed the
//! hello, sending it a sequence of well-formed control messages built from the input — topology
//! updates, DNS, IP allocation and fast-path gossip (full states, broadcasts, unicasts), full
//! state requests, heartbeat acknowledgements, rekeys — between UDP heartbeats and the passing
//! of time. Names come from a small pool, so messages refer to each other (the same peer,
//! entry or token again) and reach the state machines' deeper paths, not only the decoders.
//!
//! The router must never panic, whatever a peer (who may hold the password) sends.
#![no_main]

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use weft_core::fastdp::FastDpConfig;
use weft_core::ipam::{InitMode, IpamConfig};
use weft_core::mesh::{ConnId, RouterConfig, Timing};
use weft_core::node::Node;
use weft_proto::control::{
    self, Channel, ConnectionSummary, ControlMsg, Hello, OverlayMsg, PeerSummary, TopologyUpdate,
};
use weft_proto::dns::{DnsEntry, DnsUpdate};
use weft_proto::fastdp::{FastDpMsg, MacRecord};
use weft_proto::ipam::{Claims, Entry, IpamMsg, IpamState, NodeId, ProposalId, RingState};
use weft_proto::{Mac, PeerName, sleeve};

const START: u32 = 0x0a20_0000;
const END: u64 = 0x0a30_0000;

fn start() -> Instant {
    static T: OnceLock<Instant> = OnceLock::new();
    *T.get_or_init(Instant::now)
}

fn peer(u: &mut Unstructured) -> Result<PeerName> {
    // Mostly the router (1), its two neighbours (2, 3) and a few others; sometimes anyone.
    Ok(if u.ratio(1, 16)? {
        PeerName::from_u64(u.int_in_range(1..=PeerName::MASK)?)
    } else {
        PeerName::from_u64(u.int_in_range(1..=8)?)
    })
}

fn small_vec<T>(
    u: &mut Unstructured,
    max: usize,
    mut f: impl FnMut(&mut Unstructured) -> Result<T>,
) -> Result<Vec<T>> {
    let n = u.int_in_range(0..=max)?;
    (0..n).map(|_| f(u)).collect()
}

fn topology(u: &mut Unstructured) -> Result<Vec<u8>> {
    let peers = small_vec(u, 4, |u| {
        Ok(PeerSummary {
            name: peer(u)?,
            nickname: "p".into(),
            uid: u.int_in_range(0..=3)?,
            version: u.int_in_range(0..=6)?,
            tcp_port: 6783,
            connections: small_vec(u, 4, |u| {
                Ok(ConnectionSummary {
                    peer: peer(u)?,
                    addr: SocketAddr::from(([198, 18, 0, u.int_in_range(1..=8)?], 6783)),
                    outbound: u.arbitrary()?,
                    established: u.arbitrary()?,
                })
            })?,
        })
    })?;
    Ok(TopologyUpdate { peers }.encode())
}

fn dns(u: &mut Unstructured) -> Result<Vec<u8>> {
    let entries = small_vec(u, 4, |u| {
        Ok(DnsEntry {
            hostname: format!("n{}.weave.local.", u.int_in_range(0..=3)?),
            origin: peer(u)?,
            container: format!("c{}", u.int_in_range(0..=3)?),
            addr: START + u.int_in_range(0..=4)?,
            version: u.int_in_range(0..=4)?,
            tombstone: u.arbitrary()?,
        })
    })?;
    Ok(DnsUpdate { entries }.encode())
}

fn ring(u: &mut Unstructured) -> Result<RingState> {
    let mut tokens: Vec<u32> = small_vec(u, 5, |u| Ok(START + u.int_in_range(0..=4)? * 0x4_0000))?;
    tokens.push(START);
    tokens.sort();
    tokens.dedup();
    Ok(RingState {
        start: START,
        end: if u.ratio(1, 8)? { END + 1 } else { END },
        seeds: small_vec(u, 2, peer)?,
        entries: tokens
            .into_iter()
            .map(|token| {
                Ok(Entry {
                    token,
                    peer: peer(u)?,
                    version: u.int_in_range(0..=3)?,
                    free: u.int_in_range(0..=0x4_0000)?,
                })
            })
            .collect::<Result<_>>()?,
    })
}

fn ipam(u: &mut Unstructured) -> Result<Vec<u8>> {
    let node = |u: &mut Unstructured| -> Result<NodeId> {
        Ok(NodeId {
            name: peer(u)?,
            uid: u.int_in_range(0..=3)?,
        })
    };
    let proposal = |u: &mut Unstructured| -> Result<Option<ProposalId>> {
        Ok(if u.arbitrary()? {
            Some(ProposalId {
                round: u.int_in_range(0..=4)?,
                proposer: node(u)?,
            })
        } else {
            None
        })
    };
    let m = match u.int_in_range(0..=3)? {
        0 => IpamMsg::State(IpamState {
            ring: if u.arbitrary()? { Some(ring(u)?) } else { None },
            paxos: small_vec(u, 3, |u| {
                Ok((
                    node(u)?,
                    Claims {
                        promise: proposal(u)?,
                        accepted: proposal(u)?,
                        value: small_vec(u, 3, peer)?,
                    },
                ))
            })?,
            wants_ring: u.arbitrary()?,
            nicknames: small_vec(u, 2, |u| Ok((peer(u)?, "n".to_string())))?,
        }),
        1 => IpamMsg::RingUpdate(ring(u)?),
        2 => IpamMsg::SpaceRequest {
            start: START + u.int_in_range(0..=0xf_ffff)?,
            end: END - u64::from(u.int_in_range(0..=0xf_ffffu32)?),
        },
        _ => IpamMsg::SpaceDenied {
            start: START,
            end: END,
        },
    };
    Ok(m.encode())
}

fn fastdp(u: &mut Unstructured) -> Result<Vec<u8>> {
    let mac = |u: &mut Unstructured| -> Result<Mac> {
        let last: u8 = u.int_in_range(0..=5)?;
        Ok(Mac([if u.ratio(1, 8)? { 1 } else { 2 }, 0, 0, 0, 0, last]))
    };
    let m = if u.arbitrary()? {
        FastDpMsg::Records(small_vec(u, 3, |u| {
            Ok(MacRecord {
                origin: peer(u)?,
                uid: u.int_in_range(0..=3)?,
                version: u.int_in_range(0..=4)?,
                fastdp: u.arbitrary()?,
                macs: small_vec(u, 3, mac)?,
                neighbours: small_vec(u, 3, |u| {
                    Ok((Ipv4Addr::from(START + u.int_in_range(0..=4)?), mac(u)?))
                })?,
            })
        })?)
    } else {
        FastDpMsg::Rx {
            uid: u.int_in_range(0..=3)?,
            small: u.arbitrary()?,
            big: u.arbitrary()?,
        }
    };
    Ok(m.encode())
}

fn payload(u: &mut Unstructured, channel: Channel) -> Result<Vec<u8>> {
    match channel.0 {
        0 => topology(u),
        1 => ipam(u),
        2 => dns(u),
        3 => fastdp(u),
        _ => {
            let len = u.int_in_range(0..=16)?;
            Ok(u.bytes(len)?.to_vec())
        }
    }
}

fn message(u: &mut Unstructured) -> Result<ControlMsg> {
    let channel = Channel(u.int_in_range(0..=4)?);
    Ok(match u.int_in_range(0..=9)? {
        0 => ControlMsg::Heartbeat,
        1 | 2 => ControlMsg::Gossip {
            channel,
            payload: payload(u, channel)?,
        },
        3 | 4 => ControlMsg::GossipBroadcast {
            channel,
            src: peer(u)?,
            payload: payload(u, channel)?,
        },
        5 => ControlMsg::GossipUnicast {
            channel,
            src: peer(u)?,
            dst: peer(u)?,
            payload: payload(u, channel)?,
        },
        6 => ControlMsg::GossipRequest { channel },
        7 => ControlMsg::Overlay(OverlayMsg::HeartbeatAck {
            conn_uid: u.int_in_range(0..=2)?,
        }),
        8 => {
            let len = u.int_in_range(0..=8)?;
            ControlMsg::Rekey {
                epoch: u.arbitrary()?,
                msg: u.bytes(len)?.to_vec(),
            }
        }
        _ => ControlMsg::Hello(hello(PeerName::from_u64(9), 0)),
    })
}

fn hello(name: PeerName, conn_id: u64) -> Hello {
    Hello {
        name,
        nickname: "neighbour".into(),
        uid: 1,
        conn_id,
        tcp_port: 6783,
        udp_port: 6783,
        trusts_you: false,
    }
}

fn node() -> Node {
    let cfg = RouterConfig {
        name: PeerName::from_u64(1),
        nickname: "fuzz".into(),
        tcp_port: 6783,
        udp_port: 6783,
        conn_limit: 0,
        discovery: true,
        mtu: 1376,
        timing: Timing::default(),
        crypto: None,
        // Small, so full states are cut into several chunks.
        gossip_chunk: 256,
        protocol_max: weft_proto::control::PROTOCOL_MAX,
        full_mesh_peers: weft_core::mesh::FULL_MESH_PEERS,
    };
    let ipam = IpamConfig::new(
        "10.32.0.0/12".parse().unwrap(),
        InitMode::Consensus { quorum: 2 },
    );
    let mut n = Node::new(cfg, Some((ipam, None)), Some("weave.local."), start(), 1).unwrap();
    n.enable_fastdp(start(), FastDpConfig::default());
    n
}

fn drain(n: &mut Node) {
    while n.poll_event().is_some() {}
    while n.poll_action().is_some() {}
}

/// Peers 2 and 3, past the hello on their own connections.
fn neighbours(n: &mut Node, now: Instant) -> Vec<(ConnId, SocketAddr, PeerName)> {
    let mut out = Vec::new();
    for i in 2..=3u8 {
        let remote = SocketAddr::from(([198, 18, 0, i], 40000));
        let Some(conn) = n.handle_accept(now, remote) else {
            continue;
        };
        let name = PeerName::from_u64(u64::from(i));
        n.handle_conn_data(now, conn, &control::encode_header(1, 1, 0));
        n.handle_conn_data(
            now,
            conn,
            &ControlMsg::Hello(hello(name, 0)).encode_framed(),
        );
        drain(n);
        out.push((conn, remote, name));
    }
    out
}

fn run(data: &[u8]) -> Result<()> {
    let mut u = Unstructured::new(data);
    let mut n = node();
    let mut now = start();
    let peers = neighbours(&mut n, now);
    if peers.is_empty() {
        return Ok(());
    }
    while !u.is_empty() {
        let &(conn, remote, name) = u.choose(&peers)?;
        match u.int_in_range(0..=9)? {
            0 => {
                now += Duration::from_millis(u.int_in_range(1..=40_000)?);
                n.handle_timeout(now);
            }
            1 => {
                let uid = u.int_in_range(0..=2)?;
                n.handle_udp(now, remote, &sleeve::encode_heartbeat(name, uid));
            }
            _ => {
                let m = message(&mut u)?;
                n.handle_conn_data(now, conn, &m.encode_framed());
            }
        }
        drain(&mut n);
    }
    n.handle_timeout(now + Duration::from_secs(60));
    drain(&mut n);
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = run(data);
});
