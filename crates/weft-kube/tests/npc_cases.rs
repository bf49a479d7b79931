//! The NetworkPolicy cases without a kernel: for each case, the semantics (the oracle) and
//! the two nodes' compiled rule sets give exactly the case's truth table; and IBM's
//! network-config-analyzer, reading the same YAML, gives the same tables (nca_check.py; it
//! cannot judge ipBlock against pod addresses, so those cases say `# nca: skip`). The same
//! tables are measured with real traffic in tests/npc.rs.

use anyhow::Result;
use k8s_openapi::api::core::v1::{Namespace, Pod as ApiPod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use weft_kube::npc::rules::Proto;
use weft_kube::npc::store::{Store, namespace_labels, policy_key};
use weft_kube::npc::{Cluster, End};

mod common;
use common::cases::{self, PODS, PORTS, Table};

/// The store a node's npc would hold for `case`.
fn store(case: &cases::Case) -> Result<Store> {
    let mut s = Store::default();
    for o in cases::cluster(&case.replacements)? {
        match o["kind"].as_str() {
            Some("Namespace") => {
                let ns: Namespace = serde_json::from_value(o)?;
                if let Some((n, l)) = namespace_labels(&ns) {
                    s.namespaces.insert(n, l);
                }
            }
            Some("Pod") => s.apply_pod(&serde_json::from_value::<ApiPod>(o)?),
            _ => {}
        }
    }
    for p in &case.policies {
        let p: NetworkPolicy = serde_json::from_value(p.clone())?;
        if let Some(k) = policy_key(&p) {
            s.policies.insert(k, p);
        }
    }
    Ok(s)
}

#[test]
fn oracle_and_compiled_rules_give_every_case_its_table() -> Result<()> {
    let all = cases::cases()?;
    assert!(!all.is_empty(), "no cases in {}", cases::dir().display());
    let mut wrong = Vec::new();
    for case in &all {
        let s = store(case)?;
        let pods = s.effective_pods("host1");
        let cluster = Cluster {
            namespaces: s.namespaces.clone(),
            policies: s.policies.values().cloned().collect(),
        };
        let rules = [s.ruleset("host1"), s.ruleset("host2")];
        let find = |id: &str| {
            pods.iter()
                .map(|(p, _)| p)
                .find(|p| format!("{}/{}", p.namespace, p.name) == id)
                .expect("a pod of the cluster")
        };
        let node = |id: &str| {
            let p = find(id);
            s.pods
                .get(&(p.namespace.clone(), p.name.clone()))
                .and_then(|e| e.node.clone())
                .expect("a node")
        };
        let (mut oracle, mut compiled) = (Table::new(), Table::new());
        for (proto, port) in PORTS {
            let p = Proto::from_api(proto).expect("a protocol");
            for src in PODS {
                for dst in PODS {
                    if src == dst {
                        continue;
                    }
                    let (a, b) = (find(src), find(dst));
                    let k = (proto.to_string(), port);
                    let pair = (src.to_string(), dst.to_string());
                    oracle.entry(k.clone()).or_default().insert(
                        pair.clone(),
                        cluster.allows(End::Pod(a), End::Pod(b), proto, port),
                    );
                    let on = |n: String| &rules[usize::from(n == "host2")];
                    let (sip, dip) = (a.ip.expect("an address"), b.ip.expect("an address"));
                    let ok = on(node(src)).egress_allows(sip, dip, Some((p, port)))
                        && on(node(dst)).ingress_allows(sip, dip, Some((p, port)));
                    compiled.entry(k).or_default().insert(pair, ok);
                }
            }
        }
        for (what, got) in [("oracle", &oracle), ("compiled rules", &compiled)] {
            if *got != case.expected {
                wrong.push(format!(
                    "{}: the {what} give\n{}expected\n{}",
                    case.name,
                    cases::render_table(got),
                    cases::render_table(&case.expected)
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    eprintln!("{} cases agree", all.len());
    Ok(())
}

#[test]
fn nca_confirms_every_table() -> Result<()> {
    if !std::path::Path::new("/opt/weft-nca/bin/python").exists() {
        assert!(
            std::env::var_os("WEFT_REQUIRE_NCA").is_none(),
            "NCA is not installed: run `. scripts/lib.sh; install_nca`"
        );
        eprintln!("skipped: NCA is not installed (. scripts/lib.sh; install_nca)");
        return Ok(());
    }
    let out = std::process::Command::new("/opt/weft-nca/bin/python")
        .arg(cases::dir().join("nca_check.py"))
        .output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{text}");
    assert!(out.status.success(), "NCA disagrees:\n{text}");
    Ok(())
}
