//! One seam to the kernel for the daemon's plugging work: the changes it makes (links,
//! addresses, routes, sysctls, forwarding-database and neighbour entries, moves between
//! namespaces) are values ([`Op`]) applied by a [`HostOps`], and what it reads back goes
//! through the same trait. [`LinuxHost`] applies them with netlink, in whichever namespace they
//! belong to; [`fake::FakeHost`] keeps a small model of the host and records every operation,
//! so attach, expose, CNI and fast-path reconciliation are tested without root, asserting the
//! exact operations issued (as youki tests its container set-up against a recording syscall
//! layer).
//!
//! Links are named in operations, not indexed, so a whole plan can be written before the links
//! it makes exist; the applier looks names up as it goes.

pub mod fake;

use std::future::Future;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use ipnet::{IpNet, Ipv4Net};

use crate::fdb::FdbRecord;
use crate::netlink::{Link, LinkConfig, Netlink};
use crate::netns::{self, Netns};
use crate::{Error, Result, sysctl};

/// A boxed future, so that [`HostOps`] can be used as a trait object.
pub type OpFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A permanent neighbour entry: address and MAC.
pub type Neighbour = (Ipv4Addr, [u8; 6]);

/// A namespace's identity: device and inode of its file.
pub type NsId = (u64, u64);

/// A network namespace, held open while it is used (so that it cannot go away and another
/// take its place under the same path).
#[derive(Clone)]
pub struct Ns {
    path: PathBuf,
    id: NsId,
    open: Option<Arc<Netns>>,
}

impl Ns {
    /// Opens the namespace file at `path`.
    pub fn open(path: &Path) -> Result<Ns> {
        let ns = Netns::open(path)?;
        let id = ns.id()?;
        Ok(Ns {
            path: path.to_path_buf(),
            id,
            open: Some(Arc::new(ns)),
        })
    }

    /// A namespace that exists only in a model of the host ([`fake::FakeHost`]).
    pub fn modelled(path: impl Into<PathBuf>, id: NsId) -> Ns {
        Ns {
            path: path.into(),
            id,
            open: None,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn id(&self) -> NsId {
        self.id
    }

    fn netns(&self) -> Result<&Netns> {
        self.open.as_deref().ok_or_else(|| {
            Error::Other(format!(
                "namespace {} is a model, not open",
                self.path.display()
            ))
        })
    }
}

impl PartialEq for Ns {
    fn eq(&self, o: &Ns) -> bool {
        self.path == o.path && self.id == o.id
    }
}

impl Eq for Ns {}

impl std::fmt::Debug for Ns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.path.display())
    }
}

/// Where operations take place.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum At {
    /// The router's own namespace.
    Host,
    /// A container's.
    Ns(Ns),
}

impl std::fmt::Display for At {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            At::Host => f.write_str("host"),
            At::Ns(ns) => write!(f, "{}", ns.path.display()),
        }
    }
}

/// A per-interface kernel setting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Sysctl {
    /// No IPv6 on the interface (weft's overlay is IPv4).
    DisableIpv6(String),
    /// Neighbour entries refreshed quickly (containers that move keep talking).
    FastArp(String),
    /// Gratuitous ARP accepted (a moved address is learnt at once).
    AcceptArp(String),
    /// A bridge port that sends frames back where they came from.
    Hairpin(String),
}

impl Sysctl {
    fn set(&self) -> Result<()> {
        match self {
            Sysctl::DisableIpv6(i) => sysctl::disable_ipv6(i),
            Sysctl::FastArp(i) => sysctl::fast_arp(i),
            Sysctl::AcceptArp(i) => sysctl::accept_arp(i),
            Sysctl::Hairpin(i) => sysctl::hairpin(i),
        }
    }
}

/// One change to the kernel's state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// A veth pair, both ends here.
    CreateVeth {
        name: String,
        peer: String,
        mtu: u32,
    },
    /// Link settings; `up` brings it up (false leaves it as it is).
    SetLink {
        link: String,
        rename: Option<String>,
        mac: Option<[u8; 6]>,
        mtu: Option<u32>,
        master: Option<u32>,
        up: bool,
    },
    /// Moves a link into another namespace.
    MoveTo {
        link: String,
        ns: Ns,
    },
    /// Deletes a link (and a veth's peer with it); a link that is not there is no failure.
    DeleteLink {
        link: String,
    },
    /// An address; `exist_ok`: one that is there already is no failure.
    AddAddress {
        link: String,
        net: Ipv4Net,
        exist_ok: bool,
    },
    DelAddress {
        link: String,
        net: Ipv4Net,
    },
    /// A route through the link, directly or `via` a gateway; one that exists is no failure.
    AddRoute {
        link: String,
        dst: Ipv4Net,
        via: Option<Ipv4Addr>,
    },
    /// A setting; `best_effort`: a failure is ignored (kernels without it still work).
    Sysctl {
        setting: Sysctl,
        best_effort: bool,
    },
    /// Gratuitous ARP for `ips` from `mac` out of the link (best effort: logged).
    Announce {
        link: String,
        mac: [u8; 6],
        ips: Vec<Ipv4Addr>,
    },
    /// A VXLAN forwarding entry: `mac` is behind the VTEP at `dst`.
    FdbAppendRemote {
        index: u32,
        mac: [u8; 6],
        dst: Ipv4Addr,
    },
    /// A static bridge entry: `mac` is out of port `index`.
    FdbReplaceStatic {
        index: u32,
        mac: [u8; 6],
    },
    FdbDel {
        index: u32,
        mac: [u8; 6],
        dst: Option<Ipv4Addr>,
        master: bool,
    },
    /// Forgets what the bridge learnt on port `index`.
    FlushLearned {
        index: u32,
    },
    /// A permanent neighbour entry on link `index` (what the bridge answers ARP with).
    ArpReplaceStatic {
        index: u32,
        ip: Ipv4Addr,
        mac: [u8; 6],
    },
    ArpDel {
        index: u32,
        ip: Ipv4Addr,
    },
}

