//! Sleeve datagrams: the userspace overlay's UDP payloads.
//!
//! ```text
//!  0        1        2                 8
//! +--------+--------+-----------------+
//! |ver|kind| flags  |  sender (6)     |   common header, 8 bytes
//! +--------+--------+-----------------+
//! kind Frame:     | src peer (6) | dst peer (6) | Ethernet frame ... |
//!                 flags bit 0 ("relay only"): the receiver got this frame from src's VXLAN
//!                 fast path already; it only passes it on to its children in src's tree
//! kind FrameGso:  | src peer (6) | dst peer (6) | offload header (10) | Ethernet super-frame |
//!                 (a segmentation-offload frame with its virtio_net_hdr, see [`crate::offload`];
//!                 flags as for Frame)
//! kind Heartbeat: | connection uid (8, BE) |
//! kind Fragment:  | id (4, BE) | offset (2, BE) | total (2, BE) | bytes offset.. of a datagram |
//!                 (a sleeve datagram larger than one underlay packet, cut by its sender; the
//!                 receiver puts `total` bytes back together and handles them as one datagram)
//! kind Encrypted: header byte 1 is the key epoch, then
//!                 | counter (8, BE) | ChaCha20-Poly1305( inner ) | tag (16) |
//!                 inner = 0 ‖ src ‖ dst ‖ frame, 1 ‖ connection uid,
//!                 2 ‖ src ‖ dst ‖ offload header ‖ super-frame,
//!                 or 3 ‖ flags ‖ probe body (below)
//! kind Probe:     | seq (4, BE) | size (2, BE) | zero padding ... |
//!                 path-MTU probe, `size` bytes of UDP payload in all; flags bit 1 ("ack"):
//!                 the answer to probe `seq` of that size, 14 bytes, no padding
//! ```
//!
//! Encrypted datagrams authenticate the 16-byte clear header (kind, epoch, sender, counter) as
//! associated data; the counter is the AEAD nonce, unique per key.
//!
//! `sender` is the hop that sent this datagram; `src`/`dst` are the frame's origin peer and
//! destination peer (all-zero `dst` means "flooded: deliver everywhere along src's broadcast
//! tree"). A frame crosses several hops unchanged except for `sender`.
//!
//! Overhead on the underlay: IPv4 20 + UDP 8 + header 8 + src/dst 12 = 48 bytes, plus the inner
//! Ethernet header (14) that the container's MTU does not count: [`FRAME_OVERHEAD`] = 62.

use crate::offload::{GSO_LEN, Gso};
use crate::{DecodeError, PeerName};

pub const VERSION: u8 = 1;
pub const HEADER_LEN: usize = 8;
pub const FRAME_HEADER_LEN: usize = HEADER_LEN + 12;
pub const HEARTBEAT_LEN: usize = HEADER_LEN + 8;
/// Bytes between the container's IP MTU and the underlay's IP MTU on the sleeve path.
pub const FRAME_OVERHEAD: usize = 20 + 8 + FRAME_HEADER_LEN + crate::ether::ETHER_HEADER_LEN;
/// Clear header of an encrypted datagram: common header + counter.
pub const ENCRYPTED_HEADER_LEN: usize = HEADER_LEN + 8;
/// Encrypted inner kinds.
pub const INNER_FRAME: u8 = 0;
pub const INNER_HEARTBEAT: u8 = 1;
pub const INNER_FRAME_GSO: u8 = 2;
pub const INNER_PROBE: u8 = 3;
/// A probe's own fields after the common header (or after the inner kind and flags).
pub const PROBE_BODY_LEN: usize = 6;
/// Length of a plain probe's header, and of a plain probe answer.
pub const PROBE_LEN: usize = HEADER_LEN + PROBE_BODY_LEN;
/// Probe flag: this is the answer to a probe.
pub const FLAG_PROBE_ACK: u8 = 0x02;
/// Header of a FrameGso datagram.
pub const GSO_FRAME_HEADER_LEN: usize = FRAME_HEADER_LEN + GSO_LEN;
/// Header of a Fragment.
pub const FRAGMENT_HEADER_LEN: usize = HEADER_LEN + 8;
/// Frame flag: do not deliver locally, only relay (see the module docs).
pub const FLAG_RELAY_ONLY: u8 = 0x01;
/// Bytes between the container's IP MTU and the underlay's on the encrypted sleeve path:
/// IPv4 + UDP 28, clear header 16, inner kind 1, src/dst 12, tag 16, inner Ethernet 14.
pub const ENCRYPTED_FRAME_OVERHEAD: usize = 20 + 8 + ENCRYPTED_HEADER_LEN + 1 + 12 + 16 + 14;
/// The largest UDP payload an IPv4 datagram can carry.
pub const MAX_DATAGRAM: usize = 65535 - 20 - 8;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Frame = 0,
    Heartbeat = 1,
    Encrypted = 2,
    FrameGso = 3,
    Fragment = 4,
    Probe = 5,
}

