//! Plugging containers into the overlay (`weft attach`, `detach`, `ps`).
//!
//! A container is anything with a network namespace: an `ip netns` name, a namespace file, or
//! a PID. Attaching creates a veth pair, plugs the host end (`vethwl…`) into the weft bridge and
//! moves the other end into the container as `ethwe` with the requested addresses, the overlay
//! MTU and (unless disabled) a multicast route. Any failure undoes what was done: a container
//! is either fully attached or untouched.
//!
//! Containers are recognised by their namespace's inode, so attaching by PID and detaching by
//! name finds the same one. Attachments are persisted; ones whose namespace has gone are
//! dropped the next time the registry is looked at.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use ipnet::{IpNet, Ipv4Net};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};
use weft_api::types::ContainerEntry;
use weft_linux::netlink::{Link, LinkConfig, Netlink};
use weft_linux::netns::{self, Netns};
use weft_linux::sysctl;
use weft_proto::Mac;

use crate::state::StateDir;

pub const CONTAINER_IFNAME: &str = "ethwe";
const FILE: &str = "containers.json";

#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Internal(String),
}

impl From<weft_linux::Error> for AttachError {
    fn from(e: weft_linux::Error) -> Self {
        AttachError::Internal(e.to_string())
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Attachment {
    pub id: String,
    pub netns: PathBuf,
    /// Device and inode of the namespace when attached.
    pub ns_id: (u64, u64),
    pub host_if: String,
    pub mac: String,
    pub cidrs: Vec<Ipv4Net>,
    /// The name registered in weftDNS for the container's addresses.
    #[serde(default)]
    pub hostname: Option<String>,
    /// The interface's name inside the container (`ethwe`; CNI chooses its own).
    #[serde(default = "default_ifname")]
    pub ifname: String,
    /// Hairpin mode on the bridge port (restored if the port has to be plugged in again).
    #[serde(default)]
    pub hairpin: bool,
    /// The `/etc/netns/NAME/hosts` weft wrote for an `ip netns` container (`--rewrite-hosts`),
    /// removed with the attachment.
    #[serde(default)]
    pub etc_hosts: Option<PathBuf>,
}

fn default_ifname() -> String {
    CONTAINER_IFNAME.to_string()
}

/// How to plug a container in, beyond its addresses.
#[derive(Clone, Debug)]
pub struct PlugOptions {
    /// The interface's name inside the container.
    pub ifname: String,
    /// Route 224.0.0.0/4 to the interface (weft-wait waits for it, so it comes last).
    pub multicast_route: bool,
    /// Hairpin mode on the bridge port (CNI's `hairpinMode`).
    pub hairpin: bool,
    /// Routes inside the container (a default route via the host, CNI's `ipam.routes`).
    pub routes: Vec<weft_api::types::RouteSpec>,
}

pub struct Attacher {
    nl: Netlink,
    bridge_index: u32,
    mtu: u32,
    host_ns: (u64, u64),
    /// The machine's own namespace (PID 1's): never plugged, even when the router runs in
    /// another one (a test bed), whatever the caller asked.
    init_ns: Option<(u64, u64)>,
    state: StateDir,
    entries: tokio::sync::Mutex<BTreeMap<String, Attachment>>,
}

/// A container reference resolved to an open namespace.
struct Target {
    id: String,
    ns: Netns,
    ns_id: (u64, u64),
}

fn open_target(spec: &str) -> Result<Target, AttachError> {
    let path = netns::resolve(spec).map_err(|e| AttachError::NotFound(e.to_string()))?;
    let ns = Netns::open(&path).map_err(|e| AttachError::NotFound(e.to_string()))?;
    let ns_id = ns.id()?;
    Ok(Target {
        id: spec.to_string(),
        ns,
        ns_id,
    })
}

fn namespace_alive(a: &Attachment) -> bool {
    Netns::open(&a.netns)
        .and_then(|ns| ns.id())
        .is_ok_and(|id| id == a.ns_id)
}

/// Rejects addresses that cannot name a host: the broadcast address of their subnet (unless
/// the subnet is a /31 or /32), unspecified, loopback and multicast addresses. The network
/// address is accepted, as Weave did (Linux takes it as any other; see [`network_address`]).
pub fn check_cidr(c: &Ipv4Net) -> Result<(), AttachError> {
    if c.prefix_len() < 31 && c.addr() == c.broadcast() {
        return Err(AttachError::Invalid(format!(
            "{c}: {} is the broadcast address of its subnet; choose a host address",
            c.addr()
        )));
    }
    if c.addr().is_unspecified() || c.addr().is_loopback() || c.addr().is_multicast() {
        return Err(AttachError::Invalid(format!(
            "{c} is not a usable host address"
        )));
    }
    if let Some(w) = network_address(c) {
        warn!("{w}");
    }
    Ok(())
}

/// The warning for an address that is its subnet's network address (accepted, but some
/// hosts treat it as a broadcast address).
pub fn network_address(c: &Ipv4Net) -> Option<String> {
    (c.prefix_len() < 31 && c.addr() == c.network()).then(|| {
        format!(
            "{} is the network address of {}: accepted, but some systems will not talk to it",
            c.addr(),
            c.trunc()
        )
    })
}

/// A veth pair whose `host_if` end is up on the bridge (an earlier one of that name is
/// replaced); the other end is the caller's to move into a container. Nothing is left behind
/// on failure.
pub async fn bridged_veth(
    nl: &Netlink,
    bridge_index: u32,
    host_if: &str,
    peer_if: &str,
    mtu: u32,
) -> Result<(Link, Link), weft_linux::Error> {
    // A leftover from an earlier container of that id or endpoint that has since gone.
    if let Some(l) = nl.link_by_name(host_if).await? {
        nl.delete_link(l.index).await?;
    }
    let (host, peer) = nl.create_veth(host_if, peer_if, mtu).await?;
    let _ = sysctl::disable_ipv6(host_if);
    let up = nl
        .configure(
            host.index,
            LinkConfig {
                master: Some(bridge_index),
                up: true,
                ..Default::default()
            },
        )
        .await;
    if let Err(e) = up {
        // Deleting one end of a veth pair deletes both.
        let _ = nl.delete_link(host.index).await;
        return Err(e);
    }
    Ok((host, peer))
}

fn host_ifname(id: &str) -> (String, String) {
    // FNV-1a: stable across runs, and 8 hex digits keep names within IFNAMSIZ.
    let mut h: u32 = 0x811c_9dc5;
    for b in id.bytes() {
        h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
    }
    (format!("vethwl{h:08x}"), format!("vethwg{h:08x}"))
}

impl Attacher {
    pub fn new(
        nl: Netlink,
        bridge_index: u32,
        mtu: u32,
        state: StateDir,
    ) -> Result<Self, AttachError> {
        let host_ns = Netns::current()?.id()?;
        let init_ns = Netns::open(std::path::Path::new("/proc/1/ns/net"))
            .and_then(|n| n.id())
            .ok();
        let entries: Vec<Attachment> = state
            .load_json(FILE)
            .map_err(|e| AttachError::Internal(e.to_string()))?;
        Ok(Attacher {
            nl,
            bridge_index,
            mtu,
            host_ns,
            init_ns,
            state,
            entries: tokio::sync::Mutex::new(
                entries.into_iter().map(|a| (a.id.clone(), a)).collect(),
            ),
        })
    }

    fn save(&self, entries: &BTreeMap<String, Attachment>) {
        let list: Vec<&Attachment> = entries.values().collect();
        if let Err(e) = self.state.save_json(FILE, &list) {
            warn!("could not persist attached containers: {e}");
        }
    }

    /// Drops entries whose namespace is gone; returns them.
    fn prune(entries: &mut BTreeMap<String, Attachment>) -> Vec<Attachment> {
        let gone: Vec<String> = entries
            .values()
            .filter(|a| !namespace_alive(a))
            .map(|a| a.id.clone())
            .collect();
        gone.iter().filter_map(|id| entries.remove(id)).collect()
    }

    /// Forgets containers whose namespace disappeared (and removes their host-side link if
    /// the kernel left it).
    pub async fn reap(&self) -> Vec<Attachment> {
        let mut entries = self.entries.lock().await;
        let gone = Self::prune(&mut entries);
        if !gone.is_empty() {
            self.save(&entries);
            for a in &gone {
                info!(container = %a.id, "container gone; detached");
                remove_etc_hosts(a);
                if let Ok(Some(l)) = self.nl.link_by_name(&a.host_if).await {
                    let _ = self.nl.delete_link(l.index).await;
                }
            }
        }
        gone
    }

    /// Opens a container reference and refuses the host's own namespace.
    fn target(&self, container: &str) -> Result<Target, AttachError> {
        let t = open_target(container)?;
        if t.ns_id == self.host_ns || Some(t.ns_id) == self.init_ns {
            warn!(container = %container, "refused to plug an interface into the host's own network namespace");
            return Err(AttachError::Invalid(format!(
                "container {container} is running in the host network namespace; weft cannot attach it"
            )));
        }
        Ok(t)
    }

    /// The name weft files a container under (for IP allocation): the name it was first
    /// attached by, or the reference given if it is not attached yet.
    pub async fn identify(&self, container: &str) -> Result<String, AttachError> {
        let t = self.target(container)?;
        let entries = self.entries.lock().await;
        Ok(entries
            .values()
            .find(|a| a.ns_id == t.ns_id && namespace_alive(a))
            .map_or(t.id, |a| a.id.clone()))
    }

    async fn bridge(&self) -> Option<Link> {
        let links = self.nl.links().await.ok()?;
        links.into_iter().find(|l| l.index == self.bridge_index)
    }

    /// At launch: plugs attached containers' ports back into the bridge when it was deleted
    /// and made anew while the router was away (their veths outlive it, unplugged), with
    /// hairpin mode as they had it, and gives them the overlay MTU when it differs from theirs
    /// (a router relaunched with another mode or `--mtu`): frames larger than the bridge's
    /// ports take would otherwise be dropped silently.
    pub async fn restore_ports(&self) {
        for a in self.attachments().await {
            let Ok(Some(l)) = self.nl.link_by_name(&a.host_if).await else {
                continue;
            };
            if l.master != Some(self.bridge_index) || !l.up {
                let plug = LinkConfig {
                    master: Some(self.bridge_index),
                    up: true,
                    ..Default::default()
                };
                match self.nl.configure(l.index, plug).await {
                    Ok(()) => {
                        if a.hairpin {
                            let _ = sysctl::hairpin(&a.host_if);
                        }
                        warn!(container = %a.id, port = %a.host_if, "the container's port was off the bridge (the bridge was deleted or the port set down); plugged it back in");
                    }
                    Err(e) => {
                        warn!(container = %a.id, "plugging the container's port back into the bridge: {e}")
                    }
                }
            }
            if l.mtu == self.mtu {
                continue;
            }
            let mtu = self.mtu;
            let set = async {
                self.nl
                    .configure(
                        l.index,
                        LinkConfig {
                            mtu: Some(mtu),
                            ..Default::default()
                        },
                    )
                    .await?;
                let ns = Netns::open(&a.netns)?;
                let ifname = a.ifname.clone();
                netns::run_in(&ns, move || async move {
                    let nl = Netlink::new()?;
                    let l = nl.require_link(&ifname).await?;
                    nl.configure(
                        l.index,
                        LinkConfig {
                            mtu: Some(mtu),
                            ..Default::default()
                        },
                    )
                    .await
                })
                .await?
            };
            match set.await {
                Ok(()) => {
                    info!(container = %a.id, from = l.mtu, to = mtu, "container MTU changed to the overlay's")
                }
                Err(e) => warn!(container = %a.id, "changing the container's MTU to {mtu}: {e}"),
            }
        }
    }

    /// At launch: containers plugged into the bridge that the registry does not know (its file
    /// went with the state directory) are found as Weave found them, through the bridge's veth
    /// ports and the namespaces of `ip netns` and of running processes, and registered again
    /// under their `ip netns` name, their Docker id (`docker_ids`, by PID) or their PID, so
    /// their addresses are reclaimed, listed and released as any. Returns how many.
    pub async fn adopt_unknown(&self, docker_ids: &BTreeMap<u32, String>) -> usize {
        let mut entries = self.entries.lock().await;
        let mut orphans = self.unknown_ports(&entries).await;
        if orphans.is_empty() {
            return 0;
        }
        let mut adopted = 0;
        let mut seen = std::collections::BTreeSet::from([self.host_ns]);
        for (id, path) in namespace_candidates(docker_ids) {
            if orphans.is_empty() {
                break;
            }
            let Ok(ns) = Netns::open(&path) else { continue };
            let Ok(ns_id) = ns.id() else { continue };
            if !seen.insert(ns_id) {
                continue;
            }
            let fd = std::os::fd::AsRawFd::as_raw_fd(ns.file());
            let Ok(Some(nsid)) = self.nl.nsid_of(fd).await else {
                continue;
            };
            let Some(k) = orphans.iter().position(|l| l.peer_netnsid == Some(nsid)) else {
                continue;
            };
            let port = orphans.swap_remove(k);
            let Some(inside) = port.peer_index else {
                continue;
            };
            let found = netns::run_in(&ns, move || async move {
                let nl = Netlink::new()?;
                let link = nl.links().await?.into_iter().find(|l| l.index == inside);
                let addrs = nl.addresses(Some(inside)).await?;
                Ok::<_, weft_linux::Error>((link, addrs))
            })
            .await;
            let Ok(Ok((Some(link), addrs))) = found else {
                continue;
            };
            let cidrs: Vec<Ipv4Net> = addrs
                .into_iter()
                .filter_map(|(_, n)| match n {
                    IpNet::V4(v4) => Some(v4),
                    IpNet::V6(_) => None,
                })
                .collect();
            let a = Attachment {
                id: id.clone(),
                netns: path,
                ns_id,
                host_if: port.name.clone(),
                mac: link.mac.map(|m| Mac(m).to_string()).unwrap_or_default(),
                cidrs,
                hostname: None,
                ifname: link.name,
                hairpin: sysctl::hairpin_enabled(&port.name),
                etc_hosts: None,
            };
            warn!(container = %id, port = %a.host_if, cidrs = ?a.cidrs, "found a container on the bridge that weft had no record of (its state was lost); registered it again");
            entries.insert(id, a);
            adopted += 1;
        }
        if adopted > 0 {
            self.save(&entries);
        }
        adopted
    }

    /// Container ports on the bridge (or left off it) that no attachment accounts for.
    async fn unknown_ports(&self, entries: &BTreeMap<String, Attachment>) -> Vec<Link> {
        let Ok(links) = self.nl.links().await else {
            return Vec::new();
        };
        links
            .into_iter()
            .filter(|l| {
                l.kind.as_deref() == Some("veth")
                    && l.peer_netnsid.is_some()
                    && (l.master == Some(self.bridge_index) || l.name.starts_with("vethwl"))
                    && !entries.values().any(|a| a.host_if == l.name)
            })
            .collect()
    }

    /// Whether [`Attacher::adopt_unknown`] has anything to do.
    pub async fn has_unknown_ports(&self) -> bool {
        let entries = self.entries.lock().await;
        !self.unknown_ports(&entries).await.is_empty()
    }

    /// Writes `text` as the `/etc/hosts` of the attached container `ident`: through
    /// `/proc/PID/root` for a process's namespace, as `/etc/netns/NAME/hosts` (which
    /// `ip netns exec` puts in place) for an `ip netns` one.
    pub async fn write_etc_hosts(&self, ident: &str, text: &str) -> Result<PathBuf, AttachError> {
        let mut entries = self.entries.lock().await;
        let a = entries
            .get_mut(ident)
            .ok_or_else(|| AttachError::NotFound(format!("{ident} is not attached")))?;
        let (path, ours) = etc_hosts_path(&a.netns).ok_or_else(|| {
            AttachError::Invalid(format!(
                "cannot rewrite the /etc/hosts of {ident} (namespace {}): it has no file system of its own (that would be the host's /etc/hosts); attach it by its ip netns name, or by the PID of a process in its own mount namespace, to use --rewrite-hosts",
                a.netns.display()
            ))
        })?;
        if ours && let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| AttachError::Internal(format!("creating {}: {e}", dir.display())))?;
        }
        std::fs::write(&path, text)
            .map_err(|e| AttachError::Internal(format!("writing {}: {e}", path.display())))?;
        if ours {
            a.etc_hosts = Some(path.clone());
            self.save(&entries);
        }
        Ok(path)
    }

