//! Gratuitous ARP: telling the neighbours on a link which MAC an IPv4 address has now.
//!
//! When a container takes an address that a departed one had, its neighbours still hold the
//! old MAC and would keep sending there until their neighbour entry times out (seconds, plus a
//! failed probe). A gratuitous ARP request (sender and target address both the announced one,
//! sent to broadcast) makes every Linux neighbour that has an entry for the address update it
//! at once, as Weave did on attach and expose.
//!
//! The frame goes out of an `AF_PACKET` socket bound to nothing and addressed to the
//! interface, so it works on any Ethernet link of the calling thread's namespace — a
//! container's `ethwe`, the bridge, or the host end of a container's veth (whose frames the
//! container receives). This module holds `unsafe`: the socket and address calls libc has no
//! safe wrapper for.

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::{Error, Result};

const ETH_P_ARP: u16 = 0x0806;

/// The 60-byte frame (ARP padded to Ethernet's minimum) announcing that `ip` is at `mac`.
pub fn gratuitous_frame(mac: [u8; 6], ip: Ipv4Addr) -> [u8; 60] {
    let mut f = [0u8; 60];
    f[0..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&ETH_P_ARP.to_be_bytes());
    // Ethernet / IPv4, 6-byte and 4-byte addresses, a request.
    f[14..22].copy_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, 1]);
    f[22..28].copy_from_slice(&mac);
    f[28..32].copy_from_slice(&ip.octets());
    // Target hardware address stays zero; the target address is the sender's.
    f[38..42].copy_from_slice(&ip.octets());
    f
}

/// Sends a gratuitous ARP for each of `ips` at `mac` out of interface `ifname`.
pub fn announce(ifname: &str, mac: [u8; 6], ips: &[Ipv4Addr]) -> Result<()> {
    if ips.is_empty() {
        return Ok(());
    }
    let index = nix::net::if_::if_nametoindex(ifname)
        .map_err(|e| Error::io(format!("finding interface {ifname}"), e.into()))?;
    #[allow(unsafe_code)]
    // SAFETY: socket(2) takes no pointers; a non-negative result is a new descriptor that
    // nothing else owns, so OwnedFd may take it (and close it on drop).
    let fd = unsafe {
        let raw = libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            i32::from(ETH_P_ARP.to_be()),
        );
        if raw < 0 {
            return Err(Error::io(
                format!("opening a packet socket for {ifname}"),
                std::io::Error::last_os_error(),
            ));
        }
        OwnedFd::from_raw_fd(raw)
    };
    for ip in ips {
        let frame = gratuitous_frame(mac, *ip);
        #[allow(unsafe_code)]
        // SAFETY: sockaddr_ll is plain data, so all-zero is a valid value; sendto reads
        // `frame.len()` bytes from `frame` and `size_of::<sockaddr_ll>()` bytes from `addr`,
        // both live locals of exactly those sizes, and keeps neither pointer.
        let sent = unsafe {
            let mut addr: libc::sockaddr_ll = std::mem::zeroed();
            addr.sll_family = libc::AF_PACKET as u16;
            addr.sll_protocol = ETH_P_ARP.to_be();
            addr.sll_ifindex = index as i32;
            addr.sll_halen = 6;
            addr.sll_addr[..6].copy_from_slice(&[0xff; 6]);
            libc::sendto(
                fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&raw const addr).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if sent < 0 {
            return Err(Error::io(
                format!("sending a gratuitous ARP for {ip} on {ifname}"),
                std::io::Error::last_os_error(),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_frame_is_a_broadcast_arp_request_for_the_senders_own_address() {
        let mac = [0x02, 0, 0, 0, 0, 0x01];
        let f = gratuitous_frame(mac, Ipv4Addr::new(10, 32, 0, 7));
        assert_eq!(&f[0..6], &[0xff; 6]);
        assert_eq!(&f[6..12], &mac);
        assert_eq!(&f[12..14], &[0x08, 0x06]);
        assert_eq!(&f[20..22], &[0, 1], "a request");
        assert_eq!(&f[22..28], &mac);
        assert_eq!(&f[28..32], &[10, 32, 0, 7]);
        assert_eq!(&f[32..38], &[0; 6]);
        assert_eq!(&f[38..42], &[10, 32, 0, 7]);
    }
}
