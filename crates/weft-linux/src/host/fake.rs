//! A model of a host for tests that run without root: namespaces, links, addresses,
//! forwarding-database and neighbour entries, kept in memory; every operation applied is
//! recorded (where, what) for tests to assert on, and chosen operations can be made to fail.
//!
//! The model is as faithful as the daemon's logic needs and no more: veth pairs, renames,
//! moves between namespaces, deletion taking the peer along, addresses that exist already.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::Mutex;

use ipnet::{IpNet, Ipv4Net};

use super::{At, HostOps, Neighbour, Ns, NsId, Op, OpError, OpFuture};
use crate::fdb::{FdbRecord, FdbState};
use crate::netlink::Link;
use crate::{Error, Result};

const HOST_NS: NsId = (1, 1);
const INIT_NS: NsId = (1, 0);

type FailWhen = Box<dyn Fn(&At, &Op) -> bool + Send>;

#[derive(Clone, Debug)]
struct FakeLink {
    /// `None`: the router's namespace.
    ns: Option<NsId>,
    link: Link,
    peer: Option<u32>,
}

#[derive(Default)]
struct State {
    next_index: u32,
    next_ns: u64,
    namespaces: Vec<(String, Ns)>,
    gone: BTreeSet<NsId>,
    links: Vec<FakeLink>,
    addrs: Vec<(u32, Ipv4Net)>,
    fdb: Vec<FdbRecord>,
    arp: Vec<(u32, Ipv4Addr, [u8; 6])>,
    log: Vec<(String, Op)>,
    fail: Vec<FailWhen>,
}

/// The modelled host.
pub struct FakeHost {
    s: Mutex<State>,
}

impl Default for FakeHost {
    fn default() -> Self {
        FakeHost::new()
    }
}

fn ns_of(at: &At) -> Option<NsId> {
    match at {
        At::Host => None,
        At::Ns(ns) => Some(ns.id()),
    }
}

fn link(index: u32, name: &str, mac: [u8; 6], mtu: u32, kind: &str) -> Link {
    Link {
        index,
        name: name.to_string(),
        mac: Some(mac),
        mtu,
        up: false,
        master: None,
        kind: Some(kind.to_string()),
        peer_index: None,
        peer_netnsid: None,
    }
}

impl State {
    fn find(&self, ns: Option<NsId>, name: &str) -> Option<usize> {
        self.links
            .iter()
            .position(|l| l.ns == ns && l.link.name == name)
    }

    fn require(&self, ns: Option<NsId>, name: &str) -> Result<usize> {
        self.find(ns, name)
            .ok_or_else(|| Error::NoSuchLink(name.to_string()))
    }

    fn new_index(&mut self) -> u32 {
        self.next_index += 1;
        self.next_index
    }

    fn mac(index: u32) -> [u8; 6] {
        let b = index.to_be_bytes();
        [0x02, 0xfa, b[0], b[1], b[2], b[3]]
    }

    fn exists(what: &str) -> Error {
        Error::Netlink {
            op: "adding",
            object: what.to_string(),
            detail: "File exists (os error 17)".into(),
            errno: Some(libc::EEXIST),
        }
    }

