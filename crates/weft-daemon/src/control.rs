//! The control task: drives the sans-IO mesh [`Router`] from sockets and timers.
//!
//! One task owns the router. Everything else talks to it through [`ControlInput`]: the accept
//! loop hands over new TCP streams, per-connection reader tasks forward bytes, the data plane
//! forwards UDP heartbeats, the API asks for status and changes targets. After each input the
//! task carries out the router's actions (dial, write, close, send UDP), passes routes to the
//! data plane, persists targets, and sleeps until the router's next timer.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::{debug, error, info, warn};
use weft_core::ipam::{IpamError, IpamStatus, OpId};
use weft_core::mesh::{Action, ConnId, RouterStatus};
use weft_core::node::{Node, NodeEvent};
use weft_proto::PeerName;
use weft_proto::control::Channel;

use crate::dataplane_msg::DataPlaneMsg;
use crate::state::StateDir;

/// How long a dial may take before it counts as failed.
const DIAL_TIMEOUT: Duration = Duration::from_secs(10);
/// Messages queued for one connection before we decide the peer is not reading.
const SEND_QUEUE: usize = 4096;
/// Bytes queued for one connection at most: a peer that does not read (or reads slowly on
/// purpose) costs this much memory, not whatever we would have sent it.
const SEND_QUEUE_BYTES: usize = 8 << 20;

pub enum ControlInput {
    Accepted {
        stream: TcpStream,
        remote: SocketAddr,
    },
    Dialed {
        conn: ConnId,
        result: Result<TcpStream, String>,
    },
    Data {
        conn: ConnId,
        bytes: Vec<u8>,
    },
    Closed {
        conn: ConnId,
        reason: String,
    },
    /// The writer reached an `Action::Mark`.
    Written {
        conn: ConnId,
        channel: Channel,
    },
    Udp {
        from: SocketAddr,
        bytes: Vec<u8>,
    },
    Status(oneshot::Sender<(RouterStatus, Option<IpamStatus>)>),
    Ipam(IpamCmd),
    Dns(DnsCmd),
    /// One step of a password roll; answers how many passwords are accepted now.
    Password {
        change: weft_core::crypto::PasswordChange,
        psk: weft_core::crypto::Secret,
        reply: oneshot::Sender<Result<usize, String>>,
    },
    /// Targets already resolved: `(as given, address, port given)`.
    Connect {
        targets: Vec<(String, SocketAddr, bool)>,
        replace: bool,
        reply: oneshot::Sender<()>,
    },
    Forget {
        targets: Vec<String>,
        reply: oneshot::Sender<()>,
    },
    /// A VXLAN heartbeat frame of `len` bytes from `sender`.
    FastDpHeartbeat {
        sender: PeerName,
        len: usize,
    },
    /// Peers our containers exchange traffic with (relayed by the sleeve, or carried by the
    /// kernel's direct path): each gets, or keeps, a direct data path.
    DataWanted(Vec<PeerName>),
    /// The container MACs on our bridge.
    LocalMacs(Vec<weft_proto::Mac>),
    /// Our containers' addresses and MACs (from the attachments), for peers' ARP answers.
    LocalNeighbours(Vec<(std::net::Ipv4Addr, weft_proto::Mac)>),
}

/// IP address management requests (answered once any state change is on disk).
pub enum IpamCmd {
    Allocate {
        ident: String,
        subnet: Option<Ipv4Net>,
        reply: oneshot::Sender<Result<Ipv4Net, IpamError>>,
    },
    Claim {
        ident: String,
        net: Ipv4Net,
        reply: oneshot::Sender<Result<Ipv4Net, IpamError>>,
    },
    Prime {
        reply: oneshot::Sender<Result<Ipv4Net, IpamError>>,
    },
    /// An empty ident with an address releases that address whoever holds it.
    Release {
        ident: String,
        addr: Option<Ipv4Addr>,
        reply: oneshot::Sender<Vec<Ipv4Net>>,
    },
    Lookup {
        ident: String,
        subnet: Option<Ipv4Net>,
        reply: oneshot::Sender<Vec<Ipv4Net>>,
    },
    RmPeer {
        who: String,
        reply: oneshot::Sender<Result<u64, weft_core::ipam::RmPeerError>>,
    },
    /// Every ident holding addresses here.
    Owned { reply: oneshot::Sender<Vec<String>> },
    /// This peer leaves for good: hand our ranges to a live peer.
    Shutdown {
        reply: oneshot::Sender<Option<PeerName>>,
    },
}

