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
/// Bytes held for one sender's datagrams in reassembly: as many whole super-frames as
/// [`MAX_PENDING_PER_SENDER`]...
pub const MAX_PENDING_BYTES_PER_SENDER: usize = MAX_PENDING_PER_SENDER * 64 * 1024;
/// ...and over all senders, so that hundreds of neighbours cannot together hold hundreds of
/// megabytes. Past it, the sender holding the most gives up its oldest.
pub const MAX_PENDING_BYTES: usize = 32 << 20;

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

/// One datagram in reassembly. Memory follows what arrived: the first fragment is kept as
/// it came, and the datagram's whole buffer is made only when a second one arrives, so a
/// lone forged fragment claiming a 64 KiB datagram costs its own size, not 64 KiB.
struct Pending {
    total: u16,
    first: Vec<u8>,
    buf: Vec<u8>,
    /// Byte ranges received, as (offset, len).
    have: Vec<(u16, u16)>,
    got: usize,
    started: Instant,
}

impl Pending {
    /// Bytes this datagram holds.
    fn held(&self) -> usize {
        self.first.capacity() + self.buf.capacity()
    }
}

/// One sender's datagrams in reassembly, oldest first.
#[derive(Default)]
struct Sender {
    pending: HashMap<u32, Pending>,
    order: VecDeque<u32>,
    bytes: usize,
}

impl Sender {
    fn remove(&mut self, id: u32) -> Option<Pending> {
        let p = self.pending.remove(&id)?;
        self.bytes -= p.held();
        if let Some(i) = self.order.iter().position(|&x| x == id) {
            self.order.remove(i);
        }
        Some(p)
    }

    fn pop_oldest(&mut self) -> Option<Pending> {
        let id = *self.order.front()?;
        self.remove(id)
    }
}

/// Datagrams just completed, so a late duplicate fragment does not start them over.
const RECENT: usize = 256;

#[derive(Default)]
pub struct Reassembler {
    senders: HashMap<PeerName, Sender>,
    /// Bytes held over all senders.
    bytes: usize,
    /// The same keys, oldest first, and as a set for the per-fragment lookup.
    recent: VecDeque<(PeerName, u32)>,
    recent_set: HashSet<(PeerName, u32)>,
    stats: FragmentStats,
}

impl std::fmt::Debug for Reassembler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reassembler")
            .field("pending", &self.pending_count())
            .field("bytes", &self.bytes)
            .field("stats", &self.stats)
            .finish()
    }
}

impl Reassembler {
    pub fn stats(&self) -> FragmentStats {
        self.stats
    }

    /// Datagrams in reassembly.
    pub fn pending_count(&self) -> usize {
        self.senders.values().map(|s| s.pending.len()).sum()
    }

    /// Bytes held for datagrams in reassembly.
    pub fn pending_bytes(&self) -> usize {
        self.bytes
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
        let len = payload.len() as u16;
        let s = self.senders.entry(sender).or_default();
        let Some(p) = s.pending.get_mut(&id) else {
            if usize::from(offset) + payload.len() > usize::from(total) {
                self.stats.inconsistent += 1;
                return None;
            }
            if payload.len() == usize::from(total) {
                // A whole datagram in one fragment: nothing to wait for.
                return Some(self.completed(key, payload.to_vec()));
            }
            let p = Pending {
                total,
                first: payload.to_vec(),
                buf: Vec::new(),
                have: vec![(offset, len)],
                got: payload.len(),
                started: now,
            };
            let held = p.held();
            s.pending.insert(id, p);
            s.order.push_back(id);
            s.bytes += held;
            self.bytes += held;
            self.make_room(sender);
            return None;
        };
        let end = |o: u16, l: u16| u32::from(o) + u32::from(l);
        let consistent = p.total == total
            && usize::from(offset) + payload.len() <= usize::from(total)
            && p.have.iter().all(|&(o, l)| {
                // The same fragment again is harmless; any other overlap is a contradiction.
                (o, l) == (offset, len)
                    || end(o, l) <= u32::from(offset)
                    || end(offset, len) <= u32::from(o)
            });
        if !consistent {
            let p = s.remove(id).expect("present");
            self.bytes -= p.held();
            self.stats.inconsistent += 1;
            return None;
        }
        if p.have.contains(&(offset, len)) {
            return None;
        }
        let before = p.held();
        if p.buf.is_empty() {
            // The second fragment: now the datagram is worth its buffer.
            p.buf = vec![0; usize::from(total)];
            let (o, _) = p.have[0];
            let at = usize::from(o);
            p.buf[at..at + p.first.len()].copy_from_slice(&p.first);
            p.first = Vec::new();
        }
        let at = usize::from(offset);
        p.buf[at..at + payload.len()].copy_from_slice(payload);
        p.have.push((offset, len));
        p.got += payload.len();
        // Only the second fragment changes what is held, and only upwards (the whole
        // buffer replaces the first fragment's copy).
        let grown = p.held() - before;
        let complete = p.got >= usize::from(total);
        s.bytes += grown;
        self.bytes += grown;
        if !complete {
            self.make_room(sender);
            return None;
        }
        let p = s.remove(id).expect("present");
        self.bytes -= p.held();
        Some(self.completed(key, p.buf))
    }