    fn apply(&mut self, at: &At, op: &Op) -> Result<()> {
        let ns = ns_of(at);
        match op {
            Op::CreateVeth { name, peer, mtu } => {
                if self.find(ns, name).is_some() || self.find(ns, peer).is_some() {
                    return Err(State::exists(name));
                }
                let (a, b) = (self.new_index(), self.new_index());
                self.links.push(FakeLink {
                    ns,
                    link: link(a, name, State::mac(a), *mtu, "veth"),
                    peer: Some(b),
                });
                self.links.push(FakeLink {
                    ns,
                    link: link(b, peer, State::mac(b), *mtu, "veth"),
                    peer: Some(a),
                });
            }
            Op::SetLink {
                link,
                rename,
                mac,
                mtu,
                master,
                up,
            } => {
                let i = self.require(ns, link)?;
                if let Some(n) = rename {
                    if self.find(ns, n).is_some() {
                        return Err(State::exists(n));
                    }
                    self.links[i].link.name = n.clone();
                }
                let l = &mut self.links[i].link;
                if mac.is_some() {
                    l.mac = *mac;
                }
                if let Some(m) = mtu {
                    l.mtu = *m;
                }
                if master.is_some() {
                    l.master = *master;
                }
                l.up |= *up;
            }
            Op::MoveTo { link, ns: to } => {
                let i = self.require(ns, link)?;
                if self.gone.contains(&to.id()) {
                    return Err(Error::Other(format!("{to:?} is gone")));
                }
                let l = &mut self.links[i];
                l.ns = Some(to.id());
                // Moving takes a link down and off its bridge.
                l.link.up = false;
                l.link.master = None;
            }
            Op::DeleteLink { link } => {
                if let Some(i) = self.find(ns, link) {
                    let gone = self.links.remove(i);
                    let peer = gone.peer;
                    self.links
                        .retain(|l| Some(l.link.index) != peer && l.link.index != gone.link.index);
                    self.addrs
                        .retain(|(x, _)| *x != gone.link.index && Some(*x) != peer);
                }
            }
            Op::AddAddress {
                link,
                net,
                exist_ok,
            } => {
                let i = self.links[self.require(ns, link)?].link.index;
                if self.addrs.contains(&(i, *net)) {
                    return if *exist_ok {
                        Ok(())
                    } else {
                        Err(State::exists(&net.to_string()))
                    };
                }
                self.addrs.push((i, *net));
            }
            Op::DelAddress { link, net } => {
                let i = self.links[self.require(ns, link)?].link.index;
                self.addrs.retain(|a| *a != (i, *net));
            }
            Op::AddRoute { link, .. } | Op::Announce { link, .. } => {
                self.require(ns, link)?;
            }
            Op::Sysctl { .. } | Op::FlushLearned { .. } => {}
            Op::FdbAppendRemote { index, mac, dst } => self.fdb.push(FdbRecord {
                ifindex: *index,
                mac: *mac,
                dst: Some(*dst),
                master: false,
                bridge: None,
                state: FdbState::Permanent,
                used: None,
            }),
            Op::FdbReplaceStatic { index, mac } => {
                self.fdb
                    .retain(|r| !(r.ifindex == *index && r.mac == *mac && r.master));
                self.fdb.push(FdbRecord {
                    ifindex: *index,
                    mac: *mac,
                    dst: None,
                    master: true,
                    bridge: None,
                    state: FdbState::Static,
                    used: None,
                });
            }
            Op::FdbDel {
                index,
                mac,
                dst,
                master,
            } => self.fdb.retain(|r| {
                !(r.ifindex == *index && r.mac == *mac && r.dst == *dst && r.master == *master)
            }),
            Op::ArpReplaceStatic { index, ip, mac } => {
                self.arp.retain(|(i, a, _)| !(i == index && a == ip));
                self.arp.push((*index, *ip, *mac));
            }
            Op::ArpDel { index, ip } => self.arp.retain(|(i, a, _)| !(i == index && a == ip)),
        }
        Ok(())
    }
}

