//! Links, addresses and routes in the current network namespace, over rtnetlink.
//!
//! A [`Netlink`] handle is bound to the namespace of the thread that created it (netlink
//! sockets keep their namespace), so code that works inside a container creates its own handle
//! on a thread that has entered the container's namespace (see [`crate::netns`]).

use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt;
use ipnet::{IpNet, Ipv4Net};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteScope};
use rtnetlink::{Handle, LinkBridge, LinkUnspec, LinkVeth, RouteMessageBuilder};

use crate::{Error, Result};

/// What weft needs to know about a link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mac: Option<[u8; 6]>,
    pub mtu: u32,
    pub up: bool,
    pub master: Option<u32>,
    /// `bridge`, `veth`, `tun`... (`IFLA_INFO_KIND`), when the kernel reports one.
    pub kind: Option<String>,
    /// A veth's peer's index (`IFLA_LINK`), in the peer's namespace.
    pub peer_index: Option<u32>,
    /// The id, in this namespace, of the namespace the peer is in (`IFLA_LINK_NETNSID`);
    /// `None` when the peer is in this namespace.
    pub peer_netnsid: Option<i32>,
}

impl Link {
    fn from_message(m: &LinkMessage) -> Self {
        let mut l = Link {
            index: m.header.index,
            name: String::new(),
            mac: None,
            mtu: 0,
            up: m.header.flags.contains(LinkFlags::Up),
            master: None,
            kind: None,
            peer_index: None,
            peer_netnsid: None,
        };
        for a in &m.attributes {
            match a {
                LinkAttribute::IfName(n) => l.name = n.clone(),
                LinkAttribute::Address(b) if b.len() == 6 => {
                    l.mac = Some(b.as_slice().try_into().expect("length checked"))
                }
                LinkAttribute::Mtu(v) => l.mtu = *v,
                LinkAttribute::Controller(i) => l.master = Some(*i),
                LinkAttribute::Link(i) => l.peer_index = Some(*i),
                LinkAttribute::LinkNetNsId(i) => l.peer_netnsid = Some(*i),
                LinkAttribute::LinkInfo(infos) => {
                    for i in infos {
                        if let LinkInfo::Kind(k) = i {
                            l.kind = Some(k.to_string());
                        }
                    }
                }
                _ => {}
            }
        }
        l
    }
}

/// A netlink route socket in the namespace it was created in.
#[derive(Clone)]
pub struct Netlink {
    handle: Handle,
    /// The kernel runs one dump per socket at a time and answers a second with EBUSY: the
    /// fast path's FDB polls and anything listing links or addresses share this socket, so
    /// dumps take turns.
    dumps: std::sync::Arc<tokio::sync::Mutex<()>>,
}

impl Netlink {
    /// Opens a socket in the calling thread's namespace; must run inside a tokio runtime.
    pub fn new() -> Result<Self> {
        let (conn, handle, _) =
            rtnetlink::new_connection().map_err(|e| Error::io("opening netlink socket", e))?;
        tokio::spawn(conn);
        Ok(Netlink {
            handle,
            dumps: Default::default(),
        })
    }

    pub(crate) fn handle(&self) -> Handle {
        self.handle.clone()
    }

    /// Held while a dump's replies are read (see [`Netlink::dumps`]).
    pub(crate) async fn one_dump(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.dumps.lock().await
    }

    pub async fn link_by_name(&self, name: &str) -> Result<Option<Link>> {
        let mut s = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute();
        match s.try_next().await {
            Ok(m) => Ok(m.as_ref().map(Link::from_message)),
            Err(rtnetlink::Error::NetlinkError(e))
                if e.code.map(|c| -c.get()) == Some(libc::ENODEV) =>
            {
                Ok(None)
            }
            Err(e) => Err(Error::netlink("looking up link", name, e)),
        }
    }

    pub async fn require_link(&self, name: &str) -> Result<Link> {
        self.link_by_name(name)
            .await?
            .ok_or_else(|| Error::NoSuchLink(name.to_string()))
    }

    pub async fn links(&self) -> Result<Vec<Link>> {
        let _turn = self.one_dump().await;
        let mut s = self.handle.link().get().execute();
        let mut out = Vec::new();
        while let Some(m) = s
            .try_next()
            .await
            .map_err(|e| Error::netlink("listing links", "", e))?
        {
            out.push(Link::from_message(&m));
        }
        Ok(out)
    }

    /// Creates the bridge if it is missing; returns it either way.
    pub async fn ensure_bridge(&self, name: &str) -> Result<Link> {
        if let Some(l) = self.link_by_name(name).await? {
            if l.kind.as_deref().is_some_and(|k| k != "bridge") {
                return Err(Error::Other(format!(
                    "interface {name} exists but is a {}, not a bridge; remove it or run 'weft reset'",
                    l.kind.unwrap_or_default()
                )));
            }
            return Ok(l);
        }
        let msg = LinkBridge::new(name).build();
        match self.handle.link().add(msg).execute().await {
            Ok(()) => {}
            Err(e) => {
                let e = Error::netlink("creating bridge", name, e);
                if !e.is_exists() {
                    return Err(e);
                }
            }
        }
        self.require_link(name).await
    }

