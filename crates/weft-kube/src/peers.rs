//! Which addresses a node's router should connect to, from the cluster's Nodes: as Weave's
//! kube-peers, every other node's InternalIP (its ExternalIP if it has no internal one).
//! Pure: the caller brings the Nodes and says which addresses are this host's.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::Node;

/// A node's address for the overlay: its IPv4 InternalIP, else its IPv4 ExternalIP.
pub fn node_address(node: &Node) -> Option<Ipv4Addr> {
    node_addresses(node).first().copied()
}

/// A node's IPv4 addresses: InternalIPs first, then ExternalIPs.
pub fn node_addresses(node: &Node) -> Vec<Ipv4Addr> {
    let addrs = node
        .status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .map(Vec::as_slice)
        .unwrap_or_default();
    ["InternalIP", "ExternalIP"]
        .iter()
        .flat_map(|kind| {
            addrs
                .iter()
                .filter(move |a| a.type_ == *kind)
                .filter_map(|a| a.address.parse::<Ipv4Addr>().ok())
        })
        .collect()
}

/// The Nodes as kube-peers follows them: name → address (if it has one yet).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Nodes(pub BTreeMap<String, Option<Ipv4Addr>>);

impl Nodes {
    pub fn apply(&mut self, node: &Node) {
        if let Some(name) = &node.metadata.name {
            self.0.insert(name.clone(), node_address(node));
        }
    }

    pub fn delete(&mut self, node: &Node) {
        if let Some(name) = &node.metadata.name {
            self.0.remove(name);
        }
    }

    /// The addresses to connect to: every node's but our own (by name, or by one of our
    /// addresses), sorted, without duplicates.
    pub fn peers(&self, own_name: Option<&str>, own_addrs: &BTreeSet<Ipv4Addr>) -> Vec<Ipv4Addr> {
        let set: BTreeSet<Ipv4Addr> = self
            .0
            .iter()
            .filter(|(name, _)| Some(name.as_str()) != own_name)
            .filter_map(|(_, a)| *a)
            .filter(|a| !own_addrs.contains(a))
            .collect();
        set.into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{NodeAddress, NodeStatus};
    use kube::api::ObjectMeta;

    fn node(name: &str, addrs: &[(&str, &str)]) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            status: Some(NodeStatus {
                addresses: Some(
                    addrs
                        .iter()
                        .map(|(t, a)| NodeAddress {
                            type_: t.to_string(),
                            address: a.to_string(),
                        })
                        .collect(),
                ),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn internal_first_then_external_and_never_ourselves() {
        let mut n = Nodes::default();
        n.apply(&node(
            "a",
            &[("ExternalIP", "203.0.113.1"), ("InternalIP", "10.0.0.1")],
        ));
        n.apply(&node("b", &[("ExternalIP", "203.0.113.2")]));
        n.apply(&node("c", &[("InternalIP", "fd00::3"), ("Hostname", "c")]));
        n.apply(&node("me", &[("InternalIP", "10.0.0.9")]));
        n.apply(&node("d", &[("InternalIP", "10.0.0.4")]));
        let own = BTreeSet::from(["10.0.0.4".parse().unwrap()]);
        assert_eq!(
            n.peers(Some("me"), &own),
            vec![
                "10.0.0.1".parse::<Ipv4Addr>().unwrap(),
                "203.0.113.2".parse().unwrap()
            ]
        );
        n.delete(&node("a", &[]));
        assert_eq!(n.peers(Some("me"), &own).len(), 1);
    }
}
