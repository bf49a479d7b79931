//! Per-interface sysctls, written through `/proc/sys` (and `/sys`) of the calling thread's
//! namespace.

use crate::{Error, Result};

fn write(path: &str, value: &str) -> Result<()> {
    std::fs::write(path, value).map_err(|e| Error::io(format!("writing {path}"), e))
}

/// Turns IPv6 off on an interface weft owns: the overlay is IPv4, and router solicitations and
/// duplicate-address probes from bridge ports would only be noise on it.
pub fn disable_ipv6(ifname: &str) -> Result<()> {
    let path = format!("/proc/sys/net/ipv6/conf/{ifname}/disable_ipv6");
    if !std::path::Path::new(&path).exists() {
        // No IPv6 in this kernel or namespace: nothing to turn off.
        return Ok(());
    }
    write(&path, "1")
}

/// ARP timing for container interfaces (as Weave): re-validate neighbours quickly so a
/// container that moved or restarted with the same IP is found again within seconds.
pub fn fast_arp(ifname: &str) -> Result<()> {
    let base = format!("/proc/sys/net/ipv4/neigh/{ifname}");
    write(&format!("{base}/base_reachable_time"), "5")?;
    write(&format!("{base}/delay_first_probe_time"), "2")?;
    write(&format!("{base}/ucast_solicit"), "1")
}

/// Lets a bridge port send frames back out of the port they came in on, so a container can
/// reach itself through a service address that the host rewrites to its own (Kubernetes).
pub fn hairpin(ifname: &str) -> Result<()> {
    write(&format!("/sys/class/net/{ifname}/brport/hairpin_mode"), "1")
}

/// Whether a bridge port has hairpin mode on (false if it cannot be read).
pub fn hairpin_enabled(ifname: &str) -> bool {
    std::fs::read_to_string(format!("/sys/class/net/{ifname}/brport/hairpin_mode"))
        .is_ok_and(|v| v.trim() == "1")
}

/// Lets gratuitous ARPs create neighbour entries on a container interface, as Weave set it
/// (`arp_accept`); existing entries are updated by them either way.
pub fn accept_arp(ifname: &str) -> Result<()> {
    write(&format!("/proc/sys/net/ipv4/conf/{ifname}/arp_accept"), "1")
}