    /// Sets any of MAC, MTU, master and up on a link in one request.
    pub async fn configure(&self, index: u32, cfg: LinkConfig<'_>) -> Result<()> {
        let mut b = LinkUnspec::new_with_index(index);
        if let Some(mac) = cfg.mac {
            b = b.address(mac.to_vec());
        }
        if let Some(mtu) = cfg.mtu {
            b = b.mtu(mtu);
        }
        if let Some(m) = cfg.master {
            b = b.controller(m);
        }
        if let Some(n) = cfg.name {
            b = b.name(n);
        }
        if cfg.up {
            b = b.up();
        }
        self.handle
            .link()
            .set(b.build())
            .execute()
            .await
            .map_err(|e| Error::netlink("configuring link", format!("#{index}"), e))
    }

    /// Caps the size of segmentation-offload packets the link sends or takes. Best effort:
    /// kernels that refuse keep their default (the sleeve then drops what does not fit, and
    /// counts it).
    pub async fn set_gso_max_size(&self, index: u32, size: u32) {
        let msg = LinkUnspec::new_with_index(index)
            .append_extra_attribute(LinkAttribute::GsoMaxSize(size))
            .build();
        if let Err(e) = self.handle.link().set(msg).execute().await {
            tracing::debug!("setting gso_max_size on #{index}: {e}");
        }
    }

    /// Creates a veth pair in this namespace.
    pub async fn create_veth(&self, name: &str, peer: &str, mtu: u32) -> Result<(Link, Link)> {
        let msg = LinkVeth::new(name, peer).mtu(mtu).build();
        self.handle
            .link()
            .add(msg)
            .execute()
            .await
            .map_err(|e| Error::netlink("creating veth", name, e))?;
        Ok((
            self.require_link(name).await?,
            self.require_link(peer).await?,
        ))
    }

    /// Moves a link into the namespace open at `fd`.
    pub async fn move_to_netns(&self, index: u32, fd: std::os::fd::RawFd) -> Result<()> {
        let msg = LinkUnspec::new_with_index(index).setns_by_fd(fd).build();
        self.handle
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(|e| Error::netlink("moving link to namespace", format!("#{index}"), e))
    }

    pub async fn delete_link(&self, index: u32) -> Result<()> {
        self.handle
            .link()
            .del(index)
            .execute()
            .await
            .map_err(|e| Error::netlink("deleting link", format!("#{index}"), e))
    }

