//! Reclaiming the address space of deleted nodes: the decisions, free of I/O.
//!
//! Every router records itself (peer name, node name) in one shared list, a ConfigMap that
//! every write updates at the version it read (the API server's optimistic concurrency: a
//! write from a stale read gets 409 and is redone from a fresh one). A peer whose node no
//! longer exists, or whose node now runs another peer (the node lost its state), is a
//! victim. To take over a victim's space a live peer first writes its claim on it into the
//! list; only the peer whose claim is in the list runs `rmpeer`, and then removes the victim
//! and the claim. A claim by a peer that is itself no longer live (not in the list, or its
//! node gone) is void and may be replaced, so a reclaimer that dies half-way does not leave
//! the space stranded; one that restarts with its state finds its own claim and finishes.
//! `rmpeer` moves nothing the second time, so finishing twice is harmless. Space of a peer
//! whose node exists is never claimed (and the router refuses `rmpeer` of a peer it can
//! reach).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// The ConfigMap that holds the list, in kube-system.
pub const CONFIGMAP: &str = "weft-net";
/// Its data key.
pub const KEY: &str = "peers";

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub peer: String,
    pub node: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerList {
    pub peers: Vec<Entry>,
    /// Victim peer → the peer that claimed its space.
    #[serde(default)]
    pub claims: BTreeMap<String, String>,
}

/// What to do about one victim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Write this list (our claim in it), then come back.
    Claim(PeerList),
    /// Ours: run `rmpeer`, then write [`PeerList::finished`].
    Reclaim,
    /// A live peer has it.
    Theirs(String),
    /// Not a victim (any more).
    Nothing,
}

impl PeerList {
    pub fn parse(s: Option<&str>) -> PeerList {
        s.and_then(|s| serde_json::from_str(s).ok())
            .unwrap_or_default()
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("plain data serializes")
    }

    fn has_peer(&self, peer: &str) -> bool {
        self.peers.iter().any(|e| e.peer == peer)
    }

    /// A peer is live if it is in the list and its node exists and names it (its latest).
    fn live(&self, peer: &str, nodes: &BTreeSet<String>) -> bool {
        self.peers.iter().any(|e| {
            e.peer == peer && nodes.contains(&e.node) && self.latest_on(&e.node) == Some(peer)
        })
    }

    /// The peer last registered for `node`.
    fn latest_on(&self, node: &str) -> Option<&str> {
        self.peers
            .iter()
            .rev()
            .find(|e| e.node == node)
            .map(|e| e.peer.as_str())
    }

    /// The list with `me` on `node` in it (last, so it is the node's latest), or `None` if
    /// it is there already as the latest.
    pub fn registered(&self, me: &str, node: &str) -> Option<PeerList> {
        if self.latest_on(node) == Some(me) {
            return None;
        }
        let mut l = self.clone();
        l.peers.retain(|e| e.peer != me);
        l.peers.push(Entry {
            peer: me.into(),
            node: node.into(),
        });
        Some(l)
    }

    /// Whether `me`, registered here once (as its state says), must start without its saved
    /// allocations: it has left the list, so another peer took its space over, and claiming
    /// it again would clash with the new owner (Weave's check-peer-new).
    pub fn reclaimed(&self, me: &str) -> bool {
        !self.has_peer(me)
    }

    /// Peers whose node is gone, or whose node has a newer peer: their space is to be
    /// taken over.
    pub fn victims(&self, nodes: &BTreeSet<String>) -> Vec<String> {
        self.peers
            .iter()
            .filter(|e| !self.live(&e.peer, nodes))
            .map(|e| e.peer.clone())
            .collect()
    }

    /// What `me` should do about `victim`.
    pub fn step(&self, victim: &str, me: &str, nodes: &BTreeSet<String>) -> Step {
        if !self.has_peer(victim) || self.live(victim, nodes) || victim == me {
            return Step::Nothing;
        }
        match self.claims.get(victim) {
            Some(c) if c == me => Step::Reclaim,
            Some(c) if self.live(c, nodes) => Step::Theirs(c.clone()),
            _ if !self.live(me, nodes) => Step::Nothing,
            _ => {
                let mut l = self.clone();
                l.claims.insert(victim.into(), me.into());
                Step::Claim(l)
            }
        }
    }

