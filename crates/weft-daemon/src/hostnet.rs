//! The router's own network setup in the host namespace: the `weft` bridge that containers
//! plug into, and the TAP port through which the router sends and receives their frames.
//!
//! A restarted router reuses an existing bridge (containers stay plugged in and keep their
//! traffic's layer 2 state); only the TAP, which dies with the process, is recreated.

use std::net::IpAddr;

use tracing::info;
use weft_linux::netlink::{Link, LinkConfig, Netlink};
use weft_linux::{sysctl, tap};
use weft_proto::PeerName;
use weft_proto::sleeve::FRAME_OVERHEAD;

use crate::DaemonError;

/// Largest overlay MTU: an Ethernet frame of this size plus the sleeve header must fit one
/// (possibly fragmented) UDP datagram.
/// The largest frame an (encrypted or not) sleeve datagram carries, as an IP MTU.
pub const MAX_MTU: u32 =
    (weft_proto::sleeve::MAX_DATAGRAM - weft_proto::sleeve::ENCRYPTED_FRAME_OVERHEAD + 28) as u32;
pub const MIN_MTU: u32 = 576;
/// The sleeve TAP's `gso_max_size`: the kernel hands the router whole only offload frames
/// shorter than this, which with every header and a tag still fit one sleeve datagram
/// (65,507 bytes); longer ones it segments first. Containers keep the kernel's default
/// (65,536), whose TCP super-frames (at most ~64.4 KB with MTU-sized segments) pass: a lower
/// limit on their veths cost the fast path up to 40% with several streams (measured, 64,000).
pub const GSO_MAX_SIZE: u32 =
    (weft_core::overlay::MAX_FRAME - weft_proto::offload::GSO_LEN + 1) as u32;

pub struct HostNet {
    pub netlink: Netlink,
    pub bridge: Link,
    pub tap_name: String,
    pub mtu: u32,
}

/// The underlay interface (holding `host`, else carrying the default route, else the first
/// interface with an IPv4 address that is not ours) and its MTU.
pub async fn underlay(
    nl: &Netlink,
    host: Option<IpAddr>,
    ours: &[&str],
) -> Result<(String, u32), DaemonError> {
    let links = nl.links().await?;
    let by_index = |i: u32| links.iter().find(|l| l.index == i);
    let mut chosen = None;
    if let Some(ip) = host {
        chosen = nl.link_with_address(ip).await?.and_then(by_index);
    }
    if chosen.is_none() {
        chosen = nl.default_route_link().await?.and_then(by_index);
    }
    if chosen.is_none() {
        let addrs = nl.addresses(None).await?;
        chosen = links.iter().find(|l| {
            l.name != "lo"
                && l.up
                && !ours.contains(&l.name.as_str())
                && !l.name.starts_with("vethwl")
                && addrs
                    .iter()
                    .any(|(i, n)| *i == l.index && n.addr().is_ipv4())
        });
    }
    match chosen {
        Some(l) => Ok((l.name.clone(), l.mtu)),
        None => Err(DaemonError::Config(
            "cannot find the underlay interface (no default route and no interface with an IPv4 address); give --mtu".into(),
        )),
    }
}

/// The overlay MTU for an underlay MTU: what is left after the sleeve's encapsulation
/// (larger when encrypted: counter, tag, inner header).
pub fn overlay_mtu(underlay_mtu: u32, encrypted: bool) -> u32 {
    underlay_mtu.saturating_sub(overhead(encrypted) as u32)
}

pub fn overhead(encrypted: bool) -> usize {
    if encrypted {
        weft_proto::sleeve::ENCRYPTED_FRAME_OVERHEAD
    } else {
        FRAME_OVERHEAD
    }
}

/// Creates or adopts the bridge and plugs a fresh TAP into it.
pub async fn setup(
    nl: Netlink,
    bridge_name: &str,
    name: PeerName,
    mtu: u32,
    queues: usize,
) -> Result<(HostNet, Vec<tun_rs::AsyncDevice>), DaemonError> {
    let existed = nl.link_by_name(bridge_name).await?.is_some();
    let bridge = nl.ensure_bridge(bridge_name).await?;
    sysctl::disable_ipv6(bridge_name)?;
    nl.configure(
        bridge.index,
        LinkConfig {
            mac: Some(name.to_bytes()),
            mtu: Some(mtu),
            up: true,
            ..Default::default()
        },
    )
    .await?;
    info!(
        bridge = bridge_name,
        mtu,
        "{} bridge",
        if existed { "reusing" } else { "created" }
    );
    let tap_name = format!("{bridge_name}-tap");
    // A TAP left by a crashed router of ours would make the name busy; it is safe to remove.
    if let Some(old) = nl.link_by_name(&tap_name).await? {
        nl.delete_link(old.index).await?;
    }
    let tap_mtu = u16::try_from(mtu).unwrap_or(u16::MAX);
    let dev = tap::open_queues(&tap_name, tap_mtu, true, queues)?;
    let tap_link = nl.require_link(&tap_name).await?;
    // A super-frame must fit one sleeve datagram with its headers (and a tag when sealed).
    nl.set_gso_max_size(tap_link.index, GSO_MAX_SIZE).await;
    sysctl::disable_ipv6(&tap_name)?;
    nl.configure(
        tap_link.index,
        LinkConfig {
            mtu: Some(mtu),
            master: Some(bridge.index),
            up: true,
            ..Default::default()
        },
    )
    .await?;
    let bridge = nl.require_link(bridge_name).await?;
    Ok((
        HostNet {
            netlink: nl,
            bridge,
            tap_name,
            mtu,
        },
        dev,
    ))
}

/// Removes the bridge and every container link weft created in this namespace (`weft reset`).
pub async fn teardown(nl: &Netlink, bridge_name: &str) -> Result<Vec<String>, DaemonError> {
    let mut removed = Vec::new();
    for l in nl.links().await? {
        let ours = l.name == bridge_name
            || l.name == format!("{bridge_name}-tap")
            || l.name == crate::fastdp::vxlan_name(bridge_name)
            || l.name == crate::fastdp::heartbeat_name(bridge_name)
            || l.name.starts_with("vethwl");
        if ours {
            match nl.delete_link(l.index).await {
                Ok(()) => removed.push(l.name),
                // The other end of a pair we already removed.
                Err(e) if e.is_no_device() => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(removed)
}

/// Who may use weftDNS: the subnets of the host's bridges (weft's, docker0: the containers),
/// `extra` (the allocation range), and each of the host's own addresses on its own. The
/// underlay's subnet is not among them, so a stranger there cannot use weftDNS, let alone
/// make it forward for them.
pub async fn dns_clients(
    nl: &Netlink,
    extra: &[ipnet::IpNet],
) -> Result<Vec<ipnet::IpNet>, DaemonError> {
    let bridges: Vec<u32> = nl
        .links()
        .await?
        .into_iter()
        .filter(|l| l.kind.as_deref() == Some("bridge"))
        .map(|l| l.index)
        .collect();
    let mut out: Vec<ipnet::IpNet> = extra.to_vec();
    for (index, net) in nl.addresses(None).await? {
        if bridges.contains(&index) {
            out.push(net.trunc());
        }
        out.push(ipnet::IpNet::from(net.addr()));
    }
    out.sort();
    out.dedup();
    Ok(out)
}
