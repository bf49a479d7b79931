//! What a node's npc knows: Pods, Namespaces, NetworkPolicies and Nodes as the watches
//! deliver them, and the addresses the CNI plugin has just given pods, on this node or (told
//! by that node's npc) on another, which count before the API has heard of them. Pure: the
//! watches, the plugin and the other nodes feed it, the rule set comes out.
//!
//! Pods churn, and addresses are reused: a deleted pod's address can go to a new pod before
//! the old pod's deletion reaches us. One address stands for one pod: the one the plugin
//! last gave it to, else a pod not being deleted, else the newest.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::{Namespace, Pod as ApiPod};
use k8s_openapi::api::networking::v1::NetworkPolicy;

use super::policy::{Cluster, Labels, Pod};
use super::rules::{Ruleset, compile};

/// namespace/name.
pub type Key = (String, String);

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodEntry {
    pub pod: Pod,
    pub node: Option<String>,
    /// In the node's own network: not ours to police (its address is the node's).
    pub host_network: bool,
    /// Succeeded or Failed: its address is free again.
    pub finished: bool,
    pub deleting: bool,
    /// RFC 3339, which sorts as time does.
    pub created: String,
}

impl PodEntry {
    pub fn from_api(p: &ApiPod) -> Option<(Key, PodEntry)> {
        let namespace = p.metadata.namespace.clone()?;
        let name = p.metadata.name.clone()?;
        let spec = p.spec.as_ref();
        let status = p.status.as_ref();
        let named_ports = spec
            .map(|s| s.containers.iter())
            .into_iter()
            .flatten()
            .flat_map(|c| c.ports.iter().flatten())
            .filter_map(|cp| {
                let port = u16::try_from(cp.container_port).ok()?;
                let proto = cp.protocol.clone().unwrap_or_else(|| "TCP".into());
                Some((cp.name.clone()?, proto, port))
            })
            .collect();
        let pod = Pod {
            namespace: namespace.clone(),
            name: name.clone(),
            labels: p.metadata.labels.clone().unwrap_or_default(),
            ip: status
                .and_then(|s| s.pod_ip.as_deref())
                .and_then(|ip| ip.parse().ok()),
            named_ports,
        };
        let entry = PodEntry {
            pod,
            node: spec.and_then(|s| s.node_name.clone()),
            host_network: spec.and_then(|s| s.host_network).unwrap_or(false),
            finished: matches!(
                status.and_then(|s| s.phase.as_deref()),
                Some("Succeeded" | "Failed")
            ),
            deleting: p.metadata.deletion_timestamp.is_some(),
            created: p
                .metadata
                .creation_timestamp
                .as_ref()
                .map(|t| t.0.to_string())
                .unwrap_or_default(),
        };
        Some(((namespace, name), entry))
    }
}

/// A Namespace's labels, with the one the API server sets on every namespace (since 1.21)
/// even where an older or stand-in server did not.
pub fn namespace_labels(ns: &Namespace) -> Option<(String, Labels)> {
    let name = ns.metadata.name.clone()?;
    let mut labels = ns.metadata.labels.clone().unwrap_or_default();
    labels
        .entry("kubernetes.io/metadata.name".into())
        .or_insert_with(|| name.clone());
    Some((name, labels))
}

pub fn policy_key(p: &NetworkPolicy) -> Option<Key> {
    Some((p.metadata.namespace.clone()?, p.metadata.name.clone()?))
}

#[derive(Clone, Debug, Default)]
pub struct Store {
    pub pods: BTreeMap<Key, PodEntry>,
    pub namespaces: BTreeMap<String, Labels>,
    pub policies: BTreeMap<Key, NetworkPolicy>,
    /// Each Node's addresses: a node telling us of its new pods must speak from one.
    pub nodes: BTreeMap<String, Vec<Ipv4Addr>>,
    /// Addresses a CNI plugin just gave pods, by address: here (local), or on another node,
    /// whose npc told us.
    pub claims: BTreeMap<Ipv4Addr, Claim>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    pub pod: Key,
    pub local: bool,
}

/// Why another node's word on a pod is not taken.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum PushError {
    #[error("no Node {0} is known")]
    UnknownNode(String),
    #[error("Node {node} has no address {from}")]
    NotFromNode { node: String, from: Ipv4Addr },
    #[error("pod {0}/{1} is not known")]
    UnknownPod(String, String),
    #[error("pod {0}/{1} is not on node {2}")]
    ElsewhereScheduled(String, String, String),
}

impl Store {
    /// A pod the watch delivered (added or changed).
    pub fn apply_pod(&mut self, p: &ApiPod) {
        if let Some((k, e)) = PodEntry::from_api(p) {
            self.pods.insert(k, e);
        }
    }

