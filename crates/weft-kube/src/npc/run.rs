//! `weft-kube npc`: keeps this node's nftables table in step with the cluster's Pods,
//! Namespaces and NetworkPolicies (Weave's weave-npc).
//!
//! Four watches feed one task that owns the [`Store`]; whenever it changed, the node's rule
//! set is compiled and applied as one nft transaction. The CNI plugin, before it hands a new
//! pod its network, tells us the address over a unix socket and waits until a transaction
//! that counts the pod there is applied, and until the other nodes' npc have done the same
//! (we tell them over HTTP, on the metrics port; 2 s at most), so the pod's first packet
//! meets rules that know it, here and at the far end. A node's word is taken only from one
//! of its Node's addresses and only about pods scheduled on it; the API tells the rest
//! (a pod's address from its status) a moment later anyway. Until the first full listing the table is left as it is (after a restart it still
//! holds the last run's rules); while the API server is away the rules stay as they were.
//! Blocked connections are counted in nftables and recorded in a set of the last minute's,
//! which a second task turns into metrics and rate-limited log lines.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod as ApiPod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, info, warn};
use weft_api::npc::{PodAddress, Reply};
use weft_linux::nft::Nft;

use super::nft::{self as script, BLOCKED_SETS, FAMILY, TABLE};
use super::store::{Key, PushError, Store, namespace_labels, policy_key};
use crate::launch::api_backoff;
use crate::peers::node_addresses;

pub struct NpcConfig {
    pub node_name: String,
    /// Where the CNI plugin reaches us.
    pub socket: PathBuf,
    /// Prometheus metrics (Weave's weave-npc served them on :6781).
    pub metrics_addr: Option<SocketAddr>,
}

enum Update<K> {
    /// A full listing (at start, and after a watch had to start over).
    Listed(Vec<K>),
    Apply(K),
    Delete(K),
}

type SyncReply = oneshot::Sender<Reply>;

/// Another node's npc telling us of a pod that just got its address there.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
struct NodePod {
    node: String,
    #[serde(flatten)]
    pod: PodAddress,
}

/// Who told us of a new pod, to answer once the rules know it.
enum Teller {
    /// The CNI plugin on this node: the other nodes are told before it hears back.
    Plugin(SyncReply),
    /// Another node's npc, speaking from `from`.
    Node {
        node: String,
        from: Ipv4Addr,
        reply: oneshot::Sender<Result<(), String>>,
    },
}

impl Teller {
    fn refuse(self, why: &str) {
        match self {
            Teller::Plugin(r) => {
                let _ = r.send(refuse(why));
            }
            Teller::Node { reply, .. } => {
                let _ = reply.send(Err(why.into()));
            }
        }
    }
}

