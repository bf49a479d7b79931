//! A whole weft peer as one sans-IO state machine: the mesh [`Router`] plus the services that
//! gossip over it (today [`Ipam`]). The shell drives a `Node` exactly like a router — the same
//! `handle_*` inputs and `poll_action` outputs — and additionally gets [`NodeEvent`]s.
//!
//! Ordering contract: drain [`Node::poll_event`] before [`Node::poll_action`]. Events carry
//! state to persist ([`NodeEvent::IpamPersist`]) that must be on disk before the gossip in the
//! actions leaves, and before the answers in later events are given.

use std::collections::{BTreeSet, VecDeque};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use ipnet::Ipv4Net;
use tracing::warn;
use weft_proto::PeerName;
use weft_proto::control::Channel;
use weft_proto::ipam::{NodeId, Persisted};

use crate::dns::{Dns, DnsError, DnsOutput, Records};
use crate::fastdp::{FastDp, FastDpConfig, FastDpOutput, FastDpPlan, LinkStatus};
use crate::ipam::{
    Ipam, IpamConfig, IpamError, IpamOutput, IpamSetupError, IpamStatus, OpId, RmPeerError,
};
use crate::mesh::{Action, ConnId, DataPlaneTable, Event, Router, RouterConfig, RouterStatus};

#[derive(Clone, Debug, PartialEq)]
pub enum NodeEvent {
    DataPlane(Arc<DataPlaneTable>),
    TargetsChanged(Vec<String>),
    PeerRemoved(PeerName),
    /// Persist this IPAM state durably now, before acting on later outputs.
    IpamPersist(Persisted),
    /// An IPAM request finished.
    IpamDone {
        op: OpId,
        result: Result<Ipv4Net, IpamError>,
    },
    /// The data plane's keys for a peer (empty: forget the peer's keys).
    DataKeys {
        peer: PeerName,
        keys: crate::crypto::PeerKeys,
    },
    /// The fast path's plan changed: heartbeats to send, FDB to program, fast neighbours.
    FastDp(Arc<FastDpPlan>),
}

pub struct Node {
    router: Router,
    ipam: Option<Ipam>,
    dns: Option<Dns>,
    fastdp: FastDp,
    events: VecDeque<NodeEvent>,
    /// The topology generation IPAM's reachable peers and the fast path's record origins
    /// were last brought up to.
    topology_gen: Option<u64>,
}

impl Node {
    /// `ipam`: its configuration and persisted state, or `None` to run without IPAM.
    /// `dns_domain`: the DNS domain to serve, or `None` to run without DNS.
    pub fn new(
        cfg: RouterConfig,
        ipam: Option<(IpamConfig, Option<Persisted>)>,
        dns_domain: Option<&str>,
        now: Instant,
        seed: u64,
    ) -> Result<Node, IpamSetupError> {
        let nickname = cfg.nickname.clone();
        let router = Router::new(cfg, now, seed);
        let me = NodeId {
            name: router.name(),
            uid: router.uid(),
        };
        let ipam = match ipam {
            Some((icfg, persisted)) => Some(Ipam::new(
                icfg,
                me,
                &nickname,
                persisted,
                now,
                seed.rotate_left(17) ^ 0x1234_5678,
            )?),
            None => None,
        };
        let dns = dns_domain.map(|d| Dns::new(router.name(), d, now));
        // Off until the shell says it has a VXLAN device (`enable_fastdp`); peers still learn
        // that from our record.
        let fastdp = FastDp::new(
            router.name(),
            router.uid(),
            FastDpConfig {
                enabled: false,
                ..Default::default()
            },
        );
        let mut n = Node {
            router,
            ipam,
            dns,
            fastdp,
            events: VecDeque::new(),
            topology_gen: None,
        };
        n.pump(now);
        Ok(n)
    }

    pub fn router(&self) -> &Router {
        &self.router
    }

    pub fn ipam(&self) -> Option<&Ipam> {
        self.ipam.as_ref()
    }

    pub fn poll_action(&mut self) -> Option<Action> {
        self.router.poll_action()
    }

    pub fn poll_event(&mut self) -> Option<NodeEvent> {
        self.events.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        let i = self.ipam.as_ref().and_then(Ipam::poll_timeout);
        let d = self.dns.as_ref().and_then(Dns::poll_timeout);
        [self.router.poll_timeout(), i, d, self.fastdp.poll_timeout()]
            .into_iter()
            .flatten()
            .min()
    }

    // ---- mesh inputs, passed to the router --------------------------------------------

