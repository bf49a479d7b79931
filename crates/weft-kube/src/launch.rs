//! `weft-kube launch`: the router of one Kubernetes node, with its peers kept to the cluster's
//! Nodes (Weave's kube-peers and the launch script around weaver).
//!
//! At start the Nodes are listed, with retries for a bounded time; if the API server cannot be
//! reached by then, the peers last seen (cached in the state directory) are used, so a node
//! whose API server is briefly away still starts its router and serves pods instead of
//! crash-looping. The router runs as a child; then the Nodes are watched (relisting and
//! backing off as the API server comes and goes), and every change of the peer set replaces
//! the router's targets, as `weft connect --replace` does. The router exiting ends the launch
//! with its status; SIGTERM is passed on to it.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::api::ListParams;
use kube::runtime::{WatchStreamExt, watcher};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::peers::Nodes;

/// Where the last peers seen are kept, for a start while the API server is away.
pub const CACHE_FILE: &str = "kube-peers.json";

#[derive(Debug, Clone)]
pub struct LaunchConfig {
    /// This node's name (the downward API's spec.nodeName): never our own peer.
    pub node_name: Option<String>,
    /// The weft binary that runs the router (`weft router ...`).
    pub weft: PathBuf,
    /// Arguments for `weft router`, before the peers.
    pub router_args: Vec<String>,
    pub state_dir: PathBuf,
    /// The router's HTTP API, to replace its peers.
    pub http_addr: SocketAddr,
    /// How long to keep trying the API server at start before using the cached peers.
    pub api_wait: Duration,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Cache {
    peers: Vec<Ipv4Addr>,
}

/// This host's IPv4 addresses (a node's own address is not its peer).
pub fn own_addresses() -> BTreeSet<Ipv4Addr> {
    nix::ifaddrs::getifaddrs()
        .map(|addrs| {
            addrs
                .filter_map(|a| a.address?.as_sockaddr_in().map(|s| s.ip()))
                .collect()
        })
        .unwrap_or_default()
}

/// The peers from a list of the Nodes.
pub async fn list_peers(
    api: &Api<Node>,
    node_name: Option<&str>,
    own: &BTreeSet<Ipv4Addr>,
) -> Result<Vec<Ipv4Addr>> {
    let list = api.list(&ListParams::default()).await?;
    let mut nodes = Nodes::default();
    for n in &list.items {
        nodes.apply(n);
    }
    Ok(nodes.peers(node_name, own))
}

fn load_cache(cfg: &LaunchConfig) -> Option<Vec<Ipv4Addr>> {
    let text = std::fs::read_to_string(cfg.state_dir.join(CACHE_FILE)).ok()?;
    serde_json::from_str::<Cache>(&text).ok().map(|c| c.peers)
}

fn save_cache(cfg: &LaunchConfig, peers: &[Ipv4Addr]) {
    let path = cfg.state_dir.join(CACHE_FILE);
    let tmp = cfg.state_dir.join(format!(".{CACHE_FILE}.tmp"));
    let text = serde_json::to_string(&Cache {
        peers: peers.to_vec(),
    })
    .expect("addresses serialize");
    let r = std::fs::create_dir_all(&cfg.state_dir)
        .and_then(|()| std::fs::write(&tmp, text))
        .and_then(|()| std::fs::rename(&tmp, &path));
    if let Err(e) = r {
        warn!("could not save the peers to {}: {e}", path.display());
    }
}

/// The peers to start with: listed (retrying with backoff for `api_wait`), else cached.
async fn initial_peers(
    api: &Api<Node>,
    cfg: &LaunchConfig,
    own: &BTreeSet<Ipv4Addr>,
) -> Vec<Ipv4Addr> {
    let started = Instant::now();
    let mut delay = Duration::from_millis(500);
    loop {
        match list_peers(api, cfg.node_name.as_deref(), own).await {
            Ok(p) => {
                save_cache(cfg, &p);
                return p;
            }
            Err(e) if started.elapsed() + delay < cfg.api_wait => {
                warn!("listing the Nodes: {e}; trying again in {delay:?}");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(8));
            }
            Err(e) => {
                let cached = load_cache(cfg);
                warn!(
                    "the Kubernetes API server is unreachable ({e}); starting with {} (the router starts anyway: pods get addresses, peers come as the API server does)",
                    match &cached {
                        Some(p) => format!("the {} peers last seen", p.len()),
                        None => "no peers (none cached)".to_string(),
                    }
                );
                return cached.unwrap_or_default();
            }
        }
    }
}