enum Msg {
    Pods(Update<ApiPod>),
    Namespaces(Update<Namespace>),
    Policies(Update<NetworkPolicy>),
    Nodes(Update<Node>),
    NewPod(PodAddress, Teller),
    /// The pod a teller named, fetched because the watch had not brought it yet.
    Fetched(PodAddress, Result<ApiPod, String>, Teller),
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BlockedLabels {
    direction: String,
    protocol: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: String,
}

#[derive(Default)]
struct Metrics {
    blocked: Family<BlockedLabels, Counter>,
    /// New pods we told other nodes of, and they told us of.
    told: Family<ResultLabels, Counter>,
    heard: Family<ResultLabels, Counter>,
    policies: Gauge,
    local_pods: Gauge,
    applies: Counter,
    apply_errors: Counter,
}

impl Metrics {
    fn registry(self: &Arc<Self>) -> Registry {
        let mut r = Registry::default();
        r.register(
            "weft_npc_blocked_connections",
            "New connections dropped by NetworkPolicy (packets of new connections: a retried SYN counts again)",
            self.blocked.clone(),
        );
        r.register(
            "weft_npc_policies",
            "NetworkPolicies known",
            self.policies.clone(),
        );
        r.register(
            "weft_npc_local_pods",
            "Pods on this node under policy control",
            self.local_pods.clone(),
        );
        r.register(
            "weft_npc_rule_updates",
            "Rule sets applied",
            self.applies.clone(),
        );
        r.register(
            "weft_npc_pods_told",
            "Other nodes told of a new pod here, by result",
            self.told.clone(),
        );
        r.register(
            "weft_npc_pods_heard",
            "New pods other nodes told us of, by result",
            self.heard.clone(),
        );
        r.register(
            "weft_npc_rule_update_errors",
            "Rule sets nft refused",
            self.apply_errors.clone(),
        );
        r
    }
}

/// Runs until a watch or the socket fails for good.
pub async fn run(client: Client, cfg: NpcConfig) -> Result<()> {
    let nft = Nft::find()?;
    bridged_traffic_through_netfilter();
    let (tx, rx) = mpsc::channel::<Msg>(1024);
    tokio::spawn(follow(
        Api::<ApiPod>::all(client.clone()),
        "Pods",
        tx.clone(),
        Msg::Pods,
    ));
    tokio::spawn(follow(
        Api::<Namespace>::all(client.clone()),
        "Namespaces",
        tx.clone(),
        Msg::Namespaces,
    ));
    tokio::spawn(follow(
        Api::<NetworkPolicy>::all(client.clone()),
        "NetworkPolicies",
        tx.clone(),
        Msg::Policies,
    ));
    tokio::spawn(follow(
        Api::<Node>::all(client.clone()),
        "Nodes",
        tx.clone(),
        Msg::Nodes,
    ));
    let listener = bind_socket(&cfg.socket)?;
    info!(socket = %cfg.socket.display(), "waiting for the CNI plugin's new pods");
    tokio::spawn(serve_plugin(listener, tx.clone()));
    let metrics = Arc::new(Metrics::default());
    let (names_tx, names_rx) = watch::channel(Arc::new(BTreeMap::new()));
    tokio::spawn(watch_blocked(nft.clone(), metrics.clone(), names_rx));
    if let Some(addr) = cfg.metrics_addr {
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("metrics on {addr}"))?;
        info!(%addr, "metrics");
        tokio::spawn(serve_http(l, metrics.clone(), tx.clone()));
    }
    Engine {
        node: cfg.node_name,
        client,
        nft,
        tx,
        store: Store::default(),
        listed: [false; 4],
        peer_port: cfg.metrics_addr.map(|a| a.port()),
        previous: None,
        dirty: false,
        generation: 0,
        waiting: Vec::new(),
        metrics,
        names: names_tx,
        last_error: None,
    }
    .run(rx)
    .await
}

/// The owner of the store and the table.
struct Engine {
    node: String,
    client: Client,
    nft: Nft,
    tx: mpsc::Sender<Msg>,
    store: Store,
    /// Pods, Namespaces, NetworkPolicies, Nodes: listed at least once.
    listed: [bool; 4],
    /// Where the other nodes' npc listen (ours is the same port); none: we tell nobody.
    peer_port: Option<u16>,
    /// The sets the last applied script left; none before the first this run.
    previous: Option<BTreeSet<String>>,
    dirty: bool,
    /// Bumped per change; a sync waits for the transaction that includes its change.
    generation: u64,
    waiting: Vec<(u64, PodAddress, Teller)>,
    metrics: Arc<Metrics>,
    names: watch::Sender<Arc<BTreeMap<Ipv4Addr, String>>>,
    last_error: Option<(String, Instant)>,
}

impl Engine {
    async fn run(mut self, mut rx: mpsc::Receiver<Msg>) -> Result<()> {
        let mut retry: Option<tokio::time::Instant> = None;
        loop {
            let msg = match retry {
                Some(at) => tokio::select! {
                    m = rx.recv() => m,
                    _ = tokio::time::sleep_until(at) => { retry = None; None }
                },
                None => rx.recv().await,
            };
            if let Some(m) = msg {
                self.handle(m);
            }
            // Everything already queued goes into the same transaction.
            while let Ok(m) = rx.try_recv() {
                self.handle(m);
            }
            if self.dirty
                && retry.is_none()
                && self.listed.iter().all(|l| *l)
                && let Err(e) = self.apply().await
            {
                self.metrics.apply_errors.inc();
                self.say(format!("applying the rules: {e}; trying again in a second"));
                retry = Some(tokio::time::Instant::now() + Duration::from_secs(1));
            }
        }
    }