    /// Every address the live containers hold, by the ident they are allocated under.
    pub async fn held(&self) -> Vec<(String, Ipv4Net)> {
        self.attachments()
            .await
            .into_iter()
            .flat_map(|a| {
                let id = a.id;
                a.cidrs.into_iter().map(move |c| (id.clone(), c))
            })
            .collect()
    }

    /// The attachment filed under `ident`.
    pub async fn lookup_ident(&self, ident: &str) -> Option<Attachment> {
        self.entries.lock().await.get(ident).cloned()
    }

    /// The attachment of a container, if it is attached.
    pub async fn lookup(&self, container: &str) -> Result<Option<Attachment>, AttachError> {
        let t = open_target(container)?;
        let entries = self.entries.lock().await;
        Ok(entries.values().find(|a| a.ns_id == t.ns_id).cloned())
    }

    /// Plugs `container` in with `cidrs` (adding addresses if it is plugged in already).
    pub async fn attach(
        &self,
        container: &str,
        ident: &str,
        cidrs: Vec<Ipv4Net>,
        opts: PlugOptions,
        hostname: Option<String>,
    ) -> Result<ContainerEntry, AttachError> {
        if cidrs.is_empty() {
            return Err(AttachError::Invalid(
                "no address given: weft attach needs at least one CIDR (e.g. 10.32.0.1/12)".into(),
            ));
        }
        for c in &cidrs {
            check_cidr(c)?;
        }
        let mut t = self.target(container)?;
        t.id = ident.to_string();
        let mut entries = self.entries.lock().await;
        // Entries of vanished containers are left for the reaper, which also releases their
        // addresses; here they simply do not count.
        let existing = entries
            .values()
            .find(|a| a.ns_id == t.ns_id && namespace_alive(a))
            .cloned();
        for c in &cidrs {
            let owner = entries.values().find(|a| {
                a.ns_id != t.ns_id
                    && a.cidrs.iter().any(|o| o.addr() == c.addr())
                    && namespace_alive(a)
            });
            if let Some(o) = owner {
                return Err(AttachError::Conflict(format!(
                    "address {} is already in use by container {}",
                    c.addr(),
                    o.id
                )));
            }
        }
        let entry = match existing {
            Some(mut a) => {
                let new: Vec<Ipv4Net> = cidrs
                    .iter()
                    .filter(|c| !a.cidrs.contains(c))
                    .copied()
                    .collect();
                add_addresses(&t.ns, &a.ifname, new.clone()).await?;
                a.cidrs.extend(new);
                if hostname.is_some() {
                    a.hostname = hostname;
                }
                a
            }
            None => {
                let mut a = self.plug(&t, &cidrs, opts).await?;
                a.hostname = hostname;
                a
            }
        };
        let out = ContainerEntry {
            id: entry.id.clone(),
            mac: entry.mac.clone(),
            cidrs: entry.cidrs.clone(),
        };
        info!(container = %entry.id, cidrs = ?entry.cidrs, "attached");
        entries.insert(entry.id.clone(), entry);
        self.save(&entries);
        Ok(out)
    }

