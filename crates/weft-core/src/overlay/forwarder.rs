//! Frame forwarding for the sleeve overlay.
//!
//! From a local container (read from the bridge's TAP port):
//! - STP frames are dropped; the source MAC is learned as local;
//! - a known remote destination goes to that peer via its unicast next hop;
//! - a known local destination is dropped (the bridge already delivered it);
//! - broadcast, multicast and unknown destinations are flooded along our broadcast tree with
//!   destination peer "broadcast".
//!
//! From a peer (sleeve datagram `sender`, `src`, `dst`):
//! - `dst` is another peer: relayed to the next hop with `sender` rewritten;
//! - `dst` is us: source MAC learned as `src`, frame injected into the bridge;
//! - `dst` is broadcast: learned, injected, and relayed to our children in `src`'s tree.
//!
//! Encryption is per hop: a peer whose connection carries data keys (see
//! [`Forwarder::set_keys`]) gets and must send only encrypted datagrams; each hop decrypts and
//! re-encrypts with its own neighbour's key, so a relay never needs keys it was not given.
//! UDP heartbeats travel the same way and are handed to the control plane after decryption.
//!
//! Fast path (see [`Forwarder::set_fast`]): neighbours in the fast set get our own containers'
//! frames from the kernel's VXLAN device, which the bridge feeds directly. So a local frame is
//! never sent to them through the sleeve: a unicast to a MAC behind a fast peer reached us only
//! because the bridge flooded it (VXLAN carried it too), and a flood skips them — except that a
//! fast neighbour with children in our broadcast tree gets a "relay only" copy to pass on.
//! Relayed frames always travel by sleeve: VXLAN only reaches direct neighbours.
//!
//! A datagram larger than one underlay packet ([`Forwarder::set_path_payload`]) is cut into
//! fragments by [`super::fragment`] and put back together by the receiver before anything
//! else looks at it (so a sealed super-frame is one AEAD, checked after reassembly).
//!
//! Several workers may forward for one router, each with its own [`Forwarder`] made by
//! [`Forwarder::worker`] (the daemon gives each a TAP queue and a socket of its own). They
//! share what must be one per router: the MAC cache, the path limits and the keys — with
//! each key's send counter and replay window, so every worker seals with a fresh nonce and a
//! datagram is accepted once, whichever worker reads it. The rest (statistics, scratch space,
//! fragment reassembly, fragment ids from a range of its own) is each worker's. A flow's
//! frames stay in order because the kernel keeps a flow on one TAP queue and a peer's
//! datagrams on one socket; across workers a peer's counters may arrive out of order, which
//! the replay window's 4,096 slots absorb.
//!
//! Datagrams from peers we have no established connection with, frames that claim to come
//! from us, undecodable, unauthentic, replayed and (from a keyed peer) plaintext datagrams
//! are dropped and counted.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use weft_proto::offload::{GSO_LEN, Gso};
use weft_proto::sleeve::{self, Datagram};
use weft_proto::{BROADCAST_PEER, EtherFrame, Mac, PeerName};

use super::fragment::{self, REASSEMBLY_TIMEOUT, Reassembler};
use super::mac_cache::{MacCache, MacOwner};
use super::pmtu::PathMtus;
use crate::crypto::{self, DataKey, PeerKeys, ReplayWindow, Secret};
use crate::mesh::DataPlaneTable;

/// Where the forwarder's decisions go.
pub trait Output {
    /// Send one UDP datagram made of `parts` concatenated.
    fn send(&mut self, to: SocketAddr, parts: &[&[u8]]);
    /// Write `frame` into the local bridge.
    fn inject(&mut self, frame: &[u8]);
    /// Write an offload super-frame with its header into the local bridge (whose kernel cuts
    /// it up if it must). Without offloads there is nothing to write it to as one frame.
    fn inject_gso(&mut self, gso: &Gso, frame: &[u8]) {
        let _ = gso;
        self.inject(frame);
    }
    /// A control datagram (a plain heartbeat, decrypted if it came encrypted) for the router.
    fn to_control(&mut self, from: SocketAddr, datagram: &[u8]);
    /// Send the datagrams in `train`, each `stride` bytes long but the last, to `to`. The
    /// daemon does it in one segmentation-offload send.
    fn send_train(&mut self, to: SocketAddr, train: &[u8], stride: usize) {
        for d in train.chunks(stride) {
            self.send(to, &[d]);
        }
    }
}

/// Counters a user may want to graph; every drop has a reason.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ForwarderStats {
    pub local_frames: u64,
    pub remote_frames: u64,
    pub relayed: u64,
    pub injected: u64,
    pub sent_datagrams: u64,
    pub encrypted: u64,
    pub decrypted: u64,
    pub heartbeats_in: u64,
    pub dropped_malformed: u64,
    pub dropped_unknown_sender: u64,
    /// Plaintext datagrams (or fragments) naming a neighbour as sender but coming from
    /// another address: forged, or from a stranger.
    pub dropped_wrong_source: u64,
    pub dropped_no_route: u64,
    pub dropped_loop: u64,
    pub dropped_stp: u64,
    pub dropped_local_dst: u64,
    pub dropped_too_big: u64,
    /// Encrypted datagram from a peer (or epoch) we hold no key for.
    pub dropped_no_key: u64,
    /// Failed authentication: forged, corrupted, or sealed with a key we do not share.
    pub dropped_auth: u64,
    pub dropped_replay: u64,
    /// Plaintext from a peer that must encrypt.
    pub dropped_plaintext: u64,
    /// Local frames not sent by sleeve because the fast path carried them.
    pub fast_path_skipped: u64,
    /// Frames received only to be relayed (their receiver got them by VXLAN).
    pub relay_only: u64,
    /// ARP replies our bridge made on behalf of a container behind a fast peer, for a
    /// request that came by sleeve: not sent (see [`Forwarder::set_proxied`]).
    pub dropped_proxy_arp: u64,
    /// Datagrams cut into fragments, and the fragments sent.
    pub fragmented: u64,
    pub fragments_sent: u64,
    pub fragments_received: u64,
    pub reassembled: u64,
    /// Datagrams lost because a fragment never came.
    pub dropped_fragments_incomplete: u64,
    /// Datagrams dropped because their fragments contradicted each other.
    pub dropped_fragments_inconsistent: u64,
    /// Source MACs not learnt: the MAC cache, or the owner's share of it, was full.
    pub macs_refused: u64,
}

impl ForwarderStats {
    /// Adds another worker's counters (the MAC cache's, shared, are counted once).
    pub fn add(&mut self, other: &ForwarderStats) {
        self.local_frames += other.local_frames;
        self.remote_frames += other.remote_frames;
        self.relayed += other.relayed;
        self.injected += other.injected;
        self.sent_datagrams += other.sent_datagrams;
        self.encrypted += other.encrypted;
        self.decrypted += other.decrypted;
        self.heartbeats_in += other.heartbeats_in;
        self.dropped_malformed += other.dropped_malformed;
        self.dropped_unknown_sender += other.dropped_unknown_sender;
        self.dropped_wrong_source += other.dropped_wrong_source;
        self.dropped_no_route += other.dropped_no_route;
        self.dropped_loop += other.dropped_loop;
        self.dropped_stp += other.dropped_stp;
        self.dropped_local_dst += other.dropped_local_dst;
        self.dropped_too_big += other.dropped_too_big;
        self.dropped_no_key += other.dropped_no_key;
        self.dropped_auth += other.dropped_auth;
        self.dropped_replay += other.dropped_replay;
        self.dropped_plaintext += other.dropped_plaintext;
        self.fast_path_skipped += other.fast_path_skipped;
        self.relay_only += other.relay_only;
        self.dropped_proxy_arp += other.dropped_proxy_arp;
        self.fragmented += other.fragmented;
        self.fragments_sent += other.fragments_sent;
        self.fragments_received += other.fragments_received;
        self.reassembled += other.reassembled;
        self.dropped_fragments_incomplete += other.dropped_fragments_incomplete;
        self.dropped_fragments_inconsistent += other.dropped_fragments_inconsistent;
        self.macs_refused = self.macs_refused.max(other.macs_refused);
    }
}

struct SendKey {
    epoch: u8,
    secret: Arc<Secret>,
    key: DataKey,
    /// The next nonce; workers take theirs with one atomic add, so none is used twice.
    counter: AtomicU64,
}

struct RecvKey {
    epoch: u8,
    secret: Arc<Secret>,
    key: DataKey,
    /// Checked before opening (cheap rejection) and updated after: a copy that two workers
    /// opened at once is accepted by the first update only.
    window: Mutex<ReplayWindow>,
}

/// One neighbour's data keys. A key is one object, counter and window included, for every
/// worker holding it.
#[derive(Clone, Default)]
struct PeerCrypto {
    send: Option<Arc<SendKey>>,
    recv: Vec<Arc<RecvKey>>,
}