    pub fn handle_accept(&mut self, now: Instant, remote: SocketAddr) -> Option<ConnId> {
        let r = self.router.handle_accept(now, remote);
        self.pump(now);
        r
    }

    pub fn handle_dialed(&mut self, now: Instant, conn: ConnId, result: Result<(), String>) {
        self.router.handle_dialed(now, conn, result);
        self.pump(now);
    }

    pub fn handle_conn_data(&mut self, now: Instant, conn: ConnId, bytes: &[u8]) {
        self.router.handle_conn_data(now, conn, bytes);
        self.pump(now);
    }

    /// The shell wrote everything up to an `Action::Mark` for `channel` on `conn`.
    pub fn handle_written(&mut self, now: Instant, conn: ConnId, channel: Channel) {
        self.router.handle_written(now, conn, channel);
        self.pump(now);
    }

    pub fn handle_conn_closed(&mut self, now: Instant, conn: ConnId, reason: String) {
        self.router.handle_conn_closed(now, conn, reason);
        self.pump(now);
    }

    pub fn handle_udp(&mut self, now: Instant, from: SocketAddr, datagram: &[u8]) {
        self.router.handle_udp(now, from, datagram);
        self.pump(now);
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        self.router.handle_timeout(now);
        if let Some(i) = &mut self.ipam {
            i.handle_timeout(now);
        }
        if let Some(d) = &mut self.dns {
            d.handle_timeout(now);
        }
        self.fastdp.handle_timeout(now);
        self.pump(now);
    }

    pub fn connect(
        &mut self,
        now: Instant,
        targets: Vec<(String, SocketAddr, bool)>,
        replace: bool,
    ) {
        self.router.connect(now, targets, replace);
        self.pump(now);
    }

    pub fn forget(&mut self, now: Instant, specs: &[String]) {
        self.router.forget(now, specs);
        self.pump(now);
    }

    /// The router's status, with each connection's overlay (fastdp or sleeve, and why).
    pub fn status(&mut self, now: Instant) -> RouterStatus {
        let mut st = self.router.status(now);
        st.over_limit += self.fastdp.over_limit()
            + self.dns.as_ref().map_or(0, Dns::over_limit)
            + self.ipam.as_ref().map_or(0, Ipam::over_limit);
        for c in &mut st.connections {
            let link = c
                .peer
                .as_ref()
                .and_then(|(p, _)| self.fastdp.link_status(*p));
            if let Some(LinkStatus { mode, reason }) = link {
                c.overlay = Some(mode.as_str());
                c.overlay_reason = reason.filter(|r| !r.chosen()).map(|r| r.to_string());
            }
        }
        st.direct_paths = self
            .fastdp
            .direct_paths()
            .into_iter()
            .map(|(p, s)| (p, s.mode.as_str(), s.reason.map(|r| r.to_string())))
            .collect();
        st
    }

    // ---- fast path ---------------------------------------------------------------------

    /// The shell has a VXLAN device: run the fast path with `cfg` (whose `enabled` may still
    /// be false for `--no-fastdp`, which peers are told).
    pub fn enable_fastdp(&mut self, now: Instant, cfg: FastDpConfig) {
        self.fastdp = FastDp::new(self.router.name(), self.router.uid(), cfg);
        if let Some(t) = self.router.dataplane() {
            self.fastdp.set_neighbours(now, &t.neighbours);
        }
        for payload in self.fastdp.full_state(self.router.gossip_chunk()) {
            self.router.broadcast(Channel::FASTDP, payload);
        }
        self.pump(now);
    }

    pub fn fastdp(&self) -> &FastDp {
        &self.fastdp
    }

    /// A VXLAN heartbeat of `len` bytes from `sender` arrived.
    pub fn fastdp_heartbeat(&mut self, now: Instant, sender: PeerName, len: usize) {
        // From a peer that is not a neighbour: it wants a direct path, which takes both ends.
        if !self.fastdp.has_link(sender) {
            self.fastdp_want(now, &[sender]);
        }
        self.fastdp.heartbeat(now, sender, len);
        self.pump(now);
    }

    /// Our containers exchange traffic with these peers' (seen relayed by the sleeve, or on
    /// the kernel's direct path): keep, or try, a direct data path to each.
    pub fn fastdp_want(&mut self, now: Instant, peers: &[PeerName]) {
        self.want_direct(now, peers);
        self.pump(now);
    }

    fn want_direct(&mut self, now: Instant, peers: &[PeerName]) {
        for &p in peers {
            // A peer we have a link with (most of those the kernel reports in use) needs no
            // walk of the topology for its address.
            let addr = self.fastdp.link_addr(p);
            let Some(addr) = addr.or_else(|| self.router.topology().address_of(&p)) else {
                continue;
            };
            self.fastdp.want_direct(now, p, addr);
        }
    }

