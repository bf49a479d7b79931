//! A deterministic discrete-event simulator of a weft mesh.
//!
//! Each simulated host runs the real sans-IO [`Router`] and [`Forwarder`] from `weft-core`; the
//! simulator plays the kernel: TCP connections are reliable ordered pipes with latency, UDP
//! datagrams are delivered after a latency or lost, and links can be cut (partitions). Time is
//! virtual and jumps straight to the next event or router timer, so an hour of mesh life takes
//! milliseconds, and everything random comes from one seed, so a failing run replays exactly.
//!
//! With [`Sim::fastdp`] it also plays the kernel's VXLAN fast path: heartbeats between hosts
//! whose plans ask for them, and a bridge that sends a container's frame by VXLAN to the fast
//! peers the plan names (to the owner of a known MAC only, else to all of them) before the
//! forwarder sees it. VXLAN can be blocked between pairs ([`Sim::block_vxlan`]).
//!
//! Partitions behave like real networks, not like resets: bytes sent across a cut link wait
//! (TCP retransmits) and arrive when it heals, unless a router gives up on the connection
//! first, which it only learns by its own timers. Dials across a cut time out.
#![forbid(unsafe_code)]

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use weft_core::crypto::{self, Secret, SeededEntropy};
use weft_core::fastdp::{FastDpConfig, FastDpPlan, HEARTBEAT_INTERVAL, Mode};
use weft_core::ipam::{IpamConfig, IpamError, OpId};
use weft_core::mesh::{
    Action, ConnId, CryptoSettings, DataPlaneTable, Router, RouterConfig, Timing,
};
use weft_core::node::{Node as CoreNode, NodeEvent};
use weft_core::overlay::{Forwarder, Output};
use weft_core::rng::Rng;
use weft_proto::control::Channel;
use weft_proto::ipam::Persisted;
use weft_proto::{Mac, PeerName};

pub const PORT: u16 = 6783;

/// Link behaviour.
#[derive(Clone, Debug)]
pub struct LinkModel {
    pub latency_min: Duration,
    pub latency_max: Duration,
    /// Probability that a UDP datagram is lost.
    pub udp_loss: f64,
    /// How long a dial across a cut link takes to fail.
    pub dial_timeout: Duration,
}

impl Default for LinkModel {
    fn default() -> Self {
        LinkModel {
            latency_min: Duration::from_micros(200),
            latency_max: Duration::from_millis(5),
            udp_loss: 0.0,
            dial_timeout: Duration::from_secs(10),
        }
    }
}

#[derive(Debug)]
enum Ev {
    DialDone {
        node: usize,
        inc: u64,
        conn: ConnId,
        peer: Option<usize>,
        error: &'static str,
    },
    Tcp {
        node: usize,
        inc: u64,
        conn: ConnId,
        /// The sending end, to answer with a reset if the receiver has restarted since.
        from: (usize, ConnId),
        from_inc: u64,
        item: PipeItem,
    },
    Udp {
        node: usize,
        from: SocketAddr,
        bytes: Vec<u8>,
    },
    /// Host `node` wrote everything on `conn` up to a mark.
    Written {
        node: usize,
        inc: u64,
        conn: ConnId,
        channel: Channel,
    },
    /// A VXLAN packet reaching host `node`'s kernel.
    Vxlan { node: usize, item: VxItem },
    /// Time for host `node`'s fast path to send heartbeats.
    VxlanTick { node: usize, inc: u64 },
}

#[derive(Debug)]
enum VxItem {
    Heartbeat { from: PeerName, len: usize },
    Frame(Vec<u8>),
}

#[derive(Debug, Clone)]
enum PipeItem {
    Data(Vec<u8>),
    /// Not sent: the writer reports it once everything before it left.
    Mark(Channel),
    Fin,
}

/// One direction of a TCP connection.
#[derive(Debug)]
struct Pipe {
    from_inc: u64,
    to_node: usize,
    to_inc: u64,
    to_conn: ConnId,
    latency: Duration,
    /// Bytes sent while the link was cut, delivered in order when it heals.
    backlog: VecDeque<PipeItem>,
    /// The last scheduled delivery, to keep the stream in order across latency changes.
    last_delivery: Instant,
}

pub struct Node {
    pub node: CoreNode,
    pub forwarder: Forwarder,
    pub ip: IpAddr,
    pub alive: bool,
    /// Frames injected into this host's bridge, in order.
    pub injected: Vec<Vec<u8>>,
    /// Hosts it was connected to when it crashed (redialled on restart, as `--resume`).
    known_peers: Vec<usize>,
    pub table: Arc<DataPlaneTable>,
    targets: Vec<usize>,
    discovery: bool,
    nickname: String,
    name: PeerName,
    /// Incarnation counter, so a restarted router gets a new seed (and UID).
    incarnation: u64,
    /// The IPAM state as last persisted (what survives a crash).
    pub persisted: Option<Persisted>,
    /// Answers to IPAM requests.
    pub results: BTreeMap<OpId, Result<Ipv4Net, IpamError>>,
    /// The ident each IPAM request asked for (the container the answer goes to).
    requests: BTreeMap<OpId, String>,
    /// What the host's containers really hold: every address an IPAM answer gave them, until
    /// released. Outlives the router (a crash, or lost state) like containers do.
    pub containers: BTreeMap<String, BTreeSet<Ipv4Net>>,
    /// Crashed for good (its containers are gone; candidates for rmpeer).
    pub dead: bool,
    /// Accepted passwords (first used to dial); empty: unencrypted.
    passwords: Vec<String>,
    /// The persisted static key (survives restarts, like the daemon's key file).
    static_key: Option<Secret>,
    /// Runs the VXLAN fast path.
    pub fastdp: bool,
    /// The fast path's current plan.
    pub plan: Arc<FastDpPlan>,
    /// Container MACs its bridge has seen (what the fast path gossips).
    local_macs: BTreeSet<Mac>,
}

impl Node {
    pub fn router(&self) -> &Router {
        self.node.router()
    }
}

