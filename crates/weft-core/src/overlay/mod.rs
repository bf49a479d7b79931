//! The data plane's decisions: where each Ethernet frame goes.
//!
//! [`Forwarder`] learns which peer each MAC lives behind, and turns frames from local
//! containers and sleeve datagrams from peers into "send this datagram there" and "inject this
//! frame into the local bridge". It holds no sockets; the shell supplies an [`Output`].

mod forwarder;
pub mod fragment;
mod mac_cache;
pub mod pmtu;

pub use forwarder::{Forwarder, ForwarderStats, MAX_FRAME, Output};
pub use mac_cache::{MacCache, MacOwner};
