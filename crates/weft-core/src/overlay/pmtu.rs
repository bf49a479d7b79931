//! Path MTU discovery for the sleeve: the largest UDP payload that reaches each neighbour.
//!
//! The underlay between two hosts may carry less than their interfaces do (a tunnel, a
//! filter, a router that drops big datagrams without a word). Datagrams larger than the path
//! takes vanish, and every frame of that size with them. So each neighbour's path is probed,
//! in the manner of RFC 8899's datagram PMTU discovery, with sleeve probes of chosen sizes
//! that the neighbour answers; the largest answered size is the path's limit, and the
//! forwarder cuts datagrams to that neighbour into fragments no larger (see
//! [`super::fragment`]). Probes ride the same socket and the same keys as data, so they see
//! what data sees.
//!
//! Per neighbour:
//! - **Checking** a size (at first the interface's limit, optimistic, so a healthy path costs
//!   one probe): answered → settled at it; two unanswered probes → searching.
//! - **Searching**: one round of probes spread over `[MIN_PAYLOAD, max]`, then one of finer
//!   steps between the largest answered and the smallest unanswered; the largest answered is
//!   the limit (an unanswered search settles at [`MIN_PAYLOAD`], which every IPv4 path
//!   carries). While searching, datagrams are cut to [`MIN_PAYLOAD`]. A path settles within
//!   about four probe timeouts.
//! - **Settled**: every [`RECHECK`] the limit is probed again (a path that shrank goes back to
//!   searching) and, below the interface's limit, so is the interface's limit (a path that
//!   grew is searched again upwards).
//!
//! Sans-IO: probes to send come out of [`PathMtus::handle_timeout`], answers go into
//! [`PathMtus::handle_ack`], and [`PathMtus::poll_timeout`] says when to call again.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use weft_proto::PeerName;

/// The UDP payload every IPv4 path carries (576-byte datagrams, less IPv4 and UDP headers).
pub const MIN_PAYLOAD: usize = 576 - 28;
/// How long a probe has to be answered.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(800);
/// How often a settled path is probed again.
pub const RECHECK: Duration = Duration::from_secs(30);
/// Probes in a coarse search round.
const COARSE_PROBES: usize = 12;
/// Finest step of a search.
const FINE_STEP: usize = 8;
/// Unanswered probes of a size before it counts as not carried.
const CHECK_TRIES: u8 = 2;

/// A probe for the forwarder to send: `size` bytes of UDP payload to `peer` at `to`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Probe {
    pub peer: PeerName,
    pub to: SocketAddr,
    pub seq: u32,
    pub size: usize,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Phase {
    /// Probing `size` (and, when settled below `max`, also `max`): `tries` sent so far.
    Checking {
        size: usize,
        tries: u8,
    },
    /// A search round over `sizes`, all above `floor` (a size known to be carried); `fine`
    /// for the second round.
    Searching {
        sizes: Vec<usize>,
        floor: usize,
        fine: bool,
    },
    Settled,
}

#[derive(Clone, Debug)]
struct Path {
    to: SocketAddr,
    /// The payload datagrams are cut to now.
    current: usize,
    phase: Phase,
    deadline: Instant,
    /// Sizes of the current round's probes, by sequence number.
    outstanding: BTreeMap<u32, usize>,
    /// Largest size answered in the current round.
    answered: Option<usize>,
    /// During a recheck from below `max`: whether `max` itself was answered.
    max_answered: bool,
}

/// Every neighbour's path limit.
#[derive(Debug)]
pub struct PathMtus {
    /// The largest payload the local interface sends in one packet.
    max: usize,
    seq: u32,
    paths: BTreeMap<PeerName, Path>,
    /// (peer, old limit, new limit) since last drained, for the log.
    changes: Vec<(PeerName, usize, usize)>,
}

impl PathMtus {
    pub fn new(max: usize) -> Self {
        PathMtus {
            max: max.max(MIN_PAYLOAD),
            seq: 0,
            paths: BTreeMap::new(),
            changes: Vec::new(),
        }
    }

