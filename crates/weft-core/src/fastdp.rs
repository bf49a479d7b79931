//! The fast path's decisions: which neighbours the kernel's VXLAN device carries our frames to,
//! and what its forwarding database must hold for that.
//!
//! Per neighbour the choice is made from evidence, not configuration alone: both ends run a
//! fast path, data between them is not encrypted, and VXLAN heartbeats — small and MTU-sized —
//! arrive in both directions (we see theirs; they report seeing ours). Anything less is sleeve,
//! with the reason kept for `status connections` and logged when the mode changes. Heartbeats
//! keep flowing in sleeve mode, so a path that heals moves back by itself.
//!
//! The kernel learns nothing by itself (VXLAN learning is off): every peer gossips the container
//! MACs on its bridge ([`MacRecord`], newest version of the current incarnation wins), and the
//! [`FastDpPlan`] turns modes and MACs into the exact set of FDB entries the shell installs.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::info;
use weft_proto::fastdp::{self, FastDpMsg, MacRecord};
use weft_proto::{DecodeError, Mac, PeerName};

#[derive(Clone, Debug)]
pub struct FastDpConfig {
    /// This peer runs a fast path (`--no-fastdp` turns it off).
    pub enabled: bool,
    /// A neighbour's heartbeats are lost after this long without one.
    pub heartbeat_timeout: Duration,
    /// How often our reception report is repeated when nothing changes.
    pub report_interval: Duration,
    /// Size of the large heartbeat, as the overlay MTU (IP packet) it proves.
    pub mtu: u32,
    /// Peers that are not neighbours get a direct fast path of their own when our containers
    /// exchange traffic with theirs (off when data is encrypted: the kernel's VXLAN carries
    /// it in the clear).
    pub on_demand: bool,
    /// A direct path to a peer that is not a neighbour goes after this long unused.
    pub demand_idle: Duration,
}

impl Default for FastDpConfig {
    fn default() -> Self {
        FastDpConfig {
            enabled: true,
            heartbeat_timeout: Duration::from_millis(3500),
            report_interval: Duration::from_secs(10),
            mtu: 1450,
            on_demand: true,
            demand_idle: DEMAND_IDLE,
        }
    }
}

/// How often the shell sends each heartbeat pair (small + MTU-sized).
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);
/// A fast neighbour whose connection dropped keeps its kernel entries this long: its kernel
/// goes on forwarding while its router restarts, so the containers' traffic need not stop.
pub const LINGER: Duration = Duration::from_secs(20);
/// How long a direct path to a peer that is not a neighbour outlives its last use.
pub const DEMAND_IDLE: Duration = Duration::from_secs(300);
/// How long a record whose origin the topology does not show is kept.
pub const UNVERIFIED_TTL: Duration = Duration::from_secs(60);
/// Records (and early reports) held for peers the topology does not show.
pub const MAX_UNVERIFIED: usize = 256;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Mode {
    Fast,
    Sleeve,
}

impl Mode {
    /// The name Weave used in `status connections`.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Fast => "fastdp",
            Mode::Sleeve => "sleeve",
        }
    }
}

/// One kernel forwarding-database entry the fast path needs on the VXLAN device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FdbEntry {
    /// VXLAN's own table (`bridge fdb append MAC dev vx dst IP self`); the zero MAC floods.
    Vxlan { mac: Mac, dst: Ipv4Addr },
    /// The bridge's table: MAC is behind the VXLAN port (`... dev vx master static`).
    Bridge { mac: Mac },
}

/// What the shell must make true: heartbeats to send and the fast neighbours with their MACs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FastDpPlan {
    /// Neighbours to send VXLAN heartbeats to.
    pub heartbeat: BTreeMap<PeerName, Ipv4Addr>,
    /// Neighbours the kernel carries our frames to, with their underlay address.
    pub fast: BTreeMap<PeerName, Ipv4Addr>,
    /// Container MACs of each fast neighbour.
    pub macs: BTreeMap<PeerName, Vec<Mac>>,
    /// Container addresses behind fast neighbours, with their MACs: the bridge answers ARP
    /// for them itself (with `neigh_suppress` on the VXLAN port) instead of flooding the
    /// request to every fast peer. An address claimed twice goes to the lower peer name.
    pub neighbours: BTreeMap<Ipv4Addr, Mac>,
}

impl FastDpPlan {
    pub fn fast_peers(&self) -> BTreeSet<PeerName> {
        self.fast.keys().copied().collect()
    }

    /// Every FDB entry this plan needs on the VXLAN device (the heartbeat port's own entry is
    /// static and not part of it).
    pub fn fdb(&self) -> BTreeSet<FdbEntry> {
        let mut s = BTreeSet::new();
        for (&p, &ip) in &self.heartbeat {
            let mac = fastdp::heartbeat_mac(p);
            s.insert(FdbEntry::Vxlan { mac, dst: ip });
            s.insert(FdbEntry::Bridge { mac });
        }
        // A MAC claimed by two fast peers (a container that moved, seen before the old record
        // is replaced) goes to one of them only, so the kernel never holds two answers.
        let mut seen = BTreeSet::new();
        for (&p, &ip) in &self.fast {
            s.insert(FdbEntry::Vxlan {
                mac: Mac([0; 6]),
                dst: ip,
            });
            for &mac in self.macs.get(&p).into_iter().flatten() {
                if seen.insert(mac) {
                    s.insert(FdbEntry::Vxlan { mac, dst: ip });
                    s.insert(FdbEntry::Bridge { mac });
                }
            }
        }
        s
    }
}

/// Why a neighbour's traffic goes by sleeve.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SleeveReason {
    /// `--no-fastdp` here (or no VXLAN device).
    DisabledHere,
    DisabledThere,
    Encrypted,
    Ipv6,
    NoAnnouncement,
    Waiting,
    NoHeartbeats,
    TheyGetNoHeartbeats,
    /// Small heartbeats arrive, MTU-sized ones (this many bytes of IP packet) do not.
    PathMtu(u32),
}

impl SleeveReason {
    /// The user chose this (no fast path here, or encryption): not worth a remark in status.
    pub fn chosen(self) -> bool {
        matches!(self, SleeveReason::DisabledHere | SleeveReason::Encrypted)
    }
}

