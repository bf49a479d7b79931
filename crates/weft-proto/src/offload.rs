//! Segmentation offload metadata: the kernel's `virtio_net_hdr`, which a TAP device opened with
//! `IFF_VNET_HDR` puts in front of every frame, and the checksum completion a frame that skipped
//! its checksum (`NEEDS_CSUM`) needs before it can leave without the header.
//!
//! A TAP with TSO/USO enabled hands the router "super-frames" of up to 64 KiB that the kernel
//! would otherwise have cut into MTU-sized frames; the sleeve carries one such frame, with this
//! header, as one unit, and the receiving router writes both into its TAP, where the kernel
//! segments (or, for a local container, simply delivers) it. That turns ~45 reads, sends,
//! receives and writes into one each.
//!
//! Layout (10 bytes; the kernel uses the host's byte order, little-endian on every platform weft
//! runs on, and the sleeve carries it little-endian): flags, gso_type, hdr_len, gso_size,
//! csum_start, csum_offset.

use crate::DecodeError;

pub const GSO_LEN: usize = 10;
pub const F_NEEDS_CSUM: u8 = 1;
pub const GSO_NONE: u8 = 0;
pub const GSO_TCPV4: u8 = 1;
pub const GSO_UDP: u8 = 3;
pub const GSO_TCPV6: u8 = 4;
pub const GSO_UDP_L4: u8 = 5;
pub const GSO_ECN: u8 = 0x80;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Gso(pub [u8; GSO_LEN]);

impl Gso {
    pub fn flags(&self) -> u8 {
        self.0[0]
    }

    pub fn gso_type(&self) -> u8 {
        self.0[1]
    }

    fn u16_at(&self, at: usize) -> u16 {
        u16::from_le_bytes([self.0[at], self.0[at + 1]])
    }

    pub fn hdr_len(&self) -> u16 {
        self.u16_at(2)
    }

    pub fn gso_size(&self) -> u16 {
        self.u16_at(4)
    }

    pub fn csum_start(&self) -> u16 {
        self.u16_at(6)
    }

    pub fn csum_offset(&self) -> u16 {
        self.u16_at(8)
    }

    /// A segmentation-offload frame (larger than the MTU, to be cut by the receiving kernel).
    pub fn is_gso(&self) -> bool {
        self.gso_type() & !GSO_ECN != GSO_NONE
    }

    pub fn needs_csum(&self) -> bool {
        self.flags() & F_NEEDS_CSUM != 0
    }

    /// Checks what a peer sent before it reaches the kernel (which checks again): a known GSO
    /// type, and checksum offsets inside the frame.
    pub fn validate(&self, frame_len: usize) -> Result<(), DecodeError> {
        let bad = |detail: String| DecodeError::Malformed {
            what: "offload header",
            detail,
        };
        let t = self.gso_type() & !GSO_ECN;
        if ![GSO_NONE, GSO_TCPV4, GSO_UDP, GSO_TCPV6, GSO_UDP_L4].contains(&t) {
            return Err(bad(format!("unknown GSO type {t}")));
        }
        if self.is_gso() && self.gso_size() == 0 {
            return Err(bad("GSO frame with segment size 0".into()));
        }
        if self.needs_csum() {
            let end = usize::from(self.csum_start()) + usize::from(self.csum_offset()) + 2;
            if end > frame_len {
                return Err(bad(format!(
                    "checksum at {end} beyond a {frame_len}-byte frame"
                )));
            }
        }
        Ok(())
    }
}

/// Completes a partial checksum in place: the kernel left the pseudo-header sum at
/// `csum_start + csum_offset` and expects the one's-complement sum from `csum_start` to the
/// end there. False if the offsets do not fit the frame.
pub fn finish_checksum(frame: &mut [u8], csum_start: usize, csum_offset: usize) -> bool {
    let at = csum_start + csum_offset;
    if at + 2 > frame.len() || csum_start > frame.len() {
        return false;
    }
    let mut sum: u64 = 0;
    let data = &frame[csum_start..];
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u64::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u64::from(*last) << 8;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    let mut c = !(sum as u16);
    if c == 0 {
        // UDP's "no checksum" value; 0xffff is the same sum.
        c = 0xffff;
    }
    frame[at..at + 2].copy_from_slice(&c.to_be_bytes());
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// One's-complement sum of `b` (folded, not complemented).
    fn sum(b: &[u8], start: u32) -> u16 {
        let mut sum = start;
        for c in b.chunks(2) {
            let w = if c.len() == 2 {
                u16::from_be_bytes([c[0], c[1]])
            } else {
                u16::from(c[0]) << 8
            };
            sum += u32::from(w);
        }
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        sum as u16
    }

    #[test]
    fn completes_a_partial_checksum_so_the_whole_sums_to_zero() {
        // 14 Ethernet + 20 IP, then a UDP header whose checksum field (at +6) holds the
        // pseudo-header sum the kernel left there, and an odd-length payload.
        let pseudo: u16 = 0xabcd;
        let mut f = vec![0u8; 34];
        f.extend_from_slice(&[0x12, 0x34, 0x00, 0x35, 0x00, 0x0d, 0xab, 0xcd]);
        f.extend_from_slice(b"hello");
        assert!(finish_checksum(&mut f, 34, 6));
        // The receiver's check: pseudo-header + segment (with the checksum) sums to all ones.
        assert_eq!(sum(&f[34..], u32::from(pseudo)), 0xffff);
        assert!(!finish_checksum(&mut f, 34, 100));
        assert!(!finish_checksum(&mut f, 1000, 0));
    }

    #[test]
    fn header_fields_and_validation() {
        let g = Gso([F_NEEDS_CSUM, GSO_TCPV4, 66, 0, 0xa2, 0x05, 34, 0, 16, 0]);
        assert!(g.is_gso() && g.needs_csum());
        assert_eq!(
            (g.hdr_len(), g.gso_size(), g.csum_start(), g.csum_offset()),
            (66, 1442, 34, 16)
        );
        assert!(g.validate(60_000).is_ok());
        assert!(g.validate(40).is_err());
        assert!(Gso([0, 9, 0, 0, 0, 0, 0, 0, 0, 0]).validate(100).is_err());
        assert!(
            Gso([0, GSO_TCPV4, 0, 0, 0, 0, 0, 0, 0, 0])
                .validate(100)
                .is_err()
        );
        assert!(!Gso::default().is_gso());
    }

    proptest! {
        #[test]
        fn never_panics(mut f in proptest::collection::vec(any::<u8>(), 0..200), s in 0usize..300, o in 0usize..300, h in any::<[u8; 10]>()) {
            let _ = finish_checksum(&mut f, s, o);
            let _ = Gso(h).validate(f.len());
        }
    }
}
