//! The mesh's view of who exists and who is connected to whom.
//!
//! Each peer owns its own [`PeerSummary`] and bumps its version whenever its connection list
//! changes; everyone else only ever replaces an entry with a newer one (higher version, or equal
//! version and higher UID). That makes merging commutative and idempotent, so gossip in any
//! order converges. Two refinements:
//! - an update about *us* that we did not write (a previous incarnation's, or one with a higher
//!   version) makes us jump our version above it, so our current entry wins everywhere;
//! - peers that can no longer be reached from us through reported connections are garbage
//!   collected, so departed peers vanish instead of lingering.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use weft_proto::PeerName;
use weft_proto::control::{ConnectionSummary, PeerSummary, PeerVersion, TopologyUpdate};

/// Limits on what a peer may claim, so one bad update cannot bloat every peer's memory.
pub const MAX_NICKNAME_LEN: usize = 255;
pub const MAX_CONNECTIONS_PER_PEER: usize = 10_000;
/// Peers one topology holds. Far above any mesh weft is meant for (the scale target is a few
/// thousand hosts); a flood of invented peers stops here instead of at the memory limit.
pub const MAX_PEERS: usize = 16_384;
/// Connection entries over all peers: a full topology at this bound is about 9 MB in postcard,
/// well inside one frame even before it is cut into chunks.
pub const MAX_TOTAL_CONNECTIONS: usize = 1 << 19;

#[derive(Debug)]
pub struct Topology {
    local: PeerName,
    /// Entries are shared: what a router relays, queues for neighbours and holds are the
    /// same entry, so a thousand-peer topology is not copied per neighbour and per update.
    peers: BTreeMap<PeerName, Arc<PeerSummary>>,
    /// Connection entries over all peers (kept in step with `peers`).
    connections: usize,
    /// Bumped on every change so that derived data (routes) knows when to recompute.
    generation: u64,
    /// Some peer may have become unreachable since the last garbage collection: a connection
    /// was dropped from an entry, or a new peer came in. Most updates only add connections
    /// or bump versions, and skipping the walk for them keeps a thousand-peer topology cheap.
    unreachable_possible: bool,
    /// How many entries list a connection to each peer: a peer nobody lists is surely
    /// unreachable, which lets a router hold back such entries before the (deferred) walk.
    listed: BTreeMap<PeerName, u32>,
}

/// Moves `listed` counts from the connections of `old` to those of `new`.
fn relink(
    listed: &mut BTreeMap<PeerName, u32>,
    old: &[ConnectionSummary],
    new: &[ConnectionSummary],
) {
    for c in old {
        if let Some(n) = listed.get_mut(&c.peer) {
            *n -= 1;
            if *n == 0 {
                listed.remove(&c.peer);
            }
        }
    }
    for c in new {
        *listed.entry(c.peer).or_default() += 1;
    }
}

/// Whether `new` drops a connection `old` listed (by peer).
fn drops_connection(old: &[ConnectionSummary], new: &[ConnectionSummary]) -> bool {
    let mut kept: Vec<PeerName> = new.iter().map(|c| c.peer).collect();
    kept.sort_unstable();
    old.iter().any(|c| kept.binary_search(&c.peer).is_err())
}

/// What applying an update did.
#[derive(Debug, Default)]
pub struct Applied {
    /// Entries that were new or newer than ours: the part worth relaying.
    pub improved: Vec<Arc<PeerSummary>>,
    /// Some accepted entry lists a connection to a peer we know nothing about.
    pub unknown_referenced: bool,
    /// Entries refused as invalid (bad name, oversize fields).
    pub invalid: usize,
    /// Entries refused because taking them would pass [`MAX_PEERS`] or
    /// [`MAX_TOTAL_CONNECTIONS`].
    pub over_limit: usize,
    /// Someone holds a version of our own entry we did not write; we bumped past it.
    pub overrode_stale_self: bool,
}