    fn changed(&mut self) {
        self.dirty = true;
        self.generation += 1;
    }

    fn handle(&mut self, m: Msg) {
        match m {
            Msg::Pods(u) => {
                match u {
                    Update::Listed(all) => {
                        self.store.pods.clear();
                        for p in &all {
                            self.store.apply_pod(p);
                        }
                        let pods = &self.store.pods;
                        self.store.claims.retain(|_, c| pods.contains_key(&c.pod));
                        self.listed[0] = true;
                    }
                    Update::Apply(p) => self.store.apply_pod(&p),
                    Update::Delete(p) => self.store.delete_pod(&p),
                }
                self.changed();
            }
            Msg::Namespaces(u) => {
                match u {
                    Update::Listed(all) => {
                        self.store.namespaces = all.iter().filter_map(namespace_labels).collect();
                        self.listed[1] = true;
                    }
                    Update::Apply(ns) => {
                        if let Some((n, l)) = namespace_labels(&ns) {
                            self.store.namespaces.insert(n, l);
                        }
                    }
                    Update::Delete(ns) => {
                        if let Some(n) = &ns.metadata.name {
                            self.store.namespaces.remove(n);
                        }
                    }
                }
                self.changed();
            }
            Msg::Policies(u) => {
                match u {
                    Update::Listed(all) => {
                        self.store.policies = all
                            .into_iter()
                            .filter_map(|p| Some((policy_key(&p)?, p)))
                            .collect();
                        self.listed[2] = true;
                    }
                    Update::Apply(p) => {
                        if let Some(k) = policy_key(&p) {
                            self.store.policies.insert(k, p);
                        }
                    }
                    Update::Delete(p) => {
                        if let Some(k) = policy_key(&p) {
                            self.store.policies.remove(&k);
                        }
                    }
                }
                self.changed();
            }
            Msg::Nodes(u) => {
                let addrs = |n: &Node| (n.metadata.name.clone(), node_addresses(n));
                match u {
                    Update::Listed(all) => {
                        self.store.nodes = all
                            .iter()
                            .map(addrs)
                            .filter_map(|(n, a)| Some((n?, a)))
                            .collect();
                        self.listed[3] = true;
                    }
                    Update::Apply(n) => {
                        if let (Some(name), a) = addrs(&n) {
                            self.store.nodes.insert(name, a);
                        }
                    }
                    Update::Delete(n) => {
                        if let Some(name) = &n.metadata.name {
                            self.store.nodes.remove(name);
                        }
                    }
                }
            }
            Msg::NewPod(pa, teller) => {
                if !self.listed.iter().all(|l| *l) {
                    teller.refuse(
                        "not yet in step with the API server; the pod starts under the rules in force",
                    );
                    return;
                }
                let key: Key = (pa.namespace.clone(), pa.name.clone());
                if self.store.pods.contains_key(&key) {
                    self.claimed(pa, teller);
                } else {
                    let api: Api<ApiPod> = Api::namespaced(self.client.clone(), &pa.namespace);
                    let tx = self.tx.clone();
                    tokio::spawn(async move {
                        let got = tokio::time::timeout(Duration::from_secs(3), api.get(&pa.name))
                            .await
                            .map_err(|_| "the API server did not answer in 3 s".to_string())
                            .and_then(|r| r.map_err(|e| e.to_string()));
                        let _ = tx.send(Msg::Fetched(pa, got, teller)).await;
                    });
                }
            }
            Msg::Fetched(pa, got, teller) => match got {
                Ok(pod) => {
                    let key = (pa.namespace.clone(), pa.name.clone());
                    if !self.store.pods.contains_key(&key) {
                        self.store.apply_pod(&pod);
                    }
                    self.claimed(pa, teller);
                }
                Err(e) => teller.refuse(&format!("pod {}/{} unknown: {e}", pa.namespace, pa.name)),
            },
        }
    }

