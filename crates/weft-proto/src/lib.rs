//! weft's wire formats, parsed into types once at the edge.
//!
//! Everything here is pure: bytes in, typed values out (or a [`DecodeError`]), and the reverse.
//! Decoders are reached by bytes from the network before any authentication, so they never
//! panic on any input; each has a property test (and later a fuzz target) proving it.
#![forbid(unsafe_code)]

pub mod coalesce;
pub mod control;
pub mod dns;
pub mod ether;
pub mod fastdp;
pub mod ipam;
pub mod offload;
pub mod peer;
pub mod sleeve;

pub use ether::{EtherFrame, Mac};

use serde::Serialize;

/// The largest gossip payload a full state is sent in. Full states (topology, DNS records,
/// fast-path records) are lists of independently mergeable entries, so they are cut into
/// payloads of at most this size instead of one message that could outgrow
/// [`control::MAX_FRAME_LEN`], which every receiver would refuse (and then redial, in a loop).
pub const MAX_GOSSIP_CHUNK: usize = 1 << 20;

/// Cuts `items` into runs whose postcard encoding (as a sequence) stays within `max` bytes.
/// An item larger than `max` on its own travels alone. An empty list gives one empty run, so
/// "I know nothing" is still said.
pub fn chunk_by_size<T: Serialize>(items: Vec<T>, max: usize) -> Vec<Vec<T>> {
    // Room for the sequence's length prefix (a varint of at most 5 bytes for our counts) and
    // an enclosing enum tag.
    let budget = max.saturating_sub(8);
    let mut runs = vec![Vec::new()];
    let mut used = 0;
    let mut scratch = Vec::new();
    for item in items {
        scratch.clear();
        scratch = postcard::to_extend(&item, scratch).expect("postcard encoding to a Vec");
        let size = scratch.len();
        let run = runs.last_mut().expect("never empty");
        if !run.is_empty() && used + size > budget {
            runs.push(Vec::new());
            used = 0;
        }
        used += size;
        runs.last_mut().expect("never empty").push(item);
    }
    runs
}
/// The postcard encodings of `items` as sequences (what a `Vec<T>`, or a struct holding just
/// one, encodes to), cut as [`chunk_by_size`] cuts them, each item encoded once and never
/// cloned: full states are sent from entries a router holds, often to many neighbours.
pub fn encode_chunks<T: Serialize>(items: impl IntoIterator<Item = T>, max: usize) -> Vec<Vec<u8>> {
    let budget = max.saturating_sub(8);
    let mut out = Vec::new();
    let mut body = Vec::new();
    let mut count = 0usize;
    for item in items {
        let item_start = body.len();
        body = postcard::to_extend(&item, body).expect("postcard encoding to a Vec");
        if count > 0 && body.len() > budget {
            out.push(sequence(count, &body[..item_start]));
            body.drain(..item_start);
            count = 0;
        }
        count += 1;
    }
    out.push(sequence(count, &body));
    out
}

/// A postcard sequence: the item count as a varint, then the items.
fn sequence(count: usize, items: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(items.len() + 10);
    let mut n = count as u64;
    while n >= 0x80 {
        v.push((n as u8) | 0x80);
        n >>= 7;
    }
    v.push(n as u8);
    v.extend_from_slice(items);
    v
}

pub use peer::{BROADCAST_PEER, PeerName, PeerNameError};

/// Why a sequence of bytes from a peer or the kernel was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("{what} truncated: need {need} bytes, have {have}")]
    Truncated {
        what: &'static str,
        need: usize,
        have: usize,
    },
    #[error("{what} too long: {len} bytes (max {max})")]
    TooLong {
        what: &'static str,
        len: usize,
        max: usize,
    },
    #[error("malformed {what}: {detail}")]
    Malformed { what: &'static str, detail: String },
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn chunks_keep_every_item_in_order_and_fit(
            items in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 0..200),
            max in 64usize..400,
        ) {
            let runs = chunk_by_size(items.clone(), max);
            prop_assert!(!runs.is_empty());
            for r in &runs {
                let encoded = postcard::to_allocvec(r).unwrap();
                prop_assert!(encoded.len() <= max, "{} > {max}", encoded.len());
            }
            let back: Vec<Vec<u8>> = runs.into_iter().flatten().collect();
            prop_assert_eq!(back, items);
        }

        #[test]
        fn encoded_chunks_are_the_chunks_encoded(
            items in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 0..300),
            max in 64usize..400,
        ) {
            let expected: Vec<Vec<u8>> = chunk_by_size(items.clone(), max)
                .iter()
                .map(|r| postcard::to_allocvec(r).unwrap())
                .collect();
            prop_assert_eq!(encode_chunks(&items, max), expected);
        }
    }
}
