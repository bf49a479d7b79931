//! The fast path's shell: the VXLAN device and heartbeat port on the bridge, VXLAN heartbeats,
//! the kernel forwarding database, and the container MACs the bridge has learnt.
//!
//! Bridge ports: containers' veths are ordinary; the sleeve TAP and the VXLAN device are
//! *isolated*, so the bridge never passes a frame that came by one overlay into the other (each
//! router floods along its own tree; a bridge copying between them would deliver twice or
//! loop). The heartbeat TAP is neither flooded nor learning: it only gets frames addressed to
//! its static MAC, which peers' heartbeats are.
//!
//! Everything decided lives in `weft_core::fastdp`; this task installs its plan (adding new
//! entries before telling the sleeve to stop carrying a peer's frames, and the reverse when a
//! peer leaves the fast path) and reports what it sees. After a restart it adopts the devices
//! and leaves the entries it finds alone for a grace period, so containers' traffic keeps
//! flowing through the kernel while the mesh comes back.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};
use tun_rs::AsyncDevice;
use weft_core::fastdp::{FastDpPlan, FdbEntry, HEARTBEAT_INTERVAL};
use weft_linux::fdb::{FdbState, PortFlags};
use weft_linux::host::{At, HostOps, Op};
use weft_linux::netlink::{Link, LinkConfig, Netlink};
use weft_linux::{sysctl, tap};
use weft_proto::fastdp::{self, HEARTBEAT_MIN_LEN};
use weft_proto::{Mac, PeerName};

use crate::DaemonError;
use crate::control::ControlInput;
use crate::dataplane::DataPlaneMsg;

/// VXLAN network identifier: one overlay per bridge; peers must agree.
pub const VNI: u32 = 0x7765; // "we"
/// Weave's fast-path port.
pub const VXLAN_PORT: u16 = 6784;
/// IPv4 20 + UDP 8 + VXLAN 8 + inner Ethernet 14.
pub const VXLAN_OVERHEAD: u32 = 50;
/// After a restart, entries found in the kernel are kept this long before stale ones go.
const RESTART_GRACE: Duration = Duration::from_secs(20);
const MAC_POLL: Duration = Duration::from_secs(2);
/// How often the kernel is checked against the plan even when the plan did not change: a
/// failed or lost update heals within this.
const RECONCILE: Duration = Duration::from_secs(2);
/// How often the kernel is asked which fast peers its VXLAN device carried frames to (which
/// keeps direct paths to peers that are not neighbours while they are used).
const IN_USE_POLL: Duration = Duration::from_secs(30);

pub fn vxlan_name(bridge: &str) -> String {
    format!("{bridge}-vx")
}

pub fn heartbeat_name(bridge: &str) -> String {
    format!("{bridge}-hb")
}

pub struct Devices {
    pub vx: Link,
    pub hb_index: u32,
    pub hb: AsyncDevice,
    /// The VXLAN device was there already (a restart): keep its entries for a while.
    pub adopted: bool,
}