/// Why a router without a password takes none at run time.
pub const ENCRYPTION_OFF: &str = "encryption is off: a router launched without --password cannot take one at run time; relaunch it with --password";

/// Changes to our DNS names.
pub enum DnsCmd {
    Add {
        hostname: String,
        container: String,
        addr: Ipv4Addr,
        reply: oneshot::Sender<Result<bool, String>>,
    },
    Remove {
        container: String,
        addr: Option<Ipv4Addr>,
        hostname: Option<String>,
        reply: oneshot::Sender<usize>,
    },
}

/// An answer to give once the state it depends on is persisted.
enum Deferred {
    Nets(oneshot::Sender<Vec<Ipv4Net>>, Vec<Ipv4Net>),
    Count(
        oneshot::Sender<Result<u64, weft_core::ipam::RmPeerError>>,
        Result<u64, weft_core::ipam::RmPeerError>,
    ),
    Heir(oneshot::Sender<Option<PeerName>>, Option<PeerName>),
}

/// What a connection's writer task takes, in order.
enum Outgoing {
    Bytes(Vec<u8>),
    /// Report [`ControlInput::Written`] once everything before is written.
    Mark(Channel),
}

struct ConnIo {
    tx: mpsc::Sender<Outgoing>,
    reader: JoinHandle<()>,
    /// Bytes handed to the writer and not yet written.
    queued: Arc<std::sync::atomic::AtomicUsize>,
}

impl ConnIo {
    /// Queues `bytes`; false if that would pass the connection's bounds.
    fn send(&self, bytes: Vec<u8>) -> bool {
        use std::sync::atomic::Ordering;
        let n = bytes.len();
        if self.queued.load(Ordering::Relaxed) + n > SEND_QUEUE_BYTES {
            return false;
        }
        self.queued.fetch_add(n, Ordering::Relaxed);
        if self.tx.try_send(Outgoing::Bytes(bytes)).is_err() {
            self.queued.fetch_sub(n, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Queues a mark; false if the queue is full.
    fn mark(&self, channel: Channel) -> bool {
        self.tx.try_send(Outgoing::Mark(channel)).is_ok()
    }
}

pub struct Control {
    node: Node,
    next_op: OpId,
    pending: HashMap<OpId, oneshot::Sender<Result<Ipv4Net, IpamError>>>,
    deferred: Vec<Deferred>,
    rx: mpsc::Receiver<ControlInput>,
    tx: mpsc::Sender<ControlInput>,
    conns: HashMap<ConnId, ConnIo>,
    dataplane: mpsc::Sender<DataPlaneMsg>,
    state: StateDir,
    bind_ip: Option<IpAddr>,
    dns: Option<Arc<crate::dns::DnsShared>>,
    dns_published: u64,
    fastdp_plan: Option<watch::Sender<Arc<weft_core::fastdp::FastDpPlan>>>,
    /// What `known-peers.json` holds: our data-plane neighbours' addresses, as last saved.
    known_peers: Vec<String>,
    /// Allocation state not yet on disk (its last write failed).
    unsaved: Option<weft_proto::ipam::Persisted>,
    /// Why it could not be written: new addresses are refused until it can.
    persist_error: Option<String>,
}

impl Control {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        node: Node,
        rx: mpsc::Receiver<ControlInput>,
        tx: mpsc::Sender<ControlInput>,
        dataplane: mpsc::Sender<DataPlaneMsg>,
        state: StateDir,
        bind_ip: Option<IpAddr>,
        dns: Option<Arc<crate::dns::DnsShared>>,
    ) -> Self {
        Control {
            node,
            next_op: 1,
            pending: HashMap::new(),
            deferred: Vec::new(),
            rx,
            tx,
            conns: HashMap::new(),
            dataplane,
            state,
            bind_ip,
            dns,
            dns_published: u64::MAX,
            fastdp_plan: None,
            known_peers: Vec::new(),
            unsaved: None,
            persist_error: None,
        }
    }

    /// Keeps the addresses of the peers we exchange data with for `--resume` (a neighbour's
    /// sleeve address is where it listens). An empty set is not saved: a router that lost its
    /// peers just before stopping should still find them again.
    fn save_known_peers(&mut self, t: &weft_core::mesh::DataPlaneTable) {
        let mut peers: Vec<String> = t.neighbours.values().map(|a| a.to_string()).collect();
        peers.sort();
        peers.dedup();
        if peers.is_empty() || peers == self.known_peers {
            return;
        }
        if let Err(e) = self.state.save_json(crate::KNOWN_PEERS_FILE, &peers) {
            warn!("could not persist the known peers: {e}");
        }
        self.known_peers = peers;
    }

    /// Publish the fast path's plans to its task.
    pub fn with_fastdp(mut self, plan: watch::Sender<Arc<weft_core::fastdp::FastDpPlan>>) -> Self {
        self.fastdp_plan = Some(plan);
        self
    }

    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        loop {
            self.carry_out().await;
            let deadline = self.node.poll_timeout();
            let sleep = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(tokio::time::Instant::from_std(d)).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                m = self.rx.recv() => match m {
                    Some(m) => {
                        self.handle(m).await;
                        // Take whatever else is already waiting before carrying out, so that
                        // concurrent requests share one write of the IPAM state.
                        for _ in 0..64 {
                            match self.rx.try_recv() {
                                Ok(m) => self.handle(m).await,
                                Err(_) => break,
                            }
                        }
                    }
                    None => break,
                },
                _ = sleep => self.node.handle_timeout(Instant::now()),
                _ = shutdown.changed() => break,
            }
        }
        for (_, io) in self.conns.drain() {
            io.reader.abort();
        }
    }