/// An operation that failed, with the ones before it applied.
#[derive(Debug, thiserror::Error)]
#[error("{source}")]
pub struct OpError {
    /// Its position in the batch.
    pub position: usize,
    pub op: Op,
    #[source]
    pub source: Error,
}

impl From<OpError> for Error {
    fn from(e: OpError) -> Error {
        e.source
    }
}

/// The host as the daemon changes and reads it.
pub trait HostOps: Send + Sync + 'static {
    /// The router's own namespace.
    fn host_ns(&self) -> Result<NsId>;
    /// The machine's namespace (PID 1's), if it can be seen.
    fn init_ns(&self) -> Option<NsId>;
    /// Opens a container reference: a name from `ip netns`, a namespace path or a PID.
    fn open_ns(&self, spec: &str) -> Result<Ns>;
    /// Whether the namespace at `path` is still the one with `id`.
    fn ns_alive(&self, path: &Path, id: NsId) -> bool;
    /// Applies `ops` in order, stopping at the first that fails.
    fn apply<'a>(
        &'a self,
        at: &'a At,
        ops: Vec<Op>,
    ) -> OpFuture<'a, std::result::Result<(), OpError>>;
    /// A link by name.
    fn link<'a>(&'a self, at: &'a At, name: &'a str) -> OpFuture<'a, Result<Option<Link>>>;
    /// The router namespace's links.
    fn links(&self) -> OpFuture<'_, Result<Vec<Link>>>;
    /// The addresses of a link in the router's namespace.
    fn addresses(&self, index: u32) -> OpFuture<'_, Result<Vec<IpNet>>>;
    /// Waits (up to 2 s) until bridge port `port` forwards frames; false if it never did.
    fn wait_forwarding<'a>(&'a self, port: &'a str) -> OpFuture<'a, bool>;
    /// Forwarding-database entries (of one link, or all).
    fn fdb(&self, index: Option<u32>) -> OpFuture<'_, Result<Vec<FdbRecord>>>;
    /// The permanent neighbour entries of a link.
    fn static_arp(&self, index: u32) -> OpFuture<'_, Result<Vec<Neighbour>>>;
}

/// The Linux host, through netlink: operations in the router's namespace on its own socket,
/// in a container's on a socket opened there (one thread hop per batch).
pub struct LinuxHost {
    nl: Netlink,
}

impl LinuxHost {
    pub fn new(nl: Netlink) -> Arc<LinuxHost> {
        Arc::new(LinuxHost { nl })
    }
}

async fn apply_all(nl: &Netlink, ops: Vec<Op>) -> std::result::Result<(), OpError> {
    for (position, op) in ops.into_iter().enumerate() {
        if let Err(source) = apply_one(nl, &op).await {
            return Err(OpError {
                position,
                op,
                source,
            });
        }
    }
    Ok(())
}