    /// The container MACs on our bridge.
    pub fn fastdp_local_macs(&mut self, now: Instant, macs: Vec<weft_proto::Mac>) {
        self.fastdp.set_local_macs(now, macs);
        self.pump(now);
    }

    /// Our containers' IPv4 addresses with their MACs.
    pub fn fastdp_local_neighbours(
        &mut self,
        now: Instant,
        n: Vec<(std::net::Ipv4Addr, weft_proto::Mac)>,
    ) {
        self.fastdp.set_local_neighbours(now, n);
        self.pump(now);
    }

    pub fn psks(&self) -> &[crate::crypto::Secret] {
        self.router.psks()
    }

    /// Replaces the accepted passwords' keys (the first is used to dial).
    pub fn set_psks(&mut self, now: Instant, psks: Vec<crate::crypto::Secret>) {
        self.router.set_psks(now, psks);
    }

    // ---- IPAM -------------------------------------------------------------------------

    fn with_ipam<T>(&mut self, now: Instant, f: impl FnOnce(&mut Ipam) -> T) -> Option<T> {
        let r = self.ipam.as_mut().map(f);
        self.pump(now);
        r
    }

    pub fn ipam_allocate(
        &mut self,
        now: Instant,
        op: OpId,
        ident: &str,
        subnet: Option<Ipv4Net>,
    ) -> bool {
        self.with_ipam(now, |i| i.allocate(now, op, ident, subnet))
            .is_some()
    }

    pub fn ipam_claim(&mut self, now: Instant, op: OpId, ident: &str, net: Ipv4Net) -> bool {
        self.with_ipam(now, |i| i.claim(now, op, ident, net))
            .is_some()
    }

    /// At launch, before serving anything: the addresses this host's containers still hold
    /// (see [`Ipam::reclaim`]).
    pub fn ipam_reclaim(&mut self, now: Instant, held: Vec<(String, Ipv4Net)>) {
        self.with_ipam(now, |i| i.reclaim(now, held));
    }

    pub fn ipam_prime(&mut self, now: Instant, op: OpId) -> bool {
        self.with_ipam(now, |i| i.prime(now, op)).is_some()
    }

    pub fn ipam_release(
        &mut self,
        now: Instant,
        ident: &str,
        addr: Option<Ipv4Addr>,
    ) -> Vec<Ipv4Net> {
        self.with_ipam(now, |i| {
            i.cancel(ident);
            i.release(now, ident, addr)
        })
        .unwrap_or_default()
    }

    pub fn ipam_lookup(&self, ident: &str, subnet: Option<Ipv4Net>) -> Vec<Ipv4Net> {
        self.ipam
            .as_ref()
            .map(|i| i.lookup(ident, subnet))
            .unwrap_or_default()
    }

    pub fn ipam_rmpeer(&mut self, now: Instant, who: &str) -> Result<u64, RmPeerError> {
        self.with_ipam(now, |i| i.rmpeer(now, who))
            .unwrap_or(Err(RmPeerError::Disabled))
    }

    pub fn ipam_shutdown(&mut self, now: Instant) -> Option<PeerName> {
        self.with_ipam(now, |i| i.shutdown(now)).flatten()
    }

    pub fn ipam_status(&self) -> Option<IpamStatus> {
        self.ipam.as_ref().map(Ipam::status)
    }

    // ---- DNS ---------------------------------------------------------------------------

    pub fn dns(&self) -> Option<&Records> {
        self.dns.as_ref().map(Dns::records)
    }

    /// Changes whenever the DNS records change.
    pub fn dns_generation(&self) -> u64 {
        self.dns.as_ref().map_or(0, Dns::generation)
    }

    /// Registers a name for a container's address; `Ok(false)` if it was there already.
    pub fn dns_add(
        &mut self,
        now: Instant,
        hostname: &str,
        container: &str,
        addr: Ipv4Addr,
    ) -> Result<bool, DnsError> {
        let r = match &mut self.dns {
            Some(d) => d.add(hostname, container, addr),
            None => Ok(false),
        };
        self.pump(now);
        r
    }

    /// Removes our names for a container (narrowed by address and hostname); returns how many.
    pub fn dns_remove(
        &mut self,
        now: Instant,
        container: &str,
        addr: Option<Ipv4Addr>,
        hostname: Option<&str>,
    ) -> usize {
        let n = self
            .dns
            .as_mut()
            .map_or(0, |d| d.remove(now, container, addr, hostname));
        self.pump(now);
        n
    }

