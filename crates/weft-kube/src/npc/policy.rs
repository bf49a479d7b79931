//! Kubernetes NetworkPolicy semantics as a pure decision: given the pods, namespaces and
//! policies, is a connection allowed? This is the specification the enforcement (a rule set
//! compiled from the same objects) is checked against, case by case, and the oracle of the
//! truth tables the namespace tests measure with real traffic.
//!
//! The rules, as the API documents them: a pod is isolated for ingress (egress) when some
//! policy in its namespace selects it and has that policy type (`policyTypes`, or by default
//! Ingress, plus Egress if it has egress rules). An isolated pod takes only what one of those
//! policies' rules allows: a rule allows a peer (all peers if it lists none: a pod selector in
//! the policy's namespace, a namespace selector, both, or an IP block minus its exceptions)
//! on a port (all ports if it lists none: a protocol, TCP by default, and a number, a range
//! up to `endPort`, or a name the destination pod gives one of its container ports). A
//! connection needs its source's egress and its destination's ingress.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

pub type Labels = BTreeMap<String, String>;

/// A pod as policy sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pod {
    pub namespace: String,
    pub name: String,
    pub labels: Labels,
    pub ip: Option<Ipv4Addr>,
    /// Container ports with names: (name, protocol, number).
    pub named_ports: Vec<(String, String, u16)>,
}

/// One end of a connection.
#[derive(Debug, Clone, Copy)]
pub enum End<'a> {
    Pod(&'a Pod),
    /// Anything that is not a pod (the host, the outside world).
    Address(Ipv4Addr),
}

impl End<'_> {
    fn ip(&self) -> Option<Ipv4Addr> {
        match self {
            End::Pod(p) => p.ip,
            End::Address(a) => Some(*a),
        }
    }
}

/// Everything policy depends on.
#[derive(Debug, Clone, Default)]
pub struct Cluster {
    pub namespaces: BTreeMap<String, Labels>,
    pub policies: Vec<NetworkPolicy>,
}

/// Whether `labels` satisfy `sel` (matchLabels and matchExpressions; an empty selector
/// matches everything).
pub fn matches(sel: &LabelSelector, labels: &Labels) -> bool {
    let by_labels = sel
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let by_expr = sel.match_expressions.iter().flatten().all(|e| {
        let values = e.values.as_deref().unwrap_or(&[]);
        let has = labels.get(&e.key);
        match e.operator.as_str() {
            "In" => has.is_some_and(|v| values.contains(v)),
            "NotIn" => has.is_none_or(|v| !values.contains(v)),
            "Exists" => has.is_some(),
            "DoesNotExist" => has.is_none(),
            // An operator the API would have refused: match nothing rather than everything.
            _ => false,
        }
    });
    by_labels && by_expr
}

/// A rule seen from either side: its peers (`from` or `to`) and its ports.
pub(crate) type Rule<'a> = (
    Option<&'a Vec<NetworkPolicyPeer>>,
    Option<&'a Vec<NetworkPolicyPort>>,
);

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Direction {
    Ingress,
    Egress,
}

/// `p`'s rules for `dir`, each as (its peers, its ports): `from` for ingress, `to` for egress.
pub(crate) fn rules_of(p: &NetworkPolicy, dir: Direction) -> Vec<Rule<'_>> {
    let spec = p.spec.as_ref();
    match dir {
        Direction::Ingress => spec
            .and_then(|s| s.ingress.as_ref())
            .into_iter()
            .flatten()
            .map(|r| (r.from.as_ref(), r.ports.as_ref()))
            .collect(),
        Direction::Egress => spec
            .and_then(|s| s.egress.as_ref())
            .into_iter()
            .flatten()
            .map(|r| (r.to.as_ref(), r.ports.as_ref()))
            .collect(),
    }
}

pub(crate) fn types(p: &NetworkPolicy) -> (bool, bool) {
    let spec = p.spec.as_ref();
    match spec.and_then(|s| s.policy_types.as_ref()) {
        Some(t) => (
            t.iter().any(|x| x == "Ingress"),
            t.iter().any(|x| x == "Egress"),
        ),
        None => (
            true,
            spec.and_then(|s| s.egress.as_ref())
                .is_some_and(|e| !e.is_empty()),
        ),
    }
}

impl Cluster {
    fn ns_labels(&self, ns: &str) -> Labels {
        self.namespaces.get(ns).cloned().unwrap_or_default()
    }