    pub fn delete_pod(&mut self, p: &ApiPod) {
        if let Some((k, _)) = PodEntry::from_api(p) {
            self.pods.remove(&k);
            self.claims.retain(|_, c| c.pod != k);
        }
    }

    /// The CNI plugin gave `ip` to pod `key`, on this node (`local`) or another.
    pub fn claim(&mut self, ip: Ipv4Addr, key: Key, local: bool) {
        self.claims.retain(|_, c| c.pod != key);
        self.claims.insert(ip, Claim { pod: key, local });
    }

    /// Checks another node's word that pod `key` just got an address on it: it must speak
    /// from one of its Node's addresses, and the pod must be scheduled there.
    pub fn check_push(&self, key: &Key, node: &str, from: Ipv4Addr) -> Result<(), PushError> {
        let addrs = self
            .nodes
            .get(node)
            .ok_or_else(|| PushError::UnknownNode(node.into()))?;
        if !addrs.contains(&from) {
            return Err(PushError::NotFromNode {
                node: node.into(),
                from,
            });
        }
        let pod = self
            .pods
            .get(key)
            .ok_or_else(|| PushError::UnknownPod(key.0.clone(), key.1.clone()))?;
        if pod.node.as_deref() != Some(node) {
            return Err(PushError::ElsewhereScheduled(
                key.0.clone(),
                key.1.clone(),
                node.into(),
            ));
        }
        Ok(())
    }

    /// The other nodes' first addresses (where their npc listens), by name.
    pub fn other_nodes(&self, node: &str) -> Vec<(String, Ipv4Addr)> {
        self.nodes
            .iter()
            .filter(|(n, _)| n.as_str() != node)
            .filter_map(|(n, a)| Some((n.clone(), *a.first()?)))
            .collect()
    }

    /// The pods policy sees, one per address, each with whether it is on node `node`.
    pub fn effective_pods(&self, node: &str) -> Vec<(Pod, bool)> {
        let claimed: BTreeMap<&Key, Ipv4Addr> =
            self.claims.iter().map(|(ip, c)| (&c.pod, *ip)).collect();
        let mut by_ip: BTreeMap<Ipv4Addr, (&Key, &PodEntry, Ipv4Addr)> = BTreeMap::new();
        for (k, e) in &self.pods {
            if e.host_network || e.finished {
                continue;
            }
            let Some(ip) = claimed.get(k).copied().or(e.pod.ip) else {
                continue;
            };
            let rank = |k: &Key, e: &PodEntry| {
                (
                    self.claims.get(&ip).is_some_and(|c| c.pod == *k),
                    !e.deleting,
                    e.created.clone(),
                )
            };
            match by_ip.get(&ip) {
                Some((ok, oe, _)) if rank(ok, oe) >= rank(k, e) => {}
                _ => {
                    by_ip.insert(ip, (k, e, ip));
                }
            }
        }
        by_ip
            .into_values()
            .map(|(k, e, ip)| {
                let local = e.node.as_deref() == Some(node)
                    || self.claims.get(&ip).is_some_and(|c| c.pod == *k && c.local);
                (
                    Pod {
                        ip: Some(ip),
                        ..e.pod.clone()
                    },
                    local,
                )
            })
            .collect()
    }

    /// This node's rule set.
    pub fn ruleset(&self, node: &str) -> Ruleset {
        let pods = self.effective_pods(node);
        let cluster = Cluster {
            namespaces: self.namespaces.clone(),
            policies: self.policies.values().cloned().collect(),
        };
        let all: Vec<Pod> = pods.iter().map(|(p, _)| p.clone()).collect();
        let local: std::collections::BTreeSet<Ipv4Addr> = pods
            .iter()
            .filter(|(_, l)| *l)
            .filter_map(|(p, _)| p.ip)
            .collect();
        compile(&cluster, &all, |p| {
            p.ip.is_some_and(|ip| local.contains(&ip))
        })
    }

