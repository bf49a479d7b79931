//! Gossip and broadcast: topology updates merged and passed on (to random neighbours, and
//! along each source's broadcast tree, coalesced per neighbour), and the other channels'
//! broadcasts, unicasts and periodic gossip that the IPAM and DNS layers send through the
//! router.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{debug, warn};
use weft_proto::PeerName;
use weft_proto::control::{Channel, ControlMsg, PeerSummary, PeerVersion, TopologyUpdate};

use super::ConnId;
use super::connection::Phase;
use super::router::{Action, Event, Router};
use super::routes::{Graph, Variant};

/// Neighbours off the shared tree told the versions of each batch relayed along it
/// (Plumtree's lazy push): a peer the tree missed (two routers briefly disagreeing about the
/// tree, a connection just shed) hears of it from one of them within a moment instead of
/// at the next anti-entropy round, for a few bytes per entry. Six of a dozen-odd: a host the
/// tree missed is told by about half its neighbours; with three, about one miss in forty
/// was told by none and waited for anti-entropy (500 hosts, 5% restarting at once).
const LAZY_FANOUT: usize = 6;

/// The most entries lazy pushes may have us wait for, however many they name.
const MAX_LAZY_WANTED: usize = 4096;

/// Topology entries waiting to be sent to one neighbour.
#[derive(Debug, Default)]
pub(super) struct Outbox {
    pub gossip: BTreeMap<PeerName, Arc<PeerSummary>>,
    /// Per broadcast source.
    pub broadcast: BTreeMap<PeerName, BTreeMap<PeerName, Arc<PeerSummary>>>,
}

/// `local`'s links in the BFS tree from `root` over the connections each peer reports: the
/// peer that first reached it, and its children (its connections the walk had not reached
/// when it reached `local`; the walk stops there).
fn tree_links(
    topology: &super::topology::Topology,
    root: PeerName,
    local: PeerName,
) -> (Option<PeerName>, Vec<PeerName>) {
    let mut parent = None;
    let mut seen = HashSet::with_capacity(topology.len());
    seen.insert(root);
    let mut queue = VecDeque::from([root]);
    while let Some(p) = queue.pop_front() {
        let Some(summary) = topology.get(&p) else {
            continue;
        };
        if p == local {
            let children = summary
                .connections
                .iter()
                .filter_map(|c| seen.insert(c.peer).then_some(c.peer))
                .collect();
            return (parent, children);
        }
        for c in &summary.connections {
            if seen.insert(c.peer) {
                if c.peer == local {
                    parent = Some(p);
                }
                queue.push_back(c.peer);
            }
        }
    }
    (parent, Vec::new())
}

/// Adds `entries` to `pending`, keeping the newer of two entries for one peer.
pub(super) fn merge_entries(
    pending: &mut BTreeMap<PeerName, Arc<PeerSummary>>,
    entries: &[Arc<PeerSummary>],
) {
    for e in entries {
        match pending.get(&e.name) {
            Some(p) if (p.version, p.uid) >= (e.version, e.uid) => {}
            _ => {
                pending.insert(e.name, e.clone());
            }
        }
    }
}

impl Router {
    /// Merges a topology update from connection `from`; returns the part that was new.
    pub(super) fn apply_topology(
        &mut self,
        now: Instant,
        from: ConnId,
        update: TopologyUpdate,
    ) -> Vec<Arc<PeerSummary>> {
        let applied = self.topology.apply(update);
        if applied.invalid > 0 {
            self.stats.invalid_entries += applied.invalid as u64;
            warn!(
                count = applied.invalid,
                "ignored invalid peer entries in topology update"
            );
        }
        if applied.over_limit > 0 {
            self.stats.over_limit += applied.over_limit as u64;
            debug!(
                count = applied.over_limit,
                "topology full: ignored entries for new peers"
            );
        }
        if applied.overrode_stale_self {
            self.schedule_broadcast(now);
        }
        if applied.unknown_referenced {
            let interval = self.cfg.timing.gossip_request_interval;
            if let Some(c) = self.conns.get_mut(&from)
                && c.last_gossip_request.is_none_or(|t| now >= t + interval)
            {
                c.last_gossip_request = Some(now);
                self.send_msg(
                    from,
                    &ControlMsg::GossipRequest {
                        channel: Channel::TOPOLOGY,
                    },
                );
            }
        }
        if !applied.improved.is_empty() || applied.overrode_stale_self {
            self.topology_changed(now);
        }
        // Entries of peers nobody lists describe peers nobody reaches any more (garbage
        // collection will drop them); relaying them would only make every other peer add
        // and drop them in turn.
        let mut improved = applied.improved;
        improved.retain(|p| self.topology.is_listed(&p.name));
        improved
    }

