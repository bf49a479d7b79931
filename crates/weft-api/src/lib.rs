//! The router's HTTP API as both sides see it: request and report types, the text layouts of
//! `weft status`, and a client. Shared by the CLI, the daemon, the tests and (later) plugins.
#![forbid(unsafe_code)]

pub mod client;
pub mod npc;
pub mod render;
pub mod template;
pub mod types;

pub use client::{Client, ClientError};

/// Where the router's API listens unless told otherwise (as Weave's).
pub const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:6784";
