//! NetworkPolicy with real traffic: namespaces x, y, z × pods a, b, c as network namespaces
//! on the weft bridges of two Docker-posture hosts, `weft-kube npc` on each host against the
//! API stand-in, and for each case of tests/npc/cases its policies applied through the API
//! and every pair probed on TCP and UDP ports 80 and 81; the measured table must be the
//! case's (which NCA confirms offline). Then pods churn: a new pod's connections to an
//! isolated pod that allows it are never dropped, and blocked connections are counted in
//! the metrics and logged.
//!
//! Needs root; the weft binary is the workspace's (`cargo test --workspace` builds it).

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;
use weft_linux::netns::{NAMED_NETNS_DIR, Netns, run_in};
use weft_testbed::Testbed;

mod common;
use common::cases::{self, PODS, PORTS, Table};
use common::{api_on, delete, objects_of, put};

const WEFT_KUBE: &str = env!("CARGO_BIN_EXE_weft-kube");
const CONVERGE: Duration = Duration::from_secs(30);
/// Where each host's npc serves metrics and hears of the other's new pods.
const METRICS: &str = "0.0.0.0:6781";

fn weft() -> PathBuf {
    let p = Path::new(WEFT_KUBE).with_file_name("weft");
    assert!(
        p.exists(),
        "{} is missing: build the workspace first",
        p.display()
    );
    p
}

/// A `weft-kube npc` on one host; SIGTERM on drop.
struct Npc(Child);

impl Drop for Npc {
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

fn npc(tb: &Testbed, i: usize, kubeconfig: &Path) -> Result<Npc> {
    let h = tb.host(i);
    std::fs::create_dir_all(&h.run_dir)?;
    let log = std::fs::File::create(h.run_dir.join("npc.log"))?;
    let child = tb
        .cmd_in(&h.netns, WEFT_KUBE)
        .arg("npc")
        .env("KUBECONFIG", kubeconfig)
        .env("NODE_NAME", format!("host{i}"))
        .env("WEFT_NPC_SOCKET", h.run_dir.join("npc.sock"))
        .env("WEFT_NPC_METRICS_ADDR", METRICS)
        .env("WEFT_LOG", "info,kube_client=off")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()?;
    Ok(Npc(child))
}

fn ns_of(name: &str) -> Result<Netns> {
    Ok(Netns::open(&Path::new(NAMED_NETNS_DIR).join(name))?)
}

/// Host `i`'s npc metrics.
fn metrics(rt: &tokio::runtime::Runtime, tb: &Testbed, i: usize) -> Result<BTreeMap<String, f64>> {
    let ns = ns_of(&tb.host(i).netns)?;
    let body = rt.block_on(run_in(&ns, || async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect("127.0.0.1:6781").await?;
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: npc\r\n\r\n")
            .await?;
        let mut out = String::new();
        s.read_to_string(&mut out).await?;
        anyhow::Ok(out)
    }))??;
    Ok(body
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect())
}

/// Listeners on TCP and UDP ports 80 and 81 in a pod: TCP accepts and closes, UDP echoes.
/// They stop when `stop` is set.
fn serve(rt: &tokio::runtime::Runtime, netns: &str, stop: Arc<AtomicBool>) -> Result<()> {
    let ns = ns_of(netns)?;
    let (tcp, udp) = rt.block_on(run_in(&ns, || async {
        let mut tcp = Vec::new();
        let mut udp = Vec::new();
        for port in [80, 81] {
            let t = std::net::TcpListener::bind(("0.0.0.0", port))?;
            t.set_nonblocking(true)?;
            tcp.push(t);
            let u = std::net::UdpSocket::bind(("0.0.0.0", port))?;
            u.set_read_timeout(Some(Duration::from_millis(100)))?;
            udp.push(u);
        }
        anyhow::Ok((tcp, udp))
    }))??;
    for t in tcp {
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match t.accept() {
                    Ok((s, _)) => drop(s),
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
    }
    for u in udp {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            while !stop.load(Ordering::Relaxed) {
                if let Ok((n, from)) = u.recv_from(&mut buf) {
                    let _ = u.send_to(&buf[..n], from);
                }
            }
        });
    }
    Ok(())
}

