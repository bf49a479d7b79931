//! The Docker Engine client: connecting (unix socket or TCP with TLS), inspecting and
//! listing containers, the networks our plugin made, and which containers died when. The
//! proxy and the plugin (in `http/`) and the events watcher (`docker/`) use it; attaching a
//! container is the service's job (`service/docker.rs`).
//!
//! Containers made through the proxy carry `/w/w` (weft-wait) as their entrypoint, so they are
//! recognised wherever they are started from: through the proxy (which answers the start only
//! once the container is attached), by `docker start` on the engine's own socket or a restart
//! policy (the events watcher attaches them), or before a router restart (attached again at
//! start-up). A container whose process dies is detached at once (its `die` event), its
//! names removed and its addresses released; the reaper would notice within a second anyway.

pub mod rewrite;
pub mod tls;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bollard::Docker;
use bollard::models::ContainerInspectResponse;
use bollard::query_parameters::{KillContainerOptions, ListContainersOptions};
use tokio::sync::Mutex;
use tracing::{info, warn};

/// The label naming the router whose proxy made a container.
pub const ROUTER_LABEL: &str = "works.weft.router";

/// The engine's API socket when `--docker-api` is not given.
pub const DEFAULT_DOCKER_API: &str = "unix:///var/run/docker.sock";

#[derive(Clone, Debug)]
pub struct DockerSettings {
    /// The engine's API (`unix:///var/run/docker.sock`).
    pub api: String,
    /// Where the proxy listens (`unix:///run/weft/weft.sock`, `tcp://127.0.0.1:12375`);
    /// empty: no proxy.
    pub proxy_listen: Vec<String>,
    /// The network plugin's socket (`/run/docker/plugins/weft.sock`); `None`: no plugin.
    pub plugin_socket: Option<PathBuf>,
    /// A network of the plugin's that launch makes if missing (Weave's `weave`).
    pub plugin_network: Option<String>,
    /// TLS on the proxy's TCP listeners (checked before the router starts).
    pub proxy_tls: Option<tls::TlsSettings>,
    pub without_dns: bool,
    pub no_multicast_route: bool,
    pub no_rewrite_hosts: bool,
    pub no_default_ipalloc: bool,
    pub hostname_from_label: Option<String>,
    /// Container names become hostnames through this (Weave's `--hostname-match`, `(.*)`)...
    pub hostname_match: String,
    /// ...and this (`--hostname-replacement`, `$1`).
    pub hostname_replacement: String,
    /// `docker inspect` through the proxy shows the weft address (`--rewrite-inspect`).
    pub rewrite_inspect: bool,
    /// The static weft-wait binary bind-mounted into containers.
    pub wait_binary: PathBuf,
}

/// The engine's socket path from `unix:///path` or `/path`.
pub fn socket_path(api: &str) -> Option<PathBuf> {
    let p = api.strip_prefix("unix://").unwrap_or(api);
    p.starts_with('/').then(|| PathBuf::from(p))
}

#[cfg(test)]
mod engine_addr_tests {
    use super::*;

    #[test]
    fn docker_api_addresses() {
        assert_eq!(
            EngineAddr::parse("unix:///var/run/docker.sock").ok(),
            Some(EngineAddr::Unix("/var/run/docker.sock".into()))
        );
        assert_eq!(
            EngineAddr::parse("/run/d.sock").ok(),
            Some(EngineAddr::Unix("/run/d.sock".into()))
        );
        assert_eq!(
            EngineAddr::parse("tcp://10.0.0.1:2375/").ok(),
            Some(EngineAddr::Tcp("10.0.0.1:2375".into()))
        );
        assert_eq!(
            EngineAddr::parse("tcp://docker.example:2376")
                .ok()
                .map(|a| a.to_string()),
            Some("tcp://docker.example:2376".into())
        );
        for bad in [
            "tcp://nowhere",
            "tcp://:2375",
            "http://x:1",
            "relative.sock",
        ] {
            let e = EngineAddr::parse(bad).unwrap_err().to_string();
            assert!(e.contains("tcp://HOST:PORT"), "{bad}: {e}");
        }
    }
}