    pub fn max(&self) -> usize {
        self.max
    }

    /// Follows the set of neighbours: new ones start checking at once, gone ones are
    /// forgotten, one whose address moved starts again.
    pub fn set_neighbours(&mut self, now: Instant, neighbours: &BTreeMap<PeerName, SocketAddr>) {
        self.paths
            .retain(|p, path| neighbours.get(p) == Some(&path.to));
        for (&peer, &to) in neighbours {
            self.paths.entry(peer).or_insert_with(|| Path {
                to,
                current: self.max,
                phase: Phase::Checking {
                    size: self.max,
                    tries: 0,
                },
                deadline: now,
                outstanding: BTreeMap::new(),
                answered: None,
                max_answered: false,
            });
        }
    }

    /// The payload datagrams to `to` are cut to.
    #[cfg(test)]
    pub fn payload_to(&self, to: SocketAddr) -> usize {
        self.paths
            .values()
            .find(|p| p.to == to)
            .map_or(self.max, |p| p.current)
    }

    /// Each neighbour's address and limit.
    pub fn limits(&self) -> impl Iterator<Item = (PeerName, SocketAddr, usize)> + '_ {
        self.paths
            .iter()
            .map(|(p, path)| (*p, path.to, path.current))
    }

    /// Whether a neighbour's path has been measured (not still being checked or searched).
    #[cfg(test)]
    pub fn settled(&self, peer: PeerName) -> Option<usize> {
        self.paths
            .get(&peer)
            .filter(|p| p.phase == Phase::Settled)
            .map(|p| p.current)
    }

    /// Limit changes since the last call: (peer, old, new).
    pub fn drain_changes(&mut self) -> Vec<(PeerName, usize, usize)> {
        std::mem::take(&mut self.changes)
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.paths.values().map(|p| p.deadline).min()
    }

    /// An answer from `peer` to probe `seq` of `size` bytes.
    pub fn handle_ack(&mut self, peer: PeerName, seq: u32, size: usize) {
        let Some(path) = self.paths.get_mut(&peer) else {
            return;
        };
        // Only answers to probes of the current round, of the size they were sent with.
        if path.outstanding.get(&seq) != Some(&size) {
            return;
        }
        path.outstanding.remove(&seq);
        if size == self.max && path.current < self.max {
            path.max_answered = true;
        }
        path.answered = Some(path.answered.map_or(size, |a| a.max(size)));
    }

    /// Advances every path whose deadline passed; the probes to send go into `probes`.
    pub fn handle_timeout(&mut self, now: Instant, probes: &mut Vec<Probe>) {
        let max = self.max;
        for (&peer, path) in &mut self.paths {
            if path.deadline > now {
                continue;
            }
            let before = path.current;
            let mut send: Vec<usize> = Vec::new();
            match path.phase.clone() {
                Phase::Checking { size, tries } => {
                    let carried = path.answered.is_some_and(|a| a >= size);
                    if tries > 0 && carried {
                        if path.max_answered && size < max {
                            // The path grew: search upwards from what it carries.
                            let sizes = ladder(size, max, COARSE_PROBES);
                            path.phase = Phase::Searching {
                                sizes,
                                floor: size,
                                fine: false,
                            };
                            send = path.phase_sizes();
                        } else {
                            path.current = size;
                            path.phase = Phase::Settled;
                        }
                    } else if tries >= CHECK_TRIES {
                        // Not carried: cut small while the search finds the limit.
                        path.current = MIN_PAYLOAD;
                        let sizes = ladder(MIN_PAYLOAD, max, COARSE_PROBES);
                        path.phase = Phase::Searching {
                            sizes,
                            floor: MIN_PAYLOAD,
                            fine: false,
                        };
                        send = path.phase_sizes();
                    } else {
                        path.phase = Phase::Checking {
                            size,
                            tries: tries + 1,
                        };
                        send.push(size);
                        if size < max {
                            send.push(max);
                        }
                    }
                }
                Phase::Searching { sizes, floor, fine } => {
                    let best = path.answered.unwrap_or(floor).max(floor);
                    let above = sizes.iter().copied().filter(|s| *s > best).min();
                    match above {
                        Some(u) if !fine && u - best > FINE_STEP => {
                            let sizes = ladder(best, u - 1, (u - best) / FINE_STEP);
                            path.phase = Phase::Searching {
                                sizes,
                                floor: best,
                                fine: true,
                            };
                            send = path.phase_sizes();
                        }
                        _ => {
                            path.current = best;
                            path.phase = Phase::Settled;
                        }
                    }
                }
                Phase::Settled => {
                    path.phase = Phase::Checking {
                        size: path.current,
                        tries: 1,
                    };
                    send.push(path.current);
                    if path.current < max {
                        send.push(max);
                    }
                }
            }
            if path.phase == Phase::Settled {
                path.deadline = now + RECHECK;
                path.outstanding.clear();
            } else {
                path.deadline = now + PROBE_TIMEOUT;
                // A new round forgets the last one's answers (a retry of a check keeps them).
                if !matches!(path.phase, Phase::Checking { tries, .. } if tries > 1) {
                    path.outstanding.clear();
                    path.answered = None;
                    path.max_answered = false;
                }
                for size in send {
                    self.seq = self.seq.wrapping_add(1);
                    path.outstanding.insert(self.seq, size);
                    probes.push(Probe {
                        peer,
                        to: path.to,
                        seq: self.seq,
                        size,
                    });
                }
            }
            if path.current != before {
                self.changes.push((peer, before, path.current));
            }
        }
    }
}

