//! The TCP control connection's wire format.
//!
//! A connection opens with a fixed 7-byte header from each side (`b"weft"`, min version, max
//! version, flags); the negotiated version is the highest both support, and both must agree on
//! encryption ([`FLAG_ENCRYPTED`]). After that every message is a 4-byte big-endian length
//! followed by that many bytes: with encryption, first the Noise handshake messages (a type
//! byte, [`HANDSHAKE_MSG`] or [`HANDSHAKE_ERROR`], then the payload), then encrypted
//! postcard-encoded [`ControlMsg`]s; without, the postcard bytes directly. The first message
//! each way is [`ControlMsg::Hello`].
//!
//! postcard is not self-describing: field order is the format. Changes to these types must bump
//! [`PROTOCOL_MAX`] (and keep decoding the older version) or only append enum variants.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::{DecodeError, PeerName};

pub const MAGIC: &[u8; 4] = b"weft";
pub const HEADER_LEN: usize = 7;
/// Header flag: this side requires an encrypted (password) connection.
pub const FLAG_ENCRYPTED: u8 = 1;
/// Header flag (version 4 on): this side seals data with AES-256-GCM fast (its CPU has AES
/// instructions). Data is sealed with AES-256-GCM when both headers carry it, else with
/// ChaCha20-Poly1305.
pub const FLAG_AES_GCM: u8 = 2;
/// Handshake frame types.
pub const HANDSHAKE_MSG: u8 = 0;
pub const HANDSHAKE_ERROR: u8 = 1;
pub const PROTOCOL_MIN: u8 = 1;
/// 2: topology by versions and digests ([`ControlMsg::TopologyVersions`],
/// [`ControlMsg::TopologyDigest`]) rather than full states on every connection and tick, and
/// digests of the other channels' states ([`ControlMsg::StateDigest`]); connections the user
/// asked for marked [`ControlMsg::Pinned`].
/// 3: what the topology broadcast tree missed repaired at once ([`ControlMsg::TopologyHave`]).
/// 4: both headers are bound into the encryption handshake (so a header changed in transit
/// fails it), and the data cipher is chosen by [`FLAG_AES_GCM`].
pub const PROTOCOL_MAX: u8 = 4;
/// The first version whose handshake binds the headers and whose headers choose the cipher.
pub const VERSION_BOUND_HEADERS: u8 = 4;
/// Largest control message accepted. A full topology of 1000 peers with 200 connections each
/// is about 6 MB in postcard; anything larger is hostile or broken.
pub const MAX_FRAME_LEN: usize = 16 * 1024 * 1024;

/// The protocol header each side sends before anything else.
pub fn encode_header(min: u8, max: u8, flags: u8) -> [u8; HEADER_LEN] {
    [MAGIC[0], MAGIC[1], MAGIC[2], MAGIC[3], min, max, flags]
}

/// The flags of a header (ours or the remote's).
pub fn header_flags(header: &[u8; HEADER_LEN]) -> u8 {
    header[6]
}

/// A length-prefixed frame around `body`.
pub fn frame(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(body);
    out
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HeaderError {
    #[error("remote protocol header not recognised")]
    BadMagic,
    #[error(
        "remote version range [{remote_min},{remote_max}] is incompatible with ours [{our_min},{our_max}]"
    )]
    Incompatible {
        remote_min: u8,
        remote_max: u8,
        our_min: u8,
        our_max: u8,
    },
}

/// Checks the remote header and returns the version both sides will speak and the remote's
/// flags.
pub fn negotiate(
    header: &[u8; HEADER_LEN],
    our_min: u8,
    our_max: u8,
) -> Result<(u8, u8), HeaderError> {
    if &header[0..4] != MAGIC {
        return Err(HeaderError::BadMagic);
    }
    let (remote_min, remote_max) = (header[4], header[5]);
    let version = our_max.min(remote_max);
    if remote_min > remote_max || version < our_min.max(remote_min) {
        return Err(HeaderError::Incompatible {
            remote_min,
            remote_max,
            our_min,
            our_max,
        });
    }
    Ok((version, header_flags(header)))
}

