//! The sleeve data plane: workers moving frames between the bridge's TAP port and the sleeve
//! UDP socket, with every decision made by `weft_core::overlay::Forwarder`.
//!
//! Each worker is a task with a TAP queue and a socket of its own (`SO_REUSEPORT` on the
//! sleeve's port) and a forwarder that shares the router's keys, MAC cache and path limits
//! with the others. The kernel keeps each flow on one TAP queue and each peer's datagrams on
//! one socket, so what a worker reads, it reads in order; local flows spread over the
//! workers, and so does what arrives from different peers. A supervisor hands the control
//! task's messages on: tables and settings to every worker, keys (shared) and heartbeats to
//! the first, which also drives path-MTU probes and MAC expiry.
//!
//! UDP heartbeats share the socket: the forwarder decrypts them like frames and they are handed
//! to the control task; the control task's heartbeats go out through here to be encrypted.
//! Sends never wait: a full socket or TAP queue drops the packet and counts it, as a switch
//! would.
//!
//! Small packets come and go in batches: a wakeup reads every frame queued on the TAP (up to
//! [`BATCH`]) and their datagrams leave in one `sendmmsg`; the socket is drained with
//! `recvmmsg`, [`BATCH`] datagrams per call. Within a batch datagrams keep the order their
//! frames came in, and a segmentation-offload train first flushes what is queued, so a flow
//! leaves in order. Runs of one peer's datagrams of one size leave as one offload send
//! (`weft_linux::udp::SendBatch`), and runs of one UDP flow's frames reach the bridge as one
//! super-frame (`weft_proto::coalesce`): the kernel's stack, not the syscalls, is what a small
//! packet costs, and this way it runs once per run.
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
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, info, warn};
use tun_rs::AsyncDevice;
use weft_core::overlay::{Forwarder, Output};
use weft_linux::udp::{RecvBatch, SendBatch};
use weft_proto::PeerName;
use weft_proto::coalesce::UdpCoalescer;
use weft_proto::offload::{self, GSO_LEN, Gso};

use crate::control::ControlInput;
pub use crate::dataplane_msg::{DataPlaneMsg, DataPlaneSnapshot, IoStats};

/// Frames read from the TAP per wakeup, and datagrams per `recvmmsg`/`sendmmsg`: enough
/// that a burst of small packets costs a syscall per batch on the socket side, few enough
/// that the other direction and the control messages get their turn.
const BATCH: usize = 64;

struct Out<'a> {
    udp: &'a Arc<UdpSocket>,
    tap: &'a AsyncDevice,
    control: &'a mpsc::Sender<ControlInput>,
    sends: &'a mut SendBatch,
    /// Frames for the TAP being merged into one super-frame (`None`: the TAP takes no UDP
    /// segmentation offload, so every frame is written as it is).
    run: Option<&'a mut UdpCoalescer>,
    io: &'a mut IoStats,
}

impl Out<'_> {
    /// Writes the frames being merged and sends the queued datagrams; called once per batch
    /// of input, before the task waits.
    fn flush(&mut self) {
        self.flush_run();
        if self.sends.is_empty() {
            return;
        }
        let done = self.sends.flush(&**self.udp);
        self.io.udp_send_errors += done.dropped as u64;
        self.io.send_batches += 1;
        self.io.send_trains += done.trains as u64;
    }

    fn flush_run(&mut self) {
        if let Some(run) = self.run.as_deref_mut()
            && let Some((gso, frame)) = run.take()
        {
            if gso.is_gso() {
                self.io.tap_super_frames += 1;
            }
            write_tap(self.tap, self.io, &gso, frame);
        }
    }
}

fn write_tap(tap: &AsyncDevice, io: &mut IoStats, gso: &Gso, frame: &[u8]) {
    let parts = [IoSlice::new(&gso.0), IoSlice::new(frame)];
    if let Err(e) = tap.try_send_vectored(&parts) {
        io.tap_write_errors += 1;
        debug!("TAP write failed: {e}");
    }
}