    async fn handle(&mut self, m: ControlInput) {
        let now = Instant::now();
        match m {
            ControlInput::Accepted { stream, remote } => {
                if let Some(conn) = self.node.handle_accept(now, remote) {
                    self.start_io(conn, stream);
                }
            }
            ControlInput::Dialed { conn, result } => match result {
                Ok(stream) => {
                    self.start_io(conn, stream);
                    self.node.handle_dialed(now, conn, Ok(()));
                }
                Err(e) => self.node.handle_dialed(now, conn, Err(e)),
            },
            ControlInput::Data { conn, bytes } => self.node.handle_conn_data(now, conn, &bytes),
            ControlInput::Closed { conn, reason } => {
                if let Some(io) = self.conns.remove(&conn) {
                    io.reader.abort();
                }
                self.node.handle_conn_closed(now, conn, reason);
            }
            ControlInput::Written { conn, channel } => {
                self.node.handle_written(now, conn, channel);
            }
            ControlInput::Udp { from, bytes } => self.node.handle_udp(now, from, &bytes),
            ControlInput::Status(reply) => {
                let ipam = self.node.ipam_status();
                let _ = reply.send((self.node.status(now), ipam));
            }
            ControlInput::Ipam(cmd) => self.ipam(now, cmd).await,
            ControlInput::Dns(DnsCmd::Add {
                hostname,
                container,
                addr,
                reply,
            }) => {
                let r = self
                    .node
                    .dns_add(now, &hostname, &container, addr)
                    .map_err(|e| e.to_string());
                let _ = reply.send(r);
            }
            ControlInput::Dns(DnsCmd::Remove {
                container,
                addr,
                hostname,
                reply,
            }) => {
                let n = self
                    .node
                    .dns_remove(now, &container, addr, hostname.as_deref());
                let _ = reply.send(n);
            }
            ControlInput::Connect {
                targets,
                replace,
                reply,
            } => {
                self.node.connect(now, targets, replace);
                let _ = reply.send(());
            }
            ControlInput::Password { change, psk, reply } => {
                let r = if self.node.psks().is_empty() {
                    Err(ENCRYPTION_OFF.to_string())
                } else {
                    weft_core::crypto::change_psks(self.node.psks(), change, psk)
                        .map(|next| {
                            let n = next.len();
                            self.node.set_psks(now, next);
                            info!(?change, accepted = n, "passwords changed");
                            n
                        })
                        .map_err(|e| e.to_string())
                };
                let _ = reply.send(r);
            }
            ControlInput::Forget { targets, reply } => {
                self.node.forget(now, &targets);
                let _ = reply.send(());
            }
            ControlInput::FastDpHeartbeat { sender, len } => {
                self.node.fastdp_heartbeat(now, sender, len)
            }
            ControlInput::DataWanted(peers) => self.node.fastdp_want(now, &peers),
            ControlInput::LocalMacs(macs) => self.node.fastdp_local_macs(now, macs),
            ControlInput::LocalNeighbours(n) => self.node.fastdp_local_neighbours(now, n),
        }
    }

