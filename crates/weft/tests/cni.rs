//! End-to-end: the CNI plugins as a container runtime drives them — `weft setup-cni`
//! installs them, `weft-net` ADD/CHECK/DEL puts pods (namespaces on two hosts) on the overlay
//! with a default route via the host, `weft-ipam` hands out and takes back addresses, and bad
//! configurations and a missing router give CNI errors.
//!
//! Needs root (CI runs as root); set WEFT_SKIP_NETNS_TESTS=1 to skip elsewhere.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use weft_testbed::{Posture, Testbed};

const WEFT: &str = env!("CARGO_BIN_EXE_weft");
const CONVERGE: Duration = Duration::from_secs(30);

fn testbed(tag: &str, n: usize) -> Option<Testbed> {
    // Pods live on Kubernetes nodes: Docker's posture and kube-proxy's chains.
    weft_testbed::for_test_with(tag, n, Path::new(WEFT), Posture::Kube)
}

/// Two connected hosts, with the plugins installed by `weft setup-cni` into the test bed's
/// directory; returns the plugin directory and the network configuration the runtime would
/// hand `weft-net` (the conflist's first plugin with the list's version and name).
fn two_hosts(tb: &mut Testbed) -> Result<(PathBuf, Value)> {
    let h1 = tb.host(1).ip.to_string();
    tb.launch(1, &[])?;
    tb.launch(2, &[&h1])?;
    Testbed::wait_for(CONVERGE, || {
        let s = tb.weft_ok(1, &["status"])?;
        if s.contains("Peers: 2 (with 2 established connections)") {
            Ok(())
        } else {
            bail!("{s}")
        }
    })?;
    let bin = tb.dir().join("cni-bin");
    let conf_dir = tb.dir().join("cni-conf");
    let out = tb.weft_ok(
        1,
        &[
            "setup-cni",
            "--cni-bin-dir",
            bin.to_str().unwrap(),
            "--cni-conf-dir",
            conf_dir.to_str().unwrap(),
        ],
    )?;
    for f in ["weft-net", "weft-ipam", "weft-plugin-"] {
        assert!(out.contains(f), "{out}");
    }
    let list: Value =
        serde_json::from_str(&std::fs::read_to_string(conf_dir.join("10-weft.conflist"))?)?;
    let mut conf = list["plugins"][0].clone();
    conf["cniVersion"] = list["cniVersion"].clone();
    conf["name"] = list["name"].clone();
    Ok((bin, conf))
}

/// Runs plugin `plugin` on host `i` as a runtime would.
fn cni(
    tb: &Testbed,
    i: usize,
    bin: &Path,
    plugin: &str,
    env: &[(&str, &str)],
    conf: &Value,
) -> Result<Output> {
    let mut c = tb.cmd_in(&tb.host(i).netns, bin.join(plugin).to_str().unwrap());
    c.env_remove("WEFT_HTTP_ADDR")
        .env("CNI_PATH", bin)
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().context("running the plugin")?;
    // A plugin may answer without reading its configuration (VERSION) and be gone before
    // it is written: that is no failure of the plugin's.
    match child
        .stdin
        .take()
        .unwrap()
        .write_all(conf.to_string().as_bytes())
    {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
        other => other?,
    }
    Ok(child.wait_with_output()?)
}

