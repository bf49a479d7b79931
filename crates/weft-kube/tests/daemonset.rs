//! The DaemonSet as a kubelet would run it, under Docker: the image built by
//! deploy/docker/build-image.sh, each container started with the manifest's own command,
//! environment, mounts (host paths mapped into the test's directory) and host networking, on
//! two namespace hosts as nodes (a Docker daemon of the test's in each, so "host network" is
//! the node's namespace), against the API stand-in on a third host through the in-cluster
//! service-account path. Pods get addresses through the installed CNI plugin, as a runtime
//! calls it, and reach each other across the nodes; a NetworkPolicy created through the API
//! cuts one direction off, and its deletion restores it.
//!
//! Needs root, a Docker Engine (its containerd is shared), kubectl and python3-kubernetes.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use weft_testbed::Testbed;
use weft_testbed::dockerd::Dockerd;

mod common;

const WEFT_KUBE: &str = env!("CARGO_BIN_EXE_weft-kube");

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn run(c: &mut Command) -> Result<Output> {
    let out = c.output().with_context(|| format!("{c:?}"))?;
    if !out.status.success() {
        bail!(
            "{c:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}

/// The DaemonSet object of the manifest, as JSON.
fn daemonset() -> Result<Value> {
    let yaml = run(Command::new("kubectl")
        .arg("kustomize")
        .arg(root().join("deploy/kubernetes")))?
    .stdout;
    let mut py = Command::new("/usr/bin/python3")
        .args([
            "-c",
            "import sys, json, yaml; print(json.dumps([d for d in yaml.safe_load_all(sys.stdin) if d]))",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    py.stdin.take().context("stdin")?.write_all(&yaml)?;
    let docs: Vec<Value> = serde_json::from_slice(&py.wait_with_output()?.stdout)?;
    docs.into_iter()
        .find(|d| d["kind"] == "DaemonSet")
        .context("no DaemonSet in the manifest")
}

/// `docker run` arguments for one of the pod's containers, from the manifest: its command,
/// environment (spec.nodeName resolved, optional secrets left out), mounts of the pod's
/// volumes (host paths mapped by `host`), host network and PIDs, and the service account.
/// `privileged` becomes the capabilities weft uses: these machines refuse `--privileged`
/// (their bounding set lacks one capability).
fn run_args(
    ds: &Value,
    container: &Value,
    node: &str,
    host: &dyn Fn(&str) -> PathBuf,
    sa: &Path,
    api: &str,
) -> Result<Vec<String>> {
    let spec = &ds["spec"]["template"]["spec"];
    let mut a: Vec<String> = Vec::new();
    if spec["hostNetwork"] == true {
        a.push("--network=host".into());
    }
    if spec["hostPID"] == true {
        a.push("--pid=host".into());
    }
    if container["securityContext"]["privileged"] == true {
        for cap in ["NET_ADMIN", "NET_RAW", "SYS_ADMIN", "SYS_PTRACE"] {
            a.push(format!("--cap-add={cap}"));
        }
        a.extend([
            "--security-opt=systempaths=unconfined".into(),
            "--security-opt=apparmor=unconfined".into(),
            "--device=/dev/net/tun".into(),
        ]);
    }
    let volumes: BTreeMap<&str, &str> = spec["volumes"]
        .as_array()
        .context("volumes")?
        .iter()
        .filter_map(|v| Some((v["name"].as_str()?, v["hostPath"]["path"].as_str()?)))
        .collect();
    for m in container["volumeMounts"].as_array().into_iter().flatten() {
        let name = m["name"].as_str().context("mount name")?;
        let path = volumes.get(name).context("a mount of no volume")?;
        let mut opt = String::new();
        if m["readOnly"] == true {
            opt.push_str(":ro");
        }
        if m["mountPropagation"] == "HostToContainer" {
            opt.push_str(if opt.is_empty() { ":rslave" } else { ",rslave" });
        }
        a.push(format!(
            "--volume={}:{}{opt}",
            host(path).display(),
            m["mountPath"].as_str().context("mountPath")?
        ));
    }
    for e in container["env"].as_array().into_iter().flatten() {
        let name = e["name"].as_str().context("env name")?;
        let value = if let Some(v) = e["value"].as_str() {
            v.to_string()
        } else if e["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName" {
            node.to_string()
        } else if e["valueFrom"]["secretKeyRef"]["optional"] == true {
            continue;
        } else {
            bail!("the test cannot give {name}: {e}");
        };
        a.push(format!("--env={name}={value}"));
    }
    // What the kubelet gives every pod: the service account and the API server's address.
    a.push(format!(
        "--volume={}:/var/run/secrets/kubernetes.io/serviceaccount:ro",
        sa.display()
    ));
    let (h, p) = api.rsplit_once(':').context("api address")?;
    a.push(format!("--env=KUBERNETES_SERVICE_HOST={h}"));
    a.push(format!("--env=KUBERNETES_SERVICE_PORT={p}"));
    Ok(a)
}

/// CNI ADD through the plugin `weft setup-cni` installed, as a runtime calls it, for the
/// pod web/`name` (whose policy controller listens on `npc`).
fn cni_add(
    tb: &Testbed,
    node: usize,
    cni: &Path,
    pod: &str,
    name: &str,
    npc: &Path,
) -> Result<Value> {
    let conflist: Value =
        serde_json::from_str(&std::fs::read_to_string(cni.join("conf/10-weft.conflist"))?)?;
    let mut conf = conflist["plugins"][0].clone();
    conf["name"] = conflist["name"].clone();
    conf["cniVersion"] = conflist["cniVersion"].clone();
    let plugin = cni.join("bin").join(conf["type"].as_str().context("type")?);
    let mut c = tb
        .cmd_in(&tb.host(node).netns, plugin.to_str().context("path")?)
        .env("CNI_COMMAND", "ADD")
        .env("CNI_CONTAINERID", pod)
        .env("CNI_NETNS", format!("/var/run/netns/{pod}"))
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", cni.join("bin"))
        .env(
            "CNI_ARGS",
            format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=web;K8S_POD_NAME={name}"),
        )
        .env("WEFT_NPC_SOCKET", npc)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    c.stdin
        .take()
        .context("stdin")?
        .write_all(conf.to_string().as_bytes())?;
    let out = c.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "CNI ADD {pod}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

#[test]
fn the_daemonset_runs_under_docker_against_the_stand_in() -> Result<()> {
    let weft = Path::new(WEFT_KUBE).with_file_name("weft");
    let Some(mut tb) = weft_testbed::for_test("kds", 3, &weft) else {
        return Ok(());
    };
    if !weft_testbed::docker_available() {
        return Ok(());
    }
    let ds = daemonset()?;
    let tag = format!("weft-kds-{}", std::process::id());
    let image = format!("weft:{tag}");

    // The API server on host 3, nodes 1 and 2 in it.
    let common::Api { rt: _rt, api, .. } = common::api_on(&tb, 3, &[1, 2])?;
    let kdir = tb.dir().join("kube");
    let sa = kdir.join("sa");
    std::fs::create_dir_all(&sa)?;
    std::fs::copy(&api.pki.ca, sa.join("ca.crt"))?;
    std::fs::write(sa.join("token"), &api.pki.token)?;
    std::fs::write(sa.join("namespace"), "kube-system")?;

    let mut daemons: Vec<Dockerd> = Vec::new();
    for i in 1..=2 {
        let node = format!("node-{i}");
        let dir = tb.dir().join(&node);
        let d = Dockerd::start(
            &tb.host(i).netns,
            &dir.join("docker"),
            &format!("{tag}-{i}"),
            &[],
        )?;
        if i == 1 {
            run(Command::new(root().join("deploy/docker/build-image.sh"))
                .arg(&image)
                .env("PROFILE", "debug")
                .env("NO_BUILD", "1")
                .env("DOCKER_HOST", format!("unix://{}", d.socket.display())))?;
        } else {
            let saved = dir.join("image.tar");
            daemons[0]
                .cmd()
                .args(["save", "-o"])
                .arg(&saved)
                .arg(&image)
                .status()?;
            d.docker(&["load", "-q", "-i", saved.to_str().context("path")?])?;
        }
        // The node's host paths, inside the test's directory (the real ones for what is only
        // read, and /var/run/netns, where the test's pods appear).
        let host = |p: &str| -> PathBuf {
            match p {
                "/lib/modules" => PathBuf::from(p),
                "/var/run/netns" => PathBuf::from("/run/netns"),
                "/run/xtables.lock" => dir.join("xtables.lock"),
                "/opt/cni/bin" => dir.join("cni/bin"),
                "/etc/cni/net.d" => dir.join("cni/conf"),
                other => dir.join(other.trim_start_matches('/').replace('/', "-")),
            }
        };
        for p in ["cni/bin", "cni/conf"] {
            std::fs::create_dir_all(dir.join(p))?;
        }
        for v in ds["spec"]["template"]["spec"]["volumes"]
            .as_array()
            .context("volumes")?
        {
            let path = host(v["hostPath"]["path"].as_str().context("path")?);
            if v["hostPath"]["type"] == "FileOrCreate" {
                std::fs::File::create(&path)?;
            } else if !path.exists() {
                std::fs::create_dir_all(&path)?;
            }
        }
        let spec = &ds["spec"]["template"]["spec"];
        let api_addr = api.addr.to_string();
        let init = spec["initContainers"].as_array().context("init")?;
        let main = spec["containers"].as_array().context("containers")?;
        let runs = init
            .iter()
            .map(|c| (c, false))
            .chain(main.iter().map(|c| (c, true)));
        for (c, detach) in runs {
            let name = c["name"].as_str().context("name")?;
            let mut args = vec!["run".to_string(), format!("--name={name}")];
            if detach {
                args.push("--detach".into());
            } else {
                args.push("--rm".into());
            }
            args.extend(run_args(&ds, c, &node, &host, &sa, &api_addr)?);
            args.push(image.clone());
            for part in c["command"].as_array().context("command")? {
                args.push(part.as_str().context("command part")?.into());
            }
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            d.docker(&args)?;
        }
        daemons.push(d);
    }

    // The routers find each other through the Nodes.
    let waited = tb.wait_full_mesh(2);
    if waited.is_err() {
        for d in &daemons {
            let _ = d.cmd().args(["logs", "weft"]).status();
        }
    }
    waited?;
    // Pods, scheduled (in the API), then given their network through the CNI plugin the
    // init container installed, as a runtime does; their addresses reported as the kubelet
    // does.
    common::put(
        &api,
        &json!({"kind": "Namespace", "metadata": {"name": "web"}}),
    )?;
    let mut ips = Vec::new();
    for i in 1..=2 {
        let name = format!("pod{i}");
        let mut object = json!({
            "kind": "Pod",
            "metadata": {"name": name, "namespace": "web", "labels": {"app": name}},
            "spec": {"nodeName": format!("node-{i}"), "containers": [{"name": "app", "image": "app"}]},
        });
        common::put(&api, &object)?;
        let pod = tb.container(&name)?;
        let node = tb.dir().join(format!("node-{i}"));
        let result = cni_add(
            &tb,
            i,
            &node.join("cni"),
            &pod,
            &name,
            &node.join("run-weft/npc.sock"),
        )?;
        let ip = result["ips"][0]["address"]
            .as_str()
            .or_else(|| result["ip4"]["ip"].as_str())
            .with_context(|| format!("no address in {result}"))?;
        let ip = ip.split('/').next().unwrap_or(ip).to_string();
        object["status"] = json!({"phase": "Running", "podIP": ip});
        common::put(&api, &object)?;
        ips.push((pod, ip));
    }
    tb.wait_ping(&ips[0].0, &ips[1].1, Duration::from_secs(30))?;
    tb.wait_ping(&ips[1].0, &ips[0].1, Duration::from_secs(30))?;

    // A NetworkPolicy through the API: nothing may reach pod2 any more; pod2 still reaches
    // pod1 (and hears back).
    let policy = json!({
        "kind": "NetworkPolicy",
        "apiVersion": "networking.k8s.io/v1",
        "metadata": {"name": "pod2-isolated", "namespace": "web"},
        "spec": {"podSelector": {"matchLabels": {"app": "pod2"}}, "policyTypes": ["Ingress"]},
    });
    common::put(&api, &policy)?;
    let pings = |from: usize, to: usize| {
        tb.exec(&ips[from].0, "ping", &["-c", "1", "-W", "1", &ips[to].1])
            .status
            .success()
    };
    let cut = Testbed::wait_for(Duration::from_secs(30), || {
        if pings(0, 1) {
            bail!("pod1 still reaches pod2")
        }
        Ok(())
    });
    if cut.is_err() {
        for d in &daemons {
            let _ = d.cmd().args(["logs", "weft-npc"]).status();
        }
    }
    cut?;
    assert!(pings(1, 0), "pod2 -> pod1 is not isolated");
    common::delete(&api, &policy)?;
    tb.wait_ping(&ips[0].0, &ips[1].1, Duration::from_secs(30))?;
    // The image lives in the test's daemons' data roots, which go with them.
    for d in &daemons {
        let _ = d.docker(&["rm", "-f", "weft-init", "weft", "weft-npc"]);
    }
    drop(daemons);
    Ok(())
}
