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
use std::sync::Arc;

use ipnet::{IpNet, Ipv4Net};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};
use weft_api::types::ContainerEntry;
use weft_linux::host::{At, HostOps, Ns, NsId, Op, Sysctl};
use weft_linux::netlink::{Link, Netlink};
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

impl From<weft_linux::host::OpError> for AttachError {
    fn from(e: weft_linux::host::OpError) -> Self {
        e.source.into()
    }
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
    /// Every change to links, addresses and routes goes through here.
    host: Arc<dyn HostOps>,
    /// Launch-time discovery of ports weft has no record of (namespace ids).
    nl: Option<Netlink>,
    bridge_index: u32,
    mtu: u32,
    host_ns: NsId,
    /// The machine's own namespace (PID 1's): never plugged, even when the router runs in
    /// another one (a test bed), whatever the caller asked.
    init_ns: Option<NsId>,
    state: StateDir,
    entries: tokio::sync::Mutex<BTreeMap<String, Attachment>>,
    /// Told of every change to the attachments (the fast path publishes our containers'
    /// addresses at once: a peer's container may still hold a reused address's old MAC).
    changed: tokio::sync::Notify,
}

/// A container reference resolved to an open namespace.
struct Target {
    id: String,
    ns: Ns,
    ns_id: NsId,
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

/// A veth pair whose `host_if` end is up on the bridge (an earlier one of that name, a
/// leftover from a container of that id or endpoint that has since gone, is replaced); the
/// other end is the caller's to move into a container.
pub fn bridged_veth(bridge_index: u32, host_if: &str, peer_if: &str, mtu: u32) -> Vec<Op> {
    vec![
        Op::DeleteLink {
            link: host_if.into(),
        },
        Op::CreateVeth {
            name: host_if.into(),
            peer: peer_if.into(),
            mtu,
        },
        Op::Sysctl {
            setting: Sysctl::DisableIpv6(host_if.into()),
            best_effort: true,
        },
        Op::SetLink {
            link: host_if.into(),
            rename: None,
            mac: None,
            mtu: None,
            master: Some(bridge_index),
            up: true,
        },
    ]
}

/// Deleting one end of a veth pair deletes both, wherever the other end is.
fn delete(link: &str) -> Vec<Op> {
    vec![Op::DeleteLink { link: link.into() }]
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
    /// `nl` (the router namespace's netlink socket) finds ports weft has no record of at
    /// launch; without it there is no such discovery (tests against a modelled host).
    pub fn new(
        host: Arc<dyn HostOps>,
        nl: Option<Netlink>,
        bridge_index: u32,
        mtu: u32,
        state: StateDir,
    ) -> Result<Self, AttachError> {
        let host_ns = host.host_ns()?;
        let init_ns = host.init_ns();
        let entries: Vec<Attachment> = state
            .load_json(FILE)
            .map_err(|e| AttachError::Internal(e.to_string()))?;
        Ok(Attacher {
            host,
            nl,
            bridge_index,
            mtu,
            host_ns,
            init_ns,
            state,
            entries: tokio::sync::Mutex::new(
                entries.into_iter().map(|a| (a.id.clone(), a)).collect(),
            ),
            changed: tokio::sync::Notify::new(),
        })
    }

    /// Resolves after the attachments changed (at once if they did since the last call).
    pub async fn changed(&self) {
        self.changed.notified().await
    }

    fn save(&self, entries: &BTreeMap<String, Attachment>) {
        self.changed.notify_one();
        let list: Vec<&Attachment> = entries.values().collect();
        if let Err(e) = self.state.save_json(FILE, &list) {
            warn!("could not persist attached containers: {e}");
        }
    }

    fn alive(&self, a: &Attachment) -> bool {
        self.host.ns_alive(&a.netns, a.ns_id)
    }

    fn open_target(&self, spec: &str) -> Result<Target, AttachError> {
        let ns = self
            .host
            .open_ns(spec)
            .map_err(|e| AttachError::NotFound(e.to_string()))?;
        Ok(Target {
            id: spec.to_string(),
            ns_id: ns.id(),
            ns,
        })
    }

    /// Drops entries whose namespace is gone; returns them.
    fn prune(&self, entries: &mut BTreeMap<String, Attachment>) -> Vec<Attachment> {
        let gone: Vec<String> = entries
            .values()
            .filter(|a| !self.alive(a))
            .map(|a| a.id.clone())
            .collect();
        gone.iter().filter_map(|id| entries.remove(id)).collect()
    }

    /// Forgets containers whose namespace disappeared (and removes their host-side link if
    /// the kernel left it).
    pub async fn reap(&self) -> Vec<Attachment> {
        let mut entries = self.entries.lock().await;
        let gone = self.prune(&mut entries);
        if !gone.is_empty() {
            self.save(&entries);
            for a in &gone {
                info!(container = %a.id, "container gone; detached");
                remove_etc_hosts(a);
                let _ = self.host.apply(&At::Host, delete(&a.host_if)).await;
            }
        }
        gone
    }

    /// Opens a container reference and refuses the host's own namespace.
    fn target(&self, container: &str) -> Result<Target, AttachError> {
        let t = self.open_target(container)?;
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
            .find(|a| a.ns_id == t.ns_id && self.alive(a))
            .map_or(t.id, |a| a.id.clone()))
    }

