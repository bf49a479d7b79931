//! A snapshot of the router for `weft status` and `weft report`.

use std::net::SocketAddr;
use std::time::Duration;

use weft_proto::PeerName;

use super::TargetState;

#[derive(Clone, Debug)]
pub struct RouterStatus {
    pub name: PeerName,
    pub nickname: String,
    pub uid: u64,
    pub port: u16,
    pub protocol_min: u8,
    pub protocol_max: u8,
    pub discovery: bool,
    pub conn_limit: usize,
    /// A password is set.
    pub encryption: bool,
    /// How many passwords are accepted (more than one during a password roll).
    pub passwords: usize,
    pub trusted_subnets: Vec<String>,
    pub peers: Vec<PeerStatus>,
    pub connections: Vec<ConnectionStatus>,
    /// Direct targets exactly as given.
    pub targets: Vec<String>,
    pub unicast_routes: Vec<(PeerName, PeerName)>,
    pub broadcast_routes: Vec<(PeerName, Vec<PeerName>)>,
    pub termination_count: u64,
    pub protocol_errors: u64,
    pub invalid_entries: u64,
    /// Gossiped entries refused because a table (topology, DNS, fast-path records, IP
    /// allocation ring) was at its bound.
    pub over_limit: u64,
    pub udp_unexpected: u64,
    /// Full states held back: an earlier one to the same neighbour was not yet written.
    pub full_states_held: u64,
    /// Connections shed because a partial view held far more than its share.
    pub shed_surplus: u64,
    pub tree_repairs: u64,
    /// Accepted connections dropped at once: too many half-open ones.
    pub refused_pending: u64,
    /// Data paths to peers that are not neighbours (made on demand): the peer, its overlay
    /// ("fastdp" or "sleeve") and, while sleeve, why.
    pub direct_paths: Vec<(PeerName, &'static str, Option<String>)>,
}

#[derive(Clone, Debug)]
pub struct PeerStatus {
    pub name: PeerName,
    pub nickname: String,
    pub uid: u64,
    pub version: u64,
    pub connections: Vec<PeerConnectionStatus>,
}

#[derive(Clone, Debug)]
pub struct PeerConnectionStatus {
    pub name: PeerName,
    pub nickname: String,
    pub addr: SocketAddr,
    pub outbound: bool,
    pub established: bool,
}

/// One line of `weft status connections`: a live connection or a target not connected.
#[derive(Clone, Debug)]
pub struct ConnectionStatus {
    pub outbound: bool,
    pub addr: SocketAddr,
    pub state: ConnectionState,
    /// For connections: the peer at the other end.
    pub peer: Option<(PeerName, String)>,
    /// The overlay carrying data ("sleeve"), once known.
    pub overlay: Option<&'static str>,
    /// Why the overlay is the sleeve when the fast path is not used.
    pub overlay_reason: Option<String>,
    pub mtu: Option<u32>,
    /// With a password: whether data on this connection is encrypted (not a trusted pair).
    pub encrypted: Option<bool>,
    /// The data-key epoch in use (rekeys so far, modulo 256).
    pub key_epoch: Option<u8>,
    /// With encrypted data: the AEAD the two routers chose.
    pub cipher: Option<&'static str>,
    pub error: Option<String>,
    /// For failed targets: when the next attempt is due, relative to the snapshot.
    pub retry_in: Option<Duration>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectionState {
    Established,
    Pending,
    Connecting,
    Retrying,
    Failed,
    Waiting,
}

impl ConnectionState {
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectionState::Established => "established",
            ConnectionState::Pending => "pending",
            ConnectionState::Connecting => "connecting",
            ConnectionState::Retrying => "retrying",
            ConnectionState::Failed => "failed",
            ConnectionState::Waiting => "waiting",
        }
    }

    pub(crate) fn from_target(s: TargetState) -> Self {
        match s {
            TargetState::Connecting => ConnectionState::Connecting,
            TargetState::Retrying => ConnectionState::Retrying,
            TargetState::Failed => ConnectionState::Failed,
            TargetState::Waiting => ConnectionState::Waiting,
            TargetState::Connected => ConnectionState::Pending,
        }
    }
}