impl Path {
    fn phase_sizes(&self) -> Vec<usize> {
        match &self.phase {
            Phase::Searching { sizes, .. } => sizes.clone(),
            _ => Vec::new(),
        }
    }
}

/// Up to `n` sizes spread evenly over `(lo, hi]`, `hi` included.
fn ladder(lo: usize, hi: usize, n: usize) -> Vec<usize> {
    if hi <= lo {
        return vec![hi];
    }
    let n = n.clamp(1, hi - lo);
    let mut v: Vec<usize> = (1..=n).map(|i| lo + (hi - lo) * i / n).collect();
    v.dedup();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pn(n: u64) -> PeerName {
        PeerName::from_u64(n)
    }

    fn addr(n: u8) -> SocketAddr {
        SocketAddr::from(([198, 18, 0, n], 6783))
    }

    /// Runs the prober against a path that carries payloads up to `limit`, answering at once;
    /// returns the settled limit and the time it took.
    fn settle(max: usize, limit: usize) -> (usize, Duration, usize) {
        let start = Instant::now();
        let mut now = start;
        let mut m = PathMtus::new(max);
        m.set_neighbours(now, &BTreeMap::from([(pn(2), addr(2))]));
        let mut sent = 0;
        for _ in 0..100 {
            let mut probes = Vec::new();
            m.handle_timeout(now, &mut probes);
            sent += probes.len();
            for p in probes {
                assert!(p.size <= max && p.size >= MIN_PAYLOAD.min(max), "{p:?}");
                if p.size <= limit {
                    m.handle_ack(p.peer, p.seq, p.size);
                }
            }
            if let Some(l) = m.settled(pn(2)) {
                return (l, now - start, sent);
            }
            now = m.poll_timeout().unwrap();
        }
        panic!("never settled");
    }

    #[test]
    fn a_healthy_path_costs_one_probe() {
        let (l, took, sent) = settle(1472, 1472);
        assert_eq!(l, 1472);
        assert_eq!(sent, 1);
        assert!(took <= PROBE_TIMEOUT);
    }

    #[test]
    fn a_smaller_path_is_found_to_the_byte_step_within_seconds() {
        for limit in [672, 1000, 1400, 1471, 549] {
            let (l, took, sent) = settle(1472, limit);
            assert!(
                l <= limit && limit - l < FINE_STEP,
                "limit {limit}: settled at {l}"
            );
            assert!(took <= PROBE_TIMEOUT * 5, "{took:?}");
            assert!(sent < 30, "{sent} probes");
        }
    }

    #[test]
    fn a_path_that_carries_nothing_settles_at_the_minimum() {
        let (l, _, _) = settle(1472, 0);
        assert_eq!(l, MIN_PAYLOAD);
    }

    #[test]
    fn while_searching_datagrams_are_cut_small() {
        let now = Instant::now();
        let mut m = PathMtus::new(1472);
        m.set_neighbours(now, &BTreeMap::from([(pn(2), addr(2))]));
        let mut t = now;
        for _ in 0..3 {
            let mut probes = Vec::new();
            m.handle_timeout(t, &mut probes);
            t = m.poll_timeout().unwrap();
        }
        assert_eq!(m.payload_to(addr(2)), MIN_PAYLOAD);
        let changes = m.drain_changes();
        assert_eq!(changes, [(pn(2), 1472, MIN_PAYLOAD)]);
    }

    #[test]
    fn a_path_that_shrinks_or_grows_is_measured_again() {
        let mut now = Instant::now();
        let mut m = PathMtus::new(1472);
        m.set_neighbours(now, &BTreeMap::from([(pn(2), addr(2))]));
        let run = |m: &mut PathMtus, now: &mut Instant, limit: usize, until: Duration| {
            let end = *now + until;
            while *now < end {
                let mut probes = Vec::new();
                m.handle_timeout(*now, &mut probes);
                for p in probes {
                    if p.size <= limit {
                        m.handle_ack(p.peer, p.seq, p.size);
                    }
                }
                *now = m.poll_timeout().unwrap();
            }
        };
        run(&mut m, &mut now, 1472, Duration::from_secs(5));
        assert_eq!(m.settled(pn(2)), Some(1472));
        run(&mut m, &mut now, 900, RECHECK + Duration::from_secs(5));
        let l = m.settled(pn(2)).unwrap();
        assert!((900 - FINE_STEP..=900).contains(&l), "{l}");
        run(&mut m, &mut now, 1472, RECHECK + Duration::from_secs(5));
        assert_eq!(m.settled(pn(2)), Some(1472));
    }

    #[test]
    fn stray_and_mismatched_answers_are_ignored() {
        let now = Instant::now();
        let mut m = PathMtus::new(1472);
        m.set_neighbours(now, &BTreeMap::from([(pn(2), addr(2))]));
        let mut probes = Vec::new();
        m.handle_timeout(now, &mut probes);
        let p = probes[0];
        // Wrong size for the seq, unknown seq, unknown peer.
        m.handle_ack(pn(2), p.seq, p.size - 1);
        m.handle_ack(pn(2), p.seq + 100, p.size);
        m.handle_ack(pn(3), p.seq, p.size);
        let mut probes = Vec::new();
        m.handle_timeout(m.poll_timeout().unwrap(), &mut probes);
        assert_eq!(m.settled(pn(2)), None);
    }

    #[test]
    fn neighbours_come_and_go() {
        let now = Instant::now();
        let mut m = PathMtus::new(1472);
        m.set_neighbours(now, &BTreeMap::from([(pn(2), addr(2)), (pn(3), addr(3))]));
        assert_eq!(m.limits().count(), 2);
        m.set_neighbours(now, &BTreeMap::from([(pn(3), addr(4))]));
        let l: Vec<_> = m.limits().collect();
        assert_eq!(l, [(pn(3), addr(4), 1472)]);
        assert_eq!(m.payload_to(addr(9)), 1472);
    }

    #[test]
    fn ladders_cover_the_range_upwards() {
        assert_eq!(ladder(548, 1472, 4), [779, 1010, 1241, 1472]);
        assert_eq!(ladder(600, 603, 12), [601, 602, 603]);
        assert_eq!(ladder(700, 700, 3), [700]);
    }
}