    /// Our children in `src`'s gossip broadcast tree: BFS from `src` over the connections
    /// each peer reports (any state), neighbours in report order; our children are those of
    /// our connections the walk had not reached when it reached us.
    ///
    /// Trees must follow the topology exactly: two routers that disagree about a tree can
    /// both leave a peer out, and it then waits for anti-entropy. So the walk runs again
    /// after every change, and is kept cheap: it stops when it reaches us, and marks peers
    /// in a hash set (a thousand-peer walk per source per update through ordered maps was
    /// what a busy router spent most of its time on).
    fn gossip_children(&mut self, src: PeerName) -> Vec<PeerName> {
        let generation = self.topology.generation();
        if self.trees.0 != generation {
            self.trees = (generation, BTreeMap::new());
        }
        if let Some(c) = self.trees.1.get(&src) {
            return c.clone();
        }
        let children = if self.topology.get(&src).is_some() {
            tree_links(&self.topology, src, self.cfg.name).1
        } else {
            Vec::new()
        };
        self.trees.1.insert(src, children.clone());
        children
    }

    /// Our neighbours in the one tree that carries every source's topology updates in a
    /// partial view: the BFS tree from the peer with the lowest name, over the connections
    /// each peer reports (as [`Router::gossip_children`]). An update goes to every tree
    /// neighbour but the one it came from.
    ///
    /// A tree per source costs a walk per source after every change: at a thousand peers,
    /// with hundreds of sources changing at once as a mesh forms, that was all a router did.
    /// One tree costs one walk per change. Each update still crosses each tree edge once;
    /// only improvements are relayed, so a moment of disagreement about the tree cannot
    /// make an update circle, and what it misses anti-entropy (digests) repairs.
    fn shared_tree_neighbours(&mut self) -> Vec<PeerName> {
        let generation = self.topology.generation();
        if self.shared_tree.0 == generation {
            return self.shared_tree.1.clone();
        }
        let out: Vec<PeerName> = match self.topology.peers().next().map(|p| p.name) {
            Some(root) => {
                let (parent, children) = tree_links(&self.topology, root, self.cfg.name);
                parent.into_iter().chain(children).collect()
            }
            None => Vec::new(),
        };
        self.shared_tree = (generation, out.clone());
        out
    }

    /// Topology entries asked for because the broadcast tree missed them.
    pub fn tree_repairs(&self) -> u64 {
        self.stats.tree_repairs
    }

    /// Our neighbours in the shared broadcast tree (for diagnostics: the scale bench names
    /// them when an entry does not spread).
    pub fn tree_neighbours(&self) -> Vec<PeerName> {
        match self.topology.peers().next().map(|p| p.name) {
            Some(root) => {
                let (parent, children) = tree_links(&self.topology, root, self.cfg.name);
                parent.into_iter().chain(children).collect()
            }
            None => Vec::new(),
        }
    }

    /// Queues topology entries for our children in `src`'s broadcast tree. Which neighbours
    /// those are is settled when the outbox goes out: the tree is then walked once for all
    /// the updates from `src` that came in meanwhile (in a busy mesh, dozens), over the
    /// topology as it stands then.
    pub(super) fn relay_topology(
        &mut self,
        now: Instant,
        src: PeerName,
        entries: &[Arc<PeerSummary>],
        from: Option<ConnId>,
    ) {
        merge_entries(self.relays.entry((src, from)).or_default(), entries);
        self.outbox_due(now);
    }

    pub(super) fn outbox_due(&mut self, now: Instant) {
        if (!self.outbox.is_empty() || !self.relays.is_empty()) && self.outbox_at.is_none() {
            self.outbox_at = Some(now + self.paced(self.cfg.timing.gossip_coalesce));
        }
    }