    fn claimed(&mut self, pa: PodAddress, teller: Teller) {
        let key: Key = (pa.namespace.clone(), pa.name.clone());
        let local = match &teller {
            Teller::Plugin(_) => true,
            Teller::Node { node, from, .. } => {
                if let Err(e) = self.store.check_push(&key, node, *from) {
                    self.metrics.heard.get_or_create(&result("refused")).inc();
                    if !matches!(e, PushError::UnknownPod(..)) {
                        warn!("refused word from {from} of a new pod: {e}");
                    }
                    teller.refuse(&e.to_string());
                    return;
                }
                self.metrics.heard.get_or_create(&result("taken")).inc();
                false
            }
        };
        debug!(pod = %format!("{}/{}", key.0, key.1), ip = %pa.ip, local, "new pod");
        self.store.claim(pa.ip, key, local);
        self.changed();
        self.waiting.push((self.generation, pa, teller));
    }

    async fn apply(&mut self) -> Result<()> {
        let generation = self.generation;
        let rs = self.store.ruleset(&self.node);
        let text = match &self.previous {
            Some(prev) => script::script(&rs, prev),
            // This run's first: replace whatever the table held, in the same transaction.
            None => format!(
                "add table {FAMILY} {TABLE}\ndelete table {FAMILY} {TABLE}\n{}",
                script::script(&rs, &BTreeSet::new())
            ),
        };
        let nft = self.nft.clone();
        tokio::task::spawn_blocking(move || nft.apply(&text)).await??;
        if self.previous.is_none() || self.last_error.take().is_some() {
            info!(
                policies = self.store.policies.len(),
                rules = rs.ingress.len() + rs.egress.len(),
                "NetworkPolicy rules in force"
            );
        }
        self.previous = Some(rs.sets.keys().cloned().collect());
        self.dirty = false;
        self.metrics.applies.inc();
        self.metrics.policies.set(self.store.policies.len() as i64);
        let local = self
            .store
            .effective_pods(&self.node)
            .iter()
            .filter(|(_, l)| *l)
            .count();
        self.metrics.local_pods.set(local as i64);
        self.names
            .send_replace(Arc::new(self.store.names(&self.node)));
        let (done, still): (Vec<_>, Vec<_>) = std::mem::take(&mut self.waiting)
            .into_iter()
            .partition(|(g, _, _)| *g <= generation);
        self.waiting = still;
        for (_, pa, teller) in done {
            match teller {
                Teller::Node { reply, .. } => {
                    let _ = reply.send(Ok(()));
                }
                Teller::Plugin(reply) => {
                    let others = match self.peer_port {
                        Some(port) => self
                            .store
                            .other_nodes(&self.node)
                            .into_iter()
                            .map(|(n, ip)| (n, SocketAddr::from((ip, port))))
                            .collect(),
                        None => Vec::new(),
                    };
                    let told = NodePod {
                        node: self.node.clone(),
                        pod: pa,
                    };
                    let metrics = self.metrics.clone();
                    tokio::spawn(async move {
                        tell_others(others, told, &metrics).await;
                        let _ = reply.send(Reply {
                            ok: true,
                            error: None,
                        });
                    });
                }
            }
        }
        Ok(())
    }

    /// Said when it changes, and once a minute while it lasts.
    fn say(&mut self, msg: String) {
        let due = self
            .last_error
            .as_ref()
            .is_none_or(|(m, t)| *m != msg || t.elapsed() >= Duration::from_secs(60));
        if due {
            warn!("{msg}");
            self.last_error = Some((msg, Instant::now()));
        }
    }
}

fn refuse(why: &str) -> Reply {
    Reply {
        ok: false,
        error: Some(why.into()),
    }
}

/// Bridged frames between pods must pass the IP hooks for the rules to see them. Docker and
/// kubeadm nodes already have this; say so where it cannot be had.
fn bridged_traffic_through_netfilter() {
    const KNOB: &str = "/proc/sys/net/bridge/bridge-nf-call-iptables";
    let on = std::fs::read_to_string(KNOB).is_ok_and(|v| v.trim() == "1");
    if on {
        return;
    }
    if let Err(e) = std::fs::write(KNOB, "1") {
        warn!(
            "cannot turn on {KNOB} ({e}): connections between pods on the same node are not checked against NetworkPolicy; load br_netfilter (modprobe br_netfilter) and set it to 1"
        );
    }
}