/// Creates (or adopts) the VXLAN device and the heartbeat TAP on `bridge` and sets every
/// port's flags; `tap_index` is the sleeve's TAP.
pub async fn setup(
    nl: &Netlink,
    bridge: &Link,
    tap_index: u32,
    local: PeerName,
    mtu: u32,
    bind: Option<std::net::Ipv4Addr>,
) -> Result<Devices, DaemonError> {
    let vx_name = vxlan_name(&bridge.name);
    let adopted = nl.link_by_name(&vx_name).await?.is_some();
    let vx = nl
        .ensure_vxlan(&vx_name, VNI, VXLAN_PORT, mtu, bind)
        .await?;
    sysctl::disable_ipv6(&vx_name)?;
    nl.configure(
        vx.index,
        LinkConfig {
            mtu: Some(mtu),
            master: Some(bridge.index),
            up: true,
            ..Default::default()
        },
    )
    .await?;
    let hb_name = heartbeat_name(&bridge.name);
    if let Some(old) = nl.link_by_name(&hb_name).await? {
        nl.delete_link(old.index).await?;
    }
    let hb = tap::open(&hb_name, u16::try_from(mtu).unwrap_or(u16::MAX), false)?;
    let hb_link = nl.require_link(&hb_name).await?;
    sysctl::disable_ipv6(&hb_name)?;
    nl.configure(
        hb_link.index,
        LinkConfig {
            mtu: Some(mtu),
            master: Some(bridge.index),
            up: true,
            ..Default::default()
        },
    )
    .await?;
    let isolated = PortFlags {
        isolated: true,
        learning: true,
        flood: true,
        neigh_suppress: false,
    };
    nl.set_port_flags(tap_index, isolated).await?;
    // Remote MACs are installed from the control plane, never learnt from VXLAN.
    nl.set_port_flags(
        vx.index,
        PortFlags {
            learning: false,
            // ARP for a container behind a fast peer is answered here from the peer's
            // announcement; unknown addresses still flood.
            neigh_suppress: true,
            ..isolated
        },
    )
    .await?;
    nl.set_port_flags(
        hb_link.index,
        PortFlags {
            isolated: false,
            learning: false,
            flood: false,
            neigh_suppress: false,
        },
    )
    .await?;
    nl.fdb_replace_static(hb_link.index, fastdp::heartbeat_mac(local).0)
        .await?;
    info!(
        vxlan = %vx_name,
        port = VXLAN_PORT,
        mtu,
        "{} VXLAN fast path device",
        if adopted { "reusing" } else { "created" }
    );
    Ok(Devices {
        vx,
        hb_index: hb_link.index,
        hb,
        adopted,
    })
}

