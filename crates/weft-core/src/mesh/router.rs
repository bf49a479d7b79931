//! [`Router`]: the mesh state machine. See the module doc of [`crate::mesh`].
//!
//! The router is the endpoint: it owns the connections (each its own state machine, see
//! [`super::connection`]), decides what only the endpoint can (duplicates, the connection
//! limit, which targets to dial), keeps the topology and routes, and moves gossip (see
//! [`super::gossip`]). Only connections that both ends report established carry data.
//!
//! Invariants:
//! - at most one `Ready` connection per remote peer name (`by_peer`); duplicates are resolved by
//!   keeping the lower connection UID, which both ends compute identically;
//! - our own topology entry always lists exactly the `Ready` connections;
//! - every timer is derived from state, so `poll_timeout` is exact and nothing fires twice.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};
use weft_proto::PeerName;
use weft_proto::control::{
    self, Channel, ConnectionSummary, ControlMsg, Hello, OverlayMsg, PeerSummary, PeerVersion,
    TopologyUpdate,
};
use weft_proto::sleeve::Datagram;

use super::ConnId;
use super::connection::{
    Close, Connection, Expired, Identity, MAX_PRE_HELLO_FRAME, Phase, msg_name,
};
use super::gossip::{Outbox, merge_entries};
use super::maker::{Backoff, Target, TargetKey};
use super::routes::{BroadcastTrees, Graph, Variant};
use super::status::{
    ConnectionState, ConnectionStatus, PeerConnectionStatus, PeerStatus, RouterStatus,
};
use super::topology::{MAX_NICKNAME_LEN, Topology};
use crate::rng::Rng;

/// A full topology is sent in answer to a neighbour's request at most this often.
pub const FULL_REPLY_INTERVAL: Duration = Duration::from_secs(1);
/// Up to this many peers discovery makes a full mesh, as Weave did; past it, a partial view
/// (see `overlay`).
pub const FULL_MESH_PEERS: usize = 100;

/// At most this many dials of discovered peers are under way at once. Hosts that start
/// together each learn of dozens of others within a few round trips; dialling all of them at
/// once gives every host a hundred connections (and the topology a hundred entries per host)
/// before anyone sees the mesh is too large for a full mesh. A few at a time, each finished
/// dial brings the peer's topology, so the size is known after a handful.
const MAX_PENDING_DIALS: usize = 8;

/// A dial stops counting against [`MAX_PENDING_DIALS`] after this, so that addresses that
/// swallow SYNs do not hold discovery up until the handshake timeout.
const PENDING_DIAL_WINDOW: Duration = Duration::from_secs(1);

/// How many protocol-2 neighbours a topology improvement learnt by gossip is pushed to (the
/// periodic digests repair what a push missed).
const PUSH_FANOUT: usize = 2;
/// Status shows our children in every source's broadcast tree up to this many peers (one
/// search each); past it, only in our own tree.
const STATUS_ALL_TREES: usize = 512;

/// Half-open inbound connections (not yet past the hello) taken at once...
pub const MAX_PENDING_INBOUND: usize = 64;
/// ...and from one IP address.
pub const MAX_PENDING_PER_SOURCE: usize = 8;

#[derive(Clone, Debug)]
pub struct Timing {
    /// Header and hello must complete within this on a connection we dialled...
    pub handshake_timeout: Duration,
    /// ...and on one we accepted: a stranger's half-open connection is dropped quickly.
    pub pending_timeout: Duration,
    /// A TCP heartbeat is sent this often on every connection.
    pub heartbeat_interval: Duration,
    /// A connection that receives nothing for this long is dead.
    pub read_timeout: Duration,
    /// UDP heartbeats until the peer acknowledges one...
    pub udp_fast_heartbeat: Duration,
    /// ...and after.
    pub udp_slow_heartbeat: Duration,
    /// No UDP heartbeat from the peer for this long closes the connection.
    pub udp_heartbeat_timeout: Duration,
    /// Full topology to random neighbours this often, healing anything a broadcast missed.
    pub gossip_interval: Duration,
    /// Changes to our own connections are coalesced for this long before broadcasting.
    pub broadcast_delay: Duration,
    /// Data-plane routes are recomputed at most this often.
    pub route_delay: Duration,
    /// We ask one neighbour for its full topology at most this often.
    pub gossip_request_interval: Duration,
    /// Relayed topology entries wait this long per neighbour so that a burst of changes goes
    /// out as one message (newer entries replace older ones while waiting).
    pub gossip_coalesce: Duration,
    /// Topology changes are coalesced this long before discovery looks at them (zero: the
    /// changes of one burst of gossip, handled together).
    pub discovery_interval: Duration,
    /// A newly discovered peer is dialled within this (uniformly random), so that a mesh
    /// learning of a new peer all at once does not dial it all at once.
    pub discovery_jitter: Duration,
    pub backoff: Backoff,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            handshake_timeout: Duration::from_secs(10),
            pending_timeout: Duration::from_secs(3),
            heartbeat_interval: Duration::from_secs(10),
            read_timeout: Duration::from_secs(35),
            udp_fast_heartbeat: Duration::from_millis(500),
            udp_slow_heartbeat: Duration::from_secs(5),
            udp_heartbeat_timeout: Duration::from_secs(30),
            gossip_interval: Duration::from_secs(30),
            broadcast_delay: Duration::from_millis(200),
            route_delay: Duration::from_millis(50),
            gossip_request_interval: Duration::from_secs(1),
            gossip_coalesce: Duration::from_millis(20),
            // As Weave: a peer learned from gossip is dialled at once. Waiting longer risks
            // losing it: if the only peer that reported it goes, nobody reports it again.
            discovery_interval: Duration::ZERO,
            discovery_jitter: Duration::from_millis(50),
            backoff: Backoff::default(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct RouterConfig {
    pub name: PeerName,
    pub nickname: String,
    /// Our control port, advertised so peers can dial us at addresses they learn.
    pub tcp_port: u16,
    /// Our sleeve UDP port.
    pub udp_port: u16,
    /// Maximum number of connections, 0 for unlimited.
    pub conn_limit: usize,
    /// Dial peers learned from gossip.
    pub discovery: bool,
    /// The overlay MTU, shown in connection attributes.
    pub mtu: u32,
    pub timing: Timing,
    /// Password-based encryption; `None` runs in the clear.
    pub crypto: Option<CryptoSettings>,
    /// Full states are cut into gossip payloads of at most this many bytes
    /// ([`weft_proto::MAX_GOSSIP_CHUNK`] unless a test wants to see the cutting).
    pub gossip_chunk: usize,
    /// The newest control protocol we offer ([`control::PROTOCOL_MAX`] unless a test stands
    /// in for an older release).
    pub protocol_max: u8,
    /// Discovery connects every peer to every other up to this many peers, and keeps a
    /// partial view past it ([`FULL_MESH_PEERS`] unless a test wants it smaller).
    pub full_mesh_peers: usize,
}

/// What encryption needs: our static key, the accepted passwords' keys, trusted subnets.
#[derive(Clone)]
pub struct CryptoSettings {
    pub static_key: crate::crypto::Secret,
    /// `psks[0]` is used to dial; all are accepted (password rotation).
    pub psks: Vec<crate::crypto::Secret>,
    /// Peers whose address is in one of these may exchange data unencrypted with us, if they
    /// trust us too (the control channel stays encrypted).
    pub trusted: Vec<ipnet::Ipv4Net>,
    pub rekey_interval: Duration,
    pub entropy: crate::crypto::SharedEntropy,
    /// Offer AES-256-GCM for data (this CPU has AES instructions): used with peers that
    /// offer it too, ChaCha20-Poly1305 with the rest.
    pub offer_aes_gcm: bool,
}

impl std::fmt::Debug for CryptoSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Keys are never printed.
        f.debug_struct("CryptoSettings")
            .field("passwords", &self.psks.len())
            .field("trusted", &self.trusted)
            .field("rekey_interval", &self.rekey_interval)
            .field("offer_aes_gcm", &self.offer_aes_gcm)
            .finish_non_exhaustive()
    }
}

/// Something the shell must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Open a TCP connection and report with [`Router::handle_dialed`].
    Dial { conn: ConnId, addr: SocketAddr },
    /// Write these bytes to the connection, in order.
    Send { conn: ConnId, bytes: Vec<u8> },
    /// Call [`Router::handle_written`] with `channel` once every byte sent on the connection
    /// before this action is written to the socket (it follows the last frame of a full
    /// state).
    Mark { conn: ConnId, channel: Channel },
    /// Close the connection; the router has already forgotten it.
    Close { conn: ConnId },
    /// Send one UDP control datagram (heartbeat) to peer `peer` at `to` from the sleeve
    /// socket, through the data plane (which encrypts it if the peer's data is encrypted).
    SendUdp {
        to: SocketAddr,
        peer: PeerName,
        bytes: Vec<u8>,
    },
}