    fn completed(&mut self, key: (PeerName, u32), whole: Vec<u8>) -> Vec<u8> {
        if self.recent.len() == RECENT
            && let Some(old) = self.recent.pop_front()
        {
            self.recent_set.remove(&old);
        }
        self.recent.push_back(key);
        self.recent_set.insert(key);
        self.stats.reassembled += 1;
        whole
    }

    /// Gives up on the oldest datagrams of `sender` while it holds too many or too much, and
    /// on the oldest of the biggest holder while everyone together holds too much.
    fn make_room(&mut self, sender: PeerName) {
        if let Some(s) = self.senders.get_mut(&sender) {
            while s.pending.len() > MAX_PENDING_PER_SENDER || s.bytes > MAX_PENDING_BYTES_PER_SENDER
            {
                let Some(p) = s.pop_oldest() else { break };
                self.bytes -= p.held();
                self.stats.incomplete += 1;
            }
        }
        while self.bytes > MAX_PENDING_BYTES {
            // Rare (only past the global budget), so a scan of the senders is fine here.
            let Some(s) = self.senders.values_mut().max_by_key(|s| s.bytes) else {
                break;
            };
            let Some(p) = s.pop_oldest() else { break };
            self.bytes -= p.held();
            self.stats.incomplete += 1;
        }
    }

    /// Gives up on datagrams whose fragments stopped coming.
    pub fn expire(&mut self, now: Instant) {
        let mut freed = 0;
        let mut dropped = 0;
        for s in self.senders.values_mut() {
            while let Some(&id) = s.order.front() {
                let old = s.pending.get(&id).is_some_and(|p| {
                    now.saturating_duration_since(p.started) >= REASSEMBLY_TIMEOUT
                });
                if !old {
                    break;
                }
                let p = s.pop_oldest().expect("present");
                freed += p.held();
                dropped += 1;
            }
        }
        self.senders.retain(|_, s| !s.pending.is_empty());
        self.bytes -= freed;
        self.stats.incomplete += dropped;
    }

    /// Forgets a peer's pending datagrams.
    pub fn forget(&mut self, sender: PeerName) {
        if let Some(s) = self.senders.remove(&sender) {
            self.bytes -= s.bytes;
        }
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
        assert_eq!(r.pending_count(), MAX_PENDING_PER_SENDER);
    }

    #[test]
    fn memory_follows_what_arrived_and_stays_within_the_budgets() {
        let now = Instant::now();
        let mut r = Reassembler::default();
        // Lone forged fragments claiming 64 KiB datagrams hold only their own bytes.
        let me = PeerName::from_u64(1);
        for id in 0..MAX_PENDING_PER_SENDER as u32 {
            r.push(now, me, id, 0, 65_000, &[0; 100]);
        }
        assert!(r.pending_bytes() <= MAX_PENDING_PER_SENDER * 128);
        // Hundreds of senders each nearly finishing big datagrams stay within the global
        // budget; the biggest holders give up their oldest first.
        for sender in 2..300u64 {
            let p = PeerName::from_u64(sender);
            for id in 0..8 {
                r.push(now, p, id, 0, 65_000, &[0; 1400]);
                r.push(now, p, id, 1400, 65_000, &[0; 1400]);
            }
            assert!(
                r.pending_bytes() <= MAX_PENDING_BYTES,
                "{}",
                r.pending_bytes()
            );
        }
        assert!(r.stats().incomplete > 0);
        // Everything expires, and the accounting comes back to zero.
        r.expire(now + REASSEMBLY_TIMEOUT);
        assert_eq!((r.pending_count(), r.pending_bytes()), (0, 0));
    }
}