/// A decoded sleeve datagram, borrowing the frame bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Datagram<'a> {
    Frame {
        sender: PeerName,
        src: PeerName,
        dst: PeerName,
        /// Deliver nowhere locally; relay only.
        relay_only: bool,
        /// A segmentation-offload super-frame's header.
        gso: Option<Gso>,
        frame: &'a [u8],
    },
    Heartbeat {
        sender: PeerName,
        conn_uid: u64,
    },
    /// A piece of a larger datagram.
    Fragment {
        sender: PeerName,
        id: u32,
        offset: u16,
        total: u16,
        payload: &'a [u8],
    },
    /// A path-MTU probe of `size` bytes, or (`ack`) the answer to one.
    Probe {
        sender: PeerName,
        ack: bool,
        seq: u32,
        size: u16,
    },
    /// Still to be decrypted: `body` is ciphertext followed by the tag.
    Encrypted {
        sender: PeerName,
        epoch: u8,
        counter: u64,
    },
}

fn peer_at(b: &[u8], at: usize) -> PeerName {
    PeerName::from_bytes(b[at..at + 6].try_into().expect("caller checked length"))
}

impl<'a> Datagram<'a> {
    pub fn decode(b: &'a [u8]) -> Result<Self, DecodeError> {
        if b.len() < HEADER_LEN {
            return Err(DecodeError::Truncated {
                what: "sleeve header",
                need: HEADER_LEN,
                have: b.len(),
            });
        }
        let version = b[0] >> 4;
        if version != VERSION {
            return Err(DecodeError::Malformed {
                what: "sleeve header",
                detail: format!("unsupported version {version}"),
            });
        }
        let sender = peer_at(b, 2);
        match b[0] & 0x0f {
            0 => {
                if b.len() < FRAME_HEADER_LEN + crate::ether::ETHER_HEADER_LEN {
                    return Err(DecodeError::Truncated {
                        what: "sleeve frame",
                        need: FRAME_HEADER_LEN + crate::ether::ETHER_HEADER_LEN,
                        have: b.len(),
                    });
                }
                Ok(Datagram::Frame {
                    sender,
                    src: peer_at(b, 8),
                    dst: peer_at(b, 14),
                    relay_only: b[1] & FLAG_RELAY_ONLY != 0,
                    gso: None,
                    frame: &b[FRAME_HEADER_LEN..],
                })
            }
            3 => {
                let need = GSO_FRAME_HEADER_LEN + crate::ether::ETHER_HEADER_LEN;
                if b.len() < need {
                    return Err(DecodeError::Truncated {
                        what: "sleeve offload frame",
                        need,
                        have: b.len(),
                    });
                }
                let gso = Gso(b[FRAME_HEADER_LEN..GSO_FRAME_HEADER_LEN]
                    .try_into()
                    .expect("length checked"));
                let frame = &b[GSO_FRAME_HEADER_LEN..];
                gso.validate(frame.len())?;
                Ok(Datagram::Frame {
                    sender,
                    src: peer_at(b, 8),
                    dst: peer_at(b, 14),
                    relay_only: b[1] & FLAG_RELAY_ONLY != 0,
                    gso: Some(gso),
                    frame,
                })
            }
            1 => {
                if b.len() != HEARTBEAT_LEN {
                    return Err(DecodeError::Malformed {
                        what: "sleeve heartbeat",
                        detail: format!("length {} (want {HEARTBEAT_LEN})", b.len()),
                    });
                }
                Ok(Datagram::Heartbeat {
                    sender,
                    conn_uid: u64::from_be_bytes(b[8..16].try_into().expect("length checked")),
                })
            }
            2 => {
                if b.len() < ENCRYPTED_HEADER_LEN + 16 + 1 {
                    return Err(DecodeError::Truncated {
                        what: "encrypted sleeve datagram",
                        need: ENCRYPTED_HEADER_LEN + 17,
                        have: b.len(),
                    });
                }
                Ok(Datagram::Encrypted {
                    sender,
                    epoch: b[1],
                    counter: u64::from_be_bytes(b[8..16].try_into().expect("length checked")),
                })
            }
            4 => {
                if b.len() <= FRAGMENT_HEADER_LEN {
                    return Err(DecodeError::Truncated {
                        what: "sleeve fragment",
                        need: FRAGMENT_HEADER_LEN + 1,
                        have: b.len(),
                    });
                }
                let id = u32::from_be_bytes(b[8..12].try_into().expect("length checked"));
                let offset = u16::from_be_bytes([b[12], b[13]]);
                let total = u16::from_be_bytes([b[14], b[15]]);
                let payload = &b[FRAGMENT_HEADER_LEN..];
                if usize::from(offset) + payload.len() > usize::from(total) {
                    return Err(DecodeError::Malformed {
                        what: "sleeve fragment",
                        detail: format!(
                            "{} bytes at {offset} overrun a {total}-byte datagram",
                            payload.len()
                        ),
                    });
                }
                Ok(Datagram::Fragment {
                    sender,
                    id,
                    offset,
                    total,
                    payload,
                })
            }
            5 => {
                let (ack, seq, size) = decode_probe_body(b[1], &b[HEADER_LEN..])?;
                // A probe is exactly as long as it says; an answer is just its fields.
                let want = if ack { PROBE_LEN } else { usize::from(size) };
                if b.len() != want {
                    return Err(DecodeError::Malformed {
                        what: "sleeve probe",
                        detail: format!("length {} (want {want})", b.len()),
                    });
                }
                Ok(Datagram::Probe {
                    sender,
                    ack,
                    seq,
                    size,
                })
            }
            k => Err(DecodeError::Malformed {
                what: "sleeve header",
                detail: format!("unknown kind {k}"),
            }),
        }
    }