    /// The policies that select `pod` for `dir`.
    pub(crate) fn selecting<'a>(
        &'a self,
        pod: &'a Pod,
        dir: Direction,
    ) -> impl Iterator<Item = &'a NetworkPolicy> {
        self.policies.iter().filter(move |p| {
            let (ing, eg) = types(p);
            let has_type = match dir {
                Direction::Ingress => ing,
                Direction::Egress => eg,
            };
            has_type
                && p.metadata.namespace.as_deref() == Some(pod.namespace.as_str())
                && p.spec
                    .as_ref()
                    // No selector (allowed since 1.33) selects every pod, as an empty one.
                    .is_some_and(|s| {
                        s.pod_selector
                            .as_ref()
                            .is_none_or(|sel| matches(sel, &pod.labels))
                    })
        })
    }

    /// Whether a policy peer (in a policy of namespace `ns`) is `who`.
    pub(crate) fn peer_is(&self, peer: &NetworkPolicyPeer, ns: &str, who: End) -> bool {
        if let Some(block) = &peer.ip_block {
            let Some(ip) = who.ip() else { return false };
            let Ok(cidr) = block.cidr.parse::<Ipv4Net>() else {
                return false;
            };
            let excepted = block
                .except
                .iter()
                .flatten()
                .filter_map(|e| e.parse::<Ipv4Net>().ok())
                .any(|e| e.contains(&ip));
            return cidr.contains(&ip) && !excepted;
        }
        let End::Pod(pod) = who else {
            return false;
        };
        let ns_ok = match &peer.namespace_selector {
            Some(sel) => matches(sel, &self.ns_labels(&pod.namespace)),
            None => pod.namespace == ns,
        };
        let pod_ok = peer
            .pod_selector
            .as_ref()
            .is_none_or(|sel| matches(sel, &pod.labels));
        ns_ok && pod_ok
    }

    /// Whether `(protocol, port)` to `dst` is one of `ports` (all, if there are none).
    fn port_is(
        ports: Option<&Vec<NetworkPolicyPort>>,
        dst: End,
        protocol: &str,
        port: u16,
    ) -> bool {
        let Some(ports) = ports.filter(|p| !p.is_empty()) else {
            return true;
        };
        ports.iter().any(|p| {
            let proto = p.protocol.as_deref().unwrap_or("TCP");
            if proto != protocol {
                return false;
            }
            match &p.port {
                None => true,
                Some(IntOrString::Int(n)) => {
                    let from = *n as i64;
                    let to = p.end_port.map_or(from, i64::from);
                    (from..=to).contains(&i64::from(port))
                }
                Some(IntOrString::String(name)) => match dst {
                    End::Pod(d) => d
                        .named_ports
                        .iter()
                        .any(|(n, pr, num)| n == name && pr == protocol && *num == port),
                    End::Address(_) => false,
                },
            }
        })
    }

    /// Whether `pod`'s side (`dir`) lets the connection through: it is not isolated that
    /// way, or a rule of a policy that isolates it allows the far end `other` on the port
    /// (named ports are the destination `dst`'s).
    fn side_allows(
        &self,
        pod: &Pod,
        dir: Direction,
        other: End,
        dst: End,
        protocol: &str,
        port: u16,
    ) -> bool {
        let mut isolated = false;
        for p in self.selecting(pod, dir) {
            isolated = true;
            let ns = p.metadata.namespace.as_deref().unwrap_or_default();
            let rules = rules_of(p, dir);
            let allowed = rules.into_iter().any(|(peers, ports)| {
                let peer_ok = peers
                    .filter(|p| !p.is_empty())
                    .is_none_or(|ps| ps.iter().any(|peer| self.peer_is(peer, ns, other)));
                peer_ok && Self::port_is(ports, dst, protocol, port)
            });
            if allowed {
                return true;
            }
        }
        !isolated
    }

    /// Whether a new connection from `src` to `dst` on `protocol` ("TCP", "UDP", "SCTP")
    /// port `port` is allowed.
    pub fn allows(&self, src: End, dst: End, protocol: &str, port: u16) -> bool {
        let egress = match src {
            End::Pod(s) => self.side_allows(s, Direction::Egress, dst, dst, protocol, port),
            End::Address(_) => true,
        };
        let ingress = match dst {
            End::Pod(d) => self.side_allows(d, Direction::Ingress, src, dst, protocol, port),
            End::Address(_) => true,
        };
        egress && ingress
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(ns: &str, name: &str, labels: &[(&str, &str)], ip: [u8; 4]) -> Pod {
        Pod {
            namespace: ns.into(),
            name: name.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ip: Some(ip.into()),
            named_ports: vec![("serve-80-tcp".into(), "TCP".into(), 80)],
        }
    }

    fn policy(ns: &str, yaml: serde_json::Value) -> NetworkPolicy {
        let mut p: NetworkPolicy = serde_json::from_value(yaml).unwrap();
        p.metadata.namespace = Some(ns.into());
        p
    }

    /// The e2e suite's world: namespaces x, y, z (labelled ns=<name>), pods a, b, c in each.
    fn world(policies: Vec<NetworkPolicy>) -> (Cluster, Vec<Pod>) {
        let mut pods = Vec::new();
        let mut namespaces = BTreeMap::new();
        for (i, ns) in ["x", "y", "z"].iter().enumerate() {
            namespaces.insert(ns.to_string(), [("ns".to_string(), ns.to_string())].into());
            for (j, name) in ["a", "b", "c"].iter().enumerate() {
                pods.push(pod(
                    ns,
                    name,
                    &[("pod", name)],
                    [10, 32, i as u8, j as u8 + 1],
                ));
            }
        }
        (
            Cluster {
                namespaces,
                policies,
            },
            pods,
        )
    }

    fn find<'a>(pods: &'a [Pod], id: &str) -> &'a Pod {
        let (ns, name) = id.split_once('/').unwrap();
        pods.iter()
            .find(|p| p.namespace == ns && p.name == name)
            .unwrap()
    }

    #[test]
    fn deny_all_ingress_in_a_namespace() {
        let (c, pods) = world(vec![policy(
            "x",
            serde_json::json!({
                "metadata": {"name": "deny"}, "spec": {"podSelector": {}}
            }),
        )]);
        let allows = |s: &str, d: &str| {
            c.allows(
                End::Pod(find(&pods, s)),
                End::Pod(find(&pods, d)),
                "TCP",
                80,
            )
        };
        assert!(!allows("y/a", "x/a"));
        assert!(!allows("x/b", "x/a"));
        assert!(allows("x/a", "y/a"), "egress is not isolated");
    }

    #[test]
    fn pod_and_namespace_selectors_alone_and_together() {
        let (c, pods) = world(vec![policy(
            "x",
            serde_json::json!({
                "metadata": {"name": "p"},
                "spec": {"podSelector": {"matchLabels": {"pod": "a"}},
                         "ingress": [{"from": [
                            {"namespaceSelector": {"matchLabels": {"ns": "y"}},
                             "podSelector": {"matchLabels": {"pod": "b"}}},
                            {"podSelector": {"matchExpressions": [{"key": "pod", "operator": "In", "values": ["c"]}]}}
                         ]}]}
            }),
        )]);
        let allows = |s: &str, d: &str| {
            c.allows(
                End::Pod(find(&pods, s)),
                End::Pod(find(&pods, d)),
                "TCP",
                80,
            )
        };
        assert!(allows("y/b", "x/a"), "both selectors");
        assert!(!allows("y/a", "x/a"));
        assert!(!allows("z/b", "x/a"));
        assert!(allows("x/c", "x/a"), "pod selector: same namespace");
        assert!(!allows("y/c", "x/a"));
        assert!(allows("z/a", "x/b"), "x/b is not selected");
    }

    #[test]
    fn ports_by_number_range_and_name_and_protocol() {
        let (c, pods) = world(vec![policy(
            "x",
            serde_json::json!({
                "metadata": {"name": "p"},
                "spec": {"podSelector": {},
                         "ingress": [{"ports": [
                            {"port": 81},
                            {"protocol": "UDP", "port": 1000, "endPort": 1010},
                            {"port": "serve-80-tcp"}
                         ]}]}
            }),
        )]);
        let (s, d) = (End::Pod(find(&pods, "y/a")), End::Pod(find(&pods, "x/a")));
        assert!(c.allows(s, d, "TCP", 81));
        assert!(!c.allows(s, d, "UDP", 81));
        assert!(c.allows(s, d, "UDP", 1005));
        assert!(!c.allows(s, d, "UDP", 1011));
        assert!(c.allows(s, d, "TCP", 80), "the named port");
        assert!(!c.allows(s, d, "UDP", 80));
    }

    #[test]
    fn egress_with_ip_blocks_and_exceptions() {
        let (c, pods) = world(vec![policy(
            "x",
            serde_json::json!({
                "metadata": {"name": "e"},
                "spec": {"podSelector": {"matchLabels": {"pod": "a"}},
                         "policyTypes": ["Egress"],
                         "egress": [{"to": [{"ipBlock": {"cidr": "10.32.0.0/16", "except": ["10.32.1.0/24"]}}]}]}
            }),
        )]);
        let a = End::Pod(find(&pods, "x/a"));
        assert!(c.allows(a, End::Pod(find(&pods, "x/b")), "TCP", 80));
        assert!(
            !c.allows(a, End::Pod(find(&pods, "y/b")), "TCP", 80),
            "excepted"
        );
        assert!(c.allows(a, End::Pod(find(&pods, "z/b")), "TCP", 80));
        assert!(!c.allows(a, End::Address([192, 0, 2, 1].into()), "TCP", 443));
        assert!(c.allows(
            End::Pod(find(&pods, "x/b")),
            End::Address([192, 0, 2, 1].into()),
            "TCP",
            443
        ));
        // Ingress is untouched by an egress-only policy.
        assert!(c.allows(End::Pod(find(&pods, "y/a")), a, "TCP", 80));
    }

    #[test]
    fn policies_add_up_and_an_empty_rule_allows_all() {
        let (c, pods) = world(vec![
            policy(
                "x",
                serde_json::json!({"metadata": {"name": "deny"}, "spec": {"podSelector": {}}}),
            ),
            policy(
                "x",
                serde_json::json!({"metadata": {"name": "allow"},
                "spec": {"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{}]}}),
            ),
        ]);
        let allows = |s: &str, d: &str| {
            c.allows(
                End::Pod(find(&pods, s)),
                End::Pod(find(&pods, d)),
                "TCP",
                80,
            )
        };
        assert!(allows("z/c", "x/a"));
        assert!(!allows("z/c", "x/b"));
    }
}
