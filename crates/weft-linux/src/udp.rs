//! The sleeve UDP socket.
//!
//! Two settings matter: large kernel buffers (a userspace tunnel loses most of its packets to
//! receive-buffer overflow when the reader falls behind for a moment; 212 KB is the default),
//! and `IP_PMTUDISC_DONT`, so a datagram larger than the path MTU is fragmented by the kernel
//! rather than refused: frames too big for one underlay packet still arrive.
//!
//! Large sleeve datagrams leave as trains of equal-size fragments: [`send_train`] hands a
//! whole train to the kernel in one `sendmsg` with UDP segmentation offload (`UDP_SEGMENT`),
//! and with [`enable_gro`] the receiving kernel hands it back in one receive (`UDP_GRO`, see
//! [`RecvBatch`]),
//! with the segment size, so a 64 KiB super-frame costs one syscall on each side and travels
//! the host's network stack as one packet.

use std::io::{IoSlice, IoSliceMut};
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsRawFd;

use nix::sys::socket::{
    ControlMessage, ControlMessageOwned, MsgFlags, SockaddrLike, SockaddrStorage, sendmsg,
    setsockopt, sockopt,
};
use socket2::{Domain, Protocol, Socket, Type};

use crate::{Error, Result};

pub const BUFFER_BYTES: usize = 4 * 1024 * 1024;

/// Binds the sleeve socket at `addr` (non-blocking, ready for tokio). With `shared`, more
/// sockets may bind the same address (`SO_REUSEPORT`, same user only): the kernel spreads
/// datagrams over them by their addresses and ports, so one peer's datagrams all reach one.
pub fn bind_sleeve(addr: SocketAddr, shared: bool) -> Result<std::net::UdpSocket> {
    let what = |op: &str| format!("{op} UDP {addr}");
    let sock = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))
        .map_err(|e| Error::io(what("creating"), e))?;
    if shared {
        setsockopt(&sock, sockopt::ReusePort, &true)
            .map_err(|e| Error::io(what("configuring"), e.into()))?;
    }
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

/// The source address of a received datagram, as a std address.
fn socket_addr(a: &SockaddrStorage) -> Option<SocketAddr> {
    match a.family() {
        Some(nix::sys::socket::AddressFamily::Inet) => a
            .as_sockaddr_in()
            .map(|v| SocketAddr::V4(SocketAddrV4::new(v.ip(), v.port()))),
        Some(nix::sys::socket::AddressFamily::Inet6) => a
            .as_sockaddr_in6()
            .map(|v| SocketAddr::V6(SocketAddrV6::new(v.ip(), v.port(), 0, 0))),
        _ => None,
    }
}

/// `sendmmsg` headers, kept from call to call (each call sets every field it uses).
struct Headers(nix::sys::socket::MultiHeaders<SockaddrStorage>);

// SAFETY: `MultiHeaders` is not `Send` only because it holds raw pointers: into heap buffers
// it owns (source addresses, control-message space), which move with it, and into the
// caller's buffers, which each call sets before the syscall and nothing reads after it.
// Nothing in it is shared, so moving it to another thread (a tokio task does) is sound.
#[allow(unsafe_code)]
unsafe impl Send for Headers {}

/// One received datagram in a [`RecvBatch`]: its length, sender and, when the kernel
/// coalesced several of one flow, their size (all but the last are exactly that long).
#[derive(Clone, Copy, Debug)]
pub struct Received {
    pub len: usize,
    pub from: SocketAddr,
    pub stride: Option<usize>,
}

/// Buffers for receiving many datagrams in one `recvmmsg`, allocated once: a busy sleeve
/// pays one syscall (and one wakeup) per batch instead of per packet.
pub struct RecvBatch {
    bufs: Vec<Vec<u8>>,
    got: Vec<Received>,
}

impl RecvBatch {
    /// Room for `slots` datagrams of up to `slot_len` bytes each (with receive offload, a
    /// coalesced train is up to 64 KiB).
    pub fn new(slots: usize, slot_len: usize) -> Self {
        let slots = slots.max(1);
        RecvBatch {
            bufs: vec![vec![0; slot_len]; slots],
            got: Vec::with_capacity(slots),
        }
    }

