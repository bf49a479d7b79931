//! Payloads of the DNS gossip channel: name → address records, owned by the peer that
//! registered them (the origin).

use serde::{Deserialize, Serialize};

use crate::{DecodeError, PeerName};

/// Longest hostname accepted (RFC 1035 limit for a full name).
pub const MAX_HOSTNAME: usize = 253;
/// Longest container id accepted.
pub const MAX_CONTAINER: usize = 256;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsEntry {
    /// Fully qualified, with the trailing dot, as registered (case preserved).
    pub hostname: String,
    pub origin: PeerName,
    pub container: String,
    /// IPv4 address, host order.
    pub addr: u32,
    pub version: u64,
    pub tombstone: bool,
}

impl DnsEntry {
    pub fn valid(&self) -> bool {
        !self.hostname.is_empty()
            && self.hostname.len() <= MAX_HOSTNAME
            && self.container.len() <= MAX_CONTAINER
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsUpdate {
    pub entries: Vec<DnsEntry>,
}

impl DnsUpdate {
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_extend(self, Vec::new()).expect("postcard encoding of DnsUpdate")
    }

    pub fn decode(b: &[u8]) -> Result<Self, DecodeError> {
        postcard::from_bytes(b).map_err(|e| DecodeError::Malformed {
            what: "DNS update",
            detail: e.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trip() {
        let u = DnsUpdate {
            entries: vec![DnsEntry {
                hostname: "web.weave.local.".into(),
                origin: PeerName::from_u64(1),
                container: "c1".into(),
                addr: 0x0a20_0001,
                version: 2,
                tombstone: false,
            }],
        };
        assert_eq!(DnsUpdate::decode(&u.encode()).unwrap(), u);
    }

    proptest! {
        #[test]
        fn decode_never_panics(b in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = DnsUpdate::decode(&b);
        }
    }
}