    /// Creates the veth pair and configures both ends; undoes everything on failure.
    async fn plug(
        &self,
        t: &Target,
        cidrs: &[Ipv4Net],
        opts: PlugOptions,
    ) -> Result<Attachment, AttachError> {
        let (host_if, temp_if) = host_ifname(&t.id);
        let (host, peer) =
            bridged_veth(&self.nl, self.bridge_index, &host_if, &temp_if, self.mtu).await?;
        let result = async {
            if opts.hairpin {
                sysctl::hairpin(&host_if)?;
            }
            self.nl
                .move_to_netns(peer.index, std::os::fd::AsRawFd::as_raw_fd(t.ns.file()))
                .await?;
            let mac = Mac::from_random(crate::random_u64());
            let cidrs = cidrs.to_vec();
            let (mtu, opts) = (self.mtu, opts.clone());
            let (ifname, addrs) = (opts.ifname.clone(), cidrs.clone());
            netns::run_in(&t.ns, move || {
                configure_inside(temp_if, mac, mtu, cidrs, opts)
            })
            .await??;
            // The bridge drops what a port sends until the port forwards, which it does only
            // once the kernel has seen the container's end come up: announce after that.
            wait_forwarding(&host_if).await;
            netns::run_in(&t.ns, move || async move { announce(&ifname, mac, &addrs) }).await?;
            Ok::<Mac, AttachError>(mac)
        }
        .await;
        match result {
            Ok(mac) => Ok(Attachment {
                id: t.id.clone(),
                netns: t.ns.path().to_path_buf(),
                ns_id: t.ns_id,
                host_if,
                mac: mac.to_string(),
                cidrs: cidrs.to_vec(),
                hostname: None,
                ifname: opts.ifname,
                hairpin: opts.hairpin,
                etc_hosts: None,
            }),
            Err(e) => {
                // Deleting one end of a veth pair deletes both, wherever the other end is.
                if let Err(de) = self.nl.delete_link(host.index).await {
                    warn!("cleaning up {host_if} after a failed attach: {de}");
                }
                Err(e)
            }
        }
    }