    /// namespace/name by address, for log lines.
    pub fn names(&self, node: &str) -> BTreeMap<Ipv4Addr, String> {
        self.effective_pods(node)
            .into_iter()
            .filter_map(|(p, _)| Some((p.ip?, format!("{}/{}", p.namespace, p.name))))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api_pod(ns: &str, name: &str, node: &str, ip: Option<&str>, created: &str) -> ApiPod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"namespace": ns, "name": name, "labels": {"pod": name},
                         "creationTimestamp": created},
            "spec": {"nodeName": node, "containers": [{"name": "c", "ports": [
                {"name": "http", "containerPort": 80},
                {"containerPort": 81}
            ]}]},
            "status": {"phase": "Running", "podIP": ip}
        }))
        .expect("a pod")
    }

    #[test]
    fn a_pod_from_the_api() {
        let (k, e) = PodEntry::from_api(&api_pod(
            "x",
            "a",
            "n1",
            Some("10.32.0.5"),
            "2026-01-01T00:00:00Z",
        ))
        .unwrap();
        assert_eq!(k, ("x".to_string(), "a".to_string()));
        assert_eq!(e.pod.ip, Some([10, 32, 0, 5].into()));
        assert_eq!(
            e.pod.named_ports,
            vec![("http".to_string(), "TCP".to_string(), 80)]
        );
        assert_eq!(e.node.as_deref(), Some("n1"));
    }

    #[test]
    fn a_reused_address_stands_for_the_newest_pod_and_a_claim_wins_at_once() {
        let mut s = Store::default();
        s.apply_pod(&api_pod(
            "x",
            "old",
            "n1",
            Some("10.32.0.5"),
            "2026-01-01T00:00:00Z",
        ));
        s.apply_pod(&api_pod(
            "x",
            "new",
            "n2",
            Some("10.32.0.5"),
            "2026-01-01T00:01:00Z",
        ));
        let pods = s.effective_pods("n1");
        assert_eq!(pods.len(), 1);
        assert_eq!(pods[0].0.name, "new");
        assert!(!pods[0].1, "on n2");
        // The plugin on n1 gives the address to a third pod the API shows without one yet.
        s.apply_pod(&api_pod("y", "c", "n1", None, "2026-01-01T00:02:00Z"));
        s.claim([10, 32, 0, 5].into(), ("y".into(), "c".into()), true);
        let pods = s.effective_pods("n1");
        assert_eq!(pods.len(), 1);
        assert_eq!((pods[0].0.name.as_str(), pods[0].1), ("c", true));
        // Its deletion takes the claim with it.
        s.delete_pod(&api_pod("y", "c", "n1", None, "2026-01-01T00:02:00Z"));
        assert!(s.claims.is_empty());
        assert_eq!(s.effective_pods("n1")[0].0.name, "new");
    }

    #[test]
    fn another_node_is_believed_only_from_its_address_about_its_own_pods() {
        let mut s = Store::default();
        s.nodes.insert("n2".into(), vec![[198, 18, 0, 2].into()]);
        s.apply_pod(&api_pod("y", "c", "n2", None, "2026-01-01T00:00:00Z"));
        let key: Key = ("y".into(), "c".into());
        assert_eq!(s.check_push(&key, "n2", [198, 18, 0, 2].into()), Ok(()));
        assert!(matches!(
            s.check_push(&key, "n2", [198, 18, 0, 9].into()),
            Err(PushError::NotFromNode { .. })
        ));
        assert!(matches!(
            s.check_push(&key, "n3", [198, 18, 0, 2].into()),
            Err(PushError::UnknownNode(_))
        ));
        s.nodes.insert("n1".into(), vec![[198, 18, 0, 1].into()]);
        assert!(matches!(
            s.check_push(&key, "n1", [198, 18, 0, 1].into()),
            Err(PushError::ElsewhereScheduled(..))
        ));
        // Believed: the pod has the address here, and is not ours.
        s.claim([10, 32, 0, 9].into(), key, false);
        let pods = s.effective_pods("n1");
        assert_eq!(pods.len(), 1);
        assert_eq!(
            (pods[0].0.ip, pods[0].1),
            (Some([10, 32, 0, 9].into()), false)
        );
        assert_eq!(
            s.other_nodes("n1"),
            vec![("n2".to_string(), [198, 18, 0, 2].into())]
        );
    }

    #[test]
    fn finished_and_host_network_pods_are_not_policed() {
        let mut s = Store::default();
        let mut done = api_pod("x", "job", "n1", Some("10.32.0.6"), "2026-01-01T00:00:00Z");
        done.status.as_mut().unwrap().phase = Some("Succeeded".into());
        s.apply_pod(&done);
        let mut host = api_pod(
            "x",
            "host",
            "n1",
            Some("198.18.0.1"),
            "2026-01-01T00:00:00Z",
        );
        host.spec.as_mut().unwrap().host_network = Some(true);
        s.apply_pod(&host);
        assert!(s.effective_pods("n1").is_empty());
    }

    #[test]
    fn namespaces_carry_their_name_label() {
        let ns: Namespace =
            serde_json::from_value(serde_json::json!({"metadata": {"name": "x"}})).unwrap();
        let (n, l) = namespace_labels(&ns).unwrap();
        assert_eq!(n, "x");
        assert_eq!(
            l.get("kubernetes.io/metadata.name").map(String::as_str),
            Some("x")
        );
    }
}