    async fn bridge(&self) -> Option<Link> {
        let links = self.host.links().await.ok()?;
        links.into_iter().find(|l| l.index == self.bridge_index)
    }

    /// At launch: plugs attached containers' ports back into the bridge when it was deleted
    /// and made anew while the router was away (their veths outlive it, unplugged), with
    /// hairpin mode as they had it, and gives them the overlay MTU when it differs from theirs
    /// (a router relaunched with another mode or `--mtu`): frames larger than the bridge's
    /// ports take would otherwise be dropped silently.
    pub async fn restore_ports(&self) {
        for a in self.attachments().await {
            let Ok(Some(l)) = self.host.link(&At::Host, &a.host_if).await else {
                continue;
            };
            if l.master != Some(self.bridge_index) || !l.up {
                let mut plug = vec![set_link(&a.host_if, Some(self.bridge_index), None, true)];
                if a.hairpin {
                    plug.push(Op::Sysctl {
                        setting: Sysctl::Hairpin(a.host_if.clone()),
                        best_effort: true,
                    });
                }
                match self.host.apply(&At::Host, plug).await {
                    Ok(()) => {
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
                let host_end = vec![set_link(&a.host_if, None, Some(mtu), false)];
                self.host.apply(&At::Host, host_end).await?;
                let ns = self.host.open_ns(&a.netns.display().to_string())?;
                let inside = vec![set_link(&a.ifname, None, Some(mtu), false)];
                self.host.apply(&At::Ns(ns), inside).await?;
                Ok::<(), weft_linux::Error>(())
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
            let Some(nl) = &self.nl else { break };
            let Ok(Some(nsid)) = nl.nsid_of(fd).await else {
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
        if self.nl.is_none() {
            return Vec::new();
        }
        let Ok(links) = self.host.links().await else {
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
        let t = self.open_target(container)?;
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
            .find(|a| a.ns_id == t.ns_id && self.alive(a))
            .cloned();
        for c in &cidrs {
            let owner = entries.values().find(|a| {
                a.ns_id != t.ns_id && a.cidrs.iter().any(|o| o.addr() == c.addr()) && self.alive(a)
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
                let mac = a.mac.parse::<Mac>().ok();
                let ops = add_addresses(&a.ifname, mac, &new);
                self.host.apply(&At::Ns(t.ns.clone()), ops).await?;
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
        let mut outside = bridged_veth(self.bridge_index, &host_if, &temp_if, self.mtu);
        if opts.hairpin {
            outside.push(Op::Sysctl {
                setting: Sysctl::Hairpin(host_if.clone()),
                best_effort: false,
            });
        }
        outside.push(Op::MoveTo {
            link: temp_if.clone(),
            ns: t.ns.clone(),
        });
        let inside = At::Ns(t.ns.clone());
        let mac = Mac::from_random(crate::random_u64());
        let result = async {
            self.host.apply(&At::Host, outside).await?;
            if self.host.link(&inside, &opts.ifname).await?.is_some() {
                return Err(AttachError::Conflict(format!(
                    "the container already has an interface named {} that weft did not create",
                    opts.ifname
                )));
            }
            let plan = configure_inside(&temp_if, mac, self.mtu, cidrs, &opts);
            self.host.apply(&inside, plan).await?;
            // The bridge drops what a port sends until the port forwards, which it does only
            // once the kernel has seen the container's end come up: announce after that.
            if !self.host.wait_forwarding(&host_if).await {
                warn!(
                    port = host_if,
                    "the container's bridge port is not forwarding after 2 s"
                );
            }
            self.host
                .apply(&inside, vec![announce(&opts.ifname, mac, cidrs)])
                .await?;
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
                if let Err(de) = self.host.apply(&At::Host, delete(&host_if)).await {
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
        let t = self.open_target(container)?;
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
        let inside = At::Ns(t.ns.clone());
        if keep.is_empty() {
            self.host.apply(&inside, delete(&a.ifname)).await?;
        } else if self.host.link(&inside, &a.ifname).await?.is_some() {
            let ops = remove
                .iter()
                .map(|c| Op::DelAddress {
                    link: a.ifname.clone(),
                    net: *c,
                })
                .collect();
            self.host.apply(&inside, ops).await?;
        }
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
        if self.alive(&a)
            && let Ok(ns) = self.host.open_ns(&a.netns.display().to_string())
            && let Err(e) = self.host.apply(&At::Ns(ns), delete(&a.ifname)).await
        {
            warn!(container = %a.id, "removing its interface: {e}");
        }
        // Gone with the namespace's end, unless the kernel has not got round to it.
        let _ = self.host.apply(&At::Host, delete(&a.host_if)).await;
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
                    .map(|s| self.open_target(s).map(|t| t.ns_id))
                    .collect::<Result<_, _>>()?,
            )
        };
        Ok(entries
            .values()
            .filter(|a| wanted.as_ref().is_none_or(|w| w.contains(&a.ns_id)))
            .filter(|a| self.alive(a))
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
            .filter(|a| self.alive(a))
            .cloned()
            .collect()
    }

    /// The host's own addresses on the weft bridge (`weft expose`), and the bridge's MAC.
    pub async fn exposed(&self) -> Result<(String, Vec<Ipv4Net>), AttachError> {
        let addrs = self.host.addresses(self.bridge_index).await?;
        let mac = self
            .bridge()
            .await
            .and_then(|l| l.mac)
            .map(|m| Mac(m).to_string())
            .unwrap_or_default();
        let nets = addrs
            .into_iter()
            .filter_map(|n| match n {
                IpNet::V4(v4) => Some(v4),
                IpNet::V6(_) => None,
            })
            .collect();
        Ok((mac, nets))
    }

    /// A Docker plugin endpoint: a veth pair with `host_if` on the bridge and `cont_if` (with
    /// `mac`, or a random one) left for Docker to move into the container; if Docker runs in
    /// another namespace than the router (`docker_pid`'s), the container end goes there.
    /// Returns the MAC.
    pub async fn plugin_endpoint(
        &self,
        host_if: &str,
        cont_if: &str,
        mac: Option<&str>,
        docker_pid: Option<i32>,
    ) -> Result<String, AttachError> {
        let mac = match mac {
            Some(m) => m
                .parse::<Mac>()
                .map_err(|e| AttachError::Invalid(format!("MAC {m}: {e}")))?,
            None => Mac::from_random(crate::random_u64()),
        };
        let mut ops = bridged_veth(self.bridge_index, host_if, cont_if, self.mtu);
        ops.push(Op::SetLink {
            link: cont_if.into(),
            rename: None,
            mac: Some(mac.0),
            mtu: Some(self.mtu),
            master: None,
            up: false,
        });
        // Docker takes the container end from its own namespace.
        if let Some(pid) = docker_pid {
            let theirs = self.host.open_ns(&pid.to_string())?;
            if theirs.id() != self.host_ns {
                ops.push(Op::MoveTo {
                    link: cont_if.into(),
                    ns: theirs,
                });
            }
        }
        if let Err(e) = self.host.apply(&At::Host, ops).await {
            let _ = self.host.apply(&At::Host, delete(host_if)).await;
            return Err(e.into());
        }
        Ok(mac.to_string())
    }

    /// Removes a plugin endpoint's veth by its host end (gone already is fine).
    pub async fn remove_plugin_endpoint(&self, host_if: &str) -> Result<(), AttachError> {
        self.host.apply(&At::Host, delete(host_if)).await?;
        Ok(())
    }

    /// Gives the host these addresses on the bridge, so it can reach the containers.
    pub async fn expose(&self, cidrs: &[Ipv4Net]) -> Result<(), AttachError> {
        let (_, have) = self.exposed().await?;
        let bridge = self.bridge().await.ok_or_else(|| {
            AttachError::Internal("the weft bridge is gone: relaunch the router".into())
        })?;
        let mut ops = Vec::new();
        let mut added = Vec::new();
        for c in cidrs {
            check_cidr(c)?;
            if !have.contains(c) {
                ops.push(Op::AddAddress {
                    link: bridge.name.clone(),
                    net: *c,
                    exist_ok: false,
                });
                added.push(*c);
            }
        }
        if !added.is_empty() {
            ops.push(announce(
                &bridge.name,
                Mac(bridge.mac.unwrap_or_default()),
                &added,
            ));
        }
        self.host.apply(&At::Host, ops).await?;
        info!(cidrs = ?cidrs, "exposed the host on the overlay");
        Ok(())
    }

    /// Takes these addresses off the bridge.
    pub async fn hide(&self, cidrs: &[Ipv4Net]) -> Result<(), AttachError> {
        let Some(bridge) = self.bridge().await else {
            return Ok(());
        };
        let ops = cidrs
            .iter()
            .map(|c| Op::DelAddress {
                link: bridge.name.clone(),
                net: *c,
            })
            .collect();
        self.host.apply(&At::Host, ops).await?;
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

fn set_link(link: &str, master: Option<u32>, mtu: Option<u32>, up: bool) -> Op {
    Op::SetLink {
        link: link.into(),
        rename: None,
        mac: None,
        mtu,
        master,
        up,
    }
}

/// Inside the container: the moved veth end renamed to `opts.ifname` with its MAC and MTU,
/// up, with its addresses and routes (a gateway outside the container's subnets reached by a
/// host route first) and the multicast route if asked for.
fn configure_inside(
    temp: &str,
    mac: Mac,
    mtu: u32,
    cidrs: &[Ipv4Net],
    opts: &PlugOptions,
) -> Vec<Op> {
    let ifname = opts.ifname.as_str();
    // Rename needs the link down, which a freshly moved veth is.
    let mut ops = vec![Op::SetLink {
        link: temp.into(),
        rename: Some(ifname.into()),
        mac: Some(mac.0),
        mtu: Some(mtu),
        master: None,
        up: false,
    }];
    for setting in [
        Sysctl::DisableIpv6(ifname.into()),
        Sysctl::FastArp(ifname.into()),
        Sysctl::AcceptArp(ifname.into()),
    ] {
        ops.push(Op::Sysctl {
            setting,
            best_effort: true,
        });
    }
    ops.push(set_link(ifname, None, None, true));
    ops.extend(cidrs.iter().map(|c| Op::AddAddress {
        link: ifname.into(),
        net: *c,
        exist_ok: false,
    }));
    let mut reached: Vec<Ipv4Addr> = Vec::new();
    for r in &opts.routes {
        if let Some(gw) = r.gw
            && !cidrs.iter().any(|c| c.contains(&gw))
            && !reached.contains(&gw)
        {
            ops.push(Op::AddRoute {
                link: ifname.into(),
                dst: Ipv4Net::new(gw, 32).expect("valid prefix"),
                via: None,
            });
            reached.push(gw);
        }
        // A route the kernel made already (the container's own subnet, which CNI
        // configurations often list) is there, as asked, as with the reference plugins.
        ops.push(Op::AddRoute {
            link: ifname.into(),
            dst: r.dst,
            via: r.gw,
        });
    }
    if opts.multicast_route {
        ops.push(Op::AddRoute {
            link: ifname.into(),
            dst: Ipv4Net::new(Ipv4Addr::new(224, 0, 0, 0), 4).expect("valid prefix"),
            via: None,
        });
    }
    ops
}

/// More addresses for a plugged-in container (those it has already are fine), announced.
fn add_addresses(ifname: &str, mac: Option<Mac>, cidrs: &[Ipv4Net]) -> Vec<Op> {
    let mut ops: Vec<Op> = cidrs
        .iter()
        .map(|c| Op::AddAddress {
            link: ifname.into(),
            net: *c,
            exist_ok: true,
        })
        .collect();
    if let Some(mac) = mac {
        ops.push(announce(ifname, mac, cidrs));
    }
    ops
}

/// Gratuitous ARP for freshly added addresses, so neighbours that knew an earlier holder of
/// one reach the new holder at once. Best effort: without it they still get there after their
/// neighbour entry goes stale.
fn announce(ifname: &str, mac: Mac, cidrs: &[Ipv4Net]) -> Op {
    Op::Announce {
        link: ifname.into(),
        mac: mac.0,
        ips: cidrs.iter().map(|c| c.addr()).collect(),
    }
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

    /// Attach, detach, expose and the plugin's endpoints against a modelled host: the
    /// operations issued, exactly, and what the host holds afterwards.
    mod through_the_host {
        use std::sync::atomic::{AtomicU32, Ordering};

        use weft_api::types::RouteSpec;
        use weft_linux::host::fake::FakeHost;

        use super::*;

        const MTU: u32 = 1376;

        struct Bed {
            host: Arc<FakeHost>,
            bridge: u32,
            attacher: Attacher,
            dir: PathBuf,
        }

        impl Drop for Bed {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.dir);
            }
        }

        fn bed() -> Bed {
            static N: AtomicU32 = AtomicU32::new(0);
            let dir = std::env::temp_dir().join(format!(
                "weft-attach-unit-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            let host = Arc::new(FakeHost::new());
            let bridge = host.add_link("weft", "bridge", MTU);
            let state = StateDir::open(&dir).expect("a state directory");
            let attacher =
                Attacher::new(host.clone(), None, bridge, MTU, state).expect("an attacher");
            Bed {
                host,
                bridge,
                attacher,
                dir,
            }
        }

        fn opts() -> PlugOptions {
            PlugOptions {
                ifname: "ethwe".into(),
                multicast_route: false,
                hairpin: false,
                routes: Vec::new(),
            }
        }

        fn net(s: &str) -> Ipv4Net {
            s.parse().expect("a CIDR")
        }

        /// The operations with random MACs blanked, as `where: op`.
        fn issued(host: &FakeHost) -> Vec<String> {
            host.take_ops()
                .into_iter()
                .map(|(at, mut op)| {
                    match &mut op {
                        Op::SetLink { mac, .. } if mac.is_some() => *mac = Some([0; 6]),
                        Op::Announce { mac, .. } => *mac = [0; 6],
                        _ => {}
                    }
                    format!("{at}: {op:?}")
                })
                .collect()
        }

        #[tokio::test]
        async fn attach_plugs_a_veth_into_the_bridge_and_configures_the_container_end() {
            let b = bed();
            let ns = b.host.add_namespace("c1");
            let mut o = opts();
            o.multicast_route = true;
            let e = b
                .attacher
                .attach("c1", "c1", vec![net("10.32.0.5/12")], o, None)
                .await
                .expect("attached");
            assert_eq!(e.cidrs, vec![net("10.32.0.5/12")]);
            let (host_if, temp_if) = host_ifname("c1");
            let bridge = b.bridge;
            let expected = vec![
                format!("host: DeleteLink {{ link: \"{host_if}\" }}"),
                format!(
                    "host: CreateVeth {{ name: \"{host_if}\", peer: \"{temp_if}\", mtu: {MTU} }}"
                ),
                format!(
                    "host: Sysctl {{ setting: DisableIpv6(\"{host_if}\"), best_effort: true }}"
                ),
                format!(
                    "host: SetLink {{ link: \"{host_if}\", rename: None, mac: None, mtu: None, master: Some({bridge}), up: true }}"
                ),
                format!("host: MoveTo {{ link: \"{temp_if}\", ns: /run/netns/c1 }}"),
                format!(
                    "/run/netns/c1: SetLink {{ link: \"{temp_if}\", rename: Some(\"ethwe\"), mac: Some([0, 0, 0, 0, 0, 0]), mtu: Some({MTU}), master: None, up: false }}"
                ),
                "/run/netns/c1: Sysctl { setting: DisableIpv6(\"ethwe\"), best_effort: true }".into(),
                "/run/netns/c1: Sysctl { setting: FastArp(\"ethwe\"), best_effort: true }".into(),
                "/run/netns/c1: Sysctl { setting: AcceptArp(\"ethwe\"), best_effort: true }".into(),
                "/run/netns/c1: SetLink { link: \"ethwe\", rename: None, mac: None, mtu: None, master: None, up: true }".into(),
                "/run/netns/c1: AddAddress { link: \"ethwe\", net: 10.32.0.5/12, exist_ok: false }".into(),
                "/run/netns/c1: AddRoute { link: \"ethwe\", dst: 224.0.0.0/4, via: None }".into(),
                "/run/netns/c1: Announce { link: \"ethwe\", mac: [0, 0, 0, 0, 0, 0], ips: [10.32.0.5] }".into(),
            ];
            assert_eq!(issued(&b.host), expected);
            // What the host holds now: the port on the bridge, the interface inside.
            let port = b
                .host
                .links_in(None)
                .into_iter()
                .find(|l| l.name == host_if)
                .expect("the host end");
            assert_eq!((port.master, port.up), (Some(b.bridge), true));
            let inside = b.host.links_in(Some(&ns));
            assert_eq!(inside.len(), 1);
            assert_eq!(inside[0].name, "ethwe");
            assert_eq!(
                b.host.addresses_of(inside[0].index),
                vec![net("10.32.0.5/12")]
            );
            assert_eq!(
                inside[0].mac.map(|m| Mac(m).to_string()),
                Some(e.mac.clone())
            );
        }

        #[tokio::test]
        async fn a_failed_attach_leaves_nothing_behind() {
            let b = bed();
            let ns = b.host.add_namespace("c1");
            b.host
                .fail_when(|_, op| matches!(op, Op::AddAddress { .. }));
            let r = b
                .attacher
                .attach("c1", "c1", vec![net("10.32.0.5/12")], opts(), None)
                .await;
            assert!(r.is_err());
            let (host_if, _) = host_ifname("c1");
            let ops = issued(&b.host);
            assert_eq!(
                ops.last().map(String::as_str),
                Some(format!("host: DeleteLink {{ link: \"{host_if}\" }}").as_str()),
                "{ops:#?}"
            );
            assert!(b.host.links_in(Some(&ns)).is_empty());
            assert_eq!(b.host.links_in(None).len(), 1, "only the bridge is left");
            assert!(b.attacher.list(&[]).await.expect("a list").is_empty());
        }

        #[tokio::test]
        async fn the_hosts_namespace_is_refused_before_anything_changes() {
            let b = bed();
            let r = b
                .attacher
                .attach("host", "host", vec![net("10.32.0.5/12")], opts(), None)
                .await;
            assert!(matches!(r, Err(AttachError::Invalid(_))), "{r:?}");
            assert!(issued(&b.host).is_empty());
        }

        #[tokio::test]
        async fn an_interface_name_the_container_has_already_is_a_conflict() {
            let b = bed();
            let ns = b.host.add_namespace("c1");
            let mine = vec![Op::CreateVeth {
                name: "ethwe".into(),
                peer: "other".into(),
                mtu: 1500,
            }];
            b.host.apply(&At::Ns(ns), mine).await.expect("made");
            let r = b
                .attacher
                .attach("c1", "c1", vec![net("10.32.0.5/12")], opts(), None)
                .await;
            assert!(matches!(r, Err(AttachError::Conflict(_))), "{r:?}");
            let (host_if, _) = host_ifname("c1");
            assert!(!b.host.links_in(None).iter().any(|l| l.name == host_if));
        }

        #[tokio::test]
        async fn cni_routes_reach_a_gateway_outside_the_subnet_by_a_host_route() {
            let b = bed();
            b.host.add_namespace("pod");
            let mut o = opts();
            o.routes = vec![
                RouteSpec {
                    dst: net("0.0.0.0/0"),
                    gw: Some("10.96.0.1".parse().expect("an address")),
                },
                RouteSpec {
                    dst: net("10.50.0.0/16"),
                    gw: Some("10.32.0.1".parse().expect("an address")),
                },
                RouteSpec {
                    dst: net("10.60.0.0/16"),
                    gw: None,
                },
            ];
            b.attacher
                .attach("pod", "pod-id", vec![net("10.32.0.5/12")], o, None)
                .await
                .expect("attached");
            let routes: Vec<String> = issued(&b.host)
                .into_iter()
                .filter(|o| o.contains("AddRoute"))
                .collect();
            assert_eq!(
                routes,
                vec![
                    "/run/netns/pod: AddRoute { link: \"ethwe\", dst: 10.96.0.1/32, via: None }",
                    "/run/netns/pod: AddRoute { link: \"ethwe\", dst: 0.0.0.0/0, via: Some(10.96.0.1) }",
                    "/run/netns/pod: AddRoute { link: \"ethwe\", dst: 10.50.0.0/16, via: Some(10.32.0.1) }",
                    "/run/netns/pod: AddRoute { link: \"ethwe\", dst: 10.60.0.0/16, via: None }",
                ]
            );
        }

        #[tokio::test]
        async fn detach_removes_addresses_then_the_interface() {
            let b = bed();
            let ns = b.host.add_namespace("c1");
            let nets = vec![net("10.32.0.5/12"), net("10.40.0.5/16")];
            b.attacher
                .attach("c1", "c1", nets.clone(), opts(), None)
                .await
                .expect("attached");
            b.host.take_ops();
            let (id, gone) = b
                .attacher
                .detach("c1", Some(vec![nets[1]]))
                .await
                .expect("detached one");
            assert_eq!((id.as_str(), gone), ("c1", vec![nets[1]]));
            assert_eq!(
                issued(&b.host),
                vec!["/run/netns/c1: DelAddress { link: \"ethwe\", net: 10.40.0.5/16 }"]
            );
            let (_, gone) = b.attacher.detach("c1", None).await.expect("detached");
            assert_eq!(gone, vec![nets[0]]);
            assert_eq!(
                issued(&b.host),
                vec!["/run/netns/c1: DeleteLink { link: \"ethwe\" }"]
            );
            assert!(b.host.links_in(Some(&ns)).is_empty());
            assert!(
                b.host.links_in(None).len() == 1,
                "the veth's host end went with it"
            );
        }

        #[tokio::test]
        async fn more_addresses_for_an_attached_container_are_added_and_announced() {
            let b = bed();
            b.host.add_namespace("c1");
            b.attacher
                .attach("c1", "c1", vec![net("10.32.0.5/12")], opts(), None)
                .await
                .expect("attached");
            b.host.take_ops();
            b.attacher
                .attach("c1", "c1", vec![net("10.40.0.5/16")], opts(), None)
                .await
                .expect("attached again");
            assert_eq!(
                issued(&b.host),
                vec![
                    "/run/netns/c1: AddAddress { link: \"ethwe\", net: 10.40.0.5/16, exist_ok: true }",
                    "/run/netns/c1: Announce { link: \"ethwe\", mac: [0, 0, 0, 0, 0, 0], ips: [10.40.0.5] }",
                ]
            );
        }

        #[tokio::test]
        async fn an_address_held_by_another_container_is_a_conflict() {
            let b = bed();
            b.host.add_namespace("c1");
            b.host.add_namespace("c2");
            b.attacher
                .attach("c1", "c1", vec![net("10.32.0.5/12")], opts(), None)
                .await
                .expect("attached");
            b.host.take_ops();
            let r = b
                .attacher
                .attach("c2", "c2", vec![net("10.32.0.5/12")], opts(), None)
                .await;
            assert!(matches!(r, Err(AttachError::Conflict(_))), "{r:?}");
            assert!(issued(&b.host).is_empty());
        }

        #[tokio::test]
        async fn a_container_that_went_away_is_reaped_with_its_port() {
            let b = bed();
            b.host.add_namespace("c1");
            b.attacher
                .attach("c1", "c1", vec![net("10.32.0.5/12")], opts(), None)
                .await
                .expect("attached");
            b.host.take_ops();
            b.host.remove_namespace("c1");
            let gone = b.attacher.reap().await;
            assert_eq!(gone.len(), 1);
            let (host_if, _) = host_ifname("c1");
            assert_eq!(
                issued(&b.host),
                vec![format!("host: DeleteLink {{ link: \"{host_if}\" }}")]
            );
            assert!(b.attacher.attachments().await.is_empty());
        }

        #[tokio::test]
        async fn expose_puts_addresses_on_the_bridge_once_and_hide_takes_them_off() {
            let b = bed();
            b.attacher
                .expose(&[net("10.32.0.1/12")])
                .await
                .expect("exposed");
            let mac = b.host.links_in(None)[0].mac.expect("the bridge's MAC");
            let ops: Vec<String> = b
                .host
                .take_ops()
                .into_iter()
                .map(|(at, op)| format!("{at}: {op:?}"))
                .collect();
            assert_eq!(
                ops,
                vec![
                    "host: AddAddress { link: \"weft\", net: 10.32.0.1/12, exist_ok: false }"
                        .to_string(),
                    format!("host: Announce {{ link: \"weft\", mac: {mac:?}, ips: [10.32.0.1] }}"),
                ]
            );
            // Again: nothing to add.
            b.attacher
                .expose(&[net("10.32.0.1/12")])
                .await
                .expect("exposed");
            assert!(issued(&b.host).is_empty());
            let (_, have) = b.attacher.exposed().await.expect("the bridge's addresses");
            assert_eq!(have, vec![net("10.32.0.1/12")]);
            b.attacher.hide(&have).await.expect("hidden");
            assert_eq!(
                issued(&b.host),
                vec!["host: DelAddress { link: \"weft\", net: 10.32.0.1/12 }"]
            );
            assert!(b.host.addresses_of(b.bridge).is_empty());
        }

        #[tokio::test]
        async fn a_plugin_endpoint_is_a_bridged_veth_with_docker_s_mac() {
            let b = bed();
            let mac = b
                .attacher
                .plugin_endpoint("vethwl123", "vethwg123", Some("02:42:0a:20:00:05"), None)
                .await
                .expect("made");
            assert_eq!(mac, "02:42:0a:20:00:05");
            let ops = issued(&b.host);
            assert_eq!(
                ops.last().map(String::as_str),
                Some(
                    format!(
                        "host: SetLink {{ link: \"vethwg123\", rename: None, mac: Some([0, 0, 0, 0, 0, 0]), mtu: Some({MTU}), master: None, up: false }}"
                    )
                    .as_str()
                )
            );
            b.attacher
                .remove_plugin_endpoint("vethwl123")
                .await
                .expect("removed");
            assert_eq!(b.host.links_in(None).len(), 1, "only the bridge is left");
            // Gone already is no failure.
            b.attacher
                .remove_plugin_endpoint("vethwl123")
                .await
                .expect("removed again");
        }
    }
}