/// What a router's workers share (see the module's description).
#[derive(Default)]
struct Shared {
    crypto: Mutex<HashMap<PeerName, PeerCrypto>>,
    macs: Mutex<MacCache>,
    /// Each neighbour's path limit, once the interface's is known.
    pmtu: Mutex<Option<PathMtus>>,
    /// Moves whenever the keys or a path limit may have changed; each worker copies them
    /// when it sees it move, so the data path reads its own copies, unlocked.
    generation: AtomicU64,
    workers: AtomicU32,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded state stays consistent between statements; a panicking worker leaves
    // nothing half-done that the others could not use.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Fragment ids carry the worker's index in their top byte: two workers sending fragments
/// to one peer at once never use the same id.
const FRAGMENT_ID_BITS: u32 = 24;

/// Scratch space for building one datagram; reused so forwarding does not allocate.
#[derive(Default)]
struct Scratch(Vec<u8>);

/// Sends datagrams, cutting those larger than one underlay packet into fragments.
struct Fragmenter {
    /// Largest UDP payload one underlay packet carries.
    max: usize,
    /// Less, towards neighbours whose path carries less (path MTU discovery).
    per_dest: HashMap<SocketAddr, usize>,
    /// The worker's range of fragment ids (its top byte).
    id_base: u32,
    next_id: u32,
    whole: Vec<u8>,
    train: Vec<u8>,
    datagrams: u64,
    fragments: u64,
}

impl Fragmenter {
    fn send(&mut self, local: PeerName, to: SocketAddr, parts: &[&[u8]], out: &mut impl Output) {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        // Almost always empty: no lookup per datagram unless some path is narrower.
        let max = if self.per_dest.is_empty() {
            self.max
        } else {
            self.per_dest.get(&to).copied().unwrap_or(self.max)
        };
        if len <= max {
            out.send(to, parts);
            return;
        }
        // A sealed datagram is one slice already; a plain one is header + frame.
        let whole: &[u8] = if let [one] = parts {
            one
        } else {
            self.whole.clear();
            for p in parts {
                self.whole.extend_from_slice(p);
            }
            &self.whole
        };
        self.next_id =
            self.id_base | (self.next_id.wrapping_add(1) & ((1 << FRAGMENT_ID_BITS) - 1));
        let stride = fragment::fragment(local, self.next_id, whole, max, &mut self.train);
        self.datagrams += 1;
        self.fragments += self.train.len().div_ceil(stride) as u64;
        out.send_train(to, &self.train, stride);
    }
}

pub struct Forwarder {
    table: Arc<DataPlaneTable>,
    shared: Arc<Shared>,
    /// This worker's copy of the shared keys.
    crypto: HashMap<PeerName, PeerCrypto>,
    stats: ForwarderStats,
    scratch: Scratch,
    /// Largest frame that fits one datagram (encrypted or not).
    max_frame: usize,
    /// Neighbours reached by the kernel's VXLAN fast path.
    fast: BTreeSet<PeerName>,
    /// MACs of containers behind fast peers, whose ARP our bridge answers itself.
    proxied: HashSet<Mac>,
    frag: Fragmenter,
    /// The `Shared::generation` whose keys and limits this worker holds (`u64::MAX`: none).
    generation: u64,
    reasm: Reassembler,
    last_reasm_expiry: Option<Instant>,
    /// Peers that are not neighbours our containers sent frames to since the last
    /// [`Forwarder::drain_wanted`]: candidates for a direct path.
    wanted: HashSet<PeerName>,
    /// When each was last handed out.
    wanted_told: HashMap<PeerName, Instant>,
}

/// A peer our containers keep sending to through relays is named again after this long.
const WANTED_REPEAT: std::time::Duration = std::time::Duration::from_secs(10);
/// At most this many peers are remembered as wanted between two drains.
const MAX_WANTED: usize = 1024;

impl std::fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forwarder")
            .field("local", &self.table.local)
            .field("stats", &self.stats)
            .field("keyed_peers", &lock(&self.shared.crypto).len())
            .finish_non_exhaustive()
    }
}

/// Inner plaintext of an encrypted frame: kind, src, dst.
const INNER_FRAME_HEADER: usize = 1 + 12;
/// The largest frame (with its offload header, if any) one sleeve datagram carries, sealed or
/// not.
pub const MAX_FRAME: usize =
    sleeve::MAX_DATAGRAM - sleeve::ENCRYPTED_HEADER_LEN - INNER_FRAME_HEADER - crypto::TAG_LEN;

impl Forwarder {
    pub fn new(local: PeerName) -> Self {
        let table = Arc::new(DataPlaneTable {
            local,
            ..Default::default()
        });
        let shared = Arc::new(Shared {
            workers: AtomicU32::new(1),
            ..Default::default()
        });
        Self::with_shared(table, shared, 0)
    }

    /// Another worker for the same router, sharing this one's keys, MAC cache and path
    /// limits, with the same table and settings (later changes to those reach only the
    /// forwarder they are made on: give them to every worker). At most 256 workers.
    pub fn worker(&self) -> Forwarder {
        let index = self.shared.workers.fetch_add(1, Ordering::Relaxed);
        assert!(index < 256, "at most 256 data-plane workers");
        let mut w = Self::with_shared(self.table.clone(), self.shared.clone(), index);
        w.max_frame = self.max_frame;
        w.fast = self.fast.clone();
        w.proxied = self.proxied.clone();
        w.frag.max = self.frag.max;
        w
    }

    fn with_shared(table: Arc<DataPlaneTable>, shared: Arc<Shared>, index: u32) -> Self {
        let id_base = index << FRAGMENT_ID_BITS;
        Forwarder {
            crypto: HashMap::new(),
            table,
            shared,
            stats: ForwarderStats::default(),
            scratch: Scratch::default(),
            max_frame: MAX_FRAME,
            fast: BTreeSet::new(),
            proxied: HashSet::new(),
            // None held yet: the first packet copies keys and limits.
            generation: u64::MAX,
            frag: Fragmenter {
                max: usize::MAX,
                per_dest: HashMap::new(),
                id_base,
                next_id: id_base,
                whole: Vec::new(),
                train: Vec::new(),
                datagrams: 0,
                fragments: 0,
            },
            reasm: Reassembler::default(),
            last_reasm_expiry: None,
            wanted: HashSet::new(),
            wanted_told: HashMap::new(),
        }
    }

    /// Whether [`Forwarder::drain_wanted`] may have something.
    pub fn has_wanted(&self) -> bool {
        !self.wanted.is_empty()
    }

    /// Peers that are not neighbours our containers sent frames to (through relays) and
    /// that were not named in the last [`WANTED_REPEAT`].
    pub fn drain_wanted(&mut self, now: Instant) -> Vec<PeerName> {
        self.wanted_told
            .retain(|_, at| now.saturating_duration_since(*at) < WANTED_REPEAT);
        let mut due = Vec::new();
        for p in self.wanted.drain() {
            if let std::collections::hash_map::Entry::Vacant(e) = self.wanted_told.entry(p) {
                e.insert(now);
                due.push(p);
            }
        }
        due
    }

    /// The largest UDP payload one underlay packet carries (underlay MTU − 28 for IPv4): larger
    /// datagrams are sent as fragments. Unset, nothing is cut (the kernel fragments, if it must).
    pub fn set_path_payload(&mut self, max: usize) {
        self.frag.max = max.max(sleeve::FRAGMENT_HEADER_LEN + 64);
        lock(&self.shared.pmtu).get_or_insert_with(|| PathMtus::new(self.frag.max));
    }

    /// When [`Forwarder::handle_timeout`] wants to be called (path MTU probes). Call it also
    /// after [`Forwarder::set_table`], so new neighbours' paths are probed. One worker of a
    /// router is enough to drive the probes.
    pub fn poll_timeout(&self) -> Option<Instant> {
        lock(&self.shared.pmtu).as_ref()?.poll_timeout()
    }

    /// Sends the path MTU probes that are due.
    pub fn handle_timeout(&mut self, now: Instant, out: &mut impl Output) {
        self.sync();
        let mut probes = Vec::new();
        {
            let mut pmtu = lock(&self.shared.pmtu);
            let Some(pmtu) = pmtu.as_mut() else {
                return;
            };
            pmtu.set_neighbours(now, &self.table.neighbours);
            pmtu.handle_timeout(now, &mut probes);
        }
        for p in probes {
            let size = u16::try_from(p.size).unwrap_or(u16::MAX);
            self.send_probe(p.peer, p.to, false, p.seq, size, out);
        }
        self.refresh_limits();
    }

    /// Each neighbour's path limit (largest UDP payload it is sent in one datagram).
    pub fn path_limits(&self) -> Vec<(PeerName, usize)> {
        lock(&self.shared.pmtu)
            .as_ref()
            .map(|m| m.limits().map(|(p, _, l)| (p, l)).collect())
            .unwrap_or_default()
    }

    /// Path limit changes since the last call: (peer, old, new).
    pub fn drain_path_changes(&mut self) -> Vec<(PeerName, usize, usize)> {
        lock(&self.shared.pmtu)
            .as_mut()
            .map(PathMtus::drain_changes)
            .unwrap_or_default()
    }

    /// Has every worker copy the path limits when they changed.
    fn refresh_limits(&mut self) {
        if self.limits() != self.frag.per_dest {
            self.changed();
        }
    }

    /// Tells every worker, this one too, to copy the keys and limits again before its next
    /// packet: a rare event, and no change another worker made meanwhile is missed.
    fn changed(&self) {
        self.shared.generation.fetch_add(1, Ordering::AcqRel);
    }