impl std::fmt::Display for SleeveReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SleeveReason::DisabledHere => write!(f, "fast path disabled here by --no-fastdp"),
            SleeveReason::DisabledThere => write!(f, "fast path disabled on the peer"),
            SleeveReason::Encrypted => {
                write!(f, "encrypted; the fast path carries plaintext only")
            }
            SleeveReason::Ipv6 => write!(f, "IPv6 underlay; the fast path is IPv4 only"),
            SleeveReason::NoAnnouncement => {
                write!(f, "waiting for the peer's fast-path announcement")
            }
            SleeveReason::Waiting => write!(f, "waiting for VXLAN heartbeats"),
            SleeveReason::NoHeartbeats => {
                write!(f, "no VXLAN heartbeats from the peer; is UDP 6784 blocked?")
            }
            SleeveReason::TheyGetNoHeartbeats => write!(
                f,
                "the peer gets no VXLAN heartbeats from us; is UDP 6784 blocked?"
            ),
            SleeveReason::PathMtu(mtu) => write!(
                f,
                "VXLAN packets of {mtu} bytes are lost; path MTU too small? try a smaller --mtu"
            ),
        }
    }
}

/// A neighbour's fast-path state, for status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkStatus {
    pub mode: Mode,
    /// Why not fast (`None` when fast).
    pub reason: Option<SleeveReason>,
}

#[derive(Debug)]
struct Link {
    addr: SocketAddr,
    since: Instant,
    last_small: Option<Instant>,
    last_big: Option<Instant>,
    /// What the neighbour last told us about our heartbeats.
    their_report: Option<(bool, bool)>,
    /// What we last told the neighbour, and when.
    our_report: Option<((bool, bool), Instant)>,
    mode: Mode,
    reason: Option<SleeveReason>,
    /// No longer a neighbour since then; kept (fast) for [`LINGER`].
    gone: Option<Instant>,
}

impl Link {
    fn status(&self) -> LinkStatus {
        LinkStatus {
            mode: self.mode,
            reason: self.reason,
        }
    }
}

#[derive(Debug)]
pub enum FastDpOutput {
    /// Broadcast on the fast-path channel.
    Broadcast(Vec<u8>),
    /// Send to one peer on the fast-path channel.
    Unicast { dst: PeerName, payload: Vec<u8> },
    /// The plan changed.
    Plan(Arc<FastDpPlan>),
}

#[derive(Debug)]
pub struct FastDp {
    local: PeerName,
    uid: u64,
    cfg: FastDpConfig,
    own: MacRecord,
    records: BTreeMap<PeerName, MacRecord>,
    links: BTreeMap<PeerName, Link>,
    /// The data plane's neighbours (control connections).
    neighbours: BTreeSet<PeerName>,
    /// Peers our containers exchange traffic with, and when it was last seen: their links
    /// stay while that is recent, neighbours or not.
    demand: BTreeMap<PeerName, Instant>,
    encrypted: BTreeSet<PeerName>,
    /// Removed from the topology while their link lingers: forget their records after.
    departed: BTreeSet<PeerName>,
    /// Reports from peers that are not (yet) data-plane neighbours.
    early_reports: BTreeMap<PeerName, (bool, bool)>,
    /// Peers without a link that sent us a report: they try a direct path with us.
    asked: BTreeSet<PeerName>,
    /// Records taken before the topology showed their origin, and when: kept while the
    /// topology catches up, dropped if it never does.
    unverified: BTreeMap<PeerName, Instant>,
    /// Records and reports refused at the bounds.
    over_limit: u64,
    plan: Arc<FastDpPlan>,
    out: VecDeque<FastDpOutput>,
    next_eval: Option<Instant>,
}

/// Our report to `dst` of the heartbeats of its that arrive (`uid`: its incarnation).
fn rx_report(dst: PeerName, uid: u64, (small, big): (bool, bool)) -> FastDpOutput {
    FastDpOutput::Unicast {
        dst,
        payload: FastDpMsg::Rx { uid, small, big }.encode(),
    }
}

/// What our record may carry: no multicast MACs (peers refuse those), sorted, unique, and
/// no more than a record holds.
fn announceable<T: Ord>(mut v: Vec<T>, multicast: impl Fn(&T) -> bool) -> Vec<T> {
    v.retain(|x| !multicast(x));
    v.sort();
    v.dedup();
    v.truncate(fastdp::MAX_MACS);
    v
}

impl FastDp {
    pub fn new(local: PeerName, uid: u64, cfg: FastDpConfig) -> Self {
        let own = MacRecord {
            origin: local,
            uid,
            version: 1,
            fastdp: cfg.enabled,
            macs: Vec::new(),
            neighbours: Vec::new(),
        };
        FastDp {
            local,
            uid,
            cfg,
            own,
            records: BTreeMap::new(),
            links: BTreeMap::new(),
            neighbours: BTreeSet::new(),
            demand: BTreeMap::new(),
            encrypted: BTreeSet::new(),
            departed: BTreeSet::new(),
            early_reports: BTreeMap::new(),
            asked: BTreeSet::new(),
            unverified: BTreeMap::new(),
            over_limit: 0,
            plan: Arc::default(),
            out: VecDeque::new(),
            next_eval: None,
        }
    }

    pub fn plan(&self) -> &Arc<FastDpPlan> {
        &self.plan
    }

    pub fn poll_output(&mut self) -> Option<FastDpOutput> {
        self.out.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.next_eval
    }

    /// Our record and everyone else's, for periodic gossip and new neighbours, in payloads
    /// of at most `max` bytes.
    pub fn full_state(&self, max: usize) -> Vec<Vec<u8>> {
        // In origin order, ours among the rest: two peers that hold the same records then
        // send the same bytes, so their state digests agree and no full state is asked for.
        let mut all: Vec<MacRecord> = self.records.values().cloned().collect();
        let at = all.partition_point(|r| r.origin < self.own.origin);
        all.insert(at, self.own.clone());
        weft_proto::chunk_by_size(all, max)
            .into_iter()
            .map(|records| FastDpMsg::Records(records).encode())
            .collect()
    }

    /// Records and reports refused because their tables were full.
    pub fn over_limit(&self) -> u64 {
        self.over_limit
    }