    /// Removes `remove` (all of the container's addresses if `None`); returns what was
    /// removed, under the container's ident.
    pub async fn detach(
        &self,
        container: &str,
        remove: Option<Vec<Ipv4Net>>,
    ) -> Result<(String, Vec<Ipv4Net>), AttachError> {
        let t = open_target(container)?;
        let mut entries = self.entries.lock().await;
        let Some(a) = entries.values().find(|a| a.ns_id == t.ns_id).cloned() else {
            return Err(AttachError::NotFound(format!(
                "container {container} is not attached to weft"
            )));
        };
        let remove: Vec<Ipv4Net> = match remove {
            None => a.cidrs.clone(),
            Some(list) => {
                for c in &list {
                    if !a.cidrs.contains(c) {
                        return Err(AttachError::Invalid(format!(
                            "container {container} does not have address {c}"
                        )));
                    }
                }
                list
            }
        };
        let keep: Vec<Ipv4Net> = a
            .cidrs
            .iter()
            .filter(|c| !remove.contains(c))
            .copied()
            .collect();
        let (rm, delete, ifname) = (remove.clone(), keep.is_empty(), a.ifname.clone());
        netns::run_in(&t.ns, move || unconfigure_inside(ifname, rm, delete)).await??;
        if keep.is_empty() {
            entries.remove(&a.id);
            remove_etc_hosts(&a);
        } else if let Some(e) = entries.get_mut(&a.id) {
            e.cidrs = keep;
        }
        self.save(&entries);
        info!(container = %a.id, cidrs = ?remove, "detached");
        Ok((a.id, remove))
    }