/// Whether a new connection from the pod whose namespace this runs in gets through. A UDP
/// probe sends from `sport` (0: any): the firewall lets established flows pass, so a probe
/// that reused the source port of a flow an earlier case allowed would ride that flow's
/// conntrack entry (UDP's lasts 30 s) through a policy that now blocks it.
async fn probe(dst: Ipv4Addr, proto: &str, port: u16, sport: u16) -> bool {
    let to = SocketAddr::from((dst, port));
    if proto == "TCP" {
        return matches!(
            tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(to)).await,
            Ok(Ok(_))
        );
    }
    let Ok(s) = tokio::net::UdpSocket::bind(("0.0.0.0", sport)).await else {
        return false;
    };
    let mut buf = [0u8; 16];
    for _ in 0..3 {
        if s.send_to(b"probe", to).await.is_err() {
            return false;
        }
        if let Ok(Ok(_)) =
            tokio::time::timeout(Duration::from_millis(600), s.recv_from(&mut buf)).await
        {
            return true;
        }
    }
    false
}

/// Below the kernel's ephemeral range (32768 on), so no other socket holds these.
const PROBE_PORT_BASE: u16 = 20_000;

/// Every pair, every port: the table as measured. The `case`th case sends its UDP probes
/// from source ports no other case uses.
fn measure(
    rt: &tokio::runtime::Runtime,
    pods: &BTreeMap<String, (String, Ipv4Addr)>,
    case: usize,
) -> Result<Table> {
    let per_case = (PODS.len() * PORTS.len()) as u16;
    let first_port = PROBE_PORT_BASE + case as u16 * per_case;
    let mut runs = Vec::new();
    for src in PODS {
        let ns = ns_of(&pods[src].0)?;
        let targets: Vec<(String, Ipv4Addr)> = PODS
            .iter()
            .filter(|d| **d != src)
            .map(|d| (d.to_string(), pods[*d].1))
            .collect();
        runs.push(async move {
            let r = run_in(&ns, move || async move {
                let mut probes = Vec::new();
                let mut sport = first_port;
                for (d, ip) in targets {
                    for (proto, port) in PORTS {
                        let d = d.clone();
                        probes.push(async move {
                            let ok = probe(ip, proto, port, sport).await;
                            ((proto.to_string(), port), d, ok)
                        });
                        sport += 1;
                    }
                }
                futures::future::join_all(probes).await
            })
            .await;
            (src, r)
        });
    }
    let mut t = Table::new();
    for (src, r) in rt.block_on(futures::future::join_all(runs)) {
        for (k, dst, ok) in r? {
            t.entry(k).or_default().insert((src.to_string(), dst), ok);
        }
    }
    Ok(t)
}

/// A probe the table allows but that measured blocked is tried again, one at a time, a few
/// times: 288 probes at once on a loaded CI machine can lose a SYN or a datagram past its
/// timeout, which is not a policy's doing. A probe that got through where the table blocks
/// is never retried: no load makes a dropped packet arrive.
fn reprobe_missed(
    rt: &tokio::runtime::Runtime,
    pods: &BTreeMap<String, (String, Ipv4Addr)>,
    got: &mut Table,
    expected: &Table,
    case: &str,
) -> Result<()> {
    for ((proto, port), cells) in expected {
        for ((src, dst), allowed) in cells {
            let measured = got.entry((proto.clone(), *port)).or_default();
            if !*allowed || measured.get(&(src.clone(), dst.clone())) == Some(&true) {
                continue;
            }
            let ns = ns_of(&pods[src.as_str()].0)?;
            let ip = pods[dst.as_str()].1;
            let proto_s = proto.clone();
            let port = *port;
            let mut ok = false;
            for _ in 0..3 {
                let p = proto_s.clone();
                ok = rt.block_on(run_in(
                    &ns,
                    move || async move { probe(ip, &p, port, 0).await },
                ))?;
                if ok {
                    break;
                }
                std::thread::sleep(Duration::from_millis(500));
            }
            eprintln!("{case}: {src} -> {dst} {proto}/{port} re-probed: {ok}");
            measured.insert((src.clone(), dst.clone()), ok);
        }
    }
    Ok(())
}

/// Until both hosts' npc count `n` policies and have applied nothing new for half a second.
fn settle(rt: &tokio::runtime::Runtime, tb: &Testbed, n: usize) -> Result<()> {
    let mut last = (f64::NAN, f64::NAN);
    let mut quiet_since = Instant::now();
    Testbed::wait_for(CONVERGE, || {
        let (m1, m2) = (metrics(rt, tb, 1)?, metrics(rt, tb, 2)?);
        let pol = |m: &BTreeMap<String, f64>| m.get("weft_npc_policies").copied().unwrap_or(-1.0);
        let upd = |m: &BTreeMap<String, f64>| {
            m.get("weft_npc_rule_updates_total")
                .copied()
                .unwrap_or(-1.0)
        };
        let now = (upd(&m1), upd(&m2));
        if now != last {
            last = now;
            quiet_since = Instant::now();
        }
        if pol(&m1) == n as f64
            && pol(&m2) == n as f64
            && quiet_since.elapsed() >= Duration::from_millis(500)
        {
            Ok(())
        } else {
            bail!(
                "policies {} and {} of {n}; updates {now:?}",
                pol(&m1),
                pol(&m2)
            )
        }
    })
}

