//! The DaemonSet manifest, checked offline: `kubectl kustomize` builds it, every object
//! decodes into the Python Kubernetes client's typed model of its kind, the DaemonSet holds
//! together (deploy/kubernetes/check_manifest.py), and the environment it sets is what
//! weft-kube reads.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

#[test]
fn the_manifest_builds_and_holds_together() -> Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let dir = root.join("deploy/kubernetes");
    let Ok(out) = Command::new("kubectl").arg("kustomize").arg(&dir).output() else {
        bail!("kubectl is needed (scripts/test.sh installs it)");
    };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut check = Command::new("/usr/bin/python3")
        .arg(dir.join("check_manifest.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("python3 (with python3-kubernetes) is needed")?;
    check
        .stdin
        .take()
        .context("stdin")?
        .write_all(&out.stdout)?;
    let res = check.wait_with_output()?;
    assert!(
        res.status.success(),
        "{}",
        String::from_utf8_lossy(&res.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&res.stdout)?;
    // Every variable the manifest sets is one weft-kube or weft reads (by name, in their
    // sources), so a misspelt setting fails here rather than being ignored on a cluster.
    let mut sources = String::new();
    for f in [
        "crates/weft-kube/src/env.rs",
        "crates/weft-kube/src/main.rs",
        "crates/weft/src/main.rs",
    ] {
        sources.push_str(&std::fs::read_to_string(root.join(f))?);
    }
    for e in summary["env"].as_array().context("env")? {
        let e = e.as_str().context("name")?;
        assert!(
            sources.contains(&format!("\"{e}\"")),
            "the manifest sets {e}, which nothing reads"
        );
    }
    Ok(())
}