/// Where the engine's API is: a unix socket, or `tcp://HOST:PORT` as Weave's `--docker-api`
/// also took (no TLS: as the engine itself serves it then).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EngineAddr {
    Unix(PathBuf),
    Tcp(String),
}

/// Why the router cannot use a Docker Engine: each names the address or flag concerned.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// `--docker-api` is not an address weft can use.
    #[error("--docker-api {api:?}: expected {expected}")]
    BadAddress { api: String, expected: &'static str },
    #[error("--hostname-match {pattern:?}: {detail}")]
    HostnameMatch { pattern: String, detail: String },
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("{api}: {detail}")]
    Client { api: String, detail: String },
    #[error("Docker at {api} did not answer within 3 s")]
    Timeout { api: String },
    #[error("Docker is not running at {api}: {detail}")]
    NotRunning { api: String, detail: String },
}

impl EngineAddr {
    pub fn parse(api: &str) -> Result<EngineAddr, EngineError> {
        if let Some(hp) = api.strip_prefix("tcp://") {
            let hp = hp.trim_end_matches('/');
            let ok = hp
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
            return if ok {
                Ok(EngineAddr::Tcp(hp.to_string()))
            } else {
                Err(EngineError::BadAddress {
                    api: api.to_string(),
                    expected: "tcp://HOST:PORT (e.g. tcp://127.0.0.1:2375)",
                })
            };
        }
        socket_path(api)
            .map(EngineAddr::Unix)
            .ok_or_else(|| EngineError::BadAddress {
                api: api.to_string(),
                expected: "unix:///PATH (default unix:///var/run/docker.sock) or tcp://HOST:PORT",
            })
    }
}

impl std::fmt::Display for EngineAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EngineAddr::Unix(p) => write!(f, "unix://{}", p.display()),
            EngineAddr::Tcp(hp) => write!(f, "tcp://{hp}"),
        }
    }
}

/// The Docker side of a starting router: the engine if it answers, and what `status` says.
pub struct Startup {
    pub engine: Option<Arc<Engine>>,
    pub status: DockerStatus,
}

impl Startup {
    /// Connects to the engine; an engine that does not answer is reported in the status (the
    /// router runs without Docker).
    pub async fn connect(settings: Option<&DockerSettings>, router: String) -> Startup {
        let mut st = Startup {
            engine: None,
            status: DockerStatus::default(),
        };
        let Some(s) = settings else {
            return st;
        };
        match Engine::connect(s.clone(), router).await {
            Ok(e) => {
                st.status.proxy_tls = s.proxy_tls.clone();
                st.status.plugin_driver = s.plugin_socket.as_deref().map(plugin_driver_name);
                st.engine = Some(e);
            }
            Err(why) => {
                warn!("{why}: running without the Docker proxy and plugin");
                st.status.unavailable = Some(why.to_string());
            }
        }
        st
    }
}

/// The driver name Docker knows the plugin by: its socket's name.
pub fn plugin_driver_name(socket: &Path) -> String {
    socket
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "weft".into())
}

/// The plugin's network options that turn the multicast route on.
pub const MULTICAST_OPTIONS: [&str; 2] = ["weft.multicast", "works.weave.multicast"];

/// A Docker Engine the router talks to.
pub struct Engine {
    pub client: Docker,
    /// Our peer name: containers made through our proxy carry it in [`ROUTER_LABEL`], so
    /// routers sharing one engine (a test bed) each attach only their own.
    pub router: String,
    pub addr: EngineAddr,
    pub settings: DockerSettings,
    /// One Docker attach at a time: the proxy's start and the start event race for the same
    /// container, and attaching takes milliseconds.
    pub(crate) attaching: Mutex<()>,
    /// Networks made with our plugin (id → multicast route), whose containers get DNS names.
    pub plugin_networks: Mutex<HashMap<String, bool>>,
    /// Containers that stopped, and when: their addresses are kept for [`DEAD_GRACE`].
    dead: Mutex<HashMap<String, tokio::time::Instant>>,
    /// `--hostname-match`/`--hostname-replacement`, compiled.
    pub hostname_match: Option<(regex_lite::Regex, String)>,
    /// TLS towards an engine on TCP (`DOCKER_TLS_VERIFY`), for the proxy's own connections.
    pub engine_tls: Option<Arc<rustls::ClientConfig>>,
}

