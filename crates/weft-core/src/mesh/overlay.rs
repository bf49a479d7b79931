//! How many control connections discovery makes: every peer to every other (as Weave did) up
//! to [`RouterConfig::full_mesh_peers`] peers; past that, a partial view.
//!
//! A full mesh costs every host a connection, heartbeats and a line of topology per other
//! host, and every change of any host's line reaches every host: at a thousand hosts the
//! topology alone is megabytes. Past the threshold each router holds about
//! `log2(peers) + 4` connections to peers chosen at random among those it knows (the topology
//! is its passive view, as in HyParView): a random graph of that degree stays connected when
//! many hosts fail and is a few hops across, and the topology grows with hosts × degree.
//! Traffic between hosts that are not neighbours is relayed along the shortest path.
//!
//! Discovery dials only while we hold fewer than the target; a neighbour that goes is
//! replaced by another random peer. Routers that hold far more than the target (a full mesh
//! that grew past the threshold, or a host many others picked) shed the surplus
//! in one go, only to peers that also hold more than the target, so neither side dials again,
//! and never a connection either side was told to make (it would be redialled at once).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use tracing::debug;

use super::connection::{Close, Phase};
use super::maker::TargetKey;
use super::router::Router;
use weft_proto::PeerName;

/// Surplus connections are shed this long (jittered) after it appears, so the connections
/// still being made in a start-up burst are shed in the same go.
pub(super) const TRIM_INTERVAL: Duration = Duration::from_secs(5);

/// The most [`Router::paced`] stretches a delay (reached at ten times the full-mesh size).
const MAX_PACE: f64 = 10.0;

impl Router {
    /// How many connections discovery aims for; `None`: every known peer (a full mesh).
    pub(super) fn degree_target(&self) -> Option<usize> {
        let n = self.topology.len();
        if n <= self.cfg.full_mesh_peers {
            return None;
        }
        Some((n as f64).log2().ceil() as usize + 4)
    }

    /// `base` stretched in proportion to the mesh past the full-mesh size: how long routes
    /// (with garbage collection) and relays wait to take in a burst of changes. Every
    /// recomputation walks the whole topology, so a router of a thousand peers that kept
    /// the small mesh's pace would spend its time walking; a few hundred milliseconds more
    /// before a route or relay is still far inside what a change takes to cross the mesh.
    ///
    /// At most ten times `base`: the topology counts peers before garbage collection, and a
    /// hostile peer that invents thousands must not hold back everyone's routes for seconds.
    pub(super) fn paced(&self, base: Duration) -> Duration {
        let n = self.topology.len();
        let full = self.cfg.full_mesh_peers.max(1);
        if n <= full {
            return base;
        }
        base.mul_f64((n as f64 / full as f64).min(MAX_PACE))
    }

    /// Connections that count towards the target: ready ones and our dials in progress.
    pub(super) fn overlay_degree(&self) -> usize {
        self.conns
            .values()
            .filter(|c| c.outbound || c.phase == Phase::Ready)
            .count()
    }

    /// Whether discovered targets should wait: we hold the partial view's share already.
    pub(super) fn overlay_full(&self) -> bool {
        self.degree_target()
            .is_some_and(|d| self.overlay_degree() >= d)
    }

    /// In a partial view, how many new discovered targets we may take (`None`: all). Idle
    /// targets that already failed are dropped to make way for others (a dead peer lingers
    /// in the topology until it is unreachable); those not yet tried are kept, so a choice is
    /// not abandoned before it was dialled.
    pub(super) fn discovery_quota(&mut self) -> Option<usize> {
        let d = self.degree_target()?;
        self.targets.retain(|k, t| {
            !matches!(k, TargetKey::Discovered(_)) || t.conn.is_some() || t.attempts == 0
        });
        let room = d.saturating_sub(self.overlay_degree());
        // Targets taken while the mesh still looked small (every peer, for a full mesh) and
        // not dialled yet: past our share they are dropped rather than dialled and shed.
        let idle: Vec<TargetKey> = self
            .targets
            .iter()
            .filter(|(k, t)| matches!(k, TargetKey::Discovered(_)) && t.conn.is_none())
            .map(|(k, _)| k.clone())
            .collect();
        for k in idle.iter().skip(room) {
            self.targets.remove(k);
        }
        Some(room.saturating_sub(idle.len()))
    }

    /// The order a partial view tries new neighbours in: random, each pick the less connected
    /// of two random candidates (the "power of two choices"), so new connections spread over
    /// the hosts rather than piling onto the ones everyone already knows.
    pub(super) fn overlay_order<T>(
        &mut self,
        mut candidates: Vec<(T, (PeerName, Option<u64>))>,
    ) -> Vec<(T, (PeerName, Option<u64>))> {
        self.rng.shuffle(&mut candidates);
        let degree = |peer: &PeerName| self.topology.get(peer).map_or(0, |p| p.connections.len());
        let mut rest: VecDeque<_> = candidates.into();
        let mut out = Vec::with_capacity(rest.len());
        while let Some(a) = rest.pop_front() {
            match rest.pop_front() {
                Some(b) if degree(&b.1.0) < degree(&a.1.0) => {
                    out.push(b);
                    rest.push_back(a);
                }
                Some(b) => {
                    out.push(a);
                    rest.push_back(b);
                }
                None => out.push(a),
            }
        }
        out
    }

    /// Arms the shedding timer when we hold more than twice the target.
    pub(super) fn check_surplus(&mut self, now: Instant) {
        if self.trim_at.is_some() {
            return;
        }
        if let Some(d) = self.degree_target()
            && self.by_peer.len() > 2 * d
        {
            self.trim_at = Some(now + self.rng.jitter(TRIM_INTERVAL));
        }
    }

    /// Sheds the surplus over twice the target in one go, so each router's entry changes
    /// once rather than once per connection (every change reaches every host): connections
    /// to the peers holding the most, among those holding more than the target and not given
    /// to us by the user.
    pub(super) fn trim(&mut self, now: Instant) {
        self.trim_at = None;
        let Some(d) = self.degree_target() else {
            return;
        };
        let Some(surplus) = self.by_peer.len().checked_sub(2 * d).filter(|&s| s > 0) else {
            return;
        };
        let mut shed: Vec<(usize, super::ConnId)> = Vec::new();
        for (name, &id) in &self.by_peer {
            let Some(c) = self.conns.get(&id) else {
                continue;
            };
            if c.pinned || self.is_direct_peer(id, *name) {
                continue;
            }
            let theirs = self.topology.get(name).map_or(0, |p| p.connections.len());
            if theirs > d {
                shed.push((theirs, id));
            }
        }
        // Most-connected first; ties by connection id, so a run replays.
        shed.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        shed.truncate(surplus);
        if !shed.is_empty() {
            debug!(
                count = shed.len(),
                target = d,
                "shedding surplus connections"
            );
        }
        for (_, id) in shed {
            if let Some(TargetKey::Discovered(a)) =
                self.conns.get(&id).and_then(|c| c.target.clone())
            {
                self.targets.remove(&TargetKey::Discovered(a));
            }
            self.stats.shed_surplus += 1;
            self.close(
                now,
                id,
                Close::Shed(format!("surplus connection (partial view of {d})")),
                true,
            );
        }
        self.check_surplus(now);
    }
}