    /// The topology changed (or time passed): records whose origin it now shows are
    /// verified; those whose origin it still does not show after [`UNVERIFIED_TTL`] are
    /// dropped, so invented origins cannot pile up.
    pub fn verify_origins(&mut self, now: Instant, known: impl Fn(PeerName) -> bool) {
        let before = self.records.len();
        let records = &mut self.records;
        self.unverified.retain(|p, since| {
            if known(*p) {
                return false;
            }
            if now.saturating_duration_since(*since) >= UNVERIFIED_TTL {
                records.remove(p);
                return false;
            }
            true
        });
        if self.records.len() != before {
            self.evaluate(now);
        }
    }

    pub fn link_status(&self, peer: PeerName) -> Option<LinkStatus> {
        self.links.get(&peer).map(Link::status)
    }

    /// The container MACs on our bridge changed.
    pub fn set_local_macs(&mut self, now: Instant, macs: Vec<Mac>) {
        let macs = announceable(macs, |m| m.is_multicast());
        if macs != self.own.macs {
            self.own.macs = macs;
            self.announce_own();
        }
        self.evaluate(now);
    }

    /// Our containers' addresses and MACs changed (attach, detach, expose).
    pub fn set_local_neighbours(&mut self, now: Instant, n: Vec<(Ipv4Addr, Mac)>) {
        let n = announceable(n, |(_, m)| m.is_multicast());
        if n != self.own.neighbours {
            self.own.neighbours = n;
            self.announce_own();
        }
        self.evaluate(now);
    }

    /// Our record changed: a new version, broadcast.
    fn announce_own(&mut self) {
        self.own.version = self.own.version.saturating_add(1);
        self.out.push_back(FastDpOutput::Broadcast(
            FastDpMsg::Records(vec![self.own.clone()]).encode(),
        ));
    }

    /// The data plane's neighbours (established, with their sleeve address) changed.
    pub fn set_neighbours(&mut self, now: Instant, neighbours: &BTreeMap<PeerName, SocketAddr>) {
        self.neighbours = neighbours.keys().copied().collect();
        let demand = &self.demand;
        self.links.retain(|p, l| {
            if neighbours.contains_key(p) {
                return true;
            }
            if demand.contains_key(p) {
                return true;
            }
            if l.mode == Mode::Fast {
                l.gone.get_or_insert(now);
                return true;
            }
            false
        });
        for (&p, &addr) in neighbours {
            self.open_link(now, p, addr);
        }
        self.evaluate(now);
    }

    fn open_link(&mut self, now: Instant, p: PeerName, addr: SocketAddr) {
        let early = self.early_reports.remove(&p);
        let l = self.links.entry(p).or_insert_with(|| Link {
            addr,
            since: now,
            last_small: None,
            last_big: None,
            their_report: early,
            our_report: None,
            mode: Mode::Sleeve,
            reason: Some(SleeveReason::Waiting),
            gone: None,
        });
        if l.gone.take().is_some() {
            // Back (a restarted router): the path worked when it left, so stay fast while
            // its heartbeats have a fair chance to resume.
            l.last_small = Some(now);
            l.last_big = Some(now);
            l.our_report = None;
        }
        l.addr = addr;
    }

    /// Our containers exchange traffic with `peer`'s, which is not a neighbour (or it sends
    /// us VXLAN heartbeats, wanting the same): a direct path to it at `addr`, as the topology
    /// shows it, is tried and kept while in use, so that traffic stops taking the sleeve
    /// through relays. Heartbeats decide, as for neighbours; without them it stays relayed.
    pub fn want_direct(&mut self, now: Instant, peer: PeerName, addr: SocketAddr) {
        if !self.cfg.enabled || !self.cfg.on_demand || peer == self.local {
            return;
        }
        self.demand.insert(peer, now);
        if !self.has_link(peer) {
            info!(%peer, "trying a direct data path to a peer that is not a neighbour");
            self.open_link(now, peer, addr);
            // Told at once (over the mesh), so the peer opens its side (and its firewall)
            // now rather than when our first heartbeat would have been refused.
            if let (Some(r), Some(l)) = (self.records.get(&peer), self.links.get_mut(&peer)) {
                let rx = (false, false);
                l.our_report = Some((rx, now));
                self.out.push_back(rx_report(peer, r.uid, rx));
            }
            self.evaluate(now);
        }
    }

    /// Peers without a link that reported on our heartbeats since the last call: each tries
    /// a direct path with us, which [`FastDp::want_direct`] answers.
    pub fn take_asked(&mut self) -> Vec<PeerName> {
        std::mem::take(&mut self.asked).into_iter().collect()
    }

    /// Whether a data-plane link to `peer` exists (a neighbour's, or a direct one on demand).
    pub fn has_link(&self, peer: PeerName) -> bool {
        self.links.get(&peer).is_some_and(|l| l.gone.is_none())
    }

    /// The address of our link to `peer`, while there is one.
    pub fn link_addr(&self, peer: PeerName) -> Option<SocketAddr> {
        self.links
            .get(&peer)
            .filter(|l| l.gone.is_none())
            .map(|l| l.addr)
    }

    /// Peers with a direct data path that are not neighbours, with their link's state.
    pub fn direct_paths(&self) -> Vec<(PeerName, LinkStatus)> {
        self.links
            .iter()
            .filter(|(p, l)| !self.neighbours.contains(p) && l.gone.is_none())
            .map(|(p, l)| (*p, l.status()))
            .collect()
    }

    /// Whether data with `peer` is encrypted (then it never takes the fast path).
    pub fn set_encrypted(&mut self, now: Instant, peer: PeerName, encrypted: bool) {
        let changed = if encrypted {
            self.encrypted.insert(peer)
        } else {
            self.encrypted.remove(&peer)
        };
        if changed {
            self.evaluate(now);
        }
    }

    /// A neighbour just connected: tell it what we see of its heartbeats.
    pub fn neighbour_up(&mut self, now: Instant, peer: PeerName) {
        if let Some(l) = self.links.get_mut(&peer) {
            l.our_report = None;
        }
        self.evaluate(now);
    }

    pub fn peer_removed(&mut self, now: Instant, peer: PeerName) {
        self.early_reports.remove(&peer);
        self.demand.remove(&peer);
        self.unverified.remove(&peer);
        // A lingering link still needs the peer's MACs; they go with the link.
        match self.links.get_mut(&peer) {
            // Unreachable means no longer a neighbour, whichever event says so first.
            Some(l) if l.mode == Mode::Fast || l.gone.is_some() => {
                l.gone.get_or_insert(now);
                self.departed.insert(peer);
            }
            _ => {
                self.links.remove(&peer);
                self.records.remove(&peer);
            }
        }
        self.encrypted.remove(&peer);
        self.evaluate(now);
    }

