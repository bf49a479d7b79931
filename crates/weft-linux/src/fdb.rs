//! The fast path's kernel objects: the VXLAN device, bridge-port flags, and forwarding-database
//! entries on the VXLAN device (its own remote table and the bridge's table), over rtnetlink.
//!
//! rtnetlink's neighbour requests always create exclusively or replace, but a VXLAN device needs
//! one all-zero entry per flood destination (`bridge fdb append`), so these requests are built
//! here with the flags each entry needs.

use std::net::{IpAddr, Ipv4Addr};

use futures::{StreamExt, TryStreamExt};
use rtnetlink::packet_core::{
    NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_REPLACE, NLM_F_REQUEST, NetlinkMessage,
    NetlinkPayload,
};
use rtnetlink::packet_route::link::{InfoBridgePort, LinkMessage};
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::{LinkBridgePort, LinkVxlan};

use crate::netlink::{Link, Netlink};
use crate::{Error, Result};

/// One entry of an AF_BRIDGE FDB dump.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FdbRecord {
    /// The port (or VXLAN device) the entry is on.
    pub ifindex: u32,
    pub mac: [u8; 6],
    /// VXLAN remote (entries of the device's own table).
    pub dst: Option<Ipv4Addr>,
    /// An entry of the bridge's table (NTF_MASTER), rather than the device's own.
    pub master: bool,
    /// The bridge, for entries of a bridge's table.
    pub bridge: Option<u32>,
    pub state: FdbState,
    /// Since the kernel last forwarded a frame by this entry, where it says.
    pub used: Option<std::time::Duration>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FdbState {
    /// Learnt from traffic; ages out.
    Learned,
    /// Installed (`static`).
    Static,
    /// The port's own address (`permanent`), or a VXLAN entry installed permanent.
    Permanent,
}

/// Flags of a bridge port.
#[derive(Clone, Copy, Debug)]
pub struct PortFlags {
    /// Isolated ports never forward to each other, only to non-isolated ports.
    pub isolated: bool,
    pub learning: bool,
    /// Unknown unicast, multicast and broadcast floods reach this port.
    pub flood: bool,
    /// ARP requests for addresses whose MAC is behind this port are answered by the bridge
    /// from the bridge device's neighbour table, and not flooded to this port
    /// (`neigh_suppress`).
    pub neigh_suppress: bool,
}

impl Netlink {
    /// Creates the VXLAN device (learning off, UDP `port`, one constant VNI) or adopts an
    /// existing one of that name; its MTU is set either way.
    /// The VXLAN device `name`, created if missing; `local` is the source address of what it
    /// sends (the router's `--host`), else the kernel picks one per route.
    pub async fn ensure_vxlan(
        &self,
        name: &str,
        vni: u32,
        port: u16,
        mtu: u32,
        local: Option<std::net::Ipv4Addr>,
    ) -> Result<Link> {
        if let Some(l) = self.link_by_name(name).await? {
            if l.kind.as_deref() != Some("vxlan") {
                return Err(Error::Other(format!(
                    "interface {name} exists but is a {}, not VXLAN; remove it or run 'weft reset'",
                    l.kind.unwrap_or_default()
                )));
            }
            return Ok(l);
        }
        let mut vx = LinkVxlan::new(name, vni)
            .port(port)
            .learning(false)
            .mtu(mtu);
        if let Some(a) = local {
            vx = vx.local(a);
        }
        let msg = vx.build();
        self.handle()
            .link()
            .add(msg)
            .execute()
            .await
            .map_err(|e| Error::netlink("creating VXLAN device", name, e))?;
        self.require_link(name).await
    }

    /// Hairpin mode on bridge port `index`: frames may leave by the port they came in by.
    pub async fn set_hairpin(&self, index: u32, on: bool) -> Result<()> {
        let msg = LinkBridgePort::new(index)
            .append_info_data(InfoBridgePort::HairpinMode(on))
            .build();
        self.set_port(index, msg, "setting hairpin mode").await
    }

    async fn set_port(&self, index: u32, msg: LinkMessage, what: &'static str) -> Result<()> {
        self.handle()
            .link()
            .set_port(msg)
            .execute()
            .await
            .map_err(|e| Error::netlink(what, format!("#{index}"), e))
    }

