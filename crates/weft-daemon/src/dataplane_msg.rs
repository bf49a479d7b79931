//! What other tasks ask of the sleeve data plane, apart from the data plane itself: the
//! control task sends these (keys, tables, heartbeats) and the data plane answers to the
//! control task, so the types live here and neither module needs the other's.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use weft_core::crypto::PeerKeys;
use weft_core::mesh::DataPlaneTable;
use weft_core::overlay::{ForwarderStats, MacOwner};
use weft_proto::{Mac, PeerName};

/// Requests to the data plane.
pub enum DataPlaneMsg {
    Table(Arc<DataPlaneTable>),
    ForgetPeer(PeerName),
    /// A neighbour's data keys changed (empty: plaintext with this peer).
    Keys(PeerName, PeerKeys),
    /// A heartbeat from the control task for neighbour `peer` at `to`.
    SendControl {
        to: SocketAddr,
        peer: PeerName,
        bytes: Vec<u8>,
    },
    Snapshot(oneshot::Sender<DataPlaneSnapshot>),
    /// Neighbours the kernel's VXLAN device now carries our containers' frames to.
    Fast(std::collections::BTreeSet<PeerName>),
    /// MACs of containers behind fast peers, whose ARP the bridge answers itself.
    Proxied(std::collections::HashSet<Mac>),
}

#[derive(Clone, Debug, Default)]
pub struct DataPlaneSnapshot {
    pub stats: ForwarderStats,
    pub io: IoStats,
    pub macs: Vec<(Mac, MacOwner, Duration)>,
    /// Neighbours whose data is encrypted.
    pub encrypted_peers: Vec<PeerName>,
    /// Each neighbour's path limit: the largest UDP payload sent to it in one datagram.
    pub path_limits: Vec<(PeerName, usize)>,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct IoStats {
    pub udp_send_errors: u64,
    pub tap_write_errors: u64,
    /// Heartbeats the control task was too busy to take.
    pub heartbeats_dropped: u64,
    /// Frames from the TAP with an offload header that did not fit them.
    pub tap_bad_offload: u64,
    /// `recvmmsg` calls that returned datagrams, and the datagrams they returned (their
    /// ratio is the receive batch size under load).
    pub recv_batches: u64,
    pub recv_datagrams: u64,
    /// Send batches flushed, and the segmentation-offload trains among their sends (runs of
    /// datagrams to one peer, of one size, sent and carried through the host as one).
    pub send_batches: u64,
    pub send_trains: u64,
    /// TAP writes that carried a run of one flow's datagrams as one super-frame.
    pub tap_super_frames: u64,
}

impl IoStats {
    /// Adds another worker's counters.
    pub fn add(&mut self, other: &IoStats) {
        self.udp_send_errors += other.udp_send_errors;
        self.tap_write_errors += other.tap_write_errors;
        self.heartbeats_dropped += other.heartbeats_dropped;
        self.tap_bad_offload += other.tap_bad_offload;
        self.recv_batches += other.recv_batches;
        self.recv_datagrams += other.recv_datagrams;
        self.send_batches += other.send_batches;
        self.send_trains += other.send_trains;
        self.tap_super_frames += other.tap_super_frames;
    }
}
