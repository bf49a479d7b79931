//! The CLI's commands that talk to the running router, one module per family: the router
//! and its mesh, containers and addresses, weftDNS, and Docker clients. Each takes the API
//! client and prints what Weave's command printed.

pub mod containers;
pub mod dns;
pub mod docker;
pub mod router;

use anyhow::{Context, Result};
use ipnet::Ipv4Net;

pub fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// Addresses as Weave printed them: space-separated, without prefix lengths.
pub fn ips(cidrs: &[Ipv4Net]) -> String {
    cidrs
        .iter()
        .map(|c| c.addr().to_string())
        .collect::<Vec<_>>()
        .join(" ")
}

pub fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
