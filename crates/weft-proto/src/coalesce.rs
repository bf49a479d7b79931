//! Frames for the bridge merged where the kernel can take them as one.
//!
//! A sleeve router writes every frame a peer sent into its TAP, and the kernel runs each through
//! the bridge, its firewall, the container's veth and its stack: for small packets that is
//! nearly all the cost. A run of IPv4 UDP frames of one flow (the same Ethernet and IP headers
//! but for length, ID and checksum, the same ports; payloads of one size, a last one possibly
//! shorter) is what a UDP segmentation-offload send would have made, so it is written as one
//! `GSO_UDP_L4` super-frame with a partial checksum: the kernel carries it as one packet and
//! cuts it up at the receiving socket, giving each datagram its own length, ID and checksums.

use crate::offload::{F_NEEDS_CSUM, GSO_LEN, GSO_UDP_L4, Gso};

const ETH: usize = 14;
/// Segments one super-frame carries at most (the kernel's UDP_MAX_SEGMENTS in older kernels).
pub const MAX_SEGMENTS: usize = 64;
/// An IPv4 packet's largest total length.
const MAX_IP_LEN: usize = 65_535;

/// Where an untagged IPv4 UDP frame's payload starts and how long it is (by the IP header:
/// short frames carry Ethernet padding), if it could be part of a run.
fn udp_payload(frame: &[u8]) -> Option<(usize, usize)> {
    if frame.len() < ETH + 28 || frame[12..14] != [0x08, 0x00] {
        return None;
    }
    let ip = &frame[ETH..];
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    let fragment = u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff != 0;
    if ip[0] >> 4 != 4 || ihl < 20 || ip[9] != 17 || fragment {
        return None;
    }
    if total < ihl + 8 || ETH + total > frame.len() {
        return None;
    }
    let udp_len = usize::from(u16::from_be_bytes([ip[ihl + 4], ip[ihl + 5]]));
    if udp_len != total - ihl || udp_len == 8 {
        return None;
    }
    Some((ETH + ihl + 8, udp_len - 8))
}

/// One run of frames being merged; reused from run to run.
#[derive(Debug, Default)]
pub struct UdpCoalescer {
    /// The first frame's headers, then every payload.
    buf: Vec<u8>,
    /// Ethernet + IP + UDP header length of the run.
    head: usize,
    /// Payload size of the run's segments.
    seg: usize,
    count: usize,
    /// A shorter payload ended the run.
    closed: bool,
}

impl UdpCoalescer {
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Takes `frame` into the run if it continues it (or starts one, when there is none).
    /// False: not taken; the caller writes the run out ([`UdpCoalescer::take`]) and offers
    /// the frame again, or writes it as it is if it is no UDP frame at all.
    pub fn offer(&mut self, frame: &[u8]) -> bool {
        let Some((start, len)) = udp_payload(frame) else {
            return false;
        };
        if self.count == 0 {
            self.buf.clear();
            self.buf.extend_from_slice(&frame[..start + len]);
            (self.head, self.seg, self.count, self.closed) = (start, len, 1, false);
            return true;
        }
        let fits = self.buf.len() - ETH + len <= MAX_IP_LEN;
        if self.closed
            || self.count >= MAX_SEGMENTS
            || start != self.head
            || len > self.seg
            || !fits
            || !self.same_flow(frame)
        {
            return false;
        }
        self.buf.extend_from_slice(&frame[start..start + len]);
        self.count += 1;
        self.closed = len < self.seg;
        true
    }

    /// Same Ethernet header, IP header but for total length, ID and checksum, and ports.
    fn same_flow(&self, frame: &[u8]) -> bool {
        let (a, b) = (&self.buf[..self.head], &frame[..self.head]);
        let udp = self.head - 8;
        a[..ETH + 2] == b[..ETH + 2]
            && a[ETH + 6..ETH + 10] == b[ETH + 6..ETH + 10]
            && a[ETH + 12..udp] == b[ETH + 12..udp]
            && a[udp..udp + 4] == b[udp..udp + 4]
    }

    /// The run as one frame for the TAP, with its offload header, and empties it. A run of
    /// one frame is that frame as it came, with an empty header.
    pub fn take(&mut self) -> Option<(Gso, &[u8])> {
        let count = std::mem::take(&mut self.count);
        if count == 0 {
            return None;
        }
        if count == 1 {
            return Some((Gso::default(), &self.buf));
        }
        let udp = self.head - 8;
        let ihl = udp - ETH;
        let total = self.buf.len() - ETH;
        let udp_len = total - ihl;
        let f = &mut self.buf;
        f[ETH + 2..ETH + 4].copy_from_slice(&(total as u16).to_be_bytes());
        f[ETH + 10..ETH + 12].fill(0);
        let ip_check = !fold(sum(&f[ETH..udp], 0));
        f[ETH + 10..ETH + 12].copy_from_slice(&ip_check.to_be_bytes());
        f[udp + 4..udp + 6].copy_from_slice(&(udp_len as u16).to_be_bytes());
        // A partial checksum: the pseudo-header's sum, which the kernel adjusts for each
        // segment's length and completes over each segment.
        let pseudo = sum(&f[ETH + 12..ETH + 20], 17 + udp_len as u64);
        f[udp + 6..udp + 8].copy_from_slice(&fold(pseudo).to_be_bytes());
        let mut h = [0u8; GSO_LEN];
        h[0] = F_NEEDS_CSUM;
        h[1] = GSO_UDP_L4;
        h[2..4].copy_from_slice(&(self.head as u16).to_le_bytes());
        h[4..6].copy_from_slice(&(self.seg as u16).to_le_bytes());
        h[6..8].copy_from_slice(&(udp as u16).to_le_bytes());
        h[8..10].copy_from_slice(&6u16.to_le_bytes());
        Some((Gso(h), &self.buf))
    }
}