    /// A VXLAN heartbeat frame of `len` bytes from `sender` reached our heartbeat port.
    pub fn heartbeat(&mut self, now: Instant, sender: PeerName, len: usize) {
        let big = len >= self.big_len();
        let Some(l) = self.links.get_mut(&sender) else {
            return;
        };
        l.last_small = Some(now);
        if big {
            l.last_big = Some(now);
        }
        self.evaluate(now);
    }

    /// Length of the MTU-sized heartbeat frame (Ethernet header included).
    pub fn big_len(&self) -> usize {
        self.cfg.mtu as usize + weft_proto::ether::ETHER_HEADER_LEN
    }

    /// A message on the fast-path channel from `src` (the origin of a broadcast or unicast,
    /// the neighbour for gossip). `uid_of` gives a peer's current incarnation from the
    /// topology. `Ok(true)` if it told us something new (relay a broadcast).
    pub fn handle_message(
        &mut self,
        now: Instant,
        src: PeerName,
        payload: &[u8],
        uid_of: impl Fn(PeerName) -> Option<u64>,
    ) -> Result<bool, DecodeError> {
        let mut new = false;
        match FastDpMsg::decode(payload)? {
            FastDpMsg::Records(records) => {
                for r in records {
                    if r.origin == self.local {
                        continue;
                    }
                    if r.macs.len() > fastdp::MAX_MACS
                        || r.neighbours.len() > fastdp::MAX_MACS
                        || r.macs.iter().any(Mac::is_multicast)
                        || r.neighbours.iter().any(|(_, m)| m.is_multicast())
                    {
                        return Err(DecodeError::Malformed {
                            what: "fast-path record",
                            detail: format!(
                                "{} MACs, {} addresses, or a multicast MAC",
                                r.macs.len(),
                                r.neighbours.len()
                            ),
                        });
                    }
                    // A record of an incarnation other than the one the topology shows is
                    // stale. One that arrives before the topology shows its origin at all (a
                    // new neighbour's first gossip often does) is taken: waiting for the next
                    // periodic gossip would hold the fast path back for half a minute.
                    let current = uid_of(r.origin);
                    if current.is_some_and(|u| u != r.uid) {
                        continue;
                    }
                    if current.is_some() {
                        self.unverified.remove(&r.origin);
                    } else if !self.records.contains_key(&r.origin) {
                        if self.unverified.len() >= MAX_UNVERIFIED {
                            self.over_limit += 1;
                            continue;
                        }
                        self.unverified.insert(r.origin, now);
                    }
                    let newer = self.records.get(&r.origin).is_none_or(|cur| {
                        if cur.uid == r.uid {
                            cur.version < r.version
                        } else {
                            // Two incarnations: the one the topology shows, else the latest.
                            current.is_none_or(|u| u != cur.uid)
                        }
                    });
                    if newer {
                        self.departed.remove(&r.origin);
                        // A new incarnation: our reports so far named the old one.
                        let restarted = self.records.get(&r.origin).is_some_and(|c| c.uid != r.uid);
                        if restarted && let Some(l) = self.links.get_mut(&r.origin) {
                            l.our_report = None;
                        }
                        self.records.insert(r.origin, r);
                        new = true;
                    }
                }
            }
            FastDpMsg::Rx { uid, small, big } if uid == self.uid => {
                match self.links.get_mut(&src) {
                    Some(l) => l.their_report = Some((small, big)),
                    // The peer's data-plane link can come up after its report (reports go
                    // over the control connection at once): keep it for the link, or the
                    // link would wait for the next periodic report.
                    None if self.early_reports.len() >= MAX_UNVERIFIED
                        && !self.early_reports.contains_key(&src) =>
                    {
                        self.over_limit += 1;
                    }
                    None => {
                        self.early_reports.insert(src, (small, big));
                        if self.cfg.enabled && self.cfg.on_demand {
                            self.asked.insert(src);
                        }
                    }
                }
            }
            FastDpMsg::Rx { .. } => {}
        }
        self.evaluate(now);
        Ok(new)
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if self.next_eval.is_some_and(|t| t <= now) {
            self.evaluate(now);
        }
    }

