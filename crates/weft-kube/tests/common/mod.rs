//! What the weft-kube namespace tests share: the API stand-in served on a host of the test
//! bed, with Nodes for other hosts in it.

// Each test file includes this module and uses part of it.
#![allow(dead_code)]

pub mod cases;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use weft_kube_api::store::resource;
use weft_kube_api::{Options, Pki, StandIn};
use weft_testbed::Testbed;

/// Binds the API server's port on host `n` (a socket keeps the namespace it is made in).
pub fn api_listener(tb: &Testbed, n: usize) -> Result<std::net::TcpListener> {
    let ns = weft_linux::netns::Netns::open(
        &Path::new(weft_linux::netns::NAMED_NETNS_DIR).join(&tb.host(n).netns),
    )?;
    let addr = SocketAddr::from((tb.host(n).ip, 6443));
    let rt = tokio::runtime::Builder::new_current_thread().build()?;
    let l = rt.block_on(weft_linux::netns::run_in(&ns, move || async move {
        anyhow::Ok(std::net::TcpListener::bind(addr)?)
    }))??;
    Ok(l)
}

/// The stand-in on host `api`, served by the runtime returned with it (keep both), with a
/// Node `node-<i>` at host i's address for each of `nodes`, and a kubeconfig for it.
pub struct Api {
    pub rt: tokio::runtime::Runtime,
    pub api: StandIn,
    pub kubeconfig: std::path::PathBuf,
}

pub fn api_on(tb: &Testbed, api: usize, nodes: &[usize]) -> Result<Api> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let dir = tb.dir().join("kube");
    let pki = Pki::generate(&dir, &[tb.host(api).ip.into()])?;
    let s = {
        let l = api_listener(tb, api)?;
        let _guard = rt.enter();
        StandIn::start(l, pki, Options::default())?
    };
    let kubeconfig = dir.join("kubeconfig");
    s.pki.write_kubeconfig(&kubeconfig, s.addr)?;
    for &i in nodes {
        create_node(&s, i, tb.host(i).ip)?;
    }
    Ok(Api {
        rt,
        api: s,
        kubeconfig,
    })
}

pub fn create_node(api: &StandIn, i: usize, ip: Ipv4Addr) -> Result<()> {
    let nodes = resource("v1", "nodes").context("nodes")?;
    let node = json!({
        "metadata": {"name": format!("node-{i}")},
        "status": {"addresses": [{"type": "InternalIP", "address": ip.to_string()}]},
    });
    api.with_store(|s| s.create(&nodes, "", node))
        .map_err(|e| anyhow::anyhow!("{}", e.message))?;
    Ok(())
}

pub fn delete_node(api: &StandIn, i: usize) -> Result<()> {
    let nodes = resource("v1", "nodes").context("nodes")?;
    api.with_store(|s| s.delete(&nodes, "", &format!("node-{i}")))
        .map_err(|e| anyhow::anyhow!("{}", e.message))?;
    Ok(())
}

pub fn objects_of(api: &weft_kube_api::StandIn, plural: &str, version: &str) -> Result<Vec<Value>> {
    let r = resource(version, plural).context("a resource")?;
    let list = api.with_store(|s| s.list(&r, &Default::default()));
    Ok(list["items"].as_array().cloned().unwrap_or_default())
}

pub fn kind_resource(o: &Value) -> Result<weft_kube_api::store::Resource> {
    let (v, p) = match o["kind"].as_str() {
        Some("Namespace") => ("v1", "namespaces"),
        Some("Node") => ("v1", "nodes"),
        Some("Pod") => ("v1", "pods"),
        Some("NetworkPolicy") => ("networking.k8s.io/v1", "networkpolicies"),
        other => bail!("an object of kind {other:?}"),
    };
    resource(v, p).context("a resource")
}

/// Creates `o`, or replaces the object of that name.
pub fn put(api: &weft_kube_api::StandIn, o: &Value) -> Result<()> {
    let r = kind_resource(o)?;
    let ns = o["metadata"]["namespace"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let name = o["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let mut body = o.clone();
    if let Some(m) = body["metadata"].as_object_mut() {
        m.remove("resourceVersion");
    }
    api.with_store(|s| match s.get(&r, &ns, &name) {
        Ok(_) => s.update(&r, &ns, &name, body).map(|_| ()),
        Err(_) => s.create(&r, &ns, body).map(|_| ()),
    })
    .map_err(|e| anyhow::anyhow!("{}", e.message))
}

pub fn delete(api: &weft_kube_api::StandIn, o: &Value) -> Result<()> {
    let r = kind_resource(o)?;
    let ns = o["metadata"]["namespace"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let name = o["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    api.with_store(|s| s.delete(&r, &ns, &name).map(|_| ()))
        .map_err(|e| anyhow::anyhow!("{}", e.message))
}