/// Follows one kind of object for ever, with the same backoff as the Node watch.
async fn follow<K>(
    api: Api<K>,
    what: &'static str,
    tx: mpsc::Sender<Msg>,
    wrap: fn(Update<K>) -> Msg,
) where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    let stream = watcher(api, watcher::Config::default()).backoff(
        kube::runtime::watcher::ExponentialBackoff::from(api_backoff()),
    );
    futures::pin_mut!(stream);
    let mut listing = Vec::new();
    let mut failing: Option<(String, Instant)> = None;
    while let Some(event) = stream.next().await {
        let update = match event {
            Ok(watcher::Event::Init) => {
                listing.clear();
                None
            }
            Ok(watcher::Event::InitApply(o)) => {
                listing.push(o);
                None
            }
            Ok(watcher::Event::InitDone) => Some(Update::Listed(std::mem::take(&mut listing))),
            Ok(watcher::Event::Apply(o)) => Some(Update::Apply(o)),
            Ok(watcher::Event::Delete(o)) => Some(Update::Delete(o)),
            Err(e) => {
                let msg = e.to_string();
                let due = failing
                    .as_ref()
                    .is_none_or(|(m, t)| *m != msg || t.elapsed() >= Duration::from_secs(60));
                if due {
                    warn!(
                        "watching the {what}: {msg}; retrying with backoff (the rules in force stay)"
                    );
                    failing = Some((msg, Instant::now()));
                }
                None
            }
        };
        if let Some(u) = update {
            if failing.take().is_some() {
                info!("watching the {what} again");
            }
            if tx.send(wrap(u)).await.is_err() {
                return;
            }
        }
    }
}

fn result(r: &str) -> ResultLabels {
    ResultLabels { result: r.into() }
}

/// How long a new pod waits for the other nodes at most: one that is down or slow must not
/// hold every pod start back; its rules learn the pod from the API a moment later.
const TELL_WAIT: Duration = Duration::from_secs(2);

/// Tells every other node's npc of our new pod, and waits (bounded) until each has it.
async fn tell_others(others: Vec<(String, SocketAddr)>, told: NodePod, metrics: &Metrics) {
    let calls = others.into_iter().map(|(node, addr)| {
        let told = told.clone();
        async move {
            let client = weft_api::Client::new(addr);
            let r = tokio::time::timeout(TELL_WAIT, client.post_json("/v1/pods", &told)).await;
            match r {
                Ok(Ok(_)) => "taken",
                Ok(Err(e)) => {
                    debug!(%node, "telling of a new pod: {e}");
                    "refused"
                }
                Err(_) => "timeout",
            }
        }
    });
    for r in futures::future::join_all(calls).await {
        metrics.told.get_or_create(&result(r)).inc();
    }
}

fn bind_socket(path: &std::path::Path) -> Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    // A socket left by an earlier run: nobody answers on it.
    let _ = std::fs::remove_file(path);
    let l = UnixListener::bind(path).with_context(|| format!("listening on {}", path.display()))?;
    use std::os::unix::fs::PermissionsExt;
    // The plugin runs as root: nobody else tells us about pods.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("restricting {}", path.display()))?;
    Ok(l)
}

