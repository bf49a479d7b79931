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
    /// Weave's new-version check; weft never phones home, so it is always disabled (the
    /// object stays for scripts that read `.VersionCheck.Enabled`).
    #[serde(default)]
    pub version_check: VersionCheckReport,
    pub router: RouterReport,
    #[serde(rename = "IPAM", default, skip_serializing_if = "Option::is_none")]
    pub ipam: Option<IpamReport>,
    #[serde(rename = "DNS", default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<DnsReport>,
    /// The Docker API proxy (Weave's `Proxy`), when it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<ProxyReport>,
    /// The Docker network plugin (Weave's `Plugin`), when it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugin: Option<PluginReport>,
    /// weft's own: why the Docker integration is off, when Docker could not be reached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docker_unavailable: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct VersionCheckReport {
    pub enabled: bool,
    pub success: bool,
    pub new_version: String,
    /// Go's zero time, as Weave printed it with the check disabled.
    pub next_check_at: String,
}

impl Default for VersionCheckReport {
    fn default() -> Self {
        VersionCheckReport {
            enabled: false,
            success: false,
            new_version: String::new(),
            next_check_at: "0001-01-01T00:00:00Z".into(),
        }
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ProxyReport {
    /// Listen addresses, e.g. `unix:///run/weft/weft.sock`.
    pub addresses: Vec<String>,
    /// TLS on its TCP listeners.
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "TLS")]
    pub tls: Option<ProxyTls>,
}

