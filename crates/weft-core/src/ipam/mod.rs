//! IP address management without an external store: the ring CRDT ([`ring`]), this peer's
//! allocations ([`space`]), ring bootstrap by Paxos ([`paxos`]), and [`Ipam`], the state
//! machine that serves allocate/claim/release requests over them.
//!
//! Guarantees:
//! - an address is allocated only from a range this peer owns in its ring, and a range changes
//!   owner only by its owner giving it away (after which it no longer allocates there) or by an
//!   explicit take-over of a dead peer (`rmpeer`) or of a leaving one (`reset`): no address is
//!   handed out twice unless `rmpeer` is run on a peer that is still alive, which is refused
//!   while that peer is reachable;
//! - every change that a caller could observe is persisted before the caller hears of it
//!   ([`IpamOutput::Persist`] comes out before [`IpamOutput::Done`] and before any gossip);
//! - requests never hang: each has a deadline and fails with the reason it was waiting;
//! - rings created independently refuse to merge ([`ring::MergeError`]); the node layer closes
//!   the connection and reports why.

pub mod paxos;
pub mod ring;
pub mod space;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use tracing::{info, warn};
use weft_proto::PeerName;
use weft_proto::ipam::{IpamMsg, IpamState, NodeId, Persisted, RingState};

use crate::rng::Rng;
use paxos::{MAX_PAXOS_CLAIMS, Paxos};
use ring::{MergeError, Ring, RingError};
use space::{Space, host_range};

/// How the ring comes into being.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InitMode {
    /// Agree with a quorum of peers on who seeds the ring.
    Consensus { quorum: usize },
    /// Seed the ring with exactly these peers (every peer must be given the same list).
    Seed(Vec<PeerName>),
    /// Never vote; wait for a ring from other peers.
    Observer,
}

#[derive(Clone, Debug)]
pub struct IpamConfig {
    pub universe: Ipv4Net,
    pub default_subnet: Ipv4Net,
    pub init: InitMode,
    /// How long a request may wait (for the ring, or for space) before failing.
    pub request_timeout: Duration,
    /// Retry interval for proposals and space requests.
    pub tick: Duration,
    /// Free-count updates are broadcast at most this often.
    pub broadcast_delay: Duration,
}

impl IpamConfig {
    pub fn new(universe: Ipv4Net, init: InitMode) -> Self {
        IpamConfig {
            universe: universe.trunc(),
            default_subnet: universe.trunc(),
            init,
            request_timeout: Duration::from_secs(30),
            tick: Duration::from_secs(5),
            broadcast_delay: Duration::from_millis(100),
        }
    }
}

/// Identifies a request so its answer can be matched.
pub type OpId = u64;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IpamError {
    #[error("timed out after {secs}s waiting for {what}: {status}")]
    Timeout {
        what: String,
        secs: u64,
        status: String,
    },
    #[error("subnet {subnet} is outside the allocation range {universe}")]
    OutOfRange { subnet: Ipv4Net, universe: Ipv4Net },
    #[error("invalid subnet {0}: it must have all host bits zero and at least 4 addresses")]
    InvalidSubnet(Ipv4Net),
    #[error("address {addr} is already in use by {owner}")]
    InUse { addr: Ipv4Addr, owner: String },
    #[error("address {addr} is owned by other peer {peer}, which did not give it up")]
    OwnedByPeer { addr: Ipv4Addr, peer: String },
    #[error("the request was cancelled")]
    Cancelled,
    #[error("{0}")]
    Refused(String),
    /// The shell cannot save the allocation state (a full disk, a read-only state
    /// directory): handing out an address it could forget in a crash is refused.
    #[error(
        "cannot save the IP allocation state ({0}): no new addresses until it can be saved; traffic keeps flowing"
    )]
    NotDurable(String),
}

/// Why saved allocation state cannot be taken up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IpamSetupError {
    #[error(
        "the saved IP allocation state belongs to peer {saved}, but this router is {ours}; launch with --name {saved} or run 'weft reset' to discard it"
    )]
    OtherPeer { saved: PeerName, ours: PeerName },
    #[error(
        "the saved IP allocation state is for range {saved}, but --ipalloc-range is {configured}; launch with --ipalloc-range {saved}, or run 'weft reset' to discard the saved state (attached containers then need new addresses)"
    )]
    OtherRange { saved: String, configured: Ipv4Net },
    #[error("saved IP allocation state: {0}")]
    Ring(#[from] RingError),
}

/// Why `rmpeer` will not take a peer's space.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RmPeerError {
    #[error("cannot rmpeer ourselves; use 'weft reset' to leave the network")]
    Ourselves,
    #[error(
        "peer {0} is still reachable; rmpeer is only for peers that are gone for good (stop or reset it first)"
    )]
    Reachable(String),
    #[error("unknown peer {0:?}: give a peer name or a known nickname")]
    Unknown(String),
    #[error("nickname {0:?} is ambiguous; give the peer name")]
    Ambiguous(String),
    #[error("IP address allocation is disabled")]
    Disabled,
}