/// Something the shell may want to know.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The data plane's routes or neighbour addresses changed.
    DataPlane(Arc<DataPlaneTable>),
    /// The direct targets changed; persist them for `--resume`.
    TargetsChanged(Vec<String>),
    /// A peer is no longer reachable and was forgotten (drop its MACs, DNS entries...).
    PeerRemoved(PeerName),
    /// A new neighbour: send it the full state of every other gossip channel.
    NeighbourUp(PeerName),
    /// The full state of `channel` last sent to neighbour `peer` is out of our queue, and a
    /// newer one was held back meanwhile: send the current full state now.
    FullStateDue { peer: PeerName, channel: Channel },
    /// A neighbour's digest of its full state of `channel`: if ours differs, ask for its
    /// state ([`Router::request_state`]).
    StateDigest {
        peer: PeerName,
        channel: Channel,
        digest: u64,
    },
    /// Time for periodic gossip: send each channel's full state with [`Router::gossip_random`].
    GossipTick,
    /// Channel gossip from neighbour `from`.
    Gossip {
        channel: Channel,
        from: PeerName,
        payload: Vec<u8>,
    },
    /// A broadcast by `src`, received from neighbour `from`. If it told us something new, pass
    /// it on with [`Router::relay_broadcast`].
    Broadcast {
        channel: Channel,
        src: PeerName,
        from: PeerName,
        payload: Vec<u8>,
    },
    /// A message for us from `src`.
    Unicast {
        channel: Channel,
        src: PeerName,
        payload: Vec<u8>,
    },
    /// The data plane's keys for a peer changed (empty: forget them).
    DataKeys {
        peer: PeerName,
        keys: crate::crypto::PeerKeys,
    },
}

/// What the data plane needs to forward frames: computed from the established-and-symmetric
/// graph, restricted to neighbours whose UDP address we know.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct DataPlaneTable {
    pub local: PeerName,
    /// Destination peer → next hop.
    pub unicast: BTreeMap<PeerName, PeerName>,
    /// Source peer → our children in its broadcast tree (computed per source on demand).
    pub broadcast: BroadcastTrees,
    /// Next hop → its sleeve UDP address.
    pub neighbours: BTreeMap<PeerName, SocketAddr>,
    /// Our children in our own broadcast tree that have children of their own there: a
    /// fast-path neighbour among them still needs our broadcasts by sleeve, to relay.
    pub relay_children: BTreeSet<PeerName>,
}

#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Stats {
    pub(super) terminations: u64,
    /// Half-open inbound connections dropped: refused (too many from one address), or the
    /// oldest shed to make room.
    pub(super) refused_pending: u64,
    /// Connections closed for breaking the protocol (bad header, undecodable message...).
    pub(super) protocol_errors: u64,
    /// Invalid entries in topology updates, ignored.
    pub(super) invalid_entries: u64,
    /// Gossiped entries refused because a table was at its bound.
    pub(super) over_limit: u64,
    /// UDP control datagrams that matched no connection or did not decode.
    pub(super) udp_unexpected: u64,
    /// Full states not queued because an earlier one to the same neighbour was unwritten.
    pub(super) full_states_held: u64,
    /// Connections closed because a partial view held far more than its share.
    pub(super) shed_surplus: u64,
    /// Topology entries the broadcast tree missed, asked for after a lazy push told of them.
    pub(super) tree_repairs: u64,
}

pub struct Router {
    pub(super) cfg: RouterConfig,
    pub(super) uid: u64,
    /// What our hellos say.
    pub(super) me: Identity,
    pub(super) rng: Rng,
    pub(super) topology: Topology,
    pub(super) conns: BTreeMap<ConnId, Connection>,
    pub(super) next_conn: u64,
    pub(super) by_peer: BTreeMap<PeerName, ConnId>,
    pub(super) targets: BTreeMap<TargetKey, Target>,
    pub(super) actions: VecDeque<Action>,
    pub(super) events: VecDeque<Event>,
    pub(super) broadcast_at: Option<Instant>,
    pub(super) next_gossip: Instant,
    pub(super) dataplane_at: Option<Instant>,
    pub(super) last_dataplane: Option<Arc<DataPlaneTable>>,
    pub(super) maker_dirty: bool,
    pub(super) maker_wake: Option<Instant>,
    pub(super) discovered_gen: Option<u64>,
    pub(super) discovery_at: Option<Instant>,
    /// When to shed a surplus connection (partial view).
    pub(super) trim_at: Option<Instant>,
    pub(super) outbox: BTreeMap<ConnId, Outbox>,
    /// Topology entries to relay along broadcast trees, by source and the connection they
    /// came from (not sent back there), until the outbox goes out.
    pub(super) relays: BTreeMap<(PeerName, Option<ConnId>), BTreeMap<PeerName, Arc<PeerSummary>>>,
    pub(super) outbox_at: Option<Instant>,
    /// Entries lazy pushes told us of that we lack: the version told, the neighbour that
    /// told us, and when to ask it if the tree has not brought them by then.
    pub(super) lazy_wanted: BTreeMap<PeerName, (u64, u64, ConnId, Instant)>,
    pub(super) lazy_at: Option<Instant>,
    /// Gossip broadcast trees by source, valid for one topology generation.
    pub(super) trees: (u64, BTreeMap<PeerName, Vec<PeerName>>),
    /// Our neighbours in the shared broadcast tree of a partial view, for one generation.
    pub(super) shared_tree: (u64, Vec<PeerName>),
    /// Next hops for gossip unicasts, valid for one topology generation.
    pub(super) unicast_all: (u64, BTreeMap<PeerName, PeerName>),
    /// Inbound connections that failed recently (shown in status: they have no target).
    pub(super) recent_failures: VecDeque<(SocketAddr, String, Instant)>,
    pub(super) stats: Stats,
}

impl Router {
    /// `seed` drives every random choice (UIDs, jitter, gossip fan-out).
    pub fn new(cfg: RouterConfig, now: Instant, seed: u64) -> Self {
        let mut rng = Rng::new(seed);
        let uid = rng.nonzero_u64();
        let local = PeerSummary {
            name: cfg.name,
            nickname: cfg.nickname.clone(),
            uid,
            version: 1,
            tcp_port: cfg.tcp_port,
            connections: Vec::new(),
        };
        let next_gossip = now + rng.jitter(cfg.timing.gossip_interval);
        let me = Identity {
            name: cfg.name,
            nickname: cfg.nickname.clone(),
            uid,
            tcp_port: cfg.tcp_port,
            udp_port: cfg.udp_port,
        };
        Router {
            cfg,
            uid,
            me,
            rng,
            topology: Topology::new(local),
            conns: BTreeMap::new(),
            next_conn: 1,
            by_peer: BTreeMap::new(),
            targets: BTreeMap::new(),
            actions: VecDeque::new(),
            events: VecDeque::new(),
            broadcast_at: None,
            next_gossip,
            dataplane_at: Some(now),
            last_dataplane: None,
            maker_dirty: false,
            maker_wake: None,
            discovered_gen: None,
            discovery_at: None,
            trim_at: None,
            outbox: BTreeMap::new(),
            relays: BTreeMap::new(),
            outbox_at: None,
            lazy_wanted: BTreeMap::new(),
            lazy_at: None,
            trees: (u64::MAX, BTreeMap::new()),
            shared_tree: (u64::MAX, Vec::new()),
            unicast_all: (u64::MAX, BTreeMap::new()),
            recent_failures: VecDeque::new(),
            stats: Stats::default(),
        }
    }

    pub fn name(&self) -> PeerName {
        self.cfg.name
    }

    pub fn uid(&self) -> u64 {
        self.uid
    }

    /// The data-plane table last announced.
    pub fn dataplane(&self) -> Option<&Arc<DataPlaneTable>> {
        self.last_dataplane.as_ref()
    }

    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// Peers we hold a `Ready` connection to.
    pub fn connected_peers(&self) -> impl Iterator<Item = &PeerName> {
        self.by_peer.keys()
    }