async fn serve_plugin(listener: UnixListener, tx: mpsc::Sender<Msg>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let tx = tx.clone();
        tokio::spawn(async move {
            let (rd, mut wr) = stream.into_split();
            let mut line = String::new();
            // One short line: a bound, so a stuck or hostile writer holds little.
            let mut rd = BufReader::new(rd).take(4096);
            use tokio::io::AsyncReadExt;
            let read = tokio::time::timeout(Duration::from_secs(5), rd.read_line(&mut line)).await;
            let reply = match read {
                Ok(Ok(_)) => match serde_json::from_str::<PodAddress>(line.trim()) {
                    Ok(pa) => {
                        let (rtx, rrx) = oneshot::channel();
                        if tx.send(Msg::NewPod(pa, Teller::Plugin(rtx))).await.is_err() {
                            return;
                        }
                        rrx.await.unwrap_or_else(|_| refuse("stopping"))
                    }
                    Err(e) => refuse(&format!("not a pod address: {e}")),
                },
                _ => refuse("no request"),
            };
            let mut out = serde_json::to_vec(&reply).unwrap_or_default();
            out.push(b'\n');
            let _ = wr.write_all(&out).await;
        });
    }
}

/// One element of a blocked set: (source, destination, protocol, port).
type Blocked = (Ipv4Addr, Ipv4Addr, String, u16);