    /// The list once `victim`'s space has been taken over: it and its claim are gone.
    pub fn finished(&self, victim: &str) -> PeerList {
        let mut l = self.clone();
        l.peers.retain(|e| e.peer != victim);
        l.claims.remove(victim);
        l
    }

    /// Claims on peers that are no victims (any more), or whose victim left the list: gone.
    /// `None` if there are none.
    pub fn tidied(&self, nodes: &BTreeSet<String>) -> Option<PeerList> {
        let stale: Vec<String> = self
            .claims
            .keys()
            .filter(|v| !self.has_peer(v) || self.live(v, nodes))
            .cloned()
            .collect();
        if stale.is_empty() {
            return None;
        }
        let mut l = self.clone();
        for v in stale {
            l.claims.remove(&v);
        }
        Some(l)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn nodes(n: &[&str]) -> BTreeSet<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_gone_node_is_claimed_once_and_a_dead_claim_is_taken_over() {
        let mut l = PeerList::default();
        for (p, n) in [("a", "n1"), ("b", "n2"), ("c", "n3")] {
            l = l.registered(p, n).unwrap();
        }
        assert!(l.registered("a", "n1").is_none());
        let all = nodes(&["n1", "n2", "n3"]);
        assert!(l.victims(&all).is_empty());
        // n3 is deleted: c is a victim; a claims it, then b sees a's claim.
        let two = nodes(&["n1", "n2"]);
        assert_eq!(l.victims(&two), ["c"]);
        let Step::Claim(l2) = l.step("c", "a", &two) else {
            panic!()
        };
        assert_eq!(l2.step("c", "a", &two), Step::Reclaim);
        assert_eq!(l2.step("c", "b", &two), Step::Theirs("a".into()));
        // a's node goes too before it finished: b may take over the claim.
        let one = nodes(&["n2"]);
        assert!(matches!(l2.step("c", "b", &one), Step::Claim(_)));
        // Finished: c and the claim are gone.
        let done = l2.finished("c");
        assert!(done.victims(&two).is_empty());
        assert!(done.claims.is_empty());
    }

    #[test]
    fn a_node_that_lost_its_state_makes_its_old_peer_a_victim() {
        let l = PeerList::default()
            .registered("old", "n1")
            .unwrap()
            .registered("b", "n2")
            .unwrap()
            .registered("new", "n1")
            .unwrap();
        let all = nodes(&["n1", "n2"]);
        assert_eq!(l.victims(&all), ["old"]);
        assert!(matches!(l.step("old", "new", &all), Step::Claim(_)));
        // A node that comes back makes a claim on it void.
        let Step::Claim(claimed) = l.step("old", "b", &all) else {
            panic!()
        };
        let back = claimed.finished("old").registered("c", "n3").unwrap();
        assert!(back.tidied(&nodes(&["n1", "n2", "n3"])).is_none());
        let mut with_claim = back.clone();
        with_claim.claims.insert("c".into(), "b".into());
        assert!(
            with_claim
                .tidied(&nodes(&["n1", "n2", "n3"]))
                .unwrap()
                .claims
                .is_empty()
        );
    }

    /// Many reclaimers against one list with compare-and-swap writes, interleaved at random
    /// and crashing at random (restarting with their state, or gone with their node): every
    /// victim's space is taken over by exactly one peer, and by one that was live when it
    /// claimed.
    #[test]
    fn concurrent_reclaimers_with_crashes_take_each_space_exactly_once() {
        let mut seed = 0x5eed_u64;
        let mut next = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let mut reclaimed = 0;
        for round in 0..500 {
            let peers = 3 + next(6) as usize;
            let names: Vec<String> = (0..peers).map(|i| format!("p{i}")).collect();
            let mut list = PeerList::default();
            let mut version = 0u64;
            for (i, p) in names.iter().enumerate() {
                list = list.registered(p, &format!("n{i}")).unwrap();
            }
            // Some nodes are deleted.
            let mut live_nodes: BTreeSet<String> = (0..peers).map(|i| format!("n{i}")).collect();
            let deleted = 1 + next(peers as u64 - 1) as usize;
            for i in 0..deleted {
                live_nodes.remove(&format!("n{i}"));
            }
            // Who took over whose space, as rmpeer would (it moves only what the victim
            // still owns).
            let mut owner: BTreeMap<String, String> =
                names.iter().map(|p| (p.clone(), p.clone())).collect();
            let mut taken: BTreeMap<String, Vec<String>> = BTreeMap::new();
            // Each reclaimer: (name, the list version it read, the list it read, its step).
            #[derive(Clone)]
            enum Phase {
                Read,
                Write(u64, PeerList),
                Rmpeer(String),
                Finish(String),
            }
            let mut workers: Vec<(String, Phase)> = names[deleted..]
                .iter()
                .map(|p| (p.clone(), Phase::Read))
                .collect();
            for _ in 0..2000 {
                if workers.is_empty() {
                    break;
                }
                let w = next(workers.len() as u64) as usize;
                // Crashes: a restart with state (back to reading), or the node deleted.
                match next(40) {
                    0 => {
                        workers[w].1 = Phase::Read;
                        continue;
                    }
                    1 if live_nodes.len() > 1 => {
                        let name = workers.remove(w).0;
                        let node = format!("n{}", &name[1..]);
                        live_nodes.remove(&node);
                        continue;
                    }
                    _ => {}
                }
                let (me, phase) = workers[w].clone();
                workers[w].1 = match phase {
                    Phase::Read => {
                        let mut plan = Phase::Read;
                        if let Some(t) = list.tidied(&live_nodes) {
                            plan = Phase::Write(version, t);
                        } else {
                            for v in list.victims(&live_nodes) {
                                match list.step(&v, &me, &live_nodes) {
                                    Step::Claim(l) => {
                                        plan = Phase::Write(version, l);
                                        break;
                                    }
                                    Step::Reclaim => {
                                        plan = Phase::Rmpeer(v);
                                        break;
                                    }
                                    _ => {}
                                }
                            }
                        }
                        plan
                    }
                    Phase::Write(read, l) => {
                        // Compare-and-swap: a stale write is refused (409), read again.
                        if read == version {
                            list = l;
                            version += 1;
                        }
                        Phase::Read
                    }
                    Phase::Rmpeer(v) => {
                        // What the victim still owns moves to us (nothing if taken already).
                        let moved: Vec<String> = owner
                            .iter()
                            .filter(|(_, o)| **o == v)
                            .map(|(s, _)| s.clone())
                            .collect();
                        for s in &moved {
                            owner.insert(s.clone(), me.clone());
                        }
                        if !moved.is_empty() {
                            taken.entry(v.clone()).or_default().push(me.clone());
                        }
                        Phase::Finish(v)
                    }
                    Phase::Finish(v) => {
                        let mut f = list.finished(&v);
                        f = f.tidied(&live_nodes).unwrap_or(f);
                        if list.claims.get(&v) == Some(&me) {
                            list = f;
                            version += 1;
                        }
                        Phase::Read
                    }
                };
            }
            for (v, by) in &taken {
                assert_eq!(by.len(), 1, "round {round}: {v}'s space taken by {by:?}");
            }
            reclaimed += taken.len();
            // With a live reclaimer left and time to finish, no space stays with a dead peer.
            if !workers.is_empty() {
                for (space, o) in &owner {
                    let node = format!("n{}", &o[1..]);
                    assert!(
                        live_nodes.contains(&node),
                        "round {round}: {space}'s space stranded with {o}"
                    );
                }
            }
            // Nothing is owned twice (each space has one owner by construction), and no
            // live peer's space was taken.
            for v in taken.keys() {
                let node = format!("n{}", &v[1..]);
                assert!(
                    !live_nodes.contains(&node),
                    "round {round}: {v} taken while its node exists"
                );
            }
        }
        assert!(reclaimed > 500, "only {reclaimed} spaces reclaimed");
    }
}