/// How long a stopped Docker container keeps its addresses if it is neither started again
/// nor removed (Weave's 30 s). A removed container's go at once.
pub const DEAD_GRACE: Duration = Duration::from_secs(30);

/// Whether an ident is a Docker container id (64 hex digits), whose addresses follow the
/// container's life rather than its namespace's.
pub fn is_container_id(ident: &str) -> bool {
    ident.len() == 64 && ident.bytes().all(|b| b.is_ascii_hexdigit())
}

/// What `status` says about the Docker integration.
#[derive(Clone, Debug, Default)]
pub struct DockerStatus {
    pub proxy_addrs: Vec<String>,
    /// TLS on the proxy's TCP listeners, for `weft env` and `weft config`.
    pub proxy_tls: Option<tls::TlsSettings>,
    pub plugin_driver: Option<String>,
    /// Why the proxy and plugin are off, when Docker could not be reached.
    pub unavailable: Option<String>,
}

impl Engine {
    /// Connects to the engine and checks it answers; `Err` says why not.
    pub async fn connect(
        settings: DockerSettings,
        router: String,
    ) -> Result<Arc<Engine>, EngineError> {
        let addr = EngineAddr::parse(&settings.api)?;
        // TLS towards an engine on TCP, as the docker CLI would speak it (the environment).
        let engine_tls = match &addr {
            EngineAddr::Tcp(_) => tls::engine_tls_from_env(),
            EngineAddr::Unix(_) => None,
        };
        let engine_client_tls = engine_tls.as_ref().map(|t| t.client_config()).transpose()?;
        let hostname_match =
            rewrite::hostname_match(&settings.hostname_match, &settings.hostname_replacement)?;
        let client = match &addr {
            EngineAddr::Unix(p) => Docker::connect_with_unix(
                &p.display().to_string(),
                120,
                bollard::API_DEFAULT_VERSION,
            ),
            EngineAddr::Tcp(hp) => match &engine_tls {
                None => Docker::connect_with_http(
                    &format!("tcp://{hp}"),
                    120,
                    bollard::API_DEFAULT_VERSION,
                ),
                Some(t) => Docker::connect_with_ssl(
                    &format!("tcp://{hp}"),
                    &t.key,
                    &t.cert,
                    &t.ca,
                    120,
                    bollard::API_DEFAULT_VERSION,
                ),
            },
        }
        .map_err(|e| EngineError::Client {
            api: settings.api.clone(),
            detail: e.to_string(),
        })?;
        let client = tokio::time::timeout(Duration::from_secs(3), client.negotiate_version())
            .await
            .map_err(|_| EngineError::Timeout {
                api: settings.api.clone(),
            })?
            .map_err(|e| EngineError::NotRunning {
                api: settings.api.clone(),
                detail: e.to_string(),
            })?;
        Ok(Arc::new(Engine {
            client,
            router,
            addr,
            settings,
            attaching: Mutex::new(()),
            plugin_networks: Mutex::new(HashMap::new()),
            dead: Mutex::new(HashMap::new()),
            hostname_match,
            engine_tls: engine_client_tls,
        }))
    }

    pub async fn inspect(
        &self,
        id: &str,
    ) -> Result<ContainerInspectResponse, bollard::errors::Error> {
        self.client.inspect_container(id, None).await
    }

    /// The image's `(Entrypoint, Cmd)`; `None` if the engine does not have the image.
    pub async fn image_command(&self, image: &str) -> Option<(Vec<String>, Vec<String>)> {
        let i = self.client.inspect_image(image).await.ok()?;
        let c = i.config.unwrap_or_default();
        Some((c.entrypoint.unwrap_or_default(), c.cmd.unwrap_or_default()))
    }