/// One's-complement sum of big-endian 16-bit words of `b`, added to `start` (unfolded).
fn sum(b: &[u8], start: u64) -> u64 {
    let mut s = start;
    let mut words = b.chunks_exact(2);
    for w in &mut words {
        s += u64::from(u16::from_be_bytes([w[0], w[1]]));
    }
    if let [last] = words.remainder() {
        s += u64::from(*last) << 8;
    }
    s
}

fn fold(mut s: u64) -> u16 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An Ethernet/IPv4/UDP frame from 10.32.0.1:port to 10.32.0.2:7000 with `payload`,
    /// complete checksums, and Ethernet padding to 60 bytes as the wire has it.
    fn frame(id: u16, port: u16, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x08, 0x00];
        let total = 28 + payload.len();
        let mut ip = vec![
            0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0, 10, 32, 0, 1, 10, 32, 0, 2,
        ];
        ip[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        ip[4..6].copy_from_slice(&id.to_be_bytes());
        let c = !fold(sum(&ip, 0));
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        f.extend_from_slice(&ip);
        let ulen = (8 + payload.len()) as u16;
        let mut udp = Vec::new();
        udp.extend_from_slice(&port.to_be_bytes());
        udp.extend_from_slice(&7000u16.to_be_bytes());
        udp.extend_from_slice(&ulen.to_be_bytes());
        udp.extend_from_slice(&[0, 0]);
        udp.extend_from_slice(payload);
        let c = !fold(sum(&udp, sum(&ip[12..20], 17 + u64::from(ulen))));
        udp[6..8].copy_from_slice(&c.to_be_bytes());
        f.extend_from_slice(&udp);
        f.resize(f.len().max(60), 0);
        f
    }

    /// What the kernel makes of a super-frame: one frame per segment, lengths and checksums
    /// completed (IDs counted up from the first), as [`frame`] builds them.
    fn segment(gso: &Gso, f: &[u8]) -> Vec<Vec<u8>> {
        let head = usize::from(gso.hdr_len());
        let seg = usize::from(gso.gso_size());
        let id = u16::from_be_bytes([f[ETH + 4], f[ETH + 5]]);
        let port = u16::from_be_bytes([f[head - 8], f[head - 7]]);
        f[head..]
            .chunks(seg)
            .enumerate()
            .map(|(i, p)| frame(id.wrapping_add(i as u16), port, p))
            .collect()
    }

    #[test]
    fn a_flow_of_equal_datagrams_becomes_one_super_frame_that_cuts_back_into_them() {
        let frames: Vec<Vec<u8>> = (0..5u16)
            .map(|i| {
                let len = if i == 4 { 10 } else { 18 };
                frame(100 + i, 5000, &vec![i as u8; len])
            })
            .collect();
        let mut c = UdpCoalescer::default();
        for f in &frames {
            assert!(c.offer(f));
        }
        assert!(!c.offer(&frames[0]), "a shorter datagram ended the run");
        let (gso, sf) = c.take().unwrap();
        assert!(gso.is_gso() && gso.needs_csum() && gso.validate(sf.len()).is_ok());
        assert_eq!(
            (gso.gso_size(), gso.hdr_len(), gso.csum_start()),
            (18, 42, 34)
        );
        // The super-frame's IP header is valid (the bridge's firewall checks it).
        assert_eq!(fold(sum(&sf[ETH..ETH + 20], 0)), 0xffff);
        assert_eq!(
            usize::from(u16::from_be_bytes([sf[ETH + 2], sf[ETH + 3]])),
            sf.len() - ETH
        );
        // Its partial checksum is the pseudo-header sum over the whole length.
        let ulen = sf.len() - 34;
        let pseudo = fold(sum(&sf[ETH + 12..ETH + 20], 17 + ulen as u64));
        assert_eq!(u16::from_be_bytes([sf[40], sf[41]]), pseudo);
        assert_eq!(segment(&gso, sf), frames);
        assert!(c.is_empty() && c.take().is_none());
    }

    #[test]
    fn only_one_flow_of_one_size_joins_a_run() {
        let mut c = UdpCoalescer::default();
        assert!(c.offer(&frame(1, 5000, &[1; 30])));
        assert!(!c.offer(&frame(2, 5001, &[1; 30])), "another flow");
        assert!(!c.offer(&frame(2, 5000, &[1; 31])), "a longer payload");
        let mut other_host = frame(2, 5000, &[1; 30]);
        other_host[ETH + 15] = 9;
        assert!(!c.offer(&other_host), "another source");
        let mut fragment = frame(2, 5000, &[1; 30]);
        fragment[ETH + 6] = 0x20;
        assert!(!c.offer(&fragment));
        let mut arp = frame(2, 5000, &[1; 30]);
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        assert!(!c.offer(&arp));
        let (gso, f) = c.take().unwrap();
        assert_eq!((gso, f.len()), (Gso::default(), 14 + 28 + 30));
        assert!(!c.offer(&fragment), "not even to start a run");
        assert!(c.is_empty());
    }

    #[test]
    fn runs_stop_at_the_segment_and_size_limits() {
        let mut c = UdpCoalescer::default();
        let mut taken = 0;
        while c.offer(&frame(taken, 5000, &[0; 100])) {
            taken += 1;
        }
        assert_eq!(usize::from(taken), MAX_SEGMENTS);
        c.take();
        let big = vec![0u8; 1400];
        let mut taken = 0;
        while c.offer(&frame(taken, 5000, &big)) {
            taken += 1;
        }
        let (_, f) = c.take().unwrap();
        assert!(f.len() - ETH <= MAX_IP_LEN && usize::from(taken) == (MAX_IP_LEN - 28) / 1400);
    }
}