/// The elements of a blocked set in `nft -j list set` output.
fn blocked_elements(json: &str) -> Vec<Blocked> {
    fn concat(v: &serde_json::Value, out: &mut Vec<Blocked>) {
        match v {
            serde_json::Value::Object(m) => {
                if let Some(serde_json::Value::Array(parts)) = m.get("concat") {
                    let ip = |i: usize| parts.get(i)?.as_str()?.parse::<Ipv4Addr>().ok();
                    let proto = parts.get(2).and_then(|p| p.as_str()).map(str::to_string);
                    let port = parts
                        .get(3)
                        .and_then(|p| p.as_u64())
                        .and_then(|p| u16::try_from(p).ok());
                    if let (Some(s), Some(d), Some(pr), Some(po)) = (ip(0), ip(1), proto, port) {
                        out.push((s, d, pr, po));
                    }
                    return;
                }
                m.values().for_each(|x| concat(x, out));
            }
            serde_json::Value::Array(a) => a.iter().for_each(|x| concat(x, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(json) {
        concat(&v, &mut out);
    }
    out
}

/// Counter name → packets, from `nft -j list counters`.
fn counter_values(json: &str) -> BTreeMap<String, u64> {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(json) else {
        return BTreeMap::new();
    };
    v.get("nftables")
        .and_then(|n| n.as_array())
        .into_iter()
        .flatten()
        .filter_map(|o| {
            let c = o.get("counter")?;
            Some((
                c.get("name")?.as_str()?.to_string(),
                c.get("packets")?.as_u64()?,
            ))
        })
        .collect()
}

/// Lines logged per second at most; the rest are counted in one line.
const LOG_PER_SECOND: usize = 10;

/// Once a second: counters into metrics, newly blocked connections into the log.
async fn watch_blocked(
    nft: Nft,
    metrics: Arc<Metrics>,
    names: watch::Receiver<Arc<BTreeMap<Ipv4Addr, String>>>,
) {
    let mut seen: BTreeSet<(&'static str, Blocked)> = BTreeSet::new();
    let mut last: BTreeMap<String, u64> = BTreeMap::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let nft2 = nft.clone();
        let read = tokio::task::spawn_blocking(move || {
            let counters = nft2
                .list_json(&["counters", "table", FAMILY, TABLE])
                .map(|j| counter_values(&j))
                .unwrap_or_default();
            let sets: Vec<(&'static str, Vec<Blocked>)> = BLOCKED_SETS
                .iter()
                .zip(["ingress", "egress"])
                .map(|(set, dir)| {
                    let e = nft2
                        .list_json(&["set", FAMILY, TABLE, set])
                        .map(|j| blocked_elements(&j))
                        .unwrap_or_default();
                    (dir, e)
                })
                .collect();
            (counters, sets)
        })
        .await;
        let Ok((counters, sets)) = read else { continue };
        for (dir, proto, name) in script::counters() {
            let now = counters.get(&name).copied().unwrap_or(0);
            let before = last.get(&name).copied().unwrap_or(0);
            // A smaller value: the table was made anew and counts from zero.
            let delta = if now >= before { now - before } else { now };
            if delta > 0 {
                metrics
                    .blocked
                    .get_or_create(&BlockedLabels {
                        direction: dir.into(),
                        protocol: proto.into(),
                    })
                    .inc_by(delta);
            }
            last.insert(name, now);
        }
        let names = names.borrow().clone();
        let name = |ip: &Ipv4Addr| {
            names
                .get(ip)
                .map_or_else(|| ip.to_string(), |n| format!("{n} ({ip})"))
        };
        let current: BTreeSet<(&'static str, Blocked)> = sets
            .into_iter()
            .flat_map(|(dir, es)| es.into_iter().map(move |e| (dir, e)))
            .collect();
        let new: Vec<&(&'static str, Blocked)> = current.difference(&seen).collect();
        for (dir, (s, d, proto, port)) in new.iter().take(LOG_PER_SECOND) {
            let pod = if *dir == "ingress" { d } else { s };
            warn!(
                "{} connection from {} to {}:{port} blocked by weft-npc ({dir} policy of {})",
                proto.to_uppercase(),
                name(s),
                name(d),
                name(pod)
            );
        }
        if new.len() > LOG_PER_SECOND {
            warn!(
                "{} more connections blocked by weft-npc in the last second (not shown)",
                new.len() - LOG_PER_SECOND
            );
        }
        // Entries leave the set a minute after their last packet: one blocked again after
        // that is said again.
        seen = current;
    }
}

/// Metrics, and other nodes' word of their new pods.
async fn serve_http(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    tx: mpsc::Sender<Msg>,
) {
    use axum::extract::{ConnectInfo, Json, State};
    use axum::http::StatusCode;
    let registry = Arc::new(metrics.registry());
    let app = axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(move || {
                let registry = registry.clone();
                async move {
                    let mut body = String::new();
                    let _ = prometheus_client::encoding::text::encode(&mut body, &registry);
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        body,
                    )
                }
            }),
        )
        .route(
            "/v1/pods",
            axum::routing::post(
                |State(tx): State<mpsc::Sender<Msg>>,
                 ConnectInfo(peer): ConnectInfo<SocketAddr>,
                 Json(told): Json<NodePod>| async move {
                    let from = match peer.ip() {
                        std::net::IpAddr::V4(a) => a,
                        std::net::IpAddr::V6(a) => match a.to_ipv4_mapped() {
                            Some(a) => a,
                            None => return (StatusCode::FORBIDDEN, "IPv4 only".to_string()),
                        },
                    };
                    let (rtx, rrx) = oneshot::channel();
                    let teller = Teller::Node {
                        node: told.node,
                        from,
                        reply: rtx,
                    };
                    if tx.send(Msg::NewPod(told.pod, teller)).await.is_err() {
                        return (StatusCode::SERVICE_UNAVAILABLE, "stopping".into());
                    }
                    match rrx.await {
                        Ok(Ok(())) => (StatusCode::OK, "{}".into()),
                        Ok(Err(e)) => (StatusCode::FORBIDDEN, e),
                        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "stopping".into()),
                    }
                },
            ),
        )
        .with_state(tx);
    let served = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await;
    if let Err(e) = served {
        warn!("metrics server stopped: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocked_sets_and_counters_from_nft_json() {
        let set = r#"{"nftables": [{"metainfo": {"version": "1.0.6"}}, {"set": {"family": "inet", "name": "blocked_in", "table": "weft-npc", "type": ["ipv4_addr", "ipv4_addr", "inet_proto", "inet_service"], "elem": [{"elem": {"val": {"concat": ["10.32.2.2", "10.32.1.1", "tcp", 80]}, "timeout": 60, "expires": 58}}]}}]}"#;
        assert_eq!(
            blocked_elements(set),
            vec![(
                [10, 32, 2, 2].into(),
                [10, 32, 1, 1].into(),
                "tcp".to_string(),
                80
            )]
        );
        let counters = r#"{"nftables": [{"metainfo": {}}, {"counter": {"family": "inet", "name": "blocked_in_tcp", "table": "weft-npc", "handle": 1, "packets": 3, "bytes": 180}}]}"#;
        assert_eq!(counter_values(counters).get("blocked_in_tcp"), Some(&3));
        assert!(blocked_elements("not json").is_empty());
    }
}