pub struct Sim {
    pub seed: u64,
    start: Instant,
    now: Instant,
    rng: Rng,
    pub link: LinkModel,
    pub timing: Timing,
    /// `--conn-limit` of routers added from now on (0: unlimited).
    pub conn_limit: usize,
    /// IPAM configuration for routers added from now on (`None`: no IPAM).
    pub ipam: Option<IpamConfig>,
    /// DNS domain for routers added from now on (`None`: no DNS).
    pub dns_domain: Option<String>,
    /// Password for routers added from now on (`None`: unencrypted).
    pub password: Option<String>,
    /// Whether routers added from now on run the VXLAN fast path.
    pub fastdp: bool,
    /// Largest gossip payload of routers added from now on (full states are cut to it).
    pub gossip_chunk: usize,
    /// Newest control protocol of routers added from now on (older ones stand in for the
    /// previous release).
    pub protocol_max: u8,
    /// Whether routers added from now on offer AES-256-GCM for encrypted data.
    pub offer_aes_gcm: bool,
    /// Routers added from now on make a full mesh up to this many peers, a partial view past.
    pub full_mesh_peers: usize,
    /// The largest control message any router has sent so far (bytes on the wire).
    pub max_message: usize,
    /// Control bytes all routers have written to their TCP connections so far.
    pub tcp_bytes: u64,
    /// Control datagrams' bytes (UDP heartbeats and their acknowledgements) so far.
    pub udp_bytes: u64,
    /// With [`Sim::classify`]: control bytes by kind of message (unencrypted meshes only).
    pub by_kind: BTreeMap<String, u64>,
    /// Whether to fill [`Sim::by_kind`] (decoding every message costs time).
    pub classify: bool,
    /// Host pairs between which VXLAN is blocked.
    vxlan_cut: BTreeSet<(usize, usize)>,
    /// Derived keys by password: the KDF is costly, and hundreds of hosts share one.
    psk_cache: BTreeMap<String, Secret>,
    /// Byte string to look for in everything that crosses the wire (see [`Sim::watch_wire`]).
    wire_needle: Option<Vec<u8>>,
    /// Datagrams and TCP segments that contained the needle.
    pub wire_hits: u64,
    next_op: OpId,
    pub nodes: Vec<Node>,
    queue: BTreeMap<(Instant, u64), Ev>,
    seq: u64,
    timers: BTreeSet<(Instant, usize)>,
    timer_of: Vec<Option<Instant>>,
    pipes: BTreeMap<(usize, ConnId), Pipe>,
    cut: BTreeSet<(usize, usize)>,
    /// Every event handled, hashed, to check determinism.
    pub trace_hash: u64,
    pub steps: u64,
    /// TCP connections accepted so far, by all hosts.
    pub accepted: u64,
}

impl Sim {
    pub fn new(seed: u64) -> Self {
        let now = Instant::now();
        Sim {
            seed,
            start: now,
            now,
            rng: Rng::new(seed),
            link: LinkModel::default(),
            timing: Timing::default(),
            conn_limit: 0,
            ipam: None,
            dns_domain: None,
            password: None,
            fastdp: false,
            gossip_chunk: weft_proto::MAX_GOSSIP_CHUNK,
            protocol_max: weft_proto::control::PROTOCOL_MAX,
            offer_aes_gcm: true,
            full_mesh_peers: weft_core::mesh::FULL_MESH_PEERS,
            max_message: 0,
            tcp_bytes: 0,
            udp_bytes: 0,
            by_kind: BTreeMap::new(),
            classify: false,
            vxlan_cut: BTreeSet::new(),
            psk_cache: BTreeMap::new(),
            wire_needle: None,
            wire_hits: 0,
            next_op: 1,
            nodes: Vec::new(),
            queue: BTreeMap::new(),
            seq: 0,
            timers: BTreeSet::new(),
            timer_of: Vec::new(),
            pipes: BTreeMap::new(),
            cut: BTreeSet::new(),
            trace_hash: 0xcbf2_9ce4_8422_2325,
            steps: 0,
            accepted: 0,
        }
    }

    /// Virtual time since the start.
    pub fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    pub fn now(&self) -> Instant {
        self.now
    }

