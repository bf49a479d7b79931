//! The router's use cases, behind one cloneable handle ([`Service`], in the manner of
//! mini-redis's `Db`): attach and detach containers, allocate, claim and release addresses,
//! register names, expose the host, take a status snapshot. The HTTP API (`http/`), the
//! Docker integration (`docker/`, the proxy and the plugin) and the CNI plugin's requests all
//! come through here, and get one typed error back ([`ServiceError`]); what that error means
//! in HTTP is decided in `http/` alone.
//!
//! Dependencies point one way: this module drives the control task (through its channel),
//! the attacher, the firewall task and the Docker Engine client; it knows nothing of who calls
//! it.

mod addresses;
mod containers;
mod docker;
mod mesh;
mod names;
mod report;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use ipnet::Ipv4Net;
use tokio::sync::{mpsc, oneshot};
use weft_core::ipam::{IpamError, RmPeerError};

use crate::attach::{AttachError, Attacher};
use crate::control::{ControlInput, DnsCmd, IpamCmd};
use crate::dataplane_msg::DataPlaneMsg;

pub use addresses::EXPOSE_IDENT;
pub use mesh::resolve_peers;

/// Why a use case failed. Each variant says what went wrong in words a user can act on; the
/// HTTP layer maps variants to status codes and nothing else does.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The request cannot be right as given (an address, name, option or action).
    #[error("{0}")]
    Invalid(String),
    /// What the request names does not exist (a container, a namespace, addresses).
    #[error("{0}")]
    NotFound(String),
    /// The request contradicts what is there (already attached as something else).
    #[error("{0}")]
    Conflict(String),
    /// The router was launched with `--no-dns`.
    #[error("weftDNS is disabled (launched with --no-dns)")]
    DnsDisabled,
    /// The router was launched with `--ipalloc-range ""`.
    #[error(
        "IP address allocation is disabled (--ipalloc-range \"\"): give explicit addresses like 10.32.0.1/12"
    )]
    IpamDisabled,
    /// The control task is gone: the router is on its way out.
    #[error("the router is shutting down")]
    ShuttingDown,
    #[error(transparent)]
    Ipam(#[from] IpamError),
    #[error(transparent)]
    RmPeer(#[from] RmPeerError),
    #[error(transparent)]
    Attach(#[from] AttachError),
    /// A name the DNS records refuse (outside the domain, say).
    #[error("{0}")]
    Name(String),
    /// A password change the router refuses.
    #[error("{0}")]
    Password(String),
    /// The addresses are on the bridge but the host firewall refused weft's rules for them.
    #[error("the addresses are on the bridge, but the firewall rules for them failed: {0}")]
    Firewall(#[source] crate::host::HostError),
    /// Writing a container's `/etc/hosts`.
    #[error("rewriting {path}: {source}")]
    HostsFile {
        path: String,
        source: std::io::Error,
    },
}

pub type Result<T, E = ServiceError> = std::result::Result<T, E>;

/// What the service is built from: the running router's parts and its fixed settings.
pub struct Parts {
    pub version: String,
    pub control: mpsc::Sender<ControlInput>,
    pub dataplane: mpsc::Sender<DataPlaneMsg>,
    pub attacher: Arc<Attacher>,
    pub interface: String,
    pub mtu: u32,
    pub default_port: u16,
    /// The IPAM default subnet (for `PUT /ip/{id}/{ip}`, `GET /ip/{id}`).
    pub default_subnet: Ipv4Net,
    pub ipam_enabled: bool,
    /// Launched with a password: control connections and (untrusted) data are encrypted.
    pub encryption: bool,
    /// The allocation range (`--ipalloc-range`), when allocation is on.
    pub ipam_range: Option<Ipv4Net>,
    pub dns: Option<Arc<crate::dns::DnsShared>>,
    /// The Docker Engine, when the router could reach it.
    pub docker: Option<Arc<crate::engine::Engine>>,
    pub docker_status: crate::engine::DockerStatus,
    /// weft's rules in the host firewall (exposed subnets' NAT and accept rules).
    pub firewall: crate::host::FirewallHandle,
}

/// A handle to the running router's use cases; cheap to clone, one per caller.
#[derive(Clone)]
pub struct Service {
    parts: Arc<Parts>,
}

impl std::ops::Deref for Service {
    type Target = Parts;
    fn deref(&self) -> &Parts {
        &self.parts
    }
}

impl Service {
    pub fn new(parts: Parts) -> Service {
        Service {
            parts: Arc::new(parts),
        }
    }

    /// Whether the allocator has a say over `net`'s address: addresses outside the range are
    /// the user's own business, answered at once, whatever the ring's state (as Weave did).
    pub fn allocator_owns(&self, net: &Ipv4Net) -> bool {
        self.ipam_range.is_some_and(|r| r.contains(&net.addr()))
    }

    /// The DNS domain (`weave.local.`), when DNS is on.
    pub fn domain(&self) -> Option<&str> {
        self.dns.as_ref().map(|d| d.config.domain.as_str())
    }

    /// Sends a request to the control task and waits for its answer.
    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> ControlInput) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        self.control
            .send(make(tx))
            .await
            .map_err(|_| ServiceError::ShuttingDown)?;
        rx.await.map_err(|_| ServiceError::ShuttingDown)
    }

    async fn ipam<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> IpamCmd) -> Result<T> {
        self.ask(|tx| ControlInput::Ipam(make(tx))).await
    }

    async fn dns_cmd<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> DnsCmd) -> Result<T> {
        if self.dns.is_none() {
            return Err(ServiceError::DnsDisabled);
        }
        self.ask(|tx| ControlInput::Dns(make(tx))).await
    }
}