    /// Receives what is queued, up to the batch's size, without waiting; `WouldBlock` when
    /// nothing is. Returns how many datagrams arrived (see [`RecvBatch::datagram`]).
    pub fn recv(&mut self, sock: &impl AsRawFd) -> std::io::Result<usize> {
        // Fresh headers per call: the kernel shrinks each header's address and control
        // lengths to what a datagram used, and nix does not restore them, so reused headers
        // would truncate the next batch's receive-offload segment sizes. (A few KiB per
        // batch, not per datagram.)
        let mut headers = nix::sys::socket::MultiHeaders::<SockaddrStorage>::preallocate(
            self.bufs.len(),
            Some(nix::cmsg_space!(i32)),
        );
        let mut iovs: Vec<[IoSliceMut<'_>; 1]> =
            self.bufs.iter_mut().map(|b| [IoSliceMut::new(b)]).collect();
        let results = nix::sys::socket::recvmmsg(
            sock.as_raw_fd(),
            &mut headers,
            iovs.iter_mut(),
            MsgFlags::MSG_DONTWAIT,
            None,
        )
        .map_err(std::io::Error::from)?;
        self.got.clear();
        for msg in results {
            let mut stride = None;
            if let Ok(cmsgs) = msg.cmsgs() {
                for c in cmsgs {
                    if let ControlMessageOwned::UdpGroSegments(s) = c {
                        stride = usize::try_from(s).ok().filter(|&s| s > 0);
                    }
                }
            }
            // A datagram without an IP source cannot be attributed: it gets the unspecified
            // address, which no peer has, and the sleeve drops it as from an unknown sender.
            let from = msg
                .address
                .as_ref()
                .and_then(socket_addr)
                .unwrap_or(SocketAddr::V4(SocketAddrV4::new(
                    std::net::Ipv4Addr::UNSPECIFIED,
                    0,
                )));
            self.got.push(Received {
                len: msg.bytes,
                from,
                stride,
            });
        }
        Ok(self.got.len())
    }

    /// The `i`th datagram of the last [`RecvBatch::recv`], with its bytes (writable: the
    /// sleeve decrypts in place).
    pub fn datagram(&mut self, i: usize) -> (Received, &mut [u8]) {
        let r = self.got[i];
        (r, &mut self.bufs[i][..r.len])
    }
}

/// Datagrams queued to leave in one `sendmmsg`. Bytes are copied into one arena as they are
/// queued (a sealed frame is built in a scratch buffer anyway), and the arena and the
/// headers are reused from batch to batch.
pub struct SendBatch {
    arena: Vec<u8>,
    msgs: Vec<(SocketAddr, usize, usize)>,
    headers: Headers,
    slots: usize,
    /// Segmentation offload works on this socket (until a send says otherwise).
    gso: bool,
}

/// What a [`SendBatch::flush`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flushed {
    pub sent: usize,
    /// Offload sends among them (each carrying several datagrams).
    pub trains: usize,
    /// Datagrams not sent: the socket's buffer was full (sends never wait), or the kernel
    /// refused them (an unreachable destination).
    pub dropped: usize,
}

impl SendBatch {
    pub fn new(slots: usize) -> Self {
        let slots = slots.max(1);
        SendBatch {
            arena: Vec::with_capacity(slots * 1600),
            msgs: Vec::with_capacity(slots),
            headers: Headers(nix::sys::socket::MultiHeaders::preallocate(slots, None)),
            slots,
            gso: true,
        }
    }

    /// Queues one datagram made of `parts` concatenated.
    pub fn push(&mut self, to: SocketAddr, parts: &[&[u8]]) {
        let start = self.arena.len();
        for p in parts {
            self.arena.extend_from_slice(p);
        }
        self.msgs.push((to, start, self.arena.len()));
    }

    pub fn len(&self) -> usize {
        self.msgs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.msgs.is_empty()
    }

    /// Whether the batch holds as many datagrams as one `sendmmsg` takes.
    pub fn is_full(&self) -> bool {
        self.msgs.len() >= self.slots
    }

    /// Sends everything queued, in order, without waiting, and empties the batch.
    ///
    /// Runs of datagrams to one peer of one size (a flow of small packets sealed one after
    /// another) leave as segmentation-offload trains: one `sendmsg` and, more to the point,
    /// one trip through the host's network stack and firewall for the whole run, which the
    /// receiving kernel hands over in one piece too (see [`enable_gro`]). The rest go in
    /// `sendmmsg` batches.
    pub fn flush(&mut self, sock: &impl AsRawFd) -> Flushed {
        let mut done = Flushed::default();
        let n = self.msgs.len();
        let (mut i, mut singles) = (0, 0);
        while i < n {
            let end = self.train_end(i);
            if end - i < 2 || !self.gso {
                i = end;
                continue;
            }
            if !self.send_each(sock, singles, i, &mut done) {
                done.dropped += n - i;
                singles = n;
                break;
            }
            let (to, a, _) = self.msgs[i];
            let (stride, b) = (self.msgs[i].2 - a, self.msgs[end - 1].2);
            match send_train(sock, to, &self.arena[a..b], stride) {
                Ok(_) => {
                    done.sent += end - i;
                    done.trains += 1;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    done.dropped += n - i;
                    singles = n;
                    break;
                }
                // No segmentation offload on this path: one by one from now on.
                Err(_) => {
                    self.gso = false;
                    singles = i;
                    continue;
                }
            }
            (i, singles) = (end, end);
        }
        if singles < n {
            self.send_each(sock, singles, n, &mut done);
        }
        self.msgs.clear();
        self.arena.clear();
        done
    }