/// Why IP allocation data from a peer is refused (and its connection with it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IpamRefusal {
    #[error("malformed IP allocation message: {0}")]
    Malformed(String),
    #[error(transparent)]
    Merge(#[from] MergeError),
    #[error(transparent)]
    Ring(#[from] RingError),
    #[error("peer {peer} owns {addr}, which is allocated here")]
    HeldHere { peer: String, addr: Ipv4Addr },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IpamOutput {
    /// Write this to disk (durably) before acting on anything that follows.
    Persist(Persisted),
    /// Send to every peer.
    Broadcast(Vec<u8>),
    /// Send to one peer.
    Unicast { dst: PeerName, payload: Vec<u8> },
    /// A request finished.
    Done {
        op: OpId,
        result: Result<Ipv4Net, IpamError>,
    },
}

#[derive(Clone, Debug)]
enum OpKind {
    Allocate { ident: String, subnet: Ipv4Net },
    Claim { ident: String, net: Ipv4Net },
    Prime,
}

#[derive(Clone, Debug)]
struct Op {
    id: OpId,
    kind: OpKind,
    /// `None`: a reclaim at launch, which nobody waits for and which never expires.
    deadline: Option<Instant>,
    /// The donor asked for space and when.
    asked: Option<(PeerName, Instant)>,
    denied: BTreeSet<PeerName>,
    tries: u32,
}

/// A snapshot for `weft status ipam`.
#[derive(Clone, Debug)]
pub struct IpamStatus {
    pub status: String,
    pub range: Ipv4Net,
    pub default_subnet: Ipv4Net,
    /// Per peer owning space: name, nickname, addresses owned, reachable.
    pub owners: Vec<(PeerName, String, u64, bool)>,
    pub active: usize,
    pub pending_allocates: usize,
    pub pending_claims: usize,
    pub ring: Option<String>,
    pub seeds: Vec<PeerName>,
    pub conflicts: Vec<String>,
    pub unreachable_ips: u64,
    pub total: u64,
    /// The ring: (first address, size, owner, version, free).
    pub entries: Vec<(u32, u64, PeerName, u32, u32)>,
}

pub struct Ipam {
    cfg: IpamConfig,
    me: PeerName,
    ring: Option<Ring>,
    space: Space,
    paxos: Paxos,
    ops: Vec<Op>,
    out: VecDeque<IpamOutput>,
    persist_due: bool,
    broadcast_at: Option<Instant>,
    next_tick: Instant,
    nicknames: BTreeMap<PeerName, String>,
    /// Gossiped entries refused at the bounds.
    over_limit: u64,
    reachable: BTreeSet<PeerName>,
    conflicts: VecDeque<String>,
    last_paxos_change: Instant,
    rng: Rng,
}

impl Ipam {
    /// Starts from persisted state if there is any; refuses state from another range or peer.
    pub fn new(
        cfg: IpamConfig,
        me: NodeId,
        nickname: &str,
        persisted: Option<Persisted>,
        now: Instant,
        seed: u64,
    ) -> Result<Ipam, IpamSetupError> {
        let (start, end) = range_of(&cfg.universe);
        let mut ring = None;
        let mut space = Space::default();
        if let Some(p) = persisted {
            if p.name != me.name {
                return Err(IpamSetupError::OtherPeer {
                    saved: p.name,
                    ours: me.name,
                });
            }
            if (p.start, p.end) != (start, end) {
                return Err(IpamSetupError::OtherRange {
                    saved: range_text(p.start, p.end),
                    configured: cfg.universe,
                });
            }
            if let Some(r) = p.ring {
                ring = Some(Ring::from_state(r)?);
            }
            let owned = p
                .owned
                .into_iter()
                .map(|(ident, nets)| {
                    let nets = nets
                        .into_iter()
                        .filter_map(|(a, l)| Ipv4Net::new(Ipv4Addr::from(a), l).ok())
                        .collect();
                    (ident, nets)
                })
                .collect();
            space = Space::from_owned(owned);
        }
        let (quorum, elector) = match &cfg.init {
            InitMode::Consensus { quorum } => (*quorum, true),
            InitMode::Seed(_) => (1, false),
            InitMode::Observer => (1, false),
        };
        let mut nicknames = BTreeMap::new();
        nicknames.insert(me.name, nickname.to_string());
        Ok(Ipam {
            paxos: Paxos::new(me, quorum, elector),
            me: me.name,
            cfg,
            ring,
            space,
            ops: Vec::new(),
            out: VecDeque::new(),
            persist_due: false,
            broadcast_at: None,
            next_tick: now,
            nicknames,
            over_limit: 0,
            reachable: BTreeSet::new(),
            conflicts: VecDeque::new(),
            last_paxos_change: now,
            rng: Rng::new(seed),
        })
    }

    pub fn universe(&self) -> Ipv4Net {
        self.cfg.universe
    }

    pub fn default_subnet(&self) -> Ipv4Net {
        self.cfg.default_subnet
    }

    pub fn set_default_subnet(&mut self, subnet: Ipv4Net) {
        self.cfg.default_subnet = subnet.trunc();
    }

    pub fn has_ring(&self) -> bool {
        self.ring.is_some()
    }

    pub fn ring(&self) -> Option<&Ring> {
        self.ring.as_ref()
    }

    pub fn space(&self) -> &Space {
        &self.space
    }

    /// Every elector's Paxos claims as we know them (for diagnostics).
    pub fn paxos_claims(&self) -> Vec<(NodeId, weft_proto::ipam::Claims)> {
        self.paxos.state()
    }

    pub fn poll_output(&mut self) -> Option<IpamOutput> {
        if self.persist_due {
            self.persist_due = false;
            return Some(IpamOutput::Persist(self.persisted()));
        }
        self.out.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        let op_deadline = self.ops.iter().filter_map(|o| o.deadline).min();
        let tick = (!self.ops.is_empty() || self.paxos.is_proposing() && self.ring.is_none())
            .then_some(self.next_tick);
        [op_deadline, tick, self.broadcast_at]
            .into_iter()
            .flatten()
            .min()
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if self.broadcast_at.is_some_and(|t| t <= now) {
            self.broadcast_at = None;
            self.broadcast_now();
        }
        if self.next_tick <= now {
            self.next_tick = now + self.rng.jitter(self.cfg.tick);
            if self.ring.is_none() && self.paxos.is_proposing() {
                if now.saturating_duration_since(self.last_paxos_change) >= self.cfg.tick * 2 {
                    // No progress for a while (duelling proposers, or a proposer that went
                    // away): try again with a higher round.
                    self.paxos.propose();
                    self.paxos_think(now, true);
                } else {
                    // Gossip may have been lost: say where we are again.
                    self.broadcast_now();
                }
            }
            for op in &mut self.ops {
                op.asked = None;
            }
        }
        let expired: Vec<Op> = self
            .ops
            .iter()
            .filter(|o| o.deadline.is_some_and(|d| d <= now))
            .cloned()
            .collect();
        if !expired.is_empty() {
            let status = self.status_line();
            self.ops.retain(|o| o.deadline.is_none_or(|d| d > now));
            for op in expired {
                let what = match &op.kind {
                    OpKind::Allocate { subnet, .. } => format!("a free address in {subnet}"),
                    OpKind::Claim { net, .. } => format!("address {}", net.addr()),
                    OpKind::Prime => "IP address allocation to be initialised".into(),
                };
                self.out.push_back(IpamOutput::Done {
                    op: op.id,
                    result: Err(IpamError::Timeout {
                        what,
                        secs: self.cfg.request_timeout.as_secs(),
                        status: status.clone(),
                    }),
                });
            }
        }
        self.try_ops(now);
    }

    /// The peers currently reachable in the mesh (for choosing donors and for status).
    pub fn set_reachable(&mut self, peers: BTreeSet<PeerName>) {
        self.reachable = peers;
    }

    pub fn nickname(&self, p: &PeerName) -> String {
        self.nicknames.get(p).cloned().unwrap_or_default()
    }

    fn who(&self, p: PeerName) -> String {
        format!("{p}({})", self.nickname(&p))
    }

    // ---- requests ----------------------------------------------------------------------

    fn check_subnet(&self, subnet: Ipv4Net) -> Result<Ipv4Net, IpamError> {
        if subnet != subnet.trunc() || subnet.prefix_len() > 30 {
            return Err(IpamError::InvalidSubnet(subnet));
        }
        let u = self.cfg.universe;
        if !(u.contains(&subnet.network()) || subnet.contains(&u.network())) {
            return Err(IpamError::OutOfRange {
                subnet,
                universe: u,
            });
        }
        Ok(subnet)
    }

    /// Allocates an address for `ident` in `subnet` (default subnet if `None`). Idempotent: an
    /// address the ident already has there is returned again.
    pub fn allocate(&mut self, now: Instant, op: OpId, ident: &str, subnet: Option<Ipv4Net>) {
        let subnet = match self.check_subnet(subnet.unwrap_or(self.cfg.default_subnet)) {
            Ok(s) => s,
            Err(e) => return self.done(op, Err(e)),
        };
        self.push_op(
            now,
            op,
            OpKind::Allocate {
                ident: ident.to_string(),
                subnet,
            },
        );
    }

    /// Claims exactly `net.addr()` for `ident`.
    pub fn claim(&mut self, now: Instant, op: OpId, ident: &str, net: Ipv4Net) {
        self.push_op(
            now,
            op,
            OpKind::Claim {
                ident: ident.to_string(),
                net,
            },
        );
    }

    /// Completes once the ring exists.
    pub fn prime(&mut self, now: Instant, op: OpId) {
        self.push_op(now, op, OpKind::Prime);
    }

    /// At launch: the addresses this host's containers (and its expose) still hold. They are
    /// claimed in the ring before any allocation is served, so that they are never handed out
    /// again even when the saved state was lost; one in a range another peer now owns is asked
    /// for as any claim is. Nobody waits for these: they are retried until the ring exists
    /// and the owner answers, and a refusal is logged as a conflict.
    pub fn reclaim(&mut self, now: Instant, held: Vec<(String, Ipv4Net)>) {
        for (ident, net) in held {
            if !self.cfg.universe.contains(&net.addr()) {
                // Outside the range: never the allocator's business.
                continue;
            }
            if self.space.owner_of(net.addr()) == Some(ident.as_str()) {
                continue;
            }
            self.ops.push(Op {
                id: 0,
                kind: OpKind::Claim { ident, net },
                deadline: None,
                asked: None,
                denied: BTreeSet::new(),
                tries: 0,
            });
        }
        self.try_ops(now);
    }

    /// Reclaims at launch still waiting (for the ring, or for another peer's answer).
    pub fn reclaims_pending(&self) -> usize {
        self.ops.iter().filter(|o| o.deadline.is_none()).count()
    }

    fn push_op(&mut self, now: Instant, id: OpId, kind: OpKind) {
        self.ops.push(Op {
            id,
            kind,
            deadline: Some(now + self.cfg.request_timeout),
            asked: None,
            denied: BTreeSet::new(),
            tries: 0,
        });
        self.try_ops(now);
    }

    /// Cancels pending requests for `ident`.
    pub fn cancel(&mut self, ident: &str) {
        let (gone, keep): (Vec<Op>, Vec<Op>) =
            std::mem::take(&mut self.ops)
                .into_iter()
                .partition(|o| match &o.kind {
                    OpKind::Allocate { ident: i, .. } | OpKind::Claim { ident: i, .. } => {
                        i == ident
                    }
                    OpKind::Prime => false,
                });
        self.ops = keep;
        for o in gone.into_iter().filter(|o| o.deadline.is_some()) {
            self.done(o.id, Err(IpamError::Cancelled));
        }
    }

    pub fn lookup(&self, ident: &str, subnet: Option<Ipv4Net>) -> Vec<Ipv4Net> {
        self.space.lookup(ident, subnet.as_ref())
    }

    /// Frees the ident's addresses (one, or all); returns what was freed.
    pub fn release(&mut self, now: Instant, ident: &str, addr: Option<Ipv4Addr>) -> Vec<Ipv4Net> {
        // A container that went before its address was reclaimed needs it no more.
        self.ops.retain(|o| {
            o.deadline.is_some()
                || !matches!(&o.kind, OpKind::Claim { ident: i, net }
                    if i == ident && addr.is_none_or(|a| a == net.addr()))
        });
        let freed = self.space.release(ident, addr);
        if !freed.is_empty() {
            self.persist_due = true;
            self.refresh_free(now);
            self.try_ops(now);
        }
        freed
    }

    /// Takes over every range of a dead peer (by name or nickname); returns how many
    /// addresses came over.
    pub fn rmpeer(&mut self, now: Instant, who: &str) -> Result<u64, RmPeerError> {
        let peer = self.resolve_peer(who)?;
        if peer == self.me {
            return Err(RmPeerError::Ourselves);
        }
        if self.reachable.contains(&peer) {
            return Err(RmPeerError::Reachable(self.who(peer)));
        }
        let Some(ring) = self.ring.as_mut() else {
            return Ok(0);
        };
        let moved = ring.transfer(peer, self.me);
        if moved > 0 {
            info!(
                "[allocator {}] took over {moved} addresses from {}",
                self.me,
                self.who(peer)
            );
            self.persist_due = true;
            self.refresh_free(now);
            self.broadcast_now();
            self.try_ops(now);
        }
        Ok(moved)
    }

    fn resolve_peer(&self, who: &str) -> Result<PeerName, RmPeerError> {
        if let Ok(p) = who.parse::<PeerName>() {
            return Ok(p);
        }
        let matches: Vec<PeerName> = self
            .nicknames
            .iter()
            .filter(|(_, n)| n.as_str() == who)
            .map(|(p, _)| *p)
            .collect();
        match matches.as_slice() {
            [p] => Ok(*p),
            [] => Err(RmPeerError::Unknown(who.to_string())),
            _ => Err(RmPeerError::Ambiguous(who.to_string())),
        }
    }

    /// Leaving for good: hands all our ranges to a reachable peer and forgets our
    /// allocations. Returns the heir, if there was one.
    pub fn shutdown(&mut self, now: Instant) -> Option<PeerName> {
        let pending: Vec<OpId> = self
            .ops
            .iter()
            .filter(|o| o.deadline.is_some())
            .map(|o| o.id)
            .collect();
        self.ops.clear();
        for op in pending {
            self.done(op, Err(IpamError::Cancelled));
        }
        let heir = self.reachable.iter().copied().find(|p| *p != self.me)?;
        let ring = self.ring.as_mut()?;
        let moved = ring.transfer(self.me, heir);
        info!(
            "[allocator {}] handing {moved} addresses to {} before leaving",
            self.me,
            self.who(heir)
        );
        self.space = Space::default();
        self.persist_due = true;
        self.broadcast_now();
        let _ = now;
        Some(heir)
    }

    // ---- gossip ------------------------------------------------------------------------

    /// Our full state, for a new neighbour or periodic gossip. Not cut into chunks: a ring
    /// travels whole, and its bound ([`ring::MAX_RING_ENTRIES`]) keeps it under one.
    pub fn full_state(&self) -> Vec<u8> {
        IpamMsg::State(self.state_msg()).encode()
    }

    /// Gossiped entries refused at the bounds.
    pub fn over_limit(&self) -> u64 {
        self.over_limit
    }

    fn state_msg(&self) -> IpamState {
        IpamState {
            ring: self.ring.as_ref().map(|r| r.state().clone()),
            paxos: if self.ring.is_none() {
                self.paxos.state()
            } else {
                Vec::new()
            },
            // Observers cannot start consensus themselves; this asks electors to.
            wants_ring: self.ring.is_none() && !self.ops.is_empty() && !self.paxos.is_elector(),
            nicknames: self
                .nicknames
                .iter()
                .map(|(p, n)| (*p, n.clone()))
                .collect(),
        }
    }

    fn broadcast_now(&mut self) {
        self.broadcast_at = None;
        self.out.push_back(IpamOutput::Broadcast(self.full_state()));
    }

    fn broadcast_soon(&mut self, now: Instant) {
        if self.broadcast_at.is_none() {
            self.broadcast_at = Some(now + self.cfg.broadcast_delay);
        }
    }

    fn reclaimed(&mut self, op: &Op, result: Result<Ipv4Net, IpamError>) {
        let OpKind::Claim { ident, net } = &op.kind else {
            return;
        };
        match result {
            Ok(_) => info!(
                "[allocator {}] reclaimed {} for {ident}, which still holds it",
                self.me,
                net.addr()
            ),
            Err(e) => {
                warn!(
                    "[allocator {}] could not reclaim {} held by {ident}: {e}",
                    self.me,
                    net.addr()
                );
                self.conflicts
                    .push_back(format!("{} held by {ident} here: {e}", net.addr()));
                while self.conflicts.len() > 5 {
                    self.conflicts.pop_front();
                }
            }
        }
    }

    fn done(&mut self, op: OpId, result: Result<Ipv4Net, IpamError>) {
        self.out.push_back(IpamOutput::Done { op, result });
    }

    /// A message from `src`. Returns whether it told us something new (so a broadcast should
    /// be relayed), or the reason to refuse the sender.
    pub fn handle_message(
        &mut self,
        now: Instant,
        src: PeerName,
        payload: &[u8],
    ) -> Result<bool, IpamRefusal> {
        let msg = IpamMsg::decode(payload).map_err(|e| IpamRefusal::Malformed(e.to_string()))?;
        let r = match msg {
            IpamMsg::State(st) => self.on_state(now, src, st),
            IpamMsg::RingUpdate(ring) => self.merge_ring(now, src, &ring),
            IpamMsg::SpaceRequest { start, end } => {
                self.donate(now, src, u64::from(start), end);
                Ok(false)
            }
            IpamMsg::SpaceDenied { .. } => {
                for op in &mut self.ops {
                    if op.asked.is_some_and(|(p, _)| p == src) {
                        op.asked = None;
                        op.denied.insert(src);
                        op.tries += 1;
                    }
                }
                self.try_ops(now);
                Ok(false)
            }
        };
        if let Err(e) = &r {
            warn!(
                "[allocator {}] refusing IP allocation data from {}: {e}",
                self.me,
                self.who(src)
            );
            self.conflicts.push_back(format!("{}: {e}", self.who(src)));
            while self.conflicts.len() > 5 {
                self.conflicts.pop_front();
            }
        }
        r
    }

    fn on_state(
        &mut self,
        now: Instant,
        src: PeerName,
        st: IpamState,
    ) -> Result<bool, IpamRefusal> {
        let mut improved = false;
        if st.paxos.len() > MAX_PAXOS_CLAIMS
            || st
                .paxos
                .iter()
                .any(|(_, c)| c.value.len() > MAX_PAXOS_CLAIMS)
        {
            return Err(IpamRefusal::Malformed(format!(
                "{} consensus claims (at most {MAX_PAXOS_CLAIMS})",
                st.paxos.len()
            )));
        }
        for (p, n) in st.nicknames {
            let fits = n.len() <= crate::mesh::topology::MAX_NICKNAME_LEN
                && (self.nicknames.len() < crate::mesh::topology::MAX_PEERS
                    || self.nicknames.contains_key(&p));
            if !fits {
                self.over_limit += 1;
                continue;
            }
            if self.nicknames.get(&p) != Some(&n) {
                self.nicknames.insert(p, n);
                improved = true;
            }
        }
        match (&st.ring, self.ring.is_some()) {
            (Some(r), _) => improved |= self.merge_ring(now, src, r)?,
            (None, true) => {
                // A peer without a ring: give it ours so it need not wait for gossip.
                if let Some(r) = &self.ring {
                    self.out.push_back(IpamOutput::Unicast {
                        dst: src,
                        payload: IpamMsg::RingUpdate(r.state().clone()).encode(),
                    });
                }
            }
            (None, false) => {
                if self.paxos.update(&st.paxos) {
                    improved = true;
                }
                let mut proposed = false;
                if st.wants_ring && self.paxos.is_elector() && !self.paxos.is_proposing() {
                    self.paxos.propose();
                    proposed = true;
                }
                improved |= self.paxos_think(now, proposed);
            }
        }
        Ok(improved)
    }

    /// Advances Paxos; creates the ring once a value is chosen. `changed`: our claims already
    /// changed (we just proposed). Returns whether our state changed.
    fn paxos_think(&mut self, now: Instant, changed: bool) -> bool {
        if self.ring.is_some() {
            return false;
        }
        let changed = self.paxos.think() || changed;
        if let Some(seeds) = self.paxos.consensus() {
            let (start, end) = range_of(&self.cfg.universe);
            let ring = Ring::create(start, end, seeds);
            info!(
                "[allocator {}] IP allocation ring {} created by consensus of {} peers",
                self.me,
                ring.identity(),
                ring.seeds().len()
            );
            self.ring = Some(ring);
            self.persist_due = true;
            self.refresh_free(now);
            self.broadcast_now();
            self.try_ops(now);
            return true;
        }
        if changed {
            self.last_paxos_change = now;
            self.broadcast_now();
        }
        changed
    }

    fn merge_ring(
        &mut self,
        now: Instant,
        src: PeerName,
        theirs: &RingState,
    ) -> Result<bool, IpamRefusal> {
        let (start, end) = range_of(&self.cfg.universe);
        let changed = match &mut self.ring {
            None => {
                if (theirs.start, theirs.end) != (start, end) {
                    return Err(MergeError::DifferentRange {
                        ours: self.cfg.universe.to_string(),
                        theirs: format!(
                            "{}-{}",
                            ring::ip(u64::from(theirs.start)),
                            ring::ip(theirs.end.saturating_sub(1))
                        ),
                    }
                    .into());
                }
                let r = Ring::from_state(theirs.clone())?;
                // Allocations we hold (persisted without a ring: not expected) must stay ours.
                let me = self.me;
                for nets in self.space.owned().values() {
                    for n in nets {
                        let a = u64::from(u32::from(n.addr()));
                        if self.cfg.universe.contains(&n.addr()) && r.owner_of(a) != Some(me) {
                            return Err(IpamRefusal::HeldHere {
                                peer: r.owner_of(a).map(|p| p.to_string()).unwrap_or_default(),
                                addr: n.addr(),
                            });
                        }
                    }
                }
                info!(
                    "[allocator {}] joined IP allocation ring {} from {}",
                    self.me,
                    r.identity(),
                    self.who(src)
                );
                self.ring = Some(r);
                true
            }
            Some(ours) => {
                let space = &self.space;
                ours.merge(theirs, self.me, |from, to| space.any_in(from, to))?
            }
        };
        if changed {
            self.persist_due = true;
            self.refresh_free(now);
            self.try_ops(now);
        }
        Ok(changed)
    }

    /// Gives part of our free space in `[lo, hi)` to `to`, or says no.
    fn donate(&mut self, now: Instant, to: PeerName, lo: u64, hi: u64) {
        let me = self.me;
        let Some(ring) = self.ring.as_mut() else {
            return;
        };
        let mine: Vec<(u64, u64)> = ring.spans_of(me).map(|s| (s.start, s.end)).collect();
        let block = self.space.biggest_free_block(&mine, lo, hi);
        let Some((a, b)) = block else {
            self.out.push_back(IpamOutput::Unicast {
                dst: to,
                payload: IpamMsg::SpaceDenied {
                    start: lo as u32,
                    end: hi,
                }
                .encode(),
            });
            return;
        };
        // Keep the lower half of a big block; a single address goes whole.
        let (a, b) = if b - a >= 2 {
            (a + (b - a) / 2, b)
        } else {
            (a, b)
        };
        ring.grant(me, a, b, to);
        let update = IpamMsg::RingUpdate(ring.state().clone()).encode();
        info!(
            "[allocator {me}] gave {}-{} ({} addresses) to {}",
            ring::ip(a),
            ring::ip(b - 1),
            b - a,
            self.who(to)
        );
        self.persist_due = true;
        self.refresh_free(now);
        self.out.push_back(IpamOutput::Unicast {
            dst: to,
            payload: update,
        });
        self.broadcast_now();
    }

    /// Records our free counts in the ring (for donors' choices).
    fn refresh_free(&mut self, now: Instant) {
        let me = self.me;
        let Some(ring) = self.ring.as_mut() else {
            return;
        };
        let spans: Vec<(u32, u64, u64)> = ring
            .spans_of(me)
            .map(|s| (s.entry.token, s.start, s.end))
            .collect();
        let mut changed = false;
        for (token, from, to) in spans {
            let free = (to - from) - self.space.count_in(from, to);
            changed |= ring.set_free(me, token, free.min(u64::from(u32::MAX)) as u32);
        }
        if changed {
            self.persist_due = true;
            self.broadcast_soon(now);
        }
    }

    // ---- serving requests ----------------------------------------------------------------

    fn try_ops(&mut self, now: Instant) {
        if self.ops.is_empty() {
            return;
        }
        if self.ring.is_none() {
            self.bootstrap(now);
            if self.ring.is_none() {
                return;
            }
        }
        let mut ops = std::mem::take(&mut self.ops);
        // As Weave: primes, then claims (reclaims at launch first of all), then allocations,
        // so an address a container holds is never handed to another one first.
        ops.sort_by_key(|o| match o.kind {
            OpKind::Prime => 0,
            OpKind::Claim { .. } if o.deadline.is_none() => 1,
            OpKind::Claim { .. } => 2,
            OpKind::Allocate { .. } => 3,
        });
        let mut keep = Vec::new();
        for mut op in ops {
            match self.serve(now, &mut op) {
                Some(result) if op.deadline.is_none() => self.reclaimed(&op, result),
                Some(result) => self.done(op.id, result),
                None => keep.push(op),
            }
        }
        // Requests that arrived while serving (none today) go after the old ones.
        keep.append(&mut self.ops);
        self.ops = keep;
    }

    fn bootstrap(&mut self, now: Instant) {
        match self.cfg.init.clone() {
            InitMode::Seed(seeds) => {
                let (start, end) = range_of(&self.cfg.universe);
                let ring = Ring::create(start, end, seeds);
                info!(
                    "[allocator {}] IP allocation ring {} seeded",
                    self.me,
                    ring.identity()
                );
                self.ring = Some(ring);
                self.persist_due = true;
                self.refresh_free(now);
                self.broadcast_now();
            }
            InitMode::Consensus { .. } => {
                if !self.paxos.is_proposing() {
                    self.paxos.propose();
                    self.next_tick = now + self.rng.jitter(self.cfg.tick);
                    self.paxos_think(now, true);
                }
            }
            InitMode::Observer => {
                if self.broadcast_at.is_none() {
                    // Ask electors to get going.
                    self.broadcast_now();
                    self.broadcast_at = Some(now + self.cfg.tick);
                }
            }
        }
    }

    /// Tries one request; `None` while it must wait.
    fn serve(&mut self, now: Instant, op: &mut Op) -> Option<Result<Ipv4Net, IpamError>> {
        let me = self.me;
        let ring = self.ring.as_ref().expect("checked by try_ops");
        match op.kind.clone() {
            OpKind::Prime => Some(Ok(self.cfg.universe)),
            OpKind::Allocate { ident, subnet } => {
                if let Some(n) = self.space.lookup(&ident, Some(&subnet)).first() {
                    return Some(Ok(*n));
                }
                let (lo, hi) = host_range(&subnet);
                let mine: Vec<(u64, u64)> = ring.spans_of(me).map(|s| (s.start, s.end)).collect();
                if let Some(a) = self.space.lowest_free(&mine, lo, hi) {
                    let net = Ipv4Net::new(Ipv4Addr::from(a), subnet.prefix_len())
                        .expect("prefix from a valid subnet");
                    self.space.insert(&ident, net);
                    self.persist_due = true;
                    self.refresh_free(now);
                    return Some(Ok(net));
                }
                // Ask for space anywhere in the subnet: donors think in aligned blocks, and the
                // subnet's edge addresses are only excluded when allocating.
                let (from, to) = range_of(&subnet);
                self.ask_for_space(now, op, u64::from(from), to);
                None
            }
            OpKind::Claim { ident, net } => {
                let addr = net.addr();
                match self.space.owner_of(addr) {
                    Some(o) if o == ident => return Some(Ok(net)),
                    Some(o) => {
                        return Some(Err(IpamError::InUse {
                            addr,
                            owner: o.to_string(),
                        }));
                    }
                    None => {}
                }
                let a = u64::from(u32::from(addr));
                let owner = if self.cfg.universe.contains(&addr) {
                    ring.owner_of(a)
                } else {
                    Some(me)
                };
                match owner {
                    Some(p) if p == me => {
                        self.space.insert(&ident, net);
                        self.persist_due = true;
                        self.refresh_free(now);
                        Some(Ok(net))
                    }
                    // A reclaim keeps asking an owner that is away: the address is in use here
                    // whatever the owner's answer, and it must not be handed out meanwhile.
                    Some(p)
                        if op.denied.contains(&p) || (op.deadline.is_some() && op.tries > 5) =>
                    {
                        Some(Err(IpamError::OwnedByPeer {
                            addr,
                            peer: self.who(p),
                        }))
                    }
                    Some(p) => {
                        if op.asked.is_none() {
                            op.asked = Some((p, now));
                            op.tries += 1;
                            self.out.push_back(IpamOutput::Unicast {
                                dst: p,
                                payload: IpamMsg::SpaceRequest {
                                    start: a as u32,
                                    end: a + 1,
                                }
                                .encode(),
                            });
                        }
                        None
                    }
                    None => None,
                }
            }
        }
    }

    /// Asks a peer with free space in `[lo, hi)` for some, weighted by how much each has.
    fn ask_for_space(&mut self, now: Instant, op: &mut Op, lo: u64, hi: u64) {
        if op.asked.is_some() {
            return;
        }
        let ring = self.ring.as_ref().expect("caller checked");
        let mut donors: BTreeMap<PeerName, u64> = BTreeMap::new();
        for s in ring.spans() {
            let p = s.entry.peer;
            if p == self.me
                || op.denied.contains(&p)
                || !self.reachable.contains(&p)
                || s.end <= lo
                || s.start >= hi
                || s.entry.free == 0
            {
                continue;
            }
            *donors.entry(p).or_default() += u64::from(s.entry.free);
        }
        let total: u64 = donors.values().sum();
        if total == 0 {
            // Everyone said no (or nobody has space): start over on the next tick.
            op.denied.clear();
            return;
        }
        let mut pick = self.rng.below(total);
        let donor = donors
            .iter()
            .find(|(_, f)| {
                if pick < **f {
                    true
                } else {
                    pick -= **f;
                    false
                }
            })
            .map(|(p, _)| *p)
            .expect("pick < total");
        op.asked = Some((donor, now));
        self.out.push_back(IpamOutput::Unicast {
            dst: donor,
            payload: IpamMsg::SpaceRequest {
                start: lo as u32,
                end: hi,
            }
            .encode(),
        });
    }

    // ---- status ------------------------------------------------------------------------

    fn status_line(&self) -> String {
        match &self.ring {
            Some(r) => {
                let live = r
                    .spans()
                    .filter(|s| s.size() > 0)
                    .any(|s| s.entry.peer == self.me || self.reachable.contains(&s.entry.peer));
                if !live {
                    "all IP ranges owned by unreachable peers - use 'rmpeer' if they are dead"
                        .into()
                } else if self
                    .ops
                    .iter()
                    .any(|o| matches!(o.kind, OpKind::Allocate { .. }))
                {
                    "waiting for IP(s) to become available".into()
                } else {
                    "ready".into()
                }
            }
            None => match &self.cfg.init {
                InitMode::Observer => "priming".into(),
                InitMode::Consensus { .. }
                    if self.paxos.is_proposing() || self.paxos.in_progress() =>
                {
                    format!(
                        "awaiting consensus (quorum: {}, known: {})",
                        self.paxos.quorum(),
                        self.paxos.known()
                    )
                }
                _ => "idle".into(),
            },
        }
    }

    pub fn status(&self) -> IpamStatus {
        let total = range_of(&self.cfg.universe).1 - u64::from(range_of(&self.cfg.universe).0);
        let mut owners = Vec::new();
        let mut unreachable_ips = 0;
        if let Some(r) = &self.ring {
            for (p, size) in r.sizes() {
                let reachable = p == self.me || self.reachable.contains(&p);
                if !reachable {
                    unreachable_ips += size;
                }
                owners.push((p, self.nickname(&p), size, reachable));
            }
        }
        IpamStatus {
            status: self.status_line(),
            range: self.cfg.universe,
            default_subnet: self.cfg.default_subnet,
            owners,
            active: self.space.owned().values().map(Vec::len).sum(),
            pending_allocates: self
                .ops
                .iter()
                .filter(|o| matches!(o.kind, OpKind::Allocate { .. }))
                .count(),
            pending_claims: self
                .ops
                .iter()
                .filter(|o| matches!(o.kind, OpKind::Claim { .. }))
                .count(),
            ring: self.ring.as_ref().map(Ring::identity),
            seeds: self
                .ring
                .as_ref()
                .map(|r| r.seeds().to_vec())
                .unwrap_or_default(),
            conflicts: self.conflicts.iter().cloned().collect(),
            unreachable_ips,
            total,
            entries: self
                .ring
                .as_ref()
                .map(|r| {
                    r.spans()
                        .map(|s| {
                            (
                                s.entry.token,
                                s.size(),
                                s.entry.peer,
                                s.entry.version,
                                s.entry.free,
                            )
                        })
                        .collect()
                })
                .unwrap_or_default(),
        }
    }

    pub fn persisted(&self) -> Persisted {
        let (start, end) = range_of(&self.cfg.universe);
        Persisted {
            name: self.me,
            start,
            end,
            ring: self.ring.as_ref().map(|r| r.state().clone()),
            owned: self
                .space
                .owned()
                .iter()
                .map(|(i, nets)| {
                    (
                        i.clone(),
                        nets.iter()
                            .map(|n| (u32::from(n.addr()), n.prefix_len()))
                            .collect(),
                    )
                })
                .collect(),
        }
    }
}

/// `[start, end)` of a subnet.
pub fn range_of(net: &Ipv4Net) -> (u32, u64) {
    let start = u32::from(net.network());
    (start, u64::from(start) + (1u64 << (32 - net.prefix_len())))
}

/// The range `[start, end)` as CIDR text (the inverse of [`range_of`]), for messages about
/// saved state.
pub fn range_text(start: u32, end: u64) -> String {
    let size = end.saturating_sub(u64::from(start));
    let prefix = (32 - size.trailing_zeros().min(32)) as u8;
    Ipv4Net::new(Ipv4Addr::from(start), prefix).map_or_else(|_| "?".to_string(), |n| n.to_string())
}

/// Weave's default quorum: a majority of the initial peers plus ourselves.
pub fn default_quorum(initial_peers: usize) -> usize {
    initial_peers.div_ceil(2) + 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_proto::ipam::{Entry, RingState};

    /// Ring states no honest peer sends (found by fuzzing: an empty range used to underflow
    /// while formatting the refusal) are refused, never a panic.
    #[test]
    fn hostile_ring_states_are_refused() {
        let now = Instant::now();
        let me = NodeId {
            name: PeerName::from_u64(1),
            uid: 1,
        };
        let cfg = IpamConfig::new("10.32.0.0/12".parse().unwrap(), InitMode::Observer);
        let mut ipam = Ipam::new(cfg, me, "me", None, now, 1).unwrap();
        let peer = PeerName::from_u64(2);
        let (start, end) = (u32::from(Ipv4Addr::new(10, 32, 0, 0)), 0x0a40_0000u64);
        let entry = |token| Entry {
            token,
            peer,
            version: 1,
            free: 1,
        };
        for (s, e, entries) in [
            (0, 0, vec![]),
            (5, 3, vec![entry(4)]),
            (0, u64::MAX, vec![entry(1)]),
            (start, end, vec![entry(1)]),
            (start, end, vec![entry(start + 9), entry(start + 9)]),
            (start, end, vec![entry(start + 9), entry(start + 3)]),
        ] {
            let msg = IpamMsg::RingUpdate(RingState {
                start: s,
                end: e,
                seeds: vec![peer],
                entries,
            })
            .encode();
            assert!(ipam.handle_message(now, peer, &msg).is_err(), "{s} {e}");
        }
    }
}
