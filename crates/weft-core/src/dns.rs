//! weftDNS records and answers, free of I/O.
//!
//! [`Records`] is a CRDT of `(hostname, origin, container, address)` entries. Only the origin
//! peer adds or removes (tombstones) its entries, bumping their version; everyone merges by
//! "higher version wins, and at equal versions a tombstone wins", so all peers converge and a
//! removal beats a stale copy held by a peer that was partitioned. Tombstones are purged after
//! [`TOMBSTONE_TTL`]. A peer that leaves the mesh takes its entries with it. Entries claiming
//! our own origin that we do not hold (left from a previous run) are tombstoned and
//! re-announced, so stale names self-heal after a restart.
//!
//! [`Dns`] wraps the records as a gossip service for [`crate::node::Node`]; [`resolve`] decides
//! how to answer a query.

use std::collections::{BTreeMap, VecDeque};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use tracing::info;
use weft_proto::PeerName;
use weft_proto::dns::{DnsEntry, DnsUpdate};

/// How long a removal is remembered (to beat stale copies) before it is forgotten.
pub const TOMBSTONE_TTL: Duration = Duration::from_secs(30 * 60);
/// Entries (tombstones included) one origin may have in our records: a busy host's
/// containers and half an hour of their churn fit many times over; one peer inventing names
/// does not crowd out everyone else's.
pub const MAX_ENTRIES_PER_ORIGIN: usize = 16_384;
/// Entries over all origins.
pub const MAX_ENTRIES: usize = 131_072;

type Key = (String, PeerName, String, u32);

fn key(e: &DnsEntry) -> Key {
    (
        e.hostname.to_ascii_lowercase(),
        e.origin,
        e.container.clone(),
        e.addr,
    )
}

/// Lower-cases and makes fully qualified: `Web.weave.local` → `web.weave.local.`.
pub fn normalize(name: &str) -> String {
    let mut n = name.trim().to_ascii_lowercase();
    if !n.ends_with('.') {
        n.push('.');
    }
    n
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DnsError {
    #[error("{name} is not in the DNS domain {domain}; names must end in .{domain}")]
    NotInDomain { name: String, domain: String },
    #[error("invalid hostname {0:?}")]
    Invalid(String),
    #[error(
        "this peer already has {MAX_ENTRIES_PER_ORIGIN} DNS entries (removed ones count for {} minutes); remove some first",
        TOMBSTONE_TTL.as_secs() / 60
    )]
    Full,
}

#[derive(Debug, Clone)]
struct Stored {
    entry: DnsEntry,
    tombstoned_at: Option<Instant>,
}

#[derive(Debug, Clone)]
pub struct Records {
    me: PeerName,
    domain: String,
    entries: BTreeMap<Key, Stored>,
    /// Entries per origin, kept in step with `entries`.
    per_origin: BTreeMap<PeerName, usize>,
}

/// What merging an update did.
#[derive(Debug, Default)]
pub struct Merged {
    /// Entries that were new or newer: worth relaying.
    pub improved: Vec<DnsEntry>,
    /// New entries refused: their origin, or the records, were at their bound.
    pub over_limit: usize,
    /// Our own entries that others had wrong, re-announced at a higher version.
    pub reasserted: Vec<DnsEntry>,
}

impl Records {
    pub fn new(me: PeerName, domain: &str) -> Self {
        Records {
            me,
            domain: normalize(domain),
            entries: BTreeMap::new(),
            per_origin: BTreeMap::new(),
        }
    }

    /// Whether a new entry of `origin` fits the bounds.
    fn has_room(&self, origin: PeerName) -> bool {
        self.entries.len() < MAX_ENTRIES
            && self.per_origin.get(&origin).copied().unwrap_or(0) < MAX_ENTRIES_PER_ORIGIN
    }

    fn insert_new(&mut self, k: Key, s: Stored) {
        *self.per_origin.entry(s.entry.origin).or_default() += 1;
        self.entries.insert(k, s);
    }

    fn recount(&mut self) {
        self.per_origin.clear();
        for (_, o, _, _) in self.entries.keys() {
            *self.per_origin.entry(*o).or_default() += 1;
        }
    }

    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// Whether `name` (normalized) is in our domain.
    pub fn in_domain(&self, name: &str) -> bool {
        name == self.domain || name.ends_with(&format!(".{}", self.domain))
    }

