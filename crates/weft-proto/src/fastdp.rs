//! The fast path's wire formats: the gossip channel that tells peers which container MACs live
//! where (so kernels can be programmed without learning), the per-neighbour reports of which
//! VXLAN heartbeats arrive, and the heartbeat frames themselves.
//!
//! Heartbeats are Ethernet frames carried by the kernel's VXLAN device, from the sender's
//! heartbeat port to the receiver's:
//!
//! ```text
//! | dst hb MAC (6) | src hb MAC (6) | 0x88b5 | "weftfdp1" (8) | sender (6) | seq (8, BE) | padding |
//! ```
//!
//! Each round sends a small one and one as large as the overlay MTU allows, so a path that
//! drops large VXLAN packets (a path-MTU problem) is told apart from one that drops all of them.

use serde::{Deserialize, Serialize};

use crate::ether::ETHER_HEADER_LEN;
use crate::{DecodeError, Mac, PeerName};

/// EtherType for local experimental use (IEEE 802): never a container protocol.
pub const HEARTBEAT_ETHERTYPE: u16 = 0x88b5;
const MAGIC: &[u8; 8] = b"weftfdp1";
/// Length of a small heartbeat frame (Ethernet header included).
pub const HEARTBEAT_MIN_LEN: usize = ETHER_HEADER_LEN + 8 + 6 + 8;
/// Most container MACs one peer advertises; more are ignored (and logged by the sender).
pub const MAX_MACS: usize = 4096;

/// The heartbeat-port MAC of a peer: derived from its name so nobody needs to be told it.
/// Locally administered, unicast, and different from the peer's bridge MAC (its name).
pub fn heartbeat_mac(peer: PeerName) -> Mac {
    let b = peer.to_bytes();
    Mac([
        ((b[0] ^ 0x5a) & 0xfe) | 0x02,
        b[1] ^ 0x3c,
        b[2],
        b[3],
        b[4],
        b[5] ^ 0xa5,
    ])
}

/// A heartbeat frame of `len` bytes (at least [`HEARTBEAT_MIN_LEN`]).
pub fn encode_heartbeat(from: PeerName, to: PeerName, seq: u64, len: usize) -> Vec<u8> {
    let len = len.max(HEARTBEAT_MIN_LEN);
    let mut f = Vec::with_capacity(len);
    f.extend_from_slice(&heartbeat_mac(to).0);
    f.extend_from_slice(&heartbeat_mac(from).0);
    f.extend_from_slice(&HEARTBEAT_ETHERTYPE.to_be_bytes());
    f.extend_from_slice(MAGIC);
    f.extend_from_slice(&from.to_bytes());
    f.extend_from_slice(&seq.to_be_bytes());
    f.resize(len, 0);
    f
}

/// A received heartbeat: who sent it and its sequence number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Heartbeat {
    pub sender: PeerName,
    pub seq: u64,
}

pub fn decode_heartbeat(f: &[u8]) -> Result<Heartbeat, DecodeError> {
    if f.len() < HEARTBEAT_MIN_LEN {
        return Err(DecodeError::Truncated {
            what: "fast-path heartbeat",
            need: HEARTBEAT_MIN_LEN,
            have: f.len(),
        });
    }
    let e = ETHER_HEADER_LEN;
    if f[12..14] != HEARTBEAT_ETHERTYPE.to_be_bytes() || &f[e..e + 8] != MAGIC {
        return Err(DecodeError::Malformed {
            what: "fast-path heartbeat",
            detail: "not a weft heartbeat".into(),
        });
    }
    let sender = PeerName::from_bytes(f[e + 8..e + 14].try_into().expect("length checked"));
    if f[6..12] != heartbeat_mac(sender).0 {
        return Err(DecodeError::Malformed {
            what: "fast-path heartbeat",
            detail: "source address does not match the sender".into(),
        });
    }
    let seq = u64::from_be_bytes(f[e + 14..e + 22].try_into().expect("length checked"));
    Ok(Heartbeat { sender, seq })
}

/// What one peer says about itself on the fast-path channel. The newest (by `version`) record
/// of the peer's current incarnation (`uid`) wins.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MacRecord {
    pub origin: PeerName,
    pub uid: u64,
    pub version: u64,
    /// The origin runs a fast path (no `--no-fastdp`).
    pub fastdp: bool,
    /// Container MACs on the origin's bridge, sorted.
    pub macs: Vec<Mac>,
    /// The origin's containers' IPv4 addresses with their MACs, sorted: peers answer ARP for
    /// them on their own bridges instead of flooding the request over VXLAN.
    pub neighbours: Vec<(std::net::Ipv4Addr, Mac)>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FastDpMsg {
    /// Gossip and broadcast: peers' records.
    Records(Vec<MacRecord>),
    /// Unicast to a neighbour: which of its heartbeats reach us, as of now. Sent when it
    /// changes and repeated periodically.
    Rx {
        /// The neighbour's incarnation the report is about.
        uid: u64,
        small: bool,
        big: bool,
    },
}

impl FastDpMsg {
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_extend(self, Vec::new()).expect("postcard encoding of FastDpMsg")
    }

    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        postcard::from_bytes(b).map_err(|e| DecodeError::Malformed {
            what: "fast-path message",
            detail: e.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn heartbeat_round_trip() {
        let a = PeerName::from_u64(0xaa00_0000_0001);
        let b = PeerName::from_u64(0xaa00_0000_0002);
        let f = encode_heartbeat(a, b, 7, 1400);
        assert_eq!(f.len(), 1400);
        assert_eq!(f[..6], heartbeat_mac(b).0);
        assert_eq!(decode_heartbeat(&f), Ok(Heartbeat { sender: a, seq: 7 }));
        let small = encode_heartbeat(a, b, 8, 0);
        assert_eq!(small.len(), HEARTBEAT_MIN_LEN);
        assert!(decode_heartbeat(&small[..small.len() - 1]).is_err());
        let mut forged = f.clone();
        forged[6] ^= 0x04;
        assert!(decode_heartbeat(&forged).is_err());
    }

    #[test]
    fn heartbeat_mac_is_local_unicast_and_not_the_name() {
        for n in [
            0u64,
            1,
            0xffff_ffff_ffff,
            0x5a00_0000_0000,
            0x0200_0000_0000,
        ] {
            let p = PeerName::from_u64(n);
            let m = heartbeat_mac(p);
            assert!(!m.is_multicast());
            assert_eq!(m.0[0] & 0x02, 0x02);
            assert_ne!(m.0, p.to_bytes());
        }
    }

    #[test]
    fn msg_round_trip() {
        let m = FastDpMsg::Records(vec![MacRecord {
            origin: PeerName::from_u64(5),
            uid: 9,
            version: 3,
            fastdp: true,
            macs: vec![Mac([2, 0, 0, 0, 0, 1])],
            neighbours: vec![("10.32.0.1".parse().unwrap(), Mac([2, 0, 0, 0, 0, 1]))],
        }]);
        assert_eq!(FastDpMsg::decode(&m.encode()), Ok(m));
        let r = FastDpMsg::Rx {
            uid: 1,
            small: true,
            big: false,
        };
        assert_eq!(FastDpMsg::decode(&r.encode()), Ok(r));
    }

    proptest! {
        #[test]
        fn decoders_never_panic(b in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = FastDpMsg::decode(&b);
            let _ = decode_heartbeat(&b);
        }
    }
}
