//! Peer identity on the wire: the 48-bit peer name, printed MAC-style.
//!
//! A peer name is chosen once per host and persisted; it doubles as the MAC of the weft bridge,
//! which is why it is 48 bits and shown as `6e:b2:81:6c:ac:b3`. Parsing accepts Weave's
//! shorthand where one run of zero octets may be written `::` (`::1`, `1::`, `1::1`).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A peer's 48-bit name. The upper 16 bits of the inner `u64` are always zero.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
pub struct PeerName(u64);

/// The reserved "no peer" / "every peer" name used as the destination of flooded frames.
pub const BROADCAST_PEER: PeerName = PeerName(0);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid peer name {input:?}: expected six hex octets like 6e:b2:81:6c:ac:b3")]
pub struct PeerNameError {
    input: String,
}

impl PeerName {
    pub const MASK: u64 = (1 << 48) - 1;

    /// Builds a name from the low 48 bits of `v`.
    pub const fn from_u64(v: u64) -> Self {
        PeerName(v & Self::MASK)
    }

    pub const fn as_u64(self) -> u64 {
        self.0
    }

    pub fn from_bytes(b: [u8; 6]) -> Self {
        let mut v = 0u64;
        for x in b {
            v = (v << 8) | u64::from(x);
        }
        PeerName(v)
    }

    pub fn to_bytes(self) -> [u8; 6] {
        let b = self.0.to_be_bytes();
        [b[2], b[3], b[4], b[5], b[6], b[7]]
    }

    /// A fresh name from 48 random bits, forced to a locally administered unicast MAC so it
    /// can serve as the bridge's address without clashing with vendor-assigned MACs.
    pub fn from_random(random: u64) -> Self {
        let mut b = PeerName::from_u64(random).to_bytes();
        b[0] = (b[0] & 0xfe) | 0x02;
        let name = PeerName::from_bytes(b);
        if name == BROADCAST_PEER {
            PeerName::from_u64(0x0200_0000_0001)
        } else {
            name
        }
    }
}

impl fmt::Display for PeerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&crate::Mac(self.to_bytes()), f)
    }
}

impl fmt::Debug for PeerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for PeerName {
    type Err = PeerNameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || PeerNameError {
            input: s.to_string(),
        };
        let parse_octets = |part: &str| -> Result<Vec<u8>, PeerNameError> {
            if part.is_empty() {
                return Ok(Vec::new());
            }
            part.split(':')
                .map(|o| {
                    if o.is_empty() || o.len() > 2 {
                        return Err(err());
                    }
                    u8::from_str_radix(o, 16).map_err(|_| err())
                })
                .collect()
        };
        let octets = match s.split_once("::") {
            Some((head, tail)) => {
                if tail.contains("::") {
                    return Err(err());
                }
                let head = parse_octets(head)?;
                let tail = parse_octets(tail)?;
                if head.len() + tail.len() > 5 {
                    return Err(err());
                }
                let mut v = head;
                v.resize(6 - tail.len(), 0);
                v.extend(tail);
                v
            }
            None => parse_octets(s)?,
        };
        let bytes: [u8; 6] = octets.try_into().map_err(|_| err())?;
        Ok(PeerName::from_bytes(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_and_parse_round_trip() {
        let n: PeerName = "6e:b2:81:6c:ac:b3".parse().unwrap();
        assert_eq!(n.to_string(), "6e:b2:81:6c:ac:b3");
        assert_eq!(n.as_u64(), 0x6eb2_816c_acb3);
    }

    #[test]
    fn zero_run_shorthand() {
        assert_eq!("::1".parse::<PeerName>().unwrap().as_u64(), 1);
        assert_eq!(
            "1::".parse::<PeerName>().unwrap().as_u64(),
            0x0100_0000_0000
        );
        assert_eq!(
            "1::1".parse::<PeerName>().unwrap().as_u64(),
            0x0100_0000_0001
        );
        assert!("1::2::3".parse::<PeerName>().is_err());
        assert!("1:2:3:4:5::6".parse::<PeerName>().is_err());
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            "",
            "zz:00:00:00:00:00",
            "1:2:3:4:5",
            "1:2:3:4:5:6:7",
            "123:0:0:0:0:0",
        ] {
            assert!(bad.parse::<PeerName>().is_err(), "{bad}");
        }
    }

    #[test]
    fn random_names_are_local_unicast() {
        for r in [0u64, 1, u64::MAX, 0x0123_4567_89ab_cdef] {
            let b = PeerName::from_random(r).to_bytes();
            assert_eq!(b[0] & 0x01, 0, "unicast");
            assert_eq!(b[0] & 0x02, 0x02, "locally administered");
        }
    }
}