/// A gossip channel. Each channel carries its own payload format; unknown channels are relayed
/// untouched so that a mesh of mixed versions keeps working.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Channel(pub u8);

impl Channel {
    pub const TOPOLOGY: Channel = Channel(0);
    pub const IPAM: Channel = Channel(1);
    pub const DNS: Channel = Channel(2);
    /// Fast path: container MACs per peer and VXLAN heartbeat reports.
    pub const FASTDP: Channel = Channel(3);
}

/// Who a peer says it is; the first message on every connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub name: PeerName,
    pub nickname: String,
    /// Random per router run: tells a restarted peer from its previous incarnation.
    pub uid: u64,
    /// Random per connection; both ends XOR theirs to get the connection UID, which breaks ties
    /// between duplicate connections identically on both sides.
    pub conn_id: u64,
    /// The port this peer accepts control connections on.
    pub tcp_port: u16,
    /// The UDP port of this peer's sleeve socket.
    pub udp_port: u16,
    /// The sender trusts the receiver's address (`--trusted-subnets`): data between them may go
    /// unencrypted if the receiver trusts the sender too.
    pub trusts_you: bool,
}

/// Messages from the overlay (data plane) side of a connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OverlayMsg {
    /// "Your UDP heartbeat for connection `conn_uid` reached me": the sleeve path works in the
    /// sender-to-us direction.
    HeartbeatAck { conn_uid: u64 },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ControlMsg {
    Hello(Hello),
    /// Keeps an idle connection's read deadline fresh.
    Heartbeat,
    /// State for one channel, sent to a neighbour (periodic or relayed).
    Gossip {
        channel: Channel,
        payload: Vec<u8>,
    },
    /// Spread to every peer along `src`'s broadcast tree.
    GossipBroadcast {
        channel: Channel,
        src: PeerName,
        payload: Vec<u8>,
    },
    /// Delivered to `dst`, relayed hop by hop.
    GossipUnicast {
        channel: Channel,
        src: PeerName,
        dst: PeerName,
        payload: Vec<u8>,
    },
    /// Asks the neighbour to send its full state for `channel` (used when an update mentions
    /// peers we have never heard of).
    GossipRequest {
        channel: Channel,
    },
    Overlay(OverlayMsg),
    /// A new data-key epoch: the initiator's first message (see `weft_core::mesh::secure`).
    Rekey {
        epoch: u8,
        msg: Vec<u8>,
    },
    /// The responder's answer.
    RekeyAck {
        epoch: u8,
        msg: Vec<u8>,
    },
    /// The initiator sends with the new epoch now.
    RekeyDone {
        epoch: u8,
    },
    /// The sender is closing the connection because it refuses us, and why (e.g. our IP
    /// allocation rings differ), so both sides can show the reason.
    Refused {
        reason: String,
    },
    /// Protocol 2: the version of every topology entry the sender holds. The receiver sends
    /// back (as topology gossip) the entries it holds newer or the sender lacks; with
    /// `reply`, it also sends its own versions if the sender holds entries newer than its.
    TopologyVersions {
        versions: Vec<PeerVersion>,
        reply: bool,
    },
    /// Protocol 2, periodic: a digest of the sender's topology versions. A receiver whose
    /// own differs answers with its versions (and `reply`).
    TopologyDigest {
        digest: u64,
    },
    /// Protocol 2, periodic: a digest of the sender's full state of another channel (see
    /// [`state_digest`]). A receiver whose own differs asks for the full state
    /// ([`ControlMsg::GossipRequest`]).
    StateDigest {
        channel: Channel,
        digest: u64,
    },
    /// Protocol 2, once after the handshake: the sender was told to connect to the receiver
    /// (a target on its command line or `weft connect`) and redials it whenever dropped, so a
    /// partial view must not shed this connection as surplus.
    Pinned,
    /// Protocol 3. Without `want`: the versions of topology entries the sender just relayed
    /// along the broadcast tree, told to a few neighbours off the tree (Plumtree's lazy
    /// push). A receiver still behind on one of them a moment later (the tree missed it) asks
    /// back with `want`, giving the versions it holds (zero for entries it lacks), and gets
    /// the newer entries as topology gossip.
    TopologyHave {
        versions: Vec<PeerVersion>,
        want: bool,
    },
}