    /// Detaches what was attached under `ident`, whether or not its namespace still exists
    /// (CNI's DEL may come after the runtime removed it); `None` if nothing was.
    pub async fn detach_ident(&self, ident: &str) -> Option<Attachment> {
        let mut entries = self.entries.lock().await;
        let a = entries.remove(ident)?;
        remove_etc_hosts(&a);
        self.save(&entries);
        drop(entries);
        if namespace_alive(&a)
            && let Ok(ns) = Netns::open(&a.netns)
        {
            let ifname = a.ifname.clone();
            let removed = netns::run_in(&ns, move || unconfigure_inside(ifname, Vec::new(), true))
                .await
                .map_err(AttachError::from)
                .and_then(|r| r);
            if let Err(e) = removed {
                warn!(container = %a.id, "removing its interface: {e}");
            }
        }
        // Gone with the namespace's end, unless the kernel has not got round to it.
        if let Ok(Some(l)) = self.nl.link_by_name(&a.host_if).await {
            let _ = self.nl.delete_link(l.index).await;
        }
        info!(container = %a.id, cidrs = ?a.cidrs, "detached");
        Some(a)
    }

    /// Attached containers, optionally only those named.
    pub async fn list(&self, only: &[String]) -> Result<Vec<ContainerEntry>, AttachError> {
        let entries = self.entries.lock().await;
        let wanted: Option<Vec<(u64, u64)>> = if only.is_empty() {
            None
        } else {
            Some(
                only.iter()
                    .map(|s| open_target(s).map(|t| t.ns_id))
                    .collect::<Result<_, _>>()?,
            )
        };
        Ok(entries
            .values()
            .filter(|a| wanted.as_ref().is_none_or(|w| w.contains(&a.ns_id)))
            .filter(|a| namespace_alive(a))
            .map(|a| ContainerEntry {
                id: a.id.clone(),
                mac: a.mac.clone(),
                cidrs: a.cidrs.clone(),
            })
            .collect())
    }