impl Output for Out<'_> {
    fn send(&mut self, to: SocketAddr, parts: &[&[u8]]) {
        self.sends.push(to, parts);
        if self.sends.is_full() {
            self.flush();
        }
    }

    fn inject(&mut self, frame: &[u8]) {
        // A datagram of the flow being merged joins it; anything else writes the run out
        // first, so frames reach the bridge in the order they came.
        if let Some(run) = self.run.as_deref_mut() {
            if run.offer(frame) {
                return;
            }
            self.flush_run();
            if self.run.as_deref_mut().is_some_and(|run| run.offer(frame)) {
                return;
            }
        }
        write_tap(self.tap, self.io, &Gso::default(), frame);
    }

    fn inject_gso(&mut self, gso: &Gso, frame: &[u8]) {
        self.flush_run();
        write_tap(self.tap, self.io, gso, frame);
    }

    fn send_train(&mut self, to: SocketAddr, train: &[u8], stride: usize) {
        // What was queued before goes first: a flow's datagrams leave in order.
        self.flush();
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

/// One frame the bridge handed to the TAP, offload header first.
fn local_frame(fwd: &mut Forwarder, now: Instant, buf: &mut [u8], out: &mut Out<'_>) {
    if buf.len() < GSO_LEN {
        out.io.tap_bad_offload += 1;
        return;
    }
    let (head, frame) = buf.split_at_mut(GSO_LEN);
    let gso = Gso(head.try_into().expect("split at GSO_LEN"));
    let complete = gso.is_gso()
        || !gso.needs_csum()
        || offload::finish_checksum(frame, gso.csum_start().into(), gso.csum_offset().into());
    if !complete {
        out.io.tap_bad_offload += 1;
        return;
    }
    if gso.is_gso() {
        fwd.handle_local_gso(now, &gso, frame, out);
    } else {
        fwd.handle_local_frame(now, frame, out);
    }
}

/// `path_payload`: the largest UDP payload one underlay packet carries; larger datagrams go
/// as weft fragments (`None`: left to the kernel's IP fragmentation). One worker per TAP
/// queue, paired with the sockets in order.
pub async fn run(
    local: PeerName,
    taps: Vec<AsyncDevice>,
    udps: Vec<Arc<UdpSocket>>,
    path_payload: Option<usize>,
    mut rx: mpsc::Receiver<DataPlaneMsg>,
    control: mpsc::Sender<ControlInput>,
    shutdown: watch::Receiver<bool>,
) {
    let mut first = Forwarder::new(local);
    if let Some(p) = path_payload {
        first.set_path_payload(p);
    }
    let mut forwarders: Vec<Forwarder> = (1..taps.len()).map(|_| first.worker()).collect();
    forwarders.insert(0, first);
    let count = forwarders.len();
    let mut workers = tokio::task::JoinSet::new();
    let mut inboxes = Vec::with_capacity(count);
    for (index, ((fwd, tap), udp)) in forwarders.into_iter().zip(taps).zip(udps).enumerate() {
        let (tx, wrx) = mpsc::channel(64);
        inboxes.push(tx);
        workers.spawn(worker(
            index,
            fwd,
            tap,
            udp,
            wrx,
            control.clone(),
            shutdown.clone(),
        ));
    }
    info!("sleeve data plane: {count} worker(s)");
    loop {
        tokio::select! {
            m = rx.recv() => match m {
                Some(m) => {
                    if !dispatch(m, &inboxes).await {
                        return;
                    }
                }
                None => return,
            },
            // A worker that stops (shutdown, or its TAP or socket failed) stops the data
            // plane: the rest would leave some flows and peers without one.
            _ = workers.join_next() => return,
        }
    }
}

/// Hands a message to the workers that need it; false once a worker is gone.
async fn dispatch(m: DataPlaneMsg, inboxes: &[mpsc::Sender<DataPlaneMsg>]) -> bool {
    let every = 0..inboxes.len();
    let msgs: Vec<DataPlaneMsg> = match m {
        DataPlaneMsg::Table(t) => every.map(|_| DataPlaneMsg::Table(t.clone())).collect(),
        DataPlaneMsg::ForgetPeer(p) => every.map(|_| DataPlaneMsg::ForgetPeer(p)).collect(),
        DataPlaneMsg::Fast(f) => every.map(|_| DataPlaneMsg::Fast(f.clone())).collect(),
        DataPlaneMsg::Proxied(m) => every.map(|_| DataPlaneMsg::Proxied(m.clone())).collect(),
        // Keys are shared by the workers; heartbeats are few.
        m @ (DataPlaneMsg::Keys(..) | DataPlaneMsg::SendControl { .. }) => vec![m],
        DataPlaneMsg::Snapshot(reply) => {
            let mut parts = Vec::with_capacity(inboxes.len());
            for inbox in inboxes {
                let (tx, rx) = oneshot::channel();
                if inbox.send(DataPlaneMsg::Snapshot(tx)).await.is_err() {
                    return false;
                }
                parts.push(rx);
            }
            // Gathered apart, so a busy worker does not hold up the others' messages.
            tokio::spawn(async move {
                let mut all: Option<DataPlaneSnapshot> = None;
                for part in parts {
                    let Ok(p) = part.await else { return };
                    match &mut all {
                        None => all = Some(p),
                        Some(a) => {
                            a.stats.add(&p.stats);
                            a.io.add(&p.io);
                        }
                    }
                }
                if let Some(all) = all {
                    let _ = reply.send(all);
                }
            });
            return true;
        }
    };
    for (inbox, m) in inboxes.iter().zip(msgs) {
        if inbox.send(m).await.is_err() {
            return false;
        }
    }
    true
}

/// One worker: its TAP queue, its socket, its forwarder. The first (`index` 0) also drives
/// path-MTU probes and MAC expiry, and takes keys and heartbeats.
async fn worker(
    index: usize,
    mut fwd: Forwarder,
    tap: AsyncDevice,
    udp: Arc<UdpSocket>,
    mut rx: mpsc::Receiver<DataPlaneMsg>,
    control: mpsc::Sender<ControlInput>,
    mut shutdown: watch::Receiver<bool>,
) {
    let first = index == 0;
    if !weft_linux::udp::enable_gro(&*udp) && first {
        debug!("UDP receive offload unavailable: fragments arrive one by one");
    }
    let mut io = IoStats::default();
    let mut tap_buf = vec![0u8; GSO_LEN + 65536];
    // With receive offload a slot may hold a coalesced train of up to 64 KiB.
    let mut received = RecvBatch::new(BATCH, 65536 + 4096);
    let mut sends = SendBatch::new(BATCH);
    // Kernels before 6.2 take no UDP segmentation offload through a TAP.
    let mut run = tap.udp_gso().then(UdpCoalescer::default);
    let mut expire = tokio::time::interval(Duration::from_secs(60));
    macro_rules! out {
        () => {
            Out {
                udp: &udp,
                tap: &tap,
                control: &control,
                sends: &mut sends,
                run: run.as_mut(),
                io: &mut io,
            }
        };
    }
    loop {
        let probe_at = if first { fwd.poll_timeout() } else { None };
        tokio::select! {
            _ = async {
                match probe_at {
                    Some(t) => tokio::time::sleep_until(t.into()).await,
                    None => std::future::pending().await,
                }
            } => {
                let mut out = out!();
                fwd.handle_timeout(Instant::now(), &mut out);
                out.flush();
                for (peer, old, new) in fwd.drain_path_changes() {
                    if new < old {
                        warn!(%peer, "the path to {peer} carries datagrams of at most {new} bytes (not {old}): larger ones go as fragments of that size");
                    } else {
                        info!(%peer, "the path to {peer} carries datagrams of {new} bytes again (was {old})");
                    }
                }
            }
            r = tap.recv(&mut tap_buf) => {
                let mut out = out!();
                let mut r = r;
                // The first frame woke us; what queued behind it is read without waiting,
                // and the datagrams they make leave together. One clock reading serves the
                // batch, which takes microseconds (it dates what the forwarder learns).
                let now = Instant::now();
                for _ in 0..BATCH {
                    match r {
                        Ok(n) => local_frame(&mut fwd, now, &mut tap_buf[..n], &mut out),
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                        Err(e) => {
                            warn!("reading the TAP device failed: {e}; data plane stopping");
                            return;
                        }
                    }
                    r = tap.try_recv(&mut tap_buf);
                }
                out.flush();
                if fwd.has_wanted() {
                    let peers = fwd.drain_wanted(Instant::now());
                    if !peers.is_empty() {
                        let _ = control.try_send(ControlInput::DataWanted(peers));
                    }
                }
            }
            r = udp.readable() => {
                if let Err(e) = r {
                    warn!("sleeve socket failed: {e}; data plane stopping");
                    return;
                }
                let mut out = out!();
                // Drain what is queued, a bounded number of batches so the TAP gets its turn.
                for _ in 0..4 {
                    let r = udp.try_io(tokio::io::Interest::READABLE, || received.recv(&*udp));
                    match r {
                        Ok(count) => {
                            out.io.recv_batches += 1;
                            out.io.recv_datagrams += count as u64;
                            let now = Instant::now();
                            for i in 0..count {
                                let (got, bytes) = received.datagram(i);
                                // Coalesced datagrams sit back to back, `stride` bytes each.
                                let stride = got.stride.unwrap_or(got.len).max(1);
                                for d in bytes.chunks_mut(stride) {
                                    fwd.handle_datagram(now, got.from, d, &mut out);
                                }
                            }
                            if count < BATCH {
                                break;
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                        // ICMP errors for earlier sends surface here (e.g. port unreachable);
                        // they concern one datagram, not the socket.
                        Err(e) => debug!("sleeve receive error: {e}"),
                    }
                }
                out.flush();
            },
            m = rx.recv() => match m {
                Some(DataPlaneMsg::Table(t)) => {
                    fwd.set_table(t);
                    // New neighbours' paths are probed from now on.
                    if first {
                        let mut out = out!();
                        fwd.handle_timeout(Instant::now(), &mut out);
                        out.flush();
                    }
                }
                Some(DataPlaneMsg::ForgetPeer(p)) => fwd.forget_peer(p),
                Some(DataPlaneMsg::Keys(p, k)) => fwd.set_keys(p, &k),
                Some(DataPlaneMsg::Fast(f)) => fwd.set_fast(f),
                Some(DataPlaneMsg::Proxied(m)) => fwd.set_proxied(m),
                Some(DataPlaneMsg::SendControl { to, peer, bytes }) => {
                    let mut out = out!();
                    fwd.send_control(to, peer, &bytes, &mut out);
                    out.flush();
                }
                Some(DataPlaneMsg::Snapshot(reply)) => {
                    // What the workers share is told by the first.
                    let mut snap = DataPlaneSnapshot { stats: fwd.stats(), io, ..Default::default() };
                    if first {
                        let now = Instant::now();
                        snap.macs = fwd.macs().entries().map(|(m, o, seen)| (m, o, now.saturating_duration_since(seen))).collect();
                        snap.encrypted_peers = fwd.encrypted_peers();
                        snap.path_limits = fwd.path_limits();
                    }
                    let _ = reply.send(snap);
                }
                None => return,
            },
            _ = expire.tick(), if first => { fwd.expire(Instant::now()); }
            _ = shutdown.changed() => return,
        }
    }
}
