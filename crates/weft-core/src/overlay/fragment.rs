//! weft's own fragmentation of sleeve datagrams larger than one underlay packet.
//!
//! A 64 KiB offload super-frame (sealed or not) is cut into fragments that each fit the path
//! MTU; all but the last have the same size, so the shell can hand the whole train to the
//! kernel in one UDP segmentation-offload send. The receiver copies fragments into place
//! (they may come in any order or twice) and hands on the datagram only when every byte has
//! arrived; a datagram with a missing fragment is dropped whole when it times out or is pushed
//! out by newer ones, and fragments that contradict each other drop it at once. Fragment
//! headers are not authenticated, but a sealed datagram is authenticated after reassembly, so
//! a forged fragment can make a datagram fail, never make it wrong.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use weft_proto::PeerName;
use weft_proto::sleeve::{FRAGMENT_HEADER_LEN, fragment_header};

/// How long fragments wait for the rest of their datagram.
pub const REASSEMBLY_TIMEOUT: Duration = Duration::from_secs(1);
/// Datagrams in reassembly per sender; more push out the oldest (lost, surely).
pub const MAX_PENDING_PER_SENDER: usize = 64;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FragmentStats {
    pub fragments_in: u64,
    pub fragments_out: u64,
    pub reassembled: u64,
    /// Datagrams given up on: a fragment never came (timeout or pushed out).
    pub incomplete: u64,
    /// Datagrams dropped because their fragments disagreed (size, overlap).
    pub inconsistent: u64,
}

struct Pending {
    buf: Vec<u8>,
    /// Byte ranges received, as (offset, len).
    have: Vec<(u16, u16)>,
    got: usize,
    started: Instant,
}

/// Datagrams just completed, so a late duplicate fragment does not start them over.
const RECENT: usize = 256;

#[derive(Default)]
pub struct Reassembler {
    pending: HashMap<(PeerName, u32), Pending>,
    /// The same keys, oldest first, and as a set for the per-fragment lookup.
    recent: VecDeque<(PeerName, u32)>,
    recent_set: HashSet<(PeerName, u32)>,
    stats: FragmentStats,
}

impl std::fmt::Debug for Reassembler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reassembler")
            .field("pending", &self.pending.len())
            .field("stats", &self.stats)
            .finish()
    }
}

impl Reassembler {
    pub fn stats(&self) -> FragmentStats {
        self.stats
    }

    /// Takes one fragment (already decoded: `offset + payload.len() <= total`); returns the
    /// whole datagram once its last byte has arrived.
    pub fn push(
        &mut self,
        now: Instant,
        sender: PeerName,
        id: u32,
        offset: u16,
        total: u16,
        payload: &[u8],
    ) -> Option<Vec<u8>> {
        self.stats.fragments_in += 1;
        let key = (sender, id);
        if self.recent_set.contains(&key) {
            return None;
        }
        if !self.pending.contains_key(&key) {
            self.make_room(sender);
            self.pending.insert(
                key,
                Pending {
                    buf: vec![0; usize::from(total)],
                    have: Vec::new(),
                    got: 0,
                    started: now,
                },
            );
        }
        let p = self.pending.get_mut(&key).expect("inserted above");
        let len = payload.len() as u16;
        let end = |o: u16, l: u16| u32::from(o) + u32::from(l);
        let consistent = p.buf.len() == usize::from(total)
            && usize::from(offset) + payload.len() <= p.buf.len()
            && p.have.iter().all(|&(o, l)| {
                // The same fragment again is harmless; any other overlap is a contradiction.
                (o, l) == (offset, len)
                    || end(o, l) <= u32::from(offset)
                    || end(offset, len) <= u32::from(o)
            });
        if !consistent {
            self.pending.remove(&key);
            self.stats.inconsistent += 1;
            return None;
        }
        if p.have.contains(&(offset, len)) {
            return None;
        }
        let at = usize::from(offset);
        p.buf[at..at + payload.len()].copy_from_slice(payload);
        p.have.push((offset, len));
        p.got += payload.len();
        if p.got < p.buf.len() {
            return None;
        }
        let p = self.pending.remove(&key).expect("present");
        if self.recent.len() == RECENT
            && let Some(old) = self.recent.pop_front()
        {
            self.recent_set.remove(&old);
        }
        self.recent.push_back(key);
        self.recent_set.insert(key);
        self.stats.reassembled += 1;
        Some(p.buf)
    }

    /// Drops the oldest pending datagram of `sender` when it has too many.
    fn make_room(&mut self, sender: PeerName) {
        let mut count = 0;
        let mut oldest: Option<(&(PeerName, u32), Instant)> = None;
        for (k, p) in self.pending.iter().filter(|(k, _)| k.0 == sender) {
            count += 1;
            if oldest.is_none_or(|(_, t)| p.started < t) {
                oldest = Some((k, p.started));
            }
        }
        if count < MAX_PENDING_PER_SENDER {
            return;
        }
        if let Some(k) = oldest.map(|(k, _)| *k) {
            self.pending.remove(&k);
            self.stats.incomplete += 1;
        }
    }

