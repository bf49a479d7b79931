//! The address ring: a CRDT recording which peer owns which part of the allocation range.
//!
//! The range `[start, end)` is cut by tokens; entry `i` owns `[token_i, token_{i+1})`, the last
//! entry up to `end`. There is always an entry at `start`, and tokens are never removed, only
//! inserted by the owner of the range they fall in.
//!
//! Merge is per token: the entry with the higher `(version, peer, free)` wins. That order is
//! total, so merging is commutative, associative and idempotent and all peers converge. Safety
//! comes from who writes: an entry changes only by its owner (donating part of its range,
//! updating its free count) or by an explicit take-over (`rmpeer`, or a leaving peer handing its
//! ranges to an heir), which adds [`TAKEOVER_VERSION_BUMP`] to the version. A merge that would
//! take from us a range in which we hold allocations is refused as a conflict instead.
//!
//! A ring's identity is its range and seed peers. Rings with different identities were created
//! independently (split brain) and never merge.

use std::collections::BTreeMap;
use std::fmt;

use weft_proto::PeerName;
use weft_proto::ipam::{Entry, RingState};

/// Added to the versions of entries taken over from another peer, so that the take-over wins
/// over anything that peer may still have in flight.
pub const TAKEOVER_VERSION_BUMP: u32 = 100;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MergeError {
    #[error(
        "incompatible IP allocation ranges (received {theirs}, ours {ours}); every peer must be launched with the same --ipalloc-range"
    )]
    DifferentRange { ours: String, theirs: String },
    #[error(
        "IP allocation was seeded by different peers (received ring {theirs}, ours {ours}): these are two separately started clusters. To join them, run 'weft reset' on the hosts of one cluster and launch them again with a peer of the other (their containers need new addresses)"
    )]
    DifferentSeeds { ours: String, theirs: String },
    #[error(
        "peer {peer} claims the addresses {from}-{to}, which are allocated here; was 'weft rmpeer' run on more than one host, or on a peer that was still alive?"
    )]
    Stolen {
        peer: PeerName,
        from: String,
        to: String,
    },
    #[error("merged ring would have {0} entries, more than the {MAX_RING_ENTRIES} allowed")]
    TooLarge(usize),
}

/// A ring that cannot be one (from a peer or a state file).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RingError {
    #[error("malformed ring (entries out of order or outside the range)")]
    Malformed,
    #[error("ring of {0} entries: more than the {MAX_RING_ENTRIES} any real cluster makes")]
    TooLarge(usize),
}

/// Entries a ring may have. Each peer holds a handful of spans (more after many donations);
/// a thousand-host cluster has a few thousand entries. The bound keeps a ring state, which
/// travels whole, far below one gossip chunk (about 22 bytes an entry).
pub const MAX_RING_ENTRIES: usize = 32_768;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ring {
    state: RingState,
}

/// An address as dotted quad (for messages).
pub fn ip(a: u64) -> String {
    std::net::Ipv4Addr::from(a as u32).to_string()
}

fn wins(a: &Entry, b: &Entry) -> bool {
    (a.version, a.peer, a.free) > (b.version, b.peer, b.free)
}

/// One contiguous range of the ring and its entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    pub start: u64,
    pub end: u64,
    pub entry: Entry,
}

impl Span {
    pub fn size(&self) -> u64 {
        self.end - self.start
    }
}

impl fmt::Display for Ring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.identity())
    }
}

impl Ring {
    /// A ring for `seeds`, split by recursive halving so each peer gets a CIDR-aligned share:
    /// the first ⌊n/2⌋ peers (sorted) share the lower half, the rest the upper half.
    pub fn create(start: u32, end: u64, mut seeds: Vec<PeerName>) -> Ring {
        seeds.sort();
        seeds.dedup();
        let mut entries = Vec::new();
        fn split(start: u64, end: u64, peers: &[PeerName], out: &mut Vec<Entry>) {
            if peers.len() == 1 || end - start < 2 {
                out.push(Entry {
                    token: start as u32,
                    peer: peers[0],
                    version: 0,
                    free: (end - start).min(u64::from(u32::MAX)) as u32,
                });
                return;
            }
            let mid = start + (end - start) / 2;
            let half = peers.len() / 2;
            split(start, mid, &peers[..half], out);
            split(mid, end, &peers[half..], out);
        }
        if !seeds.is_empty() {
            split(u64::from(start), end, &seeds, &mut entries);
        }
        Ring {
            state: RingState {
                start,
                end,
                seeds,
                entries,
            },
        }
    }