    /// Writes the allocation state not yet on disk; a failure is remembered (and new
    /// addresses refused with it) rather than fatal: the router keeps forwarding.
    /// Writes the IPAM state that is not on disk yet. The write (and its fsync) runs on a
    /// blocking thread: the control task waits for it, since nothing that depends on the
    /// state may leave before it is durable, but the runtime's workers, and with them the
    /// other tasks (DNS, the API, the data plane's helpers), do not.
    async fn persist(&mut self) {
        let Some(p) = self.unsaved.clone() else {
            return;
        };
        let state = self.state.clone();
        let r = tokio::task::spawn_blocking(move || {
            state
                .save_json_compact(crate::IPAM_FILE, &p)
                .map_err(|e| e.to_string())
        })
        .await
        .unwrap_or_else(|e| Err(format!("the write panicked: {e}")));
        match r {
            Ok(()) => {
                self.unsaved = None;
                if self.persist_error.take().is_some() {
                    info!("the IP allocation state is saved again: addresses are handed out again");
                }
            }
            Err(why) => {
                if self.persist_error.is_none() {
                    error!(
                        "cannot save the IP allocation state: {why}; refusing new addresses until it can be saved (traffic keeps flowing)"
                    );
                }
                self.persist_error = Some(why);
            }
        }
    }

    /// `Err` with the reason while the allocation state cannot be saved (tried again first).
    async fn durable(&mut self) -> Result<(), IpamError> {
        if self.persist_error.is_some() {
            self.persist().await;
        }
        match &self.persist_error {
            Some(why) => Err(IpamError::NotDurable(why.clone())),
            None => Ok(()),
        }
    }

    async fn ipam(&mut self, now: Instant, cmd: IpamCmd) {
        if let IpamCmd::Allocate { .. } | IpamCmd::Claim { .. } = &cmd
            && let Err(e) = self.durable().await
        {
            match cmd {
                IpamCmd::Allocate { reply, .. } | IpamCmd::Claim { reply, .. } => {
                    let _ = reply.send(Err(e));
                }
                _ => unreachable!("matched above"),
            }
            return;
        }
        let disabled = || {
            IpamError::Refused(
                "IP address allocation is disabled (launched with --ipalloc-range \"\")".into(),
            )
        };
        match cmd {
            IpamCmd::Allocate {
                ident,
                subnet,
                reply,
            } => {
                let op = self.op();
                if self.node.ipam_allocate(now, op, &ident, subnet) {
                    self.pending.insert(op, reply);
                } else {
                    let _ = reply.send(Err(disabled()));
                }
            }
            IpamCmd::Claim { ident, net, reply } => {
                let op = self.op();
                if self.node.ipam_claim(now, op, &ident, net) {
                    self.pending.insert(op, reply);
                } else {
                    let _ = reply.send(Err(disabled()));
                }
            }
            IpamCmd::Prime { reply } => {
                let op = self.op();
                if self.node.ipam_prime(now, op) {
                    self.pending.insert(op, reply);
                } else {
                    let _ = reply.send(Err(disabled()));
                }
            }
            IpamCmd::Release { ident, addr, reply } => {
                // No ident: whoever holds the address (Weave's `DELETE /ip/<ip>`; the Docker
                // plugin releases by address only).
                let ident = match (ident.is_empty(), addr) {
                    (true, Some(a)) => self
                        .node
                        .ipam()
                        .and_then(|i| i.space().owner_of(a).map(str::to_string))
                        .unwrap_or_default(),
                    _ => ident,
                };
                if ident.is_empty() {
                    self.deferred.push(Deferred::Nets(reply, Vec::new()));
                    return;
                }
                let freed = self.node.ipam_release(now, &ident, addr);
                self.deferred.push(Deferred::Nets(reply, freed));
            }
            IpamCmd::Lookup {
                ident,
                subnet,
                reply,
            } => {
                let _ = reply.send(self.node.ipam_lookup(&ident, subnet));
            }
            IpamCmd::Owned { reply } => {
                let idents = self
                    .node
                    .ipam()
                    .map(|i| i.space().owned().keys().cloned().collect())
                    .unwrap_or_default();
                let _ = reply.send(idents);
            }
            IpamCmd::RmPeer { who, reply } => {
                let r = self.node.ipam_rmpeer(now, &who);
                self.deferred.push(Deferred::Count(reply, r));
            }
            IpamCmd::Shutdown { reply } => {
                let heir = self.node.ipam_shutdown(now);
                self.deferred.push(Deferred::Heir(reply, heir));
            }
        }
    }