    /// The control protocol each `Ready` connection negotiated, by peer.
    pub fn neighbour_protocols(&self) -> impl Iterator<Item = (PeerName, u8)> + '_ {
        self.by_peer
            .iter()
            .filter_map(|(name, id)| Some((*name, self.conns.get(id)?.version())))
    }

    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`Router::handle_timeout`] must next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let conns = self.conns.values().filter_map(Connection::next_timeout);
        [
            self.broadcast_at,
            Some(self.next_gossip),
            self.dataplane_at,
            self.maker_wake,
            self.discovery_at,
            self.outbox_at,
            self.trim_at,
            self.lazy_at,
        ]
        .into_iter()
        .flatten()
        .chain(conns)
        .min()
    }

    // ---- inputs -------------------------------------------------------------------------

    /// Adds targets. Each is `(text as given, resolved address, whether a port was given)`.
    /// With `replace`, direct targets not in the list are dropped first.
    pub fn connect(
        &mut self,
        now: Instant,
        targets: Vec<(String, SocketAddr, bool)>,
        replace: bool,
    ) {
        if replace {
            let keep: BTreeSet<&String> = targets.iter().map(|t| &t.0).collect();
            self.targets
                .retain(|k, _| !matches!(k, TargetKey::Direct(s) if !keep.contains(s)));
        }
        for (spec, addr, port_given) in targets {
            let key = TargetKey::Direct(spec);
            let backoff = &self.cfg.timing.backoff;
            let t = self
                .targets
                .entry(key)
                .or_insert_with(|| Target::new(addr, port_given, now, backoff));
            // Re-adding a failed target is a request to try it now.
            if t.conn.is_none() {
                t.retry_at = now;
                t.suspended = false;
                t.addr = addr;
            }
        }
        self.targets_changed();
        self.after(now);
    }

    /// Removes direct targets; their connections stay up but will not be redialled.
    pub fn forget(&mut self, now: Instant, specs: &[String]) {
        for s in specs {
            self.targets.remove(&TargetKey::Direct(s.clone()));
        }
        self.targets_changed();
        self.after(now);
    }

    /// Direct targets as given, in order.
    /// How many addresses we keep as targets, given and discovered, connected or not.
    pub fn target_count(&self) -> usize {
        self.targets.len()
    }

    pub fn direct_targets(&self) -> Vec<String> {
        self.targets
            .keys()
            .filter_map(|k| match k {
                TargetKey::Direct(s) => Some(s.clone()),
                TargetKey::Discovered(_) => None,
            })
            .collect()
    }

    /// A TCP connection arrived. `None` means refuse it (connection limit).
    pub fn handle_accept(&mut self, now: Instant, remote: SocketAddr) -> Option<ConnId> {
        if !self.admit_pending(now, remote) {
            // Not logged per connection: a flood would flood the log too.
            self.stats.refused_pending += 1;
            return None;
        }
        if self.at_conn_limit() {
            warn!(%remote, limit = self.cfg.conn_limit, "connection limit reached; refusing connection");
            return None;
        }
        let id = self.alloc_conn();
        let conn_id = self.rng.nonzero_u64();
        let t = &self.cfg.timing;
        let mut c = Connection::new(id, false, remote, Phase::Header, now, conn_id, t);
        c.send_header(
            self.cfg.crypto.as_ref(),
            self.cfg.protocol_max,
            &mut self.actions,
        );
        self.conns.insert(id, c);
        self.after(now);
        Some(id)
    }

    /// The dial for `conn` finished.
    pub fn handle_dialed(&mut self, now: Instant, conn: ConnId, result: Result<(), String>) {
        match result {
            Ok(()) => {
                if let Some(c) = self.conns.get_mut(&conn) {
                    c.handle_dialed(now, &self.cfg.timing);
                    c.send_header(
                        self.cfg.crypto.as_ref(),
                        self.cfg.protocol_max,
                        &mut self.actions,
                    );
                }
            }
            Err(e) => self.close(now, conn, Close::Failure(e), false),
        }
        self.after(now);
    }

    /// Bytes arrived on `conn`.
    pub fn handle_conn_data(&mut self, now: Instant, conn: ConnId, bytes: &[u8]) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        c.handle_data(now, bytes, &self.cfg.timing);
        let addr = c.addr;
        if let Err(close) = self.process_conn(now, conn) {
            match &close {
                Close::Failure(_) => self.stats.protocol_errors += 1,
                Close::AuthFailed(why) => {
                    self.stats.protocol_errors += 1;
                    self.note_inbound_failure(now, addr, why);
                }
                _ => {}
            }
            self.close(now, conn, close, true);
        }
        self.after(now);
    }

    /// Everything queued on `conn` up to an [`Action::Mark`] for `channel` is written.
    pub fn handle_written(&mut self, now: Instant, conn: ConnId, channel: Channel) {
        self.full_state_written(conn, channel);
        self.after(now);
    }

    /// The socket for `conn` closed (EOF or error) by itself.
    pub fn handle_conn_closed(&mut self, now: Instant, conn: ConnId, reason: String) {
        self.close(now, conn, Close::Failure(reason), false);
        self.after(now);
    }

    /// A control datagram (heartbeat) arrived on the sleeve socket (decrypted by the data
    /// plane if the peer's data is encrypted).
    pub fn handle_udp(&mut self, now: Instant, from: SocketAddr, datagram: &[u8]) {
        match Datagram::decode(datagram) {
            Ok(Datagram::Heartbeat { sender, conn_uid }) => {
                self.on_udp_heartbeat(now, from, sender, conn_uid)
            }
            // The data plane decrypts before handing heartbeats over.
            Ok(
                Datagram::Frame { .. }
                | Datagram::Encrypted { .. }
                | Datagram::Fragment { .. }
                | Datagram::Probe { .. },
            )
            | Err(_) => self.stats.udp_unexpected += 1,
        }
        self.after(now);
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        let t = self.cfg.timing.clone();
        let due: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| c.next_timeout().is_some_and(|at| at <= now))
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            let Some(c) = self.conns.get_mut(&id) else {
                continue;
            };
            let crypto = self.cfg.crypto.as_ref();
            match c.handle_timeout(now, &t, self.cfg.name, crypto, &mut self.actions) {
                Some(Expired::Close(why)) => self.close(now, id, Close::Failure(why), true),
                Some(Expired::Keys(keys)) => self.emit_keys(id, keys),
                None => {}
            }
        }
        if self.broadcast_at.is_some_and(|at| at <= now) {
            self.broadcast_at = None;
            let local = self.topology.local_shared();
            self.relay_topology(now, self.cfg.name, &[local], None);
        }
        if self.outbox_at.is_some_and(|at| at <= now) {
            self.outbox_at = None;
            self.flush_outbox();
        }
        if self.lazy_at.is_some_and(|at| at <= now) {
            self.lazy_at = None;
            self.ask_for_missed(now);
        }
        if self.discovery_at.is_some_and(|at| at <= now) {
            self.discovery_at = None;
            self.update_discovered(now);
            self.maker_dirty = true;
        }
        if self.trim_at.is_some_and(|at| at <= now) {
            self.trim(now);
        }
        if self.next_gossip <= now {
            self.next_gossip = now + self.rng.jitter(t.gossip_interval);
            self.events.push_back(Event::GossipTick);
            // Neighbours that speak protocol 2 get a digest, and ask for more only if theirs
            // differs; older ones the whole topology, as before.
            let (digest, full): (Vec<ConnId>, Vec<ConnId>) = self
                .random_neighbours(None)
                .into_iter()
                .partition(|&id| self.speaks_versions(id));
            if !digest.is_empty() {
                let body = ControlMsg::TopologyDigest {
                    digest: self.topology.digest(),
                }
                .encode_body();
                for id in digest {
                    self.send_body(id, body.clone());
                }
            }
            if !full.is_empty() {
                for payload in self.topology.full_update_chunks(self.cfg.gossip_chunk) {
                    let body = ControlMsg::Gossip {
                        channel: Channel::TOPOLOGY,
                        payload,
                    }
                    .encode_body();
                    for &id in &full {
                        self.send_body(id, body.clone());
                    }
                }
            }
        }
        if self.maker_wake.is_some_and(|at| at <= now) {
            self.maker_dirty = true;
        }
        self.after(now);
        if self.dataplane_at.is_some_and(|at| at <= now) {
            self.dataplane_at = None;
            self.collect_garbage();
            let table = Arc::new(self.compute_dataplane());
            if self.last_dataplane.as_deref() != Some(&table) {
                self.last_dataplane = Some(table.clone());
                self.events.push_back(Event::DataPlane(table));
            }
        }
    }

    // ---- connection processing -----------------------------------------------------------

    fn process_conn(&mut self, now: Instant, id: ConnId) -> Result<(), Close> {
        loop {
            let Some(c) = self.conns.get_mut(&id) else {
                return Ok(());
            };
            let crypto = self.cfg.crypto.as_ref();
            match c.phase {
                Phase::Dialing => return Ok(()),
                Phase::Header => {
                    if !c.handle_header(
                        &self.me,
                        crypto,
                        self.cfg.protocol_max,
                        &mut self.actions,
                    )? {
                        return Ok(());
                    }
                }
                Phase::Handshake => {
                    let Some(body) = c.poll_frame(MAX_PRE_HELLO_FRAME)? else {
                        return Ok(());
                    };
                    c.handle_handshake(&body, &self.me, crypto, &mut self.actions)?;
                }
                Phase::Hello => {
                    let Some(body) = c.poll_frame(MAX_PRE_HELLO_FRAME)? else {
                        return Ok(());
                    };
                    match ControlMsg::decode(&body).map_err(|e| Close::Failure(e.to_string()))? {
                        ControlMsg::Hello(h) => self.on_hello(now, id, h)?,
                        other => {
                            return Err(Close::Failure(format!(
                                "expected hello, got {}",
                                msg_name(&other)
                            )));
                        }
                    }
                }
                Phase::Ready => {
                    let Some(body) = c.poll_frame(control::MAX_FRAME_LEN)? else {
                        return Ok(());
                    };
                    let msg =
                        ControlMsg::decode(&body).map_err(|e| Close::Failure(e.to_string()))?;
                    self.on_message(now, id, msg)?;
                }
            }
        }
    }

    fn note_inbound_failure(&mut self, now: Instant, addr: SocketAddr, why: &str) {
        warn!("<-[{addr}]: {why}");
        self.recent_failures.push_back((addr, why.to_string(), now));
        while self.recent_failures.len() > 10 {
            self.recent_failures.pop_front();
        }
    }

    fn on_hello(&mut self, now: Instant, id: ConnId, hello: Hello) -> Result<(), Close> {
        if hello.name == self.cfg.name {
            return Err(Close::Suspend(if hello.uid == self.uid {
                "cannot connect to ourself".to_string()
            } else {
                format!(
                    "local {} and remote {} peer names collision",
                    self.cfg.name, hello.name
                )
            }));
        }
        if hello.name == weft_proto::BROADCAST_PEER || hello.nickname.len() > MAX_NICKNAME_LEN {
            return Err(Close::Failure("invalid peer identity in hello".into()));
        }
        if self.at_conn_limit_excluding(Some(id)) {
            return Err(Close::Failure(format!(
                "connection limit reached ({})",
                self.cfg.conn_limit
            )));
        }
        let Some(c) = self.conns.get(&id) else {
            return Ok(());
        };
        let conn_uid = c.our_conn_id ^ hello.conn_id;
        if let Some(&existing) = self.by_peer.get(&hello.name) {
            let existing_uid = self
                .conns
                .get(&existing)
                .and_then(|c| c.remote.as_ref())
                .map_or(0, |r| r.conn_uid);
            let msg = format!(
                "multiple connections to {}({}) added to {}",
                hello.name, hello.nickname, self.cfg.name
            );
            if existing_uid < conn_uid {
                self.note_target_peer(id, hello.name);
                return Err(Close::Duplicate(msg));
            }
            if existing_uid == conn_uid {
                self.close(now, existing, Close::Duplicate(msg.clone()), true);
                return Err(Close::Duplicate(msg));
            }
            self.close(now, existing, Close::Duplicate(msg), true);
        }
        let Some(c) = self.conns.get_mut(&id) else {
            return Ok(());
        };
        c.handle_ready(now, &hello, conn_uid, &self.cfg.timing);
        // Data keys reach the data plane before anything is sent over UDP.
        if let Some(cr) = &self.cfg.crypto {
            let trusted_pair = super::connection::trusts(Some(cr), c.addr) && hello.trusts_you;
            if let Some(keys) = c.start_data(!trusted_pair, now, cr.rekey_interval) {
                self.events.push_back(Event::DataKeys {
                    peer: hello.name,
                    keys,
                });
            }
        }
        self.by_peer.insert(hello.name, id);
        self.note_target_peer(id, hello.name);
        // A dial that finished makes room for the next (see MAX_PENDING_DIALS).
        self.maker_dirty = true;
        self.local_connections_changed(now);
        self.events.push_back(Event::NeighbourUp(hello.name));
        if self.speaks_versions(id) {
            // Each side says what it holds and gets what it lacks: between two routers that
            // already agree, a list of versions each way rather than the whole topology.
            let versions = self.topology.versions();
            self.send_msg(
                id,
                &ControlMsg::TopologyVersions {
                    versions,
                    reply: false,
                },
            );
            if self.is_direct_peer(id, hello.name) {
                self.send_msg(id, &ControlMsg::Pinned);
            }
        } else {
            self.send_full_topology(id);
        }
        Ok(())
    }

    /// Whether connection `id` negotiated protocol 2 (topology by versions and digests).
    pub(super) fn speaks_versions(&self, id: ConnId) -> bool {
        self.conns.get(&id).is_some_and(|c| c.version() >= 2)
    }

    pub(super) fn send_full_topology(&mut self, id: ConnId) {
        let held = self.conns.get_mut(&id).and_then(|c| c.held_versions.take());
        if let Some(theirs) = held {
            self.send_newer_topology(id, theirs);
            return;
        }
        if !self.full_state_may_send(id, Channel::TOPOLOGY) {
            return;
        }
        let chunks = self.topology.full_update_chunks(self.cfg.gossip_chunk);
        self.send_topology_chunks(id, chunks);
    }

    /// Sends the entries a neighbour holding `theirs` lacks; one answer at a time, as full
    /// states are (a later request waits for the earlier answer to be written).
    fn send_newer_topology(&mut self, id: ConnId, theirs: Vec<PeerVersion>) {
        if !self.full_state_may_send(id, Channel::TOPOLOGY) {
            if let Some(c) = self.conns.get_mut(&id) {
                c.held_versions = Some(theirs);
            }
            return;
        }
        let chunks = self.topology.newer_chunks(&theirs, self.cfg.gossip_chunk);
        self.send_topology_chunks(id, chunks);
    }

    fn send_topology_chunks(&mut self, id: ConnId, chunks: Vec<Vec<u8>>) {
        if chunks.is_empty() {
            return;
        }
        for payload in chunks {
            self.send_msg(
                id,
                &ControlMsg::Gossip {
                    channel: Channel::TOPOLOGY,
                    payload,
                },
            );
        }
        self.full_state_sent(id, Channel::TOPOLOGY);
    }

    fn on_message(&mut self, now: Instant, id: ConnId, msg: ControlMsg) -> Result<(), Close> {
        match msg {
            ControlMsg::Hello(_) => return Err(Close::Failure("unexpected second hello".into())),
            ControlMsg::Heartbeat => {}
            ControlMsg::Refused { reason } => {
                return Err(Close::Refused(format!("refused by the peer: {reason}")));
            }
            ControlMsg::Gossip { channel, payload } if channel == Channel::TOPOLOGY => {
                let update =
                    TopologyUpdate::decode(&payload).map_err(|e| Close::Failure(e.to_string()))?;
                let improved = self.apply_topology(now, id, update);
                if !improved.is_empty() && self.degree_target().is_some() {
                    // A partial view: whatever is new to us goes along the shared tree, however
                    // it came (an answer to versions or a want, a push), so that the tree
                    // carries every change to everyone; random pushes would leave hosts out.
                    let src = self.cfg.name;
                    self.relay_topology(now, src, &improved, Some(id));
                } else if !improved.is_empty() {
                    // Protocol 2 neighbours repair what a push missed by digest, so a push
                    // to two of them spreads an entry as far as one to many does, at a
                    // fraction of the copies; older ones get it as before.
                    let mut v2 = 0;
                    let push: Vec<ConnId> = self
                        .random_neighbours(Some(id))
                        .into_iter()
                        .filter(|&n| {
                            if !self.speaks_versions(n) {
                                return true;
                            }
                            v2 += 1;
                            v2 <= PUSH_FANOUT
                        })
                        .collect();
                    for n in push {
                        merge_entries(&mut self.outbox.entry(n).or_default().gossip, &improved);
                    }
                    self.outbox_due(now);
                }
            }
            ControlMsg::GossipBroadcast {
                channel,
                src,
                payload,
            } if channel == Channel::TOPOLOGY => {
                let update =
                    TopologyUpdate::decode(&payload).map_err(|e| Close::Failure(e.to_string()))?;
                let improved = self.apply_topology(now, id, update);
                if !improved.is_empty() {
                    self.relay_topology(now, src, &improved, Some(id));
                }
            }
            ControlMsg::GossipRequest { channel } if channel == Channel::TOPOLOGY => {
                // A full state at most once a second per connection: a peer asking in a loop
                // gets the periodic gossip, not a copy of everything per request.
                let due = self.conns.get_mut(&id).is_some_and(|c| {
                    let due = c
                        .last_full_reply
                        .is_none_or(|t| now >= t + FULL_REPLY_INTERVAL);
                    if due {
                        c.last_full_reply = Some(now);
                    }
                    due
                });
                if due {
                    self.send_full_topology(id);
                }
            }
            ControlMsg::Gossip { channel, payload } => {
                let from = self.remote_name(id);
                self.events.push_back(Event::Gossip {
                    channel,
                    from,
                    payload,
                });
            }
            ControlMsg::GossipBroadcast {
                channel,
                src,
                payload,
            } => {
                let from = self.remote_name(id);
                self.events.push_back(Event::Broadcast {
                    channel,
                    src,
                    from,
                    payload,
                });
            }
            ControlMsg::GossipUnicast {
                channel,
                src,
                dst,
                payload,
            } => {
                if dst == self.cfg.name {
                    self.events.push_back(Event::Unicast {
                        channel,
                        src,
                        payload,
                    });
                } else {
                    self.send_unicast(ControlMsg::GossipUnicast {
                        channel,
                        src,
                        dst,
                        payload,
                    });
                }
            }
            ControlMsg::TopologyVersions { versions, reply } => {
                let behind = reply && self.topology.behind(&versions);
                self.send_newer_topology(id, versions);
                if behind {
                    let versions = self.topology.versions();
                    self.send_msg(
                        id,
                        &ControlMsg::TopologyVersions {
                            versions,
                            reply: false,
                        },
                    );
                }
            }
            ControlMsg::TopologyDigest { digest } => {
                // At most once a second per connection: the digest is periodic, and a
                // neighbour sending it in a loop gets no more than that.
                let due = digest != self.topology.digest()
                    && self.conns.get_mut(&id).is_some_and(|c| {
                        let due = c
                            .last_versions_reply
                            .is_none_or(|t| now >= t + FULL_REPLY_INTERVAL);
                        if due {
                            c.last_versions_reply = Some(now);
                        }
                        due
                    });
                if due {
                    let versions = self.topology.versions();
                    self.send_msg(
                        id,
                        &ControlMsg::TopologyVersions {
                            versions,
                            reply: true,
                        },
                    );
                }
            }
            ControlMsg::GossipRequest { channel } => {
                // Protocol 2 asks after a digest differed; at most one answer a second per
                // channel, like topology.
                let due = self.conns.get_mut(&id).is_some_and(|c| {
                    c.version() >= 2
                        && Connection::due(
                            &mut c.last_state_reply,
                            channel,
                            now,
                            FULL_REPLY_INTERVAL,
                        )
                });
                if due {
                    let peer = self.remote_name(id);
                    self.events.push_back(Event::FullStateDue { peer, channel });
                } else {
                    debug!(?channel, "full-state request ignored");
                }
            }
            ControlMsg::StateDigest { channel, digest } => {
                let due = self.conns.get_mut(&id).is_some_and(|c| {
                    Connection::due(&mut c.last_state_digest, channel, now, FULL_REPLY_INTERVAL)
                });
                if due {
                    let peer = self.remote_name(id);
                    self.events.push_back(Event::StateDigest {
                        peer,
                        channel,
                        digest,
                    });
                }
            }
            ControlMsg::TopologyHave { versions, want } => {
                if want {
                    self.send_wanted(now, id, &versions);
                } else {
                    self.note_lazy_push(now, id, &versions);
                }
            }
            ControlMsg::Pinned => {
                if let Some(c) = self.conns.get_mut(&id) {
                    c.pinned = true;
                }
            }
            ControlMsg::Overlay(OverlayMsg::HeartbeatAck { conn_uid }) => {
                let t = &self.cfg.timing;
                if self
                    .conns
                    .get_mut(&id)
                    .is_some_and(|c| c.handle_heartbeat_ack(now, conn_uid, t))
                {
                    self.local_connections_changed(now);
                }
            }
            ControlMsg::Rekey { epoch, msg } => {
                let cr =
                    self.cfg.crypto.as_ref().ok_or_else(|| {
                        Close::Failure("rekey on an unencrypted connection".into())
                    })?;
                let Some(c) = self.conns.get_mut(&id) else {
                    return Ok(());
                };
                let (reply, keys) = c
                    .handle_rekey(epoch, &msg, cr)
                    .map_err(|e| match e {
                        crate::crypto::CryptoError::AuthFailed => Close::Failure(
                            "authentication failed: the peer renewed its keys with a password we no longer accept".into(),
                        ),
                        e => Close::Failure(format!("rekey: {e}")),
                    })?;
                self.emit_keys(id, keys);
                self.send_msg(id, &reply);
            }
            ControlMsg::RekeyAck { epoch, msg } => {
                let interval = self
                    .cfg
                    .crypto
                    .as_ref()
                    .map_or(crate::crypto::REKEY_INTERVAL, |c| c.rekey_interval);
                let Some(c) = self.conns.get_mut(&id) else {
                    return Ok(());
                };
                let (done, keys) = c
                    .handle_rekey_ack(epoch, &msg, now, interval)
                    .map_err(|e| Close::Failure(format!("rekey: {e}")))?;
                debug!(epoch, "data keys renewed");
                self.emit_keys(id, keys);
                self.send_msg(id, &done);
            }
            ControlMsg::RekeyDone { epoch } => {
                let Some(c) = self.conns.get_mut(&id) else {
                    return Ok(());
                };
                let keys = c
                    .handle_rekey_done(epoch, now)
                    .map_err(|e| Close::Failure(format!("rekey: {e}")))?;
                debug!(epoch, "data keys renewed");
                self.emit_keys(id, keys);
            }
        }
        Ok(())
    }

    fn on_udp_heartbeat(
        &mut self,
        now: Instant,
        from: SocketAddr,
        sender: PeerName,
        conn_uid: u64,
    ) {
        let Some(&id) = self.by_peer.get(&sender) else {
            self.stats.udp_unexpected += 1;
            return;
        };
        let t = &self.cfg.timing;
        let Some((ack, addr_changed)) = self
            .conns
            .get_mut(&id)
            .and_then(|c| c.handle_udp_heartbeat(now, from, conn_uid, t))
        else {
            self.stats.udp_unexpected += 1;
            return;
        };
        if ack {
            self.send_msg(
                id,
                &ControlMsg::Overlay(OverlayMsg::HeartbeatAck { conn_uid }),
            );
        }
        if addr_changed {
            self.dataplane_changed(now);
        }
    }

    /// Tells the data plane the keys for the peer on connection `id`.
    fn emit_keys(&mut self, id: ConnId, keys: crate::crypto::PeerKeys) {
        if let Some(r) = self.conns.get(&id).and_then(|c| c.remote.as_ref())
            && self.by_peer.get(&r.name) == Some(&id)
        {
            self.events
                .push_back(Event::DataKeys { peer: r.name, keys });
        }
    }

    /// Forgets a connection. `tell_shell`: the socket is still open and must be closed.
    pub(super) fn close(&mut self, now: Instant, id: ConnId, why: Close, tell_shell: bool) {
        let Some(c) = self.conns.remove(&id) else {
            return;
        };
        if tell_shell {
            self.actions.push_back(Action::Close { conn: id });
        }
        let reason = why.reason().to_string();
        let dir = c.arrow();
        let who = match &c.remote {
            Some(r) if c.phase == Phase::Ready => format!("{}|{}({})", c.addr, r.name, r.nickname),
            _ => c.addr.to_string(),
        };
        match &why {
            Close::Duplicate(_) | Close::Shed(_) => {
                debug!("{dir}[{who}]: connection deleted: {reason}")
            }
            _ => info!("{dir}[{who}]: connection shutting down due to error: {reason}"),
        }
        if c.phase == Phase::Ready {
            self.stats.terminations += 1;
            if let Some(r) = &c.remote
                && self.by_peer.get(&r.name) == Some(&id)
            {
                self.by_peer.remove(&r.name);
                if !c.secure().keys().recv.is_empty() || c.secure().keys().send.is_some() {
                    self.events.push_back(Event::DataKeys {
                        peer: r.name,
                        keys: Default::default(),
                    });
                }
            }
            self.local_connections_changed(now);
        }
        let refused_untargeted = c.target.is_none() && matches!(why, Close::Refused(_));
        let shed = matches!(why, Close::Shed(_));
        if refused_untargeted
            || (!shed && !c.outbound && !matches!(c.phase, Phase::Header | Phase::Ready))
        {
            // An inbound connection that failed (before it was ready, or refused later) has no
            // target to show the reason: keep it for status.
            if !self
                .recent_failures
                .iter()
                .any(|(a, _, t)| *a == c.addr && *t == now)
            {
                self.recent_failures
                    .push_back((c.addr, reason.clone(), now));
                while self.recent_failures.len() > 10 {
                    self.recent_failures.pop_front();
                }
            }
        }
        if let Some(key) = &c.target {
            let backoff = self.cfg.timing.backoff.clone();
            if let Some(t) = self.targets.get_mut(key)
                && t.conn == Some(id)
            {
                match why {
                    Close::Duplicate(_) | Close::Shed(_) => t.conn = None,
                    Close::Suspend(r) => t.suspend(r),
                    Close::Failure(r) | Close::AuthFailed(r) | Close::Refused(r)
                        if c.phase == Phase::Ready =>
                    {
                        t.disconnected(now, c.ready_at, r, &backoff, &mut self.rng)
                    }
                    Close::Failure(r) | Close::AuthFailed(r) | Close::Refused(r) => {
                        t.failed(now, r, &backoff, &mut self.rng)
                    }
                }
            }
        }
        self.maker_dirty = true;
    }

    // ---- topology, gossip, routes ----------------------------------------------------------

    fn local_connections_changed(&mut self, now: Instant) {
        let conns: Vec<ConnectionSummary> = self
            .by_peer
            .iter()
            .map(|(name, id)| {
                let c = &self.conns[id];
                ConnectionSummary {
                    peer: *name,
                    addr: c.addr,
                    outbound: c.outbound,
                    established: c.established,
                }
            })
            .collect();
        if self.topology.set_local_connections(conns) {
            self.schedule_broadcast(now);
            self.topology_changed(now);
        }
    }

    /// In a partial view, garbage collection of unreachable peers waits with the routes
    /// (`route_delay`, paced): it walks the whole topology, and a burst of updates then pays
    /// for one walk, not one each. Entries of peers nobody lists are not relayed meanwhile
    /// (`apply_topology`).
    pub(super) fn topology_changed(&mut self, now: Instant) {
        if self.degree_target().is_none() {
            // A full mesh is small: collect at once, as Weave did, so a peer that went is
            // forgotten (its names, records) before a new incarnation of it can arrive.
            self.collect_garbage();
        }
        self.check_surplus(now);
        if self.cfg.discovery && self.discovery_at.is_none() {
            self.discovery_at = Some(now + self.cfg.timing.discovery_interval);
        }
        self.dataplane_changed(now);
    }

    fn collect_garbage(&mut self) {
        for gone in self.topology.garbage_collect() {
            info!("Removed unreachable peer {gone}");
            self.events.push_back(Event::PeerRemoved(gone));
        }
    }

    fn dataplane_changed(&mut self, now: Instant) {
        if self.dataplane_at.is_none() {
            self.dataplane_at = Some(now + self.paced(self.cfg.timing.route_delay));
        }
    }

    pub(super) fn schedule_broadcast(&mut self, now: Instant) {
        if self.broadcast_at.is_none() {
            self.broadcast_at = Some(now + self.cfg.timing.broadcast_delay);
        }
    }

    fn compute_dataplane(&self) -> DataPlaneTable {
        let local = self.cfg.name;
        let neighbours: BTreeMap<PeerName, SocketAddr> = self
            .by_peer
            .iter()
            .filter_map(|(name, id)| {
                let c = &self.conns[id];
                c.udp_addr.filter(|_| c.established).map(|a| (*name, a))
            })
            .collect();
        let g = Graph::from_topology(&self.topology, Variant::Established);
        let unicast = g
            .unicast_from(local)
            .into_iter()
            .filter(|(_, hop)| neighbours.contains_key(hop))
            .collect();
        let parents = g.tree_parents(local);
        let relay_children = neighbours
            .keys()
            .filter(|n| parents.contains(n))
            .copied()
            .collect();
        let broadcast = BroadcastTrees::new(g, local, neighbours.keys().copied().collect());
        DataPlaneTable {
            local,
            unicast,
            broadcast,
            neighbours,
            relay_children,
        }
    }

    // ---- connection maker ---------------------------------------------------------------

    fn targets_changed(&mut self) {
        self.events
            .push_back(Event::TargetsChanged(self.direct_targets()));
        self.maker_dirty = true;
    }

    /// Whether the user told us to connect to the peer on connection `id`: the connection is
    /// to one of our direct targets, whichever side dialled it.
    pub(super) fn is_direct_peer(&self, id: ConnId, peer: PeerName) -> bool {
        let Some(c) = self.conns.get(&id) else {
            return false;
        };
        if matches!(&c.target, Some(TargetKey::Direct(_))) {
            return true;
        }
        self.targets.iter().any(|(k, t)| {
            matches!(k, TargetKey::Direct(_))
                && (t.peer == Some(peer) || (!c.outbound && t.addr.ip() == c.addr.ip()))
        })
    }

    fn note_target_peer(&mut self, id: ConnId, peer: PeerName) {
        if let Some(key) = self.conns.get(&id).and_then(|c| c.target.clone())
            && let Some(t) = self.targets.get_mut(&key)
        {
            t.peer = Some(peer);
        }
    }

    /// Whether `--conn-limit` is reached. Only connections that proved who they are, and our
    /// own dials, count: half-open inbound connections have limits of their own
    /// ([`MAX_PENDING_INBOUND`], [`MAX_PENDING_PER_SOURCE`]), so strangers cannot use up the
    /// limit and lock real peers out or stop our dials.
    fn at_conn_limit(&self) -> bool {
        self.at_conn_limit_excluding(None)
    }

    fn at_conn_limit_excluding(&self, id: Option<ConnId>) -> bool {
        let counted = self
            .conns
            .values()
            .filter(|c| Some(c.id) != id && (c.outbound || c.phase == Phase::Ready))
            .count();
        self.cfg.conn_limit > 0 && counted >= self.cfg.conn_limit
    }

    /// Makes room for another half-open inbound connection from `remote`: refused if that
    /// address has too many already; if all together are too many, the oldest goes (so a
    /// real peer's connection gets in however many a stranger keeps open, and finishes its
    /// handshake long before it would be the oldest).
    fn admit_pending(&mut self, now: Instant, remote: SocketAddr) -> bool {
        let mut all = 0;
        let mut same_source = 0;
        let mut oldest = None;
        for c in self.conns.values() {
            if !c.outbound && c.phase != Phase::Ready {
                all += 1;
                oldest.get_or_insert(c.id);
                if c.addr.ip() == remote.ip() {
                    same_source += 1;
                }
            }
        }
        if same_source >= MAX_PENDING_PER_SOURCE {
            return false;
        }
        if all >= MAX_PENDING_INBOUND
            && let Some(id) = oldest
        {
            let why = Close::Shed("too many half-open connections: dropped the oldest".into());
            self.stats.refused_pending += 1;
            self.close(now, id, why, true);
        }
        true
    }

    fn alloc_conn(&mut self) -> ConnId {
        let id = ConnId(self.next_conn);
        self.next_conn += 1;
        id
    }

    /// Runs pending bookkeeping at the end of every input.
    pub(super) fn after(&mut self, now: Instant) {
        if self.maker_dirty {
            self.maker_dirty = false;
            self.run_maker(now);
        }
    }

    fn update_discovered(&mut self, now: Instant) {
        let generation = self.topology.generation();
        if self.discovered_gen == Some(generation) {
            return;
        }
        self.discovered_gen = Some(generation);
        let mut quota = self.discovery_quota();
        if quota == Some(0) {
            // A full partial view takes no one new: skip the walk over every reported
            // connection, which a thousand-peer topology makes the costliest thing we do.
            return;
        }
        let direct_addrs: BTreeSet<SocketAddr> = self
            .targets
            .iter()
            .filter(|(k, _)| matches!(k, TargetKey::Direct(_)))
            .map(|(_, t)| t.addr)
            .collect();
        let mut candidates: BTreeMap<SocketAddr, (PeerName, Option<u64>)> = BTreeMap::new();
        for reporter in self.topology.peers() {
            for c in &reporter.connections {
                if c.peer == self.cfg.name || self.by_peer.contains_key(&c.peer) {
                    continue;
                }
                let addr = if c.outbound {
                    c.addr
                } else {
                    // The reporter sees the peer's ephemeral port; dial its listening port.
                    let port = self
                        .topology
                        .get(&c.peer)
                        .map_or(self.cfg.tcp_port, |p| p.tcp_port);
                    SocketAddr::new(c.addr.ip(), port)
                };
                if !direct_addrs.contains(&addr) {
                    let uid = self.topology.get(&c.peer).map(|p| p.uid);
                    candidates.insert(addr, (c.peer, uid));
                }
            }
        }
        // A discovered peer nobody reports any more is dropped, but not before it was tried
        // once: the peer that reported it may have gone while the peer itself is alive.
        self.targets.retain(|k, t| match k {
            TargetKey::Discovered(a) => {
                t.conn.is_some() || t.attempts == 0 || candidates.contains_key(a)
            }
            TargetKey::Direct(_) => true,
        });
        let mut candidates: Vec<_> = candidates.into_iter().collect();
        if quota.is_some() {
            candidates = self.overlay_order(candidates);
        }
        let backoff = &self.cfg.timing.backoff;
        let jitter = self.cfg.timing.discovery_jitter.as_micros() as u64;
        let mut discovered = self
            .targets
            .keys()
            .filter(|k| matches!(k, TargetKey::Discovered(_)))
            .count();
        let cap = self.max_discovered();

        for (addr, (peer, uid)) in candidates {
            let key = TargetKey::Discovered(addr);
            if !self.targets.contains_key(&key) {
                if let Some(q) = &mut quota {
                    if *q == 0 {
                        continue;
                    }
                    *q -= 1;
                }
                if discovered >= cap {
                    // Peers learned from gossip are not all dialled at once: a peer that
                    // invents thousands of them would otherwise have every router dial
                    // thousands of addresses it chose.
                    continue;
                }
                discovered += 1;
            }
            let soon = now + Duration::from_micros(self.rng.below(jitter.max(1)));
            let t = self.targets.entry(key).or_insert_with(|| {
                let mut t = Target::new(addr, true, now, backoff);
                t.retry_at = soon;
                t
            });
            t.peer.get_or_insert(peer);
            // The peer restarted (gossip shows a new incarnation): whatever made our dials
            // fail may be gone, so try again now rather than after the backoff.
            if t.conn.is_none() && t.attempts > 0 && uid.is_some() && t.peer_uid != uid {
                t.attempts = 0;
                t.interval = backoff.initial;
                t.retry_at = soon;
            }
            if uid.is_some() {
                t.peer_uid = uid;
            }
        }
    }

    /// Discovered addresses we keep as targets at once: twice the connection limit (we could
    /// not hold more connections anyway; the rest are taken as these are connected or
    /// dropped), or 1,024 without a limit.
    fn max_discovered(&self) -> usize {
        match self.cfg.conn_limit {
            0 => 1024,
            n => 2 * n,
        }
    }

    /// Whether a target needs no dial: we are connected to the peer last seen there, are
    /// dialling it already, or that peer dialled us. An inbound connection comes from an
    /// ephemeral port, so it stands for a target with an explicit port (e.g. a `--resume`d
    /// `ip:port`) when the peer listens on that port; dialling anyway would make a second
    /// connection whose tie-break replaces the first, dropping traffic.
    fn target_satisfied(&self, t: &Target) -> bool {
        if t.peer.is_some_and(|p| self.by_peer.contains_key(&p)) {
            return true;
        }
        self.conns.values().any(|c| {
            let inbound_from_target = !c.outbound
                && c.phase == Phase::Ready
                && c.addr.ip() == t.addr.ip()
                && (!t.port_given
                    || c.remote
                        .as_ref()
                        .and_then(|r| self.topology.get(&r.name))
                        .is_some_and(|p| p.tcp_port == t.addr.port()));
            c.addr == t.addr || inbound_from_target
        })
    }

    /// When each dial of a discovered peer that still counts against [`MAX_PENDING_DIALS`]
    /// started, earliest first: not ready yet and younger than [`PENDING_DIAL_WINDOW`].
    fn pending_discovered_dials(&self, now: Instant) -> Vec<Instant> {
        let mut started: Vec<Instant> = self
            .conns
            .values()
            .filter(|c| {
                c.outbound
                    && c.phase != Phase::Ready
                    && matches!(c.target, Some(TargetKey::Discovered(_)))
                    && now.saturating_duration_since(c.ready_at) < PENDING_DIAL_WINDOW
            })
            .map(|c| c.ready_at)
            .collect();
        started.sort();
        started
    }

    fn run_maker(&mut self, now: Instant) {
        let mut wake: Option<Instant> = None;
        let mut pending = self.pending_discovered_dials(now);
        let keys: Vec<TargetKey> = self.targets.keys().cloned().collect();
        for key in keys {
            let t = &self.targets[&key];
            if t.suspended || t.conn.is_some() {
                continue;
            }
            if t.retry_at > now {
                wake = Some(wake.map_or(t.retry_at, |w| w.min(t.retry_at)));
                continue;
            }
            if self.target_satisfied(t) || self.at_conn_limit() {
                continue;
            }
            if matches!(key, TargetKey::Discovered(_)) {
                if self.overlay_full() {
                    continue;
                }
                if let Some(free_at) = pending
                    .first()
                    .filter(|_| pending.len() >= MAX_PENDING_DIALS)
                {
                    // Enough dials of discovered peers are under way: the next waits for one to
                    // finish (or for a slow one to stop counting).
                    let at = *free_at + PENDING_DIAL_WINDOW;
                    wake = Some(wake.map_or(at, |w| w.min(at)));
                    continue;
                }
            }
            let addr = t.addr;
            let id = self.alloc_conn();
            let conn_id = self.rng.nonzero_u64();
            let mut c = Connection::new(
                id,
                true,
                addr,
                Phase::Dialing,
                now,
                conn_id,
                &self.cfg.timing,
            );
            c.target = Some(key.clone());
            self.conns.insert(id, c);
            if matches!(key, TargetKey::Discovered(_)) {
                pending.push(now);
            }
            self.targets.get_mut(&key).expect("key from map").conn = Some(id);
            debug!(%addr, "dialling");
            self.actions.push_back(Action::Dial { conn: id, addr });
        }
        self.maker_wake = wake;
    }

    /// Closes the connection to `peer` because a higher layer refuses it (e.g. its IP
    /// allocation ring conflicts with ours). The reason shows in status and is retried with
    /// backoff.
    pub fn reject_peer(&mut self, now: Instant, peer: PeerName, reason: String) {
        if let Some(&id) = self.by_peer.get(&peer) {
            // Said before closing (the shell sends what is queued first), so the peer's status
            // shows why rather than a bare end of connection.
            self.send_msg(
                id,
                &ControlMsg::Refused {
                    reason: reason.clone(),
                },
            );
            self.close(now, id, Close::Refused(reason), true);
            self.after(now);
        }
    }

    // ---- output helpers -----------------------------------------------------------------

    /// Frames a message body on `conn`, encrypted on encrypted connections.
    pub(super) fn send_body(&mut self, conn: ConnId, body: Vec<u8>) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.send_body(body, &mut self.actions);
        }
    }

    /// Replaces the accepted passwords (`psks[0]` is used to dial and rekey). Existing
    /// connections keep their keys, so traffic is not interrupted; those we dialled that last
    /// proved a password no longer accepted rekey at once with the current one, the others
    /// re-prove theirs at their peer's next rekey, or are closed if they cannot.
    pub fn set_psks(&mut self, now: Instant, psks: Vec<crate::crypto::Secret>) {
        let Some(cr) = &mut self.cfg.crypto else {
            return;
        };
        if psks.is_empty() {
            return;
        }
        cr.psks = psks;
        let accepted = cr.psks.clone();
        for c in self.conns.values_mut() {
            c.reprove_password(now, &accepted);
        }
    }

    /// The accepted passwords' keys, the one in use first (empty without encryption).
    pub fn psks(&self) -> &[crate::crypto::Secret] {
        self.cfg.crypto.as_ref().map_or(&[], |c| &c.psks)
    }

    pub(super) fn send_msg(&mut self, conn: ConnId, msg: &ControlMsg) {
        self.send_body(conn, msg.encode_body());
    }

    // ---- status -------------------------------------------------------------------------

    pub fn status(&mut self, now: Instant) -> RouterStatus {
        let nick =
            |t: &Topology, n: &PeerName| t.get(n).map(|p| p.nickname.clone()).unwrap_or_default();
        let peers = self
            .topology
            .peers()
            .map(|p| PeerStatus {
                name: p.name,
                nickname: p.nickname.clone(),
                uid: p.uid,
                version: p.version,
                connections: p
                    .connections
                    .iter()
                    .map(|c| PeerConnectionStatus {
                        name: c.peer,
                        nickname: nick(&self.topology, &c.peer),
                        addr: c.addr,
                        outbound: c.outbound,
                        established: c.established,
                    })
                    .collect(),
            })
            .collect();
        let mut connections = Vec::new();
        for c in self.conns.values() {
            if c.phase != Phase::Ready {
                continue;
            }
            let r = c.remote.as_ref().expect("ready connections have a remote");
            connections.push(ConnectionStatus {
                outbound: c.outbound,
                addr: c.addr,
                state: if c.established {
                    ConnectionState::Established
                } else {
                    ConnectionState::Pending
                },
                peer: Some((r.name, r.nickname.clone())),
                overlay: Some("sleeve"),
                overlay_reason: None,
                mtu: Some(self.cfg.mtu),
                encrypted: self.cfg.crypto.as_ref().map(|_| c.secure().data_encrypted),
                key_epoch: c.secure().data_encrypted.then(|| c.secure().epoch()),
                cipher: c
                    .secure()
                    .data_encrypted
                    .then(|| c.secure().data_cipher.name()),
                error: None,
                retry_in: None,
            });
        }
        for (addr, why, at) in &self.recent_failures {
            if now.saturating_duration_since(*at) < Duration::from_secs(120) {
                connections.push(ConnectionStatus {
                    outbound: false,
                    addr: *addr,
                    state: ConnectionState::Failed,
                    peer: None,
                    overlay: None,
                    overlay_reason: None,
                    mtu: None,
                    encrypted: None,
                    key_epoch: None,
                    cipher: None,
                    error: Some(why.clone()),
                    retry_in: None,
                });
            }
        }
        for t in self.targets.values() {
            let ready = t
                .conn
                .and_then(|id| self.conns.get(&id))
                .is_some_and(|c| c.phase == Phase::Ready);
            if ready || (t.conn.is_none() && self.target_satisfied(t)) {
                continue;
            }
            let state = ConnectionState::from_target(t.state(false));
            connections.push(ConnectionStatus {
                outbound: true,
                addr: t.addr,
                state,
                peer: None,
                overlay: None,
                overlay_reason: None,
                mtu: None,
                encrypted: None,
                key_epoch: None,
                cipher: None,
                error: t.last_error.clone(),
                retry_in: (state == ConnectionState::Failed && !t.suspended)
                    .then(|| t.retry_at.saturating_duration_since(now)),
            });
        }
        let local = self.cfg.name;
        let g = Graph::from_topology(&self.topology, Variant::Established);
        RouterStatus {
            name: local,
            nickname: self.cfg.nickname.clone(),
            uid: self.uid,
            port: self.cfg.tcp_port,
            protocol_min: control::PROTOCOL_MIN,
            protocol_max: self.cfg.protocol_max,
            discovery: self.cfg.discovery,
            conn_limit: self.cfg.conn_limit,
            encryption: self.cfg.crypto.is_some(),
            passwords: self.psks().len(),
            trusted_subnets: self
                .cfg
                .crypto
                .as_ref()
                .map(|c| c.trusted.iter().map(ToString::to_string).collect())
                .unwrap_or_default(),
            peers,
            connections,
            targets: self.direct_targets(),
            unicast_routes: g.unicast_from(local).into_iter().collect(),
            broadcast_routes: if self.topology.len() <= STATUS_ALL_TREES {
                g.peers()
                    .map(|src| (src, g.broadcast_children(src, local)))
                    .collect()
            } else {
                vec![(local, g.broadcast_children(local, local))]
            },
            termination_count: self.stats.terminations,
            protocol_errors: self.stats.protocol_errors,
            invalid_entries: self.stats.invalid_entries,
            over_limit: self.stats.over_limit,
            udp_unexpected: self.stats.udp_unexpected,
            full_states_held: self.stats.full_states_held,
            shed_surplus: self.stats.shed_surplus,
            tree_repairs: self.stats.tree_repairs,
            refused_pending: self.stats.refused_pending,
            direct_paths: Vec::new(),
        }
    }
}