/// A digest of a channel's full state as its payloads: two routers whose states encode alike
/// digest alike, and different states differ but for a 64-bit accident (which only delays the
/// repair to the next change or a new connection).
pub fn state_digest(payloads: &[Vec<u8>]) -> u64 {
    // FNV-1a over each payload, with the lengths folded in so cuts between payloads count.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in payloads {
        for b in (p.len() as u64).to_le_bytes().iter().chain(p) {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

/// Which version of a peer's topology entry a router holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerVersion {
    pub name: PeerName,
    pub uid: u64,
    pub version: u64,
}

impl ControlMsg {
    /// Encodes the message with its length prefix, ready for the socket.
    pub fn encode_framed(&self) -> Vec<u8> {
        frame(&self.encode_body())
    }

    /// Encodes the message without the length prefix (to encrypt it first).
    pub fn encode_body(&self) -> Vec<u8> {
        // Serializing into a Vec cannot fail for these types (no maps with non-string keys, no
        // sequences of unknown length).
        postcard::to_extend(self, Vec::new()).expect("postcard encoding of ControlMsg")
    }

    pub fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        postcard::from_bytes(body).map_err(|e| DecodeError::Malformed {
            what: "control message",
            detail: e.to_string(),
        })
    }
}

/// Splits a byte stream into length-prefixed frames.
///
/// Invariant: `buf` holds at most one partial frame plus whatever arrived after it; a length
/// above [`MAX_FRAME_LEN`] is rejected before any of the body is buffered.
#[derive(Debug, Default)]
pub struct FrameReader {
    buf: Vec<u8>,
    pos: usize,
}

impl FrameReader {
    pub fn push(&mut self, bytes: &[u8]) {
        if self.pos > 0 && self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes received but not yet consumed.
    pub fn pending(&self) -> &[u8] {
        &self.buf[self.pos..]
    }

    /// Consumes `n` raw bytes (used for the unframed protocol header).
    pub fn take_raw(&mut self, n: usize) -> Option<Vec<u8>> {
        if self.pending().len() < n {
            return None;
        }
        let v = self.buf[self.pos..self.pos + n].to_vec();
        self.pos += n;
        Some(v)
    }

    /// The next complete frame body, if one has arrived. `max_len` bounds what we are willing
    /// to buffer: small before the peer has identified itself, [`MAX_FRAME_LEN`] after.
    pub fn next_frame(&mut self, max_len: usize) -> Result<Option<Vec<u8>>, DecodeError> {
        let pending = self.pending();
        if pending.len() < 4 {
            self.compact();
            return Ok(None);
        }
        let len = u32::from_be_bytes([pending[0], pending[1], pending[2], pending[3]]) as usize;
        if len > max_len {
            return Err(DecodeError::TooLong {
                what: "control message",
                len,
                max: max_len,
            });
        }
        if pending.len() < 4 + len {
            self.compact();
            return Ok(None);
        }
        let body = pending[4..4 + len].to_vec();
        self.pos += 4 + len;
        Ok(Some(body))
    }

    fn compact(&mut self) {
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
    }
}

/// One of a peer's connections as it reports them in topology gossip.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ConnectionSummary {
    pub peer: PeerName,
    /// The remote end's TCP address as this peer sees it.
    pub addr: SocketAddr,
    pub outbound: bool,
    /// The overlay works over this connection (heartbeats acknowledged).
    pub established: bool,
}

/// Everything the mesh knows about one peer; owned and versioned by that peer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerSummary {
    pub name: PeerName,
    pub nickname: String,
    pub uid: u64,
    pub version: u64,
    /// The peer's control port, so others can dial it at an address they learned.
    pub tcp_port: u16,
    pub connections: Vec<ConnectionSummary>,
}

/// The payload of the topology channel.
#[derive(Clone, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct TopologyUpdate {
    pub peers: Vec<PeerSummary>,
}