    fn op(&mut self) -> OpId {
        self.next_op += 1;
        self.next_op
    }

    /// Carries out what the node asked for. Events come first, and the newest IPAM state in
    /// them is written to disk (once per batch) before any answer is given or any gossip sent.
    async fn carry_out(&mut self) {
        loop {
            let events: Vec<NodeEvent> = std::iter::from_fn(|| self.node.poll_event()).collect();
            let progressed = !events.is_empty() || !self.deferred.is_empty();
            if let Some(p) = events.iter().rev().find_map(|e| match e {
                NodeEvent::IpamPersist(p) => Some(p),
                _ => None,
            }) {
                self.unsaved = Some(p.clone());
                self.persist().await;
            }
            for e in events {
                match e {
                    NodeEvent::DataPlane(t) => {
                        self.save_known_peers(&t);
                        let _ = self.dataplane.send(DataPlaneMsg::Table(t)).await;
                    }
                    NodeEvent::PeerRemoved(p) => {
                        let _ = self.dataplane.send(DataPlaneMsg::ForgetPeer(p)).await;
                    }
                    NodeEvent::DataKeys { peer, keys } => {
                        // Before any heartbeat that needs them: same channel, sent first.
                        let _ = self.dataplane.send(DataPlaneMsg::Keys(peer, keys)).await;
                    }
                    NodeEvent::TargetsChanged(t) => {
                        if let Err(e) = self.state.save_json(crate::TARGETS_FILE, &t) {
                            warn!("could not persist targets: {e}");
                        }
                    }
                    NodeEvent::IpamPersist(_) => {}
                    NodeEvent::FastDp(plan) => {
                        if let Some(tx) = &self.fastdp_plan {
                            tx.send_replace(plan);
                        }
                    }
                    NodeEvent::IpamDone { op, result } => {
                        if let Some(reply) = self.pending.remove(&op) {
                            // An address that is not on disk could be handed out twice after
                            // a crash: it is not given.
                            let result = match (&self.persist_error, result) {
                                (Some(why), Ok(_)) => Err(IpamError::NotDurable(why.clone())),
                                (_, r) => r,
                            };
                            let _ = reply.send(result);
                        }
                    }
                }
            }
            for d in self.deferred.drain(..) {
                match d {
                    Deferred::Nets(r, v) => {
                        let _ = r.send(v);
                    }
                    Deferred::Count(r, v) => {
                        let _ = r.send(v);
                    }
                    Deferred::Heir(r, v) => {
                        let _ = r.send(v);
                    }
                }
            }
            if let Some(shared) = &self.dns {
                let generation = self.node.dns_generation();
                if generation != self.dns_published {
                    self.dns_published = generation;
                    if let Some(r) = self.node.dns() {
                        shared.publish(r.clone());
                    }
                }
            }
            let mut acted = false;
            while let Some(a) = self.node.poll_action() {
                acted = true;
                self.act(a);
            }
            if !progressed && !acted {
                return;
            }
        }
    }

    fn act(&mut self, a: Action) {
        match a {
            Action::Dial { conn, addr } => {
                let tx = self.tx.clone();
                let bind = self.bind_ip;
                tokio::spawn(async move {
                    let result = dial(addr, bind).await;
                    let _ = tx.send(ControlInput::Dialed { conn, result }).await;
                });
            }
            Action::Send { conn, bytes } => self.queue(conn, |io| io.send(bytes)),
            Action::Mark { conn, channel } => self.queue(conn, |io| io.mark(channel)),
            Action::Close { conn } => {
                if let Some(io) = self.conns.remove(&conn) {
                    // Dropping the sender ends the writer task, which shuts the socket down.
                    io.reader.abort();
                }
            }
            Action::SendUdp { to, peer, bytes } => {
                // Through the data plane, which encrypts it for a peer with keys. A full queue
                // loses one heartbeat; the next one follows within a second.
                if self
                    .dataplane
                    .try_send(DataPlaneMsg::SendControl { to, peer, bytes })
                    .is_err()
                {
                    debug!(%to, "data plane busy; UDP heartbeat dropped");
                }
            }
        }
    }