/// The proxy's TLS, as a client needs to know it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ProxyTls {
    /// Clients need a certificate signed by the CA (`--tlsverify`).
    pub verify: bool,
    /// The CA certificate's path; its directory is what `DOCKER_CERT_PATH` names.
    pub ca_cert: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct PluginReport {
    pub driver_name: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DnsReport {
    pub domain: String,
    pub upstream: Vec<String>,
    pub address: String,
    #[serde(rename = "TTL")]
    pub ttl: u32,
    pub entries: Vec<DnsEntryReport>,
    /// weft's own: query counters.
    pub stats: BTreeMap<String, u64>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DnsEntryReport {
    pub hostname: String,
    pub origin: String,
    #[serde(rename = "ContainerID")]
    pub container_id: String,
    pub address: String,
    pub version: u64,
    pub tombstone: bool,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct IpamReport {
    /// As `Status:` in `weft status`.
    pub status: String,
    pub range: String,
    #[serde(rename = "RangeNumIPs")]
    pub range_num_ips: u64,
    #[serde(rename = "ActiveIPs")]
    pub active_ips: usize,
    pub default_subnet: String,
    pub entries: Vec<IpamEntryReport>,
    pub pending_claims: usize,
    pub pending_allocates: usize,
    /// weft's own: the ring's identity (hash of range and seeds), and its seeds.
    pub ring: Option<String>,
    pub seeds: Vec<String>,
    /// weft's own: peers whose IP allocation data was refused, and why.
    pub conflicts: Vec<String>,
    /// weft's own: space per owning peer.
    pub owners: Vec<IpamOwnerReport>,
    #[serde(rename = "UnreachableIPs")]
    pub unreachable_ips: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct IpamEntryReport {
    pub token: String,
    pub size: u64,
    pub peer: String,
    pub nickname: String,
    pub is_known_peer: bool,
    pub version: u32,
    pub free: u32,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct IpamOwnerReport {
    pub name: String,
    pub nick_name: String,
    #[serde(rename = "IPs")]
    pub ips: u64,
    pub reachable: bool,
    pub local: bool,
    /// Addresses in use, for the local peer.
    pub active: usize,
}

/// `POST /password`: one step of a password roll.
#[derive(Clone, Serialize, Deserialize)]
pub struct PasswordRequest {
    /// add | use | drop
    pub action: String,
    pub password: String,
}

impl std::fmt::Debug for PasswordRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PasswordRequest")
            .field("action", &self.action)
            .finish_non_exhaustive()
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PasswordResponse {
    /// Passwords now accepted, the one in use included.
    pub accepted: usize,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RouterReport {
    pub protocol: String,
    pub protocol_min_version: u8,
    pub protocol_max_version: u8,
    pub encryption: bool,
    /// Passwords accepted (more than one during a password roll).
    #[serde(default)]
    pub passwords_accepted: usize,
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
    /// weft's own: data paths to peers that are not neighbours, made while their containers
    /// and ours exchange traffic.
    #[serde(default)]
    pub direct_paths: Vec<DirectPathReport>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DirectPathReport {
    pub name: String,
    pub nick_name: String,
    /// fastdp | sleeve (not yet, or not possible: then the relay carries the traffic)
    pub overlay: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overlay_reason: Option<String>,
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
    /// With encrypted data: the key epoch in use (it advances with every rekey, mod 256).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_epoch: Option<u8>,
    /// With encrypted data: the AEAD sealing it, `aes-256-gcm` or `chacha20-poly1305`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cipher: Option<String>,
    /// Why data goes by sleeve although the fast path could be used (e.g. VXLAN blocked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overlay_reason: Option<String>,
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
    /// Weave's address arguments (see [`AddrSpec`]); none means `net:default`.
    #[serde(default)]
    pub addrs: Vec<String>,
    #[serde(default = "yes")]
    pub multicast_route: bool,
    /// The name to register in weftDNS (default: the netns name, or the container's own
    /// hostname if it is in the domain).
    #[serde(default)]
    pub hostname: Option<String>,
    /// Do not register any name.
    #[serde(default)]
    pub without_dns: bool,
    /// The interface's name inside the container (default `ethwe`).
    #[serde(default)]
    pub ifname: Option<String>,
    /// The name addresses are allocated under (default: the container reference, or the
    /// Docker container's id); CNI uses its container id.
    #[serde(default)]
    pub ident: Option<String>,
    /// Give the container a default route via the host's address on the bridge in the first
    /// address's subnet, exposing the host in that subnet if it is not yet (CNI does).
    #[serde(default)]
    pub gateway: bool,
    /// Hairpin mode on the container's bridge port.
    #[serde(default)]
    pub hairpin: bool,
    /// Routes to add in the container (CNI's `ipam.routes`).
    #[serde(default)]
    pub routes: Vec<RouteSpec>,
    /// Rewrite the container's `/etc/hosts` so its name resolves to its weft addresses
    /// (Weave's `attach --rewrite-hosts`).
    #[serde(default)]
    pub rewrite_hosts: bool,
    /// Extra `NAME:IP` lines for that `/etc/hosts` (Weave's `attach --add-host`).
    #[serde(default)]
    pub add_hosts: Vec<String>,
}

/// A route inside a container: to `dst`, via `gw` or straight out of the interface.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteSpec {
    pub dst: Ipv4Net,
    #[serde(default)]
    pub gw: Option<std::net::Ipv4Addr>,
}

impl AttachRequest {
    pub fn new(container: impl Into<String>) -> Self {
        AttachRequest {
            container: container.into(),
            addrs: Vec::new(),
            multicast_route: true,
            hostname: None,
            without_dns: false,
            ifname: None,
            ident: None,
            gateway: false,
            hairpin: false,
            routes: Vec::new(),
            rewrite_hosts: false,
            add_hosts: Vec::new(),
        }
    }
}

/// What `POST /attach` did.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AttachResponse {
    pub container: ContainerEntry,
    /// The addresses this request asked for, in order.
    pub addresses: Vec<Ipv4Net>,
    /// The default gateway given to the container, when asked for.
    #[serde(default)]
    pub gateway: Option<std::net::Ipv4Addr>,
}

/// One address argument of attach/detach, in Weave's grammar.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddrSpec {
    /// `CIDR` or `ip:CIDR`: exactly this address.
    Exact(Ipv4Net),
    /// `net:CIDR`: any free address in this subnet.
    Subnet(Ipv4Net),
    /// `net:default`: any free address in the default subnet.
    DefaultSubnet,
}

impl std::str::FromStr for AddrSpec {
    type Err = String;
    fn from_str(a: &str) -> Result<Self, String> {
        if a == "net:default" {
            return Ok(AddrSpec::DefaultSubnet);
        }
        if let Some(n) = a.strip_prefix("net:") {
            let net: Ipv4Net = n
                .parse()
                .map_err(|_| format!("{a:?} is not a subnet like net:10.32.0.0/12"))?;
            if net != net.trunc() {
                return Err(format!(
                    "{a:?}: a subnet must have all host bits zero (did you mean net:{}?)",
                    net.trunc()
                ));
            }
            return Ok(AddrSpec::Subnet(net));
        }
        let s = a.strip_prefix("ip:").unwrap_or(a);
        s.parse().map(AddrSpec::Exact).map_err(|_| {
            format!("{a:?} is not an IPv4 address with a prefix length, like 10.32.0.1/12 (or net:CIDR, net:default)")
        })
    }
}

fn yes() -> bool {
    true
}

/// `POST /detach`: no addresses means all of the container's weft addresses.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DetachRequest {
    #[serde(default)]
    pub container: String,
    /// Detach whatever was attached under this ident (CNI's container id), even when its
    /// namespace is gone, and release every address it holds. Detaching what is not
    /// attached is not an error then.
    #[serde(default)]
    pub ident: Option<String>,
    /// As for attach: exact addresses, or `net:` subnets meaning "my addresses in there".
    #[serde(default)]
    pub addrs: Vec<String>,
}

/// `POST /expose` and `POST /hide`: address arguments as for attach.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ExposeRequest {
    #[serde(default)]
    pub addrs: Vec<String>,
    /// A name for the host's overlay addresses in weftDNS.
    #[serde(default)]
    pub hostname: Option<String>,
    /// No NAT for these subnets (Weave's `--without-masquerade`).
    #[serde(default)]
    pub without_masquerade: bool,
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