    /// Gives up on datagrams whose fragments stopped coming.
    pub fn expire(&mut self, now: Instant) {
        let before = self.pending.len();
        self.pending
            .retain(|_, p| now.saturating_duration_since(p.started) < REASSEMBLY_TIMEOUT);
        self.stats.incomplete += (before - self.pending.len()) as u64;
    }

    /// Forgets a peer's pending datagrams.
    pub fn forget(&mut self, sender: PeerName) {
        self.pending.retain(|k, _| k.0 != sender);
    }
}

/// Cuts `datagram` into fragments of at most `max` bytes each (header included), written one
/// after the other into `out`; returns the size of every fragment but the last (the stride a
/// segmentation-offload send needs).
pub fn fragment(
    sender: PeerName,
    id: u32,
    datagram: &[u8],
    max: usize,
    out: &mut Vec<u8>,
) -> usize {
    let chunk = max - FRAGMENT_HEADER_LEN;
    let total = u16::try_from(datagram.len()).expect("sleeve datagrams fit 16 bits");
    out.clear();
    for (i, piece) in datagram.chunks(chunk).enumerate() {
        let offset = (i * chunk) as u16;
        out.extend_from_slice(&fragment_header(sender, id, offset, total));
        out.extend_from_slice(piece);
    }
    FRAGMENT_HEADER_LEN + chunk
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;
    use weft_proto::sleeve::Datagram;

    fn pieces(train: &[u8], stride: usize) -> Vec<Vec<u8>> {
        train.chunks(stride).map(<[u8]>::to_vec).collect()
    }

    fn feed(r: &mut Reassembler, now: Instant, frag: &[u8]) -> Option<Vec<u8>> {
        match Datagram::decode(frag).unwrap() {
            Datagram::Fragment {
                sender,
                id,
                offset,
                total,
                payload,
            } => r.push(now, sender, id, offset, total, payload),
            other => panic!("{other:?}"),
        }
    }

    fn datagram(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31) ^ seed)
            .collect()
    }

    #[test]
    fn any_order_and_duplicates_give_back_the_exact_datagram() {
        let now = Instant::now();
        let me = PeerName::from_u64(1);
        let mut rng = Rng::new(5);
        for len in [1usize, 1455, 1456, 1457, 9000, 65_507] {
            let d = datagram(len, len as u8);
            let mut train = Vec::new();
            let stride = fragment(me, len as u32, &d, 1472, &mut train);
            let mut frags = pieces(&train, stride);
            assert!(frags.iter().all(|f| f.len() <= 1472));
            // Shuffle and repeat one.
            for i in (1..frags.len()).rev() {
                let j = rng.below(i as u64 + 1) as usize;
                frags.swap(i, j);
            }
            let dup = frags[0].clone();
            frags.insert(frags.len() / 2, dup);
            let mut r = Reassembler::default();
            let mut out = None;
            for f in &frags {
                if let Some(d) = feed(&mut r, now, f) {
                    assert!(out.is_none(), "delivered once");
                    out = Some(d);
                }
            }
            assert_eq!(out.as_deref(), Some(&d[..]), "len {len}");
        }
    }

    #[test]
    fn a_lost_fragment_drops_the_datagram_whole_after_the_timeout() {
        let now = Instant::now();
        let me = PeerName::from_u64(1);
        let d = datagram(10_000, 1);
        let mut train = Vec::new();
        let stride = fragment(me, 9, &d, 1472, &mut train);
        let frags = pieces(&train, stride);
        let mut r = Reassembler::default();
        for f in frags.iter().skip(1) {
            assert!(feed(&mut r, now, f).is_none());
        }
        r.expire(now + REASSEMBLY_TIMEOUT);
        assert_eq!(r.stats().incomplete, 1);
        // The missing piece arriving late starts over and completes nothing.
        assert!(feed(&mut r, now + REASSEMBLY_TIMEOUT, &frags[0]).is_none());
    }

    #[test]
    fn contradicting_fragments_drop_the_datagram() {
        let now = Instant::now();
        let me = PeerName::from_u64(1);
        let mut r = Reassembler::default();
        assert!(r.push(now, me, 1, 0, 3000, &[1; 1456]).is_none());
        // Same id, another total size.
        assert!(r.push(now, me, 1, 1456, 4000, &[1; 1456]).is_none());
        assert_eq!(r.stats().inconsistent, 1);
        // Overlapping ranges of different lengths.
        assert!(r.push(now, me, 2, 0, 3000, &[1; 1456]).is_none());
        assert!(r.push(now, me, 2, 1000, 3000, &[1; 1000]).is_none());
        assert_eq!(r.stats().inconsistent, 2);
        // Many unfinished datagrams from one sender push out the oldest.
        for id in 100..100 + MAX_PENDING_PER_SENDER as u32 + 5 {
            r.push(now, me, id, 0, 3000, &[0; 10]);
        }
        assert_eq!(r.pending.len(), MAX_PENDING_PER_SENDER);
    }
}