    /// Every live attachment.
    pub async fn attachments(&self) -> Vec<Attachment> {
        let entries = self.entries.lock().await;
        entries
            .values()
            .filter(|a| namespace_alive(a))
            .cloned()
            .collect()
    }

    /// The host's own addresses on the weft bridge (`weft expose`), and the bridge's MAC.
    pub async fn exposed(&self) -> Result<(String, Vec<Ipv4Net>), AttachError> {
        let addrs = self.nl.addresses(Some(self.bridge_index)).await?;
        let mac = self
            .nl
            .links()
            .await?
            .into_iter()
            .find(|l| l.index == self.bridge_index)
            .and_then(|l| l.mac)
            .map(|m| Mac(m).to_string())
            .unwrap_or_default();
        let nets = addrs
            .into_iter()
            .filter_map(|(_, n)| match n {
                IpNet::V4(v4) => Some(v4),
                IpNet::V6(_) => None,
            })
            .collect();
        Ok((mac, nets))
    }

    /// Gives the host these addresses on the bridge, so it can reach the containers.
    pub async fn expose(&self, cidrs: &[Ipv4Net]) -> Result<(), AttachError> {
        let (_, have) = self.exposed().await?;
        let mut added = Vec::new();
        for c in cidrs {
            check_cidr(c)?;
            if !have.contains(c) {
                self.nl
                    .add_address(self.bridge_index, IpNet::V4(*c))
                    .await?;
                added.push(*c);
            }
        }
        if let Some(bridge) = self.bridge().await {
            announce(&bridge.name, Mac(bridge.mac.unwrap_or_default()), &added);
        }
        info!(cidrs = ?cidrs, "exposed the host on the overlay");
        Ok(())
    }

