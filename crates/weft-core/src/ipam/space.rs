//! This peer's allocations: which address belongs to which container ("ident").
//!
//! Addresses are handed out lowest-free-first within the ranges the ring gives us, excluding
//! the first and last address of the requested subnet (RFC 1122; a `.0` inside a bigger subnet
//! is a normal address). Claims of addresses outside the allocation range are recorded too,
//! so that two containers never get the same address through this peer.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Space {
    by_addr: BTreeMap<u32, String>,
    by_ident: BTreeMap<String, Vec<Ipv4Net>>,
}

/// The usable host addresses of a subnet as `[from, to)`.
pub fn host_range(subnet: &Ipv4Net) -> (u64, u64) {
    let net = u64::from(u32::from(subnet.network()));
    let size = 1u64 << (32 - subnet.prefix_len());
    if subnet.prefix_len() >= 31 {
        (net, net + size)
    } else {
        (net + 1, net + size - 1)
    }
}

impl Space {
    pub fn from_owned(owned: BTreeMap<String, Vec<Ipv4Net>>) -> Space {
        let mut s = Space::default();
        for (ident, nets) in owned {
            for n in nets {
                s.insert(&ident, n);
            }
        }
        s
    }

    pub fn owned(&self) -> &BTreeMap<String, Vec<Ipv4Net>> {
        &self.by_ident
    }

    pub fn insert(&mut self, ident: &str, net: Ipv4Net) {
        self.by_addr
            .insert(u32::from(net.addr()), ident.to_string());
        let v = self.by_ident.entry(ident.to_string()).or_default();
        if !v.contains(&net) {
            v.push(net);
        }
    }

    pub fn owner_of(&self, addr: Ipv4Addr) -> Option<&str> {
        self.by_addr.get(&u32::from(addr)).map(String::as_str)
    }

    /// The ident's addresses, optionally only those inside `subnet`.
    pub fn lookup(&self, ident: &str, subnet: Option<&Ipv4Net>) -> Vec<Ipv4Net> {
        self.by_ident
            .get(ident)
            .map(|v| {
                v.iter()
                    .filter(|n| subnet.is_none_or(|s| s.contains(&n.addr())))
                    .copied()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Frees one address of the ident, or all of them; returns what was freed.
    pub fn release(&mut self, ident: &str, addr: Option<Ipv4Addr>) -> Vec<Ipv4Net> {
        let Some(v) = self.by_ident.get_mut(ident) else {
            return Vec::new();
        };
        let freed: Vec<Ipv4Net> = v
            .iter()
            .filter(|n| addr.is_none_or(|a| n.addr() == a))
            .copied()
            .collect();
        v.retain(|n| !freed.contains(n));
        if v.is_empty() {
            self.by_ident.remove(ident);
        }
        for n in &freed {
            self.by_addr.remove(&u32::from(n.addr()));
        }
        freed
    }

    pub fn count_in(&self, from: u64, to: u64) -> u64 {
        if from >= to {
            return 0;
        }
        self.by_addr.range(from as u32..=(to - 1) as u32).count() as u64
    }

    pub fn any_in(&self, from: u64, to: u64) -> bool {
        from < to
            && self
                .by_addr
                .range(from as u32..=(to - 1) as u32)
                .next()
                .is_some()
    }

    /// The lowest free address in `ranges` (sorted, disjoint) within `[lo, hi)`.
    pub fn lowest_free(&self, ranges: &[(u64, u64)], lo: u64, hi: u64) -> Option<u32> {
        for &(a, b) in ranges {
            let (from, to) = (a.max(lo), b.min(hi));
            let mut cand = from;
            for (&used, _) in self.by_addr.range(from as u32..) {
                let used = u64::from(used);
                if used >= to || used > cand {
                    break;
                }
                cand = used + 1;
            }
            if cand < to {
                return Some(cand as u32);
            }
        }
        None
    }

    /// Free intervals of `ranges` within `[lo, hi)`.
    pub fn free_intervals(&self, ranges: &[(u64, u64)], lo: u64, hi: u64) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        for &(a, b) in ranges {
            let (from, to) = (a.max(lo), b.min(hi));
            if from >= to {
                continue;
            }
            let mut cur = from;
            for (&used, _) in self.by_addr.range(from as u32..=(to - 1) as u32) {
                let used = u64::from(used);
                if used > cur {
                    out.push((cur, used));
                }
                cur = used + 1;
            }
            if cur < to {
                out.push((cur, to));
            }
        }
        out
    }

    /// The largest CIDR-aligned block of free addresses in `ranges` within `[lo, hi)`.
    pub fn biggest_free_block(
        &self,
        ranges: &[(u64, u64)],
        lo: u64,
        hi: u64,
    ) -> Option<(u64, u64)> {
        let mut best: Option<(u64, u64)> = None;
        for (u, v) in self.free_intervals(ranges, lo, hi) {
            for k in (0..=32u32).rev() {
                let size = 1u64 << k;
                if best.is_some_and(|(a, b)| b - a >= size) {
                    break;
                }
                let start = u.div_ceil(size) * size;
                if start + size <= v {
                    best = Some((start, start + size));
                    break;
                }
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn lowest_free_skips_subnet_edges_and_used() {
        let mut s = Space::default();
        let subnet = net("10.32.0.0/12");
        let (lo, hi) = host_range(&subnet);
        let ranges = [(0x0a20_0000u64, 0x0a30_0000u64)];
        assert_eq!(s.lowest_free(&ranges, lo, hi), Some(0x0a20_0001));
        s.insert("a", net("10.32.0.1/12"));
        s.insert("b", net("10.32.0.2/12"));
        assert_eq!(s.lowest_free(&ranges, lo, hi), Some(0x0a20_0003));
        s.release("a", None);
        assert_eq!(s.lowest_free(&ranges, lo, hi), Some(0x0a20_0001));
        assert_eq!(s.lookup("b", Some(&subnet)), vec![net("10.32.0.2/12")]);
        assert_eq!(s.count_in(0x0a20_0000, 0x0a30_0000), 1);
        // A full range has nothing.
        let tiny = [(0x0a20_0002u64, 0x0a20_0003u64)];
        assert_eq!(s.lowest_free(&tiny, lo, hi), None);
    }

    #[test]
    fn biggest_block_is_aligned() {
        let mut s = Space::default();
        s.insert("a", net("10.32.0.1/12"));
        let ranges = [(0x0a20_0000u64, 0x0a30_0000u64)];
        // Weave's worked example: the biggest free aligned block is 10.40.0.0/13.
        assert_eq!(
            s.biggest_free_block(&ranges, 0x0a20_0000, 0x0a30_0000),
            Some((0x0a28_0000, 0x0a30_0000))
        );
    }

    #[test]
    fn host_ranges() {
        assert_eq!(host_range(&net("10.0.0.0/30")), (0x0a00_0001, 0x0a00_0003));
        assert_eq!(host_range(&net("10.0.0.0/31")), (0x0a00_0000, 0x0a00_0002));
    }
}
