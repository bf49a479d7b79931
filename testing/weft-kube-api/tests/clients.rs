//! Real clients against the stand-in, so it behaves like an API server and not like our
//! assumptions: kubectl (apply, get, list with selectors, watch, patch, label, replace with a
//! stale version, delete, a wrong token) and the Python client (tests/clients.py).
//!
//! The stand-in runs in a network namespace of the test's own, on its loopback; the clients
//! run there too. Needs root, kubectl and Debian's python3-kubernetes (CI installs them).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

const STANDIN: &str = env!("CARGO_BIN_EXE_weft-kube-api");
/// Debian's interpreter, where python3-kubernetes is installed (a `python3` earlier on the
/// PATH may be another one).
const PYTHON: &str = "/usr/bin/python3";

/// A namespace with the stand-in in it; removed (and the stand-in ended) on drop.
struct Api {
    ns: String,
    dir: PathBuf,
    child: Child,
}

impl Api {
    fn start(tag: &str, extra: &[&str]) -> Result<Api> {
        let ns = format!("wka{}-{tag}", std::process::id());
        let dir = std::env::temp_dir().join(&ns);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        run(Command::new("ip").args(["netns", "add", &ns]))?;
        let mut api = Api {
            child: Command::new("true").spawn()?,
            ns,
            dir,
        };
        run(Command::new("ip").args(["-n", &api.ns, "link", "set", "lo", "up"]))?;
        api.child = Command::new("ip")
            .args(["netns", "exec", &api.ns, STANDIN, "127.0.0.1:6443"])
            .arg(&api.dir)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(api.dir.join("log"))?)
            .spawn()?;
        let t0 = Instant::now();
        while !api.kubeconfig().exists() {
            if t0.elapsed() > Duration::from_secs(20) {
                bail!(
                    "the stand-in did not start: {}",
                    std::fs::read_to_string(api.dir.join("log")).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(api)
    }

    fn kubeconfig(&self) -> PathBuf {
        self.dir.join("kubeconfig")
    }

    fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns, program])
            .env("KUBECONFIG", self.kubeconfig());
        c
    }

    fn kubectl(&self, args: &[&str]) -> Result<String> {
        let out = self.cmd("kubectl").args(args).output()?;
        if !out.status.success() {
            bail!(
                "kubectl {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn kubectl_fails(&self, args: &[&str]) -> Result<String> {
        let out = self.cmd("kubectl").args(args).output()?;
        if out.status.success() {
            bail!("kubectl {} succeeded", args.join(" "));
        }
        Ok(String::from_utf8_lossy(&out.stderr).into_owned())
    }

    fn file(&self, name: &str, text: &str) -> Result<PathBuf> {
        let p = self.dir.join(name);
        std::fs::write(&p, text)?;
        Ok(p)
    }
}

impl Drop for Api {
    fn drop(&mut self) {
        // `ip netns exec` replaced itself with the stand-in: this PID is ours.
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn run(c: &mut Command) -> Result<Output> {
    let out = c.output().with_context(|| format!("{c:?}"))?;
    if !out.status.success() {
        bail!("{c:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(out)
}

fn tools_present() -> bool {
    if !weft_testbed::require() {
        return false;
    }
    let kubectl = Command::new("kubectl")
        .arg("version")
        .arg("--client")
        .output();
    let python = Command::new(PYTHON)
        .args(["-c", "import kubernetes"])
        .output();
    let ok = kubectl.is_ok_and(|o| o.status.success()) && python.is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "kubectl and Debian's python3-kubernetes are needed (scripts/test.sh installs them)"
    );
    ok
}

const NODE: &str = "apiVersion: v1
kind: Node
metadata:
  name: node-a
  labels: {role: worker}
status:
  addresses:
  - {type: InternalIP, address: 198.18.0.1}
";

#[test]
fn kubectl_and_the_python_client_work_against_the_stand_in() -> Result<()> {
    if !tools_present() {
        return Ok(());
    }
    let api = Api::start("clients", &["--event-log", "40", "--bookmark-secs", "1"])?;
    assert!(api.kubectl(&["version"])?.contains("v1.32.0-weft-standin"));

    // apply creates, apply again updates, with kubectl's default (strict) validation.
    let node = api.file("node.yaml", NODE)?;
    let node = node.to_str().context("path")?;
    assert!(api.kubectl(&["apply", "-f", node])?.contains("created"));
    std::fs::write(node, NODE.replace("worker", "infra"))?;
    assert!(api.kubectl(&["apply", "-f", node])?.contains("configured"));
    assert_eq!(
        api.kubectl(&[
            "get",
            "node",
            "node-a",
            "-o",
            "jsonpath={.metadata.labels.role}"
        ])?,
        "infra"
    );

    // A watch sees every change, in order.
    let watch = api
        .cmd("timeout")
        .args([
            "8",
            "kubectl",
            "get",
            "configmaps",
            "-w",
            "--output-watch-events",
            "-o",
        ])
        .arg("custom-columns=EVENT:.type,NAME:.object.metadata.name")
        .stdout(Stdio::piped())
        .spawn()?;
    std::thread::sleep(Duration::from_millis(1500));
    let cm = api.file(
        "cm.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c1}\ndata: {a: \"1\"}\n",
    )?;
    api.kubectl(&["create", "-f", cm.to_str().context("path")?])?;
    api.kubectl(&["patch", "configmap", "c1", "-p", r#"{"data":{"a":"2"}}"#])?;
    api.kubectl(&["label", "configmap", "c1", "team=blue"])?;
    assert!(
        api.kubectl(&["get", "configmaps", "-l", "team=blue", "-o", "name"])?
            .contains("configmap/c1")
    );
    assert!(
        !api.kubectl(&["get", "configmaps", "-l", "team!=blue", "-o", "name"])?
            .contains("c1")
    );

    // A replace carrying a stale resourceVersion conflicts.
    let mut stale: serde_json::Value =
        serde_json::from_str(&api.kubectl(&["get", "configmap", "c1", "-o", "json"])?)?;
    api.kubectl(&["patch", "configmap", "c1", "-p", r#"{"data":{"a":"3"}}"#])?;
    stale["data"]["a"] = "stale".into();
    let stale = api.file("stale.json", &stale.to_string())?;
    let err = api.kubectl_fails(&["replace", "-f", stale.to_str().context("path")?])?;
    assert!(err.contains("the object has been modified"), "{err}");
    api.kubectl(&["delete", "configmap", "c1"])?;
    let seen = String::from_utf8_lossy(&watch.wait_with_output()?.stdout).into_owned();
    let events: Vec<&str> = seen
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(
        events,
        ["ADDED", "MODIFIED", "MODIFIED", "MODIFIED", "DELETED"],
        "{seen}"
    );

    // Namespaced objects need their namespace; deleting it deletes them.
    let ns = api.file(
        "ns.yaml",
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: team-a}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: c2, namespace: team-a}\n",
    )?;
    api.kubectl(&["apply", "-f", ns.to_str().context("path")?])?;
    assert!(
        api.kubectl(&["get", "configmaps", "-A", "-o", "name"])?
            .contains("configmap/c2")
    );
    api.kubectl(&["delete", "namespace", "team-a"])?;
    assert!(
        !api.kubectl(&["get", "configmaps", "-A", "-o", "name"])?
            .contains("c2")
    );

    // Enough changes that the first versions leave the event log (40 kept): the Python
    // client's watch from version 1 must get 410.
    let many: String = (0..30)
        .map(|i| format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: bulk{i}}}\n---\n"))
        .collect();
    let many = api.file("many.yaml", &many)?;
    api.kubectl(&["apply", "-f", many.to_str().context("path")?])?;

    let out = api
        .cmd(PYTHON)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients.py"))
        .arg(api.kubeconfig())
        .output()?;
    assert!(
        out.status.success(),
        "python client:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // The token is checked.
    let bad = api.file(
        "bad-kubeconfig",
        &std::fs::read_to_string(api.kubeconfig())?.replace("token: weft-", "token: nope-"),
    )?;
    let out = api
        .cmd("kubectl")
        .env("KUBECONFIG", bad)
        .args(["get", "nodes"])
        .output()?;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Unauthorized"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}
