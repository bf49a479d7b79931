//! JSON shapes of the HTTP API. Field names of the report follow Weave's `weave report` so
//! that tooling written against it keeps working (`Router.Peers[].NickName`, ...).

use std::collections::BTreeMap;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Report {
    pub ready: bool,
    pub version: String,
    pub router: RouterReport,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RouterReport {
    pub protocol: String,
    pub protocol_min_version: u8,
    pub protocol_max_version: u8,
    pub encryption: bool,
    pub peer_discovery: bool,
    pub name: String,
    pub nick_name: String,
    pub port: u16,
    pub peers: Vec<PeerReport>,
    pub unicast_routes: Vec<UnicastRoute>,
    pub broadcast_routes: Vec<BroadcastRoute>,
    pub connections: Vec<ConnectionReport>,
    pub termination_count: u64,
    pub targets: Vec<String>,
    pub trusted_subnets: Vec<String>,
    pub interface: String,
    #[serde(rename = "MACs")]
    pub macs: Vec<MacReport>,
    /// weft's own: the overlay MTU containers get.
    #[serde(rename = "MTU")]
    pub mtu: u32,
    /// weft's own: data-plane and protocol counters.
    pub stats: BTreeMap<String, u64>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct PeerReport {
    pub name: String,
    pub nick_name: String,
    #[serde(rename = "UID")]
    pub uid: u64,
    pub version: u64,
    pub connections: Vec<PeerConnectionReport>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct PeerConnectionReport {
    pub name: String,
    pub nick_name: String,
    pub address: String,
    pub outbound: bool,
    pub established: bool,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct UnicastRoute {
    pub dest: String,
    pub via: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct BroadcastRoute {
    pub source: String,
    pub via: Vec<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ConnectionReport {
    pub address: String,
    pub outbound: bool,
    /// established | pending | connecting | retrying | failed | waiting
    pub state: String,
    /// As `weft status connections` prints it after the state.
    pub info: String,
    pub attrs: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct MacReport {
    pub mac: String,
    pub name: String,
    pub nick_name: String,
    /// Seconds since the MAC was last seen.
    pub last_seen_secs: u64,
}

/// `POST /attach`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AttachRequest {
    /// A PID, a namespace path, or an `ip netns` name.
    pub container: String,
    pub cidrs: Vec<Ipv4Net>,
    #[serde(default = "yes")]
    pub multicast_route: bool,
}

fn yes() -> bool {
    true
}

/// `POST /detach`: no CIDRs means all of the container's weft addresses.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DetachRequest {
    pub container: String,
    #[serde(default)]
    pub cidrs: Vec<Ipv4Net>,
}

/// One container on the overlay, as `weft ps` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerEntry {
    pub id: String,
    pub mac: String,
    pub cidrs: Vec<Ipv4Net>,
}

/// `POST /connect` and `POST /forget` (JSON; forms with `peer=` keys are accepted too).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PeersRequest {
    pub peers: Vec<String>,
    #[serde(default)]
    pub replace: bool,
}
