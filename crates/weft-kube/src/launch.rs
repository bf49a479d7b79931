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
use k8s_openapi::api::core::v1::{ConfigMap, Node};
use kube::Api;
use kube::api::{ListParams, ObjectMeta, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::peers::Nodes;
use crate::reclaim::{self, PeerList, Step};

/// Where the last peers seen are kept, for a start while the API server is away.
pub const CACHE_FILE: &str = "kube-peers.json";

#[derive(Debug, Clone)]
pub struct LaunchConfig {
    /// This node's name (the downward API's spec.nodeName): never our own peer.
    pub node_name: Option<String>,
    /// The weft binary that runs the router (`weft router ...`).
    pub weft: PathBuf,
    /// Arguments for `weft router`, after those from the environment (see
    /// [`crate::env`]) and before the peers.
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

/// How watches retry the API server. client-go's backoff (kube's default) grows to 30 s
/// and more with jitter: after a long outage a node would learn of changes up to a minute
/// late. 10 s is still gentle on an API server that comes back to every node's watch at once.
pub(crate) fn api_backoff() -> backon::ExponentialBuilder {
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(800))
        .with_max_delay(Duration::from_secs(10))
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
}

/// Follows the Nodes for ever and publishes the peer set whenever it changes.
async fn follow_nodes(
    api: Api<Node>,
    node_name: Option<String>,
    own: BTreeSet<Ipv4Addr>,
    tx: watch::Sender<Vec<Ipv4Addr>>,
    names: watch::Sender<Option<BTreeSet<String>>>,
) {
    let stream = watcher(api, watcher::Config::default()).backoff(
        kube::runtime::watcher::ExponentialBackoff::from(api_backoff()),
    );
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
            names.send_replace(Some(nodes.0.keys().cloned().collect()));
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
    let api: Api<Node> = Api::all(client.clone());
    let peers = initial_peers(&api, &cfg, &own).await;
    forget_if_reclaimed(&client, &cfg.state_dir).await;
    info!(peers = ?peers, "starting the router");
    let var = |k: &str| std::env::var(k).ok();
    let mut router = tokio::process::Command::new(&cfg.weft);
    router.arg("router").args(crate::env::merged(
        crate::env::router_args(var, peers.len()),
        &cfg.router_args,
    ));
    if let Some(pw) = crate::env::password(var) {
        router.env("WEFT_PASSWORD", pw);
    }
    let mut child = router
        .args(peers.iter().map(ToString::to_string))
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {} router", cfg.weft.display()))?;
    let (tx, rx) = watch::channel(peers);
    let (names_tx, names_rx) = watch::channel(None);
    let follow = tokio::spawn(follow_nodes(api, cfg.node_name.clone(), own, tx, names_tx));
    if let Some(node) = cfg.node_name.clone() {
        tokio::spawn(post_start(client.clone(), cfg.http_addr, node));
    }
    let reclaim = match cfg.node_name.clone() {
        Some(node) => Some(tokio::spawn(reclaimer(
            client,
            cfg.http_addr,
            node,
            names_rx,
        ))),
        None => {
            warn!(
                "no node name (NODE_NAME): the space of deleted nodes is not reclaimed from here"
            );
            None
        }
    };
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
    if let Some(r) = reclaim {
        r.abort();
    }
    Ok(status.code().unwrap_or(1))
}

/// Marks that this state directory's peer took part in reclaim (Weave's peer-reclaim flag).
const RECLAIM_FLAG: &str = "kube-reclaim";

/// Weave's check-peer-new: a peer that registered in the reclaim list before and is no
/// longer in it had its space taken over while it was away; its saved allocations go, so it
/// starts as a new peer rather than claim addresses others now own. When the list cannot be
/// read, nothing is removed (as Weave).
async fn forget_if_reclaimed(client: &kube::Client, state_dir: &std::path::Path) {
    let flag = state_dir.join(RECLAIM_FLAG);
    let ipam = state_dir.join("ipam.json");
    let name = std::fs::read_to_string(state_dir.join("peer-name")).unwrap_or_default();
    let name = name.trim();
    if flag.exists() && ipam.exists() && !name.is_empty() {
        let api: Api<ConfigMap> = Api::namespaced(client.clone(), "kube-system");
        match tokio::time::timeout(Duration::from_secs(10), read_list(&api)).await {
            Ok(Ok((list, _))) if list.reclaimed(name) => {
                warn!(
                    "peer {name} is not in the reclaim list any more: another peer took its address space over; removing its persisted allocation data ({})",
                    ipam.display()
                );
                if let Err(e) = std::fs::remove_file(&ipam) {
                    warn!("removing {}: {e}", ipam.display());
                }
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => warn!("reading the reclaim list: {e}; keeping the allocation data"),
            Err(_) => warn!("reading the reclaim list timed out; keeping the allocation data"),
        }
    }
    if let Err(e) = std::fs::create_dir_all(state_dir).and_then(|()| std::fs::write(&flag, b"ok\n"))
    {
        warn!("writing {}: {e}", flag.display());
    }
}

/// Once the router answers, as Weave's launch script: exposes the host on the pod network
/// (an address from the range, or WEAVE_EXPOSE_IP), so host processes (kubelet probes,
/// kube-proxy's NodePorts) reach pods even before this node has one; then clears the Node's
/// NetworkUnavailable condition (some installers and cloud controllers set it until a
/// network plugin says it is up).
async fn post_start(client: kube::Client, http_addr: SocketAddr, node: String) {
    let router = weft_api::Client::new(http_addr);
    while router.get("/status").await.is_err() {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let expose = weft_api::types::ExposeRequest {
        addrs: std::env::var("WEAVE_EXPOSE_IP")
            .ok()
            .filter(|a| !a.is_empty())
            .into_iter()
            .collect(),
        hostname: None,
        without_masquerade: false,
    };
    match router.post_json("/expose", &expose).await {
        Ok(addrs) => info!("exposed the host on the pod network: {}", addrs.trim()),
        Err(e) => warn!("exposing the host on the pod network: {e} (the first pod's gateway will)"),
    }
    let api: Api<Node> = Api::all(client);
    let now = k8s_openapi::jiff::Timestamp::now();
    let patch = serde_json::json!({"status": {"conditions": [{
        "type": "NetworkUnavailable",
        "status": "False",
        "reason": "WeftIsUp",
        "message": "weft has set this",
        "lastTransitionTime": now.to_string(),
        "lastHeartbeatTime": now.to_string(),
    }]}});
    let mut delay = Duration::from_secs(1);
    loop {
        let pp = kube::api::PatchParams::default();
        match api
            .patch_status(&node, &pp, &kube::api::Patch::Strategic(&patch))
            .await
        {
            Ok(_) => {
                info!("node {node}: network available");
                return;
            }
            Err(e) => {
                warn!(
                    "setting node {node}'s NetworkUnavailable condition: {e}; trying again in {delay:?}"
                );
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(60));
            }
        }
    }
}

/// Why a reclaim round stopped early.
#[derive(Debug, thiserror::Error)]
enum RoundError {
    #[error("the peer list changed under us")]
    Conflict,
    #[error(transparent)]
    Kube(#[from] kube::Error),
    #[error("{0}")]
    Router(String),
}

/// The shared peer list and the version it was read at (created empty if missing).
async fn read_list(api: &Api<ConfigMap>) -> Result<(PeerList, ConfigMap), RoundError> {
    match api.get_opt(reclaim::CONFIGMAP).await? {
        Some(cm) => {
            let list = PeerList::parse(
                cm.data
                    .as_ref()
                    .and_then(|d| d.get(reclaim::KEY))
                    .map(String::as_str),
            );
            Ok((list, cm))
        }
        None => {
            let cm = ConfigMap {
                metadata: ObjectMeta {
                    name: Some(reclaim::CONFIGMAP.into()),
                    ..Default::default()
                },
                data: Some([(reclaim::KEY.to_string(), PeerList::default().to_json())].into()),
                ..Default::default()
            };
            match api.create(&PostParams::default(), &cm).await {
                Ok(cm) => Ok((PeerList::default(), cm)),
                Err(kube::Error::Api(e)) if e.code == 409 => Err(RoundError::Conflict),
                Err(e) => Err(e.into()),
            }
        }
    }
}

/// Writes `list` over the version `read` was: 409 means someone wrote first.
async fn write_list(
    api: &Api<ConfigMap>,
    read: &ConfigMap,
    list: &PeerList,
) -> Result<(), RoundError> {
    let mut cm = read.clone();
    cm.data
        .get_or_insert_default()
        .insert(reclaim::KEY.into(), list.to_json());
    match api
        .replace(reclaim::CONFIGMAP, &PostParams::default(), &cm)
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => Err(RoundError::Conflict),
        Err(e) => Err(e.into()),
    }
}

/// One pass: register ourselves, drop void claims, then claim, reclaim and finish each
/// victim we can, re-reading after every write. Returns when nothing is left for us.
async fn reclaim_round(
    api: &Api<ConfigMap>,
    router: &weft_api::Client,
    me: &str,
    node: &str,
    nodes: &BTreeSet<String>,
) -> Result<(), RoundError> {
    loop {
        let (list, cm) = read_list(api).await?;
        if let Some(l) = list.registered(me, node) {
            write_list(api, &cm, &l).await?;
            continue;
        }
        if let Some(l) = list.tidied(nodes) {
            write_list(api, &cm, &l).await?;
            continue;
        }
        let mut wrote = false;
        for victim in list.victims(nodes) {
            match list.step(&victim, me, nodes) {
                Step::Claim(l) => {
                    info!("claiming the address space of {victim}, whose node is gone");
                    write_list(api, &cm, &l).await?;
                    wrote = true;
                }
                Step::Reclaim => {
                    match router.delete(&format!("/peer/{victim}")).await {
                        Ok(msg) => info!("reclaimed from {victim}: {}", msg.trim()),
                        // Still reachable (its router has not stopped yet): later.
                        Err(e) if e.status().map(|s| s.as_u16()) == Some(409) => {
                            info!("{victim} is still reachable; reclaiming it later");
                            continue;
                        }
                        Err(e) => return Err(RoundError::Router(e.to_string())),
                    }
                    write_list(api, &cm, &list.finished(&victim)).await?;
                    wrote = true;
                }
                Step::Theirs(_) | Step::Nothing => continue,
            }
            break;
        }
        if !wrote {
            return Ok(());
        }
    }
}

/// Reclaims the space of deleted nodes' peers: at start, whenever the Nodes change, and
/// every minute (a victim that was still reachable, a claimer that died).
async fn reclaimer(
    client: kube::Client,
    http_addr: SocketAddr,
    node: String,
    mut names: watch::Receiver<Option<BTreeSet<String>>>,
) {
    let api: Api<ConfigMap> = Api::namespaced(client, "kube-system");
    let router = weft_api::Client::new(http_addr);
    // Our peer name, once the router answers.
    let me = loop {
        match router.get_json::<weft_api::types::Report>("/report").await {
            Ok(r) => break r.router.name,
            Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
        }
    };
    loop {
        let nodes = names.borrow_and_update().clone();
        if let Some(nodes) = nodes {
            let mut conflicts = 0;
            loop {
                match reclaim_round(&api, &router, &me, &node, &nodes).await {
                    Ok(()) => break,
                    Err(RoundError::Conflict) if conflicts < 20 => conflicts += 1,
                    Err(e) => {
                        warn!("reclaiming address space: {e}; trying again later");
                        break;
                    }
                }
            }
        }
        tokio::select! {
            r = names.changed() => if r.is_err() { return },
            _ = tokio::time::sleep(Duration::from_secs(60)) => {}
        }
    }
}