#[cfg(test)]
mod admission_tests {
    //! Half-open connections from strangers against a real peer's, with two routers wired
    //! back to back by hand.

    use super::*;

    fn router(last: u8, conn_limit: usize) -> Router {
        let cfg = RouterConfig {
            name: PeerName::from_bytes([0x0a, 0, 0, 0, 0, last]),
            nickname: format!("r{last}"),
            tcp_port: 6783,
            udp_port: 6783,
            conn_limit,
            discovery: false,
            mtu: 1376,
            timing: Timing::default(),
            crypto: None,
            gossip_chunk: weft_proto::MAX_GOSSIP_CHUNK,
            protocol_max: control::PROTOCOL_MAX,
            full_mesh_peers: FULL_MESH_PEERS,
        };
        Router::new(cfg, Instant::now(), u64::from(last))
    }

    fn addr(last: u8) -> SocketAddr {
        SocketAddr::from(([198, 18, 0, last], 6783))
    }

    /// Passes what each router sends to the other until both are quiet; `a` dials `b`.
    fn pump(now: Instant, a: &mut Router, b: &mut Router) {
        let (mut a2b, mut b2a) = (BTreeMap::new(), BTreeMap::new());
        loop {
            let mut moved = false;
            while let Some(act) = a.poll_action() {
                moved = true;
                match act {
                    Action::Dial { conn, addr: to } => {
                        assert_eq!(to, addr(2));
                        let theirs = b.handle_accept(now, addr(1)).expect("accepted");
                        a2b.insert(conn, theirs);
                        b2a.insert(theirs, conn);
                        a.handle_dialed(now, conn, Ok(()));
                    }
                    Action::Send { conn, bytes } => {
                        if let Some(&t) = a2b.get(&conn) {
                            b.handle_conn_data(now, t, &bytes);
                        }
                    }
                    Action::SendUdp { bytes, .. } => b.handle_udp(now, addr(1), &bytes),
                    Action::Mark { conn, channel } => a.handle_written(now, conn, channel),
                    Action::Close { .. } => {}
                }
            }
            while let Some(act) = b.poll_action() {
                moved = true;
                match act {
                    Action::Send { conn, bytes } => {
                        if let Some(&t) = b2a.get(&conn) {
                            a.handle_conn_data(now, t, &bytes);
                        }
                    }
                    Action::SendUdp { bytes, .. } => a.handle_udp(now, addr(2), &bytes),
                    Action::Mark { conn, channel } => b.handle_written(now, conn, channel),
                    Action::Dial { .. } | Action::Close { .. } => {}
                }
            }
            if !moved {
                return;
            }
        }
    }

