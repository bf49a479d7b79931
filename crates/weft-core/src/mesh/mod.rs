//! The peer mesh: control connections, topology gossip, routes and the connection maker, as one
//! sans-IO state machine ([`Router`]).
//!
//! The shell feeds it what happened (`handle_*`: a dial finished, bytes arrived, a socket
//! closed, a UDP heartbeat came in, time passed) and drains what it wants done
//! ([`Router::poll_action`]: dial, send bytes, close, send a UDP datagram) and what it wants
//! known ([`Router::poll_event`]: new data-plane routes, targets to persist, peers gone). It
//! never reads the clock or does I/O, so the simulator runs hundreds of them deterministically.
//!
//! Inside: `router` is the endpoint (connections by id, targets, topology, routes);
//! `connection` is one control connection's state machine with its own timer table;
//! `gossip` moves topology updates and the other channels' messages; `maker` decides
//! when to dial; `secure` is a connection's crypto.

mod connection;
mod gossip;
mod maker;
mod overlay;
mod router;
pub mod routes;
mod secure;
mod status;
pub mod topology;

pub use maker::{Backoff, TargetKey, TargetState};
pub use router::{
    Action, CryptoSettings, DataPlaneTable, Event, FULL_MESH_PEERS, Router, RouterConfig, Timing,
};
pub use status::{
    ConnectionState, ConnectionStatus, PeerConnectionStatus, PeerStatus, RouterStatus,
};

/// The shell's handle for one TCP control connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnId(pub u64);

impl std::fmt::Display for ConnId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "conn#{}", self.0)
    }
}