/// Follows the Nodes for ever and publishes the peer set whenever it changes.
async fn follow_nodes(
    api: Api<Node>,
    node_name: Option<String>,
    own: BTreeSet<Ipv4Addr>,
    tx: watch::Sender<Vec<Ipv4Addr>>,
) {
    let stream = watcher(api, watcher::Config::default()).default_backoff();
    futures::pin_mut!(stream);
    let mut nodes = Nodes::default();
    let mut listing = Nodes::default();
    let mut last_error: Option<(String, Instant)> = None;
    while let Some(event) = stream.next().await {
        let changed = match event {
            Ok(watcher::Event::Init) => {
                listing = Nodes::default();
                false
            }
            Ok(watcher::Event::InitApply(n)) => {
                listing.apply(&n);
                false
            }
            Ok(watcher::Event::InitDone) => {
                nodes = std::mem::take(&mut listing);
                true
            }
            Ok(watcher::Event::Apply(n)) => {
                nodes.apply(&n);
                true
            }
            Ok(watcher::Event::Delete(n)) => {
                nodes.delete(&n);
                true
            }
            Err(e) => {
                // Said when it changes, and once a minute while it lasts.
                let msg = e.to_string();
                let due = last_error
                    .as_ref()
                    .is_none_or(|(m, t)| *m != msg || t.elapsed() >= Duration::from_secs(60));
                if due {
                    warn!(
                        "watching the Nodes: {msg}; retrying with backoff (the router keeps its peers meanwhile)"
                    );
                    last_error = Some((msg, Instant::now()));
                }
                false
            }
        };
        if changed {
            if last_error.take().is_some() {
                info!("watching the Nodes again");
            }
            let peers = nodes.peers(node_name.as_deref(), &own);
            tx.send_if_modified(|cur| {
                let differs = *cur != peers;
                if differs {
                    *cur = peers.clone();
                }
                differs
            });
        }
    }
}

/// Gives the router each new peer set (retrying while its API is not up yet), and caches it.
async fn push_peers(cfg: LaunchConfig, mut rx: watch::Receiver<Vec<Ipv4Addr>>) {
    let router = weft_api::Client::new(cfg.http_addr);
    while rx.changed().await.is_ok() {
        let peers = rx.borrow_and_update().clone();
        let req = weft_api::types::PeersRequest {
            peers: peers.iter().map(ToString::to_string).collect(),
            replace: true,
        };
        loop {
            match router.post_json("/connect", &req).await {
                Ok(_) => {
                    info!(peers = ?peers, "peers replaced from the Nodes");
                    save_cache(&cfg, &peers);
                    break;
                }
                Err(e) => {
                    if rx.has_changed().unwrap_or(false) {
                        break;
                    }
                    warn!("telling the router its peers: {e}; trying again");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }
}

/// Runs the router with peers from the Nodes; returns its exit code.
pub async fn launch(cfg: LaunchConfig) -> Result<i32> {
    let own = own_addresses();
    let client = kube::Client::try_default()
        .await
        .context("no Kubernetes configuration (in-cluster service account, or KUBECONFIG)")?;
    let api: Api<Node> = Api::all(client);
    let peers = initial_peers(&api, &cfg, &own).await;
    info!(peers = ?peers, "starting the router");
    let mut child = tokio::process::Command::new(&cfg.weft)
        .arg("router")
        .args(&cfg.router_args)
        .args(peers.iter().map(ToString::to_string))
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {} router", cfg.weft.display()))?;
    let (tx, rx) = watch::channel(peers);
    let follow = tokio::spawn(follow_nodes(api, cfg.node_name.clone(), own, tx));
    let push = tokio::spawn(push_peers(cfg, rx));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let status = tokio::select! {
        s = child.wait() => s?,
        _ = term.recv() => {
            if let Some(pid) = child.id() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGTERM,
                );
            }
            child.wait().await?
        }
    };
    follow.abort();
    push.abort();
    Ok(status.code().unwrap_or(1))
}