    /// The running containers' ids by their first process's PID (to name containers found on
    /// the bridge with no record, see [`crate::attach::Attacher::adopt_unknown`]).
    pub async fn ids_by_pid(&self) -> BTreeMap<u32, String> {
        let mut out = BTreeMap::new();
        let Ok(list) = self
            .client
            .list_containers(Some(ListContainersOptions::default()))
            .await
        else {
            return out;
        };
        for c in list {
            let Some(id) = c.id else { continue };
            if let Ok(i) = self.inspect(&id).await
                && let Some(pid) = i.state.and_then(|s| s.pid).filter(|p| *p > 0)
            {
                out.insert(pid as u32, id);
            }
        }
        out
    }

    /// The ids of the networks our plugin made.
    pub async fn plugin_network_ids(&self) -> Vec<String> {
        self.plugin_networks.lock().await.keys().cloned().collect()
    }

    /// A container stopped: its addresses wait [`DEAD_GRACE`] for it to come back.
    pub async fn died(&self, id: &str) {
        self.dead
            .lock()
            .await
            .entry(id.to_string())
            .or_insert_with(tokio::time::Instant::now);
    }

    /// A container started (or went for good): no longer waited for.
    pub async fn started(&self, id: &str) {
        self.dead.lock().await.remove(id);
    }

    /// The stopped containers whose grace period is over (forgotten here).
    pub async fn expired_dead(&self) -> Vec<String> {
        let mut dead = self.dead.lock().await;
        let now = tokio::time::Instant::now();
        let gone: Vec<String> = dead
            .iter()
            .filter(|(_, t)| now.duration_since(**t) >= DEAD_GRACE)
            .map(|(id, _)| id.clone())
            .collect();
        for id in &gone {
            dead.remove(id);
        }
        gone
    }

    /// Whether our proxy made this container (running or not): weft-wait is its entrypoint
    /// and it carries our router's label.
    pub async fn made_by_our_proxy(&self, id: &str) -> bool {
        let Ok(c) = self.inspect(id).await else {
            return false;
        };
        let Some(cfg) = c.config else { return false };
        let waits = cfg
            .entrypoint
            .as_ref()
            .and_then(|e| e.first())
            .is_some_and(|e| e == rewrite::WAIT_PATH);
        let label = cfg
            .labels
            .as_ref()
            .and_then(|l| l.get(ROUTER_LABEL))
            .map(String::as_str);
        waits && label.is_none_or(|r| r == self.router)
    }

    pub async fn kill(&self, id: &str) {
        let opts = KillContainerOptions {
            signal: "KILL".into(),
        };
        if let Err(e) = self.client.kill_container(id, Some(opts)).await {
            warn!(container = %id, "killing the container failed: {e}");
        }
    }
}

/// A Docker container resolved for `weft attach`/`ps`/`dns-add`.
#[derive(Clone, Debug)]
pub struct Container {
    pub id: String,
    pub name: String,
    /// `/proc/PID/ns/net` of its running process.
    pub netns: String,
    /// `hostname.domainname` (or the hostname alone when it has no domain).
    pub fqdn: Option<String>,
    inspect: Box<ContainerInspectResponse>,
}

impl Container {
    pub(crate) fn from_inspect(c: ContainerInspectResponse) -> Result<Container, String> {
        let id = c.id.clone().unwrap_or_default();
        let name = c.name.clone().unwrap_or_default();
        let state = c.state.clone().unwrap_or_default();
        let pid = state.pid.unwrap_or(0);
        if state.running != Some(true) || pid <= 0 {
            return Err(format!(
                "container {} is not running",
                name.trim_start_matches('/')
            ));
        }
        let cfg = c.config.clone().unwrap_or_default();
        let host = cfg.hostname.unwrap_or_default();
        let domain = cfg.domainname.unwrap_or_default();
        let fqdn = match (host.is_empty(), domain.is_empty()) {
            (true, _) => None,
            (false, true) => Some(host),
            (false, false) => Some(format!("{host}.{domain}")),
        };
        Ok(Container {
            id,
            name,
            netns: format!("/proc/{pid}/ns/net"),
            fqdn,
            inspect: Box::new(c),
        })
    }