struct World {
    tb: Testbed,
    rt: tokio::runtime::Runtime,
    api: common::Api,
    /// "x/a" → (network namespace, address).
    pods: BTreeMap<String, (String, Ipv4Addr)>,
    _npc: Vec<Npc>,
    stop: Arc<AtomicBool>,
}

impl Drop for World {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn world(tag: &str) -> Result<Option<World>> {
    let Some(mut tb) = weft_testbed::for_test(tag, 2, &weft()) else {
        return Ok(None);
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let api = api_on(&tb, 1, &[])?;
    for o in cases::cluster(&[])? {
        put(&api.api, &o)?;
    }
    for i in 1..=2 {
        let node = serde_json::json!({
            "kind": "Node",
            "metadata": {"name": format!("host{i}")},
            "status": {"addresses": [{"type": "InternalIP", "address": tb.host(i).ip.to_string()}]},
        });
        put(&api.api, &node)?;
    }
    tb.launch(1, &[])?;
    tb.launch(2, &[&tb.host(1).ip.to_string()])?;
    let mut pods = BTreeMap::new();
    let stop = Arc::new(AtomicBool::new(false));
    for o in cases::cluster(&[])? {
        if o["kind"] != "Pod" {
            continue;
        }
        let id = format!(
            "{}/{}",
            o["metadata"]["namespace"].as_str().unwrap_or_default(),
            o["metadata"]["name"].as_str().unwrap_or_default()
        );
        let ip: Ipv4Addr = o["status"]["podIP"].as_str().context("podIP")?.parse()?;
        let host = if o["spec"]["nodeName"] == "host2" {
            2
        } else {
            1
        };
        let ns = tb.container(&id.replace('/', "-"))?;
        tb.weft_ok(host, &["attach", &format!("{ip}/12"), &ns])?;
        serve(&rt, &ns, stop.clone())?;
        pods.insert(id, (ns, ip));
    }
    // The mesh carries traffic both ways before any policy.
    tb.wait_ping(&pods["x/a"].0, &pods["x/b"].1.to_string(), CONVERGE)?;
    tb.wait_ping(&pods["y/b"].0, &pods["y/c"].1.to_string(), CONVERGE)?;
    let npc = vec![npc(&tb, 1, &api.kubeconfig)?, npc(&tb, 2, &api.kubeconfig)?];
    settle(&rt, &tb, 0)?;
    Ok(Some(World {
        tb,
        rt,
        api,
        pods,
        _npc: npc,
        stop,
    }))
}

#[test]
fn every_case_measures_as_its_table() -> Result<()> {
    let Some(w) = world("npc")? else {
        return Ok(());
    };
    let started = Instant::now();
    let all = cases::cases()?;
    let mut wrong = Vec::new();
    for (i, case) in all.iter().enumerate() {
        for o in &case.replacements {
            put(&w.api.api, o)?;
        }
        for p in &case.policies {
            put(&w.api.api, p)?;
        }
        settle(&w.rt, &w.tb, case.policies.len())?;
        let t0 = Instant::now();
        let mut got = measure(&w.rt, &w.pods, i)?;
        eprintln!("{}: measured in {:?}", case.name, t0.elapsed());
        if got != case.expected {
            reprobe_missed(&w.rt, &w.pods, &mut got, &case.expected, case.name.as_str())?;
        }
        if got != case.expected {
            wrong.push(format!(
                "{}: measured\n{}expected\n{}",
                case.name,
                cases::render_table(&got),
                cases::render_table(&case.expected)
            ));
        }
        for p in objects_of(&w.api.api, "networkpolicies", "networking.k8s.io/v1")? {
            delete(&w.api.api, &p)?;
        }
        // The cluster as it was.
        let originals = cases::cluster(&[])?;
        for r in &case.replacements {
            match originals.iter().find(|o| {
                o["kind"] == r["kind"]
                    && o["metadata"]["name"] == r["metadata"]["name"]
                    && o["metadata"]["namespace"] == r["metadata"]["namespace"]
            }) {
                Some(o) => put(&w.api.api, o)?,
                None => delete(&w.api.api, r)?,
            }
        }
    }
    eprintln!(
        "{} cases, {} probes each, in {:?}",
        all.len(),
        PODS.len() * (PODS.len() - 1) * PORTS.len(),
        started.elapsed()
    );
    if !wrong.is_empty() {
        for i in 1..=2 {
            eprintln!(
                "--- host{i} npc log:\n{}",
                std::fs::read_to_string(w.tb.host(i).run_dir.join("npc.log")).unwrap_or_default()
            );
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    Ok(())
}

/// CNI ADD (`add`) or DEL for pod y/`name` in namespace `netns` on host `host`, through the
/// weft binary as the `weft-net` plugin, as a Kubernetes runtime calls it; the address.
fn cni(tb: &Testbed, host: usize, add: bool, netns: &str, name: &str) -> Result<Option<Ipv4Addr>> {
    use std::io::Write;
    let plugin = tb.dir().join("cni/weft-net");
    if !plugin.exists() {
        std::fs::create_dir_all(tb.dir().join("cni"))?;
        std::os::unix::fs::symlink(weft(), &plugin)?;
    }
    let h = tb.host(host);
    let mut c = tb
        .cmd_in(&h.netns, plugin.to_str().context("path")?)
        .env("CNI_COMMAND", if add { "ADD" } else { "DEL" })
        .env("CNI_CONTAINERID", netns)
        .env("CNI_NETNS", format!("/var/run/netns/{netns}"))
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", tb.dir().join("cni"))
        .env(
            "CNI_ARGS",
            format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=y;K8S_POD_NAME={name}"),
        )
        .env("WEFT_NPC_SOCKET", h.run_dir.join("npc.sock"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    c.stdin
        .take()
        .context("stdin")?
        .write_all(br#"{"cniVersion": "1.0.0", "name": "weft", "type": "weft-net"}"#)?;
    let out = c.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "CNI {name}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    if !add {
        return Ok(None);
    }
    let r: Value = serde_json::from_slice(&out.stdout)?;
    let ip = r["ips"][0]["address"].as_str().context("an address")?;
    Ok(Some(ip.split('/').next().unwrap_or(ip).parse()?))
}

/// One try, no retransmission: a TCP connection within 900 ms (the kernel resends a lost
/// SYN after a second), or a UDP echo within 500 ms of the first datagram.
async fn first_packet(dst: Ipv4Addr, proto: &str) -> bool {
    let to = SocketAddr::from((dst, 80));
    if proto == "TCP" {
        return matches!(
            tokio::time::timeout(
                Duration::from_millis(900),
                tokio::net::TcpStream::connect(to)
            )
            .await,
            Ok(Ok(_))
        );
    }
    let Ok(s) = tokio::net::UdpSocket::bind("0.0.0.0:0").await else {
        return false;
    };
    let mut buf = [0u8; 16];
    s.send_to(b"first", to).await.is_ok()
        && matches!(
            tokio::time::timeout(Duration::from_millis(500), s.recv_from(&mut buf)).await,
            Ok(Ok(_))
        )
}

#[test]
fn new_pods_meet_rules_that_know_them_and_churn_drops_nothing_allowed() -> Result<()> {
    let Some(mut w) = world("npcchurn")? else {
        return Ok(());
    };
    // x/a takes port 80 only from clients; clients may only reach x/a on port 80.
    let policies = [
        serde_json::json!({
            "kind": "NetworkPolicy", "apiVersion": "networking.k8s.io/v1",
            "metadata": {"name": "a-from-clients", "namespace": "x"},
            "spec": {"podSelector": {"matchLabels": {"pod": "a"}},
                     "ingress": [{"from": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"role": "client"}}}],
                                  "ports": [{"port": 80}, {"port": 80, "protocol": "UDP"}]}]}
        }),
        serde_json::json!({
            "kind": "NetworkPolicy", "apiVersion": "networking.k8s.io/v1",
            "metadata": {"name": "clients-to-a", "namespace": "y"},
            "spec": {"podSelector": {"matchLabels": {"role": "client"}}, "policyTypes": ["Egress"],
                     "egress": [{"to": [{"namespaceSelector": {"matchLabels": {"ns": "x"}}, "podSelector": {"matchLabels": {"pod": "a"}}}],
                                 "ports": [{"port": 80}, {"port": 80, "protocol": "UDP"}]}]}
        }),
    ];
    for p in &policies {
        put(&w.api.api, p)?;
    }
    settle(&w.rt, &w.tb, policies.len())?;

    // An allowed pair across the hosts (y/c on host2 to x/c on host1), probed all along.
    let steady = Arc::new(AtomicBool::new(false));
    let (src, dst) = (ns_of(&w.pods["y/c"].0)?, w.pods["x/c"].1);
    let done = steady.clone();
    let prober = std::thread::spawn(move || -> Result<(u32, u32)> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(run_in(&src, move || async move {
            let (mut tries, mut lost) = (0, 0);
            while !done.load(Ordering::Relaxed) {
                tries += 1;
                if !first_packet(dst, "TCP").await {
                    lost += 1;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            (tries, lost)
        }))
        .map_err(Into::into)
    });

    let (xa, xb) = (w.pods["x/a"].1, w.pods["x/b"].1);
    let mut live: Vec<(usize, String, String)> = Vec::new();
    let mut failures = Vec::new();
    let started = Instant::now();
    const N: usize = 16;
    for i in 0..N {
        let host = 1 + i % 2;
        let name = format!("client-{i}");
        let mut pod = serde_json::json!({
            "kind": "Pod",
            "metadata": {"name": name, "namespace": "y", "labels": {"role": "client"}},
            "spec": {"nodeName": format!("host{host}"), "containers": [{"name": "c", "image": "c"}]},
        });
        put(&w.api.api, &pod)?;
        let netns = w.tb.container(&format!("cl{i}"))?;
        let ip = cni(&w.tb, host, true, &netns, &name)?.context("an address")?;
        // The pod's first packets, before the API has its address.
        let ns = ns_of(&netns)?;
        let (tcp, udp, denied) = w.rt.block_on(run_in(&ns, move || async move {
            (
                first_packet(xa, "TCP").await,
                first_packet(xa, "UDP").await,
                first_packet(xb, "TCP").await,
            )
        }))?;
        if !tcp || !udp || denied {
            failures.push(format!(
                "{name} ({ip}) on host{host}: TCP to x/a {tcp}, UDP to x/a {udp}, TCP to x/b (denied) {denied}"
            ));
        }
        // The kubelet reports the address.
        pod["status"] = serde_json::json!({"phase": "Running", "podIP": ip.to_string()});
        put(&w.api.api, &pod)?;
        live.push((host, netns, name));
        // Pods go too: their addresses come back for new ones.
        if live.len() > 4 {
            let (h, netns, name) = live.remove(0);
            cni(&w.tb, h, false, &netns, &name)?;
            delete(&w.api.api, &pod_ref(&name))?;
        }
    }
    steady.store(true, Ordering::Relaxed);
    let (tries, lost) = prober.join().expect("prober")?;
    eprintln!(
        "{N} new pods in {:?}; the steady pair: {lost} of {tries} connections lost",
        started.elapsed()
    );
    let m1 = metrics(&w.rt, &w.tb, 1)?;
    let m2 = metrics(&w.rt, &w.tb, 2)?;
    let get = |m: &BTreeMap<String, f64>, k: &str| m.get(k).copied().unwrap_or(0.0);
    eprintln!(
        "host1 heard {} / told {}; host2 heard {} / told {}",
        get(&m1, r#"weft_npc_pods_heard_total{result="taken"}"#),
        get(&m1, r#"weft_npc_pods_told_total{result="taken"}"#),
        get(&m2, r#"weft_npc_pods_heard_total{result="taken"}"#),
        get(&m2, r#"weft_npc_pods_told_total{result="taken"}"#),
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(lost, 0, "the steady allowed pair lost connections");
    // The denied tries were counted and said.
    let blocked = |m: &BTreeMap<String, f64>| {
        get(
            m,
            r#"weft_npc_blocked_connections_total{direction="egress",protocol="tcp"}"#,
        )
    };
    assert!(
        blocked(&m1) + blocked(&m2) >= N as f64,
        "blocked: {m1:?} {m2:?}"
    );
    Testbed::wait_for(Duration::from_secs(5), || {
        let logs = (1..=2)
            .map(|i| {
                std::fs::read_to_string(w.tb.host(i).run_dir.join("npc.log")).unwrap_or_default()
            })
            .collect::<String>();
        if logs.contains("blocked by weft-npc (egress policy of y/client-") {
            Ok(())
        } else {
            bail!("no blocked connection logged:\n{logs}")
        }
    })?;
    Ok(())
}

fn pod_ref(name: &str) -> Value {
    serde_json::json!({"kind": "Pod", "metadata": {"name": name, "namespace": "y"}})
}
