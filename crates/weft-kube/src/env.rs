//! The router's arguments on Kubernetes, from the DaemonSet's environment: the variables
//! Weave's launch.sh read, so a Weave DaemonSet's settings carry over.
//!
//! | variable | router argument |
//! |---|---|
//! | `NODE_NAME` (else `HOSTNAME`) | `--nickname` |
//! | `IPALLOC_RANGE` | `--ipalloc-range` (10.32.0.0/12 if unset) |
//! | `IPALLOC_INIT` | `--ipalloc-init` (else `consensus=<number of peers>`, as Weave) |
//! | `CONN_LIMIT` | `--conn-limit` (200) |
//! | `WEAVE_MTU` / `WEFT_MTU` | `--mtu` |
//! | `WEAVE_NO_FASTDP` / `WEFT_NO_FASTDP` | `--no-fastdp` |
//! | `WEAVE_METRICS_ADDR` | `--metrics-addr` (0.0.0.0:6782, for Prometheus, as Weave) |
//! | `WEAVE_STATUS_ADDR` | `--status-addr` (off otherwise: the metrics address serves status too) |
//! | `WEAVE_PASSWORD` | the router's `WEFT_PASSWORD` (never an argument: it would show in `ps`) |
//! | `EXTRA_ARGS` | appended, split on whitespace |
//!
//! Always: `--no-dns` and no Docker API (Kubernetes has its own DNS and runtime). Arguments
//! given to `weft-kube launch` itself win over these (see [`merged`]).

/// Router arguments for `peers` peers, from the variables `var` gives.
pub fn router_args(var: impl Fn(&str) -> Option<String>, peers: usize) -> Vec<String> {
    let var = |k: &str| var(k).filter(|v| !v.is_empty());
    let mut a = Vec::new();
    if let Some(n) = var("NODE_NAME").or_else(|| var("HOSTNAME")) {
        a.push(format!("--nickname={n}"));
    }
    a.push(format!(
        "--ipalloc-range={}",
        var("IPALLOC_RANGE").unwrap_or_else(|| "10.32.0.0/12".into())
    ));
    a.push(format!(
        "--ipalloc-init={}",
        var("IPALLOC_INIT").unwrap_or_else(|| format!("consensus={}", peers.max(1)))
    ));
    a.push(format!(
        "--conn-limit={}",
        var("CONN_LIMIT").unwrap_or_else(|| "200".into())
    ));
    if let Some(m) = var("WEFT_MTU").or_else(|| var("WEAVE_MTU")) {
        a.push(format!("--mtu={m}"));
    }
    if var("WEFT_NO_FASTDP")
        .or_else(|| var("WEAVE_NO_FASTDP"))
        .is_some()
    {
        a.push("--no-fastdp".into());
    }
    a.push(format!(
        "--metrics-addr={}",
        var("WEAVE_METRICS_ADDR").unwrap_or_else(|| "0.0.0.0:6782".into())
    ));
    a.push(format!(
        "--status-addr={}",
        var("WEAVE_STATUS_ADDR").unwrap_or_default()
    ));
    a.extend(["--no-dns".into(), "--docker-api=".into()]);
    if let Some(extra) = var("EXTRA_ARGS") {
        a.extend(extra.split_whitespace().map(String::from));
    }
    a
}

fn flag(arg: &str) -> Option<&str> {
    arg.strip_prefix("--")
        .map(|f| f.split('=').next().unwrap_or(f))
}

/// `from_env` and then `given`, leaving out the flags of `from_env` that `given` sets too.
pub fn merged(mut from_env: Vec<String>, given: &[String]) -> Vec<String> {
    let set: Vec<&str> = given.iter().filter_map(|a| flag(a)).collect();
    from_env.retain(|a| flag(a).is_none_or(|f| !set.contains(&f)));
    from_env.extend(given.iter().cloned());
    from_env
}

/// The password for the router's environment: weft's own variable, else Weave's.
pub fn password(var: impl Fn(&str) -> Option<String>) -> Option<String> {
    var("WEFT_PASSWORD")
        .filter(|v| !v.is_empty())
        .or_else(|| var("WEAVE_PASSWORD").filter(|v| !v.is_empty()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn a_weave_daemonsets_settings_carry_over() {
        let env: BTreeMap<&str, &str> = [
            ("HOSTNAME", "node-7"),
            ("IPALLOC_RANGE", "10.40.0.0/16"),
            ("CONN_LIMIT", "50"),
            ("WEAVE_MTU", "1337"),
            ("WEAVE_PASSWORD", "s3cret"),
            ("EXTRA_ARGS", "--log-level=debug  --no-discovery"),
        ]
        .into();
        let var = |k: &str| env.get(k).map(|v| v.to_string());
        let a = router_args(var, 4);
        for want in [
            "--nickname=node-7",
            "--ipalloc-range=10.40.0.0/16",
            "--ipalloc-init=consensus=4",
            "--conn-limit=50",
            "--mtu=1337",
            "--no-dns",
            "--docker-api=",
            "--log-level=debug",
            "--no-discovery",
        ] {
            assert!(a.iter().any(|x| x == want), "{want} missing from {a:?}");
        }
        assert!(
            !a.iter().any(|x| x.contains("s3cret")),
            "the password is no argument"
        );
        assert_eq!(password(var).as_deref(), Some("s3cret"));
        let m = merged(a, &["--conn-limit=7".into(), "--no-fastdp".into()]);
        assert!(m.contains(&"--conn-limit=7".to_string()));
        assert!(!m.contains(&"--conn-limit=50".to_string()));
        let none = |_: &str| None;
        let d = router_args(none, 0);
        assert!(d.contains(&"--ipalloc-init=consensus=1".to_string()));
        assert!(d.contains(&"--conn-limit=200".to_string()));
    }
}