    /// The `/etc/hosts` Docker made for it (bind-mounted into the container).
    pub fn hosts_path(&self) -> Option<String> {
        self.inspect.hosts_path.clone().filter(|p| !p.is_empty())
    }

    /// Its configured hostname and domain name.
    pub fn host_and_domain(&self) -> (String, String) {
        let c = self.config();
        (
            c.and_then(|k| k.hostname.clone()).unwrap_or_default(),
            c.and_then(|k| k.domainname.clone()).unwrap_or_default(),
        )
    }

    /// The network it was started into (`--net`), wherever that was set.
    pub fn network_mode(&self) -> String {
        self.inspect
            .host_config
            .as_ref()
            .and_then(|h| h.network_mode.clone())
            .unwrap_or_default()
    }

    /// Its `--add-host` entries.
    pub fn extra_hosts(&self) -> Vec<String> {
        self.inspect
            .host_config
            .as_ref()
            .and_then(|h| h.extra_hosts.clone())
            .unwrap_or_default()
    }

    pub(crate) fn config(&self) -> Option<&bollard::models::ContainerConfig> {
        self.inspect.config.as_ref()
    }

    /// Made by our proxy: its entrypoint is weft-wait.
    pub(crate) fn proxied(&self) -> bool {
        self.config()
            .and_then(|c| c.entrypoint.as_ref())
            .and_then(|e| e.first())
            .is_some_and(|e| e == rewrite::WAIT_PATH)
    }

    pub(crate) fn label(&self, key: &str) -> Option<&str> {
        self.config()
            .and_then(|c| c.labels.as_ref())
            .and_then(|l| l.get(key))
            .map(String::as_str)
    }

    pub(crate) fn env(&self) -> Vec<String> {
        self.config()
            .and_then(|c| c.env.clone())
            .unwrap_or_default()
    }

    pub(crate) fn multicast_route(&self) -> bool {
        // weft-wait waits for the multicast route unless told otherwise at create time.
        self.config()
            .and_then(|c| c.cmd.as_ref())
            .and_then(|c| c.first())
            .is_none_or(|a| a != "--no-mcast")
    }
}

/// Finds a running Docker container by name or id.
pub async fn find(engine: &Engine, spec: &str) -> Result<Container, String> {
    match engine.inspect(spec).await {
        Ok(c) => Container::from_inspect(c),
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => Err(format!("no such container: {spec}")),
        Err(e) => Err(format!("asking Docker about {spec}: {e}")),
    }
}

impl Engine {
    /// After a restart: the networks our plugin made earlier (Docker does not create them
    /// again).
    pub async fn recall_plugin_networks(&self) {
        let Some(sock) = &self.settings.plugin_socket else {
            return;
        };
        let driver = plugin_driver_name(sock);
        let opts = bollard::query_parameters::ListNetworksOptions {
            filters: Some(HashMap::from([("driver".to_string(), vec![driver])])),
        };
        let Ok(list) = self.client.list_networks(Some(opts)).await else {
            return;
        };
        let mut nets = self.plugin_networks.lock().await;
        for n in list {
            if let Some(id) = n.id {
                let mcast = n
                    .options
                    .unwrap_or_default()
                    .iter()
                    .any(|(k, v)| MULTICAST_OPTIONS.contains(&k.as_str()) && v != "false");
                nets.entry(id).or_insert(mcast);
            }
        }
    }
}