    /// Cheap peek used to route a datagram to the data plane or the control plane without a
    /// full decode.
    pub fn kind(b: &[u8]) -> Option<Kind> {
        match b.first()? {
            x if x >> 4 != VERSION => None,
            x if x & 0x0f == 0 => Some(Kind::Frame),
            x if x & 0x0f == 1 => Some(Kind::Heartbeat),
            x if x & 0x0f == 2 => Some(Kind::Encrypted),
            x if x & 0x0f == 3 => Some(Kind::FrameGso),
            x if x & 0x0f == 4 => Some(Kind::Fragment),
            x if x & 0x0f == 5 => Some(Kind::Probe),
            _ => None,
        }
    }
}

fn common_header(kind: Kind, sender: PeerName) -> [u8; HEADER_LEN] {
    let s = sender.to_bytes();
    [
        (VERSION << 4) | kind as u8,
        0,
        s[0],
        s[1],
        s[2],
        s[3],
        s[4],
        s[5],
    ]
}

/// The header to put in front of an Ethernet frame.
pub fn frame_header(sender: PeerName, src: PeerName, dst: PeerName) -> [u8; FRAME_HEADER_LEN] {
    let mut h = [0u8; FRAME_HEADER_LEN];
    h[..HEADER_LEN].copy_from_slice(&common_header(Kind::Frame, sender));
    h[8..14].copy_from_slice(&src.to_bytes());
    h[14..20].copy_from_slice(&dst.to_bytes());
    h
}

/// The header of an offload super-frame (`relay_only` as for [`relay_only_header`]).
pub fn gso_frame_header(
    sender: PeerName,
    src: PeerName,
    dst: PeerName,
    relay_only: bool,
    gso: &Gso,
) -> [u8; GSO_FRAME_HEADER_LEN] {
    let mut h = [0u8; GSO_FRAME_HEADER_LEN];
    h[..FRAME_HEADER_LEN].copy_from_slice(&frame_header(sender, src, dst));
    h[0] = (VERSION << 4) | Kind::FrameGso as u8;
    if relay_only {
        h[1] = FLAG_RELAY_ONLY;
    }
    h[FRAME_HEADER_LEN..].copy_from_slice(&gso.0);
    h
}

