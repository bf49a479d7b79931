//! The CNI plugin telling weft-kube's policy controller which address it just gave a pod,
//! and waiting until the node's rules know it: one JSON line each way on a unix socket.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

/// Where weft-kube npc listens (under the run directory the DaemonSet shares with the host).
pub const DEFAULT_SOCKET: &str = "/run/weft/npc.sock";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodAddress {
    pub namespace: String,
    pub name: String,
    pub ip: Ipv4Addr,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    /// The rules in force now count the pod at this address.
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}