    /// Queues on `conn` with `put`; a peer whose queue is full is disconnected.
    fn queue(&mut self, conn: ConnId, put: impl FnOnce(&ConnIo) -> bool) {
        if self.conns.get(&conn).is_none_or(put) {
            return;
        }
        if let Some(io) = self.conns.remove(&conn) {
            io.reader.abort();
        }
        self.node.handle_conn_closed(
            Instant::now(),
            conn,
            "peer is not reading its messages (send queue full: 8 MiB or 4096 messages)".into(),
        );
    }

    fn start_io(&mut self, conn: ConnId, stream: TcpStream) {
        let _ = stream.set_nodelay(true);
        let (mut rd, mut wr) = stream.into_split();
        let (tx, mut rx) = mpsc::channel::<Outgoing>(SEND_QUEUE);
        let queued = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let ctl = self.tx.clone();
        let written = queued.clone();
        tokio::spawn(async move {
            while let Some(o) = rx.recv().await {
                let b = match o {
                    Outgoing::Bytes(b) => b,
                    Outgoing::Mark(channel) => {
                        if ctl
                            .send(ControlInput::Written { conn, channel })
                            .await
                            .is_err()
                        {
                            return;
                        }
                        continue;
                    }
                };
                let r = wr.write_all(&b).await;
                written.fetch_sub(b.len(), std::sync::atomic::Ordering::Relaxed);
                if let Err(e) = r {
                    let _ = ctl
                        .send(ControlInput::Closed {
                            conn,
                            reason: format!("write: {e}"),
                        })
                        .await;
                    return;
                }
            }
            let _ = wr.shutdown().await;
        });
        let ctl = self.tx.clone();
        let reader = tokio::spawn(async move {
            let mut buf = vec![0u8; 64 * 1024];
            let reason = loop {
                match rd.read(&mut buf).await {
                    Ok(0) => break "connection closed by peer".to_string(),
                    Ok(n) => {
                        let msg = ControlInput::Data {
                            conn,
                            bytes: buf[..n].to_vec(),
                        };
                        if ctl.send(msg).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => break format!("read: {e}"),
                }
            };
            let _ = ctl.send(ControlInput::Closed { conn, reason }).await;
        });
        self.conns.insert(conn, ConnIo { tx, reader, queued });
    }
}

async fn dial(addr: SocketAddr, bind: Option<IpAddr>) -> Result<TcpStream, String> {
    let sock = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(|e| e.to_string())?;
    if let Some(ip) = bind {
        sock.bind(SocketAddr::new(ip, 0))
            .map_err(|e| format!("bind {ip}: {e}"))?;
    }
    match tokio::time::timeout(DIAL_TIMEOUT, sock.connect(addr)).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => Err(format!("connect: {e}")),
        Err(_) => Err("connect: connection timed out".into()),
    }
}

/// How fast connections are taken, per source address and in all: a stranger opening
/// connections as fast as it can spends its own budget (its excess is closed at once), not
/// the one real peers need.
struct AcceptBudget {
    sources: HashMap<IpAddr, (f64, Instant)>,
    global: (f64, Instant),
}

impl AcceptBudget {
    const SOURCE_BURST: f64 = 10.0;
    const SOURCE_RATE: f64 = 5.0;
    const GLOBAL_BURST: f64 = 200.0;
    const GLOBAL_RATE: f64 = 100.0;
    /// Sources remembered at most (those with a full budget are forgotten first).
    const MAX_SOURCES: usize = 4096;

    fn new(now: Instant) -> Self {
        AcceptBudget {
            sources: HashMap::new(),
            global: (Self::GLOBAL_BURST, now),
        }
    }

    fn refill((tokens, last): &mut (f64, Instant), now: Instant, rate: f64, burst: f64) {
        *tokens = (*tokens + now.saturating_duration_since(*last).as_secs_f64() * rate).min(burst);
        *last = now;
    }

