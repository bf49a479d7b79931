//! NetworkPolicy (Weave's weave-npc): what policy means ([`policy`], a pure oracle), the
//! rule set that enforces it on one node ([`rules`], pure, with an evaluator checked against
//! the oracle), its nftables form ([`nft`]), and the loop that keeps a node's table in step
//! with the API ([`run`]).

pub mod nft;
pub mod policy;
pub mod rules;
pub mod run;
pub mod store;

pub use policy::{Cluster, End, Labels, Pod, matches};
