//! Which peer each Ethernet address lives behind.
//!
//! Entries are learned from the source MAC of every frame: local frames bind the MAC to us,
//! frames from peers bind it to the frame's origin peer (a container that moved hosts is simply
//! re-learned). Entries idle for [`MacCache::EXPIRY`] are dropped; a peer's entries are dropped
//! when the peer leaves the mesh.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use weft_proto::{Mac, PeerName};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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
}

impl MacCache {
    pub const EXPIRY: Duration = Duration::from_secs(600);

    /// Records `mac` behind `owner`; returns the previous owner if it moved.
    pub fn learn(&mut self, now: Instant, mac: Mac, owner: MacOwner) -> Option<MacOwner> {
        match self.entries.get_mut(&mac) {
            Some(e) if e.owner == owner => {
                e.last_seen = now;
                None
            }
            Some(e) => {
                let old = e.owner;
                *e = Entry {
                    owner,
                    last_seen: now,
                };
                Some(old)
            }
            None => {
                self.entries.insert(
                    mac,
                    Entry {
                        owner,
                        last_seen: now,
                    },
                );
                None
            }
        }
    }

    pub fn lookup(&self, mac: &Mac) -> Option<MacOwner> {
        self.entries.get(mac).map(|e| e.owner)
    }

    pub fn expire(&mut self, now: Instant) -> usize {
        let before = self.entries.len();
        self.entries
            .retain(|_, e| now.saturating_duration_since(e.last_seen) < Self::EXPIRY);
        before - self.entries.len()
    }

    pub fn forget_peer(&mut self, peer: PeerName) {
        self.entries.retain(|_, e| e.owner != MacOwner::Peer(peer));
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
}