    fn limits(&self) -> HashMap<SocketAddr, usize> {
        lock(&self.shared.pmtu)
            .as_ref()
            .map(|pmtu| {
                pmtu.limits()
                    .filter(|&(_, _, l)| l < self.frag.max)
                    .map(|(_, to, l)| (to, l))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Takes up keys and limits another worker changed: one atomic load when nothing did.
    fn sync(&mut self) {
        let g = self.shared.generation.load(Ordering::Acquire);
        if g != self.generation {
            self.crypto = lock(&self.shared.crypto).clone();
            self.frag.per_dest = self.limits();
            self.generation = g;
        }
    }

    /// A probe of `size` bytes (or, with `ack`, the answer to one) to neighbour `peer` at
    /// `to`, sealed like data when the peer has keys. Never cut into fragments: its size is
    /// the question.
    fn send_probe(
        &mut self,
        peer: PeerName,
        to: SocketAddr,
        ack: bool,
        seq: u32,
        size: u16,
        out: &mut impl Output,
    ) {
        // Probes are rare (a few per neighbour a minute): building both forms costs nothing.
        let mut plain = Vec::new();
        sleeve::encode_probe(self.table.local, ack, seq, size, &mut plain);
        let flags = if ack { sleeve::FLAG_PROBE_ACK } else { 0 };
        let head = [sleeve::INNER_PROBE, flags];
        let overhead = sleeve::ENCRYPTED_HEADER_LEN + head.len() + sleeve::PROBE_BODY_LEN;
        let padding = if ack {
            0
        } else {
            usize::from(size).saturating_sub(overhead + crypto::TAG_LEN)
        };
        let pad = vec![0u8; padding];
        let inner = [&head[..], &seq.to_be_bytes(), &size.to_be_bytes(), &pad[..]];
        self.send_single(peer, to, &plain, &inner, out);
    }

    /// A probe or probe answer from neighbour `sender`, `len` bytes long as received.
    fn handle_probe(
        &mut self,
        sender: PeerName,
        ack: bool,
        seq: u32,
        size: u16,
        len: usize,
        out: &mut impl Output,
    ) {
        let Some(&to) = self.table.neighbours.get(&sender) else {
            self.stats.dropped_unknown_sender += 1;
            return;
        };
        if ack {
            if let Some(pmtu) = lock(&self.shared.pmtu).as_mut() {
                pmtu.handle_ack(sender, seq, usize::from(size));
            }
            return;
        }
        if len != usize::from(size) {
            self.stats.dropped_malformed += 1;
            return;
        }
        // Answered to the neighbour's known address, never to where the probe claims to come
        // from: a forged probe cannot aim our answers at anyone else.
        self.send_probe(sender, to, true, seq, size, out);
    }

    /// The neighbours our bridge reaches through VXLAN: local frames to them no longer go by
    /// sleeve.
    pub fn set_fast(&mut self, fast: BTreeSet<PeerName>) {
        self.fast = fast;
    }

    /// The MACs our bridge answers ARP for (containers behind fast peers; its VXLAN port has
    /// `neigh_suppress`). The bridge answers a request that came in by sleeve as well, out of
    /// the sleeve's port, with the remote container's MAC as the frame's source: sent on, that
    /// answer would teach the asker's router that the container is behind us, and its traffic
    /// would come here to be dropped. The container itself answers the flooded request, so
    /// such replies are dropped instead.
    pub fn set_proxied(&mut self, macs: HashSet<Mac>) {
        self.proxied = macs;
    }

    pub fn local(&self) -> PeerName {
        self.table.local
    }

    pub fn set_table(&mut self, table: Arc<DataPlaneTable>) {
        self.table = table;
    }

    /// Installs a neighbour's data keys from the control plane; empty keys mean the peer
    /// sends and receives plaintext (no password, or a trusted pair) or is gone. Keys that did
    /// not change keep their counters and replay windows.
    /// Shared by all workers: give them to one.
    pub fn set_keys(&mut self, peer: PeerName, keys: &PeerKeys) {
        let mut crypto = lock(&self.shared.crypto);
        if keys.send.is_none() && keys.recv.is_empty() {
            crypto.remove(&peer);
        } else {
            update_keys(crypto.entry(peer).or_default(), keys);
        }
        drop(crypto);
        self.changed();
    }

    /// Whether traffic with `peer` is encrypted.
    pub fn is_encrypted(&self, peer: PeerName) -> bool {
        lock(&self.shared.crypto).contains_key(&peer)
    }

    /// The neighbours whose traffic is encrypted, sorted.
    pub fn encrypted_peers(&self) -> Vec<PeerName> {
        let mut v: Vec<PeerName> = lock(&self.shared.crypto).keys().copied().collect();
        v.sort();
        v
    }

    /// Give it to every worker: each holds its own fragments.
    pub fn forget_peer(&mut self, peer: PeerName) {
        lock(&self.shared.macs).forget_peer(peer);
        self.reasm.forget(peer);
    }

    /// Shared by all workers: one is enough.
    pub fn expire(&mut self, now: Instant) -> usize {
        lock(&self.shared.macs).expire(now)
    }

    pub fn stats(&self) -> ForwarderStats {
        let r = self.reasm.stats();
        ForwarderStats {
            fragmented: self.frag.datagrams,
            fragments_sent: self.frag.fragments,
            fragments_received: r.fragments_in,
            reassembled: r.reassembled,
            dropped_fragments_incomplete: r.incomplete,
            dropped_fragments_inconsistent: r.inconsistent,
            macs_refused: lock(&self.shared.macs).refused,
            ..self.stats
        }
    }

    /// The MAC cache all workers share; held locked while the guard lives.
    pub fn macs(&self) -> impl std::ops::Deref<Target = MacCache> + '_ {
        lock(&self.shared.macs)
    }

    /// A frame from the local bridge.
    pub fn handle_local_frame(&mut self, now: Instant, frame: &[u8], out: &mut impl Output) {
        self.handle_local(now, None, frame, out);
    }

    /// An offload super-frame from the local bridge (a TAP with segmentation offload), with
    /// the header the kernel gave it; it travels as one unit.
    pub fn handle_local_gso(
        &mut self,
        now: Instant,
        gso: &Gso,
        frame: &[u8],
        out: &mut impl Output,
    ) {
        self.handle_local(now, Some(gso), frame, out);
    }

    fn handle_local(
        &mut self,
        now: Instant,
        gso: Option<&Gso>,
        frame: &[u8],
        out: &mut impl Output,
    ) {
        let Ok(eth) = EtherFrame::from_bytes(frame) else {
            self.stats.dropped_malformed += 1;
            return;
        };
        if frame.len() + gso.map_or(0, |_| GSO_LEN) > self.max_frame {
            self.stats.dropped_too_big += 1;
            return;
        }
        self.stats.local_frames += 1;
        let dst = eth.dst();
        if dst == Mac::STP {
            self.stats.dropped_stp += 1;
            return;
        }
        if eth.ethertype() == weft_proto::ether::ETHERTYPE_ARP && self.proxied.contains(&eth.src())
        {
            self.stats.dropped_proxy_arp += 1;
            return;
        }
        self.sync();
        let dst_peer = {
            let mut macs = lock(&self.shared.macs);
            macs.learn(now, eth.src(), MacOwner::Local);
            if dst.is_multicast() {
                None
            } else {
                macs.lookup(&dst)
            }
        };
        let local = self.table.local;
        match dst_peer {
            Some(MacOwner::Local) => self.stats.dropped_local_dst += 1,
            // The bridge only hands us such a frame when flooding (VXLAN got it as well) or
            // from a stale entry learnt before the peer went fast; a flood covers both without
            // sending the peer a second copy.
            Some(MacOwner::Peer(p)) if self.fast.contains(&p) => self.flood(local, gso, frame, out),
            Some(MacOwner::Peer(p)) => self.unicast(local, p, gso, frame, out),
            None => self.flood(local, gso, frame, out),
        }
    }

    /// Whether `sender` is a neighbour and, for a plaintext datagram (`from` given), sent it
    /// from that neighbour's address: nothing authenticates a plaintext one otherwise
    /// (encrypted ones carry their proof, and pass `None`).
    fn sent_by_neighbour(&mut self, sender: PeerName, from: Option<SocketAddr>) -> bool {
        match self.table.neighbours.get(&sender) {
            None => {
                self.stats.dropped_unknown_sender += 1;
                false
            }
            Some(a) if from.is_some_and(|f| f != *a) => {
                self.stats.dropped_wrong_source += 1;
                false
            }
            Some(_) => true,
        }
    }

    /// A datagram from the sleeve socket, sent by `from`. Heartbeats go to
    /// [`Output::to_control`]; frames are delivered or relayed. Encrypted datagrams are
    /// decrypted in place.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        from: SocketAddr,
        datagram: &mut [u8],
        out: &mut impl Output,
    ) {
        self.sync();
        if let Ok(Datagram::Fragment {
            sender,
            id,
            offset,
            total,
            payload,
        }) = Datagram::decode(datagram)
        {
            // Only neighbours may make us hold memory for their datagrams, from their address.
            if !self.sent_by_neighbour(sender, Some(from)) {
                return;
            }
            if self
                .last_reasm_expiry
                .is_none_or(|t| now.saturating_duration_since(t) >= REASSEMBLY_TIMEOUT)
            {
                self.reasm.expire(now);
                self.last_reasm_expiry = Some(now);
            }
            if let Some(mut whole) = self.reasm.push(now, sender, id, offset, total, payload) {
                if Datagram::kind(&whole) == Some(sleeve::Kind::Fragment) {
                    self.stats.dropped_malformed += 1;
                    return;
                }
                self.handle_datagram(now, from, &mut whole, out);
            }
            return;
        }
        let (sender, src, dst, relay_only, gso, frame_at, frame_end) =
            match Datagram::decode(datagram) {
                Ok(Datagram::Frame {
                    sender,
                    src,
                    dst,
                    relay_only,
                    gso,
                    ..
                }) => {
                    if self.crypto.contains_key(&sender) {
                        self.stats.dropped_plaintext += 1;
                        return;
                    }
                    let at = if gso.is_some() {
                        sleeve::GSO_FRAME_HEADER_LEN
                    } else {
                        sleeve::FRAME_HEADER_LEN
                    };
                    (sender, src, dst, relay_only, gso, at, datagram.len())
                }
                Ok(Datagram::Heartbeat { sender, .. }) => {
                    if self.crypto.contains_key(&sender) {
                        self.stats.dropped_plaintext += 1;
                        return;
                    }
                    self.stats.heartbeats_in += 1;
                    out.to_control(from, datagram);
                    return;
                }
                Ok(Datagram::Probe {
                    sender,
                    ack,
                    seq,
                    size,
                }) => {
                    if self.crypto.contains_key(&sender) {
                        self.stats.dropped_plaintext += 1;
                        return;
                    }
                    if !self.sent_by_neighbour(sender, Some(from)) {
                        return;
                    }
                    let len = datagram.len();
                    self.handle_probe(sender, ack, seq, size, len, out);
                    return;
                }
                Ok(Datagram::Encrypted {
                    sender,
                    epoch,
                    counter,
                }) => {
                    if !self.open(sender, epoch, counter, datagram) {
                        return;
                    }
                    let end = datagram.len() - crypto::TAG_LEN;
                    let inner = &datagram[sleeve::ENCRYPTED_HEADER_LEN..end];
                    match inner[0] {
                        sleeve::INNER_FRAME
                            if inner.len()
                                >= INNER_FRAME_HEADER + weft_proto::ether::ETHER_HEADER_LEN =>
                        {
                            let at = sleeve::ENCRYPTED_HEADER_LEN;
                            (
                                sender,
                                peer_at(datagram, at + 1),
                                peer_at(datagram, at + 7),
                                false,
                                None,
                                at + INNER_FRAME_HEADER,
                                end,
                            )
                        }
                        sleeve::INNER_FRAME_GSO
                            if inner.len()
                                >= INNER_FRAME_HEADER
                                    + GSO_LEN
                                    + weft_proto::ether::ETHER_HEADER_LEN =>
                        {
                            let at = sleeve::ENCRYPTED_HEADER_LEN;
                            let g = at + INNER_FRAME_HEADER;
                            let gso =
                                Gso(datagram[g..g + GSO_LEN].try_into().expect("length checked"));
                            if gso.validate(end - (g + GSO_LEN)).is_err() {
                                self.stats.dropped_malformed += 1;
                                return;
                            }
                            (
                                sender,
                                peer_at(datagram, at + 1),
                                peer_at(datagram, at + 7),
                                false,
                                Some(gso),
                                g + GSO_LEN,
                                end,
                            )
                        }
                        sleeve::INNER_PROBE if inner.len() >= 2 + sleeve::PROBE_BODY_LEN => {
                            let Ok((ack, seq, size)) =
                                sleeve::decode_probe_body(inner[1], &inner[2..])
                            else {
                                self.stats.dropped_malformed += 1;
                                return;
                            };
                            let len = datagram.len();
                            self.handle_probe(sender, ack, seq, size, len, out);
                            return;
                        }
                        sleeve::INNER_HEARTBEAT if inner.len() == 9 => {
                            let conn_uid =
                                u64::from_be_bytes(inner[1..9].try_into().expect("length checked"));
                            self.stats.heartbeats_in += 1;
                            out.to_control(from, &sleeve::encode_heartbeat(sender, conn_uid));
                            return;
                        }
                        _ => {
                            self.stats.dropped_malformed += 1;
                            return;
                        }
                    }
                }
                // Fragments were taken above.
                Ok(Datagram::Fragment { .. }) | Err(_) => {
                    self.stats.dropped_malformed += 1;
                    return;
                }
            };
        // One lookup per datagram: the sender is a neighbour, and a plaintext one came from
        // its address.
        let plaintext = Datagram::kind(datagram) != Some(sleeve::Kind::Encrypted);
        if !self.sent_by_neighbour(sender, plaintext.then_some(from)) {
            return;
        }
        let local = self.table.local;
        if src == local || src == BROADCAST_PEER {
            self.stats.dropped_loop += 1;
            return;
        }
        self.stats.remote_frames += 1;
        let frame = &datagram[frame_at..frame_end];
        if dst != local && dst != BROADCAST_PEER {
            self.stats.relayed += 1;
            self.unicast(src, dst, gso.as_ref(), frame, out);
            return;
        }
        let eth = EtherFrame::from_bytes(frame).expect("length checked above");
        lock(&self.shared.macs).learn(now, eth.src(), MacOwner::Peer(src));
        if relay_only {
            self.stats.relay_only += 1;
        } else if dst == BROADCAST_PEER
            && self.fast.contains(&src)
            && !self.table.neighbours.contains_key(&src)
        {
            // A peer with a direct fast path that is not a neighbour: its kernel flooded this
            // to us by VXLAN already, and the senders on the tree cannot know to mark it
            // relay-only for us.
            self.stats.fast_path_skipped += 1;
        } else {
            self.stats.injected += 1;
            match &gso {
                Some(g) => out.inject_gso(g, frame),
                None => out.inject(frame),
            }
        }
        if dst == BROADCAST_PEER {
            self.flood(src, gso.as_ref(), frame, out);
        }
    }

    /// A control datagram (heartbeat) from the router for neighbour `peer` at `to`: encrypted
    /// like data when the peer has keys.
    pub fn send_control(
        &mut self,
        to: SocketAddr,
        peer: PeerName,
        datagram: &[u8],
        out: &mut impl Output,
    ) {
        self.sync();
        let Ok(Datagram::Heartbeat { conn_uid, .. }) = Datagram::decode(datagram) else {
            self.stats.dropped_malformed += 1;
            return;
        };
        let inner = [&[sleeve::INNER_HEARTBEAT][..], &conn_uid.to_be_bytes()];
        self.send_single(peer, to, datagram, &inner, out);
    }

    /// Sends one datagram to neighbour `peer` at `to`, never cut into fragments: `plain` as
    /// it is, or `inner` sealed when the peer has keys.
    fn send_single(
        &mut self,
        peer: PeerName,
        to: SocketAddr,
        plain: &[u8],
        inner: &[&[u8]],
        out: &mut impl Output,
    ) {
        match self.crypto.get(&peer) {
            None => out.send(to, &[plain]),
            Some(pc) => {
                match seal(self.table.local, pc, &mut self.scratch.0, inner) {
                    Ok(d) => out.send(to, &[d]),
                    Err(reason) => {
                        count(&mut self.stats, reason);
                        return;
                    }
                }
                self.stats.encrypted += 1;
            }
        }
        self.stats.sent_datagrams += 1;
    }

    /// Authenticates and decrypts an encrypted datagram in place; false (counted) if it must
    /// be dropped.
    fn open(&mut self, sender: PeerName, epoch: u8, counter: u64, datagram: &mut [u8]) -> bool {
        let Some(k) = self
            .crypto
            .get(&sender)
            .and_then(|pc| pc.recv.iter().find(|k| k.epoch == epoch))
        else {
            self.stats.dropped_no_key += 1;
            return false;
        };
        if !lock(&k.window).check(counter) {
            self.stats.dropped_replay += 1;
            return false;
        }
        let (aad, rest) = datagram.split_at_mut(sleeve::ENCRYPTED_HEADER_LEN);
        let (body, tag) = rest.split_at_mut(rest.len() - crypto::TAG_LEN);
        if k.key.open(counter, aad, body, tag).is_err() {
            self.stats.dropped_auth += 1;
            return false;
        }
        // Another worker may have accepted the same copy while this one opened it.
        if !lock(&k.window).accept(counter) {
            self.stats.dropped_replay += 1;
            return false;
        }
        self.stats.decrypted += 1;
        true
    }

    /// Sends a frame from `src` towards `dst` via its next hop.
    fn unicast(
        &mut self,
        src: PeerName,
        dst: PeerName,
        gso: Option<&Gso>,
        frame: &[u8],
        out: &mut impl Output,
    ) {
        let hop = self.table.unicast.get(&dst).copied();
        match hop.and_then(|h| Some((h, *self.table.neighbours.get(&h)?))) {
            Some((hop, to)) => {
                if hop != dst && src == self.table.local && self.wanted.len() < MAX_WANTED {
                    self.wanted.insert(dst);
                }
                self.send_frame(hop, to, src, dst, gso, frame, out)
            }
            None => self.stats.dropped_no_route += 1,
        }
    }

    /// Floods a frame from `src` to our children in `src`'s broadcast tree.
    fn flood(&mut self, src: PeerName, gso: Option<&Gso>, frame: &[u8], out: &mut impl Output) {
        let table = self.table.clone();
        let children = table.broadcast.children(src);
        let local = table.local;
        for child in children.iter() {
            let Some(&to) = table.neighbours.get(child) else {
                continue;
            };
            if src == local && self.fast.contains(child) {
                self.stats.fast_path_skipped += 1;
                if table.relay_children.contains(child) {
                    match gso {
                        None => {
                            let header = sleeve::relay_only_header(local, src, BROADCAST_PEER);
                            self.frag.send(local, to, &[&header, frame], out);
                        }
                        Some(g) => {
                            let header =
                                sleeve::gso_frame_header(local, src, BROADCAST_PEER, true, g);
                            self.frag.send(local, to, &[&header, frame], out);
                        }
                    }
                    self.stats.sent_datagrams += 1;
                }
                continue;
            }
            self.send_frame(*child, to, src, BROADCAST_PEER, gso, frame, out);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn send_frame(
        &mut self,
        hop: PeerName,
        to: SocketAddr,
        src: PeerName,
        dst: PeerName,
        gso: Option<&Gso>,
        frame: &[u8],
        out: &mut impl Output,
    ) {
        let local = self.table.local;
        match self.crypto.get(&hop) {
            None => match gso {
                None => {
                    let header = sleeve::frame_header(local, src, dst);
                    self.frag.send(local, to, &[&header, frame], out);
                }
                Some(g) => {
                    let header = sleeve::gso_frame_header(local, src, dst, false, g);
                    self.frag.send(local, to, &[&header, frame], out);
                }
            },
            Some(pc) => {
                let (kind, g): (u8, &[u8]) = match gso {
                    None => (sleeve::INNER_FRAME, &[]),
                    Some(g) => (sleeve::INNER_FRAME_GSO, &g.0),
                };
                let inner = [&[kind][..], &src.to_bytes(), &dst.to_bytes(), g, frame];
                match seal(local, pc, &mut self.scratch.0, &inner) {
                    Ok(d) => self.frag.send(local, to, &[d], out),
                    Err(reason) => {
                        count(&mut self.stats, reason);
                        return;
                    }
                }
                self.stats.encrypted += 1;
            }
        }
        self.stats.sent_datagrams += 1;
    }
}

/// Keys that did not change stay the same objects: their counters and replay windows go on.
fn update_keys(pc: &mut PeerCrypto, keys: &PeerKeys) {
    pc.send = match (&keys.send, pc.send.take()) {
        (Some((e, s)), Some(cur)) if cur.epoch == *e && Arc::ptr_eq(s, &cur.secret) => Some(cur),
        (Some((e, s)), _) => Some(Arc::new(SendKey {
            epoch: *e,
            secret: s.clone(),
            key: DataKey::new(*e, keys.cipher, s),
            counter: AtomicU64::new(0),
        })),
        (None, _) => None,
    };
    let mut old = std::mem::take(&mut pc.recv);
    for (e, s) in &keys.recv {
        match old
            .iter()
            .position(|k| k.epoch == *e && Arc::ptr_eq(&k.secret, s))
        {
            Some(i) => pc.recv.push(old.swap_remove(i)),
            None => pc.recv.push(Arc::new(RecvKey {
                epoch: *e,
                secret: s.clone(),
                key: DataKey::new(*e, keys.cipher, s),
                window: Mutex::new(ReplayWindow::default()),
            })),
        }
    }
}

fn count(stats: &mut ForwarderStats, reason: SealError) {
    match reason {
        SealError::NoKey => stats.dropped_no_key += 1,
        SealError::TooBig => stats.dropped_too_big += 1,
    }
}

enum SealError {
    NoKey,
    TooBig,
}

/// Builds an encrypted datagram of `inner` (concatenated) in `buf` with `pc`'s send key.
fn seal<'b>(
    local: PeerName,
    pc: &PeerCrypto,
    buf: &'b mut Vec<u8>,
    inner: &[&[u8]],
) -> Result<&'b [u8], SealError> {
    let Some(sk) = pc.send.as_ref() else {
        return Err(SealError::NoKey);
    };
    let len = inner.iter().map(|p| p.len()).sum::<usize>();
    if sleeve::ENCRYPTED_HEADER_LEN + len + crypto::TAG_LEN > sleeve::MAX_DATAGRAM {
        return Err(SealError::TooBig);
    }
    let counter = sk.counter.fetch_add(1, Ordering::Relaxed);
    if counter >= crypto::MAX_PACKETS_PER_KEY {
        // Rekeying replaces keys long before this; never reuse a nonce.
        return Err(SealError::NoKey);
    }
    buf.clear();
    buf.extend_from_slice(&sleeve::encrypted_header(local, sk.epoch, counter));
    for p in inner {
        buf.extend_from_slice(p);
    }
    let (aad, body) = buf.split_at_mut(sleeve::ENCRYPTED_HEADER_LEN);
    let tag = sk.key.seal(counter, aad, body);
    buf.extend_from_slice(&tag);
    Ok(buf)
}

fn peer_at(b: &[u8], at: usize) -> PeerName {
    PeerName::from_bytes(b[at..at + 6].try_into().expect("caller checked length"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::DataCipher;
    use crate::mesh::routes::BroadcastTrees;
    use std::collections::BTreeMap;

    #[derive(Default)]
    struct Rec {
        sent: Vec<(SocketAddr, Vec<u8>)>,
        injected: Vec<Vec<u8>>,
        gso_injected: Vec<(Gso, Vec<u8>)>,
        control: Vec<(SocketAddr, Vec<u8>)>,
    }

    impl Output for Rec {
        fn send(&mut self, to: SocketAddr, parts: &[&[u8]]) {
            self.sent.push((to, parts.concat()));
        }
        fn inject(&mut self, frame: &[u8]) {
            self.injected.push(frame.to_vec());
        }
        fn inject_gso(&mut self, gso: &Gso, frame: &[u8]) {
            self.gso_injected.push((*gso, frame.to_vec()));
        }
        fn to_control(&mut self, from: SocketAddr, datagram: &[u8]) {
            self.control.push((from, datagram.to_vec()));
        }
    }

    fn pn(n: u64) -> PeerName {
        PeerName::from_u64(n)
    }

    fn addr(n: u64) -> SocketAddr {
        format!("10.0.0.{n}:6783").parse().unwrap()
    }

    fn frame(dst: [u8; 6], src: [u8; 6]) -> Vec<u8> {
        let mut f = vec![0u8; 64];
        f[0..6].copy_from_slice(&dst);
        f[6..12].copy_from_slice(&src);
        f
    }

    /// Peer 1 in a line 1 - 2 - 3.
    fn table_for_1() -> Arc<DataPlaneTable> {
        Arc::new(DataPlaneTable {
            local: pn(1),
            unicast: BTreeMap::from([(pn(2), pn(2)), (pn(3), pn(2))]),
            broadcast: BroadcastTrees::fixed(BTreeMap::from([
                (pn(1), vec![pn(2)]),
                (pn(2), vec![]),
                (pn(3), vec![]),
            ])),
            neighbours: BTreeMap::from([(pn(2), addr(2))]),
            ..Default::default()
        })
    }

    #[test]
    fn the_bridges_arp_answers_for_fast_peers_containers_stay_home() {
        let now = Instant::now();
        let mut f = Forwarder::new(pn(1));
        f.set_table(table_for_1());
        let remote = [2, 0, 0, 0, 0, 0xc];
        f.set_proxied(HashSet::from([Mac(remote)]));
        let mut out = Rec::default();
        let mut arp = frame([2, 0, 0, 0, 0, 0xa], remote);
        arp[12..14].copy_from_slice(&weft_proto::ether::ETHERTYPE_ARP.to_be_bytes());
        f.handle_local_frame(now, &arp, &mut out);
        assert!(out.sent.is_empty());
        assert_eq!(f.stats().dropped_proxy_arp, 1);
        // Not learnt as ours either.
        assert_eq!(f.macs().lookup(&Mac(remote)), None);
        // Anything else from that MAC is forwarded as usual.
        f.handle_local_frame(now, &frame([0xff; 6], remote), &mut out);
        assert_eq!(out.sent.len(), 1);
    }

    #[test]
    fn floods_unknown_then_unicasts_learned() {
        let now = Instant::now();
        let mut f = Forwarder::new(pn(1));
        f.set_table(table_for_1());
        let mut out = Rec::default();
        let a = [2, 0, 0, 0, 0, 0xa];
        let b = [2, 0, 0, 0, 0, 0xb];
        f.handle_local_frame(now, &frame([0xff; 6], a), &mut out);
        assert_eq!(out.sent.len(), 1);
        assert_eq!(out.sent[0].0, addr(2));
        // b answers from peer 3, relayed by 2.
        let mut reply = sleeve::frame_header(pn(2), pn(3), pn(1)).to_vec();
        reply.extend(frame(a, b));
        f.handle_datagram(now, addr(2), &mut reply, &mut out);
        assert_eq!(out.injected.len(), 1);
        // Now b is known behind 3: unicast via 2 with dst peer 3.
        f.handle_local_frame(now, &frame(b, a), &mut out);
        let (to, pkt) = out.sent.last().unwrap();
        assert_eq!(*to, addr(2));
        assert!(
            matches!(Datagram::decode(pkt).unwrap(), Datagram::Frame { dst, .. } if dst == pn(3))
        );
        // 3 is not a neighbour: named once as a candidate for a direct path, then not again
        // for a while however many frames follow; floods and neighbours never are.
        assert_eq!(f.drain_wanted(now), vec![pn(3)]);
        f.handle_local_frame(now, &frame(b, a), &mut out);
        assert!(
            f.drain_wanted(now + std::time::Duration::from_secs(1))
                .is_empty()
        );
        f.handle_local_frame(now, &frame(b, a), &mut out);
        assert_eq!(f.drain_wanted(now + WANTED_REPEAT), vec![pn(3)]);
    }

    #[test]
    fn drops_unknown_sender_and_loops() {
        let now = Instant::now();
        let mut f = Forwarder::new(pn(1));
        f.set_table(table_for_1());
        let mut out = Rec::default();
        let mut d = sleeve::frame_header(pn(9), pn(3), pn(1)).to_vec();
        d.extend(frame([2; 6], [4; 6]));
        f.handle_datagram(now, addr(9), &mut d, &mut out);
        let mut d = sleeve::frame_header(pn(2), pn(1), pn(1)).to_vec();
        d.extend(frame([2; 6], [4; 6]));
        f.handle_datagram(now, addr(2), &mut d, &mut out);
        let mut junk = vec![0x10, 0, 1, 2];
        f.handle_datagram(now, addr(9), &mut junk, &mut out);
        // A plaintext frame naming neighbour 2 but sent from elsewhere: forged.
        let mut forged = sleeve::frame_header(pn(2), pn(3), pn(1)).to_vec();
        forged.extend(frame([2; 6], [4; 6]));
        f.handle_datagram(now, addr(9), &mut forged, &mut out);
        let s = f.stats();
        assert_eq!(
            (
                s.dropped_unknown_sender,
                s.dropped_loop,
                s.dropped_malformed,
                s.dropped_wrong_source
            ),
            (1, 1, 1, 1)
        );
        assert!(out.sent.is_empty() && out.injected.is_empty());
    }

    #[test]
    fn relays_for_other_peers() {
        let now = Instant::now();
        // Peer 2 in the middle of 1 - 2 - 3.
        let mut f = Forwarder::new(pn(2));
        f.set_table(Arc::new(DataPlaneTable {
            local: pn(2),
            unicast: BTreeMap::from([(pn(1), pn(1)), (pn(3), pn(3))]),
            broadcast: BroadcastTrees::fixed(BTreeMap::from([
                (pn(1), vec![pn(3)]),
                (pn(3), vec![pn(1)]),
            ])),
            neighbours: BTreeMap::from([(pn(1), addr(1)), (pn(3), addr(3))]),
            ..Default::default()
        }));
        let mut out = Rec::default();
        let mut d = sleeve::frame_header(pn(1), pn(1), pn(3)).to_vec();
        d.extend(frame([2; 6], [4; 6]));
        f.handle_datagram(now, addr(1), &mut d, &mut out);
        assert!(out.injected.is_empty());
        assert_eq!(out.sent.len(), 1);
        assert_eq!(out.sent[0].0, addr(3));
        assert!(
            matches!(Datagram::decode(&out.sent[0].1).unwrap(), Datagram::Frame { sender, .. } if sender == pn(2))
        );
        // A flood from 1 is injected here and passed on to 3.
        let mut d = sleeve::frame_header(pn(1), pn(1), BROADCAST_PEER).to_vec();
        d.extend(frame([0xff; 6], [4; 6]));
        f.handle_datagram(now, addr(1), &mut d, &mut out);
        assert_eq!(out.injected.len(), 1);
        assert_eq!(out.sent.len(), 2);
    }

    #[test]
    fn a_broadcast_from_a_direct_fast_peer_that_is_not_a_neighbour_is_not_delivered_twice() {
        let now = Instant::now();
        // Peer 1 in 1 - 2 - 3, with a direct fast path to 3: 3's kernel floods to us itself.
        let mut f = Forwarder::new(pn(1));
        f.set_table(table_for_1());
        f.set_fast(BTreeSet::from([pn(3)]));
        let mut out = Rec::default();
        let mut d = sleeve::frame_header(pn(2), pn(3), BROADCAST_PEER).to_vec();
        d.extend(frame([0xff; 6], [4; 6]));
        f.handle_datagram(now, addr(2), &mut d, &mut out);
        assert!(out.injected.is_empty());
        assert_eq!(f.stats().fast_path_skipped, 1);
        // Without the direct path it is delivered.
        f.set_fast(BTreeSet::new());
        let mut d = sleeve::frame_header(pn(2), pn(3), BROADCAST_PEER).to_vec();
        d.extend(frame([0xff; 6], [4; 6]));
        f.handle_datagram(now, addr(2), &mut d, &mut out);
        assert_eq!(out.injected.len(), 1);
    }

    fn keys(seed: u8) -> (Arc<Secret>, Arc<Secret>) {
        (
            Arc::new(Secret::new([seed; 32])),
            Arc::new(Secret::new([seed ^ 0xff; 32])),
        )
    }

    /// Keys for a pair: `a` sends with `x`, receives with `y`; `b` the other way round.
    fn pair(
        epoch: u8,
        cipher: DataCipher,
        x: &Arc<Secret>,
        y: &Arc<Secret>,
    ) -> (PeerKeys, PeerKeys) {
        (
            PeerKeys {
                send: Some((epoch, x.clone())),
                recv: vec![(epoch, y.clone())],
                cipher,
            },
            PeerKeys {
                send: Some((epoch, y.clone())),
                recv: vec![(epoch, x.clone())],
                cipher,
            },
        )
    }

    fn two_peers() -> (Forwarder, Forwarder) {
        let mut a = Forwarder::new(pn(1));
        let mut b = Forwarder::new(pn(2));
        a.set_table(Arc::new(DataPlaneTable {
            local: pn(1),
            unicast: BTreeMap::from([(pn(2), pn(2))]),
            broadcast: BroadcastTrees::fixed(BTreeMap::from([
                (pn(1), vec![pn(2)]),
                (pn(2), vec![]),
            ])),
            neighbours: BTreeMap::from([(pn(2), addr(2))]),
            ..Default::default()
        }));
        b.set_table(Arc::new(DataPlaneTable {
            local: pn(2),
            unicast: BTreeMap::from([(pn(1), pn(1))]),
            broadcast: BroadcastTrees::fixed(BTreeMap::from([
                (pn(2), vec![pn(1)]),
                (pn(1), vec![]),
            ])),
            neighbours: BTreeMap::from([(pn(1), addr(1))]),
            ..Default::default()
        }));
        let (x, y) = keys(7);
        let (ka, kb) = pair(0, DataCipher::Aes256Gcm, &x, &y);
        a.set_keys(pn(2), &ka);
        b.set_keys(pn(1), &kb);
        (a, b)
    }

    /// [`two_peers`], or the same pair exchanging plaintext.
    fn two_peers_keyed(keyed: bool) -> (Forwarder, Forwarder) {
        let (mut a, mut b) = two_peers();
        if !keyed {
            a.set_keys(pn(2), &PeerKeys::default());
            b.set_keys(pn(1), &PeerKeys::default());
        }
        (a, b)
    }

    fn marked_frame() -> Vec<u8> {
        let mut f = frame([0xff; 6], [2, 0, 0, 0, 0, 0xa]);
        f.extend_from_slice(b"SECRET-MARKER-STRING");
        f
    }

    /// a probes b's path, which carries payloads up to `limit`; b answers. Returns a's limit
    /// for b once settled, and whether every probe a sent had the size it announced.
    fn probe_path(keyed: bool, limit: usize) -> usize {
        let (mut a, mut b) = two_peers_keyed(keyed);
        a.set_path_payload(1472);
        let mut now = Instant::now();
        for _ in 0..20 {
            let mut out = Rec::default();
            a.handle_timeout(now, &mut out);
            for (to, mut d) in out.sent {
                assert_eq!(to, addr(2));
                if keyed {
                    assert_eq!(Datagram::kind(&d), Some(sleeve::Kind::Encrypted));
                }
                if d.len() > limit {
                    continue;
                }
                let mut back = Rec::default();
                b.handle_datagram(now, addr(1), &mut d, &mut back);
                assert_eq!(back.sent.len(), 1, "one answer per probe");
                for (to, mut ack) in back.sent {
                    assert_eq!(to, addr(1));
                    assert!(ack.len() < 64, "answers are small");
                    a.handle_datagram(now, addr(2), &mut ack, &mut Rec::default());
                }
            }
            now = a.poll_timeout().unwrap();
        }
        a.path_limits()[0].1
    }

    #[test]
    fn probes_find_the_path_limit_plain_and_sealed() {
        for keyed in [false, true] {
            assert_eq!(probe_path(keyed, 1472), 1472);
            let l = probe_path(keyed, 672);
            assert!((664..=672).contains(&l), "keyed {keyed}: {l}");
        }
    }

    #[test]
    fn datagrams_to_a_narrow_path_are_cut_to_its_limit() {
        let (mut a, mut b) = two_peers_keyed(false);
        a.set_path_payload(1472);
        let mut now = Instant::now();
        for _ in 0..20 {
            let mut out = Rec::default();
            a.handle_timeout(now, &mut out);
            for (_, mut d) in out.sent.into_iter().filter(|(_, d)| d.len() <= 672) {
                let mut back = Rec::default();
                b.handle_datagram(now, addr(1), &mut d, &mut back);
                for (_, mut ack) in back.sent {
                    a.handle_datagram(now, addr(2), &mut ack, &mut Rec::default());
                }
            }
            now = a.poll_timeout().unwrap();
        }
        let mut f = frame([0xff; 6], [2, 0, 0, 0, 0, 0xa]);
        f.resize(1450, 7);
        let mut out = Rec::default();
        a.handle_local_frame(now, &f, &mut out);
        assert!(out.sent.len() >= 3, "{} datagrams", out.sent.len());
        assert!(out.sent.iter().all(|(_, d)| d.len() <= 672));
        let mut got = Rec::default();
        for (_, mut d) in out.sent {
            b.handle_datagram(now, addr(1), &mut d, &mut got);
        }
        assert_eq!(got.injected, [f]);
    }

    #[test]
    fn probes_from_strangers_or_in_clear_from_keyed_peers_are_not_answered() {
        let (_, mut b) = two_peers_keyed(true);
        let mut d = Vec::new();
        sleeve::encode_probe(pn(1), false, 1, 600, &mut d);
        let mut out = Rec::default();
        b.handle_datagram(Instant::now(), addr(1), &mut d, &mut out);
        assert!(out.sent.is_empty());
        assert_eq!(b.stats().dropped_plaintext, 1);
        let (_, mut b) = two_peers_keyed(false);
        sleeve::encode_probe(pn(9), false, 1, 600, &mut d);
        b.handle_datagram(Instant::now(), addr(9), &mut d, &mut out);
        assert!(out.sent.is_empty());
        assert_eq!(b.stats().dropped_unknown_sender, 1);
    }

    #[test]
    fn encrypted_frames_round_trip_and_hide_the_payload() {
        let now = Instant::now();
        let (mut a, mut b) = two_peers();
        let mut out = Rec::default();
        a.handle_local_frame(now, &marked_frame(), &mut out);
        let (to, mut d) = out.sent.pop().unwrap();
        assert_eq!(to, addr(2));
        assert!(
            !d.windows(6).any(|w| w == b"SECRET"),
            "payload is not in clear"
        );
        assert_eq!(Datagram::kind(&d), Some(sleeve::Kind::Encrypted));
        let copy = d.clone();
        let mut got = Rec::default();
        b.handle_datagram(now, addr(1), &mut d, &mut got);
        assert_eq!(got.injected, vec![marked_frame()]);
        // The same datagram again is a replay.
        let mut again = copy.clone();
        b.handle_datagram(now, addr(1), &mut again, &mut got);
        // A flipped bit anywhere fails authentication (header bits are associated data).
        for at in [1usize, 9, 20, copy.len() - 1] {
            let mut bad = copy.clone();
            bad[at] ^= 0x40;
            b.handle_datagram(now, addr(1), &mut bad, &mut got);
        }
        // Plaintext claiming to come from a keyed peer is refused.
        let mut plain = sleeve::frame_header(pn(1), pn(1), pn(2)).to_vec();
        plain.extend(frame([2; 6], [4; 6]));
        b.handle_datagram(now, addr(1), &mut plain, &mut got);
        let mut hb = sleeve::encode_heartbeat(pn(1), 5).to_vec();
        b.handle_datagram(now, addr(1), &mut hb, &mut got);
        let s = b.stats();
        assert_eq!(got.injected.len(), 1);
        assert!(got.control.is_empty());
        // Byte 1 is the epoch: we hold no key for the flipped one. A flipped counter fails
        // authentication; flipped payload bytes keep a counter already seen, which the replay
        // window refuses before spending a decryption.
        assert_eq!(
            (s.dropped_no_key, s.dropped_auth, s.dropped_replay),
            (1, 1, 3)
        );
        // A forged copy of a fresh packet fails and does not burn its counter.
        a.handle_local_frame(now, &marked_frame(), &mut out);
        let (_, fresh) = out.sent.pop().unwrap();
        let mut forged = fresh.clone();
        forged[30] ^= 1;
        b.handle_datagram(now, addr(1), &mut forged, &mut got);
        b.handle_datagram(now, addr(1), &mut fresh.clone(), &mut got);
        assert_eq!(b.stats().dropped_auth, 2);
        assert_eq!(got.injected.len(), 2);
        assert_eq!(s.dropped_plaintext, 2);
    }

    #[test]
    fn a_replayed_datagram_is_dropped_whichever_worker_reads_it() {
        let now = Instant::now();
        let (mut a, b) = two_peers();
        // Workers made after the keys were set share them: keys are given to one worker.
        let mut workers = [b.worker(), b.worker(), b.worker()];
        let mut out = Rec::default();
        for _ in 0..3 {
            a.handle_local_frame(now, &marked_frame(), &mut out);
        }
        let mut got = Rec::default();
        for (w, (_, d)) in workers.iter_mut().zip(&out.sent) {
            w.handle_datagram(now, addr(1), &mut d.clone(), &mut got);
        }
        assert_eq!(got.injected.len(), 3, "each worker opens a fresh datagram");
        // Every datagram again, at every worker: none gets through a second time.
        for w in workers.iter_mut() {
            for (_, d) in &out.sent {
                w.handle_datagram(now, addr(1), &mut d.clone(), &mut got);
            }
        }
        assert_eq!(got.injected.len(), 3);
        let mut total = ForwarderStats::default();
        for w in &workers {
            total.add(&w.stats());
        }
        assert_eq!((total.decrypted, total.dropped_replay), (3, 9));
    }

    #[test]
    fn workers_seal_with_distinct_counters_and_fragment_ids() {
        let now = Instant::now();
        let (a, mut b) = two_peers();
        let mut senders = [a.worker(), a.worker()];
        for s in senders.iter_mut() {
            s.set_path_payload(1400);
        }
        // Small frames and super-frames cut into fragments, from both workers at once: their
        // datagrams arrive interleaved.
        let (gso, big) = super_frame();
        let mut sent = Vec::new();
        for _ in 0..3 {
            let mut outs = [Rec::default(), Rec::default()];
            for (s, out) in senders.iter_mut().zip(&mut outs) {
                s.handle_local_frame(now, &marked_frame(), out);
                s.handle_local_gso(now, &gso, &big, out);
            }
            let [x, y] = outs;
            assert!(x.sent.len() > 2, "the super-frame went as fragments");
            for (p, q) in x.sent.into_iter().zip(y.sent) {
                sent.extend([p, q]);
            }
        }
        let counters: HashSet<u64> = sent
            .iter()
            .filter_map(|(_, d)| match Datagram::decode(d) {
                Ok(Datagram::Encrypted { counter, .. }) => Some(counter),
                _ => None,
            })
            .collect();
        assert_eq!(
            counters.len(),
            6,
            "the small frames' nonces are all different"
        );
        let mut got = Rec::default();
        for (_, mut d) in sent {
            b.handle_datagram(now, addr(1), &mut d, &mut got);
        }
        let s = b.stats();
        assert_eq!((s.decrypted, s.dropped_replay, s.dropped_auth), (12, 0, 0));
        assert_eq!(s.dropped_fragments_inconsistent, 0);
        assert_eq!(got.injected.len(), 6);
        assert_eq!(got.gso_injected.len(), 6);
        assert!(got.gso_injected.iter().all(|(_, f)| *f == big));
    }

    /// A 60 KB TCP super-frame with its offload header.
    fn super_frame() -> (Gso, Vec<u8>) {
        let mut f = frame([2, 0, 0, 0, 0, 0xb], [2, 0, 0, 0, 0, 0xa]);
        f.resize(60_000, 0x5a);
        (Gso([1, 1, 66, 0, 0xa2, 0x05, 34, 0, 16, 0]), f)
    }

    #[test]
    fn offload_super_frames_cross_whole_with_their_header_plain_and_sealed() {
        let now = Instant::now();
        let (g, f) = super_frame();
        for keyed in [false, true] {
            let (mut a, mut b) = two_peers_keyed(keyed);
            // b's MAC is behind peer 2 once a has seen a frame from it.
            let mut learn = sleeve::frame_header(pn(2), pn(2), pn(1)).to_vec();
            learn.extend(frame([2, 0, 0, 0, 0, 0xa], [2, 0, 0, 0, 0, 0xb]));
            let mut sink = Rec::default();
            if keyed {
                b.handle_local_frame(now, &learn[sleeve::FRAME_HEADER_LEN..], &mut sink);
                let (_, mut d) = sink.sent.pop().unwrap();
                a.handle_datagram(now, addr(2), &mut d, &mut sink);
            } else {
                a.handle_datagram(now, addr(2), &mut learn, &mut sink);
            }
            let mut out = Rec::default();
            a.handle_local_gso(now, &g, &f, &mut out);
            assert_eq!(out.sent.len(), 1, "one datagram for the whole super-frame");
            let (_, mut d) = out.sent.pop().unwrap();
            let want = if keyed {
                sleeve::Kind::Encrypted
            } else {
                sleeve::Kind::FrameGso
            };
            assert_eq!(Datagram::kind(&d), Some(want));
            let mut got = Rec::default();
            b.handle_datagram(now, addr(1), &mut d, &mut got);
            assert_eq!(got.gso_injected, vec![(g, f.clone())], "keyed: {keyed}");
            assert!(got.injected.is_empty());
        }
        // Too big for one datagram with its headers: dropped and counted, never cut.
        let (mut a, _) = two_peers();
        let mut big = f.clone();
        big.resize(65_500, 0);
        let mut out = Rec::default();
        a.handle_local_gso(now, &g, &big, &mut out);
        assert!(out.sent.is_empty());
        assert_eq!(a.stats().dropped_too_big, 1);
        // A header that does not fit its frame never reaches the bridge.
        let mut bad = sleeve::gso_frame_header(
            pn(1),
            pn(1),
            pn(2),
            false,
            &Gso([1, 1, 0, 0, 1, 0, 0xff, 0xff, 0, 0]),
        )
        .to_vec();
        bad.extend(frame([2; 6], [4; 6]));
        let (_, mut b) = two_peers_keyed(false);
        let mut got = Rec::default();
        b.handle_datagram(now, addr(1), &mut bad, &mut got);
        assert!(got.gso_injected.is_empty() && got.injected.is_empty());
        assert_eq!(b.stats().dropped_malformed, 1);
    }

    #[test]
    fn fragmented_super_frames_arrive_whole_in_any_order_or_not_at_all() {
        let now = Instant::now();
        let (g, f) = super_frame();
        for keyed in [false, true] {
            let (mut a, mut b) = two_peers_keyed(keyed);
            a.set_path_payload(1472);
            let train = |a: &mut Forwarder| {
                let mut out = Rec::default();
                // Unknown destination: flooded to b.
                a.handle_local_gso(now, &g, &f, &mut out);
                let frags: Vec<Vec<u8>> = out.sent.into_iter().map(|(_, d)| d).collect();
                assert!(frags.len() > 40 && frags.iter().all(|d| d.len() <= 1472));
                frags
            };
            // Reversed, with a duplicate: delivered once, intact.
            let mut frags = train(&mut a);
            frags.reverse();
            frags.insert(3, frags[7].clone());
            let mut got = Rec::default();
            for mut d in frags {
                b.handle_datagram(now, addr(1), &mut d, &mut got);
            }
            assert_eq!(got.gso_injected, vec![(g, f.clone())], "keyed: {keyed}");
            // One fragment lost: nothing delivered, and given up on after the timeout.
            let mut frags = train(&mut a);
            frags.remove(10);
            let mut got = Rec::default();
            for mut d in frags {
                b.handle_datagram(now, addr(1), &mut d, &mut got);
            }
            assert!(got.gso_injected.is_empty());
            let mut late = train(&mut a).remove(0);
            b.handle_datagram(now + REASSEMBLY_TIMEOUT, addr(1), &mut late, &mut got);
            assert!(b.stats().dropped_fragments_incomplete >= 1);
            // A corrupted fragment of a sealed super-frame fails authentication whole.
            if keyed {
                let mut frags = train(&mut a);
                frags[5][100] ^= 1;
                let mut got = Rec::default();
                for mut d in frags {
                    b.handle_datagram(now, addr(1), &mut d, &mut got);
                }
                assert!(got.gso_injected.is_empty());
                assert_eq!(b.stats().dropped_auth, 1);
            }
            let s = a.stats();
            assert!(s.fragmented >= 3 && s.fragments_sent > 120, "{s:?}");
        }
        // Fragments from strangers are not even buffered.
        let (_, mut b) = two_peers();
        let mut d = sleeve::fragment_header(pn(9), 1, 0, 3000).to_vec();
        d.extend_from_slice(&[0; 100]);
        b.handle_datagram(now, addr(9), &mut d, &mut Rec::default());
        assert_eq!(b.stats().dropped_unknown_sender, 1);
        assert_eq!(b.stats().fragments_received, 0);
    }

    #[test]
    fn heartbeats_are_encrypted_for_keyed_peers() {
        let now = Instant::now();
        let (mut a, mut b) = two_peers();
        let mut out = Rec::default();
        let hb = sleeve::encode_heartbeat(pn(1), 0xfeed);
        a.send_control(addr(2), pn(2), &hb, &mut out);
        let (_, mut d) = out.sent.pop().unwrap();
        assert_ne!(d, hb.to_vec());
        b.handle_datagram(now, addr(1), &mut d, &mut out);
        assert_eq!(out.control, vec![(addr(1), hb.to_vec())]);
        // Without keys, heartbeats pass as they are.
        a.set_keys(pn(2), &PeerKeys::default());
        a.send_control(addr(2), pn(2), &hb, &mut out);
        assert_eq!(out.sent.pop().unwrap().1, hb.to_vec());
    }

    #[test]
    fn rekey_overlap_accepts_old_epoch_until_retired() {
        let now = Instant::now();
        let (mut a, mut b) = two_peers();
        let mut out = Rec::default();
        a.handle_local_frame(now, &marked_frame(), &mut out);
        let (_, mut old) = out.sent.pop().unwrap();
        // Both move to epoch 1; b still accepts epoch 0 for a while.
        let (x1, y1) = keys(9);
        let (mut ka, mut kb) = pair(1, DataCipher::Aes256Gcm, &x1, &y1);
        let kb_old = lock(&b.shared.crypto).get(&pn(1)).unwrap().recv[0]
            .secret
            .clone();
        kb.recv.insert(0, (0, kb_old));
        ka.recv.clear();
        ka.recv.push((1, y1.clone()));
        a.set_keys(pn(2), &ka);
        b.set_keys(pn(1), &kb);
        a.handle_local_frame(now, &marked_frame(), &mut out);
        let (_, mut new) = out.sent.pop().unwrap();
        assert_eq!(new[1], 1, "sent with the new epoch");
        let mut got = Rec::default();
        let mut old2 = old.clone();
        b.handle_datagram(now, addr(1), &mut new, &mut got);
        b.handle_datagram(now, addr(1), &mut old, &mut got);
        assert_eq!(got.injected.len(), 2, "old and new epochs both accepted");
        // Retired: the old epoch is gone (and its replay window with it).
        kb.recv.remove(0);
        b.set_keys(pn(1), &kb);
        b.handle_datagram(now, addr(1), &mut old2, &mut got);
        assert_eq!(got.injected.len(), 2);
        assert_eq!(b.stats().dropped_no_key, 1);
    }

    #[test]
    fn relays_reencrypt_per_hop() {
        let now = Instant::now();
        // 1 - 2 - 3, each link with its own keys.
        let mut f1 = Forwarder::new(pn(1));
        let mut f2 = Forwarder::new(pn(2));
        let mut f3 = Forwarder::new(pn(3));
        f1.set_table(table_for_1());
        f2.set_table(Arc::new(DataPlaneTable {
            local: pn(2),
            unicast: BTreeMap::from([(pn(1), pn(1)), (pn(3), pn(3))]),
            broadcast: BroadcastTrees::fixed(BTreeMap::from([
                (pn(1), vec![pn(3)]),
                (pn(3), vec![pn(1)]),
            ])),
            neighbours: BTreeMap::from([(pn(1), addr(1)), (pn(3), addr(3))]),
            ..Default::default()
        }));
        f3.set_table(Arc::new(DataPlaneTable {
            local: pn(3),
            unicast: BTreeMap::from([(pn(2), pn(2)), (pn(1), pn(2))]),
            broadcast: BroadcastTrees::fixed(BTreeMap::from([
                (pn(3), vec![pn(2)]),
                (pn(1), vec![]),
                (pn(2), vec![]),
            ])),
            neighbours: BTreeMap::from([(pn(2), addr(2))]),
            ..Default::default()
        }));
        let (x, y) = keys(1);
        // Each hop seals with its own pair's cipher.
        let (k12, k21) = pair(0, DataCipher::ChaCha20Poly1305, &x, &y);
        let (x, y) = keys(2);
        let (k23, k32) = pair(0, DataCipher::Aes256Gcm, &x, &y);
        f1.set_keys(pn(2), &k12);
        f2.set_keys(pn(1), &k21);
        f2.set_keys(pn(3), &k23);
        f3.set_keys(pn(2), &k32);
        let mut out = Rec::default();
        f1.handle_local_frame(now, &marked_frame(), &mut out);
        let (_, mut d) = out.sent.pop().unwrap();
        let mut at2 = Rec::default();
        f2.handle_datagram(now, addr(1), &mut d, &mut at2);
        assert_eq!(at2.injected.len(), 1);
        let (to, mut d) = at2.sent.pop().unwrap();
        assert_eq!(to, addr(3));
        let mut at3 = Rec::default();
        f3.handle_datagram(now, addr(2), &mut d, &mut at3);
        assert_eq!(at3.injected, vec![marked_frame()]);
        // 3 can answer 1 by unicast now that it learned the MAC behind 1.
        f3.handle_local_frame(
            now,
            &frame([2, 0, 0, 0, 0, 0xa], [2, 0, 0, 0, 0, 0xc]),
            &mut at3,
        );
        let (_, mut d) = at3.sent.pop().unwrap();
        f2.handle_datagram(now, addr(3), &mut d, &mut at2);
        let (to, mut d) = at2.sent.pop().unwrap();
        assert_eq!(to, addr(1));
        f1.handle_datagram(now, addr(2), &mut d, &mut out);
        assert_eq!(out.injected.len(), 1);
        // The flood counts as injected + forwarded, the unicast answer as relayed.
        assert_eq!(f2.stats().relayed, 1);
    }

    #[test]
    fn datagram_handling_never_panics_on_garbage() {
        let now = Instant::now();
        let (_, mut b) = two_peers();
        let mut rng = crate::rng::Rng::new(42);
        let mut out = Rec::default();
        for _ in 0..20_000 {
            let len = (rng.next_u64() % 120) as usize;
            let mut d: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
            if let Some(first) = d.first_mut() {
                // Mostly valid version/kind so the deeper paths are reached.
                *first = 0x10 | (*first % 3);
            }
            if d.len() >= 8 {
                d[2..8].copy_from_slice(&pn(1 + (rng.next_u64() % 2)).to_bytes());
            }
            b.handle_datagram(now, addr(1), &mut d, &mut out);
        }
        assert!(out.injected.is_empty());
    }

    #[test]
    fn fast_neighbours_get_local_frames_by_vxlan_only() {
        let now = Instant::now();
        // Peer 1 with neighbours 2 (fast), 3 (fast, parent of 5 in our tree) and 4 (sleeve).
        let mut f = Forwarder::new(pn(1));
        f.set_table(Arc::new(DataPlaneTable {
            local: pn(1),
            unicast: BTreeMap::from([
                (pn(2), pn(2)),
                (pn(3), pn(3)),
                (pn(4), pn(4)),
                (pn(5), pn(3)),
            ]),
            broadcast: BroadcastTrees::fixed(BTreeMap::from([
                (pn(1), vec![pn(2), pn(3), pn(4)]),
                (pn(4), vec![pn(2)]),
            ])),
            neighbours: BTreeMap::from([(pn(2), addr(2)), (pn(3), addr(3)), (pn(4), addr(4))]),
            relay_children: BTreeSet::from([pn(3)]),
        }));
        f.set_fast(BTreeSet::from([pn(2), pn(3)]));
        let mut out = Rec::default();
        let a = [2, 0, 0, 0, 0, 0xa];
        f.handle_local_frame(now, &frame([0xff; 6], a), &mut out);
        let sent: Vec<(SocketAddr, bool)> = out
            .sent
            .iter()
            .map(|(to, d)| match Datagram::decode(d).unwrap() {
                Datagram::Frame { relay_only, .. } => (*to, relay_only),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(sent, vec![(addr(3), true), (addr(4), false)]);

        // A MAC learnt behind fast peer 2 (from a frame 4 relayed): a local unicast to it is
        // flooded like an unknown one, so 2 gets no sleeve copy.
        let b = [2, 0, 0, 0, 0, 0xb];
        let mut d = sleeve::frame_header(pn(4), pn(2), pn(1)).to_vec();
        d.extend(frame(a, b));
        f.handle_datagram(now, addr(4), &mut d, &mut out);
        out.sent.clear();
        f.handle_local_frame(now, &frame(b, a), &mut out);
        assert!(out.sent.iter().all(|(to, _)| *to != addr(2)));

        // Broadcasts of other peers are relayed by sleeve, fast children included.
        out.sent.clear();
        let mut d = sleeve::frame_header(pn(4), pn(4), BROADCAST_PEER).to_vec();
        d.extend(frame([0xff; 6], [2, 0, 0, 0, 0, 0xc]));
        f.handle_datagram(now, addr(4), &mut d, &mut out);
        assert_eq!(out.sent.len(), 1);
        assert_eq!(out.sent[0].0, addr(2));

        // A relay-only frame is passed on but not delivered here.
        out.injected.clear();
        out.sent.clear();
        let mut d = sleeve::relay_only_header(pn(4), pn(4), BROADCAST_PEER).to_vec();
        d.extend(frame([0xff; 6], [2, 0, 0, 0, 0, 0xd]));
        f.handle_datagram(now, addr(4), &mut d, &mut out);
        assert!(out.injected.is_empty());
        assert_eq!(out.sent.len(), 1);
        assert_eq!(f.stats().relay_only, 1);
    }
}