    /// Whether a connection from `ip` is taken; if so, how long to wait first (the global
    /// budget is spent: everyone waits a little).
    fn admit(&mut self, ip: IpAddr, now: Instant) -> Option<Duration> {
        if self.sources.len() >= Self::MAX_SOURCES && !self.sources.contains_key(&ip) {
            self.sources.retain(|_, b| {
                let mut b2 = *b;
                Self::refill(&mut b2, now, Self::SOURCE_RATE, Self::SOURCE_BURST);
                b2.0 < Self::SOURCE_BURST
            });
            if self.sources.len() >= Self::MAX_SOURCES {
                return None;
            }
        }
        let b = self.sources.entry(ip).or_insert((Self::SOURCE_BURST, now));
        Self::refill(b, now, Self::SOURCE_RATE, Self::SOURCE_BURST);
        if b.0 < 1.0 {
            return None;
        }
        b.0 -= 1.0;
        let g = &mut self.global;
        Self::refill(g, now, Self::GLOBAL_RATE, Self::GLOBAL_BURST);
        g.0 -= 1.0;
        Some(if g.0 < 0.0 {
            Duration::from_secs_f64(-g.0 / Self::GLOBAL_RATE)
        } else {
            Duration::ZERO
        })
    }
}

pub async fn accept_loop(
    listener: TcpListener,
    tx: mpsc::Sender<ControlInput>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut budget = AcceptBudget::new(Instant::now());
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, remote)) => {
                    let Some(wait) = budget.admit(remote.ip(), Instant::now()) else {
                        debug!(%remote, "too many connections from one address; closed");
                        continue;
                    };
                    if !wait.is_zero() {
                        tokio::time::sleep(wait).await;
                    }
                    if tx.send(ControlInput::Accepted { stream, remote }).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    warn!("accepting a control connection failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            _ = shutdown.changed() => {
                info!("no longer accepting connections");
                return;
            }
        }
    }
}

#[cfg(test)]
mod accept_tests {
    use super::*;

    #[test]
    fn one_flooding_source_does_not_spend_everyones_budget() {
        let now = Instant::now();
        let mut b = AcceptBudget::new(now);
        let stranger: IpAddr = "198.18.9.9".parse().expect("an address");
        let peer: IpAddr = "198.18.0.2".parse().expect("an address");
        let taken = (0..100)
            .filter(|_| b.admit(stranger, now).is_some())
            .count();
        assert_eq!(taken, AcceptBudget::SOURCE_BURST as usize);
        assert_eq!(b.admit(peer, now), Some(Duration::ZERO));
        // The stranger's budget comes back at its own rate.
        let later = now + Duration::from_secs(1);
        let again = (0..100)
            .filter(|_| b.admit(stranger, later).is_some())
            .count();
        assert_eq!(again, AcceptBudget::SOURCE_RATE as usize);
    }

    #[test]
    fn a_flood_from_many_sources_is_slowed_not_refused() {
        let now = Instant::now();
        let mut b = AcceptBudget::new(now);
        let mut waited = Duration::ZERO;
        for i in 0..400u32 {
            let ip = IpAddr::V4(std::net::Ipv4Addr::from(0xc612_0000 + i));
            waited = waited.max(b.admit(ip, now).expect("taken"));
        }
        assert!(waited > Duration::ZERO);
    }
}

#[cfg(test)]
mod send_queue_tests {
    use super::*;

    #[tokio::test]
    async fn a_connection_queues_bytes_up_to_its_bound() {
        let (tx, mut rx) = mpsc::channel::<Outgoing>(SEND_QUEUE);
        let io = ConnIo {
            tx,
            reader: tokio::spawn(async {}),
            queued: Default::default(),
        };
        let big = 3 << 20;
        assert!(io.send(vec![0; big]));
        assert!(io.send(vec![0; big]));
        assert!(!io.send(vec![0; big]), "9 MiB would pass 8");
        assert!(io.send(vec![0; 1 << 20]), "small ones still fit");
        // The writer takes one: room again.
        let Some(Outgoing::Bytes(b)) = rx.recv().await else {
            panic!("bytes queued")
        };
        io.queued
            .fetch_sub(b.len(), std::sync::atomic::Ordering::Relaxed);
        assert!(io.send(vec![0; big]));
    }
}
