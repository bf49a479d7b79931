//! weft's protocol and state logic, free of I/O.
//!
//! Every state machine here is driven by `handle_*(now, input)` calls and drained with
//! `poll_*`; time and randomness come from the caller. The daemon drives them from tokio, the
//! simulator (`weft-sim`) from a virtual clock. This crate must never depend on tokio, sockets
//! or the kernel (CI checks `cargo tree -p weft-core`).
#![forbid(unsafe_code)]

pub mod crypto;
pub mod dns;
pub mod fastdp;
pub mod ipam;
pub mod mesh;
pub mod node;
pub mod overlay;
pub mod rng;
