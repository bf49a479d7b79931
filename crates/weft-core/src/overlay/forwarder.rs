//! Frame forwarding for the sleeve overlay.
//!
//! From a local container (read from the bridge's TAP port):
//! - STP frames are dropped; the source MAC is learned as local;
//! - a known remote destination goes to that peer via its unicast next hop;
//! - a known local destination is dropped (the bridge already delivered it);
//! - broadcast, multicast and unknown destinations are flooded along our broadcast tree with
//!   destination peer "broadcast".
//!
//! From a peer (sleeve datagram `sender`, `src`, `dst`):
//! - `dst` is another peer: relayed to the next hop unchanged except for `sender`;
//! - `dst` is us: source MAC learned as `src`, frame injected into the bridge;
//! - `dst` is broadcast: learned, injected, and relayed to our children in `src`'s tree.
//!
//! Datagrams from peers we have no established connection with, frames that claim to come
//! from us, and undecodable datagrams are dropped and counted.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use weft_proto::sleeve::{self, Datagram};
use weft_proto::{BROADCAST_PEER, EtherFrame, Mac, PeerName};

use super::mac_cache::{MacCache, MacOwner};
use crate::mesh::DataPlaneTable;

/// Where the forwarder's decisions go.
pub trait Output {
    /// Send one UDP datagram made of `parts` concatenated.
    fn send(&mut self, to: SocketAddr, parts: &[&[u8]]);
    /// Write `frame` into the local bridge.
    fn inject(&mut self, frame: &[u8]);
}

/// Counters a user may want to graph; every drop has a reason.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ForwarderStats {
    pub local_frames: u64,
    pub remote_frames: u64,
    pub relayed: u64,
    pub injected: u64,
    pub sent_datagrams: u64,
    pub dropped_malformed: u64,
    pub dropped_unknown_sender: u64,
    pub dropped_no_route: u64,
    pub dropped_loop: u64,
    pub dropped_stp: u64,
    pub dropped_local_dst: u64,
    pub dropped_too_big: u64,
}

#[derive(Debug)]
pub struct Forwarder {
    table: Arc<DataPlaneTable>,
    macs: MacCache,
    stats: ForwarderStats,
    /// Largest frame that fits one datagram.
    max_frame: usize,
}

impl Forwarder {
    pub fn new(local: PeerName) -> Self {
        Forwarder {
            table: Arc::new(DataPlaneTable {
                local,
                ..Default::default()
            }),
            macs: MacCache::default(),
            stats: ForwarderStats::default(),
            max_frame: sleeve::MAX_DATAGRAM - sleeve::FRAME_HEADER_LEN,
        }
    }

    pub fn local(&self) -> PeerName {
        self.table.local
    }

    pub fn set_table(&mut self, table: Arc<DataPlaneTable>) {
        self.table = table;
    }

    pub fn forget_peer(&mut self, peer: PeerName) {
        self.macs.forget_peer(peer);
    }

    pub fn expire(&mut self, now: Instant) -> usize {
        self.macs.expire(now)
    }

    pub fn stats(&self) -> ForwarderStats {
        self.stats
    }

    pub fn macs(&self) -> &MacCache {
        &self.macs
    }

    /// A frame from the local bridge.
    pub fn handle_local_frame(&mut self, now: Instant, frame: &[u8], out: &mut impl Output) {
        let Ok(eth) = EtherFrame::from_bytes(frame) else {
            self.stats.dropped_malformed += 1;
            return;
        };
        if frame.len() > self.max_frame {
            self.stats.dropped_too_big += 1;
            return;
        }
        self.stats.local_frames += 1;
        let dst = eth.dst();
        if dst == Mac::STP {
            self.stats.dropped_stp += 1;
            return;
        }
        self.macs.learn(now, eth.src(), MacOwner::Local);
        let local = self.table.local;
        let dst_peer = if dst.is_multicast() {
            None
        } else {
            self.macs.lookup(&dst)
        };
        match dst_peer {
            Some(MacOwner::Local) => self.stats.dropped_local_dst += 1,
            Some(MacOwner::Peer(p)) => {
                let header = sleeve::frame_header(local, local, p);
                self.unicast(p, &[&header, frame], out);
            }
            None => {
                let header = sleeve::frame_header(local, local, BROADCAST_PEER);
                self.flood(local, &[&header, frame], out);
            }
        }
    }