impl Topology {
    pub fn new(local: PeerSummary) -> Self {
        let name = local.name;
        let connections = local.connections.len();
        let mut listed = BTreeMap::new();
        relink(&mut listed, &[], &local.connections);
        let mut peers = BTreeMap::new();
        peers.insert(name, Arc::new(local));
        Topology {
            local: name,
            peers,
            connections,
            generation: 0,
            unreachable_possible: false,
            listed,
        }
    }

    pub fn local_name(&self) -> PeerName {
        self.local
    }

    pub fn local(&self) -> &PeerSummary {
        self.peers
            .get(&self.local)
            .expect("local peer is never removed")
    }

    /// Our entry, copied first if a relay or a queue still shares it.
    fn local_mut(&mut self) -> &mut PeerSummary {
        Arc::make_mut(
            self.peers
                .get_mut(&self.local)
                .expect("local peer is never removed"),
        )
    }

    /// Our entry as held, to relay without a copy.
    pub fn local_shared(&self) -> Arc<PeerSummary> {
        self.peers[&self.local].clone()
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Connection entries over all peers.
    pub fn connections(&self) -> usize {
        self.connections
    }

    /// Whether some entry (ours included) lists a connection to `name`.
    pub fn is_listed(&self, name: &PeerName) -> bool {
        self.listed.contains_key(name)
    }

    /// The address `name` is reached at, as a peer connected to it reports it (the port is
    /// its control port only when that connection was dialled to it).
    pub fn address_of(&self, name: &PeerName) -> Option<std::net::SocketAddr> {
        let reporters = self.peers.values().filter(|p| p.name != *name);
        let seen: Vec<_> = reporters
            .flat_map(|p| p.connections.iter())
            .filter(|c| c.peer == *name)
            .collect();
        seen.iter()
            .find(|c| c.outbound)
            .or(seen.first())
            .map(|c| c.addr)
    }

    pub fn get(&self, name: &PeerName) -> Option<&PeerSummary> {
        self.peers.get(name).map(|p| &**p)
    }

    /// An entry as held, to relay or queue without a copy.
    pub fn get_shared(&self, name: &PeerName) -> Option<&Arc<PeerSummary>> {
        self.peers.get(name)
    }

    pub fn peers(&self) -> impl Iterator<Item = &PeerSummary> {
        self.peers.values().map(|p| &**p)
    }

    pub fn len(&self) -> usize {
        self.peers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    /// Replaces our connection list if it changed; returns whether it did.
    pub fn set_local_connections(&mut self, mut connections: Vec<ConnectionSummary>) -> bool {
        connections.sort_by_key(|c| (c.peer, c.addr));
        if self.local().connections == connections {
            return false;
        }
        self.connections = self.connections - self.local().connections.len() + connections.len();
        self.unreachable_possible |= drops_connection(&self.local().connections, &connections);
        let old = &self.peers[&self.local].connections;
        relink(&mut self.listed, old, &connections);
        let local = self.local_mut();
        local.connections = connections;
        local.version = local.version.saturating_add(1);
        self.generation += 1;
        true
    }

    /// Merges a received update; see the module doc for the rule.
    pub fn apply(&mut self, update: TopologyUpdate) -> Applied {
        let mut applied = Applied::default();
        for summary in update.peers {
            if !valid(&summary) {
                applied.invalid += 1;
                continue;
            }
            if summary.name == self.local {
                let local = self.local();
                // Only an entry at least as new as ours can displace it elsewhere; older ones
                // lose to ours everywhere already.
                let foreign = summary.uid != local.uid || summary.version > local.version;
                if foreign && summary.version >= local.version {
                    let v = summary.version.max(local.version) + 1;
                    self.local_mut().version = v;
                    self.generation += 1;
                    applied.overrode_stale_self = true;
                }
                continue;
            }
            let existing = self.peers.get(&summary.name);
            let newer = existing.is_none_or(|existing| {
                summary.version > existing.version
                    || (summary.version == existing.version && summary.uid > existing.uid)
            });
            if !newer {
                continue;
            }
            let replaced = existing.map_or(0, |e| e.connections.len());
            let connections = self.connections - replaced + summary.connections.len();
            if (existing.is_none() && self.peers.len() >= MAX_PEERS)
                || connections > MAX_TOTAL_CONNECTIONS
            {
                applied.over_limit += 1;
                continue;
            }
            self.connections = connections;
            self.unreachable_possible |=
                existing.is_none_or(|e| drops_connection(&e.connections, &summary.connections));
            let old = existing.map_or(&[][..], |e| &e.connections[..]);
            relink(&mut self.listed, old, &summary.connections);
            let summary = Arc::new(summary);
            self.peers.insert(summary.name, summary.clone());
            applied.improved.push(summary);
            self.generation += 1;
        }
        applied.unknown_referenced = applied.improved.iter().any(|s| {
            s.connections
                .iter()
                .any(|c| !self.peers.contains_key(&c.peer))
        });
        applied
    }

    /// Everything we know, for a neighbour that needs it all.
    pub fn full_update(&self) -> TopologyUpdate {
        TopologyUpdate {
            peers: self.peers().cloned().collect(),
        }
    }

    /// Everything we know as encoded payloads of at most `max` bytes each. Entries go in
    /// breadth-first order from us along reported connections, so each chunk's peers hang
    /// off peers the receiver already has (us, and earlier chunks): a garbage collection
    /// between two chunks keeps them rather than dropping what a later chunk would have
    /// linked, and the receiver relays them (it relays only entries someone lists).
    pub fn full_update_chunks(&self, max: usize) -> Vec<Vec<u8>> {
        self.chunks_of(max, |_| true)
    }

    /// The entries newer here than in `theirs` (a neighbour's versions), or missing there,
    /// as [`Topology::full_update_chunks`] orders and cuts them.
    pub fn newer_chunks(&self, theirs: &[PeerVersion], max: usize) -> Vec<Vec<u8>> {
        let theirs: BTreeMap<PeerName, (u64, u64)> = theirs
            .iter()
            .map(|v| (v.name, (v.version, v.uid)))
            .collect();
        self.chunks_of(max, |s| {
            theirs.get(&s.name).is_none_or(|&t| (s.version, s.uid) > t)
        })
    }

    fn chunks_of(&self, max: usize, keep: impl Fn(&PeerSummary) -> bool) -> Vec<Vec<u8>> {
        // Between routers that agree (most answers to versions), no walk at all.
        if !self.peers().any(&keep) {
            return Vec::new();
        }
        let mut order = Vec::with_capacity(self.peers.len());
        let mut seen = BTreeSet::from([self.local]);
        let mut queue = VecDeque::from([self.local]);
        while let Some(p) = queue.pop_front() {
            let Some(s) = self.peers.get(&p) else {
                continue;
            };
            if keep(s) {
                order.push(&**s);
            }
            for c in &s.connections {
                if self.peers.contains_key(&c.peer) && seen.insert(c.peer) {
                    queue.push_back(c.peer);
                }
            }
        }
        // Not reached from us (only between a change and its garbage collection).
        order.extend(self.peers().filter(|p| !seen.contains(&p.name) && keep(p)));
        TopologyUpdate::encode_chunks(order, max)
    }

    /// The version of every entry we hold.
    pub fn versions(&self) -> Vec<PeerVersion> {
        self.peers
            .values()
            .map(|p| PeerVersion {
                name: p.name,
                uid: p.uid,
                version: p.version,
            })
            .collect()
    }

    /// Whether `theirs` holds an entry newer than ours, or one we lack.
    pub fn behind(&self, theirs: &[PeerVersion]) -> bool {
        theirs.iter().any(|v| {
            self.peers
                .get(&v.name)
                .is_none_or(|p| (v.version, v.uid) > (p.version, p.uid))
        })
    }

    /// A digest of [`Topology::versions`]: two routers with the same entries have the same
    /// digest, and different entries differ but for a 64-bit accident (which only delays
    /// the repair to the next change or a new connection).
    pub fn digest(&self) -> u64 {
        fn mix(mut x: u64) -> u64 {
            // splitmix64's finaliser: every input bit moves every output bit.
            x ^= x >> 30;
            x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
            x ^= x >> 27;
            x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
            x ^ (x >> 31)
        }
        self.peers.values().fold(0u64, |acc, p| {
            let h = mix(mix(mix(p.name.as_u64()) ^ p.uid) ^ p.version);
            acc.wrapping_add(h)
        })
    }

    /// Just our own entry: what we broadcast after our connections change.
    pub fn local_update(&self) -> TopologyUpdate {
        TopologyUpdate {
            peers: vec![self.local().clone()],
        }
    }

    /// Removes peers that no chain of reported connections links to us. Returns them.
    pub fn garbage_collect(&mut self) -> Vec<PeerName> {
        if !std::mem::take(&mut self.unreachable_possible) {
            return Vec::new();
        }
        let mut reached = BTreeSet::new();
        let mut queue = VecDeque::from([self.local]);
        reached.insert(self.local);
        while let Some(p) = queue.pop_front() {
            if let Some(s) = self.peers.get(&p) {
                for c in &s.connections {
                    if self.peers.contains_key(&c.peer) && reached.insert(c.peer) {
                        queue.push_back(c.peer);
                    }
                }
            }
        }
        let gone: Vec<PeerName> = self
            .peers
            .keys()
            .filter(|n| !reached.contains(n))
            .copied()
            .collect();
        for n in &gone {
            if let Some(s) = self.peers.remove(n) {
                self.connections -= s.connections.len();
                relink(&mut self.listed, &s.connections, &[]);
            }
        }
        if !gone.is_empty() {
            self.generation += 1;
        }
        gone
    }
}

fn valid(s: &PeerSummary) -> bool {
    s.name != weft_proto::BROADCAST_PEER
        && s.name.as_u64() <= PeerName::MASK
        && s.nickname.len() <= MAX_NICKNAME_LEN
        && s.connections.len() <= MAX_CONNECTIONS_PER_PEER
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pn(n: u64) -> PeerName {
        PeerName::from_u64(n)
    }

    fn summary(name: u64, uid: u64, version: u64, conns: &[u64]) -> PeerSummary {
        PeerSummary {
            name: pn(name),
            nickname: format!("h{name}"),
            uid,
            version,
            tcp_port: 6783,
            connections: conns
                .iter()
                .map(|&c| ConnectionSummary {
                    peer: pn(c),
                    addr: format!("10.0.{}.{}:6783", c / 250 % 250, c % 250)
                        .parse()
                        .unwrap(),
                    outbound: true,
                    established: true,
                })
                .collect(),
        }
    }

    #[test]
    fn newer_version_wins_and_merge_is_idempotent() {
        let mut t = Topology::new(summary(1, 11, 1, &[2]));
        let a = t.apply(TopologyUpdate {
            peers: vec![summary(2, 22, 3, &[1])],
        });
        assert_eq!(a.improved.len(), 1);
        let a = t.apply(TopologyUpdate {
            peers: vec![summary(2, 22, 3, &[1])],
        });
        assert!(a.improved.is_empty(), "same entry twice changes nothing");
        let a = t.apply(TopologyUpdate {
            peers: vec![summary(2, 22, 2, &[])],
        });
        assert!(a.improved.is_empty(), "older entry ignored");
        assert_eq!(t.get(&pn(2)).unwrap().version, 3);
    }

    #[test]
    fn the_tables_stop_at_their_bounds_and_make_room_as_peers_go() {
        let mut t = Topology::new(summary(1, 11, 1, &[2]));
        // Invented peers, all hanging off peer 2 so garbage collection keeps them.
        let fake: Vec<u64> = (3..3 + MAX_PEERS as u64).collect();
        let mut hub = summary(2, 22, 1, &[1]);
        let a = t.apply(TopologyUpdate {
            peers: fake.iter().map(|&n| summary(n, n, 1, &[2])).collect(),
        });
        assert_eq!(t.len(), MAX_PEERS, "the table is full");
        assert_eq!(a.over_limit, 1, "the one past the bound was refused");
        // A known peer may still change within the bounds; a new one may not come in.
        hub.version = 2;
        assert_eq!(t.apply(TopologyUpdate { peers: vec![hub] }).over_limit, 1);
        let known = *fake.first().unwrap();
        assert_eq!(
            t.apply(TopologyUpdate {
                peers: vec![summary(known, known, 2, &[2, 1])]
            })
            .improved
            .len(),
            1
        );
        // Peers nobody links to any more are collected, and their room is free again.
        t.set_local_connections(Vec::new());
        t.garbage_collect();
        assert_eq!(t.len(), 1);
        let a = t.apply(TopologyUpdate {
            peers: vec![summary(2, 22, 5, &[1])],
        });
        assert_eq!((a.improved.len(), a.over_limit), (1, 0));
    }

    #[test]
    fn connections_are_bounded_over_all_peers() {
        let mut t = Topology::new(summary(1, 11, 1, &[]));
        let wide: Vec<u64> = (1000..1000 + MAX_CONNECTIONS_PER_PEER as u64).collect();
        let per = MAX_TOTAL_CONNECTIONS / MAX_CONNECTIONS_PER_PEER;
        let a = t.apply(TopologyUpdate {
            peers: (2..per as u64 + 4)
                .map(|n| summary(n, n, 1, &wide))
                .collect(),
        });
        assert_eq!(a.improved.len(), per);
        assert_eq!(a.over_limit, 2);
        assert!(t.connections <= MAX_TOTAL_CONNECTIONS);
    }

    #[test]
    fn full_state_chunks_each_hang_off_what_came_before() {
        // A line 1-2-3-...-200 seen from 1, cut into small chunks: applying them one at a
        // time, with garbage collection after each, on a fresh peer 0 connected only to 1,
        // loses nobody.
        let n = 200u64;
        let mut t = Topology::new(summary(1, 11, 1, &[0, 2]));
        t.apply(TopologyUpdate {
            peers: (2..=n)
                .rev()
                .map(|i| {
                    let next: Vec<u64> = [i - 1, i + 1].into_iter().filter(|&x| x <= n).collect();
                    summary(i, i, 1, &next)
                })
                .collect(),
        });
        let chunks = t.full_update_chunks(300);
        assert!(chunks.len() > 10);
        let mut fresh = Topology::new(summary(0, 10, 1, &[1]));
        for c in &chunks {
            assert!(c.len() <= 300);
            fresh.apply(TopologyUpdate::decode(c).unwrap());
            assert!(fresh.garbage_collect().is_empty());
        }
        assert_eq!(fresh.len() as u64, n + 1);
    }

    #[test]
    fn stale_entry_about_us_makes_us_bump() {
        let mut t = Topology::new(summary(1, 11, 1, &[]));
        let a = t.apply(TopologyUpdate {
            peers: vec![summary(1, 99, 7, &[])],
        });
        assert!(a.overrode_stale_self);
        assert_eq!(t.local().version, 8);
        assert_eq!(t.local().uid, 11);
        // Seeing the same stale entry again changes nothing: ours is newer now.
        let a = t.apply(TopologyUpdate {
            peers: vec![summary(1, 99, 7, &[])],
        });
        assert!(!a.overrode_stale_self);
        assert_eq!(t.local().version, 8);
    }

    #[test]
    fn unknown_references_are_reported() {
        let mut t = Topology::new(summary(1, 11, 1, &[2]));
        let a = t.apply(TopologyUpdate {
            peers: vec![summary(2, 22, 1, &[1, 3])],
        });
        assert!(a.unknown_referenced);
    }

    #[test]
    fn gc_removes_unreachable() {
        let mut t = Topology::new(summary(1, 11, 1, &[2]));
        t.apply(TopologyUpdate {
            peers: vec![
                summary(2, 22, 1, &[1]),
                summary(3, 33, 1, &[4]),
                summary(4, 44, 1, &[3]),
            ],
        });
        let mut gone = t.garbage_collect();
        gone.sort();
        assert_eq!(gone, vec![pn(3), pn(4)]);
        assert_eq!(t.len(), 2);
    }
}
