//! kube-peers on namespace hosts as nodes, against the API stand-in: routers launched by
//! `weft-kube launch` find each other from the Nodes, follow Nodes that go and come back,
//! and keep working while the API server is away for a minute (a router restarted meanwhile
//! starts from the cached peers; addresses are still handed out); when it is back, the watch
//! picks up again.
//!
//! Needs root; the weft binary is the workspace's (`cargo test --workspace` builds it).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use weft_kube_api::StandIn;
use weft_kube_api::store::resource;
use weft_testbed::Testbed;

mod common;
use common::{api_listener, api_on, create_node, delete_node};

const WEFT_KUBE: &str = env!("CARGO_BIN_EXE_weft-kube");
const CONVERGE: Duration = Duration::from_secs(30);

fn weft() -> PathBuf {
    let p = Path::new(WEFT_KUBE).with_file_name("weft");
    assert!(
        p.exists(),
        "{} is missing: build the workspace first (cargo test --workspace does)",
        p.display()
    );
    p
}

/// A `weft-kube launch` on one host; SIGTERM on drop (it stops its router and exits).
struct Launched(Child);

impl Drop for Launched {
    fn drop(&mut self) {
        // `ip netns exec` replaced itself with weft-kube: this PID is ours.
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .output();
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn launch(tb: &Testbed, i: usize, kubeconfig: &Path, api_wait: u64) -> Result<Launched> {
    let h = tb.host(i);
    std::fs::create_dir_all(&h.run_dir)?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(h.run_dir.join("weft.log"))?;
    let child = tb
        .cmd_in(&h.netns, WEFT_KUBE)
        .args(["launch", "--api-wait", &api_wait.to_string(), "--weft"])
        .arg(weft())
        .args(["--", &format!("--nickname=host{i}")])
        .env("KUBECONFIG", kubeconfig)
        .env("NODE_NAME", format!("node-{i}"))
        .env("WEFT_STATE_DIR", &h.state_dir)
        .env("WEFT_RUN_DIR", &h.run_dir)
        .env("WEFT_DOCKER_API", "")
        .env_remove("WEFT_HTTP_ADDR")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()?;
    Ok(Launched(child))
}

/// Host `i`'s targets (`weft status targets`).
fn targets(tb: &Testbed, i: usize) -> Result<String> {
    tb.status(i, &["targets"])
}

fn wait_targets(tb: &Testbed, i: usize, want: &[Ipv4Addr], not: &[Ipv4Addr]) -> Result<()> {
    Testbed::wait_for(CONVERGE, || {
        let t = targets(tb, i)?;
        let has = |a: &Ipv4Addr| t.lines().any(|l| l.trim() == a.to_string());
        if want.iter().all(has) && !not.iter().any(has) {
            Ok(())
        } else {
            bail!(
                "h{i} targets {t:?}, want {want:?} and not {not:?}\nlog:\n{}",
                tail(&tb.router_log(i))
            )
        }
    })
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

#[test]
fn routers_follow_the_nodes_and_outlast_the_api_server() -> Result<()> {
    let Some(mut tb) = weft_testbed::for_test("kpeers", 4, &weft()) else {
        return Ok(());
    };
    // Host 4 is the API server; hosts 1 to 3 are nodes.
    let common::Api {
        rt,
        api,
        kubeconfig,
    } = api_on(&tb, 4, &[1, 2, 3])?;
    let ips: Vec<Ipv4Addr> = (0..=4)
        .map(|i| {
            if i == 0 {
                Ipv4Addr::UNSPECIFIED
            } else {
                tb.host(i).ip
            }
        })
        .collect();
    let ip = |i: usize| ips[i];
    let mut launched: Vec<Option<Launched>> = Vec::new();
    for i in 1..=3 {
        launched.push(Some(launch(&tb, i, &kubeconfig, 10)?));
    }
    tb.wait_full_mesh(3)?;
    wait_targets(&tb, 1, &[ip(2), ip(3)], &[ip(1)])?;

    // A Node goes: the others stop dialling it; it comes back: they dial it again.
    delete_node(&api, 3)?;
    wait_targets(&tb, 1, &[ip(2)], &[ip(3)])?;
    wait_targets(&tb, 2, &[ip(1)], &[ip(3)])?;
    create_node(&api, 3, ip(3))?;
    wait_targets(&tb, 1, &[ip(2), ip(3)], &[])?;

    // The API server goes away for a minute.
    api.stop();
    let down = Instant::now();
    // Host 2's pod restarts meanwhile: its router starts from the cached peers.
    launched[1] = None;
    Testbed::wait_for(CONVERGE, || match tb.our_router_pid(2) {
        None => Ok(()),
        Some(p) => bail!("router 2 ({p}) still running"),
    })?;
    launched[1] = Some(launch(&tb, 2, &kubeconfig, 3)?);
    tb.wait_full_mesh(3)?;
    wait_targets(&tb, 2, &[ip(1), ip(3)], &[])?;
    assert!(
        tb.router_log(2).contains("the 2 peers last seen"),
        "{}",
        tail(&tb.router_log(2))
    );
    // Addresses are still handed out, and nobody gave up.
    let c = tb.container("c1")?;
    let addr = tb.weft_ok(1, &["attach", &c])?;
    assert!(addr.trim().starts_with("10."), "{addr}");
    let rest = Duration::from_secs(60).saturating_sub(down.elapsed());
    std::thread::sleep(rest);
    for (i, l) in launched.iter_mut().enumerate() {
        let l = l.as_mut().context("launched")?;
        assert!(
            l.0.try_wait()?.is_none(),
            "weft-kube on host {} exited while the API server was away",
            i + 1
        );
    }
    tb.wait_full_mesh(3)?;

    // It is back: the watches pick up where they were.
    {
        let _guard = rt.enter();
        api.resume(api_listener(&tb, 4)?)?;
    }
    delete_node(&api, 2)?;
    wait_targets(&tb, 1, &[ip(3)], &[ip(2)])?;
    wait_targets(&tb, 3, &[ip(1)], &[ip(2)])?;
    drop(launched);
    Ok(())
}

/// The ConfigMap's peer list, as the reclaimers keep it.
fn peer_list(api: &StandIn) -> weft_kube::reclaim::PeerList {
    let cms = resource("v1", "configmaps").expect("configmaps");
    let cm = api.with_store(|s| {
        s.get(&cms, "kube-system", weft_kube::reclaim::CONFIGMAP)
            .ok()
    });
    weft_kube::reclaim::PeerList::parse(
        cm.as_ref()
            .and_then(|c| c["data"][weft_kube::reclaim::KEY].as_str()),
    )
}

#[test]
fn a_deleted_nodes_space_is_taken_over_once() -> Result<()> {
    let Some(mut tb) = weft_testbed::for_test("kreclaim", 4, &weft()) else {
        return Ok(());
    };
    let common::Api {
        rt: _rt,
        api,
        kubeconfig,
    } = api_on(&tb, 4, &[1, 2, 3])?;
    let mut launched: Vec<Option<Launched>> = Vec::new();
    for i in 1..=3 {
        launched.push(Some(launch(&tb, i, &kubeconfig, 10)?));
    }
    tb.wait_full_mesh(3)?;
    // Each node is marked as having its network, as Weave marked it.
    let nodes = resource("v1", "nodes").context("nodes")?;
    Testbed::wait_for(CONVERGE, || {
        for i in 1..=3 {
            let n = api
                .with_store(|s| s.get(&nodes, "", &format!("node-{i}")))
                .map_err(|e| anyhow::anyhow!("{}", e.message))?;
            let c = &n["status"]["conditions"];
            let ok = c.as_array().into_iter().flatten().any(|c| {
                c["type"] == "NetworkUnavailable"
                    && c["status"] == "False"
                    && c["reason"] == "WeftIsUp"
            });
            if !ok {
                bail!("node-{i}'s conditions: {c}");
            }
        }
        Ok(())
    })?;
    // And its host is on the pod network, as Weave's launch exposed it.
    for i in 1..=3 {
        Testbed::wait_for(CONVERGE, || {
            let ps = tb.weft_ok(i, &["ps", "weave:expose"])?;
            if ps.contains('/') {
                Ok(())
            } else {
                bail!("h{i} is not exposed: {ps}")
            }
        })?;
    }
    // Every node holds space: an address each.
    let mut addrs = Vec::new();
    for i in 1..=3 {
        let c = tb.container(&format!("c{i}"))?;
        addrs.push(tb.weft_ok(i, &["attach", &c])?.trim().to_string());
    }
    let report: serde_json::Value = serde_json::from_str(&tb.weft_ok(3, &["report"])?)?;
    let gone = report["Router"]["Name"]
        .as_str()
        .context("name")?
        .to_string();
    Testbed::wait_for(CONVERGE, || {
        let l = peer_list(&api);
        if l.peers.len() == 3 {
            Ok(())
        } else {
            bail!("registered: {l:?}")
        }
    })?;

    // Node 3 goes: its pod (and router) first, then the Node object.
    launched[2] = None;
    tb.wait_status(&[1, 2], "Peers: 2")?;
    assert!(tb.status(1, &["ipam"])?.contains("unreachable"));
    delete_node(&api, 3)?;
    for i in [1, 2] {
        Testbed::wait_for(CONVERGE, || {
            let s = tb.status(i, &["ipam"])?;
            if s.contains("unreachable") {
                bail!("h{i}:\n{s}\nlog:\n{}", tail(&tb.router_log(i)))
            }
            Ok(())
        })?;
    }
    let takers: Vec<usize> = [1, 2]
        .into_iter()
        .filter(|&i| tb.router_log(i).contains(&format!("reclaimed from {gone}")))
        .collect();
    assert_eq!(takers.len(), 1, "taken over by hosts {takers:?}");
    Testbed::wait_for(CONVERGE, || {
        let l = peer_list(&api);
        if l.peers.iter().all(|e| e.peer != gone) && l.claims.is_empty() {
            Ok(())
        } else {
            bail!("peer list after the reclaim: {l:?}")
        }
    })?;

    // The node comes back with its old state: its space is another's now, so it starts
    // without its saved allocations (Weave's check-peer-new) and takes new space.
    create_node(&api, 3, tb.host(3).ip)?;
    launched[2] = Some(launch(&tb, 3, &kubeconfig, 10)?);
    tb.wait_status(&[1, 2, 3], "Peers: 3")?;
    assert!(
        tb.router_log(3)
            .contains("removing its persisted allocation data"),
        "{}",
        tail(&tb.router_log(3))
    );
    let c = tb.container("c3again")?;
    let again = tb.weft_ok(3, &["attach", &c])?.trim().to_string();
    assert!(
        !addrs[..2].contains(&again),
        "{again} is held already: {addrs:?}"
    );
    for i in [1, 2, 3] {
        let s = tb.status(i, &["ipam"])?;
        assert!(!s.contains("unreachable"), "h{i}:\n{s}");
    }
    drop(launched);
    Ok(())
}
