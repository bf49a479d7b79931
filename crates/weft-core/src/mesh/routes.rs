//! Unicast and broadcast routes computed from the topology.
//!
//! Two graphs are derived from the peers' connection lists:
//! - [`Variant::Established`]: an edge only where both ends report the connection and both
//!   report it established. The data plane uses this, so a frame never goes down a link whose
//!   overlay has not been proven in both directions.
//! - [`Variant::All`]: an edge where either end reports the connection. Gossip uses this, so
//!   topology spreads even before the overlay is up.
//!
//! Unicast: breadth-first search from us, neighbours visited in peer-name order; the next hop to
//! a destination is the first hop on its BFS path (shortest in hops, ties broken by name).
//!
//! Broadcast from source S: the BFS tree rooted at S (same ordering), where each peer's parent
//! is the first peer to reach it. Our next hops for S are our children in that tree. Every peer
//! that shares our view of the topology computes the same tree, so each peer receives a flooded
//! frame exactly once, from its parent.

use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use weft_proto::PeerName;

use super::topology::Topology;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Variant {
    Established,
    All,
}

/// An undirected graph over peer names with sorted adjacency lists, held densely (peers by
/// index in name order): routes walk it once per change for every destination or source,
/// and at a thousand peers walks through ordered maps cost more than the rest of a change.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Graph {
    names: Vec<PeerName>,
    adj: Vec<Vec<u32>>,
}

/// No parent: the root, or not reached.
const NONE: u32 = u32::MAX;

impl Graph {
    pub fn from_topology(topology: &Topology, variant: Variant) -> Self {
        // Established connections as reported, to find the other end's report in O(1): a
        // scan of the other end's list per connection is quadratic in a peer's connections.
        let established: HashSet<(PeerName, PeerName)> = match variant {
            Variant::All => HashSet::new(),
            Variant::Established => topology
                .peers()
                .flat_map(|p| {
                    p.connections
                        .iter()
                        .filter(|c| c.established)
                        .map(move |c| (p.name, c.peer))
                })
                .collect(),
        };
        let names: Vec<PeerName> = topology.peers().map(|p| p.name).collect();
        let index = |n: &PeerName| names.binary_search(n).ok().map(|i| i as u32);
        let mut edges: Vec<(u32, u32)> = Vec::with_capacity(2 * topology.connections());
        for (i, p) in topology.peers().enumerate() {
            for c in &p.connections {
                let Some(j) = index(&c.peer) else {
                    continue;
                };
                let keep = match variant {
                    Variant::All => true,
                    Variant::Established => {
                        c.established && established.contains(&(c.peer, p.name))
                    }
                };
                if keep {
                    edges.push((i as u32, j));
                    edges.push((j, i as u32));
                }
            }
        }
        edges.sort_unstable();
        edges.dedup();
        let mut adj = vec![Vec::new(); names.len()];
        for (a, b) in edges {
            adj[a as usize].push(b);
        }
        Graph { names, adj }
    }

    fn index(&self, p: &PeerName) -> Option<usize> {
        self.names.binary_search(p).ok()
    }