    /// Recomputes every link's mode, sends reports that are due, and publishes the plan.
    fn evaluate(&mut self, now: Instant) {
        let timeout = self.cfg.heartbeat_timeout;
        let fresh =
            |t: Option<Instant>| t.is_some_and(|t| now.saturating_duration_since(t) < timeout);
        let mut heartbeat = BTreeMap::new();
        let mut fast = BTreeMap::new();
        let mut next: Option<Instant> = None;
        let mut soonest = |t: Instant| next = Some(next.map_or(t, |n: Instant| n.min(t)));
        // Direct paths to peers that are not neighbours go when unused for a while: a fast
        // one lingers like a departed neighbour's, so traffic that resumes meanwhile keeps
        // it, and then falls back to the relay until it asks for the path again.
        let idle = self.cfg.demand_idle;
        let neighbours = &self.neighbours;
        let links = &mut self.links;
        self.demand.retain(|p, last| {
            if now.saturating_duration_since(*last) < idle {
                soonest(*last + idle);
                return true;
            }
            if !neighbours.contains(p) {
                match links.get_mut(p) {
                    Some(l) if l.mode == Mode::Fast => {
                        l.gone.get_or_insert(now);
                    }
                    Some(_) => {
                        links.remove(p);
                    }
                    None => {}
                }
            }
            false
        });
        let mut expired = Vec::new();
        for (&p, l) in &mut self.links {
            let record = self.records.get(&p);
            let ip = match l.addr.ip() {
                IpAddr::V4(ip) => Some(ip),
                IpAddr::V6(_) => None,
            };
            if let Some(gone) = l.gone {
                match ip {
                    Some(ip) if now < gone + LINGER => {
                        fast.insert(p, ip);
                        soonest(gone + LINGER);
                    }
                    _ => {
                        info!(peer = %p, "fast path to a departed peer removed");
                        expired.push(p);
                    }
                }
                continue;
            }
            let eligible = self.cfg.enabled
                && record.is_some_and(|r| r.fastdp)
                && !self.encrypted.contains(&p)
                && ip.is_some();
            let rx = (fresh(l.last_small), fresh(l.last_big));
            // A new link gets one heartbeat timeout to show what works before anything counts
            // as missing: heartbeats start a moment after the link (entries first), and the
            // peer's report of ours comes later still.
            let young = now.saturating_duration_since(l.since) < timeout;
            let their = l.their_report;
            let reason = if self.encrypted.contains(&p) {
                Some(SleeveReason::Encrypted)
            } else if !self.cfg.enabled {
                Some(SleeveReason::DisabledHere)
            } else if record.is_none() {
                Some(SleeveReason::NoAnnouncement)
            } else if !record.is_some_and(|r| r.fastdp) {
                Some(SleeveReason::DisabledThere)
            } else if ip.is_none() {
                Some(SleeveReason::Ipv6)
            } else if !rx.0 {
                if l.last_small.is_none() && young {
                    Some(SleeveReason::Waiting)
                } else {
                    Some(SleeveReason::NoHeartbeats)
                }
            } else if their.is_none() && young {
                Some(SleeveReason::Waiting)
            } else if !their.is_some_and(|r| r.0) {
                // A young link's report may predate our first heartbeat (a direct path's
                // opening report always does).
                if young {
                    Some(SleeveReason::Waiting)
                } else {
                    Some(SleeveReason::TheyGetNoHeartbeats)
                }
            } else if !rx.1 || !their.is_some_and(|r| r.1) {
                if young {
                    Some(SleeveReason::Waiting)
                } else {
                    Some(SleeveReason::PathMtu(self.cfg.mtu))
                }
            } else {
                None
            };
            let mode = if reason.is_none() {
                Mode::Fast
            } else {
                Mode::Sleeve
            };
            // Say when the mode changes, and when a sleeve link's reason becomes a problem
            // worth knowing (not while it is still starting, nor what the user chose).
            let notable = |r: Option<SleeveReason>| {
                r.is_some_and(|r| {
                    !r.chosen()
                        && !matches!(r, SleeveReason::Waiting | SleeveReason::NoAnnouncement)
                })
            };
            if mode != l.mode || (reason != l.reason && notable(reason)) {
                match reason {
                    None => info!(peer = %p, "fast path (VXLAN) in use"),
                    Some(why) => info!(peer = %p, "fast path not in use, sleeve instead: {why}"),
                }
            }
            l.mode = mode;
            l.reason = reason;
            if let (true, Some(ip)) = (eligible, ip) {
                heartbeat.insert(p, ip);
                if mode == Mode::Fast {
                    fast.insert(p, ip);
                }
                // Tell the neighbour about its heartbeats when that changes, and now and then;
                // but not "none arrive" while the link is young: a restarted peer's first
                // report would otherwise knock a working fast path back to sleeve.
                let settled = rx == (true, true) || !young;
                let due = settled
                    && match l.our_report {
                        Some((r, at)) => r != rx || now >= at + self.cfg.report_interval,
                        None => true,
                    };
                if due {
                    l.our_report = Some((rx, now));
                    let uid = record.map_or(0, |r| r.uid);
                    self.out.push_back(rx_report(p, uid, rx));
                }
                if let Some((_, at)) = l.our_report {
                    soonest(at + self.cfg.report_interval);
                }
                for t in [l.last_small, l.last_big].into_iter().flatten() {
                    if t + timeout > now {
                        soonest(t + timeout);
                    }
                }
                if young {
                    soonest(l.since + timeout);
                }
            }
        }
        for p in expired {
            self.links.remove(&p);
            if self.departed.remove(&p) {
                self.records.remove(&p);
            }
        }
        self.next_eval = next;
        let macs = fast
            .keys()
            .filter_map(|p| Some((*p, self.records.get(p)?.macs.clone())))
            .collect();
        let mut neighbours = BTreeMap::new();
        for p in fast.keys() {
            for &(ip, mac) in self.records.get(p).map_or(&[][..], |r| &r.neighbours) {
                neighbours.entry(ip).or_insert(mac);
            }
        }
        let plan = FastDpPlan {
            heartbeat,
            fast,
            macs,
            neighbours,
        };
        if *self.plan != plan {
            self.plan = Arc::new(plan);
            self.out
                .push_back(FastDpOutput::Plan(Arc::clone(&self.plan)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pn(n: u64) -> PeerName {
        PeerName::from_u64(n)
    }

    fn addr(n: u8) -> SocketAddr {
        SocketAddr::from(([198, 18, 0, n], 6783))
    }

    fn record(origin: u64, uid: u64, version: u64, fastdp: bool, macs: &[u8]) -> Vec<u8> {
        FastDpMsg::Records(vec![MacRecord {
            origin: pn(origin),
            uid,
            version,
            fastdp,
            macs: macs.iter().map(|&b| Mac([2, 0, 0, 0, 0, b])).collect(),
            neighbours: macs
                .iter()
                .map(|&b| (Ipv4Addr::new(10, 32, 0, b), Mac([2, 0, 0, 0, 0, b])))
                .collect(),
        }])
        .encode()
    }

    fn rx(uid: u64, small: bool, big: bool) -> Vec<u8> {
        FastDpMsg::Rx { uid, small, big }.encode()
    }

    /// Us (1, uid 100) with neighbour 2 (uid 200) at 198.18.0.2.
    fn pair(t0: Instant) -> FastDp {
        let mut f = FastDp::new(pn(1), 100, FastDpConfig::default());
        f.set_neighbours(t0, &BTreeMap::from([(pn(2), addr(2))]));
        f.handle_message(t0, pn(2), &record(2, 200, 1, true, &[7]), |_| Some(200))
            .unwrap();
        f
    }

    #[test]
    fn records_of_unknown_origins_are_bounded_and_dropped_unless_the_topology_catches_up() {
        let t0 = Instant::now();
        let mut f = FastDp::new(pn(1), 100, FastDpConfig::default());
        let unknown = |_| None;
        for o in 10..10 + MAX_UNVERIFIED as u64 + 5 {
            f.handle_message(t0, pn(o), &record(o, o, 1, true, &[1]), unknown)
                .unwrap();
        }
        assert_eq!(f.records.len(), MAX_UNVERIFIED);
        assert_eq!(f.over_limit(), 5);
        // The topology learns of peer 10; nobody else ever shows up.
        f.verify_origins(t0, |p| p == pn(10));
        f.verify_origins(t0 + UNVERIFIED_TTL, |p| p == pn(10));
        assert_eq!(f.records.keys().copied().collect::<Vec<_>>(), vec![pn(10)]);
        // Room again for a newcomer's early record.
        f.handle_message(t0, pn(9), &record(9, 9, 1, true, &[1]), unknown)
            .unwrap();
        assert!(f.records.contains_key(&pn(9)));
    }

    fn drain(f: &mut FastDp) -> Vec<FastDpOutput> {
        std::iter::from_fn(|| f.poll_output()).collect()
    }

    fn mode(f: &FastDp) -> (Mode, String) {
        mode_of(f, 2)
    }

    fn mode_of(f: &FastDp, peer: u64) -> (Mode, String) {
        let s = f.link_status(pn(peer)).unwrap();
        (s.mode, s.reason.map(|r| r.to_string()).unwrap_or_default())
    }

    #[test]
    fn fast_only_with_heartbeats_both_ways_then_falls_back_and_recovers() {
        let t0 = Instant::now();
        let mut f = pair(t0);
        assert_eq!(
            f.plan().heartbeat.get(&pn(2)),
            Some(&Ipv4Addr::new(198, 18, 0, 2))
        );
        assert!(f.plan().fast.is_empty());
        assert_eq!(mode(&f).1, "waiting for VXLAN heartbeats");
        let big = f.big_len();
        f.heartbeat(t0, pn(2), big);
        // No report from the peer yet: still waiting while the link is young ...
        assert_eq!(mode(&f).1, "waiting for VXLAN heartbeats");
        // Our report went out, saying we see both sizes.
        let outs = drain(&mut f);
        assert!(outs.iter().any(|o| matches!(o, FastDpOutput::Unicast { dst, payload }
            if *dst == pn(2) && FastDpMsg::decode(payload).unwrap() == FastDpMsg::Rx { uid: 200, small: true, big: true })));
        // A report about a previous incarnation of ours is ignored.
        f.handle_message(t0, pn(2), &rx(99, true, true), |_| Some(200))
            .unwrap();
        assert_eq!(f.link_status(pn(2)).unwrap().mode, Mode::Sleeve);
        f.handle_message(t0, pn(2), &rx(100, true, true), |_| Some(200))
            .unwrap();
        assert_eq!(mode(&f), (Mode::Fast, String::new()));
        let plan = f.plan().clone();
        assert_eq!(plan.fast_peers(), BTreeSet::from([pn(2)]));
        let fdb = plan.fdb();
        let ip = Ipv4Addr::new(198, 18, 0, 2);
        assert!(fdb.contains(&FdbEntry::Vxlan {
            mac: Mac([0; 6]),
            dst: ip
        }));
        assert!(fdb.contains(&FdbEntry::Vxlan {
            mac: Mac([2, 0, 0, 0, 0, 7]),
            dst: ip
        }));
        assert!(fdb.contains(&FdbEntry::Bridge {
            mac: Mac([2, 0, 0, 0, 0, 7])
        }));
        assert!(fdb.contains(&FdbEntry::Bridge {
            mac: fastdp::heartbeat_mac(pn(2))
        }));
        assert_eq!(fdb.len(), 5);
        // The fast peer's container address is answered for locally.
        assert_eq!(
            plan.neighbours.get(&Ipv4Addr::new(10, 32, 0, 7)),
            Some(&Mac([2, 0, 0, 0, 0, 7]))
        );

        // Heartbeats stop: sleeve once the timeout passes, heartbeats still sent.
        let t1 = t0 + Duration::from_secs(2);
        f.handle_timeout(t1);
        assert_eq!(mode(&f).0, Mode::Fast);
        let deadline = f.poll_timeout().unwrap();
        assert!(deadline <= t0 + Duration::from_millis(3500));
        f.handle_timeout(deadline);
        assert!(mode(&f).1.contains("no VXLAN heartbeats from the peer"));
        assert!(f.plan().fast.is_empty());
        assert!(f.plan().heartbeat.contains_key(&pn(2)));
        drain(&mut f);
        // Resumed: back to fast as soon as both ends see heartbeats again.
        let t2 = deadline + Duration::from_secs(5);
        f.heartbeat(t2, pn(2), big);
        assert_eq!(mode(&f).0, Mode::Fast);
    }

    #[test]
    fn a_fast_neighbour_that_drops_lingers_and_resumes() {
        let t0 = Instant::now();
        let mut f = pair(t0);
        f.heartbeat(t0, pn(2), f.big_len());
        f.handle_message(t0, pn(2), &rx(100, true, true), |_| Some(200))
            .unwrap();
        assert_eq!(mode(&f).0, Mode::Fast);
        // Its router restarts: the connection goes, the kernel entries stay for a while.
        let t1 = t0 + Duration::from_secs(1);
        // (Either event may come first.)
        f.peer_removed(t1, pn(2));
        f.set_neighbours(t1, &BTreeMap::new());
        assert!(f.plan().fast.contains_key(&pn(2)));
        assert!(f.plan().heartbeat.is_empty());
        assert_eq!(f.plan().macs[&pn(2)], vec![Mac([2, 0, 0, 0, 0, 7])]);
        // Back 5 s later (past the heartbeat timeout): still fast, waiting for heartbeats.
        let t2 = t1 + Duration::from_secs(5);
        f.set_neighbours(t2, &BTreeMap::from([(pn(2), addr(2))]));
        assert_eq!(mode(&f).0, Mode::Fast);
        f.heartbeat(t2 + Duration::from_secs(1), pn(2), f.big_len());
        f.handle_timeout(t2 + Duration::from_secs(4));
        assert_eq!(mode(&f).0, Mode::Fast);

        // Gone for good: removed after the linger time, record and all.
        let t3 = t2 + Duration::from_secs(5);
        f.set_neighbours(t3, &BTreeMap::new());
        f.peer_removed(t3, pn(2));
        f.handle_timeout(t3 + LINGER);
        assert!(f.plan().fast.is_empty());
        assert!(f.link_status(pn(2)).is_none());
        assert!(f.records.is_empty());
    }

    #[test]
    fn a_peer_that_is_not_a_neighbour_gets_a_direct_path_while_it_is_used() {
        let t0 = Instant::now();
        let mut f = FastDp::new(pn(1), 100, FastDpConfig::default());
        f.set_neighbours(t0, &BTreeMap::from([(pn(2), addr(2))]));
        f.handle_message(t0, pn(3), &record(3, 300, 1, true, &[9]), |_| Some(300))
            .unwrap();
        assert!(!f.has_link(pn(3)));
        // Our containers' frames to 3 went through a relay.
        f.want_direct(t0, pn(3), addr(3));
        assert!(f.has_link(pn(3)));
        // 3 is told at once, so it opens its side; its own opening report, saying it sees
        // no heartbeats of ours yet, does not count against a young link.
        let outs = drain(&mut f);
        assert!(outs.iter().any(|o| matches!(o, FastDpOutput::Unicast { dst, payload }
            if *dst == pn(3) && FastDpMsg::decode(payload).unwrap() == FastDpMsg::Rx { uid: 300, small: false, big: false })));
        f.handle_message(t0, pn(3), &rx(100, false, false), |_| Some(300))
            .unwrap();
        assert_eq!(mode_of(&f, 3).1, "waiting for VXLAN heartbeats");
        // A report from a peer we have no link with: it asks for a direct path.
        f.handle_message(t0, pn(4), &rx(100, false, false), |_| Some(400))
            .unwrap();
        assert_eq!(f.take_asked(), vec![pn(4)]);
        assert!(f.take_asked().is_empty());
        assert_eq!(
            f.plan().heartbeat.get(&pn(3)),
            Some(&Ipv4Addr::new(198, 18, 0, 3))
        );
        assert_eq!(f.direct_paths().len(), 1);
        f.heartbeat(t0, pn(3), f.big_len());
        f.handle_message(t0, pn(3), &rx(100, true, true), |_| Some(300))
            .unwrap();
        assert_eq!(f.link_status(pn(3)).unwrap().mode, Mode::Fast);
        assert!(f.plan().fast.contains_key(&pn(3)));
        // The neighbours change without it: the direct path stays.
        f.set_neighbours(t0, &BTreeMap::new());
        assert!(f.plan().fast.contains_key(&pn(3)));
        // Used (the kernel says so) a minute later: kept past the first idle deadline.
        let t1 = t0 + Duration::from_secs(60);
        f.want_direct(t1, pn(3), addr(3));
        let mut t = t1;
        while t < t0 + DEMAND_IDLE + Duration::from_secs(30) {
            t += Duration::from_secs(1);
            f.heartbeat(t, pn(3), f.big_len());
            f.handle_message(t, pn(3), &rx(100, true, true), |_| Some(300))
                .unwrap();
        }
        assert_eq!(f.link_status(pn(3)).unwrap().mode, Mode::Fast);
        // Unused: it lingers like a departed neighbour's, then goes, record kept.
        let idle = t1 + DEMAND_IDLE;
        f.handle_timeout(idle);
        assert!(!f.has_link(pn(3)));
        assert!(f.plan().fast.contains_key(&pn(3)), "lingers");
        f.handle_timeout(idle + LINGER);
        assert!(f.plan().fast.is_empty());
        assert!(f.plan().heartbeat.is_empty());
        assert!(f.records.contains_key(&pn(3)));
        // Wanted again: back.
        f.want_direct(idle + LINGER, pn(3), addr(3));
        assert!(f.plan().heartbeat.contains_key(&pn(3)));
    }

    #[test]
    fn no_direct_paths_on_demand_when_off_or_to_ourselves() {
        let t0 = Instant::now();
        let cfg = FastDpConfig {
            on_demand: false,
            ..Default::default()
        };
        let mut f = FastDp::new(pn(1), 100, cfg);
        f.want_direct(t0, pn(3), addr(3));
        assert!(!f.has_link(pn(3)));
        let mut f = FastDp::new(pn(1), 100, FastDpConfig::default());
        f.want_direct(t0, pn(1), addr(1));
        assert!(f.links.is_empty());
        // An unused direct path that never worked just goes.
        f.want_direct(t0, pn(3), addr(3));
        f.handle_timeout(t0 + DEMAND_IDLE);
        assert!(f.links.is_empty());
    }

    #[test]
    fn a_report_before_the_link_is_kept_for_it() {
        let t0 = Instant::now();
        let mut f = FastDp::new(pn(1), 100, FastDpConfig::default());
        f.handle_message(t0, pn(2), &record(2, 200, 1, true, &[7]), |_| Some(200))
            .unwrap();
        f.handle_message(t0, pn(2), &rx(100, true, true), |_| Some(200))
            .unwrap();
        f.set_neighbours(t0, &BTreeMap::from([(pn(2), addr(2))]));
        f.heartbeat(t0, pn(2), f.big_len());
        assert_eq!(mode(&f), (Mode::Fast, String::new()));
    }

    #[test]
    fn local_neighbours_are_announced_once_per_change() {
        let t0 = Instant::now();
        let mut f = pair(t0);
        drain(&mut f);
        let n = vec![(Ipv4Addr::new(10, 32, 0, 1), Mac([2, 0, 0, 0, 0, 1]))];
        f.set_local_neighbours(t0, n.clone());
        let outs = drain(&mut f);
        assert!(outs.iter().any(|o| matches!(o, FastDpOutput::Broadcast(p)
            if matches!(FastDpMsg::decode(p).unwrap(), FastDpMsg::Records(r) if r[0].neighbours == n))));
        f.set_local_neighbours(t0, n);
        assert!(drain(&mut f).is_empty(), "no change, no broadcast");
        // Sleeve peers' addresses are not answered for: ARP for them must reach them.
        assert!(f.plan().neighbours.is_empty());
    }

    #[test]
    fn a_young_link_waits_for_the_peers_report_and_sends_none_of_its_own_yet() {
        let t0 = Instant::now();
        let mut f = pair(t0);
        drain(&mut f);
        f.handle_timeout(t0 + Duration::from_secs(1));
        // Nothing seen yet: no "none arrive" report that would knock the peer off.
        assert!(drain(&mut f).is_empty());
        let t1 = t0 + Duration::from_secs(3);
        f.heartbeat(t1, pn(2), f.big_len());
        assert_eq!(mode(&f).1, "waiting for VXLAN heartbeats");
        assert_eq!(drain(&mut f).len(), 1, "the report once both sizes arrived");
        // Past the first timeout, a peer that never reports is named.
        let t2 = t0 + Duration::from_millis(3600);
        f.heartbeat(t2, pn(2), f.big_len());
        assert!(mode(&f).1.contains("gets no VXLAN heartbeats from us"));
    }

    #[test]
    fn small_heartbeats_only_is_a_path_mtu_problem() {
        let t0 = Instant::now();
        let mut f = pair(t0);
        f.handle_message(t0, pn(2), &rx(100, true, true), |_| Some(200))
            .unwrap();
        f.heartbeat(t0, pn(2), fastdp::HEARTBEAT_MIN_LEN);
        // Small first, the big one may follow: not a problem while the link is young ...
        assert_eq!(mode(&f).1, "waiting for VXLAN heartbeats");
        // ... but one heartbeat timeout later it is.
        let t1 = t0 + Duration::from_millis(3600);
        f.heartbeat(t1, pn(2), fastdp::HEARTBEAT_MIN_LEN);
        let (m, why) = mode(&f);
        assert_eq!(m, Mode::Sleeve);
        assert!(why.contains("1450 bytes are lost"), "{why}");
        f.heartbeat(t1, pn(2), f.big_len());
        f.handle_message(t1, pn(2), &rx(100, true, false), |_| Some(200))
            .unwrap();
        assert!(mode(&f).1.contains("path MTU"));
    }

    #[test]
    fn disabled_encrypted_or_disabled_peer_is_sleeve_with_reason() {
        let t0 = Instant::now();
        let mut f = pair(t0);
        f.set_encrypted(t0, pn(2), true);
        assert!(mode(&f).1.starts_with("encrypted"));
        assert!(f.plan().heartbeat.is_empty());
        f.set_encrypted(t0, pn(2), false);
        f.handle_message(t0, pn(2), &record(2, 200, 2, false, &[]), |_| Some(200))
            .unwrap();
        assert_eq!(mode(&f).1, "fast path disabled on the peer");
        assert!(f.plan().heartbeat.is_empty());

        let mut off = FastDp::new(
            pn(1),
            100,
            FastDpConfig {
                enabled: false,
                ..Default::default()
            },
        );
        off.set_neighbours(t0, &BTreeMap::from([(pn(2), addr(2))]));
        assert!(mode(&off).1.contains("--no-fastdp"));
        assert!(off.link_status(pn(2)).unwrap().reason.unwrap().chosen());
        assert!(off.plan().heartbeat.is_empty());
        // It still announces itself, so peers say why.
        assert!(FastDpMsg::decode(&off.full_state(weft_proto::MAX_GOSSIP_CHUNK)[0]).is_ok());
    }

    #[test]
    fn records_newest_of_current_incarnation_win() {
        let t0 = Instant::now();
        let mut f = pair(t0);
        let uid = |_| Some(200);
        assert!(
            !f.handle_message(t0, pn(2), &record(2, 200, 1, true, &[7]), uid)
                .unwrap()
        );
        assert!(
            f.handle_message(t0, pn(2), &record(2, 200, 3, true, &[8]), uid)
                .unwrap()
        );
        assert!(
            !f.handle_message(t0, pn(2), &record(2, 200, 2, true, &[9]), uid)
                .unwrap()
        );
        // A previous incarnation's record never comes back.
        assert!(
            !f.handle_message(t0, pn(2), &record(2, 150, 9, true, &[1]), uid)
                .unwrap()
        );
        assert_eq!(f.records[&pn(2)].macs, vec![Mac([2, 0, 0, 0, 0, 8])]);
        // A restarted peer's first record replaces the old one whatever its version.
        assert!(
            f.handle_message(t0, pn(2), &record(2, 201, 1, true, &[5]), |_| Some(201))
                .unwrap()
        );
        // Before the topology shows a peer, its record is taken rather than lost.
        assert!(
            f.handle_message(t0, pn(3), &record(3, 300, 1, true, &[6]), |_| None)
                .unwrap()
        );
        assert_eq!(f.records[&pn(3)].uid, 300);
        // Then the topology's incarnation decides.
        assert!(
            !f.handle_message(t0, pn(3), &record(3, 299, 9, true, &[6]), |_| Some(300))
                .unwrap()
        );
        // Malformed: multicast MAC.
        let bad = FastDpMsg::Records(vec![MacRecord {
            origin: pn(3),
            uid: 1,
            version: 1,
            fastdp: true,
            macs: vec![Mac::BROADCAST],
            neighbours: vec![],
        }])
        .encode();
        assert!(f.handle_message(t0, pn(3), &bad, |_| Some(1)).is_err());
        assert!(
            f.handle_message(t0, pn(3), &[0xff, 0xff], |_| Some(1))
                .is_err()
        );
    }

    #[test]
    fn local_macs_change_bumps_version_and_broadcasts() {
        let t0 = Instant::now();
        let mut f = FastDp::new(pn(1), 100, FastDpConfig::default());
        let m = Mac([2, 1, 1, 1, 1, 1]);
        f.set_local_macs(t0, vec![m, m, Mac::BROADCAST]);
        let outs = drain(&mut f);
        assert!(matches!(&outs[..], [FastDpOutput::Broadcast(p)]
            if FastDpMsg::decode(p).unwrap() == FastDpMsg::Records(vec![MacRecord { origin: pn(1), uid: 100, version: 2, fastdp: true, macs: vec![m], neighbours: vec![] }])));
        f.set_local_macs(t0, vec![m]);
        assert!(drain(&mut f).is_empty());
    }

    #[test]
    fn a_mac_claimed_twice_is_programmed_once() {
        let ip = |n| Ipv4Addr::new(198, 18, 0, n);
        let m = Mac([2, 0, 0, 0, 0, 1]);
        let plan = FastDpPlan {
            heartbeat: BTreeMap::new(),
            fast: BTreeMap::from([(pn(2), ip(2)), (pn(3), ip(3))]),
            macs: BTreeMap::from([(pn(2), vec![m]), (pn(3), vec![m])]),
            neighbours: BTreeMap::new(),
        };
        let fdb = plan.fdb();
        let for_m = fdb
            .iter()
            .filter(|e| matches!(e, FdbEntry::Vxlan { mac, .. } if *mac == m))
            .count();
        assert_eq!(for_m, 1);
    }
}