    fn ip_of(i: usize) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 0, (i / 250) as u8, (i % 250 + 1) as u8))
    }

    fn node_at(&self, ip: IpAddr) -> Option<usize> {
        match ip {
            IpAddr::V4(v4) => {
                let o = v4.octets();
                let i = o[2] as usize * 250 + o[3] as usize - 1;
                (i < self.nodes.len()).then_some(i)
            }
            IpAddr::V6(_) => None,
        }
    }

    pub fn addr(i: usize) -> SocketAddr {
        SocketAddr::new(Self::ip_of(i), PORT)
    }

    /// Adds a host whose router dials `targets` (indexes of other hosts).
    pub fn add_node(&mut self, targets: &[usize], discovery: bool) -> usize {
        let i = self.nodes.len();
        let name = PeerName::from_u64(0x0200_0000_0000 + i as u64 + 1);
        let nickname = format!("h{i}");
        let passwords: Vec<String> = self.password.iter().cloned().collect();
        let static_key = (!passwords.is_empty()).then(|| {
            let e = SeededEntropy::new(self.seed ^ name.as_u64() ^ 0x5eed);
            crypto::generate_static_key(&e).0
        });
        let fastdp = self.fastdp;
        let node = self.make_node(
            name,
            &nickname,
            discovery,
            0,
            None,
            &passwords,
            &static_key,
            fastdp,
        );
        self.nodes.push(Node {
            node,
            forwarder: Forwarder::new(name),
            ip: Self::ip_of(i),
            alive: true,
            injected: Vec::new(),
            known_peers: Vec::new(),
            table: Arc::new(DataPlaneTable::default()),
            targets: targets.to_vec(),
            discovery,
            nickname,
            name,
            incarnation: 0,
            persisted: None,
            results: BTreeMap::new(),
            requests: BTreeMap::new(),
            containers: BTreeMap::new(),
            dead: false,
            passwords,
            static_key,
            fastdp,
            plan: Arc::default(),
            local_macs: BTreeSet::new(),
        });
        self.timer_of.push(None);
        self.start_node(i);
        i
    }

    #[allow(clippy::too_many_arguments)]
    fn make_node(
        &mut self,
        name: PeerName,
        nickname: &str,
        discovery: bool,
        inc: u64,
        persisted: Option<Persisted>,
        passwords: &[String],
        static_key: &Option<Secret>,
        fastdp: bool,
    ) -> CoreNode {
        let seed = self.seed ^ name.as_u64().wrapping_mul(0x9e37_79b9) ^ (inc << 48);
        let crypto = static_key.as_ref().map(|k| CryptoSettings {
            static_key: k.clone(),
            psks: self.psks(passwords),
            trusted: Vec::new(),
            rekey_interval: crypto::REKEY_INTERVAL,
            offer_aes_gcm: self.offer_aes_gcm,
            entropy: SeededEntropy::new(seed ^ 0xc0ffee),
        });
        let cfg = RouterConfig {
            name,
            nickname: nickname.to_string(),
            tcp_port: PORT,
            udp_port: PORT,
            conn_limit: self.conn_limit,
            discovery,
            mtu: 1438,
            timing: self.timing.clone(),
            crypto,
            gossip_chunk: self.gossip_chunk,
            protocol_max: self.protocol_max,
            full_mesh_peers: self.full_mesh_peers,
        };
        let ipam = self.ipam.clone().map(|c| (c, persisted));
        let mut node = CoreNode::new(cfg, ipam, self.dns_domain.as_deref(), self.now, seed)
            .expect("node starts");
        if fastdp {
            node.enable_fastdp(self.now, FastDpConfig::default());
        }
        node
    }

    fn start_node(&mut self, i: usize) {
        let targets: Vec<(String, SocketAddr, bool)> = self.nodes[i]
            .targets
            .iter()
            .map(|&t| (Self::addr(t).ip().to_string(), Self::addr(t), false))
            .collect();
        let now = self.now;
        self.nodes[i].node.connect(now, targets, false);
        self.drain(i);
        if self.nodes[i].fastdp {
            let inc = self.nodes[i].incarnation;
            self.schedule(now + HEARTBEAT_INTERVAL, Ev::VxlanTick { node: i, inc });
        }
    }

    /// Blocks VXLAN (only) between hosts `a` and `b`.
    pub fn block_vxlan(&mut self, a: usize, b: usize) {
        self.vxlan_cut.insert((a.min(b), a.max(b)));
    }

    pub fn unblock_vxlan(&mut self) {
        self.vxlan_cut.clear();
    }

    /// How host `i` sends to its neighbour `j`, if `j` is one.
    pub fn mode(&self, i: usize, j: usize) -> Option<Mode> {
        let name = self.nodes[j].name;
        self.nodes[i]
            .node
            .fastdp()
            .link_status(name)
            .map(|s| s.mode)
    }

    fn vxlan_send(&mut self, i: usize, to: Ipv4Addr, item: VxItem) {
        let Some(t) = self.node_at(IpAddr::V4(to)) else {
            return;
        };
        if self.is_cut(i, t)
            || self.vxlan_cut.contains(&(i.min(t), i.max(t)))
            || self.rng.unit() < self.link.udp_loss
        {
            return;
        }
        let at = self.now + self.latency();
        self.schedule(at, Ev::Vxlan { node: t, item });
    }

    /// Makes host `i` dial host `j` (as `weft connect`).
    pub fn connect(&mut self, i: usize, j: usize) {
        self.nodes[i].targets.push(j);
        let now = self.now;
        let t = (Self::addr(j).ip().to_string(), Self::addr(j), false);
        self.nodes[i].node.connect(now, vec![t], false);
        self.drain(i);
    }

    /// Kills host `i`: its sockets vanish; peers see resets where the link is up.
    pub fn crash(&mut self, i: usize) {
        self.nodes[i].alive = false;
        // What `--resume` redials (the daemon keeps the peers it was connected to).
        let mut known: Vec<usize> = self
            .pipes
            .iter()
            .filter(|((n, _), _)| *n == i)
            .map(|(_, p)| p.to_node)
            .collect();
        known.sort_unstable();
        known.dedup();
        self.nodes[i].known_peers = known;
        let ends: Vec<(usize, ConnId)> = self
            .pipes
            .keys()
            .filter(|(n, _)| *n == i)
            .copied()
            .collect();
        for (n, c) in ends {
            self.close_pipe(n, c);
        }
        self.set_timer(i, None);
    }

    /// Restarts host `i` with a fresh router (new UID, same name and targets).
    pub fn restart(&mut self, i: usize) {
        let n = &self.nodes[i];
        let (name, nick, disc, inc) = (n.name, n.nickname.clone(), n.discovery, n.incarnation + 1);
        let (persisted, passwords, key) = (
            n.persisted.clone(),
            n.passwords.clone(),
            n.static_key.clone(),
        );
        let fastdp = n.fastdp;
        let node = self.make_node(name, &nick, disc, inc, persisted, &passwords, &key, fastdp);
        let n = &mut self.nodes[i];
        n.node = node;
        n.plan = Arc::default();
        n.results.clear();
        n.requests.clear();
        n.forwarder = Forwarder::new(name);
        n.incarnation = inc;
        n.alive = true;
        n.injected.clear();
        // As the daemon: the containers still attached are reclaimed before anything else.
        let held: Vec<(String, Ipv4Net)> = self.nodes[i]
            .containers
            .iter()
            .flat_map(|(ident, nets)| nets.iter().map(move |n| (ident.clone(), *n)))
            .collect();
        let now = self.now;
        self.nodes[i].node.ipam_reclaim(now, held);
        self.start_node(i);
        let known: Vec<usize> = std::mem::take(&mut self.nodes[i].known_peers)
            .into_iter()
            .filter(|k| !self.nodes[i].targets.contains(k))
            .collect();
        if !known.is_empty() {
            let now = self.now;
            // The daemon saves them as `ip:port`, so the port counts as given.
            let t = known
                .iter()
                .map(|&k| (Self::addr(k).to_string(), Self::addr(k), true))
                .collect();
            self.nodes[i].node.connect(now, t, false);
            self.drain(i);
        }
        // The bridge still knows its containers; the router's first poll finds them.
        if self.nodes[i].fastdp && !self.nodes[i].local_macs.is_empty() {
            let now = self.now;
            let macs = self.nodes[i].local_macs.iter().copied().collect();
            self.nodes[i].node.fastdp_local_macs(now, macs);
            self.drain(i);
        }
    }

    /// Restarts host `i` with its saved IPAM state gone (disk replaced, state directory
    /// wiped) while its containers keep their addresses.
    pub fn lose_state(&mut self, i: usize) {
        if self.nodes[i].alive {
            self.crash(i);
        }
        self.nodes[i].persisted = None;
        self.restart(i);
    }

    /// Cuts every link between a host in `a` and a host in `b`.
    pub fn partition(&mut self, a: &[usize], b: &[usize]) {
        for &x in a {
            for &y in b {
                self.cut.insert((x.min(y), x.max(y)));
            }
        }
    }

    /// Restores all links and delivers what waited on them.
    pub fn heal(&mut self) {
        self.cut.clear();
        let keys: Vec<(usize, ConnId)> = self.pipes.keys().copied().collect();
        for k in keys {
            self.flush_pipe(k);
        }
    }

    fn is_cut(&self, a: usize, b: usize) -> bool {
        self.cut.contains(&(a.min(b), a.max(b)))
    }

    fn schedule(&mut self, at: Instant, ev: Ev) {
        self.seq += 1;
        self.queue.insert((at, self.seq), ev);
    }

    fn latency(&mut self) -> Duration {
        let span = self.link.latency_max.saturating_sub(self.link.latency_min);
        self.link.latency_min + span.mul_f64(self.rng.unit())
    }

    fn set_timer(&mut self, i: usize, t: Option<Instant>) {
        if let Some(old) = self.timer_of[i].take() {
            self.timers.remove(&(old, i));
        }
        if let Some(t) = t {
            self.timers.insert((t, i));
            self.timer_of[i] = Some(t);
        }
    }

    /// Carries out everything host `i`'s router and forwarder asked for.
    fn drain(&mut self, i: usize) {
        loop {
            let mut progressed = false;
            // Events first: persisted state must be "on disk" before gossip leaves.
            while let Some(e) = self.nodes[i].node.poll_event() {
                progressed = true;
                let n = &mut self.nodes[i];
                match e {
                    NodeEvent::DataPlane(t) => {
                        n.table = t.clone();
                        n.forwarder.set_table(t);
                    }
                    NodeEvent::PeerRemoved(p) => n.forwarder.forget_peer(p),
                    NodeEvent::DataKeys { peer, keys } => n.forwarder.set_keys(peer, &keys),
                    NodeEvent::FastDp(p) => {
                        n.forwarder.set_fast(p.fast_peers());
                        n.plan = p;
                    }
                    NodeEvent::TargetsChanged(_) => {}
                    NodeEvent::IpamPersist(p) => n.persisted = Some(p),
                    NodeEvent::IpamDone { op, result } => {
                        if let (Ok(net), Some(ident)) = (&result, n.requests.remove(&op)) {
                            n.containers.entry(ident).or_default().insert(*net);
                        }
                        n.results.insert(op, result);
                    }
                }
            }
            while let Some(a) = self.nodes[i].node.poll_action() {
                progressed = true;
                self.do_action(i, a);
            }
            if !progressed {
                break;
            }
        }
        let t = if self.nodes[i].alive {
            self.nodes[i].node.poll_timeout()
        } else {
            None
        };
        self.set_timer(i, t);
    }

    fn do_action(&mut self, i: usize, a: Action) {
        match a {
            Action::Dial { conn, addr } => {
                let target = self.node_at(addr.ip()).filter(|_| addr.port() == PORT);
                let lat = self.latency();
                let (at, peer, error) = match target {
                    Some(t) if t != i && self.is_cut(i, t) => (
                        self.now + self.link.dial_timeout,
                        None,
                        "connection timed out",
                    ),
                    Some(t) if self.nodes[t].alive => (self.now + lat * 2, Some(t), ""),
                    _ => (self.now + lat * 2, None, "connection refused"),
                };
                let inc = self.nodes[i].incarnation;
                self.schedule(
                    at,
                    Ev::DialDone {
                        node: i,
                        inc,
                        conn,
                        peer,
                        error,
                    },
                );
            }
            Action::Send { conn, bytes } => {
                self.max_message = self.max_message.max(bytes.len());
                self.tcp_bytes += bytes.len() as u64;
                if self.classify {
                    let kind = kind_of(&bytes);
                    *self.by_kind.entry(kind).or_default() += bytes.len() as u64;
                }
                self.pipe_send((i, conn), PipeItem::Data(bytes))
            }
            Action::Mark { conn, channel } => self.pipe_send((i, conn), PipeItem::Mark(channel)),
            Action::Close { conn } => self.close_pipe(i, conn),
            Action::SendUdp { to, peer, bytes } => {
                self.udp_bytes += bytes.len() as u64;
                let mut out = SimOutput::default();
                self.nodes[i]
                    .forwarder
                    .send_control(to, peer, &bytes, &mut out);
                self.apply_output(i, out);
            }
        }
    }

    fn pipe_send(&mut self, key: (usize, ConnId), item: PipeItem) {
        if let PipeItem::Data(d) = &item {
            self.sniff(d);
        }
        let Some(p) = self.pipes.get_mut(&key) else {
            return;
        };
        p.backlog.push_back(item);
        self.flush_pipe(key);
    }

    fn flush_pipe(&mut self, key: (usize, ConnId)) {
        let Some(p) = self.pipes.get(&key) else {
            return;
        };
        if self.is_cut(key.0, p.to_node) {
            return;
        }
        let p = self.pipes.get_mut(&key).expect("checked above");
        let mut deliveries = Vec::new();
        while let Some(item) = p.backlog.pop_front() {
            if let PipeItem::Mark(channel) = item {
                let ev = Ev::Written {
                    node: key.0,
                    inc: p.from_inc,
                    conn: key.1,
                    channel,
                };
                deliveries.push((self.now, ev));
                continue;
            }
            let at = (self.now + p.latency).max(p.last_delivery);
            p.last_delivery = at;
            deliveries.push((
                at,
                Ev::Tcp {
                    node: p.to_node,
                    inc: p.to_inc,
                    conn: p.to_conn,
                    from: key,
                    from_inc: p.from_inc,
                    item,
                },
            ));
        }
        for (at, ev) in deliveries {
            self.schedule(at, ev);
        }
    }

    fn close_pipe(&mut self, i: usize, conn: ConnId) {
        self.pipe_send((i, conn), PipeItem::Fin);
        self.pipes.remove(&(i, conn));
    }

    fn udp_send(&mut self, i: usize, to: SocketAddr, bytes: Vec<u8>) {
        let Some(t) = self.node_at(to.ip()).filter(|_| to.port() == PORT) else {
            return;
        };
        self.sniff(&bytes);
        if self.is_cut(i, t) || self.rng.unit() < self.link.udp_loss {
            return;
        }
        let at = self.now + self.latency();
        let from = SocketAddr::new(self.nodes[i].ip, PORT);
        self.schedule(
            at,
            Ev::Udp {
                node: t,
                from,
                bytes,
            },
        );
    }

    fn mix(&mut self, v: u64) {
        self.trace_hash = (self.trace_hash ^ v).wrapping_mul(0x0100_0000_01b3);
    }

    /// Handles the next event or timer. Returns false when nothing is left to do.
    pub fn step(&mut self) -> bool {
        let next_ev = self.queue.keys().next().copied();
        let next_timer = self.timers.iter().next().copied();
        self.steps += 1;
        match (next_ev, next_timer) {
            (None, None) => false,
            (Some((t, _)), Some((tt, i))) if tt < t => self.fire_timer(tt, i),
            (None, Some((tt, i))) => self.fire_timer(tt, i),
            (Some(key), _) => {
                let ev = self.queue.remove(&key).expect("key just read");
                self.now = self.now.max(key.0);
                self.handle(ev);
                true
            }
        }
    }

    fn fire_timer(&mut self, t: Instant, i: usize) -> bool {
        self.now = self.now.max(t);
        self.mix(i as u64 ^ 0x7000);
        self.set_timer(i, None);
        if self.nodes[i].alive {
            let now = self.now;
            self.nodes[i].node.handle_timeout(now);
            self.drain(i);
        }
        true
    }

    fn handle(&mut self, ev: Ev) {
        let now = self.now;
        match ev {
            Ev::DialDone {
                node,
                inc,
                conn,
                peer,
                error,
            } => {
                self.mix(node as u64 ^ conn.0 << 16 ^ 0x1000);
                if !self.nodes[node].alive || self.nodes[node].incarnation != inc {
                    return;
                }
                let accepted = peer.filter(|&p| self.nodes[p].alive && !self.is_cut(node, p));
                let result = match accepted {
                    Some(p) => {
                        let from = SocketAddr::new(self.nodes[node].ip, 40000 + conn.0 as u16);
                        match self.nodes[p].node.handle_accept(now, from) {
                            Some(pc) => {
                                self.accepted += 1;
                                let lat = self.latency();
                                let (ni, pi) = (inc, self.nodes[p].incarnation);
                                for (a, ai, b, bi) in [
                                    ((node, conn), ni, (p, pc), pi),
                                    ((p, pc), pi, (node, conn), ni),
                                ] {
                                    self.pipes.insert(
                                        a,
                                        Pipe {
                                            from_inc: ai,
                                            to_node: b.0,
                                            to_inc: bi,
                                            to_conn: b.1,
                                            latency: lat,
                                            backlog: VecDeque::new(),
                                            last_delivery: now,
                                        },
                                    );
                                }
                                self.drain(p);
                                Ok(())
                            }
                            None => Err("connection reset by peer".to_string()),
                        }
                    }
                    None if error.is_empty() => Err("connection refused".to_string()),
                    None => Err(error.to_string()),
                };
                self.nodes[node].node.handle_dialed(now, conn, result);
                self.drain(node);
            }
            Ev::Tcp {
                node,
                inc,
                conn,
                from,
                from_inc,
                item,
            } => {
                self.mix(node as u64 ^ conn.0 << 16 ^ 0x2000);
                if !self.nodes[node].alive {
                    return;
                }
                if self.nodes[node].incarnation != inc {
                    // The connection died with the previous incarnation: answer with a reset,
                    // as a real host does for segments of connections it does not know.
                    if matches!(item, PipeItem::Data(_)) && !self.is_cut(node, from.0) {
                        let at = self.now + self.latency();
                        self.schedule(
                            at,
                            Ev::Tcp {
                                node: from.0,
                                inc: from_inc,
                                conn: from.1,
                                from: (node, conn),
                                from_inc: inc,
                                item: PipeItem::Fin,
                            },
                        );
                    }
                    return;
                }
                match item {
                    PipeItem::Data(bytes) => {
                        self.mix(bytes.len() as u64);
                        self.nodes[node].node.handle_conn_data(now, conn, &bytes)
                    }
                    PipeItem::Mark(_) => unreachable!("marks stay with the writer"),
                    PipeItem::Fin => {
                        self.pipes.remove(&(node, conn));
                        self.nodes[node].node.handle_conn_closed(
                            now,
                            conn,
                            "connection reset by peer".into(),
                        )
                    }
                }
                self.drain(node);
            }
            Ev::Written {
                node,
                inc,
                conn,
                channel,
            } => {
                if !self.nodes[node].alive || self.nodes[node].incarnation != inc {
                    return;
                }
                self.nodes[node].node.handle_written(now, conn, channel);
                self.drain(node);
            }
            ev @ (Ev::Vxlan { .. } | Ev::VxlanTick { .. }) => self.handle_vxlan(ev),
            Ev::Udp {
                node,
                from,
                mut bytes,
            } => {
                self.mix(node as u64 ^ 0x3000 ^ bytes.len() as u64);
                if !self.nodes[node].alive {
                    return;
                }
                let mut out = SimOutput::default();
                self.nodes[node]
                    .forwarder
                    .handle_datagram(now, from, &mut bytes, &mut out);
                let control = std::mem::take(&mut out.control);
                self.apply_output(node, out);
                if !control.is_empty() {
                    for (from, d) in control {
                        self.nodes[node].node.handle_udp(now, from, &d);
                    }
                    self.drain(node);
                }
            }
        }
    }

    fn handle_vxlan(&mut self, ev: Ev) {
        let now = self.now;
        match ev {
            Ev::Vxlan { node, item } => {
                self.mix(node as u64 ^ 0x4000);
                if !self.nodes[node].alive {
                    return;
                }
                match item {
                    VxItem::Heartbeat { from, len } => {
                        self.nodes[node].node.fastdp_heartbeat(now, from, len);
                        self.drain(node);
                    }
                    // The kernel bridge delivers it to the containers; never to the sleeve.
                    VxItem::Frame(f) => self.nodes[node].injected.push(f),
                }
            }
            Ev::VxlanTick { node, inc } => {
                self.mix(node as u64 ^ 0x5000);
                let n = &self.nodes[node];
                if !n.alive || n.incarnation != inc {
                    return;
                }
                let from = n.name;
                let big = n.node.fastdp().big_len();
                let targets: Vec<Ipv4Addr> = n.plan.heartbeat.values().copied().collect();
                for ip in targets {
                    for len in [weft_proto::fastdp::HEARTBEAT_MIN_LEN, big] {
                        self.vxlan_send(node, ip, VxItem::Heartbeat { from, len });
                    }
                }
                self.schedule(now + HEARTBEAT_INTERVAL, Ev::VxlanTick { node, inc });
            }
            _ => unreachable!("only VXLAN events"),
        }
    }

    fn apply_output(&mut self, node: usize, out: SimOutput) {
        self.nodes[node].injected.extend(out.injected);
        for (to, bytes) in out.sent {
            self.udp_send(node, to, bytes);
        }
    }

    /// A local container on host `i` sends `frame`.
    pub fn send_frame(&mut self, i: usize, frame: &[u8]) {
        let now = self.now;
        if self.nodes[i].fastdp && frame.len() >= 14 {
            let src = Mac(frame[6..12].try_into().expect("length checked"));
            let dst = Mac(frame[0..6].try_into().expect("length checked"));
            if self.nodes[i].local_macs.insert(src) {
                let macs = self.nodes[i].local_macs.iter().copied().collect();
                self.nodes[i].node.fastdp_local_macs(now, macs);
                self.drain(i);
            }
            // The bridge: a MAC installed behind VXLAN goes there only; anything else
            // floods to every fast peer and to the sleeve's port.
            let plan = self.nodes[i].plan.clone();
            let owner = (!dst.is_multicast())
                .then(|| plan.macs.iter().find(|(_, ms)| ms.contains(&dst)))
                .flatten()
                .and_then(|(p, _)| plan.fast.get(p));
            if let Some(&ip) = owner {
                self.vxlan_send(i, ip, VxItem::Frame(frame.to_vec()));
                return;
            }
            for ip in plan.fast.values().copied().collect::<Vec<_>>() {
                self.vxlan_send(i, ip, VxItem::Frame(frame.to_vec()));
            }
        }
        let mut out = SimOutput::default();
        self.nodes[i]
            .forwarder
            .handle_local_frame(now, frame, &mut out);
        self.apply_output(i, out);
    }

    /// Runs for `d` of virtual time.
    pub fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        while self.next_time().is_some_and(|t| t <= end) {
            self.step();
        }
        self.now = self.now.max(end);
    }

    /// What the next step will handle (for debugging a stuck run).
    pub fn debug_next(&self) -> String {
        let ev = self
            .queue
            .iter()
            .next()
            .map(|(k, e)| (k.0 - self.start, format!("{e:?}")));
        let tm = self
            .timers
            .iter()
            .next()
            .map(|(t, i)| (*t - self.start, *i));
        format!(
            "now={:?} ev={:?} timer={:?}",
            self.elapsed(),
            ev.map(|(t, e)| (t, e.chars().take(200).collect::<String>())),
            tm
        )
    }

    fn next_time(&self) -> Option<Instant> {
        let a = self.queue.keys().next().map(|k| k.0);
        let b = self.timers.iter().next().map(|k| k.0);
        a.into_iter().chain(b).min()
    }

    /// Runs until `pred` holds (checked every `check` of virtual time) or `limit` passes.
    /// Fails instead of hanging, naming the seed.
    pub fn run_until(
        &mut self,
        limit: Duration,
        check: Duration,
        mut pred: impl FnMut(&Sim) -> Result<(), String>,
    ) -> Result<Duration, String> {
        let start = self.now;
        loop {
            match pred(self) {
                Ok(()) => return Ok(self.now - start),
                Err(e) if self.now - start >= limit => {
                    return Err(format!(
                        "not reached after {:?} of virtual time (seed {}): {e}",
                        limit, self.seed
                    ));
                }
                Err(_) => self.run_for(check),
            }
        }
    }

    /// Every live host in `group` knows exactly the live hosts of `group`, with identical
    /// entries, and has a data-plane route to each of them.
    pub fn converged(&self, group: &[usize]) -> Result<(), String> {
        let live: Vec<usize> = group
            .iter()
            .copied()
            .filter(|&i| self.nodes[i].alive)
            .collect();
        let Some(&first) = live.first() else {
            return Ok(());
        };
        let want: BTreeSet<PeerName> = live.iter().map(|&i| self.nodes[i].name).collect();
        let view = |i: usize| -> BTreeMap<PeerName, (u64, u64)> {
            self.nodes[i]
                .router()
                .topology()
                .peers()
                .map(|p| (p.name, (p.uid, p.version)))
                .collect()
        };
        let reference = view(first);
        for &i in &live {
            let v = view(i);
            let names: BTreeSet<PeerName> = v.keys().copied().collect();
            if names != want {
                return Err(format!(
                    "h{i} knows {} peers, want {}",
                    names.len(),
                    want.len()
                ));
            }
            if v != reference {
                // Name an entry that is behind its owner's, to tell what did not spread.
                for &j in &live {
                    let n = &self.nodes[j];
                    let own = n.router().topology().local().version;
                    if v[&n.name].1 != own {
                        return Err(format!(
                            "h{i} holds h{j}'s entry at version {}, h{j} is at {own}",
                            v[&n.name].1
                        ));
                    }
                }
                return Err(format!("h{i}'s view differs from h{first}'s"));
            }
            // Each peer's entry must be its own current one.
            for &j in &live {
                let n = &self.nodes[j];
                if v[&n.name].0 != n.router().uid() {
                    return Err(format!("h{i} holds a stale UID for h{j}"));
                }
            }
            let t = &self.nodes[i].table;
            for &j in &live {
                if j != i && !t.unicast.contains_key(&self.nodes[j].name) {
                    return Err(format!("h{i} has no data route to h{j}"));
                }
            }
        }
        Ok(())
    }

    // ---- IPAM ----------------------------------------------------------------------------

    fn op(&mut self) -> OpId {
        self.next_op += 1;
        self.next_op
    }

    /// Asks host `i` for an address for `ident`; the answer lands in `nodes[i].results`.
    pub fn allocate(&mut self, i: usize, ident: &str, subnet: Option<Ipv4Net>) -> OpId {
        let op = self.op();
        let now = self.now;
        self.nodes[i].requests.insert(op, ident.to_string());
        self.nodes[i].node.ipam_allocate(now, op, ident, subnet);
        self.drain(i);
        op
    }

    pub fn claim(&mut self, i: usize, ident: &str, net: Ipv4Net) -> OpId {
        let op = self.op();
        let now = self.now;
        self.nodes[i].requests.insert(op, ident.to_string());
        self.nodes[i].node.ipam_claim(now, op, ident, net);
        self.drain(i);
        op
    }

    pub fn release(&mut self, i: usize, ident: &str) -> Vec<Ipv4Net> {
        let now = self.now;
        let r = self.nodes[i].node.ipam_release(now, ident, None);
        self.nodes[i].containers.remove(ident);
        self.drain(i);
        r
    }

    pub fn rmpeer(&mut self, i: usize, who: &str) -> Result<u64, weft_core::ipam::RmPeerError> {
        let now = self.now;
        let r = self.nodes[i].node.ipam_rmpeer(now, who);
        self.drain(i);
        r
    }

    /// Host `i` leaves for good (`weft reset`): hands its ranges over, then is gone.
    pub fn reset(&mut self, i: usize) -> Option<PeerName> {
        let now = self.now;
        let heir = self.nodes[i].node.ipam_shutdown(now);
        self.drain(i);
        // Let the hand-over reach the neighbours before the host vanishes.
        self.run_for(Duration::from_millis(100));
        self.crash(i);
        self.nodes[i].dead = true;
        heir
    }

    /// Every address held by a container, with where it is held: live hosts' allocations and
    /// the persisted ones of crashed hosts that will come back.
    pub fn held_addresses(&self) -> Vec<(std::net::Ipv4Addr, usize, String)> {
        let mut out = Vec::new();
        for (i, n) in self.nodes.iter().enumerate() {
            if n.dead {
                continue;
            }
            if n.alive {
                if let Some(ipam) = n.node.ipam() {
                    for (ident, nets) in ipam.space().owned() {
                        for net in nets {
                            out.push((net.addr(), i, ident.clone()));
                        }
                    }
                }
            } else if let Some(p) = &n.persisted {
                for (ident, addrs) in &p.owned {
                    for (a, _) in addrs {
                        out.push((std::net::Ipv4Addr::from(*a), i, ident.clone()));
                    }
                }
            }
        }
        out
    }

    /// No address is held by two containers: neither in the allocators' books nor in what
    /// the containers really have (the two differ once a host lost its saved state).
    pub fn addresses_unique(&self) -> Result<(), String> {
        let mut seen: BTreeMap<std::net::Ipv4Addr, (usize, String)> = BTreeMap::new();
        for (a, i, ident) in self.held_addresses() {
            if let Some((j, other)) = seen.get(&a) {
                return Err(format!(
                    "{a} allocated twice: h{j}/{other} and h{i}/{ident} (seed {})",
                    self.seed
                ));
            }
            seen.insert(a, (i, ident));
        }
        let mut seen: BTreeMap<std::net::Ipv4Addr, (usize, &str)> = BTreeMap::new();
        for (i, n) in self.nodes.iter().enumerate().filter(|(_, n)| !n.dead) {
            for (ident, nets) in &n.containers {
                for net in nets {
                    if let Some((j, other)) = seen.insert(net.addr(), (i, ident)) {
                        return Err(format!(
                            "{} held by two containers: h{j}/{other} and h{i}/{ident} (seed {})",
                            net.addr(),
                            self.seed
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// All live hosts in `group` have the same ring, and it is owned by live hosts only.
    pub fn rings_converged(&self, group: &[usize]) -> Result<(), String> {
        let live: Vec<usize> = group
            .iter()
            .copied()
            .filter(|&i| self.nodes[i].alive)
            .collect();
        let ring = |i: usize| self.nodes[i].node.ipam().and_then(|p| p.ring()).cloned();
        let Some(&first) = live.first() else {
            return Ok(());
        };
        let r0 = ring(first).ok_or_else(|| format!("h{first} has no ring"))?;
        for &i in &live {
            if ring(i).as_ref() != Some(&r0) {
                return Err(format!("h{i}'s ring differs from h{first}'s"));
            }
        }
        let live_names: std::collections::BTreeSet<PeerName> =
            live.iter().map(|&i| self.nodes[i].name).collect();
        for (p, size) in r0.sizes() {
            if !live_names.contains(&p) {
                return Err(format!("{size} addresses still owned by gone peer {p}"));
            }
        }
        Ok(())
    }

    /// Host `i` registers `hostname` → `addr` for `container`.
    pub fn dns_add(&mut self, i: usize, hostname: &str, container: &str, addr: std::net::Ipv4Addr) {
        let now = self.now;
        self.nodes[i]
            .node
            .dns_add(now, hostname, container, addr)
            .expect("valid name");
        self.drain(i);
    }

    pub fn dns_remove(&mut self, i: usize, container: &str) -> usize {
        let now = self.now;
        let n = self.nodes[i].node.dns_remove(now, container, None, None);
        self.drain(i);
        n
    }

    /// The live DNS entries host `i` knows, as (hostname, origin, container, address).
    pub fn dns_view(
        &self,
        i: usize,
    ) -> std::collections::BTreeSet<(String, PeerName, String, u32)> {
        self.nodes[i]
            .node
            .dns()
            .map(|r| {
                r.live()
                    .map(|e| {
                        (
                            e.hostname.to_ascii_lowercase(),
                            e.origin,
                            e.container.clone(),
                            e.addr,
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// All live hosts in `group` know exactly the live entries their origins hold.
    pub fn dns_converged(&self, group: &[usize]) -> Result<(), String> {
        let live: Vec<usize> = group
            .iter()
            .copied()
            .filter(|&i| self.nodes[i].alive)
            .collect();
        let mut want = std::collections::BTreeSet::new();
        for &i in &live {
            let me = self.nodes[i].name;
            want.extend(self.dns_view(i).into_iter().filter(|e| e.1 == me));
        }
        for &i in &live {
            let v = self.dns_view(i);
            if v != want {
                return Err(format!(
                    "h{i} knows {} live names, want {}",
                    v.len(),
                    want.len()
                ));
            }
        }
        Ok(())
    }

    /// Derives (once per password) the keys of `passwords`. The simulator uses a cheap KDF
    /// cost: the cost is not a protocol property, and debug builds would crawl.
    fn psks(&mut self, passwords: &[String]) -> Vec<Secret> {
        passwords
            .iter()
            .map(|p| {
                self.psk_cache
                    .entry(p.clone())
                    .or_insert_with(|| crypto::derive_psk_with(p.as_bytes(), 256, 1))
                    .clone()
            })
            .collect()
    }

    /// Host `i` now accepts `passwords` and dials with the first (runtime rotation).
    pub fn set_passwords(&mut self, i: usize, passwords: &[&str]) {
        let pw: Vec<String> = passwords.iter().map(|s| s.to_string()).collect();
        let psks = self.psks(&pw);
        self.nodes[i].passwords = pw;
        let now = self.now;
        self.nodes[i].node.set_psks(now, psks);
        self.drain(i);
    }

    /// Counts every datagram and TCP segment that contains `needle` from now on, in
    /// [`Sim::wire_hits`].
    pub fn watch_wire(&mut self, needle: &[u8]) {
        self.wire_needle = Some(needle.to_vec());
        self.wire_hits = 0;
    }

    fn sniff(&mut self, bytes: &[u8]) {
        if let Some(n) = &self.wire_needle
            && bytes.windows(n.len()).any(|w| w == n.as_slice())
        {
            self.wire_hits += 1;
        }
    }

    pub fn name_of(&self, i: usize) -> PeerName {
        self.nodes[i].name
    }

    pub fn all(&self) -> Vec<usize> {
        (0..self.nodes.len()).collect()
    }
}

#[derive(Default)]
struct SimOutput {
    sent: Vec<(SocketAddr, Vec<u8>)>,
    injected: Vec<Vec<u8>>,
    control: Vec<(SocketAddr, Vec<u8>)>,
}

impl Output for SimOutput {
    fn send(&mut self, to: SocketAddr, parts: &[&[u8]]) {
        self.sent.push((to, parts.concat()));
    }
    fn inject(&mut self, frame: &[u8]) {
        self.injected.push(frame.to_vec());
    }
    fn to_control(&mut self, from: SocketAddr, datagram: &[u8]) {
        self.control.push((from, datagram.to_vec()));
    }
}

/// What a control frame carries, for [`Sim::by_kind`]: the message, and the channel of gossip.
fn kind_of(frame: &[u8]) -> String {
    use weft_proto::control::ControlMsg;
    let Some(body) = frame.get(4..) else {
        return "short".into();
    };
    match ControlMsg::decode(body) {
        // By size too: a relayed change is a few entries, a reply to a neighbour's versions
        // or request can be most of the topology.
        Ok(ControlMsg::Gossip { channel, .. }) => format!(
            "gossip/{} {}",
            channel.0,
            match frame.len() {
                0..1024 => "<1K",
                1024..65536 => "<64K",
                _ => ">=64K",
            }
        ),
        Ok(ControlMsg::GossipBroadcast { channel, .. }) => format!("broadcast/{}", channel.0),
        Ok(ControlMsg::GossipUnicast { channel, .. }) => format!("unicast/{}", channel.0),
        Ok(ControlMsg::TopologyVersions { .. }) => "versions".into(),
        Ok(ControlMsg::TopologyDigest { .. }) => "digest".into(),
        Ok(ControlMsg::StateDigest { channel, .. }) => format!("digest/{}", channel.0),
        Ok(ControlMsg::GossipRequest { channel }) => format!("request/{}", channel.0),
        Ok(ControlMsg::Hello(_)) => "hello".into(),
        Ok(ControlMsg::Heartbeat) => "heartbeat".into(),
        Ok(_) => "other".into(),
        Err(_) => "header or encrypted".into(),
    }
}

/// The seed for a test: `WEFT_SIM_SEED` if set (to replay a failure), else `default`.
/// Printed so that a failing run names it.
pub fn test_seed(default: u64) -> u64 {
    let seed = std::env::var("WEFT_SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default);
    eprintln!("weft-sim seed: {seed} (replay with WEFT_SIM_SEED={seed})");
    seed
}