    /// The id this namespace gives the namespace open at `fd` (what [`Link::peer_netnsid`]
    /// holds for a veth whose peer is there); `None` if it has none.
    pub async fn nsid_of(&self, fd: std::os::fd::RawFd) -> Result<Option<i32>> {
        use rtnetlink::packet_core::{NLM_F_REQUEST, NetlinkMessage, NetlinkPayload};
        use rtnetlink::packet_route::RouteNetlinkMessage;
        use rtnetlink::packet_route::nsid::{NsidAttribute, NsidMessage};
        let mut msg = NsidMessage::default();
        msg.attributes.push(NsidAttribute::Fd(fd as u32));
        let mut req = NetlinkMessage::from(RouteNetlinkMessage::GetNsId(msg));
        req.header.flags = NLM_F_REQUEST;
        let mut handle = self.handle.clone();
        let mut replies = handle
            .request(req)
            .map_err(|e| Error::netlink("asking for a namespace id", "", e))?;
        while let Some(m) = futures::StreamExt::next(&mut replies).await {
            match m.payload {
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewNsId(m)) => {
                    return Ok(m.attributes.iter().find_map(|a| match a {
                        // -1: NETNSA_NSID_NOT_ASSIGNED.
                        NsidAttribute::Id(id) if *id >= 0 => Some(*id),
                        _ => None,
                    }));
                }
                NetlinkPayload::Error(e) => {
                    return Err(Error::netlink(
                        "asking for a namespace id",
                        "",
                        rtnetlink::Error::NetlinkError(e),
                    ));
                }
                _ => {}
            }
        }
        Ok(None)
    }

    /// IPv4 and IPv6 addresses on a link (or all links with `None`), with prefix lengths.
    pub async fn addresses(&self, index: Option<u32>) -> Result<Vec<(u32, IpNet)>> {
        let _turn = self.one_dump().await;
        let mut req = self.handle.address().get();
        if let Some(i) = index {
            req = req.set_link_index_filter(i);
        }
        let mut s = req.execute();
        let mut out = Vec::new();
        while let Some(m) = s
            .try_next()
            .await
            .map_err(|e| Error::netlink("listing addresses", "", e))?
        {
            let plen = m.header.prefix_len;
            for a in &m.attributes {
                if let AddressAttribute::Address(ip) = a
                    && let Ok(net) = IpNet::new(*ip, plen)
                {
                    out.push((m.header.index, net));
                }
            }
        }
        Ok(out)
    }

    pub async fn add_address(&self, index: u32, net: IpNet) -> Result<()> {
        self.handle
            .address()
            .add(index, net.addr(), net.prefix_len())
            .execute()
            .await
            .map_err(|e| Error::netlink("adding address", net.to_string(), e))
    }

    pub async fn del_address(&self, index: u32, net: IpNet) -> Result<()> {
        let _turn = self.one_dump().await;
        let mut s = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .set_address_filter(net.addr())
            .execute();
        while let Some(m) = s
            .try_next()
            .await
            .map_err(|e| Error::netlink("looking up address", net.to_string(), e))?
        {
            if m.header.prefix_len == net.prefix_len() {
                self.handle
                    .address()
                    .del(m)
                    .execute()
                    .await
                    .map_err(|e| Error::netlink("deleting address", net.to_string(), e))?;
            }
        }
        Ok(())
    }

    /// Adds a link-scope route for `dst` through `index` (e.g. multicast to `ethwe`).
    pub async fn add_link_route(&self, index: u32, dst: Ipv4Net) -> Result<()> {
        self.add_route(index, dst, None).await
    }

    /// Adds a route for `dst` via `gateway` out of `index` (a container's default route).
    pub async fn add_gateway_route(
        &self,
        index: u32,
        dst: Ipv4Net,
        gateway: Ipv4Addr,
    ) -> Result<()> {
        self.add_route(index, dst, Some(gateway)).await
    }

    async fn add_route(&self, index: u32, dst: Ipv4Net, gateway: Option<Ipv4Addr>) -> Result<()> {
        let b = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(dst.addr(), dst.prefix_len())
            .output_interface(index);
        let (msg, what) = match gateway {
            Some(g) => (b.gateway(g).build(), format!("{dst} via {g}")),
            None => (b.scope(RouteScope::Link).build(), dst.to_string()),
        };
        self.handle
            .route()
            .add(msg)
            .execute()
            .await
            .map_err(|e| Error::netlink("adding route", what, e))
    }

    /// The interface of the IPv4 default route, if there is one.
    pub async fn default_route_link(&self) -> Result<Option<u32>> {
        let _turn = self.one_dump().await;
        let msg = RouteMessageBuilder::<Ipv4Addr>::new().build();
        let mut s = self.handle.route().get(msg).execute();
        while let Some(r) = s
            .try_next()
            .await
            .map_err(|e| Error::netlink("listing routes", "", e))?
        {
            if r.header.destination_prefix_length != 0
                || r.header.address_family != AddressFamily::Inet
            {
                continue;
            }
            let is_main = r.header.table == 254
                || r.attributes
                    .iter()
                    .any(|a| matches!(a, RouteAttribute::Table(254)));
            if !is_main {
                continue;
            }
            for a in &r.attributes {
                if let RouteAttribute::Oif(i) = a {
                    return Ok(Some(*i));
                }
            }
        }
        Ok(None)
    }

    /// The IPv4 routes of the main table as (destination, interface index).
    pub async fn routes_v4(&self) -> Result<Vec<(Ipv4Net, Option<u32>)>> {
        let _turn = self.one_dump().await;
        let msg = RouteMessageBuilder::<Ipv4Addr>::new().build();
        let mut s = self.handle.route().get(msg).execute();
        let mut out = Vec::new();
        while let Some(r) = s
            .try_next()
            .await
            .map_err(|e| Error::netlink("listing routes", "", e))?
        {
            if r.header.table != 254 {
                continue;
            }
            let mut dst = Ipv4Addr::UNSPECIFIED;
            let mut oif = None;
            for a in &r.attributes {
                match a {
                    RouteAttribute::Destination(RouteAddress::Inet(ip)) => dst = *ip,
                    RouteAttribute::Oif(i) => oif = Some(*i),
                    _ => {}
                }
            }
            if let Ok(net) = Ipv4Net::new(dst, r.header.destination_prefix_length) {
                out.push((net, oif));
            }
        }
        Ok(out)
    }

    /// The link holding `ip`, if any.
    pub async fn link_with_address(&self, ip: IpAddr) -> Result<Option<u32>> {
        Ok(self
            .addresses(None)
            .await?
            .into_iter()
            .find(|(_, n)| n.addr() == ip)
            .map(|(i, _)| i))
    }
}

/// Optional settings for [`Netlink::configure`].
#[derive(Clone, Copy, Debug, Default)]
pub struct LinkConfig<'a> {
    pub mac: Option<[u8; 6]>,
    pub mtu: Option<u32>,
    pub master: Option<u32>,
    pub name: Option<&'a str>,
    pub up: bool,
}
