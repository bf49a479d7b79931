//! Single-decree Paxos over gossip: peers that start together agree on which peers seed the
//! address ring, so that exactly one ring is created even if they start in any order or some
//! start late (the fix for Weave-style split brain within one cluster).
//!
//! Every elector is proposer, acceptor and learner at once. Messages are replaced by state:
//! each node publishes its own [`Claims`] (highest promise, highest accepted proposal and its
//! value) and gossip carries everyone's latest claims. Each node only ever writes its own
//! claims, and only increases them, so merging is "keep the newer claims per node".
//!
//! - Acceptor: promise the highest proposal seen; accept any accepted proposal at least as
//!   high as our promise.
//! - Proposer: pick a round above anything seen and promise it ourselves; once a quorum has
//!   promised it, accept it with the value of the highest proposal any of them accepted (or our
//!   own value: the peers we know).
//! - Learner: a value is chosen when a quorum has accepted the same proposal.

use std::collections::BTreeMap;

use weft_proto::PeerName;
use weft_proto::ipam::{Claims, NodeId, ProposalId};

/// Consensus participants (and seeds in a claimed value) one peer keeps track of: one per
/// peer incarnation seen before the ring exists.
pub const MAX_PAXOS_CLAIMS: usize = crate::mesh::topology::MAX_PEERS;

#[derive(Clone, Debug)]
pub struct Paxos {
    me: NodeId,
    quorum: usize,
    /// Observers learn but never vote or propose.
    elector: bool,
    knows: BTreeMap<NodeId, Claims>,
    proposing: bool,
}

fn newer(a: &Claims, b: &Claims) -> bool {
    (a.promise, a.accepted) > (b.promise, b.accepted)
}

impl Paxos {
    pub fn new(me: NodeId, quorum: usize, elector: bool) -> Self {
        let mut knows = BTreeMap::new();
        if elector {
            knows.insert(me, Claims::default());
        }
        Paxos {
            me,
            quorum: quorum.max(1),
            elector,
            knows,
            proposing: false,
        }
    }

    pub fn quorum(&self) -> usize {
        self.quorum
    }

    /// Electors known (including us).
    pub fn known(&self) -> usize {
        self.knows.len()
    }

    pub fn is_elector(&self) -> bool {
        self.elector
    }

    pub fn is_proposing(&self) -> bool {
        self.proposing
    }

    /// Someone has made a proposal (consensus is under way).
    pub fn in_progress(&self) -> bool {
        self.knows.values().any(|c| c.promise.is_some())
    }

    pub fn state(&self) -> Vec<(NodeId, Claims)> {
        self.knows.iter().map(|(k, v)| (*k, v.clone())).collect()
    }

    /// Merges claims from gossip; returns whether we learned something.
    pub fn update(&mut self, claims: &[(NodeId, Claims)]) -> bool {
        let mut changed = false;
        for (node, c) in claims {
            if *node == self.me {
                continue;
            }
            match self.knows.get(node) {
                Some(old) if !newer(c, old) => {}
                None if self.knows.len() >= MAX_PAXOS_CLAIMS => {}
                _ => {
                    self.knows.insert(*node, c.clone());
                    changed = true;
                }
            }
        }
        changed
    }

    fn highest_round(&self) -> u64 {
        self.knows
            .values()
            .flat_map(|c| [c.promise, c.accepted])
            .flatten()
            .map(|p| p.round)
            .max()
            .unwrap_or(0)
    }

    /// Starts (or restarts, with a higher round) a proposal.
    pub fn propose(&mut self) {
        if !self.elector {
            return;
        }
        let id = ProposalId {
            round: self.highest_round() + 1,
            proposer: self.me,
        };
        let me = self.knows.entry(self.me).or_default();
        me.promise = Some(id);
        self.proposing = true;
    }