    pub fn from_state(state: RingState) -> Result<Ring, RingError> {
        let ok_order = state.entries.windows(2).all(|w| w[0].token < w[1].token);
        let ok_start = state
            .entries
            .first()
            .is_some_and(|e| e.token == state.start);
        let ok_end = state
            .entries
            .last()
            .is_some_and(|e| u64::from(e.token) < state.end);
        if !(ok_order && ok_start && ok_end) || u64::from(state.start) >= state.end {
            return Err(RingError::Malformed);
        }
        if state.entries.len() > MAX_RING_ENTRIES {
            return Err(RingError::TooLarge(state.entries.len()));
        }
        Ok(Ring { state })
    }

    pub fn state(&self) -> &RingState {
        &self.state
    }

    pub fn start(&self) -> u64 {
        u64::from(self.state.start)
    }

    pub fn end(&self) -> u64 {
        self.state.end
    }

    pub fn seeds(&self) -> &[PeerName] {
        &self.state.seeds
    }

    /// A short stable name for the ring: a hash of its range and seeds.
    pub fn identity(&self) -> String {
        identity(&self.state)
    }

    pub fn spans(&self) -> impl Iterator<Item = Span> + '_ {
        let n = self.state.entries.len();
        (0..n).map(move |i| Span {
            start: u64::from(self.state.entries[i].token),
            end: if i + 1 < n {
                u64::from(self.state.entries[i + 1].token)
            } else {
                self.state.end
            },
            entry: self.state.entries[i],
        })
    }

    pub fn owner_of(&self, addr: u64) -> Option<PeerName> {
        self.spans()
            .find(|s| s.start <= addr && addr < s.end)
            .map(|s| s.entry.peer)
    }

    pub fn spans_of(&self, peer: PeerName) -> impl Iterator<Item = Span> + '_ {
        self.spans().filter(move |s| s.entry.peer == peer)
    }

    /// Addresses owned per peer.
    pub fn sizes(&self) -> BTreeMap<PeerName, u64> {
        let mut m = BTreeMap::new();
        for s in self.spans() {
            *m.entry(s.entry.peer).or_default() += s.size();
        }
        m
    }

    /// Merges `theirs` into ours. `allocated(from, to)` says whether we hold allocations in
    /// `[from, to)`; a merge that would give such addresses to another peer is refused whole.
    /// Returns whether anything changed.
    pub fn merge(
        &mut self,
        theirs: &RingState,
        me: PeerName,
        allocated: impl Fn(u64, u64) -> bool,
    ) -> Result<bool, MergeError> {
        if theirs.start != self.state.start || theirs.end != self.state.end {
            return Err(MergeError::DifferentRange {
                ours: range_str(&self.state),
                theirs: range_str(theirs),
            });
        }
        if theirs.seeds != self.state.seeds {
            return Err(MergeError::DifferentSeeds {
                ours: describe(&self.state),
                theirs: describe(theirs),
            });
        }
        let mut merged: BTreeMap<u32, Entry> =
            self.state.entries.iter().map(|e| (e.token, *e)).collect();
        let mut changed = false;
        for t in &theirs.entries {
            if u64::from(t.token) < u64::from(self.state.start)
                || u64::from(t.token) >= self.state.end
            {
                continue;
            }
            match merged.get(&t.token) {
                Some(o) if !wins(t, o) => {}
                _ => {
                    merged.insert(t.token, *t);
                    changed = true;
                }
            }
        }
        if !changed {
            return Ok(false);
        }
        if merged.len() > MAX_RING_ENTRIES {
            return Err(MergeError::TooLarge(merged.len()));
        }
        let candidate = Ring {
            state: RingState {
                entries: merged.into_values().collect(),
                ..self.state.clone()
            },
        };
        // Nothing we hold may change hands.
        for span in self.spans_of(me) {
            for c in candidate.spans() {
                let (from, to) = (span.start.max(c.start), span.end.min(c.end));
                if from < to && c.entry.peer != me && allocated(from, to) {
                    return Err(MergeError::Stolen {
                        peer: c.entry.peer,
                        from: ip(from),
                        to: ip(to - 1),
                    });
                }
            }
        }
        *self = candidate;
        Ok(true)
    }

    /// Gives `[from, to)`, which `me` owns, to `to_peer`.
    pub fn grant(&mut self, me: PeerName, from: u64, to: u64, to_peer: PeerName) {
        debug_assert!(self.spans_of(me).any(|s| s.start <= from && to <= s.end));
        let set = |ring: &mut Ring, token: u64, peer: PeerName| {
            let token = token as u32;
            match ring.state.entries.binary_search_by_key(&token, |e| e.token) {
                Ok(i) => {
                    let e = &mut ring.state.entries[i];
                    if e.peer != peer {
                        e.peer = peer;
                        e.version = e.version.saturating_add(1);
                    }
                }
                Err(i) => ring.state.entries.insert(
                    i,
                    Entry {
                        token,
                        peer,
                        version: 0,
                        free: 0,
                    },
                ),
            }
        };
        if to < self.state.end && self.owner_of(to) == Some(me) {
            // Keep the rest of our range ours.
            set(self, to, me);
        }
        set(self, from, to_peer);
        self.refresh_free_counts_for(to_peer, from, to);
    }

    fn refresh_free_counts_for(&mut self, peer: PeerName, from: u64, to: u64) {
        if let Ok(i) = self
            .state
            .entries
            .binary_search_by_key(&(from as u32), |e| e.token)
        {
            let e = &mut self.state.entries[i];
            if e.peer == peer {
                e.free = (to - from).min(u64::from(u32::MAX)) as u32;
            }
        }
    }

    /// Records `me`'s free count for the entry at `token`; bumps its version if it changed.
    pub fn set_free(&mut self, me: PeerName, token: u32, free: u32) -> bool {
        match self.state.entries.binary_search_by_key(&token, |e| e.token) {
            Ok(i) if self.state.entries[i].peer == me && self.state.entries[i].free != free => {
                let e = &mut self.state.entries[i];
                e.free = free;
                e.version = e.version.saturating_add(1);
                true
            }
            _ => false,
        }
    }

    /// Moves every entry of `from` to `to`; returns how many addresses moved.
    pub fn transfer(&mut self, from: PeerName, to: PeerName) -> u64 {
        let moved: u64 = self.spans_of(from).map(|s| s.size()).sum();
        for e in &mut self.state.entries {
            if e.peer == from {
                e.peer = to;
                e.version = e.version.saturating_add(TAKEOVER_VERSION_BUMP);
            }
        }
        moved
    }
}