    /// Removes the host's addresses from the bridge.
    pub async fn hide(&self, cidrs: &[Ipv4Net]) -> Result<(), AttachError> {
        for c in cidrs {
            self.nl
                .del_address(self.bridge_index, IpNet::V4(*c))
                .await?;
        }
        Ok(())
    }
}

/// Where the `/etc/hosts` of the container in namespace `netns` is, and whether it is a file
/// weft makes (and removes again).
pub fn etc_hosts_path(netns: &std::path::Path) -> Option<(PathBuf, bool)> {
    if let Some(pid) = netns::pid_of(netns) {
        // A process whose root is the host's (one started with `ip netns exec`, say, even
        // though that has a mount namespace of its own) sees the host's own /etc/hosts
        // there: never that. Unknown counts as shared.
        let root = |p: &str| std::fs::metadata(p).map(|m| (m.dev(), m.ino())).ok();
        let theirs = root(&format!("/proc/{pid}/root/"))?;
        if Some(theirs) == root("/") || Some(theirs) == root("/proc/1/root/") {
            return None;
        }
        return Some((PathBuf::from(format!("/proc/{pid}/root/etc/hosts")), false));
    }
    let name = netns.strip_prefix(netns::NAMED_NETNS_DIR).ok()?.to_str()?;
    (!name.is_empty() && !name.contains('/'))
        .then(|| (PathBuf::from(format!("/etc/netns/{name}/hosts")), true))
}

/// `weft reset`: removes what weft wrote outside its state directory for the attachments
/// saved there (the hosts files of `--rewrite-hosts`), before the state goes.
pub fn forget_saved(state: &StateDir) {
    let saved: Vec<Attachment> = state.load_json(FILE).unwrap_or_default();
    for a in &saved {
        remove_etc_hosts(a);
    }
}