    /// Advances our own claims; returns whether they changed (and should be gossiped).
    pub fn think(&mut self) -> bool {
        if !self.elector {
            return false;
        }
        let mut ours = self.knows.get(&self.me).cloned().unwrap_or_default();
        let before = ours.clone();
        // Acceptor, phase 1: promise the highest proposal anyone has made.
        let highest_promise = self.knows.values().filter_map(|c| c.promise).max();
        if highest_promise > ours.promise {
            ours.promise = highest_promise;
        }
        // Acceptor, phase 2: accept the highest accepted proposal not below our promise.
        if let Some((id, value)) = self
            .knows
            .values()
            .filter_map(|c| c.accepted.map(|a| (a, c.value.clone())))
            .filter(|(a, _)| Some(*a) >= ours.promise)
            .max_by_key(|(a, _)| *a)
            && Some(id) > ours.accepted
        {
            ours.accepted = Some(id);
            ours.value = value;
        }
        // Proposer: a quorum promised our proposal → accept it with the safe value.
        if self.proposing
            && let Some(p) = ours.promise
            && p.proposer == self.me
            && ours.accepted != Some(p)
        {
            let promised: Vec<&Claims> = self
                .knows
                .iter()
                .filter(|(n, c)| **n != self.me && c.promise == Some(p))
                .map(|(_, c)| c)
                .chain(std::iter::once(&ours))
                .collect();
            if promised.len() >= self.quorum {
                let prior = promised
                    .iter()
                    .filter_map(|c| c.accepted.map(|a| (a, c.value.clone())))
                    .max_by_key(|(a, _)| *a);
                let value = match prior {
                    Some((_, v)) => v,
                    None => {
                        let mut v: Vec<PeerName> = self.knows.keys().map(|n| n.name).collect();
                        v.sort();
                        v.dedup();
                        v
                    }
                };
                ours.accepted = Some(p);
                ours.value = value;
            }
        }
        let changed = ours != before;
        self.knows.insert(self.me, ours);
        changed
    }

    /// The chosen value, once a quorum has accepted one proposal.
    pub fn consensus(&self) -> Option<Vec<PeerName>> {
        let mut count: BTreeMap<ProposalId, (usize, &Vec<PeerName>)> = BTreeMap::new();
        for c in self.knows.values() {
            if let Some(a) = c.accepted {
                let e = count.entry(a).or_insert((0, &c.value));
                e.0 += 1;
            }
        }
        count
            .into_values()
            .find(|(n, _)| *n >= self.quorum)
            .map(|(_, v)| v.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn node(n: u64) -> NodeId {
        NodeId {
            name: PeerName::from_u64(n),
            uid: n * 7,
        }
    }

    /// Random gossip between `n` electors where `proposers` propose: everyone who learns a
    /// value learns the same one.
    fn run(seed: u64, n: usize, proposers: &[usize], quorum: usize) -> Vec<Option<Vec<PeerName>>> {
        let mut rng = Rng::new(seed);
        let mut ps: Vec<Paxos> = (0..n)
            .map(|i| Paxos::new(node(i as u64 + 1), quorum, true))
            .collect();
        for &p in proposers {
            ps[p].propose();
        }
        for step in 0..2000 {
            let a = rng.below(n as u64) as usize;
            let b = rng.below(n as u64) as usize;
            let st = ps[a].state();
            ps[b].update(&st);
            ps[b].think();
            // Proposers that are not done retry now and then (duelling proposers).
            if step % 97 == 0 {
                for &p in proposers {
                    if ps[p].consensus().is_none() && rng.below(3) == 0 {
                        ps[p].propose();
                        ps[p].think();
                    }
                }
            }
        }
        ps.iter().map(|p| p.consensus()).collect()
    }

    #[test]
    fn all_learners_agree() {
        for seed in 0..200 {
            let n = 2 + (seed % 6) as usize;
            let quorum = n / 2 + 1;
            let proposers: Vec<usize> =
                (0..n).filter(|i| (seed >> i) & 1 == 1 || *i == 0).collect();
            let learned = run(seed, n, &proposers, quorum);
            let values: Vec<&Vec<PeerName>> = learned.iter().flatten().collect();
            assert!(!values.is_empty(), "seed {seed}: nobody learned anything");
            for v in &values {
                assert_eq!(*v, values[0], "seed {seed}: disagreement");
            }
        }
    }

    #[test]
    fn no_quorum_no_value() {
        // Two of five can never decide.
        let learned = run(1, 2, &[0, 1], 3);
        assert!(learned.iter().all(Option::is_none));
    }

    #[test]
    fn single_node_quorum_decides_alone() {
        let mut p = Paxos::new(node(1), 1, true);
        p.propose();
        p.think();
        assert_eq!(p.consensus(), Some(vec![PeerName::from_u64(1)]));
    }
}
