//! The sleeve data plane: one task moving frames between the bridge's TAP port and the sleeve
//! UDP socket, with every decision made by `weft_core::overlay::Forwarder`.
//!
//! UDP heartbeats share the socket: the forwarder decrypts them like frames and they are handed
//! to the control task; the control task's heartbeats go out through here to be encrypted.
//! Sends never wait: a full socket or TAP queue drops the packet and counts it, as a switch
//! would.
//!
//! The TAP runs with segmentation offload: reads come with a `virtio_net_hdr`, and a TCP
//! stream arrives as 64 KiB super-frames that cross the sleeve whole (see
//! `weft_proto::offload`). A small frame whose checksum the kernel left to "hardware" gets it
//! computed here, so it travels as an ordinary frame.

use std::io::IoSlice;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};
use tun_rs::AsyncDevice;
use weft_core::overlay::{Forwarder, Output};
use weft_proto::PeerName;
use weft_proto::offload::{self, GSO_LEN, Gso};

use crate::control::ControlInput;
pub use crate::dataplane_msg::{DataPlaneMsg, DataPlaneSnapshot, IoStats};

struct Out<'a> {
    udp: &'a Arc<UdpSocket>,
    tap: &'a AsyncDevice,
    control: &'a mpsc::Sender<ControlInput>,
    buf: Vec<u8>,
    io: &'a mut IoStats,
}

impl Output for Out<'_> {
    fn send(&mut self, to: SocketAddr, parts: &[&[u8]]) {
        let bytes: &[u8] = if let [one] = parts {
            one
        } else {
            self.buf.clear();
            for p in parts {
                self.buf.extend_from_slice(p);
            }
            &self.buf
        };
        if let Err(e) = self.udp.try_send_to(bytes, to) {
            self.io.udp_send_errors += 1;
            debug!(%to, "sleeve send failed: {e}");
        }
    }

    fn inject(&mut self, frame: &[u8]) {
        self.inject_gso(&Gso::default(), frame);
    }

    fn inject_gso(&mut self, gso: &Gso, frame: &[u8]) {
        let parts = [IoSlice::new(&gso.0), IoSlice::new(frame)];
        if let Err(e) = self.tap.try_send_vectored(&parts) {
            self.io.tap_write_errors += 1;
            debug!("TAP write failed: {e}");
        }
    }

    fn send_train(&mut self, to: SocketAddr, train: &[u8], stride: usize) {
        // One segmentation-offload send carries at most one IP packet's worth.
        let per_send = (weft_proto::sleeve::MAX_DATAGRAM / stride).max(1) * stride;
        for part in train.chunks(per_send) {
            match weft_linux::udp::send_train(&**self.udp, to, part, stride) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    self.io.udp_send_errors += 1;
                }
                // No segmentation offload here: one send per fragment.
                Err(e) => {
                    debug!(%to, "segmentation-offload send failed ({e}); sending one by one");
                    for d in part.chunks(stride) {
                        if self.udp.try_send_to(d, to).is_err() {
                            self.io.udp_send_errors += 1;
                        }
                    }
                }
            }
        }
    }

    fn to_control(&mut self, from: SocketAddr, datagram: &[u8]) {
        let msg = ControlInput::Udp {
            from,
            bytes: datagram.to_vec(),
        };
        if self.control.try_send(msg).is_err() {
            self.io.heartbeats_dropped += 1;
        }
    }
}