    // ---- wiring ------------------------------------------------------------------------

    /// Routes router events to the services and service output to the router, until quiet.
    fn pump(&mut self, now: Instant) {
        loop {
            let mut progressed = false;
            while let Some(e) = self.router.poll_event() {
                progressed = true;
                self.on_router_event(now, e);
            }
            let generation = self.router.topology().generation();
            if self.topology_gen != Some(generation) {
                self.topology_gen = Some(generation);
                let topology = self.router.topology();
                if let Some(ipam) = &mut self.ipam {
                    let me = self.router.name();
                    let peers: BTreeSet<PeerName> = topology
                        .peers()
                        .map(|p| p.name)
                        .filter(|p| *p != me)
                        .collect();
                    ipam.set_reachable(peers);
                }
                self.fastdp
                    .verify_origins(now, |p| topology.get(&p).is_some());
            }
            while let Some(DnsOutput::Broadcast(payload)) =
                self.dns.as_mut().and_then(Dns::poll_output)
            {
                progressed = true;
                self.router.broadcast(Channel::DNS, payload);
            }
            while let Some(o) = self.ipam.as_mut().and_then(Ipam::poll_output) {
                progressed = true;
                match o {
                    IpamOutput::Persist(p) => self.events.push_back(NodeEvent::IpamPersist(p)),
                    IpamOutput::Broadcast(payload) => self.router.broadcast(Channel::IPAM, payload),
                    IpamOutput::Unicast { dst, payload } => {
                        self.router.unicast(Channel::IPAM, dst, payload);
                    }
                    IpamOutput::Done { op, result } => {
                        self.events.push_back(NodeEvent::IpamDone { op, result })
                    }
                }
            }
            while let Some(o) = self.fastdp.poll_output() {
                progressed = true;
                match o {
                    FastDpOutput::Broadcast(payload) => {
                        self.router.broadcast(Channel::FASTDP, payload)
                    }
                    // Lost if the neighbour is unreachable; the report is repeated.
                    FastDpOutput::Unicast { dst, payload } => {
                        self.router.unicast(Channel::FASTDP, dst, payload);
                    }
                    FastDpOutput::Plan(p) => self.events.push_back(NodeEvent::FastDp(p)),
                }
            }
            if !progressed {
                return;
            }
        }
    }

    /// A fast-path message from `src`, judged against the topology's incarnations.
    fn fastdp_message(
        &mut self,
        now: Instant,
        src: PeerName,
        payload: &[u8],
    ) -> Result<bool, weft_proto::DecodeError> {
        let topology = self.router.topology();
        let uid_of = |p: PeerName| topology.get(&p).map(|s| s.uid);
        let r = self.fastdp.handle_message(now, src, payload, uid_of);
        // A peer that is not a neighbour reported on our heartbeats: it tries a direct path,
        // which needs ours (our firewall takes VXLAN only from peers we have a link with).
        let asked = self.fastdp.take_asked();
        if !asked.is_empty() {
            self.want_direct(now, &asked);
        }
        r
    }

    /// Sends our full state of `channel` (other than topology) to neighbour `peer`.
    /// Our full state of `channel`, as gossip payloads (`None`: a channel we do not hold).
    fn full_state(&self, channel: Channel) -> Option<Vec<Vec<u8>>> {
        let chunk = self.router.gossip_chunk();
        match channel {
            Channel::IPAM => self.ipam.as_ref().map(|i| vec![i.full_state()]),
            Channel::DNS => self.dns.as_ref().map(|d| d.full_state(chunk)),
            Channel::FASTDP => Some(self.fastdp.full_state(chunk)),
            _ => None,
        }
    }

    fn send_full_state(&mut self, peer: PeerName, channel: Channel) {
        if let Some(p) = self.full_state(channel) {
            self.router.gossip_to(peer, channel, p);
        }
    }