async fn apply_one(nl: &Netlink, op: &Op) -> Result<()> {
    let ok_if = |r: Result<()>, f: fn(&Error) -> bool| match r {
        Err(e) if f(&e) => Ok(()),
        r => r,
    };
    match op {
        Op::CreateVeth { name, peer, mtu } => nl.create_veth(name, peer, *mtu).await.map(drop),
        Op::SetLink {
            link,
            rename,
            mac,
            mtu,
            master,
            up,
        } => {
            let l = nl.require_link(link).await?;
            let cfg = LinkConfig {
                mac: *mac,
                mtu: *mtu,
                master: *master,
                name: rename.as_deref(),
                up: *up,
            };
            nl.configure(l.index, cfg).await
        }
        Op::MoveTo { link, ns } => {
            let l = nl.require_link(link).await?;
            let fd = std::os::fd::AsRawFd::as_raw_fd(ns.netns()?.file());
            nl.move_to_netns(l.index, fd).await
        }
        Op::DeleteLink { link } => match nl.link_by_name(link).await? {
            Some(l) => ok_if(nl.delete_link(l.index).await, Error::is_no_device),
            None => Ok(()),
        },
        Op::AddAddress {
            link,
            net,
            exist_ok,
        } => {
            let l = nl.require_link(link).await?;
            let r = nl.add_address(l.index, IpNet::V4(*net)).await;
            if *exist_ok {
                ok_if(r, Error::is_exists)
            } else {
                r
            }
        }
        Op::DelAddress { link, net } => {
            let l = nl.require_link(link).await?;
            nl.del_address(l.index, IpNet::V4(*net)).await
        }
        Op::AddRoute { link, dst, via } => {
            let l = nl.require_link(link).await?;
            let r = match via {
                Some(gw) => nl.add_gateway_route(l.index, *dst, *gw).await,
                None => nl.add_link_route(l.index, *dst).await,
            };
            ok_if(r, Error::is_exists)
        }
        Op::Sysctl {
            setting,
            best_effort,
        } => {
            let r = match setting {
                // Through netlink rather than /sys/class/net/*/brport: /sys is read-only
                // where the router runs in a container without every privilege.
                Sysctl::Hairpin(link) => match nl.require_link(link).await {
                    Ok(l) => nl.set_hairpin(l.index, true).await,
                    Err(e) => Err(e),
                },
                other => other.set(),
            };
            match r {
                Err(_) if *best_effort => Ok(()),
                r => r,
            }
        }
        Op::Announce { link, mac, ips } => {
            if let Err(e) = crate::arp::announce(link, *mac, ips) {
                tracing::warn!("{e}");
            }
            Ok(())
        }
        Op::FdbAppendRemote { index, mac, dst } => nl.fdb_append_remote(*index, *mac, *dst).await,
        Op::FdbReplaceStatic { index, mac } => nl.fdb_replace_static(*index, *mac).await,
        Op::FdbDel {
            index,
            mac,
            dst,
            master,
        } => nl.fdb_del(*index, *mac, *dst, *master).await,
        Op::FlushLearned { index } => nl.flush_learned(*index).await,
        Op::ArpReplaceStatic { index, ip, mac } => nl.arp_replace_static(*index, *ip, *mac).await,
        Op::ArpDel { index, ip } => nl.arp_del(*index, *ip).await,
    }
}

impl HostOps for LinuxHost {
    fn host_ns(&self) -> Result<NsId> {
        Netns::current()?.id()
    }

    fn init_ns(&self) -> Option<NsId> {
        Netns::open(Path::new("/proc/1/ns/net"))
            .and_then(|n| n.id())
            .ok()
    }

    fn open_ns(&self, spec: &str) -> Result<Ns> {
        Ns::open(&netns::resolve(spec)?)
    }

    fn ns_alive(&self, path: &Path, id: NsId) -> bool {
        Netns::open(path)
            .and_then(|ns| ns.id())
            .is_ok_and(|now| now == id)
    }

    fn apply<'a>(
        &'a self,
        at: &'a At,
        ops: Vec<Op>,
    ) -> OpFuture<'a, std::result::Result<(), OpError>> {
        Box::pin(async move {
            match at {
                At::Host => apply_all(&self.nl, ops).await,
                At::Ns(ns) => {
                    let first = ops.first().cloned();
                    let entered = |source: Error| OpError {
                        position: 0,
                        op: first.clone().unwrap_or(Op::FlushLearned { index: 0 }),
                        source,
                    };
                    let netns = ns.netns().map_err(entered)?;
                    netns::run_in(netns, move || async move {
                        let nl = Netlink::new().map_err(|source| OpError {
                            position: 0,
                            op: ops
                                .first()
                                .cloned()
                                .unwrap_or(Op::FlushLearned { index: 0 }),
                            source,
                        })?;
                        apply_all(&nl, ops).await
                    })
                    .await
                    .map_err(entered)?
                }
            }
        })
    }

    fn link<'a>(&'a self, at: &'a At, name: &'a str) -> OpFuture<'a, Result<Option<Link>>> {
        Box::pin(async move {
            match at {
                At::Host => self.nl.link_by_name(name).await,
                At::Ns(ns) => {
                    let name = name.to_string();
                    netns::run_in(ns.netns()?, move || async move {
                        Netlink::new()?.link_by_name(&name).await
                    })
                    .await?
                }
            }
        })
    }

    fn links(&self) -> OpFuture<'_, Result<Vec<Link>>> {
        Box::pin(self.nl.links())
    }

    fn addresses(&self, index: u32) -> OpFuture<'_, Result<Vec<IpNet>>> {
        Box::pin(async move {
            Ok(self
                .nl
                .addresses(Some(index))
                .await?
                .into_iter()
                .map(|(_, n)| n)
                .collect())
        })
    }

    fn wait_forwarding<'a>(&'a self, port: &'a str) -> OpFuture<'a, bool> {
        Box::pin(async move {
            const FORWARDING: &str = "3";
            let path = format!("/sys/class/net/{port}/brport/state");
            for _ in 0..200 {
                if std::fs::read_to_string(&path).is_ok_and(|s| s.trim() == FORWARDING) {
                    return true;
                }
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            false
        })
    }

    fn fdb(&self, index: Option<u32>) -> OpFuture<'_, Result<Vec<FdbRecord>>> {
        Box::pin(self.nl.fdb(index))
    }

    fn static_arp(&self, index: u32) -> OpFuture<'_, Result<Vec<Neighbour>>> {
        Box::pin(self.nl.static_arp(index))
    }
}