    pub(super) fn flush_outbox(&mut self) {
        let relays = std::mem::take(&mut self.relays);
        let shared = self.degree_target().is_some();
        let mut children = (None, Vec::new());
        let mut lazy: BTreeMap<ConnId, BTreeMap<PeerName, PeerVersion>> = BTreeMap::new();
        for ((src, from), entries) in relays {
            if shared {
                if children.0.is_none() {
                    children = (Some(src), self.shared_tree_neighbours());
                }
            } else if children.0 != Some(src) {
                children = (Some(src), self.gossip_children(src));
            }
            let entries: Vec<Arc<PeerSummary>> = entries.into_values().collect();
            if shared {
                let mut off: Vec<ConnId> = self
                    .by_peer
                    .iter()
                    .filter(|&(name, id)| {
                        !children.1.contains(name)
                            && Some(*id) != from
                            && self.conns.get(id).is_some_and(|c| c.version() >= 3)
                    })
                    .map(|(_, &id)| id)
                    .collect();
                self.rng.shuffle(&mut off);
                off.truncate(LAZY_FANOUT);
                for id in off {
                    let told = lazy.entry(id).or_default();
                    for e in &entries {
                        let v = PeerVersion {
                            name: e.name,
                            uid: e.uid,
                            version: e.version,
                        };
                        match told.get(&e.name) {
                            Some(t) if (t.version, t.uid) >= (v.version, v.uid) => {}
                            _ => {
                                told.insert(e.name, v);
                            }
                        }
                    }
                }
            }
            for child in &children.1 {
                if let Some(&id) = self.by_peer.get(child)
                    && Some(id) != from
                {
                    let ob = self.outbox.entry(id).or_default();
                    merge_entries(ob.broadcast.entry(src).or_default(), &entries);
                }
            }
        }
        for (id, ob) in std::mem::take(&mut self.outbox) {
            if !self.conns.get(&id).is_some_and(|c| c.phase == Phase::Ready) {
                continue;
            }
            let chunk = self.cfg.gossip_chunk;
            for (src, entries) in ob.broadcast {
                for payload in TopologyUpdate::encode_chunks(entries.values().map(|e| &**e), chunk)
                {
                    self.send_msg(
                        id,
                        &ControlMsg::GossipBroadcast {
                            channel: Channel::TOPOLOGY,
                            src,
                            payload,
                        },
                    );
                }
            }
            if !ob.gossip.is_empty() {
                self.send_topology_gossip(id, ob.gossip.into_values().collect());
            }
        }
        for (id, told) in lazy {
            if self.conns.get(&id).is_some_and(|c| c.phase == Phase::Ready) {
                self.send_msg(
                    id,
                    &ControlMsg::TopologyHave {
                        versions: told.into_values().collect(),
                        want: false,
                    },
                );
            }
        }
    }

    /// How long an entry a lazy push told us of may take to come along the tree before we
    /// ask for it: a few coalescing delays (each hop holds relays that long) and a margin.
    fn lazy_wait(&self) -> Duration {
        self.paced(self.cfg.timing.gossip_coalesce) * 4 + Duration::from_millis(250)
    }

    /// A neighbour relayed entries of these versions along the tree; we wait a moment for
    /// those we are behind on.
    pub(super) fn note_lazy_push(&mut self, now: Instant, id: ConnId, versions: &[PeerVersion]) {
        let deadline = now + self.lazy_wait();
        let mut noted = false;
        for v in versions {
            let told = (v.version, v.uid);
            if v.name == self.cfg.name
                || self
                    .topology
                    .get(&v.name)
                    .is_some_and(|p| (p.version, p.uid) >= told)
            {
                continue;
            }
            let at = match self.lazy_wanted.get(&v.name) {
                Some(&(version, uid, _, _)) if (version, uid) >= told => continue,
                Some(w) => w.3,
                None if self.lazy_wanted.len() >= MAX_LAZY_WANTED => continue,
                None => deadline,
            };
            self.lazy_wanted.insert(v.name, (v.version, v.uid, id, at));
            noted = true;
        }
        if noted && self.lazy_at.is_none_or(|a| a > deadline) {
            self.lazy_at = Some(deadline);
        }
    }