    /// Registers `hostname` → `addr` for `container`. Re-adding a removed entry revives it.
    pub fn add(
        &mut self,
        hostname: &str,
        container: &str,
        addr: Ipv4Addr,
    ) -> Result<Option<DnsEntry>, DnsError> {
        let mut fq = hostname.trim().to_string();
        if !fq.ends_with('.') {
            fq.push('.');
        }
        if fq.len() > weft_proto::dns::MAX_HOSTNAME || fq.starts_with('.') || fq.contains("..") {
            return Err(DnsError::Invalid(hostname.to_string()));
        }
        if !self.in_domain(&fq.to_ascii_lowercase()) {
            return Err(DnsError::NotInDomain {
                name: fq,
                domain: self.domain.clone(),
            });
        }
        let mut e = DnsEntry {
            hostname: fq,
            origin: self.me,
            container: container.to_string(),
            addr: u32::from(addr),
            version: 1,
            tombstone: false,
        };
        let k = key(&e);
        let room = self.has_room(self.me);
        match self.entries.get_mut(&k) {
            Some(s) if !s.entry.tombstone => Ok(None),
            Some(s) => {
                e.version = s.entry.version.saturating_add(1);
                *s = Stored {
                    entry: e.clone(),
                    tombstoned_at: None,
                };
                Ok(Some(e))
            }
            None if !room => Err(DnsError::Full),
            None => {
                self.insert_new(
                    k,
                    Stored {
                        entry: e.clone(),
                        tombstoned_at: None,
                    },
                );
                Ok(Some(e))
            }
        }
    }

    /// Tombstones our entries for `container`, narrowed by address and/or hostname.
    pub fn remove(
        &mut self,
        now: Instant,
        container: &str,
        addr: Option<Ipv4Addr>,
        hostname: Option<&str>,
    ) -> Vec<DnsEntry> {
        let host = hostname.map(normalize);
        let mut out = Vec::new();
        for s in self.entries.values_mut() {
            let e = &mut s.entry;
            let matches = e.origin == self.me
                && !e.tombstone
                && e.container == container
                && addr.is_none_or(|a| u32::from(a) == e.addr)
                && host
                    .as_ref()
                    .is_none_or(|h| *h == e.hostname.to_ascii_lowercase());
            if matches {
                e.tombstone = true;
                e.version = e.version.saturating_add(1);
                s.tombstoned_at = Some(now);
                out.push(e.clone());
            }
        }
        out
    }

    /// Merges entries from gossip. `known(origin)` says whether the origin is a peer we know;
    /// entries of unknown origins are ignored (they would never be removed).
    pub fn merge(
        &mut self,
        now: Instant,
        incoming: Vec<DnsEntry>,
        known: impl Fn(PeerName) -> bool,
    ) -> Merged {
        let mut m = Merged::default();
        for e in incoming {
            if !e.valid() {
                continue;
            }
            let k = key(&e);
            if e.origin == self.me {
                let room = self.has_room(self.me);
                // Only we write our entries: correct anyone who has them differently.
                match self.entries.get_mut(&k) {
                    Some(ours) if ours.entry.version >= e.version && ours.entry == e => {}
                    Some(ours) if ours.entry.version > e.version => {
                        m.reasserted.push(ours.entry.clone())
                    }
                    Some(ours) => {
                        ours.entry.version = e.version.saturating_add(1);
                        m.reasserted.push(ours.entry.clone());
                    }
                    None if e.tombstone => {}
                    None if !room => m.over_limit += 1,
                    None => {
                        let mut t = e;
                        t.tombstone = true;
                        t.version = t.version.saturating_add(1);
                        self.insert_new(
                            k,
                            Stored {
                                entry: t.clone(),
                                tombstoned_at: Some(now),
                            },
                        );
                        m.reasserted.push(t);
                    }
                }
                continue;
            }
            if !known(e.origin) {
                continue;
            }
            let existing = self.entries.get(&k);
            let newer = existing.is_none_or(|s| {
                e.version > s.entry.version
                    || (e.version == s.entry.version && e.tombstone && !s.entry.tombstone)
            });
            if !newer {
                continue;
            }
            let stored = Stored {
                tombstoned_at: e.tombstone.then_some(now),
                entry: e.clone(),
            };
            if existing.is_some() {
                self.entries.insert(k, stored);
            } else if self.has_room(e.origin) {
                self.insert_new(k, stored);
            } else {
                m.over_limit += 1;
                continue;
            }
            m.improved.push(e);
        }
        m
    }

    /// Drops every entry of a peer that left.
    pub fn peer_removed(&mut self, peer: PeerName) -> usize {
        let before = self.entries.len();
        self.entries.retain(|(_, o, _, _), _| *o != peer);
        self.per_origin.remove(&peer);
        before - self.entries.len()
    }

