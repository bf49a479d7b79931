//! weft on Kubernetes, beside the router (as Weave shipped kube-utils beside weaver): the
//! router's peers from the cluster's Nodes. Kept out of the router's build: kube-rs and the
//! Kubernetes API types are only compiled here.

pub mod env;
pub mod launch;
pub mod npc;
pub mod peers;
pub mod reclaim;