/// Removes the fast path's devices (`--no-fastdp` after a run with it, `weft reset`) and the
/// bridge's ARP entries for fast peers' containers.
pub async fn remove(nl: &Netlink, bridge: &str) -> Result<(), DaemonError> {
    if let Some(br) = nl.link_by_name(bridge).await? {
        for (ip, _) in nl.static_arp(br.index).await.unwrap_or_default() {
            let _ = nl.arp_del(br.index, ip).await;
        }
    }
    for name in [vxlan_name(bridge), heartbeat_name(bridge)] {
        if let Some(l) = nl.link_by_name(&name).await? {
            match nl.delete_link(l.index).await {
                Ok(()) => info!("removed {name}: the fast path is off"),
                Err(e) if e.is_no_device() => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(())
}

pub struct FastDpTask {
    pub devices: Devices,
    pub local: PeerName,
    pub bridge_index: u32,
    pub tap_index: u32,
    pub mtu: u32,
    /// The kernel's forwarding and neighbour tables, made to match the plan.
    pub kernel: Reconciler,
    pub plan: watch::Receiver<Arc<FastDpPlan>>,
    pub control: mpsc::Sender<ControlInput>,
    pub dataplane: mpsc::Sender<DataPlaneMsg>,
    /// Where our containers' addresses and MACs come from (announced for peers' ARP answers).
    pub attacher: Arc<crate::attach::Attacher>,
}

/// Makes the kernel's VXLAN forwarding database and the bridge's neighbour entries match the
/// fast-path plan, through the host-operations seam (so it is tested against a model).
pub struct Reconciler {
    pub host: Arc<dyn HostOps>,
    pub bridge_index: u32,
    pub vx_index: u32,
    /// The sleeve's port on the bridge.
    pub tap_index: u32,
    /// Addresses behind fast peers whose entry went recently, and when: one that comes back
    /// (with another container's MAC, most likely) is announced to our containers.
    pub departed: std::sync::Mutex<BTreeMap<Ipv4Addr, Instant>>,
}

impl Reconciler {
    pub fn new(host: Arc<dyn HostOps>, bridge_index: u32, vx_index: u32, tap_index: u32) -> Self {
        Reconciler {
            host,
            bridge_index,
            vx_index,
            tap_index,
            departed: Default::default(),
        }
    }

    async fn apply(&self, op: Op) -> Result<(), weft_linux::Error> {
        Ok(self.host.apply(&At::Host, vec![op]).await?)
    }
}

/// At most this many addresses new to the fast path in one round are announced to our
/// containers.
const FRESH_ANNOUNCE_MAX: usize = 32;
/// How long an address behind a fast peer counts as recently departed.
const DEPARTED_MEMORY: Duration = Duration::from_secs(60);

impl FastDpTask {
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let grace_until = self.devices.adopted.then(|| Instant::now() + RESTART_GRACE);
        let mut hb_tick = tokio::time::interval(HEARTBEAT_INTERVAL);
        let mut mac_tick = tokio::time::interval(MAC_POLL);
        let mut fdb_tick = tokio::time::interval(RECONCILE);
        let mut use_tick = tokio::time::interval(IN_USE_POLL);
        let mut fast: BTreeSet<PeerName> = BTreeSet::new();
        // Heartbeats go only to peers whose entries are in: without them the bridge would
        // flood the heartbeat to every port.
        let mut hb_ready: BTreeSet<PeerName> = BTreeSet::new();
        let mut local_macs: Option<Vec<Mac>> = None;
        let mut local_neighbours: Option<Vec<(Ipv4Addr, Mac)>> = None;
        let mut seq = 0u64;
        let mut buf = vec![0u8; 65536];
        loop {
            tokio::select! {
                r = self.plan.changed() => {
                    if r.is_err() {
                        return;
                    }
                    let plan = self.plan.borrow_and_update().clone();
                    hb_ready = self.reconcile(&plan, &mut fast, grace_until).await;
                    let proxied = plan.neighbours.values().copied().collect();
                    let _ = self.dataplane.send(DataPlaneMsg::Proxied(proxied)).await;
                }
                _ = fdb_tick.tick() => {
                    let plan = self.plan.borrow().clone();
                    hb_ready = self.reconcile(&plan, &mut fast, grace_until).await;
                }
                _ = hb_tick.tick() => {
                    let big = self.mtu as usize + weft_proto::ether::ETHER_HEADER_LEN;
                    for peer in &hb_ready {
                        seq += 1;
                        for len in [HEARTBEAT_MIN_LEN, big] {
                            let f = fastdp::encode_heartbeat(self.local, *peer, seq, len);
                            if let Err(e) = self.devices.hb.try_send(&f) {
                                debug!(%peer, "sending a VXLAN heartbeat failed: {e}");
                            }
                        }
                    }
                }
                r = self.devices.hb.recv(&mut buf) => match r {
                    Ok(n) => match fastdp::decode_heartbeat(&buf[..n]) {
                        Ok(hb) if hb.sender != self.local => {
                            let msg = ControlInput::FastDpHeartbeat { sender: hb.sender, len: n };
                            let _ = self.control.try_send(msg);
                        }
                        Ok(_) => {}
                        Err(e) => debug!("not a heartbeat on the heartbeat port: {e}"),
                    },
                    Err(e) => {
                        warn!("reading the heartbeat port failed: {e}; the fast path stops");
                        return;
                    }
                },
                _ = use_tick.tick() => {
                    let plan = self.plan.borrow().clone();
                    let peers = self.kernel.peers_in_use(&plan, IN_USE_POLL * 2).await;
                    if !peers.is_empty() {
                        let _ = self.control.try_send(ControlInput::DataWanted(peers));
                    }
                }
                _ = mac_tick.tick() => {
                    self.publish_local(&mut local_macs, &mut local_neighbours).await;
                }
                // A container attached or detached: its address goes out now, not at the
                // next tick, so peers' containers holding a reused address's old MAC are
                // told before the new container's first packets.
                _ = self.attacher.changed() => {
                    self.publish_local(&mut local_macs, &mut local_neighbours).await;
                }
                _ = shutdown.changed() => return,
            }
        }
    }

    /// Tells the control task our containers' MACs and addresses when they changed.
    async fn publish_local(
        &self,
        local_macs: &mut Option<Vec<Mac>>,
        local_neighbours: &mut Option<Vec<(Ipv4Addr, Mac)>>,
    ) {
        match self.container_macs().await {
            Ok(macs) if local_macs.as_ref() != Some(&macs) => {
                *local_macs = Some(macs.clone());
                let _ = self.control.send(ControlInput::LocalMacs(macs)).await;
            }
            Ok(_) => {}
            Err(e) => warn!("reading the bridge's forwarding database failed: {e}"),
        }
        let n = self.container_neighbours().await;
        if local_neighbours.as_ref() != Some(&n) {
            *local_neighbours = Some(n.clone());
            let _ = self.control.send(ControlInput::LocalNeighbours(n)).await;
        }
    }

    /// The MACs of containers on our bridge (attached, or learnt on their ports), and the
    /// bridge's own.
    async fn container_macs(&self) -> Result<Vec<Mac>, weft_linux::Error> {
        let ours = [self.tap_index, self.devices.vx.index, self.devices.hb_index];
        let mut macs: Vec<Mac> = self
            .kernel
            .host
            .fdb(None)
            .await?
            .into_iter()
            .filter(|r| {
                r.master
                    && r.bridge == Some(self.bridge_index)
                    && r.state == FdbState::Learned
                    && !ours.contains(&r.ifindex)
            })
            .map(|r| Mac(r.mac))
            .collect();
        macs.push(Mac(self.local.to_bytes()));
        // Our containers' MACs are known from the moment they are attached, before their
        // first frame teaches the bridge: published with their addresses, so peers' bridges
        // answer ARP for them (the neighbour entry needs the forwarding entry) from the start.
        macs.extend(
            self.attacher
                .attachments()
                .await
                .iter()
                .filter_map(|a| a.mac.parse::<Mac>().ok()),
        );
        macs.sort();
        macs.dedup();
        Ok(macs)
    }

    /// Our containers' (and the host's exposed) addresses with their MACs.
    async fn container_neighbours(&self) -> Vec<(Ipv4Addr, Mac)> {
        let mut n: Vec<(Ipv4Addr, Mac)> = Vec::new();
        for a in self.attacher.attachments().await {
            if let Ok(mac) = a.mac.parse::<Mac>() {
                n.extend(a.cidrs.iter().map(|c| (c.addr(), mac)));
            }
        }
        if let Ok((_, nets)) = self.attacher.exposed().await {
            let bridge_mac = Mac(self.local.to_bytes());
            n.extend(nets.iter().map(|c| (c.addr(), bridge_mac)));
        }
        n.sort();
        n.dedup();
        n
    }

    /// Makes the kernel match `plan` (see [`Reconciler::reconcile`]), telling the data plane
    /// which peers the sleeve stops (and starts again) carrying.
    async fn reconcile(
        &self,
        plan: &FastDpPlan,
        fast: &mut BTreeSet<PeerName>,
        grace_until: Option<Instant>,
    ) -> BTreeSet<PeerName> {
        let now_fast = plan.fast_peers();
        if *fast != now_fast {
            let keep: BTreeSet<PeerName> = fast.intersection(&now_fast).copied().collect();
            let _ = self.dataplane.send(DataPlaneMsg::Fast(keep)).await;
        }
        let (ready, moved) = self.kernel.reconcile(plan, fast, grace_until).await;
        self.announce_to_containers(&moved).await;
        if *fast != now_fast {
            let _ = self
                .dataplane
                .send(DataPlaneMsg::Fast(now_fast.clone()))
                .await;
            *fast = now_fast;
        }
        ready
    }

    /// An address behind a fast peer now belongs to another MAC: our containers may still hold
    /// the old one, and the bridge does not pass gratuitous ARP across the VXLAN port (it has
    /// `neigh_suppress`), so the announcement is made here, into each container's port.
    async fn announce_to_containers(&self, moved: &[(Ipv4Addr, Mac)]) {
        if moved.is_empty() {
            return;
        }
        for a in self.attacher.attachments().await {
            let ops = moved
                .iter()
                .map(|(ip, mac)| Op::Announce {
                    link: a.host_if.clone(),
                    mac: mac.0,
                    ips: vec![*ip],
                })
                .collect();
            if let Err(e) = self.kernel.host.apply(&At::Host, ops).await {
                debug!(container = %a.id, "{e}");
            }
        }
        debug!(addresses = ?moved, "announced moved addresses to local containers");
    }
}

impl Reconciler {
    /// Fast peers the kernel's VXLAN device carried our containers' frames to within
    /// `within` (by their container MACs' entries; floods and heartbeats do not count).
    pub async fn peers_in_use(&self, plan: &FastDpPlan, within: Duration) -> Vec<PeerName> {
        let by_ip: BTreeMap<Ipv4Addr, PeerName> =
            plan.fast.iter().map(|(p, ip)| (*ip, *p)).collect();
        let heartbeat: BTreeSet<[u8; 6]> = plan
            .heartbeat
            .keys()
            .map(|p| fastdp::heartbeat_mac(*p).0)
            .collect();
        let records = match self.host.fdb(Some(self.vx_index)).await {
            Ok(r) => r,
            Err(e) => {
                debug!("reading the VXLAN forwarding database failed: {e}");
                return Vec::new();
            }
        };
        let mut peers: BTreeSet<PeerName> = BTreeSet::new();
        for r in records {
            let (Some(dst), Some(used)) = (r.dst, r.used) else {
                continue;
            };
            if r.master || r.mac == [0; 6] || heartbeat.contains(&r.mac) || used > within {
                continue;
            }
            if let Some(p) = by_ip.get(&dst) {
                peers.insert(*p);
            }
        }
        peers.into_iter().collect()
    }

    /// The bridge device's ARP entries for containers behind fast peers: what it answers for
    /// them (the VXLAN port has `neigh_suppress`). Only entries in state NOARP are ours.
    /// Returns the addresses to announce to our containers (moved, or new in small numbers).
    async fn reconcile_arp(&self, plan: &FastDpPlan, grace: bool) -> Vec<(Ipv4Addr, Mac)> {
        let br = self.bridge_index;
        let actual: BTreeMap<Ipv4Addr, [u8; 6]> = match self.host.static_arp(br).await {
            Ok(v) => v.into_iter().collect(),
            Err(e) => {
                warn!("reading the bridge's neighbour entries failed: {e}");
                return Vec::new();
            }
        };
        let now = Instant::now();
        let mut moved = Vec::new();
        let mut fresh = Vec::new();
        {
            let mut departed = self.departed.lock().expect("not poisoned");
            departed.retain(|_, at| now.duration_since(*at) < DEPARTED_MEMORY);
            for (ip, mac) in &plan.neighbours {
                match actual.get(ip) {
                    Some(m) if *m == mac.0 => continue,
                    Some(_) => moved.push((*ip, *mac)),
                    None if departed.remove(ip).is_some() => moved.push((*ip, *mac)),
                    None => fresh.push((*ip, *mac)),
                }
            }
        }
        // A new container's own gratuitous ARP reaches sleeve peers' containers but not ours
        // (see announce_to_containers), and it may have taken an address an earlier container
        // held before we ever had an entry for it: announce new addresses too, as its own
        // announcement would have been, unless a whole peer's worth arrives at once (a peer
        // joining), which would be a burst for nothing.
        if fresh.len() <= FRESH_ANNOUNCE_MAX {
            moved.extend(fresh);
        }
        let mut failed = BTreeSet::new();
        for (ip, mac) in &plan.neighbours {
            if actual.get(ip) != Some(&mac.0)
                && let Err(e) = self
                    .apply(Op::ArpReplaceStatic {
                        index: br,
                        ip: *ip,
                        mac: mac.0,
                    })
                    .await
            {
                warn!(%ip, "adding a neighbour entry failed: {e}");
                failed.insert(*ip);
            }
        }
        // An entry that did not go in is tried again next round: announcing it now would
        // repeat the announcement every round for as long as the kernel refuses it.
        moved.retain(|(ip, _)| !failed.contains(ip));
        if grace {
            return moved;
        }
        for ip in actual.keys().filter(|ip| !plan.neighbours.contains_key(ip)) {
            if let Err(e) = self.apply(Op::ArpDel { index: br, ip: *ip }).await
                && !e.is_no_device()
            {
                debug!(%ip, "removing a neighbour entry failed: {e}");
            }
            self.departed.lock().expect("not poisoned").insert(*ip, now);
        }
        moved
    }

    /// Makes the kernel match `plan`: new entries first, then the sleeve stops carrying what
    /// VXLAN now does; peers leaving the fast path go back to the sleeve before their entries
    /// go, so no frame is lost in between (a few may arrive twice).
    /// `fast`: the peers on the fast path until now. Returns the peers whose heartbeat
    /// entries are in place, and the addresses to announce to our containers.
    pub async fn reconcile(
        &self,
        plan: &FastDpPlan,
        fast: &BTreeSet<PeerName>,
        grace_until: Option<Instant>,
    ) -> (BTreeSet<PeerName>, Vec<(Ipv4Addr, Mac)>) {
        let now_fast = plan.fast_peers();
        let vx = self.vx_index;
        let actual: BTreeSet<FdbEntry> = match self.host.fdb(Some(vx)).await {
            Ok(records) => records
                .into_iter()
                .filter_map(|r| match (r.master, r.dst, r.state) {
                    (false, Some(dst), _) => Some(FdbEntry::Vxlan {
                        mac: Mac(r.mac),
                        dst,
                    }),
                    (true, _, FdbState::Static) => Some(FdbEntry::Bridge { mac: Mac(r.mac) }),
                    _ => None,
                })
                .collect(),
            Err(e) => {
                warn!("reading the VXLAN forwarding database failed: {e}");
                return (BTreeSet::new(), Vec::new());
            }
        };
        let desired = plan.fdb();
        let mut failed = BTreeSet::new();
        // The bridge may have learnt a new fast peer's containers on the sleeve's port while
        // the peer was on sleeve; such an entry would keep sending to the sleeve, which no
        // longer carries our frames to that peer. Installed entries replace most, the flush
        // catches the rest (sleeve peers' MACs are relearnt from their next frame).
        if now_fast.difference(fast).next().is_some()
            && let Err(e) = self
                .apply(Op::FlushLearned {
                    index: self.tap_index,
                })
                .await
        {
            warn!("flushing the sleeve port's learnt addresses failed: {e}");
        }
        for e in desired.difference(&actual) {
            let r = match *e {
                FdbEntry::Vxlan { mac, dst } => {
                    self.apply(Op::FdbAppendRemote {
                        index: vx,
                        mac: mac.0,
                        dst,
                    })
                    .await
                }
                FdbEntry::Bridge { mac } => {
                    self.apply(Op::FdbReplaceStatic {
                        index: vx,
                        mac: mac.0,
                    })
                    .await
                }
            };
            if let Err(err) = r {
                warn!(entry = ?e, "programming the fast path failed: {err}");
                failed.insert(*e);
            }
        }
        if grace_until.is_none_or(|t| Instant::now() >= t) {
            for e in actual.difference(&desired) {
                let op = match *e {
                    FdbEntry::Vxlan { mac, dst } => Op::FdbDel {
                        index: vx,
                        mac: mac.0,
                        dst: Some(dst),
                        master: false,
                    },
                    FdbEntry::Bridge { mac } => Op::FdbDel {
                        index: vx,
                        mac: mac.0,
                        dst: None,
                        master: true,
                    },
                };
                if let Err(err) = self.apply(op).await
                    && !err.is_no_device()
                {
                    warn!(entry = ?e, "removing a fast-path entry failed: {err}");
                }
            }
        }
        let moved = self
            .reconcile_arp(plan, grace_until.is_some_and(|t| Instant::now() < t))
            .await;
        let ready = plan
            .heartbeat
            .keys()
            .filter(|p| {
                let mac = fastdp::heartbeat_mac(**p);
                !failed.iter().any(|e| match e {
                    FdbEntry::Vxlan { mac: m, .. } | FdbEntry::Bridge { mac: m } => *m == mac,
                })
            })
            .copied()
            .collect();
        (ready, moved)
    }
}

/// Fast-path reconciliation against a modelled host: what is programmed, what is left alone,
/// and what happens when the kernel refuses an entry.
#[cfg(test)]
mod tests {
    use weft_core::fastdp::FastDpPlan;
    use weft_linux::host::fake::FakeHost;

    use super::*;

    const UNDERLAY: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
    const CONTAINER: Ipv4Addr = Ipv4Addr::new(10, 32, 0, 9);
    const CONTAINER_MAC: Mac = Mac([0x02, 0xaa, 0, 0, 0, 9]);

    fn bed() -> (Arc<FakeHost>, Reconciler) {
        let host = Arc::new(FakeHost::new());
        let bridge = host.add_link("weft", "bridge", 1376);
        let vx = host.add_link("weft-vx", "vxlan", 1376);
        let tap = host.add_link("weft-tap", "tun", 1376);
        let r = Reconciler::new(host.clone(), bridge, vx, tap);
        (host, r)
    }

    fn peer() -> PeerName {
        PeerName::from_bytes([0x0a, 0, 0, 0, 0, 2])
    }

    fn plan() -> FastDpPlan {
        let p = peer();
        let mut plan = FastDpPlan::default();
        plan.heartbeat.insert(p, UNDERLAY);
        plan.fast.insert(p, UNDERLAY);
        plan.macs.insert(p, vec![CONTAINER_MAC]);
        plan.neighbours.insert(CONTAINER, CONTAINER_MAC);
        plan
    }

    fn ops(host: &FakeHost) -> Vec<Op> {
        host.take_ops().into_iter().map(|(_, op)| op).collect()
    }

    #[tokio::test]
    async fn a_new_fast_peer_gets_its_entries_and_the_sleeve_port_forgets_its_macs() {
        let (host, r) = bed();
        let (ready, moved) = r.reconcile(&plan(), &BTreeSet::new(), None).await;
        assert_eq!(ready, BTreeSet::from([peer()]));
        assert_eq!(moved, vec![(CONTAINER, CONTAINER_MAC)], "new, so announced");
        let issued = ops(&host);
        assert_eq!(issued[0], Op::FlushLearned { index: r.tap_index });
        let hb = fastdp::heartbeat_mac(peer()).0;
        for want in [
            Op::FdbAppendRemote {
                index: r.vx_index,
                mac: [0; 6],
                dst: UNDERLAY,
            },
            Op::FdbAppendRemote {
                index: r.vx_index,
                mac: CONTAINER_MAC.0,
                dst: UNDERLAY,
            },
            Op::FdbAppendRemote {
                index: r.vx_index,
                mac: hb,
                dst: UNDERLAY,
            },
            Op::FdbReplaceStatic {
                index: r.vx_index,
                mac: hb,
            },
            Op::ArpReplaceStatic {
                index: r.bridge_index,
                ip: CONTAINER,
                mac: CONTAINER_MAC.0,
            },
        ] {
            assert!(issued.contains(&want), "{want:?} missing from {issued:#?}");
        }
        assert!(
            !issued
                .iter()
                .any(|o| matches!(o, Op::FdbDel { .. } | Op::ArpDel { .. })),
            "{issued:#?}"
        );
    }

    #[tokio::test]
    async fn a_kernel_that_matches_the_plan_is_left_alone() {
        let (host, r) = bed();
        let fast = BTreeSet::from([peer()]);
        r.reconcile(&plan(), &BTreeSet::new(), None).await;
        host.take_ops();
        let (ready, moved) = r.reconcile(&plan(), &fast, None).await;
        assert_eq!(ready, fast);
        assert!(moved.is_empty());
        assert_eq!(ops(&host), Vec::new());
    }

    #[tokio::test]
    async fn entries_of_a_departed_peer_stay_through_the_restart_grace_then_go() {
        let (host, r) = bed();
        let fast = BTreeSet::from([peer()]);
        r.reconcile(&plan(), &BTreeSet::new(), None).await;
        host.take_ops();
        let empty = FastDpPlan::default();
        let grace = Some(Instant::now() + Duration::from_secs(60));
        r.reconcile(&empty, &fast, grace).await;
        assert_eq!(
            ops(&host),
            Vec::new(),
            "nothing removed in the grace period"
        );
        r.reconcile(&empty, &fast, None).await;
        let issued = ops(&host);
        let dels = issued
            .iter()
            .filter(|o| matches!(o, Op::FdbDel { .. }))
            .count();
        assert_eq!(dels, plan().fdb().len(), "{issued:#?}");
        assert!(issued.contains(&Op::ArpDel {
            index: r.bridge_index,
            ip: CONTAINER
        }));
        assert!(host.fdb_entries().is_empty());
        assert!(host.arp().is_empty());
        // The address comes back with another MAC: announced as moved.
        let mut back = plan();
        let other = Mac([0x02, 0xbb, 0, 0, 0, 9]);
        back.neighbours.insert(CONTAINER, other);
        let (_, moved) = r.reconcile(&back, &BTreeSet::new(), None).await;
        assert_eq!(moved, vec![(CONTAINER, other)]);
    }

    #[tokio::test]
    async fn a_peer_whose_heartbeat_entry_the_kernel_refuses_gets_no_heartbeats() {
        let (host, r) = bed();
        let hb = fastdp::heartbeat_mac(peer()).0;
        host.fail_when(move |_, op| matches!(op, Op::FdbAppendRemote { mac, .. } if *mac == hb));
        let (ready, _) = r.reconcile(&plan(), &BTreeSet::new(), None).await;
        assert!(ready.is_empty());
        // The rest is programmed all the same.
        assert!(host.fdb_entries().iter().any(|e| e.mac == CONTAINER_MAC.0));
    }

    #[tokio::test]
    async fn a_neighbour_entry_the_kernel_refuses_is_not_announced_until_it_goes_in() {
        // A full neighbour table refuses the entry every round: announcing it each time
        // would send our containers a gratuitous ARP every round for as long as that lasts.
        let (host, r) = bed();
        let full = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let refusing = full.clone();
        host.fail_when(move |_, op| {
            refusing.load(std::sync::atomic::Ordering::SeqCst)
                && matches!(op, Op::ArpReplaceStatic { ip, .. } if *ip == CONTAINER)
        });
        for _ in 0..3 {
            let (_, moved) = r.reconcile(&plan(), &BTreeSet::new(), None).await;
            assert!(moved.is_empty(), "{moved:?}");
        }
        full.store(false, std::sync::atomic::Ordering::SeqCst);
        let (_, moved) = r.reconcile(&plan(), &BTreeSet::new(), None).await;
        assert_eq!(moved, vec![(CONTAINER, CONTAINER_MAC)]);
        let (_, moved) = r.reconcile(&plan(), &BTreeSet::new(), None).await;
        assert!(moved.is_empty(), "announced once: {moved:?}");
    }

    #[tokio::test]
    async fn a_whole_peer_s_worth_of_new_addresses_is_not_announced() {
        let (_, r) = bed();
        let mut many = plan();
        for i in 0..(FRESH_ANNOUNCE_MAX as u8 + 1) {
            many.neighbours
                .insert(Ipv4Addr::new(10, 33, 0, i), Mac([2, 0, 0, 0, 1, i]));
        }
        let (_, moved) = r.reconcile(&many, &BTreeSet::new(), None).await;
        assert!(moved.is_empty());
    }
}
