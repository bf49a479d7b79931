//! Which peer each Ethernet address lives behind.
//!
//! Entries are learned from the source MAC of every frame: local frames bind the MAC to us,
//! frames from peers bind it to the frame's origin peer (a container that moved hosts is simply
//! re-learned). Entries idle for [`MacCache::EXPIRY`] are dropped; a peer's entries are dropped
//! when the peer leaves the mesh.
//!
//! The cache is bounded ([`MacCache::MAX_ENTRIES`]), and no one owner (one peer, or our own
//! containers) may fill more than its share ([`MacCache::MAX_PER_OWNER`]): a peer or container
//! sending from random source MACs cannot crowd everyone else out. A MAC not learned is only
//! flooded instead of unicast to, as an unknown one is.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use weft_proto::{Mac, PeerName};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MacOwner {
    Local,
    Peer(PeerName),
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    owner: MacOwner,
    last_seen: Instant,
}

#[derive(Debug, Default)]
pub struct MacCache {
    entries: HashMap<Mac, Entry>,
    /// Entries per owner, for the shares.
    counts: HashMap<MacOwner, usize>,
    /// MACs not learned because the cache or their owner's share was full.
    pub refused: u64,
}

impl MacCache {
    pub const EXPIRY: Duration = Duration::from_secs(600);
    /// Entries at most.
    pub const MAX_ENTRIES: usize = 65_536;
    /// Entries one owner may hold at most.
    pub const MAX_PER_OWNER: usize = 8_192;

    fn count(&mut self, owner: MacOwner, up: bool) {
        let c = self.counts.entry(owner).or_default();
        if up {
            *c += 1;
        } else {
            *c = c.saturating_sub(1);
            if *c == 0 {
                self.counts.remove(&owner);
            }
        }
    }

    fn has_room(&self, owner: MacOwner) -> bool {
        self.entries.len() < Self::MAX_ENTRIES
            && self.counts.get(&owner).copied().unwrap_or(0) < Self::MAX_PER_OWNER
    }

    /// Records `mac` behind `owner`; returns the previous owner if it moved. Runs for every
    /// frame: a MAC seen again behind the same owner costs one lookup.
    pub fn learn(&mut self, now: Instant, mac: Mac, owner: MacOwner) -> Option<MacOwner> {
        let old = match self.entries.get_mut(&mac) {
            Some(e) if e.owner == owner => {
                e.last_seen = now;
                return None;
            }
            Some(e) => Some(e.owner),
            None => None,
        };
        if let Some(o) = old {
            self.count(o, false);
        }
        if !self.has_room(owner) {
            // New, or moved to an owner at its share: not kept (a moved one is forgotten
            // rather than sent to where it was).
            if old.is_some() {
                self.entries.remove(&mac);
            }
            self.refused += 1;
            return old;
        }
        self.count(owner, true);
        self.entries.insert(
            mac,
            Entry {
                owner,
                last_seen: now,
            },
        );
        old
    }

    pub fn lookup(&self, mac: &Mac) -> Option<MacOwner> {
        self.entries.get(mac).map(|e| e.owner)
    }

    pub fn expire(&mut self, now: Instant) -> usize {
        let before = self.entries.len();
        self.entries
            .retain(|_, e| now.saturating_duration_since(e.last_seen) < Self::EXPIRY);
        self.recount();
        before - self.entries.len()
    }

    pub fn forget_peer(&mut self, peer: PeerName) {
        self.entries.retain(|_, e| e.owner != MacOwner::Peer(peer));
        self.counts.remove(&MacOwner::Peer(peer));
    }

    fn recount(&mut self) {
        self.counts.clear();
        for e in self.entries.values() {
            *self.counts.entry(e.owner).or_default() += 1;
        }
    }

    /// Every entry, for `weft report`.
    pub fn entries(&self) -> impl Iterator<Item = (Mac, MacOwner, Instant)> + '_ {
        self.entries.iter().map(|(m, e)| (*m, e.owner, e.last_seen))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learn_move_expire() {
        let mut c = MacCache::default();
        let t0 = Instant::now();
        let m = Mac([2, 0, 0, 0, 0, 1]);
        let p = PeerName::from_u64(5);
        assert_eq!(c.learn(t0, m, MacOwner::Local), None);
        assert_eq!(c.learn(t0, m, MacOwner::Peer(p)), Some(MacOwner::Local));
        assert_eq!(c.lookup(&m), Some(MacOwner::Peer(p)));
        assert_eq!(c.expire(t0 + MacCache::EXPIRY), 1);
        c.learn(t0, m, MacOwner::Peer(p));
        c.forget_peer(p);
        assert!(c.is_empty());
    }

    #[test]
    fn one_owner_cannot_fill_the_cache() {
        let mut c = MacCache::default();
        let t0 = Instant::now();
        let flooder = MacOwner::Peer(PeerName::from_u64(6));
        let mac = |i: u32| {
            let b = i.to_be_bytes();
            Mac([2, 0, b[0], b[1], b[2], b[3]])
        };
        for i in 0..(MacCache::MAX_PER_OWNER as u32 + 100) {
            c.learn(t0, mac(i), flooder);
        }
        assert_eq!(c.len(), MacCache::MAX_PER_OWNER);
        assert_eq!(c.refused, 100);
        // Others still learn.
        let m = Mac([2, 9, 9, 9, 9, 9]);
        c.learn(t0, m, MacOwner::Local);
        assert_eq!(c.lookup(&m), Some(MacOwner::Local));
        // Once the flooder's entries expire, its share is free again.
        c.expire(t0 + MacCache::EXPIRY);
        assert!(c.is_empty());
        c.learn(t0 + MacCache::EXPIRY, mac(1), flooder);
        assert_eq!(c.len(), 1);
    }
}