impl FakeHost {
    pub fn new() -> FakeHost {
        FakeHost {
            s: Mutex::new(State {
                next_index: 1,
                next_ns: 100,
                ..Default::default()
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.s.lock().expect("the fake host's lock")
    }

    /// A link in the router's namespace (a bridge, a VXLAN device), up; returns its index.
    pub fn add_link(&self, name: &str, kind: &str, mtu: u32) -> u32 {
        let mut s = self.state();
        let i = s.new_index();
        let mut l = link(i, name, State::mac(i), mtu, kind);
        l.up = true;
        s.links.push(FakeLink {
            ns: None,
            link: l,
            peer: None,
        });
        i
    }

    /// A container's namespace, by the name `ip netns` would give it.
    pub fn add_namespace(&self, name: &str) -> Ns {
        let mut s = self.state();
        s.next_ns += 1;
        let ns = Ns::modelled(format!("/run/netns/{name}"), (2, s.next_ns));
        s.namespaces.push((name.to_string(), ns.clone()));
        ns
    }

    /// The namespace goes away (its container stopped), taking its links along.
    pub fn remove_namespace(&self, name: &str) {
        let mut s = self.state();
        let Some(p) = s.namespaces.iter().position(|(n, _)| n == name) else {
            return;
        };
        let (_, ns) = s.namespaces.remove(p);
        s.gone.insert(ns.id());
        let inside: Vec<FakeLink> = s
            .links
            .iter()
            .filter(|l| l.ns == Some(ns.id()))
            .cloned()
            .collect();
        for l in inside {
            let gone = Op::DeleteLink {
                link: l.link.name.clone(),
            };
            let _ = s.apply(&At::Ns(ns.clone()), &gone);
        }
    }

    /// Makes every later operation for which `when` holds fail.
    pub fn fail_when(&self, when: impl Fn(&At, &Op) -> bool + Send + 'static) {
        self.state().fail.push(Box::new(when));
    }

    /// Every operation applied so far (failed ones included, last), with where.
    pub fn ops(&self) -> Vec<(String, Op)> {
        self.state().log.clone()
    }

    /// As [`FakeHost::ops`], and forgets them.
    pub fn take_ops(&self) -> Vec<(String, Op)> {
        std::mem::take(&mut self.state().log)
    }

    /// The links in a namespace (`None`: the router's).
    pub fn links_in(&self, ns: Option<&Ns>) -> Vec<Link> {
        let id = ns.map(Ns::id);
        self.state()
            .links
            .iter()
            .filter(|l| l.ns == id)
            .map(|l| l.link.clone())
            .collect()
    }

    /// The addresses on a link (by index).
    pub fn addresses_of(&self, index: u32) -> Vec<Ipv4Net> {
        self.state()
            .addrs
            .iter()
            .filter(|(i, _)| *i == index)
            .map(|(_, n)| *n)
            .collect()
    }

    /// A forwarding-database entry as the kernel would have it (learnt, say).
    pub fn add_fdb(&self, r: FdbRecord) {
        self.state().fdb.push(r);
    }

    /// The neighbour entries (index, address, MAC).
    pub fn arp(&self) -> Vec<(u32, Ipv4Addr, [u8; 6])> {
        self.state().arp.clone()
    }

    /// The forwarding-database entries.
    pub fn fdb_entries(&self) -> Vec<FdbRecord> {
        self.state().fdb.clone()
    }
}

impl HostOps for FakeHost {
    fn host_ns(&self) -> Result<NsId> {
        Ok(HOST_NS)
    }

    fn init_ns(&self) -> Option<NsId> {
        Some(INIT_NS)
    }

    fn open_ns(&self, spec: &str) -> Result<Ns> {
        let s = self.state();
        if spec == "host" || spec == "1" {
            return Ok(Ns::modelled("/proc/1/ns/net", INIT_NS));
        }
        let name = spec.strip_prefix("/run/netns/").unwrap_or(spec);
        s.namespaces
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, ns)| ns.clone())
            .ok_or_else(|| {
                Error::Other(format!(
                    "container {spec:?} not found: no such namespace (give a name from 'ip netns', a path to a network namespace file, or a PID)"
                ))
            })
    }

    fn ns_alive(&self, path: &Path, id: NsId) -> bool {
        self.state()
            .namespaces
            .iter()
            .any(|(_, ns)| ns.path() == path && ns.id() == id)
    }

    fn apply<'a>(
        &'a self,
        at: &'a At,
        ops: Vec<Op>,
    ) -> OpFuture<'a, std::result::Result<(), OpError>> {
        Box::pin(async move {
            let mut s = self.state();
            if let At::Ns(ns) = at
                && s.gone.contains(&ns.id())
            {
                return Err(OpError {
                    position: 0,
                    op: ops
                        .first()
                        .cloned()
                        .unwrap_or(Op::FlushLearned { index: 0 }),
                    source: Error::Other(format!("entering namespace {ns:?}: gone")),
                });
            }
            for (position, op) in ops.into_iter().enumerate() {
                s.log.push((at.to_string(), op.clone()));
                let injected = s.fail.iter().any(|f| f(at, &op));
                let r = if injected {
                    Err(Error::Other(format!("injected failure: {op:?}")))
                } else {
                    s.apply(at, &op)
                };
                if let Err(source) = r {
                    return Err(OpError {
                        position,
                        op,
                        source,
                    });
                }
            }
            Ok(())
        })
    }

    fn link<'a>(&'a self, at: &'a At, name: &'a str) -> OpFuture<'a, Result<Option<Link>>> {
        Box::pin(async move {
            let s = self.state();
            Ok(s.find(ns_of(at), name).map(|i| s.links[i].link.clone()))
        })
    }

    fn links(&self) -> OpFuture<'_, Result<Vec<Link>>> {
        Box::pin(async move { Ok(self.links_in(None)) })
    }

    fn addresses(&self, index: u32) -> OpFuture<'_, Result<Vec<IpNet>>> {
        Box::pin(async move {
            Ok(self
                .addresses_of(index)
                .into_iter()
                .map(IpNet::V4)
                .collect())
        })
    }

    fn wait_forwarding<'a>(&'a self, _port: &'a str) -> OpFuture<'a, bool> {
        Box::pin(async { true })
    }

    fn fdb(&self, index: Option<u32>) -> OpFuture<'_, Result<Vec<FdbRecord>>> {
        Box::pin(async move {
            Ok(self
                .state()
                .fdb
                .iter()
                .filter(|r| index.is_none_or(|i| r.ifindex == i))
                .copied()
                .collect())
        })
    }

    fn static_arp(&self, index: u32) -> OpFuture<'_, Result<Vec<Neighbour>>> {
        Box::pin(async move {
            Ok(self
                .state()
                .arp
                .iter()
                .filter(|(i, _, _)| *i == index)
                .map(|(_, a, m)| (*a, *m))
                .collect())
        })
    }
}
