//! Payloads of the IPAM gossip channel.
//!
//! The address range is a ring of tokens: entry `i` owns `[token_i, token_{i+1})` (the last one
//! up to the range's end). Entries are owned and versioned by their peer; see
//! `weft_core::ipam::ring` for the merge rules. Addresses are host-order `u32`; the range end
//! is a `u64` so that it can be 2^32.

use serde::{Deserialize, Serialize};

use crate::{DecodeError, PeerName};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub token: u32,
    pub peer: PeerName,
    pub version: u32,
    /// The owner's count of free addresses in this entry's range (a hint for donors).
    pub free: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RingState {
    pub start: u32,
    pub end: u64,
    /// The peers the ring was created for, sorted: together with the range this is the ring's
    /// identity. Rings with different identities never merge.
    pub seeds: Vec<PeerName>,
    pub entries: Vec<Entry>,
}

/// A Paxos node: a peer in one run (a restarted router is a new node).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NodeId {
    pub name: PeerName,
    pub uid: u64,
}

/// Ordered by round, then proposer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ProposalId {
    pub round: u64,
    pub proposer: NodeId,
}

/// One node's Paxos state, written only by that node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub promise: Option<ProposalId>,
    pub accepted: Option<ProposalId>,
    /// The value that came with `accepted`: the peers to seed the ring with.
    pub value: Vec<PeerName>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpamState {
    pub ring: Option<RingState>,
    /// Only while there is no ring yet.
    pub paxos: Vec<(NodeId, Claims)>,
    /// The sender has requests waiting for a ring (observers use this to wake electors).
    pub wants_ring: bool,
    pub nicknames: Vec<(PeerName, String)>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum IpamMsg {
    /// Broadcast on change, and the full state to neighbours periodically.
    State(IpamState),
    /// "Please give me some free space in `[start, end)`."
    SpaceRequest { start: u32, end: u64 },
    /// "I have nothing free there."
    SpaceDenied { start: u32, end: u64 },
    /// The donor's ring right after a donation to the receiver.
    RingUpdate(RingState),
}

impl IpamMsg {
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_extend(self, Vec::new()).expect("postcard encoding of IpamMsg")
    }

    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        postcard::from_bytes(b).map_err(|e| DecodeError::Malformed {
            what: "IPAM message",
            detail: e.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trip() {
        let m = IpamMsg::State(IpamState {
            ring: Some(RingState {
                start: 0x0a20_0000,
                end: 0x0a30_0000,
                seeds: vec![PeerName::from_u64(1)],
                entries: vec![Entry {
                    token: 0x0a20_0000,
                    peer: PeerName::from_u64(1),
                    version: 3,
                    free: 1 << 20,
                }],
            }),
            paxos: vec![],
            wants_ring: false,
            nicknames: vec![(PeerName::from_u64(1), "host1".into())],
        });
        assert_eq!(IpamMsg::decode(&m.encode()).unwrap(), m);
    }

    proptest! {
        #[test]
        fn decode_never_panics(b in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = IpamMsg::decode(&b);
        }
    }
}

/// What a peer keeps on disk of its IPAM state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Persisted {
    /// The peer this state belongs to.
    pub name: PeerName,
    pub start: u32,
    pub end: u64,
    pub ring: Option<RingState>,
    /// Allocations: ident → (address, prefix length).
    pub owned: Vec<(String, Vec<(u32, u8)>)>,
}