    /// Strangers at many addresses open connections to `b` and never say anything.
    fn flood(now: Instant, b: &mut Router, n: u32) {
        for i in 0..n {
            let ip = std::net::Ipv4Addr::from(0xc612_1000 + i / 2);
            let _ = b.handle_accept(now, SocketAddr::from((ip, 40000 + i as u16)));
        }
        while b.poll_action().is_some() {}
    }

    fn half_open(b: &Router) -> usize {
        b.conns
            .values()
            .filter(|c| !c.outbound && c.phase != Phase::Ready)
            .count()
    }

    #[test]
    fn a_peer_joins_at_once_however_many_half_open_connections_strangers_keep() {
        let now = Instant::now();
        let (mut a, mut b) = (router(1, 200), router(2, 200));
        flood(now, &mut b, 400);
        assert_eq!(half_open(&b), MAX_PENDING_INBOUND);
        a.connect(now, vec![("b".into(), addr(2), true)], false);
        pump(now, &mut a, &mut b);
        assert!(a.connected_peers().any(|p| *p == b.name()));
        assert!(b.connected_peers().any(|p| *p == a.name()));
        assert!(b.status(now).refused_pending >= 400 - MAX_PENDING_INBOUND as u64);
        // The strangers' connections go within the short deadline.
        let later = now + Timing::default().pending_timeout;
        b.handle_timeout(later);
        assert_eq!(half_open(&b), 0);
        assert_eq!(b.conns.len(), 1);
    }