fn range_str(s: &RingState) -> String {
    format!("{}-{}", ip(u64::from(s.start)), ip(s.end.saturating_sub(1)))
}

fn describe(s: &RingState) -> String {
    let seeds: Vec<String> = s.seeds.iter().map(|p| p.to_string()).collect();
    format!("{} seeded by {}", identity(s), seeds.join(","))
}

/// FNV-1a over the range and seeds, as 8 hex digits.
pub fn identity(s: &RingState) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for b in bytes {
            h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    };
    eat(&s.start.to_be_bytes());
    eat(&s.end.to_be_bytes());
    for p in &s.seeds {
        eat(&p.to_bytes());
    }
    format!("{:08x}", h as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const START: u32 = 0x0a20_0000; // 10.32.0.0
    const END: u64 = 0x0a30_0000; // 10.48.0.0

    fn pn(n: u64) -> PeerName {
        PeerName::from_u64(n)
    }

    #[test]
    fn rings_past_the_bound_are_refused() {
        let state = |n: u32| RingState {
            start: 0,
            end: 1 << 24,
            seeds: vec![PeerName::from_u64(1)],
            entries: (0..n)
                .map(|t| Entry {
                    token: t,
                    peer: PeerName::from_u64(1),
                    version: 1,
                    free: 0,
                })
                .collect(),
        };
        let big = MAX_RING_ENTRIES as u32 + 1;
        assert_eq!(
            Ring::from_state(state(big)).err(),
            Some(RingError::TooLarge(big as usize))
        );
        let mut ours = Ring::from_state(state(1)).unwrap();
        assert!(matches!(
            ours.merge(&state(big), PeerName::from_u64(2), |_, _| false),
            Err(MergeError::TooLarge(_))
        ));
    }

    #[test]
    fn create_halves_like_weave() {
        let r = Ring::create(START, END, vec![pn(1), pn(2), pn(3)]);
        let spans: Vec<(String, u64, PeerName)> = r
            .spans()
            .map(|s| (ip(s.start), s.size(), s.entry.peer))
            .collect();
        assert_eq!(
            spans,
            vec![
                ("10.32.0.0".into(), 1 << 19, pn(1)),
                ("10.40.0.0".into(), 1 << 18, pn(2)),
                ("10.44.0.0".into(), 1 << 18, pn(3)),
            ]
        );
        // Seeds are sorted, so every peer builds the same ring from the same set.
        assert_eq!(r, Ring::create(START, END, vec![pn(3), pn(1), pn(2)]));
    }

    #[test]
    fn grant_splits_and_merge_spreads() {
        let mut a = Ring::create(START, END, vec![pn(1)]);
        let mut b = a.clone();
        a.grant(pn(1), 0x0a2c_0000, 0x0a30_0000, pn(2));
        assert_eq!(a.owner_of(0x0a2c_0000), Some(pn(2)));
        assert_eq!(a.owner_of(0x0a2b_ffff), Some(pn(1)));
        assert!(b.merge(a.state(), pn(2), |_, _| false).unwrap());
        assert_eq!(a, b);
        assert!(!b.merge(a.state(), pn(2), |_, _| false).unwrap());
        // A grant from the middle keeps the remainder with the donor.
        a.grant(pn(1), 0x0a28_0000, 0x0a29_0000, pn(3));
        assert_eq!(a.owner_of(0x0a29_0000), Some(pn(1)));
        assert_eq!(a.owner_of(0x0a28_ffff), Some(pn(3)));
    }

    #[test]
    fn different_seeds_or_ranges_refuse_to_merge() {
        let mut a = Ring::create(START, END, vec![pn(1)]);
        let b = Ring::create(START, END, vec![pn(2)]);
        let e = a.merge(b.state(), pn(1), |_, _| false).unwrap_err();
        assert!(matches!(e, MergeError::DifferentSeeds { .. }));
        assert!(e.to_string().contains("weft reset"));
        let c = Ring::create(START, END + 1, vec![pn(1)]);
        assert!(matches!(
            a.merge(c.state(), pn(1), |_, _| false),
            Err(MergeError::DifferentRange { .. })
        ));
    }

    #[test]
    fn takeover_of_allocated_range_is_refused() {
        let mut a = Ring::create(START, END, vec![pn(1), pn(2)]);
        let mut b = a.clone();
        b.transfer(pn(1), pn(2));
        let err = a
            .merge(b.state(), pn(1), |from, _| from <= u64::from(START))
            .unwrap_err();
        assert!(matches!(err, MergeError::Stolen { .. }));
        // With nothing allocated the take-over is accepted.
        assert!(a.merge(b.state(), pn(1), |_, _| false).unwrap());
        assert_eq!(a.sizes().get(&pn(1)), None);
    }

    fn arb_ops() -> impl Strategy<Value = Vec<(u8, u8, u32, u32)>> {
        proptest::collection::vec((0u8..4, 0u8..4, any::<u32>(), any::<u32>()), 0..40)
    }

    proptest! {
        /// Peers granting from their own ranges and merging in any order converge, and the
        /// ring stays well formed.
        #[test]
        fn merges_converge(ops in arb_ops()) {
            let peers: Vec<PeerName> = (1..=4).map(pn).collect();
            let mut rings: Vec<Ring> = (0..4).map(|_| Ring::create(START, END, peers.clone())).collect();
            for (who, other, a, b) in ops {
                let (w, o) = (who as usize, other as usize);
                if (a & 1) == 0 {
                    let spans: Vec<Span> = rings[w].spans_of(peers[w]).collect();
                    if let Some(s) = spans.get(b as usize % spans.len().max(1))
                        && s.size() >= 2 {
                            let mid = s.start + 1 + u64::from(a) % (s.size() - 1);
                            rings[w].grant(peers[w], mid, s.end, peers[o]);
                        }
                } else {
                    let st = rings[o].state().clone();
                    rings[w].merge(&st, peers[w], |_, _| false).unwrap();
                }
                prop_assert!(Ring::from_state(rings[w].state().clone()).is_ok());
            }
            // Everyone merges everyone twice: all equal.
            for _ in 0..2 {
                for i in 0..4 {
                    for j in 0..4 {
                        let st = rings[j].state().clone();
                        rings[i].merge(&st, peers[i], |_, _| false).unwrap();
                    }
                }
            }
            for i in 1..4 {
                prop_assert_eq!(&rings[0], &rings[i]);
            }
            let total: u64 = rings[0].sizes().values().sum();
            prop_assert_eq!(total, END - u64::from(START));
        }
    }
}