    /// A frame datagram from the sleeve socket. The buffer is modified (relays rewrite the
    /// sender field in place).
    pub fn handle_datagram(&mut self, now: Instant, datagram: &mut [u8], out: &mut impl Output) {
        let (sender, src, dst) = match Datagram::decode(datagram) {
            Ok(Datagram::Frame {
                sender, src, dst, ..
            }) => (sender, src, dst),
            Ok(Datagram::Heartbeat { .. }) | Err(_) => {
                self.stats.dropped_malformed += 1;
                return;
            }
        };
        if !self.table.neighbours.contains_key(&sender) {
            self.stats.dropped_unknown_sender += 1;
            return;
        }
        let local = self.table.local;
        if src == local || src == BROADCAST_PEER {
            self.stats.dropped_loop += 1;
            return;
        }
        self.stats.remote_frames += 1;
        if dst != local && dst != BROADCAST_PEER {
            sleeve::set_sender(datagram, local);
            self.stats.relayed += 1;
            self.unicast(dst, &[datagram], out);
            return;
        }
        let frame = &datagram[sleeve::FRAME_HEADER_LEN..];
        let eth = EtherFrame::from_bytes(frame).expect("Datagram::decode checked the length");
        self.macs.learn(now, eth.src(), MacOwner::Peer(src));
        self.stats.injected += 1;
        out.inject(frame);
        if dst == BROADCAST_PEER {
            sleeve::set_sender(datagram, local);
            self.flood(src, &[datagram], out);
        }
    }

    fn unicast(&mut self, dst: PeerName, parts: &[&[u8]], out: &mut impl Output) {
        let addr = self
            .table
            .unicast
            .get(&dst)
            .and_then(|hop| self.table.neighbours.get(hop));
        match addr {
            Some(&to) => {
                self.stats.sent_datagrams += 1;
                out.send(to, parts);
            }
            None => self.stats.dropped_no_route += 1,
        }
    }