    /// `a` and `b` connected, and 20 topology requests from `a` to `b`, encoded.
    fn asks(now: Instant) -> (Router, Router, Vec<Vec<u8>>) {
        let (mut a, mut b) = (router(1, 200), router(2, 200));
        a.connect(now, vec![("b".into(), addr(2), true)], false);
        pump(now, &mut a, &mut b);
        let id = *a.by_peer.get(&b.name()).expect("connected");
        let ask = ControlMsg::GossipRequest {
            channel: Channel::TOPOLOGY,
        };
        for _ in 0..20 {
            a.send_msg(id, &ask);
        }
        let asks: Vec<Vec<u8>> = std::iter::from_fn(|| a.poll_action())
            .filter_map(|x| match x {
                Action::Send { bytes, .. } => Some(bytes),
                _ => None,
            })
            .collect();
        assert_eq!(asks.len(), 20);
        (a, b, asks)
    }

    /// Feeds `asks` to `b` from `a`; the frames `b` queues in reply, and its marks.
    fn replies(b: &mut Router, a: &Router, at: Instant, asks: &[Vec<u8>]) -> (usize, Vec<Channel>) {
        let theirs = *b.by_peer.get(&a.name()).expect("connected");
        for q in asks {
            b.handle_conn_data(at, theirs, q);
        }
        let (mut frames, mut marks) = (0, Vec::new());
        while let Some(x) = b.poll_action() {
            match x {
                Action::Send { .. } => frames += 1,
                Action::Mark { channel, .. } => marks.push(channel),
                _ => {}
            }
        }
        (frames, marks)
    }