    /// Forgets tombstones older than [`TOMBSTONE_TTL`].
    pub fn purge(&mut self, now: Instant) {
        self.entries.retain(|_, s| {
            s.tombstoned_at
                .is_none_or(|t| now.saturating_duration_since(t) < TOMBSTONE_TTL)
        });
        self.recount();
    }

    /// Live addresses for a normalized name, without duplicates.
    pub fn lookup(&self, name: &str) -> Vec<Ipv4Addr> {
        let mut v: Vec<Ipv4Addr> = self
            .live()
            .filter(|e| e.hostname.eq_ignore_ascii_case(name))
            .map(|e| Ipv4Addr::from(e.addr))
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// The hostname of the first live entry with `addr`.
    pub fn reverse(&self, addr: Ipv4Addr) -> Option<String> {
        self.live()
            .find(|e| e.addr == u32::from(addr))
            .map(|e| e.hostname.clone())
    }

    /// Live entries in status order: hostname (case-insensitive), origin, container, address.
    pub fn live(&self) -> impl Iterator<Item = &DnsEntry> {
        self.entries
            .values()
            .map(|s| &s.entry)
            .filter(|e| !e.tombstone)
    }

    /// Everything, tombstones included (full-state gossip).
    pub fn all(&self) -> Vec<DnsEntry> {
        self.entries.values().map(|s| s.entry.clone()).collect()
    }

    /// Our own live entries for `container`.
    pub fn of_container(&self, container: &str) -> Vec<DnsEntry> {
        self.live()
            .filter(|e| e.origin == self.me && e.container == container)
            .cloned()
            .collect()
    }
}

/// How to answer one question.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resolution {
    /// A records (the caller shuffles them).
    Addresses(Vec<Ipv4Addr>),
    /// The name exists but has no records of the asked type (e.g. AAAA): NOERROR, empty.
    NoData,
    /// No such name in our domain: NXDOMAIN, never forwarded.
    NxDomain,
    Ptr(String),
    /// Not ours: ask the upstream resolvers.
    Forward,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueryType {
    A,
    Ptr,
    Other,
}

/// Decides the answer for `qname` (any case, with or without the trailing dot). A single-label
/// name means a name in our domain.
pub fn resolve(records: &Records, qname: &str, qtype: QueryType) -> Resolution {
    let mut name = normalize(qname);
    if name.matches('.').count() == 1 && name != "." {
        name = format!("{name}{}", records.domain());
    }
    if records.in_domain(&name) {
        let addrs = records.lookup(&name);
        return match (addrs.is_empty(), qtype) {
            (false, QueryType::A) => Resolution::Addresses(addrs),
            (false, _) => Resolution::NoData,
            (true, _) if name == records.domain() => Resolution::NoData,
            (true, _) => Resolution::NxDomain,
        };
    }
    if let Some(rev) = name.strip_suffix(".in-addr.arpa.") {
        let octets: Vec<u8> = rev
            .split('.')
            .rev()
            .filter_map(|o| o.parse().ok())
            .collect();
        if octets.len() == 4 && rev.split('.').count() == 4 {
            let addr = Ipv4Addr::new(octets[0], octets[1], octets[2], octets[3]);
            if let Some(h) = records.reverse(addr) {
                return match qtype {
                    QueryType::Ptr => Resolution::Ptr(h),
                    _ => Resolution::NxDomain,
                };
            }
        }
    }
    Resolution::Forward
}

/// Something [`Dns`] wants sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DnsOutput {
    Broadcast(Vec<u8>),
}

/// The records as a gossip service.
pub struct Dns {
    records: Records,
    out: VecDeque<DnsOutput>,
    next_purge: Instant,
    /// Bumped on every change of the records (so readers know when to refresh a copy).
    generation: u64,
    /// Gossiped entries refused at the bounds.
    over_limit: u64,
}

impl Dns {
    pub fn new(me: PeerName, domain: &str, now: Instant) -> Self {
        Dns {
            records: Records::new(me, domain),
            out: VecDeque::new(),
            next_purge: now + Duration::from_secs(60),
            generation: 0,
            over_limit: 0,
        }
    }