    /// Every peer in the graph.
    pub fn peers(&self) -> impl Iterator<Item = PeerName> + '_ {
        self.names.iter().copied()
    }

    pub fn neighbours(&self, p: &PeerName) -> impl Iterator<Item = &PeerName> {
        self.index(p)
            .map_or(&[][..], |i| &self.adj[i][..])
            .iter()
            .map(|&j| &self.names[j as usize])
    }

    /// BFS parents from `root` by index: `parent[x]` is the peer that first reached `x`
    /// ([`NONE`] for the root and peers not reached); `None` if `root` is not in the graph.
    fn bfs_parents(&self, root: PeerName) -> Option<(usize, Vec<u32>)> {
        let root = self.index(&root)?;
        let mut parent = vec![NONE; self.names.len()];
        let mut seen = vec![false; self.names.len()];
        seen[root] = true;
        let mut queue = VecDeque::from([root]);
        while let Some(p) = queue.pop_front() {
            for &n in &self.adj[p] {
                if !std::mem::replace(&mut seen[n as usize], true) {
                    parent[n as usize] = p as u32;
                    queue.push_back(n as usize);
                }
            }
        }
        Some((root, parent))
    }

    /// Next hop from `local` to every reachable peer.
    pub fn unicast_from(&self, local: PeerName) -> BTreeMap<PeerName, PeerName> {
        let Some((root, parent)) = self.bfs_parents(local) else {
            return BTreeMap::new();
        };
        // Peers in BFS order would let each take its parent's hop; walking up is as cheap
        // for paths of a few hops and needs no order.
        let mut hop = vec![NONE; parent.len()];
        for dst in 0..parent.len() {
            if parent[dst] == NONE || hop[dst] != NONE {
                continue;
            }
            let mut h = dst;
            while parent[h] as usize != root {
                h = parent[h] as usize;
            }
            hop[dst] = h as u32;
        }
        hop.iter()
            .enumerate()
            .filter(|&(_, &h)| h != NONE)
            .map(|(d, &h)| (self.names[d], self.names[h as usize]))
            .collect()
    }

    /// Our children in `src`'s broadcast tree.
    pub fn broadcast_children(&self, src: PeerName, local: PeerName) -> Vec<PeerName> {
        let (Some((_, parent)), Some(local)) = (self.bfs_parents(src), self.index(&local)) else {
            return Vec::new();
        };
        parent
            .iter()
            .enumerate()
            .filter(|&(_, &p)| p as usize == local)
            .map(|(c, _)| self.names[c])
            .collect()
    }

    /// The peers that have children in `root`'s broadcast tree (one search).
    pub fn tree_parents(&self, root: PeerName) -> BTreeSet<PeerName> {
        self.bfs_parents(root)
            .map_or_else(BTreeSet::new, |(_, parent)| {
                parent
                    .iter()
                    .filter(|&&p| p != NONE)
                    .map(|&p| self.names[p as usize])
                    .collect()
            })
    }
}

/// Our children in every source's broadcast tree, each source's tree computed the first time
/// it is asked for. Computing them all at once is a breadth-first search per peer, quadratic
/// in the mesh: at thousands of peers (or a peer inventing them) it held the control task for
/// tens of seconds on every topology change, while flooded frames come from few sources at a
/// time. The table is shared (`Arc`) by the router and the data plane, and so is what has
/// been computed.
#[derive(Debug, Default)]
pub struct BroadcastTrees {
    graph: Graph,
    local: PeerName,
    /// Children count only if they are data-plane neighbours.
    neighbours: BTreeSet<PeerName>,
    /// Given outright (tests): used as is, before the graph.
    fixed: BTreeMap<PeerName, Vec<PeerName>>,
    computed: Mutex<BTreeMap<PeerName, Arc<[PeerName]>>>,
}

impl BroadcastTrees {
    pub fn new(graph: Graph, local: PeerName, neighbours: BTreeSet<PeerName>) -> Self {
        BroadcastTrees {
            graph,
            local,
            neighbours,
            fixed: BTreeMap::new(),
            computed: Mutex::default(),
        }
    }

    /// Trees given outright, source → our children.
    pub fn fixed(fixed: BTreeMap<PeerName, Vec<PeerName>>) -> Self {
        BroadcastTrees {
            fixed,
            ..Default::default()
        }
    }

    /// Our children (that are neighbours) in `src`'s tree; empty for a source we do not know.
    pub fn children(&self, src: PeerName) -> Arc<[PeerName]> {
        if let Some(f) = self.fixed.get(&src) {
            return f.as_slice().into();
        }
        let mut computed = self.computed.lock().expect("not poisoned");
        computed
            .entry(src)
            .or_insert_with(|| {
                self.graph
                    .broadcast_children(src, self.local)
                    .into_iter()
                    .filter(|k| self.neighbours.contains(k))
                    .collect()
            })
            .clone()
    }
}

impl Clone for BroadcastTrees {
    fn clone(&self) -> Self {
        BroadcastTrees {
            graph: self.graph.clone(),
            local: self.local,
            neighbours: self.neighbours.clone(),
            fixed: self.fixed.clone(),
            computed: Mutex::default(),
        }
    }
}

/// Equal when they would give the same answers, whatever each has computed so far.
impl PartialEq for BroadcastTrees {
    fn eq(&self, other: &Self) -> bool {
        (&self.graph, self.local, &self.neighbours, &self.fixed)
            == (&other.graph, other.local, &other.neighbours, &other.fixed)
    }
}