/// `path_payload`: the largest UDP payload one underlay packet carries; larger datagrams go
/// as weft fragments (`None`: left to the kernel's IP fragmentation).
pub async fn run(
    local: PeerName,
    tap: AsyncDevice,
    udp: Arc<UdpSocket>,
    path_payload: Option<usize>,
    mut rx: mpsc::Receiver<DataPlaneMsg>,
    control: mpsc::Sender<ControlInput>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut fwd = Forwarder::new(local);
    if let Some(p) = path_payload {
        fwd.set_path_payload(p);
    }
    if !weft_linux::udp::enable_gro(&*udp) {
        debug!("UDP receive offload unavailable: fragments arrive one by one");
    }
    let mut io = IoStats::default();
    let mut tap_buf = vec![0u8; GSO_LEN + 65536];
    let mut udp_buf = vec![0u8; 65536 + 4096];
    let mut out_buf = Vec::with_capacity(65536);
    let mut expire = tokio::time::interval(Duration::from_secs(60));
    loop {
        let probe_at = fwd.poll_timeout();
        tokio::select! {
            _ = async {
                match probe_at {
                    Some(t) => tokio::time::sleep_until(t.into()).await,
                    None => std::future::pending().await,
                }
            } => {
                let mut out = Out { udp: &udp, tap: &tap, control: &control, buf: std::mem::take(&mut out_buf), io: &mut io };
                fwd.handle_timeout(Instant::now(), &mut out);
                out_buf = out.buf;
                for (peer, old, new) in fwd.drain_path_changes() {
                    if new < old {
                        warn!(%peer, "the path to {peer} carries datagrams of at most {new} bytes (not {old}): larger ones go as fragments of that size");
                    } else {
                        info!(%peer, "the path to {peer} carries datagrams of {new} bytes again (was {old})");
                    }
                }
            }
            r = tap.recv(&mut tap_buf) => match r {
                Ok(n) if n >= GSO_LEN => {
                    let (head, frame) = tap_buf[..n].split_at_mut(GSO_LEN);
                    let gso = Gso(head.try_into().expect("split at GSO_LEN"));
                    let complete = gso.is_gso()
                        || !gso.needs_csum()
                        || offload::finish_checksum(frame, gso.csum_start().into(), gso.csum_offset().into());
                    if !complete {
                        io.tap_bad_offload += 1;
                        continue;
                    }
                    let mut out = Out { udp: &udp, tap: &tap, control: &control, buf: std::mem::take(&mut out_buf), io: &mut io };
                    if gso.is_gso() {
                        fwd.handle_local_gso(Instant::now(), &gso, frame, &mut out);
                    } else {
                        fwd.handle_local_frame(Instant::now(), frame, &mut out);
                    }
                    out_buf = out.buf;
                    if fwd.has_wanted() {
                        let peers = fwd.drain_wanted(Instant::now());
                        if !peers.is_empty() {
                            let _ = control.try_send(ControlInput::DataWanted(peers));
                        }
                    }
                }
                Ok(_) => io.tap_bad_offload += 1,
                Err(e) => {
                    warn!("reading the TAP device failed: {e}; data plane stopping");
                    return;
                }
            },
            r = udp.readable() => {
                if let Err(e) = r {
                    warn!("sleeve socket failed: {e}; data plane stopping");
                    return;
                }
                // Drain what is queued, a bounded amount at a time so the TAP gets its turn.
                for _ in 0..64 {
                    let r = udp.try_io(tokio::io::Interest::READABLE, || {
                        weft_linux::udp::recv(&*udp, &mut udp_buf)
                    });
                    match r {
                        Ok((n, from, stride)) => {
                            let mut out = Out { udp: &udp, tap: &tap, control: &control, buf: std::mem::take(&mut out_buf), io: &mut io };
                            let now = Instant::now();
                            // Coalesced datagrams sit back to back, `stride` bytes each.
                            let stride = stride.unwrap_or(n).max(1);
                            for d in udp_buf[..n].chunks_mut(stride) {
                                fwd.handle_datagram(now, from, d, &mut out);
                            }
                            out_buf = out.buf;
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                        // ICMP errors for earlier sends surface here (e.g. port unreachable);
                        // they concern one datagram, not the socket.
                        Err(e) => debug!("sleeve receive error: {e}"),
                    }
                }
            },
            m = rx.recv() => match m {
                Some(DataPlaneMsg::Table(t)) => {
                    fwd.set_table(t);
                    // New neighbours' paths are probed from now on.
                    let mut out = Out { udp: &udp, tap: &tap, control: &control, buf: std::mem::take(&mut out_buf), io: &mut io };
                    fwd.handle_timeout(Instant::now(), &mut out);
                    out_buf = out.buf;
                }
                Some(DataPlaneMsg::ForgetPeer(p)) => fwd.forget_peer(p),
                Some(DataPlaneMsg::Keys(p, k)) => fwd.set_keys(p, &k),
                Some(DataPlaneMsg::Fast(f)) => fwd.set_fast(f),
                Some(DataPlaneMsg::Proxied(m)) => fwd.set_proxied(m),
                Some(DataPlaneMsg::SendControl { to, peer, bytes }) => {
                    let mut out = Out { udp: &udp, tap: &tap, control: &control, buf: std::mem::take(&mut out_buf), io: &mut io };
                    fwd.send_control(to, peer, &bytes, &mut out);
                    out_buf = out.buf;
                }
                Some(DataPlaneMsg::Snapshot(reply)) => {
                    let now = Instant::now();
                    let macs = fwd.macs().entries().map(|(m, o, seen)| (m, o, now.saturating_duration_since(seen))).collect();
                    let encrypted_peers = fwd.encrypted_peers();
                    let path_limits = fwd.path_limits();
                    let _ = reply.send(DataPlaneSnapshot { stats: fwd.stats(), io, macs, encrypted_peers, path_limits });
                }
                None => return,
            },
            _ = expire.tick() => { fwd.expire(Instant::now()); }
            _ = shutdown.changed() => return,
        }
    }
}