/// Makes the plugin's ready-made network (`--plugin-network`, Weave's `weave`) unless it
/// exists, so `docker run --net=weave` works without a `docker network create`.
pub async fn ensure_plugin_network(engine: &Engine) {
    let (Some(name), Some(sock)) = (
        &engine.settings.plugin_network,
        &engine.settings.plugin_socket,
    ) else {
        return;
    };
    let driver = plugin_driver_name(sock);
    if let Ok(n) = engine
        .client
        .inspect_network(
            name,
            None::<bollard::query_parameters::InspectNetworkOptions>,
        )
        .await
    {
        if n.driver.as_deref() != Some(driver.as_str()) {
            warn!(
                network = %name,
                "a Docker network of that name exists with driver {:?}, not {driver}: leaving it",
                n.driver.unwrap_or_default()
            );
        }
        return;
    }
    let req = bollard::models::NetworkCreateRequest {
        name: name.clone(),
        driver: Some(driver.clone()),
        ipam: Some(bollard::models::Ipam {
            driver: Some(driver.clone()),
            ..Default::default()
        }),
        // As Weave's: multicast through the overlay.
        options: Some(HashMap::from([(
            MULTICAST_OPTIONS[0].to_string(),
            "true".to_string(),
        )])),
        ..Default::default()
    };
    match engine.client.create_network(req).await {
        Ok(_) => info!(network = %name, %driver, "created the Docker network for --net={name}"),
        Err(e) => warn!(network = %name, "creating the Docker network: {e}"),
    }
}

/// `weft ps` for containers on our plugin's networks (they are Docker's to plug, not weft's
/// attacher's): each with its endpoint's MAC and addresses. `only`: (name as given, id).
pub async fn plugin_entries(
    engine: &Engine,
    only: Option<&[(String, String)]>,
) -> Vec<weft_api::types::ContainerEntry> {
    let ours = engine.plugin_network_ids().await;
    if ours.is_empty() {
        return Vec::new();
    }
    let wanted: Vec<(String, String)> = match only {
        Some(o) => o.to_vec(),
        None => {
            let Ok(list) = engine
                .client
                .list_containers(Some(ListContainersOptions::default()))
                .await
            else {
                return Vec::new();
            };
            list.into_iter()
                .filter_map(|c| c.id)
                .map(|id| (id.clone(), id))
                .collect()
        }
    };
    let mut out = Vec::new();
    for (shown, id) in wanted {
        let Ok(c) = engine.inspect(&id).await else {
            continue;
        };
        let eps = c
            .network_settings
            .and_then(|n| n.networks)
            .unwrap_or_default();
        for ep in eps.values() {
            if !ep.network_id.as_ref().is_some_and(|n| ours.contains(n)) {
                continue;
            }
            let cidrs = ep
                .ip_address
                .as_deref()
                .and_then(|a| a.parse().ok())
                .and_then(|a| ipnet::Ipv4Net::new(a, ep.ip_prefix_len.unwrap_or(32) as u8).ok())
                .into_iter()
                .collect();
            out.push(weft_api::types::ContainerEntry {
                id: shown.clone(),
                mac: ep.mac_address.clone().unwrap_or_default(),
                cidrs,
            });
        }
    }
    out
}

/// The names a container on one of our plugin's networks gets in weftDNS, as Weave's plugin
/// gave them: `<hostname>.<domain>` and `<container name>.<domain>`, normalised.
pub fn plugin_names(c: &ContainerInspectResponse, id: &str, domain: &str) -> Vec<String> {
    let mut names = Vec::new();
    if let Some(cfg) = &c.config
        && let Some(h) = cfg
            .hostname
            .as_deref()
            // Docker's default hostname is the short id: no name worth registering.
            .filter(|h| !h.is_empty() && !id.starts_with(h))
    {
        // Docker 20.10 keeps `--hostname c1.weave.local` whole in Hostname, with no
        // Domainname: a name that has its domain already gets none added.
        match cfg.domainname.as_deref().filter(|d| !d.is_empty()) {
            Some(d) => names.push(format!("{h}.{d}")),
            None if h.contains('.') => names.push(h.to_string()),
            None => names.push(format!("{h}.{domain}")),
        }
    }
    if let Some(n) = c.name.as_deref() {
        let h = rewrite::hostname_from_name(n);
        if !h.is_empty() {
            names.push(format!("{h}.{domain}"));
        }
    }
    for n in &mut names {
        *n = weft_core::dns::normalize(n);
    }
    names.sort();
    names.dedup();
    names
}