impl Eq for BroadcastTrees {}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_proto::control::{ConnectionSummary, PeerSummary, TopologyUpdate};

    fn pn(n: u64) -> PeerName {
        PeerName::from_u64(n)
    }

    fn topo(local: u64, edges: &[(u64, u64)], established: bool) -> Topology {
        let mut peers: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
        for &(a, b) in edges {
            peers.entry(a).or_default().push(b);
            peers.entry(b).or_default().push(a);
        }
        let mk = |n: u64, conns: &[u64]| PeerSummary {
            name: pn(n),
            nickname: String::new(),
            uid: n,
            version: 1,
            tcp_port: 6783,
            connections: conns
                .iter()
                .map(|&c| ConnectionSummary {
                    peer: pn(c),
                    addr: "10.0.0.1:6783".parse().unwrap(),
                    outbound: n < c,
                    established,
                })
                .collect(),
        };
        let mut t = Topology::new(mk(local, peers.get(&local).map_or(&[][..], |v| v)));
        t.apply(TopologyUpdate {
            peers: peers
                .iter()
                .filter(|(n, _)| **n != local)
                .map(|(n, c)| mk(*n, c))
                .collect(),
        });
        t
    }

    #[test]
    fn unicast_on_a_line() {
        let t = topo(1, &[(1, 2), (2, 3), (3, 4)], true);
        let g = Graph::from_topology(&t, Variant::Established);
        let hops = g.unicast_from(pn(1));
        assert_eq!(hops[&pn(2)], pn(2));
        assert_eq!(hops[&pn(3)], pn(2));
        assert_eq!(hops[&pn(4)], pn(2));
    }

    #[test]
    fn established_requires_both_ends() {
        let t = topo(1, &[(1, 2)], false);
        let g = Graph::from_topology(&t, Variant::Established);
        assert!(g.unicast_from(pn(1)).is_empty());
        let g = Graph::from_topology(&t, Variant::All);
        assert_eq!(g.unicast_from(pn(1)).len(), 1);
    }

    /// In a full mesh of 5 plus a tail, every peer is reached exactly once from any source
    /// when everyone forwards to its children.
    #[test]
    fn broadcast_tree_reaches_everyone_once() {
        let mut edges = vec![];
        for a in 1..=5 {
            for b in (a + 1)..=5 {
                edges.push((a, b));
            }
        }
        edges.push((5, 6));
        edges.push((6, 7));
        let views: BTreeMap<u64, Graph> = (1..=7)
            .map(|l| {
                (
                    l,
                    Graph::from_topology(&topo(l, &edges, true), Variant::Established),
                )
            })
            .collect();
        for src in 1..=7u64 {
            let mut received: BTreeMap<u64, usize> = BTreeMap::new();
            let mut queue = VecDeque::from([src]);
            while let Some(at) = queue.pop_front() {
                for c in views[&at].broadcast_children(pn(src), pn(at)) {
                    let c = c.as_u64();
                    *received.entry(c).or_default() += 1;
                    queue.push_back(c);
                }
            }
            for p in 1..=7u64 {
                let want = usize::from(p != src);
                assert_eq!(
                    received.get(&p).copied().unwrap_or(0),
                    want,
                    "src {src} peer {p}"
                );
            }
        }
    }

    #[test]
    fn trees_on_demand_give_what_a_search_gives_restricted_to_neighbours() {
        let t = topo(1, &[(1, 2), (1, 3), (2, 4), (3, 4), (4, 5)], true);
        let g = Graph::from_topology(&t, Variant::Established);
        let trees = BroadcastTrees::new(g.clone(), pn(1), BTreeSet::from([pn(2)]));
        for src in 1..=5 {
            let want: Vec<PeerName> = g
                .broadcast_children(pn(src), pn(1))
                .into_iter()
                .filter(|&k| k == pn(2))
                .collect();
            assert_eq!(&*trees.children(pn(src)), &want[..], "src {src}");
            // Asked again: the same answer, from what was kept.
            assert_eq!(&*trees.children(pn(src)), &want[..]);
        }
        assert!(trees.children(pn(99)).is_empty());
        // What was computed does not make two tables differ.
        assert_eq!(trees.clone(), trees);
    }
}