fn remove_etc_hosts(a: &Attachment) {
    if let Some(p) = &a.etc_hosts {
        let _ = std::fs::remove_file(p);
        if let Some(dir) = p.parent() {
            // Only if empty: someone else's files there stay.
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// Where a container's namespace may be: `ip netns` names first (a namespace may have no
/// process), then every process, lowest PID first (a container's first process).
fn namespace_candidates(docker_ids: &BTreeMap<u32, String>) -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    if let Ok(dir) = std::fs::read_dir(netns::NAMED_NETNS_DIR) {
        let mut names: Vec<String> = dir
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        names.sort();
        for n in names {
            let path = std::path::Path::new(netns::NAMED_NETNS_DIR).join(&n);
            out.push((n, path));
        }
    }
    let mut pids: Vec<u32> = std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    pids.sort_unstable();
    for pid in pids {
        let id = docker_ids
            .get(&pid)
            .cloned()
            .unwrap_or_else(|| pid.to_string());
        out.push((id, PathBuf::from(format!("/proc/{pid}/ns/net"))));
    }
    out
}

async fn configure_inside(
    temp: String,
    mac: Mac,
    mtu: u32,
    cidrs: Vec<Ipv4Net>,
    opts: PlugOptions,
) -> Result<(), AttachError> {
    let nl = Netlink::new()?;
    let ifname = opts.ifname.as_str();
    if nl.link_by_name(ifname).await?.is_some() {
        return Err(AttachError::Conflict(format!(
            "the container already has an interface named {ifname} that weft did not create"
        )));
    }
    let l = nl.require_link(&temp).await?;
    // Rename needs the link down, which a freshly moved veth is.
    nl.configure(
        l.index,
        LinkConfig {
            name: Some(ifname),
            mac: Some(mac.0),
            mtu: Some(mtu),
            ..Default::default()
        },
    )
    .await?;
    let _ = sysctl::disable_ipv6(ifname);
    let _ = sysctl::fast_arp(ifname);
    let _ = sysctl::accept_arp(ifname);
    nl.configure(
        l.index,
        LinkConfig {
            up: true,
            ..Default::default()
        },
    )
    .await?;
    for c in &cidrs {
        nl.add_address(l.index, IpNet::V4(*c)).await?;
    }
    let mut reached: Vec<Ipv4Addr> = Vec::new();
    for r in &opts.routes {
        let added = match r.gw {
            Some(gw) => {
                // A gateway outside the container's subnets is reached by a host route first.
                if !cidrs.iter().any(|c| c.contains(&gw)) && !reached.contains(&gw) {
                    let host = Ipv4Net::new(gw, 32).expect("valid prefix");
                    nl.add_link_route(l.index, host).await?;
                    reached.push(gw);
                }
                nl.add_gateway_route(l.index, r.dst, gw).await
            }
            None => nl.add_link_route(l.index, r.dst).await,
        };
        match added {
            // A route the kernel made already (the container's own subnet, which CNI
            // configurations often list): there, as asked, as with the reference plugins.
            Err(e) if e.is_exists() => {}
            r => r?,
        }
    }
    if opts.multicast_route {
        let mcast = Ipv4Net::new(Ipv4Addr::new(224, 0, 0, 0), 4).expect("valid prefix");
        match nl.add_link_route(l.index, mcast).await {
            Err(e) if !e.is_exists() => return Err(e.into()),
            _ => {}
        }
    }
    Ok(())
}

async fn add_addresses(ns: &Netns, ifname: &str, cidrs: Vec<Ipv4Net>) -> Result<(), AttachError> {
    let ifname = ifname.to_string();
    netns::run_in(ns, move || async move {
        let nl = Netlink::new()?;
        let l = nl.require_link(&ifname).await?;
        for c in &cidrs {
            match nl.add_address(l.index, IpNet::V4(*c)).await {
                Err(e) if !e.is_exists() => return Err(AttachError::from(e)),
                _ => {}
            }
        }
        if let Some(mac) = l.mac {
            announce(&ifname, Mac(mac), &cidrs);
        }
        Ok(())
    })
    .await?
}

/// Waits (up to 2 s) until bridge port `host_if` forwards frames.
async fn wait_forwarding(host_if: &str) {
    const FORWARDING: &str = "3";
    let path = format!("/sys/class/net/{host_if}/brport/state");
    for _ in 0..200 {
        if std::fs::read_to_string(&path).is_ok_and(|s| s.trim() == FORWARDING) {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    warn!(
        port = host_if,
        "the container's bridge port is not forwarding after 2 s"
    );
}

/// Gratuitous ARP for freshly added addresses, so neighbours that knew an earlier holder of
/// one reach the new holder at once. Best effort: without it they still get there after their
/// neighbour entry goes stale.
fn announce(ifname: &str, mac: Mac, cidrs: &[Ipv4Net]) {
    let ips: Vec<Ipv4Addr> = cidrs.iter().map(|c| c.addr()).collect();
    if let Err(e) = weft_linux::arp::announce(ifname, mac.0, &ips) {
        warn!("{e}");
    }
}

async fn unconfigure_inside(
    ifname: String,
    cidrs: Vec<Ipv4Net>,
    delete: bool,
) -> Result<(), AttachError> {
    let nl = Netlink::new()?;
    let Some(l) = nl.link_by_name(&ifname).await? else {
        return Ok(());
    };
    if delete {
        nl.delete_link(l.index).await?;
        return Ok(());
    }
    for c in cidrs {
        nl.del_address(l.index, IpNet::V4(c)).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_checks() {
        assert!(check_cidr(&"10.32.0.1/12".parse().unwrap()).is_ok());
        // The network address is accepted with a warning, as Weave did.
        assert!(check_cidr(&"10.2.1.0/24".parse().unwrap()).is_ok());
        assert!(network_address(&"10.2.1.0/24".parse().unwrap()).is_some());
        assert!(network_address(&"10.2.1.1/24".parse().unwrap()).is_none());
        assert!(check_cidr(&"10.47.255.255/12".parse().unwrap()).is_err());
        assert!(check_cidr(&"10.0.0.0/31".parse().unwrap()).is_ok());
        assert!(check_cidr(&"127.0.0.2/8".parse().unwrap()).is_err());
    }

    #[test]
    fn host_ifnames_fit_ifnamsiz() {
        let (a, b) = host_ifname("a-very-long-container-name-indeed");
        assert!(a.len() <= 15 && b.len() <= 15);
        assert_ne!(host_ifname("x").0, host_ifname("y").0);
    }
}