impl TopologyUpdate {
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_extend(self, Vec::new()).expect("postcard encoding of TopologyUpdate")
    }

    /// Updates carrying `entries`, encoded, each at most `max` bytes (see
    /// [`crate::encode_chunks`]; an update is its list of peers on the wire).
    pub fn encode_chunks<'a>(
        entries: impl IntoIterator<Item = &'a PeerSummary>,
        max: usize,
    ) -> Vec<Vec<u8>> {
        crate::encode_chunks(entries, max)
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        postcard::from_bytes(bytes).map_err(|e| DecodeError::Malformed {
            what: "topology update",
            detail: e.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn negotiation() {
        assert_eq!(negotiate(&encode_header(1, 3, 0), 1, 2), Ok((2, 0)));
        assert_eq!(
            negotiate(&encode_header(1, 1, FLAG_ENCRYPTED), 1, 2),
            Ok((1, 1))
        );
        assert!(matches!(
            negotiate(&encode_header(3, 4, 0), 1, 2),
            Err(HeaderError::Incompatible { .. })
        ));
        assert_eq!(
            negotiate(b"weave\x01\x01", 1, 1),
            Err(HeaderError::BadMagic)
        );
        assert!(negotiate(&encode_header(2, 1, 0), 1, 2).is_err());
    }

    #[test]
    fn frames_split_across_reads() {
        let msgs = [
            ControlMsg::Heartbeat,
            ControlMsg::Gossip {
                channel: Channel::TOPOLOGY,
                payload: vec![1, 2, 3],
            },
            ControlMsg::Overlay(OverlayMsg::HeartbeatAck { conn_uid: 42 }),
        ];
        let wire: Vec<u8> = msgs.iter().flat_map(|m| m.encode_framed()).collect();
        let mut r = FrameReader::default();
        let mut got = Vec::new();
        for b in wire.chunks(3) {
            r.push(b);
            while let Some(f) = r.next_frame(MAX_FRAME_LEN).unwrap() {
                got.push(ControlMsg::decode(&f).unwrap());
            }
        }
        assert_eq!(got, msgs);
    }

    #[test]
    fn chunked_updates_decode_to_every_entry_in_order() {
        let peers: Vec<PeerSummary> = (0..50u64)
            .map(|n| PeerSummary {
                name: PeerName::from_u64(n + 1),
                nickname: format!("host-{n}"),
                uid: n * 7,
                version: n,
                tcp_port: 6783,
                connections: (0..n % 5)
                    .map(|c| ConnectionSummary {
                        peer: PeerName::from_u64(c + 100),
                        addr: "198.18.0.1:6783".parse().unwrap(),
                        outbound: c % 2 == 0,
                        established: true,
                    })
                    .collect(),
            })
            .collect();
        let chunks = TopologyUpdate::encode_chunks(&peers, 300);
        assert!(chunks.len() > 1);
        let mut back = Vec::new();
        for c in &chunks {
            assert!(c.len() <= 300);
            back.extend(TopologyUpdate::decode(c).unwrap().peers);
        }
        assert_eq!(back, peers);
    }

    #[test]
    fn oversize_frame_rejected_before_buffering() {
        let mut r = FrameReader::default();
        r.push(&(MAX_FRAME_LEN as u32 + 1).to_be_bytes());
        assert!(matches!(
            r.next_frame(MAX_FRAME_LEN),
            Err(DecodeError::TooLong { .. })
        ));
    }

    proptest! {
        #[test]
        fn control_decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = ControlMsg::decode(&bytes);
            let _ = TopologyUpdate::decode(&bytes);
            let mut r = FrameReader::default();
            r.push(&bytes);
            while let Ok(Some(_)) = r.next_frame(MAX_FRAME_LEN) {}
        }

        #[test]
        fn hello_round_trip(name in 0u64..(1<<48), uid: u64, conn_id: u64, nick in "[a-z0-9-]{0,20}") {
            let m = ControlMsg::Hello(Hello { name: PeerName::from_u64(name), nickname: nick, uid, conn_id, tcp_port: 6783, udp_port: 6783, trusts_you: false });
            let framed = m.encode_framed();
            prop_assert_eq!(ControlMsg::decode(&framed[4..]).unwrap(), m);
        }
    }
}
