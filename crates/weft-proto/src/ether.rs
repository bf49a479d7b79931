//! Ethernet addresses and a typed view over an Ethernet frame's header.
//!
//! Frames reach the router from the bridge (local containers) and from peers (sleeve). Only the
//! 14-byte header is interpreted; VLAN tags are carried as payload.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::DecodeError;

pub const ETHER_HEADER_LEN: usize = 14;

/// A 48-bit Ethernet address.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    pub const BROADCAST: Mac = Mac([0xff; 6]);
    /// The IEEE 802.1D bridge group address that STP BPDUs go to; never forwarded.
    pub const STP: Mac = Mac([0x01, 0x80, 0xc2, 0x00, 0x00, 0x00]);

    pub fn is_multicast(&self) -> bool {
        self.0[0] & 0x01 != 0
    }

    /// A random locally administered unicast address.
    pub fn from_random(random: u64) -> Mac {
        let b = random.to_be_bytes();
        Mac([(b[2] & 0xfe) | 0x02, b[3], b[4], b[5], b[6], b[7]])
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl fmt::Debug for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid MAC address {0:?}")]
pub struct MacParseError(String);

impl FromStr for Mac {
    type Err = MacParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 6];
        let mut n = 0;
        for part in s.split(':') {
            if n == 6 || part.len() != 2 {
                return Err(MacParseError(s.into()));
            }
            out[n] = u8::from_str_radix(part, 16).map_err(|_| MacParseError(s.into()))?;
            n += 1;
        }
        if n != 6 {
            return Err(MacParseError(s.into()));
        }
        Ok(Mac(out))
    }
}

/// The ARP EtherType.
pub const ETHERTYPE_ARP: u16 = 0x0806;

/// A validated view of an Ethernet frame: at least a full header is present.
#[derive(Clone, Copy, Debug)]
pub struct EtherFrame<'a> {
    bytes: &'a [u8],
}

impl<'a> EtherFrame<'a> {
    pub fn from_bytes(bytes: &'a [u8]) -> Result<Self, DecodeError> {
        if bytes.len() < ETHER_HEADER_LEN {
            return Err(DecodeError::Truncated {
                what: "ethernet header",
                need: ETHER_HEADER_LEN,
                have: bytes.len(),
            });
        }
        Ok(EtherFrame { bytes })
    }

    pub fn dst(&self) -> Mac {
        Mac(self.bytes[0..6]
            .try_into()
            .expect("length checked in from_bytes"))
    }

    pub fn src(&self) -> Mac {
        Mac(self.bytes[6..12]
            .try_into()
            .expect("length checked in from_bytes"))
    }

    pub fn ethertype(&self) -> u16 {
        u16::from_be_bytes([self.bytes[12], self.bytes[13]])
    }

    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_fields() {
        let mut f = vec![0u8; 60];
        f[0..6].copy_from_slice(&[0xff; 6]);
        f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
        f[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        let e = EtherFrame::from_bytes(&f).unwrap();
        assert_eq!(e.dst(), Mac::BROADCAST);
        assert!(e.dst().is_multicast());
        assert_eq!(e.src().to_string(), "02:00:00:00:00:01");
        assert_eq!(e.ethertype(), 0x0806);
        assert!(EtherFrame::from_bytes(&f[..13]).is_err());
    }

    #[test]
    fn mac_parse() {
        assert_eq!(
            "02:00:00:00:00:01".parse::<Mac>().unwrap(),
            Mac([2, 0, 0, 0, 0, 1])
        );
        assert!("02:00:00:00:00".parse::<Mac>().is_err());
        assert!("02:00:00:00:00:01:02".parse::<Mac>().is_err());
    }
}