    fn on_router_event(&mut self, now: Instant, e: Event) {
        match e {
            Event::DataPlane(t) => {
                self.fastdp.set_neighbours(now, &t.neighbours);
                self.events.push_back(NodeEvent::DataPlane(t))
            }
            Event::DataKeys { peer, keys } => {
                let encrypted = keys.send.is_some() || !keys.recv.is_empty();
                self.fastdp.set_encrypted(now, peer, encrypted);
                self.events.push_back(NodeEvent::DataKeys { peer, keys })
            }
            Event::TargetsChanged(t) => self.events.push_back(NodeEvent::TargetsChanged(t)),
            Event::PeerRemoved(p) => {
                if let Some(d) = &mut self.dns {
                    d.peer_removed(p);
                }
                self.fastdp.peer_removed(now, p);
                self.events.push_back(NodeEvent::PeerRemoved(p))
            }
            Event::NeighbourUp(p) => {
                for channel in [Channel::IPAM, Channel::DNS, Channel::FASTDP] {
                    self.send_full_state(p, channel);
                }
                self.fastdp.neighbour_up(now, p);
            }
            Event::FullStateDue { peer, channel } => self.send_full_state(peer, channel),
            Event::StateDigest {
                peer,
                channel,
                digest,
            } => {
                let ours = self.full_state(channel);
                if ours.is_some_and(|p| weft_proto::control::state_digest(&p) != digest) {
                    self.router.request_state(peer, channel);
                }
            }
            Event::GossipTick => {
                let chunk = self.router.gossip_chunk();
                if let Some(i) = &self.ipam {
                    self.router
                        .gossip_random(Channel::IPAM, vec![i.full_state()]);
                }
                if let Some(d) = &self.dns {
                    self.router.gossip_random(Channel::DNS, d.full_state(chunk));
                }
                self.router
                    .gossip_random(Channel::FASTDP, self.fastdp.full_state(chunk));
                let topology = self.router.topology();
                self.fastdp
                    .verify_origins(now, |p| topology.get(&p).is_some());
            }
            Event::Gossip {
                channel,
                from,
                payload,
            } if channel == Channel::DNS => {
                let topology = self.router.topology();
                // The neighbour that sent it counts as known: with protocol 2 its welcome full
                // state can come before its topology entry (which follows the version
                // exchange), and refusing its own names then left them out until the next
                // periodic gossip, half a minute later.
                let known = |p: PeerName| p == from || topology.get(&p).is_some();
                if let Some(d) = &mut self.dns
                    && let Err(e) = d.handle_message(now, &payload, known)
                {
                    warn!("DNS gossip from {from} refused: {e}");
                }
            }
            Event::Broadcast {
                channel,
                src,
                from,
                payload,
            } if channel == Channel::DNS => {
                let topology = self.router.topology();
                let known = |p: PeerName| p == from || topology.get(&p).is_some();
                if let Some(d) = &mut self.dns {
                    match d.handle_message(now, &payload, known) {
                        Ok(true) => self
                            .router
                            .relay_broadcast(channel, src, payload, Some(from)),
                        Ok(false) => {}
                        Err(e) => warn!("DNS broadcast from {src} refused: {e}"),
                    }
                }
            }
            Event::Gossip {
                channel,
                from,
                payload,
            } if channel == Channel::IPAM => {
                if let Some(i) = &mut self.ipam
                    && let Err(reason) = i.handle_message(now, from, &payload)
                {
                    self.router.reject_peer(now, from, reason.to_string());
                }
            }
            Event::Broadcast {
                channel,
                src,
                from,
                payload,
            } if channel == Channel::IPAM => {
                if let Some(i) = &mut self.ipam {
                    match i.handle_message(now, src, &payload) {
                        Ok(true) => self
                            .router
                            .relay_broadcast(channel, src, payload, Some(from)),
                        Ok(false) => {}
                        Err(reason) => self.router.reject_peer(now, from, reason.to_string()),
                    }
                }
            }
            Event::Unicast {
                channel,
                src,
                payload,
            } if channel == Channel::IPAM => {
                if let Some(i) = &mut self.ipam
                    && let Err(reason) = i.handle_message(now, src, &payload)
                {
                    warn!("IP allocation message from {src} refused: {reason}");
                }
            }
            Event::Gossip {
                channel,
                from,
                payload,
            } if channel == Channel::FASTDP => {
                if let Err(e) = self.fastdp_message(now, from, &payload) {
                    warn!("fast-path gossip from {from} refused: {e}");
                }
            }
            Event::Broadcast {
                channel,
                src,
                from,
                payload,
            } if channel == Channel::FASTDP => match self.fastdp_message(now, src, &payload) {
                Ok(true) => self
                    .router
                    .relay_broadcast(channel, src, payload, Some(from)),
                Ok(false) => {}
                Err(e) => warn!("fast-path broadcast from {src} refused: {e}"),
            },
            Event::Unicast {
                channel,
                src,
                payload,
            } if channel == Channel::FASTDP => {
                if let Err(e) = self.fastdp_message(now, src, &payload) {
                    warn!("fast-path message from {src} refused: {e}");
                }
            }
            Event::Gossip { .. } | Event::Broadcast { .. } | Event::Unicast { .. } => {}
        }
    }
}