/// The header of a frame its receiver must only relay, not deliver.
pub fn relay_only_header(sender: PeerName, src: PeerName, dst: PeerName) -> [u8; FRAME_HEADER_LEN] {
    let mut h = frame_header(sender, src, dst);
    h[1] = FLAG_RELAY_ONLY;
    h
}

/// The clear header of an encrypted datagram.
pub fn encrypted_header(sender: PeerName, epoch: u8, counter: u64) -> [u8; ENCRYPTED_HEADER_LEN] {
    let mut h = [0u8; ENCRYPTED_HEADER_LEN];
    h[..HEADER_LEN].copy_from_slice(&common_header(Kind::Encrypted, sender));
    h[1] = epoch;
    h[8..16].copy_from_slice(&counter.to_be_bytes());
    h
}

/// The header of fragment `offset..` of datagram `id` (`total` bytes) from `sender`.
pub fn fragment_header(
    sender: PeerName,
    id: u32,
    offset: u16,
    total: u16,
) -> [u8; FRAGMENT_HEADER_LEN] {
    let mut h = [0u8; FRAGMENT_HEADER_LEN];
    h[..HEADER_LEN].copy_from_slice(&common_header(Kind::Fragment, sender));
    h[8..12].copy_from_slice(&id.to_be_bytes());
    h[12..14].copy_from_slice(&offset.to_be_bytes());
    h[14..16].copy_from_slice(&total.to_be_bytes());
    h
}

/// Rewrites the sender field of an encoded datagram in place (relaying).
pub fn set_sender(datagram: &mut [u8], sender: PeerName) {
    datagram[2..8].copy_from_slice(&sender.to_bytes());
}

/// A probe's fields (`flags` as in the header, then `body` = seq ‖ size ...): (ack, seq, size).
pub fn decode_probe_body(flags: u8, body: &[u8]) -> Result<(bool, u32, u16), DecodeError> {
    if body.len() < PROBE_BODY_LEN {
        return Err(DecodeError::Truncated {
            what: "sleeve probe",
            need: PROBE_BODY_LEN,
            have: body.len(),
        });
    }
    let seq = u32::from_be_bytes(body[0..4].try_into().expect("length checked"));
    let size = u16::from_be_bytes([body[4], body[5]]);
    Ok((flags & FLAG_PROBE_ACK != 0, seq, size))
}

/// Writes a plain probe of `size` bytes (at least [`PROBE_LEN`]) into `out`, or, with `ack`,
/// the [`PROBE_LEN`]-byte answer to such a probe.
pub fn encode_probe(sender: PeerName, ack: bool, seq: u32, size: u16, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&common_header(Kind::Probe, sender));
    if ack {
        out[1] = FLAG_PROBE_ACK;
    }
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(&size.to_be_bytes());
    if !ack {
        out.resize(usize::from(size).max(PROBE_LEN), 0);
    }
}