    #[test]
    fn a_neighbour_asking_for_the_full_state_in_a_loop_gets_it_once_a_second() {
        let now = Instant::now();
        let (a, mut b, asks) = asks(now);
        let theirs = *b.by_peer.get(&a.name()).expect("connected");
        assert_eq!(
            replies(&mut b, &a, now, &asks),
            (1, vec![Channel::TOPOLOGY])
        );
        b.handle_written(now, theirs, Channel::TOPOLOGY);
        assert_eq!(b.poll_action().map(|_| ()), None, "nothing was held back");
        let later = now + FULL_REPLY_INTERVAL;
        assert_eq!(replies(&mut b, &a, later, &asks).0, 1);
    }

    #[test]
    fn a_neighbour_that_does_not_read_never_has_two_full_states_queued() {
        let now = Instant::now();
        let (a, mut b, asks) = asks(now);
        let theirs = *b.by_peer.get(&a.name()).expect("connected");
        assert_eq!(replies(&mut b, &a, now, &asks).0, 1);
        // Ten seconds of asking while our shell never gets the first reply out.
        for s in 1..=10 {
            let at = now + FULL_REPLY_INTERVAL * s;
            assert_eq!(replies(&mut b, &a, at, &asks), (0, vec![]), "second {s}");
        }
        // The same for the other channels' periodic and welcome full states.
        b.gossip_to(a.name(), Channel::DNS, vec![vec![1]]);
        b.gossip_to(a.name(), Channel::DNS, vec![vec![2]]);
        b.gossip_random(Channel::DNS, vec![vec![3]]);
        // Digests are a few bytes and go regardless; full states wait.
        let sent: Vec<Action> = std::iter::from_fn(|| b.poll_action())
            .filter(|x| {
                !matches!(x, Action::Send { bytes, .. }
                    if matches!(ControlMsg::decode(&bytes[4..]), Ok(ControlMsg::StateDigest { .. })))
            })
            .collect();
        assert_eq!(sent.len(), 2, "one DNS full state and its mark: {sent:?}");
        assert!(b.status(now).full_states_held >= 11);
        // Once it is written, the newest goes, once.
        let later = now + FULL_REPLY_INTERVAL * 11;
        b.handle_written(later, theirs, Channel::TOPOLOGY);
        let kinds: Vec<bool> = std::iter::from_fn(|| b.poll_action())
            .map(|x| matches!(x, Action::Mark { .. }))
            .collect();
        assert_eq!(kinds, vec![false, true], "one full topology and its mark");
        b.handle_written(later, theirs, Channel::DNS);
        let due: Vec<Event> = std::iter::from_fn(|| b.poll_event())
            .filter(|e| matches!(e, Event::FullStateDue { .. }))
            .collect();
        assert_eq!(
            due,
            vec![Event::FullStateDue {
                peer: a.name(),
                channel: Channel::DNS
            }]
        );
    }

    #[test]
    fn one_address_gets_a_few_half_open_connections_only() {
        let now = Instant::now();
        let mut b = router(2, 200);
        let stranger = addr(9);
        let taken = (0..50)
            .filter(|_| b.handle_accept(now, stranger).is_some())
            .count();
        assert_eq!(taken, MAX_PENDING_PER_SOURCE);
    }

    #[test]
    fn half_open_connections_use_up_neither_the_limit_nor_our_dials() {
        let now = Instant::now();
        let (mut a, mut b) = (router(1, 2), router(2, 2));
        flood(now, &mut a, 100);
        flood(now, &mut b, 100);
        // a still dials (its table is full of strangers, but they do not count)...
        a.connect(now, vec![("b".into(), addr(2), true)], false);
        // ...and b still takes a real peer.
        pump(now, &mut a, &mut b);
        assert!(a.connected_peers().any(|p| *p == b.name()));
    }
}