    /// Asks the neighbours that told us of entries the tree has not brought since.
    pub(super) fn ask_for_missed(&mut self, now: Instant) {
        let mut asks: BTreeMap<ConnId, Vec<PeerVersion>> = BTreeMap::new();
        let mut next: Option<Instant> = None;
        for (name, (version, uid, id, at)) in std::mem::take(&mut self.lazy_wanted) {
            let held = self.topology.get(&name).map(|p| (p.version, p.uid));
            if held.is_some_and(|h| h >= (version, uid)) {
                continue;
            }
            if at > now {
                self.lazy_wanted.insert(name, (version, uid, id, at));
                next = Some(next.map_or(at, |n| n.min(at)));
                continue;
            }
            let (version, uid) = held.unwrap_or((0, 0));
            asks.entry(id)
                .or_default()
                .push(PeerVersion { name, uid, version });
        }
        self.lazy_at = next;
        for (id, versions) in asks {
            if !self.conns.get(&id).is_some_and(|c| c.phase == Phase::Ready) {
                continue;
            }
            debug!(count = versions.len(), "asking for entries the tree missed");
            self.stats.tree_repairs += versions.len() as u64;
            self.send_msg(
                id,
                &ControlMsg::TopologyHave {
                    versions,
                    want: true,
                },
            );
        }
    }

    /// Answers a neighbour's want: our entries newer than the versions it holds. At most a
    /// topology's worth a second per neighbour, so that asking in a loop gets no more than
    /// asking for the full state would.
    pub(super) fn send_wanted(&mut self, now: Instant, id: ConnId, theirs: &[PeerVersion]) {
        let budget = self.topology.len();
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        let window = c.want_sent.get_or_insert((now, 0));
        if now >= window.0 + super::router::FULL_REPLY_INTERVAL {
            *window = (now, 0);
        }
        let room = budget.saturating_sub(window.1);
        let mut newer: Vec<Arc<PeerSummary>> = Vec::new();
        let mut taken: HashSet<PeerName> = HashSet::new();
        for v in theirs {
            if newer.len() >= room {
                break;
            }
            if let Some(p) = self.topology.get_shared(&v.name)
                && (p.version, p.uid) > (v.version, v.uid)
                && taken.insert(p.name)
            {
                newer.push(p.clone());
            }
        }
        window.1 += newer.len();
        self.send_topology_gossip(id, newer);
    }

    /// Sends `entries` to neighbour `id` as topology gossip, cut to the gossip chunk size.
    fn send_topology_gossip(&mut self, id: ConnId, entries: Vec<Arc<PeerSummary>>) {
        let entries = entries.iter().map(|e| &**e);
        for payload in TopologyUpdate::encode_chunks(entries, self.cfg.gossip_chunk) {
            self.send_msg(
                id,
                &ControlMsg::Gossip {
                    channel: Channel::TOPOLOGY,
                    payload,
                },
            );
        }
    }

    /// A random subset of connected neighbours for gossip: about 2·log2(peers) of them.
    pub(super) fn random_neighbours(&mut self, exclude: Option<ConnId>) -> Vec<ConnId> {
        let mut ids: Vec<ConnId> = self
            .by_peer
            .values()
            .copied()
            .filter(|id| Some(*id) != exclude)
            .collect();
        let n = self.topology.len().max(2) as f64;
        let k = ((2.0 * n.log2()).ceil() as usize).max(2);
        self.rng.shuffle(&mut ids);
        ids.truncate(k);
        ids
    }

    // ---- gossip channels other than topology ---------------------------------------------

    pub(super) fn remote_name(&self, id: ConnId) -> PeerName {
        self.conns
            .get(&id)
            .and_then(|c| c.remote.as_ref())
            .map_or(weft_proto::BROADCAST_PEER, |r| r.name)
    }

    /// Broadcasts `payload` from us to every peer (along our tree).
    pub fn broadcast(&mut self, channel: Channel, payload: Vec<u8>) {
        let src = self.cfg.name;
        self.relay_broadcast(channel, src, payload, None);
    }

    /// Passes a broadcast from `src` on to our children in its tree (not back to `from`).
    pub fn relay_broadcast(
        &mut self,
        channel: Channel,
        src: PeerName,
        payload: Vec<u8>,
        from: Option<PeerName>,
    ) {
        let body = ControlMsg::GossipBroadcast {
            channel,
            src,
            payload,
        }
        .encode_body();
        for child in self.gossip_children(src) {
            if Some(child) == from {
                continue;
            }
            if let Some(&id) = self.by_peer.get(&child) {
                self.send_body(id, body.clone());
            }
        }
    }

    /// Sends `payload` to `dst`, hop by hop. Returns false if there is no route.
    pub fn unicast(&mut self, channel: Channel, dst: PeerName, payload: Vec<u8>) -> bool {
        let src = self.cfg.name;
        self.send_unicast(ControlMsg::GossipUnicast {
            channel,
            src,
            dst,
            payload,
        })
    }