pub fn encode_heartbeat(sender: PeerName, conn_uid: u64) -> [u8; HEARTBEAT_LEN] {
    let mut h = [0u8; HEARTBEAT_LEN];
    h[..HEADER_LEN].copy_from_slice(&common_header(Kind::Heartbeat, sender));
    h[8..16].copy_from_slice(&conn_uid.to_be_bytes());
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn frame_round_trip() {
        let (a, b, c) = (
            PeerName::from_u64(1),
            PeerName::from_u64(2),
            PeerName::from_u64(3),
        );
        let mut pkt = frame_header(a, b, c).to_vec();
        pkt.extend_from_slice(&[0xee; 60]);
        assert_eq!(Datagram::kind(&pkt), Some(Kind::Frame));
        match Datagram::decode(&pkt).unwrap() {
            Datagram::Frame {
                sender,
                src,
                dst,
                relay_only,
                gso,
                frame,
            } => {
                assert_eq!((sender, src, dst, relay_only, gso), (a, b, c, false, None));
                assert_eq!(frame.len(), 60);
            }
            other => panic!("{other:?}"),
        }
        let mut ro = relay_only_header(a, b, c).to_vec();
        ro.extend_from_slice(&[0xee; 60]);
        assert!(matches!(
            Datagram::decode(&ro).unwrap(),
            Datagram::Frame {
                relay_only: true,
                ..
            }
        ));
        set_sender(&mut pkt, c);
        assert!(
            matches!(Datagram::decode(&pkt).unwrap(), Datagram::Frame { sender, .. } if sender == c)
        );
    }

    #[test]
    fn gso_frame_round_trip() {
        let (a, b) = (PeerName::from_u64(1), PeerName::from_u64(2));
        let g = Gso([1, 1, 66, 0, 0xa2, 0x05, 34, 0, 16, 0]);
        let mut pkt = gso_frame_header(a, b, BROADCAST, true, &g).to_vec();
        pkt.extend_from_slice(&[0xee; 3000]);
        assert_eq!(Datagram::kind(&pkt), Some(Kind::FrameGso));
        match Datagram::decode(&pkt).unwrap() {
            Datagram::Frame {
                sender,
                src,
                relay_only,
                gso,
                frame,
                ..
            } => {
                assert_eq!((sender, src, relay_only, gso), (a, b, true, Some(g)));
                assert_eq!(frame.len(), 3000);
            }
            other => panic!("{other:?}"),
        }
        // A header that does not fit its frame is refused.
        let bad = Gso([1, 1, 66, 0, 0xa2, 0x05, 0xff, 0xff, 16, 0]);
        let mut pkt = gso_frame_header(a, b, BROADCAST, false, &bad).to_vec();
        pkt.extend_from_slice(&[0xee; 100]);
        assert!(Datagram::decode(&pkt).is_err());
    }

    const BROADCAST: PeerName = PeerName::from_u64(0);

    #[test]
    fn fragment_round_trip() {
        let mut d = fragment_header(PeerName::from_u64(4), 77, 1456, 3000).to_vec();
        d.extend_from_slice(&[1u8; 1456]);
        assert_eq!(Datagram::kind(&d), Some(Kind::Fragment));
        assert_eq!(
            Datagram::decode(&d).unwrap(),
            Datagram::Fragment {
                sender: PeerName::from_u64(4),
                id: 77,
                offset: 1456,
                total: 3000,
                payload: &[1u8; 1456],
            }
        );
        // Past the end of the datagram it claims to belong to.
        d.push(0);
        d.extend_from_slice(&[0u8; 100]);
        assert!(Datagram::decode(&d).is_err());
        assert!(Datagram::decode(&fragment_header(PeerName::from_u64(4), 1, 0, 10)).is_err());
    }

    #[test]
    fn heartbeat_round_trip() {
        let hb = encode_heartbeat(PeerName::from_u64(9), 0xdead_beef);
        assert_eq!(Datagram::kind(&hb), Some(Kind::Heartbeat));
        assert_eq!(
            Datagram::decode(&hb).unwrap(),
            Datagram::Heartbeat {
                sender: PeerName::from_u64(9),
                conn_uid: 0xdead_beef
            }
        );
    }

    #[test]
    fn probe_round_trip() {
        let me = PeerName::from_u64(5);
        let mut b = Vec::new();
        encode_probe(me, false, 7, 700, &mut b);
        assert_eq!(b.len(), 700);
        assert_eq!(Datagram::kind(&b), Some(Kind::Probe));
        assert_eq!(
            Datagram::decode(&b).unwrap(),
            Datagram::Probe {
                sender: me,
                ack: false,
                seq: 7,
                size: 700
            }
        );
        // Cut short on the way: not the probe it claims to be.
        assert!(Datagram::decode(&b[..699]).is_err());
        encode_probe(me, true, 7, 700, &mut b);
        assert_eq!(b.len(), PROBE_LEN);
        assert_eq!(
            Datagram::decode(&b).unwrap(),
            Datagram::Probe {
                sender: me,
                ack: true,
                seq: 7,
                size: 700
            }
        );
    }

    #[test]
    fn overhead_matches_layout() {
        assert_eq!(FRAME_OVERHEAD, 62);
        assert_eq!(ENCRYPTED_FRAME_OVERHEAD, 87);
    }

    #[test]
    fn encrypted_header_round_trip() {
        let mut d = encrypted_header(PeerName::from_u64(7), 3, 99).to_vec();
        d.extend_from_slice(&[0u8; 20]);
        assert_eq!(Datagram::kind(&d), Some(Kind::Encrypted));
        assert_eq!(
            Datagram::decode(&d).unwrap(),
            Datagram::Encrypted {
                sender: PeerName::from_u64(7),
                epoch: 3,
                counter: 99
            }
        );
        assert!(Datagram::decode(&d[..20]).is_err());
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
            let _ = Datagram::decode(&bytes);
            let _ = Datagram::kind(&bytes);
        }
    }
}