    pub fn records(&self) -> &Records {
        &self.records
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn poll_output(&mut self) -> Option<DnsOutput> {
        self.out.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        Some(self.next_purge)
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if self.next_purge <= now {
            self.next_purge = now + Duration::from_secs(60);
            self.records.purge(now);
            self.generation += 1;
        }
    }

    fn announce(&mut self, entries: Vec<DnsEntry>) {
        if !entries.is_empty() {
            self.out
                .push_back(DnsOutput::Broadcast(DnsUpdate { entries }.encode()));
        }
    }

    pub fn add(
        &mut self,
        hostname: &str,
        container: &str,
        addr: Ipv4Addr,
    ) -> Result<bool, DnsError> {
        let e = self.records.add(hostname, container, addr)?;
        let added = e.is_some();
        if let Some(e) = e {
            self.generation += 1;
            info!(
                "[nameserver {}] adding entry {} -> {addr} ({container})",
                self.records.me, e.hostname
            );
            self.announce(vec![e]);
        }
        Ok(added)
    }

    pub fn remove(
        &mut self,
        now: Instant,
        container: &str,
        addr: Option<Ipv4Addr>,
        hostname: Option<&str>,
    ) -> usize {
        let gone = self.records.remove(now, container, addr, hostname);
        let n = gone.len();
        if n > 0 {
            self.generation += 1;
        }
        self.announce(gone);
        n
    }

    /// Every entry, tombstones included, in payloads of at most `max` bytes.
    pub fn full_state(&self, max: usize) -> Vec<Vec<u8>> {
        weft_proto::chunk_by_size(self.records.all(), max)
            .into_iter()
            .map(|entries| DnsUpdate { entries }.encode())
            .collect()
    }

    /// Gossiped entries refused because the records were at their bounds.
    pub fn over_limit(&self) -> u64 {
        self.over_limit
    }

    /// A DNS gossip message; returns whether it told us something new (relay broadcasts).
    pub fn handle_message(
        &mut self,
        now: Instant,
        payload: &[u8],
        known: impl Fn(PeerName) -> bool,
    ) -> Result<bool, weft_proto::DecodeError> {
        let u = DnsUpdate::decode(payload)?;
        let m = self.records.merge(now, u.entries, known);
        self.over_limit += m.over_limit as u64;
        if !m.improved.is_empty() || !m.reasserted.is_empty() {
            self.generation += 1;
        }
        self.announce(m.reasserted);
        Ok(!m.improved.is_empty())
    }

    pub fn peer_removed(&mut self, peer: PeerName) {
        if self.records.peer_removed(peer) > 0 {
            self.generation += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn one_origin_cannot_crowd_out_the_rest() {
        let me = PeerName::from_u64(1);
        let mut r = Records::new(me, "weave.local.");
        let flood = |origin: u64, n: usize| -> Vec<DnsEntry> {
            (0..n)
                .map(|i| DnsEntry {
                    hostname: format!("n{i}.weave.local."),
                    origin: PeerName::from_u64(origin),
                    container: "c".into(),
                    addr: i as u32,
                    version: 1,
                    tombstone: false,
                })
                .collect()
        };
        let now = Instant::now();
        let m = r.merge(now, flood(2, MAX_ENTRIES_PER_ORIGIN + 10), |_| true);
        assert_eq!(m.improved.len(), MAX_ENTRIES_PER_ORIGIN);
        assert_eq!(m.over_limit, 10);
        // Another peer's names still get in, and so do ours.
        assert_eq!(r.merge(now, flood(3, 5), |_| true).improved.len(), 5);
        assert!(
            r.add("web.weave.local", "c1", ip("10.32.0.1"))
                .unwrap()
                .is_some()
        );
        // The flooder leaving frees its share.
        r.peer_removed(PeerName::from_u64(2));
        assert_eq!(r.merge(now, flood(4, 100), |_| true).improved.len(), 100);
        assert_eq!(r.per_origin.values().sum::<usize>(), r.entries.len());
    }

    #[test]
    fn our_own_names_are_bounded_too() {
        let mut r = Records::new(PeerName::from_u64(1), "weave.local.");
        for i in 0..MAX_ENTRIES_PER_ORIGIN {
            r.add(&format!("n{i}.weave.local"), "c", ip("10.32.0.1"))
                .unwrap();
        }
        assert_eq!(
            r.add("one-more.weave.local", "c", ip("10.32.0.1")),
            Err(DnsError::Full)
        );
    }

    #[test]
    fn add_lookup_remove_case_insensitive() {
        let now = Instant::now();
        let mut r = Records::new(PeerName::from_u64(1), "weave.local");
        assert!(
            r.add("Web.weave.local", "c1", ip("10.32.0.1"))
                .unwrap()
                .is_some()
        );
        assert!(
            r.add("web.weave.local.", "c2", ip("10.32.0.2"))
                .unwrap()
                .is_some()
        );
        assert!(
            r.add("web.weave.local.", "c2", ip("10.32.0.2"))
                .unwrap()
                .is_none()
        );
        assert_eq!(
            r.lookup("WEB.weave.local."),
            vec![ip("10.32.0.1"), ip("10.32.0.2")]
        );
        assert!(matches!(
            r.add("web.example.com", "c1", ip("10.32.0.1")),
            Err(DnsError::NotInDomain { .. })
        ));
        assert_eq!(r.remove(now, "c1", None, None).len(), 1);
        assert_eq!(r.lookup("web.weave.local."), vec![ip("10.32.0.2")]);
        assert_eq!(
            r.reverse(ip("10.32.0.2")).as_deref(),
            Some("web.weave.local.")
        );
        // Re-adding revives at a higher version.
        let e = r
            .add("web.weave.local", "c1", ip("10.32.0.1"))
            .unwrap()
            .unwrap();
        assert_eq!(e.version, 3);
    }

    /// Found by fuzzing: a peer handing us one of our own entries at the highest version
    /// made the correction overflow. Versions from the wire saturate.
    #[test]
    fn our_entry_at_the_highest_version_does_not_overflow() {
        let now = Instant::now();
        let me = PeerName::from_u64(1);
        let mut r = Records::new(me, "weave.local.");
        let forged = DnsEntry {
            hostname: "x.weave.local.".into(),
            origin: me,
            container: "c".into(),
            addr: u32::from(ip("10.32.0.1")),
            version: u64::MAX,
            tombstone: false,
        };
        let m = r.merge(now, vec![forged.clone()], |_| true);
        assert_eq!(m.reasserted.len(), 1);
        assert!(m.reasserted[0].tombstone);
        r.add("y.weave.local", "c", ip("10.32.0.2")).unwrap();
        let mut again = forged;
        again.hostname = "y.weave.local.".into();
        again.addr = u32::from(ip("10.32.0.2"));
        r.merge(now, vec![again], |_| true);
    }

    #[test]
    fn tombstone_beats_stale_copy_and_self_heals() {
        let now = Instant::now();
        let (a, b) = (PeerName::from_u64(1), PeerName::from_u64(2));
        let mut ra = Records::new(a, "weave.local.");
        let mut rb = Records::new(b, "weave.local.");
        ra.add("x.weave.local", "c", ip("10.32.0.1")).unwrap();
        rb.merge(now, ra.all(), |_| true);
        let stale = rb.all();
        ra.remove(now, "c", None, None);
        rb.merge(now, ra.all(), |_| true);
        assert!(rb.lookup("x.weave.local.").is_empty());
        // The stale live copy comes back (e.g. from a partitioned peer): the tombstone wins.
        let m = rb.merge(now, stale.clone(), |_| true);
        assert!(m.improved.is_empty());
        assert!(rb.lookup("x.weave.local.").is_empty());
        // A restarted `a` without the entry sees its old one and tombstones it.
        let mut ra2 = Records::new(a, "weave.local.");
        let m = ra2.merge(now, stale, |_| true);
        assert_eq!(m.reasserted.len(), 1);
        assert!(m.reasserted[0].tombstone);
    }

    #[test]
    fn resolution_rules() {
        let mut r = Records::new(PeerName::from_u64(1), "weave.local.");
        r.add("web.weave.local", "c", ip("10.32.0.1")).unwrap();
        assert_eq!(
            resolve(&r, "web.weave.local", QueryType::A),
            Resolution::Addresses(vec![ip("10.32.0.1")])
        );
        assert_eq!(
            resolve(&r, "web", QueryType::A),
            Resolution::Addresses(vec![ip("10.32.0.1")])
        );
        assert_eq!(
            resolve(&r, "web.weave.local.", QueryType::Other),
            Resolution::NoData
        );
        assert_eq!(
            resolve(&r, "nope.weave.local.", QueryType::A),
            Resolution::NxDomain
        );
        assert_eq!(
            resolve(&r, "example.com.", QueryType::A),
            Resolution::Forward
        );
        assert_eq!(
            resolve(&r, "1.0.32.10.in-addr.arpa.", QueryType::Ptr),
            Resolution::Ptr("web.weave.local.".into())
        );
        assert_eq!(
            resolve(&r, "2.0.32.10.in-addr.arpa.", QueryType::Ptr),
            Resolution::Forward
        );
    }
}