    pub(super) fn send_unicast(&mut self, msg: ControlMsg) -> bool {
        let ControlMsg::GossipUnicast { dst, .. } = &msg else {
            return false;
        };
        let dst = *dst;
        let hop = if self.by_peer.contains_key(&dst) {
            Some(dst)
        } else {
            let generation = self.topology.generation();
            if self.unicast_all.0 != generation {
                let g = Graph::from_topology(&self.topology, Variant::All);
                self.unicast_all = (generation, g.unicast_from(self.cfg.name));
            }
            self.unicast_all.1.get(&dst).copied()
        };
        match hop.and_then(|h| self.by_peer.get(&h)).copied() {
            Some(id) => {
                self.send_msg(id, &msg);
                true
            }
            None => {
                debug!(%dst, "no route for a gossip unicast; dropped");
                false
            }
        }
    }

    /// Sends the full state `payloads` of `channel` to one neighbour.
    pub fn gossip_to(&mut self, peer: PeerName, channel: Channel, payloads: Vec<Vec<u8>>) {
        if let Some(&id) = self.by_peer.get(&peer)
            && self.full_state_may_send(id, channel)
        {
            for payload in payloads {
                self.send_msg(id, &ControlMsg::Gossip { channel, payload });
            }
            self.full_state_sent(id, channel);
        }
    }

    /// Sends the full state `payloads` of `channel` to a few random neighbours (periodic
    /// gossip).
    pub fn gossip_random(&mut self, channel: Channel, payloads: Vec<Vec<u8>>) {
        // Protocol-2 neighbours get a digest and ask for the state only if theirs differs.
        let (digest, full): (Vec<ConnId>, Vec<ConnId>) = self
            .random_neighbours(None)
            .into_iter()
            .partition(|&id| self.speaks_versions(id));
        if !digest.is_empty() {
            let body = ControlMsg::StateDigest {
                channel,
                digest: weft_proto::control::state_digest(&payloads),
            }
            .encode_body();
            for id in digest {
                self.send_body(id, body.clone());
            }
        }
        let targets: Vec<ConnId> = full
            .into_iter()
            .filter(|&id| self.full_state_may_send(id, channel))
            .collect();
        for payload in payloads {
            let body = ControlMsg::Gossip { channel, payload }.encode_body();
            for &id in &targets {
                self.send_body(id, body.clone());
            }
        }
        for id in targets {
            self.full_state_sent(id, channel);
        }
    }

    /// Asks `peer` for its full state of `channel` (its digest differed from ours).
    pub fn request_state(&mut self, peer: PeerName, channel: Channel) {
        if let Some(&id) = self.by_peer.get(&peer) {
            self.send_msg(id, &ControlMsg::GossipRequest { channel });
        }
    }

    /// Whether a full state of `channel` may be queued on `id` now. A neighbour that reads
    /// slower than we gossip would otherwise collect copy after copy in our queue; while one
    /// is unwritten the next is held back, and the newest goes once that one is out.
    pub(super) fn full_state_may_send(&mut self, id: ConnId, channel: Channel) -> bool {
        let Some(c) = self.conns.get_mut(&id) else {
            return false;
        };
        if !c.full_unsent.contains(&channel) {
            return true;
        }
        if !c.full_held.contains(&channel) {
            c.full_held.push(channel);
        }
        self.stats.full_states_held += 1;
        false
    }

    /// Notes a full state of `channel` queued on `id`; the shell tells us when it is written.
    pub(super) fn full_state_sent(&mut self, id: ConnId, channel: Channel) {
        if let Some(c) = self.conns.get_mut(&id) {
            c.full_unsent.push(channel);
            self.actions.push_back(Action::Mark { conn: id, channel });
        }
    }

    pub(super) fn full_state_written(&mut self, id: ConnId, channel: Channel) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        c.full_unsent.retain(|&x| x != channel);
        let before = c.full_held.len();
        c.full_held.retain(|&x| x != channel);
        if c.full_held.len() == before {
            return;
        }
        if channel == Channel::TOPOLOGY {
            self.send_full_topology(id);
        } else if let Some(peer) = c.remote.as_ref().map(|r| r.name) {
            self.events.push_back(Event::FullStateDue { peer, channel });
        }
    }

    /// The size full states are cut to.
    pub fn gossip_chunk(&self) -> usize {
        self.cfg.gossip_chunk
    }
}
