//! The sleeve UDP socket.
//!
//! Two settings matter: large kernel buffers (a userspace tunnel loses most of its packets to
//! receive-buffer overflow when the reader falls behind for a moment; 212 KB is the default),
//! and `IP_PMTUDISC_DONT`, so a datagram larger than the path MTU is fragmented by the kernel
//! rather than refused: frames too big for one underlay packet still arrive.

use std::net::SocketAddr;
use std::os::fd::AsRawFd;

use nix::sys::socket::{setsockopt, sockopt};
use socket2::{Domain, Protocol, Socket, Type};

use crate::{Error, Result};

pub const BUFFER_BYTES: usize = 4 * 1024 * 1024;

/// Binds the sleeve socket at `addr` (non-blocking, ready for tokio).
pub fn bind_sleeve(addr: SocketAddr) -> Result<std::net::UdpSocket> {
    let what = |op: &str| format!("{op} UDP {addr}");
    let sock = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))
        .map_err(|e| Error::io(what("creating"), e))?;
    // Root may exceed net.core.rmem_max; fall back to the capped variant otherwise.
    if setsockopt(&sock, sockopt::RcvBufForce, &BUFFER_BYTES).is_err() {
        let _ = sock.set_recv_buffer_size(BUFFER_BYTES);
    }
    if setsockopt(&sock, sockopt::SndBufForce, &BUFFER_BYTES).is_err() {
        let _ = sock.set_send_buffer_size(BUFFER_BYTES);
    }
    if addr.is_ipv4() {
        set_pmtudisc_dont(&sock).map_err(|e| Error::io(what("configuring"), e))?;
    }
    sock.set_nonblocking(true)
        .map_err(|e| Error::io(what("configuring"), e))?;
    sock.bind(&addr.into())
        .map_err(|e| Error::io(what("binding"), e))?;
    Ok(sock.into())
}

#[allow(unsafe_code)]
fn set_pmtudisc_dont(sock: &Socket) -> std::io::Result<()> {
    let v: libc::c_int = libc::IP_PMTUDISC_DONT;
    // SAFETY: the fd is a live socket owned by `sock`; the option value points at a c_int that
    // outlives the call, and its size is passed exactly.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