    fn flood(&mut self, src: PeerName, parts: &[&[u8]], out: &mut impl Output) {
        let Some(children) = self.table.broadcast.get(&src) else {
            return;
        };
        for child in children {
            if let Some(&to) = self.table.neighbours.get(child) {
                self.stats.sent_datagrams += 1;
                out.send(to, parts);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[derive(Default)]
    struct Rec {
        sent: Vec<(SocketAddr, Vec<u8>)>,
        injected: Vec<Vec<u8>>,
    }

    impl Output for Rec {
        fn send(&mut self, to: SocketAddr, parts: &[&[u8]]) {
            self.sent.push((to, parts.concat()));
        }
        fn inject(&mut self, frame: &[u8]) {
            self.injected.push(frame.to_vec());
        }
    }

    fn pn(n: u64) -> PeerName {
        PeerName::from_u64(n)
    }

    fn addr(n: u64) -> SocketAddr {
        format!("10.0.0.{n}:6783").parse().unwrap()
    }

    fn frame(dst: [u8; 6], src: [u8; 6]) -> Vec<u8> {
        let mut f = vec![0u8; 64];
        f[0..6].copy_from_slice(&dst);
        f[6..12].copy_from_slice(&src);
        f
    }

    /// Peer 1 in a line 1 - 2 - 3.
    fn table_for_1() -> Arc<DataPlaneTable> {
        Arc::new(DataPlaneTable {
            local: pn(1),
            unicast: BTreeMap::from([(pn(2), pn(2)), (pn(3), pn(2))]),
            broadcast: BTreeMap::from([(pn(1), vec![pn(2)]), (pn(2), vec![]), (pn(3), vec![])]),
            neighbours: BTreeMap::from([(pn(2), addr(2))]),
        })
    }

    #[test]
    fn floods_unknown_then_unicasts_learned() {
        let now = Instant::now();
        let mut f = Forwarder::new(pn(1));
        f.set_table(table_for_1());
        let mut out = Rec::default();
        let a = [2, 0, 0, 0, 0, 0xa];
        let b = [2, 0, 0, 0, 0, 0xb];
        f.handle_local_frame(now, &frame([0xff; 6], a), &mut out);
        assert_eq!(out.sent.len(), 1);
        assert_eq!(out.sent[0].0, addr(2));
        // b answers from peer 3, relayed by 2.
        let mut reply = sleeve::frame_header(pn(2), pn(3), pn(1)).to_vec();
        reply.extend(frame(a, b));
        f.handle_datagram(now, &mut reply, &mut out);
        assert_eq!(out.injected.len(), 1);
        // Now b is known behind 3: unicast via 2 with dst peer 3.
        f.handle_local_frame(now, &frame(b, a), &mut out);
        let (to, pkt) = out.sent.last().unwrap();
        assert_eq!(*to, addr(2));
        assert!(
            matches!(Datagram::decode(pkt).unwrap(), Datagram::Frame { dst, .. } if dst == pn(3))
        );
    }

    #[test]
    fn drops_unknown_sender_and_loops() {
        let now = Instant::now();
        let mut f = Forwarder::new(pn(1));
        f.set_table(table_for_1());
        let mut out = Rec::default();
        let mut d = sleeve::frame_header(pn(9), pn(3), pn(1)).to_vec();
        d.extend(frame([2; 6], [4; 6]));
        f.handle_datagram(now, &mut d, &mut out);
        let mut d = sleeve::frame_header(pn(2), pn(1), pn(1)).to_vec();
        d.extend(frame([2; 6], [4; 6]));
        f.handle_datagram(now, &mut d, &mut out);
        let mut junk = vec![0x10, 0, 1, 2];
        f.handle_datagram(now, &mut junk, &mut out);
        let s = f.stats();
        assert_eq!(
            (
                s.dropped_unknown_sender,
                s.dropped_loop,
                s.dropped_malformed
            ),
            (1, 1, 1)
        );
        assert!(out.sent.is_empty() && out.injected.is_empty());
    }

    #[test]
    fn relays_for_other_peers() {
        let now = Instant::now();
        // Peer 2 in the middle of 1 - 2 - 3.
        let mut f = Forwarder::new(pn(2));
        f.set_table(Arc::new(DataPlaneTable {
            local: pn(2),
            unicast: BTreeMap::from([(pn(1), pn(1)), (pn(3), pn(3))]),
            broadcast: BTreeMap::from([(pn(1), vec![pn(3)]), (pn(3), vec![pn(1)])]),
            neighbours: BTreeMap::from([(pn(1), addr(1)), (pn(3), addr(3))]),
        }));
        let mut out = Rec::default();
        let mut d = sleeve::frame_header(pn(1), pn(1), pn(3)).to_vec();
        d.extend(frame([2; 6], [4; 6]));
        f.handle_datagram(now, &mut d, &mut out);
        assert!(out.injected.is_empty());
        assert_eq!(out.sent.len(), 1);
        assert_eq!(out.sent[0].0, addr(3));
        assert!(
            matches!(Datagram::decode(&out.sent[0].1).unwrap(), Datagram::Frame { sender, .. } if sender == pn(2))
        );
        // A flood from 1 is injected here and passed on to 3.
        let mut d = sleeve::frame_header(pn(1), pn(1), BROADCAST_PEER).to_vec();
        d.extend(frame([0xff; 6], [4; 6]));
        f.handle_datagram(now, &mut d, &mut out);
        assert_eq!(out.injected.len(), 1);
        assert_eq!(out.sent.len(), 2);
    }
}