    /// The end (exclusive) of the train starting at datagram `i`: the datagrams after it to
    /// the same peer, of its length (a last one may be shorter), within one offload send.
    fn train_end(&self, i: usize) -> usize {
        let (to, a, b) = self.msgs[i];
        let stride = b - a;
        let (mut j, mut bytes) = (i + 1, stride);
        while j < self.msgs.len() && j - i < MAX_TRAIN_SEGMENTS {
            let (next_to, next_a, next_b) = self.msgs[j];
            let len = next_b - next_a;
            if next_to != to || len > stride || len == 0 || bytes + len > MAX_TRAIN_BYTES {
                break;
            }
            bytes += len;
            j += 1;
            if len < stride {
                break;
            }
        }
        j
    }

    /// Sends datagrams `from..to` with `sendmmsg`; false if the socket's buffer filled (the
    /// datagrams not sent are counted as dropped).
    fn send_each(
        &mut self,
        sock: &impl AsRawFd,
        from: usize,
        to: usize,
        done: &mut Flushed,
    ) -> bool {
        let mut next = from;
        while next < to {
            let end = to.min(next + self.slots);
            let batch = &self.msgs[next..end];
            let iovs: Vec<[IoSlice<'_>; 1]> = batch
                .iter()
                .map(|&(_, a, b)| [IoSlice::new(&self.arena[a..b])])
                .collect();
            let addrs: Vec<Option<SockaddrStorage>> = batch
                .iter()
                .map(|&(to, _, _)| Some(SockaddrStorage::from(to)))
                .collect();
            let r = nix::sys::socket::sendmmsg(
                sock.as_raw_fd(),
                &mut self.headers.0,
                &iovs,
                &addrs,
                [],
                MsgFlags::MSG_DONTWAIT,
            );
            match r {
                Ok(results) => {
                    let n = results.count().clamp(1, batch.len());
                    done.sent += n;
                    next += n;
                }
                // The socket's buffer is full: the rest would meet the same.
                Err(nix::errno::Errno::EAGAIN) => {
                    done.dropped += to - next;
                    return false;
                }
                // The first datagram was refused (e.g. an ICMP error pending for its
                // destination): it alone is lost.
                Err(_) => {
                    done.dropped += 1;
                    next += 1;
                }
            }
        }
        true
    }
}

/// Segments one offload send may carry (the kernel's UDP_MAX_SEGMENTS, in older kernels).
const MAX_TRAIN_SEGMENTS: usize = 64;
/// Bytes one offload send may carry: one IPv6 datagram's payload, with room to spare.
const MAX_TRAIN_BYTES: usize = 65_000;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trains_are_runs_to_one_peer_of_one_size_a_shorter_one_last() {
        let (a, b): (SocketAddr, SocketAddr) = (
            "198.18.0.1:6783".parse().unwrap(),
            "198.18.0.2:6783".parse().unwrap(),
        );
        let mut batch = SendBatch::new(64);
        for (to, len) in [
            (a, 100),
            (a, 100),
            (a, 100),
            (a, 60),
            (a, 100),
            (b, 80),
            (b, 80),
        ] {
            batch.push(to, &[&vec![0u8; len]]);
        }
        assert_eq!(
            batch.train_end(0),
            4,
            "three of 100, then a shorter one ends it"
        );
        assert_eq!(batch.train_end(4), 5, "the next peer starts a new train");
        assert_eq!(batch.train_end(5), 7);
        let mut big = SendBatch::new(64);
        for _ in 0..70 {
            big.push(a, &[&[1u8; 1400]]);
        }
        let end = big.train_end(0);
        assert!(
            end * 1400 <= MAX_TRAIN_BYTES && end <= MAX_TRAIN_SEGMENTS,
            "{end}"
        );
    }
}
