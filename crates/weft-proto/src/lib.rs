//! weft's wire formats, parsed into types once at the edge.
//!
//! Everything here is pure: bytes in, typed values out (or a [`DecodeError`]), and the reverse.
//! Decoders are reached by bytes from the network before any authentication, so they never
//! panic on any input; each has a property test (and later a fuzz target) proving it.
#![forbid(unsafe_code)]

pub mod control;
pub mod dns;
pub mod ether;
pub mod fastdp;
pub mod ipam;
pub mod offload;
pub mod peer;
pub mod sleeve;

pub use ether::{EtherFrame, Mac};
pub use peer::{BROADCAST_PEER, PeerName, PeerNameError};

/// Why a sequence of bytes from a peer or the kernel was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("{what} truncated: need {need} bytes, have {have}")]
    Truncated {
        what: &'static str,
        need: usize,
        have: usize,
    },
    #[error("{what} too long: {len} bytes (max {max})")]
    TooLong {
        what: &'static str,
        len: usize,
        max: usize,
    },
    #[error("malformed {what}: {detail}")]
    Malformed { what: &'static str, detail: String },
}