    pub async fn set_port_flags(&self, index: u32, f: PortFlags) -> Result<()> {
        let msg = LinkBridgePort::new(index)
            .append_info_data(InfoBridgePort::Isolated(f.isolated))
            .append_info_data(InfoBridgePort::Learning(f.learning))
            .append_info_data(InfoBridgePort::UnicastFlood(f.flood))
            .append_info_data(InfoBridgePort::MulticastFlood(f.flood))
            .append_info_data(InfoBridgePort::BroadcastFlood(f.flood))
            .append_info_data(InfoBridgePort::NeighSupress(f.neigh_suppress))
            .build();
        self.set_port(index, msg, "setting bridge port flags").await
    }

    /// Forgets the entries the bridge learnt on port `index` (installed ones stay).
    pub async fn flush_learned(&self, index: u32) -> Result<()> {
        let msg = LinkBridgePort::new(index).fdb_flush().build();
        self.set_port(index, msg, "flushing learnt bridge entries")
            .await
    }

    /// Every AF_BRIDGE FDB entry (bridge tables and devices' own), or those on `ifindex`.
    pub async fn fdb(&self, ifindex: Option<u32>) -> Result<Vec<FdbRecord>> {
        let _turn = self.one_dump().await;
        let mut s = self
            .handle()
            .neighbours()
            .get()
            .set_address_family(AddressFamily::Bridge)
            .execute();
        let mut out = Vec::new();
        while let Some(m) = s
            .try_next()
            .await
            .map_err(|e| Error::netlink("listing forwarding database", "", e))?
        {
            if ifindex.is_some_and(|i| i != m.header.ifindex) {
                continue;
            }
            let mut mac = None;
            let mut dst = None;
            let mut bridge = None;
            let mut used = None;
            for a in &m.attributes {
                match a {
                    NeighbourAttribute::LinkLayerAddress(b) if b.len() == 6 => {
                        mac = Some(<[u8; 6]>::try_from(b.as_slice()).expect("length checked"))
                    }
                    // The kernel does not say which family a bridge entry's address is in.
                    NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => dst = Some(*ip),
                    NeighbourAttribute::Destination(NeighbourAddress::Other(b)) if b.len() == 4 => {
                        dst = Some(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
                    }
                    NeighbourAttribute::Controller(i) => bridge = Some(*i),
                    // In clock ticks of USER_HZ, which is 100 on Linux.
                    NeighbourAttribute::CacheInfo(c) => {
                        used = Some(std::time::Duration::from_millis(u64::from(c.used) * 10))
                    }
                    _ => {}
                }
            }
            let Some(mac) = mac else { continue };
            out.push(FdbRecord {
                ifindex: m.header.ifindex,
                mac,
                dst,
                // The bridge reports its entries with NDA_MASTER, not the NTF_MASTER flag.
                master: bridge.is_some() || m.header.flags.contains(NeighbourFlags::Controller),
                bridge,
                state: match m.header.state {
                    NeighbourState::Noarp => FdbState::Static,
                    NeighbourState::Permanent => FdbState::Permanent,
                    _ => FdbState::Learned,
                },
                used,
            });
        }
        Ok(out)
    }

    /// Adds a VXLAN remote entry (`bridge fdb append MAC dev IF dst IP self`).
    pub async fn fdb_append_remote(&self, ifindex: u32, mac: [u8; 6], dst: Ipv4Addr) -> Result<()> {
        let m = fdb_message(ifindex, mac, Some(dst), false);
        self.fdb_request(
            RouteNetlinkMessage::NewNeighbour(m),
            NLM_F_CREATE | NLM_F_APPEND,
            "adding VXLAN forwarding entry",
        )
        .await
    }

    /// Adds or replaces a static bridge entry (`bridge fdb replace MAC dev IF master static`).
    pub async fn fdb_replace_static(&self, ifindex: u32, mac: [u8; 6]) -> Result<()> {
        let m = fdb_message(ifindex, mac, None, true);
        self.fdb_request(
            RouteNetlinkMessage::NewNeighbour(m),
            NLM_F_CREATE | NLM_F_REPLACE,
            "adding bridge forwarding entry",
        )
        .await
    }

    /// Removes one entry: a VXLAN remote (with `dst`) or a bridge entry (`master`).
    pub async fn fdb_del(
        &self,
        ifindex: u32,
        mac: [u8; 6],
        dst: Option<Ipv4Addr>,
        master: bool,
    ) -> Result<()> {
        let m = fdb_message(ifindex, mac, dst, master);
        self.fdb_request(
            RouteNetlinkMessage::DelNeighbour(m),
            0,
            "removing forwarding entry",
        )
        .await
    }

    /// The IPv4 neighbour entries on `ifindex` that weft installed (state NOARP): address
    /// and MAC.
    pub async fn static_arp(&self, ifindex: u32) -> Result<Vec<(Ipv4Addr, [u8; 6])>> {
        let _turn = self.one_dump().await;
        let mut s = self
            .handle()
            .neighbours()
            .get()
            .set_address_family(AddressFamily::Inet)
            .execute();
        let mut out = Vec::new();
        while let Some(m) = s
            .try_next()
            .await
            .map_err(|e| Error::netlink("listing neighbours", "", e))?
        {
            if m.header.ifindex != ifindex || m.header.state != NeighbourState::Noarp {
                continue;
            }
            let mut ip = None;
            let mut mac = None;
            for a in &m.attributes {
                match a {
                    NeighbourAttribute::Destination(NeighbourAddress::Inet(i)) => ip = Some(*i),
                    NeighbourAttribute::LinkLayerAddress(l) if l.len() == 6 => {
                        mac = Some(<[u8; 6]>::try_from(&l[..]).expect("length checked"));
                    }
                    _ => {}
                }
            }
            if let (Some(ip), Some(mac)) = (ip, mac) {
                out.push((ip, mac));
            }
        }
        Ok(out)
    }

    /// Sets `ip`'s MAC on `ifindex` for good (`ip neigh replace IP lladdr MAC nud noarp`).
    pub async fn arp_replace_static(&self, ifindex: u32, ip: Ipv4Addr, mac: [u8; 6]) -> Result<()> {
        self.fdb_request(
            RouteNetlinkMessage::NewNeighbour(arp_message(ifindex, ip, Some(mac))),
            NLM_F_CREATE | NLM_F_REPLACE,
            "adding neighbour entry",
        )
        .await
    }

    pub async fn arp_del(&self, ifindex: u32, ip: Ipv4Addr) -> Result<()> {
        self.fdb_request(
            RouteNetlinkMessage::DelNeighbour(arp_message(ifindex, ip, None)),
            0,
            "removing neighbour entry",
        )
        .await
    }

    async fn fdb_request(
        &self,
        msg: RouteNetlinkMessage,
        flags: u16,
        op: &'static str,
    ) -> Result<()> {
        let mut req = NetlinkMessage::from(msg);
        req.header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
        let mut handle = self.handle();
        let mut resp = handle.request(req).map_err(|e| Error::netlink(op, "", e))?;
        while let Some(m) = resp.next().await {
            if let NetlinkPayload::Error(e) = m.payload {
                return Err(Error::netlink(op, "", rtnetlink::Error::NetlinkError(e)));
            }
        }
        Ok(())
    }
}

fn arp_message(ifindex: u32, ip: Ipv4Addr, mac: Option<[u8; 6]>) -> NeighbourMessage {
    let mut m = NeighbourMessage::default();
    m.header.family = AddressFamily::Inet;
    m.header.ifindex = ifindex;
    m.header.state = NeighbourState::Noarp;
    // Externally learned: exempt from the kernel's neighbour garbage collection and from its
    // table limit (gc_thresh3, 1024 by default), which would otherwise refuse entries once a
    // cluster holds about a thousand containers behind other hosts.
    m.header.flags = NeighbourFlags::ExtLearned;
    m.attributes
        .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)));
    if let Some(mac) = mac {
        m.attributes
            .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
    }
    m
}

fn fdb_message(
    ifindex: u32,
    mac: [u8; 6],
    dst: Option<Ipv4Addr>,
    master: bool,
) -> NeighbourMessage {
    let mut m = NeighbourMessage::default();
    m.header.family = AddressFamily::Bridge;
    m.header.ifindex = ifindex;
    if master {
        // Static, not permanent: a permanent bridge entry means "this is the bridge's own
        // address" and frames to it would be delivered to the host. Sticky: a static entry
        // may otherwise be moved by learning, e.g. to the sleeve's port by a frame of that
        // container which came by sleeve while the link was changing mode, which would then
        // swallow the traffic meant for the fast path.
        m.header.state = NeighbourState::Noarp;
        m.header.flags = NeighbourFlags::Controller | NeighbourFlags::Sticky;
    } else {
        m.header.state = NeighbourState::Permanent;
        m.header.flags = NeighbourFlags::Own;
    }
    m.attributes
        .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
    if let Some(ip) = dst {
        m.attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::from(
                IpAddr::V4(ip),
            )));
    }
    m
}