fn ok_json(out: &Output) -> Result<Value> {
    if !out.status.success() {
        bail!(
            "plugin failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

fn netns_path(ns: &str) -> String {
    format!("/var/run/netns/{ns}")
}

fn add_env<'a>(id: &'a str, netns: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", id),
        ("CNI_NETNS", netns),
        ("CNI_IFNAME", "eth0"),
        (
            "CNI_ARGS",
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web",
        ),
    ]
}

#[test]
fn pods_on_two_hosts_reach_each_other_and_are_cleaned_up() -> Result<()> {
    let Some(mut tb) = testbed("cni", 2) else {
        return Ok(());
    };
    let (bin, conf) = two_hosts(&mut tb)?;
    let p1 = tb.container("p1")?;
    let p2 = tb.container("p2")?;
    let (n1, n2) = (netns_path(&p1), netns_path(&p2));

    let r1 = ok_json(&cni(
        &tb,
        1,
        &bin,
        "weft-net",
        &add_env("pod-one", &n1),
        &conf,
    )?)?;
    let r2 = ok_json(&cni(
        &tb,
        2,
        &bin,
        "weft-net",
        &add_env("pod-two", &n2),
        &conf,
    )?)?;
    assert_eq!(r1["cniVersion"], conf["cniVersion"], "{r1}");
    assert_eq!(r1["interfaces"][0]["name"], json!("eth0"), "{r1}");
    assert_eq!(r1["interfaces"][0]["sandbox"], json!(n1), "{r1}");
    let addr = |r: &Value| -> String {
        r["ips"][0]["address"]
            .as_str()
            .unwrap_or_default()
            .split('/')
            .next()
            .unwrap()
            .to_string()
    };
    let (a1, a2) = (addr(&r1), addr(&r2));
    assert!(
        a1.starts_with("10.") && a2.starts_with("10.") && a1 != a2,
        "{r1} {r2}"
    );
    // The gateway is the host's own address on the bridge, exposed for the purpose.
    let gw1 = r1["ips"][0]["gateway"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert_eq!(
        r1["routes"],
        json!([{"dst": "0.0.0.0/0", "gw": gw1}]),
        "{r1}"
    );
    let exposed = tb.weft_ok(1, &["ps", "weave:expose"])?;
    assert!(exposed.contains(&gw1), "{exposed}");

    // A host on the underlay beyond the nodes, for the pods' egress.
    let world = tb.outside("world", std::net::Ipv4Addr::new(198, 18, 0, 200))?;
    // Inside the pod: eth0 with the address, the default route via the host.
    let show = |ns: &str, args: &[&str]| {
        String::from_utf8_lossy(&tb.exec(ns, "ip", args).stdout).into_owned()
    };
    assert!(show(&p1, &["-4", "addr", "show", "eth0"]).contains(&a1));
    let route = show(&p1, &["-4", "route", "show", "default"]);
    assert!(
        route.contains(&format!("default via {gw1} dev eth0")),
        "{route}"
    );
    // Hairpin on the pod's bridge port (the conflist's default).
    let ports = show(&tb.host(1).netns, &["-d", "link", "show", "master", "weft"]);
    assert!(ports.contains("hairpin on"), "{ports}");

    // Across hosts, and to the host through the gateway.
    tb.wait_ping(&p1, &a2, CONVERGE)?;
    tb.wait_ping(&p2, &a1, CONVERGE)?;
    tb.wait_ping(&p1, &gw1, CONVERGE)?;
    // Beyond the node: the pod's default route via the node, masqueraded there, reaches a
    // host on the underlay that has no route back to the overlay.
    tb.wait_ping(&p1, "198.18.0.200", CONVERGE)?;
    assert!(
        !tb.exec(&world, "ping", &["-c", "1", "-W", "1", &a1])
            .status
            .success(),
        "the world reached a pod directly"
    );

    // CHECK with the previous result, as runtimes do.
    let mut check_conf = conf.clone();
    check_conf["prevResult"] = r1.clone();
    let mut env = add_env("pod-one", &n1);
    env[0].1 = "CHECK";
    let out = cni(&tb, 1, &bin, "weft-net", &env, &check_conf)?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // DEL: interface gone, address back; a second DEL is fine too.
    let mut del = add_env("pod-one", &n1);
    del[0].1 = "DEL";
    for _ in 0..2 {
        let out = cni(&tb, 1, &bin, "weft-net", &del, &conf)?;
        assert!(
            out.status.success() && out.stdout.is_empty(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    assert!(!show(&p1, &["link"]).contains("eth0"));
    let ps = tb.weft_ok(1, &["ps"])?;
    assert!(!ps.contains(&a1), "{ps}");
    // The runtime removed the namespace before DEL (and passes no CNI_NETNS then).
    weft_testbed::run(std::process::Command::new("ip").args(["netns", "del", &p2]))?;
    let del2 = [
        ("CNI_COMMAND", "DEL"),
        ("CNI_CONTAINERID", "pod-two"),
        ("CNI_IFNAME", "eth0"),
    ];
    let out = cni(&tb, 2, &bin, "weft-net", &del2, &conf)?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let ps = tb.weft_ok(2, &["ps"])?;
    assert!(!ps.contains(&a2), "{ps}");
    // Both addresses are free again: the allocator hands them out anew.
    let again = ok_json(&cni(
        &tb,
        1,
        &bin,
        "weft-net",
        &add_env("pod-three", &n1),
        &conf,
    )?)?;
    assert!(again["ips"][0]["address"].is_string(), "{again}");
    Ok(())
}

#[test]
fn ipam_plugin_versions_and_errors() -> Result<()> {
    let Some(mut tb) = testbed("cnii", 2) else {
        return Ok(());
    };
    let (bin, conf) = two_hosts(&mut tb)?;

    // VERSION needs no configuration.
    let v = ok_json(&cni(
        &tb,
        1,
        &bin,
        "weft-net",
        &[("CNI_COMMAND", "VERSION")],
        &json!({}),
    )?)?;
    assert!(
        v["supportedVersions"]
            .as_array()
            .unwrap()
            .contains(&json!("0.4.0")),
        "{v}"
    );

    // weft-ipam under another plugin (it reads the `ipam` part): an address in the subnet
    // asked for, with the configured gateway and routes.
    let ipam_conf = json!({
        "cniVersion": "1.0.0", "name": "weft", "type": "bridge",
        "ipam": {"type": "weft-ipam", "subnet": "10.44.0.0/16", "gateway": "10.44.0.1",
                 "routes": [{"dst": "0.0.0.0/0"}]}
    });
    let env = [
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "ipam-one"),
        ("CNI_NETNS", "/var/run/netns/unused"),
        ("CNI_IFNAME", "eth0"),
    ];
    let r = ok_json(&cni(&tb, 2, &bin, "weft-ipam", &env, &ipam_conf)?)?;
    let a = r["ips"][0]["address"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(a.starts_with("10.44.") && a.ends_with("/16"), "{r}");
    assert_eq!(r["ips"][0]["gateway"], json!("10.44.0.1"), "{r}");
    assert_eq!(r["routes"], json!([{"dst": "0.0.0.0/0"}]), "{r}");
    let mut del = env;
    del[0].1 = "DEL";
    for _ in 0..2 {
        let out = cni(&tb, 2, &bin, "weft-ipam", &del, &ipam_conf)?;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }

    // Errors are CNI errors on stdout, in the configuration's version, with exit 1.
    let err = |out: Output| -> Value {
        assert!(!out.status.success());
        serde_json::from_slice(&out.stdout).expect("a JSON error")
    };
    let p = tb.container("p")?;
    let n = netns_path(&p);
    let mut bad = conf.clone();
    bad["ipMasq"] = json!(true);
    let e = err(cni(&tb, 1, &bin, "weft-net", &add_env("bad", &n), &bad)?);
    assert_eq!(e["code"], json!(2), "{e}");
    assert_eq!(e["cniVersion"], conf["cniVersion"], "{e}");
    let e = err(cni(
        &tb,
        1,
        &bin,
        "weft-net",
        &[("CNI_COMMAND", "ADD")],
        &conf,
    )?);
    assert_eq!(e["code"], json!(4), "{e}");
    // Addresses from the subnet the configuration names, and its gateway and routes in the
    // pod instead of the host's address (a route without a gateway goes via ipam.gateway).
    // A route to the pod's own subnet, which the kernel made already, is no error.
    let mut taken = conf.clone();
    taken["ipam"] = json!({
        "subnet": "10.44.0.0/16", "gateway": "10.44.255.254",
        "routes": [{"dst": "0.0.0.0/0"}, {"dst": "192.168.77.0/24", "gw": "10.44.255.253"},
                   {"dst": "10.44.0.0/16"}]
    });
    let ok = ok_json(&cni(&tb, 1, &bin, "weft-net", &add_env("ok", &n), &taken)?)?;
    assert!(
        ok["ips"][0]["address"]
            .as_str()
            .unwrap()
            .starts_with("10.44."),
        "{ok}"
    );
    assert_eq!(ok["ips"][0]["gateway"], json!("10.44.255.254"), "{ok}");
    let routes = String::from_utf8_lossy(&tb.exec(&p, "ip", &["-4", "route"]).stdout).into_owned();
    assert!(
        routes.contains("default via 10.44.255.254 dev eth0"),
        "{routes}"
    );
    assert!(
        routes.contains("192.168.77.0/24 via 10.44.255.253 dev eth0"),
        "{routes}"
    );
    // A second pod id in a namespace weft has plugged in already is refused with the reason.
    let e = err(cni(
        &tb,
        1,
        &bin,
        "weft-net",
        &add_env("again", &n),
        &taken,
    )?);
    assert_eq!(e["code"], json!(100), "{e}");
    assert!(
        e["msg"]
            .as_str()
            .unwrap_or_default()
            .contains("already attached"),
        "{e}"
    );
    // No router: try again later, saying where it looked.
    let mut no_router = add_env("x", &n);
    no_router.push(("WEFT_HTTP_ADDR", "127.0.0.1:1"));
    let e = err(cni(&tb, 1, &bin, "weft-net", &no_router, &conf)?);
    assert_eq!(e["code"], json!(11), "{e}");
    assert!(e["msg"].as_str().unwrap().contains("127.0.0.1:1"), "{e}");
    Ok(())
}
