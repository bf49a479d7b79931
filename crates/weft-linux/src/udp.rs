//! The sleeve UDP socket.
//!
//! Two settings matter: large kernel buffers (a userspace tunnel loses most of its packets to
//! receive-buffer overflow when the reader falls behind for a moment; 212 KB is the default),
//! and `IP_PMTUDISC_DONT`, so a datagram larger than the path MTU is fragmented by the kernel
//! rather than refused: frames too big for one underlay packet still arrive.
//!
//! Large sleeve datagrams leave as trains of equal-size fragments: [`send_train`] hands a
//! whole train to the kernel in one `sendmsg` with UDP segmentation offload (`UDP_SEGMENT`),
//! and with [`enable_gro`] the receiving kernel hands it back in one [`recv`] (`UDP_GRO`),
//! with the segment size, so a 64 KiB super-frame costs one syscall on each side and travels
//! the host's network stack as one packet.

use std::io::{IoSlice, IoSliceMut};
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsRawFd;

use nix::sys::socket::{
    ControlMessage, ControlMessageOwned, MsgFlags, SockaddrLike, SockaddrStorage, recvmsg, sendmsg,
    setsockopt, sockopt,
};
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

/// Asks the kernel to coalesce received datagrams of one flow (see [`recv`]). Best effort.
pub fn enable_gro(sock: &impl std::os::fd::AsFd) -> bool {
    setsockopt(sock, sockopt::UdpGroSegment, &true).is_ok()
}

/// Sends `train` — datagrams of `stride` bytes each, the last possibly shorter — to `to` in
/// one non-blocking syscall with UDP segmentation offload.
pub fn send_train(
    sock: &impl AsRawFd,
    to: SocketAddr,
    train: &[u8],
    stride: usize,
) -> std::io::Result<usize> {
    let seg = u16::try_from(stride).map_err(|_| std::io::ErrorKind::InvalidInput)?;
    let addr = SockaddrStorage::from(to);
    let gso = [ControlMessage::UdpGsoSegments(&seg)];
    let cmsgs: &[ControlMessage<'_>] = if train.len() > stride { &gso } else { &[] };
    sendmsg(
        sock.as_raw_fd(),
        &[IoSlice::new(train)],
        cmsgs,
        MsgFlags::MSG_DONTWAIT,
        Some(&addr),
    )
    .map_err(std::io::Error::from)
}

/// One non-blocking receive: the bytes, who sent them, and, when the kernel coalesced several
/// datagrams, their size (all but the last are exactly that long).
pub fn recv(
    sock: &impl AsRawFd,
    buf: &mut [u8],
) -> std::io::Result<(usize, SocketAddr, Option<usize>)> {
    let mut space = nix::cmsg_space!(i32);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = recvmsg::<SockaddrStorage>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_DONTWAIT,
    )
    .map_err(std::io::Error::from)?;
    let mut stride = None;
    if let Ok(cmsgs) = msg.cmsgs() {
        for c in cmsgs {
            if let ControlMessageOwned::UdpGroSegments(s) = c {
                stride = usize::try_from(s).ok().filter(|&s| s > 0);
            }
        }
    }
    let from = msg
        .address
        .as_ref()
        .and_then(|a| match a.family() {
            Some(nix::sys::socket::AddressFamily::Inet) => a
                .as_sockaddr_in()
                .map(|v| SocketAddr::V4(SocketAddrV4::new(v.ip(), v.port()))),
            Some(nix::sys::socket::AddressFamily::Inet6) => a
                .as_sockaddr_in6()
                .map(|v| SocketAddr::V6(SocketAddrV6::new(v.ip(), v.port(), 0, 0))),
            _ => None,
        })
        .ok_or_else(|| std::io::Error::other("datagram without an IP source address"))?;
    Ok((msg.bytes, from, stride))
}
